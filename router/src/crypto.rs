//! Secrets at rest: AES-256-GCM under the master key.

use std::path::Path;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Encrypts and decrypts small secrets (merchant key secrets, channel credentials).
pub struct SecretBox {
    key: LessSafeKey,
    rng: SystemRandom,
    /// HMAC key from which purpose-bound keys are derived ([`SecretBox::derive_key`]).
    kdf: ring::hmac::Key,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(***)")
    }
}

impl SecretBox {
    pub fn new(master_key: &[u8; 32]) -> SecretBox {
        let key = UnboundKey::new(&AES_256_GCM, master_key)
            .expect("a 32-byte key is a valid AES-256 key");
        SecretBox {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
            kdf: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, master_key),
        }
    }

    /// A 32-byte key for one purpose, derived from the master key (HMAC-SHA256 of the label), so
    /// that no two uses share a key and the master key itself never leaves this box.
    pub fn derive_key(&self, label: &str) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.kdf, label.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Returns `(nonce, ciphertext‖tag)`. `aad` binds the ciphertext to its row (e.g. the key id), so
    /// a ciphertext copied to another row does not decrypt.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("system random failed"))?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        Ok((nonce.to_vec(), buf))
    }

    pub fn open(&self, nonce: &[u8], ciphertext: &[u8], aad: &[u8]) -> anyhow::Result<Vec<u8>> {
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| anyhow::anyhow!("bad nonce length"))?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| {
                anyhow::anyhow!("secret does not decrypt: wrong master key or tampered row")
            })?;
        Ok(plain.to_vec())
    }
}

/// Parses a configured master key: 44 base64 characters or 64 hex digits, 32 bytes either way.
pub fn parse_master_key(s: &str) -> anyhow::Result<[u8; 32]> {
    let s = s.trim();
    let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(s)?
    } else {
        B64.decode(s)
            .context("master_key is neither 64 hex digits nor base64")?
    };
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("master_key must be 32 bytes"))
}

/// Reads the master key file, creating it (mode 0600) with a fresh random key when absent.
pub fn load_or_create_key_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    if path.exists() {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        return parse_master_key(&text).with_context(|| format!("parse {}", path.display()));
    }
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| anyhow::anyhow!("system random failed"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_private_file(path, format!("{}\n", B64.encode(key)).as_bytes())?;
    Ok(key)
}

/// Reads a token file, creating it (mode 0600) with `prefix` + 32 random bytes in hex when absent.
pub fn load_or_create_token_file(path: &Path, prefix: &str) -> anyhow::Result<String> {
    if path.exists() {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let token = text.trim().to_string();
        anyhow::ensure!(!token.is_empty(), "{} is empty", path.display());
        return Ok(token);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let token = format!("{prefix}{}", random_hex(32));
    write_private_file(path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

/// `n` random bytes as lowercase hex (ids and secrets).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    SystemRandom::new().fill(&mut buf).expect("system random");
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let sb = SecretBox::new(&[7u8; 32]);
        let (nonce, ct) = sb.seal(b"key secret", b"key-1").unwrap();
        assert!(!ct.windows(10).any(|w| w == b"key secret"));
        assert_eq!(sb.open(&nonce, &ct, b"key-1").unwrap(), b"key secret");
        assert!(sb.open(&nonce, &ct, b"key-2").is_err(), "bound to its row");
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(sb.open(&nonce, &bad, b"key-1").is_err());
        assert!(
            SecretBox::new(&[8u8; 32])
                .open(&nonce, &ct, b"key-1")
                .is_err()
        );
    }

    #[test]
    fn master_key_formats() {
        assert_eq!(parse_master_key(&"ab".repeat(32)).unwrap(), [0xab; 32]);
        assert_eq!(parse_master_key(&B64.encode([1u8; 32])).unwrap(), [1; 32]);
        assert!(parse_master_key("short").is_err());
        assert!(parse_master_key(&B64.encode([1u8; 31])).is_err());
    }

    #[test]
    fn key_file_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/master.key");
        let a = load_or_create_key_file(&path).unwrap();
        let b = load_or_create_key_file(&path).unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
