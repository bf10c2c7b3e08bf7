//! The ledger's vocabulary: accounts, postings, entries, per-entry results, errors.

use std::fmt;
use std::str::FromStr;

use paymux_model::{AccountId, Currency, EntryId, Money};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace of the UUIDv5 ids the ledger derives (account ids from codes, digests).
pub const LEDGER_NAMESPACE: Uuid = Uuid::from_u128(0x6c65_6467_6572_4e53_9a1b_2c3d_4e5f_6071);

/// The five kinds of account of double-entry bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    Asset,
    Liability,
    Equity,
    Revenue,
    Expense,
}

impl AccountKind {
    pub const ALL: [AccountKind; 5] = [
        AccountKind::Asset,
        AccountKind::Liability,
        AccountKind::Equity,
        AccountKind::Revenue,
        AccountKind::Expense,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Asset => "asset",
            AccountKind::Liability => "liability",
            AccountKind::Equity => "equity",
            AccountKind::Revenue => "revenue",
            AccountKind::Expense => "expense",
        }
    }

    /// Assets and expenses grow with debits; the others with credits.
    pub fn is_debit_normal(self) -> bool {
        matches!(self, AccountKind::Asset | AccountKind::Expense)
    }
}

impl FromStr for AccountKind {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AccountKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| LedgerError::Corrupt(format!("unknown account kind {s:?}")))
    }
}

/// Balance constraints of an account, checked after every entry (pending amounts count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct AccountFlags {
    /// `debits_posted + debits_pending <= credits_posted` (e.g. a wallet balance never negative).
    pub debits_must_not_exceed_credits: bool,
    /// `credits_posted + credits_pending <= debits_posted`.
    pub credits_must_not_exceed_debits: bool,
}

impl AccountFlags {
    pub const NONE: AccountFlags = AccountFlags {
        debits_must_not_exceed_credits: false,
        credits_must_not_exceed_debits: false,
    };

    pub fn bits(self) -> i32 {
        i32::from(self.debits_must_not_exceed_credits)
            | (i32::from(self.credits_must_not_exceed_debits) << 1)
    }

    pub fn from_bits(bits: i32) -> AccountFlags {
        AccountFlags {
            debits_must_not_exceed_credits: bits & 1 != 0,
            credits_must_not_exceed_debits: bits & 2 != 0,
        }
    }
}

/// Everything needed to open an account on first use. The id is derived from the code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AccountSpec {
    pub code: String,
    pub kind: AccountKind,
    pub currency: Currency,
    pub flags: AccountFlags,
}

impl AccountSpec {
    pub fn id(&self) -> AccountId {
        account_id_for_code(&self.code)
    }
}

/// The id of the account with this code: UUIDv5 of the code, so that a code names the same account
/// in every process without a lookup.
pub fn account_id_for_code(code: &str) -> AccountId {
    AccountId::from_uuid(Uuid::new_v5(&LEDGER_NAMESPACE, code.as_bytes()))
}

/// How a posting names its account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccountRef {
    /// Must already exist, else `account_not_found`.
    Id(AccountId),
    /// Must already exist, else `account_not_found`.
    Code(String),
    /// Opened in the same transaction if missing.
    Spec(AccountSpec),
}

impl AccountRef {
    pub fn id(&self) -> AccountId {
        match self {
            AccountRef::Id(id) => *id,
            AccountRef::Code(code) => account_id_for_code(code),
            AccountRef::Spec(spec) => spec.id(),
        }
    }
}

impl From<AccountSpec> for AccountRef {
    fn from(spec: AccountSpec) -> Self {
        AccountRef::Spec(spec)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Debit,
    Credit,
}

/// One leg of a journal entry. `amount` must be positive and in the account's currency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NewPosting {
    pub account: AccountRef,
    pub side: Side,
    pub amount: Money,
}

impl NewPosting {
    pub fn debit(account: impl Into<AccountRef>, amount: Money) -> NewPosting {
        NewPosting {
            account: account.into(),
            side: Side::Debit,
            amount,
        }
    }
    pub fn credit(account: impl Into<AccountRef>, amount: Money) -> NewPosting {
        NewPosting {
            account: account.into(),
            side: Side::Credit,
            amount,
        }
    }
}

/// What an entry is about. Stored as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Payment,
    Refund,
    Fee,
    ChannelSettlement,
    MerchantSettlement,
    WalletTopUp,
    WalletPayment,
    WalletTransfer,
    Adjustment,
}

impl EntryKind {
    pub const ALL: [EntryKind; 9] = [
        EntryKind::Payment,
        EntryKind::Refund,
        EntryKind::Fee,
        EntryKind::ChannelSettlement,
        EntryKind::MerchantSettlement,
        EntryKind::WalletTopUp,
        EntryKind::WalletPayment,
        EntryKind::WalletTransfer,
        EntryKind::Adjustment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Payment => "payment",
            EntryKind::Refund => "refund",
            EntryKind::Fee => "fee",
            EntryKind::ChannelSettlement => "channel_settlement",
            EntryKind::MerchantSettlement => "merchant_settlement",
            EntryKind::WalletTopUp => "wallet_top_up",
            EntryKind::WalletPayment => "wallet_payment",
            EntryKind::WalletTransfer => "wallet_transfer",
            EntryKind::Adjustment => "adjustment",
        }
    }
}

impl FromStr for EntryKind {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EntryKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| LedgerError::Corrupt(format!("unknown entry kind {s:?}")))
    }
}

/// Single-phase or one step of a two-phase entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Moves money now.
    Posted,
    /// Holds money in the pending balances until posted, voided or `timeout_ms` after it was created.
    Pending { timeout_ms: i64 },
    /// Posts a pending entry: with no postings, all of it; with postings, those amounts (each leg at
    /// most the pending leg, balanced). The rest of the hold is released.
    PostPending { pending_id: EntryId },
    /// Releases a pending entry. Must have no postings.
    VoidPending { pending_id: EntryId },
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Posted => "posted",
            Phase::Pending { .. } => "pending",
            Phase::PostPending { .. } => "post_pending",
            Phase::VoidPending { .. } => "void_pending",
        }
    }
    pub fn pending_id(self) -> Option<EntryId> {
        match self {
            Phase::PostPending { pending_id } | Phase::VoidPending { pending_id } => {
                Some(pending_id)
            }
            _ => None,
        }
    }
    pub fn timeout_ms(self) -> Option<i64> {
        match self {
            Phase::Pending { timeout_ms } => Some(timeout_ms),
            _ => None,
        }
    }
}

/// A journal entry to post. Its `id` is the idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEntry {
    pub id: EntryId,
    pub kind: EntryKind,
    /// The payment / refund / settlement this entry is about.
    pub reference: Option<Uuid>,
    pub metadata: serde_json::Value,
    pub effective_at_us: i64,
    pub phase: Phase,
    pub postings: Vec<NewPosting>,
}

impl NewEntry {
    /// A single-phase entry with empty metadata.
    pub fn posted(
        id: EntryId,
        kind: EntryKind,
        reference: Option<Uuid>,
        effective_at_us: i64,
        postings: Vec<NewPosting>,
    ) -> NewEntry {
        NewEntry {
            id,
            kind,
            reference,
            metadata: serde_json::Value::Object(Default::default()),
            effective_at_us,
            phase: Phase::Posted,
            postings,
        }
    }

    pub fn with_metadata(mut self, metadata: serde_json::Value) -> NewEntry {
        self.metadata = metadata;
        self
    }

    pub fn with_phase(mut self, phase: Phase) -> NewEntry {
        self.phase = phase;
        self
    }
}

/// The outcome of one entry, in the order the entries were given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryResult {
    Created,
    /// Same id, same content: already posted, nothing changed.
    Exists,
    ExistsWithDifferentPhase,
    ExistsWithDifferentKind,
    ExistsWithDifferentReference,
    ExistsWithDifferentEffectiveAt,
    ExistsWithDifferentMetadata,
    ExistsWithDifferentPostings,
    /// Fewer than two postings (posted/pending entries).
    TooFewPostings,
    /// A posting amount is zero or negative.
    AmountMustBePositive,
    /// A pending entry without a positive timeout.
    TimeoutMustBePositive,
    /// A void has postings.
    VoidMustHaveNoPostings,
    /// Debits differ from credits in some currency.
    Unbalanced,
    /// The metadata holds a NUL character (`\u0000`) in a string or a key, which PostgreSQL's
    /// `jsonb` cannot store; refused on every backend alike.
    MetadataInvalid,
    AccountNotFound,
    /// A posting's currency is not its account's currency.
    CurrencyMismatch,
    /// A spec names an existing code with another kind or other flags.
    AccountSpecMismatch,
    ExceedsCredits,
    ExceedsDebits,
    /// A balance would leave the i64 range.
    Overflow,
    PendingNotFound,
    PendingAlreadyPosted,
    PendingAlreadyVoided,
    PendingExpired,
    /// A partial post names a leg that the pending entry does not have.
    PendingLegNotFound,
    AmountExceedsPending,
    /// All-or-nothing batch: this entry was fine but another one failed.
    LinkedEntryFailed,
}

impl EntryResult {
    /// Created or already there with the same content.
    pub fn is_ok(self) -> bool {
        matches!(self, EntryResult::Created | EntryResult::Exists)
    }
}

impl fmt::Display for EntryResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// Options of one `post` call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PostOptions {
    /// If any entry is rejected, nothing is written and the others report `linked_entry_failed`.
    pub all_or_nothing: bool,
    /// The clock for pending timeouts and `created_at`; `None` = the system clock.
    pub now_us: Option<i64>,
}

/// Errors of the ledger as a whole (per-entry outcomes are [`EntryResult`]s).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored ledger data is inconsistent: {0}")]
    Corrupt(String),
    #[error("account not found: {0}")]
    AccountNotFound(String),
    #[error("the ledger is shutting down")]
    ShuttingDown,
    /// Another writer changed what the batch read while it was reading; retrying reads it whole.
    #[error("concurrent change: {0}")]
    Concurrent(String),
}

impl LedgerError {
    /// Deadlock, serialization failure, a lock wait past `lock_timeout`, a unique violation from a
    /// concurrent writer of the same entry id, or a concurrent change seen while reading: retrying
    /// the whole batch in a new transaction is safe.
    pub fn is_retryable(&self) -> bool {
        match self {
            LedgerError::Database(sqlx::Error::Database(e)) => matches!(
                e.code().as_deref(),
                Some("40P01" | "40001" | "55P03" | "23505" | "5" | "6" | "517" | "2067" | "1555")
            ),
            LedgerError::Concurrent(_) => true,
            LedgerError::Database(sqlx::Error::PoolTimedOut) => true,
            _ => false,
        }
    }
}

/// Current microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
