//! `paymux-ledger-writer`: posts payment entries crediting one merchant's payable account through the
//! batched ledger, from its own process. Several of these (and the platform itself) may post to the
//! same database at once; the ledger's tests start two to check that nothing is lost between
//! processes. Prints `{"entries": N, "gross_minor": G, …}` when done, with how its batches took
//! their balance locks (PostgreSQL).

use std::str::FromStr;

use anyhow::Context;
use clap::Parser;
use paymux_ledger::{EntryResult, Ledger, LedgerConfig, LedgerPool, rules};
use paymux_model::{ChannelAccountId, MerchantId, Money, PaymentId};

#[derive(Debug, Parser)]
#[command(about = "Post payment entries to one hot merchant account from a separate process")]
struct Args {
    /// `sqlite://…` or `postgres://…` of a migrated ledger database.
    #[arg(long)]
    database_url: String,
    #[arg(long)]
    merchant: MerchantId,
    #[arg(long)]
    channel: ChannelAccountId,
    /// Calls to `post`, each with `batch_size` entries.
    #[arg(long, default_value_t = 20)]
    batches: u32,
    #[arg(long, default_value_t = 50)]
    batch_size: u32,
    /// Concurrent posting tasks in this process.
    #[arg(long, default_value_t = 4)]
    tasks: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let pool = if args.database_url.starts_with("sqlite:") {
        let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&args.database_url)?
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(30));
        LedgerPool::Sqlite(
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(opts)
                .await?,
        )
    } else {
        LedgerPool::Postgres(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(8)
                .connect(&args.database_url)
                .await
                .context("connect")?,
        )
    };
    let ledger = Ledger::start(pool, LedgerConfig::default());
    let mut tasks = Vec::new();
    for t in 0..args.tasks {
        let ledger = ledger.clone();
        let (merchant, channel) = (args.merchant, args.channel);
        let (batches, size) = (args.batches, args.batch_size);
        tasks.push(tokio::spawn(async move {
            let mut gross = 0i64;
            let mut entries = 0u64;
            for b in 0..batches {
                let batch: Vec<_> = (0..size)
                    .map(|i| {
                        let amount = 100 + i64::from(t * 7 + b * 3 + i);
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
                let results = ledger.post(batch).await?;
                if let Some(bad) = results.iter().find(|r| **r != EntryResult::Created) {
                    anyhow::bail!("an entry was not created: {bad:?}");
                }
                entries += u64::from(size);
            }
            Ok::<_, anyhow::Error>((entries, gross))
        }));
    }
    let (mut entries, mut gross) = (0u64, 0i64);
    for t in tasks {
        let (e, g) = t.await??;
        entries += e;
        gross += g;
    }
    let stats = ledger.pipeline_stats();
    println!(
        "{}",
        serde_json::json!({
            "entries": entries,
            "gross_minor": gross,
            "batches_locked_last": stats.locked_last,
            "batches_locked_first": stats.locked_first,
            "batches_failed_check": stats.checks_failed,
        })
    );
    Ok(())
}
