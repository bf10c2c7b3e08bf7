//! paymux-ledger: the platform's double-entry books, on SQLite and PostgreSQL.
//!
//! - [`types`]: accounts (kind, currency, balance flags), postings, journal entries (single- and
//!   two-phase), per-entry [`EntryResult`]s, [`PostOptions`] and [`LedgerError`].
//! - [`engine`]: the batch algorithm in memory — apply entries in order against the locked account
//!   balances with every check, and produce the rows to write. No I/O.
//! - [`store`]: the batched statements of each backend (`store::sqlite`, `store::pg`); a batch is a
//!   fixed handful of bulk statements (binary `COPY` on PostgreSQL, multi-row `INSERT` on SQLite),
//!   never one round trip per entry.
//! - [`chart`]: the chart of accounts of DESIGN.md as [`AccountSpec`] builders, so postings can open
//!   their accounts on first use.
//! - [`rules`]: posting rules as plain functions (payment, refund, settlements, wallet, adjustment)
//!   with deterministic entry ids, and the fee rounding rule.
//! - [`queries`]: balances now and as of a time, paged statements with running balance, entries by
//!   reference, trial balance.
//! - [`audit`]: the invariants that must always hold, as an [`audit::AuditReport`].
//! - [`batcher`]: [`Ledger`], a standalone group-committing poster over a pool.
//!
//! Posting inside a caller's transaction: [`post_sqlite`] / [`post_postgres`] take the caller's
//! connection (already inside `BEGIN`) so that a payment's state change and its entry commit together.

pub mod audit;
pub mod batcher;
pub mod chart;
pub mod engine;
pub mod queries;
pub mod rules;
pub mod store;
pub mod types;

pub use batcher::{Ledger, LedgerConfig};
pub use store::pipeline::PipelineStats;
pub use types::*;

use sqlx::{PgConnection, PgPool, SqliteConnection, SqlitePool};

/// A pool of either backend, for the standalone [`Ledger`], the queries and the audit.
#[derive(Debug, Clone)]
pub enum LedgerPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the ledger's SQLite migrations (versions 20001–29999; other crates' versions are ignored).
pub async fn migrate_sqlite(pool: &SqlitePool) -> Result<(), LedgerError> {
    let mut m = sqlx::migrate!("./migrations/sqlite");
    m.set_ignore_missing(true);
    m.run(pool).await?;
    Ok(())
}

/// Runs the ledger's PostgreSQL migrations (versions 20001–29999; other crates' versions are ignored).
pub async fn migrate_postgres(pool: &PgPool) -> Result<(), LedgerError> {
    let mut m = sqlx::migrate!("./migrations/postgres");
    m.set_ignore_missing(true);
    m.run(pool).await?;
    Ok(())
}

/// Posts `entries` on a SQLite connection that is inside the caller's transaction (use
/// `BEGIN IMMEDIATE` so the read of the balances and the write are one critical section).
/// Returns one result per entry, in order. An `Err` means the transaction must be rolled back.
pub async fn post_sqlite(
    conn: &mut SqliteConnection,
    entries: &[NewEntry],
    opts: PostOptions,
) -> Result<Vec<EntryResult>, LedgerError> {
    store::sqlite::post(conn, entries, opts).await
}

/// Posts `entries` on a PostgreSQL connection that is inside the caller's transaction (READ
/// COMMITTED is enough: the touched balance rows are locked `FOR UPDATE` in sorted order). Returns
/// one result per entry, in order. An `Err` means the transaction must be rolled back; if
/// [`LedgerError::is_retryable`], the whole transaction may be retried.
pub async fn post_postgres(
    conn: &mut PgConnection,
    entries: &[NewEntry],
    opts: PostOptions,
) -> Result<Vec<EntryResult>, LedgerError> {
    store::pg::post(conn, entries, opts).await
}

/// Expires up to `limit` open pending entries past their timeout, in the caller's transaction.
pub async fn expire_due_sqlite(
    conn: &mut SqliteConnection,
    now_us: i64,
    limit: i64,
) -> Result<usize, LedgerError> {
    store::sqlite::expire_due(conn, now_us, limit).await
}

/// Expires up to `limit` open pending entries past their timeout, in the caller's transaction.
pub async fn expire_due_postgres(
    conn: &mut PgConnection,
    now_us: i64,
    limit: i64,
) -> Result<usize, LedgerError> {
    store::pg::expire_due(conn, now_us, limit).await
}
