//! Micro-benchmarks (criterion): reading a token-exchange form, and minting an access token plus
//! an ID token with each signing algorithm.
//!
//! `cargo bench --bench micro` (or `bash benches/run.sh`, which runs it after the load harness).
//!
//! `sign_only/*` signs the same bytes with a key parsed once (aws-lc-rs, the library
//! jsonwebtoken signs with here): the difference to `jsonwebtoken_encode/*` is what
//! jsonwebtoken spends per token besides the signature, chiefly parsing the PKCS#8/DER key
//! again on every `encode`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use iris::clients::Client;
use iris::exchange::{Form, SubjectTokenTypes, parse_request};
use iris::hydra::ClientRecord;
use iris::keys::{self, KeySet, SIGNING_ALGS};
use iris::kratos::Session;
use iris::policy::Grant;
use iris::tokens::{Issuance, Minter, RequestedTokenType};
use serde_json::json;

/// What a backend service sends: the cookbook's session type, a scope, an audience.
const FORM: &[u8] = b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
&subject_token=ory_st_ALICEaliceALICEaliceALICEaliceAB\
&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asession\
&scope=openid+email+orders%3Aread&audience=https%3A%2F%2Forders.example.com";

fn types() -> SubjectTokenTypes {
    SubjectTokenTypes {
        session_token: vec![
            "urn:ietf:params:oauth:token-type:session".into(),
            "urn:x-iris:token-type:kratos-session-token".into(),
        ],
        session_cookie: vec!["urn:x-iris:token-type:kratos-session-cookie".into()],
    }
}

fn form(c: &mut Criterion) {
    let types = types();
    let mut group = c.benchmark_group("form");
    group.bench_function("parse", |b| {
        b.iter(|| Form::parse(black_box(FORM)).unwrap())
    });
    group.bench_function("parse_and_validate", |b| {
        b.iter(|| {
            let form = Form::parse(black_box(FORM)).unwrap();
            parse_request(&form, &types).unwrap()
        })
    });
    group.finish();
}

fn client() -> Client {
    let record: ClientRecord = serde_json::from_value(json!({
        "client_id": "orders-service",
        "grant_types": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        "audience": ["https://orders.example.com"],
        "scope": "openid email orders:read",
        "metadata": {"first_party": true},
        "token_endpoint_auth_method": "client_secret_basic",
    }))
    .unwrap();
    Client::from_hydra(&record)
}

fn session() -> Session {
    let now = SystemTime::now();
    Session {
        id: "9b1c6c1e-0f4a-4b8e-9a51-2f3f3c1d9e10".into(),
        identity_id: "5ff66179-c240-4703-b0d8-494592cefff5".into(),
        active: true,
        identity_state: "active".into(),
        expires_at: now + Duration::from_secs(24 * 3600),
        authenticated_at: now - Duration::from_secs(60),
        aal: "aal1".into(),
        amr: vec!["password".into()],
        email: Some("alice@example.com".into()),
        email_verified: true,
        cacheable_for: None,
    }
}

/// A key set holding one freshly generated key of `alg`, loaded the way `iris serve` loads it.
fn key_set(alg: &str, dir: &std::path::Path) -> (Arc<KeySet>, serde_json::Value) {
    let jwk = keys::generate(alg, Some(alg)).unwrap();
    let path = dir.join(format!("{alg}.jwk"));
    std::fs::write(&path, jwk.to_string()).unwrap();
    (Arc::new(KeySet::load(&[path]).unwrap()), jwk)
}

fn mint(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let client = client();
    let session = session();
    let grant = Grant {
        scope: vec!["openid".into(), "email".into(), "orders:read".into()],
        audience: vec!["https://orders.example.com".into()],
    };
    let ttl = Duration::from_secs(900);
    let mut group = c.benchmark_group("mint_access_and_id_token");
    for alg in SIGNING_ALGS {
        let (keys, _) = key_set(alg, dir.path());
        let minter = Minter::new(keys, ttl, ttl);
        group.bench_function(alg, |b| {
            b.iter(|| {
                let issuance = Issuance {
                    issuer: "https://auth.example.com/",
                    client: &client,
                    grant: &grant,
                    session: &session,
                    now: SystemTime::now(),
                };
                let response = minter
                    .mint(black_box(&issuance), RequestedTokenType::AccessToken)
                    .unwrap();
                assert!(response.id_token.is_some());
                response
            })
        });
    }
    group.finish();
}

/// One token: jsonwebtoken's `encode` against the bare signature with a key parsed once.
fn signing(c: &mut Criterion) {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};

    let dir = tempfile::tempdir().unwrap();
    let claims = json!({
        "iss": "https://auth.example.com/", "sub": "5ff66179-c240-4703-b0d8-494592cefff5",
        "aud": ["https://orders.example.com"], "client_id": "orders-service",
        "iat": 1_700_000_000u64, "exp": 1_700_000_900u64, "jti": "AAAAAAAAAAAAAAAAAAAAAA",
        "scope": "openid email orders:read",
    });
    let message = b"eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJodHRwczovL2F1dGguZXhhbXBsZS5jb20vIiwic3ViIjoiNWZmNjYxNzktYzI0MC00NzAzLWIwZDgtNDk0NTkyY2VmZmY1In0";
    let rng = SystemRandom::new();
    for alg in SIGNING_ALGS {
        let (keys, _) = key_set(alg, dir.path());
        let signer = keys.signer();
        let header = jsonwebtoken::Header::new(signer.alg);
        c.bench_function(&format!("jsonwebtoken_encode/{alg}"), |b| {
            b.iter(|| jsonwebtoken::encode(&header, black_box(&claims), &signer.encoding).unwrap())
        });
        let der = signer.encoding.as_bytes();
        c.bench_function(&format!("key_parse_only/{alg}"), |b| match alg {
            "ES256" => b.iter(|| {
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der).unwrap()
            }),
            "RS256" => b.iter(|| drop(RsaKeyPair::from_der(der).unwrap())),
            _ => b.iter(|| Ed25519KeyPair::from_pkcs8(der).unwrap()),
        });
        c.bench_function(&format!("sign_only/{alg}"), |b| match alg {
            "ES256" => {
                let key =
                    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                        .unwrap();
                b.iter(|| key.sign(&rng, black_box(message)).unwrap())
            }
            "RS256" => {
                let key = RsaKeyPair::from_der(der).unwrap();
                let mut out = vec![0u8; key.public_modulus_len()];
                b.iter(|| {
                    key.sign(
                        &signature::RSA_PKCS1_SHA256,
                        &rng,
                        black_box(message),
                        &mut out,
                    )
                    .unwrap()
                })
            }
            _ => {
                let key = Ed25519KeyPair::from_pkcs8(der).unwrap();
                b.iter(|| key.sign(black_box(message)))
            }
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = form, mint, signing
}
criterion_main!(benches);
