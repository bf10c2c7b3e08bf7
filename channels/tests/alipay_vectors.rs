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
