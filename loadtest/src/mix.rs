//! Scenarios and mixes: `--mix code_scan=40,qr=20,create_query=30,refund=10` chooses what each
//! arrival does, spread evenly over the run (smooth weighted round-robin, so a short run has the
//! same proportions as a long one).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// What one arrival does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// B2C: `POST /v1/payments` `code_scan` with a customer's payment code of one of `--wallets`;
    /// `--password-pct` of the codes make the payer enter a password (`202 processing`, then paid).
    CodeScan,
    /// C2B: `qr_merchant` with a wallet, then the sandbox payer pays the channel's code; the
    /// channel's notification settles the payment.
    Qr,
    /// `qr_merchant` without a wallet: payment creation alone, no channel call.
    Create,
    /// Creation, then `GET /v1/payments/{id}` of the new payment.
    CreateQuery,
    /// Status polling: `GET /v1/payments/{id}` of a payment this run created earlier.
    Query,
    /// A code payment paid at once, then `POST /v1/payments/{id}/refunds` of half of it.
    Refund,
    /// One-code: a payer's wallet app scans one of the merchant's static codes and pays it through
    /// the cashier (`/c/{id}`, the wallet's authorisation and payment sheet in the sandbox), then
    /// polls the result until the channel's notification has settled it (`qr_static`).
    OneCode,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::CodeScan => "code_scan",
            Scenario::Qr => "qr",
            Scenario::Create => "create",
            Scenario::CreateQuery => "create_query",
            Scenario::Query => "query",
            Scenario::Refund => "refund",
            Scenario::OneCode => "one_code",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "code_scan" | "b2c" => Ok(Scenario::CodeScan),
            "qr" | "qr_merchant" | "c2b" => Ok(Scenario::Qr),
            "create" => Ok(Scenario::Create),
            "create_query" => Ok(Scenario::CreateQuery),
            "query" | "status" | "poll" => Ok(Scenario::Query),
            "refund" => Ok(Scenario::Refund),
            "one_code" | "onecode" | "qr_static" => Ok(Scenario::OneCode),
            other => Err(format!(
                "unknown scenario `{other}` (known: code_scan, qr, create, create_query, query, refund, one_code)"
            )),
        }
    }
}

/// Scenarios with integer weights, and the order arrivals take them in.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    pub weights: Vec<(Scenario, u32)>,
    cycle: Vec<Scenario>,
}

impl Mix {
    pub fn new(weights: Vec<(Scenario, u32)>) -> Result<Mix, String> {
        let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return Err("the mix has no scenario with a positive weight".into());
        }
        if total > 100_000 {
            return Err("the weights of a mix add up to at most 100000".into());
        }
        let weights: Vec<(Scenario, u32)> = weights.into_iter().filter(|(_, w)| *w > 0).collect();
        // Smooth weighted round-robin: every step each scenario gains its weight, the one with the
        // most credit goes and pays the total back. Proportions hold over every window.
        let mut credit = vec![0i64; weights.len()];
        let mut cycle = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, (_, w)) in credit.iter_mut().zip(&weights) {
                *c += i64::from(*w);
            }
            let (best, _) = credit
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
                .expect("non-empty mix");
            credit[best] -= total as i64;
            cycle.push(weights[best].0);
        }
        Ok(Mix { weights, cycle })
    }

    /// The scenario of arrival `i`.
    pub fn pick(&self, i: u64) -> Scenario {
        self.cycle[(i % self.cycle.len() as u64) as usize]
    }

    /// The share of arrivals that are `s`, 0..=1.
    pub fn share(&self, s: Scenario) -> f64 {
        let total: u32 = self.weights.iter().map(|(_, w)| w).sum();
        let w: u32 = self
            .weights
            .iter()
            .filter(|(x, _)| *x == s)
            .map(|(_, w)| w)
            .sum();
        f64::from(w) / f64::from(total)
    }
}

impl FromStr for Mix {
    type Err = String;
    /// `code_scan=40,qr=20` or a single scenario name (weight 1).
    fn from_str(s: &str) -> Result<Mix, String> {
        let mut weights: Vec<(Scenario, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once('=') {
                Some((n, w)) => (
                    n,
                    w.trim()
                        .parse::<u32>()
                        .map_err(|_| format!("weight of `{n}` is not a whole number: `{w}`"))?,
                ),
                None => (part, 1),
            };
            let scenario: Scenario = name.parse()?;
            if weights.iter().any(|(s, _)| *s == scenario) {
                return Err(format!("scenario `{scenario}` appears twice in the mix"));
            }
            weights.push((scenario, weight));
        }
        if weights.is_empty() {
            return Err("empty mix".into());
        }
        Mix::new(weights)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(s, w)| format!("{s}={w}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_weights_and_aliases() {
        let m: Mix = "code_scan=40, qr=20,create_query=30,refund=10"
            .parse()
            .unwrap();
        assert_eq!(
            m.weights,
            vec![
                (Scenario::CodeScan, 40),
                (Scenario::Qr, 20),
                (Scenario::CreateQuery, 30),
                (Scenario::Refund, 10)
            ]
        );
        assert_eq!(
            m.to_string(),
            "code_scan=40,qr=20,create_query=30,refund=10"
        );
        let single: Mix = "status".parse().unwrap();
        assert_eq!(single.weights, vec![(Scenario::Query, 1)]);
        assert!((m.share(Scenario::Qr) - 0.2).abs() < 1e-9);
        for name in ["one_code", "onecode", "qr_static"] {
            let one: Mix = name.parse().unwrap();
            assert_eq!(one.weights, vec![(Scenario::OneCode, 1)]);
            assert_eq!(one.to_string(), "one_code=1");
        }
        let with: Mix = "code_scan=3,one_code=1".parse().unwrap();
        assert!((with.share(Scenario::OneCode) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn rejects_bad_mixes() {
        for bad in [
            "",
            "code_scan=x",
            "nope=1",
            "qr=1,qr=2",
            "qr=0",
            "code_scan=-1",
            "one_code=1,qr_static=2",
        ] {
            assert!(bad.parse::<Mix>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn arrivals_follow_the_weights_in_every_window() {
        let m: Mix = "code_scan=3,qr=1".parse().unwrap();
        let first: Vec<Scenario> = (0..8).map(|i| m.pick(i)).collect();
        // Every cycle of 4 holds 3 code scans and 1 qr, never two qr in a row.
        for w in first.chunks(4) {
            assert_eq!(w.iter().filter(|s| **s == Scenario::Qr).count(), 1);
        }
        let m: Mix = "create=50,query=30,refund=20".parse().unwrap();
        let n = 10_000u64;
        let count = |s| (0..n).filter(|i| m.pick(*i) == s).count();
        assert_eq!(count(Scenario::Create), 5_000);
        assert_eq!(count(Scenario::Query), 3_000);
        assert_eq!(count(Scenario::Refund), 2_000);
        // A zero weight is dropped, not picked.
        let m: Mix = "create=1,query=0".parse().unwrap();
        assert!((0..10).all(|i| m.pick(i) == Scenario::Create));
    }
}
