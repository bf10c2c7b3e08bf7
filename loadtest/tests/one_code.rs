//! The `one_code` scenario end to end: the real `paymux serve` (its sandboxes mounted, a fresh
//! database: SQLite in a temporary directory, or a new PostgreSQL database when
//! `PAYMUX_TEST_DATABASE_URL` is set) on a free loopback port, two merchants made by `paymux
//! merchant create`, then `paymux-loadtest run --mix one_code` at a low rate; its JSON report must
//! show one-code payments paid in every wallet, no error, and a clean audit (every payment found
//! `succeeded` with its amount, method and wallet; `paymux ledger audit` clean).
//!
//! `paymux` is another package's binary: the test uses the one next to `paymux-loadtest` in the
//! target directory, and builds it (`cargo build -p paymux --bin paymux`) when it is missing or
//! older than the server's sources.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// The workspace's crates that go into `paymux`.
const SERVER_CRATES: &[&str] = &[
    "router",
    "channels",
    "ledger",
    "model",
    "qrcode",
    "reconcile",
];

/// Raises `newest` to the modification time of `path`, or of the newest file under it.
fn newest_source(path: &Path, newest: &mut SystemTime) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        if let Ok(m) = meta.modified() {
            *newest = (*newest).max(m);
        }
        return;
    }
    if path.file_name().is_some_and(|n| n == "target") {
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for e in entries.flatten() {
        newest_source(&e.path(), newest);
    }
}

/// `paymux` of the same profile as this test, built when missing or older than its sources.
fn paymux_bin() -> PathBuf {
    let loadtest = PathBuf::from(env!("CARGO_BIN_EXE_paymux-loadtest"));
    let profile_dir = loadtest.parent().expect("a target directory");
    let bin = profile_dir.join(format!("paymux{}", std::env::consts::EXE_SUFFIX));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace");
    let mut newest = SystemTime::UNIX_EPOCH;
    for c in SERVER_CRATES {
        newest_source(&workspace.join(c), &mut newest);
    }
    newest_source(&workspace.join("Cargo.toml"), &mut newest);
    newest_source(&workspace.join("Cargo.lock"), &mut newest);
    let fresh = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .is_ok_and(|built| built >= newest);
    if !fresh {
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let target_dir = profile_dir.parent().expect("a target directory");
        eprintln!(
            "building {} (cargo build -p paymux --bin paymux --profile {profile})",
            bin.display()
        );
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // What cargo sets for this test's process describes this package, not the build: left in,
        // it would change build scripts' inputs (ring's reads CARGO_MANIFEST_DIR) and rebuild
        // dependencies that `cargo build -p paymux` has already built.
        for (k, _) in std::env::vars() {
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_")
                || k.starts_with("CARGO_MANIFEST_")
                || matches!(
                    k.as_str(),
                    "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
                )
            {
                cargo.env_remove(k);
            }
        }
        let status = cargo
            .args([
                "build",
                "-p",
                "paymux",
                "--bin",
                "paymux",
                "--profile",
                profile,
            ])
            .arg("--manifest-path")
            .arg(workspace.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", target_dir)
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build -p paymux failed");
    }
    assert!(bin.exists(), "no {}", bin.display());
    bin
}

/// A fresh database: a new PostgreSQL database when `PAYMUX_TEST_DATABASE_URL` is set (as the
/// router's tests make them), else SQLite in `dir`.
async fn fresh_database(dir: &Path) -> String {
    match std::env::var("PAYMUX_TEST_DATABASE_URL") {
        Ok(admin) if !admin.is_empty() => {
            use sqlx::Connection as _;
            let name = format!("paymux_test_{}", uuid::Uuid::now_v7().simple());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to PAYMUX_TEST_DATABASE_URL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .expect("create database");
            conn.close().await.expect("close");
            let (base, query) = match admin.split_once('?') {
                Some((b, q)) => (b.to_string(), format!("?{q}")),
                None => (admin.clone(), String::new()),
            };
            let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
            format!("{prefix}/{name}{query}")
        }
        _ => format!("sqlite://{}/paymux.sqlite", dir.display()),
    }
}

/// One configuration for every `paymux` process of the test (and for `paymux-loadtest`, which runs
/// `paymux ledger audit` with it): nothing of the caller's `PAYMUX_*` environment leaks in.
fn paymux_env(cmd: &mut Command, data_dir: &Path, database_url: &str) {
    for (k, _) in std::env::vars() {
        if k.starts_with("PAYMUX_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PAYMUX_DATA_DIR", data_dir)
        .env("PAYMUX_DATABASE_URL", database_url)
        .env("PAYMUX_DEMO_MERCHANT", "false")
        .env("PAYMUX_RECONCILE_SCHEDULE", "off")
        .env("PAYMUX_LOG", "warn");
    if let Ok(redis) = std::env::var("PAYMUX_TEST_REDIS_URL")
        && !redis.is_empty()
    {
        cmd.env("PAYMUX_REDIS_URL", redis);
    }
}

/// The server process, stopped when the test ends however it ends.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `paymux serve` on `127.0.0.1:0`; returns it and its base URL (from the `API:` line it prints).
fn serve(paymux: &Path, data_dir: &Path, database_url: &str, log: PathBuf) -> (Server, String) {
    let mut cmd = Command::new(paymux);
    paymux_env(&mut cmd, data_dir, database_url);
    let mut child = cmd
        .arg("serve")
        .env("PAYMUX_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start paymux serve");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut file = std::fs::File::create(&log).expect("log file");
    let mut err_file = file.try_clone().expect("log file");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
            if let Some(api) = line.trim().strip_prefix("API:") {
                let _ = tx.send(api.trim().trim_end_matches("/v1").to_string());
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(err_file, "{line}");
        }
    });
    let server = Server { child, log };
    let base = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(base) => base,
        Err(_) => panic!("paymux serve did not start:\n{}", server.log_tail()),
    };
    (server, base)
}

#[tokio::test]
async fn one_code_payers_pay_in_every_wallet_with_a_clean_audit() {
    let paymux = paymux_bin();
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let database_url = fresh_database(dir.path()).await;
    let backend = if database_url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    };

    // Two merchants, made as `deploy/local/up.sh` makes them (with the sandbox accounts and routes).
    let run = |args: &[&str]| {
        let mut cmd = Command::new(&paymux);
        paymux_env(&mut cmd, &data_dir, &database_url);
        let out = cmd.args(args).output().expect("run paymux");
        assert!(
            out.status.success(),
            "paymux {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    run(&["migrate"]);
    let merchants: Vec<Value> = ["Load merchant 1", "Load merchant 2"]
        .iter()
        .map(|name| serde_json::from_slice(&run(&["merchant", "create", "--name", name])).unwrap())
        .collect();
    let credentials = dir.path().join("merchants.json");
    std::fs::write(&credentials, serde_json::to_vec(&merchants).unwrap()).unwrap();

    let (server, base) = serve(
        &paymux,
        &data_dir,
        &database_url,
        dir.path().join("serve.log"),
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status().is_success() => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            r => panic!(
                "{base}/readyz: {:?}\n{}",
                r.map(|r| r.status()),
                server.log_tail()
            ),
        }
    }

    // Six payers a second for four seconds (one of warm-up), each wallet in turn.
    let report = dir.path().join("report.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paymux-loadtest"));
    paymux_env(&mut cmd, &data_dir, &database_url);
    let out = cmd
        .args(["run", "--url", &base, "--mix", "one_code", "--rate", "6"])
        .args(["--warmup", "1", "--duration", "3", "--audit-wait", "30"])
        .arg("--credentials")
        .arg(&credentials)
        .arg("--json")
        .arg(&report)
        .arg("--paymux-bin")
        .arg(&paymux)
        .output()
        .expect("run paymux-loadtest");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{backend}: paymux-loadtest failed:\n{printed}\nserver log:\n{}",
        server.log_tail()
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();

    let one_code = r["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "one_code")
        .unwrap_or_else(|| panic!("{backend}: no one_code row:\n{printed}"));
    let ok = one_code["ok"].as_u64().unwrap();
    assert!(
        ok > 0,
        "{backend}: no one-code payment succeeded:\n{printed}"
    );
    assert_eq!(r["errors"], 0, "{backend}:\n{printed}");
    for wallet in ["wechat", "alipay", "unionpay"] {
        let kind = format!("one_code.{wallet}.pay");
        let paid = r["requests_by_kind"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == kind.as_str())
            .and_then(|k| k["ok"].as_u64())
            .unwrap_or(0);
        assert!(paid > 0, "{backend}: nothing paid in {wallet}:\n{printed}");
    }
    let audit = &r["audit"];
    assert_eq!(audit["clean"], true, "{backend}:\n{printed}");
    assert_eq!(audit["ledger_audit"], "passed", "{backend}:\n{printed}");
    assert_eq!(audit["mismatches"], 0, "{backend}:\n{printed}");
    assert_eq!(audit["duplicates"], 0, "{backend}:\n{printed}");
    // Every payer of the run was audited: the warm-up's and the measured ones.
    assert!(
        audit["payments_checked"].as_u64().unwrap() >= ok,
        "{backend}:\n{printed}"
    );
    assert_eq!(
        audit["payments_checked"], audit["order_numbers_checked"],
        "{backend}: every payment's order number was checked:\n{printed}"
    );
    // A fresh database: the server's succeeded payments are exactly the run's payers, each posted
    // once (`paymux ledger audit` checks the one entry per succeeded payment).
    let ledger = audit["ledger_output"].as_str().unwrap();
    let succeeded: u64 = ledger
        .lines()
        .find_map(|l| l.trim().strip_prefix("succeeded payments: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{backend}: no succeeded count in:\n{ledger}"));
    assert_eq!(
        succeeded,
        audit["payments_checked"].as_u64().unwrap(),
        "{backend}:\n{printed}"
    );
    assert!(
        ledger.contains("every succeeded payment has exactly one payment entry: ok"),
        "{backend}:\n{ledger}"
    );
    drop(server);
}
