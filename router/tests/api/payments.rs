use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{payment_body, spawn_app, spawn_with};

#[tokio::test]
async fn create_get_list_close_a_payment() {
    let app = spawn_app().await;
    let m = app.merchant("Tea House").await;
    let mut body = payment_body("order-1", 1234);
    body["metadata"] = json!({"table": 7, "items": ["tea"]});
    body["store_id"] = json!("store-01");
    body["expires_in_seconds"] = json!(600);
    let created = m.create_payment(&body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let p = &created.body;
    assert_eq!(p["amount"], 1234);
    assert_eq!(p["currency"], "CNY");
    assert_eq!(p["status"], "created");
    assert_eq!(p["refunded_amount"], 0);
    assert_eq!(p["merchant_id"], m.creds.merchant_id.to_string());
    assert_eq!(p["metadata"]["table"], 7);
    assert_eq!(p["store_id"], "store-01");
    let id = p["id"].as_str().unwrap().to_string();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);

    let got = m.get_payment(&id).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, created.body);

    let found = m.find_by_order_no("order-1").await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(found.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(found.body["data"][0]["id"], id.as_str());
    let none = m.find_by_order_no("order-404").await;
    assert_eq!(none.body["data"].as_array().unwrap().len(), 0);

    let closed = m.close_payment(&id).await;
    assert_eq!(closed.status, StatusCode::OK, "{:?}", closed.body);
    assert_eq!(closed.body["status"], "closed");
    assert_eq!(closed.body["closed_reason"], "closed_by_merchant");
    let again = m.close_payment(&id).await;
    assert_eq!(again.status, StatusCode::OK, "closing twice is harmless");
    assert_eq!(again.body["updated_at"], closed.body["updated_at"]);

    // A final payment cannot be closed.
    let paid = m.create_payment(&payment_body("order-2", 100)).await;
    let paid_id = paid.body["id"].as_str().unwrap().to_string();
    app.sql_execute("UPDATE payments SET status = 'succeeded' WHERE merchant_order_no = 'order-2'")
        .await;
    let refused = m.close_payment(&paid_id).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.code(), "invalid_state");
}

#[tokio::test]
async fn list_pages_newest_first() {
    let app = spawn_app().await;
    let m = app.merchant("Pager").await;
    for i in 0..5 {
        assert_eq!(
            m.create_payment(&payment_body(&format!("p-{i}"), 100 + i))
                .await
                .status,
            StatusCode::CREATED
        );
    }
    let page1 = m.send(Method::GET, "/v1/payments?limit=2", None).await;
    assert_eq!(page1.status, StatusCode::OK);
    assert_eq!(page1.body["has_more"], true);
    let ids: Vec<&str> = page1.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(page1.body["data"][0]["merchant_order_no"], "p-4");
    let page2 = m
        .send(
            Method::GET,
            &format!("/v1/payments?limit=10&starting_after={}", ids[1]),
            None,
        )
        .await;
    assert_eq!(page2.body["data"].as_array().unwrap().len(), 3);
    assert_eq!(page2.body["has_more"], false);
    let bad = m.send(Method::GET, "/v1/payments?limit=1000", None).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["field"], "limit");
}

#[tokio::test]
async fn same_order_number_same_content_is_the_same_payment_other_content_conflicts() {
    let app = spawn_app().await;
    let m = app.merchant("Idem").await;
    let mut body = payment_body("idem-1", 500);
    body["metadata"] = json!({"a": 1, "b": {"x": 1, "y": 2}});
    let first = m.create_payment(&body).await;
    assert_eq!(first.status, StatusCode::CREATED);
    // Same content, keys in another order.
    let reordered = r#"{"metadata":{"b":{"y":2,"x":1},"a":1},"method":"qr_merchant","subject":"咖啡 ×2","currency":"CNY","amount":500,"merchant_order_no":"idem-1"}"#;
    let again = m
        .send_raw(
            Method::POST,
            "/v1/payments",
            reordered.as_bytes().to_vec(),
            chrono::Utc::now().timestamp(),
            &crate::helpers::nonce(),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(again.body["id"], first.body["id"]);
    let mut different = body.clone();
    different["amount"] = json!(501);
    let conflict = m.create_payment(&different).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(conflict.code(), "idempotency_conflict");
    assert_eq!(conflict.content_type, "application/problem+json");
    let listed = m.find_by_order_no("idem-1").await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["data"][0]["amount"], 500);
}

#[tokio::test]
async fn two_hundred_concurrent_creates_with_one_order_number_make_one_payment() {
    let app = spawn_app().await;
    let m = app.merchant("Race").await;
    let body = payment_body("race-1", 999);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let m = m.clone();
            let body = body.clone();
            tokio::spawn(async move { m.create_payment(&body).await })
        })
        .collect();
    let mut created = 0;
    let mut ids = HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert!(
            r.status == StatusCode::CREATED || r.status == StatusCode::OK,
            "{} {:?}",
            r.status,
            r.body
        );
        if r.status == StatusCode::CREATED {
            created += 1;
        }
        ids.insert(r.body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(created, 1, "exactly one request creates");
    assert_eq!(ids.len(), 1, "every answer names the same payment");
    assert_eq!(
        m.find_by_order_no("race-1").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn merchants_never_see_each_others_payments() {
    let app = spawn_app().await;
    let a = app.merchant("A").await;
    let b = app.merchant("B").await;
    let pa = a.create_payment(&payment_body("shared-no", 100)).await;
    let id = pa.body["id"].as_str().unwrap().to_string();
    let peek = b.get_payment(&id).await;
    assert_eq!(peek.status, StatusCode::NOT_FOUND);
    assert_eq!(peek.code(), "not_found");
    assert_eq!(b.close_payment(&id).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        b.find_by_order_no("shared-no").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        b.send(Method::GET, "/v1/payments", None).await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // The same order number is independent per merchant.
    let pb = b.create_payment(&payment_body("shared-no", 200)).await;
    assert_eq!(pb.status, StatusCode::CREATED);
    assert_ne!(pb.body["id"], pa.body["id"]);
    assert_eq!(a.get_payment(&id).await.body["amount"], 100);
}

#[tokio::test]
async fn validation_errors_name_the_field() {
    let app = spawn_app().await;
    let m = app.merchant("Validator").await;
    let base = payment_body("v-1", 100);
    let cases: Vec<(&str, serde_json::Value, &str, &str)> = vec![
        ("amount", json!(0), "validation_failed", "amount"),
        ("amount", json!(-5), "validation_failed", "amount"),
        ("amount", json!(12.5), "validation_failed", "amount"),
        ("amount", json!("100"), "validation_failed", "amount"),
        (
            "amount",
            json!(10_000_000_001i64),
            "validation_failed",
            "amount",
        ),
        ("currency", json!("XXX"), "validation_failed", "currency"),
        // Known codes the channels do not charge in: they would be charged as CNY fen.
        ("currency", json!("USD"), "validation_failed", "currency"),
        ("currency", json!("HKD"), "validation_failed", "currency"),
        ("method", json!("teleport"), "validation_failed", "method"),
        // Methods this endpoint does not pay: nothing would ever charge them.
        ("method", json!("nfc"), "validation_failed", "method"),
        ("method", json!("jsapi"), "validation_failed", "method"),
        (
            "method",
            json!("wallet_balance"),
            "validation_failed",
            "method",
        ),
        ("method", json!("app"), "validation_failed", "method"),
        ("method", json!("qr_static"), "validation_failed", "method"),
        (
            "merchant_order_no",
            json!(""),
            "validation_failed",
            "merchant_order_no",
        ),
        (
            "merchant_order_no",
            json!("has space"),
            "validation_failed",
            "merchant_order_no",
        ),
        (
            "merchant_order_no",
            json!("x".repeat(65)),
            "validation_failed",
            "merchant_order_no",
        ),
        ("subject", json!(""), "validation_failed", "subject"),
        (
            "notify_url",
            json!("ftp://x"),
            "validation_failed",
            "notify_url",
        ),
        (
            "expires_in_seconds",
            json!(0),
            "validation_failed",
            "expires_in_seconds",
        ),
        ("wallet", json!("piggybank"), "validation_failed", "wallet"),
        (
            "metadata",
            json!("not an object"),
            "validation_failed",
            "metadata",
        ),
        (
            "metadata",
            json!({"big": "x".repeat(5000)}),
            "validation_failed",
            "metadata",
        ),
        (
            "auth_code",
            json!("134919586213926735"),
            "validation_failed",
            "auth_code",
        ),
        ("surprise", json!(1), "unknown_field", "surprise"),
    ];
    for (field, value, code, named) in cases {
        let mut body = base.clone();
        body[field] = value.clone();
        let r = m.create_payment(&body).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}={value}: {:?}",
            r.body
        );
        assert_eq!(r.code(), code, "{field}={value}: {:?}", r.body);
        assert_eq!(r.body["field"], named, "{field}={value}: {:?}", r.body);
        assert_eq!(r.content_type, "application/problem+json");
    }
    let mut missing = base.clone();
    missing.as_object_mut().unwrap().remove("amount");
    let r = m.create_payment(&missing).await;
    assert_eq!(
        (r.status, r.code(), r.body["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("amount")
        )
    );

    let mut scan = base.clone();
    scan["method"] = json!("code_scan");
    let r = m.create_payment(&scan).await;
    assert_eq!(
        r.body["field"], "auth_code",
        "code_scan needs a payment code"
    );
    scan["auth_code"] = json!("12-34");
    assert_eq!(
        m.create_payment(&scan).await.code(),
        "payment_code_malformed"
    );

    let r = m
        .send_raw(
            Method::POST,
            "/v1/payments",
            b"{not json".to_vec(),
            chrono::Utc::now().timestamp(),
            &crate::helpers::nonce(),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );

    let huge = vec![b' '; 70 * 1024];
    let r = m
        .send_raw(
            Method::POST,
            "/v1/payments",
            huge,
            chrono::Utc::now().timestamp(),
            &crate::helpers::nonce(),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    // Nothing of the rejected requests was written.
    assert_eq!(
        m.send(Method::GET, "/v1/payments", None).await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn the_sweeper_closes_expired_payments() {
    let app = spawn_app().await;
    let m = app.merchant("Sweep").await;
    let mut short = payment_body("exp-1", 100);
    short["expires_in_seconds"] = json!(1);
    let id = m.create_payment(&short).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let long_id = m.create_payment(&payment_body("exp-2", 100)).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let p = m.get_payment(&id).await;
        if p.body["status"] == "closed" {
            assert_eq!(p.body["closed_reason"], "expired");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "payment was not closed after expiry: {:?}",
            p.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        m.get_payment(&long_id).await.body["status"],
        "created",
        "unexpired payments stay open"
    );
}

#[tokio::test]
async fn a_restarted_server_keeps_every_acknowledged_payment() {
    let mut app = spawn_app().await;
    let m = app.merchant("Durable").await;
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let m = m.clone();
            tokio::spawn(async move {
                m.create_payment(&payment_body(&format!("d-{i}"), 1 + i))
                    .await
            })
        })
        .collect();
    // Crash the server while requests are still arriving.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let http = app.http.clone();
    app.kill().await;
    let mut acknowledged = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await
            && r.status == StatusCode::CREATED
        {
            acknowledged.push((
                r.body["id"].as_str().unwrap().to_string(),
                r.body["amount"].as_i64().unwrap(),
            ));
        }
    }
    let config = app.config.clone();
    let db = std::mem::replace(&mut app.db, crate::helpers::fresh_database().await);
    let restarted = spawn_with(db, crate::helpers::test_config_on(&config)).await;
    let m2 = crate::helpers::MerchantClient {
        base: restarted.base.clone(),
        http,
        creds: m.creds.clone(),
    };
    for (id, amount) in &acknowledged {
        let p = m2.get_payment(id).await;
        assert_eq!(p.status, StatusCode::OK, "acknowledged payment {id} lost");
        assert_eq!(p.body["amount"], *amount);
    }
    // And the server goes on taking payments.
    assert_eq!(
        m2.create_payment(&payment_body("after-restart", 1))
            .await
            .status,
        StatusCode::CREATED
    );
    eprintln!(
        "{} acknowledged before the crash, all present after restart ({})",
        acknowledged.len(),
        restarted.backend()
    );
}

#[tokio::test]
async fn graceful_shutdown_answers_in_flight_requests_before_exiting() {
    let mut app = spawn_app().await;
    let m = app.merchant("Graceful").await;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let m = m.clone();
            tokio::spawn(async move {
                m.create_payment(&payment_body(&format!("g-{i}"), 1 + i))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    app.stop().await;
    let mut acknowledged = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await
            && r.status == StatusCode::CREATED
        {
            acknowledged.push(r.body["id"].as_str().unwrap().to_string());
        }
    }
    let config = crate::helpers::test_config_on(&app.config);
    let db = std::mem::replace(&mut app.db, crate::helpers::fresh_database().await);
    let restarted = spawn_with(db, config).await;
    let m2 = crate::helpers::MerchantClient {
        base: restarted.base.clone(),
        http: restarted.http.clone(),
        creds: m.creds.clone(),
    };
    let listed = m2.send(Method::GET, "/v1/payments?limit=100", None).await;
    let stored: HashSet<&str> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    for id in &acknowledged {
        assert!(
            stored.contains(id.as_str()),
            "acknowledged payment {id} lost in shutdown"
        );
    }
}
