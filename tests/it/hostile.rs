//! DESIGN.md §3 steps 1–4 under attack: random and hostile token-endpoint requests never yield a
//! 5xx, a panic (a dropped connection) or a hang, and Iris keeps serving afterwards.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use iris::config::TOKEN_EXCHANGE_GRANT;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::support::*;

const FORM: &str = "application/x-www-form-urlencoded";
const HANG_GUARD: Duration = Duration::from_secs(10);
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const KIB: usize = 1024;

/// Runs `future` under the hang guard.
async fn guarded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {HANG_GUARD:?}"))
}

/// A token-endpoint request as raw material.
#[derive(Clone)]
struct Hostile {
    what: String,
    body: Vec<u8>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Hostile {
    fn new(what: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Hostile {
            what: what.into(),
            body: body.into(),
            headers: vec![(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static(FORM),
            )],
        }
    }

    fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value));
        self
    }

    fn basic(self, id: &str, secret: &str) -> Self {
        let value = HeaderValue::from_str(&basic(id, secret)).unwrap();
        self.header(reqwest::header::AUTHORIZATION, value)
    }

    /// A short, printable description for failure messages.
    fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let body: String = body.chars().take(160).collect();
        format!("{} ({} bytes: {body:?})", self.what, self.body.len())
    }
}

/// Sends one hostile request under the hang guard; the connection must yield a response.
async fn send(client: reqwest::Client, url: String, request: Hostile) -> Answer {
    let description = request.describe();
    let mut builder = client.post(url);
    for (name, value) in request.headers {
        builder = builder.header(name, value);
    }
    let response = guarded(&description, builder.body(request.body).send())
        .await
        .unwrap_or_else(|e| {
            panic!("{description}: no response (a panic drops the connection): {e}")
        });
    guarded(&description, answer(response)).await
}

/// Sends every request, eight at a time, and asserts none got a 5xx. Returns the answers.
async fn storm(iris: &TestIris, requests: Vec<Hostile>) -> Vec<(String, Answer)> {
    let client = http();
    let mut answers = Vec::with_capacity(requests.len());
    for batch in requests.chunks(8) {
        let mut tasks = JoinSet::new();
        for request in batch.iter().cloned() {
            let (client, url) = (client.clone(), iris.token_url());
            tasks.spawn(async move {
                let description = request.describe();
                (description, send(client, url, request).await)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (description, answer) = done.expect("request task");
            assert!(
                answer.status < 500,
                "{description}: {} {}",
                answer.status,
                answer.json
            );
            answers.push((description, answer));
        }
    }
    answers
}

/// After the storm, Iris still answers a valid exchange.
async fn assert_still_serving(iris: &TestIris) {
    let answer = guarded("valid exchange", exchange_as_orders(iris, &[])).await;
    assert_eq!(answer.status, 200, "after the storm: {}", answer.json);
}

/// `grant_type`, `subject_token` and `subject_token_type` of a valid exchange, form-encoded.
fn valid_base() -> String {
    serde_urlencoded::to_string(exchange_form(ALICE_TOKEN, &[])).unwrap()
}

/// A valid exchange body with `extra` appended verbatim.
fn valid_with(extra: &str) -> Vec<u8> {
    format!("{}&{extra}", valid_base()).into_bytes()
}

/// A request authenticated as `orders-service` over Basic.
fn orders(what: impl Into<String>, body: impl Into<Vec<u8>>) -> Hostile {
    Hostile::new(what, body).basic("orders-service", ORDERS_SECRET)
}

/// OA-8: an error is a JSON `{error, error_description}` with one of the RFC 6749 codes.
fn assert_oauth_error(description: &str, answer: &Answer, statuses: &[u16], codes: &[&str]) {
    assert!(
        statuses.contains(&answer.status) && codes.contains(&answer.error()),
        "{description}: {} {}",
        answer.status,
        answer.json
    );
    answer.assert_no_store();
}

/// Random bytes: arbitrary, or from form syntax; a third of them after a valid exchange, so
/// that the random part meets a form that otherwise gets deep.
fn random_body(rng: &mut StdRng) -> Vec<u8> {
    const FORMISH: &[u8] = b"=&%+;abcdefxyzABCF0123456789_:.-\x00\r\n\xff\xc3";
    let len = if rng.gen_bool(0.9) {
        rng.gen_range(0..512)
    } else {
        rng.gen_range(512..8 * KIB)
    };
    let formish = rng.gen_bool(0.5);
    let random: Vec<u8> = (0..len)
        .map(|_| {
            if formish {
                FORMISH[rng.gen_range(0..FORMISH.len())]
            } else {
                rng.r#gen()
            }
        })
        .collect();
    if rng.gen_bool(0.33) {
        [valid_base().as_bytes(), b"&", &random].concat()
    } else {
        random
    }
}

/// Random authentication: none, valid, wrong, or garbage.
fn random_auth(rng: &mut StdRng, request: Hostile, iris: &TestIris) -> Hostile {
    match rng.gen_range(0..6) {
        0 => request,
        1 | 2 => request.basic("orders-service", ORDERS_SECRET),
        // Wrong secrets never name orders-service: brute-force protection must not lock it out.
        3 => request.basic("third-party", "wrong"),
        4 => {
            let mut request = request;
            let assertion =
                client_assertion(jwt_client_key(), "jwt-client", &iris.token_url(), json!({}));
            let extra = format!(
                "&client_assertion_type={}&client_assertion={assertion}",
                form_encode(JWT_BEARER)
            );
            request.body.extend_from_slice(extra.as_bytes());
            request
        }
        _ => {
            let garbage: String = (0..rng.gen_range(0..64))
                .map(|_| rng.gen_range(0x20u8..0x7f) as char)
                .collect();
            let value = HeaderValue::from_str(&format!("Basic {garbage}")).unwrap();
            request.header(reqwest::header::AUTHORIZATION, value)
        }
    }
}

/// P-1, OA-2: hundreds of random byte bodies (seeded) never get a 5xx or a dropped
/// connection, with or without valid client credentials.
#[tokio::test]
async fn random_byte_bodies_never_fail_the_server() {
    let (_kratos, iris) = start_with_alice().await;
    let mut rng = StdRng::seed_from_u64(0x1B15_8693);
    let requests: Vec<Hostile> = (0..300)
        .map(|i| {
            let body = random_body(&mut rng);
            let request = Hostile::new(format!("random body #{i}"), body);
            random_auth(&mut rng, request, &iris)
        })
        .collect();
    storm(&iris, requests).await;
    assert_still_serving(&iris).await;
    iris.stop().await;
}

const NAMES: &[&str] = &[
    "grant_type",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
    "scope",
    "audience",
    "resource",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "",
    "GRANT_TYPE",
    "scope[]",
    "unknown",
];

const VALUES: &[&str] = &[
    TOKEN_EXCHANGE_GRANT,
    "authorization_code",
    "client_credentials",
    SESSION_TYPE,
    COOKIE_TYPE,
    "urn:x-iris:token-type:kratos-session-token",
    "urn:ietf:params:oauth:token-type:access_token",
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:refresh_token",
    ALICE_TOKEN,
    ORDERS_API,
    "https://billing.example.com",
    "https://orders.example.com/#fragment",
    "relative/path",
    "openid",
    "openid email profile orders:read",
    "admin",
    "orders-service",
    "jwt-client",
    ORDERS_SECRET,
    JWT_BEARER,
    "eyJhbGciOiJub25lIn0.e30.",
    "a.b.c",
    "",
    " ",
    "é🦀\u{202e}",
];

/// A random value: from the pool, random text with control characters, or long.
fn random_value(rng: &mut StdRng) -> String {
    match rng.gen_range(0..10) {
        0 => (0..rng.gen_range(1..40))
            .map(|_| char::from_u32(rng.gen_range(0..0x3000)).unwrap_or('?'))
            .collect(),
        1 => "x".repeat(rng.gen_range(KIB..8 * KIB)),
        _ => VALUES[rng.gen_range(0..VALUES.len())].to_owned(),
    }
}

/// A plausible value for `name`, or now and then any value at all.
fn value_for(rng: &mut StdRng, name: &str) -> String {
    let pool: &[&str] = match name {
        "scope" => &[
            "openid",
            "openid email",
            "orders:read",
            "profile admin",
            "openid openid",
            "",
        ],
        "audience" => &[
            ORDERS_API,
            "https://billing.example.com",
            "orders-service",
            "",
        ],
        "resource" => &[
            ORDERS_API,
            "https://orders.example.com/#f",
            "relative",
            "urn:x:y",
        ],
        "requested_token_type" => &[
            "urn:ietf:params:oauth:token-type:access_token",
            "urn:ietf:params:oauth:token-type:jwt",
            "urn:ietf:params:oauth:token-type:id_token",
            "urn:ietf:params:oauth:token-type:refresh_token",
        ],
        "subject_token_type" => &[
            SESSION_TYPE,
            COOKIE_TYPE,
            "urn:x-iris:token-type:kratos-session-token",
        ],
        "subject_token" => &[ALICE_TOKEN, "ory_st_unknown", "ory_st_\u{7f}", ""],
        _ => &[],
    };
    if pool.is_empty() || rng.gen_bool(0.3) {
        random_value(rng)
    } else {
        pool[rng.gen_range(0..pool.len())].to_owned()
    }
}

/// A random form: often a valid exchange mutated a few times (a parameter set, removed,
/// repeated or added), mostly encoded properly, sometimes raw.
fn random_soup(rng: &mut StdRng) -> Vec<u8> {
    let mut params: Vec<(String, String)> = if rng.gen_bool(0.85) {
        exchange_form(ALICE_TOKEN, &[])
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    } else {
        Vec::new()
    };
    for _ in 0..rng.gen_range(0..6) {
        let name = NAMES[rng.gen_range(0..NAMES.len())];
        let value = value_for(rng, name);
        match rng.gen_range(0..10) {
            0..=5 => match params.iter_mut().find(|(n, _)| n == name) {
                Some(param) => param.1 = value,
                None => params.push((name.to_owned(), value)),
            },
            6 | 7 if !params.is_empty() => {
                let at = rng.gen_range(0..params.len());
                params.remove(at);
            }
            _ => params.push((name.to_owned(), value)),
        }
    }
    let pairs: Vec<String> = params
        .iter()
        .map(|(name, value)| {
            if rng.gen_bool(0.9) {
                format!("{}={}", form_encode(name), form_encode(value))
            } else {
                format!("{name}={value}")
            }
        })
        .collect();
    pairs.join("&").into_bytes()
}

/// OA-4, TX-2..TX-9: hundreds of random parameter soups (seeded), many deep enough to reach
/// client authentication, policy and Kratos, never get a 5xx.
#[tokio::test]
async fn random_parameter_soups_never_fail_the_server() {
    let (_kratos, iris) = start_with_alice().await;
    let mut rng = StdRng::seed_from_u64(0x8693_6749);
    let requests: Vec<Hostile> = (0..300)
        .map(|i| {
            let request = Hostile::new(format!("soup #{i}"), random_soup(&mut rng));
            random_auth(&mut rng, request, &iris)
        })
        .collect();
    let answers = storm(&iris, requests).await;
    let deep = answers
        .iter()
        .filter(|(_, a)| {
            a.status == 200 || a.error() == "invalid_target" || a.error() == "invalid_scope"
        })
        .count();
    assert!(
        deep > 10,
        "the soups should reach policy and minting: {deep}"
    );
    assert_still_serving(&iris).await;
    iris.stop().await;
}

/// OA-2: bodies that are not UTF-8 once decoded are `invalid_request`; malformed `%` sequences
/// never break the parser.
#[tokio::test]
async fn invalid_utf8_and_bad_percent_encoding_are_handled() {
    let (_kratos, iris) = start_with_alice().await;
    let raw = |extra: &[u8]| [valid_base().as_bytes(), extra].concat();
    let not_utf8 = vec![
        orders("raw 0xFF in a value", raw(b"&scope=open\xffid")),
        orders("raw 0xFE 0xFF name", raw(b"&\xfe\xff=1")),
        orders("raw lone continuation", b"grant_type=\x80".to_vec()),
        orders("encoded %FF", valid_with("scope=%FF")),
        orders("encoded %C3 truncated", valid_with("audience=%C3")),
        orders("encoded overlong", valid_with("scope=%C0%AF")),
        orders("encoded surrogate", valid_with("scope=%ED%A0%80")),
        orders("encoded %FF name", valid_with("%FF=x")),
    ];
    for (description, answer) in storm(&iris, not_utf8).await {
        assert_oauth_error(&description, &answer, &[400], &["invalid_request"]);
    }
    let bad_percent = vec![
        orders("%zz value", valid_with("unknown=%zz")),
        orders("trailing %", valid_with("unknown=%")),
        orders("trailing %f", valid_with("unknown=%f")),
        orders("%% value", valid_with("unknown=%%")),
        orders(
            "%zz in subject_token",
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=%zz&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asession",
        ),
        orders("% alone", "%"),
        orders("= alone", "="),
        orders("& alone", "&&&&"),
        orders("%00 grant_type", "grant_type=%00"),
        orders("+ everywhere", "+=+&++=++"),
    ];
    storm(&iris, bad_percent).await;
    assert_still_serving(&iris).await;
    iris.stop().await;
}

/// TX-20: NUL bytes and control characters, raw or encoded, in any parameter are client errors.
#[tokio::test]
async fn nul_bytes_and_control_characters_are_client_errors() {
    let (kratos, iris) = start_with_alice().await;
    let base = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asession";
    let requests = vec![
        orders(
            "raw NUL in subject_token",
            [base.as_bytes(), b"&subject_token=ory\x00st"].concat(),
        ),
        orders(
            "%00 in subject_token",
            format!("{base}&subject_token=ory_st_%00"),
        ),
        orders(
            "%7F in subject_token",
            format!("{base}&subject_token=ory_st_%7F"),
        ),
        orders(
            "%1B in subject_token",
            format!("{base}&subject_token=%1B%5B2J"),
        ),
        orders(
            "NUL only subject_token",
            format!("{base}&subject_token=%00"),
        ),
    ];
    for (description, answer) in storm(&iris, requests).await {
        assert_oauth_error(&description, &answer, &[400], &["invalid_request"]);
    }
    let elsewhere = vec![
        orders("%00 in scope", valid_with("scope=openid%00")),
        orders(
            "%00 in audience",
            valid_with("audience=https%3A%2F%2Forders.example.com%00"),
        ),
        orders(
            "%00 in resource",
            valid_with("resource=https%3A%2F%2Fx%00y"),
        ),
        Hostile::new(
            "%00 in client_id",
            valid_with("client_id=orders%00&client_secret=x"),
        ),
        Hostile::new(
            "%00 in client_assertion",
            valid_with(
                "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=a%00.b.c",
            ),
        ),
        orders(
            "raw NUL name",
            [valid_base().as_bytes(), b"&\x00=\x00"].concat(),
        ),
    ];
    storm(&iris, elsewhere).await;
    assert!(
        kratos.call_log().iter().all(|c| !c
            .session_token
            .as_deref()
            .unwrap_or("")
            .contains(['\0', '\x7f', '\x1b'])),
        "a control character reached Kratos"
    );
    assert_still_serving(&iris).await;
    iris.stop().await;
}

/// P-9, TX-11: CR/LF in a subject token never becomes a header at Kratos; the request is
/// `invalid_request`.
#[tokio::test]
async fn header_injection_in_subject_token_never_reaches_kratos() {
    let (kratos, iris) = start_with_alice().await;
    let injections = [
        "ory_st_x\r\nX-Injected: yes",
        "ory_st_x\nX-Injected: yes",
        "ory_st_x\rX-Injected: yes",
        "x\r\n\r\nGET /admin HTTP/1.1\r\nX-Injected: yes",
        "\r\nCookie: ory_kratos_session=X-Injected",
    ];
    let mut requests = Vec::new();
    for (i, injection) in injections.iter().enumerate() {
        for token_type in [SESSION_TYPE, COOKIE_TYPE] {
            let form = [
                ("grant_type", TOKEN_EXCHANGE_GRANT),
                ("subject_token", injection),
                ("subject_token_type", token_type),
            ];
            let body = serde_urlencoded::to_string(form).unwrap();
            requests.push(orders(format!("injection #{i} as {token_type}"), body));
        }
    }
    let calls_before = kratos.calls();
    for (description, answer) in storm(&iris, requests).await {
        assert_oauth_error(&description, &answer, &[400], &["invalid_request"]);
    }
    assert_eq!(
        kratos.calls(),
        calls_before,
        "a subject token that cannot be a header value must not reach Kratos: {:?}",
        kratos.call_log()
    );
    // Cookie syntax inside a cookie value: whatever Iris decides, never a 5xx.
    let smuggled = serde_urlencoded::to_string([
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("subject_token", "x; ory_kratos_session=other; csrf=1"),
        ("subject_token_type", COOKIE_TYPE),
    ])
    .unwrap();
    storm(
        &iris,
        vec![orders("cookie pairs in a cookie value", smuggled)],
    )
    .await;
    assert_still_serving(&iris).await;
    iris.stop().await;
}

/// OA-4: thousands of parameters under 64 KiB are read: unknown ones are ignored, repeated
/// single ones refused, thousands of targets checked, all without a 5xx.
#[tokio::test]
async fn thousands_of_parameters_are_handled() {
    let (_kratos, iris) = start_with_alice().await;
    let many = |item: &dyn Fn(usize) -> String, n: usize| -> String {
        (0..n).map(item).collect::<Vec<_>>().join("&")
    };
    let unknown = valid_with(&many(&|_| "x=1".into(), 5000));
    let unknown_names = valid_with(&many(&|i| format!("p{i}="), 5000));
    let audiences = valid_with(&many(&|_| "audience=a".into(), 5000));
    let distinct = valid_with(&many(&|i| format!("audience=z{i}"), 3000));
    let scopes = valid_with(&many(&|_| "scope=openid".into(), 5000));
    let ampersands = valid_with(&"&".repeat(50 * KIB));
    for body in [
        &unknown,
        &unknown_names,
        &audiences,
        &distinct,
        &scopes,
        &ampersands,
    ] {
        assert!(body.len() < 64 * KIB, "{}", body.len());
    }
    let answers = storm(
        &iris,
        vec![
            orders("5000 unknown x=1", unknown),
            orders("5000 empty unknown parameters", unknown_names),
            orders("5000 audience=a", audiences),
            orders("3000 distinct audiences", distinct),
            orders("5000 scope=openid", scopes),
            orders("50 KiB of ampersands", ampersands),
        ],
    )
    .await;
    let by_name = |prefix: &str| {
        &answers
            .iter()
            .find(|(d, _)| d.starts_with(prefix))
            .unwrap()
            .1
    };
    // DESIGN.md §8: unknown parameters are ignored even when repeated; empty ones are absent.
    assert_eq!(
        by_name("5000 unknown").status,
        200,
        "{}",
        by_name("5000 unknown").json
    );
    assert_eq!(by_name("5000 empty").status, 200);
    assert_eq!(by_name("50 KiB of ampersands").status, 200);
    assert_oauth_error(
        "5000 audience=a",
        by_name("5000 audience=a"),
        &[400],
        &["invalid_target"],
    );
    assert_oauth_error(
        "3000 distinct",
        by_name("3000 distinct"),
        &[400],
        &["invalid_target"],
    );
    assert_oauth_error(
        "5000 scope",
        by_name("5000 scope"),
        &[400],
        &["invalid_request"],
    );
    assert_still_serving(&iris).await;
    iris.stop().await;
}

/// Values just under the limit are read and refused on their merits, with bounded error
/// descriptions (the input is never echoed whole).
#[tokio::test]
async fn huge_values_under_the_limit_are_refused_on_their_merits() {
    let (_kratos, iris) = start_with_alice().await;
    let huge = "A".repeat(60 * KIB);
    let form = |pairs: &[(&str, &str)]| serde_urlencoded::to_string(pairs).unwrap();
    let requests = vec![
        orders("60 KiB subject_token", form(&exchange_form(&huge, &[]))),
        orders(
            "60 KiB scope",
            form(&exchange_form(ALICE_TOKEN, &[("scope", &huge)])),
        ),
        orders(
            "60 KiB audience",
            form(&exchange_form(ALICE_TOKEN, &[("audience", &huge)])),
        ),
        orders(
            "60 KiB resource",
            form(&exchange_form(
                ALICE_TOKEN,
                &[("resource", &format!("https://x/{huge}"))],
            )),
        ),
        orders(
            "60 KiB subject_token_type",
            form(&[
                ("grant_type", TOKEN_EXCHANGE_GRANT),
                ("subject_token", ALICE_TOKEN),
                ("subject_token_type", &huge),
            ]),
        ),
        orders(
            "60 KiB requested_token_type",
            form(&exchange_form(
                ALICE_TOKEN,
                &[("requested_token_type", &huge)],
            )),
        ),
        orders("60 KiB grant_type", form(&[("grant_type", &huge)])),
        orders(
            "60 KiB unknown",
            form(&exchange_form(ALICE_TOKEN, &[("unknown", &huge)])),
        ),
        Hostile::new(
            "60 KiB client_secret",
            form(&exchange_form(
                ALICE_TOKEN,
                &[("client_id", "third-party"), ("client_secret", &huge)],
            )),
        ),
        Hostile::new(
            "60 KiB client_assertion",
            form(&exchange_form(
                ALICE_TOKEN,
                &[
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", &huge),
                ],
            )),
        ),
        Hostile::new(
            "60 KiB client_id",
            form(&exchange_form(
                ALICE_TOKEN,
                &[("client_id", &huge), ("client_secret", "x")],
            )),
        ),
        Hostile::new(
            "60 KiB cookie subject",
            form(&[
                ("grant_type", TOKEN_EXCHANGE_GRANT),
                ("subject_token", &huge),
                ("subject_token_type", COOKIE_TYPE),
            ]),
        )
        .basic("orders-service", ORDERS_SECRET),
    ];
    for (description, answer) in storm(&iris, requests).await {
        if description.starts_with("60 KiB unknown") {
            assert_eq!(answer.status, 200, "{description}: {}", answer.json);
            continue;
        }
        assert!(
            (400..500).contains(&answer.status),
            "{description}: {}",
            answer.status
        );
        let text = answer.json["error_description"].as_str().unwrap_or("");
        assert!(
            text.len() < 1024,
            "{description}: a {} byte description",
            text.len()
        );
    }
    assert_still_serving(&iris).await;
    iris.stop().await;
}

/// DESIGN.md §3 step 1: a body over 64 KiB with a `Content-Length` is 413 `invalid_request`;
/// one of exactly 64 KiB is read.
#[tokio::test]
async fn oversized_bodies_with_content_length_get_413() {
    let (_kratos, iris) = start_with_alice().await;
    let padded = |total: usize| {
        let mut body = valid_with("pad=");
        body.resize(total, b'a');
        body
    };
    let answers = storm(
        &iris,
        vec![
            orders("70 KiB", padded(70 * KIB)),
            orders("64 KiB + 1", padded(64 * KIB + 1)),
            orders("1 MiB", padded(1024 * KIB)),
            orders("exactly 64 KiB", padded(64 * KIB)),
        ],
    )
    .await;
    for (description, answer) in &answers {
        if description.starts_with("exactly") {
            assert_eq!(
                answer.status, 200,
                "the limit itself is allowed: {}",
                answer.json
            );
        } else {
            assert_oauth_error(description, answer, &[413], &["invalid_request"]);
        }
    }
    assert_still_serving(&iris).await;
    iris.stop().await;
}

/// One HTTP/1.1 exchange over a raw socket: writes `request` while reading, and returns the
/// status and body of the response, or `None` when the connection closed without one.
async fn raw_exchange(addr: SocketAddr, request: Vec<u8>) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.split();
    // The server may answer before it has read everything: keep reading while writing.
    let write = async {
        let _ = writer.write_all(&request).await;
        std::future::pending::<()>().await
    };
    let read = async {
        let mut response = Vec::new();
        let mut chunk = [0u8; 8 * KIB];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
            }
            if complete(&response) {
                break;
            }
        }
        response
    };
    let response = tokio::select! {
        response = read => response,
        () = write => unreachable!(),
    };
    let text = String::from_utf8_lossy(&response);
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Whether `response` holds the headers and the `Content-Length` bytes of its body.
fn complete(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    length.is_some_and(|length| body.len() >= length)
}

fn raw_head(addr: SocketAddr, headers: &[&[u8]]) -> Vec<u8> {
    let mut head = format!("POST /oauth2/token HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n")
        .into_bytes();
    for header in headers {
        head.extend_from_slice(header);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// DESIGN.md §3 step 1: a streamed (chunked) body over 64 KiB, without `Content-Length`, is
/// cut off at the limit and gets 413 `invalid_request`.
#[tokio::test]
async fn oversized_chunked_bodies_get_413() {
    let (_kratos, iris) = start_with_alice().await;
    let auth = format!("Authorization: {}", basic("orders-service", ORDERS_SECRET));
    for total in [70 * KIB, 1024 * KIB] {
        let mut body = valid_with("pad=");
        body.resize(total, b'a');
        let mut request = raw_head(
            iris.addr,
            &[
                b"Content-Type: application/x-www-form-urlencoded",
                b"Transfer-Encoding: chunked",
                auth.as_bytes(),
            ],
        );
        for chunk in body.chunks(4 * KIB) {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        let what = format!("{total} chunked bytes");
        let (status, body) = guarded(&what, raw_exchange(iris.addr, request))
            .await
            .unwrap_or_else(|| panic!("{what}: no response"));
        assert_eq!(status, 413, "{what}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
        assert_eq!(json["error"], "invalid_request", "{what}");
    }
    assert_still_serving(&iris).await;
    iris.stop().await;
}

/// OA-5, OA-8: garbage in `Authorization` is a client error (`invalid_client` or
/// `invalid_request`), never a 5xx.
#[tokio::test]
async fn garbage_authorization_headers_are_client_errors() {
    let (_kratos, iris) = start_with_alice().await;
    let b64 = |raw: &[u8]| BASE64.encode(raw);
    let values: Vec<(String, Vec<u8>)> = vec![
        ("Basic alone".into(), b"Basic".to_vec()),
        ("Basic space".into(), b"Basic ".to_vec()),
        ("invalid base64".into(), b"Basic !!!!$$$$".to_vec()),
        ("base64 padding only".into(), b"Basic ====".to_vec()),
        ("truncated base64".into(), b"Basic b3JkZXJz".to_vec()),
        (
            "no colon".into(),
            format!("Basic {}", b64(b"orders-service")).into_bytes(),
        ),
        (
            "colon only".into(),
            format!("Basic {}", b64(b":")).into_bytes(),
        ),
        (
            "empty secret".into(),
            format!("Basic {}", b64(b"orders-service:")).into_bytes(),
        ),
        (
            "non-UTF-8 decoded".into(),
            format!("Basic {}", b64(b"\xff\xfe:\x80\x81")).into_bytes(),
        ),
        (
            "%FF encoded id".into(),
            format!("Basic {}", b64(b"%FF:%FF")).into_bytes(),
        ),
        (
            "bad % encoding".into(),
            format!("Basic {}", b64(b"%zz:%")).into_bytes(),
        ),
        (
            "NUL".into(),
            format!("Basic {}", b64(b"orders-service\0:x")).into_bytes(),
        ),
        (
            "two spaces".into(),
            format!("Basic  {}", b64(b"a:b")).into_bytes(),
        ),
        (
            "Bearer".into(),
            format!("Bearer {ALICE_TOKEN}").into_bytes(),
        ),
        (
            "Digest".into(),
            b"Digest username=\"orders-service\"".to_vec(),
        ),
        ("obs-text bytes".into(), b"Basic \xff\xfe\xfd".to_vec()),
        ("obs-text scheme".into(), b"\xc3\xa9 x".to_vec()),
        (
            "32 KiB".into(),
            format!("Basic {}", "A".repeat(32 * KIB)).into_bytes(),
        ),
        (
            "32 KiB decoded".into(),
            format!("Basic {}", b64(&[b'a'; 24 * KIB])).into_bytes(),
        ),
    ];
    let mut requests: Vec<Hostile> = values
        .into_iter()
        .map(|(what, value)| {
            let value = HeaderValue::from_bytes(&value).expect("a sendable header value");
            Hostile::new(what, valid_base()).header(reqwest::header::AUTHORIZATION, value)
        })
        .collect();
    // Basic plus body credentials: two methods.
    requests.push(orders(
        "Basic plus client_secret",
        valid_with("client_id=orders-service&client_secret=x"),
    ));
    for (description, answer) in storm(&iris, requests).await {
        assert_oauth_error(
            &description,
            &answer,
            &[400, 401],
            &["invalid_client", "invalid_request"],
        );
    }
    // Odd but acceptable spellings: whatever the answer, never a 5xx.
    let lowercase = format!("basic {}", &basic("orders-service", ORDERS_SECRET)[6..]);
    storm(
        &iris,
        vec![
            Hostile::new("lowercase scheme", valid_base()).header(
                reqwest::header::AUTHORIZATION,
                HeaderValue::from_str(&lowercase).unwrap(),
            ),
            Hostile::new("non-UTF-8 content type", valid_base()).header(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_bytes(b"application/x-www-form-urlencoded; charset=\xff")
                    .unwrap(),
            ),
            Hostile::new("content type obs-text", valid_base()).header(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
            ),
        ],
    )
    .await;
    assert_still_serving(&iris).await;
    iris.stop().await;
}

/// Raw bytes on the wire: non-UTF-8 header bytes, conflicting or absurd lengths, and
/// smuggling-shaped framing never get a 5xx; a well-framed request always gets an answer.
#[tokio::test]
async fn raw_wire_garbage_never_fails_the_server() {
    let (_kratos, iris) = start_with_alice().await;
    let body = valid_base();
    let length = format!("Content-Length: {}", body.len());
    let form = b"Content-Type: application/x-www-form-urlencoded".as_slice();
    let well_framed: Vec<(&str, Vec<&[u8]>)> = vec![
        (
            "non-UTF-8 Authorization",
            vec![
                form,
                length.as_bytes(),
                b"Authorization: Basic \xff\xfe\xfd",
            ],
        ),
        (
            "non-UTF-8 Basic payload",
            vec![form, length.as_bytes(), b"Authorization: \xffasic b3JkZXJz"],
        ),
        (
            "non-UTF-8 Content-Type",
            vec![
                b"Content-Type: application/x-www-form-urlencoded\xff",
                length.as_bytes(),
            ],
        ),
        (
            "non-UTF-8 other header",
            vec![form, length.as_bytes(), b"X-Junk: \x80\x81\x82"],
        ),
        (
            "two Authorization headers",
            vec![
                form,
                length.as_bytes(),
                b"Authorization: Basic YTpi",
                b"Authorization: Basic YzpE",
            ],
        ),
        (
            "two Content-Types",
            vec![form, b"Content-Type: application/json", length.as_bytes()],
        ),
    ];
    for (what, headers) in well_framed {
        let mut request = raw_head(iris.addr, &headers);
        request.extend_from_slice(body.as_bytes());
        let answer = guarded(what, raw_exchange(iris.addr, request)).await;
        let (status, text) = answer.unwrap_or_else(|| panic!("{what}: no response"));
        assert!((400..500).contains(&status), "{what}: {status} {text}");
    }
    // Framing errors: hyper may refuse them itself or close; never a 5xx from Iris.
    let framing: Vec<(&str, Vec<&[u8]>)> = vec![
        (
            "overflowing Content-Length",
            vec![form, b"Content-Length: 99999999999999999999999"],
        ),
        ("negative Content-Length", vec![form, b"Content-Length: -1"]),
        (
            "conflicting Content-Lengths",
            vec![form, b"Content-Length: 5", b"Content-Length: 6"],
        ),
        (
            "Content-Length and chunked",
            vec![form, length.as_bytes(), b"Transfer-Encoding: chunked"],
        ),
        (
            "unknown Transfer-Encoding",
            vec![form, b"Transfer-Encoding: gzip, identity"],
        ),
    ];
    for (what, headers) in framing {
        let mut request = raw_head(iris.addr, &headers);
        request.extend_from_slice(body.as_bytes());
        if let Some((status, text)) = guarded(what, raw_exchange(iris.addr, request)).await {
            assert!(status < 500, "{what}: {status} {text}");
        }
    }
    let mut bad_chunks = raw_head(iris.addr, &[form, b"Transfer-Encoding: chunked"]);
    bad_chunks.extend_from_slice(b"zz\r\nabc\r\n0\r\n\r\n");
    if let Some((status, text)) =
        guarded("bad chunk size", raw_exchange(iris.addr, bad_chunks)).await
    {
        assert!(status < 500, "bad chunk size: {status} {text}");
    }
    assert_still_serving(&iris).await;
    iris.stop().await;
}
