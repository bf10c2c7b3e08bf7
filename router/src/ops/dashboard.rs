//! The console's dashboard figures: a day's (Asia/Shanghai) payments — count, amount and success
//! rate — per channel account and per channel kind, from one grouped SQL query.
//!
//! Payment ids are UUIDv7, so the day's payments are a range of the primary key: the query narrows
//! on the id range (a second wider on each side, for ids minted a moment before `created_at_us`
//! was read) and decides on `created_at_us`. No index on the creation time is needed.

use chrono::NaiveDate;
use serde::Serialize;
use uuid::Uuid;

use crate::db::Db;
use crate::error::ApiResult;
use crate::reconciliation::day_bounds_us;

/// The figures of one group (an account, a kind, or everything), per currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Figures {
    pub currency: String,
    /// Payments created that day, whatever became of them.
    pub count: i64,
    pub amount_minor: i64,
    pub succeeded_count: i64,
    pub succeeded_amount_minor: i64,
    pub failed_count: i64,
    pub closed_count: i64,
    /// Still `created` or `processing`.
    pub pending_count: i64,
    /// `succeeded_count` per 10,000 payments created (`null` without payments).
    pub success_rate_bps: Option<i64>,
}

impl Figures {
    fn add(&mut self, status: &str, count: i64, amount_minor: i64) {
        self.count += count;
        self.amount_minor += amount_minor;
        match status {
            "succeeded" => {
                self.succeeded_count += count;
                self.succeeded_amount_minor += amount_minor;
            }
            "failed" => self.failed_count += count,
            "closed" => self.closed_count += count,
            _ => self.pending_count += count,
        }
        self.success_rate_bps =
            (self.count > 0).then(|| self.succeeded_count * 10_000 / self.count);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AccountFigures {
    /// `null`: payments never routed to a channel account.
    pub channel_account_id: Option<Uuid>,
    pub name: Option<String>,
    /// `wechat_v3`, `alipay`, …; `null` when not routed.
    pub kind: Option<String>,
    pub merchant_id: Option<Uuid>,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Debug, Clone, Serialize)]
pub struct KindFigures {
    pub kind: Option<String>,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dashboard {
    pub date: String,
    pub timezone: &'static str,
    /// Per currency.
    pub totals: Vec<Figures>,
    pub by_channel_account: Vec<AccountFigures>,
    pub by_channel_kind: Vec<KindFigures>,
}

type Row = (
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<Uuid>,
    String,
    String,
    i64,
    i64,
);

const SQL: &str = "SELECT p.channel_account_id, a.name, a.kind, a.merchant_id, p.currency, p.status, \
    COUNT(*), CAST(COALESCE(SUM(p.amount_minor), 0) AS BIGINT) \
    FROM payments p LEFT JOIN channel_accounts a ON a.id = p.channel_account_id \
    WHERE p.id >= $1 AND p.id < $2 AND p.created_at_us >= $3 AND p.created_at_us < $4 \
    GROUP BY p.channel_account_id, a.name, a.kind, a.merchant_id, p.currency, p.status";

/// The smallest UUIDv7 minted at `ms` milliseconds since the epoch.
fn v7_floor(ms: i64) -> Uuid {
    Uuid::from_u128((ms.max(0) as u128) << 80)
}

pub async fn day(db: &Db, day: NaiveDate) -> ApiResult<Dashboard> {
    let (start_us, end_us) = day_bounds_us(day);
    let slack_ms = 1_000;
    let (id_lo, id_hi) = (
        v7_floor(start_us / 1000 - slack_ms),
        v7_floor(end_us / 1000 + slack_ms),
    );
    let rows: Vec<Row> = match db {
        Db::Sqlite(p) => {
            sqlx::query_as(SQL)
                .bind(id_lo)
                .bind(id_hi)
                .bind(start_us)
                .bind(end_us)
                .fetch_all(p)
                .await?
        }
        Db::Postgres(p) => {
            sqlx::query_as(SQL)
                .bind(id_lo)
                .bind(id_hi)
                .bind(start_us)
                .bind(end_us)
                .fetch_all(p)
                .await?
        }
    };
    Ok(fold(day, rows))
}

/// Folds the grouped rows into accounts, kinds and totals (each sorted, for stable output).
fn fold(day: NaiveDate, rows: Vec<Row>) -> Dashboard {
    use std::collections::BTreeMap;
    let mut accounts: BTreeMap<(Option<Uuid>, String), AccountFigures> = BTreeMap::new();
    let mut kinds: BTreeMap<(Option<String>, String), Figures> = BTreeMap::new();
    let mut totals: BTreeMap<String, Figures> = BTreeMap::new();
    for (account, name, kind, merchant, currency, status, count, amount) in rows {
        let fresh = || Figures {
            currency: currency.clone(),
            ..Figures::default()
        };
        accounts
            .entry((account, currency.clone()))
            .or_insert_with(|| AccountFigures {
                channel_account_id: account,
                name: name.clone(),
                kind: kind.clone(),
                merchant_id: merchant,
                figures: fresh(),
            })
            .figures
            .add(&status, count, amount);
        kinds
            .entry((kind.clone(), currency.clone()))
            .or_insert_with(fresh)
            .add(&status, count, amount);
        totals
            .entry(currency.clone())
            .or_insert_with(fresh)
            .add(&status, count, amount);
    }
    let mut by_channel_account: Vec<AccountFigures> = accounts.into_values().collect();
    by_channel_account.sort_by(|a, b| {
        (&a.kind, &a.name, a.channel_account_id).cmp(&(&b.kind, &b.name, b.channel_account_id))
    });
    let dashboard = Dashboard {
        date: day.to_string(),
        timezone: "Asia/Shanghai",
        totals: totals.into_values().collect(),
        by_channel_account,
        by_channel_kind: kinds
            .into_iter()
            .map(|((kind, _), figures)| KindFigures { kind, figures })
            .collect(),
    };
    debug_assert_eq!(
        dashboard.totals.iter().map(|f| f.count).sum::<i64>(),
        dashboard
            .by_channel_account
            .iter()
            .map(|a| a.figures.count)
            .sum::<i64>()
    );
    dashboard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v7_floor_orders_like_the_ids_minted_then() {
        let ms = 1_763_900_000_123_i64;
        let id = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            (ms / 1000) as u64,
            ((ms % 1000) * 1_000_000) as u32,
        ));
        assert!(v7_floor(ms) <= id && id < v7_floor(ms + 1));
        assert!(v7_floor(ms).as_bytes() <= id.as_bytes());
    }

    #[test]
    fn groups_fold_into_accounts_kinds_and_totals() {
        let a = Uuid::now_v7();
        let row = |status: &str, count, amount| -> Row {
            (
                Some(a),
                Some("wx".into()),
                Some("wechat_v3".into()),
                None,
                "CNY".into(),
                status.into(),
                count,
                amount,
            )
        };
        let unrouted: Row = (
            None,
            None,
            None,
            None,
            "CNY".into(),
            "created".into(),
            1,
            50,
        );
        let d = fold(
            NaiveDate::from_ymd_opt(2026, 1, 2).unwrap(),
            vec![row("succeeded", 3, 300), row("failed", 1, 100), unrouted],
        );
        assert_eq!(d.by_channel_account.len(), 2);
        let wx = d
            .by_channel_account
            .iter()
            .find(|x| x.channel_account_id == Some(a))
            .unwrap();
        assert_eq!(
            (
                wx.figures.count,
                wx.figures.amount_minor,
                wx.figures.succeeded_count
            ),
            (4, 400, 3)
        );
        assert_eq!(wx.figures.success_rate_bps, Some(7_500));
        assert_eq!(d.totals[0].count, 5);
        assert_eq!(d.totals[0].pending_count, 1);
        assert_eq!(d.totals[0].success_rate_bps, Some(6_000));
        assert_eq!(d.by_channel_kind.len(), 2);
    }
}
