//! Alipay open API (`openapi.alipay.com/gateway.do`): the adapter ([`Alipay`]), its protocol layer
//! and its sandbox.
//!
//! - [`adapter`]: [`Alipay`] implements [`Channel`](crate::Channel) over the gateway.
//! - [`sandbox`]: an HTTP server speaking the gateway protocol, with its own app account and books.
//! - [`sign`]: the RSA2 sign string, request signing, verification of responses (over the exact raw
//!   text of the `…_response` node) and of asynchronous notifications (form bodies), and the
//!   certificate serial numbers (`app_cert_sn`, `alipay_root_cert_sn`) of public-key-certificate mode.
//! - [`notify`]: the typed `trade_status_sync` notification, its checks against the order and the
//!   reply Alipay expects (`success`).
//! - [`bill`]: the trade bill (`…_业务明细.csv`, GBK inside a zip) as a lazy stream of
//!   [`BillRecord`](crate::BillRecord)s cross-checked against the file's summary rows, and a writer of
//!   the same layout.
//!
//! The wire facts these follow are in `shared/protocols/alipay.md`; the tests run the published
//! vectors of the official Node SDK and of yansongda/pay.

pub mod adapter;
pub mod bill;
pub mod notify;
pub mod sandbox;
pub mod sign;

pub use adapter::{Alipay, AlipayConfig};
