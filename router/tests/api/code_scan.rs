//! B2C code payments end to end: the real server with its WeChat sandbox mounted, paid through the
//! adapter over HTTP, posted to the ledger in the same transaction as the payment's final state.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{MerchantClient, TestApp, fresh_database, spawn_with, test_config};

async fn app() -> TestApp {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.code_pay_poll_interval_ms = 50;
    config.code_pay_deadline_ms = 1_500;
    config.sandbox_time_compression = 20; // the sandbox payer "enters the password" in 0.5 s
    spawn_with(db, config).await
}

fn code_body(order_no: &str, amount: i64, code: &str) -> Value {
    json!({
        "merchant_order_no": order_no,
        "amount": amount,
        "currency": "CNY",
        "subject": "咖啡",
        "method": "code_scan",
        "auth_code": code,
    })
}

async fn wait_final(m: &MerchantClient, id: &str) -> Value {
    for _ in 0..800 {
        let r = m.get_payment(id).await;
        if matches!(
            r.body["status"].as_str(),
            Some("succeeded" | "failed" | "closed")
        ) {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("payment {id} never became final");
}

async fn assert_books_clean(app: &TestApp) {
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let report = paymux::ledger_audit::audit(&db).await.unwrap();
    db.close().await;
    assert!(report.is_clean(), "{}: {report}", app.backend());
}

/// A column of an order in a channel sandbox's own books (read-only), by our payment id.
async fn sandbox_order_state(
    app: &TestApp,
    channel: &str,
    column: &str,
    payment_id: &str,
) -> String {
    let books = app
        .config
        .sandbox_options()
        .data_dir
        .join(channel)
        .join("books.sqlite");
    let sandbox = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&books)
            .read_only(true),
    )
    .await
    .unwrap();
    let no = uuid::Uuid::parse_str(payment_id)
        .unwrap()
        .simple()
        .to_string();
    let state: String = sqlx::query_scalar(&format!(
        "SELECT {column} FROM trades WHERE out_trade_no = ?1"
    ))
    .bind(&no)
    .fetch_one(&sandbox)
    .await
    .unwrap();
    sandbox.close().await;
    state
}

#[tokio::test]
async fn a_wechat_code_pays_at_once_and_is_posted_once() {
    let app = app().await;
    let m = app.merchant("Cafe").await;
    let r = m
        .create_payment(&code_body("c-1", 1_800, "134567890123456789"))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["status"], "succeeded");
    assert_eq!(r.body["wallet"], "wechat");
    let trade_no = r.body["channel_trade_no"].as_str().unwrap();
    assert!(
        trade_no.starts_with("42") && trade_no.len() == 28,
        "{trade_no}"
    );
    // The same request again is the same payment, not a second charge.
    let again = m
        .create_payment(&code_body("c-1", 1_800, "134567890123456789"))
        .await;
    assert_eq!(
        (again.status.as_u16(), &again.body["id"]),
        (200, &r.body["id"])
    );
    assert_books_clean(&app).await;
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let report = paymux::ledger_audit::audit(&db).await.unwrap();
    assert_eq!(
        (report.succeeded_payments, report.ledger.entries),
        (1, 1),
        "{}",
        app.backend()
    );
    db.close().await;
}

#[tokio::test]
async fn password_then_paid_answers_202_then_succeeds() {
    let app = app().await;
    let m = app.merchant("Cafe").await;
    let r = m
        .create_payment(&code_body("p-1", 500, "134567890123451001"))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["status"].as_str()),
        (202, Some("processing")),
        "{:?}",
        r.body
    );
    let p = wait_final(&m, r.body["id"].as_str().unwrap()).await;
    assert_eq!(p["status"], "succeeded");
    assert_books_clean(&app).await;
}

#[tokio::test]
async fn password_never_entered_fails_when_the_channel_gives_up_first() {
    let app = app().await;
    let m = app.merchant("Cafe").await;
    let r = m
        .create_payment(&code_body("p-2", 500, "134567890123451002"))
        .await;
    assert_eq!(r.status, 202);
    // The sandbox payer's password wait (0.5 s here) ends before our deadline: the channel's
    // answer is final.
    let p = wait_final(&m, r.body["id"].as_str().unwrap()).await;
    assert_eq!(
        (p["status"].as_str(), p["failure_code"].as_str()),
        (Some("failed"), Some("PAYERROR")),
        "{p}"
    );
    assert_books_clean(&app).await;
}

#[tokio::test]
async fn password_never_entered_is_reversed_at_our_deadline_and_closed() {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.code_pay_poll_interval_ms = 50;
    config.code_pay_deadline_ms = 1_500;
    // The payer's password wait lasts 10 s: our deadline comes first.
    config.sandbox_time_compression = 1;
    let app = spawn_with(db, config).await;
    let m = app.merchant("Cafe").await;
    let r = m
        .create_payment(&code_body("p-3", 500, "134567890123451002"))
        .await;
    assert_eq!(r.status, 202);
    let id = r.body["id"].as_str().unwrap().to_string();
    let p = wait_final(&m, &id).await;
    assert_eq!(p["status"], "closed", "{p}");
    assert_eq!(p["closed_reason"], "reversed_at_deadline", "{p}");
    // The order was reversed at the channel, not only given up here.
    assert_eq!(
        sandbox_order_state(&app, "wechat", "trade_state", &id).await,
        "REVOKED"
    );
    assert_books_clean(&app).await;
}

/// At the deadline, a reversal the channel does not accept leaves the payment `processing`: the
/// payer may still confirm, and a payment closed here would then be paid at the channel. Once the
/// channel answers again, the sweeper's recovery reverses it and closes it.
#[tokio::test]
async fn a_reversal_refused_at_the_deadline_leaves_the_payment_processing_for_the_sweeper() {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.code_pay_poll_interval_ms = 50;
    config.code_pay_deadline_ms = 1_000;
    // The payer's password wait lasts 10 s: our deadline comes first.
    config.sandbox_time_compression = 1;
    config.processing_recovery_after_ms = 6_000;
    config.sweeper_interval_ms = 200;
    let app = spawn_with(db, config).await;
    let faults = |body: Value| {
        let app = &app;
        async move {
            let r = app
                .http
                .put(format!("{}/sandbox/wechat/sandbox/faults", app.base))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    faults(json!({"error_5xx_paths": ["/reverse"]})).await;
    let m = app.merchant("Cafe").await;
    let r = m
        .create_payment(&code_body("p-4", 500, "134567890123451002"))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    // Well past the deadline (and before the recovery): still waiting on both sides.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let p = m.get_payment(&id).await.body;
    assert_eq!(p["status"], "processing", "{p}");
    assert_eq!(
        sandbox_order_state(&app, "wechat", "trade_state", &id).await,
        "USERPAYING"
    );
    faults(json!({})).await;
    let p = wait_final(&m, &id).await;
    assert_eq!(p["status"], "closed", "{p}");
    assert_eq!(
        sandbox_order_state(&app, "wechat", "trade_state", &id).await,
        "REVOKED"
    );
    assert_books_clean(&app).await;
}

/// A code payment whose first request wrote it and then failed before the charge (answered `503`:
/// send the same request again) is charged when the same request comes again — once: the request
/// a third time returns the paid payment, and the books have one entry for it.
#[tokio::test]
async fn the_same_request_again_charges_a_code_payment_its_first_attempt_left_uncharged() {
    let app = app().await;
    let m = app.merchant("Cafe").await;
    let body = code_body("again-1", 650, "134567890123456789");
    let request: paymux::payments::api::CreatePayment =
        serde_json::from_value(body.clone()).unwrap();
    // What the first attempt left: the payment written, still `created`, nothing sent to a channel.
    let id = uuid::Uuid::now_v7().to_string();
    let now = chrono::Utc::now().timestamp_micros();
    let lit = |id: &str| crate::reconcile::uuid_literal(&app, id);
    app.sql_execute(&format!(
        "INSERT INTO payments (id, merchant_id, merchant_order_no, request_hash, amount_minor, \
         currency, subject, method, wallet, status, expires_at_us, created_at_us, updated_at_us) \
         VALUES ({}, {}, 'again-1', '{}', 650, 'CNY', '咖啡', 'code_scan', 'wechat', 'created', \
         {}, {now}, {now})",
        lit(&id),
        lit(&uuid::Uuid::from(m.creds.merchant_id).to_string()),
        request.content_hash(),
        now + 900_000_000,
    ))
    .await;
    for _ in 0..2 {
        let r = m.create_payment(&body).await;
        assert_eq!(
            (
                r.status.as_u16(),
                r.body["id"].as_str(),
                r.body["status"].as_str()
            ),
            (200, Some(id.as_str()), Some("succeeded")),
            "{:?}",
            r.body
        );
    }
    assert_eq!(
        sandbox_order_state(&app, "wechat", "trade_state", &id).await,
        "SUCCESS"
    );
    let payment_entries = format!(
        "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'payment' AND reference = {}",
        lit(&id)
    );
    let entries: i64 = match paymux::db::Db::connect(&app.db.url, 1).await.unwrap() {
        paymux::db::Db::Sqlite(p) => sqlx::query_scalar(&payment_entries)
            .fetch_one(&p)
            .await
            .unwrap(),
        paymux::db::Db::Postgres(p) => sqlx::query_scalar(&payment_entries)
            .fetch_one(&p)
            .await
            .unwrap(),
    };
    assert_eq!(entries, 1);
    assert_books_clean(&app).await;
}

#[tokio::test]
async fn declines_fail_with_the_channels_code() {
    let app = app().await;
    let m = app.merchant("Cafe").await;
    let r = m
        .create_payment(&code_body("f-1", 500, "134567890123451003"))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["status"].as_str()),
        (201, Some("failed")),
        "{:?}",
        r.body
    );
    assert_eq!(r.body["failure_code"], "NOTENOUGH");
    assert_books_clean(&app).await;
}

#[tokio::test]
async fn unknown_outcome_is_queried_and_found_paid() {
    let app = app().await;
    let m = app.merchant("Cafe").await;
    let r = m
        .create_payment(&code_body("u-1", 700, "134567890123451005"))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let p = wait_final(&m, r.body["id"].as_str().unwrap()).await;
    assert_eq!(p["status"], "succeeded");
    assert_books_clean(&app).await;
}

#[tokio::test]
async fn codes_of_no_wallet_or_no_route_write_nothing() {
    let app = app().await;
    let m = app.merchant("Cafe").await;
    let r = m
        .create_payment(&code_body("x-1", 500, "999999999999999999"))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "payment_code_unknown"),
        "{:?}",
        r.body
    );
    let r = m.create_payment(&code_body("x-2", 500, "12345abc")).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "payment_code_malformed"),
        "{:?}",
        r.body
    );
    // A wallet declared against the code is refused.
    let mut body = code_body("x-3", 500, "134567890123456789");
    body["wallet"] = json!("alipay");
    let r = m.create_payment(&body).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    for no in ["x-1", "x-2", "x-3"] {
        let found = m.find_by_order_no(no).await;
        assert_eq!(
            found.body["data"].as_array().map(Vec::len),
            Some(0),
            "{no}: {:?}",
            found.body
        );
    }
}

#[tokio::test]
async fn an_alipay_code_pays_through_the_alipay_sandbox() {
    let app = app().await;
    let m = app.merchant("Cafe").await;
    let r = m
        .create_payment(&code_body("a-1", 2_345, "281234567890123456"))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["status"].as_str()),
        (201, Some("succeeded")),
        "{:?}",
        r.body
    );
    assert_eq!(r.body["wallet"], "alipay");
    let r = m
        .create_payment(&code_body("a-2", 100, "281234567890121003"))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["status"].as_str()),
        (201, Some("failed")),
        "{:?}",
        r.body
    );
    let r = m
        .create_payment(&code_body("a-3", 100, "281234567890121001"))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let p = wait_final(&m, r.body["id"].as_str().unwrap()).await;
    assert_eq!(p["status"], "succeeded");
    assert_books_clean(&app).await;
}

#[tokio::test]
async fn a_unionpay_code_is_accepted_then_found_paid() {
    let app = app().await;
    let m = app.merchant("Cafe").await;
    // UnionPay's answer to a code payment only means "accepted": paymux queries for the result.
    let r = m
        .create_payment(&code_body("y-1", 1_500, "6212345678901234567"))
        .await;
    assert!(matches!(r.status.as_u16(), 201 | 202), "{:?}", r.body);
    assert_eq!(r.body["wallet"], "unionpay");
    let p = wait_final(&m, r.body["id"].as_str().unwrap()).await;
    assert_eq!(p["status"], "succeeded", "{p}");
    let r = m
        .create_payment(&code_body("y-2", 100, "6212345678901231003"))
        .await;
    let p = wait_final(&m, r.body["id"].as_str().unwrap()).await;
    assert_eq!(p["status"], "failed", "{p}");
    assert_books_clean(&app).await;
}

/// A node that stops while a code payment waits for the payer leaves it `processing` with nobody
/// following it up; the next node's sweeper takes it over after `processing_recovery_after_ms`.
/// This node's own follow-up polls only once a minute, so within a test such a payment can only be
/// finished by the recovery.
async fn node_that_will_stop() -> TestApp {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.code_pay_poll_interval_ms = 60_000;
    config.code_pay_deadline_ms = 120_000;
    config.sandbox_time_compression = 20;
    spawn_with(db, config).await
}

/// Stops `first` as a crash would and starts the next node on its database and data directory
/// (and so on the sandboxes' books); `m` is pointed at the next node.
async fn next_node(first: &mut TestApp, m: &MerchantClient) -> (TestApp, MerchantClient) {
    first.kill().await;
    let mut config = crate::helpers::test_config_on(&first.config);
    config.code_pay_poll_interval_ms = 50;
    config.code_pay_deadline_ms = 300;
    config.processing_recovery_after_ms = 1_000;
    let db = std::mem::replace(&mut first.db, fresh_database().await);
    let next = spawn_with(db, config).await;
    let m = MerchantClient {
        base: next.base.clone(),
        ..m.clone()
    };
    (next, m)
}

#[tokio::test]
async fn a_code_payment_left_processing_by_a_stopped_node_is_finished_by_the_next() {
    let mut first = node_that_will_stop().await;
    let m = first.merchant("Cafe").await;
    let paid = m
        .create_payment(&code_body("r-1", 700, "134567890123451001"))
        .await;
    assert_eq!(paid.status, 202, "{:?}", paid.body);
    let never = m
        .create_payment(&code_body("r-2", 300, "134567890123451002"))
        .await;
    assert_eq!(never.status, 202, "{:?}", never.body);
    let (next, m) = next_node(&mut first, &m).await;
    // The payer entered the password meanwhile: the channel says paid.
    let p = wait_final(&m, paid.body["id"].as_str().unwrap()).await;
    assert_eq!(p["status"], "succeeded", "{p}");
    assert!(p["channel_trade_no"].as_str().is_some(), "{p}");
    // The payer never did: nothing moved.
    let p = wait_final(&m, never.body["id"].as_str().unwrap()).await;
    assert!(
        matches!(p["status"].as_str(), Some("failed" | "closed")),
        "{p}"
    );
    assert_books_clean(&next).await;
    let db = paymux::startup::open_database(&next.config).await.unwrap();
    let report = paymux::ledger_audit::audit(&db).await.unwrap();
    assert_eq!(
        (report.succeeded_payments, report.ledger.entries),
        (1, 1),
        "{}: posted exactly once",
        next.backend()
    );
    db.close().await;
}

#[tokio::test]
async fn a_processing_code_payment_no_channel_knows_is_closed_by_the_recovery() {
    let mut first = node_that_will_stop().await;
    let m = first.merchant("Cafe").await;
    // A payment the stopped node had marked processing but never sent to a channel.
    let r = m
        .create_payment(&crate::helpers::payment_body("r-3", 900))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    first
        .sql_execute(
            "UPDATE payments SET status = 'processing', method = 'code_scan', wallet = 'wechat', \
             updated_at_us = 0 WHERE merchant_order_no = 'r-3'",
        )
        .await;
    let (next, m) = next_node(&mut first, &m).await;
    let p = wait_final(&m, r.body["id"].as_str().unwrap()).await;
    assert_eq!(
        (p["status"].as_str(), p["closed_reason"].as_str()),
        (Some("closed"), Some("never_reached_channel")),
        "{p}"
    );
    assert_books_clean(&next).await;
}

/// The follow-up flows for Alipay and UnionPay codes too: a password wait then paid, an unknown
/// outcome queried and found paid, and a password never entered reversed at our deadline.
#[tokio::test]
async fn alipay_and_unionpay_codes_follow_the_password_unknown_and_reversal_paths() {
    let app = app().await;
    let m = app.merchant("Cafe").await;
    for (wallet, prefix) in [
        ("alipay", "28123456789012"),
        ("unionpay", "621234567890123"),
    ] {
        for (suffix, want) in [("1001", "succeeded"), ("1005", "succeeded")] {
            let r = m
                .create_payment(&code_body(
                    &format!("{wallet}-{suffix}"),
                    600,
                    &format!("{prefix}{suffix}"),
                ))
                .await;
            // Final within the answer's wait (201) or still being followed up (202).
            assert!(
                matches!(r.status.as_u16(), 201 | 202),
                "{wallet} {suffix}: {} {:?}",
                r.status,
                r.body
            );
            assert_eq!(r.body["wallet"], wallet);
            let p = wait_final(&m, r.body["id"].as_str().unwrap()).await;
            assert_eq!(p["status"], want, "{wallet} {suffix}: {p}");
        }
    }
    assert_books_clean(&app).await;

    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.code_pay_poll_interval_ms = 50;
    config.code_pay_deadline_ms = 1_500;
    config.sandbox_time_compression = 1; // a 10 s password wait: our deadline comes first
    let app = spawn_with(db, config).await;
    let m = app.merchant("Cafe").await;
    let mut alipay_id = String::new();
    for (wallet, prefix) in [
        ("alipay", "28123456789012"),
        ("unionpay", "621234567890123"),
    ] {
        let r = m
            .create_payment(&code_body(
                &format!("{wallet}-rev"),
                600,
                &format!("{prefix}1002"),
            ))
            .await;
        assert_eq!(r.status, 202, "{wallet}: {:?}", r.body);
        let id = r.body["id"].as_str().unwrap().to_string();
        let p = wait_final(&m, &id).await;
        assert_eq!(
            (p["status"].as_str(), p["closed_reason"].as_str()),
            (Some("closed"), Some("reversed_at_deadline")),
            "{wallet}: {p}"
        );
        if wallet == "alipay" {
            alipay_id = id.clone();
        }
    }
    // Alipay's trade was cancelled at the channel (its own timeout is 10 s away).
    assert_eq!(
        sandbox_order_state(&app, "alipay", "trade_status", &alipay_id).await,
        "TRADE_CLOSED"
    );
    assert_books_clean(&app).await;
}
