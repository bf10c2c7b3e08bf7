//! paymux-qrcode (see README.md).
