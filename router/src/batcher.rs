//! The write batcher (group commit).
//!
//! Request handlers hand their writes to [`WriteBatcher::submit`] and wait. Worker tasks take up to
//! `batch_items_max` queued commands (waiting at most `batch_linger_us` for more), execute them in ONE
//! transaction with multi-row statements, COMMIT, and only then answer each waiter. Several workers
//! (PostgreSQL) keep transactions in flight while the next batch gathers; SQLite, a single writer, uses
//! one. The queue is bounded: when it is full, submitters wait (back-pressure), they are never dropped.

use crate::db::BeginWrite;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paymux_model::{PaymentId, PaymentStatus};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::db::{Db, now_us};
use crate::payments::model::PaymentRow;
use crate::payments::repo::{self, TransitionKey};

/// A write command.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Insert a payment unless one with the same `(merchant_id, merchant_order_no)` exists.
    CreatePayment(Box<PaymentRow>),
    /// Compare-and-set a payment's status (from the allowed sources of `to`).
    Transition {
        payment_id: PaymentId,
        to: PaymentStatus,
        closed_reason: Option<String>,
    },
    /// A channel's final answer: compare-and-set the payment to `succeeded` or `failed` with the
    /// channel's facts, and post its ledger entry in the same transaction (only if the CAS won, so
    /// the movement is posted exactly once; the entry id is derived from the payment id as well).
    Settle(Box<Settle>),
    /// Insert a refund and reserve its amount on the payment (see [`crate::refunds`]).
    CreateRefund(Box<crate::refunds::RefundRow>),
    /// A refund's final state; a success posts its ledger entry in the same transaction.
    SettleRefund(Box<crate::refunds::RefundSettle>),
    /// Record the channel order of a C2B payment that is still `created`: its account and the code
    /// the payer scans.
    AttachQr {
        payment_id: PaymentId,
        channel_account_id: Uuid,
        qr_code: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settle {
    pub payment_id: PaymentId,
    pub to: PaymentStatus,
    pub channel_account_id: Uuid,
    pub channel_trade_no: Option<String>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub paid_at_us: Option<i64>,
    pub entry: Option<paymux_ledger::NewEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The payment was inserted.
    Created(Box<PaymentRow>),
    /// A payment with the same order number and the same request already existed.
    Existing(Box<PaymentRow>),
    /// A payment with the same order number but a different request exists.
    Conflict(Box<PaymentRow>),
    /// Whether this command won the compare-and-set.
    Transitioned(bool),
    /// Nothing was written; the same command may be submitted again.
    Retry,
    /// What creating a refund found.
    Refund(crate::refunds::RefundCreate),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("database: {0}")]
    Database(String),
    #[error("the write batcher has stopped")]
    Stopped,
}

struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteOutcome, BatchError>>,
}

#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    pub items_max: usize,
    pub linger: Duration,
    pub workers: usize,
    pub queue_capacity: usize,
}

pub struct WriteBatcher {
    tx: mpsc::Sender<Job>,
    stop: watch::Sender<bool>,
    workers: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl WriteBatcher {
    pub fn start(db: Db, config: BatcherConfig) -> WriteBatcher {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (stop, stop_rx) = watch::channel(false);
        let rx = Arc::new(Mutex::new(rx));
        let workers = match db {
            Db::Sqlite(_) => 1,
            Db::Postgres(_) => config.workers.max(1),
        };
        let handles = (0..workers)
            .map(|_| tokio::spawn(worker(db.clone(), config, rx.clone(), stop_rx.clone())))
            .collect();
        WriteBatcher {
            tx,
            stop,
            workers: std::sync::Mutex::new(handles),
        }
    }

    /// Queues a write and waits until its batch has committed.
    pub async fn submit(&self, op: WriteOp) -> Result<WriteOutcome, BatchError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { op, reply })
            .await
            .map_err(|_| BatchError::Stopped)?;
        answer.await.map_err(|_| BatchError::Stopped)?
    }

    /// Stops taking new batches once the queue is empty, and waits for the workers to finish.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let handles: Vec<_> = std::mem::take(&mut *self.workers.lock().expect("workers lock"));
        for h in handles {
            let _ = h.await;
        }
    }
}

async fn worker(
    db: Db,
    config: BatcherConfig,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let jobs = {
            let mut rx = rx.lock().await;
            let first = if *stop.borrow() {
                rx.try_recv().ok()
            } else {
                tokio::select! {
                    job = rx.recv() => job,
                    _ = stop.changed() => rx.try_recv().ok(),
                }
            };
            let Some(first) = first else { return };
            let mut jobs = Vec::with_capacity(config.items_max.min(1024));
            jobs.push(first);
            let deadline = tokio::time::Instant::now() + config.linger;
            while jobs.len() < config.items_max {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if config.linger.is_zero() || *stop.borrow() {
                            break;
                        }
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(job)) => jobs.push(job),
                            _ => break,
                        }
                    }
                }
            }
            jobs
        };
        run_batch(&db, jobs).await;
    }
}

async fn run_batch(db: &Db, jobs: Vec<Job>) {
    let started = Instant::now();
    let n = jobs.len();
    let (ops, replies): (Vec<WriteOp>, Vec<_>) = jobs.into_iter().map(|j| (j.op, j.reply)).unzip();
    let outcomes = commit_or_split(db, ops, true).await;
    metrics::histogram!("paymux_batch_items").record(n as f64);
    metrics::histogram!("paymux_batch_commit_seconds").record(started.elapsed().as_secs_f64());
    debug_assert_eq!(outcomes.len(), replies.len());
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        let _ = reply.send(outcome);
    }
}

/// Commits `ops` in one transaction. When the database refuses it, nothing of it was committed:
/// its two halves are then committed on their own, in order (and so on down to single commands), so
/// one command the database refuses, or a deadlock with another node's batch, fails only itself. A
/// single command refused by a deadlock or a serialization failure is tried once more. Errors that
/// are not the statement's (the pool timed out, the connection broke) fail the whole batch at once.
fn commit_or_split(
    db: &Db,
    ops: Vec<WriteOp>,
    retry_single: bool,
) -> futures::future::BoxFuture<'_, Vec<Result<WriteOutcome, BatchError>>> {
    Box::pin(async move {
        let n = ops.len();
        let again = ops.clone();
        let err = match commit(db, ops).await {
            Ok(outcomes) => return outcomes.into_iter().map(Ok).collect(),
            Err(err) => err,
        };
        let statement_error = refused(&err);
        if statement_error && n > 1 {
            tracing::warn!(error = %err, items = n, "write batch refused; committing its halves on their own");
            metrics::counter!("paymux_batch_splits_total").increment(1);
            let mut first = again;
            let second = first.split_off(n / 2);
            let mut out = commit_or_split(db, first, true).await;
            out.extend(commit_or_split(db, second, true).await);
            return out;
        }
        if statement_error && retry_single && transient(&err) {
            return commit_or_split(db, again, false).await;
        }
        metrics::counter!("paymux_batch_failures_total").increment(1);
        tracing::error!(error = %err, items = n, "write batch failed; nothing of it was committed");
        let err = BatchError::Database(err.to_string());
        vec![Err(err); n]
    })
}

/// The start of the error of a batch whose ledger entry was rejected.
const LEDGER_REJECTED: &str = "the ledger rejected an entry";

/// The batch itself was refused (by the database, or by the ledger for one of its entries), as
/// opposed to the pool or the connection failing: a smaller batch may go through.
fn refused(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(_) => true,
        sqlx::Error::Protocol(m) => m.starts_with(LEDGER_REJECTED),
        _ => false,
    }
}

/// A deadlock or a serialization failure: the same statement may well succeed at once.
fn transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(e) => matches!(e.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

async fn commit(db: &Db, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, sqlx::Error> {
    match db {
        Db::Postgres(pool) => {
            let mut tx = pool.begin_write().await?;
            let out = execute_pg(&mut tx, ops).await?;
            tx.commit().await?;
            Ok(out)
        }
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_write().await?;
            let out = execute_sqlite(&mut tx, ops).await?;
            tx.commit().await?;
            Ok(out)
        }
    }
}

/// The batch, split by kind of statement, with each command's place remembered.
struct Plan {
    creates: Vec<(usize, Box<PaymentRow>)>,
    transitions: HashMap<TransitionKey, Vec<(usize, Uuid)>>,
    settles: Vec<(usize, Box<Settle>)>,
    attaches: Vec<(usize, PaymentId, Uuid, String)>,
    refund_creates: Vec<(usize, Box<crate::refunds::RefundRow>)>,
    refund_settles: Vec<(usize, Box<crate::refunds::RefundSettle>)>,
}

fn plan(ops: Vec<WriteOp>) -> Plan {
    let mut p = Plan {
        creates: Vec::new(),
        transitions: HashMap::new(),
        settles: Vec::new(),
        attaches: Vec::new(),
        refund_creates: Vec::new(),
        refund_settles: Vec::new(),
    };
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            WriteOp::CreatePayment(row) => p.creates.push((i, row)),
            WriteOp::Transition {
                payment_id,
                to,
                closed_reason,
            } => p
                .transitions
                .entry(TransitionKey { to, closed_reason })
                .or_default()
                .push((i, payment_id.into())),
            WriteOp::Settle(s) => p.settles.push((i, s)),
            WriteOp::AttachQr {
                payment_id,
                channel_account_id,
                qr_code,
            } => p
                .attaches
                .push((i, payment_id, channel_account_id, qr_code)),
            WriteOp::CreateRefund(r) => p.refund_creates.push((i, r)),
            WriteOp::SettleRefund(r) => p.refund_settles.push((i, r)),
        }
    }
    p
}

/// Within a batch the first create of an order number is the candidate; later ones are answered
/// against whatever ends up stored.
fn split_creates(creates: &[(usize, Box<PaymentRow>)]) -> (Vec<&PaymentRow>, Vec<(Uuid, String)>) {
    let mut seen = std::collections::HashSet::new();
    let mut candidates = Vec::new();
    let mut keys = Vec::new();
    for (_, row) in creates {
        let key = (row.merchant_id, row.merchant_order_no.clone());
        if seen.insert(key.clone()) {
            candidates.push(row.as_ref());
            keys.push(key);
        }
    }
    (candidates, keys)
}

fn answer_creates(
    creates: Vec<(usize, Box<PaymentRow>)>,
    inserted: &[Uuid],
    stored: &HashMap<(Uuid, String), PaymentRow>,
    out: &mut [Option<WriteOutcome>],
) {
    let inserted: std::collections::HashSet<&Uuid> = inserted.iter().collect();
    for (i, row) in creates {
        let key = (row.merchant_id, row.merchant_order_no.clone());
        out[i] = Some(if inserted.contains(&row.id) {
            WriteOutcome::Created(row)
        } else {
            match stored.get(&key) {
                Some(existing) if existing.request_hash == row.request_hash => {
                    WriteOutcome::Existing(Box::new(existing.clone()))
                }
                Some(existing) => WriteOutcome::Conflict(Box::new(existing.clone())),
                // Not inserted yet not found: a concurrent writer rolled back between the two
                // statements. Nothing was written for this command; the caller may retry.
                None => WriteOutcome::Retry,
            }
        });
    }
}

/// The settle commands of a batch in rounds: round k holds the k-th command of each payment, grouped
/// by target status (indices into `settles`, in batch order).
fn settle_rounds(settles: &[(usize, Box<Settle>)]) -> Vec<Vec<(PaymentStatus, Vec<usize>)>> {
    let mut seen: HashMap<PaymentId, usize> = HashMap::new();
    let mut rounds: Vec<Vec<(PaymentStatus, Vec<usize>)>> = Vec::new();
    for (k, (_, st)) in settles.iter().enumerate() {
        let n = seen.entry(st.payment_id).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        let round = &mut rounds[*n];
        match round.iter_mut().find(|(to, _)| *to == st.to) {
            Some((_, g)) => g.push(k),
            None => round.push((st.to, vec![k])),
        }
        *n += 1;
    }
    rounds
}

macro_rules! execute_body {
    ($conn:expr, $ops:expr, $insert:path, $find:path, $transition:path, $settle:path, $post:path, $attach:path, $rcreate:path, $rsettle:path, $enqueue:path) => {{
        let n = $ops.len();
        let mut out: Vec<Option<WriteOutcome>> = (0..n).map(|_| None).collect();
        let Plan {
            creates,
            transitions,
            settles,
            attaches,
            refund_creates,
            refund_settles,
        } = plan($ops);
        for (i, r) in refund_creates {
            out[i] = Some(WriteOutcome::Refund($rcreate(&mut *$conn, &r).await?));
        }
        for (i, payment_id, account, qr) in attaches {
            let moved = $attach(&mut *$conn, payment_id, account, &qr, now_us()).await?;
            out[i] = Some(WriteOutcome::Transitioned(moved));
        }
        if !creates.is_empty() {
            let (candidates, keys) = split_creates(&creates);
            let inserted = $insert(&mut *$conn, &candidates).await?;
            // Losers of the uniqueness race (in this batch or against earlier ones) are answered
            // against the stored row, which this transaction sees.
            let stored = if inserted.len() < creates.len() {
                repo::index_by_order_no($find(&mut *$conn, &keys).await?)
            } else {
                HashMap::new()
            };
            answer_creates(creates, &inserted, &stored, &mut out);
        }
        let now = now_us();
        // Webhook events of the commands that win, written to the outbox in this transaction.
        let mut events: Vec<crate::webhooks::Pending> = Vec::new();
        for (key, items) in transitions {
            let event = crate::webhooks::payment_event(key.to);
            let ids: Vec<Uuid> = items.iter().map(|(_, id)| *id).collect();
            let moved: std::collections::HashSet<Uuid> = $transition(&mut *$conn, &key, &ids, now)
                .await?
                .into_iter()
                .collect();
            // Two commands for the same payment in one batch: only the first can win.
            let mut won = std::collections::HashSet::new();
            for (i, id) in items {
                let moved = moved.contains(&id) && won.insert(id);
                if moved && let Some(t) = event {
                    events.push(crate::webhooks::Pending::Payment(id, t));
                }
                out[i] = Some(WriteOutcome::Transitioned(moved));
            }
        }
        let mut entries = Vec::new();
        for (i, r) in refund_settles {
            let (moved, entry) = $rsettle(&mut *$conn, &r, now).await?;
            entries.extend(entry);
            if moved && let Some(t) = crate::webhooks::refund_event(r.to) {
                events.push(crate::webhooks::Pending::Refund(r.refund_id.into(), t));
            }
            out[i] = Some(WriteOutcome::Transitioned(moved));
        }
        if !settles.is_empty() || !entries.is_empty() {
            // One statement per round and target status; a round holds each payment at most
            // once, so a payment settled twice in one batch sees its commands in their order.
            for round in settle_rounds(&settles) {
                for (to, group) in round {
                    let rows: Vec<&Settle> = group.iter().map(|&k| settles[k].1.as_ref()).collect();
                    let moved: std::collections::HashSet<Uuid> =
                        $settle(&mut *$conn, to, &rows, now)
                            .await?
                            .into_iter()
                            .collect();
                    for k in group {
                        let (i, st) = &settles[k];
                        let moved = moved.contains(&Uuid::from(st.payment_id));
                        if moved && let Some(entry) = &st.entry {
                            entries.push(entry.clone());
                        }
                        if moved && let Some(t) = crate::webhooks::payment_event(st.to) {
                            events.push(crate::webhooks::Pending::Payment(st.payment_id.into(), t));
                        }
                        out[*i] = Some(WriteOutcome::Transitioned(moved));
                    }
                }
            }
            if !entries.is_empty() {
                let results = $post(&mut *$conn, &entries, paymux_ledger::PostOptions::default())
                    .await
                    .map_err(|e| sqlx::Error::Protocol(format!("ledger: {e}")))?;
                if let Some(bad) = results.iter().find(|r| {
                    !matches!(
                        r,
                        paymux_ledger::EntryResult::Created | paymux_ledger::EntryResult::Exists
                    )
                }) {
                    // Nothing of the batch is committed: no half-written state. The batch is
                    // split like one the database refused, so only the command whose entry the
                    // ledger rejects fails.
                    return Err(sqlx::Error::Protocol(format!("{LEDGER_REJECTED}: {bad:?}")));
                }
            }
        }
        $enqueue(&mut *$conn, &events, now).await?;
        Ok(out
            .into_iter()
            .map(|o| o.expect("every command answered"))
            .collect())
    }};
}

async fn execute_pg(
    conn: &mut sqlx::PgConnection,
    ops: Vec<WriteOp>,
) -> sqlx::Result<Vec<WriteOutcome>> {
    execute_body!(
        conn,
        ops,
        repo::insert_new_pg,
        repo::find_by_order_nos_pg,
        repo::transition_pg,
        repo::settle_pg,
        paymux_ledger::post_postgres,
        repo::attach_qr_pg,
        crate::refunds::create_pg,
        crate::refunds::settle_pg,
        crate::webhooks::enqueue_pg
    )
}

async fn execute_sqlite(
    conn: &mut sqlx::SqliteConnection,
    ops: Vec<WriteOp>,
) -> sqlx::Result<Vec<WriteOutcome>> {
    execute_body!(
        conn,
        ops,
        repo::insert_new_sqlite,
        repo::find_by_order_nos_sqlite,
        repo::transition_sqlite,
        repo::settle_sqlite,
        paymux_ledger::post_sqlite,
        repo::attach_qr_sqlite,
        crate::refunds::create_sqlite,
        crate::refunds::settle_sqlite,
        crate::webhooks::enqueue_sqlite
    )
}
