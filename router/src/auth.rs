//! Merchant request authentication (`PAYMUX-HMAC-SHA256`, see `paymux_model::auth`) with replay
//! protection: a nonce is accepted once per key within the timestamp window, in Redis (`SET NX EX`)
//! when configured, in an in-process TTL cache otherwise.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{OriginalUri, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use paymux_model::auth::{TIMESTAMP_WINDOW_SECONDS, parse_authorization, verify};
use paymux_model::{ErrorCode, MerchantId};

use crate::AppState;
use crate::crypto::SecretBox;
use crate::db::Db;
use crate::error::ApiError;
use crate::merchants::{ActiveKey, find_active_key};

/// The authenticated merchant, put into request extensions by [`authenticate`].
#[derive(Debug, Clone, Copy)]
pub struct Merchant {
    pub id: MerchantId,
}

/// Remembers nonces for as long as their request could still pass the timestamp check.
#[derive(Clone)]
pub enum NonceStore {
    Local(Arc<LocalNonces>),
    Redis(redis::aio::ConnectionManager),
}

/// Most nonces the in-process store holds: at most 13.75 minutes of them are kept (see
/// [`LocalNonces`]), so about 7,000 requests/s. When it is full, requests are refused (503) rather
/// than a nonce forgotten early, which would let a request be replayed; deployments with more
/// traffic configure Redis.
const LOCAL_NONCES_MAX: usize = 6_000_000;
/// A nonce is remembered while its request's timestamp can still pass the window check on any
/// node: the window on both sides, plus a margin for clocks that differ between the nodes, Redis
/// and the whole seconds the check works in.
const NONCE_TTL_SECONDS: u64 = 2 * TIMESTAMP_WINDOW_SECONDS as u64 + NONCE_CLOCK_MARGIN_SECONDS;
const NONCE_CLOCK_MARGIN_SECONDS: u64 = 60;
const NONCE_SHARDS: usize = 16;
/// Generations per nonce lifetime: a nonce is kept between 4 and 5 quarters of its lifetime.
const NONCE_GENERATIONS: u32 = 4;

/// The in-process nonce store: per shard, the nonces of the current generation and of the four
/// before it, each generation a quarter of the nonce lifetime, so every nonce is remembered at
/// least its lifetime (it is dropped by the fifth rotation after it was recorded) and memory is
/// bounded by forgetting whole generations, never single nonces. Keys are 64 bits of a SHA-256:
/// two different nonces collide with a chance of about one in 3·10^12 at full capacity.
pub struct LocalNonces {
    shards: Vec<std::sync::Mutex<NonceShard>>,
    generation: Duration,
    max_per_shard: usize,
}

struct NonceShard {
    started: std::time::Instant,
    /// Newest first; at most `NONCE_GENERATIONS + 1`.
    sets: std::collections::VecDeque<std::collections::HashSet<u64>>,
}

impl LocalNonces {
    pub fn new(lifetime: Duration, max: usize) -> LocalNonces {
        let now = std::time::Instant::now();
        LocalNonces {
            shards: (0..NONCE_SHARDS)
                .map(|_| {
                    std::sync::Mutex::new(NonceShard {
                        started: now,
                        sets: std::collections::VecDeque::from([Default::default()]),
                    })
                })
                .collect(),
            generation: (lifetime / NONCE_GENERATIONS).max(Duration::from_millis(1)),
            max_per_shard: max.div_ceil(NONCE_SHARDS).max(1),
        }
    }

    /// `Ok(true)` the first time `key` is seen within its lifetime; an error when the store is full.
    pub fn first_use(&self, key: u64, now: std::time::Instant) -> anyhow::Result<bool> {
        let keep = NONCE_GENERATIONS as usize + 1;
        let shard = &self.shards[(key % NONCE_SHARDS as u64) as usize];
        let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(s.started);
        if elapsed >= self.generation {
            // One new generation per generation length that passed (all of them after a long
            // quiet spell).
            let steps = (elapsed.as_nanos() / self.generation.as_nanos()).min(keep as u128);
            for _ in 0..steps {
                s.sets.push_front(Default::default());
            }
            s.sets.truncate(keep);
            s.started = now;
        }
        if s.sets.iter().any(|set| set.contains(&key)) {
            return Ok(false);
        }
        if s.sets.iter().map(|set| set.len()).sum::<usize>() >= self.max_per_shard {
            anyhow::bail!("the in-process nonce store is full; configure Redis (`redis_url`)");
        }
        if let Some(current) = s.sets.front_mut() {
            current.insert(key);
        }
        Ok(true)
    }
}

impl NonceStore {
    pub fn local() -> NonceStore {
        NonceStore::Local(Arc::new(LocalNonces::new(
            Duration::from_secs(NONCE_TTL_SECONDS),
            LOCAL_NONCES_MAX,
        )))
    }

    /// Records the nonce; `Ok(false)` when it was seen before.
    pub async fn first_use(&self, key_id: &str, nonce: &str) -> anyhow::Result<bool> {
        match self {
            NonceStore::Local(store) => {
                let digest = ring::digest::digest(
                    &ring::digest::SHA256,
                    format!("{key_id}\n{nonce}").as_bytes(),
                );
                let mut k = [0u8; 8];
                k.copy_from_slice(&digest.as_ref()[..8]);
                store.first_use(u64::from_le_bytes(k), std::time::Instant::now())
            }
            NonceStore::Redis(conn) => {
                let mut conn = conn.clone();
                let set: Option<String> = redis::cmd("SET")
                    .arg(format!("paymux:nonce:{key_id}:{nonce}"))
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(NONCE_TTL_SECONDS)
                    .query_async(&mut conn)
                    .await?;
                Ok(set.is_some())
            }
        }
    }
}

/// Looks up keys, caching decrypted secrets briefly (a revoked key stops working within the TTL).
pub struct KeyStore {
    db: Db,
    secrets: Arc<SecretBox>,
    cache: moka::future::Cache<String, Option<ActiveKey>>,
}

impl KeyStore {
    pub fn new(db: Db, secrets: Arc<SecretBox>) -> KeyStore {
        KeyStore {
            db,
            secrets,
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(10))
                .build(),
        }
    }

    pub async fn get(&self, key_id: &str) -> Result<Option<ActiveKey>, ApiError> {
        if let Some(hit) = self.cache.get(key_id).await {
            return Ok(hit);
        }
        let found = find_active_key(&self.db, &self.secrets, key_id)
            .await
            .map_err(ApiError::from)?;
        self.cache.insert(key_id.to_string(), found.clone()).await;
        Ok(found)
    }

    pub async fn forget(&self, key_id: &str) {
        self.cache.invalidate(key_id).await;
    }
}

fn deny(code: ErrorCode, detail: &str) -> ApiError {
    metrics::counter!("paymux_auth_failures_total", "code" => code.as_str()).increment(1);
    ApiError::new(code, detail)
}

/// Middleware: verifies the signature over the exact body bytes, then hands the buffered body on.
pub async fn authenticate(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let header = match parts.headers.get(AUTHORIZATION) {
        None => {
            return Err(deny(
                ErrorCode::AuthMissing,
                "send an Authorization: PAYMUX-HMAC-SHA256 … header",
            ));
        }
        Some(h) => h.to_str().map_err(|_| {
            deny(
                ErrorCode::AuthMalformed,
                "Authorization header is not ASCII",
            )
        })?,
    };
    let params = parse_authorization(header).ok_or_else(|| {
        deny(
            ErrorCode::AuthMalformed,
            "expected PAYMUX-HMAC-SHA256 key_id=…,timestamp=<unix seconds>,nonce=<16–64 [A-Za-z0-9]>,signature=<64 lowercase hex>",
        )
    })?;
    let now = chrono::Utc::now().timestamp();
    if (params.timestamp - now).abs() > TIMESTAMP_WINDOW_SECONDS {
        return Err(deny(
            ErrorCode::AuthStaleTimestamp,
            &format!(
                "timestamp {} is more than {TIMESTAMP_WINDOW_SECONDS} s from server time {now}",
                params.timestamp
            ),
        ));
    }
    let key = state
        .keys
        .get(params.key_id)
        .await?
        .ok_or_else(|| deny(ErrorCode::AuthUnknownKey, "unknown or revoked key_id"))?;
    let body = axum::body::to_bytes(body, state.config.body_limit_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "request body exceeds {} bytes",
                    state.config.body_limit_bytes
                ),
            )
        })?;
    // Request bodies are JSON: a body declared as another media type is refused (an empty one,
    // as a body-less POST sends it, whatever its declared type, is not).
    if !body.is_empty()
        && let Some(ct) = parts.headers.get(axum::http::header::CONTENT_TYPE)
        && matches!(
            parts.method,
            axum::http::Method::POST | axum::http::Method::PUT | axum::http::Method::PATCH
        )
    {
        let essence = ct
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "the request body must be JSON (Content-Type: application/json)",
            ));
        }
    }
    let path_and_query = parts
        .extensions
        .get::<OriginalUri>()
        .map(|u| &u.0)
        .unwrap_or(&parts.uri)
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if !verify(
        &key.secret,
        parts.method.as_str(),
        &path_and_query,
        params.timestamp,
        params.nonce,
        &body,
        params.signature,
    ) {
        return Err(deny(
            ErrorCode::AuthBadSignature,
            "signature does not match the request",
        ));
    }
    let first = state
        .nonces
        .first_use(params.key_id, params.nonce)
        .await
        .map_err(ApiError::unavailable)?;
    if !first {
        return Err(deny(
            ErrorCode::AuthReplayedNonce,
            "this nonce was already used with this key",
        ));
    }
    parts.extensions.insert(Merchant {
        id: key.merchant_id,
    });
    Ok(next.run(Request::from_parts(parts, Body::from(body))).await)
}

#[cfg(test)]
mod nonce_tests {
    use std::time::{Duration, Instant};

    use super::LocalNonces;

    #[test]
    fn a_nonce_is_refused_for_at_least_its_lifetime_then_forgotten() {
        // Generations of 150 s; a nonce is kept 600–750 s.
        let life = Duration::from_secs(600);
        let store = LocalNonces::new(life, 1_000);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(store.first_use(7, t0).unwrap());
        assert!(!store.first_use(7, t0).unwrap());
        assert!(store.first_use(23, at(149)).unwrap());
        // Looked at every minute, each stays remembered for its whole lifetime.
        for s in (60..=720).step_by(60) {
            assert!(!store.first_use(7, at(s)).unwrap(), "7 at {s} s");
        }
        assert!(!store.first_use(23, at(749)).unwrap());
        // Rotations happened at 180, 360, 540 and 720 s (when looked at); the fifth drops it.
        assert!(
            store.first_use(7, at(870)).unwrap(),
            "forgotten at its fifth rotation"
        );
        // A long quiet spell forgets everything at once.
        assert!(store.first_use(23, at(5_000)).unwrap());
        assert!(!store.first_use(23, at(5_001)).unwrap());
    }

    #[test]
    fn a_full_store_refuses_instead_of_forgetting() {
        // 16 shards of one nonce each; every key below lands in shard 0.
        let store = LocalNonces::new(Duration::from_secs(600), 16);
        let t0 = Instant::now();
        assert!(store.first_use(0, t0).unwrap());
        assert!(store.first_use(16, t0).is_err(), "full: refused");
        assert!(
            !store.first_use(0, t0).unwrap(),
            "and the first is still remembered"
        );
        assert!(store.first_use(1, t0).unwrap(), "another shard has room");
    }
}
