//! Operators: a name, a role and a bearer token. The token (`opr_` + 32 random bytes in hex) is
//! shown once at creation; only its SHA-256 is stored. Creating and disabling an operator writes an
//! `ops_audit_log` row in the same transaction (operator `NULL` when done from the command line).

use crate::db::BeginWrite;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::audit::{self, Actor};
use crate::db::{Db, now_us};
use crate::error::{ApiError, ApiResult};

macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

/// Longest operator name (characters).
pub const NAME_CHARS_MAX: usize = 100;
const TOKEN_PREFIX: &str = "opr_";

/// What an operator may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also assigns, comments on and resolves exceptions.
    Operator,
    /// Also manages operators and reads the audit log.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}` (viewer, operator or admin)"
            )),
        }
    }
}

/// An operator as shown (never with the token).
#[derive(Debug, Clone, Serialize)]
pub struct Operator {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub disabled_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A new operator with its token, shown this once.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedOperator {
    #[serde(flatten)]
    pub operator: Operator,
    pub token: String,
}

type Row = (Uuid, String, String, i64, Option<i64>);
type RowWithHash = (Uuid, String, String, i64, Option<i64>, Vec<u8>);
const COLUMNS: &str = "id, name, role, created_at_us, disabled_at_us";

fn from_row((id, name, role, created, disabled): Row) -> ApiResult<Operator> {
    Ok(Operator {
        id,
        name,
        role: role.parse().map_err(ApiError::internal)?,
        created_at: crate::db::us_to_datetime(created),
        disabled_at: disabled.map(crate::db::us_to_datetime),
    })
}

/// SHA-256 of a token, as stored.
pub fn token_hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    pub name: String,
    pub role: String,
}

fn validate(new: &NewOperator) -> ApiResult<(String, Role)> {
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > NAME_CHARS_MAX {
        return Err(ApiError::validation(
            "name",
            format!("`name` must be 1–{NAME_CHARS_MAX} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "name",
            "`name` must not contain control characters",
        ));
    }
    let role = new
        .role
        .parse()
        .map_err(|e: String| ApiError::validation("role", e))?;
    Ok((name.to_string(), role))
}

/// Creates an operator (by `actor`) and returns it with its token.
pub async fn create(db: &Db, actor: Actor, new: NewOperator) -> ApiResult<CreatedOperator> {
    let (name, role) = validate(&new)?;
    let id = Uuid::now_v7();
    let token = format!("{TOKEN_PREFIX}{}", crate::crypto::random_hex(32));
    let hash = token_hash(&token);
    let now = now_us();
    let detail = serde_json::json!({"name": name, "role": role});
    on_db!(db, pool => {
        let mut tx = pool.begin_write().await?;
        sqlx::query(
            "INSERT INTO operators (id, name, role, token_hash, created_at_us) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(&name)
        .bind(role.as_str())
        .bind(&hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        audit::record!(&mut *tx, actor, "operator.create", format!("operator:{id}"), &detail, now);
        tx.commit().await?;
    });
    Ok(CreatedOperator {
        operator: Operator {
            id,
            name,
            role,
            created_at: crate::db::us_to_datetime(now),
            disabled_at: None,
        },
        token,
    })
}

pub async fn list(db: &Db) -> ApiResult<Vec<Operator>> {
    let sql = format!("SELECT {COLUMNS} FROM operators ORDER BY created_at_us, id");
    let rows: Vec<Row> = on_db!(db, pool => sqlx::query_as(&sql).fetch_all(pool).await?);
    rows.into_iter().map(from_row).collect()
}

pub async fn get(db: &Db, id: Uuid) -> ApiResult<Option<Operator>> {
    let sql = format!("SELECT {COLUMNS} FROM operators WHERE id = $1");
    let row: Option<Row> =
        on_db!(db, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?);
    row.map(from_row).transpose()
}

/// Disables an operator (its token stops working at once). Disabling a disabled one changes nothing.
pub async fn disable(db: &Db, actor: Actor, id: Uuid) -> ApiResult<Operator> {
    let now = now_us();
    let changed = on_db!(db, pool => {
        let mut tx = pool.begin_write().await?;
        let n = sqlx::query(
            "UPDATE operators SET disabled_at_us = $1 WHERE id = $2 AND disabled_at_us IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            audit::record!(&mut *tx, actor, "operator.disable", format!("operator:{id}"),
                &serde_json::json!({}), now);
        }
        tx.commit().await?;
        n == 1
    });
    let op = get(db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("operator"))?;
    debug_assert!(!changed || op.disabled_at.is_some());
    Ok(op)
}

/// The enabled operator holding this token, if any. The token's hash is looked up, then compared
/// once more in constant time.
pub async fn authenticate(db: &Db, token: &str) -> ApiResult<Option<Operator>> {
    if !token.starts_with(TOKEN_PREFIX) || token.len() > 200 {
        return Ok(None);
    }
    let hash = token_hash(token);
    let sql = format!(
        "SELECT {COLUMNS}, token_hash FROM operators WHERE token_hash = $1 AND disabled_at_us IS NULL"
    );
    let row: Option<RowWithHash> =
        on_db!(db, pool => sqlx::query_as(&sql).bind(&hash).fetch_optional(pool).await?);
    match row {
        Some((id, name, role, created, disabled, stored)) if same(&stored, &hash) => {
            Ok(Some(from_row((id, name, role, created, disabled))?))
        }
        _ => Ok(None),
    }
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn names_are_validated() {
        let new = |name: &str, role: &str| NewOperator {
            name: name.into(),
            role: role.into(),
        };
        assert!(validate(&new("Li Lei", "viewer")).is_ok());
        assert_eq!(
            validate(&new("  ", "viewer")).unwrap_err().field.as_deref(),
            Some("name")
        );
        assert_eq!(
            validate(&new("a\nb", "viewer"))
                .unwrap_err()
                .field
                .as_deref(),
            Some("name")
        );
        assert_eq!(
            validate(&new("Li", "root")).unwrap_err().field.as_deref(),
            Some("role")
        );
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
    }
}
