//! `paymux-ledger-bench`: the batched ledger against a naive one-transaction-per-entry ledger, on
//! PostgreSQL, in the same run, for three loads: uniform random pairs over 10,000 accounts, one hot
//! merchant account credited by every entry, and 20% two-phase entries. Prints entries/s, p50/p99
//! commit latency and the ratio, then runs the audit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use paymux_ledger::audit::{AuditOptions, audit};
use paymux_ledger::{
    AccountFlags, AccountKind, AccountSpec, EntryKind, Ledger, LedgerConfig, LedgerPool, NewEntry,
    NewPosting, Phase,
};
use paymux_model::{Currency, EntryId, Money};
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use tokio::sync::Mutex;

#[derive(Debug, Parser)]
#[command(about = "Batched ledger vs a naive ledger on PostgreSQL")]
struct Args {
    /// Admin URL of a PostgreSQL server; a fresh database is created on it.
    #[arg(long, env = "PAYMUX_BENCH_DATABASE_URL")]
    database_url: String,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent submitters for the batched ledger (each submits `chunk` entries per call); by
    /// default as many as the naive ledger's connections.
    #[arg(long, default_value_t = 16)]
    submitters: usize,
    #[arg(long, default_value_t = 512)]
    chunk: usize,
    /// Concurrent connections for the naive ledger.
    #[arg(long, default_value_t = 16)]
    naive_connections: usize,
    /// Batches in flight at once (default: the ledger's default).
    #[arg(long)]
    committers: Option<usize>,
    /// Take balance locks first, holding them while entries and postings are written (the
    /// ledger's path before pipelining), instead of last.
    #[arg(long)]
    locks_first: bool,
    /// Loads to measure, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "uniform,hot-account,two-phase"
    )]
    loads: Vec<Load>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Load {
    Uniform,
    HotAccount,
    TwoPhase,
}

const ACCOUNTS: usize = 10_000;

fn account(i: usize) -> AccountSpec {
    AccountSpec {
        code: format!("bench:acct:{i}"),
        kind: if i.is_multiple_of(2) {
            AccountKind::Asset
        } else {
            AccountKind::Liability
        },
        currency: Currency::Cny,
        flags: AccountFlags::NONE,
    }
}

fn hot() -> AccountSpec {
    AccountSpec {
        code: "bench:merchant:hot:payable".into(),
        kind: AccountKind::Liability,
        currency: Currency::Cny,
        flags: AccountFlags::NONE,
    }
}

/// The (debit, credit) accounts of the next entry.
fn pair(load: Load, rng: &mut impl Rng) -> (usize, Option<usize>) {
    let a = rng.gen_range(0..ACCOUNTS);
    match load {
        Load::HotAccount => (a % 100, None),
        _ => {
            let mut b = rng.gen_range(0..ACCOUNTS);
            if b == a {
                b = (b + 1) % ACCOUNTS;
            }
            (a, Some(b))
        }
    }
}

struct Stats {
    entries: u64,
    latency_us: Histogram<u64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            entries: 0,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let admin = PgPool::connect(&args.database_url)
        .await
        .context("connect")?;
    let name = format!("ledger_bench_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let (base, _) = args
        .database_url
        .rsplit_once('/')
        .context("database URL has a path")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections((args.naive_connections + 4) as u32)
        .connect(&format!("{base}/{name}"))
        .await?;
    paymux_ledger::migrate_postgres(&pool).await?;
    create_naive_schema(&pool).await?;
    println!(
        "database {name}; {} s per measurement; batched: {} submitters × {} entries per call; naive: {} connections",
        args.seconds, args.submitters, args.chunk, args.naive_connections
    );
    let defaults = LedgerConfig::default();
    let config = LedgerConfig {
        committers: args.committers.unwrap_or(defaults.committers),
        pipelined: !args.locks_first,
        ..defaults
    };
    println!(
        "batched ledger: {} batches in flight, balance locks taken {}",
        config.committers,
        if config.pipelined { "last" } else { "first" }
    );
    let ledger = Ledger::start(LedgerPool::Postgres(pool.clone()), config);
    println!(
        "{:<12} {:>14} {:>10} {:>10} {:>14} {:>10} {:>10} {:>8}",
        "load", "batched e/s", "p50 ms", "p99 ms", "naive e/s", "p50 ms", "p99 ms", "ratio"
    );

    for &load in &args.loads {
        // Like pgbench: vacuum before each measurement, so that the cleanup of the previous one
        // does not land inside it.
        sqlx::query("VACUUM (ANALYZE)").execute(&pool).await?;
        let batched = run_batched(&ledger, load, &args).await?;
        sqlx::query("VACUUM (ANALYZE)").execute(&pool).await?;
        let naive = run_naive(&pool, load, &args).await?;
        let rate = |s: &Stats| s.entries as f64 / args.seconds as f64;
        let ms = |s: &Stats, q: f64| s.latency_us.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:<12} {:>14.0} {:>10.2} {:>10.2} {:>14.0} {:>10.2} {:>10.2} {:>7.1}×",
            format!("{load:?}"),
            rate(&batched),
            ms(&batched, 0.5),
            ms(&batched, 0.99),
            rate(&naive),
            ms(&naive, 0.5),
            ms(&naive, 0.99),
            rate(&batched) / rate(&naive).max(1.0)
        );
    }
    let stats = ledger.pipeline_stats();
    println!(
        "\nbatched ledger: {} batches took their balance locks last, {} first (an entry in flight \
         twice, or after a failed check), {} failed their balance check and were posted again",
        stats.locked_last, stats.locked_first, stats.checks_failed
    );
    let report = audit(&LedgerPool::Postgres(pool.clone()), AuditOptions::default()).await?;
    println!("\naudit of the batched ledger:\n{report}");
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    anyhow::ensure!(report.is_clean(), "audit found breaches");
    Ok(())
}

async fn run_batched(ledger: &Ledger, load: Load, args: &Args) -> anyhow::Result<Stats> {
    let stats = Arc::new(Mutex::new(Stats::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.submitters {
        let (ledger, stats, stop, chunk) =
            (ledger.clone(), stats.clone(), stop.clone(), args.chunk);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_entropy();
            let mut pending: Vec<(EntryId, i64)> = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut entries = Vec::with_capacity(chunk);
                // Two-phase: post the previous call's holds first.
                for (pending_id, _) in pending.drain(..) {
                    entries.push(
                        NewEntry::posted(EntryId::new(), EntryKind::Payment, None, 0, vec![])
                            .with_phase(Phase::PostPending { pending_id }),
                    );
                }
                while entries.len() < chunk {
                    let (a, b) = pair(load, &mut rng);
                    let amount = Money::cny(rng.gen_range(1..10_000));
                    let credit = b.map(account).unwrap_or_else(hot);
                    let mut e = NewEntry::posted(
                        EntryId::new(),
                        EntryKind::Payment,
                        None,
                        0,
                        vec![
                            NewPosting::debit(account(a), amount),
                            NewPosting::credit(credit, amount),
                        ],
                    );
                    if load == Load::TwoPhase && rng.gen_ratio(1, 5) {
                        e = e.with_phase(Phase::Pending {
                            timeout_ms: 3_600_000,
                        });
                        pending.push((e.id, amount.amount_minor()));
                    }
                    entries.push(e);
                }
                let n = entries.len() as u64;
                let started = Instant::now();
                let results = ledger.post(entries).await.expect("post");
                let elapsed = started.elapsed();
                let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
                assert_eq!(ok, n, "every bench entry is valid: {results:?}");
                let mut s = stats.lock().await;
                if Instant::now() <= deadline {
                    s.entries += n;
                    let _ = s.latency_us.record(elapsed.as_micros().max(1) as u64);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    stop.store(true, Ordering::Relaxed);
    Ok(Arc::try_unwrap(stats)
        .ok()
        .context("stats still shared")?
        .into_inner())
}

async fn create_naive_schema(pool: &PgPool) -> anyhow::Result<()> {
    for sql in [
        "CREATE TABLE naive_accounts (id BIGINT PRIMARY KEY, debits_posted BIGINT NOT NULL DEFAULT 0, \
         credits_posted BIGINT NOT NULL DEFAULT 0, debits_pending BIGINT NOT NULL DEFAULT 0, credits_pending BIGINT NOT NULL DEFAULT 0)",
        "CREATE TABLE naive_entries (id UUID PRIMARY KEY, phase TEXT NOT NULL, created_at_us BIGINT NOT NULL)",
        "CREATE TABLE naive_postings (entry_id UUID NOT NULL, leg INT NOT NULL, account_id BIGINT NOT NULL, \
         is_credit BOOLEAN NOT NULL, amount_minor BIGINT NOT NULL, PRIMARY KEY (entry_id, leg))",
        "INSERT INTO naive_accounts (id) SELECT g FROM generate_series(0, 10000) g",
    ] {
        sqlx::query(sql).execute(pool).await?;
    }
    Ok(())
}

/// One transaction per entry: lock the touched balance rows, update them, insert the entry.
async fn run_naive(pool: &PgPool, load: Load, args: &Args) -> anyhow::Result<Stats> {
    let stats = Arc::new(Mutex::new(Stats::new()));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.naive_connections {
        let (pool, stats, count) = (pool.clone(), stats.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_entropy();
            let mut held: Option<(uuid::Uuid, i64, i64, i64)> = None;
            while Instant::now() < deadline {
                let started = Instant::now();
                let result: anyhow::Result<()> = async {
                    let mut tx = pool.begin().await?;
                    if let Some((id, debit, credit, amount)) = held.take() {
                        // Post a held entry: move pending to posted.
                        let ids = [debit.min(credit), debit.max(credit)];
                        sqlx::query("SELECT id FROM naive_accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                            .bind(&ids[..])
                            .fetch_all(&mut *tx)
                            .await?;
                        sqlx::query("UPDATE naive_accounts SET debits_pending = debits_pending - $2, debits_posted = debits_posted + $2 WHERE id = $1")
                            .bind(debit).bind(amount).execute(&mut *tx).await?;
                        sqlx::query("UPDATE naive_accounts SET credits_pending = credits_pending - $2, credits_posted = credits_posted + $2 WHERE id = $1")
                            .bind(credit).bind(amount).execute(&mut *tx).await?;
                        sqlx::query("UPDATE naive_entries SET phase = 'posted' WHERE id = $1").bind(id).execute(&mut *tx).await?;
                    } else {
                        let (a, b) = pair(load, &mut rng);
                        let debit = a as i64;
                        let credit = b.map(|b| b as i64).unwrap_or(10_000);
                        let amount: i64 = rng.gen_range(1..10_000);
                        let pending = load == Load::TwoPhase && rng.gen_ratio(1, 5);
                        let ids = [debit.min(credit), debit.max(credit)];
                        sqlx::query("SELECT id FROM naive_accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                            .bind(&ids[..])
                            .fetch_all(&mut *tx)
                            .await?;
                        let (dcol, ccol) = if pending { ("debits_pending", "credits_pending") } else { ("debits_posted", "credits_posted") };
                        sqlx::query(&format!("UPDATE naive_accounts SET {dcol} = {dcol} + $2 WHERE id = $1"))
                            .bind(debit).bind(amount).execute(&mut *tx).await?;
                        sqlx::query(&format!("UPDATE naive_accounts SET {ccol} = {ccol} + $2 WHERE id = $1"))
                            .bind(credit).bind(amount).execute(&mut *tx).await?;
                        let id = uuid::Uuid::now_v7();
                        sqlx::query("INSERT INTO naive_entries (id, phase, created_at_us) VALUES ($1, $2, $3)")
                            .bind(id).bind(if pending { "pending" } else { "posted" }).bind(paymux_ledger::now_us())
                            .execute(&mut *tx).await?;
                        sqlx::query("INSERT INTO naive_postings (entry_id, leg, account_id, is_credit, amount_minor) VALUES ($1, 0, $2, FALSE, $4), ($1, 1, $3, TRUE, $4)")
                            .bind(id).bind(debit).bind(credit).bind(amount).execute(&mut *tx).await?;
                        if pending {
                            held = Some((id, debit, credit, amount));
                        }
                    }
                    tx.commit().await?;
                    Ok(())
                }
                .await;
                if let Err(e) = result {
                    eprintln!("naive entry failed: {e:#}");
                    continue;
                }
                count.fetch_add(1, Ordering::Relaxed);
                if Instant::now() <= deadline {
                    let mut s = stats.lock().await;
                    s.entries += 1;
                    let _ = s.latency_us.record(started.elapsed().as_micros().max(1) as u64);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(Arc::try_unwrap(stats)
        .ok()
        .context("stats still shared")?
        .into_inner())
}
