//! Per-merchant channel accounts and routes through the admin API: authentication, validation,
//! the rules (priority, lowest cost, weighted), disabled accounts, fail-over only while the money
//! certainly did not move, and merchants without a route. The ledger audit passes after each.

use std::collections::HashMap;
use std::time::Duration;

use paymux::config::Secret;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    MerchantClient, Reply, TestApp, fresh_database, reply, spawn_with, test_config,
};

const TOKEN: &str = "adm_test_0123456789abcdef";

async fn app() -> TestApp {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.admin_token = Some(Secret::new(TOKEN));
    config.sandbox_time_compression = 100;
    config.code_pay_poll_interval_ms = 50;
    spawn_with(db, config).await
}

async fn admin_as(
    app: &TestApp,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let mut req = app
        .http
        .request(method, format!("{}/admin/v1{path}", app.base));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    reply(req.send().await.unwrap()).await
}

async fn admin(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Reply {
    admin_as(app, Some(TOKEN), method, path, body).await
}

fn mid(m: &MerchantClient) -> String {
    m.creds.merchant_id.to_string()
}

/// A WeChat account on this server's sandbox (optionally reached at another base URL).
async fn wechat_account(
    app: &TestApp,
    m: &MerchantClient,
    name: &str,
    cost: u32,
    base_url: Option<String>,
) -> String {
    let mut creds = json!({"sandbox": true});
    if let Some(b) = base_url {
        creds["base_url"] = json!(b);
    }
    let r = admin(
        app,
        Method::POST,
        &format!("/merchants/{}/channel-accounts", mid(m)),
        Some(
            json!({"name": name, "kind": "wechat_v3", "credentials": creds, "cost_rate_bps": cost}),
        ),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert!(
        r.body.get("credentials").is_none(),
        "credentials are never shown"
    );
    r.body["id"].as_str().unwrap().to_string()
}

/// The id of the merchant's account with this name.
async fn account_named(app: &TestApp, m: &MerchantClient, name: &str) -> String {
    let r = admin(
        app,
        Method::GET,
        &format!("/merchants/{}/channel-accounts", mid(m)),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no account {name}: {:?}", r.body))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn set_route(
    app: &TestApp,
    m: &MerchantClient,
    wallet: &str,
    method: &str,
    body: Value,
) -> Reply {
    admin(
        app,
        Method::PUT,
        &format!("/merchants/{}/routes/{wallet}/{method}", mid(m)),
        Some(body),
    )
    .await
}

fn code_body(order_no: &str, code: &str) -> Value {
    json!({
        "merchant_order_no": order_no, "amount": 1000, "currency": "CNY", "subject": "Tea",
        "method": "code_scan", "auth_code": code,
    })
}

fn qr_body(order_no: &str) -> Value {
    json!({
        "merchant_order_no": order_no, "amount": 800, "currency": "CNY", "subject": "Bread",
        "method": "qr_merchant", "wallet": "wechat",
    })
}

async fn wait_status(m: &MerchantClient, id: &str, status: &str) -> Value {
    for _ in 0..800 {
        let r = m.get_payment(id).await;
        if r.body["status"] == status {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("payment {id} never became {status}");
}

async fn audit(app: &TestApp) -> paymux::ledger_audit::PlatformAudit {
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let report = paymux::ledger_audit::audit(&db).await.unwrap();
    db.close().await;
    assert!(report.is_clean(), "{}: {report}", app.backend());
    report
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_token_and_changes_nothing_without_it() {
    let app = app().await;
    let m = app.merchant("Tea House").await;
    let path = format!("/merchants/{}/channel-accounts", mid(&m));
    let body = json!({"name": "x", "kind": "wechat_v3", "credentials": {"sandbox": true}, "cost_rate_bps": 10});
    for token in [
        None,
        Some("wrong"),
        Some(""),
        Some("adm_test_0123456789abcdeF"),
    ] {
        let r = admin_as(&app, token, Method::POST, &path, Some(body.clone())).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (401, "admin_unauthorized"),
            "{token:?}"
        );
        let r = admin_as(&app, token, Method::GET, &path, None).await;
        assert_eq!(r.status, 401);
    }
    // A merchant's signed key is not an admin token either.
    let r = m.send(Method::GET, &format!("/admin/v1{path}"), None).await;
    assert_eq!(r.status, 401);
    let r = admin(&app, Method::GET, &path, None).await;
    assert_eq!(r.status, 200);
    let names: Vec<&str> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "only the sandbox accounts: {names:?}");
    assert!(!names.contains(&"x"));
}

#[tokio::test]
async fn accounts_and_routes_are_validated() {
    let app = app().await;
    let m = app.merchant("Tea House").await;
    let other = app.merchant("Noodle Bar").await;
    let path = format!("/merchants/{}/channel-accounts", mid(&m));
    let bad = |body: Value, field: &'static str| {
        let app = &app;
        let path = path.clone();
        async move {
            let r = admin(app, Method::POST, &path, Some(body.clone())).await;
            assert_eq!(
                (r.status.as_u16(), r.body["field"].as_str()),
                (422, Some(field)),
                "{body}: {:?}",
                r.body
            );
        }
    };
    bad(json!({"name": "a", "kind": "paypal", "credentials": {"sandbox": true}, "cost_rate_bps": 1}), "kind").await;
    bad(
        json!({"name": "a", "kind": "ecny", "credentials": {"sandbox": true}, "cost_rate_bps": 1}),
        "kind",
    )
    .await;
    bad(json!({"name": "a", "kind": "wechat_v3", "credentials": {"mchid": "1"}, "cost_rate_bps": 1}), "credentials").await;
    bad(
        json!({"name": "a", "kind": "wechat_v3", "credentials": "secret", "cost_rate_bps": 1}),
        "credentials",
    )
    .await;
    bad(json!({"name": "a", "kind": "wechat_v3", "credentials": {"sandbox": true}, "cost_rate_bps": 10001}), "cost_rate_bps").await;
    bad(json!({"name": "", "kind": "wechat_v3", "credentials": {"sandbox": true}, "cost_rate_bps": 1}), "name").await;
    bad(json!({"name": "a", "kind": "wechat_v3", "credentials": {"sandbox": true}, "cost_rate_bps": 1, "x": 1}), "x").await;

    let a = wechat_account(&app, &m, "wechat two", 45, None).await;
    let r = admin(&app, Method::GET, &format!("{path}/{a}"), None).await;
    assert_eq!(
        (
            r.status.as_u16(),
            r.body["cost_rate_bps"].as_u64(),
            r.body["enabled"].as_bool()
        ),
        (200, Some(45), Some(true))
    );
    let r = admin(
        &app,
        Method::PATCH,
        &format!("{path}/{a}"),
        Some(json!({"cost_rate_bps": 30, "enabled": false})),
    )
    .await;
    assert_eq!(
        (
            r.status.as_u16(),
            r.body["cost_rate_bps"].as_u64(),
            r.body["enabled"].as_bool()
        ),
        (200, Some(30), Some(false)),
        "{:?}",
        r.body
    );
    // Another merchant's path does not see it.
    let r = admin(
        &app,
        Method::GET,
        &format!("/merchants/{}/channel-accounts/{a}", mid(&other)),
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    // Credentials are stored encrypted.
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    if let paymux::db::Db::Sqlite(p) = &db {
        let cts: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT credentials_ciphertext FROM channel_accounts")
                .fetch_all(p)
                .await
                .unwrap();
        assert!(cts.iter().all(|c| !c.windows(7).any(|w| w == b"sandbox")));
    }
    db.close().await;

    let alipay = account_named(&app, &m, "alipay sandbox").await;
    let foreign = account_named(&app, &other, "wechat sandbox").await;
    let route_bad = |body: Value, field: &'static str| {
        let app = &app;
        let m = m.clone();
        async move {
            let r = set_route(app, &m, "wechat", "code_scan", body.clone()).await;
            assert_eq!(
                (r.status.as_u16(), r.body["field"].as_str()),
                (422, Some(field)),
                "{body}: {:?}",
                r.body
            );
        }
    };
    route_bad(
        json!({"rule": "priority", "targets": [{"channel_account_id": foreign}]}),
        "targets[0].channel_account_id",
    )
    .await;
    route_bad(json!({"rule": "priority", "targets": [{"channel_account_id": a}, {"channel_account_id": alipay}]}), "targets[1].channel_account_id").await;
    route_bad(
        json!({"rule": "priority", "targets": [{"channel_account_id": a, "priority": 1001}]}),
        "targets[0].priority",
    )
    .await;
    route_bad(
        json!({"rule": "weighted", "targets": [{"channel_account_id": a, "weight": 10001}]}),
        "targets[0].weight",
    )
    .await;
    route_bad(
        json!({"rule": "weighted", "targets": [{"channel_account_id": a, "weight": 0}]}),
        "targets",
    )
    .await;
    route_bad(
        json!({"rule": "cheapest", "targets": [{"channel_account_id": a}]}),
        "rule",
    )
    .await;
    route_bad(json!({"rule": "priority", "targets": []}), "targets").await;
    let r = set_route(
        &app,
        &m,
        "bitcoin",
        "code_scan",
        json!({"rule": "priority", "targets": [{"channel_account_id": a}]}),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.body["field"].as_str()),
        (422, Some("wallet"))
    );

    let r = set_route(
        &app,
        &m,
        "wechat",
        "code_scan",
        json!({"rule": "lowest_cost", "targets": [{"channel_account_id": a, "priority": 2}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = admin(
        &app,
        Method::GET,
        &format!("/merchants/{}/routes", mid(&m)),
        None,
    )
    .await;
    let route = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["wallet"] == "wechat" && r["method"] == "code_scan")
        .unwrap()
        .clone();
    assert_eq!(
        (
            route["rule"].as_str(),
            route["targets"][0]["channel_account_id"].as_str()
        ),
        (Some("lowest_cost"), Some(a.as_str()))
    );
    let del = format!("/merchants/{}/routes/wechat/code_scan", mid(&m));
    assert_eq!(admin(&app, Method::DELETE, &del, None).await.status, 204);
    assert_eq!(admin(&app, Method::DELETE, &del, None).await.status, 404);

    let fee = format!("/merchants/{}/fee-rate", mid(&m));
    let r = admin(
        &app,
        Method::PUT,
        &fee,
        Some(json!({"fee_rate_bps": 10001})),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.body["field"].as_str()),
        (422, Some("fee_rate_bps"))
    );
    let r = admin(&app, Method::PUT, &fee, Some(json!({"fee_rate_bps": 100}))).await;
    assert_eq!(
        (r.status.as_u16(), r.body["fee_rate_bps"].as_u64()),
        (200, Some(100))
    );
    let r = admin(
        &app,
        Method::GET,
        "/merchants/0190f5a0-0000-7000-8000-000000000000/channel-accounts",
        None,
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn priority_picks_the_first_and_lowest_cost_the_cheapest_with_the_merchants_fee_rate() {
    let app = app().await;
    let m = app.merchant("Tea House").await;
    let sandbox = account_named(&app, &m, "wechat sandbox").await;
    let cheap = wechat_account(&app, &m, "cheap", 20, None).await;
    let dear = wechat_account(&app, &m, "dear", 90, None).await;

    let r = set_route(&app, &m, "wechat", "code_scan", json!({"rule": "priority", "targets": [
        {"channel_account_id": cheap, "priority": 5}, {"channel_account_id": dear, "priority": 1}, {"channel_account_id": sandbox, "priority": 3}]})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let p = m
        .create_payment(&code_body("p-1", "134567890123456789"))
        .await;
    assert_eq!(
        (p.status.as_u16(), p.body["status"].as_str()),
        (201, Some("succeeded")),
        "{:?}",
        p.body
    );
    assert_eq!(p.body["channel_account_id"].as_str(), Some(dear.as_str()));

    let r = set_route(&app, &m, "wechat", "code_scan", json!({"rule": "lowest_cost", "targets": [
        {"channel_account_id": sandbox, "priority": 0}, {"channel_account_id": dear, "priority": 1}, {"channel_account_id": cheap, "priority": 2}]})).await;
    assert_eq!(r.status, 200);
    let r = admin(
        &app,
        Method::PUT,
        &format!("/merchants/{}/fee-rate", mid(&m)),
        Some(json!({"fee_rate_bps": 100})),
    )
    .await;
    assert_eq!(r.status, 200);
    let p = m
        .create_payment(&code_body("p-2", "134567890123456789"))
        .await;
    assert_eq!(p.body["status"], "succeeded", "{:?}", p.body);
    assert_eq!(p.body["channel_account_id"].as_str(), Some(cheap.as_str()));

    // The ledger: 1000 fen at the merchant's 1 % is a fee of 10 (the first payment, before the
    // merchant had a rate of its own, paid the configured 0.6 %); the cheap account's 0.2 % costs 2.
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let pool = db.ledger_pool();
    let cny = paymux_model::Currency::Cny;
    let acct = paymux_model::ChannelAccountId::from_uuid(cheap.parse().unwrap());
    let code = paymux_ledger::chart::channel_fees(acct, cny).code;
    let fees = paymux_ledger::queries::balance_by_code(&pool, &code)
        .await
        .unwrap();
    let code = paymux_ledger::chart::merchant_payable(m.creds.merchant_id, cny).code;
    let payable = paymux_ledger::queries::balance_by_code(&pool, &code)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(
        (fees.posted_minor(), payable.posted_minor()),
        (2, 994 + 990),
        "{}",
        app.backend()
    );
    audit(&app).await;
}

/// A refund returns the fee the payment was charged, not one at the merchant's rate of the day.
#[tokio::test]
async fn a_refund_returns_the_fees_booked_with_the_payment_after_the_rate_changed() {
    let app = app().await;
    let m = app.merchant("Tea House").await;
    let p = m
        .create_payment(&code_body("p-1", "134567890123456789"))
        .await;
    assert_eq!(p.body["status"], "succeeded", "{:?}", p.body);
    let pid = p.body["id"].as_str().unwrap().to_string();
    let r = admin(
        &app,
        Method::PUT,
        &format!("/merchants/{}/fee-rate", mid(&m)),
        Some(json!({"fee_rate_bps": 250})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let amount = p.body["amount"].as_i64().unwrap();
    let r = m
        .send(
            Method::POST,
            &format!("/v1/payments/{pid}/refunds"),
            Some(&json!({"merchant_refund_no": "rf-1", "amount": amount})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let rid = r.body["id"].as_str().unwrap().to_string();
    let mut status = Value::Null;
    for _ in 0..400 {
        status = m
            .send(Method::GET, &format!("/v1/refunds/{rid}"), None)
            .await
            .body["status"]
            .clone();
        if status != "processing" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(status, "succeeded");

    // Paid at the configured rate, refunded in full: the fee income and the merchant's payable
    // both come back to zero (at the new 2.5 % the refund would have taken back more fee than was charged).
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let pool = db.ledger_pool();
    let cny = paymux_model::Currency::Cny;
    let income = paymux_ledger::queries::balance_by_code(
        &pool,
        &paymux_ledger::chart::platform_fee_income(cny).code,
    )
    .await
    .unwrap();
    let payable = paymux_ledger::queries::balance_by_code(
        &pool,
        &paymux_ledger::chart::merchant_payable(m.creds.merchant_id, cny).code,
    )
    .await
    .unwrap();
    db.close().await;
    assert_ne!(app.config.merchant_fee_rate_bps, 250);
    assert_eq!(
        (income.posted_minor(), payable.posted_minor()),
        (0, 0),
        "{}",
        app.backend()
    );
    audit(&app).await;
}

#[tokio::test]
async fn weighted_routes_split_by_weight() {
    let app = app().await;
    let m = app.merchant("Tea House").await;
    let a = account_named(&app, &m, "wechat sandbox").await;
    let b = wechat_account(&app, &m, "second", 60, None).await;
    let r = set_route(
        &app,
        &m,
        "wechat",
        "code_scan",
        json!({"rule": "weighted", "targets": [
        {"channel_account_id": a, "weight": 1}, {"channel_account_id": b, "weight": 1}]}),
    )
    .await;
    assert_eq!(r.status, 200);
    let mut used: HashMap<String, u32> = HashMap::new();
    for i in 0..40 {
        let p = m
            .create_payment(&code_body(&format!("w-{i}"), "134567890123456789"))
            .await;
        assert_eq!(p.body["status"], "succeeded", "{:?}", p.body);
        *used
            .entry(p.body["channel_account_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(
        used.get(&a).copied().unwrap_or(0) >= 5 && used.get(&b).copied().unwrap_or(0) >= 5,
        "1:1 uses both: {used:?}"
    );

    let r = set_route(
        &app,
        &m,
        "wechat",
        "code_scan",
        json!({"rule": "weighted", "targets": [
        {"channel_account_id": a, "weight": 0}, {"channel_account_id": b, "weight": 100}]}),
    )
    .await;
    assert_eq!(r.status, 200);
    for i in 0..15 {
        let p = m
            .create_payment(&code_body(&format!("w100-{i}"), "134567890123456789"))
            .await;
        assert_eq!(
            p.body["channel_account_id"].as_str(),
            Some(b.as_str()),
            "100:0 uses one"
        );
    }
    let report = audit(&app).await;
    assert_eq!(report.succeeded_payments, 55);
}

#[tokio::test]
async fn a_disabled_account_takes_no_new_payments_but_serves_its_own() {
    let app = app().await;
    let m = app.merchant("Tea House").await;
    let a = account_named(&app, &m, "wechat sandbox").await;
    let b = wechat_account(&app, &m, "backup", 60, None).await;
    for method in ["code_scan", "qr_merchant"] {
        let r = set_route(
            &app,
            &m,
            "wechat",
            method,
            json!({"rule": "priority", "targets": [
            {"channel_account_id": a, "priority": 0}, {"channel_account_id": b, "priority": 1}]}),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let open = m.create_payment(&qr_body("d-qr")).await;
    assert_eq!(
        open.body["channel_account_id"].as_str(),
        Some(a.as_str()),
        "{:?}",
        open.body
    );
    let paid = m
        .create_payment(&code_body("d-code", "134567890123456789"))
        .await;
    assert_eq!(paid.body["channel_account_id"].as_str(), Some(a.as_str()));

    let r = admin(
        &app,
        Method::PATCH,
        &format!("/merchants/{}/channel-accounts/{a}", mid(&m)),
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(r.status, 200);
    let p = m
        .create_payment(&code_body("d-new", "134567890123456789"))
        .await;
    assert_eq!(
        p.body["channel_account_id"].as_str(),
        Some(b.as_str()),
        "a disabled account takes no new payment"
    );

    // The open payment's notification still reaches the disabled account and settles it.
    let qr = open.body["qr_code"].as_str().unwrap();
    let pay = app
        .http
        .post(format!("{}/sandbox/wechat/sandbox/pay", app.base))
        .json(&json!({"code_url": qr}))
        .send()
        .await
        .unwrap();
    assert_eq!(pay.status(), 200);
    let settled = wait_status(&m, open.body["id"].as_str().unwrap(), "succeeded").await;
    assert_eq!(settled["channel_account_id"].as_str(), Some(a.as_str()));
    // And a refund of its paid payment goes through it.
    let pid = paid.body["id"].as_str().unwrap();
    let r = m
        .send(
            Method::POST,
            &format!("/v1/payments/{pid}/refunds"),
            Some(&json!({"merchant_refund_no": "r-1", "amount": 300})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let rid = r.body["id"].as_str().unwrap().to_string();
    let mut status = r.body["status"].as_str().unwrap().to_string();
    for _ in 0..800 {
        if status != "processing" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        status = m
            .send(Method::GET, &format!("/v1/refunds/{rid}"), None)
            .await
            .body["status"]
            .as_str()
            .unwrap()
            .to_string();
    }
    assert_eq!(status, "succeeded");
    audit(&app).await;
}

/// A loopback port nothing listens on (connections are refused).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn an_unreachable_account_fails_over_to_the_next_and_the_payment_names_it() {
    let app = app().await;
    let m = app.merchant("Tea House").await;
    let good = account_named(&app, &m, "wechat sandbox").await;
    let down = wechat_account(
        &app,
        &m,
        "down",
        10,
        Some(format!("http://127.0.0.1:{}/sandbox/wechat", closed_port())),
    )
    .await;
    for method in ["code_scan", "qr_merchant"] {
        let r = set_route(&app, &m, "wechat", method, json!({"rule": "priority", "targets": [
            {"channel_account_id": down, "priority": 0}, {"channel_account_id": good, "priority": 1}]})).await;
        assert_eq!(r.status, 200);
    }
    let p = m
        .create_payment(&code_body("f-code", "134567890123456789"))
        .await;
    assert_eq!(
        (p.status.as_u16(), p.body["status"].as_str()),
        (201, Some("succeeded")),
        "{:?}",
        p.body
    );
    assert_eq!(p.body["channel_account_id"].as_str(), Some(good.as_str()));

    let q = m.create_payment(&qr_body("f-qr")).await;
    assert_eq!(q.status, 201, "{:?}", q.body);
    assert_eq!(q.body["channel_account_id"].as_str(), Some(good.as_str()));
    let pay = app
        .http
        .post(format!("{}/sandbox/wechat/sandbox/pay", app.base))
        .json(&json!({"code_url": q.body["qr_code"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(pay.status(), 200);
    let settled = wait_status(&m, q.body["id"].as_str().unwrap(), "succeeded").await;
    assert_eq!(settled["channel_account_id"].as_str(), Some(good.as_str()));
    audit(&app).await;
}

#[tokio::test]
async fn an_unknown_outcome_never_fails_over() {
    let app = app().await;
    let m = app.merchant("Tea House").await;
    let first = account_named(&app, &m, "wechat sandbox").await;
    let second = wechat_account(&app, &m, "second", 10, None).await;
    let r = set_route(&app, &m, "wechat", "code_scan", json!({"rule": "priority", "targets": [
        {"channel_account_id": first, "priority": 0}, {"channel_account_id": second, "priority": 1}]})).await;
    assert_eq!(r.status, 200);
    // `…1005`: the channel errs after the money moved — the outcome is unknown.
    let p = m
        .create_payment(&code_body("u-1", "134567890123451005"))
        .await;
    assert_eq!(
        (p.status.as_u16(), p.body["status"].as_str()),
        (202, Some("processing")),
        "{:?}",
        p.body
    );
    let settled = wait_status(&m, p.body["id"].as_str().unwrap(), "succeeded").await;
    assert_eq!(
        settled["channel_account_id"].as_str(),
        Some(first.as_str()),
        "queried at the first account, never charged at the second"
    );
    let report = audit(&app).await;
    assert_eq!(report.succeeded_payments, 1);
}

#[tokio::test]
async fn a_merchant_without_a_route_gets_no_route_and_nothing_is_written() {
    let app = app().await;
    let m = app.merchant("Tea House").await;
    for method in ["code_scan", "sound_wave", "qr_merchant"] {
        let r = admin(
            &app,
            Method::DELETE,
            &format!("/merchants/{}/routes/wechat/{method}", mid(&m)),
            None,
        )
        .await;
        assert_eq!(r.status, 204, "{method}");
    }
    let p = m
        .create_payment(&code_body("n-1", "134567890123456789"))
        .await;
    assert_eq!(
        (p.status.as_u16(), p.code()),
        (422, "no_route"),
        "{:?}",
        p.body
    );
    let q = m.create_payment(&qr_body("n-2")).await;
    assert_eq!(
        (q.status.as_u16(), q.code()),
        (422, "no_route"),
        "{:?}",
        q.body
    );
    for no in ["n-1", "n-2"] {
        let r = m.find_by_order_no(no).await;
        assert_eq!(
            r.body["data"].as_array().unwrap().len(),
            0,
            "nothing written"
        );
    }
    // Only disabled accounts left on a route: no route either.
    let alipay = account_named(&app, &m, "alipay sandbox").await;
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/merchants/{}/channel-accounts/{alipay}", mid(&m)),
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(r.status, 200);
    let p = m
        .create_payment(&code_body("n-3", "284567890123456789"))
        .await;
    assert_eq!(
        (p.status.as_u16(), p.code()),
        (422, "no_route"),
        "{:?}",
        p.body
    );
    // Other wallets still pay.
    let p = m
        .create_payment(&code_body("n-4", "6212345678901234567"))
        .await;
    assert!(p.status.is_success(), "{:?}", p.body);
    wait_status(&m, p.body["id"].as_str().unwrap(), "succeeded").await;
    audit(&app).await;
}
