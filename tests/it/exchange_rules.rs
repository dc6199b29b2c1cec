//! DESIGN.md §3 steps 1–3: the request itself. Kratos is never called when one of them fails.

use crate::support::*;
use iris::config::TOKEN_EXCHANGE_GRANT;

/// A well-formed exchange by a first-party client gets 200 and one whoami call with the token.
#[tokio::test]
async fn a_valid_exchange_succeeds() {
    let (kratos, iris) = start_with_alice().await;
    let answer = exchange_as_orders(&iris, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    answer.assert_no_store();
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.json["token_type"], "Bearer");
    assert_eq!(
        answer.json["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(kratos.calls(), 1);
    assert_eq!(
        kratos.call_log()[0].session_token.as_deref(),
        Some(ALICE_TOKEN)
    );
    iris.stop().await;
}

/// Runs `pairs` as orders-service and asserts the error, and that Kratos was not asked.
async fn refused(
    iris: &TestIris,
    kratos: &Kratos,
    pairs: &[(&str, &str)],
    status: u16,
    error: &str,
) -> Answer {
    let before = kratos.calls();
    let answer = post_form(iris, pairs, Auth::Basic("orders-service", ORDERS_SECRET)).await;
    answer.assert_error(status, error);
    assert_eq!(
        kratos.calls(),
        before,
        "Kratos must not be called when step {error} fails"
    );
    answer
}

/// OA-1: the token endpoint takes POST only.
#[tokio::test]
async fn a_get_is_invalid_request() {
    let (kratos, iris) = start_with_alice().await;
    let answer = get(iris.token_url()).await;
    answer.assert_error(400, "invalid_request");
    assert_eq!(kratos.calls(), 0);
}

/// OA-2: the body must be application/x-www-form-urlencoded (parameters such as charset allowed).
#[tokio::test]
async fn a_json_body_is_invalid_request() {
    let (kratos, iris) = start_with_alice().await;
    let json =
        serde_json::json!({"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token": ALICE_TOKEN})
            .to_string();
    let answer = answer(
        http()
            .post(iris.token_url())
            .header("content-type", "application/json")
            .header("authorization", basic("orders-service", ORDERS_SECRET))
            .body(json)
            .send()
            .await
            .unwrap(),
    )
    .await;
    answer.assert_error(400, "invalid_request");
    let body = serde_urlencoded::to_string(exchange_form(ALICE_TOKEN, &[])).unwrap();
    let with_charset = http()
        .post(iris.token_url())
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .header("authorization", basic("orders-service", ORDERS_SECRET))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(with_charset.status(), 200);
    assert_eq!(kratos.calls(), 1);
}

/// Step 1: a body over serve.public.max_body_bytes (64 KiB) is 413 invalid_request.
#[tokio::test]
async fn an_oversized_body_is_413() {
    let (kratos, iris) = start_with_alice().await;
    let padding = "x".repeat(64 * 1024);
    let answer = refused(
        &iris,
        &kratos,
        &exchange_form(ALICE_TOKEN, &[("padding", &padding)]),
        413,
        "invalid_request",
    )
    .await;
    assert!(
        answer.json["error_description"]
            .as_str()
            .unwrap()
            .contains("65536")
    );
    // Just under the limit is read.
    let fits = "x".repeat(60 * 1024);
    assert_eq!(
        exchange_as_orders(&iris, &[("padding", &fits)])
            .await
            .status,
        200
    );
}

/// OA-4: a parameter sent twice is invalid_request.
#[tokio::test]
async fn a_repeated_parameter_is_invalid_request() {
    let (kratos, iris) = start_with_alice().await;
    for name in [
        "scope",
        "subject_token",
        "subject_token_type",
        "requested_token_type",
        "grant_type",
        "client_id",
    ] {
        let mut pairs = exchange_form(ALICE_TOKEN, &[]);
        match pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v) {
            Some(value) => pairs.push((name, value)),
            None => pairs.extend([(name, "orders-service"), (name, "orders-service")]),
        }
        let answer = refused(&iris, &kratos, &pairs, 400, "invalid_request").await;
        let description = answer.json["error_description"].as_str().unwrap();
        assert!(description.contains(name), "{name}: {description}");
    }
}

/// OA-4, TX-7, TX-8: audience and resource repeat; unknown parameters are ignored even when repeated.
#[tokio::test]
async fn audience_resource_and_unknown_parameters_may_repeat() {
    let (_kratos, iris) = start_with_alice().await;
    let answer = exchange_as_orders(
        &iris,
        &[
            ("audience", ORDERS_API),
            ("audience", ORDERS_API),
            ("resource", ORDERS_API),
            ("foo", "1"),
            ("foo", "2"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
}

/// OA-4: an empty value counts as absent.
#[tokio::test]
async fn an_empty_value_counts_as_absent() {
    let (kratos, iris) = start_with_alice().await;
    let answer = refused(
        &iris,
        &kratos,
        &exchange_form("", &[]),
        400,
        "invalid_request",
    )
    .await;
    assert!(
        answer.json["error_description"]
            .as_str()
            .unwrap()
            .contains("subject_token")
    );
    // Empty optional parameters change nothing: no scope granted, the default audience.
    let answer = exchange_as_orders(
        &iris,
        &[
            ("scope", ""),
            ("audience", ""),
            ("requested_token_type", ""),
            ("actor_token", ""),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert!(
        answer.json.get("scope").is_none(),
        "no scope requested means none granted"
    );
}

/// TX-2, TX-3: subject_token and subject_token_type are required.
#[tokio::test]
async fn subject_token_and_type_are_required() {
    let (kratos, iris) = start_with_alice().await;
    let without_token = [
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("subject_token_type", SESSION_TYPE),
    ];
    let answer = refused(&iris, &kratos, &without_token, 400, "invalid_request").await;
    assert!(
        answer.json["error_description"]
            .as_str()
            .unwrap()
            .contains("subject_token")
    );
    let without_type = [
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("subject_token", ALICE_TOKEN),
    ];
    let answer = refused(&iris, &kratos, &without_type, 400, "invalid_request").await;
    assert!(
        answer.json["error_description"]
            .as_str()
            .unwrap()
            .contains("subject_token_type")
    );
}

/// TX-5: actor_token and actor_token_type come together.
#[tokio::test]
async fn an_actor_token_without_its_type_or_the_reverse_is_invalid_request() {
    let (kratos, iris) = start_with_alice().await;
    refused(
        &iris,
        &kratos,
        &exchange_form(ALICE_TOKEN, &[("actor_token", "a")]),
        400,
        "invalid_request",
    )
    .await;
    refused(
        &iris,
        &kratos,
        &exchange_form(ALICE_TOKEN, &[("actor_token_type", SESSION_TYPE)]),
        400,
        "invalid_request",
    )
    .await;
}

/// Until delegation is built, a complete actor pair is refused, never silently ignored.
#[tokio::test]
async fn a_complete_actor_pair_is_refused() {
    let (kratos, iris) = start_with_alice().await;
    let pairs = exchange_form(
        ALICE_TOKEN,
        &[("actor_token", "a"), ("actor_token_type", SESSION_TYPE)],
    );
    let answer = refused(&iris, &kratos, &pairs, 400, "invalid_request").await;
    assert_eq!(
        answer.json["error_description"],
        "actor tokens are not supported"
    );
}

/// TX-3: a subject token type Iris does not resolve is invalid_request.
#[tokio::test]
async fn an_unsupported_subject_token_type_is_invalid_request() {
    let (kratos, iris) = start_with_alice().await;
    let pairs = [
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("subject_token", ALICE_TOKEN),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
    ];
    refused(&iris, &kratos, &pairs, 400, "invalid_request").await;
}

/// TX-6: an unsupported requested_token_type is invalid_request.
#[tokio::test]
async fn an_unsupported_requested_token_type_is_invalid_request() {
    let (kratos, iris) = start_with_alice().await;
    let pairs = exchange_form(
        ALICE_TOKEN,
        &[(
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:refresh_token",
        )],
    );
    refused(&iris, &kratos, &pairs, 400, "invalid_request").await;
}

/// RI-1: a resource must be an absolute URI without a fragment, else invalid_target.
#[tokio::test]
async fn a_relative_or_fragment_resource_is_invalid_target() {
    let (kratos, iris) = start_with_alice().await;
    for resource in ["orders", "/orders", "https://orders.example.com/#frag"] {
        refused(
            &iris,
            &kratos,
            &exchange_form(ALICE_TOKEN, &[("resource", resource)]),
            400,
            "invalid_target",
        )
        .await;
    }
}

/// Standalone, a grant other than token exchange is unsupported_grant_type; Kratos is not asked.
#[tokio::test]
async fn another_grant_standalone_is_unsupported_grant_type() {
    let (kratos, iris) = start_with_alice().await;
    let pairs = [
        ("grant_type", "client_credentials"),
        ("scope", "a"),
        ("scope", "b"),
    ];
    refused(&iris, &kratos, &pairs, 400, "unsupported_grant_type").await;
    refused(
        &iris,
        &kratos,
        &[("subject_token", ALICE_TOKEN)],
        400,
        "invalid_request",
    )
    .await;
}

/// Paths Iris does not serve are 404 with Ory's error envelope; the admin port reports alive.
#[tokio::test]
async fn unknown_paths_are_404_and_health_is_alive() {
    let (_kratos, iris) = start_with_alice().await;
    let missing = answer(
        http()
            .get(format!("{}/nope", iris.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json["error"]["code"], 404);
    let alive = get(format!("http://{}/health/alive", iris.admin)).await;
    assert_eq!(
        (alive.status, alive.json["status"].as_str()),
        (200, Some("ok"))
    );
}

/// The public listener speaks HTTP/2 (prior knowledge) as well as HTTP/1.1.
#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let (_kratos, iris) = start_with_alice().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let body = serde_urlencoded::to_string(exchange_form(ALICE_TOKEN, &[])).unwrap();
    let response = h2
        .post(iris.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", basic("orders-service", ORDERS_SECRET))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
}

/// The raw HTTP/1.1 exchange request alice's orders-service sends.
fn raw_exchange_request(iris: &TestIris) -> String {
    let body = serde_urlencoded::to_string(exchange_form(ALICE_TOKEN, &[])).unwrap();
    format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        iris.addr,
        basic("orders-service", ORDERS_SECRET),
        body.len()
    )
}

/// A request whose first byte arrives alone (it could still be the HTTP/2 preface's "P") is
/// served once the rest arrives: the protocol is decided on more bytes, none of them lost.
#[tokio::test]
async fn a_request_whose_first_byte_arrives_alone_is_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_kratos, iris) = start_with_alice().await;
    let request = raw_exchange_request(&iris);
    let mut stream = tokio::net::TcpStream::connect(iris.addr).await.unwrap();
    stream.write_all(&request.as_bytes()[..1]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stream.write_all(&request.as_bytes()[1..]).await.unwrap();
    let mut response = vec![0u8; 16];
    // Hang guard only.
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_exact(&mut response),
    )
    .await
    .expect("no answer")
    .unwrap();
    assert_eq!(
        &response[..12],
        b"HTTP/1.1 200",
        "{:?}",
        String::from_utf8_lossy(&response)
    );
}

/// A client that closes its sending side right after its request (a TCP half-close) still
/// gets its answer.
#[tokio::test]
async fn a_client_that_half_closes_after_its_request_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_kratos, iris) = start_with_alice().await;
    let mut stream = tokio::net::TcpStream::connect(iris.addr).await.unwrap();
    stream
        .write_all(raw_exchange_request(&iris).as_bytes())
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut response = Vec::new();
    // Hang guard only.
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut response),
    )
    .await
    .expect("no answer")
    .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("access_token"), "{text}");
}

/// A body that never arrives completely is answered (400 invalid_request), not waited on forever.
#[tokio::test]
async fn a_trickled_body_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (kratos, iris) = start_with_alice().await;
    let mut stream = tokio::net::TcpStream::connect(iris.addr).await.unwrap();
    let head = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type",
        iris.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // Hang guard only: the server's own body timeout must answer first.
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut response),
    )
    .await;
    let text = String::from_utf8_lossy(&response);
    assert!(
        read.is_ok(),
        "Iris kept the connection open without answering"
    );
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains("invalid_request") && text.contains("no-store"),
        "{text}"
    );
    assert_eq!(kratos.calls(), 0);
}
