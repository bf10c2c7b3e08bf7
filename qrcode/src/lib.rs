//! QR codes and payment codes for paymux (details and the rule tables in README.md).
//!
//! - [`emv`]: EMVCo merchant-presented QR payloads — a typed model, an encoder that appends the
//!   CRC-16/CCITT-FALSE, a strict or lenient decoder whose errors name the field, and the builder of
//!   our own static / fixed-amount merchant code.
//! - [`paycode`]: which wallet issued a customer payment code (付款码), from a rule table held as data
//!   (built in, or loaded from TOML/JSON), telling malformed codes from unknown ones.
//! - [`render`]: QR images as SVG and PNG, and the printable code plate (merchant, store, QR,
//!   fixed amount, accepted wallets) as SVG and PNG.
//! - [`tlv`]: EMV BER-TLV decoding for contactless and consumer-presented (CPM) data, and the
//!   extraction of PAN / track 2 into types that print only the last four digits.
//! - [`useragent`]: which app opened a static code's page, from its User-Agent, also a data table.

pub mod emv;
pub mod paycode;
pub mod render;
pub mod tlv;
pub mod useragent;
