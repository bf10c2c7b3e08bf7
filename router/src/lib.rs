//! The paymux server and its command line.
//!
//! - [`startup`]: [`startup::Application`] builds everything from a [`config::Config`], binds its own
//!   listener (port 0 works) and serves until stopped; the HTTP routes are assembled there.
//! - [`config`]: defaults, TOML file and `PAYMUX_*` environment variables.
//! - [`db`]: SQLite or PostgreSQL behind one enum; migrations.
//! - [`auth`]: merchant request signatures and replay protection; [`merchants`]: merchants and keys.
//! - [`ratelimit`]: per-merchant request rate limits (in-process, or shared in Redis).
//! - [`batcher`]: the write batcher — every hot-path write goes through it, one transaction per batch.
//! - [`payments`]: the payments API, model and SQL; [`sweeper`]: closes expired payments.
//! - [`error`]: the one error type at the edge (`application/problem+json`).
//! - [`telemetry`]: logs, request ids, Prometheus metrics; [`openapi`]: the OpenAPI document.
//! - [`orchestrate`]: paying through channels — wallet detection, routes, the code-scan flow and
//!   settlement (final state + ledger entry in one transaction).
//! - [`ledger_audit`]: the ledger's audit joined with the payments (each success posted once).
//! - [`cli`]: the `paymux` command line.
//! - [`health`]: a circuit breaker per channel account (fail fast while a channel is down).
//! - [`paylink`]: the aggregated payment link `/p/{token}` of a C2B payment without a wallet;
//!   [`linkpay`]: its pages, and paying it in the wallet app that opened it.
//! - [`codes`]: static merchant codes (`/v1/codes`, their public images under `/c/{id}/…`).
//! - [`cashier`]: the one-code cashier `/c/{id}` — the scanning app's page, the amount, the
//!   wallet's OAuth and in-app payment, the result page.
//! - [`routing`]: merchants' channel accounts and routes — the live registry, the route choice, the
//!   admin API under `/admin/v1`.
//! - [`reconciliation`]: `paymux reconcile` — bills against our records, resolutions, channel and
//!   merchant settlement, run reports.
//! - [`ops`]: the operations API under `/ops/v1` — operators with roles, exceptions workflow,
//!   searches across merchants, ledger statements, the audit log — and its web console `/ops/`.
//! - [`webhooks`]: merchant webhooks — the outbox written by the batcher, its dispatcher, the list API.

pub mod auth;
pub mod batcher;
pub mod cashier;
pub mod cli;
pub mod codes;
pub mod config;
pub mod crypto;
pub mod db;
pub mod error;
pub mod health;
pub mod ledger_audit;
pub mod linkpay;
pub mod merchants;
pub mod openapi;
pub mod ops;
pub mod orchestrate;
pub mod paylink;
pub mod payments;
pub mod ratelimit;
pub mod reconciliation;
pub mod refunds;
pub mod routing;
pub mod startup;
pub mod sweeper;
pub mod telemetry;
pub mod webhooks;

use std::sync::Arc;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<config::Config>,
    pub db: db::Db,
    pub batcher: Arc<batcher::WriteBatcher>,
    pub keys: Arc<auth::KeyStore>,
    pub nonces: auth::NonceStore,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The merchants' live channel accounts and routes.
    pub routes: routing::Registry,
    /// Encrypts merchant secrets and channel credentials at rest.
    pub secrets: Arc<crypto::SecretBox>,
    /// The admin API's bearer token (configured, or generated into the data directory).
    pub admin_token: Option<Arc<config::Secret>>,
    /// Per-merchant request rate limits on `/v1/*`.
    pub limiter: ratelimit::RateLimiter,
    /// Per static code: the payments the one-code cashier creates for anonymous payers.
    pub cashier_limiter: ratelimit::RateLimiter,
    /// Payment links `/p/{token}` (C2B without a wallet).
    pub paylinks: Arc<paylink::PayLinks>,
}
