//! What the machine says: process CPU time from `/proc/<pid>/stat`, `openssl speed rsa2048`, and
//! the RSA bound of code payments derived from it.

use serde::Serialize;

/// RSA-2048 private-key operations (signatures) per WeChat Pay v3 code payment paid at once: the
/// adapter signs the `POST /v3/pay/transactions/codepay` request (merchant key) and the sandbox
/// signs its answer (platform key). No notification follows a code payment.
pub const CODE_SCAN_RSA_SIGNS: u32 = 2;
/// RSA-2048 public-key operations per such payment: the sandbox verifies the request's signature,
/// the adapter verifies the answer's.
pub const CODE_SCAN_RSA_VERIFIES: u32 = 2;

/// `utime + stime` of a process in clock ticks, from the text of `/proc/<pid>/stat`.
pub fn parse_proc_stat(text: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces or ')': fields are counted
    // after the last ')'. There field 3 (state) comes first, so utime (14) and stime (15) are the
    // 12th and 13th.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when that is unavailable).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t: &u64| *t > 0)
        .unwrap_or(100)
}

/// CPU seconds used so far by each process (all its threads), in the order given.
pub fn cpu_seconds(pids: &[u32]) -> anyhow::Result<Vec<f64>> {
    let tck = clock_ticks_per_second() as f64;
    pids.iter()
        .map(|pid| {
            let path = format!("/proc/{pid}/stat");
            let text =
                std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("read {path}: {e}"))?;
            let ticks = parse_proc_stat(&text)
                .ok_or_else(|| anyhow::anyhow!("{path}: unexpected format"))?;
            Ok(ticks as f64 / tck)
        })
        .collect()
}

/// `(sign/s, verify/s)` from the output of `openssl speed rsa2048` (OpenSSL 1.1 and 3.x layouts:
/// the columns are found by the header's names).
pub fn parse_openssl_speed(text: &str) -> Option<(f64, f64)> {
    let header: Vec<&str> = text
        .lines()
        .find(|l| l.contains("sign/s") && l.contains("verify/s"))?
        .split_whitespace()
        .collect();
    let sign_col = header.iter().position(|h| *h == "sign/s")?;
    let verify_col = header.iter().position(|h| *h == "verify/s")?;
    let row = text.lines().find(|l| {
        let t: Vec<&str> = l.split_whitespace().collect();
        t.first() == Some(&"rsa") && t.get(1) == Some(&"2048") && t.get(2) == Some(&"bits")
    })?;
    let values: Vec<&str> = row.split_whitespace().skip(3).collect();
    let num = |s: &str| s.trim_end_matches('s').parse::<f64>().ok();
    Some((num(values.get(sign_col)?)?, num(values.get(verify_col)?)?))
}

/// The code-payment rate the machine's RSA can sustain.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RsaBound {
    pub cores: u32,
    pub sign_per_s: f64,
    pub verify_per_s: f64,
    pub signs_per_payment: u32,
    pub verifies_per_payment: u32,
    /// `cores × sign/s ÷ signs per payment`: every core signing and nothing else.
    pub bound_per_s: f64,
    /// The same with the verifications' time counted too.
    pub bound_with_verifies_per_s: f64,
}

impl RsaBound {
    pub fn new(cores: u32, sign_per_s: f64, verify_per_s: f64) -> RsaBound {
        let signs = CODE_SCAN_RSA_SIGNS;
        let verifies = CODE_SCAN_RSA_VERIFIES;
        let per_payment_s = f64::from(signs) / sign_per_s + f64::from(verifies) / verify_per_s;
        RsaBound {
            cores,
            sign_per_s,
            verify_per_s,
            signs_per_payment: signs,
            verifies_per_payment: verifies,
            bound_per_s: f64::from(cores) * sign_per_s / f64::from(signs),
            bound_with_verifies_per_s: f64::from(cores) / per_payment_s,
        }
    }

    /// Achieved code payments per second as a share of the bound.
    pub fn ratio(&self, achieved_per_s: f64) -> f64 {
        achieved_per_s / self.bound_per_s
    }
}

/// Runs `openssl speed -seconds N rsa2048` and returns its output.
pub fn run_openssl_speed(seconds: u32) -> anyhow::Result<String> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", &seconds.to_string(), "rsa2048"])
        .output()
        .map_err(|e| anyhow::anyhow!("run openssl speed: {e}"))?;
    anyhow::ensure!(out.status.success(), "openssl speed failed: {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_after_the_command_name() {
        let text = "4242 (paymux (node) 1) S 1 4242 4242 0 -1 4194560 9512 0 0 0 1234 567 0 0 20 0 9 0 8137 1030905856 9120 18446744073709551615 1 1 0 0 0 0 0 4096 17630 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_proc_stat(text), Some(1234 + 567));
        assert_eq!(parse_proc_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_proc_stat("garbage"), None);
        // Our own process is readable and has used some CPU.
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_proc_stat(&own).is_some());
    }

    #[test]
    fn openssl_speed_both_layouts() {
        let v3 = "Doing 2048 bits private rsa's for 3s: 4931 2048 bits private RSA's in 3.00s\n\
                  version: 3.0.11\n\
                                    sign    verify    sign/s verify/s\n\
                  rsa 2048 bits 0.000608s 0.000018s   1643.7  55012.3\n";
        assert_eq!(parse_openssl_speed(v3), Some((1643.7, 55012.3)));
        let v32 = "                   sign    verify    encrypt   decrypt   sign/s verify/s  encr./s  decr./s\n\
                   rsa  2048 bits 0.000608s 0.000018s 0.000019s 0.000615s   1644.6  55093.5  52938.6   1625.6\n";
        assert_eq!(parse_openssl_speed(v32), Some((1644.6, 55093.5)));
        assert_eq!(parse_openssl_speed("no table here"), None);
    }

    #[test]
    fn rsa_bound_arithmetic() {
        // 2 cores × 1,500 signs/s ÷ 2 signs per payment = 1,500 payments/s.
        let b = RsaBound::new(2, 1500.0, 50_000.0);
        assert_eq!(b.signs_per_payment, 2);
        assert!((b.bound_per_s - 1500.0).abs() < 1e-9);
        // With verifies: 2 / (2/1500 + 2/50000) = 1456.3…
        assert!((b.bound_with_verifies_per_s - 1456.31).abs() < 0.01);
        assert!((b.ratio(1200.0) - 0.8).abs() < 1e-9);
    }
}
