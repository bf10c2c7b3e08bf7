//! Reconciliation: a channel's bill for a day against the platform's own records of that channel
//! account and day.
//!
//! [`reconcile`] streams the bill (never holding it whole), matches each line on `out_trade_no`
//! (payments) or `out_refund_no` (refunds) against the platform records, which are indexed in memory,
//! and classifies every pair and every leftover:
//!
//! | class | meaning | resolution |
//! |---|---|---|
//! | `matched` | same amount, we say succeeded, fee as expected | — |
//! | `missing_on_platform` | the channel has it, we do not | exception |
//! | `missing_on_channel` | we have a success the channel does not list | carried over when it is near the day's end (cross-midnight timing), else an exception |
//! | `amount_mismatch` | amounts differ | exception |
//! | `status_mismatch` | the channel moved the money, we are not `succeeded` | complete it through the normal path (payments: `created` / `processing` / `closed`; refunds: `processing`), else an exception |
//! | `fee_mismatch` | matched, but the channel's fee differs from the configured rate | an adjustment entry for the difference |
//!
//! Platform records that never succeeded and are absent from the bill are consistent (nothing moved)
//! and are not reported. The outcome is a pure function of its inputs: rerunning a date gives the same
//! items, so the caller's resolutions (keyed by the item) are applied once.

use std::collections::{HashMap, HashSet};

use paymux_channels::{BillError, BillKind, BillRecord};
use serde::{Deserialize, Serialize};

/// The platform's state of a payment or refund, as far as reconciliation cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlatformStatus {
    Created,
    Processing,
    Succeeded,
    Failed,
    Closed,
}

/// One of our payments or refunds at a channel account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformRecord {
    pub kind: BillKind,
    /// The payment's order number at the channel.
    pub out_trade_no: String,
    /// For refunds: the refund's number at the channel.
    pub out_refund_no: Option<String>,
    pub amount_minor: i64,
    pub status: PlatformStatus,
    /// The fee the channel should charge (payments) or return (refunds) at the configured rate.
    pub expected_fee_minor: Option<i64>,
    /// When it succeeded (or was created), in unix microseconds.
    pub time_us: i64,
}

/// A record's number in the bill: `payment:<out_trade_no>` or `refund:<out_refund_no>`. Numbers of
/// 32 lowercase hex digits (our UUIDs in simple form, the usual case) are held as their 16 bytes, so
/// an index of a million records stays small; any other number is kept as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    refund: bool,
    no: Number,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Number {
    Hex([u8; 16]),
    Text(Box<str>),
}

impl Key {
    /// The key of a payment (`out_trade_no`) or a refund (`out_refund_no`).
    pub fn new(kind: BillKind, out_trade_no: &str, out_refund_no: Option<&str>) -> Key {
        let (refund, no) = match kind {
            BillKind::Payment => (false, out_trade_no),
            BillKind::Refund => (true, out_refund_no.unwrap_or_default()),
        };
        let hex = no.len() == 32 && no.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let no = match u128::from_str_radix(no, 16) {
            Ok(n) if hex => Number::Hex(n.to_be_bytes()),
            _ => Number::Text(no.into()),
        };
        Key { refund, no }
    }

    pub fn of_record(r: &BillRecord) -> Key {
        Key::new(r.kind, &r.out_trade_no, r.out_refund_no.as_deref())
    }

    pub fn kind(&self) -> BillKind {
        if self.refund {
            BillKind::Refund
        } else {
            BillKind::Payment
        }
    }

    /// The number as 16 bytes, when it is 32 hex digits (a UUID in simple form).
    pub fn uuid_bytes(&self) -> Option<[u8; 16]> {
        match &self.no {
            Number::Hex(b) => Some(*b),
            Number::Text(_) => None,
        }
    }

    /// The number as it appears in the bill.
    pub fn number(&self) -> String {
        match &self.no {
            Number::Hex(b) => format!("{:032x}", u128::from_be_bytes(*b)),
            Number::Text(t) => t.to_string(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.refund { "refund" } else { "payment" };
        match &self.no {
            Number::Hex(b) => write!(f, "{kind}:{:032x}", u128::from_be_bytes(*b)),
            Number::Text(t) => write!(f, "{kind}:{t}"),
        }
    }
}

impl std::str::FromStr for Key {
    type Err = String;

    /// Parses `payment:<no>` / `refund:<no>` (the [`Display`](std::fmt::Display) form).
    fn from_str(s: &str) -> Result<Key, String> {
        match s.split_once(':') {
            Some(("payment", no)) => Ok(Key::new(BillKind::Payment, no, None)),
            Some(("refund", no)) => Ok(Key::new(BillKind::Refund, "", Some(no))),
            _ => Err(format!("not a record key: {s:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Matched,
    MissingOnPlatform,
    MissingOnChannel,
    AmountMismatch,
    StatusMismatch,
    FeeMismatch,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::Matched,
        Class::MissingOnPlatform,
        Class::MissingOnChannel,
        Class::AmountMismatch,
        Class::StatusMismatch,
        Class::FeeMismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Matched => "matched",
            Class::MissingOnPlatform => "missing_on_platform",
            Class::MissingOnChannel => "missing_on_channel",
            Class::AmountMismatch => "amount_mismatch",
            Class::StatusMismatch => "status_mismatch",
            Class::FeeMismatch => "fee_mismatch",
        }
    }
}

/// What should happen about an item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Resolution {
    /// The channel moved the money: complete the payment through the normal transition path.
    CompletePayment,
    /// The channel refunded: complete the refund through the normal path.
    CompleteRefund,
    /// Post an adjustment for the fee difference (`channel − expected`, minor units).
    FeeAdjustment { delta_minor: i64 },
    /// Near the day's end: look again in the next days' runs before calling it an exception.
    CarryOver,
    /// A person must look at it.
    Exception,
}

/// One reconciled pair or leftover. Matched pairs are counted but not itemised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub class: Class,
    pub kind: BillKind,
    pub out_trade_no: String,
    pub out_refund_no: Option<String>,
    pub channel_trade_no: Option<String>,
    pub channel_amount_minor: Option<i64>,
    pub platform_amount_minor: Option<i64>,
    pub channel_fee_minor: Option<i64>,
    pub expected_fee_minor: Option<i64>,
    pub platform_status: Option<PlatformStatus>,
    pub resolution: Resolution,
}

/// Counts and amounts per class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub channel_records: u64,
    pub platform_records: u64,
    /// `(class, count, amount in minor units)`, every class present.
    pub by_class: Vec<(Class, u64, i128)>,
    /// The channel's net for the day: payments − refunds − fees + returned fees.
    pub channel_net_minor: i128,
    pub channel_fees_minor: i128,
}

impl Summary {
    pub fn count(&self, class: Class) -> u64 {
        self.by_class
            .iter()
            .find(|(c, _, _)| *c == class)
            .map_or(0, |(_, n, _)| *n)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub summary: Summary,
    /// Every item that is not `matched`, in a stable order (class, kind, numbers).
    pub items: Vec<Item>,
}

/// How leftovers near midnight are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The end of the reconciled day (the channel's local midnight), unix microseconds.
    pub day_end_us: i64,
    /// A success of ours within this long before the day's end that the channel does not list is
    /// carried over (the channel may book it on the next day).
    pub carry_over_window_us: i64,
}

/// Why reconciliation stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    /// The bill cannot be trusted (parse error, truncation, summary mismatch): nothing is classified.
    #[error(transparent)]
    Bill(#[from] BillError),
    #[error("the bill lists {0} twice")]
    DuplicateLine(String),
}

/// Reconciles a bill against the platform's records (all of them known up front).
pub fn reconcile(
    platform: impl IntoIterator<Item = PlatformRecord>,
    channel: impl Iterator<Item = Result<BillRecord, BillError>>,
    opts: Options,
) -> Result<Outcome, ReconcileError> {
    let mut m = Matcher::new(opts);
    for r in platform {
        m.add(r);
    }
    for line in channel {
        m.push(line?)?;
    }
    Ok(m.finish(Vec::new(), |_| true)?.outcome)
}

/// What the index holds of a platform record (its key holds the number).
#[derive(Debug)]
struct Slot {
    amount_minor: i64,
    expected_fee_minor: Option<i64>,
    time_us: i64,
    status: PlatformStatus,
    /// Listed by the bill so far.
    seen: bool,
    /// Refunds: the payment's `out_trade_no`.
    trade_no: Option<Box<str>>,
}

impl Slot {
    fn of(r: PlatformRecord) -> (Key, Slot) {
        let key = Key::new(r.kind, &r.out_trade_no, r.out_refund_no.as_deref());
        let trade_no = (r.kind == BillKind::Refund).then(|| r.out_trade_no.into_boxed_str());
        (
            key,
            Slot {
                amount_minor: r.amount_minor,
                expected_fee_minor: r.expected_fee_minor,
                time_us: r.time_us,
                status: r.status,
                seen: false,
                trade_no,
            },
        )
    }
}

/// Counts, amounts and items as lines are classified.
#[derive(Debug, Default)]
struct Tally {
    counts: [(u64, i128); 6],
    items: Vec<Item>,
    channel_records: u64,
    net: i128,
    fees: i128,
}

impl Tally {
    fn count(&mut self, class: Class, amount: i64) {
        let e = &mut self.counts[class as usize];
        e.0 += 1;
        e.1 += i128::from(amount);
    }

    /// Classifies one bill line against our record of it (if any).
    fn line(&mut self, c: &BillRecord, p: Option<&Slot>) {
        self.channel_records += 1;
        let sign: i128 = if c.kind == BillKind::Payment { 1 } else { -1 };
        self.net += sign * (i128::from(c.amount_minor) - i128::from(c.fee_minor));
        self.fees += sign * i128::from(c.fee_minor);
        let item = |class, resolution| Item {
            class,
            kind: c.kind,
            out_trade_no: c.out_trade_no.clone(),
            out_refund_no: c.out_refund_no.clone(),
            channel_trade_no: Some(c.channel_trade_no.clone()),
            channel_amount_minor: Some(c.amount_minor),
            platform_amount_minor: p.map(|p| p.amount_minor),
            channel_fee_minor: Some(c.fee_minor),
            expected_fee_minor: p.and_then(|p| p.expected_fee_minor),
            platform_status: p.map(|p| p.status),
            resolution,
        };
        let (class, resolution) = match p {
            None => (Class::MissingOnPlatform, Some(Resolution::Exception)),
            // Our refund number, listed under another payment: not our refund.
            Some(p)
                if c.kind == BillKind::Refund
                    && p.trade_no.as_deref().is_some_and(|t| t != c.out_trade_no) =>
            {
                (Class::MissingOnPlatform, Some(Resolution::Exception))
            }
            Some(p) if p.amount_minor != c.amount_minor => {
                (Class::AmountMismatch, Some(Resolution::Exception))
            }
            Some(p) if p.status != PlatformStatus::Succeeded => {
                let resolution = match (c.kind, p.status) {
                    (
                        BillKind::Payment,
                        PlatformStatus::Created
                        | PlatformStatus::Processing
                        | PlatformStatus::Closed,
                    ) => Resolution::CompletePayment,
                    (BillKind::Refund, PlatformStatus::Processing) => Resolution::CompleteRefund,
                    _ => Resolution::Exception,
                };
                (Class::StatusMismatch, Some(resolution))
            }
            Some(Slot {
                expected_fee_minor: Some(expected),
                ..
            }) if *expected != c.fee_minor => (
                Class::FeeMismatch,
                // A difference beyond i64 is no fee to adjust: an exception.
                Some(match c.fee_minor.checked_sub(*expected) {
                    Some(delta_minor) => Resolution::FeeAdjustment { delta_minor },
                    None => Resolution::Exception,
                }),
            ),
            Some(_) => (Class::Matched, None),
        };
        self.count(class, c.amount_minor);
        if let Some(resolution) = resolution {
            self.items.push(item(class, resolution));
        }
    }
}

/// Reconciliation in one pass over the bill, for callers that load more of their records only
/// once they know which numbers the bill lists:
///
/// 1. [`add`](Matcher::add) the records expected in the bill (the day's successes);
/// 2. [`push`](Matcher::push) every line of the bill as it is read: a line of a record in the index
///    is classified at once; any other line is kept aside ([`unknown`](Matcher::unknown));
/// 3. [`finish`](Matcher::finish) with the records found for the kept lines (and a filter for lines
///    that belong to someone else): they are classified, and what the bill did not list is left over.
///
/// The outcome equals [`reconcile`] over all the records and the kept lines.
#[derive(Debug)]
pub struct Matcher {
    ours: HashMap<Key, Slot>,
    unknown: Vec<BillRecord>,
    unknown_keys: HashSet<Key>,
    tally: Tally,
    platform_records: u64,
    opts: Options,
}

/// The outcome of a [`Matcher`], with the records the bill listed.
#[derive(Debug)]
pub struct Finished {
    pub outcome: Outcome,
    /// Keys of our records that the bill listed (each once; classified lines of ours).
    pub listed: Vec<Key>,
}

impl Matcher {
    pub fn new(opts: Options) -> Matcher {
        Matcher::with_capacity(opts, 0)
    }

    /// Room for `records` platform records up front.
    pub fn with_capacity(opts: Options, records: usize) -> Matcher {
        Matcher {
            ours: HashMap::with_capacity(records),
            unknown: Vec::new(),
            unknown_keys: HashSet::new(),
            tally: Tally::default(),
            platform_records: 0,
            opts,
        }
    }

    /// Adds a platform record to the index; a later record with the same key replaces it. Records
    /// go in before the first line.
    pub fn add(&mut self, r: PlatformRecord) {
        let (key, slot) = Slot::of(r);
        if self.ours.insert(key, slot).is_none() {
            self.platform_records += 1;
        }
    }

    pub fn platform_records(&self) -> u64 {
        self.platform_records
    }

    /// Whether the index holds a record with this key.
    pub fn knows(&self, key: &Key) -> bool {
        self.ours.contains_key(key)
    }

    /// Takes the next line of the bill.
    pub fn push(&mut self, line: BillRecord) -> Result<(), ReconcileError> {
        let key = Key::of_record(&line);
        match self.ours.get_mut(&key) {
            Some(slot) => {
                if slot.seen {
                    return Err(ReconcileError::DuplicateLine(key.to_string()));
                }
                slot.seen = true;
                let slot = &*slot;
                self.tally.line(&line, Some(slot));
            }
            None => {
                if !self.unknown_keys.insert(key.clone()) {
                    return Err(ReconcileError::DuplicateLine(key.to_string()));
                }
                self.unknown.push(line);
            }
        }
        Ok(())
    }

    /// Lines so far of records the index does not hold.
    pub fn unknown(&self) -> &[BillRecord] {
        &self.unknown
    }

    /// Whether the bill so far listed this key.
    pub fn listed(&self, key: &Key) -> bool {
        self.ours.get(key).is_some_and(|s| s.seen) || self.unknown_keys.contains(key)
    }

    /// Classifies the kept lines against `extra` records (ours, found for them) — those `keep`
    /// rejects are left out entirely — and then what the index has that the bill did not list.
    pub fn finish(
        mut self,
        extra: impl IntoIterator<Item = PlatformRecord>,
        mut keep: impl FnMut(&BillRecord) -> bool,
    ) -> Result<Finished, ReconcileError> {
        for r in extra {
            let (key, slot) = Slot::of(r);
            if let std::collections::hash_map::Entry::Vacant(v) = self.ours.entry(key) {
                v.insert(slot);
                self.platform_records += 1;
            }
        }
        for line in std::mem::take(&mut self.unknown) {
            if !keep(&line) {
                continue;
            }
            let key = Key::of_record(&line);
            match self.ours.get_mut(&key) {
                Some(slot) => {
                    slot.seen = true;
                    let slot = &*slot;
                    self.tally.line(&line, Some(slot));
                }
                None => self.tally.line(&line, None),
            }
        }
        let Matcher {
            ours,
            mut tally,
            platform_records,
            opts,
            ..
        } = self;
        let mut listed = Vec::with_capacity(ours.len());
        let mut leftovers: Vec<(Key, Slot)> = Vec::new();
        for (key, slot) in ours {
            if slot.seen {
                listed.push(key);
            } else if slot.status == PlatformStatus::Succeeded {
                leftovers.push((key, slot));
            }
        }
        leftovers.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, p) in leftovers {
            let near_end = p.time_us >= opts.day_end_us - opts.carry_over_window_us;
            tally.count(Class::MissingOnChannel, p.amount_minor);
            let (out_trade_no, out_refund_no) = match key.kind() {
                BillKind::Payment => (key.number(), None),
                BillKind::Refund => (
                    p.trade_no.as_deref().unwrap_or_default().to_string(),
                    Some(key.number()),
                ),
            };
            tally.items.push(Item {
                class: Class::MissingOnChannel,
                kind: key.kind(),
                out_trade_no,
                out_refund_no,
                channel_trade_no: None,
                channel_amount_minor: None,
                platform_amount_minor: Some(p.amount_minor),
                channel_fee_minor: None,
                expected_fee_minor: p.expected_fee_minor,
                platform_status: Some(p.status),
                resolution: if near_end {
                    Resolution::CarryOver
                } else {
                    Resolution::Exception
                },
            });
        }
        let mut items = tally.items;
        items.sort_by(|a, b| {
            (a.class, a.kind as u8, &a.out_trade_no, &a.out_refund_no).cmp(&(
                b.class,
                b.kind as u8,
                &b.out_trade_no,
                &b.out_refund_no,
            ))
        });
        let by_class = Class::ALL
            .iter()
            .map(|c| {
                let (n, a) = tally.counts[*c as usize];
                (*c, n, a)
            })
            .collect();
        Ok(Finished {
            outcome: Outcome {
                summary: Summary {
                    channel_records: tally.channel_records,
                    platform_records,
                    by_class,
                    channel_net_minor: tally.net,
                    channel_fees_minor: tally.fees,
                },
                items,
            },
            listed,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    fn bill(kind: BillKind, no: &str, refund: Option<&str>, amount: i64, fee: i64) -> BillRecord {
        BillRecord {
            channel_trade_no: format!("42{no}"),
            out_trade_no: no.into(),
            out_refund_no: refund.map(str::to_string),
            kind,
            amount_minor: amount,
            fee_minor: fee,
            status: "SUCCESS".into(),
            time: NaiveDate::from_ymd_opt(2026, 11, 22)
                .unwrap()
                .and_hms_opt(12, 0, 0)
                .unwrap(),
        }
    }

    fn ours(
        kind: BillKind,
        no: &str,
        refund: Option<&str>,
        amount: i64,
        status: PlatformStatus,
        fee: Option<i64>,
        time_us: i64,
    ) -> PlatformRecord {
        PlatformRecord {
            kind,
            out_trade_no: no.into(),
            out_refund_no: refund.map(str::to_string),
            amount_minor: amount,
            status,
            expected_fee_minor: fee,
            time_us,
        }
    }

    const END: i64 = 1_000_000_000_000;
    const OPTS: Options = Options {
        day_end_us: END,
        carry_over_window_us: 600_000_000,
    };

    #[test]
    fn every_class_with_its_resolution() {
        use PlatformStatus::*;
        let platform = vec![
            ours(BillKind::Payment, "ok", None, 1000, Succeeded, Some(6), 0),
            ours(
                BillKind::Payment,
                "amount",
                None,
                1000,
                Succeeded,
                Some(6),
                0,
            ),
            ours(BillKind::Payment, "open", None, 500, Processing, Some(3), 0),
            ours(BillKind::Payment, "failed", None, 500, Failed, Some(3), 0),
            ours(BillKind::Payment, "fee", None, 1000, Succeeded, Some(6), 0),
            ours(
                BillKind::Payment,
                "late",
                None,
                700,
                Succeeded,
                Some(4),
                END - 1_000,
            ),
            ours(BillKind::Payment, "lost", None, 800, Succeeded, Some(5), 0),
            ours(BillKind::Payment, "never", None, 900, Closed, Some(5), 0),
            ours(
                BillKind::Refund,
                "ok",
                Some("r1"),
                300,
                Processing,
                Some(2),
                0,
            ),
        ];
        let channel = vec![
            bill(BillKind::Payment, "ok", None, 1000, 6),
            bill(BillKind::Payment, "amount", None, 1001, 6),
            bill(BillKind::Payment, "open", None, 500, 3),
            bill(BillKind::Payment, "failed", None, 500, 3),
            bill(BillKind::Payment, "fee", None, 1000, 10),
            bill(BillKind::Payment, "stranger", None, 50, 0),
            bill(BillKind::Refund, "ok", Some("r1"), 300, 2),
        ];
        let out = reconcile(platform, channel.into_iter().map(Ok), OPTS).unwrap();
        let s = &out.summary;
        assert_eq!(
            (
                s.count(Class::Matched),
                s.count(Class::AmountMismatch),
                s.count(Class::StatusMismatch)
            ),
            (1, 1, 3)
        );
        assert_eq!(
            (
                s.count(Class::FeeMismatch),
                s.count(Class::MissingOnPlatform),
                s.count(Class::MissingOnChannel)
            ),
            (1, 1, 2)
        );
        let res = |no: &str, class: Class| {
            out.items
                .iter()
                .find(|i| i.out_trade_no == no && i.class == class)
                .unwrap()
                .resolution
                .clone()
        };
        assert_eq!(
            res("open", Class::StatusMismatch),
            Resolution::CompletePayment
        );
        assert_eq!(res("failed", Class::StatusMismatch), Resolution::Exception);
        assert_eq!(
            res("fee", Class::FeeMismatch),
            Resolution::FeeAdjustment { delta_minor: 4 }
        );
        assert_eq!(res("late", Class::MissingOnChannel), Resolution::CarryOver);
        assert_eq!(res("lost", Class::MissingOnChannel), Resolution::Exception);
        assert_eq!(
            res("stranger", Class::MissingOnPlatform),
            Resolution::Exception
        );
        let refund = out
            .items
            .iter()
            .find(|i| i.kind == BillKind::Refund)
            .unwrap();
        assert_eq!(refund.resolution, Resolution::CompleteRefund);
        // "never" (closed, not in the bill) is consistent and not reported.
        assert!(out.items.iter().all(|i| i.out_trade_no != "never"));
        // Net: payments − refunds − fees (+ returned fees).
        assert_eq!(
            s.channel_net_minor,
            (1000 - 6) + (1001 - 6) + (500 - 3) * 2 + (1000 - 10) + 50 - (300 - 2)
        );
    }

    #[test]
    fn a_refund_under_another_payment_and_a_fee_beyond_i64_are_exceptions() {
        use PlatformStatus::*;
        let platform = vec![
            ours(
                BillKind::Refund,
                "p1",
                Some("r1"),
                300,
                Succeeded,
                Some(2),
                0,
            ),
            ours(BillKind::Payment, "p2", None, 1000, Succeeded, Some(-6), 0),
        ];
        let channel = vec![
            // Our refund number, but on the bill under another payment.
            bill(BillKind::Refund, "p9", Some("r1"), 300, 2),
            bill(BillKind::Payment, "p2", None, 1000, i64::MAX),
        ];
        let out = reconcile(platform, channel.into_iter().map(Ok), OPTS).unwrap();
        let item = |no: &str| {
            out.items
                .iter()
                .find(|i| i.out_trade_no == no)
                .unwrap_or_else(|| panic!("no item {no}: {:?}", out.items))
        };
        assert_eq!(item("p9").class, Class::MissingOnPlatform);
        assert_eq!(item("p9").resolution, Resolution::Exception);
        assert_eq!(item("p2").class, Class::FeeMismatch);
        assert_eq!(item("p2").resolution, Resolution::Exception);
    }

    #[test]
    fn a_bad_bill_classifies_nothing_and_a_rerun_is_identical() {
        let err = reconcile(
            Vec::new(),
            vec![
                Ok(bill(BillKind::Payment, "a", None, 1, 0)),
                Err(BillError::Truncated("cut".into())),
            ]
            .into_iter(),
            OPTS,
        );
        assert!(matches!(err, Err(ReconcileError::Bill(_))));
        let dup = reconcile(
            Vec::new(),
            vec![
                Ok(bill(BillKind::Payment, "a", None, 1, 0)),
                Ok(bill(BillKind::Payment, "a", None, 1, 0)),
            ]
            .into_iter(),
            OPTS,
        );
        assert!(matches!(dup, Err(ReconcileError::DuplicateLine(_))));
        let platform = || {
            vec![
                ours(
                    BillKind::Payment,
                    "x",
                    None,
                    5,
                    PlatformStatus::Succeeded,
                    None,
                    0,
                ),
                ours(
                    BillKind::Payment,
                    "y",
                    None,
                    5,
                    PlatformStatus::Succeeded,
                    None,
                    0,
                ),
            ]
        };
        let channel = || {
            vec![
                Ok(bill(BillKind::Payment, "z", None, 5, 0)),
                Ok(bill(BillKind::Payment, "x", None, 5, 0)),
            ]
        };
        let a = reconcile(platform(), channel().into_iter(), OPTS).unwrap();
        let b = reconcile(platform().into_iter().rev(), channel().into_iter(), OPTS).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn keys_keep_their_numbers_exactly() {
        let hex = "0123456789abcdef0123456789abcdef";
        for (kind, no, refund) in [
            (BillKind::Payment, hex, None),
            (BillKind::Payment, "0123456789ABCDEF0123456789ABCDEF", None),
            (BillKind::Payment, "42", None),
            (BillKind::Payment, "+123456789abcdef0123456789abcdef", None),
            (BillKind::Refund, hex, Some(hex)),
            (BillKind::Refund, hex, Some("R-1")),
        ] {
            let k = Key::new(kind, no, refund);
            let shown = format!(
                "{}:{}",
                if kind == BillKind::Refund {
                    "refund"
                } else {
                    "payment"
                },
                refund.unwrap_or(no)
            );
            assert_eq!(k.to_string(), shown);
            assert_eq!(k.number(), refund.unwrap_or(no));
            assert_eq!(shown.parse::<Key>().unwrap(), k);
            assert_eq!(k.kind(), kind);
        }
        assert!(
            Key::new(BillKind::Payment, hex, None)
                .uuid_bytes()
                .is_some()
        );
        assert!(
            Key::new(BillKind::Payment, "42", None)
                .uuid_bytes()
                .is_none()
        );
        assert_ne!(
            Key::new(BillKind::Payment, hex, None),
            Key::new(BillKind::Refund, "", Some(hex))
        );
        assert!("x:1".parse::<Key>().is_err());
    }

    #[test]
    fn one_pass_with_records_found_later_equals_reconciling_everything() {
        use PlatformStatus::*;
        let a = "00000000000000000000000000000001";
        let b = "00000000000000000000000000000002";
        let c = "00000000000000000000000000000003";
        let day = vec![
            ours(BillKind::Payment, a, None, 1000, Succeeded, Some(6), 0),
            ours(BillKind::Payment, "lost", None, 800, Succeeded, Some(5), 0),
        ];
        let found = vec![ours(
            BillKind::Payment,
            b,
            None,
            500,
            Processing,
            Some(3),
            0,
        )];
        let bill_lines = vec![
            bill(BillKind::Payment, a, None, 1000, 6),
            bill(BillKind::Payment, b, None, 500, 3),
            bill(BillKind::Payment, c, None, 70, 0),
            bill(BillKind::Payment, "theirs", None, 90, 1),
        ];
        let mut m = Matcher::new(OPTS);
        for r in day.clone() {
            m.add(r);
        }
        for l in bill_lines.clone() {
            m.push(l).unwrap();
        }
        let unknown: Vec<String> = m.unknown().iter().map(|l| l.out_trade_no.clone()).collect();
        assert_eq!(unknown, [b, c, "theirs"]);
        assert!(m.listed(&Key::new(BillKind::Payment, c, None)));
        assert!(!m.listed(&Key::new(BillKind::Payment, "lost", None)));
        let done = m
            .finish(found.clone(), |l| l.out_trade_no != "theirs")
            .unwrap();
        let all: Vec<PlatformRecord> = day.into_iter().chain(found).collect();
        let kept = bill_lines
            .into_iter()
            .filter(|l| l.out_trade_no != "theirs")
            .map(Ok);
        assert_eq!(done.outcome, reconcile(all, kept, OPTS).unwrap());
        let mut listed: Vec<String> = done.listed.iter().map(Key::number).collect();
        listed.sort();
        assert_eq!(listed, [a, b]);
        // The line of someone else's record counts nowhere, not even in the net.
        assert_eq!(done.outcome.summary.channel_records, 3);
        assert_eq!(
            done.outcome.summary.channel_net_minor,
            (1000 - 6) + (500 - 3) + 70
        );
        // A line twice is refused whether or not we know its record.
        let mut m = Matcher::new(OPTS);
        m.add(ours(BillKind::Payment, a, None, 1, Succeeded, None, 0));
        m.push(bill(BillKind::Payment, a, None, 1, 0)).unwrap();
        assert!(m.push(bill(BillKind::Payment, a, None, 1, 0)).is_err());
        m.push(bill(BillKind::Payment, c, None, 1, 0)).unwrap();
        assert!(m.push(bill(BillKind::Payment, c, None, 1, 0)).is_err());
    }
}
