//! `/v1/payments`: create, get, list, close.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use paymux_model::{
    Currency, ErrorCode, MerchantId, PayMethod, PaymentId, PaymentStatus, WalletBrand,
};
use serde::{Deserialize, Serialize};

use super::model::{Payment, PaymentRow};
use super::repo;
use crate::AppState;
use crate::auth::Merchant;
use crate::batcher::{WriteOp, WriteOutcome};
use crate::db::now_us;
use crate::error::{ApiError, ApiResult};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/payments", post(create_payment).get(list_payments))
        .route("/payments/{id}", get(get_payment))
        .route("/payments/{id}/close", post(close_payment))
}

/// Largest amount accepted in one payment: 100,000,000.00 in major units.
pub const AMOUNT_MINOR_MAX: i64 = 10_000_000_000;
const METADATA_BYTES_MAX: usize = 4096;
const EXPIRES_IN_SECONDS_MAX: u32 = 7 * 24 * 3600;

/// A payment request. Unknown fields are rejected.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    /// The merchant's own order number, unique per merchant: 1–64 characters of `[A-Za-z0-9_.:-]`.
    pub merchant_order_no: String,
    /// Amount in minor units (fen for CNY), 1 ..= 10,000,000,000.
    pub amount: i64,
    pub currency: Currency,
    /// What is being paid for, 1–128 characters.
    pub subject: String,
    pub method: PayMethod,
    /// The customer's payment code, for `code_scan` and `sound_wave`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_code: Option<String>,
    /// The payer's wallet, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallet: Option<WalletBrand>,
    /// Where paymux sends this payment's webhooks (https:// or http://).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_url: Option<String>,
    /// Lifetime before an unpaid payment is closed, 1 ..= 604800 s; default 900.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_id: Option<String>,
    /// Free-form JSON object of up to 4 KiB, returned as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Parses a JSON body, naming the field at fault.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let msg = inner.to_string();
            if inner.is_syntax() || inner.is_eof() {
                return Err(ApiError::new(
                    ErrorCode::MalformedJson,
                    format!("body is not valid JSON: {msg}"),
                ));
            }
            let quoted = msg.split('`').nth(1).unwrap_or_default().to_string();
            if msg.starts_with("unknown field") {
                return Err(ApiError::field(
                    ErrorCode::UnknownField,
                    quoted.clone(),
                    format!("unknown field `{quoted}`"),
                ));
            }
            if msg.starts_with("missing field") {
                return Err(ApiError::validation(
                    quoted.clone(),
                    format!("`{quoted}` is required"),
                ));
            }
            let field = if path == "." { quoted } else { path };
            let detail = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            Err(ApiError::validation(field, detail))
        }
    }
}

pub(crate) fn check_text(field: &str, value: &str, max_chars: usize) -> ApiResult<()> {
    let n = value.chars().count();
    if n == 0 || n > max_chars {
        return Err(ApiError::validation(
            field,
            format!("`{field}` must be 1–{max_chars} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::validation(
            field,
            format!("`{field}` must not contain control characters"),
        ));
    }
    Ok(())
}

pub(crate) fn check_id_text(field: &str, value: &str) -> ApiResult<()> {
    if value.is_empty()
        || value.len() > 64
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(ApiError::validation(
            field,
            format!("`{field}` must be 1–64 characters of [A-Za-z0-9_.:-]"),
        ));
    }
    Ok(())
}

impl CreatePayment {
    pub fn validate(&self) -> ApiResult<()> {
        check_id_text("merchant_order_no", &self.merchant_order_no)?;
        if !(1..=AMOUNT_MINOR_MAX).contains(&self.amount) {
            return Err(ApiError::validation(
                "amount",
                format!("`amount` is in minor units and must be 1 ..= {AMOUNT_MINOR_MAX}"),
            ));
        }
        // The channels settle in CNY: another currency would be charged as CNY fen.
        if self.currency != Currency::Cny {
            return Err(ApiError::validation(
                "currency",
                "`currency` must be CNY: the channels charge and settle in CNY",
            ));
        }
        // The methods this endpoint pays; `qr_static` payments are made by the one-code cashier.
        if !matches!(
            self.method,
            PayMethod::CodeScan | PayMethod::SoundWave | PayMethod::QrMerchant
        ) {
            return Err(ApiError::validation(
                "method",
                format!(
                    "`method` `{}` cannot be created through this API: use code_scan, sound_wave or qr_merchant",
                    self.method.as_str()
                ),
            ));
        }
        check_text("subject", &self.subject, 128)?;
        let needs_code = matches!(self.method, PayMethod::CodeScan | PayMethod::SoundWave);
        match (&self.auth_code, needs_code) {
            (None, true) => {
                return Err(ApiError::validation(
                    "auth_code",
                    "`auth_code` is required for this method",
                ));
            }
            (Some(_), false) => {
                return Err(ApiError::validation(
                    "auth_code",
                    "`auth_code` is only for code_scan and sound_wave",
                ));
            }
            (Some(code), true) => {
                if code.is_empty()
                    || code.len() > 32
                    || !code.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(ApiError::field(
                        ErrorCode::PaymentCodeMalformed,
                        "auth_code",
                        "`auth_code` must be 1–32 letters or digits",
                    ));
                }
            }
            (None, false) => {}
        }
        if let Some(url) = &self.notify_url {
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && url.len() <= 512
                && url.parse::<http::Uri>().is_ok();
            if !ok {
                return Err(ApiError::validation(
                    "notify_url",
                    "`notify_url` must be an http(s) URL of at most 512 characters",
                ));
            }
        }
        if let Some(s) = self.expires_in_seconds
            && !(1..=EXPIRES_IN_SECONDS_MAX).contains(&s)
        {
            return Err(ApiError::validation(
                "expires_in_seconds",
                format!("`expires_in_seconds` must be 1 ..= {EXPIRES_IN_SECONDS_MAX}"),
            ));
        }
        if let Some(s) = &self.store_id {
            check_id_text("store_id", s)?;
        }
        if let Some(s) = &self.terminal_id {
            check_id_text("terminal_id", s)?;
        }
        if let Some(m) = &self.metadata
            && serde_json::to_vec(m).map(|v| v.len()).unwrap_or(usize::MAX) > METADATA_BYTES_MAX
        {
            return Err(ApiError::validation(
                "metadata",
                format!("`metadata` must be at most {METADATA_BYTES_MAX} bytes"),
            ));
        }
        Ok(())
    }

    /// A digest of the request's content: the same `merchant_order_no` with the same digest is a
    /// retry, with another digest a conflict. Field order is fixed by the struct and map keys are
    /// sorted, so equal requests hash equally however their JSON was laid out.
    pub fn content_hash(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or_default();
        let canonical = canonical_json(&value);
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ))
    }
}

/// JSON with object keys sorted at every level, whatever order the parser kept.
pub fn canonical_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical_json(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentList {
    pub data: Vec<Payment>,
    pub has_more: bool,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only the payment with this order number.
    pub merchant_order_no: Option<String>,
    /// Page size, 1–100 (default 20).
    pub limit: Option<u32>,
    /// Cursor: the last id of the previous page.
    pub starting_after: Option<PaymentId>,
}

/// Create a payment.
#[utoipa::path(post, path = "/v1/payments", tag = "payments", request_body = CreatePayment,
    security(("paymux_hmac" = [])),
    responses(
        (status = 201, description = "Created", body = Payment),
        (status = 200, description = "The same request was made before: the existing payment", body = Payment),
        (status = 401, description = "Authentication failed", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order number was used with different content", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the merchant's rate limit: retry after `Retry-After` seconds", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "`channel_unavailable`: the route's channel is failing (circuit breaker open); nothing was written, retry after `Retry-After` seconds", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_payment(
    State(state): State<AppState>,
    Extension(merchant): Extension<Merchant>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Payment>)> {
    let req: CreatePayment = parse_json(&body)?;
    req.validate()?;
    if let Some(url) = &req.notify_url
        && !state.config.webhook_allow_private_targets
        && !crate::webhooks::public_target(url)
    {
        return Err(ApiError::validation(
            "notify_url",
            "`notify_url` must be a public address: loopback, private and link-local addresses are refused",
        ));
    }
    // A code payment is checked against the wallets and routes before anything is written.
    let mut code_route = None;
    let code_wallet = match (&req.auth_code, req.method) {
        (Some(code), PayMethod::CodeScan | PayMethod::SoundWave) => {
            let wallet = crate::orchestrate::wallet_of_code(code, req.wallet)?;
            code_route = admitted_route(
                &state,
                merchant.id,
                &req.merchant_order_no,
                wallet,
                req.method,
            )
            .await?;
            Some(wallet)
        }
        _ => None,
    };
    // C2B with a known wallet goes to one of the merchant's accounts for it: the route must exist.
    let mut qr_route = None;
    let qr_wallet = match (req.method, req.wallet) {
        (PayMethod::QrMerchant, Some(w)) => {
            qr_route =
                admitted_route(&state, merchant.id, &req.merchant_order_no, w, req.method).await?;
            Some(w)
        }
        _ => None,
    };
    let now = now_us();
    let expires_in = i64::from(
        req.expires_in_seconds
            .unwrap_or(state.config.payment_expires_in_seconds_default),
    );
    let row = PaymentRow {
        id: PaymentId::new().into(),
        merchant_id: merchant.id.into(),
        merchant_order_no: req.merchant_order_no.clone(),
        request_hash: req.content_hash(),
        amount_minor: req.amount,
        currency: req.currency.code().to_string(),
        subject: req.subject.clone(),
        method: req.method.as_str().to_string(),
        wallet: req.wallet.or(code_wallet).map(|w| w.as_str().to_string()),
        status: PaymentStatus::Created.as_str().to_string(),
        notify_url: req.notify_url.clone(),
        store_id: req.store_id.clone(),
        terminal_id: req.terminal_id.clone(),
        metadata: req
            .metadata
            .as_ref()
            .map(|m| serde_json::Value::Object(m.clone()).to_string()),
        refunded_amount_minor: 0,
        channel_account_id: None,
        channel_trade_no: None,
        late_success: false,
        failure_code: None,
        failure_message: None,
        closed_reason: None,
        expires_at_us: now + expires_in * 1_000_000,
        created_at_us: now,
        updated_at_us: now,
        paid_at_us: None,
        qr_code: None,
    };
    let outcome = state
        .batcher
        .submit(WriteOp::CreatePayment(Box::new(row)))
        .await
        .map_err(ApiError::unavailable)?;
    match outcome {
        WriteOutcome::Created(row) => {
            metrics::counter!("paymux_payments_created_total", "method" => req.method.as_str())
                .increment(1);
            if let (Some(code), Some(_)) = (&req.auth_code, code_wallet) {
                let id = PaymentId::from(row.id);
                let Some(candidates) = code_route else {
                    return Err(ApiError::unavailable("a new payment without a route"));
                };
                crate::orchestrate::code_scan(&state, *row, code, candidates).await?;
                let row = repo::get(&state.db, merchant.id, id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("payment"))?;
                // Final: 201 with the outcome; still waiting for the payer or the channel: 202.
                let status = if row.status().is_final() {
                    StatusCode::CREATED
                } else {
                    StatusCode::ACCEPTED
                };
                return Ok((status, Json(state.paylinks.present(&row))));
            }
            if let Some(wallet) = qr_wallet {
                let id = PaymentId::from(row.id);
                let Some(candidates) = qr_route else {
                    return Err(ApiError::unavailable("a new payment without a route"));
                };
                crate::orchestrate::qr_merchant(&state, &row, wallet, candidates).await?;
                let row = repo::get(&state.db, merchant.id, id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("payment"))?;
                return Ok((StatusCode::CREATED, Json(state.paylinks.present(&row))));
            }
            Ok((
                StatusCode::CREATED,
                Json(state.paylinks.present(row.as_ref())),
            ))
        }
        WriteOutcome::Existing(row) => {
            // The same request again. When the first attempt wrote the payment but failed before
            // the charge (its answer was 503 "retry with the same request"), the charge is made now.
            if let (Some(code), Some(_), Some(candidates)) =
                (&req.auth_code, code_wallet, code_route)
                && row.status() == PaymentStatus::Created
            {
                let id = PaymentId::from(row.id);
                crate::orchestrate::code_scan(&state, *row, code, candidates).await?;
                let row = repo::get(&state.db, merchant.id, id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("payment"))?;
                return Ok((StatusCode::OK, Json(state.paylinks.present(&row))));
            }
            Ok((StatusCode::OK, Json(state.paylinks.present(row.as_ref()))))
        }
        WriteOutcome::Conflict(row) => Err(ApiError::field(
            ErrorCode::IdempotencyConflict,
            "merchant_order_no",
            format!(
                "merchant_order_no was already used for payment {} with different content",
                row.id
            ),
        )),
        WriteOutcome::Retry | WriteOutcome::Transitioned(_) | WriteOutcome::Refund(_) => Err(
            ApiError::unavailable("create raced with a rolled-back writer"),
        ),
    }
}

/// The merchant's candidate accounts for a new payment. When every one of them has its breaker
/// open the payment is refused — but the same request sent again still gets its existing payment
/// (`None` here: the write batcher answers `Existing` / `Conflict` without writing).
async fn admitted_route(
    state: &AppState,
    merchant: MerchantId,
    merchant_order_no: &str,
    wallet: WalletBrand,
    method: PayMethod,
) -> ApiResult<Option<crate::routing::Candidates>> {
    match state.routes.candidates(merchant, wallet, method).await {
        Ok(c) => Ok(Some(c)),
        Err(e) if e.code == ErrorCode::ChannelUnavailable => {
            refused_unless_repeat(state, merchant, merchant_order_no, e).await?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A route whose breaker is open refuses new payments; the same request sent again still gets
/// its existing payment (the write batcher answers `Existing` / `Conflict` without writing).
async fn refused_unless_repeat(
    state: &AppState,
    merchant: MerchantId,
    merchant_order_no: &str,
    refused: ApiError,
) -> ApiResult<()> {
    let existing = repo::list(&state.db, merchant, Some(merchant_order_no), None, 1).await?;
    if existing.is_empty() {
        Err(refused)
    } else {
        Ok(())
    }
}

/// Get a payment.
#[utoipa::path(get, path = "/v1/payments/{id}", tag = "payments", security(("paymux_hmac" = [])),
    params(("id" = String, Path, description = "Payment id")),
    responses((status = 200, body = Payment), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn get_payment(
    State(state): State<AppState>,
    Extension(merchant): Extension<Merchant>,
    Path(id): Path<String>,
) -> ApiResult<Json<Payment>> {
    let id: PaymentId = id.parse().map_err(|_| ApiError::not_found("payment"))?;
    let row = repo::get(&state.db, merchant.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment"))?;
    Ok(Json(state.paylinks.present(&row)))
}

/// List payments, newest first; filter by `merchant_order_no`.
#[utoipa::path(get, path = "/v1/payments", tag = "payments", security(("paymux_hmac" = [])), params(ListQuery),
    responses((status = 200, body = PaymentList)))]
pub async fn list_payments(
    State(state): State<AppState>,
    Extension(merchant): Extension<Merchant>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<PaymentList>> {
    let Query(q) = query.map_err(|e| ApiError::validation("query", e.body_text()))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::validation("limit", "`limit` must be 1–100"));
    }
    let rows = repo::list(
        &state.db,
        merchant.id,
        q.merchant_order_no.as_deref(),
        q.starting_after,
        limit + 1,
    )
    .await?;
    let has_more = rows.len() > limit as usize;
    let data = rows
        .iter()
        .take(limit as usize)
        .map(|r| state.paylinks.present(r))
        .collect();
    Ok(Json(PaymentList { data, has_more }))
}

/// Close an unpaid payment. Closing a closed payment is a no-op; a final payment cannot be closed.
#[utoipa::path(post, path = "/v1/payments/{id}/close", tag = "payments", security(("paymux_hmac" = [])),
    params(("id" = String, Path, description = "Payment id")),
    responses((status = 200, body = Payment),
        (status = 404, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already succeeded or failed", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn close_payment(
    State(state): State<AppState>,
    Extension(merchant): Extension<Merchant>,
    Path(id): Path<String>,
) -> ApiResult<Json<Payment>> {
    let id: PaymentId = id.parse().map_err(|_| ApiError::not_found("payment"))?;
    let row = repo::get(&state.db, merchant.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment"))?;
    match row.status() {
        // An order at a channel is closed there first, so the payer can no longer pay it; if the
        // payer already has, the payment is settled as `succeeded` (answered 409 below).
        PaymentStatus::Created if row.channel_account_id.is_some() => {
            use crate::sweeper::Expiry;
            match crate::sweeper::close_channel_order(&state, row, "closed_by_merchant").await {
                Expiry::Closed | Expiry::Paid => {}
                Expiry::Later => {
                    return Err(ApiError::new(
                        ErrorCode::ChannelUnavailable,
                        "the channel did not confirm closing the order; nothing was closed, try again",
                    ));
                }
            }
        }
        PaymentStatus::Created => {
            state
                .batcher
                .submit(WriteOp::Transition {
                    payment_id: id,
                    to: PaymentStatus::Closed,
                    closed_reason: Some("closed_by_merchant".into()),
                })
                .await
                .map_err(ApiError::unavailable)?;
        }
        // The customer's code is being charged: the payer may be confirming. It ends by itself
        // (reversed and closed at its deadline, or succeeded).
        PaymentStatus::Processing => {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                "payment is processing at the channel and cannot be closed; it is reversed and closed at its deadline unless the payer completes it",
            ));
        }
        _ => {}
    }
    let row = repo::get(&state.db, merchant.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment"))?;
    match row.status() {
        PaymentStatus::Closed => Ok(Json(state.paylinks.present(&row))),
        other => Err(ApiError::new(
            ErrorCode::InvalidState,
            format!("payment is {other} and cannot be closed"),
        )),
    }
}
