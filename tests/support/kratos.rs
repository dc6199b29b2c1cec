//! A Kratos stand-in: `GET /sessions/whoami` as Kratos v26.2.0 answers it (reference/kratos.md §a,
//! the `toSession` operation of the Kratos OpenAPI spec). Shared by the tests and the quickstart.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One session as Kratos stores it.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    /// Session id (uuid).
    pub id: String,
    /// Identity id (uuid).
    pub identity_id: String,
    /// `active` as stored (revocation sets it false).
    pub active: bool,
    /// `identity.state`.
    pub identity_state: &'static str,
    /// `expires_at`.
    pub expires_at: SystemTime,
    /// `authenticated_at`.
    pub authenticated_at: SystemTime,
    /// `authenticator_assurance_level`.
    pub aal: &'static str,
    /// `authentication_methods[].method`.
    pub methods: Vec<&'static str>,
    /// `identity.traits`.
    pub traits: Value,
    /// `identity.verifiable_addresses` as (value, verified).
    pub verifiable_addresses: Vec<(String, bool)>,
    /// The identity has a second factor: with `required_aal: highest_available` an AAL1
    /// session gets 403 `session_aal2_required`.
    pub has_second_factor: bool,
    /// How long whoami takes to answer for this session (a slow database, for load tests).
    pub delay: Duration,
}

impl SessionRecord {
    /// An active AAL1 password session for alice@example.com, expiring in 24 hours.
    pub fn alice() -> Self {
        let now = SystemTime::now();
        SessionRecord {
            id: "9b1c6c1e-0f4a-4b8e-9a51-2f3f3c1d9e10".into(),
            identity_id: "5ff66179-c240-4703-b0d8-494592cefff5".into(),
            active: true,
            identity_state: "active",
            expires_at: now + Duration::from_secs(24 * 3600),
            authenticated_at: now - Duration::from_secs(60),
            aal: "aal1",
            methods: vec!["password"],
            traits: json!({"email": "alice@example.com"}),
            verifiable_addresses: vec![("alice@example.com".into(), true)],
            has_second_factor: false,
            delay: Duration::ZERO,
        }
    }

    /// `active` as Kratos computes it when serialising (`Session.MarshalJSON`, `IsActive`).
    fn is_active(&self) -> bool {
        self.active && self.expires_at > SystemTime::now() && self.identity_state == "active"
    }

    fn to_json(&self, public_url: &str) -> Value {
        let ts = |t: SystemTime| OffsetDateTime::from(t).format(&Rfc3339).unwrap_or_default();
        let addresses: Vec<Value> = self
            .verifiable_addresses
            .iter()
            .map(|(value, verified)| {
                json!({
                    "id": "45e867e9-2745-4f16-8dd4-84334a252b61", "value": value, "verified": verified,
                    "via": "email", "status": if *verified { "completed" } else { "sent" },
                    "created_at": ts(self.authenticated_at), "updated_at": ts(self.authenticated_at)
                })
            })
            .collect();
        let mut identity = json!({
            "id": self.identity_id,
            "schema_id": "default",
            "schema_url": format!("{public_url}/schemas/ZGVmYXVsdA"),
            "state": self.identity_state,
            "traits": self.traits,
            "metadata_public": null,
            "created_at": ts(self.authenticated_at),
            "updated_at": ts(self.authenticated_at),
            "organization_id": null,
        });
        // Kratos omits verifiable_addresses when empty.
        if !addresses.is_empty() {
            identity["verifiable_addresses"] = Value::Array(addresses);
        }
        json!({
            "id": self.id,
            "active": self.is_active(),
            "expires_at": ts(self.expires_at),
            "authenticated_at": ts(self.authenticated_at),
            "authenticator_assurance_level": self.aal,
            "authentication_methods": self.methods.iter().map(|m| json!({
                "method": m, "aal": if *m == "totp" || *m == "webauthn" { "aal2" } else { "aal1" },
                "completed_at": ts(self.authenticated_at)
            })).collect::<Vec<_>>(),
            "issued_at": ts(self.authenticated_at),
            "identity": identity,
            "devices": [{"id": "1d4c0000-0000-4000-8000-000000000000", "ip_address": "127.0.0.1", "user_agent": "iris", "location": ""}],
        })
    }
}

/// A deliberate upstream fault for one credential.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and a herodot error body.
    Status(u16),
    /// Answer 429 with `Retry-After`.
    TooManyRequests(u64),
    /// Answer 200 with a body that is not a session.
    NotJson,
    /// Wait this long before answering (to trip Iris's timeout).
    Delay(Duration),
}

/// What a credential resolves to.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // test data, built a handful of times
pub enum Entry {
    /// A stored session.
    Session(SessionRecord),
    /// A fault.
    Fault(Fault),
}

/// One whoami call as the stand-in saw it.
#[derive(Clone, Debug)]
pub struct Call {
    /// `X-Session-Token`, if sent.
    pub session_token: Option<String>,
    /// `Cookie`, if sent.
    pub cookie: Option<String>,
    /// `Authorization`, if sent.
    pub authorization: Option<String>,
    /// `X-Request-Id`, if sent.
    pub request_id: Option<String>,
    /// `traceparent`, if sent.
    pub traceparent: Option<String>,
}

#[derive(Default)]
struct State {
    /// `feature_flags.cacheable_sessions` with this `cacheable_sessions_max_age` (seconds).
    cache_for: Option<u64>,
    by_token: HashMap<String, Entry>,
    by_cookie: HashMap<String, Entry>,
    calls: Vec<Call>,
}

/// The running stand-in.
#[derive(Clone)]
pub struct Kratos {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `session.cookie.name`.
    pub cookie_name: String,
    state: Arc<Mutex<State>>,
    count: Arc<AtomicUsize>,
    running: Arc<Mutex<Option<tokio::sync::watch::Sender<bool>>>>,
}

impl Kratos {
    /// Starts on `127.0.0.1:0` with cookie name `ory_kratos_session`.
    pub async fn start() -> Kratos {
        Self::start_with_cookie("ory_kratos_session").await
    }

    /// Starts on `127.0.0.1:0` with another `session.cookie.name` (Ory Network: `ory_session_<slug>`).
    pub async fn start_with_cookie(cookie_name: &str) -> Kratos {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::start_on(listener, cookie_name).await
    }

    /// Starts on a given listener.
    pub async fn start_on(listener: tokio::net::TcpListener, cookie_name: &str) -> Kratos {
        let kratos = Kratos {
            addr: listener.local_addr().expect("addr"),
            cookie_name: cookie_name.into(),
            state: Arc::default(),
            count: Arc::default(),
            running: Arc::default(),
        };
        kratos.serve(listener);
        kratos
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        *self.running.lock().unwrap() = Some(stop);
        let server = self.clone();
        tokio::spawn(async move {
            loop {
                let mut accept_stopped = stopped.clone();
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = accept_stopped.changed() => return,
                };
                let server = server.clone();
                let mut connection_stopped = stopped.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    // Stopping drops open keep-alive connections too, as a crashed Kratos would.
                    tokio::select! {
                        _ = connection => {}
                        _ = connection_stopped.changed() => {}
                    }
                });
            }
        });
    }

    /// Stops listening and closes every open connection (Kratos down).
    pub fn stop(&self) {
        if let Some(stop) = self.running.lock().unwrap().take() {
            let _ = stop.send(true);
        }
    }

    /// Listens again on the same address, with the same sessions (Kratos back).
    pub async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind");
        self.serve(listener);
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stores a session reachable by its session token.
    pub fn add_token(&self, token: &str, entry: Entry) {
        self.state
            .lock()
            .unwrap()
            .by_token
            .insert(token.into(), entry);
    }

    /// Stores a session reachable by its cookie value.
    pub fn add_cookie(&self, value: &str, entry: Entry) {
        self.state
            .lock()
            .unwrap()
            .by_cookie
            .insert(value.into(), entry);
    }

    /// Turns on `feature_flags.cacheable_sessions`: a 200 carries `Ory-Session-Cache-For`, the
    /// seconds until `expires_at` capped by `max_age` (reference/kratos.md §a).
    pub fn set_cacheable_sessions(&self, max_age: Option<u64>) {
        self.state.lock().unwrap().cache_for = max_age;
    }

    /// How many whoami calls were made.
    pub fn calls(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// The whoami calls, in order.
    pub fn call_log(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != "/sessions/whoami" {
            return error(
                404,
                None,
                "Not Found",
                "Unable to locate the resource",
                None,
                req.headers(),
            );
        }
        self.count.fetch_add(1, Ordering::SeqCst);
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let call = Call {
            session_token: header("x-session-token"),
            cookie: header("cookie"),
            authorization: header("authorization"),
            request_id: header("x-request-id"),
            traceparent: header("traceparent"),
        };
        self.state.lock().unwrap().calls.push(call.clone());
        // extractToken: X-Session-Token wins, then the session cookie, then Authorization: Bearer.
        let entry = {
            let state = self.state.lock().unwrap();
            if let Some(token) = &call.session_token {
                state.by_token.get(token).cloned()
            } else if let Some(value) = call
                .cookie
                .as_deref()
                .and_then(|c| cookie_value(c, &self.cookie_name))
            {
                state.by_cookie.get(value.trim_matches('"')).cloned()
            } else if let Some(token) = call
                .authorization
                .as_deref()
                .and_then(|a| a.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t)
            {
                state.by_token.get(token).cloned()
            } else {
                None
            }
        };
        let no_credential =
            call.session_token.is_none() && call.cookie.is_none() && call.authorization.is_none();
        match entry {
            None => unauthorized(req.headers(), no_credential),
            Some(Entry::Fault(fault)) => match fault {
                Fault::Status(status) => error(
                    status,
                    None,
                    "Internal Server Error",
                    "An internal server error occurred, please contact the system administrator",
                    None,
                    req.headers(),
                ),
                Fault::TooManyRequests(seconds) => {
                    let mut r = error(
                        429,
                        None,
                        "Too Many Requests",
                        "rate limited",
                        None,
                        req.headers(),
                    );
                    r.headers_mut().insert("retry-after", seconds.into());
                    r
                }
                Fault::NotJson => {
                    let mut r =
                        Response::new(Full::new(Bytes::from_static(b"<html>proxy error</html>")));
                    r.headers_mut()
                        .insert("content-type", "text/html".parse().unwrap());
                    r
                }
                Fault::Delay(delay) => {
                    tokio::time::sleep(delay).await;
                    unauthorized(req.headers(), false)
                }
            },
            Some(Entry::Session(session)) => {
                answer_after(session.delay).await;
                if !session.is_active() {
                    // Revoked, expired or inactive identity: the generic 401, no error.id.
                    return unauthorized(req.headers(), false);
                }
                if session.aal == "aal1" && session.has_second_factor {
                    let redirect = format!(
                        "{}/self-service/login/browser?aal=aal2",
                        format_args!("http://{}", self.addr)
                    );
                    let mut body = herodot(
                        403,
                        Some("session_aal2_required"),
                        "Forbidden",
                        "Session does not fulfill the requested Authenticator Assurance Level",
                        Some(
                            "An active session was found but it does not fulfill the requested Authenticator Assurance Level. Please verify yourself with a second factor to resolve this issue.",
                        ),
                        req.headers(),
                    );
                    body["error"]["details"] = json!({"redirect_browser_to": redirect});
                    body["redirect_browser_to"] = json!(redirect);
                    return error_response(403, Some("session_aal2_required"), body);
                }
                let body = session.to_json(&self.url());
                let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
                let h = r.headers_mut();
                h.insert(
                    "content-type",
                    "application/json; charset=utf-8".parse().unwrap(),
                );
                h.insert(
                    "x-kratos-authenticated-identity-id",
                    session.identity_id.parse().unwrap(),
                );
                h.insert(
                    "cache-control",
                    "private, no-cache, no-store, must-revalidate"
                        .parse()
                        .unwrap(),
                );
                if let Some(max_age) = self.state.lock().unwrap().cache_for {
                    let left = session
                        .expires_at
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                        .as_secs();
                    h.insert("ory-session-cache-for", left.min(max_age).into());
                }
                r
            }
        }
    }
}

fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The 401 of `ErrNoSessionFound.WithWrap(err)`: herodot serialises the outer error, so there is
/// no `error.id` (reference/kratos.md §a, issues #4129 and #3497).
fn unauthorized(headers: &hyper::HeaderMap, no_credential: bool) -> Response<Full<Bytes>> {
    let mut r = error(
        401,
        None,
        "Unauthorized",
        "The request could not be authorized",
        Some("No valid session credentials found in the request."),
        headers,
    );
    if no_credential {
        r.headers_mut()
            .insert("ory-session-cache-for", "60".parse().unwrap());
    }
    r
}

fn herodot(
    code: u16,
    id: Option<&str>,
    status: &str,
    message: &str,
    reason: Option<&str>,
    headers: &hyper::HeaderMap,
) -> Value {
    let mut error = serde_json::Map::new();
    if let Some(id) = id {
        error.insert("id".into(), json!(id));
    }
    error.insert("code".into(), json!(code));
    error.insert("status".into(), json!(status));
    if let Some(request) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        error.insert("request".into(), json!(request));
    }
    if let Some(reason) = reason {
        error.insert("reason".into(), json!(reason));
    }
    error.insert("message".into(), json!(message));
    json!({"error": error})
}

fn error(
    code: u16,
    id: Option<&str>,
    status: &str,
    message: &str,
    reason: Option<&str>,
    headers: &hyper::HeaderMap,
) -> Response<Full<Bytes>> {
    error_response(
        code,
        id,
        herodot(code, id, status, message, reason, headers),
    )
}

/// Herodot's error writer: `application/json` without charset, `Ory-Error-Id` (empty without id).
fn error_response(code: u16, id: Option<&str>, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    let h = r.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("ory-error-id", id.unwrap_or("").parse().unwrap());
    h.insert(
        "cache-control",
        "private, no-cache, no-store, must-revalidate"
            .parse()
            .unwrap(),
    );
    r
}

/// Waits `delay` before answering, to within a fraction of a millisecond: tokio's timer rounds
/// a sleep up to its next millisecond tick, so a "2 ms" Kratos would answer after 2 to 3 ms
/// (the benchmarks' fixed-latency Kratos). Short delays wait on one timer thread that sleeps
/// on a condition variable until the earliest deadline; long ones (tests) on tokio's timer.
async fn answer_after(delay: Duration) {
    if delay.is_zero() {
        return;
    }
    if delay >= Duration::from_millis(50) {
        tokio::time::sleep(delay).await;
        return;
    }
    let (done, wait) = tokio::sync::oneshot::channel();
    precise_timer().add(std::time::Instant::now() + delay, done);
    let _ = wait.await;
}

/// Deadlines waiting on the precise timer thread, earliest first.
struct PreciseTimer {
    due: Mutex<std::collections::BinaryHeap<Deadline>>,
    changed: std::sync::Condvar,
}

struct Deadline {
    at: std::time::Instant,
    done: tokio::sync::oneshot::Sender<()>,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Deadline {}
impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Deadline {
    // Reversed: the max-heap then pops the earliest deadline.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

impl PreciseTimer {
    fn add(&self, at: std::time::Instant, done: tokio::sync::oneshot::Sender<()>) {
        self.due.lock().unwrap().push(Deadline { at, done });
        self.changed.notify_one();
    }

    fn run(&self) {
        let mut due = self.due.lock().unwrap();
        loop {
            let now = std::time::Instant::now();
            while due.peek().is_some_and(|d| d.at <= now) {
                let _ = due.pop().map(|d| d.done.send(()));
            }
            due = match due.peek().map(|d| d.at - now) {
                Some(wait) => self.changed.wait_timeout(due, wait).unwrap().0,
                None => self.changed.wait(due).unwrap(),
            };
        }
    }
}

fn precise_timer() -> &'static PreciseTimer {
    static TIMER: std::sync::OnceLock<&'static PreciseTimer> = std::sync::OnceLock::new();
    TIMER.get_or_init(|| {
        let timer: &'static PreciseTimer = Box::leak(Box::new(PreciseTimer {
            due: Mutex::new(std::collections::BinaryHeap::new()),
            changed: std::sync::Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("kratos-stand-in-timer".into())
            .spawn(move || timer.run())
            .expect("timer thread");
        timer
    })
}
