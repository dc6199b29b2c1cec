//! Iris's connections to Hydra's public port: a plain HTTP/1 client connection sends its requests
//! on one upstream connection of its own (its lane), hands it to a bounded idle pool when it
//! closes or parks, and a connection Hydra closed is replaced without the client seeing an error.
//! Idle connections, and the pooled client HTTP/2 client connections use, belong to one worker.
//! Connections are counted by the Hydra stand-in (tests/support/hydra.rs).

use std::time::Duration;

use http_body_util::Empty;

use crate::support::hydra::Hydra;
use crate::support::*;
use iris::config::HydraConfig;

const IDLE_UPSTREAMS: &str = "iris_upstream_idle_connections";
/// A pass-through path the Hydra stand-in echoes.
const USERINFO: &str = "/userinfo/lane?x=1";

/// Kratos, the Hydra stand-in and Iris in front of it.
async fn front() -> (Kratos, Hydra, TestIris) {
    let kratos = Kratos::start().await;
    let hydra = Hydra::start().await;
    let mut raw = config(&kratos);
    raw.hydra = Some(HydraConfig {
        public_url: hydra.public_url(),
        admin_url: hydra.admin_url(),
        ..Default::default()
    });
    let iris = TestIris::start(raw).await;
    (kratos, hydra, iris)
}

/// Waits until the stand-in has `count` public connections open; panics after 10 s (a hang
/// guard, not a timing check).
async fn until_hydra_holds(hydra: &Hydra, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while hydra.open_public_connections() != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Hydra holds {} public connections, expected {count}",
            hydra.open_public_connections()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Twenty requests on one keep-alive client connection reach Hydra on one connection, each one
/// as the client sent it (path, query, Host).
#[tokio::test]
async fn a_keep_alive_client_connection_uses_one_hydra_connection() {
    let (_kratos, hydra, iris) = front().await;
    let before = hydra.public_connections();
    let mut client = one_connection(&iris).await;
    for _ in 0..20 {
        let (status, seen) = get_over(&mut client, &iris, USERINFO).await;
        assert_eq!(status, 200, "{seen}");
        assert_eq!(seen["path"], "/userinfo/lane");
        assert_eq!(seen["query"], "x=1");
    }
    assert_eq!(hydra.public_connections() - before, 1);
    assert_eq!(hydra.count("/userinfo/lane"), 20);
}

/// Opens a connection to every public worker but one, so that the next client connection lands
/// on the worker the last one did: the accept loop deals connections to the workers in turn
/// (server::workers). Keep them open until that client connection has been accepted.
async fn skip_the_other_workers(iris: &TestIris) -> Vec<tokio::net::TcpStream> {
    let mut others = Vec::new();
    for _ in 1..iris::server::public_workers() {
        others.push(tokio::net::TcpStream::connect(iris.addr).await.unwrap());
    }
    others
}

/// A client connection that closes leaves its Hydra connection idle for the next client
/// connection on its worker thread; client connections are dealt to the workers in turn, and a
/// worker never takes another's idle connection (its socket belongs to the other's reactor).
#[tokio::test]
async fn a_closed_client_connections_hydra_connection_serves_the_next_on_its_worker() {
    let (_kratos, hydra, iris) = front().await;
    let workers = iris::server::public_workers();
    let before = hydra.public_connections();
    // One client connection per worker, one after the other: each finds its worker's pool empty.
    for opened in 1..=workers {
        let mut client = one_connection(&iris).await;
        assert_eq!(get_over(&mut client, &iris, USERINFO).await.0, 200);
        drop(client);
        until_gauge(&iris, IDLE_UPSTREAMS, opened as f64).await;
        assert_eq!(
            hydra.public_connections() - before,
            opened,
            "a new connection"
        );
    }
    // The next round, all open at once, finds one idle Hydra connection on each worker.
    let mut held = Vec::new();
    for taken in 1..=workers {
        let mut client = one_connection(&iris).await;
        assert_eq!(get_over(&mut client, &iris, USERINFO).await.0, 200);
        assert_eq!(
            hydra.public_connections() - before,
            workers,
            "client connection {taken} of the second round took its worker's idle one"
        );
        assert_eq!(
            sample(&scrape(&iris).await, IDLE_UPSTREAMS),
            (workers - taken) as f64,
            "held by the client connection"
        );
        held.push(client);
    }
}

/// Hydra closing its side (a restart) between two requests of a client connection is not the
/// client's problem: the next request goes on a new connection. While Hydra is down, the
/// pass-through answers 502 and the token endpoint 503 (DESIGN.md §6).
#[tokio::test]
async fn a_hydra_restart_between_requests_is_not_an_error() {
    let (_kratos, hydra, iris) = front().await;
    let mut client = one_connection(&iris).await;
    assert_eq!(get_over(&mut client, &iris, USERINFO).await.0, 200);
    hydra.stop();
    until_hydra_holds(&hydra, 0).await;
    assert_eq!(get_over(&mut client, &iris, USERINFO).await.0, 502);
    let token = post_form(
        &iris,
        &[("grant_type", "client_credentials")],
        Auth::Basic("nobody", "x"),
    )
    .await;
    token.assert_error(503, "temporarily_unavailable");
    hydra.restart().await;
    let (status, seen) = get_over(&mut client, &iris, USERINFO).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(hydra.count("/userinfo/lane"), 2);
}

/// An idle Hydra connection that Hydra closed while it sat in the pool is not handed out.
#[tokio::test]
async fn a_pooled_connection_hydra_closed_is_replaced() {
    let (_kratos, hydra, iris) = front().await;
    let mut first = one_connection(&iris).await;
    assert_eq!(get_over(&mut first, &iris, USERINFO).await.0, 200);
    drop(first);
    until_gauge(&iris, IDLE_UPSTREAMS, 1.0).await;
    hydra.stop();
    until_hydra_holds(&hydra, 0).await;
    hydra.restart().await;
    let before = hydra.public_connections();
    // On the first's worker, whose pool holds the closed connection.
    let others = skip_the_other_workers(&iris).await;
    let mut second = one_connection(&iris).await;
    let (status, seen) = get_over(&mut second, &iris, USERINFO).await;
    drop(others);
    assert_eq!(status, 200, "{seen}");
    assert_eq!(hydra.public_connections() - before, 1, "a new connection");
}

/// However many client connections came at once, at most MAX_IDLE_UPSTREAMS Hydra connections
/// stay open once they are gone; the rest are closed.
#[tokio::test]
async fn idle_hydra_connections_are_bounded() {
    let (_kratos, hydra, iris) = front().await;
    let clients = iris::proxy::MAX_IDLE_UPSTREAMS + 2;
    let before = hydra.public_connections();
    // Every request is held at Hydra until all have arrived: each client connection then needs
    // a Hydra connection of its own.
    let mut in_flight = Vec::new();
    for _ in 0..clients {
        let mut client = one_connection(&iris).await;
        let host = iris.addr.to_string();
        in_flight.push(tokio::spawn(async move {
            let request = hyper::Request::get("/standin/gate")
                .header("host", host)
                .body(Empty::new())
                .unwrap();
            let status = client.send_request(request).await.unwrap().status();
            (status, client)
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while hydra.count("/standin/gate") < clients {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every request reached Hydra"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hydra.open_gate();
    let mut open = Vec::new();
    for answer in in_flight {
        let (status, client) = answer.await.unwrap();
        assert_eq!(status, 200);
        open.push(client);
    }
    assert_eq!(hydra.public_connections() - before, clients);
    drop(open);
    until_gauge(
        &iris,
        IDLE_UPSTREAMS,
        iris::proxy::MAX_IDLE_UPSTREAMS as f64,
    )
    .await;
    until_hydra_holds(&hydra, iris::proxy::MAX_IDLE_UPSTREAMS).await;
}

/// HTTP/2 clients (no lane) pass through on the shared pool, with the same answer.
#[tokio::test]
async fn an_http2_client_passes_through() {
    let (_kratos, hydra, iris) = front().await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..3 {
        let response = client
            .get(format!("{}/userinfo/lane?x=1", iris.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        let answer = answer(response).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json["path"], "/userinfo/lane");
        assert_eq!(answer.json["query"], "x=1");
    }
    assert_eq!(hydra.count("/userinfo/lane"), 3);
}

/// An HTTP/2 client connection's requests go through the pooled client of its own worker thread
/// (that client's connections are tasks on the runtime that opened them): client connections
/// dealt to different workers open a Hydra connection each, and the next one on a worker reuses
/// that worker's idle one.
#[tokio::test]
async fn http2_client_connections_use_their_own_workers_hydra_connections() {
    let (_kratos, hydra, iris) = front().await;
    let workers = iris::server::public_workers();
    let before = hydra.public_connections();
    let url = format!("{}{USERINFO}", iris.url());
    // Each reqwest client opens one HTTP/2 connection to Iris, dealt to the next worker.
    let mut clients = Vec::new();
    for opened in 1..=workers + 1 {
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(answer(response).await.status, 200);
        assert_eq!(
            hydra.public_connections() - before,
            opened.min(workers),
            "client connection {opened} of {} on {workers} workers",
            workers + 1
        );
        clients.push(client);
    }
}
