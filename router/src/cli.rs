//! The `paymux` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use paymux_model::MerchantId;

use crate::config::Config;
use crate::merchants;
use crate::routing::store;
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
    /// A merchant's channel accounts.
    #[command(subcommand, name = "channel-account")]
    ChannelAccount(ChannelAccountCommand),
    /// A merchant's routes per (wallet, method).
    #[command(subcommand)]
    Route(RouteCommand),
    /// Operators of the operations API `/ops/v1`.
    #[command(subcommand)]
    Operator(OperatorCommand),
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
pub enum ChannelAccountCommand {
    /// Add a channel account and print it as JSON (never its credentials).
    Add {
        #[arg(long)]
        merchant_id: MerchantId,
        /// `wechat_v3`, `alipay` or `unionpay_qr`.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        name: String,
        /// What the channel charges, in basis points.
        #[arg(long)]
        cost_rate_bps: u32,
        /// A JSON file with the adapter's client configuration (stored encrypted).
        #[arg(long, conflicts_with = "sandbox", required_unless_present = "sandbox")]
        credentials_file: Option<PathBuf>,
        /// This server's sandbox of that kind instead of real credentials.
        #[arg(long)]
        sandbox: bool,
        /// Add it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// List a merchant's channel accounts as JSON.
    List {
        #[arg(long)]
        merchant_id: MerchantId,
    },
    /// Let the account take new payments again.
    Enable {
        #[arg(long)]
        id: uuid::Uuid,
    },
    /// Stop new payments on the account (its open payments, refunds and notifications go on).
    Disable {
        #[arg(long)]
        id: uuid::Uuid,
    },
    /// The account's time of day for the nightly reconciliation (Asia/Shanghai, after its channel's
    /// bill is ready), or `default` for `reconcile_schedule`.
    Schedule {
        #[arg(long)]
        id: uuid::Uuid,
        /// `HH:MM`, `HH:MM:SS` or `default`.
        #[arg(long)]
        at: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Set (replace) the route for a wallet and method and print it as JSON.
    Set {
        #[arg(long)]
        merchant_id: MerchantId,
        #[arg(long)]
        wallet: String,
        #[arg(long)]
        method: String,
        /// `priority`, `weighted` or `lowest_cost`.
        #[arg(long)]
        rule: String,
        /// `ACCOUNT_ID[:PRIORITY[:WEIGHT]]`, once per target.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
    },
    /// List a merchant's routes as JSON.
    List {
        #[arg(long)]
        merchant_id: MerchantId,
    },
    /// Delete the route for a wallet and method.
    Delete {
        #[arg(long)]
        merchant_id: MerchantId,
        #[arg(long)]
        wallet: String,
        #[arg(long)]
        method: String,
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
pub enum OperatorCommand {
    /// Create an operator and print it with its token as JSON (the token is shown only now).
    Create {
        #[arg(long)]
        name: String,
        /// `viewer`, `operator` or `admin`.
        #[arg(long)]
        role: String,
    },
    /// Print every operator as JSON.
    List,
    /// Disable an operator: its token stops working at once.
    Disable {
        #[arg(long)]
        id: uuid::Uuid,
    },
}

#[derive(Debug, Subcommand)]
pub enum MerchantCommand {
    /// Create a merchant and print its credentials as JSON (the secret is shown only now).
    Create {
        #[arg(long)]
        name: String,
    },
    /// Issue a new key and print it as JSON; the merchant's other keys are revoked at once, or
    /// after `--grace-seconds` (at most 7 days), so that its servers can switch without refused
    /// requests (webhooks are signed with both keys meanwhile).
    RotateKey {
        #[arg(long)]
        merchant_id: MerchantId,
        #[arg(long, default_value_t = 0)]
        grace_seconds: u32,
    },
    /// Set the merchant's own fee rate (or go back to `merchant_fee_rate_bps`) and print it.
    FeeRate {
        #[arg(long)]
        merchant_id: MerchantId,
        /// Basis points (60 = 0.6 %).
        #[arg(long, conflicts_with = "default", required_unless_present = "default")]
        bps: Option<u32>,
        /// Use the configured `merchant_fee_rate_bps`.
        #[arg(long)]
        default: bool,
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
            let secrets = secret_box(&config, &db).await?;
            let creds = merchants::create_merchant(&db, &secrets, &name).await?;
            if config.sandbox {
                // With the sandboxes mounted, a new merchant can pay through them at once.
                store::provision_sandbox(
                    &db,
                    &secrets,
                    creds.merchant_id,
                    config.sandbox_fee_rate_bps,
                )
                .await
                .map_err(api)?;
            }
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
        Command::Merchant(MerchantCommand::FeeRate {
            merchant_id,
            bps,
            default: _,
        }) => {
            let db = open_database(&config).await?;
            let r = store::set_fee_rate(&db, merchant_id, bps).await;
            db.close().await;
            println!("{}", serde_json::to_string_pretty(&r.map_err(api)?)?);
            Ok(())
        }
        Command::Operator(c) => operator(&config, c).await,
        Command::ChannelAccount(c) => channel_account(&config, c).await,
        Command::Route(c) => route(&config, c).await,
        Command::Reconcile {
            date,
            channel_account,
            json,
        } => reconcile(config, date, channel_account, json).await,
        Command::Merchant(MerchantCommand::RotateKey {
            merchant_id,
            grace_seconds,
        }) => {
            let db = open_database(&config).await?;
            let creds = merchants::rotate_key(
                &db,
                &secret_box(&config, &db).await?,
                merchant_id,
                grace_seconds,
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&creds)?);
            db.close().await;
            Ok(())
        }
    }
}

fn api(e: crate::error::ApiError) -> anyhow::Error {
    match &e.field {
        Some(f) => anyhow::anyhow!("{} ({f}): {}", e.code, e.detail),
        None => anyhow::anyhow!("{}: {}", e.code, e.detail),
    }
}

async fn operator(config: &Config, c: OperatorCommand) -> anyhow::Result<()> {
    use crate::ops::{audit::Actor, operators};
    let db = open_database(config).await?;
    let out = match c {
        OperatorCommand::Create { name, role } => operators::create(
            &db,
            Actor::CommandLine,
            operators::NewOperator { name, role },
        )
        .await
        .map(|o| serde_json::to_value(o).unwrap_or_default()),
        OperatorCommand::List => operators::list(&db)
            .await
            .map(|o| serde_json::to_value(o).unwrap_or_default()),
        OperatorCommand::Disable { id } => operators::disable(&db, Actor::CommandLine, id)
            .await
            .map(|o| serde_json::to_value(o).unwrap_or_default()),
    };
    db.close().await;
    println!("{}", serde_json::to_string_pretty(&out.map_err(api)?)?);
    Ok(())
}

async fn channel_account(config: &Config, c: ChannelAccountCommand) -> anyhow::Result<()> {
    let db = open_database(config).await?;
    let out = match c {
        ChannelAccountCommand::Add {
            merchant_id,
            kind,
            name,
            cost_rate_bps,
            credentials_file,
            sandbox: _,
            disabled,
        } => {
            let credentials = match credentials_file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
                    serde_json::from_str(&text)
                        .map_err(|_| anyhow::anyhow!("{} is not JSON", path.display()))?
                }
                None => serde_json::json!({"sandbox": true}),
            };
            let kind = kind.parse().map_err(|e| anyhow::anyhow!("--kind: {e}"))?;
            let new = store::NewAccount {
                name,
                kind,
                credentials,
                cost_rate_bps,
                enabled: Some(!disabled),
            };
            serde_json::to_value(
                store::create_account(&db, &secret_box(config, &db).await?, merchant_id, new)
                    .await
                    .map_err(api)?,
            )?
        }
        ChannelAccountCommand::List { merchant_id } => {
            serde_json::to_value(store::list_accounts(&db, merchant_id).await.map_err(api)?)?
        }
        ChannelAccountCommand::Enable { id } => set_enabled(&db, config, id, true).await?,
        ChannelAccountCommand::Disable { id } => set_enabled(&db, config, id, false).await?,
        ChannelAccountCommand::Schedule { id, at } => {
            let time = if at.trim().eq_ignore_ascii_case("default") {
                None
            } else {
                Some(
                    crate::reconciliation::schedules::parse_time(&at).ok_or_else(|| {
                        anyhow::anyhow!("--at must be HH:MM, HH:MM:SS or default, not {at:?}")
                    })?,
                )
            };
            crate::reconciliation::schedules::set(
                &db,
                crate::ops::audit::Actor::CommandLine,
                id,
                time,
            )
            .await
            .map_err(api)?;
            serde_json::json!({
                "channel_account_id": id,
                "at": time.map(|t| t.format("%H:%M:%S").to_string()),
                "own": time.is_some(),
            })
        }
    };
    db.close().await;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

async fn set_enabled(
    db: &crate::db::Db,
    config: &Config,
    id: uuid::Uuid,
    enabled: bool,
) -> anyhow::Result<serde_json::Value> {
    let merchant = store::merchant_of_account(db, id).await.map_err(api)?;
    let patch = store::AccountPatch {
        enabled: Some(enabled),
        ..Default::default()
    };
    let view = store::update_account(db, &secret_box(config, db).await?, merchant, id, patch)
        .await
        .map_err(api)?;
    Ok(serde_json::to_value(view)?)
}

/// `ACCOUNT_ID[:PRIORITY[:WEIGHT]]`.
fn parse_target(s: &str) -> anyhow::Result<store::TargetSpec> {
    let mut parts = s.split(':');
    let id = parts.next().unwrap_or_default();
    let channel_account_id = id
        .parse()
        .map_err(|_| anyhow::anyhow!("--target {s}: {id:?} is not an account id"))?;
    let num = |p: Option<&str>, default: u32| -> anyhow::Result<u32> {
        match p {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("--target {s}: {v:?} is not a number")),
        }
    };
    let priority = num(parts.next(), 0)?;
    let weight = num(parts.next(), 1)?;
    anyhow::ensure!(
        parts.next().is_none(),
        "--target {s}: ACCOUNT_ID[:PRIORITY[:WEIGHT]]"
    );
    Ok(store::TargetSpec {
        channel_account_id,
        priority,
        weight,
    })
}

async fn route(config: &Config, c: RouteCommand) -> anyhow::Result<()> {
    let db = open_database(config).await?;
    let wm = |w: &str,
              m: &str|
     -> anyhow::Result<(paymux_model::WalletBrand, paymux_model::PayMethod)> {
        Ok((
            w.parse().map_err(|e| anyhow::anyhow!("--wallet: {e}"))?,
            m.parse().map_err(|e| anyhow::anyhow!("--method: {e}"))?,
        ))
    };
    let out = match c {
        RouteCommand::Set {
            merchant_id,
            wallet,
            method,
            rule,
            targets,
        } => {
            let (w, m) = wm(&wallet, &method)?;
            let spec = store::RouteSpec {
                rule: rule.parse().map_err(|e| anyhow::anyhow!("--rule: {e}"))?,
                targets: targets
                    .iter()
                    .map(|t| parse_target(t))
                    .collect::<anyhow::Result<_>>()?,
            };
            serde_json::to_value(
                store::set_route(&db, merchant_id, w, m, spec)
                    .await
                    .map_err(api)?,
            )?
        }
        RouteCommand::List { merchant_id } => {
            serde_json::to_value(store::list_routes(&db, merchant_id).await.map_err(api)?)?
        }
        RouteCommand::Delete {
            merchant_id,
            wallet,
            method,
        } => {
            let (w, m) = wm(&wallet, &method)?;
            let found = store::delete_route(&db, merchant_id, w, m)
                .await
                .map_err(api)?;
            anyhow::ensure!(found, "no {wallet} {method} route");
            serde_json::json!({"deleted": true, "wallet": wallet, "method": method})
        }
    };
    db.close().await;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
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
    if app.state().config.admin_token.is_none() {
        println!(
            "  Admin:    {base}/admin/v1  (Authorization: Bearer <the token in {}>)",
            crate::startup::admin_token_path(app.state().config.as_ref()).display()
        );
    } else {
        println!("  Admin:    {base}/admin/v1  (Authorization: Bearer <admin_token>)");
    }
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
