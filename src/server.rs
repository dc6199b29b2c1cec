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
use crate::metrics::Metrics;
use crate::proxy::{Proxy, ProxyError};
use crate::store::{MemoryStore, OneTimeStore};
use crate::tokens::Minter;
use crate::upstream::Roots;

/// The body type of every response: fixed bodies now, streamed ones for pass-through later.
pub type ResponseBody = BoxBody<Bytes, hyper::Error>;

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
        let kratos = KratosClient::new(&settings.kratos, &roots, metrics.clone())?;
        let sessions = CachingResolver::new(
            kratos,
            settings.kratos.cache_ttl,
            settings.kratos.cache_max_entries,
        );
        Self::build_with(settings, public_addr, Arc::new(sessions), metrics, roots)
    }

    /// As [`App::build`], with a given session resolver (and the upstream roots already read).
    pub fn build_with(
        settings: &Settings,
        public_addr: SocketAddr,
        sessions: Arc<dyn SessionResolver>,
        metrics: Arc<Metrics>,
        roots: Roots,
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
    let public_loop = accept_loop(public, stopped.clone(), public_limits, move |req, peer| {
        let app = public_app.clone();
        async move { Ok::<_, Infallible>(handlers::public(&app, req, peer).await) }
    });
    let admin_app = app.clone();
    let admin_limits = ListenerLimits {
        tls: None,
        ..app.public_limits.clone()
    };
    let admin_loop = accept_loop(admin, stopped, admin_limits, move |req, _peer| {
        let app = admin_app.clone();
        async move { Ok::<_, Infallible>(handlers::admin(&app, req).await) }
    });
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

async fn accept_loop<H, F>(
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    limits: ListenerLimits,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
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
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = limits.tls.clone();
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let stream: Box<dyn Stream> = match tls {
                None => Box::new(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => Box::new(tls),
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
            // Boxed: an idle keep-alive connection then holds a pointer, not a full-size
            // handler future (about 14 KB each, measured with 10 000 connections).
            let service = service_fn(move |req| Box::pin(handler(req, peer)));
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
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
