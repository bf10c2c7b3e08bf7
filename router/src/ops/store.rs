//! The SQL of the operations API: reconciliation runs and items, exceptions and their workflow
//! (assign, comment, resolve — each with its audit row in the same transaction), merchant
//! settlements, and payment search across merchants.

use crate::db::BeginWrite;
use serde::Serialize;
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::audit::{self, Actor};
use crate::db::{Db, now_us, us_to_datetime};
use crate::error::{ApiError, ApiResult};
use crate::payments::model::{PAYMENT_COLUMNS, PaymentRow};
use crate::reconciliation::StoredItem;
use paymux_model::ErrorCode;

macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

/// Runs a `QueryBuilder` built by `$build` on either backend and fetches all rows as `$ty`.
macro_rules! fetch_all {
    ($db:expr, $ty:ty, $build:expr) => {
        match $db {
            Db::Sqlite(p) => {
                let mut qb = QueryBuilder::<sqlx::Sqlite>::new("");
                $build(&mut qb);
                qb.build_query_as::<$ty>().fetch_all(p).await?
            }
            Db::Postgres(p) => {
                let mut qb = QueryBuilder::<sqlx::Postgres>::new("");
                $build(&mut qb);
                qb.build_query_as::<$ty>().fetch_all(p).await?
            }
        }
    };
}

/// The fixed list of ways an exception is resolved.
pub const RESOLUTIONS: &[&str] = &[
    "refunded_payer",
    "credited_merchant",
    "written_off",
    "channel_corrected",
    "no_action",
];
pub const EXCEPTION_STATUSES: &[&str] = &["open", "assigned", "resolved"];
/// Longest comment or resolution note (characters).
pub const TEXT_CHARS_MAX: usize = 4_000;

// ---- reconciliation runs ----

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: Uuid,
    pub channel_account_id: Uuid,
    pub day: String,
    pub status: String,
    pub attempts: i64,
    pub channel_records: i64,
    pub platform_records: i64,
    pub summary: Option<serde_json::Value>,
    pub channel_net_minor: Option<i64>,
    pub receivable_residual_minor: Option<i64>,
    pub error: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

type RunRow = (
    Uuid,
    Uuid,
    String,
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    i64,
    Option<i64>,
);
const RUN_COLUMNS: &str = "id, channel_account_id, day, status, CAST(attempts AS BIGINT), channel_records, \
    platform_records, summary, channel_net_minor, receivable_residual_minor, error, started_at_us, finished_at_us";

fn run_of(r: RunRow) -> Run {
    Run {
        id: r.0,
        channel_account_id: r.1,
        day: r.2,
        status: r.3,
        attempts: r.4,
        channel_records: r.5,
        platform_records: r.6,
        summary: r.7.and_then(|s| serde_json::from_str(&s).ok()),
        channel_net_minor: r.8,
        receivable_residual_minor: r.9,
        error: r.10,
        started_at: us_to_datetime(r.11),
        finished_at: r.12.map(us_to_datetime),
    }
}

/// Newest day first, then by id; keyset-paged by the last id seen.
pub async fn list_runs(
    db: &Db,
    day: Option<&str>,
    channel_account_id: Option<Uuid>,
    starting_after: Option<Uuid>,
    limit: i64,
) -> ApiResult<Vec<Run>> {
    let rows: Vec<RunRow> = fetch_all!(db, RunRow, |qb: &mut QueryBuilder<_>| {
        qb.push(format!(
            "SELECT {RUN_COLUMNS} FROM reconciliation_runs WHERE 1 = 1"
        ));
        if let Some(d) = day {
            qb.push(" AND day = ").push_bind(d.to_string());
        }
        if let Some(a) = channel_account_id {
            qb.push(" AND channel_account_id = ").push_bind(a);
        }
        if let Some(after) = starting_after {
            let cursor_day = "(SELECT c.day FROM reconciliation_runs c WHERE c.id = ";
            qb.push(" AND (day < ")
                .push(cursor_day)
                .push_bind(after)
                .push(") OR (day = ")
                .push(cursor_day)
                .push_bind(after)
                .push(") AND id > ")
                .push_bind(after)
                .push("))");
        }
        qb.push(" ORDER BY day DESC, id LIMIT ").push_bind(limit);
    });
    Ok(rows.into_iter().map(run_of).collect())
}

pub async fn get_run(db: &Db, id: Uuid) -> ApiResult<Option<Run>> {
    let rows: Vec<RunRow> = fetch_all!(db, RunRow, |qb: &mut QueryBuilder<_>| {
        qb.push(format!(
            "SELECT {RUN_COLUMNS} FROM reconciliation_runs WHERE id = "
        ))
        .push_bind(id);
    });
    Ok(rows.into_iter().next().map(run_of))
}

/// A page of a run's items in id order, after `starting_after`.
pub async fn run_items(
    db: &Db,
    run_id: Uuid,
    starting_after: Option<Uuid>,
    limit: i64,
) -> ApiResult<Vec<StoredItem>> {
    Ok(fetch_all!(db, StoredItem, |qb: &mut QueryBuilder<_>| {
        qb.push(
            "SELECT id, class, kind, out_trade_no, out_refund_no, channel_trade_no, \
             platform_amount_minor, channel_amount_minor, platform_status, channel_fee_minor, \
             expected_fee_minor, resolution, resolved_by FROM reconciliation_items WHERE run_id = ",
        )
        .push_bind(run_id);
        if let Some(a) = starting_after {
            qb.push(" AND id > ").push_bind(a);
        }
        qb.push(" ORDER BY id LIMIT ").push_bind(limit);
    }))
}

// ---- exceptions ----

#[derive(Debug, Clone, Serialize)]
pub struct Exception {
    /// The reconciliation item's id.
    pub id: Uuid,
    pub run_id: Uuid,
    pub channel_account_id: Uuid,
    pub day: String,
    pub class: String,
    pub status: String,
    pub kind: String,
    pub out_trade_no: String,
    pub out_refund_no: Option<String>,
    pub channel_trade_no: Option<String>,
    pub platform_amount_minor: Option<i64>,
    pub channel_amount_minor: Option<i64>,
    pub assignee_id: Option<Uuid>,
    pub resolution: Option<String>,
    pub note: Option<String>,
    pub resolved_by: Option<Uuid>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub resolved_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(sqlx::FromRow)]
struct ExceptionRow {
    item_id: Uuid,
    run_id: Uuid,
    channel_account_id: Uuid,
    day: String,
    class: String,
    status: String,
    kind: String,
    out_trade_no: String,
    out_refund_no: Option<String>,
    channel_trade_no: Option<String>,
    platform_amount_minor: Option<i64>,
    channel_amount_minor: Option<i64>,
    assignee_id: Option<Uuid>,
    resolution: Option<String>,
    note: Option<String>,
    resolved_by: Option<Uuid>,
    created_at_us: i64,
    resolved_at_us: Option<i64>,
}

const EXCEPTION_SELECT: &str = "SELECT x.item_id, x.run_id, r.channel_account_id, r.day, x.class, x.status, \
    i.kind, i.out_trade_no, i.out_refund_no, i.channel_trade_no, i.platform_amount_minor, \
    i.channel_amount_minor, x.assignee_id, x.resolution, x.note, x.resolved_by, x.created_at_us, \
    x.resolved_at_us FROM reconciliation_exceptions x \
    JOIN reconciliation_items i ON i.id = x.item_id JOIN reconciliation_runs r ON r.id = x.run_id";

impl From<ExceptionRow> for Exception {
    fn from(r: ExceptionRow) -> Exception {
        Exception {
            id: r.item_id,
            run_id: r.run_id,
            channel_account_id: r.channel_account_id,
            day: r.day,
            class: r.class,
            status: r.status,
            kind: r.kind,
            out_trade_no: r.out_trade_no,
            out_refund_no: r.out_refund_no,
            channel_trade_no: r.channel_trade_no,
            platform_amount_minor: r.platform_amount_minor,
            channel_amount_minor: r.channel_amount_minor,
            assignee_id: r.assignee_id,
            resolution: r.resolution,
            note: r.note,
            resolved_by: r.resolved_by,
            created_at: us_to_datetime(r.created_at_us),
            resolved_at: r.resolved_at_us.map(us_to_datetime),
        }
    }
}

/// Oldest first (the order they were opened in, then by id), keyset-paged by the last id seen.
pub async fn list_exceptions(
    db: &Db,
    status: Option<&str>,
    assignee: Option<Uuid>,
    starting_after: Option<Uuid>,
    limit: i64,
) -> ApiResult<Vec<Exception>> {
    let rows: Vec<ExceptionRow> = fetch_all!(db, ExceptionRow, |qb: &mut QueryBuilder<_>| {
        qb.push(EXCEPTION_SELECT).push(" WHERE 1 = 1");
        if let Some(s) = status {
            qb.push(" AND x.status = ").push_bind(s.to_string());
        }
        if let Some(a) = assignee {
            qb.push(" AND x.assignee_id = ").push_bind(a);
        }
        if let Some(a) = starting_after {
            qb.push(
                " AND (x.created_at_us, x.item_id) > (SELECT c.created_at_us, c.item_id \
                 FROM reconciliation_exceptions c WHERE c.item_id = ",
            )
            .push_bind(a)
            .push(")");
        }
        qb.push(" ORDER BY x.created_at_us, x.item_id LIMIT ")
            .push_bind(limit);
    });
    Ok(rows.into_iter().map(Exception::from).collect())
}

pub async fn get_exception(db: &Db, id: Uuid) -> ApiResult<Option<Exception>> {
    let rows: Vec<ExceptionRow> = fetch_all!(db, ExceptionRow, |qb: &mut QueryBuilder<_>| {
        qb.push(EXCEPTION_SELECT)
            .push(" WHERE x.item_id = ")
            .push_bind(id);
    });
    Ok(rows.into_iter().next().map(Exception::from))
}

#[derive(Debug, Clone, Serialize)]
pub struct Comment {
    pub id: Uuid,
    pub operator_id: Uuid,
    pub operator_name: String,
    pub text: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

pub async fn comments(db: &Db, exception: Uuid) -> ApiResult<Vec<Comment>> {
    let rows: Vec<(Uuid, Uuid, String, String, i64)> = on_db!(db, p => sqlx::query_as(
        "SELECT c.id, c.operator_id, o.name, c.text, c.at_us FROM reconciliation_exception_comments c \
         JOIN operators o ON o.id = c.operator_id WHERE c.item_id = $1 ORDER BY c.at_us, c.id LIMIT 1000",
    )
    .bind(exception)
    .fetch_all(p)
    .await?);
    Ok(rows
        .into_iter()
        .map(|(id, operator_id, operator_name, text, at)| Comment {
            id,
            operator_id,
            operator_name,
            text,
            at: us_to_datetime(at),
        })
        .collect())
}

fn target(id: Uuid) -> String {
    format!("exception:{id}")
}

/// Assigns an open or assigned exception to an enabled operator or admin.
pub async fn assign(db: &Db, actor: Actor, id: Uuid, assignee: Uuid) -> ApiResult<Exception> {
    let now = now_us();
    let detail = serde_json::json!({"operator_id": assignee});
    let outcome: Result<(), ApiError> = on_db!(db, p => {
        let mut tx = p.begin_write().await?;
        let ok: Option<(String,)> = sqlx::query_as(
            "SELECT role FROM operators WHERE id = $1 AND disabled_at_us IS NULL",
        )
        .bind(assignee)
        .fetch_optional(&mut *tx)
        .await?;
        match ok {
            None => Err(ApiError::validation("operator_id", "no enabled operator with this id")),
            Some((role,)) if role == "viewer" => Err(ApiError::validation(
                "operator_id",
                "a viewer cannot work on exceptions; assign an operator or an admin",
            )),
            Some(_) => {
                // Assigning it to whom it is assigned already writes nothing (a double click).
                let n = sqlx::query(
                    "UPDATE reconciliation_exceptions SET assignee_id = $1, status = 'assigned' \
                     WHERE item_id = $2 AND status IN ('open', 'assigned') \
                     AND (assignee_id IS NULL OR assignee_id <> $1 OR status = 'open')",
                )
                .bind(assignee)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n == 1 {
                    audit::record!(&mut *tx, actor, "exception.assign", target(id), &detail, now);
                    tx.commit().await?;
                    Ok(())
                } else {
                    tx.rollback().await?;
                    match get_exception(db, id).await? {
                        Some(ex) if ex.status == "assigned" && ex.assignee_id == Some(assignee) => {
                            Ok(())
                        }
                        _ => Err(state_error(db, id, "a resolved exception cannot be reassigned").await),
                    }
                }
            }
        }
    });
    outcome?;
    get_exception(db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("exception"))
}

/// 404 when the exception does not exist, else 409 `invalid_state` with `detail`.
async fn state_error(db: &Db, id: Uuid, detail: &str) -> ApiError {
    match get_exception(db, id).await {
        Ok(Some(_)) => ApiError::new(ErrorCode::InvalidState, detail),
        Ok(None) => ApiError::not_found("exception"),
        Err(e) => e,
    }
}

pub fn validate_text(field: &str, text: &str) -> ApiResult<String> {
    let t = text.trim();
    if t.is_empty() || t.chars().count() > TEXT_CHARS_MAX {
        return Err(ApiError::validation(
            field,
            format!("`{field}` must be 1–{TEXT_CHARS_MAX} characters"),
        ));
    }
    // Line breaks and tabs are text; other control characters (NUL, which PostgreSQL cannot
    // store, among them) are refused.
    if t.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ApiError::validation(
            field,
            format!(
                "`{field}` must not contain control characters other than line breaks and tabs"
            ),
        ));
    }
    Ok(t.to_string())
}

/// Adds a comment (any status).
pub async fn comment(db: &Db, actor: Uuid, id: Uuid, text: &str) -> ApiResult<Comment> {
    let text = validate_text("text", text)?;
    let now = now_us();
    let cid = Uuid::now_v7();
    let detail = serde_json::json!({"comment_id": cid, "text": text});
    let found = on_db!(db, p => {
        let mut tx = p.begin_write().await?;
        let exists: Option<(Uuid,)> =
            sqlx::query_as("SELECT item_id FROM reconciliation_exceptions WHERE item_id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_some() {
            sqlx::query(
                "INSERT INTO reconciliation_exception_comments (id, item_id, operator_id, text, at_us) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(cid)
            .bind(id)
            .bind(actor)
            .bind(&text)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            audit::record!(&mut *tx, Actor::Operator(actor), "exception.comment", target(id), &detail, now);
            tx.commit().await?;
        }
        exists.is_some()
    });
    if !found {
        return Err(ApiError::not_found("exception"));
    }
    let name = super::operators::get(db, actor)
        .await?
        .map(|o| o.name)
        .unwrap_or_default();
    Ok(Comment {
        id: cid,
        operator_id: actor,
        operator_name: name,
        text,
        at: us_to_datetime(now),
    })
}

/// Resolves an exception. Resolving it again with the same resolution answers it unchanged (and
/// writes nothing); with another resolution, 409 `invalid_state`.
pub async fn resolve(
    db: &Db,
    actor: Uuid,
    id: Uuid,
    resolution: &str,
    note: Option<&str>,
) -> ApiResult<Exception> {
    if !RESOLUTIONS.contains(&resolution) {
        return Err(ApiError::validation(
            "resolution",
            format!("`resolution` must be one of {}", RESOLUTIONS.join(", ")),
        ));
    }
    let note = note.map(|n| validate_text("note", n)).transpose()?;
    let now = now_us();
    let detail = serde_json::json!({"resolution": resolution, "note": note});
    let changed = on_db!(db, p => {
        let mut tx = p.begin_write().await?;
        let n = sqlx::query(
            "UPDATE reconciliation_exceptions SET status = 'resolved', resolution = $1, \
             note = CASE WHEN $2 IS NULL THEN note WHEN note IS NULL THEN $2 ELSE note || $6 || $2 END, \
             resolved_by = $3, resolved_at_us = $4 WHERE item_id = $5 AND status IN ('open', 'assigned')",
        )
        .bind(resolution)
        .bind(&note)
        .bind(actor)
        .bind(now)
        .bind(id)
        // The note the exception was opened with (what happened, what to do) stays; the
        // operator's follows it.
        .bind("\n")
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            audit::record!(&mut *tx, Actor::Operator(actor), "exception.resolve", target(id), &detail, now);
            tx.commit().await?;
        }
        n == 1
    });
    let ex = get_exception(db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("exception"))?;
    if !changed && ex.resolution.as_deref() != Some(resolution) {
        return Err(ApiError::new(
            ErrorCode::InvalidState,
            format!(
                "already resolved as `{}`",
                ex.resolution.as_deref().unwrap_or("?")
            ),
        ));
    }
    Ok(ex)
}

// ---- settlements ----

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Settlement {
    pub id: Uuid,
    pub merchant_id: Uuid,
    pub day: String,
    pub currency: String,
    pub gross_minor: i64,
    pub refunds_minor: i64,
    pub fees_minor: i64,
    pub net_minor: i64,
    pub carried_minor: i64,
    pub payout_minor: i64,
    pub entry_id: Option<Uuid>,
    pub payout_file: Option<String>,
}

/// Newest day first, then by merchant; keyset-paged by the last settlement id seen.
pub async fn list_settlements(
    db: &Db,
    day: Option<&str>,
    merchant_id: Option<Uuid>,
    starting_after: Option<Uuid>,
    limit: i64,
) -> ApiResult<Vec<Settlement>> {
    Ok(fetch_all!(db, Settlement, |qb: &mut QueryBuilder<_>| {
        qb.push(
            "SELECT id, merchant_id, day, currency, gross_minor, refunds_minor, fees_minor, net_minor, \
             carried_minor, payout_minor, entry_id, payout_file FROM merchant_settlements WHERE 1 = 1",
        );
        if let Some(d) = day {
            qb.push(" AND day = ").push_bind(d.to_string());
        }
        if let Some(m) = merchant_id {
            qb.push(" AND merchant_id = ").push_bind(m);
        }
        if let Some(after) = starting_after {
            let cursor = |column: &str| {
                format!("(SELECT c.{column} FROM merchant_settlements c WHERE c.id = ")
            };
            qb.push(" AND (day < ")
                .push(cursor("day"))
                .push_bind(after)
                .push(") OR (day = ")
                .push(cursor("day"))
                .push_bind(after)
                .push(") AND merchant_id > ")
                .push(cursor("merchant_id"))
                .push_bind(after)
                .push(")))");
        }
        qb.push(" ORDER BY day DESC, merchant_id LIMIT ")
            .push_bind(limit);
    }))
}

// ---- payments ----

/// Filters of the payment search (all optional; ANDed).
#[derive(Debug, Default)]
pub struct PaymentFilter {
    pub id: Option<Uuid>,
    pub merchant_id: Option<Uuid>,
    pub status: Option<String>,
    pub merchant_order_no: Option<String>,
    pub channel_trade_no: Option<String>,
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub starting_after: Option<Uuid>,
}

/// Payments of every merchant, newest first, keyset-paged by id.
pub async fn search_payments(db: &Db, f: &PaymentFilter, limit: i64) -> ApiResult<Vec<PaymentRow>> {
    Ok(fetch_all!(db, PaymentRow, |qb: &mut QueryBuilder<_>| {
        qb.push(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE 1 = 1"
        ));
        if let Some(id) = f.id {
            qb.push(" AND id = ").push_bind(id);
        }
        if let Some(m) = f.merchant_id {
            qb.push(" AND merchant_id = ").push_bind(m);
        }
        if let Some(s) = &f.status {
            qb.push(" AND status = ").push_bind(s.clone());
        }
        if let Some(o) = &f.merchant_order_no {
            qb.push(" AND merchant_order_no = ").push_bind(o.clone());
        }
        if let Some(t) = &f.channel_trade_no {
            qb.push(" AND channel_trade_no = ").push_bind(t.clone());
        }
        if let Some(from) = f.from_us {
            qb.push(" AND created_at_us >= ").push_bind(from);
        }
        if let Some(to) = f.to_us {
            qb.push(" AND created_at_us < ").push_bind(to);
        }
        if let Some(a) = f.starting_after {
            qb.push(" AND id < ").push_bind(a);
        }
        qb.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    }))
}
