//! Per-merchant rate limits: a burst passes, the next request is `429 rate_limited` with
//! `Retry-After`, other merchants are unaffected; with Redis two nodes share one budget.

use reqwest::Method;

use crate::helpers::{
    MerchantClient, TestApp, TestDb, fresh_database, spawn_with, test_config, test_config_on,
};

const BURST: u32 = 3;

/// A node with a limit of 1 request/s in bursts of [`BURST`] (no sandboxes: two nodes share a
/// data directory).
async fn limited_app() -> TestApp {
    let db = fresh_database().await;
    let mut config = test_config(&db);
    config.rate_limit_per_second = 1;
    config.rate_limit_burst = BURST;
    config.sandbox = false;
    spawn_with(db, config).await
}

async fn list(m: &MerchantClient) -> crate::helpers::Reply {
    m.send(Method::GET, "/v1/payments?limit=1", None).await
}

fn assert_limited(r: &crate::helpers::Reply) {
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (429, "rate_limited"),
        "{:?}",
        r.body
    );
    let retry: u64 = r
        .headers
        .get("retry-after")
        .expect("Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert!(r.content_type.starts_with("application/problem+json"));
}

#[tokio::test]
async fn burst_passes_then_429_with_retry_after_and_other_merchants_unaffected() {
    let app = limited_app().await;
    let a = app.merchant("A").await;
    let b = app.merchant("B").await;
    for i in 0..BURST {
        let r = list(&a).await;
        assert_eq!(r.status, 200, "request {i} of the burst: {:?}", r.body);
    }
    assert_limited(&list(&a).await);
    // Writes are limited by the same budget.
    assert_limited(
        &a.create_payment(&crate::helpers::payment_body("rl-1", 100))
            .await,
    );
    // Another merchant has its own budget.
    for _ in 0..BURST {
        assert_eq!(list(&b).await.status, 200);
    }
    assert_limited(&list(&b).await);
    // Unauthenticated requests are refused by authentication, never counted for anyone.
    let r = crate::helpers::reply(app.get_raw("/v1/payments").await).await;
    assert_eq!(r.status, 401);
    // The budget refills at the configured rate.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(list(&a).await.status, 200);
}

#[tokio::test]
async fn two_nodes_share_one_budget_in_redis_and_keep_their_own_without_it() {
    let mut first = limited_app().await;
    let second_db = TestDb {
        url: first.db.url.clone(),
        dir: tempfile::tempdir().unwrap(),
    };
    // The same data directory (master key) and database; a port of its own.
    let second = spawn_with(second_db, test_config_on(&first.config)).await;
    let a1 = first.merchant("A").await;
    let a2 = MerchantClient {
        base: second.base.clone(),
        ..a1.clone()
    };
    let shared = first.config.redis_url.is_some();
    // Alternate between the nodes.
    for i in 0..BURST {
        let m = if i % 2 == 0 { &a1 } else { &a2 };
        assert_eq!(list(m).await.status, 200, "request {i}");
    }
    if shared {
        assert_limited(&list(&a1).await);
        assert_limited(&list(&a2).await);
    } else {
        // In-process limits: each node has its own budget, so together they let a second burst in.
        eprintln!("no PAYMUX_TEST_REDIS_URL: checking per-node budgets");
        let mut passed = 0;
        for m in [&a1, &a2] {
            loop {
                let r = list(m).await;
                if r.status != 200 {
                    assert_limited(&r);
                    break;
                }
                passed += 1;
                assert!(passed <= 2 * BURST);
            }
        }
        assert!(passed >= BURST, "{passed}");
    }
    first.stop().await;
}
