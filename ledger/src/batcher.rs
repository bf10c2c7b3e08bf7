//! [`Ledger`]: a standalone, group-committing poster over a pool.
//!
//! Callers submit entries with [`Ledger::post`]; a worker task gathers the submissions that are
//! queued (up to `batch_entries_max` entries, waiting at most `linger` for more), posts them in ONE
//! transaction through the same batched engine the router uses inside its own transactions, commits,
//! and answers each caller with the results of its own entries. A transaction that fails with a
//! retryable error (serialization failure, deadlock, SQLite busy) is retried as a whole, so callers
//! never see those. The queue is bounded; when it is full, callers wait.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

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
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            batch_entries_max: 4096,
            linger: Duration::from_micros(500),
            queue_capacity: 16_384,
            attempts_max: 8,
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
}

impl Ledger {
    /// Starts the worker. It stops when every handle has been dropped and the queue is drained.
    pub fn start(pool: LedgerPool, config: LedgerConfig) -> Ledger {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        tokio::spawn(worker(pool, config, rx));
        Ledger { tx }
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

async fn worker(pool: LedgerPool, config: LedgerConfig, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
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
        let entries: Vec<NewEntry> = jobs
            .iter()
            .flat_map(|j| j.entries.iter().cloned())
            .collect();
        let mut outcome = post_batch(&pool, &entries).await;
        let mut attempt = 1;
        while let Err(err) = &outcome {
            if !err.is_retryable() || attempt >= config.attempts_max {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2u64 << attempt.min(6))).await;
            attempt += 1;
            outcome = post_batch(&pool, &entries).await;
        }
        match outcome {
            Ok(results) => {
                debug_assert_eq!(results.len(), entries.len());
                let mut rest = results.into_iter();
                for job in jobs {
                    let mine: Vec<EntryResult> = rest.by_ref().take(job.entries.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, entries = entries.len(), "ledger batch failed; nothing of it was written");
                let text = err.to_string();
                for job in jobs {
                    let _ = job
                        .reply
                        .send(Err(LedgerError::Corrupt(format!("batch failed: {text}"))));
                }
            }
        }
    }
}

async fn post_batch(
    pool: &LedgerPool,
    entries: &[NewEntry],
) -> Result<Vec<EntryResult>, LedgerError> {
    match pool {
        LedgerPool::Sqlite(p) => {
            let mut conn = p.acquire().await?;
            // IMMEDIATE: take the write lock before reading balances, so read and write are one
            // critical section even with other writers on the file.
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            match store::sqlite::post(&mut conn, entries, PostOptions::default()).await {
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
            let results = store::pg::post(&mut tx, entries, PostOptions::default()).await?;
            tx.commit().await?;
            Ok(results)
        }
    }
}
