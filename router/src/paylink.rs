//! Payment links: the aggregated URL `/p/{token}` of a `qr_merchant` payment made without a
//! `wallet`, which any wallet app can open.
//!
//! The token is the payment id and a truncated HMAC-SHA256 tag over it (key derived from the master
//! key), base64url without padding: `/p/` pages cannot be enumerated or forged, and a tampered token
//! is refused before the database is asked. The QR payload of such a payment is the URL itself.
//! The pages behind the link, and paying it in a wallet app, are [`crate::linkpay`]'s.

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use paymux_model::PayMethod;
use uuid::Uuid;

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
