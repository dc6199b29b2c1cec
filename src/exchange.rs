//! The token-exchange grant (RFC 8693 §2): reading the form, checking the request in the order
//! DESIGN.md §3 gives, and running the pipeline (client, policy, session, tokens).

use std::sync::Arc;
use std::time::SystemTime;

use percent_encoding::percent_decode;
use serde::Serialize;

use crate::clients::{self, AuthError, Authenticator, Client, PresentedCredentials};
use crate::config::TOKEN_EXCHANGE_GRANT;
use crate::hydra::{ForwardError, ForwardedCredentials, Hydra, HydraError, JwtBearerRequest};
use crate::keys::KeySet;
use crate::kratos::{Session, SessionError, SessionResolver, SubjectToken};
use crate::policy::{self, Grant, Policy, PolicyError};
use crate::secret::Secret;
use crate::tokens::{Issuance, MintError, Minter, RequestedTokenType, ReshapeError};

/// Parameters Iris reads that may appear once (RFC 6749 §3.2). `audience` and `resource` repeat
/// (RFC 8693 §2.1, RFC 8707 §2); unknown parameters are ignored.
const SINGLE: [&str; 11] = [
    "grant_type",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
    "scope",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
];

/// A token-endpoint form body, decoded once.
#[derive(Debug)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

/// Why a form body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    /// RFC 6749 App. B: the body must be UTF-8 once percent-decoded.
    #[error("the body is not UTF-8 application/x-www-form-urlencoded data")]
    NotUtf8,
    /// RFC 6749 §3.2: a parameter sent more than once.
    #[error("the {0} parameter was sent more than once")]
    Repeated(String),
}

impl Form {
    /// Decodes `application/x-www-form-urlencoded` bytes. A malformed `%` sequence is kept as
    /// it is (as browsers do); bytes that are not UTF-8 after decoding are refused.
    pub fn parse(body: &[u8]) -> Result<Form, FormError> {
        let mut pairs = Vec::new();
        for piece in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let (name, value) = match piece.iter().position(|b| *b == b'=') {
                Some(at) => (&piece[..at], &piece[at + 1..]),
                None => (piece, &piece[piece.len()..]),
            };
            pairs.push((decode_component(name)?, decode_component(value)?));
        }
        Ok(Form { pairs })
    }

    /// The value of a parameter that may appear once; empty counts as absent (RFC 6749 §3.1).
    pub fn single(&self, name: &str) -> Result<Option<&str>, FormError> {
        let mut values = self
            .pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(FormError::Repeated(name.to_owned()));
        }
        Ok(first.filter(|v| !v.is_empty()))
    }

    /// Every non-empty value of a repeatable parameter.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// DESIGN.md §3 step 2: every parameter Iris reads appears at most once.
    pub fn check_single_valued(&self) -> Result<(), FormError> {
        for name in SINGLE {
            self.single(name)?;
        }
        Ok(())
    }
}

fn decode_component(raw: &[u8]) -> Result<String, FormError> {
    let spaced: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    percent_decode(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| FormError::NotUtf8)
}

/// How a subject token reaches Kratos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectTokenKind {
    /// As `X-Session-Token`.
    SessionToken,
    /// As the value of the session cookie.
    SessionCookie,
}

/// The subject token types Iris accepts, by how each reaches Kratos.
#[derive(Debug, Clone)]
pub struct SubjectTokenTypes {
    /// Sent as `X-Session-Token`.
    pub session_token: Vec<String>,
    /// Sent as a cookie.
    pub session_cookie: Vec<String>,
}

impl SubjectTokenTypes {
    fn kind(&self, token_type: &str) -> Option<SubjectTokenKind> {
        if self.session_token.iter().any(|t| t == token_type) {
            Some(SubjectTokenKind::SessionToken)
        } else if self.session_cookie.iter().any(|t| t == token_type) {
            Some(SubjectTokenKind::SessionCookie)
        } else {
            None
        }
    }
}

/// A well-formed token-exchange request (DESIGN.md §3 steps 1–3 passed).
#[derive(Debug)]
pub struct ExchangeRequest {
    /// The session credential.
    pub subject_token: SubjectToken,
    /// What the client wants back.
    pub requested_token_type: RequestedTokenType,
    /// Requested scopes, in order, without duplicates.
    pub scope: Vec<String>,
    /// `audience` values then `resource` values.
    pub targets: Vec<String>,
}

/// Why a token-exchange request is malformed (step 3).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A required parameter is missing or empty.
    #[error("the {0} parameter is required")]
    Missing(&'static str),
    /// TX-5: `actor_token` and `actor_token_type` come together.
    #[error("actor_token and actor_token_type must be sent together")]
    ActorPair,
    /// The subject token type is not one Iris resolves.
    #[error("subject_token_type {0} is not supported")]
    SubjectTokenType(String),
    /// The requested token type is not one Iris issues.
    #[error("requested_token_type {0} is not supported")]
    RequestedTokenType(String),
    /// RI-1: a resource must be an absolute URI without a fragment.
    #[error("resource {0} is not an absolute URI without a fragment")]
    Resource(String),
    /// Delegation is not built; a complete actor pair is refused rather than ignored.
    #[error("actor tokens are not supported")]
    ActorUnsupported,
}

/// Steps 2 and 3 of DESIGN.md §3 for a form whose grant is token exchange.
pub fn parse_request(
    form: &Form,
    types: &SubjectTokenTypes,
) -> Result<ExchangeRequest, ExchangeError> {
    form.check_single_valued()?;
    let subject_token = form
        .single("subject_token")?
        .ok_or(RequestError::Missing("subject_token"))?;
    let subject_token_type = form
        .single("subject_token_type")?
        .ok_or(RequestError::Missing("subject_token_type"))?;
    let actor = (
        form.single("actor_token")?,
        form.single("actor_token_type")?,
    );
    if actor.0.is_some() != actor.1.is_some() {
        return Err(RequestError::ActorPair.into());
    }
    let kind = types
        .kind(subject_token_type)
        .ok_or_else(|| RequestError::SubjectTokenType(subject_token_type.to_owned()))?;
    let requested_token_type = match form.single("requested_token_type")? {
        None => RequestedTokenType::AccessToken,
        Some(value) => RequestedTokenType::from_uri(value)
            .ok_or_else(|| RequestError::RequestedTokenType(value.to_owned()))?,
    };
    let resources = form.all("resource");
    for resource in &resources {
        let absolute = url::Url::parse(resource).is_ok_and(|u| u.fragment().is_none());
        if !absolute {
            return Err(RequestError::Resource((*resource).to_owned()).into());
        }
    }
    if actor.0.is_some() {
        return Err(RequestError::ActorUnsupported.into());
    }
    let mut scope: Vec<String> = Vec::new();
    for s in form
        .single("scope")?
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
    {
        if !scope.iter().any(|have| have == s) {
            scope.push(s.to_owned());
        }
    }
    let mut targets: Vec<String> = Vec::new();
    for target in form.all("audience").into_iter().chain(resources) {
        if !targets.iter().any(|t| t == target) {
            targets.push(target.to_owned());
        }
    }
    Ok(ExchangeRequest {
        subject_token: SubjectToken {
            kind,
            value: Secret::new(subject_token),
        },
        requested_token_type,
        scope,
        targets,
    })
}

/// Everything that can stop an exchange, by the step that stopped it. [`crate::oauth`] maps each
/// to its RFC 6749 error once.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Step 1: the request is not a form POST.
    #[error("the token endpoint takes a POST with an application/x-www-form-urlencoded body")]
    NotAFormPost,
    /// Step 1: the body is larger than `serve.public.max_body_bytes`.
    #[error("the body is larger than {0} bytes")]
    BodyTooLarge(usize),
    /// Step 1: the body could not be read from the connection, or not in time.
    #[error("the body could not be read completely in time")]
    BodyUnreadable,
    /// The grant is not token exchange and there is no Hydra to pass it to.
    #[error("grant_type {0} is not supported")]
    UnsupportedGrant(String),
    /// No `grant_type`.
    #[error("the grant_type parameter is required")]
    MissingGrant,
    /// `grant_type` names the token-exchange grant among others.
    #[error("grant_type must name exactly one grant")]
    AmbiguousGrant,
    /// Step 2.
    #[error(transparent)]
    Form(#[from] FormError),
    /// Step 3.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Step 4.
    #[error("{error}")]
    Client {
        /// What went wrong.
        error: AuthError,
        /// Whether the client used the `Authorization` header.
        used_authorization_header: bool,
    },
    /// Steps 5–7, and the session policy after step 8.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Step 8.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Minting.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// Forward mode: Hydra's jwt-bearer grant failed.
    #[error("{error}")]
    Forward {
        /// What went wrong.
        error: ForwardError,
        /// Whether the client used the `Authorization` header.
        used_authorization_header: bool,
    },
    /// Forward mode: Hydra's token cannot be returned as asked.
    #[error(transparent)]
    Reshape(#[from] ReshapeError),
    /// The session bridge: no Kratos session cookie came with the request.
    #[error("no Kratos session cookie came with the request")]
    NoSessionCookie,
    /// The session bridge's one-time code could not be issued or redeemed.
    #[error(transparent)]
    Code(#[from] crate::bridge::CodeError),
    /// Iris's issuer and token endpoint come from Hydra's discovery, which is unavailable.
    #[error(transparent)]
    Hydra(#[from] HydraError),
}

/// The RFC 8693 §2.2.1 success body.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    /// The issued token (an ID token too, when one was requested).
    pub access_token: String,
    /// What `access_token` is.
    pub issued_token_type: &'static str,
    /// `Bearer`, or `N_A` for an ID token.
    pub token_type: &'static str,
    /// Seconds until `access_token` expires.
    pub expires_in: u64,
    /// The granted scope, whenever one was granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The ID token, when `openid` was granted and an access token was issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

/// What the audit line of an exchange records; never token material.
#[derive(Debug, Default, Clone)]
pub struct AuditRecord {
    /// The authenticated client, once known.
    pub client_id: Option<String>,
    /// The Kratos identity, once resolved.
    pub subject: Option<String>,
    /// Granted audiences.
    pub audience: Vec<String>,
    /// Granted scope.
    pub scope: Vec<String>,
}

/// The raw material of an exchange as the HTTP layer hands it over.
pub struct ExchangeInput<'a> {
    /// The decoded form.
    pub form: &'a Form,
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a str>,
}

/// Where an exchange is issued: the issuer Iris signs as and the token endpoint clients know
/// (Hydra's, from discovery, when Iris fronts Hydra).
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// `iss` of the tokens Iris signs.
    pub issuer: String,
    /// The token endpoint URL: the `aud` of client assertions and of Iris's jwt-bearer assertion.
    pub token_endpoint: String,
}

/// Who issues the access token.
pub enum Issuer {
    /// Iris signs it.
    Synthesize,
    /// Hydra issues it through the jwt-bearer grant.
    Forward(Arc<Hydra>),
}

/// Runs an exchange from a parsed form to a token response.
pub struct Exchanger {
    /// Client registry and authentication.
    pub authenticator: Arc<Authenticator>,
    /// Session resolution.
    pub sessions: Arc<dyn SessionResolver>,
    /// Token minting.
    pub minter: Arc<Minter>,
    /// Signing keys (for the jwt-bearer assertion in forward mode).
    pub keys: Arc<KeySet>,
    /// Who issues the access token.
    pub issuer: Issuer,
    /// Policy.
    pub policy: Policy,
    /// Accepted subject token types.
    pub subject_token_types: SubjectTokenTypes,
}

impl Exchanger {
    /// DESIGN.md §3 steps 2–8, then issuing. `audit` is filled in as facts become known.
    pub async fn exchange(
        &self,
        input: ExchangeInput<'_>,
        endpoints: &Endpoints,
        audit: &mut AuditRecord,
    ) -> Result<TokenResponse, ExchangeError> {
        let request = parse_request(input.form, &self.subject_token_types)?;

        let form = input.form;
        let presented = PresentedCredentials {
            authorization: input.authorization,
            client_id: form.single("client_id")?,
            client_secret: form.single("client_secret")?,
            client_assertion_type: form.single("client_assertion_type")?,
            client_assertion: form.single("client_assertion")?,
        };
        let used_authorization_header = presented.authorization.is_some();
        let client_error = |error| ExchangeError::Client {
            error,
            used_authorization_header,
        };
        let credentials = clients::credentials(&presented).map_err(client_error)?;
        let client = self
            .authenticator
            .authenticate(&credentials, &endpoints.token_endpoint)
            .await
            .map_err(client_error)?;
        audit.client_id = Some(client.id.clone());
        let (grant, session) = self.admit(&client, &request, audit).await?;

        let issuance = Issuance {
            issuer: &endpoints.issuer,
            client: &client,
            grant: &grant,
            session: &session,
            now: SystemTime::now(),
        };
        let requested = request.requested_token_type;
        match &self.issuer {
            Issuer::Synthesize => Ok(self.minter.mint(&issuance, requested)?),
            // An ID token is Iris's to sign in either mode; Hydra is not asked for one.
            Issuer::Forward(_) if requested == RequestedTokenType::IdToken => {
                let scope = Some(grant.scope.join(" ")).filter(|s| !s.is_empty());
                Ok(self.minter.id_token_response(&issuance, scope)?)
            }
            Issuer::Forward(hydra) => {
                let trust_issuer = hydra.trust_issuer(&endpoints.issuer);
                hydra.ensure_trust(trust_issuer, &self.keys).await?;
                let credentials = forwarded_credentials(&presented);
                let forwarded = hydra
                    .jwt_bearer(
                        JwtBearerRequest {
                            trust_issuer,
                            subject: &session.identity_id,
                            token_endpoint: &endpoints.token_endpoint,
                            scope: &grant.scope,
                            audience: &grant.audience,
                            credentials: &credentials,
                        },
                        &self.keys,
                    )
                    .await
                    .map_err(|error| ExchangeError::Forward {
                        error,
                        used_authorization_header,
                    })?;
                Ok(self
                    .minter
                    .around_forwarded(&issuance, forwarded, requested)?)
            }
        }
    }
}

impl Exchanger {
    /// Steps 5–8 for a known client: what it is granted, and the session, admitted by policy.
    pub async fn admit(
        &self,
        client: &Client,
        request: &ExchangeRequest,
        audit: &mut AuditRecord,
    ) -> Result<(Grant, Session), ExchangeError> {
        let grant = policy::authorize(client, request, &self.policy)?;
        audit.audience = grant.audience.clone();
        audit.scope = grant.scope.clone();
        let session = self.sessions.resolve(&request.subject_token).await?;
        audit.subject = Some(session.identity_id.clone());
        policy::admit_session(&session, &self.policy, SystemTime::now())?;
        Ok((grant, session))
    }
}

/// The caller's client credentials, exactly as sent, for Hydra.
fn forwarded_credentials(presented: &PresentedCredentials<'_>) -> ForwardedCredentials {
    let mut credentials = ForwardedCredentials {
        authorization: presented.authorization.map(Secret::new),
        form: Vec::new(),
    };
    let body = [
        ("client_id", presented.client_id),
        ("client_secret", presented.client_secret),
        ("client_assertion_type", presented.client_assertion_type),
        ("client_assertion", presented.client_assertion),
    ];
    for (name, value) in body {
        if let Some(value) = value {
            credentials.form.push((name, Secret::new(value)));
        }
    }
    credentials
}

/// Whether a form asks for the token-exchange grant; a repeated `grant_type` is an error (P-1).
pub fn grant_type(form: &Form) -> Result<Option<&str>, FormError> {
    form.single("grant_type")
}

/// True when `grant_type` names the token-exchange grant.
pub fn is_token_exchange(grant_type: &str) -> bool {
    grant_type == TOKEN_EXCHANGE_GRANT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types() -> SubjectTokenTypes {
        SubjectTokenTypes {
            session_token: vec!["urn:ietf:params:oauth:token-type:session".into()],
            session_cookie: vec!["urn:x-iris:token-type:kratos-session-cookie".into()],
        }
    }

    fn request(body: &str) -> Result<ExchangeRequest, ExchangeError> {
        parse_request(&Form::parse(body.as_bytes()).unwrap(), &types())
    }

    const BASE: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=ory_st_x&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asession";

    #[test]
    fn form_decoding_follows_application_x_www_form_urlencoded() {
        let form = Form::parse(b"a=1+2&b=%26%3D&c&=x&d=%zz").unwrap();
        assert_eq!(form.single("a").unwrap(), Some("1 2"));
        assert_eq!(form.single("b").unwrap(), Some("&="));
        assert_eq!(
            form.single("c").unwrap(),
            None,
            "a bare name is an empty value"
        );
        assert_eq!(form.single("d").unwrap(), Some("%zz"));
        assert!(matches!(Form::parse(b"a=%FF"), Err(FormError::NotUtf8)));
        assert!(matches!(Form::parse(b"a=\xff"), Err(FormError::NotUtf8)));
    }

    #[test]
    fn repeated_single_parameters_are_refused_but_targets_repeat() {
        // OA-4
        let form = Form::parse(b"scope=a&scope=b&audience=x&audience=y&foo=1&foo=2").unwrap();
        assert!(matches!(form.check_single_valued(), Err(FormError::Repeated(p)) if p == "scope"));
        assert_eq!(form.all("audience"), ["x", "y"]);
        let form = Form::parse(b"audience=x&audience=y&foo=1&foo=2").unwrap();
        assert!(
            form.check_single_valued().is_ok(),
            "unknown parameters are ignored even when repeated"
        );
    }

    #[test]
    fn a_minimal_request_parses() {
        let r = request(BASE).unwrap();
        assert_eq!(r.subject_token.kind, SubjectTokenKind::SessionToken);
        assert_eq!(r.requested_token_type, RequestedTokenType::AccessToken);
        assert!(r.scope.is_empty() && r.targets.is_empty());
    }

    #[test]
    fn step_three_rules() {
        // TX-2, TX-3, TX-5, TX-6, TX-7
        let cases = [
            (
                "grant_type=x&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asession",
                "subject_token",
            ),
            ("subject_token=a", "subject_token_type"),
            (
                &format!("{BASE}&actor_token=x") as &str,
                "actor_token and actor_token_type",
            ),
            (
                &format!("{BASE}&actor_token_type=x"),
                "actor_token and actor_token_type",
            ),
            (
                &format!("{BASE}&requested_token_type=urn:x"),
                "requested_token_type",
            ),
            (
                &format!("{BASE}&actor_token=a&actor_token_type=b"),
                "actor tokens are not supported",
            ),
        ];
        for (body, expected) in cases {
            let err = request(body).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
        }
        let err = request("subject_token=a&subject_token_type=urn:jwt").unwrap_err();
        assert!(matches!(
            err,
            ExchangeError::Request(RequestError::SubjectTokenType(_))
        ));
        for resource in ["relative/path", "https://api.example.com/#frag", "/abs"] {
            let body = format!("{BASE}&resource={}", resource.replace('#', "%23"));
            assert!(
                matches!(
                    request(&body),
                    Err(ExchangeError::Request(RequestError::Resource(_)))
                ),
                "{resource}"
            );
        }
        assert!(request(&format!("{BASE}&resource=https://api.example.com/x?q=1")).is_ok());
    }

    #[test]
    fn empty_values_count_as_absent() {
        let r = request(&format!(
            "{BASE}&scope=&audience=&requested_token_type=&actor_token="
        ))
        .unwrap();
        assert!(r.scope.is_empty() && r.targets.is_empty());
    }

    #[test]
    fn cookie_types_are_recognised() {
        let body = "subject_token=v&subject_token_type=urn:x-iris:token-type:kratos-session-cookie";
        assert_eq!(
            request(body).unwrap().subject_token.kind,
            SubjectTokenKind::SessionCookie
        );
    }
}
