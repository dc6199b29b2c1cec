//! Running Iris in production (DESIGN.md §5): metrics, request ids, TLS, limits, shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use iris::config::{GoDuration, TlsConfig};

/// Kills the child if a test fails before it exits on its own.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The real binary serving `raw` (JSON logs), once it logs that it listens.
struct Served {
    child: KillOnDrop,
    pid: String,
    /// The public listener's address.
    public: String,
    /// The lines it writes to stderr after `listening`.
    lines: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(mut raw: iris::config::RawConfig) -> Served {
        raw.log.format = iris::config::LogFormat::Json;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iris.yaml");
        std::fs::write(&path, serde_json::to_string(&raw).unwrap()).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_iris"))
            .args(["serve", "-c"])
            .arg(&path)
            .env_clear()
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let pid = child.id().to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let public = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("iris logs that it listens");
            let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if json["message"] == "listening" {
                break json["public"].as_str().unwrap().to_owned();
            }
        };
        Served {
            child: KillOnDrop(Some(child)),
            pid,
            public,
            lines: rx,
            _dir: dir,
        }
    }

    /// Sends `signal` (`-TERM`, `-INT`) and waits for the exit status.
    async fn stop_with(self, signal: &str) -> std::process::ExitStatus {
        self.stop_and_read(signal).await.0
    }

    /// As [`Served::stop_with`], with every JSON line it wrote to stderr after `listening`.
    async fn stop_and_read(
        mut self,
        signal: &str,
    ) -> (std::process::ExitStatus, Vec<serde_json::Value>) {
        Command::new("kill")
            .args([signal, &self.pid])
            .status()
            .unwrap();
        let mut child = self.child.0.take().unwrap();
        let lines = self.lines;
        tokio::task::spawn_blocking(move || {
            let status = child.wait().unwrap();
            // The reader thread ends at EOF, once the process and its pipe are gone.
            let lines = lines
                .iter()
                .map(|line| serde_json::from_str(&line).unwrap_or_default())
                .collect();
            (status, lines)
        })
        .await
        .unwrap()
    }
}

/// Metrics are scraped and parsed; after successes and failures the counters move as expected.
#[tokio::test]
async fn metrics_count_requests_exchanges_and_upstream_calls() {
    let (_kratos, iris) = start_with_alice().await;
    let before = scrape(&iris).await;
    assert!(before.ends_with("# EOF\n"), "OpenMetrics text: {before}");
    for _ in 0..2 {
        assert_eq!(exchange_as_orders(&iris, &[]).await.status, 200);
    }
    post_form(
        &iris,
        &exchange_form(ALICE_TOKEN, &[]),
        Auth::Basic("orders-service", "wrong"),
    )
    .await;
    post_form(
        &iris,
        &exchange_form("ory_st_unknown", &[]),
        Auth::Basic("orders-service", ORDERS_SECRET),
    )
    .await;
    let after = scrape(&iris).await;
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        delta(r#"iris_http_requests_total{route="token",status="200"}"#),
        2.0,
        "{after}"
    );
    assert_eq!(
        delta(r#"iris_http_requests_total{route="token",status="401"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"iris_http_requests_total{route="token",status="400"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"iris_token_exchanges_total{client_id="orders-service",outcome="issued"}"#),
        2.0
    );
    assert_eq!(
        delta(
            r#"iris_token_exchanges_total{client_id="orders-service",outcome="invalid_request"}"#
        ),
        1.0
    );
    assert_eq!(
        delta(r#"iris_token_exchanges_total{client_id="-",outcome="invalid_client"}"#),
        1.0,
        "unauthenticated clients are not labels"
    );
    assert_eq!(
        delta(
            r#"iris_upstream_request_duration_seconds_count{upstream="kratos",operation="whoami"}"#
        ),
        3.0
    );
    assert_eq!(
        delta(r#"iris_http_request_duration_seconds_count{route="token"}"#),
        4.0
    );
    assert!(!after.contains("wrong"), "no request input in labels");
}

/// X-Request-Id is taken from the caller (or made), returned, and sent to Kratos with traceparent.
#[tokio::test]
async fn request_ids_and_traceparent_reach_kratos() {
    let (kratos, iris) = start_with_alice().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = serde_urlencoded::to_string(exchange_form(ALICE_TOKEN, &[])).unwrap();
    let response = http()
        .post(iris.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", basic("orders-service", ORDERS_SECRET))
        .header("x-request-id", "req-42")
        .header("traceparent", traceparent)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let call = &kratos.call_log()[0];
    assert_eq!(call.request_id.as_deref(), Some("req-42"));
    assert_eq!(call.traceparent.as_deref(), Some(traceparent));
    // Without one, Iris makes one, answers with it, and Kratos sees the same.
    let response = http()
        .post(iris.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", basic("orders-service", ORDERS_SECRET))
        .body(body)
        .send()
        .await
        .unwrap();
    let made = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(made.len(), 32);
    assert_eq!(
        kratos.call_log()[1].request_id.as_deref(),
        Some(made.as_str())
    );
}

/// A self-signed certificate and key (PEM) for 127.0.0.1 and localhost, with its CA certificate.
fn certificate(dir: &std::path::Path) -> (TlsConfig, reqwest::Certificate) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    (
        TlsConfig {
            cert_path,
            key_path,
        },
        reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap(),
    )
}

/// With serve.public.tls, an exchange works over HTTPS (h2 by ALPN too) and the issuer is https.
#[tokio::test]
async fn an_exchange_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca) = certificate(dir.path());
    let kratos = Kratos::start().await;
    kratos.add_token(ALICE_TOKEN, Entry::Session(SessionRecord::alice()));
    let mut raw = config(&kratos);
    raw.serve.public.tls = Some(tls);
    let iris = TestIris::start(raw).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([ca.clone()])
        .build()
        .unwrap();
    let url = format!("https://{}/oauth2/token", iris.addr);
    let response = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", basic("orders-service", ORDERS_SECRET))
        .body(serde_urlencoded::to_string(exchange_form(ALICE_TOKEN, &[])).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.version(),
        reqwest::Version::HTTP_2,
        "ALPN offers h2"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    let (_, claims) = jwt_parts(body["access_token"].as_str().unwrap());
    assert_eq!(
        claims["iss"],
        format!("https://127.0.0.1:{}/", iris.addr.port())
    );
    // A client that offers only http/1.1 by ALPN is served HTTP/1.1.
    let http1 = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let response = http1
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", basic("orders-service", ORDERS_SECRET))
        .body(serde_urlencoded::to_string(exchange_form(ALICE_TOKEN, &[])).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200);
    // Plain HTTP on the TLS port gets no token.
    let plain = http().post(iris.token_url()).body("x").send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

/// A TLS terminator in front of a plain stand-in, with a certificate from the test's own CA.
async fn tls_front(target: std::net::SocketAddr, tls: &TlsConfig) -> std::net::SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(&tls.cert_path)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&tls.key_path).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let (Ok(mut tls), Ok(mut plain)) = (
                    acceptor.accept(stream).await,
                    tokio::net::TcpStream::connect(target).await,
                ) {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    addr
}

/// upstream.ca_path: Kratos behind a private CA is trusted with it, and refused (503) without it.
#[tokio::test]
async fn a_private_ca_for_kratos() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, _) = certificate(dir.path());
    let (kratos, _plain_iris) = start_with_alice().await;
    let front = tls_front(kratos.addr, &tls).await;
    let mut raw = config(&kratos);
    raw.kratos.public_url = format!("https://localhost:{}", front.port());
    let untrusting = TestIris::start(raw.clone()).await;
    exchange_as_orders(&untrusting, &[])
        .await
        .assert_error(503, "temporarily_unavailable");
    raw.upstream.ca_path = Some(dir.path().join("ca.pem"));
    let trusting = TestIris::start(raw).await;
    let answer = exchange_as_orders(&trusting, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
}

/// A connection that trickles its headers is closed after serve.public.header_read_timeout,
/// while other clients are served.
#[tokio::test]
async fn slow_headers_are_cut_off() {
    let kratos = Kratos::start().await;
    kratos.add_token(ALICE_TOKEN, Entry::Session(SessionRecord::alice()));
    let mut raw = config(&kratos);
    raw.serve.public.header_read_timeout = GoDuration(Duration::from_secs(1));
    let iris = TestIris::start(raw).await;
    let mut slow = tokio::net::TcpStream::connect(iris.addr).await.unwrap();
    slow.write_all(b"POST /oauth2/token HTTP/1.1\r\nHost: iris\r\n")
        .await
        .unwrap();
    let trickle = async {
        for byte in
            b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                .iter()
                .cycle()
                .take(300)
        {
            if slow.write_all(&[*byte]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut buf = [0u8; 64];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
            {
                return true;
            }
        }
        false
    };
    let others = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        exchange_as_orders(&iris, &[]).await.status
    };
    let (closed, other_status) = tokio::join!(trickle, others);
    assert_eq!(other_status, 200, "other clients are served meanwhile");
    assert!(closed, "the trickling connection was never closed");
}

/// A connection that never sends a byte is closed after serve.public.header_read_timeout, so
/// idle sockets cannot hold the connection limit's slots forever.
#[tokio::test]
async fn a_silent_connection_is_closed() {
    let kratos = Kratos::start().await;
    let mut raw = config(&kratos);
    raw.serve.public.header_read_timeout = GoDuration(Duration::from_secs(1));
    let iris = TestIris::start(raw).await;
    let mut silent = tokio::net::TcpStream::connect(iris.addr).await.unwrap();
    assert_closed_by_iris(&mut silent, "the silent connection").await;
}

/// Shutdown: 50 exchanges in flight against a slow Kratos, SIGTERM to the real binary: every one
/// completes with 200 and the process exits 0.
#[tokio::test]
async fn sigterm_drains_in_flight_exchanges() {
    let kratos = Kratos::start().await;
    let mut slow = SessionRecord::alice();
    slow.delay = Duration::from_millis(1500);
    // One session per exchange: concurrent exchanges of one session would share a whoami call.
    let tokens: Vec<String> = (0..50).map(|i| format!("ory_st_shutdown{i:032}")).collect();
    for token in &tokens {
        kratos.add_token(token, Entry::Session(slow.clone()));
    }
    let mut raw = config(&kratos);
    raw.kratos.timeout = GoDuration(Duration::from_secs(10));
    let served = Served::start(raw);
    let public = served.public.clone();
    let url = format!("http://{public}/oauth2/token");
    let body = serde_urlencoded::to_string(exchange_form(ALICE_TOKEN, &[])).unwrap();
    let mut in_flight = Vec::new();
    for token in &tokens {
        let url = url.clone();
        let body = serde_urlencoded::to_string(exchange_form(token, &[])).unwrap();
        in_flight.push(tokio::spawn(async move {
            http()
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", basic("orders-service", ORDERS_SECRET))
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    // Wait until every request has reached Kratos, then ask Iris to stop.
    for _ in 0..200 {
        if kratos.calls() >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(kratos.calls(), 50, "all 50 exchanges are in flight");
    let stopping = tokio::spawn(served.stop_and_read("-TERM"));
    for request in in_flight {
        assert_eq!(request.await.unwrap().expect("answered"), 200);
    }
    let (status, lines) = stopping.await.unwrap();
    assert!(status.success(), "exit status {status}");
    // Every exchange left its audit line before the process exited, and the drain was logged.
    let audits = lines
        .iter()
        .filter(|l| l["target"] == "iris::audit")
        .count();
    assert_eq!(audits, 50, "audit lines: {lines:?}");
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shutting down"))),
        "{lines:?}"
    );
    // New connections are refused once it is gone.
    assert!(http().post(url).body(body).send().await.is_err());
}

/// Request lines are written while Iris runs, not only at exit, each one whole: worker threads
/// hold their lines until they run out of work (telemetry::batch), and 8 connections on two
/// threads must not interleave them.
#[tokio::test]
async fn request_lines_are_written_whole_while_iris_runs() {
    let kratos = Kratos::start().await;
    let served = Served::start(config(&kratos));
    let url = format!("http://{}{DISCOVERY}", served.public);
    let client = http();
    let requests = (0..8).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            for _ in 0..25 {
                let status = client.get(&url).send().await.unwrap().status();
                assert_eq!(status, 200);
            }
        })
    });
    for request in requests.collect::<Vec<_>>() {
        request.await.unwrap();
    }
    let lines = served.lines;
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen = 0;
        while seen < 200 {
            // 30 s: a hang guard; the lines come once the threads are idle.
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .expect("all 200 request lines while iris runs");
            let json: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not one whole JSON line ({e}): {line}"));
            if json["target"] == "iris::request" && json["path"] == DISCOVERY {
                assert_eq!(json["status"], 200, "{line}");
                seen += 1;
            }
        }
        seen
    })
    .await
    .unwrap();
    assert_eq!(seen, 200);
    drop(served.child);
}

/// upstream.ca_path also covers the pass-through to an https Hydra (its own TLS client).
#[tokio::test]
async fn a_private_ca_for_hydra_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, _) = certificate(dir.path());
    let kratos = Kratos::start().await;
    let hydra = crate::support::hydra::Hydra::start().await;
    let front = tls_front(hydra.public_addr(), &tls).await;
    let mut raw = config(&kratos);
    raw.hydra = Some(iris::config::HydraConfig {
        public_url: format!("https://localhost:{}", front.port()),
        admin_url: hydra.admin_url(),
        ..Default::default()
    });
    let untrusting = TestIris::start(raw.clone()).await;
    let refused = http()
        .get(format!("{}/userinfo", untrusting.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 502);
    raw.upstream.ca_path = Some(dir.path().join("ca.pem"));
    let trusting = TestIris::start(raw).await;
    let echoed = get(format!("{}/userinfo", trusting.url())).await;
    assert_eq!(echoed.status, 200);
    assert_eq!(echoed.json["path"], "/userinfo");
    let proto = echoed.json["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "x-forwarded-proto")
        .map(|h| h[1].clone());
    assert_eq!(
        proto,
        Some(serde_json::json!("http")),
        "Iris's own listener is plain here"
    );
}

/// serve.public.max_connections: at the limit a new client waits until a connection closes.
#[tokio::test]
async fn the_connection_limit_makes_new_clients_wait() {
    let kratos = Kratos::start().await;
    kratos.add_token(ALICE_TOKEN, Entry::Session(SessionRecord::alice()));
    let mut raw = config(&kratos);
    raw.serve.public.max_connections = 1;
    let iris = TestIris::start(raw).await;
    // One keep-alive connection holds the only slot.
    let mut held = tokio::net::TcpStream::connect(iris.addr).await.unwrap();
    held.write_all(format!("GET /nope HTTP/1.1\r\nHost: {}\r\n\r\n", iris.addr).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = held.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    let waiting = tokio::spawn({
        let url = iris.token_url();
        async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", basic("orders-service", ORDERS_SECRET))
                .body(serde_urlencoded::to_string(exchange_form(ALICE_TOKEN, &[])).unwrap())
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a second connection was served past the limit"
    );
    assert_eq!(kratos.calls(), 0);
    drop(held);
    assert_eq!(
        waiting.await.unwrap().unwrap(),
        200,
        "served once the slot is free"
    );
}

/// serve.public.request_timeout: an exchange stuck on a slow Kratos is answered 503
/// temporarily_unavailable (with Retry-After), not left hanging.
#[tokio::test]
async fn a_request_past_its_timeout_is_answered() {
    let kratos = Kratos::start().await;
    let mut slow = SessionRecord::alice();
    slow.delay = Duration::from_secs(5);
    kratos.add_token(ALICE_TOKEN, Entry::Session(slow));
    let mut raw = config(&kratos);
    raw.kratos.timeout = GoDuration(Duration::from_secs(30));
    raw.serve.public.request_timeout = GoDuration(Duration::from_millis(500));
    let iris = TestIris::start(raw).await;
    let answer = exchange_as_orders(&iris, &[]).await;
    answer.assert_error(503, "temporarily_unavailable");
    assert!(answer.header("retry-after").is_some());
    assert!(answer.header("x-request-id").is_some());
}

/// SIGINT stops the binary as SIGTERM does: exit 0.
#[tokio::test]
async fn sigint_stops_cleanly() {
    let kratos = Kratos::start().await;
    let status = Served::start(config(&kratos)).stop_with("-INT").await;
    assert!(status.success(), "exit status {status}");
}

// === Idle keep-alive connections are parked ===

/// A raw connection to Iris that has had one exchange (a 404) and is now idle.
async fn answered_once(iris: &TestIris) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(iris.addr).await.unwrap();
    stream
        .write_all(format!("GET /nope HTTP/1.1\r\nHost: {}\r\n\r\n", iris.addr).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    stream
}

/// Iris closes `stream` (EOF or reset); the 30 s timeout is a hang guard only.
async fn assert_closed_by_iris(stream: &mut tokio::net::TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "{what} was not closed: {read:?}"
    );
}

const DISCOVERY: &str = "/.well-known/openid-configuration";
const PARKED: &str = r#"iris_parked_connections{listener="public"}"#;
const OPEN: &str = r#"iris_open_connections{listener="public"}"#;

/// A keep-alive connection idle for a while is parked (hyper's buffers released) and serves its
/// next request on the same socket.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_parked_and_serves_its_next_request() {
    let (_kratos, iris) = start_with_alice().await;
    let mut sender = one_connection(&iris).await;
    assert_eq!(get_over(&mut sender, &iris, DISCOVERY).await.0, 200);
    until_gauge(&iris, PARKED, 1.0).await;
    assert_eq!(sample(&scrape(&iris).await, OPEN), 1.0);
    let (status, document) = get_over(&mut sender, &iris, DISCOVERY).await;
    assert_eq!(status, 200);
    assert_eq!(document["issuer"], format!("{}/", iris.url()));
    assert_eq!(
        sample(&scrape(&iris).await, PARKED),
        0.0,
        "woken by its request"
    );
    // And parked again once idle.
    until_gauge(&iris, PARKED, 1.0).await;
    drop(sender);
    until_gauge(&iris, OPEN, 0.0).await;
    assert_eq!(sample(&scrape(&iris).await, PARKED), 0.0);
}

/// Sends a discovery request on `stream` in two parts 1.5 s apart (longer than
/// PARK_IDLE_AFTER) and returns the head of the answer, lower-cased.
async fn discovery_in_two_parts(stream: &mut tokio::net::TcpStream, iris: &TestIris) -> String {
    let request = format!(
        "GET /.well-known/openid-configuration HTTP/1.1\r\nHost: {}\r\n\r\n",
        iris.addr
    );
    let (first, rest) = request.split_at(30);
    stream.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(rest.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut head)).await;
    String::from_utf8_lossy(&head[..read.expect("answered").unwrap()]).to_lowercase()
}

/// A request head that is half read when its connection is parked loses none of its bytes.
#[tokio::test]
async fn a_request_split_across_the_park_is_served() {
    let (_kratos, iris) = start_with_alice().await;
    // A first exchange: hyper parks only between exchanges. Then hyper has read the first part
    // of the next request when the connection is parked.
    let mut stream = answered_once(&iris).await;
    let head = discovery_in_two_parts(&mut stream, &iris).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

/// A first request head that trickles in for longer than the park delay is answered on a
/// connection that stays open: only connections between exchanges are parked.
#[tokio::test]
async fn a_slow_first_request_keeps_its_connection() {
    let (_kratos, iris) = start_with_alice().await;
    let mut stream = tokio::net::TcpStream::connect(iris.addr).await.unwrap();
    let head = discovery_in_two_parts(&mut stream, &iris).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
}

/// A parked connection still ends after serve.public.header_read_timeout without a request.
#[tokio::test]
async fn a_parked_connection_is_closed_after_the_header_read_timeout() {
    let kratos = Kratos::start().await;
    let mut raw = config(&kratos);
    raw.serve.public.header_read_timeout = GoDuration(Duration::from_secs(2));
    let iris = TestIris::start(raw).await;
    let mut stream = answered_once(&iris).await;
    until_gauge(&iris, PARKED, 1.0).await;
    assert_closed_by_iris(&mut stream, "the idle connection").await;
    until_gauge(&iris, OPEN, 0.0).await;
}

/// Shutdown closes parked connections at once: they have no request to drain.
#[tokio::test]
async fn shutdown_closes_parked_connections() {
    let kratos = Kratos::start().await;
    let mut raw = config(&kratos);
    // Longer than the hang guard below: only the shutdown can close the connection in time.
    raw.serve.public.header_read_timeout = GoDuration(Duration::from_secs(120));
    raw.serve.shutdown_grace = GoDuration(Duration::from_secs(120));
    let iris = TestIris::start(raw).await;
    let mut stream = answered_once(&iris).await;
    until_gauge(&iris, PARKED, 1.0).await;
    let stopped = tokio::spawn(iris.stop());
    assert_closed_by_iris(&mut stream, "the parked connection, at shutdown,").await;
    tokio::time::timeout(Duration::from_secs(30), stopped)
        .await
        .expect("the server stopped without waiting out the grace period")
        .unwrap();
}
