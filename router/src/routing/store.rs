//! The routing tables: channel accounts (credentials encrypted at rest, never shown again), routes
//! with their targets, the merchants' fee rates. Every change runs in one transaction that also
//! bumps `routing_version`, which the nodes' registries poll. Input is validated here, so the admin
//! API and the command line refuse the same things with the same field names.

use crate::db::BeginWrite;
use std::collections::HashMap;

use paymux_model::{ChannelKind, MerchantId, PayMethod, WalletBrand};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Rule;
use crate::crypto::SecretBox;
use crate::db::{Db, now_us};
use crate::error::{ApiError, ApiResult};

/// Largest rate in basis points (100 %).
pub const RATE_BPS_MAX: u32 = 10_000;
pub const PRIORITY_MAX: u32 = 1_000;
pub const WEIGHT_MAX: u32 = 10_000;
pub const TARGETS_MAX: usize = 16;

macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

/// A stored account, credentials still sealed.
#[derive(Debug, Clone)]
pub struct AccountRow {
    pub id: Uuid,
    pub merchant_id: Uuid,
    pub name: String,
    pub kind: String,
    pub credentials_nonce: Vec<u8>,
    pub credentials_ciphertext: Vec<u8>,
    pub cost_rate_bps: u32,
    pub enabled: bool,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

type AccountTuple = (
    Uuid,
    Uuid,
    String,
    String,
    Vec<u8>,
    Vec<u8>,
    i32,
    bool,
    i64,
    i64,
);

const ACCOUNT_COLUMNS: &str = "id, merchant_id, name, kind, credentials_nonce, credentials_ciphertext, \
    cost_rate_bps, enabled, created_at_us, updated_at_us";

impl From<AccountTuple> for AccountRow {
    fn from(t: AccountTuple) -> Self {
        AccountRow {
            id: t.0,
            merchant_id: t.1,
            name: t.2,
            kind: t.3,
            credentials_nonce: t.4,
            credentials_ciphertext: t.5,
            cost_rate_bps: u32::try_from(t.6).unwrap_or(0),
            enabled: t.7,
            created_at_us: t.8,
            updated_at_us: t.9,
        }
    }
}

/// An account as the admin API and the command line show it: never its credentials.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AccountView {
    pub id: Uuid,
    pub merchant_id: Uuid,
    pub name: String,
    pub kind: String,
    pub cost_rate_bps: u32,
    pub enabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

fn rfc3339(us: i64) -> String {
    crate::db::us_to_datetime(us).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl From<&AccountRow> for AccountView {
    fn from(a: &AccountRow) -> Self {
        AccountView {
            id: a.id,
            merchant_id: a.merchant_id,
            name: a.name.clone(),
            kind: a.kind.clone(),
            cost_rate_bps: a.cost_rate_bps,
            enabled: a.enabled,
            created_at: rfc3339(a.created_at_us),
            updated_at: rfc3339(a.updated_at_us),
        }
    }
}

/// A new channel account.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// 1–64 characters.
    pub name: String,
    /// `wechat_v3`, `alipay` or `unionpay_qr`.
    pub kind: ChannelKind,
    /// The channel adapter's client configuration (keys, ids, base URL) as JSON, or
    /// `{"sandbox": true}` (optionally with `base_url`) for this server's sandbox of that kind.
    /// Stored encrypted; never shown again.
    #[schema(value_type = Object)]
    pub credentials: serde_json::Value,
    /// What the channel charges, 0 ..= 10000 basis points.
    pub cost_rate_bps: u32,
    /// Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// Changes to an account (absent fields stay).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub cost_rate_bps: Option<u32>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub credentials: Option<serde_json::Value>,
}

/// One target of a route.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub channel_account_id: Uuid,
    /// 0 ..= 1000, lower first (default 0).
    #[serde(default)]
    pub priority: u32,
    /// 0 ..= 10000, the share of `weighted` routes (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// A route's rule and targets.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub rule: Rule,
    pub targets: Vec<TargetSpec>,
}

/// A route as shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RouteView {
    pub merchant_id: Uuid,
    pub wallet: WalletBrand,
    pub method: PayMethod,
    pub rule: Rule,
    pub targets: Vec<TargetSpec>,
    pub updated_at: String,
}

/// A merchant's fee rate.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeeRate {
    pub merchant_id: Uuid,
    /// Its own rate in basis points; `null`: the configured `merchant_fee_rate_bps`.
    pub fee_rate_bps: Option<u32>,
}

/// Everything the registry loads.
pub struct Loaded {
    pub version: i64,
    pub accounts: Vec<AccountRow>,
    pub routes: Vec<RouteView>,
    pub fee_rates: HashMap<Uuid, u32>,
}

fn aad(id: Uuid) -> Vec<u8> {
    let mut v = b"channel_account:".to_vec();
    v.extend_from_slice(id.as_bytes());
    v
}

/// The account's credentials, decrypted.
pub fn open_credentials(secrets: &SecretBox, a: &AccountRow) -> anyhow::Result<serde_json::Value> {
    let plain = secrets.open(&a.credentials_nonce, &a.credentials_ciphertext, &aad(a.id))?;
    Ok(serde_json::from_slice(&plain)?)
}

fn check_name(name: &str) -> ApiResult<()> {
    let n = name.chars().count();
    if n == 0 || n > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "name",
            "`name` must be 1–64 characters without control characters",
        ));
    }
    Ok(())
}

fn check_rate(field: &str, bps: u32) -> ApiResult<()> {
    if bps > RATE_BPS_MAX {
        return Err(ApiError::validation(
            field,
            format!("`{field}` must be 0 ..= {RATE_BPS_MAX} basis points"),
        ));
    }
    Ok(())
}

fn check_kind(kind: ChannelKind) -> ApiResult<()> {
    if !super::SUPPORTED_KINDS.contains(&kind) {
        return Err(ApiError::validation(
            "kind",
            format!("no adapter for channel kind {kind} (wechat_v3, alipay, unionpay_qr)"),
        ));
    }
    Ok(())
}

/// The credentials must build an adapter of the kind (sandbox credentials need no sandbox here:
/// the server that serves them mounts it).
fn check_credentials(kind: ChannelKind, credentials: &serde_json::Value) -> ApiResult<()> {
    if !credentials.is_object() {
        return Err(ApiError::validation(
            "credentials",
            "`credentials` must be a JSON object",
        ));
    }
    if super::is_sandbox(credentials) {
        let sc: super::SandboxCredentials =
            serde_json::from_value(credentials.clone()).map_err(|e| {
                ApiError::validation(
                    "credentials",
                    format!("sandbox credentials: {}", super::safe_serde_message(&e)),
                )
            })?;
        if !sc.sandbox {
            return Err(ApiError::validation(
                "credentials",
                "`credentials.sandbox` must be true when given",
            ));
        }
        if let Some(b) = &sc.base_url
            && !(b.starts_with("http://") || b.starts_with("https://"))
        {
            return Err(ApiError::validation(
                "credentials",
                "`credentials.base_url` must be an http(s) URL",
            ));
        }
        return Ok(());
    }
    super::build_channel(kind, credentials, Uuid::nil(), "http://localhost", None)
        .map(|_| ())
        .map_err(|e| {
            ApiError::validation(
                "credentials",
                format!("not a usable {kind} configuration: {e}"),
            )
        })
}

async fn merchant_exists(db: &Db, merchant: Uuid) -> ApiResult<()> {
    const SQL: &str = "SELECT COUNT(*) FROM merchants WHERE id = $1";
    let n: i64 = on_db!(db, pool => sqlx::query_scalar(SQL).bind(merchant).fetch_one(pool).await?);
    if n == 0 {
        return Err(ApiError::not_found("merchant"));
    }
    Ok(())
}

const BUMP: &str = "UPDATE routing_version SET version = version + 1 WHERE id = 1";

pub async fn version(db: &Db) -> sqlx::Result<i64> {
    const SQL: &str = "SELECT version FROM routing_version WHERE id = 1";
    on_db!(db, pool => sqlx::query_scalar(SQL).fetch_one(pool).await)
}

pub async fn create_account(
    db: &Db,
    secrets: &SecretBox,
    merchant: MerchantId,
    new: NewAccount,
) -> ApiResult<AccountView> {
    check_name(&new.name)?;
    check_kind(new.kind)?;
    check_credentials(new.kind, &new.credentials)?;
    check_rate("cost_rate_bps", new.cost_rate_bps)?;
    let merchant = Uuid::from(merchant);
    merchant_exists(db, merchant).await?;
    let id = Uuid::now_v7();
    let (nonce, ciphertext) = secrets.seal(
        &serde_json::to_vec(&new.credentials).map_err(anyhow::Error::from)?,
        &aad(id),
    )?;
    let now = now_us();
    let row = AccountRow {
        id,
        merchant_id: merchant,
        name: new.name.trim().to_string(),
        kind: new.kind.as_str().to_string(),
        credentials_nonce: nonce,
        credentials_ciphertext: ciphertext,
        cost_rate_bps: new.cost_rate_bps,
        enabled: new.enabled.unwrap_or(true),
        created_at_us: now,
        updated_at_us: now,
    };
    let sql = format!(
        "INSERT INTO channel_accounts ({ACCOUNT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    );
    on_db!(db, pool => {
        let mut tx = pool.begin_write().await?;
        sqlx::query(&sql)
            .bind(row.id)
            .bind(row.merchant_id)
            .bind(&row.name)
            .bind(&row.kind)
            .bind(&row.credentials_nonce)
            .bind(&row.credentials_ciphertext)
            .bind(row.cost_rate_bps as i32)
            .bind(row.enabled)
            .bind(row.created_at_us)
            .bind(row.updated_at_us)
            .execute(&mut *tx)
            .await?;
        sqlx::query(BUMP).execute(&mut *tx).await?;
        tx.commit().await?;
    });
    Ok(AccountView::from(&row))
}

async fn account_rows(db: &Db, merchant: Uuid, id: Option<Uuid>) -> ApiResult<Vec<AccountRow>> {
    let rows: Vec<AccountTuple> = match id {
        Some(id) => {
            let sql = format!(
                "SELECT {ACCOUNT_COLUMNS} FROM channel_accounts WHERE merchant_id = $1 AND id = $2"
            );
            on_db!(db, pool => sqlx::query_as(&sql).bind(merchant).bind(id).fetch_all(pool).await?)
        }
        None => {
            let sql = format!(
                "SELECT {ACCOUNT_COLUMNS} FROM channel_accounts WHERE merchant_id = $1 ORDER BY id"
            );
            on_db!(db, pool => sqlx::query_as(&sql).bind(merchant).fetch_all(pool).await?)
        }
    };
    Ok(rows.into_iter().map(AccountRow::from).collect())
}

pub async fn list_accounts(db: &Db, merchant: MerchantId) -> ApiResult<Vec<AccountView>> {
    let merchant = Uuid::from(merchant);
    merchant_exists(db, merchant).await?;
    Ok(account_rows(db, merchant, None)
        .await?
        .iter()
        .map(AccountView::from)
        .collect())
}

pub async fn get_account(db: &Db, merchant: MerchantId, id: Uuid) -> ApiResult<AccountView> {
    account_rows(db, merchant.into(), Some(id))
        .await?
        .first()
        .map(AccountView::from)
        .ok_or_else(|| ApiError::not_found("channel account"))
}

/// Finds an account by id alone (for the command line's `enable` / `disable`).
pub async fn merchant_of_account(db: &Db, id: Uuid) -> ApiResult<MerchantId> {
    const SQL: &str = "SELECT merchant_id FROM channel_accounts WHERE id = $1";
    let m: Option<Uuid> =
        on_db!(db, pool => sqlx::query_scalar(SQL).bind(id).fetch_optional(pool).await?);
    m.map(MerchantId::from_uuid)
        .ok_or_else(|| ApiError::not_found("channel account"))
}

pub async fn update_account(
    db: &Db,
    secrets: &SecretBox,
    merchant: MerchantId,
    id: Uuid,
    patch: AccountPatch,
) -> ApiResult<AccountView> {
    let current = account_rows(db, merchant.into(), Some(id))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found("channel account"))?;
    let mut row = current.clone();
    if let Some(n) = &patch.name {
        check_name(n)?;
        row.name = n.trim().to_string();
    }
    if let Some(c) = patch.cost_rate_bps {
        check_rate("cost_rate_bps", c)?;
        row.cost_rate_bps = c;
    }
    if let Some(e) = patch.enabled {
        row.enabled = e;
    }
    if let Some(creds) = &patch.credentials {
        let kind: ChannelKind = row
            .kind
            .parse()
            .map_err(|e| ApiError::internal(format!("stored kind: {e}")))?;
        check_credentials(kind, creds)?;
        let (nonce, ct) = secrets.seal(
            &serde_json::to_vec(creds).map_err(anyhow::Error::from)?,
            &aad(id),
        )?;
        row.credentials_nonce = nonce;
        row.credentials_ciphertext = ct;
    }
    // Strictly increasing, so that registries see the row changed.
    row.updated_at_us = now_us().max(current.updated_at_us + 1);
    const SQL: &str = "UPDATE channel_accounts SET name = $1, cost_rate_bps = $2, enabled = $3, \
        credentials_nonce = $4, credentials_ciphertext = $5, updated_at_us = $6 \
        WHERE id = $7 AND merchant_id = $8";
    on_db!(db, pool => {
        let mut tx = pool.begin_write().await?;
        sqlx::query(SQL)
            .bind(&row.name)
            .bind(row.cost_rate_bps as i32)
            .bind(row.enabled)
            .bind(&row.credentials_nonce)
            .bind(&row.credentials_ciphertext)
            .bind(row.updated_at_us)
            .bind(row.id)
            .bind(row.merchant_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(BUMP).execute(&mut *tx).await?;
        tx.commit().await?;
    });
    Ok(AccountView::from(&row))
}

/// Sets (replaces) the merchant's route for (wallet, method).
pub async fn set_route(
    db: &Db,
    merchant: MerchantId,
    wallet: WalletBrand,
    method: PayMethod,
    spec: RouteSpec,
) -> ApiResult<RouteView> {
    let merchant = Uuid::from(merchant);
    merchant_exists(db, merchant).await?;
    if spec.targets.is_empty() || spec.targets.len() > TARGETS_MAX {
        return Err(ApiError::validation(
            "targets",
            format!("`targets` must hold 1–{TARGETS_MAX} channel accounts"),
        ));
    }
    let accounts: HashMap<Uuid, AccountRow> = account_rows(db, merchant, None)
        .await?
        .into_iter()
        .map(|a| (a.id, a))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for (i, t) in spec.targets.iter().enumerate() {
        let field = format!("targets[{i}].channel_account_id");
        if !seen.insert(t.channel_account_id) {
            return Err(ApiError::validation(
                field,
                "the same channel account appears twice",
            ));
        }
        let Some(a) = accounts.get(&t.channel_account_id) else {
            return Err(ApiError::validation(
                field,
                format!(
                    "{} is not a channel account of this merchant",
                    t.channel_account_id
                ),
            ));
        };
        let kind: Option<ChannelKind> = a.kind.parse().ok();
        if !kind.is_some_and(|k| super::kind_serves(k, wallet, method)) {
            return Err(ApiError::validation(
                field,
                format!(
                    "a {} account cannot take {wallet} {method} payments",
                    a.kind
                ),
            ));
        }
        if t.priority > PRIORITY_MAX {
            return Err(ApiError::validation(
                format!("targets[{i}].priority"),
                format!("`priority` must be 0 ..= {PRIORITY_MAX}"),
            ));
        }
        if t.weight > WEIGHT_MAX {
            return Err(ApiError::validation(
                format!("targets[{i}].weight"),
                format!("`weight` must be 0 ..= {WEIGHT_MAX}"),
            ));
        }
    }
    if spec.rule == Rule::Weighted && spec.targets.iter().all(|t| t.weight == 0) {
        return Err(ApiError::validation(
            "targets",
            "a weighted route needs at least one target with a weight above 0",
        ));
    }
    let now = now_us();
    let route_id = Uuid::now_v7();
    on_db!(db, pool => {
        let mut tx = pool.begin_write().await?;
        sqlx::query("DELETE FROM route_targets WHERE route_id IN (SELECT id FROM routes WHERE merchant_id = $1 AND wallet = $2 AND method = $3)")
            .bind(merchant)
            .bind(wallet.as_str())
            .bind(method.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM routes WHERE merchant_id = $1 AND wallet = $2 AND method = $3")
            .bind(merchant)
            .bind(wallet.as_str())
            .bind(method.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO routes (id, merchant_id, wallet, method, rule, created_at_us, updated_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(route_id)
            .bind(merchant)
            .bind(wallet.as_str())
            .bind(method.as_str())
            .bind(spec.rule.as_str())
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        for t in &spec.targets {
            sqlx::query("INSERT INTO route_targets (route_id, merchant_id, channel_account_id, priority, weight) VALUES ($1, $2, $3, $4, $5)")
                .bind(route_id)
                .bind(merchant)
                .bind(t.channel_account_id)
                .bind(t.priority as i32)
                .bind(t.weight as i32)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(BUMP).execute(&mut *tx).await?;
        tx.commit().await?;
    });
    Ok(RouteView {
        merchant_id: merchant,
        wallet,
        method,
        rule: spec.rule,
        targets: spec.targets,
        updated_at: rfc3339(now),
    })
}

/// Deletes the merchant's route for (wallet, method); whether there was one.
pub async fn delete_route(
    db: &Db,
    merchant: MerchantId,
    wallet: WalletBrand,
    method: PayMethod,
) -> ApiResult<bool> {
    let merchant = Uuid::from(merchant);
    merchant_exists(db, merchant).await?;
    let n = on_db!(db, pool => {
        let mut tx = pool.begin_write().await?;
        sqlx::query("DELETE FROM route_targets WHERE route_id IN (SELECT id FROM routes WHERE merchant_id = $1 AND wallet = $2 AND method = $3)")
            .bind(merchant)
            .bind(wallet.as_str())
            .bind(method.as_str())
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM routes WHERE merchant_id = $1 AND wallet = $2 AND method = $3")
            .bind(merchant)
            .bind(wallet.as_str())
            .bind(method.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(BUMP).execute(&mut *tx).await?;
        tx.commit().await?;
        n
    });
    Ok(n > 0)
}

type RouteTuple = (Uuid, Uuid, String, String, String, i64);
type TargetTuple = (Uuid, Uuid, i32, i32);

async fn route_views(db: &Db, merchant: Option<Uuid>) -> ApiResult<Vec<RouteView>> {
    let (routes, targets): (Vec<RouteTuple>, Vec<TargetTuple>) = match merchant {
        Some(m) => {
            const R: &str = "SELECT id, merchant_id, wallet, method, rule, updated_at_us FROM routes WHERE merchant_id = $1 ORDER BY wallet, method";
            const T: &str = "SELECT route_id, channel_account_id, priority, weight FROM route_targets WHERE merchant_id = $1";
            on_db!(db, pool => (
                sqlx::query_as(R).bind(m).fetch_all(pool).await?,
                sqlx::query_as(T).bind(m).fetch_all(pool).await?,
            ))
        }
        None => {
            const R: &str =
                "SELECT id, merchant_id, wallet, method, rule, updated_at_us FROM routes";
            const T: &str =
                "SELECT route_id, channel_account_id, priority, weight FROM route_targets";
            on_db!(db, pool => (
                sqlx::query_as(R).fetch_all(pool).await?,
                sqlx::query_as(T).fetch_all(pool).await?,
            ))
        }
    };
    let mut by_route: HashMap<Uuid, Vec<TargetSpec>> = HashMap::new();
    for (route, account, priority, weight) in targets {
        by_route.entry(route).or_default().push(TargetSpec {
            channel_account_id: account,
            priority: u32::try_from(priority).unwrap_or(0),
            weight: u32::try_from(weight).unwrap_or(0),
        });
    }
    let mut out = Vec::with_capacity(routes.len());
    for (id, merchant_id, wallet, method, rule, updated) in routes {
        let (Ok(wallet), Ok(method), Ok(rule)) = (
            wallet.parse::<WalletBrand>(),
            method.parse::<PayMethod>(),
            rule.parse::<Rule>(),
        ) else {
            tracing::error!(route_id = %id, "route with an unknown wallet, method or rule is ignored");
            continue;
        };
        let mut targets = by_route.remove(&id).unwrap_or_default();
        targets.sort_by_key(|t| (t.priority, t.channel_account_id));
        out.push(RouteView {
            merchant_id,
            wallet,
            method,
            rule,
            targets,
            updated_at: rfc3339(updated),
        });
    }
    Ok(out)
}

pub async fn list_routes(db: &Db, merchant: MerchantId) -> ApiResult<Vec<RouteView>> {
    let merchant = Uuid::from(merchant);
    merchant_exists(db, merchant).await?;
    route_views(db, Some(merchant)).await
}

/// Sets the merchant's own fee rate (`None`: back to the configured default).
pub async fn set_fee_rate(
    db: &Db,
    merchant: MerchantId,
    fee_rate_bps: Option<u32>,
) -> ApiResult<FeeRate> {
    if let Some(bps) = fee_rate_bps {
        check_rate("fee_rate_bps", bps)?;
    }
    let m = Uuid::from(merchant);
    merchant_exists(db, m).await?;
    let value = fee_rate_bps.map(|b| b as i32);
    on_db!(db, pool => {
        let mut tx = pool.begin_write().await?;
        sqlx::query("UPDATE merchants SET fee_rate_bps = $1 WHERE id = $2")
            .bind(value)
            .bind(m)
            .execute(&mut *tx)
            .await?;
        sqlx::query(BUMP).execute(&mut *tx).await?;
        tx.commit().await?;
    });
    Ok(FeeRate {
        merchant_id: m,
        fee_rate_bps,
    })
}

pub async fn get_fee_rate(db: &Db, merchant: MerchantId) -> ApiResult<FeeRate> {
    let m = Uuid::from(merchant);
    merchant_exists(db, m).await?;
    const SQL: &str = "SELECT fee_rate_bps FROM merchants WHERE id = $1";
    let v: Option<i32> = on_db!(db, pool => sqlx::query_scalar(SQL).bind(m).fetch_one(pool).await?);
    Ok(FeeRate {
        merchant_id: m,
        fee_rate_bps: v.and_then(|v| u32::try_from(v).ok()),
    })
}

/// Every account, route and fee rate, with the version they were read at (read first: a change
/// committed meanwhile makes the next poll reload again).
pub async fn load_all(db: &Db) -> ApiResult<Loaded> {
    let version = version(db).await?;
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM channel_accounts");
    let accounts: Vec<AccountTuple> =
        on_db!(db, pool => sqlx::query_as(&sql).fetch_all(pool).await?);
    const FEES: &str = "SELECT id, fee_rate_bps FROM merchants WHERE fee_rate_bps IS NOT NULL";
    let fees: Vec<(Uuid, i32)> = on_db!(db, pool => sqlx::query_as(FEES).fetch_all(pool).await?);
    Ok(Loaded {
        version,
        accounts: accounts.into_iter().map(AccountRow::from).collect(),
        routes: route_views(db, None).await?,
        fee_rates: fees
            .into_iter()
            .filter_map(|(m, f)| Some((m, u32::try_from(f).ok()?)))
            .collect(),
    })
}

/// Gives a merchant this server's sandboxes: one account per sandbox (WeChat Pay, Alipay,
/// UnionPay; cost `cost_rate_bps`) and a `priority` route to it for every method it serves.
/// Does nothing when the merchant has channel accounts already.
pub async fn provision_sandbox(
    db: &Db,
    secrets: &SecretBox,
    merchant: MerchantId,
    cost_rate_bps: u32,
) -> ApiResult<()> {
    if !account_rows(db, merchant.into(), None).await?.is_empty() {
        return Ok(());
    }
    for (kind, name) in [
        (ChannelKind::WechatV3, "wechat sandbox"),
        (ChannelKind::Alipay, "alipay sandbox"),
        (ChannelKind::UnionpayQr, "unionpay sandbox"),
    ] {
        let account = create_account(
            db,
            secrets,
            merchant,
            NewAccount {
                name: name.into(),
                kind,
                credentials: serde_json::json!({"sandbox": true}),
                cost_rate_bps,
                enabled: Some(true),
            },
        )
        .await?;
        let wallet = super::wallet_of_kind(kind).expect("supported kind");
        for method in [
            PayMethod::CodeScan,
            PayMethod::SoundWave,
            PayMethod::QrMerchant,
            PayMethod::QrStatic,
        ] {
            if !super::kind_serves(kind, wallet, method) {
                continue;
            }
            set_route(
                db,
                merchant,
                wallet,
                method,
                RouteSpec {
                    rule: Rule::Priority,
                    targets: vec![TargetSpec {
                        channel_account_id: account.id,
                        priority: 0,
                        weight: 1,
                    }],
                },
            )
            .await?;
        }
    }
    Ok(())
}
