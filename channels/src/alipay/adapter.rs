//! The Alipay adapter: [`Alipay`] implements [`Channel`] over the open API gateway (`gateway.do`).
//!
//! Every call is a form POST: the common parameters (`app_id`, `method`, `timestamp`, `sign`, …) in
//! the query string and `biz_content` (JSON) in the body, RSA2-signed with the app key. Every answer
//! must carry a valid signature by the Alipay public key over the exact text of its response node:
//! an unsigned or forged answer is [`ChannelError::Signature`], never a success. Amounts travel as
//! yuan strings formatted exactly from fen.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Asia::Shanghai;
use paymux_model::{ChannelKind, Currency, Money, PayMethod, WalletBrand};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::notify::{self, TradeNotify};
use super::{bill, sign};
use crate::crypto::{RsaSigner, RsaVerifier};
use crate::http::{self as chttp, Timeouts};
use crate::{
    BillRecords, Capabilities, Channel, ChannelError, CreateKind, CreateOrder, CreatedOrder,
    Notification, NotificationReply, OrderRequest, PayOutcome, PayerAuth, RefundInfo,
    RefundOutcome, RefundRequest, RefundState, Trade, TradeState,
};

/// The production gateway.
pub const GATEWAY: &str = "https://openapi.alipay.com/gateway.do";

/// The host a payer's Alipay is sent to for authorisation (`auth_base`).
pub const OAUTH_BASE: &str = "https://openauth.alipay.com";

/// How many times `alipay.trade.cancel` is retried while Alipay answers `retry_flag=Y`.
pub const CANCEL_RETRIES: u32 = 3;

/// Business failures after which a code payment's outcome is not known (query, then cancel).
const PAY_UNKNOWN_SUB_CODES: &[&str] = &["ACQ.TRADE_HAS_SUCCESS", "ACQ.SYSTEM_ERROR"];

/// One Alipay app (public-key mode).
#[derive(Clone, Serialize, Deserialize)]
pub struct AlipayConfig {
    /// The full gateway URL: [`GATEWAY`] or a sandbox's `…/gateway.do`.
    pub base_url: String,
    /// The app's `app_id` (`2021…`).
    pub app_id: String,
    /// The app private key, PEM (PKCS#8, PKCS#1 or bare base64).
    pub app_private_key: String,
    /// Alipay's public key, PEM (SPKI, PKCS#1 or bare base64).
    pub alipay_public_key: String,
    /// The merchant's PID (`2088…`), checked against notifications when set.
    pub seller_id: Option<String>,
    /// The default `notify_url` of created orders.
    pub notify_url: Option<String>,
    /// Base URL of the payer authorisation page (`/oauth2/publicAppAuthorize.htm`) of in-app
    /// (JSAPI) payments; unset: [`OAUTH_BASE`].
    #[serde(default)]
    pub oauth_base_url: Option<String>,
    /// A sandbox's page standing in for `AlipayJSBridge` `tradePay` (sandbox only).
    #[serde(default)]
    pub wallet_stand_in_url: Option<String>,
}

impl std::fmt::Debug for AlipayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlipayConfig")
            .field("base_url", &self.base_url)
            .field("app_id", &self.app_id)
            .field("seller_id", &self.seller_id)
            .field("notify_url", &self.notify_url)
            .finish_non_exhaustive()
    }
}

/// The Alipay adapter.
pub struct Alipay {
    cfg: AlipayConfig,
    signer: RsaSigner,
    verifier: RsaVerifier,
    client: reqwest::Client,
    timeouts: Timeouts,
    caps: Capabilities,
}

impl std::fmt::Debug for Alipay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alipay")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// A verified gateway answer: the response node's fields.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Whether the node was `error_response` (gateway-level errors).
    pub error_node: bool,
    pub fields: Map<String, Value>,
}

impl Reply {
    /// A string field (empty strings count as absent).
    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// `code`: `10000` success, `10003` waiting for the payer, `20000` unknown, `4000x` failures.
    pub fn code(&self) -> &str {
        self.str("code").unwrap_or("")
    }

    /// Whether the answer is a method node with code `10000`.
    pub fn is_success(&self) -> bool {
        !self.error_node && self.code() == "10000"
    }

    /// `sub_code` (or `code` when there is none).
    pub fn sub_code(&self) -> String {
        self.str("sub_code").unwrap_or(self.code()).to_string()
    }

    /// `sub_msg` (or `msg`).
    pub fn message(&self) -> String {
        self.str("sub_msg")
            .or(self.str("msg"))
            .unwrap_or("")
            .to_string()
    }

    /// A yuan amount field in fen; a malformed amount is a protocol error.
    pub fn fen(&self, key: &'static str) -> Result<Option<i64>, ChannelError> {
        self.str(key)
            .map(|v| {
                Money::parse_major(v, Currency::Cny, false)
                    .map(Money::amount_minor)
                    .map_err(|e| ChannelError::Protocol(format!("`{key}` {v:?}: {e}")))
            })
            .transpose()
    }

    /// A local (Asia/Shanghai) time field, when present and well formed.
    pub fn time(&self, key: &'static str) -> Option<DateTime<Utc>> {
        self.str(key).and_then(|v| notify::parse_time(key, v).ok())
    }

    /// The error this answer is when it is not a success: `20000` (and the given unknown sub codes)
    /// is `Unknown`, anything else `Rejected` with the sub code.
    pub fn error(&self) -> ChannelError {
        let sub = self.sub_code();
        if self.code() == "20000" || sub == "ACQ.SYSTEM_ERROR" {
            ChannelError::Unknown(format!("{} {sub}: {}", self.code(), self.message()))
        } else {
            ChannelError::Rejected {
                code: sub,
                message: self.message(),
            }
        }
    }
}

/// Fen as Alipay's yuan string (`"12.30"`).
pub fn yuan(fen: i64) -> String {
    Money::cny(fen).format_major()
}

/// Maps Alipay's `trade_status`; a closed trade that was paid (`send_pay_date` set, fully refunded)
/// counts as paid.
pub fn trade_state(status: &str, was_paid: bool) -> TradeState {
    match status {
        "TRADE_SUCCESS" | "TRADE_FINISHED" => TradeState::Succeeded,
        "WAIT_BUYER_PAY" => TradeState::UserPaying,
        "TRADE_CLOSED" if was_paid => TradeState::Succeeded,
        "TRADE_CLOSED" => TradeState::Closed,
        _ => TradeState::Failed,
    }
}

impl Alipay {
    /// An adapter for one app; fails on unreadable keys, a bad gateway URL or an empty `app_id`.
    pub fn new(cfg: AlipayConfig) -> Result<Self, ChannelError> {
        let signer = RsaSigner::from_pem(&cfg.app_private_key)
            .map_err(|e| ChannelError::Config(format!("app private key: {e}")))?;
        let verifier = RsaVerifier::from_pem(&cfg.alipay_public_key)
            .map_err(|e| ChannelError::Config(format!("Alipay public key: {e}")))?;
        reqwest::Url::parse(&cfg.base_url)
            .map_err(|e| ChannelError::Config(format!("base_url: {e}")))?;
        if cfg.app_id.is_empty() {
            return Err(ChannelError::Config("app_id is required".into()));
        }
        Ok(Self {
            cfg,
            signer,
            verifier,
            client: chttp::shared_client(),
            timeouts: Timeouts::default(),
            caps: Capabilities {
                kind: ChannelKind::Alipay,
                wallets: vec![WalletBrand::Alipay],
                methods: vec![
                    PayMethod::QrMerchant,
                    PayMethod::QrStatic,
                    PayMethod::CodeScan,
                    PayMethod::Jsapi,
                ],
                refund: true,
                reverse: true,
                close: true,
                notifications: true,
                bill: true,
            },
        })
    }

    /// The same adapter with other call and bill timeouts.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The app's configuration.
    pub fn config(&self) -> &AlipayConfig {
        &self.cfg
    }

    /// The signed common parameters of a call.
    fn params(
        &self,
        method: &str,
        biz: &Value,
        top: &[(&str, &str)],
        notify_url: Option<&str>,
    ) -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            p.insert(k.to_string(), v.to_string());
        };
        put("app_id", &self.cfg.app_id);
        put("method", method);
        put("format", "JSON");
        put("charset", "utf-8");
        put("sign_type", "RSA2");
        put(
            "timestamp",
            &Utc::now()
                .with_timezone(&Shanghai)
                .format(notify::TIME_FORMAT)
                .to_string(),
        );
        put("version", "1.0");
        if let Some(u) = notify_url {
            put("notify_url", u);
        }
        if !biz.is_null() {
            put("biz_content", &biz.to_string());
        }
        for (k, v) in top {
            put(k, v);
        }
        let sign = sign::sign_request(
            &self.signer,
            p.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        p.insert("sign".into(), sign);
        p
    }

    /// The gateway URL with the common parameters in its query, and the form body (`biz_content`).
    fn request_parts(
        &self,
        method: &str,
        biz: &Value,
        top: &[(&str, &str)],
        notify_url: Option<&str>,
    ) -> Result<(reqwest::Url, String), ChannelError> {
        let params = self.params(method, biz, top, notify_url);
        let mut url = reqwest::Url::parse(&self.cfg.base_url)
            .map_err(|e| ChannelError::Config(format!("base_url: {e}")))?;
        let mut body = form_urlencoded::Serializer::new(String::new());
        {
            let mut query = url.query_pairs_mut();
            for (k, v) in &params {
                if k == "biz_content" {
                    body.append_pair(k, v);
                } else {
                    query.append_pair(k, v);
                }
            }
        }
        Ok((url, body.finish()))
    }

    /// Calls a method and verifies the answer's signature.
    pub async fn call(
        &self,
        method: &str,
        biz: &Value,
        notify_url: Option<&str>,
    ) -> Result<Reply, ChannelError> {
        self.call_with(method, biz, &[], notify_url).await
    }

    /// Calls a method with common-level parameters of its own (`top`; e.g. `grant_type` and `code`
    /// of `alipay.system.oauth.token`) and, unless `biz` is null, a `biz_content`.
    pub async fn call_with(
        &self,
        method: &str,
        biz: &Value,
        top: &[(&str, &str)],
        notify_url: Option<&str>,
    ) -> Result<Reply, ChannelError> {
        let (url, body) = self.request_parts(method, biz, top, notify_url)?;
        let req = self
            .client
            .post(url)
            .header(
                "content-type",
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .header("accept", "application/json")
            .body(body);
        let resp = chttp::send(req, self.timeouts.call, chttp::MAX_CALL_BODY_BYTES).await?;
        if resp.status != 200 {
            return Err(ChannelError::Unknown(format!(
                "{method}: HTTP {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
            )));
        }
        self.open_reply(&resp.body, method)
    }

    /// Verifies a raw gateway answer and decodes its response node.
    pub fn open_reply(&self, body: &[u8], method: &str) -> Result<Reply, ChannelError> {
        let signed = sign::verify_response(&self.verifier, body, method).map_err(|e| {
            match ChannelError::from(e) {
                ChannelError::Signature(m) => ChannelError::Signature(format!("{method}: {m}")),
                ChannelError::Protocol(m) => ChannelError::Protocol(format!("{method}: {m}")),
                other => other,
            }
        })?;
        let fields: Map<String, Value> = serde_json::from_slice(signed.content)
            .map_err(|e| ChannelError::Protocol(format!("{method}: response node: {e}")))?;
        Ok(Reply {
            error_node: signed.is_error_node(),
            fields,
        })
    }

    /// Calls and requires `10000`.
    async fn call_ok(
        &self,
        method: &str,
        biz: &Value,
        notify_url: Option<&str>,
    ) -> Result<Reply, ChannelError> {
        let r = self.call(method, biz, notify_url).await?;
        if r.is_success() {
            Ok(r)
        } else {
            Err(r.error())
        }
    }

    fn order_biz(order: &OrderRequest) -> Result<Value, ChannelError> {
        if order.amount.currency() != Currency::Cny {
            return Err(ChannelError::Config(format!(
                "Alipay charges CNY only, not {}",
                order.amount.currency()
            )));
        }
        let mut biz = json!({
            "out_trade_no": order.out_trade_no,
            "total_amount": order.amount.format_major(),
            "subject": order.subject,
        });
        if let Some(exp) = order.expires_at {
            biz["time_expire"] = json!(
                exp.with_timezone(&Shanghai)
                    .format(notify::TIME_FORMAT)
                    .to_string()
            );
        }
        if let Some(s) = &order.store_id {
            biz["store_id"] = json!(s);
        }
        if let Some(t) = &order.terminal_id {
            biz["terminal_id"] = json!(t);
        }
        Ok(biz)
    }

    /// The trade of a `trade.query` answer or, with `pay_reply`, of a `trade.pay` one. A pay answer
    /// carries no `trade_status`: its code 10000 itself says the trade is paid. A query answer
    /// without one says nothing about the trade, so it is a protocol error rather than a payment.
    fn trade_of(
        r: &Reply,
        fallback_out_trade_no: &str,
        pay_reply: bool,
    ) -> Result<Trade, ChannelError> {
        let status = match r.str("trade_status") {
            Some(s) => s,
            None if pay_reply => "TRADE_SUCCESS",
            None => {
                return Err(ChannelError::Protocol(
                    "alipay.trade.query: answer without trade_status".into(),
                ));
            }
        };
        let paid_at = r.time("send_pay_date").or(r.time("gmt_payment"));
        Ok(Trade {
            out_trade_no: r
                .str("out_trade_no")
                .unwrap_or(fallback_out_trade_no)
                .to_string(),
            channel_trade_no: r.str("trade_no").map(str::to_string),
            state: trade_state(status, paid_at.is_some()),
            channel_state: status.to_string(),
            amount_minor: r.fen("total_amount")?,
            paid_at,
            payer_id: r
                .str("buyer_user_id")
                .or(r.str("buyer_open_id"))
                .map(str::to_string),
        })
    }

    /// The refund of a `fastpay.refund.query` answer; `None` when Alipay knows no such refund.
    fn refund_of(
        r: &Reply,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<Option<RefundInfo>, ChannelError> {
        let status = r.str("refund_status");
        if status.is_none() && r.str("out_request_no").is_none() && r.str("refund_amount").is_none()
        {
            return Ok(None);
        }
        let state = match status {
            Some("REFUND_SUCCESS") => RefundState::Succeeded,
            Some(_) | None => RefundState::Processing,
        };
        Ok(Some(RefundInfo {
            out_trade_no: Some(r.str("out_trade_no").unwrap_or(out_trade_no).to_string()),
            out_refund_no: r.str("out_request_no").unwrap_or(out_refund_no).to_string(),
            channel_refund_no: None,
            state,
            channel_state: status.unwrap_or("").to_string(),
            amount_minor: r.fen("refund_amount")?,
            succeeded_at: r.time("gmt_refund_pay"),
        }))
    }
}

#[async_trait]
impl Channel for Alipay {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn create_order(&self, req: &CreateOrder) -> Result<CreatedOrder, ChannelError> {
        let mut biz = Self::order_biz(&req.order)?;
        let notify_url = req
            .order
            .notify_url
            .as_deref()
            .or(self.cfg.notify_url.as_deref());
        match &req.kind {
            CreateKind::Qr => {
                let r = self
                    .call_ok("alipay.trade.precreate", &biz, notify_url)
                    .await?;
                r.str("qr_code")
                    .map(|q| CreatedOrder::Qr {
                        code_url: q.to_string(),
                    })
                    .ok_or_else(|| {
                        ChannelError::Protocol("precreate answer without qr_code".into())
                    })
            }
            CreateKind::Jsapi { payer_id } => {
                biz["buyer_id"] = json!(payer_id);
                biz["product_code"] = json!("JSAPI_PAY");
                let r = self
                    .call_ok("alipay.trade.create", &biz, notify_url)
                    .await?;
                r.str("trade_no")
                    .map(|t| CreatedOrder::Jsapi {
                        params: json!({"tradeNO": t}),
                    })
                    .ok_or_else(|| ChannelError::Protocol("create answer without trade_no".into()))
            }
        }
    }

    async fn pay_with_code(&self, order: &OrderRequest, auth_code: &str) -> PayOutcome {
        let mut biz = match Self::order_biz(order) {
            Ok(b) => b,
            Err(e) => {
                return PayOutcome::Failed {
                    code: "INVALID_ORDER".into(),
                    message: e.to_string(),
                };
            }
        };
        biz["scene"] = json!("bar_code");
        biz["auth_code"] = json!(auth_code);
        biz["product_code"] = json!("FACE_TO_FACE_PAYMENT");
        let notify_url = order
            .notify_url
            .as_deref()
            .or(self.cfg.notify_url.as_deref());
        let r = match self.call("alipay.trade.pay", &biz, notify_url).await {
            Ok(r) => r,
            Err(ChannelError::Unreachable(m)) => {
                return PayOutcome::Failed {
                    code: "CHANNEL_UNREACHABLE".into(),
                    message: m,
                };
            }
            Err(e) => {
                return PayOutcome::Unknown {
                    reason: e.to_string(),
                };
            }
        };
        if r.error_node {
            return PayOutcome::Failed {
                code: r.sub_code(),
                message: r.message(),
            };
        }
        match r.code() {
            "10000" => match Self::trade_of(&r, &order.out_trade_no, true) {
                Ok(trade) => PayOutcome::Succeeded { trade },
                Err(e) => PayOutcome::Unknown {
                    reason: e.to_string(),
                },
            },
            "10003" => PayOutcome::UserPaying {
                channel_trade_no: r.str("trade_no").map(str::to_string),
            },
            "20000" => PayOutcome::Unknown {
                reason: format!("20000 {}: {}", r.sub_code(), r.message()),
            },
            _ if PAY_UNKNOWN_SUB_CODES.contains(&r.sub_code().as_str()) => PayOutcome::Unknown {
                reason: format!("{}: {}", r.sub_code(), r.message()),
            },
            _ => PayOutcome::Failed {
                code: r.sub_code(),
                message: r.message(),
            },
        }
    }

    async fn query(&self, out_trade_no: &str) -> Result<Trade, ChannelError> {
        let r = self
            .call_ok(
                "alipay.trade.query",
                &json!({"out_trade_no": out_trade_no}),
                None,
            )
            .await?;
        Self::trade_of(&r, out_trade_no, false)
    }

    async fn close(&self, out_trade_no: &str) -> Result<(), ChannelError> {
        self.call_ok(
            "alipay.trade.close",
            &json!({"out_trade_no": out_trade_no}),
            None,
        )
        .await
        .map(|_| ())
    }

    async fn reverse(&self, out_trade_no: &str) -> Result<(), ChannelError> {
        let biz = json!({"out_trade_no": out_trade_no});
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self.call("alipay.trade.cancel", &biz, None).await?;
            if r.is_success() {
                return Ok(());
            }
            if r.str("retry_flag") == Some("Y") && attempt <= CANCEL_RETRIES {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                continue;
            }
            return Err(r.error());
        }
    }

    /// `alipay.trade.refund` with `out_request_no = out_refund_no`. Alipay takes no per-refund
    /// `notify_url`: refunds are notified to the trade's own `notify_url`.
    async fn refund(&self, req: &RefundRequest) -> RefundOutcome {
        let mut biz = json!({
            "out_trade_no": req.out_trade_no,
            "refund_amount": req.refund_amount.format_major(),
            "out_request_no": req.out_refund_no,
        });
        if let Some(reason) = &req.reason {
            biz["refund_reason"] = json!(reason);
        }
        let r = match self.call("alipay.trade.refund", &biz, None).await {
            Ok(r) => r,
            Err(ChannelError::Unreachable(m)) => {
                return RefundOutcome::Failed {
                    code: "CHANNEL_UNREACHABLE".into(),
                    message: m,
                };
            }
            Err(e) => {
                return RefundOutcome::Unknown {
                    reason: e.to_string(),
                };
            }
        };
        if !r.is_success() {
            return match r.error() {
                ChannelError::Rejected { code, message } => RefundOutcome::Failed { code, message },
                e => RefundOutcome::Unknown {
                    reason: e.to_string(),
                },
            };
        }
        let info = RefundInfo {
            out_trade_no: Some(req.out_trade_no.clone()),
            out_refund_no: req.out_refund_no.clone(),
            channel_refund_no: None,
            state: RefundState::Succeeded,
            channel_state: "REFUND_SUCCESS".into(),
            amount_minor: Some(req.refund_amount.amount_minor()),
            succeeded_at: r.time("gmt_refund_pay"),
        };
        if r.str("fund_change") == Some("Y") {
            return RefundOutcome::Succeeded { refund: info };
        }
        // `fund_change=N`: a repeated request, or money not moved yet; the refund query decides.
        match self
            .query_refund(&req.out_trade_no, &req.out_refund_no)
            .await
        {
            Ok(q) if q.state == RefundState::Succeeded => RefundOutcome::Succeeded { refund: q },
            Ok(q) => RefundOutcome::Processing { refund: q },
            Err(_) => RefundOutcome::Processing {
                refund: RefundInfo {
                    state: RefundState::Processing,
                    channel_state: String::new(),
                    succeeded_at: None,
                    ..info
                },
            },
        }
    }

    async fn query_refund(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<RefundInfo, ChannelError> {
        let r = self
            .call_ok(
                "alipay.trade.fastpay.refund.query",
                &json!({
                    "out_trade_no": out_trade_no,
                    "out_request_no": out_refund_no,
                    "query_options": ["gmt_refund_pay"],
                }),
                None,
            )
            .await?;
        Self::refund_of(&r, out_trade_no, out_refund_no)?.ok_or_else(|| ChannelError::Rejected {
            code: "REFUND_NOT_EXIST".into(),
            message: format!("Alipay knows no refund {out_refund_no} of {out_trade_no}"),
        })
    }

    fn verify_notification(
        &self,
        _headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Notification, ChannelError> {
        let n = TradeNotify::verify(&self.verifier, body)?;
        if n.app_id != self.cfg.app_id {
            return Err(ChannelError::Protocol(format!(
                "notification for app {}, not ours",
                n.app_id.chars().take(32).collect::<String>()
            )));
        }
        if let (Some(ours), Some(theirs)) = (&self.cfg.seller_id, &n.seller_id)
            && ours != theirs
        {
            return Err(ChannelError::Protocol(format!(
                "notification for seller {}, not ours",
                theirs.chars().take(32).collect::<String>()
            )));
        }
        Ok(Notification {
            id: Some(n.notify_id.clone()),
            event: n.event(),
        })
    }

    fn notification_reply(&self, ok: bool) -> NotificationReply {
        notify::reply(ok)
    }

    fn payer_auth_url(&self, redirect_uri: &str, state: &str) -> Option<String> {
        let base = self
            .cfg
            .oauth_base_url
            .as_deref()
            .unwrap_or(OAUTH_BASE)
            .trim_end_matches('/');
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        Some(format!(
            "{base}/oauth2/publicAppAuthorize.htm?app_id={}&scope=auth_base&redirect_uri={}&state={}",
            enc(&self.cfg.app_id),
            enc(redirect_uri),
            enc(state)
        ))
    }

    async fn payer_id(&self, auth: &PayerAuth<'_>) -> Result<String, ChannelError> {
        let code = auth.code;
        let r = self
            .call_with(
                "alipay.system.oauth.token",
                &Value::Null,
                &[("grant_type", "authorization_code"), ("code", code)],
                None,
            )
            .await?;
        if r.error_node || r.str("code").is_some_and(|c| c != "10000") {
            return Err(r.error());
        }
        r.str("user_id")
            .or(r.str("open_id"))
            .map(str::to_string)
            .ok_or_else(|| ChannelError::Protocol("oauth token answer without user_id".into()))
    }

    fn wallet_stand_in_url(&self) -> Option<String> {
        self.cfg.wallet_stand_in_url.clone()
    }

    async fn download_bill(&self, date: NaiveDate) -> Result<BillRecords, ChannelError> {
        let r = self
            .call_ok(
                "alipay.data.dataservice.bill.downloadurl.query",
                &json!({"bill_type": "trade", "bill_date": date.format("%Y-%m-%d").to_string()}),
                None,
            )
            .await?;
        let url = r
            .str("bill_download_url")
            .ok_or_else(|| ChannelError::Protocol("answer without bill_download_url".into()))?;
        let url = reqwest::Url::parse(url)
            .map_err(|e| ChannelError::Protocol(format!("bill_download_url: {e}")))?;
        let file = chttp::send(
            self.client.get(url),
            self.timeouts.bill,
            chttp::MAX_BILL_BODY_BYTES,
        )
        .await?;
        match file.status {
            200 => Ok(bill::parse_trade_bill(&file.body)?),
            s if s >= 500 => Err(ChannelError::Unknown(format!("bill download: HTTP {s}"))),
            s => Err(ChannelError::Protocol(format!("bill download: HTTP {s}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_is_exact() {
        assert_eq!(yuan(0), "0.00");
        assert_eq!(yuan(1), "0.01");
        assert_eq!(yuan(101), "1.01");
        assert_eq!(yuan(123_456_789), "1234567.89");
    }

    #[test]
    fn trade_states() {
        assert_eq!(trade_state("TRADE_SUCCESS", true), TradeState::Succeeded);
        assert_eq!(trade_state("TRADE_FINISHED", true), TradeState::Succeeded);
        assert_eq!(trade_state("WAIT_BUYER_PAY", false), TradeState::UserPaying);
        assert_eq!(trade_state("TRADE_CLOSED", false), TradeState::Closed);
        // Fully refunded: closed, but it was paid.
        assert_eq!(trade_state("TRADE_CLOSED", true), TradeState::Succeeded);
        assert_eq!(trade_state("???", false), TradeState::Failed);
    }

    fn reply(fields: Value, error_node: bool) -> Reply {
        let Value::Object(fields) = fields else {
            unreachable!("test replies are objects")
        };
        Reply { error_node, fields }
    }

    #[test]
    fn a_query_answer_without_trade_status_is_not_a_payment() {
        let fields = json!({
            "code": "10000",
            "msg": "Success",
            "out_trade_no": "T1",
            "trade_no": "2026112222001400000000000001",
            "total_amount": "1.00",
        });
        let err = Alipay::trade_of(&reply(fields.clone(), false), "T1", false).unwrap_err();
        assert!(
            matches!(&err, ChannelError::Protocol(m) if m.contains("trade_status")),
            "{err}"
        );
        // The same fields answering trade.pay with 10000: paid.
        let trade = Alipay::trade_of(&reply(fields.clone(), false), "T1", true).unwrap();
        assert_eq!(trade.state, TradeState::Succeeded);
        assert_eq!(trade.amount_minor, Some(100));
        // A query answer that says: its status counts.
        let mut waiting = fields;
        waiting["trade_status"] = json!("WAIT_BUYER_PAY");
        let trade = Alipay::trade_of(&reply(waiting, false), "T1", false).unwrap();
        assert_eq!(trade.state, TradeState::UserPaying);
    }

    #[test]
    fn reply_errors() {
        let r = reply(
            json!({"code": "20000", "sub_code": "aop.unknow-error"}),
            false,
        );
        assert!(matches!(r.error(), ChannelError::Unknown(_)));
        let r = reply(
            json!({"code": "40004", "sub_code": "ACQ.SYSTEM_ERROR"}),
            false,
        );
        assert!(matches!(r.error(), ChannelError::Unknown(_)));
        let r = reply(
            json!({"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST", "sub_msg": "交易不存在"}),
            false,
        );
        assert_eq!(
            r.error(),
            ChannelError::Rejected {
                code: "ACQ.TRADE_NOT_EXIST".into(),
                message: "交易不存在".into()
            }
        );
        let r = reply(json!({"code": "10000"}), true);
        assert!(!r.is_success(), "error_response is never a success");
        let r = reply(json!({"total_amount": "1.001"}), false);
        assert!(matches!(
            r.fen("total_amount"),
            Err(ChannelError::Protocol(_))
        ));
        let r = reply(json!({"total_amount": 3}), false);
        assert_eq!(r.fen("total_amount").ok(), Some(None));
    }
}
