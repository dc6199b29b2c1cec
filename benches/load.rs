//! The load harness: Iris, nginx, the Ory cookbook's Node exchange service and the stand-ins,
//! side by side in one run on one machine. Normally run by `bash benches/run.sh`, which installs
//! wrk, nginx and the Node modules and builds the release binary first; directly:
//! `cargo build --release && cargo bench --bench load`.
//!
//! In this process: the Kratos stand-in (tests/support/kratos.rs; every session answers after
//! BENCH_KRATOS_DELAY_MS) and the Hydra stand-in (tests/support/hydra.rs). As child processes:
//! two release `iris serve` (in front of Hydra, synthesize mode; one with `kratos.cache_ttl: 5m`,
//! one without a cache), nginx as a plain reverse proxy to Hydra's public port, the Node
//! baseline, and wrk for every measurement. Everything shares this machine's cores: the numbers
//! are for comparing the rows of one run, not absolute capacity.
//!
//! Settings (environment): BENCH_DURATION (seconds per measurement, 8), BENCH_WARMUP (2),
//! BENCH_CONNECTIONS (64), BENCH_LATENCY_CONNECTIONS (4), BENCH_WRK_THREADS (1),
//! BENCH_SESSIONS (1000), BENCH_KRATOS_DELAY_MS (2), BENCH_IDLE_CONNECTIONS (10000),
//! BENCH_ROUNDS (3: every step is measured once per round and the median run is reported),
//! BENCH_QUIET (1: request logging off in Iris and nginx; default on in both, to files),
//! BENCH_ONLY (comma-separated groups to run: pass-through, reconnect, exchange, latency; default all;
//! BENCH_IDLE_CONNECTIONS=0 skips the memory step), BENCH_OUT (also write the Markdown report
//! there), IRIS_BIN (default target/release/iris), IRIS_BIN_COMPARE (another build of Iris, say
//! of the previous commit: it runs beside the first, twice, with and without the session cache,
//! and gets its own pass-through, cached-exchange and uncached-latency rows in every round, for
//! an A/B within one run), IRIS_COMPARE_WORKERS (TOKIO_WORKER_THREADS for the compare build only;
//! without IRIS_BIN_COMPARE the compare build is IRIS_BIN itself).

#[path = "../tests/support/hydra.rs"]
mod hydra;
#[path = "../tests/support/kratos.rs"]
mod kratos;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use kratos::{Entry, Kratos, SessionRecord};

const AUDIENCE: &str = "https://orders.example.com";
const CLIENT_ID: &str = "bench-service";
const CLIENT_SECRET: &str = "bench-secret";
const EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const SESSION_TYPE: &str = "urn:ietf:params:oauth:token-type:session";

fn main() {
    let settings = Settings::from_env();
    let nofile = raise_nofile_limit();
    // The stand-ins' runtime: one worker per core, whatever TOKIO_WORKER_THREADS says (that
    // variable is for the Iris processes, which inherit the environment).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = runtime.block_on(run(settings, nofile));
    print!("{report}");
    if let Ok(path) = std::env::var("BENCH_OUT") {
        if let Some(dir) = Path::new(&path).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(&path, &report).expect("write BENCH_OUT");
        eprintln!("report written to {path}");
    }
}

struct Settings {
    duration: u64,
    warmup: u64,
    connections: usize,
    latency_connections: usize,
    wrk_threads: usize,
    sessions: usize,
    kratos_delay: Duration,
    idle_connections: usize,
    /// Measurements of each step; the median one is reported.
    rounds: usize,
    /// BENCH_QUIET=1: no per-request logs (Iris `log.level: warn`, nginx `access_log off`).
    quiet: bool,
    root: PathBuf,
    iris_bin: PathBuf,
    /// IRIS_BIN_COMPARE: a second build measured beside the first.
    compare_bin: Option<PathBuf>,
    /// IRIS_COMPARE_WORKERS: the compare build's TOKIO_WORKER_THREADS.
    compare_workers: Option<String>,
}

impl Settings {
    fn from_env() -> Settings {
        let num = |name: &str, default: u64| -> u64 {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let iris_bin = std::env::var("IRIS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target/release/iris"));
        Settings {
            duration: num("BENCH_DURATION", 8),
            warmup: num("BENCH_WARMUP", 2),
            connections: num("BENCH_CONNECTIONS", 64) as usize,
            latency_connections: num("BENCH_LATENCY_CONNECTIONS", 4) as usize,
            wrk_threads: num("BENCH_WRK_THREADS", 1) as usize,
            sessions: num("BENCH_SESSIONS", 1000) as usize,
            kratos_delay: Duration::from_millis(num("BENCH_KRATOS_DELAY_MS", 2)),
            idle_connections: num("BENCH_IDLE_CONNECTIONS", 10_000) as usize,
            rounds: num("BENCH_ROUNDS", 3).max(1) as usize,
            quiet: num("BENCH_QUIET", 0) == 1,
            root,
            compare_bin: std::env::var_os("IRIS_BIN_COMPARE")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("IRIS_COMPARE_WORKERS").map(|_| iris_bin.clone())),
            compare_workers: std::env::var("IRIS_COMPARE_WORKERS").ok(),
            iris_bin,
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (children inherit it); returns the result.
fn raise_nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the one struct passed, which outlives the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

fn session_token(i: usize) -> String {
    format!("ory_st_bench{i:027}")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn which(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| fallbacks.iter().map(PathBuf::from).find(|p| p.is_file()))
}

fn need(name: &str, fallbacks: &[&str], hint: &str) -> PathBuf {
    which(name, fallbacks).unwrap_or_else(|| {
        eprintln!("{name} is not installed: {hint} (benches/run.sh installs it)");
        std::process::exit(2);
    })
}

// === Child processes ===

/// A child process, stopped with SIGTERM (then SIGKILL) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, command: &mut Command, log: &Path) -> Proc {
        let log = std::fs::File::create(log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        Proc { name, child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_running(&mut self, log: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{} exited ({status}):\n{text}", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_listening(addr: SocketAddr, proc: &mut Proc, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        proc.check_running(log);
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on {addr}",
            proc.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === /proc ===

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// (parent pid, utime + stime in clock ticks) of a process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// CPU ticks of a process and its direct children (nginx's workers).
fn tree_ticks(pid: u32) -> u64 {
    let mut total = stat(pid).map_or(0, |(_, t)| t);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok())
                && let Some((ppid, ticks)) = stat(child)
                && ppid == pid
            {
                total += ticks;
            }
        }
    }
    total
}

/// CPU time of reaped children (each wrk run) in seconds.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the one zeroed struct passed.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

// === wrk ===

#[derive(Clone, Copy)]
enum Mode {
    Get,
    /// GET with `Connection: close`: every request on a new connection.
    GetClose,
    Whoami,
    /// The token exchange for an access token alone: one signed JWT, as the baseline makes.
    Exchange,
    /// The same with `openid` in the scope: an access token and an ID token.
    ExchangeWithIdToken,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Get => "get",
            Mode::GetClose => "get_close",
            Mode::Whoami => "whoami",
            Mode::Exchange => "exchange",
            Mode::ExchangeWithIdToken => "exchange_openid",
        }
    }
}

struct Load<'a> {
    url: String,
    mode: Mode,
    connections: usize,
    /// The process under load (CPU accounting), if it is a child.
    server: Option<u32>,
    settings: &'a Settings,
    authorization: &'a str,
}

#[derive(Clone, Debug)]
struct Measured {
    requests: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    server_cpu: Option<f64>,
    standin_cpu: f64,
    wrk_cpu: f64,
}

fn wrk(load: &Load<'_>, seconds: u64) -> (Value, f64) {
    let s = load.settings;
    let script = s.root.join("benches/wrk/bench.lua");
    let threads = s.wrk_threads.min(load.connections).max(1);
    let before = children_cpu_seconds();
    let output = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(&script)
        .arg(&load.url)
        .env("BENCH_MODE", load.mode.name())
        .env("BENCH_SESSIONS", s.sessions.to_string())
        .env("BENCH_AUTHORIZATION", load.authorization)
        .stdin(Stdio::null())
        .output()
        .expect("wrk runs");
    let wrk_cpu = children_cpu_seconds() - before;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_JSON "))
        .unwrap_or_else(|| {
            panic!(
                "wrk printed no result for {}:\n{stdout}\n{}",
                load.url,
                String::from_utf8_lossy(&output.stderr)
            )
        });
    (serde_json::from_str(json).expect("wrk JSON"), wrk_cpu)
}

/// A warm-up run (discarded), then the measured one.
fn measure(load: &Load<'_>) -> Measured {
    let s = load.settings;
    if s.warmup > 0 {
        wrk(load, s.warmup);
    }
    let hz = ticks_per_second();
    let me = std::process::id();
    let server_before = load.server.map(tree_ticks);
    let standin_before = stat(me).map_or(0, |(_, t)| t);
    let (json, wrk_cpu) = wrk(load, s.duration);
    let standin_after = stat(me).map_or(0, |(_, t)| t);
    let server_after = load.server.map(tree_ticks);
    let field = |name: &str| json[name].as_u64().unwrap_or(0);
    let seconds = field("duration_us") as f64 / 1e6;
    let requests = field("requests");
    let errors = ["connect", "read", "write", "status", "timeout"]
        .iter()
        .map(|n| field(n))
        .sum();
    let percent = |ticks: u64| 100.0 * ticks as f64 / hz / seconds;
    Measured {
        requests,
        rps: requests as f64 / seconds,
        p50_ms: field("p50_us") as f64 / 1000.0,
        p99_ms: field("p99_us") as f64 / 1000.0,
        errors,
        server_cpu: server_before
            .zip(server_after)
            .map(|(b, a)| percent(a.saturating_sub(b))),
        standin_cpu: percent(standin_after.saturating_sub(standin_before)),
        wrk_cpu: 100.0 * wrk_cpu / seconds,
    }
}

// === Configuration files ===

fn iris_config(
    (public, admin): (u16, u16),
    kratos: &Kratos,
    hydra: &hydra::Hydra,
    cache_ttl: &str,
    key: &Path,
    secret_hash: &str,
    log_level: &str,
) -> String {
    format!(
        r#"serve:
  public: {{ host: 127.0.0.1, port: {public}, max_connections: 12000 }}
  admin: {{ host: 127.0.0.1, port: {admin} }}
kratos:
  public_url: {kratos}
  timeout: 2s
  cache_ttl: {cache_ttl}
hydra:
  public_url: {hydra_public}
  admin_url: {hydra_admin}
tokens:
  issue: synthesize
signing:
  keys:
    - path: {key}
clients:
  - client_id: {CLIENT_ID}
    client_secret_hash: "{secret_hash}"
    token_endpoint_auth_method: client_secret_basic
    grant_types: [{EXCHANGE_GRANT}]
    audience: [{AUDIENCE}]
    scope: openid email orders:read
    metadata: {{ first_party: true }}
log:
  level: {log_level}
  format: text
"#,
        kratos = kratos.url(),
        hydra_public = hydra.public_url(),
        hydra_admin = hydra.admin_url(),
        key = key.display(),
    )
}

/// nginx as a plain reverse proxy: two workers (Iris's runtime has two worker threads on this
/// machine), keep-alive to the upstream, the X-Forwarded-* headers Iris also sets, access log on.
fn nginx_config(dir: &Path, port: u16, upstream: SocketAddr, quiet: bool) -> String {
    let d = dir.display();
    let access_log = if quiet {
        "off".to_owned()
    } else {
        format!("{d}/nginx-access.log")
    };
    format!(
        r#"worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {access_log};
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    upstream hydra {{
        server {upstream};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://hydra;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
        }}
    }}
}}
"#
    )
}

// === Sanity checks ===

async fn expect_ok(request: reqwest::RequestBuilder, what: &str, token_field: Option<&str>) {
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "{what}: {status} {body}");
    if let Some(field) = token_field {
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(json[field].is_string(), "{what}: no {field} in {body}");
    }
}

fn exchange_request(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    authorization: &str,
) -> reqwest::RequestBuilder {
    http.post(url)
        .header("authorization", authorization)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("grant_type", EXCHANGE_GRANT),
                ("subject_token_type", SESSION_TYPE),
                ("scope", "openid email"),
                ("audience", AUDIENCE),
                ("subject_token", token),
            ])
            .unwrap(),
        )
}

// === 10 000 keep-alive connections ===

struct IdleResult {
    opened: usize,
    still_open: usize,
    /// With every connection open and idle past Iris's park delay.
    rss_kib: u64,
    /// The highest sample: right after the connections opened, or right after every one of
    /// them sent its second request (all of them answered within the last second).
    busy_rss_kib: u64,
    fds: usize,
    seconds: f64,
}

/// Iris parks a keep-alive connection idle this long (src/server/parking.rs PARK_IDLE_AFTER),
/// plus a margin.
const PARKED_AFTER: Duration = Duration::from_millis(2500);

/// Opens `count` HTTP/1.1 connections to `addr`, one request each (Iris answers the discovery
/// document itself), samples Iris's RSS, keeps them all open and idle until Iris has parked
/// them and samples again, then sends a second request on every connection (proving they stayed
/// open) and samples right after. Iris closes a connection that sends nothing for
/// `serve.public.header_read_timeout` (10 s): the whole cycle stays well within that.
async fn idle_connections(addr: SocketAddr, count: usize, pid: u32) -> IdleResult {
    use http_body_util::{BodyExt, Empty};
    type Sender = hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>;

    async fn get(sender: &mut Sender, addr: SocketAddr) -> bool {
        let request = hyper::Request::get("/.well-known/openid-configuration")
            .header("host", addr.to_string())
            .body(Empty::new())
            .unwrap();
        match sender.send_request(request).await {
            Ok(response) => {
                let ok = response.status().is_success();
                ok && response.into_body().collect().await.is_ok()
            }
            Err(_) => false,
        }
    }

    let started = Instant::now();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .ok()?;
            tokio::spawn(connection);
            get(&mut sender, addr).await.then_some(sender)
        }));
    }
    let mut senders = Vec::with_capacity(count);
    for task in tasks {
        if let Ok(Some(sender)) = task.await {
            senders.push(sender);
        }
    }
    let opened = senders.len();
    let mut busy_rss = proc_status_kib(pid, "VmRSS");
    tokio::time::sleep(PARKED_AFTER).await;
    let rss = proc_status_kib(pid, "VmRSS");
    let mut fds = open_fds(pid);
    // Second round: every connection is still open and usable (keep-alive, not reconnects).
    let mut rounds = Vec::with_capacity(opened);
    for mut sender in senders {
        let gate = gate.clone();
        rounds.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            get(&mut sender, addr).await.then_some(sender)
        }));
    }
    let mut alive = Vec::with_capacity(opened);
    for task in rounds {
        if let Ok(Some(sender)) = task.await {
            alive.push(sender);
        }
    }
    busy_rss = busy_rss.max(proc_status_kib(pid, "VmRSS"));
    fds = fds.max(open_fds(pid));
    let seconds = started.elapsed().as_secs_f64();
    let still_open = alive.len();
    drop(alive);
    IdleResult {
        opened,
        still_open,
        rss_kib: rss,
        busy_rss_kib: busy_rss,
        fds,
        seconds,
    }
}

// === The run ===

/// One measurement of the plan.
struct Step {
    group: &'static str,
    target: &'static str,
    url: String,
    mode: Mode,
    connections: usize,
    /// The process under load, for CPU accounting (None: this process's stand-ins).
    server: Option<u32>,
}

struct Row {
    group: &'static str,
    target: &'static str,
    connections: usize,
    /// The run with the median throughput.
    m: Measured,
    /// p99 of every round, in round order: how much the tail moved.
    p99_rounds: Vec<f64>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn verdict(met: bool) -> &'static str {
    if met { "**met**" } else { "**missed**" }
}

async fn run(s: Settings, nofile: u64) -> String {
    need("wrk", &[], "apt-get install wrk");
    let nginx_bin = need("nginx", &["/usr/sbin/nginx"], "apt-get install nginx-light");
    let node_bin = need("node", &[], "apt-get install nodejs npm");
    let tools = format!(
        "{}; nginx {}, 2 workers; Node {}",
        version(Path::new("wrk"), "--version")
            .split(" [")
            .next()
            .unwrap_or("wrk"),
        version(&nginx_bin, "-v").trim_start_matches("nginx version: nginx/"),
        version(&node_bin, "--version"),
    );
    assert!(
        s.iris_bin.is_file(),
        "{} is missing: run `cargo build --release` first",
        s.iris_bin.display()
    );
    let baseline_dir = s.root.join("benches/baselines");
    assert!(
        baseline_dir.join("node_modules/jose").is_dir(),
        "benches/baselines/node_modules is missing: run `npm ci` in benches/baselines"
    );
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();

    // Stand-ins, in this process.
    let kratos = Kratos::start().await;
    for i in 0..s.sessions {
        let mut session = SessionRecord::alice();
        session.id = format!("00000000-0000-4000-8000-{i:012}");
        session.delay = s.kratos_delay;
        kratos.add_token(&session_token(i), Entry::Session(session));
    }
    let hydra = hydra::Hydra::start().await;

    // Iris's signing key (also the baseline's) and the bench client.
    let jwk = iris::keys::generate("ES256", Some("bench-es256")).unwrap();
    let key_path = dir.join("iris-es256.jwk");
    std::fs::write(&key_path, jwk.to_string()).unwrap();
    let secret_hash = iris::clients::hash_secret(CLIENT_SECRET).unwrap();
    let authorization = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{CLIENT_ID}:{CLIENT_SECRET}")
        )
    );

    // Iris, twice: with the session cache (and the pass-through), and without a cache.
    let start_iris = |name: &'static str, cache_ttl: &str, bin: &Path, workers: Option<&str>| {
        let (public, admin) = (free_port(), free_port());
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            iris_config(
                (public, admin),
                &kratos,
                &hydra,
                cache_ttl,
                &key_path,
                &secret_hash,
                if s.quiet { "warn" } else { "info" },
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut command = Command::new(bin);
        command.arg("serve").arg("-c").arg(&config);
        if let Some(workers) = workers {
            command.env("TOKIO_WORKER_THREADS", workers);
        }
        let proc = Proc::spawn(name, &mut command, &log);
        (proc, public, admin, log)
    };
    let (mut iris_cached, cached_port, cached_admin, cached_log) =
        start_iris("iris-cached", "5m", &s.iris_bin, None);
    let (mut iris_uncached, uncached_port, uncached_admin, uncached_log) =
        start_iris("iris-uncached", "0s", &s.iris_bin, None);
    let mut compare = s
        .compare_bin
        .as_deref()
        .map(|bin| start_iris("iris-compare", "5m", bin, s.compare_workers.as_deref()));
    let mut compare_uncached = s.compare_bin.as_deref().map(|bin| {
        start_iris(
            "iris-compare-uncached",
            "0s",
            bin,
            s.compare_workers.as_deref(),
        )
    });

    let nginx_port = free_port();
    let nginx_conf = dir.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        nginx_config(dir, nginx_port, hydra.public_addr(), s.quiet),
    )
    .unwrap();
    let nginx_log = dir.join("nginx.out");
    let mut nginx = Proc::spawn(
        "nginx",
        Command::new(&nginx_bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&nginx_conf)
            .arg("-g")
            .arg("daemon off;"),
        &nginx_log,
    );

    let node_port = free_port();
    let node_log = dir.join("node.log");
    let mut node = Proc::spawn(
        "node baseline",
        Command::new(&node_bin)
            .arg(baseline_dir.join("cookbook-exchange.mjs"))
            .current_dir(&baseline_dir)
            .env("PORT", node_port.to_string())
            .env("KRATOS_URL", kratos.url())
            .env("KEY_FILE", &key_path)
            .env("AUDIENCE", AUDIENCE),
        &node_log,
    );

    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(loopback(cached_port), &mut iris_cached, &cached_log).await;
    wait_listening(loopback(uncached_port), &mut iris_uncached, &uncached_log).await;
    for (proc, port, _, log) in compare.iter_mut().chain(compare_uncached.iter_mut()) {
        wait_listening(loopback(*port), proc, log).await;
    }
    wait_listening(loopback(nginx_port), &mut nginx, &nginx_log).await;
    wait_listening(loopback(node_port), &mut node, &node_log).await;

    // Every target answers correctly before it is measured.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let compare_admins = compare
        .iter()
        .chain(compare_uncached.iter())
        .map(|(_, _, admin, _)| *admin);
    for admin in [cached_admin, uncached_admin]
        .into_iter()
        .chain(compare_admins)
    {
        let ready = format!("http://127.0.0.1:{admin}/health/ready");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !http
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "Iris is not ready: {ready}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let direct_url = format!("{}/health/alive", hydra.public_url());
    let nginx_url = format!("http://127.0.0.1:{nginx_port}/health/alive");
    let iris_pass_url = format!("http://127.0.0.1:{cached_port}/health/alive");
    let whoami_url = format!("{}/sessions/whoami", kratos.url());
    let cached_token_url = format!("http://127.0.0.1:{cached_port}/oauth2/token");
    let uncached_token_url = format!("http://127.0.0.1:{uncached_port}/oauth2/token");
    let node_url = format!("http://127.0.0.1:{node_port}/oauth2/token");
    for url in [&direct_url, &nginx_url, &iris_pass_url] {
        expect_ok(http.get(url), url, None).await;
    }
    expect_ok(
        http.get(&whoami_url)
            .header("x-session-token", session_token(0)),
        "whoami",
        Some("id"),
    )
    .await;
    for url in [&cached_token_url, &uncached_token_url] {
        expect_ok(
            exchange_request(&http, url, &session_token(0), &authorization),
            url,
            Some("id_token"),
        )
        .await;
    }
    expect_ok(
        exchange_request(&http, &node_url, &session_token(0), &authorization),
        "node baseline",
        Some("access_token"),
    )
    .await;
    drop(http);

    // Memory: idle, then with the keep-alive connections held open. The first secret check
    // above ran argon2 (19 MiB, freed at once): the reading waits past Iris's jemalloc
    // dirty_decay_ms (1 s), or it reads 14 or 33 MiB depending on the moment.
    let cached_pid = iris_cached.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = proc_status_kib(cached_pid, "VmRSS");
    let idle_fds = open_fds(cached_pid);
    eprintln!("opening {} keep-alive connections", s.idle_connections);
    let held = idle_connections(loopback(cached_port), s.idle_connections, cached_pid).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_close_rss = proc_status_kib(cached_pid, "VmRSS");

    // Throughput and latency.
    let c = s.connections;
    let lc = s.latency_connections;
    let step = |group, target, url: &String, mode, connections, server| Step {
        group,
        target,
        url: url.clone(),
        mode,
        connections,
        server,
    };
    // Row names for the compare build: which build, and its thread count when set.
    let compare_label = |what: &str| -> &'static str {
        let name = match &s.compare_workers {
            Some(workers) => format!("{what} (IRIS_BIN_COMPARE, TOKIO_WORKER_THREADS={workers})"),
            None => format!("{what} (IRIS_BIN_COMPARE)"),
        };
        Box::leak(name.into_boxed_str())
    };
    let compare_uncached_steps = compare_uncached.as_ref().map(|(proc, port, _, _)| {
        step(
            "latency",
            compare_label("Iris, no cache"),
            &format!("http://127.0.0.1:{port}/oauth2/token"),
            Mode::Exchange,
            lc,
            Some(proc.pid()),
        )
    });
    let compare_steps = compare.as_ref().map(|(proc, port, _, _)| {
        let pass = format!("http://127.0.0.1:{port}/health/alive");
        let token = format!("http://127.0.0.1:{port}/oauth2/token");
        [
            step(
                "pass-through",
                compare_label("Iris"),
                &pass,
                Mode::Get,
                c,
                Some(proc.pid()),
            ),
            step(
                "reconnect",
                compare_label("Iris"),
                &pass,
                Mode::GetClose,
                c,
                Some(proc.pid()),
            ),
            step(
                "exchange",
                compare_label("Iris, cache hits"),
                &token,
                Mode::Exchange,
                c,
                Some(proc.pid()),
            ),
        ]
    });
    let plan = [
        step(
            "pass-through",
            "direct (Hydra stand-in)",
            &direct_url,
            Mode::Get,
            c,
            None,
        ),
        step(
            "pass-through",
            "nginx",
            &nginx_url,
            Mode::Get,
            c,
            Some(nginx.pid()),
        ),
        step(
            "pass-through",
            "Iris",
            &iris_pass_url,
            Mode::Get,
            c,
            Some(cached_pid),
        ),
        step(
            "reconnect",
            "nginx",
            &nginx_url,
            Mode::GetClose,
            c,
            Some(nginx.pid()),
        ),
        step(
            "reconnect",
            "Iris",
            &iris_pass_url,
            Mode::GetClose,
            c,
            Some(cached_pid),
        ),
        step(
            "exchange",
            "whoami direct (floor)",
            &whoami_url,
            Mode::Whoami,
            c,
            None,
        ),
        step(
            "exchange",
            "Node cookbook baseline",
            &node_url,
            Mode::Exchange,
            c,
            Some(node.pid()),
        ),
        step(
            "exchange",
            "Iris, cache hits",
            &cached_token_url,
            Mode::Exchange,
            c,
            Some(cached_pid),
        ),
        step(
            "exchange",
            "Iris, cache hits, with an ID token",
            &cached_token_url,
            Mode::ExchangeWithIdToken,
            c,
            Some(cached_pid),
        ),
        step(
            "exchange",
            "Iris, no cache",
            &uncached_token_url,
            Mode::Exchange,
            c,
            Some(iris_uncached.pid()),
        ),
        step(
            "latency",
            "whoami direct (floor)",
            &whoami_url,
            Mode::Whoami,
            lc,
            None,
        ),
        step(
            "latency",
            "Iris, no cache",
            &uncached_token_url,
            Mode::Exchange,
            lc,
            Some(iris_uncached.pid()),
        ),
        step(
            "latency",
            "Iris, cache hits",
            &cached_token_url,
            Mode::Exchange,
            lc,
            Some(cached_pid),
        ),
    ];
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |group: &str| only.is_empty() || only.split(',').any(|g| g.trim() == group);
    let steps: Vec<Step> = plan
        .into_iter()
        .chain(compare_steps.into_iter().flatten())
        .chain(compare_uncached_steps)
        .filter(|step| wanted(step.group))
        .collect();
    // Every step runs once per round, the rounds one after another, so a slow spell of the
    // machine hits every target alike; each row is the round with the median throughput.
    let mut runs: Vec<Vec<Measured>> = steps.iter().map(|_| Vec::new()).collect();
    for round in 1..=s.rounds {
        for (step, runs) in steps.iter().zip(&mut runs) {
            eprintln!(
                "round {round}/{}: {}: {} ({} connections, {})",
                s.rounds, step.group, step.target, step.connections, step.url
            );
            let load = Load {
                url: step.url.clone(),
                mode: step.mode,
                connections: step.connections,
                server: step.server,
                settings: &s,
                authorization: &authorization,
            };
            // wrk runs on a blocking thread: this runtime keeps serving the stand-ins meanwhile.
            let m = tokio::task::block_in_place(|| measure(&load));
            eprintln!(
                "  {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
                m.rps, m.p50_ms, m.p99_ms, m.errors
            );
            runs.push(m);
        }
    }
    let rows: Vec<Row> = steps
        .iter()
        .zip(runs)
        .map(|(step, mut runs)| {
            let p99_rounds = runs.iter().map(|m| m.p99_ms).collect();
            runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            Row {
                group: step.group,
                target: step.target,
                connections: step.connections,
                m: runs.swap_remove(runs.len() / 2),
                p99_rounds,
            }
        })
        .collect();
    iris_cached.check_running(&cached_log);
    iris_uncached.check_running(&uncached_log);
    for (proc, _, _, log) in compare.iter_mut().chain(compare_uncached.iter_mut()) {
        proc.check_running(log);
    }
    let peak_cached = proc_status_kib(cached_pid, "VmHWM");
    let peak_uncached = proc_status_kib(iris_uncached.pid(), "VmHWM");
    let end_rss = proc_status_kib(cached_pid, "VmRSS");

    report(
        &s,
        nofile,
        &tools,
        &rows,
        Memory {
            idle_rss,
            idle_fds,
            held,
            after_close_rss,
            end_rss,
            peak_cached,
            peak_uncached,
        },
    )
}

struct Memory {
    idle_rss: u64,
    idle_fds: usize,
    held: IdleResult,
    after_close_rss: u64,
    end_rss: u64,
    peak_cached: u64,
    peak_uncached: u64,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

fn version(cmd: &Path, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn report(s: &Settings, nofile: u64, tools: &str, rows: &[Row], mem: Memory) -> String {
    let find = |group: &str, target: &str| {
        rows.iter()
            .find(|r| r.group == group && r.target == target)
            .map(|r| r.m.clone())
    };
    let direct = find("pass-through", "direct (Hydra stand-in)");
    let nginx = find("pass-through", "nginx");
    let iris_pass = find("pass-through", "Iris");
    let whoami = find("exchange", "whoami direct (floor)");
    let node = find("exchange", "Node cookbook baseline");
    let cached = find("exchange", "Iris, cache hits");
    let cached_id = find("exchange", "Iris, cache hits, with an ID token");
    let uncached = find("exchange", "Iris, no cache");
    let whoami_lat = find("latency", "whoami direct (floor)");
    let uncached_lat = find("latency", "Iris, no cache");

    let mut out = String::new();
    let _ = writeln!(out, "## Iris benchmark results\n");
    let _ = writeln!(
        out,
        "Machine: {}. Tools: {tools}. wrk ({} thread) runs on the same cores as every server \
         and the stand-ins, so each row's throughput is what is left after their share. Every \
         step is measured in each of {} rounds (the rounds run one after another) and each row is \
         the run with the median throughput. {} s per measurement after a {} s warm-up; {} connections for throughput, {} for the latency \
         rows; the Kratos stand-in answers after {} ms; {} session tokens rotate; \
         RLIMIT_NOFILE {}. Request logs: {}.\n",
        machine(),
        s.wrk_threads,
        s.rounds,
        s.duration,
        s.warmup,
        s.connections,
        s.latency_connections,
        s.kratos_delay.as_millis(),
        s.sessions,
        nofile,
        if s.quiet {
            "off (Iris log.level warn, nginx access_log off)"
        } else {
            "on in both, written to files (Iris log.level info on stderr, nginx access_log)"
        },
    );
    let _ = writeln!(
        out,
        "| scenario | target | conns | requests | req/s | p50 ms | p99 ms | p99 ms each round | errors | CPU % target | CPU % stand-ins | CPU % wrk |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        let m = &r.m;
        let rounds: Vec<String> = r.p99_rounds.iter().map(|p| format!("{p:.2}")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.0} | {:.3} | {:.3} | {} | {} | {} | {:.0} | {:.0} |",
            r.group,
            r.target,
            r.connections,
            m.requests,
            m.rps,
            m.p50_ms,
            m.p99_ms,
            rounds.join(" / "),
            m.errors,
            m.server_cpu.map_or("–".into(), |c| format!("{c:.0}")),
            m.standin_cpu,
            m.wrk_cpu,
        );
    }
    let _ = writeln!(
        out,
        "\nCPU % is of one core (200 % = both cores): the process under test (nginx: master and \
         workers), this harness's stand-ins, and wrk. \"errors\" counts wrk's socket errors, \
         timeouts and non-2xx/3xx answers.\n"
    );

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    // A verdict on rows with errors would compare failures: say so instead.
    let judge = |met: bool, measured: &[&Measured]| {
        if measured.iter().any(|m| m.errors > 0) {
            "**invalid: errors during the run**"
        } else {
            verdict(met)
        }
    };
    let _ = writeln!(out, "| target | measured | verdict |");
    let _ = writeln!(out, "|---|---|---|");
    if let (Some(direct), Some(nginx), Some(iris)) = (&direct, &nginx, &iris_pass) {
        let met = iris.rps >= nginx.rps && iris.p99_ms <= nginx.p99_ms;
        let _ = writeln!(
            out,
            "| pass-through: throughput ≥ nginx's, p99 ≤ nginx's | Iris {:.0} req/s = {:.2}× nginx's {:.0} ({:.2}× direct); p99 {:.3} ms = {:.2}× nginx's {:.3} ms | {} |",
            iris.rps,
            ratio(iris.rps, nginx.rps),
            nginx.rps,
            ratio(iris.rps, direct.rps),
            iris.p99_ms,
            ratio(iris.p99_ms, nginx.p99_ms),
            nginx.p99_ms,
            judge(met, &[direct, nginx, iris]),
        );
    }
    if let (Some(node), Some(cached)) = (&node, &cached) {
        let met = cached.rps >= 5.0 * node.rps && cached.p99_ms * 5.0 <= node.p99_ms;
        let with_id = cached_id.as_ref().map_or(String::new(), |id| {
            format!(
                " (with an ID token as well, two signatures: {:.2}×, p99 1/{:.1})",
                ratio(id.rps, node.rps),
                ratio(node.p99_ms, id.p99_ms)
            )
        });
        let _ = writeln!(
            out,
            "| cached exchange (one signed token each): ≥ 5× the Node baseline's throughput, p99 ≤ ⅕ of its | {:.2}× ({:.0} vs {:.0} req/s); p99 {:.3} ms = 1/{:.1} of Node's {:.3} ms{with_id} | {} |",
            ratio(cached.rps, node.rps),
            cached.rps,
            node.rps,
            cached.p99_ms,
            ratio(node.p99_ms, cached.p99_ms),
            node.p99_ms,
            judge(met, &[node, cached]),
        );
    }
    if let (Some(floor), Some(uncached)) = (&whoami_lat, &uncached_lat) {
        let p50 = ratio(uncached.p50_ms, floor.p50_ms);
        let p99 = ratio(uncached.p99_ms, floor.p99_ms);
        let _ = writeln!(
            out,
            "| uncached exchange: ≤ 1.1× a direct whoami's latency ({} connections) | p50 {:.3} vs {:.3} ms = {:.3}×; p99 {:.3} vs {:.3} ms = {:.3}× | p50 {}, p99 {} |",
            s.latency_connections,
            uncached.p50_ms,
            floor.p50_ms,
            p50,
            uncached.p99_ms,
            floor.p99_ms,
            p99,
            judge(p50 <= 1.1, &[floor, uncached]),
            judge(p99 <= 1.1, &[floor, uncached]),
        );
    }
    let held = &mem.held;
    if s.idle_connections > 0 {
        let met = held.still_open >= s.idle_connections && mib(held.rss_kib) < 100.0;
        let _ = writeln!(
            out,
            "| < 100 MB resident with {} keep-alive connections | {:.1} MiB with {} open and idle ({} fds); {:.1} MiB right after all of them sent a request; no connections {:.1} MiB | {} |",
            s.idle_connections,
            mib(held.rss_kib),
            held.still_open,
            held.fds,
            mib(held.busy_rss_kib),
            mib(mem.idle_rss),
            verdict(met),
        );
    }
    if let (Some(whoami), Some(uncached)) = (&whoami, &uncached) {
        let _ = writeln!(
            out,
            "\nAt {} connections the uncached exchange runs at {:.0} req/s against whoami's {:.0} \
             (p50 {:.3} vs {:.3} ms).",
            s.connections, uncached.rps, whoami.rps, uncached.p50_ms, whoami.p50_ms,
        );
    }
    let _ = writeln!(
        out,
        "\nMemory (VmRSS of the Iris in front of Hydra): idle {:.1} MiB ({} fds); {} keep-alive \
         connections opened, {:.1} s idle (parked) {:.1} MiB, {} fds; {} still open after a \
         second request each, {:.1} MiB at the busier of the two moments all had just been \
         answered; {:.1} s for the cycle; {:.1} MiB once they closed; {:.1} MiB after every load \
         run. Peak (VmHWM): {:.1} MiB with the cache, {:.1} MiB without.",
        mib(mem.idle_rss),
        mem.idle_fds,
        held.opened,
        PARKED_AFTER.as_secs_f64(),
        mib(held.rss_kib),
        held.fds,
        held.still_open,
        mib(held.busy_rss_kib),
        held.seconds,
        mib(mem.after_close_rss),
        mib(mem.end_rss),
        mib(mem.peak_cached),
        mib(mem.peak_uncached),
    );
    out
}
