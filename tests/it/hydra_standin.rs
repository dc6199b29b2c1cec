//! The Hydra v26.2.0 stand-in (tests/support/hydra.rs) checked against the rules of
//! reference/hydra.md that it implements.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::hydra::*;
use crate::support::{Answer, answer, basic, get as get_url, http, now, public_jwk};

/// Every character RFC 6749 App. B must survive.
const SECRET: &str = "s3 +%&:cret/é";
const API: &str = "https://orders.example.com";
/// The issuer of jwt-bearer assertions (Iris, in production).
const ISSUER: &str = "https://iris.example.com";
const FAR: &str = "2100-01-01T00:00:00Z";

/// A stand-in with `basic-client` (basic, client_credentials + jwt-bearer, audience [`API`],
/// jwt-bearer lifespan 30m) and `post-client` (post, client_credentials only).
async fn start() -> Hydra {
    let hydra = Hydra::start().await;
    let mut client = HydraClient::basic("basic-client", SECRET)
        .with_grants(&["client_credentials", JWT_BEARER_GRANT])
        .with_scope("openid offline orders:read")
        .with_audience(&[API]);
    client.jwt_bearer_grant_access_token_lifespan = Some(Duration::from_secs(1800));
    hydra.add_client(client);
    hydra.add_client(
        HydraClient::post("post-client", "post-secret")
            .with_grants(&["client_credentials"])
            .with_scope("orders:read"),
    );
    hydra
}

/// POSTs a form to the token endpoint with an optional Authorization header.
async fn token(hydra: &Hydra, pairs: &[(&str, &str)], authorization: Option<&str>) -> Answer {
    let mut request = http()
        .post(hydra.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(pairs).unwrap());
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    answer(request.send().await.expect("request")).await
}

/// `Basic base64(id:secret)` without form-encoding.
fn raw_basic(id: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

const CC: (&str, &str) = ("grant_type", "client_credentials");

fn es256(kid: &str) -> Value {
    iris::keys::generate("ES256", Some(kid)).unwrap()
}

/// A JWT signed with `key` (its kid in the header unless `with_kid` is false).
fn sign(key: &Value, claims: &Value, with_kid: bool) -> String {
    let signing = iris::keys::from_private_jwk(key).unwrap();
    let mut header = jsonwebtoken::Header::new(signing.alg);
    if with_kid {
        header.kid = Some(signing.kid.clone());
    }
    jsonwebtoken::encode(&header, claims, &signing.encoding).unwrap()
}

/// Valid jwt-bearer claims for alice from [`ISSUER`], with `overrides` merged (null removes).
fn claims(hydra: &Hydra, overrides: Value) -> Value {
    let now = now();
    let mut claims = json!({
        "iss": ISSUER, "sub": "alice", "aud": hydra.token_url(),
        "iat": now, "exp": now + 60, "jti": format!("jti-{}", rand::random::<u64>()),
    });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

/// Trusts `key` for (`ISSUER`, `alice`) with these scopes.
fn trust_alice(hydra: &Hydra, key: &Value, scope: &[&str]) -> Value {
    hydra
        .trust(&json!({
            "issuer": ISSUER, "subject": "alice", "scope": scope,
            "jwk": public_jwk(key), "expires_at": FAR,
        }))
        .unwrap()
}

/// A jwt-bearer request as `basic-client`.
async fn bearer(hydra: &Hydra, assertion: &str, extra: &[(&str, &str)]) -> Answer {
    let mut pairs = vec![("grant_type", JWT_BEARER_GRANT), ("assertion", assertion)];
    pairs.extend_from_slice(extra);
    token(hydra, &pairs, Some(&basic("basic-client", SECRET))).await
}

async fn admin_get(hydra: &Hydra, path: &str) -> Answer {
    answer(
        http()
            .get(format!("{}{path}", hydra.admin_url()))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn admin_json(hydra: &Hydra, method: &str, path: &str, body: &Value) -> Answer {
    let request = http()
        .request(
            method.parse().unwrap(),
            format!("{}{path}", hydra.admin_url()),
        )
        .header("content-type", "application/json")
        .body(body.to_string());
    answer(request.send().await.unwrap()).await
}

async fn introspect(hydra: &Hydra, access_token: &str) -> Value {
    let response = http()
        .post(format!("{}/admin/oauth2/introspect", hydra.admin_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("token", access_token)]).unwrap())
        .send()
        .await
        .unwrap();
    answer(response).await.json
}

fn description(answer: &Answer) -> &str {
    answer.json["error_description"].as_str().unwrap_or("")
}

fn members(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    keys
}

/// hydra.md §1: Basic with a form-urlencoded secret succeeds with exactly four members and no-store headers.
#[tokio::test]
async fn client_credentials_with_basic_answers_exactly_four_members() {
    let hydra = start().await;
    let ok = token(
        &hydra,
        &[CC, ("scope", "orders:read")],
        Some(&basic("basic-client", SECRET)),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    assert_eq!(
        members(&ok.json),
        ["access_token", "expires_in", "scope", "token_type"]
    );
    assert!(
        ok.json["access_token"]
            .as_str()
            .unwrap()
            .starts_with("ory_at_")
    );
    assert_eq!(ok.json["token_type"], "bearer");
    assert_eq!(ok.json["scope"], "orders:read");
    let expires_in = ok.json["expires_in"].as_i64().unwrap();
    assert!((3598..=3600).contains(&expires_in), "{expires_in}");
    assert_eq!(
        ok.header("content-type"),
        Some("application/json;charset=UTF-8")
    );
    ok.assert_no_store();
    // hydra.md §1: `scope` is present even when empty.
    let no_scope = token(&hydra, &[CC], Some(&basic("basic-client", SECRET))).await;
    assert_eq!(no_scope.json["scope"], "");
}

/// hydra.md §1: Basic credentials pass through url.QueryUnescape, so a raw `+` is a space.
#[tokio::test]
async fn a_raw_plus_in_a_basic_secret_is_a_space() {
    let hydra = Hydra::start().await;
    for (id, secret) in [("space", "a b"), ("plus", "a+b")] {
        hydra.add_client(HydraClient::basic(id, secret).with_grants(&["client_credentials"]));
    }
    assert_eq!(
        token(&hydra, &[CC], Some(&raw_basic("space", "a+b")))
            .await
            .status,
        200
    );
    token(&hydra, &[CC], Some(&raw_basic("plus", "a+b")))
        .await
        .assert_error(401, "invalid_client");
    assert_eq!(
        token(&hydra, &[CC], Some(&basic("plus", "a+b")))
            .await
            .status,
        200
    );
}

/// hydra.md §1: a malformed `%` escape in Basic credentials is 400 invalid_request.
#[tokio::test]
async fn a_malformed_escape_in_basic_is_invalid_request() {
    let hydra = start().await;
    let answer = token(&hydra, &[CC], Some(&raw_basic("basic-client", "100%"))).await;
    answer.assert_error(400, "invalid_request");
    assert!(
        description(&answer).contains("could not be decoded"),
        "{}",
        answer.json
    );
}

/// hydra.md §1: client_secret_post works; body credentials to a basic client and Basic to a post client are invalid_client.
#[tokio::test]
async fn each_client_gets_only_its_method() {
    let hydra = start().await;
    let post = [
        CC,
        ("client_id", "post-client"),
        ("client_secret", "post-secret"),
    ];
    assert_eq!(token(&hydra, &post, None).await.status, 200);
    let body_to_basic = [CC, ("client_id", "basic-client"), ("client_secret", SECRET)];
    let answer = token(&hydra, &body_to_basic, None).await;
    answer.assert_error(401, "invalid_client");
    assert!(description(&answer).contains("'client_secret_post' was requested"));
    let answer = token(&hydra, &[CC], Some(&basic("post-client", "post-secret"))).await;
    answer.assert_error(401, "invalid_client");
    assert!(description(&answer).contains("'client_secret_basic' was requested"));
    // Basic wins over a body that names only a client_id.
    let id_only = [CC, ("client_id", "post-client")];
    let answer = token(&hydra, &id_only, Some(&basic("basic-client", SECRET))).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
}

/// hydra.md §1: failed client authentication is 401 invalid_client without WWW-Authenticate.
#[tokio::test]
async fn failed_authentication_is_401_without_a_challenge() {
    let hydra = start().await;
    for authorization in [basic("basic-client", "wrong"), basic("nobody", SECRET)] {
        let answer = token(&hydra, &[CC], Some(&authorization)).await;
        answer.assert_error(401, "invalid_client");
        assert_eq!(answer.header("www-authenticate"), None);
    }
}

/// fosite client_authentication.go (hydra.md §1): no credentials at all is 400 invalid_request.
#[tokio::test]
async fn no_credentials_is_invalid_request() {
    let hydra = start().await;
    let answer = token(&hydra, &[CC], None).await;
    answer.assert_error(400, "invalid_request");
    assert!(description(&answer).contains("Client credentials missing"));
}

/// hydra.md §1: private_key_jwt checks alg, kid, iss = sub = client_id, a single-use jti and aud = the token URL.
#[tokio::test]
async fn private_key_jwt_is_checked_like_hydra() {
    let hydra = start().await;
    let key = es256("client-key");
    let jwks = json!({"keys": [public_jwk(&key)]});
    hydra.add_client(
        HydraClient::private_key_jwt("jwt-client", jwks.clone(), "ES256")
            .with_grants(&["client_credentials"]),
    );
    // No token_endpoint_auth_signing_alg: RS256 is enforced.
    hydra.add_client(
        HydraClient::private_key_jwt("rs-default", jwks, "").with_grants(&["client_credentials"]),
    );
    let with = |assertion: String| {
        let hydra = hydra.clone();
        async move {
            let pairs = [
                CC,
                ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ("client_assertion", assertion.as_str()),
            ];
            token(&hydra, &pairs, None).await
        }
    };
    let assertion = |client: &str, overrides: Value| {
        let mut c = json!({
            "iss": client, "sub": client, "aud": hydra.token_url(),
            "iat": now(), "exp": now() + 60, "jti": format!("jti-{}", rand::random::<u64>()),
        });
        for (k, v) in overrides.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let good = sign(&key, &assertion("jwt-client", json!({})), true);
    assert_eq!(with(good.clone()).await.status, 200);
    with(good).await.assert_error(400, "jti_known");
    let issuer_aud = assertion("jwt-client", json!({"aud": hydra.issuer()}));
    with(sign(&key, &issuer_aud, true))
        .await
        .assert_error(401, "invalid_client");
    let other_iss = assertion("jwt-client", json!({"iss": "someone"}));
    with(sign(&key, &other_iss, true))
        .await
        .assert_error(401, "invalid_client");
    let no_jti = assertion("jwt-client", json!({"jti": null}));
    with(sign(&key, &no_jti, true))
        .await
        .assert_error(401, "invalid_client");
    let answer = with(sign(&key, &assertion("rs-default", json!({})), true)).await;
    answer.assert_error(401, "invalid_client");
    assert!(description(&answer).contains("enforces signing algorithm 'RS256'"));
    let stranger = es256("unknown-kid");
    with(sign(&stranger, &assertion("jwt-client", json!({})), true))
        .await
        .assert_error(400, "invalid_request");
    let forged = es256("client-key");
    with(sign(&forged, &assertion("jwt-client", json!({})), true))
        .await
        .assert_error(401, "invalid_client");
}

/// hydra.md §1 (exp must be valid), fosite map_claims.go: an expired client assertion is Hydra's unrecognizable 500 error.
#[tokio::test]
async fn an_expired_client_assertion_is_an_unrecognizable_error() {
    let hydra = start().await;
    let key = es256("client-key");
    hydra.add_client(
        HydraClient::private_key_jwt("jwt-client", json!({"keys": [public_jwk(&key)]}), "ES256")
            .with_grants(&["client_credentials"]),
    );
    let expired = json!({
        "iss": "jwt-client", "sub": "jwt-client", "aud": hydra.token_url(),
        "iat": now() - 120, "exp": now() - 60, "jti": "expired-jti",
    });
    let assertion = sign(&key, &expired, true);
    let pairs = [
        CC,
        ("client_assertion_type", CLIENT_ASSERTION_TYPE),
        ("client_assertion", assertion.as_str()),
    ];
    let answer = token(&hydra, &pairs, None).await;
    answer.assert_error(500, "error");
    assert_eq!(description(&answer), "The error is unrecognizable");
}

/// hydra.md §1 and §3: an unknown grant type, token exchange included, is 400 invalid_request whatever the credentials.
#[tokio::test]
async fn unknown_grant_types_are_invalid_request() {
    let hydra = start().await;
    let exchange = [
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("subject_token", "ory_st_x"),
    ];
    for authorization in [
        Some(basic("basic-client", SECRET)),
        None,
        Some(basic("x", "y")),
    ] {
        token(&hydra, &exchange, authorization.as_deref())
            .await
            .assert_error(400, "invalid_request");
    }
    assert!(hydra.saw_token_exchange());
    // Two grant types: no handler claims exactly one.
    let two = [("grant_type", "client_credentials refresh_token")];
    token(&hydra, &two, Some(&basic("basic-client", SECRET)))
        .await
        .assert_error(400, "invalid_request");
}

/// hydra.md §1: only a POSTed form body is read (first value wins, query ignored, trailing slash trimmed).
#[tokio::test]
async fn only_a_posted_form_body_is_read() {
    let hydra = start().await;
    let auth = basic("basic-client", SECRET);
    let get = http()
        .get(format!(
            "{}?grant_type=client_credentials",
            hydra.token_url()
        ))
        .header("authorization", &auth);
    let get = answer(get.send().await.unwrap()).await;
    get.assert_error(400, "invalid_request");
    assert!(description(&get).contains("HTTP method is 'GET'"));
    let json_body = http()
        .post(hydra.token_url())
        .header("authorization", &auth)
        .json(&json!({"grant_type": "client_credentials"}));
    let json_body = answer(json_body.send().await.unwrap()).await;
    json_body.assert_error(400, "invalid_request");
    assert!(description(&json_body).contains("The POST body can not be empty."));
    let query_only = http()
        .post(format!(
            "{}?grant_type=client_credentials",
            hydra.token_url()
        ))
        .header("authorization", &auth)
        .header("content-type", "application/x-www-form-urlencoded");
    let query_only = answer(query_only.send().await.unwrap()).await;
    assert!(description(&query_only).contains("The POST body can not be empty."));
    let first_wins = token(&hydra, &[CC, ("grant_type", "nonsense")], Some(&auth)).await;
    assert_eq!(first_wins.status, 200, "{}", first_wins.json);
    let slash = http()
        .post(format!("{}/", hydra.token_url()))
        .header("authorization", &auth)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials");
    assert_eq!(slash.send().await.unwrap().status(), 200);
    let seen = hydra.token_requests();
    assert_eq!(
        seen.last().unwrap().form_value("grant_type"),
        Some("client_credentials")
    );
}

/// hydra.md §1: client_credentials scopes must be the client's (invalid_scope); audiences must URL-prefix-match (invalid_request).
#[tokio::test]
async fn client_credentials_scope_and_audience_rules() {
    let hydra = start().await;
    let auth = basic("basic-client", SECRET);
    token(&hydra, &[CC, ("scope", "orders:read admin")], Some(&auth))
        .await
        .assert_error(400, "invalid_scope");
    let sub_path = format!("{API}/v1/items");
    let ok = token(&hydra, &[CC, ("audience", &sub_path)], Some(&auth)).await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    let info = introspect(&hydra, ok.json["access_token"].as_str().unwrap()).await;
    assert_eq!(info["aud"], json!([sub_path]));
    assert_eq!(info["sub"], "basic-client");
    for bad in [
        "https://evil.example.com",
        "https://orders.example.community",
        "http://orders.example.com",
    ] {
        token(&hydra, &[CC, ("audience", bad)], Some(&auth))
            .await
            .assert_error(400, "invalid_request");
    }
    // One value is split on spaces; repeated values are taken as they are.
    let split = format!("{API} {API}/v2");
    assert_eq!(
        token(&hydra, &[CC, ("audience", &split)], Some(&auth))
            .await
            .status,
        200
    );
    let repeated = [CC, ("audience", API), ("audience", &split)];
    token(&hydra, &repeated, Some(&auth))
        .await
        .assert_error(400, "invalid_request");
}

/// flow_client_credentials.go (hydra.md §1): without the grant type it is unauthorized_client; a public client gets invalid_grant.
#[tokio::test]
async fn client_credentials_needs_the_grant_and_a_confidential_client() {
    let hydra = start().await;
    hydra.add_client(HydraClient::basic("bearer-only", SECRET).with_grants(&[JWT_BEARER_GRANT]));
    hydra.add_client(HydraClient::public("public").with_grants(&["client_credentials"]));
    token(&hydra, &[CC], Some(&basic("bearer-only", SECRET)))
        .await
        .assert_error(400, "unauthorized_client");
    token(&hydra, &[CC, ("client_id", "public")], None)
        .await
        .assert_error(400, "invalid_grant");
}

/// hydra.md §2.4–§2.5: jwt-bearer grants the assertion's sub and scopes, aud = assertion aud + matching request audiences, the client's lifespan, no refresh_token.
#[tokio::test]
async fn jwt_bearer_grants_what_hydra_grants() {
    let hydra = start().await;
    let key = es256("iris-key");
    trust_alice(&hydra, &key, &["openid", "offline", "orders:read"]);
    let assertion = sign(&key, &claims(&hydra, json!({})), true);
    let audience = format!("{API}/v1 https://evil.example.com");
    let ok = bearer(
        &hydra,
        &assertion,
        &[
            ("scope", "openid offline orders:read"),
            ("audience", &audience),
        ],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    assert_eq!(
        members(&ok.json),
        ["access_token", "expires_in", "scope", "token_type"]
    );
    assert_eq!(ok.json["scope"], "openid offline orders:read");
    let expires_in = ok.json["expires_in"].as_i64().unwrap();
    assert!((1798..=1800).contains(&expires_in), "{expires_in}");
    ok.assert_no_store();
    let info = introspect(&hydra, ok.json["access_token"].as_str().unwrap()).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["sub"], "alice");
    assert_eq!(info["client_id"], "basic-client");
    assert_eq!(info["aud"], json!([hydra.token_url(), format!("{API}/v1")]));
    assert_eq!(info["scope"], "openid offline orders:read");
    assert_eq!(info["iss"], hydra.issuer());
    assert_eq!(info["token_type"], "Bearer");
    assert_eq!(info["token_use"], "access_token");
    let exp = info["exp"].as_i64().unwrap() - info["iat"].as_i64().unwrap();
    assert!((1799..=1801).contains(&exp), "{exp}");
}

/// hydra.md §2.1: jwt-bearer needs an authenticated client that has the grant type.
#[tokio::test]
async fn jwt_bearer_needs_an_authorized_client() {
    let hydra = start().await;
    let key = es256("iris-key");
    trust_alice(&hydra, &key, &["openid"]);
    let assertion = sign(&key, &claims(&hydra, json!({})), true);
    let pairs = [
        ("grant_type", JWT_BEARER_GRANT),
        ("assertion", assertion.as_str()),
    ];
    token(&hydra, &pairs, None)
        .await
        .assert_error(400, "invalid_request");
    let post = [
        ("grant_type", JWT_BEARER_GRANT),
        ("assertion", assertion.as_str()),
        ("client_id", "post-client"),
        ("client_secret", "post-secret"),
    ];
    token(&hydra, &post, None)
        .await
        .assert_error(400, "unauthorized_client");
    // Nothing was burned by the failures before the assertion was read.
    assert_eq!(bearer(&hydra, &assertion, &[]).await.status, 200);
}

/// hydra.md §2.2: each assertion check fails with invalid_grant (no key for the kid, aud, exp, nbf, iat, max_ttl, jti).
#[tokio::test]
async fn each_assertion_check_is_invalid_grant() {
    let hydra = start().await;
    let key = es256("iris-key");
    trust_alice(&hydra, &key, &["openid"]);
    let now = now();
    let stranger = es256("stranger");
    let cases: Vec<(String, &str)> = vec![
        (
            sign(&stranger, &claims(&hydra, json!({})), true),
            "No public JWK was registered",
        ),
        (
            sign(&key, &claims(&hydra, json!({"sub": "bob"})), true),
            "No public JWK was registered",
        ),
        (
            sign(&key, &claims(&hydra, json!({"aud": hydra.issuer()})), true),
            "that identifies the authorization server",
        ),
        (
            sign(&key, &claims(&hydra, json!({"aud": null})), true),
            "MUST contain an 'aud'",
        ),
        (
            sign(&key, &claims(&hydra, json!({"exp": now - 1})), true),
            "expired",
        ),
        (
            sign(&key, &claims(&hydra, json!({"exp": null})), true),
            "'exp' (expiration time) claim.",
        ),
        (
            sign(&key, &claims(&hydra, json!({"nbf": now + 30})), true),
            "'nbf' (not before)",
        ),
        (
            sign(&key, &claims(&hydra, json!({"iat": null})), true),
            "'iat' (issued at)",
        ),
        (
            sign(&key, &claims(&hydra, json!({"jti": null})), true),
            "'jti' (JWT ID)",
        ),
        (
            sign(
                &key,
                &claims(&hydra, json!({"exp": now + 721 * 3600})),
                true,
            ),
            "unreasonably far in the future",
        ),
        ("not.a.jwt".into(), "Unable to parse"),
    ];
    for (assertion, expected) in cases {
        let answer = bearer(&hydra, &assertion, &[]).await;
        answer.assert_error(400, "invalid_grant");
        assert!(
            description(&answer).contains(expected),
            "{expected}: {}",
            answer.json
        );
    }
    // oauth2.grant.jwt.max_ttl is configurable.
    hydra.set_max_ttl(Duration::from_secs(60));
    let long = claims(&hydra, json!({"exp": now + 120}));
    let answer = bearer(&hydra, &sign(&key, &long, true), &[]).await;
    answer.assert_error(400, "invalid_grant");
    assert!(description(&answer).contains("unreasonably far"));
}

/// hydra.md §2.2 step 5: a replayed jti is 400 jti_known.
#[tokio::test]
async fn a_replayed_jti_is_jti_known() {
    let hydra = start().await;
    let key = es256("iris-key");
    trust_alice(&hydra, &key, &["openid"]);
    let assertion = sign(&key, &claims(&hydra, json!({})), true);
    assert_eq!(bearer(&hydra, &assertion, &[]).await.status, 200);
    let replay = bearer(&hydra, &assertion, &[]).await;
    replay.assert_error(400, "jti_known");
    assert_eq!(description(&replay), "The jti was already used.");
}

/// hydra.md §2.2 steps 6–7: invalid_scope fails before the jti is burned; a later failure (the token hook, §2.7) leaves it burned.
#[tokio::test]
async fn the_jti_is_burned_before_later_failures() {
    let hydra = start().await;
    let key = es256("iris-key");
    trust_alice(&hydra, &key, &["openid"]);
    let first = claims(&hydra, json!({}));
    let assertion = sign(&key, &first, true);
    let answer = bearer(&hydra, &assertion, &[("scope", "openid admin")]).await;
    answer.assert_error(400, "invalid_scope");
    assert!(description(&answer).contains("not allowed to request scope 'admin'"));
    assert!(!hydra.jti_known(first["jti"].as_str().unwrap()));
    assert_eq!(
        bearer(&hydra, &assertion, &[("scope", "openid")])
            .await
            .status,
        200
    );

    hydra.set_token_hook(Some(TokenHook::Status(403)));
    let second = claims(&hydra, json!({}));
    let assertion = sign(&key, &second, true);
    bearer(&hydra, &assertion, &[])
        .await
        .assert_error(403, "access_denied");
    assert!(hydra.jti_known(second["jti"].as_str().unwrap()));
    hydra.set_token_hook(None);
    bearer(&hydra, &assertion, &[])
        .await
        .assert_error(400, "jti_known");
    // The hook saw the raw assertion (hydra.md §2.7).
    let hook = hydra.hook_requests();
    assert_eq!(hook[0]["payload"]["assertion"], json!([assertion]));
}

/// hydra.md §2.2 step 3: with a kid the relationship's expires_at is not checked; without one only unexpired relationships count.
#[tokio::test]
async fn expiry_of_a_relationship_only_counts_without_a_kid() {
    let hydra = start().await;
    let key = es256("old-key");
    hydra
        .trust(&json!({
            "issuer": ISSUER, "subject": "alice", "scope": [],
            "jwk": public_jwk(&key), "expires_at": "2000-01-01T00:00:00Z",
        }))
        .unwrap();
    let with_kid = sign(&key, &claims(&hydra, json!({})), true);
    assert_eq!(bearer(&hydra, &with_kid, &[]).await.status, 200);
    let without_kid = sign(&key, &claims(&hydra, json!({})), false);
    bearer(&hydra, &without_kid, &[])
        .await
        .assert_error(400, "invalid_grant");
    let fresh = es256("fresh-key");
    trust_alice(&hydra, &fresh, &[]);
    let without_kid = sign(&fresh, &claims(&hydra, json!({})), false);
    assert_eq!(bearer(&hydra, &without_kid, &[]).await.status, 200);
}

/// hydra.md §2.2 step 3: an allow_any_subject relationship serves every sub of its issuer.
#[tokio::test]
async fn allow_any_subject_serves_every_subject() {
    let hydra = start().await;
    let key = es256("any-key");
    hydra
        .trust(&json!({
            "issuer": ISSUER, "allow_any_subject": true, "scope": ["openid"],
            "jwk": public_jwk(&key), "expires_at": FAR,
        }))
        .unwrap();
    for sub in ["alice", "bob"] {
        let assertion = sign(&key, &claims(&hydra, json!({"sub": sub})), true);
        let ok = bearer(&hydra, &assertion, &[("scope", "openid")]).await;
        assert_eq!(ok.status, 200, "{}", ok.json);
        let info = hydra.introspect(ok.json["access_token"].as_str().unwrap());
        assert_eq!(info["sub"], sub);
    }
    let other = claims(&hydra, json!({"iss": "https://other.example.com"}));
    bearer(&hydra, &sign(&key, &other, true), &[])
        .await
        .assert_error(400, "invalid_grant");
}

/// hydra.md §2.2 step 5: urls.self.issuer sets the one accepted assertion aud and discovery's token_endpoint.
#[tokio::test]
async fn the_issuer_sets_the_accepted_audience() {
    let hydra = start().await;
    let key = es256("iris-key");
    trust_alice(&hydra, &key, &[]);
    hydra.set_issuer("https://auth.example.com/");
    assert_eq!(
        hydra.accepted_token_urls(),
        ["https://auth.example.com/oauth2/token"]
    );
    let listener_aud = sign(&key, &claims(&hydra, json!({})), true);
    bearer(&hydra, &listener_aud, &[])
        .await
        .assert_error(400, "invalid_grant");
    let public_aud = claims(
        &hydra,
        json!({"aud": "https://auth.example.com/oauth2/token"}),
    );
    assert_eq!(
        bearer(&hydra, &sign(&key, &public_aud, true), &[])
            .await
            .status,
        200
    );
    let doc = http()
        .get(format!(
            "{}/.well-known/openid-configuration",
            hydra.public_url()
        ))
        .send()
        .await
        .unwrap();
    let doc = answer(doc).await.json;
    assert_eq!(doc["issuer"], "https://auth.example.com/");
    assert_eq!(
        doc["token_endpoint"],
        "https://auth.example.com/oauth2/token"
    );
}

/// hydra.md §2.3: the trust API validates, creates, lists, reads, reuses a (set, kid) key, is unique and deletes with the key.
#[tokio::test]
async fn the_trust_api_behaves_like_hydra() {
    let hydra = start().await;
    let key = es256("iris-key");
    let jwk = public_jwk(&key);
    let mut no_kid = jwk.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let base = json!({"issuer": ISSUER, "subject": "alice", "scope": ["openid"], "jwk": jwk, "expires_at": FAR});
    let with = |patch: Value| {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    let invalid = [
        (with(json!({"issuer": null})), "Field 'issuer' is required."),
        (
            with(json!({"subject": null})),
            "One of 'subject' or 'allow_any_subject' field must be set.",
        ),
        (
            with(json!({"allow_any_subject": true})),
            "cannot be set at the same time.",
        ),
        (
            with(json!({"expires_at": null})),
            "Field 'expires_at' is required.",
        ),
        (
            with(json!({"jwk": no_kid})),
            "Field 'jwk' must contain JWK with kid header.",
        ),
    ];
    for (body, hint) in &invalid {
        let answer = admin_json(
            &hydra,
            "POST",
            "/admin/trust/grants/jwt-bearer/issuers",
            body,
        )
        .await;
        assert_eq!(
            (answer.status, answer.error()),
            (400, "missing_required_parameter")
        );
        assert!(description(&answer).ends_with(hint), "{}", answer.json);
    }
    // Without the /admin prefix too (hydra.md §4).
    let created = admin_json(&hydra, "POST", "/trust/grants/jwt-bearer/issuers", &base).await;
    assert_eq!(created.status, 201, "{}", created.json);
    assert_eq!(hydra.trust_posts(), invalid.len() + 1);
    let id = created.json["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.json["public_key"],
        json!({"set": ISSUER, "kid": "iris-key"})
    );
    assert_eq!(created.json["expires_at"], FAR);
    assert_eq!(created.json["allow_any_subject"], false);
    let again = admin_json(
        &hydra,
        "POST",
        "/admin/trust/grants/jwt-bearer/issuers",
        &base,
    )
    .await;
    assert_eq!(again.status, 409);
    // Same (set, kid), new key material, another subject: the stored key is reused.
    let rotated = es256("iris-key");
    let bob = with(json!({"subject": "bob", "jwk": public_jwk(&rotated)}));
    assert_eq!(
        admin_json(
            &hydra,
            "POST",
            "/admin/trust/grants/jwt-bearer/issuers",
            &bob
        )
        .await
        .status,
        201
    );
    assert_eq!(hydra.stored_key(ISSUER, "iris-key"), Some(public_jwk(&key)));
    let as_bob = |k: &Value| sign(k, &claims(&hydra, json!({"sub": "bob"})), true);
    bearer(&hydra, &as_bob(&rotated), &[])
        .await
        .assert_error(400, "invalid_grant");
    assert_eq!(bearer(&hydra, &as_bob(&key), &[]).await.status, 200);
    let other_issuer = with(json!({"issuer": "https://other.example.com"}));
    admin_json(
        &hydra,
        "POST",
        "/admin/trust/grants/jwt-bearer/issuers",
        &other_issuer,
    )
    .await;
    let listed = admin_get(
        &hydra,
        &format!("/admin/trust/grants/jwt-bearer/issuers?issuer={ISSUER}"),
    )
    .await;
    assert_eq!(listed.json.as_array().unwrap().len(), 2);
    let all = admin_get(&hydra, "/admin/trust/grants/jwt-bearer/issuers").await;
    assert_eq!(all.json.as_array().unwrap().len(), 3);
    let path = format!("/admin/trust/grants/jwt-bearer/issuers/{id}");
    assert_eq!(admin_get(&hydra, &path).await.json, created.json);
    let deleted = admin_json(&hydra, "DELETE", &path, &Value::Null).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(hydra.stored_key(ISSUER, "iris-key"), None);
    let gone = admin_get(&hydra, &path).await;
    assert_eq!(gone.status, 404);
    assert_eq!(
        gone.json,
        json!({"error": "Unable to locate the resource", "error_description": ""})
    );
    // Bob's relationship remains, but its key went with alice's.
    bearer(&hydra, &as_bob(&key), &[])
        .await
        .assert_error(400, "invalid_grant");
}

/// hydra.md §4: the admin client API hides the secret on GET, shows it on create, 404s, 409s and deletes with 204.
#[tokio::test]
async fn the_client_api_behaves_like_hydra() {
    let hydra = start().await;
    let body = json!({
        "client_id": "made", "client_secret": "made-secret",
        "token_endpoint_auth_method": "client_secret_post",
        "grant_types": ["client_credentials"], "scope": "a b", "audience": [API],
        "metadata": {"first_party": true}, "jwt_bearer_grant_access_token_lifespan": "30m",
    });
    let created = admin_json(&hydra, "POST", "/admin/clients", &body).await;
    assert_eq!(created.status, 201, "{}", created.json);
    assert_eq!(created.json["client_secret"], "made-secret");
    assert_eq!(
        created.json["jwt_bearer_grant_access_token_lifespan"],
        "30m0s"
    );
    assert_eq!(
        admin_json(&hydra, "POST", "/admin/clients", &body)
            .await
            .status,
        409
    );
    let read = admin_get(&hydra, "/clients/made").await;
    assert_eq!(read.status, 200);
    assert!(read.json.get("client_secret").is_none(), "{}", read.json);
    assert_eq!(read.json["scope"], "a b");
    assert_eq!(read.json["audience"], json!([API]));
    assert_eq!(read.json["metadata"], json!({"first_party": true}));
    assert_eq!(
        read.json["token_endpoint_auth_method"],
        "client_secret_post"
    );
    assert!(read.json["created_at"].as_str().unwrap().ends_with('Z'));
    let default = admin_get(&hydra, "/admin/clients/basic-client").await;
    assert_eq!(
        default.json["token_endpoint_auth_method"],
        "client_secret_basic"
    );
    let pairs = [CC, ("client_id", "made"), ("client_secret", "made-secret")];
    assert_eq!(token(&hydra, &pairs, None).await.status, 200);
    let missing = admin_get(&hydra, "/admin/clients/nobody").await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json,
        json!({"error": "Unable to locate the resource", "error_description": ""})
    );
    assert_eq!(
        admin_json(&hydra, "DELETE", "/admin/clients/made", &Value::Null)
            .await
            .status,
        204
    );
    assert_eq!(admin_get(&hydra, "/admin/clients/made").await.status, 404);
}

/// hydra.md §4: introspection is {"active":false} for anything not issued or expired, and needs a POST body.
#[tokio::test]
async fn introspection_of_unknown_and_expired_tokens_is_inactive() {
    let hydra = start().await;
    assert_eq!(
        introspect(&hydra, "ory_at_unknown.x").await,
        json!({"active": false})
    );
    let empty = http()
        .post(format!("{}/admin/oauth2/introspect", hydra.admin_url()))
        .header("content-type", "application/x-www-form-urlencoded");
    answer(empty.send().await.unwrap())
        .await
        .assert_error(400, "invalid_request");
    hydra.set_access_token_ttl(Duration::ZERO);
    let issued = token(&hydra, &[CC], Some(&basic("basic-client", SECRET))).await;
    assert_eq!(issued.json["expires_in"], 0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let info = introspect(&hydra, issued.json["access_token"].as_str().unwrap()).await;
    assert_eq!(info, json!({"active": false}));
}

/// hydra.md §4: discovery (both paths) has the §4 fields and five grant types, no introspection_endpoint; JWKS and health.
#[tokio::test]
async fn discovery_jwks_and_health() {
    let hydra = start().await;
    let get = |path: &str| {
        let url = format!("{}{path}", hydra.public_url());
        async move { get_url(url).await }
    };
    let doc = get("/.well-known/openid-configuration").await;
    assert_eq!(doc.status, 200);
    assert_eq!(
        doc.json,
        get("/.well-known/oauth-authorization-server").await.json
    );
    assert_eq!(doc.json["issuer"], hydra.issuer());
    assert_eq!(doc.json["token_endpoint"], hydra.token_url());
    assert_eq!(
        doc.json["jwks_uri"],
        format!("{}/.well-known/jwks.json", hydra.public_url())
    );
    for field in [
        "authorization_endpoint",
        "userinfo_endpoint",
        "revocation_endpoint",
        "end_session_endpoint",
        "registration_endpoint",
        "device_authorization_endpoint",
        "subject_types_supported",
        "response_types_supported",
        "claims_supported",
        "scopes_supported",
        "response_modes_supported",
        "id_token_signing_alg_values_supported",
        "userinfo_signing_alg_values_supported",
        "request_object_signing_alg_values_supported",
        "code_challenge_methods_supported",
        "frontchannel_logout_supported",
        "backchannel_logout_supported",
        "credentials_endpoint_draft_00",
    ] {
        assert!(doc.json.get(field).is_some(), "{field} missing");
    }
    assert_eq!(
        doc.json["grant_types_supported"],
        json!([
            "authorization_code",
            "implicit",
            "client_credentials",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code"
        ])
    );
    assert_eq!(
        doc.json["token_endpoint_auth_methods_supported"],
        json!([
            "client_secret_post",
            "client_secret_basic",
            "private_key_jwt",
            "none"
        ])
    );
    assert!(doc.json.get("introspection_endpoint").is_none());
    let jwks = get("/.well-known/jwks.json").await.json;
    let keys = jwks["keys"].as_array().unwrap();
    assert!(
        keys.iter()
            .any(|k| k["alg"] == "RS256" && k["use"] == "sig" && k["kid"].is_string())
    );
    assert!(keys.iter().all(|k| k.get("d").is_none()));
    assert_eq!(get("/health/alive").await.json, json!({"status": "ok"}));
    assert_eq!(get("/health/ready").await.json, json!({"status": "ok"}));
}

/// hydra.md §5: with strategies.access_token=jwt the token is an RS256 JWT signed by a JWKS key.
#[tokio::test]
async fn the_jwt_strategy_issues_verifiable_tokens() {
    let hydra = start().await;
    hydra.set_access_token_strategy(AccessTokenStrategy::Jwt);
    let ok = token(
        &hydra,
        &[CC, ("scope", "orders:read")],
        Some(&basic("basic-client", SECRET)),
    )
    .await;
    let jwt = ok.json["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let jwks = hydra.jwks();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"].as_str() == header.kid.as_deref())
        .expect("the signing key is published");
    let key =
        jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(jwk.clone()).unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["client_id"], "basic-client");
    assert_eq!(claims["scp"], json!(["orders:read"]));
    assert_eq!(claims["aud"], json!([]));
    assert_eq!(introspect(&hydra, jwt).await["active"], true);
}

/// hydra.md §1: strategies.scope=wildcard lets `orders.*` cover `orders.read`; exact does not.
#[tokio::test]
async fn the_scope_strategy_is_configurable() {
    let hydra = Hydra::start().await;
    hydra.add_client(
        HydraClient::basic("wild", SECRET)
            .with_grants(&["client_credentials"])
            .with_scope("orders.*"),
    );
    let pairs = [CC, ("scope", "orders.read")];
    token(&hydra, &pairs, Some(&basic("wild", SECRET)))
        .await
        .assert_error(400, "invalid_scope");
    hydra.set_scope_strategy(ScopeStrategy::Wildcard);
    assert_eq!(
        token(&hydra, &pairs, Some(&basic("wild", SECRET)))
            .await
            .status,
        200
    );
}

/// Test instrumentation: other public requests are echoed (method, path, query, ordered headers, body hash) and logged.
#[tokio::test]
async fn other_public_requests_are_echoed() {
    let hydra = start().await;
    let response = http()
        .post(format!("{}/userinfo?a=1&b=%20", hydra.public_url()))
        .header("x-first", "1")
        .header("x-second", "two")
        .header("x-standin-status", "418")
        .body("hello")
        .send()
        .await
        .unwrap();
    let echo = answer(response).await;
    assert_eq!(echo.status, 418);
    assert_eq!(echo.json["method"], "POST");
    assert_eq!(echo.json["path"], "/userinfo");
    assert_eq!(echo.json["query"], "a=1&b=%20");
    assert_eq!(echo.json["body_len"], 5);
    let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    assert_eq!(echo.json["body_sha256"], sha);
    let names: Vec<&str> = echo.json["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap())
        .collect();
    let first = names.iter().position(|n| *n == "x-first").unwrap();
    assert_eq!(names[first + 1], "x-second");
    let seen = hydra.requests();
    let seen = seen.iter().find(|r| r.path == "/userinfo").unwrap();
    assert_eq!(
        (seen.header("x-second"), seen.body_sha256.as_str()),
        (Some("two"), sha)
    );
    assert_eq!(hydra.count("/userinfo"), 1);
}

/// Test instrumentation: /standin/download streams N deterministic bytes; uploads are hashed while streaming.
#[tokio::test]
async fn downloads_stream_and_uploads_are_hashed() {
    let hydra = start().await;
    let n = 3_000_017;
    let response = http()
        .get(format!("{}/standin/download?bytes={n}", hydra.public_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers().get("content-length"), None);
    assert!(response.bytes().await.unwrap() == download_bytes(n));
    let upload = vec![7u8; 5_000_000];
    let echo = answer(
        http()
            .put(format!("{}/upload", hydra.public_url()))
            .body(upload.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&upload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        (
            echo.json["body_len"].as_u64(),
            echo.json["body_sha256"].as_str()
        ),
        (Some(5_000_000), Some(sha.as_str()))
    );
}

/// Test instrumentation: stop() takes both ports down, open connections included; restart() brings them back with the state.
#[tokio::test]
async fn stop_and_restart() {
    let hydra = start().await;
    let pooled = http();
    let alive = format!("{}/health/alive", hydra.public_url());
    assert_eq!(pooled.get(&alive).send().await.unwrap().status(), 200);
    hydra.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(pooled.get(&alive).send().await.is_err());
    assert!(
        http()
            .get(format!("{}/health/alive", hydra.admin_url()))
            .send()
            .await
            .is_err()
    );
    hydra.restart().await;
    assert_eq!(http().get(&alive).send().await.unwrap().status(), 200);
    let ok = token(&hydra, &[CC], Some(&basic("basic-client", SECRET))).await;
    assert_eq!(ok.status, 200);
}
