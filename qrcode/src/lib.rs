//! QR codes and payment codes for paymux.
//!
//! - [`emv`]: EMVCo merchant-presented QR payloads — a typed model, an encoder that appends the
//!   CRC-16/CCITT-FALSE, a strict or lenient decoder whose errors name the field, and the builder of
//!   our own static / fixed-amount merchant code.

pub mod emv;
