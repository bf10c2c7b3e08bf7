//! Integration tests: the real server on a random port, a fresh database per test (SQLite, or
//! PostgreSQL + Redis when `PAYMUX_TEST_DATABASE_URL` / `PAYMUX_TEST_REDIS_URL` are set), over HTTP.

mod auth;
mod batch_settle;
mod breaker;
mod cashier;
mod cli;
mod code_scan;
mod codes;
mod expiry;
mod external_sandbox;
mod helpers;
mod limits;
mod ops;
mod ops_api;
mod ops_console;
mod paylink;
mod payments;
mod qr_notify;
mod reconcile;
mod reconcile_bench;
mod refunds;
mod routing;
mod webhooks;
