//! Per-merchant request rate limits on `/v1/*`, applied after authentication: a GCRA (token bucket
//! without a refill task) of `rate_limit_per_second` with bursts of `rate_limit_burst`, keyed by
//! the authenticated merchant. In-process (`governor`) by default; with `redis_url` one budget is
//! shared by every node through an atomic Lua script (`EVALSHA`, loaded on first use) that keeps the
//! merchant's theoretical arrival time on Redis's own clock. Should Redis fail, the node falls back
//! to its local limiter rather than refusing or waving through every request.
//!
//! Over the limit: `429 rate_limited` with `Retry-After` (whole seconds, at least 1).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use paymux_model::ErrorCode;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Merchant;
use crate::error::ApiError;

/// GCRA on Redis. KEYS[1]: the merchant's key; ARGV[1]: emission interval (µs); ARGV[2]: burst
/// tolerance (µs, burst × interval). Returns 0 when the request is allowed (and records it), else
/// the microseconds until it would be.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if allow_at > now then
  return allow_at - now
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
return 0
"#;

/// Checks between two sweeps of idle keys out of the local limiter.
const LOCAL_RETAIN_EVERY: u64 = 1 << 16;

/// The per-merchant limiter; cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    local: DefaultKeyedRateLimiter<Uuid>,
    checks: AtomicU64,
    redis: Option<RedisGcra>,
}

struct RedisGcra {
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    interval_us: u64,
    tolerance_us: u64,
}

impl RateLimiter {
    /// No limit at all.
    pub fn disabled() -> RateLimiter {
        RateLimiter { inner: None }
    }

    /// `per_second = 0` disables the limit; `burst` is at least 1.
    pub fn new(
        per_second: u32,
        burst: u32,
        redis: Option<redis::aio::ConnectionManager>,
    ) -> RateLimiter {
        let Some(rate) = NonZeroU32::new(per_second) else {
            return RateLimiter::disabled();
        };
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let interval_us = (1_000_000 / u64::from(rate.get())).max(1);
        RateLimiter {
            inner: Some(Arc::new(Inner {
                local: governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
                checks: AtomicU64::new(0),
                redis: redis.map(|conn| RedisGcra {
                    conn,
                    script: redis::Script::new(GCRA_LUA),
                    interval_us,
                    tolerance_us: interval_us * u64::from(burst.get()),
                }),
            })),
        }
    }

    /// `Ok` when the merchant may send this request now; otherwise how long until it may.
    pub async fn check(&self, merchant: Uuid) -> Result<(), Duration> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        if let Some(r) = &inner.redis {
            let mut conn = r.conn.clone();
            let wait: redis::RedisResult<u64> = r
                .script
                .key(format!("paymux:ratelimit:{merchant}"))
                .arg(r.interval_us)
                .arg(r.tolerance_us)
                .invoke_async(&mut conn)
                .await;
            match wait {
                Ok(0) => return Ok(()),
                Ok(us) => return Err(Duration::from_micros(us)),
                Err(e) => {
                    metrics::counter!("paymux_rate_limit_redis_errors_total").increment(1);
                    tracing::warn!(error = %e, "rate limit in Redis failed; limiting on this node");
                }
            }
        }
        if inner.checks.fetch_add(1, Ordering::Relaxed) % LOCAL_RETAIN_EVERY
            == LOCAL_RETAIN_EVERY - 1
        {
            inner.local.retain_recent();
        }
        inner
            .local
            .check_key(&merchant)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_micros().div_ceil(1_000_000).max(1) as u64
}

/// Middleware (inside [`crate::auth::authenticate`]): limits by the authenticated merchant.
pub async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(merchant) = req.extensions().get::<Merchant>().map(|m| Uuid::from(m.id)) else {
        return next.run(req).await;
    };
    match state.limiter.check(merchant).await {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            metrics::counter!("paymux_rate_limited_total").increment(1);
            let secs = retry_after_seconds(wait);
            let mut response = ApiError::new(
                ErrorCode::RateLimited,
                format!("too many requests for this merchant; retry after {secs} s"),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
    }

    #[tokio::test]
    async fn local_burst_then_limited_per_merchant() {
        let l = RateLimiter::new(1, 3, None);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for _ in 0..3 {
            assert!(l.check(a).await.is_ok());
        }
        let wait = l.check(a).await.unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(l.check(b).await.is_ok());
        assert!(RateLimiter::new(0, 0, None).check(a).await.is_ok());
    }
}
