//! Expiry of payments with a channel order: closed at the channel first, then here; a payment the
//! payer paid just before expiry (its notification lost) is settled as `succeeded`, never closed.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{MerchantClient, TestApp, fresh_database, spawn_with, test_config};

async fn app() -> TestApp {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    spawn_with(db, config).await
}

fn expiring_qr(order_no: &str, amount: i64) -> Value {
    json!({
        "merchant_order_no": order_no,
        "amount": amount,
        "currency": "CNY",
        "subject": "面包",
        "method": "qr_merchant",
        "wallet": "wechat",
        "expires_in_seconds": 1,
    })
}

async fn wait_status(m: &MerchantClient, id: &str, status: &str, within: Duration) -> Value {
    let until = tokio::time::Instant::now() + within;
    loop {
        let r = m.get_payment(id).await;
        if r.body["status"] == status {
            return r.body;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "payment {id} never became {status}: {:?}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn faults(app: &TestApp, faults: Value) {
    let r = app
        .http
        .put(format!("{}/sandbox/wechat/sandbox/faults", app.base))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn wallet_pay(app: &TestApp, code_url: &str) -> reqwest::StatusCode {
    app.http
        .post(format!("{}/sandbox/wechat/sandbox/pay", app.base))
        .json(&json!({"code_url": code_url}))
        .send()
        .await
        .unwrap()
        .status()
}

async fn ledger_entries(app: &TestApp) -> (i64, i64) {
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let report = paymux::ledger_audit::audit(&db).await.unwrap();
    db.close().await;
    assert!(report.is_clean(), "{}: {report}", app.backend());
    (report.succeeded_payments, report.ledger.entries)
}

#[tokio::test]
async fn an_expired_channel_order_is_closed_at_the_channel_first() {
    let app = app().await;
    let m = app.merchant("Bakery").await;
    let r = m.create_payment(&expiring_qr("e-1", 700)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let qr = r.body["qr_code"].as_str().unwrap().to_string();

    // While the channel cannot be reached, the expired payment stays open: it is never closed here
    // before the channel has closed (or settled) its order.
    faults(&app, json!({"error_5xx_pct": 100.0})).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(m.get_payment(&id).await.body["status"], "created");

    faults(&app, json!({})).await;
    let p = wait_status(&m, &id, "closed", Duration::from_secs(20)).await;
    assert_eq!(p["closed_reason"], "expired");
    // The order is closed at the channel: the payer can no longer pay it.
    assert_eq!(wallet_pay(&app, &qr).await, 409);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(m.get_payment(&id).await.body["status"], "closed");
    assert_eq!(ledger_entries(&app).await, (0, 0));
}

#[tokio::test]
async fn paid_at_the_channel_just_before_expiry_ends_succeeded() {
    let app = app().await;
    let m = app.merchant("Bakery").await;
    let r = m.create_payment(&expiring_qr("e-2", 1_500)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let qr = r.body["qr_code"].as_str().unwrap().to_string();
    // The payer pays; every notification of it is lost.
    faults(&app, json!({"drop_notify_pct": 100.0})).await;
    assert_eq!(wallet_pay(&app, &qr).await, 200);
    assert_eq!(m.get_payment(&id).await.body["status"], "created");

    // At expiry the channel refuses to close a paid order; the payment is settled instead.
    let p = wait_status(&m, &id, "succeeded", Duration::from_secs(15)).await;
    assert_eq!(p["late_success"], false);
    assert!(p["closed_reason"].is_null(), "{p:?}");
    assert!(p["channel_trade_no"].as_str().unwrap().starts_with("42"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(m.get_payment(&id).await.body["status"], "succeeded");
    assert_eq!(ledger_entries(&app).await, (1, 1));
}

/// Alipay and UnionPay orders expire the same way: closed at the channel, then here; the payer
/// can no longer pay them.
#[tokio::test]
async fn alipay_and_unionpay_orders_expire_closed_at_the_channel() {
    let app = app().await;
    let m = app.merchant("Bakery").await;
    for wallet in ["alipay", "unionpay"] {
        let mut body = expiring_qr(&format!("e-{wallet}"), 800);
        body["wallet"] = json!(wallet);
        let r = m.create_payment(&body).await;
        assert_eq!(r.status, 201, "{wallet}: {:?}", r.body);
        let id = r.body["id"].as_str().unwrap().to_string();
        let qr = r.body["qr_code"].as_str().unwrap().to_string();
        // While the channel cannot be reached the expired payment stays open here.
        let set_faults = |f: Value| {
            app.http
                .put(format!("{}/sandbox/{wallet}/sandbox/faults", app.base))
                .json(&f)
                .send()
        };
        let r = set_faults(json!({"error_5xx_pct": 100.0})).await.unwrap();
        assert!(r.status().is_success(), "{wallet}: {}", r.status());
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(
            m.get_payment(&id).await.body["status"],
            "created",
            "{wallet}: closed here before the channel"
        );
        let r = set_faults(json!({})).await.unwrap();
        assert!(r.status().is_success(), "{wallet}: {}", r.status());
        let p = wait_status(&m, &id, "closed", Duration::from_secs(20)).await;
        assert_eq!(p["closed_reason"], "expired", "{wallet}: {p}");
        let paid = app
            .http
            .post(format!("{}/sandbox/{wallet}/sandbox/pay", app.base))
            .json(&json!({"qr_code": qr}))
            .send()
            .await
            .unwrap();
        assert!(
            paid.status().is_client_error(),
            "{wallet}: the channel still took a payment for a closed order: {}",
            paid.status()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(m.get_payment(&id).await.body["status"], "closed");
    }
    assert_eq!(ledger_entries(&app).await, (0, 0));
}
