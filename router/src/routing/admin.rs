//! The admin API under `/admin/v1`: channel accounts, routes and fee rates of merchants.
//! Every request carries `Authorization: Bearer <admin token>` (`admin_token`, or the token
//! generated into `<data_dir>/admin.token`); anything else is `401 admin_unauthorized` and changes
//! nothing. The token is compared in constant time and never logged. After each change this
//! node's registry reloads at once; other nodes see it within `routing_refresh_ms`.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use bytes::Bytes;
use paymux_model::{ErrorCode, MerchantId, PayMethod, WalletBrand};
use serde::Serialize;
use uuid::Uuid;

use super::store::{self, AccountPatch, AccountView, FeeRate, NewAccount, RouteSpec, RouteView};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::payments::api::parse_json;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/merchants/{merchant_id}/channel-accounts",
            get(list_accounts).post(create_account),
        )
        .route(
            "/merchants/{merchant_id}/channel-accounts/{id}",
            get(get_account).patch(update_account),
        )
        .route("/merchants/{merchant_id}/routes", get(list_routes))
        .route(
            "/merchants/{merchant_id}/routes/{wallet}/{method}",
            put(set_route).delete(delete_route),
        )
        .route(
            "/merchants/{merchant_id}/fee-rate",
            get(get_fee_rate).put(set_fee_rate),
        )
        .route_layer(axum::middleware::from_fn_with_state(state, authenticate))
}

/// SHA-256 of both, then a comparison that looks at every byte.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, given);
    let b = ring::digest::digest(&ring::digest::SHA256, expected);
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = match (given, &state.admin_token) {
        (Some(g), Some(expected)) if !g.is_empty() => {
            token_matches(g.as_bytes(), expected.expose().as_bytes())
        }
        _ => false,
    };
    if !ok {
        metrics::counter!("paymux_admin_auth_failures_total").increment(1);
        let mut r = ApiError::new(
            ErrorCode::AdminUnauthorized,
            "`Authorization: Bearer <admin token>` is missing or wrong",
        )
        .into_response();
        r.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    next.run(req).await
}

fn merchant_id(s: &str) -> ApiResult<MerchantId> {
    s.parse().map_err(|_| ApiError::not_found("merchant"))
}

fn wallet_method(wallet: &str, method: &str) -> ApiResult<(WalletBrand, PayMethod)> {
    let w = wallet
        .parse()
        .map_err(|e: paymux_model::enums::UnknownVariant| {
            ApiError::validation("wallet", e.to_string())
        })?;
    let m = method
        .parse()
        .map_err(|e: paymux_model::enums::UnknownVariant| {
            ApiError::validation("method", e.to_string())
        })?;
    Ok((w, m))
}

#[derive(Debug, Serialize)]
pub struct List<T> {
    pub data: Vec<T>,
}

async fn reload(state: &AppState) {
    if let Err(e) = state.routes.reload().await {
        tracing::error!(error = %e, "reloading the routing registry after a change");
    }
}

async fn create_account(
    State(state): State<AppState>,
    Path(merchant): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<AccountView>)> {
    let merchant = merchant_id(&merchant)?;
    let new: NewAccount = parse_json(&body)?;
    let view = store::create_account(&state.db, &state.secrets, merchant, new).await?;
    reload(&state).await;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn list_accounts(
    State(state): State<AppState>,
    Path(merchant): Path<String>,
) -> ApiResult<Json<List<AccountView>>> {
    let merchant = merchant_id(&merchant)?;
    Ok(Json(List {
        data: store::list_accounts(&state.db, merchant).await?,
    }))
}

async fn get_account(
    State(state): State<AppState>,
    Path((merchant, id)): Path<(String, String)>,
) -> ApiResult<Json<AccountView>> {
    let merchant = merchant_id(&merchant)?;
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::not_found("channel account"))?;
    Ok(Json(store::get_account(&state.db, merchant, id).await?))
}

async fn update_account(
    State(state): State<AppState>,
    Path((merchant, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<AccountView>> {
    let merchant = merchant_id(&merchant)?;
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::not_found("channel account"))?;
    let patch: AccountPatch = parse_json(&body)?;
    let view = store::update_account(&state.db, &state.secrets, merchant, id, patch).await?;
    reload(&state).await;
    Ok(Json(view))
}

async fn list_routes(
    State(state): State<AppState>,
    Path(merchant): Path<String>,
) -> ApiResult<Json<List<RouteView>>> {
    let merchant = merchant_id(&merchant)?;
    Ok(Json(List {
        data: store::list_routes(&state.db, merchant).await?,
    }))
}

async fn set_route(
    State(state): State<AppState>,
    Path((merchant, wallet, method)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Json<RouteView>> {
    let merchant = merchant_id(&merchant)?;
    let (wallet, method) = wallet_method(&wallet, &method)?;
    let spec: RouteSpec = parse_json(&body)?;
    let view = store::set_route(&state.db, merchant, wallet, method, spec).await?;
    reload(&state).await;
    Ok(Json(view))
}

async fn delete_route(
    State(state): State<AppState>,
    Path((merchant, wallet, method)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let merchant = merchant_id(&merchant)?;
    let (wallet, method) = wallet_method(&wallet, &method)?;
    let found = store::delete_route(&state.db, merchant, wallet, method).await?;
    reload(&state).await;
    if found {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("route"))
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FeeRateBody {
    fee_rate_bps: Option<u32>,
}

async fn set_fee_rate(
    State(state): State<AppState>,
    Path(merchant): Path<String>,
    body: Bytes,
) -> ApiResult<Json<FeeRate>> {
    let merchant = merchant_id(&merchant)?;
    let b: FeeRateBody = parse_json(&body)?;
    let view = store::set_fee_rate(&state.db, merchant, b.fee_rate_bps).await?;
    reload(&state).await;
    Ok(Json(view))
}

async fn get_fee_rate(
    State(state): State<AppState>,
    Path(merchant): Path<String>,
) -> ApiResult<Json<FeeRate>> {
    let merchant = merchant_id(&merchant)?;
    Ok(Json(store::get_fee_rate(&state.db, merchant).await?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison() {
        assert!(super::token_matches(b"abc", b"abc"));
        assert!(!super::token_matches(b"abd", b"abc"));
        assert!(!super::token_matches(b"", b"abc"));
    }
}
