//! The UnionPay QR adapter ([`UnionPay`]): the [`Channel`] trait over the ACP-style merchant gateway.
//!
//! | call | message | path |
//! |---|---|---|
//! | [`Channel::create_order`] `Qr` | C2B order, `txnSubType=07` → `qrCode` | `POST /gateway/api/backTransReq.do` |
//! | [`Channel::payer_auth_url`] | the wallet's `userAuth` page: `GET /qrcGtwWeb-web/api/userAuth?version=1.0.0&redirectUrl=…` (the `state` rides inside `redirectUrl`); the wallet comes back with `userAuthCode` and `respCode=00` | `https://qr.95516.com` |
//! | [`Channel::payer_id`] | user-id exchange, `txnType=00`, `txnSubType=10`: `userAuthCode` + `appUpIdentifier` (from the payer's User-Agent) → `appUserId` | `POST /gateway/api/backTransReq.do` |
//! | [`Channel::create_order`] `Jsapi` | in-app order, `txnType=01`, `txnSubType=01`, `tradeType=mobileWeb`, `appUserId` → `tn` (params `{"tn"}`) | `POST /gateway/api/backTransReq.do` |
//! | [`Channel::pay_with_code`] | B2C, `txnSubType=06`: `respCode=00` only means *accepted*, so the outcome is `UserPaying` and the caller queries | `POST /gateway/api/backTransReq.do` |
//! | [`Channel::query`] / [`Channel::query_refund`] | query, `txnType=00` (by `orderId` + `txnTime`) | `POST /gateway/api/queryTrans.do` |
//! | [`Channel::close`] / [`Channel::reverse`] | query, then cancel (消费撤销) `txnType=31` with the `origQryId` | `POST /gateway/api/backTransReq.do` |
//! | [`Channel::refund`] | query for the payment's `queryId`, then `txnType=04` with `origQryId` | `POST /gateway/api/backTransReq.do` |
//! | [`Channel::download_bill`] | file download `txnType=76`, `fileType=00`, `settleDate=MMdd` → base64 `fileContent` of the [`super::bill`] file | `POST /gateway/api/fileTransRequest.do` |
//!
//! Every request is signed ([`SignKey`]); every answer must carry a valid signature of one of
//! UnionPay's keys, chosen by its `certId` ([`VerifyKeys`]) — an unsigned or forged answer is
//! [`ChannelError::Signature`] (and a B2C charge with such an answer is `Unknown`), never an outcome.
//! HTTP 5xx and timeouts are `Unknown`; a refused connection is `Unreachable`.
//!
//! # In-app payment (`userAuth`): what is modelled
//!
//! The public facts are the `userAuth` redirect (`https://qr.95516.com/qrcGtwWeb-web/api/userAuth`
//! with `version=1.0.0` and `redirectUrl`, answered by a redirect with `userAuthCode` and
//! `respCode`), the exchange of `userAuthCode` with the `appUpIdentifier` of the payer's app for its
//! `appUserId`, and an order for that user whose answer the page hands to the wallet's JS SDK
//! (`upsdk.pay`). Modelled by paymux, not taken from UnionPay's specification: the ACP form of the
//! exchange (`txnType=00`, `txnSubType=10`, `bizType=000000`, `channelType=08`) and of the order
//! (`txnType=01`, `txnSubType=01`, `tradeType=mobileWeb`), the answer field `tn` (a transaction
//! number, as in UnionPay's app payments) as the whole of what the wallet needs, and the JS call
//! `upsdk.pay({tn})` without the SDK's `upsdk.config` signature step. The order is queried, closed,
//! refunded and notified like any other order of the gateway.
//!
//! # `txnTime`
//!
//! ACP names an order by its `orderId` *and* the `txnTime` it was sent with: a query needs both. The
//! adapter remembers the `txnTime` of every order, refund and cancel it sends (in memory, in a map
//! pruned of entries older than [`TXN_TIME_RETENTION_DAYS`]) and reuses it when the same `orderId` is
//! sent again (an idempotent retry). After a restart, or for orders sent elsewhere, the platform hands
//! the time back with [`UnionPay::remember_txn_time`] (or queries with [`UnionPay::query_at`]); a
//! query of an order whose `txnTime` is unknown is a [`ChannelError::Protocol`] error that says so.
//!
//! # Close and reverse
//!
//! UnionPay QR has no "close" of its own: an order either gets paid or times out. Both calls query the
//! order first. `close` refuses a paid order (`ORDER_PAID`, nothing is undone), does nothing for an
//! order that already failed, and cancels (`31`) an order still waiting for its payer. `reverse`
//! cancels whatever the order's state (a paid order's money goes back to the payer) and does nothing
//! for a failed order. A cancel needs the order's `queryId`; an order the gateway has not given one
//! cannot be cancelled ([`ChannelError::Unsupported`]). ACP accepts cancels on the payment's own day
//! only: later, use `refund`.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{NaiveDate, NaiveDateTime, Utc};
use paymux_model::{ChannelKind, Currency, Money, PayMethod, WalletBrand};
use serde::{Deserialize, Serialize};

use super::Fields;
use super::bill;
use super::messages::{
    self, B2cPayRequest, B2cPayResponse, BackNotification, C2bCode, C2bCreateRequest,
    C2bCreateResponse, CancelRequest, CancelResponse, FileTransRequest, FileTransResponse,
    JsOrderRequest, JsOrderResponse, MessageError, QueryRequest, QueryResponse, RefundResponse,
    UserAuthRequest, UserAuthResponse,
};
use super::sign::{SignKey, SignMethod, VerifyKey, VerifyKeys};
use crate::http::{self as chttp, Timeouts};
use crate::{
    BillRecords, Capabilities, Channel, ChannelError, CreateKind, CreateOrder, CreatedOrder,
    Notification, NotificationReply, OrderRequest, PayOutcome, PayerAuth, RefundInfo,
    RefundOutcome, RefundRequest, RefundState, Trade, TradeState,
};

/// The production gateway.
pub const GATEWAY: &str = "https://gateway.95516.com";
/// The test gateway.
pub const TEST_GATEWAY: &str = "https://gateway.test.95516.com";

/// The host the payer's wallet is sent to for its user authorisation (`userAuth`).
pub const USER_AUTH_BASE: &str = "https://qr.95516.com";
/// The `userAuth` page under [`USER_AUTH_BASE`].
pub const USER_AUTH_PATH: &str = "/qrcGtwWeb-web/api/userAuth";

/// Payments, refunds and cancels.
pub const BACK_TRANS_PATH: &str = "/gateway/api/backTransReq.do";
/// Queries.
pub const QUERY_PATH: &str = "/gateway/api/queryTrans.do";
/// File downloads.
pub const FILE_TRANS_PATH: &str = "/gateway/api/fileTransRequest.do";

/// How long the adapter remembers the `txnTime` of an order it sent.
pub const TXN_TIME_RETENTION_DAYS: i64 = 35;
/// Above this many remembered orders, entries older than the retention are pruned.
const TXN_TIME_PRUNE_AT: usize = 100_000;

/// A UnionPay verification key: a certificate (its serial is the `certId`) or a public key (RSA or
/// SM2 `PUBLIC KEY`) with its `certId` (derived from the key when `None`).
#[derive(Clone, Serialize, Deserialize)]
pub struct UnionPayKey {
    #[serde(default)]
    pub cert_id: Option<String>,
    pub pem: String,
}

/// One UnionPay QR merchant account.
#[derive(Clone, Serialize, Deserialize)]
pub struct UnionPayConfig {
    /// `https://gateway.95516.com`, or a sandbox's base URL (a path prefix is allowed).
    pub base_url: String,
    /// `merId`: 15 letters or digits.
    pub mer_id: String,
    /// `01` (RSA-SHA256) or `02` (SM2/SM3).
    pub sign_method: String,
    /// The merchant's signing key, PKCS#8 PEM (RSA also PKCS#1 or bare base64).
    pub merchant_private_key: String,
    /// The merchant's signing certificate (RSA only): its serial is the `certId`.
    #[serde(default)]
    pub merchant_certificate: Option<String>,
    /// The `certId` when there is no certificate (derived from the key when `None`).
    #[serde(default)]
    pub merchant_cert_id: Option<String>,
    /// UnionPay's verification keys (more than one while certificates rotate).
    pub unionpay_keys: Vec<UnionPayKey>,
    /// The default `backUrl` (an order's `notify_url` wins).
    #[serde(default)]
    pub notify_url: Option<String>,
    /// Base URL of the wallet's `userAuth` page (`/qrcGtwWeb-web/api/userAuth`) of in-app
    /// payments; unset: [`USER_AUTH_BASE`].
    #[serde(default)]
    pub user_auth_base_url: Option<String>,
    /// A sandbox's page standing in for the wallet's `upsdk.pay` (sandbox only).
    #[serde(default)]
    pub wallet_stand_in_url: Option<String>,
}

impl std::fmt::Debug for UnionPayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnionPayConfig")
            .field("base_url", &self.base_url)
            .field("mer_id", &self.mer_id)
            .field("sign_method", &self.sign_method)
            .field("merchant_cert_id", &self.merchant_cert_id)
            .field(
                "unionpay_cert_ids",
                &self
                    .unionpay_keys
                    .iter()
                    .map(|k| k.cert_id.as_deref().unwrap_or("(derived)"))
                    .collect::<Vec<_>>(),
            )
            .field("notify_url", &self.notify_url)
            .field("user_auth_base_url", &self.user_auth_base_url)
            .finish_non_exhaustive()
    }
}

/// The UnionPay QR adapter.
pub struct UnionPay {
    cfg: UnionPayConfig,
    base: String,
    signer: SignKey,
    keys: VerifyKeys,
    client: reqwest::Client,
    timeouts: Timeouts,
    caps: Capabilities,
    sent: Mutex<HashMap<String, Sent>>,
}

/// What the adapter remembers of an order it sent.
#[derive(Debug, Clone)]
struct Sent {
    txn_time: NaiveDateTime,
    back_url: Option<String>,
}

impl std::fmt::Debug for UnionPay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnionPay")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn load_verify_key(k: &UnionPayKey) -> Result<VerifyKey, ChannelError> {
    let id = k.cert_id.as_deref();
    if k.pem.contains("CERTIFICATE") {
        let key = VerifyKey::from_certificate_pem(&k.pem)?;
        return Ok(match id {
            Some(id) => key.with_cert_id(id),
            None => key,
        });
    }
    VerifyKey::rsa_from_pem(&k.pem, id)
        .or_else(|_| VerifyKey::sm2_from_pem(&k.pem, id))
        .map_err(|e| ChannelError::Config(format!("UnionPay key: {e}")))
}

/// Now in Asia/Shanghai, to the second, as ACP times are.
fn shanghai_now() -> NaiveDateTime {
    let now = Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .naive_local();
    NaiveDateTime::parse_from_str(&messages::format_txn_time(now), messages::TXN_TIME_FORMAT)
        .unwrap_or(now)
}

fn fen(m: Money) -> Result<i64, MessageError> {
    if m.currency() != Currency::Cny {
        return Err(MessageError::Invalid {
            field: "txnAmt",
            message: format!("UnionPay QR charges CNY only, not {:?}", m.currency()),
        });
    }
    Ok(m.amount_minor())
}

/// Maps a query's failure onto a refund outcome.
fn refund_failure(e: ChannelError) -> RefundOutcome {
    match e {
        ChannelError::Unreachable(m) => RefundOutcome::Failed {
            code: "CHANNEL_UNREACHABLE".into(),
            message: m,
        },
        ChannelError::Rejected { code, message } => RefundOutcome::Failed { code, message },
        e => RefundOutcome::Unknown {
            reason: e.to_string(),
        },
    }
}

impl UnionPay {
    pub fn new(cfg: UnionPayConfig) -> Result<Self, ChannelError> {
        messages::check_mer_id(&cfg.mer_id)
            .map_err(|e| ChannelError::Config(format!("mer_id: {e}")))?;
        let method = SignMethod::from_code(&cfg.sign_method)
            .map_err(|e| ChannelError::Config(format!("sign_method: {e}")))?;
        let signer = match (method, &cfg.merchant_certificate) {
            (SignMethod::Rsa, Some(cert)) => {
                SignKey::rsa_with_certificate(&cfg.merchant_private_key, cert)
            }
            (SignMethod::Rsa, None) => {
                SignKey::rsa_from_pem(&cfg.merchant_private_key, cfg.merchant_cert_id.as_deref())
            }
            (SignMethod::Sm2, None) => {
                SignKey::sm2_from_pem(&cfg.merchant_private_key, cfg.merchant_cert_id.as_deref())
            }
            (SignMethod::Sm2, Some(_)) => {
                return Err(ChannelError::Config(
                    "SM2 merchant keys take a merchant_cert_id, not a certificate".into(),
                ));
            }
        }
        .map_err(|e| ChannelError::Config(format!("merchant key: {e}")))?;
        let keys = cfg
            .unionpay_keys
            .iter()
            .map(load_verify_key)
            .collect::<Result<VerifyKeys, _>>()?;
        if keys.is_empty() {
            return Err(ChannelError::Config(
                "at least one UnionPay verification key is required".into(),
            ));
        }
        let base = cfg.base_url.trim_end_matches('/').to_string();
        reqwest::Url::parse(&base).map_err(|e| ChannelError::Config(format!("base_url: {e}")))?;
        Ok(Self {
            cfg,
            base,
            signer,
            keys,
            client: chttp::shared_client(),
            timeouts: Timeouts::default(),
            caps: Capabilities {
                kind: ChannelKind::UnionpayQr,
                wallets: vec![WalletBrand::Unionpay],
                methods: vec![
                    PayMethod::QrMerchant,
                    PayMethod::QrStatic,
                    PayMethod::CodeScan,
                ],
                refund: true,
                reverse: true,
                close: true,
                notifications: true,
                bill: true,
            },
            sent: Mutex::new(HashMap::new()),
        })
    }

    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    pub fn config(&self) -> &UnionPayConfig {
        &self.cfg
    }

    /// The `certId` the adapter signs under.
    pub fn cert_id(&self) -> &str {
        self.signer.cert_id()
    }

    /// Tells the adapter the `txnTime` an order (payment, refund or cancel) was sent with.
    pub fn remember_txn_time(&self, order_id: &str, txn_time: NaiveDateTime) {
        self.remember(order_id, txn_time, None);
    }

    fn remember(&self, order_id: &str, txn_time: NaiveDateTime, back_url: Option<String>) {
        if let Ok(mut map) = self.sent.lock() {
            if map.len() >= TXN_TIME_PRUNE_AT {
                let oldest = shanghai_now() - chrono::Duration::days(TXN_TIME_RETENTION_DAYS);
                map.retain(|_, s| s.txn_time >= oldest);
            }
            let back_url = back_url.or_else(|| map.get(order_id).and_then(|s| s.back_url.clone()));
            map.insert(order_id.to_string(), Sent { txn_time, back_url });
        }
    }

    /// The remembered `txnTime` of an order.
    pub fn txn_time_of(&self, order_id: &str) -> Option<NaiveDateTime> {
        self.sent
            .lock()
            .ok()
            .and_then(|m| m.get(order_id).map(|s| s.txn_time))
    }

    /// The `txnTime` to send an order with: the remembered one (a retry), else now.
    fn txn_time_for(&self, order_id: &str) -> NaiveDateTime {
        self.txn_time_of(order_id).unwrap_or_else(shanghai_now)
    }

    fn known_txn_time(&self, order_id: &str) -> Result<NaiveDateTime, ChannelError> {
        self.txn_time_of(order_id).ok_or_else(|| {
            ChannelError::Protocol(format!(
                "the txnTime of orderId {order_id:?} is not known: UnionPay names an order by \
                 orderId and txnTime (see UnionPay::remember_txn_time)"
            ))
        })
    }

    fn back_url(&self, notify_url: Option<&String>) -> Result<String, ChannelError> {
        notify_url
            .or(self.cfg.notify_url.as_ref())
            .cloned()
            .ok_or_else(|| ChannelError::Config("UnionPay requires a backUrl (notify_url)".into()))
    }

    /// Signs and posts a message; verifies and decodes the answer.
    async fn post(
        &self,
        path: &str,
        fields: Fields,
        timeout: std::time::Duration,
    ) -> Result<Fields, ChannelError> {
        let body = messages::encode_signed(fields, &self.signer)?;
        let req = self
            .client
            .post(format!("{}{path}", self.base))
            .header(
                "content-type",
                "application/x-www-form-urlencoded;charset=UTF-8",
            )
            .body(body);
        // The file transfer answer carries the bill itself (base64 in a form field).
        let max_body_bytes = if path == FILE_TRANS_PATH {
            chttp::MAX_BILL_BODY_BYTES
        } else {
            chttp::MAX_CALL_BODY_BYTES
        };
        let resp = chttp::send(req, timeout, max_body_bytes).await?;
        if resp.status >= 500 {
            return Err(ChannelError::Unknown(format!(
                "HTTP {} from {path}",
                resp.status
            )));
        }
        if resp.status != 200 {
            return Err(ChannelError::Protocol(format!(
                "HTTP {} from {path}",
                resp.status
            )));
        }
        let answer = messages::decode_form(&resp.body)
            .map_err(|e| ChannelError::Protocol(format!("answer from {path}: {e}")))?;
        self.keys
            .verify(&answer)
            .map_err(|e| ChannelError::Signature(format!("answer from {path}: {e}")))?;
        if answer.get("merId").map(String::as_str) != Some(self.cfg.mer_id.as_str()) {
            return Err(ChannelError::Protocol(format!(
                "answer from {path} is not for merId {}",
                self.cfg.mer_id
            )));
        }
        Ok(answer)
    }

    /// Queries an order named by its `orderId` and `txnTime` (answers as they come).
    pub async fn query_at(
        &self,
        order_id: &str,
        txn_time: NaiveDateTime,
    ) -> Result<QueryResponse, ChannelError> {
        let fields = QueryRequest {
            mer_id: self.cfg.mer_id.clone(),
            order_id: order_id.to_string(),
            txn_time,
        }
        .to_fields()?;
        let answer = self.post(QUERY_PATH, fields, self.timeouts.call).await?;
        let resp = QueryResponse::from_fields(&answer)?;
        if resp.order_id != order_id {
            return Err(ChannelError::Protocol(format!(
                "query answer for orderId {}, asked {order_id}",
                resp.order_id
            )));
        }
        Ok(resp)
    }

    async fn query_known(&self, order_id: &str) -> Result<QueryResponse, ChannelError> {
        let txn_time = self.known_txn_time(order_id)?;
        self.query_at(order_id, txn_time).await
    }

    /// Sends a cancel (`31`) of a payment.
    async fn cancel(&self, payment: &QueryResponse) -> Result<(), ChannelError> {
        let (Some(query_id), Some(amount)) = (&payment.query_id, payment.txn_amt) else {
            return Err(ChannelError::Unsupported(
                "UnionPay cannot cancel an order it has given no queryId and amount for",
            ));
        };
        // ACP requires a backUrl on a cancel: the configured one, else the order's own.
        let back_url = match self.back_url(None) {
            Ok(u) => u,
            Err(e) => self
                .sent
                .lock()
                .ok()
                .and_then(|m| m.get(&payment.order_id).and_then(|s| s.back_url.clone()))
                .ok_or(e)?,
        };
        let order_id = format!("CX{}", crate::crypto::random_alnum(30));
        let txn_time = shanghai_now();
        self.remember(&order_id, txn_time, Some(back_url.clone()));
        let fields = CancelRequest {
            mer_id: self.cfg.mer_id.clone(),
            order_id,
            txn_time,
            txn_amt: amount,
            orig_qry_id: query_id.clone(),
            back_url,
        }
        .to_fields()?;
        let answer = self
            .post(BACK_TRANS_PATH, fields, self.timeouts.call)
            .await?;
        CancelResponse::from_fields(&answer)?.result()
    }

    /// The refund of a query answer.
    fn refund_info(out_trade_no: &str, q: &QueryResponse) -> Result<RefundInfo, ChannelError> {
        let trade = q.to_trade()?;
        Ok(RefundInfo {
            out_trade_no: Some(out_trade_no.to_string()),
            out_refund_no: q.order_id.clone(),
            channel_refund_no: q.query_id.clone(),
            state: match trade.state {
                TradeState::Succeeded => RefundState::Succeeded,
                TradeState::UserPaying | TradeState::NotPaid => RefundState::Processing,
                TradeState::Failed | TradeState::Closed => RefundState::Failed,
            },
            channel_state: trade.channel_state,
            amount_minor: q.txn_amt,
            succeeded_at: trade.paid_at,
        })
    }

    /// The in-app order of a payer whose `appUserId` is known: its `tn`.
    async fn create_js_order(
        &self,
        o: &OrderRequest,
        app_user_id: &str,
    ) -> Result<CreatedOrder, ChannelError> {
        let txn_time = self.txn_time_for(&o.out_trade_no);
        let back_url = self.back_url(o.notify_url.as_ref())?;
        let fields = JsOrderRequest {
            mer_id: self.cfg.mer_id.clone(),
            order_id: o.out_trade_no.clone(),
            txn_time,
            txn_amt: fen(o.amount)?,
            app_user_id: app_user_id.to_string(),
            back_url: back_url.clone(),
        }
        .to_fields()?;
        self.remember(&o.out_trade_no, txn_time, Some(back_url));
        let answer = self
            .post(BACK_TRANS_PATH, fields, self.timeouts.call)
            .await?;
        let resp = JsOrderResponse::from_fields(&answer)?;
        if resp.order_id != o.out_trade_no {
            return Err(ChannelError::Protocol(format!(
                "in-app order answer for orderId {}, asked {}",
                resp.order_id, o.out_trade_no
            )));
        }
        resp.created()
    }

    /// Verifies and decodes a back notification without mapping it.
    pub fn open_notification(&self, body: &[u8]) -> Result<BackNotification, ChannelError> {
        let fields = messages::decode_form(body)?;
        self.keys
            .verify(&fields)
            .map_err(|e| ChannelError::Signature(format!("notification: {e}")))?;
        let n = BackNotification::from_fields(&fields)?;
        if n.mer_id != self.cfg.mer_id {
            return Err(ChannelError::Protocol(format!(
                "notification for merId {}, not ours",
                n.mer_id
            )));
        }
        Ok(n)
    }
}

#[async_trait]
impl Channel for UnionPay {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn create_order(&self, req: &CreateOrder) -> Result<CreatedOrder, ChannelError> {
        let o = &req.order;
        if let CreateKind::Jsapi { payer_id } = &req.kind {
            return self.create_js_order(o, payer_id).await;
        }
        let txn_time = self.txn_time_for(&o.out_trade_no);
        let back_url = self.back_url(o.notify_url.as_ref())?;
        let fields = C2bCreateRequest {
            mer_id: self.cfg.mer_id.clone(),
            order_id: o.out_trade_no.clone(),
            txn_time,
            txn_amt: fen(o.amount)?,
            back_url: back_url.clone(),
        }
        .to_fields()?;
        self.remember(&o.out_trade_no, txn_time, Some(back_url));
        let answer = self
            .post(BACK_TRANS_PATH, fields, self.timeouts.call)
            .await?;
        C2bCreateResponse::from_fields(&answer)?.created()
    }

    async fn pay_with_code(&self, order: &OrderRequest, auth_code: &str) -> PayOutcome {
        let invalid = |message: String| PayOutcome::Failed {
            code: "INVALID_REQUEST".into(),
            message,
        };
        let qr_no = match C2bCode::parse(auth_code) {
            Ok(c) => c,
            Err(e) => return invalid(e.to_string()),
        };
        let back_url = match self.back_url(order.notify_url.as_ref()) {
            Ok(u) => u,
            Err(e) => return invalid(e.to_string()),
        };
        let txn_amt = match fen(order.amount) {
            Ok(a) => a,
            Err(e) => return invalid(e.to_string()),
        };
        let txn_time = self.txn_time_for(&order.out_trade_no);
        let fields = match (B2cPayRequest {
            mer_id: self.cfg.mer_id.clone(),
            order_id: order.out_trade_no.clone(),
            txn_time,
            txn_amt,
            qr_no,
            back_url: back_url.clone(),
        })
        .to_fields()
        {
            Ok(f) => f,
            Err(e) => return invalid(e.to_string()),
        };
        self.remember(&order.out_trade_no, txn_time, Some(back_url));
        let answer = match self.post(BACK_TRANS_PATH, fields, self.timeouts.call).await {
            Ok(a) => a,
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
        match B2cPayResponse::from_fields(&answer) {
            Ok(r) => r.outcome(),
            Err(e) => PayOutcome::Unknown {
                reason: format!("B2C answer: {e}"),
            },
        }
    }

    async fn query(&self, out_trade_no: &str) -> Result<Trade, ChannelError> {
        self.query_known(out_trade_no).await?.to_trade()
    }

    async fn close(&self, out_trade_no: &str) -> Result<(), ChannelError> {
        let q = self.query_known(out_trade_no).await?;
        match q.to_trade()?.state {
            TradeState::Succeeded => Err(ChannelError::Rejected {
                code: "ORDER_PAID".into(),
                message: "the order is paid: refund or reverse it".into(),
            }),
            TradeState::Failed | TradeState::Closed => Ok(()),
            TradeState::UserPaying | TradeState::NotPaid => self.cancel(&q).await,
        }
    }

    async fn reverse(&self, out_trade_no: &str) -> Result<(), ChannelError> {
        let q = self.query_known(out_trade_no).await?;
        match q.to_trade()?.state {
            TradeState::Failed | TradeState::Closed => Ok(()),
            _ => self.cancel(&q).await,
        }
    }

    async fn refund(&self, req: &RefundRequest) -> RefundOutcome {
        let invalid = |message: String| RefundOutcome::Failed {
            code: "INVALID_REQUEST".into(),
            message,
        };
        let txn_amt = match fen(req.refund_amount) {
            Ok(a) => a,
            Err(e) => return invalid(e.to_string()),
        };
        let back_url = match self.back_url(req.notify_url.as_ref()) {
            Ok(u) => u,
            Err(e) => return invalid(e.to_string()),
        };
        let payment = match self.query_known(&req.out_trade_no).await {
            Ok(q) => q,
            Err(e) => return refund_failure(e),
        };
        let trade = match payment.to_trade() {
            Ok(t) => t,
            Err(e) => return refund_failure(e),
        };
        let Some(orig_qry_id) = trade
            .channel_trade_no
            .filter(|_| trade.state == TradeState::Succeeded)
        else {
            return RefundOutcome::Failed {
                code: "ORDER_NOT_PAID".into(),
                message: format!("the order is {}", trade.channel_state),
            };
        };
        let txn_time = self.txn_time_for(&req.out_refund_no);
        let fields = match (messages::RefundRequest {
            mer_id: self.cfg.mer_id.clone(),
            order_id: req.out_refund_no.clone(),
            txn_time,
            txn_amt,
            orig_qry_id,
            back_url: back_url.clone(),
        })
        .to_fields()
        {
            Ok(f) => f,
            Err(e) => return invalid(e.to_string()),
        };
        self.remember(&req.out_refund_no, txn_time, Some(back_url));
        let answer = match self.post(BACK_TRANS_PATH, fields, self.timeouts.call).await {
            Ok(a) => a,
            Err(e) => return refund_failure(e),
        };
        match RefundResponse::from_fields(&answer) {
            Ok(r) => match r.outcome() {
                RefundOutcome::Processing { mut refund } => {
                    refund.out_trade_no = Some(req.out_trade_no.clone());
                    RefundOutcome::Processing { refund }
                }
                other => other,
            },
            Err(e) => RefundOutcome::Unknown {
                reason: format!("refund answer: {e}"),
            },
        }
    }

    async fn query_refund(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<RefundInfo, ChannelError> {
        let q = self.query_known(out_refund_no).await?;
        Self::refund_info(out_trade_no, &q)
    }

    /// The body is the form UnionPay POSTs; headers are not used (the signature is in the form).
    fn verify_notification(
        &self,
        _headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Notification, ChannelError> {
        Ok(self.open_notification(body)?.to_notification())
    }

    fn notification_reply(&self, ok: bool) -> NotificationReply {
        messages::notification_reply(ok)
    }

    /// The wallet's `userAuth` page; UnionPay's redirect carries no `state` of its own, so the state
    /// rides in `redirectUrl`'s query.
    fn payer_auth_url(&self, redirect_uri: &str, state: &str) -> Option<String> {
        let mut back = reqwest::Url::parse(redirect_uri).ok()?;
        back.query_pairs_mut().append_pair("state", state);
        let base = self
            .cfg
            .user_auth_base_url
            .as_deref()
            .unwrap_or(USER_AUTH_BASE)
            .trim_end_matches('/');
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        Some(format!(
            "{base}{USER_AUTH_PATH}?version=1.0.0&redirectUrl={}",
            enc(back.as_str())
        ))
    }

    /// Exchanges `userAuthCode` with the `appUpIdentifier` of the payer's User-Agent for the
    /// payer's `appUserId`; without the identifier (not a UnionPay app) nothing is sent.
    async fn payer_id(&self, auth: &PayerAuth<'_>) -> Result<String, ChannelError> {
        let Some(app) = auth.user_agent.and_then(messages::app_up_identifier) else {
            return Err(ChannelError::Rejected {
                code: "NO_APP_UP_IDENTIFIER".into(),
                message: "the payer's User-Agent names no UnionPay app (`UnionPay/<ver> <app>`)"
                    .into(),
            });
        };
        let order_id = format!("UA{}", crate::crypto::random_alnum(30));
        let fields = UserAuthRequest {
            mer_id: self.cfg.mer_id.clone(),
            order_id: order_id.clone(),
            txn_time: shanghai_now(),
            user_auth_code: auth.code.to_string(),
            app_up_identifier: app.to_string(),
        }
        .to_fields()?;
        let answer = self
            .post(BACK_TRANS_PATH, fields, self.timeouts.call)
            .await?;
        let resp = UserAuthResponse::from_fields(&answer)?;
        if resp.order_id != order_id {
            return Err(ChannelError::Protocol(format!(
                "user-id answer for orderId {}, asked {order_id}",
                resp.order_id
            )));
        }
        resp.user_id()
    }

    fn wallet_stand_in_url(&self) -> Option<String> {
        self.cfg.wallet_stand_in_url.clone()
    }

    /// The file of a settlement date; the file's header must name our `merId` and that date (ACP
    /// names the day by `MMdd` only, so a date more than a year back is refused as a mismatch).
    async fn download_bill(&self, date: NaiveDate) -> Result<BillRecords, ChannelError> {
        let fields = FileTransRequest {
            mer_id: self.cfg.mer_id.clone(),
            txn_time: shanghai_now(),
            settle_date: date.format("%m%d").to_string(),
        }
        .to_fields()?;
        let answer = self
            .post(FILE_TRANS_PATH, fields, self.timeouts.bill)
            .await?;
        let file = FileTransResponse::from_fields(&answer)?.file()?;
        let (header, records) = bill::read_bill_bytes(&file)?;
        if header.mer_id != self.cfg.mer_id || header.date != date {
            return Err(ChannelError::Protocol(format!(
                "the file is for merId {} on {}, asked {} on {date}",
                header.mer_id, header.date, self.cfg.mer_id
            )));
        }
        Ok(records)
    }
}
