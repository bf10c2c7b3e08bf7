//! The operations API under `/ops/v1`, for the people who run the platform: reconciliation runs and
//! items, exceptions (assign, comment, resolve), merchant settlements, payment search across
//! merchants, ledger account statements, operators and their audit log.
//!
//! Every request carries `Authorization: Bearer <operator token>`; a missing, unknown or disabled
//! token is `401 unauthorized`. Roles ([`operators::Role`]) nest: a viewer reads everything, an
//! operator also works on exceptions, an admin also manages operators and reads the audit log; too
//! small a role is `403 forbidden`. Every change writes an `ops_audit_log` row in its own
//! transaction ([`audit`]).
//!
//! - [`operators`]: operators, tokens (only their SHA-256 stored), authentication.
//! - [`audit`]: the audit log.
//! - [`store`]: the SQL of the reads and of the exception workflow.
//! - [`dashboard`]: a day's payments per channel account and kind (the console's chart).
//! - [`reports`]: a run's report files, found from the run (never from the request's path).
//! - [`console`]: the web console at `/ops/` that calls this API in the browser.

pub mod audit;
pub mod console;
pub mod dashboard;
pub mod operators;
pub mod reports;
pub mod store;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use chrono::NaiveDate;
use paymux_model::{ErrorCode, PaymentStatus};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

use self::audit::Actor;
use self::operators::{Operator, Role};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::payments::api::parse_json;

/// Largest page of a list.
pub const PAGE_MAX: i64 = 500;
const PAGE_DEFAULT: i64 = 50;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/reconciliation/runs", get(list_runs))
        .route("/reconciliation/runs/{id}", get(get_run))
        .route(
            "/reconciliation/runs/{id}/report/{file}",
            get(reports::report_file),
        )
        .route(
            "/reconciliation/days/{day}/report.html",
            get(reports::day_report),
        )
        .route("/reconciliation/schedules", get(list_schedules))
        .route(
            "/reconciliation/schedules/{account}",
            axum::routing::put(set_schedule),
        )
        .route("/me", get(me))
        .route("/dashboard", get(dashboard_day))
        .route("/exceptions", get(list_exceptions))
        .route("/exceptions/{id}", get(get_exception))
        .route("/exceptions/{id}/assign", post(assign))
        .route("/exceptions/{id}/comments", post(comment))
        .route("/exceptions/{id}/resolve", post(resolve))
        .route("/settlements", get(list_settlements))
        .route("/payments", get(search_payments))
        .route("/ledger/accounts/{code}/statement", get(statement))
        .route("/operators", get(list_operators).post(create_operator))
        .route("/operators/{id}/disable", post(disable_operator))
        .route("/audit-log", get(audit_log))
        .route_layer(axum::middleware::from_fn_with_state(state, authenticate))
}

async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    match operators::authenticate(&state.db, given).await {
        Ok(Some(op)) => {
            req.extensions_mut().insert(op);
            next.run(req).await
        }
        Ok(None) => {
            metrics::counter!("paymux_ops_auth_failures_total").increment(1);
            let mut r = ApiError::new(
                ErrorCode::Unauthorized,
                "`Authorization: Bearer <operator token>` is missing, wrong or disabled",
            )
            .into_response();
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            r
        }
        Err(e) => e.into_response(),
    }
}

fn require(op: &Operator, role: Role) -> ApiResult<()> {
    if op.role >= role {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "this needs the `{}` role; you are `{}`",
                role.as_str(),
                op.role.as_str()
            ),
        ))
    }
}

// ---- query parsing: each parameter checked on its own, errors name it ----

type Params = HashMap<String, String>;

fn params(
    q: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
    allowed: &[&str],
) -> ApiResult<Params> {
    let Query(p) = q.map_err(|e| ApiError::validation("query", e.body_text()))?;
    if let Some(k) = p.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::field(
            ErrorCode::UnknownField,
            k.clone(),
            format!("unknown query parameter `{k}`"),
        ));
    }
    Ok(p)
}

fn text<'a>(p: &'a Params, name: &str) -> ApiResult<Option<&'a str>> {
    match p.get(name).map(String::as_str) {
        None => Ok(None),
        Some(v) if v.is_empty() || v.len() > 128 => Err(ApiError::validation(
            name,
            format!("`{name}` must be 1–128 characters"),
        )),
        Some(v) if v.chars().any(char::is_control) => Err(ApiError::validation(
            name,
            format!("`{name}` must not contain control characters"),
        )),
        Some(v) => Ok(Some(v)),
    }
}

fn uuid(p: &Params, name: &str) -> ApiResult<Option<Uuid>> {
    text(p, name)?
        .map(|v| {
            v.parse::<Uuid>()
                .map_err(|_| ApiError::validation(name, format!("`{name}` is not an id")))
        })
        .transpose()
}

fn date(p: &Params, name: &str) -> ApiResult<Option<String>> {
    text(p, name)?
        .map(|v| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .map(|d| d.to_string())
                .map_err(|_| ApiError::validation(name, format!("`{name}` must be YYYY-MM-DD")))
        })
        .transpose()
}

/// RFC 3339 time, in microseconds since the epoch.
fn time_us(p: &Params, name: &str) -> ApiResult<Option<i64>> {
    text(p, name)?
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.timestamp_micros())
                .map_err(|_| {
                    ApiError::validation(name, format!("`{name}` must be an RFC 3339 time"))
                })
        })
        .transpose()
}

fn limit(p: &Params) -> ApiResult<i64> {
    match text(p, "limit")? {
        None => Ok(PAGE_DEFAULT),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=PAGE_MAX).contains(&n) => Ok(n),
            _ => Err(ApiError::validation(
                "limit",
                format!("`limit` must be 1–{PAGE_MAX}"),
            )),
        },
    }
}

fn path_id(id: &str, what: &str) -> ApiResult<Uuid> {
    id.parse().map_err(|_| ApiError::not_found(what))
}

#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

/// Fetches `limit + 1` to know whether there is more.
fn page<T>(mut rows: Vec<T>, limit: i64) -> Page<T> {
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Page {
        data: rows,
        has_more,
    }
}

// ---- the operator, the dashboard ----

async fn me(Extension(op): Extension<Operator>) -> Json<Operator> {
    Json(op)
}

async fn dashboard_day(
    State(state): State<AppState>,
    q: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<dashboard::Dashboard>> {
    let p = params(q, &["date"])?;
    let day = match date(&p, "date")? {
        Some(d) => NaiveDate::parse_from_str(&d, "%Y-%m-%d").map_err(ApiError::internal)?,
        None => chrono::Utc::now()
            .with_timezone(&chrono_tz::Asia::Shanghai)
            .date_naive(),
    };
    Ok(Json(dashboard::day(&state.db, day).await?))
}

// ---- reconciliation ----

async fn list_runs(
    State(state): State<AppState>,
    q: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<store::Run>>> {
    let p = params(
        q,
        &["date", "channel_account_id", "limit", "starting_after"],
    )?;
    let (day, account, limit) = (
        date(&p, "date")?,
        uuid(&p, "channel_account_id")?,
        limit(&p)?,
    );
    let after = uuid(&p, "starting_after")?;
    let rows = store::list_runs(&state.db, day.as_deref(), account, after, limit + 1).await?;
    Ok(Json(page(rows, limit)))
}

#[derive(Serialize)]
struct RunWithItems {
    #[serde(flatten)]
    run: store::Run,
    items: Page<crate::reconciliation::StoredItem>,
}

async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<RunWithItems>> {
    let id = path_id(&id, "reconciliation run")?;
    let p = params(q, &["limit", "starting_after"])?;
    let (after, limit) = (uuid(&p, "starting_after")?, limit(&p)?);
    let run = store::get_run(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("reconciliation run"))?;
    let items = store::run_items(&state.db, id, after, limit + 1).await?;
    Ok(Json(RunWithItems {
        run,
        items: page(items, limit),
    }))
}

// ---- exceptions ----

async fn list_exceptions(
    State(state): State<AppState>,
    q: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<store::Exception>>> {
    let p = params(q, &["status", "assignee", "limit", "starting_after"])?;
    let status = text(&p, "status")?;
    if let Some(s) = status
        && !store::EXCEPTION_STATUSES.contains(&s)
    {
        return Err(ApiError::validation(
            "status",
            format!(
                "`status` must be one of {}",
                store::EXCEPTION_STATUSES.join(", ")
            ),
        ));
    }
    let (assignee, after, limit) = (
        uuid(&p, "assignee")?,
        uuid(&p, "starting_after")?,
        limit(&p)?,
    );
    let rows = store::list_exceptions(&state.db, status, assignee, after, limit + 1).await?;
    Ok(Json(page(rows, limit)))
}

#[derive(Serialize)]
struct ExceptionWithComments {
    #[serde(flatten)]
    exception: store::Exception,
    comments: Vec<store::Comment>,
}

async fn get_exception(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ExceptionWithComments>> {
    let id = path_id(&id, "exception")?;
    let exception = store::get_exception(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("exception"))?;
    let comments = store::comments(&state.db, id).await?;
    Ok(Json(ExceptionWithComments {
        exception,
        comments,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    operator_id: Uuid,
}

async fn assign(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<store::Exception>> {
    require(&op, Role::Operator)?;
    let id = path_id(&id, "exception")?;
    let b: AssignBody = parse_json(&body)?;
    Ok(Json(
        store::assign(&state.db, Actor::Operator(op.id), id, b.operator_id).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentBody {
    text: String,
}

async fn comment(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<store::Comment>)> {
    require(&op, Role::Operator)?;
    let id = path_id(&id, "exception")?;
    let b: CommentBody = parse_json(&body)?;
    let c = store::comment(&state.db, op.id, id, &b.text).await?;
    Ok((StatusCode::CREATED, Json(c)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    resolution: String,
    note: Option<String>,
}

async fn resolve(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<store::Exception>> {
    require(&op, Role::Operator)?;
    let id = path_id(&id, "exception")?;
    let b: ResolveBody = parse_json(&body)?;
    Ok(Json(
        store::resolve(&state.db, op.id, id, &b.resolution, b.note.as_deref()).await?,
    ))
}

// ---- reconciliation schedules ----

#[derive(Debug, Serialize)]
struct ScheduleView {
    channel_account_id: Uuid,
    name: &'static str,
    kind: paymux_model::ChannelKind,
    /// `HH:MM:SS` in Asia/Shanghai, or `off` (the account follows a disabled `reconcile_schedule`).
    at: String,
    /// Whether the account has a time of its own (else the configured `reconcile_schedule`).
    own: bool,
}

async fn list_schedules(State(state): State<AppState>) -> ApiResult<Json<Vec<ScheduleView>>> {
    let own = crate::reconciliation::schedules::own_times(&state.db).await?;
    let default =
        crate::reconciliation::scheduler::parse_schedule(&state.config.reconcile_schedule)
            .ok()
            .flatten();
    let rows = state
        .routes
        .all()
        .iter()
        .map(|r| {
            let id = Uuid::from(r.id);
            let mine = own.get(&id).copied();
            ScheduleView {
                channel_account_id: id,
                name: r.name,
                kind: r.kind,
                at: match (default, mine) {
                    (None, _) => "off".into(),
                    (Some(d), m) => m.unwrap_or(d).format("%H:%M:%S").to_string(),
                },
                own: mine.is_some(),
            }
        })
        .collect();
    Ok(Json(rows))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    /// `HH:MM` or `HH:MM:SS`; `null` returns the account to `reconcile_schedule`.
    at: Option<String>,
}

async fn set_schedule(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(account): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Vec<ScheduleView>>> {
    require(&op, Role::Admin)?;
    let account = path_id(&account, "channel account")?;
    let b: ScheduleBody = parse_json(&body)?;
    let at = match b.at.as_deref() {
        None => None,
        Some(t) => Some(
            crate::reconciliation::schedules::parse_time(t).ok_or_else(|| {
                ApiError::field(
                    ErrorCode::ValidationFailed,
                    "at",
                    "a time of day, HH:MM or HH:MM:SS (Asia/Shanghai), or null",
                )
            })?,
        ),
    };
    crate::reconciliation::schedules::set(&state.db, Actor::Operator(op.id), account, at).await?;
    list_schedules(State(state)).await
}

// ---- settlements, payments ----

async fn list_settlements(
    State(state): State<AppState>,
    q: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<store::Settlement>>> {
    let p = params(q, &["date", "merchant_id", "limit", "starting_after"])?;
    let (day, merchant, limit) = (date(&p, "date")?, uuid(&p, "merchant_id")?, limit(&p)?);
    let after = uuid(&p, "starting_after")?;
    let rows =
        store::list_settlements(&state.db, day.as_deref(), merchant, after, limit + 1).await?;
    Ok(Json(page(rows, limit)))
}

async fn search_payments(
    State(state): State<AppState>,
    q: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<crate::payments::model::Payment>>> {
    let p = params(
        q,
        &[
            "id",
            "merchant_id",
            "status",
            "merchant_order_no",
            "channel_trade_no",
            "from",
            "to",
            "limit",
            "starting_after",
        ],
    )?;
    let status = text(&p, "status")?
        .map(|s| {
            s.parse::<PaymentStatus>()
                .map(|_| s.to_string())
                .map_err(|e| ApiError::validation("status", e.to_string()))
        })
        .transpose()?;
    let f = store::PaymentFilter {
        // A payment's id, or its `out_trade_no` at the channel (the id without dashes).
        id: uuid(&p, "id")?,
        merchant_id: uuid(&p, "merchant_id")?,
        status,
        merchant_order_no: text(&p, "merchant_order_no")?.map(str::to_string),
        channel_trade_no: text(&p, "channel_trade_no")?.map(str::to_string),
        from_us: time_us(&p, "from")?,
        to_us: time_us(&p, "to")?,
        starting_after: uuid(&p, "starting_after")?,
    };
    if let (Some(a), Some(b)) = (f.from_us, f.to_us)
        && a >= b
    {
        return Err(ApiError::validation("to", "`to` must be after `from`"));
    }
    let limit = limit(&p)?;
    if limit > 100 {
        return Err(ApiError::validation(
            "limit",
            "`limit` must be 1–100 for payments",
        ));
    }
    let rows = store::search_payments(&state.db, &f, limit + 1).await?;
    let rows: Vec<_> = rows.iter().map(|r| state.paylinks.present(r)).collect();
    Ok(Json(page(rows, limit)))
}

// ---- ledger ----

#[derive(Serialize)]
struct AccountView {
    id: Uuid,
    code: String,
    kind: String,
    currency: String,
    debits_posted_minor: i64,
    credits_posted_minor: i64,
    debits_pending_minor: i64,
    credits_pending_minor: i64,
    /// Posted balance on the account's normal side.
    balance_minor: i128,
}

#[derive(Serialize)]
struct LineView {
    seq: i64,
    entry_id: Uuid,
    kind: String,
    reference: Option<Uuid>,
    side: &'static str,
    amount_minor: i64,
    pending: bool,
    effective_at: chrono::DateTime<chrono::Utc>,
    running_balance_minor: i128,
}

#[derive(Serialize)]
struct Statement {
    account: AccountView,
    /// Posted balance before `from` (when given).
    opening_balance_minor: Option<i128>,
    /// Posted balance before `to` (when given).
    closing_balance_minor: Option<i128>,
    lines: Vec<LineView>,
    /// Pass as `starting_after` for the next page.
    next_starting_after: Option<i64>,
}

fn ledger_error(e: paymux_ledger::LedgerError) -> ApiError {
    match e {
        paymux_ledger::LedgerError::AccountNotFound(_) => ApiError::not_found("ledger account"),
        other => ApiError::internal(other),
    }
}

async fn statement(
    State(state): State<AppState>,
    Path(code): Path<String>,
    q: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Statement>> {
    use paymux_ledger::queries;
    let p = params(q, &["from", "to", "limit", "starting_after"])?;
    let (from, to, limit) = (time_us(&p, "from")?, time_us(&p, "to")?, limit(&p)?);
    if let (Some(a), Some(b)) = (from, to)
        && a >= b
    {
        return Err(ApiError::validation("to", "`to` must be after `from`"));
    }
    let after = text(&p, "starting_after")?
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                ApiError::validation("starting_after", "`starting_after` is a line's `seq`")
            })
        })
        .transpose()?;
    if code.is_empty() || code.len() > 200 {
        return Err(ApiError::not_found("ledger account"));
    }
    let pool = state.db.ledger_pool();
    let b = queries::balance_by_code(&pool, &code)
        .await
        .map_err(ledger_error)?;
    let opening = match from {
        Some(t) => Some(
            queries::balance_as_of(&pool, b.account_id, t - 1)
                .await
                .map_err(ledger_error)?
                .posted_minor(),
        ),
        None => None,
    };
    let closing = match to {
        Some(t) => Some(
            queries::balance_as_of(&pool, b.account_id, t - 1)
                .await
                .map_err(ledger_error)?
                .posted_minor(),
        ),
        None => None,
    };
    let page = queries::statement_between(&pool, b.account_id, from, to, after, limit)
        .await
        .map_err(ledger_error)?;
    Ok(Json(Statement {
        account: AccountView {
            id: b.account_id.into_uuid(),
            code: b.code.clone(),
            kind: format!("{:?}", b.kind).to_lowercase(),
            currency: b.currency.to_string(),
            debits_posted_minor: b.debits_posted,
            credits_posted_minor: b.credits_posted,
            debits_pending_minor: b.debits_pending,
            credits_pending_minor: b.credits_pending,
            balance_minor: b.posted_minor(),
        },
        opening_balance_minor: opening,
        closing_balance_minor: closing,
        lines: page
            .lines
            .into_iter()
            .map(|l| LineView {
                seq: l.seq,
                entry_id: l.entry_id.into_uuid(),
                kind: l.kind.as_str().to_string(),
                reference: l.reference,
                side: match l.side {
                    paymux_ledger::Side::Debit => "debit",
                    paymux_ledger::Side::Credit => "credit",
                },
                amount_minor: l.amount_minor,
                pending: l.is_pending,
                effective_at: crate::db::us_to_datetime(l.effective_at_us),
                running_balance_minor: l.running_balance_minor,
            })
            .collect(),
        next_starting_after: page.next_after_seq,
    }))
}

// ---- operators, audit log (admin) ----

async fn list_operators(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
) -> ApiResult<Json<Page<Operator>>> {
    require(&op, Role::Admin)?;
    Ok(Json(Page {
        data: operators::list(&state.db).await?,
        has_more: false,
    }))
}

async fn create_operator(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<operators::CreatedOperator>)> {
    require(&op, Role::Admin)?;
    let new: operators::NewOperator = parse_json(&body)?;
    let created = operators::create(&state.db, Actor::Operator(op.id), new).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn disable_operator(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> ApiResult<Json<Operator>> {
    require(&op, Role::Admin)?;
    let id = path_id(&id, "operator")?;
    // The acting admin stays enabled, so an admin is always left to manage operators.
    if id == op.id {
        return Err(ApiError::new(
            ErrorCode::InvalidState,
            "an admin cannot disable their own account; another admin (or `paymux operator disable`) can",
        ));
    }
    Ok(Json(
        operators::disable(&state.db, Actor::Operator(op.id), id).await?,
    ))
}

async fn audit_log(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    q: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<audit::AuditRow>>> {
    require(&op, Role::Admin)?;
    let p = params(q, &["operator_id", "target", "limit", "starting_after"])?;
    let (operator, target, after, limit) = (
        uuid(&p, "operator_id")?,
        text(&p, "target")?,
        uuid(&p, "starting_after")?,
        limit(&p)?,
    );
    let rows = audit::list(&state.db, operator, target, after, limit + 1).await?;
    Ok(Json(page(rows, limit)))
}
