//! Hydra behind Iris (reference/hydra.md): client records from the admin API, discovery and JWKS
//! from the public port, the jwt-bearer trust relationship, and the jwt-bearer grant that issues
//! the access token in forward mode.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, OnceCell};

use crate::config::HydraSettings;
use crate::keys::KeySet;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::upstream::Roots;

/// The jwt-bearer grant type (RFC 7523 §2.1).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Why Hydra could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HydraError {
    /// Unreachable, slow, or a 5xx: retry later.
    #[error("Hydra is unavailable: {0}")]
    Unavailable(String),
    /// An answer outside Hydra's contract.
    #[error("Hydra answered unexpectedly: {0}")]
    Unexpected(String),
}

/// A client record as `GET /admin/clients/{id}` returns it (never with its secret).
#[derive(Debug, Clone, Deserialize)]
pub struct ClientRecord {
    /// The id.
    pub client_id: String,
    /// Grants; Hydra treats an empty list as `authorization_code`.
    #[serde(default)]
    pub grant_types: Vec<String>,
    /// Allowed audiences.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
    /// Free-form metadata (`first_party`).
    #[serde(default)]
    pub metadata: Value,
    /// Empty means `client_secret_basic`.
    #[serde(default)]
    pub token_endpoint_auth_method: String,
    /// `alg` of `private_key_jwt` assertions; empty means `RS256`.
    #[serde(default)]
    pub token_endpoint_auth_signing_alg: String,
    /// Inline public keys.
    #[serde(default)]
    pub jwks: Option<Value>,
    /// Where the public keys are published.
    #[serde(default)]
    pub jwks_uri: String,
}

/// Hydra's answer to the jwt-bearer grant (hydra.md §2.5).
#[derive(Debug, Deserialize)]
pub struct HydraToken {
    /// The token Hydra issued (opaque `ory_at_…` or a JWT).
    pub access_token: String,
    /// Seconds until it expires.
    #[serde(default)]
    pub expires_in: u64,
    /// The granted scope (space-separated; may be empty).
    #[serde(default)]
    pub scope: String,
}

/// Why the forwarded grant failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Hydra refused the client's part of the request; relayed with its status.
    #[error("Hydra refused the request: {error}: {description}")]
    Refused {
        /// Hydra's status.
        status: u16,
        /// Hydra's `error`.
        error: String,
        /// Hydra's `error_description`.
        description: String,
    },
    /// Hydra refused Iris's own assertion: Iris is misconfigured (trust relationship, clock, key).
    #[error("Hydra rejected Iris's assertion ({error}): {description}")]
    AssertionRejected {
        /// Hydra's `error`.
        error: String,
        /// Hydra's `error_description`.
        description: String,
    },
    /// Hydra is unavailable.
    #[error(transparent)]
    Hydra(#[from] HydraError),
}

/// The client credentials to pass to Hydra unchanged.
#[derive(Debug, Default)]
pub struct ForwardedCredentials {
    /// The caller's `Authorization` header.
    pub authorization: Option<Secret>,
    /// Body parameters (`client_id`, `client_secret`, `client_assertion_type`, `client_assertion`).
    pub form: Vec<(&'static str, Secret)>,
}

/// A cached document with its fetch time.
/// A document of Hydra's: read without waiting while fresh; refreshed by one caller at a time.
#[derive(Default)]
struct Cached {
    /// The document and when to refresh it.
    current: std::sync::RwLock<Option<(Instant, Arc<Value>)>>,
    /// Held while refreshing, so concurrent misses share one request.
    refreshing: Mutex<()>,
}

impl Cached {
    fn fresh(&self) -> Option<Arc<Value>> {
        let current = self.current.read().ok()?;
        current
            .as_ref()
            .filter(|(refresh_at, _)| Instant::now() < *refresh_at)
            .map(|(_, document)| document.clone())
    }

    fn any(&self) -> Option<Arc<Value>> {
        self.current
            .read()
            .ok()?
            .as_ref()
            .map(|(_, document)| document.clone())
    }

    fn set(&self, refresh_at: Instant, document: Arc<Value>) {
        if let Ok(mut current) = self.current.write() {
            *current = Some((refresh_at, document));
        }
    }
}

/// While Hydra is down, a stale document is served and a refresh tried at most this often.
const STALE_RETRY: Duration = Duration::from_secs(5);

/// Hydra's public and admin APIs.
pub struct Hydra {
    http: reqwest::Client,
    public_url: url::Url,
    admin_url: url::Url,
    metadata_ttl: Duration,
    clients: moka::future::Cache<String, Option<Arc<ClientRecord>>>,
    remote_keys: moka::future::Cache<String, Arc<JwkSet>>,
    openid_configuration: Cached,
    authorization_server: Cached,
    jwks: Cached,
    trust: OnceCell<()>,
    settings: HydraSettings,
    metrics: Arc<Metrics>,
}

impl Hydra {
    /// A client for the configured Hydra.
    pub fn new(
        settings: &HydraSettings,
        roots: &Roots,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let http = crate::upstream::http_client(settings.timeout, roots)?;
        Ok(Hydra {
            http,
            public_url: settings.public_url.clone(),
            admin_url: settings.admin_url.clone(),
            metadata_ttl: settings.metadata_cache_ttl,
            clients: bounded_cache(settings.client_cache_ttl),
            remote_keys: bounded_cache(settings.metadata_cache_ttl),
            openid_configuration: Cached::default(),
            authorization_server: Cached::default(),
            jwks: Cached::default(),
            trust: OnceCell::new(),
            settings: settings.clone(),
            metrics,
        })
    }

    /// Hydra's public base URL.
    pub fn public_url(&self) -> &url::Url {
        &self.public_url
    }

    fn url(base: &url::Url, path: &str) -> url::Url {
        let mut url = base.clone();
        let prefix = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{prefix}{path}"));
        url
    }

    /// `GET /admin/clients/{id}`, cached for `hydra.client_cache_ttl`; `None` when Hydra has no
    /// such client. Failures are not cached.
    pub async fn client(&self, id: &str) -> Result<Option<Arc<ClientRecord>>, HydraError> {
        self.clients
            .try_get_with(id.to_owned(), self.fetch_client(id))
            .await
            .map_err(|e| (*e).clone())
    }

    async fn fetch_client(&self, id: &str) -> Result<Option<Arc<ClientRecord>>, HydraError> {
        let mut url = Self::url(&self.admin_url, "/admin/clients");
        url.path_segments_mut()
            .map_err(|_| HydraError::Unexpected("admin URL cannot be a base".into()))?
            .push(id);
        let started = Instant::now();
        let sent = self.http.get(url).send().await;
        self.metrics.upstream("hydra", "client", started.elapsed());
        let response = sent.map_err(transport)?;
        match response.status().as_u16() {
            200 => {
                let record: ClientRecord = response
                    .json()
                    .await
                    .map_err(|e| HydraError::Unexpected(format!("client record: {e}")))?;
                Ok(Some(Arc::new(record)))
            }
            // Hydra answers 401 for an unknown client id on some versions, 404 on others.
            404 | 401 => Ok(None),
            status if status >= 500 => Err(HydraError::Unavailable(format!(
                "GET client answered {status}"
            ))),
            status => Err(HydraError::Unexpected(format!(
                "GET client answered {status}"
            ))),
        }
    }

    /// The keys at a client's `jwks_uri`, cached for `hydra.metadata_cache_ttl`.
    pub async fn remote_keys(&self, uri: &str) -> Result<Arc<JwkSet>, HydraError> {
        self.remote_keys
            .try_get_with(uri.to_owned(), async {
                let response = self.http.get(uri).send().await.map_err(transport)?;
                if !response.status().is_success() {
                    return Err(HydraError::Unavailable(format!(
                        "jwks_uri answered {}",
                        response.status()
                    )));
                }
                response
                    .json::<JwkSet>()
                    .await
                    .map(Arc::new)
                    .map_err(|e| HydraError::Unexpected(format!("jwks_uri: {e}")))
            })
            .await
            .map_err(|e| (*e).clone())
    }

    /// Hydra's discovery document at `/.well-known/openid-configuration` or
    /// `/.well-known/oauth-authorization-server`, cached briefly; a stale copy serves while
    /// Hydra is down.
    pub async fn discovery(&self, path: &str) -> Result<Arc<Value>, HydraError> {
        let slot = if path.ends_with("oauth-authorization-server") {
            &self.authorization_server
        } else {
            &self.openid_configuration
        };
        self.cached_document(slot, path).await
    }

    /// Hydra's own JWKS, cached like discovery.
    pub async fn jwks(&self) -> Result<Arc<Value>, HydraError> {
        self.cached_document(&self.jwks, "/.well-known/jwks.json")
            .await
    }

    async fn cached_document(&self, slot: &Cached, path: &str) -> Result<Arc<Value>, HydraError> {
        if let Some(document) = slot.fresh() {
            return Ok(document);
        }
        let _refreshing = slot.refreshing.lock().await;
        if let Some(document) = slot.fresh() {
            return Ok(document);
        }
        match self.fetch_document(path).await {
            Ok(document) => {
                let document = Arc::new(document);
                slot.set(Instant::now() + self.metadata_ttl, document.clone());
                Ok(document)
            }
            Err(error) => match slot.any() {
                Some(stale) => {
                    tracing::warn!(%error, path, "serving a stale copy of Hydra's document");
                    slot.set(
                        Instant::now() + self.metadata_ttl.min(STALE_RETRY),
                        stale.clone(),
                    );
                    Ok(stale)
                }
                None => Err(error),
            },
        }
    }

    async fn fetch_document(&self, path: &str) -> Result<Value, HydraError> {
        let started = Instant::now();
        let sent = self
            .http
            .get(Self::url(&self.public_url, path))
            .send()
            .await;
        self.metrics
            .upstream("hydra", "metadata", started.elapsed());
        let response = sent.map_err(transport)?;
        if !response.status().is_success() {
            return Err(HydraError::Unavailable(format!(
                "{path} answered {}",
                response.status()
            )));
        }
        let document: Value = response
            .json()
            .await
            .map_err(|e| HydraError::Unexpected(format!("{path}: {e}")))?;
        if !document.is_object() {
            return Err(HydraError::Unexpected(format!(
                "{path} is not a JSON object"
            )));
        }
        Ok(document)
    }

    /// Hydra's `issuer` and `token_endpoint` from discovery.
    pub async fn endpoints(&self) -> Result<(String, String), HydraError> {
        let document = self.discovery("/.well-known/openid-configuration").await?;
        let field = |name: &str| {
            document
                .get(name)
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| HydraError::Unexpected(format!("discovery has no {name}")))
        };
        Ok((field("issuer")?, field("token_endpoint")?))
    }

    /// Makes sure Hydra trusts Iris's first signing key for the jwt-bearer grant (hydra.md §2.3),
    /// registering the relationship when it is missing. Succeeds once per process.
    pub async fn ensure_trust(&self, issuer: &str, keys: &KeySet) -> Result<(), HydraError> {
        self.trust
            .get_or_try_init(|| self.register_trust(issuer, keys))
            .await
            .map(|_| ())
    }

    async fn register_trust(&self, issuer: &str, keys: &KeySet) -> Result<(), HydraError> {
        let signer = keys.signer();
        let mut list = Self::url(&self.admin_url, "/admin/trust/grants/jwt-bearer/issuers");
        list.query_pairs_mut().append_pair("issuer", issuer);
        let response = self.http.get(list).send().await.map_err(transport)?;
        if response.status().is_server_error() {
            return Err(HydraError::Unavailable(format!(
                "listing trust relationships answered {}",
                response.status()
            )));
        }
        let existing: Vec<Value> = response
            .json()
            .await
            .map_err(|e| HydraError::Unexpected(format!("trust relationships: {e}")))?;
        let registered = existing.iter().any(|grant| {
            grant["issuer"] == issuer
                && grant["allow_any_subject"] == true
                && grant["public_key"]["kid"] == signer.kid.as_str()
                && grant["expires_at"]
                    .as_str()
                    .and_then(|t| {
                        time::OffsetDateTime::parse(
                            t,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .ok()
                    })
                    .is_none_or(|t| SystemTime::from(t) > SystemTime::now())
        });
        if registered {
            tracing::info!(issuer, kid = %signer.kid, "Hydra already trusts Iris's signing key");
            return Ok(());
        }
        let expires_at =
            time::OffsetDateTime::from(SystemTime::now() + self.settings.trust_expires_in)
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(|e| HydraError::Unexpected(e.to_string()))?;
        let body = json!({
            "issuer": issuer,
            "allow_any_subject": true,
            "scope": self.settings.trust_scope,
            "jwk": signer.public_jwk,
            "expires_at": expires_at,
        });
        let response = self
            .http
            .post(Self::url(
                &self.admin_url,
                "/admin/trust/grants/jwt-bearer/issuers",
            ))
            .json(&body)
            .send()
            .await
            .map_err(transport)?;
        match response.status().as_u16() {
            200 | 201 => {
                tracing::info!(issuer, kid = %signer.kid, "registered the jwt-bearer trust relationship at Hydra");
                Ok(())
            }
            // Another replica registered the same (issuer, any subject, kid) first.
            409 => Ok(()),
            status if status >= 500 => Err(HydraError::Unavailable(format!(
                "registering trust answered {status}"
            ))),
            status => {
                let text = response.text().await.unwrap_or_default();
                Err(HydraError::Unexpected(format!(
                    "registering trust answered {status}: {text}"
                )))
            }
        }
    }

    /// The trust issuer Iris asserts as: `hydra.trust.issuer`, else Iris's issuer.
    pub fn trust_issuer<'a>(&'a self, iris_issuer: &'a str) -> &'a str {
        self.settings.trust_issuer.as_deref().unwrap_or(iris_issuer)
    }

    /// The jwt-bearer grant with a fresh assertion for `subject` (hydra.md §2): `aud` is only
    /// Hydra's discovery `token_endpoint`, targets go in `audience`, and the caller's client
    /// credentials travel unchanged.
    pub async fn jwt_bearer(
        &self,
        request: JwtBearerRequest<'_>,
        keys: &KeySet,
    ) -> Result<HydraToken, ForwardError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let signer = keys.signer();
        let mut header = jsonwebtoken::Header::new(signer.alg);
        header.kid = Some(signer.kid.clone());
        let claims = json!({
            "iss": request.trust_issuer,
            "sub": request.subject,
            "aud": request.token_endpoint,
            "iat": now,
            // hydra.md §2.8: no leeway at Hydra, so a short life and no nbf.
            "exp": now + 60,
            "jti": crate::tokens::new_jti(),
        });
        let assertion = crate::tokens::sign(&header, &claims, signer)
            .map_err(|e| HydraError::Unexpected(format!("signing the assertion: {e}")))?;
        let mut form: Vec<(&str, &str)> =
            vec![("grant_type", JWT_BEARER_GRANT), ("assertion", &assertion)];
        let scope = request.scope.join(" ");
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        for audience in request.audience {
            form.push(("audience", audience));
        }
        for (name, value) in &request.credentials.form {
            form.push((name, value.expose()));
        }
        let body = serde_urlencoded::to_string(&form)
            .map_err(|e| HydraError::Unexpected(e.to_string()))?;
        let mut call = self
            .http
            .post(Self::url(&self.public_url, "/oauth2/token"))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body);
        if let Some(authorization) = &request.credentials.authorization {
            let mut value = reqwest::header::HeaderValue::from_str(authorization.expose())
                .map_err(|_| HydraError::Unexpected("Authorization header".into()))?;
            value.set_sensitive(true);
            call = call.header(reqwest::header::AUTHORIZATION, value);
        }
        let started = Instant::now();
        let sent = crate::telemetry::propagate(call).send().await;
        self.metrics
            .upstream("hydra", "jwt_bearer", started.elapsed());
        let response = sent.map_err(transport)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport)?;
        if status == 200 {
            return serde_json::from_slice(&bytes)
                .map_err(|e| HydraError::Unexpected(format!("token response: {e}")).into());
        }
        if status >= 500 {
            return Err(
                HydraError::Unavailable(format!("the jwt-bearer grant answered {status}")).into(),
            );
        }
        #[derive(Deserialize)]
        struct OAuthBody {
            error: String,
            #[serde(default)]
            error_description: String,
        }
        let refusal: OAuthBody = serde_json::from_slice(&bytes).map_err(|_| {
            HydraError::Unexpected(format!(
                "the jwt-bearer grant answered {status} without an OAuth error"
            ))
        })?;
        match refusal.error.as_str() {
            // Faults in Iris's assertion, not in the client's request.
            "invalid_grant" | "jti_known" => Err(ForwardError::AssertionRejected {
                error: refusal.error,
                description: refusal.error_description,
            }),
            _ => Err(ForwardError::Refused {
                status,
                error: refusal.error,
                description: refusal.error_description,
            }),
        }
    }

    /// Whether Hydra's public port answers (readiness).
    pub async fn reachable(&self) -> bool {
        self.fetch_document("/.well-known/openid-configuration")
            .await
            .is_ok()
    }
}

/// What the forwarded jwt-bearer grant asks for.
pub struct JwtBearerRequest<'a> {
    /// `iss` of the assertion.
    pub trust_issuer: &'a str,
    /// `sub` of the assertion: the Kratos identity id.
    pub subject: &'a str,
    /// Hydra's discovery `token_endpoint` (the assertion's only `aud`).
    pub token_endpoint: &'a str,
    /// Granted scopes.
    pub scope: &'a [String],
    /// Granted audiences.
    pub audience: &'a [String],
    /// The caller's client credentials, unchanged.
    pub credentials: &'a ForwardedCredentials,
}

/// A cache of at most 10 000 entries that each live `ttl`.
fn bounded_cache<V: Clone + Send + Sync + 'static>(
    ttl: Duration,
) -> moka::future::Cache<String, V> {
    moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(ttl.max(Duration::from_millis(1)))
        .build()
}

fn transport(error: reqwest::Error) -> HydraError {
    if error.is_timeout() {
        HydraError::Unavailable("timed out".into())
    } else if error.is_connect() {
        HydraError::Unavailable("unreachable".into())
    } else {
        HydraError::Unavailable(error.to_string())
    }
}

/// Hydra's document with the token-exchange grant added to `grant_types_supported`; every other
/// member unchanged.
pub fn with_token_exchange(document: &Value) -> Value {
    let mut document = document.clone();
    let grant = Value::String(crate::config::TOKEN_EXCHANGE_GRANT.into());
    match document
        .get_mut("grant_types_supported")
        .and_then(Value::as_array_mut)
    {
        Some(grants) if grants.contains(&grant) => {}
        Some(grants) => grants.push(grant),
        None => document["grant_types_supported"] = json!([grant]),
    }
    document
}

/// Hydra's keys plus Iris's (Iris's win on a shared `kid`, which should never happen).
pub fn merged_jwks(hydra: &Value, iris: &Value) -> Value {
    let ours: Vec<Value> = iris["keys"].as_array().cloned().unwrap_or_default();
    let ours_kids: Vec<&Value> = ours.iter().map(|k| &k["kid"]).collect();
    let mut keys: Vec<Value> = hydra["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter(|k| !ours_kids.contains(&&k["kid"]))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    keys.extend(ours.iter().cloned());
    json!({"keys": keys})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_gains_the_grant_and_keeps_everything_else() {
        let hydra = json!({"issuer": "https://auth.example.com/", "grant_types_supported": ["authorization_code"], "x": 1});
        let merged = with_token_exchange(&hydra);
        assert_eq!(merged["issuer"], "https://auth.example.com/");
        assert_eq!(merged["x"], 1);
        assert_eq!(
            merged["grant_types_supported"],
            json!(["authorization_code", crate::config::TOKEN_EXCHANGE_GRANT])
        );
        assert_eq!(
            with_token_exchange(&merged),
            merged,
            "adding twice changes nothing"
        );
    }

    #[test]
    fn jwks_merge_keeps_both_sets() {
        let merged = merged_jwks(
            &json!({"keys": [{"kid": "h"}]}),
            &json!({"keys": [{"kid": "i"}]}),
        );
        assert_eq!(merged, json!({"keys": [{"kid": "h"}, {"kid": "i"}]}));
    }
}
