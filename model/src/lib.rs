//! The shared vocabulary of paymux.
//!
//! Every other crate speaks in these types:
//! - [`money`]: [`Money`] is an exact amount in minor units (fen) of a [`Currency`]; yuan strings are
//!   parsed and formatted exactly, never through floats.
//! - [`ids`]: UUIDv7 identifiers wrapped in one newtype per kind of thing, so a `PaymentId` can never be
//!   passed where a `MerchantId` is expected.
//! - [`enums`]: payment methods, wallet brands, channel kinds and the payment/refund state machines.
//! - [`error`]: the stable error codes that the API returns in `application/problem+json` bodies.
//! - [`auth`]: the merchant request-signing scheme (`PAYMUX-HMAC-SHA256`), shared by the server, the
//!   test clients and the load generator so that all three sign byte-for-byte alike.

pub mod auth;
pub mod enums;
pub mod error;
pub mod ids;
pub mod money;

pub use enums::{ChannelKind, PayMethod, PaymentStatus, RefundStatus, WalletBrand};
pub use error::ErrorCode;
pub use ids::*;
pub use money::{Currency, Money, MoneyError};
