//! Response builders: RFC 6749 bodies for the token endpoint and Ory's envelope elsewhere.

use bytes::Bytes;
use http::StatusCode;
use http::header::{
    CACHE_CONTROL, CONTENT_TYPE, HeaderValue, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http_body_util::{BodyExt, Full};
use hyper::Response;

use super::JSON;
use crate::oauth::{ErrorCode, OAuthError};
use crate::server::ResponseBody;

pub(super) fn response_error_code(response: &Response<ResponseBody>) -> Option<&'static str> {
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
pub(super) fn token_response(
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

pub(super) fn method_not_allowed() -> Response<ResponseBody> {
    let mut response = ory_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "The requested method is not allowed for this resource",
    );
    response
        .headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

pub(super) fn bad_gateway() -> Response<ResponseBody> {
    ory_error(
        StatusCode::BAD_GATEWAY,
        "The upstream server (Hydra) is unreachable",
    )
}

pub(super) fn not_found() -> Response<ResponseBody> {
    ory_error(
        StatusCode::NOT_FOUND,
        "The requested resource could not be found",
    )
}

/// Non-OAuth errors use Ory's envelope, as Hydra and Kratos do on their other endpoints.
pub(super) fn ory_error(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({"error": {
        "code": status.as_u16(),
        "status": status.canonical_reason().unwrap_or(""),
        "message": message,
    }});
    json_response(status, Bytes::from(body.to_string()))
}

pub(super) fn json_response(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
}

pub(super) fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

/// The token endpoint's answer when Hydra cannot be reached: RFC 6749, retry later.
pub(super) fn token_unavailable(description: &str) -> Response<ResponseBody> {
    let mut error = OAuthError::new(503, ErrorCode::TemporarilyUnavailable, description);
    error.retry_after = Some(1);
    oauth_error_response(error)
}
