//! The one place where errors become RFC 6749 §5.2 responses: status, `error`,
//! `error_description`, and the headers that go with them.

use serde::Serialize;

use crate::bridge::CodeError;
use crate::clients::AuthError;
use crate::exchange::{ExchangeError, RequestError};
use crate::hydra::ForwardError;
use crate::kratos::SessionError;
use crate::policy::PolicyError;

/// RFC 6749 §5.2 and RFC 8693 §2.2.2 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed request, or an invalid subject token (TX-20).
    InvalidRequest,
    /// Client authentication failed.
    InvalidClient,
    /// The client may not use this grant.
    UnauthorizedClient,
    /// The grant is not supported (standalone only).
    UnsupportedGrantType,
    /// A scope the client may not request.
    InvalidScope,
    /// A target the client may not request (RFC 8693 §2.2.2).
    InvalidTarget,
    /// Hydra's token hook refused the token (relayed).
    AccessDenied,
    /// A bridge code that is unknown, used, expired or for another client or verifier.
    InvalidGrant,
    /// Kratos (or another upstream) is unavailable.
    TemporarilyUnavailable,
    /// Iris itself failed.
    ServerError,
}

/// An OAuth error response, ready to be written by the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status.
    pub status: u16,
    /// `error`.
    pub code: ErrorCode,
    /// `error_description`, restricted to RFC 6749's character set.
    pub description: String,
    /// Send `WWW-Authenticate: Basic realm="iris"` (a 401 to a client that used Basic).
    pub basic_challenge: bool,
    /// Send `Retry-After` with these seconds.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: ErrorCode,
    error_description: &'a str,
}

impl OAuthError {
    /// An error with a status and description.
    pub fn new(status: u16, code: ErrorCode, description: impl AsRef<str>) -> Self {
        OAuthError {
            status,
            code,
            description: sanitize(description.as_ref()),
            basic_challenge: false,
            retry_after: None,
        }
    }

    /// The JSON body `{"error", "error_description"}`.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&Body {
            error: self.code,
            error_description: &self.description,
        })
        .unwrap_or_default()
    }

    /// The `error` code as it appears on the wire.
    pub fn code_str(&self) -> &'static str {
        self.code.as_str()
    }
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
            ErrorCode::ServerError => "server_error",
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// RFC 6749 §5.2: `error_description` uses %x20-21 / %x23-5B / %x5D-7E only. Client input can be
/// echoed in a description, so it is bounded and filtered here.
fn sanitize(text: &str) -> String {
    const MAX: usize = 300;
    let mut out: String = text
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .take(MAX)
        .collect();
    if text.chars().count() > MAX {
        out.push_str("...");
    }
    out
}

fn unavailable(description: &str) -> OAuthError {
    let mut e = OAuthError::new(503, ErrorCode::TemporarilyUnavailable, description);
    e.retry_after = Some(1);
    e
}

impl From<ExchangeError> for OAuthError {
    fn from(error: ExchangeError) -> Self {
        use ErrorCode::*;
        let message = error.to_string();
        match error {
            ExchangeError::BodyTooLarge(_) => OAuthError::new(413, InvalidRequest, message),
            ExchangeError::NotAFormPost
            | ExchangeError::BodyUnreadable
            | ExchangeError::MissingGrant
            | ExchangeError::AmbiguousGrant
            | ExchangeError::Form(_) => OAuthError::new(400, InvalidRequest, message),
            ExchangeError::UnsupportedGrant(_) => {
                OAuthError::new(400, UnsupportedGrantType, message)
            }
            ExchangeError::Request(RequestError::Resource(_)) => {
                OAuthError::new(400, InvalidTarget, message)
            }
            ExchangeError::Request(_) => OAuthError::new(400, InvalidRequest, message),
            ExchangeError::Client {
                error,
                used_authorization_header,
            } => match error {
                AuthError::MultipleMethods | AuthError::ClientIdMismatch => {
                    OAuthError::new(400, InvalidRequest, message)
                }
                AuthError::Store(_) => unavailable("the replay store is unavailable; retry later"),
                AuthError::Directory(_) => {
                    unavailable("Hydra's client registry is unavailable; retry later")
                }
                _ => {
                    let mut e = OAuthError::new(401, InvalidClient, message);
                    e.basic_challenge = used_authorization_header;
                    e
                }
            },
            ExchangeError::Policy(policy) => match policy {
                PolicyError::GrantNotAllowed | PolicyError::NotFirstParty => {
                    OAuthError::new(400, UnauthorizedClient, message)
                }
                PolicyError::ScopeNotAllowed(_) => OAuthError::new(400, InvalidScope, message),
                PolicyError::TargetNotAllowed(_) | PolicyError::TargetRequired(_) => {
                    OAuthError::new(400, InvalidTarget, message)
                }
                // TX-20: an invalid or policy-rejected subject token is invalid_request.
                PolicyError::InactiveSession
                | PolicyError::ExpiredSession
                | PolicyError::AalTooLow { .. } => OAuthError::new(400, InvalidRequest, message),
            },
            ExchangeError::Session(session) => match session {
                SessionError::Upstream { retry_after, .. } => {
                    // The reason is logged, not shown: it describes Iris's network, not the client's request.
                    let mut e = OAuthError::new(
                        503,
                        TemporarilyUnavailable,
                        "Kratos is temporarily unavailable; retry later",
                    );
                    e.retry_after = Some(retry_after);
                    e
                }
                SessionError::Invalid
                | SessionError::Unsendable
                | SessionError::SecondFactorRequired => {
                    OAuthError::new(400, InvalidRequest, message)
                }
            },
            ExchangeError::NoSessionCookie => OAuthError::new(400, InvalidRequest, message),
            ExchangeError::Code(code) => match code {
                CodeError::Challenge | CodeError::Verifier => {
                    OAuthError::new(400, InvalidRequest, message)
                }
                CodeError::Invalid => OAuthError::new(400, InvalidGrant, message),
                CodeError::Store(_) => unavailable("the code store is unavailable; retry later"),
            },
            ExchangeError::Hydra(_) => unavailable("Hydra is temporarily unavailable; retry later"),
            ExchangeError::Reshape(crate::tokens::ReshapeError::NotAJwt) => {
                OAuthError::new(400, InvalidRequest, message)
            }
            ExchangeError::Forward {
                error,
                used_authorization_header,
            } => match error {
                ForwardError::Refused {
                    status,
                    error,
                    description,
                } => {
                    // Hydra's refusals of the client's part are relayed with their status.
                    let code = match error.as_str() {
                        "invalid_client" => InvalidClient,
                        "invalid_scope" => InvalidScope,
                        "unauthorized_client" => UnauthorizedClient,
                        "access_denied" => AccessDenied,
                        _ => InvalidRequest,
                    };
                    let status = match code {
                        InvalidClient => 401,
                        AccessDenied => 403,
                        _ if (400..500).contains(&status) => status,
                        _ => 400,
                    };
                    let mut e = OAuthError::new(status, code, description);
                    e.basic_challenge = code == InvalidClient && used_authorization_header;
                    e
                }
                ForwardError::AssertionRejected { .. } => OAuthError::new(
                    500,
                    ServerError,
                    "Hydra rejected Iris's assertion; the operator must check Iris's trust relationship",
                ),
                ForwardError::Hydra(_) => {
                    unavailable("Hydra is temporarily unavailable; retry later")
                }
            },
            ExchangeError::Mint(_)
            | ExchangeError::Reshape(crate::tokens::ReshapeError::Mint(_)) => {
                OAuthError::new(500, ServerError, "the token could not be signed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_stay_in_the_rfc6749_character_set() {
        let e = OAuthError::new(400, ErrorCode::InvalidRequest, "a \"quoted\" \\ é\n value");
        assert_eq!(e.description, "a 'quoted' / ?? value");
        let long = OAuthError::new(400, ErrorCode::InvalidRequest, "x".repeat(10_000));
        assert!(long.description.len() < 400);
    }

    #[test]
    fn the_body_has_exactly_error_and_description() {
        let body: serde_json::Value =
            serde_json::from_slice(&OAuthError::new(400, ErrorCode::InvalidTarget, "no").body())
                .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "invalid_target", "error_description": "no"})
        );
    }

    #[test]
    fn upstream_faults_are_never_credential_errors() {
        // P-6
        let e = OAuthError::from(ExchangeError::Session(SessionError::Upstream {
            reason: "x".into(),
            retry_after: 3,
        }));
        assert_eq!(
            (e.status, e.code, e.retry_after),
            (503, ErrorCode::TemporarilyUnavailable, Some(3))
        );
    }
}
