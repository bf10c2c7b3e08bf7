//! WeChat parsers fed garbage, truncations and random well-formed input: no panic, precise errors,
//! exact round trips.

use chrono::NaiveDate;
use paymux_channels::BillKind;
use paymux_channels::crypto::{self, RsaSigner};
use paymux_channels::wechat::bill::{
    BillRow, format_decimal, parse_decimal, parse_trade_bill, write_trade_bill,
};
use paymux_channels::wechat::sign::{self, EncryptedResource, PlatformKeys};
use proptest::prelude::*;

fn drain(bytes: Vec<u8>) -> Result<usize, String> {
    match parse_trade_bill(bytes) {
        Ok(records) => {
            let mut n = 0;
            for r in records {
                r.map_err(|e| e.to_string())?;
                n += 1;
            }
            Ok(n)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The published sample bill; `None` (skip) only when the whole `../shared/testdata` folder is absent.
/// With the folder present, a missing or unreadable sample is a failure, not a silent skip.
fn sample() -> Option<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata");
    if !dir.is_dir() {
        eprintln!("skipped: ../shared/testdata not found");
        return None;
    }
    let p = dir.join("wechatpay/wechatpay_bill_ALL.csv");
    Some(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

fn row_strategy() -> impl Strategy<Value = BillRow> {
    (
        any::<bool>(),
        1i64..10_000_000,
        0i64..100_000,
        0u32..1000,
        "[a-zA-Z0-9 测试]{0,20}",
    )
        .prop_map(|(refund, fen, fee, bps, desc)| BillRow {
            time: NaiveDate::from_ymd_opt(2026, 11, 22)
                .unwrap()
                .and_hms_opt(10, 0, 0)
                .unwrap(),
            appid: "wx0000000000000000".into(),
            mchid: "1900000001".into(),
            transaction_id: "4200000000202611220000000001".into(),
            out_trade_no: "T0001".into(),
            openid: "o000".into(),
            trade_type: "NATIVE".into(),
            trade_state: if refund {
                "REFUND".into()
            } else {
                "SUCCESS".into()
            },
            order_fen: fen,
            refund_id: refund.then(|| "50300000000000000000000000001".into()),
            out_refund_no: refund.then(|| "R0001".into()),
            refund_fen: fen,
            description: desc,
            fee_milli_fen: if refund { -fee * 1000 } else { fee * 1000 },
            rate_bps: bps,
        })
}

/// Amounts as a bill could carry them, in range or not: any i64 with 2 or 5 decimals (so negative
/// and far beyond any real amount), the extremes, and loosely decimal-shaped text.
fn extreme_decimal() -> impl Strategy<Value = String> {
    let extreme = prop_oneof![
        Just(i64::MAX),
        Just(i64::MIN),
        Just(i64::MIN + 1),
        Just(i64::MAX - 500),
        Just(-1i64),
        Just(0i64),
    ];
    prop_oneof![
        any::<i64>().prop_map(|v| format_decimal(v, 2)),
        any::<i64>().prop_map(|v| format_decimal(v, 5)),
        (extreme, prop_oneof![Just(2u32), Just(5u32)]).prop_map(|(v, s)| format_decimal(v, s)),
        "-?[0-9]{1,21}(\\.[0-9]{1,6})?",
    ]
}

/// The amount columns of an ALL detail row: 应结订单金额, 退款金额, 充值券退款金额, 手续费, 订单金额, 申请退款金额.
const AMOUNT_COLUMNS: [usize; 6] = [12, 16, 17, 22, 24, 25];
/// The ones that must not be negative.
const NON_NEGATIVE_COLUMNS: [usize; 3] = [16, 24, 25];

/// Replaces backticked values of line `line` (0-based, the header is line 0) of a written bill.
fn substitute(bill: &[u8], line: usize, subs: &[(usize, String)]) -> Vec<u8> {
    let text = std::str::from_utf8(bill).unwrap();
    let mut lines: Vec<String> = text.split("\r\n").map(str::to_string).collect();
    let mut values: Vec<String> = lines[line]
        .strip_prefix('`')
        .unwrap()
        .split(",`")
        .map(str::to_string)
        .collect();
    for (col, v) in subs {
        values[*col] = v.clone();
    }
    lines[line] = format!("`{}", values.join(",`"));
    lines.join("\r\n").into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn extreme_amounts_in_valid_rows_never_panic(
        rows in proptest::collection::vec(row_strategy(), 1..4),
        row in any::<prop::sample::Index>(),
        subs in proptest::collection::vec((prop::sample::select(AMOUNT_COLUMNS.to_vec()), extreme_decimal()), 1..6),
        summary in proptest::collection::vec((1usize..7, extreme_decimal()), 0..3),
    ) {
        let bill = write_trade_bill(&rows);
        let line = 1 + row.index(rows.len());
        let bill = substitute(&bill, line, &subs);
        let bill = substitute(&bill, rows.len() + 2, &summary);
        let result = drain(bill);
        // The last substitution of a column is the one in the row.
        let negative = NON_NEGATIVE_COLUMNS.iter().any(|c| {
            subs.iter()
                .rev()
                .find(|(col, _)| col == c)
                .and_then(|(_, v)| parse_decimal(v, 2))
                .is_some_and(|v| v < 0)
        });
        if negative {
            prop_assert!(result.is_err(), "{:?}", result);
        }
    }

    #[test]
    fn extreme_fees_in_valid_rows_never_panic(
        rows in proptest::collection::vec(row_strategy(), 1..4),
        fee in any::<i64>(),
    ) {
        let mut rows = rows;
        rows[0].fee_milli_fen = fee;
        rows[0].trade_state = "SUCCESS".into();
        let bill = write_trade_bill(&rows[..1]);
        let bill = substitute(&bill, 1, &[(22, format_decimal(fee, 5))]);
        let _ = drain(bill);
    }

    #[test]
    fn bill_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = drain(bytes);
    }

    #[test]
    fn bill_lines_after_a_valid_header_never_panic(lines in proptest::collection::vec("[`0-9.,A-Z\\-: ]{0,80}", 0..20)) {
        let mut text = paymux_channels::wechat::bill::ALL_HEADER.join(",");
        for l in lines {
            text.push_str("\r\n");
            text.push_str(&l);
        }
        let _ = drain(text.into_bytes());
    }

    #[test]
    fn written_bills_parse_back_exactly(rows in proptest::collection::vec(row_strategy(), 0..30)) {
        let bytes = write_trade_bill(&rows);
        let recs: Vec<_> = parse_trade_bill(bytes).unwrap().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(recs.len(), rows.len());
        for (rec, row) in recs.iter().zip(&rows) {
            let is_refund = row.trade_state == "REFUND";
            prop_assert_eq!(rec.kind, if is_refund { BillKind::Refund } else { BillKind::Payment });
            prop_assert_eq!(rec.amount_minor, if is_refund { row.refund_fen } else { row.order_fen });
            prop_assert_eq!(rec.fee_minor, row.fee_milli_fen.abs() / 1000);
        }
    }

    #[test]
    fn truncated_sample_is_an_error(frac in 0.0f64..1.0) {
        let Some(bytes) = sample() else { return Ok(()) };
        let cut = ((bytes.len() - 3) as f64 * frac) as usize;
        prop_assert!(drain(bytes[..cut].to_vec()).is_err(), "cut at {}", cut);
    }

    #[test]
    fn flipped_byte_in_sample_never_panics(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let Some(mut bytes) = sample() else { return Ok(()) };
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = drain(bytes);
    }

    #[test]
    fn authorization_garbage_never_panics(s in "\\PC{0,200}") {
        let _ = sign::parse_authorization(&s);
        let _ = sign::parse_authorization(&format!("{} {s}", sign::SCHEME));
    }

    #[test]
    fn resource_garbage_never_decrypts(ct in "[A-Za-z0-9+/=]{0,200}", nonce in "[a-z0-9]{0,16}", aad in "\\PC{0,20}") {
        let r = EncryptedResource { algorithm: "AEAD_AES_256_GCM".into(), ciphertext: ct, associated_data: aad, nonce, original_type: String::new() };
        prop_assert!(r.decrypt(&[7u8; 32]).is_err());
    }
}

#[test]
fn response_verification_with_garbage_headers_fails_cleanly() {
    let (private, public) = crypto::generate_rsa_keypair();
    let signer = RsaSigner::from_pem(&private).unwrap();
    let mut keys = PlatformKeys::new();
    keys.insert(
        "PUB_KEY_ID_1",
        paymux_channels::crypto::RsaVerifier::from_pem(&public).unwrap(),
    );
    let body = b"{\"a\":1}";
    let good = sign::PlatformSignature::sign(&signer, "PUB_KEY_ID_1", 1_700_000_000, body);
    assert!(keys.verify(&good, body, None, 300).is_ok());
    // Timestamps from the whole i64 range reach the freshness check (and its arithmetic).
    let ts = prop_oneof![
        any::<i64>().prop_map(|t| t.to_string()),
        Just(i64::MIN.to_string()),
        "\\PC{0,12}",
    ];
    proptest!(|(sig in "\\PC{0,400}", ts in ts, nonce in "\\PC{0,40}")| {
        let s = sign::PlatformSignature { timestamp: ts, nonce, serial: "PUB_KEY_ID_1".into(), signature: sig };
        prop_assert!(keys.verify(&s, body, Some(1_700_000_000), 300).is_err());
        prop_assert!(keys.verify(&s, body, None, 300).is_err());
    });
}

#[test]
fn response_timestamp_of_i64_min_is_stale() {
    let (private, public) = crypto::generate_rsa_keypair();
    let signer = RsaSigner::from_pem(&private).unwrap();
    let mut keys = PlatformKeys::new();
    keys.insert(
        "PUB_KEY_ID_1",
        paymux_channels::crypto::RsaVerifier::from_pem(&public).unwrap(),
    );
    let body = b"{\"a\":1}";
    let s = sign::PlatformSignature::sign(&signer, "PUB_KEY_ID_1", i64::MIN, body);
    assert_eq!(s.timestamp, "-9223372036854775808");
    assert_eq!(
        keys.verify(&s, body, Some(1_700_000_000), 300),
        Err(sign::VerifyError::StaleTimestamp)
    );
}

fn one_row(fee_milli_fen: i64, order_fen: i64) -> BillRow {
    BillRow {
        time: NaiveDate::from_ymd_opt(2026, 11, 22)
            .unwrap()
            .and_hms_opt(10, 0, 0)
            .unwrap(),
        appid: "wx0000000000000000".into(),
        mchid: "1900000001".into(),
        transaction_id: "4200000000202611220000000001".into(),
        out_trade_no: "T0001".into(),
        openid: "o000".into(),
        trade_type: "NATIVE".into(),
        trade_state: "SUCCESS".into(),
        order_fen,
        refund_id: None,
        out_refund_no: None,
        refund_fen: 0,
        description: "x".into(),
        fee_milli_fen,
        rate_bps: 60,
    }
}

#[test]
fn fee_of_i64_max_milli_fen_rounds_without_overflow() {
    let bill = write_trade_bill(&[one_row(i64::MAX, 100)]);
    let text = String::from_utf8(bill.clone()).unwrap();
    assert!(text.contains(",`92233720368547.75807,`"), "{text}");
    // Half-up to fen: 92233720368547.76 in the summary and in the record.
    assert!(text.contains(",`92233720368547.76,`"), "{text}");
    let recs: Vec<_> = parse_trade_bill(bill)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].fee_minor, 9_223_372_036_854_776);
}

#[test]
fn negative_order_and_refund_amounts_are_refused() {
    let bill = write_trade_bill(&[one_row(600, 100)]);
    assert_eq!(drain(bill.clone()), Ok(1));
    for (col, name) in [(16, "退款金额"), (24, "订单金额"), (25, "申请退款金额")] {
        let err = drain(substitute(&bill, 1, &[(col, "-0.01".into())])).unwrap_err();
        assert!(
            err.contains(&format!("{name} `-0.01` is negative")),
            "{col}: {err}"
        );
    }
    // -0.00 is zero, not negative.
    assert_eq!(drain(substitute(&bill, 1, &[(16, "-0.00".into())])), Ok(1));
}

#[test]
fn rows_are_payments_refunds_or_trades_that_moved_no_money_and_nothing_else() {
    let parse = |rows: &[BillRow]| -> Result<Vec<_>, String> {
        parse_trade_bill(write_trade_bill(rows))
            .map_err(|e| e.to_string())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    };
    let paid = one_row(600, 100);
    let mut revoked = one_row(0, 500);
    revoked.trade_state = "REVOKED".into();
    revoked.out_trade_no = "T0002".into();
    let recs = parse(&[paid.clone(), revoked]).unwrap();
    assert_eq!(recs.len(), 1, "a revoked trade moved no money: {recs:?}");
    assert_eq!(recs[0].out_trade_no, "T0001");

    let mut odd = paid.clone();
    odd.trade_state = "PAID".into();
    let err = parse(&[odd]).unwrap_err();
    assert!(err.contains("is not a trade state"), "{err}");

    let mut refund_without_number = paid.clone();
    refund_without_number.trade_state = "REFUND".into();
    refund_without_number.refund_fen = 100;
    refund_without_number.fee_milli_fen = -600;
    let err = parse(&[refund_without_number]).unwrap_err();
    assert!(err.contains("without its 商户退款单号"), "{err}");

    let err = parse(&[one_row(-600, 100)]).unwrap_err();
    assert!(err.contains("wrong sign"), "{err}");
    let mut refund_charged = paid.clone();
    refund_charged.trade_state = "REFUND".into();
    refund_charged.out_refund_no = Some("R0001".into());
    refund_charged.refund_id = Some("50300000000000000000000000001".into());
    refund_charged.refund_fen = 100;
    let err = parse(&[refund_charged]).unwrap_err();
    assert!(err.contains("wrong sign"), "{err}");
}

#[test]
fn a_summary_header_other_than_the_bills_is_refused() {
    let bill = String::from_utf8(write_trade_bill(&[one_row(600, 100)])).unwrap();
    let changed = bill.replacen("总交易单数,应结订单总金额", "总交易单数,应结订单金额", 1);
    assert_ne!(bill, changed);
    let err = drain(changed.into_bytes()).unwrap_err();
    assert!(err.contains("summary header"), "{err}");
}
