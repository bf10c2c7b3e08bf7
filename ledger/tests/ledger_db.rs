//! The ledger against real databases: SQLite always, PostgreSQL when `PAYMUX_TEST_DATABASE_URL` is set
//! (each test creates its own database from that admin URL).

use std::str::FromStr;

use paymux_ledger::audit::{AuditOptions, audit};
use paymux_ledger::queries::balance_by_code;
use paymux_ledger::rules::{self, RefundContext};
use paymux_ledger::{EntryResult, Ledger, LedgerConfig, LedgerPool, PostOptions, chart};
use paymux_model::{ChannelAccountId, Currency, MerchantId, Money, PaymentId, RefundId};

struct TestPool {
    pool: LedgerPool,
    _dir: tempfile::TempDir,
}

async fn pools() -> Vec<TestPool> {
    let dir = tempfile::tempdir().unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&format!(
        "sqlite://{}/ledger.sqlite",
        dir.path().display()
    ))
    .unwrap()
    .create_if_missing(true)
    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
    .busy_timeout(std::time::Duration::from_secs(10));
    let sqlite = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    paymux_ledger::migrate_sqlite(&sqlite).await.unwrap();
    let mut out = vec![TestPool {
        pool: LedgerPool::Sqlite(sqlite),
        _dir: dir,
    }];
    match std::env::var("PAYMUX_TEST_DATABASE_URL") {
        Ok(admin) if !admin.is_empty() => {
            let name = format!("ledger_test_{}", uuid::Uuid::now_v7().simple());
            let admin_pool = sqlx::PgPool::connect(&admin).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&admin_pool)
                .await
                .unwrap();
            admin_pool.close().await;
            let (base, _) = admin.rsplit_once('/').unwrap();
            let pg = sqlx::postgres::PgPoolOptions::new()
                .max_connections(8)
                .connect(&format!("{base}/{name}"))
                .await
                .unwrap();
            paymux_ledger::migrate_postgres(&pg).await.unwrap();
            out.push(TestPool {
                pool: LedgerPool::Postgres(pg),
                _dir: tempfile::tempdir().unwrap(),
            });
        }
        _ => eprintln!("PAYMUX_TEST_DATABASE_URL not set: ran on SQLite only"),
    }
    out
}

fn name(pool: &LedgerPool) -> &'static str {
    match pool {
        LedgerPool::Sqlite(_) => "sqlite",
        LedgerPool::Postgres(_) => "postgres",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posters_on_one_hot_merchant_account_lose_nothing() {
    for t in pools().await {
        let ledger = Ledger::start(t.pool.clone(), LedgerConfig::default());
        let merchant = MerchantId::new();
        let channel = ChannelAccountId::new();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    let mut total = 0i64;
                    for round in 0..25 {
                        let entries: Vec<_> = (0..20)
                            .map(|i| {
                                let amount = 100 + round * 20 + i;
                                total += amount;
                                rules::payment_succeeded(
                                    PaymentId::new(),
                                    merchant,
                                    channel,
                                    Money::cny(amount),
                                    60,
                                    38,
                                    0,
                                )
                            })
                            .collect();
                        let results = ledger.post(entries).await.unwrap();
                        assert!(
                            results.iter().all(|r| *r == EntryResult::Created),
                            "{results:?}"
                        );
                    }
                    total
                })
            })
            .collect();
        let mut gross = 0i64;
        for task in tasks {
            gross += task.await.unwrap();
        }
        let receivable = balance_by_code(
            &t.pool,
            &chart::channel_receivable(channel, Currency::Cny).code,
        )
        .await
        .unwrap();
        let fees = balance_by_code(&t.pool, &chart::channel_fees(channel, Currency::Cny).code)
            .await
            .unwrap();
        let payable = balance_by_code(
            &t.pool,
            &chart::merchant_payable(merchant, Currency::Cny).code,
        )
        .await
        .unwrap();
        assert_eq!(
            receivable.posted_minor() + fees.posted_minor(),
            i128::from(gross),
            "{}",
            name(&t.pool)
        );
        let report = audit(&t.pool, AuditOptions::default()).await.unwrap();
        assert!(report.is_clean(), "{}: {report}", name(&t.pool));
        assert_eq!(report.entries, 8 * 25 * 20);
        assert!(payable.posted_minor() > 0 && payable.posted_minor() < i128::from(gross));
    }
}

#[tokio::test]
async fn a_batch_rolled_back_before_commit_leaves_nothing_and_a_retry_posts_once() {
    for t in pools().await {
        let entry = rules::payment_succeeded(
            PaymentId::new(),
            MerchantId::new(),
            ChannelAccountId::new(),
            Money::cny(10_000),
            60,
            38,
            0,
        );
        // The "crash": the transaction is dropped without COMMIT.
        match &t.pool {
            LedgerPool::Sqlite(p) => {
                let mut tx = p.begin().await.unwrap();
                let r = paymux_ledger::post_sqlite(
                    &mut tx,
                    std::slice::from_ref(&entry),
                    PostOptions::default(),
                )
                .await
                .unwrap();
                assert_eq!(r, vec![EntryResult::Created]);
                drop(tx);
            }
            LedgerPool::Postgres(p) => {
                let mut tx = p.begin().await.unwrap();
                let r = paymux_ledger::post_postgres(
                    &mut tx,
                    std::slice::from_ref(&entry),
                    PostOptions::default(),
                )
                .await
                .unwrap();
                assert_eq!(r, vec![EntryResult::Created]);
                drop(tx);
            }
        }
        let report = audit(&t.pool, AuditOptions::default()).await.unwrap();
        assert_eq!(
            (report.entries, report.postings),
            (0, 0),
            "{}: nothing survives the rollback",
            name(&t.pool)
        );
        let ledger = Ledger::start(t.pool.clone(), LedgerConfig::default());
        assert_eq!(
            ledger.post(vec![entry.clone()]).await.unwrap(),
            vec![EntryResult::Created]
        );
        assert_eq!(
            ledger.post(vec![entry.clone()]).await.unwrap(),
            vec![EntryResult::Exists]
        );
        let mut changed = entry.clone();
        changed.postings.reverse();
        changed.postings.truncate(2);
        assert_ne!(
            ledger.post(vec![changed]).await.unwrap()[0],
            EntryResult::Created,
            "same id, other content"
        );
        let report = audit(&t.pool, AuditOptions::default()).await.unwrap();
        assert_eq!(report.entries, 1);
        assert!(report.is_clean(), "{report}");
    }
}

#[tokio::test]
async fn a_payment_refunded_in_parts_nets_to_zero_everywhere() {
    for t in pools().await {
        let ledger = Ledger::start(t.pool.clone(), LedgerConfig::default());
        let (payment, merchant, channel) =
            (PaymentId::new(), MerchantId::new(), ChannelAccountId::new());
        let amount = 10_001;
        let pay =
            rules::payment_succeeded(payment, merchant, channel, Money::cny(amount), 60, 38, 1);
        assert_eq!(
            ledger.post(vec![pay]).await.unwrap(),
            vec![EntryResult::Created]
        );
        let mut before = 0;
        for part in [3_333, 3_333, 3_335] {
            let ctx = RefundContext {
                payment_id: payment,
                merchant,
                channel_account: channel,
                payment_amount: Money::cny(amount),
                refunded_before_minor: before,
                merchant_fee_rate_bps: 60,
                channel_cost_rate_bps: 38,
            };
            let refund = rules::refund_succeeded(RefundId::new(), &ctx, Money::cny(part), 2);
            assert_eq!(
                ledger.post(vec![refund]).await.unwrap(),
                vec![EntryResult::Created]
            );
            before += part;
        }
        for code in [
            chart::channel_receivable(channel, Currency::Cny).code,
            chart::channel_fees(channel, Currency::Cny).code,
            chart::merchant_payable(merchant, Currency::Cny).code,
            chart::platform_fee_income(Currency::Cny).code,
        ] {
            let b = balance_by_code(&t.pool, &code).await.unwrap();
            assert_eq!(
                b.posted_minor(),
                0,
                "{}: {code} after a full refund",
                name(&t.pool)
            );
        }
        assert!(
            audit(&t.pool, AuditOptions::default())
                .await
                .unwrap()
                .is_clean()
        );
    }
}

/// Databases by URL for the multi-process test: a SQLite file, and a fresh PostgreSQL database when
/// `PAYMUX_TEST_DATABASE_URL` is set.
async fn database_urls(dir: &std::path::Path) -> Vec<(String, LedgerPool)> {
    let sqlite_url = format!("sqlite://{}/ledger.sqlite", dir.display());
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&sqlite_url)
        .unwrap()
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(30));
    let sqlite = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    paymux_ledger::migrate_sqlite(&sqlite).await.unwrap();
    let mut out = vec![(sqlite_url, LedgerPool::Sqlite(sqlite))];
    if let Ok(admin) = std::env::var("PAYMUX_TEST_DATABASE_URL")
        && !admin.is_empty()
    {
        let name = format!("ledger_test_{}", uuid::Uuid::now_v7().simple());
        let admin_pool = sqlx::PgPool::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin_pool)
            .await
            .unwrap();
        admin_pool.close().await;
        let (base, _) = admin.rsplit_once('/').unwrap();
        let url = format!("{base}/{name}");
        let pg = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .unwrap();
        paymux_ledger::migrate_postgres(&pg).await.unwrap();
        out.push((url, LedgerPool::Postgres(pg)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_and_this_one_posting_to_one_hot_account_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (url, pool) in database_urls(dir.path()).await {
        let merchant = MerchantId::new();
        let channel = ChannelAccountId::new();
        let spawn = || {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_paymux-ledger-writer"))
                .args(["--database-url", &url])
                .args([
                    "--merchant",
                    &merchant.to_string(),
                    "--channel",
                    &channel.to_string(),
                ])
                .args(["--batches", "15", "--batch-size", "40", "--tasks", "3"])
                .output()
        };
        let (a, b) = (spawn(), spawn());
        // This process posts to the same account meanwhile.
        let ledger = Ledger::start(pool.clone(), LedgerConfig::default());
        let mut gross = 0i64;
        let mut entries = 0i64;
        for round in 0..15 {
            let batch: Vec<_> = (0..40)
                .map(|i| {
                    let amount = 5_000 + round * 40 + i;
                    gross += amount;
                    rules::payment_succeeded(
                        PaymentId::new(),
                        merchant,
                        channel,
                        Money::cny(amount),
                        60,
                        38,
                        0,
                    )
                })
                .collect();
            entries += 40;
            assert!(
                ledger
                    .post(batch)
                    .await
                    .unwrap()
                    .iter()
                    .all(|r| *r == EntryResult::Created)
            );
        }
        for out in [a.await.unwrap(), b.await.unwrap()] {
            assert!(
                out.status.success(),
                "{}: writer failed: {}",
                name(&pool),
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            eprintln!("{}: writer {v}", name(&pool));
            gross += v["gross_minor"].as_i64().unwrap();
            entries += v["entries"].as_i64().unwrap();
        }
        assert_eq!(entries, 15 * 40 + 2 * 3 * 15 * 40);
        let receivable = balance_by_code(
            &pool,
            &chart::channel_receivable(channel, Currency::Cny).code,
        )
        .await
        .unwrap();
        let fees = balance_by_code(&pool, &chart::channel_fees(channel, Currency::Cny).code)
            .await
            .unwrap();
        assert_eq!(
            receivable.posted_minor() + fees.posted_minor(),
            i128::from(gross),
            "{}",
            name(&pool)
        );
        let report = audit(&pool, AuditOptions::default()).await.unwrap();
        assert!(report.is_clean(), "{}: {report}", name(&pool));
        assert_eq!(report.entries as i64, entries, "{}", name(&pool));
    }
}

/// Every column an entry carries comes back as it was posted (metadata, reference, effective time,
/// pending timeout, NULLs), two-phase entries resolve through the batched path, a statement's
/// running balances follow the application order, and re-posting answers `exists` or names the
/// difference — with several batches in flight at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_round_trip_and_two_phase_resolves_with_batches_in_flight() {
    use paymux_ledger::queries::{entries_by_reference, statement};
    use paymux_ledger::{EntryKind, NewEntry, NewPosting, Phase};
    use paymux_model::EntryId;

    for t in pools().await {
        // Small batches, several in flight: on PostgreSQL they plan on top of each other.
        let config = LedgerConfig {
            committers: 4,
            batch_entries_max: 2,
            ..LedgerConfig::default()
        };
        let ledger = Ledger::start(t.pool.clone(), config);
        let (merchant, channel) = (MerchantId::new(), ChannelAccountId::new());
        let payable = chart::merchant_payable(merchant, Currency::Cny);
        let receivable = chart::channel_receivable(channel, Currency::Cny);
        let reference = uuid::Uuid::now_v7();
        let metadata = serde_json::json!({"order": "A-1", "items": [1, 2], "note": "ünï\"code\""});
        let hold = NewEntry::posted(
            EntryId::new(),
            EntryKind::Payment,
            Some(reference),
            1_700_000_000_000_001,
            vec![
                NewPosting::debit(receivable.clone(), Money::cny(700)),
                NewPosting::credit(payable.clone(), Money::cny(700)),
            ],
        )
        .with_metadata(metadata.clone())
        .with_phase(Phase::Pending {
            timeout_ms: 3_600_000,
        });
        let voided = NewEntry::posted(
            EntryId::new(),
            EntryKind::Payment,
            None,
            7,
            vec![
                NewPosting::debit(receivable.clone(), Money::cny(50)),
                NewPosting::credit(payable.clone(), Money::cny(50)),
            ],
        )
        .with_phase(Phase::Pending { timeout_ms: 60_000 });
        // Many concurrent single-entry calls on the same two accounts: batches overlap.
        let mut calls = Vec::new();
        for i in 0..40 {
            let ledger = ledger.clone();
            let (receivable, payable) = (receivable.clone(), payable.clone());
            calls.push(tokio::spawn(async move {
                let e = NewEntry::posted(
                    EntryId::new(),
                    EntryKind::Payment,
                    None,
                    i,
                    vec![
                        NewPosting::debit(receivable, Money::cny(10)),
                        NewPosting::credit(payable, Money::cny(10)),
                    ],
                );
                ledger.post(vec![e]).await.unwrap()
            }));
        }
        assert_eq!(
            ledger
                .post(vec![hold.clone(), voided.clone()])
                .await
                .unwrap(),
            vec![EntryResult::Created, EntryResult::Created]
        );
        for c in calls {
            assert_eq!(c.await.unwrap(), vec![EntryResult::Created]);
        }
        let post_part = NewEntry::posted(
            EntryId::new(),
            EntryKind::Payment,
            Some(reference),
            1_700_000_000_000_002,
            vec![
                NewPosting::debit(receivable.clone(), Money::cny(600)),
                NewPosting::credit(payable.clone(), Money::cny(600)),
            ],
        )
        .with_phase(Phase::PostPending {
            pending_id: hold.id,
        });
        let void = NewEntry::posted(EntryId::new(), EntryKind::Payment, None, 8, vec![])
            .with_phase(Phase::VoidPending {
                pending_id: voided.id,
            });
        assert_eq!(
            ledger
                .post(vec![post_part.clone(), void.clone()])
                .await
                .unwrap(),
            vec![EntryResult::Created, EntryResult::Created]
        );
        let again = NewEntry::posted(EntryId::new(), EntryKind::Payment, None, 9, vec![])
            .with_phase(Phase::PostPending {
                pending_id: hold.id,
            });
        let mut other_metadata = hold.clone();
        other_metadata.metadata = serde_json::json!({"order": "A-2"});
        assert_eq!(
            ledger
                .post(vec![hold.clone(), other_metadata, again, post_part.clone()])
                .await
                .unwrap(),
            vec![
                EntryResult::Exists,
                EntryResult::ExistsWithDifferentMetadata,
                EntryResult::PendingAlreadyPosted,
                EntryResult::Exists,
            ],
            "{}",
            name(&t.pool)
        );

        let stored = entries_by_reference(&t.pool, reference).await.unwrap();
        assert_eq!(stored.len(), 2, "{}", name(&t.pool));
        let h = stored.iter().find(|e| e.id == hold.id).unwrap();
        assert_eq!(
            (
                h.phase.as_str(),
                &h.metadata,
                h.effective_at_us,
                h.pending_id
            ),
            ("pending", &metadata, 1_700_000_000_000_001, None),
            "{}",
            name(&t.pool)
        );
        assert_eq!(h.postings.len(), 2);
        assert!(
            h.postings
                .iter()
                .all(|p| p.is_pending && p.amount_minor == 700)
        );
        let p = stored.iter().find(|e| e.id == post_part.id).unwrap();
        assert_eq!(
            (p.phase.as_str(), p.pending_id, p.effective_at_us),
            ("post_pending", Some(hold.id), 1_700_000_000_000_002)
        );
        assert!(
            p.postings
                .iter()
                .all(|p| !p.is_pending && p.amount_minor == 600)
        );

        let b = balance_by_code(&t.pool, &payable.code).await.unwrap();
        assert_eq!(b.posted_minor(), 40 * 10 + 600, "{}", name(&t.pool));
        assert_eq!((b.debits_pending, b.credits_pending), (0, 0));
        // Running balances: each line's total is the previous one plus its own amount.
        let page = statement(&t.pool, payable.id(), None, 1000).await.unwrap();
        assert_eq!(page.lines.len(), 40 + 2 + 1, "{}", name(&t.pool));
        let mut running = 0i128;
        for line in &page.lines {
            if !line.is_pending {
                running += i128::from(line.amount_minor);
            }
            assert_eq!(line.running_balance_minor, running, "{}", name(&t.pool));
        }
        let report = audit(&t.pool, AuditOptions::default()).await.unwrap();
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.open_pending, 0);
        if let LedgerPool::Postgres(_) = t.pool {
            // Nobody else writes: batches planned on top of batches still in flight pass their
            // checks (each compares with the version the previous batch commits, not with the
            // statement's snapshot).
            let stats = ledger.pipeline_stats();
            assert_eq!(stats.checks_failed, 0, "{stats:?}");
            assert!(stats.locked_last > 1, "{stats:?}");
        }
    }
}

#[tokio::test]
async fn a_statement_between_two_times_lists_only_the_postings_effective_in_between() {
    use paymux_ledger::queries::statement_between;
    for t in pools().await {
        let ledger = Ledger::start(t.pool.clone(), LedgerConfig::default());
        let (merchant, channel) = (MerchantId::new(), ChannelAccountId::new());
        let entries = [100, 200, 300]
            .into_iter()
            .map(|at_us| {
                rules::payment_succeeded(
                    PaymentId::new(),
                    merchant,
                    channel,
                    Money::cny(10_000),
                    0,
                    0,
                    at_us,
                )
            })
            .collect();
        ledger.post(entries).await.unwrap();
        let payable = chart::merchant_payable(merchant, Currency::Cny).id();
        let all = statement_between(&t.pool, payable, None, None, None, 100)
            .await
            .unwrap();
        assert_eq!(all.lines.len(), 3, "{}", name(&t.pool));
        let mid = statement_between(&t.pool, payable, Some(200), Some(300), None, 100)
            .await
            .unwrap();
        assert_eq!(mid.lines.len(), 1, "{}", name(&t.pool));
        assert_eq!(mid.lines[0].effective_at_us, 200);
        assert_eq!(
            mid.lines[0].running_balance_minor, 20_000,
            "the account's total after it"
        );
        let paged = statement_between(&t.pool, payable, Some(150), None, None, 1)
            .await
            .unwrap();
        assert_eq!(paged.lines.len(), 1);
        let next = statement_between(&t.pool, payable, Some(150), None, paged.next_after_seq, 1)
            .await
            .unwrap();
        assert_eq!(next.lines[0].effective_at_us, 300);
    }
}

/// Posts `entries` in a transaction of their own, as another writer of the same database would.
async fn post_directly(pool: &LedgerPool, entries: &[paymux_ledger::NewEntry]) -> Vec<EntryResult> {
    match pool {
        LedgerPool::Sqlite(p) => {
            let mut tx = p.begin().await.unwrap();
            let r = paymux_ledger::post_sqlite(&mut tx, entries, PostOptions::default())
                .await
                .unwrap();
            tx.commit().await.unwrap();
            r
        }
        LedgerPool::Postgres(p) => {
            let mut tx = p.begin().await.unwrap();
            let r = paymux_ledger::post_postgres(&mut tx, entries, PostOptions::default())
                .await
                .unwrap();
            tx.commit().await.unwrap();
            r
        }
    }
}

/// A ledger with default config, and three wallet users of whom the first was topped up with 100
/// through it (one batch).
async fn a_ledger_and_alice_with_100(
    pool: &LedgerPool,
) -> (Ledger, [paymux_model::WalletUserId; 3]) {
    use paymux_model::WalletUserId;
    let ledger = Ledger::start(pool.clone(), LedgerConfig::default());
    let users = [
        WalletUserId::new(),
        WalletUserId::new(),
        WalletUserId::new(),
    ];
    let top_up = rules::wallet_top_up(uuid::Uuid::now_v7(), users[0], "icbc", Money::cny(100), 1);
    assert_eq!(
        ledger.post(vec![top_up]).await.unwrap(),
        vec![EntryResult::Created]
    );
    (ledger, users)
}

/// The pipelined ledger plans against the balances it last wrote itself. When another writer
/// changed an account in between, the batch's check fails, the batch is posted again under locks,
/// and the answer is the one the real balance gives: a wallet holding 20 cannot pay 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_changed_by_another_writer_is_what_the_pipelined_ledger_checks_against() {
    use paymux_ledger::queries::statement;

    for t in pools().await {
        let (ledger, [alice, bob, carol]) = a_ledger_and_alice_with_100(&t.pool).await;
        // Another writer spends 80 of alice's 100 behind the ledger's back.
        let spent = rules::wallet_transfer(uuid::Uuid::now_v7(), alice, bob, Money::cny(80), 2);
        assert_eq!(
            post_directly(&t.pool, &[spent]).await,
            vec![EntryResult::Created]
        );
        let too_much =
            rules::wallet_transfer(uuid::Uuid::now_v7(), alice, carol, Money::cny(50), 3);
        let rest = rules::wallet_transfer(uuid::Uuid::now_v7(), alice, carol, Money::cny(20), 4);
        assert_eq!(
            ledger.post(vec![too_much, rest]).await.unwrap(),
            vec![EntryResult::ExceedsCredits, EntryResult::Created],
            "{}",
            name(&t.pool)
        );
        let wallet = chart::wallet_balance(alice, Currency::Cny);
        let b = balance_by_code(&t.pool, &wallet.code).await.unwrap();
        assert_eq!(
            (b.debits_posted, b.credits_posted),
            (100, 100),
            "{}",
            name(&t.pool)
        );
        let lines = statement(&t.pool, wallet.id(), None, 100)
            .await
            .unwrap()
            .lines;
        let running: Vec<i128> = lines.iter().map(|l| l.running_balance_minor).collect();
        assert_eq!(running, vec![100, 20, 0], "{}", name(&t.pool));
        let report = audit(&t.pool, AuditOptions::default()).await.unwrap();
        assert!(report.is_clean(), "{}: {report}", name(&t.pool));
        let stats = ledger.pipeline_stats();
        match t.pool {
            LedgerPool::Postgres(_) => assert_eq!(
                (stats.locked_last, stats.checks_failed),
                (1, 1),
                "the top-up locked last; the payment failed its check and was posted again"
            ),
            LedgerPool::Sqlite(_) => assert_eq!(stats, Default::default()),
        }
    }
}

/// The same entry submitted by many callers at once, one batch each, several batches in flight:
/// one caller gets `created`, the others `exists`, and it is posted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_entry_in_several_batches_in_flight_is_posted_once() {
    use paymux_model::WalletUserId;

    for t in pools().await {
        let config = LedgerConfig {
            batch_entries_max: 1,
            committers: 4,
            ..LedgerConfig::default()
        };
        let ledger = Ledger::start(t.pool.clone(), config);
        let user = WalletUserId::new();
        let twice = rules::wallet_top_up(uuid::Uuid::now_v7(), user, "icbc", Money::cny(500), 1);
        let mut calls = Vec::new();
        for i in 0..24 {
            let ledger = ledger.clone();
            let entry = if i % 2 == 0 {
                twice.clone()
            } else {
                rules::wallet_top_up(uuid::Uuid::now_v7(), user, "icbc", Money::cny(1), 1)
            };
            calls.push(tokio::spawn(async move { ledger.post(vec![entry]).await }));
        }
        let mut created_twice = 0;
        for (i, c) in calls.into_iter().enumerate() {
            let r = c.await.unwrap().unwrap();
            if i % 2 == 0 {
                assert!(
                    matches!(r[0], EntryResult::Created | EntryResult::Exists),
                    "{}: {r:?}",
                    name(&t.pool)
                );
                created_twice += usize::from(r[0] == EntryResult::Created);
            } else {
                assert_eq!(r, vec![EntryResult::Created], "{}", name(&t.pool));
            }
        }
        assert_eq!(created_twice, 1, "{}", name(&t.pool));
        let wallet = chart::wallet_balance(user, Currency::Cny);
        let b = balance_by_code(&t.pool, &wallet.code).await.unwrap();
        assert_eq!(b.credits_posted, 500 + 12, "{}", name(&t.pool));
        let report = audit(&t.pool, AuditOptions::default()).await.unwrap();
        assert!(report.is_clean(), "{}: {report}", name(&t.pool));
        assert_eq!(report.entries, 13, "{}", name(&t.pool));
        if let LedgerPool::Postgres(_) = t.pool {
            let stats = ledger.pipeline_stats();
            assert!(
                stats.locked_first >= 1,
                "a batch met the entry in flight in another: {stats:?}"
            );
        }
    }
}

/// Another writer holds money on an account and releases it again between two of the pipelined
/// ledger's batches: the balances are back where they were, but the row was written, so the next
/// batch's check fails (it compares the row's version too) and the batch is posted locks-first,
/// after that writer's postings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_made_and_released_by_another_writer_fails_the_pipelined_check() {
    use paymux_ledger::{EntryKind, NewEntry, NewPosting, Phase};
    use paymux_model::EntryId;

    for t in pools().await {
        let (ledger, [alice, bob, carol]) = a_ledger_and_alice_with_100(&t.pool).await;
        let (from, to) = (
            chart::wallet_balance(alice, Currency::Cny),
            chart::wallet_balance(bob, Currency::Cny),
        );
        let hold = NewEntry::posted(
            EntryId::new(),
            EntryKind::WalletTransfer,
            None,
            2,
            vec![
                NewPosting::debit(from.clone(), Money::cny(30)),
                NewPosting::credit(to, Money::cny(30)),
            ],
        )
        .with_phase(Phase::Pending { timeout_ms: 60_000 });
        let release = NewEntry::posted(EntryId::new(), EntryKind::WalletTransfer, None, 3, vec![])
            .with_phase(Phase::VoidPending {
                pending_id: hold.id,
            });
        assert_eq!(
            post_directly(&t.pool, &[hold]).await,
            vec![EntryResult::Created]
        );
        assert_eq!(
            post_directly(&t.pool, &[release]).await,
            vec![EntryResult::Created]
        );
        let pay = rules::wallet_transfer(uuid::Uuid::now_v7(), alice, carol, Money::cny(10), 4);
        assert_eq!(
            ledger.post(vec![pay]).await.unwrap(),
            vec![EntryResult::Created]
        );
        let b = balance_by_code(&t.pool, &from.code).await.unwrap();
        assert_eq!(
            (b.debits_posted, b.credits_posted, b.debits_pending),
            (10, 100, 0),
            "{}",
            name(&t.pool)
        );
        let report = audit(&t.pool, AuditOptions::default()).await.unwrap();
        assert!(report.is_clean(), "{}: {report}", name(&t.pool));
        if let LedgerPool::Postgres(_) = t.pool {
            let stats = ledger.pipeline_stats();
            assert_eq!(
                (stats.locked_last, stats.checks_failed),
                (1, 1),
                "the payment's check saw the row written meanwhile"
            );
        }
    }
}

/// The same payment of a wallet's whole balance submitted by many callers at once, one batch each,
/// several batches in flight: one caller gets `created`, every other `exists` — never
/// `exceeds_credits` from a copy planned against the balance the first copy spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_spending_entry_in_several_batches_in_flight_is_never_rejected_by_its_own_copy() {
    use paymux_model::WalletUserId;

    for t in pools().await {
        let config = LedgerConfig {
            batch_entries_max: 1,
            committers: 4,
            ..LedgerConfig::default()
        };
        let ledger = Ledger::start(t.pool.clone(), config);
        let [alice, bob, carol] = [
            WalletUserId::new(),
            WalletUserId::new(),
            WalletUserId::new(),
        ];
        let top_up = rules::wallet_top_up(uuid::Uuid::now_v7(), alice, "icbc", Money::cny(100), 1);
        assert_eq!(
            ledger.post(vec![top_up]).await.unwrap(),
            vec![EntryResult::Created]
        );
        let all = rules::wallet_transfer(uuid::Uuid::now_v7(), alice, bob, Money::cny(100), 2);
        let mut calls = Vec::new();
        for i in 0..24 {
            let ledger = ledger.clone();
            let entry = if i % 2 == 0 {
                all.clone()
            } else {
                rules::wallet_top_up(uuid::Uuid::now_v7(), carol, "icbc", Money::cny(1), 3)
            };
            calls.push(tokio::spawn(async move { ledger.post(vec![entry]).await }));
        }
        let mut created = 0;
        for (i, c) in calls.into_iter().enumerate() {
            let r = c.await.unwrap().unwrap();
            if i % 2 == 0 {
                assert!(
                    matches!(r[0], EntryResult::Created | EntryResult::Exists),
                    "{}: {r:?}",
                    name(&t.pool)
                );
                created += usize::from(r[0] == EntryResult::Created);
            } else {
                assert_eq!(r, vec![EntryResult::Created], "{}", name(&t.pool));
            }
        }
        assert_eq!(created, 1, "{}", name(&t.pool));
        let wallet = chart::wallet_balance(alice, Currency::Cny);
        let b = balance_by_code(&t.pool, &wallet.code).await.unwrap();
        assert_eq!(
            (b.debits_posted, b.credits_posted),
            (100, 100),
            "{}",
            name(&t.pool)
        );
        let report = audit(&t.pool, AuditOptions::default()).await.unwrap();
        assert!(report.is_clean(), "{}: {report}", name(&t.pool));
    }
}

/// A NUL character in an entry's metadata is refused as `metadata_invalid` on every backend, and
/// only that entry: PostgreSQL's `jsonb` cannot store it, and the batch it came in must go through.
#[tokio::test]
async fn metadata_with_a_nul_character_is_refused_alone() {
    for t in pools().await {
        let (ledger, [alice, bob, _]) = a_ledger_and_alice_with_100(&t.pool).await;
        let pay = |amount: i64| {
            rules::wallet_transfer(uuid::Uuid::now_v7(), alice, bob, Money::cny(amount), 2)
        };
        let in_value = pay(10).with_metadata(serde_json::json!({ "note": "a\u{0}b" }));
        let in_key = pay(10).with_metadata(serde_json::json!({ "k\u{0}": [1, { "x": "ok" }] }));
        let nested = pay(10).with_metadata(serde_json::json!([{ "deep": ["\u{0}"] }]));
        let fine = pay(30).with_metadata(serde_json::json!({ "note": "a\\u0000b is text" }));
        let results = ledger
            .post(vec![in_value, in_key, fine.clone(), nested])
            .await
            .unwrap();
        assert_eq!(
            results,
            vec![
                EntryResult::MetadataInvalid,
                EntryResult::MetadataInvalid,
                EntryResult::Created,
                EntryResult::MetadataInvalid
            ],
            "{}",
            name(&t.pool)
        );
        let direct = pay(5).with_metadata(serde_json::json!({ "note": "\u{0}" }));
        assert_eq!(
            post_directly(&t.pool, &[direct]).await,
            vec![EntryResult::MetadataInvalid],
            "{}",
            name(&t.pool)
        );
        let alice_code = chart::wallet_balance(alice, Currency::Cny).code;
        let balance = balance_by_code(&t.pool, &alice_code).await.unwrap();
        assert_eq!(balance.posted_minor(), 70, "{}", name(&t.pool));
        let report = audit(&t.pool, AuditOptions::default()).await.unwrap();
        assert!(report.is_clean(), "{}: {report:?}", name(&t.pool));
    }
}
