//! `paymux-recon-bench`: reconciliation of one day end to end, with a database. Not a timed test.
//!
//! 1. Seeds a fresh database (SQLite in `--data-dir`, or the PostgreSQL database of
//!    `--database-url`, created when missing) with one merchant and its sandbox channel accounts,
//!    and one day of N WeChat payments with their ledger entries, and the WeChat sandbox's books
//!    with the same orders ([`paymux::reconciliation::bench`]: a few of every class planted).
//! 2. Serves the sandboxes on a loopback port, as `paymux serve` mounts them (`/sandbox/…`).
//! 3. Runs `paymux reconcile --date D` — the same code — in a child process (`reconcile`
//!    subcommand), which prints its wall time per stage, the records/s and its own peak resident
//!    memory (`VmHWM`); then once more (a rerun must post nothing new).
//! 4. Checks the classes found against those planted, that the rerun changed no ledger entry, and
//!    audits the books (`paymux ledger audit`).
//!
//! ```text
//! paymux-recon-bench --records 1000000 --database-url postgres://postgres@127.0.0.1:55432/paymux_recon_bench
//! paymux-recon-bench --records 100000 --data-dir /tmp/recon-bench     # SQLite
//! ```

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use chrono::{NaiveDate, Utc};
use chrono_tz::Asia::Shanghai;
use clap::{Parser, Subcommand};
use paymux::config::{Config, Secret};
use paymux::db::Db;
use paymux::reconciliation::bench::{SeedAccount, SeedOptions, seed_day};
use paymux::reconciliation::{self, Progress};
use paymux_model::ChannelKind;

#[derive(Parser)]
#[command(
    name = "paymux-recon-bench",
    about = "Reconciliation of one day end to end: seed, reconcile, rerun, audit"
)]
struct Cli {
    /// Payments of the day (the WeChat sandbox's books hold as many orders).
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// The day (Asia/Shanghai); default: yesterday.
    #[arg(long)]
    date: Option<NaiveDate>,
    /// How many of each class to plant.
    #[arg(long, default_value_t = 10)]
    planted: usize,
    /// Data directory (sandbox books, keys, reports, payout files; the SQLite database when no
    /// `--database-url`). Must not exist yet. Default: a new directory under /tmp.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL database (created when missing; it must hold no payments).
    #[arg(long)]
    database_url: Option<String>,
    /// Skip the rerun.
    #[arg(long)]
    no_rerun: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The measured part: `paymux reconcile --date D` for every channel account, configured by
    /// the `PAYMUX_*` environment like `paymux`; prints stage times and peak memory.
    Reconcile {
        #[arg(long)]
        date: NaiveDate,
    },
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Reconcile { date }) => measured_reconcile(date).await,
        None => drive(cli).await,
    }
}

/// The child: what `paymux reconcile --date D` does, with a clock on every stage.
async fn measured_reconcile(day: NaiveDate) -> anyhow::Result<()> {
    let config = Config::load(None).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let started = Instant::now();
    let stages: Mutex<Vec<(String, f64, Option<u64>)>> = Mutex::new(Vec::new());
    let mark = |name: String| {
        if let Ok(mut s) = stages.lock() {
            s.push((
                name,
                started.elapsed().as_secs_f64(),
                proc_status_kib("VmRSS:"),
            ));
        }
    };
    mark("open database, load accounts".into());
    let (state, _sandboxes) = reconciliation::standalone_state(config).await?;
    let progress = |p: Progress<'_>| match p {
        Progress::Account { name, .. } => mark(format!("{name}: start")),
        Progress::Stage(s) => mark(s.to_string()),
        Progress::Lines(_) => {}
    };
    let result = reconciliation::run_day(&state, day, None, &progress).await;
    mark("close".into());
    state.batcher.shutdown().await;
    state.db.close().await;
    let wall = started.elapsed().as_secs_f64();
    let report = result?;
    print!("{}", reconciliation::report::summary_table(&report));
    let stages = stages.into_inner().unwrap_or_default();
    println!("stage                                   starts at   takes    RSS then");
    for (i, (name, at, rss)) in stages.iter().enumerate() {
        let next = stages.get(i + 1).map_or(wall, |s| s.1);
        println!(
            "  {name:<36} {at:>8.2} s {:>7.2} s  {:>9}",
            next - at,
            mib(*rss)
        );
    }
    let channel: u64 = report.accounts.iter().map(|a| a.channel_records).sum();
    let platform: u64 = report.accounts.iter().map(|a| a.platform_records).sum();
    println!(
        "reconciled {channel} channel records against {platform} platform records in {wall:.2} s: \
         {:.0} channel records/s; peak RSS (VmHWM) {}",
        channel as f64 / wall,
        mib(proc_status_kib("VmHWM:"))
    );
    anyhow::ensure!(report.is_ok(), "a channel account's run failed");
    Ok(())
}

async fn drive(cli: Cli) -> anyhow::Result<()> {
    let day = cli
        .date
        .unwrap_or_else(|| Utc::now().with_timezone(&Shanghai).date_naive() - chrono::Days::new(1));
    let data_dir = cli.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "paymux-recon-bench-{}",
            Utc::now().format("%Y%m%dT%H%M%S")
        ))
    });
    anyhow::ensure!(
        !data_dir.exists(),
        "{} exists: give a new --data-dir",
        data_dir.display()
    );
    std::fs::create_dir_all(&data_dir)?;
    if let Some(url) = &cli.database_url {
        create_database(url).await?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let config = Config {
        listen: listener.local_addr()?,
        public_base_url: Some(base_url.clone()),
        data_dir: data_dir.clone(),
        database_url: cli.database_url.clone().map(Secret::new),
        demo_merchant: false,
        sandbox: true,
        reconcile_schedule: "off".into(),
        ..Config::default()
    };
    println!(
        "paymux-recon-bench: {} payments on {day} ({} of every class planted), {} database, data in {}",
        cli.records,
        cli.planted,
        if config.is_postgres() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        data_dir.display()
    );

    // Seed.
    let db = paymux::startup::open_database(&config).await?;
    let (n,): (i64,) = match &db {
        Db::Sqlite(p) => {
            sqlx::query_as("SELECT COUNT(*) FROM payments")
                .fetch_one(p)
                .await?
        }
        Db::Postgres(p) => {
            sqlx::query_as("SELECT COUNT(*) FROM payments")
                .fetch_one(p)
                .await?
        }
    };
    anyhow::ensure!(n == 0, "the database holds {n} payments: give a fresh one");
    let secrets = paymux::startup::secret_box(&config, &db).await?;
    let merchant = paymux::merchants::create_merchant(&db, &secrets, "Recon bench").await?;
    paymux::routing::store::provision_sandbox(
        &db,
        &secrets,
        merchant.merchant_id,
        config.sandbox_fee_rate_bps,
    )
    .await
    .map_err(|e| anyhow::anyhow!("provision the sandbox accounts: {e:?}"))?;
    let wechat = paymux::routing::store::list_accounts(&db, merchant.merchant_id)
        .await
        .map_err(|e| anyhow::anyhow!("list the accounts: {e:?}"))?
        .into_iter()
        .find(|a| a.kind == ChannelKind::WechatV3.as_str())
        .context("the merchant has no WeChat sandbox account")?;
    let sandboxes = paymux_channels::sandbox::Sandboxes::start(config.sandbox_options()).await?;
    let t = Instant::now();
    let seeded = seed_day(
        &db,
        &sandboxes.wechat,
        SeedAccount {
            merchant_id: merchant.merchant_id,
            channel_account_id: wechat.id.into(),
            cost_rate_bps: wechat.cost_rate_bps,
            merchant_fee_rate_bps: config.merchant_fee_rate_bps,
        },
        SeedOptions {
            day,
            records: cli.records,
            planted_per_class: cli.planted,
        },
    )
    .await?;
    println!(
        "seeded in {:.1} s: {} payments + {} ledger entries on the platform ({:.1} s, {:.0} payments/s), \
         {} orders in the WeChat sandbox's books ({:.1} s)",
        t.elapsed().as_secs_f64(),
        seeded.platform_payments,
        seeded.ledger_entries,
        seeded.platform_seconds,
        seeded.platform_payments as f64 / seeded.platform_seconds,
        seeded.channel_orders,
        seeded.books_seconds
    );
    if let Db::Postgres(p) = &db {
        // Fresh statistics, as autovacuum would have them by the night after a day of traffic.
        sqlx::query("ANALYZE").execute(p).await?;
    }

    // The channel: the sandboxes on a loopback port, where the accounts reach them.
    let app = axum::Router::new().nest_service("/sandbox", sandboxes.router());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let runs = if cli.no_rerun { 1 } else { 2 };
    let mut entries_after = Vec::new();
    for run in 1..=runs {
        println!(
            "\n$ paymux reconcile --date {day}   # run {run}{}",
            if run > 1 { " (rerun)" } else { "" }
        );
        let t = Instant::now();
        let status = tokio::process::Command::new(std::env::current_exe()?)
            .args(["reconcile", "--date", &day.to_string()])
            .env("PAYMUX_DATA_DIR", &data_dir)
            .env("PAYMUX_LISTEN", config.listen.to_string())
            .env("PAYMUX_PUBLIC_BASE_URL", &base_url)
            .env("PAYMUX_SANDBOX", "true")
            .env("PAYMUX_DEMO_MERCHANT", "false")
            .env("PAYMUX_RECONCILE_SCHEDULE", "off")
            .env(
                "PAYMUX_LOG",
                std::env::var("PAYMUX_LOG").unwrap_or("warn".into()),
            )
            .envs(
                cli.database_url
                    .as_ref()
                    .map(|u| ("PAYMUX_DATABASE_URL", u.clone())),
            )
            .status()
            .await
            .context("run the reconciliation")?;
        println!(
            "child process: {:.2} s wall, exit {}",
            t.elapsed().as_secs_f64(),
            status
        );
        anyhow::ensure!(status.success(), "reconciliation failed");
        entries_after.push(count(&db, "SELECT COUNT(*) FROM ledger_entries").await?);
    }

    // The classes found against those planted.
    let run_id = reconciliation::run_id(wechat.id.into(), day);
    let summary: Vec<(String,)> = match &db {
        Db::Sqlite(p) => {
            sqlx::query_as("SELECT summary FROM reconciliation_runs WHERE id = $1")
                .bind(run_id)
                .fetch_all(p)
                .await?
        }
        Db::Postgres(p) => {
            sqlx::query_as("SELECT summary FROM reconciliation_runs WHERE id = $1")
                .bind(run_id)
                .fetch_all(p)
                .await?
        }
    };
    let found: Vec<reconciliation::ClassTotal> = serde_json::from_str(
        &summary
            .first()
            .context("no reconciliation run for the WeChat account")?
            .0,
    )?;
    let mut ok = true;
    for (class, want) in &seeded.expected {
        let got = found
            .iter()
            .find(|c| c.class == class.as_str())
            .map_or(0, |c| c.count);
        ok &= got == *want;
        println!(
            "  {:<20} planted/expected {want:>9}  found {got:>9}{}",
            class.as_str(),
            if got == *want { "" } else { "  MISMATCH" }
        );
    }
    if let [first, second] = entries_after[..] {
        println!("ledger entries after the run: {first}, after the rerun: {second}");
        ok &= first == second;
    }
    let t = Instant::now();
    let audit = paymux::ledger_audit::audit(&db).await?;
    println!(
        "ledger audit ({:.1} s): {}",
        t.elapsed().as_secs_f64(),
        if audit.is_clean() {
            "clean"
        } else {
            "BREACHED"
        }
    );
    ok &= audit.is_clean();
    db.close().await;
    anyhow::ensure!(ok, "the benchmark's checks failed (see above)");
    println!("checks: the planted classes found exactly, the rerun posted nothing, audit clean");
    Ok(())
}

async fn count(db: &Db, sql: &str) -> anyhow::Result<i64> {
    Ok(match db {
        Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
        Db::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
    })
}

/// Creates the PostgreSQL database of `url` on its server when it does not exist.
async fn create_database(url: &str) -> anyhow::Result<()> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (server, name) = base
        .rsplit_once('/')
        .context("the database URL names no database")?;
    anyhow::ensure!(
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "database name {name:?}: letters, digits and _ only"
    );
    let admin = if query.is_empty() {
        format!("{server}/postgres")
    } else {
        format!("{server}/postgres?{query}")
    };
    let pool = sqlx::PgPool::connect(&admin)
        .await
        .with_context(|| format!("connect to {server}/postgres"))?;
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&pool)
        .await?;
    if exists.is_none() {
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&pool)
            .await?;
    }
    pool.close().await;
    Ok(())
}
