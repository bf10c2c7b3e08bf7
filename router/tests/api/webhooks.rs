//! Merchant webhooks end to end: payments and refunds through the sandboxes with a `notify_url`
//! pointing at a receiver started here; the outbox row is written with the state change, delivered
//! signed, retried until acknowledged, listed by the API and resent by the operator.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{MerchantClient, TestApp, fresh_database, spawn_with, test_config};

async fn app() -> TestApp {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    config.code_pay_poll_interval_ms = 50;
    config.webhook_poll_interval_ms = 25;
    config.webhook_timeout_ms = 2_000;
    // 15 s becomes 30 ms, 1 min 120 ms, …
    config.webhook_retry_schedule_scale = 0.002;
    spawn_with(db, config).await
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    event_id: String,
    signature: String,
    body: String,
    /// What the receiver answered.
    answered: u16,
}

/// A merchant's webhook endpoint: answers with `status` (changeable) and records every request.
#[derive(Clone)]
pub(crate) struct Receiver {
    pub(crate) url: String,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub(crate) async fn start(status: u16) -> Receiver {
        let status = Arc::new(AtomicU16::new(status));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (s, g) = (status.clone(), got.clone());
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (s, g) = (s.clone(), g.clone());
                async move {
                    let answered = s.load(Ordering::SeqCst);
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    g.lock().unwrap().push(Received {
                        event_id: h("paymux-event-id"),
                        signature: h("paymux-signature"),
                        body,
                        answered,
                    });
                    StatusCode::from_u16(answered).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Receiver {
            url: format!("http://{addr}/hook"),
            status,
            got,
        }
    }

    pub(crate) fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until a request for `event_type` was acknowledged with 2xx; returns it.
    pub(crate) async fn acknowledged(&self, event_type: &str) -> Received {
        for _ in 0..400 {
            if let Some(r) = self
                .all()
                .into_iter()
                .find(|r| (200..300).contains(&r.answered) && body_of(r)["type"] == event_type)
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no acknowledged {event_type}; got {:?}", self.all());
    }
}

pub(crate) fn body_of(r: &Received) -> Value {
    serde_json::from_str(&r.body).unwrap()
}

/// Checks `Paymux-Signature: t=…,v1=…` against the merchant's key secret.
pub(crate) fn assert_signed(m: &MerchantClient, r: &Received) {
    let (t, v1) = r
        .signature
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("bad signature header {:?}", r.signature));
    let t: i64 = t.parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - t).abs() < 60);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, m.creds.key_secret.as_bytes());
    let expected = ring::hmac::sign(&key, format!("{t}.{}", r.body).as_bytes());
    assert_eq!(v1, hex::encode(expected.as_ref()), "signature verifies");
}

fn code_body(order_no: &str, code: &str, notify_url: &str) -> Value {
    json!({
        "merchant_order_no": order_no, "amount": 1_200, "currency": "CNY", "subject": "咖啡",
        "method": "code_scan", "auth_code": code, "notify_url": notify_url,
    })
}

pub(crate) async fn events(m: &MerchantClient, payment_id: &str) -> Vec<Value> {
    let r = m
        .send(
            Method::GET,
            &format!("/v1/webhooks?payment_id={payment_id}"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["data"].as_array().unwrap().clone()
}

/// Waits until the listed event has reached `status`.
async fn wait_event_status(m: &MerchantClient, payment_id: &str, status: &str) -> Vec<Value> {
    for _ in 0..200 {
        let e = events(m, payment_id).await;
        if !e.is_empty() && e.iter().all(|e| e["status"] == status) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "events of {payment_id} never all {status}: {:?}",
        events(m, payment_id).await
    );
}

#[tokio::test]
async fn a_paid_code_payment_is_announced_once_signed() {
    let app = app().await;
    let m = app.merchant("Cafe").await;
    let hook = Receiver::start(200).await;
    let r = m
        .create_payment(&code_body("w-1", "134567890123456789", &hook.url))
        .await;
    assert_eq!(r.body["status"], "succeeded", "{:?}", r.body);
    let pid = r.body["id"].as_str().unwrap();

    let got = hook.acknowledged("payment.succeeded").await;
    assert_signed(&m, &got);
    let body = body_of(&got);
    assert_eq!(body["id"].as_str().unwrap(), got.event_id);
    assert_eq!(body["data"]["id"], pid);
    assert_eq!(body["data"]["status"], "succeeded");
    assert_eq!(body["data"]["amount"], 1_200);
    assert!(body["created_at"].as_str().is_some());

    let listed = wait_event_status(&m, pid, "delivered").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["type"], "payment.succeeded");
    assert_eq!(listed[0]["attempts"], 1);
    assert_eq!(listed[0]["last_status"], 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hook.all().len(), 1, "delivered exactly once");

    // Another merchant sees none of it; a payment without notify_url has no events.
    let other = app.merchant("Other").await;
    assert!(events(&other, pid).await.is_empty());
    let quiet = m
        .create_payment(&json!({
            "merchant_order_no": "w-quiet", "amount": 100, "currency": "CNY", "subject": "茶",
            "method": "code_scan", "auth_code": "134567890123456789",
        }))
        .await;
    assert_eq!(quiet.body["status"], "succeeded");
    assert!(
        events(&m, quiet.body["id"].as_str().unwrap())
            .await
            .is_empty()
    );
    crate::cashier::audit(&app).await;
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_the_event_after_a_retry() {
    let app = app().await;
    let m = app.merchant("Cafe").await;
    let hook = Receiver::start(500).await;
    let r = m
        .create_payment(&code_body("w-2", "134567890123456789", &hook.url))
        .await;
    let pid = r.body["id"].as_str().unwrap().to_string();
    // Wait for at least two refused attempts (recorded), then bring the receiver up.
    let mut pending = Vec::new();
    for _ in 0..400 {
        pending = events(&m, &pid).await;
        if pending.first().and_then(|e| e["attempts"].as_i64()) >= Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pending[0]["status"], "pending", "{pending:?}");
    assert_eq!(pending[0]["last_error"], "HTTP 500 Internal Server Error");
    hook.status.store(200, Ordering::SeqCst);

    let got = hook.acknowledged("payment.succeeded").await;
    assert_signed(&m, &got);
    let listed = wait_event_status(&m, &pid, "delivered").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = hook.all();
    assert_eq!(
        all.iter().filter(|r| r.answered == 200).count(),
        1,
        "exactly one acknowledged delivery: {all:?}"
    );
    assert!(
        all.iter().all(|r| r.event_id == got.event_id),
        "retries carry the same event id"
    );
    let attempts = listed[0]["attempts"].as_i64().unwrap();
    assert_eq!(attempts as usize, all.len(), "every attempt counted");

    // Every attempt is in the delivery log.
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let logged: i64 = match &db {
        paymux::db::Db::Sqlite(p) => sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries")
            .fetch_one(p)
            .await
            .unwrap(),
        paymux::db::Db::Postgres(p) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries")
                .fetch_one(p)
                .await
                .unwrap()
        }
    };
    db.close().await;
    assert_eq!(logged as usize, all.len());

    // The operator resends it (`paymux webhook resend`): delivered a second time, same event.
    resend_cli(&app, &got.event_id).await.unwrap();
    for _ in 0..400 {
        if hook.all().iter().filter(|r| r.answered == 200).count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acked: Vec<_> = hook
        .all()
        .into_iter()
        .filter(|r| r.answered == 200)
        .collect();
    assert_eq!(acked.len(), 2, "resent once");
    assert_eq!(acked[1].event_id, got.event_id);
    assert!(
        resend_cli(&app, "0190b1e0-0000-7000-8000-000000000000")
            .await
            .is_err(),
        "an unknown event is an error"
    );
    crate::cashier::audit(&app).await;
}

/// `paymux --config <file> webhook resend --event-id ID`, run in this process (the file names the
/// test's database).
async fn resend_cli(app: &TestApp, event_id: &str) -> anyhow::Result<()> {
    use clap::Parser;
    let file = app.db.dir.path().join("resend.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = {:?}\ndatabase_url = {:?}\ndemo_merchant = false\nsandbox = false\n",
            app.db.dir.path().display().to_string(),
            app.db.url
        ),
    )
    .unwrap();
    let cli = paymux::cli::Cli::try_parse_from([
        "paymux",
        "--config",
        file.to_str().unwrap(),
        "webhook",
        "resend",
        "--event-id",
        event_id,
    ])
    .unwrap();
    paymux::cli::run(cli).await
}

#[tokio::test]
async fn a_refund_is_announced() {
    let app = app().await;
    let m = app.merchant("Books").await;
    let hook = Receiver::start(200).await;
    let r = m
        .create_payment(&code_body("w-3", "134567890123456789", &hook.url))
        .await;
    let pid = r.body["id"].as_str().unwrap().to_string();
    hook.acknowledged("payment.succeeded").await;
    let rf = m
        .send(
            Method::POST,
            &format!("/v1/payments/{pid}/refunds"),
            Some(&json!({"merchant_refund_no": "rf-1", "amount": 500})),
        )
        .await;
    assert_eq!(rf.status, 201, "{:?}", rf.body);
    let got = hook.acknowledged("refund.succeeded").await;
    assert_signed(&m, &got);
    let body = body_of(&got);
    assert_eq!(body["data"]["id"], rf.body["id"]);
    assert_eq!(body["data"]["payment_id"], pid.as_str());
    assert_eq!(body["data"]["status"], "succeeded");
    assert_eq!(body["data"]["amount"], 500);
    let listed = wait_event_status(&m, &pid, "delivered").await;
    let types: Vec<&str> = listed.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["refund.succeeded", "payment.succeeded"],
        "newest first"
    );
    crate::cashier::audit(&app).await;
}

#[tokio::test]
async fn a_failed_payment_and_a_closed_one_are_announced() {
    let app = app().await;
    let m = app.merchant("Cafe").await;
    let hook = Receiver::start(204).await;
    let r = m
        .create_payment(&code_body("w-4", "134567890123451003", &hook.url))
        .await;
    assert_eq!(r.body["status"], "failed", "{:?}", r.body);
    let got = hook.acknowledged("payment.failed").await;
    assert_signed(&m, &got);
    let body = body_of(&got);
    assert_eq!(body["data"]["id"], r.body["id"]);
    assert_eq!(body["data"]["status"], "failed");
    assert!(body["data"]["failure_code"].as_str().is_some());

    let c = m
        .create_payment(&json!({
            "merchant_order_no": "w-5", "amount": 300, "currency": "CNY", "subject": "茶",
            "method": "qr_merchant", "notify_url": hook.url,
        }))
        .await;
    assert_eq!(c.status, 201, "{:?}", c.body);
    let cid = c.body["id"].as_str().unwrap();
    assert_eq!(m.close_payment(cid).await.status, 200);
    assert_eq!(m.close_payment(cid).await.status, 200);
    let got = hook.acknowledged("payment.closed").await;
    assert_eq!(body_of(&got)["data"]["closed_reason"], "closed_by_merchant");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let closed = hook
        .all()
        .into_iter()
        .filter(|r| body_of(r)["type"] == "payment.closed")
        .count();
    assert_eq!(closed, 1, "closing twice announces once");
    crate::cashier::audit(&app).await;
}

#[tokio::test]
async fn an_expired_payment_is_announced_closed() {
    let app = app().await;
    let m = app.merchant("Cafe").await;
    let hook = Receiver::start(200).await;
    let c = m
        .create_payment(&json!({
            "merchant_order_no": "w-6", "amount": 300, "currency": "CNY", "subject": "茶",
            "method": "qr_merchant", "notify_url": hook.url, "expires_in_seconds": 1,
        }))
        .await;
    assert_eq!(c.status, 201, "{:?}", c.body);
    let got = hook.acknowledged("payment.closed").await;
    assert_signed(&m, &got);
    let body = body_of(&got);
    assert_eq!(body["data"]["id"], c.body["id"]);
    assert_eq!(body["data"]["closed_reason"], "expired");
    crate::cashier::audit(&app).await;
}

#[test]
fn the_retry_schedule_and_the_signature() {
    use paymux::webhooks::{DispatcherConfig, RETRY_SCHEDULE_S, signature_header};
    let c = DispatcherConfig {
        poll_interval: Duration::from_millis(500),
        batch_max: 100,
        concurrency: 16,
        timeout: Duration::from_secs(10),
        retry_scale: 1.0,
        allow_private_targets: false,
    };
    assert_eq!(c.next_attempt_at(1, 0), Some(15_000_000));
    assert_eq!(c.next_attempt_at(2, 0), Some(60_000_000));
    assert_eq!(c.next_attempt_at(9, 0), Some(86_400_000_000));
    assert_eq!(c.next_attempt_at(10, 0), None, "ten attempts, then give up");
    assert_eq!(RETRY_SCHEDULE_S.len(), 10);
    // v1 is the HMAC over t + "." + body.
    assert_eq!(
        signature_header(b"key", 1, b"x"),
        format!(
            "t=1,v1={}",
            hex::encode(
                ring::hmac::sign(
                    &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"key"),
                    b"1.x"
                )
                .as_ref()
            )
        )
    );
    // During a key rotation's grace: one v1 per key, newest first.
    let both = paymux::webhooks::signatures_header(&[b"new", b"key"], 1, b"x");
    let one = signature_header(b"key", 1, b"x");
    assert!(both.starts_with("t=1,v1="), "{both}");
    assert!(both.ends_with(&one["t=1".len()..]), "{both}");
    assert_eq!(both.matches(",v1=").count(), 2);
}

/// By default a `notify_url` must be a public address: the platform's own network (loopback,
/// private, link-local, the cloud metadata address) cannot be reached through webhooks.
#[tokio::test]
async fn notify_urls_to_private_addresses_are_refused_by_default() {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.webhook_allow_private_targets = false;
    let app = spawn_with(db, config).await;
    let m = app.merchant("Tea House").await;
    for (n, url) in [
        "http://127.0.0.1:9/hook",
        "http://localhost:8080/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.5/hook",
        "http://[::1]/hook",
        "http://2130706433:8080/hook",
    ]
    .into_iter()
    .enumerate()
    {
        let r = m
            .create_payment(&json!({
                "merchant_order_no": format!("w-p-{n}"), "amount": 100, "currency": "CNY",
                "subject": "茶", "method": "qr_merchant", "notify_url": url,
            }))
            .await;
        assert_eq!(
            (r.status.as_u16(), r.code(), r.body["field"].as_str()),
            (422, "validation_failed", Some("notify_url")),
            "{url}: {:?}",
            r.body
        );
    }
    let ok = m
        .create_payment(&json!({
            "merchant_order_no": "w-public", "amount": 100, "currency": "CNY",
            "subject": "茶", "method": "qr_merchant", "notify_url": "https://shop.example.com/paymux",
        }))
        .await;
    assert_eq!(ok.status, 201, "{:?}", ok.body);
}

/// A failed attempt is recorded only while its claim still holds: an event sent again (`paymux
/// webhook resend`) while a slow attempt is in flight stays due now and is delivered at once, not
/// pushed back by that attempt's failure to the retry schedule's next step (15 s here).
#[tokio::test]
async fn an_event_resent_during_a_slow_failed_attempt_is_delivered_at_once() {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    config.webhook_poll_interval_ms = 25;
    config.webhook_timeout_ms = 5_000;
    config.webhook_retry_schedule_scale = 1.0;
    let app = spawn_with(db, config).await;
    let m = app.merchant("Cafe").await;
    // The receiver: the first request answers 500 after 1.5 s, the others 200 at once.
    let got = Arc::new(Mutex::new(Vec::<(String, u16)>::new()));
    let g = got.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap| {
            let g = g.clone();
            async move {
                let id = headers
                    .get("paymux-event-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let first = g.lock().unwrap().is_empty();
                g.lock().unwrap().push((id, if first { 500 } else { 200 }));
                if first {
                    tokio::time::sleep(Duration::from_millis(1_500)).await;
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });

    m.create_payment(&code_body("w-slow", "134567890123456789", &url))
        .await;
    let mut event_id = String::new();
    for _ in 0..400 {
        if let Some((id, _)) = got.lock().unwrap().first() {
            event_id = id.clone();
        }
        if !event_id.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!event_id.is_empty(), "the first attempt was made");
    resend_cli(&app, &event_id).await.unwrap();
    let resent = std::time::Instant::now();
    loop {
        let acked = got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| *s == 200)
            .count();
        if acked > 0 {
            break;
        }
        assert!(
            resent.elapsed() < Duration::from_secs(8),
            "not delivered 8 s after the resend: {:?}",
            got.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let all = got.lock().unwrap().clone();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().all(|(id, _)| *id == event_id));
}

/// The event list pages (`starting_after`), newest first, and shows a merchant only its own events.
#[tokio::test]
async fn the_event_list_pages_through_a_merchants_own_events() {
    let app = app().await;
    let m = app.merchant("Cafe").await;
    let other = app.merchant("Other Cafe").await;
    let hook = Receiver::start(200).await;
    for i in 0..3 {
        let r = m
            .create_payment(&code_body(
                &format!("w-page-{i}"),
                "134567890123456789",
                &hook.url,
            ))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let whole = m.send(Method::GET, "/v1/webhooks?limit=100", None).await;
    assert_eq!(whole.status, 200, "{:?}", whole.body);
    let ids: Vec<String> = whole.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "{:?}", whole.body);
    let mut sorted = ids.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first");
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let r = m
            .send(Method::GET, &format!("/v1/webhooks?limit=1{after}"), None)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        paged.extend(
            r.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string()),
        );
        if r.body["has_more"] != true {
            break;
        }
        after = format!("&starting_after={}", paged.last().unwrap());
    }
    assert_eq!(paged, ids);
    let theirs = other.send(Method::GET, "/v1/webhooks", None).await;
    assert_eq!(theirs.body["data"], json!([]), "{:?}", theirs.body);
    let bad = m
        .send(Method::GET, "/v1/webhooks?starting_after=nope", None)
        .await;
    assert_eq!(bad.status, 422, "{:?}", bad.body);
}

/// A receiver that hangs until the timeout holds a quarter of the delivery slots at most: another
/// merchant's event is delivered at once while the hanging one's events wait their turn.
#[tokio::test]
async fn a_hanging_receiver_does_not_delay_other_merchants_webhooks() {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    config.webhook_poll_interval_ms = 25;
    config.webhook_timeout_ms = 3_000;
    config.webhook_concurrency = 4;
    config.webhook_retry_schedule_scale = 0.002;
    let app = spawn_with(db, config).await;
    let hanging = {
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                StatusCode::OK
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        url
    };
    let slow = app.merchant("Slow Shop").await;
    for i in 0..8 {
        let r = slow
            .create_payment(&code_body(
                &format!("w-hang-{i}"),
                "134567890123456789",
                &hanging,
            ))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    // Let the dispatcher pick the hanging receiver's events up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fine = app.merchant("Fine Shop").await;
    let hook = Receiver::start(200).await;
    let sent = std::time::Instant::now();
    let r = fine
        .create_payment(&code_body("w-fine", "134567890123456789", &hook.url))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    hook.acknowledged("payment.succeeded").await;
    assert!(
        sent.elapsed() < Duration::from_millis(1_500),
        "delivered {:?} after the payment, behind the hanging receiver",
        sent.elapsed()
    );
}
