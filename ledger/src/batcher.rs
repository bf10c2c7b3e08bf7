//! [`Ledger`]: a standalone, group-committing poster over a pool.
//!
//! Callers submit entries with [`Ledger::post`]; a worker task gathers the submissions that are
//! queued (up to `batch_entries_max` entries, waiting at most `linger` for more), posts them in ONE
//! transaction through the same batched engine the router uses inside its own transactions, commits,
//! and answers each caller with the results of its own entries. On PostgreSQL up to `committers`
//! batches are in flight at once, each in its own transaction on its own connection: while one
//! commits, the next is gathered, planned and written (batches that share accounts queue on the
//! balance-row locks, taken in sorted order, so they apply one after the other). A transaction that
//! fails with a retryable error (serialization failure, deadlock, SQLite busy) is retried as a whole,
//! so callers never see those. The queue is bounded; when it is full, callers wait.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::store::pipeline::{self, PipelineStats, Planned, Turn, Turns};
use crate::store::{KnownAccounts, Posted};
use crate::types::{EntryResult, LedgerError, NewEntry, PostOptions};
use crate::{LedgerPool, store};

#[derive(Debug, Clone, Copy)]
pub struct LedgerConfig {
    /// Most entries per transaction.
    pub batch_entries_max: usize,
    /// How long a batch waits for more submissions.
    pub linger: Duration,
    /// Submissions queued beyond which callers wait.
    pub queue_capacity: usize,
    /// Attempts for a transaction that fails with a retryable error.
    pub attempts_max: u32,
    /// Batches in flight at once on PostgreSQL, each on its own connection (SQLite: always 1).
    pub committers: usize,
    /// Account ids remembered as existing, so their specs are not sent to be opened again (and,
    /// when pipelined, accounts whose balances are remembered as planned).
    pub known_accounts_max: usize,
    /// PostgreSQL: batches take their balance locks last ([`crate::store::pipeline`]); otherwise
    /// first, holding them while entries and postings are written.
    pub pipelined: bool,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            batch_entries_max: 4096,
            linger: Duration::from_micros(500),
            queue_capacity: 16_384,
            attempts_max: 8,
            committers: 2,
            known_accounts_max: 1_000_000,
            pipelined: true,
        }
    }
}

struct Job {
    entries: Vec<NewEntry>,
    reply: oneshot::Sender<Result<Vec<EntryResult>, LedgerError>>,
}

/// A handle to the ledger's batching worker. Cloning shares the worker.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Job>,
    planned: Arc<Planned>,
}

impl Ledger {
    /// Starts the worker. It stops when every handle has been dropped and the queue is drained.
    pub fn start(pool: LedgerPool, config: LedgerConfig) -> Ledger {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let planned = Arc::new(Planned::new(config.known_accounts_max));
        tokio::spawn(worker(pool, config, rx, planned.clone()));
        Ledger { tx, planned }
    }

    /// How the pipelined PostgreSQL path went so far (all zero on SQLite or when not pipelined).
    pub fn pipeline_stats(&self) -> PipelineStats {
        self.planned.stats()
    }

    /// Posts `entries` (non-atomically: each entry gets its own result) and waits for the commit.
    pub async fn post(&self, entries: Vec<NewEntry>) -> Result<Vec<EntryResult>, LedgerError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { entries, reply })
            .await
            .map_err(|_| LedgerError::ShuttingDown)?;
        answer.await.map_err(|_| LedgerError::ShuttingDown)?
    }
}

async fn worker(
    pool: LedgerPool,
    config: LedgerConfig,
    mut rx: mpsc::Receiver<Job>,
    planned: Arc<Planned>,
) {
    let committers = match pool {
        LedgerPool::Sqlite(_) => 1,
        LedgerPool::Postgres(_) => config.committers.clamp(1, 64),
    };
    let slots = Arc::new(Semaphore::new(committers));
    let known = Arc::new(KnownAccounts::new(config.known_accounts_max));
    let mut turns = Turns::default();
    let mut batch: u64 = 0;
    loop {
        // Gather only once a committer is free: while all are busy, submissions queue up and the
        // next batch grows.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let Some(first) = rx.recv().await else { break };
        let mut count = first.entries.len();
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + config.linger;
        while count < config.batch_entries_max {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
            };
            let Some(job) = next else { break };
            count += job.entries.len();
            jobs.push(job);
        }
        let pipeline = match &pool {
            LedgerPool::Postgres(_) if config.pipelined => {
                batch += 1;
                Some((planned.clone(), turns.take(), batch))
            }
            _ => None,
        };
        let (pool, known) = (pool.clone(), known.clone());
        tokio::spawn(async move {
            commit_jobs(&pool, &config, &known, pipeline, jobs).await;
            drop(slot);
        });
    }
    // Let the batches in flight finish before the worker ends.
    let _ = slots.acquire_many(committers as u32).await;
}

/// Posts the jobs' entries in one transaction (retried as a whole on retryable errors) and answers
/// each job with its own results.
async fn commit_jobs(
    pool: &LedgerPool,
    config: &LedgerConfig,
    known: &KnownAccounts,
    mut pipeline: Option<(Arc<Planned>, Turn, u64)>,
    jobs: Vec<Job>,
) {
    let mut entries: Vec<NewEntry> = Vec::with_capacity(jobs.iter().map(|j| j.entries.len()).sum());
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        replies.push((job.entries.len(), job.reply));
        entries.extend(job.entries);
    }
    let mut outcome = match (&mut pipeline, pool) {
        (Some((planned, turn, batch)), LedgerPool::Postgres(p)) => {
            pipeline::post(p, &entries, known, planned, turn, *batch).await
        }
        _ => post_batch(pool, &entries, known).await,
    };
    // Later batches no longer wait for this one; a retry locks first.
    let planned = pipeline.map(|(planned, _, batch)| (planned, batch));
    let mut attempt = 1;
    while let Err(err) = &outcome {
        if !err.is_retryable() || attempt >= config.attempts_max {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2u64 << attempt.min(6))).await;
        attempt += 1;
        outcome = post_batch(pool, &entries, known).await;
        if let (Ok(posted), Some((planned, batch))) = (&outcome, &planned) {
            planned.remember(*batch, &posted.balances);
        }
    }
    match outcome {
        Ok(posted) => {
            debug_assert_eq!(posted.results.len(), entries.len());
            known.remember(&posted.accounts);
            let mut rest = posted.results.into_iter();
            for (n, reply) in replies {
                let mine: Vec<EntryResult> = rest.by_ref().take(n).collect();
                let _ = reply.send(Ok(mine));
            }
        }
        Err(err) => {
            tracing::error!(error = %err, entries = entries.len(), "ledger batch failed; nothing of it was written");
            let text = err.to_string();
            for (_, reply) in replies {
                let _ = reply.send(Err(LedgerError::Corrupt(format!("batch failed: {text}"))));
            }
        }
    }
}

async fn post_batch(
    pool: &LedgerPool,
    entries: &[NewEntry],
    known: &KnownAccounts,
) -> Result<Posted, LedgerError> {
    match pool {
        LedgerPool::Sqlite(p) => {
            let mut conn = p.acquire().await?;
            // IMMEDIATE: take the write lock before reading balances, so read and write are one
            // critical section even with other writers on the file.
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            match store::sqlite::post_known(&mut conn, entries, PostOptions::default(), Some(known))
                .await
            {
                Ok(results) => {
                    sqlx::query("COMMIT").execute(&mut *conn).await?;
                    Ok(results)
                }
                Err(err) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    Err(err)
                }
            }
        }
        LedgerPool::Postgres(p) => {
            let mut tx = p.begin().await?;
            // Other batches of this process may be waiting on each other outside PostgreSQL's
            // sight (the pipelined path): a lock wait that long fails and is retried.
            sqlx::query("SET LOCAL lock_timeout = '5s'")
                .execute(&mut *tx)
                .await?;
            let results =
                store::pg::post_known(&mut tx, entries, PostOptions::default(), Some(known))
                    .await?;
            tx.commit().await?;
            Ok(results)
        }
    }
}
