//! UnionPay QR protocol layer: signatures (RSA and SM2), messages and response codes, C2B codes,
//! and the daily transaction file.
//!
//! There are no published UnionPay ACP signature, message or bill vectors in `../shared/testdata`
//! (its `iso8583/` vectors are card-present ISO 8583, a different protocol); the 62-prefixed C2B codes
//! of `paycode/paycodes.tsv` are used for code validation, and the UnionPay certificate path is
//! exercised with certificates from the other channels' vectors (an RSA merchant certificate with its
//! key, and the SM2 certificate of a root bundle).

use std::path::PathBuf;

use chrono::{NaiveDate, NaiveDateTime};
use paymux_channels::unionpay::Fields;
use paymux_channels::unionpay::bill::{self, BillHeader};
use paymux_channels::unionpay::messages::{
    self, B2cPayRequest, B2cPayResponse, BackNotification, C2bCode, C2bCodeError, C2bCreateRequest,
    C2bCreateResponse, MessageError, NotifiedTxn, QueryRequest, QueryResponse, RefundRequest,
    RefundResponse, RespClass,
};
use paymux_channels::unionpay::sign::{
    self, GeneratedKey, SignError, SignKey, SignMethod, VerifyKey, VerifyKeys,
};
use paymux_channels::{
    BillError, BillKind, BillRecord, ChannelError, CreatedOrder, NotificationEvent, PayOutcome,
    RefundOutcome, RefundState, TradeState, crypto,
};
use proptest::prelude::*;

const MER_ID: &str = "777290058110048";

fn testdata() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipped: ../shared/testdata not found");
        None
    }
}

fn time(s: &str) -> NaiveDateTime {
    messages::parse_txn_time(s).unwrap()
}

fn b2c_request() -> B2cPayRequest {
    B2cPayRequest {
        mer_id: MER_ID.into(),
        order_id: "ORDER20240301000001".into(),
        txn_time: time("20240301120000"),
        txn_amt: 1234,
        qr_no: C2bCode::parse_wallet("6200000000000000001").unwrap(),
        back_url: "https://merchant.example/unionpay/notify".into(),
    }
}

fn key(method: SignMethod) -> GeneratedKey {
    GeneratedKey::generate(method).unwrap()
}

// ---------------------------------------------------------------------------------------------------
// Signatures

fn sign_verify_round_trip(method: SignMethod) {
    let generated = key(method);
    let signer = generated.sign_key().unwrap();
    assert_eq!(signer.method(), method);
    assert_eq!(signer.cert_id(), generated.cert_id);
    let keys: VerifyKeys = [generated.verify_key().unwrap()].into_iter().collect();

    let mut fields = b2c_request().to_fields().unwrap();
    signer.sign(&mut fields).unwrap();
    assert_eq!(fields["signMethod"], method.code());
    assert_eq!(fields["certId"], generated.cert_id);
    assert_eq!(keys.verify(&fields), Ok(()));
    assert_eq!(generated.verify_key().unwrap().verify(&fields), Ok(()));

    // Through the wire form.
    let body = messages::encode_signed(b2c_request().to_fields().unwrap(), &signer).unwrap();
    let decoded = messages::decode_verified(body.as_bytes(), &keys).unwrap();
    assert_eq!(B2cPayRequest::from_fields(&decoded).unwrap(), b2c_request());

    // Empty fields are not signed: adding one changes nothing.
    let mut with_empty = fields.clone();
    with_empty.insert("reqReserved".into(), String::new());
    assert_eq!(keys.verify(&with_empty), Ok(()));

    // A tampered field.
    let mut tampered = fields.clone();
    tampered.insert("txnAmt".into(), "1235".into());
    assert_eq!(keys.verify(&tampered), Err(SignError::BadSignature));
    let mut added = fields.clone();
    added.insert("reqReserved".into(), "x".into());
    assert_eq!(keys.verify(&added), Err(SignError::BadSignature));

    // A wrong key under the same certId.
    let other = key(method);
    let wrong: VerifyKeys = [other.verify_key().unwrap().with_cert_id(&generated.cert_id)]
        .into_iter()
        .collect();
    assert_eq!(wrong.verify(&fields), Err(SignError::BadSignature));

    // An unknown certId.
    let mut unknown = fields.clone();
    unknown.insert("certId".into(), "1".into());
    assert_eq!(
        keys.verify(&unknown),
        Err(SignError::UnknownCertId("1".into()))
    );

    // signMethod of the other kind.
    let mut switched = fields.clone();
    let other_method = if method == SignMethod::Rsa {
        SignMethod::Sm2
    } else {
        SignMethod::Rsa
    };
    switched.insert("signMethod".into(), other_method.code().into());
    assert!(matches!(
        keys.verify(&switched),
        Err(SignError::MethodMismatch { .. })
    ));

    // Missing or malformed signature fields.
    for field in ["signature", "signMethod", "certId"] {
        let mut missing = fields.clone();
        missing.remove(field);
        assert!(
            matches!(keys.verify(&missing), Err(SignError::MissingField(f)) if f == field),
            "{field}"
        );
        let mut empty = fields.clone();
        empty.insert(field.into(), String::new());
        assert!(
            matches!(keys.verify(&empty), Err(SignError::MissingField(f)) if f == field),
            "{field}"
        );
    }
    let mut bad_method = fields.clone();
    bad_method.insert("signMethod".into(), "11".into());
    assert_eq!(
        keys.verify(&bad_method),
        Err(SignError::UnsupportedMethod("11".into()))
    );
    let mut not_base64 = fields.clone();
    not_base64.insert("signature".into(), "not base64!".into());
    assert_eq!(keys.verify(&not_base64), Err(SignError::SignatureEncoding));

    // As a channel error.
    assert!(matches!(
        messages::decode_verified(messages::encode_form(&tampered).as_bytes(), &keys),
        Err(ChannelError::Signature(_))
    ));
}

#[test]
fn rsa_sign_verify_round_trip() {
    sign_verify_round_trip(SignMethod::Rsa);
}

#[test]
fn sm2_sign_verify_round_trip() {
    sign_verify_round_trip(SignMethod::Sm2);
}

#[test]
fn rsa_signature_is_over_the_hex_sha256_of_the_sign_string() {
    let generated = key(SignMethod::Rsa);
    let signer = generated.sign_key().unwrap();
    let mut fields = b2c_request().to_fields().unwrap();
    signer.sign(&mut fields).unwrap();
    let digest = SignMethod::Rsa.hex_digest(&sign::sign_string(&fields));
    let verifier = crypto::RsaVerifier::from_pem(&generated.public_key_pem).unwrap();
    assert!(verifier.verify_base64(digest.as_bytes(), &fields["signature"]));
    assert!(!verifier.verify_base64(sign::sign_string(&fields).as_bytes(), &fields["signature"]));
}

#[test]
fn sm2_signature_is_64_bytes_r_s_and_der_is_rejected() {
    let generated = key(SignMethod::Sm2);
    let signer = generated.sign_key().unwrap();
    let verifier = generated.verify_key().unwrap();
    let sig = signer.signature_of("a=1&b=2").unwrap();
    assert_eq!(crypto::b64_decode(&sig).unwrap().len(), 64);
    assert_eq!(verifier.verify_signature("a=1&b=2", &sig), Ok(()));
    assert_eq!(
        verifier.verify_signature("a=1&b=3", &sig),
        Err(SignError::BadSignature)
    );
    // The same r and s wrapped as DER SEQUENCE { INTEGER r, INTEGER s } is not our encoding.
    let raw = crypto::b64_decode(&sig).unwrap();
    let int = |b: &[u8]| {
        let mut v = vec![0x02, b.len() as u8 + 1, 0];
        v.extend_from_slice(b);
        v
    };
    let (r, s) = (int(&raw[..32]), int(&raw[32..]));
    let mut der = vec![0x30, (r.len() + s.len()) as u8];
    der.extend(r);
    der.extend(s);
    assert_eq!(
        verifier.verify_signature("a=1&b=2", &crypto::b64(&der)),
        Err(SignError::SignatureEncoding)
    );
}

/// A key pair made with OpenSSL 3.0 (`openssl genpkey -algorithm SM2`) for this test only.
const OPENSSL_SM2_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqBHM9VAYItBG0wawIBAQQgVKaOGIOZl33/+xDq
Ft4Kpn/ujxEEdt0ASekxg1GwNImhRANCAAQqc/A1yyMXuxmu4/3TJ3bKt7GNfHvm
xOjEkGVq6z78AuhvTHuN2Kyr/bRk6Mdv473OpLO8rYl75xQEqUF5/Jc9
-----END PRIVATE KEY-----
";
const OPENSSL_SM2_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoEcz1UBgi0DQgAEKnPwNcsjF7sZruP90yd2yrexjXx7
5sToxJBlaus+/ALob0x7jdisq/20ZOjHb+O9zqSzvK2Je+cUBKlBefyXPQ==
-----END PUBLIC KEY-----
";

/// OpenSSL's SM2 (`pkeyutl -sign -rawin -digest sm3 -pkeyopt distid:1234567812345678`) over the hex
/// SM3 of a sign string, its DER signature re-encoded as `r ‖ s`, verifies with our key: the
/// distinguishing id and `Z_A` are the standard ones. (The reverse — a signature of ours verified by
/// `openssl pkeyutl -verify` — was checked when this vector was made.)
#[test]
fn sm2_interoperates_with_openssl() {
    let fields: Fields = [
        ("accessType", "0"),
        ("certId", "42"),
        ("merId", MER_ID),
        ("signMethod", "02"),
        ("txnAmt", "1"),
        (
            "signature",
            "fGVPrK66i3A2aq4fLRpzAWxMeirXrP+FB342Ghuo9mgN2pWRn7a2ctZ9q5J0p4psWMWouujc8laO7PmeIOdeEQ==",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(
        SignMethod::Sm2.hex_digest(&sign::sign_string(&fields)),
        "fbca456a7e9dddc90d9cedcf5cf05c736056c68363a34caa56ff970c9df08e50"
    );
    let verifier = VerifyKey::sm2_from_pem(OPENSSL_SM2_PUBLIC, Some("42")).unwrap();
    assert_eq!(verifier.verify(&fields), Ok(()));
    let signer = SignKey::sm2_from_pem(OPENSSL_SM2_PRIVATE, Some("42")).unwrap();
    assert_eq!(signer.verify_key(), verifier);
    let mut ours = fields.clone();
    signer.sign(&mut ours).unwrap();
    assert_eq!(verifier.verify(&ours), Ok(()));
}

#[test]
fn derived_cert_ids_are_stable_across_loading() {
    for method in [SignMethod::Rsa, SignMethod::Sm2] {
        let g = key(method);
        let (signer, verifier) = match method {
            SignMethod::Rsa => (
                SignKey::rsa_from_pem(&g.private_key_pem, None).unwrap(),
                VerifyKey::rsa_from_pem(&g.public_key_pem, None).unwrap(),
            ),
            SignMethod::Sm2 => (
                SignKey::sm2_from_pem(&g.private_key_pem, None).unwrap(),
                VerifyKey::sm2_from_pem(&g.public_key_pem, None).unwrap(),
            ),
        };
        assert_eq!(signer.cert_id(), g.cert_id);
        assert_eq!(verifier.cert_id(), g.cert_id);
        assert_eq!(signer.verify_key(), verifier);
        assert!(g.cert_id.parse::<u64>().is_ok());
        assert_ne!(key(method).cert_id, g.cert_id);
    }
}

#[test]
fn garbage_keys_are_key_errors() {
    assert!(matches!(
        SignKey::rsa_from_pem("", None),
        Err(SignError::Key(_))
    ));
    assert!(matches!(
        SignKey::sm2_from_pem("not a key", None),
        Err(SignError::Key(_))
    ));
    assert!(matches!(
        VerifyKey::sm2_from_pem(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
            None
        ),
        Err(SignError::Key(_))
    ));
    assert!(matches!(
        VerifyKey::rsa_from_pem("AAAA", None),
        Err(SignError::Key(_))
    ));
    assert!(matches!(
        VerifyKey::from_certificate_pem("AAAA"),
        Err(SignError::Key(_))
    ));
    // An SM2 key is not an RSA key and the reverse.
    let sm2 = key(SignMethod::Sm2);
    assert!(SignKey::rsa_from_pem(&sm2.private_key_pem, None).is_err());
    assert!(VerifyKey::rsa_from_pem(&sm2.public_key_pem, None).is_err());
    let rsa = key(SignMethod::Rsa);
    assert!(SignKey::sm2_from_pem(&rsa.private_key_pem, None).is_err());
    assert!(matches!(
        ChannelError::from(SignError::Key("x".into())),
        ChannelError::Config(_)
    ));
}

#[test]
fn certificate_cert_ids_are_decimal_serials() {
    let Some(dir) = testdata() else { return };
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
    let key_pem = read("wechatpay/wechatpay-java_merchant_private_key.pem");
    let cert_pem = read("wechatpay/wechatpay-java_merchant_certificate.pem");
    let serial = crypto::Certificate::from_pem(&cert_pem).unwrap()[0]
        .serial_decimal
        .clone();

    let signer = SignKey::rsa_with_certificate(&key_pem, &cert_pem).unwrap();
    assert_eq!(signer.cert_id(), serial);
    let verifier = VerifyKey::from_certificate_pem(&cert_pem).unwrap();
    assert_eq!(verifier.method(), SignMethod::Rsa);
    assert_eq!(verifier.cert_id(), serial);
    assert_eq!(VerifyKey::rsa_from_pem(&cert_pem, None).unwrap(), verifier);
    let mut fields = b2c_request().to_fields().unwrap();
    signer.sign(&mut fields).unwrap();
    assert_eq!(verifier.verify(&fields), Ok(()));

    // A certificate that does not hold the key.
    let other_cert = read("wechatpay/yansongda_wechatAppPublicKey_cert.pem");
    assert!(matches!(
        SignKey::rsa_with_certificate(&key_pem, &other_cert),
        Err(SignError::Key(_))
    ));

    // An SM2 certificate (first of a root bundle) gives an SM2 key; an ECDSA P-384 one is refused.
    let bundle = read("alipay/alipay-sdk-nodejs_alipayRootCert.crt");
    let blocks = crypto::pem_blocks(&bundle).unwrap();
    let mut kinds = Vec::new();
    for (_, der) in blocks {
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            crypto::b64(&der)
        );
        match VerifyKey::from_certificate_pem(&pem) {
            Ok(k) => {
                let serial = crypto::Certificate::from_der(&der).unwrap().serial_decimal;
                assert_eq!(k.cert_id(), serial);
                kinds.push(Some(k.method()));
            }
            Err(SignError::Key(_)) => kinds.push(None),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(kinds.contains(&Some(SignMethod::Sm2)), "{kinds:?}");
    assert!(kinds.contains(&Some(SignMethod::Rsa)), "{kinds:?}");
    assert!(kinds.contains(&None), "{kinds:?}");
}

// ---------------------------------------------------------------------------------------------------
// Response codes

#[test]
fn response_code_table() {
    let table = [
        ("00", RespClass::Success, TradeState::Succeeded),
        ("A6", RespClass::Success, TradeState::Succeeded),
        ("03", RespClass::InProgress, TradeState::UserPaying),
        ("04", RespClass::InProgress, TradeState::UserPaying),
        ("05", RespClass::InProgress, TradeState::UserPaying),
        ("01", RespClass::Failed, TradeState::Failed),
        ("02", RespClass::Failed, TradeState::Failed),
        ("06", RespClass::Failed, TradeState::Failed),
        ("12", RespClass::Failed, TradeState::Failed),
        ("34", RespClass::Failed, TradeState::Failed),
        ("99", RespClass::Failed, TradeState::Failed),
        ("0", RespClass::Failed, TradeState::Failed),
        ("", RespClass::Failed, TradeState::Failed),
    ];
    for (code, class, state) in table {
        assert_eq!(messages::classify(code), class, "{code}");
        assert_eq!(messages::trade_state(code), state, "{code}");
    }
}

fn query_response(resp_code: &str, orig: Option<&str>) -> QueryResponse {
    QueryResponse {
        mer_id: MER_ID.into(),
        order_id: "ORDER20240301000001".into(),
        txn_time: time("20240301120000"),
        resp_code: resp_code.into(),
        resp_msg: "msg".into(),
        orig_resp_code: orig.map(str::to_string),
        orig_resp_msg: orig.map(|_| "orig".to_string()),
        query_id: Some("202403011200000000001".into()),
        txn_amt: Some(1234),
        settle_amt: Some(1234),
        settle_date: Some("0301".into()),
    }
}

#[test]
fn query_answers_map_to_trades_and_errors() {
    for (orig, state) in [
        ("00", TradeState::Succeeded),
        ("A6", TradeState::Succeeded),
        ("03", TradeState::UserPaying),
        ("04", TradeState::UserPaying),
        ("05", TradeState::UserPaying),
        ("01", TradeState::Failed),
        ("61", TradeState::Failed),
    ] {
        let answer = query_response("00", Some(orig));
        let back = QueryResponse::from_fields(&answer.to_fields()).unwrap();
        assert_eq!(back, answer);
        let trade = back.to_trade().unwrap();
        assert_eq!(trade.state, state, "{orig}");
        assert_eq!(trade.channel_state, orig);
        assert_eq!(trade.amount_minor, Some(1234));
        assert_eq!(trade.out_trade_no, "ORDER20240301000001");
        assert_eq!(
            trade.channel_trade_no.as_deref(),
            Some("202403011200000000001")
        );
        assert_eq!(trade.paid_at.is_some(), state == TradeState::Succeeded);
    }
    for code in ["03", "04", "05"] {
        assert!(
            matches!(
                query_response(code, None).to_trade(),
                Err(ChannelError::Unknown(_))
            ),
            "{code}"
        );
    }
    assert_eq!(
        query_response("34", None).to_trade(),
        Err(ChannelError::Rejected {
            code: "34".into(),
            message: "msg".into()
        })
    );
    // A successful query must say the order's state.
    let mut fields = query_response("00", Some("00")).to_fields();
    fields.remove("origRespCode");
    assert_eq!(
        QueryResponse::from_fields(&fields),
        Err(MessageError::Missing("origRespCode"))
    );
}

#[test]
fn b2c_refund_and_create_answers_map_to_outcomes() {
    let pay = |code: &str| B2cPayResponse {
        mer_id: MER_ID.into(),
        order_id: "ORDER20240301000001".into(),
        txn_time: time("20240301120000"),
        resp_code: code.into(),
        resp_msg: "m".into(),
        query_id: Some("Q1".into()),
        txn_amt: Some(1234),
    };
    assert_eq!(
        pay("00").outcome(),
        PayOutcome::UserPaying {
            channel_trade_no: Some("Q1".into())
        }
    );
    assert!(matches!(pay("04").outcome(), PayOutcome::Unknown { .. }));
    assert_eq!(
        pay("61").outcome(),
        PayOutcome::Failed {
            code: "61".into(),
            message: "m".into()
        }
    );
    assert_eq!(
        B2cPayResponse::from_fields(&pay("00").to_fields()).unwrap(),
        pay("00")
    );

    let refund = |code: &str| RefundResponse {
        mer_id: MER_ID.into(),
        order_id: "REFUND2024030100001".into(),
        txn_time: time("20240301130000"),
        resp_code: code.into(),
        resp_msg: "m".into(),
        query_id: Some("Q2".into()),
        orig_qry_id: Some("Q1".into()),
        txn_amt: Some(200),
    };
    match refund("00").outcome() {
        RefundOutcome::Processing { refund } => {
            assert_eq!(refund.state, RefundState::Processing);
            assert_eq!(refund.out_refund_no, "REFUND2024030100001");
            assert_eq!(refund.amount_minor, Some(200));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        refund("05").outcome(),
        RefundOutcome::Unknown { .. }
    ));
    assert!(matches!(refund("12").outcome(), RefundOutcome::Failed { code, .. } if code == "12"));
    assert_eq!(
        RefundResponse::from_fields(&refund("00").to_fields()).unwrap(),
        refund("00")
    );

    let create = |code: &str, qr: Option<&str>| C2bCreateResponse {
        mer_id: MER_ID.into(),
        order_id: "ORDER20240301000002".into(),
        txn_time: time("20240301120000"),
        resp_code: code.into(),
        resp_msg: "m".into(),
        qr_code: qr.map(str::to_string),
    };
    let ok = create("00", Some("https://qr.95516.com/00010001/62112233"));
    assert_eq!(
        ok.created(),
        Ok(CreatedOrder::Qr {
            code_url: "https://qr.95516.com/00010001/62112233".into()
        })
    );
    assert_eq!(C2bCreateResponse::from_fields(&ok.to_fields()).unwrap(), ok);
    assert!(matches!(
        create("00", None).created(),
        Err(ChannelError::Protocol(_))
    ));
    assert!(matches!(
        create("03", None).created(),
        Err(ChannelError::Unknown(_))
    ));
    assert!(
        matches!(create("30", None).created(), Err(ChannelError::Rejected { code, .. }) if code == "30")
    );
}

// ---------------------------------------------------------------------------------------------------
// Requests and notifications

#[test]
fn requests_have_the_documented_fields_and_round_trip() {
    let b2c = b2c_request().to_fields().unwrap();
    for (k, v) in [
        ("version", "5.1.0"),
        ("encoding", "UTF-8"),
        ("txnType", "01"),
        ("txnSubType", "06"),
        ("bizType", "000000"),
        ("channelType", "08"),
        ("accessType", "0"),
        ("currencyCode", "156"),
        ("txnAmt", "1234"),
        ("qrNo", "6200000000000000001"),
        ("txnTime", "20240301120000"),
        ("merId", MER_ID),
    ] {
        assert_eq!(b2c.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(B2cPayRequest::from_fields(&b2c).unwrap(), b2c_request());

    let create = C2bCreateRequest {
        mer_id: MER_ID.into(),
        order_id: "ORDER20240301000002".into(),
        txn_time: time("20240301120500"),
        txn_amt: 1,
        back_url: "http://localhost:8080/n".into(),
    };
    let f = create.to_fields().unwrap();
    assert_eq!(
        (f["txnType"].as_str(), f["txnSubType"].as_str()),
        ("01", "07")
    );
    assert_eq!(C2bCreateRequest::from_fields(&f).unwrap(), create);

    let query = QueryRequest {
        mer_id: MER_ID.into(),
        order_id: "ORDER20240301000002".into(),
        txn_time: time("20240301120500"),
    };
    let f = query.to_fields().unwrap();
    assert_eq!(
        (f["txnType"].as_str(), f["txnSubType"].as_str()),
        ("00", "00")
    );
    assert_eq!(QueryRequest::from_fields(&f).unwrap(), query);

    let refund = RefundRequest {
        mer_id: MER_ID.into(),
        order_id: "REFUND2024030100001".into(),
        txn_time: time("20240301130000"),
        txn_amt: 200,
        orig_qry_id: "202403011200000000001".into(),
        back_url: "https://merchant.example/n".into(),
    };
    let f = refund.to_fields().unwrap();
    assert_eq!(
        (f["txnType"].as_str(), f["origQryId"].as_str()),
        ("04", "202403011200000000001")
    );
    assert_eq!(RefundRequest::from_fields(&f).unwrap(), refund);
}

#[test]
fn invalid_requests_are_refused_precisely() {
    let mut r = b2c_request();
    r.txn_amt = 0;
    assert!(matches!(
        r.to_fields(),
        Err(MessageError::Invalid {
            field: "txnAmt",
            ..
        })
    ));
    r.txn_amt = 1_000_000_000_000;
    assert!(matches!(
        r.to_fields(),
        Err(MessageError::Invalid {
            field: "txnAmt",
            ..
        })
    ));
    let mut r = b2c_request();
    r.order_id = "ORDER-1234".into();
    assert!(matches!(
        r.to_fields(),
        Err(MessageError::Invalid {
            field: "orderId",
            ..
        })
    ));
    let mut r = b2c_request();
    r.mer_id = "123".into();
    assert!(matches!(
        r.to_fields(),
        Err(MessageError::Invalid { field: "merId", .. })
    ));
    let mut r = b2c_request();
    r.back_url = "ftp://x".into();
    assert!(matches!(
        r.to_fields(),
        Err(MessageError::Invalid {
            field: "backUrl",
            ..
        })
    ));

    let good = b2c_request().to_fields().unwrap();
    let with = |k: &str, v: &str| {
        let mut f = good.clone();
        f.insert(k.into(), v.into());
        B2cPayRequest::from_fields(&f)
    };
    assert!(matches!(
        with("txnSubType", "07"),
        Err(MessageError::Invalid {
            field: "txnSubType",
            ..
        })
    ));
    assert!(matches!(
        with("currencyCode", "840"),
        Err(MessageError::Invalid {
            field: "currencyCode",
            ..
        })
    ));
    assert!(matches!(
        with("qrNo", "62abc"),
        Err(MessageError::Invalid { field: "qrNo", .. })
    ));
    assert!(matches!(
        with("txnAmt", "12.34"),
        Err(MessageError::Invalid {
            field: "txnAmt",
            ..
        })
    ));
    assert!(matches!(
        with("txnTime", "20240230120000"),
        Err(MessageError::Invalid {
            field: "txnTime",
            ..
        })
    ));
    assert_eq!(with("merId", ""), Err(MessageError::Missing("merId")));
}

fn notification(txn: NotifiedTxn, resp_code: &str) -> BackNotification {
    BackNotification {
        txn,
        txn_sub_type: if txn == NotifiedTxn::Payment {
            "06".into()
        } else {
            "00".into()
        },
        mer_id: MER_ID.into(),
        order_id: if txn == NotifiedTxn::Payment {
            "ORDER20240301000001".into()
        } else {
            "REFUND2024030100001".into()
        },
        txn_time: time("20240301120000"),
        txn_amt: 1234,
        resp_code: resp_code.into(),
        resp_msg: "成功[0000000]".into(),
        query_id: "202403011200000000009".into(),
        orig_qry_id: (txn == NotifiedTxn::Refund).then(|| "202403011200000000001".into()),
        settle_amt: Some(1234),
        settle_date: Some("0301".into()),
        trace_no: Some("123456".into()),
        trace_time: Some("0301120000".into()),
    }
}

#[test]
fn back_notification_verified_decoded_and_answered() {
    let gateway = key(SignMethod::Sm2);
    let keys: VerifyKeys = [gateway.verify_key().unwrap()].into_iter().collect();
    let signer = gateway.sign_key().unwrap();

    let paid = notification(NotifiedTxn::Payment, "00");
    let body = messages::encode_signed(paid.to_fields(), &signer).unwrap();
    let fields = messages::decode_verified(body.as_bytes(), &keys).unwrap();
    let decoded = BackNotification::from_fields(&fields).unwrap();
    assert_eq!(decoded, paid);
    let n = decoded.to_notification();
    assert_eq!(n.id.as_deref(), Some("202403011200000000009"));
    match n.event {
        NotificationEvent::Payment { trade } => {
            assert_eq!(trade.state, TradeState::Succeeded);
            assert_eq!(trade.out_trade_no, "ORDER20240301000001");
            assert_eq!(trade.amount_minor, Some(1234));
            assert_eq!(
                trade.paid_at.unwrap().to_rfc3339(),
                "2024-03-01T04:00:00+00:00"
            );
        }
        other => panic!("{other:?}"),
    }

    let refunded = notification(NotifiedTxn::Refund, "00");
    let decoded = BackNotification::from_fields(&refunded.to_fields()).unwrap();
    assert_eq!(decoded, refunded);
    match decoded.to_notification().event {
        NotificationEvent::Refund { refund } => {
            assert_eq!(refund.state, RefundState::Succeeded);
            assert_eq!(refund.out_refund_no, "REFUND2024030100001");
        }
        other => panic!("{other:?}"),
    }
    let failed = notification(NotifiedTxn::Payment, "61").to_notification();
    assert!(
        matches!(failed.event, NotificationEvent::Payment { trade } if trade.state == TradeState::Failed && trade.paid_at.is_none())
    );

    // A refund notification names the refunded payment.
    let mut f = refunded.to_fields();
    f.remove("origQryId");
    assert_eq!(
        BackNotification::from_fields(&f),
        Err(MessageError::Missing("origQryId"))
    );
    // Not a notification we know.
    let mut f = paid.to_fields();
    f.insert("txnType".into(), "31".into());
    assert!(matches!(
        BackNotification::from_fields(&f),
        Err(MessageError::Invalid {
            field: "txnType",
            ..
        })
    ));

    // A tampered notification does not verify.
    let tampered = body.replace("txnAmt=1234", "txnAmt=9234");
    assert_ne!(tampered, body);
    assert!(matches!(
        messages::decode_verified(tampered.as_bytes(), &keys),
        Err(ChannelError::Signature(_))
    ));

    let reply = messages::notification_reply(true);
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (200, b"ok".as_slice())
    );
    assert_ne!(messages::notification_reply(false).status, 200);
}

// ---------------------------------------------------------------------------------------------------
// C2B codes

#[test]
fn c2b_code_validation() {
    assert!(C2bCode::parse("1").is_ok());
    assert!(C2bCode::parse("12345678901234567890").is_ok());
    assert_eq!(C2bCode::parse(""), Err(C2bCodeError::Empty));
    assert_eq!(
        C2bCode::parse("123456789012345678901"),
        Err(C2bCodeError::TooLong(21))
    );
    assert_eq!(C2bCode::parse("62 1"), Err(C2bCodeError::NotDigit(2)));
    assert_eq!(C2bCode::parse("６２"), Err(C2bCodeError::NotDigit(0)));
    assert_eq!(
        C2bCode::parse(" 6212345678901234567"),
        Err(C2bCodeError::NotDigit(0))
    );

    let wallet = C2bCode::parse_wallet("6212345678901234567").unwrap();
    assert!(wallet.is_wallet_code());
    assert_eq!(wallet.to_string(), "6212345678901234567");
    assert_eq!(
        C2bCode::parse_wallet("621234567890123456"),
        Err(C2bCodeError::NotWalletCode)
    );
    assert_eq!(
        C2bCode::parse_wallet("6312345678901234567"),
        Err(C2bCodeError::NotWalletCode)
    );
    assert_eq!(
        C2bCode::parse_wallet("62123456789012345678"),
        Err(C2bCodeError::NotWalletCode)
    );
    assert!(
        !C2bCode::parse("120061098828009406")
            .unwrap()
            .is_wallet_code()
    );
}

#[test]
fn c2b_codes_of_the_payment_code_vectors() {
    let Some(dir) = testdata() else { return };
    let text = std::fs::read_to_string(dir.join("paycode/paycodes.tsv")).unwrap();
    let mut unionpay = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut cols = line.split('\t');
        let (code, expected) = (cols.next().unwrap(), cols.next().unwrap_or(""));
        let wallet = C2bCode::parse_wallet(code);
        if expected == "UNIONPAY" {
            unionpay += 1;
            assert!(wallet.is_ok(), "{code}");
        } else {
            assert!(
                wallet.is_err(),
                "{code} ({expected}) is not a UnionPay wallet code"
            );
        }
        // Every code of 1–20 digits is a well-formed C2B code; the 22-digit one is not.
        assert_eq!(C2bCode::parse(code).is_ok(), code.len() <= 20, "{code}");
    }
    assert!(unionpay >= 4);
}

// ---------------------------------------------------------------------------------------------------
// Bill

fn record(
    kind: BillKind,
    qid: &str,
    order: &str,
    refund: Option<&str>,
    amount: i64,
    fee: i64,
    t: &str,
) -> BillRecord {
    BillRecord {
        channel_trade_no: qid.into(),
        out_trade_no: order.into(),
        out_refund_no: refund.map(str::to_string),
        kind,
        amount_minor: amount,
        fee_minor: fee,
        status: "00".into(),
        time: time(t),
    }
}

fn sample_records() -> Vec<BillRecord> {
    vec![
        record(
            BillKind::Payment,
            "202403011200000000001",
            "ORDER0000001",
            None,
            1000,
            6,
            "20240301120000",
        ),
        record(
            BillKind::Refund,
            "202403011530000000002",
            "ORDER0000001",
            Some("REFUND000001"),
            300,
            2,
            "20240301153000",
        ),
        record(
            BillKind::Payment,
            "202403012300000000003",
            "ORDER0000002",
            None,
            99_999_999_999,
            0,
            "20240301230000",
        ),
    ]
}

fn date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 3, 1).unwrap()
}

fn read_all(bytes: &[u8]) -> Result<(BillHeader, Vec<BillRecord>), BillError> {
    let (header, records) = bill::read_bill_bytes(bytes)?;
    Ok((header, records.collect::<Result<Vec<_>, _>>()?))
}

#[test]
fn bill_round_trip() {
    let text = bill::write_bill(MER_ID, date(), &sample_records()).unwrap();
    assert!(
        text.starts_with("H|UPQR1|777290058110048|20240301|3|100000000699\n"),
        "{text}"
    );
    assert!(text.contains(
        "\nD|202403011530000000002|REFUND000001|ORDER0000001|04|300|2|00|20240301153000|20240301\n"
    ));
    assert!(text.ends_with("\nT|2|100000000999|6|1|300|2\n"), "{text}");
    let (header, records) = read_all(text.as_bytes()).unwrap();
    assert_eq!(
        header,
        BillHeader {
            mer_id: MER_ID.into(),
            date: date(),
            count: 3,
            net_amount: 100_000_000_699
        }
    );
    assert_eq!(records, sample_records());

    // CRLF line ends and a trailer without its final line break read the same.
    let crlf = text.replace('\n', "\r\n");
    assert_eq!(read_all(crlf.as_bytes()).unwrap().1, sample_records());
    assert_eq!(
        read_all(text.trim_end().as_bytes()).unwrap().1,
        sample_records()
    );

    // An empty day.
    let empty = bill::write_bill(MER_ID, date(), &[]).unwrap();
    assert_eq!(
        empty,
        "H|UPQR1|777290058110048|20240301|0|0\nT|0|0|0|0|0|0\n"
    );
    assert_eq!(read_all(empty.as_bytes()).unwrap().1, vec![]);
    // Refunds only: a negative net amount.
    let refunds = vec![sample_records()[1].clone()];
    let text = bill::write_bill(MER_ID, date(), &refunds).unwrap();
    assert!(text.starts_with("H|UPQR1|777290058110048|20240301|1|-300\n"));
    assert_eq!(read_all(text.as_bytes()).unwrap().1, refunds);
}

#[test]
fn bill_streams_records_before_the_trailer_check() {
    let text = bill::write_bill(MER_ID, date(), &sample_records()).unwrap();
    let tampered = text.replace("T|2|100000000999|6|", "T|2|100000000998|6|");
    let (_, mut records) = bill::read_bill_bytes(tampered.as_bytes()).unwrap();
    for expected in sample_records() {
        assert_eq!(records.next(), Some(Ok(expected)));
    }
    assert!(
        matches!(records.next(), Some(Err(BillError::SummaryMismatch(m))) if m.contains("payment amount"))
    );
    assert_eq!(records.next(), None);
}

#[test]
fn bill_truncated() {
    let text = bill::write_bill(MER_ID, date(), &sample_records()).unwrap();
    let without_trailer = &text[..text.rfind("T|").unwrap()];
    assert!(matches!(
        read_all(without_trailer.as_bytes()),
        Err(BillError::Truncated(_))
    ));
    assert!(matches!(read_all(b""), Err(BillError::Truncated(_))));
    assert!(matches!(
        read_all(b"H|UPQR1|777290058110048|20240301|0|0"),
        Err(BillError::Truncated(_))
    ));
    // Cut anywhere before the trailer's last digit: never a complete, valid bill.
    let last_digit = text.trim_end().len();
    for cut in 0..last_digit {
        assert!(read_all(&text.as_bytes()[..cut]).is_err(), "cut at {cut}");
    }
    // Cut inside a detail line: truncated, not a malformed line.
    let inside = text.find("\nD|2024030115").unwrap() + 10;
    assert!(matches!(
        read_all(&text.as_bytes()[..inside]),
        Err(BillError::Truncated(_))
    ));
}

/// What a tampered bill's error must look like.
type ErrorCheck = fn(&BillError) -> bool;

#[test]
fn bill_tampered() {
    let text = bill::write_bill(MER_ID, date(), &sample_records()).unwrap();
    let cases: Vec<(String, ErrorCheck)> = vec![
        // A detail amount changed: the trailer no longer matches.
        (
            text.replace("|01|1000|6|", "|01|1001|6|"),
            |e| matches!(e, BillError::SummaryMismatch(m) if m.contains("payment amount")),
        ),
        (
            text.replace("|04|300|2|", "|04|300|3|"),
            |e| matches!(e, BillError::SummaryMismatch(m) if m.contains("refund fees")),
        ),
        // Trailer and detail changed together: the header still disagrees.
        (
            text.replace("|01|1000|6|", "|01|1001|6|")
                .replace("T|2|100000000999|", "T|2|100000001000|"),
            |e| matches!(e, BillError::SummaryMismatch(m) if m.contains("header net amount")),
        ),
        (
            text.replace("|20240301|3|", "|20240301|4|"),
            |e| matches!(e, BillError::SummaryMismatch(m) if m.contains("header count")),
        ),
        // A line removed.
        (
            text.lines()
                .filter(|l| !l.contains("ORDER0000002"))
                .map(|l| format!("{l}\n"))
                .collect(),
            |e| matches!(e, BillError::SummaryMismatch(_)),
        ),
        // Malformed lines, with their numbers.
        (
            text.replace("|01|1000|", "|02|1000|"),
            |e| matches!(e, BillError::Line { line: 2, message } if message.contains("txnType")),
        ),
        (
            text.replace("|04|300|", "|04|3.00|"),
            |e| matches!(e, BillError::Line { line: 3, message } if message.contains("txnAmt")),
        ),
        (
            text.replace("|ORDER0000001|04|", "||04|"),
            |e| matches!(e, BillError::Line { line: 3, message } if message.contains("origOrderId")),
        ),
        (
            text.replace("|00|20240301120000|", "|05|20240301120000|"),
            |e| matches!(e, BillError::Line { line: 2, message } if message.contains("respCode")),
        ),
        (
            text.replace("|20240301120000|20240301", "|20240301120000|20240302"),
            |e| matches!(e, BillError::Line { line: 2, message } if message.contains("settleDate")),
        ),
        (text.replacen("D|", "X|", 1), |e| {
            matches!(e, BillError::Line { line: 2, .. })
        }),
        (text.replacen("\nD|", "\n\nD|", 1), |e| {
            matches!(e, BillError::Line { line: 2, .. })
        }),
        (
            text.replace("|00|20240301230000|", "|00|x|20240301230000|"),
            |e| matches!(e, BillError::Line { line: 4, message } if message.contains("fields")),
        ),
        (
            format!("{text}D|x\n"),
            |e| matches!(e, BillError::Line { line: 6, message } if message.contains("after the trailer")),
        ),
        (text.replace("UPQR1", "UPQR2"), |e| {
            matches!(e, BillError::Line { line: 1, .. })
        }),
        (text.replace("ORDER0000002", "ORDER\u{e9}000002"), |e| {
            matches!(e, BillError::Line { line: 4, .. })
        }),
    ];
    for (i, (bad, expected)) in cases.into_iter().enumerate() {
        assert_ne!(bad, text, "case {i} changes nothing");
        let err = read_all(bad.as_bytes()).expect_err(&format!("case {i}"));
        assert!(expected(&err), "case {i}: {err:?}");
    }
    let mut not_utf8 = text.into_bytes();
    not_utf8[60] = 0xFF;
    assert!(matches!(read_all(&not_utf8), Err(BillError::Encoding(_))));
}

#[test]
fn bill_writer_refuses_what_the_reader_would_refuse() {
    let mut refund_without_no = sample_records();
    refund_without_no[1].out_refund_no = None;
    assert!(matches!(
        bill::write_bill(MER_ID, date(), &refund_without_no),
        Err(BillError::Line { line: 3, .. })
    ));
    let mut bad_id = sample_records();
    bad_id[0].out_trade_no = "ORDER|0000001".into();
    assert!(matches!(
        bill::write_bill(MER_ID, date(), &bad_id),
        Err(BillError::Line { line: 2, .. })
    ));
    let mut subsecond = sample_records();
    subsecond[2].time += chrono::Duration::milliseconds(5);
    assert!(matches!(
        bill::write_bill(MER_ID, date(), &subsecond),
        Err(BillError::Line { line: 4, .. })
    ));
    let mut failed = sample_records();
    failed[0].status = "01".into();
    assert!(bill::write_bill(MER_ID, date(), &failed).is_err());
    assert!(bill::write_bill("short", date(), &[]).is_err());
}

// ---------------------------------------------------------------------------------------------------
// Garbage never panics

fn arb_fields() -> impl Strategy<Value = Fields> {
    let names = prop::sample::select(vec![
        "version",
        "encoding",
        "txnType",
        "txnSubType",
        "bizType",
        "channelType",
        "accessType",
        "merId",
        "orderId",
        "txnTime",
        "txnAmt",
        "currencyCode",
        "qrNo",
        "backUrl",
        "respCode",
        "respMsg",
        "origRespCode",
        "queryId",
        "origQryId",
        "settleAmt",
        "settleDate",
        "qrCode",
        "signMethod",
        "certId",
        "signature",
    ]);
    prop::collection::btree_map(
        names.prop_map(str::to_string),
        "[0-9A-Za-z:/.+=]{0,24}",
        0..25,
    )
}

fn arb_record() -> impl Strategy<Value = BillRecord> {
    (
        any::<bool>(),
        "[0-9A-Za-z]{1,40}",
        "[0-9A-Za-z]{8,40}",
        "[0-9A-Za-z]{8,40}",
        1i64..1_000_000_000_000,
        0i64..1_000_000_000_000,
        0i64..86_400,
    )
        .prop_map(
            |(refund, qid, order, refund_no, amount, fee, secs)| BillRecord {
                channel_trade_no: qid,
                out_trade_no: order,
                out_refund_no: refund.then_some(refund_no),
                kind: if refund {
                    BillKind::Refund
                } else {
                    BillKind::Payment
                },
                amount_minor: amount,
                fee_minor: fee,
                status: "00".into(),
                time: date().and_hms_opt(0, 0, 0).unwrap() + chrono::Duration::seconds(secs),
            },
        )
}

proptest! {
    #[test]
    fn bill_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok((_, records)) = bill::read_bill_bytes(&bytes) {
            for r in records.take(1000) {
                let _ = r;
            }
        }
    }

    #[test]
    fn bill_line_garbage_after_a_valid_header_never_panics(lines in prop::collection::vec("[DTH|0-9A-Za-z-]{0,80}", 0..8)) {
        let text = format!("H|UPQR1|777290058110048|20240301|1|5\n{}\n", lines.join("\n"));
        if let Ok((_, records)) = bill::read_bill_bytes(text.as_bytes()) {
            let results: Vec<_> = records.collect();
            // Only the last item may be an error, and the stream ends after it.
            for r in results.iter().rev().skip(1) {
                prop_assert!(r.is_ok());
            }
        }
    }

    #[test]
    fn bill_round_trips(records in prop::collection::vec(arb_record(), 0..20)) {
        let text = bill::write_bill(MER_ID, date(), &records).unwrap();
        let (header, read) = read_all(text.as_bytes()).unwrap();
        prop_assert_eq!(header.count, records.len() as u64);
        prop_assert_eq!(read, records);
    }

    #[test]
    fn bill_byte_flips_never_panic(records in prop::collection::vec(arb_record(), 1..6), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let text = bill::write_bill(MER_ID, date(), &records).unwrap();
        let mut bytes = text.clone().into_bytes();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = read_all(&bytes);
    }

    #[test]
    fn form_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(fields) = messages::decode_form(&bytes) {
            // What decodes re-encodes to the same fields.
            prop_assert_eq!(messages::decode_form(messages::encode_form(&fields).as_bytes()).unwrap(), fields);
        }
    }

    #[test]
    fn messages_from_garbage_fields_never_panic(fields in arb_fields()) {
        let _ = B2cPayRequest::from_fields(&fields);
        let _ = C2bCreateRequest::from_fields(&fields);
        let _ = QueryRequest::from_fields(&fields);
        let _ = RefundRequest::from_fields(&fields);
        let _ = B2cPayResponse::from_fields(&fields).map(|r| r.outcome());
        let _ = C2bCreateResponse::from_fields(&fields).map(|r| r.created());
        let _ = QueryResponse::from_fields(&fields).map(|r| r.to_trade());
        let _ = RefundResponse::from_fields(&fields).map(|r| r.outcome());
        let _ = BackNotification::from_fields(&fields).map(|n| n.to_notification());
        let keys = VerifyKeys::new();
        prop_assert!(keys.verify(&fields).is_err());
    }

    #[test]
    fn verification_of_garbage_signatures_fails_cleanly(sig in "[ -~]{0,120}", method in "0[0-3]") {
        let mut fields = b2c_request().to_fields().unwrap();
        fields.insert("signature".into(), sig);
        fields.insert("signMethod".into(), method);
        fields.insert("certId".into(), "42".into());
        let keys: VerifyKeys = [
            VerifyKey::sm2_from_pem(&SM2_PUBLIC.with(|k| k.clone()), Some("42")).unwrap(),
        ].into_iter().collect();
        prop_assert!(keys.verify(&fields).is_err());
    }

    #[test]
    fn c2b_code_parse_is_total(s in ".{0,30}") {
        match C2bCode::parse(&s) {
            Ok(code) => prop_assert!(!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) && code.as_str() == s),
            Err(_) => prop_assert!(s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit())),
        }
    }

    #[test]
    fn txn_time_and_fen_parsers_are_total(s in ".{0,20}") {
        if let Ok(t) = messages::parse_txn_time(&s) {
            prop_assert_eq!(messages::format_txn_time(t), s.clone());
        }
        if let Ok(v) = messages::parse_fen("txnAmt", &s) {
            prop_assert!(v >= 0);
        }
    }
}

thread_local! {
    static SM2_PUBLIC: String = key(SignMethod::Sm2).public_key_pem;
}
