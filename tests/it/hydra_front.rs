//! Iris in front of Hydra (DESIGN.md §4, §8; reference/hydra.md): pass-through, discovery and
//! JWKS, Hydra's clients, and forward mode. Hydra is the stand-in of tests/support/hydra.rs.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;

use crate::support::hydra::{Hydra, HydraClient};
use crate::support::*;
use iris::config::{HydraConfig, IssueMode, TOKEN_EXCHANGE_GRANT};

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const HYDRA_SECRET: &str = "hydra secret +%&:";

/// A Hydra client that may exchange sessions: first-party, both grants, the orders API.
fn exchanging(client: HydraClient) -> HydraClient {
    let mut client = client
        .with_grants(&[TOKEN_EXCHANGE_GRANT, JWT_BEARER, "client_credentials"])
        .with_scope("openid email orders:read")
        .with_audience(&[ORDERS_API]);
    client.metadata = json!({"first_party": true});
    client
}

struct Front {
    kratos: Kratos,
    hydra: Hydra,
    iris: TestIris,
}

/// Kratos with alice, Hydra with `hydra-basic`, `hydra-post` and `hydra-jwt` (private_key_jwt
/// with [`jwt_client_key`]), and Iris in front in `mode`.
async fn front(mode: IssueMode) -> Front {
    let kratos = Kratos::start().await;
    kratos.add_token(ALICE_TOKEN, Entry::Session(SessionRecord::alice()));
    let hydra = Hydra::start().await;
    hydra.add_client(exchanging(HydraClient::basic("hydra-basic", HYDRA_SECRET)));
    hydra.add_client(exchanging(HydraClient::post("hydra-post", HYDRA_SECRET)));
    let jwks = json!({"keys": [public_jwk(jwt_client_key())]});
    hydra.add_client(exchanging(HydraClient::private_key_jwt(
        "hydra-jwt",
        jwks,
        "ES256",
    )));
    let iris = TestIris::start(front_config(&kratos, &hydra, mode)).await;
    Front {
        kratos,
        hydra,
        iris,
    }
}

fn front_config(kratos: &Kratos, hydra: &Hydra, mode: IssueMode) -> iris::config::RawConfig {
    let mut raw = config(kratos);
    let mut section = HydraConfig {
        public_url: hydra.public_url(),
        admin_url: hydra.admin_url(),
        ..Default::default()
    };
    section.trust.scope = vec!["openid".into(), "email".into(), "orders:read".into()];
    section.timeout = iris::config::GoDuration(Duration::from_secs(2));
    raw.hydra = Some(section);
    raw.tokens.issue = mode;
    raw
}

fn hydra_assertion(front: &Front, claims: Value) -> String {
    // A client assertion's aud is the token endpoint the client discovered: Hydra's.
    client_assertion(
        jwt_client_key(),
        "hydra-jwt",
        &front.hydra.token_url(),
        claims,
    )
}

// === Pass-through ===

/// Method, path, query, headers and body reach Hydra unchanged, and Hydra's answer comes back.
#[tokio::test]
async fn pass_through_is_byte_identical() {
    let f = front(IssueMode::Synthesize).await;
    let body = b"a=1&b=%20&c=\xff\x00binary".to_vec();
    let response = http()
        .put(format!("{}/userinfo/x?b=2&a=%2F&a=1&empty=", f.iris.url()))
        .header("authorization", "Bearer ory_at_abc")
        .header("x-custom", "one")
        .header("x-custom", "two")
        .header("content-type", "application/octet-stream")
        .header("x-standin-status", "418")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let answer = answer(response).await;
    assert_eq!(
        answer.status, 418,
        "Hydra's status comes back: {}",
        answer.json
    );
    assert_eq!(answer.json["method"], "PUT");
    assert_eq!(answer.json["path"], "/userinfo/x");
    assert_eq!(answer.json["query"], "b=2&a=%2F&a=1&empty=");
    assert_eq!(
        answer.json["body_sha256"],
        hex(&sha2::Sha256::digest(&body))
    );
    let headers: Vec<(String, String)> =
        serde_json::from_value(answer.json["headers"].clone()).unwrap();
    let values = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("authorization"), ["Bearer ory_at_abc"]);
    assert_eq!(values("x-custom"), ["one", "two"]);
    assert_eq!(values("content-type"), ["application/octet-stream"]);
    assert_eq!(
        values("host"),
        [f.iris.addr.to_string().as_str()],
        "the client's Host is kept"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Multi-megabyte bodies stream both ways without corruption.
#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let f = front(IssueMode::Synthesize).await;
    let size = 8 * 1024 * 1024;
    let upload: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    let up = answer(
        http()
            .post(format!("{}/standin/upload", f.iris.url()))
            .body(upload.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(up.json["body_len"], size as u64);
    assert_eq!(up.json["body_sha256"], hex(&sha2::Sha256::digest(&upload)));
    let down = http()
        .get(format!("{}/standin/download?bytes={size}", f.iris.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 200);
    let bytes = down.bytes().await.unwrap();
    assert_eq!(bytes.len(), size);
    assert!(
        bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
        "downloaded bytes differ"
    );
}

/// Hop-by-hop headers are dropped; X-Forwarded-* are Iris's own, never the client's (BCP-7).
#[tokio::test]
async fn hop_by_hop_and_forwarding_headers_are_sanitised() {
    let f = front(IssueMode::Synthesize).await;
    let response = http()
        .get(format!("{}/userinfo", f.iris.url()))
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic eDp5")
        .header("te", "trailers")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=6.6.6.6;proto=https")
        .send()
        .await
        .unwrap();
    let echo = answer(response).await.json;
    let headers: Vec<(String, String)> = serde_json::from_value(echo["headers"].clone()).unwrap();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    for dropped in [
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "forwarded",
    ] {
        assert_eq!(value(dropped), None, "{dropped} must not reach Hydra");
    }
    assert_eq!(value("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(value("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(value("x-forwarded-host"), Some(f.iris.addr.to_string()));
    assert_eq!(
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-for"))
            .count(),
        1
    );
}

/// Paths under /admin get 404 from Iris and never reach Hydra.
#[tokio::test]
async fn admin_paths_are_never_forwarded() {
    let f = front(IssueMode::Synthesize).await;
    for path in [
        "/admin",
        "/admin/clients",
        "/admin/oauth2/introspect",
        "/admin/trust/grants/jwt-bearer/issuers",
    ] {
        assert_eq!(
            get(format!("{}{path}", f.iris.url())).await.status,
            404,
            "{path}"
        );
    }
    assert!(
        f.hydra
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/admin"))
    );
}

/// Other grants on /oauth2/token reach Hydra byte for byte, with Hydra's answer unchanged.
#[tokio::test]
async fn other_grants_pass_through_byte_for_byte() {
    let f = front(IssueMode::Synthesize).await;
    let body = "grant_type=client_credentials&scope=orders%3Aread&unknown=x&unknown=y";
    let response = http()
        .post(f.iris.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", basic("hydra-basic", HYDRA_SECRET))
        .body(body)
        .send()
        .await
        .unwrap();
    let passed = answer(response).await;
    assert_eq!(passed.status, 200, "{}", passed.json);
    assert_eq!(
        passed.json["token_type"], "bearer",
        "Hydra's own answer, not reshaped"
    );
    assert_eq!(
        passed.header("content-type"),
        Some("application/json;charset=UTF-8")
    );
    let seen = f.hydra.token_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].body_sha256,
        hex(&sha2::Sha256::digest(body.as_bytes()))
    );
    // A non-form or non-POST request to the token endpoint is Hydra's to answer.
    let json_post = http()
        .post(f.iris.token_url())
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let json_post = answer(json_post).await;
    assert_eq!(
        (json_post.status, json_post.error()),
        (400, "invalid_request")
    );
    assert_eq!(
        f.hydra.token_requests().len(),
        2,
        "the JSON POST went to Hydra"
    );
}

/// The token-exchange grant never reaches Hydra, whatever the outcome.
#[tokio::test]
async fn hydra_never_sees_a_token_exchange() {
    let f = front(IssueMode::Synthesize).await;
    let attempts: [&[(&str, &str)]; 4] = [
        &exchange_form(ALICE_TOKEN, &[]),
        &exchange_form("unknown", &[]),
        &exchange_form(ALICE_TOKEN, &[("resource", "relative")]),
        &[("grant_type", TOKEN_EXCHANGE_GRANT)],
    ];
    for pairs in attempts {
        let answer = post_form(&f.iris, pairs, Auth::Basic("orders-service", ORDERS_SECRET)).await;
        answer.assert_no_store();
    }
    let ambiguous = [(
        "grant_type",
        "client_credentials urn:ietf:params:oauth:grant-type:token-exchange",
    )];
    post_form(&f.iris, &ambiguous, Auth::None)
        .await
        .assert_error(400, "invalid_request");
    let twice = [
        ("grant_type", "client_credentials"),
        ("grant_type", TOKEN_EXCHANGE_GRANT),
    ];
    post_form(&f.iris, &twice, Auth::None)
        .await
        .assert_error(400, "invalid_request");
    assert!(!f.hydra.saw_token_exchange());
    assert!(f.hydra.token_requests().is_empty());
}

/// A real OAuth2 client library does client_credentials through Iris as if it were Hydra.
#[tokio::test]
async fn an_oauth2_library_does_client_credentials_through_iris() {
    use oauth2::{ClientId, ClientSecret, Scope, TokenResponse, TokenUrl, basic::BasicClient};
    let f = front(IssueMode::Synthesize).await;
    let client = BasicClient::new(ClientId::new("hydra-basic".into()))
        .set_client_secret(ClientSecret::new(HYDRA_SECRET.into()))
        .set_token_uri(TokenUrl::new(f.iris.token_url()).unwrap());
    let http_client = |request: oauth2::HttpRequest| async move {
        let (parts, body) = request.into_parts();
        let response = http()
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(std::io::Error::other)?;
        let mut builder = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let bytes = response.bytes().await.map_err(std::io::Error::other)?;
        builder.body(bytes.to_vec()).map_err(std::io::Error::other)
    };
    let token = client
        .exchange_client_credentials()
        .add_scope(Scope::new("orders:read".into()))
        .request_async(&http_client)
        .await
        .expect("client_credentials through Iris");
    let issued = f
        .hydra
        .issued_token(token.access_token().secret())
        .expect("Hydra issued it");
    assert_eq!(issued.client_id, "hydra-basic");
    assert_eq!(issued.grant_type, "client_credentials");
}

// === Discovery and JWKS ===

/// Both discovery documents are Hydra's plus the token-exchange grant; issuer byte for byte.
#[tokio::test]
async fn discovery_is_hydras_plus_the_grant() {
    let f = front(IssueMode::Synthesize).await;
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let theirs = get(format!("{}{path}", f.hydra.public_url())).await.json;
        let ours = get(format!("{}{path}", f.iris.url())).await.json;
        assert_eq!(ours["issuer"], theirs["issuer"]);
        let mut expected = theirs.clone();
        expected["grant_types_supported"]
            .as_array_mut()
            .unwrap()
            .push(json!(TOKEN_EXCHANGE_GRANT));
        assert_eq!(ours, expected, "{path}: every other member unchanged");
    }
}

/// The JWKS is Hydra's keys plus Iris's.
#[tokio::test]
async fn jwks_is_hydras_plus_iris() {
    let f = front(IssueMode::Synthesize).await;
    let ours = get(format!("{}/.well-known/jwks.json", f.iris.url()))
        .await
        .json;
    let kids: Vec<&str> = ours["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    for key in f.hydra.jwks()["keys"].as_array().unwrap() {
        assert!(
            kids.contains(&key["kid"].as_str().unwrap()),
            "Hydra's key missing"
        );
    }
    assert_eq!(
        kids.len(),
        f.hydra.jwks()["keys"].as_array().unwrap().len() + 1,
        "plus Iris's one key"
    );
    assert!(
        ours["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("d").is_none())
    );
}

/// Hydra down at start does not stop Iris; what needs Hydra says so; it recovers when Hydra returns.
#[tokio::test]
async fn hydra_down_at_start_is_survivable() {
    let kratos = Kratos::start().await;
    kratos.add_token(ALICE_TOKEN, Entry::Session(SessionRecord::alice()));
    let hydra = Hydra::start().await;
    hydra.add_client(exchanging(HydraClient::basic("hydra-basic", HYDRA_SECRET)));
    hydra.stop();
    let iris = TestIris::start(front_config(&kratos, &hydra, IssueMode::Synthesize)).await;
    assert_eq!(
        get(format!("{}/.well-known/openid-configuration", iris.url()))
            .await
            .status,
        502
    );
    assert_eq!(get(format!("{}/userinfo", iris.url())).await.status, 502);
    let cc = post_form(
        &iris,
        &[("grant_type", "client_credentials")],
        Auth::Basic("hydra-basic", HYDRA_SECRET),
    )
    .await;
    cc.assert_error(503, "temporarily_unavailable");
    assert!(cc.header("retry-after").is_some());
    exchange_as_orders(&iris, &[])
        .await
        .assert_error(503, "temporarily_unavailable");
    let ready = get(format!("http://{}/health/ready", iris.admin)).await;
    assert_eq!(ready.status, 503);
    assert!(ready.json["errors"]["hydra"].is_string(), "{}", ready.json);
    hydra.restart().await;
    assert_eq!(exchange_as_orders(&iris, &[]).await.status, 200);
    assert_eq!(
        get(format!("http://{}/health/ready", iris.admin))
            .await
            .status,
        200
    );
}

// === Hydra's clients in synthesize mode ===

/// A Hydra client with private_key_jwt exchanges in synthesize mode; the assertion's aud is
/// Hydra's token endpoint from discovery; Iris signs with Hydra's issuer by default.
#[tokio::test]
async fn a_hydra_private_key_jwt_client_exchanges_in_synthesize_mode() {
    let f = front(IssueMode::Synthesize).await;
    let assertion = hydra_assertion(&f, json!({}));
    let pairs = exchange_form(
        ALICE_TOKEN,
        &[
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &assertion),
        ],
    );
    let answer = post_form(&f.iris, &pairs, Auth::None).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    let (_, claims) = jwt_parts(answer.json["access_token"].as_str().unwrap());
    assert_eq!(claims["client_id"], "hydra-jwt");
    assert_eq!(
        claims["iss"],
        f.hydra.issuer(),
        "issuer defaults to Hydra's"
    );
    assert_eq!(f.kratos.calls(), 1);
    // Replayed: Iris keeps the jti.
    post_form(&f.iris, &pairs, Auth::None)
        .await
        .assert_error(401, "invalid_client");
}

/// A Hydra client whose keys are at a jwks_uri is verified with the fetched keys.
#[tokio::test]
async fn a_hydra_client_with_a_jwks_uri_is_verified_with_the_fetched_keys() {
    let f = front(IssueMode::Synthesize).await;
    let jwks_server = StaticJson::serve(json!({"keys": [public_jwk(jwt_client_key())]})).await;
    add_uri_client(&f, &jwks_server);
    let assertion = client_assertion(
        jwt_client_key(),
        "uri-client",
        &f.hydra.token_url(),
        json!({}),
    );
    let pairs = exchange_form(
        ALICE_TOKEN,
        &[
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &assertion),
        ],
    );
    assert_eq!(post_form(&f.iris, &pairs, Auth::None).await.status, 200);
    let stranger = iris::keys::generate("ES256", Some("jwt-client-key")).unwrap();
    let forged = client_assertion(&stranger, "uri-client", &f.hydra.token_url(), json!({}));
    let pairs = exchange_form(
        ALICE_TOKEN,
        &[
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &forged),
        ],
    );
    post_form(&f.iris, &pairs, Auth::None)
        .await
        .assert_error(401, "invalid_client");
}

/// An exchange as `client_id` with a fresh private_key_jwt assertion (its own jti).
async fn exchange_with_assertion(f: &Front, client_id: &str) -> Answer {
    let assertion = client_assertion(jwt_client_key(), client_id, &f.hydra.token_url(), json!({}));
    let pairs = exchange_form(
        ALICE_TOKEN,
        &[
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &assertion),
        ],
    );
    post_form(&f.iris, &pairs, Auth::None).await
}

/// `exchange_with_assertion` `count` times at once; every answer's status.
async fn concurrent_exchanges(
    f: &std::sync::Arc<Front>,
    client_id: &str,
    count: usize,
) -> Vec<u16> {
    let exchanges: Vec<_> = (0..count)
        .map(|_| {
            let f = f.clone();
            let client_id = client_id.to_owned();
            tokio::spawn(async move { exchange_with_assertion(&f, &client_id).await.status })
        })
        .collect();
    let mut statuses = Vec::with_capacity(count);
    for exchange in exchanges {
        statuses.push(exchange.await.unwrap());
    }
    statuses
}

/// Issue #6: concurrent exchanges by one Hydra client share one `GET /admin/clients/{id}`, and
/// the record is then reused for `hydra.client_cache_ttl` (30 s by default).
#[tokio::test]
async fn concurrent_exchanges_of_one_hydra_client_make_one_client_lookup() {
    let f = std::sync::Arc::new(front(IssueMode::Synthesize).await);
    // Slow enough that all 50 arrive while the first lookup is in flight.
    f.hydra.set_client_lookup_delay(Duration::from_secs(1));
    let statuses = concurrent_exchanges(&f, "hydra-jwt", 50).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(f.hydra.client_lookups("hydra-jwt"), 1);
    assert_eq!(exchange_with_assertion(&f, "hydra-jwt").await.status, 200);
    assert_eq!(f.hydra.client_lookups("hydra-jwt"), 1, "cached");
}

/// Issue #6: a client lookup that failed (Hydra down) is not cached; the next exchange looks the
/// client up again and succeeds. 503, never a credential error (DESIGN.md §5).
#[tokio::test]
async fn a_failed_client_lookup_is_not_cached() {
    let f = front(IssueMode::Synthesize).await;
    // Discovery and Hydra's keys are fetched while Hydra is up; only the new client's lookup fails.
    assert_eq!(exchange_with_assertion(&f, "hydra-jwt").await.status, 200);
    let jwks = json!({"keys": [public_jwk(jwt_client_key())]});
    f.hydra.add_client(exchanging(HydraClient::private_key_jwt(
        "late-jwt", jwks, "ES256",
    )));
    f.hydra.stop();
    exchange_with_assertion(&f, "late-jwt")
        .await
        .assert_error(503, "temporarily_unavailable");
    f.hydra.restart().await;
    assert_eq!(exchange_with_assertion(&f, "late-jwt").await.status, 200);
    assert_eq!(f.hydra.client_lookups("late-jwt"), 1);
}

/// A Hydra client whose keys are at a jwks_uri, `uri-client`, served by `jwks_server`.
fn add_uri_client(f: &Front, jwks_server: &StaticJson) {
    let mut client = exchanging(HydraClient::new("uri-client"));
    client.token_endpoint_auth_method = "private_key_jwt".into();
    client.token_endpoint_auth_signing_alg = "ES256".into();
    client.jwks_uri = jwks_server.url.clone();
    f.hydra.add_client(client);
}

/// Issue #6: concurrent assertions of a client with a jwks_uri share one fetch of its keys, which
/// are then reused for `hydra.metadata_cache_ttl` (60 s by default).
#[tokio::test]
async fn concurrent_assertions_fetch_a_jwks_uri_once() {
    let f = std::sync::Arc::new(front(IssueMode::Synthesize).await);
    let jwks = json!({"keys": [public_jwk(jwt_client_key())]});
    let jwks_server = StaticJson::start(jwks, Duration::from_secs(1), 0).await;
    add_uri_client(&f, &jwks_server);
    let statuses = concurrent_exchanges(&f, "uri-client", 30).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(jwks_server.served(), 1);
    assert_eq!(exchange_with_assertion(&f, "uri-client").await.status, 200);
    assert_eq!(jwks_server.served(), 1, "cached");
}

/// Issue #6: a jwks_uri that failed is not cached: the next assertion fetches the keys again.
#[tokio::test]
async fn a_failed_jwks_uri_fetch_is_not_cached() {
    let f = front(IssueMode::Synthesize).await;
    let jwks = json!({"keys": [public_jwk(jwt_client_key())]});
    let jwks_server = StaticJson::start(jwks, Duration::ZERO, 1).await;
    add_uri_client(&f, &jwks_server);
    exchange_with_assertion(&f, "uri-client")
        .await
        .assert_error(503, "temporarily_unavailable");
    assert_eq!(exchange_with_assertion(&f, "uri-client").await.status, 200);
    assert_eq!(jwks_server.served(), 2);
}

/// In synthesize mode a Hydra client with a secret is invalid_client, and the description says
/// what to do instead (Hydra never reveals secrets).
#[tokio::test]
async fn a_hydra_secret_client_in_synthesize_mode_is_told_what_to_do() {
    let f = front(IssueMode::Synthesize).await;
    let answer = post_form(
        &f.iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Basic("hydra-basic", HYDRA_SECRET),
    )
    .await;
    answer.assert_error(401, "invalid_client");
    let description = answer.json["error_description"].as_str().unwrap();
    assert!(
        description.contains("forward") && description.contains("static"),
        "{description}"
    );
    assert_eq!(f.kratos.calls(), 0);
}

/// A static client wins over Hydra's client of the same id.
#[tokio::test]
async fn static_clients_win_over_hydra_clients() {
    let f = front(IssueMode::Synthesize).await;
    // Hydra's `orders-service` has another secret and no exchange grant.
    f.hydra
        .add_client(HydraClient::basic("orders-service", "hydras own secret"));
    assert_eq!(exchange_as_orders(&f.iris, &[]).await.status, 200);
}

/// Hydra's policy fields apply: grant_types, metadata.first_party, scope, audience.
#[tokio::test]
async fn hydra_client_records_drive_policy() {
    let f = front(IssueMode::Synthesize).await;
    let jwks = json!({"keys": [public_jwk(jwt_client_key())]});
    let mut third = exchanging(HydraClient::private_key_jwt("third", jwks.clone(), "ES256"));
    third.metadata = json!({});
    f.hydra.add_client(third);
    let no_grant =
        HydraClient::private_key_jwt("no-grant-jwt", jwks, "ES256").with_audience(&[ORDERS_API]);
    f.hydra.add_client(no_grant);
    let try_as = |id: &'static str, extra: Vec<(&'static str, &'static str)>| {
        let assertion = client_assertion(jwt_client_key(), id, &f.hydra.token_url(), json!({}));
        let iris = &f.iris;
        async move {
            let mut pairs: Vec<(&str, &str)> = exchange_form(ALICE_TOKEN, &extra);
            pairs.push(("client_assertion_type", ASSERTION_TYPE));
            pairs.push(("client_assertion", &assertion));
            post_form(iris, &pairs, Auth::None).await
        }
    };
    try_as("third", vec![])
        .await
        .assert_error(400, "unauthorized_client");
    try_as("no-grant-jwt", vec![])
        .await
        .assert_error(400, "unauthorized_client");
    try_as("hydra-jwt", vec![("scope", "admin")])
        .await
        .assert_error(400, "invalid_scope");
    try_as(
        "hydra-jwt",
        vec![("audience", "https://orders.example.com/sub")],
    )
    .await
    .assert_error(400, "invalid_target");
    assert_eq!(f.kratos.calls(), 0);
}

// === Forward mode ===

/// Forward mode with client_secret_basic: Hydra issues the token for the identity with the
/// requested audience; Iris reshapes the answer and signs the ID token; no refresh token.
#[tokio::test]
async fn forward_mode_with_basic() {
    let f = front(IssueMode::Forward).await;
    let answer = post_form(
        &f.iris,
        &exchange_form(
            ALICE_TOKEN,
            &[
                ("scope", "openid email orders:read"),
                ("audience", ORDERS_API),
            ],
        ),
        Auth::Basic("hydra-basic", HYDRA_SECRET),
    )
    .await;
    assert_forwarded(&f, &answer, "hydra-basic");
    // The caller's Authorization header reached Hydra unchanged.
    let seen = f.hydra.token_requests();
    assert_eq!(
        seen.last().unwrap().header("authorization"),
        Some(basic("hydra-basic", HYDRA_SECRET).as_str())
    );
}

/// Forward mode with client_secret_post: the body credentials travel to Hydra unchanged.
#[tokio::test]
async fn forward_mode_with_post() {
    let f = front(IssueMode::Forward).await;
    let answer = post_form(
        &f.iris,
        &exchange_form(ALICE_TOKEN, &[("scope", "openid email orders:read")]),
        Auth::Post("hydra-post", HYDRA_SECRET),
    )
    .await;
    assert_forwarded(&f, &answer, "hydra-post");
    let seen = f.hydra.token_requests();
    let last = seen.last().unwrap();
    assert_eq!(last.form_value("client_id"), Some("hydra-post"));
    assert_eq!(last.form_value("client_secret"), Some(HYDRA_SECRET));
}

/// Forward mode with private_key_jwt: the client's assertion goes to Hydra, which checks it.
#[tokio::test]
async fn forward_mode_with_private_key_jwt() {
    let f = front(IssueMode::Forward).await;
    let assertion = hydra_assertion(&f, json!({}));
    let pairs = exchange_form(
        ALICE_TOKEN,
        &[
            ("scope", "openid email orders:read"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &assertion),
        ],
    );
    let answer = post_form(&f.iris, &pairs, Auth::None).await;
    assert_forwarded(&f, &answer, "hydra-jwt");
    let seen = f.hydra.token_requests();
    assert_eq!(
        seen.last().unwrap().form_value("client_assertion"),
        Some(assertion.as_str())
    );
}

fn assert_forwarded(f: &Front, answer: &Answer, client_id: &str) {
    assert_eq!(answer.status, 200, "{}", answer.json);
    answer.assert_no_store();
    assert_eq!(
        answer.json["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(answer.json["token_type"], "Bearer");
    assert_eq!(answer.json["scope"], "openid email orders:read");
    assert!(answer.json.get("refresh_token").is_none());
    let access_token = answer.json["access_token"].as_str().unwrap();
    let issued = f
        .hydra
        .issued_token(access_token)
        .expect("the access token is Hydra's");
    assert_eq!(issued.grant_type, JWT_BEARER);
    assert_eq!(issued.client_id, client_id);
    assert_eq!(
        issued.subject, "5ff66179-c240-4703-b0d8-494592cefff5",
        "sub is the Kratos identity"
    );
    assert!(
        issued.audience.contains(&ORDERS_API.to_owned()),
        "{:?}",
        issued.audience
    );
    let introspection = f.hydra.introspect(access_token);
    assert_eq!(
        introspection["active"], true,
        "Hydra knows the token: introspection works"
    );
    // The ID token is Iris's, for the client, with at_hash over Hydra's token.
    let (header, claims) = jwt_parts(answer.json["id_token"].as_str().unwrap());
    assert_eq!(header["typ"], "JWT");
    assert_eq!(claims["aud"], client_id);
    assert_eq!(claims["email"], "alice@example.com");
    let digest = sha2::Sha256::digest(access_token.as_bytes());
    use base64::Engine;
    assert_eq!(
        claims["at_hash"],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
    );
    // Iris's assertion: aud is only Hydra's discovery token_endpoint; sub the identity.
    let request = f.hydra.token_requests().into_iter().last().unwrap();
    let (_, assertion) = jwt_parts(request.form_value("assertion").unwrap());
    assert_eq!(assertion["aud"], f.hydra.token_url());
    assert_eq!(assertion["sub"], "5ff66179-c240-4703-b0d8-494592cefff5");
    assert!(assertion["exp"].as_u64().unwrap() - assertion["iat"].as_u64().unwrap() <= 300);
    assert!(!f.hydra.saw_token_exchange());
}

/// Iris registers its trust relationship at start with its first signing key; an Iris with the
/// same key finds it and registers nothing; a rotated key gets a new relationship (new kid).
#[tokio::test]
async fn forward_mode_registers_the_trust_relationship_once_per_key() {
    let kratos = Kratos::start().await;
    kratos.add_token(ALICE_TOKEN, Entry::Session(SessionRecord::alice()));
    let hydra = Hydra::start().await;
    hydra.add_client(exchanging(HydraClient::basic("hydra-basic", HYDRA_SECRET)));
    let dir = tempfile::tempdir().unwrap();
    let key_file = |name: &str, kid: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            iris::keys::generate("ES256", Some(kid))
                .unwrap()
                .to_string(),
        )
        .unwrap();
        iris::config::KeyFileConfig { path }
    };
    let first = key_file("first.jwk", "iris-1");
    let mut raw = front_config(&kratos, &hydra, IssueMode::Forward);
    raw.signing.keys = vec![first.clone()];
    let exchange = |iris: &TestIris| {
        let pairs = exchange_form(ALICE_TOKEN, &[]);
        let url = iris.token_url();
        async move {
            let body = serde_urlencoded::to_string(&pairs).unwrap();
            http()
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", basic("hydra-basic", HYDRA_SECRET))
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let iris = TestIris::start(raw.clone()).await;
    assert_eq!(exchange(&iris).await, 200);
    iris.stop().await;
    let grants = hydra.trust_grants();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0].key_id, "iris-1");
    assert!(grants[0].allow_any_subject);
    assert_eq!(
        grants[0].issuer,
        hydra.issuer(),
        "the trust issuer defaults to Iris's issuer: Hydra's"
    );
    assert_eq!(grants[0].scope, ["openid", "email", "orders:read"]);
    let posts = hydra.trust_posts();
    // Same key: found, not registered again.
    let iris = TestIris::start(raw.clone()).await;
    assert_eq!(exchange(&iris).await, 200);
    iris.stop().await;
    assert_eq!(hydra.trust_posts(), posts);
    // Rotation: the new first key gets its own relationship; the old one stays published.
    raw.signing.keys = vec![key_file("second.jwk", "iris-2"), first];
    let iris = TestIris::start(raw).await;
    assert_eq!(exchange(&iris).await, 200);
    let kids: Vec<String> = hydra
        .trust_grants()
        .iter()
        .map(|g| g.key_id.clone())
        .collect();
    assert_eq!(kids, ["iris-1", "iris-2"]);
}

/// Two exchanges carry two different assertion jtis (Hydra burns each one).
#[tokio::test]
async fn every_forwarded_exchange_has_a_fresh_jti() {
    let f = front(IssueMode::Forward).await;
    for _ in 0..2 {
        let answer = post_form(
            &f.iris,
            &exchange_form(ALICE_TOKEN, &[]),
            Auth::Basic("hydra-basic", HYDRA_SECRET),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.json);
    }
    let jtis: Vec<String> = f
        .hydra
        .token_requests()
        .iter()
        .map(|r| {
            jwt_parts(r.form_value("assertion").unwrap()).1["jti"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(jtis.len(), 2);
    assert_ne!(jtis[0], jtis[1]);
}

/// Hydra's refusals are relayed with their status: a wrong secret is 401 invalid_client (with
/// Iris's Basic challenge); a scope the trust relationship lacks is invalid_scope.
#[tokio::test]
async fn hydras_errors_are_relayed() {
    let f = front(IssueMode::Forward).await;
    let wrong = post_form(
        &f.iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Basic("hydra-basic", "wrong"),
    )
    .await;
    wrong.assert_error(401, "invalid_client");
    assert_eq!(
        wrong.header("www-authenticate"),
        Some("Basic realm=\"iris\"")
    );
    let post_wrong = post_form(
        &f.iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Post("hydra-post", "wrong"),
    )
    .await;
    post_wrong.assert_error(401, "invalid_client");
    assert!(post_wrong.header("www-authenticate").is_none());
    // `profile` is the client's but not the trust relationship's.
    let mut client = exchanging(HydraClient::basic("profiled", HYDRA_SECRET));
    client.scope = "openid profile".into();
    f.hydra.add_client(client);
    let scoped = post_form(
        &f.iris,
        &exchange_form(ALICE_TOKEN, &[("scope", "profile")]),
        Auth::Basic("profiled", HYDRA_SECRET),
    )
    .await;
    scoped.assert_error(400, "invalid_scope");
    // A client without the jwt-bearer grant at Hydra is unauthorized_client.
    let mut no_bearer = exchanging(HydraClient::basic("no-bearer", HYDRA_SECRET));
    no_bearer.grant_types = vec![TOKEN_EXCHANGE_GRANT.into()];
    f.hydra.add_client(no_bearer);
    post_form(
        &f.iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Basic("no-bearer", HYDRA_SECRET),
    )
    .await
    .assert_error(400, "unauthorized_client");
    assert!(!f.hydra.saw_token_exchange());
}

/// Hydra rejecting Iris's own assertion is Iris's misconfiguration: 500 server_error.
#[tokio::test]
async fn hydra_rejecting_irises_assertion_is_a_server_error() {
    let f = front(IssueMode::Forward).await;
    assert_eq!(
        post_form(
            &f.iris,
            &exchange_form(ALICE_TOKEN, &[]),
            Auth::Basic("hydra-basic", HYDRA_SECRET)
        )
        .await
        .status,
        200
    );
    // Hydra now believes another issuer: every assertion's aud is wrong.
    f.hydra.set_issuer("https://elsewhere.example.com/");
    let answer = post_form(
        &f.iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Basic("hydra-basic", HYDRA_SECRET),
    )
    .await;
    answer.assert_error(500, "server_error");
}

/// requested_token_type id_token in forward mode: Iris signs it; Hydra is not asked.
#[tokio::test]
async fn forward_mode_id_token_is_irises() {
    let f = front(IssueMode::Forward).await;
    let answer = post_form(
        &f.iris,
        &exchange_form(
            ALICE_TOKEN,
            &[(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:id_token",
            )],
        ),
        Auth::Basic("hydra-basic", HYDRA_SECRET),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["token_type"], "N_A");
    assert!(f.hydra.token_requests().is_empty());
}

/// Forward mode with Hydra down: 503 temporarily_unavailable, never a credential error.
#[tokio::test]
async fn forward_mode_with_hydra_down_is_503() {
    let f = front(IssueMode::Forward).await;
    assert_eq!(
        post_form(
            &f.iris,
            &exchange_form(ALICE_TOKEN, &[]),
            Auth::Basic("hydra-basic", HYDRA_SECRET)
        )
        .await
        .status,
        200
    );
    f.hydra.stop();
    post_form(
        &f.iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Basic("hydra-basic", HYDRA_SECRET),
    )
    .await
    .assert_error(503, "temporarily_unavailable");
}

/// A tiny server that answers every GET with one JSON document (a client's jwks_uri), after
/// `delay`, and with 503 to its first `failures` requests; it counts what it served.
struct StaticJson {
    url: String,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl StaticJson {
    async fn serve(document: Value) -> StaticJson {
        Self::start(document, Duration::ZERO, 0).await
    }

    async fn start(document: Value, delay: Duration, failures: usize) -> StaticJson {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let body = bytes::Bytes::from(document.to_string());
        let served = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let body = body.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let body = body.clone();
                        let nth = counter.fetch_add(1, Ordering::SeqCst);
                        async move {
                            tokio::time::sleep(delay).await;
                            let mut response =
                                hyper::Response::new(http_body_util::Full::new(body));
                            if nth < failures {
                                *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            }
                            response
                                .headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        StaticJson { url, served }
    }

    fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Discovery and JWKS are refreshed after metadata_cache_ttl; while Hydra is down, the last copy
/// is served (and exchanges keep their issuer) instead of failing.
#[tokio::test]
async fn a_stale_copy_serves_while_hydra_is_down() {
    let kratos = Kratos::start().await;
    kratos.add_token(ALICE_TOKEN, Entry::Session(SessionRecord::alice()));
    let hydra = Hydra::start().await;
    let mut raw = front_config(&kratos, &hydra, IssueMode::Synthesize);
    raw.hydra.as_mut().unwrap().metadata_cache_ttl =
        iris::config::GoDuration(Duration::from_millis(50));
    let iris = TestIris::start(raw).await;
    let fresh = get(format!("{}/.well-known/openid-configuration", iris.url())).await;
    assert_eq!(fresh.status, 200);
    // Refreshed: Hydra's new issuer shows once the TTL has passed.
    hydra.set_issuer("https://auth.example.com/");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refreshed = get(format!("{}/.well-known/openid-configuration", iris.url())).await;
    assert_eq!(refreshed.json["issuer"], "https://auth.example.com/");
    hydra.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stale = get(format!("{}/.well-known/openid-configuration", iris.url())).await;
    assert_eq!(
        (stale.status, &stale.json["issuer"]),
        (200, &json!("https://auth.example.com/"))
    );
    let answer = exchange_as_orders(&iris, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    let (_, claims) = jwt_parts(answer.json["access_token"].as_str().unwrap());
    assert_eq!(claims["iss"], "https://auth.example.com/");
}

/// The request id and traceparent reach Hydra too: on forward mode's jwt-bearer call and on
/// pass-through (where Iris adds the id it made when the caller sent none).
#[tokio::test]
async fn request_ids_reach_hydra() {
    let f = front(IssueMode::Forward).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let body = serde_urlencoded::to_string(exchange_form(ALICE_TOKEN, &[])).unwrap();
    let response = http()
        .post(f.iris.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", basic("hydra-basic", HYDRA_SECRET))
        .header("x-request-id", "req-7")
        .header("traceparent", traceparent)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let grant = f.hydra.token_requests().into_iter().last().unwrap();
    assert_eq!(grant.header("x-request-id"), Some("req-7"));
    assert_eq!(grant.header("traceparent"), Some(traceparent));
    let response = http()
        .get(format!("{}/userinfo", f.iris.url()))
        .send()
        .await
        .unwrap();
    let made = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let seen = f.hydra.requests().into_iter().last().unwrap();
    assert_eq!(seen.header("x-request-id"), Some(made.as_str()));
}

/// A request's future is moved whole on its way into hyper's connection, so it stays small:
/// each route's future is boxed on its own (handlers::dispatch). It is 968 bytes; with dispatch
/// an `async fn` it was 2 464 (and the connection's future around it 21 KB in a release build).
#[tokio::test]
async fn a_requests_future_stays_small() {
    let kratos = Kratos::start().await;
    let hydra = Hydra::start().await;
    let raw = front_config(&kratos, &hydra, IssueMode::Synthesize);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = raw.validate().expect("valid test configuration");
    let app = std::sync::Arc::new(iris::App::build(&settings, addr).expect("iris builds"));
    let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let server = {
        let (app, sizes) = (app.clone(), sizes.clone());
        tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |request| {
                let (app, sizes) = (app.clone(), sizes.clone());
                async move {
                    let peer = iris::server::Peer::new(peer, None);
                    let routed = iris::handlers::public(&app, request, peer);
                    sizes.lock().unwrap().push(std::mem::size_of_val(&routed));
                    Ok::<_, std::convert::Infallible>(routed.await)
                }
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
                .unwrap();
        })
    };
    let client = http();
    let base = format!("http://{addr}");
    let passed = client
        .get(format!("{base}/health/alive"))
        .send()
        .await
        .unwrap();
    assert_eq!(passed.status(), 200, "passed through to Hydra");
    let exchange = client
        .post(format!("{base}/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_ne!(exchange.status(), 500);
    drop(client);
    server.await.unwrap();
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes.len(), 2, "both requests reached Iris");
    for size in sizes {
        assert!(size <= 2048, "a request's future is {size} bytes");
    }
}
