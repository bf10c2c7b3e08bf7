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

use std::collections::HashMap;

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

impl PlatformRecord {
    fn key(&self) -> Key {
        match self.kind {
            BillKind::Payment => Key::Payment(self.out_trade_no.clone()),
            BillKind::Refund => Key::Refund(self.out_refund_no.clone().unwrap_or_default()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Payment(String),
    Refund(String),
}

fn channel_key(r: &BillRecord) -> Key {
    match r.kind {
        BillKind::Payment => Key::Payment(r.out_trade_no.clone()),
        BillKind::Refund => Key::Refund(r.out_refund_no.clone().unwrap_or_default()),
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

/// Reconciles a bill against the platform's records.
pub fn reconcile(
    platform: impl IntoIterator<Item = PlatformRecord>,
    channel: impl Iterator<Item = Result<BillRecord, BillError>>,
    opts: Options,
) -> Result<Outcome, ReconcileError> {
    let mut ours: HashMap<Key, PlatformRecord> = HashMap::new();
    let mut platform_records = 0u64;
    for r in platform {
        platform_records += 1;
        ours.insert(r.key(), r);
    }
    let mut counts: HashMap<Class, (u64, i128)> = HashMap::new();
    let mut items = Vec::new();
    let mut seen: std::collections::HashSet<Key> = std::collections::HashSet::new();
    let mut channel_records = 0u64;
    let mut net: i128 = 0;
    let mut fees: i128 = 0;
    let mut count = |class: Class, amount: i64| {
        let e = counts.entry(class).or_default();
        e.0 += 1;
        e.1 += i128::from(amount);
    };
    for line in channel {
        let c = line?;
        channel_records += 1;
        let sign: i128 = if c.kind == BillKind::Payment { 1 } else { -1 };
        net += sign * (i128::from(c.amount_minor) - i128::from(c.fee_minor));
        fees += sign * i128::from(c.fee_minor);
        let key = channel_key(&c);
        if !seen.insert(key.clone()) {
            return Err(ReconcileError::DuplicateLine(format!("{key:?}")));
        }
        let item = |class, p: Option<&PlatformRecord>, resolution| Item {
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
        let Some(p) = ours.remove(&key) else {
            count(Class::MissingOnPlatform, c.amount_minor);
            items.push(item(Class::MissingOnPlatform, None, Resolution::Exception));
            continue;
        };
        if p.amount_minor != c.amount_minor {
            count(Class::AmountMismatch, c.amount_minor);
            items.push(item(Class::AmountMismatch, Some(&p), Resolution::Exception));
            continue;
        }
        if p.status != PlatformStatus::Succeeded {
            let resolution = match (c.kind, p.status) {
                (
                    BillKind::Payment,
                    PlatformStatus::Created | PlatformStatus::Processing | PlatformStatus::Closed,
                ) => Resolution::CompletePayment,
                (BillKind::Refund, PlatformStatus::Processing) => Resolution::CompleteRefund,
                _ => Resolution::Exception,
            };
            count(Class::StatusMismatch, c.amount_minor);
            items.push(item(Class::StatusMismatch, Some(&p), resolution));
            continue;
        }
        if let Some(expected) = p.expected_fee_minor
            && expected != c.fee_minor
        {
            count(Class::FeeMismatch, c.amount_minor);
            items.push(item(
                Class::FeeMismatch,
                Some(&p),
                Resolution::FeeAdjustment {
                    delta_minor: c.fee_minor - expected,
                },
            ));
            continue;
        }
        count(Class::Matched, c.amount_minor);
    }
    // What we have and the channel does not.
    let mut leftovers: Vec<PlatformRecord> = ours
        .into_values()
        .filter(|p| p.status == PlatformStatus::Succeeded)
        .collect();
    leftovers.sort_by(|a, b| {
        (a.kind as u8, &a.out_trade_no, &a.out_refund_no).cmp(&(
            b.kind as u8,
            &b.out_trade_no,
            &b.out_refund_no,
        ))
    });
    for p in leftovers {
        let near_end = p.time_us >= opts.day_end_us - opts.carry_over_window_us;
        count(Class::MissingOnChannel, p.amount_minor);
        items.push(Item {
            class: Class::MissingOnChannel,
            kind: p.kind,
            out_trade_no: p.out_trade_no.clone(),
            out_refund_no: p.out_refund_no.clone(),
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
            let (n, a) = counts.get(c).copied().unwrap_or_default();
            (*c, n, a)
        })
        .collect();
    Ok(Outcome {
        summary: Summary {
            channel_records,
            platform_records,
            by_class,
            channel_net_minor: net,
            channel_fees_minor: fees,
        },
        items,
    })
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
}
