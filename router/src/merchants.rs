//! Merchants and their API keys. Key secrets are stored encrypted (AES-256-GCM under the master key,
//! bound to their key id) and are shown once, when created.

use crate::db::BeginWrite;
use anyhow::Context;
use paymux_model::MerchantId;
use serde::Serialize;
use uuid::Uuid;

use crate::crypto::{SecretBox, random_hex};
use crate::db::{Db, now_us};

/// Credentials as shown to the merchant once.
#[derive(Clone, Serialize)]
pub struct Credentials {
    pub merchant_id: MerchantId,
    pub name: String,
    pub key_id: String,
    pub key_secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("merchant_id", &self.merchant_id)
            .field("name", &self.name)
            .field("key_id", &self.key_id)
            .field("key_secret", &"<redacted>")
            .finish()
    }
}

/// A key as the authenticator needs it.
#[derive(Clone)]
pub struct ActiveKey {
    pub merchant_id: MerchantId,
    pub secret: Vec<u8>,
}

fn new_key_id() -> String {
    format!("pk_{}", random_hex(12))
}

fn new_key_secret() -> String {
    format!("sk_{}", random_hex(32))
}

pub async fn create_merchant(
    db: &Db,
    secrets: &SecretBox,
    name: &str,
) -> anyhow::Result<Credentials> {
    let name = name.trim();
    anyhow::ensure!(
        !name.is_empty() && name.chars().count() <= 128,
        "merchant name must be 1–128 characters"
    );
    let merchant_id = MerchantId::new();
    let key_id = new_key_id();
    let key_secret = new_key_secret();
    let (nonce, ciphertext) = secrets.seal(key_secret.as_bytes(), key_id.as_bytes())?;
    let now = now_us();
    let id: Uuid = merchant_id.into();
    macro_rules! run {
        ($pool:expr) => {{
            let mut tx = $pool.begin_write().await?;
            sqlx::query("INSERT INTO merchants (id, name, status, created_at_us) VALUES ($1, $2, 'active', $3)")
                .bind(id)
                .bind(name)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO merchant_keys (key_id, merchant_id, secret_nonce, secret_ciphertext, status, created_at_us) \
                 VALUES ($1, $2, $3, $4, 'active', $5)",
            )
            .bind(&key_id)
            .bind(id)
            .bind(&nonce)
            .bind(&ciphertext)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }};
    }
    match db {
        Db::Sqlite(pool) => run!(pool),
        Db::Postgres(pool) => run!(pool),
    }
    Ok(Credentials {
        merchant_id,
        name: name.to_string(),
        key_id,
        key_secret,
    })
}

/// Most seconds an old key keeps working after a rotation.
pub const ROTATION_GRACE_SECONDS_MAX: u32 = 7 * 24 * 3600;

/// Issues a new key and revokes the merchant's others, atomically: at once (`grace_seconds` 0), or
/// after `grace_seconds` (a key's `revoked_at_us` is then in the future: it works until then), so
/// the merchant's servers can move to the new key without a moment of refused requests. A key
/// already on its way out keeps the earlier of its end and the new one.
pub async fn rotate_key(
    db: &Db,
    secrets: &SecretBox,
    merchant_id: MerchantId,
    grace_seconds: u32,
) -> anyhow::Result<Credentials> {
    anyhow::ensure!(
        grace_seconds <= ROTATION_GRACE_SECONDS_MAX,
        "the grace period is at most {ROTATION_GRACE_SECONDS_MAX} seconds (7 days)"
    );
    let key_id = new_key_id();
    let key_secret = new_key_secret();
    let (nonce, ciphertext) = secrets.seal(key_secret.as_bytes(), key_id.as_bytes())?;
    let now = now_us();
    let id: Uuid = merchant_id.into();
    macro_rules! run {
        ($pool:expr) => {{
            let mut tx = $pool.begin_write().await?;
            let name: Option<String> = sqlx::query_scalar("SELECT name FROM merchants WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let name = name.with_context(|| format!("no merchant {merchant_id}"))?;
            let ends = now + i64::from(grace_seconds) * 1_000_000;
            sqlx::query(
                "UPDATE merchant_keys SET revoked_at_us = CASE WHEN status = 'revoked' \
                 AND revoked_at_us < $1 THEN revoked_at_us ELSE $1 END, status = 'revoked' \
                 WHERE merchant_id = $2 AND (status = 'active' OR revoked_at_us > $3)",
            )
            .bind(ends)
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO merchant_keys (key_id, merchant_id, secret_nonce, secret_ciphertext, status, created_at_us) \
                 VALUES ($1, $2, $3, $4, 'active', $5)",
            )
            .bind(&key_id)
            .bind(id)
            .bind(&nonce)
            .bind(&ciphertext)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            name
        }};
    }
    let name = match db {
        Db::Sqlite(pool) => run!(pool),
        Db::Postgres(pool) => run!(pool),
    };
    Ok(Credentials {
        merchant_id,
        name,
        key_id,
        key_secret,
    })
}

/// A key that works now: active, or revoked with its revocation still ahead (a rotation's grace).
pub const KEY_WORKS: &str =
    "(k.status = 'active' OR (k.status = 'revoked' AND k.revoked_at_us > $2))";

/// The working key with this id, decrypted; `None` when unknown or revoked.
pub async fn find_active_key(
    db: &Db,
    secrets: &SecretBox,
    key_id: &str,
) -> anyhow::Result<Option<ActiveKey>> {
    let sql = format!(
        "SELECT k.merchant_id, k.secret_nonce, k.secret_ciphertext FROM merchant_keys k \
         JOIN merchants m ON m.id = k.merchant_id \
         WHERE k.key_id = $1 AND {KEY_WORKS} AND m.status = 'active'"
    );
    let now = now_us();
    let row: Option<(Uuid, Vec<u8>, Vec<u8>)> = match db {
        Db::Sqlite(pool) => {
            sqlx::query_as(&sql)
                .bind(key_id)
                .bind(now)
                .fetch_optional(pool)
                .await?
        }
        Db::Postgres(pool) => {
            sqlx::query_as(&sql)
                .bind(key_id)
                .bind(now)
                .fetch_optional(pool)
                .await?
        }
    };
    let Some((merchant_id, nonce, ciphertext)) = row else {
        return Ok(None);
    };
    let secret = secrets.open(&nonce, &ciphertext, key_id.as_bytes())?;
    Ok(Some(ActiveKey {
        merchant_id: MerchantId::from_uuid(merchant_id),
        secret,
    }))
}

pub async fn count(db: &Db) -> anyhow::Result<i64> {
    const SQL: &str = "SELECT COUNT(*) FROM merchants";
    Ok(match db {
        Db::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
        Db::Postgres(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
    })
}
