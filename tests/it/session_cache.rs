//! Protecting Kratos: concurrent exchanges of one session share one whoami call, and the optional
//! positive cache (`kratos.cache_ttl`) never outlives the session, Kratos's
//! `Ory-Session-Cache-For`, or its own TTL; failures are never kept (reference/kratos.md §e).

use std::time::{Duration, SystemTime};

use crate::support::*;
use iris::config::GoDuration;

async fn with_cache(ttl: Duration) -> (Kratos, TestIris) {
    let kratos = Kratos::start().await;
    kratos.add_token(ALICE_TOKEN, Entry::Session(SessionRecord::alice()));
    let mut raw = config(&kratos);
    raw.kratos.cache_ttl = GoDuration(ttl);
    (kratos.clone(), TestIris::start(raw).await)
}

/// 100 concurrent exchanges of one cold session make exactly one whoami call (no cache needed).
#[tokio::test]
async fn concurrent_exchanges_share_one_whoami_call() {
    let kratos = Kratos::start().await;
    let mut slow = SessionRecord::alice();
    // Slow enough that all 100 arrive while the first call is in flight.
    slow.delay = Duration::from_secs(3);
    kratos.add_token(ALICE_TOKEN, Entry::Session(slow));
    let mut raw = config(&kratos);
    raw.kratos.timeout = GoDuration(Duration::from_secs(10));
    let iris = TestIris::start(raw).await;
    let iris = std::sync::Arc::new(iris);
    let exchanges: Vec<_> = (0..100)
        .map(|_| {
            let iris = iris.clone();
            tokio::spawn(async move { exchange_as_orders(&iris, &[]).await.status })
        })
        .collect();
    for exchange in exchanges {
        assert_eq!(exchange.await.unwrap(), 200);
    }
    assert_eq!(kratos.calls(), 1);
    // With the cache off, a later exchange asks Kratos again.
    assert_eq!(exchange_as_orders(&iris, &[]).await.status, 200);
    assert_eq!(kratos.calls(), 2);
}

/// With kratos.cache_ttl, a session is reused.
#[tokio::test]
async fn the_cache_reuses_a_session() {
    let (kratos, iris) = with_cache(Duration::from_secs(60)).await;
    for _ in 0..3 {
        assert_eq!(exchange_as_orders(&iris, &[]).await.status, 200);
    }
    assert_eq!(kratos.calls(), 1);
}

/// A cached session is never used past its expires_at.
#[tokio::test]
async fn the_cache_ends_with_the_session() {
    let kratos = Kratos::start().await;
    let mut short = SessionRecord::alice();
    short.expires_at = SystemTime::now() + Duration::from_secs(2);
    kratos.add_token(ALICE_TOKEN, Entry::Session(short));
    let mut raw = config(&kratos);
    raw.kratos.cache_ttl = GoDuration(Duration::from_secs(60));
    let iris = TestIris::start(raw).await;
    assert_eq!(exchange_as_orders(&iris, &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    exchange_as_orders(&iris, &[])
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(
        kratos.calls(),
        2,
        "Kratos was asked again once the session ended"
    );
}

/// Kratos's Ory-Session-Cache-For caps the reuse.
#[tokio::test]
async fn the_cache_obeys_ory_session_cache_for() {
    let (kratos, iris) = with_cache(Duration::from_secs(60)).await;
    kratos.set_cacheable_sessions(Some(1));
    assert_eq!(exchange_as_orders(&iris, &[]).await.status, 200);
    assert_eq!(exchange_as_orders(&iris, &[]).await.status, 200);
    assert_eq!(kratos.calls(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(exchange_as_orders(&iris, &[]).await.status, 200);
    assert_eq!(kratos.calls(), 2);
}

/// Neither a 401 nor a 5xx is cached.
#[tokio::test]
async fn failures_are_never_cached() {
    let (kratos, iris) = with_cache(Duration::from_secs(60)).await;
    kratos.add_token("broken", Entry::Fault(Fault::Status(500)));
    for _ in 0..2 {
        post_form(
            &iris,
            &exchange_form("ory_st_unknown", &[]),
            Auth::Basic("orders-service", ORDERS_SECRET),
        )
        .await
        .assert_error(400, "invalid_request");
        post_form(
            &iris,
            &exchange_form("broken", &[]),
            Auth::Basic("orders-service", ORDERS_SECRET),
        )
        .await
        .assert_error(503, "temporarily_unavailable");
    }
    assert_eq!(kratos.calls(), 4);
}

/// A revoked session is accepted at most until the cache TTL, then refused.
#[tokio::test]
async fn a_revoked_session_is_refused_after_the_cache_ttl() {
    let (kratos, iris) = with_cache(Duration::from_secs(1)).await;
    assert_eq!(exchange_as_orders(&iris, &[]).await.status, 200);
    let mut revoked = SessionRecord::alice();
    revoked.active = false;
    kratos.add_token(ALICE_TOKEN, Entry::Session(revoked));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    exchange_as_orders(&iris, &[])
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(kratos.calls(), 2);
}
