//! Storage: the raw rows both backends read, their conversion into engine state, and one module per
//! backend ([`sqlite`], [`pg`]) with the batched statements of the posting path.

pub mod copy;
pub mod pg;
pub mod pipeline;
pub mod sqlite;

use std::collections::HashMap;

use paymux_model::{AccountId, Currency};
use sqlx::types::Json;
use uuid::Uuid;

use crate::engine::{AccountState, Leg, PendingInfo, PendingState, StoredHead};
use crate::types::*;

pub const ACCOUNT_COLUMNS: &str = "id, code, kind, currency, flags, debits_posted, credits_posted, \
     debits_pending, credits_pending";
/// [`ACCOUNT_COLUMNS`] and the row's write count, which only PostgreSQL keeps.
pub const PG_ACCOUNT_COLUMNS: &str = "id, code, kind, currency, flags, debits_posted, credits_posted, \
     debits_pending, credits_pending, version";

#[derive(Debug, sqlx::FromRow)]
pub struct RawAccount {
    pub id: Uuid,
    pub code: String,
    pub kind: String,
    pub currency: String,
    pub flags: i32,
    pub debits_posted: i64,
    pub credits_posted: i64,
    pub debits_pending: i64,
    pub credits_pending: i64,
    /// Read on PostgreSQL only ([`PG_ACCOUNT_COLUMNS`]).
    #[sqlx(default)]
    pub version: i64,
}

impl RawAccount {
    pub fn into_state(self) -> Result<AccountState, LedgerError> {
        Ok(AccountState {
            id: AccountId::from_uuid(self.id),
            kind: self.kind.parse()?,
            currency: self
                .currency
                .parse::<Currency>()
                .map_err(|e| LedgerError::Corrupt(format!("account {}: {e}", self.code)))?,
            flags: AccountFlags::from_bits(self.flags),
            code: self.code,
            debits_posted: self.debits_posted,
            credits_posted: self.credits_posted,
            debits_pending: self.debits_pending,
            credits_pending: self.credits_pending,
            version: self.version,
        })
    }
}

pub fn accounts_map(raw: Vec<RawAccount>) -> Result<HashMap<AccountId, AccountState>, LedgerError> {
    raw.into_iter()
        .map(|r| r.into_state().map(|a| (a.id, a)))
        .collect()
}

pub const HEAD_COLUMNS: &str = "id, phase, pending_id, timeout_ms, kind, reference, effective_at_us, metadata, postings_digest";

#[derive(Debug, sqlx::FromRow)]
pub struct RawHead {
    pub id: Uuid,
    pub phase: String,
    pub pending_id: Option<Uuid>,
    pub timeout_ms: Option<i64>,
    pub kind: String,
    pub reference: Option<Uuid>,
    pub effective_at_us: i64,
    pub metadata: Json<serde_json::Value>,
    pub postings_digest: Uuid,
}

pub fn heads_map(raw: Vec<RawHead>) -> HashMap<Uuid, StoredHead> {
    raw.into_iter()
        .map(|r| {
            (
                r.id,
                StoredHead {
                    phase: r.phase,
                    pending_id: r.pending_id,
                    timeout_ms: r.timeout_ms,
                    kind: r.kind,
                    reference: r.reference,
                    effective_at_us: r.effective_at_us,
                    metadata: r.metadata.0,
                    postings_digest: r.postings_digest,
                },
            )
        })
        .collect()
}

/// A pending entry's legs (read before locking: legs never change).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawLeg {
    pub entry_id: Uuid,
    pub account_id: Uuid,
    pub is_credit: bool,
    pub amount_minor: i64,
}

/// A pending entry's state (read after locking its accounts).
#[derive(Debug, sqlx::FromRow)]
pub struct RawPending {
    pub entry_id: Uuid,
    pub timeout_at_us: i64,
    pub state: i16,
}

pub fn pendings_map(
    legs: Vec<RawLeg>,
    states: Vec<RawPending>,
) -> Result<HashMap<Uuid, PendingInfo>, LedgerError> {
    let mut by_entry: HashMap<Uuid, Vec<Leg>> = HashMap::new();
    for l in legs {
        by_entry.entry(l.entry_id).or_default().push(Leg {
            account_id: AccountId::from_uuid(l.account_id),
            side: if l.is_credit {
                Side::Credit
            } else {
                Side::Debit
            },
            amount_minor: l.amount_minor,
        });
    }
    states
        .into_iter()
        .map(|s| {
            // A pending entry has at least two legs. None were read: it was committed between
            // the read of the legs and the read of the states (PostgreSQL, two statements).
            let legs = by_entry.remove(&s.entry_id).ok_or_else(|| {
                LedgerError::Concurrent(format!(
                    "pending entry {} appeared while it was being read",
                    s.entry_id
                ))
            })?;
            Ok((
                s.entry_id,
                PendingInfo {
                    timeout_at_us: s.timeout_at_us,
                    state: PendingState::from_code(s.state)?,
                    legs,
                },
            ))
        })
        .collect()
}

/// Ids of accounts known to exist (read from the database under lock in a committed batch), so a
/// standalone [`crate::Ledger`] does not send their specs to be opened again: accounts are never
/// deleted. Bounded: when `max` is reached the set starts over.
#[derive(Debug, Default)]
pub struct KnownAccounts {
    ids: std::sync::RwLock<std::collections::HashSet<Uuid>>,
    max: usize,
}

impl KnownAccounts {
    pub fn new(max: usize) -> KnownAccounts {
        KnownAccounts {
            ids: Default::default(),
            max,
        }
    }

    pub fn contains(&self, id: &Uuid) -> bool {
        self.ids.read().is_ok_and(|ids| ids.contains(id))
    }

    /// Remembers `ids`; call only after the transaction that read them committed.
    pub fn remember(&self, ids: &[Uuid]) {
        let Ok(mut known) = self.ids.write() else {
            return;
        };
        if known.len() + ids.len() > self.max {
            known.clear();
        }
        if ids.len() <= self.max {
            known.extend(ids.iter().copied());
        }
    }

    /// The specs among `specs` whose accounts may not exist yet.
    pub fn unknown(&self, specs: Vec<AccountSpec>) -> Vec<AccountSpec> {
        let Ok(known) = self.ids.read() else {
            return specs;
        };
        if known.is_empty() {
            return specs;
        }
        specs
            .into_iter()
            .filter(|s| !known.contains(&s.id().into_uuid()))
            .collect()
    }
}

/// What a batch posted: a result per entry, and the accounts it found (they exist once the
/// transaction commits).
#[derive(Debug)]
pub struct Posted {
    pub results: Vec<EntryResult>,
    pub accounts: Vec<Uuid>,
    /// The standalone ledger's PostgreSQL path: every account the batch held, with its balances
    /// after the batch.
    pub balances: Vec<AccountState>,
}

/// The accounts a batch must lock: those named by postings plus the pending legs' accounts,
/// sorted (the lock order that keeps concurrent batches free of deadlocks).
pub fn lock_set(account_ids: &[AccountId], legs: &[RawLeg]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = account_ids
        .iter()
        .map(|a| a.into_uuid())
        .chain(legs.iter().map(|l| l.account_id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_entry_read_without_its_legs_is_a_retryable_concurrent_change() {
        let id = Uuid::now_v7();
        let states = vec![RawPending {
            entry_id: id,
            timeout_at_us: 1,
            state: 0,
        }];
        let err = pendings_map(Vec::new(), states).unwrap_err();
        assert!(matches!(err, LedgerError::Concurrent(_)), "{err}");
        assert!(err.is_retryable());
        let legs = vec![
            RawLeg {
                entry_id: id,
                account_id: Uuid::now_v7(),
                is_credit: false,
                amount_minor: 5,
            },
            RawLeg {
                entry_id: id,
                account_id: Uuid::now_v7(),
                is_credit: true,
                amount_minor: 5,
            },
        ];
        let states = vec![RawPending {
            entry_id: id,
            timeout_at_us: 1,
            state: 0,
        }];
        let map = pendings_map(legs, states).unwrap();
        assert_eq!(map[&id].legs.len(), 2);
    }
}
