//! WeChat parsers fed garbage, truncations and random well-formed input: no panic, precise errors,
//! exact round trips.

use chrono::NaiveDate;
use paymux_channels::BillKind;
use paymux_channels::crypto::{self, RsaSigner};
use paymux_channels::wechat::bill::{BillRow, parse_trade_bill, write_trade_bill};
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

fn sample() -> Option<Vec<u8>> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/wechatpay/wechatpay_bill_ALL.csv");
    match std::fs::read(p) {
        Ok(b) => Some(b),
        Err(_) => {
            eprintln!("skipped: ../shared/testdata not found");
            None
        }
    }
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

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
    proptest!(|(sig in "\\PC{0,400}", ts in "\\PC{0,12}", nonce in "\\PC{0,40}")| {
        let s = sign::PlatformSignature { timestamp: ts, nonce, serial: "PUB_KEY_ID_1".into(), signature: sig };
        prop_assert!(keys.verify(&s, body, None, 300).is_err());
    });
}
