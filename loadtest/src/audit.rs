//! The post-run audit: every payment the run saw acknowledged exists with the status and amount it
//! should have (waiting a while for asynchronous outcomes: password waits, notifications, refunds),
//! no order number was paid twice, and `paymux ledger audit` passes (every succeeded payment has
//! exactly one ledger entry; balanced books).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use reqwest::Method;
use serde::Serialize;
use serde_json::Value;

use crate::client::{Api, Merchant};

/// A payment the server acknowledged during the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub merchant: u32,
    pub id: String,
    pub order_no: String,
    pub amount: i64,
    /// The status in the acknowledgement.
    pub seen: String,
    /// The status it must end in; `None` when the run cannot know (a payer call that failed).
    pub expect: Option<&'static str>,
    /// A refund the run had acknowledged: its id and amount.
    pub refund: Option<(String, i64)>,
    /// The payment method and wallet the payment must have, when the run chose them (one-code
    /// payments: `qr_static` and the wallet app that paid).
    pub method: Option<&'static str>,
    pub wallet: Option<&'static str>,
}

/// The verdict on one fetched payment or refund.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    Ok,
    /// Not there yet (an asynchronous outcome may still come).
    Pending(String),
    Mismatch(String),
}

fn is_final(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "closed")
}

/// Compares a payment as the API shows it with what the run saw.
pub fn check_payment(ack: &Ack, p: &Value) -> Check {
    let status = p["status"].as_str().unwrap_or("?");
    if p["id"].as_str() != Some(ack.id.as_str()) {
        return Check::Mismatch(format!(
            "payment {}: the server returned id {}",
            ack.id, p["id"]
        ));
    }
    if p["amount"].as_i64() != Some(ack.amount) {
        return Check::Mismatch(format!(
            "payment {}: amount {} but {} was acknowledged",
            ack.id, p["amount"], ack.amount
        ));
    }
    if p["merchant_order_no"].as_str() != Some(ack.order_no.as_str()) {
        return Check::Mismatch(format!(
            "payment {}: merchant_order_no {} but {} was sent",
            ack.id, p["merchant_order_no"], ack.order_no
        ));
    }
    if let Some(method) = ack.method
        && p["method"].as_str() != Some(method)
    {
        return Check::Mismatch(format!(
            "payment {}: method {} but {method} was paid",
            ack.id, p["method"]
        ));
    }
    if let Some(wallet) = ack.wallet
        && p["wallet"].as_str() != Some(wallet)
    {
        return Check::Mismatch(format!(
            "payment {}: wallet {} but {wallet} paid",
            ack.id, p["wallet"]
        ));
    }
    if is_final(&ack.seen) && status != ack.seen {
        return Check::Mismatch(format!(
            "payment {}: acknowledged {} and now {status}",
            ack.id, ack.seen
        ));
    }
    let refunded = ack.refund.as_ref().map(|(_, a)| *a).unwrap_or(0);
    if p["refunded_amount"].as_i64().unwrap_or(0) != refunded {
        return Check::Mismatch(format!(
            "payment {}: refunded_amount {} but {refunded} was acknowledged",
            ack.id, p["refunded_amount"]
        ));
    }
    match ack.expect {
        None => Check::Ok,
        Some(want) if status == want => Check::Ok,
        Some(want) if !is_final(status) => Check::Pending(format!(
            "payment {}: still {status}, expected {want}",
            ack.id
        )),
        Some(want) => Check::Mismatch(format!("payment {}: {status}, expected {want}", ack.id)),
    }
}

/// A refund must end `succeeded` with the acknowledged amount.
pub fn check_refund(id: &str, amount: i64, r: &Value) -> Check {
    if r["amount"].as_i64() != Some(amount) {
        return Check::Mismatch(format!(
            "refund {id}: amount {} but {amount} was acknowledged",
            r["amount"]
        ));
    }
    match r["status"].as_str().unwrap_or("?") {
        "succeeded" => Check::Ok,
        "processing" => Check::Pending(format!("refund {id}: still processing")),
        other => Check::Mismatch(format!("refund {id}: {other}, expected succeeded")),
    }
}

/// Order numbers or payment ids that the run saw acknowledged more than once with different ids.
pub fn local_duplicates(acks: &[Ack]) -> Vec<String> {
    let mut ids = HashSet::new();
    let mut orders = HashSet::new();
    let mut dups = Vec::new();
    for a in acks {
        if !ids.insert(a.id.as_str()) {
            dups.push(format!("payment id {} acknowledged twice", a.id));
        }
        if !orders.insert((a.merchant, a.order_no.as_str())) {
            dups.push(format!(
                "merchant_order_no {} acknowledged twice",
                a.order_no
            ));
        }
    }
    dups
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub concurrency: usize,
    /// How long asynchronous outcomes may take to arrive.
    pub settle_wait: Duration,
    pub duplicates: bool,
    /// `paymux` to run `ledger audit` with (and its `--config`).
    pub paymux_bin: Option<std::path::PathBuf>,
    pub paymux_config: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub payments_checked: u64,
    pub refunds_checked: u64,
    pub mismatches: u64,
    pub duplicates: u64,
    pub order_numbers_checked: u64,
    /// `passed`, `failed` or `not run`.
    pub ledger_audit: String,
    pub ledger_output: String,
    pub examples: Vec<String>,
    pub seconds: f64,
    pub clean: bool,
}

impl AuditReport {
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "post-run audit ({:.1} s): {} payments and {} refunds checked, {} mismatches; {} order numbers checked, {} duplicates; ledger audit {}",
            self.seconds,
            self.payments_checked,
            self.refunds_checked,
            self.mismatches,
            self.order_numbers_checked,
            self.duplicates,
            self.ledger_audit
        );
        for line in self.ledger_output.lines() {
            let _ = writeln!(out, "    | {line}");
        }
        for e in &self.examples {
            let _ = writeln!(out, "    ! {e}");
        }
        let _ = writeln!(
            out,
            "  audit: {}",
            if self.clean { "CLEAN" } else { "FAILED" }
        );
        out
    }
}

pub async fn run(
    api: Arc<Api>,
    merchants: Arc<Vec<Merchant>>,
    acks: Vec<Ack>,
    cfg: AuditConfig,
) -> AuditReport {
    let started = Instant::now();
    let mut examples: Vec<String> = Vec::new();
    let mut mismatches = 0u64;
    let note = |examples: &mut Vec<String>, e: String| {
        if examples.len() < 20 {
            examples.push(e);
        }
    };

    // Payments, then their refunds: fetch everything, keep what is still pending, try again until
    // the settle wait is over.
    let deadline = Instant::now() + cfg.settle_wait;
    let acks = Arc::new(acks);
    let mut pending: Vec<usize> = (0..acks.len()).collect();
    let mut refunds_checked = 0u64;
    loop {
        let results: Vec<(usize, Check, Option<Check>)> = futures::stream::iter(pending.clone())
            .map(|i| {
                let (api, merchants, acks) = (api.clone(), merchants.clone(), acks.clone());
                async move {
                    let a = &acks[i];
                    let m = &merchants[a.merchant as usize];
                    let p = match api
                        .signed(m, Method::GET, &format!("/v1/payments/{}", a.id), None)
                        .await
                    {
                        Ok((200, body)) => check_payment(a, &body),
                        Ok((404, _)) => {
                            Check::Mismatch(format!("payment {}: 404, it does not exist", a.id))
                        }
                        Ok((s, body)) => Check::Pending(format!(
                            "payment {}: {}",
                            a.id,
                            crate::client::error_code(s, &body)
                        )),
                        Err(e) => Check::Pending(format!("payment {}: {e}", a.id)),
                    };
                    let r = match &a.refund {
                        Some((rid, amount)) => Some(
                            match api
                                .signed(m, Method::GET, &format!("/v1/refunds/{rid}"), None)
                                .await
                            {
                                Ok((200, body)) => check_refund(rid, *amount, &body),
                                Ok((404, _)) => {
                                    Check::Mismatch(format!("refund {rid}: 404, it does not exist"))
                                }
                                Ok((s, body)) => Check::Pending(format!(
                                    "refund {rid}: {}",
                                    crate::client::error_code(s, &body)
                                )),
                                Err(e) => Check::Pending(format!("refund {rid}: {e}")),
                            },
                        ),
                        None => None,
                    };
                    (i, p, r)
                }
            })
            .buffer_unordered(cfg.concurrency.max(1))
            .collect()
            .await;
        let last_round = Instant::now() >= deadline;
        let mut still = Vec::new();
        for (i, p, r) in results {
            let checks = std::iter::once(p).chain(r);
            let mut pend = false;
            for c in checks {
                match c {
                    Check::Ok => {}
                    Check::Mismatch(e) => {
                        mismatches += 1;
                        note(&mut examples, e);
                    }
                    Check::Pending(e) if last_round => {
                        mismatches += 1;
                        note(
                            &mut examples,
                            format!("{e} after {:.0} s", cfg.settle_wait.as_secs_f64()),
                        );
                    }
                    Check::Pending(_) => pend = true,
                }
            }
            if pend {
                still.push(i);
            } else if acks[i].refund.is_some() {
                refunds_checked += 1;
            }
        }
        if still.is_empty() || last_round {
            break;
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Duplicates: in what the run saw, and at the server (one payment per merchant_order_no).
    let mut duplicates = 0u64;
    for d in local_duplicates(&acks) {
        duplicates += 1;
        note(&mut examples, d);
    }
    let mut order_numbers_checked = 0u64;
    if cfg.duplicates {
        let found: Vec<Option<String>> = futures::stream::iter(0..acks.len())
            .map(|i| {
                let (api, merchants, acks) = (api.clone(), merchants.clone(), acks.clone());
                async move {
                    let a = &acks[i];
                    let path = format!("/v1/payments?merchant_order_no={}&limit=10", a.order_no);
                    match api
                        .signed(&merchants[a.merchant as usize], Method::GET, &path, None)
                        .await
                    {
                        Ok((200, body)) => {
                            let ids: Vec<&str> = body["data"]
                                .as_array()
                                .map(|d| d.iter().filter_map(|p| p["id"].as_str()).collect())
                                .unwrap_or_default();
                            (ids != [a.id.as_str()]).then(|| {
                                format!(
                                    "merchant_order_no {}: payments {ids:?}, expected only {}",
                                    a.order_no, a.id
                                )
                            })
                        }
                        Ok((s, body)) => Some(format!(
                            "merchant_order_no {}: {}",
                            a.order_no,
                            crate::client::error_code(s, &body)
                        )),
                        Err(e) => Some(format!("merchant_order_no {}: {e}", a.order_no)),
                    }
                }
            })
            .buffer_unordered(cfg.concurrency.max(1))
            .collect()
            .await;
        order_numbers_checked = found.len() as u64;
        for f in found.into_iter().flatten() {
            duplicates += 1;
            note(&mut examples, f);
        }
    }

    let (ledger_audit, ledger_output) = match &cfg.paymux_bin {
        Some(bin) => {
            let mut cmd = tokio::process::Command::new(bin);
            if let Some(c) = &cfg.paymux_config {
                cmd.arg("--config").arg(c);
            }
            match cmd.args(["ledger", "audit"]).output().await {
                Ok(out) => {
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                    (
                        if out.status.success() {
                            "passed"
                        } else {
                            "failed"
                        }
                        .to_string(),
                        text,
                    )
                }
                Err(e) => (
                    "failed".to_string(),
                    format!("could not run {}: {e}", bin.display()),
                ),
            }
        }
        None => (
            "not run".to_string(),
            "no paymux binary (--paymux-bin)".to_string(),
        ),
    };
    let clean = mismatches == 0 && duplicates == 0 && ledger_audit == "passed";
    AuditReport {
        payments_checked: acks.len() as u64,
        refunds_checked,
        mismatches,
        duplicates,
        order_numbers_checked,
        ledger_audit,
        ledger_output,
        examples,
        seconds: started.elapsed().as_secs_f64(),
        clean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ack(seen: &str, expect: Option<&'static str>) -> Ack {
        Ack {
            merchant: 0,
            id: "p1".into(),
            order_no: "o1".into(),
            amount: 100,
            seen: seen.into(),
            expect,
            refund: None,
            method: None,
            wallet: None,
        }
    }

    #[test]
    fn payments_are_checked_against_what_the_run_saw() {
        let p = |status: &str, amount: i64| json!({"id": "p1", "merchant_order_no": "o1", "amount": amount, "status": status, "refunded_amount": 0});
        assert_eq!(
            check_payment(&ack("succeeded", Some("succeeded")), &p("succeeded", 100)),
            Check::Ok
        );
        assert!(matches!(
            check_payment(&ack("processing", Some("succeeded")), &p("processing", 100)),
            Check::Pending(_)
        ));
        assert!(matches!(
            check_payment(&ack("created", Some("succeeded")), &p("closed", 100)),
            Check::Mismatch(_)
        ));
        assert!(matches!(
            check_payment(&ack("succeeded", Some("succeeded")), &p("succeeded", 99)),
            Check::Mismatch(_)
        ));
        // A final status seen in the acknowledgement never changes.
        assert!(matches!(
            check_payment(&ack("succeeded", None), &p("closed", 100)),
            Check::Mismatch(_)
        ));
        assert_eq!(
            check_payment(&ack("created", None), &p("succeeded", 100)),
            Check::Ok
        );
        let mut refunded = ack("succeeded", Some("succeeded"));
        refunded.refund = Some(("r1".into(), 50));
        assert!(matches!(
            check_payment(&refunded, &p("succeeded", 100)),
            Check::Mismatch(_)
        ));
        let mut with_refund = p("succeeded", 100);
        with_refund["refunded_amount"] = json!(50);
        assert_eq!(check_payment(&refunded, &with_refund), Check::Ok);
        // A one-code payment: method and wallet as paid.
        let mut one_code = ack("created", Some("succeeded"));
        one_code.method = Some("qr_static");
        one_code.wallet = Some("unionpay");
        let mut paid = p("succeeded", 100);
        paid["method"] = json!("qr_static");
        paid["wallet"] = json!("unionpay");
        assert_eq!(check_payment(&one_code, &paid), Check::Ok);
        paid["wallet"] = json!("wechat");
        assert!(matches!(
            check_payment(&one_code, &paid),
            Check::Mismatch(_)
        ));
        paid["wallet"] = json!("unionpay");
        paid["method"] = json!("qr_merchant");
        assert!(matches!(
            check_payment(&one_code, &paid),
            Check::Mismatch(_)
        ));
        let other =
            json!({"id": "p2", "merchant_order_no": "o1", "amount": 100, "status": "succeeded"});
        assert!(matches!(
            check_payment(&ack("succeeded", None), &other),
            Check::Mismatch(_)
        ));
    }

    #[test]
    fn refunds_and_duplicates() {
        assert_eq!(
            check_refund("r1", 50, &json!({"amount": 50, "status": "succeeded"})),
            Check::Ok
        );
        assert!(matches!(
            check_refund("r1", 50, &json!({"amount": 50, "status": "processing"})),
            Check::Pending(_)
        ));
        assert!(matches!(
            check_refund("r1", 50, &json!({"amount": 50, "status": "failed"})),
            Check::Mismatch(_)
        ));
        assert!(matches!(
            check_refund("r1", 50, &json!({"amount": 40, "status": "succeeded"})),
            Check::Mismatch(_)
        ));
        let a = ack("created", None);
        let mut b = a.clone();
        b.id = "p2".into();
        assert_eq!(
            local_duplicates(std::slice::from_ref(&a)),
            Vec::<String>::new()
        );
        assert_eq!(local_duplicates(&[a.clone(), b]).len(), 1);
        let mut c = a.clone();
        c.merchant = 1; // the same order number at another merchant is no duplicate
        c.id = "p3".into();
        assert!(local_duplicates(&[a, c]).is_empty());
    }
}
