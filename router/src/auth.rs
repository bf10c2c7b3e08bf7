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

/// Most nonces the in-process store holds (about 10 minutes at ~7,000 requests/s). When it is full,
/// requests are refused (503) rather than a nonce forgotten early, which would let a request be
/// replayed; deployments with more traffic configure Redis.
const LOCAL_NONCES_MAX: usize = 4_000_000;
const NONCE_TTL_SECONDS: u64 = 2 * TIMESTAMP_WINDOW_SECONDS as u64;
const NONCE_SHARDS: usize = 16;

/// The in-process nonce store: per shard, the nonces of the current generation and of the one
/// before. A generation lasts the nonce lifetime, so every nonce is remembered at least that long
/// (it is dropped at the second rotation after it was recorded), and memory is bounded by
/// forgetting whole generations, never single nonces.
pub struct LocalNonces {
    shards: Vec<std::sync::Mutex<NonceShard>>,
    generation: Duration,
    max_per_shard: usize,
}

struct NonceShard {
    started: std::time::Instant,
    current: std::collections::HashSet<u128>,
    previous: std::collections::HashSet<u128>,
}

impl LocalNonces {
    pub fn new(lifetime: Duration, max: usize) -> LocalNonces {
        let now = std::time::Instant::now();
        LocalNonces {
            shards: (0..NONCE_SHARDS)
                .map(|_| {
                    std::sync::Mutex::new(NonceShard {
                        started: now,
                        current: Default::default(),
                        previous: Default::default(),
                    })
                })
                .collect(),
            generation: lifetime,
            max_per_shard: max.div_ceil(NONCE_SHARDS).max(1),
        }
    }

    /// `Ok(true)` the first time `key` is seen within its lifetime; an error when the store is full.
    pub fn first_use(&self, key: u128, now: std::time::Instant) -> anyhow::Result<bool> {
        let shard = &self.shards[(key % NONCE_SHARDS as u128) as usize];
        let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(s.started);
        if elapsed >= self.generation.saturating_mul(2) {
            s.current.clear();
            s.previous.clear();
            s.started = now;
        } else if elapsed >= self.generation {
            s.previous = std::mem::take(&mut s.current);
            s.started = now;
        }
        if s.previous.contains(&key) || s.current.contains(&key) {
            return Ok(false);
        }
        if s.current.len() + s.previous.len() >= self.max_per_shard {
            anyhow::bail!("the in-process nonce store is full; configure Redis (`redis_url`)");
        }
        s.current.insert(key);
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
                let mut k = [0u8; 16];
                k.copy_from_slice(&digest.as_ref()[..16]);
                store.first_use(u128::from_le_bytes(k), std::time::Instant::now())
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
        let life = Duration::from_secs(600);
        let store = LocalNonces::new(life, 1_000);
        let t0 = Instant::now();
        assert!(store.first_use(7, t0).unwrap());
        assert!(!store.first_use(7, t0).unwrap());
        // Across one rotation (at t0 + 600 s) it is still remembered, until its second rotation.
        assert!(store.first_use(23, t0 + Duration::from_secs(599)).unwrap());
        assert!(!store.first_use(7, t0 + Duration::from_secs(600)).unwrap());
        assert!(
            !store
                .first_use(23, t0 + Duration::from_secs(1_100))
                .unwrap()
        );
        assert!(!store.first_use(7, t0 + Duration::from_secs(1_199)).unwrap());
        // 23 was recorded at 599 s: still remembered at 1,199 s (600 s later).
        assert!(
            !store
                .first_use(23, t0 + Duration::from_secs(1_199))
                .unwrap()
        );
        assert!(store.first_use(7, t0 + Duration::from_secs(1_800)).unwrap());
        // A long quiet spell forgets everything at once.
        assert!(
            store
                .first_use(23, t0 + Duration::from_secs(5_000))
                .unwrap()
        );
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
