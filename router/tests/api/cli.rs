use std::process::Command;

use reqwest::StatusCode;

use crate::helpers::{MerchantClient, fresh_database, payment_body, spawn_with, test_config};

fn paymux(db: &crate::helpers::TestDb, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_paymux"))
        .args(args)
        .env("PAYMUX_DATA_DIR", db.dir.path())
        .env("PAYMUX_DATABASE_URL", &db.url)
        .env("PAYMUX_LOG", "warn")
        .output()
        .expect("run paymux");
    assert!(
        out.status.success(),
        "paymux {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    if args[0] == "migrate" {
        return serde_json::Value::String(stdout);
    }
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test]
async fn merchant_create_and_rotate_key_from_the_command_line() {
    let db = fresh_database().await;
    let migrated = paymux(&db, &["migrate"]);
    assert!(migrated.as_str().unwrap().contains("database migrated"));
    let created = paymux(&db, &["merchant", "create", "--name", "Noodle Bar"]);
    let merchant_id = created["merchant_id"].as_str().unwrap().to_string();
    assert!(created["key_secret"].as_str().unwrap().starts_with("sk_"));
    let rotated = paymux(
        &db,
        &["merchant", "rotate-key", "--merchant-id", &merchant_id],
    );
    assert_eq!(rotated["merchant_id"], merchant_id.as_str());
    assert_ne!(rotated["key_id"], created["key_id"]);

    let config = test_config(&db);
    let app = spawn_with(db, config).await;
    let client = |v: &serde_json::Value| client_of(&app, v);
    let old = client(&created)
        .create_payment(&payment_body("cli-1", 100))
        .await;
    assert_eq!(
        (old.status, old.code()),
        (StatusCode::UNAUTHORIZED, "auth_unknown_key"),
        "the old key is revoked"
    );
    let new = client(&rotated)
        .create_payment(&payment_body("cli-1", 100))
        .await;
    assert_eq!(new.status, StatusCode::CREATED);
    assert_eq!(new.body["merchant_id"], merchant_id.as_str());
}

/// A client of `app` with the credentials `paymux merchant create` / `rotate-key` printed.
fn client_of(app: &crate::helpers::TestApp, creds: &serde_json::Value) -> MerchantClient {
    MerchantClient {
        base: app.base.clone(),
        http: app.http.clone(),
        creds: serde_json::from_value::<CredsJson>(creds.clone())
            .unwrap()
            .into(),
    }
}

#[derive(serde::Deserialize)]
struct CredsJson {
    merchant_id: paymux_model::MerchantId,
    name: String,
    key_id: String,
    key_secret: String,
}

impl From<CredsJson> for paymux::merchants::Credentials {
    fn from(c: CredsJson) -> Self {
        paymux::merchants::Credentials {
            merchant_id: c.merchant_id,
            name: c.name,
            key_id: c.key_id,
            key_secret: c.key_secret,
        }
    }
}

/// `paymux ledger audit` beside the server under test, asynchronously (the server runs on this
/// test's runtime and must keep going while the command works).
async fn ledger_audit_cli(db: &crate::helpers::TestDb) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_paymux"))
        .args(["ledger", "audit"])
        .env("PAYMUX_DATA_DIR", db.dir.path())
        .env("PAYMUX_DATABASE_URL", &db.url)
        .env("PAYMUX_LOG", "warn")
        .output()
        .await
        .expect("run paymux ledger audit")
}

#[tokio::test]
async fn ledger_audit_exits_non_zero_on_a_breach() {
    let db = fresh_database().await;
    let config = test_config(&db);
    let app = spawn_with(db, config).await;
    let m = app.merchant("Audited").await;
    let created = m.create_payment(&payment_body("aud-1", 10_000)).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let payment_id: uuid::Uuid = created.body["id"].as_str().unwrap().parse().unwrap();

    let clean = ledger_audit_cli(&app.db).await;
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
    assert!(String::from_utf8_lossy(&clean.stdout).contains("audit: clean"));

    // A payment marked succeeded without its ledger entry is a breach.
    app.sql_execute("UPDATE payments SET status = 'succeeded' WHERE merchant_order_no = 'aud-1'")
        .await;
    let breached = ledger_audit_cli(&app.db).await;
    assert_eq!(breached.status.code(), Some(1));
    let text = String::from_utf8_lossy(&breached.stdout).to_string();
    assert!(
        text.contains(&payment_id.to_string()) && text.contains("BREACH"),
        "{text}"
    );

    // Posting its entry (once) makes the books clean again.
    let entry = paymux_ledger::rules::payment_succeeded(
        paymux_model::PaymentId::from_uuid(payment_id),
        m.creds.merchant_id,
        paymux_model::ChannelAccountId::new(),
        paymux_model::Money::cny(10_000),
        60,
        38,
        0,
    );
    let store = paymux::db::Db::connect(&app.db.url, 2).await.unwrap();
    let ledger = paymux_ledger::Ledger::start(store.ledger_pool(), Default::default());
    assert_eq!(
        ledger.post(vec![entry.clone(), entry]).await.unwrap().len(),
        2
    );
    let healed = ledger_audit_cli(&app.db).await;
    assert!(
        healed.status.success(),
        "{}",
        String::from_utf8_lossy(&healed.stdout)
    );
}

#[tokio::test]
async fn channel_accounts_routes_and_fee_rates_from_the_command_line() {
    let db = fresh_database().await;
    let created = paymux(&db, &["merchant", "create", "--name", "Tea House"]);
    let merchant_id = created["merchant_id"].as_str().unwrap().to_string();
    let accounts = paymux(
        &db,
        &["channel-account", "list", "--merchant-id", &merchant_id],
    );
    assert_eq!(
        accounts.as_array().unwrap().len(),
        3,
        "a merchant created with the sandboxes mounted gets the sandbox accounts"
    );
    let added = paymux(
        &db,
        &[
            "channel-account",
            "add",
            "--merchant-id",
            &merchant_id,
            "--kind",
            "wechat_v3",
            "--name",
            "second",
            "--cost-rate-bps",
            "25",
            "--sandbox",
        ],
    );
    let id = added["id"].as_str().unwrap().to_string();
    assert_eq!(added["cost_rate_bps"], 25);
    assert!(added.get("credentials").is_none());
    let disabled = paymux(&db, &["channel-account", "disable", "--id", &id]);
    assert_eq!(disabled["enabled"], false);
    let enabled = paymux(&db, &["channel-account", "enable", "--id", &id]);
    assert_eq!(enabled["enabled"], true);
    let scheduled = paymux(
        &db,
        &["channel-account", "schedule", "--id", &id, "--at", "9:30"],
    );
    assert_eq!(
        (&scheduled["at"], &scheduled["own"]),
        (&serde_json::json!("09:30:00"), &serde_json::json!(true))
    );
    let db_handle = paymux::db::Db::connect(&db.url, 2).await.unwrap();
    let own = paymux::reconciliation::schedules::own_times(&db_handle)
        .await
        .unwrap();
    assert_eq!(
        own.get(&id.parse::<uuid::Uuid>().unwrap())
            .map(|t| t.to_string()),
        Some("09:30:00".into())
    );
    let back = paymux(
        &db,
        &[
            "channel-account",
            "schedule",
            "--id",
            &id,
            "--at",
            "default",
        ],
    );
    assert_eq!(back["own"], false);
    assert!(
        paymux::reconciliation::schedules::own_times(&db_handle)
            .await
            .unwrap()
            .is_empty()
    );
    db_handle.close().await;
    let route = paymux(
        &db,
        &[
            "route",
            "set",
            "--merchant-id",
            &merchant_id,
            "--wallet",
            "wechat",
            "--method",
            "code_scan",
            "--rule",
            "lowest_cost",
            "--target",
            &format!("{id}:0:1"),
        ],
    );
    assert_eq!(route["rule"], "lowest_cost");
    let routes = paymux(&db, &["route", "list", "--merchant-id", &merchant_id]);
    assert!(routes.as_array().unwrap().iter().any(
        |r| r["method"] == "code_scan" && r["targets"][0]["channel_account_id"] == id.as_str()
    ));
    let fee = paymux(
        &db,
        &[
            "merchant",
            "fee-rate",
            "--merchant-id",
            &merchant_id,
            "--bps",
            "80",
        ],
    );
    assert_eq!(fee["fee_rate_bps"], 80);
    let deleted = paymux(
        &db,
        &[
            "route",
            "delete",
            "--merchant-id",
            &merchant_id,
            "--wallet",
            "wechat",
            "--method",
            "code_scan",
        ],
    );
    assert_eq!(deleted["deleted"], true);

    // The server pays through the routes the command line set.
    let config = test_config(&db);
    let app = spawn_with(db, config).await;
    let m = MerchantClient {
        base: app.base.clone(),
        http: app.http.clone(),
        creds: serde_json::from_value::<CredsJson>(created.clone())
            .unwrap()
            .into(),
    };
    let r = m
        .create_payment(&serde_json::json!({
            "merchant_order_no": "cli-r1", "amount": 100, "currency": "CNY", "subject": "Tea",
            "method": "code_scan", "auth_code": "134567890123456789",
        }))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "no_route"),
        "the deleted route: {:?}",
        r.body
    );
}

/// A command run without the servers' master key — none configured and no key file where it looks
/// (another data directory), or another key — is refused before it seals anything: it would have
/// made up a key and sealed a new merchant key no server can open, after revoking the old one.
#[tokio::test]
async fn a_command_without_the_servers_master_key_is_refused_and_changes_nothing() {
    let db = fresh_database().await;
    let created = paymux(&db, &["merchant", "create", "--name", "Noodle Bar"]);
    let merchant_id = created["merchant_id"].as_str().unwrap().to_string();
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paymux"));
        cmd.args(["merchant", "rotate-key", "--merchant-id", &merchant_id])
            .env("PAYMUX_DATA_DIR", elsewhere.path())
            .env("PAYMUX_DATABASE_URL", &db.url)
            .env("PAYMUX_LOG", "warn");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().expect("run paymux")
    };
    let none = run(&[]);
    assert!(!none.status.success());
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(stderr.contains("no master key"), "{stderr}");
    assert!(
        !elsewhere.path().join("master.key").exists(),
        "no key was made up"
    );
    let other_key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]);
    let wrong = run(&[("PAYMUX_MASTER_KEY", &other_key)]);
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("does not open"), "{stderr}");

    // The merchant's key still works with the servers' key.
    let config = test_config(&db);
    let app = spawn_with(db, config).await;
    let r = client_of(&app, &created)
        .create_payment(&payment_body("cli-k", 100))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

/// `rotate-key --grace-seconds N`: the old key keeps working for N seconds beside the new one, so
/// the merchant's servers switch without refused requests; a rotation without grace ends every
/// other key at once, a grace still running included.
#[tokio::test]
async fn a_rotation_with_grace_keeps_the_old_key_working_until_then() {
    let db = fresh_database().await;
    let created = paymux(&db, &["merchant", "create", "--name", "Noodle Bar"]);
    let merchant_id = created["merchant_id"].as_str().unwrap().to_string();
    let rotated = paymux(
        &db,
        &[
            "merchant",
            "rotate-key",
            "--merchant-id",
            &merchant_id,
            "--grace-seconds",
            "3600",
        ],
    );
    let config = test_config(&db);
    let db_url = db.url.clone();
    let dir = db.dir.path().to_path_buf();
    let mut app = spawn_with(db, config).await;
    let client = |v: &serde_json::Value| client_of(&app, v);
    for (n, creds) in [&created, &rotated].into_iter().enumerate() {
        let r = client(creds)
            .create_payment(&payment_body(&format!("grace-{n}"), 100))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "key {n}: {:?}", r.body);
    }
    let too_long = Command::new(env!("CARGO_BIN_EXE_paymux"))
        .args(["merchant", "rotate-key", "--merchant-id", &merchant_id])
        .args(["--grace-seconds", "604801"])
        .env("PAYMUX_DATA_DIR", &dir)
        .env("PAYMUX_DATABASE_URL", &db_url)
        .output()
        .unwrap();
    assert!(!too_long.status.success());

    // Without grace, every other key ends now (a key the server looked up is cached for up to
    // 10 s, so the refusals are checked on a fresh server).
    let last = Command::new(env!("CARGO_BIN_EXE_paymux"))
        .args(["merchant", "rotate-key", "--merchant-id", &merchant_id])
        .env("PAYMUX_DATA_DIR", &dir)
        .env("PAYMUX_DATABASE_URL", &db_url)
        .env("PAYMUX_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    let last: serde_json::Value = serde_json::from_slice(&last.stdout).unwrap();
    app.kill().await;
    let config = crate::helpers::test_config_on(&app.config);
    let db = std::mem::replace(&mut app.db, fresh_database().await);
    let fresh = spawn_with(db, config).await;
    let client = |v: &serde_json::Value| client_of(&fresh, v);
    for (n, creds) in [&created, &rotated].into_iter().enumerate() {
        let r = client(creds)
            .create_payment(&payment_body(&format!("ended-{n}"), 100))
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNAUTHORIZED, "auth_unknown_key"),
            "key {n}"
        );
    }
    let r = client(&last)
        .create_payment(&payment_body("last", 100))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}
