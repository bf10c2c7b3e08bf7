//! The `one_code` scenario's payer: a wallet app that has scanned a merchant's static code and pays
//! it through the one-code cashier, request by request as the app's web view makes them (the
//! journey of `router/tests/api/cashier.rs`):
//!
//! | step | request | expected answer |
//! |---|---|---|
//! | `open` | `GET <code url>` with the wallet's User-Agent | `200`, the amount form (`#pay-form`) |
//! | `submit` | `POST <code url>/pay` form `amount` (yuan) | `303` to the wallet's authorisation step |
//! | `authorize` | `GET` that URL (the sandbox's OAuth / `userAuth` page) | `302` back to `<code url>/auth?…` |
//! | `order` | `GET <code url>/auth?…` (the payer's id, the channel's in-app order) | `200`, the pay page |
//! | `sheet` | `POST` the pay page's stand-in form (the sandbox's wallet sheet) | `200` |
//! | `pay` | the same with `action=pay` | `302` to the result page |
//! | `result` | `GET <code url>/r/<token>` | `200`, the payment's status |
//! | `status` | `GET <code url>/r/<token>/status` every `--one-code-poll-ms` | `200 {"status"}` until `succeeded` |
//!
//! Redirects are followed by hand (the client never follows one itself), each checked to go where
//! the cashier says it goes. The cashier and the sandboxes set no cookies, so the client keeps none.
//! The payment's id is in the result page's token (the payment id followed by an HMAC tag, base64url:
//! `router/src/paylink.rs`); its order number is the cashier's `cashier-<id without hyphens>`.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::Value;

use crate::Wallet;

/// The User-Agent of each wallet app's web view, as the cashier detects it (`MicroMessenger`,
/// `AlipayClient`, `UnionPay/<version> <app>`).
pub fn user_agent(w: Wallet) -> &'static str {
    match w {
        Wallet::Wechat => {
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/120.0 Mobile Safari/537.36 MicroMessenger/8.0.49.2600(0x28003133) WeChat/arm64 Weixin NetType/WIFI Language/zh_CN"
        }
        Wallet::Alipay => {
            "Mozilla/5.0 (Linux; U; Android 14; zh-CN; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/120.0 Mobile Safari/537.36 NebulaSDK/1.8.100112 Nebula AlipayDefined(nt:WIFI,ws:412|0|2.625) AliApp(AP/10.5.86.8000) AlipayClient/10.5.86.8000 Language/zh-Hans"
        }
        Wallet::Unionpay => {
            "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UQ1A.240105.004; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/120.0 Mobile Safari/537.36 (com.unionpay.mobilepay) (cordova 7.0.0) (updebug 0) (version 1003) (UnionPay/1.0 CloudPay) (clientVersion 203) (language zh_CN) (languageFamily zh_CN) (upHtml) (walletMode 00)"
        }
    }
}

/// The steps of one payer's journey (the table above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Open,
    Submit,
    Authorize,
    Order,
    Sheet,
    Pay,
    Result,
    Status,
}

/// Request kinds of the report: `one_code.<wallet>.<step>`.
const KINDS: [[&str; 8]; 3] = [
    [
        "one_code.wechat.open",
        "one_code.wechat.submit",
        "one_code.wechat.authorize",
        "one_code.wechat.order",
        "one_code.wechat.sheet",
        "one_code.wechat.pay",
        "one_code.wechat.result",
        "one_code.wechat.status",
    ],
    [
        "one_code.alipay.open",
        "one_code.alipay.submit",
        "one_code.alipay.authorize",
        "one_code.alipay.order",
        "one_code.alipay.sheet",
        "one_code.alipay.pay",
        "one_code.alipay.result",
        "one_code.alipay.status",
    ],
    [
        "one_code.unionpay.open",
        "one_code.unionpay.submit",
        "one_code.unionpay.authorize",
        "one_code.unionpay.order",
        "one_code.unionpay.sheet",
        "one_code.unionpay.pay",
        "one_code.unionpay.result",
        "one_code.unionpay.status",
    ],
];

impl Step {
    /// The request kind of this step in `wallet`.
    pub fn kind(self, wallet: Wallet) -> &'static str {
        let w = match wallet {
            Wallet::Wechat => 0,
            Wallet::Alipay => 1,
            Wallet::Unionpay => 2,
        };
        KINDS[w][self as usize]
    }
}

/// An answered page: status, `Location` (resolved against the request's URL) and body.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub text: String,
}

/// The payers' HTTP client: no automatic redirects, no cookie store.
pub struct Payer {
    http: reqwest::Client,
}

impl Payer {
    pub fn new(connections: usize, timeout: Duration) -> anyhow::Result<Payer> {
        Ok(Payer {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(connections)
                .timeout(timeout)
                .tcp_nodelay(true)
                .build()?,
        })
    }

    async fn send(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
        ua: &str,
    ) -> Result<Page, String> {
        let resp = req
            .header("user-agent", ua)
            .header("accept-language", "zh-CN,zh;q=0.9")
            .send()
            .await
            .map_err(|e| crate::client::transport(&e))?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|l| resolve(url, l));
        let text = resp
            .text()
            .await
            .map_err(|e| crate::client::transport(&e))?;
        Ok(Page {
            status,
            location,
            text,
        })
    }

    pub async fn get(&self, url: &str, ua: &str) -> Result<Page, String> {
        self.send(url, self.http.get(url), ua).await
    }

    pub async fn post_form(
        &self,
        url: &str,
        ua: &str,
        form: &[(String, String)],
    ) -> Result<Page, String> {
        self.send(url, self.http.post(url).form(form), ua).await
    }
}

/// A `Location` as an absolute URL (it may be relative to the request's URL).
fn resolve(base: &str, location: &str) -> String {
    reqwest::Url::parse(base)
        .and_then(|b| b.join(location))
        .map(String::from)
        .unwrap_or_else(|_| location.to_string())
}

/// Fen as the payer types them: `12.34`.
pub fn yuan(fen: i64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

fn unescape_html(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The JSON of `<script type="application/json" id="{id}">`.
pub fn script_json(html: &str, id: &str) -> Option<Value> {
    let open = format!("<script type=\"application/json\" id=\"{id}\">");
    let start = html.find(&open)? + open.len();
    let end = start + html[start..].find("</script>")?;
    serde_json::from_str(&html[start..end]).ok()
}

/// The action and fields of the pay page's stand-in form (`#stand-in`), the sandbox's stand-in
/// for the wallet's payment sheet.
pub fn stand_in_form(html: &str) -> Option<(String, Vec<(String, String)>)> {
    let at = html.find("id=\"stand-in\"")?;
    let form = &html[html[..at].rfind("<form")?..];
    let form = &form[..form.find("</form>")?];
    let attr = |tag: &str, name: &str| -> Option<String> {
        let k = format!("{name}=\"");
        let s = tag.find(&k)? + k.len();
        Some(unescape_html(&tag[s..s + tag[s..].find('"')?]))
    };
    let action = attr(form, "action")?;
    let fields = form
        .split("<input ")
        .skip(1)
        .map(|i| Some((attr(i, "name")?, attr(i, "value")?)))
        .collect::<Option<Vec<_>>>()?;
    Some((action, fields))
}

/// The value of the input `name` in a page (the pay form's hidden `submission`, which names the
/// payment the form creates).
pub fn input_value(html: &str, name: &str) -> Option<String> {
    let k = format!("name=\"{name}\" value=\"");
    let s = html.find(&k)? + k.len();
    Some(unescape_html(&html[s..s + html[s..].find('"')?]))
}

/// The `data-status` of a result page.
pub fn result_status(html: &str) -> Option<&str> {
    let k = "data-status=\"";
    let s = html.find(k)? + k.len();
    Some(&html[s..s + html[s..].find('"')?])
}

/// A stable name for an unexpected cashier or sandbox page, from the element ids the pages give
/// their messages: `amount-error`, `disabled`, `apps`, …, or `-`.
pub fn page_marker(html: &str) -> &'static str {
    for id in [
        "amount-mismatch",
        "amount-error",
        "disabled",
        "own-wallet",
        "apps",
        "error",
    ] {
        if html.contains(&format!("id=\"{id}\"")) {
            return id;
        }
    }
    "-"
}

/// The payment id in a result page's URL `…/c/<code>/r/<token>` (the token starts with it).
pub fn payment_of_result(url: &str) -> Option<uuid::Uuid> {
    let path = reqwest::Url::parse(url).ok()?;
    let mut segments: Vec<&str> = path.path_segments()?.collect();
    let token = segments.pop()?;
    if segments.pop()? != "r" {
        return None;
    }
    let raw = B64URL.decode(token).ok()?;
    (raw.len() == 32)
        .then(|| uuid::Uuid::from_slice(&raw[..16]).ok())
        .flatten()
}

/// The order number the cashier gives a payment.
pub fn cashier_order_no(payment: uuid::Uuid) -> String {
    format!("cashier-{}", payment.simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_wallet_and_step() {
        assert_eq!(Step::Open.kind(Wallet::Wechat), "one_code.wechat.open");
        assert_eq!(
            Step::Status.kind(Wallet::Unionpay),
            "one_code.unionpay.status"
        );
        assert_eq!(Step::Order.kind(Wallet::Alipay), "one_code.alipay.order");
        for w in [Wallet::Wechat, Wallet::Alipay, Wallet::Unionpay] {
            for s in [
                Step::Open,
                Step::Submit,
                Step::Authorize,
                Step::Order,
                Step::Sheet,
                Step::Pay,
                Step::Result,
                Step::Status,
            ] {
                let k = s.kind(w);
                assert!(k.starts_with(&format!("one_code.{}.", w.name())), "{k}");
                assert!(k.len() <= 28, "{k} fits the report's column");
            }
        }
    }

    #[test]
    fn user_agents_are_the_apps() {
        assert!(user_agent(Wallet::Wechat).contains("MicroMessenger"));
        assert!(user_agent(Wallet::Alipay).contains("AlipayClient"));
        assert!(user_agent(Wallet::Unionpay).contains("UnionPay/"));
    }

    #[test]
    fn amounts_in_yuan() {
        assert_eq!(yuan(1), "0.01");
        assert_eq!(yuan(1234), "12.34");
        assert_eq!(yuan(99_999), "999.99");
        assert_eq!(yuan(100), "1.00");
    }

    /// A pay page and a result page as the cashier renders them (abridged).
    const PAY_PAGE: &str = "<h1>付款给 Load merchant 1</h1><p class=\"amount\" id=\"amount\">¥12.34</p>\
<script type=\"application/json\" id=\"params\">{\"tn\":\"a\\u0026b\"}</script>\
<script type=\"application/json\" id=\"config\">{\"result\":\"http://127.0.0.1:1/c/x/r/t\",\"standIn\":\"http://127.0.0.1:1/sandbox/unionpay/sandbox/wallet\",\"bridge\":\"upsdk\"}</script>\
<form method=\"post\" action=\"http://127.0.0.1:1/sandbox/unionpay/sandbox/wallet\" id=\"stand-in\">\
<input type=\"hidden\" name=\"tn\" value=\"a&amp;b&quot;&apos;\">\
<input type=\"hidden\" name=\"return_url\" value=\"http://127.0.0.1:1/c/x/r/t\">\
<button type=\"submit\" id=\"open-wallet\">打开沙箱钱包付款</button></form>\
<p><a href=\"http://127.0.0.1:1/c/x/r/t\" id=\"result-link\">查看付款结果</a></p>";

    #[test]
    fn the_pay_page_gives_its_config_and_stand_in_form() {
        let config = script_json(PAY_PAGE, "config").unwrap();
        assert_eq!(config["result"], "http://127.0.0.1:1/c/x/r/t");
        assert_eq!(script_json(PAY_PAGE, "params").unwrap()["tn"], "a&b");
        assert!(script_json(PAY_PAGE, "nope").is_none());
        let (action, fields) = stand_in_form(PAY_PAGE).unwrap();
        assert_eq!(action, config["standIn"].as_str().unwrap());
        assert_eq!(
            fields,
            vec![
                ("tn".to_string(), "a&b\"'".to_string()),
                (
                    "return_url".to_string(),
                    "http://127.0.0.1:1/c/x/r/t".to_string()
                )
            ]
        );
        assert!(stand_in_form("<form id=\"pay-form\"></form>").is_none());
    }

    #[test]
    fn result_pages_and_error_pages() {
        let result = "<p><span class=\"status succeeded\" id=\"status\" data-status=\"succeeded\">支付成功</span></p>";
        assert_eq!(result_status(result), Some("succeeded"));
        assert_eq!(result_status("<p>nothing</p>"), None);
        assert_eq!(
            page_marker("<p class=\"error\" id=\"amount-error\">请输入</p>"),
            "amount-error"
        );
        assert_eq!(page_marker("<ul id=\"apps\"><li>微信</li></ul>"), "apps");
        assert_eq!(page_marker("<h1 id=\"error\">授权失败</h1>"), "error");
        assert_eq!(page_marker("<p>?</p>"), "-");
    }

    #[test]
    fn the_payment_id_is_in_the_result_token() {
        let id = uuid::Uuid::now_v7();
        let mut raw = id.as_bytes().to_vec();
        raw.extend_from_slice(&[7u8; 16]);
        let token = B64URL.encode(raw);
        assert_eq!(token.len(), 43);
        let url = format!("http://127.0.0.1:8080/c/{}/r/{token}", uuid::Uuid::now_v7());
        assert_eq!(payment_of_result(&url), Some(id));
        assert_eq!(payment_of_result(&format!("{url}/status")), None);
        assert_eq!(payment_of_result("http://h/c/x/r/short"), None);
        assert_eq!(payment_of_result("not a url"), None);
        assert_eq!(cashier_order_no(id), format!("cashier-{}", id.simple()));
    }

    #[test]
    fn locations_resolve_against_the_request() {
        assert_eq!(
            resolve("http://h:1/c/x/pay", "/c/x/auth?a=1"),
            "http://h:1/c/x/auth?a=1"
        );
        assert_eq!(
            resolve("http://h:1/c/x/pay", "http://s:2/sandbox/a#frag"),
            "http://s:2/sandbox/a#frag"
        );
    }
}
