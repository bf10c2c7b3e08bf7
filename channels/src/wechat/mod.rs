//! WeChat Pay API v3: the adapter ([`WechatPay`]), its signatures ([`sign`]), its trade bill
//! ([`bill`]) and its sandbox ([`sandbox`]).
//!
//! Every request carries the merchant's `WECHATPAY2-SHA256-RSA2048` authorization; every 2xx response
//! must carry a valid platform signature (an unsigned or forged 2xx is an error, never a success); the
//! bill file itself is the one unsigned download, checked against the SHA1 the signed bill call gave.

pub mod bill;
pub mod sandbox;
pub mod sign;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use paymux_model::{ChannelKind, PayMethod, WalletBrand};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha1::Digest as _;

use crate::crypto::{self, RsaSigner, RsaVerifier};
use crate::http::{self as chttp, RawResponse, Timeouts};
use crate::{
    BillError, BillRecords, Capabilities, Channel, ChannelError, CreateKind, CreateOrder,
    CreatedOrder, Notification, NotificationEvent, NotificationReply, OrderRequest, PayOutcome,
    PayerAuth, RefundInfo, RefundOutcome, RefundRequest, RefundState, Trade, TradeState,
};
use sign::{EncryptedResource, PlatformKeys};

/// The production host.
pub const API_BASE: &str = "https://api.mch.weixin.qq.com";

/// The host a payer's WeChat is sent to for OAuth (`snsapi_base`).
pub const OAUTH_AUTHORIZE_BASE: &str = "https://open.weixin.qq.com";
/// The host that exchanges an OAuth code for the payer's `openid`.
pub const OAUTH_API_BASE: &str = "https://api.weixin.qq.com";

/// How far a response or notification timestamp may be from our clock.
pub const MAX_SKEW_SECS: i64 = 300;

/// One WeChat Pay merchant account.
#[derive(Clone, Serialize, Deserialize)]
pub struct WechatConfig {
    /// `https://api.mch.weixin.qq.com`, or a sandbox's base URL (a path prefix is allowed and signed).
    pub base_url: String,
    pub mchid: String,
    pub appid: String,
    /// Serial of the merchant API certificate.
    pub merchant_serial: String,
    /// The merchant API private key, PEM.
    pub merchant_private_key: String,
    /// Platform public keys or certificates (PEM) by serial (`PUB_KEY_ID_…` or certificate serial).
    pub platform_keys: Vec<(String, String)>,
    /// The 32-character APIv3 key.
    pub api_v3_key: String,
    pub notify_url: Option<String>,
    /// The official account's AppSecret, for the OAuth `snsapi_base` step of in-app (JSAPI)
    /// payments (the payer's `openid`). Without it the account takes no JSAPI payments.
    #[serde(default)]
    pub app_secret: Option<String>,
    /// Base URL of the OAuth endpoints (`/connect/oauth2/authorize`, `/sns/oauth2/access_token`);
    /// unset: WeChat's own hosts ([`OAUTH_AUTHORIZE_BASE`], [`OAUTH_API_BASE`]).
    #[serde(default)]
    pub oauth_base_url: Option<String>,
    /// A sandbox's page standing in for `WeixinJSBridge` `getBrandWCPayRequest` (sandbox only).
    #[serde(default)]
    pub wallet_stand_in_url: Option<String>,
}

impl std::fmt::Debug for WechatConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatConfig")
            .field("base_url", &self.base_url)
            .field("mchid", &self.mchid)
            .field("appid", &self.appid)
            .field("merchant_serial", &self.merchant_serial)
            .finish_non_exhaustive()
    }
}

/// The WeChat Pay v3 adapter.
pub struct WechatPay {
    cfg: WechatConfig,
    base: String,
    signer: RsaSigner,
    platform: PlatformKeys,
    client: reqwest::Client,
    timeouts: Timeouts,
    caps: Capabilities,
}

/// The transaction shape of query responses and decrypted payment notifications.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Transaction {
    #[serde(default)]
    pub appid: String,
    #[serde(default)]
    pub mchid: String,
    pub out_trade_no: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(default)]
    pub trade_type: String,
    pub trade_state: String,
    #[serde(default)]
    pub trade_state_desc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<Payer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<TransactionAmount>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Payer {
    #[serde(default)]
    pub openid: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TransactionAmount {
    pub total: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer_total: Option<i64>,
    #[serde(default = "cny")]
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer_currency: Option<String>,
}

fn cny() -> String {
    "CNY".into()
}

/// The refund shape of refund responses and decrypted refund notifications.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RefundRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    pub out_refund_no: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_trade_no: Option<String>,
    /// `status` in API responses, `refund_status` in notifications.
    #[serde(default, alias = "refund_status")]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<RefundAmount>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RefundAmount {
    pub total: i64,
    pub refund: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer_total: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer_refund: Option<i64>,
    #[serde(default = "cny")]
    pub currency: String,
}

/// A notification envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotifyEnvelope {
    pub id: String,
    pub create_time: String,
    #[serde(default)]
    pub resource_type: String,
    pub event_type: String,
    #[serde(default)]
    pub summary: String,
    pub resource: EncryptedResource,
}

/// `{"code": "...", "message": "..."}`, WeChat's error body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Maps WeChat's `trade_state`.
pub fn trade_state(s: &str) -> TradeState {
    match s {
        "SUCCESS" | "REFUND" => TradeState::Succeeded,
        "USERPAYING" => TradeState::UserPaying,
        "NOTPAY" => TradeState::NotPaid,
        "CLOSED" | "REVOKED" => TradeState::Closed,
        _ => TradeState::Failed,
    }
}

impl Transaction {
    pub fn to_trade(&self) -> Trade {
        Trade {
            out_trade_no: self.out_trade_no.clone(),
            channel_trade_no: self.transaction_id.clone().filter(|s| !s.is_empty()),
            state: trade_state(&self.trade_state),
            channel_state: self.trade_state.clone(),
            // An amount in another currency is not an amount in fen: as if none were reported.
            amount_minor: self
                .amount
                .as_ref()
                .filter(|a| a.currency == "CNY")
                .map(|a| a.total),
            paid_at: self.success_time.as_deref().and_then(parse_time),
            payer_id: self
                .payer
                .as_ref()
                .map(|p| p.openid.clone())
                .filter(|s| !s.is_empty()),
        }
    }
}

impl RefundRecord {
    pub fn to_info(&self) -> RefundInfo {
        RefundInfo {
            out_trade_no: self.out_trade_no.clone(),
            out_refund_no: self.out_refund_no.clone(),
            channel_refund_no: self.refund_id.clone(),
            state: refund_state(&self.status),
            channel_state: self.status.clone(),
            amount_minor: self.amount.as_ref().map(|a| a.refund),
            succeeded_at: self.success_time.as_deref().and_then(parse_time),
        }
    }
}

/// A refund's `status` (`refund_status` in notifications): only the two documented ends of a refund
/// that did not happen (`CLOSED`, `ABNORMAL`) fail it; a missing or unknown status proves nothing
/// and keeps it processing (queried again), never failed.
fn refund_state(status: &str) -> RefundState {
    match status {
        "SUCCESS" => RefundState::Succeeded,
        "CLOSED" | "ABNORMAL" => RefundState::Failed,
        _ => RefundState::Processing,
    }
}

/// Codes after which a code payment's outcome must be found by querying.
/// Codes whose meaning is "the outcome is not known": query before deciding.
const UNKNOWN_CODES: &[&str] = &["SYSTEMERROR", "BANKERROR"];

/// Code-payment answers after which the order must be queried (it may be paid).
const QUERY_CODES: &[&str] = &["ORDERPAID", "FREQUENCY_LIMITED", "OUT_TRADE_NO_USED"];

impl WechatPay {
    pub fn new(cfg: WechatConfig) -> Result<Self, ChannelError> {
        let signer = RsaSigner::from_pem(&cfg.merchant_private_key)
            .map_err(|e| ChannelError::Config(format!("merchant private key: {e}")))?;
        let mut platform = PlatformKeys::new();
        for (serial, pem) in &cfg.platform_keys {
            let key = RsaVerifier::from_pem(pem)
                .map_err(|e| ChannelError::Config(format!("platform key {serial}: {e}")))?;
            platform.insert(serial.clone(), key);
        }
        if platform.is_empty() {
            return Err(ChannelError::Config(
                "at least one platform public key is required".into(),
            ));
        }
        if !matches!(cfg.api_v3_key.len(), 32) {
            return Err(ChannelError::Config(
                "the APIv3 key must be 32 bytes".into(),
            ));
        }
        let base = cfg.base_url.trim_end_matches('/').to_string();
        reqwest::Url::parse(&base).map_err(|e| ChannelError::Config(format!("base_url: {e}")))?;
        Ok(Self {
            cfg,
            base,
            signer,
            platform,
            client: chttp::shared_client(),
            timeouts: Timeouts::default(),
            caps: Capabilities {
                kind: ChannelKind::WechatV3,
                wallets: vec![WalletBrand::Wechat],
                methods: vec![
                    PayMethod::QrMerchant,
                    PayMethod::QrStatic,
                    PayMethod::CodeScan,
                    PayMethod::SoundWave,
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

    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    pub fn config(&self) -> &WechatConfig {
        &self.cfg
    }

    /// The path as signed: the base URL's own path prefix plus the API path.
    fn full_url(&self, path_and_query: &str) -> (String, String) {
        let url = format!("{}{}", self.base, path_and_query);
        let signed = match reqwest::Url::parse(&url) {
            Ok(u) => match u.query() {
                Some(q) => format!("{}?{}", u.path(), q),
                None => u.path().to_string(),
            },
            Err(_) => path_and_query.to_string(),
        };
        (url, signed)
    }

    fn authorize(&self, method: &str, signed_path: &str, body: &str) -> String {
        let ts = Utc::now().timestamp().to_string();
        let nonce = crypto::random_alnum(32);
        sign::authorization(
            &self.signer,
            &self.cfg.mchid,
            &self.cfg.merchant_serial,
            method,
            signed_path,
            &ts,
            &nonce,
            body,
        )
    }

    /// Sends a signed call and verifies a 2xx answer's signature.
    async fn call(
        &self,
        method: http::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<RawResponse, ChannelError> {
        self.call_within(method, path_and_query, body, self.timeouts.call)
            .await
    }

    /// [`Self::call`] with its own timeout (the bill calls: the channel prepares the file first).
    async fn call_within(
        &self,
        method: http::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<RawResponse, ChannelError> {
        let (url, signed) = self.full_url(path_and_query);
        let body_text = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = self.authorize(method.as_str(), &signed, &body_text);
        let mut req = self
            .client
            .request(method, &url)
            .header("Authorization", auth)
            .header("Accept", "application/json");
        if body.is_some() {
            req = req
                .header("Content-Type", "application/json")
                .body(body_text);
        }
        let resp = chttp::send(req, timeout, chttp::MAX_CALL_BODY_BYTES).await?;
        if (200..300).contains(&resp.status) {
            self.platform
                .verify_headers(
                    &resp.headers,
                    &resp.body,
                    Some(Utc::now().timestamp()),
                    MAX_SKEW_SECS,
                )
                .map_err(|e| {
                    ChannelError::Signature(format!("response to {path_and_query}: {e}"))
                })?;
        }
        Ok(resp)
    }

    fn error_of(resp: &RawResponse) -> ChannelError {
        if resp.status >= 500 {
            return ChannelError::Unknown(format!(
                "HTTP {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            ));
        }
        match serde_json::from_slice::<ErrorBody>(&resp.body) {
            Ok(e) if UNKNOWN_CODES.contains(&e.code.as_str()) => {
                ChannelError::Unknown(format!("{}: {}", e.code, e.message))
            }
            Ok(e) => ChannelError::Rejected {
                code: e.code,
                message: e.message,
            },
            Err(_) => ChannelError::Protocol(format!("HTTP {} without an error body", resp.status)),
        }
    }

    fn json<T: serde::de::DeserializeOwned>(resp: &RawResponse) -> Result<T, ChannelError> {
        serde_json::from_slice(&resp.body)
            .map_err(|e| ChannelError::Protocol(format!("response body: {e}")))
    }

    fn order_body(&self, order: &OrderRequest) -> serde_json::Value {
        let mut body = json!({
            "appid": self.cfg.appid,
            "mchid": self.cfg.mchid,
            "description": order.subject,
            "out_trade_no": order.out_trade_no,
            "amount": {"total": order.amount.amount_minor(), "currency": "CNY"},
        });
        if let Some(url) = order.notify_url.as_ref().or(self.cfg.notify_url.as_ref()) {
            body["notify_url"] = json!(url);
        }
        if let Some(exp) = order.expires_at {
            body["time_expire"] = json!(
                exp.with_timezone(&chrono_tz::Asia::Shanghai)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
            );
        }
        let mut scene = serde_json::Map::new();
        if let Some(ip) = &order.client_ip {
            scene.insert("payer_client_ip".into(), json!(ip));
        }
        if let Some(t) = &order.terminal_id {
            scene.insert("device_id".into(), json!(t));
        }
        if let Some(s) = &order.store_id {
            scene.insert("store_info".into(), json!({"out_id": s}));
        }
        if !scene.is_empty() {
            body["scene_info"] = serde_json::Value::Object(scene);
        }
        body
    }

    /// Queries by WeChat's `transaction_id`.
    pub async fn query_by_transaction_id(
        &self,
        transaction_id: &str,
    ) -> Result<Trade, ChannelError> {
        let path = format!(
            "/v3/pay/transactions/id/{}?mchid={}",
            enc(transaction_id),
            enc(&self.cfg.mchid)
        );
        let resp = self.call(http::Method::GET, &path, None).await?;
        if resp.status != 200 {
            return Err(Self::error_of(&resp));
        }
        Ok(Self::json::<Transaction>(&resp)?.to_trade())
    }

    /// The JSAPI parameters for `WeixinJSBridge.invoke('getBrandWCPayRequest', …)`.
    pub fn jsapi_params(&self, prepay_id: &str) -> serde_json::Value {
        let ts = Utc::now().timestamp().to_string();
        let nonce = crypto::random_alnum(32);
        let package = format!("prepay_id={prepay_id}");
        let pay_sign = sign::jsapi_pay_sign(&self.signer, &self.cfg.appid, &ts, &nonce, &package);
        json!({"appId": self.cfg.appid, "timeStamp": ts, "nonceStr": nonce, "package": package, "signType": "RSA", "paySign": pay_sign})
    }

    /// Verifies and decrypts a notification without mapping it.
    pub fn open_notification(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<(NotifyEnvelope, Vec<u8>), ChannelError> {
        self.platform
            .verify_headers(headers, body, Some(Utc::now().timestamp()), MAX_SKEW_SECS)
            .map_err(|e| ChannelError::Signature(format!("notification: {e}")))?;
        let env: NotifyEnvelope = serde_json::from_slice(body)
            .map_err(|e| ChannelError::Protocol(format!("notification body: {e}")))?;
        if env.resource.algorithm != "AEAD_AES_256_GCM" {
            return Err(ChannelError::Protocol(format!(
                "resource algorithm {}",
                env.resource.algorithm
            )));
        }
        let plain = env
            .resource
            .decrypt(self.cfg.api_v3_key.as_bytes())
            .map_err(|e| ChannelError::Signature(format!("notification resource: {e}")))?;
        Ok((env, plain))
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[async_trait]
impl Channel for WechatPay {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn create_order(&self, req: &CreateOrder) -> Result<CreatedOrder, ChannelError> {
        let mut body = self.order_body(&req.order);
        let path = match &req.kind {
            CreateKind::Qr => "/v3/pay/transactions/native",
            CreateKind::Jsapi { payer_id } => {
                body["payer"] = json!({"openid": payer_id});
                "/v3/pay/transactions/jsapi"
            }
        };
        if body.get("notify_url").is_none() {
            return Err(ChannelError::Config(
                "WeChat requires a notify_url for native and JSAPI orders".into(),
            ));
        }
        let resp = self.call(http::Method::POST, path, Some(&body)).await?;
        if resp.status != 200 {
            return Err(Self::error_of(&resp));
        }
        let v: serde_json::Value = Self::json(&resp)?;
        match &req.kind {
            CreateKind::Qr => v["code_url"]
                .as_str()
                .map(|u| CreatedOrder::Qr {
                    code_url: u.to_string(),
                })
                .ok_or_else(|| ChannelError::Protocol("native response without code_url".into())),
            CreateKind::Jsapi { .. } => v["prepay_id"]
                .as_str()
                .map(|p| CreatedOrder::Jsapi {
                    params: self.jsapi_params(p),
                })
                .ok_or_else(|| ChannelError::Protocol("jsapi response without prepay_id".into())),
        }
    }

    async fn pay_with_code(&self, order: &OrderRequest, auth_code: &str) -> PayOutcome {
        let mut body = self.order_body(order);
        if let Some(o) = body.as_object_mut() {
            o.remove("notify_url");
            o.remove("time_expire");
        }
        body["payer"] = json!({"auth_code": auth_code});
        let resp = match self
            .call(
                http::Method::POST,
                "/v3/pay/transactions/codepay",
                Some(&body),
            )
            .await
        {
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
        match resp.status {
            200 => match Self::json::<Transaction>(&resp) {
                Ok(t) if t.trade_state == "SUCCESS" => PayOutcome::Succeeded {
                    trade: t.to_trade(),
                },
                Ok(t) if t.trade_state == "USERPAYING" => PayOutcome::UserPaying {
                    channel_trade_no: t.transaction_id,
                },
                Ok(t) => PayOutcome::Unknown {
                    reason: format!("codepay answered trade_state {}", t.trade_state),
                },
                Err(e) => PayOutcome::Unknown {
                    reason: e.to_string(),
                },
            },
            202 => PayOutcome::UserPaying {
                channel_trade_no: None,
            },
            _ => match Self::error_of(&resp) {
                ChannelError::Rejected { code, .. } if code == "USERPAYING" => {
                    PayOutcome::UserPaying {
                        channel_trade_no: None,
                    }
                }
                ChannelError::Rejected { code, message }
                    if QUERY_CODES.contains(&code.as_str()) =>
                {
                    PayOutcome::Unknown {
                        reason: format!("{code}: {message}"),
                    }
                }
                ChannelError::Rejected { code, message } => PayOutcome::Failed { code, message },
                e => PayOutcome::Unknown {
                    reason: e.to_string(),
                },
            },
        }
    }

    async fn query(&self, out_trade_no: &str) -> Result<Trade, ChannelError> {
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{}?mchid={}",
            enc(out_trade_no),
            enc(&self.cfg.mchid)
        );
        let resp = self.call(http::Method::GET, &path, None).await?;
        if resp.status != 200 {
            return Err(Self::error_of(&resp));
        }
        Ok(Self::json::<Transaction>(&resp)?.to_trade())
    }

    async fn close(&self, out_trade_no: &str) -> Result<(), ChannelError> {
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{}/close",
            enc(out_trade_no)
        );
        let resp = self
            .call(
                http::Method::POST,
                &path,
                Some(&json!({"mchid": self.cfg.mchid})),
            )
            .await?;
        match resp.status {
            204 | 200 => Ok(()),
            _ => Err(Self::error_of(&resp)),
        }
    }

    async fn reverse(&self, out_trade_no: &str) -> Result<(), ChannelError> {
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{}/reverse",
            enc(out_trade_no)
        );
        let body = json!({"appid": self.cfg.appid, "mchid": self.cfg.mchid});
        let resp = self.call(http::Method::POST, &path, Some(&body)).await?;
        match resp.status {
            204 | 200 => Ok(()),
            _ => Err(Self::error_of(&resp)),
        }
    }

    async fn refund(&self, req: &RefundRequest) -> RefundOutcome {
        let mut body = json!({
            "out_trade_no": req.out_trade_no,
            "out_refund_no": req.out_refund_no,
            "amount": {"refund": req.refund_amount.amount_minor(), "total": req.total_amount.amount_minor(), "currency": "CNY"},
        });
        if let Some(r) = &req.reason {
            body["reason"] = json!(r);
        }
        if let Some(u) = req.notify_url.as_ref().or(self.cfg.notify_url.as_ref()) {
            body["notify_url"] = json!(u);
        }
        let resp = match self
            .call(
                http::Method::POST,
                "/v3/refund/domestic/refunds",
                Some(&body),
            )
            .await
        {
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
        if resp.status != 200 {
            return match Self::error_of(&resp) {
                ChannelError::Rejected { code, message }
                    if QUERY_CODES.contains(&code.as_str()) =>
                {
                    RefundOutcome::Unknown {
                        reason: format!("{code}: {message}"),
                    }
                }
                ChannelError::Rejected { code, message } => RefundOutcome::Failed { code, message },
                e => RefundOutcome::Unknown {
                    reason: e.to_string(),
                },
            };
        }
        match Self::json::<RefundRecord>(&resp) {
            Ok(r) => {
                let info = r.to_info();
                match info.state {
                    RefundState::Succeeded => RefundOutcome::Succeeded { refund: info },
                    RefundState::Processing => RefundOutcome::Processing { refund: info },
                    RefundState::Failed => RefundOutcome::Failed {
                        code: r.status,
                        message: "refund closed or abnormal".into(),
                    },
                }
            }
            Err(e) => RefundOutcome::Unknown {
                reason: e.to_string(),
            },
        }
    }

    async fn query_refund(
        &self,
        _out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<RefundInfo, ChannelError> {
        let path = format!("/v3/refund/domestic/refunds/{}", enc(out_refund_no));
        let resp = self.call(http::Method::GET, &path, None).await?;
        if resp.status != 200 {
            return Err(Self::error_of(&resp));
        }
        Ok(Self::json::<RefundRecord>(&resp)?.to_info())
    }

    fn verify_notification(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Notification, ChannelError> {
        let (env, plain) = self.open_notification(headers, body)?;
        let event = if env.event_type.starts_with("TRANSACTION.") {
            let t: Transaction = serde_json::from_slice(&plain)
                .map_err(|e| ChannelError::Protocol(format!("transaction resource: {e}")))?;
            if !t.mchid.is_empty() && t.mchid != self.cfg.mchid {
                return Err(ChannelError::Protocol(format!(
                    "notification for merchant {}, not ours",
                    t.mchid
                )));
            }
            NotificationEvent::Payment {
                trade: t.to_trade(),
            }
        } else if env.event_type.starts_with("REFUND.") {
            let r: RefundRecord = serde_json::from_slice(&plain)
                .map_err(|e| ChannelError::Protocol(format!("refund resource: {e}")))?;
            NotificationEvent::Refund {
                refund: r.to_info(),
            }
        } else {
            return Err(ChannelError::Protocol(format!(
                "unsupported event_type {}",
                env.event_type
            )));
        };
        Ok(Notification {
            id: Some(env.id),
            event,
        })
    }

    fn notification_reply(&self, ok: bool) -> NotificationReply {
        if ok {
            NotificationReply {
                status: 204,
                content_type: "application/json",
                body: Vec::new(),
            }
        } else {
            NotificationReply {
                status: 500,
                content_type: "application/json",
                body: br#"{"code":"FAIL","message":"processing failed, please retry"}"#.to_vec(),
            }
        }
    }

    fn payer_auth_url(&self, redirect_uri: &str, state: &str) -> Option<String> {
        self.cfg.app_secret.as_ref()?;
        let base = self
            .cfg
            .oauth_base_url
            .as_deref()
            .unwrap_or(OAUTH_AUTHORIZE_BASE)
            .trim_end_matches('/');
        Some(format!(
            "{base}/connect/oauth2/authorize?appid={}&redirect_uri={}&response_type=code&scope=snsapi_base&state={}#wechat_redirect",
            enc(&self.cfg.appid),
            enc(redirect_uri),
            enc(state)
        ))
    }

    async fn payer_id(&self, auth: &PayerAuth<'_>) -> Result<String, ChannelError> {
        let code = auth.code;
        let secret = self.cfg.app_secret.as_deref().ok_or_else(|| {
            ChannelError::Config(
                "no app_secret: the account cannot learn the payer's openid".into(),
            )
        })?;
        let base = self
            .cfg
            .oauth_base_url
            .as_deref()
            .unwrap_or(OAUTH_API_BASE)
            .trim_end_matches('/');
        let url = format!(
            "{base}/sns/oauth2/access_token?appid={}&secret={}&code={}&grant_type=authorization_code",
            enc(&self.cfg.appid),
            enc(secret),
            enc(code)
        );
        let resp = chttp::send(
            self.client.get(&url),
            self.timeouts.call,
            chttp::MAX_CALL_BODY_BYTES,
        )
        .await?;
        if resp.status != 200 {
            return Err(ChannelError::Unknown(format!(
                "oauth2/access_token: HTTP {}",
                resp.status
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(&resp.body)
            .map_err(|e| ChannelError::Protocol(format!("oauth2/access_token: {e}")))?;
        if let Some(openid) = v["openid"].as_str().filter(|o| !o.is_empty()) {
            return Ok(openid.to_string());
        }
        Err(ChannelError::Rejected {
            code: v["errcode"]
                .as_i64()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "NO_OPENID".into()),
            message: v["errmsg"].as_str().unwrap_or("no openid").to_string(),
        })
    }

    fn wallet_stand_in_url(&self) -> Option<String> {
        self.cfg.wallet_stand_in_url.clone()
    }

    async fn download_bill(&self, date: NaiveDate) -> Result<BillRecords, ChannelError> {
        let path = format!(
            "/v3/bill/tradebill?bill_date={}&bill_type=ALL",
            date.format("%Y-%m-%d")
        );
        let resp = self
            .call_within(http::Method::GET, &path, None, self.timeouts.bill)
            .await?;
        if resp.status != 200 {
            return Err(Self::error_of(&resp));
        }
        #[derive(Deserialize)]
        struct BillUrl {
            hash_type: String,
            hash_value: String,
            download_url: String,
        }
        let meta: BillUrl = Self::json(&resp)?;
        if meta.hash_type != "SHA1" {
            return Err(ChannelError::Protocol(format!(
                "bill hash_type {}",
                meta.hash_type
            )));
        }
        let url = reqwest::Url::parse(&meta.download_url)
            .map_err(|e| ChannelError::Protocol(format!("download_url: {e}")))?;
        let signed = match url.query() {
            Some(q) => format!("{}?{}", url.path(), q),
            None => url.path().to_string(),
        };
        let auth = self.authorize("GET", &signed, "");
        let file = chttp::send(
            self.client.get(url).header("Authorization", auth),
            self.timeouts.bill,
            chttp::MAX_BILL_BODY_BYTES,
        )
        .await?;
        if file.status != 200 {
            return Err(Self::error_of(&file));
        }
        let actual = hex::encode(sha1::Sha1::digest(&file.body));
        if !actual.eq_ignore_ascii_case(&meta.hash_value) {
            return Err(BillError::Digest {
                expected: meta.hash_value,
                actual,
            }
            .into());
        }
        // No copy of the file: the body's buffer becomes the parser's.
        Ok(bill::parse_trade_bill(Vec::from(file.body))?)
    }
}

/// A short pause helper used by polling loops (kept here so tests can compress it).
pub fn poll_interval(compression: u32) -> Duration {
    Duration::from_millis(5_000 / u64::from(compression.max(1)))
}

#[cfg(test)]
mod refund_state_tests {
    use super::*;

    #[test]
    fn only_closed_and_abnormal_fail_a_refund() {
        assert_eq!(refund_state("SUCCESS"), RefundState::Succeeded);
        assert_eq!(refund_state("CLOSED"), RefundState::Failed);
        assert_eq!(refund_state("ABNORMAL"), RefundState::Failed);
        for unsure in ["PROCESSING", "", "success", "SOMETHING_NEW"] {
            assert_eq!(refund_state(unsure), RefundState::Processing, "{unsure:?}");
        }
        // A record without its status (a malformed answer) is not a failed refund.
        let r: RefundRecord = serde_json::from_str(r#"{"out_refund_no":"r1"}"#).unwrap();
        assert_eq!(r.to_info().state, RefundState::Processing);
    }

    #[test]
    fn a_transaction_amount_counts_only_in_cny() {
        let trade = |amount: &str| {
            let t: Transaction = serde_json::from_str(&format!(
                r#"{{"out_trade_no":"o1","trade_state":"SUCCESS"{amount}}}"#
            ))
            .unwrap();
            t.to_trade().amount_minor
        };
        assert_eq!(trade(r#","amount":{"total":100}"#), Some(100));
        assert_eq!(
            trade(r#","amount":{"total":100,"currency":"CNY","payer_currency":"CNY"}"#),
            Some(100)
        );
        assert_eq!(trade(r#","amount":{"total":100,"currency":"USD"}"#), None);
        // The payer's own currency does not change the order's amount in CNY.
        assert_eq!(
            trade(r#","amount":{"total":100,"currency":"CNY","payer_currency":"HKD"}"#),
            Some(100)
        );
        assert_eq!(trade(""), None);
    }
}
