//! The operations API `/ops/v1`: operators of each role, an exception made by reconciling a day
//! with an order only the channel knows, the exception workflow and its audit log, runs,
//! settlements, payment search across merchants, a merchant's ledger statement, and operators
//! managed from the command line and through the API.

use chrono::Utc;
use chrono_tz::Asia::Shanghai;
use paymux::ops::audit::Actor;
use paymux::ops::operators::{self, NewOperator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp, fresh_database, reply, spawn_with, test_config};
use crate::reconcile::{app, code_pay, offset_to, put_faults, reconcile, stranger_order};

/// An operator created the way `paymux operator create` does it; returns `(id, token)`.
pub async fn operator(app: &TestApp, name: &str, role: &str) -> (String, String) {
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let created = operators::create(
        &db,
        Actor::CommandLine,
        NewOperator {
            name: name.into(),
            role: role.into(),
        },
    )
    .await
    .unwrap();
    db.close().await;
    (created.operator.id.to_string(), created.token)
}

pub async fn ops(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let mut req = app
        .http
        .request(method, format!("{}/ops/v1{path}", app.base))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    reply(req.send().await.unwrap()).await
}

pub async fn get(app: &TestApp, token: &str, path: &str) -> Reply {
    ops(app, token, Method::GET, path, None).await
}

pub async fn post(app: &TestApp, token: &str, path: &str, body: Value) -> Reply {
    ops(app, token, Method::POST, path, Some(body)).await
}

fn data(r: &Reply) -> &Vec<Value> {
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["data"].as_array().unwrap()
}

fn status_code(r: &Reply) -> (StatusCode, &str, &str) {
    (r.status, r.code(), r.body["field"].as_str().unwrap_or(""))
}

#[tokio::test]
async fn operators_work_exceptions_search_payments_and_read_statements_with_an_audit_trail() {
    let app = app().await;
    let a = app.merchant("Ops Tea A").await;
    let b = app.merchant("Ops Tea B").await;
    let day = Utc::now().with_timezone(&Shanghai).date_naive() - chrono::Days::new(2);
    put_faults(&app, &json!({"clock_offset_secs": offset_to(day, 10, 0)})).await;
    // The same order number at two merchants.
    let pa = code_pay(&a, "ops-order-1", 1000).await;
    let pb = code_pay(&b, "ops-order-1", 2000).await;
    let stranger = stranger_order(&app, 700).await;
    reconcile(&app, day).await;

    let (_, viewer) = operator(&app, "Vera Viewer", "viewer").await;
    let (op_id, op) = operator(&app, "Otto Operator", "operator").await;
    let (op2_id, _) = operator(&app, "Olga Operator", "operator").await;
    let (viewer_id, _) = operator(&app, "Vic Viewer", "viewer").await;
    let (admin_id, admin) = operator(&app, "Ada Admin", "admin").await;

    // Tokens: missing, wrong → 401.
    let none = reply(
        app.http
            .get(format!("{}/ops/v1/exceptions", app.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (none.status, none.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    let wrong = get(&app, &format!("{viewer}x"), "/exceptions").await;
    assert_eq!(
        (wrong.status, wrong.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );

    // The viewer sees the open exception: the order only the channel knows.
    let open = get(&app, &viewer, "/exceptions?status=open").await;
    let ex = data(&open)
        .iter()
        .find(|e| e["out_trade_no"] == stranger.as_str())
        .unwrap_or_else(|| panic!("no exception for {stranger}: {:?}", open.body))
        .clone();
    assert_eq!(ex["class"], "missing_on_platform");
    assert_eq!(ex["status"], "open");
    assert_eq!(ex["day"], day.to_string());
    let ex_id = ex["id"].as_str().unwrap().to_string();
    let bad = get(&app, &viewer, "/exceptions?status=closed").await;
    assert_eq!(
        status_code(&bad),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "status"
        )
    );

    // A viewer reads but cannot change anything, nor read the audit log.
    let denied = post(
        &app,
        &viewer,
        &format!("/exceptions/{ex_id}/resolve"),
        json!({"resolution": "no_action"}),
    )
    .await;
    assert_eq!(
        (denied.status, denied.code()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let denied = post(
        &app,
        &viewer,
        &format!("/exceptions/{ex_id}/comments"),
        json!({"text": "hi"}),
    )
    .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(
        get(&app, &viewer, "/audit-log").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&app, &op, "/audit-log").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&app, &op, "/operators").await.status,
        StatusCode::FORBIDDEN
    );

    // The operator assigns (not to a viewer, not to nobody), comments and resolves.
    let to_viewer = post(
        &app,
        &op,
        &format!("/exceptions/{ex_id}/assign"),
        json!({"operator_id": viewer_id}),
    )
    .await;
    assert_eq!(
        status_code(&to_viewer),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "operator_id"
        )
    );
    let to_nobody = post(
        &app,
        &op,
        &format!("/exceptions/{ex_id}/assign"),
        json!({"operator_id": uuid::Uuid::new_v4()}),
    )
    .await;
    assert_eq!(to_nobody.status, StatusCode::UNPROCESSABLE_ENTITY);
    let assigned = post(
        &app,
        &op,
        &format!("/exceptions/{ex_id}/assign"),
        json!({"operator_id": op2_id}),
    )
    .await;
    assert_eq!(assigned.status, StatusCode::OK, "{:?}", assigned.body);
    assert_eq!(assigned.body["status"], "assigned");
    assert_eq!(assigned.body["assignee_id"], op2_id.as_str());
    let mine = get(&app, &viewer, &format!("/exceptions?assignee={op2_id}")).await;
    assert_eq!(data(&mine).len(), 1);
    assert_eq!(data(&mine)[0]["id"], ex_id.as_str());
    assert!(
        data(&get(&app, &viewer, "/exceptions?status=open").await)
            .iter()
            .all(|e| e["id"] != ex_id.as_str())
    );

    let empty = post(
        &app,
        &op,
        &format!("/exceptions/{ex_id}/comments"),
        json!({"text": "   "}),
    )
    .await;
    assert_eq!(
        status_code(&empty),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "text"
        )
    );
    let c = post(
        &app,
        &op,
        &format!("/exceptions/{ex_id}/comments"),
        json!({"text": "Asked WeChat who made this order."}),
    )
    .await;
    assert_eq!(c.status, StatusCode::CREATED, "{:?}", c.body);
    let unknown = post(
        &app,
        &op,
        "/exceptions/0190c5d0-0000-7000-8000-000000000000/comments",
        json!({"text": "x"}),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let bad = post(
        &app,
        &op,
        &format!("/exceptions/{ex_id}/resolve"),
        json!({"resolution": "ignored"}),
    )
    .await;
    assert_eq!(
        status_code(&bad),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "resolution"
        )
    );
    let extra = post(
        &app,
        &op,
        &format!("/exceptions/{ex_id}/resolve"),
        json!({"resolution": "written_off", "reason": "x"}),
    )
    .await;
    assert_eq!(
        status_code(&extra),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_field", "reason")
    );
    let resolve = json!({"resolution": "written_off", "note": "Not ours; channel refunds it."});
    let resolved = post(
        &app,
        &op,
        &format!("/exceptions/{ex_id}/resolve"),
        resolve.clone(),
    )
    .await;
    assert_eq!(resolved.status, StatusCode::OK, "{:?}", resolved.body);
    assert_eq!(resolved.body["status"], "resolved");
    assert_eq!(resolved.body["resolution"], "written_off");
    assert_eq!(resolved.body["resolved_by"], op_id.as_str());
    assert!(resolved.body["resolved_at"].is_string());
    // Idempotent with the same resolution; another one is a conflict; no reassigning.
    let again = post(
        &app,
        &op,
        &format!("/exceptions/{ex_id}/resolve"),
        resolve.clone(),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["resolved_at"], resolved.body["resolved_at"]);
    let other = post(
        &app,
        &op,
        &format!("/exceptions/{ex_id}/resolve"),
        json!({"resolution": "no_action"}),
    )
    .await;
    assert_eq!(
        (other.status, other.code()),
        (StatusCode::CONFLICT, "invalid_state")
    );
    let reassign = post(
        &app,
        &op,
        &format!("/exceptions/{ex_id}/assign"),
        json!({"operator_id": op_id}),
    )
    .await;
    assert_eq!(reassign.status, StatusCode::CONFLICT);

    let shown = get(&app, &viewer, &format!("/exceptions/{ex_id}")).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.body["resolution"], "written_off");
    assert_eq!(shown.body["note"], "Not ours; channel refunds it.");
    assert_eq!(shown.body["comments"].as_array().unwrap().len(), 1);
    assert_eq!(shown.body["comments"][0]["operator_name"], "Otto Operator");

    // The audit log: each action once, by the operator; the operators created from the command line.
    let log = get(
        &app,
        &admin,
        &format!("/audit-log?target=exception:{ex_id}"),
    )
    .await;
    let actions: Vec<(&str, &str)> = data(&log)
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["operator_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("exception.resolve", op_id.as_str()),
            ("exception.comment", op_id.as_str()),
            ("exception.assign", op_id.as_str()),
        ],
        "newest first; refused and repeated requests write nothing"
    );
    assert_eq!(data(&log)[0]["detail"]["resolution"], "written_off");
    assert_eq!(data(&log)[0]["operator_name"], "Otto Operator");
    let all = get(&app, &admin, "/audit-log?limit=500").await;
    let creates = data(&all)
        .iter()
        .filter(|r| r["action"] == "operator.create")
        .collect::<Vec<_>>();
    assert_eq!(creates.len(), 5);
    assert!(creates.iter().all(|r| r["operator_id"].is_null()));

    // Runs and their items (paged).
    let runs = get(&app, &viewer, &format!("/reconciliation/runs?date={day}")).await;
    assert!(!data(&runs).is_empty());
    assert!(data(&runs).iter().all(|r| r["day"] == day.to_string()));
    let run = get(
        &app,
        &viewer,
        &format!("/reconciliation/runs/{}", ex["run_id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(run.status, StatusCode::OK, "{:?}", run.body);
    assert!(
        run.body["items"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["out_trade_no"] == stranger.as_str())
    );
    let acct = ex["channel_account_id"].as_str().unwrap();
    let by_acct = get(
        &app,
        &viewer,
        &format!("/reconciliation/runs?channel_account_id={acct}&limit=1"),
    )
    .await;
    assert_eq!(data(&by_acct).len(), 1);
    assert_eq!(data(&by_acct)[0]["channel_account_id"], acct);
    let bad = get(&app, &viewer, "/reconciliation/runs?date=2026-13-01").await;
    assert_eq!(
        status_code(&bad),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "date"
        )
    );
    let bad = get(&app, &viewer, "/reconciliation/runs?limit=0").await;
    assert_eq!(
        status_code(&bad),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "limit"
        )
    );
    let bad = get(&app, &viewer, "/reconciliation/runs?dat=2026-01-01").await;
    assert_eq!(
        status_code(&bad),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_field", "dat")
    );

    // Settlements of the day, per merchant.
    let ma = a.creds.merchant_id.to_string();
    let settled = get(&app, &viewer, &format!("/settlements?date={day}")).await;
    assert!(data(&settled).len() >= 2, "{:?}", settled.body);
    let sa = get(
        &app,
        &viewer,
        &format!("/settlements?date={day}&merchant_id={ma}"),
    )
    .await;
    assert_eq!(data(&sa).len(), 1);
    assert_eq!(data(&sa)[0]["gross_minor"], 1000);
    assert_eq!(data(&sa)[0]["merchant_id"], ma.as_str());

    // Payment search across merchants.
    let found = get(&app, &viewer, "/payments?merchant_order_no=ops-order-1").await;
    let mut ids: Vec<&str> = data(&found)
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![pa.as_str(), pb.as_str()];
    want.sort();
    assert_eq!(ids, want);
    let only_a = get(
        &app,
        &viewer,
        &format!("/payments?merchant_order_no=ops-order-1&merchant_id={ma}&status=succeeded"),
    )
    .await;
    assert_eq!(data(&only_a).len(), 1);
    assert_eq!(data(&only_a)[0]["id"], pa.as_str());
    let paged = get(&app, &viewer, "/payments?limit=1").await;
    assert_eq!(data(&paged).len(), 1);
    assert_eq!(paged.body["has_more"], true);
    let bad = get(&app, &viewer, "/payments?status=paid").await;
    assert_eq!(
        status_code(&bad),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "status"
        )
    );
    let bad = get(&app, &viewer, "/payments?from=yesterday").await;
    assert_eq!(
        status_code(&bad),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "from"
        )
    );
    let future = get(&app, &viewer, "/payments?from=2999-01-01T00:00:00Z").await;
    assert!(data(&future).is_empty());

    // The merchant's payable account: the payment's posting, the balance.
    let code =
        paymux_ledger::chart::merchant_payable(a.creds.merchant_id, paymux_model::Currency::Cny)
            .code;
    let st = get(&app, &viewer, &format!("/ledger/accounts/{code}/statement")).await;
    assert_eq!(st.status, StatusCode::OK, "{:?}", st.body);
    assert_eq!(st.body["account"]["code"], code.as_str());
    let lines = st.body["lines"].as_array().unwrap();
    let pay = lines
        .iter()
        .find(|l| l["reference"] == pa.as_str())
        .unwrap_or_else(|| panic!("no posting of {pa}: {:?}", st.body));
    assert_eq!(pay["kind"], "payment");
    assert_eq!(pay["side"], "credit");
    let amount = pay["amount_minor"].as_i64().unwrap();
    assert!(amount > 0 && amount <= 1000);
    let net: i64 = lines
        .iter()
        .map(|l| {
            let a = l["amount_minor"].as_i64().unwrap();
            if l["side"] == "credit" { a } else { -a }
        })
        .sum();
    assert_eq!(st.body["account"]["balance_minor"], net);
    let later = get(
        &app,
        &viewer,
        &format!("/ledger/accounts/{code}/statement?from=2999-01-01T00:00:00Z"),
    )
    .await;
    assert!(later.body["lines"].as_array().unwrap().is_empty());
    assert_eq!(later.body["opening_balance_minor"], net);
    let missing = get(
        &app,
        &viewer,
        "/ledger/accounts/merchant:nobody:payable/statement",
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // The admin manages operators through the API; a disabled token stops working at once.
    let bad = post(
        &app,
        &admin,
        "/operators",
        json!({"name": "Root", "role": "root"}),
    )
    .await;
    assert_eq!(
        status_code(&bad),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "role"
        )
    );
    let new = post(
        &app,
        &admin,
        "/operators",
        json!({"name": "Nina", "role": "viewer"}),
    )
    .await;
    assert_eq!(new.status, StatusCode::CREATED, "{:?}", new.body);
    let nina = new.body["token"].as_str().unwrap().to_string();
    let nina_id = new.body["id"].as_str().unwrap().to_string();
    assert_eq!(get(&app, &nina, "/exceptions").await.status, StatusCode::OK);
    let disabled = post(
        &app,
        &admin,
        &format!("/operators/{nina_id}/disable"),
        json!({}),
    )
    .await;
    assert_eq!(disabled.status, StatusCode::OK, "{:?}", disabled.body);
    assert!(disabled.body["disabled_at"].is_string());
    let gone = get(&app, &nina, "/exceptions").await;
    assert_eq!(
        (gone.status, gone.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let listed = get(&app, &admin, "/operators").await;
    assert_eq!(data(&listed).len(), 6);
    assert!(data(&listed).iter().all(|o| o.get("token").is_none()));
    let by_admin = get(&app, &admin, &format!("/audit-log?operator_id={admin_id}")).await;
    let actions: Vec<&str> = data(&by_admin)
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["operator.disable", "operator.create"]);
    assert_eq!(data(&by_admin)[1]["detail"]["name"], "Nina");
}

/// Runs the command line beside the server under test; asynchronously, so that the server (on this
/// test's runtime) keeps serving and committing while the command waits for the database.
async fn paymux_cli(db: &crate::helpers::TestDb, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_paymux"))
        .args(args)
        .env("PAYMUX_DATA_DIR", db.dir.path())
        .env("PAYMUX_DATABASE_URL", &db.url)
        .env("PAYMUX_LOG", "warn")
        .output()
        .await
        .expect("run paymux");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn operators_from_the_command_line_and_their_tokens() {
    let db = fresh_database().await;
    let (ok, out) = paymux_cli(
        &db,
        &[
            "operator", "create", "--name", "Cli Op", "--role", "operator",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(token.starts_with("opr_") && token.len() == 4 + 64);
    assert_eq!(created["role"], "operator");
    let (ok, _) = paymux_cli(
        &db,
        &["operator", "create", "--name", "X", "--role", "root"],
    )
    .await;
    assert!(!ok, "an unknown role is refused");

    // Only the token's hash is stored.
    let stored: Vec<u8> = match paymux::db::Db::connect(&db.url, 2).await.unwrap() {
        paymux::db::Db::Sqlite(p) => sqlx::query_scalar("SELECT token_hash FROM operators")
            .fetch_one(&p)
            .await
            .unwrap(),
        paymux::db::Db::Postgres(p) => sqlx::query_scalar("SELECT token_hash FROM operators")
            .fetch_one(&p)
            .await
            .unwrap(),
    };
    assert_eq!(stored, operators::token_hash(&token));
    assert_ne!(stored, token.as_bytes());

    let config = test_config(&db);
    let app = spawn_with(db, config).await;
    assert_eq!(
        get(&app, &token, "/exceptions").await.status,
        StatusCode::OK
    );
    let (ok, out) = paymux_cli(&app.db, &["operator", "list"]).await;
    assert!(ok);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(!out.contains(&token));
    let (ok, out) = paymux_cli(&app.db, &["operator", "disable", "--id", &id]).await;
    assert!(ok, "{out}");
    let r = get(&app, &token, "/exceptions").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
}

/// The small refusals and idempotencies of the exception workflow: control characters (NUL, which
/// PostgreSQL cannot store) get `422` naming the field instead of a `500`; assigning an exception
/// to its assignee again writes no second audit row; resolving keeps the note the exception was
/// opened with; an admin cannot disable their own account.
#[tokio::test]
async fn refusals_and_repeats_of_the_exception_workflow_write_nothing_and_lose_nothing() {
    let app = app().await;
    let day = Utc::now().with_timezone(&Shanghai).date_naive() - chrono::Days::new(2);
    put_faults(&app, &json!({"clock_offset_secs": offset_to(day, 10, 0)})).await;
    let m = app.merchant("Ops Tea C").await;
    code_pay(&m, "ops-c-1", 500).await;
    let stranger = stranger_order(&app, 700).await;
    reconcile(&app, day).await;
    let (op_id, op) = operator(&app, "Otto Operator", "operator").await;
    let (admin_id, admin) = operator(&app, "Ada Admin", "admin").await;
    let open = get(&app, &op, "/exceptions?status=open").await;
    let ex_id = data(&open)
        .iter()
        .find(|e| e["out_trade_no"] == stranger.as_str())
        .unwrap_or_else(|| panic!("no exception for {stranger}: {:?}", open.body))["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.sql_execute(&format!(
        "UPDATE reconciliation_exceptions SET note = 'opened: ask the channel' WHERE item_id = {}",
        crate::reconcile::uuid_literal(&app, &ex_id)
    ))
    .await;

    for (path, body, field) in [
        ("comments", json!({"text": "a\u{0}b"}), "text"),
        ("comments", json!({"text": "bell\u{7}"}), "text"),
        (
            "resolve",
            json!({"resolution": "no_action", "note": "x\u{0}"}),
            "note",
        ),
    ] {
        let r = post(&app, &op, &format!("/exceptions/{ex_id}/{path}"), body).await;
        assert_eq!(
            status_code(&r),
            (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", field),
            "{path}: {:?}",
            r.body
        );
    }
    let lines = post(
        &app,
        &op,
        &format!("/exceptions/{ex_id}/comments"),
        json!({"text": "line one\nline two\tand a tab"}),
    )
    .await;
    assert_eq!(lines.status, StatusCode::CREATED, "{:?}", lines.body);
    for query in [
        "/payments?merchant_order_no=a%00b",
        "/payments?channel_trade_no=%00",
    ] {
        let r = get(&app, &op, query).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            "{query}: {:?}",
            r.body
        );
    }
    let r = get(&app, &op, "/payments?limit=101").await;
    assert_eq!(
        status_code(&r),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "limit"
        ),
        "{:?}",
        r.body
    );
    let r = get(&app, &admin, "/audit-log?target=a%00").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);

    for _ in 0..3 {
        let r = post(
            &app,
            &op,
            &format!("/exceptions/{ex_id}/assign"),
            json!({"operator_id": op_id}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["assignee_id"], op_id.as_str());
    }
    let resolved = post(
        &app,
        &op,
        &format!("/exceptions/{ex_id}/resolve"),
        json!({"resolution": "no_action"}),
    )
    .await;
    assert_eq!(resolved.status, StatusCode::OK, "{:?}", resolved.body);
    assert_eq!(resolved.body["note"], "opened: ask the channel");
    let log = get(
        &app,
        &admin,
        &format!("/audit-log?target=exception:{ex_id}"),
    )
    .await;
    let assigns = data(&log)
        .iter()
        .filter(|r| r["action"] == "exception.assign")
        .count();
    assert_eq!(assigns, 1, "{:?}", log.body);

    // Every list pages through all its rows, one at a time, in the order of the whole list.
    for list in ["/reconciliation/runs", "/exceptions", "/settlements"] {
        let whole = get(&app, &admin, &format!("{list}?limit=500")).await;
        assert_eq!(whole.status, StatusCode::OK, "{list}: {:?}", whole.body);
        let ids: Vec<Value> = data(&whole).iter().map(|r| r["id"].clone()).collect();
        assert!(!ids.is_empty(), "{list}");
        let mut paged = Vec::new();
        let mut after = String::new();
        loop {
            let r = get(&app, &admin, &format!("{list}?limit=1{after}")).await;
            assert_eq!(r.status, StatusCode::OK, "{list}: {:?}", r.body);
            paged.extend(data(&r).iter().map(|r| r["id"].clone()));
            if r.body["has_more"] != true {
                break;
            }
            after = format!(
                "&starting_after={}",
                paged.last().unwrap().as_str().unwrap()
            );
            assert!(paged.len() <= ids.len(), "{list}: {paged:?}");
        }
        assert_eq!(paged, ids, "{list}");
    }
    let times: Vec<_> = data(&get(&app, &admin, "/exceptions?limit=500").await)
        .iter()
        .map(|x| chrono::DateTime::parse_from_rfc3339(x["created_at"].as_str().unwrap()).unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {times:?}"
    );

    let own = post(
        &app,
        &admin,
        &format!("/operators/{admin_id}/disable"),
        json!({}),
    )
    .await;
    assert_eq!(
        (own.status, own.code()),
        (StatusCode::CONFLICT, "invalid_state"),
        "{:?}",
        own.body
    );
    let other = post(
        &app,
        &admin,
        &format!("/operators/{op_id}/disable"),
        json!({}),
    )
    .await;
    assert_eq!(other.status, StatusCode::OK, "{:?}", other.body);
}
