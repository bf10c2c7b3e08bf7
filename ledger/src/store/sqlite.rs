//! SQLite: one writer at a time, so "locking" is the caller's `BEGIN IMMEDIATE` (or the batcher's
//! single connection); statements are multi-row `INSERT … VALUES (…), (…)` in chunks below
//! SQLite's bound-parameter limit.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::*;
use crate::engine::{self, Plan};

/// Rows per multi-row statement (× at most 10 columns stays far below 32,766 parameters).
const CHUNK_ROWS: usize = 1000;

pub async fn open_accounts(
    conn: &mut SqliteConnection,
    specs: &[AccountSpec],
    now_us: i64,
) -> Result<(), LedgerError> {
    for chunk in specs.chunks(CHUNK_ROWS) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO ledger_accounts (id, code, kind, currency, flags, created_at_us) ",
        );
        qb.push_values(chunk, |mut b, s| {
            b.push_bind(s.id().into_uuid())
                .push_bind(s.code.clone())
                .push_bind(s.kind.as_str())
                .push_bind(s.currency.code())
                .push_bind(s.flags.bits())
                .push_bind(now_us);
        });
        qb.push(" ON CONFLICT DO NOTHING");
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

fn push_in_list(qb: &mut QueryBuilder<'_, Sqlite>, ids: &[Uuid]) {
    qb.push("(");
    let mut sep = qb.separated(", ");
    for id in ids {
        sep.push_bind(*id);
    }
    qb.push(")");
}

pub async fn load_accounts(
    conn: &mut SqliteConnection,
    ids: &[Uuid],
) -> Result<Vec<RawAccount>, LedgerError> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK_ROWS * 4) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id IN "
        ));
        push_in_list(&mut qb, chunk);
        out.extend(
            qb.build_query_as::<RawAccount>()
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    Ok(out)
}

pub async fn load_heads(
    conn: &mut SqliteConnection,
    ids: &[Uuid],
) -> Result<Vec<RawHead>, LedgerError> {
    let mut out = Vec::new();
    for chunk in ids.chunks(CHUNK_ROWS * 4) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT {HEAD_COLUMNS} FROM ledger_entries WHERE id IN "
        ));
        push_in_list(&mut qb, chunk);
        out.extend(qb.build_query_as::<RawHead>().fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

pub async fn load_legs(
    conn: &mut SqliteConnection,
    pending_ids: &[Uuid],
) -> Result<Vec<RawLeg>, LedgerError> {
    let mut out = Vec::new();
    for chunk in pending_ids.chunks(CHUNK_ROWS * 4) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT po.entry_id, po.account_id, po.is_credit, po.amount_minor \
             FROM ledger_pending p JOIN ledger_postings po ON po.entry_id = p.entry_id \
             WHERE p.entry_id IN ",
        );
        push_in_list(&mut qb, chunk);
        qb.push(" ORDER BY po.entry_id, po.leg");
        out.extend(qb.build_query_as::<RawLeg>().fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

pub async fn load_pendings(
    conn: &mut SqliteConnection,
    pending_ids: &[Uuid],
) -> Result<Vec<RawPending>, LedgerError> {
    let mut out = Vec::new();
    for chunk in pending_ids.chunks(CHUNK_ROWS * 4) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT entry_id, timeout_at_us, state FROM ledger_pending WHERE entry_id IN ",
        );
        push_in_list(&mut qb, chunk);
        out.extend(
            qb.build_query_as::<RawPending>()
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    Ok(out)
}

pub async fn write(conn: &mut SqliteConnection, plan: &Plan) -> Result<(), LedgerError> {
    for chunk in plan.entries.chunks(CHUNK_ROWS) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO ledger_entries (id, phase, pending_id, timeout_ms, kind, reference, \
             effective_at_us, metadata, postings_digest, created_at_us) ",
        );
        qb.push_values(chunk, |mut b, e| {
            b.push_bind(e.id)
                .push_bind(e.head.phase.clone())
                .push_bind(e.head.pending_id)
                .push_bind(e.head.timeout_ms)
                .push_bind(e.head.kind.clone())
                .push_bind(e.head.reference)
                .push_bind(e.head.effective_at_us)
                .push_bind(e.head.metadata.to_string())
                .push_bind(e.head.postings_digest)
                .push_bind(e.created_at_us);
        });
        qb.build().execute(&mut *conn).await?;
    }
    for chunk in plan.postings.chunks(CHUNK_ROWS) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO ledger_postings (entry_id, leg, account_id, is_credit, amount_minor, \
             is_pending, effective_at_us, debits_posted_after, credits_posted_after) ",
        );
        qb.push_values(chunk, |mut b, p| {
            b.push_bind(p.entry_id)
                .push_bind(p.leg)
                .push_bind(p.account_id)
                .push_bind(p.is_credit)
                .push_bind(p.amount_minor)
                .push_bind(p.is_pending)
                .push_bind(p.effective_at_us)
                .push_bind(p.debits_posted_after)
                .push_bind(p.credits_posted_after);
        });
        qb.build().execute(&mut *conn).await?;
    }
    for chunk in plan.pending_inserts.chunks(CHUNK_ROWS) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO ledger_pending (entry_id, timeout_at_us, state) ");
        qb.push_values(chunk, |mut b, (id, t)| {
            b.push_bind(*id).push_bind(*t).push_bind(0i16);
        });
        qb.build().execute(&mut *conn).await?;
    }
    for chunk in plan.pending_updates.chunks(CHUNK_ROWS) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("WITH v(entry_id, state, resolved_by, resolved_at_us) AS (");
        qb.push_values(chunk, |mut b, u| {
            b.push_bind(u.entry_id)
                .push_bind(u.state.code())
                .push_bind(u.resolved_by)
                .push_bind(u.resolved_at_us);
        });
        qb.push(
            ") UPDATE ledger_pending SET state = v.state, resolved_by = v.resolved_by, \
             resolved_at_us = v.resolved_at_us FROM v WHERE ledger_pending.entry_id = v.entry_id",
        );
        qb.build().execute(&mut *conn).await?;
    }
    for chunk in plan.accounts.chunks(CHUNK_ROWS) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("WITH v(id, dp, cp, dpe, cpe) AS (");
        qb.push_values(chunk, |mut b, a| {
            b.push_bind(a.id.into_uuid())
                .push_bind(a.debits_posted)
                .push_bind(a.credits_posted)
                .push_bind(a.debits_pending)
                .push_bind(a.credits_pending);
        });
        qb.push(
            ") UPDATE ledger_accounts SET debits_posted = v.dp, credits_posted = v.cp, \
             debits_pending = v.dpe, credits_pending = v.cpe FROM v WHERE ledger_accounts.id = v.id",
        );
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// The posting path on one SQLite connection inside the caller's transaction.
pub async fn post(
    conn: &mut SqliteConnection,
    entries: &[NewEntry],
    opts: PostOptions,
) -> Result<Vec<EntryResult>, LedgerError> {
    Ok(post_known(conn, entries, opts, None).await?.results)
}

/// [`post`], skipping the opening of accounts `known` to exist.
pub async fn post_known(
    conn: &mut SqliteConnection,
    entries: &[NewEntry],
    opts: PostOptions,
    known: Option<&KnownAccounts>,
) -> Result<Posted, LedgerError> {
    if entries.is_empty() {
        return Ok(Posted {
            results: Vec::new(),
            accounts: Vec::new(),
            balances: Vec::new(),
        });
    }
    let now = opts.now_us.unwrap_or_else(now_us);
    let mut needs = engine::needs(entries);
    if let Some(known) = known {
        needs.specs = known.unknown(std::mem::take(&mut needs.specs));
    }
    if !needs.specs.is_empty() {
        open_accounts(conn, &needs.specs, now).await?;
    }
    let legs = if needs.pending_ids.is_empty() {
        Vec::new()
    } else {
        load_legs(conn, &needs.pending_ids).await?
    };
    let lock = lock_set(&needs.account_ids, &legs);
    let accounts = accounts_map(load_accounts(conn, &lock).await?)?;
    let found: Vec<Uuid> = accounts.keys().map(|a| a.into_uuid()).collect();
    let pendings = if needs.pending_ids.is_empty() {
        HashMap::new()
    } else {
        pendings_map(legs, load_pendings(conn, &needs.pending_ids).await?)?
    };
    let existing = heads_map(load_heads(conn, &needs.entry_ids).await?);
    let plan = engine::plan(entries, accounts, pendings, existing, opts, now);
    write(conn, &plan).await?;
    Ok(Posted {
        results: plan.results,
        accounts: found,
        balances: Vec::new(),
    })
}

/// Expires up to `limit` open pending entries whose timeout is at or before `now_us`.
pub async fn expire_due(
    conn: &mut SqliteConnection,
    now_us: i64,
    limit: i64,
) -> Result<usize, LedgerError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT entry_id FROM ledger_pending WHERE state = 0 AND timeout_at_us <= $1 \
         ORDER BY timeout_at_us LIMIT $2",
    )
    .bind(now_us)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let legs = load_legs(conn, &ids).await?;
    let lock = lock_set(&[], &legs);
    let accounts = accounts_map(load_accounts(conn, &lock).await?)?;
    let pendings = pendings_map(legs, load_pendings(conn, &ids).await?)?;
    let plan = engine::plan_expiry(accounts, pendings, now_us)?;
    write(conn, &plan).await?;
    Ok(plan.pending_updates.len())
}
