//! The WeChat Pay trade bill (`bill_type=ALL`): a CSV whose header row is plain, whose detail and
//! summary values each start with a backtick, with amounts in yuan (fees with five decimals). Real
//! files may start with a UTF-8 BOM and use `\r\n`.
//!
//! [`parse_trade_bill`] streams [`BillRecord`]s and, when the last detail row has been read, checks
//! the summary rows: the row count and every total (应结订单总金额, 退款总金额, 充值券退款总金额,
//! 手续费总金额, 订单总金额, 申请退款总金额) must equal the sums of the detail rows, exactly.
//!
//! Normalisation: a row whose 交易状态 is `REFUND` (and which carries a 商户退款单号) is a refund with
//! `amount_minor` = 申请退款金额; any other row is a payment with `amount_minor` = 订单金额. Fees are kept
//! in units of 0.001 fen while summing (the file has five decimals) and rounded half-up to fen per row.

use chrono::NaiveDateTime;

use crate::{BillError, BillKind, BillRecord, BillRecords};

/// The 27 columns of an ALL bill, in order.
pub const ALL_HEADER: [&str; 27] = [
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
];

/// The summary header row.
pub const SUMMARY_HEADER: [&str; 7] = [
    "总交易单数",
    "应结订单总金额",
    "退款总金额",
    "充值券退款总金额",
    "手续费总金额",
    "订单总金额",
    "申请退款总金额",
];

const COL_TIME: usize = 0;
const COL_TRANSACTION_ID: usize = 5;
const COL_OUT_TRADE_NO: usize = 6;
const COL_TRADE_STATE: usize = 9;
const COL_SETTLEMENT: usize = 12;
const COL_REFUND_ID: usize = 14;
const COL_OUT_REFUND_NO: usize = 15;
const COL_REFUND: usize = 16;
const COL_COUPON_REFUND: usize = 17;
const COL_FEE: usize = 22;
const COL_ORDER: usize = 24;
const COL_REFUND_REQUESTED: usize = 25;

/// Parses an amount in yuan with at most `scale` decimals into units of 10^-scale yuan. Accepts a
/// leading `-`. Exact: no floating point.
pub fn parse_decimal(text: &str, scale: u32) -> Option<i64> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty()
        || frac.len() > scale as usize
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    if digits.contains('.') && frac.is_empty() {
        return None;
    }
    let mut v: i64 = 0;
    for b in int.bytes() {
        v = v.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    for i in 0..scale as usize {
        let d = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        v = v.checked_mul(10)?.checked_add(d)?;
    }
    Some(if neg { -v } else { v })
}

/// Formats units of 10^-scale yuan.
pub fn format_decimal(v: i64, scale: u32) -> String {
    let p = 10i64.pow(scale);
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        a / p as u64,
        a % p as u64,
        width = scale as usize
    )
}

/// Rounds units of 0.001 fen half-up (away from zero) to fen. In i128: `v + 500` overflows i64 for
/// a fee near i64::MAX (and `-v` for i64::MIN); the quotient always fits back.
fn milli_fen_to_fen(v: i64) -> i64 {
    let v = i128::from(v);
    let fen = if v >= 0 {
        (v + 500) / 1000
    } else {
        -((-v + 500) / 1000)
    };
    i64::try_from(fen).expect("|v| / 1000 + 1 fits in i64")
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    rows: i64,
    settlement: i64,
    refund: i64,
    coupon_refund: i64,
    fee_milli_fen: i64,
    order: i64,
    refund_requested: i64,
}

/// A field as quoted in an error: at most 32 characters of it.
fn clip(value: &str) -> String {
    let mut out: String = value.chars().take(32).collect();
    if out.len() < value.len() {
        out.push('…');
    }
    out
}

/// Splits a detail/summary row into values, removing the backtick each value starts with.
fn split_ticked(line: &str, line_no: u64) -> Result<Vec<&str>, BillError> {
    let body = line.strip_prefix('`').ok_or_else(|| BillError::Line {
        line: line_no,
        message: "a detail row must start with a backtick".into(),
    })?;
    Ok(body.split(",`").collect())
}

struct Parser {
    text: String,
    pos: usize,
    line_no: u64,
    totals: Totals,
    done: bool,
}

impl Parser {
    fn next_line(&mut self) -> Option<(u64, String)> {
        if self.pos >= self.text.len() {
            return None;
        }
        let rest = &self.text[self.pos..];
        let (line, adv) = match rest.find('\n') {
            Some(i) => (&rest[..i], i + 1),
            None => (rest, rest.len()),
        };
        self.pos += adv;
        self.line_no += 1;
        Some((
            self.line_no,
            line.strip_suffix('\r').unwrap_or(line).to_string(),
        ))
    }

    fn amount(values: &[&str], col: usize, scale: u32, line: u64) -> Result<i64, BillError> {
        let raw = values[col].trim();
        parse_decimal(raw, scale).ok_or_else(|| BillError::Line {
            line,
            message: format!(
                "{} `{}` is not an amount with at most {scale} decimals",
                ALL_HEADER[col],
                clip(raw)
            ),
        })
    }

    /// An amount that cannot be negative: refunds are told apart by 交易状态, not by sign.
    fn non_negative(values: &[&str], col: usize, line: u64) -> Result<i64, BillError> {
        let v = Self::amount(values, col, 2, line)?;
        if v < 0 {
            return Err(BillError::Line {
                line,
                message: format!(
                    "{} `{}` is negative",
                    ALL_HEADER[col],
                    clip(values[col].trim())
                ),
            });
        }
        Ok(v)
    }

    /// A detail row: a payment (`SUCCESS`) or a refund (`REFUND`, with its refund number) as a
    /// record; a trade that moved no money (`REVOKED`, `CLOSED`, `NOTPAY`, `PAYERROR`) counts in the
    /// totals only; any other state is an error.
    fn detail(&mut self, line_no: u64, line: &str) -> Result<Option<BillRecord>, BillError> {
        let values = split_ticked(line, line_no)?;
        if values.len() != ALL_HEADER.len() {
            return Err(BillError::Line {
                line: line_no,
                message: format!(
                    "{} columns, the ALL bill has {}",
                    values.len(),
                    ALL_HEADER.len()
                ),
            });
        }
        let time = NaiveDateTime::parse_from_str(values[COL_TIME].trim(), "%Y-%m-%d %H:%M:%S")
            .map_err(|e| BillError::Line {
                line: line_no,
                message: format!("交易时间 `{}`: {e}", clip(values[COL_TIME])),
            })?;
        let settlement = Self::amount(&values, COL_SETTLEMENT, 2, line_no)?;
        let refund = Self::non_negative(&values, COL_REFUND, line_no)?;
        let coupon_refund = Self::amount(&values, COL_COUPON_REFUND, 2, line_no)?;
        let fee = Self::amount(&values, COL_FEE, 5, line_no)?;
        let order = Self::non_negative(&values, COL_ORDER, line_no)?;
        let refund_requested = Self::non_negative(&values, COL_REFUND_REQUESTED, line_no)?;
        let t = &mut self.totals;
        let overflow = || BillError::Line {
            line: line_no,
            message: "totals overflow".into(),
        };
        t.rows += 1;
        t.settlement = t.settlement.checked_add(settlement).ok_or_else(overflow)?;
        t.refund = t.refund.checked_add(refund).ok_or_else(overflow)?;
        t.coupon_refund = t
            .coupon_refund
            .checked_add(coupon_refund)
            .ok_or_else(overflow)?;
        t.fee_milli_fen = t.fee_milli_fen.checked_add(fee).ok_or_else(overflow)?;
        t.order = t.order.checked_add(order).ok_or_else(overflow)?;
        t.refund_requested = t
            .refund_requested
            .checked_add(refund_requested)
            .ok_or_else(overflow)?;

        let state = values[COL_TRADE_STATE].trim();
        let out_refund_no = values[COL_OUT_REFUND_NO].trim();
        let is_refund = match state {
            "SUCCESS" => false,
            "REFUND" if !out_refund_no.is_empty() && out_refund_no != "0" => true,
            "REFUND" => {
                return Err(BillError::Line {
                    line: line_no,
                    message: "a REFUND row without its 商户退款单号".into(),
                });
            }
            "REVOKED" | "CLOSED" | "NOTPAY" | "PAYERROR" => return Ok(None),
            other => {
                return Err(BillError::Line {
                    line: line_no,
                    message: format!("交易状态 {:?} is not a trade state", clip(other)),
                });
            }
        };
        // A payment's fee is charged (≥ 0), a refund's returned (≤ 0).
        if (is_refund && fee > 0) || (!is_refund && fee < 0) {
            return Err(BillError::Line {
                line: line_no,
                message: format!(
                    "手续费 {} has the wrong sign for a {state} row",
                    clip(values[COL_FEE].trim())
                ),
            });
        }
        let channel_trade_no = values[COL_TRANSACTION_ID].trim();
        let out_trade_no = values[COL_OUT_TRADE_NO].trim();
        if channel_trade_no.is_empty() || out_trade_no.is_empty() {
            return Err(BillError::Line {
                line: line_no,
                message: "微信订单号 and 商户订单号 are required".into(),
            });
        }
        let _ = values[COL_REFUND_ID];
        Ok(Some(BillRecord {
            channel_trade_no: channel_trade_no.to_string(),
            out_trade_no: out_trade_no.to_string(),
            out_refund_no: is_refund.then(|| out_refund_no.to_string()),
            kind: if is_refund {
                BillKind::Refund
            } else {
                BillKind::Payment
            },
            amount_minor: if is_refund { refund_requested } else { order },
            fee_minor: milli_fen_to_fen(fee).abs(),
            status: state.to_string(),
            time,
        }))
    }

    fn summary(&mut self, header_line: u64) -> Result<(), BillError> {
        let Some((line_no, line)) = self.next_line() else {
            return Err(BillError::Truncated(format!(
                "no summary values after the summary header on line {header_line}"
            )));
        };
        let values = split_ticked(&line, line_no)?;
        if values.len() != SUMMARY_HEADER.len() {
            return Err(BillError::Line {
                line: line_no,
                message: format!("{} summary values, expected 7", values.len()),
            });
        }
        // 总交易单数 is written like `45.0`.
        let count_raw = values[0].trim();
        let count = count_raw
            .strip_suffix(".0")
            .unwrap_or(count_raw)
            .parse::<i64>()
            .map_err(|_| BillError::Line {
                line: line_no,
                message: format!("总交易单数 `{}`", clip(count_raw)),
            })?;
        let mut amounts = [0i64; 6];
        for (i, a) in amounts.iter_mut().enumerate() {
            let raw = values[i + 1].trim();
            *a = parse_decimal(raw, 2).ok_or_else(|| BillError::Line {
                line: line_no,
                message: format!("{} `{}`", SUMMARY_HEADER[i + 1], clip(raw)),
            })?;
        }
        let t = self.totals;
        let fee_fen = milli_fen_to_fen(t.fee_milli_fen);
        let checks = [
            (SUMMARY_HEADER[0], count, t.rows, true),
            (SUMMARY_HEADER[1], amounts[0], t.settlement, false),
            (SUMMARY_HEADER[2], amounts[1], t.refund, false),
            (SUMMARY_HEADER[3], amounts[2], t.coupon_refund, false),
            (SUMMARY_HEADER[4], amounts[3], fee_fen, false),
            (SUMMARY_HEADER[5], amounts[4], t.order, false),
            (SUMMARY_HEADER[6], amounts[5], t.refund_requested, false),
        ];
        for (name, stated, summed, is_count) in checks {
            if stated != summed {
                let show = |v: i64| {
                    if is_count {
                        v.to_string()
                    } else {
                        format_decimal(v, 2)
                    }
                };
                return Err(BillError::SummaryMismatch(format!(
                    "{name}: the summary says {}, the detail rows add up to {}",
                    show(stated),
                    show(summed)
                )));
            }
        }
        while let Some((n, rest)) = self.next_line() {
            if !rest.trim().is_empty() {
                return Err(BillError::Line {
                    line: n,
                    message: "unexpected content after the summary".into(),
                });
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Option<Result<BillRecord, BillError>> {
        if self.done {
            return None;
        }
        loop {
            let Some((line_no, line)) = self.next_line() else {
                self.done = true;
                return Some(Err(BillError::Truncated(
                    "the summary rows are missing".into(),
                )));
            };
            if line.trim().is_empty() {
                continue;
            }
            if line.starts_with(SUMMARY_HEADER[0]) {
                self.done = true;
                if line.trim_end() != SUMMARY_HEADER.join(",") {
                    return Some(Err(BillError::Line {
                        line: line_no,
                        message: format!("the summary header is not {}", SUMMARY_HEADER.join(",")),
                    }));
                }
                return match self.summary(line_no) {
                    Ok(()) => None,
                    Err(e) => Some(Err(e)),
                };
            }
            match self.detail(line_no, &line) {
                Ok(Some(record)) => return Some(Ok(record)),
                Ok(None) => continue,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Iterator for Parser {
    type Item = Result<BillRecord, BillError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.step()
    }
}

/// Parses an ALL trade bill. The header row is checked up front; records stream lazily; the summary
/// check is the last item (an `Err` on mismatch).
pub fn parse_trade_bill(bytes: Vec<u8>) -> Result<BillRecords, BillError> {
    let mut text =
        String::from_utf8(bytes).map_err(|e| BillError::Encoding(format!("not UTF-8: {e}")))?;
    if text.starts_with('\u{feff}') {
        text.drain(..3);
    }
    let mut p = Parser {
        text,
        pos: 0,
        line_no: 0,
        totals: Totals::default(),
        done: false,
    };
    let Some((_, header)) = p.next_line() else {
        return Err(BillError::Truncated("the file is empty".into()));
    };
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    if cols != ALL_HEADER {
        return Err(BillError::Line {
            line: 1,
            message: "the header is not the 27-column ALL bill header".into(),
        });
    }
    Ok(Box::new(p))
}

/// One row of a bill to write (the sandbox's side): everything the ALL layout carries that matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillRow {
    pub time: NaiveDateTime,
    pub appid: String,
    pub mchid: String,
    pub transaction_id: String,
    pub out_trade_no: String,
    pub openid: String,
    pub trade_type: String,
    /// `SUCCESS` for payments, `REFUND` for refunds.
    pub trade_state: String,
    pub order_fen: i64,
    /// For refunds.
    pub refund_id: Option<String>,
    pub out_refund_no: Option<String>,
    pub refund_fen: i64,
    pub description: String,
    /// Fee in units of 0.001 fen (negative on refunds: the fee returned).
    pub fee_milli_fen: i64,
    /// Rate in basis points.
    pub rate_bps: u32,
}

/// Renders an ALL bill with BOM, CRLF, backticks and the summary rows.
pub fn write_trade_bill(rows: &[BillRow]) -> Vec<u8> {
    let mut out = String::from("\u{feff}");
    out.push_str(&ALL_HEADER.join(","));
    out.push_str("\r\n");
    let mut t = Totals::default();
    for r in rows {
        let is_refund = r.trade_state == "REFUND";
        let settlement = if is_refund { 0 } else { r.order_fen };
        let order = if is_refund { 0 } else { r.order_fen };
        let refund = if is_refund { r.refund_fen } else { 0 };
        t.rows += 1;
        t.settlement += settlement;
        t.refund += refund;
        t.fee_milli_fen += r.fee_milli_fen;
        t.order += order;
        t.refund_requested += refund;
        let rate = format!("{}.{:02}%", r.rate_bps / 100, r.rate_bps % 100);
        let values: [String; 27] = [
            r.time.format("%Y-%m-%d %H:%M:%S").to_string(),
            r.appid.clone(),
            r.mchid.clone(),
            "0".into(),
            String::new(),
            r.transaction_id.clone(),
            r.out_trade_no.clone(),
            r.openid.clone(),
            r.trade_type.clone(),
            r.trade_state.clone(),
            "OTHERS".into(),
            "CNY".into(),
            format_decimal(settlement, 2),
            "0.00".into(),
            r.refund_id.clone().unwrap_or_else(|| "0".into()),
            r.out_refund_no.clone().unwrap_or_else(|| "0".into()),
            format_decimal(refund, 2),
            "0.00".into(),
            if is_refund {
                "ORIGINAL".into()
            } else {
                String::new()
            },
            if is_refund {
                "SUCCESS".into()
            } else {
                String::new()
            },
            r.description.replace([',', '`', '\r', '\n'], " "),
            String::new(),
            format_decimal(r.fee_milli_fen, 5),
            rate,
            format_decimal(order, 2),
            format_decimal(refund, 2),
            String::new(),
        ];
        out.push('`');
        out.push_str(&values.join(",`"));
        out.push_str("\r\n");
    }
    out.push_str(&SUMMARY_HEADER.join(","));
    out.push_str("\r\n");
    out.push_str(&format!(
        "`{}.0,`{},`{},`{},`{},`{},`{}\r\n",
        t.rows,
        format_decimal(t.settlement, 2),
        format_decimal(t.refund, 2),
        format_decimal(t.coupon_refund, 2),
        format_decimal(milli_fen_to_fen(t.fee_milli_fen), 2),
        format_decimal(t.order, 2),
        format_decimal(t.refund_requested, 2),
    ));
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal("0.01", 2), Some(1));
        assert_eq!(parse_decimal("12.3", 2), Some(1230));
        assert_eq!(parse_decimal("0.01000", 5), Some(1000));
        assert_eq!(parse_decimal("-0.00600", 5), Some(-600));
        assert_eq!(parse_decimal("1.001", 2), None);
        assert_eq!(parse_decimal("1.", 2), None);
        assert_eq!(parse_decimal(".5", 2), None);
        assert_eq!(parse_decimal("1e3", 2), None);
        assert_eq!(parse_decimal("99999999999999999999", 2), None);
        assert_eq!(format_decimal(-600, 5), "-0.00600");
        assert_eq!(milli_fen_to_fen(600), 1);
        assert_eq!(milli_fen_to_fen(499), 0);
        assert_eq!(milli_fen_to_fen(-500), -1);
    }

    #[test]
    fn extreme_fees_round_without_overflow() {
        assert_eq!(milli_fen_to_fen(i64::MAX), 9_223_372_036_854_776);
        assert_eq!(milli_fen_to_fen(i64::MAX - 807), 9_223_372_036_854_775);
        assert_eq!(milli_fen_to_fen(-i64::MAX), -9_223_372_036_854_776);
        assert_eq!(milli_fen_to_fen(i64::MIN), -9_223_372_036_854_776);
    }
}
