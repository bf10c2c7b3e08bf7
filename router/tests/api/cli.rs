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
    let client = |v: &serde_json::Value| MerchantClient {
        base: app.base.clone(),
        http: app.http.clone(),
        creds: serde_json::from_value::<CredsJson>(v.clone())
            .unwrap()
            .into(),
    };
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
