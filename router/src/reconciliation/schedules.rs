//! Each channel account's time of day for the nightly reconciliation (Asia/Shanghai): its own
//! (`reconciliation_schedules`), else the configured `reconcile_schedule`. Set through the ops API
//! (`PUT /ops/v1/reconciliation/schedules/{account}`, admins, audited) or
//! `paymux channel-account schedule <id> <HH:MM|default>`.

use chrono::NaiveTime;
use std::collections::HashMap;
use uuid::Uuid;

use crate::db::{BeginWrite, Db, now_us};
use crate::error::{ApiError, ApiResult};
use crate::ops::audit::{self, Actor};

macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

/// `HH:MM` or `HH:MM:SS`.
pub fn parse_time(s: &str) -> Option<NaiveTime> {
    let s = s.trim();
    NaiveTime::parse_from_str(s, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M"))
        .ok()
}

/// The accounts that have a time of their own.
pub async fn own_times(db: &Db) -> ApiResult<HashMap<Uuid, NaiveTime>> {
    let rows: Vec<(Uuid, String)> = on_db!(db, pool => {
        sqlx::query_as("SELECT channel_account_id, at FROM reconciliation_schedules")
            .fetch_all(pool)
            .await?
    });
    Ok(rows
        .into_iter()
        .filter_map(|(id, at)| parse_time(&at).map(|t| (id, t)))
        .collect())
}

/// Gives `account` its own time (`Some`) or returns it to the configured one (`None`), with its
/// audit row in the same transaction.
pub async fn set(db: &Db, actor: Actor, account: Uuid, at: Option<NaiveTime>) -> ApiResult<()> {
    let now = now_us();
    let text = at.map(|t| t.format("%H:%M:%S").to_string());
    on_db!(db, pool => {
        let mut tx = pool.begin_write().await?;
        let known: Option<Uuid> = sqlx::query_scalar("SELECT id FROM channel_accounts WHERE id = $1")
            .bind(account)
            .fetch_optional(&mut *tx)
            .await?;
        if known.is_none() {
            return Err(ApiError::not_found("channel account"));
        }
        // The same time again (or the default again) changes nothing and writes nothing.
        let current: Option<String> = sqlx::query_scalar(
            "SELECT at FROM reconciliation_schedules WHERE channel_account_id = $1",
        )
        .bind(account)
        .fetch_optional(&mut *tx)
        .await?;
        if current == text {
            tx.rollback().await?;
            return Ok(());
        }
        match &text {
            Some(t) => {
                sqlx::query(
                    "INSERT INTO reconciliation_schedules (channel_account_id, at, updated_at_us) \
                     VALUES ($1, $2, $3) ON CONFLICT (channel_account_id) \
                     DO UPDATE SET at = excluded.at, updated_at_us = excluded.updated_at_us",
                )
                .bind(account)
                .bind(t)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM reconciliation_schedules WHERE channel_account_id = $1")
                    .bind(account)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        audit::record!(&mut *tx, actor, "reconciliation.schedule", format!("channel_account:{account}"),
            &serde_json::json!({ "at": text }), now);
        tx.commit().await?;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_with_or_without_seconds() {
        assert_eq!(parse_time("10:30"), NaiveTime::from_hms_opt(10, 30, 0));
        assert_eq!(parse_time(" 09:05:07 "), NaiveTime::from_hms_opt(9, 5, 7));
        assert_eq!(parse_time("24:00"), None);
        assert_eq!(parse_time("default"), None);
        assert_eq!(parse_time(""), None);
    }
}
