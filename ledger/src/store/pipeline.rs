//! The standalone [`crate::Ledger`]'s PostgreSQL path: batches take their balance locks last.
//!
//! A batch that locks its balance rows first holds them while its entries and postings are written,
//! and every other batch on those accounts waits that long. Here a batch plans against the balances
//! its predecessors in this process planned (the ledger is their only writer as long as nobody else
//! posts to those accounts), writes its entries and postings, and only then locks and updates the
//! balance rows — checking, on the committed version of each row, that it holds the balances the
//! batch planned against. Batches pass two turns in the order they were gathered:
//!
//! 1. **plan**: read balances from [`Planned`] (or, for accounts no batch here has planned, from the
//!    database), apply the entries in memory, reserve the postings' `seq` values (so `seq` stays
//!    the order in which postings were applied), record the balances the batch leaves;
//! 2. **lock**: update the balance rows once the previous batch holds all of its rows (so batches
//!    of this process never wait for each other in a cycle), then commit.
//!
//! Everything between the turns — inserting entries, postings and holds — overlaps with the
//! previous batch's update and commit. When a check fails (another writer changed an account, or
//! an earlier batch failed), the batch rolls back and is posted again the classic way (locks
//! first), as is a batch that names an entry or a pending entry a batch in flight also names. After
//! a failed check the next 32 batches lock first too: another writer posting to the same accounts
//! would make most of them fail theirs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use paymux_model::AccountId;
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::pg::{self, Balances};
use super::*;
use crate::engine::{self, AccountState, PendingState};

/// What this process's batches planned: each account's balances after the latest batch that
/// planned it (with that batch's number), and the entry and pending ids of batches in flight.
#[derive(Debug)]
pub struct Planned {
    inner: Mutex<Inner>,
    max_accounts: usize,
    stats: Counters,
    /// Batches numbered up to this one lock first: a check failed shortly before, so another
    /// writer is posting to the same accounts and planning ahead would mostly be wasted.
    locks_first_through: AtomicU64,
}

/// Batches that lock first after a failed check, before planning ahead is tried again.
const LOCKS_FIRST_AFTER_FAILED_CHECK: u64 = 32;

#[derive(Debug, Default)]
struct Counters {
    locked_last: AtomicU64,
    locked_first: AtomicU64,
    checks_failed: AtomicU64,
}

/// How the pipelined batches went, since the ledger started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Batches committed with their locks taken last.
    pub locked_last: u64,
    /// Batches posted locks-first because they named an entry or a pending entry that a batch
    /// in flight also named (or a pending entry not found), or because a check failed during the
    /// previous 32 batches (another writer is posting to the same accounts).
    pub locked_first: u64,
    /// Batches whose check found balances other than those planned against, rolled back and
    /// posted again locks-first.
    pub checks_failed: u64,
}

#[derive(Debug, Default)]
struct Inner {
    accounts: HashMap<AccountId, (AccountState, u64)>,
    in_flight: HashMap<Uuid, u64>,
}

impl Planned {
    /// Remembers at most `max_accounts` accounts; beyond that it starts over (accounts are then
    /// read from the database again).
    pub fn new(max_accounts: usize) -> Planned {
        Planned {
            inner: Mutex::default(),
            max_accounts,
            stats: Counters::default(),
            locks_first_through: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            locked_last: self.stats.locked_last.load(Ordering::Relaxed),
            locked_first: self.stats.locked_first.load(Ordering::Relaxed),
            checks_failed: self.stats.checks_failed.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ids among `ids` whose balances no batch here has planned.
    fn unplanned(&self, ids: &[Uuid]) -> Vec<Uuid> {
        let inner = self.lock();
        ids.iter()
            .copied()
            .filter(|id| !inner.accounts.contains_key(&AccountId::from_uuid(*id)))
            .collect()
    }

    /// Overlays the planned balances on `accounts`; returns the ids of `ids` found in neither.
    fn overlay(&self, ids: &[Uuid], accounts: &mut HashMap<AccountId, AccountState>) -> Vec<Uuid> {
        let inner = self.lock();
        let mut missing = Vec::new();
        for id in ids {
            let id = AccountId::from_uuid(*id);
            match inner.accounts.get(&id) {
                Some((state, _)) => {
                    accounts.insert(id, state.clone());
                }
                None if accounts.contains_key(&id) => {}
                None => missing.push(id.into_uuid()),
            }
        }
        missing
    }

    fn conflicts(&self, ids: impl IntoIterator<Item = Uuid>) -> bool {
        let inner = self.lock();
        ids.into_iter().any(|id| inner.in_flight.contains_key(&id))
    }

    /// Records the balances batch `batch` leaves and the ids it has in flight.
    fn record(&self, batch: u64, balances: &[AccountState], ids: &[Uuid]) {
        let mut inner = self.lock();
        if inner.accounts.len() + balances.len() > self.max_accounts {
            inner.accounts.clear();
        }
        for a in balances {
            inner.accounts.insert(a.id, (a.clone(), batch));
        }
        for id in ids {
            inner.in_flight.insert(*id, batch);
        }
    }

    /// Balances a batch committed under its locks (the classic path).
    pub fn remember(&self, batch: u64, balances: &[AccountState]) {
        self.record(batch, balances, &[]);
    }

    /// Batch `batch` will not commit what it planned: forget the balances it recorded (those a
    /// later batch planned on top of stay; that batch's check fails and it posts again).
    fn forget(&self, batch: u64, accounts: &[Uuid], ids: &[Uuid]) {
        let mut inner = self.lock();
        for id in accounts {
            let id = AccountId::from_uuid(*id);
            if inner.accounts.get(&id).is_some_and(|(_, b)| *b == batch) {
                inner.accounts.remove(&id);
            }
        }
        Self::release(&mut inner, batch, ids);
    }

    /// Batch `batch` committed: its ids are no longer in flight.
    fn finish(&self, batch: u64, ids: &[Uuid]) {
        Self::release(&mut self.lock(), batch, ids);
    }

    fn release(inner: &mut Inner, batch: u64, ids: &[Uuid]) {
        for id in ids {
            if inner.in_flight.get(id) == Some(&batch) {
                inner.in_flight.remove(id);
            }
        }
    }
}

/// A batch's place in the two turns: it waits for its predecessor's signals and gives its own.
/// Dropping it gives whatever it has not given yet, so a batch that fails never blocks the next.
#[derive(Debug, Default)]
pub struct Turn {
    planned_before: Option<oneshot::Receiver<()>>,
    planned: Option<oneshot::Sender<()>>,
    locked_before: Option<oneshot::Receiver<()>>,
    locked: Option<oneshot::Sender<()>>,
}

impl Turn {
    async fn wait_planned(&mut self) {
        if let Some(rx) = self.planned_before.take() {
            let _ = rx.await;
        }
    }

    fn give_planned(&mut self) {
        if let Some(tx) = self.planned.take() {
            let _ = tx.send(());
        }
    }

    async fn wait_locked(&mut self) {
        if let Some(rx) = self.locked_before.take() {
            let _ = rx.await;
        }
    }

    fn give_locked(&mut self) {
        if let Some(tx) = self.locked.take() {
            let _ = tx.send(());
        }
    }
}

/// Hands out [`Turn`]s in the order batches are gathered.
#[derive(Debug, Default)]
pub struct Turns {
    planned: Option<oneshot::Receiver<()>>,
    locked: Option<oneshot::Receiver<()>>,
}

impl Turns {
    pub fn take(&mut self) -> Turn {
        let (planned, planned_rx) = oneshot::channel();
        let (locked, locked_rx) = oneshot::channel();
        Turn {
            planned_before: self.planned.replace(planned_rx),
            planned: Some(planned),
            locked_before: self.locked.replace(locked_rx),
            locked: Some(locked),
        }
    }
}

/// Forgets a batch's plan unless it committed.
struct Pending<'a> {
    planned: &'a Planned,
    batch: u64,
    accounts: Vec<Uuid>,
    ids: Vec<Uuid>,
    committed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.committed {
            self.planned.finish(self.batch, &self.ids);
        } else {
            // Ended by an error after planning: batches planned on top of it are posted again,
            // as after a failed check.
            self.planned.forget(self.batch, &self.accounts, &self.ids);
            self.planned
                .stats
                .checks_failed
                .fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Posts one batch (number `batch`, in gathering order) through the two turns; falls back to
/// [`pg::post_known`] (locks first) when the batch conflicts with one in flight or its check
/// fails.
pub async fn post(
    pool: &PgPool,
    entries: &[NewEntry],
    known: &KnownAccounts,
    planned: &Planned,
    turn: &mut Turn,
    batch: u64,
) -> Result<Posted, LedgerError> {
    let now = now_us();
    let mut needs = engine::needs(entries);
    needs.specs = known.unknown(std::mem::take(&mut needs.specs));
    if !needs.specs.is_empty() {
        // In a transaction of their own: a batch must not hold an account row that an earlier
        // batch of this process, which it waits for, would wait for in turn. An account opened
        // for a batch that then fails stays open, with zero balances.
        let mut conn = pool.acquire().await?;
        pg::open_accounts(&mut conn, &needs.specs, now).await?;
    }
    let mut tx = pool.begin().await?;
    // A lock wait past `lock_timeout` fails the batch (retried locks-first), so no cycle of waits
    // through this process's turns, which PostgreSQL cannot see, lasts. Nested loops over the
    // sorted id arrays make the balance update lock its rows in id order, as `lock_accounts` does.
    sqlx::query(
        "SELECT set_config('lock_timeout', '5s', true), \
                set_config('enable_hashjoin', 'off', true), \
                set_config('enable_mergejoin', 'off', true)",
    )
    .execute(&mut *tx)
    .await?;
    let legs = if needs.pending_ids.is_empty() {
        Vec::new()
    } else {
        pg::load_legs(&mut tx, &needs.pending_ids).await?
    };
    let lock = lock_set(&needs.account_ids, &legs);
    let existing = heads_map(pg::load_heads(&mut tx, &needs.entry_ids).await?);
    let raw_pendings = if needs.pending_ids.is_empty() {
        Vec::new()
    } else {
        pg::load_pendings(&mut tx, &needs.pending_ids).await?
    };
    let mut accounts = accounts_map(pg::read_accounts(&mut tx, &planned.unplanned(&lock)).await?)?;

    turn.wait_planned().await;
    // A pending entry not found may be in a batch in flight (or another writer's); an entry or
    // pending entry a batch in flight also names must see that batch's outcome: both wait for the
    // locks, the classic way.
    let ids: Vec<Uuid> = needs
        .entry_ids
        .iter()
        .chain(&needs.pending_ids)
        .copied()
        .collect();
    let backing_off = batch <= planned.locks_first_through.load(Ordering::Relaxed);
    if backing_off
        || raw_pendings.len() < needs.pending_ids.len()
        || planned.conflicts(ids.iter().copied())
    {
        tx.rollback().await?;
        planned.stats.locked_first.fetch_add(1, Ordering::Relaxed);
        turn.wait_locked().await;
        let posted = classic(pool, entries, known).await?;
        planned.remember(batch, &posted.balances);
        return Ok(posted);
    }
    // Failed checks so far: one more by the time this batch may lock means a batch it may have
    // planned on top of is posted again after it (see below).
    let failures_seen = planned.stats.checks_failed.load(Ordering::SeqCst);
    let missing = planned.overlay(&lock, &mut accounts);
    if !missing.is_empty() {
        accounts.extend(accounts_map(pg::read_accounts(&mut tx, &missing).await?)?);
        planned.overlay(&lock, &mut accounts);
    }
    let mut initial: Vec<AccountState> = accounts.values().cloned().collect();
    initial.sort_unstable_by_key(|a| a.id);
    let pendings = pendings_map(legs, raw_pendings)?;
    let pending_before: HashMap<Uuid, PendingState> =
        pendings.iter().map(|(id, p)| (*id, p.state)).collect();
    let plan = engine::plan(
        entries,
        accounts,
        pendings,
        existing,
        PostOptions::default(),
        now,
    );
    // A rejection may come from heads or balances another copy of the same entry changed in a
    // batch that committed meanwhile (read before this batch's turn): rejections are answered from
    // what the locks-first path reads under its locks.
    if plan.results.iter().any(|r| !r.is_ok()) {
        tx.rollback().await?;
        planned.stats.locked_first.fetch_add(1, Ordering::Relaxed);
        turn.wait_locked().await;
        let posted = classic(pool, entries, known).await?;
        planned.remember(batch, &posted.balances);
        return Ok(posted);
    }
    let seqs = if plan.postings.is_empty() {
        Vec::new()
    } else {
        let mut seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT array_agg(nextval('ledger_postings_seq_seq'::regclass)) \
             FROM generate_series(1, $1)",
        )
        .bind(plan.postings.len() as i64)
        .fetch_one(&mut *tx)
        .await?;
        seqs.sort_unstable();
        seqs
    };
    let changed: HashMap<AccountId, &AccountState> =
        plan.accounts.iter().map(|a| (a.id, a)).collect();
    let expected: Vec<Balances> = initial.iter().map(pg::balances).collect();
    // Every account of the batch is written (and its version bumped), changed or not.
    let after: Vec<AccountState> = initial
        .into_iter()
        .map(|a| {
            let version = a.version + 1;
            let a = changed.get(&a.id).map_or(a, |c| (*c).clone());
            AccountState { version, ..a }
        })
        .collect();
    planned.record(batch, &after, &ids);
    let mut pending = Pending {
        planned,
        batch,
        accounts: after.iter().map(|a| a.id.into_uuid()).collect(),
        ids,
        committed: false,
    };
    turn.give_planned();

    pg::insert_rows(&mut tx, &plan, Some(&seqs)).await?;
    turn.wait_locked().await;
    // A batch before this one failed its check since this one planned: this one may have planned
    // on top of it, and its repost (the same balances, the same versions) would let this one's
    // check pass with postings ordered before the repost's. It is posted again too.
    let overtaken = planned.stats.checks_failed.load(Ordering::SeqCst) != failures_seen;
    // Balances first, then pending entries: the order in which the locks-first path takes them.
    let held = !overtaken
        && pg::update_balances(&mut tx, &after, Some(&expected)).await?
        && pg::update_pendings(&mut tx, &plan, Some(&pending_before)).await?
        && check_pendings(&mut tx, &plan, &pending_before).await?;
    if !held {
        // Forget the balances now; the ids stay in flight until the batch is posted again, so a
        // later batch naming one of them waits for this one's outcome. Then the failure is
        // counted, before the next batch may lock, so that it sees it: a batch that read the count
        // before this can only have overlaid these balances before they were forgotten.
        planned.forget(batch, &pending.accounts, &[]);
        planned.stats.checks_failed.fetch_add(1, Ordering::SeqCst);
        planned
            .locks_first_through
            .fetch_max(batch + LOCKS_FIRST_AFTER_FAILED_CHECK, Ordering::Relaxed);
    }
    turn.give_locked();
    if !held {
        tx.rollback().await?;
        let posted = classic(pool, entries, known).await?;
        planned.remember(batch, &posted.balances);
        pending.committed = true;
        return Ok(posted);
    }
    tx.commit().await?;
    pending.committed = true;
    planned.stats.locked_last.fetch_add(1, Ordering::Relaxed);
    Ok(Posted {
        results: plan.results,
        accounts: pending.accounts.clone(),
        balances: after,
    })
}

/// The pending entries the plan read but does not change must still be in the state it read
/// (an entry posted meanwhile would have made a void answer something else): a no-op update that
/// locks each one and compares its state there, as [`pg::update_pendings`] does for those it
/// changes.
async fn check_pendings(
    conn: &mut sqlx::PgConnection,
    plan: &engine::Plan,
    read: &HashMap<Uuid, PendingState>,
) -> Result<bool, LedgerError> {
    let changed: std::collections::HashSet<Uuid> =
        plan.pending_updates.iter().map(|u| u.entry_id).collect();
    let (ids, was): (Vec<Uuid>, Vec<i16>) = read
        .iter()
        .filter(|(id, _)| !changed.contains(id))
        .map(|(id, state)| (*id, state.code()))
        .unzip();
    if ids.is_empty() {
        return Ok(true);
    }
    let done = sqlx::query(
        "UPDATE ledger_pending p SET state = p.state \
         FROM UNNEST($1::uuid[], $2::int2[]) AS v(entry_id, was) \
         WHERE p.entry_id = v.entry_id AND p.state = v.was",
    )
    .bind(&ids)
    .bind(&was)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(done == ids.len() as u64)
}

/// Locks first, in its own transaction.
pub async fn classic(
    pool: &PgPool,
    entries: &[NewEntry],
    known: &KnownAccounts,
) -> Result<Posted, LedgerError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    let posted = pg::post_known(&mut tx, entries, PostOptions::default(), Some(known)).await?;
    tx.commit().await?;
    Ok(posted)
}
