//! Identifiers: UUIDv7 (time-ordered) wrapped in one newtype per kind of thing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered (UUIDv7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
            pub const fn into_uuid(self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    };
}

id_type!(
    /// A merchant of the platform.
    MerchantId
);
id_type!(
    /// A payment (one attempt by a merchant to collect money for one order).
    PaymentId
);
id_type!(
    /// A refund of (part of) a payment.
    RefundId
);
id_type!(
    /// A configured account at a payment channel (credentials + routing data).
    ChannelAccountId
);
id_type!(
    /// A journal entry of the ledger; doubles as its idempotency key.
    EntryId
);
id_type!(
    /// A ledger account.
    AccountId
);
id_type!(
    /// A merchant settlement batch.
    SettlementId
);
id_type!(
    /// A static (printed) merchant QR code.
    CodeId
);
id_type!(
    /// A wallet user of the platform's own wallet.
    WalletUserId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v7_time_ordered_and_round_trip() {
        let a = PaymentId::new();
        let b = PaymentId::new();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b, "v7 ids sort by creation time");
        assert_eq!(a.to_string().parse::<PaymentId>().unwrap(), a);
        assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
        assert!("not-a-uuid".parse::<PaymentId>().is_err());
    }
}
