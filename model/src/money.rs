//! Exact money: `i64` minor units plus an ISO 4217 currency.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An ISO 4217 currency. Only currencies the platform settles in are listed; each knows its numeric
/// code and its number of minor-unit digits.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Currency {
    /// Chinese yuan renminbi, 2 minor digits (fen).
    Cny,
    /// Hong Kong dollar, 2 minor digits.
    Hkd,
    /// US dollar, 2 minor digits.
    Usd,
}

impl Currency {
    pub const ALL: [Currency; 3] = [Currency::Cny, Currency::Hkd, Currency::Usd];

    /// The alphabetic ISO 4217 code, e.g. `CNY`.
    pub fn code(self) -> &'static str {
        match self {
            Currency::Cny => "CNY",
            Currency::Hkd => "HKD",
            Currency::Usd => "USD",
        }
    }

    /// The numeric ISO 4217 code, e.g. `156` (used by UnionPay and EMVCo tag 53).
    pub fn numeric(self) -> &'static str {
        match self {
            Currency::Cny => "156",
            Currency::Hkd => "344",
            Currency::Usd => "840",
        }
    }

    /// Number of digits after the decimal point in the major unit.
    pub fn minor_digits(self) -> u32 {
        2
    }

    pub fn from_numeric(code: &str) -> Option<Currency> {
        Currency::ALL.into_iter().find(|c| c.numeric() == code)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::ALL
            .into_iter()
            .find(|c| c.code() == s)
            .ok_or_else(|| MoneyError::UnknownCurrency(s.chars().take(8).collect()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown or unsupported currency {0:?}")]
    UnknownCurrency(String),
    #[error("amount {0:?} is not a decimal number")]
    NotANumber(String),
    #[error("amount {0:?} has more than {1} decimal places")]
    TooManyDecimals(String, u32),
    #[error("amount must not be negative")]
    Negative,
    #[error("amount is out of range")]
    Overflow,
    #[error("currencies differ: {0} and {1}")]
    CurrencyMismatch(Currency, Currency),
}

/// An exact amount of money: a count of minor units (fen for CNY) and its currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    amount_minor: i64,
    currency: Currency,
}

impl Money {
    pub const fn new(amount_minor: i64, currency: Currency) -> Money {
        Money {
            amount_minor,
            currency,
        }
    }

    pub const fn cny(amount_minor: i64) -> Money {
        Money::new(amount_minor, Currency::Cny)
    }

    pub const fn amount_minor(self) -> i64 {
        self.amount_minor
    }

    pub const fn currency(self) -> Currency {
        self.currency
    }

    pub fn is_negative(self) -> bool {
        self.amount_minor < 0
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        self.amount_minor
            .checked_add(other.amount_minor)
            .map(|a| Money::new(a, self.currency))
            .ok_or(MoneyError::Overflow)
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        self.amount_minor
            .checked_sub(other.amount_minor)
            .map(|a| Money::new(a, self.currency))
            .ok_or(MoneyError::Overflow)
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }

    /// Parses a major-unit decimal string such as `"12.34"`, `"0.5"` or `"100"` exactly.
    ///
    /// Rejects more decimal places than the currency has, signs other than a leading `-` (and that
    /// only when `allow_negative`), exponents, spaces, and anything that does not fit in `i64`.
    pub fn parse_major(
        s: &str,
        currency: Currency,
        allow_negative: bool,
    ) -> Result<Money, MoneyError> {
        parse_major_units(s, currency.minor_digits(), allow_negative)
            .map(|a| Money::new(a, currency))
    }

    /// Formats in major units with exactly the currency's number of decimals, e.g. `"12.30"`.
    pub fn format_major(self) -> String {
        format_minor_units(self.amount_minor, self.currency.minor_digits())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.format_major(), self.currency)
    }
}

/// Parses a decimal string in major units into minor units with `digits` decimals, exactly.
pub fn parse_major_units(s: &str, digits: u32, allow_negative: bool) -> Result<i64, MoneyError> {
    let bad = || MoneyError::NotANumber(s.chars().take(32).collect());
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if negative && !allow_negative {
        return Err(MoneyError::Negative);
    }
    let (int_part, frac_part) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let frac = match frac_part {
        None => "",
        Some(f) if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) => return Err(bad()),
        Some(f) => f,
    };
    if frac.len() > digits as usize {
        return Err(MoneyError::TooManyDecimals(
            s.chars().take(32).collect(),
            digits,
        ));
    }
    // Accumulate in i128 so that i64::MIN (whose magnitude exceeds i64::MAX) parses.
    let mut magnitude: i128 = 0;
    let digits_iter = int_part
        .bytes()
        .chain((0..digits as usize).map(|i| frac.as_bytes().get(i).copied().unwrap_or(b'0')));
    for b in digits_iter {
        magnitude = magnitude * 10 + i128::from(b - b'0');
        if magnitude > i128::from(i64::MAX) + 1 {
            return Err(MoneyError::Overflow);
        }
    }
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).map_err(|_| MoneyError::Overflow)
}

/// Formats minor units as a major-unit decimal string with exactly `digits` decimals.
pub fn format_minor_units(amount_minor: i64, digits: u32) -> String {
    let scale = 10u64.pow(digits);
    let magnitude = amount_minor.unsigned_abs();
    let sign = if amount_minor < 0 { "-" } else { "" };
    if digits == 0 {
        return format!("{sign}{magnitude}");
    }
    format!(
        "{sign}{}.{:0width$}",
        magnitude / scale,
        magnitude % scale,
        width = digits as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_yuan_strings_exactly() {
        let p = |s| Money::parse_major(s, Currency::Cny, false).map(Money::amount_minor);
        assert_eq!(p("12.34"), Ok(1234));
        assert_eq!(p("0.01"), Ok(1));
        assert_eq!(p("0.1"), Ok(10));
        assert_eq!(p("100"), Ok(10000));
        assert_eq!(p("0"), Ok(0));
        assert_eq!(p("007.50"), Ok(750));
        assert_eq!(p("92233720368547758.07"), Ok(i64::MAX));
        assert_eq!(p("92233720368547758.08"), Err(MoneyError::Overflow));
        assert_eq!(p("99999999999999999999"), Err(MoneyError::Overflow));
        assert!(matches!(p("1.234"), Err(MoneyError::TooManyDecimals(_, 2))));
        assert_eq!(p("-1.00"), Err(MoneyError::Negative));
        assert!(Money::parse_major("--1", Currency::Cny, true).is_err());
        for bad in [
            "", ".", "1.", ".5", "1e3", " 1", "1 ", "+1", "1,00", "１", "0x10", "1.2.3",
        ] {
            assert!(matches!(p(bad), Err(MoneyError::NotANumber(_))), "{bad:?}");
        }
        assert_eq!(
            Money::parse_major("-0.38", Currency::Cny, true).map(Money::amount_minor),
            Ok(-38)
        );
    }

    #[test]
    fn formats_with_fixed_decimals() {
        assert_eq!(Money::cny(1234).format_major(), "12.34");
        assert_eq!(Money::cny(5).format_major(), "0.05");
        assert_eq!(Money::cny(-40).format_major(), "-0.40");
        assert_eq!(Money::cny(i64::MIN).format_major(), "-92233720368547758.08");
        assert_eq!(Money::cny(100).to_string(), "1.00 CNY");
    }

    #[test]
    fn arithmetic_is_checked_and_currency_safe() {
        assert_eq!(Money::cny(1).checked_add(Money::cny(2)), Ok(Money::cny(3)));
        assert_eq!(
            Money::cny(i64::MAX).checked_add(Money::cny(1)),
            Err(MoneyError::Overflow)
        );
        assert!(matches!(
            Money::cny(1).checked_sub(Money::new(1, Currency::Usd)),
            Err(MoneyError::CurrencyMismatch(..))
        ));
    }

    #[test]
    fn currencies_round_trip() {
        for c in Currency::ALL {
            assert_eq!(c.code().parse::<Currency>(), Ok(c));
            assert_eq!(Currency::from_numeric(c.numeric()), Some(c));
        }
        assert!("cny".parse::<Currency>().is_err());
        assert_eq!(serde_json::to_string(&Currency::Cny).unwrap(), "\"CNY\"");
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(a in any::<i64>()) {
            let s = Money::cny(a).format_major();
            prop_assert_eq!(Money::parse_major(&s, Currency::Cny, true), Ok(Money::cny(a)));
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = Money::parse_major(&s, Currency::Cny, true);
        }
    }
}
