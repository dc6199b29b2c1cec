//! DESIGN.md §2 and §8: the `iris` command line, driven as a real process, and the promise that
//! `iris serve` logs no token material.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use iris::config::{LogFormat, LogLevel};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::*;

/// `iris` with an environment holding nothing that could override the configuration.
fn iris() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_iris"));
    command.env_clear();
    command
}

/// Runs `iris` with `args` and `env`, stdin closed.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    iris()
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("iris runs")
}

/// Runs `iris` with `stdin` written to its standard input.
fn run_with_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = iris()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iris starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().expect("iris runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A temporary directory for configuration and key files.
struct Files(TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }

    /// Writes `name` and returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// `iris check -c FILE...` with `env`.
fn check(files: &[&Path], env: &[(&str, &str)]) -> Output {
    let mut args = vec!["check"];
    for file in files {
        args.extend(["-c", path_str(file)]);
    }
    run(&args, env)
}

/// Asserts success and that stdout is exactly one JSON object; returns it.
fn check_ok(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "check failed: {:?}\nstderr: {}",
        output.status,
        stderr(output)
    );
    let text = stdout(output);
    let values: Vec<Value> = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"));
    assert_eq!(values.len(), 1, "stdout holds one JSON value: {text}");
    assert!(values[0].is_object(), "stdout is an object: {text}");
    values.into_iter().next().unwrap()
}

/// Asserts exit status 1, nothing on stdout, and each of `needles` in stderr; returns stderr.
fn check_fails(output: &Output, needles: &[&str]) -> String {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(1), "stderr: {err}");
    assert_eq!(stdout(output), "", "nothing on stdout on error");
    for needle in needles {
        assert!(err.contains(needle), "stderr should name {needle}: {err}");
    }
    err
}

/// A minimal valid configuration, plus `extra` YAML appended at top level.
fn minimal(extra: &str) -> String {
    format!("kratos:\n  public_url: http://127.0.0.1:4433\n{extra}")
}

/// RFC 7638 §3.2: the required members in lexicographic order, no whitespace, SHA-256, base64url.
fn thumbprint(jwk: &Value) -> String {
    use sha2::Digest;
    let s = |name: &str| {
        jwk[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} in {jwk}"))
    };
    let canonical = match s("kty") {
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv"),
            s("x"),
            s("y")
        ),
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e"), s("n")),
        "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, s("crv"), s("x")),
        other => panic!("unexpected kty {other}"),
    };
    B64.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

/// `iris keys generate` with `args`; asserts success and returns the JWK.
fn generate(args: &[&str]) -> Value {
    let mut all = vec!["keys", "generate"];
    all.extend_from_slice(args);
    let output = run(&all, &[]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("a JSON JWK")
}

/// `--version` prints the crate version.
#[test]
fn version_prints_the_crate_version() {
    let output = run(&["--version"], &[]);
    assert!(output.status.success());
    assert_eq!(
        stdout(&output).trim(),
        format!("iris {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `check` prints the effective configuration as one JSON object with every secret as `***`.
#[test]
fn check_prints_the_configuration_with_secrets_redacted() {
    let files = Files::new();
    let hash = iris::clients::hash_secret("check-secret-value").unwrap();
    let config = files.write(
        "iris.yaml",
        &format!(
            r#"serve:
  public: {{ host: 127.0.0.1, port: 4490 }}
  admin: {{ host: 127.0.0.1, port: 4491 }}
issuer: http://127.0.0.1:4490/
kratos:
  public_url: http://127.0.0.1:4433
  timeout: 3s
tokens:
  access_token_ttl: 10m
  id_token_ttl: 1h
clients:
  - client_id: orders-service
    client_secret_hash: "{hash}"
    grant_types: [urn:ietf:params:oauth:grant-type:token-exchange]
    audience: [https://orders.example.com]
    scope: openid orders:read
    metadata: {{ first_party: true }}
  - client_id: dev-client
    client_secret: plain-check-secret
    token_endpoint_auth_method: client_secret_post
policy:
  required_aal: aal2
allow_plaintext_secrets: true
"#
        ),
    );
    let output = check(&[&config], &[]);
    let json = check_ok(&output);
    assert_eq!(json["serve"]["public"]["port"], 4490);
    assert_eq!(json["serve"]["admin"]["port"], 4491);
    assert_eq!(json["issuer"], "http://127.0.0.1:4490/");
    assert_eq!(json["kratos"]["public_url"], "http://127.0.0.1:4433");
    assert_eq!(json["kratos"]["timeout"], "3s");
    assert_eq!(json["tokens"]["access_token_ttl"], "10m");
    assert_eq!(json["tokens"]["id_token_ttl"], "1h");
    assert_eq!(json["policy"]["required_aal"], "aal2");
    assert_eq!(json["allow_plaintext_secrets"], true);
    let clients = json["clients"].as_array().expect("clients");
    assert_eq!(clients.len(), 2);
    assert_eq!(clients[0]["client_id"], "orders-service");
    assert_eq!(clients[0]["client_secret_hash"], "***");
    assert_eq!(
        clients[0]["audience"],
        json!(["https://orders.example.com"])
    );
    assert_eq!(clients[0]["metadata"]["first_party"], true);
    assert_eq!(clients[1]["client_id"], "dev-client");
    assert_eq!(clients[1]["client_secret"], "***");
    for (name, text) in [("stdout", stdout(&output)), ("stderr", stderr(&output))] {
        for secret in [hash.as_str(), "plain-check-secret", "$argon2id$"] {
            assert!(!text.contains(secret), "{name} reveals {secret}: {text}");
        }
    }
}

/// An unknown key, nested or at top level, fails `check` with exit 1 and names the key.
#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let files = Files::new();
    let nested = files.write("nested.yaml", &minimal("serve:\n  public:\n    prot: 1\n"));
    check_fails(&check(&[&nested], &[]), &["serve.public.prot"]);
    let top = files.write("top.yaml", &minimal("kratoss:\n  timeout: 2s\n"));
    check_fails(&check(&[&top], &[]), &["kratoss"]);
    let client = files.write(
        "client.yaml",
        &minimal("allow_plaintext_secrets: true\nclients:\n  - client_id: a\n    client_secret: x\n    audiences: [https://a.example]\n"),
    );
    check_fails(&check(&[&client], &[]), &["clients.0.audiences"]);
}

/// Ory-style variables (`SERVE_PUBLIC_PORT`, `TOKENS_ACCESS_TOKEN_TTL`) override the file.
#[test]
fn environment_variables_override_the_file() {
    let files = Files::new();
    let config = files.write(
        "iris.yaml",
        &minimal("serve:\n  public:\n    port: 4480\ntokens:\n  access_token_ttl: 15m\n"),
    );
    let json = check_ok(&check(
        &[&config],
        &[
            ("SERVE_PUBLIC_PORT", "18080"),
            ("TOKENS_ACCESS_TOKEN_TTL", "5m"),
            ("KRATOS_PUBLIC_URL", "http://kratos.internal:4433"),
            ("LOG_FORMAT", "json"),
        ],
    ));
    assert_eq!(json["serve"]["public"]["port"], 18080);
    assert_eq!(json["tokens"]["access_token_ttl"], "5m");
    assert_eq!(json["kratos"]["public_url"], "http://kratos.internal:4433");
    assert_eq!(json["log"]["format"], "json");
    // Variables that name no key are not configuration.
    let json = check_ok(&check(&[&config], &[("SERVE_PUBLIC_PROT", "1")]));
    assert_eq!(json["serve"]["public"]["port"], 4480);
}

/// A variable whose value does not fit its key fails `check` with exit 1.
#[test]
fn a_bad_environment_value_is_refused() {
    let files = Files::new();
    let config = files.write("iris.yaml", &minimal(""));
    for (name, value) in [
        ("SERVE_PUBLIC_PORT", "http"),
        ("TOKENS_ACCESS_TOKEN_TTL", "5min"),
        ("TOKENS_ACCESS_TOKEN_TTL", "15"),
    ] {
        check_fails(&check(&[&config], &[(name, value)]), &["environment"]);
    }
}

/// The error for a bad variable names it as the operator wrote it, or by its key path.
#[test]
fn a_bad_environment_value_names_the_variable_or_key() {
    let files = Files::new();
    let config = files.write("iris.yaml", &minimal(""));
    for (name, key, value) in [
        ("SERVE_PUBLIC_PORT", "serve.public.port", "http"),
        ("TOKENS_ACCESS_TOKEN_TTL", "tokens.access_token_ttl", "5min"),
    ] {
        let err = check_fails(&check(&[&config], &[(name, value)]), &[]);
        assert!(
            err.contains(name) || err.contains(key),
            "stderr should name {name} or {key}: {err}"
        );
    }
}

/// With two `-c` files the later one overrides the earlier, key by key.
#[test]
fn a_later_config_file_overrides_an_earlier_one() {
    let files = Files::new();
    let base = files.write(
        "base.yaml",
        "serve:\n  public:\n    host: 0.0.0.0\n    port: 1111\nkratos:\n  public_url: http://kratos.base:4433\n  timeout: 3s\n",
    );
    let overlay = files.write(
        "overlay.yaml",
        "serve:\n  public:\n    port: 2222\nkratos:\n  timeout: 4s\n",
    );
    let json = check_ok(&check(&[&base, &overlay], &[]));
    assert_eq!(json["serve"]["public"]["port"], 2222);
    assert_eq!(json["serve"]["public"]["host"], "0.0.0.0");
    assert_eq!(json["kratos"]["public_url"], "http://kratos.base:4433");
    assert_eq!(json["kratos"]["timeout"], "4s");
    let json = check_ok(&check(&[&overlay, &base], &[]));
    assert_eq!(json["serve"]["public"]["port"], 1111);
    assert_eq!(json["kratos"]["timeout"], "3s");
}

/// Durations are Go-style (`15m`, `1h30m`); a bare number or `15min` is refused naming the key.
#[test]
fn durations_are_go_style() {
    let files = Files::new();
    let good = files.write(
        "good.yaml",
        &minimal("tokens:\n  access_token_ttl: 15m\n  id_token_ttl: 1h30m\n"),
    );
    let json = check_ok(&check(&[&good], &[]));
    assert_eq!(json["tokens"]["access_token_ttl"], "15m");
    assert_eq!(json["tokens"]["id_token_ttl"], "90m");
    for bad in ["15", "15min", "\"\"", "-1s"] {
        let file = files.write(
            "bad.yaml",
            &minimal(&format!("tokens:\n  access_token_ttl: {bad}\n")),
        );
        check_fails(&check(&[&file], &[]), &["access_token_ttl"]);
    }
    let zero = files.write(
        "zero.yaml",
        "kratos:\n  public_url: http://127.0.0.1:4433\n  timeout: 0s\n",
    );
    check_fails(&check(&[&zero], &[]), &["kratos.timeout"]);
}

/// A plaintext `client_secret` is refused (pointing to `hash-secret`) unless explicitly allowed.
#[test]
fn plaintext_client_secrets_need_allow_plaintext_secrets() {
    let files = Files::new();
    let client = "clients:\n  - client_id: dev\n    client_secret: plaintext-dev-secret\n";
    let refused = files.write("refused.yaml", &minimal(client));
    let err = check_fails(
        &check(&[&refused], &[]),
        &[
            "clients[0].client_secret",
            "hash-secret",
            "allow_plaintext_secrets",
        ],
    );
    assert!(!err.contains("plaintext-dev-secret"), "{err}");
    let allowed = files.write(
        "allowed.yaml",
        &minimal(&format!("allow_plaintext_secrets: true\n{client}")),
    );
    let output = check(&[&allowed], &[]);
    let json = check_ok(&output);
    assert_eq!(json["clients"][0]["client_secret"], "***");
    assert!(!stdout(&output).contains("plaintext-dev-secret"));
    assert!(!stderr(&output).contains("plaintext-dev-secret"));
}

/// Without signing keys `check` passes but warns about the ephemeral key.
#[test]
fn check_warns_about_the_ephemeral_key() {
    let files = Files::new();
    let config = files.write("iris.yaml", &minimal(""));
    let output = check(&[&config], &[]);
    check_ok(&output);
    let err = stderr(&output);
    assert!(
        err.contains("ephemeral") && err.contains("signing.keys"),
        "{err}"
    );
}

/// `keys generate` prints a private JWK per algorithm, `kid` defaulting to the RFC 7638 thumbprint.
#[test]
fn keys_generate_prints_a_private_jwk() {
    for (args, kty, crv, alg) in [
        (&[][..], "EC", Some("P-256"), "ES256"),
        (&["--alg", "ES256"][..], "EC", Some("P-256"), "ES256"),
        (&["--alg", "RS256"][..], "RSA", None, "RS256"),
        (&["--alg", "EdDSA"][..], "OKP", Some("Ed25519"), "EdDSA"),
    ] {
        let jwk = generate(args);
        assert_eq!(jwk["kty"], kty, "{jwk}");
        if let Some(crv) = crv {
            assert_eq!(jwk["crv"], crv, "{jwk}");
        }
        assert_eq!(jwk["alg"], alg, "{jwk}");
        assert_eq!(jwk["use"], "sig", "{jwk}");
        assert!(
            jwk["d"].as_str().is_some_and(|d| !d.is_empty()),
            "private: {jwk}"
        );
        assert_eq!(jwk["kid"], thumbprint(&jwk), "{jwk}");
    }
    let jwk = generate(&["--kid", "mine"]);
    assert_eq!(jwk["kid"], "mine");
    assert_eq!(jwk["alg"], "ES256");
    let jwk = generate(&["--alg", "EdDSA", "--kid", "mine"]);
    assert_eq!(jwk["kid"], "mine");
    let output = run(&["keys", "generate", "--alg", "HS256"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "");
    assert!(stderr(&output).contains("HS256"), "{}", stderr(&output));
}

/// Generated key files load in `check` under `signing.keys`, and then there is no warning.
#[test]
fn generated_keys_load_in_check() {
    let files = Files::new();
    let mut entries = String::new();
    for alg in ["ES256", "RS256", "EdDSA"] {
        let output = run(&["keys", "generate", "--alg", alg], &[]);
        assert!(output.status.success(), "{}", stderr(&output));
        let path = files.write(&format!("{alg}.jwk"), &stdout(&output));
        let d = serde_json::from_slice::<Value>(&output.stdout).unwrap()["d"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = serde_json::to_string(path_str(&path)).unwrap();
        let config = files.write(
            "one.yaml",
            &minimal(&format!("signing:\n  keys:\n    - path: {path}\n")),
        );
        let output = check(&[&config], &[]);
        check_ok(&output);
        assert!(
            !stderr(&output).contains("ephemeral"),
            "{}",
            stderr(&output)
        );
        assert!(!stdout(&output).contains(&d), "check prints no private key");
        entries.push_str(&format!("    - path: {path}\n"));
    }
    let config = files.write(
        "all.yaml",
        &minimal(&format!("signing:\n  keys:\n{entries}")),
    );
    let output = check(&[&config], &[]);
    assert_eq!(
        check_ok(&output)["signing"]["keys"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert!(
        !stderr(&output).contains("ephemeral"),
        "{}",
        stderr(&output)
    );
    let broken = files.write("broken.jwk", "{\"kty\":\"EC\"}");
    let config = files.write(
        "broken.yaml",
        &minimal(&format!(
            "signing:\n  keys:\n    - path: {}\n",
            serde_json::to_string(path_str(&broken)).unwrap()
        )),
    );
    check_fails(&check(&[&config], &[]), &["signing.keys"]);
}

/// `hash-secret` hashes stdin without its trailing newline; empty stdin is an error.
#[test]
fn hash_secret_reads_stdin_without_the_newline() {
    use argon2::{Argon2, PasswordHash, PasswordVerifier};
    let output = run_with_stdin(&["hash-secret"], "s3 +%&:cret\n");
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let hash = text.trim_end();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("s3 +%&:cret"));
    let parsed = PasswordHash::new(hash).expect("a PHC string");
    assert!(
        Argon2::default()
            .verify_password(b"s3 +%&:cret", &parsed)
            .is_ok()
    );
    assert!(
        Argon2::default()
            .verify_password(b"s3 +%&:cret\n", &parsed)
            .is_err()
    );
    for empty in ["", "\n"] {
        let output = run_with_stdin(&["hash-secret"], empty);
        assert_eq!(output.status.code(), Some(1), "stdin {empty:?}");
        assert_eq!(stdout(&output), "");
    }
}

// === `iris serve` logs no token material ===

/// The running `iris serve` child: killed if the test fails before it stops.
struct Server {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `iris serve -c config` and waits for its `listening` line; returns the public address.
    async fn start(config: &Path) -> (Server, String) {
        let mut child = iris()
            .args(["serve", "-c", path_str(config)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("iris serve starts");
        let pipe = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Ok(json) = serde_json::from_str::<Value>(&line)
                    && json["message"] == "listening"
                {
                    let _ = tx.send(json["public"].as_str().unwrap_or_default().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let server = Server {
            child,
            lines,
            reader: Some(reader),
        };
        let public = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
            .await
            .unwrap()
            .unwrap_or_else(|_| {
                panic!(
                    "no listening line; stderr:\n{}",
                    server.lines.lock().unwrap().join("\n")
                )
            });
        (server, public)
    }

    /// Sends SIGTERM, waits for the exit status and returns it with everything logged.
    async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(kill.success(), "kill -TERM {pid}");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "iris did not stop on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(reader) = self.reader.take() {
            tokio::task::spawn_blocking(move || reader.join())
                .await
                .unwrap()
                .unwrap();
        }
        let log = self.lines.lock().unwrap().join("\n");
        (status, log)
    }
}

/// POSTs `pairs` to `url` with an optional `Authorization` header.
async fn post(url: &str, pairs: &[(&str, &str)], authorization: Option<&str>) -> Answer {
    let mut request = http()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(pairs).unwrap());
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    answer(request.send().await.expect("request")).await
}

/// Asserts a 200 and adds the issued tokens (and their signatures) to `forbidden`.
fn issued(answer: &Answer, forbidden: &mut Vec<String>) {
    assert_eq!(answer.status, 200, "{}", answer.json);
    for name in ["access_token", "id_token"] {
        if let Some(token) = answer.json[name].as_str() {
            forbidden.push(token.to_owned());
            forbidden.push(token.rsplit('.').next().unwrap().to_owned());
        }
    }
}

const COOKIE_VALUE: &str = "MTcwMDAwMDAwMHxDb29raWVWYWx1ZVNlY3JldEFsaWNlfA==";
const UNKNOWN_TOKEN: &str = "ory_st_UNKNOWNunknownUNKNOWNunknownUNKNW";
const WRONG_BASIC_SECRET: &str = "wrong-basic-secret-Q7x";
const WRONG_POST_SECRET: &str = "wrong-post-secret-Z9k";
const QUERY_SECRET: &str = "query-secret-in-the-url-M4p";

/// `iris serve` at debug level logs requests and audit lines but no token, secret or cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_no_token_material() {
    let kratos = Kratos::start().await;
    kratos.add_token(ALICE_TOKEN, Entry::Session(SessionRecord::alice()));
    kratos.add_cookie(COOKIE_VALUE, Entry::Session(SessionRecord::alice()));
    let mut raw = config(&kratos);
    raw.log.level = LogLevel::Debug;
    raw.log.format = LogFormat::Json;
    let files = Files::new();
    let config = files.write("iris.yaml", &serde_json::to_string(&raw).unwrap());
    let (server, public) = Server::start(&config).await;
    let token_url = format!("http://{public}/oauth2/token");

    // What must never be logged, filled in as the exchanges run.
    let mut forbidden: Vec<String> = [
        ALICE_TOKEN,
        UNKNOWN_TOKEN,
        COOKIE_VALUE,
        ORDERS_SECRET,
        POST_SECRET,
        WRONG_BASIC_SECRET,
        WRONG_POST_SECRET,
        QUERY_SECRET,
    ]
    .iter()
    .flat_map(|s| [s.to_string(), form_encode(s)])
    .collect();
    let with_scope = |token: &'static str, kind: &'static str| {
        vec![
            ("grant_type", iris::config::TOKEN_EXCHANGE_GRANT),
            ("subject_token", token),
            ("subject_token_type", kind),
            ("scope", "openid email"),
        ]
    };

    // Session token over Basic.
    let orders_basic = basic("orders-service", ORDERS_SECRET);
    let answer = post(
        &token_url,
        &with_scope(ALICE_TOKEN, SESSION_TYPE),
        Some(&orders_basic),
    )
    .await;
    issued(&answer, &mut forbidden);
    assert!(answer.json["id_token"].is_string(), "{}", answer.json);
    // Cookie value over Basic.
    let answer = post(
        &token_url,
        &with_scope(COOKIE_VALUE, COOKIE_TYPE),
        Some(&orders_basic),
    )
    .await;
    issued(&answer, &mut forbidden);
    // Session token over client_secret_post.
    let mut form = with_scope(ALICE_TOKEN, SESSION_TYPE);
    form.extend([("client_id", "post-client"), ("client_secret", POST_SECRET)]);
    issued(&post(&token_url, &form, None).await, &mut forbidden);
    // Wrong secret over Basic, then over post.
    let wrong_basic = basic("orders-service", WRONG_BASIC_SECRET);
    post(
        &token_url,
        &with_scope(ALICE_TOKEN, SESSION_TYPE),
        Some(&wrong_basic),
    )
    .await
    .assert_error(401, "invalid_client");
    let mut form = with_scope(ALICE_TOKEN, SESSION_TYPE);
    form.extend([
        ("client_id", "post-client"),
        ("client_secret", WRONG_POST_SECRET),
    ]);
    post(&token_url, &form, None)
        .await
        .assert_error(401, "invalid_client");
    // An unknown session token.
    post(
        &token_url,
        &with_scope(UNKNOWN_TOKEN, SESSION_TYPE),
        Some(&orders_basic),
    )
    .await
    .assert_error(400, "invalid_request");
    // private_key_jwt.
    let assertion = client_assertion(jwt_client_key(), "jwt-client", &token_url, json!({}));
    let mut form = with_scope(ALICE_TOKEN, SESSION_TYPE);
    form.extend([
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion.as_str()),
    ]);
    issued(&post(&token_url, &form, None).await, &mut forbidden);
    // A secret in the query string, on the token endpoint and elsewhere.
    let query = format!("client_secret={QUERY_SECRET}&subject_token={QUERY_SECRET}");
    let answer = post(
        &format!("{token_url}?{query}"),
        &with_scope(ALICE_TOKEN, SESSION_TYPE),
        Some(&orders_basic),
    )
    .await;
    issued(&answer, &mut forbidden);
    let jwks = http()
        .get(format!("http://{public}/.well-known/jwks.json?{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);

    for header in [&orders_basic, &wrong_basic] {
        forbidden.push(header.clone());
        forbidden.push(header.trim_start_matches("Basic ").to_owned());
    }
    forbidden.push(assertion.clone());
    forbidden.push(assertion.rsplit('.').next().unwrap().to_owned());

    let (status, log) = server.terminate().await;
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    for secret in &forbidden {
        assert!(
            !log.contains(secret.as_str()),
            "the log reveals {secret}:\n{log}"
        );
    }

    // The log is not vacuous: every line is JSON, and requests and exchanges were recorded.
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let requests: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "iris::request")
        .collect();
    let token_requests = requests
        .iter()
        .filter(|l| l["path"] == "/oauth2/token")
        .count();
    assert_eq!(token_requests, 8, "request lines:\n{log}");
    assert!(
        requests
            .iter()
            .any(|l| l["path"] == "/.well-known/jwks.json"),
        "{log}"
    );
    for status in [200, 400, 401] {
        assert!(
            requests.iter().any(|l| l["status"] == status),
            "no request line with status {status}:\n{log}"
        );
    }
    let audits: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "iris::audit")
        .collect();
    assert_eq!(audits.len(), 8, "audit lines:\n{log}");
    // Each exchange's audit line and request line share one request id.
    for audit in &audits {
        let id = audit["request_id"].as_str().filter(|id| !id.is_empty());
        let id = id.unwrap_or_else(|| panic!("audit line without request_id: {audit}"));
        assert!(
            requests.iter().any(|r| r["request_id"] == id),
            "no request line for request_id {id}:\n{log}"
        );
    }
    for (client, outcome) in [
        ("orders-service", "issued"),
        ("orders-service", "refused"),
        ("post-client", "issued"),
        ("jwt-client", "issued"),
    ] {
        assert!(
            audits
                .iter()
                .any(|l| l["client_id"] == client && l["outcome"] == outcome),
            "no audit line for {client} {outcome}:\n{log}"
        );
    }
    assert!(
        audits
            .iter()
            .any(|l| l["subject"] == SessionRecord::alice().identity_id),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l["message"] == "listening")
            && lines.iter().any(|l| l["message"]
                .as_str()
                .is_some_and(|m| m.contains("shutting down"))),
        "{log}"
    );
    drop(kratos);
}
