//! Minting: the RFC 9068 access token and the OIDC Core ID token (DESIGN.md §3), and the
//! RFC 8693 response around them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, Header};
use serde::Serialize;
use sha2::Digest;

use crate::clients::Client;
use crate::exchange::TokenResponse;
use crate::keys::KeySet;
use crate::kratos::Session;
use crate::policy::Grant;

/// RFC 8693 §3 token type URIs.
pub mod token_type {
    /// An access token.
    pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
    /// A JWT.
    pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
    /// An OIDC ID token.
    pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
}

/// What the client asked for with `requested_token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedTokenType {
    /// The default: an RFC 9068 access token.
    AccessToken,
    /// The same access token, labelled as a JWT.
    Jwt,
    /// The ID token, in `access_token`.
    IdToken,
}

impl RequestedTokenType {
    /// Reads a `requested_token_type` value.
    pub fn from_uri(uri: &str) -> Option<Self> {
        match uri {
            token_type::ACCESS_TOKEN => Some(Self::AccessToken),
            token_type::JWT => Some(Self::Jwt),
            token_type::ID_TOKEN => Some(Self::IdToken),
            _ => None,
        }
    }
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The signer failed; a key problem, never the client's fault.
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// RFC 9068 §2.2 claims.
#[derive(Debug, Serialize)]
pub struct AccessTokenClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a [String],
    client_id: &'a str,
    iat: u64,
    exp: u64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    auth_time: u64,
    acr: &'a str,
    amr: &'a [String],
    sid: &'a str,
}

/// OIDC Core §2 claims, without `nonce` (there is no authentication request to echo).
#[derive(Debug, Serialize)]
pub struct IdTokenClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    azp: &'a str,
    iat: u64,
    exp: u64,
    auth_time: u64,
    sid: &'a str,
    acr: &'a str,
    amr: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    at_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_verified: Option<bool>,
}

/// Signs tokens with the first configured key.
pub struct Minter {
    issuer: String,
    keys: Arc<KeySet>,
    access_token_ttl: std::time::Duration,
    id_token_ttl: std::time::Duration,
    /// Headers are the same for every token of a kind: built once.
    access_header: Header,
    id_header: Header,
}

impl Minter {
    /// A minter for `issuer` with the configured lifetimes.
    pub fn new(
        issuer: String,
        keys: Arc<KeySet>,
        access_token_ttl: std::time::Duration,
        id_token_ttl: std::time::Duration,
    ) -> Self {
        let signer = keys.signer();
        let header = |typ: &str| Header {
            typ: Some(typ.to_owned()),
            kid: Some(signer.kid.clone()),
            ..Header::new(signer.alg)
        };
        Minter {
            issuer,
            access_header: header("at+jwt"),
            id_header: header("JWT"),
            keys,
            access_token_ttl,
            id_token_ttl,
        }
    }

    /// The issuer Iris signs as.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Mints what was asked for; no `exp` is after the session's `expires_at`.
    pub fn mint(
        &self,
        client: &Client,
        grant: &Grant,
        session: &Session,
        requested: RequestedTokenType,
        now: SystemTime,
    ) -> Result<TokenResponse, MintError> {
        let iat = seconds(now);
        let session_end = seconds(session.expires_at);
        let access_exp = (iat + self.access_token_ttl.as_secs()).min(session_end);
        let id_exp = (iat + self.id_token_ttl.as_secs()).min(session_end);
        let scope = (!grant.scope.is_empty()).then(|| grant.scope.join(" "));
        let signer = self.keys.signer();

        if requested == RequestedTokenType::IdToken {
            let id_token = self.id_token(client, grant, session, iat, id_exp, None)?;
            return Ok(TokenResponse {
                access_token: id_token,
                issued_token_type: token_type::ID_TOKEN,
                token_type: "N_A",
                expires_in: id_exp.saturating_sub(iat),
                scope,
                id_token: None,
            });
        }

        let claims = AccessTokenClaims {
            iss: &self.issuer,
            sub: &session.identity_id,
            aud: &grant.audience,
            client_id: &client.id,
            iat,
            exp: access_exp,
            jti: new_jti(),
            scope: scope.clone(),
            auth_time: seconds(session.authenticated_at),
            acr: &session.aal,
            amr: &session.amr,
            sid: &session.id,
        };
        let access_token = jsonwebtoken::encode(&self.access_header, &claims, &signer.encoding)?;
        let id_token = if grant.has_openid() {
            let at_hash = at_hash(&access_token, signer.alg);
            Some(self.id_token(client, grant, session, iat, id_exp, Some(at_hash))?)
        } else {
            None
        };
        Ok(TokenResponse {
            access_token,
            issued_token_type: if requested == RequestedTokenType::Jwt {
                token_type::JWT
            } else {
                token_type::ACCESS_TOKEN
            },
            token_type: "Bearer",
            expires_in: access_exp.saturating_sub(iat),
            scope,
            id_token,
        })
    }

    fn id_token(
        &self,
        client: &Client,
        grant: &Grant,
        session: &Session,
        iat: u64,
        exp: u64,
        at_hash: Option<String>,
    ) -> Result<String, MintError> {
        let email = grant
            .has_email()
            .then_some(session.email.as_deref())
            .flatten();
        let claims = IdTokenClaims {
            iss: &self.issuer,
            sub: &session.identity_id,
            aud: &client.id,
            azp: &client.id,
            iat,
            exp,
            auth_time: seconds(session.authenticated_at),
            sid: &session.id,
            acr: &session.aal,
            amr: &session.amr,
            at_hash,
            email,
            email_verified: email.map(|_| session.email_verified),
        };
        Ok(jsonwebtoken::encode(
            &self.id_header,
            &claims,
            &self.keys.signer().encoding,
        )?)
    }
}

fn seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// 128 random bits, base64url: unique per token.
fn new_jti() -> String {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    B64.encode(bytes)
}

/// OIDC Core §3.1.3.6: the left half of the hash of the access token, with the hash of the ID
/// token's `alg` (SHA-512 for Ed25519, as OpenID's EdDSA registration specifies).
pub fn at_hash(access_token: &str, alg: Algorithm) -> String {
    match alg {
        Algorithm::EdDSA => {
            let digest = sha2::Sha512::digest(access_token.as_bytes());
            B64.encode(&digest[..32])
        }
        _ => {
            let digest = sha2::Sha256::digest(access_token.as_bytes());
            B64.encode(&digest[..16])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_hash_is_the_left_half_of_sha256() {
        // OIDC Core §A.3 example: access token "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y".
        assert_eq!(
            at_hash(
                "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y",
                Algorithm::RS256
            ),
            "77QmUPtjPfzWtF2AnpK9RQ"
        );
    }

    #[test]
    fn jtis_are_unique() {
        assert_ne!(new_jti(), new_jti());
    }
}
