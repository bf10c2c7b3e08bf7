//! What a run measured: HDR histograms per scenario and per request, errors by code, a per-second
//! time series, and the report (text, JSON, Markdown).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::audit::AuditReport;
use crate::sysinfo::RsaBound;

/// Latencies are recorded in microseconds up to 10 minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Quantiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Quantiles {
    pub fn of(h: &Histogram<u64>) -> Quantiles {
        let ms = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return Quantiles::default();
        }
        Quantiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One second of the run (by completion time).
#[derive(Debug, Clone)]
pub struct Bucket {
    pub ok: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

/// Counters and histograms, measured window only (the time series covers warm-up too).
#[derive(Default)]
pub struct Stats {
    /// End-to-end latency of each scenario's operations, from the intended send time.
    pub scenarios: BTreeMap<&'static str, Histogram<u64>>,
    /// Latency of each kind of request (the first of an operation from its intended send time).
    pub requests: BTreeMap<&'static str, Histogram<u64>>,
    pub errors: BTreeMap<String, u64>,
    /// Payments acknowledged (created) in the measured window, and in the whole run.
    pub payments_measured: u64,
    pub payments_total: u64,
    pub requests_total: u64,
    pub series: Vec<Bucket>,
}

impl Stats {
    fn bucket(&mut self, second: usize) -> &mut Bucket {
        while self.series.len() <= second {
            self.series.push(Bucket {
                ok: 0,
                errors: 0,
                latency: Histogram::new_with_bounds(1, 600_000_000, 2).expect("bounds"),
            });
        }
        &mut self.series[second]
    }

    /// A request answered as expected, `latency_us` after it was due, finishing in `second`.
    pub fn request_ok(
        &mut self,
        kind: &'static str,
        latency_us: u64,
        second: usize,
        measured: bool,
    ) {
        let v = latency_us.max(1);
        let b = self.bucket(second);
        b.ok += 1;
        let _ = b.latency.record(v);
        self.requests_total += 1;
        if measured {
            let _ = self
                .requests
                .entry(kind)
                .or_insert_with(histogram)
                .record(v);
        }
    }

    pub fn request_error(&mut self, kind: &'static str, code: &str, second: usize, measured: bool) {
        self.bucket(second).errors += 1;
        self.requests_total += 1;
        if measured {
            *self.errors.entry(format!("{kind}: {code}")).or_default() += 1;
        }
    }

    pub fn operation_ok(&mut self, scenario: &'static str, latency_us: u64, measured: bool) {
        if measured {
            let _ = self
                .scenarios
                .entry(scenario)
                .or_insert_with(histogram)
                .record(latency_us.max(1));
        }
    }

    pub fn payment_acknowledged(&mut self, measured: bool) {
        self.payments_total += 1;
        if measured {
            self.payments_measured += 1;
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A row of a latency table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub name: String,
    pub ok: u64,
    pub per_s: f64,
    pub latency_ms: Quantiles,
}

/// One point of the time series.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    pub t_s: u64,
    pub warmup: bool,
    pub ok_per_s: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub fn series_points(series: &[Bucket], warmup_s: u64) -> Vec<Point> {
    series
        .iter()
        .enumerate()
        .map(|(t, b)| {
            let q = Quantiles::of(&b.latency);
            Point {
                t_s: t as u64,
                warmup: (t as u64) < warmup_s,
                ok_per_s: b.ok,
                errors: b.errors,
                p50_ms: q.p50,
                p99_ms: q.p99,
            }
        })
        .collect()
}

/// Server CPU time over the run, from `/proc`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuReport {
    pub pids: Vec<u32>,
    pub cpu_seconds: f64,
    pub payments: u64,
    pub requests: u64,
    pub us_per_payment: f64,
    pub us_per_request: f64,
}

impl CpuReport {
    pub fn new(
        pids: Vec<u32>,
        before: &[f64],
        after: &[f64],
        payments: u64,
        requests: u64,
    ) -> Self {
        let cpu: f64 = after.iter().zip(before).map(|(a, b)| a - b).sum();
        CpuReport {
            pids,
            cpu_seconds: cpu,
            payments,
            requests,
            us_per_payment: if payments > 0 {
                cpu * 1e6 / payments as f64
            } else {
                0.0
            },
            us_per_request: if requests > 0 {
                cpu * 1e6 / requests as f64
            } else {
                0.0
            },
        }
    }
}

/// The RSA bound and what the run achieved against it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RsaReport {
    #[serde(flatten)]
    pub bound: RsaBound,
    pub code_scan_per_s: f64,
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mix: String,
    pub url: String,
    pub target_rate_per_s: u32,
    pub warmup_s: u64,
    pub duration_s: u64,
    pub concurrency: usize,
    pub merchants: usize,
    pub stores: u32,
    pub measured_s: f64,
    pub operations_per_s: f64,
    pub requests: u64,
    pub requests_per_s: f64,
    pub payments: u64,
    pub payments_per_s: f64,
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub scenarios: Vec<Row>,
    pub requests_by_kind: Vec<Row>,
    pub series: Vec<Point>,
    pub server_cpu: Option<CpuReport>,
    pub rsa: Option<RsaReport>,
    pub audit: Option<AuditReport>,
}

pub fn rows(hists: &BTreeMap<&'static str, Histogram<u64>>, measured_s: f64) -> Vec<Row> {
    hists
        .iter()
        .map(|(name, h)| Row {
            name: (*name).to_string(),
            ok: h.len(),
            per_s: h.len() as f64 / measured_s,
            latency_ms: Quantiles::of(h),
        })
        .collect()
}

fn table_text(out: &mut String, title: &str, rows: &[Row]) {
    let _ = writeln!(
        out,
        "  {title:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "ok", "/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for r in rows {
        let q = &r.latency_ms;
        let _ = writeln!(
            out,
            "  {:<28} {:>9} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            r.name, r.ok, r.per_s, q.p50, q.p90, q.p99, q.p99_9, q.max
        );
    }
}

impl Report {
    /// The end-of-run summary printed to the terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "result (mix {}, measured {:.1} s after {} s warm-up, target {} operations/s):",
            self.mix, self.measured_s, self.warmup_s, self.target_rate_per_s
        );
        let _ = writeln!(
            out,
            "  achieved: {:.0} operations/s, {:.0} requests/s, {:.0} payments/s ({} requests, {} payments)",
            self.operations_per_s,
            self.requests_per_s,
            self.payments_per_s,
            self.requests,
            self.payments
        );
        table_text(&mut out, "scenario (end to end)", &self.scenarios);
        table_text(&mut out, "request", &self.requests_by_kind);
        let _ = writeln!(out, "  errors: {}", self.errors);
        for (code, n) in &self.errors_by_code {
            let _ = writeln!(out, "    {code}: {n}");
        }
        if let Some(c) = &self.server_cpu {
            let _ = writeln!(
                out,
                "  router CPU (pids {:?}): {:.2} s for {} payments / {} requests: {:.1} µs per payment, {:.1} µs per request",
                c.pids, c.cpu_seconds, c.payments, c.requests, c.us_per_payment, c.us_per_request
            );
        }
        if let Some(r) = &self.rsa {
            let b = &r.bound;
            let _ = writeln!(
                out,
                "  RSA-2048: openssl speed {:.1} sign/s, {:.1} verify/s per core; {} signs + {} verifies per code payment",
                b.sign_per_s, b.verify_per_s, b.signs_per_payment, b.verifies_per_payment
            );
            let _ = writeln!(
                out,
                "  RSA bound: {} × {:.1} ÷ {} = {:.0} code payments/s (with verifies: {:.0}/s); achieved {:.0}/s = {:.1}% of the bound",
                b.cores,
                b.sign_per_s,
                b.signs_per_payment,
                b.bound_per_s,
                b.bound_with_verifies_per_s,
                r.code_scan_per_s,
                r.ratio * 100.0
            );
        }
        if let Some(a) = &self.audit {
            out.push_str(&a.text());
        }
        out
    }

    /// The report as Markdown.
    pub fn markdown(&self, chart: Option<&str>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# paymux-loadtest report\n");
        let _ = writeln!(
            out,
            "Mix `{}` against {}; target {} operations/s for {} s after {} s warm-up, at most {} in flight; {} merchants × {} stores.\n",
            self.mix,
            self.url,
            self.target_rate_per_s,
            self.duration_s,
            self.warmup_s,
            self.concurrency,
            self.merchants,
            self.stores
        );
        let _ = writeln!(
            out,
            "Achieved **{:.0} operations/s, {:.0} requests/s, {:.0} payments/s** over {:.1} s; errors: **{}**.\n",
            self.operations_per_s,
            self.requests_per_s,
            self.payments_per_s,
            self.measured_s,
            self.errors
        );
        for (title, rows) in [
            ("scenario (end to end)", &self.scenarios),
            ("request", &self.requests_by_kind),
        ] {
            let _ = writeln!(
                out,
                "| {title} | ok | /s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
            for r in rows {
                let q = &r.latency_ms;
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    r.name, r.ok, r.per_s, q.p50, q.p90, q.p99, q.p99_9, q.max
                );
            }
            out.push('\n');
        }
        if !self.errors_by_code.is_empty() {
            let _ = writeln!(out, "| error | count |\n|---|---:|");
            for (code, n) in &self.errors_by_code {
                let _ = writeln!(out, "| {code} | {n} |");
            }
            out.push('\n');
        }
        if let Some(c) = &self.server_cpu {
            let _ = writeln!(
                out,
                "Router CPU time (`/proc/<pid>/stat`, pids {:?}): {:.2} s for {} payments and {} requests — **{:.1} µs per payment**, {:.1} µs per request.\n",
                c.pids, c.cpu_seconds, c.payments, c.requests, c.us_per_payment, c.us_per_request
            );
        }
        if let Some(r) = &self.rsa {
            let b = &r.bound;
            let _ = writeln!(
                out,
                "RSA-2048 bound: `openssl speed` {:.1} sign/s and {:.1} verify/s per core; a WeChat v3 code payment costs {} signatures and {} verifications, so the bound is {} × {:.1} ÷ {} = **{:.0} code payments/s** ({:.0}/s counting verifications too). Achieved {:.0}/s: **{:.1}%** of the bound.\n",
                b.sign_per_s,
                b.verify_per_s,
                b.signs_per_payment,
                b.verifies_per_payment,
                b.cores,
                b.sign_per_s,
                b.signs_per_payment,
                b.bound_per_s,
                b.bound_with_verifies_per_s,
                r.code_scan_per_s,
                r.ratio * 100.0
            );
        }
        if let Some(a) = &self.audit {
            let _ = writeln!(out, "## Post-run audit\n\n```text\n{}```\n", a.text());
        }
        if let Some(chart) = chart {
            let _ = writeln!(out, "![throughput and latency over time]({chart})\n");
        }
        let _ = writeln!(
            out,
            "| t (s) | ok/s | errors | p50 ms | p99 ms |\n|---:|---:|---:|---:|---:|"
        );
        for p in &self.series {
            let _ = writeln!(
                out,
                "| {}{} | {} | {} | {:.2} | {:.2} |",
                p.t_s,
                if p.warmup { " (warm-up)" } else { "" },
                p.ok_per_s,
                p.errors,
                p.p50_ms,
                p.p99_ms
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut s = Stats::default();
        for v in 1..=1000u64 {
            s.request_ok("create", v * 1000, (v / 500) as usize, true);
        }
        s.request_error("create", "422 validation_failed", 0, true);
        s.request_error("create", "timeout", 3, false); // warm-up: in the series only
        s.operation_ok("create", 5_000, true);
        let measured_s = 2.0;
        Report {
            mix: "create=1".into(),
            url: "http://127.0.0.1:1".into(),
            target_rate_per_s: 500,
            warmup_s: 1,
            duration_s: 2,
            concurrency: 8,
            merchants: 1,
            stores: 1,
            measured_s,
            operations_per_s: 500.0,
            requests: 1000,
            requests_per_s: 500.0,
            payments: 1000,
            payments_per_s: 500.0,
            errors: s.error_count(),
            errors_by_code: s.errors.clone(),
            scenarios: rows(&s.scenarios, measured_s),
            requests_by_kind: rows(&s.requests, measured_s),
            series: series_points(&s.series, 1),
            server_cpu: Some(CpuReport::new(vec![7], &[1.0], &[1.5], 1000, 2000)),
            rsa: None,
            audit: None,
        }
    }

    #[test]
    fn quantiles_in_milliseconds() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let q = Quantiles::of(&h);
        assert_eq!(q.count, 1000);
        assert!((q.p50 - 500.0).abs() < 1.0, "{q:?}");
        assert!((q.p99 - 990.0).abs() < 1.0, "{q:?}");
        assert!((q.max - 1000.0).abs() < 1.0, "{q:?}");
        assert_eq!(Quantiles::of(&histogram()), Quantiles::default());
    }

    #[test]
    fn report_formats() {
        let r = sample();
        assert_eq!(r.errors, 1);
        assert_eq!(r.requests_by_kind[0].ok, 1000);
        assert!((r.requests_by_kind[0].per_s - 500.0).abs() < 1e-9);
        assert_eq!(r.series.len(), 4);
        assert!(r.series[0].warmup && !r.series[1].warmup);
        assert_eq!(r.series[3].errors, 1);
        assert_eq!(r.series[1].ok_per_s, 500);
        let cpu = r.server_cpu.as_ref().unwrap();
        assert!((cpu.us_per_payment - 500.0).abs() < 1e-6);
        let text = r.text();
        assert!(text.contains("create: 422 validation_failed: 1"), "{text}");
        assert!(text.contains("500.0 µs per payment"), "{text}");
        let md = r.markdown(Some("run.svg"));
        assert!(md.contains("| create | 1000 | 500 |"), "{md}");
        assert!(md.contains("![throughput and latency over time](run.svg)"));
        assert!(md.contains("| 0 (warm-up) |"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["errors_by_code"]["create: 422 validation_failed"], 1);
        assert_eq!(json["requests_by_kind"][0]["latency_ms"]["count"], 1000);
    }
}
