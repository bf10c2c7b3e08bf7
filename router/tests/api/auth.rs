use reqwest::{Method, StatusCode};

use crate::helpers::{nonce, payment_body, reply, spawn_app};

#[tokio::test]
async fn every_authentication_failure_has_its_own_code() {
    let app = spawn_app().await;
    let m = app.merchant("Auth").await;
    let body = serde_json::to_vec(&payment_body("a-1", 100)).unwrap();
    let now = chrono::Utc::now().timestamp();
    let url = format!("{}/v1/payments", app.base);

    // Missing header.
    let r = reply(app.http.post(&url).body(body.clone()).send().await.unwrap()).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "auth_missing")
    );
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(
        r.headers.get("www-authenticate").unwrap(),
        "PAYMUX-HMAC-SHA256"
    );

    // Malformed headers.
    for bad in [
        "Bearer abc".to_string(),
        format!(
            "PAYMUX-HMAC-SHA256 key_id={},timestamp={now},nonce=short,signature={}",
            m.creds.key_id,
            "0".repeat(64)
        ),
        format!(
            "PAYMUX-HMAC-SHA256 key_id={},timestamp={now},nonce={}",
            m.creds.key_id,
            nonce()
        ),
    ] {
        let r = reply(
            app.http
                .post(&url)
                .header("authorization", bad)
                .body(body.clone())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNAUTHORIZED, "auth_malformed")
        );
    }

    // Unknown key.
    let mut stranger = m.clone();
    stranger.creds.key_id = "pk_000000000000000000000000".into();
    let r = stranger
        .send_raw(Method::POST, "/v1/payments", body.clone(), now, &nonce())
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "auth_unknown_key")
    );

    // Wrong secret, and a body changed after signing.
    let mut forger = m.clone();
    forger.creds.key_secret = "sk_wrong".into();
    let r = forger
        .send_raw(Method::POST, "/v1/payments", body.clone(), now, &nonce())
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "auth_bad_signature")
    );
    let n = nonce();
    let auth = paymux_model::auth::authorization_header(
        &m.creds.key_id,
        m.creds.key_secret.as_bytes(),
        "POST",
        "/v1/payments",
        now,
        &n,
        &body,
    );
    let mut tampered = body.clone();
    let pos = tampered.iter().position(|b| *b == b'1').unwrap();
    tampered[pos] = b'9';
    let r = reply(
        app.http
            .post(&url)
            .header("authorization", &auth)
            .body(tampered)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "auth_bad_signature")
    );
    // Signed for another path.
    let auth_other = paymux_model::auth::authorization_header(
        &m.creds.key_id,
        m.creds.key_secret.as_bytes(),
        "POST",
        "/v1/payments?x=1",
        now,
        &nonce(),
        &body,
    );
    let r = reply(
        app.http
            .post(&url)
            .header("authorization", &auth_other)
            .body(body.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.code(), "auth_bad_signature");

    // Stale and future timestamps.
    // Well outside the ±300 s window, measured from the clock at the time of sending.
    for offset in [-400, 400] {
        let ts = chrono::Utc::now().timestamp() + offset;
        let r = m
            .send_raw(Method::POST, "/v1/payments", body.clone(), ts, &nonce())
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNAUTHORIZED, "auth_stale_timestamp")
        );
    }
    // Inside the window is fine.
    let r = m
        .send_raw(
            Method::POST,
            "/v1/payments",
            body.clone(),
            chrono::Utc::now().timestamp() - 250,
            &nonce(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    // Nothing of the rejected requests was written: exactly the one accepted payment exists.
    let listed = m.send(Method::GET, "/v1/payments", None).await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_replayed_request_is_rejected() {
    let app = spawn_app().await;
    let m = app.merchant("Replay").await;
    let body = serde_json::to_vec(&payment_body("r-1", 100)).unwrap();
    let now = chrono::Utc::now().timestamp();
    let n = nonce();
    let first = m
        .send_raw(Method::POST, "/v1/payments", body.clone(), now, &n)
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let replay = m
        .send_raw(Method::POST, "/v1/payments", body.clone(), now, &n)
        .await;
    assert_eq!(
        (replay.status, replay.code()),
        (StatusCode::UNAUTHORIZED, "auth_replayed_nonce")
    );
    // The nonce is burnt for GETs too, and a bad signature does not burn a nonce.
    let fresh = nonce();
    let mut forger = m.clone();
    forger.creds.key_secret = "sk_wrong".into();
    assert_eq!(
        forger
            .send_raw(Method::GET, "/v1/payments", vec![], now, &fresh)
            .await
            .code(),
        "auth_bad_signature"
    );
    assert_eq!(
        m.send_raw(Method::GET, "/v1/payments", vec![], now, &fresh)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        m.send_raw(Method::GET, "/v1/payments", vec![], now, &fresh)
            .await
            .code(),
        "auth_replayed_nonce"
    );
}

#[tokio::test]
async fn secrets_are_encrypted_at_rest() {
    let app = spawn_app().await;
    let m = app.merchant("Vault").await;
    let db = paymux::db::Db::connect(&app.db.url, 2).await.unwrap();
    let rows: Vec<(Vec<u8>,)> = match &db {
        paymux::db::Db::Sqlite(p) => sqlx::query_as("SELECT secret_ciphertext FROM merchant_keys")
            .fetch_all(p)
            .await
            .unwrap(),
        paymux::db::Db::Postgres(p) => {
            sqlx::query_as("SELECT secret_ciphertext FROM merchant_keys")
                .fetch_all(p)
                .await
                .unwrap()
        }
    };
    assert_eq!(rows.len(), 1);
    let secret = m.creds.key_secret.as_bytes();
    assert!(
        !rows[0].0.windows(secret.len()).any(|w| w == secret),
        "secret stored in clear"
    );
    assert!(
        !rows[0].0.windows(16).any(|w| w == &secret[3..19]),
        "secret stored in clear"
    );
}

#[tokio::test]
async fn a_body_declared_as_another_media_type_is_refused_with_415() {
    let app = spawn_app().await;
    let m = app.merchant("Media").await;
    let body = serde_json::to_vec(&payment_body("mt-1", 100)).unwrap();
    let url = format!("{}/v1/payments", app.base);
    let signed = |content_type: &'static str| {
        let auth = paymux_model::auth::authorization_header(
            &m.creds.key_id,
            m.creds.key_secret.as_bytes(),
            "POST",
            "/v1/payments",
            chrono::Utc::now().timestamp(),
            &nonce(),
            &body,
        );
        app.http
            .post(&url)
            .header("authorization", auth)
            .header("content-type", content_type)
            .body(body.clone())
    };
    for ct in ["application/x-www-form-urlencoded", "text/plain"] {
        let r = reply(signed(ct).send().await.unwrap()).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            "{ct}"
        );
    }
    let r = reply(
        signed("application/json; charset=utf-8")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    // A body-less POST is not refused for what it declares (as `curl -d ''` declares a form).
    let path = "/v1/payments/0190b1e0-0000-7000-8000-000000000000/close";
    let auth = paymux_model::auth::authorization_header(
        &m.creds.key_id,
        m.creds.key_secret.as_bytes(),
        "POST",
        path,
        chrono::Utc::now().timestamp(),
        &nonce(),
        b"",
    );
    let r = reply(
        app.http
            .post(format!("{}{path}", app.base))
            .header("authorization", auth)
            .header("content-type", "application/x-www-form-urlencoded")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    // Nothing was written for the refused ones.
    assert_eq!(
        m.find_by_order_no("mt-1").await.body["data"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}
