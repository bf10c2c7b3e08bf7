//! What every channel sandbox shares: fault injection, the notification sender with the channel's
//! retry schedule (time-compressed for tests), the payer behaviours chosen by the payment code, the
//! fee rule of the sandbox's bills, and the sandbox's own SQLite books.
//!
//! A sandbox is an `axum::Router` serving the channel's real paths; `paymux sandbox` serves all of
//! them and `paymux serve` mounts them under `/sandbox/<channel>` unless turned off.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::Semaphore;

/// Faults to inject, changeable at run time (`PUT <prefix>/sandbox/faults`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added latency, uniformly distributed in `[latency_min_ms, latency_max_ms]`.
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Percentage of API calls answered with HTTP 500 `SYSTEMERROR` before any processing.
    pub error_5xx_pct: f64,
    /// API paths answered with HTTP 500 `SYSTEMERROR` before any processing, every time: a request
    /// path ending with one of these (e.g. `/reverse`) — one operation of the channel down while
    /// the others answer.
    pub error_5xx_paths: Vec<String>,
    /// Percentage of API calls that are processed but whose answer never comes (the connection
    /// hangs for `hang_ms`, so the client times out: the outcome is unknown to it).
    pub timeout_pct: f64,
    pub hang_ms: u64,
    /// Percentage of notification deliveries dropped (each retry is a new chance).
    pub drop_notify_pct: f64,
    /// Percentage of notifications delivered twice.
    pub duplicate_notify_pct: f64,
    /// Extra random delay per delivery in `[0, notify_jitter_ms]`: notifications overtake each other.
    pub notify_jitter_ms: u64,
    /// Percentage of refunds the channel declines (WeChat and Alipay sandboxes), as the channel
    /// does: WeChat accepts the refund (`PROCESSING`) and it then ends `ABNORMAL`, announced by a
    /// `REFUND.ABNORMAL` notification and answered by the refund query; Alipay answers the refund
    /// at once with `40004` `ACQ.SELLER_BALANCE_NOT_ENOUGH`. Either way no money moves and the
    /// amount is refundable again.
    pub refund_fail_pct: f64,
    /// Seconds added to the clock the sandbox books successes with (payments and refunds: their
    /// `success_time`, hence their bill day). Signatures and freshness checks keep the real clock.
    /// Lets tests make "yesterday's" payments, whose bill can be downloaded (WeChat sandbox).
    pub clock_offset_secs: i64,
    /// Per `out_trade_no`: how that payment's line in the bill differs from the books (WeChat
    /// sandbox): a changed amount, a fee other than `fee_rate_bps`, or a booking time moved (so the
    /// line falls on another day — cross-midnight timing).
    pub bill_overrides: std::collections::BTreeMap<String, BillOverride>,
}

/// How one payment's bill line differs from the sandbox's books (see [`Faults::bill_overrides`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillOverride {
    /// The order amount the bill lists, in fen.
    pub amount_fen: Option<i64>,
    /// The fee the bill lists, in fen.
    pub fee_fen: Option<i64>,
    /// Seconds added to the line's time (and so to the day whose bill lists it).
    pub shift_secs: i64,
}

/// Settings of a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxOptions {
    /// Where keys, accounts and the books live.
    pub data_dir: PathBuf,
    /// The fee the sandbox charges, in basis points of the order amount (60 = 0.6%).
    pub fee_rate_bps: u32,
    /// Divides every channel delay (notification retry schedule, password wait): 1 = real time.
    pub time_compression: u32,
    /// How long a payer "enters the password" for `USERPAYING` codes, in real seconds.
    pub password_wait_secs: u64,
    /// Faults at start-up.
    pub faults: Faults,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("paymux-data/sandbox"),
            fee_rate_bps: 60,
            time_compression: 1,
            password_wait_secs: 10,
            faults: Faults::default(),
        }
    }
}

impl SandboxOptions {
    pub fn compress(&self, d: Duration) -> Duration {
        d / self.time_compression.max(1)
    }
}

/// Shared state of the fault injector.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<RwLock<Faults>>);

impl FaultSwitch {
    pub fn new(f: Faults) -> Self {
        Self(Arc::new(RwLock::new(f)))
    }
    pub fn get(&self) -> Faults {
        self.0.read().map(|f| f.clone()).unwrap_or_default()
    }
    pub fn set(&self, f: Faults) {
        if let Ok(mut g) = self.0.write() {
            *g = f;
        }
    }
}

/// True with probability `pct` percent.
pub fn chance(pct: f64) -> bool {
    pct > 0.0 && rand::thread_rng().gen_range(0.0..100.0) < pct
}

/// Middleware applying latency, 5xx and timeouts to API calls. `error` renders the channel's own
/// 5xx body.
pub async fn inject_faults(
    State((faults, error)): State<(FaultSwitch, fn() -> Response)>,
    req: Request,
    next: Next,
) -> Response {
    let f = faults.get();
    if f.latency_max_ms > 0 {
        let ms =
            rand::thread_rng().gen_range(f.latency_min_ms.min(f.latency_max_ms)..=f.latency_max_ms);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let path = req.uri().path();
    if chance(f.error_5xx_pct) || f.error_5xx_paths.iter().any(|p| path.ends_with(p.as_str())) {
        return error();
    }
    let resp = next.run(req).await;
    if chance(f.timeout_pct) {
        tokio::time::sleep(Duration::from_millis(f.hang_ms.max(1))).await;
        return (http::StatusCode::GATEWAY_TIMEOUT, "").into_response();
    }
    resp
}

/// How a sandbox payer behaves, chosen by the last four digits of the payment code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayerBehaviour {
    /// Any other code: paid at once.
    Instant,
    /// `…1001`: the payer must enter a password; paid after the password wait.
    PasswordThenPaid,
    /// `…1002`: the payer must enter a password and never does; the trade fails after the wait
    /// (and can be reversed meanwhile).
    PasswordThenTimeout,
    /// `…1003`: insufficient balance.
    InsufficientFunds,
    /// `…1004`: the code is invalid or expired.
    InvalidCode,
    /// `…1005`: the channel fails with a system error after the money moved (the caller must query).
    SystemErrorButPaid,
}

impl PayerBehaviour {
    pub fn of_code(code: &str) -> Self {
        match code.get(code.len().saturating_sub(4)..) {
            Some("1001") => Self::PasswordThenPaid,
            Some("1002") => Self::PasswordThenTimeout,
            Some("1003") => Self::InsufficientFunds,
            Some("1004") => Self::InvalidCode,
            Some("1005") => Self::SystemErrorButPaid,
            _ => Self::Instant,
        }
    }
}

/// The sandbox fee of a payment: `amount × bps / 10000` fen, rounded half up.
pub fn fee_fen(amount_fen: i64, bps: u32) -> i64 {
    let n = i128::from(amount_fen) * i128::from(bps);
    ((n + 5_000) / 10_000) as i64
}

/// The fee returned by a refund: the cumulative proportional share of the payment's fee
/// (`round(fee × refunded_after / total) − round(fee × refunded_before / total)`), so that a full
/// refund returns exactly the fee and partial refunds never over-return.
pub fn refund_fee_fen(fee: i64, total: i64, refunded_before: i64, refund: i64) -> i64 {
    if total <= 0 {
        return 0;
    }
    let share = |r: i64| {
        ((i128::from(fee) * i128::from(r) * 2 + i128::from(total)) / (2 * i128::from(total))) as i64
    };
    share(refunded_before + refund) - share(refunded_before)
}

/// A notification to deliver: re-rendered (re-signed) at every attempt.
pub struct Delivery {
    pub url: String,
    /// Renders `(headers, content type, body)` for one attempt.
    pub render: Box<dyn Fn() -> (http::HeaderMap, &'static str, Vec<u8>) + Send + Sync>,
    /// Whether the receiver's answer acknowledges the notification.
    pub accepted: fn(u16, &[u8]) -> bool,
}

/// Sends notifications with the channel's retry schedule, bounded in concurrency.
#[derive(Clone)]
pub struct Notifier {
    client: reqwest::Client,
    schedule: Arc<Vec<Duration>>,
    compression: u32,
    faults: FaultSwitch,
    permits: Arc<Semaphore>,
    stats: Arc<NotifyStats>,
}

/// Counters of the notifier, for tests and operators.
#[derive(Debug, Default)]
pub struct NotifyStats {
    pub attempts: std::sync::atomic::AtomicU64,
    pub acknowledged: std::sync::atomic::AtomicU64,
    pub dropped: std::sync::atomic::AtomicU64,
    pub abandoned: std::sync::atomic::AtomicU64,
}

impl Notifier {
    pub fn new(schedule: Vec<Duration>, compression: u32, faults: FaultSwitch) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("notification HTTP client");
        Self {
            client,
            schedule: Arc::new(schedule),
            compression: compression.max(1),
            faults,
            permits: Arc::new(Semaphore::new(1024)),
            stats: Arc::new(NotifyStats::default()),
        }
    }

    pub fn stats(&self) -> &NotifyStats {
        &self.stats
    }

    /// Delivers until acknowledged or the schedule is exhausted (in the background).
    pub fn send(&self, delivery: Delivery) {
        let this = self.clone();
        let delivery = Arc::new(delivery);
        tokio::spawn(async move {
            let first = this.attempt_with_faults(&delivery).await;
            if first {
                return;
            }
            for delay in this.schedule.iter() {
                tokio::time::sleep(*delay / this.compression).await;
                if this.attempt_with_faults(&delivery).await {
                    return;
                }
            }
            this.stats
                .abandoned
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
    }

    async fn attempt_with_faults(&self, d: &Arc<Delivery>) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let f = self.faults.get();
        if f.notify_jitter_ms > 0 {
            let ms = rand::thread_rng().gen_range(0..=f.notify_jitter_ms);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if chance(f.drop_notify_pct) {
            self.stats.dropped.fetch_add(1, Relaxed);
            return false;
        }
        if chance(f.duplicate_notify_pct) {
            let this = self.clone();
            let d2 = d.clone();
            tokio::spawn(async move {
                this.attempt(&d2).await;
            });
        }
        self.attempt(d).await
    }

    /// One delivery attempt, now.
    pub async fn attempt(&self, d: &Delivery) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        self.stats.attempts.fetch_add(1, Relaxed);
        let (headers, content_type, body) = (d.render)();
        let resp = self
            .client
            .post(&d.url)
            .headers(headers)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await;
        let ok = match resp {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.bytes().await.unwrap_or_default();
                (d.accepted)(status, &body)
            }
            Err(_) => false,
        };
        if ok {
            self.stats.acknowledged.fetch_add(1, Relaxed);
        }
        ok
    }
}

/// Opens (creating) a sandbox's SQLite books.
pub async fn open_books(path: &Path) -> Result<SqlitePool, sqlx::Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
    }
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(8)
        .test_before_acquire(false)
        .connect_with(opts)
        .await
}

/// Reads a file if it exists, else creates it with `make()`; keeps secrets private (mode 0600).
pub fn load_or_create(path: &Path, make: impl FnOnce() -> String) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let text = make();
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &text)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            }
            std::fs::rename(&tmp, path)?;
            Ok(text)
        }
        Err(e) => Err(e),
    }
}

/// A random string of decimal digits.
pub fn digits(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

/// How long an OAuth code of a sandbox's authorize redirect can be exchanged (once).
pub const OAUTH_CODE_TTL: Duration = Duration::from_secs(300);
/// Most OAuth codes a sandbox keeps outstanding (the oldest expired ones are dropped first).
pub const OAUTH_CODES_MAX: usize = 10_000;

/// The one-time codes of a sandbox's OAuth authorize redirect: each names the payer whose wallet
/// app authorised, for one app, until redeemed or [`OAUTH_CODE_TTL`] has passed.
#[derive(Debug, Default)]
pub struct OAuthCodes(std::sync::Mutex<std::collections::HashMap<String, OAuthGrant>>);

#[derive(Debug)]
struct OAuthGrant {
    app_id: String,
    payer_id: String,
    issued: std::time::Instant,
}

impl OAuthCodes {
    /// A fresh code for `payer_id` at `app_id`; `None` when too many are outstanding.
    pub fn issue(&self, app_id: &str, payer_id: String) -> Option<String> {
        let mut codes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if codes.len() >= OAUTH_CODES_MAX {
            codes.retain(|_, g| g.issued.elapsed() < OAUTH_CODE_TTL);
            if codes.len() >= OAUTH_CODES_MAX {
                return None;
            }
        }
        let code = crate::crypto::random_alnum(32);
        codes.insert(
            code.clone(),
            OAuthGrant {
                app_id: app_id.to_string(),
                payer_id,
                issued: std::time::Instant::now(),
            },
        );
        Some(code)
    }

    /// The payer of a code issued for `app_id`, once: a redeemed, expired, unknown or other app's
    /// code is `None`.
    pub fn redeem(&self, app_id: &str, code: &str) -> Option<String> {
        let mut codes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let grant = codes.remove(code)?;
        (grant.app_id == app_id && grant.issued.elapsed() < OAUTH_CODE_TTL)
            .then_some(grant.payer_id)
    }
}

/// `redirect_uri` with the authorisation's query parameters appended; `None` unless it is an
/// absolute http(s) URL.
pub fn oauth_redirect(redirect_uri: &str, params: &[(&str, &str)]) -> Option<String> {
    let mut url = reqwest::Url::parse(redirect_uri).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    if !params.is_empty() {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    Some(url.to_string())
}

/// A `302 Found` to `location` (OAuth redirects).
pub fn found(location: &str) -> Response {
    match axum::http::HeaderValue::from_str(location) {
        Ok(v) => (
            axum::http::StatusCode::FOUND,
            [(axum::http::header::LOCATION, v)],
        )
            .into_response(),
        Err(_) => axum::http::StatusCode::BAD_REQUEST.into_response(),
    }
}

/// Form fields (`application/x-www-form-urlencoded` body or query string) by name; a repeated
/// name keeps its first value.
pub fn form_fields(bytes: &[u8]) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    for (k, v) in form_urlencoded::parse(bytes) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    out
}

/// Text safe inside HTML element content and quoted attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A wallet stand-in page: small, no external assets, for a narrow phone screen.
pub fn stand_in_page(status: axum::http::StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{title}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:auto;padding:1.25rem}}\
.amount{{font-size:2.25rem;font-weight:700}}button{{font-size:1.1rem;padding:.75rem;width:100%;margin:.4rem 0}}\
.sandbox{{color:#a60;font-size:.85rem}}</style></head><body>\
<p class=\"sandbox\">SANDBOX · 沙箱钱包（代替钱包应用）</p>{body}</body></html>",
        title = escape_html(title),
    );
    (
        status,
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// Hidden inputs carrying form fields on to the next step.
pub fn hidden_inputs(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape_html(k),
                escape_html(v)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fees_are_exact() {
        assert_eq!(fee_fen(10_000, 60), 60);
        assert_eq!(fee_fen(1, 60), 0);
        assert_eq!(fee_fen(84, 60), 1); // 0.504 → 1
        assert_eq!(fee_fen(83, 60), 0); // 0.498 → 0
        // Partial refunds return the fee proportionally and add up to the whole fee.
        let fee = fee_fen(1001, 60); // 6
        let mut before = 0;
        let mut returned = 0;
        for part in [333, 333, 335] {
            returned += refund_fee_fen(fee, 1001, before, part);
            before += part;
        }
        assert_eq!(returned, fee);
    }

    #[test]
    fn behaviours_by_code_suffix() {
        assert_eq!(
            PayerBehaviour::of_code("134567890123451001"),
            PayerBehaviour::PasswordThenPaid
        );
        assert_eq!(
            PayerBehaviour::of_code("134567890123451004"),
            PayerBehaviour::InvalidCode
        );
        assert_eq!(
            PayerBehaviour::of_code("134567890123456789"),
            PayerBehaviour::Instant
        );
        assert_eq!(PayerBehaviour::of_code(""), PayerBehaviour::Instant);
    }
}

/// Every channel sandbox, started together over one data directory.
#[derive(Clone)]
pub struct Sandboxes {
    pub wechat: crate::wechat::sandbox::WechatSandbox,
    pub alipay: crate::alipay::sandbox::AlipaySandbox,
    pub unionpay: crate::unionpay::sandbox::UnionPaySandbox,
}

impl Sandboxes {
    pub async fn start(opts: SandboxOptions) -> anyhow::Result<Self> {
        Ok(Self {
            wechat: crate::wechat::sandbox::WechatSandbox::start(opts.clone()).await?,
            alipay: crate::alipay::sandbox::AlipaySandbox::start(opts.clone()).await?,
            unionpay: crate::unionpay::sandbox::UnionPaySandbox::start(opts.clone()).await?,
        })
    }

    /// All sandboxes, each under its channel's name: `/wechat/v3/…`, `/alipay/gateway.do`,
    /// `/unionpay/gateway/api/…`.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .nest("/wechat", self.wechat.router())
            .nest("/alipay", self.alipay.router())
            .nest("/unionpay", self.unionpay.router())
    }

    /// `(channel, path prefix)` of every sandbox, for start-up messages.
    pub fn mounts(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("WeChat Pay v3", "/wechat"),
            ("Alipay", "/alipay"),
            ("UnionPay QR", "/unionpay"),
        ]
    }
}

/// Opens (creating) a sandbox's books and applies its schema (`;`-separated statements).
pub async fn open_books_with_schema(path: &Path, schema: &str) -> Result<SqlitePool, sqlx::Error> {
    let db = open_books(path).await?;
    for stmt in schema.split(';').filter(|s| !s.trim().is_empty()) {
        sqlx::query(stmt).execute(&db).await?;
    }
    Ok(db)
}

/// A notifier with a channel's retry schedule (seconds after the first attempt).
pub fn notifier(schedule_secs: &[u64], opts: &SandboxOptions, faults: &FaultSwitch) -> Notifier {
    Notifier::new(
        schedule_secs
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect(),
        opts.time_compression,
        faults.clone(),
    )
}

/// `GET`/`PUT /sandbox/faults` for a sandbox's fault switch, to merge into its router.
pub fn faults_router<S: Clone + Send + Sync + 'static>(faults: FaultSwitch) -> axum::Router<S> {
    async fn get_faults(State(f): State<FaultSwitch>) -> axum::Json<Faults> {
        axum::Json(f.get())
    }
    async fn put_faults(
        State(f): State<FaultSwitch>,
        axum::Json(new): axum::Json<Faults>,
    ) -> axum::Json<Faults> {
        f.set(new);
        axum::Json(f.get())
    }
    axum::Router::new()
        .route(
            "/sandbox/faults",
            axum::routing::get(get_faults).put(put_faults),
        )
        .with_state(faults)
}

/// `?times=N` of the notification-resend endpoints.
#[derive(Debug, Deserialize)]
pub struct Times {
    pub times: Option<u32>,
}
