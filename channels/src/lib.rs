//! Payment channels.
//!
//! The rest of the platform sees only the [`Channel`] trait defined here: capabilities, C2B order
//! creation, B2C payment-code charges, query/close/reverse, refunds, notification verification and
//! bill download as a stream of normalised [`BillRecord`]s. Every channel module (`wechat`, `alipay`,
//! `unionpay`, …) holds its adapter (the wire protocol: signing, encryption, field names, status
//! codes), its bill-file parser and its sandbox (an HTTP server speaking the same protocol).
//!
//! Outcomes are explicit. A timeout, a connection reset after the request was sent or a 5xx is
//! [`ChannelError::Unknown`] / [`PayOutcome::Unknown`]: the money may have moved, so callers query and
//! then reverse or close — they never treat it as a failure.

pub mod alipay;
pub mod crypto;
pub mod http;
pub mod sandbox;
mod types;
pub mod unionpay;
pub mod wechat;

pub use types::*;
