//! Refunds: `POST /v1/payments/{id}/refunds`, `GET /v1/refunds/{id}`, and their SQL.
//!
//! Creating a refund reserves its amount on the payment in the same transaction as the refund row
//! (`refunded_amount_minor + amount <= amount_minor`, a compare-and-set on the payment row), so the
//! refunds of a payment never exceed what was paid, however many race. A refund that fails gives its
//! reservation back; one that succeeds posts its ledger entry (the payment's split reversed for the
//! refunded share, fees returned cumulatively and proportionally) in the transaction that marks it
//! `succeeded`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get as get_route, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use paymux_model::{Currency, ErrorCode, PaymentId, PaymentStatus, RefundId, RefundStatus};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Merchant;
use crate::batcher::{WriteOp, WriteOutcome};
use crate::db::{Db, now_us, us_to_datetime};
use crate::error::{ApiError, ApiResult};
use crate::payments::api::{AMOUNT_MINOR_MAX, parse_json};
use crate::payments::repo;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/payments/{id}/refunds", post(create_refund))
        .route("/refunds/{id}", get_route(get_refund))
}

/// A refund row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RefundRow {
    pub id: Uuid,
    pub payment_id: Uuid,
    pub merchant_id: Uuid,
    pub merchant_refund_no: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: Option<String>,
    pub status: String,
    pub channel_refund_no: Option<String>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    pub succeeded_at_us: Option<i64>,
}

pub const REFUND_COLUMNS: &str = "id, payment_id, merchant_id, merchant_refund_no, amount_minor, currency, reason, \
    status, channel_refund_no, failure_code, failure_message, created_at_us, updated_at_us, succeeded_at_us";

impl RefundRow {
    pub fn status(&self) -> RefundStatus {
        self.status.parse().unwrap_or(RefundStatus::Processing)
    }
}

/// A refund as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Refund {
    pub id: RefundId,
    pub payment_id: PaymentId,
    pub merchant_refund_no: String,
    /// Amount in minor units.
    pub amount: i64,
    pub currency: Currency,
    pub reason: Option<String>,
    pub status: RefundStatus,
    pub channel_refund_no: Option<String>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub succeeded_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<&RefundRow> for Refund {
    fn from(r: &RefundRow) -> Refund {
        Refund {
            id: RefundId::from_uuid(r.id),
            payment_id: PaymentId::from_uuid(r.payment_id),
            merchant_refund_no: r.merchant_refund_no.clone(),
            amount: r.amount_minor,
            currency: r.currency.parse().unwrap_or(Currency::Cny),
            reason: r.reason.clone(),
            status: r.status(),
            channel_refund_no: r.channel_refund_no.clone(),
            failure_code: r.failure_code.clone(),
            failure_message: r.failure_message.clone(),
            created_at: us_to_datetime(r.created_at_us),
            updated_at: us_to_datetime(r.updated_at_us),
            succeeded_at: r.succeeded_at_us.map(us_to_datetime),
        }
    }
}

/// A refund request. Unknown fields are rejected.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRefund {
    /// The merchant's refund number, unique per merchant: 1–64 characters of `[A-Za-z0-9_.:-]`.
    pub merchant_refund_no: String,
    /// Amount in minor units, at least 1 and at most what is left to refund.
    pub amount: i64,
    /// Why, 1–80 characters (shown to the payer by some wallets).
    #[serde(default)]
    pub reason: Option<String>,
}

/// What creating a refund row found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundCreate {
    Created(Box<RefundRow>),
    /// The same refund number with the same payment and amount: the earlier refund.
    Existing(Box<RefundRow>),
    /// The same refund number for another payment or amount.
    Conflict(Box<RefundRow>),
    /// The payment is not `succeeded`.
    NotRefundable,
    /// The refunds would exceed the paid amount.
    Exceeds,
}

/// Final answer for a refund.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundSettle {
    pub refund_id: RefundId,
    pub payment_id: PaymentId,
    pub to: RefundStatus,
    pub channel_refund_no: Option<String>,
    /// For `succeeded`: when the channel says the money went back (else: when it is settled here).
    pub succeeded_at_us: Option<i64>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    /// For `succeeded`: what the ledger entry needs besides the refunds that succeeded before.
    pub ledger: Option<RefundLedger>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundLedger {
    pub merchant: paymux_model::MerchantId,
    pub channel_account: paymux_model::ChannelAccountId,
    pub payment_amount_minor: i64,
    pub merchant_fee_rate_bps: u32,
    pub channel_cost_rate_bps: u32,
}

macro_rules! refund_sql {
    ($create:ident, $settle:ident, $conn:ty, $lock:expr) => {
        /// Inserts the refund and reserves its amount on the payment, in the caller's transaction.
        pub async fn $create(conn: &mut $conn, r: &RefundRow) -> sqlx::Result<RefundCreate> {
            let existing: Option<RefundRow> = sqlx::query_as(&format!(
                "SELECT {REFUND_COLUMNS} FROM refunds WHERE merchant_id = $1 AND merchant_refund_no = $2"
            ))
            .bind(r.merchant_id)
            .bind(&r.merchant_refund_no)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(e) = existing {
                return Ok(if e.payment_id == r.payment_id && e.amount_minor == r.amount_minor {
                    RefundCreate::Existing(Box::new(e))
                } else {
                    RefundCreate::Conflict(Box::new(e))
                });
            }
            let reserved = sqlx::query(
                "UPDATE payments SET refunded_amount_minor = refunded_amount_minor + $1, updated_at_us = $2 \
                 WHERE id = $3 AND merchant_id = $4 AND status = 'succeeded' \
                 AND refunded_amount_minor + $1 <= amount_minor",
            )
            .bind(r.amount_minor)
            .bind(r.created_at_us)
            .bind(r.payment_id)
            .bind(r.merchant_id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if reserved != 1 {
                let status: Option<String> = sqlx::query_scalar("SELECT status FROM payments WHERE id = $1")
                    .bind(r.payment_id)
                    .fetch_optional(&mut *conn)
                    .await?;
                return Ok(if status.as_deref() == Some("succeeded") {
                    RefundCreate::Exceeds
                } else {
                    RefundCreate::NotRefundable
                });
            }
            let inserted = sqlx::query(&format!(
                "INSERT INTO refunds ({REFUND_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (merchant_id, merchant_refund_no) DO NOTHING"
            ))
            .bind(r.id)
            .bind(r.payment_id)
            .bind(r.merchant_id)
            .bind(&r.merchant_refund_no)
            .bind(r.amount_minor)
            .bind(&r.currency)
            .bind(&r.reason)
            .bind(&r.status)
            .bind(&r.channel_refund_no)
            .bind(&r.failure_code)
            .bind(&r.failure_message)
            .bind(r.created_at_us)
            .bind(r.updated_at_us)
            .bind(r.succeeded_at_us)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if inserted != 1 {
                // A concurrent request took the number first: give the reservation back.
                sqlx::query("UPDATE payments SET refunded_amount_minor = refunded_amount_minor - $1 WHERE id = $2")
                    .bind(r.amount_minor)
                    .bind(r.payment_id)
                    .execute(&mut *conn)
                    .await?;
                let e: RefundRow = sqlx::query_as(&format!(
                    "SELECT {REFUND_COLUMNS} FROM refunds WHERE merchant_id = $1 AND merchant_refund_no = $2"
                ))
                .bind(r.merchant_id)
                .bind(&r.merchant_refund_no)
                .fetch_one(&mut *conn)
                .await?;
                return Ok(RefundCreate::Conflict(Box::new(e)));
            }
            Ok(RefundCreate::Created(Box::new(r.clone())))
        }

        /// Compare-and-set a refund to its final state. `failed` gives the reservation back;
        /// `succeeded` returns the ledger entry to post (the refunds that succeeded before it are
        /// read under the payment row's lock, so the cumulative fee return is exact).
        pub async fn $settle(
            conn: &mut $conn,
            s: &RefundSettle,
            now_us: i64,
        ) -> sqlx::Result<(bool, Option<paymux_ledger::NewEntry>)> {
            let pid: Uuid = s.payment_id.into();
            let rid: Uuid = s.refund_id.into();
            let succeeded_at_us = s.succeeded_at_us.unwrap_or(now_us);
            if $lock {
                sqlx::query("SELECT id FROM payments WHERE id = $1 FOR UPDATE")
                    .bind(pid)
                    .execute(&mut *conn)
                    .await?;
            }
            let amount: Option<i64> = sqlx::query_scalar(
                "UPDATE refunds SET status = $1, channel_refund_no = COALESCE($2, channel_refund_no), \
                 failure_code = $3, failure_message = $4, updated_at_us = $5, \
                 succeeded_at_us = CASE WHEN $1 = 'succeeded' THEN $6 ELSE NULL END \
                 WHERE id = $7 AND status = 'processing' RETURNING amount_minor",
            )
            .bind(s.to.as_str())
            .bind(&s.channel_refund_no)
            .bind(&s.failure_code)
            .bind(&s.failure_message)
            .bind(now_us)
            .bind(succeeded_at_us)
            .bind(rid)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(amount) = amount else { return Ok((false, None)) };
            match (s.to, s.ledger) {
                (RefundStatus::Failed, _) => {
                    sqlx::query("UPDATE payments SET refunded_amount_minor = refunded_amount_minor - $1, updated_at_us = $2 WHERE id = $3")
                        .bind(amount)
                        .bind(now_us)
                        .bind(pid)
                        .execute(&mut *conn)
                        .await?;
                    Ok((true, None))
                }
                (RefundStatus::Succeeded, Some(l)) => {
                    let before: i64 = sqlx::query_scalar(
                        "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM refunds \
                         WHERE payment_id = $1 AND status = 'succeeded' AND id <> $2",
                    )
                    .bind(pid)
                    .bind(rid)
                    .fetch_one(&mut *conn)
                    .await?;
                    let ctx = paymux_ledger::rules::RefundContext {
                        payment_id: s.payment_id,
                        merchant: l.merchant,
                        channel_account: l.channel_account,
                        payment_amount: paymux_model::Money::cny(l.payment_amount_minor),
                        refunded_before_minor: before,
                        merchant_fee_rate_bps: l.merchant_fee_rate_bps,
                        channel_cost_rate_bps: l.channel_cost_rate_bps,
                    };
                    let entry = paymux_ledger::rules::refund_succeeded(
                        s.refund_id,
                        &ctx,
                        paymux_model::Money::cny(amount),
                        succeeded_at_us,
                    );
                    Ok((true, Some(entry)))
                }
                _ => Ok((true, None)),
            }
        }
    };
}

refund_sql!(create_pg, settle_pg, sqlx::PgConnection, true);
refund_sql!(create_sqlite, settle_sqlite, sqlx::SqliteConnection, false);

pub async fn get(db: &Db, merchant: Option<Uuid>, id: Uuid) -> sqlx::Result<Option<RefundRow>> {
    let sql = match merchant {
        Some(_) => {
            format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1 AND merchant_id = $2")
        }
        None => format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1"),
    };
    match db {
        Db::Sqlite(pool) => {
            let mut q = sqlx::query_as(&sql).bind(id);
            if let Some(m) = merchant {
                q = q.bind(m);
            }
            q.fetch_optional(pool).await
        }
        Db::Postgres(pool) => {
            let mut q = sqlx::query_as(&sql).bind(id);
            if let Some(m) = merchant {
                q = q.bind(m);
            }
            q.fetch_optional(pool).await
        }
    }
}

/// Refunds still `processing` whose last change is at or before `before_us`, oldest first.
pub async fn stale_processing(db: &Db, before_us: i64, limit: u32) -> sqlx::Result<Vec<RefundRow>> {
    let sql = format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE status = 'processing' AND updated_at_us <= $1 \
         ORDER BY updated_at_us LIMIT $2"
    );
    let limit = i64::from(limit);
    match db {
        Db::Sqlite(pool) => {
            sqlx::query_as(&sql)
                .bind(before_us)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
        Db::Postgres(pool) => {
            sqlx::query_as(&sql)
                .bind(before_us)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
    }
}

fn check_refund(req: &CreateRefund) -> ApiResult<()> {
    let n = &req.merchant_refund_no;
    if n.is_empty()
        || n.len() > 64
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(ApiError::validation(
            "merchant_refund_no",
            "`merchant_refund_no` must be 1–64 characters of [A-Za-z0-9_.:-]",
        ));
    }
    // Bounded like a payment's amount, so the reservation's sum cannot overflow in the database.
    if !(1..=AMOUNT_MINOR_MAX).contains(&req.amount) {
        return Err(ApiError::validation(
            "amount",
            format!("`amount` is in minor units and must be 1 ..= {AMOUNT_MINOR_MAX}"),
        ));
    }
    if let Some(r) = &req.reason {
        let chars = r.chars().count();
        if chars == 0 || chars > 80 || r.chars().any(char::is_control) {
            return Err(ApiError::validation(
                "reason",
                "`reason` must be 1–80 characters without control characters",
            ));
        }
    }
    Ok(())
}

/// Refund a succeeded payment, in full or in part; several refunds may be made until the paid amount
/// is used up. Idempotent by `merchant_refund_no`.
#[utoipa::path(post, path = "/v1/payments/{id}/refunds", tag = "refunds", request_body = CreateRefund,
    security(("paymux_hmac" = [])),
    params(("id" = String, Path, description = "Payment id")),
    responses(
        (status = 201, description = "Created (processing, succeeded or failed)", body = Refund),
        (status = 200, description = "The same refund was requested before", body = Refund),
        (status = 404, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Payment not succeeded, or the refund number was used differently", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid, or more than is left to refund", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_refund(
    State(state): State<AppState>,
    Extension(merchant): Extension<Merchant>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Refund>)> {
    let payment_id: PaymentId = id.parse().map_err(|_| ApiError::not_found("payment"))?;
    let req: CreateRefund = parse_json(&body)?;
    check_refund(&req)?;
    let payment = repo::get(&state.db, merchant.id, payment_id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment"))?;
    let now = now_us();
    let row = RefundRow {
        id: RefundId::new().into(),
        payment_id: payment.id,
        merchant_id: merchant.id.into(),
        merchant_refund_no: req.merchant_refund_no.clone(),
        amount_minor: req.amount,
        currency: payment.currency.clone(),
        reason: req.reason.clone(),
        status: RefundStatus::Processing.as_str().to_string(),
        channel_refund_no: None,
        failure_code: None,
        failure_message: None,
        created_at_us: now,
        updated_at_us: now,
        succeeded_at_us: None,
    };
    let outcome = state
        .batcher
        .submit(WriteOp::CreateRefund(Box::new(row)))
        .await
        .map_err(ApiError::unavailable)?;
    let WriteOutcome::Refund(created) = outcome else {
        return Err(ApiError::internal("unexpected batch outcome for a refund"));
    };
    match created {
        RefundCreate::Created(row) => {
            let rid = row.id;
            crate::orchestrate::refund(&state, &payment, *row).await;
            let row = get(&state.db, Some(merchant.id.into()), rid)
                .await?
                .ok_or_else(|| ApiError::not_found("refund"))?;
            Ok((StatusCode::CREATED, Json(Refund::from(&row))))
        }
        RefundCreate::Existing(row) => Ok((StatusCode::OK, Json(Refund::from(row.as_ref())))),
        RefundCreate::Conflict(row) => Err(ApiError::field(
            ErrorCode::IdempotencyConflict,
            "merchant_refund_no",
            format!(
                "merchant_refund_no was already used for refund {} with different content",
                row.id
            ),
        )),
        RefundCreate::NotRefundable => Err(ApiError::new(
            ErrorCode::InvalidState,
            format!("payment is {} and cannot be refunded", payment.status()),
        )),
        RefundCreate::Exceeds => Err(ApiError::field(
            ErrorCode::RefundExceedsPaid,
            "amount",
            format!(
                "the refunds would exceed the paid amount {} (already refunded or in progress: {})",
                payment.amount_minor, payment.refunded_amount_minor
            ),
        )),
    }
}

/// Get a refund.
#[utoipa::path(get, path = "/v1/refunds/{id}", tag = "refunds", security(("paymux_hmac" = [])),
    params(("id" = String, Path, description = "Refund id")),
    responses((status = 200, body = Refund), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn get_refund(
    State(state): State<AppState>,
    Extension(merchant): Extension<Merchant>,
    Path(id): Path<String>,
) -> ApiResult<Json<Refund>> {
    let id: RefundId = id.parse().map_err(|_| ApiError::not_found("refund"))?;
    let row = get(&state.db, Some(merchant.id.into()), id.into())
        .await?
        .ok_or_else(|| ApiError::not_found("refund"))?;
    Ok(Json(Refund::from(&row)))
}

/// Whether a payment status allows refunds (for messages).
pub fn refundable(status: PaymentStatus) -> bool {
    status == PaymentStatus::Succeeded
}
