//! The chart of accounts (DESIGN.md, Ledger): one builder per account family, each returning the
//! [`AccountSpec`] that opens the account on first use. Codes are stable strings; ids derive from them.

use paymux_model::{ChannelAccountId, Currency, MerchantId, WalletUserId};

use crate::types::{AccountFlags, AccountKind, AccountSpec};

fn spec(code: String, kind: AccountKind, currency: Currency, flags: AccountFlags) -> AccountSpec {
    AccountSpec {
        code,
        kind,
        currency,
        flags,
    }
}

fn suffix(currency: Currency) -> String {
    if currency == Currency::Cny {
        String::new()
    } else {
        format!(":{}", currency.code())
    }
}

/// `channel:{acct}:receivable` (asset): what the channel owes us for collected payments.
pub fn channel_receivable(acct: ChannelAccountId, currency: Currency) -> AccountSpec {
    spec(
        format!("channel:{acct}:receivable{}", suffix(currency)),
        AccountKind::Asset,
        currency,
        AccountFlags::NONE,
    )
}

/// `channel:{acct}:fees` (expense): what the channel charges us.
pub fn channel_fees(acct: ChannelAccountId, currency: Currency) -> AccountSpec {
    spec(
        format!("channel:{acct}:fees{}", suffix(currency)),
        AccountKind::Expense,
        currency,
        AccountFlags::NONE,
    )
}

/// `merchant:{id}:payable` (liability): what we owe the merchant.
pub fn merchant_payable(merchant: MerchantId, currency: Currency) -> AccountSpec {
    spec(
        format!("merchant:{merchant}:payable{}", suffix(currency)),
        AccountKind::Liability,
        currency,
        AccountFlags::NONE,
    )
}

/// `platform:fee_income` (revenue): the platform's merchant fees.
pub fn platform_fee_income(currency: Currency) -> AccountSpec {
    spec(
        format!("platform:fee_income{}", suffix(currency)),
        AccountKind::Revenue,
        currency,
        AccountFlags::NONE,
    )
}

/// `platform:adjustments` (equity): the other side of manual corrections and reconciliation
/// differences.
pub fn platform_adjustments(currency: Currency) -> AccountSpec {
    spec(
        format!("platform:adjustments{}", suffix(currency)),
        AccountKind::Equity,
        currency,
        AccountFlags::NONE,
    )
}

/// `wallet:{user}:balance` (liability, never negative): a wallet user's stored value.
pub fn wallet_balance(user: WalletUserId, currency: Currency) -> AccountSpec {
    spec(
        format!("wallet:{user}:balance{}", suffix(currency)),
        AccountKind::Liability,
        currency,
        AccountFlags {
            debits_must_not_exceed_credits: true,
            credits_must_not_exceed_debits: false,
        },
    )
}

/// `bank:{id}:cash` (asset): a platform bank account.
pub fn bank_cash(bank: &str, currency: Currency) -> AccountSpec {
    spec(
        format!("bank:{bank}:cash{}", suffix(currency)),
        AccountKind::Asset,
        currency,
        AccountFlags::NONE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_design_and_ids_are_stable() {
        let m = MerchantId::new();
        let s = merchant_payable(m, Currency::Cny);
        assert_eq!(s.code, format!("merchant:{m}:payable"));
        assert_eq!(s.kind, AccountKind::Liability);
        assert_eq!(s.id(), merchant_payable(m, Currency::Cny).id());
        assert_ne!(s.id(), merchant_payable(m, Currency::Usd).id());
        assert_eq!(
            platform_fee_income(Currency::Cny).code,
            "platform:fee_income"
        );
        assert!(
            wallet_balance(WalletUserId::new(), Currency::Cny)
                .flags
                .debits_must_not_exceed_credits
        );
        assert_eq!(bank_cash("icbc", Currency::Cny).code, "bank:icbc:cash");
    }
}
