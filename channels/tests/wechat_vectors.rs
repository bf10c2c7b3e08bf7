//! WeChat Pay v3 vectors published by the channel's SDKs (`../shared/testdata/wechatpay`): request
//! signatures, response and notification verification (including the ones that must fail), AEAD,
//! certificate serials and the ALL trade bill with its summary rows.

use std::path::PathBuf;

use paymux_channels::crypto::{self, AeadError, Certificate, RsaSigner, RsaVerifier};
use paymux_channels::wechat::bill::{self, parse_trade_bill};
use paymux_channels::wechat::sign::{
    self, EncryptedResource, PlatformKeys, PlatformSignature, VerifyError,
};
use paymux_channels::{BillError, BillKind};
use serde_json::Value;

fn dir() -> Option<PathBuf> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/wechatpay");
    if d.is_dir() {
        Some(d)
    } else {
        eprintln!("skipped: ../shared/testdata not found");
        None
    }
}

fn vectors(d: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(d.join("vectors.json")).unwrap()).unwrap()
}

/// `"file.pem (comment…)"` → the file's text.
fn file(d: &std::path::Path, field: &Value) -> String {
    let name = field.as_str().unwrap().split_whitespace().next().unwrap();
    std::fs::read_to_string(d.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn file_bytes(d: &std::path::Path, field: &Value) -> Vec<u8> {
    let name = field.as_str().unwrap().split_whitespace().next().unwrap();
    std::fs::read(d.join(name)).unwrap()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap()
}

#[test]
fn request_signatures() {
    let Some(d) = dir() else { return };
    let v = vectors(&d);
    let mut checked = 0;
    for case in v["request_signing"].as_array().unwrap() {
        match s(&case["id"]) {
            "wxgo-sign-source" => {
                let signer = RsaSigner::from_pem(&file(&d, &case["private_key_file"])).unwrap();
                assert_eq!(
                    signer.sign_base64(s(&case["message"]).as_bytes()),
                    s(&case["expected_signature_base64"])
                );
                // The verbatim fixture's `TESTING KEY` label loads too.
                let verbatim = std::fs::read_to_string(
                    d.join("wechatpay-go_signer_test_key_VERBATIM_testing_header.txt"),
                )
                .unwrap();
                let signer2 = RsaSigner::from_pem(&verbatim).unwrap();
                assert_eq!(
                    signer2.sign_base64(b"source"),
                    s(&case["expected_signature_base64"])
                );
                checked += 1;
            }
            "wxgo-auth-header-format" => {
                let signer = RsaSigner::from_pem(
                    &std::fs::read_to_string(d.join("wechatpay-go_test_private_key.pem")).unwrap(),
                )
                .unwrap();
                for c in case["cases"].as_array().unwrap() {
                    let msg = sign::request_message(
                        s(&c["method"]),
                        s(&c["canonical_url"]),
                        s(&case["timestamp"]),
                        s(&case["nonce"]),
                        s(&c["body"]),
                    );
                    assert_eq!(msg, s(&c["expected_message"]));
                    let header = sign::authorization(
                        &signer,
                        s(&case["mchid"]),
                        s(&case["serial_no"]),
                        s(&c["method"]),
                        s(&c["canonical_url"]),
                        s(&case["timestamp"]),
                        s(&case["nonce"]),
                        s(&c["body"]),
                    );
                    // Same layout as the mock header, with the scheme and the real signature.
                    let expected = s(&c["expected_authorization"])
                        .replace("WECHATPAY2-Mock", sign::SCHEME)
                        .replace(
                            &format!("Sign:{}", s(&c["expected_message"])),
                            s(&c["derived_real_signature_with_wxgo_test_key"]),
                        );
                    assert_eq!(header, expected);
                    checked += 1;
                }
            }
            "wxjava-canonical-url" => {
                let url = reqwest::Url::parse(s(&case["request_uri"])).unwrap();
                let canonical = format!("{}?{}", url.path(), url.query().unwrap());
                let msg = sign::request_message(
                    s(&case["method"]),
                    &canonical,
                    s(&case["timestamp"]),
                    s(&case["nonce"]),
                    s(&case["body"]),
                );
                assert_eq!(msg, s(&case["expected_message"]));
                checked += 1;
            }
            "yansongda-v3-h5-sign" => {
                let signer = RsaSigner::from_pem(&file(&d, &case["private_key_file"])).unwrap();
                let expected_msg = std::fs::read_to_string(
                    d.join(
                        s(&case["expected_message_file"])
                            .split_whitespace()
                            .next()
                            .unwrap(),
                    ),
                )
                .unwrap();
                let url = reqwest::Url::parse(s(&case["url"])).unwrap();
                let msg = sign::request_message(
                    s(&case["method"]),
                    url.path(),
                    s(&case["timestamp"]),
                    s(&case["nonce"]),
                    expected_msg.lines().nth(4).unwrap(),
                );
                assert_eq!(msg, expected_msg);
                let cert = Certificate::from_pem(&file(&d, &case["certificate_file"]))
                    .unwrap()
                    .remove(0);
                assert_eq!(cert.serial_hex, "25F8AA5452D55497C24BA57DC81B1E5915DC2E77");
                let header = sign::authorization(
                    &signer,
                    s(&case["mchid"]),
                    &cert.serial_hex,
                    s(&case["method"]),
                    url.path(),
                    s(&case["timestamp"]),
                    s(&case["nonce"]),
                    expected_msg.lines().nth(4).unwrap(),
                );
                assert_eq!(header, s(&case["expected_authorization"]));
                checked += 1;
            }
            other => panic!("unhandled request_signing vector {other}"),
        }
    }
    assert_eq!(checked, 5);
}

fn headers_of(case: &Value) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in case["headers"].as_object().unwrap() {
        h.insert(
            http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
            s(v).parse().unwrap(),
        );
    }
    h
}

#[test]
fn response_and_notification_verification() {
    let Some(d) = dir() else { return };
    let v = vectors(&d);
    let mut checked = 0;
    for case in v["notification_and_response_verification"]
        .as_array()
        .unwrap()
    {
        let id = s(&case["id"]);
        if case.get("certificate_file").is_none() {
            continue; // layout-only entry (wxjava-notify-parse), covered by the others
        }
        let cert = Certificate::from_pem(&file(&d, &case["certificate_file"]))
            .unwrap()
            .remove(0);
        let headers = headers_of(case);
        let serial = headers["wechatpay-serial"].to_str().unwrap().to_string();
        let mut keys = PlatformKeys::new();
        keys.insert(serial.clone(), cert.verifier.clone());
        let body: Vec<u8> = match case.get("body_file") {
            Some(f) => file_bytes(&d, f),
            None => s(&case["body"]).as_bytes().to_vec(),
        };
        keys.verify_headers(&headers, &body, None, 300)
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        // Freshness: the vector's own clock passes, now (years later) does not.
        if let Some(clock) = case["test_clock_unix"].as_i64() {
            keys.verify_headers(&headers, &body, Some(clock), 300)
                .unwrap();
        }
        assert_eq!(
            keys.verify_headers(&headers, &body, Some(chrono::Utc::now().timestamp()), 300),
            Err(VerifyError::StaleTimestamp)
        );
        // Every byte of the body is covered.
        let mut tampered = body.clone();
        let last = tampered.len() - 2;
        tampered[last] ^= 0x01;
        assert_eq!(
            keys.verify_headers(&headers, &tampered, None, 300),
            Err(VerifyError::BadSignature),
            "{id}"
        );
        // A probe signature and an unknown serial fail; missing headers are "unsigned".
        let mut sig = PlatformSignature::from_headers(&headers).unwrap();
        let good = sig.clone();
        sig.signature = format!("WECHATPAY/SIGNTEST/{}", good.signature);
        assert_eq!(keys.verify(&sig, &body, None, 300), Err(VerifyError::Probe));
        sig = good.clone();
        sig.serial = "0000".into();
        assert!(matches!(
            keys.verify(&sig, &body, None, 300),
            Err(VerifyError::UnknownSerial(_))
        ));
        sig = good.clone();
        sig.nonce.push('x');
        assert_eq!(
            keys.verify(&sig, &body, None, 300),
            Err(VerifyError::BadSignature)
        );
        let mut no_sig = headers.clone();
        no_sig.remove("wechatpay-signature");
        assert_eq!(
            keys.verify_headers(&no_sig, &body, None, 300),
            Err(VerifyError::Unsigned)
        );

        if let Some(resource) = case.get("resource") {
            let env: Value = serde_json::from_slice(&body).unwrap();
            let res: EncryptedResource = serde_json::from_value(env["resource"].clone()).unwrap();
            assert_eq!(res.associated_data, s(&resource["associated_data"]));
            assert_eq!(res.nonce, s(&resource["nonce"]));
            let plain = res
                .decrypt(s(&case["apiv3_key"]).as_bytes())
                .unwrap_or_else(|e| panic!("{id}: {e}"));
            match id {
                "wxgo-notify-payscore" => {
                    assert_eq!(
                        String::from_utf8(plain).unwrap(),
                        s(&case["expected"]["plaintext"])
                    );
                    assert_eq!(env["event_type"], case["expected"]["event_type"]);
                    assert_eq!(env["id"], case["expected"]["id"]);
                }
                "yansongda-v3-callback" => {
                    let expected = std::fs::read(
                        d.join("yansongda_v3_callback_decrypted_plaintext_DERIVED.pem"),
                    )
                    .unwrap();
                    assert_eq!(plain, expected);
                    let decrypted_cert =
                        Certificate::from_pem(std::str::from_utf8(&plain).unwrap())
                            .unwrap()
                            .remove(0);
                    assert_eq!(
                        decrypted_cert.serial_hex,
                        "45F59D4DABF31918AFCEC556D5D2C6E376675D57"
                    );
                }
                other => panic!("unexpected resource vector {other}"),
            }
            let mut wrong = s(&case["apiv3_key"]).as_bytes().to_vec();
            wrong[0] ^= 1;
            assert_eq!(res.decrypt(&wrong), Err(AeadError::Authentication));
        }
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn certificate_serials() {
    let Some(d) = dir() else { return };
    let serial = |f: &str| {
        Certificate::from_pem(&std::fs::read_to_string(d.join(f)).unwrap()).unwrap()[0]
            .serial_hex
            .clone()
    };
    assert_eq!(
        serial("wechatpay-go_notify_test_platform_cert.pem"),
        "D7CE59D1F522D701"
    );
    assert_eq!(
        serial("yansongda_wechatAppPublicKey_cert.pem"),
        "25F8AA5452D55497C24BA57DC81B1E5915DC2E77"
    );
    assert_eq!(
        serial("wechatpay-java_download_certificate_decrypted_plaintext_DERIVED.pem"),
        "5DEA10EF55877E3CF6C33255C2E7DEFFF7E427EC"
    );
    // The notify test certificate holds the public half of the wechatpay-go test key.
    let signer = RsaSigner::from_pem(
        &std::fs::read_to_string(d.join("wechatpay-go_test_private_key.pem")).unwrap(),
    )
    .unwrap();
    let cert_key = RsaVerifier::from_pem(
        &std::fs::read_to_string(d.join("wechatpay-go_notify_test_platform_cert.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(signer.verifier(), cert_key);
    // PUB_KEY mode: a bare public key PEM loads.
    RsaVerifier::from_pem(
        &std::fs::read_to_string(d.join("wechatpay-java_wechat_pay_public_key.pem")).unwrap(),
    )
    .unwrap();
}

#[test]
fn aead_vectors() {
    let Some(d) = dir() else { return };
    let v = vectors(&d);
    let mut checked = 0;
    for case in v["aead_aes_gcm"].as_array().unwrap() {
        let id = s(&case["id"]);
        let key = s(&case["key"]).as_bytes();
        let nonce = case
            .get("nonce")
            .or(case.get("iv"))
            .map(s)
            .unwrap()
            .as_bytes();
        let aad = s(&case["associated_data"]).as_bytes();
        if let Some(expected_ct) = case.get("expected_ciphertext_b64") {
            let ct =
                crypto::aes_gcm_encrypt(key, nonce, aad, s(&case["plaintext"]).as_bytes()).unwrap();
            assert_eq!(crypto::b64(&ct), s(expected_ct), "{id}");
            assert_eq!(
                crypto::aes_gcm_decrypt(key, nonce, aad, &ct).unwrap(),
                s(&case["plaintext"]).as_bytes()
            );
            checked += 1;
            continue;
        }
        let result = crypto::aes_gcm_decrypt_base64(key, nonce, aad, s(&case["ciphertext_b64"]));
        match case.get("expected_plaintext") {
            Some(p) => {
                assert_eq!(result.unwrap(), s(p).as_bytes(), "{id}");
                if id == "wxjava-aes-message" {
                    let ct = crypto::aes_gcm_encrypt(key, nonce, aad, s(p).as_bytes()).unwrap();
                    assert_eq!(crypto::b64(&ct), s(&case["ciphertext_b64"]));
                }
            }
            None if id == "wxjava-download-certificate" => {
                let plain = result.unwrap();
                let cert = Certificate::from_pem(std::str::from_utf8(&plain).unwrap())
                    .unwrap()
                    .remove(0);
                assert_eq!(cert.serial_hex, s(&case["response_fields"]["serial_no"]));
            }
            None => {
                let err = result.expect_err(id);
                let expected = case["expected"].as_str().unwrap_or_default();
                match id {
                    "wxgo-aes-neg-bad-base64" => assert_eq!(err, AeadError::Base64),
                    "wxgo-aes-neg-bad-key-length" => assert_eq!(err, AeadError::KeyLength(13)),
                    "wxjava-aes-neg-bad-nonce" => assert!(matches!(
                        err,
                        AeadError::Authentication | AeadError::NonceLength(_)
                    )),
                    _ => assert_eq!(err, AeadError::Authentication, "{id}: {expected}"),
                }
            }
        }
        checked += 1;
    }
    assert!(checked >= 12, "{checked}");
}

#[test]
fn trade_bill_sample() {
    let Some(d) = dir() else { return };
    let bytes = std::fs::read(d.join("wechatpay_bill_ALL.csv")).unwrap();
    let records: Vec<_> = parse_trade_bill(bytes.clone())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(records.len(), 45);
    let refunds: Vec<_> = records
        .iter()
        .filter(|r| r.kind == BillKind::Refund)
        .collect();
    assert_eq!(refunds.len(), 14);
    assert_eq!(
        records
            .iter()
            .filter(|r| r.kind == BillKind::Payment)
            .map(|r| r.amount_minor)
            .sum::<i64>(),
        47
    );
    assert_eq!(refunds.iter().map(|r| r.amount_minor).sum::<i64>(), 14);
    assert_eq!(records.iter().map(|r| r.fee_minor).sum::<i64>(), 8);
    let first_refund = refunds[0];
    assert_eq!(
        first_refund.out_refund_no.as_deref(),
        Some("REF4200000263201902167700963919")
    );
    assert_eq!(
        first_refund.channel_trade_no,
        "4200000263201902167700134212"
    );
    assert!(
        records
            .iter()
            .all(|r| r.channel_trade_no.len() == 28 && r.channel_trade_no.starts_with("42"))
    );

    // Changing one amount breaks the summary check.
    let text = String::from_utf8(bytes.clone()).unwrap();
    let tampered = text.replacen("`0.03,`0.01,", "`0.04,`0.01,", 1);
    assert_ne!(tampered, text);
    let err = parse_trade_bill(tampered.into_bytes())
        .unwrap()
        .find_map(Result::err)
        .unwrap();
    assert!(matches!(err, BillError::SummaryMismatch(_)), "{err}");
    // Losing the summary is a truncation.
    let cut = &text[..text.find("总交易单数").unwrap()];
    let err = parse_trade_bill(cut.as_bytes().to_vec())
        .unwrap()
        .find_map(Result::err)
        .unwrap();
    assert!(matches!(err, BillError::Truncated(_)), "{err}");
    // Cut in the middle of a row: a precise line error.
    let mid = &text[..text.len() / 2];
    let err = parse_trade_bill(mid.as_bytes().to_vec())
        .unwrap()
        .find_map(Result::err)
        .unwrap();
    assert!(
        matches!(err, BillError::Line { .. } | BillError::Truncated(_)),
        "{err}"
    );
    // GBK bytes are an encoding error.
    let (gbk, _, _) = encoding_rs::GBK.encode(&text);
    assert!(matches!(
        parse_trade_bill(gbk.into_owned()),
        Err(BillError::Encoding(_))
    ));
    let _ = bill::ALL_HEADER;
}
