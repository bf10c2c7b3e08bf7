//! The UnionPay QR sandbox: the gateway's paths and form messages, signatures checked by `certId`
//! and given on every answer and notification, its own keys and books, payers whose behaviour the
//! customer's code chooses, back notifications with a retry schedule, fault injection and daily files.
//!
//! | path | what |
//! |---|---|
//! | `POST /gateway/api/backTransReq.do` | B2C charge (`01`/`06`), C2B order (`01`/`07`), in-app order (`01`/`01`), user-id exchange (`00`/`10`), refund (`04`), cancel (`31`) |
//! | `POST /gateway/api/queryTrans.do` | query (`00`) by `orderId` + `txnTime` |
//! | `POST /gateway/api/fileTransRequest.do` | daily file (`76`, `fileType=00`, `settleDate=MMdd`) → base64 `fileContent` |
//! | `POST /sandbox/pay` `{"qr_code": …}` or `{"tn": …}` | a payer scans and pays a C2B order, or pays an in-app order |
//! | `GET /qrcGtwWeb-web/api/userAuth?version=1.0.0&redirectUrl=…` | stands in for the wallet's user authorisation: 302 to `redirectUrl` with `userAuthCode` and `respCode=00` (a new sandbox payer each time) |
//! | `POST /sandbox/wallet` (form: `tn`, `return_url`, `action`) | stands in for the wallet's `upsdk.pay` sheet of an in-app order: shows it; `action=pay` pays it (then notifies) and returns to `return_url`, `action=cancel` returns unpaid |
//! | `GET`/`PUT /sandbox/faults` | fault injection |
//! | `POST /sandbox/notifications/{orderId}` `?times=N` | re-send a paid order's notification now |
//! | `GET /sandbox/account` | the ids and public keys a client needs (never the private keys) |
//!
//! # Answers
//!
//! Every answer is HTTP 200 with a signed form (the fault injector's HTTP 500 excepted). A request the
//! sandbox refuses echoes the request's `version`, `encoding`, `txnType`, `txnSubType`, `bizType`,
//! `accessType`, `merId`, `orderId`, `txnTime` (and `settleDate`, `fileType`) with one of these codes:
//!
//! | `respCode` | when |
//! |---|---|
//! | `10` | the form does not decode, or a field is invalid (报文格式错误) |
//! | `11` | signature missing, unknown `certId`, wrong `signMethod` for the key, or bad signature (验证签名失败) |
//! | `12` | the `orderId` was used for another transaction (重复交易) |
//! | `13` | a required field is missing (报文交易要素缺失) |
//! | `30` | the customer's code is not a wallet code (19 digits starting `62`) or is invalid/expired (交易未通过) |
//! | `31` | the `merId` is not the sandbox merchant's (商户状态不正确) |
//! | `33` | a refund exceeds what is left of the payment (金额超限) |
//! | `34` | query: no transaction with this `orderId` and `txnTime` (查无此交易) |
//! | `35` | refund/cancel: no payment with this `origQryId`, or not in a state that allows it, or a cancel after the payment's day (原交易不存在或状态不正确) |
//! | `36` | cancel: `txnAmt` is not the payment's amount (与原交易信息不符) |
//! | `60` | insufficient balance (交易失败) |
//! | `98` | file: no file for that date yet (文件不存在) |
//! | `03` | a system error after the money moved (payer `…1005`): the outcome must be queried |
//! | `04` | the sandbox's books failed: the outcome is unknown |
//!
//! # Payers
//!
//! A B2C `qrNo` must be 19 digits starting `62`; its last four digits choose the payer
//! ([`PayerBehaviour`]): `1001` enters a password, then pays after the password wait; `1002` never
//! does (the order fails with `origRespCode=01` after the wait, and can be cancelled meanwhile);
//! `1003` lacks balance (`60`); `1004` shows an invalid code (`30`); `1005` pays but the answer is
//! `03`. Others pay at once. A B2C answer `00` only means *accepted*: the query gives the result.
//! A C2B order's `qrCode` is `https://qr.95516.com/00010001/62…`; `POST /sandbox/pay` pays it.
//!
//! # In-app payments
//!
//! The `userAuth` stand-in issues a one-time `userAuthCode` (valid 5 minutes) for a new payer. The
//! user-id exchange (`00`/`10`) redeems it once for the payer's `appUserId`: an unknown, expired or
//! used code is refused with `30`, a missing `appUpIdentifier` with `13`, one that is not
//! `UnionPay/<version> <app>` with `10`. The in-app order (`01`/`01`, `tradeType=mobileWeb`) answers a
//! 21-digit `tn`; the same `orderId` sent again with the same amount and `txnTime` while unpaid answers
//! the same `tn` (another payer may open it), anything else is `12`. The wallet stand-in pays it like
//! a scanned C2B order: notification, query and daily file.
//!
//! The order states a query reports as `origRespCode`: `05` waiting for the payer, `00` paid, `01`
//! failed or cancelled (`origRespMsg` says which). Refunds are `05` for a moment, then `00`. A cancel
//! is done synchronously. A paid order cancelled (payer `1005` reversed, say) answers `01` from then
//! on; its money goes back, and the daily file lists that as a `04` line under the cancel's `orderId`.
//! Cancelling an order that already failed (or was cancelled) answers `00` and changes nothing.
//!
//! # Notifications
//!
//! When a payment or refund succeeds, the signed [`BackNotification`] form is POSTed to its `backUrl`;
//! HTTP 200 acknowledges. Unacknowledged notifications are sent again after 1, 2, 4, 8 and 16 minutes
//! ([`RETRY_SCHEDULE_SECS`], divided by the time compression), then abandoned.
//!
//! # Daily files
//!
//! The file of a settlement date (payments and refunds that succeeded that Shanghai day, fees at
//! `fee_rate_bps`, refunds giving back their share of the fee) is rendered from the books on demand,
//! in the [`super::bill`] layout, for any date before today; `settleDate` `MMdd` names the latest such
//! day.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{Datelike as _, NaiveDate, NaiveDateTime, TimeZone as _, Utc};
use chrono_tz::Asia::Shanghai;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{Row as _, SqlitePool};

use super::adapter::{BACK_TRANS_PATH, FILE_TRANS_PATH, QUERY_PATH, UnionPayConfig, UnionPayKey};
use super::bill::write_bill;
use super::messages::{
    self, B2cPayRequest, B2cPayResponse, BackNotification, C2bCreateRequest, C2bCreateResponse,
    CancelRequest, CancelResponse, FileTransRequest, FileTransResponse, JsOrderRequest,
    JsOrderResponse, MessageError, NotifiedTxn, QueryRequest, QueryResponse, RefundRequest,
    RefundResponse, UserAuthRequest, UserAuthResponse,
};
use super::sign::{GeneratedKey, SignKey, SignMethod, VerifyKeys};
use super::{Fields, sign};
use crate::sandbox::{
    self, Delivery, FaultSwitch, Notifier, PayerBehaviour, SandboxOptions, fee_fen, refund_fee_fen,
};
use crate::types::{BillKind, BillRecord};

/// The notification retry schedule after the first attempt: 1, 2, 4, 8, 16 minutes.
pub const RETRY_SCHEDULE_SECS: [u64; 5] = [60, 120, 240, 480, 960];

/// The `appId` the `userAuth` codes are issued under (the wallet, not a merchant, authorises).
const USER_AUTH_APP: &str = "unionpay-userAuth";

/// The `respMsg` of a success.
const OK_MSG: &str = "成功[0000000]";

/// The merchant account the sandbox serves, with both halves of every key (RSA, `signMethod=01`, and
/// an SM2 merchant key for `signMethod=02`). Written to `<data_dir>/unionpay/account.json` on first
/// start.
#[derive(Clone, Serialize, Deserialize)]
pub struct SandboxAccount {
    /// `merId`: 15 digits.
    pub mer_id: String,
    pub merchant_cert_id: String,
    pub merchant_private_key: String,
    pub merchant_public_key: String,
    pub merchant_sm2_cert_id: String,
    pub merchant_sm2_private_key: String,
    pub merchant_sm2_public_key: String,
    pub unionpay_cert_id: String,
    pub unionpay_private_key: String,
    pub unionpay_public_key: String,
}

impl std::fmt::Debug for SandboxAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxAccount")
            .field("mer_id", &self.mer_id)
            .field("merchant_cert_id", &self.merchant_cert_id)
            .field("merchant_sm2_cert_id", &self.merchant_sm2_cert_id)
            .field("unionpay_cert_id", &self.unionpay_cert_id)
            .finish_non_exhaustive()
    }
}

fn invalid_data(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

impl SandboxAccount {
    /// Loads the account of a data directory, creating it (with fresh keys) on first use.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join("unionpay").join("account.json");
        let mut failure = None;
        let text = sandbox::load_or_create(&path, || match Self::generate() {
            Ok(a) => serde_json::to_string_pretty(&a).unwrap_or_default(),
            Err(e) => {
                failure = Some(e);
                String::new()
            }
        });
        if let Some(e) = failure {
            let _ = std::fs::remove_file(&path);
            return Err(invalid_data(e));
        }
        serde_json::from_str(&text?).map_err(|e| invalid_data(format!("{}: {e}", path.display())))
    }

    fn generate() -> Result<Self, sign::SignError> {
        let merchant = GeneratedKey::generate(SignMethod::Rsa)?;
        let merchant_sm2 = GeneratedKey::generate(SignMethod::Sm2)?;
        let unionpay = GeneratedKey::generate(SignMethod::Rsa)?;
        Ok(Self {
            mer_id: format!("777{}", sandbox::digits(12)),
            merchant_cert_id: merchant.cert_id,
            merchant_private_key: merchant.private_key_pem,
            merchant_public_key: merchant.public_key_pem,
            merchant_sm2_cert_id: merchant_sm2.cert_id,
            merchant_sm2_private_key: merchant_sm2.private_key_pem,
            merchant_sm2_public_key: merchant_sm2.public_key_pem,
            unionpay_cert_id: unionpay.cert_id,
            unionpay_private_key: unionpay.private_key_pem,
            unionpay_public_key: unionpay.public_key_pem,
        })
    }

    fn unionpay_key(&self) -> UnionPayKey {
        UnionPayKey {
            cert_id: Some(self.unionpay_cert_id.clone()),
            pem: self.unionpay_public_key.clone(),
        }
    }

    /// The adapter configuration of this merchant (RSA, `signMethod=01`).
    pub fn client_config(&self, base_url: &str, notify_url: Option<String>) -> UnionPayConfig {
        UnionPayConfig {
            base_url: base_url.to_string(),
            mer_id: self.mer_id.clone(),
            sign_method: SignMethod::Rsa.code().into(),
            merchant_private_key: self.merchant_private_key.clone(),
            merchant_certificate: None,
            merchant_cert_id: Some(self.merchant_cert_id.clone()),
            unionpay_keys: vec![self.unionpay_key()],
            notify_url,
            user_auth_base_url: Some(base_url.to_string()),
            wallet_stand_in_url: Some(format!("{}/sandbox/wallet", base_url.trim_end_matches('/'))),
        }
    }

    /// The same merchant signing with its SM2 key (`signMethod=02`).
    pub fn client_config_sm2(&self, base_url: &str, notify_url: Option<String>) -> UnionPayConfig {
        UnionPayConfig {
            sign_method: SignMethod::Sm2.code().into(),
            merchant_private_key: self.merchant_sm2_private_key.clone(),
            merchant_cert_id: Some(self.merchant_sm2_cert_id.clone()),
            ..self.client_config(base_url, notify_url)
        }
    }

    fn merchant_keys(&self) -> Result<VerifyKeys, sign::SignError> {
        Ok([
            sign::VerifyKey::rsa_from_pem(&self.merchant_public_key, Some(&self.merchant_cert_id))?,
            sign::VerifyKey::sm2_from_pem(
                &self.merchant_sm2_public_key,
                Some(&self.merchant_sm2_cert_id),
            )?,
        ]
        .into_iter()
        .collect())
    }
}

struct Inner {
    account: SandboxAccount,
    merchant_keys: VerifyKeys,
    signer: SignKey,
    db: SqlitePool,
    opts: SandboxOptions,
    faults: FaultSwitch,
    notifier: Notifier,
    /// Outstanding `userAuthCode`s.
    user_auth: sandbox::OAuthCodes,
}

/// A running UnionPay sandbox (its state); [`UnionPaySandbox::router`] serves it.
#[derive(Clone)]
pub struct UnionPaySandbox(Arc<Inner>);

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS txns (
    order_id      TEXT PRIMARY KEY,
    txn_time      TEXT NOT NULL,
    txn_type      TEXT NOT NULL,
    txn_sub_type  TEXT NOT NULL,
    query_id      TEXT NOT NULL UNIQUE,
    orig_query_id TEXT,
    amount        INTEGER NOT NULL,
    refunded      INTEGER NOT NULL DEFAULT 0,
    fee           INTEGER NOT NULL DEFAULT 0,
    state         TEXT NOT NULL,
    state_msg     TEXT NOT NULL,
    qr_no         TEXT,
    qr_code       TEXT UNIQUE,
    back_url      TEXT NOT NULL,
    cancelled_by  TEXT,
    created_at    INTEGER NOT NULL,
    success_time  INTEGER
);
CREATE INDEX IF NOT EXISTS txns_success ON txns(success_time);
"#;

/// A refusal: `respCode` and `respMsg`.
#[derive(Debug)]
struct Refusal(&'static str, String);

impl Refusal {
    fn new(code: &'static str, msg: impl Into<String>) -> Self {
        Self(code, msg.into())
    }
}

impl From<sqlx::Error> for Refusal {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "unionpay sandbox books");
        Refusal::new("04", "交易状态未明")
    }
}

impl From<MessageError> for Refusal {
    fn from(e: MessageError) -> Self {
        match e {
            MessageError::Missing(_) => Refusal::new("13", format!("报文交易要素缺失: {e}")),
            other => Refusal::new("10", format!("报文格式错误: {other}")),
        }
    }
}

type Answer = Result<Fields, Refusal>;

/// One row of the books: a payment (`01`), refund (`04`) or cancel (`31`).
#[derive(Debug, Clone)]
struct TxnRow {
    order_id: String,
    txn_time: String,
    txn_type: String,
    txn_sub_type: String,
    query_id: String,
    orig_query_id: Option<String>,
    amount: i64,
    refunded: i64,
    fee: i64,
    state: String,
    state_msg: String,
    qr_no: Option<String>,
    qr_code: Option<String>,
    back_url: String,
    created_at: i64,
    success_time: Option<i64>,
}

impl TxnRow {
    fn from_row(r: &sqlx::sqlite::SqliteRow) -> Self {
        Self {
            order_id: r.get("order_id"),
            txn_time: r.get("txn_time"),
            txn_type: r.get("txn_type"),
            txn_sub_type: r.get("txn_sub_type"),
            query_id: r.get("query_id"),
            orig_query_id: r.get("orig_query_id"),
            amount: r.get("amount"),
            refunded: r.get("refunded"),
            fee: r.get("fee"),
            state: r.get("state"),
            state_msg: r.get("state_msg"),
            qr_no: r.get("qr_no"),
            qr_code: r.get("qr_code"),
            back_url: r.get("back_url"),
            created_at: r.get("created_at"),
            success_time: r.get("success_time"),
        }
    }

    fn txn_time(&self) -> NaiveDateTime {
        messages::parse_txn_time(&self.txn_time).unwrap_or_default()
    }
}

fn now() -> i64 {
    Utc::now().timestamp()
}

fn shanghai(ts: i64) -> NaiveDateTime {
    Shanghai
        .timestamp_opt(ts, 0)
        .single()
        .map(|t| t.naive_local())
        .unwrap_or_default()
}

fn today() -> NaiveDate {
    Utc::now().with_timezone(&Shanghai).date_naive()
}

fn day_bounds(date: NaiveDate) -> (i64, i64) {
    let start = date
        .and_hms_opt(0, 0, 0)
        .and_then(|t| Shanghai.from_local_datetime(&t).single())
        .map(|t| t.timestamp())
        .unwrap_or_default();
    (start, start + 86_400)
}

/// A new `queryId`: 21 digits, the Shanghai time to the second and 7 random digits.
fn new_query_id() -> String {
    format!(
        "{}{}",
        shanghai(now()).format("%Y%m%d%H%M%S"),
        sandbox::digits(7)
    )
}

/// The latest day not after `today` whose `MMdd` is `mmdd`.
fn resolve_settle_date(mmdd: &str, today: NaiveDate) -> Option<NaiveDate> {
    let month: u32 = mmdd.get(..2)?.parse().ok()?;
    let day: u32 = mmdd.get(2..4)?.parse().ok()?;
    (0..8).find_map(|back| {
        NaiveDate::from_ymd_opt(today.year() - back, month, day).filter(|d| *d <= today)
    })
}

/// The envelope fields echoed in a refusal.
const ECHOED: [&str; 11] = [
    "version",
    "encoding",
    "txnType",
    "txnSubType",
    "bizType",
    "accessType",
    "merId",
    "orderId",
    "txnTime",
    "settleDate",
    "fileType",
];

impl UnionPaySandbox {
    pub async fn start(opts: SandboxOptions) -> anyhow::Result<Self> {
        let account = SandboxAccount::load_or_create(&opts.data_dir)?;
        let db = sandbox::open_books_with_schema(
            &opts.data_dir.join("unionpay").join("books.sqlite"),
            SCHEMA,
        )
        .await?;
        let faults = FaultSwitch::new(opts.faults.clone());
        let notifier = sandbox::notifier(&RETRY_SCHEDULE_SECS, &opts, &faults);
        Ok(Self(Arc::new(Inner {
            merchant_keys: account.merchant_keys()?,
            signer: SignKey::rsa_from_pem(
                &account.unionpay_private_key,
                Some(&account.unionpay_cert_id),
            )?,
            account,
            db,
            opts,
            faults,
            notifier,
            user_auth: sandbox::OAuthCodes::default(),
        })))
    }

    pub fn account(&self) -> &SandboxAccount {
        &self.0.account
    }

    pub fn faults(&self) -> &FaultSwitch {
        &self.0.faults
    }

    pub fn notifier(&self) -> &Notifier {
        &self.0.notifier
    }

    /// The sandbox's routes (mount at `/` or nest under a prefix).
    pub fn router(&self) -> axum::Router {
        let api = axum::Router::new()
            .route(BACK_TRANS_PATH, post(back_trans))
            .route(QUERY_PATH, post(query_trans))
            .route(FILE_TRANS_PATH, post(file_trans))
            .layer(middleware::from_fn_with_state(
                (self.0.faults.clone(), system_error as fn() -> Response),
                sandbox::inject_faults,
            ));
        let tools = axum::Router::new()
            .route("/sandbox/pay", post(wallet_pay))
            .route("/sandbox/notifications/{no}", post(resend))
            .route("/sandbox/account", get(public_account))
            .route("/sandbox/wallet", post(wallet_stand_in))
            .route(super::adapter::USER_AUTH_PATH, get(user_auth_page));
        api.merge(tools)
            .merge(sandbox::faults_router(self.0.faults.clone()))
            .with_state(self.clone())
    }

    /// Signs an answer and renders it.
    fn answer(&self, mut fields: Fields) -> Response {
        if let Err(e) = self.0.signer.sign(&mut fields) {
            tracing::error!(error = %e, "unionpay sandbox signing");
            return system_error();
        }
        (
            [(
                "content-type",
                "application/x-www-form-urlencoded;charset=UTF-8",
            )],
            messages::encode_form(&fields),
        )
            .into_response()
    }

    /// A signed refusal echoing the request's envelope.
    fn refuse(&self, request: &Fields, refusal: Refusal) -> Response {
        let mut f: Fields = ECHOED
            .iter()
            .filter_map(|k| request.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        f.insert("respCode".into(), refusal.0.into());
        f.insert("respMsg".into(), refusal.1);
        self.answer(f)
    }

    /// Decodes a request and checks its signature and `merId`; otherwise the refusal and what of the
    /// request it echoes.
    fn open(&self, body: &[u8]) -> Result<Fields, (Fields, Refusal)> {
        let fields = messages::decode_form(body).map_err(|e| (Fields::new(), Refusal::from(e)))?;
        if let Err(e) = self.0.merchant_keys.verify(&fields) {
            return Err((fields, Refusal::new("11", format!("验证签名失败: {e}"))));
        }
        if fields.get("merId").map(String::as_str) != Some(self.0.account.mer_id.as_str()) {
            return Err((fields, Refusal::new("31", "商户状态不正确")));
        }
        Ok(fields)
    }

    fn respond(&self, request: &Fields, answer: Answer) -> Response {
        match answer {
            Ok(f) => self.answer(f),
            Err(r) => self.refuse(request, r),
        }
    }

    async fn load(&self, order_id: &str) -> Result<Option<TxnRow>, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM txns WHERE order_id = ?1")
            .bind(order_id)
            .fetch_optional(&self.0.db)
            .await?;
        Ok(row.as_ref().map(TxnRow::from_row))
    }

    async fn load_by_query_id(&self, query_id: &str) -> Result<Option<TxnRow>, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM txns WHERE query_id = ?1")
            .bind(query_id)
            .fetch_optional(&self.0.db)
            .await?;
        Ok(row.as_ref().map(TxnRow::from_row))
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert(
        &self,
        order_id: &str,
        txn_time: NaiveDateTime,
        txn_type: &str,
        txn_sub_type: &str,
        orig_query_id: Option<&str>,
        amount: i64,
        qr_no: Option<&str>,
        qr_code: Option<&str>,
        back_url: &str,
    ) -> Result<TxnRow, Refusal> {
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO txns (order_id, txn_time, txn_type, txn_sub_type, query_id, orig_query_id, amount,
                 state, state_msg, qr_no, qr_code, back_url, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, '05', '交易已受理', ?8, ?9, ?10, ?11)",
        )
        .bind(order_id)
        .bind(messages::format_txn_time(txn_time))
        .bind(txn_type)
        .bind(txn_sub_type)
        .bind(new_query_id())
        .bind(orig_query_id)
        .bind(amount)
        .bind(qr_no)
        .bind(qr_code)
        .bind(back_url)
        .bind(now())
        .execute(&self.0.db)
        .await?
        .rows_affected();
        if inserted != 1 {
            return Err(Refusal::new("12", "重复交易"));
        }
        self.load(order_id)
            .await?
            .ok_or_else(|| Refusal::new("04", "交易状态未明"))
    }

    /// Moves a waiting payment to paid, books its fee and notifies.
    async fn mark_paid(&self, order_id: &str) -> Result<bool, sqlx::Error> {
        let Some(t) = self.load(order_id).await? else {
            return Ok(false);
        };
        let fee = fee_fen(t.amount, self.0.opts.fee_rate_bps);
        let changed = sqlx::query(
            "UPDATE txns SET state = '00', state_msg = ?1, success_time = ?2, fee = ?3
             WHERE order_id = ?4 AND txn_type = '01' AND state = '05'",
        )
        .bind(OK_MSG)
        .bind(now())
        .bind(fee)
        .bind(order_id)
        .execute(&self.0.db)
        .await?
        .rows_affected()
            == 1;
        if changed {
            self.notify(order_id).await?;
        }
        Ok(changed)
    }

    async fn fail_waiting(&self, order_id: &str, msg: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE txns SET state = '01', state_msg = ?1 WHERE order_id = ?2 AND state = '05'",
        )
        .bind(msg)
        .bind(order_id)
        .execute(&self.0.db)
        .await?;
        Ok(())
    }

    /// Sends the notification of a succeeded payment or refund (with the retry schedule).
    async fn notify(&self, order_id: &str) -> Result<(), sqlx::Error> {
        let Some(t) = self.load(order_id).await? else {
            return Ok(());
        };
        let txn = match t.txn_type.as_str() {
            "01" => NotifiedTxn::Payment,
            "04" => NotifiedTxn::Refund,
            _ => return Ok(()),
        };
        let Some(success) = t.success_time else {
            return Ok(());
        };
        let settled = shanghai(success);
        let notification = BackNotification {
            txn,
            txn_sub_type: t.txn_sub_type.clone(),
            mer_id: self.0.account.mer_id.clone(),
            order_id: t.order_id.clone(),
            txn_time: t.txn_time(),
            txn_amt: t.amount,
            resp_code: "00".into(),
            resp_msg: OK_MSG.into(),
            query_id: t.query_id.clone(),
            orig_qry_id: t.orig_query_id.clone(),
            settle_amt: Some(t.amount),
            settle_date: Some(settled.format("%m%d").to_string()),
            trace_no: Some(t.query_id.chars().rev().take(6).collect()),
            trace_time: Some(settled.format("%m%d%H%M%S").to_string()),
        };
        let sb = self.clone();
        let render = move || {
            let mut fields = notification.to_fields();
            if let Err(e) = sb.0.signer.sign(&mut fields) {
                tracing::error!(error = %e, "unionpay sandbox notification signing");
            }
            (
                http::HeaderMap::new(),
                "application/x-www-form-urlencoded;charset=UTF-8",
                messages::encode_form(&fields).into_bytes(),
            )
        };
        self.0.notifier.send(Delivery {
            url: t.back_url.clone(),
            render: Box::new(render),
            accepted: |status, _| status == 200,
        });
        Ok(())
    }

    fn password_wait(&self) -> Duration {
        Duration::from_secs(self.0.opts.password_wait_secs) / self.0.opts.time_compression.max(1)
    }

    async fn b2c(&self, f: &Fields) -> Answer {
        let req = B2cPayRequest::from_fields(f)?;
        let accepted = |t: &TxnRow, code: &str, msg: &str| {
            B2cPayResponse {
                mer_id: req.mer_id.clone(),
                order_id: req.order_id.clone(),
                txn_time: req.txn_time,
                resp_code: code.into(),
                resp_msg: msg.into(),
                query_id: Some(t.query_id.clone()),
                txn_amt: Some(t.amount),
            }
            .to_fields()
        };
        if let Some(t) = self.load(&req.order_id).await? {
            let same = t.txn_type == "01"
                && t.txn_sub_type == messages::SUB_TYPE_B2C
                && t.amount == req.txn_amt
                && t.txn_time() == req.txn_time
                && t.qr_no.as_deref() == Some(req.qr_no.as_str());
            return if same {
                Ok(accepted(&t, "00", OK_MSG))
            } else {
                Err(Refusal::new("12", "重复交易"))
            };
        }
        if !req.qr_no.is_wallet_code() {
            return Err(Refusal::new(
                "30",
                "交易未通过: 付款码应为 62 开头的 19 位数字",
            ));
        }
        let behaviour = PayerBehaviour::of_code(req.qr_no.as_str());
        match behaviour {
            PayerBehaviour::InsufficientFunds => {
                return Err(Refusal::new("60", "交易失败: 余额不足"));
            }
            PayerBehaviour::InvalidCode => {
                return Err(Refusal::new("30", "交易未通过: 付款码无效或已过期"));
            }
            _ => {}
        }
        let t = self
            .insert(
                &req.order_id,
                req.txn_time,
                "01",
                messages::SUB_TYPE_B2C,
                None,
                req.txn_amt,
                Some(req.qr_no.as_str()),
                None,
                &req.back_url,
            )
            .await?;
        match behaviour {
            PayerBehaviour::PasswordThenPaid | PayerBehaviour::PasswordThenTimeout => {
                let sb = self.clone();
                let order_id = t.order_id.clone();
                let wait = self.password_wait();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let done = if behaviour == PayerBehaviour::PasswordThenPaid {
                        sb.mark_paid(&order_id).await.map(|_| ())
                    } else {
                        sb.fail_waiting(&order_id, "交易失败: 用户未输入密码").await
                    };
                    if let Err(e) = done {
                        tracing::error!(error = %e, "unionpay sandbox password wait");
                    }
                });
                Ok(accepted(&t, "00", OK_MSG))
            }
            PayerBehaviour::SystemErrorButPaid => {
                self.mark_paid(&t.order_id).await?;
                Ok(accepted(&t, "03", "交易通讯超时，请发起查询交易"))
            }
            _ => {
                self.mark_paid(&t.order_id).await?;
                Ok(accepted(&t, "00", OK_MSG))
            }
        }
    }

    async fn c2b(&self, f: &Fields) -> Answer {
        let req = C2bCreateRequest::from_fields(f)?;
        let answer = |qr_code: Option<String>| {
            C2bCreateResponse {
                mer_id: req.mer_id.clone(),
                order_id: req.order_id.clone(),
                txn_time: req.txn_time,
                resp_code: "00".into(),
                resp_msg: OK_MSG.into(),
                qr_code,
            }
            .to_fields()
        };
        if let Some(t) = self.load(&req.order_id).await? {
            let same = t.txn_type == "01"
                && t.txn_sub_type == messages::SUB_TYPE_C2B
                && t.amount == req.txn_amt
                && t.txn_time() == req.txn_time
                && t.state == "05";
            return if same {
                Ok(answer(t.qr_code))
            } else {
                Err(Refusal::new("12", "重复交易"))
            };
        }
        let qr_code = format!("https://qr.95516.com/00010001/62{}", sandbox::digits(17));
        let t = self
            .insert(
                &req.order_id,
                req.txn_time,
                "01",
                messages::SUB_TYPE_C2B,
                None,
                req.txn_amt,
                None,
                Some(&qr_code),
                &req.back_url,
            )
            .await?;
        Ok(answer(t.qr_code))
    }

    /// The user-id exchange: a `userAuthCode` (once) and the app's `appUpIdentifier` for the
    /// payer's `appUserId`.
    fn user_id(&self, f: &Fields) -> Answer {
        let req = UserAuthRequest::from_fields(f)?;
        let app_user_id = self
            .0
            .user_auth
            .redeem(USER_AUTH_APP, &req.user_auth_code)
            .ok_or_else(|| Refusal::new("30", "交易未通过: userAuthCode 无效、已过期或已使用"))?;
        Ok(UserAuthResponse {
            mer_id: req.mer_id,
            order_id: req.order_id,
            txn_time: req.txn_time,
            resp_code: "00".into(),
            resp_msg: OK_MSG.into(),
            app_user_id: Some(app_user_id),
        }
        .to_fields())
    }

    /// An in-app order for a known payer: its `tn` (kept in the `qr_code` column, which holds
    /// what the payer's wallet pays: a C2B `qrCode` or an in-app `tn`).
    async fn js_order(&self, f: &Fields) -> Answer {
        let req = JsOrderRequest::from_fields(f)?;
        let answer = |tn: Option<String>| {
            JsOrderResponse {
                mer_id: req.mer_id.clone(),
                order_id: req.order_id.clone(),
                txn_time: req.txn_time,
                resp_code: "00".into(),
                resp_msg: OK_MSG.into(),
                tn,
            }
            .to_fields()
        };
        if let Some(t) = self.load(&req.order_id).await? {
            let same = t.txn_type == "01"
                && t.txn_sub_type == messages::SUB_TYPE_JS
                && t.amount == req.txn_amt
                && t.txn_time() == req.txn_time
                && t.state == "05";
            return if same {
                Ok(answer(t.qr_code))
            } else {
                Err(Refusal::new("12", "重复交易"))
            };
        }
        let tn = new_query_id();
        let t = self
            .insert(
                &req.order_id,
                req.txn_time,
                "01",
                messages::SUB_TYPE_JS,
                None,
                req.txn_amt,
                None,
                Some(&tn),
                &req.back_url,
            )
            .await?;
        Ok(answer(t.qr_code))
    }

    /// The payment a refund or cancel names.
    async fn original(&self, orig_qry_id: &str) -> Result<TxnRow, Refusal> {
        self.load_by_query_id(orig_qry_id)
            .await?
            .filter(|t| t.txn_type == "01")
            .ok_or_else(|| Refusal::new("35", "原交易不存在"))
    }

    async fn refund(&self, f: &Fields) -> Answer {
        let req = RefundRequest::from_fields(f)?;
        let answer = |t: &TxnRow| {
            RefundResponse {
                mer_id: req.mer_id.clone(),
                order_id: req.order_id.clone(),
                txn_time: req.txn_time,
                resp_code: "00".into(),
                resp_msg: OK_MSG.into(),
                query_id: Some(t.query_id.clone()),
                orig_qry_id: Some(req.orig_qry_id.clone()),
                txn_amt: Some(t.amount),
            }
            .to_fields()
        };
        if let Some(t) = self.load(&req.order_id).await? {
            let same = t.txn_type == "04"
                && t.orig_query_id.as_deref() == Some(req.orig_qry_id.as_str())
                && t.amount == req.txn_amt
                && t.txn_time() == req.txn_time;
            return if same {
                Ok(answer(&t))
            } else {
                Err(Refusal::new("12", "重复交易"))
            };
        }
        let orig = self.original(&req.orig_qry_id).await?;
        if orig.state != "00" {
            return Err(Refusal::new("35", "原交易状态不正确"));
        }
        if req.txn_amt > orig.amount - orig.refunded {
            return Err(Refusal::new("33", "退货金额超限"));
        }
        let fee_back = refund_fee_fen(orig.fee, orig.amount, orig.refunded, req.txn_amt);
        let mut tx = self.0.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE txns SET refunded = refunded + ?1 WHERE order_id = ?2 AND refunded = ?3 AND state = '00'",
        )
        .bind(req.txn_amt)
        .bind(&orig.order_id)
        .bind(orig.refunded)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            return Err(Refusal::new("06", "系统繁忙，请稍后重试"));
        }
        sqlx::query(
            "INSERT INTO txns (order_id, txn_time, txn_type, txn_sub_type, query_id, orig_query_id, amount, fee,
                 state, state_msg, back_url, created_at)
             VALUES (?1, ?2, '04', '00', ?3, ?4, ?5, ?6, '05', '交易已受理', ?7, ?8)",
        )
        .bind(&req.order_id)
        .bind(messages::format_txn_time(req.txn_time))
        .bind(new_query_id())
        .bind(&req.orig_qry_id)
        .bind(req.txn_amt)
        .bind(fee_back)
        .bind(&req.back_url)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // The refund completes shortly after, and notifies.
        let sb = self.clone();
        let order_id = req.order_id.clone();
        let delay = self.0.opts.compress(Duration::from_secs(2));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = sb.complete_refund(&order_id).await {
                tracing::error!(error = %e, "unionpay sandbox refund");
            }
        });
        let t = self
            .load(&req.order_id)
            .await?
            .ok_or_else(|| Refusal::new("04", "交易状态未明"))?;
        Ok(answer(&t))
    }

    async fn complete_refund(&self, order_id: &str) -> Result<(), sqlx::Error> {
        let done = sqlx::query(
            "UPDATE txns SET state = '00', state_msg = ?1, success_time = ?2
             WHERE order_id = ?3 AND txn_type = '04' AND state = '05'",
        )
        .bind(OK_MSG)
        .bind(now())
        .bind(order_id)
        .execute(&self.0.db)
        .await?
        .rows_affected();
        if done == 1 {
            self.notify(order_id).await?;
        }
        Ok(())
    }

    async fn cancel(&self, f: &Fields) -> Answer {
        let req = CancelRequest::from_fields(f)?;
        let answer = |t: &TxnRow| {
            CancelResponse {
                mer_id: req.mer_id.clone(),
                order_id: req.order_id.clone(),
                txn_time: req.txn_time,
                resp_code: "00".into(),
                resp_msg: OK_MSG.into(),
                query_id: Some(t.query_id.clone()),
                orig_qry_id: Some(req.orig_qry_id.clone()),
                txn_amt: Some(req.txn_amt),
            }
            .to_fields()
        };
        if let Some(t) = self.load(&req.order_id).await? {
            let same = t.txn_type == "31"
                && t.orig_query_id.as_deref() == Some(req.orig_qry_id.as_str())
                && t.txn_time() == req.txn_time;
            return if same {
                Ok(answer(&t))
            } else {
                Err(Refusal::new("12", "重复交易"))
            };
        }
        let orig = self.original(&req.orig_qry_id).await?;
        if req.txn_amt != orig.amount {
            return Err(Refusal::new(
                "36",
                "与原交易信息不符: 撤销金额应为原交易金额",
            ));
        }
        if shanghai(orig.created_at).date() != today() {
            return Err(Refusal::new("35", "原交易不在撤销期限内，请发起退货"));
        }
        let mut tx = self.0.db.begin().await?;
        let (returned, fee_back) = match orig.state.as_str() {
            "05" => {
                let n = sqlx::query(
                    "UPDATE txns SET state = '01', state_msg = '交易已撤销', cancelled_by = ?1
                     WHERE order_id = ?2 AND state = '05'",
                )
                .bind(&req.order_id)
                .bind(&orig.order_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n != 1 {
                    return Err(Refusal::new("06", "系统繁忙，请稍后重试"));
                }
                (0, 0)
            }
            "00" => {
                let remaining = orig.amount - orig.refunded;
                let fee_back = refund_fee_fen(orig.fee, orig.amount, orig.refunded, remaining);
                let n = sqlx::query(
                    "UPDATE txns SET state = '01', state_msg = '交易已撤销', cancelled_by = ?1, refunded = amount
                     WHERE order_id = ?2 AND state = '00' AND refunded = ?3",
                )
                .bind(&req.order_id)
                .bind(&orig.order_id)
                .bind(orig.refunded)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n != 1 {
                    return Err(Refusal::new("06", "系统繁忙，请稍后重试"));
                }
                (remaining, fee_back)
            }
            // Already failed or cancelled: nothing moved, nothing to give back.
            _ => (0, 0),
        };
        sqlx::query(
            "INSERT INTO txns (order_id, txn_time, txn_type, txn_sub_type, query_id, orig_query_id, amount, fee,
                 state, state_msg, back_url, created_at, success_time)
             VALUES (?1, ?2, '31', '00', ?3, ?4, ?5, ?6, '00', ?7, ?8, ?9, ?9)",
        )
        .bind(&req.order_id)
        .bind(messages::format_txn_time(req.txn_time))
        .bind(new_query_id())
        .bind(&req.orig_qry_id)
        .bind(returned)
        .bind(fee_back)
        .bind(OK_MSG)
        .bind(&req.back_url)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let t = self
            .load(&req.order_id)
            .await?
            .ok_or_else(|| Refusal::new("04", "交易状态未明"))?;
        Ok(answer(&t))
    }

    async fn query(&self, f: &Fields) -> Answer {
        let req = QueryRequest::from_fields(f)?;
        let t = self
            .load(&req.order_id)
            .await?
            .filter(|t| t.txn_time() == req.txn_time)
            .ok_or_else(|| Refusal::new("34", "查无此交易"))?;
        let settled = t
            .success_time
            .filter(|_| t.state == "00")
            .map(|s| shanghai(s).format("%m%d").to_string());
        Ok(QueryResponse {
            mer_id: req.mer_id,
            order_id: req.order_id,
            txn_time: req.txn_time,
            resp_code: "00".into(),
            resp_msg: OK_MSG.into(),
            orig_resp_code: Some(t.state.clone()),
            orig_resp_msg: Some(t.state_msg.clone()),
            query_id: Some(t.query_id.clone()),
            txn_amt: Some(t.amount),
            settle_amt: settled.as_ref().map(|_| t.amount),
            settle_date: settled,
        }
        .to_fields())
    }

    async fn file(&self, f: &Fields) -> Answer {
        let req = FileTransRequest::from_fields(f)?;
        let refuse = || Refusal::new("98", "文件不存在");
        let date = resolve_settle_date(&req.settle_date, today()).ok_or_else(refuse)?;
        if date >= today() {
            return Err(refuse());
        }
        let text = self
            .bill_for(date)
            .await?
            .map_err(|e| Refusal::new("04", format!("对账文件生成失败: {e}")))?;
        Ok(FileTransResponse {
            mer_id: req.mer_id,
            txn_time: req.txn_time,
            settle_date: req.settle_date,
            resp_code: "00".into(),
            resp_msg: OK_MSG.into(),
            file_name: Some(format!(
                "UPQR_{}_{}.txt",
                self.0.account.mer_id,
                date.format("%Y%m%d")
            )),
            file_content: Some(crate::crypto::b64(text.as_bytes())),
        }
        .to_fields())
    }

    /// The records of a Shanghai calendar day from the books: payments that succeeded that day, and
    /// refunds and cancels that gave money back that day.
    pub async fn bill_records(&self, date: NaiveDate) -> Result<Vec<BillRecord>, sqlx::Error> {
        let (start, end) = day_bounds(date);
        let rows = sqlx::query(
            "SELECT t.*, o.order_id AS orig_order_id FROM txns t LEFT JOIN txns o ON o.query_id = t.orig_query_id
             WHERE t.success_time >= ?1 AND t.success_time < ?2 AND t.amount > 0
               AND (t.txn_type = '01' OR (t.txn_type IN ('04', '31') AND t.state = '00'))
             ORDER BY t.success_time, t.order_id",
        )
        .bind(start)
        .bind(end)
        .fetch_all(&self.0.db)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let t = TxnRow::from_row(r);
                let orig: Option<String> = r.get("orig_order_id");
                let (kind, out_trade_no, out_refund_no) = match t.txn_type.as_str() {
                    "01" => (BillKind::Payment, t.order_id.clone(), None),
                    _ => (
                        BillKind::Refund,
                        orig.unwrap_or_default(),
                        Some(t.order_id.clone()),
                    ),
                };
                BillRecord {
                    channel_trade_no: t.query_id.clone(),
                    out_trade_no,
                    out_refund_no,
                    kind,
                    amount_minor: t.amount,
                    fee_minor: t.fee,
                    status: "00".into(),
                    time: t.txn_time(),
                }
            })
            .collect())
    }

    /// The daily file of a Shanghai calendar day, rendered from the books.
    pub async fn bill_for(
        &self,
        date: NaiveDate,
    ) -> Result<Result<String, crate::types::BillError>, sqlx::Error> {
        let records = self.bill_records(date).await?;
        Ok(write_bill(&self.0.account.mer_id, date, &records))
    }
}

fn system_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [("content-type", "text/plain; charset=utf-8")],
        "系统错误",
    )
        .into_response()
}

async fn back_trans(State(sb): State<UnionPaySandbox>, body: Bytes) -> Response {
    let f = match sb.open(&body) {
        Ok(f) => f,
        Err((request, refusal)) => return sb.refuse(&request, refusal),
    };
    let kind = (
        f.get("txnType").map(String::as_str).unwrap_or_default(),
        f.get("txnSubType").map(String::as_str).unwrap_or_default(),
    );
    let answer = match kind {
        ("01", messages::SUB_TYPE_B2C) => sb.b2c(&f).await,
        ("01", messages::SUB_TYPE_C2B) => sb.c2b(&f).await,
        ("01", messages::SUB_TYPE_JS) => sb.js_order(&f).await,
        (messages::TXN_TYPE_USER_AUTH, messages::SUB_TYPE_USER_AUTH) => sb.user_id(&f),
        ("04", "00") => sb.refund(&f).await,
        (messages::TXN_TYPE_CANCEL, "00") => sb.cancel(&f).await,
        (t, s) => Err(Refusal::new(
            "10",
            format!(
                "报文格式错误: backTransReq.do 不受理 txnType {:?} txnSubType {:?}",
                t.chars().take(8).collect::<String>(),
                s.chars().take(8).collect::<String>()
            ),
        )),
    };
    sb.respond(&f, answer)
}

async fn query_trans(State(sb): State<UnionPaySandbox>, body: Bytes) -> Response {
    match sb.open(&body) {
        Ok(f) => {
            let answer = sb.query(&f).await;
            sb.respond(&f, answer)
        }
        Err((request, refusal)) => sb.refuse(&request, refusal),
    }
}

async fn file_trans(State(sb): State<UnionPaySandbox>, body: Bytes) -> Response {
    match sb.open(&body) {
        Ok(f) => {
            let answer = sb.file(&f).await;
            sb.respond(&f, answer)
        }
        Err((request, refusal)) => sb.refuse(&request, refusal),
    }
}

fn tool_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message.into()})),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct WalletPay {
    #[serde(default)]
    qr_code: Option<String>,
    #[serde(default)]
    tn: Option<String>,
}

/// A payer scans a C2B order's `qrCode` and pays it, or pays an in-app order's `tn`.
async fn wallet_pay(State(sb): State<UnionPaySandbox>, Json(p): Json<WalletPay>) -> Response {
    let Some(what) = p.qr_code.or(p.tn) else {
        return tool_error(StatusCode::BAD_REQUEST, "13", "qr_code or tn is required");
    };
    let row = sqlx::query("SELECT * FROM txns WHERE qr_code = ?1 AND txn_type = '01'")
        .bind(&what)
        .fetch_optional(&sb.0.db)
        .await;
    let t = match row {
        Ok(Some(r)) => TxnRow::from_row(&r),
        Ok(None) => return tool_error(StatusCode::NOT_FOUND, "34", "查无此交易"),
        Err(e) => return tool_error(StatusCode::INTERNAL_SERVER_ERROR, "04", e.to_string()),
    };
    match sb.mark_paid(&t.order_id).await {
        Ok(true) => Json(json!({
            "respCode": "00", "orderId": t.order_id, "queryId": t.query_id, "txnAmt": t.amount,
        }))
        .into_response(),
        Ok(false) => tool_error(
            StatusCode::CONFLICT,
            "35",
            format!("the order is {} ({})", t.state, t.state_msg),
        ),
        Err(e) => tool_error(StatusCode::INTERNAL_SERVER_ERROR, "04", e.to_string()),
    }
}

/// Re-sends a paid order's (or a succeeded refund's) notification `times` times.
async fn resend(
    State(sb): State<UnionPaySandbox>,
    UrlPath(no): UrlPath<String>,
    Query(t): Query<sandbox::Times>,
) -> Response {
    match sb.load(&no).await {
        Ok(Some(row)) if row.success_time.is_some() && row.txn_type != "31" => {
            for _ in 0..t.times.unwrap_or(1).min(100) {
                if let Err(e) = sb.notify(&no).await {
                    return tool_error(StatusCode::INTERNAL_SERVER_ERROR, "04", e.to_string());
                }
            }
            StatusCode::ACCEPTED.into_response()
        }
        Ok(_) => tool_error(
            StatusCode::NOT_FOUND,
            "34",
            "no succeeded payment or refund with this orderId",
        ),
        Err(e) => tool_error(StatusCode::INTERNAL_SERVER_ERROR, "04", e.to_string()),
    }
}

/// `GET /qrcGtwWeb-web/api/userAuth`: the payer's wallet authorises silently and comes back to
/// `redirectUrl` with a one-time `userAuthCode` and `respCode=00`. Every authorisation is a new
/// sandbox payer.
async fn user_auth_page(
    State(sb): State<UnionPaySandbox>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    let q = sandbox::form_fields(uri.query().unwrap_or("").as_bytes());
    let field = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let bad = |m: &str| {
        sandbox::stand_in_page(
            StatusCode::BAD_REQUEST,
            "授权失败",
            &format!("<h1 id=\"error\">{}</h1>", sandbox::escape_html(m)),
        )
    };
    if field("version") != "1.0.0" {
        return bad("version 参数错误");
    }
    let payer = format!("up{}", crate::crypto::random_alnum(30));
    let Some(code) = sb.0.user_auth.issue(USER_AUTH_APP, payer) else {
        return bad("系统繁忙");
    };
    let params = [("userAuthCode", code.as_str()), ("respCode", "00")];
    match sandbox::oauth_redirect(field("redirectUrl"), &params) {
        Some(location) => sandbox::found(&location),
        None => bad("redirectUrl 参数错误"),
    }
}

/// `POST /sandbox/wallet`: stands in for the wallet's `upsdk.pay` sheet of an in-app order.
async fn wallet_stand_in(State(sb): State<UnionPaySandbox>, body: Bytes) -> Response {
    let f = sandbox::form_fields(&body);
    let field = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    let fail = |status: StatusCode, m: &str| {
        sandbox::stand_in_page(
            status,
            "支付失败",
            &format!(
                "<h1>云闪付</h1><p id=\"error\">{}</p>",
                sandbox::escape_html(m)
            ),
        )
    };
    let Some(return_url) = sandbox::oauth_redirect(field("return_url"), &[]) else {
        return fail(StatusCode::BAD_REQUEST, "return_url 无效");
    };
    let row = sqlx::query(
        "SELECT * FROM txns WHERE qr_code = ?1 AND txn_type = '01' AND txn_sub_type = ?2",
    )
    .bind(field("tn"))
    .bind(messages::SUB_TYPE_JS)
    .fetch_optional(&sb.0.db)
    .await;
    let t = match row {
        Ok(Some(r)) => TxnRow::from_row(&r),
        Ok(None) => return fail(StatusCode::NOT_FOUND, "查无此交易"),
        Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    match field("action") {
        "cancel" => return sandbox::found(&return_url),
        "pay" => {
            if t.state != "05" {
                return fail(
                    StatusCode::CONFLICT,
                    &format!("交易状态为 {}（{}），不能支付", t.state, t.state_msg),
                );
            }
            return match sb.mark_paid(&t.order_id).await {
                Ok(true) => sandbox::found(&return_url),
                Ok(false) => fail(StatusCode::CONFLICT, "交易已变化，不能支付"),
                Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            };
        }
        _ => {}
    }
    let hidden =
        sandbox::hidden_inputs(&[("tn", field("tn")), ("return_url", field("return_url"))]);
    let body = format!(
        "<h1>云闪付</h1><p id=\"order\">{order}</p>\
<p class=\"amount\" id=\"total\">¥{yuan}.{fen:02}</p><p id=\"state\">{state}</p>\
<form method=\"post\">{hidden}<input type=\"hidden\" name=\"action\" value=\"pay\">\
<button id=\"pay\" type=\"submit\">确认付款 Pay</button></form>\
<form method=\"post\">{hidden}<input type=\"hidden\" name=\"action\" value=\"cancel\">\
<button id=\"cancel\" type=\"submit\">取消 Cancel</button></form>",
        order = sandbox::escape_html(&t.order_id),
        yuan = t.amount / 100,
        fen = t.amount % 100,
        state = sandbox::escape_html(&t.state_msg),
    );
    sandbox::stand_in_page(StatusCode::OK, "云闪付", &body)
}

async fn public_account(State(sb): State<UnionPaySandbox>) -> Json<Value> {
    let a = &sb.0.account;
    Json(json!({
        "mer_id": a.mer_id,
        "merchant_cert_id": a.merchant_cert_id,
        "merchant_sm2_cert_id": a.merchant_sm2_cert_id,
        "unionpay_cert_id": a.unionpay_cert_id,
        "unionpay_public_key": a.unionpay_public_key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_dates_resolve_to_the_latest_past_day() {
        let today = NaiveDate::from_ymd_opt(2024, 3, 1).unwrap();
        assert_eq!(
            resolve_settle_date("0229", today),
            NaiveDate::from_ymd_opt(2024, 2, 29)
        );
        assert_eq!(resolve_settle_date("0301", today), Some(today));
        assert_eq!(
            resolve_settle_date("0302", today),
            NaiveDate::from_ymd_opt(2023, 3, 2)
        );
        let later = NaiveDate::from_ymd_opt(2025, 2, 1).unwrap();
        assert_eq!(
            resolve_settle_date("0229", later),
            NaiveDate::from_ymd_opt(2024, 2, 29)
        );
        assert_eq!(resolve_settle_date("1332", today), None);
        assert_eq!(resolve_settle_date("", today), None);
    }
}
