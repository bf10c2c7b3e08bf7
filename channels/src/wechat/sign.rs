//! WeChat Pay API v3 signatures: the merchant's `Authorization` header on requests, the platform's
//! `Wechatpay-*` headers on responses and notifications, the JSAPI `paySign`, and the AES-256-GCM
//! envelope of notification resources.

use std::collections::HashMap;

use crate::crypto::{self, AeadError, RsaSigner, RsaVerifier};

/// The authorization scheme name.
pub const SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// The string a request signature covers: `METHOD\nPATH_WITH_QUERY\ntimestamp\nnonce\nbody\n`.
pub fn request_message(
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    nonce: &str,
    body: &str,
) -> String {
    format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{body}\n")
}

/// The string a response or notification signature covers: `timestamp\nnonce\nbody\n`.
pub fn response_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    m.extend_from_slice(timestamp.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(nonce.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// The `Authorization` header value for a request.
#[allow(clippy::too_many_arguments)] // the protocol's own fields, in its order
pub fn authorization(
    signer: &RsaSigner,
    mchid: &str,
    serial_no: &str,
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    nonce: &str,
    body: &str,
) -> String {
    let signature = signer
        .sign_base64(request_message(method, path_and_query, timestamp, nonce, body).as_bytes());
    format!(
        r#"{SCHEME} mchid="{mchid}",nonce_str="{nonce}",timestamp="{timestamp}",serial_no="{serial_no}",signature="{signature}""#
    )
}

/// A parsed `Authorization` header (fields in any order, as clients differ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationHeader {
    pub mchid: String,
    pub nonce_str: String,
    pub timestamp: String,
    pub serial_no: String,
    pub signature: String,
}

/// Why an `Authorization` header was refused; the sandbox answers each like WeChat does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Authorization header is missing")]
    Missing,
    #[error("Authorization header is malformed: {0}")]
    Malformed(String),
    #[error("unknown merchant {0}")]
    UnknownMerchant(String),
    #[error("merchant certificate serial {0} is not the merchant's")]
    WrongSerial(String),
    #[error("timestamp is outside the accepted window")]
    StaleTimestamp,
    #[error("signature verification failed")]
    BadSignature,
}

pub fn parse_authorization(value: &str) -> Result<AuthorizationHeader, AuthError> {
    let rest = value
        .strip_prefix(SCHEME)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| AuthError::Malformed(format!("scheme must be {SCHEME}")))?;
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| AuthError::Malformed(format!("`{part}`")))?;
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| AuthError::Malformed(format!("value of {k} must be quoted")))?;
        if fields.insert(k, v).is_some() {
            return Err(AuthError::Malformed(format!("duplicate field {k}")));
        }
    }
    let mut take = |k: &str| {
        fields
            .remove(k)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or_else(|| AuthError::Malformed(format!("missing {k}")))
    };
    Ok(AuthorizationHeader {
        mchid: take("mchid")?,
        nonce_str: take("nonce_str")?,
        timestamp: take("timestamp")?,
        serial_no: take("serial_no")?,
        signature: take("signature")?,
    })
}

/// The `Wechatpay-*` headers of a signed response or notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSignature {
    pub timestamp: String,
    pub nonce: String,
    pub serial: String,
    pub signature: String,
}

impl PlatformSignature {
    /// Reads the four headers; `None` when any is missing (an unsigned message).
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Some(Self {
            timestamp: get("wechatpay-timestamp")?,
            nonce: get("wechatpay-nonce")?,
            serial: get("wechatpay-serial")?,
            signature: get("wechatpay-signature")?,
        })
    }

    /// Signs a body as the platform does (the sandbox's side).
    pub fn sign(signer: &RsaSigner, serial: &str, timestamp: i64, body: &[u8]) -> Self {
        let timestamp = timestamp.to_string();
        let nonce = crypto::random_alnum(32);
        let signature = signer.sign_base64(&response_message(&timestamp, &nonce, body));
        Self {
            timestamp,
            nonce,
            serial: serial.to_string(),
            signature,
        }
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for (name, value) in [
            ("wechatpay-timestamp", &self.timestamp),
            ("wechatpay-nonce", &self.nonce),
            ("wechatpay-serial", &self.serial),
            ("wechatpay-signature", &self.signature),
        ] {
            if let Ok(v) = http::HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
    }
}

/// Platform public keys by serial (certificate serial or `PUB_KEY_ID_…`).
#[derive(Debug, Clone, Default)]
pub struct PlatformKeys {
    keys: HashMap<String, RsaVerifier>,
}

/// Why a response or notification signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the message is not signed (Wechatpay-* headers missing)")]
    Unsigned,
    #[error("signature probe (WECHATPAY/SIGNTEST/) rejected")]
    Probe,
    #[error("no platform key with serial {0}")]
    UnknownSerial(String),
    #[error("Wechatpay-Timestamp is not a number or is too far from now")]
    StaleTimestamp,
    #[error("signature does not verify")]
    BadSignature,
}

impl PlatformKeys {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, serial: impl Into<String>, key: RsaVerifier) {
        self.keys.insert(serial.into(), key);
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies the headers over the body. `now` (unix seconds) enables the ±`max_skew_secs`
    /// freshness check; `None` skips it (replaying recorded vectors).
    pub fn verify(
        &self,
        sig: &PlatformSignature,
        body: &[u8],
        now: Option<i64>,
        max_skew_secs: i64,
    ) -> Result<(), VerifyError> {
        if sig.signature.starts_with("WECHATPAY/SIGNTEST/") {
            return Err(VerifyError::Probe);
        }
        let key = self
            .keys
            .get(&sig.serial)
            .ok_or_else(|| VerifyError::UnknownSerial(sig.serial.clone()))?;
        if let Some(now) = now {
            let ts: i64 = sig
                .timestamp
                .parse()
                .map_err(|_| VerifyError::StaleTimestamp)?;
            // `abs_diff` because `now - ts` overflows for a timestamp far from now (`-9223372036854775808`);
            // a negative allowance accepts nothing, as before.
            if u64::try_from(max_skew_secs).map_or(true, |max| now.abs_diff(ts) > max) {
                return Err(VerifyError::StaleTimestamp);
            }
        }
        if key.verify_base64(
            &response_message(&sig.timestamp, &sig.nonce, body),
            &sig.signature,
        ) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    pub fn verify_headers(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        now: Option<i64>,
        max_skew_secs: i64,
    ) -> Result<(), VerifyError> {
        let sig = PlatformSignature::from_headers(headers).ok_or(VerifyError::Unsigned)?;
        self.verify(&sig, body, now, max_skew_secs)
    }
}

/// The front-end `paySign` of a JSAPI payment: SHA256withRSA over `appId\ntimeStamp\nnonceStr\npackage\n`.
pub fn jsapi_pay_sign(
    signer: &RsaSigner,
    app_id: &str,
    timestamp: &str,
    nonce: &str,
    package: &str,
) -> String {
    signer.sign_base64(format!("{app_id}\n{timestamp}\n{nonce}\n{package}\n").as_bytes())
}

/// An encrypted notification resource (`AEAD_AES_256_GCM`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EncryptedResource {
    pub algorithm: String,
    pub ciphertext: String,
    #[serde(default)]
    pub associated_data: String,
    pub nonce: String,
    #[serde(default)]
    pub original_type: String,
}

impl EncryptedResource {
    /// Decrypts with the APIv3 key (its UTF-8 bytes).
    pub fn decrypt(&self, api_v3_key: &[u8]) -> Result<Vec<u8>, AeadError> {
        crypto::aes_gcm_decrypt_base64(
            api_v3_key,
            self.nonce.as_bytes(),
            self.associated_data.as_bytes(),
            &self.ciphertext,
        )
    }

    /// Encrypts a plaintext as WeChat does (the sandbox's side).
    pub fn encrypt(
        api_v3_key: &[u8],
        original_type: &str,
        associated_data: &str,
        plaintext: &[u8],
    ) -> Result<Self, AeadError> {
        let nonce = crypto::random_alnum(12);
        let ct = crypto::aes_gcm_encrypt(
            api_v3_key,
            nonce.as_bytes(),
            associated_data.as_bytes(),
            plaintext,
        )?;
        Ok(Self {
            algorithm: "AEAD_AES_256_GCM".into(),
            ciphertext: crypto::b64(&ct),
            associated_data: associated_data.into(),
            nonce,
            original_type: original_type.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_round_trip() {
        let (private, _) = crypto::generate_rsa_keypair();
        let signer = RsaSigner::from_pem(&private).unwrap();
        let value = authorization(
            &signer,
            "1900000001",
            "ABC",
            "POST",
            "/v3/x?a=1",
            "1700000000",
            "n0nce",
            "{}",
        );
        let parsed = parse_authorization(&value).unwrap();
        assert_eq!(parsed.mchid, "1900000001");
        assert_eq!(parsed.serial_no, "ABC");
        let msg = request_message(
            "POST",
            "/v3/x?a=1",
            &parsed.timestamp,
            &parsed.nonce_str,
            "{}",
        );
        assert!(
            signer
                .verifier()
                .verify_base64(msg.as_bytes(), &parsed.signature)
        );
        for bad in [
            "",
            "WECHATPAY2-SHA256-RSA2048",
            "Bearer x",
            "WECHATPAY2-SHA256-RSA2048 mchid=1",
            "WECHATPAY2-SHA256-RSA2048 mchid=\"1\"",
        ] {
            assert!(parse_authorization(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_far_from_now_are_stale_not_an_overflow() {
        let (private, public) = crypto::generate_rsa_keypair();
        let signer = RsaSigner::from_pem(&private).unwrap();
        let mut keys = PlatformKeys::new();
        keys.insert("K", RsaVerifier::from_pem(&public).unwrap());
        let body = b"{}";
        let now = 1_700_000_000;
        for ts in [i64::MIN, i64::MIN + 1, i64::MAX, -now] {
            // Genuinely signed: only the freshness check can refuse it.
            let sig = PlatformSignature::sign(&signer, "K", ts, body);
            assert_eq!(
                keys.verify(&sig, body, Some(now), 300),
                Err(VerifyError::StaleTimestamp),
                "{ts}"
            );
            assert_eq!(keys.verify(&sig, body, None, 300), Ok(()), "{ts}");
        }
        let sig = PlatformSignature::sign(&signer, "K", now - 300, body);
        assert_eq!(keys.verify(&sig, body, Some(now), 300), Ok(()));
        let sig = PlatformSignature::sign(&signer, "K", now + 301, body);
        assert_eq!(
            keys.verify(&sig, body, Some(now), 300),
            Err(VerifyError::StaleTimestamp)
        );
        // A negative allowance accepts nothing.
        let sig = PlatformSignature::sign(&signer, "K", now, body);
        assert_eq!(
            keys.verify(&sig, body, Some(now), -1),
            Err(VerifyError::StaleTimestamp)
        );
    }
}
