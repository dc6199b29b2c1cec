//! Pass-through to Hydra's public port: method, path, query, headers and body unchanged and
//! streamed both ways over keep-alive connections, minus hop-by-hop headers (RFC 9110 §7.6.1),
//! with `X-Forwarded-*` set by Iris and never taken from the client (BCP-7). A plain HTTP/1 client
//! connection sends its requests on its own upstream connection ([`lane`]); the others go through
//! a pooled client of their worker thread.

mod lane;

use lane::IdlePool;
pub use lane::{Lane, MAX_IDLE_UPSTREAMS, UPSTREAM_IDLE_TIMEOUT};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use rustls_pki_types::CertificateDer;
use tower_service::Service;

use crate::server::ResponseBody;
use crate::upstream::PerWorker;

/// The body of a forwarded request: streamed from the client, or the token-endpoint form Iris
/// already read.
pub type ForwardBody = BoxBody<Bytes, hyper::Error>;

/// Why a request could not be passed through.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Hydra could not be reached or broke the exchange off.
    #[error("Hydra is unreachable: {0}")]
    Unreachable(String),
    /// The upstream URL could not be built from the request.
    #[error("the request URI cannot be forwarded: {0}")]
    BadUri(String),
}

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the non-standard `Keep-Alive` and
/// `Proxy-Connection`) and the forwarding headers Iris sets itself.
const DROPPED: [HeaderName; 11] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-for"),
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The `X-Forwarded-For` value for a client at `ip`: its address alone, never a list taken from
/// the client (BCP-7).
pub fn forwarded_for(ip: IpAddr) -> HeaderValue {
    // An IP address's text is always a valid header value.
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Removes hop-by-hop headers, including every header the `Connection` header names; the others
/// keep their order.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    // One pass over the names a message has (a handful) instead of a lookup for each name that
    // could be there: most messages have none of them, and the lookups were 8 % of a
    // pass-through's instructions (callgrind).
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| DROPPED.contains(name) || named.contains(name))
        .cloned()
        .collect();
    if doomed.is_empty() {
        return;
    }
    // Rebuilt rather than removed from: `HeaderMap::remove` moves the last name into the gap.
    let mut kept = HeaderMap::with_capacity(headers.len());
    let mut current: Option<HeaderName> = None;
    for (name, value) in headers.drain() {
        // A name comes with its first value only; the rest follow with `None`.
        if let Some(name) = name {
            current = (!doomed.contains(&name)).then_some(name);
        }
        if let Some(name) = &current {
            kept.append(name.clone(), value);
        }
    }
    *headers = kept;
}

/// The connections to Hydra's public port.
pub struct Proxy {
    /// For client connections without a lane (HTTP/2, TLS), a pooled client per worker thread.
    client: PerWorker<Client<HttpsConnector<HttpConnector>, ForwardBody>>,
    /// Opens the lanes' upstream connections (the pooled client has its own copy).
    connector: HttpsConnector<HttpConnector>,
    /// Upstream connections between lanes, a pool per public worker thread.
    idle: PerWorker<Arc<IdlePool>>,
    upstream: url::Url,
    /// `scheme://authority/` of Hydra, what the connector dials.
    origin: Uri,
    /// Hydra's authority, the `Host` of a request that came without one (as hyper-util sets it).
    host: HeaderValue,
    scheme: &'static str,
}

impl Proxy {
    /// A proxy to `upstream` for a listener speaking `scheme` (`http` or `https`), whose
    /// connections `workers` public worker threads serve.
    pub fn new(
        upstream: url::Url,
        scheme: &'static str,
        extra_roots: Vec<CertificateDer<'static>>,
        idle_gauge: Gauge,
        workers: usize,
    ) -> Result<Self, ProxyError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let tls_setup = |e: rustls::Error| ProxyError::Unreachable(format!("TLS setup: {e}"));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
                .map_err(tls_setup)?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_setup)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // One per worker thread: the client runs each connection as a task on the runtime that
        // opened it, so a shared one would drive a worker's requests from another thread.
        let client = PerWorker::each(workers, |_| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(UPSTREAM_IDLE_TIMEOUT)
                .build(connector.clone())
        });
        let authority = authority(&upstream);
        let origin = format!("{}://{authority}/", upstream.scheme())
            .parse()
            .map_err(|e: http::uri::InvalidUri| ProxyError::BadUri(e.to_string()))?;
        let host =
            HeaderValue::from_str(&authority).map_err(|e| ProxyError::BadUri(e.to_string()))?;
        Ok(Proxy {
            client,
            connector,
            idle: lane::per_worker(&idle_gauge, workers),
            upstream,
            origin,
            host,
            scheme,
        })
    }

    /// Forwards one request, on the client connection's lane when it has one, and streams the
    /// answer back.
    pub async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: ForwardBody,
        forwarded_for: &HeaderValue,
        lane: Option<&Lane>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // Iris speaks HTTP/1.1 to Hydra whatever the client spoke to Iris.
        parts.version = Version::HTTP_11;
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
        headers.insert(X_FORWARDED_FOR, forwarded_for.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(self.scheme));
        if let Some(host) = original_host {
            headers.insert(X_FORWARDED_HOST, host);
        }
        let response = match lane {
            Some(lane) => {
                // What hyper-util's client does before it writes a request: origin-form, and
                // Hydra's authority as `Host` when the client sent none (HTTP/2 has `:authority`).
                parts.uri = self.upstream_path(&parts.uri)?;
                if !parts.headers.contains_key(header::HOST) {
                    parts.headers.insert(header::HOST, self.host.clone());
                }
                let request = Request::from_parts(parts, body);
                // Boxed: connecting is rare, and inline its future made every pass-through's
                // future (copied on each move) 3.3 KB instead of 2.0 KB.
                lane::send(lane, self.idle.get(), || Box::pin(self.connect()), request)
                    .await
                    .map_err(|e| ProxyError::Unreachable(e.to_string()))?
            }
            None => {
                parts.uri = self.upstream_uri(&parts.uri)?;
                self.client
                    .get()
                    .request(Request::from_parts(parts, body))
                    .await
                    .map_err(|e| ProxyError::Unreachable(e.to_string()))?
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body.boxed()))
    }

    /// A new upstream connection for a lane.
    async fn connect(&self) -> Result<lane::Upstream, String> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| e.to_string())?;
        let stream = connector
            .call(self.origin.clone())
            .await
            .map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(stream)
            .await
            .map_err(|e| e.to_string())?;
        Ok(lane::Upstream::new(sender, connection))
    }

    /// The absolute URI of a request for the pooled client.
    fn upstream_uri(&self, original: &Uri) -> Result<Uri, ProxyError> {
        let path_and_query = self.prefixed(original);
        format!(
            "{}://{}{path_and_query}",
            self.upstream.scheme(),
            authority(&self.upstream)
        )
        .parse()
        .map_err(|e: http::uri::InvalidUri| ProxyError::BadUri(e.to_string()))
    }

    /// The origin-form URI of a request on a lane.
    fn upstream_path(&self, original: &Uri) -> Result<Uri, ProxyError> {
        if self.upstream.path() == "/" {
            // No prefix: the path and query as they came, without re-parsing them.
            return Ok(original
                .path_and_query()
                .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone())));
        }
        self.prefixed(original)
            .parse()
            .map_err(|e: http::uri::InvalidUri| ProxyError::BadUri(e.to_string()))
    }

    /// `public_url`'s path, then the request's path and query.
    fn prefixed(&self, original: &Uri) -> String {
        let prefix = self.upstream.path().trim_end_matches('/');
        let path_and_query = original.path_and_query().map_or("/", |pq| pq.as_str());
        format!("{prefix}{path_and_query}")
    }
}

/// `host[:port]` of a URL, the port only when it is not the scheme's default.
fn authority(url: &url::Url) -> String {
    match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("accept", "*/*"),
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("content-type", "text/plain"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "1.2.3.4"),
            ("authorization", "Basic keep"),
            ("x-request-id", "keep"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        headers.append(
            HeaderName::from_static("x-request-id"),
            HeaderValue::from_static("twice"),
        );
        strip_hop_by_hop(&mut headers);
        let left: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            left,
            [
                ("accept", "*/*"),
                ("content-type", "text/plain"),
                ("authorization", "Basic keep"),
                ("x-request-id", "keep"),
                ("x-request-id", "twice")
            ]
        );
    }

    #[test]
    fn upstream_uris_keep_path_and_query_under_the_prefix() {
        let proxy = Proxy::new(
            "http://hydra:4444/base/".parse().unwrap(),
            "http",
            Vec::new(),
            Gauge::default(),
            1,
        )
        .unwrap();
        let uri = proxy
            .upstream_uri(&"/oauth2/auth?client_id=a&x=%20".parse().unwrap())
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "http://hydra:4444/base/oauth2/auth?client_id=a&x=%20"
        );
    }
}
