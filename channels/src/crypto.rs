//! The cryptography every channel shares: RSA-SHA256 (PKCS#1 v1.5) signing and verification with
//! keys loaded from PEM (or the bare base64 DER some channels hand out), X.509 certificates and their
//! serials, AES-GCM for encrypted notification resources, and RSA key generation for sandboxes.
//!
//! Signing and verification go through `aws-lc-rs` (AWS-LC's RSA private-key operation is about twice
//! as fast as `ring`'s on x86-64, and every code payment signs twice); AES-GCM through RustCrypto
//! `aes-gcm` because WeChat's test vectors include 16-byte keys and 16-byte IVs; key generation
//! through RustCrypto `rsa` (used only to create sandbox keys, never on a request path).

use aws_lc_rs::signature::{self, KeyPair as _, RsaKeyPair, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no PEM block or base64 DER found")]
    NoKey,
    #[error("invalid key: {0}")]
    Invalid(String),
}

/// PEM blocks in a text: `(label, DER)`. A text without armour is read as one bare base64 DER
/// (whitespace ignored), labelled `""`.
pub fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, KeyError> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let Some(label_end) = after.find("-----") else {
            return Err(KeyError::Invalid("unterminated PEM header".into()));
        };
        let label = after[..label_end].to_string();
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = body_start.find(&end_marker) else {
            return Err(KeyError::Invalid(format!("missing `{end_marker}`")));
        };
        let b64: String = body_start[..end]
            .lines()
            .filter(|l| !l.contains(':')) // RFC 1421 headers (Proc-Type, …)
            .flat_map(|l| l.chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = B64
            .decode(b64.as_bytes())
            .map_err(|e| KeyError::Invalid(format!("PEM `{label}` base64: {e}")))?;
        out.push((label, der));
        rest = &body_start[end + end_marker.len()..];
    }
    if out.is_empty() {
        let b64: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if b64.is_empty() {
            return Err(KeyError::NoKey);
        }
        let der = B64.decode(b64.as_bytes()).map_err(|_| KeyError::NoKey)?;
        out.push((String::new(), der));
    }
    Ok(out)
}

/// An RSA private key that signs with SHA256withRSA (RSASSA-PKCS1-v1_5).
pub struct RsaSigner {
    key: RsaKeyPair,
    rng: aws_lc_rs::rand::SystemRandom,
}

impl std::fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaSigner")
            .field("bits", &(self.key.public_modulus_len() * 8))
            .finish_non_exhaustive()
    }
}

impl RsaSigner {
    /// Loads a PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) key, PEM or bare base64. Blocks
    /// with other labels (test fixtures use e.g. `TESTING KEY`) are tried as both.
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        for (_label, der) in pem_blocks(text)? {
            if let Ok(s) = Self::from_der(&der) {
                return Ok(s);
            }
        }
        Err(KeyError::Invalid(
            "no RSA private key (PKCS#8 or PKCS#1) in the text".into(),
        ))
    }

    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        let key = RsaKeyPair::from_pkcs8(der)
            .or_else(|_| RsaKeyPair::from_der(der))
            .map_err(|e| KeyError::Invalid(format!("RSA private key: {e}")))?;
        Ok(Self {
            key,
            rng: aws_lc_rs::rand::SystemRandom::new(),
        })
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(&signature::RSA_PKCS1_SHA256, &self.rng, message, &mut sig)
            .expect("RSA signing with a loaded key and a sized buffer cannot fail");
        sig
    }

    pub fn sign_base64(&self, message: &[u8]) -> String {
        B64.encode(self.sign(message))
    }

    /// The matching public key.
    pub fn verifier(&self) -> RsaVerifier {
        RsaVerifier {
            pkcs1: self.key.public_key().as_ref().to_vec(),
        }
    }
}

/// An RSA public key that verifies SHA256withRSA signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct RsaVerifier {
    /// PKCS#1 `RSAPublicKey` DER.
    pkcs1: Vec<u8>,
}

impl std::fmt::Debug for RsaVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaVerifier").finish_non_exhaustive()
    }
}

impl RsaVerifier {
    /// Loads a `PUBLIC KEY` (SubjectPublicKeyInfo), `RSA PUBLIC KEY` (PKCS#1) or `CERTIFICATE`,
    /// PEM or bare base64 SubjectPublicKeyInfo.
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        for (label, der) in pem_blocks(text)? {
            let parsed = match label.as_str() {
                "CERTIFICATE" => Certificate::from_der(&der).map(|c| c.verifier),
                "RSA PUBLIC KEY" => Ok(Self { pkcs1: der }),
                _ => Self::from_spki_der(&der),
            };
            if let Ok(v) = parsed {
                return Ok(v);
            }
        }
        Err(KeyError::Invalid(
            "no RSA public key or certificate in the text".into(),
        ))
    }

    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let (_, spki) = SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| KeyError::Invalid(format!("SubjectPublicKeyInfo: {e}")))?;
        Ok(Self {
            pkcs1: spki.subject_public_key.data.to_vec(),
        })
    }

    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &self.pkcs1)
            .verify(message, sig)
            .is_ok()
    }

    /// Verifies a base64 signature; invalid base64 is simply a failed verification.
    pub fn verify_base64(&self, message: &[u8], sig_b64: &str) -> bool {
        match B64.decode(sig_b64.trim()) {
            Ok(sig) => self.verify(message, &sig),
            Err(_) => false,
        }
    }

    /// The key as a `PUBLIC KEY` PEM (SubjectPublicKeyInfo).
    pub fn to_spki_pem(&self) -> String {
        use rsa::pkcs1::DecodeRsaPublicKey;
        use rsa::pkcs8::EncodePublicKey;
        let key = rsa::RsaPublicKey::from_pkcs1_der(&self.pkcs1).expect("valid RSAPublicKey DER");
        key.to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .expect("encodable public key")
    }
}

/// An X.509 certificate's facts the channels need.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// Serial number, uppercase hex without separators or leading zeros (WeChat's `serial_no`).
    pub serial_hex: String,
    /// Serial number in decimal (Alipay's certificate SN uses it).
    pub serial_decimal: String,
    /// Issuer RDNs in reverse DER order joined by `,` (e.g. `CN=…,OU=…,O=…,C=CN`).
    pub issuer_reversed: String,
    pub not_before: i64,
    pub not_after: i64,
    pub verifier: RsaVerifier,
}

impl Certificate {
    pub fn from_pem(text: &str) -> Result<Vec<Self>, KeyError> {
        let certs: Vec<Self> = pem_blocks(text)?
            .into_iter()
            .filter(|(label, _)| label == "CERTIFICATE" || label.is_empty())
            .filter_map(|(_, der)| Self::from_der(&der).ok())
            .collect();
        if certs.is_empty() {
            return Err(KeyError::Invalid("no X.509 certificate in the text".into()));
        }
        Ok(certs)
    }

    /// Parses a certificate; one with a non-RSA key still parses, with an empty verifier that fails
    /// every verification.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| KeyError::Invalid(format!("X.509 certificate: {e}")))?;
        let serial = cert.tbs_certificate.serial.clone();
        let mut rdns: Vec<String> = Vec::new();
        for rdn in cert.issuer().iter() {
            for atv in rdn.iter() {
                let oid = atv.attr_type();
                let name =
                    x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry())
                        .map(str::to_string)
                        .unwrap_or_else(|_| oid.to_id_string());
                let value = atv.as_str().map(str::to_string).unwrap_or_default();
                rdns.push(format!("{name}={value}"));
            }
        }
        rdns.reverse();
        Ok(Self {
            serial_hex: format!("{:X}", serial),
            serial_decimal: serial.to_string(),
            issuer_reversed: rdns.join(","),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            verifier: RsaVerifier {
                pkcs1: cert.public_key().subject_public_key.data.to_vec(),
            },
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AeadError {
    #[error("AES key must be 16 or 32 bytes, got {0}")]
    KeyLength(usize),
    #[error("GCM nonce must be 12 or 16 bytes, got {0}")]
    NonceLength(usize),
    #[error("ciphertext is not valid base64")]
    Base64,
    #[error("decryption failed: wrong key, nonce, associated data or a tampered ciphertext")]
    Authentication,
}

macro_rules! gcm_dispatch {
    ($key:expr, $nonce:expr, |$cipher:ident, $n:ident| $body:expr) => {{
        use aes_gcm::aead::KeyInit;
        use aes_gcm::aead::consts::{U12, U16};
        use aes_gcm::aes::{Aes128, Aes256};
        let key: &[u8] = $key;
        let nonce: &[u8] = $nonce;
        match (key.len(), nonce.len()) {
            (32, 12) => {
                let $cipher =
                    aes_gcm::AesGcm::<Aes256, U12>::new_from_slice(key).expect("32-byte key");
                let $n = aes_gcm::Nonce::<U12>::from_slice(nonce);
                $body
            }
            (32, 16) => {
                let $cipher =
                    aes_gcm::AesGcm::<Aes256, U16>::new_from_slice(key).expect("32-byte key");
                let $n = aes_gcm::Nonce::<U16>::from_slice(nonce);
                $body
            }
            (16, 12) => {
                let $cipher =
                    aes_gcm::AesGcm::<Aes128, U12>::new_from_slice(key).expect("16-byte key");
                let $n = aes_gcm::Nonce::<U12>::from_slice(nonce);
                $body
            }
            (16, 16) => {
                let $cipher =
                    aes_gcm::AesGcm::<Aes128, U16>::new_from_slice(key).expect("16-byte key");
                let $n = aes_gcm::Nonce::<U16>::from_slice(nonce);
                $body
            }
            (16 | 32, n) => Err(AeadError::NonceLength(n)),
            (k, _) => Err(AeadError::KeyLength(k)),
        }
    }};
}

/// AES-GCM encryption; returns ciphertext with the 16-byte tag appended.
pub fn aes_gcm_encrypt(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, AeadError> {
    use aes_gcm::aead::{Aead, Payload};
    gcm_dispatch!(key, nonce, |c, n| c
        .encrypt(
            n,
            Payload {
                msg: plaintext,
                aad
            }
        )
        .map_err(|_| AeadError::Authentication))
}

/// AES-GCM decryption of ciphertext with the tag appended.
pub fn aes_gcm_decrypt(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, AeadError> {
    use aes_gcm::aead::{Aead, Payload};
    gcm_dispatch!(key, nonce, |c, n| c
        .decrypt(
            n,
            Payload {
                msg: ciphertext,
                aad
            }
        )
        .map_err(|_| AeadError::Authentication))
}

/// AES-GCM decryption of a base64 ciphertext (tag appended), the form WeChat uses.
pub fn aes_gcm_decrypt_base64(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    ciphertext_b64: &str,
) -> Result<Vec<u8>, AeadError> {
    let ct = B64
        .decode(ciphertext_b64.as_bytes())
        .map_err(|_| AeadError::Base64)?;
    aes_gcm_decrypt(key, nonce, aad, &ct)
}

/// A random string of `len` characters from `[A-Za-z0-9]` (nonces).
pub fn random_alnum(len: usize) -> String {
    use rand::Rng as _;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// A freshly generated 2048-bit RSA key pair as `(PKCS#8 private key PEM, SPKI public key PEM)`.
pub fn generate_rsa_keypair() -> (String, String) {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key generation");
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .expect("PKCS#8 encoding")
        .to_string();
    let public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("SPKI encoding");
    (private, public)
}

/// Base64 (standard alphabet, padded).
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    B64.decode(text.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify() {
        let (private, public) = generate_rsa_keypair();
        let signer = RsaSigner::from_pem(&private).unwrap();
        let verifier = RsaVerifier::from_pem(&public).unwrap();
        let sig = signer.sign_base64(b"hello");
        assert!(verifier.verify_base64(b"hello", &sig));
        assert!(!verifier.verify_base64(b"hellO", &sig));
        assert_eq!(signer.verifier(), verifier);
        assert_eq!(
            RsaVerifier::from_pem(&verifier.to_spki_pem()).unwrap(),
            verifier
        );
    }

    #[test]
    fn garbage_keys_are_errors() {
        assert!(RsaSigner::from_pem("").is_err());
        assert!(
            RsaSigner::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
                .is_err()
        );
        assert!(RsaSigner::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA").is_err());
        assert!(RsaVerifier::from_pem("not base64 at all!").is_err());
        assert!(
            Certificate::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")
                .is_err()
        );
    }

    #[test]
    fn aes_gcm_round_trip_and_tamper() {
        let key = [7u8; 32];
        let ct = aes_gcm_encrypt(&key, b"123456789012", b"aad", b"plain").unwrap();
        assert_eq!(
            aes_gcm_decrypt(&key, b"123456789012", b"aad", &ct).unwrap(),
            b"plain"
        );
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert_eq!(
            aes_gcm_decrypt(&key, b"123456789012", b"aad", &bad),
            Err(AeadError::Authentication)
        );
        assert_eq!(
            aes_gcm_decrypt(&key[..13], b"123456789012", b"", &ct),
            Err(AeadError::KeyLength(13))
        );
        assert_eq!(
            aes_gcm_decrypt(&key, b"12345", b"", &ct),
            Err(AeadError::NonceLength(5))
        );
    }
}
