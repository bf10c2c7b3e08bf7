//! C2B payments with a known wallet end to end: the channel's own code from the mounted sandbox, the
//! payer paying in the sandbox wallet, the channel's notification settling the payment and posting
//! it to the ledger once — duplicates, forgeries and late successes included.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{MerchantClient, TestApp, fresh_database, spawn_with, test_config};

async fn app() -> TestApp {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    spawn_with(db, config).await
}

fn qr_body(order_no: &str, amount: i64, wallet: &str) -> Value {
    json!({
        "merchant_order_no": order_no,
        "amount": amount,
        "currency": "CNY",
        "subject": "面包",
        "method": "qr_merchant",
        "wallet": wallet,
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
async fn wechat_native_code_paid_and_notified_once() {
    let app = app().await;
    let m = app.merchant("Bakery").await;
    let r = m.create_payment(&qr_body("q-1", 990, "wechat")).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["status"], "created");
    let qr = r.body["qr_code"].as_str().unwrap().to_string();
    assert!(qr.starts_with("weixin://wxpay/bizpayurl?pr="), "{qr}");
    let id = r.body["id"].as_str().unwrap().to_string();

    // The payer scans and pays in the sandbox wallet; WeChat notifies paymux.
    let paid = app
        .http
        .post(format!("{}/sandbox/wechat/sandbox/pay", app.base))
        .json(&json!({"code_url": qr}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    let p = wait_status(&m, &id, "succeeded").await;
    assert!(p["channel_trade_no"].as_str().unwrap().starts_with("42"));
    assert_eq!(p["late_success"], false);

    // The channel re-sends it three times: still one payment entry.
    let out_trade_no = id.replace('-', "");
    let resend = app
        .http
        .post(format!(
            "{}/sandbox/wechat/sandbox/notifications/{out_trade_no}?times=3",
            app.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resend.status(), 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = audit(&app).await;
    assert_eq!((report.succeeded_payments, report.ledger.entries), (1, 1));
}

#[tokio::test]
async fn forged_notifications_change_nothing() {
    let app = app().await;
    let m = app.merchant("Bakery").await;
    let r = m.create_payment(&qr_body("q-2", 500, "wechat")).await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let account = {
        // The channel account the payment was routed to.
        let p = m.get_payment(&id).await;
        p.body["channel_account_id"].as_str().unwrap().to_string()
    };
    let forged = app
        .http
        .post(format!("{}/notify/{account}", app.base))
        .header("wechatpay-timestamp", chrono::Utc::now().timestamp().to_string())
        .header("wechatpay-nonce", "abc")
        .header("wechatpay-serial", "PUB_KEY_ID_0")
        .header("wechatpay-signature", "Zm9yZ2Vk")
        .body(r#"{"id":"x","create_time":"2026-01-01T00:00:00+08:00","event_type":"TRANSACTION.SUCCESS","resource":{"algorithm":"AEAD_AES_256_GCM","ciphertext":"AAAA","nonce":"123456789012","associated_data":"transaction"}}"#)
        .send()
        .await
        .unwrap();
    assert!(forged.status().is_server_error() || forged.status().is_client_error());
    let unknown = app
        .http
        .post(format!("{}/notify/not-an-id", app.base))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(m.get_payment(&id).await.body["status"], "created");
    let report = audit(&app).await;
    assert_eq!(report.ledger.entries, 0);
}

#[tokio::test]
async fn a_success_after_close_is_a_late_success_posted_and_flagged() {
    let app = app().await;
    let m = app.merchant("Bakery").await;
    let mut body = qr_body("q-3", 1_200, "wechat");
    // Nothing listens there: the event is in the outbox, its delivery retried later.
    body["notify_url"] = json!("http://127.0.0.1:9/paymux-webhooks");
    let r = m.create_payment(&body).await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let qr = r.body["qr_code"].as_str().unwrap().to_string();
    // Our side gave up on it while the channel still had the order open (as an expiry that could
    // not reach the channel would); a merchant's close is made at the channel first.
    app.sql_execute(
        "UPDATE payments SET status = 'closed', closed_reason = 'expired' WHERE merchant_order_no = 'q-3'",
    )
    .await;
    assert_eq!(m.get_payment(&id).await.body["status"], "closed");
    // The payer had the code open and pays anyway; the channel says the money moved.
    app.http
        .post(format!("{}/sandbox/wechat/sandbox/pay", app.base))
        .json(&json!({"code_url": qr}))
        .send()
        .await
        .unwrap();
    let p = wait_status(&m, &id, "succeeded").await;
    assert_eq!(p["late_success"], true);
    // The merchant is told…
    let hooks = m
        .send(
            reqwest::Method::GET,
            &format!("/v1/webhooks?payment_id={id}"),
            None,
        )
        .await;
    let types: Vec<&str> = hooks.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["type"].as_str())
        .collect();
    assert!(types.contains(&"payment.succeeded"), "{:?}", hooks.body);
    // …and operations get an open exception, once, however often the channel repeats itself.
    let (_, token) = crate::ops_api::operator(&app, "Lin", "viewer").await;
    let no = uuid::Uuid::parse_str(&id).unwrap().simple().to_string();
    let mut late = Vec::new();
    for _ in 0..100 {
        let list = crate::ops_api::get(&app, &token, "/exceptions?limit=100").await;
        late = list.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["out_trade_no"] == no.as_str())
            .cloned()
            .collect();
        if !late.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0]["class"], "late_success");
    assert_eq!(late[0]["status"], "open");
    assert_eq!(late[0]["platform_amount_minor"], 1_200);
    let report = audit(&app).await;
    assert_eq!(report.ledger.entries, 1);
}

/// A merchant's close is made at the channel first: the payer can no longer pay the order. A code
/// payment being charged cannot be closed (it ends by itself at its deadline).
#[tokio::test]
async fn a_merchant_close_closes_the_order_at_the_channel() {
    let app = app().await;
    let m = app.merchant("Bakery").await;
    let r = m.create_payment(&qr_body("q-close", 1_500, "wechat")).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let closed = m.close_payment(&id).await;
    assert_eq!(closed.status, 200, "{:?}", closed.body);
    assert_eq!(closed.body["closed_reason"], "closed_by_merchant");
    let paid = app
        .http
        .post(format!("{}/sandbox/wechat/sandbox/pay", app.base))
        .json(&json!({"code_url": r.body["qr_code"]}))
        .send()
        .await
        .unwrap();
    assert!(
        paid.status().is_client_error(),
        "the channel still took the payment: {}",
        paid.status()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(m.get_payment(&id).await.body["status"], "closed");

    let p = m
        .create_payment(&json!({
            "merchant_order_no": "q-processing", "amount": 800, "currency": "CNY", "subject": "面包",
            "method": "code_scan", "auth_code": "134567890123451002",
        }))
        .await;
    assert_eq!(p.status, 202, "{:?}", p.body);
    let refused = m.close_payment(p.body["id"].as_str().unwrap()).await;
    assert_eq!(
        (refused.status.as_u16(), refused.code()),
        (409, "invalid_state"),
        "{:?}",
        refused.body
    );
    let report = audit(&app).await;
    assert_eq!(report.ledger.entries, 0);
}

#[tokio::test]
async fn alipay_precreate_paid_and_notified() {
    let app = app().await;
    let m = app.merchant("Bakery").await;
    let r = m.create_payment(&qr_body("q-4", 2_000, "alipay")).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let qr = r.body["qr_code"].as_str().unwrap().to_string();
    assert!(qr.starts_with("https://qr.alipay.com/"), "{qr}");
    let id = r.body["id"].as_str().unwrap().to_string();
    let paid = app
        .http
        .post(format!("{}/sandbox/alipay/sandbox/pay", app.base))
        .json(&json!({"qr_code": qr}))
        .send()
        .await
        .unwrap();
    assert!(paid.status().is_success(), "{}", paid.text().await.unwrap());
    wait_status(&m, &id, "succeeded").await;
    let report = audit(&app).await;
    assert_eq!(report.ledger.entries, 1);
}

#[tokio::test]
async fn a_wallet_without_a_channel_is_no_route() {
    let app = app().await;
    let m = app.merchant("Bakery").await;
    let r = m.create_payment(&qr_body("q-5", 100, "ecny")).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "no_route"),
        "{:?}",
        r.body
    );
    let found = m.find_by_order_no("q-5").await;
    assert_eq!(found.body["data"].as_array().map(Vec::len), Some(0));
}

/// A notification signed with the channel's real key but for another amount is refused and changes
/// nothing; the same notification with the right amount is applied (so the refusal was the amount).
#[tokio::test]
async fn a_validly_signed_notification_with_a_wrong_amount_is_refused() {
    use paymux_channels::crypto::RsaSigner;
    use paymux_channels::wechat::sandbox::SandboxAccount;
    use paymux_channels::wechat::sign::{EncryptedResource, PlatformSignature};

    let app = app().await;
    let m = app.merchant("Bakery").await;
    let r = m.create_payment(&qr_body("q-6", 500, "wechat")).await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let account = r.body["channel_account_id"].as_str().unwrap().to_string();
    let acct = SandboxAccount::load_or_create(&app.config.data_dir.join("sandbox")).unwrap();
    let signer = RsaSigner::from_pem(&acct.platform_private_key).unwrap();
    let notify = |total: i64| {
        let plain = json!({
            "appid": acct.appid, "mchid": acct.mchid, "out_trade_no": id.replace('-', ""),
            "transaction_id": "4200000000202611230000000001", "trade_type": "NATIVE",
            "trade_state": "SUCCESS", "success_time": "2026-11-23T10:00:00+08:00",
            "amount": {"total": total, "currency": "CNY"},
        });
        let resource = EncryptedResource::encrypt(
            acct.api_v3_key.as_bytes(),
            "transaction",
            "transaction",
            plain.to_string().as_bytes(),
        )
        .unwrap();
        let body = json!({
            "id": format!("n-{total}"), "create_time": "2026-11-23T10:00:01+08:00",
            "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS",
            "summary": "支付成功", "resource": resource,
        })
        .to_string();
        let sig = PlatformSignature::sign(
            &signer,
            &acct.platform_serial,
            chrono::Utc::now().timestamp(),
            body.as_bytes(),
        );
        (sig, body)
    };
    let send = |(sig, body): (PlatformSignature, String)| {
        app.http
            .post(format!("{}/notify/{account}", app.base))
            .header("wechatpay-timestamp", sig.timestamp)
            .header("wechatpay-nonce", sig.nonce)
            .header("wechatpay-serial", sig.serial)
            .header("wechatpay-signature", sig.signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let wrong = send(notify(1)).await.unwrap();
    assert!(!wrong.status().is_success(), "{}", wrong.status());
    assert_eq!(m.get_payment(&id).await.body["status"], "created");
    assert_eq!(audit(&app).await.ledger.entries, 0);
    let right = send(notify(500)).await.unwrap();
    assert!(right.status().is_success(), "{}", right.status());
    wait_status(&m, &id, "succeeded").await;
    assert_eq!(audit(&app).await.ledger.entries, 1);
}

#[tokio::test]
async fn unionpay_c2b_code_paid_and_notified_once() {
    let app = app().await;
    let m = app.merchant("Noodles").await;
    let r = m.create_payment(&qr_body("q-up", 3_300, "unionpay")).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let qr = r.body["qr_code"].as_str().unwrap().to_string();
    assert!(!qr.is_empty());
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["status"], "created");
    let paid = app
        .http
        .post(format!("{}/sandbox/unionpay/sandbox/pay", app.base))
        .json(&json!({"qr_code": qr}))
        .send()
        .await
        .unwrap();
    assert!(paid.status().is_success(), "{}", paid.text().await.unwrap());
    let p = wait_status(&m, &id, "succeeded").await;
    assert!(p["channel_trade_no"].is_string(), "{p}");
    let report = audit(&app).await;
    assert_eq!(report.ledger.entries, 1, "one payment entry");
}

/// Every notification delivered twice, each after a random delay (so they overtake one another),
/// for payments in two channels and a refund sent while its payment's duplicates are still on the
/// way: every payment and the refund end where they should, each posted exactly once.
#[tokio::test]
async fn duplicated_and_reordered_notifications_post_everything_once() {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    config.sandbox_faults = paymux_channels::sandbox::Faults {
        duplicate_notify_pct: 100.0,
        notify_jitter_ms: 400,
        ..Default::default()
    };
    let app = spawn_with(db, config).await;
    let m = app.merchant("Bakery").await;
    let mut ids = Vec::new();
    for (i, wallet) in ["wechat", "alipay", "wechat", "alipay", "wechat", "alipay"]
        .into_iter()
        .enumerate()
    {
        let r = m
            .create_payment(&qr_body(&format!("dup-{i}"), 1_000 + i as i64, wallet))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let qr = r.body["qr_code"].as_str().unwrap().to_string();
        let key = if wallet == "wechat" {
            "code_url"
        } else {
            "qr_code"
        };
        let paid = app
            .http
            .post(format!("{}/sandbox/{wallet}/sandbox/pay", app.base))
            .json(&json!({ key: qr }))
            .send()
            .await
            .unwrap();
        assert!(paid.status().is_success(), "{}", paid.text().await.unwrap());
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    // Refund the first as soon as it succeeded: its duplicate success notifications may come after
    // the refund's own notifications.
    wait_status(&m, &ids[0], "succeeded").await;
    let refund = m
        .send(
            reqwest::Method::POST,
            &format!("/v1/payments/{}/refunds", ids[0]),
            Some(&json!({"merchant_refund_no": "dup-r1", "amount": 400})),
        )
        .await;
    assert!(refund.status.is_success(), "{:?}", refund.body);
    let refund_id = refund.body["id"].as_str().unwrap().to_string();
    for id in &ids {
        wait_status(&m, id, "succeeded").await;
    }
    let mut refunded = false;
    for _ in 0..400 {
        let r = m
            .send(
                reqwest::Method::GET,
                &format!("/v1/refunds/{refund_id}"),
                None,
            )
            .await;
        if r.body["status"] == "succeeded" {
            refunded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(refunded, "the refund never succeeded");
    // Let every delayed duplicate arrive.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let report = audit(&app).await;
    assert_eq!(
        (report.succeeded_payments, report.ledger.entries),
        (6, 7),
        "six payments and one refund, each posted once"
    );
    assert_eq!(m.get_payment(&ids[0]).await.body["refunded_amount"], 400);
}

/// Forged Alipay and UnionPay notifications (their own formats, a signature that is not the
/// channel's) are refused with the channel's failure answer and change nothing; the genuine
/// notification after the payer pays is applied once.
#[tokio::test]
async fn forged_alipay_and_unionpay_notifications_change_nothing() {
    let app = app().await;
    let m = app.merchant("Bakery").await;
    for (wallet, amount) in [("alipay", 2_000), ("unionpay", 2_100)] {
        let r = m
            .create_payment(&qr_body(&format!("forged-{wallet}"), amount, wallet))
            .await;
        assert_eq!(r.status, 201, "{wallet}: {:?}", r.body);
        let id = r.body["id"].as_str().unwrap().to_string();
        let qr = r.body["qr_code"].as_str().unwrap().to_string();
        let account = r.body["channel_account_id"].as_str().unwrap().to_string();
        let no = id.replace('-', "");
        let (form, refused_status, refused_body) = if wallet == "alipay" {
            (
                format!(
                    "notify_type=trade_status_sync&notify_id=1&out_trade_no={no}&trade_no=2026120322001400001\
                     &trade_status=TRADE_SUCCESS&total_amount=20.00&sign_type=RSA2&sign=Zm9yZ2Vk"
                ),
                200,
                "failure",
            )
        } else {
            (
                format!(
                    "version=5.1.0&encoding=UTF-8&signMethod=01&txnType=01&txnSubType=07&orderId={no}\
                     &respCode=00&respMsg=success&txnAmt=2100&queryId=1234&signature=Zm9yZ2Vk"
                ),
                500,
                "fail",
            )
        };
        let forged = app
            .http
            .post(format!("{}/notify/{account}", app.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status().as_u16(), refused_status, "{wallet}");
        assert_eq!(forged.text().await.unwrap(), refused_body, "{wallet}");
        assert_eq!(
            m.get_payment(&id).await.body["status"],
            "created",
            "{wallet}"
        );

        let paid = app
            .http
            .post(format!("{}/sandbox/{wallet}/sandbox/pay", app.base))
            .json(&json!({"qr_code": qr}))
            .send()
            .await
            .unwrap();
        assert!(paid.status().is_success(), "{}", paid.text().await.unwrap());
        wait_status(&m, &id, "succeeded").await;
    }
    let report = audit(&app).await;
    assert_eq!((report.succeeded_payments, report.ledger.entries), (2, 2));
}
