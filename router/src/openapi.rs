//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::payments::api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "paymux merchant API",
        description = "One payment API for every wallet and channel. Amounts are integers in minor units \
            (fen). Requests are signed: `Authorization: PAYMUX-HMAC-SHA256 key_id=…,timestamp=…,nonce=…,signature=…` \
            with signature = lowercase hex HMAC-SHA256(key_secret, METHOD\\nPATH_AND_QUERY\\ntimestamp\\nnonce\\nhex(SHA-256(body))\\n). \
            Errors are application/problem+json with a stable `code`."
    ),
    paths(api::create_payment, api::get_payment, api::list_payments, api::close_payment,
        crate::webhooks::list_webhooks, crate::codes::create_code, crate::codes::list_codes,
        crate::codes::get_code, crate::codes::disable_code),
    components(schemas(crate::error::Problem, paymux_model::ErrorCode)),
    modifiers(&SecurityAddon),
    tags((name = "payments", description = "Create, read and close payments"),
        (name = "codes", description = "Static merchant codes: one printed code any wallet can scan"),
        (name = "webhooks", description = "Events sent to a payment's notify_url, and their delivery state"))
)]
pub struct ApiDoc;

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "paymux_hmac",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "PAYMUX-HMAC-SHA256 key_id=<key id>,timestamp=<unix seconds>,nonce=<16–64 [A-Za-z0-9]>,signature=<lowercase hex>",
            ))),
        );
    }
}
