//! The WeChat Pay v3 sandbox: the real paths, parameters, status codes and signatures, its own
//! keys and books, payers whose behaviour the payment code chooses, notifications with WeChat's
//! retry schedule, fault injection and real-format trade bills.
//!
//! | path | what |
//! |---|---|
//! | `POST /v3/pay/transactions/{native,jsapi,codepay}` | create / charge |
//! | `GET /v3/pay/transactions/out-trade-no/{no}?mchid=` · `/id/{id}?mchid=` | query |
//! | `POST /v3/pay/transactions/out-trade-no/{no}/{close,reverse}` | close / reverse |
//! | `POST /v3/refund/domestic/refunds` · `GET …/refunds/{out_refund_no}` | refund |
//! | `GET /v3/bill/tradebill?bill_date=&bill_type=ALL` → `GET /v3/billdownload/file?token=` | bill |
//! | `POST /sandbox/pay` `{"code_url"|"prepay_id", "openid"?}` | a payer pays a C2B order |
//! | `GET`/`PUT /sandbox/faults` | fault injection (`refund_fail_pct`: accepted refunds end `ABNORMAL`, notified `REFUND.ABNORMAL`) |
//! | `POST /sandbox/notifications/{out_trade_no}` `?times=N` | re-send the payment notification now |
//! | `GET /sandbox/account` | the ids and public keys a client needs (never the private keys) |
//! | `GET /connect/oauth2/authorize?appid&redirect_uri&response_type=code&scope=snsapi_base&state` | OAuth: 302 to `redirect_uri` with `code` and `state` (a new payer each time) |
//! | `GET /sns/oauth2/access_token?appid&secret&code&grant_type=authorization_code` | `{access_token, expires_in, refresh_token, openid, scope}`; a code works once, for 5 min |
//! | `POST /sandbox/wallet` (form: the JSAPI params, `return_url`, `action`) | stands in for `WeixinJSBridge` `getBrandWCPayRequest` |
//!
//! The wallet stand-in verifies `paySign` (SHA256withRSA over `appId\ntimeStamp\nnonceStr\npackage\n`)
//! with the merchant's public key on every step, shows the order, and on `action=pay` pays the
//! `prepay_id` as the payer the order was created for (the notification follows as for any
//! payment), then returns to `return_url`; `action=cancel` returns without paying. The app secret
//! of the OAuth exchange is [`SandboxAccount::app_secret`].
//!
//! Payment codes: 18 digits starting `10`–`15`; the last four digits choose the payer
//! ([`PayerBehaviour`]): `1001` password then paid, `1002` password then never, `1003` not enough
//! balance, `1004` invalid code, `1005` system error after the money moved; others pay at once.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Asia::Shanghai;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha1::Digest as _;
use sqlx::{Row, SqlitePool};

use super::bill::{BillRow, write_trade_bill};
use super::sign::{self, EncryptedResource, PlatformSignature};
use super::{Payer, RefundAmount, RefundRecord, Transaction, TransactionAmount, WechatConfig};
use crate::crypto::{self, RsaSigner, RsaVerifier};
use crate::sandbox::{
    self, Delivery, FaultSwitch, Notifier, PayerBehaviour, SandboxOptions, fee_fen, refund_fee_fen,
};

/// WeChat's notification retry schedule after the first attempt.
pub const RETRY_SCHEDULE_SECS: [u64; 15] = [
    15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600,
];

/// The merchant account the sandbox serves, with both halves of every key. Written to
/// `<data_dir>/wechat/account.json` on first start.
#[derive(Clone, Serialize, Deserialize)]
pub struct SandboxAccount {
    pub mchid: String,
    pub appid: String,
    pub merchant_serial: String,
    pub merchant_private_key: String,
    pub merchant_public_key: String,
    pub platform_serial: String,
    pub platform_private_key: String,
    pub platform_public_key: String,
    pub api_v3_key: String,
}

impl std::fmt::Debug for SandboxAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxAccount")
            .field("mchid", &self.mchid)
            .field("appid", &self.appid)
            .finish_non_exhaustive()
    }
}

impl SandboxAccount {
    /// Loads the account of a data directory, creating it (with fresh keys) on first use.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join("wechat").join("account.json");
        let text = sandbox::load_or_create(&path, || {
            let (mpriv, mpub) = crypto::generate_rsa_keypair();
            let (ppriv, ppub) = crypto::generate_rsa_keypair();
            let acct = SandboxAccount {
                mchid: format!("19{}", sandbox::digits(8)),
                appid: format!("wx{}", hex::encode(rand::random::<[u8; 8]>())),
                merchant_serial: hex::encode_upper(rand::random::<[u8; 20]>()),
                merchant_private_key: mpriv,
                merchant_public_key: mpub,
                platform_serial: format!("PUB_KEY_ID_0114{}", sandbox::digits(28)),
                platform_private_key: ppriv,
                platform_public_key: ppub,
                api_v3_key: crypto::random_alnum(32),
            };
            serde_json::to_string_pretty(&acct).expect("serialisable account")
        })?;
        serde_json::from_str(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    /// The official account's AppSecret of the OAuth exchange (derived from the APIv3 key, so
    /// account files written before it existed keep working).
    pub fn app_secret(&self) -> String {
        let digest = sha2::Sha256::digest(format!("sandbox app secret {}", self.api_v3_key));
        hex::encode(&digest[..16])
    }

    /// The adapter configuration a merchant of this sandbox uses.
    pub fn client_config(&self, base_url: &str, notify_url: Option<String>) -> WechatConfig {
        WechatConfig {
            base_url: base_url.to_string(),
            mchid: self.mchid.clone(),
            appid: self.appid.clone(),
            merchant_serial: self.merchant_serial.clone(),
            merchant_private_key: self.merchant_private_key.clone(),
            platform_keys: vec![(
                self.platform_serial.clone(),
                self.platform_public_key.clone(),
            )],
            api_v3_key: self.api_v3_key.clone(),
            notify_url,
            app_secret: Some(self.app_secret()),
            oauth_base_url: Some(base_url.to_string()),
            wallet_stand_in_url: Some(format!("{base_url}/sandbox/wallet")),
        }
    }
}

struct Inner {
    account: SandboxAccount,
    merchant_key: RsaVerifier,
    platform: RsaSigner,
    db: SqlitePool,
    opts: SandboxOptions,
    faults: FaultSwitch,
    notifier: Notifier,
    /// Refunds of the sandbox are applied one at a time (check and reserve in one step).
    refund_lock: tokio::sync::Mutex<()>,
    /// Outstanding OAuth codes.
    oauth: sandbox::OAuthCodes,
    /// Bill files rendered by `tradebill`, by download token: the download serves the very file
    /// whose digest the signed answer gave (rendered once), for [`BILL_TOKEN_TTL`].
    bill_files: std::sync::Mutex<Vec<(String, std::time::Instant, Bytes)>>,
    /// The last bill rendered, with the day and the fingerprint of the books it was rendered from.
    last_bill: std::sync::Mutex<Option<(NaiveDate, String, Bytes)>>,
}

/// How long a bill download token works.
const BILL_TOKEN_TTL: Duration = Duration::from_secs(300);
/// Most bill files kept for download at once.
const BILL_FILES_MAX: usize = 4;

/// A running WeChat sandbox (its state); [`WechatSandbox::router`] serves it.
#[derive(Clone)]
pub struct WechatSandbox(Arc<Inner>);

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS trades (
    out_trade_no   TEXT PRIMARY KEY,
    transaction_id TEXT NOT NULL UNIQUE,
    trade_type     TEXT NOT NULL,
    trade_state    TEXT NOT NULL,
    description    TEXT NOT NULL,
    total          INTEGER NOT NULL,
    refunded       INTEGER NOT NULL DEFAULT 0,
    fee            INTEGER NOT NULL DEFAULT 0,
    openid         TEXT,
    notify_url     TEXT,
    token          TEXT UNIQUE,
    behaviour      TEXT,
    created_at     INTEGER NOT NULL,
    expire_at      INTEGER,
    success_time   INTEGER
);
CREATE TABLE IF NOT EXISTS refunds (
    out_refund_no  TEXT PRIMARY KEY,
    refund_id      TEXT NOT NULL UNIQUE,
    out_trade_no   TEXT NOT NULL,
    amount         INTEGER NOT NULL,
    fee            INTEGER NOT NULL,
    status         TEXT NOT NULL,
    notify_url     TEXT,
    created_at     INTEGER NOT NULL,
    success_time   INTEGER
);
CREATE INDEX IF NOT EXISTS trades_success ON trades(success_time);
CREATE INDEX IF NOT EXISTS refunds_success ON refunds(success_time);
"#;

type ApiResult = Result<Response, ApiError>;

/// A WeChat error answer: status and `{"code","message"}`.
#[derive(Debug)]
struct ApiError(StatusCode, &'static str, String);

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            message.into(),
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "wechat sandbox books");
        ApiError::new(500, "SYSTEMERROR", "系统错误")
    }
}

impl WechatSandbox {
    pub async fn start(opts: SandboxOptions) -> anyhow::Result<Self> {
        let account = SandboxAccount::load_or_create(&opts.data_dir)?;
        let db = sandbox::open_books_with_schema(
            &opts.data_dir.join("wechat").join("books.sqlite"),
            SCHEMA,
        )
        .await?;
        let faults = FaultSwitch::new(opts.faults.clone());
        let notifier = sandbox::notifier(&RETRY_SCHEDULE_SECS, &opts, &faults);
        Ok(Self(Arc::new(Inner {
            merchant_key: RsaVerifier::from_pem(&account.merchant_public_key)?,
            platform: RsaSigner::from_pem(&account.platform_private_key)?,
            account,
            db,
            opts,
            faults,
            notifier,
            refund_lock: tokio::sync::Mutex::new(()),
            oauth: sandbox::OAuthCodes::default(),
            bill_files: std::sync::Mutex::new(Vec::new()),
            last_bill: std::sync::Mutex::new(None),
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
            .route("/v3/pay/transactions/native", post(create_native))
            .route("/v3/pay/transactions/jsapi", post(create_jsapi))
            .route("/v3/pay/transactions/codepay", post(codepay))
            .route(
                "/v3/pay/transactions/out-trade-no/{no}",
                get(query_by_out_trade_no),
            )
            .route("/v3/pay/transactions/id/{id}", get(query_by_id))
            .route("/v3/pay/transactions/out-trade-no/{no}/close", post(close))
            .route(
                "/v3/pay/transactions/out-trade-no/{no}/reverse",
                post(reverse),
            )
            .route("/v3/refund/domestic/refunds", post(refund))
            .route("/v3/refund/domestic/refunds/{no}", get(refund_query))
            .route("/v3/bill/tradebill", get(tradebill))
            .route("/v3/billdownload/file", get(bill_file))
            .layer(middleware::from_fn_with_state(self.clone(), authenticate))
            .layer(middleware::from_fn_with_state(
                (self.0.faults.clone(), system_error as fn() -> Response),
                sandbox::inject_faults,
            ));
        let tools = axum::Router::new()
            .route("/sandbox/pay", post(wallet_pay))
            .route("/sandbox/notifications/{no}", post(resend))
            .route("/sandbox/account", get(public_account))
            .route("/sandbox/wallet", post(wallet_stand_in))
            .route("/connect/oauth2/authorize", get(oauth_authorize))
            .route("/sns/oauth2/access_token", get(oauth_access_token));
        api.merge(tools)
            .merge(sandbox::faults_router(self.0.faults.clone()))
            .with_state(self.clone())
    }

    fn sign_response(&self, status: StatusCode, body: Vec<u8>) -> Response {
        let sig = PlatformSignature::sign(
            &self.0.platform,
            &self.0.account.platform_serial,
            Utc::now().timestamp(),
            &body,
        );
        let mut headers = HeaderMap::new();
        sig.apply(&mut headers);
        headers.insert(
            "content-type",
            "application/json".parse().expect("static header"),
        );
        (status, headers, body).into_response()
    }

    fn ok(&self, v: &Value) -> ApiResult {
        Ok(self.sign_response(StatusCode::OK, v.to_string().into_bytes()))
    }

    fn error(&self, e: ApiError) -> Response {
        let body = json!({"code": e.1, "message": e.2})
            .to_string()
            .into_bytes();
        self.sign_response(e.0, body)
    }
}

fn system_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"code": "SYSTEMERROR", "message": "系统错误"})),
    )
        .into_response()
}

/// Verifies the merchant's `Authorization` like WeChat: scheme, mchid, serial, ±5 min, signature
/// over the method, the path and query as sent, and the body. Signs every answer.
async fn authenticate(
    State(sb): State<WechatSandbox>,
    OriginalUri(uri): OriginalUri,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return sb.error(ApiError::new(400, "PARAM_ERROR", "请求体过大"));
    };
    let body_text = match std::str::from_utf8(&bytes) {
        Ok(s) => s,
        Err(_) => return sb.error(ApiError::new(400, "PARAM_ERROR", "请求体不是 UTF-8")),
    };
    let header = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let verdict = (|| {
        let h = sign::parse_authorization(header.ok_or(sign::AuthError::Missing)?)?;
        if h.mchid != sb.0.account.mchid {
            return Err(sign::AuthError::UnknownMerchant(h.mchid));
        }
        if h.serial_no != sb.0.account.merchant_serial {
            return Err(sign::AuthError::WrongSerial(h.serial_no));
        }
        let ts: i64 = h
            .timestamp
            .parse()
            .map_err(|_| sign::AuthError::StaleTimestamp)?;
        // `abs_diff`: a subtraction overflows for a timestamp far from now.
        if Utc::now().timestamp().abs_diff(ts) > 300 {
            return Err(sign::AuthError::StaleTimestamp);
        }
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let msg = sign::request_message(
            parts.method.as_str(),
            path,
            &h.timestamp,
            &h.nonce_str,
            body_text,
        );
        if !sb
            .0
            .merchant_key
            .verify_base64(msg.as_bytes(), &h.signature)
        {
            return Err(sign::AuthError::BadSignature);
        }
        Ok(())
    })();
    if let Err(e) = verdict {
        return sb.error(ApiError::new(401, "SIGN_ERROR", format!("签名错误: {e}")));
    }
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    next.run(req).await
}

fn now() -> i64 {
    Utc::now().timestamp()
}

fn rfc3339(ts: i64) -> String {
    Shanghai
        .timestamp_opt(ts, 0)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false))
        .unwrap_or_default()
}

fn transaction_id() -> String {
    format!(
        "4200000{}{}",
        Utc::now().with_timezone(&Shanghai).format("%Y%m%d"),
        sandbox::digits(13)
    )
}

fn parse_body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(400, "PARAM_ERROR", format!("参数错误: {e}")))
}

#[derive(Debug, Deserialize)]
struct OrderBody {
    appid: String,
    mchid: String,
    description: String,
    out_trade_no: String,
    #[serde(default)]
    notify_url: Option<String>,
    #[serde(default)]
    time_expire: Option<String>,
    amount: AmountIn,
    #[serde(default)]
    payer: Option<PayerIn>,
}

#[derive(Debug, Deserialize)]
struct AmountIn {
    total: i64,
    #[serde(default)]
    currency: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PayerIn {
    #[serde(default)]
    openid: Option<String>,
    #[serde(default)]
    auth_code: Option<String>,
}

impl WechatSandbox {
    fn check_order(&self, o: &OrderBody) -> Result<(), ApiError> {
        if o.mchid != self.0.account.mchid {
            return Err(ApiError::new(400, "PARAM_ERROR", "mchid与请求头不一致"));
        }
        if o.appid != self.0.account.appid {
            return Err(ApiError::new(
                400,
                "APPID_MCHID_NOT_MATCH",
                "appid和mch_id不匹配",
            ));
        }
        if o.amount.total <= 0 {
            return Err(ApiError::new(400, "PARAM_ERROR", "订单金额必须大于0"));
        }
        if o.amount.currency.as_deref().is_some_and(|c| c != "CNY") {
            return Err(ApiError::new(400, "PARAM_ERROR", "仅支持人民币"));
        }
        let n = &o.out_trade_no;
        if n.len() < 6
            || n.len() > 32
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-|*".contains(&b))
        {
            return Err(ApiError::new(400, "PARAM_ERROR", "out_trade_no 格式错误"));
        }
        if o.description.is_empty() || o.description.chars().count() > 127 {
            return Err(ApiError::new(400, "PARAM_ERROR", "description 长度错误"));
        }
        Ok(())
    }

    async fn load(&self, out_trade_no: &str) -> Result<Option<TradeRow>, ApiError> {
        let row = sqlx::query("SELECT * FROM trades WHERE out_trade_no = ?1")
            .bind(out_trade_no)
            .fetch_optional(&self.0.db)
            .await?;
        Ok(row.map(|r| TradeRow::from_row(&r)))
    }

    async fn create(
        &self,
        o: OrderBody,
        trade_type: &str,
        token: String,
    ) -> Result<TradeRow, ApiError> {
        self.check_order(&o)?;
        let notify_url = o
            .notify_url
            .clone()
            .ok_or_else(|| ApiError::new(400, "PARAM_ERROR", "缺少参数 notify_url"))?;
        let expire_at = match &o.time_expire {
            Some(t) => Some(
                DateTime::parse_from_rfc3339(t)
                    .map_err(|_| ApiError::new(400, "PARAM_ERROR", "time_expire 格式错误"))?
                    .timestamp(),
            ),
            None => Some(now() + 2 * 3600),
        };
        if let Some(existing) = self.load(&o.out_trade_no).await? {
            if existing.total == o.amount.total
                && existing.description == o.description
                && existing.trade_type == trade_type
                && existing.trade_state == "NOTPAY"
            {
                return Ok(existing);
            }
            return Err(ApiError::new(400, "INVALID_REQUEST", "商户订单号重复"));
        }
        let openid = o.payer.as_ref().and_then(|p| p.openid.clone());
        if trade_type == "JSAPI" && openid.as_deref().is_none_or(str::is_empty) {
            return Err(ApiError::new(
                400,
                "PARAM_ERROR",
                "JSAPI 下单需要 payer.openid",
            ));
        }
        let tx = transaction_id();
        sqlx::query(
            "INSERT INTO trades (out_trade_no, transaction_id, trade_type, trade_state, description, total, openid, notify_url, token, created_at, expire_at)
             VALUES (?1, ?2, ?3, 'NOTPAY', ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(&o.out_trade_no)
        .bind(&tx)
        .bind(trade_type)
        .bind(&o.description)
        .bind(o.amount.total)
        .bind(&openid)
        .bind(&notify_url)
        .bind(&token)
        .bind(now())
        .bind(expire_at)
        .execute(&self.0.db)
        .await?;
        self.load(&o.out_trade_no)
            .await?
            .ok_or_else(|| ApiError::new(500, "SYSTEMERROR", "系统错误"))
    }

    /// Moves a trade to SUCCESS (if it is still `from`), books the fee and notifies when asked.
    async fn mark_paid(
        &self,
        out_trade_no: &str,
        from: &[&str],
        openid: Option<String>,
        notify: bool,
    ) -> Result<bool, ApiError> {
        let Some(t) = self.load(out_trade_no).await? else {
            return Ok(false);
        };
        if !from.contains(&t.trade_state.as_str()) {
            return Ok(false);
        }
        let fee = fee_fen(t.total, self.0.opts.fee_rate_bps);
        let openid = openid
            .or(t.openid.clone())
            .unwrap_or_else(|| format!("o{}", crypto::random_alnum(27)));
        let changed = sqlx::query(
            "UPDATE trades SET trade_state = 'SUCCESS', success_time = ?1, fee = ?2, openid = ?3
             WHERE out_trade_no = ?4 AND trade_state = ?5",
        )
        .bind(self.booking_now())
        .bind(fee)
        .bind(&openid)
        .bind(out_trade_no)
        .bind(&t.trade_state)
        .execute(&self.0.db)
        .await?
        .rows_affected()
            == 1;
        if changed && notify {
            self.notify_payment(out_trade_no).await?;
        }
        Ok(changed)
    }

    async fn notify_payment(&self, out_trade_no: &str) -> Result<(), ApiError> {
        let Some(t) = self.load(out_trade_no).await? else {
            return Ok(());
        };
        let Some(url) = t.notify_url.clone() else {
            return Ok(());
        };
        let plain = serde_json::to_vec(&self.transaction_json(&t)).expect("serialisable");
        self.deliver(url, "TRANSACTION.SUCCESS", "支付成功", "transaction", plain);
        Ok(())
    }

    fn deliver(
        &self,
        url: String,
        event_type: &'static str,
        summary: &'static str,
        original_type: &'static str,
        plain: Vec<u8>,
    ) {
        let sb = self.clone();
        let id = uuid::Uuid::new_v4().to_string();
        let created = rfc3339(now());
        let render = move || {
            let resource = EncryptedResource::encrypt(
                sb.0.account.api_v3_key.as_bytes(),
                original_type,
                original_type,
                &plain,
            )
            .expect("32-byte APIv3 key");
            let body = json!({
                "id": id, "create_time": created, "resource_type": "encrypt-resource",
                "event_type": event_type, "summary": summary, "resource": resource,
            })
            .to_string()
            .into_bytes();
            let sig = PlatformSignature::sign(
                &sb.0.platform,
                &sb.0.account.platform_serial,
                now(),
                &body,
            );
            let mut headers = http::HeaderMap::new();
            sig.apply(&mut headers);
            headers.insert(
                "wechatpay-signature-type",
                http::HeaderValue::from_static(sign::SCHEME),
            );
            (headers, "application/json", body)
        };
        self.0.notifier.send(Delivery {
            url,
            render: Box::new(render),
            accepted: |status, _| (200..300).contains(&status),
        });
    }

    fn transaction_json(&self, t: &TradeRow) -> Transaction {
        let paid = matches!(t.trade_state.as_str(), "SUCCESS" | "REFUND");
        Transaction {
            appid: self.0.account.appid.clone(),
            mchid: self.0.account.mchid.clone(),
            out_trade_no: t.out_trade_no.clone(),
            transaction_id: paid.then(|| t.transaction_id.clone()),
            trade_type: t.trade_type.clone(),
            trade_state: t.trade_state.clone(),
            trade_state_desc: state_desc(&t.trade_state).into(),
            bank_type: paid.then(|| "OTHERS".into()),
            success_time: t.success_time.filter(|_| paid).map(rfc3339),
            payer: t
                .openid
                .clone()
                .filter(|_| paid)
                .map(|openid| Payer { openid }),
            amount: Some(TransactionAmount {
                total: t.total,
                payer_total: paid.then_some(t.total),
                currency: "CNY".into(),
                payer_currency: paid.then(|| "CNY".into()),
            }),
        }
    }

    /// Lazily closes unpaid orders past their expiry.
    async fn expire(&self, t: TradeRow) -> Result<TradeRow, ApiError> {
        if t.trade_state == "NOTPAY" && t.expire_at.is_some_and(|e| e < now()) {
            sqlx::query("UPDATE trades SET trade_state = 'CLOSED' WHERE out_trade_no = ?1 AND trade_state = 'NOTPAY'")
                .bind(&t.out_trade_no)
                .execute(&self.0.db)
                .await?;
            return self
                .load(&t.out_trade_no)
                .await?
                .ok_or_else(|| ApiError::new(500, "SYSTEMERROR", "系统错误"));
        }
        Ok(t)
    }
}

fn state_desc(s: &str) -> &'static str {
    match s {
        "SUCCESS" => "支付成功",
        "REFUND" => "转入退款",
        "NOTPAY" => "未支付",
        "CLOSED" => "已关闭",
        "REVOKED" => "已撤销",
        "USERPAYING" => "用户支付中，需要输入密码",
        _ => "支付失败",
    }
}

#[derive(Debug, Clone)]
struct TradeRow {
    out_trade_no: String,
    transaction_id: String,
    trade_type: String,
    trade_state: String,
    description: String,
    total: i64,
    refunded: i64,
    fee: i64,
    openid: Option<String>,
    notify_url: Option<String>,
    expire_at: Option<i64>,
    success_time: Option<i64>,
}

impl TradeRow {
    fn from_row(r: &sqlx::sqlite::SqliteRow) -> Self {
        Self {
            out_trade_no: r.get("out_trade_no"),
            transaction_id: r.get("transaction_id"),
            trade_type: r.get("trade_type"),
            trade_state: r.get("trade_state"),
            description: r.get("description"),
            total: r.get("total"),
            refunded: r.get("refunded"),
            fee: r.get("fee"),
            openid: r.get("openid"),
            notify_url: r.get("notify_url"),
            expire_at: r.get("expire_at"),
            success_time: r.get("success_time"),
        }
    }
}

async fn create_native(State(sb): State<WechatSandbox>, body: Bytes) -> Response {
    let r: ApiResult = async {
        let o: OrderBody = parse_body(&body)?;
        let token = crypto::random_alnum(10);
        let t = sb.create(o, "NATIVE", token).await?;
        let token: Option<String> = sqlx::query_scalar("SELECT token FROM trades WHERE out_trade_no = ?1")
            .bind(&t.out_trade_no)
            .fetch_one(&sb.0.db)
            .await?;
        sb.ok(&json!({"code_url": format!("weixin://wxpay/bizpayurl?pr={}", token.unwrap_or_default())}))
    }
    .await;
    r.unwrap_or_else(|e| sb.error(e))
}

async fn create_jsapi(State(sb): State<WechatSandbox>, body: Bytes) -> Response {
    let r: ApiResult = async {
        let o: OrderBody = parse_body(&body)?;
        let token = format!(
            "wx{}{}",
            Utc::now().with_timezone(&Shanghai).format("%d%H%M%S"),
            crypto::random_alnum(24)
        );
        let t = sb.create(o, "JSAPI", token).await?;
        let token: Option<String> =
            sqlx::query_scalar("SELECT token FROM trades WHERE out_trade_no = ?1")
                .bind(&t.out_trade_no)
                .fetch_one(&sb.0.db)
                .await?;
        sb.ok(&json!({"prepay_id": token.unwrap_or_default()}))
    }
    .await;
    r.unwrap_or_else(|e| sb.error(e))
}

/// Whether a code is a WeChat payment code: 18 digits starting 10–15.
fn is_wechat_code(code: &str) -> bool {
    code.len() == 18
        && code.bytes().all(|b| b.is_ascii_digit())
        && matches!(&code[..2], "10" | "11" | "12" | "13" | "14" | "15")
}

/// The answer to a `codepay` whose `out_trade_no` is already in the books.
fn codepay_again(sb: &WechatSandbox, existing: &TradeRow, total: i64) -> ApiResult {
    if existing.total != total {
        return Err(ApiError::new(403, "OUT_TRADE_NO_USED", "商户订单号重复"));
    }
    match existing.trade_state.as_str() {
        "SUCCESS" | "REFUND" => {
            sb.ok(&serde_json::to_value(sb.transaction_json(existing)).expect("json"))
        }
        "USERPAYING" => Err(ApiError::new(202, "USERPAYING", "用户支付中，需要输入密码")),
        _ => Err(ApiError::new(400, "ORDER_CLOSED", "订单已关闭")),
    }
}

/// A payment-code charge. A code paid at once is booked `SUCCESS` by one insert (the books' busiest
/// path under load); a repeated `out_trade_no` is answered from the books.
async fn codepay(State(sb): State<WechatSandbox>, body: Bytes) -> Response {
    let r: ApiResult = async {
        let o: OrderBody = parse_body(&body)?;
        sb.check_order(&o)?;
        let code = o.payer.as_ref().and_then(|p| p.auth_code.clone()).unwrap_or_default();
        if !is_wechat_code(&code) {
            return Err(ApiError::new(400, "PARAM_ERROR", "付款码格式错误，请扫描微信付款码"));
        }
        let behaviour = PayerBehaviour::of_code(&code);
        if matches!(behaviour, PayerBehaviour::InsufficientFunds | PayerBehaviour::InvalidCode) {
            if let Some(existing) = sb.load(&o.out_trade_no).await? {
                return codepay_again(&sb, &existing, o.amount.total);
            }
            return Err(if behaviour == PayerBehaviour::InsufficientFunds {
                ApiError::new(403, "NOTENOUGH", "余额不足")
            } else {
                ApiError::new(400, "AUTH_CODE_INVALID", "付款码无效，请重新扫码")
            });
        }
        let password = matches!(behaviour, PayerBehaviour::PasswordThenPaid | PayerBehaviour::PasswordThenTimeout);
        let mut t = TradeRow {
            out_trade_no: o.out_trade_no.clone(),
            transaction_id: transaction_id(),
            trade_type: "MICROPAY".into(),
            trade_state: "USERPAYING".into(),
            description: o.description.clone(),
            total: o.amount.total,
            refunded: 0,
            fee: 0,
            openid: None,
            notify_url: None,
            expire_at: None,
            success_time: None,
        };
        if !password {
            t.trade_state = "SUCCESS".into();
            t.fee = fee_fen(t.total, sb.0.opts.fee_rate_bps);
            t.openid = Some(format!("o{}", crypto::random_alnum(27)));
            t.success_time = Some(sb.booking_now());
        }
        let inserted = sqlx::query(
            "INSERT INTO trades (out_trade_no, transaction_id, trade_type, trade_state, description, total, fee, openid, behaviour, created_at, success_time)
             VALUES (?1, ?2, 'MICROPAY', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (out_trade_no) DO NOTHING",
        )
        .bind(&t.out_trade_no)
        .bind(&t.transaction_id)
        .bind(&t.trade_state)
        .bind(&t.description)
        .bind(t.total)
        .bind(t.fee)
        .bind(&t.openid)
        .bind(format!("{behaviour:?}"))
        .bind(now())
        .bind(t.success_time)
        .execute(&sb.0.db)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            let existing = sb.load(&o.out_trade_no).await?.ok_or_else(|| ApiError::new(500, "SYSTEMERROR", "系统错误"))?;
            return codepay_again(&sb, &existing, o.amount.total);
        }
        match behaviour {
            PayerBehaviour::PasswordThenPaid | PayerBehaviour::PasswordThenTimeout => {
                let sb2 = sb.clone();
                let no = o.out_trade_no.clone();
                let wait = Duration::from_secs(sb.0.opts.password_wait_secs) / sb.0.opts.time_compression.max(1);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    if behaviour == PayerBehaviour::PasswordThenPaid {
                        let _ = sb2.mark_paid(&no, &["USERPAYING"], None, false).await;
                    } else {
                        let _ = sqlx::query("UPDATE trades SET trade_state = 'PAYERROR' WHERE out_trade_no = ?1 AND trade_state = 'USERPAYING'")
                            .bind(&no)
                            .execute(&sb2.0.db)
                            .await;
                    }
                });
                Err(ApiError::new(202, "USERPAYING", "用户支付中，需要输入密码"))
            }
            PayerBehaviour::SystemErrorButPaid => Err(ApiError::new(500, "SYSTEMERROR", "系统错误")),
            _ => sb.ok(&serde_json::to_value(sb.transaction_json(&t)).expect("json")),
        }
    }
    .await;
    r.unwrap_or_else(|e| sb.error(e))
}

#[derive(Debug, Deserialize)]
struct MchidQuery {
    mchid: Option<String>,
}

async fn query_by_out_trade_no(
    State(sb): State<WechatSandbox>,
    UrlPath(no): UrlPath<String>,
    Query(q): Query<MchidQuery>,
) -> Response {
    let r: ApiResult = async {
        if q.mchid.as_deref() != Some(sb.0.account.mchid.as_str()) {
            return Err(ApiError::new(
                400,
                "PARAM_ERROR",
                "缺少参数 mchid 或 mchid 不一致",
            ));
        }
        let t = sb
            .load(&no)
            .await?
            .ok_or_else(|| ApiError::new(404, "ORDER_NOT_EXIST", "订单不存在"))?;
        let t = sb.expire(t).await?;
        sb.ok(&serde_json::to_value(sb.transaction_json(&t)).expect("json"))
    }
    .await;
    r.unwrap_or_else(|e| sb.error(e))
}

async fn query_by_id(
    State(sb): State<WechatSandbox>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<MchidQuery>,
) -> Response {
    let r: ApiResult = async {
        if q.mchid.as_deref() != Some(sb.0.account.mchid.as_str()) {
            return Err(ApiError::new(400, "PARAM_ERROR", "缺少参数 mchid 或 mchid 不一致"));
        }
        let no: Option<String> = sqlx::query_scalar(
            "SELECT out_trade_no FROM trades WHERE transaction_id = ?1 AND trade_state IN ('SUCCESS','REFUND')",
        )
        .bind(&id)
        .fetch_optional(&sb.0.db)
        .await?;
        let t = match no {
            Some(no) => sb.load(&no).await?,
            None => None,
        }
        .ok_or_else(|| ApiError::new(404, "ORDER_NOT_EXIST", "订单不存在"))?;
        sb.ok(&serde_json::to_value(sb.transaction_json(&t)).expect("json"))
    }
    .await;
    r.unwrap_or_else(|e| sb.error(e))
}

async fn close(
    State(sb): State<WechatSandbox>,
    UrlPath(no): UrlPath<String>,
    body: Bytes,
) -> Response {
    let r: ApiResult = async {
        let b: Value = parse_body(&body)?;
        if b["mchid"].as_str() != Some(sb.0.account.mchid.as_str()) {
            return Err(ApiError::new(400, "PARAM_ERROR", "mchid 不一致"));
        }
        let t = sb.load(&no).await?.ok_or_else(|| ApiError::new(404, "ORDER_NOT_EXIST", "订单不存在"))?;
        match t.trade_state.as_str() {
            "SUCCESS" | "REFUND" => Err(ApiError::new(400, "ORDERPAID", "订单已支付")),
            _ => {
                sqlx::query("UPDATE trades SET trade_state = 'CLOSED' WHERE out_trade_no = ?1 AND trade_state IN ('NOTPAY','USERPAYING','CLOSED','PAYERROR')")
                    .bind(&no)
                    .execute(&sb.0.db)
                    .await?;
                Ok(sb.sign_response(StatusCode::NO_CONTENT, Vec::new()))
            }
        }
    }
    .await;
    r.unwrap_or_else(|e| sb.error(e))
}

async fn reverse(
    State(sb): State<WechatSandbox>,
    UrlPath(no): UrlPath<String>,
    body: Bytes,
) -> Response {
    let r: ApiResult = async {
        let b: Value = parse_body(&body)?;
        if b["mchid"].as_str() != Some(sb.0.account.mchid.as_str()) {
            return Err(ApiError::new(400, "PARAM_ERROR", "mchid 不一致"));
        }
        let t = sb.load(&no).await?.ok_or_else(|| ApiError::new(404, "ORDER_NOT_EXIST", "订单不存在"))?;
        if t.trade_type != "MICROPAY" {
            return Err(ApiError::new(400, "INVALID_REQUEST", "仅付款码支付订单可撤销"));
        }
        if t.trade_state == "SUCCESS" || t.trade_state == "REFUND" {
            // Reversing a paid order gives the payer the rest of the money back, as a refund.
            let remaining = t.total - t.refunded;
            if remaining > 0 {
                let fee_back = refund_fee_fen(t.fee, t.total, t.refunded, remaining);
                sqlx::query(
                    "INSERT OR IGNORE INTO refunds (out_refund_no, refund_id, out_trade_no, amount, fee, status, created_at, success_time)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'SUCCESS', ?6, ?6)",
                )
                .bind(format!("REVOKE{}", t.transaction_id))
                .bind(format!("5030{}", sandbox::digits(25)))
                .bind(&no)
                .bind(remaining)
                .bind(fee_back)
                .bind(sb.booking_now())
                .execute(&sb.0.db)
                .await?;
            }
            sqlx::query("UPDATE trades SET trade_state = 'REVOKED', refunded = total WHERE out_trade_no = ?1").bind(&no).execute(&sb.0.db).await?;
        } else {
            sqlx::query("UPDATE trades SET trade_state = 'REVOKED' WHERE out_trade_no = ?1").bind(&no).execute(&sb.0.db).await?;
        }
        Ok(sb.sign_response(StatusCode::NO_CONTENT, Vec::new()))
    }
    .await;
    r.unwrap_or_else(|e| sb.error(e))
}

#[derive(Debug, Deserialize)]
struct RefundBody {
    #[serde(default)]
    transaction_id: Option<String>,
    #[serde(default)]
    out_trade_no: Option<String>,
    out_refund_no: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    notify_url: Option<String>,
    amount: RefundAmountIn,
}

#[derive(Debug, Deserialize)]
struct RefundAmountIn {
    refund: i64,
    total: i64,
    currency: String,
}

impl WechatSandbox {
    async fn refund_json(&self, out_refund_no: &str) -> Result<Option<RefundRecord>, ApiError> {
        let Some(r) = sqlx::query("SELECT r.*, t.transaction_id, t.total FROM refunds r JOIN trades t USING (out_trade_no) WHERE r.out_refund_no = ?1")
            .bind(out_refund_no)
            .fetch_optional(&self.0.db)
            .await?
        else {
            return Ok(None);
        };
        let amount: i64 = r.get("amount");
        Ok(Some(RefundRecord {
            refund_id: Some(r.get("refund_id")),
            out_refund_no: r.get("out_refund_no"),
            transaction_id: Some(r.get("transaction_id")),
            out_trade_no: Some(r.get("out_trade_no")),
            status: r.get("status"),
            success_time: r.get::<Option<i64>, _>("success_time").map(rfc3339),
            amount: Some(RefundAmount {
                total: r.get("total"),
                refund: amount,
                payer_total: Some(r.get("total")),
                payer_refund: Some(amount),
                currency: "CNY".into(),
            }),
        }))
    }
}

async fn refund(State(sb): State<WechatSandbox>, body: Bytes) -> Response {
    let r: ApiResult = async {
        let b: RefundBody = parse_body(&body)?;
        let _ = &b.reason;
        if b.amount.currency != "CNY" || b.amount.refund <= 0 {
            return Err(ApiError::new(400, "PARAM_ERROR", "退款金额或币种错误"));
        }
        let no = match (&b.out_trade_no, &b.transaction_id) {
            (Some(n), _) => n.clone(),
            (None, Some(id)) => sqlx::query_scalar("SELECT out_trade_no FROM trades WHERE transaction_id = ?1")
                .bind(id)
                .fetch_optional(&sb.0.db)
                .await?
                .ok_or_else(|| ApiError::new(404, "RESOURCE_NOT_EXISTS", "订单不存在"))?,
            (None, None) => return Err(ApiError::new(400, "PARAM_ERROR", "transaction_id 和 out_trade_no 必须二选一")),
        };
        let _serial = sb.0.refund_lock.lock().await;
        if let Some(existing) = sb.refund_json(&b.out_refund_no).await? {
            let same = existing.out_trade_no.as_deref() == Some(no.as_str()) && existing.amount.as_ref().is_some_and(|a| a.refund == b.amount.refund);
            return if same { sb.ok(&serde_json::to_value(existing).expect("json")) } else { Err(ApiError::new(400, "INVALID_REQUEST", "商户退款单号重复")) };
        }
        let t = sb.load(&no).await?.ok_or_else(|| ApiError::new(404, "RESOURCE_NOT_EXISTS", "订单不存在"))?;
        if !matches!(t.trade_state.as_str(), "SUCCESS" | "REFUND") {
            return Err(ApiError::new(400, "INVALID_REQUEST", "订单未支付，不能退款"));
        }
        if b.amount.total != t.total {
            return Err(ApiError::new(400, "PARAM_ERROR", "订单金额与原订单不一致"));
        }
        if b.amount.refund > t.total - t.refunded {
            return Err(ApiError::new(403, "NOT_ENOUGH", "退款金额超过订单可退金额"));
        }
        let fee_back = refund_fee_fen(t.fee, t.total, t.refunded, b.amount.refund);
        let mut tx = sb.0.db.begin().await?;
        let updated = sqlx::query("UPDATE trades SET refunded = refunded + ?1, trade_state = 'REFUND' WHERE out_trade_no = ?2 AND refunded = ?3")
            .bind(b.amount.refund)
            .bind(&no)
            .bind(t.refunded)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated != 1 {
            return Err(ApiError::new(429, "FREQUENCY_LIMITED", "频率限制，请稍后重试"));
        }
        sqlx::query(
            "INSERT INTO refunds (out_refund_no, refund_id, out_trade_no, amount, fee, status, notify_url, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'PROCESSING', ?6, ?7)",
        )
        .bind(&b.out_refund_no)
        .bind(format!("5030{}", sandbox::digits(25)))
        .bind(&no)
        .bind(b.amount.refund)
        .bind(fee_back)
        .bind(&b.notify_url)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // The answer is the refund as accepted (PROCESSING); it completes shortly after (or, under
        // the `refund_fail_pct` fault, ends ABNORMAL), and notifies.
        let rec = sb.refund_json(&b.out_refund_no).await?.ok_or_else(|| ApiError::new(500, "SYSTEMERROR", "系统错误"))?;
        let fails = sandbox::chance(sb.0.faults.get().refund_fail_pct);
        let sb2 = sb.clone();
        let out_refund_no = b.out_refund_no.clone();
        let delay = sb.0.opts.compress(Duration::from_secs(2));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = if fails { sb2.abnormal_refund(&out_refund_no).await } else { sb2.complete_refund(&out_refund_no).await };
        });
        sb.ok(&serde_json::to_value(rec).expect("json"))
    }
    .await;
    r.unwrap_or_else(|e| sb.error(e))
}

impl WechatSandbox {
    async fn complete_refund(&self, out_refund_no: &str) -> Result<(), ApiError> {
        let done = sqlx::query("UPDATE refunds SET status = 'SUCCESS', success_time = ?1 WHERE out_refund_no = ?2 AND status = 'PROCESSING'")
            .bind(self.booking_now())
            .bind(out_refund_no)
            .execute(&self.0.db)
            .await?
            .rows_affected();
        if done != 1 {
            return Ok(());
        }
        self.notify_refund(out_refund_no, "REFUND.SUCCESS", "退款成功")
            .await
    }

    /// Ends a `PROCESSING` refund `ABNORMAL` (the `refund_fail_pct` fault): no money reaches the
    /// payer, the amount becomes refundable again, and `REFUND.ABNORMAL` is notified.
    async fn abnormal_refund(&self, out_refund_no: &str) -> Result<(), ApiError> {
        let mut tx = self.0.db.begin().await?;
        let amount: Option<(String, i64)> = sqlx::query_as(
            "UPDATE refunds SET status = 'ABNORMAL' WHERE out_refund_no = ?1 AND status = 'PROCESSING' RETURNING out_trade_no, amount",
        )
        .bind(out_refund_no)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((no, amount)) = amount else {
            return Ok(());
        };
        sqlx::query(
            "UPDATE trades SET refunded = refunded - ?1, trade_state = CASE WHEN refunded - ?1 = 0 THEN 'SUCCESS' ELSE trade_state END WHERE out_trade_no = ?2",
        )
        .bind(amount)
        .bind(&no)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.notify_refund(out_refund_no, "REFUND.ABNORMAL", "退款异常")
            .await
    }

    /// Sends a refund's notification (`event_type`, `summary`) if the refund has a `notify_url`.
    async fn notify_refund(
        &self,
        out_refund_no: &str,
        event_type: &'static str,
        summary: &'static str,
    ) -> Result<(), ApiError> {
        let url: Option<String> =
            sqlx::query_scalar("SELECT notify_url FROM refunds WHERE out_refund_no = ?1")
                .bind(out_refund_no)
                .fetch_one(&self.0.db)
                .await?;
        if let (Some(url), Some(rec)) = (url, self.refund_json(out_refund_no).await?) {
            let mut v = serde_json::to_value(&rec).expect("json");
            v["mchid"] = json!(self.0.account.mchid);
            if let Some(o) = v.as_object_mut()
                && let Some(s) = o.remove("status")
            {
                o.insert("refund_status".into(), s);
            }
            self.deliver(
                url,
                event_type,
                summary,
                "refund",
                v.to_string().into_bytes(),
            );
        }
        Ok(())
    }
}

async fn refund_query(State(sb): State<WechatSandbox>, UrlPath(no): UrlPath<String>) -> Response {
    let r: ApiResult = async {
        let rec = sb
            .refund_json(&no)
            .await?
            .ok_or_else(|| ApiError::new(404, "RESOURCE_NOT_EXISTS", "退款单不存在"))?;
        sb.ok(&serde_json::to_value(rec).expect("json"))
    }
    .await;
    r.unwrap_or_else(|e| sb.error(e))
}

#[derive(Debug, Deserialize)]
struct BillQuery {
    bill_date: Option<String>,
    bill_type: Option<String>,
}

impl WechatSandbox {
    /// The clock successes are booked with: the real one plus `Faults::clock_offset_secs`.
    fn booking_now(&self) -> i64 {
        now() + self.0.faults.get().clock_offset_secs
    }

    /// The bill file of a day: rendered by [`Self::bill_for`], or the last one rendered when the
    /// day's successes in the books are the same (count, sums of amounts, fees and times of the
    /// trades and refunds — one aggregate query instead of rendering millions of lines again) and
    /// no bill line is overridden. The sums are exact integers: SQLite's `TOTAL()` is a float, in
    /// which sums above 2^53 that differ by a fen can be equal.
    async fn bill_file_for(&self, date: NaiveDate) -> Result<Bytes, sqlx::Error> {
        if !self.0.faults.get().bill_overrides.is_empty() {
            return Ok(Bytes::from(self.bill_for(date).await?));
        }
        let start = Shanghai
            .from_local_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight"))
            .single()
            .map(|t| t.timestamp())
            .unwrap_or_default();
        let row = sqlx::query(
            "SELECT COUNT(*), COALESCE(SUM(total), 0), COALESCE(SUM(fee), 0), COALESCE(SUM(success_time), 0), \
             (SELECT COUNT(*) || ':' || COALESCE(SUM(amount), 0) || ':' || COALESCE(SUM(fee), 0) || ':' || COALESCE(SUM(success_time), 0) \
              FROM refunds WHERE status = 'SUCCESS' AND success_time >= ?1 AND success_time < ?2) \
             FROM trades WHERE success_time >= ?1 AND success_time < ?2",
        )
        .bind(start)
        .bind(start + 86_400)
        .fetch_one(&self.0.db)
        .await?;
        let fingerprint = format!(
            "{}:{}:{}:{}|{}",
            row.get::<i64, _>(0),
            row.get::<i64, _>(1),
            row.get::<i64, _>(2),
            row.get::<i64, _>(3),
            row.get::<String, _>(4)
        );
        if let Ok(last) = self.0.last_bill.lock()
            && let Some((d, f, file)) = last.as_ref()
            && *d == date
            && *f == fingerprint
        {
            return Ok(file.clone());
        }
        let file = Bytes::from(self.bill_for(date).await?);
        if let Ok(mut last) = self.0.last_bill.lock() {
            *last = Some((date, fingerprint, file.clone()));
        }
        Ok(file)
    }

    /// The bill of a Shanghai calendar day, rendered from the books (with the lines changed by
    /// `Faults::bill_overrides`).
    pub async fn bill_for(&self, date: NaiveDate) -> Result<Vec<u8>, sqlx::Error> {
        let start = Shanghai
            .from_local_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight"))
            .single()
            .map(|t| t.timestamp())
            .unwrap_or_default();
        let end = start + 86_400;
        let overrides = self.0.faults.get().bill_overrides;
        // Overridden lines may move in from (or out to) other days.
        let shift_max = overrides
            .values()
            .map(|o| o.shift_secs.abs())
            .max()
            .unwrap_or(0);
        let to_time = |ts: i64| {
            Shanghai
                .timestamp_opt(ts, 0)
                .single()
                .map(|t| t.naive_local())
                .unwrap_or_default()
        };
        // One pass over the day's successes (a day can hold millions): only the columns the bill
        // shows, each row turned into its line as it is read.
        let mut rows = Vec::new();
        {
            use futures::TryStreamExt;
            let mut trades = sqlx::query(
                "SELECT out_trade_no, transaction_id, trade_type, description, total, fee, openid, success_time \
                 FROM trades WHERE success_time >= ?1 AND success_time < ?2 ORDER BY success_time, out_trade_no",
            )
            .bind(start - shift_max)
            .bind(end + shift_max)
            .fetch(&self.0.db);
            while let Some(r) = trades.try_next().await? {
                let out_trade_no: String = r.get(0);
                let o = overrides.get(&out_trade_no).cloned().unwrap_or_default();
                let time = r.get::<Option<i64>, _>(7).unwrap_or_default() + o.shift_secs;
                if !(start..end).contains(&time) {
                    continue;
                }
                rows.push(BillRow {
                    time: to_time(time),
                    appid: self.0.account.appid.clone(),
                    mchid: self.0.account.mchid.clone(),
                    transaction_id: r.get(1),
                    out_trade_no,
                    openid: r.get::<Option<String>, _>(6).unwrap_or_default(),
                    trade_type: r.get(2),
                    trade_state: "SUCCESS".into(),
                    order_fen: o.amount_fen.unwrap_or_else(|| r.get(4)),
                    refund_id: None,
                    out_refund_no: None,
                    refund_fen: 0,
                    description: r.get(3),
                    fee_milli_fen: o.fee_fen.unwrap_or_else(|| r.get(5)) * 1000,
                    rate_bps: self.0.opts.fee_rate_bps,
                });
            }
        }
        if shift_max > 0 {
            rows.sort_by(|a, b| (a.time, &a.out_trade_no).cmp(&(b.time, &b.out_trade_no)));
        }
        let refunds = sqlx::query(
            "SELECT r.*, t.transaction_id, t.openid, t.trade_type, t.description FROM refunds r JOIN trades t USING (out_trade_no)
             WHERE r.status = 'SUCCESS' AND r.success_time >= ?1 AND r.success_time < ?2 ORDER BY r.success_time, r.out_refund_no",
        )
        .bind(start)
        .bind(end)
        .fetch_all(&self.0.db)
        .await?;
        for r in &refunds {
            rows.push(BillRow {
                time: to_time(r.get("success_time")),
                appid: self.0.account.appid.clone(),
                mchid: self.0.account.mchid.clone(),
                transaction_id: r.get("transaction_id"),
                out_trade_no: r.get("out_trade_no"),
                openid: r.get::<Option<String>, _>("openid").unwrap_or_default(),
                trade_type: r.get("trade_type"),
                trade_state: "REFUND".into(),
                order_fen: 0,
                refund_id: Some(r.get("refund_id")),
                out_refund_no: Some(r.get("out_refund_no")),
                refund_fen: r.get("amount"),
                description: r.get("description"),
                fee_milli_fen: -r.get::<i64, _>("fee") * 1000,
                rate_bps: self.0.opts.fee_rate_bps,
            });
        }
        Ok(write_trade_bill(&rows))
    }
}

/// A trade booked as paid by [`WechatSandbox::book_paid`] (benchmarks seed a day of books with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidTrade {
    pub out_trade_no: String,
    pub transaction_id: String,
    pub amount_fen: i64,
    pub fee_fen: i64,
    /// When it was paid, unix seconds (the bill of that Shanghai day lists it).
    pub success_time: i64,
}

impl WechatSandbox {
    /// Books paid `NATIVE` trades in bulk — one transaction, multi-row inserts — as if payers had
    /// paid them (no notifications). Returns how many were booked.
    pub async fn book_paid(
        &self,
        trades: impl IntoIterator<Item = PaidTrade>,
    ) -> Result<u64, sqlx::Error> {
        /// Rows per statement (8 values each, well under SQLite's bound-parameter limit).
        const ROWS: usize = 2_000;
        let mut tx = self.0.db.begin().await?;
        let mut booked = 0u64;
        let mut trades = trades.into_iter().peekable();
        while trades.peek().is_some() {
            let chunk: Vec<PaidTrade> = trades.by_ref().take(ROWS).collect();
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO trades (out_trade_no, transaction_id, trade_type, trade_state, description, \
                 total, fee, openid, created_at, expire_at, success_time) ",
            );
            qb.push_values(&chunk, |mut b, t| {
                b.push_bind(&t.out_trade_no)
                    .push_bind(&t.transaction_id)
                    .push("'NATIVE', 'SUCCESS', 'bench'")
                    .push_bind(t.amount_fen)
                    .push_bind(t.fee_fen)
                    .push_bind(format!(
                        "o{}",
                        &t.transaction_id[t.transaction_id.len().saturating_sub(27)..]
                    ))
                    .push_bind(t.success_time - 1)
                    .push_bind(t.success_time + 7_200)
                    .push_bind(t.success_time);
            });
            booked += qb.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(booked)
    }
}

fn parse_bill_date(s: Option<&str>) -> Result<NaiveDate, ApiError> {
    let s = s.ok_or_else(|| ApiError::new(400, "PARAM_ERROR", "缺少参数 bill_date"))?;
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| ApiError::new(400, "PARAM_ERROR", "bill_date 格式错误"))?;
    let today = Utc::now().with_timezone(&Shanghai).date_naive();
    if d >= today {
        return Err(ApiError::new(400, "NO_STATEMENT_EXIST", "账单文件不存在"));
    }
    if (today - d).num_days() > 90 {
        return Err(ApiError::new(
            400,
            "INVALID_REQUEST",
            "只能下载三个月以内的账单",
        ));
    }
    Ok(d)
}

async fn tradebill(
    State(sb): State<WechatSandbox>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(q): Query<BillQuery>,
) -> Response {
    let r: ApiResult = async {
        let date = parse_bill_date(q.bill_date.as_deref())?;
        if q.bill_type.as_deref().is_some_and(|t| t != "ALL") {
            return Err(ApiError::new(
                400,
                "PARAM_ERROR",
                "沙箱仅支持 bill_type=ALL",
            ));
        }
        let file = sb.bill_file_for(date).await?;
        let prefix = uri.path().strip_suffix("/v3/bill/tradebill").unwrap_or("");
        let host = headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let hash = hex::encode(sha1::Sha1::digest(&file));
        let token = format!("{}.{}", date.format("%Y-%m-%d"), crypto::random_alnum(16));
        if let Ok(mut files) = sb.0.bill_files.lock() {
            files.retain(|(_, at, _)| at.elapsed() < BILL_TOKEN_TTL);
            if files.len() >= BILL_FILES_MAX {
                files.remove(0);
            }
            files.push((token.clone(), std::time::Instant::now(), file));
        }
        sb.ok(&json!({
            "hash_type": "SHA1",
            "hash_value": hash,
            "download_url": format!("http://{host}{prefix}/v3/billdownload/file?token={token}"),
        }))
    }
    .await;
    r.unwrap_or_else(|e| sb.error(e))
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The bill file itself: unsigned, like WeChat's.
async fn bill_file(State(sb): State<WechatSandbox>, Query(q): Query<TokenQuery>) -> Response {
    let r: Result<Response, ApiError> = async {
        let token = q.token.as_deref().unwrap_or_default();
        let rendered = sb.0.bill_files.lock().ok().and_then(|files| {
            files
                .iter()
                .find(|(t, at, _)| t == token && at.elapsed() < BILL_TOKEN_TTL)
                .map(|(_, _, f)| f.clone())
        });
        let file = match rendered {
            Some(f) => f,
            // A token that is a date: the file of that day, rendered now.
            None => sb.bill_file_for(parse_bill_date(Some(token))?).await?,
        };
        Ok(([("content-type", "application/octet-stream")], file).into_response())
    }
    .await;
    r.unwrap_or_else(|e| sb.error(e))
}

#[derive(Debug, Deserialize)]
struct WalletPay {
    #[serde(default)]
    code_url: Option<String>,
    #[serde(default)]
    prepay_id: Option<String>,
    #[serde(default)]
    openid: Option<String>,
}

/// A payer pays a created order (scans `code_url` or confirms `prepay_id` in the JSAPI page).
async fn wallet_pay(State(sb): State<WechatSandbox>, Json(p): Json<WalletPay>) -> Response {
    let token = p
        .code_url
        .as_deref()
        .and_then(|u| u.strip_prefix("weixin://wxpay/bizpayurl?pr="))
        .map(str::to_string)
        .or(p.prepay_id.clone());
    let Some(token) = token else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": "PARAM_ERROR", "message": "code_url or prepay_id required"})),
        )
            .into_response();
    };
    let no: Option<String> =
        match sqlx::query_scalar("SELECT out_trade_no FROM trades WHERE token = ?1")
            .bind(&token)
            .fetch_optional(&sb.0.db)
            .await
        {
            Ok(n) => n,
            Err(e) => return sb.error(e.into()),
        };
    let Some(no) = no else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"code": "ORDER_NOT_EXIST", "message": "no such order"})),
        )
            .into_response();
    };
    match sb
        .load(&no)
        .await
        .and_then(|t| t.ok_or_else(|| ApiError::new(404, "ORDER_NOT_EXIST", "订单不存在")))
    {
        Ok(t) => match sb.expire(t).await {
            Ok(t) if t.trade_state != "NOTPAY" => {
                return (StatusCode::CONFLICT, Json(json!({"code": "ORDER_NOT_PAYABLE", "message": format!("order is {}", t.trade_state)}))).into_response();
            }
            Ok(_) => {}
            Err(e) => return sb.error(e),
        },
        Err(e) => return sb.error(e),
    }
    match sb.mark_paid(&no, &["NOTPAY"], p.openid, true).await {
        Ok(true) => match sb.load(&no).await {
            Ok(Some(t)) => {
                Json(serde_json::to_value(sb.transaction_json(&t)).expect("json")).into_response()
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
        Ok(false) => (
            StatusCode::CONFLICT,
            Json(json!({"code": "ORDER_NOT_PAYABLE", "message": "order changed meanwhile"})),
        )
            .into_response(),
        Err(e) => sb.error(e),
    }
}

/// Re-sends a paid order's notification `times` times (duplicates on demand).
async fn resend(
    State(sb): State<WechatSandbox>,
    UrlPath(no): UrlPath<String>,
    Query(t): Query<sandbox::Times>,
) -> Response {
    match sb.load(&no).await {
        Ok(Some(tr)) if matches!(tr.trade_state.as_str(), "SUCCESS" | "REFUND") => {
            for _ in 0..t.times.unwrap_or(1).min(100) {
                if let Err(e) = sb.notify_payment(&no).await {
                    return sb.error(e);
                }
            }
            StatusCode::ACCEPTED.into_response()
        }
        Ok(_) => (StatusCode::NOT_FOUND, Json(json!({"code": "ORDER_NOT_EXIST", "message": "no paid order with this out_trade_no"}))).into_response(),
        Err(e) => sb.error(e),
    }
}

async fn public_account(State(sb): State<WechatSandbox>) -> Json<Value> {
    let a = &sb.0.account;
    Json(json!({
        "mchid": a.mchid, "appid": a.appid, "merchant_serial": a.merchant_serial,
        "platform_serial": a.platform_serial, "platform_public_key": a.platform_public_key,
    }))
}

/// WeChat's OAuth error answer (`{"errcode","errmsg"}`, HTTP 200).
fn oauth_error(errcode: i64, errmsg: &str) -> Response {
    Json(json!({"errcode": errcode, "errmsg": errmsg})).into_response()
}

/// `GET /connect/oauth2/authorize`: the payer's WeChat authorises silently (`snsapi_base`) and
/// comes back to `redirect_uri` with a one-time `code` and the `state`. Every authorisation is a
/// new sandbox payer.
async fn oauth_authorize(
    State(sb): State<WechatSandbox>,
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
    if field("appid") != sb.0.account.appid {
        return bad("appid 无效");
    }
    if field("response_type") != "code" {
        return bad("response_type 必须为 code");
    }
    if !matches!(field("scope"), "snsapi_base" | "snsapi_userinfo") {
        return bad("scope 参数错误");
    }
    if field("state").len() > 128 {
        return bad("state 超过 128 字节");
    }
    let openid = format!("o{}", crypto::random_alnum(27));
    let Some(code) = sb.0.oauth.issue(&sb.0.account.appid, openid) else {
        return bad("系统繁忙");
    };
    match sandbox::oauth_redirect(
        field("redirect_uri"),
        &[("code", &code), ("state", field("state"))],
    ) {
        Some(location) => sandbox::found(&location),
        None => bad("redirect_uri 参数错误"),
    }
}

/// `GET /sns/oauth2/access_token`: exchanges a code (once) for the payer's `openid`.
async fn oauth_access_token(
    State(sb): State<WechatSandbox>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    let q = sandbox::form_fields(uri.query().unwrap_or("").as_bytes());
    let field = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let account = &sb.0.account;
    if field("appid") != account.appid {
        return oauth_error(40013, "invalid appid");
    }
    if !crypto_eq(field("secret"), &account.app_secret()) {
        return oauth_error(40125, "invalid appsecret");
    }
    if field("grant_type") != "authorization_code" {
        return oauth_error(40002, "invalid grant_type");
    }
    match sb.0.oauth.redeem(&account.appid, field("code")) {
        Some(openid) => Json(json!({
            "access_token": crypto::random_alnum(64),
            "expires_in": 7200,
            "refresh_token": crypto::random_alnum(64),
            "openid": openid,
            "scope": "snsapi_base",
        }))
        .into_response(),
        None => oauth_error(40029, "invalid code"),
    }
}

/// Equal strings, compared in time independent of where they differ.
fn crypto_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The JSAPI parameters a page hands to `getBrandWCPayRequest`.
const JSAPI_FIELDS: [&str; 6] = [
    "appId",
    "timeStamp",
    "nonceStr",
    "package",
    "signType",
    "paySign",
];

/// `POST /sandbox/wallet`: stands in for the WeChat app's payment sheet. Verifies `paySign` with
/// the merchant's public key at every step; shows the order; `action=pay` pays it as the payer
/// it was created for and returns to `return_url`, `action=cancel` returns without paying.
async fn wallet_stand_in(State(sb): State<WechatSandbox>, body: Bytes) -> Response {
    let f = sandbox::form_fields(&body);
    let field = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    let fail = |status: StatusCode, m: &str| {
        sandbox::stand_in_page(
            status,
            "支付失败",
            &format!(
                "<h1>微信支付</h1><p id=\"error\">{}</p>",
                sandbox::escape_html(m)
            ),
        )
    };
    if field("appId") != sb.0.account.appid {
        return fail(StatusCode::BAD_REQUEST, "appId 与商户不符");
    }
    if field("signType") != "RSA" {
        return fail(StatusCode::BAD_REQUEST, "signType 必须为 RSA");
    }
    let message = format!(
        "{}\n{}\n{}\n{}\n",
        field("appId"),
        field("timeStamp"),
        field("nonceStr"),
        field("package")
    );
    if !sb
        .0
        .merchant_key
        .verify_base64(message.as_bytes(), field("paySign"))
    {
        return fail(StatusCode::BAD_REQUEST, "paySign 签名错误");
    }
    let Some(prepay_id) = field("package").strip_prefix("prepay_id=") else {
        return fail(StatusCode::BAD_REQUEST, "package 格式错误");
    };
    let Some(return_url) = sandbox::oauth_redirect(field("return_url"), &[]) else {
        return fail(StatusCode::BAD_REQUEST, "return_url 无效");
    };
    let row = match sqlx::query("SELECT * FROM trades WHERE token = ?1 AND trade_type = 'JSAPI'")
        .bind(prepay_id)
        .fetch_optional(&sb.0.db)
        .await
    {
        Ok(Some(r)) => TradeRow::from_row(&r),
        Ok(None) => return fail(StatusCode::NOT_FOUND, "订单不存在"),
        Err(e) => return sb.error(e.into()),
    };
    let t = match sb.expire(row).await {
        Ok(t) => t,
        Err(e) => return sb.error(e),
    };
    match field("action") {
        "cancel" => return sandbox::found(&return_url),
        "pay" => {
            if t.trade_state != "NOTPAY" {
                return fail(
                    StatusCode::CONFLICT,
                    &format!("订单状态为 {}，不能支付", t.trade_state),
                );
            }
            return match sb.mark_paid(&t.out_trade_no, &["NOTPAY"], None, true).await {
                Ok(true) => sandbox::found(&return_url),
                Ok(false) => fail(StatusCode::CONFLICT, "订单已变化，不能支付"),
                Err(e) => sb.error(e),
            };
        }
        _ => {}
    }
    let mut carried: Vec<(&str, &str)> = JSAPI_FIELDS.iter().map(|k| (*k, field(k))).collect();
    carried.push(("return_url", field("return_url")));
    let hidden = sandbox::hidden_inputs(&carried);
    let body = format!(
        "<h1>微信支付</h1><p id=\"description\">{desc}</p>\
<p class=\"amount\" id=\"total\">¥{yuan}.{cents:02}</p><p id=\"state\">{state}</p>\
<form method=\"post\">{hidden}<input type=\"hidden\" name=\"action\" value=\"pay\">\
<button id=\"pay\" type=\"submit\">确认支付 Pay</button></form>\
<form method=\"post\">{hidden}<input type=\"hidden\" name=\"action\" value=\"cancel\">\
<button id=\"cancel\" type=\"submit\">取消 Cancel</button></form>",
        desc = sandbox::escape_html(&t.description),
        yuan = t.total / 100,
        cents = t.total % 100,
        state = sandbox::escape_html(&t.trade_state),
    );
    sandbox::stand_in_page(StatusCode::OK, "微信支付", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cached_bill_changes_with_any_change_of_a_sum() {
        let dir = tempfile::tempdir().unwrap();
        let sb = WechatSandbox::start(SandboxOptions {
            data_dir: dir.path().to_path_buf(),
            ..SandboxOptions::default()
        })
        .await
        .unwrap();
        let date = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
        let noon = Shanghai
            .from_local_datetime(&date.and_hms_opt(12, 0, 0).unwrap())
            .single()
            .unwrap()
            .timestamp();
        // 2^53 fen, then one fen more: equal as floats.
        let total = 1i64 << 53;
        sqlx::query(
            "INSERT INTO trades (out_trade_no, transaction_id, trade_type, trade_state, description, total, created_at, success_time)
             VALUES ('T1', '4200000000202611220000000001', 'NATIVE', 'SUCCESS', 'x', ?1, ?2, ?2)",
        )
        .bind(total)
        .bind(noon)
        .execute(&sb.0.db)
        .await
        .unwrap();
        let first = sb.bill_file_for(date).await.unwrap();
        assert!(String::from_utf8_lossy(&first).contains("`90071992547409.92"));
        sqlx::query("UPDATE trades SET total = ?1")
            .bind(total + 1)
            .execute(&sb.0.db)
            .await
            .unwrap();
        let second = sb.bill_file_for(date).await.unwrap();
        assert!(
            String::from_utf8_lossy(&second).contains("`90071992547409.93"),
            "the bill of the books before the change was served again"
        );
    }
}
