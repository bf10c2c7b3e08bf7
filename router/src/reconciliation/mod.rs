//! Nightly reconciliation and settlement (`paymux reconcile --date …`).
//!
//! For each channel account and day (Asia/Shanghai): the account's successes of the day are loaded
//! into a [`paymux_reconcile::Matcher`], and the channel's bill is downloaded and read as a stream,
//! once: each line of a record in the index is classified as it arrives; the few other lines are
//! kept aside, and the records they name are loaded afterwards even when they fall on another day of
//! ours (cross-midnight) or never succeeded here (a dropped notification). Then:
//!
//! - `status_mismatch` the channel paid → the payment is completed through the normal transition
//!   path (the write batcher's `Settle`: compare-and-set, ledger entry and webhook in one
//!   transaction); a processing refund likewise; the item is recorded as resolved by reconciliation;
//! - `fee_mismatch` → an adjustment entry for the difference (channel fees ↔ channel receivable);
//! - `missing_on_channel` near the day's end → carried over: matched when a later day's bill lists it,
//!   an exception after `reconcile_carry_over_days`;
//! - everything else → an exception;
//! - the channel's net for the day → the channel settlement entry (bank cash ← channel receivable),
//!   and the check that the receivable of the bill's records nets to zero after it (the residual is
//!   reported: exceptions explain it);
//! - when every account was reconciled: merchant settlement (T+1) per merchant and day — succeeded
//!   payments − refunds − merchant fees, a `merchant_settlements` row (unique per merchant and day),
//!   its ledger entry (merchant payable → bank cash) and a CSV payout file.
//!
//! A run is one row per (account, day); a rerun updates it and keeps the items found before (a
//! payment completed by the first run stays a resolved `status_mismatch`). Every ledger entry has a
//! deterministic id, so a rerun never posts twice. Reports (JSON, items CSV, HTML with SVG charts)
//! are written under `<data_dir>/reports/<day>/<account>/` ([`report`]). [`scheduler`] runs the
//! previous day every night in `paymux serve`, on one node.

pub mod bench;
pub mod report;
pub mod scheduler;
pub mod schedules;

use crate::db::BeginWrite;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use chrono::{NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Asia::Shanghai;
use paymux_channels::BillKind;
use paymux_ledger::NewEntry;
use paymux_ledger::chart;
use paymux_model::{ChannelAccountId, Currency, MerchantId, Money, SettlementId};
use paymux_reconcile::{
    Class, Item, Key, Matcher, Options, PlatformRecord, PlatformStatus, Resolution,
};
use serde::{Deserialize, Serialize};
use sqlx::QueryBuilder;
use uuid::Uuid;

use crate::AppState;
use crate::db::{Db, now_us};
use crate::orchestrate::Route;

/// Most values bound in one statement's `IN (…)` / multi-row `VALUES`.
const CHUNK: usize = 500;
/// The bank account settlements move money through.
pub const SETTLEMENT_BANK: &str = "settlement";
const DAY_US: i64 = 86_400_000_000;

/// What the runner reports while it works (for a progress bar).
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// Starting the `index`-th of `total` channel accounts.
    Account {
        name: &'a str,
        index: usize,
        total: usize,
    },
    /// A step of the current account (`download`, `match`, `resolve`, `report`) or of the day
    /// (`merchant settlement`).
    Stage(&'a str),
    /// Bill lines read so far in the matching pass.
    Lines(u64),
}

pub type ProgressFn<'a> = &'a (dyn Fn(Progress<'_>) + Send + Sync);

/// The day's bounds in unix microseconds: `[00:00, 24:00)` Asia/Shanghai.
pub fn day_bounds_us(day: NaiveDate) -> (i64, i64) {
    let start = Shanghai
        .from_local_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight"))
        .earliest()
        .map(|t| t.timestamp_micros())
        .unwrap_or_default();
    (start, start + DAY_US)
}

fn shanghai_us(t: NaiveDateTime) -> i64 {
    Shanghai
        .from_local_datetime(&t)
        .earliest()
        .map(|t| t.timestamp_micros())
        .unwrap_or_default()
}

fn v5(name: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes())
}

fn kind_str(k: BillKind) -> &'static str {
    match k {
        BillKind::Payment => "payment",
        BillKind::Refund => "refund",
    }
}

fn status_str(s: PlatformStatus) -> &'static str {
    match s {
        PlatformStatus::Created => "created",
        PlatformStatus::Processing => "processing",
        PlatformStatus::Succeeded => "succeeded",
        PlatformStatus::Failed => "failed",
        PlatformStatus::Closed => "closed",
    }
}

fn parse_status(s: &str) -> PlatformStatus {
    match s {
        "created" => PlatformStatus::Created,
        "processing" => PlatformStatus::Processing,
        "succeeded" => PlatformStatus::Succeeded,
        "failed" => PlatformStatus::Failed,
        _ => PlatformStatus::Closed,
    }
}

fn resolution_str(r: &Resolution) -> &'static str {
    match r {
        Resolution::CompletePayment => "complete_payment",
        Resolution::CompleteRefund => "complete_refund",
        Resolution::FeeAdjustment { .. } => "fee_adjustment",
        Resolution::CarryOver => "carry_over",
        Resolution::Exception => "exception",
    }
}

/// The number a record has in the bill: `payment:<out_trade_no>` or `refund:<out_refund_no>`.
fn record_key(kind: BillKind, out_trade_no: &str, out_refund_no: Option<&str>) -> String {
    match kind {
        BillKind::Payment => format!("payment:{out_trade_no}"),
        BillKind::Refund => format!("refund:{}", out_refund_no.unwrap_or_default()),
    }
}

/// One reconciliation item as stored (and reported).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct StoredItem {
    pub id: Uuid,
    pub class: String,
    pub kind: String,
    pub out_trade_no: String,
    pub out_refund_no: Option<String>,
    pub channel_trade_no: Option<String>,
    pub platform_amount_minor: Option<i64>,
    pub channel_amount_minor: Option<i64>,
    pub platform_status: Option<String>,
    pub channel_fee_minor: Option<i64>,
    pub expected_fee_minor: Option<i64>,
    pub resolution: String,
    pub resolved_by: Option<String>,
}

const ITEM_COLUMNS: &str = "id, class, kind, out_trade_no, out_refund_no, channel_trade_no, \
    platform_amount_minor, channel_amount_minor, platform_status, channel_fee_minor, \
    expected_fee_minor, resolution, resolved_by";

impl StoredItem {
    fn of(run_id: Uuid, item: &Item) -> StoredItem {
        StoredItem {
            id: v5(&format!(
                "paymux:recon-item:{run_id}:{}",
                record_key(item.kind, &item.out_trade_no, item.out_refund_no.as_deref())
            )),
            class: item.class.as_str().into(),
            kind: kind_str(item.kind).into(),
            out_trade_no: item.out_trade_no.clone(),
            out_refund_no: item.out_refund_no.clone(),
            channel_trade_no: item.channel_trade_no.clone(),
            platform_amount_minor: item.platform_amount_minor,
            channel_amount_minor: item.channel_amount_minor,
            platform_status: item.platform_status.map(|s| status_str(s).into()),
            channel_fee_minor: item.channel_fee_minor,
            expected_fee_minor: item.expected_fee_minor,
            resolution: resolution_str(&item.resolution).into(),
            resolved_by: None,
        }
    }

    fn key(&self) -> String {
        let kind = if self.kind == "refund" {
            BillKind::Refund
        } else {
            BillKind::Payment
        };
        record_key(kind, &self.out_trade_no, self.out_refund_no.as_deref())
    }

    /// The amount the item is counted with: the channel's, or ours for `missing_on_channel`.
    pub fn amount_minor(&self) -> i64 {
        self.channel_amount_minor
            .or(self.platform_amount_minor)
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassTotal {
    pub class: String,
    pub count: u64,
    pub amount_minor: i64,
}

/// The outcome of one channel account and day.
#[derive(Debug, Clone, Serialize)]
pub struct AccountReport {
    pub run_id: Uuid,
    pub channel_account_id: ChannelAccountId,
    pub channel: String,
    pub day: NaiveDate,
    /// `completed` or `failed`.
    pub status: String,
    pub error: Option<String>,
    pub channel_records: u64,
    pub platform_records: u64,
    /// Every class, in [`Class::ALL`] order.
    pub by_class: Vec<ClassTotal>,
    /// The channel's net for the day (payments − refunds − fees + fees returned).
    pub channel_net_minor: i64,
    pub channel_fees_minor: i64,
    /// The channel settlement entry (none when the net is not positive).
    pub settlement_entry_id: Option<Uuid>,
    /// Channel receivable of the bill's records after the settlement; 0 when our books agree with
    /// the bill line by line (exceptions explain the rest).
    pub receivable_residual_minor: i64,
    /// Items resolved by reconciliation (completed payments and refunds, fee adjustments).
    pub resolved: u64,
    /// Exceptions opened by this day's run (including carry-overs that ran out of days).
    pub exceptions: u64,
    pub carried_over: u64,
    /// Carry-overs of earlier days that this day's bill lists.
    pub carry_overs_matched: u64,
    pub items: Vec<StoredItem>,
    pub report_dir: Option<String>,
}

impl AccountReport {
    pub fn count(&self, class: Class) -> u64 {
        self.by_class
            .iter()
            .find(|c| c.class == class.as_str())
            .map_or(0, |c| c.count)
    }
}

/// A merchant's settlement of one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct MerchantSettlement {
    pub id: Uuid,
    pub merchant_id: Uuid,
    pub day: String,
    pub currency: String,
    pub gross_minor: i64,
    pub refunds_minor: i64,
    pub fees_minor: i64,
    /// What the day's payments and refunds left on the merchant's payable: gross − refunds − fees.
    pub net_minor: i64,
    /// What earlier days left unpaid on the payable: negative when a day's refunds exceeded its
    /// payments (a debt the next payouts take back), positive for postings dated in a day already
    /// settled.
    pub carried_minor: i64,
    /// What is paid to the merchant: `max(0, net_minor + carried_minor)`.
    pub payout_minor: i64,
    pub entry_id: Option<Uuid>,
    pub payout_file: Option<String>,
}

/// Everything a `paymux reconcile --date` did.
#[derive(Debug, Clone, Serialize)]
pub struct DayReport {
    pub day: NaiveDate,
    pub accounts: Vec<AccountReport>,
    /// Empty when only some accounts were reconciled (`--channel-account`).
    pub merchant_settlements: Vec<MerchantSettlement>,
}

impl DayReport {
    pub fn is_ok(&self) -> bool {
        self.accounts.iter().all(|a| a.status == "completed")
    }
}

/// Reconciles `day` for one channel account or every one, then (for every account) settles the
/// merchants. Failures of one account are recorded on its run and reported; the others go on.
pub async fn run_day(
    state: &AppState,
    day: NaiveDate,
    account: Option<ChannelAccountId>,
    progress: ProgressFn<'_>,
) -> anyhow::Result<DayReport> {
    let routes: Vec<Arc<Route>> = match account {
        Some(id) => vec![
            state
                .routes
                .by_id(id)
                .with_context(|| format!("no channel account {id}"))?,
        ],
        None => state.routes.all(),
    };
    let mut accounts = Vec::with_capacity(routes.len());
    for (index, route) in routes.iter().enumerate() {
        progress(Progress::Account {
            name: route.name,
            index,
            total: routes.len(),
        });
        accounts.push(reconcile_account(state, route, day, progress).await?);
    }
    // Merchants are settled once every account has completed the day (this run's accounts, and
    // for a run of one account, the others' earlier runs).
    let all_completed = accounts.iter().all(|a| a.status == "completed")
        && match account {
            None => true,
            Some(_) => {
                let done = scheduler::completed_accounts(&state.db, day).await?;
                state
                    .routes
                    .all()
                    .iter()
                    .all(|r| done.contains(&Uuid::from(r.id)))
            }
        };
    let merchant_settlements = if all_completed {
        progress(Progress::Stage("merchant settlement"));
        settle_merchants(state, day).await?
    } else {
        Vec::new()
    };
    let report = DayReport {
        day,
        accounts,
        merchant_settlements,
    };
    // The index lists every account's report of the day and the day's settlements, whichever
    // run made them.
    let settlements = if report.merchant_settlements.is_empty() {
        day_settlements(&state.db, day).await?
    } else {
        report.merchant_settlements.clone()
    };
    report::write_day_index(&state.config.data_dir, day, &settlements)?;
    Ok(report)
}

/// The id of the run of an account and day (one row, however often it runs).
pub fn run_id(account: ChannelAccountId, day: NaiveDate) -> Uuid {
    v5(&format!("paymux:recon-run:{account}:{day}"))
}

/// One account and day: the run row says `running` while it works, then `completed` or `failed`.
pub async fn reconcile_account(
    state: &AppState,
    route: &Route,
    day: NaiveDate,
    progress: ProgressFn<'_>,
) -> anyhow::Result<AccountReport> {
    let run_id = run_id(route.id, day);
    start_run(&state.db, run_id, route.id, day).await?;
    match reconcile_inner(state, route, day, run_id, progress).await {
        Ok(r) => Ok(r),
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!(channel = route.name, %day, error = %msg, "reconciliation failed");
            finish_failed(&state.db, run_id, &msg).await?;
            Ok(AccountReport {
                run_id,
                channel_account_id: route.id,
                channel: route.name.into(),
                day,
                status: "failed".into(),
                error: Some(msg),
                channel_records: 0,
                platform_records: 0,
                by_class: Class::ALL
                    .iter()
                    .map(|c| ClassTotal {
                        class: c.as_str().into(),
                        count: 0,
                        amount_minor: 0,
                    })
                    .collect(),
                channel_net_minor: 0,
                channel_fees_minor: 0,
                settlement_entry_id: None,
                receivable_residual_minor: 0,
                resolved: 0,
                exceptions: 0,
                carried_over: 0,
                carry_overs_matched: 0,
                items: Vec::new(),
                report_dir: None,
            })
        }
    }
}

async fn reconcile_inner(
    state: &AppState,
    route: &Route,
    day: NaiveDate,
    run_id: Uuid,
    progress: ProgressFn<'_>,
) -> anyhow::Result<AccountReport> {
    let db = &state.db;
    let (start_us, end_us) = day_bounds_us(day);
    let window_us = i64::try_from(state.config.reconcile_carry_over_window_seconds)
        .unwrap_or(i64::MAX / 2)
        * 1_000_000;
    let mut matcher = Matcher::new(Options {
        day_end_us: end_us,
        carry_over_window_us: window_us.min(DAY_US),
    });
    progress(Progress::Stage("load"));
    load_day_records(db, route, start_us, end_us, &mut matcher).await?;

    // One pass over the bill: lines of the day's successes are classified as they arrive; the
    // others are kept aside for the records they name.
    progress(Progress::Stage("match"));
    let bill = route
        .channel
        .download_bill(day)
        .await
        .context("download the bill")?;
    let mut lines = 0u64;
    for line in bill {
        matcher
            .push(line.context("read the bill")?)
            .context("reconcile the bill")?;
        lines += 1;
        if lines.is_multiple_of(4096) {
            progress(Progress::Lines(lines));
        }
    }
    progress(Progress::Lines(lines));
    // When the channel booked the lines we did not expect (a completed payment gets that time).
    let times_us: HashMap<String, i64> = matcher
        .unknown()
        .iter()
        .map(|l| (Key::of_record(l).to_string(), shanghai_us(l.time)))
        .collect();
    // Our records the bill names that are not among the day's successes.
    let missing: Vec<&String> = times_us.keys().collect();
    let named = load_named_records(db, route, &missing).await?;
    let named_keys: HashSet<String> = named
        .iter()
        .map(|r| Key::new(r.kind, &r.out_trade_no, r.out_refund_no.as_deref()).to_string())
        .collect();
    // Accounts sharing this account's bill: the bill's lines of their records are theirs, and lines
    // nobody here knows belong to the first of them only (no exception twice).
    let sharing: Vec<ChannelAccountId> = state
        .routes
        .all()
        .iter()
        .filter(|r| r.bill_source == route.bill_source)
        .map(|r| r.id)
        .collect();
    let foreign: HashSet<String> = if sharing.len() > 1 {
        let unknown: Vec<&String> = missing
            .iter()
            .copied()
            .filter(|k| !named_keys.contains(*k))
            .collect();
        if sharing.iter().min() == Some(&route.id) {
            existing_keys(db, &unknown).await?
        } else {
            unknown.into_iter().cloned().collect()
        }
    } else {
        HashSet::new()
    };
    // Carry-overs of earlier days: listed now → matched; out of days → exception.
    let open = open_carry_overs(db, route.id).await?;
    let expire_before = day - chrono::Days::new(u64::from(state.config.reconcile_carry_over_days));
    let mut carry_matched: Vec<String> = Vec::new();
    let mut carry_expired: Vec<(String, Uuid)> = Vec::new();
    for (key, item_id, from_day) in open {
        let Ok(from) = NaiveDate::parse_from_str(&from_day, "%Y-%m-%d") else {
            continue;
        };
        if from >= day {
            continue;
        }
        if key.parse::<Key>().is_ok_and(|k| matcher.listed(&k)) {
            carry_matched.push(key);
        } else if from <= expire_before {
            carry_expired.push((key, item_id));
        }
    }
    let finished = matcher
        .finish(named, |l| !foreign.contains(&Key::of_record(l).to_string()))
        .context("reconcile the bill")?;
    let outcome = finished.outcome;
    let platform_records = outcome.summary.platform_records;
    // Payments and refunds of ours the bill lists: their entries moved the receivable.
    let platform_ids: Vec<Uuid> = finished
        .listed
        .iter()
        .filter_map(|k| k.uuid_bytes().map(Uuid::from_bytes))
        .collect();
    drop(finished.listed);

    progress(Progress::Stage("resolve"));
    let stored: HashMap<Uuid, StoredItem> = load_items(db, run_id)
        .await?
        .into_iter()
        .map(|i| (i.id, i))
        .collect();
    let mut new_items: Vec<StoredItem> = Vec::new();
    let mut newly_resolved: Vec<Uuid> = Vec::new();
    let mut exceptions: Vec<(Uuid, String)> = Vec::new();
    let mut carries: Vec<(String, Uuid)> = Vec::new();
    let mut entries: Vec<NewEntry> = Vec::new();
    for item in &outcome.items {
        let mut row = StoredItem::of(run_id, item);
        let previous = stored.get(&row.id);
        if previous.is_some_and(|p| p.resolved_by.is_some()) {
            continue;
        }
        let resolved = match &item.resolution {
            Resolution::CompletePayment => {
                let at = times_us.get(&row.key()).copied().unwrap_or(start_us);
                complete_payment(state, route, item, at).await?
            }
            Resolution::CompleteRefund => {
                let at = times_us.get(&row.key()).copied().unwrap_or(start_us);
                complete_refund(state, route, item, at).await?
            }
            Resolution::FeeAdjustment { delta_minor } => {
                entries.extend(fee_adjustment(route.id, item, *delta_minor, start_us));
                true
            }
            Resolution::CarryOver => {
                carries.push((row.key(), row.id));
                false
            }
            Resolution::Exception => {
                exceptions.push((row.id, row.class.clone()));
                false
            }
        };
        // A completion that did not go through (the payment moved elsewhere meanwhile) is for a
        // person to look at.
        if !resolved
            && matches!(
                item.resolution,
                Resolution::CompletePayment | Resolution::CompleteRefund
            )
        {
            exceptions.push((row.id, row.class.clone()));
        }
        if resolved {
            row.resolved_by = Some("reconciliation".into());
        }
        match previous {
            Some(_) if resolved => newly_resolved.push(row.id),
            Some(_) => {}
            None => new_items.push(row),
        }
    }

    let net = i64::try_from(outcome.summary.channel_net_minor).context("channel net")?;
    let fees = i64::try_from(outcome.summary.channel_fees_minor).context("channel fees")?;
    let settlement_entry = (net > 0).then(|| {
        paymux_ledger::rules::channel_settlement(
            SettlementId::from_uuid(v5(&format!("paymux:channel-settlement:{}:{day}", route.id))),
            route.id,
            SETTLEMENT_BANK,
            Money::cny(net),
            end_us - 1,
        )
    });
    let settlement_entry_id = settlement_entry.as_ref().map(|e| e.id.into_uuid());
    entries.extend(settlement_entry);

    // Every item of the run: what earlier attempts found, and what is new.
    let mut items: Vec<StoredItem> = stored.into_values().collect();
    for id in &newly_resolved {
        if let Some(i) = items.iter_mut().find(|i| i.id == *id) {
            i.resolved_by = Some("reconciliation".into());
        }
    }
    items.extend(new_items.iter().cloned());
    items.sort_by(|a, b| {
        (
            class_rank(&a.class),
            &a.kind,
            &a.out_trade_no,
            &a.out_refund_no,
        )
            .cmp(&(
                class_rank(&b.class),
                &b.kind,
                &b.out_trade_no,
                &b.out_refund_no,
            ))
    });
    let by_class = totals(&outcome.summary, &items);
    let report_dir = report::account_dir(&state.config.data_dir, day, route.id);

    let write = Write {
        run_id,
        account: route.id,
        day,
        new_items: &new_items,
        newly_resolved: &newly_resolved,
        exceptions: &exceptions,
        carries: &carries,
        carry_matched: &carry_matched,
        carry_expired: &carry_expired,
        entries: &entries,
        platform_ids: &platform_ids,
        receivable_account: chart::channel_receivable(route.id, Currency::Cny)
            .id()
            .into_uuid(),
        net,
    };
    progress(Progress::Stage("write"));
    let residual = write_run(db, &write).await?;
    let (exceptions_n, carried_n, carry_matched_n) = run_counts(db, run_id, route.id, day).await?;

    let report = AccountReport {
        run_id,
        channel_account_id: route.id,
        channel: route.name.into(),
        day,
        status: "completed".into(),
        error: None,
        channel_records: outcome.summary.channel_records,
        platform_records,
        by_class,
        channel_net_minor: net,
        channel_fees_minor: fees,
        settlement_entry_id,
        receivable_residual_minor: residual,
        resolved: items.iter().filter(|i| i.resolved_by.is_some()).count() as u64,
        exceptions: exceptions_n,
        carried_over: carried_n,
        carry_overs_matched: carry_matched_n,
        items,
        report_dir: Some(report_dir.display().to_string()),
    };
    progress(Progress::Stage("report"));
    report::write_account(&report_dir, &report)?;
    finish_completed(db, &report).await?;
    Ok(report)
}

fn class_rank(class: &str) -> usize {
    Class::ALL
        .iter()
        .position(|c| c.as_str() == class)
        .unwrap_or(usize::MAX)
}

/// Counts and amounts per class over the run's items; `matched` is every other bill line.
fn totals(summary: &paymux_reconcile::Summary, items: &[StoredItem]) -> Vec<ClassTotal> {
    let bill_amount: i128 = summary
        .by_class
        .iter()
        .filter(|(c, _, _)| *c != Class::MissingOnChannel)
        .map(|(_, _, a)| *a)
        .sum();
    let mut out: Vec<ClassTotal> = Class::ALL
        .iter()
        .map(|c| ClassTotal {
            class: c.as_str().into(),
            count: 0,
            amount_minor: 0,
        })
        .collect();
    let mut channel_side_n = 0u64;
    let mut channel_side_amount = 0i128;
    for i in items {
        // Bill classes only: a late success's exception is not a line of its own.
        let Some(t) = out.iter_mut().find(|t| t.class == i.class) else {
            continue;
        };
        t.count += 1;
        t.amount_minor += i.amount_minor();
        if i.class != Class::MissingOnChannel.as_str() {
            channel_side_n += 1;
            channel_side_amount += i128::from(i.amount_minor());
        }
    }
    out[0].count = summary.channel_records.saturating_sub(channel_side_n);
    out[0].amount_minor = i64::try_from(bill_amount - channel_side_amount).unwrap_or(i64::MAX);
    out
}

/// Completes a payment the channel says is paid, through the normal settlement path.
async fn complete_payment(
    state: &AppState,
    route: &Route,
    item: &Item,
    paid_at_us: i64,
) -> anyhow::Result<bool> {
    let Ok(id) = Uuid::try_parse(&item.out_trade_no) else {
        return Ok(false);
    };
    let Some(row) = crate::payments::repo::get_any(&state.db, id).await? else {
        return Ok(false);
    };
    let trade = paymux_channels::Trade {
        out_trade_no: item.out_trade_no.clone(),
        channel_trade_no: item.channel_trade_no.clone(),
        state: paymux_channels::TradeState::Succeeded,
        channel_state: "SUCCESS".into(),
        amount_minor: item.channel_amount_minor,
        paid_at: chrono::DateTime::from_timestamp_micros(paid_at_us),
        payer_id: None,
    };
    if row.status == "closed" {
        tracing::error!(payment_id = %id, "late success found by reconciliation: posted and flagged");
    }
    crate::orchestrate::settle_paid(state, &row, route, trade)
        .await
        .map_err(|e| anyhow::anyhow!("complete payment {id}: {e:?}"))?;
    let now = crate::payments::repo::get_any(&state.db, id).await?;
    Ok(now.is_some_and(|p| p.status == "succeeded"))
}

/// Completes a processing refund the channel says is refunded, at the time its bill line gives (so
/// it belongs to the bill's day, not to the day reconciliation ran).
async fn complete_refund(
    state: &AppState,
    route: &Route,
    item: &Item,
    refunded_at_us: i64,
) -> anyhow::Result<bool> {
    let Some(id) = item
        .out_refund_no
        .as_deref()
        .and_then(|n| Uuid::try_parse(n).ok())
    else {
        return Ok(false);
    };
    let Some(refund) = crate::refunds::get(&state.db, None, id).await? else {
        return Ok(false);
    };
    let Some(payment) = crate::payments::repo::get_any(&state.db, refund.payment_id).await? else {
        return Ok(false);
    };
    crate::orchestrate::settle_refund(
        state,
        &payment,
        &refund,
        Some(route),
        paymux_model::RefundStatus::Succeeded,
        None,
        Some(refunded_at_us),
        None,
    )
    .await;
    let now = crate::refunds::get(&state.db, None, id).await?;
    Ok(now.is_some_and(|r| r.status == "succeeded"))
}

/// The adjustment for a fee the channel charged (or returned) differently from the configured rate.
fn fee_adjustment(
    account: ChannelAccountId,
    item: &Item,
    delta_minor: i64,
    effective_at_us: i64,
) -> Option<NewEntry> {
    if delta_minor == 0 {
        return None;
    }
    let number = match item.kind {
        BillKind::Payment => item.out_trade_no.as_str(),
        BillKind::Refund => item.out_refund_no.as_deref().unwrap_or_default(),
    };
    let reference = Uuid::try_parse(number).ok();
    let fees = chart::channel_fees(account, Currency::Cny);
    let receivable = chart::channel_receivable(account, Currency::Cny);
    // A payment charged more, or a refund returning less, costs us more.
    let costs_more = (delta_minor > 0) == (item.kind == BillKind::Payment);
    let (debit, credit) = if costs_more {
        (fees, receivable)
    } else {
        (receivable, fees)
    };
    Some(paymux_ledger::rules::adjustment(
        v5(&format!(
            "paymux:fee-adjustment:{account}:{}",
            record_key(item.kind, &item.out_trade_no, item.out_refund_no.as_deref())
        )),
        reference,
        debit,
        credit,
        Money::cny(delta_minor.abs()),
        "reconciliation: channel fee differs from the configured rate",
        effective_at_us,
    ))
}

// ---------------------------------------------------------------------------------------------
// SQL

#[derive(sqlx::FromRow)]
struct PaymentFacts {
    id: Uuid,
    amount_minor: i64,
    status: String,
    paid_at_us: Option<i64>,
    created_at_us: i64,
    /// The channel cost rate the payment's ledger entry was posted with (none before it is paid).
    booked_cost_rate_bps: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct RefundFacts {
    id: Uuid,
    payment_id: Uuid,
    amount_minor: i64,
    status: String,
    succeeded_at_us: Option<i64>,
    created_at_us: i64,
    payment_amount_minor: i64,
    /// As [`PaymentFacts::booked_cost_rate_bps`], of the refunded payment.
    booked_cost_rate_bps: Option<i64>,
}

/// The rate a payment's channel cost was booked at, else the account's current one.
fn cost_rate(booked: Option<i64>, current_bps: u32) -> u32 {
    booked
        .and_then(|b| u32::try_from(b).ok())
        .unwrap_or(current_bps)
}

fn payment_record(p: PaymentFacts, current_cost_rate_bps: u32) -> PlatformRecord {
    let cost_rate_bps = cost_rate(p.booked_cost_rate_bps, current_cost_rate_bps);
    PlatformRecord {
        kind: BillKind::Payment,
        out_trade_no: crate::orchestrate::out_trade_no(p.id),
        out_refund_no: None,
        amount_minor: p.amount_minor,
        status: parse_status(&p.status),
        expected_fee_minor: Some(paymux_ledger::rules::fee_minor(
            p.amount_minor,
            cost_rate_bps,
        )),
        time_us: p.paid_at_us.unwrap_or(p.created_at_us),
    }
}

fn refund_record(
    r: RefundFacts,
    cost_returned: Option<i64>,
    current_cost_rate_bps: u32,
) -> PlatformRecord {
    let cost_rate_bps = cost_rate(r.booked_cost_rate_bps, current_cost_rate_bps);
    let status = match r.status.as_str() {
        "succeeded" => PlatformStatus::Succeeded,
        "processing" => PlatformStatus::Processing,
        _ => PlatformStatus::Failed,
    };
    let fallback = paymux_ledger::rules::refund_fee_return(
        paymux_ledger::rules::fee_minor(r.payment_amount_minor, cost_rate_bps),
        r.payment_amount_minor,
        0,
        r.amount_minor,
    );
    PlatformRecord {
        kind: BillKind::Refund,
        out_trade_no: crate::orchestrate::out_trade_no(r.payment_id),
        out_refund_no: Some(crate::orchestrate::out_trade_no(r.id)),
        amount_minor: r.amount_minor,
        status,
        expected_fee_minor: Some(cost_returned.unwrap_or(fallback)),
        time_us: r.succeeded_at_us.unwrap_or(r.created_at_us),
    }
}

/// The payments' facts with the cost rate their ledger entry booked (`p` is the payment).
fn payment_facts(db: &Db) -> String {
    format!(
        "SELECT p.id, p.amount_minor, p.status, p.paid_at_us, p.created_at_us, {} \
         FROM payments p {BOOKED_JOIN}",
        booked_cost_rate(db)
    )
}

/// The refunds' facts (`r`), with their payment's (`p`) amount and booked cost rate.
fn refund_facts(db: &Db) -> String {
    format!(
        "SELECT r.id, r.payment_id, r.amount_minor, r.status, r.succeeded_at_us, r.created_at_us, \
         p.amount_minor AS payment_amount_minor, {} \
         FROM refunds r JOIN payments p ON p.id = r.payment_id {BOOKED_JOIN}",
        booked_cost_rate(db)
    )
}

/// The payment's own ledger entry (at most one: its id is derived from the payment's).
const BOOKED_JOIN: &str = "LEFT JOIN ledger_entries e ON e.reference = p.id AND e.kind = 'payment'";

fn booked_cost_rate(db: &Db) -> &'static str {
    match db {
        Db::Sqlite(_) => {
            "CAST(json_extract(e.metadata, '$.channel_cost_rate_bps') AS INTEGER) AS booked_cost_rate_bps"
        }
        Db::Postgres(_) => "(e.metadata->>'channel_cost_rate_bps')::int8 AS booked_cost_rate_bps",
    }
}

/// Runs a query built by `$build` (a closure taking a fresh `QueryBuilder`) on either backend and
/// fetches all rows as `$row`.
macro_rules! fetch_all {
    ($db:expr, $row:ty, $build:expr) => {
        match $db {
            Db::Sqlite(p) => {
                let mut qb = QueryBuilder::<sqlx::Sqlite>::new("");
                $build(&mut qb);
                qb.build_query_as::<$row>().fetch_all(p).await?
            }
            Db::Postgres(p) => {
                let mut qb = QueryBuilder::<sqlx::Postgres>::new("");
                $build(&mut qb);
                qb.build_query_as::<$row>().fetch_all(p).await?
            }
        }
    };
}

#[derive(sqlx::FromRow)]
struct IdRow {
    id: Uuid,
}

/// Which of these record keys name a payment or refund stored here (on any account).
async fn existing_keys(db: &Db, keys: &[&String]) -> anyhow::Result<HashSet<String>> {
    let mut found = HashSet::new();
    for (prefix, table) in [("payment", "payments"), ("refund", "refunds")] {
        let ids: Vec<Uuid> = keys
            .iter()
            .filter_map(|k| match k.split_once(':') {
                Some((p, n)) if p == prefix => Uuid::try_parse(n).ok(),
                _ => None,
            })
            .collect();
        for chunk in ids.chunks(CHUNK) {
            let rows: Vec<IdRow> = fetch_all!(db, IdRow, |qb: &mut QueryBuilder<_>| {
                qb.push(format!("SELECT id FROM {table} WHERE id IN ("));
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(")");
            });
            for r in rows {
                let key = format!("{prefix}:{}", r.id.simple());
                if keys.iter().any(|k| **k == key) {
                    found.insert(key);
                }
            }
        }
    }
    Ok(found)
}

/// The account's successes of the day — payments paid and refunds refunded within it — into `out`
/// by record key. The payments (the bulk of a day) are read as one stream of rows, each turned
/// into its record as it arrives.
async fn load_day_records(
    db: &Db,
    route: &Route,
    start_us: i64,
    end_us: i64,
    out: &mut Matcher,
) -> anyhow::Result<()> {
    use futures::TryStreamExt;
    let account = Uuid::from(route.id);
    macro_rules! stream_payments {
        ($pool:expr, $backend:ty) => {{
            let mut qb = QueryBuilder::<$backend>::new(payment_facts(db));
            qb.push(" WHERE p.channel_account_id = ")
                .push_bind(account)
                .push(" AND p.status = 'succeeded' AND p.paid_at_us >= ")
                .push_bind(start_us)
                .push(" AND p.paid_at_us < ")
                .push_bind(end_us);
            let mut rows = qb.build_query_as::<PaymentFacts>().fetch($pool);
            while let Some(p) = rows.try_next().await? {
                out.add(payment_record(p, route.cost_rate_bps));
            }
        }};
    }
    match db {
        Db::Sqlite(p) => stream_payments!(p, sqlx::Sqlite),
        Db::Postgres(p) => stream_payments!(p, sqlx::Postgres),
    }
    let refunds: Vec<RefundFacts> = fetch_all!(db, RefundFacts, |qb: &mut QueryBuilder<_>| {
        qb.push(refund_facts(db))
            .push(" WHERE p.channel_account_id = ")
            .push_bind(account)
            .push(" AND r.status = 'succeeded' AND r.succeeded_at_us >= ")
            .push_bind(start_us)
            .push(" AND r.succeeded_at_us < ")
            .push_bind(end_us);
    });
    for r in records(db, route, Vec::new(), refunds).await? {
        out.add(r);
    }
    Ok(())
}

/// Our records with the numbers the bill lists (`payment:…` / `refund:…` keys), on this account
/// (or on none yet: a code payment still processing).
async fn load_named_records(
    db: &Db,
    route: &Route,
    keys: &[&String],
) -> anyhow::Result<Vec<PlatformRecord>> {
    let account = Uuid::from(route.id);
    let mut payment_ids = Vec::new();
    let mut refund_ids = Vec::new();
    for k in keys {
        match k.split_once(':') {
            Some(("payment", n)) => payment_ids.extend(Uuid::try_parse(n).ok()),
            Some(("refund", n)) => refund_ids.extend(Uuid::try_parse(n).ok()),
            _ => {}
        }
    }
    let mut payments = Vec::new();
    for chunk in payment_ids.chunks(CHUNK) {
        let rows: Vec<PaymentFacts> = fetch_all!(db, PaymentFacts, |qb: &mut QueryBuilder<_>| {
            qb.push(payment_facts(db))
                .push(" WHERE (p.channel_account_id = ")
                .push_bind(account)
                .push(" OR (p.channel_account_id IS NULL AND p.merchant_id = ")
                .push_bind(route.merchant_id)
                .push(")) AND p.id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(*id);
            }
            qb.push(")");
        });
        payments.extend(rows);
    }
    let mut refunds = Vec::new();
    for chunk in refund_ids.chunks(CHUNK) {
        let rows: Vec<RefundFacts> = fetch_all!(db, RefundFacts, |qb: &mut QueryBuilder<_>| {
            qb.push(refund_facts(db))
                .push(" WHERE p.channel_account_id = ")
                .push_bind(account)
                .push(" AND r.id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(*id);
            }
            qb.push(")");
        });
        refunds.extend(rows);
    }
    records(db, route, payments, refunds).await
}

#[derive(sqlx::FromRow)]
struct RefundEntryFacts {
    reference: Uuid,
    metadata: sqlx::types::Json<serde_json::Value>,
}

async fn records(
    db: &Db,
    route: &Route,
    payments: Vec<PaymentFacts>,
    refunds: Vec<RefundFacts>,
) -> anyhow::Result<Vec<PlatformRecord>> {
    // What the ledger booked as the channel cost returned by each refund.
    let mut returned: HashMap<Uuid, i64> = HashMap::new();
    let ids: Vec<Uuid> = refunds.iter().map(|r| r.id).collect();
    for chunk in ids.chunks(CHUNK) {
        let rows: Vec<RefundEntryFacts> = fetch_all!(
            db,
            RefundEntryFacts,
            |qb: &mut QueryBuilder<_>| {
                qb.push(
                    "SELECT reference, metadata FROM ledger_entries WHERE kind = 'refund' AND reference IN (",
                );
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(")");
            }
        );
        for r in rows {
            if let Some(n) = r.metadata.0["channel_cost_returned_minor"].as_i64() {
                returned.insert(r.reference, n);
            }
        }
    }
    let mut out: Vec<PlatformRecord> = payments
        .into_iter()
        .map(|p| payment_record(p, route.cost_rate_bps))
        .collect();
    out.extend(refunds.into_iter().map(|r| {
        let back = returned.get(&r.id).copied();
        refund_record(r, back, route.cost_rate_bps)
    }));
    Ok(out)
}

async fn load_items(db: &Db, run_id: Uuid) -> anyhow::Result<Vec<StoredItem>> {
    Ok(fetch_all!(db, StoredItem, |qb: &mut QueryBuilder<_>| {
        qb.push(format!(
            "SELECT {ITEM_COLUMNS} FROM reconciliation_items WHERE run_id = "
        ))
        .push_bind(run_id);
    }))
}

/// Open carry-overs of an account: `(record key, item id, from day)`.
async fn open_carry_overs(
    db: &Db,
    account: ChannelAccountId,
) -> anyhow::Result<Vec<(String, Uuid, String)>> {
    let account = Uuid::from(account);
    Ok(fetch_all!(
        db,
        (String, Uuid, String),
        |qb: &mut QueryBuilder<_>| {
            qb.push(
                "SELECT record_key, item_id, from_day FROM reconciliation_carry_overs WHERE status = 'open' AND channel_account_id = ",
            )
            .push_bind(account);
        }
    ))
}

/// `(exceptions opened by the run, carried over by it, carry-overs it matched)`.
async fn run_counts(
    db: &Db,
    run_id: Uuid,
    account: ChannelAccountId,
    day: NaiveDate,
) -> anyhow::Result<(u64, u64, u64)> {
    let account = Uuid::from(account);
    let day = day.to_string();
    let rows: Vec<(i64, i64, i64)> = fetch_all!(db, (i64, i64, i64), |qb: &mut QueryBuilder<_>| {
        qb.push("SELECT (SELECT COUNT(*) FROM reconciliation_exceptions WHERE run_id = ")
            .push_bind(run_id)
            .push("), (SELECT COUNT(*) FROM reconciliation_carry_overs WHERE channel_account_id = ")
            .push_bind(account)
            .push(" AND from_day = ")
            .push_bind(day.clone())
            .push("), (SELECT COUNT(*) FROM reconciliation_carry_overs WHERE channel_account_id = ")
            .push_bind(account)
            .push(" AND status = 'matched' AND resolved_day = ")
            .push_bind(day.clone())
            .push(")");
    });
    let (a, b, c) = rows.first().copied().unwrap_or_default();
    Ok((a as u64, b as u64, c as u64))
}

/// The class of the exception opened for a late success (not a bill class: no bill line makes it).
pub const LATE_SUCCESS: &str = "late_success";

/// The class of the exception opened when the channel reports a payment paid that was marked
/// `failed` here (a failed state cannot be left: operations refund the payer or complete the sale).
pub const PAID_WHILE_FAILED: &str = "paid_while_failed";

/// An exception opened at once for a payment, outside a reconciliation run's own findings.
pub struct PaymentException {
    class: &'static str,
    platform_status: &'static str,
    note: &'static str,
}

/// A success the channel reported for a payment we had already closed: the money moved after we
/// gave up on it. The payment is completed (posted, the merchant told) by the caller.
pub const LATE_SUCCESS_EXCEPTION: PaymentException = PaymentException {
    class: LATE_SUCCESS,
    platform_status: "succeeded",
    note: "the channel reported this payment paid after it was closed here; it was completed as a late success (posted, merchant notified): refund the payer or keep the sale",
};

/// A success the channel reported for a payment marked `failed` here: the payer was charged, the
/// merchant was told it failed and nothing was posted.
pub const PAID_WHILE_FAILED_EXCEPTION: PaymentException = PaymentException {
    class: PAID_WHILE_FAILED,
    platform_status: "failed",
    note: "the channel reported this payment paid but it had failed here (nothing posted, the merchant was told it failed): refund the payer",
};

/// Opens the exception `what` for a payment, as an item of the reconciliation run of the channel
/// account and the day it was paid — the run row is created (`open`, no attempts) when that day has
/// not been reconciled yet, and the day's run keeps the item. Idempotent: ids are derived from the
/// payment.
pub async fn open_payment_exception(
    db: &Db,
    what: &PaymentException,
    account: ChannelAccountId,
    payment_id: Uuid,
    amount_minor: i64,
    channel_trade_no: Option<String>,
    paid_at_us: i64,
) -> anyhow::Result<()> {
    let day = Shanghai
        .timestamp_micros(paid_at_us)
        .single()
        .map(|t| t.date_naive())
        .context("paid_at_us")?;
    let run = run_id(account, day);
    let out_trade_no = crate::orchestrate::out_trade_no(payment_id);
    let item = v5(&format!(
        "paymux:recon-item:{run}:{}:{}",
        what.class,
        record_key(BillKind::Payment, &out_trade_no, None)
    ));
    let now = now_us();
    const RUN: &str = "INSERT INTO reconciliation_runs (id, channel_account_id, day, status, attempts, started_at_us) \
        VALUES ($1, $2, $3, 'open', 0, $4) ON CONFLICT (id) DO NOTHING";
    const ITEM: &str = "INSERT INTO reconciliation_items (id, run_id, class, kind, out_trade_no, \
        channel_trade_no, platform_amount_minor, channel_amount_minor, platform_status, resolution, created_at_us) \
        VALUES ($1, $2, $3, 'payment', $4, $5, $6, $7, $8, 'exception', $9) ON CONFLICT (id) DO NOTHING";
    const EXCEPTION: &str = "INSERT INTO reconciliation_exceptions (item_id, run_id, class, status, note, created_at_us) \
        VALUES ($1, $2, $3, 'open', $4, $5) ON CONFLICT (item_id) DO NOTHING";
    macro_rules! body {
        ($tx:ident) => {{
            sqlx::query(RUN)
                .bind(run)
                .bind(Uuid::from(account))
                .bind(day.to_string())
                .bind(now)
                .execute(&mut *$tx)
                .await?;
            sqlx::query(ITEM)
                .bind(item)
                .bind(run)
                .bind(what.class)
                .bind(&out_trade_no)
                .bind(&channel_trade_no)
                .bind(amount_minor)
                .bind(amount_minor)
                .bind(what.platform_status)
                .bind(now)
                .execute(&mut *$tx)
                .await?;
            sqlx::query(EXCEPTION)
                .bind(item)
                .bind(run)
                .bind(what.class)
                .bind(what.note)
                .bind(now)
                .execute(&mut *$tx)
                .await?;
        }};
    }
    match db {
        Db::Sqlite(p) => {
            let mut tx = p.begin_write().await?;
            body!(tx);
            tx.commit().await?;
        }
        Db::Postgres(p) => {
            let mut tx = p.begin_write().await?;
            body!(tx);
            tx.commit().await?;
        }
    }
    Ok(())
}

async fn start_run(
    db: &Db,
    run_id: Uuid,
    account: ChannelAccountId,
    day: NaiveDate,
) -> anyhow::Result<()> {
    const SQL: &str = "INSERT INTO reconciliation_runs (id, channel_account_id, day, status, started_at_us) \
        VALUES ($1, $2, $3, 'running', $4) ON CONFLICT (id) DO UPDATE SET status = 'running', \
        attempts = reconciliation_runs.attempts + 1, error = NULL, started_at_us = excluded.started_at_us, \
        finished_at_us = NULL";
    let account = Uuid::from(account);
    match db {
        Db::Sqlite(p) => {
            sqlx::query(SQL)
                .bind(run_id)
                .bind(account)
                .bind(day.to_string())
                .bind(now_us())
                .execute(p)
                .await?;
        }
        Db::Postgres(p) => {
            sqlx::query(SQL)
                .bind(run_id)
                .bind(account)
                .bind(day.to_string())
                .bind(now_us())
                .execute(p)
                .await?;
        }
    }
    Ok(())
}

async fn finish_failed(db: &Db, run_id: Uuid, error: &str) -> anyhow::Result<()> {
    const SQL: &str = "UPDATE reconciliation_runs SET status = 'failed', error = $1, finished_at_us = $2 WHERE id = $3";
    match db {
        Db::Sqlite(p) => {
            sqlx::query(SQL)
                .bind(error)
                .bind(now_us())
                .bind(run_id)
                .execute(p)
                .await?;
        }
        Db::Postgres(p) => {
            sqlx::query(SQL)
                .bind(error)
                .bind(now_us())
                .bind(run_id)
                .execute(p)
                .await?;
        }
    }
    Ok(())
}

async fn finish_completed(db: &Db, r: &AccountReport) -> anyhow::Result<()> {
    const SQL: &str = "UPDATE reconciliation_runs SET status = 'completed', channel_records = $1, \
        platform_records = $2, summary = $3, channel_net_minor = $4, receivable_residual_minor = $5, \
        report_dir = $6, finished_at_us = $7 WHERE id = $8";
    let summary = serde_json::to_string(&r.by_class)?;
    let channel_records = r.channel_records as i64;
    let platform_records = r.platform_records as i64;
    match db {
        Db::Sqlite(p) => {
            sqlx::query(SQL)
                .bind(channel_records)
                .bind(platform_records)
                .bind(&summary)
                .bind(r.channel_net_minor)
                .bind(r.receivable_residual_minor)
                .bind(&r.report_dir)
                .bind(now_us())
                .bind(r.run_id)
                .execute(p)
                .await?;
        }
        Db::Postgres(p) => {
            sqlx::query(SQL)
                .bind(channel_records)
                .bind(platform_records)
                .bind(&summary)
                .bind(r.channel_net_minor)
                .bind(r.receivable_residual_minor)
                .bind(&r.report_dir)
                .bind(now_us())
                .bind(r.run_id)
                .execute(p)
                .await?;
        }
    }
    Ok(())
}

/// What one account's run writes, in one transaction.
struct Write<'a> {
    run_id: Uuid,
    account: ChannelAccountId,
    day: NaiveDate,
    new_items: &'a [StoredItem],
    newly_resolved: &'a [Uuid],
    exceptions: &'a [(Uuid, String)],
    carries: &'a [(String, Uuid)],
    carry_matched: &'a [String],
    carry_expired: &'a [(String, Uuid)],
    entries: &'a [NewEntry],
    /// Payments and refunds of ours the bill lists (their entries move the receivable).
    platform_ids: &'a [Uuid],
    receivable_account: Uuid,
    net: i64,
}

macro_rules! write_body {
    ($tx:ident, $backend:ty, $post:path, $moved:path, $w:expr) => {{
        let w = $w;
        let now = now_us();
        let day = w.day.to_string();
        let account = Uuid::from(w.account);
        for chunk in w.new_items.chunks(CHUNK) {
            let mut qb = QueryBuilder::<$backend>::new(
                "INSERT INTO reconciliation_items (id, run_id, class, kind, out_trade_no, out_refund_no, \
                 channel_trade_no, platform_amount_minor, channel_amount_minor, platform_status, \
                 channel_fee_minor, expected_fee_minor, resolution, resolved_by, resolved_at_us, created_at_us) ",
            );
            qb.push_values(chunk, |mut b, i| {
                b.push_bind(i.id)
                    .push_bind(w.run_id)
                    .push_bind(i.class.clone())
                    .push_bind(i.kind.clone())
                    .push_bind(i.out_trade_no.clone())
                    .push_bind(i.out_refund_no.clone())
                    .push_bind(i.channel_trade_no.clone())
                    .push_bind(i.platform_amount_minor)
                    .push_bind(i.channel_amount_minor)
                    .push_bind(i.platform_status.clone())
                    .push_bind(i.channel_fee_minor)
                    .push_bind(i.expected_fee_minor)
                    .push_bind(i.resolution.clone())
                    .push_bind(i.resolved_by.clone())
                    .push_bind(i.resolved_by.as_ref().map(|_| now))
                    .push_bind(now);
            });
            qb.push(" ON CONFLICT (id) DO NOTHING");
            qb.build().execute(&mut *$tx).await?;
        }
        for chunk in w.newly_resolved.chunks(CHUNK) {
            let mut qb = QueryBuilder::<$backend>::new(
                "UPDATE reconciliation_items SET resolved_by = 'reconciliation', resolved_at_us = ",
            );
            qb.push_bind(now).push(" WHERE id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(*id);
            }
            qb.push(")");
            qb.build().execute(&mut *$tx).await?;
            // An exception an earlier run opened for the item (its completion did not go through
            // then) is closed with it, so nobody acts on a difference that is gone.
            let mut qb = QueryBuilder::<$backend>::new(
                "UPDATE reconciliation_exceptions SET status = 'resolved', resolution = 'channel_corrected', \
                 note = COALESCE(note, 'completed by a later reconciliation run'), resolved_at_us = ",
            );
            qb.push_bind(now).push(" WHERE status IN ('open', 'assigned') AND item_id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(*id);
            }
            qb.push(")");
            qb.build().execute(&mut *$tx).await?;
        }
        let expired_exceptions: Vec<(Uuid, String)> = w
            .carry_expired
            .iter()
            .map(|(_, id)| (*id, "missing_on_channel".to_string()))
            .collect();
        let all_exceptions: Vec<&(Uuid, String)> =
            w.exceptions.iter().chain(expired_exceptions.iter()).collect();
        for chunk in all_exceptions.chunks(CHUNK) {
            let mut qb = QueryBuilder::<$backend>::new(
                "INSERT INTO reconciliation_exceptions (item_id, run_id, class, status, note, created_at_us) ",
            );
            qb.push_values(chunk, |mut b, (id, class)| {
                b.push_bind(*id)
                    .push_bind(w.run_id)
                    .push_bind(class.clone())
                    .push_bind("open")
                    .push_bind(Option::<String>::None)
                    .push_bind(now);
            });
            qb.push(" ON CONFLICT (item_id) DO NOTHING");
            qb.build().execute(&mut *$tx).await?;
        }
        for chunk in w.carries.chunks(CHUNK) {
            let mut qb = QueryBuilder::<$backend>::new(
                "INSERT INTO reconciliation_carry_overs (channel_account_id, record_key, item_id, from_day, status) ",
            );
            qb.push_values(chunk, |mut b, (key, id)| {
                b.push_bind(account)
                    .push_bind(key.clone())
                    .push_bind(*id)
                    .push_bind(day.clone())
                    .push_bind("open");
            });
            qb.push(" ON CONFLICT (channel_account_id, record_key) DO NOTHING");
            qb.build().execute(&mut *$tx).await?;
        }
        for (status, keys) in [
            ("matched", w.carry_matched.to_vec()),
            (
                "exception",
                w.carry_expired.iter().map(|(k, _)| k.clone()).collect(),
            ),
        ] {
            for chunk in keys.chunks(CHUNK) {
                let mut qb = QueryBuilder::<$backend>::new(
                    "UPDATE reconciliation_carry_overs SET status = ",
                );
                qb.push_bind(status)
                    .push(", resolved_day = ")
                    .push_bind(day.clone())
                    .push(", resolved_at_us = ")
                    .push_bind(now)
                    .push(" WHERE status = 'open' AND channel_account_id = ")
                    .push_bind(account)
                    .push(" AND record_key IN (");
                let mut sep = qb.separated(", ");
                for k in chunk {
                    sep.push_bind(k.clone());
                }
                qb.push(")");
                qb.build().execute(&mut *$tx).await?;
            }
        }
        if !w.entries.is_empty() {
            let results = $post(&mut *$tx, w.entries, paymux_ledger::PostOptions::default())
                .await
                .context("post reconciliation entries")?;
            if let Some((e, bad)) = w.entries.iter().zip(&results).find(|(_, r)| {
                !matches!(
                    r,
                    paymux_ledger::EntryResult::Created | paymux_ledger::EntryResult::Exists
                )
            }) {
                anyhow::bail!("the ledger rejected entry {} ({:?}): {bad:?}", e.id, e.kind);
            }
        }
        // The receivable the bill's records moved, less what the channel pays for the day.
        $moved(&mut *$tx, w).await? - w.net
    }};
}

const RECEIVABLE_SUM: &str = "SELECT CAST(COALESCE(SUM(CASE WHEN p.is_credit THEN -p.amount_minor ELSE p.amount_minor END), 0) AS BIGINT)";
const RECEIVABLE_KINDS: &str = "e.kind IN ('payment', 'refund', 'adjustment')";

/// What the entries of the bill's records did to the channel receivable. SQLite: a chunk of ids
/// per statement, each walking the entries by their reference index and their postings by entry
/// (the `+` keeps SQLite off the account's index, which would read every posting of the account
/// for every chunk).
async fn receivable_moved_sqlite(
    conn: &mut sqlx::SqliteConnection,
    w: &Write<'_>,
) -> anyhow::Result<i64> {
    let mut moved: i64 = 0;
    for chunk in w.platform_ids.chunks(CHUNK) {
        let mut qb = QueryBuilder::<sqlx::Sqlite>::new(RECEIVABLE_SUM);
        qb.push(
            " FROM ledger_entries e CROSS JOIN ledger_postings p ON p.entry_id = e.id WHERE +p.account_id = ",
        )
        .push_bind(w.receivable_account)
        .push(" AND ")
        .push(RECEIVABLE_KINDS)
        .push(" AND e.reference IN (");
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push_bind(*id);
        }
        qb.push(")");
        let (n,): (i64,) = qb.build_query_as().fetch_one(&mut *conn).await?;
        moved += n;
    }
    Ok(moved)
}

/// The same on PostgreSQL in one statement: the ids go into a temporary table by `COPY` (dropped at
/// commit) and are analysed, so the planner knows there are a million of them and hashes the join
/// instead of probing the index once per id.
async fn receivable_moved_pg(conn: &mut sqlx::PgConnection, w: &Write<'_>) -> anyhow::Result<i64> {
    sqlx::query("CREATE TEMPORARY TABLE reconcile_listed (id uuid NOT NULL) ON COMMIT DROP")
        .execute(&mut *conn)
        .await?;
    let mut rows = String::with_capacity(w.platform_ids.len() * 37);
    for id in w.platform_ids {
        use std::fmt::Write as _;
        let _ = writeln!(rows, "{}", id.hyphenated());
    }
    let mut copy = conn
        .copy_in_raw("COPY reconcile_listed (id) FROM STDIN")
        .await?;
    if let Err(err) = copy.send(rows.into_bytes()).await {
        let _ = copy.abort("sending COPY data failed").await;
        return Err(err.into());
    }
    copy.finish().await?;
    sqlx::query("ANALYZE reconcile_listed")
        .execute(&mut *conn)
        .await?;
    let mut qb = QueryBuilder::<sqlx::Postgres>::new(RECEIVABLE_SUM);
    qb.push(
        " FROM reconcile_listed l JOIN ledger_entries e ON e.reference = l.id \
         JOIN ledger_postings p ON p.entry_id = e.id WHERE p.account_id = ",
    )
    .push_bind(w.receivable_account)
    .push(" AND ")
    .push(RECEIVABLE_KINDS);
    let (n,): (i64,) = qb.build_query_as().fetch_one(&mut *conn).await?;
    Ok(n)
}

/// Items, exceptions, carry-overs and ledger entries in one transaction; returns the channel
/// receivable residual of the bill's records after the settlement.
async fn write_run(db: &Db, w: &Write<'_>) -> anyhow::Result<i64> {
    match db {
        Db::Sqlite(p) => {
            let mut tx = p.begin_write().await?;
            let r = write_body!(
                tx,
                sqlx::Sqlite,
                paymux_ledger::post_sqlite,
                receivable_moved_sqlite,
                w
            );
            tx.commit().await?;
            Ok(r)
        }
        Db::Postgres(p) => {
            let mut tx = p.begin_write().await?;
            let r = write_body!(
                tx,
                sqlx::Postgres,
                paymux_ledger::post_postgres,
                receivable_moved_pg,
                w
            );
            tx.commit().await?;
            Ok(r)
        }
    }
}

macro_rules! settle_body {
    ($tx:ident, $backend:ty, $post:path, $new:expr) => {{
        let now = now_us();
        let mut inserted: HashSet<Uuid> = HashSet::new();
        for chunk in $new.chunks(CHUNK) {
            let mut qb = QueryBuilder::<$backend>::new(
                "INSERT INTO merchant_settlements (id, merchant_id, day, currency, gross_minor, refunds_minor, \
                 fees_minor, net_minor, carried_minor, payout_minor, entry_id, payout_file, created_at_us) ",
            );
            qb.push_values(chunk, |mut b, (s, _)| {
                b.push_bind(s.id)
                    .push_bind(s.merchant_id)
                    .push_bind(s.day.clone())
                    .push_bind(s.currency.clone())
                    .push_bind(s.gross_minor)
                    .push_bind(s.refunds_minor)
                    .push_bind(s.fees_minor)
                    .push_bind(s.net_minor)
                    .push_bind(s.carried_minor)
                    .push_bind(s.payout_minor)
                    .push_bind(s.entry_id)
                    .push_bind(s.payout_file.clone())
                    .push_bind(now);
            });
            qb.push(" ON CONFLICT (merchant_id, day) DO NOTHING RETURNING id");
            let ids: Vec<(Uuid,)> = qb.build_query_as().fetch_all(&mut *$tx).await?;
            inserted.extend(ids.into_iter().map(|(id,)| id));
        }
        // Only the winner of the (merchant, day) row posts; the entry id is deterministic anyway.
        let entries: Vec<NewEntry> = $new
            .iter()
            .filter(|(s, _)| inserted.contains(&s.id))
            .filter_map(|(_, e)| e.clone())
            .collect();
        if !entries.is_empty() {
            let results = $post(&mut *$tx, &entries, paymux_ledger::PostOptions::default())
                .await
                .context("post merchant settlements")?;
            if let Some(bad) = results.iter().find(|r| {
                !matches!(
                    r,
                    paymux_ledger::EntryResult::Created | paymux_ledger::EntryResult::Exists
                )
            }) {
                anyhow::bail!("the ledger rejected a merchant settlement: {bad:?}");
            }
        }
    }};
}

/// The transaction-scoped advisory lock key of merchant settlement on PostgreSQL ("paymuxst").
const SETTLE_LOCK_KEY: i64 = 0x7061_796d_7578_7374;

/// Reads rows inside a transaction (the settlement's reads must see what the previous settlement
/// committed, and nothing may commit between them and its own writes).
macro_rules! tx_fetch {
    ($tx:ident, $backend:ty, $row:ty, $build:expr) => {{
        let mut qb = QueryBuilder::<$backend>::new("");
        $build(&mut qb);
        qb.build_query_as::<$row>().fetch_all(&mut *$tx).await?
    }};
}

/// Computes and writes the day's settlements in the caller's write transaction (see
/// [`settle_merchants`]).
macro_rules! settle_all {
    ($tx:ident, $backend:ty, $post:path, $state:expr, $day:expr) => {{
        let day: NaiveDate = $day;
        let (start_us, end_us) = day_bounds_us(day);
        let day_s = day.to_string();
        // (merchant, gross, refunds) of the day.
        let gross: Vec<(Uuid, i64)> = tx_fetch!($tx, $backend, (Uuid, i64), |qb: &mut QueryBuilder<$backend>| {
            qb.push("SELECT merchant_id, CAST(SUM(amount_minor) AS BIGINT) FROM payments WHERE status = 'succeeded' AND paid_at_us >= ")
                .push_bind(start_us)
                .push(" AND paid_at_us < ")
                .push_bind(end_us)
                .push(" GROUP BY merchant_id");
        });
        let refunds: Vec<(Uuid, i64)> = tx_fetch!($tx, $backend, (Uuid, i64), |qb: &mut QueryBuilder<$backend>| {
            qb.push("SELECT merchant_id, CAST(SUM(amount_minor) AS BIGINT) FROM refunds WHERE status = 'succeeded' AND succeeded_at_us >= ")
                .push_bind(start_us)
                .push(" AND succeeded_at_us < ")
                .push_bind(end_us)
                .push(" GROUP BY merchant_id");
        });
        let mut merchants: std::collections::BTreeMap<Uuid, (i64, i64)> = Default::default();
        for (m, g) in gross {
            merchants.entry(m).or_default().0 = g;
        }
        for (m, r) in refunds {
            merchants.entry(m).or_default().1 = r;
        }
        let settled: Vec<(Uuid,)> = tx_fetch!($tx, $backend, (Uuid,), |qb: &mut QueryBuilder<$backend>| {
            qb.push("SELECT merchant_id FROM merchant_settlements WHERE day = ")
                .push_bind(day_s.clone());
        });
        let settled: HashSet<Uuid> = settled.into_iter().map(|(m,)| m).collect();
        merchants.retain(|m, _| !settled.contains(m));
        // Per merchant's payable account: the net is what the day's payment and refund entries
        // left on it; the payout is what it holds at the day's end: every posting dated before it,
        // less every payout already made (those of later days too, should days be settled out of
        // order, so nothing is paid twice). One grouped statement per chunk of merchants.
        let payable_of = |m: Uuid| {
            chart::merchant_payable(MerchantId::from(m), Currency::Cny)
                .id()
                .into_uuid()
        };
        let payables: Vec<Uuid> = merchants.keys().map(|m| payable_of(*m)).collect();
        let mut sums: HashMap<Uuid, (i64, i64)> = HashMap::new();
        for chunk in payables.chunks(CHUNK) {
            let rows: Vec<(Uuid, i64, i64)> = tx_fetch!($tx, $backend, (Uuid, i64, i64), |qb: &mut QueryBuilder<$backend>| {
                qb.push("SELECT p.account_id, CAST(COALESCE(SUM(CASE WHEN e.kind IN ('payment', 'refund') AND p.effective_at_us >= ")
                    .push_bind(start_us)
                    .push(" THEN (CASE WHEN p.is_credit THEN p.amount_minor ELSE -p.amount_minor END) ELSE 0 END), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(CASE WHEN p.is_credit THEN p.amount_minor ELSE -p.amount_minor END), 0) AS BIGINT) \
                     FROM ledger_postings p JOIN ledger_entries e ON e.id = p.entry_id WHERE p.account_id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(") AND (p.effective_at_us < ")
                    .push_bind(end_us)
                    .push(" OR e.kind = 'merchant_settlement') GROUP BY p.account_id");
            });
            sums.extend(rows.into_iter().map(|(a, net, held)| (a, (net, held))));
        }
        let mut new = Vec::new();
        for (m, (gross, refunds)) in merchants {
            let (net, held) = sums.get(&payable_of(m)).copied().unwrap_or((0, 0));
            let carried = held - net;
            let payout = held.max(0);
            let id = v5(&format!("settlement:{m}:{day}"));
            let entry = (payout > 0).then(|| {
                paymux_ledger::rules::merchant_settlement(
                    SettlementId::from_uuid(id),
                    MerchantId::from(m),
                    SETTLEMENT_BANK,
                    Money::cny(payout),
                    end_us,
                )
            });
            let file = report::payout_path(&$state.config.data_dir, day, m);
            new.push((
                MerchantSettlement {
                    id,
                    merchant_id: m,
                    day: day_s.clone(),
                    currency: "CNY".into(),
                    gross_minor: gross,
                    refunds_minor: refunds,
                    fees_minor: gross - refunds - net,
                    net_minor: net,
                    carried_minor: carried,
                    payout_minor: payout,
                    entry_id: entry.as_ref().map(|e| e.id.into_uuid()),
                    payout_file: Some(file.display().to_string()),
                },
                entry,
            ));
        }
        if !new.is_empty() {
            settle_body!($tx, $backend, $post, &new);
        }
    }};
}

/// Merchant settlement (T+1) of `day`: per merchant, what its payments and refunds of the day left
/// on its payable account, and what is paid out; one row, entry and payout file per (merchant, day),
/// however often run. Everything is read and written in one write transaction (on PostgreSQL under
/// an advisory lock), so two settlements at once — the CLI and the nightly run, or two days — never
/// both pay the same money.
pub async fn settle_merchants(
    state: &AppState,
    day: NaiveDate,
) -> anyhow::Result<Vec<MerchantSettlement>> {
    let db = &state.db;
    match db {
        Db::Sqlite(p) => {
            let mut tx = p.begin_write().await?;
            settle_all!(tx, sqlx::Sqlite, paymux_ledger::post_sqlite, state, day);
            tx.commit().await?;
        }
        Db::Postgres(p) => {
            let mut tx = p.begin_write().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(SETTLE_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
            settle_all!(tx, sqlx::Postgres, paymux_ledger::post_postgres, state, day);
            tx.commit().await?;
        }
    }
    let rows = day_settlements(db, day).await?;
    // Payout files are written from the committed rows (a run that lost the race for a row writes
    // the winner's figures, not its own), and written again by any later run should one be missing.
    for s in &rows {
        if let Some(file) = &s.payout_file {
            let path = PathBuf::from(file);
            if !path.exists() {
                report::write_payout(&path, s)?;
            }
        }
    }
    Ok(rows)
}

/// The merchant settlements of `day`, by merchant.
async fn day_settlements(db: &Db, day: NaiveDate) -> anyhow::Result<Vec<MerchantSettlement>> {
    let day_s = day.to_string();
    Ok(fetch_all!(
        db,
        MerchantSettlement,
        |qb: &mut QueryBuilder<_>| {
            qb.push("SELECT id, merchant_id, day, currency, gross_minor, refunds_minor, fees_minor, net_minor, carried_minor, payout_minor, entry_id, payout_file FROM merchant_settlements WHERE day = ")
            .push_bind(day_s.clone())
            .push(" ORDER BY merchant_id");
        }
    ))
}

/// A state for running reconciliation outside `paymux serve` (the CLI): the database, a write
/// batcher of its own and the routes — for the sandboxes, those served by the running server at
/// `public_base_url` (their keys are read from `<data_dir>/sandbox`).
pub async fn standalone_state(
    config: crate::config::Config,
) -> anyhow::Result<(AppState, Option<paymux_channels::sandbox::Sandboxes>)> {
    let config = Arc::new(config);
    let db = crate::startup::open_database(&config).await?;
    let secrets = Arc::new(crate::startup::secret_box(&config, &db).await?);
    let batcher = Arc::new(crate::batcher::WriteBatcher::start(
        db.clone(),
        crate::batcher::BatcherConfig {
            items_max: config.batch_items_max.max(1),
            linger: std::time::Duration::from_micros(config.batch_linger_us),
            workers: config.batch_workers,
            queue_capacity: config.batch_queue_capacity,
        },
    ));
    let sandboxes = if config.sandbox {
        Some(
            paymux_channels::sandbox::Sandboxes::start(config.sandbox_options())
                .await
                .context("open the channel sandboxes' accounts")?,
        )
    } else {
        None
    };
    let base_url = config.public_base_url(config.listen);
    let routes = crate::routing::Registry::load(
        db.clone(),
        secrets.clone(),
        sandboxes
            .as_ref()
            .map(|sb| crate::routing::SandboxConfigs::of(sb, &base_url)),
        base_url.clone(),
        crate::health::BreakerConfig::of(&config),
    )
    .await
    .context("load channel accounts and routes")?;
    let state = AppState {
        config: config.clone(),
        db: db.clone(),
        batcher,
        keys: Arc::new(crate::auth::KeyStore::new(db.clone(), secrets.clone())),
        nonces: crate::auth::NonceStore::local(),
        metrics: crate::telemetry::metrics_handle(),
        routes,
        paylinks: Arc::new(crate::paylink::PayLinks::new(&secrets, &base_url)),
        secrets,
        admin_token: None,
        limiter: crate::ratelimit::RateLimiter::new(0, 0, None),
        cashier_limiter: crate::ratelimit::RateLimiter::new(0, 0, None),
    };
    Ok((state, sandboxes))
}
