//! The daily transaction file (对账文件) of a UnionPay QR merchant — **our own documented layout**,
//! modelled on UnionPay's ACP settlement files (one line per settled transaction, amounts in fen,
//! `queryId` as the key) but `|`-separated instead of fixed-width, with a header and a trailer that
//! make truncation and tampering detectable.
//!
//! The file is UTF-8 text; lines end with `\n` (a `\r` before it is accepted); no blank lines. Every
//! value is ASCII letters or digits, so `|` never occurs inside a value.
//!
//! | line | fields (`|`-separated) |
//! |---|---|
//! | header, first line | `H` · format `UPQR1` · `merId` (15 letters/digits) · settlement date `yyyyMMdd` · number of `D` lines · net amount in fen (payments − refunds, may be negative) |
//! | detail, one per transaction | `D` · `queryId` (1–40) · `orderId` (8–40) · `origOrderId` (the paid order of a refund; empty for payments) · `txnType` (`01` payment, `04` refund) · `txnAmt` fen (1–12 digits, > 0) · fee fen (1–12 digits; for a refund, the fee given back) · `respCode` (always `00`: the file lists settled transactions only) · `txnTime` `yyyyMMddHHmmss` · `settleDate` `yyyyMMdd` (the header's date) |
//! | trailer, last line | `T` · payment count · payment amount · payment fees · refund count · refund amount · refund fees (fen) |
//!
//! For example:
//!
//! ```text
//! H|UPQR1|777290058110048|20240301|2|700
//! D|202403011200000000001|ORDER0000001||01|1000|6|00|20240301120000|20240301
//! D|202403011530000000002|REFUND000001|ORDER0000001|04|300|2|00|20240301153000|20240301
//! T|1|1000|6|1|300|2
//! ```
//!
//! Reading ([`read_bill`]) streams the detail lines as [`BillRecord`]s (payments: `out_trade_no` =
//! `orderId`; refunds: `out_trade_no` = `origOrderId`, `out_refund_no` = `orderId`; `status` = `respCode`,
//! `time` = `txnTime`). When the trailer is reached its counts and sums, and the header's count and net
//! amount, are compared with what was read: a difference is [`BillError::SummaryMismatch`]. A file that
//! ends before its trailer (or inside a line) is [`BillError::Truncated`]; a malformed line is
//! [`BillError::Line`] with its 1-based number; bytes that are not UTF-8 are [`BillError::Encoding`].
//! The first error ends the stream.

use std::io::{BufRead, Read as _};

use chrono::{NaiveDate, NaiveDateTime};

use super::messages::{check_order_id, check_query_id, parse_fen, parse_txn_time};
use crate::types::{BillError, BillKind, BillRecord, BillRecords};

/// The format tag in the header.
pub const FORMAT: &str = "UPQR1";
/// The longest line accepted, in bytes.
pub const MAX_LINE: usize = 1024;
const DATE_FORMAT: &str = "%Y%m%d";

/// What the header line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillHeader {
    pub mer_id: String,
    /// The settlement date the file covers.
    pub date: NaiveDate,
    /// The number of detail lines.
    pub count: u64,
    /// Payments minus refunds, fen.
    pub net_amount: i64,
}

fn line_error(line: u64, message: impl Into<String>) -> BillError {
    BillError::Line {
        line,
        message: message.into(),
    }
}

fn shown(value: &str) -> String {
    format!("{:?}", value.chars().take(40).collect::<String>())
}

fn parse_date(value: &str) -> Option<NaiveDate> {
    if value.len() != 8 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(value, DATE_FORMAT).ok()
}

/// A non-negative count: 1–18 digits.
fn parse_count(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// A signed amount: an optional `-` and 1–18 digits.
fn parse_signed(value: &str) -> Option<i64> {
    let digits = value.strip_prefix('-').unwrap_or(value);
    parse_count(digits)?;
    value.parse().ok()
}

fn parse_header(line: &str) -> Result<BillHeader, BillError> {
    let f: Vec<&str> = line.split('|').collect();
    if f.first() != Some(&"H") {
        return Err(line_error(1, "the first line is not the header (`H|…`)"));
    }
    if f.len() != 6 {
        return Err(line_error(
            1,
            format!("header has {} fields, expected 6", f.len()),
        ));
    }
    if f[1] != FORMAT {
        return Err(line_error(
            1,
            format!("unknown format {}, expected {FORMAT}", shown(f[1])),
        ));
    }
    if f[2].len() != 15 || !f[2].bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(line_error(
            1,
            format!("merId {} is not 15 letters or digits", shown(f[2])),
        ));
    }
    let date = parse_date(f[3])
        .ok_or_else(|| line_error(1, format!("date {} is not yyyyMMdd", shown(f[3]))))?;
    let count = parse_count(f[4])
        .ok_or_else(|| line_error(1, format!("count {} is not a number", shown(f[4]))))?;
    let net_amount = parse_signed(f[5])
        .ok_or_else(|| line_error(1, format!("net amount {} is not fen", shown(f[5]))))?;
    Ok(BillHeader {
        mer_id: f[2].to_string(),
        date,
        count,
        net_amount,
    })
}

/// Running sums of one kind of line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sums {
    count: u64,
    amount: i64,
    fee: i64,
}

impl Sums {
    fn add(&mut self, amount: i64, fee: i64) -> Option<()> {
        self.count = self.count.checked_add(1)?;
        self.amount = self.amount.checked_add(amount)?;
        self.fee = self.fee.checked_add(fee)?;
        Some(())
    }
}

fn parse_detail(line_no: u64, line: &str, date: NaiveDate) -> Result<BillRecord, BillError> {
    let err = |m: String| line_error(line_no, m);
    let f: Vec<&str> = line.split('|').collect();
    if f.len() != 10 {
        return Err(err(format!(
            "detail line has {} fields, expected 10",
            f.len()
        )));
    }
    let (query_id, order_id, orig_order_id, txn_type) = (f[1], f[2], f[3], f[4]);
    check_query_id("queryId", query_id).map_err(|e| err(e.to_string()))?;
    check_order_id(order_id).map_err(|e| err(e.to_string()))?;
    let kind = match txn_type {
        "01" => BillKind::Payment,
        "04" => BillKind::Refund,
        other => {
            return Err(err(format!(
                "txnType {} is neither 01 nor 04",
                shown(other)
            )));
        }
    };
    match kind {
        BillKind::Payment if !orig_order_id.is_empty() => {
            return Err(err("a payment line must not have an origOrderId".into()));
        }
        BillKind::Refund => {
            check_order_id(orig_order_id).map_err(|e| err(format!("origOrderId: {e}")))?
        }
        BillKind::Payment => {}
    }
    let amount = parse_fen("txnAmt", f[5]).map_err(|e| err(e.to_string()))?;
    if amount == 0 {
        return Err(err("txnAmt must be positive".into()));
    }
    let fee = parse_fen("fee", f[6]).map_err(|e| err(e.to_string()))?;
    if f[7] != "00" {
        return Err(err(format!(
            "respCode {} is not 00 (only settled transactions are listed)",
            shown(f[7])
        )));
    }
    let time: NaiveDateTime = parse_txn_time(f[8]).map_err(|e| err(e.to_string()))?;
    match parse_date(f[9]) {
        Some(d) if d == date => {}
        Some(_) => {
            return Err(err(format!(
                "settleDate {} is not the file's date {}",
                f[9],
                date.format(DATE_FORMAT)
            )));
        }
        None => return Err(err(format!("settleDate {} is not yyyyMMdd", shown(f[9])))),
    }
    let (out_trade_no, out_refund_no) = match kind {
        BillKind::Payment => (order_id.to_string(), None),
        BillKind::Refund => (orig_order_id.to_string(), Some(order_id.to_string())),
    };
    Ok(BillRecord {
        channel_trade_no: query_id.to_string(),
        out_trade_no,
        out_refund_no,
        kind,
        amount_minor: amount,
        fee_minor: fee,
        status: f[7].to_string(),
        time,
    })
}

/// A line as read: its text and whether it ended with a line break.
struct RawLine {
    text: String,
    terminated: bool,
}

struct BillReader<R> {
    reader: R,
    line_no: u64,
    header: BillHeader,
    payments: Sums,
    refunds: Sums,
    done: bool,
}

fn read_line<R: BufRead>(reader: &mut R, line_no: u64) -> Result<Option<RawLine>, BillError> {
    let mut buf = Vec::new();
    let n = reader
        .by_ref()
        .take(MAX_LINE as u64 + 2)
        .read_until(b'\n', &mut buf)
        .map_err(|e| BillError::Io(e.to_string()))?;
    if n == 0 {
        return Ok(None);
    }
    let terminated = buf.last() == Some(&b'\n');
    if terminated {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.len() > MAX_LINE {
        return Err(line_error(
            line_no,
            format!("line is longer than {MAX_LINE} bytes"),
        ));
    }
    let text =
        String::from_utf8(buf).map_err(|e| BillError::Encoding(format!("line {line_no}: {e}")))?;
    Ok(Some(RawLine { text, terminated }))
}

impl<R: BufRead> BillReader<R> {
    fn next_line(&mut self) -> Result<Option<RawLine>, BillError> {
        let line = read_line(&mut self.reader, self.line_no + 1)?;
        if line.is_some() {
            self.line_no += 1;
        }
        Ok(line)
    }

    fn check_trailer(&self, line: &str) -> Result<(), BillError> {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() != 7 {
            return Err(line_error(
                self.line_no,
                format!("trailer has {} fields, expected 7", f.len()),
            ));
        }
        let mut n = [0i64; 6];
        for (slot, value) in n.iter_mut().zip(&f[1..]) {
            *slot = parse_count(value)
                .and_then(|v| i64::try_from(v).ok())
                .ok_or_else(|| {
                    line_error(
                        self.line_no,
                        format!("trailer value {} is not a number", shown(value)),
                    )
                })?;
        }
        let stated = [
            (
                "payment count",
                n[0],
                i64::try_from(self.payments.count).unwrap_or(i64::MAX),
            ),
            ("payment amount", n[1], self.payments.amount),
            ("payment fees", n[2], self.payments.fee),
            (
                "refund count",
                n[3],
                i64::try_from(self.refunds.count).unwrap_or(i64::MAX),
            ),
            ("refund amount", n[4], self.refunds.amount),
            ("refund fees", n[5], self.refunds.fee),
        ];
        for (what, stated, read) in stated {
            if stated != read {
                return Err(BillError::SummaryMismatch(format!(
                    "trailer {what} is {stated}, the lines give {read}"
                )));
            }
        }
        let count = self.payments.count + self.refunds.count;
        if self.header.count != count {
            return Err(BillError::SummaryMismatch(format!(
                "header count is {}, the file has {count} lines",
                self.header.count
            )));
        }
        let net = self.payments.amount.checked_sub(self.refunds.amount);
        if net != Some(self.header.net_amount) {
            return Err(BillError::SummaryMismatch(format!(
                "header net amount is {}, the lines give {}",
                self.header.net_amount,
                net.map_or_else(|| "an overflow".to_string(), |n| n.to_string())
            )));
        }
        Ok(())
    }

    fn step(&mut self) -> Result<Option<BillRecord>, BillError> {
        let Some(line) = self.next_line()? else {
            return Err(BillError::Truncated(format!(
                "no trailer after {} detail lines",
                self.payments.count + self.refunds.count
            )));
        };
        if line.text.starts_with("T|") {
            self.check_trailer(&line.text)?;
            if self.next_line()?.is_some() {
                return Err(line_error(self.line_no, "data after the trailer"));
            }
            return Ok(None);
        }
        if !line.terminated {
            return Err(BillError::Truncated(format!(
                "line {} ends without a line break",
                self.line_no
            )));
        }
        if !line.text.starts_with("D|") {
            return Err(line_error(
                self.line_no,
                "expected a detail (`D|…`) or trailer (`T|…`) line",
            ));
        }
        let record = parse_detail(self.line_no, &line.text, self.header.date)?;
        let sums = match record.kind {
            BillKind::Payment => &mut self.payments,
            BillKind::Refund => &mut self.refunds,
        };
        sums.add(record.amount_minor, record.fee_minor)
            .ok_or_else(|| line_error(self.line_no, "totals overflow"))?;
        Ok(Some(record))
    }
}

impl<R: BufRead> Iterator for BillReader<R> {
    type Item = Result<BillRecord, BillError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Reads the header now and returns it with the detail lines as a stream (see the module docs).
pub fn read_bill<R: BufRead + Send + 'static>(
    mut reader: R,
) -> Result<(BillHeader, BillRecords), BillError> {
    let line = read_line(&mut reader, 1)?
        .ok_or_else(|| BillError::Truncated("the file is empty".into()))?;
    if !line.terminated {
        return Err(BillError::Truncated(
            "the file ends inside its header".into(),
        ));
    }
    let header = parse_header(&line.text)?;
    let records = BillReader {
        reader,
        line_no: 1,
        header: header.clone(),
        payments: Sums::default(),
        refunds: Sums::default(),
        done: false,
    };
    Ok((header, Box::new(records)))
}

/// Reads a whole bill from memory (tests, small files).
pub fn read_bill_bytes(bytes: &[u8]) -> Result<(BillHeader, BillRecords), BillError> {
    read_bill(std::io::Cursor::new(bytes.to_vec()))
}

/// Renders a bill for `mer_id` and settlement `date`. Every record must be representable: ids of the
/// documented form, positive amounts, a refund with its `out_refund_no`, `status` `00`; the error
/// names the line the record would have had.
pub fn write_bill(
    mer_id: &str,
    date: NaiveDate,
    records: &[BillRecord],
) -> Result<String, BillError> {
    if mer_id.len() != 15 || !mer_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(line_error(
            1,
            format!("merId {} is not 15 letters or digits", shown(mer_id)),
        ));
    }
    let settle = date.format(DATE_FORMAT).to_string();
    let mut payments = Sums::default();
    let mut refunds = Sums::default();
    let mut body = String::new();
    for (i, r) in records.iter().enumerate() {
        let line_no = i as u64 + 2;
        let (order_id, orig, txn_type, sums) = match (r.kind, &r.out_refund_no) {
            (BillKind::Payment, _) => (r.out_trade_no.as_str(), "", "01", &mut payments),
            (BillKind::Refund, Some(refund_no)) => (
                refund_no.as_str(),
                r.out_trade_no.as_str(),
                "04",
                &mut refunds,
            ),
            (BillKind::Refund, None) => {
                return Err(line_error(
                    line_no,
                    "a refund record needs its out_refund_no",
                ));
            }
        };
        if r.fee_minor < 0 {
            return Err(line_error(line_no, "fee must not be negative"));
        }
        let line = format!(
            "D|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            r.channel_trade_no,
            order_id,
            orig,
            txn_type,
            r.amount_minor,
            r.fee_minor,
            r.status,
            r.time.format(super::messages::TXN_TIME_FORMAT),
            settle
        );
        // The writer accepts exactly what the reader accepts.
        let parsed = parse_detail(line_no, &line, date)?;
        if &parsed != r {
            return Err(line_error(
                line_no,
                "record cannot be represented (time precision or ids)",
            ));
        }
        sums.add(r.amount_minor, r.fee_minor)
            .ok_or_else(|| line_error(line_no, "totals overflow"))?;
        body.push_str(&line);
        body.push('\n');
    }
    let net = payments
        .amount
        .checked_sub(refunds.amount)
        .ok_or_else(|| line_error(1, "net amount overflows"))?;
    let mut out = format!("H|{FORMAT}|{mer_id}|{settle}|{}|{net}\n", records.len());
    out.push_str(&body);
    out.push_str(&format!(
        "T|{}|{}|{}|{}|{}|{}\n",
        payments.count, payments.amount, payments.fee, refunds.count, refunds.amount, refunds.fee
    ));
    Ok(out)
}
