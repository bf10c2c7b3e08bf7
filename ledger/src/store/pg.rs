//! PostgreSQL: every statement of a batch binds whole columns as arrays (`UNNEST`), so a batch costs
//! the same handful of round trips whatever its size. Balance rows are locked with
//! `SELECT … ORDER BY id FOR UPDATE` (sorted: concurrent batches queue instead of deadlocking), and
//! rows are inserted in sorted key order for the same reason.

use std::collections::HashMap;

use sqlx::PgConnection;
use uuid::Uuid;

use super::copy::CopyRows;
use super::*;
use crate::engine::{self, Plan};

const COPY_ENTRIES: &str = "COPY ledger_entries (id, phase, pending_id, timeout_ms, kind, reference, \
     effective_at_us, metadata, postings_digest, created_at_us) FROM STDIN (FORMAT binary)";
const COPY_POSTINGS: &str = "COPY ledger_postings (entry_id, leg, account_id, is_credit, amount_minor, \
     is_pending, effective_at_us, debits_posted_after, credits_posted_after) FROM STDIN (FORMAT binary)";
const COPY_PENDING: &str =
    "COPY ledger_pending (entry_id, timeout_at_us, state) FROM STDIN (FORMAT binary)";

/// The JSON text of `value` appended to `out` (an empty object, the common case, without the
/// serializer).
fn json_text(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) if map.is_empty() => out.push_str("{}"),
        other => out.push_str(&other.to_string()),
    }
}

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
        // Sorted by id: concurrent batches meet on the primary key in the same order.
        let mut rows: Vec<&engine::EntryRow> = plan.entries.iter().collect();
        rows.sort_unstable_by_key(|e| e.id);
        let mut copy = CopyRows::with_capacity(rows.len(), 160);
        let mut metadata = String::new();
        for e in rows {
            let h = &e.head;
            metadata.clear();
            json_text(&h.metadata, &mut metadata);
            copy.row(10)
                .uuid(e.id)
                .text(&h.phase)
                .opt_uuid(h.pending_id)
                .opt_i64(h.timeout_ms)
                .text(&h.kind)
                .opt_uuid(h.reference)
                .i64(h.effective_at_us)
                .jsonb(&metadata)
                .uuid(h.postings_digest)
                .i64(e.created_at_us);
        }
        copy.send(conn, COPY_ENTRIES).await?;
    }
    if !plan.postings.is_empty() {
        // Application order: `seq` follows it, so running balances read back in order.
        let mut copy = CopyRows::with_capacity(plan.postings.len(), 120);
        for p in &plan.postings {
            copy.row(9)
                .uuid(p.entry_id)
                .i16(p.leg)
                .uuid(p.account_id)
                .bool(p.is_credit)
                .i64(p.amount_minor)
                .bool(p.is_pending)
                .i64(p.effective_at_us)
                .i64(p.debits_posted_after)
                .i64(p.credits_posted_after);
        }
        copy.send(conn, COPY_POSTINGS).await?;
    }
    if !plan.pending_inserts.is_empty() {
        let mut rows = plan.pending_inserts.clone();
        rows.sort_unstable();
        let mut copy = CopyRows::with_capacity(rows.len(), 40);
        for (id, timeout_at_us) in rows {
            copy.row(3)
                .uuid(id)
                .i64(timeout_at_us)
                .i16(engine::PendingState::Open.code());
        }
        copy.send(conn, COPY_PENDING).await?;
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
    Ok(post_known(conn, entries, opts, None).await?.results)
}

/// [`post`] for the standalone [`crate::Ledger`], which retries a failed batch as a whole: accounts
/// `known` to exist are not opened again, and the stored heads of the entries are read before the
/// balance rows are locked, outside the part of the batch that other batches on the same accounts
/// wait for. (An entry inserted meanwhile by another writer makes this batch's insert fail with a
/// unique violation, a retryable error; the retry reads it and answers `exists`.)
pub async fn post_known(
    conn: &mut PgConnection,
    entries: &[NewEntry],
    opts: PostOptions,
    known: Option<&KnownAccounts>,
) -> Result<Posted, LedgerError> {
    if entries.is_empty() {
        return Ok(Posted {
            results: Vec::new(),
            accounts: Vec::new(),
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
    let early_heads = if known.is_some() {
        Some(heads_map(load_heads(conn, &needs.entry_ids).await?))
    } else {
        None
    };
    let accounts = accounts_map(lock_accounts(conn, &lock).await?)?;
    let found: Vec<Uuid> = accounts.keys().map(|a| a.into_uuid()).collect();
    // Whoever changes a pending entry's state holds its accounts' locks, which we now hold.
    let pendings = if needs.pending_ids.is_empty() {
        HashMap::new()
    } else {
        pendings_map(legs, load_pendings(conn, &needs.pending_ids).await?)?
    };
    let existing = match early_heads {
        Some(heads) => heads,
        None => heads_map(load_heads(conn, &needs.entry_ids).await?),
    };
    let plan = engine::plan(entries, accounts, pendings, existing, opts, now);
    write(conn, &plan).await?;
    Ok(Posted {
        results: plan.results,
        accounts: found,
    })
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
