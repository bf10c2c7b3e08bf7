//! The Alipay trade bill (`bill_type=trade`): the `…_业务明细.csv` file of the downloaded zip.
//!
//! ```text
//! #支付宝业务明细查询
//! #账号：[20880211096256330156]
//! #起始日期：[2019年09月16日 00:00:00]   终止日期：[2019年09月17日 00:00:00]
//! #-----------------------------------------业务明细列表----------------------------------------
//! 支付宝交易号,商户订单号,业务类型,…,完成时间,…,订单金额（元）,商家实收（元）,…,退款批次号/请求号,服务费（元）,…
//! 2019091622001458860515315453\t,service_1568601259302\t,交易\t,…
//! #-----------------------------------------业务明细列表结束------------------------------------
//! #交易合计：6笔，商家实收共0.06元，商家优惠共0.00元
//! #退款合计：4笔，商家实收退款共-0.04元，商家优惠退款共0.00元
//! #导出时间：[2019年09月17日 05:46:49]
//! ```
//!
//! Columns are found by header name. Fields are trimmed (many carry a trailing tab). Refund rows
//! (`业务类型=退款`) carry negative amounts; records hold positive amounts and a [`BillKind`]. The
//! file is trusted only whole: after the last record the row counts and `商家实收` sums of payments
//! and refunds are compared with the two summary rows, and a file missing its end marker, summary
//! rows or export-time row is [`BillError::Truncated`].

use std::borrow::Cow;
use std::io::{Cursor, Read as _, Write as _};

use chrono::NaiveDateTime;
use paymux_model::money::{format_minor_units, parse_major_units};

use crate::{BillError, BillKind, BillRecord, BillRecords};

/// Largest detail file accepted from a zip (a guard against decompression bombs).
pub const MAX_BILL_BYTES: u64 = 512 * 1024 * 1024;

const TITLE: &str = "#支付宝业务明细查询";
const LIST_START: &str = "业务明细列表";
const LIST_END: &str = "业务明细列表结束";
const PAYMENT_SUMMARY: &str = "#交易合计";
const REFUND_SUMMARY: &str = "#退款合计";
const EXPORT_TIME: &str = "#导出时间";
const PAYMENT: &str = "交易";
const REFUND: &str = "退款";
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// The 25 columns of the trade bill, in Alipay's order.
pub const COLUMNS: [&str; 25] = [
    "支付宝交易号",
    "商户订单号",
    "业务类型",
    "商品名称",
    "创建时间",
    "完成时间",
    "门店编号",
    "门店名称",
    "操作员",
    "终端号",
    "对方账户",
    "订单金额（元）",
    "商家实收（元）",
    "支付宝红包（元）",
    "集分宝（元）",
    "支付宝优惠（元）",
    "商家优惠（元）",
    "券核销金额（元）",
    "券名称",
    "商家红包消费金额（元）",
    "卡消费金额（元）",
    "退款批次号/请求号",
    "服务费（元）",
    "分润（元）",
    "备注",
];
const C_TRADE_NO: usize = 0;
const C_OUT_TRADE_NO: usize = 1;
const C_TYPE: usize = 2;
const C_FINISHED: usize = 5;
const C_ORDER_AMOUNT: usize = 11;
const C_RECEIVED: usize = 12;
const C_REFUND_NO: usize = 21;
const C_FEE: usize = 22;
/// The columns the parser needs (indexes into [`COLUMNS`]).
const REQUIRED: [usize; 8] = [
    C_TRADE_NO,
    C_OUT_TRADE_NO,
    C_TYPE,
    C_FINISHED,
    C_ORDER_AMOUNT,
    C_RECEIVED,
    C_REFUND_NO,
    C_FEE,
];

/// Parses a trade bill: the downloaded zip (its `…业务明细.csv` entry, not `…业务明细(汇总).csv`) or
/// the CSV itself, GBK or UTF-8. The text is decoded up front; records are produced lazily and the
/// summary check is the iterator's last item when it fails.
pub fn parse_trade_bill(bytes: &[u8]) -> Result<BillRecords, BillError> {
    let text = if is_zip(bytes) {
        decode_text(&detail_entry(bytes)?)?
    } else {
        decode_text(bytes)?
    };
    Ok(Box::new(TradeBillParser {
        text,
        pos: 0,
        state: State::default(),
        done: false,
    }))
}

fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

/// The bytes of the zip's `…业务明细.csv` entry. Alipay writes entry names in GBK without the
/// UTF-8 flag, so names are decoded from their raw bytes.
fn detail_entry(bytes: &[u8]) -> Result<Vec<u8>, BillError> {
    let zip_err = |e: zip::result::ZipError| BillError::Io(format!("zip: {e}"));
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(zip_err)?;
    let mut names = Vec::new();
    let mut chosen = None;
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).map_err(zip_err)?;
        let raw = entry.name_raw();
        let name = match std::str::from_utf8(raw) {
            Ok(s) => s.to_string(),
            Err(_) => encoding_rs::GBK
                .decode_without_bom_handling(raw)
                .0
                .into_owned(),
        };
        if name.ends_with("业务明细.csv") {
            chosen = Some(i);
            break;
        }
        names.push(name);
    }
    let Some(index) = chosen else {
        return Err(BillError::Io(format!(
            "zip has no …业务明细.csv entry (entries: {})",
            names.join(", ")
        )));
    };
    let entry = archive.by_index(index).map_err(zip_err)?;
    let mut out = Vec::new();
    entry
        .take(MAX_BILL_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| BillError::Io(format!("zip entry: {e}")))?;
    if out.len() as u64 > MAX_BILL_BYTES {
        return Err(BillError::Io(format!(
            "detail file larger than {MAX_BILL_BYTES} bytes"
        )));
    }
    Ok(out)
}

/// Valid UTF-8 (BOM stripped) is taken as UTF-8, anything else must be GBK. A file that is cut
/// inside a multi-byte character is reported as truncated.
fn decode_text(bytes: &[u8]) -> Result<String, BillError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let utf8_err = match std::str::from_utf8(bytes) {
        Ok(s) => return Ok(s.to_string()),
        Err(e) => e,
    };
    let gbk = |b: &[u8]| {
        encoding_rs::GBK
            .decode_without_bom_handling_and_without_replacement(b)
            .map(Cow::into_owned)
    };
    let prefix_is_utf8_text = !bytes[..utf8_err.valid_up_to()].is_ascii();
    if utf8_err.error_len().is_none() && prefix_is_utf8_text {
        return Err(BillError::Truncated(
            "the file ends inside a UTF-8 character".into(),
        ));
    }
    if let Some(text) = gbk(bytes) {
        return Ok(text);
    }
    if bytes.len() > 1 && gbk(&bytes[..bytes.len() - 1]).is_some() {
        return Err(BillError::Truncated(
            "the file ends inside a GBK character".into(),
        ));
    }
    Err(BillError::Encoding(format!(
        "neither UTF-8 (invalid at byte {}) nor GBK",
        utf8_err.valid_up_to()
    )))
}

/// Row count and signed `商家实收` sum in fen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    count: u64,
    sum: i64,
}

#[derive(Debug, Default)]
struct State {
    /// 1-based number of the line being read.
    line_no: u64,
    /// Index of each of [`COLUMNS`] in the file's header, once the header has been read.
    columns: Option<(Vec<Option<usize>>, usize)>,
    ended: bool,
    payments: Tally,
    refunds: Tally,
    payment_summary: Option<Tally>,
    refund_summary: Option<Tally>,
    exported: bool,
}

struct TradeBillParser {
    text: String,
    pos: usize,
    state: State,
    done: bool,
}

impl Iterator for TradeBillParser {
    type Item = Result<BillRecord, BillError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let text = self.text.as_str();
        loop {
            if self.pos >= text.len() {
                self.done = true;
                return self.state.finish().err().map(Err);
            }
            let rest = &text[self.pos..];
            let (line, terminated) = match rest.find('\n') {
                Some(n) => (&rest[..n], true),
                None => (rest, false),
            };
            self.pos += line.len() + usize::from(terminated);
            self.state.line_no += 1;
            match self
                .state
                .line(line.strip_suffix('\r').unwrap_or(line), terminated)
            {
                Ok(None) => continue,
                Ok(Some(record)) => return Some(Ok(record)),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl State {
    fn err(&self, message: impl Into<String>) -> BillError {
        BillError::Line {
            line: self.line_no,
            message: message.into(),
        }
    }

    /// One line; `terminated` is false for a last line without a newline (a cut file), where a
    /// line that does not parse is reported as truncation.
    fn line(&mut self, line: &str, terminated: bool) -> Result<Option<BillRecord>, BillError> {
        let result = self.line_inner(line);
        match result {
            Err(BillError::Line { .. }) if !terminated => Err(BillError::Truncated(format!(
                "the last line ({}) is incomplete",
                self.line_no
            ))),
            other => other,
        }
    }

    fn line_inner(&mut self, line: &str) -> Result<Option<BillRecord>, BillError> {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        if trimmed.starts_with('#') {
            self.comment(trimmed)?;
            return Ok(None);
        }
        if self.ended {
            return Err(self.err("data after the end marker"));
        }
        if self.columns.is_none() {
            self.header(trimmed)?;
            return Ok(None);
        }
        self.record(line).map(Some)
    }

    fn comment(&mut self, line: &str) -> Result<(), BillError> {
        if line.contains(LIST_END) {
            if self.columns.is_none() {
                return Err(self.err("end marker before the header row"));
            }
            self.ended = true;
        } else if let Some(rest) = line.strip_prefix(PAYMENT_SUMMARY) {
            if self.payment_summary.is_some() {
                return Err(self.err("a second 交易合计 row"));
            }
            let tally = self.summary(rest, "商家实收共")?;
            self.payment_summary = Some(tally);
        } else if let Some(rest) = line.strip_prefix(REFUND_SUMMARY) {
            if self.refund_summary.is_some() {
                return Err(self.err("a second 退款合计 row"));
            }
            let tally = self.summary(rest, "商家实收退款共")?;
            self.refund_summary = Some(tally);
        } else if line.starts_with(EXPORT_TIME) {
            if !self.ended {
                return Err(self.err("export time before the end marker"));
            }
            if !line.ends_with(']') {
                return Err(self.err("export time row is incomplete"));
            }
            self.exported = true;
        }
        Ok(())
    }

    /// `：6笔，商家实收共0.06元，…` → count 6, sum 6 fen.
    fn summary(&self, rest: &str, label: &str) -> Result<Tally, BillError> {
        if !self.ended {
            return Err(self.err("summary row before the end marker"));
        }
        let bad = || self.err(format!("summary row is not `N笔，{label}X元`"));
        let rest = rest
            .strip_prefix('：')
            .or_else(|| rest.strip_prefix(':'))
            .ok_or_else(bad)?;
        let (count, rest) = rest.split_once('笔').ok_or_else(bad)?;
        let count = count.trim();
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let count: u64 = count.parse().map_err(|_| bad())?;
        let at = rest.find(label).ok_or_else(bad)?;
        let (amount, _) = rest[at + label.len()..].split_once('元').ok_or_else(bad)?;
        let sum = parse_major_units(amount.trim(), 2, true)
            .map_err(|e| self.err(format!("summary amount {:?}: {e}", amount.trim())))?;
        Ok(Tally { count, sum })
    }

    fn header(&mut self, line: &str) -> Result<(), BillError> {
        let fields = split_fields(line).map_err(|m| self.err(m))?;
        let names: Vec<String> = fields
            .iter()
            .map(|f| f.replace('(', "（").replace(')', "）"))
            .collect();
        let index: Vec<Option<usize>> = COLUMNS
            .iter()
            .map(|c| names.iter().position(|n| n == c))
            .collect();
        let missing: Vec<&str> = REQUIRED
            .iter()
            .filter(|&&c| index[c].is_none())
            .map(|&c| COLUMNS[c])
            .collect();
        if !missing.is_empty() {
            return Err(self.err(format!("header row lacks {}", missing.join(", "))));
        }
        self.columns = Some((index, fields.len()));
        Ok(())
    }

    fn record(&mut self, line: &str) -> Result<BillRecord, BillError> {
        let fields = split_fields(line).map_err(|m| self.err(m))?;
        let Some((index, width)) = &self.columns else {
            return Err(self.err("data before the header row"));
        };
        if fields.len() != *width {
            return Err(self.err(format!("{} fields, the header has {width}", fields.len())));
        }
        // Every REQUIRED column was found in the header, and the row has the header's width.
        let field = |c: usize| {
            index[c]
                .and_then(|i| fields.get(i))
                .map(|f| f.as_ref())
                .unwrap_or("")
        };
        let amount = |c: usize| -> Result<i64, BillError> {
            let v = field(c);
            parse_major_units(v, 2, true).map_err(|e| {
                self.err(format!(
                    "{} {:?}: {e}",
                    COLUMNS[c],
                    v.chars().take(32).collect::<String>()
                ))
            })
        };

        let status = field(C_TYPE);
        let kind = match status {
            PAYMENT => BillKind::Payment,
            REFUND => BillKind::Refund,
            other => return Err(self.err(format!("unknown 业务类型 {other:?}"))),
        };
        let channel_trade_no = field(C_TRADE_NO);
        if channel_trade_no.is_empty() {
            return Err(self.err("empty 支付宝交易号"));
        }
        let order_amount = amount(C_ORDER_AMOUNT)?;
        let received = amount(C_RECEIVED)?;
        let fee = if field(C_FEE).is_empty() {
            0
        } else {
            amount(C_FEE)?
        };
        let (amount_minor, out_refund_no) = match kind {
            BillKind::Payment if order_amount >= 0 => (order_amount, None),
            BillKind::Refund if order_amount <= 0 => {
                let no = field(C_REFUND_NO);
                if no.is_empty() {
                    return Err(self.err("refund row without 退款批次号/请求号"));
                }
                (
                    order_amount
                        .checked_neg()
                        .ok_or_else(|| self.err("amount out of range"))?,
                    Some(no.to_string()),
                )
            }
            _ => {
                return Err(self.err(format!(
                    "{status} row with a {} 订单金额",
                    if order_amount < 0 {
                        "negative"
                    } else {
                        "positive"
                    }
                )));
            }
        };
        let finished = field(C_FINISHED);
        let time = NaiveDateTime::parse_from_str(finished, TIME_FORMAT).map_err(|_| {
            self.err(format!(
                "完成时间 {:?} is not yyyy-MM-dd HH:mm:ss",
                finished.chars().take(32).collect::<String>()
            ))
        })?;

        let tally = if kind == BillKind::Payment {
            &mut self.payments
        } else {
            &mut self.refunds
        };
        let sum = tally.sum.checked_add(received);
        let Some(sum) = sum else {
            return Err(self.err("商家实收 sum out of range"));
        };
        tally.sum = sum;
        tally.count += 1;
        if field(C_OUT_TRADE_NO).is_empty() {
            return Err(self.err("商户订单号 is empty"));
        }
        // A payment's fee is charged (written ≤ 0), a refund's returned (≥ 0): another sign is
        // refused, not flipped.
        if (kind == BillKind::Payment && fee > 0) || (kind == BillKind::Refund && fee < 0) {
            return Err(self.err("服务费 has the wrong sign for its 业务类型"));
        }
        Ok(BillRecord {
            channel_trade_no: channel_trade_no.to_string(),
            out_trade_no: field(C_OUT_TRADE_NO).to_string(),
            out_refund_no,
            kind,
            amount_minor,
            fee_minor: fee
                .checked_abs()
                .ok_or_else(|| self.err("服务费 out of range"))?,
            status: status.to_string(),
            time,
        })
    }

    /// After the last line: the file must be complete and agree with its summary rows.
    fn finish(&self) -> Result<(), BillError> {
        let truncated = |what: &str| Err(BillError::Truncated(format!("no {what}")));
        if self.columns.is_none() {
            return truncated("header row");
        }
        if !self.ended {
            return truncated("end marker (业务明细列表结束)");
        }
        let Some(payment_summary) = self.payment_summary else {
            return truncated("#交易合计 row");
        };
        let Some(refund_summary) = self.refund_summary else {
            return truncated("#退款合计 row");
        };
        if !self.exported {
            return truncated("#导出时间 row");
        }
        let mut problems = Vec::new();
        for (name, stated, actual) in [
            (PAYMENT, payment_summary, self.payments),
            (REFUND, refund_summary, self.refunds),
        ] {
            if stated != actual {
                problems.push(format!(
                    "{name}合计 says {} rows / {} yuan, the rows give {} / {}",
                    stated.count,
                    format_minor_units(stated.sum, 2),
                    actual.count,
                    format_minor_units(actual.sum, 2)
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BillError::SummaryMismatch(problems.join("; ")))
        }
    }
}

/// Splits a CSV line into trimmed fields; double-quoted fields (with `""` escapes) may hold commas.
fn split_fields(line: &str) -> Result<Vec<Cow<'_, str>>, &'static str> {
    if !line.contains('"') {
        return Ok(line.split(',').map(|f| Cow::Borrowed(f.trim())).collect());
    }
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        let mut field = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted field"),
                    Some('"') if chars.next_if_eq(&'"').is_some() => field.push('"'),
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
            match chars.peek() {
                None | Some(',') => {}
                Some(_) => return Err("text after a quoted field"),
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                if c == '"' {
                    return Err("quote inside an unquoted field");
                }
                field.push(c);
            }
            field.truncate(field.trim_end().len());
        }
        fields.push(Cow::Owned(field));
        if chars.next().is_none() {
            return Ok(fields);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing (the sandbox serves bills in Alipay's layout)
// ---------------------------------------------------------------------------------------------

/// The header and footer facts of a trade bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeBillMeta {
    /// The merchant's Alipay account (PID), shown as `#账号：[…]`.
    pub account: String,
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
    pub exported_at: NaiveDateTime,
}

fn bill_time(t: &NaiveDateTime) -> String {
    t.format("%Y年%m月%d日 %H:%M:%S").to_string()
}

/// A field as Alipay writes it (trailing tab on text fields), quoted when it holds a comma,
/// quote or line break.
fn text_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"\t", value.replace('"', "\"\""))
    } else {
        format!("{value}\t")
    }
}

/// Renders records in the trade bill layout (UTF-8 text; [`zip_trade_bill`] encodes it as GBK).
/// The sandbox has no discounts: `商家实收` equals `订单金额`. Payment fees are written negative
/// (charged), refund fees positive (returned), as Alipay does. The summary sums are exact; a sum
/// beyond `i64` fen is written as is and rejected by the parser.
pub fn write_trade_bill<'a>(
    meta: &TradeBillMeta,
    records: impl IntoIterator<Item = &'a BillRecord>,
) -> String {
    let dashes = |n: usize| "-".repeat(n);
    let mut out = String::new();
    out.push_str(TITLE);
    out.push('\n');
    out.push_str(&format!("#账号：[{}]\n", meta.account));
    out.push_str(&format!(
        "#起始日期：[{}]   终止日期：[{}]\n",
        bill_time(&meta.start),
        bill_time(&meta.end)
    ));
    out.push_str(&format!("#{}{LIST_START}{}\n", dashes(41), dashes(40)));
    out.push_str(&COLUMNS.join(","));
    out.push('\n');
    let (mut payments, mut refunds) = ((0u64, 0i128), (0u64, 0i128));
    for r in records {
        let (kind, sign, fee) = match r.kind {
            BillKind::Payment => (PAYMENT, 1i128, -i128::from(r.fee_minor)),
            BillKind::Refund => (REFUND, -1, i128::from(r.fee_minor)),
        };
        let amount = sign * i128::from(r.amount_minor);
        let tally = if r.kind == BillKind::Payment {
            &mut payments
        } else {
            &mut refunds
        };
        tally.0 += 1;
        tally.1 += amount;
        let time = r.time.format(TIME_FORMAT).to_string();
        let yuan = format_yuan(amount);
        let row: [String; 25] = [
            text_field(&r.channel_trade_no),
            text_field(&r.out_trade_no),
            text_field(kind),
            String::new(),
            time.clone(),
            time,
            "\t".into(),
            "\t".into(),
            "\t".into(),
            "\t".into(),
            "\t".into(),
            yuan.clone(),
            yuan,
            "0.00".into(),
            "0.00".into(),
            "0.00".into(),
            "0.00".into(),
            "0.00".into(),
            String::new(),
            "0.00\t".into(),
            "0.00".into(),
            text_field(r.out_refund_no.as_deref().unwrap_or("")),
            format_yuan(fee),
            "0.00".into(),
            String::new(),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out.push_str(&format!("#{}{LIST_END}{}\n", dashes(41), dashes(36)));
    out.push_str(&format!(
        "{PAYMENT_SUMMARY}：{}笔，商家实收共{}元，商家优惠共0.00元\n",
        payments.0,
        format_yuan(payments.1)
    ));
    out.push_str(&format!(
        "{REFUND_SUMMARY}：{}笔，商家实收退款共{}元，商家优惠退款共0.00元\n",
        refunds.0,
        format_yuan(refunds.1)
    ));
    out.push_str(&format!(
        "{EXPORT_TIME}：[{}]\n",
        bill_time(&meta.exported_at)
    ));
    out
}

/// Fen as a yuan string with two decimals (wide enough for sums).
fn format_yuan(fen: i128) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let m = fen.unsigned_abs();
    format!("{sign}{}.{:02}", m / 100, m % 100)
}

/// Zips a bill as Alipay serves it: `<stem>_业务明细.csv` (the detail text) and
/// `<stem>_业务明细(汇总).csv` (a summary text), both GBK-encoded. Text that GBK cannot encode is
/// [`BillError::Encoding`].
pub fn zip_trade_bill(stem: &str, detail: &str, summary: &str) -> Result<Vec<u8>, BillError> {
    let gbk = |text: &str| {
        let (bytes, _, had_errors) = encoding_rs::GBK.encode(text);
        if had_errors {
            Err(BillError::Encoding(
                "text has characters GBK cannot encode".into(),
            ))
        } else {
            Ok(bytes.into_owned())
        }
    };
    let io = |e: &dyn std::fmt::Display| BillError::Io(format!("zip: {e}"));
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, text) in [
        (format!("{stem}_业务明细.csv"), detail),
        (format!("{stem}_业务明细(汇总).csv"), summary),
    ] {
        zip.start_file(name, options).map_err(|e| io(&e))?;
        zip.write_all(&gbk(text)?).map_err(|e| io(&e))?;
    }
    Ok(zip.finish().map_err(|e| io(&e))?.into_inner())
}

/// A short `业务明细(汇总)` text for [`zip_trade_bill`]: per-kind counts and totals.
pub fn write_trade_bill_summary<'a>(
    meta: &TradeBillMeta,
    records: impl IntoIterator<Item = &'a BillRecord>,
) -> String {
    let (mut payments, mut refunds, mut fees) = ((0u64, 0i128), (0u64, 0i128), 0i128);
    for r in records {
        match r.kind {
            BillKind::Payment => {
                payments = (payments.0 + 1, payments.1 + i128::from(r.amount_minor));
                fees -= i128::from(r.fee_minor);
            }
            BillKind::Refund => {
                refunds = (refunds.0 + 1, refunds.1 - i128::from(r.amount_minor));
                fees += i128::from(r.fee_minor);
            }
        }
    }
    let total = payments.1 + refunds.1;
    format!(
        "#支付宝业务汇总查询\n#账号：[{}]\n#起始日期：[{}]   终止日期：[{}]\n\
         门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）,服务费（元）,实收净额（元）\n\
         合计,,{},{},{},{},{},{}\n#导出时间：[{}]\n",
        meta.account,
        bill_time(&meta.start),
        bill_time(&meta.end),
        payments.0,
        refunds.0,
        format_yuan(total),
        format_yuan(total),
        format_yuan(fees),
        format_yuan(total + fees),
        bill_time(&meta.exported_at),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn t(h: u32, m: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2019, 9, 16)
            .and_then(|d| d.and_hms_opt(h, m, 0))
            .unwrap()
    }

    fn meta() -> TradeBillMeta {
        TradeBillMeta {
            account: "20880211096256330156".into(),
            start: t(0, 0),
            end: t(23, 59),
            exported_at: t(23, 59),
        }
    }

    fn records() -> Vec<BillRecord> {
        vec![
            BillRecord {
                channel_trade_no: "2019091622001458860515315453".into(),
                out_trade_no: "o,1".into(),
                out_refund_no: None,
                kind: BillKind::Payment,
                amount_minor: 123_456,
                fee_minor: 741,
                status: PAYMENT.into(),
                time: t(10, 55),
            },
            BillRecord {
                channel_trade_no: "2019091622001458860515315453".into(),
                out_trade_no: "o,1".into(),
                out_refund_no: Some("r\"1".into()),
                kind: BillKind::Refund,
                amount_minor: 100,
                fee_minor: 1,
                status: REFUND.into(),
                time: t(11, 0),
            },
        ]
    }

    fn parse(text: &str) -> Vec<Result<BillRecord, BillError>> {
        parse_trade_bill(text.as_bytes()).unwrap().collect()
    }

    #[test]
    fn write_then_parse_round_trips_with_quoting() {
        let text = write_trade_bill(&meta(), &records());
        let parsed: Result<Vec<_>, _> = parse(&text).into_iter().collect();
        assert_eq!(parsed.unwrap(), records());
    }

    #[test]
    fn gbk_zip_round_trips_and_picks_the_detail_entry() {
        let detail = write_trade_bill(&meta(), &records());
        let summary = write_trade_bill_summary(&meta(), &records());
        let zip = zip_trade_bill("20880211096256330156_20190916", &detail, &summary).unwrap();
        let parsed: Result<Vec<_>, _> = parse_trade_bill(&zip).unwrap().collect();
        assert_eq!(parsed.unwrap(), records());
        assert!(matches!(
            zip_trade_bill("x", "😀", ""),
            Err(BillError::Encoding(_))
        ));
        // A zip without a detail entry is an error naming what it holds.
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.start_file(
            "x_业务明细(汇总).csv",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        w.write_all(summary.as_bytes()).unwrap();
        let no_detail = w.finish().unwrap().into_inner();
        assert!(
            matches!(parse_trade_bill(&no_detail), Err(BillError::Io(m)) if m.contains("汇总"))
        );
        assert!(matches!(
            parse_trade_bill(&zip[..zip.len() / 2]),
            Err(BillError::Io(_))
        ));
    }

    #[test]
    fn a_fee_with_the_wrong_sign_or_a_second_summary_is_refused() {
        let text = write_trade_bill(&meta(), &records());
        // The payment's fee is written -7.41 (charged); as +7.41 it would be a fee paid to us.
        assert!(text.contains(",-7.41,"), "{text}");
        let flipped = text.replacen(",-7.41,", ",7.41,", 1);
        let first_summary = text
            .lines()
            .find(|l| l.starts_with(PAYMENT_SUMMARY))
            .unwrap();
        let twice = text.replacen(
            first_summary,
            &format!("{first_summary}\n{first_summary}"),
            1,
        );
        let err = parse(&twice)
            .into_iter()
            .find_map(Result::err)
            .expect("an error");
        assert!(err.to_string().contains("a second 交易合计"), "{err}");
        let err = parse(&flipped)
            .into_iter()
            .find_map(Result::err)
            .expect("an error");
        assert!(err.to_string().contains("wrong sign"), "{err}");
    }

    #[test]
    fn summary_and_structure_errors() {
        let text = write_trade_bill(&meta(), &records());
        let mismatch = text.replace("共1234.56元", "共1234.57元");
        assert!(
            matches!(parse(&mismatch).pop(), Some(Err(BillError::SummaryMismatch(m))) if m.contains("1234.57"))
        );
        let no_export: String = text
            .lines()
            .filter(|l| !l.starts_with(EXPORT_TIME))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(matches!(
            parse(&no_export).pop(),
            Some(Err(BillError::Truncated(_)))
        ));
        let bad_amount = text.replacen("1234.56,1234.56", "1234.56,12x4.56", 1);
        assert!(matches!(
            parse(&bad_amount).pop(),
            Some(Err(BillError::Line { line: 6, .. }))
        ));
        let bad_type = text.replacen("交易\t", "冻结\t", 1);
        assert!(
            matches!(parse(&bad_type).pop(), Some(Err(BillError::Line { line: 6, message })) if message.contains("冻结"))
        );
        let no_header = text.replacen("商家实收（元）", "实收", 1);
        assert!(
            matches!(parse(&no_header).pop(), Some(Err(BillError::Line { line: 5, message })) if message.contains("商家实收"))
        );
        assert!(matches!(
            parse("").pop(),
            Some(Err(BillError::Truncated(_)))
        ));
        assert!(matches!(
            parse_trade_bill(b"\xFF\xFF\xFF"),
            Err(BillError::Encoding(_))
        ));
    }

    #[test]
    fn quoted_fields() {
        assert_eq!(
            split_fields("a\t, \"b,\"\"c\"\t ,d").unwrap(),
            vec!["a", "b,\"c", "d"]
        );
        assert!(split_fields("\"a").is_err());
        assert!(split_fields("\"a\"b").is_err());
        assert!(split_fields("a\"b,\"c\"").is_err());
    }
}
