//! Static merchant codes (一码通付): one printed code per store or till that any wallet app can scan.
//!
//! A code's content is the URL `<public_base_url>/c/<id>`; its EMVCo merchant-presented form carries
//! the same URL in template 26 (our GUI) for EMV-capable bank apps. Merchants manage codes under
//! `/v1/codes`; the images (`qr.png`, `qr.svg`) and the printable plate (`plate.png`, `plate.svg`)
//! are public under `/c/<id>/…`, like the printed code itself.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use paymux_model::{CodeId, ErrorCode, Money, WalletBrand};
use paymux_qrcode::emv::{StaticCode, encode, static_merchant_code};
use paymux_qrcode::render::{self, Plate};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Merchant;
use crate::db::{Db, now_us, us_to_datetime};
use crate::error::{ApiError, ApiResult};
use crate::payments::api::{AMOUNT_MINOR_MAX, check_text, parse_json};

/// `/v1/codes…` (signed merchant requests).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/codes", post(create_code).get(list_codes))
        .route("/codes/{id}", get(get_code))
        .route("/codes/{id}/disable", post(disable_code))
}

/// `/c/{id}/…` (public: the code's images; the page itself is the [`crate::cashier`]).
pub fn public_router() -> Router<AppState> {
    Router::new().route("/c/{id}/{file}", get(code_image))
}

/// Store and terminal ids go into the EMV payload's additional data (62.03 / 62.07, at most 25).
const LABEL_MAX: usize = 25;
const DESCRIPTION_MAX: usize = 64;
/// Pixels per QR module of the PNG images.
const PNG_SCALE: u32 = 8;

/// A new static code. Unknown fields are rejected.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCode {
    /// 1–25 characters of `[A-Za-z0-9_.:-]`; printed on the plate and given to its payments.
    #[serde(default)]
    pub store_id: Option<String>,
    /// 1–25 characters of `[A-Za-z0-9_.:-]`.
    #[serde(default)]
    pub terminal_id: Option<String>,
    /// A fixed amount in fen (1 ..= 10,000,000,000): the payer cannot change it.
    #[serde(default)]
    pub fixed_amount: Option<i64>,
    /// 1–64 characters, shown on the plate and the page (e.g. the store's name).
    #[serde(default)]
    pub description: Option<String>,
}

fn check_label(field: &str, value: &str) -> ApiResult<()> {
    if value.is_empty()
        || value.len() > LABEL_MAX
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(ApiError::validation(
            field,
            format!("`{field}` must be 1–{LABEL_MAX} characters of [A-Za-z0-9_.:-]"),
        ));
    }
    Ok(())
}

impl CreateCode {
    pub fn validate(&self) -> ApiResult<()> {
        if let Some(s) = &self.store_id {
            check_label("store_id", s)?;
        }
        if let Some(t) = &self.terminal_id {
            check_label("terminal_id", t)?;
        }
        if let Some(a) = self.fixed_amount
            && !(1..=AMOUNT_MINOR_MAX).contains(&a)
        {
            return Err(ApiError::validation(
                "fixed_amount",
                format!("`fixed_amount` must be 1 ..= {AMOUNT_MINOR_MAX} (minor units)"),
            ));
        }
        if let Some(d) = &self.description {
            check_text("description", d, DESCRIPTION_MAX)?;
        }
        Ok(())
    }
}

/// A stored code.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CodeRow {
    pub id: Uuid,
    pub merchant_id: Uuid,
    pub store_id: Option<String>,
    pub terminal_id: Option<String>,
    pub fixed_amount_minor: Option<i64>,
    pub description: Option<String>,
    pub status: String,
    pub created_at_us: i64,
    pub disabled_at_us: Option<i64>,
}

impl CodeRow {
    pub fn active(&self) -> bool {
        self.status == "active"
    }
}

const CODE_COLUMNS: &str = "id, merchant_id, store_id, terminal_id, fixed_amount_minor, description, \
    status, created_at_us, disabled_at_us";

/// A static code as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Code {
    pub id: CodeId,
    /// What the printed QR holds: `<public_base_url>/c/<id>`.
    pub url: String,
    /// The EMVCo merchant-presented form of the code (template 26 carries `url`).
    pub emv_payload: String,
    /// The QR as PNG and SVG, and the printable plate (PNG and SVG).
    pub png_url: String,
    pub svg_url: String,
    pub plate_url: String,
    pub plate_svg_url: String,
    pub store_id: Option<String>,
    pub terminal_id: Option<String>,
    /// Fixed amount in minor units, if any.
    pub fixed_amount: Option<i64>,
    pub description: Option<String>,
    /// `active` or `disabled`.
    pub status: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub disabled_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A page of codes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CodeList {
    pub data: Vec<Code>,
    pub has_more: bool,
}

fn base_url(state: &AppState) -> &str {
    state.paylinks.base_url()
}

/// The EMVCo payload of a code (merchant name cut to the 25 characters field 59 allows).
pub fn emv_payload(
    state: &AppState,
    row: &CodeRow,
    merchant_name: &str,
    url: &str,
) -> ApiResult<String> {
    let name: String = merchant_name.chars().take(25).collect();
    let name = if name.trim().is_empty() {
        "paymux merchant".to_string()
    } else {
        name
    };
    let mut spec = StaticCode::new(
        url,
        name,
        state.config.code_city.clone(),
        state.config.code_mcc.clone(),
    );
    if let Some(a) = row.fixed_amount_minor {
        spec = spec.with_amount(Money::cny(a));
    }
    if let Some(s) = &row.store_id {
        spec = spec.with_store_label(s.clone());
    }
    if let Some(t) = &row.terminal_id {
        spec = spec.with_terminal_label(t.clone());
    }
    let payload = static_merchant_code(&spec)
        .map_err(|e| ApiError::internal(format!("EMV payload of code {}: {e}", row.id)))?;
    Ok(encode(&payload))
}

fn present(state: &AppState, row: &CodeRow, merchant_name: &str) -> ApiResult<Code> {
    let url = format!("{}/c/{}", base_url(state), row.id);
    Ok(Code {
        id: CodeId::from_uuid(row.id),
        emv_payload: emv_payload(state, row, merchant_name, &url)?,
        png_url: format!("{url}/qr.png"),
        svg_url: format!("{url}/qr.svg"),
        plate_url: format!("{url}/plate.png"),
        plate_svg_url: format!("{url}/plate.svg"),
        url,
        store_id: row.store_id.clone(),
        terminal_id: row.terminal_id.clone(),
        fixed_amount: row.fixed_amount_minor,
        description: row.description.clone(),
        status: row.status.clone(),
        created_at: us_to_datetime(row.created_at_us),
        disabled_at: row.disabled_at_us.map(us_to_datetime),
    })
}

/// The wallets the code's merchant can take money from with static codes (a route exists), in
/// display order.
pub async fn accepted_wallets(state: &AppState, merchant: Uuid) -> Vec<WalletBrand> {
    state
        .routes
        .wallets(merchant, paymux_model::PayMethod::QrStatic)
        .await
}

macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

pub async fn merchant_name(db: &Db, id: Uuid) -> sqlx::Result<String> {
    let sql = "SELECT name FROM merchants WHERE id = $1";
    let name: Option<String> =
        on_db!(db, pool => sqlx::query_scalar(sql).bind(id).fetch_optional(pool).await?);
    Ok(name.unwrap_or_default())
}

/// A code by id; `merchant` restricts it to one merchant's codes.
pub async fn get_row(db: &Db, merchant: Option<Uuid>, id: Uuid) -> sqlx::Result<Option<CodeRow>> {
    match merchant {
        Some(m) => {
            let sql = format!(
                "SELECT {CODE_COLUMNS} FROM static_codes WHERE id = $1 AND merchant_id = $2"
            );
            on_db!(db, pool => sqlx::query_as(&sql).bind(id).bind(m).fetch_optional(pool).await)
        }
        None => {
            let sql = format!("SELECT {CODE_COLUMNS} FROM static_codes WHERE id = $1");
            on_db!(db, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await)
        }
    }
}

/// Create a static code.
#[utoipa::path(post, path = "/v1/codes", tag = "codes", security(("paymux_hmac" = [])),
    request_body = CreateCode,
    responses((status = 201, body = Code), (status = 422, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn create_code(
    State(state): State<AppState>,
    Extension(merchant): Extension<Merchant>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Code>)> {
    let req: CreateCode = parse_json(&body)?;
    req.validate()?;
    let row = CodeRow {
        id: CodeId::new().into(),
        merchant_id: merchant.id.into(),
        store_id: req.store_id,
        terminal_id: req.terminal_id,
        fixed_amount_minor: req.fixed_amount,
        description: req.description,
        status: "active".into(),
        created_at_us: now_us(),
        disabled_at_us: None,
    };
    let name = merchant_name(&state.db, row.merchant_id).await?;
    // Built before the insert: a code whose payload cannot be built is never stored.
    let code = present(&state, &row, &name)?;
    let sql = "INSERT INTO static_codes (id, merchant_id, store_id, terminal_id, fixed_amount_minor, \
        description, status, created_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    on_db!(&state.db, pool => sqlx::query(sql)
        .bind(row.id)
        .bind(row.merchant_id)
        .bind(&row.store_id)
        .bind(&row.terminal_id)
        .bind(row.fixed_amount_minor)
        .bind(&row.description)
        .bind(&row.status)
        .bind(row.created_at_us)
        .execute(pool)
        .await
        .map(|_| ())?);
    Ok((StatusCode::CREATED, Json(code)))
}

fn parse_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found("code"))
}

/// Get a code.
#[utoipa::path(get, path = "/v1/codes/{id}", tag = "codes", security(("paymux_hmac" = [])),
    params(("id" = String, Path, description = "Code id")),
    responses((status = 200, body = Code), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn get_code(
    State(state): State<AppState>,
    Extension(merchant): Extension<Merchant>,
    Path(id): Path<String>,
) -> ApiResult<Json<Code>> {
    let row = get_row(&state.db, Some(merchant.id.into()), parse_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::not_found("code"))?;
    let name = merchant_name(&state.db, row.merchant_id).await?;
    Ok(Json(present(&state, &row, &name)?))
}

/// Disable a code: its page then says so and no payment can be made with it. Disabling a disabled
/// code changes nothing.
#[utoipa::path(post, path = "/v1/codes/{id}/disable", tag = "codes", security(("paymux_hmac" = [])),
    params(("id" = String, Path, description = "Code id")),
    responses((status = 200, body = Code), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn disable_code(
    State(state): State<AppState>,
    Extension(merchant): Extension<Merchant>,
    Path(id): Path<String>,
) -> ApiResult<Json<Code>> {
    let id = parse_id(&id)?;
    let merchant_id: Uuid = merchant.id.into();
    let sql = "UPDATE static_codes SET status = 'disabled', disabled_at_us = $1 \
        WHERE id = $2 AND merchant_id = $3 AND status = 'active'";
    let now = now_us();
    on_db!(&state.db, pool => sqlx::query(sql).bind(now).bind(id).bind(merchant_id).execute(pool).await.map(|_| ())?);
    let row = get_row(&state.db, Some(merchant_id), id)
        .await?
        .ok_or_else(|| ApiError::not_found("code"))?;
    let name = merchant_name(&state.db, row.merchant_id).await?;
    Ok(Json(present(&state, &row, &name)?))
}

/// Query of `GET /v1/codes`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CodeQuery {
    /// 1–100, default 20.
    pub limit: Option<u32>,
    /// A code id: list codes created before it (keyset paging).
    pub starting_after: Option<String>,
    /// Only the codes of one store.
    pub store_id: Option<String>,
}

/// List codes, newest first.
#[utoipa::path(get, path = "/v1/codes", tag = "codes", security(("paymux_hmac" = [])), params(CodeQuery),
    responses((status = 200, body = CodeList)))]
pub async fn list_codes(
    State(state): State<AppState>,
    Extension(merchant): Extension<Merchant>,
    query: Result<Query<CodeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<CodeList>> {
    let Query(q) = query.map_err(|e| ApiError::validation("query", e.body_text()))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::validation("limit", "`limit` must be 1–100"));
    }
    let after = match &q.starting_after {
        Some(s) => Some(Uuid::parse_str(s).map_err(|_| {
            ApiError::validation("starting_after", "`starting_after` must be a code id")
        })?),
        None => None,
    };
    let merchant_id: Uuid = merchant.id.into();
    let mut sql = format!("SELECT {CODE_COLUMNS} FROM static_codes WHERE merchant_id = $1");
    let mut n = 1;
    if after.is_some() {
        n += 1;
        sql.push_str(&format!(" AND id < ${n}"));
    }
    if q.store_id.is_some() {
        n += 1;
        sql.push_str(&format!(" AND store_id = ${n}"));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
    let rows: Vec<CodeRow> = on_db!(&state.db, pool => {
        let mut query = sqlx::query_as(&sql).bind(merchant_id);
        if let Some(a) = after {
            query = query.bind(a);
        }
        if let Some(s) = &q.store_id {
            query = query.bind(s);
        }
        query.fetch_all(pool).await?
    });
    let has_more = rows.len() > limit as usize;
    let name = merchant_name(&state.db, merchant_id).await?;
    let data = rows
        .iter()
        .take(limit as usize)
        .map(|r| present(&state, r, &name))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(CodeList { data, has_more }))
}

async fn plate_of(state: &AppState, row: &CodeRow, merchant_name: &str, url: &str) -> Plate {
    Plate {
        merchant_name: merchant_name.to_string(),
        store_name: row.description.clone().or_else(|| row.store_id.clone()),
        payload: url.to_string(),
        wallets: accepted_wallets(state, row.merchant_id).await,
        amount: row.fixed_amount_minor.map(Money::cny),
    }
}

/// `GET /c/{id}/qr.png|qr.svg|plate.png|plate.svg`.
pub async fn code_image(
    State(state): State<AppState>,
    Path((id, file)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let row = get_row(&state.db, None, id)
        .await?
        .ok_or_else(|| ApiError::not_found("code"))?;
    if row.disabled_at_us.is_some() {
        return Err(ApiError::new(
            ErrorCode::CodeDisabled,
            "this code is disabled: it takes no payments and its images are not served",
        ));
    }
    let url = format!("{}/c/{}", base_url(&state), row.id);
    let render_err =
        |e: render::RenderError| ApiError::internal(format!("rendering code {id}: {e}"));
    let (content_type, body): (&str, Vec<u8>) = match file.as_str() {
        "qr.png" => (
            "image/png",
            render::png(&url, PNG_SCALE).map_err(render_err)?,
        ),
        "qr.svg" => (
            "image/svg+xml",
            render::svg(&url).map_err(render_err)?.into_bytes(),
        ),
        "plate.png" | "plate.svg" => {
            let name = merchant_name(&state.db, row.merchant_id).await?;
            let plate = plate_of(&state, &row, &name, &url).await;
            if file == "plate.png" {
                (
                    "image/png",
                    render::plate_png(&plate, PNG_SCALE)
                        .map_err(render_err)?
                        .png,
                )
            } else {
                (
                    "image/svg+xml",
                    render::plate_svg(&plate).map_err(render_err)?.into_bytes(),
                )
            }
        }
        _ => return Err(ApiError::not_found("file")),
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response())
}
