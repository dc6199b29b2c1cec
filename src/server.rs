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
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clients::{Authenticator, MemoryReplayStore};
use crate::config::{CLIENT_ASSERTION_ALGS, Settings, TOKEN_EXCHANGE_GRANT};
use crate::exchange::{Exchanger, SubjectTokenTypes};
use crate::handlers;
use crate::keys::{KeyError, KeySet};
use crate::kratos::{KratosClient, SessionResolver};
use crate::tokens::Minter;

/// The body type of every response: fixed bodies now, streamed ones for pass-through later.
pub type ResponseBody = BoxBody<Bytes, hyper::Error>;

/// Limits and timeouts of the listeners, in one place.
pub mod limits {
    use std::time::Duration;

    /// A client has this long to send its request headers.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// A client has this long to send a token-endpoint body, so a trickled body cannot hold a
    /// request open forever.
    pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// In-flight requests get this long to finish after shutdown starts.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    /// Pause after a failed `accept` (file descriptors exhausted), so the loop does not spin.
    pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
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
    /// The HTTP client for Kratos could not be built.
    #[error("kratos: {0}")]
    Kratos(#[from] reqwest::Error),
    /// A listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything a request handler needs, built once at start.
pub struct App {
    /// The token-exchange pipeline.
    pub exchanger: Exchanger,
    /// Signing keys.
    pub keys: Arc<KeySet>,
    /// The largest token-endpoint body read.
    pub max_body_bytes: usize,
    /// The discovery document, serialised once.
    pub discovery: Bytes,
    /// The JWKS, serialised once.
    pub jwks: Bytes,
}

impl App {
    /// Builds the application for a public listener bound at `public_addr` (the default issuer
    /// needs the real port when the configuration says 0).
    pub fn build(settings: &Settings, public_addr: SocketAddr) -> Result<App, StartError> {
        let sessions: Arc<dyn SessionResolver> = Arc::new(KratosClient::new(&settings.kratos)?);
        Self::build_with(settings, public_addr, sessions)
    }

    /// As [`App::build`], with a given session resolver.
    pub fn build_with(
        settings: &Settings,
        public_addr: SocketAddr,
        sessions: Arc<dyn SessionResolver>,
    ) -> Result<App, StartError> {
        let issuer = settings
            .issuer
            .clone()
            .unwrap_or_else(|| format!("http://{}:{}/", settings.public.host, public_addr.port()));
        let base = issuer.trim_end_matches('/');
        let token_endpoint = format!("{base}/oauth2/token");
        let keys = Arc::new(KeySet::load(&settings.signing_keys)?);
        if keys.ephemeral {
            tracing::warn!(
                "NO SIGNING KEYS CONFIGURED: signing with an ephemeral ES256 key generated at start; \
                 every token stops verifying when Iris restarts. Create one with `iris keys generate` \
                 and list it under signing.keys"
            );
        }
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
        let authenticator = Authenticator::new(
            &settings.clients,
            settings.allow_plaintext_secrets,
            Arc::new(MemoryReplayStore::default()),
            token_endpoint,
        )?;
        let minter = Minter::new(
            issuer,
            keys.clone(),
            settings.access_token_ttl,
            settings.id_token_ttl,
        );
        Ok(App {
            exchanger: Exchanger {
                authenticator: Arc::new(authenticator),
                sessions,
                minter: Arc::new(minter),
                policy: settings.policy.clone(),
                subject_token_types: SubjectTokenTypes {
                    session_token: settings.kratos.session_token_types.clone(),
                    session_cookie: settings.kratos.session_cookie_types.clone(),
                },
            },
            jwks: Bytes::from(keys.jwks().to_string()),
            keys,
            max_body_bytes: settings.public.max_body_bytes,
            discovery: Bytes::from(discovery.to_string()),
        })
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
    let (stop, stopped) = watch::channel(false);
    let public_app = app.clone();
    let public_loop = accept_loop(public, stopped.clone(), move |req, peer| {
        let app = public_app.clone();
        async move { Ok::<_, Infallible>(handlers::public(&app, req, peer).await) }
    });
    let admin_loop = accept_loop(admin, stopped, move |req, _peer| async move {
        Ok::<_, Infallible>(handlers::admin(req).await)
    });
    let trigger = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        let _ = stop.send(true);
    };
    tokio::join!(public_loop, admin_loop, trigger);
    Ok(())
}

async fn accept_loop<H, F>(listener: TcpListener, mut stopped: watch::Receiver<bool>, handler: H)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits::HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(async move {
        while !*stopped.borrow_and_update() {
            if stopped.changed().await.is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(limits::ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let service = service_fn(move |req| handler(req, peer));
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let watched = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = watched.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                });
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(limits::SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
