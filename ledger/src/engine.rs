//! The batch algorithm in memory, free of any database: given the locked accounts, the pending
//! entries and the already stored entries a batch refers to, apply the entries in order, decide each
//! one's [`EntryResult`] and produce the rows to write. Both storage backends call this.

use std::collections::{BTreeMap, HashMap};

use paymux_model::{AccountId, Currency, EntryId};
use uuid::Uuid;

use crate::types::*;

/// State of a pending entry (`ledger_pending.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingState {
    Open = 0,
    Posted = 1,
    Voided = 2,
    Expired = 3,
}

impl PendingState {
    pub fn from_code(code: i16) -> Result<PendingState, LedgerError> {
        Ok(match code {
            0 => PendingState::Open,
            1 => PendingState::Posted,
            2 => PendingState::Voided,
            3 => PendingState::Expired,
            other => return Err(LedgerError::Corrupt(format!("pending state {other}"))),
        })
    }
    pub fn code(self) -> i16 {
        self as i16
    }
}

/// An account row as locked for the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountState {
    pub id: AccountId,
    pub code: String,
    pub kind: AccountKind,
    pub currency: Currency,
    pub flags: AccountFlags,
    pub debits_posted: i64,
    pub credits_posted: i64,
    pub debits_pending: i64,
    pub credits_pending: i64,
    /// Writes of the row so far (PostgreSQL; 0 on SQLite). Not part of the books.
    pub version: i64,
}

impl AccountState {
    pub fn open(spec: &AccountSpec) -> AccountState {
        AccountState {
            id: spec.id(),
            code: spec.code.clone(),
            kind: spec.kind,
            currency: spec.currency,
            flags: spec.flags,
            debits_posted: 0,
            credits_posted: 0,
            debits_pending: 0,
            credits_pending: 0,
            version: 0,
        }
    }

    /// The first constraint this account's balances break, if any.
    fn violation(&self) -> Option<EntryResult> {
        let (dp, cp) = (
            i128::from(self.debits_posted),
            i128::from(self.credits_posted),
        );
        let (dpe, cpe) = (
            i128::from(self.debits_pending),
            i128::from(self.credits_pending),
        );
        if self.flags.debits_must_not_exceed_credits && dp + dpe > cp {
            return Some(EntryResult::ExceedsCredits);
        }
        if self.flags.credits_must_not_exceed_debits && cp + cpe > dp {
            return Some(EntryResult::ExceedsDebits);
        }
        None
    }
}

/// One leg of a stored pending entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    pub account_id: AccountId,
    pub side: Side,
    pub amount_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingInfo {
    pub timeout_at_us: i64,
    pub state: PendingState,
    pub legs: Vec<Leg>,
}

/// The comparable content of a stored entry.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredHead {
    pub phase: String,
    pub pending_id: Option<Uuid>,
    pub timeout_ms: Option<i64>,
    pub kind: String,
    pub reference: Option<Uuid>,
    pub effective_at_us: i64,
    pub metadata: serde_json::Value,
    pub postings_digest: Uuid,
}

impl StoredHead {
    /// `account_ids`: the ids of `entry`'s postings' accounts, in order.
    fn of(entry: &NewEntry, account_ids: &[AccountId]) -> StoredHead {
        StoredHead {
            phase: entry.phase.name().to_owned(),
            pending_id: entry.phase.pending_id().map(EntryId::into_uuid),
            timeout_ms: entry.phase.timeout_ms(),
            kind: entry.kind.as_str().to_owned(),
            reference: entry.reference,
            effective_at_us: entry.effective_at_us,
            metadata: entry.metadata.clone(),
            postings_digest: digest_with_ids(&entry.postings, account_ids),
        }
    }

    fn compare(&self, new: &StoredHead) -> EntryResult {
        if self.phase != new.phase
            || self.pending_id != new.pending_id
            || self.timeout_ms != new.timeout_ms
        {
            EntryResult::ExistsWithDifferentPhase
        } else if self.kind != new.kind {
            EntryResult::ExistsWithDifferentKind
        } else if self.reference != new.reference {
            EntryResult::ExistsWithDifferentReference
        } else if self.effective_at_us != new.effective_at_us {
            EntryResult::ExistsWithDifferentEffectiveAt
        } else if self.metadata != new.metadata {
            EntryResult::ExistsWithDifferentMetadata
        } else if self.postings_digest != new.postings_digest {
            EntryResult::ExistsWithDifferentPostings
        } else {
            EntryResult::Exists
        }
    }
}

/// A UUIDv5 over the postings in order (account id, side, amount, currency): equal postings, equal
/// digest.
pub fn postings_digest(postings: &[NewPosting]) -> Uuid {
    let ids: Vec<AccountId> = postings.iter().map(|p| p.account.id()).collect();
    digest_with_ids(postings, &ids)
}

/// [`postings_digest`] with the accounts' ids already derived (an id from a code or spec is a
/// SHA-1; the batch path derives each posting's once).
fn digest_with_ids(postings: &[NewPosting], account_ids: &[AccountId]) -> Uuid {
    debug_assert_eq!(postings.len(), account_ids.len());
    let mut bytes = Vec::with_capacity(postings.len() * 28);
    for (p, id) in postings.iter().zip(account_ids) {
        bytes.extend_from_slice(id.as_uuid().as_bytes());
        bytes.push(match p.side {
            Side::Debit => b'D',
            Side::Credit => b'C',
        });
        bytes.extend_from_slice(&p.amount.amount_minor().to_be_bytes());
        bytes.extend_from_slice(p.amount.currency().code().as_bytes());
    }
    Uuid::new_v5(&crate::types::LEDGER_NAMESPACE, &bytes)
}

/// Row of `ledger_entries`.
#[derive(Debug, Clone)]
pub struct EntryRow {
    pub id: Uuid,
    pub head: StoredHead,
    pub created_at_us: i64,
}

/// Row of `ledger_postings` (`seq` is assigned by the database, in insertion order).
#[derive(Debug, Clone)]
pub struct PostingRow {
    pub entry_id: Uuid,
    pub leg: i16,
    pub account_id: Uuid,
    pub is_credit: bool,
    pub amount_minor: i64,
    pub is_pending: bool,
    pub effective_at_us: i64,
    pub debits_posted_after: i64,
    pub credits_posted_after: i64,
}

#[derive(Debug, Clone)]
pub struct PendingUpdate {
    pub entry_id: Uuid,
    pub state: PendingState,
    pub resolved_by: Option<Uuid>,
    pub resolved_at_us: i64,
}

/// What a batch writes. Rows are in application order, which is also `seq` order.
#[derive(Debug, Default)]
pub struct Plan {
    pub results: Vec<EntryResult>,
    pub entries: Vec<EntryRow>,
    pub postings: Vec<PostingRow>,
    pub pending_inserts: Vec<(Uuid, i64)>,
    pub pending_updates: Vec<PendingUpdate>,
    /// Accounts whose balances changed, final state, sorted by id.
    pub accounts: Vec<AccountState>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.pending_updates.is_empty()
    }
}

/// What the storage layer must fetch before planning, derived from the entries alone.
#[derive(Debug, Default)]
pub struct Needs {
    /// Accounts named by spec, first spec per code wins, sorted by id.
    pub specs: Vec<AccountSpec>,
    /// Every account named by a posting (pending legs come later), unsorted, unique.
    pub account_ids: Vec<AccountId>,
    /// Ids of the entries themselves, for the idempotency check.
    pub entry_ids: Vec<Uuid>,
    /// Pending entries referred to by post/void.
    pub pending_ids: Vec<Uuid>,
}

pub fn needs(entries: &[NewEntry]) -> Needs {
    let mut specs: BTreeMap<Uuid, AccountSpec> = BTreeMap::new();
    let mut account_ids = std::collections::HashSet::new();
    let mut entry_ids = std::collections::HashSet::new();
    let mut pending_ids = std::collections::HashSet::new();
    for e in entries {
        entry_ids.insert(e.id.into_uuid());
        if let Some(p) = e.phase.pending_id() {
            pending_ids.insert(p.into_uuid());
        }
        for p in &e.postings {
            let id = p.account.id();
            account_ids.insert(id);
            if let AccountRef::Spec(spec) = &p.account {
                specs.entry(id.into_uuid()).or_insert_with(|| spec.clone());
            }
        }
    }
    Needs {
        specs: specs.into_values().collect(),
        account_ids: account_ids.into_iter().collect(),
        entry_ids: entry_ids.into_iter().collect(),
        pending_ids: pending_ids.into_iter().collect(),
    }
}

struct Applier {
    accounts: HashMap<AccountId, AccountState>,
    changed: std::collections::BTreeSet<AccountId>,
    pendings: HashMap<Uuid, PendingInfo>,
    existing: HashMap<Uuid, StoredHead>,
    /// Entries created by this batch: index into `plan.entries`.
    created: HashMap<Uuid, usize>,
    now_us: i64,
    plan: Plan,
}

/// Applies `entries` in order. `accounts` must hold every account the entries and the pending legs
/// name that exists; `pendings` every referenced pending entry that exists; `existing` the heads of
/// every already stored entry among `entries`' ids.
pub fn plan(
    entries: &[NewEntry],
    accounts: HashMap<AccountId, AccountState>,
    pendings: HashMap<Uuid, PendingInfo>,
    existing: HashMap<Uuid, StoredHead>,
    opts: PostOptions,
    now_us: i64,
) -> Plan {
    let mut a = Applier {
        accounts,
        changed: Default::default(),
        pendings,
        existing,
        created: HashMap::with_capacity(entries.len()),
        now_us,
        plan: Plan::default(),
    };
    a.plan.results.reserve(entries.len());
    a.plan.entries.reserve(entries.len());
    a.plan.postings.reserve(entries.len() * 2);
    for e in entries {
        let r = a.apply(e);
        a.plan.results.push(r);
    }
    if opts.all_or_nothing && a.plan.results.iter().any(|r| !r.is_ok()) {
        let results = a
            .plan
            .results
            .iter()
            .map(|r| match r {
                EntryResult::Created => EntryResult::LinkedEntryFailed,
                other => *other,
            })
            .collect();
        return Plan {
            results,
            ..Plan::default()
        };
    }
    let Applier {
        accounts,
        changed,
        mut plan,
        ..
    } = a;
    plan.accounts = changed
        .iter()
        .filter_map(|id| accounts.get(id).cloned())
        .collect();
    plan
}

/// Releases open pending entries whose timeout has passed. `pendings` are the candidates (state
/// re-read under the account locks), `accounts` their legs' accounts.
pub fn plan_expiry(
    accounts: HashMap<AccountId, AccountState>,
    pendings: HashMap<Uuid, PendingInfo>,
    now_us: i64,
) -> Result<Plan, LedgerError> {
    let mut a = Applier {
        accounts,
        changed: Default::default(),
        pendings,
        existing: HashMap::new(),
        created: HashMap::new(),
        now_us,
        plan: Plan::default(),
    };
    let mut ids: Vec<Uuid> = a.pendings.keys().copied().collect();
    ids.sort();
    for id in ids {
        let due = a
            .pendings
            .get(&id)
            .is_some_and(|p| p.state == PendingState::Open && p.timeout_at_us <= now_us);
        if due {
            a.expire(id)?;
        }
    }
    let Applier {
        accounts,
        changed,
        mut plan,
        ..
    } = a;
    plan.accounts = changed
        .iter()
        .filter_map(|id| accounts.get(id).cloned())
        .collect();
    Ok(plan)
}

/// Whether a string or key anywhere in `value` contains U+0000.
fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn side_amounts(postings: &[NewPosting]) -> Option<EntryResult> {
    if postings.iter().any(|p| p.amount.amount_minor() <= 0) {
        return Some(EntryResult::AmountMustBePositive);
    }
    let mut sums: BTreeMap<Currency, i128> = BTreeMap::new();
    for p in postings {
        let s = sums.entry(p.amount.currency()).or_default();
        match p.side {
            Side::Debit => *s += i128::from(p.amount.amount_minor()),
            Side::Credit => *s -= i128::from(p.amount.amount_minor()),
        }
    }
    if sums.values().any(|s| *s != 0) {
        return Some(EntryResult::Unbalanced);
    }
    None
}

/// A balance change on one account.
#[derive(Clone, Copy)]
struct Delta {
    account_id: AccountId,
    side: Side,
    amount_minor: i64,
    pending: bool,
    /// +1 adds, -1 releases.
    sign: i8,
}

impl Applier {
    fn apply(&mut self, e: &NewEntry) -> EntryResult {
        let id = e.id.into_uuid();
        let ids: Vec<AccountId> = e.postings.iter().map(|p| p.account.id()).collect();
        let head = StoredHead::of(e, &ids);
        if let Some(stored) = self.existing.get(&id) {
            return stored.compare(&head);
        }
        if let Some(&i) = self.created.get(&id) {
            return self.plan.entries[i].head.compare(&head);
        }
        // Shape.
        match e.phase {
            Phase::Posted | Phase::Pending { .. } => {
                if e.postings.len() < 2 {
                    return EntryResult::TooFewPostings;
                }
            }
            Phase::VoidPending { .. } => {
                if !e.postings.is_empty() {
                    return EntryResult::VoidMustHaveNoPostings;
                }
            }
            Phase::PostPending { .. } => {}
        }
        if let Phase::Pending { timeout_ms } = e.phase
            && timeout_ms <= 0
        {
            return EntryResult::TimeoutMustBePositive;
        }
        if let Some(r) = side_amounts(&e.postings) {
            return r;
        }
        if holds_nul(&e.metadata) {
            return EntryResult::MetadataInvalid;
        }
        // Accounts.
        for (p, account_id) in e.postings.iter().zip(&ids) {
            let Some(acct) = self.accounts.get(account_id) else {
                return EntryResult::AccountNotFound;
            };
            if acct.currency != p.amount.currency() {
                return EntryResult::CurrencyMismatch;
            }
            if let AccountRef::Spec(spec) = &p.account {
                if spec.currency != acct.currency {
                    return EntryResult::CurrencyMismatch;
                }
                if spec.kind != acct.kind || spec.flags != acct.flags || spec.code != acct.code {
                    return EntryResult::AccountSpecMismatch;
                }
            }
        }
        // Balance changes.
        let mut deltas: Vec<Delta> = Vec::with_capacity(e.postings.len() * 2);
        let mut pending_update: Option<PendingUpdate> = None;
        let mut posted_rows: Vec<(AccountId, Side, i64, bool)> =
            Vec::with_capacity(e.postings.len());
        match e.phase {
            Phase::Posted | Phase::Pending { .. } => {
                let pending = matches!(e.phase, Phase::Pending { .. });
                for (p, account_id) in e.postings.iter().zip(&ids) {
                    let d = Delta {
                        account_id: *account_id,
                        side: p.side,
                        amount_minor: p.amount.amount_minor(),
                        pending,
                        sign: 1,
                    };
                    deltas.push(d);
                    posted_rows.push((d.account_id, d.side, d.amount_minor, pending));
                }
            }
            Phase::PostPending { pending_id } | Phase::VoidPending { pending_id } => {
                let pid = pending_id.into_uuid();
                let legs = match self.check_pending(pid) {
                    Ok(legs) => legs,
                    Err(r) => return r,
                };
                for l in &legs {
                    deltas.push(Delta {
                        account_id: l.account_id,
                        side: l.side,
                        amount_minor: l.amount_minor,
                        pending: true,
                        sign: -1,
                    });
                }
                let voiding = matches!(e.phase, Phase::VoidPending { .. });
                let posted: Vec<(AccountId, Side, i64)> = if voiding {
                    Vec::new()
                } else if e.postings.is_empty() {
                    legs.iter()
                        .map(|l| (l.account_id, l.side, l.amount_minor))
                        .collect()
                } else {
                    let mut held: HashMap<(AccountId, Side), i64> = HashMap::new();
                    for l in &legs {
                        *held.entry((l.account_id, l.side)).or_default() += l.amount_minor;
                    }
                    let mut asked: HashMap<(AccountId, Side), i128> = HashMap::new();
                    for (p, account_id) in e.postings.iter().zip(&ids) {
                        let key = (*account_id, p.side);
                        let Some(h) = held.get(&key) else {
                            return EntryResult::PendingLegNotFound;
                        };
                        let s = asked.entry(key).or_default();
                        *s += i128::from(p.amount.amount_minor());
                        if *s > i128::from(*h) {
                            return EntryResult::AmountExceedsPending;
                        }
                    }
                    e.postings
                        .iter()
                        .zip(&ids)
                        .map(|(p, account_id)| (*account_id, p.side, p.amount.amount_minor()))
                        .collect()
                };
                for (account_id, side, amount_minor) in posted {
                    deltas.push(Delta {
                        account_id,
                        side,
                        amount_minor,
                        pending: false,
                        sign: 1,
                    });
                    posted_rows.push((account_id, side, amount_minor, false));
                }
                pending_update = Some(PendingUpdate {
                    entry_id: pid,
                    state: if voiding {
                        PendingState::Voided
                    } else {
                        PendingState::Posted
                    },
                    resolved_by: Some(id),
                    resolved_at_us: self.now_us,
                });
            }
        }
        // Apply to scratch copies, check constraints, then commit.
        let mut scratch: Vec<AccountState> = Vec::with_capacity(deltas.len());
        for d in &deltas {
            let idx = match scratch.iter().position(|a| a.id == d.account_id) {
                Some(i) => i,
                None => match self.accounts.get(&d.account_id) {
                    Some(a) => {
                        scratch.push(a.clone());
                        scratch.len() - 1
                    }
                    None => return EntryResult::AccountNotFound,
                },
            };
            if apply_delta(&mut scratch[idx], d).is_none() {
                return EntryResult::Overflow;
            }
        }
        for d in &deltas {
            if let Some(a) = scratch.iter().find(|a| a.id == d.account_id)
                && let Some(v) = a.violation()
            {
                return v;
            }
        }
        // Committed from here on. Posting rows carry the running posted totals; since the
        // whole entry is applied at once, walk the rows again from the pre-entry state.
        let mut running: Vec<AccountState> = Vec::with_capacity(posted_rows.len());
        for (leg, (account_id, side, amount_minor, pending)) in posted_rows.iter().enumerate() {
            let idx = match running.iter().position(|a| a.id == *account_id) {
                Some(i) => i,
                None => {
                    let Some(a) = self.accounts.get(account_id) else {
                        return EntryResult::AccountNotFound;
                    };
                    running.push(a.clone());
                    running.len() - 1
                }
            };
            let r = &mut running[idx];
            if !pending {
                // Cannot overflow: the scratch copy already took the same and larger sums.
                match side {
                    Side::Debit => r.debits_posted = r.debits_posted.saturating_add(*amount_minor),
                    Side::Credit => {
                        r.credits_posted = r.credits_posted.saturating_add(*amount_minor)
                    }
                }
            }
            self.plan.postings.push(PostingRow {
                entry_id: id,
                leg: i16::try_from(leg).unwrap_or(i16::MAX),
                account_id: account_id.into_uuid(),
                is_credit: *side == Side::Credit,
                amount_minor: *amount_minor,
                is_pending: *pending,
                effective_at_us: e.effective_at_us,
                debits_posted_after: r.debits_posted,
                credits_posted_after: r.credits_posted,
            });
        }
        for a in scratch {
            self.changed.insert(a.id);
            self.accounts.insert(a.id, a);
        }
        if let Phase::Pending { timeout_ms } = e.phase {
            let timeout_at_us = self.now_us.saturating_add(timeout_ms.saturating_mul(1000));
            self.pendings.insert(
                id,
                PendingInfo {
                    timeout_at_us,
                    state: PendingState::Open,
                    legs: e
                        .postings
                        .iter()
                        .zip(&ids)
                        .map(|(p, account_id)| Leg {
                            account_id: *account_id,
                            side: p.side,
                            amount_minor: p.amount.amount_minor(),
                        })
                        .collect(),
                },
            );
            self.plan.pending_inserts.push((id, timeout_at_us));
        }
        if let Some(u) = pending_update {
            if let Some(p) = self.pendings.get_mut(&u.entry_id) {
                p.state = u.state;
            }
            self.plan.pending_updates.push(u);
        }
        self.created.insert(id, self.plan.entries.len());
        self.plan.entries.push(EntryRow {
            id,
            head,
            created_at_us: self.now_us,
        });
        EntryResult::Created
    }

    /// The legs of an open, not timed-out pending entry, or why it cannot be resolved. A timed-out
    /// one is expired on the spot.
    fn check_pending(&mut self, pid: Uuid) -> Result<Vec<Leg>, EntryResult> {
        let Some(p) = self.pendings.get(&pid) else {
            return Err(EntryResult::PendingNotFound);
        };
        match p.state {
            PendingState::Posted => return Err(EntryResult::PendingAlreadyPosted),
            PendingState::Voided => return Err(EntryResult::PendingAlreadyVoided),
            PendingState::Expired => return Err(EntryResult::PendingExpired),
            PendingState::Open => {}
        }
        if p.timeout_at_us <= self.now_us {
            // Releasing a hold only lowers pending balances; it cannot fail on valid data.
            let _ = self.expire(pid);
            return Err(EntryResult::PendingExpired);
        }
        Ok(p.legs.clone())
    }

    fn expire(&mut self, pid: Uuid) -> Result<(), LedgerError> {
        let Some(p) = self.pendings.get(&pid) else {
            return Ok(());
        };
        let legs = p.legs.clone();
        let mut scratch: Vec<AccountState> = Vec::new();
        for l in &legs {
            let idx = match scratch.iter().position(|a| a.id == l.account_id) {
                Some(i) => i,
                None => {
                    let a = self.accounts.get(&l.account_id).ok_or_else(|| {
                        LedgerError::Corrupt(format!("pending {pid} leg account missing"))
                    })?;
                    scratch.push(a.clone());
                    scratch.len() - 1
                }
            };
            let d = Delta {
                account_id: l.account_id,
                side: l.side,
                amount_minor: l.amount_minor,
                pending: true,
                sign: -1,
            };
            apply_delta(&mut scratch[idx], &d).ok_or_else(|| {
                LedgerError::Corrupt(format!("pending balance underflow expiring {pid}"))
            })?;
        }
        for a in scratch {
            self.changed.insert(a.id);
            self.accounts.insert(a.id, a);
        }
        if let Some(p) = self.pendings.get_mut(&pid) {
            p.state = PendingState::Expired;
        }
        self.plan.pending_updates.push(PendingUpdate {
            entry_id: pid,
            state: PendingState::Expired,
            resolved_by: None,
            resolved_at_us: self.now_us,
        });
        Ok(())
    }
}

/// Applies one change with checked arithmetic; `None` on overflow or a negative pending balance.
fn apply_delta(a: &mut AccountState, d: &Delta) -> Option<()> {
    let field = match (d.side, d.pending) {
        (Side::Debit, false) => &mut a.debits_posted,
        (Side::Credit, false) => &mut a.credits_posted,
        (Side::Debit, true) => &mut a.debits_pending,
        (Side::Credit, true) => &mut a.credits_pending,
    };
    let v = if d.sign > 0 {
        field.checked_add(d.amount_minor)?
    } else {
        field.checked_sub(d.amount_minor)?
    };
    if v < 0 {
        return None;
    }
    *field = v;
    Some(())
}
