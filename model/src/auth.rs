//! The merchant request-signing scheme, `PAYMUX-HMAC-SHA256`.
//!
//! ```text
//! Authorization: PAYMUX-HMAC-SHA256 key_id=<key id>,timestamp=<unix seconds>,nonce=<16–64 [A-Za-z0-9]>,signature=<lowercase hex>
//! signature = HMAC-SHA256(key_secret, METHOD "\n" PATH_AND_QUERY "\n" timestamp "\n" nonce "\n" hex(SHA-256(body)) "\n")
//! ```

use ring::{digest, hmac};

/// The authorization scheme name.
pub const SCHEME: &str = "PAYMUX-HMAC-SHA256";
/// How far a request's timestamp may be from the server's clock, in seconds.
pub const TIMESTAMP_WINDOW_SECONDS: i64 = 300;
pub const NONCE_LEN_MIN: usize = 16;
pub const NONCE_LEN_MAX: usize = 64;

/// The exact bytes that are signed.
pub fn string_to_sign(
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> String {
    let body_hash = hex::encode(digest::digest(&digest::SHA256, body));
    format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{body_hash}\n")
}

/// The lowercase-hex signature of a request.
pub fn sign(
    key_secret: &[u8],
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key_secret);
    let tag = hmac::sign(
        &key,
        string_to_sign(method, path_and_query, timestamp, nonce, body).as_bytes(),
    );
    hex::encode(tag.as_ref())
}

/// Verifies a lowercase-hex signature in constant time.
pub fn verify(
    key_secret: &[u8],
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
    signature_hex: &str,
) -> bool {
    let Ok(signature) = hex::decode(signature_hex) else {
        return false;
    };
    if signature_hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return false;
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, key_secret);
    let msg = string_to_sign(method, path_and_query, timestamp, nonce, body);
    hmac::verify(&key, msg.as_bytes(), &signature).is_ok()
}

/// The whole `Authorization` header value for a request.
pub fn authorization_header(
    key_id: &str,
    key_secret: &[u8],
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> String {
    let signature = sign(key_secret, method, path_and_query, timestamp, nonce, body);
    format!("{SCHEME} key_id={key_id},timestamp={timestamp},nonce={nonce},signature={signature}")
}

/// The parsed parameters of an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthParams<'a> {
    pub key_id: &'a str,
    pub timestamp: i64,
    pub nonce: &'a str,
    pub signature: &'a str,
}

/// Parses an `Authorization` header value. Every parameter must appear exactly once.
pub fn parse_authorization(value: &str) -> Option<AuthParams<'_>> {
    let rest = value.strip_prefix(SCHEME)?.strip_prefix(' ')?;
    let (mut key_id, mut timestamp, mut nonce, mut signature) = (None, None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        let slot = match k {
            "key_id" => &mut key_id,
            "timestamp" => &mut timestamp,
            "nonce" => &mut nonce,
            "signature" => &mut signature,
            _ => return None,
        };
        if slot.replace(v).is_some() {
            return None;
        }
    }
    let key_id = key_id.filter(|k| !k.is_empty() && k.len() <= 64)?;
    let timestamp_str = timestamp?;
    if timestamp_str.is_empty()
        || timestamp_str.len() > 12
        || !timestamp_str.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let timestamp = timestamp_str.parse().ok()?;
    let nonce = nonce?;
    if !(NONCE_LEN_MIN..=NONCE_LEN_MAX).contains(&nonce.len())
        || !nonce.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return None;
    }
    let signature = signature?;
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    Some(AuthParams {
        key_id,
        timestamp,
        nonce,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_documented_string() {
        let s = string_to_sign(
            "POST",
            "/v1/payments?x=1",
            1700000000,
            "abcdefghijklmnop",
            b"{}",
        );
        assert_eq!(
            s,
            "POST\n/v1/payments?x=1\n1700000000\nabcdefghijklmnop\n44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\n"
        );
        let sig = sign(
            b"secret",
            "POST",
            "/v1/payments?x=1",
            1700000000,
            "abcdefghijklmnop",
            b"{}",
        );
        assert_eq!(sig.len(), 64);
        assert!(verify(
            b"secret",
            "POST",
            "/v1/payments?x=1",
            1700000000,
            "abcdefghijklmnop",
            b"{}",
            &sig
        ));
        assert!(!verify(
            b"secret",
            "POST",
            "/v1/payments?x=2",
            1700000000,
            "abcdefghijklmnop",
            b"{}",
            &sig
        ));
        assert!(!verify(
            b"other",
            "POST",
            "/v1/payments?x=1",
            1700000000,
            "abcdefghijklmnop",
            b"{}",
            &sig
        ));
        assert!(!verify(
            b"secret",
            "POST",
            "/v1/payments?x=1",
            1700000000,
            "abcdefghijklmnop",
            b"{}",
            &sig.to_uppercase()
        ));
    }

    #[test]
    fn parses_headers_strictly() {
        let sig = "a".repeat(64);
        let ok = format!(
            "PAYMUX-HMAC-SHA256 key_id=k1,timestamp=1700000000,nonce=abcdefghijklmnop,signature={sig}"
        );
        let p = parse_authorization(&ok).unwrap();
        assert_eq!(
            (p.key_id, p.timestamp, p.nonce),
            ("k1", 1700000000, "abcdefghijklmnop")
        );
        for bad in [
            String::new(),
            "Bearer x".to_string(),
            format!("PAYMUX-HMAC-SHA256 key_id=k1,timestamp=1,nonce=short,signature={sig}"),
            format!(
                "PAYMUX-HMAC-SHA256 key_id=k1,timestamp=-1,nonce=abcdefghijklmnop,signature={sig}"
            ),
            format!(
                "PAYMUX-HMAC-SHA256 key_id=k1,timestamp=1,nonce=abcdefghijklmno!,signature={sig}"
            ),
            format!(
                "PAYMUX-HMAC-SHA256 key_id=k1,timestamp=1,nonce=abcdefghijklmnop,signature={}",
                "A".repeat(64)
            ),
            format!(
                "PAYMUX-HMAC-SHA256 key_id=k1,key_id=k2,timestamp=1,nonce=abcdefghijklmnop,signature={sig}"
            ),
            "PAYMUX-HMAC-SHA256 key_id=k1,timestamp=1,nonce=abcdefghijklmnop".to_string(),
            format!(
                "PAYMUX-HMAC-SHA256 key_id=k1,timestamp=1,nonce=abcdefghijklmnop,signature={sig},extra=1"
            ),
        ] {
            assert!(parse_authorization(&bad).is_none(), "{bad}");
        }
    }
}
