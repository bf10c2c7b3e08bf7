//! PostgreSQL: every statement of a batch binds whole columns as arrays (`UNNEST`), so a batch costs
//! the same handful of round trips whatever its size. Balance rows are locked with
//! `SELECT … ORDER BY id FOR UPDATE` (sorted: concurrent batches queue instead of deadlocking), and
//! rows are inserted in sorted key order for the same reason.

use std::collections::HashMap;

use sqlx::PgConnection;
use uuid::Uuid;

use super::*;
use crate::engine::{self, Plan};

pub async fn open_accounts(
    conn: &mut PgConnection,
    specs: &[AccountSpec],
    now_us: i64,
) -> Result<(), LedgerError> {
    // `specs` come sorted by id from `engine::needs`.
    let ids: Vec<Uuid> = specs.iter().map(|s| s.id().into_uuid()).collect();
    let codes: Vec<String> = specs.iter().map(|s| s.code.clone()).collect();
    let kinds: Vec<&str> = specs.iter().map(|s| s.kind.as_str()).collect();
    let currencies: Vec<&str> = specs.iter().map(|s| s.currency.code()).collect();
    let flags: Vec<i32> = specs.iter().map(|s| s.flags.bits()).collect();
    sqlx::query(
        "INSERT INTO ledger_accounts (id, code, kind, currency, flags, created_at_us) \
         SELECT id, code, kind, currency, flags, $6 \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int4[]) \
              AS v(id, code, kind, currency, flags) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&codes)
    .bind(&kinds)
    .bind(&currencies)
    .bind(&flags)
    .bind(now_us)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Locks the accounts (sorted ids) for the rest of the transaction and reads them.
pub async fn lock_accounts(
    conn: &mut PgConnection,
    sorted_ids: &[Uuid],
) -> Result<Vec<RawAccount>, LedgerError> {
    Ok(sqlx::query_as::<_, RawAccount>(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    ))
    .bind(sorted_ids)
    .fetch_all(&mut *conn)
    .await?)
}

pub async fn load_heads(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<RawHead>, LedgerError> {
    Ok(sqlx::query_as::<_, RawHead>(&format!(
        "SELECT {HEAD_COLUMNS} FROM ledger_entries WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?)
}

pub async fn load_legs(
    conn: &mut PgConnection,
    pending_ids: &[Uuid],
) -> Result<Vec<RawLeg>, LedgerError> {
    Ok(sqlx::query_as::<_, RawLeg>(
        "SELECT po.entry_id, po.account_id, po.is_credit, po.amount_minor \
         FROM ledger_pending p JOIN ledger_postings po ON po.entry_id = p.entry_id \
         WHERE p.entry_id = ANY($1) ORDER BY po.entry_id, po.leg",
    )
    .bind(pending_ids)
    .fetch_all(&mut *conn)
    .await?)
}

pub async fn load_pendings(
    conn: &mut PgConnection,
    pending_ids: &[Uuid],
) -> Result<Vec<RawPending>, LedgerError> {
    Ok(sqlx::query_as::<_, RawPending>(
        "SELECT entry_id, timeout_at_us, state FROM ledger_pending WHERE entry_id = ANY($1)",
    )
    .bind(pending_ids)
    .fetch_all(&mut *conn)
    .await?)
}

pub async fn write(conn: &mut PgConnection, plan: &Plan) -> Result<(), LedgerError> {
    if !plan.entries.is_empty() {
        let mut rows: Vec<&engine::EntryRow> = plan.entries.iter().collect();
        rows.sort_by_key(|e| e.id);
        sqlx::query(
            "INSERT INTO ledger_entries (id, phase, pending_id, timeout_ms, kind, reference, \
             effective_at_us, metadata, postings_digest, created_at_us) \
             SELECT id, phase, pending_id, timeout_ms, kind, reference, effective_at_us, \
                    metadata::jsonb, postings_digest, created_at_us \
             FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::int8[], $5::text[], $6::uuid[], \
                         $7::int8[], $8::text[], $9::uuid[], $10::int8[]) \
                  AS v(id, phase, pending_id, timeout_ms, kind, reference, effective_at_us, \
                       metadata, postings_digest, created_at_us)",
        )
        .bind(rows.iter().map(|e| e.id).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|e| e.head.phase.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|e| e.head.pending_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|e| e.head.timeout_ms).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|e| e.head.kind.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|e| e.head.reference).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|e| e.head.effective_at_us)
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|e| e.head.metadata.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|e| e.head.postings_digest)
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|e| e.created_at_us).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    if !plan.postings.is_empty() {
        // Application order: `seq` follows it, so running balances read back in order.
        let p = &plan.postings;
        sqlx::query(
            "INSERT INTO ledger_postings (entry_id, leg, account_id, is_credit, amount_minor, \
             is_pending, effective_at_us, debits_posted_after, credits_posted_after) \
             SELECT entry_id, leg, account_id, is_credit, amount_minor, is_pending, effective_at_us, \
                    dpa, cpa FROM UNNEST($1::uuid[], $2::int2[], $3::uuid[], $4::bool[], $5::int8[], \
                                  $6::bool[], $7::int8[], $8::int8[], $9::int8[]) \
             WITH ORDINALITY AS v(entry_id, leg, account_id, is_credit, amount_minor, \
                  is_pending, effective_at_us, dpa, cpa, ord) ORDER BY ord",
        )
        .bind(p.iter().map(|r| r.entry_id).collect::<Vec<_>>())
        .bind(p.iter().map(|r| r.leg).collect::<Vec<_>>())
        .bind(p.iter().map(|r| r.account_id).collect::<Vec<_>>())
        .bind(p.iter().map(|r| r.is_credit).collect::<Vec<_>>())
        .bind(p.iter().map(|r| r.amount_minor).collect::<Vec<_>>())
        .bind(p.iter().map(|r| r.is_pending).collect::<Vec<_>>())
        .bind(p.iter().map(|r| r.effective_at_us).collect::<Vec<_>>())
        .bind(p.iter().map(|r| r.debits_posted_after).collect::<Vec<_>>())
        .bind(p.iter().map(|r| r.credits_posted_after).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    if !plan.pending_inserts.is_empty() {
        let mut rows = plan.pending_inserts.clone();
        rows.sort_unstable();
        sqlx::query(
            "INSERT INTO ledger_pending (entry_id, timeout_at_us, state) \
             SELECT id, t, 0 FROM UNNEST($1::uuid[], $2::int8[]) AS v(id, t)",
        )
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    if !plan.pending_updates.is_empty() {
        // A pending entry may be expired and then resolved in one batch: keep the last word.
        let mut last: HashMap<Uuid, &engine::PendingUpdate> = HashMap::new();
        for u in &plan.pending_updates {
            last.insert(u.entry_id, u);
        }
        let mut rows: Vec<&engine::PendingUpdate> = last.into_values().collect();
        rows.sort_by_key(|u| u.entry_id);
        sqlx::query(
            "UPDATE ledger_pending p SET state = v.state, resolved_by = v.resolved_by, \
             resolved_at_us = v.resolved_at_us \
             FROM UNNEST($1::uuid[], $2::int2[], $3::uuid[], $4::int8[]) \
                  AS v(entry_id, state, resolved_by, resolved_at_us) \
             WHERE p.entry_id = v.entry_id",
        )
        .bind(rows.iter().map(|u| u.entry_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|u| u.state.code()).collect::<Vec<_>>())
        .bind(rows.iter().map(|u| u.resolved_by).collect::<Vec<_>>())
        .bind(rows.iter().map(|u| u.resolved_at_us).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    if !plan.accounts.is_empty() {
        let a = &plan.accounts;
        sqlx::query(
            "UPDATE ledger_accounts a SET debits_posted = v.dp, credits_posted = v.cp, \
             debits_pending = v.dpe, credits_pending = v.cpe \
             FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::int8[], $5::int8[]) \
                  AS v(id, dp, cp, dpe, cpe) WHERE a.id = v.id",
        )
        .bind(a.iter().map(|r| r.id.into_uuid()).collect::<Vec<_>>())
        .bind(a.iter().map(|r| r.debits_posted).collect::<Vec<_>>())
        .bind(a.iter().map(|r| r.credits_posted).collect::<Vec<_>>())
        .bind(a.iter().map(|r| r.debits_pending).collect::<Vec<_>>())
        .bind(a.iter().map(|r| r.credits_pending).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The posting path on one PostgreSQL connection inside the caller's transaction.
pub async fn post(
    conn: &mut PgConnection,
    entries: &[NewEntry],
    opts: PostOptions,
) -> Result<Vec<EntryResult>, LedgerError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let now = opts.now_us.unwrap_or_else(now_us);
    let needs = engine::needs(entries);
    if !needs.specs.is_empty() {
        open_accounts(conn, &needs.specs, now).await?;
    }
    let legs = if needs.pending_ids.is_empty() {
        Vec::new()
    } else {
        load_legs(conn, &needs.pending_ids).await?
    };
    let lock = lock_set(&needs.account_ids, &legs);
    let accounts = accounts_map(lock_accounts(conn, &lock).await?)?;
    // Whoever changes a pending entry's state holds its accounts' locks, which we now hold.
    let pendings = if needs.pending_ids.is_empty() {
        HashMap::new()
    } else {
        pendings_map(legs, load_pendings(conn, &needs.pending_ids).await?)?
    };
    let existing = heads_map(load_heads(conn, &needs.entry_ids).await?);
    let plan = engine::plan(entries, accounts, pendings, existing, opts, now);
    write(conn, &plan).await?;
    Ok(plan.results)
}

/// Expires up to `limit` open pending entries whose timeout is at or before `now_us`.
pub async fn expire_due(
    conn: &mut PgConnection,
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
    let accounts = accounts_map(lock_accounts(conn, &lock).await?)?;
    let pendings = pendings_map(legs, load_pendings(conn, &ids).await?)?;
    let plan = engine::plan_expiry(accounts, pendings, now_us)?;
    write(conn, &plan).await?;
    Ok(plan.pending_updates.len())
}
