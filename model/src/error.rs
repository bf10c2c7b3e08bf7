//! Stable error codes. Clients match on these strings; never rename one.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($($variant:ident = $text:literal, $status:literal, $title:literal;)+) => {
        /// A stable, machine-readable error code, with the HTTP status it maps to.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum ErrorCode {
            $(#[serde(rename = $text)] $variant),+
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $text),+ }
            }

            /// The HTTP status code this error is answered with.
            pub const fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status),+ }
            }

            /// A short, human-readable summary (the problem document's `title`).
            pub const fn title(self) -> &'static str {
                match self { $(ErrorCode::$variant => $title),+ }
            }
        }
    };
}

error_codes! {
    AuthMissing = "auth_missing", 401, "The Authorization header is missing";
    AuthMalformed = "auth_malformed", 401, "The Authorization header is malformed";
    AuthUnknownKey = "auth_unknown_key", 401, "Unknown or revoked key id";
    AuthBadSignature = "auth_bad_signature", 401, "The request signature does not verify";
    AuthStaleTimestamp = "auth_stale_timestamp", 401, "The request timestamp is outside the allowed window";
    AuthReplayedNonce = "auth_replayed_nonce", 401, "The request nonce was already used";
    AdminUnauthorized = "admin_unauthorized", 401, "A valid admin or operator token is required";
    Unauthorized = "unauthorized", 401, "A valid operator token is required";
    Forbidden = "forbidden", 403, "The credentials do not allow this action";
    NotFound = "not_found", 404, "No such resource";
    MethodNotAllowed = "method_not_allowed", 405, "Method not allowed";
    CodeDisabled = "code_disabled", 410, "The static code is disabled";
    IdempotencyConflict = "idempotency_conflict", 409, "The same merchant number was used with different content";
    InvalidState = "invalid_state", 409, "The resource is not in a state that allows this action";
    PayloadTooLarge = "payload_too_large", 413, "The request body is too large";
    UnsupportedMediaType = "unsupported_media_type", 415, "The request body must be application/json";
    MalformedJson = "malformed_json", 400, "The request body is not valid JSON";
    ValidationFailed = "validation_failed", 422, "A field of the request is invalid";
    UnknownField = "unknown_field", 422, "The request has a field that is not part of the API";
    PaymentCodeUnknown = "payment_code_unknown", 422, "The payment code belongs to no known wallet";
    PaymentCodeMalformed = "payment_code_malformed", 422, "The payment code is not a well-formed payment code";
    NoRoute = "no_route", 422, "The merchant has no usable channel for this wallet and method";
    RefundExceedsPaid = "refund_exceeds_paid", 422, "The refunds would exceed the paid amount";
    RateLimited = "rate_limited", 429, "Too many requests";
    ChannelUnavailable = "channel_unavailable", 503, "The payment channel is unavailable";
    Unavailable = "unavailable", 503, "The service is temporarily unavailable";
    Internal = "internal", 500, "Internal error";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_map_to_error_statuses() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {c}");
            assert!((400..600).contains(&c.http_status()));
            assert_eq!(
                serde_json::to_string(c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
        }
    }
}
