//! Merchant webhooks: a transactional outbox and its dispatcher.
//!
//! - **Outbox.** When a payment or refund reaches a final state, the write batcher inserts one
//!   `webhook_outbox` row per event in the SAME transaction as the compare-and-set that won
//!   ([`enqueue_pg`] / [`enqueue_sqlite`], a multi-row insert per batch). Payments without a
//!   `notify_url` get no rows. An event is therefore never lost nor sent for a change that was
//!   rolled back.
//! - **Dispatcher** ([`run`]). Claims due rows in batches (on PostgreSQL with
//!   `FOR UPDATE SKIP LOCKED`, so every node may run one), leasing them by moving their
//!   `next_attempt_at_us` past the request timeout, POSTs each payload to the payment's `notify_url`
//!   with `Paymux-Event-Id` and `Paymux-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key_secret,
//!   t + "." + body)>` (the merchant's current key), with bounded concurrency and a per-request
//!   timeout. A 2xx answer is delivery; anything else is retried after [`RETRY_SCHEDULE_S`]
//!   (scaled by `webhook_retry_schedule_scale`); after the last attempt the event stays
//!   undelivered until an operator resends it ([`resend`], `paymux webhook resend`). Every attempt
//!   is logged in `webhook_deliveries`.
//! - **API.** `GET /v1/webhooks?payment_id=…` lists a merchant's events with their delivery state.

use crate::db::BeginWrite;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use paymux_model::{PaymentId, PaymentStatus, RefundStatus};
use serde::{Deserialize, Serialize};
use sqlx::QueryBuilder;
use tokio::sync::watch;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Merchant;
use crate::crypto::SecretBox;
use crate::db::{Db, now_us, us_to_datetime};
use crate::error::{ApiError, ApiResult};
use crate::payments::model::{PAYMENT_COLUMNS, Payment, PaymentRow};
use crate::refunds::{REFUND_COLUMNS, Refund, RefundRow};

/// Delay before each attempt, counted from the previous failure (the first attempt is at once):
/// 0 s, 15 s, 1 min, 5 min, 15 min, 1 h, 3 h, 6 h, 12 h, 24 h — ten attempts over about two days.
pub const RETRY_SCHEDULE_S: [u64; 10] = [0, 15, 60, 300, 900, 3600, 10_800, 21_600, 43_200, 86_400];

/// What caused an event, as the batcher saw it win its compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    Payment(Uuid, &'static str),
    Refund(Uuid, &'static str),
}

/// The event type of a payment that reached `to`, when merchants are told about it.
pub fn payment_event(to: PaymentStatus) -> Option<&'static str> {
    match to {
        PaymentStatus::Succeeded => Some("payment.succeeded"),
        PaymentStatus::Failed => Some("payment.failed"),
        PaymentStatus::Closed => Some("payment.closed"),
        _ => None,
    }
}

pub fn refund_event(to: RefundStatus) -> Option<&'static str> {
    match to {
        RefundStatus::Succeeded => Some("refund.succeeded"),
        RefundStatus::Failed => Some("refund.failed"),
        _ => None,
    }
}

/// An outbox row to insert.
struct NewEvent {
    id: Uuid,
    merchant_id: Uuid,
    payment_id: Uuid,
    event_type: &'static str,
    notify_url: String,
    payload: String,
}

fn build_events(
    pending: &[Pending],
    payments: &HashMap<Uuid, PaymentRow>,
    refunds: &HashMap<Uuid, RefundRow>,
    now_us: i64,
) -> Vec<NewEvent> {
    let created_at = us_to_datetime(now_us);
    let mut out = Vec::new();
    for p in pending {
        let (payment, event_type, data) = match p {
            Pending::Payment(id, t) => {
                let Some(row) = payments.get(id) else {
                    continue;
                };
                (row, *t, serde_json::to_value(Payment::from(row)))
            }
            Pending::Refund(id, t) => {
                let Some(refund) = refunds.get(id) else {
                    continue;
                };
                let Some(row) = payments.get(&refund.payment_id) else {
                    continue;
                };
                (row, *t, serde_json::to_value(Refund::from(refund)))
            }
        };
        let (Some(url), Ok(data)) = (&payment.notify_url, data) else {
            continue;
        };
        let id = Uuid::now_v7();
        let payload = serde_json::json!({
            "id": id,
            "type": event_type,
            "created_at": created_at,
            "data": data,
        });
        out.push(NewEvent {
            id,
            merchant_id: payment.merchant_id,
            payment_id: payment.id,
            event_type,
            notify_url: url.clone(),
            payload: payload.to_string(),
        });
    }
    out
}

/// Rows per statement (SQLite allows 32,766 parameters; an outbox row binds 9).
const ROWS_PER_STATEMENT: usize = 1000;

macro_rules! enqueue_sql {
    ($name:ident, $conn:ty, $db:ty) => {
        /// Writes the outbox rows of a batch's winning transitions, in the batch's transaction. The
        /// payments and refunds are read back after their update, so the payload is what the API shows.
        pub async fn $name(conn: &mut $conn, pending: &[Pending], now_us: i64) -> sqlx::Result<()> {
            if pending.is_empty() {
                return Ok(());
            }
            let refund_ids: Vec<Uuid> = pending
                .iter()
                .filter_map(|p| match p {
                    Pending::Refund(id, _) => Some(*id),
                    _ => None,
                })
                .collect();
            let mut refunds: HashMap<Uuid, RefundRow> = HashMap::new();
            for chunk in refund_ids.chunks(ROWS_PER_STATEMENT) {
                let mut qb: QueryBuilder<$db> =
                    QueryBuilder::new(format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE id IN ("));
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(")");
                for r in qb.build_query_as::<RefundRow>().fetch_all(&mut *conn).await? {
                    refunds.insert(r.id, r);
                }
            }
            let mut payment_ids: Vec<Uuid> = pending
                .iter()
                .filter_map(|p| match p {
                    Pending::Payment(id, _) => Some(*id),
                    _ => None,
                })
                .chain(refunds.values().map(|r| r.payment_id))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            payment_ids.sort();
            let mut payments: HashMap<Uuid, PaymentRow> = HashMap::new();
            for chunk in payment_ids.chunks(ROWS_PER_STATEMENT) {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments WHERE notify_url IS NOT NULL AND id IN ("
                ));
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(")");
                for r in qb.build_query_as::<PaymentRow>().fetch_all(&mut *conn).await? {
                    payments.insert(r.id, r);
                }
            }
            let events = build_events(pending, &payments, &refunds, now_us);
            for chunk in events.chunks(ROWS_PER_STATEMENT) {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "INSERT INTO webhook_outbox (id, merchant_id, payment_id, event_type, notify_url, payload, \
                     created_at_us, next_attempt_at_us, attempts) ",
                );
                qb.push_values(chunk, |mut b, e| {
                    b.push_bind(e.id)
                        .push_bind(e.merchant_id)
                        .push_bind(e.payment_id)
                        .push_bind(e.event_type)
                        .push_bind(&e.notify_url)
                        .push_bind(&e.payload)
                        .push_bind(now_us)
                        .push_bind(now_us)
                        .push_bind(0i32);
                });
                qb.build().execute(&mut *conn).await?;
            }
            if !events.is_empty() {
                metrics::counter!("paymux_webhook_events_total").increment(events.len() as u64);
            }
            Ok(())
        }
    };
}

enqueue_sql!(enqueue_pg, sqlx::PgConnection, sqlx::Postgres);
enqueue_sql!(enqueue_sqlite, sqlx::SqliteConnection, sqlx::Sqlite);

// ---------------------------------------------------------------------------------------------
// Dispatcher

#[derive(Debug, Clone, Copy)]
pub struct DispatcherConfig {
    pub poll_interval: Duration,
    pub batch_max: u32,
    pub concurrency: usize,
    pub timeout: Duration,
    /// Multiplies [`RETRY_SCHEDULE_S`] (tests compress it).
    pub retry_scale: f64,
    /// Deliver to loopback, private and link-local addresses too.
    pub allow_private_targets: bool,
}

impl DispatcherConfig {
    pub fn from_config(c: &crate::config::Config) -> DispatcherConfig {
        DispatcherConfig {
            poll_interval: Duration::from_millis(c.webhook_poll_interval_ms.max(10)),
            batch_max: c.webhook_batch_max.max(1),
            concurrency: c.webhook_concurrency.max(1),
            timeout: Duration::from_millis(c.webhook_timeout_ms.max(1)),
            retry_scale: if c.webhook_retry_schedule_scale.is_finite() {
                c.webhook_retry_schedule_scale.max(0.0)
            } else {
                1.0
            },
            allow_private_targets: c.webhook_allow_private_targets,
        }
    }

    /// Deliveries in flight to one receiver (`host:port`) at most: a quarter of the slots.
    pub fn per_host(&self) -> usize {
        (self.concurrency / 4).max(1)
    }

    /// When the next attempt is due after `attempts_done` failed ones; `None`: give up.
    pub fn next_attempt_at(&self, attempts_done: i32, now_us: i64) -> Option<i64> {
        let delay_s = *RETRY_SCHEDULE_S.get(usize::try_from(attempts_done).ok()?)?;
        Some(now_us + (delay_s as f64 * 1e6 * self.retry_scale) as i64)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    merchant_id: Uuid,
    notify_url: String,
    payload: String,
    attempts: i32,
    /// The claim's lease (`next_attempt_at_us` as claimed): a failed attempt is recorded only while
    /// the row still holds it, so a row claimed again meanwhile (or sent again by `resend`) is not
    /// overwritten.
    lease_us: i64,
}

/// The result of one attempt.
struct Attempt {
    status: Option<u16>,
    error: Option<String>,
    at_us: i64,
    duration_ms: i64,
}

impl Attempt {
    fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// `t=<unix seconds>,v1=<lowercase hex HMAC-SHA256(secret, t + "." + body)>`.
pub fn signature_header(secret: &[u8], t: i64, body: &[u8]) -> String {
    signatures_header(&[secret], t, body)
}

/// The header with one `v1=` per secret, newest key first (during a key rotation's grace the
/// receiver verifies whichever of its keys matches).
pub fn signatures_header(secrets: &[&[u8]], t: i64, body: &[u8]) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(t.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        header.push_str(",v1=");
        header.push_str(&hex::encode(ctx.sign().as_ref()));
    }
    header
}

struct Dispatcher {
    db: Db,
    secrets: Arc<SecretBox>,
    config: DispatcherConfig,
    http: reqwest::Client,
    keys: moka::future::Cache<Uuid, Option<Vec<Vec<u8>>>>,
}

/// Delivers due events until `stop` changes. Safe on every node at once (claims are leases).
pub async fn run(
    db: Db,
    secrets: Arc<SecretBox>,
    config: DispatcherConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("paymux-webhooks/", env!("CARGO_PKG_VERSION")));
    if !config.allow_private_targets {
        // Names are resolved to public addresses only, at connection time (no rebinding between a
        // check and the request); literal addresses are checked before sending. No proxy from the
        // environment either: a proxy would resolve the names itself.
        builder = builder.dns_resolver(Arc::new(PublicOnly)).no_proxy();
    }
    let http = match builder.build() {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(error = %err, "webhook dispatcher cannot build its HTTP client");
            return;
        }
    };
    let d = Arc::new(Dispatcher {
        db,
        secrets,
        config,
        http,
        keys: moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(10))
            .build(),
    });
    // A slot per delivery in flight. Events are claimed only for free slots, each delivery runs on
    // its own, and one receiver (a host) holds at most `per_host` slots: a merchant endpoint that
    // hangs until the timeout delays its own events, not every merchant's.
    let slots = Arc::new(tokio::sync::Semaphore::new(config.concurrency));
    let per_host = config.per_host();
    let hosts: Arc<std::sync::Mutex<HashMap<String, usize>>> = Arc::default();
    let freed = Arc::new(tokio::sync::Notify::new());
    let mut ticker = tokio::time::interval(config.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = freed.notified() => {}
            _ = stop.changed() => break,
        }
        while !*stop.borrow() {
            let free = slots.available_permits().min(config.batch_max as usize);
            if free == 0 {
                break;
            }
            let rows = match d.claim(free).await {
                Ok(rows) => rows,
                Err(err) => {
                    tracing::warn!(error = %err, "claiming webhook events failed; retrying next tick");
                    break;
                }
            };
            let claimed = rows.len();
            let mut deferred = Vec::new();
            for row in rows {
                let host = host_of(&row.notify_url);
                let permit = {
                    let mut busy = hosts.lock().unwrap_or_else(|e| e.into_inner());
                    let n = busy.entry(host.clone()).or_default();
                    match slots.clone().try_acquire_owned() {
                        Ok(permit) if *n < per_host => {
                            *n += 1;
                            permit
                        }
                        _ => {
                            deferred.push(row);
                            continue;
                        }
                    }
                };
                let (d, hosts, slots, freed) =
                    (d.clone(), hosts.clone(), slots.clone(), freed.clone());
                tokio::spawn(async move {
                    d.deliver(row).await;
                    {
                        let mut busy = hosts.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(n) = busy.get_mut(&host) {
                            *n -= 1;
                            if *n == 0 {
                                busy.remove(&host);
                            }
                        }
                    }
                    drop(permit);
                    // Claim again once half the slots are free, without waiting for the tick.
                    if slots.available_permits() * 2 >= d.config.concurrency {
                        freed.notify_one();
                    }
                });
            }
            if !deferred.is_empty() {
                d.defer(&deferred).await;
            }
            if claimed < free {
                break;
            }
        }
    }
    // Stopping: the deliveries in flight end (at most the timeout) and are recorded.
    let _ = tokio::time::timeout(
        config.timeout + Duration::from_secs(5),
        slots.acquire_many(u32::try_from(config.concurrency).unwrap_or(u32::MAX)),
    )
    .await;
}

/// The receiver an event goes to (`host:port`), for the per-host limit.
fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_ascii_lowercase();
            Some(format!("{host}:{}", u.port_or_known_default().unwrap_or(0)))
        })
        .unwrap_or_else(|| url.to_string())
}

impl Dispatcher {
    async fn claim(&self, limit: usize) -> sqlx::Result<Vec<Claimed>> {
        const SQL: &str = "UPDATE webhook_outbox SET next_attempt_at_us = $1 WHERE id IN \
            (SELECT id FROM webhook_outbox WHERE delivered_at_us IS NULL AND next_attempt_at_us <= $2 \
             ORDER BY next_attempt_at_us LIMIT $3) \
            RETURNING id, merchant_id, notify_url, payload, attempts, next_attempt_at_us AS lease_us";
        let now = now_us();
        // The lease: a node that dies mid-delivery leaves the row due again after it. A row is
        // claimed only for a free slot and sent at once, so it covers one delivery.
        let lease_until = now
            + i64::try_from(self.config.timeout.as_micros()).unwrap_or(i64::MAX / 4)
            + 30_000_000;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match &self.db {
            Db::Sqlite(pool) => {
                sqlx::query_as(SQL)
                    .bind(lease_until)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
            }
            Db::Postgres(pool) => {
                let sql = SQL.replace("LIMIT $3)", "LIMIT $3 FOR UPDATE SKIP LOCKED)");
                sqlx::query_as(&sql)
                    .bind(lease_until)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
            }
        }
    }

    /// Gives back claimed events whose receiver already has all its slots, in one statement: due
    /// again after about one delivery's time (not an attempt; a row claimed again or resent
    /// meanwhile no longer holds the claim's lease and is left alone).
    async fn defer(&self, rows: &[Claimed]) {
        let due = now_us() + i64::try_from(self.config.timeout.as_micros()).unwrap_or(0);
        macro_rules! run {
            ($pool:expr, $backend:ty) => {{
                let mut qb = QueryBuilder::<$backend>::new(
                    "UPDATE webhook_outbox SET next_attempt_at_us = ",
                );
                qb.push_bind(due)
                    .push(" WHERE delivered_at_us IS NULL AND ");
                let mut any = qb.separated(" OR ");
                for row in rows {
                    any.push("(id = ")
                        .push_bind_unseparated(row.id)
                        .push_unseparated(" AND next_attempt_at_us = ")
                        .push_bind_unseparated(row.lease_us)
                        .push_unseparated(")");
                }
                qb.build().execute($pool).await.map(drop)
            }};
        }
        let done = match &self.db {
            Db::Sqlite(pool) => run!(pool, sqlx::Sqlite),
            Db::Postgres(pool) => run!(pool, sqlx::Postgres),
        };
        if let Err(err) = done {
            tracing::warn!(error = %err, events = rows.len(), "deferring webhook events; they are due again after their lease");
        }
    }

    /// The merchant's working key secrets, newest first, decrypted (several during a rotation's
    /// grace: the event is signed with each); `None` without any. Cached briefly.
    async fn secret(&self, merchant_id: Uuid) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
        if let Some(hit) = self.keys.get(&merchant_id).await {
            return Ok(hit);
        }
        let sql = format!(
            "SELECT k.key_id, k.secret_nonce, k.secret_ciphertext FROM merchant_keys k \
             WHERE k.merchant_id = $1 AND {} ORDER BY k.created_at_us DESC LIMIT 4",
            crate::merchants::KEY_WORKS
        );
        let now = now_us();
        let rows: Vec<(String, Vec<u8>, Vec<u8>)> = match &self.db {
            Db::Sqlite(pool) => {
                sqlx::query_as(&sql)
                    .bind(merchant_id)
                    .bind(now)
                    .fetch_all(pool)
                    .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_as(&sql)
                    .bind(merchant_id)
                    .bind(now)
                    .fetch_all(pool)
                    .await?
            }
        };
        let secrets = rows
            .iter()
            .map(|(key_id, nonce, ciphertext)| {
                self.secrets.open(nonce, ciphertext, key_id.as_bytes())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let secrets = (!secrets.is_empty()).then_some(secrets);
        self.keys.insert(merchant_id, secrets.clone()).await;
        Ok(secrets)
    }

    async fn deliver(&self, row: Claimed) {
        let started = Instant::now();
        let at_us = now_us();
        let (status, error) = match self.secret(row.merchant_id).await {
            Ok(Some(_))
                if !self.config.allow_private_targets && !public_target(&row.notify_url) =>
            {
                (None, Some(NOT_PUBLIC.to_string()))
            }
            Ok(Some(secret)) => {
                let t = chrono::Utc::now().timestamp();
                let result = self
                    .http
                    .post(&row.notify_url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("Paymux-Event-Id", row.id.to_string())
                    .header(
                        "Paymux-Signature",
                        signatures_header(
                            &secret.iter().map(Vec::as_slice).collect::<Vec<_>>(),
                            t,
                            row.payload.as_bytes(),
                        ),
                    )
                    .body(row.payload.clone())
                    .send()
                    .await;
                match result {
                    Ok(resp) => {
                        let status = resp.status();
                        // Read a bounded part of the answer (so a short one leaves the connection
                        // reusable); a longer one is dropped unread, with its connection.
                        let mut resp = resp;
                        let mut read = 0usize;
                        while read <= RESPONSE_READ_MAX {
                            match resp.chunk().await {
                                Ok(Some(chunk)) => read += chunk.len(),
                                _ => break,
                            }
                        }
                        let error = (!status.is_success()).then(|| format!("HTTP {status}"));
                        (Some(status.as_u16()), error)
                    }
                    Err(err) => (None, Some(describe(err))),
                }
            }
            Ok(None) => (None, Some("the merchant has no active key".to_string())),
            Err(err) => (None, Some(format!("merchant key: {err}"))),
        };
        let attempt = Attempt {
            status,
            error,
            at_us,
            duration_ms: started.elapsed().as_millis() as i64,
        };
        let outcome = if attempt.delivered() {
            "delivered"
        } else {
            "failed"
        };
        metrics::counter!("paymux_webhook_attempts_total", "outcome" => outcome).increment(1);
        if let Err(err) = self.record(&row, &attempt).await {
            tracing::warn!(error = %err, event_id = %row.id, "recording a webhook attempt failed");
        }
    }

    async fn record(&self, row: &Claimed, a: &Attempt) -> sqlx::Result<()> {
        let attempts = row.attempts + 1;
        let (delivered_at, next_at) = if a.delivered() {
            (Some(now_us()), None)
        } else {
            (None, self.config.next_attempt_at(attempts, now_us()))
        };
        if !a.delivered() {
            match next_at {
                Some(_) => {
                    tracing::info!(event_id = %row.id, attempts, error = ?a.error, "webhook not acknowledged; will retry")
                }
                None => {
                    tracing::warn!(event_id = %row.id, attempts, error = ?a.error, "webhook not acknowledged; giving up")
                }
            }
        }
        const INSERT: &str = "INSERT INTO webhook_deliveries (outbox_id, attempt, at_us, http_status, error, duration_ms) \
            VALUES ($1, $2, $3, $4, $5, $6)";
        // A delivery is recorded unless one was already; a failure only while the claim holds.
        const UPDATE: &str = "UPDATE webhook_outbox SET attempts = $1, last_status = $2, last_error = $3, \
            delivered_at_us = $4, next_attempt_at_us = $5 WHERE id = $6 AND delivered_at_us IS NULL \
            AND ($7 OR next_attempt_at_us = $8)";
        let status = a.status.map(i32::from);
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin_write().await?;
                sqlx::query(INSERT)
                    .bind(row.id)
                    .bind(attempts)
                    .bind(a.at_us)
                    .bind(status)
                    .bind(&a.error)
                    .bind(a.duration_ms)
                    .execute(&mut *tx)
                    .await?;
                let updated = sqlx::query(UPDATE)
                    .bind(attempts)
                    .bind(status)
                    .bind(&a.error)
                    .bind(delivered_at)
                    .bind(next_at)
                    .bind(row.id)
                    .bind(a.delivered())
                    .bind(row.lease_us)
                    .execute(&mut *tx)
                    .await?;
                if updated.rows_affected() == 0 {
                    tracing::info!(event_id = %row.id, "the event was claimed again or sent again meanwhile; its newer state is kept");
                }
                tx.commit().await
            }};
        }
        match &self.db {
            Db::Sqlite(pool) => run!(pool),
            Db::Postgres(pool) => run!(pool),
        }
    }
}

/// Bytes of a receiver's answer read at most.
const RESPONSE_READ_MAX: usize = 64 * 1024;

const NOT_PUBLIC: &str =
    "notify_url is not a public address (webhook_allow_private_targets is off)";

/// Resolves names to their public addresses only (see [`is_public`]); a name with none fails.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(NOT_PUBLIC.into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether a webhook may go to `url` by its host as written: a literal address must be public, and
/// `localhost` is not (other names are checked when resolved).
pub fn public_target(url: &str) -> bool {
    // Parsed as the HTTP client parses it: numeric IPv4 forms such as `2130706433`, `127.1` or
    // `0x7f.0.0.1` come out as the dotted address they connect to (and reach no resolver).
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
        return false;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => is_public(ip),
        Err(_) => true,
    }
}

/// Not loopback, private, shared (100.64/10), link-local, benchmarking (198.18/15), reserved
/// (240/4), unique-local or site-local, unspecified, broadcast, multicast or documentation space;
/// IPv6 addresses that carry an IPv4 address (mapped, compatible, NAT64 `64:ff9b::/96`) by it.
pub fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr};
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded =
                |a: u16, b: u16| Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8);
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d).
            if (s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified())
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
            {
                return is_public(IpAddr::V4(embedded(s[6], s[7])));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0)
        }
    }
}

fn describe(err: reqwest::Error) -> String {
    // The URL may carry credentials (user info, a token in the query): never in a log or the API.
    let err = err.without_url();
    if err.is_timeout() {
        "timeout".into()
    } else if err.is_connect() {
        format!("connect: {err}")
    } else {
        err.to_string()
    }
}

/// Makes an event due now (delivered or not, given up or not) with a fresh retry schedule.
/// Returns whether the event exists.
pub async fn resend(db: &Db, event_id: Uuid) -> sqlx::Result<bool> {
    const SQL: &str = "UPDATE webhook_outbox SET next_attempt_at_us = $1, delivered_at_us = NULL, attempts = 0 \
        WHERE id = $2";
    let now = now_us();
    let n = match db {
        Db::Sqlite(pool) => sqlx::query(SQL)
            .bind(now)
            .bind(event_id)
            .execute(pool)
            .await?
            .rows_affected(),
        Db::Postgres(pool) => sqlx::query(SQL)
            .bind(now)
            .bind(event_id)
            .execute(pool)
            .await?
            .rows_affected(),
    };
    Ok(n == 1)
}

// ---------------------------------------------------------------------------------------------
// API

pub fn router() -> Router<AppState> {
    Router::new().route("/webhooks", get(list_webhooks))
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct EventRow {
    id: Uuid,
    payment_id: Uuid,
    event_type: String,
    created_at_us: i64,
    next_attempt_at_us: Option<i64>,
    attempts: i32,
    delivered_at_us: Option<i64>,
    last_status: Option<i32>,
    last_error: Option<String>,
}

/// A webhook event and its delivery state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookEvent {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub payment_id: PaymentId,
    /// `pending` (an attempt is due), `delivered` (acknowledged with 2xx) or `failed` (every
    /// attempt failed; an operator can resend it).
    pub status: String,
    pub attempts: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub delivered_at: Option<chrono::DateTime<chrono::Utc>>,
    pub next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
    /// HTTP status of the last attempt (none when it did not get an answer).
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
}

impl From<&EventRow> for WebhookEvent {
    fn from(r: &EventRow) -> WebhookEvent {
        let status = if r.delivered_at_us.is_some() {
            "delivered"
        } else if r.next_attempt_at_us.is_some() {
            "pending"
        } else {
            "failed"
        };
        WebhookEvent {
            id: r.id,
            event_type: r.event_type.clone(),
            payment_id: PaymentId::from_uuid(r.payment_id),
            status: status.into(),
            attempts: r.attempts,
            created_at: us_to_datetime(r.created_at_us),
            delivered_at: r.delivered_at_us.map(us_to_datetime),
            next_attempt_at: r
                .delivered_at_us
                .is_none()
                .then_some(r.next_attempt_at_us)
                .flatten()
                .map(us_to_datetime),
            last_status: r.last_status,
            last_error: r.last_error.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub payment_id: Option<PaymentId>,
    pub limit: Option<u32>,
    /// The last event id of the previous page: the events older than it.
    pub starting_after: Option<Uuid>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookEventList {
    pub data: Vec<WebhookEvent>,
    pub has_more: bool,
}

/// List the merchant's webhook events, newest first, optionally for one payment.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("paymux_hmac" = [])),
    params(("payment_id" = Option<String>, Query, description = "Only this payment's events"),
           ("limit" = Option<u32>, Query, description = "1–100, default 20"),
           ("starting_after" = Option<String>, Query, description = "The last event id of the previous page")),
    responses((status = 200, body = WebhookEventList)))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    Extension(merchant): Extension<Merchant>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<WebhookEventList>> {
    let Query(q) = query.map_err(|e| ApiError::validation("query", e.body_text()))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::validation("limit", "`limit` must be 1–100"));
    }
    let sql = "SELECT id, payment_id, event_type, created_at_us, next_attempt_at_us, attempts, \
        delivered_at_us, last_status, last_error FROM webhook_outbox WHERE merchant_id = $1 \
        AND ($2 IS NULL OR payment_id = $2) AND ($4 IS NULL OR id < $4) ORDER BY id DESC LIMIT $3";
    let merchant_id: Uuid = merchant.id.into();
    let payment: Option<Uuid> = q.payment_id.map(Into::into);
    let fetch = i64::from(limit) + 1;
    let mut rows: Vec<EventRow> = match &state.db {
        Db::Sqlite(pool) => {
            sqlx::query_as(sql)
                .bind(merchant_id)
                .bind(payment)
                .bind(fetch)
                .bind(q.starting_after)
                .fetch_all(pool)
                .await?
        }
        Db::Postgres(pool) => {
            let sql = sql
                .replace("$2 IS NULL", "$2::uuid IS NULL")
                .replace("$4 IS NULL", "$4::uuid IS NULL");
            sqlx::query_as(&sql)
                .bind(merchant_id)
                .bind(payment)
                .bind(fetch)
                .bind(q.starting_after)
                .fetch_all(pool)
                .await?
        }
    };
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok(Json(WebhookEventList {
        data: rows.iter().map(WebhookEvent::from).collect(),
        has_more,
    }))
}

#[cfg(test)]
mod target_tests {
    use std::str::FromStr;

    use reqwest::dns::Resolve;

    use super::{PublicOnly, is_public, public_target};

    #[test]
    fn only_public_addresses_are_webhook_targets() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "fec0::1",
            "198.18.0.1",
            "240.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for url in [
            "http://127.0.0.1:9/hook",
            "http://localhost/x",
            "http://LOCALHOST:80/",
            "http://a.localhost/",
            "http://[::1]:8080/",
            "http://169.254.169.254/latest/meta-data",
            // Numeric forms the HTTP client reads as loopback or the metadata address.
            "http://2130706433:8080/x",
            "http://127.1/x",
            "http://0x7f.0.0.1/x",
            "http://0177.0.0.1/x",
            "http://0/x",
            "http://2852039166/",
            "not a url",
        ] {
            assert!(!public_target(url), "{url}");
        }
        for url in ["https://shop.example.com/paymux", "http://8.8.8.8/hook"] {
            assert!(public_target(url), "{url}");
        }
    }

    #[tokio::test]
    async fn names_resolve_to_public_addresses_only() {
        let resolved = PublicOnly
            .resolve(reqwest::dns::Name::from_str("localhost").unwrap())
            .await;
        assert!(resolved.is_err(), "localhost resolved to a target");
    }
}
