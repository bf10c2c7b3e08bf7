//! Refunds end to end through the sandboxes: partial and repeated, idempotent, never above the paid
//! amount even when fifty race, settled by the channel's answer, notification or query, posted once;
//! refunds the channel declines (the sandboxes' `refund_fail_pct` fault) end `failed` with the
//! channel's code, give their amount back, post nothing and are announced as `refund.failed`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{MerchantClient, Reply, TestApp, fresh_database, spawn_with, test_config};

async fn app() -> TestApp {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    config.code_pay_poll_interval_ms = 50;
    spawn_with(db, config).await
}

async fn paid(m: &MerchantClient, order_no: &str, amount: i64, code: &str) -> String {
    let r = m
        .create_payment(&json!({
            "merchant_order_no": order_no, "amount": amount, "currency": "CNY", "subject": "书",
            "method": "code_scan", "auth_code": code,
        }))
        .await;
    assert_eq!(r.body["status"], "succeeded", "{:?}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

async fn refund(m: &MerchantClient, payment: &str, no: &str, amount: i64) -> Reply {
    m.send(
        Method::POST,
        &format!("/v1/payments/{payment}/refunds"),
        Some(&json!({"merchant_refund_no": no, "amount": amount, "reason": "退货"})),
    )
    .await
}

async fn wait_refund(m: &MerchantClient, id: &str) -> Value {
    for _ in 0..800 {
        let r = m
            .send(Method::GET, &format!("/v1/refunds/{id}"), None)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        if r.body["status"] != "processing" {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("refund {id} never became final");
}

async fn audit(app: &TestApp) -> paymux::ledger_audit::PlatformAudit {
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let report = paymux::ledger_audit::audit(&db).await.unwrap();
    db.close().await;
    assert!(report.is_clean(), "{}: {report}", app.backend());
    report
}

#[tokio::test]
async fn partial_refunds_idempotent_and_bounded() {
    let app = app().await;
    let m = app.merchant("Books").await;
    let pid = paid(&m, "r-1", 1_000, "134567890123456789").await;

    let r = refund(&m, &pid, "rf-1", 300).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let rid = r.body["id"].as_str().unwrap().to_string();
    let done = wait_refund(&m, &rid).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["channel_refund_no"].as_str().is_some());

    // Idempotent by merchant_refund_no; the number cannot be reused for something else.
    let again = refund(&m, &pid, "rf-1", 300).await;
    assert_eq!(
        (again.status.as_u16(), &again.body["id"]),
        (200, &json!(rid))
    );
    let other = refund(&m, &pid, "rf-1", 301).await;
    assert_eq!(
        (other.status.as_u16(), other.code()),
        (409, "idempotency_conflict")
    );

    // More than what is left: 422.
    let over = refund(&m, &pid, "rf-2", 701).await;
    assert_eq!(
        (over.status.as_u16(), over.code()),
        (422, "refund_exceeds_paid"),
        "{:?}",
        over.body
    );
    let rest = refund(&m, &pid, "rf-3", 700).await;
    assert_eq!(rest.status, 201);
    assert_eq!(
        wait_refund(&m, rest.body["id"].as_str().unwrap()).await["status"],
        "succeeded"
    );
    assert_eq!(m.get_payment(&pid).await.body["refunded_amount"], 1_000);

    // Bad input.
    let bad = m
        .send(
            Method::POST,
            &format!("/v1/payments/{pid}/refunds"),
            Some(&json!({"merchant_refund_no": "x", "amount": 0})),
        )
        .await;
    assert_eq!(bad.status, 422);
    // An amount near i64::MAX is refused as such (the reservation's sum cannot overflow).
    let huge = refund(&m, &pid, "rf-huge", i64::MAX).await;
    assert_eq!(
        (huge.status.as_u16(), huge.code()),
        (422, "validation_failed"),
        "{:?}",
        huge.body
    );
    let missing = refund(&m, "0190b1e0-0000-7000-8000-000000000000", "rf-9", 1).await;
    assert_eq!(missing.status, 404);
    let report = audit(&app).await;
    assert_eq!(report.ledger.entries, 3, "one payment, two refunds");
}

#[tokio::test]
async fn fifty_concurrent_refunds_never_exceed_the_paid_amount() {
    let app = app().await;
    let m = app.merchant("Books").await;
    let pid = paid(&m, "r-2", 500, "134567890123456789").await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let m = m.clone();
            let pid = pid.clone();
            tokio::spawn(async move { refund(&m, &pid, &format!("race-{i}"), 20).await })
        })
        .collect();
    let mut created = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            201 => created.push(r.body["id"].as_str().unwrap().to_string()),
            422 => {
                assert_eq!(r.code(), "refund_exceeds_paid");
                refused += 1;
            }
            other => panic!("{other}: {:?}", r.body),
        }
    }
    assert_eq!((created.len(), refused), (25, 25));
    for id in &created {
        assert_eq!(wait_refund(&m, id).await["status"], "succeeded");
    }
    assert_eq!(m.get_payment(&pid).await.body["refunded_amount"], 500);
    let report = audit(&app).await;
    assert_eq!(report.ledger.entries, 26);
}

#[tokio::test]
async fn unpaid_payments_cannot_be_refunded_and_alipay_refunds_at_once() {
    let app = app().await;
    let m = app.merchant("Books").await;
    let r = m
        .create_payment(&json!({"merchant_order_no": "r-3", "amount": 100, "currency": "CNY", "subject": "x", "method": "qr_merchant", "wallet": "wechat"}))
        .await;
    let unpaid = refund(&m, r.body["id"].as_str().unwrap(), "u-1", 10).await;
    assert_eq!(
        (unpaid.status.as_u16(), unpaid.code()),
        (409, "invalid_state"),
        "{:?}",
        unpaid.body
    );

    let pid = paid(&m, "r-4", 888, "281234567890123456").await;
    let r = refund(&m, &pid, "a-1", 888).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    // Alipay answers a refund at once: the 201 already carries the outcome.
    assert_eq!(r.body["status"], "succeeded", "{:?}", r.body);
    assert_eq!(
        wait_refund(&m, r.body["id"].as_str().unwrap()).await["status"],
        "succeeded"
    );
    // Another merchant cannot see it.
    let other = app.merchant("Other").await;
    let hidden = other
        .send(
            Method::GET,
            &format!("/v1/refunds/{}", r.body["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(hidden.status, 404);
    audit(&app).await;
}

#[tokio::test]
async fn a_unionpay_payment_is_refunded_in_parts() {
    let app = app().await;
    let m = app.merchant("Rice").await;
    let r = m
        .create_payment(&json!({
            "merchant_order_no": "up-1", "amount": 2_000, "currency": "CNY", "subject": "米",
            "method": "code_scan", "auth_code": "6212345678901234567",
        }))
        .await;
    assert!(matches!(r.status.as_u16(), 201 | 202), "{:?}", r.body);
    let pid = r.body["id"].as_str().unwrap().to_string();
    let mut status = String::new();
    for _ in 0..800 {
        status = m.get_payment(&pid).await.body["status"]
            .as_str()
            .unwrap()
            .to_string();
        if status == "succeeded" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(status, "succeeded");
    for (no, amount) in [("up-r1", 500), ("up-r2", 1_500)] {
        let r = refund(&m, &pid, no, amount).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        assert_eq!(
            wait_refund(&m, r.body["id"].as_str().unwrap()).await["status"],
            "succeeded"
        );
    }
    // 503 means "retry the same request" (a busy database); a client retries it.
    let mut over = refund(&m, &pid, "up-r3", 1).await;
    for _ in 0..3 {
        if over.status.as_u16() != 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        over = refund(&m, &pid, "up-r3", 1).await;
    }
    assert_eq!(
        (over.status.as_u16(), over.code()),
        (422, "refund_exceeds_paid")
    );
    assert_eq!(m.get_payment(&pid).await.body["refunded_amount"], 2_000);
    audit(&app).await;
}

/// An app whose webhooks are delivered at once and retried quickly.
async fn app_with_webhooks() -> TestApp {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    config.code_pay_poll_interval_ms = 50;
    config.webhook_poll_interval_ms = 25;
    config.webhook_timeout_ms = 2_000;
    config.webhook_retry_schedule_scale = 0.002;
    spawn_with(db, config).await
}

async fn sandbox_faults(app: &TestApp, channel: &str, faults: Value) {
    let r = app
        .http
        .put(format!("{}/sandbox/{channel}/sandbox/faults", app.base))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// A code payment of `amount` paid at once, announced to `notify_url`.
async fn paid_with_hook(
    m: &MerchantClient,
    order_no: &str,
    amount: i64,
    code: &str,
    notify_url: &str,
) -> String {
    let r = m
        .create_payment(&json!({
            "merchant_order_no": order_no, "amount": amount, "currency": "CNY", "subject": "书",
            "method": "code_scan", "auth_code": code, "notify_url": notify_url,
        }))
        .await;
    assert_eq!(r.body["status"], "succeeded", "{:?}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

/// What every declined refund must leave behind: the refund `failed` with the channel's code, the
/// reservation given back, a signed `refund.failed` webhook delivered and listed, and nothing
/// posted but the payment's own entry (a failed refund posts no entry at all).
async fn assert_declined(
    app: &TestApp,
    m: &MerchantClient,
    hook: &crate::webhooks::Receiver,
    pid: &str,
    refund: &Value,
    code: &str,
) {
    assert_eq!(refund["status"], "failed", "{refund}");
    assert_eq!(refund["failure_code"], code, "{refund}");
    assert!(refund["succeeded_at"].is_null(), "{refund}");
    assert_eq!(m.get_payment(pid).await.body["refunded_amount"], 0);

    let got = hook.acknowledged("refund.failed").await;
    crate::webhooks::assert_signed(m, &got);
    let body = crate::webhooks::body_of(&got);
    assert_eq!(body["data"]["id"], refund["id"]);
    assert_eq!(body["data"]["payment_id"], pid);
    assert_eq!(body["data"]["status"], "failed");
    assert_eq!(body["data"]["failure_code"], code);
    assert_eq!(body["data"]["amount"], refund["amount"]);
    let listed = crate::webhooks::events(m, pid).await;
    let types: Vec<&str> = listed.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["refund.failed", "payment.succeeded"],
        "newest first"
    );

    let report = audit(app).await;
    assert_eq!(report.ledger.entries, 1, "the payment's entry only");
}

/// The failed amount is refundable again once the channel accepts: the new refund succeeds and
/// is posted next to the payment's entry.
async fn refund_again(app: &TestApp, m: &MerchantClient, pid: &str, no: &str, amount: i64) {
    let r = refund(m, pid, no, amount).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let done = wait_refund(m, r.body["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(m.get_payment(pid).await.body["refunded_amount"], amount);
    let report = audit(app).await;
    assert_eq!(
        report.ledger.entries, 2,
        "the payment and the refund that succeeded"
    );
}

/// How the router learns that a WeChat refund ended `ABNORMAL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    /// Notifications are dropped: only the refund query can tell.
    ByQuery,
    /// Refund queries answer 5xx once the refund is accepted: only `REFUND.ABNORMAL` can tell.
    ByNotification,
}

async fn a_wechat_refund_ends_abnormal(told: Told) {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    // The first refund query comes well after the sandbox has ended the refund (20 ms).
    config.code_pay_poll_interval_ms = 200;
    config.webhook_poll_interval_ms = 25;
    config.webhook_timeout_ms = 2_000;
    config.webhook_retry_schedule_scale = 0.002;
    let app = spawn_with(db, config).await;
    let m = app.merchant("Books").await;
    let hook = crate::webhooks::Receiver::start(200).await;
    let pid = paid_with_hook(&m, "rf-w-1", 1_000, "134567890123456789", &hook.url).await;
    hook.acknowledged("payment.succeeded").await;
    let fault = match told {
        Told::ByQuery => json!({"refund_fail_pct": 100.0, "drop_notify_pct": 100.0}),
        Told::ByNotification => json!({"refund_fail_pct": 100.0}),
    };
    sandbox_faults(&app, "wechat", fault).await;

    // Accepted by WeChat (PROCESSING), it then ends ABNORMAL.
    let r = refund(&m, &pid, "rf-w-1a", 1_000).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["status"], "processing", "{:?}", r.body);
    if told == Told::ByNotification {
        sandbox_faults(&app, "wechat", json!({"error_5xx_pct": 100.0})).await;
    }
    let failed = wait_refund(&m, r.body["id"].as_str().unwrap()).await;
    sandbox_faults(&app, "wechat", json!({})).await;
    assert_declined(&app, &m, &hook, &pid, &failed, "ABNORMAL").await;
    // The same number is the same (failed) refund.
    let same = refund(&m, &pid, "rf-w-1a", 1_000).await;
    assert_eq!(
        (same.status.as_u16(), &same.body["status"]),
        (200, &json!("failed"))
    );

    refund_again(&app, &m, &pid, "rf-w-1b", 1_000).await;
    hook.acknowledged("refund.succeeded").await;
}

#[tokio::test]
async fn a_wechat_refund_that_ends_abnormal_fails_by_the_refund_query() {
    a_wechat_refund_ends_abnormal(Told::ByQuery).await;
}

#[tokio::test]
async fn a_wechat_refund_that_ends_abnormal_fails_by_its_notification() {
    a_wechat_refund_ends_abnormal(Told::ByNotification).await;
}

#[tokio::test]
async fn an_alipay_refund_declined_at_once_fails_and_can_be_refunded_again() {
    let app = app_with_webhooks().await;
    let m = app.merchant("Books").await;
    let hook = crate::webhooks::Receiver::start(200).await;
    let pid = paid_with_hook(&m, "rf-a-1", 888, "281234567890123456", &hook.url).await;
    hook.acknowledged("payment.succeeded").await;
    sandbox_faults(&app, "alipay", json!({"refund_fail_pct": 100.0})).await;

    // Alipay answers the refund itself with the decline: failed in the creating answer.
    let r = refund(&m, &pid, "rf-a-1a", 888).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_declined(
        &app,
        &m,
        &hook,
        &pid,
        &r.body,
        "ACQ.SELLER_BALANCE_NOT_ENOUGH",
    )
    .await;

    sandbox_faults(&app, "alipay", json!({})).await;
    refund_again(&app, &m, &pid, "rf-a-1b", 888).await;
    hook.acknowledged("refund.succeeded").await;
}

#[tokio::test]
async fn an_alipay_refund_without_an_answer_is_asked_again_and_declined() {
    let app = app_with_webhooks().await;
    let m = app.merchant("Books").await;
    let hook = crate::webhooks::Receiver::start(200).await;
    let pid = paid_with_hook(&m, "rf-a-2", 500, "281234567890123456", &hook.url).await;
    hook.acknowledged("payment.succeeded").await;
    // The refund request gets a system error: the outcome is unknown, the refund `processing`.
    sandbox_faults(
        &app,
        "alipay",
        json!({"refund_fail_pct": 100.0, "error_5xx_pct": 100.0}),
    )
    .await;
    let r = refund(&m, &pid, "rf-a-2a", 500).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["status"], "processing", "{:?}", r.body);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(m.get_payment(&pid).await.body["refunded_amount"], 500);
    // Once Alipay answers, its query knows no such refund; asked again with the same number,
    // Alipay declines it.
    sandbox_faults(&app, "alipay", json!({"refund_fail_pct": 100.0})).await;
    let failed = wait_refund(&m, r.body["id"].as_str().unwrap()).await;
    assert_declined(
        &app,
        &m,
        &hook,
        &pid,
        &failed,
        "ACQ.SELLER_BALANCE_NOT_ENOUGH",
    )
    .await;

    sandbox_faults(&app, "alipay", json!({})).await;
    refund_again(&app, &m, &pid, "rf-a-2b", 500).await;
    hook.acknowledged("refund.succeeded").await;
}

/// A refund whose channel never answered outlives its follow-up (which gives up after twenty
/// deadlines, as one cut short by a restart would): the sweeper finishes it once the channel
/// answers — the query knows no such refund, so it is sent again with the same number.
#[tokio::test]
async fn a_refund_left_processing_after_its_follow_up_gave_up_is_finished_by_the_sweeper() {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    config.code_pay_poll_interval_ms = 50;
    // The follow-up gives up after 20 × 200 ms; then the sweeper takes the refund over.
    config.code_pay_deadline_ms = 200;
    config.processing_recovery_after_ms = 0;
    let app = spawn_with(db, config).await;
    let m = app.merchant("Books").await;
    let pid = paid(&m, "rf-s-1", 1_000, "134567890123456789").await;
    sandbox_faults(&app, "wechat", json!({"error_5xx_pct": 100.0})).await;
    let r = refund(&m, &pid, "rf-s-1a", 400).await;
    assert!(matches!(r.status.as_u16(), 201 | 202), "{:?}", r.body);
    assert_eq!(r.body["status"], "processing", "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let still = m
        .send(Method::GET, &format!("/v1/refunds/{id}"), None)
        .await;
    assert_eq!(still.body["status"], "processing", "{:?}", still.body);

    sandbox_faults(&app, "wechat", json!({})).await;
    // The sweeper's tries back off (1 s, 2 s, 4 s, …): up to a minute.
    let mut done = Value::Null;
    for _ in 0..240 {
        done = m
            .send(Method::GET, &format!("/v1/refunds/{id}"), None)
            .await
            .body;
        if done["status"] != "processing" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(m.get_payment(&pid).await.body["refunded_amount"], 400);
    let report = audit(&app).await;
    assert_eq!(report.ledger.entries, 2, "the payment and its refund, once");
}
