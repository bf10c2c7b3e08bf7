//! Rendered PNGs are read back by a real QR reader (`zbarimg` from Debian's `zbar-tools`) and must
//! give back exactly the payload. Set `PAYMUX_PLATE_OUT=<dir>` to keep the rendered images.

use std::path::Path;
use std::process::Command;

use paymux_model::{Money, WalletBrand};
use paymux_qrcode::emv::{self, StaticCode};
use paymux_qrcode::render::{self, Plate};

fn zbarimg(png: &[u8], name: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, png).expect("write png");
    if let Some(out) = std::env::var_os("PAYMUX_PLATE_OUT") {
        std::fs::write(Path::new(&out).join(name), png).expect("keep png");
    }
    let output = match Command::new("zbarimg")
        .arg("--raw")
        .arg("-q")
        .arg(&path)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            panic!("cannot run zbarimg ({e}): install it with `apt-get install -y zbar-tools`")
        }
    };
    assert!(
        output.status.success(),
        "zbarimg found no code in {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("zbarimg prints UTF-8");
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

fn payloads() -> Vec<(&'static str, String)> {
    let ours = emv::static_merchant_code(
        &StaticCode::new(
            "https://pay.example.cn/s/7Hq2KpZ9",
            "老王牛肉面馆",
            "上海",
            "5814",
        )
        .with_store_label("徐汇区漕溪北路店")
        .with_terminal_label("收银台01"),
    )
    .expect("valid");
    let fixed = emv::static_merchant_code(
        &StaticCode::new(
            "https://pay.example.cn/s/fixed42",
            "Coffee Lab",
            "Hangzhou",
            "5814",
        )
        .with_amount(Money::cny(2_800)),
    )
    .expect("valid");
    vec![
        ("ascii_url.png", "https://pay.example.cn/s/ABC123?store=42".to_string()),
        ("emv_chinese.png", emv::encode(&ours)),
        ("emv_fixed.png", emv::encode(&fixed)),
        (
            "emv_spec_example.png",
            "00020101021229300012D156000000000510A93FO3230Q31280012D15600000001030812345678520441115802CN5914BEST TRANSPORT6007BEIJING64200002ZH0104最佳运输0202北京540523.7253031565502016233030412340603***0708A60086670902ME91320016A0112233449988770708123456786304A13A".to_string(),
        ),
    ]
}

#[test]
fn zbarimg_reads_back_every_rendered_qr() {
    for (name, payload) in payloads() {
        for scale in [3, 8] {
            let png = render::png(&payload, scale).expect("fits");
            assert_eq!(zbarimg(&png, name), payload, "{name} at scale {scale}");
        }
    }
}

#[test]
fn zbarimg_reads_back_the_plates() {
    let all = vec![
        WalletBrand::Wechat,
        WalletBrand::Alipay,
        WalletBrand::Unionpay,
        WalletBrand::Ecny,
    ];
    for (name, payload) in payloads() {
        let decoded = emv::decode(&payload, emv::Mode::Strict).ok();
        let plate = Plate {
            merchant_name: decoded
                .as_ref()
                .and_then(|p| p.primitive(59))
                .unwrap_or("Example Shop")
                .to_string(),
            store_name: decoded
                .as_ref()
                .and_then(|p| p.sub(62, 3))
                .map(str::to_string),
            payload: payload.clone(),
            wallets: all.clone(),
            amount: decoded.as_ref().and_then(|p| p.amount().ok().flatten()),
        };
        let rendered = render::plate_png(&plate, 6).expect("fits");
        assert!(
            rendered.text_drawn,
            "no font found: install fonts-wqy-zenhei"
        );
        let plate_name = format!("plate_{name}");
        assert_eq!(zbarimg(&rendered.png, &plate_name), payload);
        let svg = render::plate_svg(&plate).expect("fits");
        assert!(svg.contains(&plate.merchant_name));
    }
}

#[test]
fn svg_outputs_are_well_formed_documents() {
    let (_, payload) = payloads().remove(1);
    let plate = Plate {
        merchant_name: "老王牛肉面馆 & Co <1>".into(),
        store_name: Some("徐汇区漕溪北路店".into()),
        payload: payload.clone(),
        wallets: vec![WalletBrand::Wechat, WalletBrand::Alipay],
        amount: Some(Money::cny(990)),
    };
    for (name, svg) in [
        ("plate.svg", render::plate_svg(&plate).expect("fits")),
        ("qr.svg", render::svg(&payload).expect("fits")),
    ] {
        // Every opened element is closed, text is escaped.
        assert_eq!(
            svg.matches("<svg").count(),
            svg.matches("</svg>").count(),
            "{name}"
        );
        assert!(!svg.contains("& "), "{name}");
        if let Some(out) = std::env::var_os("PAYMUX_PLATE_OUT") {
            std::fs::write(Path::new(&out).join(name), &svg).expect("keep svg");
        }
    }
}
