//! DESIGN.md §3 steps 5–7: what an authenticated client may ask for. Kratos is never called when
//! policy refuses.

use crate::support::*;

async fn refused_as(
    iris: &TestIris,
    kratos: &Kratos,
    client_id: &str,
    extra: &[(&str, &str)],
    error: &str,
) -> Answer {
    let before = kratos.calls();
    let answer = post_form(
        iris,
        &exchange_form(ALICE_TOKEN, extra),
        Auth::Basic(client_id, ORDERS_SECRET),
    )
    .await;
    answer.assert_error(400, error);
    assert_eq!(
        kratos.calls(),
        before,
        "Kratos must not be called when policy refuses"
    );
    answer
}

/// OA-6: a client whose grant_types lacks token exchange is unauthorized_client.
#[tokio::test]
async fn a_client_without_the_grant_is_unauthorized_client() {
    let (kratos, iris) = start_with_alice().await;
    refused_as(&iris, &kratos, "no-grant", &[], "unauthorized_client").await;
}

/// P-7: with require_first_party, a client without metadata.first_party is unauthorized_client.
#[tokio::test]
async fn a_third_party_client_is_unauthorized_client() {
    let (kratos, iris) = start_with_alice().await;
    let answer = refused_as(&iris, &kratos, "third-party", &[], "unauthorized_client").await;
    assert!(
        answer.json["error_description"]
            .as_str()
            .unwrap()
            .contains("first")
    );
}

/// Without require_first_party, a third-party client with the grant may exchange.
#[tokio::test]
async fn first_party_is_only_required_when_the_policy_says_so() {
    let kratos = Kratos::start().await;
    kratos.add_token(ALICE_TOKEN, Entry::Session(SessionRecord::alice()));
    let mut raw = config(&kratos);
    raw.policy.require_first_party = false;
    let iris = TestIris::start(raw).await;
    let answer = post_form(
        &iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Basic("third-party", ORDERS_SECRET),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    // The grant itself is still required.
    refused_as(&iris, &kratos, "no-grant", &[], "unauthorized_client").await;
}

/// P-8: a scope outside the client's scope is invalid_scope; the granted scope is what was asked.
#[tokio::test]
async fn a_scope_beyond_the_client_is_invalid_scope() {
    let (kratos, iris) = start_with_alice().await;
    let answer = refused_as(
        &iris,
        &kratos,
        "orders-service",
        &[("scope", "orders:read orders:write")],
        "invalid_scope",
    )
    .await;
    assert!(
        answer.json["error_description"]
            .as_str()
            .unwrap()
            .contains("orders:write")
    );
    let ok = exchange_as_orders(&iris, &[("scope", "orders:read")]).await;
    assert_eq!(ok.json["scope"], "orders:read");
}

/// RI-3, TX-21: an audience or resource outside the client's audience list is invalid_target.
#[tokio::test]
async fn a_target_outside_the_client_audience_is_invalid_target() {
    let (kratos, iris) = start_with_alice().await;
    refused_as(
        &iris,
        &kratos,
        "orders-service",
        &[("audience", "https://billing.example.com")],
        "invalid_target",
    )
    .await;
    refused_as(
        &iris,
        &kratos,
        "orders-service",
        &[("resource", "https://billing.example.com")],
        "invalid_target",
    )
    .await;
    // Exact match only: a sub-path or a prefix is not the same audience (Hydra would prefix-match).
    refused_as(
        &iris,
        &kratos,
        "orders-service",
        &[("audience", "https://orders.example.com/admin")],
        "invalid_target",
    )
    .await;
    refused_as(
        &iris,
        &kratos,
        "orders-service",
        &[("audience", "https://orders.example.co")],
        "invalid_target",
    )
    .await;
    // One bad target among good ones spoils the request (TX-10).
    refused_as(
        &iris,
        &kratos,
        "multi-aud",
        &[
            ("audience", ORDERS_API),
            ("resource", "https://evil.example.com"),
        ],
        "invalid_target",
    )
    .await;
}

/// Step 7: with no target requested, the client's only audience; with several, invalid_target.
#[tokio::test]
async fn without_a_target_the_single_audience_is_the_default() {
    let (kratos, iris) = start_with_alice().await;
    let answer = exchange_as_orders(&iris, &[]).await;
    let (_, claims) = jwt_parts(answer.json["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], serde_json::json!([ORDERS_API]));
    refused_as(&iris, &kratos, "multi-aud", &[], "invalid_target").await;
    let both = post_form(
        &iris,
        &exchange_form(
            ALICE_TOKEN,
            &[
                ("audience", ORDERS_API),
                ("resource", "https://billing.example.com"),
            ],
        ),
        Auth::Basic("multi-aud", ORDERS_SECRET),
    )
    .await;
    assert_eq!(both.status, 200, "{}", both.json);
    let (_, claims) = jwt_parts(both.json["access_token"].as_str().unwrap());
    assert_eq!(
        claims["aud"],
        serde_json::json!([ORDERS_API, "https://billing.example.com"])
    );
}

/// Steps run in order: an unauthorized client with a bad scope gets unauthorized_client first.
#[tokio::test]
async fn checks_run_in_the_stated_order() {
    let (kratos, iris) = start_with_alice().await;
    refused_as(
        &iris,
        &kratos,
        "no-grant",
        &[("scope", "admin"), ("audience", "https://x.example")],
        "unauthorized_client",
    )
    .await;
    refused_as(
        &iris,
        &kratos,
        "orders-service",
        &[("scope", "admin"), ("audience", "https://x.example")],
        "invalid_scope",
    )
    .await;
    // A malformed request beats a bad client: step 3 before step 4.
    let answer = post_form(
        &iris,
        &exchange_form(ALICE_TOKEN, &[("resource", "relative")]),
        Auth::Basic("orders-service", "wrong secret"),
    )
    .await;
    answer.assert_error(400, "invalid_target");
}
