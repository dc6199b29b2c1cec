//! deploy/ against what Iris serves. deploy/gateways/nginx.conf runs in real nginx (only its
//! upstream addresses and listen port changed) in front of Iris, the Hydra stand-in and the
//! Kratos stand-in; the Kubernetes manifests, the Compose stack, the Dockerfile and the Envoy and
//! Traefik configurations are parsed and checked against Iris's configuration (`iris::config`),
//! its listeners and its routes (DESIGN.md §1, §2, §4, §5).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::hydra::{Hydra, HydraClient};
use crate::support::*;
use iris::config::{HydraConfig, IssueMode, RawConfig, TOKEN_EXCHANGE_GRANT};

const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// What a gateway sends to Iris (DESIGN.md §1); everything else goes to Hydra.
const IRIS_ROUTES: [&str; 4] = [
    "/oauth2/token",
    "/.well-known/openid-configuration",
    "/.well-known/oauth-authorization-server",
    "/.well-known/jwks.json",
];
/// Hydra's public and admin ports (reference/hydra.md §4).
const HYDRA_PUBLIC_PORT: u64 = 4444;
const HYDRA_ADMIN_PORT: u64 = 4445;
const ORY_TAG: &str = "v26.2.0";

// === Files ===

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// One YAML document as JSON values.
fn yaml(text: &str, what: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
}

/// Every document of a (possibly multi-document) YAML file.
fn yaml_documents(text: &str, what: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
}

fn string<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} should be a string, is {value}"))
}

fn strings(value: &Value, what: &str) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what} should be a list, is {value}"))
        .iter()
        .map(|v| string(v, what).to_owned())
        .collect()
}

fn number(value: &Value, what: &str) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{what} should be a number, is {value}"))
}

/// An `iris.yaml` as Iris loaded it, with its `signing.keys[].path` values as written.
struct IrisYaml {
    raw: RawConfig,
    key_paths: Vec<String>,
}

/// Loads an `iris.yaml` as `iris serve -c` does (`iris::config::load`, then `validate`), with
/// every `signing.keys[].path` pointed at a freshly generated key that `iris::keys` then loads.
fn load_iris_yaml(text: &str, what: &str) -> IrisYaml {
    let mut value = yaml(text, what);
    let dir = tempfile::tempdir().unwrap();
    let mut key_paths = Vec::new();
    if let Some(keys) = value
        .pointer_mut("/signing/keys")
        .and_then(Value::as_array_mut)
    {
        for (n, key) in keys.iter_mut().enumerate() {
            key_paths.push(string(&key["path"], "signing.keys[].path").to_owned());
            let generated = dir.path().join(format!("key-{n}.jwk"));
            let jwk = iris::keys::generate("ES256", None).unwrap();
            std::fs::write(&generated, jwk.to_string()).unwrap();
            key["path"] = json!(generated);
        }
    }
    // JSON is YAML: the same keys, as the file has them, with only the key paths changed.
    let file = dir.path().join("iris.yaml");
    std::fs::write(&file, value.to_string()).unwrap();
    let raw = iris::config::load(&[file])
        .unwrap_or_else(|e| panic!("{what} is not accepted by iris::config: {e}"));
    let settings = raw
        .validate()
        .unwrap_or_else(|e| panic!("{what} does not validate: {e}"));
    iris::keys::KeySet::load(&settings.signing_keys)
        .unwrap_or_else(|e| panic!("{what}: the signing keys do not load: {e}"));
    IrisYaml { raw, key_paths }
}

/// The port of an `http://host:port` URL.
fn url_port(url: &str) -> Option<u16> {
    url::Url::parse(url).ok()?.port_or_known_default()
}

fn url_host(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(String::from))
        .unwrap_or_default()
}

/// Whether every `matchLabels` entry of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(wanted) = selector.as_object() else {
        return false;
    };
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// === nginx, for real ===

/// nginx running as a child process of the test; killed and reaped on drop.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/usr/sbin/nginx`, or `nginx` on the PATH; a missing nginx fails the test.
fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nginx"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    std::iter::once(PathBuf::from("/usr/sbin/nginx"))
        .chain(on_path)
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed, and this test runs deploy/gateways/nginx.conf in real \
                 nginx. Install it (Debian: `apt-get install nginx-light`, or `nginx`); .ci/run \
                 does so in CI."
            )
        })
}

/// deploy/gateways/nginx.conf with only the two upstream addresses and the listen port changed.
fn adapted_nginx_conf(iris: SocketAddr, hydra: SocketAddr, port: u16) -> String {
    let mut conf = read("deploy/gateways/nginx.conf");
    for (from, to) in [
        ("server iris:4480;", format!("server {iris};")),
        ("server hydra:4444;", format!("server {hydra};")),
        ("listen 8080;", format!("listen 127.0.0.1:{port};")),
    ] {
        assert_eq!(
            conf.matches(from).count(),
            1,
            "deploy/gateways/nginx.conf should contain `{from}` exactly once"
        );
        conf = conf.replace(from, &to);
    }
    conf
}

impl Nginx {
    /// Runs `conf` in the foreground, as one process, with its prefix, pid file and logs in a
    /// temporary directory (nothing under /var), and waits until it accepts connections.
    async fn start(conf: &str, port: u16) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let globals = format!(
            "daemon off; master_process off; pid {};",
            dir.path().join("nginx.pid").display()
        );
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-g")
            .arg(globals)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("nginx starts");
        let mut nginx = Nginx {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = nginx.child.try_wait().unwrap() {
                panic!("nginx exited ({status}): {}", nginx.stderr());
            }
            if tokio::net::TcpStream::connect(nginx.addr).await.is_ok() {
                return nginx;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {} within 10 s: {}",
                nginx.addr,
                nginx.stderr()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(url: String, headers: &[(&str, &str)]) -> Answer {
    let mut request = http().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    answer(request.send().await.expect("request through nginx")).await
}

async fn post_token(base: &str, body: String, authorization: &str) -> Answer {
    let response = http()
        .post(format!("{base}/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", authorization)
        .body(body)
        .send()
        .await
        .expect("request through nginx");
    answer(response).await
}

/// The echo of the Hydra stand-in: a header as Hydra received it.
fn echoed_header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["headers"].as_array()?.iter().find_map(|pair| {
        (pair[0].as_str()?.eq_ignore_ascii_case(name))
            .then(|| pair[1].as_str())
            .flatten()
    })
}

/// nginx.conf sends token exchange, discovery and JWKS to Iris, everything else to Hydra, with X-Forwarded-* set by the gateway.
#[tokio::test]
async fn nginx_conf_routes_iris_paths_to_iris_and_the_rest_to_hydra() {
    let kratos = Kratos::start().await;
    kratos.add_token(ALICE_TOKEN, Entry::Session(SessionRecord::alice()));
    let hydra = Hydra::start().await;
    let port = free_port();
    let gateway = format!("http://127.0.0.1:{port}");
    // Hydra's urls.self.issuer is the gateway's public URL (README "Deploying").
    hydra.set_issuer(&format!("{gateway}/"));
    let cc_secret = "gateway client secret";
    hydra.add_client(
        HydraClient::basic("gateway-cc", cc_secret)
            .with_grants(&["client_credentials"])
            .with_scope("orders:read")
            .with_audience(&[ORDERS_API]),
    );
    let mut raw = config(&kratos);
    raw.hydra = Some(HydraConfig {
        public_url: hydra.public_url(),
        admin_url: hydra.admin_url(),
        ..Default::default()
    });
    raw.tokens.issue = IssueMode::Synthesize;
    let iris = TestIris::start(raw).await;
    let nginx = Nginx::start(
        &adapted_nginx_conf(iris.addr, hydra.public_addr(), port),
        port,
    )
    .await;
    let host = nginx.addr.to_string();

    // Discovery through the gateway is Iris's: Hydra's document plus the token-exchange grant.
    for path in &IRIS_ROUTES[1..3] {
        let discovery = get(format!("{gateway}{path}"), &[]).await;
        assert_eq!(discovery.status, 200, "{path}: {}", discovery.json);
        let grants = strings(
            &discovery.json["grant_types_supported"],
            "grant_types_supported",
        );
        assert!(
            grants.iter().any(|g| g == TOKEN_EXCHANGE_GRANT),
            "{path} through nginx lacks the token-exchange grant: {grants:?}"
        );
        assert_eq!(discovery.json["issuer"], format!("{gateway}/"));
        assert_eq!(
            discovery.json["token_endpoint"],
            format!("{gateway}/oauth2/token")
        );
    }
    // The JWKS through the gateway is Iris's: Hydra's keys and Iris's.
    let jwks = get(format!("{gateway}/.well-known/jwks.json"), &[]).await;
    assert_eq!(jwks.status, 200, "{}", jwks.json);
    let hydra_keys = hydra.jwks()["keys"].as_array().unwrap().len();
    assert!(
        jwks.json["keys"].as_array().unwrap().len() > hydra_keys,
        "Iris's key is missing: {}",
        jwks.json
    );

    // client_credentials: through nginx and Iris to Hydra, Hydra's own answer back.
    let cc = post_token(
        &gateway,
        "grant_type=client_credentials&scope=orders%3Aread".into(),
        &basic("gateway-cc", cc_secret),
    )
    .await;
    assert_eq!(cc.status, 200, "{}", cc.json);
    assert_eq!(
        cc.json["token_type"], "bearer",
        "Hydra's answer: {}",
        cc.json
    );
    let seen = hydra.token_requests();
    assert_eq!(seen.len(), 1, "Hydra saw the client_credentials request");
    assert_eq!(seen[0].form_value("grant_type"), Some("client_credentials"));
    assert_eq!(
        seen[0].header("host"),
        Some(host.as_str()),
        "the client's Host survives nginx and Iris"
    );
    assert_eq!(seen[0].header("x-forwarded-host"), Some(host.as_str()));

    // Token exchange: answered by Iris, never seen by Hydra.
    let exchange = post_token(
        &gateway,
        serde_urlencoded::to_string(exchange_form(
            ALICE_TOKEN,
            &[("audience", ORDERS_API), ("scope", "openid orders:read")],
        ))
        .unwrap(),
        &basic("orders-service", ORDERS_SECRET),
    )
    .await;
    assert_eq!(exchange.status, 200, "{}", exchange.json);
    exchange.assert_no_store();
    assert_eq!(exchange.json["issued_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(exchange.json["token_type"], "Bearer");
    let (_, claims) = jwt_parts(exchange.json["access_token"].as_str().unwrap());
    assert_eq!(
        claims["iss"],
        format!("{gateway}/"),
        "Hydra's issuer: the gateway"
    );
    assert!(!hydra.saw_token_exchange());
    assert_eq!(hydra.token_requests().len(), 1);

    // Any other path goes to Hydra with the gateway's X-Forwarded-*, not the client's.
    let passed = get(
        format!("{gateway}/oauth2/auth?client_id=x&state=a%2Fb"),
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-host", "attacker.example"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=203.0.113.9;proto=https"),
        ],
    )
    .await;
    assert_eq!(passed.status, 200, "{}", passed.json);
    assert_eq!(passed.json["path"], "/oauth2/auth");
    assert_eq!(passed.json["query"], "client_id=x&state=a%2Fb");
    let echo = &passed.json;
    assert_eq!(echoed_header(echo, "host"), Some(host.as_str()));
    assert_eq!(echoed_header(echo, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(echoed_header(echo, "x-forwarded-proto"), Some("http"));
    assert_eq!(echoed_header(echo, "x-forwarded-host"), Some(host.as_str()));
    assert_eq!(echoed_header(echo, "forwarded"), None);

    // With Iris gone, Hydra's paths still answer through nginx and Iris's paths do not: the
    // split is nginx's, not Iris's pass-through.
    iris.stop().await;
    let direct = get(format!("{gateway}/oauth2/auth?client_id=x"), &[]).await;
    assert_eq!(
        direct.status, 200,
        "Hydra is reached directly: {}",
        direct.json
    );
    for path in IRIS_ROUTES {
        let status = if path == "/oauth2/token" {
            post_token(
                &gateway,
                "grant_type=client_credentials".into(),
                &basic("gateway-cc", cc_secret),
            )
            .await
            .status
        } else {
            get(format!("{gateway}{path}"), &[]).await.status
        };
        assert_eq!(status, 502, "{path} should go to Iris, which is down");
    }
    assert_eq!(
        hydra.token_requests().len(),
        1,
        "no token request bypassed Iris"
    );
    drop(nginx);
}

// === Kubernetes ===

struct Manifests {
    documents: Vec<(String, Value)>,
}

impl Manifests {
    /// Every document of deploy/kubernetes/*.yaml except the kustomization.
    fn load() -> Manifests {
        let dir = repo().join("deploy/kubernetes");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("deploy/kubernetes")
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.extension().is_some_and(|e| e == "yaml" || e == "yml")
                    && path.file_name().is_some_and(|n| n != "kustomization.yaml")
            })
            .collect();
        files.sort();
        let mut documents = Vec::new();
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&file).unwrap();
            for document in yaml_documents(&text, &name) {
                assert!(
                    document["apiVersion"].is_string() && document["kind"].is_string(),
                    "{name}: every document has apiVersion and kind"
                );
                documents.push((name.clone(), document));
            }
        }
        Manifests { documents }
    }

    /// The one object of this kind.
    fn one(&self, kind: &str) -> &Value {
        let found: Vec<&Value> = self
            .documents
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d["kind"] == kind)
            .collect();
        assert_eq!(found.len(), 1, "exactly one {kind} in deploy/kubernetes");
        found[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.documents
            .iter()
            .map(|(_, d)| d)
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/kubernetes"))
    }

    fn deployment(&self) -> &Value {
        self.one("Deployment")
    }

    fn container(&self) -> &Value {
        let containers = self.deployment()["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        containers
            .iter()
            .find(|c| c["name"] == "iris")
            .expect("a container named iris")
    }

    fn pod_labels(&self) -> &Value {
        &self.deployment()["spec"]["template"]["metadata"]["labels"]
    }

    /// The ConfigMap's iris.yaml, loaded by `iris::config`.
    fn iris_yaml(&self) -> IrisYaml {
        let map = self.one("ConfigMap");
        load_iris_yaml(
            string(&map["data"]["iris.yaml"], "ConfigMap data iris.yaml"),
            "the ConfigMap's iris.yaml",
        )
    }

    /// A container port by number or by name.
    fn container_port(&self, port: &Value) -> u64 {
        if let Some(number) = port.as_u64() {
            return number;
        }
        let name = string(port, "port");
        let ports = self.container()["ports"].as_array().expect("ports");
        ports
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| number(&p["containerPort"], "containerPort"))
            .unwrap_or_else(|| panic!("no container port named {name}"))
    }

    /// The volume mounted at `mount_path` (exactly, or as a parent directory of it), with the
    /// mount and the rest of the path under it.
    fn mount_of(&self, path: &str) -> (&Value, &Value, String) {
        let mounts = self.container()["volumeMounts"]
            .as_array()
            .expect("volumeMounts");
        let (mount, rest) = mounts
            .iter()
            .filter_map(|m| {
                let at = m["mountPath"].as_str()?.trim_end_matches('/');
                if path == at {
                    Some((m, String::new()))
                } else {
                    path.strip_prefix(&format!("{at}/"))
                        .map(|rest| (m, rest.to_owned()))
                }
            })
            .max_by_key(|(m, _)| m["mountPath"].as_str().map_or(0, str::len))
            .unwrap_or_else(|| panic!("nothing is mounted at {path}"));
        let volumes = self.deployment()["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes");
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {} for {path}", mount["name"]));
        (mount, volume, rest)
    }
}

/// The ConfigMap's iris.yaml is accepted by iris::config and binds 0.0.0.0 on 4480 and 4481.
#[test]
fn kubernetes_configmap_is_a_valid_iris_configuration() {
    let manifests = Manifests::load();
    let config = manifests.iris_yaml();
    let serve = &config.raw.serve;
    assert_eq!(
        (serve.public.host.as_str(), serve.public.port),
        ("0.0.0.0", 4480)
    );
    assert_eq!(
        (serve.admin.host.as_str(), serve.admin.port),
        ("0.0.0.0", 4481)
    );
    let hydra = config.raw.hydra.as_ref().expect("Iris fronts Hydra");
    assert_eq!(
        url_port(&hydra.admin_url).map(u64::from),
        Some(HYDRA_ADMIN_PORT)
    );
    assert_eq!(
        url_port(&hydra.public_url).map(u64::from),
        Some(HYDRA_PUBLIC_PORT)
    );
    assert!(!config.key_paths.is_empty(), "a signing key is configured");
}

/// The Deployment's ports, probes, metrics annotations and grace period match the ConfigMap and Iris's admin routes.
#[test]
fn kubernetes_deployment_ports_and_probes_match_iris() {
    let manifests = Manifests::load();
    let config = manifests.iris_yaml();
    let (public, admin) = (
        u64::from(config.raw.serve.public.port),
        u64::from(config.raw.serve.admin.port),
    );
    let deployment = manifests.deployment();
    assert_eq!(deployment["apiVersion"], "apps/v1");
    assert_eq!(number(&deployment["spec"]["replicas"], "replicas"), 2);
    let container = manifests.container();
    let ports: BTreeSet<u64> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| number(&p["containerPort"], "containerPort"))
        .collect();
    assert_eq!(ports, BTreeSet::from([public, admin]));
    for (probe, path) in [
        ("livenessProbe", "/health/alive"),
        ("readinessProbe", "/health/ready"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(
            manifests.container_port(&get["port"]),
            admin,
            "{probe} is on the admin listener"
        );
    }
    // The image's command, with the configuration where the ConfigMap is mounted.
    let args = strings(&container["args"], "args");
    assert_eq!(args, ["serve", "-c", "/etc/iris/iris.yaml"]);
    let (mount, volume, rest) = manifests.mount_of(&args[2]);
    let map_name = string(&volume["configMap"]["name"], "configMap volume");
    let key = match mount["subPath"].as_str() {
        Some(sub) if rest.is_empty() => sub.to_owned(),
        _ => rest,
    };
    assert!(
        manifests.named("ConfigMap", map_name)["data"][&key].is_string(),
        "{} is the ConfigMap's {key}",
        args[2]
    );
    // Every environment variable it sets is a key Iris reads.
    let known: Vec<String> = iris::config::ENV_KEYS
        .iter()
        .map(|k| k.to_ascii_uppercase().replace('.', "_"))
        .collect();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = string(&var["name"], "env name");
        assert!(known.iter().any(|k| k == name), "Iris does not read {name}");
    }
    // Non-root, read-only, nothing to escalate to.
    let pod = &deployment["spec"]["template"]["spec"];
    // Iris's drain ends before the kubelet's SIGKILL.
    let grace = number(
        &pod["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    );
    assert!(
        config.raw.serve.shutdown_grace.0 < Duration::from_secs(grace),
        "serve.shutdown_grace ({:?}) must end before terminationGracePeriodSeconds ({grace})",
        config.raw.serve.shutdown_grace.0
    );
    // Prometheus scrapes the admin listener's metrics path.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], admin.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics/prometheus");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(number(&pod["securityContext"]["runAsUser"], "runAsUser") > 0);
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    for kind in ["requests", "limits"] {
        assert!(
            container["resources"][kind].is_object(),
            "resources.{kind} is set"
        );
    }
}

/// The Secret is mounted read-only where signing.keys points, and holds a file of that name.
#[test]
fn kubernetes_signing_key_secret_is_mounted_at_signing_keys() {
    let manifests = Manifests::load();
    let config = manifests.iris_yaml();
    for path in &config.key_paths {
        let (mount, volume, rest) = manifests.mount_of(path);
        assert_eq!(mount["readOnly"], true, "{path} is mounted read-only");
        let secret_name = string(&volume["secret"]["secretName"], "secret volume");
        let secret = manifests.named("Secret", secret_name);
        // With `items`, the file name maps to a key; without, every key is a file.
        let key = volume["secret"]["items"]
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .find(|i| i["path"] == rest.as_str())
                    .and_then(|i| i["key"].as_str())
            })
            .unwrap_or(&rest)
            .to_owned();
        assert!(
            secret["stringData"][&key].is_string() || secret["data"][&key].is_string(),
            "Secret {secret_name} has no {key} for {path}"
        );
    }
}

/// The Service exposes only the public listener; the HPA, PDB and Service all select the Iris pods.
#[test]
fn kubernetes_service_hpa_and_pdb_fit_the_deployment() {
    let manifests = Manifests::load();
    let config = manifests.iris_yaml();
    let labels = manifests.pod_labels();
    let deployment_name = string(&manifests.deployment()["metadata"]["name"], "name");
    let selector = &manifests.deployment()["spec"]["selector"]["matchLabels"];
    assert!(selects(selector, labels), "the Deployment selects its pods");

    let service = manifests.one("Service");
    assert!(selects(&service["spec"]["selector"], labels));
    let targets: Vec<u64> = service["spec"]["ports"]
        .as_array()
        .expect("Service ports")
        .iter()
        .map(|p| manifests.container_port(&p["targetPort"]))
        .collect();
    assert_eq!(
        targets,
        [u64::from(config.raw.serve.public.port)],
        "the public listener only: the admin listener stays internal"
    );
    assert_eq!(
        number(&service["spec"]["ports"][0]["port"], "Service port"),
        u64::from(config.raw.serve.public.port)
    );

    let hpa = manifests.one("HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], deployment_name);
    let min = number(&hpa["spec"]["minReplicas"], "minReplicas");
    assert!(min >= 2, "at least two replicas");
    assert!(number(&hpa["spec"]["maxReplicas"], "maxReplicas") >= min);

    let pdb = manifests.one("PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
    assert!(
        number(&pdb["spec"]["minAvailable"], "minAvailable") < min,
        "a node drain can still evict a pod"
    );
}

/// The NetworkPolicy lets only Iris's pods reach Hydra's admin port, the one Iris is configured with.
#[test]
fn kubernetes_network_policy_opens_hydra_admin_to_iris_only() {
    let manifests = Manifests::load();
    let config = manifests.iris_yaml();
    let hydra = config.raw.hydra.as_ref().expect("Iris fronts Hydra");
    let admin_port = url_port(&hydra.admin_url).map(u64::from);
    let policy = manifests.one("NetworkPolicy");
    assert_eq!(policy["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "hydra"
    );
    assert!(strings(&policy["spec"]["policyTypes"], "policyTypes").contains(&"Ingress".into()));
    let rules = policy["spec"]["ingress"].as_array().expect("ingress rules");
    let mut admitted = 0;
    for rule in rules {
        let ports: Vec<u64> = rule["ports"]
            .as_array()
            .unwrap_or_else(|| panic!("a rule without ports opens every port: {rule}"))
            .iter()
            .map(|p| number(&p["port"], "port"))
            .collect();
        if !ports.contains(&HYDRA_ADMIN_PORT) {
            continue;
        }
        let from = rule["from"]
            .as_array()
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| panic!("Hydra's admin port is open to everyone: {rule}"));
        for peer in from {
            assert!(
                peer["namespaceSelector"].is_null() && peer["ipBlock"].is_null(),
                "only pods of this namespace: {peer}"
            );
            assert!(
                selects(&peer["podSelector"]["matchLabels"], manifests.pod_labels()),
                "{peer} is not Iris"
            );
        }
        admitted += 1;
    }
    assert_eq!(admitted, 1, "one rule admits Iris to {HYDRA_ADMIN_PORT}");
    assert_eq!(admin_port, Some(HYDRA_ADMIN_PORT));
}

/// kustomization.yaml lists every manifest, and its image override names the Deployment's image.
#[test]
fn kustomization_lists_every_manifest() {
    let kustomization = yaml(
        &read("deploy/kubernetes/kustomization.yaml"),
        "kustomization.yaml",
    );
    let listed: BTreeSet<String> = strings(&kustomization["resources"], "resources")
        .into_iter()
        .collect();
    let manifests = Manifests::load();
    let present: BTreeSet<String> = manifests
        .documents
        .iter()
        .map(|(file, _)| file.clone())
        .collect();
    assert_eq!(listed, present);
    let image = string(&manifests.container()["image"], "image");
    assert!(
        kustomization["images"]
            .as_array()
            .is_some_and(|images| images.iter().any(|i| i["name"] == image)),
        "the images override names {image}"
    );
}

// === Compose ===

struct Compose {
    file: Value,
}

impl Compose {
    fn load() -> Compose {
        Compose {
            file: yaml(
                &read("deploy/docker-compose.yml"),
                "deploy/docker-compose.yml",
            ),
        }
    }

    fn service(&self, name: &str) -> &Value {
        let service = &self.file["services"][name];
        assert!(
            service.is_object(),
            "no service {name} in docker-compose.yml"
        );
        service
    }

    fn command(&self, name: &str) -> Vec<String> {
        strings(&self.service(name)["command"], &format!("{name}.command"))
    }

    /// `(source, target)` of each volume of a service (short syntax).
    fn volumes(&self, name: &str) -> Vec<(String, String)> {
        strings(&self.service(name)["volumes"], &format!("{name}.volumes"))
            .iter()
            .map(|v| {
                let parts: Vec<&str> = v.split(':').collect();
                (parts[0].to_owned(), parts[1].to_owned())
            })
            .collect()
    }

    /// The file of the repository bind-mounted at `target`.
    fn mounted_file(&self, name: &str, target: &str) -> PathBuf {
        let (source, _) = self
            .volumes(name)
            .into_iter()
            .find(|(_, t)| t == target)
            .unwrap_or_else(|| panic!("{name} mounts nothing at {target}"));
        assert!(source.starts_with("./"), "{target} is a bind mount");
        let path = repo().join("deploy").join(&source);
        assert!(path.is_file(), "{} is missing", path.display());
        path
    }

    /// `(published, container)` ports of a service.
    fn ports(&self, name: &str) -> Vec<(u16, u16)> {
        strings(&self.service(name)["ports"], &format!("{name}.ports"))
            .iter()
            .map(|p| {
                let p = p.trim_end_matches("/tcp");
                let parts: Vec<&str> = p.rsplitn(3, ':').collect();
                (parts[1].parse().unwrap(), parts[0].parse().unwrap())
            })
            .collect()
    }

    fn iris_yaml(&self) -> IrisYaml {
        let command = self.command("iris");
        let config = command
            .iter()
            .position(|a| a == "-c")
            .map(|i| command[i + 1].clone())
            .expect("iris serve -c");
        let path = self.mounted_file("iris", &config);
        load_iris_yaml(
            &std::fs::read_to_string(&path).unwrap(),
            "deploy/compose/iris.yaml",
        )
    }
}

/// The values following each occurrence of `flag` in a command.
fn flag_values(command: &[String], flag: &str) -> Vec<String> {
    command
        .windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].clone())
        .collect()
}

/// Compose pins Hydra and Kratos to v26.2.0 and runs their SQL migrations to completion first.
#[test]
fn compose_pins_ory_images_and_migrates_first() {
    let compose = Compose::load();
    let services = compose.file["services"].as_object().expect("services");
    for (name, service) in services {
        if let Some(image) = service["image"].as_str() {
            for product in ["oryd/hydra", "oryd/kratos"] {
                if image.starts_with(product) {
                    assert_eq!(image, format!("{product}:{ORY_TAG}"), "{name}");
                }
            }
        }
    }
    for (server, migrate, image) in [
        ("hydra", "hydra-migrate", "oryd/hydra"),
        ("kratos", "kratos-migrate", "oryd/kratos"),
    ] {
        assert_eq!(
            compose.service(server)["image"],
            format!("{image}:{ORY_TAG}")
        );
        assert_eq!(
            compose.service(migrate)["image"],
            format!("{image}:{ORY_TAG}")
        );
        let command = compose.command(migrate);
        for word in ["migrate", "sql", "-e", "--yes"] {
            assert!(command.iter().any(|c| c == word), "{migrate}: {command:?}");
        }
        assert_eq!(
            compose.service(server)["depends_on"][migrate]["condition"],
            "service_completed_successfully"
        );
        let dsn = &compose.service(server)["environment"]["DSN"];
        assert!(dsn.is_string(), "{server} has a DSN");
        assert_eq!(&compose.service(migrate)["environment"]["DSN"], dsn);
    }
}

/// Compose's Iris is built from deploy/Dockerfile, runs a valid iris.yaml, and publishes its listeners.
#[test]
fn compose_iris_config_is_valid_and_matches_its_ports() {
    let compose = Compose::load();
    let iris = compose.service("iris");
    let build = &iris["build"];
    let dockerfile = repo()
        .join("deploy")
        .join(string(&build["context"], "build.context"))
        .join(string(&build["dockerfile"], "build.dockerfile"));
    assert_eq!(
        dockerfile.canonicalize().unwrap(),
        repo().join("deploy/Dockerfile").canonicalize().unwrap()
    );
    let config = compose.iris_yaml();
    let serve = &config.raw.serve;
    assert_eq!(
        (serve.public.host.as_str(), serve.admin.host.as_str()),
        ("0.0.0.0", "0.0.0.0")
    );
    let containers: BTreeSet<u16> = compose.ports("iris").iter().map(|(_, c)| *c).collect();
    assert_eq!(
        containers,
        BTreeSet::from([serve.public.port, serve.admin.port])
    );
    // Docker's SIGKILL comes after Iris's drain.
    let stop = iris::config::GoDuration::parse(string(
        &iris["stop_grace_period"],
        "iris.stop_grace_period",
    ))
    .unwrap();
    assert!(
        serve.shutdown_grace.0 < stop.0,
        "stop_grace_period outlasts serve.shutdown_grace"
    );
    // Forward mode in front of the compose Hydra, sessions at the compose Kratos.
    assert_eq!(config.raw.tokens.issue, IssueMode::Forward);
    let hydra = config.raw.hydra.as_ref().expect("Iris fronts Hydra");
    assert_eq!(url_host(&hydra.public_url), "hydra");
    assert_eq!(
        url_port(&hydra.public_url).map(u64::from),
        Some(HYDRA_PUBLIC_PORT)
    );
    assert_eq!(url_host(&hydra.admin_url), "hydra");
    assert_eq!(
        url_port(&hydra.admin_url).map(u64::from),
        Some(HYDRA_ADMIN_PORT)
    );
    assert_eq!(url_host(&config.raw.kratos.public_url), "kratos");
    assert_eq!(url_port(&config.raw.kratos.public_url), Some(4433));
    // The key file is where the iris-keys job writes it, through the same volume.
    for path in &config.key_paths {
        let (volume, dir) = compose
            .volumes("iris")
            .into_iter()
            .find(|(_, target)| path.starts_with(&format!("{target}/")))
            .unwrap_or_else(|| panic!("nothing is mounted at {path}"));
        let file = &path[dir.len()..];
        let (_, job_dir) = compose
            .volumes("iris-keys")
            .into_iter()
            .find(|(source, _)| *source == volume)
            .unwrap_or_else(|| panic!("the iris-keys job does not mount {volume}"));
        let job = compose.command("iris-keys").join(" ");
        assert!(
            job.contains(&format!("{job_dir}{file}")),
            "iris-keys writes {job_dir}{file}: {job}"
        );
    }
    // Hydra's issuer is the URL that reaches Iris (README "Deploying").
    let (published, _) = compose
        .ports("iris")
        .into_iter()
        .find(|(_, c)| *c == serve.public.port)
        .unwrap();
    let hydra_yml = yaml(
        &std::fs::read_to_string(compose.mounted_file("hydra", "/etc/config/hydra/hydra.yml"))
            .unwrap(),
        "deploy/compose/hydra.yml",
    );
    assert_eq!(
        hydra_yml["urls"]["self"]["issuer"],
        format!("http://127.0.0.1:{published}/")
    );
    assert!(compose.service("hydra")["environment"]["URLS_SELF_ISSUER"].is_null());
    // Kratos's session cookie is the one Iris forwards.
    let kratos_yml = yaml(
        &std::fs::read_to_string(compose.mounted_file("kratos", "/etc/config/kratos/kratos.yml"))
            .unwrap(),
        "deploy/compose/kratos.yml",
    );
    assert_eq!(
        kratos_yml["session"]["cookie"]["name"],
        config.raw.kratos.session_cookie.as_str()
    );
    let schema = string(
        &kratos_yml["identity"]["schemas"][0]["url"],
        "identity.schemas[0].url",
    );
    let schema_target = schema.strip_prefix("file://").expect("a file:// schema");
    let schema_file = compose.mounted_file("kratos", schema_target);
    serde_json::from_str::<Value>(&std::fs::read_to_string(schema_file).unwrap())
        .expect("the identity schema is JSON");
}

/// Compose's hydra-clients job registers a first-party client with the token-exchange and jwt-bearer grants.
#[test]
fn compose_registers_a_client_with_both_grants() {
    let compose = Compose::load();
    let job = compose.service("hydra-clients");
    assert_eq!(job["image"], format!("oryd/hydra:{ORY_TAG}"));
    let command = compose.command("hydra-clients");
    assert_eq!(command[..2], ["create", "oauth2-client"]);
    assert_eq!(flag_values(&command, "--endpoint"), ["http://hydra:4445"]);
    let grants = flag_values(&command, "--grant-type");
    for grant in [TOKEN_EXCHANGE_GRANT, JWT_BEARER_GRANT] {
        assert!(grants.iter().any(|g| g == grant), "{grant}: {grants:?}");
    }
    assert!(!flag_values(&command, "--audience").is_empty());
    assert_eq!(
        flag_values(&command, "--token-endpoint-auth-method"),
        ["client_secret_basic"]
    );
    let metadata: Value =
        serde_json::from_str(&flag_values(&command, "--metadata")[0]).expect("metadata is JSON");
    assert_eq!(metadata["first_party"], true);
    // Every scope the client may forward is one the trust relationship allows (README).
    let config = compose.iris_yaml();
    let trust = &config.raw.hydra.as_ref().unwrap().trust.scope;
    for scope in flag_values(&command, "--scope") {
        assert!(
            trust.contains(&scope),
            "{scope} is not in hydra.trust.scope"
        );
    }
}

// === Dockerfile ===

/// The Dockerfile builds with the crate's Rust version and runs `iris serve -c /etc/iris/iris.yaml` as non-root on 4480/4481.
#[test]
fn dockerfile_matches_the_crate_and_the_deployments() {
    let dockerfile = read("deploy/Dockerfile");
    let rust_version = cargo_rust_version();
    assert!(
        dockerfile.contains(&format!("ARG RUST_VERSION={rust_version}")),
        "the builder uses the crate's rust-version {rust_version}"
    );
    assert!(dockerfile.contains("FROM rust:${RUST_VERSION}-bookworm AS builder"));
    assert!(dockerfile.contains("cargo build --release --locked"));
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(
        stages
            .last()
            .is_some_and(|s| s.contains("gcr.io/distroless/cc-debian12:nonroot")),
        "the default (last) stage is the distroless runtime: {stages:?}"
    );
    let runtime = &dockerfile[dockerfile.rfind("\nFROM ").unwrap()..];
    assert!(runtime.contains("\nUSER 65532:65532\n"));
    assert!(runtime.contains("\nEXPOSE 4480 4481\n"));
    assert!(runtime.contains("\nENTRYPOINT [\"/usr/local/bin/iris\"]\n"));
    assert!(runtime.contains("\nCMD [\"serve\", \"-c\", \"/etc/iris/iris.yaml\"]\n"));
    let defaults = RawConfig::default();
    assert_eq!(
        (defaults.serve.public.port, defaults.serve.admin.port),
        (4480, 4481),
        "EXPOSE names Iris's default ports"
    );
    // Compose and Kubernetes run the image's command.
    assert_eq!(
        Compose::load().command("iris"),
        ["serve", "-c", "/etc/iris/iris.yaml"]
    );
    assert_eq!(
        strings(&Manifests::load().container()["args"], "args"),
        ["serve", "-c", "/etc/iris/iris.yaml"]
    );
    // The build context keeps what the build copies and drops the rest.
    let ignored: Vec<&str> = include_str!("../../.dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for kept in ["Cargo.toml", "Cargo.lock", "src", "src/"] {
        assert!(!ignored.contains(&kept), ".dockerignore drops {kept}");
    }
    assert!(ignored.contains(&"target/") && ignored.contains(&".git/"));
}

/// `rust-version` from Cargo.toml (one `key = "value"` line; no TOML parser needed).
fn cargo_rust_version() -> String {
    let cargo = read("Cargo.toml");
    let line = cargo
        .lines()
        .find(|l| l.trim_start().starts_with("rust-version"))
        .expect("Cargo.toml has rust-version");
    line.split('=')
        .nth(1)
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_owned()
}

// === Envoy and Traefik ===

/// envoy.yaml parses and routes the four Iris paths to Iris and the rest to Hydra, in that order.
#[test]
fn envoy_routes_the_iris_paths_to_iris() {
    let envoy = yaml(&read("deploy/gateways/envoy.yaml"), "envoy.yaml");
    let resources = &envoy["static_resources"];
    let manager = &resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(manager["use_remote_address"], true, "this is the edge");
    let routes = manager["route_config"]["virtual_hosts"][0]["routes"]
        .as_array()
        .expect("routes");
    let cluster_of = |path: &str| -> (usize, String) {
        routes
            .iter()
            .enumerate()
            .find(|(_, r)| r["match"]["path"] == path)
            .map(|(i, r)| (i, string(&r["route"]["cluster"], "cluster").to_owned()))
            .unwrap_or_else(|| panic!("envoy.yaml has no route for {path}"))
    };
    let catch_all = routes
        .iter()
        .position(|r| r["match"]["prefix"] == "/")
        .expect("a catch-all route");
    assert_eq!(routes[catch_all]["route"]["cluster"], "hydra");
    for path in IRIS_ROUTES {
        let (index, cluster) = cluster_of(path);
        assert_eq!(cluster, "iris", "{path}");
        assert!(index < catch_all, "{path} is matched before the catch-all");
    }
    let clusters = resources["clusters"].as_array().expect("clusters");
    for (name, host, port) in [
        ("iris", "iris", 4480),
        ("hydra", "hydra", HYDRA_PUBLIC_PORT),
    ] {
        let cluster = clusters
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name}"));
        let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(address["address"], host);
        assert_eq!(number(&address["port_value"], "port_value"), port);
    }
}

/// traefik.yml and its dynamic file parse and route the four Iris paths to Iris above a catch-all to Hydra.
#[test]
fn traefik_routes_the_iris_paths_to_iris() {
    let static_config = yaml(&read("deploy/gateways/traefik.yml"), "traefik.yml");
    let dynamic_path = string(
        &static_config["providers"]["file"]["filename"],
        "providers.file.filename",
    );
    let dynamic_name = Path::new(dynamic_path)
        .file_name()
        .unwrap()
        .to_string_lossy();
    let dynamic = yaml(
        &read(&format!("deploy/gateways/{dynamic_name}")),
        &dynamic_name,
    );
    let routers = dynamic["http"]["routers"].as_object().expect("routers");
    let by_service = |service: &str| -> &Value {
        routers
            .values()
            .find(|r| r["service"] == service)
            .unwrap_or_else(|| panic!("no router for {service}"))
    };
    let iris = by_service("iris");
    let rule = string(&iris["rule"], "rule");
    for path in IRIS_ROUTES {
        assert!(
            rule.contains(&format!("Path(`{path}`)")),
            "{path} is not in {rule}"
        );
    }
    let hydra = by_service("hydra");
    assert_eq!(hydra["rule"], "PathPrefix(`/`)");
    assert!(number(&iris["priority"], "priority") > number(&hydra["priority"], "priority"));
    let entry_point = static_config["entryPoints"]
        .as_object()
        .expect("entryPoints")
        .keys()
        .next()
        .unwrap()
        .clone();
    for router in [iris, hydra] {
        assert!(strings(&router["entryPoints"], "entryPoints").contains(&entry_point));
    }
    for (service, url) in [("iris", "http://iris:4480"), ("hydra", "http://hydra:4444")] {
        assert_eq!(
            dynamic["http"]["services"][service]["loadBalancer"]["servers"][0]["url"],
            url
        );
    }
}
