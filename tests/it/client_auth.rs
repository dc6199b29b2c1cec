//! DESIGN.md §3 step 4: client authentication (RFC 6749 §2.3, RFC 7523 §2.2). Kratos is never
//! called for an unauthenticated client.

use serde_json::json;

use crate::support::*;
use iris::config::AuthMethod;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

async fn with_assertion(iris: &TestIris, assertion: &str) -> Answer {
    let pairs = exchange_form(
        ALICE_TOKEN,
        &[
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
        ],
    );
    post_form(iris, &pairs, Auth::None).await
}

fn assert_basic_challenge(answer: &Answer) {
    assert_eq!(
        answer.header("www-authenticate"),
        Some("Basic realm=\"iris\"")
    );
}

/// OA-5: client_secret_basic with id and secret form-urlencoded before base64; ` +%&:` survive.
#[tokio::test]
async fn basic_with_a_secret_full_of_reserved_characters_works() {
    let (_kratos, iris) = start_with_alice().await;
    assert!(ORDERS_SECRET.contains(" +%&:"));
    let answer = exchange_as_orders(&iris, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert!(answer.header("www-authenticate").is_none());
}

/// OA-8: a wrong Basic secret is 401 invalid_client with WWW-Authenticate: Basic realm="iris".
#[tokio::test]
async fn a_wrong_basic_secret_is_401_with_a_challenge() {
    let (kratos, iris) = start_with_alice().await;
    let answer = post_form(
        &iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Basic("orders-service", "wrong"),
    )
    .await;
    answer.assert_error(401, "invalid_client");
    assert_basic_challenge(&answer);
    // An unknown client looks the same as a wrong secret.
    let unknown = post_form(
        &iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Basic("nobody", ORDERS_SECRET),
    )
    .await;
    unknown.assert_error(401, "invalid_client");
    assert_basic_challenge(&unknown);
    assert_eq!(
        unknown.json["error_description"],
        answer.json["error_description"]
    );
    assert_eq!(kratos.calls(), 0);
}

/// OA-5: the secret must be form-urlencoded; the raw secret's `+` decodes to a space and fails.
#[tokio::test]
async fn an_unencoded_basic_secret_fails() {
    use base64::Engine;
    let (_kratos, iris) = start_with_alice().await;
    let raw = format!("orders-service:{ORDERS_SECRET}");
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    );
    let answer = post_form(
        &iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Header(&header),
    )
    .await;
    answer.assert_error(401, "invalid_client");
    assert_basic_challenge(&answer);
}

/// A malformed or non-Basic Authorization header is 401 invalid_client with the challenge.
#[tokio::test]
async fn a_malformed_authorization_header_is_401() {
    let (kratos, iris) = start_with_alice().await;
    for header in ["Basic !!!notbase64", "Bearer abc", "Basic"] {
        let answer = post_form(
            &iris,
            &exchange_form(ALICE_TOKEN, &[]),
            Auth::Header(header),
        )
        .await;
        answer.assert_error(401, "invalid_client");
        assert_basic_challenge(&answer);
    }
    assert_eq!(kratos.calls(), 0);
}

/// client_secret_post works; a wrong secret is 401 without a Basic challenge.
#[tokio::test]
async fn client_secret_post_works_and_fails_without_a_challenge() {
    let (_kratos, iris) = start_with_alice().await;
    let ok = post_form(
        &iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Post("post-client", POST_SECRET),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    let wrong = post_form(
        &iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Post("post-client", "nope"),
    )
    .await;
    wrong.assert_error(401, "invalid_client");
    assert!(wrong.header("www-authenticate").is_none());
}

/// A client registered for one method cannot authenticate with another.
#[tokio::test]
async fn the_registered_method_is_enforced() {
    let (_kratos, iris) = start_with_alice().await;
    let basic_client_posting = post_form(
        &iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Post("orders-service", ORDERS_SECRET),
    )
    .await;
    basic_client_posting.assert_error(401, "invalid_client");
    let post_client_basic = post_form(
        &iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Basic("post-client", POST_SECRET),
    )
    .await;
    post_client_basic.assert_error(401, "invalid_client");
    assert_basic_challenge(&post_client_basic);
}

/// OA-5: two authentication methods in one request are invalid_request.
#[tokio::test]
async fn two_methods_in_one_request_are_invalid_request() {
    let (kratos, iris) = start_with_alice().await;
    let pairs = exchange_form(
        ALICE_TOKEN,
        &[
            ("client_id", "orders-service"),
            ("client_secret", ORDERS_SECRET),
        ],
    );
    post_form(&iris, &pairs, Auth::Basic("orders-service", ORDERS_SECRET))
        .await
        .assert_error(400, "invalid_request");
    let assertion = client_assertion(jwt_client_key(), "jwt-client", &iris.token_url(), json!({}));
    let pairs = exchange_form(
        ALICE_TOKEN,
        &[
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &assertion),
        ],
    );
    post_form(&iris, &pairs, Auth::Post("post-client", POST_SECRET))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(kratos.calls(), 0);
}

/// TX-12: no client authentication at all is 401 invalid_client (no anonymous exchange).
#[tokio::test]
async fn no_credentials_is_invalid_client() {
    let (kratos, iris) = start_with_alice().await;
    let answer = post_form(
        &iris,
        &exchange_form(ALICE_TOKEN, &[("client_id", "orders-service")]),
        Auth::None,
    )
    .await;
    answer.assert_error(401, "invalid_client");
    assert!(answer.header("www-authenticate").is_none());
    assert_eq!(kratos.calls(), 0);
}

/// A plaintext secret works only when allow_plaintext_secrets is set.
#[tokio::test]
async fn a_plaintext_secret_works_when_allowed() {
    let kratos = Kratos::start().await;
    kratos.add_token(ALICE_TOKEN, Entry::Session(SessionRecord::alice()));
    let mut raw = config(&kratos);
    let mut plain = client("plain", AuthMethod::ClientSecretBasic);
    plain.client_secret = Some("plain secret".into());
    raw.clients.push(plain);
    assert!(
        raw.validate().is_err(),
        "refused without allow_plaintext_secrets"
    );
    raw.allow_plaintext_secrets = true;
    let iris = TestIris::start(raw).await;
    assert_eq!(
        post_form(
            &iris,
            &exchange_form(ALICE_TOKEN, &[]),
            Auth::Basic("plain", "plain secret")
        )
        .await
        .status,
        200
    );
    post_form(
        &iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Basic("plain", "plain secreT"),
    )
    .await
    .assert_error(401, "invalid_client");
}

/// RFC 7523 §3: a valid private_key_jwt assertion authenticates the client.
#[tokio::test]
async fn private_key_jwt_works() {
    let (_kratos, iris) = start_with_alice().await;
    let assertion = client_assertion(jwt_client_key(), "jwt-client", &iris.token_url(), json!({}));
    let answer = with_assertion(&iris, &assertion).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    let (_, claims) = jwt_parts(answer.json["access_token"].as_str().unwrap());
    assert_eq!(claims["client_id"], "jwt-client");
    // client_id in the body may accompany the assertion when it matches.
    let assertion = client_assertion(jwt_client_key(), "jwt-client", &iris.token_url(), json!({}));
    let pairs = exchange_form(
        ALICE_TOKEN,
        &[
            ("client_id", "jwt-client"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &assertion),
        ],
    );
    assert_eq!(post_form(&iris, &pairs, Auth::None).await.status, 200);
}

/// RFC 7523 §3: jti is single-use within the assertion's lifetime.
#[tokio::test]
async fn a_replayed_assertion_is_invalid_client() {
    let (kratos, iris) = start_with_alice().await;
    let assertion = client_assertion(
        jwt_client_key(),
        "jwt-client",
        &iris.token_url(),
        json!({"jti": "once"}),
    );
    assert_eq!(with_assertion(&iris, &assertion).await.status, 200);
    let replay = with_assertion(&iris, &assertion).await;
    replay.assert_error(401, "invalid_client");
    assert!(
        replay.json["error_description"]
            .as_str()
            .unwrap()
            .contains("jti")
    );
    assert_eq!(kratos.calls(), 1);
}

/// RFC 7523 §3: iss = sub = client_id, aud = the token endpoint, exp and jti required, no expired
/// assertion, the registered alg only (never none or HMAC), the client's own key only.
#[tokio::test]
async fn invalid_assertions_are_invalid_client() {
    let (kratos, iris) = start_with_alice().await;
    let key = jwt_client_key();
    let token_url = iris.token_url();
    let past = now() - 10;
    let cases = [
        (
            "aud is the issuer",
            json!({"aud": format!("{}/", iris.url())}),
        ),
        (
            "aud is another server",
            json!({"aud": "https://hydra.example.com/oauth2/token"}),
        ),
        ("no aud", json!({"aud": null})),
        ("no exp", json!({"exp": null})),
        ("expired", json!({"exp": past, "iat": past - 60})),
        ("no jti", json!({"jti": null})),
        ("sub is not the client", json!({"sub": "someone-else"})),
    ];
    for (why, claims) in cases {
        let assertion = client_assertion(key, "jwt-client", &token_url, claims);
        let answer = with_assertion(&iris, &assertion).await;
        assert_eq!(
            (answer.status, answer.error()),
            (401, "invalid_client"),
            "{why}: {}",
            answer.json
        );
        answer.assert_no_store();
    }
    // Signed by a key that is not the client's.
    let stranger = iris::keys::generate("ES256", Some("jwt-client-key")).unwrap();
    let forged = client_assertion(&stranger, "jwt-client", &token_url, json!({}));
    with_assertion(&iris, &forged)
        .await
        .assert_error(401, "invalid_client");
    // A client registered for ES256 cannot use EdDSA, even with a key of its own kid.
    let ed = iris::keys::generate("EdDSA", Some("jwt-client-key")).unwrap();
    with_assertion(
        &iris,
        &client_assertion(&ed, "jwt-client", &token_url, json!({})),
    )
    .await
    .assert_error(401, "invalid_client");
    // alg none and HS256 (keyed with the public key, the classic confusion) are refused.
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims = json!({"iss": "jwt-client", "sub": "jwt-client", "aud": token_url, "exp": now() + 60, "jti": "n"});
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims.clone())
    );
    with_assertion(&iris, &none)
        .await
        .assert_error(401, "invalid_client");
    let x = public_jwk(key)["x"].as_str().unwrap().to_owned();
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()).unwrap(),
    )
    .unwrap();
    with_assertion(&iris, &hs)
        .await
        .assert_error(401, "invalid_client");
    // A wrong assertion type, or garbage, is invalid_client too.
    let assertion = client_assertion(key, "jwt-client", &token_url, json!({}));
    let pairs = exchange_form(
        ALICE_TOKEN,
        &[
            ("client_assertion_type", "urn:x:saml"),
            ("client_assertion", &assertion),
        ],
    );
    post_form(&iris, &pairs, Auth::None)
        .await
        .assert_error(401, "invalid_client");
    with_assertion(&iris, "not.a.jwt")
        .await
        .assert_error(401, "invalid_client");
    assert_eq!(kratos.calls(), 0);
}

/// A secret client cannot authenticate with an assertion, and a JWT client has no secret.
#[tokio::test]
async fn methods_do_not_cross_between_secret_and_jwt_clients() {
    let (_kratos, iris) = start_with_alice().await;
    let stranger = iris::keys::generate("ES256", None).unwrap();
    let assertion = client_assertion(&stranger, "orders-service", &iris.token_url(), json!({}));
    with_assertion(&iris, &assertion)
        .await
        .assert_error(401, "invalid_client");
    post_form(
        &iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Basic("jwt-client", "anything"),
    )
    .await
    .assert_error(401, "invalid_client");
}
