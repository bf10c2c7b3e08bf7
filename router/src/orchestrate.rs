//! Paying payments through channels: wallet detection, route choice, the B2C `code_scan` flow with
//! its follow-up (poll while the payer enters a password or the outcome is unknown, then reverse at
//! the deadline), and settlement — the payment's final state and its ledger entry in one
//! transaction of the write batcher.
//!
//! A [`Route`] is one live channel account of a merchant; which one a new payment goes to is
//! chosen by [`crate::routing`] (the merchant's route for the wallet and method, its rule, the
//! breakers). A code charge or an order creation that certainly did not move money (the channel
//! was unreachable, or declined the account) fails over to the route's next account with the same
//! `out_trade_no`; never after an unknown outcome. Every channel call goes through a [`Route`]
//! method that records it on the account's circuit breaker ([`crate::health`]); only new
//! payments are refused while it is open.

use std::sync::Arc;
use std::time::Duration;

use paymux_channels::{Channel, ChannelError, OrderRequest, PayOutcome, TradeState};
use paymux_model::{
    ChannelAccountId, ErrorCode, MerchantId, Money, PaymentId, PaymentStatus, WalletBrand,
};
use uuid::Uuid;

use crate::AppState;
use crate::batcher::{Settle, WriteOp, WriteOutcome};
use crate::error::{ApiError, ApiResult};
use crate::payments::model::PaymentRow;

/// One channel account payments can be routed to.
pub struct Route {
    pub id: ChannelAccountId,
    pub merchant_id: Uuid,
    pub kind: paymux_model::ChannelKind,
    pub name: &'static str,
    pub channel: Arc<dyn Channel>,
    /// What the channel charges, in basis points.
    pub cost_rate_bps: u32,
    /// Disabled accounts take no new payments; their payments are still served.
    pub enabled: bool,
    /// The row's version (the registry rebuilds an account whose row changed).
    pub updated_at_us: i64,
    /// The account's circuit breaker: every call below is recorded on it (kept across reloads).
    pub breaker: Arc<crate::health::Breaker>,
    /// Accounts with the same bill source share one daily bill at the channel (this server's
    /// sandboxes serve every merchant's sandbox accounts as one channel merchant).
    pub bill_source: String,
}

/// The channel calls, each recorded on the route's breaker (outcome and latency).
impl Route {
    pub async fn pay_with_code(&self, order: &OrderRequest, auth_code: &str) -> PayOutcome {
        let call = self.channel.pay_with_code(order, auth_code);
        self.breaker
            .observe("pay_with_code", call, crate::health::pay_errs)
            .await
    }

    pub async fn create_order(
        &self,
        req: &paymux_channels::CreateOrder,
    ) -> Result<paymux_channels::CreatedOrder, ChannelError> {
        let call = self.channel.create_order(req);
        self.breaker
            .observe("create_order", call, crate::health::result_errs)
            .await
    }

    pub async fn query(&self, out_trade_no: &str) -> Result<paymux_channels::Trade, ChannelError> {
        let call = self.channel.query(out_trade_no);
        self.breaker
            .observe("query", call, crate::health::result_errs)
            .await
    }

    pub async fn close(&self, out_trade_no: &str) -> Result<(), ChannelError> {
        let call = self.channel.close(out_trade_no);
        self.breaker
            .observe("close", call, crate::health::result_errs)
            .await
    }

    pub async fn reverse(&self, out_trade_no: &str) -> Result<(), ChannelError> {
        let call = self.channel.reverse(out_trade_no);
        self.breaker
            .observe("reverse", call, crate::health::result_errs)
            .await
    }

    pub async fn refund(
        &self,
        req: &paymux_channels::RefundRequest,
    ) -> paymux_channels::RefundOutcome {
        let call = self.channel.refund(req);
        self.breaker
            .observe("refund", call, crate::health::refund_errs)
            .await
    }

    pub async fn query_refund(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<paymux_channels::RefundInfo, ChannelError> {
        let call = self.channel.query_refund(out_trade_no, out_refund_no);
        self.breaker
            .observe("query_refund", call, crate::health::result_errs)
            .await
    }

    /// New payments only (never follow-ups): `503 channel_unavailable` with `Retry-After` while
    /// the breaker is open.
    pub fn admit_new_payment(&self) -> ApiResult<()> {
        self.breaker.admit().map_err(|wait| {
            let secs = crate::ratelimit::retry_after_seconds(wait);
            ApiError::new(
                ErrorCode::ChannelUnavailable,
                format!(
                    "the {} channel is failing; new payments are refused for now, retry after {secs} s",
                    self.name
                ),
            )
            .retry_after(secs)
        })
    }
}

/// The wallet of a payment code, and the payer's declared wallet if any must agree with it.
pub fn wallet_of_code(code: &str, declared: Option<WalletBrand>) -> ApiResult<WalletBrand> {
    use paymux_qrcode::paycode::PayCodeError;
    let wallet = paymux_qrcode::paycode::classify(code).map_err(|e| match e {
        PayCodeError::Malformed(m) => ApiError::field(
            ErrorCode::PaymentCodeMalformed,
            "auth_code",
            format!("payment code: {m}"),
        ),
        PayCodeError::Unknown { .. } => {
            ApiError::field(ErrorCode::PaymentCodeUnknown, "auth_code", e.to_string())
        }
    })?;
    if let Some(d) = declared
        && d != wallet
    {
        return Err(ApiError::field(
            ErrorCode::ValidationFailed,
            "wallet",
            format!("`wallet` is {d} but the payment code is a {wallet} code"),
        ));
    }
    Ok(wallet)
}

/// The order number a payment has at every channel: its id, 32 hex digits.
pub fn out_trade_no(id: Uuid) -> String {
    id.simple().to_string()
}

fn order_of(row: &PaymentRow) -> OrderRequest {
    OrderRequest {
        out_trade_no: out_trade_no(row.id),
        amount: Money::cny(row.amount_minor),
        subject: row.subject.clone(),
        notify_url: None,
        expires_at: None,
        client_ip: None,
        store_id: row.store_id.clone(),
        terminal_id: row.terminal_id.clone(),
    }
}

/// How long to keep asking about a code payment, and how often.
#[derive(Debug, Clone, Copy)]
pub struct FollowUp {
    pub poll_interval: Duration,
    pub deadline: Duration,
}

impl FollowUp {
    pub fn of(state: &AppState) -> Self {
        Self {
            poll_interval: Duration::from_millis(state.config.code_pay_poll_interval_ms.max(10)),
            deadline: Duration::from_millis(state.config.code_pay_deadline_ms.max(10)),
        }
    }
}

/// Charges the customer's code on the first candidate account; a charge that certainly did not
/// move money (unreachable, or declined for the account) goes to the next one with the same
/// `out_trade_no`. Returns once the payment is final, or as `processing` with a follow-up running
/// when the payer must confirm or the outcome is unknown (never failed over).
pub async fn code_scan(
    state: &AppState,
    row: PaymentRow,
    auth_code: &str,
    mut candidates: crate::routing::Candidates,
) -> ApiResult<()> {
    let payment_id = PaymentId::from(row.id);
    let moved = state
        .batcher
        .submit(WriteOp::Transition {
            payment_id,
            to: PaymentStatus::Processing,
            closed_reason: None,
        })
        .await
        .map_err(ApiError::unavailable)?;
    // Only the caller that moved the payment to `processing` charges the code: a payment closed
    // meanwhile (expired) or already being charged by a retry of the same request is not charged.
    if !matches!(moved, WriteOutcome::Transitioned(true)) {
        return Ok(());
    }
    let order = order_of(&row);
    let mut route = candidates.first.clone();
    let outcome = loop {
        let outcome = route.pay_with_code(&order, auth_code).await;
        metrics::counter!("paymux_channel_pay_outcomes_total", "channel" => route.name, "outcome" => outcome_name(&outcome)).increment(1);
        if let PayOutcome::Failed { code, .. } = &outcome
            && crate::routing::code_decline_fails_over(code)
            && let Some(next) = candidates.next_admitted()
        {
            tracing::warn!(payment_id = %row.id, from = %route.id, to = %next.id, code = %code, "code payment fails over to the route's next channel account");
            metrics::counter!("paymux_route_failovers_total", "op" => "pay_with_code").increment(1);
            route = next;
            continue;
        }
        break outcome;
    };
    match outcome {
        PayOutcome::Succeeded { trade } => {
            if trade.amount_minor != Some(row.amount_minor) {
                tracing::error!(payment_id = %row.id, channel_amount = ?trade.amount_minor, "channel reports another amount; left processing for operations");
                return Ok(());
            }
            settle_succeeded(
                state,
                &row,
                &route,
                trade.channel_trade_no,
                trade.paid_at.map(|t| t.timestamp_micros()),
            )
            .await
        }
        PayOutcome::Failed { code, message } => {
            settle_failed(state, &row, &route, code, message).await
        }
        PayOutcome::UserPaying { .. } | PayOutcome::Unknown { .. } => {
            let st = state.clone();
            let follow = FollowUp::of(state);
            tokio::spawn(async move { follow_up(st, row, route, follow).await });
            Ok(())
        }
    }
}

fn outcome_name(o: &PayOutcome) -> &'static str {
    match o {
        PayOutcome::Succeeded { .. } => "succeeded",
        PayOutcome::Failed { .. } => "failed",
        PayOutcome::UserPaying { .. } => "user_paying",
        PayOutcome::Unknown { .. } => "unknown",
    }
}

/// Settles a payment the channel reports paid (`trade.state` is `Succeeded`) as `succeeded` with its
/// ledger entry — a payment that was closed meanwhile becomes a late success. A trade whose amount
/// is not the payment's is left alone for operations (`Ok(false)`).
pub async fn settle_paid(
    state: &AppState,
    row: &PaymentRow,
    route: &Route,
    trade: paymux_channels::Trade,
) -> ApiResult<bool> {
    // A success whose amount the channel did not report (or not in CNY) cannot be checked.
    if trade.amount_minor != Some(row.amount_minor) {
        tracing::error!(payment_id = %row.id, channel_amount = ?trade.amount_minor, "channel reports another amount, or none; left for operations");
        return Ok(false);
    }
    settle_succeeded(
        state,
        row,
        route,
        trade.channel_trade_no,
        trade.paid_at.map(|t| t.timestamp_micros()),
    )
    .await?;
    Ok(true)
}

async fn settle_succeeded(
    state: &AppState,
    row: &PaymentRow,
    route: &Route,
    channel_trade_no: Option<String>,
    paid_at_us: Option<i64>,
) -> ApiResult<()> {
    settle_succeeded_moved(state, row, route, channel_trade_no, paid_at_us)
        .await
        .map(|_| ())
}

/// [`settle_succeeded`], telling whether this call moved the payment (`false`: it was already
/// succeeded, or is in a state a success cannot leave, i.e. failed).
async fn settle_succeeded_moved(
    state: &AppState,
    row: &PaymentRow,
    route: &Route,
    channel_trade_no: Option<String>,
    paid_at_us: Option<i64>,
) -> ApiResult<bool> {
    let payment_id = PaymentId::from(row.id);
    let paid_at_us = paid_at_us.unwrap_or_else(crate::db::now_us);
    let entry = paymux_ledger::rules::payment_succeeded(
        payment_id,
        MerchantId::from(row.merchant_id),
        route.id,
        Money::cny(row.amount_minor),
        state
            .routes
            .fee_rate_bps(row.merchant_id, state.config.merchant_fee_rate_bps),
        route.cost_rate_bps,
        paid_at_us,
    );
    state
        .batcher
        .submit(WriteOp::Settle(Box::new(Settle {
            payment_id,
            to: PaymentStatus::Succeeded,
            channel_account_id: route.id.into(),
            channel_trade_no,
            failure_code: None,
            failure_message: None,
            paid_at_us: Some(paid_at_us),
            entry: Some(entry),
        })))
        .await
        .map(|o| o == WriteOutcome::Transitioned(true))
        .map_err(ApiError::unavailable)
}

pub(crate) async fn settle_failed(
    state: &AppState,
    row: &PaymentRow,
    route: &Route,
    code: String,
    message: String,
) -> ApiResult<()> {
    state
        .batcher
        .submit(WriteOp::Settle(Box::new(Settle {
            payment_id: PaymentId::from(row.id),
            to: PaymentStatus::Failed,
            channel_account_id: route.id.into(),
            channel_trade_no: None,
            failure_code: Some(code),
            failure_message: Some(message),
            paid_at_us: None,
            entry: None,
        })))
        .await
        .map_err(ApiError::unavailable)?;
    Ok(())
}

/// Polls until final or the deadline; at the deadline reverses, then settles by what the channel
/// says last (a payment that turns out paid is `succeeded`, never dropped).
async fn follow_up(state: AppState, row: PaymentRow, route: Arc<Route>, f: FollowUp) {
    let started = tokio::time::Instant::now();
    let no = out_trade_no(row.id);
    loop {
        tokio::time::sleep(f.poll_interval).await;
        match route.query(&no).await {
            Ok(t) => match t.state {
                TradeState::Succeeded => {
                    if let Err(e) = settle_paid(&state, &row, &route, t).await {
                        tracing::error!(payment_id = %row.id, error = ?e, "settling a paid code payment");
                    }
                    return;
                }
                TradeState::Failed | TradeState::Closed => {
                    let _ = settle_failed(
                        &state,
                        &row,
                        &route,
                        t.channel_state.clone(),
                        "the payer did not complete the payment".into(),
                    )
                    .await;
                    return;
                }
                TradeState::UserPaying | TradeState::NotPaid => {}
            },
            Err(e) => tracing::warn!(payment_id = %row.id, error = %e, "querying a code payment"),
        }
        if started.elapsed() >= f.deadline {
            break;
        }
    }
    // Deadline: reverse, then believe the channel's last word.
    let reversed = match route.reverse(&no).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(payment_id = %row.id, error = %e, "reversing a code payment at its deadline");
            false
        }
    };
    match route.query(&no).await {
        Ok(t) if t.state == TradeState::Succeeded => {
            let _ = settle_paid(&state, &row, &route, t).await;
        }
        // Still waiting for the payer and not reversed: the payer may yet confirm, so the payment
        // is not closed; the sweeper reverses and settles it later.
        Ok(t) if !reversed && matches!(t.state, TradeState::UserPaying | TradeState::NotPaid) => {
            tracing::warn!(payment_id = %row.id, state = %t.channel_state, "the reversal failed and the payer may still pay; left processing for the sweeper");
        }
        Ok(_) => {
            let _ = state
                .batcher
                .submit(WriteOp::Transition {
                    payment_id: PaymentId::from(row.id),
                    to: PaymentStatus::Closed,
                    closed_reason: Some("reversed_at_deadline".into()),
                })
                .await;
        }
        Err(e) => {
            tracing::error!(payment_id = %row.id, error = %e, "outcome still unknown after reversal; left processing for operations")
        }
    }
}

/// C2B with a known wallet: the channel's own code for the payer to scan, from the first candidate
/// account that creates the order (one that was unreachable or declined created none, so the next
/// is asked with the same `out_trade_no`; an unknown outcome is never failed over). The payment is
/// attached to that account only. On a channel error the payment is closed (nothing was charged)
/// and the merchant gets `channel_unavailable`.
pub async fn qr_merchant(
    state: &AppState,
    row: &PaymentRow,
    wallet: WalletBrand,
    mut candidates: crate::routing::Candidates,
) -> ApiResult<()> {
    let mut order = order_of(row);
    order.expires_at = Some(crate::db::us_to_datetime(row.expires_at_us));
    let req = paymux_channels::CreateOrder {
        order,
        kind: paymux_channels::CreateKind::Qr,
    };
    let payment_id = PaymentId::from(row.id);
    let mut route = candidates.first.clone();
    let created = loop {
        let created = route.create_order(&req).await;
        if let Err(e) = &created
            && crate::routing::create_error_fails_over(e)
            && let Some(next) = candidates.next_admitted()
        {
            tracing::warn!(payment_id = %row.id, from = %route.id, to = %next.id, error = %e, "order creation fails over to the route's next channel account");
            metrics::counter!("paymux_route_failovers_total", "op" => "create_order").increment(1);
            route = next;
            continue;
        }
        break created;
    };
    match created {
        Ok(paymux_channels::CreatedOrder::Qr { code_url }) => {
            let attached = state
                .batcher
                .submit(WriteOp::AttachQr {
                    payment_id,
                    channel_account_id: route.id.into(),
                    qr_code: code_url,
                })
                .await
                .map_err(ApiError::unavailable)?;
            if attached == crate::batcher::WriteOutcome::Transitioned(false) {
                // The payment was closed (expired) while the channel created the order, so the
                // sweeper never saw the order: close it at the channel too. Should the payer have
                // paid it already, the channel's notification is a late success, posted and flagged.
                if let Err(e) = route.close(&out_trade_no(row.id)).await {
                    tracing::warn!(payment_id = %row.id, error = %e, "closing the order of a payment closed meanwhile");
                }
            }
            Ok(())
        }
        Ok(other) => Err(ApiError::internal(format!(
            "unexpected channel answer {other:?}"
        ))),
        Err(e) => {
            tracing::warn!(payment_id = %row.id, error = %e, "creating the channel order");
            let _ = state
                .batcher
                .submit(WriteOp::Transition {
                    payment_id,
                    to: PaymentStatus::Closed,
                    closed_reason: Some("channel_error".into()),
                })
                .await;
            Err(ApiError::new(
                ErrorCode::ChannelUnavailable,
                format!("the {wallet} channel did not create the order: {e}"),
            ))
        }
    }
}

/// A channel's asynchronous notification: verified by the channel account's adapter, matched to
/// the payment by `out_trade_no` and amount, settled (a success after close is a late success,
/// posted and flagged, never dropped). Returns the reply the channel expects.
pub async fn channel_notification(
    state: &AppState,
    account: ChannelAccountId,
    headers: &http::HeaderMap,
    body: &[u8],
) -> paymux_channels::NotificationReply {
    let Some(route) = state.routes.account(account).await else {
        return paymux_channels::NotificationReply {
            status: 404,
            content_type: "text/plain",
            body: b"unknown channel account".to_vec(),
        };
    };
    let ok = match route.channel.verify_notification(headers, body) {
        Ok(n) => match handle_event(state, &route, n.event).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(channel = route.name, error = %e, "notification not applied");
                false
            }
        },
        Err(e) => {
            metrics::counter!("paymux_notifications_rejected_total", "channel" => route.name)
                .increment(1);
            tracing::warn!(channel = route.name, error = %e, "notification rejected");
            false
        }
    };
    route.channel.notification_reply(ok)
}

/// The channel was paid for a payment we had closed: once the settlement moved it to `succeeded`
/// (`late_success`, posted, webhook in the same transaction), operations get an exception.
async fn late_success(
    state: &AppState,
    route: &Route,
    id: Uuid,
    amount_minor: i64,
    channel_trade_no: Option<String>,
    paid_at_us: i64,
    fresh: bool,
) -> Result<(), String> {
    let moved = crate::payments::repo::get_any(&state.db, id)
        .await
        .map_err(|e| e.to_string())?
        .is_some_and(|p| p.late_success && p.status() == PaymentStatus::Succeeded);
    if !moved {
        return Ok(());
    }
    if fresh {
        tracing::error!(payment_id = %id, "late success: the channel was paid after the payment closed; posted, exception opened");
        metrics::counter!("paymux_late_success_total").increment(1);
    }
    crate::reconciliation::open_payment_exception(
        &state.db,
        &crate::reconciliation::LATE_SUCCESS_EXCEPTION,
        route.id,
        id,
        amount_minor,
        channel_trade_no,
        paid_at_us,
    )
    .await
    .map_err(|e| format!("open the late success exception: {e:#}"))
}

async fn handle_event(
    state: &AppState,
    route: &Route,
    event: paymux_channels::NotificationEvent,
) -> Result<(), String> {
    let trade = match event {
        paymux_channels::NotificationEvent::Payment { trade } => trade,
        paymux_channels::NotificationEvent::Refund { refund } => {
            return refund_event(state, route, refund).await;
        }
    };
    let id = Uuid::try_parse(&trade.out_trade_no)
        .map_err(|_| format!("out_trade_no {} is not ours", trade.out_trade_no))?;
    let row = crate::payments::repo::get_any(&state.db, id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no payment {id}"))?;
    // A payment with no account yet (a code payment still in flight, a link not attached) is
    // settled onto the notifying account: it must at least be one of the payment's merchant.
    if row.merchant_id != route.merchant_id
        || row
            .channel_account_id
            .is_some_and(|a| a != Uuid::from(route.id))
    {
        return Err(format!("payment {id} belongs to another channel account"));
    }
    // Any report carrying an amount must carry the payment's; a success must carry one.
    if trade.amount_minor.is_some_and(|a| a != row.amount_minor)
        || (trade.state == TradeState::Succeeded && trade.amount_minor.is_none())
    {
        return Err(format!(
            "amount {:?} is not the payment's {}",
            trade.amount_minor, row.amount_minor
        ));
    }
    match trade.state {
        TradeState::Succeeded => {
            // A late success (or its duplicate, should opening the exception have failed before).
            let late = row.status() == PaymentStatus::Closed || row.late_success;
            let paid_at_us = trade
                .paid_at
                .map(|t| t.timestamp_micros())
                .unwrap_or_else(crate::db::now_us);
            // Failed is final: the payer was charged for a payment the merchant was told failed.
            // Acknowledged (the channel would only send it again), with an exception for operations.
            let paid_while_failed = || async {
                tracing::error!(payment_id = %id, "the channel reports a failed payment paid; exception opened");
                metrics::counter!("paymux_paid_while_failed_total").increment(1);
                crate::reconciliation::open_payment_exception(
                    &state.db,
                    &crate::reconciliation::PAID_WHILE_FAILED_EXCEPTION,
                    route.id,
                    id,
                    row.amount_minor,
                    trade.channel_trade_no.clone(),
                    paid_at_us,
                )
                .await
                .map_err(|e| format!("open the paid-while-failed exception: {e:#}"))
            };
            if row.status() == PaymentStatus::Failed {
                return paid_while_failed().await;
            }
            let moved = settle_succeeded_moved(
                state,
                &row,
                route,
                trade.channel_trade_no.clone(),
                Some(paid_at_us),
            )
            .await
            .map_err(|e| format!("{e:?}"))?;
            // Failed meanwhile (a query's answer settled it between our read and this success).
            if !moved
                && let Ok(Some(now)) = crate::payments::repo::get_any(&state.db, id).await
                && now.status() == PaymentStatus::Failed
            {
                return paid_while_failed().await;
            }
            if late {
                let fresh = row.status() == PaymentStatus::Closed;
                late_success(
                    state,
                    route,
                    id,
                    row.amount_minor,
                    trade.channel_trade_no,
                    paid_at_us,
                    fresh,
                )
                .await?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Asks the payment's channel for a refund and settles it when the answer is final; otherwise a
/// follow-up queries until it is (the refund stays `processing` meanwhile — never failed on a
/// timeout, since the money may have moved).
pub async fn refund(state: &AppState, payment: &PaymentRow, row: crate::refunds::RefundRow) {
    use paymux_channels::RefundOutcome;
    let route = match payment.channel_account_id {
        Some(a) => state.routes.account(ChannelAccountId::from(a)).await,
        None => None,
    };
    let Some(route) = route else {
        settle_refund(
            state,
            payment,
            &row,
            None,
            paymux_model::RefundStatus::Failed,
            None,
            None,
            Some((
                "NO_ROUTE".into(),
                "the payment's channel account is not configured".into(),
            )),
        )
        .await;
        return;
    };
    let req = paymux_channels::RefundRequest {
        out_trade_no: out_trade_no(payment.id),
        out_refund_no: out_trade_no(row.id),
        refund_amount: Money::cny(row.amount_minor),
        total_amount: Money::cny(payment.amount_minor),
        reason: row.reason.clone(),
        notify_url: None,
    };
    match route.refund(&req).await {
        RefundOutcome::Succeeded { refund } => {
            settle_refund(
                state,
                payment,
                &row,
                Some(&route),
                paymux_model::RefundStatus::Succeeded,
                refund.channel_refund_no,
                refund.succeeded_at.map(|t| t.timestamp_micros()),
                None,
            )
            .await;
        }
        RefundOutcome::Failed { code, message } => {
            settle_refund(
                state,
                payment,
                &row,
                Some(&route),
                paymux_model::RefundStatus::Failed,
                None,
                None,
                Some((code, message)),
            )
            .await;
        }
        RefundOutcome::Processing { .. } | RefundOutcome::Unknown { .. } => {
            let st = state.clone();
            let payment = payment.clone();
            let f = FollowUp::of(state);
            tokio::spawn(async move { refund_follow_up(st, payment, row, route, f).await });
        }
    }
}

/// Finishes a refund left `processing` (its follow-up ended without an answer, or a restart cut it
/// short) by what the channel says: a refund the channel does not know is sent again with the same
/// refund number. `true` once it is final; `false`: no final answer yet, try again later.
pub async fn recover_refund(state: &AppState, row: crate::refunds::RefundRow) -> bool {
    use paymux_channels::RefundState;
    let payment = match crate::payments::repo::get_any(&state.db, row.payment_id).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            tracing::error!(refund_id = %row.id, "a processing refund without its payment; left for operations");
            return false;
        }
        Err(e) => {
            tracing::warn!(refund_id = %row.id, error = %e, "recovering a refund: reading its payment");
            return false;
        }
    };
    let route = match payment.channel_account_id {
        Some(a) => state.routes.account(ChannelAccountId::from(a)).await,
        None => None,
    };
    let Some(route) = route else {
        tracing::warn!(refund_id = %row.id, "a processing refund whose channel account is not configured; left for operations");
        return false;
    };
    let (to, channel_refund_no, succeeded_at, failure) = match route
        .query_refund(&out_trade_no(payment.id), &out_trade_no(row.id))
        .await
    {
        Ok(info) => match info.state {
            RefundState::Succeeded => (
                paymux_model::RefundStatus::Succeeded,
                info.channel_refund_no,
                info.succeeded_at,
                None,
            ),
            RefundState::Failed => (
                paymux_model::RefundStatus::Failed,
                None,
                None,
                Some((info.channel_state, "the channel did not refund".to_string())),
            ),
            RefundState::Processing => return false,
        },
        // Sent again (the same refund number cannot be applied twice); settled when the answer is
        // final, otherwise queried again at the sweeper's next try.
        Err(paymux_channels::ChannelError::Rejected { code, .. }) if refund_not_found(&code) => {
            use paymux_channels::RefundOutcome;
            let req = paymux_channels::RefundRequest {
                out_trade_no: out_trade_no(payment.id),
                out_refund_no: out_trade_no(row.id),
                refund_amount: Money::cny(row.amount_minor),
                total_amount: Money::cny(payment.amount_minor),
                reason: row.reason.clone(),
                notify_url: None,
            };
            match route.refund(&req).await {
                RefundOutcome::Succeeded { refund } => (
                    paymux_model::RefundStatus::Succeeded,
                    refund.channel_refund_no,
                    refund.succeeded_at,
                    None,
                ),
                RefundOutcome::Failed { code, message } => (
                    paymux_model::RefundStatus::Failed,
                    None,
                    None,
                    Some((code, message)),
                ),
                RefundOutcome::Processing { .. } | RefundOutcome::Unknown { .. } => return false,
            }
        }
        Err(e) => {
            tracing::warn!(refund_id = %row.id, error = %e, "recovering a refund: no answer from the channel; trying again later");
            return false;
        }
    };
    settle_refund(
        state,
        &payment,
        &row,
        Some(&route),
        to,
        channel_refund_no,
        succeeded_at.map(|t| t.timestamp_micros()),
        failure,
    )
    .await;
    true
}

/// A refund's final state through the write batcher (a success posts its ledger entry in the same
/// transaction and announces it by webhook).
#[allow(clippy::too_many_arguments)]
pub async fn settle_refund(
    state: &AppState,
    payment: &PaymentRow,
    row: &crate::refunds::RefundRow,
    route: Option<&Route>,
    to: paymux_model::RefundStatus,
    channel_refund_no: Option<String>,
    succeeded_at_us: Option<i64>,
    failure: Option<(String, String)>,
) {
    let ledger = match route.filter(|_| to == paymux_model::RefundStatus::Succeeded) {
        Some(r) => {
            let (merchant_fee_rate_bps, channel_cost_rate_bps) =
                booked_rates(state, payment, r).await;
            Some(crate::refunds::RefundLedger {
                merchant: MerchantId::from(payment.merchant_id),
                channel_account: r.id,
                payment_amount_minor: payment.amount_minor,
                merchant_fee_rate_bps,
                channel_cost_rate_bps,
            })
        }
        None => None,
    };
    let (failure_code, failure_message) = match failure {
        Some((c, m)) => (Some(c), Some(m)),
        None => (None, None),
    };
    let op = WriteOp::SettleRefund(Box::new(crate::refunds::RefundSettle {
        refund_id: paymux_model::RefundId::from(row.id),
        payment_id: PaymentId::from(payment.id),
        to,
        channel_refund_no,
        succeeded_at_us,
        failure_code,
        failure_message,
        ledger,
    }));
    if let Err(e) = state.batcher.submit(op).await {
        tracing::error!(refund_id = %row.id, error = %e, "settling a refund");
    }
}

/// The fee and cost rates the payment's ledger entry was posted with: a refund returns the fees
/// charged then, whatever the rates are now. The current rates only when that entry is unreadable.
async fn booked_rates(state: &AppState, payment: &PaymentRow, route: &Route) -> (u32, u32) {
    let current = (
        state
            .routes
            .fee_rate_bps(payment.merchant_id, state.config.merchant_fee_rate_bps),
        route.cost_rate_bps,
    );
    let entry_id =
        paymux_ledger::rules::entry_id(paymux_ledger::EntryKind::Payment, payment.id).into_uuid();
    let entries = match paymux_ledger::queries::entries_by_reference(
        &state.db.ledger_pool(),
        payment.id,
    )
    .await
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(payment_id = %payment.id, error = %e, "reading the payment's ledger entry; the refund uses the current rates");
            return current;
        }
    };
    let rate = |m: &serde_json::Value, key: &str| {
        m.get(key)
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    match entries.iter().find(|e| e.id.into_uuid() == entry_id) {
        Some(e) => match (
            rate(&e.metadata, "merchant_fee_rate_bps"),
            rate(&e.metadata, "channel_cost_rate_bps"),
        ) {
            (Some(fee), Some(cost)) => (fee, cost),
            _ => current,
        },
        None => {
            tracing::warn!(payment_id = %payment.id, "no ledger entry for the refunded payment; the refund uses the current rates");
            current
        }
    }
}

/// Queries a refund until final (at the poll interval, for up to 20 deadlines), then leaves it
/// `processing` for operations if the channel still has no answer.
async fn refund_follow_up(
    state: AppState,
    payment: PaymentRow,
    row: crate::refunds::RefundRow,
    route: Arc<Route>,
    f: FollowUp,
) {
    use paymux_channels::RefundState;
    let started = tokio::time::Instant::now();
    while started.elapsed() < f.deadline * 20 {
        tokio::time::sleep(f.poll_interval).await;
        // A notification may have settled it meanwhile.
        if let Ok(Some(r)) = crate::refunds::get(&state.db, None, row.id).await
            && r.status() != paymux_model::RefundStatus::Processing
        {
            return;
        }
        match route
            .query_refund(&out_trade_no(payment.id), &out_trade_no(row.id))
            .await
        {
            Ok(info) => match info.state {
                RefundState::Succeeded => {
                    settle_refund(
                        &state,
                        &payment,
                        &row,
                        Some(&route),
                        paymux_model::RefundStatus::Succeeded,
                        info.channel_refund_no,
                        info.succeeded_at.map(|t| t.timestamp_micros()),
                        None,
                    )
                    .await;
                    return;
                }
                RefundState::Failed => {
                    settle_refund(
                        &state,
                        &payment,
                        &row,
                        Some(&route),
                        paymux_model::RefundStatus::Failed,
                        None,
                        None,
                        Some((info.channel_state, "the channel did not refund".into())),
                    )
                    .await;
                    return;
                }
                RefundState::Processing => {}
            },
            // The channel does not know the refund (the request never arrived): ask again, with the
            // same refund number, so it cannot be applied twice. Any other rejection of the query
            // says nothing about the refund: it stays `processing` and is queried again.
            Err(paymux_channels::ChannelError::Rejected { code, .. })
                if refund_not_found(&code) =>
            {
                let req = paymux_channels::RefundRequest {
                    out_trade_no: out_trade_no(payment.id),
                    out_refund_no: out_trade_no(row.id),
                    refund_amount: Money::cny(row.amount_minor),
                    total_amount: Money::cny(payment.amount_minor),
                    reason: row.reason.clone(),
                    notify_url: None,
                };
                if let paymux_channels::RefundOutcome::Failed { code, message } =
                    route.refund(&req).await
                {
                    settle_refund(
                        &state,
                        &payment,
                        &row,
                        Some(&route),
                        paymux_model::RefundStatus::Failed,
                        None,
                        None,
                        Some((code, message)),
                    )
                    .await;
                    return;
                }
            }
            Err(e) => tracing::warn!(refund_id = %row.id, error = %e, "querying a refund"),
        }
    }
    tracing::error!(refund_id = %row.id, "refund still not final at the channel; left processing for operations");
}

/// A refund query's rejection saying the channel has no such refund (WeChat `RESOURCE_NOT_EXISTS`,
/// Alipay `REFUND_NOT_EXIST`, or no such order at all).
fn refund_not_found(code: &str) -> bool {
    let c = code.to_ascii_uppercase().replace('_', "");
    crate::sweeper::order_not_found(code)
        || c.ends_with("REFUNDNOTEXIST")
        || c == "RESOURCENOTEXISTS"
}

async fn refund_event(
    state: &AppState,
    route: &Route,
    info: paymux_channels::RefundInfo,
) -> Result<(), String> {
    use paymux_channels::RefundState;
    let id = Uuid::try_parse(&info.out_refund_no)
        .map_err(|_| format!("out_refund_no {} is not ours", info.out_refund_no))?;
    let row = crate::refunds::get(&state.db, None, id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no refund {id}"))?;
    if info.amount_minor.is_some_and(|a| a != row.amount_minor) {
        return Err(format!(
            "refund amount {:?} is not ours ({})",
            info.amount_minor, row.amount_minor
        ));
    }
    let payment = crate::payments::repo::get_any(&state.db, row.payment_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no payment {}", row.payment_id))?;
    if payment.channel_account_id != Some(Uuid::from(route.id)) {
        return Err(format!("refund {id} belongs to another channel account"));
    }
    match info.state {
        RefundState::Succeeded => {
            settle_refund(
                state,
                &payment,
                &row,
                Some(route),
                paymux_model::RefundStatus::Succeeded,
                info.channel_refund_no,
                info.succeeded_at.map(|t| t.timestamp_micros()),
                None,
            )
            .await;
        }
        RefundState::Failed => {
            settle_refund(
                state,
                &payment,
                &row,
                Some(route),
                paymux_model::RefundStatus::Failed,
                None,
                None,
                Some((info.channel_state, "the channel did not refund".into())),
            )
            .await;
        }
        RefundState::Processing => {}
    }
    Ok(())
}
