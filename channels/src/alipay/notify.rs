//! The asynchronous trade notification (`notify_type=trade_status_sync`): typed, checked against
//! the order, and the reply Alipay expects.
//!
//! Verify the body first with [`verify_notify`](super::sign::verify_notify) (or use
//! [`TradeNotify::verify`]); only then are the fields worth reading.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, TimeZone as _, Utc};
use chrono_tz::Asia::Shanghai;
use paymux_model::{Currency, Money};

use super::sign::{FormError, verify_notify};
use crate::crypto::RsaVerifier;
use crate::{
    ChannelError, NotificationEvent, NotificationReply, RefundInfo, RefundState, Trade, TradeState,
};

/// Alipay's timestamp format (`gmt_payment`, `notify_time`, …), Asia/Shanghai local time.
pub const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Why a notification was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Form(#[from] FormError),
    #[error("notification has no `{0}`")]
    Missing(&'static str),
    #[error("`{field}` is not a valid {what}: {value:?}")]
    Invalid {
        field: &'static str,
        what: &'static str,
        value: String,
    },
    #[error("unknown trade_status {0:?}")]
    UnknownStatus(String),
    #[error("`{field}` is {actual:?}, expected {expected:?}")]
    Mismatch {
        field: &'static str,
        expected: String,
        actual: String,
    },
}

impl From<NotifyError> for ChannelError {
    fn from(e: NotifyError) -> Self {
        match e {
            NotifyError::Form(f) => f.into(),
            other => ChannelError::Protocol(other.to_string()),
        }
    }
}

/// A refund reported by a `trade_status_sync` notification (partial refunds keep the trade
/// `TRADE_SUCCESS`; a full refund closes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundNotice {
    /// `out_biz_no`: the refund's `out_request_no`.
    pub out_request_no: String,
    /// `refund_fee`: the total refunded on the trade so far, in fen.
    pub refunded_total_minor: Option<i64>,
    /// `gmt_refund` (it carries milliseconds: `2019-08-15 15:56:24.123`).
    pub refunded_at: Option<DateTime<Utc>>,
}

/// A verified `trade_status_sync` notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeNotify {
    pub notify_id: String,
    pub notify_type: String,
    pub notify_time: Option<DateTime<Utc>>,
    pub app_id: String,
    /// Alipay's trade number.
    pub trade_no: String,
    pub out_trade_no: String,
    /// `trade_status` as sent (`TRADE_SUCCESS`, …).
    pub trade_status: String,
    pub state: TradeState,
    /// `total_amount` in fen.
    pub total_amount_minor: i64,
    /// `receipt_amount` (what the merchant actually received) in fen, when sent.
    pub receipt_amount_minor: Option<i64>,
    /// `buyer_pay_amount` in fen, when sent.
    pub buyer_pay_amount_minor: Option<i64>,
    pub buyer_id: Option<String>,
    pub seller_id: Option<String>,
    pub gmt_create: Option<DateTime<Utc>>,
    pub gmt_payment: Option<DateTime<Utc>>,
    pub gmt_close: Option<DateTime<Utc>>,
    pub refund: Option<RefundNotice>,
}

/// The platform's order, to check a notification against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected<'a> {
    pub app_id: &'a str,
    pub out_trade_no: &'a str,
    pub total_amount_minor: i64,
}

impl TradeNotify {
    /// Verifies the form body with Alipay's public key, then decodes it.
    pub fn verify(verifier: &RsaVerifier, body: &[u8]) -> Result<Self, NotifyError> {
        Self::from_params(&verify_notify(verifier, body)?)
    }

    /// Decodes already verified parameters.
    pub fn from_params(p: &BTreeMap<String, String>) -> Result<Self, NotifyError> {
        let get = |k: &'static str| p.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let req = |k: &'static str| get(k).map(str::to_string).ok_or(NotifyError::Missing(k));
        let amount = |k: &'static str| get(k).map(|v| parse_yuan(k, v)).transpose();
        let time = |k: &'static str| get(k).map(|v| parse_time(k, v)).transpose();

        let trade_status = req("trade_status")?;
        let total_amount_minor =
            amount("total_amount")?.ok_or(NotifyError::Missing("total_amount"))?;
        let gmt_payment = time("gmt_payment")?;
        let refund_fee = amount("refund_fee")?;
        let state = match trade_status.as_str() {
            "TRADE_SUCCESS" | "TRADE_FINISHED" => TradeState::Succeeded,
            "WAIT_BUYER_PAY" => TradeState::UserPaying,
            // TRADE_CLOSED is also how a paid trade looks once fully refunded: it was paid.
            "TRADE_CLOSED" if gmt_payment.is_some() || refund_fee.is_some_and(|f| f > 0) => {
                TradeState::Succeeded
            }
            "TRADE_CLOSED" => TradeState::Closed,
            _ => {
                return Err(NotifyError::UnknownStatus(
                    trade_status.chars().take(64).collect(),
                ));
            }
        };
        let refund = match get("out_biz_no") {
            Some(out_biz_no) if refund_fee.is_some() || get("gmt_refund").is_some() => {
                Some(RefundNotice {
                    out_request_no: out_biz_no.to_string(),
                    refunded_total_minor: refund_fee,
                    refunded_at: time("gmt_refund")?,
                })
            }
            _ => None,
        };
        Ok(Self {
            notify_id: req("notify_id")?,
            notify_type: req("notify_type")?,
            notify_time: time("notify_time")?,
            app_id: req("app_id")?,
            trade_no: req("trade_no")?,
            out_trade_no: req("out_trade_no")?,
            trade_status,
            state,
            total_amount_minor,
            receipt_amount_minor: amount("receipt_amount")?,
            buyer_pay_amount_minor: amount("buyer_pay_amount")?,
            buyer_id: get("buyer_id").map(str::to_string),
            seller_id: get("seller_id").map(str::to_string),
            gmt_create: time("gmt_create")?,
            gmt_payment,
            gmt_close: time("gmt_close")?,
            refund,
        })
    }

    /// Checks the notification belongs to this app and order, for the order's amount.
    pub fn check(&self, expected: &Expected<'_>) -> Result<(), NotifyError> {
        let mismatch = |field, expected: String, actual: String| {
            Err(NotifyError::Mismatch {
                field,
                expected,
                actual,
            })
        };
        if self.app_id != expected.app_id {
            return mismatch("app_id", expected.app_id.into(), self.app_id.clone());
        }
        if self.out_trade_no != expected.out_trade_no {
            return mismatch(
                "out_trade_no",
                expected.out_trade_no.into(),
                self.out_trade_no.clone(),
            );
        }
        if self.total_amount_minor != expected.total_amount_minor {
            let yuan = |m| Money::cny(m).format_major();
            return mismatch(
                "total_amount",
                yuan(expected.total_amount_minor),
                yuan(self.total_amount_minor),
            );
        }
        Ok(())
    }

    /// The trade as the platform's channel-neutral [`Trade`].
    pub fn trade(&self) -> Trade {
        Trade {
            out_trade_no: self.out_trade_no.clone(),
            channel_trade_no: Some(self.trade_no.clone()),
            state: self.state,
            channel_state: self.trade_status.clone(),
            amount_minor: Some(self.total_amount_minor),
            paid_at: self.gmt_payment,
            payer_id: self.buyer_id.clone(),
        }
    }

    /// The event: a refund when the notification reports one, else the payment's state.
    pub fn event(&self) -> NotificationEvent {
        match &self.refund {
            Some(r) => NotificationEvent::Refund {
                refund: RefundInfo {
                    out_trade_no: Some(self.out_trade_no.clone()),
                    out_refund_no: r.out_request_no.clone(),
                    channel_refund_no: None,
                    state: RefundState::Succeeded,
                    channel_state: self.trade_status.clone(),
                    // `refund_fee` is the trade's refunded total, not this refund's amount.
                    amount_minor: None,
                    succeeded_at: r.refunded_at,
                },
            },
            None => NotificationEvent::Payment {
                trade: self.trade(),
            },
        }
    }
}

/// The reply to a notification: `success` acknowledges; anything else makes Alipay retry.
pub fn reply(ok: bool) -> NotificationReply {
    NotificationReply {
        status: 200,
        content_type: "text/plain; charset=utf-8",
        body: if ok {
            b"success".to_vec()
        } else {
            b"failure".to_vec()
        },
    }
}

/// A yuan amount (`"12.34"`) in fen, exactly; negatives are invalid.
fn parse_yuan(field: &'static str, value: &str) -> Result<i64, NotifyError> {
    Money::parse_major(value, Currency::Cny, false)
        .map(Money::amount_minor)
        .map_err(|_| NotifyError::Invalid {
            field,
            what: "yuan amount",
            value: value.chars().take(32).collect(),
        })
}

/// An Alipay local time (`yyyy-MM-dd HH:mm:ss`, optionally with `.SSS`) in Asia/Shanghai.
pub fn parse_time(field: &'static str, value: &str) -> Result<DateTime<Utc>, NotifyError> {
    let invalid = || NotifyError::Invalid {
        field,
        what: "time (yyyy-MM-dd HH:mm:ss)",
        value: value.chars().take(32).collect(),
    };
    let naive =
        NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f").map_err(|_| invalid())?;
    Shanghai
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn paid() -> BTreeMap<String, String> {
        params(&[
            ("notify_id", "n1"),
            ("notify_type", "trade_status_sync"),
            ("notify_time", "2019-08-15 15:56:25"),
            ("app_id", "2019073166072302"),
            ("trade_no", "2019081522001468450512505578"),
            ("out_trade_no", "o1"),
            ("trade_status", "TRADE_SUCCESS"),
            ("total_amount", "1234.50"),
            ("receipt_amount", "0.10"),
            ("gmt_payment", "2019-08-15 15:56:24"),
            ("buyer_id", "2088102534368455"),
        ])
    }

    #[test]
    fn decodes_a_payment() {
        let n = TradeNotify::from_params(&paid()).unwrap();
        assert_eq!(n.state, TradeState::Succeeded);
        assert_eq!(n.total_amount_minor, 123_450);
        assert_eq!(n.receipt_amount_minor, Some(10));
        assert_eq!(
            n.gmt_payment.unwrap().to_rfc3339(),
            "2019-08-15T07:56:24+00:00"
        );
        assert!(n.refund.is_none());
        let expected = Expected {
            app_id: "2019073166072302",
            out_trade_no: "o1",
            total_amount_minor: 123_450,
        };
        assert_eq!(n.check(&expected), Ok(()));
        assert!(matches!(
            n.check(&Expected {
                total_amount_minor: 123_451,
                ..expected
            }),
            Err(NotifyError::Mismatch {
                field: "total_amount",
                ..
            })
        ));
        assert!(matches!(
            n.check(&Expected {
                app_id: "x",
                ..expected
            }),
            Err(NotifyError::Mismatch {
                field: "app_id",
                ..
            })
        ));
        assert!(matches!(
            n.check(&Expected {
                out_trade_no: "o2",
                ..expected
            }),
            Err(NotifyError::Mismatch {
                field: "out_trade_no",
                ..
            })
        ));
        match n.event() {
            NotificationEvent::Payment { trade } => {
                assert_eq!(trade.amount_minor, Some(123_450));
                assert_eq!(trade.payer_id.as_deref(), Some("2088102534368455"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn statuses_map_to_states() {
        let state = |status: &str, extra: &[(&str, &str)]| {
            let mut p = paid();
            p.insert("trade_status".into(), status.into());
            p.remove("gmt_payment");
            p.extend(params(extra));
            TradeNotify::from_params(&p).map(|n| n.state)
        };
        assert_eq!(state("TRADE_FINISHED", &[]), Ok(TradeState::Succeeded));
        assert_eq!(state("WAIT_BUYER_PAY", &[]), Ok(TradeState::UserPaying));
        assert_eq!(state("TRADE_CLOSED", &[]), Ok(TradeState::Closed));
        assert_eq!(
            state("TRADE_CLOSED", &[("refund_fee", "1234.50")]),
            Ok(TradeState::Succeeded)
        );
        assert_eq!(
            state("PAID", &[]),
            Err(NotifyError::UnknownStatus("PAID".into()))
        );
    }

    #[test]
    fn refund_notice() {
        let mut p = paid();
        p.extend(params(&[
            ("out_biz_no", "r1"),
            ("refund_fee", "0.05"),
            ("gmt_refund", "2019-08-15 16:00:00.123"),
        ]));
        let n = TradeNotify::from_params(&p).unwrap();
        let r = n.refund.clone().unwrap();
        assert_eq!(r.refunded_total_minor, Some(5));
        assert_eq!(r.refunded_at.unwrap().timestamp_subsec_millis(), 123);
        assert!(
            matches!(n.event(), NotificationEvent::Refund { refund } if refund.out_refund_no == "r1")
        );
    }

    #[test]
    fn bad_fields_are_precise_errors() {
        let with = |k: &str, v: &str| {
            let mut p = paid();
            p.insert(k.into(), v.into());
            TradeNotify::from_params(&p)
        };
        assert!(matches!(
            with("total_amount", "0.1e1"),
            Err(NotifyError::Invalid {
                field: "total_amount",
                ..
            })
        ));
        assert!(matches!(
            with("total_amount", "-1.00"),
            Err(NotifyError::Invalid {
                field: "total_amount",
                ..
            })
        ));
        assert!(matches!(
            with("total_amount", "1.001"),
            Err(NotifyError::Invalid {
                field: "total_amount",
                ..
            })
        ));
        assert!(matches!(
            with("gmt_payment", "2019-02-30 00:00:00"),
            Err(NotifyError::Invalid {
                field: "gmt_payment",
                ..
            })
        ));
        assert_eq!(
            with("out_trade_no", ""),
            Err(NotifyError::Missing("out_trade_no"))
        );
        let mut p = paid();
        p.remove("total_amount");
        assert_eq!(
            TradeNotify::from_params(&p),
            Err(NotifyError::Missing("total_amount"))
        );
    }

    #[test]
    fn reply_is_plain_success() {
        let r = reply(true);
        assert_eq!((r.status, r.body.as_slice()), (200, b"success".as_slice()));
        assert!(r.content_type.starts_with("text/plain"));
        assert_ne!(reply(false).body, b"success");
    }

    proptest! {
        #[test]
        fn arbitrary_fields_never_panic(pairs in proptest::collection::btree_map("[a-z_]{1,14}", ".{0,24}", 0..24)) {
            let mut p = paid();
            p.extend(pairs);
            let _ = TradeNotify::from_params(&p);
        }

        #[test]
        fn amounts_parse_exactly(fen in 0i64..=i64::MAX / 2) {
            let mut p = paid();
            p.insert("total_amount".into(), Money::cny(fen).format_major());
            prop_assert_eq!(TradeNotify::from_params(&p).unwrap().total_amount_minor, fen);
        }
    }
}
