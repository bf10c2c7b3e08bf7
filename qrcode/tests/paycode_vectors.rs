//! Every line of the published payment-code examples is classified as the line says.

use std::path::PathBuf;

use paymux_model::WalletBrand;
use paymux_qrcode::paycode::{self, PayCodeError};

#[test]
fn every_published_payment_code_is_classified_as_listed() {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata"
    ));
    if !dir.is_dir() {
        println!("skipped: shared/testdata not found");
        return;
    }
    let text = std::fs::read_to_string(dir.join("paycode/paycodes.tsv")).expect("read");
    let mut counted = std::collections::BTreeMap::<String, usize>::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut cols = line.split('\t');
        let code = cols.next().expect("code");
        let expected = cols.next().expect("expected");
        let label = expected.split(' ').next().unwrap_or_default();
        let got = paycode::classify(code);
        match label {
            "WECHAT" => assert_eq!(got, Ok(WalletBrand::Wechat), "{code}"),
            "ALIPAY" => assert_eq!(got, Ok(WalletBrand::Alipay), "{code}"),
            "UNIONPAY" => assert_eq!(got, Ok(WalletBrand::Unionpay), "{code}"),
            // 22 digits: well formed, but no wallet's rule takes it.
            "REJECT_BY_RULE" => assert!(
                matches!(got, Err(PayCodeError::Unknown { chars: 22 })),
                "{code}: {got:?}"
            ),
            other => panic!("unknown label {other:?}"),
        }
        *counted.entry(label.to_string()).or_default() += 1;
    }
    let counts: Vec<(&str, usize)> = counted.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        counts,
        [
            ("ALIPAY", 3),
            ("REJECT_BY_RULE", 1),
            ("UNIONPAY", 4),
            ("WECHAT", 4)
        ]
    );
}
