//! DESIGN.md §3 and §8: the tokens Iris mints, checked claim by claim by an independent verifier
//! (openidconnect, RustCrypto) against the JWKS Iris serves, never with Iris's own code.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use iris::config::{KeyFileConfig, RawConfig, TOKEN_EXCHANGE_GRANT};
use openidconnect::core::{
    CoreIdToken, CoreIdTokenClaims, CoreIdTokenVerifier, CoreJsonWebKey, CoreJsonWebKeySet,
    CoreJwsSigningAlgorithm,
};
use openidconnect::{AccessToken, AccessTokenHash, ClientId, IssuerUrl, JsonWebKey, Nonce};
use serde_json::{Value, json};
use sha2::Digest;

use crate::support::*;

const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
const ORDERS: &str = "orders-service";
/// The default `tokens.access_token_ttl` and `tokens.id_token_ttl` (15m).
const DEFAULT_TTL: u64 = 15 * 60;

/// The algorithms Iris signs with, as the independent verifier names them.
const ALGS: [CoreJwsSigningAlgorithm; 3] = [
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::EdDsa,
];

fn secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Kratos holding `session` behind [`ALICE_TOKEN`], and Iris configured by `configure`.
async fn start_with(
    session: SessionRecord,
    configure: impl FnOnce(&mut RawConfig),
) -> (Kratos, TestIris) {
    let kratos = Kratos::start().await;
    kratos.add_token(ALICE_TOKEN, Entry::Session(session));
    let mut raw = config(&kratos);
    configure(&mut raw);
    let iris = TestIris::start(raw).await;
    (kratos, iris)
}

/// The standalone default issuer: `http://{serve.public.host}:{real port}/` (DESIGN.md §8).
fn issuer(iris: &TestIris) -> String {
    format!("http://127.0.0.1:{}/", iris.addr.port())
}

async fn get_json(url: &str) -> Value {
    let response = http().get(url).send().await.expect("GET");
    assert_eq!(response.status().as_u16(), 200, "{url}");
    response.json().await.expect("JSON")
}

/// The served JWKS, raw and as the independent verifier reads it.
async fn served_jwks(iris: &TestIris) -> (Value, CoreJsonWebKeySet) {
    let raw = get_json(&format!("{}/.well-known/jwks.json", iris.url())).await;
    let parsed = serde_json::from_value(raw.clone()).expect("the JWKS parses as RFC 7517");
    (raw, parsed)
}

/// A successful exchange's JSON, with `extra` parameters, as `orders-service`.
async fn exchange_ok(iris: &TestIris, extra: &[(&str, &str)]) -> Value {
    let answer = exchange_as_orders(iris, extra).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    answer.json
}

fn token<'a>(json: &'a Value, member: &str) -> &'a str {
    json[member]
        .as_str()
        .unwrap_or_else(|| panic!("{member} missing: {json}"))
}

/// Verifies a compact JWS with the key its `kid` names in `jwks`, with RustCrypto through
/// openidconnect's `JsonWebKey::verify_signature`. Returns the header and the claims.
fn verify_jws(token: &str, jwks: &CoreJsonWebKeySet) -> Result<(Value, Value), String> {
    let segments: Vec<&str> = token.split('.').collect();
    let [header_b64, claims_b64, signature_b64] = segments[..] else {
        return Err(format!("{} segments, not 3", segments.len()));
    };
    let decode_json = |segment: &str| -> Result<Value, String> {
        let bytes = B64.decode(segment).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    };
    let header = decode_json(header_b64)?;
    let claims = decode_json(claims_b64)?;
    // AT-1: signed, never `none`, never a shared secret.
    let alg: CoreJwsSigningAlgorithm =
        serde_json::from_value(header["alg"].clone()).map_err(|e| e.to_string())?;
    if !ALGS.contains(&alg) {
        return Err(format!(
            "alg {} is not an asymmetric alg Iris signs with",
            header["alg"]
        ));
    }
    let kid = header["kid"].as_str().ok_or("no kid")?;
    let key: &CoreJsonWebKey = jwks
        .keys()
        .iter()
        .find(|k| k.key_id().map(|id| id.as_str()) == Some(kid))
        .ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    let signature = B64.decode(signature_b64).map_err(|e| e.to_string())?;
    key.verify_signature(
        &alg,
        format!("{header_b64}.{claims_b64}").as_bytes(),
        &signature,
    )
    .map_err(|e| e.to_string())?;
    Ok((header, claims))
}

/// ID-3: there is no authentication request, so there must be no nonce.
fn no_nonce(nonce: Option<&Nonce>) -> Result<(), String> {
    match nonce {
        None => Ok(()),
        Some(_) => Err("a nonce that nobody asked for".into()),
    }
}

/// Verifies an ID token as an OIDC relying party named `client_id` would (OIDC Core §3.1.3.7).
fn verify_id_token(
    token: &str,
    iris: &TestIris,
    client_id: &str,
    jwks: &CoreJsonWebKeySet,
    alg: &CoreJwsSigningAlgorithm,
) -> Result<CoreIdTokenClaims, String> {
    let verifier = CoreIdTokenVerifier::new_public_client(
        ClientId::new(client_id.to_owned()),
        IssuerUrl::new(issuer(iris)).unwrap(),
        jwks.clone(),
    )
    .set_allowed_algs([alg.clone()]);
    let id_token: CoreIdToken = token.parse().map_err(|e| format!("not a JWT: {e}"))?;
    id_token
        .into_claims(&verifier, no_nonce)
        .map_err(|e| e.to_string())
}

/// OIDC Core §3.1.3.6, computed here: the left half of SHA-256 (SHA-512 for Ed25519).
fn expected_at_hash(access_token: &str, alg: &CoreJwsSigningAlgorithm) -> String {
    if *alg == CoreJwsSigningAlgorithm::EdDsa {
        B64.encode(&sha2::Sha512::digest(access_token.as_bytes())[..32])
    } else {
        B64.encode(&sha2::Sha256::digest(access_token.as_bytes())[..16])
    }
}

fn names(object: &Value) -> BTreeSet<&str> {
    object
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {object}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set<'a>(items: &[&'a str]) -> BTreeSet<&'a str> {
    items.iter().copied().collect()
}

/// Flips one base64url character of segment `index`, keeping the token well-formed.
fn tamper(token: &str, index: usize) -> String {
    let mut segments: Vec<String> = token.split('.').map(String::from).collect();
    let segment = &mut segments[index];
    let at = segment.len() / 2;
    let old = segment.as_bytes()[at];
    let new = if old == b'A' { "B" } else { "A" };
    segment.replace_range(at..at + 1, new);
    segments.join(".")
}

/// Re-encodes the claims of a token with `change` applied, keeping header and signature.
fn with_claims(token: &str, change: impl FnOnce(&mut Value)) -> String {
    let segments: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&B64.decode(segments[1]).unwrap()).unwrap();
    change(&mut claims);
    let claims = B64.encode(claims.to_string());
    format!("{}.{claims}.{}", segments[0], segments[2])
}

/// AT-1, AT-2, AT-3, AT-4: the access token's header and every claim, verified against the JWKS.
#[tokio::test]
async fn access_token_is_an_rfc9068_jwt_with_every_claim() {
    let alice = SessionRecord::alice();
    let (_kratos, iris) = start_with(alice.clone(), |_| {}).await;
    let before = now();
    let json = exchange_ok(&iris, &[("scope", "orders:read profile")]).await;
    let after = now();
    let (raw_jwks, jwks) = served_jwks(&iris).await;

    let (header, claims) =
        verify_jws(token(&json, "access_token"), &jwks).expect("the access token verifies");
    // AT-1: explicit typing, asymmetric alg, kid of the first (here the only) configured key.
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "ES256", "the ephemeral default key is ES256");
    assert_eq!(header["kid"], raw_jwks["keys"][0]["kid"]);
    assert!(header["kid"].as_str().is_some_and(|k| !k.is_empty()));

    // AT-2, AT-3, AT-4: exactly these claims.
    assert_eq!(
        names(&claims),
        set(&[
            "iss",
            "sub",
            "aud",
            "client_id",
            "iat",
            "exp",
            "jti",
            "scope",
            "auth_time",
            "acr",
            "amr",
            "sid"
        ]),
        "{claims}"
    );
    assert_eq!(claims["iss"], issuer(&iris));
    assert_eq!(claims["sub"], alice.identity_id.as_str());
    assert_eq!(
        claims["aud"],
        json!([ORDERS_API]),
        "aud is the array of granted audiences"
    );
    assert_eq!(claims["client_id"], ORDERS);
    let iat = claims["iat"].as_u64().expect("iat is a NumericDate");
    assert!(
        (before..=after).contains(&iat),
        "iat {iat} not in {before}..={after}"
    );
    assert_eq!(
        claims["exp"].as_u64(),
        Some(iat + DEFAULT_TTL),
        "access_token_ttl is 15m"
    );
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    // TX-26: one space-separated string, in the requested order.
    assert_eq!(claims["scope"], "orders:read profile");
    assert_eq!(
        claims["auth_time"].as_u64(),
        Some(secs(alice.authenticated_at))
    );
    assert_eq!(claims["acr"], "aal1");
    assert_eq!(claims["amr"], json!(["password"]));
    assert_eq!(claims["sid"], alice.id.as_str());
    assert_eq!(json["expires_in"].as_u64(), Some(DEFAULT_TTL));
    iris.stop().await;
}

/// AT-1: the independent verifier refuses an access token whose claims or signature changed.
#[tokio::test]
async fn tampered_access_tokens_fail_verification() {
    let (_kratos, iris) = start_with_alice().await;
    let json = exchange_ok(&iris, &[]).await;
    let (_, jwks) = served_jwks(&iris).await;
    let access_token = token(&json, "access_token");
    verify_jws(access_token, &jwks).expect("the untouched token verifies");

    let other_sub = with_claims(access_token, |c| c["sub"] = json!("mallory"));
    let longer = with_claims(access_token, |c| c["exp"] = json!(4_102_444_800u64));
    let none_alg = {
        let segments: Vec<&str> = access_token.split('.').collect();
        let header = B64.encode(r#"{"alg":"none","typ":"at+jwt"}"#);
        format!("{header}.{}.", segments[1])
    };
    let unknown_kid = {
        let (mut header, _) = jwt_parts(access_token);
        header["kid"] = json!("not-a-published-kid");
        let rest = access_token.split_once('.').unwrap().1;
        format!("{}.{rest}", B64.encode(header.to_string()))
    };
    for (what, forged) in [
        ("payload byte", tamper(access_token, 1)),
        ("signature byte", tamper(access_token, 2)),
        ("sub", other_sub),
        ("exp", longer),
        ("alg none", none_alg),
        ("kid", unknown_kid),
    ] {
        assert!(
            verify_jws(&forged, &jwks).is_err(),
            "a token with a changed {what} verified"
        );
    }
    iris.stop().await;
}

/// AT-2: every exchange gets a fresh `jti`.
#[tokio::test]
async fn jti_is_unique_per_exchange() {
    let (_kratos, iris) = start_with_alice().await;
    let (_, jwks) = served_jwks(&iris).await;
    let mut jtis = BTreeSet::new();
    for _ in 0..2 {
        let json = exchange_ok(&iris, &[]).await;
        let (_, claims) = verify_jws(token(&json, "access_token"), &jwks).unwrap();
        jtis.insert(claims["jti"].as_str().unwrap().to_owned());
    }
    assert_eq!(jtis.len(), 2, "two exchanges, two jtis: {jtis:?}");
    iris.stop().await;
}

/// DESIGN.md §8: no scope requested means no `scope` claim and no `scope` member.
#[tokio::test]
async fn no_requested_scope_means_no_scope_claim() {
    let (_kratos, iris) = start_with_alice().await;
    let json = exchange_ok(&iris, &[]).await;
    let (_, jwks) = served_jwks(&iris).await;
    let (_, claims) = verify_jws(token(&json, "access_token"), &jwks).unwrap();
    assert!(claims.get("scope").is_none(), "{claims}");
    assert!(json.get("scope").is_none(), "{json}");
    assert!(
        json.get("id_token").is_none(),
        "no openid, no ID token: {json}"
    );
    iris.stop().await;
}

/// ID-1..ID-4: with `openid` granted, an ID token that an OIDC relying party accepts, every claim
/// checked, `at_hash` binding it to the access token and no nonce.
#[tokio::test]
async fn id_token_is_an_oidc_core_token_with_every_claim() {
    let alice = SessionRecord::alice();
    let (_kratos, iris) = start_with(alice.clone(), |_| {}).await;
    let before = now();
    let json = exchange_ok(&iris, &[("scope", "openid orders:read")]).await;
    let after = now();
    let (_, jwks) = served_jwks(&iris).await;
    let access_token = token(&json, "access_token");
    let id_token = token(&json, "id_token");
    let alg = CoreJwsSigningAlgorithm::EcdsaP256Sha256;

    // The relying party's view: signature, iss, aud, exp, typ, alg, nonce.
    let verified = verify_id_token(id_token, &iris, ORDERS, &jwks, &alg)
        .expect("an OIDC relying party accepts the ID token");
    assert_eq!(verified.issuer().as_str(), issuer(&iris));
    assert_eq!(verified.subject().as_str(), alice.identity_id);
    let audiences: Vec<&str> = verified.audiences().iter().map(|a| a.as_str()).collect();
    assert_eq!(
        audiences,
        [ORDERS],
        "ID-7: the ID token's aud is the client"
    );
    assert_eq!(
        verified.authorized_party().map(|c| c.as_str()),
        Some(ORDERS)
    );
    let iat = verified.issue_time().timestamp() as u64;
    assert!((before..=after).contains(&iat));
    assert_eq!(verified.expiration().timestamp() as u64, iat + DEFAULT_TTL);
    assert_eq!(
        verified.auth_time().map(|t| t.timestamp() as u64),
        Some(secs(alice.authenticated_at))
    );
    assert_eq!(
        verified.auth_context_ref().map(|a| a.as_str()),
        Some("aal1")
    );
    let amr: Vec<&str> = verified
        .auth_method_refs()
        .expect("amr")
        .iter()
        .map(|m| m.as_str())
        .collect();
    assert_eq!(amr, ["password"]);
    assert!(verified.nonce().is_none(), "ID-3: no nonce");
    assert!(
        verified.email().is_none(),
        "no email without the email scope"
    );
    assert!(verified.email_verified().is_none());

    // ID-4 at_hash: our own SHA-256 and openidconnect's agree with the claim.
    let at_hash = verified.access_token_hash().expect("at_hash").as_str();
    assert_eq!(at_hash, expected_at_hash(access_token, &alg));
    let key = token_key(id_token, &jwks);
    let library_hash =
        AccessTokenHash::from_token(&AccessToken::new(access_token.to_owned()), &alg, key).unwrap();
    assert_eq!(at_hash, library_hash.as_str());

    // The raw token: header and the exact claim set (sid is not a standard claim).
    let (header, claims) = verify_jws(id_token, &jwks).unwrap();
    assert_eq!(header["typ"], "JWT", "ID-5: never at+jwt");
    let (access_header, _) = jwt_parts(access_token);
    assert_eq!(header["kid"], access_header["kid"]);
    assert_eq!(
        names(&claims),
        set(&[
            "iss",
            "sub",
            "aud",
            "azp",
            "iat",
            "exp",
            "auth_time",
            "sid",
            "acr",
            "amr",
            "at_hash"
        ]),
        "{claims}"
    );
    assert_eq!(claims["aud"], ORDERS, "aud is the client_id");
    assert_eq!(claims["sid"], alice.id.as_str());
    assert_eq!(json["scope"], "openid orders:read");
    iris.stop().await;
}

/// The JWKS key a token's `kid` names.
fn token_key<'a>(token: &str, jwks: &'a CoreJsonWebKeySet) -> &'a CoreJsonWebKey {
    let (header, _) = jwt_parts(token);
    jwks.keys()
        .iter()
        .find(|k| k.key_id().map(|id| id.as_str()) == header["kid"].as_str())
        .expect("kid in JWKS")
}

/// AT-6: an access token (`typ: at+jwt`) is never accepted as an ID token, nor a forged ID token.
#[tokio::test]
async fn access_tokens_and_forged_id_tokens_are_not_id_tokens() {
    let (_kratos, iris) = start_with_alice().await;
    let json = exchange_ok(&iris, &[("scope", "openid")]).await;
    let (_, jwks) = served_jwks(&iris).await;
    let alg = CoreJwsSigningAlgorithm::EcdsaP256Sha256;
    let id_token = token(&json, "id_token");
    verify_id_token(id_token, &iris, ORDERS, &jwks, &alg).expect("the real one verifies");

    let error = verify_id_token(token(&json, "access_token"), &iris, ORDERS, &jwks, &alg)
        .expect_err("an access token passed as an ID token");
    assert!(error.contains("at+jwt") || error.contains("aud"), "{error}");
    for forged in [
        tamper(id_token, 1),
        tamper(id_token, 2),
        with_claims(id_token, |c| c["sub"] = json!("mallory")),
    ] {
        assert!(verify_id_token(&forged, &iris, ORDERS, &jwks, &alg).is_err());
    }
    assert!(
        verify_id_token(id_token, &iris, "another-client", &jwks, &alg).is_err(),
        "another client must not accept it"
    );
    iris.stop().await;
}

/// DESIGN.md §3: under the `email` scope the ID token carries `email` and `email_verified`.
#[tokio::test]
async fn email_scope_adds_email_and_email_verified() {
    let (_kratos, iris) = start_with_alice().await;
    let json = exchange_ok(&iris, &[("scope", "openid email")]).await;
    let (_, jwks) = served_jwks(&iris).await;
    let id_token = token(&json, "id_token");
    let verified = verify_id_token(
        id_token,
        &iris,
        ORDERS,
        &jwks,
        &CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    )
    .unwrap();
    assert_eq!(
        verified.email().map(|e| e.as_str()),
        Some("alice@example.com")
    );
    assert_eq!(verified.email_verified(), Some(true));
    let (_, claims) = verify_jws(id_token, &jwks).unwrap();
    assert_eq!(claims["email_verified"], json!(true), "a JSON boolean");
    // The access token stays free of profile data.
    let (_, access) = verify_jws(token(&json, "access_token"), &jwks).unwrap();
    assert!(access.get("email").is_none(), "{access}");
    iris.stop().await;
}

/// DESIGN.md §8: `email_verified` is false when the address equal to the email trait is not
/// verified, even if another address is.
#[tokio::test]
async fn email_verified_is_false_for_an_unverified_address() {
    let mut unverified = SessionRecord::alice();
    unverified.verifiable_addresses = vec![("alice@example.com".into(), false)];
    let mut other_verified = SessionRecord::alice();
    other_verified.verifiable_addresses = vec![
        ("alice@example.com".into(), false),
        ("alice@elsewhere.example".into(), true),
    ];
    let kratos = Kratos::start().await;
    let other_token = "ory_st_OTHERotherOTHERotherOTHERotherAB";
    kratos.add_token(ALICE_TOKEN, Entry::Session(unverified));
    kratos.add_token(other_token, Entry::Session(other_verified));
    let iris = TestIris::start(config(&kratos)).await;
    let (_, jwks) = served_jwks(&iris).await;
    for subject_token in [ALICE_TOKEN, other_token] {
        let answer = post_form(
            &iris,
            &exchange_form(subject_token, &[("scope", "openid email")]),
            Auth::Basic(ORDERS, ORDERS_SECRET),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.json);
        let (_, claims) = verify_jws(token(&answer.json, "id_token"), &jwks).unwrap();
        assert_eq!(claims["email"], "alice@example.com");
        assert_eq!(claims["email_verified"], json!(false), "{subject_token}");
    }
    iris.stop().await;
}

/// P-6: no token outlives the session: a session ending in two minutes caps `exp` and
/// `expires_in` of both tokens below the 15m default.
#[tokio::test]
async fn tokens_never_outlive_the_session() {
    let mut short = SessionRecord::alice();
    short.expires_at = SystemTime::now() + Duration::from_secs(120);
    let session_end = secs(short.expires_at);
    let (_kratos, iris) = start_with(short, |_| {}).await;
    let json = exchange_ok(&iris, &[("scope", "openid")]).await;
    let (_, jwks) = served_jwks(&iris).await;

    let expires_in = json["expires_in"].as_u64().expect("expires_in");
    assert!((1..=120).contains(&expires_in), "expires_in {expires_in}");
    for member in ["access_token", "id_token"] {
        let (_, claims) = verify_jws(token(&json, member), &jwks).unwrap();
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert!(
            exp <= session_end,
            "{member}: exp {exp} after the session's {session_end}"
        );
        assert!(exp - iat < DEFAULT_TTL, "{member} kept the 15m default");
        if member == "access_token" {
            assert_eq!(expires_in, exp - iat, "expires_in matches the access token");
        }
    }
    // The ID token asked for directly is clamped too.
    let json = exchange_ok(&iris, &[("requested_token_type", ID_TOKEN_TYPE)]).await;
    let (_, claims) = verify_jws(token(&json, "access_token"), &jwks).unwrap();
    assert!(claims["exp"].as_u64().unwrap() <= session_end);
    assert!(json["expires_in"].as_u64().unwrap() <= 120);
    iris.stop().await;
}

/// DESIGN.md §8: `requested_token_type=...:jwt` returns the same access token (`typ` stays
/// `at+jwt`), labelled `...:jwt`, usable as `Bearer`.
#[tokio::test]
async fn requested_jwt_is_the_access_token_labelled_jwt() {
    let (_kratos, iris) = start_with_alice().await;
    let json = exchange_ok(&iris, &[("requested_token_type", JWT_TYPE)]).await;
    let (_, jwks) = served_jwks(&iris).await;
    assert_eq!(json["issued_token_type"], JWT_TYPE);
    assert_eq!(json["token_type"], "Bearer");
    let (header, claims) = verify_jws(token(&json, "access_token"), &jwks).unwrap();
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(claims["aud"], json!([ORDERS_API]));
    assert_eq!(claims["client_id"], ORDERS);
    assert!(json.get("id_token").is_none());
    iris.stop().await;
}

/// ID-6: `requested_token_type=...:id_token` puts the ID token in `access_token` with
/// `token_type` `N_A`, even without `scope=openid` (implied), and no `id_token` member.
#[tokio::test]
async fn requested_id_token_is_returned_in_access_token() {
    let alice = SessionRecord::alice();
    let (_kratos, iris) = start_with(alice.clone(), |_| {}).await;
    let json = exchange_ok(&iris, &[("requested_token_type", ID_TOKEN_TYPE)]).await;
    let (_, jwks) = served_jwks(&iris).await;
    assert_eq!(json["issued_token_type"], ID_TOKEN_TYPE);
    assert_eq!(
        json["token_type"], "N_A",
        "TX-16: not usable as an access token"
    );
    assert!(json.get("id_token").is_none(), "{json}");
    assert!(json.get("refresh_token").is_none());

    let id_token = token(&json, "access_token");
    let verified = verify_id_token(
        id_token,
        &iris,
        ORDERS,
        &jwks,
        &CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    )
    .expect("the issued token is an ID token for the client");
    assert_eq!(verified.subject().as_str(), alice.identity_id);
    assert!(
        verified.access_token_hash().is_none(),
        "no access token was issued, so no at_hash"
    );
    let (header, claims) = verify_jws(id_token, &jwks).unwrap();
    assert_eq!(header["typ"], "JWT");
    assert_eq!(claims["sid"], alice.id.as_str());
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(
        json["expires_in"].as_u64(),
        Some(lifetime),
        "expires_in is the ID token's"
    );
    iris.stop().await;
}

/// TX-14..TX-19, OA-7: the success body has exactly the RFC 8693 members for each kind of
/// request, never a refresh token, as uncached JSON.
#[tokio::test]
async fn response_has_exactly_the_rfc8693_members() {
    let (_kratos, iris) = start_with_alice().await;
    let base = [
        "access_token",
        "issued_token_type",
        "token_type",
        "expires_in",
    ];
    // (extra parameters, members beyond the four always present)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 4] = [
        (&[], &[]),
        (&[("scope", "orders:read")], &["scope"]),
        (&[("scope", "openid email")], &["scope", "id_token"]),
        (&[("requested_token_type", ID_TOKEN_TYPE)], &["scope"]),
    ];
    for (extra, more) in cases {
        let answer = exchange_as_orders(&iris, extra).await;
        assert_eq!(answer.status, 200, "{extra:?}: {}", answer.json);
        answer.assert_no_store();
        assert!(
            answer
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "OA-7"
        );
        let expected: BTreeSet<&str> = base.iter().chain(more).copied().collect();
        assert_eq!(names(&answer.json), expected, "{extra:?}: {}", answer.json);
        assert!(
            answer.json["expires_in"].is_u64(),
            "TX-17: seconds as a number"
        );
        assert!(answer.json.get("refresh_token").is_none(), "TX-19");
    }
    let json = exchange_ok(&iris, &[("scope", "openid email")]).await;
    assert_eq!(json["scope"], "openid email");
    assert_eq!(json["issued_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(json["token_type"], "Bearer");
    let json = exchange_ok(&iris, &[("requested_token_type", ID_TOKEN_TYPE)]).await;
    assert_eq!(
        json["scope"], "openid",
        "requesting an ID token grants openid"
    );
    iris.stop().await;
}

/// A temporary directory holding a key file per `(alg, kid)`, and the `signing.keys` entries.
fn key_files(keys: &[(&str, &str)]) -> (tempfile::TempDir, Vec<KeyFileConfig>) {
    let dir = tempfile::TempDir::new().unwrap();
    let entries = keys
        .iter()
        .map(|(alg, kid)| {
            let path = dir.path().join(format!("{kid}.jwk"));
            let private = iris::keys::generate(alg, Some(kid)).unwrap();
            std::fs::write(&path, private.to_string()).unwrap();
            KeyFileConfig { path }
        })
        .collect();
    (dir, entries)
}

/// AT-7: the JWKS is public keys only: no private or symmetric members (RFC 7518 §6).
fn assert_public_only(jwks: &Value) {
    for key in jwks["keys"].as_array().expect("keys") {
        for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            assert!(
                key.get(private).is_none(),
                "private member {private}: {key}"
            );
        }
    }
}

/// AT-1: keys read from JWK files sign tokens that verify, for ES256, RS256 and EdDSA, with the
/// at_hash of each alg's hash (SHA-512 for Ed25519), and discovery names the alg.
#[tokio::test]
async fn file_keys_of_every_algorithm_sign_verifiable_tokens() {
    for (name, alg) in ["ES256", "RS256", "EdDSA"].into_iter().zip(ALGS) {
        let kid = format!("{}-key", name.to_lowercase());
        let (_dir, keys) = key_files(&[(name, &kid)]);
        let (_kratos, iris) =
            start_with(SessionRecord::alice(), |raw| raw.signing.keys = keys).await;
        let json = exchange_ok(&iris, &[("scope", "openid")]).await;
        let (raw_jwks, jwks) = served_jwks(&iris).await;
        assert_public_only(&raw_jwks);
        assert_eq!(raw_jwks["keys"].as_array().unwrap().len(), 1, "{name}");

        let access_token = token(&json, "access_token");
        let (header, _) =
            verify_jws(access_token, &jwks).unwrap_or_else(|e| panic!("{name} access token: {e}"));
        assert_eq!(
            (header["alg"].as_str(), header["kid"].as_str()),
            (Some(name), Some(&*kid))
        );
        assert_eq!(header["typ"], "at+jwt");
        let verified = verify_id_token(token(&json, "id_token"), &iris, ORDERS, &jwks, &alg)
            .unwrap_or_else(|e| panic!("{name} ID token: {e}"));
        assert_eq!(
            verified.access_token_hash().map(|h| h.as_str().to_owned()),
            Some(expected_at_hash(access_token, &alg)),
            "{name} at_hash"
        );
        assert!(
            verify_jws(&tamper(access_token, 2), &jwks).is_err(),
            "{name} tampered"
        );

        let discovery = get_json(&format!("{}/.well-known/openid-configuration", iris.url())).await;
        assert_eq!(
            discovery["id_token_signing_alg_values_supported"],
            json!([name])
        );
        iris.stop().await;
    }
}

/// P-10: with two keys configured the first signs and both are published.
#[tokio::test]
async fn the_first_key_signs_and_every_key_is_published() {
    let (_dir, keys) = key_files(&[("EdDSA", "current"), ("ES256", "next")]);
    let (_kratos, iris) = start_with(SessionRecord::alice(), |raw| raw.signing.keys = keys).await;
    let json = exchange_ok(&iris, &[("scope", "openid")]).await;
    let (raw_jwks, jwks) = served_jwks(&iris).await;
    assert_public_only(&raw_jwks);
    let kids: Vec<&str> = raw_jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, ["current", "next"]);
    for key in raw_jwks["keys"].as_array().unwrap() {
        assert_eq!(key["use"], "sig", "{key}");
    }
    for member in ["access_token", "id_token"] {
        let (header, _) = verify_jws(token(&json, member), &jwks).unwrap();
        assert_eq!(
            (header["kid"].as_str(), header["alg"].as_str()),
            (Some("current"), Some("EdDSA"))
        );
    }
    let discovery = get_json(&format!(
        "{}/.well-known/oauth-authorization-server",
        iris.url()
    ))
    .await;
    let algs: BTreeSet<&str> = discovery["id_token_signing_alg_values_supported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(algs, set(&["EdDSA", "ES256"]));
    iris.stop().await;
}

/// AT-7, BCP-5: both discovery documents name the issuer, the token endpoint, the JWKS, the
/// token-exchange grant, the client authentication methods and the configured key algs.
#[tokio::test]
async fn discovery_documents_advertise_the_grant_and_the_keys() {
    let (_kratos, iris) = start_with_alice().await;
    let openid = get_json(&format!("{}/.well-known/openid-configuration", iris.url())).await;
    let oauth = get_json(&format!(
        "{}/.well-known/oauth-authorization-server",
        iris.url()
    ))
    .await;
    for document in [&openid, &oauth] {
        assert_eq!(document["issuer"], issuer(&iris));
        assert_eq!(document["token_endpoint"], iris.token_url());
        assert_eq!(
            document["jwks_uri"],
            format!("{}/.well-known/jwks.json", iris.url())
        );
        let grants = document["grant_types_supported"]
            .as_array()
            .expect("grants");
        assert!(grants.contains(&json!(TOKEN_EXCHANGE_GRANT)), "{document}");
        let methods = document["token_endpoint_auth_methods_supported"]
            .as_array()
            .expect("auth methods");
        for method in [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ] {
            assert!(methods.contains(&json!(method)), "{method}: {document}");
        }
        assert_eq!(
            document["id_token_signing_alg_values_supported"],
            json!(["ES256"])
        );
    }
    assert_eq!(
        (
            &openid["issuer"],
            &openid["jwks_uri"],
            &openid["token_endpoint"]
        ),
        (
            &oauth["issuer"],
            &oauth["jwks_uri"],
            &oauth["token_endpoint"]
        ),
        "AT-7: the two documents agree"
    );
    // The advertised jwks_uri serves the key that signs.
    let jwks = get_json(openid["jwks_uri"].as_str().unwrap()).await;
    assert_public_only(&jwks);
    let json = exchange_ok(&iris, &[]).await;
    let jwks: CoreJsonWebKeySet = serde_json::from_value(jwks).unwrap();
    verify_jws(token(&json, "access_token"), &jwks).expect("verifies with the advertised JWKS");
    iris.stop().await;
}
