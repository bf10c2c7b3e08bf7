//! `paymux-reconcile-bench`: one day of N channel records against N platform records, end to end
//! from bill bytes: a WeChat ALL bill of N lines is rendered, then parsed as a stream (with its
//! summary check) and reconciled against N platform records, with a few of every class planted.
//! Prints records/s and the process's peak resident memory. Not a timed test.
//!
//! `cargo run --release -p paymux-reconcile --bin paymux-reconcile-bench -- [N]` (default 1,000,000)

use std::time::Instant;

use chrono::NaiveDate;
use paymux_channels::BillKind;
use paymux_channels::wechat::bill::{BillRow, parse_trade_bill, write_trade_bill};
use paymux_reconcile::{Class, Options, PlatformRecord, PlatformStatus, reconcile};

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let day = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
    let started = Instant::now();
    let rows: Vec<BillRow> = (0..n)
        .map(|i| {
            let amount = 100 + (i as i64 % 50_000);
            BillRow {
                time: day
                    .and_hms_opt(
                        ((i / 3600) % 24) as u32,
                        ((i / 60) % 60) as u32,
                        (i % 60) as u32,
                    )
                    .unwrap(),
                appid: "wx0000000000000000".into(),
                mchid: "1900000001".into(),
                transaction_id: format!("42000000002026112200{i:08}"),
                out_trade_no: format!("T{i:012}"),
                openid: "o000000000000000000000000000".into(),
                trade_type: "NATIVE".into(),
                trade_state: "SUCCESS".into(),
                order_fen: amount,
                refund_id: None,
                out_refund_no: None,
                refund_fen: 0,
                description: "bench".into(),
                // Planted: every 100,000th line carries a different fee.
                fee_milli_fen: if i % 100_000 == 7 {
                    99_000
                } else {
                    (amount * 60 + 5_000) / 10_000 * 1000
                },
                rate_bps: 60,
            }
        })
        .collect();
    let bytes = write_trade_bill(&rows);
    drop(rows);
    let rendered = started.elapsed();
    let bill_mib = bytes.len() as f64 / 1048576.0;

    let platform = (0..n).map(|i| {
        let amount = 100 + (i as i64 % 50_000);
        PlatformRecord {
            kind: BillKind::Payment,
            // Planted: every 100,000th record is unknown to the channel, and one in 100,000 differs.
            out_trade_no: if i % 100_000 == 3 {
                format!("X{i:012}")
            } else {
                format!("T{i:012}")
            },
            out_refund_no: None,
            amount_minor: if i % 100_000 == 5 { amount + 1 } else { amount },
            status: if i % 100_000 == 9 {
                PlatformStatus::Processing
            } else {
                PlatformStatus::Succeeded
            },
            expected_fee_minor: Some((amount * 60 + 5_000) / 10_000),
            time_us: 0,
        }
    });
    let t = Instant::now();
    let records = parse_trade_bill(bytes).expect("header");
    let out = reconcile(
        platform,
        records,
        Options {
            day_end_us: 86_400_000_000,
            carry_over_window_us: 600_000_000,
        },
    )
    .expect("reconciled");
    let took = t.elapsed();
    let s = &out.summary;
    println!(
        "reconciled {} channel records against {} platform records ({bill_mib:.0} MiB bill, rendered in {:.1} s)",
        s.channel_records,
        s.platform_records,
        rendered.as_secs_f64()
    );
    for c in Class::ALL {
        println!("  {:<20} {:>9}", c.as_str(), s.count(c));
    }
    println!(
        "parse + match: {:.2} s, {:.0} channel records/s; peak RSS {:.0} MiB",
        took.as_secs_f64(),
        s.channel_records as f64 / took.as_secs_f64(),
        peak_rss_mib().unwrap_or(f64::NAN)
    );
}
