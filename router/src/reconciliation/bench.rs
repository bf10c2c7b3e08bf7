//! A benchmark day for reconciliation, seeded in bulk (`paymux-recon-bench`, and the test that keeps
//! that path working).
//!
//! [`seed_day`] writes N payments of one WeChat sandbox channel account and day on the platform —
//! payment rows in multi-row inserts with their ledger entries posted through the ledger's batch
//! engine, one transaction per batch, as the write batcher does — and the same orders, paid, in the
//! WeChat sandbox's books (one transaction). A few of every class are planted:
//!
//! | class | planted as |
//! |---|---|
//! | `missing_on_channel` | a success of ours (posted) the books do not have, mid-day |
//! | `missing_on_platform` | an order in the books with a number we never issued |
//! | `amount_mismatch` | the books hold one fen more than we do |
//! | `status_mismatch` | still `processing` here (no entry), paid in the books |
//! | `fee_mismatch` | the books charged one fen more than the account's cost rate |
//!
//! Every other payment matches. Times are spread over the day, ending an hour before midnight (no
//! carry-overs).

use std::time::Instant;

use anyhow::Context;
use chrono::NaiveDate;
use paymux_channels::wechat::sandbox::{PaidTrade, WechatSandbox};
use paymux_ledger::{EntryResult, NewEntry, PostOptions};
use paymux_model::{ChannelAccountId, MerchantId, Money, PaymentId};
use paymux_reconcile::Class;
use sqlx::QueryBuilder;
use uuid::Uuid;

use crate::db::{BeginWrite, Db};

/// Payments per platform transaction (rows and ledger entries commit together).
const BATCH: usize = 10_000;
/// Payment rows per `INSERT` (16 values each: under both backends' bound-parameter limits).
const ROWS_PER_STATEMENT: usize = 2_000;

/// What to seed.
#[derive(Debug, Clone, Copy)]
pub struct SeedOptions {
    /// The Asia/Shanghai day (must be in the past and within 90 days: the sandbox's bill window).
    pub day: NaiveDate,
    /// Payments on the platform (the books hold as many orders: the planted ones differ).
    pub records: usize,
    /// How many of each class are planted.
    pub planted_per_class: usize,
}

/// The account the day is seeded for.
#[derive(Debug, Clone, Copy)]
pub struct SeedAccount {
    pub merchant_id: MerchantId,
    pub channel_account_id: ChannelAccountId,
    /// The account's cost rate (the fee the books charge, but for the planted fee mismatches).
    pub cost_rate_bps: u32,
    /// The merchant's fee rate (posted with every payment).
    pub merchant_fee_rate_bps: u32,
}

/// What was seeded, and what reconciling the day must find.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub platform_payments: u64,
    pub channel_orders: u64,
    pub ledger_entries: u64,
    /// Every class with the count reconciliation must report, in [`Class::ALL`] order.
    pub expected: Vec<(Class, u64)>,
    pub platform_seconds: f64,
    pub books_seconds: f64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Plant {
    MissingOnChannel,
    AmountMismatch,
    StatusMismatch,
    FeeMismatch,
    None,
}

/// The planted class of the `i`-th payment: the first `k` of each, spread by a stride.
fn plant_of(i: usize, n: usize, k: usize) -> Plant {
    let stride = (n / (4 * k).max(1)).max(1);
    if k == 0 || !i.is_multiple_of(stride) || i / stride >= 4 * k {
        return Plant::None;
    }
    match (i / stride) % 4 {
        0 => Plant::MissingOnChannel,
        1 => Plant::AmountMismatch,
        2 => Plant::StatusMismatch,
        _ => Plant::FeeMismatch,
    }
}

fn amount_of(i: usize) -> i64 {
    100 + (i % 50_000) as i64
}

/// The `i`-th payment's id: deterministic per day, time-ordered like the server's UUIDv7s.
fn payment_id(day: NaiveDate, i: usize, paid_at_us: i64) -> Uuid {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        (paid_at_us / 1_000_000) as u64,
        ((paid_at_us % 1_000_000) * 1_000) as u32,
    );
    let mut bytes = *Uuid::new_v7(ts).as_bytes();
    // The random part: the day and the index, so a seed is reproducible.
    let tail = Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("bench:{day}:{i}").as_bytes());
    bytes[6..].copy_from_slice(&tail.as_bytes()[6..]);
    bytes[6] = (bytes[6] & 0x0f) | 0x70;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

fn transaction_id(day: NaiveDate, i: usize) -> String {
    format!("4200000000{}{i:010}", day.format("%Y%m%d"))
}

struct Row {
    id: Uuid,
    order_no: String,
    amount: i64,
    status: &'static str,
    trade_no: Option<String>,
    created_at_us: i64,
    paid_at_us: Option<i64>,
}

/// Seeds the day (see the module docs). The database and the books must not hold this day's
/// benchmark yet (the order numbers are unique per merchant).
pub async fn seed_day(
    db: &Db,
    books: &WechatSandbox,
    account: SeedAccount,
    opts: SeedOptions,
) -> anyhow::Result<Seeded> {
    let n = opts.records;
    let k = opts.planted_per_class;
    anyhow::ensure!(
        n >= 8 * k.max(1),
        "{n} records are too few to plant {k} of every class"
    );
    let (start_us, end_us) = super::day_bounds_us(opts.day);
    // Spread over the day, ending an hour before midnight (outside any carry-over window).
    let span_us = end_us - start_us - 3_600_000_000;
    let paid_at = |i: usize| start_us + (span_us as i128 * i as i128 / n as i128) as i64;
    let cost = account.cost_rate_bps;
    let fee = |amount: i64| paymux_ledger::rules::fee_minor(amount, cost);

    // The channel's books: every order but the missing-on-channel ones, plus strangers.
    let t = Instant::now();
    let day = opts.day;
    let trades = (0..n)
        .filter_map(move |i| {
            let amount = amount_of(i);
            let plant = plant_of(i, n, k);
            if plant == Plant::MissingOnChannel {
                return None;
            }
            let paid = paid_at(i);
            Some(PaidTrade {
                out_trade_no: payment_id(day, i, paid).simple().to_string(),
                transaction_id: transaction_id(day, i),
                amount_fen: amount + i64::from(plant == Plant::AmountMismatch),
                fee_fen: fee(amount) + i64::from(plant == Plant::FeeMismatch),
                success_time: paid / 1_000_000,
            })
        })
        .chain((0..k).map(move |j| {
            let paid = paid_at(j * 7 + 3);
            PaidTrade {
                out_trade_no: Uuid::new_v5(
                    &Uuid::NAMESPACE_OID,
                    format!("bench:stranger:{day}:{j}").as_bytes(),
                )
                .simple()
                .to_string(),
                transaction_id: format!("4300000000{}{j:010}", day.format("%Y%m%d")),
                amount_fen: 4_321,
                fee_fen: fee(4_321),
                success_time: paid / 1_000_000,
            }
        }));
    let channel_orders = books
        .book_paid(trades)
        .await
        .context("book the orders in the WeChat sandbox")?;
    let books_seconds = t.elapsed().as_secs_f64();

    // The platform: payment rows and their ledger entries, a batch per transaction.
    let t = Instant::now();
    let mut platform_payments = 0u64;
    let mut ledger_entries = 0u64;
    let mut i = 0;
    while i < n {
        let end = (i + BATCH).min(n);
        let mut rows = Vec::with_capacity(end - i);
        let mut entries = Vec::with_capacity(end - i);
        for i in i..end {
            let paid = paid_at(i);
            let id = payment_id(opts.day, i, paid);
            let amount = amount_of(i);
            let processing = plant_of(i, n, k) == Plant::StatusMismatch;
            rows.push(Row {
                id,
                order_no: format!("BENCH-{}-{i:08}", opts.day),
                amount,
                status: if processing {
                    "processing"
                } else {
                    "succeeded"
                },
                trade_no: (!processing).then(|| transaction_id(opts.day, i)),
                created_at_us: paid - 1_000_000,
                paid_at_us: (!processing).then_some(paid),
            });
            if !processing {
                entries.push(paymux_ledger::rules::payment_succeeded(
                    PaymentId::from_uuid(id),
                    account.merchant_id,
                    account.channel_account_id,
                    Money::cny(amount),
                    account.merchant_fee_rate_bps,
                    cost,
                    paid,
                ));
            }
        }
        write_batch(db, account, &rows, &entries)
            .await
            .with_context(|| format!("seed payments {i}..{end}"))?;
        platform_payments += rows.len() as u64;
        ledger_entries += entries.len() as u64;
        i = end;
    }
    let platform_seconds = t.elapsed().as_secs_f64();

    let k = k as u64;
    let expected = Class::ALL
        .iter()
        .map(|c| {
            let count = match c {
                Class::Matched => n as u64 - 4 * k,
                _ => k,
            };
            (*c, count)
        })
        .collect();
    Ok(Seeded {
        platform_payments,
        channel_orders,
        ledger_entries,
        expected,
        platform_seconds,
        books_seconds,
    })
}

macro_rules! batch_body {
    ($tx:ident, $backend:ty, $post:path, $account:expr, $rows:expr, $entries:expr) => {{
        let account: Uuid = $account.channel_account_id.into();
        let merchant: Uuid = $account.merchant_id.into();
        for chunk in $rows.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<$backend>::new(
                "INSERT INTO payments (id, merchant_id, merchant_order_no, request_hash, amount_minor, \
                 currency, subject, method, wallet, status, channel_account_id, channel_trade_no, \
                 expires_at_us, created_at_us, updated_at_us, paid_at_us) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(r.id)
                    .push_bind(merchant)
                    .push_bind(&r.order_no)
                    .push("'bench'")
                    .push_bind(r.amount)
                    .push("'CNY', 'Bench', 'code_scan', 'wechat'")
                    .push_bind(r.status)
                    .push_bind(account)
                    .push_bind(&r.trade_no)
                    .push_bind(r.created_at_us + 900_000_000)
                    .push_bind(r.created_at_us)
                    .push_bind(r.paid_at_us.unwrap_or(r.created_at_us))
                    .push_bind(r.paid_at_us);
            });
            qb.build().execute(&mut *$tx).await?;
        }
        if !$entries.is_empty() {
            let results = $post(&mut *$tx, $entries, PostOptions::default())
                .await
                .context("post the payments' entries")?;
            if let Some(bad) = results.iter().find(|r| !matches!(r, EntryResult::Created)) {
                anyhow::bail!("the ledger did not create a seeded entry: {bad:?}");
            }
        }
    }};
}

async fn write_batch(
    db: &Db,
    account: SeedAccount,
    rows: &[Row],
    entries: &[NewEntry],
) -> anyhow::Result<()> {
    match db {
        Db::Sqlite(p) => {
            let mut tx = p.begin_write().await?;
            batch_body!(
                tx,
                sqlx::Sqlite,
                paymux_ledger::post_sqlite,
                account,
                rows,
                entries
            );
            tx.commit().await?;
        }
        Db::Postgres(p) => {
            let mut tx = p.begin_write().await?;
            batch_body!(
                tx,
                sqlx::Postgres,
                paymux_ledger::post_postgres,
                account,
                rows,
                entries
            );
            tx.commit().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plants_k_of_every_class() {
        for (n, k) in [(2_000, 5), (1_000_000, 10), (80, 10)] {
            let mut counts = [0usize; 5];
            for i in 0..n {
                counts[plant_of(i, n, k) as usize] += 1;
            }
            assert_eq!(counts, [k, k, k, k, n - 4 * k], "n {n} k {k}");
        }
    }

    #[test]
    fn ids_are_distinct_and_reproducible() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
        let a = payment_id(day, 1, 1_000_000);
        assert_eq!(a, payment_id(day, 1, 1_000_000));
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(a, payment_id(day, 2, 1_000_000));
        assert_eq!(a.get_version_num(), 7);
    }
}
