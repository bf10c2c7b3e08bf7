//! paymux-ledger (see README.md).
