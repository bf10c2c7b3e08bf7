//! The one-code cashier: what a payer's wallet app shows after scanning a static code `/c/{id}`.
//!
//! 1. `GET /c/{id}` detects the scanning app from the User-Agent. In a wallet the merchant is
//!    paid through (a `qr_static` route whose account can learn the payer's id: WeChat, Alipay,
//!    UnionPay QuickPass), it shows the merchant, the store and an amount form (or the code's
//!    fixed amount); elsewhere a page that lists the apps that can pay (our own wallet, which has
//!    no channel yet, is told so). Disabled and unknown codes get a clear page.
//! 2. `POST /c/{id}/pay` checks the amount on the server (a fixed-amount code refuses any other),
//!    creates the payment (`qr_static`, the wallet, the code's store and terminal) through the
//!    write batcher and sends the payer's app to the wallet's authorisation step (WeChat OAuth,
//!    Alipay `auth_base`, UnionPay `userAuth`). The form names the payment it creates (an id
//!    issued with the form, signed with the code's id, good for an hour), so the same form
//!    submitted twice is one payment. The `state` it carries is signed and binds the
//!    code, the payment, the channel account and the amount; it expires. Nothing is written when
//!    anything is refused.
//! 3. `GET /c/{id}/auth` (the authorisation redirect) verifies the `state`, exchanges the code for
//!    the payer's id (UnionPay with the `appUpIdentifier` of the payer's User-Agent), creates the
//!    channel's in-app order on the bound account, attaches it to the payment and renders the pay
//!    page, whose script calls the wallet's bridge (`WeixinJSBridge` `getBrandWCPayRequest`,
//!    `AlipayJSBridge` `tradePay`, UnionPay `upsdk.pay`) — or, for a sandbox account without the
//!    bridge, posts to the sandbox's wallet stand-in page.
//! 4. `GET /c/{id}/r/{token}` (the payment-link token: unguessable) shows the result and polls
//!    `GET /c/{id}/r/{token}/status` until it is final; a payment still waiting after a few
//!    seconds is queried at its channel there (the notification may be late).
//!
//! Pages are Chinese unless the browser asks for English first, work on a narrow screen, load
//! nothing from elsewhere, and have a large-text mode (`?large=1`, or the button; remembered in
//! `localStorage`). Creating payments here is limited per code, apart from the merchant's API rate limit. The pieces
//! the payment links' pages share ([`crate::linkpay`]) are `pub(crate)` here.

use std::collections::HashMap;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use paymux_model::{
    ChannelAccountId, MerchantId, PayMethod, PaymentId, PaymentStatus, WalletBrand,
};
use paymux_qrcode::render;
use uuid::Uuid;

use crate::AppState;
use crate::batcher::{WriteOp, WriteOutcome};
use crate::codes::{CodeRow, get_row, merchant_name};
use crate::db::now_us;
use crate::paylink::{Lang, escape_html, yuan};
use crate::payments::api::AMOUNT_MINOR_MAX;
use crate::payments::model::PaymentRow;

/// The cashier's public routes (merged with the code images under `/c/{id}/…`).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/c/{id}", get(code_page))
        .route("/c/{id}/pay", post(submit))
        .route("/c/{id}/auth", get(authorized))
        .route("/c/{id}/r/{token}", get(result_page))
        .route("/c/{id}/r/{token}/status", get(status))
}

/// How long the payer has between the amount form and coming back from the OAuth step.
const STATE_TTL_SECS: i64 = 600;
/// Bytes of the HMAC tag kept in a `state` (128 bits).
const STATE_TAG_LEN: usize = 16;
/// A payment still waiting this long after its order was attached is queried at its channel when
/// its status is polled.
const QUERY_AFTER_US: i64 = 3_000_000;

/// The signed OAuth `state`: which payment, on which channel account, for how much, until when.
/// The code id (from the path) is part of the signed message, so a state cannot move codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CashierState {
    pub payment: Uuid,
    pub account: Uuid,
    pub amount_minor: i64,
    pub expires_at_s: i64,
}

impl CashierState {
    const LEN: usize = 16 + 16 + 8 + 8;

    fn message(&self, code: Uuid) -> Vec<u8> {
        let mut m = Vec::with_capacity(16 + Self::LEN);
        m.extend_from_slice(code.as_bytes());
        m.extend_from_slice(&self.raw());
        m
    }

    fn raw(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(Self::LEN);
        m.extend_from_slice(self.payment.as_bytes());
        m.extend_from_slice(self.account.as_bytes());
        m.extend_from_slice(&self.amount_minor.to_be_bytes());
        m.extend_from_slice(&self.expires_at_s.to_be_bytes());
        m
    }

    fn key(state: &AppState) -> ring::hmac::Key {
        Self::key_for(state, "paymux cashier oauth state v1")
    }

    /// The state key of one flow (`purpose` separates the static codes' states from others').
    pub(crate) fn key_for(state: &AppState, purpose: &str) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &state.secrets.derive_key(purpose))
    }

    /// The state as sent through the wallet's OAuth step (86 URL-safe characters).
    pub fn seal(&self, key: &ring::hmac::Key, code: Uuid) -> String {
        let tag = ring::hmac::sign(key, &self.message(code));
        let mut raw = self.raw();
        raw.extend_from_slice(&tag.as_ref()[..STATE_TAG_LEN]);
        B64URL.encode(raw)
    }

    /// A genuine, unexpired state of this code; `None` for anything else.
    pub fn open(key: &ring::hmac::Key, code: Uuid, sealed: &str, now_s: i64) -> Option<Self> {
        if sealed.len() > 128 {
            return None;
        }
        let raw = B64URL.decode(sealed).ok()?;
        if raw.len() != Self::LEN + STATE_TAG_LEN {
            return None;
        }
        let s = CashierState {
            payment: Uuid::from_slice(&raw[..16]).ok()?,
            account: Uuid::from_slice(&raw[16..32]).ok()?,
            amount_minor: i64::from_be_bytes(raw[32..40].try_into().ok()?),
            expires_at_s: i64::from_be_bytes(raw[40..48].try_into().ok()?),
        };
        let expected = ring::hmac::sign(key, &s.message(code));
        let diff = expected.as_ref()[..STATE_TAG_LEN]
            .iter()
            .zip(&raw[Self::LEN..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0 && now_s <= s.expires_at_s).then_some(s)
    }
}

/// How long a pay form names the payment it creates (a form left open longer gets a new one).
const FORM_TTL_SECS: i64 = 3600;

/// The payment a pay form creates, chosen when the form is shown and signed with the code's id:
/// the same form submitted twice (a double tap, a request the app sent again) creates one payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormPayment {
    pub payment: Uuid,
    pub issued_at_s: i64,
}

impl FormPayment {
    const LEN: usize = 16 + 8;

    fn key(state: &AppState) -> ring::hmac::Key {
        CashierState::key_for(state, "paymux cashier form payment v1")
    }

    fn raw(&self) -> [u8; Self::LEN] {
        let mut m = [0u8; Self::LEN];
        m[..16].copy_from_slice(self.payment.as_bytes());
        m[16..].copy_from_slice(&self.issued_at_s.to_be_bytes());
        m
    }

    fn tag(&self, key: &ring::hmac::Key, code: Uuid) -> ring::hmac::Tag {
        let mut ctx = ring::hmac::Context::with_key(key);
        ctx.update(code.as_bytes());
        ctx.update(&self.raw());
        ctx.sign()
    }

    /// The hidden form field (54 URL-safe characters).
    pub fn seal(&self, key: &ring::hmac::Key, code: Uuid) -> String {
        let mut raw = self.raw().to_vec();
        raw.extend_from_slice(&self.tag(key, code).as_ref()[..STATE_TAG_LEN]);
        B64URL.encode(raw)
    }

    /// A genuine field of this code's form, issued at most [`FORM_TTL_SECS`] ago.
    pub fn open(key: &ring::hmac::Key, code: Uuid, sealed: &str, now_s: i64) -> Option<Self> {
        if sealed.len() > 64 {
            return None;
        }
        let raw = B64URL.decode(sealed).ok()?;
        if raw.len() != Self::LEN + STATE_TAG_LEN {
            return None;
        }
        let f = FormPayment {
            payment: Uuid::from_slice(&raw[..16]).ok()?,
            issued_at_s: i64::from_be_bytes(raw[16..Self::LEN].try_into().ok()?),
        };
        let expected = f.tag(key, code);
        let diff = expected.as_ref()[..STATE_TAG_LEN]
            .iter()
            .zip(&raw[Self::LEN..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        let fresh = (0..=FORM_TTL_SECS).contains(&(now_s - f.issued_at_s));
        (diff == 0 && fresh).then_some(f)
    }

    /// A new payment id for a form shown now.
    fn issue(state: &AppState, code: Uuid) -> String {
        FormPayment {
            payment: Uuid::from(PaymentId::new()),
            issued_at_s: chrono::Utc::now().timestamp(),
        }
        .seal(&Self::key(state), code)
    }
}

/// Fen from what the payer typed: `12`, `12.3` or `12.34` yuan, 0.01 ..= the API's maximum.
pub fn parse_yuan(text: &str) -> Option<i64> {
    let t = text.trim();
    let (int, frac) = match t.split_once('.') {
        Some((i, f)) => (i, f),
        None => (t, ""),
    };
    if int.is_empty()
        || int.len() > 9
        || frac.len() > 2
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (t.contains('.') && frac.is_empty())
    {
        return None;
    }
    let mut fen = int.parse::<i64>().ok()?.checked_mul(100)?;
    let cents = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>().ok()? * 10,
        _ => frac.parse::<i64>().ok()?,
    };
    fen = fen.checked_add(cents)?;
    (1..=AMOUNT_MINOR_MAX).contains(&fen).then_some(fen)
}

/// The page's texts in both languages.
pub(crate) fn t(lang: Lang, zh: &'static str, en: &'static str) -> &'static str {
    match lang {
        Lang::Zh => zh,
        Lang::En => en,
    }
}

pub(crate) fn wallet_label(lang: Lang, w: WalletBrand) -> &'static str {
    match lang {
        Lang::Zh => render::wallet_label_zh(w),
        Lang::En => render::wallet_label_en(w),
    }
}

/// Whether the page is asked for in large text (`?large=1`).
#[derive(Debug, Default, serde::Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    large: Option<String>,
}

impl PageQuery {
    pub(crate) fn large(&self) -> bool {
        self.large.as_deref() == Some("1")
    }
}

/// A cashier page: small, no external assets, for a narrow phone screen, with the large-text
/// toggle (remembered in `localStorage`).
pub(crate) fn cashier_page(lang: Lang, title: &str, body: &str, large: bool) -> String {
    let html_lang = t(lang, "zh-CN", "en");
    let toggle = t(lang, "大字模式", "Large text");
    let class = if large { "large" } else { "" };
    format!(
        "<!doctype html><html lang=\"{html_lang}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{title}</title><style>\
body{{font-family:system-ui,sans-serif;margin:0 auto;padding:1rem 1.25rem;max-width:28rem;color:#1a1a1a;font-size:16px}}\
body.large{{font-size:24px}}h1{{font-size:1.3em}}.amount{{font-size:2.2em;font-weight:700;margin:.5rem 0}}\
.muted{{color:#555}}.error{{color:#b00020;font-weight:600}}\
.status{{display:inline-block;padding:.3em .8em;border-radius:1em;background:#eef}}\
.status.succeeded{{background:#dfd}}.status.failed,.status.closed{{background:#fdd}}\
input{{font-size:1.6em;width:100%;box-sizing:border-box;padding:.3em;margin:.3em 0}}\
button{{font-size:1.1em;width:100%;padding:.7em;margin:.4em 0;border:0;border-radius:.4em;background:#07c160;color:#fff}}\
button.secondary{{background:#eee;color:#333;font-size:.9em}}ul{{padding-left:1.2em}}\
</style></head><body class=\"{class}\">{body}\
<button type=\"button\" class=\"secondary\" id=\"large-toggle\">{toggle}</button>\
<script>(function(){{var b=document.body,k='paymux-large';\
try{{if(localStorage.getItem(k)==='1')b.classList.add('large');if(b.classList.contains('large'))localStorage.setItem(k,'1');}}catch(e){{}}\
document.getElementById('large-toggle').onclick=function(){{var on=b.classList.toggle('large');\
try{{localStorage.setItem(k,on?'1':'0');}}catch(e){{}}}};}})();</script></body></html>",
        title = escape_html(title),
    )
}

pub(crate) fn html(status: StatusCode, page: String) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], Html(page)).into_response()
}

/// A page with one message (`id` names it for tests and screen readers).
pub(crate) fn message(
    status: StatusCode,
    lang: Lang,
    large: bool,
    id: &str,
    zh: (&str, &str),
    en: (&str, &str),
) -> Response {
    let (title, text) = match lang {
        Lang::Zh => zh,
        Lang::En => en,
    };
    let body = format!(
        "<h1>{}</h1><p class=\"muted\" id=\"{id}\">{}</p>",
        escape_html(title),
        escape_html(text)
    );
    html(status, cashier_page(lang, title, &body, large))
}

fn unknown_code(lang: Lang, large: bool) -> Response {
    message(
        StatusCode::NOT_FOUND,
        lang,
        large,
        "error",
        ("收款码无效", "找不到此收款码，请向商户确认。"),
        (
            "Unknown code",
            "This payment code does not exist. Please ask the merchant.",
        ),
    )
}

fn disabled_code(lang: Lang, large: bool) -> Response {
    message(
        StatusCode::GONE,
        lang,
        large,
        "disabled",
        (
            "收款码已停用",
            "此收款码已被商户停用，请勿付款，请向商户索取新的收款码。",
        ),
        (
            "Code disabled",
            "The merchant has disabled this code. Do not pay; ask the merchant for a new one.",
        ),
    )
}

/// The `429` page of an anonymous payer over the cashier limiter, with `Retry-After`.
pub(crate) fn too_many_requests(lang: Lang, large: bool, wait: std::time::Duration) -> Response {
    let mut r = message(
        StatusCode::TOO_MANY_REQUESTS,
        lang,
        large,
        "error",
        ("请稍后再试", "付款请求过多，请稍后再试。"),
        (
            "Please try again",
            "Too many payment requests; try again shortly.",
        ),
    );
    if let Ok(v) = crate::ratelimit::retry_after_seconds(wait)
        .to_string()
        .parse()
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

pub(crate) fn unavailable(lang: Lang, large: bool) -> Response {
    message(
        StatusCode::SERVICE_UNAVAILABLE,
        lang,
        large,
        "error",
        ("暂时无法付款", "支付服务暂时不可用，请稍后再试。"),
        (
            "Cannot pay right now",
            "The payment service is unavailable. Please try again shortly.",
        ),
    )
}

/// The code behind a path, or the page to show instead.
async fn active_code(
    state: &AppState,
    id: &str,
    lang: Lang,
    large: bool,
) -> Result<CodeRow, Response> {
    let Ok(id) = Uuid::parse_str(id) else {
        return Err(unknown_code(lang, large));
    };
    match get_row(&state.db, None, id).await {
        Ok(Some(row)) if row.active() => Ok(row),
        Ok(Some(_)) => Err(disabled_code(lang, large)),
        Ok(None) => Err(unknown_code(lang, large)),
        Err(e) => {
            tracing::error!(error = %e, "loading a static code");
            Err(unavailable(lang, large))
        }
    }
}

pub(crate) fn detected_wallet(headers: &HeaderMap) -> Option<WalletBrand> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(paymux_qrcode::useragent::detect)
        .and_then(|a| a.wallet())
}

/// The wallets of the merchant's `qr_static` routes whose first account can run the in-app flow.
async fn payable_wallets(state: &AppState, merchant: Uuid) -> Vec<WalletBrand> {
    let mut out = Vec::new();
    for w in crate::codes::accepted_wallets(state, merchant).await {
        let routes = state.routes.listed(merchant, w, PayMethod::QrStatic).await;
        if routes
            .iter()
            .any(|r| r.channel.payer_auth_url("https://x/", "x").is_some())
        {
            out.push(w);
        }
    }
    out
}

fn header_block(lang: Lang, name: &str, row: &CodeRow) -> String {
    let mut body = format!(
        "<h1>{} {}</h1>",
        t(lang, "付款给", "Pay to"),
        escape_html(name)
    );
    if let Some(store) = row.description.as_ref().or(row.store_id.as_ref()) {
        body.push_str(&format!(
            "<p class=\"muted\" id=\"store\">{}</p>",
            escape_html(store)
        ));
    }
    body
}

/// The page for an app that cannot pay here: which apps can.
fn apps_page(
    lang: Lang,
    large: bool,
    name: &str,
    row: &CodeRow,
    opened_in: Option<WalletBrand>,
    apps: &[WalletBrand],
) -> Response {
    let mut body = header_block(lang, name, row);
    if let Some(a) = row.fixed_amount_minor {
        body.push_str(&format!(
            "<p class=\"amount\" id=\"amount\">¥{}</p>",
            yuan(a)
        ));
    }
    body.push_str(&apps_list(lang, opened_in, apps));
    html(StatusCode::OK, cashier_page(lang, name, &body, large))
}

/// The app the page was opened in (when it cannot pay here) and the apps that can pay.
pub(crate) fn apps_list(
    lang: Lang,
    opened_in: Option<WalletBrand>,
    apps: &[WalletBrand],
) -> String {
    let mut body = String::new();
    match opened_in {
        // Our own wallet has no channel yet: say so plainly, never pretend it can pay.
        Some(WalletBrand::Paymux) => body.push_str(&format!(
            "<p class=\"muted\" id=\"own-wallet\">{}</p>",
            t(
                lang,
                "Paymux 钱包暂时还不能支付此付款码，请用以下应用付款。",
                "The Paymux wallet cannot pay this code yet; please pay with one of the apps below."
            )
        )),
        Some(w) => body.push_str(&format!(
            "<p class=\"muted\" id=\"app\">{}: {} — {}</p>",
            t(lang, "当前应用", "Opened in"),
            wallet_label(lang, w),
            t(
                lang,
                "暂不支持在此应用中付款",
                "paying in this app is not supported here"
            )
        )),
        None => {}
    }
    if apps.is_empty() {
        body.push_str(&format!(
            "<p class=\"error\" id=\"apps\">{}</p>",
            t(
                lang,
                "此收款码暂时无法收款，请向商户确认。",
                "This code cannot take payments at the moment. Please ask the merchant."
            )
        ));
    } else {
        let items: String = apps
            .iter()
            .map(|w| format!("<li>{}</li>", wallet_label(lang, *w)))
            .collect();
        body.push_str(&format!(
            "<p>{}</p><ul id=\"apps\">{items}</ul>",
            t(
                lang,
                "请用以下应用扫描此收款码付款：",
                "Scan this code with one of these apps to pay:"
            )
        ));
    }
    body
}

/// The amount form (or the fixed amount) for a payable wallet; `refused` is the error and the
/// amount typed when the form is shown again.
fn pay_form(
    lang: Lang,
    large: bool,
    name: &str,
    row: &CodeRow,
    wallet: WalletBrand,
    refused: Option<(&str, &str)>,
    submission: &str,
) -> String {
    let (error, typed) = refused.map_or((None, ""), |(e, t)| (Some(e), t));
    let mut body = header_block(lang, name, row);
    body.push_str(&format!(
        "<p class=\"muted\" id=\"app\">{}: {}</p>",
        t(lang, "当前应用", "Opened in"),
        wallet_label(lang, wallet)
    ));
    let large_field = if large { "?large=1" } else { "" };
    body.push_str(&format!(
        "<form method=\"post\" action=\"/c/{}/pay{large_field}\" id=\"pay-form\">\
<input type=\"hidden\" name=\"submission\" value=\"{}\">",
        row.id,
        escape_html(submission)
    ));
    match row.fixed_amount_minor {
        Some(a) => body.push_str(&format!(
            "<p class=\"amount\" id=\"amount\">¥{}</p><input type=\"hidden\" name=\"amount\" value=\"{}\">",
            yuan(a),
            yuan(a)
        )),
        None => body.push_str(&format!(
            "<label for=\"amount-input\">{}</label>\
<input id=\"amount-input\" name=\"amount\" inputmode=\"decimal\" autocomplete=\"off\" required \
pattern=\"[0-9]{{1,9}}(\\.[0-9]{{1,2}})?\" placeholder=\"0.00\" value=\"{}\">",
            t(lang, "金额（元）", "Amount (CNY)"),
            escape_html(typed)
        )),
    }
    if let Some(e) = error {
        body.push_str(&format!(
            "<p class=\"error\" id=\"amount-error\">{}</p>",
            escape_html(e)
        ));
    }
    body.push_str(&format!(
        "<button type=\"submit\" id=\"pay\">{}</button></form>",
        t(lang, "付款", "Pay")
    ));
    cashier_page(lang, name, &body, large)
}

/// `GET /c/{id}`: the code's page in the scanning app (see the module documentation).
pub async fn code_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::of(&headers);
    let large = q.large();
    let row = match active_code(&state, &id, lang, large).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let name = merchant_name(&state.db, row.merchant_id)
        .await
        .unwrap_or_default();
    let apps = payable_wallets(&state, row.merchant_id).await;
    match detected_wallet(&headers) {
        Some(w) if apps.contains(&w) => html(
            StatusCode::OK,
            pay_form(
                lang,
                large,
                &name,
                &row,
                w,
                None,
                &FormPayment::issue(&state, row.id),
            ),
        ),
        opened_in => apps_page(lang, large, &name, &row, opened_in, &apps),
    }
}

/// `POST /c/{id}/pay` (form `amount`, yuan): creates the payment and sends the payer to the
/// wallet's OAuth step; refusals write nothing.
pub async fn submit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let lang = Lang::of(&headers);
    let large = q.large();
    let row = match active_code(&state, &id, lang, large).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let name = merchant_name(&state.db, row.merchant_id)
        .await
        .unwrap_or_default();
    let apps = payable_wallets(&state, row.merchant_id).await;
    let wallet = match detected_wallet(&headers) {
        Some(w) if apps.contains(&w) => w,
        opened_in => return apps_page(lang, large, &name, &row, opened_in, &apps),
    };
    let fields = form.map(|Form(f)| f).unwrap_or_default();
    let typed = fields.get("amount").cloned().unwrap_or_default();
    // The payment this form names (a new one when the field is missing, forged or too old).
    let form_payment = fields.get("submission").and_then(|f| {
        FormPayment::open(
            &FormPayment::key(&state),
            row.id,
            f,
            chrono::Utc::now().timestamp(),
        )
    });
    let submission = match (form_payment, fields.get("submission")) {
        (Some(_), Some(f)) => f.clone(),
        _ => FormPayment::issue(&state, row.id),
    };
    let amount = parse_yuan(&typed);
    let amount_minor = match (row.fixed_amount_minor, amount) {
        (Some(fixed), Some(a)) if a == fixed => fixed,
        (Some(fixed), _) => {
            let body = format!(
                "{}<p class=\"amount\" id=\"amount\">¥{}</p><p class=\"error\" id=\"amount-mismatch\">{}</p>",
                header_block(lang, &name, &row),
                yuan(fixed),
                t(
                    lang,
                    "付款金额与收款码的固定金额不符，未创建任何付款。请重新扫码。",
                    "The amount is not this code's fixed amount; nothing was charged. Please scan the code again."
                )
            );
            return html(
                StatusCode::UNPROCESSABLE_ENTITY,
                cashier_page(lang, &name, &body, large),
            );
        }
        (None, Some(a)) => a,
        (None, None) => {
            let e = t(
                lang,
                "请输入 0.01 至 100000000.00 之间的金额，最多两位小数。",
                "Enter an amount from 0.01 to 100000000.00, at most two decimals.",
            );
            return html(
                StatusCode::UNPROCESSABLE_ENTITY,
                pay_form(
                    lang,
                    large,
                    &name,
                    &row,
                    wallet,
                    Some((e, &typed)),
                    &submission,
                ),
            );
        }
    };
    let candidates = match state
        .routes
        .candidates(
            MerchantId::from(row.merchant_id),
            wallet,
            PayMethod::QrStatic,
        )
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(code_id = %row.id, error = ?e, "no account for a cashier payment");
            return unavailable(lang, large);
        }
    };
    let route = candidates.first;
    let redirect = format!("{}/c/{}/auth", state.paylinks.base_url(), row.id);
    let auth_url = |payment: Uuid| {
        let sealed = CashierState {
            payment,
            account: route.id.into(),
            amount_minor,
            expires_at_s: chrono::Utc::now().timestamp() + STATE_TTL_SECS,
        }
        .seal(&CashierState::key(&state), row.id);
        route.channel.payer_auth_url(&redirect, &sealed)
    };
    if auth_url(Uuid::nil()).is_none() {
        return apps_page(lang, large, &name, &row, Some(wallet), &apps);
    }
    // Anonymous requests write a payment: limited per code (a till's code sees a few payers a
    // minute), apart from the merchant's signed API budget; a refused request above wrote nothing.
    if let Err(wait) = state.cashier_limiter.check(row.id).await {
        return too_many_requests(lang, large, wait);
    }
    let mut payment_id = form_payment.map_or_else(|| Uuid::from(PaymentId::new()), |f| f.payment);
    let now = now_us();
    let subject = row
        .description
        .clone()
        .or_else(|| row.store_id.clone())
        .unwrap_or_else(|| t(lang, "收款码付款", "Static code payment").to_string());
    let mut payment = PaymentRow {
        id: payment_id,
        merchant_id: row.merchant_id,
        merchant_order_no: format!("cashier-{}", payment_id.simple()),
        request_hash: format!("cashier:{}:{amount_minor}:{wallet}", row.id),
        amount_minor,
        currency: "CNY".into(),
        subject,
        method: PayMethod::QrStatic.as_str().to_string(),
        wallet: Some(wallet.as_str().to_string()),
        status: PaymentStatus::Created.as_str().to_string(),
        notify_url: None,
        store_id: row.store_id.clone(),
        terminal_id: row.terminal_id.clone(),
        metadata: Some(serde_json::json!({"code_id": row.id.to_string()}).to_string()),
        refunded_amount_minor: 0,
        channel_account_id: None,
        channel_trade_no: None,
        late_success: false,
        failure_code: None,
        failure_message: None,
        closed_reason: None,
        expires_at_us: now + i64::from(state.config.payment_expires_in_seconds_default) * 1_000_000,
        created_at_us: now,
        updated_at_us: now,
        paid_at_us: None,
        qr_code: None,
    };
    // The same form again (same amount and app) is the payment it created; the form again with
    // another amount (the payer went back and changed it) is a new payment.
    for attempt in 0..2 {
        match state
            .batcher
            .submit(WriteOp::CreatePayment(Box::new(payment.clone())))
            .await
        {
            Ok(WriteOutcome::Created(_)) => {
                metrics::counter!("paymux_payments_created_total", "method" => PayMethod::QrStatic.as_str())
                    .increment(1);
                break;
            }
            Ok(WriteOutcome::Existing(_)) => break,
            Ok(WriteOutcome::Conflict(_)) if attempt == 0 => {
                payment_id = Uuid::from(PaymentId::new());
                payment.id = payment_id;
                payment.merchant_order_no = format!("cashier-{}", payment_id.simple());
            }
            other => {
                tracing::error!(code_id = %row.id, outcome = ?other, "creating a cashier payment");
                return unavailable(lang, large);
            }
        }
    }
    let Some(auth_url) = auth_url(payment_id) else {
        return unavailable(lang, large);
    };
    match axum::http::HeaderValue::from_str(&auth_url) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => unavailable(lang, large),
    }
}

/// The OAuth redirect's query: WeChat sends `code`, Alipay `auth_code`, UnionPay `userAuthCode`
/// and `respCode` (the `state` rides in UnionPay's `redirectUrl`).
#[derive(Debug, Default, serde::Deserialize)]
pub struct AuthQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    auth_code: Option<String>,
    #[serde(default, rename = "userAuthCode")]
    user_auth_code: Option<String>,
    #[serde(default, rename = "respCode")]
    resp_code: Option<String>,
    #[serde(default)]
    pub(crate) state: Option<String>,
}

impl AuthQuery {
    /// The wallet's one-time code, unless the wallet said the authorisation failed.
    pub(crate) fn auth_code(&self) -> Option<&str> {
        if self.resp_code.as_deref().is_some_and(|c| c != "00") {
            return None;
        }
        self.code
            .as_deref()
            .or(self.auth_code.as_deref())
            .or(self.user_auth_code.as_deref())
            .filter(|c| !c.is_empty() && c.len() <= 256)
    }
}

pub(crate) fn invalid_link(lang: Lang) -> Response {
    message(
        StatusCode::BAD_REQUEST,
        lang,
        false,
        "error",
        ("链接无效", "此付款链接无效、已过期或已被篡改，请重新扫码。"),
        (
            "Invalid link",
            "This payment link is not valid, has expired or has been altered. Please scan the code again.",
        ),
    )
}

/// `GET /c/{id}/auth`: back from the wallet's OAuth step — the payer's id, the channel's in-app
/// order on the account the state names, and the pay page.
pub async fn authorized(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<AuthQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::of(&headers);
    let Ok(Query(q)) = query else {
        return invalid_link(lang);
    };
    let Ok(code_id) = Uuid::parse_str(&id) else {
        return unknown_code(lang, false);
    };
    let Some(s) = q.state.as_deref().and_then(|st| {
        CashierState::open(
            &CashierState::key(&state),
            code_id,
            st,
            chrono::Utc::now().timestamp(),
        )
    }) else {
        return invalid_link(lang);
    };
    let Some(auth_code) = q.auth_code().map(str::to_string) else {
        return invalid_link(lang);
    };
    let row = match active_code(&state, &id, lang, false).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let payment = match crate::payments::repo::get_any(&state.db, s.payment).await {
        Ok(Some(p))
            if p.merchant_id == row.merchant_id
                && p.amount_minor == s.amount_minor
                && p.method == PayMethod::QrStatic.as_str() =>
        {
            p
        }
        Ok(_) => return invalid_link(lang),
        Err(e) => {
            tracing::error!(error = %e, "loading a cashier payment");
            return unavailable(lang, false);
        }
    };
    let result_url = format!(
        "{}/c/{}/r/{}",
        state.paylinks.base_url(),
        row.id,
        state.paylinks.token(payment.id)
    );
    if payment.status() != PaymentStatus::Created
        || payment.channel_account_id.is_some()
        || payment.expires_at_us <= now_us()
    {
        // Already on its way (a reload, the back button), or past its expiry (the sweeper closes
        // it; no order is made at the channel for it any more): its result.
        return (StatusCode::SEE_OTHER, [(header::LOCATION, result_url)]).into_response();
    }
    let Some(route) = state
        .routes
        .account(ChannelAccountId::from(s.account))
        .await
    else {
        return unavailable(lang, false);
    };
    let auth = paymux_channels::PayerAuth {
        code: &auth_code,
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
    };
    let payer = match route.channel.payer_id(&auth).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(payment_id = %payment.id, error = %e, "exchanging the payer's authorisation");
            return invalid_link(lang);
        }
    };
    let req = paymux_channels::CreateOrder {
        order: paymux_channels::OrderRequest {
            out_trade_no: crate::orchestrate::out_trade_no(payment.id),
            amount: paymux_model::Money::cny(payment.amount_minor),
            subject: payment.subject.clone(),
            notify_url: None,
            expires_at: Some(crate::db::us_to_datetime(payment.expires_at_us)),
            client_ip: None,
            store_id: payment.store_id.clone(),
            terminal_id: payment.terminal_id.clone(),
        },
        kind: paymux_channels::CreateKind::Jsapi { payer_id: payer },
    };
    let params = match route.create_order(&req).await {
        Ok(paymux_channels::CreatedOrder::Jsapi { params }) => params,
        other => {
            tracing::warn!(payment_id = %payment.id, answer = ?other, "creating the in-app order");
            let _ = state
                .batcher
                .submit(WriteOp::Transition {
                    payment_id: PaymentId::from(payment.id),
                    to: PaymentStatus::Closed,
                    closed_reason: Some("channel_error".into()),
                })
                .await;
            return unavailable(lang, false);
        }
    };
    let reference = order_reference(&params);
    let attached = state
        .batcher
        .submit(WriteOp::AttachQr {
            payment_id: PaymentId::from(payment.id),
            channel_account_id: route.id.into(),
            qr_code: reference,
        })
        .await;
    if let Err(e) = &attached {
        // Not known to be closed: the payer may try again; the channel's order ends at the
        // payment's expiry, which it was created with.
        tracing::warn!(payment_id = %payment.id, error = %e, "recording the cashier payment's in-app order");
        return unavailable(lang, false);
    }
    if !matches!(attached, Ok(WriteOutcome::Transitioned(true))) {
        tracing::warn!(payment_id = %payment.id, outcome = ?attached, "the cashier payment was closed meanwhile");
        if let Err(e) = route
            .close(&crate::orchestrate::out_trade_no(payment.id))
            .await
        {
            tracing::warn!(payment_id = %payment.id, error = %e, "closing the in-app order of a closed payment");
        }
        return (StatusCode::SEE_OTHER, [(header::LOCATION, result_url)]).into_response();
    }
    let wallet = payment
        .wallet
        .as_deref()
        .and_then(|w| w.parse::<WalletBrand>().ok())
        .unwrap_or(WalletBrand::Wechat);
    let name = merchant_name(&state.db, row.merchant_id)
        .await
        .unwrap_or_default();
    html(
        StatusCode::OK,
        pay_page(
            lang,
            &name,
            &payment,
            wallet,
            &params,
            route.channel.wallet_stand_in_url(),
            &result_url,
        ),
    )
}

/// The channel's reference of an in-app order (WeChat `prepay_id=…`, Alipay trade number,
/// UnionPay `tn`), kept in the payment's `qr_code`.
pub(crate) fn order_reference(params: &serde_json::Value) -> String {
    params["package"]
        .as_str()
        .or(params["tradeNO"].as_str())
        .or(params["tn"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// JSON for a `<script>` element: `<`, `>` and `&` escaped so it cannot close the element.
fn script_json(v: &serde_json::Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The page that hands the order to the wallet: its bridge inside the app, or the sandbox's
/// stand-in page when the bridge is absent and the account is a sandbox's.
pub(crate) fn pay_page(
    lang: Lang,
    name: &str,
    payment: &PaymentRow,
    wallet: WalletBrand,
    params: &serde_json::Value,
    stand_in: Option<String>,
    result_url: &str,
) -> String {
    let (bridge_js, fields): (&str, Vec<&str>) = match wallet {
        WalletBrand::Alipay => (
            "function(){AlipayJSBridge.call('tradePay',{tradeNO:p.tradeNO},function(){done()})}",
            vec!["tradeNO"],
        ),
        WalletBrand::Unionpay => (
            "function(){upsdk.pay({tn:p.tn,success:done,fail:done,cancel:done})}",
            vec!["tn"],
        ),
        _ => (
            "function(){WeixinJSBridge.invoke('getBrandWCPayRequest',p,function(){done()})}",
            vec![
                "appId",
                "timeStamp",
                "nonceStr",
                "package",
                "signType",
                "paySign",
            ],
        ),
    };
    let bridge_name = match wallet {
        WalletBrand::Alipay => "AlipayJSBridge",
        WalletBrand::Unionpay => "upsdk",
        _ => "WeixinJSBridge",
    };
    let mut body = format!(
        "<h1>{} {}</h1><p class=\"amount\" id=\"amount\">¥{}</p><p class=\"muted\" id=\"paying\">{}</p>",
        t(lang, "付款给", "Pay to"),
        escape_html(name),
        yuan(payment.amount_minor),
        t(lang, "正在打开支付…", "Opening the payment…"),
    );
    let config =
        serde_json::json!({"result": result_url, "standIn": stand_in, "bridge": bridge_name});
    body.push_str(&format!(
        "<script type=\"application/json\" id=\"params\">{}</script>\
<script type=\"application/json\" id=\"config\">{}</script>",
        script_json(params),
        script_json(&config)
    ));
    if let Some(url) = &stand_in {
        let hidden: String = fields
            .iter()
            .map(|k| {
                format!(
                    "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                    escape_html(params[*k].as_str().unwrap_or_default())
                )
            })
            .collect();
        body.push_str(&format!(
            "<form method=\"post\" action=\"{}\" id=\"stand-in\">{hidden}\
<input type=\"hidden\" name=\"return_url\" value=\"{}\">\
<button type=\"submit\" id=\"open-wallet\">{}</button></form>",
            escape_html(url),
            escape_html(result_url),
            t(lang, "打开沙箱钱包付款", "Pay in the sandbox wallet"),
        ));
    }
    body.push_str(&format!(
        "<p><a href=\"{}\" id=\"result-link\">{}</a></p>",
        escape_html(result_url),
        t(lang, "查看付款结果", "See the payment result")
    ));
    body.push_str(&format!(
        "<script>(function(){{var p=JSON.parse(document.getElementById('params').textContent);\
var c=JSON.parse(document.getElementById('config').textContent);\
function done(){{location.href=c.result}}var pay={bridge_js};\
if(window[c.bridge]){{pay()}}else if(c.standIn){{document.getElementById('stand-in').submit()}}\
else{{document.addEventListener(c.bridge+'Ready',pay,false)}}}})();</script>"
    ));
    cashier_page(lang, name, &body, false)
}

fn status_text(status: PaymentStatus, lang: Lang) -> &'static str {
    match status {
        PaymentStatus::Created | PaymentStatus::Processing => {
            t(lang, "等待支付结果…", "Waiting for the payment…")
        }
        PaymentStatus::Succeeded => t(lang, "支付成功", "Paid"),
        PaymentStatus::Failed => t(lang, "支付失败", "Payment failed"),
        PaymentStatus::Closed => t(lang, "付款已关闭", "Payment closed"),
    }
}

/// The payment of a result-page token, if it is a cashier payment of this code.
async fn token_payment(
    state: &AppState,
    id: &str,
    token: &str,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    let (Ok(code_id), Some(pid)) = (Uuid::parse_str(id), state.paylinks.verify(token)) else {
        return Ok(None);
    };
    let Some(p) = crate::payments::repo::get_any(&state.db, pid).await? else {
        return Ok(None);
    };
    let of_code = p.method == PayMethod::QrStatic.as_str()
        && p.metadata
            .as_deref()
            .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
            .is_some_and(|m| m["code_id"] == code_id.to_string());
    Ok(of_code.then_some(p))
}

/// `GET /c/{id}/r/{token}`: the payment's result; polls until final.
pub async fn result_page(
    State(state): State<AppState>,
    Path((id, token)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::of(&headers);
    let large = q.large();
    let p = match token_payment(&state, &id, &token).await {
        Ok(Some(p)) => p,
        Ok(None) => return invalid_link(lang),
        Err(e) => {
            tracing::error!(error = %e, "loading a cashier payment");
            return unavailable(lang, large);
        }
    };
    let name = merchant_name(&state.db, p.merchant_id)
        .await
        .unwrap_or_default();
    result_html(lang, large, &name, &p)
}

/// The result page of a payment: its status, polled at `<this page>/status` until final.
pub(crate) fn result_html(lang: Lang, large: bool, name: &str, p: &PaymentRow) -> Response {
    let status = p.status();
    let texts = serde_json::json!({
        "created": status_text(PaymentStatus::Created, lang),
        "processing": status_text(PaymentStatus::Processing, lang),
        "succeeded": status_text(PaymentStatus::Succeeded, lang),
        "failed": status_text(PaymentStatus::Failed, lang),
        "closed": status_text(PaymentStatus::Closed, lang),
    });
    let body = format!(
        "<h1>{} {}</h1><p class=\"amount\" id=\"amount\">¥{}</p>\
<p><span class=\"status {code}\" id=\"status\" data-status=\"{code}\">{text}</span></p>\
<script type=\"application/json\" id=\"texts\">{texts}</script>\
<script>(function(){{var el=document.getElementById('status'),\
tx=JSON.parse(document.getElementById('texts').textContent),n=0;\
function fin(s){{return s==='succeeded'||s==='failed'||s==='closed'}}\
function tick(){{if(fin(el.dataset.status)||n++>400)return;\
fetch(location.pathname+'/status',{{cache:'no-store'}}).then(function(r){{return r.json()}})\
.then(function(j){{if(j.status!==el.dataset.status){{el.dataset.status=j.status;el.className='status '+j.status;\
el.textContent=tx[j.status]||j.status}}setTimeout(tick,1500)}},function(){{setTimeout(tick,3000)}})}}\
setTimeout(tick,1000)}})();</script>",
        t(lang, "付款给", "Paid to"),
        escape_html(name),
        yuan(p.amount_minor),
        code = status.as_str(),
        text = status_text(status, lang),
        texts = script_json(&texts),
    );
    html(StatusCode::OK, cashier_page(lang, name, &body, large))
}

/// `GET /c/{id}/r/{token}/status`: `{"status"}`. A payment still waiting a few seconds after its
/// order was attached is asked about at its channel (settled if paid there).
pub async fn status(
    State(state): State<AppState>,
    Path((id, token)): Path<(String, String)>,
) -> Response {
    let p = match token_payment(&state, &id, &token).await {
        Ok(Some(p)) => p,
        Ok(None) => return crate::error::ApiError::not_found("payment").into_response(),
        Err(e) => return crate::error::ApiError::from(e).into_response(),
    };
    status_json(&state, &p).await
}

/// At most one channel query per payment this often, however often its result page is polled
/// (the status endpoint is public: the merchant's query quota at the channel is not).
const QUERY_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// Payments whose channel was queried in the last [`QUERY_EVERY`] on this node.
fn recently_queried() -> &'static moka::sync::Cache<Uuid, ()> {
    static CACHE: std::sync::OnceLock<moka::sync::Cache<Uuid, ()>> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| {
        moka::sync::Cache::builder()
            .max_capacity(1_000_000)
            .time_to_live(QUERY_EVERY)
            .build()
    })
}

/// `{"status"}` of a polled payment; one still waiting a few seconds after its order was attached
/// is asked about at its channel (settled if paid there), at most every [`QUERY_EVERY`].
pub(crate) async fn status_json(state: &AppState, p: &PaymentRow) -> Response {
    let mut status = p.status();
    if status == PaymentStatus::Created
        && now_us() - p.updated_at_us > QUERY_AFTER_US
        && let Some(account) = p.channel_account_id
        && let Some(route) = state.routes.account(ChannelAccountId::from(account)).await
        && recently_queried().entry(p.id).or_insert(()).is_fresh()
        && let Ok(trade) = route.query(&crate::orchestrate::out_trade_no(p.id)).await
        && trade.state == paymux_channels::TradeState::Succeeded
    {
        match crate::orchestrate::settle_paid(state, p, &route, trade).await {
            Ok(true) => status = PaymentStatus::Succeeded,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(payment_id = %p.id, error = ?e, "settling a polled cashier payment")
            }
        }
    }
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({"status": status.as_str()})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_text_to_fen_exactly() {
        assert_eq!(parse_yuan("12"), Some(1200));
        assert_eq!(parse_yuan(" 12.3 "), Some(1230));
        assert_eq!(parse_yuan("0.01"), Some(1));
        assert_eq!(parse_yuan("100000000.00"), Some(AMOUNT_MINOR_MAX));
        for bad in [
            "",
            "0",
            "0.00",
            "-1",
            "1.234",
            "1.",
            ".5",
            "1e3",
            "１２",
            "100000000.01",
            "9999999999",
        ] {
            assert_eq!(parse_yuan(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_state_opens_only_for_its_code_untouched_and_in_time() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[9u8; 32]);
        let code = Uuid::now_v7();
        let s = CashierState {
            payment: Uuid::now_v7(),
            account: Uuid::now_v7(),
            amount_minor: 1234,
            expires_at_s: 1_000,
        };
        let sealed = s.seal(&key, code);
        assert!(sealed.len() <= 128);
        assert_eq!(CashierState::open(&key, code, &sealed, 1_000), Some(s));
        assert_eq!(
            CashierState::open(&key, code, &sealed, 1_001),
            None,
            "expired"
        );
        assert_eq!(
            CashierState::open(&key, Uuid::now_v7(), &sealed, 0),
            None,
            "other code"
        );
        for i in 0..sealed.len() {
            let mut b = sealed.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(b).unwrap();
            if forged != sealed {
                assert_eq!(
                    CashierState::open(&key, code, &forged, 0),
                    None,
                    "position {i}"
                );
            }
        }
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[8u8; 32]);
        assert_eq!(CashierState::open(&other, code, &sealed, 0), None);
    }

    #[test]
    fn script_json_cannot_close_its_element() {
        let v = serde_json::json!({"x": "</script><b>&"});
        let s = script_json(&v);
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('&'));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&s).unwrap(), v);
    }
}
