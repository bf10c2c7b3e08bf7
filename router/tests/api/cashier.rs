//! The one-code cashier over HTTP, the payer's journey redirect by redirect (the browser tests in
//! `scripts/cashier-browser/` walk the same journey in headless Chromium): a static code opened
//! in WeChat, Alipay and UnionPay QuickPass, the amount, the wallet's OAuth / `userAuth` step, the
//! sandbox's stand-in of the wallet's payment sheet, the result page — and the refusals (other
//! apps, our own wallet, which has no channel yet) that write nothing, and the payer who cancels on
//! the wallet's sheet, whose payment ends closed with nothing posted.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{MerchantClient, TestApp, fresh_database, spawn_app, spawn_with, test_config};

pub const WECHAT_UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/120.0 Mobile Safari/537.36 MicroMessenger/8.0.49.2600(0x28003133) WeChat/arm64 Weixin NetType/WIFI Language/zh_CN";
pub const ALIPAY_UA: &str = "Mozilla/5.0 (Linux; U; Android 14; zh-CN; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/120.0 Mobile Safari/537.36 NebulaSDK/1.8.100112 Nebula AlipayDefined(nt:WIFI,ws:412|0|2.625) AliApp(AP/10.5.86.8000) AlipayClient/10.5.86.8000 Language/zh-Hans";
pub const UNKNOWN_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
pub const UNIONPAY_UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UQ1A.240105.004; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/120.0 Mobile Safari/537.36 (com.unionpay.mobilepay) (cordova 7.0.0) (updebug 0) (version 1003) (UnionPay/1.0 CloudPay) (clientVersion 203) (language zh_CN) (languageFamily zh_CN) (upHtml) (walletMode 00)";
pub const OUR_WALLET_UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36 PaymuxWallet/2.3.1";

/// A payer's browser: a user agent, no automatic redirects.
pub struct Payer {
    http: reqwest::Client,
    ua: &'static str,
    lang: &'static str,
}

pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub text: String,
}

impl Payer {
    pub fn new(ua: &'static str, lang: &'static str) -> Payer {
        Payer {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            ua,
            lang,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Page {
        let r = req
            .header("user-agent", self.ua)
            .header("accept-language", self.lang)
            .send()
            .await
            .unwrap();
        Page {
            status: r.status().as_u16(),
            location: r
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap().to_string()),
            text: r.text().await.unwrap(),
        }
    }

    pub async fn get(&self, url: &str) -> Page {
        self.send(self.http.get(url)).await
    }

    pub async fn post_form(&self, url: &str, form: &[(String, String)]) -> Page {
        self.send(self.http.post(url).form(form)).await
    }
}

/// The JSON of `<script type="application/json" id="{id}">`.
pub fn script_json(html: &str, id: &str) -> Value {
    let open = format!("<script type=\"application/json\" id=\"{id}\">");
    let start = html
        .find(&open)
        .unwrap_or_else(|| panic!("no #{id} in {html}"))
        + open.len();
    let end = start + html[start..].find("</script>").unwrap();
    serde_json::from_str(&html[start..end]).unwrap()
}

/// The form fields of the stand-in form on the pay page.
pub fn stand_in_form(html: &str) -> (String, Vec<(String, String)>) {
    let start = html
        .find("id=\"stand-in\"")
        .expect("a sandbox stand-in form");
    let form = &html[html[..start].rfind("<form").unwrap()..];
    let form = &form[..form.find("</form>").unwrap()];
    let attr = |tag: &str, name: &str| -> String {
        let k = format!("{name}=\"");
        let s = tag.find(&k).unwrap() + k.len();
        tag[s..s + tag[s..].find('"').unwrap()]
            .replace("&amp;", "&")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
    };
    let action = attr(form, "action");
    let fields = form
        .split("<input ")
        .skip(1)
        .map(|i| (attr(i, "name"), attr(i, "value")))
        .collect();
    (action, fields)
}

pub async fn payments(m: &MerchantClient) -> Vec<Value> {
    let r = m.send(Method::GET, "/v1/payments?limit=100", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["data"].as_array().unwrap().clone()
}

pub async fn audit(app: &TestApp) -> paymux::ledger_audit::PlatformAudit {
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let report = paymux::ledger_audit::audit(&db).await.unwrap();
    db.close().await;
    assert!(report.is_clean(), "{}: {report}", app.backend());
    report
}

pub async fn new_code(m: &MerchantClient, body: Value) -> String {
    let r = m.send(Method::POST, "/v1/codes", Some(&body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body["url"].as_str().unwrap().to_string()
}

/// Opens the code, enters `amount`, goes through OAuth and the wallet stand-in; returns the
/// result page's URL once it says `succeeded`.
async fn pay(payer: &Payer, code_url: &str, amount: &str) -> String {
    let page = payer.get(code_url).await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.text.contains("id=\"pay-form\""), "{}", page.text);
    assert!(page.text.contains("width=device-width"));
    let submitted = payer
        .post_form(
            &format!("{code_url}/pay"),
            &[("amount".into(), amount.into())],
        )
        .await;
    assert_eq!(submitted.status, 303, "{}", submitted.text);
    authorize_and_pay(payer, &submitted.location.unwrap(), code_url).await
}

/// From the wallet's authorisation step (`authorize`, the sandbox's OAuth / `userAuth` page) back
/// to `<page_url>/auth`, the pay page, the wallet stand-in and the result page; returns the result
/// page's URL once it says `succeeded`.
pub async fn authorize_and_pay(payer: &Payer, authorize: &str, page_url: &str) -> String {
    let result = authorize_and_answer(payer, authorize, page_url, "pay").await;
    for _ in 0..200 {
        let s = payer.get(&format!("{result}/status")).await;
        let v: Value = serde_json::from_str(&s.text).unwrap();
        if v["status"] == "succeeded" {
            let page = payer.get(&result).await;
            assert!(
                page.text.contains("data-status=\"succeeded\""),
                "{}",
                page.text
            );
            return result;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the payment at {result} never succeeded");
}

/// From the wallet's authorisation step to the wallet stand-in, whose sheet the payer answers with
/// `answer` (`pay` or `cancel`); returns the result page's URL the stand-in returns to.
async fn authorize_and_answer(
    payer: &Payer,
    authorize: &str,
    page_url: &str,
    answer: &str,
) -> String {
    assert!(authorize.contains("/sandbox/"), "{authorize}");
    let back = payer.get(authorize).await;
    assert_eq!(back.status, 302, "{}", back.text);
    let callback = back.location.unwrap();
    assert!(
        callback.starts_with(&format!("{page_url}/auth?")),
        "{callback}"
    );
    let pay_page = payer.get(&callback).await;
    assert_eq!(pay_page.status, 200, "{}", pay_page.text);
    let config = script_json(&pay_page.text, "config");
    let (action, mut form) = stand_in_form(&pay_page.text);
    assert_eq!(config["standIn"], action.as_str());
    // The wallet's sheet, then paying, which returns to the result page.
    let sheet = payer.post_form(&action, &form).await;
    assert_eq!(sheet.status, 200, "{}", sheet.text);
    form.push(("action".into(), answer.into()));
    let answered = payer.post_form(&action, &form).await;
    assert_eq!(answered.status, 302, "{}", answered.text);
    let result = answered.location.unwrap();
    assert_eq!(result, config["result"].as_str().unwrap());
    let page = payer.get(&result).await;
    assert_eq!(page.status, 200);
    result
}

#[tokio::test]
async fn a_static_code_is_paid_in_wechat_and_in_alipay_and_posted_once() {
    let app = spawn_app().await;
    let m = app.merchant("老王面包店").await;
    let open = new_code(
        &m,
        json!({"store_id": "store-7", "terminal_id": "till-2", "description": "人民路店"}),
    )
    .await;
    let fixed = new_code(&m, json!({"store_id": "store-8", "fixed_amount": 880})).await;

    let wechat = Payer::new(WECHAT_UA, "zh-CN,zh;q=0.9");
    let page = wechat.get(&open).await;
    for want in [
        "付款给 老王面包店",
        "人民路店",
        "当前应用: 微信",
        "金额（元）",
    ] {
        assert!(page.text.contains(want), "{want} in {}", page.text);
    }
    pay(&wechat, &open, "12.34").await;
    let alipay = Payer::new(ALIPAY_UA, "en-US,en;q=0.8");
    let page = alipay.get(&fixed).await;
    assert!(
        page.text.contains("Pay to") && page.text.contains("¥8.80"),
        "{}",
        page.text
    );
    pay(&alipay, &fixed, "8.80").await;

    let mut ps = payments(&m).await;
    ps.sort_by_key(|p| p["amount"].as_i64());
    assert_eq!(ps.len(), 2, "{ps:?}");
    let (ali, wx) = (&ps[0], &ps[1]);
    for (p, amount, wallet, store) in [
        (wx, 1234, "wechat", "store-7"),
        (ali, 880, "alipay", "store-8"),
    ] {
        assert_eq!(p["status"], "succeeded", "{p}");
        assert_eq!(p["method"], "qr_static");
        assert_eq!(p["amount"], amount);
        assert_eq!(p["wallet"], wallet);
        assert_eq!(p["store_id"], store);
        assert!(p["channel_trade_no"].is_string(), "{p}");
    }
    assert_eq!(wx["terminal_id"], "till-2");
    let report = audit(&app).await;
    assert_eq!((report.succeeded_payments, report.ledger.entries), (2, 2));
}

#[tokio::test]
async fn refusals_get_clear_pages_and_create_nothing() {
    let app = spawn_app().await;
    let m = app.merchant("Corner Shop").await;
    let open = new_code(&m, json!({"store_id": "s1"})).await;
    let fixed = new_code(&m, json!({"fixed_amount": 500})).await;
    let disabled = new_code(&m, json!({"store_id": "s2"})).await;
    let disabled_id = disabled.rsplit('/').next().unwrap();
    let d = m
        .send(
            Method::POST,
            &format!("/v1/codes/{disabled_id}/disable"),
            None,
        )
        .await;
    assert_eq!(d.status, 200);

    // An app that cannot pay: the apps that can, in Chinese by default and in English on request.
    let unknown = Payer::new(UNKNOWN_UA, "zh-CN");
    let page = unknown.get(&open).await;
    assert_eq!(page.status, 200);
    assert!(
        page.text.contains("id=\"apps\"")
            && page.text.contains("微信")
            && page.text.contains("支付宝"),
        "{}",
        page.text
    );
    assert!(!page.text.contains("pay-form"));
    let posted = unknown
        .post_form(&format!("{open}/pay"), &[("amount".into(), "1.00".into())])
        .await;
    assert_eq!(posted.status, 200);
    assert!(posted.text.contains("id=\"apps\""));
    let en = Payer::new(UNKNOWN_UA, "en").get(&open).await;
    assert!(
        en.text.contains("Scan this code with one of these apps"),
        "{}",
        en.text
    );

    let wechat = Payer::new(WECHAT_UA, "zh-CN");
    // A disabled code.
    let page = wechat.get(&disabled).await;
    assert_eq!(page.status, 410);
    assert!(page.text.contains("收款码已停用"));
    let posted = wechat
        .post_form(
            &format!("{disabled}/pay"),
            &[("amount".into(), "1.00".into())],
        )
        .await;
    assert_eq!(posted.status, 410);
    // A fixed-amount code paid with another amount (a client-side change).
    let posted = wechat
        .post_form(&format!("{fixed}/pay"), &[("amount".into(), "0.01".into())])
        .await;
    assert_eq!(posted.status, 422);
    assert!(
        posted.text.contains("id=\"amount-mismatch\""),
        "{}",
        posted.text
    );
    let posted = wechat.post_form(&format!("{fixed}/pay"), &[]).await;
    assert_eq!(posted.status, 422);
    // Amounts that are not amounts.
    for bad in ["0", "-5", "1.234", "abc", "100000000.01", ""] {
        let posted = wechat
            .post_form(&format!("{open}/pay"), &[("amount".into(), bad.into())])
            .await;
        assert_eq!(posted.status, 422, "{bad}");
        assert!(
            posted.text.contains("id=\"amount-error\""),
            "{bad}: {}",
            posted.text
        );
    }
    // A tampered OAuth state, and one moved to another code.
    let submitted = wechat
        .post_form(&format!("{open}/pay"), &[("amount".into(), "3.00".into())])
        .await;
    assert_eq!(submitted.status, 303);
    let back = wechat.get(&submitted.location.unwrap()).await;
    let callback = back.location.unwrap();
    let url = reqwest::Url::parse(&callback).unwrap();
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    let mut st = q["state"].clone().into_bytes();
    st[40] = if st[40] == b'A' { b'B' } else { b'A' };
    let forged = format!(
        "{open}/auth?code={}&state={}",
        q["code"],
        String::from_utf8(st).unwrap()
    );
    let page = wechat.get(&forged).await;
    assert_eq!(page.status, 400);
    assert!(page.text.contains("链接无效"));
    let moved = format!("{fixed}/auth?code={}&state={}", q["code"], q["state"]);
    assert_eq!(wechat.get(&moved).await.status, 400);
    // The payment created by that submission is the only one, still waiting, with no channel order.
    let ps = payments(&m).await;
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(
        (ps[0]["status"].as_str(), ps[0]["amount"].as_i64()),
        (Some("created"), Some(300))
    );
    assert!(ps[0]["channel_account_id"].is_null());
    // Tampered /p/ and result tokens.
    let token = "A".repeat(43);
    let p = wechat.get(&format!("{}/p/{token}", app.base)).await;
    assert_eq!(p.status, 404);
    assert!(p.text.contains("链接无效"));
    let r = wechat.get(&format!("{open}/r/{token}")).await;
    assert_eq!(r.status, 400);
    let s = wechat.get(&format!("{open}/r/{token}/status")).await;
    assert_eq!(s.status, 404);
    assert_eq!(payments(&m).await.len(), 1, "nothing more was created");
    assert_eq!(audit(&app).await.ledger.entries, 0);
}

#[tokio::test]
async fn a_lost_notification_is_made_up_for_by_the_result_page_asking_the_channel() {
    let app = spawn_app().await;
    let m = app.merchant("Night Market").await;
    let code = new_code(&m, json!({"store_id": "n1"})).await;
    // The WeChat sandbox drops every notification: only querying the channel can settle it.
    let r = app
        .http
        .put(format!("{}/sandbox/wechat/sandbox/faults", app.base))
        .json(&json!({"drop_notify_pct": 100.0}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let started = std::time::Instant::now();
    pay(&Payer::new(WECHAT_UA, "zh-CN"), &code, "66.60").await;
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(3),
        "settled by the query, not by a notification"
    );
    let ps = payments(&m).await;
    assert_eq!((ps.len(), ps[0]["status"].as_str()), (1, Some("succeeded")));
    assert_eq!(ps[0]["amount"], 6660);
    assert_eq!(audit(&app).await.ledger.entries, 1);
}

#[tokio::test]
async fn a_static_code_is_paid_in_unionpay_through_user_auth_and_posted() {
    let app = spawn_app().await;
    let m = app.merchant("便利店").await;
    let code = new_code(&m, json!({"store_id": "up-1", "description": "南京路店"})).await;
    let unionpay = Payer::new(UNIONPAY_UA, "zh-CN,zh;q=0.9");
    let page = unionpay.get(&code).await;
    for want in [
        "付款给 便利店",
        "南京路店",
        "当前应用: 云闪付",
        "金额（元）",
    ] {
        assert!(page.text.contains(want), "{want} in {}", page.text);
    }
    let submitted = unionpay
        .post_form(&format!("{code}/pay"), &[("amount".into(), "23.45".into())])
        .await;
    assert_eq!(submitted.status, 303, "{}", submitted.text);
    let user_auth = submitted.location.clone().unwrap();
    assert!(
        user_auth
            .contains("/sandbox/unionpay/qrcGtwWeb-web/api/userAuth?version=1.0.0&redirectUrl="),
        "{user_auth}"
    );
    authorize_and_pay(&unionpay, &user_auth, &code).await;
    let ps = payments(&m).await;
    assert_eq!(ps.len(), 1, "{ps:?}");
    let p = &ps[0];
    assert_eq!(
        (
            p["status"].as_str(),
            p["method"].as_str(),
            p["wallet"].as_str(),
            p["amount"].as_i64()
        ),
        (
            Some("succeeded"),
            Some("qr_static"),
            Some("unionpay"),
            Some(2345)
        )
    );
    assert!(p["channel_trade_no"].is_string(), "{p}");
    let report = audit(&app).await;
    assert_eq!((report.succeeded_payments, report.ledger.entries), (1, 1));

    // Another payment: a reload of the callback goes to the result page (no second order), and a
    // callback whose wallet said the authorisation failed is refused.
    let submitted = unionpay
        .post_form(&format!("{code}/pay"), &[("amount".into(), "1.00".into())])
        .await;
    let back = unionpay.get(&submitted.location.unwrap()).await;
    let callback = back.location.unwrap();
    assert_eq!(unionpay.get(&callback).await.status, 200);
    assert_eq!(
        unionpay.get(&callback).await.status,
        303,
        "a reload goes to the result"
    );
    // A UnionPay callback whose wallet said the authorisation failed.
    let failed = callback.replace("respCode=00", "respCode=01");
    assert_eq!(unionpay.get(&failed).await.status, 400);
    assert_eq!(payments(&m).await.len(), 2);
}

#[tokio::test]
async fn our_own_wallet_gets_the_apps_that_can_pay_and_creates_nothing() {
    let app = spawn_app().await;
    let m = app.merchant("Tea House").await;
    let code = new_code(&m, json!({"store_id": "t1"})).await;
    let ours = Payer::new(OUR_WALLET_UA, "zh-CN");
    let page = ours.get(&code).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("id=\"own-wallet\""), "{}", page.text);
    assert!(
        page.text.contains("Paymux 钱包暂时还不能支付"),
        "{}",
        page.text
    );
    for app_name in ["微信", "支付宝", "云闪付"] {
        assert!(
            page.text.contains(&format!("<li>{app_name}</li>")),
            "{app_name}: {}",
            page.text
        );
    }
    assert!(!page.text.contains("pay-form"));
    let posted = ours
        .post_form(&format!("{code}/pay"), &[("amount".into(), "5.00".into())])
        .await;
    assert_eq!(posted.status, 200);
    assert!(posted.text.contains("id=\"own-wallet\""));
    let en = Payer::new(OUR_WALLET_UA, "en").get(&code).await;
    assert!(
        en.text
            .contains("The Paymux wallet cannot pay this code yet"),
        "{}",
        en.text
    );
    assert!(payments(&m).await.is_empty(), "nothing was created");
}

#[tokio::test]
async fn a_payer_who_cancels_in_the_wallet_sees_the_payment_closed_and_nothing_is_posted() {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    // An order the payer walked away from is closed when it expires.
    config.payment_expires_in_seconds_default = 3;
    let app = spawn_with(db, config).await;
    let m = app.merchant("Tea House").await;
    let code = new_code(&m, json!({"store_id": "t1"})).await;
    for (ua, amount) in [(WECHAT_UA, "18.00"), (ALIPAY_UA, "9.50")] {
        let payer = Payer::new(ua, "zh-CN");
        let submitted = payer
            .post_form(&format!("{code}/pay"), &[("amount".into(), amount.into())])
            .await;
        assert_eq!(submitted.status, 303, "{}", submitted.text);
        // The payer cancels on the wallet's sheet: back on the result page, unpaid.
        let result =
            authorize_and_answer(&payer, &submitted.location.unwrap(), &code, "cancel").await;
        let page = payer.get(&result).await;
        assert!(
            page.text.contains("data-status=\"created\""),
            "{}",
            page.text
        );
        let mut last = Value::Null;
        for _ in 0..200 {
            let s = payer.get(&format!("{result}/status")).await;
            last = serde_json::from_str(&s.text).unwrap();
            if last["status"] != "created" && last["status"] != "processing" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(last["status"], "closed", "{ua}");
        let page = payer.get(&result).await;
        assert!(
            page.text.contains("data-status=\"closed\"") && page.text.contains("付款已关闭"),
            "{}",
            page.text
        );
    }
    let ps = payments(&m).await;
    assert_eq!(ps.len(), 2, "{ps:?}");
    for p in &ps {
        assert_eq!(p["status"], "closed", "{p}");
        assert_eq!(p["closed_reason"], "expired", "{p}");
        assert!(p["paid_at"].is_null(), "{p}");
    }
    let report = audit(&app).await;
    assert_eq!((report.succeeded_payments, report.ledger.entries), (0, 0));
}

/// Anonymous payers create payments through a code: limited per code, apart from the merchant's
/// signed API budget; a refused request (a bad amount) uses no budget and writes nothing.
#[tokio::test]
async fn cashier_payments_are_limited_per_code_not_from_the_merchants_api_budget() {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.cashier_rate_limit_per_second = 1;
    config.cashier_rate_limit_burst = 2;
    config.rate_limit_per_second = 1;
    config.rate_limit_burst = 3;
    let app = spawn_with(db, config).await;
    let m = app.merchant("Canteen").await;
    let code = new_code(&m, json!({"store_id": "s1"})).await;
    let other = new_code(&m, json!({"store_id": "s2"})).await;
    let wechat = Payer::new(WECHAT_UA, "zh-CN");
    let submit = |url: String, amount: &'static str| {
        let wechat = &wechat;
        async move {
            wechat
                .post_form(&format!("{url}/pay"), &[("amount".into(), amount.into())])
                .await
        }
    };
    let bad = submit(code.clone(), "abc").await;
    assert_eq!(bad.status, 422, "{}", bad.text);
    // Five at once against a burst of two (a slow machine may refill one more within the second).
    let mut accepted = 0;
    let mut limited = 0;
    for _ in 0..5 {
        let r = submit(code.clone(), "1.00").await;
        match r.status {
            303 => accepted += 1,
            429 => limited += 1,
            other => panic!("{other}: {}", r.text),
        }
    }
    assert!(
        accepted >= 2 && limited >= 2,
        "{accepted} accepted, {limited} limited"
    );
    // Another code of the same merchant has its own budget, and the merchant's API is untouched.
    assert_eq!(submit(other.clone(), "1.00").await.status, 303);
    assert_eq!(payments(&m).await.len(), accepted + 1);
}

/// The value of the hidden form field `name` in `html`.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no field {name} in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

/// A pay form names the payment it creates: the same form submitted twice (a double tap, a request
/// the app sent again) is one payment, paid once; the form sent again with another amount, with a
/// forged field or without one is a new payment.
#[tokio::test]
async fn the_same_pay_form_submitted_twice_creates_one_payment() {
    let app = spawn_app().await;
    let m = app.merchant("Noodle Bar").await;
    let code = new_code(&m, json!({"store_id": "s1"})).await;
    let wechat = Payer::new(WECHAT_UA, "zh-CN");
    let page = wechat.get(&code).await;
    assert_eq!(page.status, 200, "{}", page.text);
    let submission = hidden(&page.text, "submission");
    let form = |amount: &str, field: &str| {
        vec![
            ("amount".to_string(), amount.to_string()),
            ("submission".to_string(), field.to_string()),
        ]
    };
    let pay_url = format!("{code}/pay");
    let first = wechat.post_form(&pay_url, &form("8.80", &submission)).await;
    let second = wechat.post_form(&pay_url, &form("8.80", &submission)).await;
    assert_eq!((first.status, second.status), (303, 303), "{}", second.text);
    assert_eq!(payments(&m).await.len(), 1, "one payment for one form");

    let result = authorize_and_pay(&wechat, &first.location.unwrap(), &code).await;
    // The second submission's way through the wallet ends at the same payment's result.
    let back = wechat.get(&second.location.unwrap()).await;
    assert_eq!(back.status, 302, "{}", back.text);
    let again = wechat.get(&back.location.unwrap()).await;
    assert_eq!(again.status, 303, "{}", again.text);
    assert_eq!(again.location.as_deref(), Some(result.as_str()));
    let ps = payments(&m).await;
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(
        (ps[0]["status"].as_str(), ps[0]["amount"].as_i64()),
        (Some("succeeded"), Some(880))
    );

    // An amount error shows the form again, naming the same payment.
    let refused = wechat.post_form(&pay_url, &form("abc", &submission)).await;
    assert_eq!(refused.status, 422);
    assert_eq!(hidden(&refused.text, "submission"), submission);
    // The same form with another amount, a forged field, no field: a new payment each.
    let mut forged = submission.clone().into_bytes();
    forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for (n, fields) in [
        form("9.00", &submission),
        form("8.80", &forged),
        vec![("amount".to_string(), "8.80".to_string())],
    ]
    .into_iter()
    .enumerate()
    {
        let r = wechat.post_form(&pay_url, &fields).await;
        assert_eq!(r.status, 303, "{}", r.text);
        assert_eq!(payments(&m).await.len(), n + 2, "{fields:?}");
    }
    assert_eq!(audit(&app).await.ledger.entries, 1);
}
