//! The platform's enumerations, each with a stable lowercase wire/database name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Error for a string that names no variant of an enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownVariant {
    pub kind: &'static str,
    pub value: String,
}

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident, $kind:literal { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable name used on the wire and in the database.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownVariant { kind: $kind, value: s.chars().take(32).collect() }),
                }
            }
        }
    };
}

string_enum!(
    /// How the payer pays.
    PayMethod, "method" {
        /// The merchant scans the customer's payment code (付款码, B2C).
        CodeScan = "code_scan",
        /// The customer scans a per-payment QR code shown by the merchant (C2B dynamic QR).
        QrMerchant = "qr_merchant",
        /// The customer scans the merchant's printed one-code QR (一码通付) and enters the amount.
        QrStatic = "qr_static",
        /// Payment inside a wallet app's web view (WeChat JSAPI, Alipay JSAPI, UnionPay userAuth).
        Jsapi = "jsapi",
        /// NFC tap of a card or phone (EMV contactless).
        Nfc = "nfc",
        /// Sound-wave payment code (the payment code carried acoustically).
        SoundWave = "sound_wave",
        /// Payment from the balance of the platform's own wallet.
        WalletBalance = "wallet_balance",
        /// In-app payment started from a merchant's mobile app.
        App = "app",
    }
);

string_enum!(
    /// The payer's wallet (who holds the payer's money).
    WalletBrand, "wallet" {
        Wechat = "wechat",
        Alipay = "alipay",
        /// UnionPay QuickPass (云闪付) and the bank apps of the UnionPay network.
        Unionpay = "unionpay",
        /// Digital renminbi.
        Ecny = "ecny",
        /// The platform's own wallet.
        Paymux = "paymux",
        /// A bank card presented at a terminal.
        Card = "card",
    }
);

string_enum!(
    /// A kind of payment channel (the protocol a channel account speaks).
    ChannelKind, "channel kind" {
        WechatV3 = "wechat_v3",
        Alipay = "alipay",
        UnionpayQr = "unionpay_qr",
        Ecny = "ecny",
        UnionpayCard = "unionpay_card",
        Wallet = "wallet",
    }
);

string_enum!(
    /// The life of a payment: `created → processing → succeeded | failed | closed`.
    PaymentStatus, "payment status" {
        /// Accepted by the platform, not yet sent to a channel (or waiting for the payer to scan).
        Created = "created",
        /// Sent to a channel; the outcome is not known yet (password wait, unknown, pending notify).
        Processing = "processing",
        /// The money moved. Final (refunds are tracked on the payment, not as a status).
        Succeeded = "succeeded",
        /// The channel declined. Final.
        Failed = "failed",
        /// Closed without payment (expired, closed by the merchant, reversed). Final, except that a
        /// channel's late success notification still moves it to `succeeded` (money that moved).
        Closed = "closed",
    }
);

impl PaymentStatus {
    /// Whether this status is final for the merchant's purposes.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            PaymentStatus::Succeeded | PaymentStatus::Failed | PaymentStatus::Closed
        )
    }

    /// The statuses from which a transition to `to` is allowed (the compare-and-set's `IN (…)`).
    pub fn allowed_sources(to: PaymentStatus) -> &'static [PaymentStatus] {
        use PaymentStatus::*;
        match to {
            Created => &[],
            Processing => &[Created],
            Succeeded => &[Created, Processing, Closed],
            Failed => &[Created, Processing],
            Closed => &[Created, Processing],
        }
    }

    pub fn can_transition(self, to: PaymentStatus) -> bool {
        PaymentStatus::allowed_sources(to).contains(&self)
    }
}

string_enum!(
    /// The life of a refund: `processing → succeeded | failed`.
    RefundStatus, "refund status" {
        Processing = "processing",
        Succeeded = "succeeded",
        Failed = "failed",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_str_and_serde() {
        for m in PayMethod::ALL {
            assert_eq!(m.as_str().parse::<PayMethod>(), Ok(*m));
            assert_eq!(
                serde_json::to_string(m).unwrap(),
                format!("\"{}\"", m.as_str())
            );
        }
        for w in WalletBrand::ALL {
            assert_eq!(w.as_str().parse::<WalletBrand>(), Ok(*w));
        }
        for k in ChannelKind::ALL {
            assert_eq!(k.as_str().parse::<ChannelKind>(), Ok(*k));
        }
        assert_eq!(PayMethod::ALL.len(), 8);
        assert!("CODE_SCAN".parse::<PayMethod>().is_err());
    }

    #[test]
    fn payment_state_machine() {
        use PaymentStatus::*;
        assert!(Created.can_transition(Processing));
        assert!(Processing.can_transition(Succeeded));
        assert!(
            Closed.can_transition(Succeeded),
            "late success after close is money that moved"
        );
        assert!(!Succeeded.can_transition(Closed));
        assert!(!Failed.can_transition(Succeeded));
        assert!(!Closed.can_transition(Failed));
        for s in PaymentStatus::ALL {
            assert!(!s.can_transition(Created));
        }
        assert!(Succeeded.is_final() && Failed.is_final() && Closed.is_final());
        assert!(!Created.is_final() && !Processing.is_final());
    }
}
