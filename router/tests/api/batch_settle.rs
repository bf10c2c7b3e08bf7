//! The write batcher's settle step: many payments settled by one multi-row statement per target
//! status, and several commands for one payment in the same batch applied in their order.

use std::sync::Arc;
use std::time::Duration;

use paymux::batcher::{BatcherConfig, Settle, WriteBatcher, WriteOp, WriteOutcome};
use paymux_model::{PaymentId, PaymentStatus};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::spawn_app;

fn settle(id: &str, to: PaymentStatus, trade_no: &str) -> WriteOp {
    WriteOp::Settle(Box::new(Settle {
        payment_id: PaymentId::from(Uuid::parse_str(id).unwrap()),
        to,
        channel_account_id: Uuid::nil(),
        channel_trade_no: Some(trade_no.to_string()),
        failure_code: (to == PaymentStatus::Failed).then(|| "NOTENOUGH".to_string()),
        failure_message: (to == PaymentStatus::Failed).then(|| "balance too low".to_string()),
        paid_at_us: (to == PaymentStatus::Succeeded).then_some(1_700_000_000_000_000),
        entry: None,
    }))
}

#[tokio::test]
async fn one_batch_settles_many_payments_and_keeps_each_payments_order() {
    let app = spawn_app().await;
    let m = app.merchant("Settle").await;
    let mut ids = Vec::new();
    for n in 0..40 {
        let r = m
            .create_payment(
                &json!({"merchant_order_no": format!("s-{n}"), "amount": 100 + n,
                "currency": "CNY", "subject": "x", "method": "qr_merchant"}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    // A batcher of our own on the same database that waits long enough to gather every command
    // below into one batch.
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let batcher = Arc::new(WriteBatcher::start(
        db.clone(),
        BatcherConfig {
            items_max: 1000,
            linger: Duration::from_millis(300),
            workers: 1,
            queue_capacity: 1000,
        },
    ));
    let mut ops = vec![
        // Closed, then a late success for the same payment, in that order.
        settle(&ids[0], PaymentStatus::Closed, "t0"),
        settle(&ids[0], PaymentStatus::Succeeded, "t0"),
        // The same success twice: the second finds it settled.
        settle(&ids[1], PaymentStatus::Succeeded, "t1"),
        settle(&ids[1], PaymentStatus::Succeeded, "t1"),
        settle(&ids[2], PaymentStatus::Failed, "t2"),
        // A payment that does not exist moves nothing.
        settle(&Uuid::now_v7().to_string(), PaymentStatus::Succeeded, "tx"),
    ];
    for id in &ids[3..] {
        ops.push(settle(id, PaymentStatus::Succeeded, &format!("t-{id}")));
    }
    let handles: Vec<_> = ops
        .into_iter()
        .map(|op| {
            let b = batcher.clone();
            tokio::spawn(async move { b.submit(op).await.unwrap() })
        })
        .collect();
    let mut moved = Vec::new();
    for h in handles {
        moved.push(h.await.unwrap() == WriteOutcome::Transitioned(true));
    }
    let mut expected = vec![true, true, true, false, true, false];
    expected.extend(std::iter::repeat_n(true, ids.len() - 3));
    assert_eq!(moved, expected);
    batcher.shutdown().await;
    db.close().await;

    let p0 = m.get_payment(&ids[0]).await.body;
    assert_eq!(p0["status"], "succeeded");
    assert_eq!(p0["late_success"], true, "{p0}");
    assert_eq!(p0["channel_trade_no"], "t0");
    let p1 = m.get_payment(&ids[1]).await.body;
    assert_eq!(
        (p1["status"].as_str(), p1["late_success"].as_bool()),
        (Some("succeeded"), Some(false))
    );
    assert!(p1["paid_at"].is_string(), "{p1}");
    let p2 = m.get_payment(&ids[2]).await.body;
    assert_eq!(p2["status"], "failed");
    assert_eq!(p2["failure_code"], "NOTENOUGH");
    assert!(p2["paid_at"].is_null());
    for id in &ids[3..] {
        let p = m.get_payment(id).await.body;
        assert_eq!(p["status"], "succeeded", "{p}");
        assert_eq!(p["channel_trade_no"], format!("t-{id}"));
        assert_eq!(p["channel_account_id"], Uuid::nil().to_string());
    }
}

#[tokio::test]
async fn a_command_the_database_refuses_fails_alone_and_the_rest_of_its_batch_commits() {
    let app = spawn_app().await;
    let m = app.merchant("Poison").await;
    let mut ids = Vec::new();
    let mut merchant_id = String::new();
    for n in 0..12 {
        let r = m
            .create_payment(
                &json!({"merchant_order_no": format!("p-{n}"), "amount": 100 + n,
                "currency": "CNY", "subject": "x", "method": "qr_merchant"}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        merchant_id = r.body["merchant_id"].as_str().unwrap().to_string();
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let batcher = Arc::new(WriteBatcher::start(
        db.clone(),
        BatcherConfig {
            items_max: 1000,
            linger: Duration::from_millis(300),
            workers: 1,
            queue_capacity: 1000,
        },
    ));
    // A payment the database's own check refuses (an amount of zero; the API never sends one),
    // in the middle of one batch of settlements.
    let now = paymux::db::now_us();
    let refused = WriteOp::CreatePayment(Box::new(paymux::payments::model::PaymentRow {
        id: Uuid::now_v7(),
        merchant_id: Uuid::parse_str(&merchant_id).unwrap(),
        merchant_order_no: "refused".into(),
        request_hash: "x".into(),
        amount_minor: 0,
        currency: "CNY".into(),
        subject: "x".into(),
        method: "qr_merchant".into(),
        wallet: None,
        status: "created".into(),
        notify_url: None,
        store_id: None,
        terminal_id: None,
        metadata: None,
        refunded_amount_minor: 0,
        channel_account_id: None,
        channel_trade_no: None,
        late_success: false,
        failure_code: None,
        failure_message: None,
        closed_reason: None,
        expires_at_us: now + 60_000_000,
        created_at_us: now,
        updated_at_us: now,
        paid_at_us: None,
        qr_code: None,
    }));
    let mut ops: Vec<WriteOp> = ids[..6]
        .iter()
        .map(|id| settle(id, PaymentStatus::Succeeded, &format!("t-{id}")))
        .collect();
    ops.push(refused);
    ops.extend(
        ids[6..]
            .iter()
            .map(|id| settle(id, PaymentStatus::Failed, &format!("t-{id}"))),
    );
    let handles: Vec<_> = ops
        .into_iter()
        .map(|op| {
            let b = batcher.clone();
            tokio::spawn(async move { b.submit(op).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for h in handles {
        outcomes.push(h.await.unwrap());
    }
    let refused_count = outcomes.iter().filter(|o| o.is_err()).count();
    assert_eq!(refused_count, 1, "{outcomes:?}");
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, Ok(WriteOutcome::Transitioned(true))))
            .count(),
        12,
        "{outcomes:?}"
    );
    batcher.shutdown().await;
    db.close().await;
    for (n, id) in ids.iter().enumerate() {
        let p = m.get_payment(id).await.body;
        let want = if n < 6 { "succeeded" } else { "failed" };
        assert_eq!(p["status"], want, "{p}");
    }
    let found = m.find_by_order_no("refused").await;
    assert_eq!(found.status, 200, "{:?}", found.body);
    assert_eq!(
        found.body["data"].as_array().map(Vec::len),
        Some(0),
        "{:?}",
        found.body
    );
}

#[tokio::test]
async fn a_command_whose_entry_the_ledger_rejects_fails_alone_and_the_rest_of_its_batch_commits() {
    let app = spawn_app().await;
    let m = app.merchant("Rejected").await;
    let mut ids = Vec::new();
    for n in 0..7 {
        let r = m
            .create_payment(
                &json!({"merchant_order_no": format!("l-{n}"), "amount": 100 + n,
                "currency": "CNY", "subject": "x", "method": "qr_merchant"}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    let account = paymux_model::ChannelAccountId::from_uuid(Uuid::now_v7());
    let with_entry = |id: &str, entry_of: &str, amount: i64| {
        let WriteOp::Settle(mut s) = settle(id, PaymentStatus::Succeeded, &format!("t-{id}"))
        else {
            unreachable!()
        };
        s.entry = Some(paymux_ledger::rules::payment_succeeded(
            PaymentId::from(Uuid::parse_str(entry_of).unwrap()),
            m.creds.merchant_id,
            account,
            paymux_model::Money::cny(amount),
            60,
            20,
            1_700_000_000_000_000,
        ));
        WriteOp::Settle(s)
    };
    let db = paymux::startup::open_database(&app.config).await.unwrap();
    let batcher = Arc::new(WriteBatcher::start(
        db.clone(),
        BatcherConfig {
            items_max: 1000,
            linger: Duration::from_millis(300),
            workers: 1,
            queue_capacity: 1000,
        },
    ));
    // Six payments with their entries, and a seventh whose entry has the first one's id with
    // other content: whichever of the two comes second is rejected by the ledger, alone.
    let mut ops: Vec<WriteOp> = ids[..6]
        .iter()
        .enumerate()
        .map(|(n, id)| with_entry(id, id, 100 + n as i64))
        .collect();
    ops.push(with_entry(&ids[6], &ids[0], 999));
    let handles: Vec<_> = ops
        .into_iter()
        .map(|op| {
            let b = batcher.clone();
            tokio::spawn(async move { b.submit(op).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for h in handles {
        outcomes.push(h.await.unwrap());
    }
    assert_eq!(
        outcomes.iter().filter(|o| o.is_err()).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, Ok(WriteOutcome::Transitioned(true))))
            .count(),
        6,
        "{outcomes:?}"
    );
    batcher.shutdown().await;
    db.close().await;
    let succeeded = {
        let mut n = 0;
        for id in &ids {
            if m.get_payment(id).await.body["status"] == "succeeded" {
                n += 1;
            }
        }
        n
    };
    assert_eq!(succeeded, 6);
}
