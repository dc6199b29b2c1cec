//! Thin HTTP adapters: they turn hyper requests into domain input and domain results into
//! responses, and write the request and audit log lines. No policy lives here.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::exchange::{self, AuditRecord, ExchangeError, ExchangeInput, Form, FormError};
use crate::hydra;
use crate::oauth::{ErrorCode, OAuthError};
use crate::proxy::ForwardBody;
use crate::server::{App, Front, ResponseBody, limits};

const JSON: &str = "application/json";

/// Routes a request on the public listener and logs one line for it.
pub async fn public(
    app: &App,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let method = request.method().clone();
    // The path only: a query string can carry credentials.
    let path = request.uri().path().to_owned();
    let read = method == Method::GET || method == Method::HEAD;
    let response = match path.as_str() {
        // Hydra's admin API is never reachable through the public port.
        _ if path == "/admin" || path.starts_with("/admin/") => not_found(),
        "/oauth2/token" => token(app, request, peer).await,
        "/.well-known/jwks.json" if read => jwks(app).await,
        "/.well-known/openid-configuration" | "/.well-known/oauth-authorization-server" if read => {
            discovery(app, &path).await
        }
        _ => match &app.front {
            Front::Standalone { .. } if path.starts_with("/.well-known/") => method_not_allowed(),
            Front::Standalone { .. } => not_found(),
            Front::Hydra { .. } => pass_through(app, request, peer).await,
        },
    };
    log_request(&method, &path, response.status(), started);
    response
}

/// Routes a request on the admin listener.
pub async fn admin(app: &App, request: Request<Incoming>) -> Response<ResponseBody> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = match (method.clone(), path.as_str()) {
        (Method::GET | Method::HEAD, "/health/alive") => {
            json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#))
        }
        (Method::GET | Method::HEAD, "/health/ready") => ready(app).await,
        _ => not_found(),
    };
    log_request(&method, &path, response.status(), started);
    response
}

/// `/health/ready`: 200 `{"status":"ok"}`, or 503 `{"errors":{...}}` naming what is down, as
/// Ory services answer it.
async fn ready(app: &App) -> Response<ResponseBody> {
    let down = app.unready().await;
    if down.is_empty() {
        return json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#));
    }
    let errors: serde_json::Map<String, serde_json::Value> = down
        .into_iter()
        .map(|(name, reason)| (name.to_owned(), serde_json::Value::String(reason)))
        .collect();
    let body = serde_json::json!({ "errors": errors });
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        Bytes::from(body.to_string()),
    )
}

fn log_request(method: &Method, path: &str, status: StatusCode, started: Instant) {
    tracing::info!(
        target: "iris::request",
        method = %method,
        path,
        status = status.as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
}

/// `GET /.well-known/jwks.json`: Iris's keys, plus Hydra's in front of Hydra.
async fn jwks(app: &App) -> Response<ResponseBody> {
    match &app.front {
        Front::Standalone { jwks, .. } => json_response(StatusCode::OK, jwks.clone()),
        Front::Hydra { hydra, .. } => match hydra.jwks().await {
            Ok(theirs) => {
                let merged = hydra::merged_jwks(&theirs, app.keys.jwks());
                json_response(StatusCode::OK, Bytes::from(merged.to_string()))
            }
            Err(error) => {
                tracing::warn!(%error, "cannot serve the JWKS");
                bad_gateway()
            }
        },
    }
}

/// The discovery documents: Iris's own standalone, Hydra's plus the token-exchange grant.
async fn discovery(app: &App, path: &str) -> Response<ResponseBody> {
    match &app.front {
        Front::Standalone { discovery, .. } => json_response(StatusCode::OK, discovery.clone()),
        Front::Hydra { hydra, .. } => match hydra.discovery(path).await {
            Ok(document) => {
                let document = hydra::with_token_exchange(&document);
                json_response(StatusCode::OK, Bytes::from(document.to_string()))
            }
            Err(error) => {
                tracing::warn!(%error, "cannot serve the discovery document");
                bad_gateway()
            }
        },
    }
}

/// `/oauth2/token`. Iris reads the form once: a token exchange is Iris's, every other grant
/// goes to Hydra byte for byte (standalone: `unsupported_grant_type`).
async fn token(app: &App, request: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
    let fronting_hydra = matches!(app.front, Front::Hydra { .. });
    let is_form_post =
        request.method() == Method::POST && is_form(request.headers().get(CONTENT_TYPE));
    if fronting_hydra && !is_form_post {
        // Only form POSTs can be token exchanges; everything else is Hydra's to answer.
        return pass_through(app, request, peer).await;
    }
    let started = Instant::now();
    let mut audit = AuditRecord::default();
    let (parts, body) = request.into_parts();
    let result = match read_form(app, &parts, body, is_form_post).await {
        Err(error) => Err(error),
        Ok((bytes, form)) => match route_grant(&form, fronting_hydra) {
            Err(error) => Err(error),
            Ok(false) => return forward_token_request(app, parts, bytes, peer).await,
            Ok(true) => run_exchange(app, &parts, &form, &mut audit).await,
        },
    };
    let outcome = result.as_ref().err().map(ToString::to_string);
    let response = match result {
        Ok(body) => token_response(
            StatusCode::OK,
            Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
            None,
        ),
        Err(error) => {
            if let ExchangeError::Forward {
                error: error @ crate::hydra::ForwardError::AssertionRejected { .. },
                ..
            } = &error
            {
                tracing::error!(%error, "Hydra rejected Iris's jwt-bearer assertion: check the trust relationship");
            }
            oauth_error_response(OAuthError::from(error))
        }
    };
    let error_code = (response.status() != StatusCode::OK).then(|| response_error_code(&response));
    tracing::info!(
        target: "iris::audit",
        client_id = audit.client_id.as_deref().unwrap_or("-"),
        subject = audit.subject.as_deref().unwrap_or("-"),
        audience = %audit.audience.join(" "),
        scope = %audit.scope.join(" "),
        outcome = if outcome.is_none() { "issued" } else { "refused" },
        error = error_code.flatten().unwrap_or("-"),
        reason = outcome.as_deref().unwrap_or("-"),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "token exchange"
    );
    response
}

/// DESIGN.md §3 step 1: a form POST within the size limit, read in time.
async fn read_form(
    app: &App,
    parts: &http::request::Parts,
    body: Incoming,
    is_form_post: bool,
) -> Result<(Bytes, Form), ExchangeError> {
    if !is_form_post {
        return Err(ExchangeError::NotAFormPost);
    }
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > app.max_body_bytes as u64) {
        return Err(ExchangeError::BodyTooLarge(app.max_body_bytes));
    }
    let reading = Limited::new(body, app.max_body_bytes).collect();
    let bytes = tokio::time::timeout(limits::BODY_READ_TIMEOUT, reading)
        .await
        .map_err(|_| ExchangeError::BodyUnreadable)?
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                ExchangeError::BodyTooLarge(app.max_body_bytes)
            } else {
                ExchangeError::BodyUnreadable
            }
        })?
        .to_bytes();
    let form = Form::parse(&bytes)?;
    Ok((bytes, form))
}

/// `Ok(true)` for a token exchange, `Ok(false)` for a grant Hydra answers (P-1: one parsed form
/// decides; an ambiguous `grant_type` is refused rather than guessed).
fn route_grant(form: &Form, fronting_hydra: bool) -> Result<bool, ExchangeError> {
    let grant_type = match exchange::grant_type(form) {
        Ok(grant_type) => grant_type,
        Err(FormError::Repeated(name)) => return Err(FormError::Repeated(name).into()),
        Err(other) => return Err(other.into()),
    };
    match grant_type {
        Some(grant) if exchange::is_token_exchange(grant) => Ok(true),
        Some(grant) if grant.split(' ').any(exchange::is_token_exchange) => {
            Err(ExchangeError::AmbiguousGrant)
        }
        _ if fronting_hydra => Ok(false),
        Some(grant) => Err(ExchangeError::UnsupportedGrant(grant.to_owned())),
        None => Err(ExchangeError::MissingGrant),
    }
}

async fn run_exchange(
    app: &App,
    parts: &http::request::Parts,
    form: &Form,
    audit: &mut AuditRecord,
) -> Result<exchange::TokenResponse, ExchangeError> {
    let authorization = match parts.headers.get(http::header::AUTHORIZATION) {
        Some(value) => Some(value.to_str().map_err(|_| ExchangeError::Client {
            error: crate::clients::AuthError::MalformedBasic,
            used_authorization_header: true,
        })?),
        None => None,
    };
    let endpoints = app.endpoints().await?;
    app.exchanger
        .exchange(
            ExchangeInput {
                form,
                authorization,
            },
            &endpoints,
            audit,
        )
        .await
}

/// A non-exchange token request, with the body exactly as received.
async fn forward_token_request(
    app: &App,
    parts: http::request::Parts,
    body: Bytes,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let Front::Hydra { proxy, .. } = &app.front else {
        return not_found();
    };
    let body: ForwardBody = Full::new(body).map_err(|never| match never {}).boxed();
    match proxy.forward(parts, body, peer).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%error, "Hydra is unreachable");
            token_unavailable()
        }
    }
}

/// Streams a request to Hydra and Hydra's answer back.
async fn pass_through(
    app: &App,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let Front::Hydra { proxy, .. } = &app.front else {
        return not_found();
    };
    let on_token_endpoint = request.uri().path() == "/oauth2/token";
    let (parts, body) = request.into_parts();
    match proxy.forward(parts, body.boxed(), peer).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%error, "Hydra is unreachable");
            if on_token_endpoint {
                token_unavailable()
            } else {
                bad_gateway()
            }
        }
    }
}

/// The token endpoint's answer when Hydra cannot be reached: RFC 6749, retry later.
fn token_unavailable() -> Response<ResponseBody> {
    let mut error = OAuthError::new(
        503,
        ErrorCode::TemporarilyUnavailable,
        "Hydra is temporarily unavailable; retry later",
    );
    error.retry_after = Some(1);
    oauth_error_response(error)
}

/// `application/x-www-form-urlencoded`, with or without parameters such as `charset`.
fn is_form(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| {
            essence
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

fn response_error_code(response: &Response<ResponseBody>) -> Option<&'static str> {
    response
        .extensions()
        .get::<ErrorCodeExtension>()
        .map(|e| e.0)
}

/// Carries the `error` code of a response to the audit line without reparsing the body.
#[derive(Clone, Copy)]
struct ErrorCodeExtension(&'static str);

/// An RFC 6749 §5.2 error response with its headers.
pub fn oauth_error_response(error: OAuthError) -> Response<ResponseBody> {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = token_response(status, Bytes::from(error.body()), error.retry_after);
    if error.basic_challenge {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"iris\""),
        );
    }
    response
        .extensions_mut()
        .insert(ErrorCodeExtension(error.code_str()));
    response
}

/// A token-endpoint response: JSON, never cached (RFC 6749 §5.1).
fn token_response(
    status: StatusCode,
    body: Bytes,
    retry_after: Option<u64>,
) -> Response<ResponseBody> {
    let mut response = json_response(status, body);
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some(seconds) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn method_not_allowed() -> Response<ResponseBody> {
    let mut response = ory_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "The requested method is not allowed for this resource",
    );
    response
        .headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

fn bad_gateway() -> Response<ResponseBody> {
    ory_error(
        StatusCode::BAD_GATEWAY,
        "The upstream server (Hydra) is unreachable",
    )
}

fn not_found() -> Response<ResponseBody> {
    ory_error(
        StatusCode::NOT_FOUND,
        "The requested resource could not be found",
    )
}

/// Non-OAuth errors use Ory's envelope, as Hydra and Kratos do on their other endpoints.
fn ory_error(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({"error": {
        "code": status.as_u16(),
        "status": status.canonical_reason().unwrap_or(""),
        "message": message,
    }});
    json_response(status, Bytes::from(body.to_string()))
}

fn json_response(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_content_types() {
        let ok = [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
        ];
        for v in ok {
            assert!(is_form(Some(&HeaderValue::from_static(v))), "{v}");
        }
        for v in [
            "application/json",
            "multipart/form-data",
            "text/plain; application/x-www-form-urlencoded",
        ] {
            assert!(!is_form(Some(&HeaderValue::from_static(v))), "{v}");
        }
        assert!(!is_form(None));
    }
}
