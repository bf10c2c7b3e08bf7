//! The channel-neutral vocabulary: the [`Channel`] trait and its requests and outcomes.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use paymux_model::{ChannelKind, Money, PayMethod, WalletBrand};
use serde::{Deserialize, Serialize};

/// What a channel account can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub kind: ChannelKind,
    pub wallets: Vec<WalletBrand>,
    pub methods: Vec<PayMethod>,
    pub refund: bool,
    pub reverse: bool,
    pub close: bool,
    /// Whether the channel sends asynchronous notifications (WeChat sends none for code payments).
    pub notifications: bool,
    pub bill: bool,
}

/// An order as the platform asks a channel to create or charge it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRequest {
    /// The platform's order number at the channel (unique per channel account; ASCII, ≤ 32 chars).
    pub out_trade_no: String,
    pub amount: Money,
    pub subject: String,
    /// Where the channel should send its asynchronous notification.
    pub notify_url: Option<String>,
    /// When the channel should stop accepting payment.
    pub expires_at: Option<DateTime<Utc>>,
    pub client_ip: Option<String>,
    pub store_id: Option<String>,
    pub terminal_id: Option<String>,
}

/// A C2B order: the payer scans (or their wallet app opens) what the channel returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateOrder {
    pub order: OrderRequest,
    pub kind: CreateKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CreateKind {
    /// A code the payer scans (`code_url` / `qr_code` / `qrCode`).
    Qr,
    /// In-app payment for a known payer (WeChat `openid`, Alipay `buyer_id`, UnionPay user id).
    Jsapi { payer_id: String },
}

/// What the payer's wallet needs to pay a created order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CreatedOrder {
    /// Content of the QR code to show (e.g. `weixin://wxpay/bizpayurl?pr=…`, `https://qr.alipay.com/…`).
    Qr { code_url: String },
    /// Parameters for the wallet's in-app payment call (e.g. WeChat `WeixinJSBridge` with `paySign`).
    Jsapi { params: serde_json::Value },
}

/// What the payer's wallet app brought back from its authorisation step
/// ([`Channel::payer_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayerAuth<'a> {
    /// The one-time code (WeChat `code`, Alipay `auth_code`, UnionPay `userAuthCode`).
    pub code: &'a str,
    /// The User-Agent of the payer's app, for channels that identify the app with the code
    /// (UnionPay's `appUpIdentifier`, the `UnionPay/<version> <app>` token of the User-Agent).
    pub user_agent: Option<&'a str>,
}

impl<'a> PayerAuth<'a> {
    /// A code without a User-Agent (enough for WeChat and Alipay).
    pub fn code(code: &'a str) -> Self {
        Self {
            code,
            user_agent: None,
        }
    }
}

/// The state of a trade at the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TradeState {
    /// Paid (including paid and later (partly) refunded).
    Succeeded,
    /// Waiting for the payer (password entry, or not yet scanned).
    UserPaying,
    /// Created, not paid.
    NotPaid,
    /// Closed or reversed without payment.
    Closed,
    /// The payment failed.
    Failed,
}

/// A trade as the channel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trade {
    pub out_trade_no: String,
    pub channel_trade_no: Option<String>,
    pub state: TradeState,
    /// The channel's own state name (`SUCCESS`, `TRADE_SUCCESS`, `00`, …), for logs and operators.
    pub channel_state: String,
    /// The order amount in CNY fen, when the channel reported it (a success without it is not
    /// settled: the amount cannot be checked).
    pub amount_minor: Option<i64>,
    pub paid_at: Option<DateTime<Utc>>,
    /// The payer's id at the channel (openid, buyer_id, …), when reported.
    pub payer_id: Option<String>,
}

/// The result of charging a customer's payment code (B2C).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PayOutcome {
    Succeeded {
        trade: Trade,
    },
    /// The channel declined; the money did not move.
    Failed {
        code: String,
        message: String,
    },
    /// The payer must confirm (password); poll with `query`.
    UserPaying {
        channel_trade_no: Option<String>,
    },
    /// The outcome is not known (timeout, 5xx, system error): query, then reverse.
    Unknown {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    pub out_trade_no: String,
    pub out_refund_no: String,
    pub refund_amount: Money,
    /// The original payment's amount (WeChat requires it).
    pub total_amount: Money,
    pub reason: Option<String>,
    pub notify_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundState {
    Processing,
    Succeeded,
    /// Closed or abnormal: the refund did not happen.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundInfo {
    pub out_trade_no: Option<String>,
    pub out_refund_no: String,
    pub channel_refund_no: Option<String>,
    pub state: RefundState,
    pub channel_state: String,
    pub amount_minor: Option<i64>,
    pub succeeded_at: Option<DateTime<Utc>>,
}

/// The result of asking a channel for a refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RefundOutcome {
    Succeeded { refund: RefundInfo },
    Processing { refund: RefundInfo },
    Failed { code: String, message: String },
    Unknown { reason: String },
}

/// What a verified notification says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NotificationEvent {
    Payment { trade: Trade },
    Refund { refund: RefundInfo },
}

/// A verified, decoded notification, its id for de-duplication and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: Option<String>,
    pub event: NotificationEvent,
}

/// The HTTP answer a channel expects to a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillKind {
    Payment,
    Refund,
}

/// One line of a channel's bill (对账单), normalised. Amounts are positive minor units; `kind`
/// says whether money came in (payment) or went back (refund).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillRecord {
    pub channel_trade_no: String,
    pub out_trade_no: String,
    pub out_refund_no: Option<String>,
    pub kind: BillKind,
    pub amount_minor: i64,
    pub fee_minor: i64,
    /// The channel's status text for the line (`SUCCESS`, `交易`, …).
    pub status: String,
    /// The channel's local time (Asia/Shanghai for the Chinese channels).
    pub time: NaiveDateTime,
}

/// A bill being read: records one at a time (never the whole file in memory). The summary check
/// runs when the last record has been read; a mismatch is returned as the final `Err`.
pub type BillRecords = Box<dyn Iterator<Item = Result<BillRecord, BillError>> + Send>;

/// A bill file that cannot be trusted: the error says where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillError {
    #[error("bill line {line}: {message}")]
    Line { line: u64, message: String },
    #[error("bill summary mismatch: {0}")]
    SummaryMismatch(String),
    #[error("bill is truncated: {0}")]
    Truncated(String),
    #[error("bill encoding: {0}")]
    Encoding(String),
    #[error("bill digest mismatch: expected {expected}, got {actual}")]
    Digest { expected: String, actual: String },
    #[error("bill i/o: {0}")]
    Io(String),
}

/// Why a channel call did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The request certainly did not reach the channel (connection refused, DNS failure before
    /// sending): safe to fail over.
    #[error("channel unreachable: {0}")]
    Unreachable(String),
    /// The request may have reached the channel and the answer is unknown (timeout, 5xx, reset).
    #[error("channel outcome unknown: {0}")]
    Unknown(String),
    /// The channel answered with an explicit business error.
    #[error("channel rejected the request: {code}: {message}")]
    Rejected { code: String, message: String },
    /// A signature did not verify (response or notification): the message is not trusted.
    #[error("signature verification failed: {0}")]
    Signature(String),
    /// The message does not follow the channel's protocol (missing fields, bad JSON, …).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The operation is not supported by this channel.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// Local configuration (keys, ids) is invalid.
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Bill(#[from] BillError),
}

impl ChannelError {
    /// Whether the money certainly did not move, so that another route may be tried.
    pub fn is_safe_to_fail_over(&self) -> bool {
        matches!(self, ChannelError::Unreachable(_))
    }
}

/// A payment channel account: one configured merchant account at one channel.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    fn capabilities(&self) -> &Capabilities;

    /// C2B: create an order the payer pays by scanning or inside their wallet app.
    async fn create_order(&self, req: &CreateOrder) -> Result<CreatedOrder, ChannelError>;

    /// B2C: charge the customer's payment code (付款码).
    async fn pay_with_code(&self, order: &OrderRequest, auth_code: &str) -> PayOutcome;

    async fn query(&self, out_trade_no: &str) -> Result<Trade, ChannelError>;

    async fn close(&self, out_trade_no: &str) -> Result<(), ChannelError>;

    /// Reverse / cancel a code payment: closes it, refunding the payer if it was paid.
    async fn reverse(&self, out_trade_no: &str) -> Result<(), ChannelError>;

    async fn refund(&self, req: &RefundRequest) -> RefundOutcome;

    async fn query_refund(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<RefundInfo, ChannelError>;

    /// Verifies and decodes a notification from its raw HTTP headers and body.
    fn verify_notification(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Notification, ChannelError>;

    /// The answer the channel expects: `ok = true` acknowledges, `false` asks it to retry.
    fn notification_reply(&self, ok: bool) -> NotificationReply;

    /// Downloads the bill of a day (the channel's local date) as normalised records, verified against
    /// the file's own digest and summary rows.
    async fn download_bill(&self, date: NaiveDate) -> Result<BillRecords, ChannelError>;

    /// In-app (JSAPI) payments: where to send the payer's wallet app so that it comes back to
    /// `redirect_uri` with a one-time code and `state` (WeChat OAuth `snsapi_base`, Alipay
    /// `auth_base`). `None`: this account cannot learn the payer's id.
    fn payer_auth_url(&self, _redirect_uri: &str, _state: &str) -> Option<String> {
        None
    }

    /// The payer's id at the channel (WeChat `openid`, Alipay `buyer_id`, UnionPay `appUserId`)
    /// for the code the authorisation redirect brought back.
    async fn payer_id(&self, _auth: &PayerAuth<'_>) -> Result<String, ChannelError> {
        Err(ChannelError::Config(
            "this channel account cannot learn the payer's id".into(),
        ))
    }

    /// A sandbox account's page that stands in for the wallet app's in-app payment call
    /// (`WeixinJSBridge` `getBrandWCPayRequest`, `AlipayJSBridge` `tradePay`); `None` for live
    /// accounts.
    fn wallet_stand_in_url(&self) -> Option<String> {
        None
    }
}
