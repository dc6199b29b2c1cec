//! Configuration in two stages, as Ory services do it.
//!
//! Stage one ([`RawConfig`]) mirrors the YAML file: every section has defaults and unknown keys are
//! an error. Files given with `-c` are merged in order, then environment variables named after a
//! key's path (`SERVE_PUBLIC_PORT` for `serve.public.port`) override them. Stage two
//! ([`RawConfig::validate`]) checks what serde cannot (URLs, secrets, algorithms, durations) and
//! names the offending key.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_saphyr::figment::Yaml;

/// The token-exchange grant type (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// The default subject token types resolved as a Kratos session token.
pub const DEFAULT_SESSION_TOKEN_TYPES: [&str; 2] = [
    "urn:ietf:params:oauth:token-type:session",
    "urn:x-iris:token-type:kratos-session-token",
];

/// The default subject token type resolved as the value of the Kratos session cookie.
pub const DEFAULT_SESSION_COOKIE_TYPES: [&str; 1] = ["urn:x-iris:token-type:kratos-session-cookie"];

/// Every scalar (or list) key that an environment variable may override, by dotted path.
/// Ory derives these from its JSON schema; a fixed table avoids guessing where `_` splits a path
/// (`max_body_bytes` is one key, not three).
pub const ENV_KEYS: &[&str] = &[
    "serve.public.host",
    "serve.public.port",
    "serve.public.max_body_bytes",
    "serve.public.header_read_timeout",
    "serve.public.request_timeout",
    "serve.public.max_connections",
    "serve.public.tls.cert_path",
    "serve.public.tls.key_path",
    "serve.shutdown_grace",
    "upstream.ca_path",
    "serve.admin.host",
    "serve.admin.port",
    "issuer",
    "kratos.public_url",
    "kratos.session_cookie",
    "kratos.timeout",
    "kratos.session_token_types",
    "kratos.session_cookie_types",
    "kratos.cache_ttl",
    "kratos.cache_max_entries",
    "hydra.public_url",
    "hydra.admin_url",
    "hydra.timeout",
    "hydra.client_cache_ttl",
    "hydra.metadata_cache_ttl",
    "hydra.trust.issuer",
    "hydra.trust.scope",
    "hydra.trust.expires_in",
    "tokens.issue",
    "tokens.access_token_ttl",
    "tokens.id_token_ttl",
    "bridge.enabled",
    "bridge.path",
    "bridge.client_id",
    "bridge.allowed_origins",
    "bridge.audience",
    "bridge.scope",
    "bridge.response",
    "bridge.code_ttl",
    "policy.require_first_party",
    "policy.required_aal",
    "log.level",
    "log.format",
    "allow_plaintext_secrets",
];

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The files or environment could not be read or did not fit the schema (unknown key, bad type).
    #[error("{0}")]
    Load(String),
    /// A key has a value of the right type that cannot be used.
    #[error("{key}: {reason}")]
    Invalid {
        /// The dotted path of the key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        let described: Vec<String> = error.into_iter().map(describe).collect();
        ConfigError::Load(described.join("; "))
    }
}

/// One figment error as `key: what (where)`, naming the key by its dotted path and, for an
/// environment override, by the variable the operator set.
fn describe(error: figment::Error) -> String {
    use figment::error::Kind;
    let mut key = error.path.join(".");
    let what = match &error.kind {
        Kind::UnknownField(field, _) => {
            // figment's path usually ends with the field already; not every deserializer does that.
            if error.path.last() != Some(field) {
                key = if key.is_empty() {
                    field.clone()
                } else {
                    format!("{key}.{field}")
                };
            }
            "unknown key".to_owned()
        }
        kind => kind.to_string(),
    };
    let source = error
        .metadata
        .as_ref()
        .map(|metadata| match &metadata.source {
            Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
            _ if metadata.name.contains("environment") => {
                format!(
                    " (from environment variable {})",
                    key.to_ascii_uppercase().replace('.', "_")
                )
            }
            _ => String::new(),
        });
    format!("{key}: {what}{}", source.unwrap_or_default())
}

// === Stage one: the file's shape ===

/// The configuration as written: the YAML files merged, then the environment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Listeners.
    pub serve: ServeConfig,
    /// `iss` of the tokens Iris signs; standalone default `http://{public.host}:{public.port}/`.
    pub issuer: Option<String>,
    /// Where sessions are resolved.
    pub kratos: KratosConfig,
    /// How Iris reaches Kratos and Hydra.
    pub upstream: UpstreamConfig,
    /// Hydra behind Iris; without it Iris runs standalone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hydra: Option<HydraConfig>,
    /// What Iris issues.
    pub tokens: TokensConfig,
    /// Keys Iris signs with.
    pub signing: SigningConfig,
    /// The static client registry.
    pub clients: Vec<ClientConfig>,
    /// The session bridge for first-party SPAs.
    pub bridge: BridgeConfig,
    /// Who may exchange sessions.
    pub policy: PolicyConfig,
    /// Logging.
    pub log: LogConfig,
    /// Accept `client_secret` in plaintext instead of `client_secret_hash` (development only).
    pub allow_plaintext_secrets: bool,
}

/// `serve`: the public and admin listeners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// What clients and gateways call.
    pub public: PublicListenerConfig,
    /// Health and metrics.
    pub admin: ListenerConfig,
    /// After SIGTERM or SIGINT, how long in-flight requests may take to finish.
    pub shutdown_grace: GoDuration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            public: PublicListenerConfig::default(),
            admin: ListenerConfig {
                host: "127.0.0.1".into(),
                port: 4481,
            },
            shutdown_grace: GoDuration(Duration::from_secs(30)),
        }
    }
}

/// `serve.public`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublicListenerConfig {
    /// Address to bind.
    pub host: String,
    /// Port to bind (0 picks a free one).
    pub port: u16,
    /// The largest `/oauth2/token` body Iris reads; larger ones get 413.
    pub max_body_bytes: usize,
    /// A client has this long to send its request headers; a slower connection is closed.
    pub header_read_timeout: GoDuration,
    /// The longest a request may take, upstream calls included.
    pub request_timeout: GoDuration,
    /// Open connections at most; further clients wait to be accepted.
    pub max_connections: usize,
    /// TLS for the public listener (rustls); without it the listener speaks plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

impl Default for PublicListenerConfig {
    fn default() -> Self {
        PublicListenerConfig {
            host: "127.0.0.1".into(),
            port: 4480,
            max_body_bytes: 64 * 1024,
            header_read_timeout: GoDuration(Duration::from_secs(10)),
            request_timeout: GoDuration(Duration::from_secs(30)),
            max_connections: 10_000,
            tls: None,
        }
    }
}

/// `serve.public.tls`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_path: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

/// `upstream`: how Iris reaches Kratos and Hydra.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// A PEM file of extra CA certificates trusted for https Kratos and Hydra URLs (a private CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_path: Option<PathBuf>,
}

/// `serve.admin`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to bind.
    pub host: String,
    /// Port to bind (0 picks a free one).
    pub port: u16,
}

/// `kratos`: session resolution.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KratosConfig {
    /// Kratos's public base URL (whoami lives there, not on the admin port).
    pub public_url: String,
    /// The name of Kratos's session cookie.
    pub session_cookie: String,
    /// How long one whoami call may take.
    pub timeout: GoDuration,
    /// Subject token types resolved as a session token (`X-Session-Token`).
    pub session_token_types: Vec<String>,
    /// Subject token types resolved as a session cookie value (`Cookie`).
    pub session_cookie_types: Vec<String>,
    /// Reuse a resolved session for up to this long (`0s`: off). Never past the session's
    /// `expires_at` or Kratos's `Ory-Session-Cache-For`; a revoked session is accepted until then.
    pub cache_ttl: GoDuration,
    /// Sessions kept at most.
    pub cache_max_entries: u64,
}

impl Default for KratosConfig {
    fn default() -> Self {
        KratosConfig {
            public_url: "http://127.0.0.1:4433".into(),
            session_cookie: "ory_kratos_session".into(),
            timeout: GoDuration(Duration::from_secs(2)),
            session_token_types: DEFAULT_SESSION_TOKEN_TYPES.map(String::from).to_vec(),
            session_cookie_types: DEFAULT_SESSION_COOKIE_TYPES.map(String::from).to_vec(),
            cache_ttl: GoDuration(Duration::ZERO),
            cache_max_entries: 10_000,
        }
    }
}

/// `hydra`: the Hydra Iris fronts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HydraConfig {
    /// Hydra's public URL: pass-through, discovery, JWKS, the jwt-bearer grant.
    pub public_url: String,
    /// Hydra's admin URL: client records and trust relationships.
    pub admin_url: String,
    /// How long one call to Hydra may take.
    pub timeout: GoDuration,
    /// How long a client record read from Hydra is reused.
    pub client_cache_ttl: GoDuration,
    /// How long Hydra's discovery document and JWKS are reused.
    pub metadata_cache_ttl: GoDuration,
    /// The jwt-bearer trust relationship Iris registers for forward mode.
    pub trust: TrustConfig,
}

impl Default for HydraConfig {
    fn default() -> Self {
        HydraConfig {
            public_url: "http://127.0.0.1:4444".into(),
            admin_url: "http://127.0.0.1:4445".into(),
            timeout: GoDuration(Duration::from_secs(5)),
            client_cache_ttl: GoDuration(Duration::from_secs(30)),
            metadata_cache_ttl: GoDuration(Duration::from_secs(60)),
            trust: TrustConfig::default(),
        }
    }
}

/// `hydra.trust`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// `iss` of Iris's assertions; default: Iris's issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Scopes the relationship allows Iris to request.
    pub scope: Vec<String>,
    /// Lifetime of the relationship when Iris registers it.
    pub expires_in: GoDuration,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            issuer: None,
            scope: ["openid", "email", "profile"].map(String::from).to_vec(),
            expires_in: GoDuration(Duration::from_secs(8760 * 3600)),
        }
    }
}

/// `tokens.issue`: who issues the access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IssueMode {
    /// Iris signs the access and ID tokens itself.
    #[default]
    Synthesize,
    /// Hydra issues the access token through the jwt-bearer grant.
    Forward,
}

/// `tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Who issues the access token.
    pub issue: IssueMode,
    /// Lifetime of an access token (never beyond the session).
    pub access_token_ttl: GoDuration,
    /// Lifetime of an ID token (never beyond the session).
    pub id_token_ttl: GoDuration,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            issue: IssueMode::Synthesize,
            access_token_ttl: GoDuration(Duration::from_secs(15 * 60)),
            id_token_ttl: GoDuration(Duration::from_secs(15 * 60)),
        }
    }
}

/// `signing`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// Key files; the first signs, the rest are published for rotation.
    pub keys: Vec<KeyFileConfig>,
}

/// One entry of `signing.keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFileConfig {
    /// A file holding one private JWK (`iris keys generate`).
    pub path: PathBuf,
}

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// HTTP Basic with form-urlencoded id and secret (Hydra's default).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// An RFC 7523 client assertion signed with a key from the client's `jwks`.
    PrivateKeyJwt,
    /// A public client (a browser app): it cannot authenticate at the token endpoint, and so
    /// never exchanges tokens itself; it can be the session bridge's client.
    None,
}

/// One entry of `clients`, shaped like a Hydra client record.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The client's id.
    pub client_id: String,
    /// The argon2id PHC hash of the secret (`iris hash-secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_hash: Option<String>,
    /// A plaintext secret; refused unless `allow_plaintext_secrets: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// How the client authenticates.
    #[serde(default)]
    pub token_endpoint_auth_method: AuthMethod,
    /// The `alg` of a `private_key_jwt` assertion (Hydra's default `RS256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_signing_alg: Option<String>,
    /// Public keys for `private_key_jwt`: `{keys: [...]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// Grants the client may use; the token-exchange grant must be listed.
    #[serde(default)]
    pub grant_types: Vec<String>,
    /// Audiences the client may request, matched exactly.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Space-separated scopes the client may request.
    #[serde(default)]
    pub scope: String,
    /// Free-form metadata; `first_party: true` marks a first-party client.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("client_id", &self.client_id)
            .field(
                "token_endpoint_auth_method",
                &self.token_endpoint_auth_method,
            )
            .finish_non_exhaustive()
    }
}

/// What the session bridge answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BridgeResponse {
    /// The tokens themselves (the RFC 8693 success body).
    #[default]
    Token,
    /// A one-time code the page redeems with PKCE at `/oauth2/token` (the cookbook's Hera pattern).
    Code,
}

/// `bridge`: the session bridge for first-party SPAs (DESIGN.md §6).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// Serve the bridge.
    pub enabled: bool,
    /// Where it listens on the public listener.
    pub path: String,
    /// The static, first-party client the tokens are issued to.
    pub client_id: String,
    /// Origins (`scheme://host[:port]`) whose pages may call the bridge, matched exactly.
    pub allowed_origins: Vec<String>,
    /// Audiences of the tokens; default: the client's only audience.
    pub audience: Vec<String>,
    /// Space-separated scopes of the tokens (within the client's scope).
    pub scope: String,
    /// Tokens, or a one-time code.
    pub response: BridgeResponse,
    /// How long a code may wait to be redeemed.
    pub code_ttl: GoDuration,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            enabled: false,
            path: "/session/bridge".into(),
            client_id: String::new(),
            allowed_origins: Vec::new(),
            audience: Vec::new(),
            scope: String::new(),
            response: BridgeResponse::Token,
            code_ttl: GoDuration(Duration::from_secs(60)),
        }
    }
}

/// Authenticator assurance levels Iris can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Aal {
    /// One factor.
    #[default]
    Aal1,
    /// Two factors.
    Aal2,
}

/// `policy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Session exchange only for clients with `metadata.first_party: true`.
    pub require_first_party: bool,
    /// The lowest session AAL accepted.
    pub required_aal: Aal,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            require_first_party: true,
            required_aal: Aal::Aal1,
        }
    }
}

/// `log.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Diagnostics.
    Debug,
    /// Request and audit lines.
    #[default]
    Info,
    /// Problems only (Ory also accepts `warning`).
    #[serde(alias = "warning")]
    Warn,
    /// Failures only.
    Error,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `log`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Minimum level.
    pub level: LogLevel,
    /// Line format.
    pub format: LogFormat,
}

/// A duration written the Go way, as Ory does: `15m`, `2s`, `1h30m`, `250ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    /// Parses `^([0-9]+(ns|us|ms|s|m|h))+$`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!("`{text}` is not a duration like 15m, 2s, 1h30m or 250ms");
        if text.is_empty() {
            return Err(invalid());
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(invalid());
            }
            let amount: u64 = rest[..digits].parse().map_err(|_| invalid())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = match &rest[..unit_len] {
                "ns" => Duration::from_nanos(1),
                "us" => Duration::from_micros(1),
                "ms" => Duration::from_millis(1),
                "s" => Duration::from_secs(1),
                "m" => Duration::from_secs(60),
                "h" => Duration::from_secs(3600),
                _ => return Err(invalid()),
            };
            rest = &rest[unit_len..];
            let part = u32::try_from(amount)
                .ok()
                .and_then(|n| unit.checked_mul(n))
                .ok_or_else(invalid)?;
            total = total.checked_add(part).ok_or_else(invalid)?;
        }
        Ok(GoDuration(total))
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            let s = d.as_secs();
            match s {
                _ if s > 0 && s.is_multiple_of(3600) => write!(f, "{}h", s / 3600),
                _ if s > 0 && s.is_multiple_of(60) => write!(f, "{}m", s / 60),
                _ => write!(f, "{s}s"),
            }
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        GoDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

// === Loading ===

/// Merges the files in order, then the environment variables of [`ENV_KEYS`].
pub fn load(files: &[PathBuf]) -> Result<RawConfig, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
    for file in files {
        if !file.is_file() {
            return Err(ConfigError::invalid(
                "-c",
                format!("{} is not a readable file", file.display()),
            ));
        }
        figment = figment.merge(Yaml::file_exact(file));
    }
    let env = Env::raw().filter_map(|name| {
        let name = name.as_str().to_ascii_lowercase().replace('_', ".");
        ENV_KEYS
            .iter()
            .find(|key| key.replace('_', ".") == name)
            .map(|key| (*key).into())
    });
    Ok(figment.merge(env).extract()?)
}

// === Stage two: validated settings ===

/// A client secret verifier as configured.
#[derive(Clone)]
pub enum SecretConfig {
    /// An argon2id PHC string.
    Argon2(String),
    /// A plaintext secret (only with `allow_plaintext_secrets`).
    Plaintext(crate::secret::Secret),
}

/// The validated configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The public listener.
    pub public: PublicListenerConfig,
    /// The admin listener.
    pub admin: ListenerConfig,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// Extra CA certificates for calls to Kratos and Hydra.
    pub upstream_ca_path: Option<PathBuf>,
    /// Configured issuer, if any (otherwise derived from the bound public address).
    pub issuer: Option<String>,
    /// Kratos.
    pub kratos: KratosSettings,
    /// Hydra, when Iris fronts one.
    pub hydra: Option<HydraSettings>,
    /// Who issues the access token.
    pub issue: IssueMode,
    /// Access token lifetime.
    pub access_token_ttl: Duration,
    /// ID token lifetime.
    pub id_token_ttl: Duration,
    /// Signing key files, first signs.
    pub signing_keys: Vec<PathBuf>,
    /// Static clients.
    pub clients: Vec<ClientConfig>,
    /// The session bridge, when enabled.
    pub bridge: Option<BridgeSettings>,
    /// Policy.
    pub policy: PolicyConfig,
    /// Logging.
    pub log: LogConfig,
    /// Whether plaintext secrets are accepted.
    pub allow_plaintext_secrets: bool,
}

/// Validated `kratos` settings.
#[derive(Clone, Debug)]
pub struct KratosSettings {
    /// Kratos's public base URL.
    pub public_url: url::Url,
    /// Session cookie name.
    pub session_cookie: String,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Subject token types sent as `X-Session-Token`.
    pub session_token_types: Vec<String>,
    /// Subject token types sent as a cookie.
    pub session_cookie_types: Vec<String>,
    /// Positive cache lifetime (zero: concurrent calls are coalesced, nothing is kept).
    pub cache_ttl: Duration,
    /// Cache bound.
    pub cache_max_entries: u64,
}

/// Validated `hydra` settings.
#[derive(Clone, Debug)]
pub struct HydraSettings {
    /// Hydra's public base URL.
    pub public_url: url::Url,
    /// Hydra's admin base URL.
    pub admin_url: url::Url,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Client record cache lifetime.
    pub client_cache_ttl: Duration,
    /// Discovery and JWKS cache lifetime.
    pub metadata_cache_ttl: Duration,
    /// The trust relationship for forward mode.
    pub trust_issuer: Option<String>,
    /// Scopes of the trust relationship.
    pub trust_scope: Vec<String>,
    /// Lifetime of a registered trust relationship.
    pub trust_expires_in: Duration,
}

fn base_url(key: &str, text: &str) -> Result<url::Url, ConfigError> {
    let url =
        url::Url::parse(text).map_err(|e| ConfigError::invalid(key, format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() || url.query().is_some()
    {
        return Err(ConfigError::invalid(
            key,
            "must be an http(s) base URL without a query",
        ));
    }
    Ok(url)
}

fn validate_hydra(hydra: &HydraConfig) -> Result<HydraSettings, ConfigError> {
    let public_url = base_url("hydra.public_url", &hydra.public_url)?;
    let admin_url = base_url("hydra.admin_url", &hydra.admin_url)?;
    positive("hydra.timeout", hydra.timeout)?;
    positive("hydra.trust.expires_in", hydra.trust.expires_in)?;
    if hydra.trust.issuer.as_deref() == Some("") {
        return Err(ConfigError::invalid(
            "hydra.trust.issuer",
            "must not be empty",
        ));
    }
    Ok(HydraSettings {
        public_url,
        admin_url,
        timeout: hydra.timeout.0,
        client_cache_ttl: hydra.client_cache_ttl.0,
        metadata_cache_ttl: hydra.metadata_cache_ttl.0,
        trust_issuer: hydra.trust.issuer.clone(),
        trust_scope: hydra.trust.scope.clone(),
        trust_expires_in: hydra.trust.expires_in.0,
    })
}

/// DESIGN.md §8: a client is first-party only with `metadata.first_party: true` (the boolean).
pub fn is_first_party(flag: Option<&serde_json::Value>) -> bool {
    flag == Some(&serde_json::Value::Bool(true))
}

/// Validated `bridge` settings.
#[derive(Clone, Debug)]
pub struct BridgeSettings {
    /// Its path.
    pub path: String,
    /// The bridge client.
    pub client_id: String,
    /// Allowed origins, exactly as a browser sends `Origin`.
    pub allowed_origins: Vec<String>,
    /// Audiences of the tokens (empty: the client's only audience).
    pub audience: Vec<String>,
    /// Scopes of the tokens.
    pub scope: Vec<String>,
    /// Tokens or a code.
    pub response: BridgeResponse,
    /// Lifetime of a code.
    pub code_ttl: Duration,
}

/// Paths the bridge may not take: they are the token endpoint's, discovery's, or Hydra's admin API.
const RESERVED_PATHS: [&str; 5] = [
    "/oauth2/token",
    "/.well-known/jwks.json",
    "/.well-known/openid-configuration",
    "/.well-known/oauth-authorization-server",
    "/admin",
];

fn validate_bridge(
    bridge: &BridgeConfig,
    clients: &[ClientConfig],
) -> Result<BridgeSettings, ConfigError> {
    if !bridge.path.starts_with('/') || bridge.path.contains(['?', '#', ' ']) {
        return Err(ConfigError::invalid(
            "bridge.path",
            "must be an absolute path such as /session/bridge",
        ));
    }
    if RESERVED_PATHS
        .iter()
        .any(|reserved| bridge.path == *reserved || bridge.path.starts_with("/admin/"))
    {
        return Err(ConfigError::invalid(
            "bridge.path",
            format!("{} is reserved", bridge.path),
        ));
    }
    // The browser holds no client credential: the bridge client's policy lives in Iris's config.
    let client = clients
        .iter()
        .find(|c| c.client_id == bridge.client_id)
        .ok_or_else(|| {
            ConfigError::invalid(
                "bridge.client_id",
                format!("`{}` is not a static client (clients[]); the bridge issues to a client Iris configures", bridge.client_id),
            )
        })?;
    if !is_first_party(client.metadata.get("first_party")) {
        return Err(ConfigError::invalid(
            "bridge.client_id",
            format!(
                "`{}` is not first-party (metadata.first_party: true)",
                bridge.client_id
            ),
        ));
    }
    if !client.grant_types.iter().any(|g| g == TOKEN_EXCHANGE_GRANT) {
        return Err(ConfigError::invalid(
            "bridge.client_id",
            format!(
                "`{}` lacks the token-exchange grant in grant_types",
                bridge.client_id
            ),
        ));
    }
    positive("bridge.code_ttl", bridge.code_ttl)?;
    if bridge.code_ttl.0 > Duration::from_secs(600) {
        return Err(ConfigError::invalid(
            "bridge.code_ttl",
            "a one-time code should live a minute, ten at most",
        ));
    }
    if bridge.allowed_origins.is_empty() {
        return Err(ConfigError::invalid(
            "bridge.allowed_origins",
            "list the origins of the pages that may call the bridge",
        ));
    }
    for (index, origin) in bridge.allowed_origins.iter().enumerate() {
        let parsed = url::Url::parse(origin)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"));
        let canonical = parsed.as_ref().map(|u| u.origin().ascii_serialization());
        if canonical.as_deref() != Some(origin.as_str()) {
            return Err(ConfigError::invalid(
                format!("bridge.allowed_origins[{index}]"),
                format!(
                    "`{origin}` is not an origin like https://app.example.com (no path, no trailing slash, no `*` or `null`)"
                ),
            ));
        }
    }
    let client_scope: Vec<&str> = client.scope.split(' ').filter(|s| !s.is_empty()).collect();
    let scope: Vec<String> = bridge
        .scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if let Some(extra) = scope.iter().find(|s| !client_scope.contains(&s.as_str())) {
        return Err(ConfigError::invalid(
            "bridge.scope",
            format!("{extra} is not in the client's scope"),
        ));
    }
    if let Some(extra) = bridge
        .audience
        .iter()
        .find(|a| !client.audience.contains(a))
    {
        return Err(ConfigError::invalid(
            "bridge.audience",
            format!("{extra} is not in the client's audience"),
        ));
    }
    if bridge.audience.is_empty() && client.audience.len() != 1 {
        return Err(ConfigError::invalid(
            "bridge.audience",
            "name the audience: the client has several",
        ));
    }
    Ok(BridgeSettings {
        path: bridge.path.clone(),
        client_id: bridge.client_id.clone(),
        allowed_origins: bridge.allowed_origins.clone(),
        audience: bridge.audience.clone(),
        scope,
        response: bridge.response,
        code_ttl: bridge.code_ttl.0,
    })
}

/// The algorithms a `private_key_jwt` client may use: asymmetric only, never `none` or HMAC.
pub const CLIENT_ASSERTION_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl RawConfig {
    /// Stage two: checks every value and names the key that is wrong.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        if self.serve.public.max_body_bytes == 0 {
            return Err(ConfigError::invalid(
                "serve.public.max_body_bytes",
                "must be greater than 0",
            ));
        }
        if let Some(issuer) = &self.issuer {
            let url = url::Url::parse(issuer)
                .map_err(|e| ConfigError::invalid("issuer", format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::invalid("issuer", "must be an http(s) URL"));
            }
        }
        let public_url = base_url("kratos.public_url", &self.kratos.public_url)?;
        if self.kratos.session_cookie.is_empty()
            || !self
                .kratos
                .session_cookie
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        {
            return Err(ConfigError::invalid(
                "kratos.session_cookie",
                "must be a valid cookie name",
            ));
        }
        positive("kratos.timeout", self.kratos.timeout)?;
        positive(
            "serve.public.header_read_timeout",
            self.serve.public.header_read_timeout,
        )?;
        positive(
            "serve.public.request_timeout",
            self.serve.public.request_timeout,
        )?;
        if self.serve.public.max_connections == 0 {
            return Err(ConfigError::invalid(
                "serve.public.max_connections",
                "must be greater than 0",
            ));
        }
        if let Some(tls) = &self.serve.public.tls {
            for (key, path) in [
                ("serve.public.tls.cert_path", &tls.cert_path),
                ("serve.public.tls.key_path", &tls.key_path),
            ] {
                if !path.is_file() {
                    return Err(ConfigError::invalid(
                        key,
                        format!("{} is not a readable file", path.display()),
                    ));
                }
            }
        }
        if let Some(ca) = &self.upstream.ca_path
            && !ca.is_file()
        {
            return Err(ConfigError::invalid(
                "upstream.ca_path",
                format!("{} is not a readable file", ca.display()),
            ));
        }
        positive("tokens.access_token_ttl", self.tokens.access_token_ttl)?;
        positive("tokens.id_token_ttl", self.tokens.id_token_ttl)?;
        let token_types: HashSet<&String> = self.kratos.session_token_types.iter().collect();
        if let Some(both) = self
            .kratos
            .session_cookie_types
            .iter()
            .find(|t| token_types.contains(t))
        {
            return Err(ConfigError::invalid(
                "kratos.session_cookie_types",
                format!("{both} is also listed in kratos.session_token_types"),
            ));
        }
        let hydra = self.hydra.as_ref().map(validate_hydra).transpose()?;
        if self.tokens.issue == IssueMode::Forward && hydra.is_none() {
            return Err(ConfigError::invalid(
                "tokens.issue",
                "forward needs a hydra section: Hydra issues the access token",
            ));
        }
        let mut seen = HashSet::new();
        for (index, client) in self.clients.iter().enumerate() {
            validate_client(index, client, self.allow_plaintext_secrets)?;
            if !seen.insert(client.client_id.as_str()) {
                return Err(ConfigError::invalid(
                    format!("clients[{index}].client_id"),
                    format!("{} is listed twice", client.client_id),
                ));
            }
        }
        let bridge = self
            .bridge
            .enabled
            .then(|| validate_bridge(&self.bridge, &self.clients))
            .transpose()?;
        Ok(Settings {
            bridge,
            public: self.serve.public.clone(),
            admin: self.serve.admin.clone(),
            shutdown_grace: self.serve.shutdown_grace.0,
            upstream_ca_path: self.upstream.ca_path.clone(),
            issuer: self.issuer.clone(),
            kratos: KratosSettings {
                public_url,
                session_cookie: self.kratos.session_cookie.clone(),
                timeout: self.kratos.timeout.0,
                session_token_types: self.kratos.session_token_types.clone(),
                session_cookie_types: self.kratos.session_cookie_types.clone(),
                cache_ttl: self.kratos.cache_ttl.0,
                cache_max_entries: self.kratos.cache_max_entries,
            },
            hydra,
            issue: self.tokens.issue,
            access_token_ttl: self.tokens.access_token_ttl.0,
            id_token_ttl: self.tokens.id_token_ttl.0,
            signing_keys: self.signing.keys.iter().map(|k| k.path.clone()).collect(),
            clients: self.clients.clone(),
            policy: self.policy.clone(),
            log: self.log.clone(),
            allow_plaintext_secrets: self.allow_plaintext_secrets,
        })
    }

    /// The effective configuration as JSON with every secret replaced by `***`.
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(clients) = value
            .get_mut("clients")
            .and_then(serde_json::Value::as_array_mut)
        {
            for client in clients {
                for key in ["client_secret", "client_secret_hash"] {
                    if let Some(secret) = client.get_mut(key) {
                        *secret = serde_json::Value::String("***".into());
                    }
                }
            }
        }
        value
    }
}

fn positive(key: &str, duration: GoDuration) -> Result<(), ConfigError> {
    if duration.0.is_zero() {
        return Err(ConfigError::invalid(key, "must be longer than 0s"));
    }
    Ok(())
}

fn validate_client(
    index: usize,
    client: &ClientConfig,
    allow_plaintext: bool,
) -> Result<(), ConfigError> {
    let key = |field: &str| format!("clients[{index}].{field}");
    if client.client_id.is_empty() {
        return Err(ConfigError::invalid(key("client_id"), "must not be empty"));
    }
    match client.token_endpoint_auth_method {
        AuthMethod::None => {
            if client.client_secret.is_some()
                || client.client_secret_hash.is_some()
                || client.jwks.is_some()
            {
                return Err(ConfigError::invalid(
                    key("token_endpoint_auth_method"),
                    "a public client (none) has no secret and no jwks",
                ));
            }
        }
        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost => {
            secret_config(client, allow_plaintext)
                .map_err(|(field, reason)| ConfigError::invalid(key(field), reason))?;
        }
        AuthMethod::PrivateKeyJwt => {
            if client.client_secret.is_some() || client.client_secret_hash.is_some() {
                return Err(ConfigError::invalid(
                    key("client_secret_hash"),
                    "a private_key_jwt client has no secret",
                ));
            }
            let alg = client
                .token_endpoint_auth_signing_alg
                .as_deref()
                .unwrap_or("RS256");
            if !CLIENT_ASSERTION_ALGS.contains(&alg) {
                return Err(ConfigError::invalid(
                    key("token_endpoint_auth_signing_alg"),
                    format!(
                        "{alg} is not allowed; use one of {}",
                        CLIENT_ASSERTION_ALGS.join(", ")
                    ),
                ));
            }
            let keys = client
                .jwks
                .as_ref()
                .and_then(|jwks| jwks.get("keys"))
                .and_then(serde_json::Value::as_array)
                .filter(|keys| !keys.is_empty())
                .ok_or_else(|| {
                    ConfigError::invalid(
                        key("jwks"),
                        "private_key_jwt needs jwks: {keys: [...]} with at least one public key",
                    )
                })?;
            for (n, jwk) in keys.iter().enumerate() {
                if jwk.get("d").is_some() {
                    return Err(ConfigError::invalid(
                        format!("clients[{index}].jwks.keys[{n}]"),
                        "holds a private key; give the client's public key only",
                    ));
                }
                let parsed: jsonwebtoken::jwk::Jwk =
                    serde_json::from_value(jwk.clone()).map_err(|e| {
                        ConfigError::invalid(
                            format!("clients[{index}].jwks.keys[{n}]"),
                            format!("not a JWK: {e}"),
                        )
                    })?;
                jsonwebtoken::DecodingKey::from_jwk(&parsed).map_err(|e| {
                    ConfigError::invalid(
                        format!("clients[{index}].jwks.keys[{n}]"),
                        format!("unusable key: {e}"),
                    )
                })?;
            }
        }
    }
    Ok(())
}

/// The secret verifier of a secret-based client, or which key is wrong and why.
pub fn secret_config(
    client: &ClientConfig,
    allow_plaintext: bool,
) -> Result<SecretConfig, (&'static str, String)> {
    match (&client.client_secret_hash, &client.client_secret) {
        (Some(_), Some(_)) => Err((
            "client_secret",
            "set either client_secret_hash or client_secret, not both".into(),
        )),
        (Some(hash), None) => {
            let parsed = argon2::PasswordHash::new(hash)
                .map_err(|e| ("client_secret_hash", format!("not a PHC string: {e}")))?;
            if parsed.algorithm != argon2::Algorithm::Argon2id.ident() {
                return Err((
                    "client_secret_hash",
                    format!("{} is not argon2id; use `iris hash-secret`", parsed.algorithm),
                ));
            }
            Ok(SecretConfig::Argon2(hash.clone()))
        }
        (None, Some(_)) if !allow_plaintext => Err((
            "client_secret",
            "plaintext secrets are refused; store the hash from `iris hash-secret` in client_secret_hash, or set allow_plaintext_secrets: true".into(),
        )),
        (None, Some(secret)) if secret.is_empty() => Err(("client_secret", "must not be empty".into())),
        (None, Some(secret)) => Ok(SecretConfig::Plaintext(crate::secret::Secret::new(secret.clone()))),
        (None, None) => Err((
            "client_secret_hash",
            "a client_secret_basic or client_secret_post client needs client_secret_hash".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_ory() {
        assert_eq!(
            GoDuration::parse("15m").unwrap().0,
            Duration::from_secs(900)
        );
        assert_eq!(
            GoDuration::parse("1h30m").unwrap().0,
            Duration::from_secs(5400)
        );
        assert_eq!(
            GoDuration::parse("250ms").unwrap().0,
            Duration::from_millis(250)
        );
        for bad in [
            "",
            "15",
            "m",
            "15 m",
            "1.5h",
            "-1s",
            "15min",
            "99999999999h",
        ] {
            assert!(GoDuration::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn durations_print_back_in_the_shortest_unit() {
        for text in ["15m", "2s", "1h", "250ms", "90s"] {
            assert_eq!(GoDuration::parse(text).unwrap().to_string(), text);
        }
    }

    /// Every env key names a real key of the file, and every scalar of the file has an env key.
    #[test]
    fn env_keys_cover_the_scalar_keys() {
        let json = serde_json::to_value(RawConfig::default()).unwrap();
        let mut leaves = Vec::new();
        collect_leaves(&json, String::new(), &mut leaves);
        // `signing.keys` and `clients` are lists of objects: they come from files only.
        leaves.retain(|k| k != "signing.keys" && k != "clients");
        // `hydra` is absent by default; its keys are those of its own default.
        let hydra = serde_json::json!({"hydra": HydraConfig::default()});
        collect_leaves(&hydra, String::new(), &mut leaves);
        leaves.retain(|k| k != "hydra.trust.issuer");
        leaves.push("hydra.trust.issuer".into());
        // Optional sections absent by default.
        let tls = serde_json::json!({"serve": {"public": {"tls": TlsConfig::default()}}});
        collect_leaves(&tls, String::new(), &mut leaves);
        leaves.push("upstream.ca_path".into());
        let mut expected: Vec<&str> = ENV_KEYS.to_vec();
        expected.sort_unstable();
        leaves.sort_unstable();
        assert_eq!(leaves, expected);
    }

    fn collect_leaves(value: &serde_json::Value, prefix: String, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    collect_leaves(v, path, out);
                }
            }
            _ => out.push(prefix),
        }
    }

    #[test]
    fn redaction_hides_both_secret_forms() {
        let mut config = RawConfig::default();
        config.clients.push(ClientConfig {
            client_id: "a".into(),
            client_secret_hash: Some("$argon2id$...".into()),
            client_secret: Some("hunter2".into()),
            ..Default::default()
        });
        let text = config.redacted_json().to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("argon2id"),
            "{text}"
        );
        assert!(text.contains("\"client_secret\":\"***\""));
    }
}
