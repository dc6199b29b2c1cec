//! The session bridge's HTTP side (DESIGN.md §6): CSRF and CORS at the door, then the exchange
//! pipeline for the bridge client, and the redemption of its one-time codes.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD,
    CONTENT_TYPE, HeaderValue, ORIGIN,
};
use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::responses::{empty, method_not_allowed, oauth_error_response, token_response};
use super::{X_REQUESTED_WITH, finish, header, is_form, read_form};
use crate::bridge::{Bridge, Refusal};
use crate::clients::{AuthError, Client};
use crate::config::BridgeResponse;
use crate::exchange::{self, AuditRecord, Endpoints, ExchangeError, Form};
use crate::kratos::Session;
use crate::oauth::{ErrorCode, OAuthError};
use crate::policy::Grant;
use crate::server::{App, ResponseBody};
use crate::tokens::{Issuance, RequestedTokenType};

/// `grant_type=authorization_code` with a bridge code: PKCE proves the page that asked for it.
pub(super) async fn redeem_bridge_code(
    app: &App,
    form: &Form,
    audit: &mut AuditRecord,
) -> Result<exchange::TokenResponse, ExchangeError> {
    let bridge = app.bridge.as_ref().ok_or(ExchangeError::MissingGrant)?;
    for name in ["code", "code_verifier", "client_id", "redirect_uri"] {
        form.single(name)?;
    }
    let code = form.single("code")?.unwrap_or_default();
    let client_id = form.single("client_id")?;
    let (grant, session) = bridge
        .redeem(code, form.single("code_verifier")?, client_id)
        .await?;
    // Only a redeemed code names a client: metric labels never come from raw input.
    audit.client_id = client_id.map(String::from);
    audit.subject = Some(session.identity_id.clone());
    audit.scope = grant.scope.clone();
    audit.audience = grant.audience.clone();
    let client = bridge_client(app, bridge).await?;
    let endpoints = app.endpoints().await?;
    bridge_tokens(app, &endpoints, &client, &grant, &session)
}

/// The bridge client: validated at start to be a static, first-party client.
async fn bridge_client(app: &App, bridge: &Bridge) -> Result<Arc<Client>, ExchangeError> {
    app.exchanger
        .authenticator
        .client(&bridge.settings().client_id)
        .await
        .map_err(|error| ExchangeError::Client {
            error,
            used_authorization_header: false,
        })?
        .ok_or(ExchangeError::Client {
            error: AuthError::Failed,
            used_authorization_header: false,
        })
}

/// Tokens for the bridge client. Iris signs them in both modes: the browser holds no client
/// credential Hydra could check for a jwt-bearer grant.
fn bridge_tokens(
    app: &App,
    endpoints: &Endpoints,
    client: &Client,
    grant: &Grant,
    session: &Session,
) -> Result<exchange::TokenResponse, ExchangeError> {
    let issuance = Issuance {
        issuer: &endpoints.issuer,
        client,
        grant,
        session,
        now: SystemTime::now(),
    };
    Ok(app
        .exchanger
        .minter
        .mint(&issuance, RequestedTokenType::AccessToken)?)
}

/// `POST {bridge.path}` and its CORS preflight (DESIGN.md §6).
pub(super) async fn session_bridge(
    app: &App,
    bridge: &Bridge,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let origin = header(&parts, ORIGIN);
    let allowed = bridge.allowed_origin(origin);
    if parts.method == Method::OPTIONS {
        let asks_for_post = header(&parts, ACCESS_CONTROL_REQUEST_METHOD) == Some("POST");
        let mut response = match allowed {
            Some(_) if asks_for_post => {
                let mut response = empty(StatusCode::NO_CONTENT);
                let headers = response.headers_mut();
                headers.insert(
                    ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("POST"),
                );
                headers.insert(
                    ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static("X-Requested-With, Content-Type"),
                );
                headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
                response
            }
            // A preflight from anywhere else gets no CORS headers: the browser stops there.
            _ => return bridge_refusal(&Refusal::OriginNotAllowed, None),
        };
        cors(&mut response, allowed);
        return response;
    }
    if parts.method != Method::POST {
        return method_not_allowed();
    }
    if let Err(refusal) = bridge.check(origin, header(&parts, X_REQUESTED_WITH)) {
        tracing::info!(target: "iris::audit", client_id = %bridge.settings().client_id, outcome = "refused", reason = %refusal, "session bridge");
        return bridge_refusal(&refusal, allowed);
    }
    let mut audit = AuditRecord {
        client_id: Some(bridge.settings().client_id.clone()),
        ..Default::default()
    };
    let result = bridge_exchange(app, bridge, &parts, body, &mut audit).await;
    let mut response = match result {
        Ok(BridgeAnswer::Tokens(tokens)) => finish(app, Ok(tokens), &audit, started),
        Ok(BridgeAnswer::Code(code)) => {
            let body = serde_json::json!({"code": code, "expires_in": bridge.settings().code_ttl.as_secs()});
            token_response(StatusCode::OK, Bytes::from(body.to_string()), None)
        }
        Err(error) => finish(app, Err(error), &audit, started),
    };
    cors(&mut response, allowed);
    response
}

/// What the bridge answers with.
enum BridgeAnswer {
    Tokens(exchange::TokenResponse),
    Code(String),
}

async fn bridge_exchange(
    app: &App,
    bridge: &Bridge,
    parts: &http::request::Parts,
    body: Incoming,
    audit: &mut AuditRecord,
) -> Result<BridgeAnswer, ExchangeError> {
    let cookie =
        session_cookie(parts, &app.session_cookie).ok_or(ExchangeError::NoSessionCookie)?;
    let client = bridge_client(app, bridge).await?;
    // The code flow needs the page's PKCE challenge from the body; read it before Kratos is asked.
    let challenge = match bridge.settings().response {
        BridgeResponse::Token => None,
        BridgeResponse::Code => {
            let is_form_post = is_form(parts.headers.get(CONTENT_TYPE));
            Some(read_form(app, parts, body, is_form_post).await?.1)
        }
    };
    let request = bridge.request(cookie);
    let (grant, session) = app.exchanger.admit(&client, &request, audit).await?;
    match challenge {
        None => {
            let endpoints = app.endpoints().await?;
            Ok(BridgeAnswer::Tokens(bridge_tokens(
                app, &endpoints, &client, &grant, &session,
            )?))
        }
        Some(form) => {
            let code = bridge
                .issue_code(
                    form.single("code_challenge")?,
                    form.single("code_challenge_method")?,
                    grant,
                    session,
                )
                .await?;
            Ok(BridgeAnswer::Code(code))
        }
    }
}

/// The value of the Kratos session cookie in the browser's `Cookie` header(s).
fn session_cookie<'a>(parts: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// 403 `access_denied` (DESIGN.md §8); CORS headers only for an allowed origin, so that its
/// page can read why.
fn bridge_refusal(refusal: &Refusal, allowed: Option<&str>) -> Response<ResponseBody> {
    let mut response = oauth_error_response(OAuthError::new(
        403,
        ErrorCode::AccessDenied,
        refusal.to_string(),
    ));
    cors(&mut response, allowed);
    response
}

/// `Access-Control-Allow-Origin` (the request's origin, never `*`) with credentials, when the
/// origin is allowed; `Vary: Origin` always, since the answer depends on it.
pub(super) fn cors(response: &mut Response<ResponseBody>, allowed: Option<&str>) {
    let headers = response.headers_mut();
    headers.append(http::header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = allowed.and_then(|o| HeaderValue::from_str(o).ok()) {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}
