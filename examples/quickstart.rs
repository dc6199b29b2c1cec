//! Quickstart: Iris exchanging a Kratos session for an audience-restricted access token.
//!
//! Runs everything on loopback: a Kratos-compatible stand-in with one signed-in user (the same
//! stand-in the tests use), Iris standalone with a signing key and one static client, and a
//! backend service that performs the RFC 8693 exchange with reqwest. It prints the response, the
//! decoded tokens, and whether their signatures verify against Iris's served JWKS.
//!
//! `cargo run --example quickstart`

#[path = "../tests/support/kratos.rs"]
mod kratos;

use std::error::Error;

use iris::config::{AuthMethod, ClientConfig, KeyFileConfig, LogConfig, LogLevel, RawConfig};
use serde_json::{Value, json};

const SESSION_TOKEN: &str = "ory_st_QuickstartQuickstartQuickstart12";
const CLIENT_ID: &str = "orders-service";
const CLIENT_SECRET: &str = "quickstart secret +%&:";
const ORDERS_API: &str = "https://orders.example.com";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    iris::telemetry::init(&LogConfig {
        level: LogLevel::Warn,
        ..Default::default()
    });

    // 1. Kratos, with alice signed in (what `POST /self-service/login/api` would have given her).
    let kratos = kratos::Kratos::start().await;
    kratos.add_token(
        SESSION_TOKEN,
        kratos::Entry::Session(kratos::SessionRecord::alice()),
    );
    println!("Kratos stand-in:   {}", kratos.url());

    // 2. Iris: a signing key from `iris keys generate`, a client whose secret is stored as the
    //    hash `iris hash-secret` prints, and Kratos's public URL.
    let dir = tempfile::tempdir()?;
    let key_path = dir.path().join("iris-es256.jwk");
    std::fs::write(&key_path, iris::keys::generate("ES256", None)?.to_string())?;
    let mut config = RawConfig::default();
    config.serve.public.port = 0;
    config.serve.admin.port = 0;
    config.kratos.public_url = kratos.url();
    config.signing.keys = vec![KeyFileConfig { path: key_path }];
    config.clients = vec![ClientConfig {
        client_id: CLIENT_ID.into(),
        client_secret_hash: Some(iris::clients::hash_secret(CLIENT_SECRET)?),
        client_secret: None,
        token_endpoint_auth_method: AuthMethod::ClientSecretBasic,
        token_endpoint_auth_signing_alg: None,
        jwks: None,
        grant_types: vec![iris::config::TOKEN_EXCHANGE_GRANT.into()],
        audience: vec![ORDERS_API.into()],
        scope: "openid email orders:read".into(),
        metadata: json!({"first_party": true})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    }];
    let settings = config.validate()?;
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let iris_url = format!("http://{}", public.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(iris::run(settings, public, admin, async {
        let _ = stopped.await;
    }));
    println!("Iris:              {iris_url}\n");

    // 3. A backend service exchanges alice's session for a token for the orders API.
    let http = reqwest::Client::builder().no_proxy().build()?;
    let form = serde_urlencoded::to_string([
        ("grant_type", iris::config::TOKEN_EXCHANGE_GRANT),
        ("subject_token", SESSION_TOKEN),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:session",
        ),
        ("audience", ORDERS_API),
        ("scope", "openid email orders:read"),
    ])?;
    println!("POST {iris_url}/oauth2/token");
    println!("  Authorization: Basic <{CLIENT_ID}:***>");
    println!(
        "  {}\n",
        form.replace(SESSION_TOKEN, "<kratos session token>")
    );
    let response = http
        .post(format!("{iris_url}/oauth2/token"))
        .basic_auth(form_encode(CLIENT_ID), Some(form_encode(CLIENT_SECRET)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    println!("HTTP {status}\n{}\n", serde_json::to_string_pretty(&body)?);
    if !status.is_success() {
        return Err(format!("the exchange failed: {body}").into());
    }

    // 4. What the orders API would check: the signature against the JWKS, the issuer, the audience.
    let jwks: jsonwebtoken::jwk::JwkSet = http
        .get(format!("{iris_url}/.well-known/jwks.json"))
        .send()
        .await?
        .json()
        .await?;
    let access_token = body["access_token"].as_str().unwrap_or_default();
    show(
        "access token (RFC 9068)",
        access_token,
        &jwks,
        ORDERS_API,
        &iris_url,
    )?;
    if let Some(id_token) = body["id_token"].as_str() {
        show(
            "ID token (OIDC Core)",
            id_token,
            &jwks,
            CLIENT_ID,
            &iris_url,
        )?;
    }

    let _ = stop.send(());
    server.await??;
    kratos.stop();
    Ok(())
}

/// Prints a JWT's header and claims, and verifies it against the JWKS.
fn show(
    title: &str,
    token: &str,
    jwks: &jsonwebtoken::jwk::JwkSet,
    audience: &str,
    iris_url: &str,
) -> Result<(), Box<dyn Error>> {
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.clone().unwrap_or_default();
    let jwk = jwks
        .find(&kid)
        .ok_or("the token's kid is not in the JWKS")?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[format!("{iris_url}/")]);
    let verified = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk)?,
        &validation,
    )?;
    println!("== {title}");
    println!("header: {}", serde_json::to_string(&header)?);
    println!(
        "claims: {}",
        serde_json::to_string_pretty(&verified.claims)?
    );
    println!("signature verified against {iris_url}/.well-known/jwks.json (kid {kid}): ok\n");
    Ok(())
}

/// RFC 6749 §2.3.1: the client id and secret are form-urlencoded before Basic encoding.
fn form_encode(value: &str) -> String {
    serde_urlencoded::to_string([("", value)]).unwrap_or_default()[1..].to_owned()
}
