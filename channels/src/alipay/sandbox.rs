//! The Alipay sandbox: the open API gateway (`gateway.do`) with Alipay's parameters, codes and
//! signatures, its own app account and books, payers whose behaviour the payment code chooses,
//! `trade_status_sync` notifications with Alipay's retry schedule, fault injection and trade bills.
//!
//! | path | what |
//! |---|---|
//! | `POST`/`GET /gateway.do` | every method: `alipay.trade.{precreate,create,pay,query,close,cancel,refund,fastpay.refund.query}`, `alipay.data.dataservice.bill.downloadurl.query` |
//! | `GET /sandbox/bill/{token}` | the bill zip a download URL points to (valid [`BILL_URL_TTL_SECS`]) |
//! | `POST /sandbox/pay` `{"qr_code"\|"trade_no", "buyer_id"?}` | a payer pays a precreated or JSAPI order |
//! | `GET`/`PUT /sandbox/faults` | fault injection (`refund_fail_pct`: refunds declined `ACQ.SELLER_BALANCE_NOT_ENOUGH`) |
//! | `POST /sandbox/notifications/{out_trade_no}` `?times=N` | re-send the payment notification now |
//! | `GET /sandbox/account` | the ids and public keys a client needs (never the private keys) |
//! | `GET /oauth2/publicAppAuthorize.htm?app_id&scope=auth_base&redirect_uri&state` | payer authorisation: 302 to `redirect_uri` with `auth_code`, `app_id`, `scope` and `state` (a new payer each time) |
//! | `POST /sandbox/wallet` (form: `tradeNO`, `return_url`, `action`) | stands in for `AlipayJSBridge` `tradePay` |
//!
//! `alipay.system.oauth.token` (common-level `grant_type=authorization_code`, `code`) exchanges an
//! `auth_code` (once, within 5 min) for the payer's `user_id`, which `alipay.trade.create` takes as
//! `buyer_id`. The wallet stand-in shows a JSAPI trade waiting for its buyer; `action=pay` pays it
//! as that buyer (the notification follows as for any payment) and returns to `return_url`;
//! `action=cancel` returns without paying.
//!
//! Parameters come from the query string and/or the form body (both form-decoded, `+` is a space);
//! the sandbox speaks `charset=utf-8` only.
//! The request signature is checked with the app public key over every parameter but `sign`
//! (`sign_type` kept); a bad one is answered, like Alipay, with code `40002` sub code
//! `isv.invalid-signature`. Every answer is HTTP 200 with `{"<method>_response":{…},"sign":"…"}`,
//! the node first and signed over its exact text. Gateway errors (unknown app, bad signature,
//! unknown method) and business errors use the method's node too, as Alipay does and as the
//! official SDKs expect (they slice the signed text out by the method's node name); only a request
//! without any `method` gets `error_response`.
//!
//! Payment codes: 16–24 digits starting `25`–`30`. The last four digits choose the payer
//! ([`PayerBehaviour`]): `1001` password then paid (`10003`), `1002` password and never
//! (`10003`, then closed), `1003` not enough balance (`ACQ.BUYER_BALANCE_NOT_ENOUGH`), `1004`
//! invalid code (`ACQ.PAYMENT_AUTH_CODE_INVALID`), `1005` unknown (`20000`) although paid; any
//! other code pays at once.
//!
//! Notifications are form POSTs answered by the plain text `success`; otherwise Alipay retries
//! after 4 min, 10 min, 10 min, 1 h, 2 h, 6 h and 15 h ([`RETRY_SCHEDULE_SECS`], divided by the
//! sandbox's time compression), then gives up. A refund notifies too (`out_biz_no`, `refund_fee`,
//! `gmt_refund`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Asia::Shanghai;
use paymux_model::{Currency, Money};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::{Row, SqlitePool};

use super::adapter::{AlipayConfig, yuan};
use super::bill::{TradeBillMeta, write_trade_bill, write_trade_bill_summary, zip_trade_bill};
use super::notify::TIME_FORMAT;
use super::sign;
use crate::crypto::{self, RsaSigner, RsaVerifier};
use crate::sandbox::{
    self, Delivery, FaultSwitch, Notifier, PayerBehaviour, SandboxOptions, fee_fen, refund_fee_fen,
};
use crate::{BillKind, BillRecord};

/// Alipay's notification retry schedule after the first attempt: 4m, 10m, 10m, 1h, 2h, 6h, 15h.
pub const RETRY_SCHEDULE_SECS: [u64; 7] = [240, 600, 600, 3600, 7200, 21600, 54000];

/// How long a bill download URL stays valid.
pub const BILL_URL_TTL_SECS: i64 = 30;

/// How long a precreated QR code or created order stays payable without `time_expire`.
pub const DEFAULT_EXPIRY_SECS: i64 = 2 * 3600;

/// The app the sandbox serves, with both halves of every key. Written to
/// `<data_dir>/alipay/account.json` on first start.
#[derive(Clone, Serialize, Deserialize)]
pub struct SandboxAccount {
    /// `2021` + 12 digits.
    pub app_id: String,
    /// The merchant's PID: `2088` + 12 digits.
    pub seller_id: String,
    pub app_private_key: String,
    pub app_public_key: String,
    pub alipay_private_key: String,
    pub alipay_public_key: String,
}

impl std::fmt::Debug for SandboxAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxAccount")
            .field("app_id", &self.app_id)
            .field("seller_id", &self.seller_id)
            .finish_non_exhaustive()
    }
}

impl SandboxAccount {
    /// Loads the account of a data directory, creating it (with fresh keys) on first use.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join("alipay").join("account.json");
        let text = sandbox::load_or_create(&path, || {
            let (app_priv, app_pub) = crypto::generate_rsa_keypair();
            let (ali_priv, ali_pub) = crypto::generate_rsa_keypair();
            let acct = SandboxAccount {
                app_id: format!("2021{}", sandbox::digits(12)),
                seller_id: format!("2088{}", sandbox::digits(12)),
                app_private_key: app_priv,
                app_public_key: app_pub,
                alipay_private_key: ali_priv,
                alipay_public_key: ali_pub,
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

    /// The adapter configuration of this app: `gateway_url` is the sandbox's `…/gateway.do`.
    pub fn client_config(&self, gateway_url: &str, notify_url: Option<String>) -> AlipayConfig {
        AlipayConfig {
            base_url: gateway_url.to_string(),
            app_id: self.app_id.clone(),
            app_private_key: self.app_private_key.clone(),
            alipay_public_key: self.alipay_public_key.clone(),
            seller_id: Some(self.seller_id.clone()),
            notify_url,
            oauth_base_url: Some(gateway_url.trim_end_matches("/gateway.do").to_string()),
            wallet_stand_in_url: Some(format!(
                "{}/sandbox/wallet",
                gateway_url.trim_end_matches("/gateway.do")
            )),
        }
    }
}

struct Inner {
    account: SandboxAccount,
    app_key: RsaVerifier,
    alipay: RsaSigner,
    db: SqlitePool,
    opts: SandboxOptions,
    faults: FaultSwitch,
    notifier: Notifier,
    /// Bill download tokens: token → (bill date, expiry unix seconds).
    bill_tokens: Mutex<HashMap<String, (NaiveDate, i64)>>,
    /// Outstanding payer authorisation codes.
    oauth: sandbox::OAuthCodes,
}

/// A running Alipay sandbox (its state); [`AlipaySandbox::router`] serves it.
#[derive(Clone)]
pub struct AlipaySandbox(Arc<Inner>);

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS trades (
    out_trade_no   TEXT PRIMARY KEY,
    trade_no       TEXT NOT NULL UNIQUE,
    kind           TEXT NOT NULL,
    trade_status   TEXT NOT NULL,
    subject        TEXT NOT NULL,
    total          INTEGER NOT NULL,
    refunded       INTEGER NOT NULL DEFAULT 0,
    fee            INTEGER NOT NULL DEFAULT 0,
    buyer_id       TEXT,
    notify_url     TEXT,
    token          TEXT UNIQUE,
    created_at     INTEGER NOT NULL,
    expire_at      INTEGER,
    paid_at        INTEGER,
    closed_at      INTEGER
);
CREATE TABLE IF NOT EXISTS refunds (
    out_trade_no   TEXT NOT NULL,
    out_request_no TEXT NOT NULL,
    amount         INTEGER NOT NULL,
    fee            INTEGER NOT NULL,
    reason         TEXT,
    success_time   INTEGER NOT NULL,
    PRIMARY KEY (out_trade_no, out_request_no)
);
CREATE INDEX IF NOT EXISTS trades_paid ON trades(paid_at);
CREATE INDEX IF NOT EXISTS refunds_success ON refunds(success_time);
"#;

/// The state of a precreated order nobody has scanned yet: Alipay does not know it as a trade
/// (`alipay.trade.query` answers `ACQ.TRADE_NOT_EXIST`).
const UNSCANNED: &str = "UNSCANNED";

/// A business answer that is not `10000`.
#[derive(Debug)]
struct Biz {
    code: &'static str,
    msg: &'static str,
    sub_code: &'static str,
    sub_msg: String,
    extra: Map<String, Value>,
}

impl Biz {
    fn new(code: &'static str, sub_code: &'static str, sub_msg: impl Into<String>) -> Self {
        let msg = match code {
            "10003" => "Waiting Payment",
            "20000" => "Service Currently Unavailable",
            "20001" => "Insufficient Token Permissions",
            "40001" => "Missing Required Arguments",
            "40002" => "Invalid Arguments",
            "40006" => "Insufficient Permissions",
            _ => "Business Failed",
        };
        Self {
            code,
            msg,
            sub_code,
            sub_msg: sub_msg.into(),
            extra: Map::new(),
        }
    }

    fn failed(sub_code: &'static str, sub_msg: impl Into<String>) -> Self {
        Self::new("40004", sub_code, sub_msg)
    }

    fn param(sub_msg: impl Into<String>) -> Self {
        Self::new("40002", "isv.invalid-parameter", sub_msg)
    }

    fn with(mut self, k: &str, v: Value) -> Self {
        self.extra.insert(k.into(), v);
        self
    }
}

impl From<sqlx::Error> for Biz {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "alipay sandbox books");
        Biz::failed("ACQ.SYSTEM_ERROR", "系统错误")
    }
}

type BizResult = Result<Map<String, Value>, Biz>;

fn now() -> i64 {
    Utc::now().timestamp()
}

fn local(ts: i64) -> NaiveDateTime {
    Shanghai
        .timestamp_opt(ts, 0)
        .single()
        .map(|t| t.naive_local())
        .unwrap_or_default()
}

fn local_text(ts: i64) -> String {
    local(ts).format(TIME_FORMAT).to_string()
}

/// `yyyyMMdd` + `22001` + 15 digits: 28 digits, like Alipay's trade numbers.
fn trade_no() -> String {
    format!(
        "{}22001{}",
        Utc::now().with_timezone(&Shanghai).format("%Y%m%d"),
        sandbox::digits(15)
    )
}

fn buyer_id() -> String {
    format!("2088{}", sandbox::digits(12))
}

/// Whether a code is an Alipay payment code: 16–24 digits starting 25–30.
pub fn is_alipay_code(code: &str) -> bool {
    (16..=24).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_digit())
        && matches!(code.get(..2), Some("25" | "26" | "27" | "28" | "29" | "30"))
}

#[derive(Debug, Clone)]
struct TradeRow {
    out_trade_no: String,
    trade_no: String,
    kind: String,
    trade_status: String,
    subject: String,
    total: i64,
    refunded: i64,
    fee: i64,
    buyer_id: Option<String>,
    notify_url: Option<String>,
    token: Option<String>,
    created_at: i64,
    expire_at: Option<i64>,
    paid_at: Option<i64>,
    closed_at: Option<i64>,
}

impl TradeRow {
    fn from_row(r: &sqlx::sqlite::SqliteRow) -> Self {
        Self {
            out_trade_no: r.get("out_trade_no"),
            trade_no: r.get("trade_no"),
            kind: r.get("kind"),
            trade_status: r.get("trade_status"),
            subject: r.get("subject"),
            total: r.get("total"),
            refunded: r.get("refunded"),
            fee: r.get("fee"),
            buyer_id: r.get("buyer_id"),
            notify_url: r.get("notify_url"),
            token: r.get("token"),
            created_at: r.get("created_at"),
            expire_at: r.get("expire_at"),
            paid_at: r.get("paid_at"),
            closed_at: r.get("closed_at"),
        }
    }

    fn is_paid(&self) -> bool {
        self.paid_at.is_some()
    }
}

/// Decoded and verified request parameters.
struct Call {
    method: String,
    params: BTreeMap<String, String>,
    biz: Map<String, Value>,
}

impl Call {
    fn str(&self, k: &str) -> Option<&str> {
        self.biz
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    fn required(&self, k: &'static str) -> Result<&str, Biz> {
        self.str(k).ok_or_else(|| {
            Biz::new(
                "40001",
                "isv.missing-parameter",
                format!("缺少必选参数 {k}"),
            )
        })
    }

    /// A yuan amount in fen (0.01 ..= 100000000.00).
    fn fen(&self, k: &'static str) -> Result<i64, Biz> {
        let v = self.required(k)?;
        let fen = Money::parse_major(v, Currency::Cny, false)
            .map(Money::amount_minor)
            .map_err(|_| Biz::param(format!("{k} 格式错误")))?;
        if !(1..=10_000_000_000).contains(&fen) {
            return Err(Biz::param(format!("{k} 超出范围")));
        }
        Ok(fen)
    }

    fn notify_url(&self) -> Option<String> {
        self.params
            .get("notify_url")
            .filter(|s| !s.is_empty())
            .cloned()
    }
}

impl AlipaySandbox {
    /// Loads (or creates) the app account and opens the books under `opts.data_dir/alipay`.
    pub async fn start(opts: SandboxOptions) -> anyhow::Result<Self> {
        let account = SandboxAccount::load_or_create(&opts.data_dir)?;
        let db = sandbox::open_books_with_schema(
            &opts.data_dir.join("alipay").join("books.sqlite"),
            SCHEMA,
        )
        .await?;
        let faults = FaultSwitch::new(opts.faults.clone());
        let notifier = sandbox::notifier(&RETRY_SCHEDULE_SECS, &opts, &faults);
        Ok(Self(Arc::new(Inner {
            app_key: RsaVerifier::from_pem(&account.app_public_key)?,
            alipay: RsaSigner::from_pem(&account.alipay_private_key)?,
            account,
            db,
            opts,
            faults,
            notifier,
            bill_tokens: Mutex::new(HashMap::new()),
            oauth: sandbox::OAuthCodes::default(),
        })))
    }

    /// The app account this sandbox serves.
    pub fn account(&self) -> &SandboxAccount {
        &self.0.account
    }

    /// The fault switch (also `PUT /sandbox/faults`).
    pub fn faults(&self) -> &FaultSwitch {
        &self.0.faults
    }

    /// The notification sender and its counters.
    pub fn notifier(&self) -> &Notifier {
        &self.0.notifier
    }

    /// The sandbox's routes (mount at `/` or nest under a prefix).
    pub fn router(&self) -> axum::Router {
        let api = axum::Router::new()
            .route("/gateway.do", get(gateway).post(gateway))
            .layer(middleware::from_fn_with_state(
                (self.0.faults.clone(), system_error as fn() -> Response),
                sandbox::inject_faults,
            ));
        let tools = axum::Router::new()
            .route("/sandbox/bill/{token}", get(bill_file))
            .route("/sandbox/pay", post(wallet_pay))
            .route("/sandbox/notifications/{no}", post(resend))
            .route("/sandbox/account", get(public_account))
            .route("/sandbox/wallet", post(wallet_stand_in))
            .route("/oauth2/publicAppAuthorize.htm", get(oauth_authorize));
        api.merge(tools)
            .merge(sandbox::faults_router(self.0.faults.clone()))
            .with_state(self.clone())
    }

    /// A signed gateway answer: always HTTP 200, the node before `sign`.
    fn respond(&self, node: &str, content: &Map<String, Value>) -> Response {
        let text = Value::Object(content.clone()).to_string();
        let body = sign::render_response(&self.0.alipay, node, &text);
        (
            StatusCode::OK,
            [("content-type", "application/json;charset=utf-8")],
            body,
        )
            .into_response()
    }

    fn respond_error(&self, node: &str, e: Biz) -> Response {
        let mut m = Map::new();
        m.insert("code".into(), json!(e.code));
        m.insert("msg".into(), json!(e.msg));
        m.insert("sub_code".into(), json!(e.sub_code));
        m.insert("sub_msg".into(), json!(e.sub_msg));
        m.extend(e.extra);
        self.respond(node, &m)
    }
}

/// An injected 5xx: Alipay's front ends answer such failures with an HTML error page.
fn system_error() -> Response {
    (
        StatusCode::BAD_GATEWAY,
        [("content-type", "text/html;charset=utf-8")],
        "<html><body><h1>502 Bad Gateway</h1></body></html>",
    )
        .into_response()
}

fn success(mut fields: Map<String, Value>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("code".into(), json!("10000"));
    m.insert("msg".into(), json!("Success"));
    m.append(&mut fields);
    m
}

/// Decodes the parameters (query string and form body), checks the app, the signature and the
/// method, then dispatches.
async fn gateway(
    State(sb): State<AlipaySandbox>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut params = match sign::parse_form(uri.query().unwrap_or("").as_bytes()) {
        Ok(p) => p,
        Err(e) => {
            return sb.respond_error(
                "error_response",
                Biz::new(
                    "40002",
                    "isv.invalid-parameter",
                    format!("查询串无法解析: {e}"),
                ),
            );
        }
    };
    let is_form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| {
            ct.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !body.is_empty() && is_form {
        match sign::parse_form(&body) {
            Ok(b) => {
                for (k, v) in b {
                    if params.contains_key(&k) {
                        return sb
                            .respond_error("error_response", Biz::param(format!("参数 {k} 重复")));
                    }
                    params.insert(k, v);
                }
            }
            Err(e) => {
                return sb
                    .respond_error("error_response", Biz::param(format!("请求体无法解析: {e}")));
            }
        }
    }
    let method = params.get("method").cloned().unwrap_or_default();
    let node = if method.is_empty() {
        "error_response".to_string()
    } else {
        sign::response_node_name(&method)
    };
    if method.is_empty() {
        return sb.respond_error(
            "error_response",
            Biz::new("40001", "isv.missing-method", "缺少方法名参数"),
        );
    }
    // Once the method is known, gateway errors (app id, signature, …) use its node too, as Alipay
    // does (`{"<method>_response":{"code":"40002",…,"sub_code":"isv.invalid-signature"},"sign":…}`),
    // which is also the only layout the official SDKs can verify.
    let gateway_error = |e: Biz| sb.respond_error(&node, e);
    match params.get("app_id") {
        None => return gateway_error(Biz::new("40001", "isv.missing-app-id", "缺少AppID参数")),
        Some(a) if *a != sb.0.account.app_id => {
            return gateway_error(Biz::new("40002", "isv.invalid-app-id", "无效的AppID参数"));
        }
        Some(_) => {}
    }
    if params
        .get("charset")
        .is_some_and(|c| !c.eq_ignore_ascii_case("utf-8"))
    {
        return gateway_error(Biz::new("40002", "isv.invalid-charset", "字符集错误"));
    }
    match params.get("sign_type").map(String::as_str) {
        Some("RSA2") => {}
        None => {
            return gateway_error(Biz::new(
                "40001",
                "isv.missing-signature-type",
                "缺少签名类型",
            ));
        }
        Some(_) => {
            return gateway_error(Biz::new(
                "40002",
                "isv.invalid-signature-type",
                "无效的签名类型",
            ));
        }
    }
    if !params.contains_key("sign") {
        return gateway_error(Biz::new("40001", "isv.missing-signature", "缺少签名参数"));
    }
    if !sign::verify_request(&sb.0.app_key, &params) {
        let content =
            sign::sign_content(params.iter().map(|(k, v)| (k.as_str(), v.as_str())), true);
        return gateway_error(Biz::new(
            "40002",
            "isv.invalid-signature",
            format!(
                "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，网关生成的验签字符串为：{content}"
            ),
        ));
    }
    if params.get("timestamp").is_none_or(String::is_empty) {
        return gateway_error(Biz::new("40001", "isv.missing-timestamp", "缺少时间戳参数"));
    }
    let biz = match params.get("biz_content").map(String::as_str) {
        None | Some("") => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            _ => {
                return sb.respond_error(&node, Biz::param("biz_content 不是合法的JSON对象"));
            }
        },
    };
    let call = Call {
        method,
        params,
        biz,
    };
    let result = match call.method.as_str() {
        "alipay.trade.precreate" => sb.precreate(&call).await,
        "alipay.trade.create" => sb.create(&call).await,
        "alipay.system.oauth.token" => sb.oauth_token(&call),
        "alipay.trade.pay" => sb.pay(&call).await,
        "alipay.trade.query" => sb.query(&call).await,
        "alipay.trade.close" => sb.close(&call).await,
        "alipay.trade.cancel" => sb.cancel(&call).await,
        "alipay.trade.refund" => sb.refund(&call).await,
        "alipay.trade.fastpay.refund.query" => sb.refund_query(&call).await,
        "alipay.data.dataservice.bill.downloadurl.query" => {
            sb.bill_url(&call, &uri, &headers).await
        }
        _ => {
            return gateway_error(Biz::new("40002", "isv.invalid-method", "不存在的方法名"));
        }
    };
    match result {
        Ok(fields) => sb.respond(&node, &success(fields)),
        Err(e) => sb.respond_error(&node, e),
    }
}

impl AlipaySandbox {
    async fn load(&self, out_trade_no: &str) -> Result<Option<TradeRow>, Biz> {
        let row = sqlx::query("SELECT * FROM trades WHERE out_trade_no = ?1")
            .bind(out_trade_no)
            .fetch_optional(&self.0.db)
            .await?;
        match row.map(|r| TradeRow::from_row(&r)) {
            Some(t) => Ok(Some(self.expire(t).await?)),
            None => Ok(None),
        }
    }

    /// The trade a call names by `out_trade_no` or `trade_no` (unscanned QR orders included).
    async fn find(&self, call: &Call) -> Result<Option<TradeRow>, Biz> {
        let no = match (call.str("out_trade_no"), call.str("trade_no")) {
            (Some(n), _) => Some(n.to_string()),
            (None, Some(t)) => {
                sqlx::query_scalar("SELECT out_trade_no FROM trades WHERE trade_no = ?1")
                    .bind(t)
                    .fetch_optional(&self.0.db)
                    .await?
            }
            (None, None) => {
                return Err(Biz::new(
                    "40001",
                    "isv.missing-parameter",
                    "out_trade_no 和 trade_no 不能同时为空",
                ));
            }
        };
        match no {
            Some(n) => self.load(&n).await,
            None => Ok(None),
        }
    }

    /// A trade Alipay knows (scanned, paid, or created): else `ACQ.TRADE_NOT_EXIST`.
    async fn existing(&self, call: &Call) -> Result<TradeRow, Biz> {
        match self.find(call).await? {
            Some(t) if t.trade_status != UNSCANNED => Ok(t),
            _ => Err(Biz::failed("ACQ.TRADE_NOT_EXIST", "交易不存在")),
        }
    }

    /// Lazily closes unpaid orders past their expiry.
    async fn expire(&self, t: TradeRow) -> Result<TradeRow, Biz> {
        let open = matches!(t.trade_status.as_str(), UNSCANNED | "WAIT_BUYER_PAY");
        if open && t.kind != "BARCODE" && t.expire_at.is_some_and(|e| e < now()) {
            sqlx::query(
                "UPDATE trades SET trade_status = 'TRADE_CLOSED', closed_at = ?1
                 WHERE out_trade_no = ?2 AND trade_status = ?3",
            )
            .bind(now())
            .bind(&t.out_trade_no)
            .bind(&t.trade_status)
            .execute(&self.0.db)
            .await?;
            let row = sqlx::query("SELECT * FROM trades WHERE out_trade_no = ?1")
                .bind(&t.out_trade_no)
                .fetch_one(&self.0.db)
                .await?;
            return Ok(TradeRow::from_row(&row));
        }
        Ok(t)
    }

    /// Checks the common order fields; returns `(out_trade_no, total, subject, expire_at)`.
    fn order_fields(&self, call: &Call) -> Result<(String, i64, String, i64), Biz> {
        let no = call.required("out_trade_no")?;
        if no.len() > 64
            || !no
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        {
            return Err(Biz::param("out_trade_no 格式错误"));
        }
        let total = call.fen("total_amount")?;
        let subject = call.required("subject")?;
        if subject.chars().count() > 256 {
            return Err(Biz::param("subject 过长"));
        }
        if let Some(seller) = call.str("seller_id")
            && seller != self.0.account.seller_id
        {
            return Err(Biz::failed("ACQ.PARTNER_ERROR", "应用APPID和卖家ID不匹配"));
        }
        let expire_at = match call.str("time_expire") {
            Some(t) => NaiveDateTime::parse_from_str(t, TIME_FORMAT)
                .ok()
                .and_then(|n| Shanghai.from_local_datetime(&n).single())
                .map(|t| t.timestamp())
                .ok_or_else(|| Biz::param("time_expire 格式错误"))?,
            None => now() + DEFAULT_EXPIRY_SECS,
        };
        Ok((no.to_string(), total, subject.to_string(), expire_at))
    }

    /// An existing order under the same `out_trade_no`: the same unpaid order is returned again,
    /// anything else is an error.
    fn same_open_order(t: &TradeRow, kind: &str, total: i64, subject: &str) -> Result<(), Biz> {
        match t.trade_status.as_str() {
            "TRADE_SUCCESS" | "TRADE_FINISHED" => {
                Err(Biz::failed("ACQ.TRADE_HAS_SUCCESS", "交易已被支付"))
            }
            "TRADE_CLOSED" => Err(Biz::failed("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")),
            _ if t.kind != kind || t.total != total || t.subject != subject => {
                Err(Biz::failed("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改"))
            }
            _ => Ok(()),
        }
    }

    async fn insert_trade(&self, t: &TradeRow) -> Result<(), Biz> {
        sqlx::query(
            "INSERT INTO trades (out_trade_no, trade_no, kind, trade_status, subject, total, buyer_id, notify_url, token, created_at, expire_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .bind(&t.out_trade_no)
        .bind(&t.trade_no)
        .bind(&t.kind)
        .bind(&t.trade_status)
        .bind(&t.subject)
        .bind(t.total)
        .bind(&t.buyer_id)
        .bind(&t.notify_url)
        .bind(&t.token)
        .bind(t.created_at)
        .bind(t.expire_at)
        .execute(&self.0.db)
        .await?;
        Ok(())
    }

    fn new_trade(
        call: &Call,
        kind: &str,
        status: &str,
        order: (String, i64, String, i64),
    ) -> TradeRow {
        let (out_trade_no, total, subject, expire_at) = order;
        TradeRow {
            out_trade_no,
            trade_no: trade_no(),
            kind: kind.into(),
            trade_status: status.into(),
            subject,
            total,
            refunded: 0,
            fee: 0,
            buyer_id: None,
            notify_url: call.notify_url(),
            token: None,
            created_at: now(),
            expire_at: Some(expire_at),
            paid_at: None,
            closed_at: None,
        }
    }

    async fn precreate(&self, call: &Call) -> BizResult {
        let order = self.order_fields(call)?;
        let qr = |token: &str| format!("https://qr.alipay.com/bax0{token}");
        if let Some(t) = self.load(&order.0).await? {
            Self::same_open_order(&t, "PRECREATE", order.1, &order.2)?;
            let mut m = Map::new();
            m.insert("out_trade_no".into(), json!(t.out_trade_no));
            m.insert(
                "qr_code".into(),
                json!(qr(t.token.as_deref().unwrap_or(""))),
            );
            return Ok(m);
        }
        let mut t = Self::new_trade(call, "PRECREATE", UNSCANNED, order);
        let token = crypto::random_alnum(20).to_ascii_lowercase();
        t.token = Some(token.clone());
        self.insert_trade(&t).await?;
        let mut m = Map::new();
        m.insert("out_trade_no".into(), json!(t.out_trade_no));
        m.insert("qr_code".into(), json!(qr(&token)));
        Ok(m)
    }

    /// `alipay.system.oauth.token`: an authorisation code (once) for the payer's `user_id`.
    fn oauth_token(&self, call: &Call) -> BizResult {
        let top = |k: &str| call.params.get(k).map(String::as_str).unwrap_or("");
        if top("grant_type") != "authorization_code" {
            return Err(Biz::new(
                "40002",
                "isv.grant-type-invalid",
                "不支持的grant_type",
            ));
        }
        let user_id = self
            .0
            .oauth
            .redeem(&self.0.account.app_id, top("code"))
            .ok_or_else(|| Biz::new("40002", "isv.code-invalid", "授权码code无效"))?;
        let mut m = Map::new();
        m.insert("user_id".into(), json!(user_id));
        m.insert("access_token".into(), json!(crypto::random_alnum(40)));
        m.insert("expires_in".into(), json!(1_209_600));
        m.insert("refresh_token".into(), json!(crypto::random_alnum(40)));
        m.insert("re_expires_in".into(), json!(2_592_000));
        Ok(m)
    }

    async fn create(&self, call: &Call) -> BizResult {
        let order = self.order_fields(call)?;
        let buyer = call
            .str("buyer_id")
            .or(call.str("buyer_open_id"))
            .ok_or_else(|| {
                Biz::failed(
                    "ACQ.INVALID_PARAMETER",
                    "buyer_id 和 buyer_open_id 不能同时为空",
                )
            })?
            .to_string();
        let out = |t: &TradeRow| {
            let mut m = Map::new();
            m.insert("out_trade_no".into(), json!(t.out_trade_no));
            m.insert("trade_no".into(), json!(t.trade_no));
            m
        };
        if let Some(t) = self.load(&order.0).await? {
            Self::same_open_order(&t, "JSAPI", order.1, &order.2)?;
            return Ok(out(&t));
        }
        let mut t = Self::new_trade(call, "JSAPI", "WAIT_BUYER_PAY", order);
        t.buyer_id = Some(buyer);
        self.insert_trade(&t).await?;
        Ok(out(&t))
    }

    async fn pay(&self, call: &Call) -> BizResult {
        let order = self.order_fields(call)?;
        match call.str("scene") {
            Some("bar_code") | Some("wave_code") => {}
            _ => return Err(Biz::param("scene 仅支持 bar_code, wave_code")),
        }
        if call
            .str("product_code")
            .is_some_and(|p| p != "FACE_TO_FACE_PAYMENT")
        {
            return Err(Biz::failed("ACQ.PRODUCT_AMOUNT_LIMIT_ERROR", "产品码错误"));
        }
        let code = call.required("auth_code")?.to_string();
        if let Some(t) = self.load(&order.0).await? {
            return match t.trade_status.as_str() {
                "TRADE_SUCCESS" | "TRADE_FINISHED" => {
                    Err(Biz::failed("ACQ.TRADE_HAS_SUCCESS", "交易已被支付"))
                }
                "WAIT_BUYER_PAY" if t.kind == "BARCODE" && t.total == order.1 => {
                    Err(Biz::new("10003", "", "等待用户付款")
                        .with("trade_no", json!(t.trade_no))
                        .with("out_trade_no", json!(t.out_trade_no)))
                }
                "TRADE_CLOSED" => Err(Biz::failed("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")),
                _ => Err(Biz::failed("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")),
            };
        }
        if !is_alipay_code(&code) {
            return Err(Biz::failed(
                "ACQ.PAYMENT_AUTH_CODE_INVALID",
                "支付失败，获取顾客账户信息失败，请顾客刷新付款码后重新收款",
            ));
        }
        let behaviour = PayerBehaviour::of_code(&code);
        match behaviour {
            PayerBehaviour::InsufficientFunds => {
                return Err(Biz::failed("ACQ.BUYER_BALANCE_NOT_ENOUGH", "买家余额不足"));
            }
            PayerBehaviour::InvalidCode => {
                return Err(Biz::failed(
                    "ACQ.PAYMENT_AUTH_CODE_INVALID",
                    "支付失败，获取顾客账户信息失败，请顾客刷新付款码后重新收款",
                ));
            }
            _ => {}
        }
        let mut t = Self::new_trade(call, "BARCODE", "WAIT_BUYER_PAY", order);
        t.buyer_id = Some(buyer_id());
        self.insert_trade(&t).await?;
        match behaviour {
            PayerBehaviour::PasswordThenPaid | PayerBehaviour::PasswordThenTimeout => {
                let sb = self.clone();
                let no = t.out_trade_no.clone();
                let wait = Duration::from_secs(self.0.opts.password_wait_secs)
                    / self.0.opts.time_compression.max(1);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    if behaviour == PayerBehaviour::PasswordThenPaid {
                        let _ = sb.mark_paid(&no, "WAIT_BUYER_PAY", None).await;
                    } else {
                        let _ = sb.close_open(&no).await;
                    }
                });
                Err(Biz::new("10003", "", "等待用户付款")
                    .with("trade_no", json!(t.trade_no))
                    .with("out_trade_no", json!(t.out_trade_no)))
            }
            PayerBehaviour::SystemErrorButPaid => {
                self.mark_paid(&t.out_trade_no, "WAIT_BUYER_PAY", None)
                    .await?;
                Err(Biz::new("20000", "aop.unknow-error", "系统繁忙"))
            }
            _ => {
                self.mark_paid(&t.out_trade_no, "WAIT_BUYER_PAY", None)
                    .await?;
                let t = self.existing(call).await?;
                let mut m = self.trade_fields(&t);
                m.remove("trade_status");
                m.remove("send_pay_date");
                m.insert(
                    "gmt_payment".into(),
                    json!(local_text(t.paid_at.unwrap_or_default())),
                );
                Ok(m)
            }
        }
    }

    /// Moves a trade from `from` to `TRADE_SUCCESS`, books the fee and notifies (when the order has
    /// a `notify_url`).
    async fn mark_paid(
        &self,
        out_trade_no: &str,
        from: &str,
        buyer: Option<String>,
    ) -> Result<bool, Biz> {
        let Some(t) = self.load(out_trade_no).await? else {
            return Ok(false);
        };
        if t.trade_status != from {
            return Ok(false);
        }
        let fee = fee_fen(t.total, self.0.opts.fee_rate_bps);
        let buyer = buyer.or(t.buyer_id.clone()).unwrap_or_else(buyer_id);
        let changed = sqlx::query(
            "UPDATE trades SET trade_status = 'TRADE_SUCCESS', paid_at = ?1, fee = ?2, buyer_id = ?3
             WHERE out_trade_no = ?4 AND trade_status = ?5",
        )
        .bind(now())
        .bind(fee)
        .bind(&buyer)
        .bind(out_trade_no)
        .bind(from)
        .execute(&self.0.db)
        .await?
        .rows_affected()
            == 1;
        if changed {
            self.notify_trade(out_trade_no, None).await?;
        }
        Ok(changed)
    }

    /// Closes an unpaid trade (`WAIT_BUYER_PAY` or unscanned).
    async fn close_open(&self, out_trade_no: &str) -> Result<bool, Biz> {
        Ok(sqlx::query(
            "UPDATE trades SET trade_status = 'TRADE_CLOSED', closed_at = ?1
             WHERE out_trade_no = ?2 AND trade_status IN ('WAIT_BUYER_PAY', 'UNSCANNED')",
        )
        .bind(now())
        .bind(out_trade_no)
        .execute(&self.0.db)
        .await?
        .rows_affected()
            == 1)
    }

    /// The fields `alipay.trade.query` answers with.
    fn trade_fields(&self, t: &TradeRow) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("trade_no".into(), json!(t.trade_no));
        m.insert("out_trade_no".into(), json!(t.out_trade_no));
        m.insert("buyer_logon_id".into(), json!("159******35"));
        m.insert("trade_status".into(), json!(t.trade_status));
        m.insert("total_amount".into(), json!(yuan(t.total)));
        if let Some(paid) = t.paid_at {
            m.insert("buyer_pay_amount".into(), json!(yuan(t.total)));
            m.insert("receipt_amount".into(), json!(yuan(t.total)));
            m.insert("invoice_amount".into(), json!(yuan(t.total)));
            m.insert("point_amount".into(), json!("0.00"));
            m.insert("send_pay_date".into(), json!(local_text(paid)));
            m.insert(
                "fund_bill_list".into(),
                json!([{"fund_channel": "ALIPAYACCOUNT", "amount": yuan(t.total)}]),
            );
        }
        if let Some(b) = &t.buyer_id {
            m.insert("buyer_user_id".into(), json!(b));
            m.insert("buyer_user_type".into(), json!("PRIVATE"));
        }
        m
    }

    async fn query(&self, call: &Call) -> BizResult {
        let t = self.existing(call).await?;
        Ok(self.trade_fields(&t))
    }

    async fn close(&self, call: &Call) -> BizResult {
        let t = match self.find(call).await? {
            Some(t) => t,
            None => return Err(Biz::failed("ACQ.TRADE_NOT_EXIST", "交易不存在")),
        };
        match t.trade_status.as_str() {
            "TRADE_SUCCESS" | "TRADE_FINISHED" => {
                Err(Biz::failed("ACQ.TRADE_STATUS_ERROR", "交易状态不合法"))
            }
            _ => {
                // Unscanned QR orders are closed too, so that a late scan cannot pay them.
                self.close_open(&t.out_trade_no).await?;
                let mut m = Map::new();
                m.insert("trade_no".into(), json!(t.trade_no));
                m.insert("out_trade_no".into(), json!(t.out_trade_no));
                Ok(m)
            }
        }
    }

    async fn cancel(&self, call: &Call) -> BizResult {
        let out = |t: &TradeRow, action: &str| {
            let mut m = Map::new();
            m.insert("trade_no".into(), json!(t.trade_no));
            m.insert("out_trade_no".into(), json!(t.out_trade_no));
            m.insert("retry_flag".into(), json!("N"));
            m.insert("action".into(), json!(action));
            m
        };
        let t = match self.find(call).await? {
            Some(t) => t,
            None => {
                // The pay request never arrived: a closed placeholder keeps a late one from paying.
                let no = call.required("out_trade_no")?.to_string();
                let t = TradeRow {
                    out_trade_no: no,
                    trade_no: trade_no(),
                    kind: "BARCODE".into(),
                    trade_status: "TRADE_CLOSED".into(),
                    subject: String::new(),
                    total: 0,
                    refunded: 0,
                    fee: 0,
                    buyer_id: None,
                    notify_url: None,
                    token: None,
                    created_at: now(),
                    expire_at: None,
                    paid_at: None,
                    closed_at: Some(now()),
                };
                self.insert_trade(&t).await?;
                return Ok(out(&t, "close"));
            }
        };
        if t.is_paid() {
            if t.paid_at.is_some_and(|p| now() - p > 86_400) {
                return Err(
                    Biz::failed("ACQ.REASON_TRADE_BEEN_FREEZEN", "当前交易已超过撤销期限")
                        .with("retry_flag", json!("N")),
                );
            }
            let remaining = t.total - t.refunded;
            if remaining > 0 {
                let fee_back = refund_fee_fen(t.fee, t.total, t.refunded, remaining);
                let mut tx = self.0.db.begin().await?;
                sqlx::query(
                    "INSERT OR IGNORE INTO refunds (out_trade_no, out_request_no, amount, fee, reason, success_time)
                     VALUES (?1, ?2, ?3, ?4, '撤销', ?5)",
                )
                .bind(&t.out_trade_no)
                .bind(format!("CANCEL{}", t.trade_no))
                .bind(remaining)
                .bind(fee_back)
                .bind(now())
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE trades SET refunded = total, trade_status = 'TRADE_CLOSED', closed_at = ?1 WHERE out_trade_no = ?2",
                )
                .bind(now())
                .bind(&t.out_trade_no)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            let mut m = out(&t, "refund");
            m.insert("gmt_refund_pay".into(), json!(local_text(now())));
            return Ok(m);
        }
        self.close_open(&t.out_trade_no).await?;
        Ok(out(&t, "close"))
    }

    async fn refund(&self, call: &Call) -> BizResult {
        let amount = call.fen("refund_amount")?;
        let t = self.existing(call).await?;
        let request_no = call
            .str("out_request_no")
            .unwrap_or(&t.out_trade_no)
            .to_string();
        let answer = |t: &TradeRow, fund_change: &str| {
            let mut m = Map::new();
            m.insert("trade_no".into(), json!(t.trade_no));
            m.insert("out_trade_no".into(), json!(t.out_trade_no));
            m.insert("buyer_logon_id".into(), json!("159******35"));
            m.insert("fund_change".into(), json!(fund_change));
            m.insert("refund_fee".into(), json!(yuan(t.refunded)));
            m.insert("send_back_fee".into(), json!(yuan(t.refunded)));
            if let Some(b) = &t.buyer_id {
                m.insert("buyer_user_id".into(), json!(b));
            }
            m
        };
        let existing: Option<i64> = sqlx::query_scalar(
            "SELECT amount FROM refunds WHERE out_trade_no = ?1 AND out_request_no = ?2",
        )
        .bind(&t.out_trade_no)
        .bind(&request_no)
        .fetch_optional(&self.0.db)
        .await?;
        if let Some(a) = existing {
            // A repeated request: the money moved the first time.
            return if a == amount {
                Ok(answer(&t, "N"))
            } else {
                Err(Biz::failed(
                    "ACQ.CONTEXT_INCONSISTENT",
                    "参数与原退款请求不一致",
                ))
            };
        }
        if !t.is_paid() {
            return Err(Biz::failed("ACQ.TRADE_STATUS_ERROR", "交易状态不合法"));
        }
        if amount > t.total - t.refunded {
            return Err(Biz::failed(
                "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
                "退款金额超限",
            ));
        }
        if sandbox::chance(self.0.faults.get().refund_fail_pct) {
            // The `refund_fail_pct` fault: declined at once, nothing moves.
            return Err(Biz::failed("ACQ.SELLER_BALANCE_NOT_ENOUGH", "卖家余额不足"));
        }
        let fee_back = refund_fee_fen(t.fee, t.total, t.refunded, amount);
        let full = t.refunded + amount == t.total;
        let mut tx = self.0.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE trades SET refunded = refunded + ?1,
                 trade_status = CASE WHEN ?2 THEN 'TRADE_CLOSED' ELSE trade_status END,
                 closed_at = CASE WHEN ?2 THEN ?3 ELSE closed_at END
             WHERE out_trade_no = ?4 AND refunded = ?5",
        )
        .bind(amount)
        .bind(full)
        .bind(now())
        .bind(&t.out_trade_no)
        .bind(t.refunded)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            return Err(Biz::failed("ACQ.SYSTEM_ERROR", "系统繁忙，请稍后重试"));
        }
        sqlx::query(
            "INSERT INTO refunds (out_trade_no, out_request_no, amount, fee, reason, success_time)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(&t.out_trade_no)
        .bind(&request_no)
        .bind(amount)
        .bind(fee_back)
        .bind(call.str("refund_reason"))
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.notify_trade(&t.out_trade_no, Some(&request_no))
            .await?;
        let t = self.existing(call).await?;
        let mut m = answer(&t, "Y");
        m.insert("gmt_refund_pay".into(), json!(local_text(now())));
        Ok(m)
    }

    async fn refund_query(&self, call: &Call) -> BizResult {
        let t = self.existing(call).await?;
        let request_no = call.required("out_request_no")?;
        let row = sqlx::query(
            "SELECT amount, reason, success_time FROM refunds WHERE out_trade_no = ?1 AND out_request_no = ?2",
        )
        .bind(&t.out_trade_no)
        .bind(request_no)
        .fetch_optional(&self.0.db)
        .await?;
        let mut m = Map::new();
        // Like Alipay: an unknown refund is a `10000` answer without refund fields.
        let Some(r) = row else {
            return Ok(m);
        };
        m.insert("trade_no".into(), json!(t.trade_no));
        m.insert("out_trade_no".into(), json!(t.out_trade_no));
        m.insert("out_request_no".into(), json!(request_no));
        m.insert("total_amount".into(), json!(yuan(t.total)));
        m.insert("refund_amount".into(), json!(yuan(r.get("amount"))));
        m.insert("refund_status".into(), json!("REFUND_SUCCESS"));
        if let Some(reason) = r.get::<Option<String>, _>("reason") {
            m.insert("refund_reason".into(), json!(reason));
        }
        let wants_time = call
            .biz
            .get("query_options")
            .and_then(Value::as_array)
            .is_some_and(|o| o.iter().any(|v| v == "gmt_refund_pay"));
        if wants_time {
            m.insert(
                "gmt_refund_pay".into(),
                json!(local_text(r.get("success_time"))),
            );
        }
        Ok(m)
    }

    async fn bill_url(&self, call: &Call, uri: &axum::http::Uri, headers: &HeaderMap) -> BizResult {
        if call.required("bill_type")? != "trade" {
            return Err(Biz::param("沙箱仅支持 bill_type=trade"));
        }
        let date = NaiveDate::parse_from_str(call.required("bill_date")?, "%Y-%m-%d")
            .map_err(|_| Biz::param("bill_date 格式错误，应为 yyyy-MM-dd"))?;
        let today = Utc::now().with_timezone(&Shanghai).date_naive();
        if date >= today {
            return Err(Biz::failed("isp.bill_not_exist", "账单不存在"));
        }
        let token = crypto::random_alnum(32);
        if let Ok(mut tokens) = self.0.bill_tokens.lock() {
            let t = now();
            tokens.retain(|_, (_, exp)| *exp >= t);
            tokens.insert(token.clone(), (date, t + BILL_URL_TTL_SECS));
        }
        let prefix = uri.path().strip_suffix("/gateway.do").unwrap_or("");
        let host = headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let mut m = Map::new();
        m.insert(
            "bill_download_url".into(),
            json!(format!("http://{host}{prefix}/sandbox/bill/{token}")),
        );
        Ok(m)
    }

    /// The bill records of a Shanghai calendar day, from the books.
    pub async fn bill_records(&self, date: NaiveDate) -> Result<Vec<BillRecord>, sqlx::Error> {
        let start = Shanghai
            .from_local_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default())
            .single()
            .map(|t| t.timestamp())
            .unwrap_or_default();
        let end = start + 86_400;
        let mut out = Vec::new();
        let trades = sqlx::query(
            "SELECT * FROM trades WHERE paid_at >= ?1 AND paid_at < ?2 ORDER BY paid_at, out_trade_no",
        )
        .bind(start)
        .bind(end)
        .fetch_all(&self.0.db)
        .await?;
        for r in &trades {
            let t = TradeRow::from_row(r);
            out.push(BillRecord {
                channel_trade_no: t.trade_no,
                out_trade_no: t.out_trade_no,
                out_refund_no: None,
                kind: BillKind::Payment,
                amount_minor: t.total,
                fee_minor: t.fee,
                status: "交易".into(),
                time: local(t.paid_at.unwrap_or_default()),
            });
        }
        let refunds = sqlx::query(
            "SELECT r.*, t.trade_no FROM refunds r JOIN trades t USING (out_trade_no)
             WHERE r.success_time >= ?1 AND r.success_time < ?2 ORDER BY r.success_time, r.out_request_no",
        )
        .bind(start)
        .bind(end)
        .fetch_all(&self.0.db)
        .await?;
        for r in &refunds {
            out.push(BillRecord {
                channel_trade_no: r.get("trade_no"),
                out_trade_no: r.get("out_trade_no"),
                out_refund_no: Some(r.get("out_request_no")),
                kind: BillKind::Refund,
                amount_minor: r.get("amount"),
                fee_minor: r.get("fee"),
                status: "退款".into(),
                time: local(r.get("success_time")),
            });
        }
        Ok(out)
    }

    /// The bill zip of a Shanghai calendar day, rendered from the books.
    pub async fn bill_for(&self, date: NaiveDate) -> anyhow::Result<Vec<u8>> {
        let records = self.bill_records(date).await?;
        let start = date.and_hms_opt(0, 0, 0).unwrap_or_default();
        let meta = TradeBillMeta {
            account: format!("{}0156", self.0.account.seller_id),
            start,
            end: start + chrono::Duration::days(1),
            exported_at: local(now()),
        };
        let detail = write_trade_bill(&meta, &records);
        let summary = write_trade_bill_summary(&meta, &records);
        let stem = format!("{}0156_{}", self.0.account.seller_id, date.format("%Y%m%d"));
        Ok(zip_trade_bill(&stem, &detail, &summary)?)
    }

    /// Sends the trade's `trade_status_sync` notification (with the refund's fields when
    /// `refund_request_no` is given) if the order has a `notify_url`.
    async fn notify_trade(
        &self,
        out_trade_no: &str,
        refund_request_no: Option<&str>,
    ) -> Result<(), Biz> {
        let Some(t) = self.load(out_trade_no).await? else {
            return Ok(());
        };
        let Some(url) = t.notify_url.clone() else {
            return Ok(());
        };
        let mut p: BTreeMap<String, String> = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            p.insert(k.to_string(), v);
        };
        put("notify_type", "trade_status_sync".into());
        put(
            "notify_id",
            format!("2026{}", crypto::random_alnum(30).to_ascii_lowercase()),
        );
        put("app_id", self.0.account.app_id.clone());
        put("auth_app_id", self.0.account.app_id.clone());
        put("charset", "utf-8".into());
        put("version", "1.0".into());
        put("sign_type", "RSA2".into());
        put("trade_no", t.trade_no.clone());
        put("out_trade_no", t.out_trade_no.clone());
        put("buyer_id", t.buyer_id.clone().unwrap_or_default());
        put("buyer_logon_id", "159******35".into());
        put("seller_id", self.0.account.seller_id.clone());
        put("seller_email", "sandbox_seller@alipay.com".into());
        put("trade_status", t.trade_status.clone());
        put("total_amount", yuan(t.total));
        put("receipt_amount", yuan(t.total));
        put("invoice_amount", yuan(t.total));
        put("buyer_pay_amount", yuan(t.total));
        put("point_amount", "0.00".into());
        put("subject", t.subject.clone());
        put("gmt_create", local_text(t.created_at));
        if let Some(paid) = t.paid_at {
            put("gmt_payment", local_text(paid));
        }
        if let Some(closed) = t.closed_at {
            put("gmt_close", local_text(closed));
        }
        if let Some(no) = refund_request_no {
            put("out_biz_no", no.to_string());
            put("refund_fee", yuan(t.refunded));
            put("gmt_refund", format!("{}.000", local_text(now())));
        }
        let signer = self.clone();
        let render = move || {
            let mut p = p.clone();
            p.insert("notify_time".into(), local_text(now()));
            p.remove("sign");
            let content =
                sign::sign_content(p.iter().map(|(k, v)| (k.as_str(), v.as_str())), false);
            let sig = signer.0.alipay.sign_base64(content.as_bytes());
            p.insert("sign".into(), sig);
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(p.iter())
                .finish()
                .into_bytes();
            (
                http::HeaderMap::new(),
                "application/x-www-form-urlencoded;charset=utf-8",
                body,
            )
        };
        self.0.notifier.send(Delivery {
            url,
            render: Box::new(render),
            accepted: |status, body| status == 200 && body.trim_ascii() == b"success",
        });
        Ok(())
    }
}

/// The bill zip a download URL points to: unsigned, valid [`BILL_URL_TTL_SECS`] after issue.
async fn bill_file(State(sb): State<AlipaySandbox>, UrlPath(token): UrlPath<String>) -> Response {
    let date =
        sb.0.bill_tokens
            .lock()
            .ok()
            .and_then(|t| t.get(&token).copied())
            .filter(|(_, exp)| *exp >= now())
            .map(|(d, _)| d);
    let Some(date) = date else {
        return (StatusCode::NOT_FOUND, "bill link invalid or expired").into_response();
    };
    match sb.bill_for(date).await {
        Ok(zip) => (
            [
                ("content-type", "application/oct-stream".to_string()),
                (
                    "content-disposition",
                    format!(
                        "attachment; filename={}_{}.csv.zip",
                        sb.0.account.seller_id,
                        date.format("%Y%m%d")
                    ),
                ),
            ],
            zip,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "alipay sandbox bill");
            (StatusCode::INTERNAL_SERVER_ERROR, "bill unavailable").into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
struct WalletPay {
    #[serde(default)]
    qr_code: Option<String>,
    #[serde(default)]
    trade_no: Option<String>,
    #[serde(default)]
    buyer_id: Option<String>,
}

fn tool_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"code": code, "message": message}))).into_response()
}

/// A payer pays a created order: scans a precreated `qr_code`, or confirms a JSAPI `trade_no`.
async fn wallet_pay(State(sb): State<AlipaySandbox>, Json(p): Json<WalletPay>) -> Response {
    let lookup = match (&p.qr_code, &p.trade_no) {
        (Some(q), _) => match q.strip_prefix("https://qr.alipay.com/bax0") {
            Some(token) => ("token", token.to_string()),
            None => {
                return tool_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_QR_CODE",
                    "not a sandbox qr_code",
                );
            }
        },
        (None, Some(t)) => ("trade_no", t.clone()),
        (None, None) => {
            return tool_error(
                StatusCode::BAD_REQUEST,
                "PARAM_ERROR",
                "qr_code or trade_no required",
            );
        }
    };
    let sql = format!("SELECT out_trade_no FROM trades WHERE {} = ?1", lookup.0);
    let no: Option<String> = match sqlx::query_scalar(&sql)
        .bind(&lookup.1)
        .fetch_optional(&sb.0.db)
        .await
    {
        Ok(n) => n,
        Err(e) => {
            return tool_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SYSTEM_ERROR",
                &e.to_string(),
            );
        }
    };
    let Some(no) = no else {
        return tool_error(StatusCode::NOT_FOUND, "TRADE_NOT_EXIST", "no such order");
    };
    let t = match sb.load(&no).await {
        Ok(Some(t)) => t,
        _ => return tool_error(StatusCode::NOT_FOUND, "TRADE_NOT_EXIST", "no such order"),
    };
    if !matches!(t.trade_status.as_str(), UNSCANNED | "WAIT_BUYER_PAY") || t.kind == "BARCODE" {
        return tool_error(
            StatusCode::CONFLICT,
            "TRADE_NOT_PAYABLE",
            &format!("order is {}", t.trade_status),
        );
    }
    match sb.mark_paid(&no, &t.trade_status, p.buyer_id).await {
        Ok(true) => match sb.load(&no).await {
            Ok(Some(t)) => Json(Value::Object(sb.trade_fields(&t))).into_response(),
            _ => tool_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SYSTEM_ERROR",
                "reload failed",
            ),
        },
        Ok(false) => tool_error(
            StatusCode::CONFLICT,
            "TRADE_NOT_PAYABLE",
            "order changed meanwhile",
        ),
        Err(e) => tool_error(StatusCode::INTERNAL_SERVER_ERROR, e.sub_code, &e.sub_msg),
    }
}

/// Re-sends a paid order's notification `times` times (duplicates on demand).
async fn resend(
    State(sb): State<AlipaySandbox>,
    UrlPath(no): UrlPath<String>,
    Query(t): Query<sandbox::Times>,
) -> Response {
    match sb.load(&no).await {
        Ok(Some(tr)) if tr.is_paid() => {
            for _ in 0..t.times.unwrap_or(1).min(100) {
                if let Err(e) = sb.notify_trade(&no, None).await {
                    return tool_error(StatusCode::INTERNAL_SERVER_ERROR, e.sub_code, &e.sub_msg);
                }
            }
            StatusCode::ACCEPTED.into_response()
        }
        Ok(_) => tool_error(
            StatusCode::NOT_FOUND,
            "TRADE_NOT_EXIST",
            "no paid order with this out_trade_no",
        ),
        Err(e) => tool_error(StatusCode::INTERNAL_SERVER_ERROR, e.sub_code, &e.sub_msg),
    }
}

async fn public_account(State(sb): State<AlipaySandbox>) -> Json<Value> {
    let a = &sb.0.account;
    Json(json!({
        "app_id": a.app_id, "seller_id": a.seller_id,
        "app_public_key": a.app_public_key, "alipay_public_key": a.alipay_public_key,
    }))
}

/// `GET /oauth2/publicAppAuthorize.htm`: the payer's Alipay authorises silently (`auth_base`)
/// and comes back to `redirect_uri` with a one-time `auth_code`. Every authorisation is a new
/// sandbox payer.
async fn oauth_authorize(
    State(sb): State<AlipaySandbox>,
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
    let app_id = &sb.0.account.app_id;
    if field("app_id") != app_id {
        return bad("app_id 无效");
    }
    if !matches!(field("scope"), "auth_base" | "auth_user") {
        return bad("scope 参数错误");
    }
    let Some(code) = sb.0.oauth.issue(app_id, buyer_id()) else {
        return bad("系统繁忙");
    };
    let params = [
        ("app_id", app_id.as_str()),
        ("source", "alipay_wallet"),
        ("scope", field("scope")),
        ("auth_code", code.as_str()),
        ("state", field("state")),
    ];
    match sandbox::oauth_redirect(field("redirect_uri"), &params) {
        Some(location) => sandbox::found(&location),
        None => bad("redirect_uri 参数错误"),
    }
}

/// `POST /sandbox/wallet`: stands in for the Alipay app's `tradePay` sheet of a JSAPI trade.
async fn wallet_stand_in(State(sb): State<AlipaySandbox>, body: Bytes) -> Response {
    let f = sandbox::form_fields(&body);
    let field = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    let fail = |status: StatusCode, m: &str| {
        sandbox::stand_in_page(
            status,
            "支付失败",
            &format!(
                "<h1>支付宝</h1><p id=\"error\">{}</p>",
                sandbox::escape_html(m)
            ),
        )
    };
    let Some(return_url) = sandbox::oauth_redirect(field("return_url"), &[]) else {
        return fail(StatusCode::BAD_REQUEST, "return_url 无效");
    };
    let no: Option<String> = match sqlx::query_scalar(
        "SELECT out_trade_no FROM trades WHERE trade_no = ?1 AND kind = 'JSAPI'",
    )
    .bind(field("tradeNO"))
    .fetch_optional(&sb.0.db)
    .await
    {
        Ok(n) => n,
        Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let t = match no {
        Some(no) => match sb.load(&no).await {
            Ok(Some(t)) => t,
            _ => return fail(StatusCode::NOT_FOUND, "交易不存在"),
        },
        None => return fail(StatusCode::NOT_FOUND, "交易不存在"),
    };
    match field("action") {
        "cancel" => return sandbox::found(&return_url),
        "pay" => {
            if t.trade_status != "WAIT_BUYER_PAY" {
                return fail(
                    StatusCode::CONFLICT,
                    &format!("交易状态为 {}，不能支付", t.trade_status),
                );
            }
            return match sb.mark_paid(&t.out_trade_no, &t.trade_status, None).await {
                Ok(true) => sandbox::found(&return_url),
                Ok(false) => fail(StatusCode::CONFLICT, "交易已变化，不能支付"),
                Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, &e.sub_msg),
            };
        }
        _ => {}
    }
    let hidden = sandbox::hidden_inputs(&[
        ("tradeNO", field("tradeNO")),
        ("return_url", field("return_url")),
    ]);
    let body = format!(
        "<h1>支付宝</h1><p id=\"description\">{subject}</p>\
<p class=\"amount\" id=\"total\">¥{amount}</p><p id=\"state\">{state}</p>\
<form method=\"post\">{hidden}<input type=\"hidden\" name=\"action\" value=\"pay\">\
<button id=\"pay\" type=\"submit\">确认付款 Pay</button></form>\
<form method=\"post\">{hidden}<input type=\"hidden\" name=\"action\" value=\"cancel\">\
<button id=\"cancel\" type=\"submit\">取消 Cancel</button></form>",
        subject = sandbox::escape_html(&t.subject),
        amount = yuan(t.total),
        state = sandbox::escape_html(&t.trade_status),
    );
    sandbox::stand_in_page(StatusCode::OK, "支付宝", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_codes() {
        assert!(is_alipay_code("281234567890123456"));
        assert!(is_alipay_code("2512345678901234"));
        assert!(is_alipay_code("301234567890123456789012"));
        assert!(!is_alipay_code("134567890123456789"));
        assert!(!is_alipay_code("281234567890"));
        assert!(!is_alipay_code("28123456789012345a"));
        assert!(!is_alipay_code("3112345678901234567"));
        assert!(!is_alipay_code(""));
    }

    #[test]
    fn trade_numbers_are_28_digits_date_first() {
        let n = trade_no();
        assert_eq!(n.len(), 28);
        assert!(n.bytes().all(|b| b.is_ascii_digit()));
        let today = Utc::now()
            .with_timezone(&Shanghai)
            .format("%Y%m%d")
            .to_string();
        assert!(n.starts_with(&format!("{today}22001")));
    }

    #[test]
    fn retry_schedule_is_alipays() {
        // 4m, 10m, 10m, 1h, 2h, 6h, 15h: 24h 24m in all.
        assert_eq!(
            RETRY_SCHEDULE_SECS,
            [
                4 * 60,
                10 * 60,
                10 * 60,
                3600,
                2 * 3600,
                6 * 3600,
                15 * 3600
            ]
        );
    }
}
