//! The client registry and client authentication at the token endpoint (RFC 6749 §2.3,
//! RFC 7523 §2.2 for `private_key_jwt`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{self, AuthMethod, ClientConfig, SecretConfig};
use crate::hydra::{ClientRecord, Hydra, HydraError};
use crate::secret::Secret;
use crate::store::OneTimeStore;

/// RFC 7523 §2.2: the only client assertion type Iris accepts.
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A registered client, as policy sees it.
#[derive(Debug)]
pub struct Client {
    /// The client's id.
    pub id: String,
    /// Grants it may use.
    pub grant_types: Vec<String>,
    /// Audiences it may request, matched exactly.
    pub audience: Vec<String>,
    /// Scopes it may request.
    pub scope: Vec<String>,
    /// `metadata.first_party == true`.
    pub first_party: bool,
    credential: Credential,
}

enum Credential {
    /// A secret; `None` when only Hydra knows it (Hydra never reveals secrets).
    Secret {
        method: AuthMethod,
        verifier: Option<SecretVerifier>,
    },
    PrivateKeyJwt {
        alg: Algorithm,
        keys: KeySource,
    },
    /// Hydra's `none`: a public client cannot authenticate.
    Public,
}

enum KeySource {
    Inline(Vec<ClientKey>),
    /// A Hydra client's `jwks_uri`, fetched (and cached) when an assertion must be checked.
    Remote(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Secret { method, .. } => write!(f, "{method:?}"),
            Credential::PrivateKeyJwt { alg, .. } => write!(f, "PrivateKeyJwt({alg:?})"),
            Credential::Public => f.write_str("None"),
        }
    }
}

enum SecretVerifier {
    Argon2(Arc<str>),
    /// SHA-256 of the plaintext secret: comparing fixed-length digests keeps the comparison
    /// constant-time whatever the length of the presented secret.
    Plaintext([u8; 32]),
}

struct ClientKey {
    kid: Option<String>,
    key: DecodingKey,
}

impl Client {
    /// A client from its Hydra record (hydra.md §4).
    pub fn from_hydra(record: &ClientRecord) -> Client {
        let credential = match record.token_endpoint_auth_method.as_str() {
            "" | "client_secret_basic" => Credential::Secret {
                method: AuthMethod::ClientSecretBasic,
                verifier: None,
            },
            "client_secret_post" => Credential::Secret {
                method: AuthMethod::ClientSecretPost,
                verifier: None,
            },
            "private_key_jwt" => {
                let alg_name = match record.token_endpoint_auth_signing_alg.as_str() {
                    "" => "RS256",
                    alg => alg,
                };
                let alg = alg_name
                    .parse()
                    .ok()
                    .filter(|_| config::CLIENT_ASSERTION_ALGS.contains(&alg_name));
                // Hydra answers `jwks: {}` for a client whose keys are at its jwks_uri.
                let inline = record
                    .jwks
                    .as_ref()
                    .filter(|jwks| jwks["keys"].as_array().is_some_and(|keys| !keys.is_empty()));
                match (alg, inline) {
                    (Some(alg), Some(jwks)) => Credential::PrivateKeyJwt {
                        alg,
                        keys: KeySource::Inline(decoding_keys(jwks)),
                    },
                    (Some(alg), None) if !record.jwks_uri.is_empty() => Credential::PrivateKeyJwt {
                        alg,
                        keys: KeySource::Remote(record.jwks_uri.clone()),
                    },
                    // No usable key or algorithm: nothing can authenticate as this client.
                    _ => Credential::Public,
                }
            }
            _ => Credential::Public,
        };
        // Hydra treats an empty grant list as authorization_code only.
        Client {
            id: record.client_id.clone(),
            grant_types: record.grant_types.clone(),
            audience: record.audience.clone(),
            scope: split_scope(&record.scope),
            first_party: config::is_first_party(record.metadata.get("first_party")),
            credential,
        }
    }
}

/// The signing keys of a JWKS (`use` absent or `sig`, as Hydra considers them) that parse.
fn decoding_keys(jwks: &serde_json::Value) -> Vec<ClientKey> {
    let Ok(set) = serde_json::from_value::<jsonwebtoken::jwk::JwkSet>(jwks.clone()) else {
        return Vec::new();
    };
    keys_of(&set)
}

fn keys_of(set: &jsonwebtoken::jwk::JwkSet) -> Vec<ClientKey> {
    set.keys
        .iter()
        .filter(|jwk| {
            !matches!(jwk.common.public_key_use, Some(ref u) if *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
        })
        .filter_map(|jwk| {
            DecodingKey::from_jwk(jwk).ok().map(|key| ClientKey {
                kid: jwk.common.key_id.clone(),
                key,
            })
        })
        .collect()
}

fn split_scope(scope: &str) -> Vec<String> {
    scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Credentials as the client presented them.
#[derive(Debug)]
pub enum Credentials {
    /// `Authorization: Basic` (RFC 6749 §2.3.1, id and secret form-urlencoded before base64).
    Basic {
        /// The decoded client id.
        client_id: String,
        /// The decoded secret.
        secret: Secret,
    },
    /// `client_id` and `client_secret` in the body.
    Post {
        /// The client id.
        client_id: String,
        /// The secret.
        secret: Secret,
    },
    /// `client_assertion_type` and `client_assertion` in the body.
    Assertion {
        /// `client_id` from the body, when sent (it must then match the assertion).
        client_id: Option<String>,
        /// The assertion type as sent.
        assertion_type: Option<String>,
        /// The JWT.
        assertion: Option<Secret>,
    },
}

impl Credentials {
    /// Whether the client used the `Authorization` header (a 401 then names the Basic scheme).
    pub fn used_authorization_header(&self) -> bool {
        matches!(self, Credentials::Basic { .. })
    }
}

/// What the client sent that could authenticate it.
#[derive(Debug, Default)]
pub struct PresentedCredentials<'a> {
    /// The raw `Authorization` header.
    pub authorization: Option<&'a str>,
    /// `client_id` from the body.
    pub client_id: Option<&'a str>,
    /// `client_secret` from the body.
    pub client_secret: Option<&'a str>,
    /// `client_assertion_type` from the body.
    pub client_assertion_type: Option<&'a str>,
    /// `client_assertion` from the body.
    pub client_assertion: Option<&'a str>,
}

/// Why a client could not be authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// RFC 6749 §2.3: one method per request.
    #[error("the client used more than one authentication method")]
    MultipleMethods,
    /// Nothing that authenticates a client was sent.
    #[error("client authentication is required")]
    Missing,
    /// The `Authorization` header is not a usable Basic credential.
    #[error("the Authorization header is not a valid Basic credential")]
    MalformedBasic,
    /// `client_id` in the body names another client than the credential.
    #[error("client_id in the body does not match the authenticated client")]
    ClientIdMismatch,
    /// Unknown client, wrong secret, or a method the client is not registered for.
    #[error("client authentication failed")]
    Failed,
    /// The client is registered for another method than the one it used.
    #[error("the client is registered for {0}")]
    WrongMethod(&'static str),
    /// The assertion type is not RFC 7523's.
    #[error("client_assertion_type must be {JWT_BEARER_ASSERTION_TYPE}")]
    AssertionType,
    /// The assertion is malformed, badly signed, expired, or for someone else.
    #[error("the client assertion is invalid: {0}")]
    Assertion(&'static str),
    /// The assertion's `jti` was already used.
    #[error("the client assertion's jti was already used")]
    ReplayedJti,
    /// The replay store could not answer.
    #[error("the replay store failed: {0}")]
    Store(String),
    /// A Hydra client with a secret, in synthesize mode: Hydra never reveals secrets.
    #[error(
        "this client authenticates with a secret only Hydra can check: use tokens.issue: forward, a static client entry, or private_key_jwt"
    )]
    SecretOnlyHydraKnows,
    /// A public client (`none`) cannot authenticate.
    #[error("public clients cannot exchange tokens")]
    PublicClient,
    /// Hydra's client registry is unavailable.
    #[error(transparent)]
    Directory(HydraError),
}

/// Who checks client credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Iris checks every credential (synthesize mode).
    Iris,
    /// Credentials of Hydra clients travel to Hydra, which checks them (forward mode); Iris only
    /// reads which client they name. Static clients are still checked by Iris.
    Hydra,
}

/// The client directory (static entries first, then Hydra's records) and client authentication.
pub struct Authenticator {
    clients: HashMap<String, Arc<Client>>,
    hydra: Option<Arc<Hydra>>,
    verification: Verification,
    replay: Arc<dyn OneTimeStore>,
    /// Checked when the client is unknown, so that an unknown id costs as much as a wrong secret.
    decoy_hash: Arc<str>,
    /// Recent successful argon2 checks, by salted digest of (client, secret, hash): a client that
    /// calls often pays for argon2 once per [`VERIFIED_FOR`], not once per request.
    verified: moka::future::Cache<[u8; 32], ()>,
    salt: [u8; 32],
    argon2_runs: std::sync::atomic::AtomicU64,
}

/// How long a successful secret check is remembered.
pub const VERIFIED_FOR: Duration = Duration::from_secs(300);

impl Authenticator {
    /// Builds the static registry from validated client entries.
    pub fn new(
        clients: &[ClientConfig],
        allow_plaintext: bool,
        replay: Arc<dyn OneTimeStore>,
    ) -> Result<Self, config::ConfigError> {
        let mut by_id = HashMap::new();
        for (index, entry) in clients.iter().enumerate() {
            let client = build_client(index, entry, allow_plaintext)?;
            by_id.insert(client.id.clone(), Arc::new(client));
        }
        Ok(Authenticator {
            clients: by_id,
            hydra: None,
            verification: Verification::Iris,
            replay,
            decoy_hash: hash_secret("iris-decoy-secret")
                .map_err(|reason| config::ConfigError::Invalid {
                    key: "clients".into(),
                    reason,
                })?
                .into(),
            verified: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(VERIFIED_FOR)
                .build(),
            salt: {
                let mut salt = [0u8; 32];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut salt);
                salt
            },
            argon2_runs: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Adds Hydra's client records behind the static entries.
    pub fn with_hydra(mut self, hydra: Arc<Hydra>, verification: Verification) -> Self {
        self.hydra = Some(hydra);
        self.verification = verification;
        self
    }

    /// Looks a client up by id: a static entry wins over Hydra's record of the same id.
    pub async fn client(&self, id: &str) -> Result<Option<Arc<Client>>, AuthError> {
        if let Some(client) = self.clients.get(id) {
            return Ok(Some(client.clone()));
        }
        let Some(hydra) = &self.hydra else {
            return Ok(None);
        };
        let record = hydra.client(id).await.map_err(AuthError::Directory)?;
        Ok(record.map(|record| Arc::new(Client::from_hydra(&record))))
    }

    /// Authenticates the client behind `credentials`; assertions must name `token_endpoint`.
    pub async fn authenticate(
        &self,
        credentials: &Credentials,
        token_endpoint: &str,
    ) -> Result<Arc<Client>, AuthError> {
        match credentials {
            Credentials::Basic { client_id, secret } => {
                self.check_secret(client_id, secret, AuthMethod::ClientSecretBasic)
                    .await
            }
            Credentials::Post { client_id, secret } => {
                self.check_secret(client_id, secret, AuthMethod::ClientSecretPost)
                    .await
            }
            Credentials::Assertion {
                client_id,
                assertion_type,
                assertion,
            } => {
                if assertion_type.as_deref() != Some(JWT_BEARER_ASSERTION_TYPE) {
                    return Err(AuthError::AssertionType);
                }
                let assertion = assertion
                    .as_ref()
                    .ok_or(AuthError::Assertion("client_assertion is missing"))?;
                self.check_assertion(client_id.as_deref(), assertion, token_endpoint)
                    .await
            }
        }
    }

    async fn check_secret(
        &self,
        client_id: &str,
        secret: &Secret,
        used: AuthMethod,
    ) -> Result<Arc<Client>, AuthError> {
        let Some(client) = self.client(client_id).await? else {
            // Same cost as a wrong secret, so that ids cannot be enumerated by timing.
            let _ = verify_argon2(self.decoy_hash.clone(), secret.clone()).await;
            return Err(AuthError::Failed);
        };
        let (method, verifier) = match &client.credential {
            Credential::Secret { method, verifier } => (*method, verifier),
            Credential::PrivateKeyJwt { .. } => {
                return Err(AuthError::WrongMethod("private_key_jwt"));
            }
            Credential::Public => return Err(AuthError::PublicClient),
        };
        if method != used {
            return Err(AuthError::WrongMethod(method_name(method)));
        }
        let ok = match verifier {
            Some(SecretVerifier::Argon2(hash)) => self.check_argon2(client_id, hash, secret).await,
            Some(SecretVerifier::Plaintext(digest)) => {
                bool::from(Sha256::digest(secret.expose().as_bytes())[..].ct_eq(&digest[..]))
            }
            None if self.verification == Verification::Hydra => true,
            None => return Err(AuthError::SecretOnlyHydraKnows),
        };
        if ok {
            Ok(client)
        } else {
            Err(AuthError::Failed)
        }
    }

    /// argon2 for a secret not seen recently; a remembered success otherwise.
    async fn check_argon2(&self, client_id: &str, hash: &Arc<str>, secret: &Secret) -> bool {
        let key: [u8; 32] = {
            let mut hasher = Sha256::new();
            for part in [
                &self.salt[..],
                client_id.as_bytes(),
                secret.expose().as_bytes(),
                hash.as_bytes(),
            ] {
                hasher.update((part.len() as u64).to_be_bytes());
                hasher.update(part);
            }
            hasher.finalize().into()
        };
        // Concurrent checks of the same secret share one argon2 run; only a success is kept.
        self.verified
            .try_get_with(key, async {
                self.argon2_runs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if verify_argon2(hash.clone(), secret.clone()).await {
                    Ok(())
                } else {
                    Err(())
                }
            })
            .await
            .is_ok()
    }

    /// How many argon2 verifications ran (the cache's effect, for tests and diagnostics).
    pub fn argon2_runs(&self) -> u64 {
        self.argon2_runs.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn check_assertion(
        &self,
        body_client_id: Option<&str>,
        assertion: &Secret,
        token_endpoint: &str,
    ) -> Result<Arc<Client>, AuthError> {
        let header = jsonwebtoken::decode_header(assertion.expose())
            .map_err(|_| AuthError::Assertion("not a signed JWT"))?;
        // The client is named by `iss`/`sub`; read it before the signature can be checked.
        let claimed =
            unverified_issuer(assertion.expose()).ok_or(AuthError::Assertion("no iss claim"))?;
        if body_client_id.is_some_and(|id| id != claimed) {
            return Err(AuthError::ClientIdMismatch);
        }
        let client = self.client(&claimed).await?.ok_or(AuthError::Failed)?;
        let Credential::PrivateKeyJwt { alg, keys } = &client.credential else {
            return Err(AuthError::Failed);
        };
        if self.verification == Verification::Hydra && !self.clients.contains_key(&claimed) {
            // Hydra checks the assertion, and burns its jti, when the request reaches it.
            return Ok(client);
        }
        if header.alg != *alg {
            return Err(AuthError::Assertion(
                "alg is not the client's token_endpoint_auth_signing_alg",
            ));
        }
        let remote;
        let keys: &[ClientKey] = match keys {
            KeySource::Inline(keys) => keys,
            KeySource::Remote(uri) => {
                let hydra = self.hydra.as_ref().ok_or(AuthError::Failed)?;
                let set = hydra.remote_keys(uri).await.map_err(AuthError::Directory)?;
                remote = keys_of(&set);
                &remote
            }
        };
        let mut validation = Validation::new(*alg);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.set_issuer(&[claimed.as_str()]);
        validation.sub = Some(claimed.clone());
        validation.set_audience(&[token_endpoint]);
        let candidates = keys
            .iter()
            .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid);
        let mut claims = None;
        let mut last_error = "no key of the client matches the assertion's kid";
        for key in candidates {
            match jsonwebtoken::decode::<AssertionClaims>(assertion.expose(), &key.key, &validation)
            {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => last_error = assertion_error(e.kind()),
            }
        }
        let claims = claims.ok_or(AuthError::Assertion(last_error))?;
        let jti = claims
            .jti
            .filter(|j| !j.is_empty())
            .ok_or(AuthError::Assertion("jti is required"))?;
        let expires_at = UNIX_EPOCH + Duration::from_secs(claims.exp);
        let key = format!("{}\u{0}{}", claimed, jti);
        match self.replay.insert_new(&key, Vec::new(), expires_at).await {
            Ok(true) => Ok(client),
            Ok(false) => Err(AuthError::ReplayedJti),
            Err(e) => Err(AuthError::Store(e)),
        }
    }
}

#[derive(Deserialize)]
struct AssertionClaims {
    exp: u64,
    jti: Option<String>,
}

fn assertion_error(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "it has expired",
        K::InvalidAudience => "aud must be the token endpoint URL",
        K::InvalidIssuer => "iss must be the client_id",
        K::InvalidSubject => "sub must be the client_id",
        K::MissingRequiredClaim(_) => "iss, sub, aud and exp are required",
        K::ImmatureSignature => "it is not valid yet",
        K::InvalidSignature => "the signature does not verify",
        _ => "it cannot be verified",
    }
}

/// Reads `iss` from an unverified JWT payload; the signature is checked right after.
fn unverified_issuer(jwt: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok().map(|c| c.iss)
}

fn method_name(method: AuthMethod) -> &'static str {
    match method {
        AuthMethod::ClientSecretBasic => "client_secret_basic",
        AuthMethod::ClientSecretPost => "client_secret_post",
        AuthMethod::PrivateKeyJwt => "private_key_jwt",
        AuthMethod::None => "none",
    }
}

/// Argon2 costs milliseconds of CPU: it runs on the blocking pool, never on the async workers.
async fn verify_argon2(hash: Arc<str>, secret: Secret) -> bool {
    tokio::task::spawn_blocking(move || {
        use argon2::PasswordVerifier;
        argon2::PasswordHash::new(&hash)
            .map(|parsed| {
                argon2::Argon2::default()
                    .verify_password(secret.expose().as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// Hashes a client secret to an argon2id PHC string (what `iris hash-secret` prints).
pub fn hash_secret(secret: &str) -> Result<String, String> {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::generate(&mut rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

fn build_client(
    index: usize,
    entry: &ClientConfig,
    allow_plaintext: bool,
) -> Result<Client, config::ConfigError> {
    let invalid = |field: &str, reason: String| config::ConfigError::Invalid {
        key: format!("clients[{index}].{field}"),
        reason,
    };
    let credential = match entry.token_endpoint_auth_method {
        AuthMethod::None => Credential::Public,
        method @ (AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost) => {
            let verifier = match config::secret_config(entry, allow_plaintext)
                .map_err(|(f, r)| invalid(f, r))?
            {
                SecretConfig::Argon2(hash) => SecretVerifier::Argon2(hash.into()),
                SecretConfig::Plaintext(secret) => {
                    SecretVerifier::Plaintext(Sha256::digest(secret.expose().as_bytes()).into())
                }
            };
            Credential::Secret {
                method,
                verifier: Some(verifier),
            }
        }
        AuthMethod::PrivateKeyJwt => {
            let alg_name = entry
                .token_endpoint_auth_signing_alg
                .as_deref()
                .unwrap_or("RS256");
            let alg: Algorithm = alg_name
                .parse()
                .ok()
                .filter(|_| config::CLIENT_ASSERTION_ALGS.contains(&alg_name))
                .ok_or_else(|| {
                    invalid(
                        "token_endpoint_auth_signing_alg",
                        format!("{alg_name} is not allowed"),
                    )
                })?;
            let set: jsonwebtoken::jwk::JwkSet = entry
                .jwks
                .clone()
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| invalid("jwks", e.to_string()))?
                .ok_or_else(|| invalid("jwks", "private_key_jwt needs jwks".into()))?;
            // Each key was checked in stage two of the configuration.
            let keys = keys_of(&set);
            Credential::PrivateKeyJwt {
                alg,
                keys: KeySource::Inline(keys),
            }
        }
    };
    Ok(Client {
        id: entry.client_id.clone(),
        grant_types: entry.grant_types.clone(),
        audience: entry.audience.clone(),
        scope: split_scope(&entry.scope),
        first_party: config::is_first_party(entry.metadata.get("first_party")),
        credential,
    })
}

/// Picks the one authentication method the request used (RFC 6749 §2.3: never two).
pub fn credentials(presented: &PresentedCredentials<'_>) -> Result<Credentials, AuthError> {
    let basic = presented.authorization.is_some();
    let post = presented.client_secret.is_some();
    let assertion =
        presented.client_assertion.is_some() || presented.client_assertion_type.is_some();
    if [basic, post, assertion]
        .iter()
        .filter(|used| **used)
        .count()
        > 1
    {
        return Err(AuthError::MultipleMethods);
    }
    if let Some(header) = presented.authorization {
        let (client_id, secret) = parse_basic(header).ok_or(AuthError::MalformedBasic)?;
        if presented.client_id.is_some_and(|id| id != client_id) {
            return Err(AuthError::ClientIdMismatch);
        }
        return Ok(Credentials::Basic { client_id, secret });
    }
    if let Some(secret) = presented.client_secret {
        let client_id = presented.client_id.ok_or(AuthError::Missing)?;
        return Ok(Credentials::Post {
            client_id: client_id.to_owned(),
            secret: Secret::new(secret),
        });
    }
    if assertion {
        return Ok(Credentials::Assertion {
            client_id: presented.client_id.map(String::from),
            assertion_type: presented.client_assertion_type.map(String::from),
            assertion: presented.client_assertion.map(Secret::new),
        });
    }
    Err(AuthError::Missing)
}

/// RFC 6749 §2.3.1 and App. B: base64 of `urlencode(id):urlencode(secret)`.
fn parse_basic(header: &str) -> Option<(String, Secret)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let id = form_urldecode(id)?;
    let secret = form_urldecode(secret)?;
    if id.is_empty() {
        return None;
    }
    Some((id, Secret::new(secret)))
}

/// Decodes one `application/x-www-form-urlencoded` value: `+` is a space, `%XX` a byte.
pub fn form_urldecode(text: &str) -> Option<String> {
    let spaced = text.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(id: &str, secret: &str) -> String {
        let enc = |s: &str| serde_urlencoded::to_string([("", s)]).unwrap()[1..].to_string();
        let raw = format!("{}:{}", enc(id), enc(secret));
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    #[test]
    fn basic_credentials_are_form_urldecoded_after_base64() {
        // OA-5: RFC 6749 App. B; a secret with ` +%&:` must survive the round trip.
        let header = basic("orders service", "s3 +%&:cret");
        let (id, secret) = parse_basic(&header).unwrap();
        assert_eq!(id, "orders service");
        assert_eq!(secret.expose(), "s3 +%&:cret");
    }

    #[test]
    fn a_raw_plus_in_basic_is_a_space() {
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("a:b+c")
        );
        assert_eq!(parse_basic(&header).unwrap().1.expose(), "b c");
    }

    #[test]
    fn other_schemes_and_garbage_are_not_basic() {
        for header in ["Bearer abc", "Basic", "Basic !!!", "Basic Zm9v"] {
            assert!(parse_basic(header).is_none(), "{header}");
        }
    }

    #[test]
    fn two_methods_in_one_request_are_refused() {
        // OA-5: a client MUST NOT use more than one method.
        let presented = PresentedCredentials {
            authorization: Some("Basic YTpi"),
            client_secret: Some("b"),
            client_id: Some("a"),
            ..Default::default()
        };
        assert!(matches!(
            credentials(&presented),
            Err(AuthError::MultipleMethods)
        ));
    }

    #[tokio::test]
    async fn argon2_hashes_verify_only_the_right_secret() {
        let hash: Arc<str> = hash_secret("s3 +%&:cret").unwrap().into();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_argon2(hash.clone(), Secret::new("s3 +%&:cret")).await);
        assert!(!verify_argon2(hash, Secret::new("s3 +%&:creT")).await);
    }
}

#[cfg(test)]
mod verification_cache_tests {
    use super::*;
    use crate::store::MemoryStore;

    fn client(hash: String) -> ClientConfig {
        ClientConfig {
            client_id: "c".into(),
            client_secret_hash: Some(hash),
            ..Default::default()
        }
    }

    /// A remembered success skips argon2; a wrong secret is never taken from the memory.
    #[tokio::test]
    async fn successful_checks_are_remembered_and_wrong_ones_never() {
        let auth = Authenticator::new(
            &[client(hash_secret("right").unwrap())],
            false,
            Arc::new(MemoryStore::default()),
        )
        .unwrap();
        let basic = |secret: &str| Credentials::Basic {
            client_id: "c".into(),
            secret: Secret::new(secret),
        };
        assert!(auth.authenticate(&basic("right"), "").await.is_ok());
        assert!(auth.authenticate(&basic("right"), "").await.is_ok());
        assert_eq!(auth.argon2_runs(), 1, "the second success came from memory");
        assert!(auth.authenticate(&basic("wrong"), "").await.is_err());
        assert!(auth.authenticate(&basic("wrong"), "").await.is_err());
        assert_eq!(auth.argon2_runs(), 3, "failures always pay argon2");
    }
}
