//! `paymux-loadtest`: an open-loop load generator for the paymux merchant API.
//!
//! Requests are sent at a constant arrival rate whatever the server does; each request's latency is
//! measured from its *intended* send time, so a stalled server shows up as latency instead of
//! silently lowering the offered load (no coordinated omission). Concurrency is bounded: when every
//! slot is busy, a request waits for one and that wait counts in its latency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

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
    /// Signed `POST /v1/payments` at a constant rate.
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Merchant credentials: the JSON printed by `paymux merchant create`.
    #[arg(long, conflicts_with_all = ["key_id", "key_secret"])]
    credentials: Option<std::path::PathBuf>,
    #[arg(long, env = "PAYMUX_KEY_ID")]
    key_id: Option<String>,
    #[arg(long, env = "PAYMUX_KEY_SECRET", hide_env_values = true)]
    key_secret: Option<String>,
    /// Target arrival rate, requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Measured duration, seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Warm-up before measuring, seconds (sent at the same rate, not recorded).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 1024)]
    concurrency: usize,
    /// Per-request timeout, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Deserialize)]
struct Credentials {
    key_id: String,
    key_secret: String,
}

struct Stats {
    latency_us: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Create(args) => runtime.block_on(create(args)),
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let (key_id, key_secret) = match &args.credentials {
        Some(path) => {
            let c: Credentials = serde_json::from_slice(
                &std::fs::read(path).with_context(|| format!("read {}", path.display()))?,
            )
            .context("credentials file is not the JSON of `paymux merchant create`")?;
            (c.key_id, c.key_secret)
        }
        None => (
            args.key_id
                .clone()
                .context("give --credentials or --key-id/--key-secret")?,
            args.key_secret
                .clone()
                .context("give --credentials or --key-id/--key-secret")?,
        ),
    };
    anyhow::ensure!(
        args.rate > 0 && args.duration > 0,
        "rate and duration must be positive"
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_millis(args.timeout_ms))
        .tcp_nodelay(true)
        .build()?;
    let url = format!("{}/v1/payments", args.url.trim_end_matches('/'));
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let key = Arc::new((key_id, key_secret.into_bytes()));
    let stats = Arc::new(Mutex::new(Stats {
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        ok: 0,
        errors: BTreeMap::new(),
    }));
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    // When the last measured request finished (µs after start): the achieved rate is measured over
    // the time the server actually took, not the time the generator took to offer the load.
    let last_finish_us = Arc::new(AtomicU64::new(0));

    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.duration);
    let total = (u64::from(args.rate)) * (args.warmup + args.duration);
    println!(
        "paymux-loadtest create: {} req/s for {} s (+{} s warm-up) against {url}, at most {} in flight",
        args.rate, args.duration, args.warmup, args.concurrency
    );

    let progress = {
        let (sent, done, stats) = (sent.clone(), done.clone(), stats.clone());
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let d = done.load(Ordering::Relaxed);
                let errors: u64 = stats.lock().await.errors.values().sum();
                eprintln!(
                    "  t={:>4.0}s sent={} done={} ({} /s) errors={}",
                    start.elapsed().as_secs_f64(),
                    sent.load(Ordering::Relaxed),
                    d,
                    d - last,
                    errors
                );
                last = d;
            }
        })
    };

    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let intended = start + interval.mul_f64(i as f64);
        if intended >= end {
            break;
        }
        tokio::time::sleep_until(intended).await;
        let permit = slots.clone().acquire_owned();
        let last_finish_us = last_finish_us.clone();
        let (client, url, key, stats, done) = (
            client.clone(),
            url.clone(),
            key.clone(),
            stats.clone(),
            done.clone(),
        );
        let order_no = format!("lt-{run_id}-{i}");
        sent.fetch_add(1, Ordering::Relaxed);
        tasks.push(tokio::spawn(async move {
            let _permit = permit.await;
            let body = serde_json::to_vec(&serde_json::json!({
                "merchant_order_no": order_no,
                "amount": 1 + (i % 99_999) as i64,
                "currency": "CNY",
                "subject": "load test",
                "method": "qr_merchant",
            }))
            .expect("serialise");
            let nonce = uuid::Uuid::new_v4().simple().to_string();
            let auth = paymux_model::auth::authorization_header(
                &key.0,
                &key.1,
                "POST",
                "/v1/payments",
                chrono::Utc::now().timestamp(),
                &nonce,
                &body,
            );
            let result = client
                .post(&url)
                .header("authorization", auth)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let outcome = match result {
                Ok(resp) if resp.status() == 201 => {
                    let _ = resp.bytes().await;
                    Ok(())
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body: serde_json::Value = resp.json().await.unwrap_or_default();
                    Err(format!("{status} {}", body["code"].as_str().unwrap_or("-")))
                }
                Err(e) if e.is_timeout() => Err("timeout".to_string()),
                Err(e) if e.is_connect() => Err("connect".to_string()),
                Err(_) => Err("transport".to_string()),
            };
            let finished = Instant::now();
            done.fetch_add(1, Ordering::Relaxed);
            if intended < measure_from {
                return;
            }
            last_finish_us.fetch_max((finished - start).as_micros() as u64, Ordering::Relaxed);
            let mut s = stats.lock().await;
            match outcome {
                Ok(()) => {
                    s.ok += 1;
                    let _ = s
                        .latency_us
                        .record((finished - intended).as_micros().max(1) as u64);
                }
                Err(code) => *s.errors.entry(code).or_default() += 1,
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    let measured_us = last_finish_us
        .load(Ordering::Relaxed)
        .saturating_sub(args.warmup * 1_000_000);
    let elapsed_s = (measured_us as f64 / 1e6).max(args.duration as f64);
    let s = stats.lock().await;
    let ms = |q: f64| s.latency_us.value_at_quantile(q) as f64 / 1000.0;
    let errors: u64 = s.errors.values().sum();
    let report = serde_json::json!({
        "mode": "create",
        "url": args.url,
        "target_rate_per_s": args.rate,
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "succeeded": s.ok,
        "errors": errors,
        "errors_by_code": s.errors,
        "achieved_rate_per_s": s.ok as f64 / elapsed_s,
        "measured_s": elapsed_s,
        "latency_ms": {
            "p50": ms(0.50), "p90": ms(0.90), "p99": ms(0.99), "p99_9": ms(0.999),
            "max": s.latency_us.max() as f64 / 1000.0,
        },
    });
    println!(
        "\nresult (measured {} s after {} s warm-up):",
        args.duration, args.warmup
    );
    println!(
        "  acknowledged payments: {} ({:.0} /s, target {} /s)",
        s.ok,
        s.ok as f64 / elapsed_s,
        args.rate
    );
    println!(
        "  latency from intended send: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        ms(0.999),
        s.latency_us.max() as f64 / 1000.0
    );
    println!("  errors: {errors}");
    for (code, n) in &s.errors {
        println!("    {code}: {n}");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        println!("  report: {}", path.display());
    }
    Ok(())
}
