//! The `paymux` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use paymux_model::MerchantId;

use crate::config::Config;
use crate::merchants;
use crate::startup::{Application, open_database, secret_box};

#[derive(Debug, Parser)]
#[command(
    name = "paymux",
    version,
    about = "paymux: one payment API for every wallet and channel"
)]
pub struct Cli {
    /// TOML configuration file (keys as in the README; `PAYMUX_*` environment variables override it).
    #[arg(long, global = true, env = "PAYMUX_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (migrates the database first).
    Serve,
    /// Run only the channel sandboxes (WeChat Pay v3, …) on their own address.
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Manage merchants.
    #[command(subcommand)]
    Merchant(MerchantCommand),
    /// The ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Merchant webhooks.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Reconcile a day (Asia/Shanghai) against the channels' bills: resolutions, channel settlement,
    /// and — when every channel account is reconciled — merchant settlement with payout files.
    /// Needs the running server's sandboxes at `public_base_url` when `sandbox` is on. Exits 1 when
    /// an account's run failed.
    Reconcile {
        /// The day, `YYYY-MM-DD`.
        #[arg(long)]
        date: chrono::NaiveDate,
        /// Only this channel account (no merchant settlement then).
        #[arg(long)]
        channel_account: Option<paymux_model::ChannelAccountId>,
        /// Print the day's report as JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Make an event due for delivery now, with a fresh retry schedule (also when it was delivered
    /// or given up on).
    Resend {
        #[arg(long)]
        event_id: uuid::Uuid,
    },
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Check the books: every entry balanced, Σ debits = Σ credits, stored balances = Σ postings, no
    /// pending entry left past its timeout, every succeeded payment posted exactly once. Exits 1 on a
    /// breach.
    Audit,
}

#[derive(Debug, Subcommand)]
pub enum MerchantCommand {
    /// Create a merchant and print its credentials as JSON (the secret is shown only now).
    Create {
        #[arg(long)]
        name: String,
    },
    /// Revoke the merchant's keys and print a new key as JSON.
    RotateKey {
        #[arg(long)]
        merchant_id: MerchantId,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    crate::telemetry::init_logging(&config.log_format);
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Sandbox { listen } => sandbox(config, listen).await,
        Command::Migrate => {
            let db = open_database(&config).await?;
            println!("database migrated ({})", db.backend());
            db.close().await;
            Ok(())
        }
        Command::Merchant(MerchantCommand::Create { name }) => {
            let db = open_database(&config).await?;
            let creds = merchants::create_merchant(&db, &secret_box(&config)?, &name).await?;
            println!("{}", serde_json::to_string_pretty(&creds)?);
            db.close().await;
            Ok(())
        }
        Command::Ledger(LedgerCommand::Audit) => {
            let db = open_database(&config).await?;
            let report = crate::ledger_audit::audit(&db).await?;
            println!("{report}");
            db.close().await;
            if !report.is_clean() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Webhook(WebhookCommand::Resend { event_id }) => {
            let db = open_database(&config).await?;
            let found = crate::webhooks::resend(&db, event_id).await?;
            db.close().await;
            anyhow::ensure!(found, "no webhook event {event_id}");
            println!("webhook event {event_id} is due for delivery now");
            Ok(())
        }
        Command::Reconcile {
            date,
            channel_account,
            json,
        } => reconcile(config, date, channel_account, json).await,
        Command::Merchant(MerchantCommand::RotateKey { merchant_id }) => {
            let db = open_database(&config).await?;
            let creds = merchants::rotate_key(&db, &secret_box(&config)?, merchant_id).await?;
            println!("{}", serde_json::to_string_pretty(&creds)?);
            db.close().await;
            Ok(())
        }
    }
}

async fn reconcile(
    config: Config,
    date: chrono::NaiveDate,
    account: Option<paymux_model::ChannelAccountId>,
    json: bool,
) -> anyhow::Result<()> {
    let (state, _sandboxes) = crate::reconciliation::standalone_state(config).await?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {prefix} {msg} {pos} lines",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let progress = |p: crate::reconciliation::Progress<'_>| match p {
        crate::reconciliation::Progress::Account { name, index, total } => {
            bar.set_prefix(format!("[{}/{total}] {name}", index + 1));
            bar.set_position(0);
        }
        crate::reconciliation::Progress::Stage(s) => bar.set_message(s.to_string()),
        crate::reconciliation::Progress::Lines(n) => bar.set_position(n),
    };
    let result = crate::reconciliation::run_day(&state, date, account, &progress).await;
    bar.finish_and_clear();
    state.batcher.shutdown().await;
    state.db.close().await;
    let report = result?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::reconciliation::report::summary_table(&report));
    }
    if !report.is_ok() {
        std::process::exit(1);
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let base = app.base_url();
    if let Some(demo) = &app.demo_merchant {
        println!("Created the demo merchant (its secret is shown only this once):");
        println!("  merchant_id = {}", demo.merchant_id);
        println!("  key_id      = {}", demo.key_id);
        println!("  key_secret  = {}", demo.key_secret);
    }
    println!(
        "paymux is listening ({} database)",
        app.state().db.backend()
    );
    println!("  API:      {base}/v1");
    println!("  OpenAPI:  {base}/openapi.json");
    println!("  Metrics:  {base}/metrics");
    if let Some(sb) = &app.sandboxes {
        for (name, prefix) in sb.mounts() {
            println!("  Sandbox:  {base}/sandbox{prefix}  ({name})");
        }
    }
    app.run_until_stopped(shutdown_signal()).await
}

async fn sandbox(config: Config, listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let opts = config.sandbox_options();
    let sandboxes = paymux_channels::sandbox::Sandboxes::start(opts.clone()).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    println!(
        "paymux sandboxes are listening (keys and books in {})",
        opts.data_dir.display()
    );
    for (name, prefix) in sandboxes.mounts() {
        println!("  {name}: http://{addr}{prefix}");
    }
    axum::serve(listener, sandboxes.router())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down: finishing in-flight requests and draining the write batcher");
}
