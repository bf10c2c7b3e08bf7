//! PostgreSQL: every statement of a batch binds whole columns as arrays (`UNNEST`), so a batch costs
//! the same handful of round trips whatever its size. Balance rows are locked with
//! `SELECT … ORDER BY id FOR UPDATE` (sorted: concurrent batches queue instead of deadlocking), and
//! rows are inserted in sorted key order for the same reason.

use std::collections::HashMap;

use paymux_model::AccountId;
use sqlx::PgConnection;
use uuid::Uuid;

use super::copy::CopyRows;
use super::*;
use crate::engine::{self, AccountState, Plan};

const COPY_ENTRIES: &str = "COPY ledger_entries (id, phase, pending_id, timeout_ms, kind, reference, \
     effective_at_us, metadata, postings_digest, created_at_us) FROM STDIN (FORMAT binary)";
const COPY_POSTINGS: &str = "COPY ledger_postings (entry_id, leg, account_id, is_credit, amount_minor, \
     is_pending, effective_at_us, debits_posted_after, credits_posted_after) FROM STDIN (FORMAT binary)";
const COPY_POSTINGS_WITH_SEQ: &str = "COPY ledger_postings (entry_id, leg, account_id, is_credit, \
     amount_minor, is_pending, effective_at_us, debits_posted_after, credits_posted_after, seq) \
     FROM STDIN (FORMAT binary)";
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
        "SELECT {PG_ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE"
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
    insert_rows(conn, plan, None).await?;
    update_pendings(conn, plan, None).await?;
    if !plan.accounts.is_empty() {
        update_balances(conn, &plan.accounts, None).await?;
    }
    Ok(())
}

/// Inserts the plan's entries, postings and new holds (binary `COPY`). `seqs`, one per posting in
/// application order, sets the postings' `seq` explicitly (the pipelined [`crate::Ledger`] reserves
/// them in planning order); without it the column's identity assigns them.
pub async fn insert_rows(
    conn: &mut PgConnection,
    plan: &Plan,
    seqs: Option<&[i64]>,
) -> Result<(), LedgerError> {
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
        let mut copy = CopyRows::with_capacity(plan.postings.len(), 132);
        let fields = if seqs.is_some() { 10 } else { 9 };
        for (i, p) in plan.postings.iter().enumerate() {
            copy.row(fields)
                .uuid(p.entry_id)
                .i16(p.leg)
                .uuid(p.account_id)
                .bool(p.is_credit)
                .i64(p.amount_minor)
                .bool(p.is_pending)
                .i64(p.effective_at_us)
                .i64(p.debits_posted_after)
                .i64(p.credits_posted_after);
            if let Some(seqs) = seqs {
                copy.i64(seqs[i]);
            }
        }
        let statement = if seqs.is_some() {
            COPY_POSTINGS_WITH_SEQ
        } else {
            COPY_POSTINGS
        };
        copy.send(conn, statement).await?;
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
    Ok(())
}

/// Writes the plan's changes of pending entries' states. With `expected` (each entry's state as
/// the plan read it; absent: created by this batch, so open), a row changes only if it still has
/// that state. Returns whether every row changed.
pub async fn update_pendings(
    conn: &mut PgConnection,
    plan: &Plan,
    expected: Option<&HashMap<Uuid, engine::PendingState>>,
) -> Result<bool, LedgerError> {
    if plan.pending_updates.is_empty() {
        return Ok(true);
    }
    // A pending entry may be expired and then resolved in one batch: keep the last word.
    let mut last: HashMap<Uuid, &engine::PendingUpdate> = HashMap::new();
    for u in &plan.pending_updates {
        last.insert(u.entry_id, u);
    }
    let mut rows: Vec<&engine::PendingUpdate> = last.into_values().collect();
    rows.sort_by_key(|u| u.entry_id);
    let ids: Vec<Uuid> = rows.iter().map(|u| u.entry_id).collect();
    let states: Vec<i16> = rows.iter().map(|u| u.state.code()).collect();
    let by: Vec<Option<Uuid>> = rows.iter().map(|u| u.resolved_by).collect();
    let at: Vec<i64> = rows.iter().map(|u| u.resolved_at_us).collect();
    // NULL: no expectation, the row changes whatever its state.
    let was: Vec<Option<i16>> = ids
        .iter()
        .map(|id| {
            expected.map(|e| {
                e.get(id)
                    .copied()
                    .unwrap_or(engine::PendingState::Open)
                    .code()
            })
        })
        .collect();
    let done = sqlx::query(
        "UPDATE ledger_pending p SET state = v.state, resolved_by = v.resolved_by, \
         resolved_at_us = v.resolved_at_us \
         FROM UNNEST($1::uuid[], $2::int2[], $3::uuid[], $4::int8[], $5::int2[]) \
              AS v(entry_id, state, resolved_by, resolved_at_us, was) \
         WHERE p.entry_id = v.entry_id AND (v.was IS NULL OR p.state = v.was)",
    )
    .bind(&ids)
    .bind(&states)
    .bind(&by)
    .bind(&at)
    .bind(&was)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(done == ids.len() as u64)
}

/// A row's balances and version: debits posted, credits posted, debits pending, credits pending,
/// version.
pub type Balances = [i64; 5];

pub fn balances(a: &engine::AccountState) -> Balances {
    [
        a.debits_posted,
        a.credits_posted,
        a.debits_pending,
        a.credits_pending,
        a.version,
    ]
}

/// Writes each account's balances once and bumps its version. With `expected` (one per account,
/// in the same order), the write is a check as well: under READ COMMITTED an `UPDATE` waits for a
/// concurrent writer of a row and then works on the row as that writer committed it, so each row is
/// compared with its expected balances and version there (not in the `WHERE`, which would compare
/// against the statement's snapshot); a row that differs gets `debits_posted = -1`, a value no real
/// balance has, and the caller, told that not every row matched, rolls the transaction back.
/// Returns whether every row was written (and matched).
pub async fn update_balances(
    conn: &mut PgConnection,
    accounts: &[engine::AccountState],
    expected: Option<&[Balances]>,
) -> Result<bool, LedgerError> {
    let a = accounts;
    let ids: Vec<Uuid> = a.iter().map(|r| r.id.into_uuid()).collect();
    // Column `i` of the expectations; NULLs without them (the row is written whatever it holds).
    let was = |i: usize| -> Vec<Option<i64>> {
        match expected {
            Some(was) => was.iter().map(|b| Some(b[i])).collect(),
            None => vec![None; a.len()],
        }
    };
    let (matched, total): (i64, i64) = sqlx::query_as(
        "WITH u AS ( \
           UPDATE ledger_accounts a SET \
             debits_posted = CASE WHEN v.wv IS NULL OR (a.version = v.wv \
               AND a.debits_posted = v.wdp AND a.credits_posted = v.wcp \
               AND a.debits_pending = v.wdpe AND a.credits_pending = v.wcpe) \
               THEN v.dp ELSE -1 END, \
             credits_posted = v.cp, debits_pending = v.dpe, credits_pending = v.cpe, \
             version = a.version + 1 \
           FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], \
                       $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[]) \
                AS v(id, dp, cp, dpe, cpe, wdp, wcp, wdpe, wcpe, wv) \
           WHERE a.id = v.id RETURNING a.debits_posted) \
         SELECT count(*) FILTER (WHERE debits_posted >= 0), count(*) FROM u",
    )
    .bind(&ids)
    .bind(a.iter().map(|r| r.debits_posted).collect::<Vec<_>>())
    .bind(a.iter().map(|r| r.credits_posted).collect::<Vec<_>>())
    .bind(a.iter().map(|r| r.debits_pending).collect::<Vec<_>>())
    .bind(a.iter().map(|r| r.credits_pending).collect::<Vec<_>>())
    .bind(was(0))
    .bind(was(1))
    .bind(was(2))
    .bind(was(3))
    .bind(was(4))
    .fetch_one(&mut *conn)
    .await?;
    Ok(matched == total && total == ids.len() as i64)
}

/// Reads accounts without locking them (the pipelined [`crate::Ledger`] plans against these and
/// verifies them when it writes).
pub async fn read_accounts(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<RawAccount>, LedgerError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as::<_, RawAccount>(&format!(
        "SELECT {PG_ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?)
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
    // Kept for planning again (below): the same legs, so the same locks cover them.
    let legs_again = (known.is_some() && !legs.is_empty()).then(|| legs.clone());
    let early_heads = if known.is_some() {
        Some(heads_map(load_heads(conn, &needs.entry_ids).await?))
    } else {
        None
    };
    let accounts = accounts_map(lock_accounts(conn, &lock).await?)?;
    let found: Vec<Uuid> = accounts.keys().map(|a| a.into_uuid()).collect();
    // The standalone ledger remembers every locked account's balances after the batch.
    let mut locked: HashMap<AccountId, AccountState> = if known.is_some() {
        accounts.clone()
    } else {
        HashMap::new()
    };
    // Whoever changes a pending entry's state holds its accounts' locks, which we now hold.
    let pendings = if needs.pending_ids.is_empty() {
        HashMap::new()
    } else {
        pendings_map(legs, load_pendings(conn, &needs.pending_ids).await?)?
    };
    let read_early = early_heads.is_some();
    let existing = match early_heads {
        Some(heads) => heads,
        None => heads_map(load_heads(conn, &needs.entry_ids).await?),
    };
    let mut plan = engine::plan(entries, accounts, pendings, existing, opts, now);
    // Heads read before the locks may miss an entry another writer committed while this batch
    // waited for them; an entry planned `created` then fails its insert (a retryable unique
    // violation), but one rejected (the other copy spent the balance it needed, posted the
    // pending entry it names) would be answered wrongly. Rejections are planned again from
    // everything read anew under the locks.
    if read_early && plan.results.iter().any(|r| !r.is_ok()) {
        let accounts = accounts_map(lock_accounts(conn, &lock).await?)?;
        // A pending entry whose legs changed meanwhile is a retryable concurrent change here.
        let pendings = match legs_again {
            Some(legs) => pendings_map(legs, load_pendings(conn, &needs.pending_ids).await?)?,
            None => HashMap::new(),
        };
        let existing = heads_map(load_heads(conn, &needs.entry_ids).await?);
        plan = engine::plan(entries, accounts, pendings, existing, opts, now);
    }
    write(conn, &plan).await?;
    for a in &plan.accounts {
        if let Some(slot) = locked.get_mut(&a.id) {
            // `write` bumped the version of each account it wrote.
            *slot = AccountState {
                version: slot.version + 1,
                ..a.clone()
            };
        }
    }
    Ok(Posted {
        results: plan.results,
        accounts: found,
        balances: locked.into_values().collect(),
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
