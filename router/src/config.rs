//! Configuration: defaults written down here, overridden by a TOML file and then by `PAYMUX_*`
//! environment variables. Every key is documented in the README.

use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A secret string that never prints.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// The externally visible base URL (used in links, QR payloads and notify URLs).
    pub public_base_url: Option<String>,
    /// Directory for the embedded database, generated keys and sandbox books.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`. Default: `sqlite://<data_dir>/paymux.sqlite`.
    pub database_url: Option<Secret>,
    /// Maximum database connections in the pool.
    pub database_max_connections: u32,
    /// `redis://…`: enables Redis for nonces and rate limits (shared by every node). Unset: in-process.
    pub redis_url: Option<Secret>,
    /// 32-byte master key (base64 or 64 hex digits) that encrypts merchant secrets at rest.
    /// Unset: a key generated once into `<data_dir>/master.key`.
    pub master_key: Option<Secret>,
    /// Bearer token of the admin API (`/admin/v1`). Unset: a token generated once into
    /// `<data_dir>/admin.token` (mode 0600).
    pub admin_token: Option<Secret>,
    /// How often each node checks whether channel accounts, routes or fee rates changed.
    pub routing_refresh_ms: u64,
    /// Create and print a demo merchant on first start, when the database has no merchant.
    pub demo_merchant: bool,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// Default payment lifetime when a request does not say.
    pub payment_expires_in_seconds_default: u32,
    /// Write batcher: most commands per database transaction.
    pub batch_items_max: usize,
    /// Write batcher: how long a batch waits for more commands before it commits.
    pub batch_linger_us: u64,
    /// Write batcher: transactions in flight at once (SQLite always uses 1).
    pub batch_workers: usize,
    /// Write batcher: queued commands beyond which callers wait (back-pressure).
    pub batch_queue_capacity: usize,
    /// How often the sweeper closes expired payments.
    pub sweeper_interval_ms: u64,
    /// Most payments the sweeper closes per round.
    pub sweeper_batch_max: u32,
    /// Most payments with a channel order the sweeper closes at their channels at once.
    pub sweeper_channel_concurrency: usize,
    /// Requests per second each merchant may send to `/v1/*` (sustained); 0 disables the limit.
    pub rate_limit_per_second: u32,
    /// Requests a merchant may send at once above the sustained rate (the bucket size).
    pub rate_limit_burst: u32,
    /// Payments the one-code cashier creates per second for one code (anonymous requests); `0`
    /// disables the limit.
    pub cashier_rate_limit_per_second: u32,
    /// …and at once above that rate.
    pub cashier_rate_limit_burst: u32,
    /// Log format: `text` or `json`.
    pub log_format: String,
    /// The merchant fee rate in basis points (60 = 0.6%), posted to the ledger with every payment.
    pub merchant_fee_rate_bps: u32,
    /// Code payments waiting for the payer or with an unknown outcome: query this often…
    pub code_pay_poll_interval_ms: u64,
    /// …until this long after the charge, then reverse.
    pub code_pay_deadline_ms: u64,
    /// A code payment still `processing` this long after its last change lost its follow-up (the
    /// node stopped, the database refused the write): the sweeper asks the channel and finishes it.
    /// At least `code_pay_deadline_ms` plus two poll intervals.
    pub processing_recovery_after_ms: u64,
    /// City in static codes' EMVCo payloads (field 60, 1–15 characters).
    pub code_city: String,
    /// Merchant category code in static codes' EMVCo payloads (field 52, 4 digits).
    pub code_mcc: String,
    /// Mount the channel sandboxes under `/sandbox/<channel>` in `paymux serve`.
    pub sandbox: bool,
    /// Base URL of a standalone `paymux sandbox` (e.g. `http://127.0.0.1:8090`): with `sandbox`
    /// on, this node mounts no sandboxes and routes payments to that one, with the sandbox keys of
    /// `<data_dir>/sandbox` (the directory that `paymux sandbox` uses). Unset: its own sandboxes.
    pub sandbox_url: Option<String>,
    /// Sandbox fee rate in basis points of the order amount (60 = 0.6%).
    pub sandbox_fee_rate_bps: u32,
    /// Divides the sandboxes' delays (notification retries, password wait); 1 = real time.
    pub sandbox_time_compression: u32,
    /// Faults the sandboxes inject from the start (`[sandbox_faults]` table; changeable at run time
    /// with `PUT /sandbox/<channel>/sandbox/faults`).
    pub sandbox_faults: paymux_channels::sandbox::Faults,
    /// Webhooks: how often the dispatcher looks for due events.
    pub webhook_poll_interval_ms: u64,
    /// Webhooks: most events claimed per round.
    pub webhook_batch_max: u32,
    /// Webhooks: deliveries in flight at once (per node).
    pub webhook_concurrency: usize,
    /// Webhooks: timeout of one delivery request.
    pub webhook_timeout_ms: u64,
    /// Webhooks: multiplies the retry schedule (0 s, 15 s, 1 min, … 24 h); 1 = as documented.
    pub webhook_retry_schedule_scale: f64,
    /// Webhooks: deliver to loopback, private and link-local addresses too (development; off by
    /// default so a merchant's `notify_url` cannot reach the platform's own network).
    pub webhook_allow_private_targets: bool,
    /// Circuit breaker per channel account: opens at this error rate (%) in its 30 s window…
    pub breaker_error_rate_pct: u32,
    /// …once the window holds at least this many calls.
    pub breaker_min_calls: u32,
    /// How long an open breaker fails new payments fast before it lets probes through.
    pub breaker_open_ms: u64,
    /// New payments let through while half-open; as many successes close the breaker.
    pub breaker_half_open_probes: u32,
    /// Also opens when the window's p95 call latency is over this; 0 disables.
    pub breaker_latency_p95_ms: u64,
    /// Reconciliation: a success of ours within this many seconds before the day's end (Asia/Shanghai)
    /// that the channel's bill does not list is carried over to the next days' runs.
    pub reconcile_carry_over_window_seconds: u64,
    /// Reconciliation: a carried-over success still missing from the bills this many days later
    /// becomes an exception.
    pub reconcile_carry_over_days: u32,
    /// `paymux serve` reconciles the previous day at this time of day (Asia/Shanghai, `HH:MM` or
    /// `HH:MM:SS`) on one node; empty or `off` disables it.
    pub reconcile_schedule: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            public_base_url: None,
            data_dir: PathBuf::from("paymux-data"),
            database_url: None,
            database_max_connections: 16,
            redis_url: None,
            master_key: None,
            admin_token: None,
            routing_refresh_ms: 2000,
            demo_merchant: true,
            body_limit_bytes: 64 * 1024,
            payment_expires_in_seconds_default: 15 * 60,
            batch_items_max: 512,
            batch_linger_us: 2000,
            batch_workers: 4,
            batch_queue_capacity: 65536,
            sweeper_interval_ms: 1000,
            sweeper_batch_max: 1000,
            sweeper_channel_concurrency: 16,
            rate_limit_per_second: 1000,
            rate_limit_burst: 2000,
            cashier_rate_limit_per_second: 5,
            cashier_rate_limit_burst: 20,
            log_format: "text".into(),
            merchant_fee_rate_bps: 60,
            code_pay_poll_interval_ms: 5_000,
            code_pay_deadline_ms: 45_000,
            processing_recovery_after_ms: 120_000,
            code_city: "Shanghai".into(),
            code_mcc: "5999".into(),
            sandbox: true,
            sandbox_url: None,
            sandbox_fee_rate_bps: 60,
            sandbox_time_compression: 1,
            sandbox_faults: paymux_channels::sandbox::Faults::default(),
            webhook_poll_interval_ms: 500,
            webhook_batch_max: 100,
            webhook_concurrency: 16,
            webhook_timeout_ms: 10_000,
            webhook_retry_schedule_scale: 1.0,
            webhook_allow_private_targets: false,
            breaker_error_rate_pct: 50,
            breaker_min_calls: 20,
            breaker_open_ms: 30_000,
            breaker_half_open_probes: 3,
            breaker_latency_p95_ms: 0,
            reconcile_carry_over_window_seconds: 600,
            reconcile_carry_over_days: 2,
            reconcile_schedule: "10:00".into(),
        }
    }
}

/// The configuration keys, as read from `PAYMUX_<KEY>` environment variables. Other `PAYMUX_*`
/// variables (test and benchmark settings) are not configuration.
const KEYS: &[&str] = &[
    "listen",
    "public_base_url",
    "data_dir",
    "database_url",
    "database_max_connections",
    "redis_url",
    "master_key",
    "admin_token",
    "routing_refresh_ms",
    "demo_merchant",
    "body_limit_bytes",
    "payment_expires_in_seconds_default",
    "batch_items_max",
    "batch_linger_us",
    "batch_workers",
    "batch_queue_capacity",
    "sweeper_interval_ms",
    "sweeper_batch_max",
    "sweeper_channel_concurrency",
    "rate_limit_per_second",
    "rate_limit_burst",
    "cashier_rate_limit_per_second",
    "cashier_rate_limit_burst",
    "log_format",
    "merchant_fee_rate_bps",
    "code_pay_poll_interval_ms",
    "code_pay_deadline_ms",
    "processing_recovery_after_ms",
    "code_city",
    "code_mcc",
    "sandbox",
    "sandbox_url",
    "sandbox_fee_rate_bps",
    "sandbox_time_compression",
    "webhook_poll_interval_ms",
    "webhook_batch_max",
    "webhook_concurrency",
    "webhook_timeout_ms",
    "webhook_retry_schedule_scale",
    "webhook_allow_private_targets",
    "breaker_error_rate_pct",
    "breaker_min_calls",
    "breaker_open_ms",
    "breaker_half_open_probes",
    "breaker_latency_p95_ms",
    "reconcile_carry_over_window_seconds",
    "reconcile_carry_over_days",
    "reconcile_schedule",
];

impl Config {
    /// Defaults, then the TOML file (if given), then `PAYMUX_*` environment variables
    /// (`PAYMUX_DATABASE_URL`, `PAYMUX_REDIS_URL`, `PAYMUX_LISTEN`, …).
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(
                Env::prefixed("PAYMUX_")
                    .filter(|key| KEYS.iter().any(|k| key.as_str().eq_ignore_ascii_case(k))),
            )
            .extract()
            .map_err(Box::new)
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_string(),
            None => format!("sqlite://{}/paymux.sqlite", self.data_dir.display()),
        }
    }

    pub fn is_postgres(&self) -> bool {
        let url = self.database_url();
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }

    /// The public base URL without a trailing slash.
    pub fn public_base_url(&self, bound: SocketAddr) -> String {
        match &self.public_base_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{bound}"),
        }
    }
}

impl Config {
    /// The sandboxes' options: their books and keys live under `<data_dir>/sandbox`.
    pub fn sandbox_options(&self) -> paymux_channels::sandbox::SandboxOptions {
        paymux_channels::sandbox::SandboxOptions {
            data_dir: self.data_dir.join("sandbox"),
            fee_rate_bps: self.sandbox_fee_rate_bps,
            time_compression: self.sandbox_time_compression.max(1),
            faults: self.sandbox_faults.clone(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_configuration() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url(), "sqlite://paymux-data/paymux.sqlite");
        assert!(!c.is_postgres());
    }

    #[test]
    fn sandbox_faults_come_from_a_toml_table() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "paymux.toml",
                "[sandbox_faults]\nerror_5xx_pct = 2.5\nlatency_max_ms = 40\n",
            )?;
            let c = Config::load(Some(std::path::Path::new("paymux.toml"))).expect("valid");
            assert_eq!(c.sandbox_options().faults.error_5xx_pct, 2.5);
            assert_eq!(c.sandbox_options().faults.latency_max_ms, 40);
            jail.create_file("bad.toml", "[sandbox_faults]\nerror_pct = 1.0\n")?;
            assert!(Config::load(Some(std::path::Path::new("bad.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn sandbox_url_comes_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            assert_eq!(Config::load(None).map_err(|e| *e)?.sandbox_url, None);
            jail.set_env("PAYMUX_SANDBOX_URL", "http://127.0.0.1:8090");
            let c = Config::load(None).map_err(|e| *e)?;
            assert_eq!(c.sandbox_url.as_deref(), Some("http://127.0.0.1:8090"));
            Ok(())
        });
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config {
            master_key: Some(Secret::new("s3cr3t")),
            admin_token: Some(Secret::new("t0k3n")),
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(!format!("{c:?}").contains("t0k3n"));
    }

    #[test]
    fn file_and_env_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "paymux.toml",
                "listen = \"127.0.0.1:9999\"\nbatch_items_max = 7\n",
            )?;
            jail.set_env("PAYMUX_BATCH_ITEMS_MAX", "9");
            jail.set_env("PAYMUX_DATABASE_URL", "postgres://u@h/db");
            jail.set_env(
                "PAYMUX_TEST_DATABASE_URL",
                "ignored: not a configuration key",
            );
            let c = Config::load(Some(std::path::Path::new("paymux.toml"))).map_err(|e| *e)?;
            assert_eq!(c.listen.port(), 9999);
            assert_eq!(c.batch_items_max, 9);
            assert!(c.is_postgres());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("paymux.toml", "lisen = \"127.0.0.1:9999\"\n")?;
            assert!(Config::load(Some(std::path::Path::new("paymux.toml"))).is_err());
            Ok(())
        });
    }
}
