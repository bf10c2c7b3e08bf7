//! The published EMV CPM BER-TLV payloads parse into their listed trees.

use std::path::PathBuf;

use base64::Engine as _;
use paymux_qrcode::tlv::{self, Tlv, TlvValue};
use serde_json::{Value as Json, json};

fn as_tree(tlvs: &[Tlv]) -> Json {
    Json::Array(
        tlvs.iter()
            .map(|t| match &t.value {
                TlvValue::Primitive(b) => json!({
                    "tag": t.tag.to_string(), "len": t.len, "value_hex": hex::encode_upper(b)
                }),
                TlvValue::Constructed(c) => json!({
                    "tag": t.tag.to_string(), "len": t.len, "children": as_tree(c)
                }),
            })
            .collect(),
    )
}

#[test]
fn cpm_vectors_parse_into_their_trees() {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata"
    ));
    if !dir.is_dir() {
        println!("skipped: shared/testdata not found");
        return;
    }
    let text =
        std::fs::read_to_string(dir.join("emv_tlv/emv_cpm_bertlv_vectors.json")).expect("read");
    let doc: Json = serde_json::from_str(&text).expect("json");
    let vectors = doc["vectors"].as_array().expect("vectors");
    assert_eq!(vectors.len(), 2);
    let mut pans = Vec::new();
    for v in vectors {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v["base64"].as_str().expect("base64"))
            .expect("valid base64");
        assert_eq!(
            hex::encode_upper(&bytes),
            v["expected_hex"].as_str().expect("hex")
        );
        let tlvs = tlv::decode(&bytes).expect("valid BER-TLV");
        assert_eq!(as_tree(&tlvs), v["derived_tree"]);
        let card = tlv::card_data(&tlvs).expect("card data");
        let pan = card.pan.expect("both vectors carry a PAN");
        assert!(!format!("{pan:?} {pan} {tlvs:?}").contains(pan.expose_for_channel()));
        pans.push(pan.masked());
    }
    // The first carries it in track 2 (57), the second in 5A.
    assert_eq!(pans, ["****3458", "****3458"]);
}
