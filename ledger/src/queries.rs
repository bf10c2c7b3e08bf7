//! Read side: balances now and as of a time, paged account statements with running balance,
//! entries by reference, trial balance. The same SQL runs on both backends.

use paymux_model::{AccountId, EntryId};
use sqlx::types::Json;
use uuid::Uuid;

use crate::LedgerPool;
use crate::audit::on_pool;
use crate::store::{ACCOUNT_COLUMNS, RawAccount};
use crate::types::*;

/// An account with its balances (minor units).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub account_id: AccountId,
    pub code: String,
    pub kind: AccountKind,
    pub currency: paymux_model::Currency,
    pub debits_posted: i64,
    pub credits_posted: i64,
    pub debits_pending: i64,
    pub credits_pending: i64,
}

impl Balance {
    /// Posted balance on the account's normal side (debits − credits for assets and expenses,
    /// credits − debits otherwise). i128 because the difference of two i64 totals may not fit.
    pub fn posted_minor(&self) -> i128 {
        normal_balance(self.kind, self.debits_posted, self.credits_posted)
    }
}

fn normal_balance(kind: AccountKind, debits: i64, credits: i64) -> i128 {
    let (d, c) = (i128::from(debits), i128::from(credits));
    if kind.is_debit_normal() { d - c } else { c - d }
}

fn to_balance(raw: RawAccount) -> Result<Balance, LedgerError> {
    let a = raw.into_state()?;
    Ok(Balance {
        account_id: a.id,
        code: a.code,
        kind: a.kind,
        currency: a.currency,
        debits_posted: a.debits_posted,
        credits_posted: a.credits_posted,
        debits_pending: a.debits_pending,
        credits_pending: a.credits_pending,
    })
}

/// The current balances of an account.
pub async fn balance(pool: &LedgerPool, account: AccountId) -> Result<Balance, LedgerError> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id = $1");
    let raw: Option<RawAccount> = on_pool!(pool, p => sqlx::query_as(&sql)
        .bind(account.into_uuid())
        .fetch_optional(p)
        .await?);
    raw.map(to_balance)
        .transpose()?
        .ok_or_else(|| LedgerError::AccountNotFound(account.to_string()))
}

/// The current balances of the account with this code.
pub async fn balance_by_code(pool: &LedgerPool, code: &str) -> Result<Balance, LedgerError> {
    balance(pool, account_id_for_code(code)).await
}

/// Posted balances as of `at_us` (postings with `effective_at_us <= at_us`; pending holds excluded).
pub async fn balance_as_of(
    pool: &LedgerPool,
    account: AccountId,
    at_us: i64,
) -> Result<Balance, LedgerError> {
    let mut b = balance(pool, account).await?;
    let sql = "SELECT \
        CAST(COALESCE(SUM(CASE WHEN NOT is_credit THEN amount_minor ELSE 0 END), 0) AS BIGINT), \
        CAST(COALESCE(SUM(CASE WHEN is_credit THEN amount_minor ELSE 0 END), 0) AS BIGINT) \
        FROM ledger_postings WHERE account_id = $1 AND NOT is_pending AND effective_at_us <= $2";
    let (d, c): (i64, i64) = on_pool!(pool, p => sqlx::query_as(sql)
        .bind(account.into_uuid())
        .bind(at_us)
        .fetch_one(p)
        .await?);
    b.debits_posted = d;
    b.credits_posted = c;
    b.debits_pending = 0;
    b.credits_pending = 0;
    Ok(b)
}

/// One line of a statement: a posting and the account's posted totals right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementLine {
    /// Application order; pass the last one as `after_seq` for the next page.
    pub seq: i64,
    pub entry_id: EntryId,
    pub kind: EntryKind,
    pub reference: Option<Uuid>,
    pub side: Side,
    pub amount_minor: i64,
    /// A hold of a pending entry (does not move the posted balance).
    pub is_pending: bool,
    pub effective_at_us: i64,
    /// Posted balance on the normal side after this line.
    pub running_balance_minor: i128,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementPage {
    pub lines: Vec<StatementLine>,
    /// `Some(seq)` when there may be more lines after this page.
    pub next_after_seq: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct RawLine {
    seq: i64,
    entry_id: Uuid,
    kind: String,
    reference: Option<Uuid>,
    is_credit: bool,
    amount_minor: i64,
    is_pending: bool,
    effective_at_us: i64,
    debits_posted_after: i64,
    credits_posted_after: i64,
}

/// A page of at most `limit` (1..=10,000) postings of an account in application order, after `after_seq`.
pub async fn statement(
    pool: &LedgerPool,
    account: AccountId,
    after_seq: Option<i64>,
    limit: i64,
) -> Result<StatementPage, LedgerError> {
    statement_between(pool, account, None, None, after_seq, limit).await
}

/// Like [`statement`], limited to postings effective in `[from_us, to_us)` (either bound optional).
/// The running balances are still the account's totals after each line.
pub async fn statement_between(
    pool: &LedgerPool,
    account: AccountId,
    from_us: Option<i64>,
    to_us: Option<i64>,
    after_seq: Option<i64>,
    limit: i64,
) -> Result<StatementPage, LedgerError> {
    let b = balance(pool, account).await?;
    let limit = limit.clamp(1, 10_000);
    let sql = "SELECT p.seq, p.entry_id, e.kind, e.reference, p.is_credit, p.amount_minor, \
        p.is_pending, p.effective_at_us, p.debits_posted_after, p.credits_posted_after \
        FROM ledger_postings p JOIN ledger_entries e ON e.id = p.entry_id \
        WHERE p.account_id = $1 AND p.seq > $2 AND p.effective_at_us >= $3 AND p.effective_at_us < $4 \
        ORDER BY p.seq LIMIT $5";
    let raw: Vec<RawLine> = on_pool!(pool, p => sqlx::query_as(sql)
        .bind(account.into_uuid())
        .bind(after_seq.unwrap_or(i64::MIN))
        .bind(from_us.unwrap_or(i64::MIN))
        .bind(to_us.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(p)
        .await?);
    let full = raw.len() as i64 == limit;
    let mut lines = Vec::with_capacity(raw.len());
    for r in raw {
        lines.push(StatementLine {
            seq: r.seq,
            entry_id: EntryId::from_uuid(r.entry_id),
            kind: r.kind.parse()?,
            reference: r.reference,
            side: if r.is_credit {
                Side::Credit
            } else {
                Side::Debit
            },
            amount_minor: r.amount_minor,
            is_pending: r.is_pending,
            effective_at_us: r.effective_at_us,
            running_balance_minor: normal_balance(
                b.kind,
                r.debits_posted_after,
                r.credits_posted_after,
            ),
        });
    }
    let next_after_seq = if full {
        lines.last().map(|l| l.seq)
    } else {
        None
    };
    Ok(StatementPage {
        lines,
        next_after_seq,
    })
}

/// A stored entry with its postings.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: EntryId,
    pub kind: EntryKind,
    pub reference: Option<Uuid>,
    pub phase: String,
    pub pending_id: Option<EntryId>,
    pub metadata: serde_json::Value,
    pub effective_at_us: i64,
    pub created_at_us: i64,
    pub postings: Vec<Posting>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub account_id: AccountId,
    pub account_code: String,
    pub side: Side,
    pub amount_minor: i64,
    pub is_pending: bool,
}

#[derive(sqlx::FromRow)]
struct RawEntryPosting {
    id: Uuid,
    kind: String,
    reference: Option<Uuid>,
    phase: String,
    pending_id: Option<Uuid>,
    metadata: Json<serde_json::Value>,
    effective_at_us: i64,
    created_at_us: i64,
    account_id: Option<Uuid>,
    code: Option<String>,
    is_credit: Option<bool>,
    amount_minor: Option<i64>,
    is_pending: Option<bool>,
}

/// All entries about a payment / refund / settlement, oldest first, with their postings.
pub async fn entries_by_reference(
    pool: &LedgerPool,
    reference: Uuid,
) -> Result<Vec<Entry>, LedgerError> {
    let sql = "SELECT e.id, e.kind, e.reference, e.phase, e.pending_id, e.metadata, \
        e.effective_at_us, e.created_at_us, p.account_id, a.code, p.is_credit, p.amount_minor, \
        p.is_pending \
        FROM ledger_entries e LEFT JOIN ledger_postings p ON p.entry_id = e.id \
        LEFT JOIN ledger_accounts a ON a.id = p.account_id \
        WHERE e.reference = $1 ORDER BY e.created_at_us, e.id, p.leg";
    let raw: Vec<RawEntryPosting> =
        on_pool!(pool, p => sqlx::query_as(sql).bind(reference).fetch_all(p).await?);
    let mut out: Vec<Entry> = Vec::new();
    for r in raw {
        if out.last().is_none_or(|e| e.id.into_uuid() != r.id) {
            out.push(Entry {
                id: EntryId::from_uuid(r.id),
                kind: r.kind.parse()?,
                reference: r.reference,
                phase: r.phase,
                pending_id: r.pending_id.map(EntryId::from_uuid),
                metadata: r.metadata.0,
                effective_at_us: r.effective_at_us,
                created_at_us: r.created_at_us,
                postings: Vec::new(),
            });
        }
        if let (Some(account_id), Some(code), Some(is_credit), Some(amount_minor), Some(is_pending)) = (
            r.account_id,
            r.code,
            r.is_credit,
            r.amount_minor,
            r.is_pending,
        ) && let Some(e) = out.last_mut()
        {
            e.postings.push(Posting {
                account_id: AccountId::from_uuid(account_id),
                account_code: code,
                side: if is_credit { Side::Credit } else { Side::Debit },
                amount_minor,
                is_pending,
            });
        }
    }
    Ok(out)
}

/// Every account's posted totals, and the per-currency sums (debits must equal credits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialBalance {
    pub accounts: Vec<Balance>,
    /// (currency, Σ debits posted, Σ credits posted), as i128 so sums cannot overflow.
    pub totals: Vec<(paymux_model::Currency, i128, i128)>,
}

impl TrialBalance {
    pub fn is_balanced(&self) -> bool {
        self.totals.iter().all(|(_, d, c)| d == c)
    }
}

pub async fn trial_balance(pool: &LedgerPool) -> Result<TrialBalance, LedgerError> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts ORDER BY code");
    let raw: Vec<RawAccount> = on_pool!(pool, p => sqlx::query_as(&sql).fetch_all(p).await?);
    let accounts = raw
        .into_iter()
        .map(to_balance)
        .collect::<Result<Vec<_>, _>>()?;
    let mut totals: std::collections::BTreeMap<paymux_model::Currency, (i128, i128)> =
        Default::default();
    for a in &accounts {
        let t = totals.entry(a.currency).or_default();
        t.0 += i128::from(a.debits_posted);
        t.1 += i128::from(a.credits_posted);
    }
    Ok(TrialBalance {
        accounts,
        totals: totals.into_iter().map(|(c, (d, cr))| (c, d, cr)).collect(),
    })
}
