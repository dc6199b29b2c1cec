//! An Ory Hydra v26.2.0 stand-in, as reference/hydra.md (read from Hydra's source at v26.2.0)
//! describes it, with the shapes of shared/specs/hydra-openapi.json.
//!
//! Public port: `POST /oauth2/token` (client_credentials and jwt-bearer; client_secret_basic,
//! client_secret_post, private_key_jwt and none), discovery, JWKS and health. Admin port (with the
//! `/admin` prefix added when missing): clients, jwt-bearer trust relationships and introspection.
//!
//! Every other public request is answered by a JSON echo, and `GET /standin/download?bytes=N`
//! streams N bytes: both are TEST INSTRUMENTATION, not Hydra behaviour, so that pass-through tests
//! can check byte identity. Every public request is logged ([`Hydra::requests`]).
//!
//! Where the stand-in is simpler than Hydra, the comment says so (search for "Simplified").
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// `grant_type` of RFC 7523 §2.1.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// `grant_type` of RFC 8693 (Hydra has no handler for it: hydra.md §3).
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `client_assertion_type` of private_key_jwt.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The prefix of opaque access tokens (hydra.md §2.6).
pub const ACCESS_TOKEN_PREFIX: &str = "ory_at_";

const TRUST_PATH: &str = "/admin/trust/grants/jwt-bearer/issuers";
/// Go's `parsePostForm` reads at most 10 MiB of a form body.
const FORM_LIMIT: usize = 10 << 20;

type Body = BoxBody<Bytes, Infallible>;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// An OAuth 2.0 client as Hydra stores it (`oAuth2Client`, hydra.md §4). The secret is kept in
/// clear text here (Hydra keeps a hash and never returns it after creation).
#[derive(Clone, Debug, Default)]
pub struct HydraClient {
    /// `client_id` (a UUID is generated when empty).
    pub client_id: String,
    /// `client_secret`; generated on creation when `None` and the method is not `none`.
    pub client_secret: Option<String>,
    /// `client_name`.
    pub client_name: String,
    /// `grant_types`; empty means `authorization_code` (hydra.md §4).
    pub grant_types: Vec<String>,
    /// `response_types`.
    pub response_types: Vec<String>,
    /// `scope`, a space-separated string.
    pub scope: String,
    /// `audience`, the allow-list of the URL-prefix audience strategy.
    pub audience: Vec<String>,
    /// `token_endpoint_auth_method`; empty means `client_secret_basic` (hydra.md §1).
    pub token_endpoint_auth_method: String,
    /// `token_endpoint_auth_signing_alg`; empty means `RS256` (hydra.md §1).
    pub token_endpoint_auth_signing_alg: String,
    /// `jwks` (a JWK Set with public keys).
    pub jwks: Option<Value>,
    /// `jwks_uri`, fetched when `jwks` is absent.
    pub jwks_uri: String,
    /// `metadata` (free JSON; `{}` when Null).
    pub metadata: Value,
    /// `access_token_strategy`: `opaque`, `jwt`, or empty for the server default.
    pub access_token_strategy: String,
    /// `client_credentials_grant_access_token_lifespan`.
    pub client_credentials_grant_access_token_lifespan: Option<Duration>,
    /// `jwt_bearer_grant_access_token_lifespan`.
    pub jwt_bearer_grant_access_token_lifespan: Option<Duration>,
    /// Every other `oAuth2Client` member, stored and returned as given.
    pub other: Map<String, Value>,
}

impl HydraClient {
    /// A client with this id and nothing else set.
    pub fn new(client_id: &str) -> Self {
        HydraClient {
            client_id: client_id.into(),
            ..Default::default()
        }
    }

    /// A `client_secret_basic` client.
    pub fn basic(client_id: &str, secret: &str) -> Self {
        HydraClient {
            client_secret: Some(secret.into()),
            token_endpoint_auth_method: "client_secret_basic".into(),
            ..Self::new(client_id)
        }
    }

    /// A `client_secret_post` client.
    pub fn post(client_id: &str, secret: &str) -> Self {
        HydraClient {
            client_secret: Some(secret.into()),
            token_endpoint_auth_method: "client_secret_post".into(),
            ..Self::new(client_id)
        }
    }

    /// A `private_key_jwt` client with these public keys (a JWK Set) and signing algorithm.
    pub fn private_key_jwt(client_id: &str, jwks: Value, alg: &str) -> Self {
        HydraClient {
            token_endpoint_auth_method: "private_key_jwt".into(),
            token_endpoint_auth_signing_alg: alg.into(),
            jwks: Some(jwks),
            ..Self::new(client_id)
        }
    }

    /// A public client (`token_endpoint_auth_method: none`).
    pub fn public(client_id: &str) -> Self {
        HydraClient {
            token_endpoint_auth_method: "none".into(),
            ..Self::new(client_id)
        }
    }

    /// Sets `grant_types`.
    pub fn with_grants(mut self, grants: &[&str]) -> Self {
        self.grant_types = grants.iter().map(|g| g.to_string()).collect();
        self
    }

    /// Sets `scope`.
    pub fn with_scope(mut self, scope: &str) -> Self {
        self.scope = scope.into();
        self
    }

    /// Sets `audience`.
    pub fn with_audience(mut self, audience: &[&str]) -> Self {
        self.audience = audience.iter().map(|a| a.to_string()).collect();
        self
    }

    /// The effective authentication method (empty means `client_secret_basic`, hydra.md §1).
    pub fn auth_method(&self) -> &str {
        if self.token_endpoint_auth_method.is_empty() {
            "client_secret_basic"
        } else {
            &self.token_endpoint_auth_method
        }
    }

    /// The effective assertion algorithm (empty means `RS256`, hydra.md §1).
    pub fn signing_alg(&self) -> &str {
        if self.token_endpoint_auth_signing_alg.is_empty() {
            "RS256"
        } else {
            &self.token_endpoint_auth_signing_alg
        }
    }

    /// `IsPublic()`: `token_endpoint_auth_method == "none"` (hydra.md §1).
    pub fn is_public(&self) -> bool {
        self.auth_method() == "none"
    }

    /// `GetScopes()`: the scope string split on whitespace.
    fn scopes(&self) -> Vec<String> {
        self.scope.split_whitespace().map(String::from).collect()
    }

    /// `GetGrantTypes()`: empty means `authorization_code` (hydra.md §4).
    fn has_grant(&self, grant: &str) -> bool {
        if self.grant_types.is_empty() {
            grant == "authorization_code"
        } else {
            self.grant_types.iter().any(|g| g == grant)
        }
    }

    /// Reads an `oAuth2Client` JSON body (`POST /admin/clients`).
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let object = value.as_object().ok_or("the body is not a JSON object")?;
        let mut client = HydraClient::default();
        for (key, v) in object {
            let text = || -> Result<String, String> {
                match v {
                    Value::Null => Ok(String::new()),
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(format!("{key} must be a string")),
                }
            };
            let list = || -> Result<Vec<String>, String> {
                match v {
                    Value::Null => Ok(Vec::new()),
                    Value::Array(items) => items
                        .iter()
                        .map(|i| {
                            i.as_str()
                                .map(String::from)
                                .ok_or(format!("{key} must be an array of strings"))
                        })
                        .collect(),
                    _ => Err(format!("{key} must be an array of strings")),
                }
            };
            let lifespan = || -> Result<Option<Duration>, String> {
                match v {
                    Value::Null => Ok(None),
                    Value::String(s) => parse_go_duration(s)
                        .map(Some)
                        .ok_or(format!("{key} is not a duration")),
                    _ => Err(format!("{key} must be a duration string")),
                }
            };
            match key.as_str() {
                "client_id" => client.client_id = text()?,
                "client_secret" => client.client_secret = Some(text()?).filter(|s| !s.is_empty()),
                "client_name" => client.client_name = text()?,
                "grant_types" => client.grant_types = list()?,
                "response_types" => client.response_types = list()?,
                "scope" => client.scope = text()?,
                "audience" => client.audience = list()?,
                "token_endpoint_auth_method" => client.token_endpoint_auth_method = text()?,
                "token_endpoint_auth_signing_alg" => {
                    client.token_endpoint_auth_signing_alg = text()?
                }
                "jwks" => client.jwks = Some(v.clone()).filter(|v| !v.is_null()),
                "jwks_uri" => client.jwks_uri = text()?,
                "metadata" => client.metadata = v.clone(),
                "access_token_strategy" => client.access_token_strategy = text()?,
                "client_credentials_grant_access_token_lifespan" => {
                    client.client_credentials_grant_access_token_lifespan = lifespan()?
                }
                "jwt_bearer_grant_access_token_lifespan" => {
                    client.jwt_bearer_grant_access_token_lifespan = lifespan()?
                }
                "created_at" | "updated_at" => {}
                _ => {
                    client.other.insert(key.clone(), v.clone());
                }
            }
        }
        Ok(client)
    }

    /// The `oAuth2Client` JSON (hydra.md §4); `client_secret` only when `with_secret`.
    fn to_json(&self, with_secret: bool, created: SystemTime, updated: SystemTime) -> Value {
        let lifespan = |d: Option<Duration>| d.map(go_duration).map_or(Value::Null, Value::from);
        let mut out = Map::new();
        for (k, v) in [
            ("redirect_uris", json!([])),
            ("owner", json!("")),
            ("policy_uri", json!("")),
            ("allowed_cors_origins", json!([])),
            ("tos_uri", json!("")),
            ("client_uri", json!("")),
            ("logo_uri", json!("")),
            ("contacts", Value::Null),
            ("client_secret_expires_at", json!(0)),
            ("subject_type", json!("public")),
            ("userinfo_signed_response_alg", json!("none")),
            ("post_logout_redirect_uris", json!([])),
            ("request_uris", json!([])),
            ("frontchannel_logout_session_required", json!(false)),
            ("backchannel_logout_session_required", json!(false)),
            ("skip_consent", json!(false)),
            ("skip_logout_consent", json!(false)),
        ] {
            out.insert(k.into(), v);
        }
        for name in [
            "authorization_code_grant_access_token_lifespan",
            "authorization_code_grant_id_token_lifespan",
            "authorization_code_grant_refresh_token_lifespan",
            "device_authorization_grant_access_token_lifespan",
            "device_authorization_grant_id_token_lifespan",
            "device_authorization_grant_refresh_token_lifespan",
            "implicit_grant_access_token_lifespan",
            "implicit_grant_id_token_lifespan",
            "refresh_token_grant_access_token_lifespan",
            "refresh_token_grant_id_token_lifespan",
            "refresh_token_grant_refresh_token_lifespan",
        ] {
            out.insert(name.into(), Value::Null);
        }
        for (k, v) in &self.other {
            out.insert(k.clone(), v.clone());
        }
        out.insert("client_id".into(), json!(self.client_id));
        out.insert("client_name".into(), json!(self.client_name));
        // hydra.md §4: GET never returns the secret (it is blanked and omitempty).
        if with_secret && let Some(secret) = &self.client_secret {
            out.insert("client_secret".into(), json!(secret));
        }
        out.insert("grant_types".into(), json!(self.grant_types));
        out.insert("response_types".into(), json!(self.response_types));
        out.insert("scope".into(), json!(self.scope));
        out.insert("audience".into(), json!(self.audience));
        out.insert(
            "token_endpoint_auth_method".into(),
            json!(self.auth_method()),
        );
        if !self.token_endpoint_auth_signing_alg.is_empty() {
            out.insert(
                "token_endpoint_auth_signing_alg".into(),
                json!(self.token_endpoint_auth_signing_alg),
            );
        }
        out.insert(
            "jwks".into(),
            self.jwks.clone().unwrap_or_else(|| json!({})),
        );
        if !self.jwks_uri.is_empty() {
            out.insert("jwks_uri".into(), json!(self.jwks_uri));
        }
        out.insert(
            "metadata".into(),
            if self.metadata.is_null() {
                json!({})
            } else {
                self.metadata.clone()
            },
        );
        if !self.access_token_strategy.is_empty() {
            out.insert(
                "access_token_strategy".into(),
                json!(self.access_token_strategy),
            );
        }
        out.insert(
            "client_credentials_grant_access_token_lifespan".into(),
            lifespan(self.client_credentials_grant_access_token_lifespan),
        );
        out.insert(
            "jwt_bearer_grant_access_token_lifespan".into(),
            lifespan(self.jwt_bearer_grant_access_token_lifespan),
        );
        out.insert("created_at".into(), json!(rfc3339(created)));
        out.insert("updated_at".into(), json!(rfc3339(updated)));
        Value::Object(out)
    }
}

/// A jwt-bearer trust relationship (`trustedOAuth2JwtGrantIssuer`, hydra.md §2.3).
#[derive(Clone, Debug)]
pub struct TrustGrant {
    /// `id` (a UUID).
    pub id: String,
    /// `issuer`.
    pub issuer: String,
    /// `subject` (empty with `allow_any_subject`).
    pub subject: String,
    /// `allow_any_subject`.
    pub allow_any_subject: bool,
    /// `scope`: the scopes this issuer may request.
    pub scope: Vec<String>,
    /// `public_key.set` (= issuer).
    pub key_set: String,
    /// `public_key.kid`.
    pub key_id: String,
    /// `created_at` (rounded to the second).
    pub created_at: SystemTime,
    /// `expires_at` (rounded to the second).
    pub expires_at: SystemTime,
}

impl TrustGrant {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "issuer": self.issuer,
            "subject": self.subject,
            "allow_any_subject": self.allow_any_subject,
            "scope": self.scope,
            "public_key": {"set": self.key_set, "kid": self.key_id},
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
        })
    }
}

/// An access token the stand-in issued.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The token as returned.
    pub token: String,
    /// The grant type that issued it.
    pub grant_type: String,
    /// The authenticated client.
    pub client_id: String,
    /// `sub`.
    pub subject: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Granted audience.
    pub audience: Vec<String>,
    /// When it was requested (`iat`, `nbf`).
    pub issued_at: SystemTime,
    /// When it expires.
    pub expires_at: SystemTime,
    /// `ext` (from the token hook).
    pub ext: Map<String, Value>,
}

/// One request as a port saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// Method.
    pub method: String,
    /// Path as received (before Hydra's trailing-slash trim).
    pub path: String,
    /// Raw query string.
    pub query: Option<String>,
    /// Headers as received (hyper groups repeated names; otherwise in received order).
    pub headers: Vec<(String, String)>,
    /// The parsed form of `/oauth2/token` (and introspection), in order.
    pub form: Vec<(String, String)>,
    /// Hex SHA-256 of the body.
    pub body_sha256: String,
    /// Body length.
    pub body_len: u64,
}

impl SeenRequest {
    /// A header value (first, case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A form value (first, as Go's `url.Values.Get`).
    pub fn form_value(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `strategies.scope` (hydra.md §1). Hydra's schema default is `wildcard`; the stand-in defaults
/// to `exact`, which agrees with it on scopes without `.` and `*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ScopeStrategy {
    /// `fosite.ExactScopeStrategy`.
    #[default]
    Exact,
    /// `fosite.WildcardScopeStrategy` (Hydra's default).
    Wildcard,
}

/// `strategies.access_token` (hydra.md §2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AccessTokenStrategy {
    /// `ory_at_…` opaque tokens (Hydra's default).
    #[default]
    Opaque,
    /// RS256 JWTs signed with the `hydra.jwt.access-token` key (hydra.md §5).
    Jwt,
}

/// What the configured `oauth2.token_hook` answers (hydra.md §2.7). Simplified: the stand-in
/// does not call a URL; it records the request it would have sent ([`Hydra::hook_requests`]).
#[derive(Clone, Debug)]
pub enum TokenHook {
    /// 204: the token is issued unchanged.
    NoContent,
    /// 200 `{"session":{"access_token":claims}}`: the claims become the token's `ext`.
    Claims(Map<String, Value>),
    /// Any other status: 403 → `access_denied`, anything else → `server_error`.
    Status(u16),
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

struct Settings {
    issuer: Option<String>,
    max_ttl: Duration,
    jti_optional: bool,
    iat_optional: bool,
    access_token_ttl: Duration,
    scope_strategy: ScopeStrategy,
    access_token_strategy: AccessTokenStrategy,
    token_hook: Option<TokenHook>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            issuer: None,
            // hydra.md §2.2: oauth2.grant.jwt.max_ttl defaults to 720h.
            max_ttl: Duration::from_secs(720 * 3600),
            jti_optional: false,
            iat_optional: false,
            // hydra.md §2.4: ttl.access_token defaults to 1h.
            access_token_ttl: Duration::from_secs(3600),
            scope_strategy: ScopeStrategy::Exact,
            access_token_strategy: AccessTokenStrategy::Opaque,
            token_hook: None,
        }
    }
}

struct StoredClient {
    client: HydraClient,
    created_at: SystemTime,
    updated_at: SystemTime,
}

struct StoredKey {
    set: String,
    kid: String,
    jwk: Value,
    seq: u64,
}

#[derive(Default)]
struct State {
    settings: Settings,
    clients: Vec<StoredClient>,
    grants: Vec<TrustGrant>,
    keys: Vec<StoredKey>,
    key_seq: u64,
    /// `hydra_oauth2_jti_blacklist`: jti → expiry (ns since the epoch), shared by client
    /// assertions and jwt-bearer assertions (hydra.md §2.2 step 7).
    jtis: HashMap<String, i128>,
    tokens: HashMap<String, IssuedToken>,
    requests: Vec<SeenRequest>,
    admin_requests: Vec<SeenRequest>,
    trust_posts: usize,
    hook_requests: Vec<Value>,
}

impl State {
    fn client(&self, id: &str) -> Option<HydraClient> {
        self.clients
            .iter()
            .find(|c| c.client.client_id == id)
            .map(|c| c.client.clone())
    }

    fn key(&self, set: &str, kid: &str) -> Option<&StoredKey> {
        self.keys.iter().find(|k| k.set == set && k.kid == kid)
    }

    /// `ClientAssertionJWTValid`: known while its expiry is in the future.
    fn jti_known(&self, jti: &str) -> bool {
        self.jtis.get(jti).is_some_and(|exp| *exp > now_ns())
    }
}

// ---------------------------------------------------------------------------------------------
// The stand-in
// ---------------------------------------------------------------------------------------------

/// The running stand-in: a public and an admin listener on loopback.
#[derive(Clone)]
pub struct Hydra {
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: Arc<Mutex<watch::Sender<bool>>>,
    /// Connections accepted on the public port, across restarts (instrumentation, not Hydra).
    public_connections: Arc<AtomicUsize>,
    /// Public connections open right now.
    open_public_connections: Arc<AtomicUsize>,
    /// Holds `GET /standin/gate` answers until opened (instrumentation, not Hydra).
    gate: Arc<watch::Sender<bool>>,
    /// How long `GET /admin/clients/{id}` takes to answer (instrumentation, not Hydra).
    client_lookup_delay: Arc<Mutex<Duration>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Port {
    Public,
    Admin,
}

impl Hydra {
    /// Starts both ports on `127.0.0.1:0`.
    pub async fn start() -> Hydra {
        let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_on(public, admin).await
    }

    /// Starts on given listeners (e.g. fixed ports).
    pub async fn start_on(public: TcpListener, admin: TcpListener) -> Hydra {
        let (tx, _) = watch::channel(false);
        let hydra = Hydra {
            public_addr: public.local_addr().expect("addr"),
            admin_addr: admin.local_addr().expect("addr"),
            state: Arc::default(),
            shutdown: Arc::new(Mutex::new(tx)),
            public_connections: Arc::default(),
            open_public_connections: Arc::default(),
            gate: Arc::new(watch::channel(false).0),
            client_lookup_delay: Arc::default(),
        };
        hydra.spawn(public, admin);
        hydra
    }

    fn spawn(&self, public: TcpListener, admin: TcpListener) {
        let rx = self.shutdown.lock().unwrap().subscribe();
        tokio::spawn(serve(public, self.clone(), Port::Public, rx.clone()));
        tokio::spawn(serve(admin, self.clone(), Port::Admin, rx));
    }

    /// Stops both listeners and drops open connections ("Hydra is down"); state is kept.
    pub fn stop(&self) {
        self.shutdown.lock().unwrap().send_replace(true);
    }

    /// Listens again on the same ports, with the same state, after [`Hydra::stop`].
    pub async fn restart(&self) {
        let (tx, _) = watch::channel(false);
        *self.shutdown.lock().unwrap() = tx;
        let public = bind_again(self.public_addr).await;
        let admin = bind_again(self.admin_addr).await;
        self.spawn(public, admin);
    }

    /// Makes every later `GET /admin/clients/{id}` answer after `delay`, so that a test can have
    /// many lookups of one client in flight at once (instrumentation, not Hydra).
    pub fn set_client_lookup_delay(&self, delay: Duration) {
        *self.client_lookup_delay.lock().unwrap() = delay;
    }

    /// How many `GET /admin/clients/{id}` requests the admin port received for this client.
    pub fn client_lookups(&self, id: &str) -> usize {
        let path = format!("/admin/clients/{id}");
        self.admin_requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .count()
    }

    /// How many connections the public port has accepted since the stand-in started.
    pub fn public_connections(&self) -> usize {
        self.public_connections.load(Ordering::SeqCst)
    }

    /// Lets every held and future `GET /standin/gate` answer go.
    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// How many public connections are open right now (a stopped stand-in drops its own).
    pub fn open_public_connections(&self) -> usize {
        self.open_public_connections.load(Ordering::SeqCst)
    }

    /// The public port's address.
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// The admin port's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `http://127.0.0.1:PORT` of the public port.
    pub fn public_url(&self) -> String {
        format!("http://{}", self.public_addr)
    }

    /// `http://127.0.0.1:PORT` of the admin port.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// `urls.self.issuer`: the public URL plus `/` unless [`Hydra::set_issuer`] changed it.
    pub fn issuer(&self) -> String {
        self.state
            .lock()
            .unwrap()
            .settings
            .issuer
            .clone()
            .unwrap_or_else(|| format!("{}/", self.public_url()))
    }

    /// Where the token endpoint listens: the public URL plus `/oauth2/token`.
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.public_url())
    }

    /// `GetTokenURLs` (hydra.md §2.2 step 5): `urls.self.public` (which defaults to the issuer)
    /// plus `/oauth2/token`, deduplicated; the only accepted assertion `aud`.
    pub fn accepted_token_urls(&self) -> Vec<String> {
        vec![append_path(&self.issuer(), "/oauth2/token")]
    }

    /// Sets `urls.self.issuer` (and so `urls.self.public` and the accepted token URL).
    pub fn set_issuer(&self, issuer: &str) {
        self.state.lock().unwrap().settings.issuer = Some(issuer.into());
    }

    /// Sets `oauth2.grant.jwt.max_ttl` (default 720h).
    pub fn set_max_ttl(&self, max_ttl: Duration) {
        self.state.lock().unwrap().settings.max_ttl = max_ttl;
    }

    /// Sets `oauth2.grant.jwt.jti_optional` (default false).
    pub fn set_jti_optional(&self, optional: bool) {
        self.state.lock().unwrap().settings.jti_optional = optional;
    }

    /// Sets `oauth2.grant.jwt.iat_optional` (default false).
    pub fn set_iat_optional(&self, optional: bool) {
        self.state.lock().unwrap().settings.iat_optional = optional;
    }

    /// Sets `ttl.access_token` (default 1h).
    pub fn set_access_token_ttl(&self, ttl: Duration) {
        self.state.lock().unwrap().settings.access_token_ttl = ttl;
    }

    /// Sets `strategies.scope`.
    pub fn set_scope_strategy(&self, strategy: ScopeStrategy) {
        self.state.lock().unwrap().settings.scope_strategy = strategy;
    }

    /// Sets `strategies.access_token` (a client's `access_token_strategy` overrides it).
    pub fn set_access_token_strategy(&self, strategy: AccessTokenStrategy) {
        self.state.lock().unwrap().settings.access_token_strategy = strategy;
    }

    /// Configures `oauth2.token_hook` (None: no hook).
    pub fn set_token_hook(&self, hook: Option<TokenHook>) {
        self.state.lock().unwrap().settings.token_hook = hook;
    }

    /// What the token hook would have been sent (`request` of hydra.md §2.7), in order.
    pub fn hook_requests(&self) -> Vec<Value> {
        self.state.lock().unwrap().hook_requests.clone()
    }

    /// Creates a client as `POST /admin/clients` does and returns its JSON, with the secret.
    /// Panics when the id exists (the admin API answers 409).
    pub fn add_client(&self, client: HydraClient) -> Value {
        match self.create_client(client) {
            Ok(json) => json,
            Err(e) => panic!("add_client: {}", e.description_text()),
        }
    }

    /// A stored client (with its secret).
    pub fn client(&self, id: &str) -> Option<HydraClient> {
        self.state.lock().unwrap().client(id)
    }

    /// Creates a trust relationship as `POST /admin/trust/grants/jwt-bearer/issuers` does
    /// (not counted in [`Hydra::trust_posts`]): Ok(201 body) or Err((status, error body)).
    pub fn trust(&self, body: &Value) -> Result<Value, (u16, Value)> {
        self.create_grant(body).map_err(|e| {
            (
                e.status,
                json!({"error": e.error, "error_description": e.description_text()}),
            )
        })
    }

    /// The trust relationships, in creation order.
    pub fn trust_grants(&self) -> Vec<TrustGrant> {
        self.state.lock().unwrap().grants.clone()
    }

    /// The public key stored under `(set, kid)` (hydra.md §2.3).
    pub fn stored_key(&self, set: &str, kid: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .key(set, kid)
            .map(|k| k.jwk.clone())
    }

    /// How many `POST /admin/trust/grants/jwt-bearer/issuers` requests arrived.
    pub fn trust_posts(&self) -> usize {
        self.state.lock().unwrap().trust_posts
    }

    /// Whether a jti is in the replay store.
    pub fn jti_known(&self, jti: &str) -> bool {
        self.state.lock().unwrap().jti_known(jti)
    }

    /// An issued token by its value.
    pub fn issued_token(&self, token: &str) -> Option<IssuedToken> {
        self.state.lock().unwrap().tokens.get(token).cloned()
    }

    /// All issued tokens.
    pub fn issued_tokens(&self) -> Vec<IssuedToken> {
        self.state
            .lock()
            .unwrap()
            .tokens
            .values()
            .cloned()
            .collect()
    }

    /// Introspects in-process, as `POST /admin/oauth2/introspect` with `token` does.
    pub fn introspect(&self, token: &str) -> Value {
        self.introspection(token, "")
    }

    /// Hydra's public JWK Set (`GET /.well-known/jwks.json`).
    pub fn jwks(&self) -> Value {
        json!({"keys": hydra_keys().iter().map(|k| k.public_jwk.clone()).collect::<Vec<_>>()})
    }

    /// Everything the public port received, in order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Everything the admin port received, in order (paths after the `/admin` rewrite).
    pub fn admin_requests(&self) -> Vec<SeenRequest> {
        self.state.lock().unwrap().admin_requests.clone()
    }

    /// How many public requests had this path (after the trailing-slash trim).
    pub fn count(&self, path: &str) -> usize {
        let wanted = path.strip_suffix('/').unwrap_or(path);
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path.strip_suffix('/').unwrap_or(&r.path) == wanted)
            .count()
    }

    /// The `/oauth2/token` requests, in order.
    pub fn token_requests(&self) -> Vec<SeenRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.strip_suffix('/').unwrap_or(&r.path) == "/oauth2/token")
            .collect()
    }

    /// Whether any `/oauth2/token` request had the token-exchange grant type.
    pub fn saw_token_exchange(&self) -> bool {
        self.token_requests()
            .iter()
            .any(|r| r.form_value("grant_type") == Some(TOKEN_EXCHANGE_GRANT))
    }

    fn record(&self, port: Port, seen: SeenRequest) {
        let mut state = self.state.lock().unwrap();
        match port {
            Port::Public => state.requests.push(seen),
            Port::Admin => state.admin_requests.push(seen),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Public port
    // -----------------------------------------------------------------------------------------

    async fn public(&self, req: Request<Incoming>) -> Response<Body> {
        let mut seen = seen_request(&req);
        // hydra.md §1: TrimTrailingSlashNegroni trims one trailing slash before routing.
        let path = seen.path.strip_suffix('/').unwrap_or(&seen.path).to_owned();
        let method = seen.method.clone();
        if path == "/oauth2/token" {
            return self.token_endpoint(req, seen).await;
        }
        let query = seen.query.clone().unwrap_or_default();
        let status_override = req
            .headers()
            .get("x-standin-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u16>().ok())
            .and_then(|v| StatusCode::from_u16(v).ok());
        let read = read_body(req.into_body(), 0).await;
        seen.body_sha256 = read.sha256.clone();
        seen.body_len = read.len;
        self.record(Port::Public, seen.clone());
        match (method.as_str(), path.as_str()) {
            // hydra.md §4: discovery is also served at /.well-known/oauth-authorization-server.
            ("GET", "/.well-known/openid-configuration")
            | ("GET", "/.well-known/oauth-authorization-server") => {
                herodot_json(200, &self.discovery())
            }
            ("GET", "/.well-known/jwks.json") => herodot_json(200, &self.jwks()),
            // hydra.md §4: /health/alive and /health/ready answer {"status":"ok"}.
            ("GET", "/health/alive") | ("GET", "/health/ready") => {
                herodot_json(200, &json!({"status": "ok"}))
            }
            // TEST INSTRUMENTATION, not Hydra behaviour: answered once the test opens the gate,
            // so that a test can hold many requests in flight at once.
            ("GET", "/standin/gate") => {
                let mut gate = self.gate.subscribe();
                let _ = gate.wait_for(|open| *open).await;
                herodot_json(200, &json!({"status": "ok"}))
            }
            // TEST INSTRUMENTATION, not Hydra behaviour: a streamed download.
            ("GET", "/standin/download") => {
                let param = |name: &str| {
                    url::form_urlencoded::parse(query.as_bytes())
                        .find(|(k, _)| k == name)
                        .and_then(|(_, v)| v.parse::<u64>().ok())
                };
                let body = Download {
                    offset: 0,
                    remaining: param("bytes").unwrap_or(0),
                    chunk: param("chunk").unwrap_or(16 * 1024).clamp(1, 1 << 20),
                };
                let mut response = Response::new(body.boxed());
                response
                    .headers_mut()
                    .insert("content-type", "application/octet-stream".parse().unwrap());
                response
            }
            // TEST INSTRUMENTATION, not Hydra behaviour: everything else is echoed.
            _ => {
                let echo = json!({
                    "method": seen.method,
                    "path": seen.path,
                    "query": seen.query,
                    "headers": seen.headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
                    "body_sha256": seen.body_sha256,
                    "body_len": seen.body_len,
                });
                let mut response = Response::new(full(echo.to_string()));
                *response.status_mut() = status_override.unwrap_or(StatusCode::OK);
                response
                    .headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                response
            }
        }
    }

    /// The discovery document (hydra.md §4; `oidcConfiguration`).
    fn discovery(&self) -> Value {
        let issuer = self.issuer();
        // urls.self.public defaults to urls.self.issuer.
        let public = issuer.clone();
        let alg = "RS256";
        let mut doc = json!({
            "issuer": issuer,
            "authorization_endpoint": append_path(&public, "/oauth2/auth"),
            "device_authorization_endpoint": append_path(&public, "/oauth2/device/auth"),
            "token_endpoint": append_path(&public, "/oauth2/token"),
            "jwks_uri": append_path(&issuer, "/.well-known/jwks.json"),
            "userinfo_endpoint": append_path(&public, "/userinfo"),
            "revocation_endpoint": append_path(&issuer, "/oauth2/revoke"),
            "end_session_endpoint": append_path(&issuer, "/oauth2/sessions/logout"),
            "registration_endpoint": append_path(&public, "/oauth2/register"),
            "credentials_endpoint_draft_00": append_path(&public, "/credentials"),
        });
        let more = json!({
            "subject_types_supported": ["public"],
            "response_types_supported": ["code", "code id_token", "id_token", "token id_token", "token", "token id_token code"],
            "claims_supported": ["sub"],
            "scopes_supported": ["offline_access", "offline", "openid"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic", "private_key_jwt", "none"],
            "id_token_signing_alg_values_supported": [alg],
            "id_token_signed_response_alg": [alg],
            "userinfo_signed_response_alg": [alg],
            // hydra.md §4: the five grant types; jwt-bearer is not listed (§2).
            "grant_types_supported": ["authorization_code", "implicit", "client_credentials", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "userinfo_signing_alg_values_supported": ["none", alg],
            "request_parameter_supported": true,
            "request_uri_parameter_supported": true,
            "require_request_uri_registration": true,
            "claims_parameter_supported": false,
            "backchannel_logout_supported": true,
            "backchannel_logout_session_supported": true,
            "frontchannel_logout_supported": true,
            "frontchannel_logout_session_supported": true,
            "request_object_signing_alg_values_supported": ["none", "RS256", "ES256"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "credentials_supported_draft_00": [{
                "format": "jwt_vc_json",
                "types": ["VerifiableCredential", "UserInfoCredential"],
                "cryptographic_binding_methods_supported": ["jwk"],
                "cryptographic_suites_supported": ["PS256", "RS256", "ES256", "PS384", "RS384", "ES384", "PS512", "RS512", "ES512", "EdDSA"],
            }],
        });
        // Two json! calls: one is past the macro recursion limit.
        doc.as_object_mut()
            .unwrap()
            .extend(more.as_object().unwrap().clone());
        doc
    }

    /// `POST /oauth2/token` (hydra.md §1, `NewAccessRequest`).
    async fn token_endpoint(
        &self,
        req: Request<Incoming>,
        mut seen: SeenRequest,
    ) -> Response<Body> {
        let is_post = req.method() == hyper::Method::POST;
        let content_type = header_str(req.headers(), "content-type");
        let authorization = header_str(req.headers(), "authorization");
        let read = read_body(req.into_body(), FORM_LIMIT).await;
        seen.body_sha256 = read.sha256.clone();
        seen.body_len = read.len;
        // hydra.md §1: only an application/x-www-form-urlencoded body is read; the query never.
        let form = parse_post_form(content_type.as_deref(), read.bytes.as_deref());
        if let Ok(pairs) = &form {
            seen.form = pairs.clone();
        }
        let method = seen.method.clone();
        self.record(Port::Public, seen);
        let result = if !is_post {
            Err(OAuthError::invalid_request()
                .hint(format!("HTTP method is '{method}', expected 'POST'.")))
        } else {
            match form {
                Err(()) => Err(OAuthError::invalid_request().hint(
                    "Unable to parse HTTP body, make sure to send a properly formatted form request body.",
                )),
                Ok(pairs) if pairs.is_empty() => {
                    Err(OAuthError::invalid_request().hint("The POST body can not be empty."))
                }
                Ok(pairs) => self.access_request(&pairs, authorization).await,
            }
        };
        match result {
            Ok(body) => fosite_json(200, body),
            Err(e) => fosite_json(e.status, e.body()),
        }
    }

    /// `NewAccessRequest` + `oauth2TokenExchange` (hydra.md §1, §2).
    async fn access_request(
        &self,
        form: &[(String, String)],
        authorization: Option<String>,
    ) -> Result<String, OAuthError> {
        let requested_scopes = remove_empty(first(form, "scope").split(' '));
        let requested_audience = get_audiences(form);
        let grant_types = remove_empty(first(form, "grant_type").split(' '));
        if grant_types.is_empty() {
            return Err(
                OAuthError::invalid_request().hint("Request parameter 'grant_type' is missing")
            );
        }
        // Authentication runs first; its error is only reported when a handler claims the
        // request (hydra.md §1 "Unknown grant type").
        let client = self
            .authenticate_client(form, authorization.as_deref())
            .await;
        let exact_one = |grant: &str| grant_types.len() == 1 && grant_types[0] == grant;
        let mut outcome = if exact_one("client_credentials") {
            self.client_credentials(&client?, &requested_scopes, &requested_audience)?
        } else if exact_one(JWT_BEARER_GRANT) {
            self.jwt_bearer(&client?, form, &requested_scopes)?
        } else if exact_one("authorization_code")
            || exact_one("refresh_token")
            || exact_one("urn:ietf:params:oauth:grant-type:device_code")
        {
            // Simplified: Hydra has handlers for these grants, but the stand-in never issues
            // codes or refresh tokens, so any presented one is unknown.
            let client = client?;
            if !client.has_grant(&grant_types[0]) {
                return Err(OAuthError::unauthorized_client().hint(format!(
                    "The OAuth 2.0 Client is not allowed to use authorization grant '{}'.",
                    grant_types[0]
                )));
            }
            return Err(OAuthError::invalid_grant());
        } else {
            // hydra.md §1: no handler claims it (token exchange included): 400 invalid_request.
            return Err(OAuthError::invalid_request());
        };
        let strategy = self.state.lock().unwrap().settings.scope_strategy;
        // oauth2/handler.go (hydra.md §2.4): the wrapper re-grants requested scopes the client's
        // `scope` allows, and each requested audience the client's `audience` allows.
        let client_scopes = outcome.client.scopes();
        for scope in &requested_scopes {
            if scope_matches(strategy, &client_scopes, scope) {
                push_unique(&mut outcome.scopes, scope);
            }
        }
        for audience in &requested_audience {
            if audience_matches(&outcome.client.audience, std::slice::from_ref(audience)).is_ok() {
                push_unique(&mut outcome.audience, audience);
            }
        }
        // hydra.md §2.7: the token hook runs for every grant, after the jti was burned.
        self.run_token_hook(&mut outcome, &grant_types, form)?;
        // flow_client_credentials.go PopulateTokenEndpointResponse: the grant-type check of
        // client_credentials runs only now, when the response is built.
        if outcome.grant_type == "client_credentials"
            && !outcome.client.has_grant("client_credentials")
        {
            return Err(OAuthError::unauthorized_client().hint(
                "The OAuth 2.0 Client is not allowed to use authorization grant 'client_credentials'.",
            ));
        }
        Ok(self.issue(outcome))
    }

    fn run_token_hook(
        &self,
        outcome: &mut Outcome,
        grant_types: &[String],
        form: &[(String, String)],
    ) -> Result<(), OAuthError> {
        let mut state = self.state.lock().unwrap();
        let Some(hook) = state.settings.token_hook.clone() else {
            return Ok(());
        };
        // hydra.md §2.7: the payload holds only these form keys.
        let mut payload = Map::new();
        for key in [
            "assertion",
            "grant_type",
            "scope",
            "client_id",
            "response_type",
        ] {
            let values: Vec<&str> = form
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .collect();
            if !values.is_empty() {
                payload.insert(key.into(), json!(values));
            }
        }
        state.hook_requests.push(json!({
            "client_id": outcome.client.client_id,
            "granted_scopes": outcome.scopes,
            "granted_audience": outcome.audience,
            "grant_types": grant_types,
            "payload": payload,
        }));
        match hook {
            TokenHook::NoContent => Ok(()),
            TokenHook::Claims(claims) => {
                outcome.ext = claims;
                Ok(())
            }
            TokenHook::Status(403) => Err(OAuthError::access_denied()
                .describe("The token hook target responded with an error.")),
            TokenHook::Status(_) => Err(OAuthError::server_error()
                .describe("The token hook target responded with an error.")),
        }
    }

    /// Issues the access token (`IssueAccessToken`) and returns the response body.
    fn issue(&self, outcome: Outcome) -> String {
        let mut state = self.state.lock().unwrap();
        let strategy = match outcome.client.access_token_strategy.as_str() {
            "jwt" => AccessTokenStrategy::Jwt,
            "opaque" => AccessTokenStrategy::Opaque,
            _ => state.settings.access_token_strategy,
        };
        let issuer = state
            .settings
            .issuer
            .clone()
            .unwrap_or_else(|| format!("{}/", self.public_url()));
        let token = match strategy {
            AccessTokenStrategy::Opaque => opaque_token(),
            AccessTokenStrategy::Jwt => {
                // hydra.md §5: the JWT access token's claims and header.
                let key = &hydra_keys()[1];
                let claims = json!({
                    "iss": issuer,
                    "sub": outcome.subject,
                    "aud": outcome.audience,
                    "client_id": outcome.client.client_id,
                    "exp": (outcome.expires_at_ns / 1_000_000_000) as i64,
                    "iat": (outcome.requested_at_ns / 1_000_000_000) as i64,
                    "nbf": (outcome.requested_at_ns / 1_000_000_000) as i64,
                    "jti": uuid_v4(),
                    "scp": outcome.scopes,
                    "ext": outcome.ext,
                });
                let mut header = jsonwebtoken::Header::new(key.alg);
                header.kid = Some(key.kid.clone());
                jsonwebtoken::encode(&header, &claims, &key.encoding).expect("sign access token")
            }
        };
        // access_response.go SetExpiresIn: whole seconds left, computed after issuance.
        let expires_in = ((outcome.expires_at_ns - now_ns()).max(0) / 1_000_000_000) as i64;
        let scope = outcome.scopes.join(" ");
        state.tokens.insert(
            token.clone(),
            IssuedToken {
                token: token.clone(),
                grant_type: outcome.grant_type,
                client_id: outcome.client.client_id.clone(),
                subject: outcome.subject,
                scopes: outcome.scopes,
                audience: outcome.audience,
                issued_at: from_ns(outcome.requested_at_ns),
                expires_at: from_ns(outcome.expires_at_ns),
                ext: outcome.ext,
            },
        );
        // hydra.md §1/§2.5: Go marshals the response map with sorted keys; `scope` is always
        // present; never refresh_token or id_token for these grants.
        format!(
            "{{\"access_token\":{},\"expires_in\":{expires_in},\"scope\":{},\"token_type\":\"bearer\"}}",
            go_json(&json!(token)),
            go_json(&json!(scope)),
        )
    }

    /// `DefaultClientAuthenticationStrategy` (hydra.md §1 "Client authentication";
    /// fosite/client_authentication.go).
    async fn authenticate_client(
        &self,
        form: &[(String, String)],
        authorization: Option<&str>,
    ) -> Result<HydraClient, OAuthError> {
        let assertion_type = first(form, "client_assertion_type");
        if assertion_type == CLIENT_ASSERTION_TYPE {
            return self.authenticate_assertion(form).await;
        } else if !assertion_type.is_empty() {
            // hydra.md §1: a wrong client_assertion_type is invalid_request.
            return Err(OAuthError::invalid_request()
                .hint(format!("Unknown client_assertion_type '{assertion_type}'.")));
        }
        let basic = authorization.and_then(parse_basic);
        let (client_id, secret) = match &basic {
            None => {
                let id = first(form, "client_id");
                if id.is_empty() {
                    return Err(OAuthError::invalid_request().hint(
                        "Client credentials missing or malformed in both HTTP Authorization header and HTTP POST body.",
                    ));
                }
                (
                    id.to_owned(),
                    first(form, "client_secret").as_bytes().to_vec(),
                )
            }
            // hydra.md §1: url.QueryUnescape of id and secret; Basic wins over the body.
            Some((raw_id, raw_secret)) => {
                let id = query_unescape(raw_id).map_err(|_| OAuthError::invalid_request().hint(
                    "The client id in the HTTP authorization header could not be decoded from 'application/x-www-form-urlencoded'.",
                ))?;
                let secret = query_unescape(raw_secret).map_err(|_| OAuthError::invalid_request().hint(
                    "The client secret in the HTTP authorization header could not be decoded from 'application/x-www-form-urlencoded'.",
                ))?;
                (String::from_utf8_lossy(&id).into_owned(), secret)
            }
        };
        let client = self
            .state
            .lock()
            .unwrap()
            .client(&client_id)
            .ok_or_else(OAuthError::invalid_client)?;
        let method = client.auth_method().to_owned();
        // hydra.md §1: body credentials to a non-post client, and the mirror case.
        if !first(form, "client_id").is_empty()
            && !first(form, "client_secret").is_empty()
            && method != "client_secret_post"
        {
            return Err(OAuthError::invalid_client().hint(format!(
                "The OAuth 2.0 Client supports client authentication method '{method}', but method 'client_secret_post' was requested. You must configure the OAuth 2.0 client's 'token_endpoint_auth_method' value to accept 'client_secret_post'."
            )));
        }
        if let Some((_, raw_secret)) = &basic
            && !raw_secret.is_empty()
            && method != "client_secret_basic"
        {
            return Err(OAuthError::invalid_client().hint(format!(
                "The OAuth 2.0 Client supports client authentication method '{method}', but method 'client_secret_basic' was requested. You must configure the OAuth 2.0 client's 'token_endpoint_auth_method' value to accept 'client_secret_basic'."
            )));
        }
        // hydra.md §1: `none` (public clients) is not checked further.
        if client.is_public() {
            return Ok(client);
        }
        let stored = client.client_secret.as_deref().unwrap_or("").as_bytes();
        if stored.is_empty() || stored != secret.as_slice() {
            return Err(OAuthError::invalid_client());
        }
        Ok(client)
    }

    /// private_key_jwt (hydra.md §1; fosite/client_authentication.go, token/jwt/token.go).
    async fn authenticate_assertion(
        &self,
        form: &[(String, String)],
    ) -> Result<HydraClient, OAuthError> {
        let assertion = first(form, "client_assertion");
        if assertion.is_empty() {
            return Err(OAuthError::invalid_request().hint(format!(
                "The client_assertion request parameter must be set when using client_assertion_type of '{CLIENT_ASSERTION_TYPE}'."
            )));
        }
        let integrity = || {
            OAuthError::invalid_client()
                .hint("Unable to verify the integrity of the 'client_assertion' value.")
        };
        let jws = Jws::parse(assertion).ok_or_else(integrity)?;
        let claims = jws.payload.as_object().cloned().ok_or_else(integrity)?;
        // The key function: the client comes from the form's client_id, else from `sub`.
        let client_id = match first(form, "client_id") {
            "" => match claims.get("sub") {
                Some(Value::String(sub)) => sub.clone(),
                _ => {
                    return Err(OAuthError::invalid_client().hint(
                        "The claim 'sub' from the client_assertion JSON Web Token is undefined.",
                    ));
                }
            },
            id => id.to_owned(),
        };
        let client = self
            .state
            .lock()
            .unwrap()
            .client(&client_id)
            .ok_or_else(OAuthError::invalid_client)?;
        match client.auth_method() {
            "private_key_jwt" => {}
            "none" => {
                return Err(OAuthError::invalid_client().hint(
                    "This requested OAuth 2.0 client does not support client authentication, however 'client_assertion' was provided in the request.",
                ));
            }
            m @ ("client_secret_post" | "client_secret_basic") => {
                return Err(OAuthError::invalid_client().hint(format!(
                    "This requested OAuth 2.0 client only supports client authentication method '{m}', however 'client_assertion' was provided in the request."
                )));
            }
            m => {
                return Err(OAuthError::invalid_client().hint(format!(
                    "This requested OAuth 2.0 client only supports client authentication method '{m}', however that method is not supported by this server."
                )));
            }
        }
        // hydra.md §1: the header alg must equal token_endpoint_auth_signing_alg (default RS256).
        let alg = jws.alg.clone();
        if client.signing_alg() != alg {
            return Err(OAuthError::invalid_client().hint(format!(
                "The 'client_assertion' uses signing algorithm '{alg}' but the requested OAuth 2.0 Client enforces signing algorithm '{}'.",
                client.signing_alg()
            )));
        }
        let expects_rsa = match alg.as_str() {
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => true,
            "ES256" | "ES384" | "ES512" => false,
            "HS256" | "HS384" | "HS512" => {
                return Err(OAuthError::invalid_client().hint(
                    "This authorization server does not support client authentication method 'client_secret_jwt'.",
                ));
            }
            _ => {
                return Err(OAuthError::invalid_client().hint(format!(
                    "The 'client_assertion' request parameter uses unsupported signing algorithm '{alg}'."
                )));
            }
        };
        let jwks = match &client.jwks {
            Some(set) => set.clone(),
            None if !client.jwks_uri.is_empty() => fetch_jwks(&client.jwks_uri).await?,
            None => {
                return Err(OAuthError::invalid_client().hint(
                    "The OAuth 2.0 Client has no JSON Web Keys set registered, but they are needed to complete the request.",
                ));
            }
        };
        // hydra.md §1: only keys with use=sig are considered.
        let key = find_client_key(&jws, &jwks, expects_rsa)?;
        if !jws.verify_with(&key) {
            return Err(integrity());
        }
        // token/jwt/map_claims.go Valid(): exp, iat and nbf, no leeway. A failure there is handed
        // back as the ValidationError's plain Inner error ("Token is expired"), which Hydra
        // writes as 500 {"error":"error","error_description":"The error is unrecognizable"}.
        let now = now_secs();
        let time_claim = |name: &str| claims.get(name).and_then(to_i64).filter(|v| *v != 0);
        if time_claim("exp").is_some_and(|exp| now > exp)
            || time_claim("iat").is_some_and(|iat| now < iat)
            || time_claim("nbf").is_some_and(|nbf| now < nbf)
        {
            return Err(OAuthError::unrecognizable());
        }
        // hydra.md §1: iss = sub = client_id, jti required and single-use.
        if claims.get("iss").and_then(Value::as_str) != Some(client_id.as_str()) {
            return Err(OAuthError::invalid_client().hint(
                "Claim 'iss' from 'client_assertion' must match the 'client_id' of the OAuth 2.0 Client.",
            ));
        }
        if claims.get("sub").and_then(Value::as_str) != Some(client_id.as_str()) {
            return Err(OAuthError::invalid_client().hint(
                "Claim 'sub' from 'client_assertion' must match the 'client_id' of the OAuth 2.0 Client.",
            ));
        }
        let jti = match claims.get("jti").and_then(Value::as_str) {
            Some(jti) if !jti.is_empty() => jti.to_owned(),
            _ => {
                return Err(OAuthError::invalid_client()
                    .hint("Claim 'jti' from 'client_assertion' must be set but is not."));
            }
        };
        let mut state = self.state.lock().unwrap();
        if state.jti_known(&jti) {
            return Err(OAuthError::jti_known()
                .hint("Claim 'jti' from 'client_assertion' MUST only be used once."));
        }
        let Some(exp) = claims.get("exp").and_then(to_i64) else {
            return Err(OAuthError::invalid_client().hint(
                "Unable to type assert the expiry time from claims. This should not happen as we validate the expiry time already earlier with token.Claims.Valid()",
            ));
        };
        // The jti is stored before the audience is checked.
        state.jtis.insert(jti, i128::from(exp) * 1_000_000_000);
        let issuer = state.settings.issuer.clone();
        drop(state);
        let token_urls = [append_path(
            &issuer.unwrap_or_else(|| format!("{}/", self.public_url())),
            "/oauth2/token",
        )];
        let aud_ok = match claims.get("aud") {
            Some(Value::Array(items)) => items.iter().any(|a| {
                a.as_str()
                    .is_some_and(|a| token_urls.iter().any(|u| u == a))
            }),
            Some(Value::String(a)) => token_urls.iter().any(|u| u == a),
            _ => false,
        };
        if !aud_ok {
            return Err(OAuthError::invalid_client().hint(format!(
                "Claim 'audience' from 'client_assertion' must match the authorization server's token endpoint '{}'.",
                token_urls.join("' or '")
            )));
        }
        Ok(client)
    }

    /// `ClientCredentialsGrantHandler.HandleTokenEndpointRequest` (hydra.md §1).
    fn client_credentials(
        &self,
        client: &HydraClient,
        scopes: &[String],
        audience: &[String],
    ) -> Result<Outcome, OAuthError> {
        let settings = {
            let state = self.state.lock().unwrap();
            (
                state.settings.scope_strategy,
                state.settings.access_token_ttl,
            )
        };
        let client_scopes = client.scopes();
        for scope in scopes {
            if !scope_matches(settings.0, &client_scopes, scope) {
                return Err(OAuthError::invalid_scope().hint(format!(
                    "The OAuth 2.0 Client is not allowed to request scope '{scope}'."
                )));
            }
        }
        // hydra.md §1: the requested audience must pass the URL-prefix strategy.
        audience_matches(&client.audience, audience)?;
        if client.is_public() {
            return Err(OAuthError::invalid_grant().hint(
                "The OAuth 2.0 Client is marked as public and is thus not allowed to use authorization grant 'client_credentials'.",
            ));
        }
        let now = now_ns();
        let lifespan = client
            .client_credentials_grant_access_token_lifespan
            .unwrap_or(settings.1);
        Ok(Outcome {
            grant_type: "client_credentials".into(),
            client: client.clone(),
            // oauth2/handler.go: the subject of client_credentials is the client id.
            subject: client.client_id.clone(),
            scopes: Vec::new(),
            audience: Vec::new(),
            requested_at_ns: now,
            expires_at_ns: now + lifespan.as_nanos() as i128,
            ext: Map::new(),
        })
    }

    /// The jwt-bearer grant, hydra.md §2.1–§2.4 (fosite/handler/rfc7523/handler.go).
    fn jwt_bearer(
        &self,
        client: &HydraClient,
        form: &[(String, String)],
        scopes: &[String],
    ) -> Result<Outcome, OAuthError> {
        // hydra.md §2.1: the authenticated client must have the grant type.
        if !client.has_grant(JWT_BEARER_GRANT) {
            return Err(OAuthError::unauthorized_client().hint(format!(
                "The OAuth 2.0 Client is not allowed to use authorization grant \"{JWT_BEARER_GRANT}\"."
            )));
        }
        let assertion = first(form, "assertion");
        if assertion.is_empty() {
            return Err(OAuthError::invalid_request().hint(format!(
                "The assertion request parameter must be set when using grant_type of '{JWT_BEARER_GRANT}'."
            )));
        }
        // hydra.md §2.2 step 1: the JWS must parse.
        let jws = Jws::parse(assertion).ok_or_else(|| {
            OAuthError::invalid_grant()
                .hint("Unable to parse JSON Web Token passed in \"assertion\" request parameter.")
        })?;
        // Step 2: iss and sub non-empty (claims read without verification first).
        let claims = AssertionClaims::read(&jws.payload).ok_or_else(|| {
            OAuthError::invalid_grant()
                .hint("Looks like there are no claims in JWT in \"assertion\" request parameter.")
        })?;
        if claims.iss.is_empty() {
            return Err(OAuthError::invalid_grant().hint(
                "The JWT in \"assertion\" request parameter MUST contain an \"iss\" (issuer) claim.",
            ));
        }
        if claims.sub.is_empty() {
            return Err(OAuthError::invalid_grant().hint(
                "The JWT in \"assertion\" request parameter MUST contain a \"sub\" (subject) claim.",
            ));
        }
        let mut state = self.state.lock().unwrap();
        let now = now_ns();
        // Step 3: key lookup.
        let key_not_found = OAuthError::invalid_grant().hint(format!(
            "No public JWK was registered for issuer \"{}\" and subject \"{}\", and public key is required to check signature of JWT in \"assertion\" request parameter.",
            claims.iss, claims.sub
        ));
        let subject_matches = |g: &TrustGrant| {
            g.issuer == claims.iss && (g.subject == claims.sub || g.allow_any_subject)
        };
        let key_id = if !jws.kid.is_empty() {
            // With a kid: (kid, iss, sub or any), expires_at NOT checked
            // (persister_grant_jwk.go GetPublicKey).
            let grant = state
                .grants
                .iter()
                .find(|g| subject_matches(g) && g.key_id == jws.kid)
                .ok_or_else(|| key_not_found.clone())?;
            let key = state
                .key(&grant.key_set, &jws.kid)
                .ok_or_else(|| key_not_found.clone())?;
            // Step 4: the signature.
            if !jws.verify_with(&key.jwk) {
                return Err(OAuthError::invalid_grant()
                    .hint("Unable to verify the integrity of the 'assertion' value."));
            }
            jws.kid.clone()
        } else {
            // Without a kid: up to 100 keys of non-expired grants, newest first, tried in turn.
            let mut grants: Vec<&TrustGrant> = state
                .grants
                .iter()
                .filter(|g| subject_matches(g) && to_ns(g.expires_at) > now)
                .collect();
            grants.sort_by_key(|g| std::cmp::Reverse(g.created_at));
            grants.truncate(100);
            let mut keys: Vec<&StoredKey> = state
                .keys
                .iter()
                .filter(|k| k.set == claims.iss && grants.iter().any(|g| g.key_id == k.kid))
                .collect();
            keys.sort_by_key(|k| std::cmp::Reverse(k.seq));
            let key = keys
                .into_iter()
                .find(|k| jws.verify_with(&k.jwk))
                .ok_or_else(|| key_not_found.clone())?;
            key.kid.clone()
        };
        // Step 5: claims.
        let token_url = append_path(
            &state
                .settings
                .issuer
                .clone()
                .unwrap_or_else(|| format!("{}/", self.public_url())),
            "/oauth2/token",
        );
        let token_urls = [token_url];
        let invalid = |hint: String| OAuthError::invalid_grant().hint(hint);
        if claims.aud.is_empty() {
            return Err(invalid("The JWT in \"assertion\" request parameter MUST contain an \"aud\" (audience) claim.".into()));
        }
        if !token_urls.iter().any(|u| claims.aud.contains(u)) {
            return Err(invalid(format!(
                "The JWT in \"assertion\" request parameter MUST contain an \"aud\" (audience) claim containing a value \"{}\" that identifies the authorization server as an intended audience.",
                token_urls.join("\" or \"")
            )));
        }
        let Some(exp) = claims.exp else {
            return Err(invalid("The JWT in \"assertion\" request parameter MUST contain an \"exp\" (expiration time) claim.".into()));
        };
        // No leeway: expired when exp is before now (nanosecond clock, second-precision exp).
        if i128::from(exp) * 1_000_000_000 < now {
            return Err(invalid(
                "The JWT in \"assertion\" request parameter expired.".into(),
            ));
        }
        if let Some(nbf) = claims.nbf
            && i128::from(nbf) * 1_000_000_000 >= now
        {
            return Err(invalid(format!(
                "The JWT in \"assertion\" request parameter contains an \"nbf\" (not before) claim, that identifies the time '{}' before which the token MUST NOT be accepted.",
                rfc3339_secs(nbf)
            )));
        }
        if !state.settings.iat_optional && claims.iat.is_none() {
            return Err(invalid("The JWT in \"assertion\" request parameter MUST contain an \"iat\" (issued at) claim.".into()));
        }
        let issued_ns = claims
            .iat
            .map_or(now, |iat| i128::from(iat) * 1_000_000_000);
        if i128::from(exp) * 1_000_000_000 - issued_ns > state.settings.max_ttl.as_nanos() as i128 {
            return Err(invalid(format!(
                "The JWT in \"assertion\" request parameter contains an \"exp\" (expiration time) claim with value \"{}\" that is unreasonably far in the future, considering token issued at \"{}\".",
                rfc3339_secs(exp),
                rfc3339_secs((issued_ns / 1_000_000_000) as i64)
            )));
        }
        if !state.settings.jti_optional && claims.jti.is_empty() {
            return Err(invalid("The JWT in \"assertion\" request parameter MUST contain an \"jti\" (JWT ID) claim.".into()));
        }
        if !claims.jti.is_empty() && state.jti_known(&claims.jti) {
            return Err(OAuthError::jti_known());
        }
        // Step 6: each requested scope must be allowed by the trust relationship
        // (GetPublicKeyScopes: the first relationship for (iss, sub or any, kid)).
        let allowed = state
            .grants
            .iter()
            .find(|g| subject_matches(g) && g.key_id == key_id)
            .map(|g| g.scope.clone())
            .ok_or_else(OAuthError::server_error)?;
        for scope in scopes {
            if !scope_matches(state.settings.scope_strategy, &allowed, scope) {
                return Err(OAuthError::invalid_scope().hint(format!(
                    "The public key registered for issuer \"{}\" and subject \"{}\" is not allowed to request scope \"{scope}\".",
                    claims.iss, claims.sub
                )));
            }
        }
        // Step 7: the jti is burned until exp, before the token is issued (so a later failure,
        // e.g. of the token hook, leaves it burned).
        if !claims.jti.is_empty() {
            state
                .jtis
                .insert(claims.jti.clone(), i128::from(exp) * 1_000_000_000);
        }
        // hydra.md §2.4: scopes as requested; every assertion aud copied unchecked; sub = the
        // assertion's sub; lifetime = the client's jwt-bearer lifespan or ttl.access_token,
        // rounded to the second.
        let mut granted_scopes = Vec::new();
        for scope in scopes {
            push_unique(&mut granted_scopes, scope);
        }
        let mut granted_audience = Vec::new();
        for aud in &claims.aud {
            push_unique(&mut granted_audience, aud);
        }
        let lifespan = client
            .jwt_bearer_grant_access_token_lifespan
            .unwrap_or(state.settings.access_token_ttl);
        let expires =
            (now + lifespan.as_nanos() as i128 + 500_000_000) / 1_000_000_000 * 1_000_000_000;
        Ok(Outcome {
            grant_type: JWT_BEARER_GRANT.into(),
            client: client.clone(),
            subject: claims.sub,
            scopes: granted_scopes,
            audience: granted_audience,
            requested_at_ns: now,
            expires_at_ns: expires,
            ext: Map::new(),
        })
    }

    // -----------------------------------------------------------------------------------------
    // Admin port
    // -----------------------------------------------------------------------------------------

    async fn admin(&self, req: Request<Incoming>) -> Response<Body> {
        let mut seen = seen_request(&req);
        // hydra.md §4: AddAdminPrefixIfNotPresentNegroni.
        if !seen.path.starts_with("/admin") {
            seen.path = format!("/admin{}", seen.path);
        }
        let path = seen.path.strip_suffix('/').unwrap_or(&seen.path).to_owned();
        let method = seen.method.clone();
        let content_type = header_str(req.headers(), "content-type");
        let read = read_body(req.into_body(), FORM_LIMIT).await;
        seen.body_sha256 = read.sha256.clone();
        seen.body_len = read.len;
        let body = read.bytes.unwrap_or_default();
        if path == "/admin/oauth2/introspect"
            && let Ok(pairs) = parse_post_form(content_type.as_deref(), Some(&body))
        {
            seen.form = pairs;
        }
        let query = seen.query.clone().unwrap_or_default();
        let form = seen.form.clone();
        self.record(Port::Admin, seen);
        let segments: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["admin", "health", "alive" | "ready"]) => {
                herodot_json(200, &json!({"status": "ok"}))
            }
            ("GET", ["admin", "version"]) => herodot_json(200, &json!({"version": "v26.2.0"})),
            ("GET", ["admin", "clients"]) => {
                let state = self.state.lock().unwrap();
                let list: Vec<Value> = state
                    .clients
                    .iter()
                    .map(|c| c.client.to_json(false, c.created_at, c.updated_at))
                    .collect();
                herodot_json(200, &Value::Array(list))
            }
            ("POST", ["admin", "clients"]) => {
                let parsed = serde_json::from_slice::<Value>(&body)
                    .map_err(|e| e.to_string())
                    .and_then(|v| HydraClient::from_json(&v));
                match parsed {
                    Ok(client) => match self.create_client(client) {
                        Ok(json) => herodot_json(201, &json),
                        Err(e) => admin_error(&e),
                    },
                    Err(reason) => admin_error(&OAuthError::bad_request(format!(
                        "Unable to decode the request body: {reason}"
                    ))),
                }
            }
            ("GET", ["admin", "clients", id]) => {
                // TEST INSTRUMENTATION, not Hydra behaviour: a slow lookup on request.
                let delay = *self.client_lookup_delay.lock().unwrap();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let state = self.state.lock().unwrap();
                match state.clients.iter().find(|c| c.client.client_id == *id) {
                    // hydra.md §4: GET never returns the secret.
                    Some(c) => {
                        herodot_json(200, &c.client.to_json(false, c.created_at, c.updated_at))
                    }
                    None => admin_error(&OAuthError::not_found()),
                }
            }
            ("DELETE", ["admin", "clients", id]) => {
                let mut state = self.state.lock().unwrap();
                let before = state.clients.len();
                state.clients.retain(|c| c.client.client_id != *id);
                if state.clients.len() == before {
                    admin_error(&OAuthError::not_found())
                } else {
                    empty(204)
                }
            }
            ("POST", ["admin", "trust", "grants", "jwt-bearer", "issuers"]) => {
                self.state.lock().unwrap().trust_posts += 1;
                let parsed = if body.is_empty() {
                    Err(OAuthError::decode("EOF".into()))
                } else {
                    serde_json::from_slice::<Value>(&body)
                        .map_err(|e| OAuthError::decode(e.to_string()))
                };
                match parsed.and_then(|v| self.create_grant(&v)) {
                    Ok(json) => {
                        let mut response = herodot_json(201, &json);
                        let location =
                            format!("{TRUST_PATH}/{}", json["id"].as_str().unwrap_or(""));
                        response
                            .headers_mut()
                            .insert("location", location.parse().unwrap());
                        response
                    }
                    Err(e) => admin_error(&e),
                }
            }
            ("GET", ["admin", "trust", "grants", "jwt-bearer", "issuers"]) => {
                let issuer = url::form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == "issuer")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                let state = self.state.lock().unwrap();
                let list: Vec<Value> = state
                    .grants
                    .iter()
                    .filter(|g| issuer.is_empty() || g.issuer == issuer)
                    .map(TrustGrant::to_json)
                    .collect();
                herodot_json(200, &Value::Array(list))
            }
            ("GET", ["admin", "trust", "grants", "jwt-bearer", "issuers", id]) => {
                if !is_uuid(id) {
                    return admin_error(&OAuthError::bad_request(format!(
                        "Unable to parse parameter id: uuid: incorrect UUID length {} in string \"{id}\"",
                        id.len()
                    )));
                }
                let state = self.state.lock().unwrap();
                match state.grants.iter().find(|g| g.id == *id) {
                    Some(g) => herodot_json(200, &g.to_json()),
                    None => admin_error(&OAuthError::not_found()),
                }
            }
            ("DELETE", ["admin", "trust", "grants", "jwt-bearer", "issuers", id]) => {
                if !is_uuid(id) {
                    return admin_error(&OAuthError::bad_request(format!(
                        "Unable to parse parameter id: uuid: incorrect UUID length {} in string \"{id}\"",
                        id.len()
                    )));
                }
                let mut state = self.state.lock().unwrap();
                let Some(index) = state.grants.iter().position(|g| g.id == *id) else {
                    return admin_error(&OAuthError::not_found());
                };
                let grant = state.grants.remove(index);
                // hydra.md §2.3: deleting a relationship also deletes its stored key.
                state
                    .keys
                    .retain(|k| !(k.set == grant.key_set && k.kid == grant.key_id));
                empty(204)
            }
            (_, ["admin", "oauth2", "introspect"]) => {
                // oauth2/handler.go introspectOAuth2Token.
                if method != "POST" {
                    let e = OAuthError::invalid_request()
                        .hint(format!("HTTP method is \"{method}\", expected \"POST\"."));
                    return fosite_json(e.status, e.body());
                }
                if form.is_empty() {
                    let e = OAuthError::invalid_request().hint("The POST body can not be empty.");
                    return fosite_json(e.status, e.body());
                }
                let answer = self.introspection(first(&form, "token"), first(&form, "scope"));
                let mut response = Response::new(full(format!("{}\n", go_json(&answer))));
                let headers = response.headers_mut();
                headers.insert(
                    "content-type",
                    "application/json;charset=UTF-8".parse().unwrap(),
                );
                if answer["active"] == json!(false) {
                    headers.insert("cache-control", "no-store".parse().unwrap());
                    headers.insert("pragma", "no-cache".parse().unwrap());
                }
                response
            }
            _ => {
                let mut response = Response::new(full("404 page not found\n"));
                *response.status_mut() = StatusCode::NOT_FOUND;
                response
                    .headers_mut()
                    .insert("content-type", "text/plain; charset=utf-8".parse().unwrap());
                response
            }
        }
    }

    fn create_client(&self, mut client: HydraClient) -> Result<Value, OAuthError> {
        if client.client_id.is_empty() {
            client.client_id = uuid_v4();
        }
        if client.token_endpoint_auth_method.is_empty() {
            client.token_endpoint_auth_method = "client_secret_basic".into();
        }
        if client.client_secret.is_none() && !client.is_public() {
            client.client_secret = Some(random_b64(26));
        }
        let mut state = self.state.lock().unwrap();
        if state.client(&client.client_id).is_some() {
            return Err(OAuthError::conflict());
        }
        let now = round_to_second(SystemTime::now());
        let json = client.to_json(true, now, now);
        state.clients.push(StoredClient {
            client,
            created_at: now,
            updated_at: now,
        });
        Ok(json)
    }

    /// `trustOAuth2JwtGrantIssuer` (hydra.md §2.3; oauth2/trust/handler.go and validator.go).
    fn create_grant(&self, body: &Value) -> Result<Value, OAuthError> {
        let object = body
            .as_object()
            .ok_or_else(|| OAuthError::decode("json: cannot unmarshal into the request".into()))?;
        let text = |name: &str| -> Result<String, OAuthError> {
            match object.get(name) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(OAuthError::decode(format!(
                    "json: cannot unmarshal into Go struct field .{name} of type string"
                ))),
            }
        };
        let issuer = text("issuer")?;
        let subject = text("subject")?;
        let allow_any_subject = match object.get("allow_any_subject") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(OAuthError::decode(
                    "json: cannot unmarshal into Go struct field .allow_any_subject of type bool"
                        .into(),
                ));
            }
        };
        let scope: Vec<String> = match object.get("scope") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(String::from))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    OAuthError::decode(
                        "json: cannot unmarshal into Go struct field .scope of type string".into(),
                    )
                })?,
            Some(_) => {
                return Err(OAuthError::decode(
                    "json: cannot unmarshal into Go struct field .scope of type []string".into(),
                ));
            }
        };
        let expires_at = match object.get("expires_at") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                OffsetDateTime::parse(s, &Rfc3339)
                    .map_err(|e| OAuthError::decode(format!("parsing time {s:?}: {e}")))?,
            ),
            Some(_) => {
                return Err(OAuthError::decode(
                    "json: cannot unmarshal into Go struct field .expires_at of type time.Time"
                        .into(),
                ));
            }
        };
        let jwk = match object.get("jwk") {
            None | Some(Value::Null) => None,
            Some(v) => {
                // go-jose refuses a JWK it cannot read while decoding the body.
                if serde_json::from_value::<jsonwebtoken::jwk::Jwk>(v.clone())
                    .ok()
                    .and_then(|k| jsonwebtoken::DecodingKey::from_jwk(&k).ok())
                    .is_none()
                {
                    return Err(OAuthError::decode(format!(
                        "go-jose/go-jose: unknown json web key type '{}'",
                        v.get("kty").and_then(Value::as_str).unwrap_or("")
                    )));
                }
                Some(v.clone())
            }
        };
        let kid = jwk
            .as_ref()
            .and_then(|j| j.get("kid"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        // validator.go, in this order.
        let missing = |hint: &str| Err(OAuthError::missing_required_parameter().hint(hint));
        if issuer.is_empty() {
            return missing("Field 'issuer' is required.");
        }
        if subject.is_empty() && !allow_any_subject {
            return missing("One of 'subject' or 'allow_any_subject' field must be set.");
        }
        if !subject.is_empty() && allow_any_subject {
            return missing(
                "Both 'subject' and 'allow_any_subject' fields cannot be set at the same time.",
            );
        }
        let Some(expires_at) = expires_at.filter(|t| t.unix_timestamp() != -62135596800) else {
            return missing("Field 'expires_at' is required.");
        };
        if kid.is_empty() {
            return missing("Field 'jwk' must contain JWK with kid header.");
        }
        let jwk = jwk.unwrap_or_default();
        let expires_ns = expires_at.unix_timestamp_nanos();
        let grant = TrustGrant {
            id: uuid_v4(),
            issuer: issuer.clone(),
            subject: subject.clone(),
            allow_any_subject,
            scope,
            // hydra.md §2.3: keys are stored under set = issuer.
            key_set: issuer.clone(),
            key_id: kid.clone(),
            created_at: round_to_second(SystemTime::now()),
            expires_at: from_ns(
                (expires_ns + 500_000_000).div_euclid(1_000_000_000) * 1_000_000_000,
            ),
        };
        let mut state = self.state.lock().unwrap();
        // Uniqueness on (issuer, subject, key_id): sqlcon.ErrUniqueViolation, 409.
        if state
            .grants
            .iter()
            .any(|g| g.issuer == issuer && g.subject == subject && g.key_id == kid)
        {
            return Err(OAuthError::conflict());
        }
        // hydra.md §2.3: an existing (set, kid) is reused, not replaced.
        if state.key(&issuer, &kid).is_none() {
            state.key_seq += 1;
            let seq = state.key_seq;
            state.keys.push(StoredKey {
                set: issuer,
                kid,
                jwk,
                seq,
            });
        }
        let json = grant.to_json();
        state.grants.push(grant);
        Ok(json)
    }

    /// `introspectOAuth2Token` (hydra.md §4).
    fn introspection(&self, token: &str, scope: &str) -> Value {
        let state = self.state.lock().unwrap();
        let inactive = json!({"active": false});
        let Some(issued) = state.tokens.get(token) else {
            return inactive;
        };
        if to_ns(issued.expires_at) < now_ns() {
            return inactive;
        }
        // Every scope asked for must have been granted.
        for wanted in scope.split(' ').filter(|s| !s.is_empty()) {
            if !scope_matches(state.settings.scope_strategy, &issued.scopes, wanted) {
                return inactive;
            }
        }
        let issuer = state
            .settings
            .issuer
            .clone()
            .unwrap_or_else(|| format!("{}/", self.public_url()));
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut out = json!({
            "active": true,
            "scope": issued.scopes.join(" "),
            "client_id": issued.client_id,
            "sub": issued.subject,
            "exp": secs(issued.expires_at),
            "iat": secs(issued.issued_at),
            "nbf": secs(issued.issued_at),
            "aud": issued.audience,
            "iss": issuer,
            "token_type": "Bearer",
            "token_use": "access_token",
        });
        if !issued.ext.is_empty() {
            out["ext"] = Value::Object(issued.ext.clone());
        }
        out
    }
}

/// What a grant handler decided, before the wrapper, hook and issuance.
struct Outcome {
    grant_type: String,
    client: HydraClient,
    subject: String,
    scopes: Vec<String>,
    audience: Vec<String>,
    requested_at_ns: i128,
    expires_at_ns: i128,
    ext: Map<String, Value>,
}

// ---------------------------------------------------------------------------------------------
// Errors (fosite/errors.go, hydra.md §1 "Responses")
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct OAuthError {
    error: &'static str,
    description: String,
    hint: String,
    status: u16,
}

const INVALID_REQUEST_HINT: &str = "Make sure that the various parameters are correct, be aware of case sensitivity and trim your parameters. Make sure that the client you are using has exactly whitelisted the redirect_uri you specified.";

impl OAuthError {
    fn new(error: &'static str, status: u16, description: &str, hint: &str) -> Self {
        OAuthError {
            error,
            description: description.into(),
            hint: hint.into(),
            status,
        }
    }

    fn invalid_request() -> Self {
        Self::new(
            "invalid_request",
            400,
            "The request is missing a required parameter, includes an invalid parameter value, includes a parameter more than once, or is otherwise malformed.",
            INVALID_REQUEST_HINT,
        )
    }

    fn unauthorized_client() -> Self {
        Self::new(
            "unauthorized_client",
            400,
            "The client is not authorized to request a token using this method.",
            "Make sure that client id and secret are correctly specified and that the client exists.",
        )
    }

    fn access_denied() -> Self {
        Self::new(
            "access_denied",
            403,
            "The resource owner or authorization server denied the request.",
            "Make sure that the request you are making is valid. Maybe the credential or request parameters you are using are limited in scope or otherwise restricted.",
        )
    }

    fn invalid_scope() -> Self {
        Self::new(
            "invalid_scope",
            400,
            "The requested scope is invalid, unknown, or malformed.",
            "",
        )
    }

    fn server_error() -> Self {
        Self::new(
            "server_error",
            500,
            "The authorization server encountered an unexpected condition that prevented it from fulfilling the request.",
            "",
        )
    }

    fn invalid_grant() -> Self {
        Self::new(
            "invalid_grant",
            400,
            "The provided authorization grant (e.g., authorization code, resource owner credentials) or refresh token is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client.",
            "",
        )
    }

    fn invalid_client() -> Self {
        Self::new(
            "invalid_client",
            401,
            "Client authentication failed (e.g., unknown client, no client authentication included, or unsupported authentication method).",
            "",
        )
    }

    fn jti_known() -> Self {
        Self::new("jti_known", 400, "The jti was already used.", "")
    }

    /// `ErrorToRFC6749Error` of an error that is not an RFC 6749 error.
    fn unrecognizable() -> Self {
        Self::new("error", 500, "The error is unrecognizable", "")
    }

    /// oauth2/trust/error.go `ErrMissingRequiredParameter`.
    fn missing_required_parameter() -> Self {
        Self::new(
            "missing_required_parameter",
            400,
            "One of the required parameters is missing. Check your request parameters.",
            "",
        )
    }

    /// A JSON decoding error of the trust handler: `{ErrorField: "error", ...}`, 400.
    fn decode(reason: String) -> Self {
        Self::new("error", 400, &reason, "")
    }

    /// herodot.ErrBadRequest through x/error_enhancer.go.
    fn bad_request(reason: String) -> Self {
        Self::new(
            "The request was malformed or contained invalid parameters",
            400,
            "",
            &reason,
        )
    }

    /// sqlcon.ErrNoRows through x/error_enhancer.go.
    fn not_found() -> Self {
        Self::new("Unable to locate the resource", 404, "", "")
    }

    /// sqlcon.ErrUniqueViolation through x/error_enhancer.go.
    fn conflict() -> Self {
        Self::new(
            "Unable to insert or update resource because a resource with that value exists already",
            409,
            "",
            "",
        )
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = hint.into();
        self
    }

    fn describe(mut self, description: &str) -> Self {
        self.description = description.into();
        self
    }

    /// `GetDescription`: description + " " + hint, every `"` replaced by `'`.
    fn description_text(&self) -> String {
        let mut text = self.description.clone();
        if !self.hint.is_empty() {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&self.hint);
        }
        text.replace('"', "'")
    }

    /// Exactly `{"error","error_description"}` (legacy format off, hydra.md §1).
    fn body(&self) -> String {
        format!(
            "{{\"error\":{},\"error_description\":{}}}",
            go_json(&json!(self.error)),
            go_json(&json!(self.description_text()))
        )
    }
}

// ---------------------------------------------------------------------------------------------
// JWS and claims
// ---------------------------------------------------------------------------------------------

struct Jws {
    alg: String,
    kid: String,
    message: String,
    signature: String,
    payload: Value,
}

impl Jws {
    /// A compact JWS whose header is a JSON object with a string `alg` and whose payload is JSON.
    fn parse(token: &str) -> Option<Jws> {
        let mut parts = token.split('.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
        let payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()?;
        URL_SAFE_NO_PAD.decode(s).ok()?;
        Some(Jws {
            alg: header.get("alg")?.as_str()?.to_owned(),
            kid: header
                .get("kid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            message: format!("{h}.{p}"),
            signature: s.to_owned(),
            payload,
        })
    }

    /// Verifies the signature with a public JWK and the header's algorithm.
    fn verify_with(&self, jwk: &Value) -> bool {
        let Ok(alg) = self.alg.parse::<jsonwebtoken::Algorithm>() else {
            return false;
        };
        if alg.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            return false;
        }
        let Ok(jwk) = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(jwk.clone()) else {
            return false;
        };
        let Ok(key) = jsonwebtoken::DecodingKey::from_jwk(&jwk) else {
            return false;
        };
        jsonwebtoken::crypto::verify(&self.signature, self.message.as_bytes(), &key, alg)
            .unwrap_or(false)
    }
}

/// go-jose's `jwt.Claims` as the jwt-bearer handler reads them.
struct AssertionClaims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
    jti: String,
}

impl AssertionClaims {
    fn read(payload: &Value) -> Option<AssertionClaims> {
        let object = payload.as_object()?;
        let text = |name: &str| -> Option<String> {
            match object.get(name) {
                None | Some(Value::Null) => Some(String::new()),
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => None,
            }
        };
        let date = |name: &str| -> Option<Option<i64>> {
            match object.get(name) {
                None | Some(Value::Null) => Some(None),
                Some(Value::Number(n)) => Some(Some(n.as_f64()? as i64)),
                Some(_) => None,
            }
        };
        let aud = match object.get("aud") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(String::from))
                .collect::<Option<_>>()?,
            Some(_) => return None,
        };
        Some(AssertionClaims {
            iss: text("iss")?,
            sub: text("sub")?,
            aud,
            exp: date("exp")?,
            nbf: date("nbf")?,
            iat: date("iat")?,
            jti: text("jti")?,
        })
    }
}

/// `findPublicKey` of fosite/client_authentication.go.
fn find_client_key(jws: &Jws, jwks: &Value, expects_rsa: bool) -> Result<Value, OAuthError> {
    let keys: Vec<&Value> = jwks
        .get("keys")
        .and_then(Value::as_array)
        .map(|k| k.iter().collect())
        .unwrap_or_default();
    if keys.is_empty() {
        return Err(OAuthError::invalid_request()
            .hint("The retrieved JSON Web Key Set does not contain any key."));
    }
    let kid = jws.kid.as_str();
    let keys: Vec<&Value> = if kid.is_empty() {
        keys
    } else {
        keys.into_iter()
            .filter(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
            .collect()
    };
    if keys.is_empty() {
        return Err(OAuthError::invalid_request().hint(format!(
            "The JSON Web Token uses signing key with kid '{kid}', which could not be found."
        )));
    }
    let wanted_kty = if expects_rsa { "RSA" } else { "EC" };
    keys.into_iter()
        .find(|k| {
            k.get("use").and_then(Value::as_str) == Some("sig")
                && k.get("kty").and_then(Value::as_str) == Some(wanted_kty)
        })
        .cloned()
        .ok_or_else(|| {
            OAuthError::invalid_request().hint(format!(
                "Unable to find {} public key with use='sig' for kid '{kid}' in JSON Web Key Set.",
                if expects_rsa { "RSA" } else { "ECDSA" }
            ))
        })
}

/// Fetches a client's `jwks_uri` (simplified: no cache).
async fn fetch_jwks(uri: &str) -> Result<Value, OAuthError> {
    let failed = || {
        OAuthError::server_error().hint(format!(
            "Unable to fetch JSON Web Keys from location '{uri}'. Check for typos or other network issues."
        ))
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|_| failed())?;
    let response = client.get(uri).send().await.map_err(|_| failed())?;
    response.json::<Value>().await.map_err(|_| failed())
}

/// Hydra's two generated RS256 keys: `hydra.openid.id-token` and `hydra.jwt.access-token`
/// (hydra.md §4: a missing set is generated as RS256). Made once per test binary, on first use.
fn hydra_keys() -> &'static [iris::keys::SigningKey; 2] {
    static KEYS: OnceLock<[iris::keys::SigningKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let make = |kid: &str| {
            iris::keys::from_private_jwk(&iris::keys::generate("RS256", Some(kid)).unwrap())
                .unwrap()
        };
        [
            make("3f4c6a8e-9d2b-4f1a-8c7e-5b0a1d2e3f40"),
            make("b7e1c2d3-4a5b-4c6d-9e8f-0a1b2c3d4e51"),
        ]
    })
}

// ---------------------------------------------------------------------------------------------
// Matching strategies
// ---------------------------------------------------------------------------------------------

fn scope_matches(strategy: ScopeStrategy, haystack: &[String], needle: &str) -> bool {
    match strategy {
        ScopeStrategy::Exact => haystack.iter().any(|h| h == needle),
        ScopeStrategy::Wildcard => wildcard_scope(haystack, needle),
    }
}

/// fosite `WildcardScopeStrategy`.
fn wildcard_scope(matchers: &[String], needle: &str) -> bool {
    let needle_parts: Vec<&str> = needle.split('.').collect();
    matchers.iter().any(|matcher| {
        let parts: Vec<&str> = matcher.split('.').collect();
        if parts.len() > needle_parts.len() {
            return false;
        }
        for (k, c) in parts.iter().enumerate() {
            if k == parts.len() - 1 && parts.len() != needle_parts.len() && *c != "*" {
                return false;
            }
            if *c == "*" && !needle_parts[k].is_empty() {
                continue;
            } else if *c != needle_parts[k] {
                return false;
            }
        }
        true
    })
}

/// A URL as Go's `url.Parse` splits it (scheme, host, decoded path).
struct GoUrl {
    scheme: String,
    host: String,
    path: Vec<u8>,
}

fn go_url_parse(raw: &str) -> Option<GoUrl> {
    let raw = raw.split('#').next().unwrap_or("");
    let raw = raw.split('?').next().unwrap_or("");
    let (scheme, rest) = match raw.find(':') {
        Some(i)
            if i > 0
                && raw.as_bytes()[0].is_ascii_alphabetic()
                && raw[..i]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            (raw[..i].to_ascii_lowercase(), &raw[i + 1..])
        }
        // Go: "missing protocol scheme" when a colon comes first.
        Some(0) => return None,
        _ => (String::new(), raw),
    };
    let (host, path) = match rest.strip_prefix("//") {
        Some(authority) => {
            let end = authority.find('/').unwrap_or(authority.len());
            let host = &authority[..end];
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            (host.to_owned(), &authority[end..])
        }
        None => (String::new(), rest),
    };
    let path = unescape(path.as_bytes(), false).ok()?;
    Some(GoUrl { scheme, host, path })
}

/// fosite `DefaultAudienceMatchingStrategy` (hydra.md §1): URL-prefix matching.
fn audience_matches(haystack: &[String], needles: &[String]) -> Result<(), OAuthError> {
    for needle in needles {
        let n = go_url_parse(needle).ok_or_else(|| {
            OAuthError::invalid_request()
                .hint(format!("Unable to parse requested audience '{needle}'."))
        })?;
        let mut found = false;
        for allowed in haystack {
            let h = go_url_parse(allowed).ok_or_else(|| {
                OAuthError::invalid_request()
                    .hint(format!("Unable to parse whitelisted audience '{allowed}'."))
            })?;
            let mut allowed_path = h.path.as_slice();
            while let [rest @ .., b'/'] = allowed_path {
                allowed_path = rest;
            }
            let sub_path = n.path.len() > allowed_path.len() && {
                let mut prefix = &n.path[..allowed_path.len() + 1];
                while let [rest @ .., b'/'] = prefix {
                    prefix = rest;
                }
                prefix == allowed_path
            };
            if n.scheme == h.scheme
                && n.host == h.host
                && (n.path == h.path || n.path == allowed_path || sub_path)
            {
                found = true;
            }
        }
        if !found {
            return Err(OAuthError::invalid_request().hint(format!(
                "Requested audience '{needle}' has not been whitelisted by the OAuth 2.0 Client."
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Forms, Basic, escaping
// ---------------------------------------------------------------------------------------------

/// Go's `url.Values.Get`: the first value, or "".
fn first<'a>(form: &'a [(String, String)], key: &str) -> &'a str {
    form.iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// fosite `RemoveEmpty`: trimmed, empty entries dropped.
fn remove_empty<'a>(items: impl Iterator<Item = &'a str>) -> Vec<String> {
    items
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// fosite `GetAudiences` (hydra.md §1): repeated values as-is, a single value split on spaces.
fn get_audiences(form: &[(String, String)]) -> Vec<String> {
    let values: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "audience")
        .map(|(_, v)| v.as_str())
        .collect();
    match values.len() {
        0 => Vec::new(),
        1 => remove_empty(values[0].split(' ')),
        _ => remove_empty(values.into_iter()),
    }
}

fn push_unique(list: &mut Vec<String>, value: &str) {
    if !list.iter().any(|v| v == value) {
        list.push(value.to_owned());
    }
}

/// Go's `parsePostForm` for POST: only `application/x-www-form-urlencoded` bodies are read.
/// Err(()) is a parse error (bad escape, `;`, malformed media type, body over 10 MiB).
/// Simplified: multipart/form-data (which Hydra also reads) yields an empty form here.
fn parse_post_form(
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Vec<(String, String)>, ()> {
    let content_type = content_type.unwrap_or("application/octet-stream");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !media.contains('/') {
        return Err(());
    }
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Ok(Vec::new());
    }
    let body = body.ok_or(())?;
    let mut pairs = Vec::new();
    let mut failed = false;
    for part in body.split(|b| *b == b'&') {
        if part.contains(&b';') {
            failed = true;
            continue;
        }
        if part.is_empty() {
            continue;
        }
        let (k, v) = match part.iter().position(|b| *b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &b""[..]),
        };
        match (query_unescape(k), query_unescape(v)) {
            (Ok(k), Ok(v)) => pairs.push((
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )),
            _ => failed = true,
        }
    }
    if failed { Err(()) } else { Ok(pairs) }
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` must be two hex digits.
fn query_unescape(input: &[u8]) -> Result<Vec<u8>, ()> {
    unescape(input, true)
}

fn unescape(input: &[u8], plus_is_space: bool) -> Result<Vec<u8>, ()> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' => {
                let high = input.get(i + 1).copied().and_then(hex).ok_or(())?;
                let low = input.get(i + 2).copied().and_then(hex).ok_or(())?;
                out.push(high << 4 | low);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Go's `Request.BasicAuth`: `Basic ` (any case), standard base64, split at the first `:`.
fn parse_basic(header: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let prefix = header.get(..6)?;
    if !prefix.eq_ignore_ascii_case("basic ") {
        return None;
    }
    let decoded = STANDARD.decode(&header[6..]).ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

/// Go's `encoding/json` string output: serde's, with `<`, `>`, `&`, U+2028 and U+2029 escaped.
fn go_json(value: &Value) -> String {
    serde_json::to_string(value)
        .unwrap()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// `urlx.AppendPaths`: one slash between base and path.
fn append_path(base: &str, path: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), path)
}

// ---------------------------------------------------------------------------------------------
// Time, ids, durations
// ---------------------------------------------------------------------------------------------

fn now_ns() -> i128 {
    to_ns(SystemTime::now())
}

fn now_secs() -> i64 {
    (now_ns() / 1_000_000_000) as i64
}

fn to_ns(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

fn from_ns(ns: i128) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos((-ns) as u64)
    }
}

fn round_to_second(t: SystemTime) -> SystemTime {
    from_ns((to_ns(t) + 500_000_000).div_euclid(1_000_000_000) * 1_000_000_000)
}

/// Go's `time.Time` JSON (RFC 3339, UTC, whole seconds here).
fn rfc3339(t: SystemTime) -> String {
    rfc3339_secs((to_ns(t).div_euclid(1_000_000_000)) as i64)
}

fn rfc3339_secs(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A JSON number as Go's `MapClaims.toInt64` reads it.
fn to_i64(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| value.as_f64().map(|f| f as i64))
}

fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn random_b64(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    URL_SAFE_NO_PAD.encode(raw)
}

/// `ory_at_<random>.<signature>` (hydra.md §2.6).
fn opaque_token() -> String {
    let key: [u8; 32] = rand::random();
    let signature = Sha256::digest(key);
    format!(
        "{ACCESS_TOKEN_PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(key),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// Go's `time.Duration.String` for the lifespans.
fn go_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d < Duration::from_secs(1) {
        let ns = d.as_nanos();
        return if ns.is_multiple_of(1_000_000) {
            format!("{}ms", ns / 1_000_000)
        } else if ns.is_multiple_of(1_000) {
            format!("{}µs", ns / 1_000)
        } else {
            format!("{ns}ns")
        };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let nanos = d.subsec_nanos();
    let s = if nanos == 0 {
        format!("{s}")
    } else {
        format!("{s}.{}", format!("{nanos:09}").trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Go's `time.ParseDuration` (units ns, us, µs, ms, s, m, h; decimals allowed).
fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * scale;
    }
    Some(Duration::from_secs_f64(total))
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing
// ---------------------------------------------------------------------------------------------

async fn serve(listener: TcpListener, hydra: Hydra, port: Port, mut stop: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let open = (port == Port::Public).then(|| OpenConnection::count(&hydra));
        let hydra = hydra.clone();
        let mut connection_stop = stop.clone();
        tokio::spawn(async move {
            let _open = open;
            let service = hyper::service::service_fn(move |req| {
                let hydra = hydra.clone();
                async move {
                    Ok::<_, Infallible>(match port {
                        Port::Public => hydra.public(req).await,
                        Port::Admin => hydra.admin(req).await,
                    })
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            // Stopping drops open (keep-alive) connections too.
            tokio::select! {
                _ = connection => {}
                _ = connection_stop.wait_for(|stopped| *stopped) => {}
            }
        });
    }
}

/// Counts a public connection while it is open.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn count(hydra: &Hydra) -> Self {
        hydra.public_connections.fetch_add(1, Ordering::SeqCst);
        hydra.open_public_connections.fetch_add(1, Ordering::SeqCst);
        OpenConnection(hydra.open_public_connections.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn bind_again(addr: SocketAddr) -> TcpListener {
    for _ in 0..200 {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("could not bind {addr} again");
}

fn seen_request(req: &Request<Incoming>) -> SeenRequest {
    SeenRequest {
        method: req.method().as_str().to_owned(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(String::from),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        form: Vec::new(),
        body_sha256: String::new(),
        body_len: 0,
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

struct ReadBody {
    /// The body when it fit in the limit.
    bytes: Option<Vec<u8>>,
    sha256: String,
    len: u64,
}

/// Reads a body while hashing it, keeping at most `keep` bytes (never buffering more).
async fn read_body(mut body: Incoming, keep: usize) -> ReadBody {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut kept = Some(Vec::new());
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            hasher.update(data);
            len += data.len() as u64;
            if let Some(buffer) = &mut kept {
                if buffer.len() + data.len() <= keep {
                    buffer.extend_from_slice(data);
                } else {
                    kept = None;
                }
            }
        }
    }
    ReadBody {
        bytes: kept,
        sha256: hex(&hasher.finalize()),
        len,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn empty(status: u16) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

/// fosite's token-endpoint writer (hydra.md §1 "Responses").
fn fosite_json(status: u16, body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        "application/json;charset=UTF-8".parse().unwrap(),
    );
    headers.insert("cache-control", "no-store".parse().unwrap());
    headers.insert("pragma", "no-cache".parse().unwrap());
    response
}

/// herodot's JSON writer (discovery, JWKS, health, admin API).
fn herodot_json(status: u16, body: &Value) -> Response<Body> {
    let mut response = Response::new(full(go_json(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response.headers_mut().insert(
        "content-type",
        "application/json; charset=utf-8".parse().unwrap(),
    );
    response
}

/// Admin errors go through x/error_enhancer.go and are serialised as `{"error","error_description"}`
/// (hydra.md §1).
fn admin_error(error: &OAuthError) -> Response<Body> {
    let mut response = Response::new(full(error.body()));
    *response.status_mut() = StatusCode::from_u16(error.status).unwrap();
    response.headers_mut().insert(
        "content-type",
        "application/json; charset=utf-8".parse().unwrap(),
    );
    response
}

/// The bytes `/standin/download?bytes=N` serves: byte i is `i % 251`.
pub fn download_bytes(n: u64) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// TEST INSTRUMENTATION: a body streamed in chunks, never held in one buffer.
struct Download {
    offset: u64,
    remaining: u64,
    chunk: u64,
}

impl hyper::body::Body for Download {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = this.remaining.min(this.chunk);
        let data: Vec<u8> = (this.offset..this.offset + n)
            .map(|i| (i % 251) as u8)
            .collect();
        this.offset += n;
        this.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}
