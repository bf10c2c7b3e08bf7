//! The UnionPay QR adapter against the UnionPay sandbox, over HTTP on loopback: every call and
//! outcome, signatures both ways (RSA and SM2 merchant keys), notifications, faults and the daily file.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use chrono::Utc;
use paymux_channels::http::Timeouts;
use paymux_channels::sandbox::{Faults, SandboxOptions};
use paymux_channels::unionpay::bill;
use paymux_channels::unionpay::messages::{self, decode_form, encode_form};
use paymux_channels::unionpay::sandbox::UnionPaySandbox;
use paymux_channels::unionpay::sign::{GeneratedKey, SignMethod};
use paymux_channels::unionpay::{UnionPay, UnionPayConfig, UnionPayKey};
use paymux_channels::{
    BillKind, Channel, ChannelError, CreateKind, CreateOrder, CreatedOrder, Notification,
    NotificationEvent, OrderRequest, PayOutcome, RefundOutcome, RefundRequest, RefundState,
    TradeState,
};
use paymux_model::Money;
use proptest::prelude::*;

type Raw = Arc<Mutex<Vec<Bytes>>>;
type Receiver = (Arc<UnionPay>, Arc<Mutex<Vec<Notification>>>, Raw);

struct Env {
    dir: tempfile::TempDir,
    sandbox: UnionPaySandbox,
    base: String,
    notify_url: String,
    received: Arc<Mutex<Vec<Notification>>>,
    raw: Raw,
    http: reqwest::Client,
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

impl Env {
    async fn start() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let opts = SandboxOptions {
            data_dir: dir.path().to_path_buf(),
            time_compression: 1000,
            // 0.5 s of password wait: long enough for a reversal to come first on a busy machine.
            password_wait_secs: 500,
            ..SandboxOptions::default()
        };
        let sandbox = UnionPaySandbox::start(opts).await.unwrap();
        // Nested under a prefix, as `paymux serve` mounts it.
        let root = serve(axum::Router::new().nest("/sandbox/unionpay", sandbox.router())).await;
        let base = format!("{root}/sandbox/unionpay");

        let received = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let adapter =
            Arc::new(UnionPay::new(sandbox.account().client_config(&base, None)).unwrap());
        let state = (adapter, received.clone(), raw.clone());
        async fn notified(
            State((adapter, received, raw)): State<Receiver>,
            headers: http::HeaderMap,
            body: Bytes,
        ) -> axum::response::Response {
            raw.lock().unwrap().push(body.clone());
            let ok = match adapter.verify_notification(&headers, &body) {
                Ok(n) => {
                    received.lock().unwrap().push(n);
                    true
                }
                Err(_) => false,
            };
            let reply = adapter.notification_reply(ok);
            (
                http::StatusCode::from_u16(reply.status).unwrap(),
                reply.body,
            )
                .into_response()
        }
        let notify_root = serve(
            axum::Router::new()
                .route("/notify", axum::routing::post(notified))
                .with_state(state),
        )
        .await;
        Env {
            dir,
            sandbox,
            base,
            notify_url: format!("{notify_root}/notify"),
            received,
            raw,
            http: reqwest::Client::new(),
        }
    }

    fn config(&self) -> UnionPayConfig {
        self.sandbox
            .account()
            .client_config(&self.base, Some(self.notify_url.clone()))
    }

    fn adapter(&self) -> UnionPay {
        UnionPay::new(self.config()).unwrap()
    }

    async fn wallet_pay(&self, qr_code: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/sandbox/pay", self.base))
            .json(&serde_json::json!({ "qr_code": qr_code }))
            .send()
            .await
            .unwrap()
    }

    async fn wait_for<T>(&self, mut f: impl FnMut(&[Notification]) -> Option<T>) -> T {
        for _ in 0..250 {
            if let Some(v) = f(&self.received.lock().unwrap()) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no such notification arrived");
    }

    fn payment_notifications(&self, out: &str) -> Vec<Notification> {
        payments_of(&self.received.lock().unwrap(), out)
    }
}

/// The payment notifications of one order.
fn payments_of(ns: &[Notification], out: &str) -> Vec<Notification> {
    ns.iter()
        .filter(|n| {
            matches!(&n.event, NotificationEvent::Payment { trade } if trade.out_trade_no == out)
        })
        .cloned()
        .collect()
}

fn order(no: &str, fen: i64) -> OrderRequest {
    OrderRequest {
        out_trade_no: no.into(),
        amount: Money::cny(fen),
        subject: "测试商品".into(),
        notify_url: None,
        expires_at: None,
        client_ip: Some("127.0.0.1".into()),
        store_id: None,
        terminal_id: None,
    }
}

/// An `orderId`: letters and digits only, 32 characters.
fn no(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())[..32].to_string()
}

/// A wallet code: 19 digits starting 62, ending with the payer's behaviour.
fn code(suffix: &str) -> String {
    format!("62{}{suffix}", "0".repeat(17 - suffix.len()))
}

async fn settle(up: &UnionPay, out: &str) -> TradeState {
    let mut state = TradeState::UserPaying;
    for _ in 0..1000 {
        state = up.query(out).await.unwrap().state;
        if state != TradeState::UserPaying {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    state
}

async fn create_qr(up: &UnionPay, out: &str, fen: i64) -> String {
    match up
        .create_order(&CreateOrder {
            order: order(out, fen),
            kind: CreateKind::Qr,
        })
        .await
        .unwrap()
    {
        CreatedOrder::Qr { code_url } => code_url,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn c2b_order_paid_by_the_payer_and_notified() {
    let env = Env::start().await;
    let up = env.adapter();
    let out = no("N");
    let qr = create_qr(&up, &out, 1234).await;
    assert!(qr.starts_with("https://qr.95516.com/00010001/62"), "{qr}");
    // Creating it again with the same content is idempotent; different content is a duplicate.
    assert_eq!(create_qr(&up, &out, 1234).await, qr);
    let dup = up
        .create_order(&CreateOrder {
            order: order(&out, 999),
            kind: CreateKind::Qr,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&dup, ChannelError::Rejected { code, .. } if code == "12"),
        "{dup}"
    );
    // An in-app order cannot reuse the C2B order's orderId.
    let dup = up
        .create_order(&CreateOrder {
            order: order(&out, 1234),
            kind: CreateKind::Jsapi {
                payer_id: "up1".into(),
            },
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&dup, ChannelError::Rejected { code, .. } if code == "12"),
        "{dup}"
    );

    let t = up.query(&out).await.unwrap();
    assert_eq!(
        (t.state, t.channel_state.as_str(), t.amount_minor),
        (TradeState::UserPaying, "05", Some(1234))
    );

    assert_eq!(env.wallet_pay(&qr).await.status(), 200);
    assert_eq!(
        env.wallet_pay(&qr).await.status(),
        409,
        "an order is paid once"
    );
    assert_eq!(
        env.wallet_pay("https://qr.95516.com/00010001/6299")
            .await
            .status(),
        404
    );
    let t = up.query(&out).await.unwrap();
    assert_eq!(
        (t.state, t.channel_state.as_str()),
        (TradeState::Succeeded, "00")
    );
    let query_id = t.channel_trade_no.clone().unwrap();
    assert!(t.paid_at.is_some());

    let n = env
        .wait_for(|ns| payments_of(ns, &out).into_iter().next())
        .await;
    assert_eq!(n.id.as_deref(), Some(query_id.as_str()));
    let NotificationEvent::Payment { trade } = n.event else {
        unreachable!()
    };
    assert_eq!(
        (trade.state, trade.amount_minor, trade.channel_trade_no),
        (TradeState::Succeeded, Some(1234), Some(query_id))
    );

    // A paid order is not closed (nothing is undone).
    let err = up.close(&out).await.unwrap_err();
    assert!(
        matches!(&err, ChannelError::Rejected { code, .. } if code == "ORDER_PAID"),
        "{err}"
    );
    assert_eq!(up.query(&out).await.unwrap().state, TradeState::Succeeded);
}

#[tokio::test]
async fn payer_codes_choose_the_outcome() {
    let env = Env::start().await;
    let up = env.adapter();

    // Accepted is not paid: the query gives the result.
    let out = no("C");
    assert!(matches!(
        up.pay_with_code(&order(&out, 100), &code("6789")).await,
        PayOutcome::UserPaying {
            channel_trade_no: Some(_)
        }
    ));
    assert_eq!(settle(&up, &out).await, TradeState::Succeeded);
    // The same charge again is the same order, never a second charge.
    assert!(matches!(
        up.pay_with_code(&order(&out, 100), &code("6789")).await,
        PayOutcome::UserPaying { .. }
    ));
    assert!(matches!(
        up.pay_with_code(&order(&out, 101), &code("6789")).await,
        PayOutcome::Failed { code, .. } if code == "12"
    ));

    // Password, then paid.
    let out = no("P");
    assert!(matches!(
        up.pay_with_code(&order(&out, 100), &code("1001")).await,
        PayOutcome::UserPaying { .. }
    ));
    assert_eq!(settle(&up, &out).await, TradeState::Succeeded);

    // Password never entered: fails after the wait.
    let out = no("W");
    assert!(matches!(
        up.pay_with_code(&order(&out, 100), &code("1002")).await,
        PayOutcome::UserPaying { .. }
    ));
    assert_eq!(settle(&up, &out).await, TradeState::Failed);
    up.reverse(&out).await.unwrap(); // nothing to undo

    // Declines, synchronous.
    for (suffix, expected) in [("1003", "60"), ("1004", "30")] {
        match up.pay_with_code(&order(&no("F"), 100), &code(suffix)).await {
            PayOutcome::Failed { code, .. } => assert_eq!(code, expected),
            o => panic!("{suffix}: {o:?}"),
        }
    }
    // Not a wallet code (a WeChat code), and not a C2B code at all.
    match up
        .pay_with_code(&order(&no("F"), 100), "134567890123456789")
        .await
    {
        PayOutcome::Failed { code, .. } => assert_eq!(code, "30"),
        o => panic!("{o:?}"),
    }
    match up
        .pay_with_code(&order(&no("F"), 100), "62 12345678901234567")
        .await
    {
        PayOutcome::Failed { code, .. } => assert_eq!(code, "INVALID_REQUEST"),
        o => panic!("{o:?}"),
    }
    // An order number UnionPay cannot carry is refused before sending.
    assert!(matches!(
        up.pay_with_code(&order("ORDER-0001-X", 100), &code("6789")).await,
        PayOutcome::Failed { code, .. } if code == "INVALID_REQUEST"
    ));

    // A system error after the money moved is Unknown; the query finds it paid; reversing it gives
    // the money back and the order answers as failed from then on.
    let out = no("U");
    assert!(matches!(
        up.pay_with_code(&order(&out, 100), &code("1005")).await,
        PayOutcome::Unknown { .. }
    ));
    assert_eq!(up.query(&out).await.unwrap().state, TradeState::Succeeded);
    up.reverse(&out).await.unwrap();
    up.reverse(&out).await.unwrap(); // idempotent
    let t = up.query(&out).await.unwrap();
    assert_eq!(
        (t.state, t.channel_state.as_str()),
        (TradeState::Failed, "01")
    );

    // A waiting order reversed: cancelled, and the password wait cannot pay it any more.
    let out = no("R");
    assert!(matches!(
        up.pay_with_code(&order(&out, 100), &code("1002")).await,
        PayOutcome::UserPaying { .. }
    ));
    up.reverse(&out).await.unwrap();
    assert_eq!(up.query(&out).await.unwrap().state, TradeState::Failed);
}

#[tokio::test]
async fn refunds_partial_full_and_over() {
    let env = Env::start().await;
    let up = env.adapter();
    let out = no("F");
    up.pay_with_code(&order(&out, 1000), &code("6789")).await;
    assert_eq!(settle(&up, &out).await, TradeState::Succeeded);
    let req = |r: &str, fen: i64| RefundRequest {
        out_trade_no: out.clone(),
        out_refund_no: r.into(),
        refund_amount: Money::cny(fen),
        total_amount: Money::cny(1000),
        reason: Some("退货".into()),
        notify_url: Some(env.notify_url.clone()),
    };
    let r1 = no("RF");
    match up.refund(&req(&r1, 300)).await {
        RefundOutcome::Processing { refund } => {
            assert_eq!(refund.amount_minor, Some(300));
            assert_eq!(refund.out_trade_no.as_deref(), Some(out.as_str()));
            assert!(refund.channel_refund_no.is_some());
        }
        o => panic!("{o:?}"),
    }
    // The same request again is the same refund; the same number with another amount is refused.
    assert!(matches!(
        up.refund(&req(&r1, 300)).await,
        RefundOutcome::Processing { .. }
    ));
    assert!(matches!(
        up.refund(&req(&r1, 301)).await,
        RefundOutcome::Failed { code, .. } if code == "12"
    ));
    // More than what is left is refused.
    match up.refund(&req(&no("RF"), 701)).await {
        RefundOutcome::Failed { code, .. } => assert_eq!(code, "33"),
        o => panic!("{o:?}"),
    }
    assert!(matches!(
        up.refund(&req(&no("RF"), 700)).await,
        RefundOutcome::Processing { .. }
    ));
    // Completes and notifies.
    let n = env
        .wait_for(|ns| {
            ns.iter().find_map(|n| match &n.event {
                NotificationEvent::Refund { refund } if refund.out_refund_no == r1 => {
                    Some(refund.clone())
                }
                _ => None,
            })
        })
        .await;
    assert_eq!(
        (n.state, n.amount_minor),
        (RefundState::Succeeded, Some(300))
    );
    let info = up.query_refund(&out, &r1).await.unwrap();
    assert_eq!(
        (info.state, info.amount_minor, info.out_trade_no.as_deref()),
        (RefundState::Succeeded, Some(300), Some(out.as_str()))
    );
    // An unpaid order cannot be refunded.
    let unpaid = no("X");
    create_qr(&up, &unpaid, 50).await;
    let r = RefundRequest {
        out_trade_no: unpaid,
        ..req(&no("RF"), 10)
    };
    assert!(matches!(
        up.refund(&r).await,
        RefundOutcome::Failed { code, .. } if code == "ORDER_NOT_PAID"
    ));
    // Unknown orders: without a txnTime the adapter cannot ask; with one the gateway answers 34.
    assert!(matches!(
        up.query("NOSUCHORDER123").await,
        Err(ChannelError::Protocol(m)) if m.contains("txnTime")
    ));
    up.remember_txn_time(
        "NOSUCHORDER123",
        messages::parse_txn_time("20240301120000").unwrap(),
    );
    assert!(matches!(
        up.query("NOSUCHORDER123").await,
        Err(ChannelError::Rejected { code, .. }) if code == "34"
    ));
    // A fresh adapter (a restart) is told the txnTime and queries.
    let fresh = env.adapter();
    let txn_time = up.txn_time_of(&out).unwrap();
    fresh.remember_txn_time(&out, txn_time);
    assert_eq!(
        fresh.query(&out).await.unwrap().state,
        TradeState::Succeeded
    );
    assert_eq!(
        fresh
            .query_at(&out, txn_time)
            .await
            .unwrap()
            .orig_resp_code
            .as_deref(),
        Some("00")
    );
}

#[tokio::test]
async fn close_an_unpaid_order() {
    let env = Env::start().await;
    let up = env.adapter();
    let out = no("X");
    let qr = create_qr(&up, &out, 10).await;
    up.close(&out).await.unwrap();
    let t = up.query(&out).await.unwrap();
    assert_eq!(
        (t.state, t.channel_state.as_str()),
        (TradeState::Failed, "01")
    );
    up.close(&out).await.unwrap(); // already closed: nothing to do
    assert_eq!(
        env.wallet_pay(&qr).await.status(),
        409,
        "a closed order cannot be paid"
    );
}

#[tokio::test]
async fn signatures_are_enforced_both_ways() {
    let env = Env::start().await;
    let out = no("S");
    create_qr(&env.adapter(), &out, 10).await;

    // A merchant signing with the wrong key under its certId: 11.
    let mut cfg = env.config();
    cfg.merchant_private_key = GeneratedKey::generate(SignMethod::Rsa)
        .unwrap()
        .private_key_pem;
    let err = UnionPay::new(cfg)
        .unwrap()
        .create_order(&CreateOrder {
            order: order(&no("S"), 10),
            kind: CreateKind::Qr,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ChannelError::Rejected { code, .. } if code == "11"),
        "{err}"
    );
    // An unknown certId: 11 too.
    let mut cfg = env.config();
    cfg.merchant_cert_id = Some("123456789".into());
    let bad = UnionPay::new(cfg).unwrap();
    match bad.pay_with_code(&order(&no("S"), 10), &code("6789")).await {
        PayOutcome::Failed { code, message } => {
            assert_eq!(code, "11");
            assert!(message.contains("certId"), "{message}");
        }
        o => panic!("{o:?}"),
    }
    // A tampered request (amount changed after signing): 11.
    let signer = paymux_channels::unionpay::sign::SignKey::rsa_from_pem(
        &env.sandbox.account().merchant_private_key,
        Some(&env.sandbox.account().merchant_cert_id),
    )
    .unwrap();
    let mut fields = messages::C2bCreateRequest {
        mer_id: env.sandbox.account().mer_id.clone(),
        order_id: no("T"),
        txn_time: messages::parse_txn_time("20240301120000").unwrap(),
        txn_amt: 100,
        back_url: env.notify_url.clone(),
    }
    .to_fields()
    .unwrap();
    signer.sign(&mut fields).unwrap();
    fields.insert("txnAmt".into(), "1".into());
    let resp = env
        .http
        .post(format!("{}/gateway/api/backTransReq.do", env.base))
        .body(encode_form(&fields))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer = decode_form(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(answer.get("respCode").map(String::as_str), Some("11"));
    // Unsigned and undecodable requests are refused too (10 / 11), with signed answers.
    for (body, expected) in [(&b"merId=1"[..], "11"), (&b"a=1&a=2"[..], "10")] {
        let resp = env
            .http
            .post(format!("{}/gateway/api/queryTrans.do", env.base))
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let answer = decode_form(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(answer.get("respCode").map(String::as_str), Some(expected));
        assert!(answer.contains_key("signature"));
    }

    // A client that trusts another UnionPay key rejects the sandbox's (genuine) answers as forged.
    let mut cfg = env.config();
    let other = GeneratedKey::generate(SignMethod::Rsa).unwrap();
    cfg.unionpay_keys = vec![UnionPayKey {
        cert_id: Some(env.sandbox.account().unionpay_cert_id.clone()),
        pem: other.public_key_pem,
    }];
    let forged = UnionPay::new(cfg).unwrap();
    let outcome = forged
        .pay_with_code(&order(&no("S"), 100), &code("6789"))
        .await;
    assert!(
        matches!(&outcome, PayOutcome::Unknown { reason } if reason.contains("signature")),
        "{outcome:?}"
    );
    // The SM2 merchant key (signMethod 02) works end to end.
    let sm2 = UnionPay::new(
        env.sandbox
            .account()
            .client_config_sm2(&env.base, Some(env.notify_url.clone())),
    )
    .unwrap();
    assert_eq!(sm2.cert_id(), env.sandbox.account().merchant_sm2_cert_id);
    let out = no("M");
    create_qr(&sm2, &out, 88).await;
    assert_eq!(sm2.query(&out).await.unwrap().amount_minor, Some(88));
    // Debug output never shows keys.
    let shown = format!("{:?} {:?}", env.config(), env.sandbox.account());
    assert!(
        !shown.contains("PRIVATE KEY") && !shown.contains("PUBLIC KEY"),
        "{shown}"
    );
}

#[tokio::test]
async fn notifications_verified_tampered_and_duplicated() {
    let env = Env::start().await;
    let up = env.adapter();
    let out = no("D");
    let qr = create_qr(&up, &out, 77).await;
    env.wallet_pay(&qr).await;
    env.wait_for(|ns| (!ns.is_empty()).then_some(())).await;
    let body = env.raw.lock().unwrap()[0].clone();
    let headers = http::HeaderMap::new();
    let verified = up.verify_notification(&headers, &body).unwrap();
    match &verified.event {
        NotificationEvent::Payment { trade } => {
            assert_eq!(trade.out_trade_no, out, "{verified:?}");
            assert_eq!(trade.amount_minor, Some(77), "{verified:?}");
            assert_eq!(trade.state, TradeState::Succeeded, "{verified:?}");
        }
        other => panic!("not a payment: {other:?}"),
    }
    // Tampered amount: the signature fails.
    let mut fields = decode_form(&body).unwrap();
    fields.insert("txnAmt".into(), "7700".into());
    assert!(matches!(
        up.verify_notification(&headers, encode_form(&fields).as_bytes()),
        Err(ChannelError::Signature(_))
    ));
    // Signed by someone else under UnionPay's certId: fails.
    let other = GeneratedKey::generate(SignMethod::Rsa).unwrap();
    let forger = paymux_channels::unionpay::sign::SignKey::rsa_from_pem(
        &other.private_key_pem,
        Some(&env.sandbox.account().unionpay_cert_id),
    )
    .unwrap();
    let mut forged = decode_form(&body).unwrap();
    forger.sign(&mut forged).unwrap();
    assert!(matches!(
        up.verify_notification(&headers, encode_form(&forged).as_bytes()),
        Err(ChannelError::Signature(_))
    ));
    // Garbage is a precise error, never a panic.
    assert!(matches!(
        up.verify_notification(&headers, b"\xff\xfe"),
        Err(ChannelError::Protocol(_))
    ));
    // A notification of another merchant, correctly signed, is refused.
    let signer = paymux_channels::unionpay::sign::SignKey::rsa_from_pem(
        &env.sandbox.account().unionpay_private_key,
        Some(&env.sandbox.account().unionpay_cert_id),
    )
    .unwrap();
    let mut foreign = decode_form(&body).unwrap();
    foreign.insert("merId".into(), "777000000000001".into());
    signer.sign(&mut foreign).unwrap();
    assert!(matches!(
        up.verify_notification(&headers, encode_form(&foreign).as_bytes()),
        Err(ChannelError::Protocol(m)) if m.contains("merId")
    ));
    // Duplicates on demand: the same notification (same id) each time, harmless to a receiver that
    // de-duplicates by id.
    let resp = env
        .http
        .post(format!("{}/sandbox/notifications/{out}?times=3", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    env.wait_for(|ns| (payments_of(ns, &out).len() >= 4).then_some(()))
        .await;
    let ns = env.payment_notifications(&out);
    assert!(ns.iter().all(|n| n == &ns[0]), "{ns:?}");
    let ids: std::collections::HashSet<_> = ns.iter().map(|n| n.id.clone()).collect();
    assert_eq!(ids.len(), 1);
    let resp = env
        .http
        .post(format!(
            "{}/sandbox/notifications/NOSUCHORDER1?times=1",
            env.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn notifications_are_retried_until_acknowledged() {
    let env = Env::start().await;
    env.sandbox.faults().set(Faults {
        drop_notify_pct: 100.0,
        ..Faults::default()
    });
    let up = env.adapter();
    let out = no("Y");
    let qr = create_qr(&up, &out, 5).await;
    env.wallet_pay(&qr).await;
    tokio::time::sleep(Duration::from_millis(30)).await; // the first attempt, dropped
    assert!(env.received.lock().unwrap().is_empty());
    assert!(
        env.sandbox
            .notifier()
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    env.sandbox.faults().set(Faults::default());
    // The retry (1 minute, compressed) delivers it.
    env.wait_for(|ns| payments_of(ns, &out).into_iter().next())
        .await;
}

#[tokio::test]
async fn faults_make_outcomes_unknown() {
    let env = Env::start().await;
    let up = env.adapter().with_timeouts(Timeouts {
        connect: Duration::from_secs(1),
        call: Duration::from_millis(300),
        bill: Duration::from_secs(5),
    });
    env.sandbox.faults().set(Faults {
        error_5xx_pct: 100.0,
        ..Faults::default()
    });
    assert!(matches!(
        up.pay_with_code(&order(&no("E"), 100), &code("6789")).await,
        PayOutcome::Unknown { .. }
    ));
    assert!(matches!(
        up.create_order(&CreateOrder {
            order: order(&no("E"), 100),
            kind: CreateKind::Qr
        })
        .await,
        Err(ChannelError::Unknown(_))
    ));
    // Processed, but the answer never comes: unknown, and the query shows it paid.
    env.sandbox.faults().set(Faults {
        timeout_pct: 100.0,
        hang_ms: 2_000,
        ..Faults::default()
    });
    let out = no("T");
    assert!(matches!(
        up.pay_with_code(&order(&out, 100), &code("6789")).await,
        PayOutcome::Unknown { .. }
    ));
    env.sandbox.faults().set(Faults::default());
    assert_eq!(up.query(&out).await.unwrap().state, TradeState::Succeeded);
    // Nothing listening: unreachable, safe to fail over; a charge is a failure then.
    let mut cfg = env.config();
    cfg.base_url = "http://127.0.0.1:9".into();
    let down = UnionPay::new(cfg).unwrap();
    let err = down
        .create_order(&CreateOrder {
            order: order(&no("Z"), 1),
            kind: CreateKind::Qr,
        })
        .await
        .unwrap_err();
    assert!(err.is_safe_to_fail_over(), "{err}");
    assert!(matches!(
        down.pay_with_code(&order(&no("Z"), 1), &code("6789")).await,
        PayOutcome::Failed { code, .. } if code == "CHANNEL_UNREACHABLE"
    ));
}

#[tokio::test]
async fn daily_file_parses_and_matches_the_books() {
    let env = Env::start().await;
    let up = env.adapter();
    let paid = no("B");
    up.pay_with_code(&order(&paid, 10_000), &code("6789")).await;
    assert_eq!(settle(&up, &paid).await, TradeState::Succeeded);
    let refund_no = no("BR");
    let r = RefundRequest {
        out_trade_no: paid.clone(),
        out_refund_no: refund_no.clone(),
        refund_amount: Money::cny(2_500),
        total_amount: Money::cny(10_000),
        reason: None,
        notify_url: None,
    };
    assert!(matches!(
        up.refund(&r).await,
        RefundOutcome::Processing { .. }
    ));
    for _ in 0..100 {
        if up.query_refund(&paid, &refund_no).await.unwrap().state == RefundState::Succeeded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A paid order reversed the same day: its money back is a refund line too.
    let reversed = no("V");
    up.pay_with_code(&order(&reversed, 333), &code("6789"))
        .await;
    assert_eq!(settle(&up, &reversed).await, TradeState::Succeeded);
    up.reverse(&reversed).await.unwrap();

    let today = Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive();
    let books = env.sandbox.bill_records(today).await.unwrap();
    assert_eq!(books.len(), 4, "{books:?}");
    let text = env.sandbox.bill_for(today).await.unwrap().unwrap();
    let (header, recs) = bill::read_bill_bytes(text.as_bytes()).unwrap();
    let recs: Vec<_> = recs.collect::<Result<_, _>>().unwrap();
    assert_eq!(recs, books);
    assert_eq!(header.net_amount, 10_000 - 2_500);
    let pay = recs
        .iter()
        .find(|r| r.out_trade_no == paid && r.kind == BillKind::Payment)
        .unwrap();
    assert_eq!((pay.amount_minor, pay.fee_minor), (10_000, 60));
    let refund = recs
        .iter()
        .find(|r| r.out_refund_no.as_deref() == Some(refund_no.as_str()))
        .unwrap();
    assert_eq!(
        (
            refund.out_trade_no.as_str(),
            refund.amount_minor,
            refund.fee_minor
        ),
        (paid.as_str(), 2_500, 15)
    );
    let undo = recs
        .iter()
        .find(|r| r.kind == BillKind::Refund && r.out_trade_no == reversed)
        .unwrap();
    assert_eq!((undo.amount_minor, undo.fee_minor), (333, 2));

    // Today's file is not available yet.
    assert!(matches!(
        up.download_bill(today).await,
        Err(ChannelError::Rejected { code, .. }) if code == "98"
    ));
    // Move the books back a day: through the API, yesterday's file downloads, verifies and matches.
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        env.dir.path().join("unionpay/books.sqlite").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE txns SET success_time = success_time - 86400")
        .execute(&pool)
        .await
        .unwrap();
    let yesterday = today.pred_opt().unwrap();
    let downloaded: Vec<_> = up
        .download_bill(yesterday)
        .await
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        downloaded,
        env.sandbox.bill_records(yesterday).await.unwrap()
    );
    assert_eq!(downloaded, books);
    // A day with nothing: an empty, complete file.
    let empty: Vec<_> = up
        .download_bill(yesterday.pred_opt().unwrap())
        .await
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(empty.is_empty());
    // More than a year back, MMdd names another day: refused as a mismatch, never misread.
    let long_ago = today - chrono::Duration::days(400);
    assert!(matches!(
        up.download_bill(long_ago).await,
        Err(ChannelError::Protocol(_)) | Err(ChannelError::Rejected { .. })
    ));
}

fn offline_adapter() -> UnionPay {
    static ACCOUNT: std::sync::OnceLock<UnionPayConfig> = std::sync::OnceLock::new();
    let cfg = ACCOUNT.get_or_init(|| {
        let merchant = GeneratedKey::generate(SignMethod::Rsa).unwrap();
        let unionpay = GeneratedKey::generate(SignMethod::Sm2).unwrap();
        UnionPayConfig {
            base_url: "http://127.0.0.1:9".into(),
            mer_id: "777290058110048".into(),
            sign_method: "01".into(),
            merchant_private_key: merchant.private_key_pem,
            merchant_certificate: None,
            merchant_cert_id: None,
            unionpay_keys: vec![UnionPayKey {
                cert_id: None,
                pem: unionpay.public_key_pem,
            }],
            notify_url: None,
            user_auth_base_url: None,
            wallet_stand_in_url: None,
        }
    });
    UnionPay::new(cfg.clone()).unwrap()
}

#[test]
fn configuration_errors_are_precise() {
    let mut cfg = offline_adapter().config().clone();
    cfg.mer_id = "123".into();
    assert!(matches!(UnionPay::new(cfg), Err(ChannelError::Config(m)) if m.contains("mer_id")));
    let mut cfg = offline_adapter().config().clone();
    cfg.sign_method = "03".into();
    assert!(matches!(UnionPay::new(cfg), Err(ChannelError::Config(_))));
    let mut cfg = offline_adapter().config().clone();
    cfg.unionpay_keys.clear();
    assert!(matches!(UnionPay::new(cfg), Err(ChannelError::Config(_))));
    let mut cfg = offline_adapter().config().clone();
    cfg.unionpay_keys[0].pem = "garbage".into();
    assert!(matches!(UnionPay::new(cfg), Err(ChannelError::Config(_))));
}

proptest! {
    #[test]
    fn notification_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let up = offline_adapter();
        let err = up.verify_notification(&http::HeaderMap::new(), &bytes).unwrap_err();
        prop_assert!(matches!(err, ChannelError::Protocol(_) | ChannelError::Signature(_)));
    }

    #[test]
    fn new_messages_from_garbage_fields_never_panic(
        pairs in prop::collection::btree_map(
            prop::sample::select(vec!["version", "encoding", "txnType", "txnSubType", "bizType", "merId",
                "orderId", "txnTime", "txnAmt", "origQryId", "backUrl", "channelType", "currencyCode",
                "settleDate", "fileType", "respCode", "fileContent"]).prop_map(str::to_string),
            ".{0,24}",
            0..17,
        )
    ) {
        let _ = messages::CancelRequest::from_fields(&pairs);
        let _ = messages::CancelResponse::from_fields(&pairs).map(|r| r.result());
        let _ = messages::FileTransRequest::from_fields(&pairs);
        let _ = messages::FileTransResponse::from_fields(&pairs).map(|r| r.file());
    }
}

const UNIONPAY_UA: &str = "Mozilla/5.0 (Linux; Android 11; M2011K2C Build/RKQ1.200928.002; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/83.0.4103.106 Mobile Safari/537.36 (com.unionpay.mobilepay) (cordova 7.0.0) (updebug 0) (version 930) (UnionPay/1.0 CloudPay) (clientVersion 190) (language zh_CN)";

/// The wallet's `userAuth` step: the adapter's URL, followed without a browser, to the
/// `redirectUrl` it names; returns that callback's query.
async fn user_auth(
    env: &Env,
    up: &UnionPay,
    state: &str,
) -> std::collections::HashMap<String, String> {
    let url = up
        .payer_auth_url("https://shop.example/p/tok/auth?x=1", state)
        .expect("an in-app capable account");
    assert!(
        url.starts_with(&format!(
            "{}/qrcGtwWeb-web/api/userAuth?version=1.0.0&redirectUrl=",
            env.base
        )),
        "{url}"
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let back = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        back.starts_with("https://shop.example/p/tok/auth?"),
        "{back}"
    );
    reqwest::Url::parse(&back)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

#[tokio::test]
async fn in_app_payment_user_auth_order_wallet_notification_query_and_bill() {
    let env = Env::start().await;
    let up = env.adapter();
    let q = user_auth(&env, &up, "st_1").await;
    assert_eq!(
        (q["x"].as_str(), q["state"].as_str(), q["respCode"].as_str()),
        ("1", "st_1", "00")
    );
    let code = q["userAuthCode"].clone();
    // Without a UnionPay app in the User-Agent nothing is sent (the code stays unused).
    let err = up
        .payer_id(&paymux_channels::PayerAuth {
            code: &code,
            user_agent: Some("Mozilla/5.0 Safari"),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ChannelError::Rejected { code, .. } if code == "NO_APP_UP_IDENTIFIER"),
        "{err}"
    );
    let auth = paymux_channels::PayerAuth {
        code: &code,
        user_agent: Some(UNIONPAY_UA),
    };
    let user = up.payer_id(&auth).await.unwrap();
    assert!(user.starts_with("up"), "{user}");
    // A code works once; a made-up one not at all.
    for c in [code.as_str(), "madeUp123"] {
        let err = up
            .payer_id(&paymux_channels::PayerAuth {
                code: c,
                user_agent: Some(UNIONPAY_UA),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ChannelError::Rejected { code, .. } if code == "30"),
            "{c}: {err}"
        );
    }

    let out = no("J");
    let create = CreateOrder {
        order: order(&out, 1_288),
        kind: CreateKind::Jsapi {
            payer_id: user.clone(),
        },
    };
    let tn = match up.create_order(&create).await.unwrap() {
        CreatedOrder::Jsapi { params } => params["tn"].as_str().unwrap().to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(tn.len(), 21, "{tn}");
    // The same order sent again (another open of the page) is the same tn.
    match up.create_order(&create).await.unwrap() {
        CreatedOrder::Jsapi { params } => assert_eq!(params["tn"], tn.as_str()),
        other => panic!("{other:?}"),
    }
    assert_eq!(up.query(&out).await.unwrap().state, TradeState::UserPaying);
    // The wallet stand-in shows the order, then pays it and returns.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let stand_in = up.wallet_stand_in_url().expect("sandbox stand-in");
    let form = |action: &str| {
        vec![
            ("tn", tn.clone()),
            ("return_url", "https://shop.example/p/tok/r".to_string()),
            ("action", action.to_string()),
        ]
    };
    let sheet = http.post(&stand_in).form(&form("")).send().await.unwrap();
    assert_eq!(sheet.status(), 200);
    let text = sheet.text().await.unwrap();
    assert!(
        text.contains("¥12.88") && text.contains("id=\"pay\""),
        "{text}"
    );
    let unknown = http
        .post(&stand_in)
        .form(&[
            ("tn", "000"),
            ("return_url", "https://shop.example/"),
            ("action", "pay"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let paid = http
        .post(&stand_in)
        .form(&form("pay"))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 302);
    assert_eq!(paid.headers()["location"], "https://shop.example/p/tok/r");
    let again = http
        .post(&stand_in)
        .form(&form("pay"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "paid once only");

    let trade = env
        .wait_for(|ns| payments_of(ns, &out).into_iter().next())
        .await;
    match trade.event {
        NotificationEvent::Payment { trade } => {
            assert_eq!(trade.state, TradeState::Succeeded);
            assert_eq!(trade.amount_minor, Some(1_288));
        }
        other => panic!("{other:?}"),
    }
    let q = up.query(&out).await.unwrap();
    assert_eq!(
        (q.state, q.amount_minor),
        (TradeState::Succeeded, Some(1_288))
    );
    // Paid: the order cannot be created again.
    let err = up.create_order(&create).await.unwrap_err();
    assert!(
        matches!(&err, ChannelError::Rejected { code, .. } if code == "12"),
        "{err}"
    );
    let today = Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive();
    let books = env.sandbox.bill_records(today).await.unwrap();
    assert!(
        books.iter().any(|b| b.out_trade_no == out
            && b.amount_minor == 1_288
            && b.kind == BillKind::Payment),
        "{books:?}"
    );
}

#[tokio::test]
async fn user_id_exchange_refuses_missing_and_malformed_app_identifiers() {
    let env = Env::start().await;
    let up = env.adapter();
    let signer = paymux_channels::unionpay::sign::SignKey::rsa_from_pem(
        &env.sandbox.account().merchant_private_key,
        Some(&env.sandbox.account().merchant_cert_id),
    )
    .unwrap();
    let code = user_auth(&env, &up, "s").await["userAuthCode"].clone();
    let request = messages::UserAuthRequest {
        mer_id: env.sandbox.account().mer_id.clone(),
        order_id: no("UA"),
        txn_time: messages::parse_txn_time("20240301120000").unwrap(),
        user_auth_code: code.clone(),
        app_up_identifier: "UnionPay/1.0 CloudPay".into(),
    }
    .to_fields()
    .unwrap();
    let send = |fields: paymux_channels::unionpay::Fields| {
        let http = env.http.clone();
        let url = format!("{}/gateway/api/backTransReq.do", env.base);
        async move {
            let resp = http
                .post(url)
                .body(encode_form(&fields))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            decode_form(&resp.bytes().await.unwrap()).unwrap()
        }
    };
    for (change, expected) in [
        (None, "13"),
        (Some("CloudPay"), "10"),
        (Some("UnionPay/x y"), "10"),
    ] {
        let mut f = request.clone();
        match change {
            None => {
                f.remove("appUpIdentifier");
            }
            Some(v) => {
                f.insert("appUpIdentifier".into(), v.into());
            }
        }
        signer.sign(&mut f).unwrap();
        let answer = send(f).await;
        assert_eq!(
            answer.get("respCode").map(String::as_str),
            Some(expected),
            "{change:?}: {answer:?}"
        );
    }
    // The code was not used up by the refused requests.
    let mut f = request.clone();
    signer.sign(&mut f).unwrap();
    let answer = send(f).await;
    assert_eq!(
        answer.get("respCode").map(String::as_str),
        Some("00"),
        "{answer:?}"
    );
    assert!(answer.get("appUserId").is_some_and(|u| u.starts_with("up")));
}

#[test]
fn app_up_identifier_from_user_agents() {
    assert_eq!(
        messages::app_up_identifier(UNIONPAY_UA),
        Some("UnionPay/1.0 CloudPay")
    );
    assert_eq!(
        messages::app_up_identifier("x UnionPay/2.10.3 ICBC)"),
        Some("UnionPay/2.10.3 ICBC")
    );
    for ua in [
        "",
        "Mozilla/5.0",
        "UnionPay/",
        "UnionPay/1.0",
        "UnionPay/1.0 ",
        "UnionPay/a.b App",
        "UnionPay/ App",
    ] {
        assert_eq!(messages::app_up_identifier(ua), None, "{ua:?}");
    }
}

proptest! {
    #[test]
    fn in_app_answers_of_garbage_are_errors_not_panics(
        pairs in proptest::collection::vec(("[a-zA-Z]{1,12}", "[ -~]{0,40}"), 0..12),
        resp in "[0-9A-Z]{0,3}",
    ) {
        let mut f: paymux_channels::unionpay::Fields = pairs.into_iter().collect();
        f.insert("respCode".into(), resp);
        let _ = messages::UserAuthResponse::from_fields(&f).map(|r| r.user_id());
        let _ = messages::JsOrderResponse::from_fields(&f).map(|r| r.created());
        let _ = messages::app_up_identifier(f.get("respCode").map(String::as_str).unwrap_or(""));
    }
}

/// What a fake gateway answers to a request's fields: HTTP status and body.
type Answerer = fn(&paymux_channels::unionpay::Fields) -> (u16, String);

/// An adapter against a gateway that answers `answer(request fields)` to every request.
async fn against(env: &Env, answer: Answerer) -> UnionPay {
    async fn handle(State(f): State<Answerer>, body: Bytes) -> axum::response::Response {
        let req = decode_form(&body).unwrap_or_default();
        let (status, text) = f(&req);
        (http::StatusCode::from_u16(status).unwrap(), text).into_response()
    }
    let root = serve(
        axum::Router::new()
            .route("/gateway/api/backTransReq.do", axum::routing::post(handle))
            .with_state(answer),
    )
    .await;
    let mut cfg = env.config();
    cfg.base_url = root;
    UnionPay::new(cfg).unwrap()
}

#[tokio::test]
async fn in_app_garbage_answers_are_errors() {
    let env = Env::start().await;
    let auth = paymux_channels::PayerAuth {
        code: "abc123",
        user_agent: Some(UNIONPAY_UA),
    };
    let js = CreateOrder {
        order: order(&no("G"), 100),
        kind: CreateKind::Jsapi {
            payer_id: "up1".into(),
        },
    };
    // Not a form, a 5xx, an unsigned answer.
    let up = against(&env, |_| (200, "%%%=&&=".into())).await;
    assert!(matches!(
        up.payer_id(&auth).await,
        Err(ChannelError::Protocol(_))
    ));
    assert!(matches!(
        up.create_order(&js).await,
        Err(ChannelError::Protocol(_))
    ));
    let up = against(&env, |_| (502, "bad gateway".into())).await;
    assert!(matches!(
        up.payer_id(&auth).await,
        Err(ChannelError::Unknown(_))
    ));
    assert!(matches!(
        up.create_order(&js).await,
        Err(ChannelError::Unknown(_))
    ));
    let up = against(&env, |req| (200, encode_form(req))).await;
    assert!(matches!(
        up.payer_id(&auth).await,
        Err(ChannelError::Signature(_))
    ));
    assert!(matches!(
        up.create_order(&js).await,
        Err(ChannelError::Signature(_))
    ));

    // Signed, but respCode 00 without the payer's id / the tn, or for another order.
    static ENV_KEYS: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    let _ = ENV_KEYS.set((
        env.sandbox.account().unionpay_private_key.clone(),
        env.sandbox.account().unionpay_cert_id.clone(),
    ));
    fn sign(mut f: paymux_channels::unionpay::Fields) -> String {
        let (key, id) = ENV_KEYS.get().unwrap();
        paymux_channels::unionpay::sign::SignKey::rsa_from_pem(key, Some(id))
            .unwrap()
            .sign(&mut f)
            .unwrap();
        encode_form(&f)
    }
    let up = against(&env, |req| {
        let mut f = req.clone();
        f.retain(|k, _| {
            !k.starts_with("sign") && k != "certId" && k != "userAuthCode" && k != "appUserId"
        });
        f.insert("respCode".into(), "00".into());
        (200, sign(f))
    })
    .await;
    assert!(
        matches!(up.payer_id(&auth).await, Err(ChannelError::Protocol(m)) if m.contains("appUserId"))
    );
    assert!(
        matches!(up.create_order(&js).await, Err(ChannelError::Protocol(m)) if m.contains("tn"))
    );
    let up = against(&env, |req| {
        let mut f = req.clone();
        f.retain(|k, _| !k.starts_with("sign") && k != "certId");
        f.insert("respCode".into(), "00".into());
        f.insert("orderId".into(), "OTHER0000000".into());
        f.insert("tn".into(), "123".into());
        f.insert("appUserId".into(), "up1".into());
        (200, sign(f))
    })
    .await;
    assert!(
        matches!(up.payer_id(&auth).await, Err(ChannelError::Protocol(m)) if m.contains("OTHER"))
    );
    assert!(
        matches!(up.create_order(&js).await, Err(ChannelError::Protocol(m)) if m.contains("OTHER"))
    );
    // A refusal is a rejection with the gateway's code.
    let up = against(&env, |req| {
        let mut f = req.clone();
        f.retain(|k, _| !k.starts_with("sign") && k != "certId");
        f.insert("respCode".into(), "30".into());
        f.insert("respMsg".into(), "no".into());
        (200, sign(f))
    })
    .await;
    assert!(
        matches!(up.payer_id(&auth).await, Err(ChannelError::Rejected { code, .. }) if code == "30")
    );
}
