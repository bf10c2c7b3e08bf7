//! The nightly reconciliation in `paymux serve`: every day at `reconcile_schedule` (time of day,
//! Asia/Shanghai — after the channels' bills for the previous day are ready) the previous day is
//! reconciled for every channel account. On PostgreSQL the run holds a session advisory lock, and a
//! node that gets the lock after another finished finds the day's runs completed and does nothing, so
//! the day is reconciled on exactly one node; SQLite is a single node.

use chrono::{NaiveTime, TimeZone, Utc};
use chrono_tz::Asia::Shanghai;
use tokio::sync::watch;

use crate::AppState;
use crate::db::Db;

/// The advisory lock key of the nightly run (any fixed 64-bit number; "paymuxrc").
const LOCK_KEY: i64 = 0x7061_796d_7578_7263;

/// `HH:MM` or `HH:MM:SS`; empty or `off` disables the scheduler.
pub fn parse_schedule(s: &str) -> anyhow::Result<Option<NaiveTime>> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    NaiveTime::parse_from_str(s, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M"))
        .map(Some)
        .map_err(|_| anyhow::anyhow!("reconcile_schedule must be HH:MM or HH:MM:SS, not {s:?}"))
}

/// The next instant the schedule fires after `now`.
fn next_fire(at: NaiveTime, now: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
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

pub async fn run(state: AppState, at: NaiveTime, mut stop: watch::Receiver<bool>) {
    loop {
        let now = Utc::now();
        let wait = (next_fire(at, now) - now)
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        let day = Utc::now().with_timezone(&Shanghai).date_naive() - chrono::Days::new(1);
        if let Err(e) = run_once(&state, day).await {
            tracing::error!(%day, error = %format!("{e:#}"), "nightly reconciliation");
        }
    }
}

/// Reconciles `day` unless another node holds the lock or already completed it.
pub async fn run_once(state: &AppState, day: chrono::NaiveDate) -> anyhow::Result<bool> {
    match &state.db {
        Db::Sqlite(_) => run_unless_done(state, day).await,
        Db::Postgres(pool) => {
            let mut conn = pool.acquire().await?;
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LOCK_KEY)
                .fetch_one(&mut *conn)
                .await?;
            if !locked {
                tracing::info!(%day, "nightly reconciliation runs on another node");
                return Ok(false);
            }
            let result = run_unless_done(state, day).await;
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(LOCK_KEY)
                .execute(&mut *conn)
                .await;
            result
        }
    }
}

async fn run_unless_done(state: &AppState, day: chrono::NaiveDate) -> anyhow::Result<bool> {
    let accounts = state.routes.all().len() as i64;
    let done = completed_runs(&state.db, day).await?;
    if done >= accounts {
        return Ok(false);
    }
    let report = super::run_day(state, day, None, &|_| {}).await?;
    tracing::info!(%day, ok = report.is_ok(), accounts = report.accounts.len(), "nightly reconciliation done");
    Ok(true)
}

async fn completed_runs(db: &Db, day: chrono::NaiveDate) -> anyhow::Result<i64> {
    const SQL: &str =
        "SELECT COUNT(*) FROM reconciliation_runs WHERE day = $1 AND status = 'completed'";
    Ok(match db {
        Db::Sqlite(p) => {
            sqlx::query_scalar(SQL)
                .bind(day.to_string())
                .fetch_one(p)
                .await?
        }
        Db::Postgres(p) => {
            sqlx::query_scalar(SQL)
                .bind(day.to_string())
                .fetch_one(p)
                .await?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
