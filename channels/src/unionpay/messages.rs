//! The typed messages of UnionPay QR through the ACP 5.1.0 style gateway, their form encoding, and
//! the mapping of response codes onto the channel-neutral outcomes.
//!
//! # Messages
//!
//! Every request carries `version=5.1.0`, `encoding=UTF-8`, `merId`, `orderId`, `txnTime`
//! (`yyyyMMddHHmmss`, Asia/Shanghai), `accessType=0` (merchant direct) and the signature fields
//! ([`super::sign`]). Amounts (`txnAmt`, `settleAmt`) are whole fen, 1–12 digits.
//!
//! | message | `txnType` | `txnSubType` | `bizType` | `channelType` | further fields | answer |
//! |---|---|---|---|---|---|---|
//! | [`B2cPayRequest`] (被扫, charge the customer's code) | `01` | `06` | `000000` | `08` | `qrNo`, `txnAmt`, `currencyCode=156`, `backUrl` | [`B2cPayResponse`]: `respCode=00` only means *accepted*; the result comes by notification or query |
//! | [`C2bCreateRequest`] (主扫, merchant QR) | `01` | `07` | `000000` | `08` | `txnAmt`, `currencyCode=156`, `backUrl` | [`C2bCreateResponse`]: `qrCode` |
//! | [`UserAuthRequest`] (the payer's id for an in-app payment) | `00` | `10` | `000000` | `08` | `userAuthCode` (from the wallet's `userAuth` redirect), `appUpIdentifier` (the `UnionPay/<ver> <app>` token of the wallet's User-Agent) | [`UserAuthResponse`]: `appUserId` |
//! | [`JsOrderRequest`] (in-app order, paid in the wallet) | `01` | `01` | `000000` | `08` | `tradeType=mobileWeb`, `appUserId`, `txnAmt`, `currencyCode=156`, `backUrl` | [`JsOrderResponse`]: `tn`, handed to the wallet's JS (`upsdk.pay`) |
//! | [`QueryRequest`] | `00` | `00` | `000000` | — | `orderId` + `txnTime` of the original order | [`QueryResponse`]: `origRespCode` is the order's state |
//! | [`RefundRequest`] | `04` | `00` | `000000` | `08` | `origQryId`, `txnAmt`, `currencyCode=156`, `backUrl` | [`RefundResponse`]: `respCode=00` means accepted |
//! | [`CancelRequest`] (消费撤销) | `31` | `00` | `000000` | `08` | `origQryId`, `txnAmt` (the whole payment), `currencyCode=156`, `backUrl` | [`CancelResponse`]: `respCode=00` means done |
//! | [`FileTransRequest`] (daily file) | `76` | `01` | `000000` | — | `settleDate` (`MMdd`), `fileType=00`; no `orderId` | [`FileTransResponse`]: `fileContent` (base64 of the file) |
//! | [`BackNotification`] (form POST to `backUrl`) | `01` / `04` | | | | `respCode`, `queryId`, `txnAmt`, `settleAmt`, `settleDate` (`MMdd`), `origQryId` (refunds) | reply HTTP 200 with the text `ok` ([`notification_reply`]) |
//!
//! Messages travel as `application/x-www-form-urlencoded` UTF-8 bodies ([`encode_form`],
//! [`decode_form`]). A field that appears twice, a field without a name or a body that does not decode
//! to UTF-8 is an error, never silently resolved.
//!
//! # Response codes
//!
//! `respCode` says what became of the request itself; in a query's answer `origRespCode` says what
//! became of the queried order. Both map through [`classify`]:
//!
//! | code | ACP meaning | [`RespClass`] | order ([`trade_state`]) | B2C pay answer | refund answer | C2B create / query answer |
//! |---|---|---|---|---|---|---|
//! | `00` | success | `Success` | `Succeeded` | `UserPaying` (accepted: query for the result) | `Processing` (accepted) | the QR code / the order |
//! | `A6` | success with defects (UnionPay's own demos treat it as success) | `Success` | `Succeeded` | as `00` | as `00` | as `00` |
//! | `03` | communication timeout | `InProgress` | `UserPaying` | `Unknown` | `Unknown` | `ChannelError::Unknown` |
//! | `04` | state unknown | `InProgress` | `UserPaying` | `Unknown` | `Unknown` | `ChannelError::Unknown` |
//! | `05` | accepted, in progress | `InProgress` | `UserPaying` | `Unknown` | `Unknown` | `ChannelError::Unknown` |
//! | anything else (`01`, `02`, `06`–`99`, `34` no such order, …) | failed | `Failed` | `Failed` | `Failed { code, message }` | `Failed { code, message }` | `ChannelError::Rejected { code, message }` |
//!
//! # Customers' codes (`qrNo`)
//!
//! A C2B code is 1–20 ASCII digits ([`C2bCode::parse`]); the codes UnionPay QuickPass and bank wallets
//! show are 19 digits starting with `62` ([`C2bCode::parse_wallet`], [`C2bCode::is_wallet_code`]).

use chrono::{DateTime, NaiveDateTime, TimeZone as _, Utc};

use super::Fields;
use super::sign::{SignError, SignKey, VerifyKeys};
use crate::types::{
    ChannelError, CreatedOrder, Notification, NotificationEvent, NotificationReply, PayOutcome,
    RefundInfo, RefundOutcome, RefundState, Trade, TradeState,
};

/// `version`.
pub const VERSION: &str = "5.1.0";
/// `encoding`.
pub const ENCODING: &str = "UTF-8";
/// `currencyCode` of CNY (ISO 4217 numeric).
pub const CURRENCY_CNY: &str = "156";
/// `bizType` of QR payments.
pub const BIZ_TYPE_QR: &str = "000000";
/// `channelType` of mobile.
pub const CHANNEL_TYPE_MOBILE: &str = "08";
/// `accessType` of a merchant connected directly.
pub const ACCESS_TYPE_MERCHANT: &str = "0";
/// `txnSubType` of a B2C payment (charge the customer's code).
pub const SUB_TYPE_B2C: &str = "06";
/// `txnSubType` of a C2B order (merchant QR).
pub const SUB_TYPE_C2B: &str = "07";
/// `txnSubType` of an in-app (JS) order paid inside the payer's wallet (`txnType=01`).
pub const SUB_TYPE_JS: &str = "01";
/// `txnType` of the payer's user-id exchange (`userAuthCode` → `appUserId`).
pub const TXN_TYPE_USER_AUTH: &str = "00";
/// `txnSubType` of the payer's user-id exchange.
pub const SUB_TYPE_USER_AUTH: &str = "10";
/// `tradeType` of an in-app order paid in a wallet's web view.
pub const TRADE_TYPE_MOBILE_WEB: &str = "mobileWeb";
/// The most bytes of an `appUpIdentifier` or `appUserId` accepted.
pub const APP_FIELD_MAX: usize = 64;
/// The `txnTime` format.
pub const TXN_TIME_FORMAT: &str = "%Y%m%d%H%M%S";
/// `txnType` of a cancel (消费撤销).
pub const TXN_TYPE_CANCEL: &str = "31";
/// `txnType` of a file download.
pub const TXN_TYPE_FILE: &str = "76";
/// `txnSubType` of a file download.
pub const SUB_TYPE_FILE: &str = "01";
/// `fileType` of the daily transaction file.
pub const FILE_TYPE_DAILY: &str = "00";
/// Most digits an amount field may have.
pub const MAX_AMOUNT_DIGITS: usize = 12;

/// Why a message could not be read or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("form body is not UTF-8")]
    NotUtf8,
    #[error("form field `{0}` appears more than once")]
    DuplicateField(String),
    #[error("form field without a name")]
    EmptyName,
    #[error("missing or empty field `{0}`")]
    Missing(&'static str),
    #[error("field `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl From<MessageError> for ChannelError {
    fn from(e: MessageError) -> Self {
        ChannelError::Protocol(e.to_string())
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> MessageError {
    MessageError::Invalid {
        field,
        message: message.into(),
    }
}

/// A value for an error message: at most 40 characters of it, debug-quoted.
fn shown(value: &str) -> String {
    format!("{:?}", value.chars().take(40).collect::<String>())
}

// ---------------------------------------------------------------------------------------------------
// Form encoding

/// Renders fields as an `application/x-www-form-urlencoded` body.
pub fn encode_form(fields: &Fields) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// Parses an `application/x-www-form-urlencoded` UTF-8 body (`+` is a space, `%XX` a byte; a `%` not
/// followed by two hex digits is kept literally). Empty segments (`a=1&&b=2`) are skipped; a segment
/// without `=` is a field with an empty value.
pub fn decode_form(body: &[u8]) -> Result<Fields, MessageError> {
    let text = std::str::from_utf8(body).map_err(|_| MessageError::NotUtf8)?;
    let mut fields = Fields::new();
    for segment in text.split('&').filter(|s| !s.is_empty()) {
        let (name, value) = segment.split_once('=').unwrap_or((segment, ""));
        let name = decode_component(name)?;
        if name.is_empty() {
            return Err(MessageError::EmptyName);
        }
        let value = decode_component(value)?;
        if fields.contains_key(&name) {
            return Err(MessageError::DuplicateField(
                name.chars().take(40).collect(),
            ));
        }
        fields.insert(name, value);
    }
    Ok(fields)
}

fn decode_component(raw: &str) -> Result<String, MessageError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| MessageError::NotUtf8)
}

/// Signs fields with `key` and renders them as a form body.
pub fn encode_signed(mut fields: Fields, key: &SignKey) -> Result<String, SignError> {
    key.sign(&mut fields)?;
    Ok(encode_form(&fields))
}

/// Decodes a form body and verifies its signature with the key its `certId` names.
pub fn decode_verified(body: &[u8], keys: &VerifyKeys) -> Result<Fields, ChannelError> {
    let fields = decode_form(body)?;
    keys.verify(&fields)?;
    Ok(fields)
}

// ---------------------------------------------------------------------------------------------------
// Field values

/// Formats a `txnTime` (`yyyyMMddHHmmss`).
pub fn format_txn_time(time: NaiveDateTime) -> String {
    time.format(TXN_TIME_FORMAT).to_string()
}

/// Parses a `txnTime`: exactly 14 ASCII digits forming a valid date and time.
pub fn parse_txn_time(value: &str) -> Result<NaiveDateTime, MessageError> {
    parse_time_field("txnTime", value)
}

fn parse_time_field(field: &'static str, value: &str) -> Result<NaiveDateTime, MessageError> {
    if value.len() != 14 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            field,
            format!("{} is not 14 digits yyyyMMddHHmmss", shown(value)),
        ));
    }
    NaiveDateTime::parse_from_str(value, TXN_TIME_FORMAT).map_err(|_| {
        invalid(
            field,
            format!("{} is not a valid date and time", shown(value)),
        )
    })
}

/// A `txnTime` (Asia/Shanghai) as an instant.
pub fn txn_time_utc(time: NaiveDateTime) -> Option<DateTime<Utc>> {
    chrono_tz::Asia::Shanghai
        .from_local_datetime(&time)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

/// Parses an amount in fen: 1–12 ASCII digits (no sign, no decimal point).
pub fn parse_fen(field: &'static str, value: &str) -> Result<i64, MessageError> {
    if value.is_empty()
        || value.len() > MAX_AMOUNT_DIGITS
        || !value.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid(
            field,
            format!(
                "{} is not 1–{MAX_AMOUNT_DIGITS} digits of fen",
                shown(value)
            ),
        ));
    }
    // At most 12 digits: always fits in i64.
    value
        .parse::<i64>()
        .map_err(|_| invalid(field, "out of range"))
}

fn format_positive_fen(field: &'static str, amount: i64) -> Result<String, MessageError> {
    if amount <= 0 || amount >= 10i64.pow(MAX_AMOUNT_DIGITS as u32) {
        return Err(invalid(
            field,
            format!("amount {amount} fen is not in 1..10^{MAX_AMOUNT_DIGITS}"),
        ));
    }
    Ok(amount.to_string())
}

fn check_alnum(
    field: &'static str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<(), MessageError> {
    if value.is_empty() {
        return Err(MessageError::Missing(field));
    }
    if value.len() < min || value.len() > max || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(invalid(
            field,
            format!(
                "{} is not {min}–{max} ASCII letters or digits",
                shown(value)
            ),
        ));
    }
    Ok(())
}

/// `merId`: 15 ASCII letters or digits (ACP `AN15`).
pub fn check_mer_id(value: &str) -> Result<(), MessageError> {
    check_alnum("merId", value, 15, 15)
}

/// `orderId`: 8–40 ASCII letters or digits (ACP `AN8..40`; no `-` or `_`).
pub fn check_order_id(value: &str) -> Result<(), MessageError> {
    check_alnum("orderId", value, 8, 40)
}

/// `queryId` / `origQryId` (UnionPay's trade number): 1–40 ASCII letters or digits.
pub fn check_query_id(field: &'static str, value: &str) -> Result<(), MessageError> {
    check_alnum(field, value, 1, 40)
}

fn check_url(field: &'static str, value: &str) -> Result<(), MessageError> {
    if value.is_empty() {
        return Err(MessageError::Missing(field));
    }
    if !(value.starts_with("http://") || value.starts_with("https://")) || value.len() > 256 {
        return Err(invalid(
            field,
            format!(
                "{} is not an http(s) URL of at most 256 bytes",
                shown(value)
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Customers' codes

/// Why a customer's code is not a UnionPay C2B code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum C2bCodeError {
    #[error("C2B code is empty")]
    Empty,
    #[error("C2B code has {0} characters; at most 20 digits")]
    TooLong(usize),
    #[error("C2B code has a non-digit at character {0}")]
    NotDigit(usize),
    #[error("not a wallet code: wallets show 19 digits starting with 62")]
    NotWalletCode,
}

/// A customer's UnionPay C2B code (`qrNo`): 1–20 ASCII digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct C2bCode(String);

impl C2bCode {
    pub const MAX_LEN: usize = 20;
    pub const WALLET_LEN: usize = 19;
    pub const WALLET_PREFIX: &'static str = "62";

    /// Any C2B code: 1–20 ASCII digits (no surrounding whitespace).
    pub fn parse(code: &str) -> Result<Self, C2bCodeError> {
        if code.is_empty() {
            return Err(C2bCodeError::Empty);
        }
        if let Some(position) = code.chars().position(|c| !c.is_ascii_digit()) {
            return Err(C2bCodeError::NotDigit(position));
        }
        if code.len() > Self::MAX_LEN {
            return Err(C2bCodeError::TooLong(code.len()));
        }
        Ok(Self(code.to_string()))
    }

    /// A code shown by UnionPay QuickPass or a bank wallet: 19 digits starting with `62`.
    pub fn parse_wallet(code: &str) -> Result<Self, C2bCodeError> {
        let parsed = Self::parse(code)?;
        if parsed.is_wallet_code() {
            Ok(parsed)
        } else {
            Err(C2bCodeError::NotWalletCode)
        }
    }

    /// Whether the code has the wallets' form (19 digits starting with `62`).
    pub fn is_wallet_code(&self) -> bool {
        self.0.len() == Self::WALLET_LEN && self.0.starts_with(Self::WALLET_PREFIX)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for C2bCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------------------------------
// Response codes

/// What a `respCode` / `origRespCode` says (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespClass {
    /// `00`, `A6`.
    Success,
    /// `03`, `04`, `05`: the outcome is not known yet; query later.
    InProgress,
    /// Any other code.
    Failed,
}

/// Classifies a `respCode` or `origRespCode`.
pub fn classify(code: &str) -> RespClass {
    match code {
        "00" | "A6" => RespClass::Success,
        "03" | "04" | "05" => RespClass::InProgress,
        _ => RespClass::Failed,
    }
}

/// The state of an order from a query's `origRespCode` (or a payment notification's `respCode`).
pub fn trade_state(orig_resp_code: &str) -> TradeState {
    match classify(orig_resp_code) {
        RespClass::Success => TradeState::Succeeded,
        RespClass::InProgress => TradeState::UserPaying,
        RespClass::Failed => TradeState::Failed,
    }
}

fn check_resp_code(field: &'static str, value: &str) -> Result<(), MessageError> {
    if value.len() != 2 || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(invalid(
            field,
            format!("{} is not 2 ASCII letters or digits", shown(value)),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Reading and writing fields

/// Typed access to received fields with precise errors.
struct Reader<'a>(&'a Fields);

impl<'a> Reader<'a> {
    fn opt(&self, name: &'static str) -> Option<&'a str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn req(&self, name: &'static str) -> Result<&'a str, MessageError> {
        self.opt(name).ok_or(MessageError::Missing(name))
    }

    fn expect(&self, name: &'static str, value: &str) -> Result<(), MessageError> {
        let got = self.req(name)?;
        if got == value {
            Ok(())
        } else {
            Err(invalid(
                name,
                format!("expected {value:?}, got {}", shown(got)),
            ))
        }
    }

    fn fen(&self, name: &'static str) -> Result<i64, MessageError> {
        parse_fen(name, self.req(name)?)
    }

    fn opt_fen(&self, name: &'static str) -> Result<Option<i64>, MessageError> {
        self.opt(name).map(|v| parse_fen(name, v)).transpose()
    }

    fn time(&self, name: &'static str) -> Result<NaiveDateTime, MessageError> {
        parse_time_field(name, self.req(name)?)
    }

    fn mer_id(&self) -> Result<String, MessageError> {
        let v = self.req("merId")?;
        check_mer_id(v)?;
        Ok(v.to_string())
    }

    fn order_id(&self) -> Result<String, MessageError> {
        let v = self.req("orderId")?;
        check_order_id(v)?;
        Ok(v.to_string())
    }

    fn query_id(&self, name: &'static str) -> Result<String, MessageError> {
        let v = self.req(name)?;
        check_query_id(name, v)?;
        Ok(v.to_string())
    }

    fn opt_query_id(&self, name: &'static str) -> Result<Option<String>, MessageError> {
        self.opt(name).map(|_| self.query_id(name)).transpose()
    }

    fn resp_code(&self, name: &'static str) -> Result<String, MessageError> {
        let v = self.req(name)?;
        check_resp_code(name, v)?;
        Ok(v.to_string())
    }

    fn url(&self, name: &'static str) -> Result<String, MessageError> {
        let v = self.req(name)?;
        check_url(name, v)?;
        Ok(v.to_string())
    }

    fn text(&self, name: &'static str) -> String {
        self.opt(name).unwrap_or_default().to_string()
    }

    /// The fields every ACP message carries.
    fn envelope(&self, txn_type: &str, txn_sub_type: &str) -> Result<(), MessageError> {
        self.expect("version", VERSION)?;
        let encoding = self.req("encoding")?;
        if !encoding.eq_ignore_ascii_case(ENCODING) {
            return Err(invalid(
                "encoding",
                format!("expected UTF-8, got {}", shown(encoding)),
            ));
        }
        self.expect("txnType", txn_type)?;
        self.expect("txnSubType", txn_sub_type)?;
        self.expect("bizType", BIZ_TYPE_QR)?;
        Ok(())
    }
}

fn put(fields: &mut Fields, name: &str, value: impl Into<String>) {
    fields.insert(name.to_string(), value.into());
}

fn put_opt(fields: &mut Fields, name: &str, value: Option<impl Into<String>>) {
    if let Some(v) = value {
        fields.insert(name.to_string(), v.into());
    }
}

fn envelope(
    txn_type: &str,
    txn_sub_type: &str,
    mer_id: &str,
    order_id: &str,
    txn_time: NaiveDateTime,
) -> Fields {
    let mut f = Fields::new();
    put(&mut f, "version", VERSION);
    put(&mut f, "encoding", ENCODING);
    put(&mut f, "txnType", txn_type);
    put(&mut f, "txnSubType", txn_sub_type);
    put(&mut f, "bizType", BIZ_TYPE_QR);
    put(&mut f, "accessType", ACCESS_TYPE_MERCHANT);
    put(&mut f, "merId", mer_id);
    put(&mut f, "orderId", order_id);
    put(&mut f, "txnTime", format_txn_time(txn_time));
    f
}

fn check_ids(mer_id: &str, order_id: &str) -> Result<(), MessageError> {
    check_mer_id(mer_id)?;
    check_order_id(order_id)
}

fn put_resp(f: &mut Fields, resp_code: &str, resp_msg: &str) {
    put(f, "respCode", resp_code);
    put(f, "respMsg", resp_msg);
}

fn describe(code: &str, message: &str) -> String {
    if message.is_empty() {
        format!("respCode {code}")
    } else {
        format!("respCode {code}: {message}")
    }
}

// ---------------------------------------------------------------------------------------------------
// B2C payment

/// Charge a customer's C2B code (被扫).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct B2cPayRequest {
    pub mer_id: String,
    pub order_id: String,
    pub txn_time: NaiveDateTime,
    /// Fen, 1 ..= 999 999 999 999.
    pub txn_amt: i64,
    pub qr_no: C2bCode,
    pub back_url: String,
}

impl B2cPayRequest {
    /// The unsigned fields; the values are checked.
    pub fn to_fields(&self) -> Result<Fields, MessageError> {
        check_ids(&self.mer_id, &self.order_id)?;
        check_url("backUrl", &self.back_url)?;
        let mut f = envelope(
            "01",
            SUB_TYPE_B2C,
            &self.mer_id,
            &self.order_id,
            self.txn_time,
        );
        put(&mut f, "channelType", CHANNEL_TYPE_MOBILE);
        put(
            &mut f,
            "txnAmt",
            format_positive_fen("txnAmt", self.txn_amt)?,
        );
        put(&mut f, "currencyCode", CURRENCY_CNY);
        put(&mut f, "qrNo", self.qr_no.as_str());
        put(&mut f, "backUrl", self.back_url.as_str());
        Ok(f)
    }

    /// Reads a request (the sandbox's side), its signature already verified.
    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope("01", SUB_TYPE_B2C)?;
        r.expect("channelType", CHANNEL_TYPE_MOBILE)?;
        r.expect("currencyCode", CURRENCY_CNY)?;
        let qr_no = C2bCode::parse(r.req("qrNo")?).map_err(|e| invalid("qrNo", e.to_string()))?;
        let txn_amt = r.fen("txnAmt")?;
        if txn_amt == 0 {
            return Err(invalid("txnAmt", "must be positive"));
        }
        Ok(Self {
            mer_id: r.mer_id()?,
            order_id: r.order_id()?,
            txn_time: r.time("txnTime")?,
            txn_amt,
            qr_no,
            back_url: r.url("backUrl")?,
        })
    }
}

/// The gateway's answer to a [`B2cPayRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct B2cPayResponse {
    pub mer_id: String,
    pub order_id: String,
    pub txn_time: NaiveDateTime,
    pub resp_code: String,
    pub resp_msg: String,
    /// UnionPay's trade number, when assigned.
    pub query_id: Option<String>,
    pub txn_amt: Option<i64>,
}

impl B2cPayResponse {
    pub fn to_fields(&self) -> Fields {
        let mut f = envelope(
            "01",
            SUB_TYPE_B2C,
            &self.mer_id,
            &self.order_id,
            self.txn_time,
        );
        put_resp(&mut f, &self.resp_code, &self.resp_msg);
        put_opt(&mut f, "queryId", self.query_id.as_deref());
        put_opt(&mut f, "txnAmt", self.txn_amt.map(|a| a.to_string()));
        f
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope("01", SUB_TYPE_B2C)?;
        Ok(Self {
            mer_id: r.mer_id()?,
            order_id: r.order_id()?,
            txn_time: r.time("txnTime")?,
            resp_code: r.resp_code("respCode")?,
            resp_msg: r.text("respMsg"),
            query_id: r.opt_query_id("queryId")?,
            txn_amt: r.opt_fen("txnAmt")?,
        })
    }

    /// `00` / `A6` → `UserPaying` (accepted; the result comes by notification or query), `03`–`05` →
    /// `Unknown`, others → `Failed`.
    pub fn outcome(&self) -> PayOutcome {
        match classify(&self.resp_code) {
            RespClass::Success => PayOutcome::UserPaying {
                channel_trade_no: self.query_id.clone(),
            },
            RespClass::InProgress => PayOutcome::Unknown {
                reason: describe(&self.resp_code, &self.resp_msg),
            },
            RespClass::Failed => PayOutcome::Failed {
                code: self.resp_code.clone(),
                message: self.resp_msg.clone(),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// C2B order creation

/// Create an order the customer pays by scanning the returned `qrCode` (主扫).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2bCreateRequest {
    pub mer_id: String,
    pub order_id: String,
    pub txn_time: NaiveDateTime,
    pub txn_amt: i64,
    pub back_url: String,
}

impl C2bCreateRequest {
    pub fn to_fields(&self) -> Result<Fields, MessageError> {
        check_ids(&self.mer_id, &self.order_id)?;
        check_url("backUrl", &self.back_url)?;
        let mut f = envelope(
            "01",
            SUB_TYPE_C2B,
            &self.mer_id,
            &self.order_id,
            self.txn_time,
        );
        put(&mut f, "channelType", CHANNEL_TYPE_MOBILE);
        put(
            &mut f,
            "txnAmt",
            format_positive_fen("txnAmt", self.txn_amt)?,
        );
        put(&mut f, "currencyCode", CURRENCY_CNY);
        put(&mut f, "backUrl", self.back_url.as_str());
        Ok(f)
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope("01", SUB_TYPE_C2B)?;
        r.expect("channelType", CHANNEL_TYPE_MOBILE)?;
        r.expect("currencyCode", CURRENCY_CNY)?;
        let txn_amt = r.fen("txnAmt")?;
        if txn_amt == 0 {
            return Err(invalid("txnAmt", "must be positive"));
        }
        Ok(Self {
            mer_id: r.mer_id()?,
            order_id: r.order_id()?,
            txn_time: r.time("txnTime")?,
            txn_amt,
            back_url: r.url("backUrl")?,
        })
    }
}

/// The gateway's answer to a [`C2bCreateRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2bCreateResponse {
    pub mer_id: String,
    pub order_id: String,
    pub txn_time: NaiveDateTime,
    pub resp_code: String,
    pub resp_msg: String,
    /// The code to show, e.g. `https://qr.95516.com/00010001/…`.
    pub qr_code: Option<String>,
}

impl C2bCreateResponse {
    pub fn to_fields(&self) -> Fields {
        let mut f = envelope(
            "01",
            SUB_TYPE_C2B,
            &self.mer_id,
            &self.order_id,
            self.txn_time,
        );
        put_resp(&mut f, &self.resp_code, &self.resp_msg);
        put_opt(&mut f, "qrCode", self.qr_code.as_deref());
        f
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope("01", SUB_TYPE_C2B)?;
        Ok(Self {
            mer_id: r.mer_id()?,
            order_id: r.order_id()?,
            txn_time: r.time("txnTime")?,
            resp_code: r.resp_code("respCode")?,
            resp_msg: r.text("respMsg"),
            qr_code: r.opt("qrCode").map(str::to_string),
        })
    }

    /// The code to show, or why there is none.
    pub fn created(&self) -> Result<CreatedOrder, ChannelError> {
        match classify(&self.resp_code) {
            RespClass::Success => match &self.qr_code {
                Some(code) => Ok(CreatedOrder::Qr {
                    code_url: code.clone(),
                }),
                None => Err(ChannelError::Protocol(
                    "respCode 00 without `qrCode`".into(),
                )),
            },
            RespClass::InProgress => Err(ChannelError::Unknown(describe(
                &self.resp_code,
                &self.resp_msg,
            ))),
            RespClass::Failed => Err(ChannelError::Rejected {
                code: self.resp_code.clone(),
                message: self.resp_msg.clone(),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// In-app payment: the payer's id, then the order
//
// Modelled on the public integrations of UnionPay's `userAuth` flow; which parts are modelled is
// said in the adapter's documentation.

/// The `appUpIdentifier` of a wallet's User-Agent: the `UnionPay/<version> <app>` token (e.g.
/// `UnionPay/1.0 CloudPay`), `None` when there is none.
pub fn app_up_identifier(user_agent: &str) -> Option<&str> {
    let start = user_agent.find("UnionPay/")?;
    let rest = &user_agent[start..];
    let version_end = rest.find(' ')?;
    let version = &rest["UnionPay/".len()..version_end];
    let app_len = rest[version_end + 1..]
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len() - version_end - 1);
    let end = version_end + 1 + app_len;
    let ok = !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && app_len > 0
        && end <= APP_FIELD_MAX;
    ok.then(|| &rest[..end])
}

fn check_app_up_identifier(value: &str) -> Result<(), MessageError> {
    if app_up_identifier(value) == Some(value) {
        Ok(())
    } else {
        Err(invalid(
            "appUpIdentifier",
            format!("{} is not `UnionPay/<version> <app>`", shown(value)),
        ))
    }
}

fn check_token(field: &'static str, value: &str) -> Result<(), MessageError> {
    if value.is_empty() {
        return Err(MessageError::Missing(field));
    }
    if value.len() > APP_FIELD_MAX
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid(
            field,
            format!(
                "{} is not 1–{APP_FIELD_MAX} letters, digits, `_` or `-`",
                shown(value)
            ),
        ));
    }
    Ok(())
}

/// Exchange the wallet's one-time `userAuthCode` for the payer's `appUserId`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAuthRequest {
    pub mer_id: String,
    /// A fresh order number of the exchange itself.
    pub order_id: String,
    pub txn_time: NaiveDateTime,
    pub user_auth_code: String,
    /// `UnionPay/<version> <app>` from the payer's User-Agent ([`app_up_identifier`]).
    pub app_up_identifier: String,
}

impl UserAuthRequest {
    pub fn to_fields(&self) -> Result<Fields, MessageError> {
        check_ids(&self.mer_id, &self.order_id)?;
        check_token("userAuthCode", &self.user_auth_code)?;
        check_app_up_identifier(&self.app_up_identifier)?;
        let mut f = envelope(
            TXN_TYPE_USER_AUTH,
            SUB_TYPE_USER_AUTH,
            &self.mer_id,
            &self.order_id,
            self.txn_time,
        );
        put(&mut f, "channelType", CHANNEL_TYPE_MOBILE);
        put(&mut f, "userAuthCode", self.user_auth_code.as_str());
        put(&mut f, "appUpIdentifier", self.app_up_identifier.as_str());
        Ok(f)
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope(TXN_TYPE_USER_AUTH, SUB_TYPE_USER_AUTH)?;
        r.expect("channelType", CHANNEL_TYPE_MOBILE)?;
        let user_auth_code = r.req("userAuthCode")?;
        check_token("userAuthCode", user_auth_code)?;
        let app = r.req("appUpIdentifier")?;
        check_app_up_identifier(app)?;
        Ok(Self {
            mer_id: r.mer_id()?,
            order_id: r.order_id()?,
            txn_time: r.time("txnTime")?,
            user_auth_code: user_auth_code.to_string(),
            app_up_identifier: app.to_string(),
        })
    }
}

/// The gateway's answer to a [`UserAuthRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAuthResponse {
    pub mer_id: String,
    pub order_id: String,
    pub txn_time: NaiveDateTime,
    pub resp_code: String,
    pub resp_msg: String,
    pub app_user_id: Option<String>,
}

impl UserAuthResponse {
    pub fn to_fields(&self) -> Fields {
        let mut f = envelope(
            TXN_TYPE_USER_AUTH,
            SUB_TYPE_USER_AUTH,
            &self.mer_id,
            &self.order_id,
            self.txn_time,
        );
        put_resp(&mut f, &self.resp_code, &self.resp_msg);
        put_opt(&mut f, "appUserId", self.app_user_id.as_deref());
        f
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope(TXN_TYPE_USER_AUTH, SUB_TYPE_USER_AUTH)?;
        let app_user_id = r.opt("appUserId");
        if let Some(id) = app_user_id {
            check_token("appUserId", id)?;
        }
        Ok(Self {
            mer_id: r.mer_id()?,
            order_id: r.order_id()?,
            txn_time: r.time("txnTime")?,
            resp_code: r.resp_code("respCode")?,
            resp_msg: r.text("respMsg"),
            app_user_id: app_user_id.map(str::to_string),
        })
    }

    /// The payer's `appUserId`, or why there is none.
    pub fn user_id(&self) -> Result<String, ChannelError> {
        match classify(&self.resp_code) {
            RespClass::Success => self
                .app_user_id
                .clone()
                .ok_or_else(|| ChannelError::Protocol("respCode 00 without `appUserId`".into())),
            RespClass::InProgress => Err(ChannelError::Unknown(describe(
                &self.resp_code,
                &self.resp_msg,
            ))),
            RespClass::Failed => Err(ChannelError::Rejected {
                code: self.resp_code.clone(),
                message: self.resp_msg.clone(),
            }),
        }
    }
}

/// Create an in-app order for a known payer (`appUserId`); the answer's `tn` is what the page
/// hands to the wallet's JS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsOrderRequest {
    pub mer_id: String,
    pub order_id: String,
    pub txn_time: NaiveDateTime,
    pub txn_amt: i64,
    pub app_user_id: String,
    pub back_url: String,
}

impl JsOrderRequest {
    pub fn to_fields(&self) -> Result<Fields, MessageError> {
        check_ids(&self.mer_id, &self.order_id)?;
        check_url("backUrl", &self.back_url)?;
        check_token("appUserId", &self.app_user_id)?;
        let mut f = envelope(
            "01",
            SUB_TYPE_JS,
            &self.mer_id,
            &self.order_id,
            self.txn_time,
        );
        put(&mut f, "channelType", CHANNEL_TYPE_MOBILE);
        put(&mut f, "tradeType", TRADE_TYPE_MOBILE_WEB);
        put(&mut f, "appUserId", self.app_user_id.as_str());
        put(
            &mut f,
            "txnAmt",
            format_positive_fen("txnAmt", self.txn_amt)?,
        );
        put(&mut f, "currencyCode", CURRENCY_CNY);
        put(&mut f, "backUrl", self.back_url.as_str());
        Ok(f)
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope("01", SUB_TYPE_JS)?;
        r.expect("channelType", CHANNEL_TYPE_MOBILE)?;
        r.expect("tradeType", TRADE_TYPE_MOBILE_WEB)?;
        r.expect("currencyCode", CURRENCY_CNY)?;
        let app_user_id = r.req("appUserId")?;
        check_token("appUserId", app_user_id)?;
        let txn_amt = r.fen("txnAmt")?;
        if txn_amt == 0 {
            return Err(invalid("txnAmt", "must be positive"));
        }
        Ok(Self {
            mer_id: r.mer_id()?,
            order_id: r.order_id()?,
            txn_time: r.time("txnTime")?,
            txn_amt,
            app_user_id: app_user_id.to_string(),
            back_url: r.url("backUrl")?,
        })
    }
}

/// The gateway's answer to a [`JsOrderRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsOrderResponse {
    pub mer_id: String,
    pub order_id: String,
    pub txn_time: NaiveDateTime,
    pub resp_code: String,
    pub resp_msg: String,
    /// The transaction number the wallet's JS pays.
    pub tn: Option<String>,
}

impl JsOrderResponse {
    pub fn to_fields(&self) -> Fields {
        let mut f = envelope(
            "01",
            SUB_TYPE_JS,
            &self.mer_id,
            &self.order_id,
            self.txn_time,
        );
        put_resp(&mut f, &self.resp_code, &self.resp_msg);
        put_opt(&mut f, "tn", self.tn.as_deref());
        f
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope("01", SUB_TYPE_JS)?;
        let tn = r.opt("tn");
        if let Some(tn) = tn {
            check_token("tn", tn)?;
        }
        Ok(Self {
            mer_id: r.mer_id()?,
            order_id: r.order_id()?,
            txn_time: r.time("txnTime")?,
            resp_code: r.resp_code("respCode")?,
            resp_msg: r.text("respMsg"),
            tn: tn.map(str::to_string),
        })
    }

    /// `{"tn": …}` for the pay page, or why there is none.
    pub fn created(&self) -> Result<CreatedOrder, ChannelError> {
        match classify(&self.resp_code) {
            RespClass::Success => match &self.tn {
                Some(tn) => Ok(CreatedOrder::Jsapi {
                    params: serde_json::json!({ "tn": tn }),
                }),
                None => Err(ChannelError::Protocol("respCode 00 without `tn`".into())),
            },
            RespClass::InProgress => Err(ChannelError::Unknown(describe(
                &self.resp_code,
                &self.resp_msg,
            ))),
            RespClass::Failed => Err(ChannelError::Rejected {
                code: self.resp_code.clone(),
                message: self.resp_msg.clone(),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Query

/// Ask for the state of an order, named by its `orderId` and `txnTime`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRequest {
    pub mer_id: String,
    pub order_id: String,
    /// The `txnTime` the order was submitted with.
    pub txn_time: NaiveDateTime,
}

impl QueryRequest {
    pub fn to_fields(&self) -> Result<Fields, MessageError> {
        check_ids(&self.mer_id, &self.order_id)?;
        Ok(envelope(
            "00",
            "00",
            &self.mer_id,
            &self.order_id,
            self.txn_time,
        ))
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope("00", "00")?;
        Ok(Self {
            mer_id: r.mer_id()?,
            order_id: r.order_id()?,
            txn_time: r.time("txnTime")?,
        })
    }
}

/// The gateway's answer to a [`QueryRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryResponse {
    pub mer_id: String,
    pub order_id: String,
    pub txn_time: NaiveDateTime,
    /// Whether the query itself succeeded (`34`: no such order).
    pub resp_code: String,
    pub resp_msg: String,
    /// The queried order's state; present when `respCode` is success.
    pub orig_resp_code: Option<String>,
    pub orig_resp_msg: Option<String>,
    pub query_id: Option<String>,
    pub txn_amt: Option<i64>,
    pub settle_amt: Option<i64>,
    /// `MMdd`.
    pub settle_date: Option<String>,
}

impl QueryResponse {
    pub fn to_fields(&self) -> Fields {
        let mut f = envelope("00", "00", &self.mer_id, &self.order_id, self.txn_time);
        put_resp(&mut f, &self.resp_code, &self.resp_msg);
        put_opt(&mut f, "origRespCode", self.orig_resp_code.as_deref());
        put_opt(&mut f, "origRespMsg", self.orig_resp_msg.as_deref());
        put_opt(&mut f, "queryId", self.query_id.as_deref());
        put_opt(&mut f, "txnAmt", self.txn_amt.map(|a| a.to_string()));
        put_opt(&mut f, "settleAmt", self.settle_amt.map(|a| a.to_string()));
        put_opt(&mut f, "settleDate", self.settle_date.as_deref());
        f
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope("00", "00")?;
        let resp_code = r.resp_code("respCode")?;
        let orig_resp_code = match r.opt("origRespCode") {
            Some(_) => Some(r.resp_code("origRespCode")?),
            None if classify(&resp_code) == RespClass::Success => {
                return Err(MessageError::Missing("origRespCode"));
            }
            None => None,
        };
        Ok(Self {
            mer_id: r.mer_id()?,
            order_id: r.order_id()?,
            txn_time: r.time("txnTime")?,
            resp_code,
            resp_msg: r.text("respMsg"),
            orig_resp_code,
            orig_resp_msg: r.opt("origRespMsg").map(str::to_string),
            query_id: r.opt_query_id("queryId")?,
            txn_amt: r.opt_fen("txnAmt")?,
            settle_amt: r.opt_fen("settleAmt")?,
            settle_date: r
                .opt("settleDate")
                .map(|d| check_settle_date(d).map(|()| d.to_string()))
                .transpose()?,
        })
    }

    /// The order's state: `respCode` success → the order by `origRespCode`; `03`–`05` →
    /// `ChannelError::Unknown`; others → `ChannelError::Rejected`. A paid order's `paid_at` is its
    /// `txnTime` (the answer carries no completion time of its own).
    pub fn to_trade(&self) -> Result<Trade, ChannelError> {
        match classify(&self.resp_code) {
            RespClass::Success => {}
            RespClass::InProgress => {
                return Err(ChannelError::Unknown(describe(
                    &self.resp_code,
                    &self.resp_msg,
                )));
            }
            RespClass::Failed => {
                return Err(ChannelError::Rejected {
                    code: self.resp_code.clone(),
                    message: self.resp_msg.clone(),
                });
            }
        }
        let orig = self.orig_resp_code.as_deref().ok_or_else(|| {
            ChannelError::Protocol("query succeeded without `origRespCode`".into())
        })?;
        let state = trade_state(orig);
        Ok(Trade {
            out_trade_no: self.order_id.clone(),
            channel_trade_no: self.query_id.clone(),
            state,
            channel_state: orig.to_string(),
            amount_minor: self.txn_amt,
            paid_at: (state == TradeState::Succeeded)
                .then(|| txn_time_utc(self.txn_time))
                .flatten(),
            payer_id: None,
        })
    }
}

fn check_settle_date(value: &str) -> Result<(), MessageError> {
    let ok = value.len() == 4
        && value.bytes().all(|b| b.is_ascii_digit())
        && matches!(value[..2].parse::<u8>(), Ok(1..=12))
        && matches!(value[2..].parse::<u8>(), Ok(1..=31));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "settleDate",
            format!("{} is not MMdd", shown(value)),
        ))
    }
}

// ---------------------------------------------------------------------------------------------------
// Refund

/// Refund (part of) a payment, named by its `queryId`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub mer_id: String,
    /// The refund's own order number.
    pub order_id: String,
    pub txn_time: NaiveDateTime,
    pub txn_amt: i64,
    /// The payment's `queryId`.
    pub orig_qry_id: String,
    pub back_url: String,
}

impl RefundRequest {
    pub fn to_fields(&self) -> Result<Fields, MessageError> {
        check_ids(&self.mer_id, &self.order_id)?;
        check_query_id("origQryId", &self.orig_qry_id)?;
        check_url("backUrl", &self.back_url)?;
        let mut f = envelope("04", "00", &self.mer_id, &self.order_id, self.txn_time);
        put(&mut f, "channelType", CHANNEL_TYPE_MOBILE);
        put(
            &mut f,
            "txnAmt",
            format_positive_fen("txnAmt", self.txn_amt)?,
        );
        put(&mut f, "currencyCode", CURRENCY_CNY);
        put(&mut f, "origQryId", self.orig_qry_id.as_str());
        put(&mut f, "backUrl", self.back_url.as_str());
        Ok(f)
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope("04", "00")?;
        r.expect("channelType", CHANNEL_TYPE_MOBILE)?;
        r.expect("currencyCode", CURRENCY_CNY)?;
        let txn_amt = r.fen("txnAmt")?;
        if txn_amt == 0 {
            return Err(invalid("txnAmt", "must be positive"));
        }
        Ok(Self {
            mer_id: r.mer_id()?,
            order_id: r.order_id()?,
            txn_time: r.time("txnTime")?,
            txn_amt,
            orig_qry_id: r.query_id("origQryId")?,
            back_url: r.url("backUrl")?,
        })
    }
}

/// The gateway's answer to a [`RefundRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundResponse {
    pub mer_id: String,
    pub order_id: String,
    pub txn_time: NaiveDateTime,
    pub resp_code: String,
    pub resp_msg: String,
    /// The refund's own `queryId`, when assigned.
    pub query_id: Option<String>,
    pub orig_qry_id: Option<String>,
    pub txn_amt: Option<i64>,
}

impl RefundResponse {
    pub fn to_fields(&self) -> Fields {
        let mut f = envelope("04", "00", &self.mer_id, &self.order_id, self.txn_time);
        put_resp(&mut f, &self.resp_code, &self.resp_msg);
        put_opt(&mut f, "queryId", self.query_id.as_deref());
        put_opt(&mut f, "origQryId", self.orig_qry_id.as_deref());
        put_opt(&mut f, "txnAmt", self.txn_amt.map(|a| a.to_string()));
        f
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope("04", "00")?;
        Ok(Self {
            mer_id: r.mer_id()?,
            order_id: r.order_id()?,
            txn_time: r.time("txnTime")?,
            resp_code: r.resp_code("respCode")?,
            resp_msg: r.text("respMsg"),
            query_id: r.opt_query_id("queryId")?,
            orig_qry_id: r.opt_query_id("origQryId")?,
            txn_amt: r.opt_fen("txnAmt")?,
        })
    }

    /// `00` / `A6` → `Processing` (accepted; the result comes by notification or query), `03`–`05` →
    /// `Unknown`, others → `Failed`.
    pub fn outcome(&self) -> RefundOutcome {
        match classify(&self.resp_code) {
            RespClass::Success => RefundOutcome::Processing {
                refund: RefundInfo {
                    out_trade_no: None,
                    out_refund_no: self.order_id.clone(),
                    channel_refund_no: self.query_id.clone(),
                    state: RefundState::Processing,
                    channel_state: self.resp_code.clone(),
                    amount_minor: self.txn_amt,
                    succeeded_at: None,
                },
            },
            RespClass::InProgress => RefundOutcome::Unknown {
                reason: describe(&self.resp_code, &self.resp_msg),
            },
            RespClass::Failed => RefundOutcome::Failed {
                code: self.resp_code.clone(),
                message: self.resp_msg.clone(),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Cancel (消费撤销)

/// Cancel a payment (消费撤销, `txnType=31`), named by its `queryId`: a payment still waiting for the
/// payer is closed, a paid one is undone and the payer gets the money back. `txnAmt` is the payment's
/// whole amount. ACP accepts a cancel on the payment's own day only; later, money goes back by refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub mer_id: String,
    /// The cancel's own order number.
    pub order_id: String,
    pub txn_time: NaiveDateTime,
    /// The payment's amount, fen.
    pub txn_amt: i64,
    /// The payment's `queryId`.
    pub orig_qry_id: String,
    pub back_url: String,
}

impl CancelRequest {
    pub fn to_fields(&self) -> Result<Fields, MessageError> {
        check_ids(&self.mer_id, &self.order_id)?;
        check_query_id("origQryId", &self.orig_qry_id)?;
        check_url("backUrl", &self.back_url)?;
        let mut f = envelope(
            TXN_TYPE_CANCEL,
            "00",
            &self.mer_id,
            &self.order_id,
            self.txn_time,
        );
        put(&mut f, "channelType", CHANNEL_TYPE_MOBILE);
        put(
            &mut f,
            "txnAmt",
            format_positive_fen("txnAmt", self.txn_amt)?,
        );
        put(&mut f, "currencyCode", CURRENCY_CNY);
        put(&mut f, "origQryId", self.orig_qry_id.as_str());
        put(&mut f, "backUrl", self.back_url.as_str());
        Ok(f)
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope(TXN_TYPE_CANCEL, "00")?;
        r.expect("channelType", CHANNEL_TYPE_MOBILE)?;
        r.expect("currencyCode", CURRENCY_CNY)?;
        let txn_amt = r.fen("txnAmt")?;
        if txn_amt == 0 {
            return Err(invalid("txnAmt", "must be positive"));
        }
        Ok(Self {
            mer_id: r.mer_id()?,
            order_id: r.order_id()?,
            txn_time: r.time("txnTime")?,
            txn_amt,
            orig_qry_id: r.query_id("origQryId")?,
            back_url: r.url("backUrl")?,
        })
    }
}

/// The gateway's answer to a [`CancelRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelResponse {
    pub mer_id: String,
    pub order_id: String,
    pub txn_time: NaiveDateTime,
    pub resp_code: String,
    pub resp_msg: String,
    /// The cancel's own `queryId`, when assigned.
    pub query_id: Option<String>,
    pub orig_qry_id: Option<String>,
    pub txn_amt: Option<i64>,
}

impl CancelResponse {
    pub fn to_fields(&self) -> Fields {
        let mut f = envelope(
            TXN_TYPE_CANCEL,
            "00",
            &self.mer_id,
            &self.order_id,
            self.txn_time,
        );
        put_resp(&mut f, &self.resp_code, &self.resp_msg);
        put_opt(&mut f, "queryId", self.query_id.as_deref());
        put_opt(&mut f, "origQryId", self.orig_qry_id.as_deref());
        put_opt(&mut f, "txnAmt", self.txn_amt.map(|a| a.to_string()));
        f
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope(TXN_TYPE_CANCEL, "00")?;
        Ok(Self {
            mer_id: r.mer_id()?,
            order_id: r.order_id()?,
            txn_time: r.time("txnTime")?,
            resp_code: r.resp_code("respCode")?,
            resp_msg: r.text("respMsg"),
            query_id: r.opt_query_id("queryId")?,
            orig_qry_id: r.opt_query_id("origQryId")?,
            txn_amt: r.opt_fen("txnAmt")?,
        })
    }

    /// `00` / `A6` → done, `03`–`05` → `ChannelError::Unknown`, others → `ChannelError::Rejected`.
    pub fn result(&self) -> Result<(), ChannelError> {
        match classify(&self.resp_code) {
            RespClass::Success => Ok(()),
            RespClass::InProgress => Err(ChannelError::Unknown(describe(
                &self.resp_code,
                &self.resp_msg,
            ))),
            RespClass::Failed => Err(ChannelError::Rejected {
                code: self.resp_code.clone(),
                message: self.resp_msg.clone(),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Daily file download

/// Ask for the daily transaction file of a settlement date (`txnType=76`, `txnSubType=01`,
/// `fileType=00`). ACP names the day by `settleDate` `MMdd` only: the year is the latest one in which
/// that day is not in the future. There is no `orderId`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTransRequest {
    pub mer_id: String,
    pub txn_time: NaiveDateTime,
    /// `MMdd`.
    pub settle_date: String,
}

impl FileTransRequest {
    pub fn to_fields(&self) -> Result<Fields, MessageError> {
        check_mer_id(&self.mer_id)?;
        check_settle_date(&self.settle_date)?;
        Ok(file_envelope(
            &self.mer_id,
            self.txn_time,
            &self.settle_date,
        ))
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope(TXN_TYPE_FILE, SUB_TYPE_FILE)?;
        r.expect("fileType", FILE_TYPE_DAILY)?;
        let settle_date = r.req("settleDate")?;
        check_settle_date(settle_date)?;
        Ok(Self {
            mer_id: r.mer_id()?,
            txn_time: r.time("txnTime")?,
            settle_date: settle_date.to_string(),
        })
    }
}

fn file_envelope(mer_id: &str, txn_time: NaiveDateTime, settle_date: &str) -> Fields {
    let mut f = Fields::new();
    put(&mut f, "version", VERSION);
    put(&mut f, "encoding", ENCODING);
    put(&mut f, "txnType", TXN_TYPE_FILE);
    put(&mut f, "txnSubType", SUB_TYPE_FILE);
    put(&mut f, "bizType", BIZ_TYPE_QR);
    put(&mut f, "accessType", ACCESS_TYPE_MERCHANT);
    put(&mut f, "merId", mer_id);
    put(&mut f, "txnTime", format_txn_time(txn_time));
    put(&mut f, "settleDate", settle_date);
    put(&mut f, "fileType", FILE_TYPE_DAILY);
    f
}

/// The gateway's answer to a [`FileTransRequest`]: the file as base64 in `fileContent`.
///
/// ACP sends a zip, deflated and base64-encoded; our file is the plain UTF-8 text of [`super::bill`]
/// base64-encoded (standard alphabet, padded) — small enough not to need compression, and the
/// answer's signature covers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTransResponse {
    pub mer_id: String,
    pub txn_time: NaiveDateTime,
    pub settle_date: String,
    pub resp_code: String,
    pub resp_msg: String,
    pub file_name: Option<String>,
    /// Base64 of the file.
    pub file_content: Option<String>,
}

impl FileTransResponse {
    pub fn to_fields(&self) -> Fields {
        let mut f = file_envelope(&self.mer_id, self.txn_time, &self.settle_date);
        put_resp(&mut f, &self.resp_code, &self.resp_msg);
        put_opt(&mut f, "fileName", self.file_name.as_deref());
        put_opt(&mut f, "fileContent", self.file_content.as_deref());
        f
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        r.envelope(TXN_TYPE_FILE, SUB_TYPE_FILE)?;
        r.expect("fileType", FILE_TYPE_DAILY)?;
        let settle_date = r.req("settleDate")?;
        check_settle_date(settle_date)?;
        Ok(Self {
            mer_id: r.mer_id()?,
            txn_time: r.time("txnTime")?,
            settle_date: settle_date.to_string(),
            resp_code: r.resp_code("respCode")?,
            resp_msg: r.text("respMsg"),
            file_name: r.opt("fileName").map(str::to_string),
            file_content: r.opt("fileContent").map(str::to_string),
        })
    }

    /// The file's bytes: `00` / `A6` with a base64 `fileContent`; `03`–`05` →
    /// `ChannelError::Unknown`; others (e.g. `98`, no file) → `ChannelError::Rejected`.
    pub fn file(&self) -> Result<Vec<u8>, ChannelError> {
        match classify(&self.resp_code) {
            RespClass::Success => {}
            RespClass::InProgress => {
                return Err(ChannelError::Unknown(describe(
                    &self.resp_code,
                    &self.resp_msg,
                )));
            }
            RespClass::Failed => {
                return Err(ChannelError::Rejected {
                    code: self.resp_code.clone(),
                    message: self.resp_msg.clone(),
                });
            }
        }
        let content = self
            .file_content
            .as_deref()
            .ok_or_else(|| ChannelError::Protocol("file answer 00 without `fileContent`".into()))?;
        crate::crypto::b64_decode(content.trim())
            .ok_or_else(|| ChannelError::Protocol("`fileContent` is not base64".into()))
    }
}

// ---------------------------------------------------------------------------------------------------
// Back notification

/// What a back notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifiedTxn {
    /// `txnType=01` (B2C `06`, C2B `07` or in-app `01`).
    Payment,
    /// `txnType=04`.
    Refund,
}

/// The form UnionPay POSTs to `backUrl` when a payment or refund completes. Verify its signature
/// first ([`decode_verified`]); answer with [`notification_reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackNotification {
    pub txn: NotifiedTxn,
    /// `06`, `07`, `01` (payments) or `00` (refunds).
    pub txn_sub_type: String,
    pub mer_id: String,
    /// The payment's or the refund's own order number.
    pub order_id: String,
    pub txn_time: NaiveDateTime,
    pub txn_amt: i64,
    pub resp_code: String,
    pub resp_msg: String,
    pub query_id: String,
    /// The refunded payment's `queryId` (refunds).
    pub orig_qry_id: Option<String>,
    pub settle_amt: Option<i64>,
    /// `MMdd`.
    pub settle_date: Option<String>,
    pub trace_no: Option<String>,
    /// `MMddHHmmss`.
    pub trace_time: Option<String>,
}

impl BackNotification {
    pub fn to_fields(&self) -> Fields {
        let txn_type = match self.txn {
            NotifiedTxn::Payment => "01",
            NotifiedTxn::Refund => "04",
        };
        let mut f = envelope(
            txn_type,
            &self.txn_sub_type,
            &self.mer_id,
            &self.order_id,
            self.txn_time,
        );
        put(&mut f, "channelType", CHANNEL_TYPE_MOBILE);
        put(&mut f, "currencyCode", CURRENCY_CNY);
        put(&mut f, "txnAmt", self.txn_amt.to_string());
        put_resp(&mut f, &self.resp_code, &self.resp_msg);
        put(&mut f, "queryId", self.query_id.as_str());
        put_opt(&mut f, "origQryId", self.orig_qry_id.as_deref());
        put_opt(&mut f, "settleAmt", self.settle_amt.map(|a| a.to_string()));
        put_opt(
            &mut f,
            "settleCurrencyCode",
            self.settle_amt.map(|_| CURRENCY_CNY),
        );
        put_opt(&mut f, "settleDate", self.settle_date.as_deref());
        put_opt(&mut f, "traceNo", self.trace_no.as_deref());
        put_opt(&mut f, "traceTime", self.trace_time.as_deref());
        f
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, MessageError> {
        let r = Reader(fields);
        let (txn, txn_sub_type) = match (r.req("txnType")?, r.req("txnSubType")?) {
            ("01", sub @ (SUB_TYPE_B2C | SUB_TYPE_C2B | SUB_TYPE_JS)) => {
                (NotifiedTxn::Payment, sub)
            }
            ("04", sub @ "00") => (NotifiedTxn::Refund, sub),
            (t, s) => {
                return Err(invalid(
                    "txnType",
                    format!(
                        "no notification for txnType {} txnSubType {}",
                        shown(t),
                        shown(s)
                    ),
                ));
            }
        };
        r.envelope(
            if txn == NotifiedTxn::Payment {
                "01"
            } else {
                "04"
            },
            txn_sub_type,
        )?;
        let orig_qry_id = match txn {
            NotifiedTxn::Refund => Some(r.query_id("origQryId")?),
            NotifiedTxn::Payment => r.opt_query_id("origQryId")?,
        };
        Ok(Self {
            txn,
            txn_sub_type: txn_sub_type.to_string(),
            mer_id: r.mer_id()?,
            order_id: r.order_id()?,
            txn_time: r.time("txnTime")?,
            txn_amt: r.fen("txnAmt")?,
            resp_code: r.resp_code("respCode")?,
            resp_msg: r.text("respMsg"),
            query_id: r.query_id("queryId")?,
            orig_qry_id,
            settle_amt: r.opt_fen("settleAmt")?,
            settle_date: r
                .opt("settleDate")
                .map(|d| check_settle_date(d).map(|()| d.to_string()))
                .transpose()?,
            trace_no: r.opt("traceNo").map(str::to_string),
            trace_time: r.opt("traceTime").map(str::to_string),
        })
    }

    /// The channel-neutral notification; its id is the `queryId`. A payment's `paid_at` and a refund's
    /// `succeeded_at` are taken from `txnTime` (the notification carries no completion time of its own).
    pub fn to_notification(&self) -> Notification {
        let class = classify(&self.resp_code);
        let at = (class == RespClass::Success)
            .then(|| txn_time_utc(self.txn_time))
            .flatten();
        let event = match self.txn {
            NotifiedTxn::Payment => NotificationEvent::Payment {
                trade: Trade {
                    out_trade_no: self.order_id.clone(),
                    channel_trade_no: Some(self.query_id.clone()),
                    state: trade_state(&self.resp_code),
                    channel_state: self.resp_code.clone(),
                    amount_minor: Some(self.txn_amt),
                    paid_at: at,
                    payer_id: None,
                },
            },
            NotifiedTxn::Refund => NotificationEvent::Refund {
                refund: RefundInfo {
                    out_trade_no: None,
                    out_refund_no: self.order_id.clone(),
                    channel_refund_no: Some(self.query_id.clone()),
                    state: match class {
                        RespClass::Success => RefundState::Succeeded,
                        RespClass::InProgress => RefundState::Processing,
                        RespClass::Failed => RefundState::Failed,
                    },
                    channel_state: self.resp_code.clone(),
                    amount_minor: Some(self.txn_amt),
                    succeeded_at: at,
                },
            },
        };
        Notification {
            id: Some(self.query_id.clone()),
            event,
        }
    }
}

/// The answer to a back notification: HTTP 200 with the text `ok` acknowledges; anything else
/// (here HTTP 500 `fail`) makes UnionPay send it again.
pub fn notification_reply(ok: bool) -> NotificationReply {
    if ok {
        NotificationReply {
            status: 200,
            content_type: "text/plain",
            body: b"ok".to_vec(),
        }
    } else {
        NotificationReply {
            status: 500,
            content_type: "text/plain",
            body: b"fail".to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_round_trip_with_reserved_characters() {
        let mut f = Fields::new();
        f.insert("signature".into(), "ab+/=cd".into());
        f.insert("respMsg".into(), "成功 & ok=1%".into());
        let body = encode_form(&f);
        assert_eq!(decode_form(body.as_bytes()).unwrap(), f);
    }

    #[test]
    fn form_errors_are_precise() {
        assert_eq!(
            decode_form(b"a=1&a=2"),
            Err(MessageError::DuplicateField("a".into()))
        );
        assert_eq!(decode_form(b"=1"), Err(MessageError::EmptyName));
        assert_eq!(decode_form(b"a=%FF"), Err(MessageError::NotUtf8));
        assert_eq!(decode_form(&[b'a', b'=', 0xC3]), Err(MessageError::NotUtf8));
        assert_eq!(decode_form(b"").unwrap(), Fields::new());
        assert_eq!(
            decode_form(b"a&&b=%zz")
                .unwrap()
                .get("b")
                .map(String::as_str),
            Some("%zz")
        );
    }

    #[test]
    fn txn_time_is_strict() {
        let t = parse_txn_time("20240229235959").unwrap();
        assert_eq!(format_txn_time(t), "20240229235959");
        for bad in [
            "20230229120000",
            "2024022912000",
            "+0240229120000",
            "20240229 12000",
            "",
        ] {
            assert!(parse_txn_time(bad).is_err(), "{bad}");
        }
        assert_eq!(
            txn_time_utc(t).unwrap().to_rfc3339(),
            "2024-02-29T15:59:59+00:00"
        );
    }

    #[test]
    fn fen_is_digits_only() {
        assert_eq!(parse_fen("txnAmt", "000000000100"), Ok(100));
        for bad in ["", "1.00", "-1", "+1", "1234567890123", " 1"] {
            assert!(parse_fen("txnAmt", bad).is_err(), "{bad}");
        }
    }
}
