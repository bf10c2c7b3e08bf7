//! batcher
pub struct Ledger;
pub struct LedgerConfig;
