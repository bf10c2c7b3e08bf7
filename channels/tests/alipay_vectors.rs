//! Alipay protocol layer against the published vectors in `shared/testdata/alipay/vectors.json`
//! (official Node SDK and yansongda/pay tests), plus property tests on garbage input.

use std::collections::BTreeMap;
use std::path::PathBuf;

use paymux_channels::alipay::sign::{
    FormError, ResponseError, app_cert_sn, parse_form, root_cert_sn, sign_content, sign_request,
    verify_notify, verify_response,
};
use paymux_channels::crypto::{RsaSigner, RsaVerifier};
use serde_json::Value;

/// The Alipay test-data folder, or `None` (and a note) when the shared data is not there.
fn data_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/alipay");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipped: ../shared/testdata not found");
        None
    }
}

fn read(dir: &std::path::Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn vectors(dir: &std::path::Path) -> Value {
    serde_json::from_str(&read(dir, "vectors.json")).expect("vectors.json")
}

/// A vector's file name: the text up to the first space (some carry a note in parentheses).
fn file_name(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key}"))
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A vector's params as wire strings: non-string values are JSON-stringified (as the Node SDK does).
fn wire_params(params: &Value) -> BTreeMap<String, String> {
    params
        .as_object()
        .expect("params object")
        .iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), s)
        })
        .collect()
}

/// The form-encoded body a gateway would post for `params`.
fn form_body(params: &BTreeMap<String, String>) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    ser.finish()
}

/// The verifier of a notify vector: a key file or a public-key certificate.
fn notify_verifier(dir: &std::path::Path, v: &Value) -> RsaVerifier {
    let file = if v.get("public_key_file").is_some() {
        file_name(v, "public_key_file")
    } else {
        file_name(v, "certificate_file")
    };
    RsaVerifier::from_pem(&read(dir, &file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn request_signing_vectors() {
    let Some(dir) = data_dir() else { return };
    let vectors = vectors(&dir);
    let cases = vectors["request_signing"]
        .as_array()
        .expect("request_signing");
    assert!(!cases.is_empty());
    for v in cases {
        let id = v["id"].as_str().unwrap_or_default();
        let signer = RsaSigner::from_pem(&read(&dir, &file_name(v, "private_key_file")))
            .expect("private key");
        let params = wire_params(&v["params"]);
        let pairs = || params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        assert_eq!(
            sign_content(pairs(), true),
            v["derived_sign_string"].as_str().unwrap(),
            "{id}"
        );
        // PKCS#1 v1.5 signatures are deterministic: the stated signature is reproduced exactly.
        assert_eq!(
            sign_request(&signer, pairs()),
            v["expected_sign"].as_str().unwrap(),
            "{id}"
        );
    }
}

#[test]
fn cert_sn_vectors() {
    let Some(dir) = data_dir() else { return };
    let vectors = vectors(&dir);
    let mut checked = 0;
    for v in vectors["cert_sn"].as_array().expect("cert_sn") {
        let Some(file) = v["file"].as_str() else {
            continue;
        };
        let pem = read(&dir, file);
        if let Some(root) = v["expected_root_sn"]
            .as_str()
            .or(v["expected_alipay_root_cert_sn"].as_str())
        {
            assert_eq!(root_cert_sn(&pem).unwrap(), root, "{file}");
        }
        if let Some(sn) = v["expected_sn"]
            .as_str()
            .or(v["expected_app_cert_sn"].as_str())
        {
            assert_eq!(app_cert_sn(&pem).unwrap(), sn, "{file}");
        }
        if let Some(key) = v["expected_public_key_base64"].as_str() {
            assert_eq!(
                RsaVerifier::from_pem(&pem).unwrap(),
                RsaVerifier::from_pem(key).unwrap(),
                "{file}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 5);
}

#[test]
fn notify_verification_vectors() {
    let Some(dir) = data_dir() else { return };
    let vectors = vectors(&dir);
    let mut checked = 0;
    for v in vectors["notify_verification"]
        .as_array()
        .expect("notify_verification")
    {
        let id = v["id"].as_str().unwrap_or_default();
        let verifier = notify_verifier(&dir, v);
        if let Some(url) = v["url"].as_str() {
            // A return URL: the query string is verified like a notify body.
            let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
            let params =
                verify_notify(&verifier, query.as_bytes()).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(params, wire_params(&v["parsed_params"]), "{id}");
            let pairs = params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            assert_eq!(
                sign_content(pairs, false),
                v["derived_sign_string"].as_str().unwrap(),
                "{id}"
            );
            checked += 1;
            continue;
        }
        let params = wire_params(&v["params"]);
        let body = form_body(&params);
        let result = verify_notify(&verifier, body.as_bytes());
        match &v["expected"] {
            Value::Bool(true) => {
                let decoded = result.unwrap_or_else(|e| panic!("{id}: {e}"));
                assert_eq!(
                    decoded, params,
                    "{id}: decoding the form body gives back the params"
                );
                let derived = v["derived_sign_string"].as_str().unwrap();
                let pairs = || decoded.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                assert!(
                    derived == sign_content(pairs(), false)
                        || derived == sign_content(pairs(), true),
                    "{id}"
                );
            }
            Value::Bool(false) => assert_eq!(result, Err(FormError::Signature), "{id}"),
            Value::String(_) => {
                // The malformed-percent case: encoded properly it decodes and fails to verify;
                // sent raw, the stray `%` is a precise decoding error.
                assert_eq!(result, Err(FormError::Signature), "{id}");
                let raw: String = params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&");
                assert!(
                    matches!(
                        parse_form(raw.as_bytes()),
                        Err(FormError::MalformedPercent { .. })
                    ),
                    "{id}"
                );
                assert!(matches!(
                    verify_notify(&verifier, raw.as_bytes()),
                    Err(FormError::MalformedPercent { .. })
                ));
            }
            other => panic!("{id}: unexpected expectation {other}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 7);
}

#[test]
fn notify_plus_sign_survives_form_encoding() {
    let Some(dir) = data_dir() else { return };
    let vectors = vectors(&dir);
    let v = vectors["notify_verification"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "yansongda-notify-plus-sign")
        .expect("plus-sign vector");
    let verifier = notify_verifier(&dir, v);
    let body = form_body(&wire_params(&v["params"]));
    assert!(body.contains("yansongda%2B"), "a literal + is sent as %2B");
    assert_eq!(
        verify_notify(&verifier, body.as_bytes()).unwrap()["subject"],
        "yansongda+测试 - 1"
    );
    // Had the `+` been sent literally it would decode as a space and the signature would fail.
    let literal = body.replace("yansongda%2B", "yansongda+");
    assert_eq!(
        verify_notify(&verifier, literal.as_bytes()),
        Err(FormError::Signature)
    );
}

#[test]
fn response_verification_vectors() {
    let Some(dir) = data_dir() else { return };
    let vectors = vectors(&dir);
    let cases = vectors["response_verification"]
        .as_array()
        .expect("response_verification");
    assert!(!cases.is_empty());
    for v in cases {
        let id = v["id"].as_str().unwrap_or_default();
        let verifier =
            RsaVerifier::from_pem(&read(&dir, &file_name(v, "public_key_file"))).expect("key");
        let raw = v["response_raw"].as_str().unwrap();
        let node = v["response_key"].as_str().unwrap();
        let method = node.trim_end_matches("_response").replace('_', ".");
        let r = verify_response(&verifier, raw.as_bytes(), &method)
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(r.node, node);
        assert_eq!(
            r.content,
            v["expected_signed_content"].as_str().unwrap().as_bytes(),
            "{id}"
        );

        let sign = r.sign.clone().unwrap();
        let wrong = raw.replace(&sign, "wrong-sing");
        assert_eq!(
            verify_response(&verifier, wrong.as_bytes(), &method),
            Err(ResponseError::Signature {
                node: node.to_string()
            }),
            "{id}"
        );
        // Re-serialising would change bytes; one changed byte of content fails too.
        let tampered = raw.replace("\"10000\"", "\"10001\"");
        assert!(
            verify_response(&verifier, tampered.as_bytes(), &method).is_err(),
            "{id}"
        );
        // Whitespace around the node is outside the signed span and does not matter.
        let spaced = raw.replacen(':', " : ", 1);
        assert!(
            verify_response(&verifier, spaced.as_bytes(), &method).is_ok(),
            "{id}"
        );
    }
}

#[test]
fn typed_notify_from_the_vectors() {
    use paymux_channels::TradeState;
    use paymux_channels::alipay::notify::{Expected, TradeNotify};
    let Some(dir) = data_dir() else { return };
    let vectors = vectors(&dir);
    let cases = vectors["notify_verification"].as_array().unwrap();
    for (id, app_id, out_trade_no, fen, paid_utc) in [
        (
            "nodejs-notify-yuque",
            "2019073166072302",
            "20190815155618536-564-57",
            10,
            "2019-08-15T07:56:24+00:00",
        ),
        (
            "yansongda-notify-plus-sign",
            "9021000122682882",
            "1703147160",
            1,
            "2023-12-21T08:26:43+00:00",
        ),
    ] {
        let v = cases.iter().find(|v| v["id"] == id).unwrap();
        let body = form_body(&wire_params(&v["params"]));
        let n = TradeNotify::verify(&notify_verifier(&dir, v), body.as_bytes())
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(n.state, TradeState::Succeeded, "{id}");
        assert_eq!(n.total_amount_minor, fen, "{id}");
        assert_eq!(n.gmt_payment.unwrap().to_rfc3339(), paid_utc, "{id}");
        n.check(&Expected {
            app_id,
            out_trade_no,
            total_amount_minor: fen,
        })
        .unwrap();
        assert!(
            n.check(&Expected {
                app_id,
                out_trade_no,
                total_amount_minor: fen + 1
            })
            .is_err()
        );
    }
}

mod bill {
    use super::*;
    use paymux_channels::alipay::bill::{
        TradeBillMeta, parse_trade_bill, write_trade_bill, write_trade_bill_summary, zip_trade_bill,
    };
    use paymux_channels::{BillError, BillKind, BillRecord};
    use proptest::prelude::*;

    fn sample(dir: &std::path::Path) -> String {
        let v = vectors(dir);
        read(
            dir,
            v["trade_bill"]["file"].as_str().expect("trade_bill.file"),
        )
    }

    fn parse(bytes: &[u8]) -> Vec<Result<BillRecord, BillError>> {
        match parse_trade_bill(bytes) {
            Ok(records) => records.collect(),
            Err(e) => vec![Err(e)],
        }
    }

    fn final_error(bytes: &[u8]) -> Option<BillError> {
        parse(bytes).into_iter().find_map(Result::err)
    }

    #[test]
    fn sample_bill_parses_and_matches_its_summary() {
        let Some(dir) = data_dir() else { return };
        let checks = &vectors(&dir)["trade_bill"]["derived_checks"];
        let records: Vec<BillRecord> = parse(sample(&dir).as_bytes())
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(records.len() as u64, checks["data_rows"].as_u64().unwrap());
        let payments: Vec<&BillRecord> = records
            .iter()
            .filter(|r| r.kind == BillKind::Payment)
            .collect();
        let refunds: Vec<&BillRecord> = records
            .iter()
            .filter(|r| r.kind == BillKind::Refund)
            .collect();
        assert_eq!(payments.len() as u64, checks["交易_rows"].as_u64().unwrap());
        assert_eq!(refunds.len() as u64, checks["退款_rows"].as_u64().unwrap());
        assert_eq!(payments.iter().map(|r| r.amount_minor).sum::<i64>(), 6);
        assert_eq!(refunds.iter().map(|r| r.amount_minor).sum::<i64>(), 4);
        assert!(
            payments
                .iter()
                .all(|r| r.out_refund_no.is_none() && r.status == "交易")
        );
        assert!(
            refunds
                .iter()
                .all(|r| r.out_refund_no.is_some() && r.status == "退款")
        );

        let first = &records[0];
        assert_eq!(
            first.channel_trade_no, "2019091622001458860515315453",
            "trailing tab trimmed"
        );
        assert_eq!(first.out_trade_no, "service_1568601259302");
        assert_eq!((first.amount_minor, first.fee_minor), (1, 0));
        assert_eq!(first.time.to_string(), "2019-09-16 10:55:23");
        let refund = &records[1];
        assert_eq!(
            refund.out_refund_no.as_deref(),
            Some("re_test_1568602607356")
        );
        assert_eq!(
            refund.amount_minor, 1,
            "negative in the file, positive in the record"
        );
        assert_eq!(refund.time.to_string(), "2019-09-16 10:56:48");
    }

    #[test]
    fn sample_bill_as_gbk_zip_and_as_written_round_trips() {
        let Some(dir) = data_dir() else { return };
        let text = sample(&dir);
        let records: Vec<BillRecord> = parse(text.as_bytes())
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        // The sample itself, GBK-encoded and zipped next to a summary file.
        let zip = zip_trade_bill(
            "20880211096256330156_20190916",
            &text,
            "#支付宝业务汇总查询\n",
        )
        .unwrap();
        assert_eq!(
            parse(&zip)
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
            records
        );
        // Written by us, zipped, parsed again.
        let meta = TradeBillMeta {
            account: "20880211096256330156".into(),
            start: "2019-09-16T00:00:00".parse().unwrap(),
            end: "2019-09-17T00:00:00".parse().unwrap(),
            exported_at: "2019-09-17T05:46:49".parse().unwrap(),
        };
        let written = write_trade_bill(&meta, &records);
        assert!(
            written.contains("#交易合计：6笔，商家实收共0.06元"),
            "{written}"
        );
        assert!(
            written.contains("#退款合计：4笔，商家实收退款共-0.04元"),
            "{written}"
        );
        let zip = zip_trade_bill(
            "20880211096256330156_20190916",
            &written,
            &write_trade_bill_summary(&meta, &records),
        )
        .unwrap();
        assert_eq!(
            parse(&zip)
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
            records
        );
    }

    /// Byte ranges of each data row's `商家实收（元）` field (column 13) in the sample.
    fn received_fields(text: &str) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            if line.starts_with("20") {
                let mut start = offset;
                for (i, field) in line.split(',').enumerate() {
                    if i == 12 {
                        out.push(start..start + field.len());
                    }
                    start += field.len() + 1;
                }
            }
            offset += line.len();
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn random_lines_never_panic(lines in proptest::collection::vec(
            prop_oneof![
                Just("#-----业务明细列表结束---".to_string()),
                Just("#交易合计：1笔，商家实收共0.01元".to_string()),
                Just("#退款合计：0笔，商家实收退款共0.00元".to_string()),
                Just("#导出时间：[x]".to_string()),
                Just("支付宝交易号,商户订单号,业务类型,完成时间,订单金额（元）,商家实收（元）,退款批次号/请求号,服务费（元）".to_string()),
                "[0-9a-z,\"\t 交易退款.:-]{0,60}",
            ], 0..20)) {
            let _ = parse(lines.join("\n").as_bytes());
        }

        #[test]
        fn truncated_bill_is_detected(cut in 0usize..10_000) {
            let Some(dir) = data_dir() else { return Ok(()) };
            let text = sample(&dir);
            // Dropping only the final newline leaves a complete file.
            let cut = cut % (text.len() - 1);
            let err = final_error(&text.as_bytes()[..cut]);
            prop_assert!(
                matches!(err, Some(BillError::Truncated(_) | BillError::SummaryMismatch(_))),
                "cut at {}: {:?}", cut, err
            );
        }

        #[test]
        fn changed_received_digit_is_detected(pick in 0usize..1000, digit in 0u8..10, letter in "[a-zA-Z]") {
            let Some(dir) = data_dir() else { return Ok(()) };
            let text = sample(&dir);
            let fields = received_fields(&text);
            prop_assert_eq!(fields.len(), 10);
            let digits: Vec<usize> = fields.iter().flat_map(|r| r.clone()).filter(|&i| text.as_bytes()[i].is_ascii_digit()).collect();
            let at = digits[pick % digits.len()];
            let old = text.as_bytes()[at];
            let new = b'0' + (old - b'0' + 1 + digit % 9) % 10;
            let mut bytes = text.clone().into_bytes();
            bytes[at] = new;
            prop_assert!(matches!(final_error(&bytes), Some(BillError::SummaryMismatch(_))), "digit at {}", at);
            bytes[at] = letter.as_bytes()[0];
            prop_assert!(matches!(final_error(&bytes), Some(BillError::Line { .. })), "letter at {}", at);
        }

        #[test]
        fn changed_summary_digit_is_detected(pick in 0usize..1000, bump in 1u8..10) {
            let Some(dir) = data_dir() else { return Ok(()) };
            let text = sample(&dir);
            let mut digits = Vec::new();
            let mut offset = 0;
            for line in text.split_inclusive('\n') {
                if line.starts_with("#交易合计") || line.starts_with("#退款合计") {
                    // The count and the 商家实收 amount: the digits before the second `元`.
                    let end = line.match_indices('元').nth(1).map(|(i, _)| i).unwrap_or(0);
                    let end = line[..end].rfind('，').unwrap_or(end);
                    digits.extend(line[..end].char_indices().filter(|(_, c)| c.is_ascii_digit()).map(|(i, _)| offset + i));
                }
                offset += line.len();
            }
            let at = digits[pick % digits.len()];
            let mut bytes = text.into_bytes();
            bytes[at] = b'0' + (bytes[at] - b'0' + bump) % 10;
            prop_assert!(matches!(final_error(&bytes), Some(BillError::SummaryMismatch(_))), "digit at {}", at);
        }
    }
}

mod garbage {
    use super::*;
    use paymux_channels::alipay::notify::TradeNotify;
    use proptest::prelude::*;

    fn key() -> &'static RsaVerifier {
        static KEY: std::sync::OnceLock<RsaVerifier> = std::sync::OnceLock::new();
        KEY.get_or_init(|| {
            RsaVerifier::from_pem(&paymux_channels::crypto::generate_rsa_keypair().1).unwrap()
        })
    }

    proptest! {
        #[test]
        fn response_verifier_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(verify_response(key(), &bytes, "alipay.trade.pay").is_err());
        }

        #[test]
        fn response_verifier_on_json_like_text(text in r#"[{}\[\]":,0-9a-z_\\ .\-]{0,200}"#) {
            let _ = verify_response(key(), text.as_bytes(), "a");
            let _ = paymux_channels::alipay::sign::split_response(text.as_bytes(), "a");
        }

        #[test]
        fn notify_verifier_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(verify_notify(key(), &bytes).is_err());
            prop_assert!(TradeNotify::verify(key(), &bytes).is_err());
        }

        #[test]
        fn form_parser_on_form_like_text(text in "[a-z=&%+0-9A-F_]{0,120}") {
            let _ = parse_form(text.as_bytes());
        }
    }
}
