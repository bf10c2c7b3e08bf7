//! Channel health: a circuit breaker per channel account ([`crate::orchestrate::Route`]).
//!
//! Every channel call's outcome and latency is recorded in a rolling window (30 s in 10 buckets).
//! Errors are the answers that say nothing about the payment — the channel was unreachable or its
//! answer is unknown (timeouts, 5xx) — never business declines.
//!
//! - **closed**: calls go through. When the window holds at least `breaker_min_calls` calls and
//!   `breaker_error_rate_pct` % of them erred (or, with `breaker_latency_p95_ms` set, more than 5 %
//!   were slower than it: the p95 latency is over the limit), the breaker opens.
//! - **open**: new payments on the route fail fast with `503 channel_unavailable` and
//!   `Retry-After`, before anything is written. Follow-ups (queries, reversals, closes, refunds)
//!   are never blocked: money may have moved.
//! - **half-open**, `breaker_open_ms` after opening: `breaker_half_open_probes` new payments are let
//!   through. As many successful calls close the breaker; one error opens it again.
//!
//! The clock is a [`Duration`] since the breaker's creation, passed in, so the state machine
//! ([`BreakerCore`]) is tested deterministically.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use paymux_channels::{ChannelError, PayOutcome, RefundOutcome};

/// Breaker thresholds (from the `breaker_*` configuration keys).
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub error_rate_pct: u32,
    pub min_calls: u32,
    pub open: Duration,
    pub half_open_probes: u32,
    /// Opens when more than 5 % of the window's calls took longer (p95 over the limit).
    pub latency_p95: Option<Duration>,
    pub window: Duration,
    pub buckets: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            error_rate_pct: 50,
            min_calls: 20,
            open: Duration::from_millis(30_000),
            half_open_probes: 3,
            latency_p95: None,
            window: Duration::from_secs(30),
            buckets: 10,
        }
    }
}

impl BreakerConfig {
    pub fn of(c: &crate::config::Config) -> Self {
        Self {
            error_rate_pct: c.breaker_error_rate_pct,
            min_calls: c.breaker_min_calls.max(1),
            open: Duration::from_millis(c.breaker_open_ms),
            half_open_probes: c.breaker_half_open_probes.max(1),
            latency_p95: (c.breaker_latency_p95_ms > 0)
                .then(|| Duration::from_millis(c.breaker_latency_p95_ms)),
            ..Self::default()
        }
    }

    fn bucket_len(&self) -> Duration {
        (self.window / self.buckets.max(1)).max(Duration::from_millis(1))
    }
}

/// The breaker's state, as exported (`paymux_channel_breaker_state`: 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket-length slot of time this bucket counts (`now / bucket_len`).
    slot: u64,
    calls: u32,
    errors: u32,
    slow: u32,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open {
        until: Duration,
    },
    HalfOpen {
        since: Duration,
        admitted: u32,
        succeeded: u32,
    },
}

/// The state machine, without a clock or a lock.
#[derive(Debug)]
pub struct BreakerCore {
    cfg: BreakerConfig,
    buckets: Vec<Bucket>,
    phase: Phase,
}

impl BreakerCore {
    pub fn new(cfg: BreakerConfig) -> Self {
        let n = cfg.buckets.max(1) as usize;
        Self {
            cfg,
            buckets: vec![Bucket::default(); n],
            phase: Phase::Closed,
        }
    }

    /// The state at `now` (an open breaker whose cool-down is over is half-open).
    pub fn state(&mut self, now: Duration) -> BreakerState {
        if let Phase::Open { until } = self.phase
            && now >= until
        {
            self.phase = Phase::HalfOpen {
                since: now,
                admitted: 0,
                succeeded: 0,
            };
        }
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// May a new payment go to the channel? `Err(wait)`: not before `wait` has passed.
    pub fn admit(&mut self, now: Duration) -> Result<(), Duration> {
        self.state(now);
        let open = self.cfg.open;
        match &mut self.phase {
            Phase::Closed => Ok(()),
            Phase::Open { until } => Err(*until - now),
            Phase::HalfOpen {
                since,
                admitted,
                succeeded,
            } => {
                // Probes that never reported (a request that vanished) do not hold the breaker
                // half-open for ever: after another cool-down, probing starts over.
                if *admitted >= self.cfg.half_open_probes && now.saturating_sub(*since) >= open {
                    *since = now;
                    *admitted = *succeeded;
                }
                if *admitted < self.cfg.half_open_probes {
                    *admitted += 1;
                    Ok(())
                } else {
                    Err(Duration::from_secs(1))
                }
            }
        }
    }

    /// Records one call. Returns the new state when it changed.
    pub fn record(
        &mut self,
        now: Duration,
        error: bool,
        latency: Duration,
    ) -> Option<BreakerState> {
        let before = self.state(now);
        match &mut self.phase {
            // The verdict is out until the cool-down ends; follow-up calls meanwhile do not count.
            Phase::Open { .. } => return None,
            Phase::HalfOpen { succeeded, .. } => {
                if error {
                    self.phase = Phase::Open {
                        until: now + self.cfg.open,
                    };
                } else {
                    *succeeded += 1;
                    if *succeeded >= self.cfg.half_open_probes {
                        self.phase = Phase::Closed;
                        self.buckets.fill(Bucket::default());
                    }
                }
            }
            Phase::Closed => {
                let slow = self.cfg.latency_p95.is_some_and(|l| latency > l);
                let bucket = self.bucket(now);
                bucket.calls += 1;
                bucket.errors += u32::from(error);
                bucket.slow += u32::from(slow);
                let (calls, errors, slow) = self.totals(now);
                let calls = u64::from(calls);
                if calls >= u64::from(self.cfg.min_calls)
                    && (u64::from(errors) * 100 >= u64::from(self.cfg.error_rate_pct) * calls
                        || (self.cfg.latency_p95.is_some() && u64::from(slow) * 100 > 5 * calls))
                {
                    self.phase = Phase::Open {
                        until: now + self.cfg.open,
                    };
                }
            }
        }
        let after = self.state(now);
        (after != before).then_some(after)
    }

    fn slot(&self, now: Duration) -> u64 {
        (now.as_millis() / self.cfg.bucket_len().as_millis()) as u64
    }

    fn bucket(&mut self, now: Duration) -> &mut Bucket {
        let slot = self.slot(now);
        let n = self.buckets.len();
        let b = &mut self.buckets[(slot % n as u64) as usize];
        if b.slot != slot {
            *b = Bucket {
                slot,
                ..Bucket::default()
            };
        }
        b
    }

    /// Calls, errors and slow calls in the window ending at `now`.
    fn totals(&self, now: Duration) -> (u32, u32, u32) {
        let slot = self.slot(now);
        let oldest = slot.saturating_sub(self.buckets.len() as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| b.calls > 0 && b.slot >= oldest && b.slot <= slot)
            .fold((0, 0, 0), |(c, e, s), b| {
                (c + b.calls, e + b.errors, s + b.slow)
            })
    }
}

/// A route's breaker: the state machine behind a lock, on the process's monotonic clock, with
/// its metrics.
pub struct Breaker {
    route: &'static str,
    /// The channel account, when the breaker belongs to one (a metric label).
    account: Option<uuid::Uuid>,
    started: Instant,
    core: Mutex<BreakerCore>,
}

impl Breaker {
    pub fn new(route: &'static str, cfg: BreakerConfig) -> Self {
        Self {
            route,
            account: None,
            started: Instant::now(),
            core: Mutex::new(BreakerCore::new(cfg)),
        }
    }

    /// The breaker of one channel account: `route` is the account's name, and its state is
    /// exported with the account id as well (names need not be unique).
    pub fn with_account(route: &'static str, account: uuid::Uuid, cfg: BreakerConfig) -> Self {
        Self {
            account: Some(account),
            ..Self::new(route, cfg)
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn core(&self) -> std::sync::MutexGuard<'_, BreakerCore> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        let now = self.now();
        self.core().state(now)
    }

    /// May a new payment go to this route? `Err(wait)` while the breaker is open (or its
    /// half-open probes are all out).
    pub fn admit(&self) -> Result<(), Duration> {
        let now = self.now();
        let r = self.core().admit(now);
        if r.is_err() {
            metrics::counter!("paymux_channel_breaker_rejected_total", "route" => self.route)
                .increment(1);
        }
        r
    }

    /// Records one call's outcome.
    pub fn record(&self, op: &'static str, error: bool, latency: Duration) {
        let now = self.now();
        let changed = self.core().record(now, error, latency);
        let result = if error { "error" } else { "ok" };
        metrics::counter!("paymux_channel_calls_total", "route" => self.route, "op" => op, "result" => result)
            .increment(1);
        metrics::histogram!("paymux_channel_call_duration_seconds", "route" => self.route, "op" => op)
            .record(latency.as_secs_f64());
        if let Some(to) = changed {
            metrics::counter!("paymux_channel_breaker_transitions_total", "route" => self.route, "to" => to.as_str())
                .increment(1);
            if to == BreakerState::Open {
                tracing::warn!(
                    route = self.route,
                    "circuit breaker opened: new payments on this route fail fast"
                );
            } else {
                tracing::info!(route = self.route, state = to.as_str(), "circuit breaker");
            }
        }
    }

    /// Runs one channel call, recording its latency and whether `is_error` says it erred.
    pub async fn observe<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = T>,
        is_error: impl FnOnce(&T) -> bool,
    ) -> T {
        let t0 = Instant::now();
        let out = call.await;
        self.record(op, is_error(&out), t0.elapsed());
        out
    }
}

/// A channel error that counts against the breaker: unreachable, or an unknown answer.
pub fn is_channel_fault(e: &ChannelError) -> bool {
    matches!(e, ChannelError::Unreachable(_) | ChannelError::Unknown(_))
}

pub fn result_errs<T>(r: &Result<T, ChannelError>) -> bool {
    r.as_ref().err().is_some_and(is_channel_fault)
}

pub fn pay_errs(o: &PayOutcome) -> bool {
    matches!(o, PayOutcome::Unknown { .. })
}

pub fn refund_errs(o: &RefundOutcome) -> bool {
    matches!(o, RefundOutcome::Unknown { .. })
}

/// `paymux_channel_breaker_state` of these breakers, in the Prometheus text format (rendered per
/// server at scrape time, so several servers in one process each report their own).
pub fn render_states<'a>(breakers: impl Iterator<Item = &'a Breaker>) -> String {
    let mut out = String::from(
        "# HELP paymux_channel_breaker_state Circuit breaker per channel account: 0 closed, 1 half-open, 2 open\n# TYPE paymux_channel_breaker_state gauge\n",
    );
    for b in breakers {
        let _ = match b.account {
            Some(a) => writeln!(
                out,
                "paymux_channel_breaker_state{{route=\"{}\",account=\"{a}\"}} {}",
                b.route.replace(['"', '\\', '\n'], "_"),
                b.state() as u8
            ),
            None => writeln!(
                out,
                "paymux_channel_breaker_state{{route=\"{}\"}} {}",
                b.route,
                b.state() as u8
            ),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            error_rate_pct: 50,
            min_calls: 4,
            open: Duration::from_secs(10),
            half_open_probes: 2,
            latency_p95: None,
            window: Duration::from_secs(30),
            buckets: 10,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const FAST: Duration = Duration::from_millis(5);

    #[test]
    fn opens_at_the_error_rate_once_enough_calls_were_seen() {
        let mut b = BreakerCore::new(cfg());
        // Three errors are not enough calls to judge.
        for i in 0..3 {
            assert_eq!(b.record(ms(i), true, FAST), None);
        }
        assert_eq!(b.admit(ms(10)), Ok(()));
        assert_eq!(b.record(ms(20), true, FAST), Some(BreakerState::Open));
        assert_eq!(b.state(ms(30)), BreakerState::Open);
        assert_eq!(b.admit(ms(1_020)), Err(ms(9_000)));
    }

    #[test]
    fn stays_closed_below_the_error_rate() {
        let mut b = BreakerCore::new(cfg());
        for i in 0..30 {
            // One error in three: 33 % < 50 %.
            assert_eq!(b.record(ms(i * 100), i % 3 == 2, FAST), None);
        }
        assert_eq!(b.state(ms(3_000)), BreakerState::Closed);
    }

    #[test]
    fn old_calls_leave_the_window() {
        let mut b = BreakerCore::new(cfg());
        for i in 0..3 {
            b.record(ms(i), true, FAST);
        }
        // 40 s later those three errors are out of the 30 s window: one more is not enough.
        assert_eq!(b.record(ms(40_000), true, FAST), None);
        assert_eq!(b.state(ms(40_000)), BreakerState::Closed);
        for i in 1..3 {
            b.record(ms(40_000 + i), true, FAST);
        }
        assert_eq!(b.record(ms(40_010), false, FAST), Some(BreakerState::Open));
    }

    #[test]
    fn half_open_after_the_cool_down_then_closed_on_probe_success() {
        let mut b = BreakerCore::new(cfg());
        for i in 0..4 {
            b.record(ms(i), true, FAST);
        }
        assert_eq!(b.state(ms(9_999)), BreakerState::Open);
        // Follow-up calls while open do not change anything.
        assert_eq!(b.record(ms(5_000), false, FAST), None);
        assert_eq!(b.state(ms(10_003)), BreakerState::HalfOpen);
        // Two probes are let through, a third must wait.
        assert_eq!(b.admit(ms(10_004)), Ok(()));
        assert_eq!(b.admit(ms(10_005)), Ok(()));
        assert!(b.admit(ms(10_006)).is_err());
        assert_eq!(b.record(ms(10_100), false, FAST), None);
        assert_eq!(
            b.record(ms(10_200), false, FAST),
            Some(BreakerState::Closed)
        );
        // Closed with a fresh window: the errors before do not count any more.
        assert_eq!(b.record(ms(10_300), true, FAST), None);
        assert_eq!(b.admit(ms(10_400)), Ok(()));
    }

    #[test]
    fn a_failed_probe_opens_again() {
        let mut b = BreakerCore::new(cfg());
        for i in 0..4 {
            b.record(ms(i), true, FAST);
        }
        assert_eq!(b.admit(ms(10_010)), Ok(()));
        assert_eq!(b.record(ms(10_050), true, FAST), Some(BreakerState::Open));
        assert_eq!(b.admit(ms(11_050)), Err(ms(9_000)));
        assert_eq!(b.state(ms(20_050)), BreakerState::HalfOpen);
    }

    #[test]
    fn lost_probes_are_replaced_after_another_cool_down() {
        let mut b = BreakerCore::new(cfg());
        for i in 0..4 {
            b.record(ms(i), true, FAST);
        }
        assert_eq!(b.admit(ms(10_010)), Ok(()));
        assert_eq!(b.admit(ms(10_011)), Ok(()));
        assert!(b.admit(ms(15_000)).is_err());
        assert_eq!(b.admit(ms(20_020)), Ok(()));
    }

    #[test]
    fn opens_when_p95_latency_is_over_the_limit() {
        let mut b = BreakerCore::new(BreakerConfig {
            latency_p95: Some(ms(500)),
            min_calls: 20,
            ..cfg()
        });
        // 1 slow call in 20 (5 %) is within p95.
        for i in 0..19 {
            assert_eq!(b.record(ms(i), false, FAST), None);
        }
        assert_eq!(b.record(ms(19), false, ms(900)), None);
        assert_eq!(b.record(ms(20), false, ms(900)), Some(BreakerState::Open));
    }

    #[test]
    fn declines_are_not_errors() {
        assert!(!pay_errs(&PayOutcome::Failed {
            code: "NOTENOUGH".into(),
            message: String::new()
        }));
        assert!(pay_errs(&PayOutcome::Unknown {
            reason: "timeout".into()
        }));
        assert!(!result_errs::<()>(&Err(ChannelError::Rejected {
            code: "ORDERPAID".into(),
            message: String::new()
        })));
        assert!(result_errs::<()>(&Err(ChannelError::Unknown("503".into()))));
        assert!(result_errs::<()>(&Err(ChannelError::Unreachable(
            "refused".into()
        ))));
    }
}
