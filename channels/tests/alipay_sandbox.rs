//! The Alipay adapter against the Alipay sandbox, over HTTP on loopback: every call and outcome,
//! signatures both ways, notifications, faults and the bill.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use chrono::Utc;
use paymux_channels::alipay::sandbox::AlipaySandbox;
use paymux_channels::alipay::{Alipay, AlipayConfig, sign};
use paymux_channels::crypto::{self, RsaSigner};
use paymux_channels::http::Timeouts;
use paymux_channels::sandbox::{Faults, SandboxOptions};
use paymux_channels::{
    BillKind, Channel, ChannelError, CreateKind, CreateOrder, CreatedOrder, Notification,
    NotificationEvent, OrderRequest, PayOutcome, RefundOutcome, RefundRequest, RefundState,
    TradeState,
};
use paymux_model::Money;
use proptest::prelude::*;

type Raw = Arc<Mutex<Vec<Bytes>>>;
type Receiver = (Arc<Alipay>, Arc<Mutex<Vec<Notification>>>, Raw);

struct Env {
    dir: tempfile::TempDir,
    sandbox: AlipaySandbox,
    /// `…/sandbox/alipay` (the sandbox's tools live under it).
    base: String,
    /// `…/sandbox/alipay/gateway.do`.
    gateway: String,
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
            // 0.5 s of password wait: the "still waiting" checks come first on a busy machine.
            password_wait_secs: 500,
            ..SandboxOptions::default()
        };
        let sandbox = AlipaySandbox::start(opts).await.unwrap();
        // Nested under a prefix, as `paymux serve` mounts it.
        let root = serve(axum::Router::new().nest("/sandbox/alipay", sandbox.router())).await;
        let base = format!("{root}/sandbox/alipay");
        let gateway = format!("{base}/gateway.do");

        let received = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let adapter =
            Arc::new(Alipay::new(sandbox.account().client_config(&gateway, None)).unwrap());
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
            gateway,
            notify_url: format!("{notify_root}/notify"),
            received,
            raw,
            http: reqwest::Client::new(),
        }
    }

    fn config(&self) -> AlipayConfig {
        self.sandbox
            .account()
            .client_config(&self.gateway, Some(self.notify_url.clone()))
    }

    fn adapter(&self) -> Alipay {
        Alipay::new(self.config()).unwrap()
    }

    async fn wallet_pay(&self, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}/sandbox/pay", self.base))
            .json(&body)
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

    async fn precreate(&self, ali: &Alipay, out: &str, fen: i64) -> String {
        match ali
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
}

fn order(no: &str, fen: i64) -> OrderRequest {
    OrderRequest {
        out_trade_no: no.into(),
        amount: Money::cny(fen),
        subject: "测试商品".into(),
        notify_url: None,
        expires_at: None,
        client_ip: Some("127.0.0.1".into()),
        store_id: Some("S01".into()),
        terminal_id: Some("T01".into()),
    }
}

fn no(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())[..32].to_string()
}

fn rejected(e: &ChannelError) -> &str {
    match e {
        ChannelError::Rejected { code, .. } => code,
        other => panic!("expected a rejection, got {other}"),
    }
}

/// A code Alipay would accept, its last four digits `tail`.
fn code(tail: &str) -> String {
    format!("28123456789012{tail}")
}

#[tokio::test]
async fn precreate_paid_by_scan_and_notified() {
    let env = Env::start().await;
    let ali = env.adapter();
    let out = no("Q");
    let qr = env.precreate(&ali, &out, 1234).await;
    assert!(qr.starts_with("https://qr.alipay.com/bax0"), "{qr}");
    // The same order again is idempotent; a different amount is an inconsistent context.
    assert_eq!(env.precreate(&ali, &out, 1234).await, qr);
    let dup = ali
        .create_order(&CreateOrder {
            order: order(&out, 999),
            kind: CreateKind::Qr,
        })
        .await
        .unwrap_err();
    assert_eq!(rejected(&dup), "ACQ.CONTEXT_INCONSISTENT");
    // Until scanned, Alipay does not know the trade.
    assert_eq!(
        rejected(&ali.query(&out).await.unwrap_err()),
        "ACQ.TRADE_NOT_EXIST"
    );

    assert_eq!(
        env.wallet_pay(serde_json::json!({"qr_code": qr}))
            .await
            .status(),
        200
    );
    assert_eq!(
        env.wallet_pay(serde_json::json!({"qr_code": qr}))
            .await
            .status(),
        409,
        "an order is paid once"
    );
    let t = ali.query(&out).await.unwrap();
    assert_eq!(
        (t.state, t.channel_state.as_str(), t.amount_minor),
        (TradeState::Succeeded, "TRADE_SUCCESS", Some(1234))
    );
    let trade_no = t.channel_trade_no.clone().unwrap();
    assert_eq!(trade_no.len(), 28);
    assert!(t.paid_at.is_some() && t.payer_id.as_deref().unwrap().starts_with("2088"));

    let paid = env
        .wait_for(|ns| {
            ns.iter().find_map(|n| match &n.event {
                NotificationEvent::Payment { trade } if trade.out_trade_no == out => {
                    Some(trade.clone())
                }
                _ => None,
            })
        })
        .await;
    assert_eq!(paid.state, TradeState::Succeeded);
    assert_eq!(paid.channel_trade_no.as_deref(), Some(trade_no.as_str()));
    assert_eq!(paid.amount_minor, Some(1234));
}

#[tokio::test]
async fn jsapi_create_gives_the_trade_number() {
    let env = Env::start().await;
    let ali = env.adapter();
    let out = no("J");
    let buyer = "2088102146225135";
    let created = ali
        .create_order(&CreateOrder {
            order: order(&out, 500),
            kind: CreateKind::Jsapi {
                payer_id: buyer.into(),
            },
        })
        .await
        .unwrap();
    let CreatedOrder::Jsapi { params } = created else {
        panic!("{created:?}")
    };
    let trade_no = params["tradeNO"].as_str().unwrap().to_string();
    assert_eq!(trade_no.len(), 28);
    let t = ali.query(&out).await.unwrap();
    assert_eq!(
        (t.state, t.channel_state.as_str()),
        (TradeState::UserPaying, "WAIT_BUYER_PAY")
    );
    assert_eq!(
        env.wallet_pay(serde_json::json!({"trade_no": trade_no}))
            .await
            .status(),
        200
    );
    let t = ali.query(&out).await.unwrap();
    assert_eq!(t.state, TradeState::Succeeded);
    assert_eq!(t.payer_id.as_deref(), Some(buyer));
}

#[tokio::test]
async fn payment_codes_choose_the_payer() {
    let env = Env::start().await;
    let ali = env.adapter();

    // Any other code: paid at once.
    let out = no("P");
    let PayOutcome::Succeeded { trade } = ali.pay_with_code(&order(&out, 101), &code("3456")).await
    else {
        panic!()
    };
    assert_eq!(
        (trade.out_trade_no.as_str(), trade.amount_minor, trade.state),
        (out.as_str(), Some(101), TradeState::Succeeded)
    );
    // Charging it again: Alipay says it is paid already, which the caller confirms by querying.
    assert!(matches!(
        ali.pay_with_code(&order(&out, 101), &code("3456")).await,
        PayOutcome::Unknown { reason } if reason.contains("ACQ.TRADE_HAS_SUCCESS")
    ));

    // 1001: password, then paid.
    let out = no("P");
    let outcome = ali.pay_with_code(&order(&out, 102), &code("1001")).await;
    assert!(
        matches!(&outcome, PayOutcome::UserPaying { channel_trade_no: Some(t) } if t.len() == 28),
        "{outcome:?}"
    );
    assert_eq!(ali.query(&out).await.unwrap().state, TradeState::UserPaying);
    let mut state = TradeState::UserPaying;
    for _ in 0..1000 {
        state = ali.query(&out).await.unwrap().state;
        if state != TradeState::UserPaying {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, TradeState::Succeeded);

    // 1002: password, never entered: cancelled meanwhile.
    let out = no("P");
    assert!(matches!(
        ali.pay_with_code(&order(&out, 103), &code("1002")).await,
        PayOutcome::UserPaying { .. }
    ));
    ali.reverse(&out).await.unwrap();
    let t = ali.query(&out).await.unwrap();
    assert_eq!(
        (t.state, t.channel_state.as_str()),
        (TradeState::Closed, "TRADE_CLOSED")
    );

    // 1003 / 1004: business failures with their sub codes.
    let failed = |o: PayOutcome| match o {
        PayOutcome::Failed { code, .. } => code,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        failed(
            ali.pay_with_code(&order(&no("P"), 104), &code("1003"))
                .await
        ),
        "ACQ.BUYER_BALANCE_NOT_ENOUGH"
    );
    assert_eq!(
        failed(
            ali.pay_with_code(&order(&no("P"), 105), &code("1004"))
                .await
        ),
        "ACQ.PAYMENT_AUTH_CODE_INVALID"
    );
    // A WeChat code is no Alipay code.
    assert_eq!(
        failed(
            ali.pay_with_code(&order(&no("P"), 106), "134567890123456789")
                .await
        ),
        "ACQ.PAYMENT_AUTH_CODE_INVALID"
    );

    // 1005: 20000, yet the money moved: the query tells.
    let out = no("P");
    assert!(matches!(
        ali.pay_with_code(&order(&out, 107), &code("1005")).await,
        PayOutcome::Unknown { .. }
    ));
    assert_eq!(ali.query(&out).await.unwrap().state, TradeState::Succeeded);
}

#[tokio::test]
async fn cancel_refunds_a_paid_trade_and_closes_an_unknown_one() {
    let env = Env::start().await;
    let ali = env.adapter();
    let out = no("C");
    assert!(matches!(
        ali.pay_with_code(&order(&out, 300), &code("0001")).await,
        PayOutcome::Succeeded { .. }
    ));
    ali.reverse(&out).await.unwrap();
    let t = ali.query(&out).await.unwrap();
    // Paid, then given back in full: the trade is closed but was paid.
    assert_eq!(t.channel_state, "TRADE_CLOSED");
    assert!(t.paid_at.is_some());
    // Cancelling again is harmless.
    ali.reverse(&out).await.unwrap();

    // The pay request never arrived: cancelling blocks a late one.
    let lost = no("C");
    ali.reverse(&lost).await.unwrap();
    assert!(matches!(
        ali.pay_with_code(&order(&lost, 300), &code("0001")).await,
        PayOutcome::Failed { code, .. } if code == "ACQ.TRADE_HAS_CLOSE"
    ));
}

#[tokio::test]
async fn refunds_partial_repeated_full_and_over() {
    let env = Env::start().await;
    let ali = env.adapter();
    let out = no("R");
    let qr = env.precreate(&ali, &out, 1000).await;
    env.wallet_pay(serde_json::json!({"qr_code": qr})).await;
    let req = |no: &str, fen: i64| RefundRequest {
        out_trade_no: out.clone(),
        out_refund_no: no.into(),
        refund_amount: Money::cny(fen),
        total_amount: Money::cny(1000),
        reason: Some("退货".into()),
        notify_url: None,
    };
    let first = no("RF");
    let RefundOutcome::Succeeded { refund } = ali.refund(&req(&first, 250)).await else {
        panic!()
    };
    assert_eq!(
        (
            refund.amount_minor,
            refund.state,
            refund.out_refund_no.as_str()
        ),
        (Some(250), RefundState::Succeeded, first.as_str())
    );
    // A repeat moves no money (fund_change=N): the refund query confirms it.
    assert!(matches!(
        ali.refund(&req(&first, 250)).await,
        RefundOutcome::Succeeded { refund } if refund.amount_minor == Some(250)
    ));
    let q = ali.query_refund(&out, &first).await.unwrap();
    assert_eq!(
        (q.state, q.amount_minor, q.channel_state.as_str()),
        (RefundState::Succeeded, Some(250), "REFUND_SUCCESS")
    );
    assert!(q.succeeded_at.is_some());
    assert_eq!(
        rejected(&ali.query_refund(&out, "NOPE").await.unwrap_err()),
        "REFUND_NOT_EXIST"
    );
    // More than what is left.
    assert!(matches!(
        ali.refund(&req(&no("RF"), 751)).await,
        RefundOutcome::Failed { code, .. } if code == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
    ));
    // The same request number with another amount.
    assert!(matches!(
        ali.refund(&req(&first, 100)).await,
        RefundOutcome::Failed { code, .. } if code == "ACQ.CONTEXT_INCONSISTENT"
    ));
    // The rest: the trade closes.
    let rest = no("RF");
    assert!(matches!(
        ali.refund(&req(&rest, 750)).await,
        RefundOutcome::Succeeded { .. }
    ));
    assert_eq!(ali.query(&out).await.unwrap().channel_state, "TRADE_CLOSED");
    // Refunds notify too.
    env.wait_for(|ns| {
        ns.iter()
            .any(|n| matches!(&n.event, NotificationEvent::Refund { refund } if refund.out_refund_no == rest))
            .then_some(())
    })
    .await;
    // An unpaid or unknown trade cannot be refunded.
    let unpaid = no("R");
    env.precreate(&ali, &unpaid, 10).await;
    let r = RefundRequest {
        out_trade_no: unpaid,
        ..req("X1", 10)
    };
    assert!(matches!(
        ali.refund(&r).await,
        RefundOutcome::Failed { code, .. } if code == "ACQ.TRADE_NOT_EXIST"
    ));
}

#[tokio::test]
async fn close_an_unpaid_order() {
    let env = Env::start().await;
    let ali = env.adapter();
    let out = no("X");
    let qr = env.precreate(&ali, &out, 50).await;
    ali.close(&out).await.unwrap();
    // Closed before anybody scanned it: a late scan cannot pay it.
    assert_eq!(
        env.wallet_pay(serde_json::json!({"qr_code": qr}))
            .await
            .status(),
        409
    );
    assert_eq!(ali.query(&out).await.unwrap().state, TradeState::Closed);
    // A paid trade cannot be closed; an unknown one does not exist.
    let paid = no("X");
    ali.pay_with_code(&order(&paid, 50), &code("0002")).await;
    assert_eq!(
        rejected(&ali.close(&paid).await.unwrap_err()),
        "ACQ.TRADE_STATUS_ERROR"
    );
    assert_eq!(
        rejected(&ali.close(&no("X")).await.unwrap_err()),
        "ACQ.TRADE_NOT_EXIST"
    );
}

#[tokio::test]
async fn signatures_are_enforced_both_ways() {
    let env = Env::start().await;
    // Our request signed with a key the sandbox does not know: Alipay's invalid-signature answer.
    let (other_private, other_public) = crypto::generate_rsa_keypair();
    let mut cfg = env.config();
    cfg.app_private_key = other_private.clone();
    let err = Alipay::new(cfg)
        .unwrap()
        .query("ABCDEF1")
        .await
        .unwrap_err();
    assert_eq!(rejected(&err), "isv.invalid-signature");
    // A wrong app id.
    let mut cfg = env.config();
    cfg.app_id = "2021000000000000".into();
    assert_eq!(
        rejected(
            &Alipay::new(cfg)
                .unwrap()
                .query("ABCDEF1")
                .await
                .unwrap_err()
        ),
        "isv.invalid-app-id"
    );
    // Answers signed by the sandbox do not verify with another Alipay public key.
    let mut cfg = env.config();
    cfg.alipay_public_key = other_public;
    let err = Alipay::new(cfg)
        .unwrap()
        .query("ABCDEF1")
        .await
        .unwrap_err();
    assert!(matches!(err, ChannelError::Signature(_)), "{err}");

    // Raw answers: genuine, tampered, unsigned, signed by someone else.
    let ali = env.adapter();
    let method = "alipay.trade.query";
    let raw = env
        .http
        .post(&env.gateway)
        .query(&[("method", method)])
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200, "Alipay answers 200 even to garbage");
    let body = raw.bytes().await.unwrap();
    let r = ali.open_reply(&body, method).unwrap();
    // Unsigned and without an app id: refused under the method's own node, signed.
    assert!(!r.error_node && r.code() == "40001", "{:?}", r.fields);
    assert_eq!(r.str("sub_code"), Some("isv.missing-app-id"));
    let text = String::from_utf8(body.to_vec()).unwrap();
    let tampered = text.replacen("40001", "10000", 1);
    assert!(matches!(
        ali.open_reply(tampered.as_bytes(), method),
        Err(ChannelError::Signature(_))
    ));
    assert!(matches!(
        ali.open_reply(
            br#"{"alipay_trade_query_response":{"code":"10000","msg":"Success"}}"#,
            method
        ),
        Err(ChannelError::Signature(_))
    ));
    let forged = sign::render_response(
        &RsaSigner::from_pem(&other_private).unwrap(),
        "alipay_trade_query_response",
        r#"{"code":"10000","msg":"Success","trade_status":"TRADE_SUCCESS"}"#,
    );
    assert!(matches!(
        ali.open_reply(forged.as_bytes(), method),
        Err(ChannelError::Signature(_))
    ));
    // A signed `error_response` (gateway-level error) is a rejection with its sub code.
    let gateway_error = sign::render_response(
        &RsaSigner::from_pem(&env.sandbox.account().alipay_private_key).unwrap(),
        "error_response",
        r#"{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-signature","sub_msg":"验签出错"}"#,
    );
    let r = ali.open_reply(gateway_error.as_bytes(), method).unwrap();
    assert!(r.error_node && !r.is_success());
    assert_eq!(rejected(&r.error()), "isv.invalid-signature");
    for garbage in [&b""[..], b"{", b"<html>502</html>", b"[]", b"{\"sign\":1}"] {
        assert!(ali.open_reply(garbage, method).is_err());
    }
}

#[tokio::test]
async fn notifications_tampered_foreign_and_duplicated() {
    let env = Env::start().await;
    let ali = env.adapter();
    let out = no("N");
    let qr = env.precreate(&ali, &out, 88).await;
    env.wallet_pay(serde_json::json!({"qr_code": qr})).await;
    let first = env.wait_for(|ns| ns.first().cloned()).await;
    let body = env.raw.lock().unwrap()[0].clone();
    let headers = http::HeaderMap::new();
    // Verified and decoded.
    let again = ali.verify_notification(&headers, &body).unwrap();
    assert_eq!(again, first);
    assert!(first.id.is_some());
    // Tampered amount.
    let text = String::from_utf8(body.to_vec()).unwrap();
    let tampered = text.replacen("total_amount=0.88", "total_amount=8.80", 1);
    assert_ne!(tampered, text);
    assert!(matches!(
        ali.verify_notification(&headers, tampered.as_bytes()),
        Err(ChannelError::Signature(_))
    ));
    // Signed by someone else.
    let mut cfg = env.config();
    cfg.alipay_public_key = crypto::generate_rsa_keypair().1;
    assert!(matches!(
        Alipay::new(cfg)
            .unwrap()
            .verify_notification(&headers, &body),
        Err(ChannelError::Signature(_))
    ));
    // Genuine, but for another app.
    let mut cfg = env.config();
    cfg.app_id = "2021999999999999".into();
    assert!(matches!(
        Alipay::new(cfg)
            .unwrap()
            .verify_notification(&headers, &body),
        Err(ChannelError::Protocol(_))
    ));
    // Garbage.
    for g in [&b""[..], b"%", b"sign=", b"a=1&a=2", &[0xff, 0xfe]] {
        assert!(ali.verify_notification(&headers, g).is_err());
    }
    // Duplicates are harmless: the same trade each time.
    let resend = env
        .http
        .post(format!("{}/sandbox/notifications/{out}?times=3", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resend.status(), 202);
    let all = env
        .wait_for(|ns| (ns.len() >= 4).then(|| ns.to_vec()))
        .await;
    for n in &all {
        let NotificationEvent::Payment { trade } = &n.event else {
            panic!("{n:?}")
        };
        assert_eq!(
            (trade.out_trade_no.as_str(), trade.state, trade.amount_minor),
            (out.as_str(), TradeState::Succeeded, Some(88))
        );
    }
    assert_eq!(ali.notification_reply(true).body, b"success");
    assert_ne!(ali.notification_reply(false).body, b"success");
}

#[tokio::test]
async fn notifications_are_retried_until_acknowledged() {
    let env = Env::start().await;
    env.sandbox.faults().set(Faults {
        drop_notify_pct: 100.0,
        ..Faults::default()
    });
    let ali = env.adapter();
    let out = no("Y");
    let qr = env.precreate(&ali, &out, 5).await;
    env.wallet_pay(serde_json::json!({"qr_code": qr})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
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
    // The compressed 4 min and 10 min retries deliver it.
    env.wait_for(|ns| {
        ns.iter()
            .any(|n| matches!(&n.event, NotificationEvent::Payment { trade } if trade.out_trade_no == out))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn faults_make_outcomes_unknown() {
    let env = Env::start().await;
    let ali = env.adapter().with_timeouts(Timeouts {
        connect: Duration::from_secs(1),
        call: Duration::from_millis(300),
        bill: Duration::from_secs(5),
    });
    env.sandbox.faults().set(Faults {
        error_5xx_pct: 100.0,
        ..Faults::default()
    });
    assert!(matches!(
        ali.pay_with_code(&order(&no("E"), 100), &code("0003"))
            .await,
        PayOutcome::Unknown { .. }
    ));
    assert!(matches!(
        ali.query("ABCDEF1").await,
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
        ali.pay_with_code(&order(&out, 100), &code("0004")).await,
        PayOutcome::Unknown { .. }
    ));
    assert!(matches!(
        ali.refund(&RefundRequest {
            out_trade_no: out.clone(),
            out_refund_no: "TR1".into(),
            refund_amount: Money::cny(1),
            total_amount: Money::cny(100),
            reason: None,
            notify_url: None,
        })
        .await,
        RefundOutcome::Unknown { .. }
    ));
    env.sandbox.faults().set(Faults::default());
    assert_eq!(ali.query(&out).await.unwrap().state, TradeState::Succeeded);
    // Nothing listening: unreachable, safe to fail over.
    let mut cfg = env.config();
    cfg.base_url = "http://127.0.0.1:9/gateway.do".into();
    let err = Alipay::new(cfg)
        .unwrap()
        .query("ABCDEF1")
        .await
        .unwrap_err();
    assert!(err.is_safe_to_fail_over(), "{err}");
}

#[tokio::test]
async fn bills_download_and_match_the_books() {
    let env = Env::start().await;
    let ali = env.adapter();
    let paid = no("B");
    assert!(matches!(
        ali.pay_with_code(&order(&paid, 10_000), &code("0005"))
            .await,
        PayOutcome::Succeeded { .. }
    ));
    let refund_no = no("BR");
    assert!(matches!(
        ali.refund(&RefundRequest {
            out_trade_no: paid.clone(),
            out_refund_no: refund_no.clone(),
            refund_amount: Money::cny(2_500),
            total_amount: Money::cny(10_000),
            reason: None,
            notify_url: None,
        })
        .await,
        RefundOutcome::Succeeded { .. }
    ));
    let other = no("B");
    assert!(matches!(
        ali.pay_with_code(&order(&other, 1), &code("0006")).await,
        PayOutcome::Succeeded { .. }
    ));
    let today = Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive();
    // Today's bill does not exist yet, like Alipay's.
    assert_eq!(
        rejected(&ali.download_bill(today).await.err().unwrap()),
        "isp.bill_not_exist"
    );
    // Move the books back a day, then download yesterday's bill through the API.
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        env.dir.path().join("alipay/books.sqlite").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE trades SET paid_at = paid_at - 86400")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE refunds SET success_time = success_time - 86400")
        .execute(&db)
        .await
        .unwrap();
    let yesterday = today.pred_opt().unwrap();
    let recs: Vec<_> = ali
        .download_bill(yesterday)
        .await
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let books = env.sandbox.bill_records(yesterday).await.unwrap();
    assert_eq!(recs.len(), 3);
    let key = |r: &paymux_channels::BillRecord| {
        (
            r.channel_trade_no.clone(),
            r.out_trade_no.clone(),
            r.out_refund_no.clone(),
            r.kind == BillKind::Refund,
            r.amount_minor,
            r.fee_minor,
            r.time,
        )
    };
    let mut got: Vec<_> = recs.iter().map(key).collect();
    let mut want: Vec<_> = books.iter().map(key).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let pay = recs
        .iter()
        .find(|r| r.kind == BillKind::Payment && r.out_trade_no == paid)
        .unwrap();
    assert_eq!((pay.amount_minor, pay.fee_minor), (10_000, 60));
    let refund = recs.iter().find(|r| r.kind == BillKind::Refund).unwrap();
    assert_eq!(
        (
            refund.out_refund_no.as_deref(),
            refund.amount_minor,
            refund.fee_minor
        ),
        (Some(refund_no.as_str()), 2_500, 15)
    );
    // An unknown download token is refused.
    let r = env
        .http
        .get(format!("{}/sandbox/bill/nope", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn gateway_answers_garbage_with_signed_errors() {
    let env = Env::start().await;
    let ali = env.adapter();
    let bodies: [&[u8]; 6] = [
        b"",
        b"%",
        b"biz_content=%7B",
        b"method=alipay.trade.query&method=x",
        &[0xff, 0xfe, 0x00],
        b"method=alipay.trade.query&app_id=1&sign_type=RSA2&sign=AAAA",
    ];
    for body in bodies {
        let resp = env
            .http
            .post(&env.gateway)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let raw = resp.bytes().await.unwrap();
        // Whatever node it is, it is signed by the sandbox and is no success.
        let r = ali.open_reply(&raw, "alipay.trade.query").unwrap();
        assert!(!r.is_success(), "{:?}", r.fields);
    }
    // A signed request for a method the gateway does not have.
    let err = ali
        .call("alipay.trade.nonexistent", &serde_json::json!({}), None)
        .await
        .unwrap()
        .error();
    assert_eq!(rejected(&err), "isv.invalid-method");
}

#[tokio::test]
async fn cancel_is_retried_while_alipay_says_retry() {
    // A gateway that answers `retry_flag=Y` twice, then succeeds; signed with the sandbox's key.
    let env = Env::start().await;
    let signer = Arc::new(RsaSigner::from_pem(&env.sandbox.account().alipay_private_key).unwrap());
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    async fn flaky(
        State((signer, calls)): State<(Arc<RsaSigner>, Arc<std::sync::atomic::AtomicU32>)>,
    ) -> String {
        let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let content = if n < 2 {
            r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.SYSTEM_ERROR","sub_msg":"系统错误","retry_flag":"Y"}"#
        } else {
            r#"{"code":"10000","msg":"Success","out_trade_no":"C1","retry_flag":"N","action":"close"}"#
        };
        sign::render_response(&signer, "alipay_trade_cancel_response", content)
    }
    let root = serve(
        axum::Router::new()
            .route("/gateway.do", axum::routing::post(flaky))
            .with_state((signer, calls.clone())),
    )
    .await;
    let mut cfg = env.config();
    cfg.base_url = format!("{root}/gateway.do");
    Alipay::new(cfg).unwrap().reverse("C1").await.unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[test]
fn config_debug_hides_keys() {
    let (private, public) = crypto::generate_rsa_keypair();
    let cfg = AlipayConfig {
        base_url: "https://openapi.alipay.com/gateway.do".into(),
        app_id: "2021000000000001".into(),
        app_private_key: private.clone(),
        alipay_public_key: public,
        seller_id: None,
        notify_url: None,
        oauth_base_url: None,
        wallet_stand_in_url: None,
    };
    let shown = format!("{cfg:?}");
    assert!(shown.contains("2021000000000001"));
    assert!(!shown.contains("PRIVATE"));
    let shown = format!("{:?}", Alipay::new(cfg).unwrap());
    assert!(!shown.contains("PRIVATE"));
}

/// One key pair for the property tests (generating one per case would be slow).
fn keypair() -> (String, String) {
    static KEYS: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    KEYS.get_or_init(crypto::generate_rsa_keypair).clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Garbage answers and notifications never panic and never verify.
    #[test]
    fn garbage_never_verifies(bytes in proptest::collection::vec(any::<u8>(), 0..512), text in ".{0,256}") {
        let (private, public) = keypair();
        let ali = Alipay::new(AlipayConfig {
            base_url: "https://openapi.alipay.com/gateway.do".into(),
            app_id: "2021000000000001".into(),
            app_private_key: private,
            alipay_public_key: public,
            seller_id: None,
            notify_url: None,
            oauth_base_url: None,
            wallet_stand_in_url: None,
        }).unwrap();
        prop_assert!(ali.open_reply(&bytes, "alipay.trade.pay").is_err());
        prop_assert!(ali.open_reply(text.as_bytes(), "alipay.trade.pay").is_err());
        prop_assert!(ali.verify_notification(&http::HeaderMap::new(), &bytes).is_err());
        prop_assert!(ali.verify_notification(&http::HeaderMap::new(), text.as_bytes()).is_err());
    }
}

#[tokio::test]
async fn auth_code_buyer_id_then_the_wallet_stand_in_pays_the_jsapi_trade() {
    let env = Env::start().await;
    let ali = env.adapter();
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let auth = ali
        .payer_auth_url("https://shop.example/c/1/auth", "st_2")
        .unwrap();
    assert!(auth.starts_with(&format!(
        "{}/oauth2/publicAppAuthorize.htm?app_id=",
        env.base
    )));
    let r = no_redirect.get(&auth).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let loc = reqwest::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(loc.path(), "/c/1/auth");
    let q: std::collections::HashMap<String, String> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["state"], "st_2");
    assert_eq!(q["app_id"], env.sandbox.account().app_id);
    // alipay.system.oauth.token: the auth_code once for the buyer's user_id.
    let buyer = ali
        .payer_id(&paymux_channels::PayerAuth::code(&q["auth_code"]))
        .await
        .unwrap();
    assert!(buyer.starts_with("2088") && buyer.len() == 16, "{buyer}");
    let again = ali
        .payer_id(&paymux_channels::PayerAuth::code(&q["auth_code"]))
        .await
        .unwrap_err();
    assert!(
        format!("{again:?}").contains("isv.code-invalid"),
        "{again:?}"
    );
    assert!(
        ali.payer_id(&paymux_channels::PayerAuth::code("made-up"))
            .await
            .is_err()
    );

    let out = no("S");
    let CreatedOrder::Jsapi { params } = ali
        .create_order(&CreateOrder {
            order: order(&out, 2500),
            kind: CreateKind::Jsapi {
                payer_id: buyer.clone(),
            },
        })
        .await
        .unwrap()
    else {
        panic!("not JSAPI")
    };
    let trade_no = params["tradeNO"].as_str().unwrap().to_string();
    let stand_in = ali.wallet_stand_in_url().unwrap();
    assert_eq!(stand_in, format!("{}/sandbox/wallet", env.base));
    let form = |trade: &str, action: &str| {
        vec![
            ("tradeNO".to_string(), trade.to_string()),
            (
                "return_url".to_string(),
                "https://shop.example/r/2".to_string(),
            ),
            ("action".to_string(), action.to_string()),
        ]
    };
    let unknown = no_redirect
        .post(&stand_in)
        .form(&form("2099000000000000000000000000", "pay"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let sheet = no_redirect
        .post(&stand_in)
        .form(&form(&trade_no, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(sheet.status(), 200);
    assert!(sheet.text().await.unwrap().contains("¥25.00"));
    assert_eq!(
        ali.query(&out).await.unwrap().state,
        TradeState::UserPaying,
        "waiting for its buyer"
    );
    let paid = no_redirect
        .post(&stand_in)
        .form(&form(&trade_no, "pay"))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 302);
    assert_eq!(paid.headers()["location"], "https://shop.example/r/2");
    let trade = ali.query(&out).await.unwrap();
    assert_eq!(trade.state, TradeState::Succeeded);
    assert_eq!(trade.payer_id.as_deref(), Some(buyer.as_str()));
    env.wait_for(|ns| {
        ns.iter().find_map(|n| match &n.event {
            NotificationEvent::Payment { trade } if trade.out_trade_no == out => Some(()),
            _ => None,
        })
    })
    .await;
    let twice = no_redirect
        .post(&stand_in)
        .form(&form(&trade_no, "pay"))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 409);
}
