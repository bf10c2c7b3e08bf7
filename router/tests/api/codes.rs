//! Static merchant codes: the `/v1/codes` API, their EMVCo payload, their images read back by a
//! real QR reader (`zbarimg`), the public `/c/{id}` page, disabling, and bad input.

use std::process::Command;

use paymux_qrcode::emv::{Mode, decode};
use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, spawn_app};

fn zbarimg(png: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("code.png");
    std::fs::write(&path, png).unwrap();
    let out = Command::new("zbarimg")
        .args(["--raw", "-q"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run zbarimg ({e}): apt-get install -y zbar-tools"));
    assert!(out.status.success(), "zbarimg found no code");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

async fn fetch(app: &TestApp, url: &str, lang: &str, ua: &str) -> (u16, String, Vec<u8>) {
    let resp = app
        .http
        .get(url)
        .header("accept-language", lang)
        .header("user-agent", ua)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn a_code_has_its_url_emv_payload_images_and_page() {
    let app = spawn_app().await;
    let m = app.merchant("老王面包店").await;
    let r = m
        .send(
            Method::POST,
            "/v1/codes",
            Some(&json!({"store_id": "store-7", "terminal_id": "till-2",
                "fixed_amount": 1234, "description": "人民路店"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let url = format!("{}/c/{id}", app.base);
    assert_eq!(r.body["url"], url);
    assert_eq!(r.body["status"], "active");
    assert_eq!(r.body["fixed_amount"], 1234);

    // The EMVCo form: strict decoding, our URL in template 26, the amount, store and terminal.
    let emv = r.body["emv_payload"].as_str().unwrap();
    let p = decode(emv, Mode::Strict).expect("strict EMVCo payload");
    assert_eq!(p.sub(26, 1), Some(url.as_str()));
    assert_eq!(p.primitive(54), Some("12.34"));
    assert_eq!(
        p.primitive(1),
        Some("12"),
        "fixed amount: dynamic point of initiation"
    );
    assert_eq!(p.primitive(59), Some("老王面包店"));
    assert_eq!(p.sub(62, 3), Some("store-7"));
    assert_eq!(p.sub(62, 7), Some("till-2"));

    // The images, public: the PNG QR and the PNG plate read back as the URL.
    let (status, ct, png) = fetch(&app, r.body["png_url"].as_str().unwrap(), "zh", "x").await;
    assert_eq!((status, ct.as_str()), (200, "image/png"));
    assert_eq!(zbarimg(&png), url);
    let (status, ct, plate) = fetch(&app, r.body["plate_url"].as_str().unwrap(), "zh", "x").await;
    assert_eq!((status, ct.as_str()), (200, "image/png"));
    assert_eq!(zbarimg(&plate), url);
    let (status, ct, svg) = fetch(&app, r.body["svg_url"].as_str().unwrap(), "zh", "x").await;
    assert_eq!((status, ct.as_str()), (200, "image/svg+xml"));
    assert!(String::from_utf8(svg).unwrap().contains("<svg"));
    let (_, _, plate_svg) = fetch(&app, r.body["plate_svg_url"].as_str().unwrap(), "zh", "x").await;
    let plate_svg = String::from_utf8(plate_svg).unwrap();
    assert!(
        plate_svg.contains("老王面包店") && plate_svg.contains("人民路店"),
        "{plate_svg}"
    );
    assert!(plate_svg.contains("12.34"), "fixed amount on the plate");
    assert!(
        plate_svg.contains("微信") && plate_svg.contains("支付宝"),
        "accepted wallets on the plate"
    );
    let (status, _, _) = fetch(&app, &format!("{url}/other.gif"), "zh", "x").await;
    assert_eq!(status, 404);

    // The page in WeChat: the merchant, the store, the fixed amount, the app.
    let ua = "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 MicroMessenger/8.0.49";
    let (status, _, html) = fetch(&app, &url, "zh-CN", ua).await;
    let html = String::from_utf8(html).unwrap();
    assert_eq!(status, 200);
    for want in ["老王面包店", "人民路店", "¥12.34", "当前应用: 微信"] {
        assert!(html.contains(want), "{want} in {html}");
    }
    let (_, _, en) = fetch(&app, &url, "en-GB,en", "curl/8").await;
    let en = String::from_utf8(en).unwrap();
    assert!(en.contains("Pay to") && !en.contains("Opened in"), "{en}");

    // Read and list.
    let got = m.send(Method::GET, &format!("/v1/codes/{id}"), None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["emv_payload"], r.body["emv_payload"]);
    let list = m
        .send(Method::GET, "/v1/codes?store_id=store-7", None)
        .await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
    let none = m.send(Method::GET, "/v1/codes?store_id=other", None).await;
    assert_eq!(none.body["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn codes_are_private_paged_and_disabled_codes_say_so() {
    let app = spawn_app().await;
    let a = app.merchant("A").await;
    let b = app.merchant("B").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let r = a
            .send(
                Method::POST,
                "/v1/codes",
                Some(&json!({"store_id": format!("s{n}")})),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        assert!(r.body["fixed_amount"].is_null());
        let p = decode(r.body["emv_payload"].as_str().unwrap(), Mode::Strict).unwrap();
        assert_eq!(p.primitive(1), Some("11"), "static: no amount");
        assert_eq!(p.primitive(54), None);
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    // Another merchant sees none of them.
    let other = b
        .send(Method::GET, &format!("/v1/codes/{}", ids[0]), None)
        .await;
    assert_eq!((other.status.as_u16(), other.code()), (404, "not_found"));
    let other = b
        .send(Method::POST, &format!("/v1/codes/{}/disable", ids[0]), None)
        .await;
    assert_eq!(other.status, 404);
    assert_eq!(
        b.send(Method::GET, "/v1/codes", None).await.body["data"],
        json!([])
    );

    // Newest first, keyset paging.
    let p1 = a.send(Method::GET, "/v1/codes?limit=2", None).await;
    assert_eq!(p1.body["has_more"], true);
    assert_eq!(p1.body["data"][0]["id"], ids[2]);
    let after = p1.body["data"][1]["id"].as_str().unwrap();
    let p2 = a
        .send(
            Method::GET,
            &format!("/v1/codes?limit=2&starting_after={after}"),
            None,
        )
        .await;
    assert_eq!(p2.body["has_more"], false);
    assert_eq!(p2.body["data"][0]["id"], ids[0]);

    // Disabling: the code says so, twice is harmless, its page refuses to take money.
    let d = a
        .send(Method::POST, &format!("/v1/codes/{}/disable", ids[1]), None)
        .await;
    assert_eq!(d.status, 200);
    assert_eq!(d.body["status"], "disabled");
    assert!(d.body["disabled_at"].is_string());
    let again = a
        .send(Method::POST, &format!("/v1/codes/{}/disable", ids[1]), None)
        .await;
    assert_eq!(again.body["disabled_at"], d.body["disabled_at"]);
    let (status, _, html) = fetch(&app, &format!("{}/c/{}", app.base, ids[1]), "zh", "x").await;
    let html = String::from_utf8(html).unwrap();
    assert_eq!(status, 410);
    assert!(
        html.contains("id=\"disabled\"") && html.contains("收款码已停用"),
        "{html}"
    );
    // Nor are its images handed out any more (a plate printed now would take no payment); an
    // active code's still are.
    for file in ["qr.png", "qr.svg", "plate.png", "plate.svg"] {
        let (status, ct, body) = fetch(
            &app,
            &format!("{}/c/{}/{file}", app.base, ids[1]),
            "zh",
            "x",
        )
        .await;
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status, ct.as_str(), problem["code"].as_str()),
            (410, "application/problem+json", Some("code_disabled")),
            "{file}"
        );
        let (status, _, _) = fetch(
            &app,
            &format!("{}/c/{}/{file}", app.base, ids[0]),
            "zh",
            "x",
        )
        .await;
        assert_eq!(status, 200, "{file}");
    }
    // An unknown code.
    for bad in ["0190aaaa-0000-7000-8000-000000000000", "nope"] {
        let (status, _, html) = fetch(&app, &format!("{}/c/{bad}", app.base), "en", "x").await;
        assert_eq!(status, 404);
        assert!(String::from_utf8(html).unwrap().contains("Unknown code"));
    }
}

#[tokio::test]
async fn bad_code_requests_are_refused_and_write_nothing() {
    let app = spawn_app().await;
    let m = app.merchant("C").await;
    for (body, code, field) in [
        (json!({"store": "x"}), "unknown_field", "store"),
        (
            json!({"store_id": "a".repeat(26)}),
            "validation_failed",
            "store_id",
        ),
        (
            json!({"terminal_id": "bad id"}),
            "validation_failed",
            "terminal_id",
        ),
        (
            json!({"fixed_amount": 0}),
            "validation_failed",
            "fixed_amount",
        ),
        (
            json!({"fixed_amount": 10_000_000_001i64}),
            "validation_failed",
            "fixed_amount",
        ),
        (
            json!({"fixed_amount": "12.00"}),
            "validation_failed",
            "fixed_amount",
        ),
        (
            json!({"description": ""}),
            "validation_failed",
            "description",
        ),
    ] {
        let r = m.send(Method::POST, "/v1/codes", Some(&body)).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (422, code),
            "{body}: {:?}",
            r.body
        );
        assert_eq!(r.body["field"], field, "{body}: {:?}", r.body);
    }
    let r = m
        .send_raw(
            Method::POST,
            "/v1/codes",
            b"{not json".to_vec(),
            chrono::Utc::now().timestamp(),
            &crate::helpers::nonce(),
        )
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (400, "malformed_json"));
    let q = m.send(Method::GET, "/v1/codes?limit=0", None).await;
    assert_eq!(q.status, 422);
    assert_eq!(
        m.send(Method::GET, "/v1/codes", None).await.body["data"],
        json!([])
    );
    // Unsigned requests never reach the codes.
    let unsigned = app.get_raw("/v1/codes").await;
    assert_eq!(unsigned.status().as_u16(), 401);
}
