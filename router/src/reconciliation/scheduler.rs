//! The nightly reconciliation in `paymux serve`: the previous day (Asia/Shanghai) is reconciled for
//! each channel account once that account's time of day has come — its own
//! ([`super::schedules`]) or `reconcile_schedule` — i.e. after the channel's bill is ready. A server
//! that starts after an account's time reconciles the day it missed at once. Once every account
//! has completed the day, the merchants are settled (T+1; one settlement per merchant and day).
//!
//! On PostgreSQL the work holds a session advisory lock, and a node that gets the lock after another
//! finished finds the accounts' runs completed and does nothing, so each account is reconciled on
//! exactly one node; SQLite is a single node. A failed run (the bill not there yet, the channel
//! down) is tried again after [`RETRY_AFTER`], for [`CATCH_UP_DAYS`] more days after its own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveTime, Utc};
use chrono_tz::Asia::Shanghai;
use paymux_model::ChannelAccountId;
use tokio::sync::watch;
use uuid::Uuid;

use crate::AppState;
use crate::db::Db;

/// The advisory lock key of the nightly run (any fixed 64-bit number; "paymuxrc").
const LOCK_KEY: i64 = 0x7061_796d_7578_7263;
/// How often the scheduler looks at the clock and the accounts' times.
const TICK: Duration = Duration::from_secs(2);
/// How long after a failed run an account is tried again (the same day).
pub const RETRY_AFTER: Duration = Duration::from_secs(600);
/// Days before yesterday whose failed runs are still tried again (a bill that came days late, a
/// channel down over midnight), oldest first, so that no day is left behind at midnight.
pub const CATCH_UP_DAYS: u64 = 3;

/// `HH:MM` or `HH:MM:SS`; empty or `off` disables the scheduler.
pub fn parse_schedule(s: &str) -> anyhow::Result<Option<NaiveTime>> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    super::schedules::parse_time(s)
        .map(Some)
        .ok_or_else(|| anyhow::anyhow!("reconcile_schedule must be HH:MM or HH:MM:SS, not {s:?}"))
}

/// The next instant the schedule fires after `now`.
#[cfg(test)]
fn next_fire(at: NaiveTime, now: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    use chrono::TimeZone;
    let local = now.with_timezone(&Shanghai);
    let today = local.date_naive().and_time(at);
    let candidate = Shanghai
        .from_local_datetime(&today)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now);
    if candidate > now {
        candidate
    } else {
        candidate + chrono::Duration::days(1)
    }
}

/// The day to reconcile at `now` (yesterday in Shanghai) and whether an account whose time is `at`
/// is due for it.
fn due(at: NaiveTime, now: chrono::DateTime<Utc>) -> (NaiveDate, bool) {
    let local = now.with_timezone(&Shanghai);
    (
        local.date_naive() - chrono::Days::new(1),
        local.time() >= at,
    )
}

pub async fn run(state: AppState, default_at: NaiveTime, mut stop: watch::Receiver<bool>) {
    let mut failed_at: HashMap<(NaiveDate, Uuid), Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = tick(&state, default_at, &mut failed_at).await {
            tracing::error!(error = %format!("{e:#}"), "nightly reconciliation");
        }
    }
}

/// One look at the clock: the accounts whose time has come and whose day is not completed (nor
/// failed a moment ago) are reconciled.
async fn tick(
    state: &AppState,
    default_at: NaiveTime,
    failed_at: &mut HashMap<(NaiveDate, Uuid), Instant>,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let own = super::schedules::own_times(&state.db)
        .await
        .map_err(|e| anyhow::anyhow!("reading reconciliation schedules: {}", e.detail))?;
    let (day, _) = due(default_at, now);
    let oldest = day - chrono::Days::new(CATCH_UP_DAYS);
    failed_at.retain(|(d, _), _| *d >= oldest);
    let accounts: Vec<Uuid> = state.routes.all().iter().map(|r| r.id.into()).collect();
    let retry_ok = |d: NaiveDate, a: Uuid, failed_at: &HashMap<(NaiveDate, Uuid), Instant>| {
        failed_at
            .get(&(d, a))
            .is_none_or(|t| t.elapsed() >= RETRY_AFTER)
    };
    // Earlier days whose run failed, oldest first; then yesterday's accounts whose time has come.
    let mut due_now: Vec<(NaiveDate, Uuid)> = failed_runs(&state.db, oldest, day)
        .await?
        .into_iter()
        .filter(|(d, a)| accounts.contains(a) && retry_ok(*d, *a, failed_at))
        .collect();
    let done = completed_accounts(&state.db, day).await?;
    due_now.extend(
        accounts
            .iter()
            .copied()
            .filter(|a| due(own.get(a).copied().unwrap_or(default_at), now).1)
            .filter(|a| !done.contains(a))
            .filter(|a| retry_ok(day, *a, failed_at))
            .map(|a| (day, a)),
    );
    if due_now.is_empty() {
        return Ok(());
    }
    let outcome = with_lock(state, async {
        let mut failed = Vec::new();
        for (d, account) in &due_now {
            if completed_accounts(&state.db, *d).await?.contains(account) {
                continue;
            }
            // One day's error (a lasting one on an old day) does not hold up the others.
            let report =
                match super::run_day(state, *d, Some(ChannelAccountId::from(*account)), &|_| {})
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(day = %d, channel_account_id = %account, error = %format!("{e:#}"), "nightly reconciliation of an account");
                        failed.push((*d, *account));
                        continue;
                    }
                };
            let ok = report.is_ok();
            tracing::info!(day = %d, channel_account_id = %account, ok,
                settled_merchants = report.merchant_settlements.len(), "nightly reconciliation of an account");
            if !ok {
                failed.push((*d, *account));
            }
        }
        Ok::<_, anyhow::Error>(failed)
    })
    .await?;
    for key in outcome.unwrap_or_default() {
        failed_at.insert(key, Instant::now());
    }
    Ok(())
}

/// `(day, account)` of the runs that failed on a day from `from` up to (not including) `until`,
/// oldest first.
async fn failed_runs(
    db: &Db,
    from: NaiveDate,
    until: NaiveDate,
) -> anyhow::Result<Vec<(NaiveDate, Uuid)>> {
    const SQL: &str = "SELECT day, channel_account_id FROM reconciliation_runs \
        WHERE status = 'failed' AND day >= $1 AND day < $2 ORDER BY day, channel_account_id";
    let rows: Vec<(String, Uuid)> = match db {
        Db::Sqlite(p) => {
            sqlx::query_as(SQL)
                .bind(from.to_string())
                .bind(until.to_string())
                .fetch_all(p)
                .await?
        }
        Db::Postgres(p) => {
            sqlx::query_as(SQL)
                .bind(from.to_string())
                .bind(until.to_string())
                .fetch_all(p)
                .await?
        }
    };
    Ok(rows
        .into_iter()
        .filter_map(|(d, a)| Some((d.parse().ok()?, a)))
        .collect())
}

/// Runs `work` holding the nightly lock (PostgreSQL), or `None` when another node holds it.
async fn with_lock<T>(
    state: &AppState,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<Option<T>> {
    match &state.db {
        Db::Sqlite(_) => work.await.map(Some),
        Db::Postgres(pool) => {
            let mut conn = pool.acquire().await?;
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LOCK_KEY)
                .fetch_one(&mut *conn)
                .await?;
            if !locked {
                tracing::debug!("nightly reconciliation runs on another node");
                return Ok(None);
            }
            // The lock belongs to this connection's session: if it cannot be released (the work
            // panicked, or the unlock failed), the connection is closed instead of going back to
            // the pool still holding it, which would stop every node's nightly run.
            use futures::FutureExt;
            let result = std::panic::AssertUnwindSafe(work).catch_unwind().await;
            let unlocked: Result<bool, sqlx::Error> = match &result {
                Ok(_) => {
                    sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                        .bind(LOCK_KEY)
                        .fetch_one(&mut *conn)
                        .await
                }
                Err(_) => Ok(false),
            };
            if !matches!(unlocked, Ok(true)) {
                tracing::warn!(unlock = ?unlocked.as_ref().map_err(|e| e.to_string()), "nightly lock not released normally; closing its connection");
                let _ = sqlx::Connection::close(conn.detach()).await;
            }
            match result {
                Ok(r) => r.map(Some),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    }
}

/// Reconciles `day` for every account not completed yet unless another node holds the lock;
/// `Ok(false)` when there was nothing to do here.
pub async fn run_once(state: &AppState, day: NaiveDate) -> anyhow::Result<bool> {
    let ran = with_lock(state, async {
        let accounts = state.routes.all().len();
        let done = completed_accounts(&state.db, day).await?;
        if done.len() >= accounts {
            return Ok(false);
        }
        let report = super::run_day(state, day, None, &|_| {}).await?;
        tracing::info!(%day, ok = report.is_ok(), accounts = report.accounts.len(), "nightly reconciliation done");
        Ok(true)
    })
    .await?;
    Ok(ran.unwrap_or(false))
}

/// The accounts whose run of `day` completed.
pub async fn completed_accounts(
    db: &Db,
    day: NaiveDate,
) -> anyhow::Result<std::collections::HashSet<Uuid>> {
    const SQL: &str = "SELECT channel_account_id FROM reconciliation_runs WHERE day = $1 AND status = 'completed'";
    let ids: Vec<Uuid> = match db {
        Db::Sqlite(p) => {
            sqlx::query_scalar(SQL)
                .bind(day.to_string())
                .fetch_all(p)
                .await?
        }
        Db::Postgres(p) => {
            sqlx::query_scalar(SQL)
                .bind(day.to_string())
                .fetch_all(p)
                .await?
        }
    };
    Ok(ids.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn schedules_parse_and_fire_next_in_shanghai() {
        assert_eq!(parse_schedule("off").unwrap(), None);
        assert_eq!(parse_schedule("").unwrap(), None);
        assert!(parse_schedule("25:00").is_err());
        let at = parse_schedule("10:00").unwrap().unwrap();
        // 01:00 UTC is 09:00 in Shanghai: fires at 02:00 UTC the same day.
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
        assert_eq!(
            next_fire(at, now),
            Utc.with_ymd_and_hms(2026, 11, 22, 2, 0, 0).unwrap()
        );
        // 03:00 UTC is 11:00 in Shanghai: tomorrow.
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
        assert_eq!(
            next_fire(at, now),
            Utc.with_ymd_and_hms(2026, 11, 23, 2, 0, 0).unwrap()
        );
    }

    #[test]
    fn an_account_is_due_for_yesterday_once_its_time_has_come() {
        let at = parse_schedule("10:00").unwrap().unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        // 09:59 in Shanghai: not yet; 10:00 and later (a server started late): due.
        let before = Utc.with_ymd_and_hms(2026, 11, 22, 1, 59, 0).unwrap();
        assert_eq!(due(at, before), (day, false));
        let at_time = Utc.with_ymd_and_hms(2026, 11, 22, 2, 0, 0).unwrap();
        assert_eq!(due(at, at_time), (day, true));
        let late = Utc.with_ymd_and_hms(2026, 11, 22, 15, 59, 0).unwrap();
        assert_eq!(due(at, late), (day, true));
        // 16:00 UTC is midnight in Shanghai: the day to reconcile moves on, not due before 10:00.
        let midnight = Utc.with_ymd_and_hms(2026, 11, 22, 16, 0, 0).unwrap();
        assert_eq!(due(at, midnight), (day + chrono::Days::new(1), false));
    }
}
