//! `paymux-loadtest`: an open-loop load generator for the paymux merchant API.
//!
//! Operations arrive at a constant rate whatever the server does; each operation's latency is
//! measured from its *intended* send time, so a stalled server shows up as latency instead of
//! silently lowering the offered load (no coordinated omission). Concurrency is bounded: when every
//! slot is busy, an operation waits for one and that wait counts in its latency. After the run the
//! post-run audit checks every acknowledged payment, duplicates and the ledger.

mod audit;
mod chart;
mod client;
mod mix;
mod onecode;
mod stats;
mod sysinfo;

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::audit::Ack;
use crate::client::{Api, Merchant, error_code};
use crate::mix::{Mix, Scenario};
use crate::stats::{CpuReport, Report, RsaReport, Stats};

#[derive(Debug, Parser)]
#[command(
    name = "paymux-loadtest",
    version,
    about = "Open-loop load generator for paymux"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A mix of scenarios at a constant arrival rate, then the post-run audit.
    Run(RunArgs),
    /// Payment creation alone (`--mix create`).
    Create(RunArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Wallet {
    Wechat,
    Alipay,
    Unionpay,
}

impl Wallet {
    fn name(self) -> &'static str {
        match self {
            Wallet::Wechat => "wechat",
            Wallet::Alipay => "alipay",
            Wallet::Unionpay => "unionpay",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Base URL of the server (a node, or the load balancer in front of several).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Merchant credentials: files with the JSON of `paymux merchant create` (an object or an array
    /// of them); repeat or separate with commas for several merchants.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["key_id", "key_secret"])]
    credentials: Vec<PathBuf>,
    #[arg(long, env = "PAYMUX_KEY_ID")]
    key_id: Option<String>,
    #[arg(long, env = "PAYMUX_KEY_SECRET", hide_env_values = true)]
    key_secret: Option<String>,
    /// Scenarios and weights: `code_scan=40,qr=20,create_query=30,refund=10`. Scenarios:
    /// code_scan, qr, create, create_query, query, refund, one_code.
    #[arg(long, default_value = "create")]
    mix: Mix,
    /// Target arrival rate, operations per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Measured duration, seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Warm-up before measuring, seconds (sent at the same rate, not in the latency tables).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Most operations in flight at once.
    #[arg(long, default_value_t = 1024)]
    concurrency: usize,
    /// Per-request timeout, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Stores per merchant (`store_id` of the payments).
    #[arg(long, default_value_t = 4)]
    stores: u32,
    /// Wallets of code scans (payment codes) and C2B orders, in turn (C2B: wechat and alipay).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "wechat")]
    wallets: Vec<Wallet>,
    /// Percentage of code scans whose payer enters a password (`202 processing`, paid later).
    #[arg(long, default_value_t = 5.0)]
    password_pct: f64,
    /// Wallet apps the one-code payers scan with, in turn.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "wechat,alipay,unionpay"
    )]
    one_code_wallets: Vec<Wallet>,
    /// Static codes each merchant creates before a run with one-code payers (`POST /v1/codes`).
    #[arg(long, default_value_t = 3)]
    one_code_codes: u32,
    /// How often a one-code payer polls its payment's result, milliseconds.
    #[arg(long, default_value_t = 200)]
    one_code_poll_ms: u64,
    /// How long a one-code payer waits for `succeeded` after paying, seconds.
    #[arg(long, default_value_t = 30)]
    one_code_wait: u64,
    /// Base URL of the sandboxes (the C2B payer): `<url>/sandbox` when the node mounts them, or a
    /// standalone `paymux sandbox`.
    #[arg(long)]
    sandbox_url: Option<String>,
    /// Node processes whose CPU time (`/proc/<pid>/stat`) is divided by the payments; repeatable.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Measure `openssl speed rsa2048` first and report code payments against the RSA bound.
    #[arg(long)]
    rsa_bound: bool,
    /// Seconds `openssl speed` runs.
    #[arg(long, default_value_t = 3)]
    openssl_seconds: u32,
    /// Write PREFIX.json, PREFIX.md and PREFIX.svg.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the JSON report to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Skip the post-run audit.
    #[arg(long)]
    no_audit: bool,
    /// Skip the audit's duplicate check at the server (one listing call per payment).
    #[arg(long)]
    no_duplicate_check: bool,
    /// Audit calls in flight at once.
    #[arg(long, default_value_t = 64)]
    audit_concurrency: usize,
    /// How long the audit waits for asynchronous outcomes (password waits, notifications), seconds.
    #[arg(long, default_value_t = 60)]
    audit_wait: u64,
    /// The `paymux` binary for `paymux ledger audit` (same configuration environment as the nodes);
    /// default: `paymux` next to this program, if there.
    #[arg(long)]
    paymux_bin: Option<PathBuf>,
    /// `--config FILE` for `paymux ledger audit`.
    #[arg(long)]
    paymux_config: Option<PathBuf>,
    /// Errors tolerated before the run counts as failed.
    #[arg(long, default_value_t = 0)]
    max_errors: u64,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Run(args) => args,
        Command::Create(mut args) => {
            args.mix = "create".parse().map_err(anyhow::Error::msg)?;
            args
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let passed = runtime.block_on(run(args))?;
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

/// What every operation shares.
struct Ctx {
    api: Api,
    sandbox_url: String,
    merchants: Arc<Vec<Merchant>>,
    stores: u32,
    wallets: Vec<Wallet>,
    qr_wallets: Vec<Wallet>,
    password_pct: f64,
    /// The one-code payers' client, and each merchant's static codes (their URLs).
    payer: onecode::Payer,
    codes: Vec<Vec<String>>,
    one_code_wallets: Vec<Wallet>,
    one_code_poll: Duration,
    one_code_wait: Duration,
    run_id: String,
    start: Instant,
    measure_from: Instant,
    stats: Mutex<Stats>,
    acks: Mutex<Vec<Ack>>,
    /// Recent payments per merchant, for status polling.
    recent: Vec<Mutex<VecDeque<String>>>,
    ok_requests: AtomicU64,
    errors: AtomicU64,
    /// When the last measured operation finished (µs after start).
    last_finish_us: AtomicU64,
}

/// One operation: its number, merchant, due time.
struct Op {
    i: u64,
    merchant: u32,
    due: Instant,
    measured: bool,
}

impl Ctx {
    fn second(&self, t: Instant) -> usize {
        (t - self.start).as_secs() as usize
    }

    /// One signed API request; `Some(body)` when the status is one of `ok`.
    #[allow(clippy::too_many_arguments)] // one request's whole description, named at every call
    async fn call(
        &self,
        op: &Op,
        kind: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        due: Instant,
        ok: &[u16],
    ) -> Option<(u16, Value)> {
        let m = &self.merchants[op.merchant as usize];
        let answer = self.api.signed(m, method, path, body).await;
        self.record(op, kind, due, answer, ok)
    }

    fn record(
        &self,
        op: &Op,
        kind: &'static str,
        due: Instant,
        answer: client::Answer,
        ok: &[u16],
    ) -> Option<(u16, Value)> {
        match answer {
            Ok((status, body)) if ok.contains(&status) => {
                self.tally(op, kind, due, Ok(()));
                Some((status, body))
            }
            Ok((status, body)) => {
                self.tally(op, kind, due, Err(error_code(status, &body)));
                None
            }
            Err(e) => {
                self.tally(op, kind, due, Err(e));
                None
            }
        }
    }

    /// Counts one request: answered as expected (its latency from `due`), or an error by code.
    fn tally(&self, op: &Op, kind: &'static str, due: Instant, outcome: Result<(), String>) {
        let now = Instant::now();
        let second = self.second(now);
        let mut stats = self.stats.lock().expect("stats lock");
        match outcome {
            Ok(()) => {
                stats.request_ok(kind, (now - due).as_micros() as u64, second, op.measured);
                self.ok_requests.fetch_add(1, Ordering::Relaxed);
            }
            Err(code) => {
                stats.request_error(kind, &code, second, op.measured);
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A payer's page: `Some` when it came with status `want` and `accept` takes it; otherwise an
    /// error `STATUS marker` (the page's message id, see [`onecode::page_marker`]), `STATUS what`
    /// (`accept`'s reason) or the transport failure.
    fn page<T>(
        &self,
        op: &Op,
        kind: &'static str,
        due: Instant,
        answer: Result<onecode::Page, String>,
        want: u16,
        accept: impl FnOnce(&onecode::Page) -> Result<T, &'static str>,
    ) -> Option<T> {
        let (outcome, value) = match answer {
            Err(e) => (Err(e), None),
            Ok(p) if p.status != want => (
                Err(format!("{} {}", p.status, onecode::page_marker(&p.text))),
                None,
            ),
            Ok(p) => match accept(&p) {
                Ok(v) => (Ok(()), Some(v)),
                Err(what) => (Err(format!("{} {what}", p.status)), None),
            },
        };
        self.tally(op, kind, due, outcome);
        value
    }

    /// An answer that came back as expected by status but not by content.
    fn unexpected(&self, op: &Op, kind: &'static str, what: String) {
        let second = self.second(Instant::now());
        self.stats
            .lock()
            .expect("stats lock")
            .request_error(kind, &what, second, op.measured);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn payment_body(&self, op: &Op, method: &str, amount: i64) -> Value {
        json!({
            "merchant_order_no": format!("lt-{}-{}", self.run_id, op.i),
            "amount": amount,
            "currency": "CNY",
            "subject": "load test",
            "method": method,
            "store_id": format!("store-{}", (op.i / self.merchants.len() as u64) % u64::from(self.stores.max(1))),
        })
    }

    fn acknowledge(
        &self,
        op: &Op,
        body: &Value,
        expect: Option<&'static str>,
        refund: Option<(String, i64)>,
    ) {
        self.push_ack(
            op,
            Ack {
                merchant: op.merchant,
                id: body["id"].as_str().unwrap_or_default().to_string(),
                order_no: body["merchant_order_no"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                amount: body["amount"].as_i64().unwrap_or_default(),
                seen: body["status"].as_str().unwrap_or_default().to_string(),
                expect,
                refund,
                method: None,
                wallet: None,
            },
        );
    }

    /// Keeps an acknowledged payment for the audit and the status polls.
    fn push_ack(&self, op: &Op, ack: Ack) {
        {
            let mut recent = self.recent[op.merchant as usize]
                .lock()
                .expect("recent lock");
            if recent.len() >= 4096 {
                recent.pop_front();
            }
            recent.push_back(ack.id.clone());
        }
        self.stats
            .lock()
            .expect("stats lock")
            .payment_acknowledged(op.measured);
        self.acks.lock().expect("acks lock").push(ack);
    }

    fn done(&self, op: &Op, scenario: Scenario, ok: bool) {
        if !op.measured {
            return;
        }
        let now = Instant::now();
        self.last_finish_us
            .fetch_max((now - self.start).as_micros() as u64, Ordering::Relaxed);
        if ok {
            self.stats.lock().expect("stats lock").operation_ok(
                scenario.name(),
                (now - op.due).as_micros() as u64,
                true,
            );
        }
    }

    /// A payment code of `wallet` whose payer pays at once, or enters a password first.
    fn payment_code(i: u64, wallet: Wallet, password: bool) -> String {
        // The last four digits choose the sandbox payer: 1001 password; 0000–0999 pay at once.
        let suffix = if password {
            "1001".to_string()
        } else {
            format!("{:04}", i % 1000)
        };
        match wallet {
            Wallet::Wechat => format!("13{:012}{suffix}", i % 1_000_000_000_000),
            Wallet::Alipay => format!("28{:012}{suffix}", i % 1_000_000_000_000),
            Wallet::Unionpay => format!("62{:013}{suffix}", i % 10_000_000_000_000),
        }
    }

    /// Whether arrival `i` is a password payer: spread evenly, `pct` of all.
    fn is_password(i: u64, pct: f64) -> bool {
        let per_10k = (pct * 100.0).round() as u64;
        (i * 7919) % 10_000 < per_10k
    }

    async fn code_scan(
        &self,
        op: &Op,
        kind: &'static str,
        wallet: Wallet,
        password: bool,
        amount: i64,
    ) -> Option<Value> {
        let mut body = self.payment_body(op, "code_scan", amount);
        body["auth_code"] = json!(Self::payment_code(op.i, wallet, password));
        let (status, p) = self
            .call(
                op,
                kind,
                Method::POST,
                "/v1/payments",
                Some(&body),
                op.due,
                &[201, 202],
            )
            .await?;
        let want = if password {
            (202, "processing")
        } else {
            (201, "succeeded")
        };
        if (status, p["status"].as_str().unwrap_or("?")) != want {
            self.unexpected(
                op,
                kind,
                format!("{status} status {}", p["status"].as_str().unwrap_or("?")),
            );
            if p["id"].is_string() {
                self.acknowledge(op, &p, None, None);
            }
            return None;
        }
        Some(p)
    }

    async fn create(&self, op: &Op) -> Option<Value> {
        let body = self.payment_body(op, "qr_merchant", 1 + (op.i % 99_999) as i64);
        let (_, p) = self
            .call(
                op,
                "create",
                Method::POST,
                "/v1/payments",
                Some(&body),
                op.due,
                &[201],
            )
            .await?;
        self.acknowledge(op, &p, Some("created"), None);
        Some(p)
    }

    /// One one-code payer (see [`onecode`]): scans a code of the operation's merchant with a wallet
    /// app of `--one-code-wallets`, pays it through the cashier and the sandbox, and polls the
    /// result until `succeeded`. The payment is acknowledged once its id is known (the pay page):
    /// it must end `succeeded` when the wallet's payment went through, else only exist.
    async fn one_code(&self, op: &Op) -> bool {
        use onecode::Step;
        let wallet = self.one_code_wallets[(op.i % self.one_code_wallets.len() as u64) as usize];
        let codes = &self.codes[op.merchant as usize];
        let code = &codes[((op.i / self.merchants.len() as u64) % codes.len() as u64) as usize];
        let amount = 1 + (op.i % 99_999) as i64;
        let ua = onecode::user_agent(wallet);
        let payer = &self.payer;

        // The code's page in the wallet app: the amount form.
        let page = payer.get(code, ua).await;
        let opened = self.page(op, Step::Open.kind(wallet), op.due, page, 200, |p| {
            if !p.text.contains("id=\"pay-form\"") {
                return Err(onecode::page_marker(&p.text));
            }
            onecode::input_value(&p.text, "submission").ok_or("no_submission_field")
        });
        let Some(submission) = opened else {
            return false;
        };
        // The amount, typed in yuan, with the form's hidden field: the cashier creates the payment
        // and sends the app to the wallet's authorisation step.
        let sent = Instant::now();
        let form = [
            ("amount".to_string(), onecode::yuan(amount)),
            ("submission".to_string(), submission),
        ];
        let page = payer.post_form(&format!("{code}/pay"), ua, &form).await;
        let Some(authorize) = self.page(op, Step::Submit.kind(wallet), sent, page, 303, |p| {
            p.location.clone().ok_or("no_location")
        }) else {
            return false;
        };
        // The wallet's OAuth / userAuth page (the sandbox's) sends the app back to the cashier.
        let sent = Instant::now();
        let page = payer.get(&authorize, ua).await;
        let back_to = format!("{code}/auth?");
        let Some(callback) =
            self.page(
                op,
                Step::Authorize.kind(wallet),
                sent,
                page,
                302,
                |p| match &p.location {
                    Some(l) if l.starts_with(&back_to) => Ok(l.clone()),
                    Some(_) => Err("unexpected_redirect"),
                    None => Err("no_location"),
                },
            )
        else {
            return false;
        };
        // Back at the cashier: the payer's id, the channel's in-app order, the pay page.
        let sent = Instant::now();
        let page = payer.get(&callback, ua).await;
        let Some((result, payment, stand_in, fields)) =
            self.page(op, Step::Order.kind(wallet), sent, page, 200, |p| {
                let config = onecode::script_json(&p.text, "config").ok_or("no_config")?;
                let result = config["result"]
                    .as_str()
                    .ok_or("no_result_url")?
                    .to_string();
                let payment = onecode::payment_of_result(&result).ok_or("bad_result_url")?;
                let (action, fields) = onecode::stand_in_form(&p.text).ok_or("no_stand_in")?;
                if config["standIn"].as_str() != Some(action.as_str()) {
                    return Err("stand_in_mismatch");
                }
                Ok((result, payment, action, fields))
            })
        else {
            return false;
        };
        // The wallet's payment sheet (the sandbox's stand-in), then paying, which returns to the
        // result page.
        let sent = Instant::now();
        let page = payer.post_form(&stand_in, ua, &fields).await;
        let sheet = self
            .page(op, Step::Sheet.kind(wallet), sent, page, 200, |_| Ok(()))
            .is_some();
        let paid = sheet && {
            let mut pay = fields.clone();
            pay.push(("action".into(), "pay".into()));
            let sent = Instant::now();
            let page = payer.post_form(&stand_in, ua, &pay).await;
            self.page(op, Step::Pay.kind(wallet), sent, page, 302, |p| {
                match &p.location {
                    Some(l) if *l == result => Ok(()),
                    Some(_) => Err("unexpected_redirect"),
                    None => Err("no_location"),
                }
            })
            .is_some()
        };
        // Paid: the channel's notification must settle it. Not paid: it only has to exist.
        self.push_ack(
            op,
            Ack {
                merchant: op.merchant,
                id: payment.to_string(),
                order_no: onecode::cashier_order_no(payment),
                amount,
                seen: "created".into(),
                expect: paid.then_some("succeeded"),
                refund: None,
                method: Some("qr_static"),
                wallet: Some(wallet.name()),
            },
        );
        if !paid {
            return false;
        }
        let paid_at = Instant::now();

        // The result page, then its status until the notification has settled the payment.
        let status_kind = Step::Status.kind(wallet);
        let page = payer.get(&result, ua).await;
        let Some(mut status) = self.page(op, Step::Result.kind(wallet), paid_at, page, 200, |p| {
            onecode::result_status(&p.text)
                .map(str::to_string)
                .ok_or("no_status")
        }) else {
            return false;
        };
        let status_url = format!("{result}/status");
        loop {
            match status.as_str() {
                "succeeded" => return true,
                "created" | "processing" => {}
                other => {
                    self.unexpected(op, status_kind, format!("status {other}"));
                    return false;
                }
            }
            if paid_at.elapsed() + self.one_code_poll > self.one_code_wait {
                self.unexpected(op, status_kind, "one_code_timeout".into());
                return false;
            }
            tokio::time::sleep(self.one_code_poll).await;
            let sent = Instant::now();
            let page = payer.get(&status_url, ua).await;
            match self.page(op, status_kind, sent, page, 200, |p| {
                serde_json::from_str::<Value>(&p.text)
                    .ok()
                    .and_then(|v| v["status"].as_str().map(str::to_string))
                    .ok_or("no_status")
            }) {
                Some(s) => status = s,
                None => return false,
            }
        }
    }

    async fn operation(&self, op: Op, scenario: Scenario) {
        let ok = match scenario {
            Scenario::OneCode => self.one_code(&op).await,
            Scenario::Create => self.create(&op).await.is_some(),
            Scenario::CreateQuery => match self.create(&op).await {
                Some(p) => {
                    let path = format!("/v1/payments/{}", p["id"].as_str().unwrap_or_default());
                    self.call(
                        &op,
                        "query",
                        Method::GET,
                        &path,
                        None,
                        Instant::now(),
                        &[200],
                    )
                    .await
                    .is_some()
                }
                None => false,
            },
            Scenario::Query => {
                let id = {
                    let recent = self.recent[op.merchant as usize]
                        .lock()
                        .expect("recent lock");
                    (!recent.is_empty())
                        .then(|| recent[(op.i as usize * 31) % recent.len()].clone())
                };
                match id {
                    Some(id) => self
                        .call(
                            &op,
                            "query",
                            Method::GET,
                            &format!("/v1/payments/{id}"),
                            None,
                            op.due,
                            &[200],
                        )
                        .await
                        .is_some(),
                    // Nothing to poll yet: create the first one.
                    None => self.create(&op).await.is_some(),
                }
            }
            Scenario::CodeScan => {
                let wallet = self.wallets[(op.i % self.wallets.len() as u64) as usize];
                let password = Self::is_password(op.i, self.password_pct);
                let kind = match (wallet, password) {
                    (Wallet::Wechat, false) => "code_scan.wechat",
                    (Wallet::Wechat, true) => "code_scan.wechat.password",
                    (Wallet::Alipay, false) => "code_scan.alipay",
                    (Wallet::Alipay, true) => "code_scan.alipay.password",
                    (Wallet::Unionpay, false) => "code_scan.unionpay",
                    (Wallet::Unionpay, true) => "code_scan.unionpay.password",
                };
                match self
                    .code_scan(&op, kind, wallet, password, 1 + (op.i % 99_999) as i64)
                    .await
                {
                    Some(p) => {
                        self.acknowledge(&op, &p, Some("succeeded"), None);
                        true
                    }
                    None => false,
                }
            }
            Scenario::Qr => {
                let wallet = self.qr_wallets[(op.i % self.qr_wallets.len() as u64) as usize];
                let mut body = self.payment_body(&op, "qr_merchant", 1 + (op.i % 99_999) as i64);
                body["wallet"] = json!(wallet.name());
                let (kind_create, kind_pay) = match wallet {
                    Wallet::Alipay => ("qr.alipay.create", "qr.alipay.pay"),
                    _ => ("qr.wechat.create", "qr.wechat.pay"),
                };
                match self
                    .call(
                        &op,
                        kind_create,
                        Method::POST,
                        "/v1/payments",
                        Some(&body),
                        op.due,
                        &[201],
                    )
                    .await
                {
                    Some((_, p)) => {
                        let qr = p["qr_code"].clone();
                        let (url, pay) = match wallet {
                            Wallet::Alipay => (
                                format!("{}/alipay/sandbox/pay", self.sandbox_url),
                                json!({"qr_code": qr}),
                            ),
                            _ => (
                                format!("{}/wechat/sandbox/pay", self.sandbox_url),
                                json!({"code_url": qr}),
                            ),
                        };
                        let sent = Instant::now();
                        let answer = self.api.post_json(&url, &pay).await;
                        let paid = self.record(&op, kind_pay, sent, answer, &[200]).is_some();
                        // Paid: the channel's notification must settle it. Not paid (or unknown):
                        // the audit only checks it exists with its amount.
                        self.acknowledge(&op, &p, paid.then_some("succeeded"), None);
                        paid
                    }
                    None => false,
                }
            }
            Scenario::Refund => {
                let amount = 2 + (op.i % 99_998) as i64;
                match self
                    .code_scan(&op, "refund.pay", Wallet::Wechat, false, amount)
                    .await
                {
                    Some(p) => {
                        let id = p["id"].as_str().unwrap_or_default().to_string();
                        let refund = json!({
                            "merchant_refund_no": format!("lr-{}-{}", self.run_id, op.i),
                            "amount": amount / 2,
                            "reason": "load test",
                        });
                        let path = format!("/v1/payments/{id}/refunds");
                        match self
                            .call(
                                &op,
                                "refund.refund",
                                Method::POST,
                                &path,
                                Some(&refund),
                                Instant::now(),
                                &[201],
                            )
                            .await
                        {
                            Some((_, r)) => {
                                let rid = r["id"].as_str().unwrap_or_default().to_string();
                                self.acknowledge(
                                    &op,
                                    &p,
                                    Some("succeeded"),
                                    Some((rid, amount / 2)),
                                );
                                true
                            }
                            None => {
                                // The refund's fate is unknown: check the payment alone.
                                let mut a = p.clone();
                                a["status"] = json!("processing");
                                self.acknowledge(&op, &a, None, None);
                                false
                            }
                        }
                    }
                    None => false,
                }
            }
        };
        self.done(&op, scenario, ok);
    }
}

/// Before a run with one-code payers: `per_merchant` static codes of each merchant (`POST
/// /v1/codes`, over its stores), as the URLs their QR codes hold.
async fn create_codes(
    api: &Api,
    merchants: &[Merchant],
    per_merchant: u32,
    stores: u32,
) -> anyhow::Result<Vec<Vec<String>>> {
    let mut all = Vec::with_capacity(merchants.len());
    for (i, m) in merchants.iter().enumerate() {
        let mut codes = Vec::with_capacity(per_merchant as usize);
        for k in 0..per_merchant {
            let body = json!({
                "store_id": format!("store-{}", k % stores.max(1)),
                "description": format!("load test code {k}"),
            });
            let url = match api.signed(m, Method::POST, "/v1/codes", Some(&body)).await {
                Ok((201, code)) => code["url"].as_str().map(str::to_string),
                Ok((status, answer)) => anyhow::bail!(
                    "merchant {} ({}): POST /v1/codes: {}",
                    i + 1,
                    m.key_id,
                    error_code(status, &answer)
                ),
                Err(e) => anyhow::bail!("merchant {} ({}): POST /v1/codes: {e}", i + 1, m.key_id),
            };
            codes.push(
                url.ok_or_else(|| anyhow::anyhow!("POST /v1/codes: no `url` in the answer"))?,
            );
        }
        all.push(codes);
    }
    Ok(all)
}

async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let merchants =
        if !args.credentials.is_empty() {
            client::load_merchants(&args.credentials)?
        } else {
            vec![Merchant {
                key_id: args.key_id.clone().ok_or_else(|| {
                    anyhow::anyhow!("give --credentials or --key-id/--key-secret")
                })?,
                key_secret: args.key_secret.clone().ok_or_else(|| {
                    anyhow::anyhow!("give --credentials or --key-id/--key-secret")
                })?,
            }]
        };
    anyhow::ensure!(!merchants.is_empty(), "no merchant credentials");
    anyhow::ensure!(
        args.rate > 0 && args.duration > 0,
        "rate and duration must be positive"
    );
    anyhow::ensure!(!args.wallets.is_empty(), "--wallets is empty");
    let qr_wallets: Vec<Wallet> = args
        .wallets
        .iter()
        .copied()
        .filter(|w| *w != Wallet::Unionpay)
        .collect();
    anyhow::ensure!(
        qr_wallets.len() == args.wallets.len()
            || args.mix.share(Scenario::Qr) == 0.0
            || !qr_wallets.is_empty(),
        "the qr scenario needs wechat or alipay in --wallets"
    );
    let qr_wallets = if qr_wallets.is_empty() {
        vec![Wallet::Wechat]
    } else {
        qr_wallets
    };
    let one_code = args.mix.share(Scenario::OneCode) > 0.0;
    anyhow::ensure!(
        !one_code || !args.one_code_wallets.is_empty(),
        "--one-code-wallets is empty"
    );
    anyhow::ensure!(
        !one_code || (1..=1000).contains(&args.one_code_codes),
        "--one-code-codes must be 1 to 1000"
    );
    anyhow::ensure!(
        args.one_code_poll_ms > 0 && args.one_code_wait > 0,
        "--one-code-poll-ms and --one-code-wait must be positive"
    );

    // The RSA bound is measured before the load, on a machine otherwise idle.
    let rsa = if args.rsa_bound {
        eprintln!(
            "measuring: openssl speed -seconds {} rsa2048",
            args.openssl_seconds
        );
        let out = sysinfo::run_openssl_speed(args.openssl_seconds)?;
        print!("{out}");
        let (sign, verify) = sysinfo::parse_openssl_speed(&out).ok_or_else(|| {
            anyhow::anyhow!("could not read sign/s and verify/s from openssl speed")
        })?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Some(sysinfo::RsaBound::new(cores, sign, verify))
    } else {
        None
    };

    let url = args.url.trim_end_matches('/').to_string();
    let sandbox_url = args
        .sandbox_url
        .clone()
        .unwrap_or_else(|| format!("{url}/sandbox"));
    let merchants = Arc::new(merchants);
    let api = Api::new(
        &url,
        args.concurrency,
        Duration::from_millis(args.timeout_ms),
    )?;
    let codes = if one_code {
        let codes = create_codes(&api, &merchants, args.one_code_codes, args.stores).await?;
        println!(
            "one-code: {} static codes created ({} per merchant), paid with {}",
            codes.iter().map(Vec::len).sum::<usize>(),
            args.one_code_codes,
            args.one_code_wallets
                .iter()
                .map(|w| w.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        codes
    } else {
        Vec::new()
    };
    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        api,
        sandbox_url: sandbox_url.trim_end_matches('/').to_string(),
        recent: (0..merchants.len())
            .map(|_| Mutex::new(VecDeque::new()))
            .collect(),
        merchants: merchants.clone(),
        stores: args.stores,
        wallets: args.wallets.clone(),
        qr_wallets,
        password_pct: args.password_pct,
        payer: onecode::Payer::new(args.concurrency, Duration::from_millis(args.timeout_ms))?,
        codes,
        one_code_wallets: args.one_code_wallets.clone(),
        one_code_poll: Duration::from_millis(args.one_code_poll_ms),
        one_code_wait: Duration::from_secs(args.one_code_wait),
        run_id: uuid::Uuid::now_v7().simple().to_string(),
        start,
        measure_from: start + Duration::from_secs(args.warmup),
        stats: Mutex::new(Stats::default()),
        acks: Mutex::new(Vec::new()),
        ok_requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        last_finish_us: AtomicU64::new(0),
    });
    println!(
        "paymux-loadtest: mix {} at {} operations/s for {} s (+{} s warm-up) against {url}, {} merchants × {} stores, at most {} in flight",
        args.mix,
        args.rate,
        args.duration,
        args.warmup,
        merchants.len(),
        args.stores,
        args.concurrency
    );
    let cpu_before = sysinfo::cpu_seconds(&args.server_pid)?;

    let sent = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicU64::new(0));
    let progress = {
        let (ctx, sent, in_flight) = (ctx.clone(), sent.clone(), in_flight.clone());
        let tty = std::io::stderr().is_terminal();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let ok = ctx.ok_requests.load(Ordering::Relaxed);
                let p99 = {
                    let stats = ctx.stats.lock().expect("stats lock");
                    let second = ctx.second(Instant::now()).saturating_sub(1);
                    stats
                        .series
                        .get(second)
                        .map(|b| stats::Quantiles::of(&b.latency).p99)
                        .unwrap_or(0.0)
                };
                let line = format!(
                    "  t={:>4.0}s operations sent {} in flight {} | requests ok {} ({} /s) errors {} | p99 {:.1} ms",
                    ctx.start.elapsed().as_secs_f64(),
                    sent.load(Ordering::Relaxed),
                    in_flight.load(Ordering::Relaxed),
                    ok,
                    ok - last,
                    ctx.errors.load(Ordering::Relaxed),
                    p99
                );
                if tty {
                    eprint!("\r{line}\x1b[K");
                } else {
                    eprintln!("{line}");
                }
                last = ok;
            }
        })
    };

    let slots = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let end = ctx.measure_from + Duration::from_secs(args.duration);
    let total = u64::from(args.rate) * (args.warmup + args.duration);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        let scenario = args.mix.pick(i);
        let op = Op {
            i,
            merchant: (i % merchants.len() as u64) as u32,
            due,
            measured: due >= ctx.measure_from,
        };
        let permit = slots.clone().acquire_owned();
        let (ctx, in_flight) = (ctx.clone(), in_flight.clone());
        sent.fetch_add(1, Ordering::Relaxed);
        tasks.push(tokio::spawn(async move {
            let _permit = permit.await;
            in_flight.fetch_add(1, Ordering::Relaxed);
            ctx.operation(op, scenario).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    let cpu_after = sysinfo::cpu_seconds(&args.server_pid)?;

    let measured_us = ctx
        .last_finish_us
        .load(Ordering::Relaxed)
        .saturating_sub(args.warmup * 1_000_000);
    let measured_s = (measured_us as f64 / 1e6).max(args.duration as f64);
    let (mut report, acks) = {
        let stats = ctx.stats.lock().expect("stats lock");
        let scenarios = stats::rows(&stats.scenarios, measured_s);
        let requests_by_kind = stats::rows(&stats.requests, measured_s);
        let requests: u64 = requests_by_kind.iter().map(|r| r.ok).sum();
        let operations: u64 = scenarios.iter().map(|r| r.ok).sum();
        let code_scan_per_s = scenarios
            .iter()
            .find(|r| r.name == "code_scan")
            .map(|r| r.per_s)
            .unwrap_or(0.0);
        let report = Report {
            mix: args.mix.to_string(),
            url: url.clone(),
            target_rate_per_s: args.rate,
            warmup_s: args.warmup,
            duration_s: args.duration,
            concurrency: args.concurrency,
            merchants: merchants.len(),
            stores: args.stores,
            measured_s,
            operations_per_s: operations as f64 / measured_s,
            requests,
            requests_per_s: requests as f64 / measured_s,
            payments: stats.payments_measured,
            payments_per_s: stats.payments_measured as f64 / measured_s,
            errors: stats.error_count(),
            errors_by_code: stats.errors.clone(),
            scenarios,
            requests_by_kind,
            series: stats::series_points(&stats.series, args.warmup),
            server_cpu: (!args.server_pid.is_empty()).then(|| {
                CpuReport::new(
                    args.server_pid.clone(),
                    &cpu_before,
                    &cpu_after,
                    stats.payments_total,
                    stats.requests_total,
                )
            }),
            rsa: rsa.map(|bound| RsaReport {
                ratio: bound.ratio(code_scan_per_s),
                bound,
                code_scan_per_s,
            }),
            audit: None,
        };
        (
            report,
            std::mem::take(&mut *ctx.acks.lock().expect("acks lock")),
        )
    };
    println!();
    print!("{}", report.text());

    if !args.no_audit {
        println!("post-run audit of {} acknowledged payments…", acks.len());
        let paymux_bin = args.paymux_bin.clone().or_else(|| {
            let sibling = std::env::current_exe().ok()?.with_file_name("paymux");
            sibling.exists().then_some(sibling)
        });
        let audit_api = Arc::new(Api::new(
            &url,
            args.audit_concurrency,
            Duration::from_millis(args.timeout_ms),
        )?);
        let result = audit::run(
            audit_api,
            merchants.clone(),
            acks,
            audit::AuditConfig {
                concurrency: args.audit_concurrency,
                settle_wait: Duration::from_secs(args.audit_wait),
                duplicates: !args.no_duplicate_check,
                paymux_bin,
                paymux_config: args.paymux_config.clone(),
            },
        )
        .await;
        print!("{}", result.text());
        report.audit = Some(result);
    }

    let json = serde_json::to_vec_pretty(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &json)?;
        println!("report: {}", path.display());
    }
    if let Some(prefix) = &args.report {
        if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let with = |ext: &str| PathBuf::from(format!("{}.{ext}", prefix.display()));
        let svg = with("svg");
        let title = format!(
            "paymux-loadtest: {} at {}/s",
            report.mix, report.target_rate_per_s
        );
        chart::draw(&svg, &title, &report.series)?;
        let svg_name = svg.file_name().map(|n| n.to_string_lossy().into_owned());
        std::fs::write(with("json"), &json)?;
        std::fs::write(with("md"), report.markdown(svg_name.as_deref()))?;
        println!(
            "report: {} {} {}",
            with("json").display(),
            with("md").display(),
            svg.display()
        );
    }
    let errors_ok = report.errors <= args.max_errors;
    let audit_ok = report.audit.as_ref().is_none_or(|a| a.clean);
    if !errors_ok {
        println!(
            "FAILED: {} errors (at most {} allowed)",
            report.errors, args.max_errors
        );
    }
    if !audit_ok {
        println!("FAILED: the post-run audit found problems");
    }
    Ok(errors_ok && audit_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_codes_classify_and_choose_the_payer() {
        for (wallet, prefix, len) in [
            (Wallet::Wechat, "13", 18),
            (Wallet::Alipay, "28", 18),
            (Wallet::Unionpay, "62", 19),
        ] {
            let instant = Ctx::payment_code(123_456_789, wallet, false);
            assert!(
                instant.starts_with(prefix) && instant.len() == len,
                "{instant}"
            );
            assert!(!instant.ends_with("1001"));
            assert!(Ctx::payment_code(77, wallet, true).ends_with("1001"));
        }
        // Instant payers never end in 1001–1005.
        for i in 0..5000 {
            let c = Ctx::payment_code(i, Wallet::Wechat, false);
            let tail: u32 = c[c.len() - 4..].parse().unwrap();
            assert!(tail < 1000, "{c}");
        }
    }

    #[test]
    fn password_share() {
        let n = (0..10_000).filter(|i| Ctx::is_password(*i, 5.0)).count();
        assert_eq!(n, 500);
        assert_eq!((0..10_000).filter(|i| Ctx::is_password(*i, 0.0)).count(), 0);
    }
}
