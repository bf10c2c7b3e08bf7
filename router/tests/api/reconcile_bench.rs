//! The benchmark's seeding path (`paymux-recon-bench`), small: a day of 2,000 WeChat payments seeded
//! in bulk on the platform (rows and ledger entries) and in the WeChat sandbox's books, with five
//! of every class planted, reconciles to exactly the planted classes with their resolutions; the
//! books audit clean; a rerun posts nothing new and reports the same.

use chrono::Utc;
use chrono_tz::Asia::Shanghai;
use paymux::reconciliation::AccountReport;
use paymux::reconciliation::bench::{SeedAccount, SeedOptions, seed_day};
use paymux_reconcile::Class;

use crate::helpers::{fresh_database, spawn_with, test_config};
use crate::reconcile::reconcile;

const RECORDS: usize = 2_000;
const PLANTED: u64 = 5;

async fn scalar(db: &paymux::db::Db, sql: &str) -> i64 {
    match db {
        paymux::db::Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        paymux::db::Db::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
    }
}

fn counts(a: &AccountReport) -> Vec<(Class, u64)> {
    Class::ALL.iter().map(|c| (*c, a.count(*c))).collect()
}

#[tokio::test]
async fn a_seeded_benchmark_day_reconciles_to_the_planted_classes_and_a_rerun_posts_nothing() {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    // The planted dropped successes are `processing` payments three days old: the sweeper's
    // recovery of stale code payments would complete them before reconciliation gets to.
    config.processing_recovery_after_ms = 30 * 24 * 3_600_000;
    let app = spawn_with(db, config).await;
    let m = app.merchant("Bench").await;
    let day = Utc::now().with_timezone(&Shanghai).date_naive() - chrono::Days::new(3);
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let wechat = paymux::routing::store::list_accounts(&db, m.creds.merchant_id)
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.kind == "wechat_v3")
        .unwrap();
    let sandboxes = paymux_channels::sandbox::Sandboxes::start(app.config.sandbox_options())
        .await
        .unwrap();
    let seeded = seed_day(
        &db,
        &sandboxes.wechat,
        SeedAccount {
            merchant_id: m.creds.merchant_id,
            channel_account_id: wechat.id.into(),
            cost_rate_bps: wechat.cost_rate_bps,
            merchant_fee_rate_bps: app.config.merchant_fee_rate_bps,
        },
        SeedOptions {
            day,
            records: RECORDS,
            planted_per_class: PLANTED as usize,
        },
    )
    .await
    .unwrap();
    assert_eq!(seeded.platform_payments, RECORDS as u64);
    assert_eq!(seeded.channel_orders, RECORDS as u64);
    assert_eq!(seeded.ledger_entries, RECORDS as u64 - PLANTED);
    let expected = vec![
        (Class::Matched, RECORDS as u64 - 4 * PLANTED),
        (Class::MissingOnPlatform, PLANTED),
        (Class::MissingOnChannel, PLANTED),
        (Class::AmountMismatch, PLANTED),
        (Class::StatusMismatch, PLANTED),
        (Class::FeeMismatch, PLANTED),
    ];
    assert_eq!(seeded.expected, expected);
    let processing = "SELECT COUNT(*) FROM payments WHERE status = 'processing'";
    assert_eq!(scalar(&db, processing).await, PLANTED as i64);

    let first = reconcile(&app, day).await;
    let w = first
        .accounts
        .iter()
        .find(|a| a.channel_account_id == wechat.id.into())
        .unwrap();
    assert_eq!(counts(w), expected, "{}", app.backend());
    assert_eq!(w.channel_records, RECORDS as u64);
    assert_eq!(w.items.len() as u64, 5 * PLANTED);
    for i in &w.items {
        let (resolution, resolved) = match i.class.as_str() {
            "status_mismatch" => ("complete_payment", true),
            "fee_mismatch" => ("fee_adjustment", true),
            _ => ("exception", false),
        };
        assert_eq!(i.resolution, resolution, "{i:?}");
        assert_eq!(i.resolved_by.is_some(), resolved, "{i:?}");
    }
    assert_eq!(w.resolved, 2 * PLANTED);
    assert_eq!(w.exceptions, 3 * PLANTED);
    // The dropped successes were completed through the settlement path, posted once.
    assert_eq!(scalar(&db, processing).await, 0);
    assert_eq!(first.merchant_settlements.len(), 1);
    assert!(first.merchant_settlements[0].net_minor > 0);
    let audit = paymux::ledger_audit::audit(&db).await.unwrap();
    assert!(audit.is_clean(), "{}: {audit}", app.backend());
    assert_eq!(audit.succeeded_payments, RECORDS as i64);

    let entries = "SELECT COUNT(*) FROM ledger_entries";
    let before = scalar(&db, entries).await;
    let rerun = reconcile(&app, day).await;
    assert_eq!(scalar(&db, entries).await, before, "a rerun posted entries");
    let again = rerun
        .accounts
        .iter()
        .find(|a| a.channel_account_id == wechat.id.into())
        .unwrap();
    assert_eq!(counts(again), expected);
    assert_eq!(again.items, w.items);
    assert_eq!(again.receivable_residual_minor, w.receivable_residual_minor);
    assert_eq!(rerun.merchant_settlements, first.merchant_settlements);
    db.close().await;
}
