//! C2B payments without a wallet: the payment's aggregated link `/p/{token}`, its QR payload, the
//! page behind it — genuine, tampered and foreign tokens — and paying it inside WeChat and
//! UnionPay QuickPass (the sandboxes standing in for the wallet apps), once, on one account.

use serde_json::json;

use crate::cashier::{
    ALIPAY_UA, OUR_WALLET_UA, Payer, UNIONPAY_UA, UNKNOWN_UA, WECHAT_UA, audit, authorize_and_pay,
};
use crate::helpers::{MerchantClient, TestApp, spawn_app};

async fn page(app: &TestApp, url: &str, lang: &str, ua: &str) -> (u16, String) {
    let resp = app
        .http
        .get(url)
        .header("accept-language", lang)
        .header("user-agent", ua)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

async fn payment_rows(app: &TestApp) -> i64 {
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let n: i64 = match &db {
        paymux::db::Db::Sqlite(p) => sqlx::query_scalar("SELECT COUNT(*) FROM payments")
            .fetch_one(p)
            .await
            .unwrap(),
        paymux::db::Db::Postgres(p) => sqlx::query_scalar("SELECT COUNT(*) FROM payments")
            .fetch_one(p)
            .await
            .unwrap(),
    };
    db.close().await;
    n
}

#[tokio::test]
async fn qr_merchant_without_wallet_gets_a_link_any_wallet_can_open() {
    let app = spawn_app().await;
    let m = app.merchant("Bakery <&> Co").await;
    let r = m
        .create_payment(&json!({
            "merchant_order_no": "link-1", "amount": 1234, "currency": "CNY",
            "subject": "<script>alert(1)</script>", "method": "qr_merchant",
        }))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let url = r.body["pay_url"].as_str().expect("pay_url").to_string();
    assert!(url.starts_with(&format!("{}/p/", app.base)), "{url}");
    assert_eq!(r.body["qr_code"], url, "the QR payload is the link");
    assert_eq!(r.body["status"], "created");
    assert!(
        r.body["channel_account_id"].is_null(),
        "no channel chosen yet"
    );

    // The same link on every read, and in the list.
    let id = r.body["id"].as_str().unwrap().to_string();
    let again = m.get_payment(&id).await;
    assert_eq!(again.body["pay_url"], url);
    let listed = m.find_by_order_no("link-1").await;
    assert_eq!(listed.body["data"][0]["pay_url"], url);

    // The page: Chinese by default, amount exact, merchant text escaped, the detected app named.
    let wechat_ua = "Mozilla/5.0 (iPhone) AppleWebKit/605.1.15 MicroMessenger/8.0.49 NetType/WIFI";
    let (status, html) = page(&app, &url, "zh-CN,zh;q=0.9", wechat_ua).await;
    assert_eq!(status, 200);
    assert!(html.contains("¥12.34"), "{html}");
    assert!(html.contains("待支付"), "{html}");
    assert!(html.contains("当前应用: 微信"), "{html}");
    assert!(html.contains("id=\"pay-form\""), "{html}");
    assert!(html.contains("Bakery &lt;&amp;&gt; Co"), "{html}");
    assert!(
        !html.contains("<script>alert(1)</script>"),
        "subject must be escaped"
    );
    assert!(html.contains("&lt;script&gt;"), "{html}");
    let (_, en) = page(&app, &url, "en-US,en;q=0.8", "curl/8").await;
    assert!(
        en.contains("Awaiting payment") && en.contains("Pay to"),
        "{en}"
    );

    // Closed by the merchant: the page says so.
    assert_eq!(m.close_payment(&id).await.status, 200);
    let (_, closed) = page(&app, &url, "en", "curl/8").await;
    assert!(closed.contains("data-status=\"closed\""), "{closed}");
}

#[tokio::test]
async fn tampered_or_foreign_links_get_a_clear_page_and_nothing_is_written() {
    let app = spawn_app().await;
    let m = app.merchant("Shop").await;
    let r = m
        .create_payment(&json!({
            "merchant_order_no": "link-2", "amount": 500, "currency": "CNY",
            "subject": "x", "method": "qr_merchant",
        }))
        .await;
    let url = r.body["pay_url"].as_str().unwrap().to_string();
    let token = url.rsplit('/').next().unwrap().to_string();
    let before = payment_rows(&app).await;

    let mut flipped = token.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    for bad in [flipped.as_str(), "x", "%E4%B8%AD", &"A".repeat(43)] {
        let (status, html) = page(&app, &format!("{}/p/{bad}", app.base), "zh", "curl/8").await;
        assert_eq!(status, 404, "{bad}");
        assert!(html.contains("id=\"error\""), "{html}");
        assert!(html.contains("链接无效"), "{html}");
    }
    // A link of a payment that carries a wallet is not an aggregated link.
    let w = m
        .create_payment(&json!({
            "merchant_order_no": "link-3", "amount": 500, "currency": "CNY",
            "subject": "x", "method": "qr_merchant", "wallet": "alipay",
        }))
        .await;
    assert_eq!(w.status, 201, "{:?}", w.body);
    assert!(w.body["pay_url"].is_null());
    assert!(
        w.body["qr_code"]
            .as_str()
            .unwrap()
            .starts_with("https://qr.alipay.com/"),
        "{:?}",
        w.body
    );
    assert_eq!(
        payment_rows(&app).await,
        before + 1,
        "only the alipay payment was added"
    );
}

/// A `qr_merchant` payment without a wallet: its id and link.
async fn link(
    m: &MerchantClient,
    no: &str,
    amount: i64,
    extra: serde_json::Value,
) -> (String, String) {
    let mut body = json!({
        "merchant_order_no": no, "amount": amount, "currency": "CNY",
        "subject": "订单 #42", "method": "qr_merchant",
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = m.create_payment(&body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    (
        r.body["id"].as_str().unwrap().to_string(),
        r.body["pay_url"].as_str().unwrap().to_string(),
    )
}

/// Opens the link in the payer's wallet, presses pay and goes through the wallet: the result URL.
async fn pay_link(payer: &Payer, url: &str) -> String {
    let page = payer.get(url).await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.text.contains("id=\"pay-form\""), "{}", page.text);
    let started = payer.post_form(&format!("{url}/pay"), &[]).await;
    assert_eq!(started.status, 303, "{}", started.text);
    let result = authorize_and_pay(payer, &started.location.unwrap(), url).await;
    assert_eq!(result, format!("{url}/r"));
    result
}

/// The kind of each channel account (by id).
async fn account_kinds(app: &TestApp) -> std::collections::HashMap<String, String> {
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let sql = "SELECT id, kind FROM channel_accounts";
    let rows: Vec<(uuid::Uuid, String)> = match &db {
        paymux::db::Db::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
        paymux::db::Db::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
    };
    db.close().await;
    rows.into_iter()
        .map(|(id, k)| (id.to_string(), k))
        .collect()
}

#[tokio::test]
async fn a_link_is_paid_in_wechat_and_another_in_unionpay_each_posted_once() {
    let app = spawn_app().await;
    let m = app.merchant("Dumpling House").await;
    let kinds = account_kinds(&app).await;
    for (ua, no, amount, kind) in [
        (WECHAT_UA, "pl-wx", 1_888, "wechat_v3"),
        (UNIONPAY_UA, "pl-up", 2_999, "unionpay_qr"),
    ] {
        let (id, url) = link(&m, no, amount, json!({})).await;
        let payer = Payer::new(ua, "zh-CN");
        let result = pay_link(&payer, &url).await;
        let p = m.get_payment(&id).await.body;
        assert_eq!(p["status"], "succeeded", "{p}");
        assert_eq!(p["amount"], amount);
        assert_eq!(p["method"], "qr_merchant");
        assert!(
            p["wallet"].is_null(),
            "the link stays an aggregated link: {p}"
        );
        assert_eq!(p["pay_url"], url.as_str());
        assert!(p["channel_trade_no"].is_string(), "{p}");
        let account = p["channel_account_id"].as_str().unwrap();
        assert_eq!(kinds[account], kind, "{p}");
        // Paid: the link says so and offers nothing more; the result page stays.
        let again = payer.get(&url).await;
        assert_eq!(again.status, 200);
        assert!(
            again.text.contains("id=\"paid\"") && !again.text.contains("pay-form"),
            "{}",
            again.text
        );
        let posted = payer.post_form(&format!("{url}/pay"), &[]).await;
        assert!(posted.text.contains("id=\"paid\""), "{}", posted.text);
        assert!(
            payer
                .get(&result)
                .await
                .text
                .contains("data-status=\"succeeded\"")
        );
    }
    let report = audit(&app).await;
    assert_eq!((report.succeeded_payments, report.ledger.entries), (2, 2));
}

#[tokio::test]
async fn a_link_keeps_one_account_reopened_in_its_wallet_it_reuses_the_order() {
    let app = spawn_app().await;
    let m = app.merchant("Noodle Bar").await;
    let kinds = account_kinds(&app).await;
    let (id, url) = link(&m, "pl-one", 1_500, json!({})).await;
    // WeChat gets as far as the pay page: the WeChat account is attached, its order created.
    let wechat = Payer::new(WECHAT_UA, "zh-CN");
    let started = wechat.post_form(&format!("{url}/pay"), &[]).await;
    assert_eq!(started.status, 303, "{}", started.text);
    let back = wechat.get(&started.location.unwrap()).await;
    let pay_page = wechat.get(&back.location.unwrap()).await;
    assert_eq!(pay_page.status, 200, "{}", pay_page.text);
    let p = m.get_payment(&id).await.body;
    let account = p["channel_account_id"]
        .as_str()
        .expect("attached")
        .to_string();
    assert_eq!(kinds[&account], "wechat_v3");
    assert_eq!(p["status"], "created");

    // Opened in Alipay and in UnionPay: refused clearly, no other account, no other order.
    for ua in [ALIPAY_UA, UNIONPAY_UA] {
        let other = Payer::new(ua, "en");
        let page = other.get(&url).await;
        assert_eq!(page.status, 409, "{}", page.text);
        assert!(
            page.text.contains("id=\"other-app\"") && page.text.contains("WeChat"),
            "{}",
            page.text
        );
        let posted = other.post_form(&format!("{url}/pay"), &[]).await;
        assert_eq!(posted.status, 409, "{}", posted.text);
    }
    assert_eq!(
        m.get_payment(&id).await.body["channel_account_id"],
        account.as_str()
    );

    // A state of the WeChat flow cannot be moved to another link, nor tampered with.
    let (_, other_url) = link(&m, "pl-two", 1_500, json!({})).await;
    let started = wechat.post_form(&format!("{url}/pay"), &[]).await;
    let back = wechat.get(&started.location.unwrap()).await;
    let callback = back.location.unwrap();
    let moved = callback.replace(&url, &other_url);
    assert_eq!(wechat.get(&moved).await.status, 400);
    let q: std::collections::HashMap<String, String> = reqwest::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let mut st = q["state"].clone().into_bytes();
    st[10] = if st[10] == b'A' { b'B' } else { b'A' };
    let forged = format!(
        "{url}/auth?code={}&state={}",
        q["code"],
        String::from_utf8(st).unwrap()
    );
    assert_eq!(wechat.get(&forged).await.status, 400);
    // The genuine callback: the same account, the same channel order, paid once.
    let result = {
        let pay_page = wechat.get(&callback).await;
        assert_eq!(pay_page.status, 200, "{}", pay_page.text);
        // Reopened from the start in WeChat: the same order again, then paid.
        pay_link(&wechat, &url).await
    };
    let p = m.get_payment(&id).await.body;
    assert_eq!(
        (p["status"].as_str(), p["channel_account_id"].as_str()),
        (Some("succeeded"), Some(account.as_str()))
    );
    assert!(
        wechat
            .get(&result)
            .await
            .text
            .contains("data-status=\"succeeded\"")
    );
    let report = audit(&app).await;
    assert_eq!((report.succeeded_payments, report.ledger.entries), (1, 1));
}

#[tokio::test]
async fn links_that_cannot_be_paid_get_clear_pages_and_nothing_is_created() {
    let app = spawn_app().await;
    let m = app.merchant("Fruit Stall").await;
    let before = payment_rows(&app).await;
    let (open_id, open) = link(&m, "pl-open", 700, json!({})).await;
    let (closed_id, closed) = link(&m, "pl-closed", 700, json!({})).await;
    assert_eq!(m.close_payment(&closed_id).await.status, 200);
    let (expired_id, expired) = link(&m, "pl-expired", 700, json!({"expires_in_seconds": 1})).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;

    // An unknown app and our own wallet: the apps that can pay, in Chinese and in English.
    let page = Payer::new(UNKNOWN_UA, "zh-CN").get(&open).await;
    assert_eq!(page.status, 200);
    for want in [
        "id=\"apps\"",
        "<li>微信</li>",
        "<li>支付宝</li>",
        "<li>云闪付</li>",
        "¥7.00",
    ] {
        assert!(page.text.contains(want), "{want}: {}", page.text);
    }
    assert!(!page.text.contains("pay-form"));
    let posted = Payer::new(UNKNOWN_UA, "zh-CN")
        .post_form(&format!("{open}/pay"), &[])
        .await;
    assert_eq!(posted.status, 200);
    assert!(posted.text.contains("id=\"apps\""), "{}", posted.text);
    let ours = Payer::new(OUR_WALLET_UA, "en");
    let page = ours.get(&open).await;
    assert!(
        page.text.contains("id=\"own-wallet\"")
            && page.text.contains("Scan this code with one of these apps"),
        "{}",
        page.text
    );
    assert!(
        ours.post_form(&format!("{open}/pay"), &[])
            .await
            .text
            .contains("id=\"own-wallet\"")
    );

    // Closed and expired payments: a 410 page, in every app, for every step.
    let wechat = Payer::new(WECHAT_UA, "zh-CN");
    for (url, id) in [(&closed, "closed"), (&expired, "")] {
        let page = wechat.get(url).await;
        assert_eq!(page.status, 410, "{}", page.text);
        assert!(page.text.contains("请勿付款"), "{}", page.text);
        if !id.is_empty() {
            assert!(page.text.contains(&format!("id=\"{id}\"")), "{}", page.text);
        }
        assert!(!page.text.contains("pay-form"));
        let posted = wechat.post_form(&format!("{url}/pay"), &[]).await;
        assert_eq!(posted.status, 410, "{}", posted.text);
        assert!(posted.location.is_none());
    }
    // Tampered tokens at every step.
    let mut t = open.rsplit('/').next().unwrap().to_string().into_bytes();
    t[5] = if t[5] == b'A' { b'B' } else { b'A' };
    let bad = format!("{}/p/{}", app.base, String::from_utf8(t).unwrap());
    for (method, url) in [
        ("GET", bad.clone()),
        ("POST", format!("{bad}/pay")),
        ("GET", format!("{bad}/auth?code=x&state=y")),
        ("GET", format!("{bad}/r")),
    ] {
        let page = if method == "GET" {
            wechat.get(&url).await
        } else {
            wechat.post_form(&url, &[]).await
        };
        assert_eq!(page.status, 404, "{url}: {}", page.text);
        assert!(page.text.contains("链接无效"), "{}", page.text);
    }
    assert_eq!(
        app.http
            .get(format!("{bad}/r/status"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Nothing was attached or created by any of it.
    assert_eq!(payment_rows(&app).await, before + 3);
    for id in [&open_id, &closed_id, &expired_id] {
        let p = m.get_payment(id).await.body;
        assert!(p["channel_account_id"].is_null(), "{p}");
    }
    assert_eq!(m.get_payment(&open_id).await.body["status"], "created");
}

#[tokio::test]
async fn without_a_qr_merchant_route_a_link_is_paid_through_the_qr_static_route() {
    use paymux::routing::store::{self, NewAccount, RouteSpec, TargetSpec};
    use paymux_model::{ChannelKind, PayMethod, WalletBrand};
    let app = spawn_app().await;
    let m = app.merchant("Flower Shop").await;
    // A second Alipay account takes the merchant's qr_static route; its qr_merchant route goes.
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let secrets = paymux::startup::secret_box(&app.config, &db).await.unwrap();
    let merchant = m.creds.merchant_id;
    let second = store::create_account(
        &db,
        &secrets,
        merchant,
        NewAccount {
            name: "alipay static".into(),
            kind: ChannelKind::Alipay,
            credentials: json!({"sandbox": true}),
            cost_rate_bps: 30,
            enabled: Some(true),
        },
    )
    .await
    .unwrap();
    store::set_route(
        &db,
        merchant,
        WalletBrand::Alipay,
        PayMethod::QrStatic,
        RouteSpec {
            rule: paymux::routing::Rule::Priority,
            targets: vec![TargetSpec {
                channel_account_id: second.id,
                priority: 0,
                weight: 1,
            }],
        },
    )
    .await
    .unwrap();
    assert!(
        store::delete_route(&db, merchant, WalletBrand::Alipay, PayMethod::QrMerchant)
            .await
            .unwrap()
    );
    db.close().await;
    // Every node sees a routing change within `routing_refresh_ms`.
    tokio::time::sleep(std::time::Duration::from_millis(
        app.config.routing_refresh_ms + 500,
    ))
    .await;

    let (id, url) = link(&m, "pl-static", 4_200, json!({})).await;
    pay_link(&Payer::new(ALIPAY_UA, "zh-CN"), &url).await;
    let p = m.get_payment(&id).await.body;
    assert_eq!(p["status"], "succeeded", "{p}");
    assert_eq!(
        p["channel_account_id"],
        second.id.to_string().as_str(),
        "{p}"
    );
    let report = audit(&app).await;
    assert_eq!((report.succeeded_payments, report.ledger.entries), (1, 1));
}

/// The pay button of a link is limited per link (`cashier_rate_limit_*`), apart from the merchant's
/// signed API budget: a payer pressing it in a loop gets `429` pages, and the merchant's own API
/// calls still go through.
#[tokio::test]
async fn a_payer_looping_on_a_link_does_not_use_up_the_merchants_api_budget() {
    let db = crate::helpers::fresh_database().await;
    let mut config = crate::helpers::test_config(&db);
    config.sandbox_time_compression = 100;
    config.rate_limit_per_second = 1;
    config.rate_limit_burst = 4;
    config.cashier_rate_limit_per_second = 1;
    config.cashier_rate_limit_burst = 2;
    let app = crate::helpers::spawn_with(db, config).await;
    let m = app.merchant("Book Shop").await;
    let (id, url) = link(&m, "loop-1", 990, json!({})).await;
    let wechat = Payer::new(WECHAT_UA, "zh-CN");
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(wechat.post_form(&format!("{url}/pay"), &[]).await.status);
    }
    assert_eq!(statuses[..2], [303, 303], "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let r = m.get_payment(&id).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}
