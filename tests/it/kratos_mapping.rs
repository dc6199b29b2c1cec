//! DESIGN.md §3 step 8 and §8: how each Kratos answer maps to the exchange's answer
//! (reference/kratos.md §a, P-6, TX-20).

use std::time::{Duration, SystemTime};

use crate::support::*;
use iris::config::Aal;

async fn exchange_token(iris: &TestIris, token: &str) -> Answer {
    post_form(
        iris,
        &exchange_form(token, &[]),
        Auth::Basic("orders-service", ORDERS_SECRET),
    )
    .await
}

async fn with_entry(entry: Entry) -> (Kratos, TestIris) {
    let kratos = Kratos::start().await;
    kratos.add_token("t", entry);
    let iris = TestIris::start(config(&kratos)).await;
    (kratos, iris)
}

fn assert_unavailable(answer: &Answer) {
    answer.assert_error(503, "temporarily_unavailable");
    let retry_after = answer.header("retry-after").expect("Retry-After on 503");
    assert!(
        retry_after.parse::<u64>().is_ok(),
        "Retry-After is delta-seconds: {retry_after}"
    );
}

/// TX-20: Kratos's 401 (no error.id) is invalid_request, never invalid_grant.
#[tokio::test]
async fn an_unknown_session_token_is_invalid_request() {
    let (kratos, iris) = start_with_alice().await;
    let answer = exchange_token(&iris, "ory_st_unknownunknownunknownunknown1").await;
    answer.assert_error(400, "invalid_request");
    assert_eq!(kratos.calls(), 1);
}

/// A revoked session (Kratos answers 401) is invalid_request.
#[tokio::test]
async fn a_revoked_session_is_invalid_request() {
    let mut session = SessionRecord::alice();
    session.active = false;
    let (_kratos, iris) = with_entry(Entry::Session(session)).await;
    exchange_token(&iris, "t")
        .await
        .assert_error(400, "invalid_request");
}

/// An expired session (Kratos answers 401) is invalid_request.
#[tokio::test]
async fn an_expired_session_is_invalid_request() {
    let mut session = SessionRecord::alice();
    session.expires_at = SystemTime::now() - Duration::from_secs(1);
    let (_kratos, iris) = with_entry(Entry::Session(session)).await;
    exchange_token(&iris, "t")
        .await
        .assert_error(400, "invalid_request");
}

/// An inactive identity (Kratos answers the same generic 401) is invalid_request.
#[tokio::test]
async fn an_inactive_identity_is_invalid_request() {
    let mut session = SessionRecord::alice();
    session.identity_state = "inactive";
    let (_kratos, iris) = with_entry(Entry::Session(session)).await;
    exchange_token(&iris, "t")
        .await
        .assert_error(400, "invalid_request");
}

/// Kratos's 403 session_aal2_required is invalid_request saying a second factor is needed.
#[tokio::test]
async fn aal2_required_at_kratos_is_invalid_request_asking_for_a_second_factor() {
    let mut session = SessionRecord::alice();
    session.has_second_factor = true;
    let (_kratos, iris) = with_entry(Entry::Session(session)).await;
    let answer = exchange_token(&iris, "t").await;
    answer.assert_error(400, "invalid_request");
    assert!(
        answer.json["error_description"]
            .as_str()
            .unwrap()
            .contains("second factor"),
        "{}",
        answer.json
    );
}

/// policy.required_aal: aal2 refuses an AAL1 session and accepts an AAL2 one.
#[tokio::test]
async fn required_aal_is_enforced() {
    let kratos = Kratos::start().await;
    kratos.add_token("aal1", Entry::Session(SessionRecord::alice()));
    let mut strong = SessionRecord::alice();
    strong.aal = "aal2";
    strong.methods = vec!["password", "totp"];
    kratos.add_token("aal2", Entry::Session(strong));
    let mut raw = config(&kratos);
    raw.policy.required_aal = Aal::Aal2;
    let iris = TestIris::start(raw).await;
    let weak = exchange_token(&iris, "aal1").await;
    weak.assert_error(400, "invalid_request");
    assert!(
        weak.json["error_description"]
            .as_str()
            .unwrap()
            .contains("aal2")
    );
    let ok = exchange_token(&iris, "aal2").await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    let (_, claims) = jwt_parts(ok.json["access_token"].as_str().unwrap());
    assert_eq!(claims["acr"], "aal2");
    assert_eq!(claims["amr"], serde_json::json!(["password", "totp"]));
}

/// P-6: Kratos 5xx is 503 temporarily_unavailable with Retry-After, never a credential error.
#[tokio::test]
async fn a_kratos_5xx_is_503() {
    for status in [500, 502, 503] {
        let (_kratos, iris) = with_entry(Entry::Fault(Fault::Status(status))).await;
        assert_unavailable(&exchange_token(&iris, "t").await);
    }
}

/// P-6: Kratos 429 is 503 with Kratos's own Retry-After (oathkeeper#1167 turned it into a 401).
#[tokio::test]
async fn a_kratos_429_is_503_with_its_retry_after() {
    let (_kratos, iris) = with_entry(Entry::Fault(Fault::TooManyRequests(7))).await;
    let answer = exchange_token(&iris, "t").await;
    assert_unavailable(&answer);
    assert_eq!(answer.header("retry-after"), Some("7"));
}

/// DESIGN.md §8: anything but 200, 401 or 403 (a 400, a 404) is an upstream fault.
#[tokio::test]
async fn a_kratos_400_or_404_is_503() {
    for status in [400, 404] {
        let (_kratos, iris) = with_entry(Entry::Fault(Fault::Status(status))).await;
        assert_unavailable(&exchange_token(&iris, "t").await);
    }
}

/// DESIGN.md §8: a 200 that is not a session is an upstream fault.
#[tokio::test]
async fn a_non_json_200_is_503() {
    let (_kratos, iris) = with_entry(Entry::Fault(Fault::NotJson)).await;
    assert_unavailable(&exchange_token(&iris, "t").await);
}

/// kratos.timeout: a whoami slower than the timeout is 503, not a hang.
#[tokio::test]
async fn a_slow_kratos_is_503() {
    let (_kratos, iris) = with_entry(Entry::Fault(Fault::Delay(Duration::from_secs(3)))).await;
    assert_unavailable(&exchange_token(&iris, "t").await);
}

/// An unreachable Kratos is 503.
#[tokio::test]
async fn an_unreachable_kratos_is_503() {
    let kratos = Kratos::start().await;
    let mut raw = config(&kratos);
    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    raw.kratos.public_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let iris = TestIris::start(raw).await;
    assert_unavailable(&exchange_token(&iris, ALICE_TOKEN).await);
}

/// Failures are never cached: once Kratos recovers, the next exchange asks it again and succeeds.
#[tokio::test]
async fn failures_are_not_cached() {
    let (kratos, iris) = with_entry(Entry::Fault(Fault::Status(500))).await;
    assert_unavailable(&exchange_token(&iris, "t").await);
    kratos.add_token("t", Entry::Session(SessionRecord::alice()));
    assert_eq!(exchange_token(&iris, "t").await.status, 200);
    assert_eq!(kratos.calls(), 2);
    // The same for a 401: a session created after a refusal is accepted.
    exchange_token(&iris, "later")
        .await
        .assert_error(400, "invalid_request");
    kratos.add_token("later", Entry::Session(SessionRecord::alice()));
    assert_eq!(exchange_token(&iris, "later").await.status, 200);
    assert_eq!(kratos.calls(), 4);
}

/// The session token types reach Kratos as X-Session-Token, the cookie type as the session cookie.
#[tokio::test]
async fn each_subject_token_type_reaches_kratos_its_way() {
    let (kratos, iris) = start_with_alice().await;
    let cookie_value = "MTcxMDkyOTYwMHxhYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODk";
    kratos.add_cookie(cookie_value, Entry::Session(SessionRecord::alice()));
    let iris_type = [(
        "subject_token_type",
        "urn:x-iris:token-type:kratos-session-token",
    )];
    let mut pairs = exchange_form(ALICE_TOKEN, &[]);
    pairs.retain(|(k, _)| *k != "subject_token_type");
    pairs.extend_from_slice(&iris_type);
    assert_eq!(
        post_form(&iris, &pairs, Auth::Basic("orders-service", ORDERS_SECRET))
            .await
            .status,
        200
    );
    let mut pairs = exchange_form(cookie_value, &[]);
    pairs.retain(|(k, _)| *k != "subject_token_type");
    pairs.push(("subject_token_type", COOKIE_TYPE));
    assert_eq!(
        post_form(&iris, &pairs, Auth::Basic("orders-service", ORDERS_SECRET))
            .await
            .status,
        200
    );
    let calls = kratos.call_log();
    assert_eq!(calls[0].session_token.as_deref(), Some(ALICE_TOKEN));
    assert!(
        calls[0].cookie.is_none() && calls[0].authorization.is_none(),
        "exactly one credential"
    );
    assert_eq!(
        calls[1].cookie.as_deref(),
        Some(format!("ory_kratos_session={cookie_value}").as_str())
    );
    assert!(calls[1].session_token.is_none() && calls[1].authorization.is_none());
}

/// kratos.session_cookie names the cookie; kratos.session_token_types replaces the defaults.
#[tokio::test]
async fn cookie_name_and_token_types_are_configurable() {
    let kratos = Kratos::start_with_cookie("ory_session_acme").await;
    kratos.add_cookie("c", Entry::Session(SessionRecord::alice()));
    kratos.add_token(ALICE_TOKEN, Entry::Session(SessionRecord::alice()));
    let mut raw = config(&kratos);
    raw.kratos.session_cookie = "ory_session_acme".into();
    raw.kratos.session_token_types = vec!["urn:acme:kratos-token".into()];
    let iris = TestIris::start(raw).await;
    let pairs = [
        ("grant_type", iris::config::TOKEN_EXCHANGE_GRANT),
        ("subject_token", "c"),
        ("subject_token_type", COOKIE_TYPE),
    ];
    assert_eq!(
        post_form(&iris, &pairs, Auth::Basic("orders-service", ORDERS_SECRET))
            .await
            .status,
        200
    );
    let custom = [
        ("grant_type", iris::config::TOKEN_EXCHANGE_GRANT),
        ("subject_token", ALICE_TOKEN),
        ("subject_token_type", "urn:acme:kratos-token"),
    ];
    assert_eq!(
        post_form(&iris, &custom, Auth::Basic("orders-service", ORDERS_SECRET))
            .await
            .status,
        200
    );
    // The default type is no longer accepted once replaced.
    exchange_token(&iris, ALICE_TOKEN)
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(kratos.calls(), 2);
}

/// A subject token that cannot travel as a header (CR/LF) is invalid_request; Kratos is not asked.
#[tokio::test]
async fn an_unsendable_subject_token_is_invalid_request() {
    let (kratos, iris) = start_with_alice().await;
    exchange_token(&iris, "ory_st_x\r\nX-Injected: 1")
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(kratos.calls(), 0);
}

/// A cookie subject token that is not an RFC 6265 cookie value (a `;` smuggling more cookies)
/// is invalid_request, and Kratos is not asked.
#[tokio::test]
async fn a_cookie_value_smuggling_cookies_is_invalid_request() {
    let (kratos, iris) = start_with_alice().await;
    let pairs = [
        ("grant_type", iris::config::TOKEN_EXCHANGE_GRANT),
        ("subject_token", "x; ory_kratos_session=other; csrf=1"),
        ("subject_token_type", COOKIE_TYPE),
    ];
    post_form(&iris, &pairs, Auth::Basic("orders-service", ORDERS_SECRET))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(kratos.calls(), 0);
}
