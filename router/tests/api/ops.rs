use reqwest::StatusCode;

use crate::helpers::{payment_body, reply, spawn_app};

#[tokio::test]
async fn health_readiness_metrics_openapi_and_request_ids() {
    let app = spawn_app().await;
    let m = app.merchant("Ops").await;
    assert_eq!(
        m.create_payment(&payment_body("o-1", 100)).await.status,
        StatusCode::CREATED
    );

    let health = app.get_raw("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    let ready = reply(app.get_raw("/readyz").await).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["database"], app.backend());

    let metrics = app.get_raw("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("paymux_batch_items_bucket"),
        "batch size histogram exported"
    );
    assert!(
        metrics.contains("paymux_batch_commit_seconds_bucket"),
        "commit latency histogram exported"
    );
    assert!(metrics.contains("paymux_http_requests_total"));

    let doc = reply(app.get_raw("/openapi.json").await).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["paths"]["/v1/payments"]["post"].is_object());
    assert!(doc.body["paths"]["/v1/payments/{id}/close"]["post"].is_object());
    assert!(doc.body["components"]["schemas"]["Payment"].is_object());
    assert!(doc.body["components"]["securitySchemes"]["paymux_hmac"].is_object());

    // A request id is generated, or the caller's is echoed.
    let r = app.get_raw("/healthz").await;
    assert!(r.headers().get("x-request-id").is_some());
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .header("x-request-id", "req-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers().get("x-request-id").unwrap(), "req-abc-123");

    let nf = reply(app.get_raw("/nope").await).await;
    assert_eq!((nf.status, nf.code()), (StatusCode::NOT_FOUND, "not_found"));
    let na = reply(
        app.http
            .delete(format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (na.status, na.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}
