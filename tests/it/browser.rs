//! The session bridge in a real browser: headless Chromium (Debian's `chromium`, installed by
//! .ci/run) loads examples/spa/index.html from an allowed origin and from a disallowed one. The
//! origins differ only by port, so both are same-site with Iris and the Kratos cookie flows to
//! both calls; only the allowed page gets a token.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::bridge::{COOKIE, bridge_config};
use crate::support::*;
use iris::config::BridgeResponse;

const PAGE: &str = include_str!("../../examples/spa/index.html");

/// Serves the example page and a fake login that sets the Kratos cookie (HttpOnly, SameSite=Lax,
/// as Kratos does), and collects what the page reports.
struct PageServer {
    origin: String,
    reports: Arc<Mutex<Vec<Value>>>,
}

impl PageServer {
    async fn start(listener: tokio::net::TcpListener) -> PageServer {
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let reports: Arc<Mutex<Vec<Value>>> = Arc::default();
        let collected = reports.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let reports = collected.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let reports = reports.clone();
                            async move {
                                let path = req.uri().path().to_owned();
                                let query = req.uri().query().unwrap_or("").to_owned();
                                let mut response = hyper::Response::new(Full::new(Bytes::new()));
                                match path.as_str() {
                                    "/login" => {
                                        *response.status_mut() = hyper::StatusCode::FOUND;
                                        let h = response.headers_mut();
                                        h.insert("set-cookie", format!("ory_kratos_session={COOKIE}; Path=/; HttpOnly; SameSite=Lax").parse().unwrap());
                                        h.insert(
                                            "location",
                                            format!("/app?{query}").parse().unwrap(),
                                        );
                                    }
                                    "/app" => {
                                        *response.body_mut() =
                                            Full::new(Bytes::from_static(PAGE.as_bytes()));
                                        response.headers_mut().insert(
                                            "content-type",
                                            "text/html; charset=utf-8".parse().unwrap(),
                                        );
                                    }
                                    "/result" => {
                                        let body = req
                                            .into_body()
                                            .collect()
                                            .await
                                            .map(|b| b.to_bytes())
                                            .unwrap_or_default();
                                        reports.lock().unwrap().push(
                                            serde_json::from_slice(&body).unwrap_or(Value::Null),
                                        );
                                    }
                                    _ => *response.status_mut() = hyper::StatusCode::NOT_FOUND,
                                }
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        PageServer { origin, reports }
    }

    /// Waits for the page's report (a hang guard, not a timing assertion).
    async fn report(&self) -> Value {
        for _ in 0..600 {
            if let Some(report) = self.reports.lock().unwrap().first().cloned() {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page at {} never reported", self.origin);
    }
}

/// Headless Chromium on one URL, killed when dropped.
struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn open(url: &str) -> Chromium {
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("Chromium is required for the browser test: apt-get install chromium (.ci/run does)");
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        Chromium {
            child,
            _profile: profile,
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A page on an allowed origin gets a token that verifies against Iris's JWKS with one fetch;
/// a page on another origin of the same site cannot, and Kratos is never asked for it.
#[tokio::test]
async fn only_an_allowed_page_gets_a_token_in_chromium() {
    let allowed_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let allowed = PageServer::start(allowed_listener).await;
    let other = PageServer::start(other_listener).await;

    let kratos = Kratos::start().await;
    kratos.add_cookie(COOKIE, Entry::Session(SessionRecord::alice()));
    let iris = TestIris::start(bridge_config(
        &kratos,
        &[&allowed.origin],
        BridgeResponse::Token,
    ))
    .await;
    let bridge = format!("{}/session/bridge", iris.url());
    let query =
        serde_urlencoded::to_string([("bridge", bridge.as_str()), ("report", "/result")]).unwrap();

    let browser = Chromium::open(&format!("{}/login?{query}", allowed.origin));
    let report = allowed.report().await;
    drop(browser);
    assert_eq!(report["ok"], true, "the allowed page: {report}");
    assert_eq!(kratos.calls(), 1);
    let access_token = report["access_token"].as_str().unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet = http()
        .get(format!("{}/.well-known/jwks.json", iris.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(access_token).unwrap();
    let key =
        jsonwebtoken::DecodingKey::from_jwk(jwks.find(header.kid.as_deref().unwrap()).unwrap())
            .unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&[ORDERS_API]);
    validation.set_issuer(&[format!("{}/", iris.url())]);
    let verified =
        jsonwebtoken::decode::<Value>(access_token, &key, &validation).expect("the token verifies");
    assert_eq!(verified.claims["client_id"], "spa");
    assert_eq!(
        verified.claims["sub"],
        "5ff66179-c240-4703-b0d8-494592cefff5"
    );

    let browser = Chromium::open(&format!("{}/login?{query}", other.origin));
    let report = other.report().await;
    drop(browser);
    assert_eq!(report["ok"], false, "the disallowed page: {report}");
    assert!(report.get("access_token").is_none());
    assert_eq!(
        kratos.calls(),
        1,
        "the disallowed page's call never reached Kratos"
    );
}
