//! The WeChat Pay adapter against the WeChat sandbox, over HTTP on loopback: every call and outcome,
//! signatures both ways, notifications, faults and the bill.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use chrono::Utc;
use paymux_channels::http::Timeouts;
use paymux_channels::sandbox::{Faults, SandboxOptions};
use paymux_channels::wechat::sandbox::WechatSandbox;
use paymux_channels::wechat::{WechatConfig, WechatPay, bill};
use paymux_channels::{
    BillKind, Channel, ChannelError, CreateKind, CreateOrder, CreatedOrder, Notification,
    NotificationEvent, OrderRequest, PayOutcome, RefundOutcome, RefundRequest, RefundState,
    TradeState,
};
use paymux_model::Money;

type Raw = Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>;
type Receiver = (Arc<WechatPay>, Arc<Mutex<Vec<Notification>>>, Raw);

struct Env {
    _dir: tempfile::TempDir,
    sandbox: WechatSandbox,
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
            // 0.5 s of password wait: the "still waiting" checks come first on a busy machine.
            password_wait_secs: 500,
            ..SandboxOptions::default()
        };
        let sandbox = WechatSandbox::start(opts).await.unwrap();
        // Nested under a prefix, as `paymux serve` mounts it: the prefix is part of the signed path.
        let root = serve(axum::Router::new().nest("/sandbox/wechat", sandbox.router())).await;
        let base = format!("{root}/sandbox/wechat");

        let received = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let adapter =
            Arc::new(WechatPay::new(sandbox.account().client_config(&base, None)).unwrap());
        let state = (adapter, received.clone(), raw.clone());
        async fn notified(
            State((adapter, received, raw)): State<Receiver>,
            headers: http::HeaderMap,
            body: Bytes,
        ) -> axum::response::Response {
            raw.lock().unwrap().push((headers.clone(), body.clone()));
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
            _dir: dir,
            sandbox,
            base,
            notify_url: format!("{notify_root}/notify"),
            received,
            raw,
            http: reqwest::Client::new(),
        }
    }

    fn config(&self) -> WechatConfig {
        self.sandbox
            .account()
            .client_config(&self.base, Some(self.notify_url.clone()))
    }

    fn adapter(&self) -> WechatPay {
        WechatPay::new(self.config()).unwrap()
    }

    async fn wallet_pay(&self, code_url: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/sandbox/pay", self.base))
            .json(&serde_json::json!({"code_url": code_url}))
            .send()
            .await
            .unwrap()
    }

    async fn wait_for<T>(&self, mut f: impl FnMut(&[Notification]) -> Option<T>) -> T {
        for _ in 0..800 {
            if let Some(v) = f(&self.received.lock().unwrap()) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no such notification arrived");
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

#[tokio::test]
async fn native_order_paid_by_the_wallet_and_notified() {
    let env = Env::start().await;
    let wx = env.adapter();
    let out = no("N");
    let created = wx
        .create_order(&CreateOrder {
            order: order(&out, 1234),
            kind: CreateKind::Qr,
        })
        .await
        .unwrap();
    let CreatedOrder::Qr { code_url } = created else {
        panic!("{created:?}")
    };
    assert!(
        code_url.starts_with("weixin://wxpay/bizpayurl?pr="),
        "{code_url}"
    );
    // Creating it again with the same content is idempotent; different content is a duplicate.
    let again = wx
        .create_order(&CreateOrder {
            order: order(&out, 1234),
            kind: CreateKind::Qr,
        })
        .await
        .unwrap();
    assert_eq!(
        again,
        CreatedOrder::Qr {
            code_url: code_url.clone()
        }
    );
    let dup = wx
        .create_order(&CreateOrder {
            order: order(&out, 999),
            kind: CreateKind::Qr,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&dup, ChannelError::Rejected { code, .. } if code == "INVALID_REQUEST"),
        "{dup}"
    );

    let t = wx.query(&out).await.unwrap();
    assert_eq!(
        (t.state, t.channel_state.as_str(), t.amount_minor),
        (TradeState::NotPaid, "NOTPAY", Some(1234))
    );

    assert_eq!(env.wallet_pay(&code_url).await.status(), 200);
    assert_eq!(
        env.wallet_pay(&code_url).await.status(),
        409,
        "an order is paid once"
    );
    let t = wx.query(&out).await.unwrap();
    assert_eq!(t.state, TradeState::Succeeded);
    let tx = t.channel_trade_no.clone().unwrap();
    assert!(
        tx.len() == 28 && tx.starts_with("42") && tx.bytes().all(|b| b.is_ascii_digit()),
        "{tx}"
    );
    assert!(t.paid_at.is_some() && t.payer_id.is_some());
    assert_eq!(
        wx.query_by_transaction_id(&tx).await.unwrap().out_trade_no,
        out
    );

    let n = env
        .wait_for(|ns| {
            ns.iter().find_map(|n| match &n.event {
                NotificationEvent::Payment { trade } if trade.out_trade_no == out => {
                    Some(n.clone())
                }
                _ => None,
            })
        })
        .await;
    let NotificationEvent::Payment { trade } = n.event else {
        unreachable!()
    };
    assert_eq!(
        (
            trade.state,
            trade.amount_minor,
            trade.channel_trade_no.as_deref()
        ),
        (TradeState::Succeeded, Some(1234), Some(tx.as_str()))
    );

    // A paid order cannot be closed.
    let err = wx.close(&out).await.unwrap_err();
    assert!(
        matches!(&err, ChannelError::Rejected { code, .. } if code == "ORDERPAID"),
        "{err}"
    );
}

#[tokio::test]
async fn jsapi_order_gives_signed_pay_params() {
    let env = Env::start().await;
    let wx = env.adapter();
    let out = no("J");
    let created = wx
        .create_order(&CreateOrder {
            order: order(&out, 500),
            kind: CreateKind::Jsapi {
                payer_id: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into(),
            },
        })
        .await
        .unwrap();
    let CreatedOrder::Jsapi { params } = created else {
        panic!()
    };
    let package = params["package"].as_str().unwrap();
    assert!(package.starts_with("prepay_id=wx"));
    // paySign verifies with the merchant key over appId\ntimeStamp\nnonceStr\npackage\n.
    let msg = format!(
        "{}\n{}\n{}\n{}\n",
        params["appId"].as_str().unwrap(),
        params["timeStamp"].as_str().unwrap(),
        params["nonceStr"].as_str().unwrap(),
        package
    );
    let key =
        paymux_channels::crypto::RsaVerifier::from_pem(&env.sandbox.account().merchant_public_key)
            .unwrap();
    assert!(key.verify_base64(msg.as_bytes(), params["paySign"].as_str().unwrap()));
    assert_eq!(params["signType"], "RSA");
    // Without an openid the sandbox refuses, like WeChat.
    let err = wx
        .create_order(&CreateOrder {
            order: order(&no("J"), 500),
            kind: CreateKind::Jsapi {
                payer_id: String::new(),
            },
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ChannelError::Rejected { .. }), "{err}");
}

#[tokio::test]
async fn payment_codes_choose_the_payer() {
    let env = Env::start().await;
    let wx = env.adapter();

    let out = no("C");
    match wx
        .pay_with_code(&order(&out, 100), "134567890123456789")
        .await
    {
        PayOutcome::Succeeded { trade } => assert_eq!(
            (trade.out_trade_no.as_str(), trade.amount_minor),
            (out.as_str(), Some(100))
        ),
        o => panic!("{o:?}"),
    }
    // Charging the same order again returns the same success (idempotent), never a second charge.
    assert!(matches!(
        wx.pay_with_code(&order(&out, 100), "134567890123456789")
            .await,
        PayOutcome::Succeeded { .. }
    ));

    // Password, then paid.
    let out = no("P");
    assert!(matches!(
        wx.pay_with_code(&order(&out, 100), "134567890123451001")
            .await,
        PayOutcome::UserPaying { .. }
    ));
    assert_eq!(wx.query(&out).await.unwrap().state, TradeState::UserPaying);
    let mut state = TradeState::UserPaying;
    for _ in 0..1000 {
        state = wx.query(&out).await.unwrap().state;
        if state != TradeState::UserPaying {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, TradeState::Succeeded);

    // Password never entered: the merchant reverses.
    let out = no("R");
    assert!(matches!(
        wx.pay_with_code(&order(&out, 100), "134567890123451002")
            .await,
        PayOutcome::UserPaying { .. }
    ));
    wx.reverse(&out).await.unwrap();
    let t = wx.query(&out).await.unwrap();
    assert_eq!(
        (t.state, t.channel_state.as_str()),
        (TradeState::Closed, "REVOKED")
    );

    // Declines.
    match wx
        .pay_with_code(&order(&no("F"), 100), "134567890123451003")
        .await
    {
        PayOutcome::Failed { code, .. } => assert_eq!(code, "NOTENOUGH"),
        o => panic!("{o:?}"),
    }
    match wx
        .pay_with_code(&order(&no("F"), 100), "134567890123451004")
        .await
    {
        PayOutcome::Failed { code, .. } => assert_eq!(code, "AUTH_CODE_INVALID"),
        o => panic!("{o:?}"),
    }
    // Not a WeChat code at all (an Alipay code).
    match wx
        .pay_with_code(&order(&no("F"), 100), "281234567890123456")
        .await
    {
        PayOutcome::Failed { code, .. } => assert_eq!(code, "PARAM_ERROR"),
        o => panic!("{o:?}"),
    }
    // A system error after the money moved is Unknown, and the query finds it paid.
    let out = no("U");
    assert!(matches!(
        wx.pay_with_code(&order(&out, 100), "134567890123451005")
            .await,
        PayOutcome::Unknown { .. }
    ));
    assert_eq!(wx.query(&out).await.unwrap().state, TradeState::Succeeded);
    // Reversing a paid code order gives the money back (a refund row in the books).
    wx.reverse(&out).await.unwrap();
    assert_eq!(wx.query(&out).await.unwrap().channel_state, "REVOKED");
}

#[tokio::test]
async fn refunds_partial_full_and_over() {
    let env = Env::start().await;
    let wx = env.adapter();
    let out = no("F");
    assert!(matches!(
        wx.pay_with_code(&order(&out, 1000), "134567890123456789")
            .await,
        PayOutcome::Succeeded { .. }
    ));
    let req = |r: &str, fen: i64| RefundRequest {
        out_trade_no: out.clone(),
        out_refund_no: r.into(),
        refund_amount: Money::cny(fen),
        total_amount: Money::cny(1000),
        reason: Some("退货".into()),
        notify_url: Some(env.notify_url.clone()),
    };
    let r1 = no("RF");
    match wx.refund(&req(&r1, 300)).await {
        RefundOutcome::Processing { refund } | RefundOutcome::Succeeded { refund } => {
            assert_eq!(refund.amount_minor, Some(300));
            assert!(refund.channel_refund_no.is_some());
        }
        o => panic!("{o:?}"),
    }
    // The same request again is the same refund; the same number with another amount is refused.
    assert!(matches!(
        wx.refund(&req(&r1, 300)).await,
        RefundOutcome::Processing { .. } | RefundOutcome::Succeeded { .. }
    ));
    assert!(matches!(
        wx.refund(&req(&r1, 301)).await,
        RefundOutcome::Failed { .. }
    ));
    // More than what is left is refused.
    match wx.refund(&req(&no("RF"), 701)).await {
        RefundOutcome::Failed { code, .. } => assert_eq!(code, "NOT_ENOUGH"),
        o => panic!("{o:?}"),
    }
    assert!(matches!(
        wx.refund(&req(&no("RF"), 700)).await,
        RefundOutcome::Processing { .. } | RefundOutcome::Succeeded { .. }
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
    let info = wx.query_refund(&out, &r1).await.unwrap();
    assert_eq!(info.state, RefundState::Succeeded);
    assert_eq!(wx.query(&out).await.unwrap().channel_state, "REFUND");
    // Unknown refunds and orders.
    assert!(matches!(
        wx.query_refund(&out, "nope").await,
        Err(ChannelError::Rejected { .. })
    ));
    assert!(
        matches!(wx.query("NO_SUCH_ORDER_123").await, Err(ChannelError::Rejected { code, .. }) if code == "ORDER_NOT_EXIST")
    );
}

#[tokio::test]
async fn close_an_unpaid_order() {
    let env = Env::start().await;
    let wx = env.adapter();
    let out = no("X");
    let CreatedOrder::Qr { code_url } = wx
        .create_order(&CreateOrder {
            order: order(&out, 10),
            kind: CreateKind::Qr,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    wx.close(&out).await.unwrap();
    assert_eq!(wx.query(&out).await.unwrap().state, TradeState::Closed);
    assert_eq!(
        env.wallet_pay(&code_url).await.status(),
        409,
        "a closed order cannot be paid"
    );
}

#[tokio::test]
async fn signatures_are_enforced_both_ways() {
    let env = Env::start().await;
    // A merchant signing with the wrong key: 401 SIGN_ERROR.
    let mut cfg = env.config();
    cfg.merchant_private_key = paymux_channels::crypto::generate_rsa_keypair().0;
    let err = WechatPay::new(cfg)
        .unwrap()
        .query("ABCDEF123")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ChannelError::Rejected { code, .. } if code == "SIGN_ERROR"),
        "{err}"
    );
    // A wrong serial: refused too.
    let mut cfg = env.config();
    cfg.merchant_serial = "0123456789".into();
    let err = WechatPay::new(cfg)
        .unwrap()
        .query("ABCDEF123")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ChannelError::Rejected { code, .. } if code == "SIGN_ERROR"),
        "{err}"
    );
    // Unsigned requests: 401.
    let resp = env
        .http
        .get(format!(
            "{}/v3/pay/transactions/out-trade-no/ABCDEF123?mchid=1",
            env.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // A client that trusts another platform key rejects the sandbox's (genuine) answers as forged.
    let mut cfg = env.config();
    let (_, other_pub) = paymux_channels::crypto::generate_rsa_keypair();
    cfg.platform_keys = vec![(env.sandbox.account().platform_serial.clone(), other_pub)];
    let err = WechatPay::new(cfg)
        .unwrap()
        .pay_with_code(&order(&no("S"), 100), "134567890123456789")
        .await;
    assert!(
        matches!(&err, PayOutcome::Unknown { reason } if reason.contains("signature")),
        "{err:?}"
    );
}

#[tokio::test]
async fn authorization_timestamps_far_from_now_are_refused() {
    let env = Env::start().await;
    let account = env.sandbox.account();
    for ts in [i64::MIN, i64::MAX, 0] {
        let header = format!(
            "WECHATPAY2-SHA256-RSA2048 mchid=\"{}\",nonce_str=\"n\",timestamp=\"{ts}\",serial_no=\"{}\",signature=\"x\"",
            account.mchid, account.merchant_serial
        );
        let resp = env
            .http
            .get(format!(
                "{}/v3/pay/transactions/out-trade-no/ABCDEF123?mchid={}",
                env.base, account.mchid
            ))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{ts}");
        let body = resp.text().await.unwrap();
        assert!(body.contains("timestamp"), "{ts}: {body}");
    }
}

#[tokio::test]
async fn notifications_tampered_stale_and_duplicated() {
    let env = Env::start().await;
    let wx = env.adapter();
    let out = no("D");
    let CreatedOrder::Qr { code_url } = wx
        .create_order(&CreateOrder {
            order: order(&out, 77),
            kind: CreateKind::Qr,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    env.wallet_pay(&code_url).await;
    env.wait_for(|ns| (!ns.is_empty()).then_some(())).await;
    let (headers, body) = env.raw.lock().unwrap()[0].clone();
    let verified = wx.verify_notification(&headers, &body).unwrap();
    match &verified.event {
        NotificationEvent::Payment { trade } => {
            assert_eq!(trade.out_trade_no, out, "{verified:?}");
            assert_eq!(trade.amount_minor, Some(77), "{verified:?}");
            assert_eq!(trade.state, TradeState::Succeeded, "{verified:?}");
        }
        other => panic!("not a payment: {other:?}"),
    }
    // Tampered body: the signature fails.
    let mut tampered = body.to_vec();
    let i = tampered.iter().position(|b| *b == b'T').unwrap();
    tampered[i] = b'X';
    assert!(matches!(
        wx.verify_notification(&headers, &tampered),
        Err(ChannelError::Signature(_))
    ));
    // A probe.
    let mut probe = headers.clone();
    probe.insert(
        "wechatpay-signature",
        "WECHATPAY/SIGNTEST/abc".parse().unwrap(),
    );
    assert!(matches!(
        wx.verify_notification(&probe, &body),
        Err(ChannelError::Signature(_))
    ));
    // A replay from long ago: signed correctly, but stale.
    let acct = env.sandbox.account();
    let signer = paymux_channels::crypto::RsaSigner::from_pem(&acct.platform_private_key).unwrap();
    let old = paymux_channels::wechat::sign::PlatformSignature::sign(
        &signer,
        &acct.platform_serial,
        Utc::now().timestamp() - 3600,
        &body,
    );
    let mut stale = headers.clone();
    old.apply(&mut stale);
    assert!(
        matches!(wx.verify_notification(&stale, &body), Err(ChannelError::Signature(m)) if m.contains("Timestamp"))
    );
    // Duplicates on demand: same notification id each time.
    let first_id = env.received.lock().unwrap()[0].id.clone();
    let resp = env
        .http
        .post(format!("{}/sandbox/notifications/{out}?times=3", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    env.wait_for(|ns| (ns.len() >= 4).then_some(())).await;
    let ns = env.received.lock().unwrap().clone();
    assert!(ns.iter().all(
        |n| matches!(&n.event, NotificationEvent::Payment { trade } if trade.out_trade_no == out)
    ));
    assert!(first_id.is_some());
}

#[tokio::test]
async fn notifications_are_retried_until_acknowledged() {
    let env = Env::start().await;
    // Drop every delivery for a while, then let them through: the retry schedule delivers it.
    env.sandbox.faults().set(Faults {
        drop_notify_pct: 100.0,
        ..Faults::default()
    });
    let wx = env.adapter();
    let out = no("Y");
    let CreatedOrder::Qr { code_url } = wx
        .create_order(&CreateOrder {
            order: order(&out, 5),
            kind: CreateKind::Qr,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    env.wallet_pay(&code_url).await;
    tokio::time::sleep(Duration::from_millis(40)).await; // first attempt and a compressed 15 s retry
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
    env.wait_for(|ns| ns.iter().any(|n| matches!(&n.event, NotificationEvent::Payment { trade } if trade.out_trade_no == out)).then_some(())).await;
}

#[tokio::test]
async fn faults_make_outcomes_unknown() {
    let env = Env::start().await;
    let wx = env.adapter().with_timeouts(Timeouts {
        connect: Duration::from_secs(1),
        call: Duration::from_millis(300),
        bill: Duration::from_secs(5),
    });
    env.sandbox.faults().set(Faults {
        error_5xx_pct: 100.0,
        ..Faults::default()
    });
    assert!(matches!(
        wx.pay_with_code(&order(&no("E"), 100), "134567890123456789")
            .await,
        PayOutcome::Unknown { .. }
    ));
    // Processed, but the answer never comes: unknown, and the query shows it paid.
    env.sandbox.faults().set(Faults {
        timeout_pct: 100.0,
        hang_ms: 2_000,
        ..Faults::default()
    });
    let out = no("T");
    assert!(matches!(
        wx.pay_with_code(&order(&out, 100), "134567890123456789")
            .await,
        PayOutcome::Unknown { .. }
    ));
    env.sandbox.faults().set(Faults::default());
    assert_eq!(wx.query(&out).await.unwrap().state, TradeState::Succeeded);
    // Nothing listening: unreachable, safe to fail over.
    let mut cfg = env.config();
    cfg.base_url = "http://127.0.0.1:9".into();
    let err = WechatPay::new(cfg)
        .unwrap()
        .query("ABCDEF123")
        .await
        .unwrap_err();
    assert!(err.is_safe_to_fail_over(), "{err}");
}

#[tokio::test]
async fn bills_from_the_books() {
    let env = Env::start().await;
    let wx = env.adapter();
    let paid = no("B");
    assert!(matches!(
        wx.pay_with_code(&order(&paid, 10_000), "134567890123456789")
            .await,
        PayOutcome::Succeeded { .. }
    ));
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
        wx.refund(&r).await,
        RefundOutcome::Processing { .. }
    ));
    for _ in 0..100 {
        if wx.query_refund(&paid, &refund_no).await.unwrap().state == RefundState::Succeeded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Today's bill, as the sandbox renders it, parses and balances.
    let today = Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive();
    let file = env.sandbox.bill_for(today).await.unwrap();
    let recs: Vec<_> = bill::parse_trade_bill(file)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(recs.len(), 2);
    let pay = recs.iter().find(|r| r.kind == BillKind::Payment).unwrap();
    assert_eq!(
        (pay.out_trade_no.as_str(), pay.amount_minor, pay.fee_minor),
        (paid.as_str(), 10_000, 60)
    );
    let refund = recs.iter().find(|r| r.kind == BillKind::Refund).unwrap();
    assert_eq!(
        (
            refund.out_refund_no.as_deref(),
            refund.amount_minor,
            refund.fee_minor
        ),
        (Some(refund_no.as_str()), 2_500, 15)
    );
    // Through the API: a past day downloads, passes the SHA1 check and parses (the sandbox's books
    // hold nothing for yesterday, so the bill is empty but complete).
    let yesterday = today.pred_opt().unwrap();
    let recs: Vec<_> = wx
        .download_bill(yesterday)
        .await
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(recs.is_empty());
    // Today's bill is not available yet, like WeChat's.
    assert!(
        matches!(wx.download_bill(today).await, Err(ChannelError::Rejected { code, .. }) if code == "NO_STATEMENT_EXIST")
    );
}

/// Query parameters of a redirect's `Location`.
fn location_query(resp: &reqwest::Response) -> std::collections::HashMap<String, String> {
    let loc = resp.headers()["location"].to_str().unwrap();
    let url = reqwest::Url::parse(loc).unwrap();
    url.query_pairs().into_owned().collect()
}

#[tokio::test]
async fn oauth_openid_then_the_wallet_stand_in_verifies_pay_sign_and_pays() {
    let env = Env::start().await;
    let wx = env.adapter();
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // OAuth: the authorize redirect brings a code and the state back to the page.
    let auth = wx
        .payer_auth_url("https://shop.example/c/1/auth?x=1", "st_1")
        .expect("the sandbox account has an app secret");
    assert!(auth.starts_with(&format!("{}/connect/oauth2/authorize?appid=", env.base)));
    let r = no_redirect.get(&auth).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let q = location_query(&r);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("https://shop.example/c/1/auth?x=1&code=")
    );
    assert_eq!(q["state"], "st_1");
    let openid = wx
        .payer_id(&paymux_channels::PayerAuth::code(&q["code"]))
        .await
        .unwrap();
    assert!(openid.starts_with('o') && openid.len() == 28, "{openid}");
    // A code works once; a wrong secret or app is refused.
    let again = wx
        .payer_id(&paymux_channels::PayerAuth::code(&q["code"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&again, ChannelError::Rejected { code, .. } if code == "40029"),
        "{again}"
    );
    let token_url = format!("{}/sns/oauth2/access_token", env.base);
    let r = no_redirect.get(&auth).send().await.unwrap();
    let code2 = location_query(&r)["code"].clone();
    let bad: serde_json::Value = env
        .http
        .get(&token_url)
        .query(&[
            ("appid", env.sandbox.account().appid.as_str()),
            ("secret", "not-the-secret"),
            ("code", &code2),
            ("grant_type", "authorization_code"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bad["errcode"], 40125);
    let bad_app = no_redirect
        .get(auth.replace(&env.sandbox.account().appid, "wx0000000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_app.status(), 400);

    // The JSAPI order for that openid, and the stand-in of getBrandWCPayRequest.
    let out = no("S");
    let CreatedOrder::Jsapi { params } = wx
        .create_order(&CreateOrder {
            order: order(&out, 1234),
            kind: CreateKind::Jsapi {
                payer_id: openid.clone(),
            },
        })
        .await
        .unwrap()
    else {
        panic!("not JSAPI params")
    };
    let stand_in = wx.wallet_stand_in_url().expect("sandbox stand-in");
    assert_eq!(stand_in, format!("{}/sandbox/wallet", env.base));
    let form = |action: &str, pay_sign: &str| {
        let mut f: Vec<(String, String)> =
            ["appId", "timeStamp", "nonceStr", "package", "signType"]
                .iter()
                .map(|k| (k.to_string(), params[*k].as_str().unwrap().to_string()))
                .collect();
        f.push(("paySign".into(), pay_sign.to_string()));
        f.push(("return_url".into(), "https://shop.example/r/1".into()));
        f.push(("action".into(), action.into()));
        f
    };
    let good_sign = params["paySign"].as_str().unwrap();
    // A forged paySign is refused at every step and pays nothing.
    let mut forged = good_sign.to_string().into_bytes();
    forged[10] = if forged[10] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let r = no_redirect
        .post(&stand_in)
        .form(&form("pay", &forged))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("paySign"));
    assert_eq!(wx.query(&out).await.unwrap().state, TradeState::NotPaid);
    // The sheet shows the order; paying returns to the page and notifies.
    let sheet = no_redirect
        .post(&stand_in)
        .form(&form("", good_sign))
        .send()
        .await
        .unwrap();
    assert_eq!(sheet.status(), 200);
    let html = sheet.text().await.unwrap();
    assert!(
        html.contains("¥12.34") && html.contains("id=\"pay\""),
        "{html}"
    );
    let paid = no_redirect
        .post(&stand_in)
        .form(&form("pay", good_sign))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 302);
    assert_eq!(paid.headers()["location"], "https://shop.example/r/1");
    let trade = wx.query(&out).await.unwrap();
    assert_eq!(trade.state, TradeState::Succeeded);
    assert_eq!(trade.payer_id.as_deref(), Some(openid.as_str()));
    env.wait_for(|ns| {
        ns.iter().find_map(|n| match &n.event {
            NotificationEvent::Payment { trade } if trade.out_trade_no == out => Some(()),
            _ => None,
        })
    })
    .await;
    // Paid orders cannot be paid again.
    let twice = no_redirect
        .post(&stand_in)
        .form(&form("pay", good_sign))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 409);
}
