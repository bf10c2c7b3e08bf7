//! The invariants that must always hold, checked from the stored rows:
//! 1. Σ debits = Σ credits over all posted postings, per currency (and over open holds);
//! 2. every entry balances per currency, and posted/pending entries have at least two postings;
//! 3. every account's stored balances equal the sums of its postings (pending: of open holds only);
//! 4. no account breaks its balance flags;
//! 5. no open pending entry is more than `expiry_grace_ms` past its timeout.
//!
//! Plus [`payment_entry_counts`], for the router's "every succeeded payment has exactly one payment
//! entry" check against its own payments table.

use std::fmt;

use uuid::Uuid;

use crate::LedgerPool;
use crate::types::*;

/// Runs the same SQL text on whichever backend the pool is.
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            LedgerPool::Sqlite($p) => $body,
            LedgerPool::Postgres($p) => $body,
        }
    };
}
pub(crate) use on_pool;

#[derive(Debug, Clone, Copy)]
pub struct AuditOptions {
    /// How long past its timeout an open pending entry may wait for the expiry task.
    pub expiry_grace_ms: i64,
    /// The clock; `None` = the system clock.
    pub now_us: Option<i64>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            expiry_grace_ms: 60_000,
            now_us: None,
        }
    }
}

/// Posted and pending totals of one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrencyTotals {
    pub currency: String,
    pub debits_posted: i64,
    pub credits_posted: i64,
    pub debits_pending: i64,
    pub credits_pending: i64,
}

#[derive(Debug, Clone, Default)]
pub struct AuditReport {
    pub accounts: i64,
    pub entries: i64,
    pub postings: i64,
    pub open_pending: i64,
    pub totals: Vec<CurrencyTotals>,
    /// One line per broken invariant (at most a few examples each).
    pub breaches: Vec<String>,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.breaches.is_empty()
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ledger audit: {} accounts, {} entries, {} postings, {} open pending",
            self.accounts, self.entries, self.postings, self.open_pending
        )?;
        for t in &self.totals {
            writeln!(
                f,
                "  {}: debits {} credits {} (posted), debits {} credits {} (pending)",
                t.currency, t.debits_posted, t.credits_posted, t.debits_pending, t.credits_pending
            )?;
        }
        if self.breaches.is_empty() {
            write!(f, "result: CLEAN")
        } else {
            writeln!(f, "result: {} BREACH(ES)", self.breaches.len())?;
            for b in &self.breaches {
                writeln!(f, "  - {b}")?;
            }
            Ok(())
        }
    }
}

const COUNTS: &str = "SELECT (SELECT COUNT(*) FROM ledger_accounts), (SELECT COUNT(*) FROM ledger_entries), \
     (SELECT COUNT(*) FROM ledger_postings), (SELECT COUNT(*) FROM ledger_pending WHERE state = 0)";

/// Posting sums per currency: posted ones, and pending ones whose hold is still open.
const TOTALS: &str = "SELECT a.currency, \
     CAST(COALESCE(SUM(CASE WHEN NOT p.is_pending AND NOT p.is_credit THEN p.amount_minor ELSE 0 END), 0) AS BIGINT), \
     CAST(COALESCE(SUM(CASE WHEN NOT p.is_pending AND p.is_credit THEN p.amount_minor ELSE 0 END), 0) AS BIGINT), \
     CAST(COALESCE(SUM(CASE WHEN p.is_pending AND o.state = 0 AND NOT p.is_credit THEN p.amount_minor ELSE 0 END), 0) AS BIGINT), \
     CAST(COALESCE(SUM(CASE WHEN p.is_pending AND o.state = 0 AND p.is_credit THEN p.amount_minor ELSE 0 END), 0) AS BIGINT) \
     FROM ledger_postings p JOIN ledger_accounts a ON a.id = p.account_id \
     LEFT JOIN ledger_pending o ON o.entry_id = p.entry_id \
     GROUP BY a.currency ORDER BY a.currency";

const UNBALANCED: &str = "SELECT p.entry_id FROM ledger_postings p JOIN ledger_accounts a ON a.id = p.account_id \
     GROUP BY p.entry_id, a.currency \
     HAVING SUM(CASE WHEN p.is_credit THEN p.amount_minor ELSE -p.amount_minor END) <> 0 LIMIT 5";

const TOO_FEW: &str = "SELECT e.id FROM ledger_entries e \
     WHERE e.phase IN ('posted', 'pending') \
       AND (SELECT COUNT(*) FROM ledger_postings p WHERE p.entry_id = e.id) < 2 LIMIT 5";

const BALANCES: &str = "SELECT a.code FROM ledger_accounts a LEFT JOIN ( \
       SELECT p.account_id, \
       SUM(CASE WHEN NOT p.is_pending AND NOT p.is_credit THEN p.amount_minor ELSE 0 END) AS dp, \
       SUM(CASE WHEN NOT p.is_pending AND p.is_credit THEN p.amount_minor ELSE 0 END) AS cp, \
       SUM(CASE WHEN p.is_pending AND o.state = 0 AND NOT p.is_credit THEN p.amount_minor ELSE 0 END) AS dpe, \
       SUM(CASE WHEN p.is_pending AND o.state = 0 AND p.is_credit THEN p.amount_minor ELSE 0 END) AS cpe \
       FROM ledger_postings p LEFT JOIN ledger_pending o ON o.entry_id = p.entry_id \
       GROUP BY p.account_id) s ON s.account_id = a.id \
     WHERE a.debits_posted <> COALESCE(s.dp, 0) OR a.credits_posted <> COALESCE(s.cp, 0) \
        OR a.debits_pending <> COALESCE(s.dpe, 0) OR a.credits_pending <> COALESCE(s.cpe, 0) \
     LIMIT 5";

const FLAGS: &str = "SELECT code FROM ledger_accounts WHERE \
     ((flags & 1) <> 0 AND debits_posted + debits_pending > credits_posted) OR \
     ((flags & 2) <> 0 AND credits_posted + credits_pending > debits_posted) LIMIT 5";

const OVERDUE: &str =
    "SELECT entry_id FROM ledger_pending WHERE state = 0 AND timeout_at_us < $1 LIMIT 5";

pub async fn audit(pool: &LedgerPool, opts: AuditOptions) -> Result<AuditReport, LedgerError> {
    let now = opts.now_us.unwrap_or_else(now_us);
    let mut r = AuditReport::default();
    let (accounts, entries, postings, open): (i64, i64, i64, i64) =
        on_pool!(pool, p => sqlx::query_as(COUNTS).fetch_one(p).await?);
    r.accounts = accounts;
    r.entries = entries;
    r.postings = postings;
    r.open_pending = open;
    let totals: Vec<(String, i64, i64, i64, i64)> =
        on_pool!(pool, p => sqlx::query_as(TOTALS).fetch_all(p).await?);
    for (currency, dp, cp, dpe, cpe) in totals {
        if dp != cp {
            r.breaches.push(format!(
                "{currency}: posted debits {dp} != posted credits {cp}"
            ));
        }
        if dpe != cpe {
            r.breaches.push(format!(
                "{currency}: pending debits {dpe} != pending credits {cpe}"
            ));
        }
        r.totals.push(CurrencyTotals {
            currency,
            debits_posted: dp,
            credits_posted: cp,
            debits_pending: dpe,
            credits_pending: cpe,
        });
    }
    let unbalanced: Vec<Uuid> =
        on_pool!(pool, p => sqlx::query_scalar(UNBALANCED).fetch_all(p).await?);
    if !unbalanced.is_empty() {
        r.breaches
            .push(format!("unbalanced entries (examples): {unbalanced:?}"));
    }
    let too_few: Vec<Uuid> = on_pool!(pool, p => sqlx::query_scalar(TOO_FEW).fetch_all(p).await?);
    if !too_few.is_empty() {
        r.breaches
            .push(format!("entries with fewer than two postings: {too_few:?}"));
    }
    let off: Vec<String> = on_pool!(pool, p => sqlx::query_scalar(BALANCES).fetch_all(p).await?);
    if !off.is_empty() {
        r.breaches
            .push(format!("stored balances differ from postings: {off:?}"));
    }
    let flags: Vec<String> = on_pool!(pool, p => sqlx::query_scalar(FLAGS).fetch_all(p).await?);
    if !flags.is_empty() {
        r.breaches
            .push(format!("accounts breaking their balance flags: {flags:?}"));
    }
    let cutoff = now.saturating_sub(opts.expiry_grace_ms.saturating_mul(1000));
    let overdue: Vec<Uuid> =
        on_pool!(pool, p => sqlx::query_scalar(OVERDUE).bind(cutoff).fetch_all(p).await?);
    if !overdue.is_empty() {
        r.breaches.push(format!(
            "open pending entries past timeout + {} ms: {overdue:?}",
            opts.expiry_grace_ms
        ));
    }
    Ok(r)
}

/// Audits a SQLite ledger with default options.
pub async fn audit_sqlite(pool: &sqlx::SqlitePool) -> Result<AuditReport, LedgerError> {
    audit(&LedgerPool::Sqlite(pool.clone()), AuditOptions::default()).await
}

/// Audits a PostgreSQL ledger with default options.
pub async fn audit_postgres(pool: &sqlx::PgPool) -> Result<AuditReport, LedgerError> {
    audit(&LedgerPool::Postgres(pool.clone()), AuditOptions::default()).await
}

/// For each reference in `references`, how many entries of `kind` refer to it (references with no
/// entry are returned with 0). The router joins this with its succeeded payments: each must be 1.
pub async fn entry_counts_by_reference(
    pool: &LedgerPool,
    kind: EntryKind,
    references: &[Uuid],
) -> Result<Vec<(Uuid, i64)>, LedgerError> {
    let mut counts: std::collections::HashMap<Uuid, i64> =
        references.iter().map(|r| (*r, 0)).collect();
    for chunk in references.chunks(4000) {
        let rows: Vec<(Uuid, i64)> = match pool {
            LedgerPool::Postgres(p) => {
                sqlx::query_as(
                    "SELECT reference, COUNT(*) FROM ledger_entries \
                     WHERE kind = $1 AND reference = ANY($2) GROUP BY reference",
                )
                .bind(kind.as_str())
                .bind(chunk)
                .fetch_all(p)
                .await?
            }
            LedgerPool::Sqlite(p) => {
                let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "SELECT reference, COUNT(*) FROM ledger_entries WHERE kind = ",
                );
                qb.push_bind(kind.as_str()).push(" AND reference IN (");
                let mut sep = qb.separated(", ");
                for r in chunk {
                    sep.push_bind(*r);
                }
                qb.push(") GROUP BY reference");
                qb.build_query_as().fetch_all(p).await?
            }
        };
        for (r, n) in rows {
            counts.insert(r, n);
        }
    }
    let mut out: Vec<(Uuid, i64)> = counts.into_iter().collect();
    out.sort_unstable();
    Ok(out)
}

/// Payment-kind entries per payment id; see [`entry_counts_by_reference`].
pub async fn payment_entry_counts(
    pool: &LedgerPool,
    payment_ids: &[Uuid],
) -> Result<Vec<(Uuid, i64)>, LedgerError> {
    entry_counts_by_reference(pool, EntryKind::Payment, payment_ids).await
}
