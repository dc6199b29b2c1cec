//! Listeners, routing and shutdown. [`run`] takes bound listeners and a shutdown future, so the
//! binary and the tests start the same server (the tests on port 0).

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::bridge::Bridge;
use crate::clients::{Authenticator, Verification};
use crate::config::{CLIENT_ASSERTION_ALGS, IssueMode, Settings, TOKEN_EXCHANGE_GRANT};
use crate::exchange::{Endpoints, Exchanger, Issuer, SubjectTokenTypes};
use crate::handlers;
use crate::hydra::{Hydra, HydraError};
use crate::keys::{KeyError, KeySet};
use crate::kratos::{CachingResolver, KratosClient, SessionResolver};
use crate::metrics::{ConnectionGauges, Metrics};
use crate::proxy::{Lane, Proxy, ProxyError};
use crate::store::{MemoryStore, OneTimeStore};
use crate::tokens::Minter;
use crate::upstream::Roots;

mod parking;
mod wakeups;
mod workers;

use workers::Workers;

/// The body type of every response: fixed bodies now, streamed ones for pass-through later.
pub type ResponseBody = BoxBody<Bytes, hyper::Error>;

/// Who sent a request, and the client connection's lane to Hydra when it has one.
#[derive(Clone)]
pub struct Peer {
    /// The client's address as `X-Forwarded-For` carries it, formatted once per connection.
    pub forwarded_for: http::HeaderValue,
    /// The upstream connection this client connection drives itself (plain HTTP/1 only).
    pub lane: Option<Lane>,
}

impl Peer {
    /// The peer of a connection from `addr`.
    pub fn new(addr: SocketAddr, lane: Option<Lane>) -> Peer {
        Peer {
            forwarded_for: crate::proxy::forwarded_for(addr.ip()),
            lane,
        }
    }
}

/// Limits and timeouts of the listeners, in one place.
pub mod limits {
    use std::time::Duration;

    /// A client has this long to send a token-endpoint body, so a trickled body cannot hold a
    /// request open forever.
    pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// Pause after a failed `accept` (file descriptors exhausted), so the loop does not spin.
    pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
}

/// What a listener enforces on its connections (from `serve.*`).
#[derive(Clone)]
pub struct ListenerLimits {
    /// Request headers must arrive within this (and a TLS handshake too).
    pub header_read_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// Draining time after shutdown starts.
    pub shutdown_grace: Duration,
    /// TLS, when configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The signing keys could not be loaded.
    #[error("signing.keys: {0}")]
    Keys(#[from] KeyError),
    /// The client registry could not be built.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// An HTTP client for Kratos or Hydra could not be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    /// The pass-through to Hydra could not be set up.
    #[error("hydra: {0}")]
    Proxy(#[from] ProxyError),
    /// A listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS certificate, key or CA file could not be used.
    #[error("tls: {0}")]
    Tls(String),
}

/// Everything a request handler needs, built once at start.
pub struct App {
    /// The token-exchange pipeline.
    pub exchanger: Exchanger,
    /// Signing keys.
    pub keys: Arc<KeySet>,
    /// The largest token-endpoint body read.
    pub max_body_bytes: usize,
    /// Standalone, or in front of Hydra.
    pub front: Front,
    /// The session bridge, when enabled.
    pub bridge: Option<Bridge>,
    /// `kratos.session_cookie`, which the bridge reads from the browser.
    pub session_cookie: String,
    /// Counters and histograms for `/metrics/prometheus`.
    pub metrics: Arc<Metrics>,
    /// The longest a public request may take.
    pub request_timeout: Duration,
    /// What the public listener enforces.
    pub public_limits: ListenerLimits,
    /// Single-threaded runtimes serving the public listener (server::workers).
    pub public_workers: usize,
}

/// What Iris stands in front of.
pub enum Front {
    /// No Hydra: Iris serves its own discovery document and JWKS.
    Standalone {
        /// Issuer and token endpoint.
        endpoints: Endpoints,
        /// The discovery document, serialised once.
        discovery: Bytes,
        /// The JWKS, serialised once.
        jwks: Bytes,
    },
    /// Hydra's public port behind Iris.
    Hydra {
        /// Hydra's APIs.
        hydra: Arc<Hydra>,
        /// The pass-through.
        proxy: Box<Proxy>,
        /// `issuer` from the configuration, else Hydra's.
        issuer: Option<String>,
    },
}

impl App {
    /// Builds the application for a public listener bound at `public_addr` (the default issuer
    /// needs the real port when the configuration says 0).
    pub fn build(settings: &Settings, public_addr: SocketAddr) -> Result<App, StartError> {
        let metrics = Arc::new(Metrics::new());
        let roots = Roots::load(settings.upstream_ca_path.as_deref()).map_err(StartError::Tls)?;
        let public_workers = public_workers();
        let kratos = KratosClient::new(&settings.kratos, &roots, metrics.clone(), public_workers)?;
        let sessions = CachingResolver::new(
            kratos,
            settings.kratos.cache_ttl,
            settings.kratos.cache_max_entries,
        );
        Self::build_with(
            settings,
            public_addr,
            Arc::new(sessions),
            metrics,
            roots,
            public_workers,
        )
    }

    /// As [`App::build`], with a given session resolver (and the upstream roots already read),
    /// served by `public_workers` worker threads.
    pub fn build_with(
        settings: &Settings,
        public_addr: SocketAddr,
        sessions: Arc<dyn SessionResolver>,
        metrics: Arc<Metrics>,
        roots: Roots,
        public_workers: usize,
    ) -> Result<App, StartError> {
        let tls = settings.public.tls.as_ref().map(tls_acceptor).transpose()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let keys = Arc::new(KeySet::load(&settings.signing_keys)?);
        if keys.ephemeral {
            tracing::warn!(
                "NO SIGNING KEYS CONFIGURED: signing with an ephemeral ES256 key generated at start; \
                 every token stops verifying when Iris restarts. Create one with `iris keys generate` \
                 and list it under signing.keys"
            );
        }
        let store: Arc<dyn OneTimeStore> = Arc::new(MemoryStore::default());
        let mut authenticator = Authenticator::new(
            &settings.clients,
            settings.allow_plaintext_secrets,
            store.clone(),
        )?;
        let (front, issuer) = match &settings.hydra {
            None => (
                standalone(settings, public_addr, scheme, &keys),
                Issuer::Synthesize,
            ),
            Some(hydra_settings) => {
                let hydra = Arc::new(Hydra::new(hydra_settings, &roots, metrics.clone())?);
                let (verification, issuer) = match settings.issue {
                    IssueMode::Synthesize => (Verification::Iris, Issuer::Synthesize),
                    IssueMode::Forward => (Verification::Hydra, Issuer::Forward(hydra.clone())),
                };
                authenticator = authenticator.with_hydra(hydra.clone(), verification);
                let front = Front::Hydra {
                    proxy: Box::new(Proxy::new(
                        hydra_settings.public_url.clone(),
                        scheme,
                        roots.der,
                        metrics.idle_upstreams(),
                        public_workers,
                    )?),
                    hydra,
                    issuer: settings.issuer.clone(),
                };
                (front, issuer)
            }
        };
        let minter = Minter::new(
            keys.clone(),
            settings.access_token_ttl,
            settings.id_token_ttl,
        );
        Ok(App {
            exchanger: Exchanger {
                authenticator: Arc::new(authenticator),
                sessions,
                minter: Arc::new(minter),
                keys: keys.clone(),
                issuer,
                policy: settings.policy.clone(),
                subject_token_types: SubjectTokenTypes {
                    session_token: settings.kratos.session_token_types.clone(),
                    session_cookie: settings.kratos.session_cookie_types.clone(),
                },
            },
            keys,
            max_body_bytes: settings.public.max_body_bytes,
            front,
            bridge: settings
                .bridge
                .clone()
                .map(|bridge| Bridge::new(bridge, store)),
            session_cookie: settings.kratos.session_cookie.clone(),
            metrics,
            request_timeout: settings.public.request_timeout.0,
            public_limits: ListenerLimits {
                header_read_timeout: settings.public.header_read_timeout.0,
                max_connections: settings.public.max_connections,
                shutdown_grace: settings.shutdown_grace,
                tls,
            },
            public_workers,
        })
    }

    /// Readiness: what is down, by name (`kratos`, `hydra`); empty when everything answers.
    pub async fn unready(&self) -> Vec<(&'static str, String)> {
        let kratos = self.exchanger.sessions.ready();
        let hydra = async {
            match &self.front {
                Front::Hydra { hydra, .. } if !hydra.reachable().await => {
                    Err("Hydra's public port does not answer".to_owned())
                }
                _ => Ok(()),
            }
        };
        let (kratos, hydra) = tokio::join!(kratos, hydra);
        let mut down = Vec::new();
        if let Err(reason) = kratos {
            down.push(("kratos", reason));
        }
        if let Err(reason) = hydra {
            down.push(("hydra", reason));
        }
        down
    }

    /// The issuer and token endpoint of this instant: fixed standalone, from Hydra's discovery
    /// (cached) in front of Hydra.
    pub async fn endpoints(&self) -> Result<Endpoints, HydraError> {
        match &self.front {
            Front::Standalone { endpoints, .. } => Ok(endpoints.clone()),
            Front::Hydra { hydra, issuer, .. } => {
                let (hydra_issuer, token_endpoint) = hydra.endpoints().await?;
                Ok(Endpoints {
                    issuer: issuer.clone().unwrap_or(hydra_issuer),
                    token_endpoint,
                })
            }
        }
    }
}

/// rustls for the public listener, offering h2 and http/1.1 by ALPN.
fn tls_acceptor(tls: &crate::config::TlsConfig) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    use rustls_pki_types::pem::PemObject;
    let problem = |what: &str, e: &dyn std::fmt::Display| {
        StartError::Tls(format!("serve.public.tls.{what}: {e}"))
    };
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(&tls.cert_path)
        .map_err(|e| problem("cert_path", &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem("cert_path", &e))?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&tls.key_path)
        .map_err(|e| problem("key_path", &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| problem("cert_path", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| problem("key_path", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Standalone: Iris's own issuer, discovery document and JWKS.
fn standalone(settings: &Settings, public_addr: SocketAddr, scheme: &str, keys: &KeySet) -> Front {
    let issuer = settings.issuer.clone().unwrap_or_else(|| {
        format!(
            "{scheme}://{}:{}/",
            settings.public.host,
            public_addr.port()
        )
    });

    let base = issuer.trim_end_matches('/').to_owned();
    let token_endpoint = format!("{base}/oauth2/token");
    let discovery = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": token_endpoint,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": [TOKEN_EXCHANGE_GRANT],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": CLIENT_ASSERTION_ALGS,
        "id_token_signing_alg_values_supported": keys.algorithms(),
        "subject_types_supported": ["public"],
    });
    Front::Standalone {
        endpoints: Endpoints {
            issuer,
            token_endpoint,
        },
        discovery: Bytes::from(discovery.to_string()),
        jwks: Bytes::from(keys.jwks().to_string()),
    }
}

/// Forward mode: registers the trust relationship at start, retrying while Hydra is down, so
/// the first exchange does not pay for it (an exchange also registers it if this has not yet).
async fn register_trust_in_background(app: Arc<App>) {
    let Issuer::Forward(hydra) = &app.exchanger.issuer else {
        return;
    };
    let mut delay = Duration::from_millis(500);
    loop {
        let result = match app.endpoints().await {
            Ok(endpoints) => {
                hydra
                    .ensure_trust(hydra.trust_issuer(&endpoints.issuer), &app.keys)
                    .await
            }
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot register the trust relationship at Hydra yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// How many public worker threads [`run`] deals connections to: `TOKIO_WORKER_THREADS` when set,
/// else one per core.
pub fn public_workers() -> usize {
    Workers::per_core()
}

/// Serves the public and admin listeners until `shutdown` resolves, then drains in-flight
/// requests (bounded by [`limits::SHUTDOWN_GRACE`]).
pub async fn run(
    settings: Settings,
    public: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let app = Arc::new(App::build(&settings, public.local_addr()?)?);
    serve(app, public, admin, shutdown).await
}

/// As [`run`], with an application already built.
pub async fn serve(
    app: Arc<App>,
    public: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    tracing::info!(public = %public.local_addr()?, admin = %admin.local_addr()?, "listening");
    let registration = tokio::spawn(register_trust_in_background(app.clone()));
    let (stop, stopped) = watch::channel(false);
    let public_app = app.clone();
    let public_limits = app.public_limits.clone();
    let public_gauges = app.metrics.connections("public");
    // Dropped when this returns: connections still open after the grace period close with it.
    let workers = Workers::start(app.public_workers)?;
    let public_loop = accept_loop(
        public,
        stopped.clone(),
        public_limits,
        public_gauges,
        Some(&workers),
        move |req, peer| {
            let app = public_app.clone();
            async move { Ok::<_, Infallible>(handlers::public(&app, req, peer).await) }
        },
    );
    let admin_app = app.clone();
    let admin_limits = ListenerLimits {
        tls: None,
        ..app.public_limits.clone()
    };
    let admin_gauges = app.metrics.connections("admin");
    let admin_loop = accept_loop(
        admin,
        stopped,
        admin_limits,
        admin_gauges,
        None,
        move |req, _peer| {
            let app = admin_app.clone();
            async move { Ok::<_, Infallible>(handlers::admin(&app, req).await) }
        },
    );
    let trigger = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        let _ = stop.send(true);
    };
    tokio::join!(public_loop, admin_loop, trigger);
    registration.abort();
    Ok(())
}

/// A connection's byte stream, plain or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

/// Errors a connection ends with, whichever protocol it spoke.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP/2 connection preface (RFC 9113 §3.4), which a prior-knowledge client sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection speaks, when known before hyper reads a byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    /// Too few bytes yet to tell: hyper-util's detection reads on until it can.
    Undecided,
}

/// Tells HTTP/1.1 from prior-knowledge HTTP/2 by peeking at the first bytes, leaving them in
/// the socket. hyper-util's own detection consumes them and hands them back as a prefix, which
/// makes hyper grow every connection's read buffer from 8 to 16 KiB (heaptrack, 10 000 idle
/// keep-alive connections: 160 MB of read buffers).
async fn sniff(stream: &tokio::net::TcpStream) -> Protocol {
    let mut first = [0u8; H2_PREFACE.len()];
    match stream.peek(&mut first).await {
        Ok(n) if n > 0 && first[..n] != H2_PREFACE[..n] => Protocol::Http1,
        Ok(n) if n == H2_PREFACE.len() => Protocol::Http2,
        _ => Protocol::Undecided,
    }
}

/// The protocol a TLS client chose by ALPN (the listener offers h2 and http/1.1).
fn negotiated(stream: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Protocol {
    match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        Some(b"http/1.1") => Protocol::Http1,
        _ => Protocol::Undecided,
    }
}

/// hyper's connection builders of one listener, configured once.
struct Builders {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    auto: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &ListenerLimits) -> Builders {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        // Half-close on: hyper then does not read ahead for an EOF while a request is being
        // answered. That read found the buffer still shared with the request's headers and
        // allocated a fresh 8 KiB read buffer for every request (heaptrack and DHAT, 10 000
        // connections); a client that closes its side early still gets its answer.
        http1
            .half_close(true)
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        auto.http2().timer(TokioTimer::new());
        Builders { http1, http2, auto }
    }

    /// One connection's future: it serves requests until the client or the graceful shutdown
    /// closes the connection. Boxed per protocol: inline, every connection task would be as
    /// large as the largest of them (an HTTP/2 connection over TLS, several KB).
    fn connection<I, H, F>(
        &self,
        io: I,
        protocol: Protocol,
        handler: H,
        peer: SocketAddr,
        watcher: hyper_util::server::graceful::Watcher,
    ) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>
    where
        I: Stream + 'static,
        H: Fn(Request<Incoming>, Peer) -> F + Send + 'static,
        F: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
    {
        // Boxed: an idle keep-alive connection then holds a pointer, not a full-size
        // handler future (about 14 KB each, measured with 10 000 connections).
        let peer = Peer::new(peer, None);
        let service = service_fn(move |req| Box::pin(handler(req, peer.clone())));
        let io = TokioIo::new(io);
        match protocol {
            Protocol::Http1 => {
                let connection = watcher.watch(self.http1.serve_connection(io, service));
                Box::pin(async move { Ok(connection.await?) })
            }
            Protocol::Http2 => {
                let connection = watcher.watch(self.http2.serve_connection(io, service));
                Box::pin(async move { Ok(connection.await?) })
            }
            Protocol::Undecided => {
                Box::pin(watcher.watch(self.auto.serve_connection(io, service).into_owned()))
            }
        }
    }
}

/// Accepts connections until `stopped`, each served on a task of its own: on `workers` when
/// given, else on the current runtime. Then drains them for `limits.shutdown_grace`.
async fn accept_loop<H, F>(
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    limits: ListenerLimits,
    gauges: ConnectionGauges,
    workers: Option<&Workers>,
    handler: H,
) where
    H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
{
    let builders = Arc::new(Builders::new(&limits));
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let stopping = stopped.clone();
    let mut stop = std::pin::pin!(async move {
        while !*stopped.borrow_and_update() {
            if stopped.changed().await.is_err() {
                break;
            }
        }
    });
    loop {
        // At the connection limit, wait for a connection to close before accepting another.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(limits::ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Accepted {
            handler: handler.clone(),
            builders: builders.clone(),
            watcher: graceful.watcher(),
            tls: limits.tls.clone(),
            first_bytes_timeout: limits.header_read_timeout,
            stopping: stopping.clone(),
            parked: gauges.parked.clone(),
            open: OpenConnection::count(&gauges.open),
            peer,
        };
        match workers {
            None => drop(tokio::spawn(connection.serve(stream, permit))),
            // Moved to the worker's own reactor: its socket events then wake that thread only.
            // On failure the connection is dropped, and with it its gauge count and permit.
            Some(workers) => match stream.into_std() {
                Ok(stream) => workers.spawn(async move {
                    match tokio::net::TcpStream::from_std(stream) {
                        Ok(stream) => connection.serve(stream, permit).await,
                        Err(error) => handover_failed(&error),
                    }
                }),
                Err(error) => handover_failed(&error),
            },
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
}

/// An accepted connection and what serving it takes.
struct Accepted<H> {
    handler: H,
    builders: Arc<Builders>,
    watcher: hyper_util::server::graceful::Watcher,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// A client gets this long to complete the TLS handshake or send its first bytes.
    first_bytes_timeout: Duration,
    stopping: watch::Receiver<bool>,
    /// `iris_parked_connections` of the listener.
    parked: prometheus_client::metrics::gauge::Gauge,
    /// Counts the connection as open from its accept until it ends, however it ends.
    open: OpenConnection,
    peer: SocketAddr,
}

impl<H, F> Accepted<H>
where
    H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
{
    /// Serves the connection until it closes; `permit` is its `max_connections` slot.
    async fn serve(self, stream: tokio::net::TcpStream, permit: tokio::sync::OwnedSemaphorePermit) {
        let Accepted {
            handler,
            builders,
            watcher,
            tls,
            first_bytes_timeout,
            stopping,
            parked,
            open: _open,
            peer,
        } = self;
        let _permit = permit;
        let connection = match tls {
            None => {
                // Boxed: the wait would otherwise size the task of every connection for
                // its whole life.
                let first_bytes =
                    Box::pin(tokio::time::timeout(first_bytes_timeout, sniff(&stream)));
                let Ok(protocol) = first_bytes.await else {
                    tracing::debug!("no request before serve.public.header_read_timeout");
                    return;
                };
                if protocol == Protocol::Http1 {
                    Box::pin(parking::serve(
                        stream,
                        &builders.http1,
                        handler,
                        peer,
                        parking::Stopping {
                            signal: stopping,
                            _watcher: watcher,
                        },
                        first_bytes_timeout,
                        parked,
                    ))
                } else {
                    builders.connection(stream, protocol, handler, peer, watcher)
                }
            }
            Some(acceptor) => {
                // Boxed: the handshake state is large, and inline it would size every
                // plain connection's task too.
                let handshake = Box::pin(tokio::time::timeout(
                    first_bytes_timeout,
                    acceptor.accept(stream),
                ));
                match handshake.await {
                    Ok(Ok(tls)) => {
                        let protocol = negotiated(&tls);
                        builders.connection(tls, protocol, handler, peer, watcher)
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        // Awaited here, outside the matches: their scrutinees (a TLS stream among them)
        // would otherwise stay in this task for the connection's whole life.
        if let Err(error) = connection.await {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}

/// A connection that could not be moved to a worker's reactor is closed.
fn handover_failed(error: &std::io::Error) {
    tracing::warn!(%error, "cannot hand a connection to a worker");
}

/// Counts a connection as open while it lives.
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    /// Adds one to `gauge` until the returned guard is dropped.
    fn count(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        OpenConnection(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives right after start is never missed (it would
/// otherwise kill the process instead of draining it). Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
