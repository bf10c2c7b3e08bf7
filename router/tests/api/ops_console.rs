//! The operations console `/ops/`: its page, script and style sheet (both languages, a strict
//! Content-Security-Policy, no token anywhere in the page); the dashboard's figures against
//! payments made through the API (succeeded, failed, not routed; two merchants, two channels);
//! a run's report files through the ops API — only the run's own three files, never another path;
//! payment search by id and `out_trade_no`; roles. The console's behaviour in a browser is tested in
//! `scripts/ops-browser/`.

use std::collections::HashMap;

use chrono::Utc;
use chrono_tz::Asia::Shanghai;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{MerchantClient, Reply, TestApp, reply, spawn_app};
use crate::ops_api::{get, operator, post};
use crate::reconcile::{app, hex, offset_to, put_faults, reconcile, stranger_order};

async fn page(
    app: &TestApp,
    path: &str,
    lang: &str,
) -> (StatusCode, HashMap<String, String>, String) {
    let r = app
        .http
        .get(format!("{}{path}", app.base))
        .header("accept-language", lang)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    (status, headers, r.text().await.unwrap())
}

#[tokio::test]
async fn the_console_page_script_and_style_are_served_with_a_strict_policy() {
    let app = spawn_app().await;
    let (status, h, en) = page(&app, "/ops/", "en-US,en;q=0.9").await;
    assert_eq!(status, StatusCode::OK);
    assert!(h["content-type"].starts_with("text/html"), "{h:?}");
    let csp = &h["content-security-policy"];
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-store");
    assert!(en.contains("Operator token") && en.contains("<html lang=\"en\">"));
    assert!(en.contains("<script src=\"/ops/console.js\"></script>"));
    assert!(en.contains("href=\"/ops/console.css\""));
    // Nothing from elsewhere, no inline code.
    assert!(!en.contains("http://") && !en.contains("https://") && !en.contains("<script>"));
    for id in [
        "login-form",
        "view-dashboard",
        "view-payments",
        "view-runs",
        "view-exceptions",
        "view-settlements",
    ] {
        assert!(en.contains(&format!("id=\"{id}\"")), "{id}");
    }

    let (_, _, zh) = page(&app, "/ops/", "zh-CN,zh;q=0.9,en;q=0.8").await;
    assert!(zh.contains("操作员令牌") && zh.contains("<html lang=\"zh-CN\">"));
    // The labels the script uses come in the page's language.
    assert!(zh.contains("\"resolve\":\"标记已解决\"") && en.contains("\"resolve\":\"Resolve\""));

    let (status, h, js) = page(&app, "/ops/console.js", "en").await;
    assert_eq!(status, StatusCode::OK);
    assert!(h["content-type"].starts_with("text/javascript"));
    assert!(js.contains("sessionStorage") && js.contains("'/ops/v1'"));
    assert!(!js.contains("localStorage") && !js.contains("innerHTML"));
    let (status, h, css) = page(&app, "/ops/console.css", "en").await;
    assert_eq!(status, StatusCode::OK);
    assert!(h["content-type"].starts_with("text/css") && css.contains("@media"));

    // `/ops` leads to the console.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/ops", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers()["location"], "/ops/");
}

async fn pay(m: &MerchantClient, order_no: &str, amount: i64, auth_code: &str) -> Value {
    let r = m
        .create_payment(&json!({
            "merchant_order_no": order_no, "amount": amount, "currency": "CNY", "subject": "Tea",
            "method": "code_scan", "auth_code": auth_code,
        }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body
}

fn account_row<'a>(d: &'a Value, account: &str) -> &'a Value {
    d["by_channel_account"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["channel_account_id"] == account)
        .unwrap_or_else(|| panic!("no figures for {account}: {d:#}"))
}

fn figures(v: &Value) -> [i64; 8] {
    [
        "count",
        "amount_minor",
        "succeeded_count",
        "succeeded_amount_minor",
        "failed_count",
        "closed_count",
        "pending_count",
        "success_rate_bps",
    ]
    .map(|k| v[k].as_i64().unwrap_or(-1))
}

async fn raw(app: &TestApp, token: Option<&str>, path: &str) -> reqwest::Response {
    let mut req = app.http.get(format!("{}/ops/v1{path}", app.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn dashboard_figures_reports_search_and_roles() {
    let app = app().await;
    let a = app.merchant("Console Tea A").await;
    let b = app.merchant("Console Tea B").await;
    let day = Utc::now().with_timezone(&Shanghai).date_naive() - chrono::Days::new(2);
    put_faults(&app, &json!({"clock_offset_secs": offset_to(day, 10, 0)})).await;

    // Today: at A three WeChat successes, two WeChat failures (not enough balance), one Alipay
    // success and one payment never routed; at B one WeChat success.
    let w1 = pay(&a, "c-w1", 1_000, "134567890123456789").await;
    pay(&a, "c-w2", 2_000, "134567890123456789").await;
    pay(&a, "c-w3", 3_000, "134567890123456789").await;
    let f1 = pay(&a, "c-f1", 400, "134567890123451003").await;
    pay(&a, "c-f2", 450, "134567890123451003").await;
    let ali = pay(&a, "c-a1", 500, "281234567890123456").await;
    let bw = pay(&b, "c-b1", 100, "134567890123456789").await;
    assert_eq!(f1["status"], "failed", "{f1}");
    let link = a
        .create_payment(&json!({
            "merchant_order_no": "c-link", "amount": 700, "currency": "CNY", "subject": "Tea",
            "method": "qr_merchant",
        }))
        .await;
    assert_eq!(link.status, StatusCode::CREATED, "{:?}", link.body);
    assert!(link.body["channel_account_id"].is_null());
    let stranger = stranger_order(&app, 900).await;
    reconcile(&app, day).await;

    let (viewer_id, viewer) = operator(&app, "Vera Viewer", "viewer").await;
    let (op_id, op) = operator(&app, "Otto Operator", "operator").await;

    // Who am I.
    let me = get(&app, &viewer, "/me").await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(
        (me.body["id"].as_str(), me.body["role"].as_str()),
        (Some(viewer_id.as_str()), Some("viewer"))
    );
    assert!(me.body.get("token").is_none());
    assert_eq!(
        raw(&app, None, "/me").await.status(),
        StatusCode::UNAUTHORIZED
    );

    // The dashboard of today equals what was made.
    let today = Utc::now().with_timezone(&Shanghai).date_naive();
    let d = get(&app, &viewer, "/dashboard").await;
    assert_eq!(d.status, StatusCode::OK, "{:?}", d.body);
    let d = d.body;
    assert_eq!(d["date"], today.to_string());
    let wechat_a = w1["channel_account_id"].as_str().unwrap();
    let alipay_a = ali["channel_account_id"].as_str().unwrap();
    let wechat_b = bw["channel_account_id"].as_str().unwrap();
    assert_ne!(wechat_a, wechat_b);
    assert_eq!(
        figures(account_row(&d, wechat_a)),
        [5, 6_850, 3, 6_000, 2, 0, 0, 6_000]
    );
    assert_eq!(account_row(&d, wechat_a)["kind"], "wechat_v3");
    assert_eq!(
        account_row(&d, wechat_a)["merchant_id"],
        a.creds.merchant_id.to_string()
    );
    assert_eq!(
        figures(account_row(&d, alipay_a)),
        [1, 500, 1, 500, 0, 0, 0, 10_000]
    );
    assert_eq!(
        figures(account_row(&d, wechat_b)),
        [1, 100, 1, 100, 0, 0, 0, 10_000]
    );
    let unrouted = d["by_channel_account"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["channel_account_id"].is_null())
        .unwrap();
    assert_eq!(figures(unrouted), [1, 700, 0, 0, 0, 0, 1, 0]);
    assert_eq!(d["by_channel_account"].as_array().unwrap().len(), 4);
    let kinds = d["by_channel_kind"].as_array().unwrap();
    let wechat_kind = kinds.iter().find(|k| k["kind"] == "wechat_v3").unwrap();
    assert_eq!(figures(wechat_kind), [6, 6_950, 4, 6_100, 2, 0, 0, 6_666]);
    assert_eq!(kinds.len(), 3);
    let totals = d["totals"].as_array().unwrap();
    assert_eq!(totals.len(), 1);
    assert_eq!(totals[0]["currency"], "CNY");
    assert_eq!(figures(&totals[0]), [8, 8_150, 5, 6_600, 2, 0, 1, 6_250]);
    // Another day has none of them; a bad date is refused.
    let quiet = get(&app, &viewer, &format!("/dashboard?date={day}")).await;
    assert_eq!(quiet.body["date"], day.to_string());
    assert!(
        quiet.body["by_channel_account"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let bad = get(&app, &viewer, "/dashboard?date=2026-13-01").await;
    assert_eq!(
        (bad.status, bad.code(), bad.body["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("date")
        )
    );
    assert_eq!(
        get(&app, &viewer, "/dashboard?day=2026-01-01").await.code(),
        "unknown_field"
    );

    // Payment search by id and by out_trade_no (the id without dashes).
    let id = w1["id"].as_str().unwrap();
    for q in [id.to_string(), hex(id)] {
        let found = get(&app, &viewer, &format!("/payments?id={q}")).await;
        assert_eq!(found.status, StatusCode::OK, "{:?}", found.body);
        let data = found.body["data"].as_array().unwrap();
        assert_eq!(data.len(), 1, "{q}");
        assert_eq!(data[0]["id"], id);
    }
    let failed = get(
        &app,
        &viewer,
        &format!(
            "/payments?status=failed&merchant_id={}",
            a.creds.merchant_id
        ),
    )
    .await;
    assert_eq!(failed.body["data"].as_array().unwrap().len(), 2);
    let bad = get(&app, &viewer, "/payments?id=../../etc").await;
    assert_eq!(bad.body["field"], "id");

    // The run with the exception (the order only the channel knows), and its report files.
    let open = get(&app, &viewer, "/exceptions?status=open").await;
    let ex = open.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["out_trade_no"] == stranger.as_str())
        .unwrap_or_else(|| panic!("no exception for {stranger}: {:?}", open.body))
        .clone();
    let run = ex["run_id"].as_str().unwrap();
    let html = raw(
        &app,
        Some(viewer.as_str()),
        &format!("/reconciliation/runs/{run}/report/report.html"),
    )
    .await;
    assert_eq!(html.status(), StatusCode::OK);
    assert!(
        html.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = html.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("sandbox") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let html = html.text().await.unwrap();
    assert!(
        html.contains("<svg") && html.contains(&stranger) && html.contains("missing_on_platform")
    );
    let csv = raw(
        &app,
        Some(viewer.as_str()),
        &format!("/reconciliation/runs/{run}/report/items.csv"),
    )
    .await;
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        csv.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let csv = csv.text().await.unwrap();
    assert!(csv.starts_with("class,kind,out_trade_no") && csv.contains(&stranger));
    let json = reply(
        raw(
            &app,
            Some(viewer.as_str()),
            &format!("/reconciliation/runs/{run}/report/report.json"),
        )
        .await,
    )
    .await;
    assert_eq!(json.status, StatusCode::OK);
    assert_eq!(json.body["day"], day.to_string());

    // The day's index: every account's run, with the charts by channel account.
    let index = raw(
        &app,
        Some(viewer.as_str()),
        &format!("/reconciliation/days/{day}/report.html"),
    )
    .await;
    assert_eq!(index.status(), StatusCode::OK);
    let html = index.text().await.unwrap();
    assert!(html.contains(&format!("Reconciliation of {day}")), "{html}");
    assert!(html.contains("<svg"), "{html}");
    assert!(html.contains("wechat"), "{html}");
    for bad in [
        format!("/reconciliation/days/{}/report.html", day.format("%Y%m%d")),
        format!("/reconciliation/days/{day}x/report.html"),
        "/reconciliation/days/..%2F..%2Fsecret.txt/report.html".to_string(),
        "/reconciliation/days/1999-01-01/report.html".to_string(),
    ] {
        let r = raw(&app, Some(viewer.as_str()), &bad).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{bad}");
    }
    let anonymous = raw(
        &app,
        None,
        &format!("/reconciliation/days/{day}/report.html"),
    )
    .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // Nothing else: no other name, no path, no other run, not without a token.
    std::fs::write(app.config.data_dir.join("secret.txt"), "not a report").unwrap();
    for path in [
        format!("/reconciliation/runs/{run}/report/index.html"),
        format!("/reconciliation/runs/{run}/report/..%2F..%2F..%2Fsecret.txt"),
        format!("/reconciliation/runs/{run}/report/%2e%2e"),
        format!("/reconciliation/runs/{run}/report/REPORT.HTML"),
        "/reconciliation/runs/..%2F..%2Fsecret.txt/report/report.html".to_string(),
        "/reconciliation/runs/0190c5d0-0000-7000-8000-000000000000/report/report.html".to_string(),
        format!("/reconciliation/runs/{run}/report/../../../secret.txt"),
    ] {
        let r = raw(&app, Some(viewer.as_str()), &path).await;
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(!body.contains("not a report"), "{path}");
    }
    assert_eq!(
        raw(
            &app,
            None,
            &format!("/reconciliation/runs/{run}/report/report.html")
        )
        .await
        .status(),
        StatusCode::UNAUTHORIZED
    );
    // A run whose report is gone from this disk: 404, not an error.
    let runs = get(&app, &viewer, &format!("/reconciliation/runs?date={day}")).await;
    let other = runs.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] != run)
        .expect("another run")
        .clone();
    let dir = app
        .config
        .data_dir
        .join("reports")
        .join(day.to_string())
        .join(other["channel_account_id"].as_str().unwrap());
    std::fs::remove_file(dir.join("report.html")).unwrap();
    let gone = reply(
        raw(
            &app,
            Some(viewer.as_str()),
            &format!(
                "/reconciliation/runs/{}/report/report.html",
                other["id"].as_str().unwrap()
            ),
        )
        .await,
    )
    .await;
    assert_eq!(
        (gone.status, gone.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // Roles: the viewer cannot take the exception; the operator takes it, comments, resolves.
    let ex_id = ex["id"].as_str().unwrap();
    let denied: Reply = post(
        &app,
        &viewer,
        &format!("/exceptions/{ex_id}/assign"),
        json!({"operator_id": viewer_id}),
    )
    .await;
    assert_eq!(
        (denied.status, denied.code()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let mine = post(
        &app,
        &op,
        &format!("/exceptions/{ex_id}/assign"),
        json!({"operator_id": op_id}),
    )
    .await;
    assert_eq!(mine.body["assignee_id"], op_id.as_str());
    let resolved = post(
        &app,
        &op,
        &format!("/exceptions/{ex_id}/resolve"),
        json!({"resolution": "channel_corrected", "note": "not ours"}),
    )
    .await;
    assert_eq!(resolved.body["status"], "resolved", "{:?}", resolved.body);
    let settlements = get(&app, &viewer, &format!("/settlements?date={day}")).await;
    assert_eq!(settlements.status, StatusCode::OK);
}
