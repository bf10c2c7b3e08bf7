//! Closes `created` payments whose `expires_at` has passed, a batch per statement. Safe to run on
//! every node at once: the UPDATE is compare-and-set and, on PostgreSQL, skips locked rows.

use std::time::Duration;

use tokio::sync::watch;

use crate::db::{Db, now_us};
use crate::payments::repo;

pub async fn run(db: Db, interval: Duration, batch_max: u32, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        // Keep going while full batches come back, so a backlog drains without waiting a tick.
        loop {
            match repo::close_expired(&db, now_us(), batch_max).await {
                Ok(closed) => {
                    if !closed.is_empty() {
                        metrics::counter!("paymux_payments_expired_total")
                            .increment(closed.len() as u64);
                        tracing::info!(closed = closed.len(), "closed expired payments");
                    }
                    if closed.len() < batch_max as usize || *stop.borrow() {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "expiry sweep failed; retrying next tick");
                    break;
                }
            }
        }
    }
}
