//! A node routed to a standalone sandbox (`sandbox_url`), as in a multi-node deployment: the
//! sandboxes run on their own address with the keys of `<data_dir>/sandbox`, the node mounts none,
//! its channel calls go there and the channels' notifications come back to the node.

use std::time::Duration;

use paymux_channels::sandbox::{SandboxOptions, Sandboxes};
use serde_json::json;

use crate::helpers::{fresh_database, spawn_with, test_config};

#[tokio::test]
async fn a_node_pays_through_a_standalone_sandbox() {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    // The standalone sandbox, as `paymux sandbox` runs it: its own listener, the same key directory.
    let sandboxes = Sandboxes::start(SandboxOptions {
        data_dir: config.data_dir.join("sandbox"),
        time_compression: 100,
        ..Default::default()
    })
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sandbox_url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(axum::serve(listener, sandboxes.router()).into_future());
    config.sandbox_url = Some(sandbox_url.clone());
    let app = spawn_with(db, config).await;
    let m = app.merchant("Remote").await;

    // Not mounted on the node.
    let r = app.get_raw("/sandbox/wechat/sandbox/account").await;
    assert_eq!(r.status(), 404);

    // A WeChat code payment: charged at the standalone sandbox.
    let r = m
        .create_payment(
            &json!({"merchant_order_no": "x-1", "amount": 1200, "currency": "CNY",
            "subject": "tea", "method": "code_scan", "auth_code": "134567890123456789"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["status"], "succeeded");

    // A C2B order paid in the standalone sandbox's wallet: its notification settles it on the node.
    let r = m
        .create_payment(
            &json!({"merchant_order_no": "x-2", "amount": 990, "currency": "CNY",
            "subject": "bread", "method": "qr_merchant", "wallet": "wechat"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let paid = app
        .http
        .post(format!("{sandbox_url}/wechat/sandbox/pay"))
        .json(&json!({"code_url": r.body["qr_code"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    let mut status = String::new();
    for _ in 0..800 {
        status = m.get_payment(&id).await.body["status"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if status == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, "succeeded");

    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let report = paymux::ledger_audit::audit(&db).await.unwrap();
    db.close().await;
    assert!(report.is_clean(), "{}: {report}", app.backend());
    assert_eq!(report.succeeded_payments, 2, "{report}");
    server.abort();
}
