//! The database: SQLite (embedded default) or PostgreSQL (production), behind one small enum.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Starts a transaction that will write. On SQLite it is `BEGIN IMMEDIATE`: the write lock is taken
/// first, so a transaction that reads and then writes never finds another writer's commit in its way
/// (a deferred one would fail at once with "database is locked", without waiting); on PostgreSQL it
/// is a plain `BEGIN`.
pub trait BeginWrite {
    type Database: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = sqlx::Result<sqlx::Transaction<'static, Self::Database>>> + Send;
}

impl BeginWrite for SqlitePool {
    type Database = sqlx::Sqlite;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = sqlx::Result<sqlx::Transaction<'static, sqlx::Sqlite>>> + Send
    {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite for PgPool {
    type Database = sqlx::Postgres;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>>> + Send
    {
        self.begin()
    }
}

/// A pool of either backend. Repositories match on it once per call and run the backend's SQL.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Db {
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Db> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).context("parse PostgreSQL URL")?;
            // No ping before every acquire: it was a round trip per query (6% of the node's CPU in
            // a code-scan profile); a connection that broke fails its statement, which callers
            // already treat as a database error (503 `unavailable`, nothing written).
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(2))
                .acquire_timeout(Duration::from_secs(10))
                .test_before_acquire(false)
                .connect_with(options)
                .await
                .context("connect to PostgreSQL")?;
            Ok(Db::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .context("parse SQLite URL")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit is on disk before it is acknowledged.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections.clamp(2, 16))
                .acquire_timeout(Duration::from_secs(10))
                .test_before_acquire(false)
                .connect_with(options)
                .await
                .context("open SQLite database")?;
            Ok(Db::Sqlite(pool))
        } else {
            anyhow::bail!("database_url must start with sqlite: or postgres://")
        }
    }

    /// Applies the router's migrations (and those of the crates whose tables live in the same
    /// database) in version order.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Db::Sqlite(pool) => {
                let mut m = sqlx::migrate!("./migrations/sqlite");
                m.set_ignore_missing(true);
                m.run(pool).await.context("migrate SQLite")?;
                paymux_ledger::migrate_sqlite(pool)
                    .await
                    .context("migrate the ledger (SQLite)")?;
            }
            Db::Postgres(pool) => {
                let mut m = sqlx::migrate!("./migrations/postgres");
                m.set_ignore_missing(true);
                m.run(pool).await.context("migrate PostgreSQL")?;
                paymux_ledger::migrate_postgres(pool)
                    .await
                    .context("migrate the ledger (PostgreSQL)")?;
            }
        }
        Ok(())
    }

    /// The same pool, as the ledger crate takes it.
    pub fn ledger_pool(&self) -> paymux_ledger::LedgerPool {
        match self {
            Db::Sqlite(pool) => paymux_ledger::LedgerPool::Sqlite(pool.clone()),
            Db::Postgres(pool) => paymux_ledger::LedgerPool::Postgres(pool.clone()),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        match self {
            Db::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.is_ok(),
            Db::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.is_ok(),
        }
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// Microseconds since the Unix epoch, the unit of every stored time.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

pub fn us_to_datetime(us: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default()
}
