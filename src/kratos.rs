//! Session resolution at Kratos: `GET {kratos.public_url}/sessions/whoami` (reference/kratos.md §a).

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{COOKIE, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use time::OffsetDateTime;

use std::sync::Arc;

use crate::config::KratosSettings;
use crate::exchange::SubjectTokenKind;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::store::BoxFuture;
use crate::upstream::{PerWorker, Roots};

/// A session credential as the client presented it.
#[derive(Debug, Clone)]
pub struct SubjectToken {
    /// Token or cookie value.
    pub kind: SubjectTokenKind,
    /// The credential.
    pub value: Secret,
}

/// What Iris needs of a Kratos session.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct Session {
    /// The Kratos session id (`sid`).
    pub id: String,
    /// The identity id (`sub`).
    pub identity_id: String,
    /// `active` as Kratos computed it.
    pub active: bool,
    /// `identity.state`.
    pub identity_state: String,
    /// No token outlives this.
    pub expires_at: SystemTime,
    /// `auth_time`.
    pub authenticated_at: SystemTime,
    /// `acr`: the raw AAL (`aal1`, `aal2`).
    pub aal: String,
    /// `amr`: method names of `authentication_methods`, in order, without repeats.
    pub amr: Vec<String>,
    /// The `email` trait, when the identity schema has one.
    pub email: Option<String>,
    /// Whether a verified verifiable address equals the email trait.
    pub email_verified: bool,
    /// Kratos's `Ory-Session-Cache-For`: how long this answer may be reused, when it said so.
    #[serde(skip)]
    pub cacheable_for: Option<Duration>,
}

/// Why a session could not be resolved.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// Kratos answered 401: no valid session for this credential.
    #[error("the subject token is not a valid Kratos session")]
    Invalid,
    /// Kratos answered 403 `session_aal2_required`.
    #[error("the session needs a second factor: complete AAL2 sign-in at Kratos, then retry")]
    SecondFactorRequired,
    /// The credential cannot be sent as an HTTP header value.
    #[error("the subject token is not a valid Kratos session credential")]
    Unsendable,
    /// Kratos is unreachable, slow, rate limiting, failing or answering out of contract.
    #[error("Kratos is unavailable: {reason}")]
    Upstream {
        /// What happened (for logs; never shown to clients).
        reason: String,
        /// Seconds the client should wait before retrying.
        retry_after: u64,
    },
}

impl SessionError {
    fn upstream(reason: impl Into<String>) -> Self {
        SessionError::Upstream {
            reason: reason.into(),
            retry_after: 1,
        }
    }
}

/// Resolves subject tokens to sessions; a trait so the exchange can be tested without HTTP.
pub trait SessionResolver: Send + Sync {
    /// Resolves one credential. Failures are never cached.
    fn resolve<'a>(
        &'a self,
        token: &'a SubjectToken,
    ) -> BoxFuture<'a, Result<Session, SessionError>>;

    /// Whether the session store answers at all (readiness); `Err` says why not.
    fn ready(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// The Kratos public API client.
pub struct KratosClient {
    http: PerWorker<reqwest::Client>,
    whoami: reqwest::Url,
    cookie_name: String,
    metrics: Arc<Metrics>,
}

impl KratosClient {
    /// Pooled clients for Kratos's public URL with the configured per-call timeout, one for each
    /// of `workers` public workers.
    pub fn new(
        settings: &KratosSettings,
        roots: &Roots,
        metrics: Arc<Metrics>,
        workers: usize,
    ) -> Result<Self, reqwest::Error> {
        let http = PerWorker::new(workers, |_| {
            crate::upstream::http_client(settings.timeout, roots)
        })?;
        let mut whoami = settings.public_url.clone();
        // Keep a path prefix (Kratos behind a path-routing gateway) and append the endpoint.
        let base = whoami.path().trim_end_matches('/').to_owned();
        whoami.set_path(&format!("{base}/sessions/whoami"));
        whoami.set_query(None);
        Ok(KratosClient {
            http,
            whoami,
            cookie_name: settings.session_cookie.clone(),
            metrics,
        })
    }

    async fn whoami(&self, token: &SubjectToken) -> Result<Session, SessionError> {
        let (name, value) = match token.kind {
            SubjectTokenKind::SessionToken => ("x-session-token", token.value.expose().to_owned()),
            SubjectTokenKind::SessionCookie => {
                let value = token.value.expose();
                // A `;` would smuggle further cookies to Kratos: only RFC 6265 cookie values pass.
                if !is_cookie_value(value) {
                    return Err(SessionError::Unsendable);
                }
                ("cookie", format!("{}={value}", self.cookie_name))
            }
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| SessionError::Unsendable)?;
        value.set_sensitive(true);
        let header = if name == "cookie" {
            COOKIE
        } else {
            reqwest::header::HeaderName::from_static("x-session-token")
        };
        let started = std::time::Instant::now();
        let call = self
            .http
            .get()
            .get(self.whoami.clone())
            .header(header, value)
            .header(reqwest::header::ACCEPT, "application/json");
        let sent = crate::telemetry::propagate(call).send().await;
        self.metrics.upstream("kratos", "whoami", started.elapsed());
        let response = sent.map_err(|e| SessionError::upstream(describe_transport(&e)))?;
        let status = response.status();
        match status {
            StatusCode::OK => {
                let cacheable_for = response
                    .headers()
                    .get("ory-session-cache-for")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| SessionError::upstream(describe_transport(&e)))?;
                let wire: WireSession = serde_json::from_slice(&body).map_err(|e| {
                    SessionError::upstream(format!(
                        "whoami answered 200 with an unexpected body: {e}"
                    ))
                })?;
                let mut session = wire.into_session()?;
                session.cacheable_for = cacheable_for;
                Ok(session)
            }
            StatusCode::UNAUTHORIZED => Err(SessionError::Invalid),
            StatusCode::FORBIDDEN => {
                let body = response.bytes().await.unwrap_or_default();
                let id = serde_json::from_slice::<WireError>(&body)
                    .ok()
                    .and_then(|e| e.error.id);
                match id.as_deref() {
                    Some("session_aal2_required") => Err(SessionError::SecondFactorRequired),
                    _ => Err(SessionError::Invalid),
                }
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map_or(1, |s| s.clamp(1, 60));
                Err(SessionError::Upstream {
                    reason: "whoami answered 429".into(),
                    retry_after,
                })
            }
            other => Err(SessionError::upstream(format!("whoami answered {other}"))),
        }
    }
}

impl SessionResolver for KratosClient {
    fn resolve<'a>(
        &'a self,
        token: &'a SubjectToken,
    ) -> BoxFuture<'a, Result<Session, SessionError>> {
        Box::pin(self.whoami(token))
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            // whoami without a credential answers 401 when Kratos is up: any answer below 500 is.
            let response = self
                .http
                .get()
                .get(self.whoami.clone())
                .send()
                .await
                .map_err(|e| describe_transport(&e))?;
            if response.status().is_server_error() {
                return Err(format!("whoami answered {}", response.status()));
            }
            Ok(())
        })
    }
}

/// RFC 6265 §4.1.1 `cookie-value`: cookie-octets, optionally in double quotes (clients
/// sometimes quote the Kratos cookie, kratos#3685; Kratos's parser strips the quotes).
fn is_cookie_value(value: &str) -> bool {
    let inner = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    !inner.is_empty()
        && inner
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E))
}

/// Coalesces concurrent resolutions of one credential into one whoami call (single flight) and,
/// with `kratos.cache_ttl`, reuses the session for that long, never past its `expires_at` or
/// Kratos's `Ory-Session-Cache-For`. Failures are never kept. Entries are keyed by a salted
/// digest of the credential, never the credential itself.
pub struct CachingResolver<R> {
    inner: R,
    sessions: moka::future::Cache<[u8; 32], Arc<Session>>,
    salt: [u8; 32],
}

/// How long a resolved session may be reused.
struct Reuse {
    ttl: Duration,
}

impl moka::Expiry<[u8; 32], Arc<Session>> for Reuse {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        session: &Arc<Session>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let until_end = session
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let mut reuse = self.ttl.min(until_end);
        if let Some(kratos_says) = session.cacheable_for {
            reuse = reuse.min(kratos_says);
        }
        Some(reuse)
    }
}

impl<R: SessionResolver> CachingResolver<R> {
    /// Wraps `inner` with a cache of `ttl` (zero: single flight only) holding `max_entries`.
    pub fn new(inner: R, ttl: Duration, max_entries: u64) -> Self {
        let mut salt = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut salt);
        let sessions = moka::future::Cache::builder()
            .max_capacity(max_entries)
            .expire_after(Reuse { ttl })
            .build();
        CachingResolver {
            inner,
            sessions,
            salt,
        }
    }

    fn key(&self, token: &SubjectToken) -> [u8; 32] {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(self.salt);
        hasher.update([token.kind as u8]);
        hasher.update(token.value.expose().as_bytes());
        hasher.finalize().into()
    }
}

impl<R: SessionResolver> SessionResolver for CachingResolver<R> {
    fn resolve<'a>(
        &'a self,
        token: &'a SubjectToken,
    ) -> BoxFuture<'a, Result<Session, SessionError>> {
        Box::pin(async move {
            self.sessions
                .try_get_with(self.key(token), async {
                    self.inner.resolve(token).await.map(Arc::new)
                })
                .await
                .map(|session| (*session).clone())
                .map_err(|error| (*error).clone())
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        self.inner.ready()
    }
}

fn describe_transport(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "whoami timed out".into()
    } else if error.is_connect() {
        "Kratos is unreachable".into()
    } else {
        // reqwest errors carry the URL, never headers: safe to log.
        format!("whoami failed: {error}")
    }
}

// === The wire format (schema `session`, reference/kratos.md §a) ===

#[derive(Deserialize)]
struct WireSession {
    id: String,
    #[serde(default)]
    active: bool,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    authenticated_at: OffsetDateTime,
    #[serde(default)]
    authenticator_assurance_level: String,
    #[serde(default)]
    authentication_methods: Vec<WireMethod>,
    identity: WireIdentity,
}

#[derive(Deserialize)]
struct WireMethod {
    method: String,
}

#[derive(Deserialize)]
struct WireIdentity {
    id: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    traits: serde_json::Value,
    #[serde(default)]
    verifiable_addresses: Vec<WireAddress>,
}

#[derive(Deserialize)]
struct WireAddress {
    value: String,
    #[serde(default)]
    verified: bool,
}

#[derive(Deserialize)]
struct WireError {
    error: WireErrorBody,
}

#[derive(Deserialize)]
struct WireErrorBody {
    id: Option<String>,
}

impl WireSession {
    fn into_session(self) -> Result<Session, SessionError> {
        let email = self
            .identity
            .traits
            .get("email")
            .and_then(serde_json::Value::as_str)
            .map(String::from);
        let email_verified = email.as_deref().is_some_and(|email| {
            self.identity
                .verifiable_addresses
                .iter()
                .any(|a| a.verified && a.value == email)
        });
        let mut amr: Vec<String> = Vec::new();
        for m in self.authentication_methods {
            if !amr.contains(&m.method) {
                amr.push(m.method);
            }
        }
        Ok(Session {
            id: self.id,
            identity_id: self.identity.id,
            active: self.active,
            // Kratos omits nothing here on whoami, but an absent state is not "active".
            identity_state: self.identity.state.unwrap_or_default(),
            expires_at: self.expires_at.into(),
            authenticated_at: self.authenticated_at.into(),
            aal: self.authenticator_assurance_level,
            amr,
            email,
            email_verified,
            cacheable_for: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rfc6265_cookie_values_are_sent() {
        assert!(is_cookie_value("MTcxMDkyOTYwMHxhYmNk-_=="));
        assert!(is_cookie_value("\"MTcxMDkyOTYwMA==\""));
        for bad in [
            "",
            "a; ory_kratos_session=b",
            "a b",
            "a,b",
            "a\\b",
            "\"",
            "caf\u{e9}",
        ] {
            assert!(!is_cookie_value(bad), "{bad:?}");
        }
    }
}
