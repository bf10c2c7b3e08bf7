//! ACP 5.1.0 form signatures.
//!
//! **Sign string.** Every field except `signature` whose value is not empty, sorted by field name
//! (byte order; all ACP names are ASCII), rendered `name=value` and joined with `&`. Values are taken
//! as they are — decoded, never percent-encoded. `signMethod` and `certId` are part of it, so a signer
//! sets them before signing.
//!
//! | `signMethod` | digest of the sign string | signature over the digest | `signature` field |
//! |---|---|---|---|
//! | `01` | SHA-256, lowercase hex (64 ASCII bytes) | SHA256withRSA (RSASSA-PKCS1-v1_5) | base64 of the RSA signature |
//! | `02` | SM3, lowercase hex (64 ASCII bytes) | SM2 (GB/T 32918, `Z_A` with the distinguishing id `1234567812345678`, SM3) | base64 of `r ‖ s`, 64 bytes |
//!
//! For `02` we chose the fixed-length `r ‖ s` form (32 big-endian bytes each) over an ASN.1 DER
//! `SEQUENCE { r, s }`: it is what the `sm2` crate emits natively and it has a single valid encoding.
//! A DER signature is rejected as [`SignError::SignatureEncoding`].
//!
//! **`certId`.** The signer's certificate serial number in decimal. A key without a certificate (the
//! sandbox's generated keys) gets a stable id derived from its public key, [`derived_cert_id`]: the
//! first 8 bytes of SHA-256 over the DER `SubjectPublicKeyInfo`, read as a big-endian `u64`, in
//! decimal.
//!
//! **Verification** picks the key by the message's `certId` ([`VerifyKeys`]) and requires that key to
//! be of the kind `signMethod` names.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};
use sm2::dsa::signature::{Signer as _, Verifier as _};
use sm2::pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::Fields;
use crate::ChannelError;
use crate::crypto::{self, Certificate, RsaSigner, RsaVerifier};

/// The SM2 distinguishing identifier (`ID_A`) UnionPay uses: the GB/T 35276 default.
pub const SM2_DEFAULT_DIST_ID: &str = "1234567812345678";

/// Field names the signature involves.
pub const SIGN_METHOD: &str = "signMethod";
pub const CERT_ID: &str = "certId";
pub const SIGNATURE: &str = "signature";

/// Why a message could not be signed or verified, or a key not loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("missing or empty field `{0}`")]
    MissingField(&'static str),
    #[error("unsupported signMethod {0:?} (01 = RSA, 02 = SM2)")]
    UnsupportedMethod(String),
    #[error("no verification key for certId {0:?}")]
    UnknownCertId(String),
    #[error(
        "certId {cert_id} holds a signMethod {key} key but the message says signMethod {message}"
    )]
    MethodMismatch {
        cert_id: String,
        key: &'static str,
        message: &'static str,
    },
    #[error("signature is not base64 of a well-formed signature")]
    SignatureEncoding,
    #[error("signature does not verify")]
    BadSignature,
    #[error("key: {0}")]
    Key(String),
}

impl From<SignError> for ChannelError {
    fn from(e: SignError) -> Self {
        match e {
            SignError::Key(m) => ChannelError::Config(m),
            other => ChannelError::Signature(other.to_string()),
        }
    }
}

/// The `signMethod` of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignMethod {
    /// `01`: SHA256withRSA over the hex SHA-256 of the sign string.
    Rsa,
    /// `02`: SM2 over the hex SM3 of the sign string.
    Sm2,
}

impl SignMethod {
    /// The wire value (`01` / `02`).
    pub const fn code(self) -> &'static str {
        match self {
            SignMethod::Rsa => "01",
            SignMethod::Sm2 => "02",
        }
    }

    pub fn from_code(code: &str) -> Result<Self, SignError> {
        match code {
            "01" => Ok(SignMethod::Rsa),
            "02" => Ok(SignMethod::Sm2),
            other => Err(SignError::UnsupportedMethod(
                other.chars().take(16).collect(),
            )),
        }
    }

    /// Lowercase hex of the method's digest of `text`.
    pub fn hex_digest(self, text: &str) -> String {
        match self {
            SignMethod::Rsa => hex::encode(Sha256::digest(text.as_bytes())),
            SignMethod::Sm2 => hex::encode(sm3::Sm3::digest(text.as_bytes())),
        }
    }
}

/// The sign string of a message: non-empty fields except `signature`, sorted, `k=v` joined by `&`.
pub fn sign_string(fields: &Fields) -> String {
    let mut out = String::new();
    for (k, v) in fields
        .iter()
        .filter(|(k, v)| k.as_str() != SIGNATURE && !v.is_empty())
    {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// The `certId` of a key without a certificate: the first 8 bytes of SHA-256 over its DER
/// `SubjectPublicKeyInfo`, as a big-endian `u64`, in decimal.
pub fn derived_cert_id(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first).to_string()
}

fn rsa_spki_der(verifier: &RsaVerifier) -> Result<Vec<u8>, SignError> {
    let pem = verifier.to_spki_pem();
    crypto::pem_blocks(&pem)
        .ok()
        .and_then(|blocks| blocks.into_iter().next())
        .map(|(_, der)| der)
        .ok_or_else(|| SignError::Key("cannot encode the RSA public key".into()))
}

fn sm2_signing_key(secret: &sm2::SecretKey) -> Result<sm2::dsa::SigningKey, SignError> {
    sm2::dsa::SigningKey::new(SM2_DEFAULT_DIST_ID, secret)
        .map_err(|e| SignError::Key(format!("SM2 key: {e}")))
}

fn sm2_verifying_key(public: sm2::PublicKey) -> Result<sm2::dsa::VerifyingKey, SignError> {
    sm2::dsa::VerifyingKey::new(SM2_DEFAULT_DIST_ID, public)
        .map_err(|e| SignError::Key(format!("SM2 key: {e}")))
}

fn sm2_spki_der(key: &sm2::dsa::VerifyingKey) -> Result<Vec<u8>, SignError> {
    sm2::PublicKey::from(key)
        .to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| SignError::Key(format!("SM2 public key encoding: {e}")))
}

/// A key that signs requests (the merchant's) or responses and notifications (the sandbox's), with the
/// `certId` it signs under.
#[derive(Debug)]
pub enum SignKey {
    Rsa(RsaSigner, String),
    Sm2(sm2::dsa::SigningKey, String),
}

impl SignKey {
    /// An RSA key (PKCS#8, PKCS#1 or bare base64) with its certificate: `certId` is the certificate's
    /// serial in decimal. The certificate must hold the key's public half.
    pub fn rsa_with_certificate(
        private_key_pem: &str,
        certificate_pem: &str,
    ) -> Result<Self, SignError> {
        let signer =
            RsaSigner::from_pem(private_key_pem).map_err(|e| SignError::Key(e.to_string()))?;
        let cert = Certificate::from_pem(certificate_pem)
            .map_err(|e| SignError::Key(e.to_string()))?
            .into_iter()
            .find(|c| c.verifier == signer.verifier())
            .ok_or_else(|| {
                SignError::Key(
                    "no certificate in the text holds the private key's public key".into(),
                )
            })?;
        Ok(SignKey::Rsa(signer, cert.serial_decimal))
    }

    /// An RSA key with an explicit `certId`, or with the [`derived_cert_id`] when `None`.
    pub fn rsa_from_pem(private_key_pem: &str, cert_id: Option<&str>) -> Result<Self, SignError> {
        let signer =
            RsaSigner::from_pem(private_key_pem).map_err(|e| SignError::Key(e.to_string()))?;
        let cert_id = match cert_id {
            Some(id) => id.to_string(),
            None => derived_cert_id(&rsa_spki_der(&signer.verifier())?),
        };
        Ok(SignKey::Rsa(signer, cert_id))
    }

    /// An SM2 key from a PKCS#8 `PRIVATE KEY` PEM, with an explicit `certId` or the
    /// [`derived_cert_id`] when `None`.
    pub fn sm2_from_pem(private_key_pem: &str, cert_id: Option<&str>) -> Result<Self, SignError> {
        let secret = sm2::SecretKey::from_pkcs8_pem(private_key_pem.trim())
            .map_err(|e| SignError::Key(format!("SM2 PKCS#8 private key: {e}")))?;
        let key = sm2_signing_key(&secret)?;
        let cert_id = match cert_id {
            Some(id) => id.to_string(),
            None => derived_cert_id(&sm2_spki_der(key.verifying_key())?),
        };
        Ok(SignKey::Sm2(key, cert_id))
    }

    pub fn method(&self) -> SignMethod {
        match self {
            SignKey::Rsa(..) => SignMethod::Rsa,
            SignKey::Sm2(..) => SignMethod::Sm2,
        }
    }

    pub fn cert_id(&self) -> &str {
        match self {
            SignKey::Rsa(_, id) | SignKey::Sm2(_, id) => id,
        }
    }

    /// The public half, under the same `certId`.
    pub fn verify_key(&self) -> VerifyKey {
        match self {
            SignKey::Rsa(s, id) => VerifyKey::Rsa(s.verifier(), id.clone()),
            SignKey::Sm2(k, id) => VerifyKey::Sm2(k.verifying_key().clone(), id.clone()),
        }
    }

    /// The base64 `signature` of a sign string.
    pub fn signature_of(&self, sign_string: &str) -> Result<String, SignError> {
        let digest = self.method().hex_digest(sign_string);
        match self {
            SignKey::Rsa(s, _) => Ok(s.sign_base64(digest.as_bytes())),
            SignKey::Sm2(k, _) => {
                let sig: sm2::dsa::Signature = k
                    .try_sign(digest.as_bytes())
                    .map_err(|e| SignError::Key(format!("SM2 signing: {e}")))?;
                Ok(crypto::b64(&sig.to_bytes()))
            }
        }
    }

    /// Signs a message in place: sets `signMethod` and `certId`, then `signature`.
    pub fn sign(&self, fields: &mut Fields) -> Result<(), SignError> {
        fields.insert(SIGN_METHOD.into(), self.method().code().into());
        fields.insert(CERT_ID.into(), self.cert_id().into());
        fields.remove(SIGNATURE);
        let signature = self.signature_of(&sign_string(fields))?;
        fields.insert(SIGNATURE.into(), signature);
        Ok(())
    }
}

/// A key that verifies messages signed under one `certId`.
#[derive(Debug, Clone)]
pub enum VerifyKey {
    Rsa(RsaVerifier, String),
    Sm2(sm2::dsa::VerifyingKey, String),
}

/// Same kind, same public key (SM2: same point and distinguishing id), same `certId`.
impl PartialEq for VerifyKey {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (VerifyKey::Rsa(a, ia), VerifyKey::Rsa(b, ib)) => a == b && ia == ib,
            (VerifyKey::Sm2(a, ia), VerifyKey::Sm2(b, ib)) => {
                a.to_sec1_bytes() == b.to_sec1_bytes() && a.distid() == b.distid() && ia == ib
            }
            _ => false,
        }
    }
}

impl Eq for VerifyKey {}

impl VerifyKey {
    /// The key of a certificate (RSA or SM2, PEM or bare base64 DER); `certId` is its serial in
    /// decimal. The first certificate of a chain is used.
    pub fn from_certificate_pem(text: &str) -> Result<Self, SignError> {
        let blocks = crypto::pem_blocks(text).map_err(|e| SignError::Key(e.to_string()))?;
        let der = blocks
            .into_iter()
            .find(|(label, _)| label == "CERTIFICATE" || label.is_empty())
            .map(|(_, der)| der)
            .ok_or_else(|| SignError::Key("no CERTIFICATE block in the text".into()))?;
        let cert = Certificate::from_der(&der).map_err(|e| SignError::Key(e.to_string()))?;
        let (_, x509) =
            X509Certificate::from_der(&der).map_err(|e| SignError::Key(format!("X.509: {e}")))?;
        let spki = x509.public_key();
        if let Ok(public) = sm2::PublicKey::from_public_key_der(spki.raw) {
            return Ok(VerifyKey::Sm2(
                sm2_verifying_key(public)?,
                cert.serial_decimal,
            ));
        }
        if spki.algorithm.algorithm.to_id_string() != "1.2.840.113549.1.1.1" {
            return Err(SignError::Key(format!(
                "certificate key algorithm {} is neither RSA nor SM2",
                spki.algorithm.algorithm.to_id_string()
            )));
        }
        Ok(VerifyKey::Rsa(cert.verifier, cert.serial_decimal))
    }

    /// An RSA public key (`PUBLIC KEY`, `RSA PUBLIC KEY`, bare base64 SPKI) or certificate, with an
    /// explicit `certId`, or when `None` the certificate's serial or the [`derived_cert_id`].
    pub fn rsa_from_pem(text: &str, cert_id: Option<&str>) -> Result<Self, SignError> {
        use rsa::pkcs1::DecodeRsaPublicKey as _;
        use rsa::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
        let blocks = crypto::pem_blocks(text).map_err(|e| SignError::Key(e.to_string()))?;
        for (label, der) in blocks {
            if label == "CERTIFICATE" {
                let key = Self::from_certificate_pem(text)?;
                return Ok(match cert_id {
                    Some(id) => key.with_cert_id(id),
                    None => key,
                });
            }
            let Ok(public) = rsa::RsaPublicKey::from_public_key_der(&der)
                .or_else(|_| rsa::RsaPublicKey::from_pkcs1_der(&der))
            else {
                continue;
            };
            let spki = public
                .to_public_key_der()
                .map_err(|e| SignError::Key(format!("RSA public key encoding: {e}")))?;
            let verifier = RsaVerifier::from_spki_der(spki.as_bytes())
                .map_err(|e| SignError::Key(e.to_string()))?;
            let id = cert_id.map_or_else(|| derived_cert_id(spki.as_bytes()), str::to_string);
            return Ok(VerifyKey::Rsa(verifier, id));
        }
        Err(SignError::Key(
            "no RSA public key or certificate in the text".into(),
        ))
    }

    /// An SM2 public key (`PUBLIC KEY` PEM, SubjectPublicKeyInfo), with an explicit `certId` or the
    /// [`derived_cert_id`] when `None`.
    pub fn sm2_from_pem(text: &str, cert_id: Option<&str>) -> Result<Self, SignError> {
        let public = sm2::PublicKey::from_public_key_pem(text.trim())
            .map_err(|e| SignError::Key(format!("SM2 public key: {e}")))?;
        let key = sm2_verifying_key(public)?;
        let id = match cert_id {
            Some(id) => id.to_string(),
            None => derived_cert_id(&sm2_spki_der(&key)?),
        };
        Ok(VerifyKey::Sm2(key, id))
    }

    /// The same key under another `certId`.
    pub fn with_cert_id(self, cert_id: &str) -> Self {
        match self {
            VerifyKey::Rsa(v, _) => VerifyKey::Rsa(v, cert_id.to_string()),
            VerifyKey::Sm2(v, _) => VerifyKey::Sm2(v, cert_id.to_string()),
        }
    }

    pub fn method(&self) -> SignMethod {
        match self {
            VerifyKey::Rsa(..) => SignMethod::Rsa,
            VerifyKey::Sm2(..) => SignMethod::Sm2,
        }
    }

    pub fn cert_id(&self) -> &str {
        match self {
            VerifyKey::Rsa(_, id) | VerifyKey::Sm2(_, id) => id,
        }
    }

    /// Verifies a base64 `signature` over a sign string.
    pub fn verify_signature(
        &self,
        sign_string: &str,
        signature_b64: &str,
    ) -> Result<(), SignError> {
        let raw = crypto::b64_decode(signature_b64.trim()).ok_or(SignError::SignatureEncoding)?;
        let digest = self.method().hex_digest(sign_string);
        let ok = match self {
            VerifyKey::Rsa(v, _) => v.verify(digest.as_bytes(), &raw),
            VerifyKey::Sm2(k, _) => {
                let sig = sm2::dsa::Signature::from_slice(&raw)
                    .map_err(|_| SignError::SignatureEncoding)?;
                k.verify(digest.as_bytes(), &sig).is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(SignError::BadSignature)
        }
    }

    /// Verifies a message signed under this key: its `signMethod` must be this key's and its `certId`
    /// this key's `certId`.
    pub fn verify(&self, fields: &Fields) -> Result<(), SignError> {
        let signed = SignedParts::of(fields)?;
        if signed.cert_id != self.cert_id() {
            return Err(SignError::UnknownCertId(
                signed.cert_id.chars().take(64).collect(),
            ));
        }
        self.verify_parts(&signed, fields)
    }

    fn verify_parts(&self, signed: &SignedParts<'_>, fields: &Fields) -> Result<(), SignError> {
        if signed.method != self.method() {
            return Err(SignError::MethodMismatch {
                cert_id: self.cert_id().to_string(),
                key: self.method().code(),
                message: signed.method.code(),
            });
        }
        self.verify_signature(&sign_string(fields), signed.signature)
    }
}

/// The signature fields of a received message.
struct SignedParts<'a> {
    method: SignMethod,
    cert_id: &'a str,
    signature: &'a str,
}

impl<'a> SignedParts<'a> {
    fn of(fields: &'a Fields) -> Result<Self, SignError> {
        let get = |name: &'static str| {
            fields
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
                .ok_or(SignError::MissingField(name))
        };
        let signature = get(SIGNATURE)?;
        let method = SignMethod::from_code(get(SIGN_METHOD)?)?;
        let cert_id = get(CERT_ID)?;
        Ok(Self {
            method,
            cert_id,
            signature,
        })
    }
}

/// The verification keys of a counterpart, by `certId` (UnionPay rotates its certificates, so more
/// than one may be valid at a time).
#[derive(Debug, Clone, Default)]
pub struct VerifyKeys {
    by_cert_id: HashMap<String, VerifyKey>,
}

impl VerifyKeys {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key, replacing one with the same `certId`.
    pub fn insert(&mut self, key: VerifyKey) {
        self.by_cert_id.insert(key.cert_id().to_string(), key);
    }

    pub fn get(&self, cert_id: &str) -> Option<&VerifyKey> {
        self.by_cert_id.get(cert_id)
    }

    pub fn len(&self) -> usize {
        self.by_cert_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_cert_id.is_empty()
    }

    /// Verifies a message with the key its `certId` names.
    pub fn verify(&self, fields: &Fields) -> Result<(), SignError> {
        let signed = SignedParts::of(fields)?;
        let key = self
            .get(signed.cert_id)
            .ok_or_else(|| SignError::UnknownCertId(signed.cert_id.chars().take(64).collect()))?;
        key.verify_parts(&signed, fields)
    }
}

impl FromIterator<VerifyKey> for VerifyKeys {
    fn from_iter<I: IntoIterator<Item = VerifyKey>>(iter: I) -> Self {
        let mut keys = Self::new();
        for k in iter {
            keys.insert(k);
        }
        keys
    }
}

/// A freshly generated key pair for a sandbox, as PEM text that can be stored and reloaded.
#[derive(Clone)]
pub struct GeneratedKey {
    pub method: SignMethod,
    /// PKCS#8 `PRIVATE KEY` PEM.
    pub private_key_pem: String,
    /// `PUBLIC KEY` (SubjectPublicKeyInfo) PEM.
    pub public_key_pem: String,
    /// The [`derived_cert_id`] of the public key.
    pub cert_id: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("method", &self.method)
            .field("cert_id", &self.cert_id)
            .finish_non_exhaustive()
    }
}

impl GeneratedKey {
    /// Generates a key: RSA-2048 through [`crypto::generate_rsa_keypair`], or a random SM2 key.
    pub fn generate(method: SignMethod) -> Result<Self, SignError> {
        let (private_key_pem, public_key_pem, spki) = match method {
            SignMethod::Rsa => {
                let (private, public) = crypto::generate_rsa_keypair();
                let spki = crypto::pem_blocks(&public)
                    .ok()
                    .and_then(|b| b.into_iter().next())
                    .map(|(_, der)| der)
                    .ok_or_else(|| SignError::Key("generated RSA public key PEM".into()))?;
                (private, public, spki)
            }
            SignMethod::Sm2 => {
                let secret = sm2::SecretKey::random(&mut rand::rngs::OsRng);
                let private = secret
                    .to_pkcs8_pem(sm2::pkcs8::LineEnding::LF)
                    .map_err(|e| SignError::Key(format!("SM2 PKCS#8 encoding: {e}")))?
                    .to_string();
                let public_key = secret.public_key();
                let public = public_key
                    .to_public_key_pem(sm2::pkcs8::LineEnding::LF)
                    .map_err(|e| SignError::Key(format!("SM2 SPKI encoding: {e}")))?;
                let spki = public_key
                    .to_public_key_der()
                    .map_err(|e| SignError::Key(format!("SM2 SPKI encoding: {e}")))?
                    .as_bytes()
                    .to_vec();
                (private, public, spki)
            }
        };
        Ok(Self {
            method,
            private_key_pem,
            public_key_pem,
            cert_id: derived_cert_id(&spki),
        })
    }

    pub fn sign_key(&self) -> Result<SignKey, SignError> {
        match self.method {
            SignMethod::Rsa => SignKey::rsa_from_pem(&self.private_key_pem, Some(&self.cert_id)),
            SignMethod::Sm2 => SignKey::sm2_from_pem(&self.private_key_pem, Some(&self.cert_id)),
        }
    }

    pub fn verify_key(&self) -> Result<VerifyKey, SignError> {
        match self.method {
            SignMethod::Rsa => VerifyKey::rsa_from_pem(&self.public_key_pem, Some(&self.cert_id)),
            SignMethod::Sm2 => VerifyKey::sm2_from_pem(&self.public_key_pem, Some(&self.cert_id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sign_string_sorts_skips_empty_and_signature() {
        let f = fields(&[
            ("txnAmt", "1"),
            ("b", ""),
            ("signature", "x"),
            ("accessType", "0"),
            ("certId", "9"),
        ]);
        assert_eq!(sign_string(&f), "accessType=0&certId=9&txnAmt=1");
        assert_eq!(sign_string(&Fields::new()), "");
    }

    #[test]
    fn digests_are_lowercase_hex() {
        // SM3("abc") from GB/T 32905 appendix A.
        assert_eq!(
            SignMethod::Sm2.hex_digest("abc"),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
        assert_eq!(
            SignMethod::Rsa.hex_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn derived_cert_id_is_stable_decimal() {
        let id = derived_cert_id(b"spki");
        assert_eq!(id, derived_cert_id(b"spki"));
        assert!(id.parse::<u64>().is_ok());
        assert_ne!(id, derived_cert_id(b"other"));
    }
}
