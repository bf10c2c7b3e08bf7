//! The payment as stored and as shown to merchants.

use paymux_model::{
    ChannelAccountId, Currency, MerchantId, PayMethod, PaymentId, PaymentStatus, WalletBrand,
};
use serde::Serialize;
use uuid::Uuid;

use crate::db::us_to_datetime;

/// A payment row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PaymentRow {
    pub id: Uuid,
    pub merchant_id: Uuid,
    pub merchant_order_no: String,
    pub request_hash: String,
    pub amount_minor: i64,
    pub currency: String,
    pub subject: String,
    pub method: String,
    pub wallet: Option<String>,
    pub status: String,
    pub notify_url: Option<String>,
    pub store_id: Option<String>,
    pub terminal_id: Option<String>,
    pub metadata: Option<String>,
    pub refunded_amount_minor: i64,
    pub channel_account_id: Option<Uuid>,
    pub channel_trade_no: Option<String>,
    pub late_success: bool,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub closed_reason: Option<String>,
    pub expires_at_us: i64,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    pub paid_at_us: Option<i64>,
    /// The channel's code for a C2B payment (`weixin://wxpay/bizpayurl?pr=…`, `https://qr.alipay.com/…`).
    pub qr_code: Option<String>,
}

/// The columns of [`PaymentRow`], in order, for SELECTs.
pub const PAYMENT_COLUMNS: &str = "id, merchant_id, merchant_order_no, request_hash, amount_minor, currency, subject, \
    method, wallet, status, notify_url, store_id, terminal_id, metadata, refunded_amount_minor, channel_account_id, \
    channel_trade_no, late_success, failure_code, failure_message, closed_reason, expires_at_us, created_at_us, \
    updated_at_us, paid_at_us, qr_code";

impl PaymentRow {
    pub fn status(&self) -> PaymentStatus {
        self.status.parse().unwrap_or(PaymentStatus::Created)
    }
}

/// A payment as the API shows it. Amounts are integers in minor units of `currency`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Payment {
    pub id: PaymentId,
    pub merchant_id: MerchantId,
    pub merchant_order_no: String,
    /// Amount in minor units (fen for CNY).
    pub amount: i64,
    pub currency: Currency,
    pub subject: String,
    pub method: PayMethod,
    pub wallet: Option<WalletBrand>,
    pub status: PaymentStatus,
    /// Total refunded so far, in minor units.
    pub refunded_amount: i64,
    pub notify_url: Option<String>,
    pub store_id: Option<String>,
    pub terminal_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    pub channel_account_id: Option<ChannelAccountId>,
    pub channel_trade_no: Option<String>,
    /// True when the channel reported success after the payment had been closed.
    pub late_success: bool,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub closed_reason: Option<String>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub paid_at: Option<chrono::DateTime<chrono::Utc>>,
    /// For `qr_merchant`: the content of the QR code to show — with a `wallet`, the channel's own
    /// code; without, the payment's link (`pay_url`), which any wallet app can open.
    pub qr_code: Option<String>,
    /// For `qr_merchant` without a `wallet`: the aggregated payment page `<public_base_url>/p/<token>`,
    /// paid inside the WeChat, Alipay or UnionPay QuickPass app that opens it.
    pub pay_url: Option<String>,
}

impl From<&PaymentRow> for Payment {
    fn from(r: &PaymentRow) -> Payment {
        Payment {
            id: PaymentId::from_uuid(r.id),
            merchant_id: MerchantId::from_uuid(r.merchant_id),
            merchant_order_no: r.merchant_order_no.clone(),
            amount: r.amount_minor,
            currency: r.currency.parse().unwrap_or(Currency::Cny),
            subject: r.subject.clone(),
            method: r.method.parse().unwrap_or(PayMethod::QrMerchant),
            wallet: r.wallet.as_deref().and_then(|w| w.parse().ok()),
            status: r.status(),
            refunded_amount: r.refunded_amount_minor,
            notify_url: r.notify_url.clone(),
            store_id: r.store_id.clone(),
            terminal_id: r.terminal_id.clone(),
            metadata: r
                .metadata
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok()),
            channel_account_id: r.channel_account_id.map(ChannelAccountId::from_uuid),
            channel_trade_no: r.channel_trade_no.clone(),
            late_success: r.late_success,
            failure_code: r.failure_code.clone(),
            failure_message: r.failure_message.clone(),
            closed_reason: r.closed_reason.clone(),
            expires_at: us_to_datetime(r.expires_at_us),
            created_at: us_to_datetime(r.created_at_us),
            updated_at: us_to_datetime(r.updated_at_us),
            paid_at: r.paid_at_us.map(us_to_datetime),
            qr_code: r.qr_code.clone(),
            pay_url: None,
        }
    }
}
