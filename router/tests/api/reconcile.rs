//! Nightly reconciliation end to end: payments through the mounted WeChat sandbox "two days ago"
//! (the sandbox's booking clock is moved back, so its bill for that day exists), faults planted in
//! the sandbox — a dropped notification, an order only the channel knows, a changed bill amount, a
//! fee other than the configured rate, a payment booked across midnight — then `reconcile` for the
//! day and the next: exactly the expected classes and resolutions, the books audit clean, and a
//! rerun (from the command line) changes nothing.

use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use chrono_tz::Asia::Shanghai;
use paymux::reconciliation::{AccountReport, DayReport};
use paymux_reconcile::Class;
use serde_json::{Value, json};

use crate::helpers::{
    MerchantClient, TestApp, TestDb, fresh_database, spawn_with, test_config, test_config_on,
};

const FEE_BPS: u32 = 60;

pub async fn app() -> TestApp {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    spawn_with(db, config).await
}

fn fee(amount: i64) -> i64 {
    paymux_channels::sandbox::fee_fen(amount, FEE_BPS)
}

/// Seconds to add to now so that the sandbox books at `at` (Asia/Shanghai).
pub fn offset_to(day: NaiveDate, h: u32, m: u32) -> i64 {
    let at = Shanghai
        .from_local_datetime(&day.and_hms_opt(h, m, 0).unwrap())
        .unwrap()
        .timestamp();
    at - Utc::now().timestamp()
}

pub async fn put_faults(app: &TestApp, faults: &Value) {
    let r = app
        .http
        .put(format!("{}/sandbox/wechat/sandbox/faults", app.base))
        .json(faults)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

pub async fn code_pay(m: &MerchantClient, order_no: &str, amount: i64) -> String {
    let r = m
        .create_payment(&json!({
            "merchant_order_no": order_no, "amount": amount, "currency": "CNY", "subject": "Tea",
            "method": "code_scan", "auth_code": "134567890123456789",
        }))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["status"], "succeeded");
    r.body["id"].as_str().unwrap().to_string()
}

/// An order made at the WeChat sandbox by someone else (not through this platform): only the
/// channel knows it. Returns its `out_trade_no`.
pub async fn stranger_order(app: &TestApp, amount: i64) -> String {
    let stranger = uuid::Uuid::new_v4().simple().to_string();
    let sb = paymux_channels::sandbox::Sandboxes::start(app.config.sandbox_options())
        .await
        .unwrap();
    let cfg = sb
        .wechat
        .account()
        .client_config(&format!("{}/sandbox/wechat", app.base), None);
    let wechat = paymux_channels::wechat::WechatPay::new(cfg).unwrap();
    let order = paymux_channels::OrderRequest {
        out_trade_no: stranger.clone(),
        amount: paymux_model::Money::cny(amount),
        subject: "not ours".into(),
        notify_url: None,
        expires_at: None,
        client_ip: None,
        store_id: None,
        terminal_id: None,
    };
    let out = paymux_channels::Channel::pay_with_code(&wechat, &order, "134567890123456789").await;
    assert!(
        matches!(out, paymux_channels::PayOutcome::Succeeded { .. }),
        "{out:?}"
    );
    stranger
}

pub fn hex(id: &str) -> String {
    id.replace('-', "")
}

/// Runs reconciliation in-process, as `paymux reconcile` does, against the app's sandboxes.
pub async fn reconcile(app: &TestApp, day: NaiveDate) -> DayReport {
    let mut config = app.config.clone();
    config.public_base_url = Some(app.base.clone());
    let (state, _sb) = paymux::reconciliation::standalone_state(config)
        .await
        .unwrap();
    let report = paymux::reconciliation::run_day(&state, day, None, &|_| {})
        .await
        .unwrap();
    state.batcher.shutdown().await;
    state.db.close().await;
    assert!(report.is_ok(), "{report:#?}");
    report
}

fn wechat(r: &DayReport) -> &AccountReport {
    r.accounts
        .iter()
        .find(|a| a.channel.contains("wechat"))
        .unwrap()
}

fn counts(a: &AccountReport) -> Vec<(Class, u64)> {
    Class::ALL.iter().map(|c| (*c, a.count(*c))).collect()
}

fn item<'a>(a: &'a AccountReport, out_trade_no: &str) -> &'a paymux::reconciliation::StoredItem {
    a.items
        .iter()
        .find(|i| i.out_trade_no == out_trade_no)
        .unwrap_or_else(|| panic!("no item {out_trade_no} in {:#?}", a.items))
}

async fn scalar(app: &TestApp, sql: &str) -> i64 {
    match paymux::db::Db::connect(&app.db.url, 2).await.unwrap() {
        paymux::db::Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(&p).await.unwrap(),
        paymux::db::Db::Postgres(p) => sqlx::query_scalar(sql).fetch_one(&p).await.unwrap(),
    }
}

async fn audit_clean(app: &TestApp) {
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let report = paymux::ledger_audit::audit(&db).await.unwrap();
    db.close().await;
    assert!(report.is_clean(), "{}: {report}", app.backend());
}

#[tokio::test]
async fn a_day_with_every_fault_reconciles_resolves_settles_and_reruns_unchanged() {
    let app = app().await;
    let m = app.merchant("Tea House").await;
    let today = Utc::now().with_timezone(&Shanghai).date_naive();
    let day = today - chrono::Days::new(2);

    // Noon of `day` at the channel; every notification is dropped.
    put_faults(
        &app,
        &json!({"drop_notify_pct": 100.0, "clock_offset_secs": offset_to(day, 12, 0)}),
    )
    .await;
    let matched = code_pay(&m, "r-matched", 1000).await;
    let changed = code_pay(&m, "r-amount", 2000).await;
    let fee_differs = code_pay(&m, "r-fee", 3000).await;

    // A C2B payment the payer pays, whose notification never arrives.
    let r = m
        .create_payment(&json!({
            "merchant_order_no": "r-dropped", "amount": 1500, "currency": "CNY", "subject": "Tea",
            "method": "qr_merchant", "wallet": "wechat", "notify_url": "http://127.0.0.1:9/hook",
        }))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let dropped = r.body["id"].as_str().unwrap().to_string();
    let paid = app
        .http
        .post(format!("{}/sandbox/wechat/sandbox/pay", app.base))
        .json(&json!({"code_url": r.body["qr_code"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);

    // An order only the channel knows (made at the channel by someone else).
    let stranger = stranger_order(&app, 700).await;

    // A payment a minute before midnight that the channel books after it.
    put_faults(
        &app,
        &json!({"drop_notify_pct": 100.0, "clock_offset_secs": offset_to(day, 23, 59)}),
    )
    .await;
    let late = code_pay(&m, "r-midnight", 2500).await;

    // The bill: one amount changed, one fee off the configured rate, the late one on the next day.
    let mut overrides = serde_json::Map::new();
    overrides.insert(hex(&changed), json!({"amount_fen": 2100}));
    overrides.insert(hex(&fee_differs), json!({"fee_fen": fee(3000) + 5}));
    overrides.insert(hex(&late), json!({"shift_secs": 300}));
    put_faults(
        &app,
        &json!({"drop_notify_pct": 100.0, "bill_overrides": overrides}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(m.get_payment(&dropped).await.body["status"], "created");

    let first = reconcile(&app, day).await;
    let w = wechat(&first);
    assert_eq!(
        counts(w),
        vec![
            (Class::Matched, 1),
            (Class::MissingOnPlatform, 1),
            (Class::MissingOnChannel, 1),
            (Class::AmountMismatch, 1),
            (Class::StatusMismatch, 1),
            (Class::FeeMismatch, 1),
        ],
        "{w:#?}"
    );
    assert_eq!(item(w, &hex(&dropped)).class, "status_mismatch");
    assert_eq!(item(w, &hex(&dropped)).resolution, "complete_payment");
    assert_eq!(
        item(w, &hex(&dropped)).resolved_by.as_deref(),
        Some("reconciliation")
    );
    assert_eq!(item(w, &stranger).class, "missing_on_platform");
    assert_eq!(item(w, &stranger).resolution, "exception");
    assert_eq!(item(w, &hex(&changed)).class, "amount_mismatch");
    assert_eq!(item(w, &hex(&changed)).resolution, "exception");
    assert_eq!(item(w, &hex(&fee_differs)).class, "fee_mismatch");
    assert_eq!(item(w, &hex(&fee_differs)).resolution, "fee_adjustment");
    assert_eq!(item(w, &hex(&late)).class, "missing_on_channel");
    assert_eq!(item(w, &hex(&late)).resolution, "carry_over");
    assert!(w.items.iter().all(|i| i.out_trade_no != hex(&matched)));
    assert_eq!(
        (w.resolved, w.exceptions, w.carried_over),
        (2, 2, 1),
        "{w:#?}"
    );
    // The channel pays its net; what our books of the bill's records differ by is exactly the
    // changed amount and the stranger's order.
    let net = (1000 - fee(1000))
        + (1500 - fee(1500))
        + (2100 - fee(2000))
        + (3000 - fee(3000) - 5)
        + (700 - fee(700));
    assert_eq!(w.channel_net_minor, net);
    assert_eq!(w.receivable_residual_minor, -100 - (700 - fee(700)));
    assert!(w.settlement_entry_id.is_some());
    let dir = std::path::PathBuf::from(w.report_dir.clone().unwrap());
    for f in ["report.json", "items.csv", "report.html"] {
        assert!(dir.join(f).is_file(), "{f} in {}", dir.display());
    }
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<svg"), "charts are inline SVG");
    let csv = std::fs::read_to_string(dir.join("items.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 5, "{csv}");

    // The dropped notification's payment was completed through the normal path: succeeded, posted
    // once (the audit), announced by webhook.
    let p = m.get_payment(&dropped).await.body;
    assert_eq!(p["status"], "succeeded");
    let hooks = m
        .send(
            reqwest::Method::GET,
            &format!("/v1/webhooks?payment_id={dropped}"),
            None,
        )
        .await;
    assert_eq!(
        hooks.body["data"][0]["type"], "payment.succeeded",
        "{:?}",
        hooks.body
    );

    // Merchant settlement (T+1): every success of the day, less merchant fees; one payout file.
    assert_eq!(first.merchant_settlements.len(), 1, "{first:#?}");
    let s = &first.merchant_settlements[0];
    let amounts = [1000i64, 2000, 3000, 1500, 2500];
    let gross: i64 = amounts.iter().sum();
    let fees: i64 = amounts
        .iter()
        .map(|a| paymux_ledger::rules::fee_minor(*a, 60))
        .sum();
    assert_eq!(
        (s.gross_minor, s.refunds_minor, s.fees_minor, s.net_minor),
        (gross, 0, fees, gross - fees)
    );
    let payout = std::fs::read_to_string(s.payout_file.as_ref().unwrap()).unwrap();
    assert!(
        payout
            .lines()
            .nth(1)
            .unwrap()
            .contains(&format!(",{},", gross - fees))
    );
    audit_clean(&app).await;

    // A rerun from the command line: the same counts, not one new ledger entry or settlement.
    let entries = scalar(&app, "SELECT COUNT(*) FROM ledger_entries").await;
    // (Asynchronously: the server under test runs on this test's runtime.)
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_paymux"))
        .args(["reconcile", "--date", &day.to_string(), "--json"])
        .env("PAYMUX_DATA_DIR", app.db.dir.path())
        .env("PAYMUX_DATABASE_URL", &app.db.url)
        .env("PAYMUX_PUBLIC_BASE_URL", &app.base)
        .env("PAYMUX_DEMO_MERCHANT", "false")
        .env("PAYMUX_LOG", "warn")
        .output()
        .await
        .expect("run paymux reconcile");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    let wechat_again = again["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["channel"].as_str().unwrap().contains("wechat"))
        .unwrap();
    assert_eq!(
        wechat_again["by_class"],
        serde_json::to_value(&w.by_class).unwrap()
    );
    assert_eq!(
        wechat_again["items"],
        serde_json::to_value(&w.items).unwrap()
    );
    assert_eq!(
        wechat_again["receivable_residual_minor"],
        w.receivable_residual_minor
    );
    assert_eq!(
        again["merchant_settlements"],
        serde_json::to_value(&first.merchant_settlements).unwrap()
    );
    assert_eq!(
        scalar(&app, "SELECT COUNT(*) FROM ledger_entries").await,
        entries
    );
    assert_eq!(
        scalar(&app, "SELECT COUNT(*) FROM merchant_settlements").await,
        1
    );

    // The next day's bill lists the late payment: the carry-over is matched, nothing else moves.
    let next = reconcile(&app, day + chrono::Days::new(1)).await;
    let w2 = wechat(&next);
    assert_eq!(w2.count(Class::Matched), 1, "{w2:#?}");
    assert!(w2.items.is_empty(), "{w2:#?}");
    assert_eq!(w2.carry_overs_matched, 1);
    assert_eq!(w2.receivable_residual_minor, 0);
    assert_eq!(
        scalar(
            &app,
            "SELECT COUNT(*) FROM reconciliation_carry_overs WHERE status = 'matched'"
        )
        .await,
        1
    );
    audit_clean(&app).await;
}

#[tokio::test]
async fn the_nightly_run_reconciles_yesterday_once_with_a_second_node_on_postgres() {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    // A first start makes the sandbox keys and migrates, so that the next starts are quick.
    let mut warm = spawn_with(
        TestDb {
            url: db.url.clone(),
            dir: tempfile::tempdir().unwrap(),
        },
        config.clone(),
    )
    .await;
    // A merchant: its three sandbox channel accounts are what the nightly run reconciles.
    warm.merchant("Nightly").await;
    warm.stop().await;
    // Soon, Shanghai time.
    let at = Utc::now().with_timezone(&Shanghai) + chrono::Duration::seconds(4);
    config.reconcile_schedule = at.format("%H:%M:%S").to_string();
    let postgres = db.url.starts_with("postgres");
    let url = db.url.clone();
    let first = spawn_with(db, config.clone()).await;
    // On PostgreSQL a second node over the same database and sandbox accounts competes for it.
    let second = if postgres {
        let other = TestDb {
            url,
            dir: tempfile::tempdir().unwrap(),
        };
        Some(spawn_with(other, test_config_on(&config)).await)
    } else {
        None
    };
    let day = (at - chrono::Duration::days(1)).date_naive();
    let sql = format!(
        "SELECT COUNT(*) FROM reconciliation_runs WHERE day = '{day}' AND status = 'completed'"
    );
    let mut completed = 0;
    for _ in 0..240 {
        completed = scalar(&first, &sql).await;
        if completed == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(completed, 3, "every sandbox account of yesterday");
    // Give a second node time to (not) run as well.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = scalar(
        &first,
        &format!(
            "SELECT CAST(SUM(attempts) AS BIGINT) FROM reconciliation_runs WHERE day = '{day}'"
        ),
    )
    .await;
    assert_eq!(attempts, 3, "each account reconciled once, on one node");
    drop(second);
}

#[tokio::test]
async fn merchants_sharing_the_sandbox_bill_each_reconcile_only_their_own_orders() {
    let app = app().await;
    let a = app.merchant("Tea A").await;
    let b = app.merchant("Tea B").await;
    let day = Utc::now().with_timezone(&Shanghai).date_naive() - chrono::Days::new(2);
    put_faults(&app, &json!({"clock_offset_secs": offset_to(day, 11, 0)})).await;
    let pa = code_pay(&a, "share-a", 1200).await;
    let pb = code_pay(&b, "share-b", 3400).await;
    // An order nobody here made: one exception, on one account only.
    let stranger = stranger_order(&app, 500).await;
    let report = reconcile(&app, day).await;
    let wechat: Vec<&AccountReport> = report
        .accounts
        .iter()
        .filter(|a| a.channel.contains("wechat"))
        .collect();
    assert_eq!(wechat.len(), 2, "one WeChat sandbox account per merchant");
    let mut strangers = 0;
    for acc in &wechat {
        assert_eq!(acc.count(Class::Matched), 1, "{acc:#?}");
        assert_eq!(acc.count(Class::MissingOnChannel), 0, "{acc:#?}");
        assert_eq!(acc.count(Class::AmountMismatch), 0, "{acc:#?}");
        strangers += acc.count(Class::MissingOnPlatform);
        assert!(
            acc.items
                .iter()
                .all(|i| i.out_trade_no != hex(&pa) && i.out_trade_no != hex(&pb)),
            "the other merchant's order is not an item here: {acc:#?}"
        );
    }
    assert_eq!(strangers, 1, "the unknown order is an exception once");
    let stranger_items = wechat
        .iter()
        .flat_map(|a| a.items.iter())
        .filter(|i| i.out_trade_no == stranger)
        .count();
    assert_eq!(stranger_items, 1);
    // Each account's channel net is its own order (and the stranger's on one of them).
    let mut nets: Vec<i64> = wechat.iter().map(|a| a.channel_net_minor).collect();
    nets.sort();
    let mut want = vec![1200 - fee(1200), 3400 - fee(3400)];
    if wechat.iter().any(|a| a.channel_net_minor > 3400) {
        want[1] += 500 - fee(500);
    } else {
        want[0] += 500 - fee(500);
    }
    want.sort();
    assert_eq!(nets, want);
    audit_clean(&app).await;
}

#[tokio::test]
async fn refunds_are_matched_by_out_refund_no_and_settled_with_their_payments() {
    let app = app().await;
    let m = app.merchant("Book Shop").await;
    let today = Utc::now().with_timezone(&Shanghai).date_naive();
    let day = today - chrono::Days::new(2);
    put_faults(&app, &json!({"clock_offset_secs": offset_to(day, 10, 0)})).await;
    let whole = code_pay(&m, "rf-1", 1000).await;
    let part = code_pay(&m, "rf-2", 2000).await;
    code_pay(&m, "rf-3", 3000).await;
    let mut refund_ids = Vec::new();
    for (payment, no, amount) in [(&whole, "rf-1-r", 1000), (&part, "rf-2-r", 500)] {
        let r = m
            .send(
                reqwest::Method::POST,
                &format!("/v1/payments/{payment}/refunds"),
                Some(&json!({"merchant_refund_no": no, "amount": amount, "reason": "退货"})),
            )
            .await;
        assert!(matches!(r.status.as_u16(), 200..=202), "{:?}", r.body);
        refund_ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    for id in &refund_ids {
        let mut status = String::new();
        for _ in 0..400 {
            let r = m
                .send(reqwest::Method::GET, &format!("/v1/refunds/{id}"), None)
                .await;
            status = r.body["status"].as_str().unwrap_or_default().to_string();
            if status != "processing" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(status, "succeeded", "refund {id}");
    }

    let report = reconcile(&app, day).await;
    let w = wechat(&report);
    // Three payments and two refunds, every one found on both sides with its amount and fee.
    assert_eq!(w.channel_records, 5, "{w:#?}");
    assert_eq!(
        counts(w),
        vec![
            (Class::Matched, 5),
            (Class::MissingOnPlatform, 0),
            (Class::MissingOnChannel, 0),
            (Class::AmountMismatch, 0),
            (Class::StatusMismatch, 0),
            (Class::FeeMismatch, 0),
        ],
        "{w:#?}"
    );
    assert!(w.items.is_empty(), "{w:#?}");
    assert_eq!(w.receivable_residual_minor, 0, "{w:#?}");
    // The channel pays payments less refunds less its fees (fees of refunded amounts come back).
    assert_eq!(
        w.channel_net_minor + w.channel_fees_minor,
        1000 + 2000 + 3000 - 1000 - 500,
        "{w:#?}"
    );

    // The merchant is paid the day's payments less its refunds less merchant fees.
    assert_eq!(report.merchant_settlements.len(), 1, "{report:#?}");
    let s = &report.merchant_settlements[0];
    assert_eq!((s.gross_minor, s.refunds_minor), (6000, 1500), "{s:#?}");
    assert_eq!(s.net_minor, s.gross_minor - s.refunds_minor - s.fees_minor);
    assert!(s.fees_minor > 0 && s.fees_minor <= paymux_ledger::rules::fee_minor(6000, 60));
    audit_clean(&app).await;

    // A rerun changes nothing.
    let entries = scalar(&app, "SELECT COUNT(*) FROM ledger_entries").await;
    let again = reconcile(&app, day).await;
    assert_eq!(wechat(&again).by_class, w.by_class);
    assert_eq!(again.merchant_settlements[0].net_minor, s.net_minor);
    assert_eq!(
        scalar(&app, "SELECT COUNT(*) FROM ledger_entries").await,
        entries
    );
    audit_clean(&app).await;
}

async fn refund_in_full(m: &MerchantClient, payment: &str, no: &str, amount: i64) {
    let r = m
        .send(
            reqwest::Method::POST,
            &format!("/v1/payments/{payment}/refunds"),
            Some(&json!({"merchant_refund_no": no, "amount": amount})),
        )
        .await;
    assert!(matches!(r.status.as_u16(), 200..=202), "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    for _ in 0..400 {
        let r = m
            .send(reqwest::Method::GET, &format!("/v1/refunds/{id}"), None)
            .await;
        if r.body["status"] != "processing" {
            assert_eq!(r.body["status"], "succeeded", "{:?}", r.body);
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("refund {id} never became final");
}

/// Day 1 is paid out; day 2 refunds more than it takes (its net is negative: nothing is paid, and the
/// debt is not forgotten); day 3's payout is its net less that debt. The payable ends at zero.
#[tokio::test]
async fn a_day_whose_refunds_exceed_its_payments_is_taken_back_from_the_next_payout() {
    refund_heavy_days(false).await;
}

/// The same days, day 3 settled before day 2: day 3 pays its net less day 2's debt, day 2 pays
/// nothing; the total paid is still exactly what was earned.
#[tokio::test]
async fn days_settled_out_of_order_pay_everything_once() {
    refund_heavy_days(true).await;
}

async fn refund_heavy_days(day_3_first: bool) {
    let app = app().await;
    let m = app.merchant("Book Shop").await;
    let today = Utc::now().with_timezone(&Shanghai).date_naive();
    let days = [4, 3, 2].map(|n| today - chrono::Days::new(n));
    let net = |amount: i64| amount - paymux_ledger::rules::fee_minor(amount, FEE_BPS);

    put_faults(
        &app,
        &json!({"clock_offset_secs": offset_to(days[0], 10, 0)}),
    )
    .await;
    let first = code_pay(&m, "c-1", 10_000).await;
    let s1 = reconcile(&app, days[0]).await.merchant_settlements;
    assert_eq!(s1.len(), 1, "{s1:#?}");
    assert_eq!(
        (s1[0].net_minor, s1[0].carried_minor, s1[0].payout_minor),
        (net(10_000), 0, net(10_000)),
        "{s1:#?}"
    );

    put_faults(
        &app,
        &json!({"clock_offset_secs": offset_to(days[1], 10, 0)}),
    )
    .await;
    refund_in_full(&m, &first, "c-1-r", 10_000).await;
    put_faults(
        &app,
        &json!({"clock_offset_secs": offset_to(days[2], 10, 0)}),
    )
    .await;
    code_pay(&m, "c-2", 20_000).await;
    let settle_day_2 = || async {
        let s2 = reconcile(&app, days[1]).await.merchant_settlements;
        assert_eq!(s2.len(), 1, "{s2:#?}");
        s2
    };
    let s2 = if day_3_first {
        None
    } else {
        Some(settle_day_2().await)
    };
    let s3 = reconcile(&app, days[2]).await.merchant_settlements;
    assert_eq!(s3.len(), 1, "{s3:#?}");
    assert_eq!(
        (s3[0].net_minor, s3[0].carried_minor, s3[0].payout_minor),
        (net(20_000), -net(10_000), net(20_000) - net(10_000)),
        "{s3:#?}"
    );
    match s2 {
        Some(s2) => assert_eq!(
            (
                s2[0].net_minor,
                s2[0].carried_minor,
                s2[0].payout_minor,
                s2[0].entry_id
            ),
            (-net(10_000), 0, 0, None),
            "{s2:#?}"
        ),
        // Day 3 already paid out day 1's and day 3's nets less day 2's refund: nothing is left.
        None => {
            let s2 = settle_day_2().await;
            assert_eq!(
                (s2[0].net_minor, s2[0].payout_minor, s2[0].entry_id),
                (-net(10_000), 0, None),
                "{s2:#?}"
            );
        }
    }
    let payout = std::fs::read_to_string(s3[0].payout_file.as_ref().unwrap()).unwrap();
    assert!(
        payout.lines().nth(1).unwrap().contains(&format!(
            ",{},{},{},",
            net(20_000),
            -net(10_000),
            net(20_000) - net(10_000)
        )),
        "{payout}"
    );

    // Everything the merchant earned (day 1's and day 3's nets, less day 2's refund) was paid once:
    // the payable holds nothing; a rerun of day 3 pays nothing more.
    let payable =
        paymux_ledger::chart::merchant_payable(m.creds.merchant_id, paymux_model::Currency::Cny)
            .code;
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let held = paymux_ledger::queries::balance_by_code(&db.ledger_pool(), &payable)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(held.posted_minor(), 0, "{}", app.backend());
    let entries = scalar(&app, "SELECT COUNT(*) FROM ledger_entries").await;
    assert_eq!(reconcile(&app, days[2]).await.merchant_settlements, s3);
    assert_eq!(
        scalar(&app, "SELECT COUNT(*) FROM ledger_entries").await,
        entries
    );
    audit_clean(&app).await;
}

#[tokio::test]
async fn each_account_is_reconciled_at_its_own_time_and_merchants_settle_after_the_last() {
    use crate::ops_api::{get, operator, ops};
    use reqwest::Method;
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    // Accounts without a time of their own wait for the configured one, later today.
    let now = Utc::now().with_timezone(&Shanghai);
    let in_an_hour = now + chrono::Duration::hours(1);
    let later = if in_an_hour.date_naive() == now.date_naive() {
        in_an_hour.time()
    } else {
        chrono::NaiveTime::from_hms_opt(23, 59, 59).unwrap()
    };
    config.reconcile_schedule = later.format("%H:%M:%S").to_string();
    let app = spawn_with(db, config).await;
    let m = app.merchant("Scheduled").await;
    let yesterday = now.date_naive() - chrono::Days::new(1);
    // A payment of yesterday, so that there is something to settle.
    put_faults(
        &app,
        &json!({"clock_offset_secs": offset_to(yesterday, 12, 0)}),
    )
    .await;
    code_pay(&m, "sch-1", 1000).await;
    put_faults(&app, &json!({})).await;

    let (_, admin) = operator(&app, "Ada", "admin").await;
    let (_, viewer) = operator(&app, "Vic", "viewer").await;
    let list = get(&app, &viewer, "/reconciliation/schedules").await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    let rows = list.body.as_array().unwrap().clone();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r["own"] == false && r["at"] == config_at(&later)),
        "{rows:?}"
    );
    let id_of = |kind: &str| {
        rows.iter().find(|r| r["kind"] == kind).unwrap()["channel_account_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (wechat, others) = (id_of("wechat_v3"), [id_of("alipay"), id_of("unionpay_qr")]);

    // Only admins set times, and only real times of real accounts.
    let path = |id: &str| format!("/reconciliation/schedules/{id}");
    let r = ops(
        &app,
        &viewer,
        Method::PUT,
        &path(&wechat),
        Some(json!({"at": "00:00"})),
    )
    .await;
    assert_eq!((r.status.as_u16(), r.code()), (403, "forbidden"));
    let r = ops(
        &app,
        &admin,
        Method::PUT,
        &path(&wechat),
        Some(json!({"at": "25:00"})),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.code(), r.body["field"].as_str()),
        (422, "validation_failed", Some("at"))
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    let r = ops(
        &app,
        &admin,
        Method::PUT,
        &path(&unknown),
        Some(json!({"at": "00:00"})),
    )
    .await;
    assert_eq!(r.status, 404, "{:?}", r.body);

    // The WeChat account's own time has come: it alone is reconciled.
    let r = ops(
        &app,
        &admin,
        Method::PUT,
        &path(&wechat),
        Some(json!({"at": "00:00"})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The same time again is answered the same and writes no second audit row.
    let again = ops(
        &app,
        &admin,
        Method::PUT,
        &path(&wechat),
        Some(json!({"at": "00:00"})),
    )
    .await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(
        scalar(
            &app,
            "SELECT COUNT(*) FROM ops_audit_log WHERE action = 'reconciliation.schedule'"
        )
        .await,
        1
    );
    let completed = |id: &str| {
        format!(
            "SELECT COUNT(*) FROM reconciliation_runs WHERE day = '{yesterday}' AND status = 'completed' AND channel_account_id = {}",
            uuid_literal(&app, id)
        )
    };
    let runs = format!("SELECT COUNT(*) FROM reconciliation_runs WHERE day = '{yesterday}'");
    let settlements =
        format!("SELECT COUNT(*) FROM merchant_settlements WHERE day = '{yesterday}'");
    wait_scalar(&app, &completed(&wechat), 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        scalar(&app, &runs).await,
        1,
        "the others wait for their time"
    );
    assert_eq!(
        scalar(&app, &settlements).await,
        0,
        "merchants settle only after every account"
    );

    // The others' time comes: they are reconciled, then the merchant is settled, once.
    for id in &others {
        let r = ops(
            &app,
            &admin,
            Method::PUT,
            &path(id),
            Some(json!({"at": "00:00:00"})),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    for id in &others {
        wait_scalar(&app, &completed(id), 1).await;
    }
    wait_scalar(&app, &settlements, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(scalar(&app, &runs).await, 3);
    assert_eq!(
        scalar(
            &app,
            &format!("SELECT CAST(SUM(attempts) AS BIGINT) FROM reconciliation_runs WHERE day = '{yesterday}'")
        )
        .await,
        3,
        "each account once"
    );
    assert_eq!(scalar(&app, &settlements).await, 1);
    // The day's index lists every account, though each was reconciled by a run of its own, and
    // the settlement the last of them made.
    let index = std::fs::read_to_string(
        app.db
            .dir
            .path()
            .join("reports")
            .join(yesterday.to_string())
            .join("index.html"),
    )
    .unwrap();
    for id in std::iter::once(&wechat).chain(&others) {
        assert!(
            index.contains(&format!("{id}/report.html")),
            "{id}: {index}"
        );
    }
    assert!(index.contains("Merchant settlements"), "{index}");

    // Back to the configured time; every change is in the audit log.
    let r = ops(
        &app,
        &admin,
        Method::PUT,
        &path(&wechat),
        Some(json!({"at": null})),
    )
    .await;
    let row = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "wechat_v3")
        .unwrap()
        .clone();
    assert_eq!(
        (row["own"].clone(), row["at"].clone()),
        (json!(false), json!(config_at(&later)))
    );
    let audit = get(
        &app,
        &admin,
        &format!("/audit-log?target=channel_account:{wechat}"),
    )
    .await;
    assert_eq!(
        audit.body["data"].as_array().unwrap().len(),
        2,
        "{:?}",
        audit.body
    );
    audit_clean(&app).await;
}

fn config_at(t: &chrono::NaiveTime) -> String {
    t.format("%H:%M:%S").to_string()
}

/// A UUID as an SQL literal of the app's backend (SQLite stores them as 16-byte blobs).
pub(crate) fn uuid_literal(app: &TestApp, id: &str) -> String {
    if app.backend() == "postgres" {
        format!("'{id}'")
    } else {
        format!("X'{}'", id.replace('-', ""))
    }
}

async fn wait_scalar(app: &TestApp, sql: &str, want: i64) {
    let mut got = 0;
    for _ in 0..200 {
        got = scalar(app, sql).await;
        if got == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{sql}: {got}, wanted {want}");
}

/// A payment we closed that the channel had been paid for (its notification lost) is completed by
/// reconciliation as a late success; a success the channel never lists is carried over at the day's
/// end and becomes an exception once `reconcile_carry_over_days` bills have not listed it.
#[tokio::test]
async fn a_closed_payment_paid_at_the_channel_completes_late_and_an_unlisted_carry_over_expires() {
    let app = app().await;
    assert_eq!(app.config.reconcile_carry_over_days, 2);
    let m = app.merchant("Tea House").await;
    let today = Utc::now().with_timezone(&Shanghai).date_naive();
    let day = today - chrono::Days::new(4);

    put_faults(
        &app,
        &json!({"drop_notify_pct": 100.0, "clock_offset_secs": offset_to(day, 12, 0)}),
    )
    .await;
    let r = m
        .create_payment(&json!({
            "merchant_order_no": "r-closed", "amount": 1800, "currency": "CNY", "subject": "Tea",
            "method": "qr_merchant", "wallet": "wechat",
        }))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let closed = r.body["id"].as_str().unwrap().to_string();
    let paid = app
        .http
        .post(format!("{}/sandbox/wechat/sandbox/pay", app.base))
        .json(&json!({"code_url": r.body["qr_code"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    // Our side gave up on it meanwhile (as an expiry that could not reach the channel would).
    app.sql_execute(
        "UPDATE payments SET status = 'closed', closed_reason = 'expired' WHERE merchant_order_no = 'r-closed'",
    )
    .await;
    assert_eq!(m.get_payment(&closed).await.body["status"], "closed");

    // A minute before midnight; the channel books it ten days later, so no bill of the next days
    // lists it.
    put_faults(
        &app,
        &json!({"drop_notify_pct": 100.0, "clock_offset_secs": offset_to(day, 23, 59)}),
    )
    .await;
    let unlisted = code_pay(&m, "r-unlisted", 2500).await;
    let mut overrides = serde_json::Map::new();
    overrides.insert(hex(&unlisted), json!({"shift_secs": 10 * 86_400}));
    put_faults(
        &app,
        &json!({"drop_notify_pct": 100.0, "bill_overrides": overrides}),
    )
    .await;

    let first = reconcile(&app, day).await;
    let w = wechat(&first);
    let c = item(w, &hex(&closed));
    assert_eq!(
        (
            c.class.as_str(),
            c.platform_status.as_deref(),
            c.resolution.as_str()
        ),
        ("status_mismatch", Some("closed"), "complete_payment"),
        "{c:?}"
    );
    assert_eq!(c.resolved_by.as_deref(), Some("reconciliation"));
    let p = m.get_payment(&closed).await.body;
    assert_eq!(
        (p["status"].as_str(), p["late_success"].as_bool()),
        (Some("succeeded"), Some(true)),
        "{p}"
    );
    let u = item(w, &hex(&unlisted));
    assert_eq!(
        (u.class.as_str(), u.resolution.as_str()),
        ("missing_on_channel", "carry_over")
    );
    assert_eq!(w.carried_over, 1);
    let open_exceptions =
        "SELECT COUNT(*) FROM reconciliation_exceptions WHERE class = 'missing_on_channel'";
    assert_eq!(scalar(&app, open_exceptions).await, 0);

    // One bill later it is still only carried over…
    let next = reconcile(&app, day + chrono::Days::new(1)).await;
    assert_eq!(wechat(&next).carry_overs_matched, 0);
    assert_eq!(scalar(&app, open_exceptions).await, 0);
    // …and after `reconcile_carry_over_days` bills without it, an exception for operations.
    reconcile(&app, day + chrono::Days::new(2)).await;
    assert_eq!(scalar(&app, open_exceptions).await, 1);
    assert_eq!(
        scalar(
            &app,
            "SELECT COUNT(*) FROM reconciliation_carry_overs WHERE status = 'exception'"
        )
        .await,
        1
    );
    // Rerunning that day opens nothing more.
    reconcile(&app, day + chrono::Days::new(2)).await;
    assert_eq!(scalar(&app, open_exceptions).await, 1);
    audit_clean(&app).await;
}

/// A success notification for a payment that failed here: failed is final, so the payment stays
/// failed and nothing is posted, but the money moved: an exception is opened at once.
#[tokio::test]
async fn a_success_reported_for_a_failed_payment_opens_an_exception_at_once() {
    let app = app().await;
    let m = app.merchant("Tea House").await;
    let r = m
        .create_payment(&json!({
            "merchant_order_no": "r-failed", "amount": 1800, "currency": "CNY", "subject": "Tea",
            "method": "qr_merchant", "wallet": "wechat",
        }))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    // Marked failed here (as a query answer read as a decline would), then paid at the channel.
    app.sql_execute(
        "UPDATE payments SET status = 'failed', failure_code = 'X' WHERE merchant_order_no = 'r-failed'",
    )
    .await;
    let paid = app
        .http
        .post(format!("{}/sandbox/wechat/sandbox/pay", app.base))
        .json(&json!({"code_url": r.body["qr_code"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    wait_scalar(
        &app,
        "SELECT COUNT(*) FROM reconciliation_exceptions WHERE class = 'paid_while_failed' AND status = 'open'",
        1,
    )
    .await;
    assert_eq!(m.get_payment(&id).await.body["status"], "failed");
    assert_eq!(
        scalar(&app, "SELECT COUNT(*) FROM ledger_entries").await,
        0,
        "nothing is posted for a failed payment"
    );
    audit_clean(&app).await;
}

/// A notification for a payment that has no channel account yet (a payment link not opened in a
/// wallet) is accepted only from one of its merchant's accounts: another merchant's account cannot
/// settle it (and book it on itself).
#[tokio::test]
async fn a_notification_from_another_merchants_account_settles_nothing() {
    let app = app().await;
    let a = app.merchant("Tea A").await;
    let b = app.merchant("Tea B").await;
    let r = a
        .create_payment(&json!({
            "merchant_order_no": "link-a", "amount": 1200, "currency": "CNY", "subject": "Tea",
            "method": "qr_merchant",
        }))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    // B's WeChat sandbox account, and an order in A's payment's name at the sandbox that notifies it.
    let account_b = wechat_account_of(&app, &b).await;
    let sb = paymux_channels::sandbox::Sandboxes::start(app.config.sandbox_options())
        .await
        .unwrap();
    let cfg = sb.wechat.account().client_config(
        &format!("{}/sandbox/wechat", app.base),
        Some(format!("{}/notify/{account_b}", app.base)),
    );
    let wechat = paymux_channels::wechat::WechatPay::new(cfg).unwrap();
    let created = paymux_channels::Channel::create_order(
        &wechat,
        &paymux_channels::CreateOrder {
            order: paymux_channels::OrderRequest {
                out_trade_no: hex(&id),
                amount: paymux_model::Money::cny(1200),
                subject: "not B's".into(),
                notify_url: None,
                expires_at: None,
                client_ip: None,
                store_id: None,
                terminal_id: None,
            },
            kind: paymux_channels::CreateKind::Qr,
        },
    )
    .await
    .unwrap();
    let paymux_channels::CreatedOrder::Qr { code_url } = created else {
        panic!("{created:?}")
    };
    let paid = app
        .http
        .post(format!("{}/sandbox/wechat/sandbox/pay", app.base))
        .json(&json!({"code_url": code_url}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    // The notification (and the sandbox's retries of it) arrive and are refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = a.get_payment(&id).await.body;
    assert_eq!(
        (p["status"].as_str(), p["channel_account_id"].as_str()),
        (Some("created"), None),
        "{p}"
    );
    assert_eq!(scalar(&app, "SELECT COUNT(*) FROM ledger_entries").await, 0);
}

/// A day whose run failed is tried again by the nightly scheduler on the following days too, not
/// only until its own midnight.
#[tokio::test]
async fn a_run_that_failed_days_ago_is_tried_again_by_the_scheduler() {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    config.reconcile_schedule = "00:00:00".into();
    let app = spawn_with(db, config).await;
    let m = app.merchant("Catch up").await;
    let account = wechat_account_of(&app, &m).await;
    let day = Utc::now().with_timezone(&Shanghai).date_naive() - chrono::Days::new(3);
    let run =
        paymux::reconciliation::run_id(paymux_model::ChannelAccountId::from_uuid(account), day);
    app.sql_execute(&format!(
        "INSERT INTO reconciliation_runs (id, channel_account_id, day, status, attempts, error, started_at_us) \
         VALUES ({}, {}, '{day}', 'failed', 1, 'the bill was not ready', 0)",
        uuid_literal(&app, &run.to_string()),
        uuid_literal(&app, &account.to_string()),
    ))
    .await;
    wait_scalar(
        &app,
        &format!(
            "SELECT COUNT(*) FROM reconciliation_runs WHERE day = '{day}' AND status = 'completed'"
        ),
        1,
    )
    .await;
}

/// The merchant's WeChat sandbox channel account.
async fn wechat_account_of(app: &TestApp, m: &MerchantClient) -> uuid::Uuid {
    let sql = "SELECT id FROM channel_accounts WHERE merchant_id = $1 AND kind = 'wechat_v3'";
    let merchant = uuid::Uuid::from(m.creds.merchant_id);
    let db = paymux::db::Db::connect(&app.db.url, 2).await.unwrap();
    let account = match &db {
        paymux::db::Db::Sqlite(p) => sqlx::query_scalar(sql).bind(merchant).fetch_one(p).await,
        paymux::db::Db::Postgres(p) => sqlx::query_scalar(sql).bind(merchant).fetch_one(p).await,
    };
    db.close().await;
    account.unwrap()
}

/// The channel's fees are checked at the cost rate each payment was booked with: a rate changed
/// afterwards (a new contract with the channel, entered by an operator) makes no payment or refund
/// of an earlier day a fee mismatch.
#[tokio::test]
async fn fees_are_checked_at_the_cost_rate_booked_with_each_payment() {
    const TOKEN: &str = "adm_test_0123456789abcdef";
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.sandbox_time_compression = 100;
    config.admin_token = Some(paymux::config::Secret::new(TOKEN));
    let app = spawn_with(db, config).await;
    let m = app.merchant("Tea House").await;
    let day = Utc::now().with_timezone(&Shanghai).date_naive() - chrono::Days::new(2);
    put_faults(&app, &json!({"clock_offset_secs": offset_to(day, 10, 0)})).await;
    code_pay(&m, "rate-1", 1000).await;
    let second = code_pay(&m, "rate-2", 2000).await;
    refund_in_full(&m, &second, "rate-2-r", 500).await;

    let account = wechat_account_of(&app, &m).await;
    let merchant = uuid::Uuid::from(m.creds.merchant_id);
    let r = app
        .http
        .patch(format!(
            "{}/admin/v1/merchants/{merchant}/channel-accounts/{account}",
            app.base
        ))
        .header("authorization", format!("Bearer {TOKEN}"))
        .json(&json!({"cost_rate_bps": FEE_BPS / 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let report = reconcile(&app, day).await;
    let w = wechat(&report);
    assert_eq!(
        counts(w),
        vec![
            (Class::Matched, 3),
            (Class::MissingOnPlatform, 0),
            (Class::MissingOnChannel, 0),
            (Class::AmountMismatch, 0),
            (Class::StatusMismatch, 0),
            (Class::FeeMismatch, 0),
        ],
        "{w:#?}"
    );
    assert_eq!(
        w.channel_fees_minor,
        fee(1000) + fee(2000) - fee(2000) / 4,
        "{w:#?}"
    );
    audit_clean(&app).await;
}
