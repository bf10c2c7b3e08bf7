//! Closes `created` payments whose `expires_at` has passed.
//!
//! - Payments with no channel order: a batch per statement. Safe to run on every node at once: the
//!   UPDATE is compare-and-set and, on PostgreSQL, skips locked rows.
//! - Payments with an order at a channel (`channel_account_id` set, e.g. `qr_merchant` with a
//!   wallet) are closed AT THE CHANNEL FIRST (`sweeper_channel_concurrency` calls at once), then
//!   locally through the write batcher (compare-and-set, so nodes racing on one payment are
//!   harmless). When the channel refuses to close because the order was paid, or its query says so,
//!   the payment is settled as `succeeded` instead: money that moved is never closed. Payments whose
//!   channel gives no clear answer stay `created` and are tried again later, with a backoff.
//! - Code payments left `processing` longer than `processing_recovery_after_ms` lost their
//!   follow-up (their node stopped, or the database refused the final write): each account of the
//!   merchant that serves the payment's wallet is asked for the order. Paid somewhere → `succeeded`
//!   with its ledger entry; open → reversed, then what the channel says; declined → `failed`;
//!   unknown to every channel → `closed` (the charge never reached one). No clear answer → later.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use paymux_channels::{ChannelError, TradeState};
use paymux_model::{ChannelAccountId, PayMethod, PaymentId, PaymentStatus, WalletBrand};
use tokio::sync::watch;
use uuid::Uuid;

use crate::AppState;
use crate::batcher::WriteOp;
use crate::db::{Db, now_us};
use crate::orchestrate::{self, Route};
use crate::payments::model::PaymentRow;
use crate::payments::repo;
use crate::routing::kind_serves;

/// The first and the longest wait before a payment whose channel gave no clear answer is tried again.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let interval = Duration::from_millis(state.config.sweeper_interval_ms.max(10));
    let batch_max = state.config.sweeper_batch_max.max(1);
    let concurrency = state.config.sweeper_channel_concurrency.max(1);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retries = Retries::default();
    let mut recoveries = Retries::default();
    let mut refund_recoveries = Retries::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        close_local(&state.db, batch_max, &stop).await;
        close_channel_orders(&state, batch_max, concurrency, &mut retries).await;
        recover_stale_processing(&state, batch_max, concurrency, &mut recoveries).await;
        recover_stale_refunds(&state, batch_max, concurrency, &mut refund_recoveries).await;
    }
}

/// Refunds left `processing`, by what the channel says (see [`orchestrate::recover_refund`]).
async fn recover_stale_refunds(
    state: &AppState,
    batch_max: u32,
    concurrency: usize,
    retries: &mut Retries,
) {
    let before = now_us() - refund_recovery_after(&state.config).as_micros() as i64;
    let rows = match crate::refunds::stale_processing(&state.db, before, batch_max).await {
        Ok(rows) => rows,
        Err(err) => {
            tracing::warn!(error = %err, "recovery sweep of processing refunds failed; retrying next tick");
            return;
        }
    };
    let finished = finish_due(
        rows.into_iter().map(|r| (r.id, r)),
        retries,
        concurrency,
        |r| orchestrate::recover_refund(state, r),
    )
    .await;
    if finished > 0 {
        metrics::counter!("paymux_refunds_recovered_total").increment(finished);
        tracing::info!(finished, "refunds left processing finished by the sweeper");
    }
}

/// Runs `finish` on the rows whose retry is due, `concurrency` at a time; a row that finished is
/// forgotten, one that did not is tried again after its back-off. Returns how many finished.
async fn finish_due<R, Fut>(
    rows: impl Iterator<Item = (Uuid, R)>,
    retries: &mut Retries,
    concurrency: usize,
    finish: impl Fn(R) -> Fut,
) -> u64
where
    Fut: std::future::Future<Output = bool>,
{
    let now = Instant::now();
    let due: Vec<(Uuid, R)> = rows.filter(|(id, _)| retries.due(*id, now)).collect();
    if due.is_empty() {
        return 0;
    }
    let finish = &finish;
    let results: Vec<(Uuid, bool)> = futures::stream::iter(due)
        .map(|(id, row)| async move { (id, finish(row).await) })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut finished = 0u64;
    for (id, done) in results {
        if done {
            finished += 1;
            retries.done(id);
        } else {
            retries.later(id, now);
        }
    }
    finished
}

/// Payments without a channel order. Keeps going while full batches come back, so a backlog drains
/// without waiting a tick.
async fn close_local(db: &Db, batch_max: u32, stop: &watch::Receiver<bool>) {
    loop {
        match repo::close_expired(db, now_us(), batch_max).await {
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

/// When each payment whose channel gave no clear answer may be tried again.
#[derive(Default)]
struct Retries(HashMap<Uuid, (u32, Instant)>);

impl Retries {
    fn due(&self, id: Uuid, now: Instant) -> bool {
        self.0.get(&id).is_none_or(|(_, at)| *at <= now)
    }

    fn later(&mut self, id: Uuid, now: Instant) {
        let attempts = self.0.get(&id).map_or(0, |(n, _)| *n);
        let wait = RETRY_FIRST
            .saturating_mul(1 << attempts.min(16))
            .min(RETRY_MAX);
        self.0.insert(id, (attempts + 1, now + wait));
        // Payments closed or paid elsewhere (another node, a notification) are never `done` here.
        if self.0.len() > 10_000 {
            self.0.retain(|_, (_, at)| *at + RETRY_MAX > now);
        }
    }

    fn done(&mut self, id: Uuid) {
        self.0.remove(&id);
    }
}

/// What happened to one expired payment with a channel order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Closed at the channel (or the channel had no open order), then closed here.
    Closed,
    /// The channel says it was paid: settled as `succeeded`.
    Paid,
    /// No clear answer (channel unreachable, order still open, route unknown): try again later.
    Later,
}

async fn close_channel_orders(
    state: &AppState,
    batch_max: u32,
    concurrency: usize,
    retries: &mut Retries,
) {
    let rows = match repo::expired_channel_orders(&state.db, now_us(), batch_max).await {
        Ok(rows) => rows,
        Err(err) => {
            tracing::warn!(error = %err, "expiry sweep of channel orders failed; retrying next tick");
            return;
        }
    };
    let now = Instant::now();
    let due: Vec<PaymentRow> = rows
        .into_iter()
        .filter(|r| retries.due(r.id, now))
        .collect();
    if due.is_empty() {
        return;
    }
    let results: Vec<(Uuid, Expiry)> = futures::stream::iter(due)
        .map(|row| async move {
            let id = row.id;
            (id, expire_channel_order(state, row).await)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let (mut closed, mut paid) = (0u64, 0u64);
    for (id, outcome) in results {
        match outcome {
            Expiry::Closed => {
                closed += 1;
                retries.done(id);
            }
            Expiry::Paid => {
                paid += 1;
                retries.done(id);
            }
            Expiry::Later => retries.later(id, now),
        }
    }
    if closed > 0 {
        metrics::counter!("paymux_payments_expired_total").increment(closed);
    }
    if paid > 0 {
        metrics::counter!("paymux_payments_paid_at_expiry_total").increment(paid);
    }
    if closed + paid > 0 {
        tracing::info!(
            closed,
            paid,
            "expired payments with channel orders closed at their channels"
        );
    }
}

/// Closes one payment's order at its channel, then the payment; or settles it if it was paid.
async fn expire_channel_order(state: &AppState, row: PaymentRow) -> Expiry {
    close_channel_order(state, row, "expired").await
}

/// Closes a payment's order at its channel, then the payment (`closed_reason` `reason`); settles it
/// instead when the channel says it was paid; `Later` when the channel gives no clear answer.
pub(crate) async fn close_channel_order(state: &AppState, row: PaymentRow, reason: &str) -> Expiry {
    let route = match row.channel_account_id {
        Some(a) => state.routes.account(ChannelAccountId::from(a)).await,
        None => None,
    };
    let Some(route) = route else {
        tracing::warn!(payment_id = %row.id, channel_account_id = ?row.channel_account_id,
            "expired payment's channel account is not configured; cannot close it at the channel");
        return Expiry::Later;
    };
    let no = orchestrate::out_trade_no(row.id);
    let refused = match route.close(&no).await {
        Ok(()) => return close_here(state, &row, reason).await,
        Err(e) => e,
    };
    // Refused (paid, already closed, unknown order) or no answer: the channel's query decides.
    match route.query(&no).await {
        Ok(trade) => match trade.state {
            TradeState::Succeeded => settle(state, &row, &route, trade).await,
            TradeState::Closed | TradeState::Failed => close_here(state, &row, reason).await,
            TradeState::NotPaid | TradeState::UserPaying => {
                tracing::warn!(payment_id = %row.id, channel = route.name, error = %refused,
                    "the channel did not close an unpaid order; trying again later");
                Expiry::Later
            }
        },
        // The channel has no such order (Alipay creates a pre-created trade only when the payer
        // scans): nothing can be paid any more — the order carried the same expiry to the channel.
        Err(ChannelError::Rejected { code, .. }) if order_not_found(&code) => {
            close_here(state, &row, reason).await
        }
        Err(e) => {
            tracing::warn!(payment_id = %row.id, channel = route.name, close_error = %refused, query_error = %e,
                "closing an expired payment at its channel: no answer; trying again later");
            Expiry::Later
        }
    }
}

/// WeChat `ORDER_NOT_EXIST`, Alipay `ACQ.TRADE_NOT_EXIST`, UnionPay `34` (查无此交易: e.g. an
/// in-app order of a payment link whose creation never reached the gateway).
pub(crate) fn order_not_found(code: &str) -> bool {
    let c = code.to_ascii_uppercase().replace('_', "");
    c.ends_with("ORDERNOTEXIST") || c.ends_with("TRADENOTEXIST") || c == "34"
}

async fn close_here(state: &AppState, row: &PaymentRow, reason: &str) -> Expiry {
    let op = WriteOp::Transition {
        payment_id: PaymentId::from(row.id),
        to: PaymentStatus::Closed,
        closed_reason: Some(reason.into()),
    };
    match state.batcher.submit(op).await {
        Ok(_) => Expiry::Closed,
        Err(e) => {
            tracing::warn!(payment_id = %row.id, error = %e, "closing an expired payment");
            Expiry::Later
        }
    }
}

async fn settle(
    state: &AppState,
    row: &PaymentRow,
    route: &Route,
    trade: paymux_channels::Trade,
) -> Expiry {
    tracing::info!(payment_id = %row.id, channel = route.name, "paid at the channel at expiry: settling as succeeded");
    match orchestrate::settle_paid(state, row, route, trade).await {
        Ok(true) => Expiry::Paid,
        Ok(false) => Expiry::Later,
        Err(e) => {
            tracing::error!(payment_id = %row.id, error = ?e, "settling a payment paid at expiry");
            Expiry::Later
        }
    }
}

/// How long a code payment may stay `processing` before the sweeper takes it over: the configured
/// time, but never less than its own follow-up's deadline plus two polls.
pub fn recovery_after(config: &crate::config::Config) -> Duration {
    let floor = config
        .code_pay_deadline_ms
        .saturating_add(config.code_pay_poll_interval_ms.saturating_mul(2));
    Duration::from_millis(config.processing_recovery_after_ms.max(floor))
}

/// A refund is left to the sweeper once its own follow-up (twenty deadlines) has ended.
pub fn refund_recovery_after(config: &crate::config::Config) -> Duration {
    let follow_up = config
        .code_pay_deadline_ms
        .saturating_mul(20)
        .saturating_add(config.code_pay_poll_interval_ms.saturating_mul(2));
    recovery_after(config).max(Duration::from_millis(follow_up))
}

async fn recover_stale_processing(
    state: &AppState,
    batch_max: u32,
    concurrency: usize,
    retries: &mut Retries,
) {
    let before = now_us() - recovery_after(&state.config).as_micros() as i64;
    let rows = match repo::stale_processing(&state.db, before, batch_max).await {
        Ok(rows) => rows,
        Err(err) => {
            tracing::warn!(error = %err, "recovery sweep of processing payments failed; retrying next tick");
            return;
        }
    };
    let finished = finish_due(
        rows.into_iter().map(|r| (r.id, r)),
        retries,
        concurrency,
        |r| recover(state, r),
    )
    .await;
    if finished > 0 {
        metrics::counter!("paymux_payments_recovered_total").increment(finished);
        tracing::info!(
            finished,
            "code payments left processing finished by the sweeper"
        );
    }
}

/// Finishes one stale `processing` code payment by what its channels say; `false`: no clear answer
/// yet, try again later.
async fn recover(state: &AppState, row: PaymentRow) -> bool {
    let wallet = row
        .wallet
        .as_deref()
        .and_then(|w| w.parse::<WalletBrand>().ok());
    let (Some(wallet), Ok(method)) = (wallet, row.method.parse::<PayMethod>()) else {
        tracing::warn!(payment_id = %row.id, method = %row.method, wallet = ?row.wallet,
            "processing payment without a wallet or with an unknown method; left for operations");
        return false;
    };
    if let Err(e) = state.routes.refresh_if_changed().await {
        tracing::warn!(error = %e, "refreshing the routing registry");
    }
    // Every account of the merchant that could have been asked (a fail-over may have moved the
    // payment from one to the next; disabled accounts included: they were enabled then).
    let accounts: Vec<Arc<Route>> = state
        .routes
        .all()
        .into_iter()
        .filter(|r| {
            r.merchant_id == row.merchant_id
                && (row.channel_account_id.is_none_or(|a| a == Uuid::from(r.id)))
                && (kind_serves(r.kind, wallet, method)
                    || kind_serves(r.kind, wallet, PayMethod::CodeScan))
        })
        .collect();
    if accounts.is_empty() {
        tracing::warn!(payment_id = %row.id, %wallet, "no channel account of the merchant serves this processing payment; left for operations");
        return false;
    }
    let no = orchestrate::out_trade_no(row.id);
    let mut declined: Option<(Arc<Route>, String)> = None;
    let mut reversed = false;
    for route in accounts {
        let trade = match route.query(&no).await {
            Ok(t) => t,
            Err(ChannelError::Rejected { code, .. }) if order_not_found(&code) => continue,
            Err(e) => {
                tracing::warn!(payment_id = %row.id, channel = route.name, error = %e,
                    "recovering a processing payment: no answer from the channel; trying again later");
                return false;
            }
        };
        let trade = match trade.state {
            TradeState::Succeeded => {
                return settle(state, &row, &route, trade).await == Expiry::Paid;
            }
            TradeState::Failed | TradeState::Closed => {
                declined = Some((route.clone(), trade.channel_state));
                continue;
            }
            TradeState::NotPaid | TradeState::UserPaying => {
                // Left open past every deadline: reverse, then believe the channel's answer.
                if let Err(e) = route.reverse(&no).await {
                    tracing::warn!(payment_id = %row.id, channel = route.name, error = %e, "reversing a stale code payment");
                }
                match route.query(&no).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(payment_id = %row.id, channel = route.name, error = %e,
                            "recovering a processing payment: no answer after the reversal; trying again later");
                        return false;
                    }
                }
            }
        };
        match trade.state {
            TradeState::Succeeded => {
                return settle(state, &row, &route, trade).await == Expiry::Paid;
            }
            TradeState::Failed | TradeState::Closed => reversed = true,
            TradeState::NotPaid | TradeState::UserPaying => return false,
        }
    }
    let payment_id = PaymentId::from(row.id);
    let outcome = if reversed {
        state
            .batcher
            .submit(WriteOp::Transition {
                payment_id,
                to: PaymentStatus::Closed,
                closed_reason: Some("reversed_at_deadline".into()),
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else if let Some((route, channel_state)) = declined {
        orchestrate::settle_failed(
            state,
            &row,
            &route,
            channel_state,
            "the payer did not complete the payment".into(),
        )
        .await
        .map_err(|e| e.detail.clone())
    } else {
        state
            .batcher
            .submit(WriteOp::Transition {
                payment_id,
                to: PaymentStatus::Closed,
                closed_reason: Some("never_reached_channel".into()),
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    match outcome {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(payment_id = %row.id, error = %e, "finishing a recovered code payment");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_codes() {
        assert!(order_not_found("ORDERNOTEXIST"));
        assert!(order_not_found("ACQ.TRADE_NOT_EXIST"));
        assert!(order_not_found("ORDER_NOT_EXIST"));
        assert!(order_not_found("34"));
        assert!(!order_not_found("03"));
        assert!(!order_not_found("ORDERPAID"));
        assert!(!order_not_found("SYSTEMERROR"));
    }

    #[test]
    fn retries_back_off() {
        let mut r = Retries::default();
        let id = Uuid::new_v4();
        let t0 = Instant::now();
        assert!(r.due(id, t0));
        r.later(id, t0);
        assert!(!r.due(id, t0));
        assert!(r.due(id, t0 + RETRY_FIRST));
        r.later(id, t0);
        assert!(!r.due(id, t0 + RETRY_FIRST));
        r.done(id);
        assert!(r.due(id, t0));
    }
}
