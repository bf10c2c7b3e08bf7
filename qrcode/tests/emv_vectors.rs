//! The published EMVCo MPM vectors: every valid payload decodes to its listed fields, every invalid
//! one is rejected with the kind of error its source states, and the CRC vectors match.

use std::path::PathBuf;

use paymux_qrcode::emv::{self, EmvError, Mode, Value};
use serde_json::Value as Json;

fn testdata() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata"
    ));
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipped: shared/testdata not found");
        None
    }
}

/// `payload<TAB>json` lines, comments and blank lines skipped. The payload may be empty or blank.
fn lines(path: PathBuf) -> Vec<(String, Json)> {
    let text = std::fs::read_to_string(&path).expect("read vector file");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (payload, json) = l.split_once('\t').expect("payload<TAB>json");
            (
                payload.to_string(),
                serde_json::from_str(json).expect("json"),
            )
        })
        .collect()
}

/// The payload as the `fields` JSON shape: `{"ID": "value" | {"SUB": "value"}}`.
fn as_fields(p: &emv::Payload) -> Json {
    let mut map = serde_json::Map::new();
    for o in p.objects() {
        let v = match o.value() {
            Value::Primitive(s) => Json::String(s.clone()),
            Value::Template(subs) => Json::Object(
                subs.iter()
                    .map(|s| (s.id().to_string(), Json::String(s.value().to_string())))
                    .collect(),
            ),
        };
        map.insert(o.id().to_string(), v);
    }
    Json::Object(map)
}

fn lacks_strict_fields(fields: &Json) -> bool {
    ["52", "59", "60"].iter().any(|k| fields.get(k).is_none())
}

#[test]
fn every_valid_payload_decodes_to_its_fields() {
    let Some(dir) = testdata() else { return };
    let vectors = lines(dir.join("emvco_valid.txt"));
    assert_eq!(vectors.len(), 22, "the README promises 22 payloads");
    let mut lenient_only = 0;
    for (payload, json) in &vectors {
        let fields = &json["fields"];
        let mode = if lacks_strict_fields(fields) {
            lenient_only += 1;
            let err = emv::decode(payload, Mode::Strict).expect_err("strict needs 52/59/60");
            assert!(
                matches!(err, EmvError::MissingField { .. }),
                "{payload}: {err}"
            );
            Mode::Lenient
        } else {
            Mode::Strict
        };
        let decoded = emv::decode(payload, mode)
            .unwrap_or_else(|e| panic!("{payload} should decode in {mode:?}: {e}"));
        assert_eq!(&as_fields(&decoded), fields, "{payload}");
        assert_eq!(decoded.primitive(63), json["crc"].as_str(), "{payload}");
        // Re-encoding keeps the order and gives back the same string.
        assert_eq!(emv::encode(&decoded), *payload);
        // Strict payloads also pass lenient mode.
        assert!(emv::decode(payload, Mode::Lenient).is_ok());
    }
    assert_eq!(lenient_only, 8, "6 PromptPay + 2 VietQR lack 52/59/60");
}

#[test]
fn the_weak_provenance_khqr_sample_decodes() {
    let Some(dir) = testdata() else { return };
    for (payload, json) in lines(dir.join("emvco_extra/emvco_valid_weak_provenance.txt")) {
        let decoded = emv::decode(&payload, Mode::Strict).expect("KHQR sample decodes");
        assert_eq!(as_fields(&decoded), json["fields"]);
    }
}

/// The kind of error each `expected_error` label describes.
fn matches_label(label: &str, err: &EmvError) -> bool {
    use EmvError::*;
    let kind = label.split([':', ' ']).next().unwrap_or_default();
    match kind {
        "INVALID_CRC" => matches!(err, Crc { .. } | CrcMissing | CrcMalformed { .. }),
        "TOO_SHORT" | "EMPTY" => matches!(err, TooShort { .. }),
        "BLANK" => matches!(err, Blank),
        "DUPLICATE_TAG" => matches!(err, Duplicate { id } if id.to_string() == "53"),
        "INVALID_TAG" => matches!(err, InvalidId { found, .. } if found == "AA"),
        "TRUNCATED" => matches!(err, Truncated { id, .. } if id.to_string() == "00"),
        "NON_NUMERIC_LENGTH" => matches!(err, BadLength { id, .. } if id.to_string() == "00"),
        "NOT_STARTING_WITH_PFI" => matches!(err, NotStartingWithFormatIndicator),
        // The UnionPay HK payload that lost a space: its framing breaks at "8H" after tag 60.
        "DERIVED" => {
            matches!(err, BadLength { id, found } if id.to_string() == "00" && found == "8H")
        }
        other => panic!("no mapping for label {other:?}"),
    }
}

#[test]
fn every_invalid_payload_is_rejected_with_its_kind_of_error() {
    let Some(dir) = testdata() else { return };
    let vectors = lines(dir.join("emvco_invalid.txt"));
    assert_eq!(vectors.len(), 18, "the README promises 18 payloads");
    for (payload, json) in &vectors {
        let label = json["expected_error"].as_str().expect("expected_error");
        for mode in [Mode::Strict, Mode::Lenient] {
            let err = emv::decode(payload, mode)
                .expect_err(&format!("{payload:?} must be rejected in {mode:?}"));
            assert!(
                matches_label(label, &err),
                "{payload:?} in {mode:?}: got {err:?}, expected {label}"
            );
        }
    }
}

#[test]
fn crc_vectors() {
    let Some(dir) = testdata() else { return };
    let text = std::fs::read_to_string(dir.join("emvco_extra/crc16_vectors.tsv")).expect("read");
    let mut n = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut cols = line.split('\t');
        let input = cols.next().expect("input");
        let crc = cols.next().expect("crc");
        assert_eq!(emv::crc16_hex(input), crc, "{input:?}");
        n += 1;
    }
    assert_eq!(n, 9);
}
