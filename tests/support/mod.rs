//! Test support: the Kratos stand-in, fixture clients, and Iris started in-process on port 0.
#![allow(dead_code)]

pub mod hydra;
pub mod kratos;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iris::config::{AuthMethod, ClientConfig, RawConfig, TOKEN_EXCHANGE_GRANT};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

#[allow(unused_imports)]
pub use kratos::{Entry, Fault, Kratos, SessionRecord};

/// The session token type the Ory cookbook uses.
pub const SESSION_TYPE: &str = "urn:ietf:params:oauth:token-type:session";
/// Iris's cookie subject token type.
pub const COOKIE_TYPE: &str = "urn:x-iris:token-type:kratos-session-cookie";
/// A Kratos session token (39 characters, `ory_st_` prefix).
pub const ALICE_TOKEN: &str = "ory_st_ALICEaliceALICEaliceALICEaliceAB";
/// The secret of `orders-service`: every character RFC 6749 App. B must survive.
pub const ORDERS_SECRET: &str = "s3 +%&:cret/é";
/// The secret of `post-client`.
pub const POST_SECRET: &str = "post-secret-value";
/// The audience of `orders-service`.
pub const ORDERS_API: &str = "https://orders.example.com";

/// argon2id hashes are slow to make: made once per test binary.
fn hashes() -> &'static (String, String) {
    static HASHES: OnceLock<(String, String)> = OnceLock::new();
    HASHES.get_or_init(|| {
        (
            iris::clients::hash_secret(ORDERS_SECRET).unwrap(),
            iris::clients::hash_secret(POST_SECRET).unwrap(),
        )
    })
}

/// The private JWK of `jwt-client` (ES256).
pub fn jwt_client_key() -> &'static Value {
    static KEY: OnceLock<Value> = OnceLock::new();
    KEY.get_or_init(|| iris::keys::generate("ES256", Some("jwt-client-key")).unwrap())
}

/// The public half of a private JWK.
pub fn public_jwk(private: &Value) -> Value {
    iris::keys::from_private_jwk(private).unwrap().public_jwk
}

/// A client entry with the token-exchange grant, first-party, for `ORDERS_API`.
pub fn client(id: &str, method: AuthMethod) -> ClientConfig {
    ClientConfig {
        client_id: id.into(),
        client_secret_hash: None,
        client_secret: None,
        token_endpoint_auth_method: method,
        token_endpoint_auth_signing_alg: None,
        jwks: None,
        grant_types: vec![TOKEN_EXCHANGE_GRANT.into()],
        audience: vec![ORDERS_API.into()],
        scope: "openid email profile orders:read".into(),
        metadata: json!({"first_party": true}).as_object().unwrap().clone(),
    }
}

/// The fixture clients:
/// - `orders-service`: client_secret_basic, [`ORDERS_SECRET`];
/// - `post-client`: client_secret_post, [`POST_SECRET`];
/// - `jwt-client`: private_key_jwt, ES256, key [`jwt_client_key`];
/// - `multi-aud`: basic, two audiences; `third-party`: basic, not first-party;
///   `no-grant`: basic, client_credentials only (all with [`ORDERS_SECRET`]).
pub fn fixture_clients() -> Vec<ClientConfig> {
    let (orders_hash, post_hash) = hashes().clone();
    let mut orders = client("orders-service", AuthMethod::ClientSecretBasic);
    orders.client_secret_hash = Some(orders_hash.clone());
    let mut post = client("post-client", AuthMethod::ClientSecretPost);
    post.client_secret_hash = Some(post_hash);
    let mut jwt = client("jwt-client", AuthMethod::PrivateKeyJwt);
    jwt.token_endpoint_auth_signing_alg = Some("ES256".into());
    jwt.jwks = Some(json!({"keys": [public_jwk(jwt_client_key())]}));
    let mut multi = orders.clone();
    multi.client_id = "multi-aud".into();
    multi.audience = vec![ORDERS_API.into(), "https://billing.example.com".into()];
    let mut third = orders.clone();
    third.client_id = "third-party".into();
    third.metadata = Default::default();
    let mut no_grant = orders.clone();
    no_grant.client_id = "no-grant".into();
    no_grant.grant_types = vec!["client_credentials".into()];
    vec![orders, post, jwt, multi, third, no_grant]
}

/// A configuration for Iris on loopback port 0 against `kratos`, with the fixture clients.
pub fn config(kratos: &Kratos) -> RawConfig {
    let mut raw = RawConfig::default();
    raw.serve.public.port = 0;
    raw.serve.admin.port = 0;
    raw.kratos.public_url = kratos.url();
    raw.kratos.timeout = iris::config::GoDuration(Duration::from_millis(500));
    raw.clients = fixture_clients();
    raw
}

/// Iris running in this process.
pub struct TestIris {
    /// The public listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestIris {
    /// Starts Iris with `raw` (validated as `iris serve` would).
    pub async fn start(raw: RawConfig) -> TestIris {
        let settings = raw.validate().expect("valid test configuration");
        let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            iris::run(settings, public, admin, async {
                let _ = rx.await;
            })
            .await
            .expect("iris runs");
        });
        TestIris {
            addr,
            admin: admin_addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint URL (the `aud` of client assertions).
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.url())
    }

    /// Stops Iris and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body parsed as JSON (Null when it is not JSON).
    pub json: Value,
}

impl Answer {
    /// The `error` member.
    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }

    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 6749 error with its status and the token endpoint's cache headers.
    pub fn assert_error(&self, status: u16, error: &str) {
        assert_eq!(
            (self.status, self.error()),
            (status, error),
            "body: {}",
            self.json
        );
        self.assert_no_store();
        assert!(
            self.json["error_description"].is_string(),
            "error_description missing: {}",
            self.json
        );
    }

    /// OA-7: `Cache-Control: no-store` and `Pragma: no-cache`.
    pub fn assert_no_store(&self) {
        assert_eq!(self.header("cache-control"), Some("no-store"));
        assert_eq!(self.header("pragma"), Some("no-cache"));
    }
}

/// How a request authenticates the client.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    /// No credentials.
    None,
    /// `Authorization: Basic` with id and secret form-urlencoded first (RFC 6749 §2.3.1).
    Basic(&'a str, &'a str),
    /// `client_id` and `client_secret` in the body.
    Post(&'a str, &'a str),
    /// This exact `Authorization` header value (malformed ones included).
    Header(&'a str),
}

/// RFC 6749 App. B encoding of one value.
pub fn form_encode(value: &str) -> String {
    serde_urlencoded::to_string([("", value)]).unwrap()[1..].to_owned()
}

/// `Basic base64(urlencode(id):urlencode(secret))`.
pub fn basic(id: &str, secret: &str) -> String {
    use base64::Engine;
    let raw = format!("{}:{}", form_encode(id), form_encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// A shared HTTP client.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// POSTs a form to the token endpoint.
pub async fn post_form(iris: &TestIris, pairs: &[(&str, &str)], auth: Auth<'_>) -> Answer {
    let mut pairs: Vec<(&str, &str)> = pairs.to_vec();
    let mut request = http()
        .post(iris.token_url())
        .header("content-type", "application/x-www-form-urlencoded");
    match auth {
        Auth::None => {}
        Auth::Basic(id, secret) => request = request.header("authorization", basic(id, secret)),
        Auth::Post(id, secret) => {
            pairs.push(("client_id", id));
            pairs.push(("client_secret", secret));
        }
        Auth::Header(value) => request = request.header("authorization", value),
    }
    let body = serde_urlencoded::to_string(&pairs).unwrap();
    answer(request.body(body).send().await.expect("request")).await
}

/// GETs a URL and reads the answer.
pub async fn get(url: String) -> Answer {
    answer(http().get(url).send().await.expect("request")).await
}

/// Reads a response.
pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap_or_default();
    Answer {
        status,
        headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// A token-exchange form for a session token, plus `extra` parameters.
pub fn exchange_form<'a>(
    subject_token: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut pairs = vec![
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("subject_token", subject_token),
        ("subject_token_type", SESSION_TYPE),
    ];
    pairs.extend_from_slice(extra);
    pairs
}

/// Exchanges alice's session as `orders-service` over Basic.
pub async fn exchange_as_orders(iris: &TestIris, extra: &[(&str, &str)]) -> Answer {
    post_form(
        iris,
        &exchange_form(ALICE_TOKEN, extra),
        Auth::Basic("orders-service", ORDERS_SECRET),
    )
    .await
}

/// Kratos with alice's session behind [`ALICE_TOKEN`], and Iris in front of it.
pub async fn start_with_alice() -> (Kratos, TestIris) {
    let kratos = Kratos::start().await;
    kratos.add_token(ALICE_TOKEN, Entry::Session(SessionRecord::alice()));
    let iris = TestIris::start(config(&kratos)).await;
    (kratos, iris)
}

/// A client assertion (RFC 7523 §3) signed with `key`; `claims` are merged over valid defaults.
pub fn client_assertion(key: &Value, client_id: &str, aud: &str, claims: Value) -> String {
    let signing = iris::keys::from_private_jwk(key).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut body = json!({
        "iss": client_id, "sub": client_id, "aud": aud,
        "iat": now, "exp": now + 60,
        "jti": format!("jti-{}", rand::random::<u64>()),
    });
    for (k, v) in claims.as_object().unwrap() {
        if v.is_null() {
            body.as_object_mut().unwrap().remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    let mut header = jsonwebtoken::Header::new(signing.alg);
    header.kid = Some(signing.kid.clone());
    jsonwebtoken::encode(&header, &body, &signing.encoding).unwrap()
}

/// Decodes a JWT's header and payload without verifying (verification is done separately).
pub fn jwt_parts(token: &str) -> (Value, Value) {
    use base64::Engine;
    let part = |i: usize| -> Value {
        let segment = token.split('.').nth(i).expect("JWT segment");
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(segment)
                .unwrap(),
        )
        .unwrap()
    };
    (part(0), part(1))
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The admin listener's `/metrics/prometheus` text.
pub async fn scrape(iris: &TestIris) -> String {
    let response = http()
        .get(format!("http://{}/metrics/prometheus", iris.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The value of one sample line `name{labels} value`, 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Scrapes until `series` reads `value`; panics after 10 s (a hang guard, not a timing check).
pub async fn until_gauge(iris: &TestIris, series: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let current = sample(&scrape(iris).await, series);
        if current == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} stayed at {current}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1.1 keep-alive connection to Iris's public listener; every request sent through the
/// returned sender goes over this one socket.
pub async fn one_connection(
    iris: &TestIris,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let stream = tokio::net::TcpStream::connect(iris.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// GET `path` over `sender` (one of [`one_connection`]'s); the status and the JSON body.
pub async fn get_over(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    iris: &TestIris,
    path: &str,
) -> (u16, Value) {
    use http_body_util::BodyExt;
    sender.ready().await.expect("the client connection is open");
    let request = hyper::Request::get(path)
        .header("host", iris.addr.to_string())
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}
