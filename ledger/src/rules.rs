//! Posting rules: the journal entry of each kind of money movement, as plain functions.
//!
//! # Fees
//! A fee is `amount × rate_bps / 10 000`, rounded half-up to the minor unit (fen): 0.5 fen and more
//! rounds up, less rounds down. Computed in `i128`, so no amount overflows. Example: 1.00 yuan at
//! 60 bps = 0.6 fen → 1 fen; 0.83 yuan at 60 bps = 0.498 fen → 0 fen.
//!
//! # Refunds return fees proportionally, cumulatively
//! A refund returns the share of the merchant fee (and of the channel cost) that the refunded amount
//! bears, computed on the running total so that rounding never drifts: after refunds totalling `R` of a
//! payment `A` whose fee was `F`, the fee returned so far is `round_half_up(F × R / A)`, and each refund
//! returns the difference from the previous refunds' total. A payment refunded in full, in any number
//! of parts, therefore returns exactly `F`, and no refund returns more than was charged.
//!
//! # Entry ids
//! Every rule derives its entry id from what it books (UUIDv5 of the kind and the business id), so
//! posting the same movement twice is answered `exists`, never booked twice.

use paymux_model::{
    ChannelAccountId, EntryId, MerchantId, Money, PaymentId, RefundId, SettlementId, WalletUserId,
};
use uuid::Uuid;

use crate::chart;
use crate::types::{AccountSpec, EntryKind, LEDGER_NAMESPACE, NewEntry, NewPosting};

/// Basis points in one whole: 10 000 bps = 100%.
pub const BPS_PER_UNIT: i128 = 10_000;

/// `amount_minor × rate_bps / 10 000`, rounded half-up. Negative amounts round symmetrically.
pub fn fee_minor(amount_minor: i64, rate_bps: u32) -> i64 {
    proportion_half_up(i128::from(amount_minor), i128::from(rate_bps), BPS_PER_UNIT)
}

/// `value × numerator / denominator`, rounded half-up (away from zero at .5), in i128.
fn proportion_half_up(value: i128, numerator: i128, denominator: i128) -> i64 {
    debug_assert!(denominator > 0);
    let product = value * numerator;
    let magnitude = (product.abs() * 2 + denominator) / (denominator * 2);
    let signed = if product < 0 { -magnitude } else { magnitude };
    i64::try_from(signed).unwrap_or(if signed < 0 { i64::MIN } else { i64::MAX })
}

/// The deterministic entry id for a kind of movement of a business object.
pub fn entry_id(kind: EntryKind, business_id: Uuid) -> EntryId {
    let mut name = Vec::with_capacity(48);
    name.extend_from_slice(kind.as_str().as_bytes());
    name.push(b':');
    name.extend_from_slice(business_id.as_bytes());
    EntryId::from_uuid(Uuid::new_v5(&LEDGER_NAMESPACE, &name))
}

fn push_debit(postings: &mut Vec<NewPosting>, account: AccountSpec, amount: Money) {
    if amount.amount_minor() != 0 {
        postings.push(NewPosting::debit(account, amount));
    }
}

fn push_credit(postings: &mut Vec<NewPosting>, account: AccountSpec, amount: Money) {
    if amount.amount_minor() != 0 {
        postings.push(NewPosting::credit(account, amount));
    }
}

/// The split of a payment between channel, merchant and platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentSplit {
    /// What the channel owes us: amount − channel cost.
    pub channel_receivable: i64,
    pub channel_cost: i64,
    /// What we owe the merchant: amount − merchant fee.
    pub merchant_payable: i64,
    pub merchant_fee: i64,
}

pub fn payment_split(
    amount_minor: i64,
    merchant_fee_rate_bps: u32,
    channel_cost_rate_bps: u32,
) -> PaymentSplit {
    let merchant_fee = fee_minor(amount_minor, merchant_fee_rate_bps);
    let channel_cost = fee_minor(amount_minor, channel_cost_rate_bps);
    PaymentSplit {
        channel_receivable: amount_minor - channel_cost,
        channel_cost,
        merchant_payable: amount_minor - merchant_fee,
        merchant_fee,
    }
}

/// A payment through a channel succeeded:
/// Dr channel receivable (amount − cost) · Dr channel fees (cost) · Cr merchant payable (amount − fee)
/// · Cr platform fee income (fee).
pub fn payment_succeeded(
    payment_id: PaymentId,
    merchant: MerchantId,
    channel_account: ChannelAccountId,
    amount: Money,
    merchant_fee_rate_bps: u32,
    channel_cost_rate_bps: u32,
    effective_at_us: i64,
) -> NewEntry {
    let c = amount.currency();
    let s = payment_split(
        amount.amount_minor(),
        merchant_fee_rate_bps,
        channel_cost_rate_bps,
    );
    let mut postings = Vec::with_capacity(4);
    push_debit(
        &mut postings,
        chart::channel_receivable(channel_account, c),
        Money::new(s.channel_receivable, c),
    );
    push_debit(
        &mut postings,
        chart::channel_fees(channel_account, c),
        Money::new(s.channel_cost, c),
    );
    push_credit(
        &mut postings,
        chart::merchant_payable(merchant, c),
        Money::new(s.merchant_payable, c),
    );
    push_credit(
        &mut postings,
        chart::platform_fee_income(c),
        Money::new(s.merchant_fee, c),
    );
    NewEntry::posted(
        entry_id(EntryKind::Payment, payment_id.into_uuid()),
        EntryKind::Payment,
        Some(payment_id.into_uuid()),
        effective_at_us,
        postings,
    )
    .with_metadata(serde_json::json!({
        "merchant_fee_rate_bps": merchant_fee_rate_bps,
        "channel_cost_rate_bps": channel_cost_rate_bps,
    }))
}

/// The fee a refund returns, under the cumulative proportional rule of the module docs.
pub fn refund_fee_return(
    fee_minor: i64,
    payment_amount_minor: i64,
    refunded_before_minor: i64,
    refund_minor: i64,
) -> i64 {
    if payment_amount_minor <= 0 {
        return 0;
    }
    let a = i128::from(payment_amount_minor);
    let f = i128::from(fee_minor);
    let after = proportion_half_up(
        f,
        i128::from(refunded_before_minor) + i128::from(refund_minor),
        a,
    );
    let before = proportion_half_up(f, i128::from(refunded_before_minor), a);
    after - before
}

/// The facts a refund entry needs about its payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundContext {
    pub payment_id: PaymentId,
    pub merchant: MerchantId,
    pub channel_account: ChannelAccountId,
    pub payment_amount: Money,
    /// Sum of the payment's refunds that succeeded before this one.
    pub refunded_before_minor: i64,
    pub merchant_fee_rate_bps: u32,
    pub channel_cost_rate_bps: u32,
}

/// A refund succeeded: the reverse of the payment's split, for the refunded share.
/// Dr merchant payable (refund − fee returned) · Dr fee income (fee returned) · Cr channel receivable
/// (refund − cost returned) · Cr channel fees (cost returned).
pub fn refund_succeeded(
    refund_id: RefundId,
    ctx: &RefundContext,
    refund: Money,
    effective_at_us: i64,
) -> NewEntry {
    let c = refund.currency();
    let paid = ctx.payment_amount.amount_minor();
    let split = payment_split(paid, ctx.merchant_fee_rate_bps, ctx.channel_cost_rate_bps);
    let r = refund.amount_minor();
    let fee_back = refund_fee_return(split.merchant_fee, paid, ctx.refunded_before_minor, r);
    let cost_back = refund_fee_return(split.channel_cost, paid, ctx.refunded_before_minor, r);
    let mut postings = Vec::with_capacity(4);
    push_debit(
        &mut postings,
        chart::merchant_payable(ctx.merchant, c),
        Money::new(r - fee_back, c),
    );
    push_debit(
        &mut postings,
        chart::platform_fee_income(c),
        Money::new(fee_back, c),
    );
    push_credit(
        &mut postings,
        chart::channel_receivable(ctx.channel_account, c),
        Money::new(r - cost_back, c),
    );
    push_credit(
        &mut postings,
        chart::channel_fees(ctx.channel_account, c),
        Money::new(cost_back, c),
    );
    NewEntry::posted(
        entry_id(EntryKind::Refund, refund_id.into_uuid()),
        EntryKind::Refund,
        Some(refund_id.into_uuid()),
        effective_at_us,
        postings,
    )
    .with_metadata(serde_json::json!({
        "payment_id": ctx.payment_id.to_string(),
        "merchant_fee_returned_minor": fee_back,
        "channel_cost_returned_minor": cost_back,
    }))
}

/// A channel paid out its net for a day: Dr bank cash · Cr channel receivable.
pub fn channel_settlement(
    settlement_id: SettlementId,
    channel_account: ChannelAccountId,
    bank: &str,
    net: Money,
    effective_at_us: i64,
) -> NewEntry {
    let c = net.currency();
    NewEntry::posted(
        entry_id(EntryKind::ChannelSettlement, settlement_id.into_uuid()),
        EntryKind::ChannelSettlement,
        Some(settlement_id.into_uuid()),
        effective_at_us,
        vec![
            NewPosting::debit(chart::bank_cash(bank, c), net),
            NewPosting::credit(chart::channel_receivable(channel_account, c), net),
        ],
    )
}

/// A merchant was paid out: Dr merchant payable · Cr bank cash.
pub fn merchant_settlement(
    settlement_id: SettlementId,
    merchant: MerchantId,
    bank: &str,
    amount: Money,
    effective_at_us: i64,
) -> NewEntry {
    let c = amount.currency();
    NewEntry::posted(
        entry_id(EntryKind::MerchantSettlement, settlement_id.into_uuid()),
        EntryKind::MerchantSettlement,
        Some(settlement_id.into_uuid()),
        effective_at_us,
        vec![
            NewPosting::debit(chart::merchant_payable(merchant, c), amount),
            NewPosting::credit(chart::bank_cash(bank, c), amount),
        ],
    )
}

/// Money loaded into a wallet from a bank: Dr bank cash · Cr wallet balance.
pub fn wallet_top_up(
    top_up_id: Uuid,
    user: WalletUserId,
    bank: &str,
    amount: Money,
    effective_at_us: i64,
) -> NewEntry {
    let c = amount.currency();
    NewEntry::posted(
        entry_id(EntryKind::WalletTopUp, top_up_id),
        EntryKind::WalletTopUp,
        Some(top_up_id),
        effective_at_us,
        vec![
            NewPosting::debit(chart::bank_cash(bank, c), amount),
            NewPosting::credit(chart::wallet_balance(user, c), amount),
        ],
    )
}

/// A payment from a wallet balance: Dr wallet balance · Cr merchant payable (amount − fee) · Cr fee
/// income (fee). The wallet account must not go negative (`exceeds_credits` otherwise).
pub fn wallet_payment(
    payment_id: PaymentId,
    user: WalletUserId,
    merchant: MerchantId,
    amount: Money,
    merchant_fee_rate_bps: u32,
    effective_at_us: i64,
) -> NewEntry {
    let c = amount.currency();
    let fee = fee_minor(amount.amount_minor(), merchant_fee_rate_bps);
    let mut postings = vec![NewPosting::debit(chart::wallet_balance(user, c), amount)];
    push_credit(
        &mut postings,
        chart::merchant_payable(merchant, c),
        Money::new(amount.amount_minor() - fee, c),
    );
    push_credit(
        &mut postings,
        chart::platform_fee_income(c),
        Money::new(fee, c),
    );
    NewEntry::posted(
        entry_id(EntryKind::WalletPayment, payment_id.into_uuid()),
        EntryKind::WalletPayment,
        Some(payment_id.into_uuid()),
        effective_at_us,
        postings,
    )
}

/// A transfer between two wallets: Dr sender · Cr receiver.
pub fn wallet_transfer(
    transfer_id: Uuid,
    from: WalletUserId,
    to: WalletUserId,
    amount: Money,
    effective_at_us: i64,
) -> NewEntry {
    let c = amount.currency();
    NewEntry::posted(
        entry_id(EntryKind::WalletTransfer, transfer_id),
        EntryKind::WalletTransfer,
        Some(transfer_id),
        effective_at_us,
        vec![
            NewPosting::debit(chart::wallet_balance(from, c), amount),
            NewPosting::credit(chart::wallet_balance(to, c), amount),
        ],
    )
}

/// A correction (e.g. a fee difference found by reconciliation): Dr `debit` · Cr `credit`, with the
/// reason in the metadata. Corrections are new entries; entries are never changed.
pub fn adjustment(
    adjustment_id: Uuid,
    reference: Option<Uuid>,
    debit: AccountSpec,
    credit: AccountSpec,
    amount: Money,
    reason: &str,
    effective_at_us: i64,
) -> NewEntry {
    NewEntry::posted(
        entry_id(EntryKind::Adjustment, adjustment_id),
        EntryKind::Adjustment,
        reference,
        effective_at_us,
        vec![
            NewPosting::debit(debit, amount),
            NewPosting::credit(credit, amount),
        ],
    )
    .with_metadata(serde_json::json!({ "reason": reason }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Side;
    use paymux_model::Currency;
    use proptest::prelude::*;

    fn sums(e: &NewEntry) -> (i64, i64) {
        e.postings.iter().fold((0, 0), |(d, c), p| match p.side {
            Side::Debit => (d + p.amount.amount_minor(), c),
            Side::Credit => (d, c + p.amount.amount_minor()),
        })
    }

    fn amount_of(e: &NewEntry, code_part: &str, side: Side) -> i64 {
        e.postings
            .iter()
            .filter(|p| p.side == side && matches!(&p.account, crate::types::AccountRef::Spec(s) if s.code.contains(code_part)))
            .map(|p| p.amount.amount_minor())
            .sum()
    }

    #[test]
    fn fee_rounds_half_up_to_the_fen() {
        assert_eq!(fee_minor(10_000, 60), 60);
        assert_eq!(fee_minor(100, 60), 1, "0.6 fen rounds up");
        assert_eq!(fee_minor(83, 60), 0, "0.498 fen rounds down");
        assert_eq!(fee_minor(50, 100), 1, "exactly 0.5 fen rounds up");
        assert_eq!(fee_minor(49, 100), 0);
        assert_eq!(fee_minor(1, 10_000), 1);
        assert_eq!(fee_minor(12_345, 38), 47, "46.911 fen");
        assert_eq!(fee_minor(0, 60), 0);
        assert_eq!(fee_minor(-50, 100), -1, "symmetric for negatives");
        assert_eq!(
            fee_minor(i64::MAX, 10_000),
            i64::MAX,
            "no overflow at the extremes"
        );
        assert_eq!(
            fee_minor(i64::MAX, 60),
            55_340_232_221_128_655,
            "…654.84 rounds up"
        );
    }

    #[test]
    fn the_design_example_books_as_documented() {
        // 100.00 payment, merchant rate 0.60%, channel cost 0.38%.
        let e = payment_succeeded(
            PaymentId::new(),
            MerchantId::new(),
            ChannelAccountId::new(),
            Money::cny(10_000),
            60,
            38,
            0,
        );
        assert_eq!(amount_of(&e, ":receivable", Side::Debit), 9_962);
        assert_eq!(amount_of(&e, ":fees", Side::Debit), 38);
        assert_eq!(amount_of(&e, ":payable", Side::Credit), 9_940);
        assert_eq!(amount_of(&e, "fee_income", Side::Credit), 60);
        assert_eq!(sums(&e), (10_000, 10_000));
        assert_eq!(e.kind, EntryKind::Payment);
    }

    #[test]
    fn zero_fees_leave_out_empty_postings() {
        let e = payment_succeeded(
            PaymentId::new(),
            MerchantId::new(),
            ChannelAccountId::new(),
            Money::cny(1),
            60,
            38,
            0,
        );
        assert!(e.postings.iter().all(|p| p.amount.amount_minor() > 0));
        assert_eq!(e.postings.len(), 2, "1 fen: both fees round to zero");
        assert_eq!(sums(&e), (1, 1));
    }

    #[test]
    fn entry_ids_are_deterministic_per_movement() {
        let p = PaymentId::new();
        let (m, a) = (MerchantId::new(), ChannelAccountId::new());
        assert_eq!(
            payment_succeeded(p, m, a, Money::cny(5), 0, 0, 1).id,
            payment_succeeded(p, m, a, Money::cny(5), 0, 0, 2).id
        );
        assert_ne!(
            entry_id(EntryKind::Payment, p.into_uuid()),
            entry_id(EntryKind::Refund, p.into_uuid())
        );
    }

    #[test]
    fn partial_refunds_return_the_whole_fee_exactly() {
        let ctx = |before| RefundContext {
            payment_id: PaymentId::new(),
            merchant: MerchantId::new(),
            channel_account: ChannelAccountId::new(),
            payment_amount: Money::cny(10_001),
            refunded_before_minor: before,
            merchant_fee_rate_bps: 60,
            channel_cost_rate_bps: 38,
        };
        let split = payment_split(10_001, 60, 38);
        let parts = [3_333, 3_333, 3_335];
        let (mut before, mut fee_back, mut cost_back) = (0, 0, 0);
        for part in parts {
            let e = refund_succeeded(RefundId::new(), &ctx(before), Money::cny(part), 0);
            assert_eq!(sums(&e), (part, part), "each refund balances");
            fee_back += amount_of(&e, "fee_income", Side::Debit);
            cost_back += amount_of(&e, ":fees", Side::Credit);
            before += part;
        }
        assert_eq!(fee_back, split.merchant_fee);
        assert_eq!(cost_back, split.channel_cost);
    }

    #[test]
    fn settlements_and_wallet_rules_balance() {
        let s = SettlementId::new();
        for e in [
            channel_settlement(s, ChannelAccountId::new(), "icbc", Money::cny(999), 0),
            merchant_settlement(s, MerchantId::new(), "icbc", Money::cny(999), 0),
            wallet_top_up(
                Uuid::now_v7(),
                WalletUserId::new(),
                "icbc",
                Money::cny(999),
                0,
            ),
            wallet_payment(
                PaymentId::new(),
                WalletUserId::new(),
                MerchantId::new(),
                Money::cny(999),
                60,
                0,
            ),
            wallet_transfer(
                Uuid::now_v7(),
                WalletUserId::new(),
                WalletUserId::new(),
                Money::cny(999),
                0,
            ),
            adjustment(
                Uuid::now_v7(),
                None,
                chart::channel_fees(ChannelAccountId::new(), Currency::Cny),
                chart::platform_adjustments(Currency::Cny),
                Money::cny(3),
                "fee differs from the channel bill",
                0,
            ),
        ] {
            let (d, c) = sums(&e);
            assert_eq!(d, c, "{:?} balances", e.kind);
            assert!(e.postings.len() >= 2);
        }
    }

    proptest! {
        #[test]
        fn any_payment_and_its_refunds_balance(amount in 1i64..=10_000_000_000, fee in 0u32..=1000, cost in 0u32..=1000, cuts in proptest::collection::vec(1u32..100, 1..6)) {
            let e = payment_succeeded(PaymentId::new(), MerchantId::new(), ChannelAccountId::new(), Money::cny(amount), fee, cost, 0);
            let (d, c) = sums(&e);
            prop_assert_eq!(d, amount);
            prop_assert_eq!(c, amount);
            // Refund the whole amount in random parts; fee returns add up to the fee, never more.
            let total: u64 = cuts.iter().map(|c| u64::from(*c)).sum();
            let mut parts: Vec<i64> = cuts.iter().map(|c| (i128::from(amount) * i128::from(*c) / i128::from(total)) as i64).collect();
            let assigned: i64 = parts.iter().sum();
            *parts.last_mut().unwrap() += amount - assigned;
            let split = payment_split(amount, fee, cost);
            let (mut before, mut back) = (0i64, 0i64);
            for part in parts.into_iter().filter(|p| *p > 0) {
                let r = refund_fee_return(split.merchant_fee, amount, before, part);
                prop_assert!(r >= 0);
                back += r;
                before += part;
                prop_assert!(back <= split.merchant_fee);
            }
            prop_assert_eq!(back, split.merchant_fee);
        }
    }
}
