//! Payment links: the aggregated URL `/p/{token}` of a `qr_merchant` payment made without a
//! `wallet`, which any wallet app can open.
//!
//! The token is the payment id and a truncated HMAC-SHA256 tag over it (key derived from the master
//! key), base64url without padding: `/p/` pages cannot be enumerated or forged, and a tampered token
//! is refused before the database is asked. The QR payload of such a payment is the URL itself.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use paymux_model::{PayMethod, PaymentStatus, WalletBrand};
use uuid::Uuid;

use crate::AppState;
use crate::crypto::SecretBox;
use crate::payments::model::{Payment, PaymentRow};

/// Bytes of the HMAC tag kept in a token (128 bits).
const TAG_LEN: usize = 16;

/// Signs and checks payment-link tokens and builds their URLs.
#[derive(Clone)]
pub struct PayLinks {
    key: ring::hmac::Key,
    base_url: String,
}

impl std::fmt::Debug for PayLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayLinks")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl PayLinks {
    /// `base_url` is the server's public base URL without a trailing slash.
    pub fn new(secrets: &SecretBox, base_url: &str) -> PayLinks {
        let key = secrets.derive_key("paymux payment link v1");
        PayLinks {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    fn tag(&self, id: &Uuid) -> ring::hmac::Tag {
        ring::hmac::sign(&self.key, id.as_bytes())
    }

    /// The token of a payment: 43 URL-safe characters.
    pub fn token(&self, id: Uuid) -> String {
        let mut raw = Vec::with_capacity(16 + TAG_LEN);
        raw.extend_from_slice(id.as_bytes());
        raw.extend_from_slice(&self.tag(&id).as_ref()[..TAG_LEN]);
        B64URL.encode(raw)
    }

    /// The payment id of a genuine token; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<Uuid> {
        if token.len() != 43 {
            return None;
        }
        let raw = B64URL.decode(token).ok()?;
        if raw.len() != 16 + TAG_LEN {
            return None;
        }
        let id = Uuid::from_slice(&raw[..16]).ok()?;
        let expected = self.tag(&id);
        // Constant time: every byte is compared whatever the first difference.
        let diff = expected.as_ref()[..TAG_LEN]
            .iter()
            .zip(&raw[16..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0).then_some(id)
    }

    /// The public base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `<public_base_url>/p/<token>`.
    pub fn url(&self, id: Uuid) -> String {
        format!("{}/p/{}", self.base_url, self.token(id))
    }

    /// Whether a payment is shown through a link: C2B without a wallet chosen by the merchant.
    pub fn applies(row: &PaymentRow) -> bool {
        row.method == PayMethod::QrMerchant.as_str() && row.wallet.is_none()
    }

    /// The payment as the API shows it, with its link and QR payload when it has one.
    pub fn present(&self, row: &PaymentRow) -> Payment {
        let mut p = Payment::from(row);
        if Self::applies(row) {
            let url = self.url(row.id);
            p.qr_code = Some(url.clone());
            p.pay_url = Some(url);
        }
        p
    }
}

/// The languages a page is shown in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    /// Chinese unless the first language the client asks for is English.
    pub fn of(headers: &HeaderMap) -> Lang {
        let first = headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if first.starts_with("en") {
            Lang::En
        } else {
            Lang::Zh
        }
    }
}

/// Text safe to put into HTML element content and quoted attribute values.
pub use paymux_qrcode::render::xml_escape as escape_html;

/// `12.34` from 1234 fen.
pub fn yuan(fen: i64) -> String {
    format!("{}.{:02}", fen / 100, (fen % 100).abs())
}

fn status_text(status: PaymentStatus, lang: Lang) -> &'static str {
    match (status, lang) {
        (PaymentStatus::Created, Lang::Zh) => "待支付",
        (PaymentStatus::Created, Lang::En) => "Awaiting payment",
        (PaymentStatus::Processing, Lang::Zh) => "支付处理中",
        (PaymentStatus::Processing, Lang::En) => "Processing",
        (PaymentStatus::Succeeded, Lang::Zh) => "支付成功",
        (PaymentStatus::Succeeded, Lang::En) => "Paid",
        (PaymentStatus::Failed, Lang::Zh) => "支付失败",
        (PaymentStatus::Failed, Lang::En) => "Payment failed",
        (PaymentStatus::Closed, Lang::Zh) => "已关闭",
        (PaymentStatus::Closed, Lang::En) => "Closed",
    }
}

fn wallet_name(w: WalletBrand, lang: Lang) -> &'static str {
    match (w, lang) {
        (WalletBrand::Wechat, Lang::Zh) => "微信支付",
        (WalletBrand::Wechat, Lang::En) => "WeChat Pay",
        (WalletBrand::Alipay, Lang::Zh) => "支付宝",
        (WalletBrand::Alipay, Lang::En) => "Alipay",
        (WalletBrand::Unionpay, Lang::Zh) => "云闪付",
        (WalletBrand::Unionpay, Lang::En) => "UnionPay QuickPass",
        (_, Lang::Zh) => "钱包",
        (_, Lang::En) => "Wallet",
    }
}

/// A small page, no external assets, readable on a narrow phone screen.
pub fn page(lang: Lang, title: &str, body: &str) -> String {
    let html_lang = match lang {
        Lang::Zh => "zh-CN",
        Lang::En => "en",
    };
    format!(
        "<!doctype html><html lang=\"{html_lang}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{title}</title><style>\
body{{font-family:system-ui,sans-serif;margin:0;padding:1.25rem;max-width:28rem;margin:auto;color:#1a1a1a}}\
h1{{font-size:1.25rem}}.amount{{font-size:2.25rem;font-weight:700;margin:.5rem 0}}\
.muted{{color:#555}}.status{{display:inline-block;padding:.25rem .75rem;border-radius:1rem;background:#eef}}\
</style></head><body>{body}</body></html>",
        title = escape_html(title),
    )
}

fn not_found_page(lang: Lang) -> Response {
    let (title, text) = match lang {
        Lang::Zh => (
            "链接无效",
            "此付款链接无效或已被篡改，请向商户索取新的付款码。",
        ),
        Lang::En => (
            "Invalid link",
            "This payment link is not valid or has been altered. Ask the merchant for a new code.",
        ),
    };
    let body = format!("<h1>{title}</h1><p class=\"muted\" id=\"error\">{text}</p>");
    (
        StatusCode::NOT_FOUND,
        [(header::CACHE_CONTROL, "no-store")],
        Html(page(lang, title, &body)),
    )
        .into_response()
}

/// `GET /p/{token}`: the payment behind a link — merchant, subject, amount, status and the wallets
/// it can be paid with. A tampered or unknown token gets a 404 page; nothing is written.
pub async fn show(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::of(&headers);
    let Some(id) = state.paylinks.verify(&token) else {
        return not_found_page(lang);
    };
    let row = match crate::payments::repo::get_any(&state.db, id).await {
        Ok(Some(row)) if PayLinks::applies(&row) => row,
        Ok(_) => return not_found_page(lang),
        Err(e) => {
            tracing::error!(error = %e, "loading a payment for its link");
            return crate::error::ApiError::unavailable(e).into_response();
        }
    };
    let merchant = merchant_name(&state, row.merchant_id).await;
    let app = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(paymux_qrcode::useragent::detect)
        .and_then(|a| a.wallet());
    let wallets: Vec<&str> = state
        .routes
        .wallets(row.merchant_id, PayMethod::QrMerchant)
        .await
        .into_iter()
        .map(|w| wallet_name(w, lang))
        .collect();
    let (pay_to, accepted, opened_in) = match lang {
        Lang::Zh => ("付款给", "可用", "当前应用"),
        Lang::En => ("Pay to", "Accepted", "Opened in"),
    };
    let status = row.status();
    let mut body = format!(
        "<h1>{pay_to} {merchant}</h1><p class=\"muted\">{subject}</p>\
<p class=\"amount\" id=\"amount\">¥{amount}</p>\
<p><span class=\"status\" id=\"status\" data-status=\"{code}\">{status_text}</span></p>",
        merchant = escape_html(&merchant),
        subject = escape_html(&row.subject),
        amount = yuan(row.amount_minor),
        code = status.as_str(),
        status_text = status_text(status, lang),
    );
    if !status.is_final() {
        body.push_str(&format!(
            "<p class=\"muted\">{accepted}: {}</p>",
            wallets.join(" · ")
        ));
        if let Some(w) = app {
            body.push_str(&format!(
                "<p class=\"muted\">{opened_in}: {}</p>",
                wallet_name(w, lang)
            ));
        }
    }
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Html(page(lang, &format!("¥{}", yuan(row.amount_minor)), &body)),
    )
        .into_response()
}

async fn merchant_name(state: &AppState, id: Uuid) -> String {
    let sql = "SELECT name FROM merchants WHERE id = $1";
    let name: Option<String> = match &state.db {
        crate::db::Db::Sqlite(pool) => sqlx::query_scalar(sql)
            .bind(id)
            .fetch_optional(pool)
            .await
            .ok()
            .flatten(),
        crate::db::Db::Postgres(pool) => sqlx::query_scalar(sql)
            .bind(id)
            .fetch_optional(pool)
            .await
            .ok()
            .flatten(),
    };
    name.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> PayLinks {
        PayLinks::new(&SecretBox::new(&[7u8; 32]), "https://pay.example.com/")
    }

    #[test]
    fn a_token_verifies_to_its_payment() {
        let l = links();
        let id = Uuid::now_v7();
        let t = l.token(id);
        assert_eq!(t.len(), 43);
        assert_eq!(l.verify(&t), Some(id));
        assert_eq!(
            l.url(id),
            format!("https://pay.example.com/p/{t}"),
            "trailing slash of the base URL dropped"
        );
    }

    #[test]
    fn tampered_tokens_and_other_keys_are_refused() {
        let l = links();
        let id = Uuid::now_v7();
        let t = l.token(id);
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(b).unwrap();
            if forged != t {
                assert_eq!(l.verify(&forged), None, "position {i}");
            }
        }
        let other = PayLinks::new(&SecretBox::new(&[8u8; 32]), "https://pay.example.com");
        assert_eq!(other.verify(&t), None);
        for garbage in ["", "x", "%%%", &"A".repeat(43), &"é".repeat(22)] {
            assert_eq!(l.verify(garbage), None);
        }
    }

    #[test]
    fn html_is_escaped_and_amounts_exact() {
        assert_eq!(
            escape_html("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&apos;&amp;&apos;&lt;/a&gt;"
        );
        assert_eq!(yuan(1), "0.01");
        assert_eq!(yuan(1234), "12.34");
        assert_eq!(yuan(10_000_000_000), "100000000.00");
    }
}
