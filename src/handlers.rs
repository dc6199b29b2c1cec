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

use crate::exchange::{self, AuditRecord, ExchangeError, ExchangeInput, Form};
use crate::oauth::OAuthError;
use crate::server::{App, ResponseBody, limits};

const JSON: &str = "application/json";

/// Routes a request on the public listener and logs one line for it.
pub async fn public(
    app: &App,
    request: Request<Incoming>,
    _peer: SocketAddr,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let method = request.method().clone();
    // The path only: a query string can carry credentials.
    let path = request.uri().path().to_owned();
    let response = match path.as_str() {
        "/oauth2/token" => token(app, request).await,
        "/.well-known/jwks.json" => document(&method, app.jwks.clone()),
        "/.well-known/openid-configuration" | "/.well-known/oauth-authorization-server" => {
            document(&method, app.discovery.clone())
        }
        _ => not_found(),
    };
    log_request(&method, &path, response.status(), started);
    response
}

/// Routes a request on the admin listener.
pub async fn admin(request: Request<Incoming>) -> Response<ResponseBody> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = match (method.clone(), path.as_str()) {
        (Method::GET | Method::HEAD, "/health/alive") => {
            json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#))
        }
        _ => not_found(),
    };
    log_request(&method, &path, response.status(), started);
    response
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

/// `POST /oauth2/token`: reads the form once, then hands it to the exchange pipeline.
async fn token(app: &App, request: Request<Incoming>) -> Response<ResponseBody> {
    let started = Instant::now();
    let mut audit = AuditRecord::default();
    let result = run_exchange(app, request, &mut audit).await;
    let outcome = match &result {
        Ok(_) => None,
        Err(error) => Some(error.to_string()),
    };
    let response = match result {
        Ok(body) => token_response(
            StatusCode::OK,
            Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
            None,
        ),
        Err(error) => oauth_error_response(OAuthError::from(error)),
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

async fn run_exchange(
    app: &App,
    request: Request<Incoming>,
    audit: &mut AuditRecord,
) -> Result<exchange::TokenResponse, ExchangeError> {
    let (parts, body) = request.into_parts();
    if parts.method != Method::POST || !is_form(parts.headers.get(CONTENT_TYPE)) {
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
    let body = tokio::time::timeout(limits::BODY_READ_TIMEOUT, reading)
        .await
        .map_err(|_| ExchangeError::BodyUnreadable)?
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                ExchangeError::BodyTooLarge(app.max_body_bytes)
            } else {
                ExchangeError::BodyUnreadable
            }
        })?;
    let form = Form::parse(&body.to_bytes())?;
    let grant_type = exchange::grant_type(&form)?.ok_or(ExchangeError::MissingGrant)?;
    if !exchange::is_token_exchange(grant_type) {
        return Err(ExchangeError::UnsupportedGrant(grant_type.to_owned()));
    }
    let authorization = match parts.headers.get(http::header::AUTHORIZATION) {
        Some(value) => Some(value.to_str().map_err(|_| ExchangeError::Client {
            error: crate::clients::AuthError::MalformedBasic,
            used_authorization_header: true,
        })?),
        None => None,
    };
    app.exchanger
        .exchange(
            ExchangeInput {
                form: &form,
                authorization,
            },
            audit,
        )
        .await
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

fn document(method: &Method, body: Bytes) -> Response<ResponseBody> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = ory_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "The requested method is not allowed for this resource",
        );
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    json_response(StatusCode::OK, body)
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
