//! UnionPay QR (云闪付) through the merchant gateway in the ACP 5.1.0 style: the adapter
//! ([`UnionPay`], in [`adapter`]), its sandbox ([`sandbox`]) and the protocol layer they share, which
//! has no I/O of its own:
//!
//! - [`sign`]: the form signature (`signMethod=01` SHA256withRSA over the hex SHA-256 of the sign
//!   string, or `signMethod=02` SM2 over the hex SM3), `certId`, signing and verification keys, and key
//!   generation for the sandbox;
//! - [`messages`]: the typed field sets of B2C payment (被扫), C2B order creation (主扫), query, refund
//!   and the back notification, form encoding, the `respCode` / `origRespCode` mapping onto the
//!   channel-neutral outcomes, and the validation of customers' C2B codes;
//! - [`bill`]: our daily transaction file (对账文件): a documented `|`-separated layout modelled on
//!   UnionPay's ACP files, a streaming parser that checks the trailer, and a writer.
//!
//! A message is a flat set of form fields, [`Fields`]: a sorted map, which is also the order the
//! signature needs.

pub mod adapter;
pub mod bill;
pub mod messages;
pub mod sandbox;
pub mod sign;

pub use adapter::{UnionPay, UnionPayConfig, UnionPayKey};

/// The fields of one form message (request, response or notification), sorted by name.
pub type Fields = std::collections::BTreeMap<String, String>;
