//! C2B payments without a wallet: the payment's aggregated link `/p/{token}`, its QR payload, and
//! the page behind it — genuine, tampered and foreign tokens.

use serde_json::json;

use crate::helpers::{TestApp, spawn_app};

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
    assert!(html.contains("当前应用: 微信支付"), "{html}");
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
