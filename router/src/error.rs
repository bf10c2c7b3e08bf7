//! The one error type at the HTTP edge: renders `application/problem+json` with a stable code.
//! Internal details go to the log, never to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use paymux_model::ErrorCode;
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
    /// The request field at fault (validation errors).
    pub field: Option<String>,
    /// `Retry-After` (seconds), for answers that say when to try again.
    pub retry_after: Option<u64>,
}

/// The problem document (RFC 9457).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `https://paymux.dev/problems/<code>`
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    pub status: u16,
    /// Stable, machine-readable error code.
    pub code: ErrorCode,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            code,
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn field(code: ErrorCode, field: impl Into<String>, detail: impl Into<String>) -> ApiError {
        ApiError {
            code,
            detail: detail.into(),
            field: Some(field.into()),
            retry_after: None,
        }
    }

    pub fn validation(field: impl Into<String>, detail: impl Into<String>) -> ApiError {
        ApiError::field(ErrorCode::ValidationFailed, field, detail)
    }

    /// With `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(ErrorCode::NotFound, format!("no such {what}"))
    }

    /// An internal failure: logged here with its cause, answered with a generic body.
    pub fn internal(err: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %err, "internal error");
        ApiError::new(
            ErrorCode::Internal,
            "internal error; see the server log with this request id",
        )
    }

    pub fn unavailable(err: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %err, "unavailable");
        ApiError::new(
            ErrorCode::Unavailable,
            "temporarily unavailable; retry with the same request",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> ApiError {
        // A database that is down or saturated is `503 unavailable` (retry), not an internal error.
        match err.downcast::<sqlx::Error>() {
            Ok(db) => ApiError::from(db),
            Err(err) => ApiError::internal(format!("{err:#}")),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> ApiError {
        match err {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                ApiError::unavailable(err)
            }
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let problem = Problem {
            type_uri: format!("https://paymux.dev/problems/{}", self.code.as_str()),
            title: self.code.title(),
            status: status.as_u16(),
            code: self.code,
            detail: self.detail,
            field: self.field,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.code == ErrorCode::AuthMissing || self.code.http_status() == 401 {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(paymux_model::auth::SCHEME),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_that_is_down_is_unavailable_even_behind_anyhow_context() {
        use anyhow::Context;
        let plain = ApiError::from(anyhow::Error::from(sqlx::Error::PoolTimedOut));
        assert_eq!(plain.code, ErrorCode::Unavailable);
        let wrapped: anyhow::Result<()> = Err(sqlx::Error::PoolTimedOut).context("finding a key");
        assert_eq!(
            ApiError::from(wrapped.unwrap_err()).code,
            ErrorCode::Unavailable
        );
        let other = ApiError::from(anyhow::anyhow!("something else"));
        assert_eq!(other.code, ErrorCode::Internal);
    }
}
