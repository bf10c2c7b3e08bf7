//! The operators' audit log (`ops_audit_log`): one row per change, written by [`record!`] inside the
//! transaction of the change itself, so there is never a change without its row or a row without
//! its change.

use serde::Serialize;
use uuid::Uuid;

use crate::db::Db;
use crate::error::{ApiError, ApiResult};

/// Who did it.
#[derive(Debug, Clone, Copy)]
pub enum Actor {
    /// The `paymux` command line on the server (no operator).
    CommandLine,
    Operator(Uuid),
}

impl Actor {
    pub fn operator_id(self) -> Option<Uuid> {
        match self {
            Actor::CommandLine => None,
            Actor::Operator(id) => Some(id),
        }
    }
}

/// Inserts one audit row through `$exec` (a transaction): `(actor, action, target, &detail, at_us)`.
macro_rules! record {
    ($exec:expr, $actor:expr, $action:expr, $target:expr, $detail:expr, $at_us:expr) => {
        sqlx::query(
            "INSERT INTO ops_audit_log (id, operator_id, action, target, detail, at_us) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(uuid::Uuid::now_v7())
        .bind($crate::ops::audit::Actor::operator_id($actor))
        .bind($action)
        .bind($target)
        .bind(serde_json::to_string($detail).map_err($crate::error::ApiError::internal)?)
        .bind($at_us)
        .execute($exec)
        .await?
    };
}
pub(crate) use record;

#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    pub id: Uuid,
    /// `null`: the command line.
    pub operator_id: Option<Uuid>,
    pub operator_name: Option<String>,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
    pub at: chrono::DateTime<chrono::Utc>,
}

type Row = (
    Uuid,
    Option<Uuid>,
    Option<String>,
    String,
    String,
    String,
    i64,
);

/// Newest first, keyset-paged by id (UUIDv7, time-ordered); optionally one operator's or one target's.
pub async fn list(
    db: &Db,
    operator_id: Option<Uuid>,
    target: Option<&str>,
    starting_after: Option<Uuid>,
    limit: i64,
) -> ApiResult<Vec<AuditRow>> {
    let sql = "SELECT a.id, a.operator_id, o.name, a.action, a.target, a.detail, a.at_us \
        FROM ops_audit_log a LEFT JOIN operators o ON o.id = a.operator_id \
        WHERE ($1 IS NULL OR a.operator_id = $1) AND ($2 IS NULL OR a.target = $2) \
        AND ($3 IS NULL OR a.id < $3) ORDER BY a.id DESC LIMIT $4";
    let rows: Vec<Row> = match db {
        Db::Sqlite(p) => {
            sqlx::query_as(sql)
                .bind(operator_id)
                .bind(target)
                .bind(starting_after)
                .bind(limit)
                .fetch_all(p)
                .await?
        }
        Db::Postgres(p) => {
            let sql = sql
                .replace("$1 IS NULL", "$1::uuid IS NULL")
                .replace("$2 IS NULL", "$2::text IS NULL")
                .replace("$3 IS NULL", "$3::uuid IS NULL");
            sqlx::query_as(&sql)
                .bind(operator_id)
                .bind(target)
                .bind(starting_after)
                .bind(limit)
                .fetch_all(p)
                .await?
        }
    };
    rows.into_iter()
        .map(
            |(id, operator_id, operator_name, action, target, detail, at)| {
                Ok(AuditRow {
                    id,
                    operator_id,
                    operator_name,
                    action,
                    target,
                    detail: serde_json::from_str(&detail).map_err(ApiError::internal)?,
                    at: crate::db::us_to_datetime(at),
                })
            },
        )
        .collect()
}
