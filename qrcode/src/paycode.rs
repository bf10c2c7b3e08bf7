//! Which wallet issued a customer payment code (付款码, the code a merchant scans), decided by a
//! table of rules held as data.
//!
//! A rule names a wallet, the allowed code lengths, the allowed prefixes and the characters allowed
//! (digits, or ASCII letters and digits). The built-in table ([`PayCodeTable::default`]):
//!
//! | wallet | length | prefixes | charset | source |
//! |---|---|---|---|---|
//! | WeChat Pay | 18 | 10–15 | digits | official text |
//! | Alipay | 16–24 | 25–30 | digits | official text |
//! | UnionPay QuickPass | 19 | 62 | digits | SDK practice |
//! | e-CNY | 19 | 01 | digits | **unverified** |
//! | Alipay face pay | 3–64 | `fp` | letters and digits | SDK practice |
//! | paymux wallet | 18 | 97 | digits | ours (reserved) |
//!
//! Our own wallet's codes are 18 digits starting with `97`: no other rule accepts a code starting
//! with 9, so they collide with none of them ([`PayCodeTable::check_overlaps`] proves it for any
//! table). Operators can load an extended table from TOML or JSON ([`PayCodeTable::from_toml`],
//! [`PayCodeTable::from_json`]); rules are tried in order and the first match wins.
//!
//! [`PayCodeTable::classify`] tells a malformed code (empty, too long, characters other than digits
//! outside an alphanumeric rule's prefix) from a well-formed code that no rule claims. The code is
//! taken as given: callers strip the CR/LF a scanner may append.

use paymux_model::WalletBrand;
use serde::{Deserialize, Serialize};

/// The longest code any table accepts as well formed (longer is [`Malformed::TooLong`]).
pub const DEFAULT_MAX_CODE_LEN: usize = 64;

/// Which characters a rule accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Charset {
    /// ASCII digits only.
    Digits,
    /// ASCII letters and digits (the prefix decides the wallet).
    Alphanumeric,
}

/// One classification rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayCodeRule {
    pub wallet: WalletBrand,
    /// Shortest accepted length in characters.
    pub min_len: usize,
    /// Longest accepted length in characters.
    pub max_len: usize,
    /// The code must start with one of these.
    pub prefixes: Vec<String>,
    #[serde(default = "digits")]
    pub charset: Charset,
    /// Whether the rule is stated by the wallet's own documentation.
    #[serde(default)]
    pub verified: bool,
    #[serde(default)]
    pub note: String,
}

fn digits() -> Charset {
    Charset::Digits
}

impl PayCodeRule {
    fn matches(&self, code: &str) -> bool {
        let len = code.chars().count();
        (self.min_len..=self.max_len).contains(&len)
            && self.prefixes.iter().any(|p| code.starts_with(p.as_str()))
            && code.chars().all(|c| match self.charset {
                Charset::Digits => c.is_ascii_digit(),
                Charset::Alphanumeric => c.is_ascii_alphanumeric(),
            })
    }
}

/// Why a code is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("empty")]
    Empty,
    #[error("{chars} characters, more than {max}")]
    TooLong { chars: usize, max: usize },
    #[error("character at position {at} is not a digit")]
    NotDigits { at: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayCodeError {
    /// Not a payment code at all.
    #[error("malformed payment code: {0}")]
    Malformed(Malformed),
    /// Well formed, but no wallet's rule accepts it.
    #[error("payment code of {chars} characters matches no wallet")]
    Unknown { chars: usize },
}

/// A problem in a rule table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("cannot parse the table: {0}")]
    Parse(String),
    #[error("rule {index} ({wallet}): {reason}")]
    BadRule {
        index: usize,
        wallet: WalletBrand,
        reason: &'static str,
    },
    #[error("rules {first} ({first_wallet}) and {second} ({second_wallet}) both accept some code")]
    Overlap {
        first: usize,
        first_wallet: WalletBrand,
        second: usize,
        second_wallet: WalletBrand,
    },
}

/// An ordered list of rules; the first rule that accepts a code names its wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayCodeTable {
    #[serde(default = "default_max")]
    pub max_code_len: usize,
    pub rules: Vec<PayCodeRule>,
}

fn default_max() -> usize {
    DEFAULT_MAX_CODE_LEN
}

fn rule(
    wallet: WalletBrand,
    len: (usize, usize),
    prefixes: &[&str],
    charset: Charset,
    verified: bool,
    note: &str,
) -> PayCodeRule {
    PayCodeRule {
        wallet,
        min_len: len.0,
        max_len: len.1,
        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        charset,
        verified,
        note: note.to_string(),
    }
}

impl Default for PayCodeTable {
    /// The table of protocols/codes.md plus the reserved rule of our own wallet.
    fn default() -> PayCodeTable {
        use Charset::*;
        use WalletBrand::*;
        PayCodeTable {
            max_code_len: DEFAULT_MAX_CODE_LEN,
            rules: vec![
                rule(
                    Wechat,
                    (18, 18),
                    &["10", "11", "12", "13", "14", "15"],
                    Digits,
                    true,
                    "official text; some integrators accept 10-19",
                ),
                rule(
                    Alipay,
                    (16, 24),
                    &["25", "26", "27", "28", "29", "30"],
                    Digits,
                    true,
                    "official text",
                ),
                rule(Unionpay, (19, 19), &["62"], Digits, false, "SDK practice"),
                rule(Ecny, (19, 19), &["01"], Digits, false, "unverified"),
                rule(
                    Alipay,
                    (3, 64),
                    &["fp"],
                    Alphanumeric,
                    false,
                    "Alipay face pay (scene security_code); SDK practice",
                ),
                rule(
                    Paymux,
                    (18, 18),
                    &["97"],
                    Digits,
                    true,
                    "reserved for the paymux wallet; no other rule starts with 9",
                ),
            ],
        }
    }
}

impl PayCodeTable {
    /// Parses and checks a table written in TOML (`max_code_len = 64` and `[[rules]]` entries).
    pub fn from_toml(text: &str) -> Result<PayCodeTable, TableError> {
        let table: PayCodeTable =
            toml::from_str(text).map_err(|e| TableError::Parse(e.to_string()))?;
        table.check()?;
        Ok(table)
    }

    /// Parses and checks a table written in JSON.
    pub fn from_json(text: &str) -> Result<PayCodeTable, TableError> {
        let table: PayCodeTable =
            serde_json::from_str(text).map_err(|e| TableError::Parse(e.to_string()))?;
        table.check()?;
        Ok(table)
    }

    /// Checks each rule and that no two rules of different wallets accept the same code.
    pub fn check(&self) -> Result<(), TableError> {
        for (index, r) in self.rules.iter().enumerate() {
            let bad = |reason| TableError::BadRule {
                index,
                wallet: r.wallet,
                reason,
            };
            if r.min_len == 0 || r.min_len > r.max_len || r.max_len > self.max_code_len {
                return Err(bad(
                    "lengths must satisfy 1 <= min_len <= max_len <= max_code_len",
                ));
            }
            if r.prefixes.is_empty() || r.prefixes.iter().any(|p| p.is_empty()) {
                return Err(bad("needs at least one non-empty prefix"));
            }
            for p in &r.prefixes {
                let fits = p.chars().all(|c| match r.charset {
                    Charset::Digits => c.is_ascii_digit(),
                    Charset::Alphanumeric => c.is_ascii_alphanumeric(),
                });
                if !fits || p.chars().count() > r.max_len {
                    return Err(bad("a prefix does not fit the rule's charset or length"));
                }
            }
            if r.charset == Charset::Alphanumeric
                && r.prefixes
                    .iter()
                    .any(|p| p.chars().all(|c| c.is_ascii_digit()))
            {
                return Err(bad(
                    "an alphanumeric rule needs a prefix that is not all digits",
                ));
            }
        }
        self.check_overlaps()
    }

    /// Fails when two rules for different wallets both accept some code: their length ranges
    /// intersect, one prefix starts with the other, and their charsets share that code.
    pub fn check_overlaps(&self) -> Result<(), TableError> {
        for (i, a) in self.rules.iter().enumerate() {
            for (j, b) in self.rules.iter().enumerate().skip(i + 1) {
                if a.wallet == b.wallet {
                    continue;
                }
                let lengths = a.min_len.max(b.min_len) <= a.max_len.min(b.max_len);
                let prefixes = a.prefixes.iter().any(|p| {
                    b.prefixes
                        .iter()
                        .any(|q| p.starts_with(q.as_str()) || q.starts_with(p.as_str()))
                });
                // A digits rule and an alphanumeric rule share a code only if the longer of the two
                // prefixes is all digits; with the check above, alphanumeric prefixes never are.
                let charsets = a.charset == b.charset;
                if lengths && prefixes && charsets {
                    return Err(TableError::Overlap {
                        first: i,
                        first_wallet: a.wallet,
                        second: j,
                        second_wallet: b.wallet,
                    });
                }
            }
        }
        Ok(())
    }

    /// The wallet that issued `code`.
    pub fn classify(&self, code: &str) -> Result<WalletBrand, PayCodeError> {
        let chars = code.chars().count();
        if chars == 0 {
            return Err(PayCodeError::Malformed(Malformed::Empty));
        }
        if chars > self.max_code_len {
            return Err(PayCodeError::Malformed(Malformed::TooLong {
                chars,
                max: self.max_code_len,
            }));
        }
        let alphanumeric_prefix = self.rules.iter().any(|r| {
            r.charset == Charset::Alphanumeric
                && r.prefixes.iter().any(|p| code.starts_with(p.as_str()))
                && code.chars().all(|c| c.is_ascii_alphanumeric())
        });
        if !alphanumeric_prefix && let Some(at) = code.chars().position(|c| !c.is_ascii_digit()) {
            return Err(PayCodeError::Malformed(Malformed::NotDigits { at }));
        }
        self.rules
            .iter()
            .find(|r| r.matches(code))
            .map(|r| r.wallet)
            .ok_or(PayCodeError::Unknown { chars })
    }
}

/// Classifies with the built-in table.
pub fn classify(code: &str) -> Result<WalletBrand, PayCodeError> {
    PayCodeTable::default().classify(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use WalletBrand::*;
    use proptest::prelude::*;

    #[test]
    fn default_table_is_consistent() {
        PayCodeTable::default()
            .check()
            .expect("built-in table is valid");
    }

    #[test]
    fn classifies_by_rule() {
        assert_eq!(classify("120061098828009406"), Ok(Wechat));
        assert_eq!(classify("28763443825664394"), Ok(Alipay));
        assert_eq!(classify("300000000000000000000000"), Ok(Alipay)); // 24 digits
        assert_eq!(classify("6223685882046899894"), Ok(Unionpay));
        assert_eq!(classify("0112345678901234567"), Ok(Ecny));
        assert_eq!(classify("fp0123abcDEF"), Ok(Alipay));
        assert_eq!(classify("971234567890123456"), Ok(Paymux));
    }

    #[test]
    fn malformed_and_unknown_are_distinct() {
        use PayCodeError::*;
        assert_eq!(classify(""), Err(Malformed(super::Malformed::Empty)));
        assert!(matches!(
            classify(&"1".repeat(65)),
            Err(Malformed(super::Malformed::TooLong { .. }))
        ));
        assert_eq!(
            classify("12006109882800940x"),
            Err(Malformed(super::Malformed::NotDigits { at: 17 }))
        );
        assert_eq!(
            classify(" 120061098828009406"),
            Err(Malformed(super::Malformed::NotDigits { at: 0 }))
        );
        assert_eq!(
            classify("fp-1"),
            Err(Malformed(super::Malformed::NotDigits { at: 0 }))
        );
        assert_eq!(
            classify("１２００"),
            Err(Malformed(super::Malformed::NotDigits { at: 0 }))
        );
        // Well formed but claimed by nobody.
        assert_eq!(classify("160061098828009406"), Err(Unknown { chars: 18 })); // WeChat length, prefix 16
        assert_eq!(classify("12006109882800940"), Err(Unknown { chars: 17 })); // WeChat prefix, 17 digits
        assert_eq!(classify("6223685882046899"), Err(Unknown { chars: 16 }));
        assert_eq!(classify("97123"), Err(Unknown { chars: 5 }));
    }

    #[test]
    fn overlapping_rules_are_refused() {
        let mut table = PayCodeTable::default();
        table.rules.push(rule(
            Card,
            (18, 18),
            &["9"],
            Charset::Digits,
            false,
            "clashes",
        ));
        assert!(matches!(
            table.check(),
            Err(TableError::Overlap {
                second_wallet: Card,
                first_wallet: Paymux,
                ..
            })
        ));
        let mut table = PayCodeTable::default();
        table.rules[0].prefixes.push("16".into());
        table.rules[0].prefixes.push("25".into());
        assert!(matches!(
            table.check(),
            Err(TableError::Overlap { first: 0, .. })
        ));
    }

    #[test]
    fn loads_from_toml_and_json() {
        let toml_text = r#"
            max_code_len = 40

            [[rules]]
            wallet = "wechat"
            min_len = 18
            max_len = 18
            prefixes = ["10", "11", "12", "13", "14", "15", "16", "17", "18", "19"]
            verified = true
            note = "the wider range some integrators accept"

            [[rules]]
            wallet = "paymux"
            min_len = 18
            max_len = 18
            prefixes = ["97"]
        "#;
        let table = PayCodeTable::from_toml(toml_text).expect("valid toml table");
        assert_eq!(table.max_code_len, 40);
        assert_eq!(table.rules[1].charset, Charset::Digits);
        assert_eq!(table.classify("190000000000000000"), Ok(Wechat));
        assert!(matches!(
            table.classify("28763443825664394"),
            Err(PayCodeError::Unknown { .. })
        ));

        let json = serde_json::to_string(&PayCodeTable::default()).expect("serialise");
        assert_eq!(PayCodeTable::from_json(&json), Ok(PayCodeTable::default()));

        assert!(matches!(
            PayCodeTable::from_toml("[[rules]]\nwallet = \"nope\""),
            Err(TableError::Parse(_))
        ));
        assert!(matches!(
            PayCodeTable::from_json(
                r#"{"rules":[{"wallet":"wechat","min_len":0,"max_len":18,"prefixes":["10"]}]}"#
            ),
            Err(TableError::BadRule { index: 0, .. })
        ));
        assert!(matches!(
            PayCodeTable::from_json(
                r#"{"rules":[{"wallet":"alipay","min_len":3,"max_len":9,"prefixes":["12"],"charset":"alphanumeric"}]}"#
            ),
            Err(TableError::BadRule { index: 0, .. })
        ));
    }

    proptest! {
        #[test]
        fn classify_never_panics(s in ".{0,80}") {
            let _ = classify(&s);
        }

        #[test]
        fn every_classified_code_matches_exactly_one_wallet(s in "[0-9]{16,24}") {
            let table = PayCodeTable::default();
            if let Ok(w) = table.classify(&s) {
                let wallets: std::collections::BTreeSet<_> =
                    table.rules.iter().filter(|r| r.matches(&s)).map(|r| r.wallet).collect();
                prop_assert_eq!(wallets.into_iter().collect::<Vec<_>>(), vec![w]);
            }
        }
    }
}
