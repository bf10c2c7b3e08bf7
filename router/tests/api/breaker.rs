//! The circuit breaker of a channel account: a WeChat sandbox that answers only 5xx opens it, new
//! payments on that route then fail fast with `503 channel_unavailable` and nothing is written;
//! once the channel is back and the cool-down is over, probes close it again.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, fresh_database, spawn_with, test_config};

async fn app() -> TestApp {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.breaker_min_calls = 4;
    config.breaker_error_rate_pct = 50;
    config.breaker_open_ms = 2_000;
    config.breaker_half_open_probes = 2;
    // The follow-ups of the payments left `processing` stay out of the way of this test.
    config.code_pay_poll_interval_ms = 60_000;
    config.code_pay_deadline_ms = 120_000;
    spawn_with(db, config).await
}

fn code_body(order_no: &str, code: &str) -> Value {
    json!({
        "merchant_order_no": order_no,
        "amount": 300,
        "currency": "CNY",
        "subject": "Tea",
        "method": "code_scan",
        "auth_code": code,
    })
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

/// `paymux_channel_breaker_state` of the WeChat route.
async fn wechat_state(app: &TestApp) -> u8 {
    let text = app.get_raw("/metrics").await.text().await.unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("paymux_channel_breaker_state{route=\"wechat sandbox\","))
        .unwrap_or_else(|| panic!("no breaker state in /metrics:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_failing_channel_opens_its_breaker_then_probes_close_it() {
    let app = app().await;
    let m = app.merchant("Teahouse").await;
    assert_eq!(wechat_state(&app).await, 0);

    faults(&app, json!({"error_5xx_pct": 100.0})).await;
    for i in 0..4 {
        let r = m
            .create_payment(&code_body(&format!("b-{i}"), "134567890123456789"))
            .await;
        assert_eq!(
            (r.status.as_u16(), r.body["status"].as_str()),
            (202, Some("processing")),
            "{}: {:?}",
            app.backend(),
            r.body
        );
    }
    assert_eq!(wechat_state(&app).await, 2);

    // Open: new WeChat payments fail fast, and nothing is written.
    let r = m
        .create_payment(&code_body("b-open", "134567890123456789"))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (503, "channel_unavailable"),
        "{:?}",
        r.body
    );
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let mut qr = json!({
        "merchant_order_no": "b-open-qr", "amount": 300, "currency": "CNY", "subject": "Tea",
        "method": "qr_merchant", "wallet": "wechat",
    });
    let r = m.create_payment(&qr).await;
    assert_eq!((r.status.as_u16(), r.code()), (503, "channel_unavailable"));
    for no in ["b-open", "b-open-qr"] {
        let found = m.find_by_order_no(no).await;
        assert_eq!(found.body["data"].as_array().map(Vec::len), Some(0), "{no}");
    }
    // The same request as before still answers with its payment.
    let r = m
        .create_payment(&code_body("b-0", "134567890123456789"))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["status"].as_str()),
        (200, Some("processing")),
        "{:?}",
        r.body
    );
    // Other routes are not affected.
    let r = m
        .create_payment(&code_body("b-alipay", "281234567890123456"))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["status"].as_str()),
        (201, Some("succeeded"))
    );

    // The channel is back; after the cool-down the breaker is half-open and lets probes through.
    faults(&app, json!({})).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(wechat_state(&app).await, 1);
    let r = m
        .create_payment(&code_body("b-probe-1", "134567890123456789"))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["status"].as_str()),
        (201, Some("succeeded")),
        "{:?}",
        r.body
    );
    assert_eq!(wechat_state(&app).await, 1);
    qr["merchant_order_no"] = json!("b-probe-2");
    let r = m.create_payment(&qr).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert!(r.body["qr_code"].as_str().is_some(), "{:?}", r.body);
    assert_eq!(wechat_state(&app).await, 0);

    // Closed: payments go through again.
    for i in 0..3 {
        let r = m
            .create_payment(&code_body(&format!("b-after-{i}"), "134567890123456789"))
            .await;
        assert_eq!(
            (r.status.as_u16(), r.body["status"].as_str()),
            (201, Some("succeeded"))
        );
    }
    let text = app.get_raw("/metrics").await.text().await.unwrap();
    assert!(text.contains("paymux_channel_calls_total"), "{text}");
    assert!(
        text.contains("paymux_channel_call_duration_seconds"),
        "{text}"
    );
    crate::cashier::audit(&app).await;
}

/// Pages that list the wallets a payer can use (a payment link's, a static code's) do not take a
/// half-open breaker's trial slots: payers viewing them while the channel recovers leave the
/// probes to the payments that reach the channel.
#[tokio::test]
async fn viewing_payment_pages_takes_no_trial_slot_of_a_half_open_breaker() {
    use crate::cashier::{Payer, WECHAT_UA};
    let app = app().await;
    let m = app.merchant("Teahouse").await;
    let link = m
        .create_payment(&json!({
            "merchant_order_no": "v-link", "amount": 300, "currency": "CNY", "subject": "Tea",
            "method": "qr_merchant",
        }))
        .await;
    assert_eq!(link.status, 201, "{:?}", link.body);
    let link_url = link.body["pay_url"].as_str().unwrap().to_string();
    let code = m
        .send(reqwest::Method::POST, "/v1/codes", Some(&json!({})))
        .await;
    assert_eq!(code.status, 201, "{:?}", code.body);
    let code_url = code.body["url"].as_str().unwrap().to_string();

    faults(&app, json!({"error_5xx_pct": 100.0})).await;
    for i in 0..4 {
        m.create_payment(&code_body(&format!("v-{i}"), "134567890123456789"))
            .await;
    }
    assert_eq!(wechat_state(&app).await, 2);
    faults(&app, json!({})).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(wechat_state(&app).await, 1);

    let payer = Payer::new(WECHAT_UA, "zh-CN");
    for _ in 0..3 {
        for url in [&link_url, &code_url] {
            let page = payer.get(url).await;
            assert_eq!(page.status, 200, "{url}: {}", page.text);
            assert!(page.text.contains("id=\"pay-form\""), "{}", page.text);
        }
    }
    // Both probes are still there for payments.
    for no in ["v-probe-1", "v-probe-2"] {
        let r = m.create_payment(&code_body(no, "134567890123456789")).await;
        assert_eq!(
            (r.status.as_u16(), r.body["status"].as_str()),
            (201, Some("succeeded")),
            "{no}: {:?}",
            r.body
        );
    }
    assert_eq!(wechat_state(&app).await, 0);
}
