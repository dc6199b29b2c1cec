//! The session bridge without a browser (DESIGN.md §6, §8): the CSRF rules, CORS, the token
//! response and the PKCE code flow. tests/it/browser.rs proves the same in Chromium.

use std::time::Duration;

use base64::Engine;
use serde_json::json;
use sha2::Digest;

use crate::support::hydra::Hydra;
use crate::support::*;
use iris::config::{AuthMethod, BridgeResponse, GoDuration, HydraConfig, RawConfig};

pub const APP: &str = "https://app.example.com";
pub const COOKIE: &str = "MTcxMDkyOTYwMHxib3dzZXItc2Vzc2lvbi1jb29raWUtdmFsdWU";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

/// RFC 7636 §4.2: BASE64URL(SHA256(verifier)).
fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// The fixtures plus `spa`, a public first-party client, and the bridge for `origins`.
pub fn bridge_config(kratos: &Kratos, origins: &[&str], response: BridgeResponse) -> RawConfig {
    let mut raw = config(kratos);
    let mut spa = client("spa", AuthMethod::None);
    spa.scope = "openid orders:read".into();
    raw.clients.push(spa);
    raw.bridge.enabled = true;
    raw.bridge.client_id = "spa".into();
    raw.bridge.allowed_origins = origins.iter().map(|o| o.to_string()).collect();
    raw.bridge.scope = "openid orders:read".into();
    raw.bridge.response = response;
    raw
}

async fn start(response: BridgeResponse) -> (Kratos, TestIris) {
    let kratos = Kratos::start().await;
    kratos.add_cookie(COOKIE, Entry::Session(SessionRecord::alice()));
    let iris = TestIris::start(bridge_config(&kratos, &[APP], response)).await;
    (kratos, iris)
}

fn bridge_url(iris: &TestIris) -> String {
    format!("{}/session/bridge", iris.url())
}

/// A bridge POST with the given Origin, X-Requested-With and cookie.
async fn call(
    iris: &TestIris,
    origin: Option<&str>,
    xhr: bool,
    cookie: Option<&str>,
    body: Option<String>,
) -> Answer {
    let mut request = http().post(bridge_url(iris));
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    if xhr {
        request = request.header("x-requested-with", "XMLHttpRequest");
    }
    if let Some(cookie) = cookie {
        request = request.header(
            "cookie",
            format!("csrf_token=abc; ory_kratos_session={cookie}; theme=dark"),
        );
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
    }
    answer(request.send().await.unwrap()).await
}

fn assert_refused(answer: &Answer) {
    assert_eq!(
        (answer.status, answer.error()),
        (403, "access_denied"),
        "{}",
        answer.json
    );
    assert!(answer.json["error_description"].is_string());
}

/// Each CSRF rule refuses with 403 access_denied before Kratos is called: no
/// X-Requested-With, no Origin, Origin null, another origin (even one differing only by port).
#[tokio::test]
async fn csrf_refusals_never_reach_kratos() {
    let (kratos, iris) = start(BridgeResponse::Token).await;
    let cases = [
        ("no X-Requested-With", Some(APP), false),
        ("no Origin", None, true),
        ("Origin null", Some("null"), true),
        ("another origin", Some("https://evil.example.com"), true),
        ("another port", Some("https://app.example.com:8443"), true),
        ("another scheme", Some("http://app.example.com"), true),
    ];
    for (why, origin, xhr) in cases {
        let answer = call(&iris, origin, xhr, Some(COOKIE), None).await;
        assert_refused(&answer);
        let allowed = origin == Some(APP);
        assert_eq!(
            answer.header("access-control-allow-origin"),
            allowed.then_some(APP),
            "{why}: CORS only for the allowed origin"
        );
    }
    // A wrong X-Requested-With value is no better than none.
    let mut request = http()
        .post(bridge_url(&iris))
        .header("origin", APP)
        .header("x-requested-with", "fetch");
    request = request.header("cookie", format!("ory_kratos_session={COOKIE}"));
    assert_refused(&answer(request.send().await.unwrap()).await);
    assert_eq!(kratos.calls(), 0);
}

/// A preflight from an allowed origin gets exactly the CORS answer; from any other, none.
#[tokio::test]
async fn preflights_answer_only_allowed_origins() {
    let (_kratos, iris) = start(BridgeResponse::Token).await;
    let preflight = |origin: &'static str| {
        http()
            .request(reqwest::Method::OPTIONS, bridge_url(&iris))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "x-requested-with, content-type",
            )
            .send()
    };
    let ok = answer(preflight(APP).await.unwrap()).await;
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some(APP),
        "the origin itself, never *"
    );
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(ok.header("access-control-allow-methods"), Some("POST"));
    let allowed_headers = ok
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed_headers.contains("x-requested-with") && allowed_headers.contains("content-type")
    );
    assert!(
        ok.header("access-control-max-age")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(ok.header("vary"), Some("Origin"));
    for origin in [
        "https://evil.example.com",
        "null",
        "https://app.example.com:444",
    ] {
        let refused = answer(preflight(origin).await.unwrap()).await;
        assert_ne!(refused.status, 204, "{origin}");
        for name in [
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "access-control-allow-methods",
            "access-control-allow-headers",
        ] {
            assert!(refused.header(name).is_none(), "{origin}: {name}");
        }
    }
}

/// An allowed page with the session cookie gets the RFC 8693 body for the bridge client, with
/// the CORS headers its fetch needs to read it.
#[tokio::test]
async fn an_allowed_page_gets_tokens_for_the_bridge_client() {
    let (kratos, iris) = start(BridgeResponse::Token).await;
    let answer = call(&iris, Some(APP), true, Some(COOKIE), None).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    answer.assert_no_store();
    assert_eq!(answer.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        answer.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        answer.json["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(answer.json["scope"], "openid orders:read");
    let (_, claims) = jwt_parts(answer.json["access_token"].as_str().unwrap());
    assert_eq!(claims["client_id"], "spa");
    assert_eq!(claims["aud"], json!([ORDERS_API]));
    assert_eq!(claims["sub"], "5ff66179-c240-4703-b0d8-494592cefff5");
    let (_, id) = jwt_parts(answer.json["id_token"].as_str().unwrap());
    assert_eq!(id["aud"], "spa");
    // The cookie reached Kratos as the session cookie, alone.
    let call_log = kratos.call_log();
    assert_eq!(
        call_log[0].cookie.as_deref(),
        Some(format!("ory_kratos_session={COOKIE}").as_str())
    );
}

/// No cookie, or a cookie Kratos does not know, is a session error, not a token.
#[tokio::test]
async fn without_a_valid_session_there_is_no_token() {
    let (kratos, iris) = start(BridgeResponse::Token).await;
    let none = call(&iris, Some(APP), true, None, None).await;
    none.assert_error(400, "invalid_request");
    assert_eq!(none.header("access-control-allow-origin"), Some(APP));
    assert_eq!(kratos.calls(), 0);
    call(&iris, Some(APP), true, Some("MTcxunknown"), None)
        .await
        .assert_error(400, "invalid_request");
}

/// Tokens from the bridge never outlive the session.
#[tokio::test]
async fn bridge_tokens_are_clamped_to_the_session() {
    let kratos = Kratos::start().await;
    let mut session = SessionRecord::alice();
    session.expires_at = std::time::SystemTime::now() + Duration::from_secs(120);
    kratos.add_cookie(COOKIE, Entry::Session(session));
    let iris = TestIris::start(bridge_config(&kratos, &[APP], BridgeResponse::Token)).await;
    let answer = call(&iris, Some(APP), true, Some(COOKIE), None).await;
    assert!(
        answer.json["expires_in"].as_u64().unwrap() <= 120,
        "{}",
        answer.json
    );
}

/// The bridge client must exist among the static clients and be first-party, or the
/// configuration is refused (and `iris check` names the key).
#[tokio::test]
async fn the_bridge_client_must_be_a_first_party_static_client() {
    let kratos = Kratos::start().await;
    let mut raw = bridge_config(&kratos, &[APP], BridgeResponse::Token);
    raw.bridge.client_id = "nobody".into();
    assert!(
        raw.validate()
            .unwrap_err()
            .to_string()
            .starts_with("bridge.client_id")
    );
    raw.bridge.client_id = "third-party".into();
    assert!(
        raw.validate()
            .unwrap_err()
            .to_string()
            .contains("first-party")
    );
    let mut raw = bridge_config(
        &kratos,
        &["https://app.example.com/"],
        BridgeResponse::Token,
    );
    assert!(
        raw.validate()
            .unwrap_err()
            .to_string()
            .starts_with("bridge.allowed_origins[0]")
    );
    raw.bridge.allowed_origins = vec!["null".into()];
    assert!(raw.validate().is_err());
    raw.bridge.allowed_origins = vec!["*".into()];
    assert!(raw.validate().is_err());
}

async fn get_code(iris: &TestIris, challenge: &str) -> String {
    let body = serde_urlencoded::to_string([
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ])
    .unwrap();
    let answer = call(iris, Some(APP), true, Some(COOKIE), Some(body)).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert!(
        answer.json.get("access_token").is_none(),
        "code mode returns no token"
    );
    let expires_in = answer.json["expires_in"].as_u64().unwrap();
    assert!(
        (1..=60).contains(&expires_in),
        "a code lives a minute at most"
    );
    answer.json["code"].as_str().unwrap().to_owned()
}

async fn redeem(iris: &TestIris, code: &str, verifier: &str, client_id: &str) -> Answer {
    let pairs = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("code_verifier", verifier),
        ("client_id", client_id),
    ];
    post_form(iris, &pairs, Auth::None).await
}

/// The Hera pattern: a one-time code bound to the client and the page's S256 challenge,
/// redeemed once at the token endpoint with the verifier.
#[tokio::test]
async fn a_code_is_redeemed_once_with_its_verifier() {
    let (kratos, iris) = start(BridgeResponse::Code).await;
    let code = get_code(&iris, &challenge(VERIFIER)).await;
    assert!(code.starts_with("iris_bc_"));
    let random = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&code["iris_bc_".len()..])
        .unwrap();
    assert!(random.len() * 8 >= 128, "at least 128 random bits");
    let tokens = redeem(&iris, &code, VERIFIER, "spa").await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    tokens.assert_no_store();
    let (_, claims) = jwt_parts(tokens.json["access_token"].as_str().unwrap());
    assert_eq!(claims["client_id"], "spa");
    assert_eq!(
        kratos.calls(),
        1,
        "the session was resolved when the code was issued"
    );
    redeem(&iris, &code, VERIFIER, "spa")
        .await
        .assert_error(400, "invalid_grant");
}

/// A wrong verifier, a code for another client, an expired code: invalid_grant.
#[tokio::test]
async fn bad_redemptions_are_invalid_grant() {
    let kratos = Kratos::start().await;
    kratos.add_cookie(COOKIE, Entry::Session(SessionRecord::alice()));
    let mut raw = bridge_config(&kratos, &[APP], BridgeResponse::Code);
    raw.bridge.code_ttl = GoDuration(Duration::from_secs(1));
    let iris = TestIris::start(raw).await;
    let code = get_code(&iris, &challenge(VERIFIER)).await;
    redeem(&iris, &code, &"A".repeat(43), "spa")
        .await
        .assert_error(400, "invalid_grant");
    // The failed attempt consumed the code: the right verifier is too late.
    redeem(&iris, &code, VERIFIER, "spa")
        .await
        .assert_error(400, "invalid_grant");
    let code = get_code(&iris, &challenge(VERIFIER)).await;
    redeem(&iris, &code, VERIFIER, "orders-service")
        .await
        .assert_error(400, "invalid_grant");
    let code = get_code(&iris, &challenge(VERIFIER)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    redeem(&iris, &code, VERIFIER, "spa")
        .await
        .assert_error(400, "invalid_grant");
    let code = get_code(&iris, &challenge(VERIFIER)).await;
    redeem(&iris, &code, "short", "spa")
        .await
        .assert_error(400, "invalid_request");
    // No S256 challenge, no code.
    let plain = serde_urlencoded::to_string([
        ("code_challenge", VERIFIER),
        ("code_challenge_method", "plain"),
    ])
    .unwrap();
    call(&iris, Some(APP), true, Some(COOKIE), Some(plain))
        .await
        .assert_error(400, "invalid_request");
    call(&iris, Some(APP), true, Some(COOKIE), None)
        .await
        .assert_error(400, "invalid_request");
}

/// In front of Hydra, authorization codes Iris did not issue pass through to Hydra untouched.
#[tokio::test]
async fn hydras_codes_pass_through() {
    let kratos = Kratos::start().await;
    kratos.add_cookie(COOKIE, Entry::Session(SessionRecord::alice()));
    let hydra = Hydra::start().await;
    let mut raw = bridge_config(&kratos, &[APP], BridgeResponse::Code);
    raw.hydra = Some(HydraConfig {
        public_url: hydra.public_url(),
        admin_url: hydra.admin_url(),
        ..Default::default()
    });
    let iris = TestIris::start(raw).await;
    let answer = redeem(&iris, "ory_ac_hydras-own-code", VERIFIER, "spa").await;
    assert_eq!(
        hydra.token_requests().len(),
        1,
        "Hydra answered: {}",
        answer.json
    );
    assert_eq!(
        hydra.token_requests()[0].form_value("code"),
        Some("ory_ac_hydras-own-code")
    );
    // Iris's codes stay Iris's.
    let code = get_code(&iris, &challenge(VERIFIER)).await;
    assert_eq!(redeem(&iris, &code, VERIFIER, "spa").await.status, 200);
    assert_eq!(hydra.token_requests().len(), 1);
}
