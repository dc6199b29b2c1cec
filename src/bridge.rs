//! The session bridge for first-party SPAs (DESIGN.md §6): a page on an allowed origin trades the
//! browser's Kratos session cookie for tokens, or for a one-time code it redeems with PKCE (the
//! Ory cookbook's Hera pattern). CSRF defence comes first: `X-Requested-With: XMLHttpRequest`
//! and an `Origin` in `bridge.allowed_origins`, exactly.

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::BridgeSettings;
use crate::exchange::{ExchangeRequest, SubjectTokenKind};
use crate::kratos::{Session, SubjectToken};
use crate::policy::Grant;
use crate::secret::Secret;
use crate::store::OneTimeStore;
use crate::tokens::RequestedTokenType;

/// Codes Iris issues start with this, so the token endpoint tells them from Hydra's.
pub const CODE_PREFIX: &str = "iris_bc_";

/// Why a bridge request is refused before anything else happens (403 `access_denied`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// No `X-Requested-With: XMLHttpRequest`: a form or a navigation from another site.
    #[error("the request must carry X-Requested-With: XMLHttpRequest")]
    NotXhr,
    /// No `Origin` header.
    #[error("the request has no Origin")]
    NoOrigin,
    /// `Origin: null` (sandboxed frames, file pages, some redirects) is never trusted.
    #[error("Origin null is not allowed")]
    NullOrigin,
    /// An origin outside `bridge.allowed_origins`.
    #[error("this origin may not use the session bridge")]
    OriginNotAllowed,
}

/// Why a code cannot be issued or redeemed.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// The page sent no usable S256 `code_challenge` (RFC 7636 §4.2).
    #[error("code_challenge (S256) is required: BASE64URL(SHA256(code_verifier)), 43 characters")]
    Challenge,
    /// `code_verifier` is missing or malformed (RFC 7636 §4.1).
    #[error("code_verifier is required: 43 to 128 characters of [A-Za-z0-9-._~]")]
    Verifier,
    /// Unknown, used, expired, for another client, or the verifier does not match.
    #[error("the code is invalid, expired, already used, or not for this client and verifier")]
    Invalid,
    /// The store could not answer.
    #[error("the code store failed: {0}")]
    Store(String),
}

/// What a code stands for until it is redeemed.
#[derive(Serialize, Deserialize)]
struct Pending {
    client_id: String,
    challenge: String,
    grant: Grant,
    session: Session,
}

/// The configured bridge.
pub struct Bridge {
    settings: BridgeSettings,
    codes: Arc<dyn OneTimeStore>,
}

impl Bridge {
    /// The bridge of `settings`, keeping codes in `codes`.
    pub fn new(settings: BridgeSettings, codes: Arc<dyn OneTimeStore>) -> Self {
        Bridge { settings, codes }
    }

    /// Its settings.
    pub fn settings(&self) -> &BridgeSettings {
        &self.settings
    }

    /// The origin to name in CORS headers: the request's, when it is allowed.
    pub fn allowed_origin<'a>(&self, origin: Option<&'a str>) -> Option<&'a str> {
        origin.filter(|o| {
            self.settings
                .allowed_origins
                .iter()
                .any(|allowed| allowed == o)
        })
    }

    /// The CSRF defence, before anything else (Kratos is never called for a refused request).
    pub fn check(&self, origin: Option<&str>, requested_with: Option<&str>) -> Result<(), Refusal> {
        if !requested_with.is_some_and(|v| v.eq_ignore_ascii_case("XMLHttpRequest")) {
            return Err(Refusal::NotXhr);
        }
        match origin {
            None => Err(Refusal::NoOrigin),
            Some("null") => Err(Refusal::NullOrigin),
            Some(_) if self.allowed_origin(origin).is_none() => Err(Refusal::OriginNotAllowed),
            Some(_) => Ok(()),
        }
    }

    /// The exchange the bridge makes for a session cookie value.
    pub fn request(&self, cookie_value: &str) -> ExchangeRequest {
        ExchangeRequest {
            subject_token: SubjectToken {
                kind: SubjectTokenKind::SessionCookie,
                value: Secret::new(cookie_value),
            },
            requested_token_type: RequestedTokenType::AccessToken,
            scope: self.settings.scope.clone(),
            targets: self.settings.audience.clone(),
        }
    }

    /// Issues a one-time code for an admitted session, bound to the bridge client and to the
    /// page's S256 `code_challenge`.
    pub async fn issue_code(
        &self,
        challenge: Option<&str>,
        method: Option<&str>,
        grant: Grant,
        session: Session,
    ) -> Result<String, CodeError> {
        let challenge = challenge.ok_or(CodeError::Challenge)?;
        // RFC 7636 §4.2: S256 of a verifier is 43 base64url characters; `plain` is refused.
        if method != Some("S256") || challenge.len() != 43 || B64.decode(challenge).is_err() {
            return Err(CodeError::Challenge);
        }
        let mut random = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
        let code = format!("{CODE_PREFIX}{}", B64.encode(random));
        let pending = Pending {
            client_id: self.settings.client_id.clone(),
            challenge: challenge.to_owned(),
            grant,
            session,
        };
        let value = serde_json::to_vec(&pending).map_err(|e| CodeError::Store(e.to_string()))?;
        let stored = self
            .codes
            .insert_new(
                &store_key(&code),
                value,
                SystemTime::now() + self.settings.code_ttl,
            )
            .await
            .map_err(CodeError::Store)?;
        if !stored {
            return Err(CodeError::Store("code collision".into()));
        }
        Ok(code)
    }

    /// Redeems a code once. Any attempt consumes it, so a wrong verifier cannot be retried.
    pub async fn redeem(
        &self,
        code: &str,
        verifier: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<(Grant, Session), CodeError> {
        let verifier = verifier
            .filter(|v| is_verifier(v))
            .ok_or(CodeError::Verifier)?;
        let value = self
            .codes
            .take(&store_key(code))
            .await
            .map_err(CodeError::Store)?
            .ok_or(CodeError::Invalid)?;
        let pending: Pending = serde_json::from_slice(&value).map_err(|_| CodeError::Invalid)?;
        if client_id != Some(pending.client_id.as_str()) {
            return Err(CodeError::Invalid);
        }
        let computed = B64.encode(Sha256::digest(verifier.as_bytes()));
        if !bool::from(computed.as_bytes().ct_eq(pending.challenge.as_bytes())) {
            return Err(CodeError::Invalid);
        }
        Ok((pending.grant, pending.session))
    }
}

/// Codes are stored by digest: a store dump holds nothing redeemable.
fn store_key(code: &str) -> String {
    format!(
        "bridge-code:{}",
        B64.encode(Sha256::digest(code.as_bytes()))
    )
}

/// RFC 7636 §4.1: 43 to 128 unreserved characters.
fn is_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::BridgeResponse;
    use crate::store::MemoryStore;

    fn bridge() -> Bridge {
        Bridge::new(
            BridgeSettings {
                path: "/session/bridge".into(),
                client_id: "spa".into(),
                allowed_origins: vec!["https://app.example.com".into()],
                audience: vec![],
                scope: vec![],
                response: BridgeResponse::Code,
                code_ttl: Duration::from_secs(60),
            },
            Arc::new(MemoryStore::default()),
        )
    }

    fn session() -> Session {
        Session {
            id: "s".into(),
            identity_id: "i".into(),
            active: true,
            identity_state: "active".into(),
            expires_at: SystemTime::now() + Duration::from_secs(600),
            authenticated_at: SystemTime::now(),
            aal: "aal1".into(),
            amr: vec!["password".into()],
            email: None,
            email_verified: false,
            cacheable_for: None,
        }
    }

    fn grant() -> Grant {
        Grant {
            scope: vec![],
            audience: vec!["https://api.example.com".into()],
        }
    }

    #[test]
    fn csrf_needs_the_header_and_an_exactly_allowed_origin() {
        let b = bridge();
        let xhr = Some("XMLHttpRequest");
        assert_eq!(b.check(Some("https://app.example.com"), xhr), Ok(()));
        assert_eq!(
            b.check(Some("https://app.example.com"), None),
            Err(Refusal::NotXhr)
        );
        assert_eq!(b.check(None, xhr), Err(Refusal::NoOrigin));
        assert_eq!(b.check(Some("null"), xhr), Err(Refusal::NullOrigin));
        for other in [
            "https://app.example.com:8443",
            "http://app.example.com",
            "https://evil.example.com",
            "https://app.example.com.evil.com",
        ] {
            assert_eq!(
                b.check(Some(other), xhr),
                Err(Refusal::OriginNotAllowed),
                "{other}"
            );
        }
    }

    #[tokio::test]
    async fn a_code_is_redeemed_once_with_its_verifier_by_its_client() {
        let b = bridge();
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"; // RFC 7636 App. B
        let code = b
            .issue_code(Some(challenge), Some("S256"), grant(), session())
            .await
            .unwrap();
        assert!(
            code.starts_with(CODE_PREFIX) && code.len() >= CODE_PREFIX.len() + 43,
            "≥ 256 random bits"
        );
        let (g, s) = b.redeem(&code, Some(verifier), Some("spa")).await.unwrap();
        assert_eq!((g, s.id), (grant(), "s".to_owned()));
        assert!(
            matches!(
                b.redeem(&code, Some(verifier), Some("spa")).await,
                Err(CodeError::Invalid)
            ),
            "single use"
        );
        let code = b
            .issue_code(Some(challenge), Some("S256"), grant(), session())
            .await
            .unwrap();
        assert!(matches!(
            b.redeem(&code, Some(verifier), Some("other")).await,
            Err(CodeError::Invalid)
        ));
        assert!(
            matches!(
                b.redeem(&code, Some(verifier), Some("spa")).await,
                Err(CodeError::Invalid)
            ),
            "a failed attempt consumes the code"
        );
        let code = b
            .issue_code(Some(challenge), Some("S256"), grant(), session())
            .await
            .unwrap();
        let wrong = "A".repeat(43);
        assert!(matches!(
            b.redeem(&code, Some(&wrong), Some("spa")).await,
            Err(CodeError::Invalid)
        ));
        assert!(matches!(
            b.redeem(&code, None, Some("spa")).await,
            Err(CodeError::Verifier)
        ));
    }

    #[tokio::test]
    async fn only_s256_challenges_are_accepted() {
        let b = bridge();
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        for (c, m) in [
            (None, Some("S256")),
            (Some(challenge), Some("plain")),
            (Some(challenge), None),
            (Some("short"), Some("S256")),
        ] {
            assert!(matches!(
                b.issue_code(c, m, grant(), session()).await,
                Err(CodeError::Challenge)
            ));
        }
    }
}
