//! Property test: random sequences of batches (duplicates, conflicting ids, pending/post/void/expire,
//! constraint violations) posted to a real SQLite ledger and to a small in-memory reference model;
//! after every step the results, every balance and the audit must agree.

use std::collections::HashMap;

use paymux_ledger::audit::{AuditOptions, audit};
use paymux_ledger::*;
use paymux_model::{Currency, EntryId, Money};
use proptest::prelude::*;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use uuid::Uuid;

// ---- the universe the generator draws from ----

fn spec(i: usize) -> AccountSpec {
    let (kind, currency, flags) = match i {
        0 => (AccountKind::Asset, Currency::Cny, AccountFlags::NONE),
        1 => (
            AccountKind::Liability,
            Currency::Cny,
            AccountFlags {
                debits_must_not_exceed_credits: true,
                credits_must_not_exceed_debits: false,
            },
        ),
        2 => (
            AccountKind::Asset,
            Currency::Cny,
            AccountFlags {
                debits_must_not_exceed_credits: false,
                credits_must_not_exceed_debits: true,
            },
        ),
        3 => (AccountKind::Revenue, Currency::Cny, AccountFlags::NONE),
        _ => (AccountKind::Equity, Currency::Usd, AccountFlags::NONE),
    };
    AccountSpec {
        code: format!("acct:{i}"),
        kind,
        currency,
        flags,
    }
}
const ACCOUNTS: usize = 5;

fn entry_id(i: u8) -> EntryId {
    EntryId::from_uuid(Uuid::from_u128(0x1000 + u128::from(i)))
}

#[derive(Debug, Clone)]
enum RefChoice {
    Spec(usize),
    Code(usize),
    Missing,
}

#[derive(Debug, Clone)]
enum PhaseChoice {
    Posted,
    Pending(i64),
    Post(u8, Option<i64>),
    Void(u8),
}

#[derive(Debug, Clone)]
struct EntryChoice {
    id: u8,
    kind_refund: bool,
    phase: PhaseChoice,
    from: RefChoice,
    to: RefChoice,
    amount: i64,
    /// 0 balanced, 1 unbalanced, 2 USD money, 3 zero amount, 4 one posting only
    defect: u8,
}

#[derive(Debug, Clone)]
enum Op {
    Post(Vec<EntryChoice>, bool),
    Advance(i64),
    Expire,
}

fn ref_choice() -> impl Strategy<Value = RefChoice> {
    prop_oneof![
        6 => (0..ACCOUNTS).prop_map(RefChoice::Spec),
        2 => (0..ACCOUNTS).prop_map(RefChoice::Code),
        1 => Just(RefChoice::Missing),
    ]
}

fn entry_choice() -> impl Strategy<Value = EntryChoice> {
    (
        0u8..8,
        any::<bool>(),
        prop_oneof![
            4 => Just(PhaseChoice::Posted),
            2 => (1i64..40).prop_map(PhaseChoice::Pending),
            2 => (0u8..8, proptest::option::of(1i64..120)).prop_map(|(i, a)| PhaseChoice::Post(i, a)),
            1 => (0u8..8).prop_map(PhaseChoice::Void),
        ],
        ref_choice(),
        ref_choice(),
        1i64..100,
        prop_oneof![12 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8), 1 => Just(4u8)],
    )
        .prop_map(|(id, kind_refund, phase, from, to, amount, defect)| EntryChoice {
            id,
            kind_refund,
            phase,
            from,
            to,
            amount,
            defect,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (proptest::collection::vec(entry_choice(), 1..5), proptest::bool::weighted(0.2))
            .prop_map(|(e, a)| Op::Post(e, a)),
        2 => (1i64..30).prop_map(Op::Advance),
        1 => Just(Op::Expire),
    ]
}

fn account_ref(r: &RefChoice) -> AccountRef {
    match r {
        RefChoice::Spec(i) => AccountRef::Spec(spec(*i)),
        RefChoice::Code(i) => AccountRef::Code(spec(*i).code),
        RefChoice::Missing => AccountRef::Code("acct:missing".into()),
    }
}

fn currency_of(r: &RefChoice) -> Currency {
    match r {
        RefChoice::Spec(i) | RefChoice::Code(i) => spec(*i).currency,
        RefChoice::Missing => Currency::Cny,
    }
}

fn build(c: &EntryChoice) -> NewEntry {
    let cur = currency_of(&c.from);
    let money = |a: i64| {
        if c.defect == 2 {
            Money::new(a, Currency::Hkd)
        } else {
            Money::new(a, cur)
        }
    };
    let amount = if c.defect == 3 { 0 } else { c.amount };
    let mut postings = vec![NewPosting::debit(account_ref(&c.from), money(amount))];
    if c.defect != 4 {
        let credit = if c.defect == 1 { amount + 1 } else { amount };
        postings.push(NewPosting::credit(account_ref(&c.to), money(credit)));
    }
    let (phase, postings) = match c.phase {
        PhaseChoice::Posted => (Phase::Posted, postings),
        PhaseChoice::Pending(t) => (Phase::Pending { timeout_ms: t }, postings),
        PhaseChoice::Post(p, None) => (
            Phase::PostPending {
                pending_id: entry_id(p),
            },
            Vec::new(),
        ),
        PhaseChoice::Post(p, Some(_)) => (
            Phase::PostPending {
                pending_id: entry_id(p),
            },
            postings,
        ),
        PhaseChoice::Void(p) => (
            Phase::VoidPending {
                pending_id: entry_id(p),
            },
            if c.defect == 4 { postings } else { Vec::new() },
        ),
    };
    NewEntry {
        id: entry_id(c.id),
        kind: if c.kind_refund {
            EntryKind::Refund
        } else {
            EntryKind::Adjustment
        },
        reference: None,
        metadata: serde_json::json!({}),
        effective_at_us: 0,
        phase,
        postings,
    }
}

// ---- the reference model: plain per-entry bookkeeping ----

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bal {
    dp: i64,
    cp: i64,
    dpe: i64,
    cpe: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PState {
    Open,
    Posted,
    Voided,
    Expired,
}

/// A pending entry in the model: timeout (µs), state, and its legs (account code, side, amount).
type PendingModel = (i64, PState, Vec<(String, Side, i64)>);

#[derive(Debug, Clone, Default)]
struct Model {
    /// code -> (spec, balances)
    accounts: HashMap<String, (AccountSpec, Bal)>,
    entries: HashMap<EntryId, NewEntry>,
    pending: HashMap<EntryId, PendingModel>,
}

fn code_of(r: &AccountRef) -> String {
    match r {
        AccountRef::Spec(s) => s.code.clone(),
        AccountRef::Code(c) => c.clone(),
        AccountRef::Id(_) => unreachable!("the generator never names accounts by id"),
    }
}

fn legs_of(p: &[NewPosting]) -> Vec<(String, Side, Money)> {
    p.iter()
        .map(|p| (code_of(&p.account), p.side, p.amount))
        .collect()
}

impl Model {
    fn post(
        &mut self,
        entries: &[NewEntry],
        all_or_nothing: bool,
        now_us: i64,
    ) -> Vec<EntryResult> {
        // Every spec of the batch is opened first; the first spec of a code wins.
        for e in entries {
            for p in &e.postings {
                if let AccountRef::Spec(s) = &p.account {
                    self.accounts
                        .entry(s.code.clone())
                        .or_insert_with(|| (s.clone(), Bal::default()));
                }
            }
        }
        let saved = self.clone();
        let results: Vec<EntryResult> = entries.iter().map(|e| self.one(e, now_us)).collect();
        if all_or_nothing && results.iter().any(|r| !r.is_ok()) {
            let opened = self.accounts.clone();
            *self = saved;
            // Opened accounts stay (with their balances from before the batch).
            for (code, (s, _)) in opened {
                self.accounts.entry(code).or_insert((s, Bal::default()));
            }
            return results
                .into_iter()
                .map(|r| {
                    if r == EntryResult::Created {
                        EntryResult::LinkedEntryFailed
                    } else {
                        r
                    }
                })
                .collect();
        }
        results
    }

    fn release(&mut self, pid: EntryId) {
        let legs = self.pending[&pid].2.clone();
        for (code, side, amt) in legs {
            let b = &mut self.accounts.get_mut(&code).unwrap().1;
            match side {
                Side::Debit => b.dpe -= amt,
                Side::Credit => b.cpe -= amt,
            }
        }
    }

    fn one(&mut self, e: &NewEntry, now_us: i64) -> EntryResult {
        if let Some(old) = self.entries.get(&e.id) {
            return if old.phase != e.phase {
                EntryResult::ExistsWithDifferentPhase
            } else if old.kind != e.kind {
                EntryResult::ExistsWithDifferentKind
            } else if legs_of(&old.postings) != legs_of(&e.postings) {
                EntryResult::ExistsWithDifferentPostings
            } else {
                EntryResult::Exists
            };
        }
        let needs_two = matches!(e.phase, Phase::Posted | Phase::Pending { .. });
        if needs_two && e.postings.len() < 2 {
            return EntryResult::TooFewPostings;
        }
        if matches!(e.phase, Phase::VoidPending { .. }) && !e.postings.is_empty() {
            return EntryResult::VoidMustHaveNoPostings;
        }
        if e.postings.iter().any(|p| p.amount.amount_minor() <= 0) {
            return EntryResult::AmountMustBePositive;
        }
        let mut net: HashMap<Currency, i64> = HashMap::new();
        for p in &e.postings {
            let sign = if p.side == Side::Debit { 1 } else { -1 };
            *net.entry(p.amount.currency()).or_default() += sign * p.amount.amount_minor();
        }
        if net.values().any(|v| *v != 0) {
            return EntryResult::Unbalanced;
        }
        for p in &e.postings {
            let Some((s, _)) = self.accounts.get(&code_of(&p.account)) else {
                return EntryResult::AccountNotFound;
            };
            if s.currency != p.amount.currency() {
                return EntryResult::CurrencyMismatch;
            }
            if let AccountRef::Spec(given) = &p.account
                && given != s
            {
                return EntryResult::AccountSpecMismatch;
            }
        }
        // (code, side, amount, pending?, +1/-1)
        let mut changes: Vec<(String, Side, i64, bool, i64)> = Vec::new();
        let mut resolve: Option<(EntryId, PState)> = None;
        match e.phase {
            Phase::Posted | Phase::Pending { .. } => {
                let pending = matches!(e.phase, Phase::Pending { .. });
                for p in &e.postings {
                    changes.push((
                        code_of(&p.account),
                        p.side,
                        p.amount.amount_minor(),
                        pending,
                        1,
                    ));
                }
            }
            Phase::PostPending { pending_id } | Phase::VoidPending { pending_id } => {
                let Some((timeout_at, state, legs)) = self.pending.get(&pending_id).cloned() else {
                    return EntryResult::PendingNotFound;
                };
                match state {
                    PState::Posted => return EntryResult::PendingAlreadyPosted,
                    PState::Voided => return EntryResult::PendingAlreadyVoided,
                    PState::Expired => return EntryResult::PendingExpired,
                    PState::Open => {}
                }
                if timeout_at <= now_us {
                    self.release(pending_id);
                    self.pending.get_mut(&pending_id).unwrap().1 = PState::Expired;
                    return EntryResult::PendingExpired;
                }
                for (code, side, amt) in &legs {
                    changes.push((code.clone(), *side, *amt, true, -1));
                }
                if matches!(e.phase, Phase::PostPending { .. }) {
                    if e.postings.is_empty() {
                        for (code, side, amt) in &legs {
                            changes.push((code.clone(), *side, *amt, false, 1));
                        }
                    } else {
                        let mut left: HashMap<(String, Side), i64> = HashMap::new();
                        for (code, side, amt) in &legs {
                            *left.entry((code.clone(), *side)).or_default() += amt;
                        }
                        for p in &e.postings {
                            let key = (code_of(&p.account), p.side);
                            let Some(l) = left.get_mut(&key) else {
                                return EntryResult::PendingLegNotFound;
                            };
                            *l -= p.amount.amount_minor();
                            if *l < 0 {
                                return EntryResult::AmountExceedsPending;
                            }
                            changes.push((key.0, key.1, p.amount.amount_minor(), false, 1));
                        }
                    }
                    resolve = Some((pending_id, PState::Posted));
                } else {
                    resolve = Some((pending_id, PState::Voided));
                }
            }
        }
        let mut trial = self.accounts.clone();
        for (code, side, amt, pending, sign) in &changes {
            let b = &mut trial.get_mut(code).unwrap().1;
            let f = match (side, pending) {
                (Side::Debit, false) => &mut b.dp,
                (Side::Credit, false) => &mut b.cp,
                (Side::Debit, true) => &mut b.dpe,
                (Side::Credit, true) => &mut b.cpe,
            };
            *f += sign * amt;
        }
        for (code, ..) in &changes {
            let (s, b) = &trial[code];
            if s.flags.debits_must_not_exceed_credits && b.dp + b.dpe > b.cp {
                return EntryResult::ExceedsCredits;
            }
            if s.flags.credits_must_not_exceed_debits && b.cp + b.cpe > b.dp {
                return EntryResult::ExceedsDebits;
            }
        }
        self.accounts = trial;
        if let Phase::Pending { timeout_ms } = e.phase {
            let legs = e
                .postings
                .iter()
                .map(|p| (code_of(&p.account), p.side, p.amount.amount_minor()))
                .collect();
            self.pending
                .insert(e.id, (now_us + timeout_ms * 1000, PState::Open, legs));
        }
        if let Some((pid, st)) = resolve {
            self.pending.get_mut(&pid).unwrap().1 = st;
        }
        self.entries.insert(e.id, e.clone());
        EntryResult::Created
    }

    fn expire(&mut self, now_us: i64) {
        let due: Vec<EntryId> = self
            .pending
            .iter()
            .filter(|(_, (t, s, _))| *s == PState::Open && *t <= now_us)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.release(id);
            self.pending.get_mut(&id).unwrap().1 = PState::Expired;
        }
    }
}

async fn sqlite_pool() -> sqlx::SqlitePool {
    let opts = SqliteConnectOptions::new().in_memory(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .expect("open in-memory sqlite");
    migrate_sqlite(&pool).await.expect("migrate");
    pool
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let pool = sqlite_pool().await;
    let lp = LedgerPool::Sqlite(pool.clone());
    let mut model = Model::default();
    let mut now: i64 = 1_000_000;
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Post(choices, aon) => {
                let entries: Vec<NewEntry> = choices.iter().map(build).collect();
                let opts = PostOptions {
                    all_or_nothing: *aon,
                    now_us: Some(now),
                };
                let mut tx = pool.begin().await.expect("begin");
                let got = post_sqlite(&mut tx, &entries, opts).await.expect("post");
                tx.commit().await.expect("commit");
                let want = model.post(&entries, *aon, now);
                prop_assert_eq!(&got, &want, "step {} results, entries {:?}", step, choices);
            }
            Op::Advance(ms) => now += ms * 1000,
            Op::Expire => {
                let mut tx = pool.begin().await.expect("begin");
                expire_due_sqlite(&mut tx, now, 1000).await.expect("expire");
                tx.commit().await.expect("commit");
                model.expire(now);
            }
        }
        for i in 0..ACCOUNTS {
            let s = spec(i);
            let got = queries::balance(&lp, account_id_for_code(&s.code)).await;
            match model.accounts.get(&s.code) {
                None => prop_assert!(matches!(got, Err(LedgerError::AccountNotFound(_)))),
                Some((_, b)) => {
                    let got = got.expect("balance");
                    prop_assert_eq!(
                        (
                            got.debits_posted,
                            got.credits_posted,
                            got.debits_pending,
                            got.credits_pending
                        ),
                        (b.dp, b.cp, b.dpe, b.cpe),
                        "step {} account {}",
                        step,
                        s.code
                    );
                }
            }
        }
        let report = audit(
            &lp,
            AuditOptions {
                expiry_grace_ms: 1_000_000,
                now_us: Some(now),
            },
        )
        .await
        .expect("audit");
        prop_assert!(report.is_clean(), "step {step}: {report}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn ledger_matches_reference_model(ops in proptest::collection::vec(op(), 1..25)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(run(ops))?;
    }
}
