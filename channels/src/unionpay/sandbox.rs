//! The UnionPay QR sandbox (placeholder).
