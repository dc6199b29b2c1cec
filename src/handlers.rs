//! Thin HTTP adapters: they turn hyper requests into domain input and domain results into
//! responses, and write the request and audit log lines. No policy lives here.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, ORIGIN};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};

mod bridge_http;
mod responses;

use bridge_http::{cors, redeem_bridge_code, session_bridge};

pub use responses::oauth_error_response;
use responses::{
    bad_gateway, json_response, method_not_allowed, not_found, ory_error, response_error_code,
    token_response, token_unavailable,
};

use crate::bridge;
use crate::exchange::{self, AuditRecord, ExchangeError, ExchangeInput, Form};
use crate::hydra;
use crate::oauth::OAuthError;
use crate::proxy::ForwardBody;
use crate::server::{App, Front, Peer, ResponseBody, limits};
use crate::telemetry::{self, RequestContext};

const JSON: &str = "application/json";
const X_REQUEST_ID: http::header::HeaderName =
    http::header::HeaderName::from_static("x-request-id");
const X_REQUESTED_WITH: http::header::HeaderName =
    http::header::HeaderName::from_static("x-requested-with");

/// Routes a request on the public listener, within `serve.public.request_timeout`, and logs
/// one line for it. Every answer carries the request's `X-Request-Id`.
pub async fn public(
    app: &App,
    mut request: Request<Incoming>,
    peer: Peer,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let method = request.method().clone();
    // The path only: a query string can carry credentials.
    let path = request.uri().path().to_owned();
    let context = RequestContext {
        request_id: telemetry::request_id(
            request
                .headers()
                .get(X_REQUEST_ID)
                .and_then(|v| v.to_str().ok()),
        ),
        traceparent: request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
    };
    let request_id = context.request_id.clone();
    // Hydra sees the same id as the logs, whether the caller sent it or Iris made it.
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        request.headers_mut().insert(X_REQUEST_ID, value);
    }
    let route = route_of(app, &method, &path);
    let routed = telemetry::in_request(
        context,
        tokio::time::timeout(app.request_timeout, dispatch(app, route, request, &peer)),
    );
    let mut response = match routed.await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(path, "request timed out (serve.public.request_timeout)");
            if route == "token" || route == "bridge" {
                token_unavailable("the request took too long; retry later")
            } else {
                ory_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The upstream server (Hydra) did not answer in time",
                )
            }
        }
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    app.metrics
        .request(route, response.status().as_u16(), started.elapsed());
    log_request(&method, &path, response.status(), started, &request_id);
    response
}

/// The fixed name of a route, for routing and metric labels.
fn route_of(app: &App, method: &Method, path: &str) -> &'static str {
    let read = method == Method::GET || method == Method::HEAD;
    match path {
        // Hydra's admin API is never reachable through the public port.
        _ if path == "/admin" || path.starts_with("/admin/") => "admin_refused",
        "/oauth2/token" => "token",
        "/.well-known/jwks.json" if read => "jwks",
        "/.well-known/openid-configuration" | "/.well-known/oauth-authorization-server" if read => {
            "discovery"
        }
        _ if app
            .bridge
            .as_ref()
            .is_some_and(|b| b.settings().path == path) =>
        {
            "bridge"
        }
        _ => match &app.front {
            Front::Standalone { .. } if path.starts_with("/.well-known/") => "method_not_allowed",
            Front::Standalone { .. } => "not_found",
            Front::Hydra { .. } => "pass_through",
        },
    }
}

/// A route's answer in the making, boxed: see [`dispatch`].
type Routed<'a> = Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send + 'a>>;

/// Starts the route's handler, boxed, whatever the route. A request's future is copied whole on
/// every move, pass-through included: with this as an `async fn` (even one boxing each arm, as
/// rustc keeps the arm's unboxed future in its state too) the server's request future was 21 KB
/// in a release build; this way it is 1.5 KB.
fn dispatch<'a>(
    app: &'a App,
    route: &'static str,
    request: Request<Incoming>,
    peer: &'a Peer,
) -> Routed<'a> {
    match (route, &app.bridge) {
        ("token", _) => Box::pin(token(app, request, peer)),
        ("jwks", _) => Box::pin(jwks(app)),
        ("discovery", _) => {
            let path = request.uri().path().to_owned();
            Box::pin(async move { discovery(app, &path).await })
        }
        ("bridge", Some(bridge)) => Box::pin(session_bridge(app, bridge, request)),
        ("pass_through", _) => Box::pin(pass_through(app, request, peer)),
        ("method_not_allowed", _) => Box::pin(std::future::ready(method_not_allowed())),
        _ => Box::pin(std::future::ready(not_found())),
    }
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
        (Method::GET, "/metrics/prometheus") => {
            let mut response = json_response(StatusCode::OK, Bytes::from(app.metrics.encode()));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        _ => not_found(),
    };
    log_request(&method, &path, response.status(), started, "-");
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

fn log_request(
    method: &Method,
    path: &str,
    status: StatusCode,
    started: Instant,
    request_id: &str,
) {
    tracing::info!(
        target: "iris::request",
        request_id,
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
async fn token(app: &App, request: Request<Incoming>, peer: &Peer) -> Response<ResponseBody> {
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
        Ok((bytes, form)) => match route_grant(app, &form, fronting_hydra) {
            Err(error) => Err(error),
            Ok(Route::Hydra) => return forward_token_request(app, parts, bytes, peer).await,
            Ok(Route::Exchange) => run_exchange(app, &parts, &form, &mut audit).await,
            Ok(Route::BridgeCode) => {
                let result = redeem_bridge_code(app, &form, &mut audit).await;
                let origin = header(&parts, ORIGIN);
                let allowed = app.bridge.as_ref().and_then(|b| b.allowed_origin(origin));
                let mut response = finish(app, result, &audit, started);
                // The page redeems its own code: let it read the answer (a simple request, no preflight).
                cors(&mut response, allowed);
                return response;
            }
        },
    };
    finish(app, result, &audit, started)
}

/// The token-endpoint answer for an outcome Iris decided, and its audit line.
fn finish(
    app: &App,
    result: Result<exchange::TokenResponse, ExchangeError>,
    audit: &AuditRecord,
    started: Instant,
) -> Response<ResponseBody> {
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
    app.metrics.exchange(
        audit.client_id.as_deref(),
        error_code.flatten().unwrap_or("issued"),
    );
    let request_id = telemetry::current_request()
        .map(|c| c.request_id)
        .unwrap_or_default();
    tracing::info!(
        target: "iris::audit",
        request_id,
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

/// Who answers a token-endpoint form.
enum Route {
    /// Iris: a token exchange.
    Exchange,
    /// Iris: `authorization_code` with a code the session bridge issued.
    BridgeCode,
    /// Hydra: every other grant, byte for byte.
    Hydra,
}

/// One parsed form decides (P-1); an ambiguous `grant_type` is refused rather than guessed.
fn route_grant(app: &App, form: &Form, fronting_hydra: bool) -> Result<Route, ExchangeError> {
    match exchange::grant_type(form)? {
        Some(grant) if exchange::is_token_exchange(grant) => Ok(Route::Exchange),
        Some(grant) if grant.split(' ').any(exchange::is_token_exchange) => {
            Err(ExchangeError::AmbiguousGrant)
        }
        // Only codes Iris issued are Iris's; Hydra's authorization codes pass through.
        Some("authorization_code")
            if app.bridge.is_some()
                && form
                    .single("code")?
                    .is_some_and(|c| c.starts_with(bridge::CODE_PREFIX)) =>
        {
            Ok(Route::BridgeCode)
        }
        _ if fronting_hydra => Ok(Route::Hydra),
        Some(grant) => Err(ExchangeError::UnsupportedGrant(grant.to_owned())),
        None => Err(ExchangeError::MissingGrant),
    }
}

fn header(parts: &http::request::Parts, name: http::header::HeaderName) -> Option<&str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
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
    peer: &Peer,
) -> Response<ResponseBody> {
    let Front::Hydra { proxy, .. } = &app.front else {
        return not_found();
    };
    let body: ForwardBody = Full::new(body).map_err(|never| match never {}).boxed();
    match proxy
        .forward(parts, body, &peer.forwarded_for, peer.lane.as_ref())
        .await
    {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%error, "Hydra is unreachable");
            token_unavailable("Hydra is temporarily unavailable; retry later")
        }
    }
}

/// Streams a request to Hydra and Hydra's answer back.
async fn pass_through(
    app: &App,
    request: Request<Incoming>,
    peer: &Peer,
) -> Response<ResponseBody> {
    let Front::Hydra { proxy, .. } = &app.front else {
        return not_found();
    };
    let on_token_endpoint = request.uri().path() == "/oauth2/token";
    let (parts, body) = request.into_parts();
    let started = Instant::now();
    let forwarded = proxy
        .forward(parts, body.boxed(), &peer.forwarded_for, peer.lane.as_ref())
        .await;
    app.metrics
        .upstream("hydra", "pass_through", started.elapsed());
    match forwarded {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%error, "Hydra is unreachable");
            if on_token_endpoint {
                token_unavailable("Hydra is temporarily unavailable; retry later")
            } else {
                bad_gateway()
            }
        }
    }
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
