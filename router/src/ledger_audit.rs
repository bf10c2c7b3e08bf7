//! `paymux ledger audit`: the ledger's own invariants, plus the one that joins it with the payments —
//! every succeeded payment has exactly one payment entry, and no payment entry belongs to a payment
//! that did not succeed.

use std::fmt;

use paymux_ledger::audit::{AuditOptions, AuditReport};

use crate::db::Db;

pub struct PlatformAudit {
    pub ledger: AuditReport,
    pub succeeded_payments: i64,
    /// Payments whose number of payment entries is not exactly one (`succeeded`) or zero (otherwise).
    pub misposted: Vec<(uuid::Uuid, String, i64)>,
}

impl PlatformAudit {
    pub fn is_clean(&self) -> bool {
        self.ledger.is_clean() && self.misposted.is_empty()
    }
}

impl fmt::Display for PlatformAudit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.ledger)?;
        writeln!(f, "succeeded payments: {}", self.succeeded_payments)?;
        if self.misposted.is_empty() {
            write!(
                f,
                "every succeeded payment has exactly one payment entry: ok"
            )?;
        } else {
            writeln!(
                f,
                "BREACH: {} payments are not posted exactly once:",
                self.misposted.len()
            )?;
            for (id, status, n) in self.misposted.iter().take(20) {
                writeln!(f, "  payment {id} ({status}) has {n} payment entries")?;
            }
        }
        if self.is_clean() {
            write!(f, "\naudit: clean")
        } else {
            write!(f, "\naudit: BREACHED")
        }
    }
}

const MISPOSTED: &str = "SELECT p.id, p.status, COUNT(e.id) AS n FROM payments p \
     LEFT JOIN ledger_entries e ON e.reference = p.id AND e.kind = 'payment' \
     GROUP BY p.id, p.status \
     HAVING (p.status = 'succeeded' AND COUNT(e.id) <> 1) OR (p.status <> 'succeeded' AND COUNT(e.id) <> 0) \
     LIMIT 1000";
const SUCCEEDED: &str = "SELECT COUNT(*) FROM payments WHERE status = 'succeeded'";

pub async fn audit(db: &Db) -> anyhow::Result<PlatformAudit> {
    let ledger = paymux_ledger::audit::audit(&db.ledger_pool(), AuditOptions::default()).await?;
    let (misposted, succeeded_payments): (Vec<(uuid::Uuid, String, i64)>, i64) = match db {
        Db::Sqlite(p) => (
            sqlx::query_as(MISPOSTED).fetch_all(p).await?,
            sqlx::query_scalar(SUCCEEDED).fetch_one(p).await?,
        ),
        Db::Postgres(p) => (
            sqlx::query_as(MISPOSTED).fetch_all(p).await?,
            sqlx::query_scalar(SUCCEEDED).fetch_one(p).await?,
        ),
    };
    Ok(PlatformAudit {
        ledger,
        succeeded_payments,
        misposted,
    })
}
