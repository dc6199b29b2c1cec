#!/usr/bin/env bash
# Instructions per request of `iris serve`, counted by callgrind: repeatable to a fraction of a
# percent for the same binary whatever else the machine is doing, where the load harness's
# requests per second move by tens of percent between runs on a shared machine (README
# "Performance"). Counts user-space instructions only: system calls and the kernel's loopback
# work are not in them.
#
#   bash benches/instructions.sh [IRIS_BIN [IRIS_BIN_COMPARE]]
#
# For each binary (default target/release/iris): pass-through (`GET /health/alive` through Iris to
# an nginx standing in for Hydra's public port) and a cached token exchange (standalone issuer,
# a static client_secret_basic client, a Python Kratos stand-in answering every whoami with one
# session, `kratos.cache_ttl: 5m`, scope `email`: one ES256 signature). Each scenario runs Iris
# under callgrind twice, with LOW and HIGH requests (4 keep-alive connections, each request
# answered before the next is sent), and reports (Ir(HIGH) - Ir(LOW)) / (HIGH - LOW), so start-up
# and shutdown cancel out. Under valgrind aws-lc signs without the CPU extensions it uses
# natively, so the exchange's count is dominated by the signature; compare builds with it, not
# with the load harness's CPU figures.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
low=${LOW:-2000}
high=${HIGH:-8000}
exchange_low=${EXCHANGE_LOW:-400}
exchange_high=${EXCHANGE_HIGH:-1600}
bins=("${1:-target/release/iris}")
[ -n "${2:-}" ] && bins+=("$2")

install() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else
    echo "missing: $* (install with apt-get install $*)" >&2
    exit 1
  fi
}
command -v valgrind >/dev/null || install valgrind
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || install nginx-light || install nginx
command -v python3 >/dev/null || install python3
command -v curl >/dev/null || install curl
[ -x "${bins[0]}" ] || cargo build --release --locked

work=$(mktemp -d)
cleanup() {
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  [ -n "${kratos_pid:-}" ] && kill "$kratos_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
hydra_port=$(port)
kratos_port=$(port)
public_port=$(port)
admin_port=$(port)

# nginx answering every request as Hydra's /health/alive does.
mkdir -p "$work/nginx"
cat > "$work/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$hydra_port;
    location / { default_type application/json; return 200 '{"status":"ok"}'; }
  }
}
EOF
nginx -c "$work/nginx.conf"

# Kratos: every whoami is one active session (reference/kratos.md's shape, trimmed).
cat > "$work/kratos.py" <<'EOF'
import http.server, json, sys
BODY = json.dumps({
    "id": "bench-session", "active": True,
    "expires_at": "2099-01-01T00:00:00Z", "authenticated_at": "2026-01-01T00:00:00Z",
    "authenticator_assurance_level": "aal1", "authentication_methods": [{"method": "password"}],
    "identity": {"id": "0b1f6a7e-0000-4000-8000-000000000001", "state": "active",
                 "traits": {"email": "alice@example.com"},
                 "verifiable_addresses": [{"value": "alice@example.com", "verified": True,
                                           "via": "email", "status": "completed"}]},
}).encode()
class Whoami(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Whoami).serve_forever()
EOF
python3 "$work/kratos.py" "$kratos_port" &
kratos_pid=$!

# Sends N requests over 4 keep-alive connections and checks every answer is a 200.
cat > "$work/client.py" <<'EOF'
import base64, socket, sys, threading
port, total, scenario = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if scenario == "exchange":
    form = (b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
            b"&subject_token=ory_st_bench&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asession"
            b"&audience=https%3A%2F%2Forders.example.com&scope=email")
    request = (b"POST /oauth2/token HTTP/1.1\r\nHost: iris.example\r\nAuthorization: Basic "
               + base64.b64encode(b"bench-service:bench-secret")
               + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: "
               + str(len(form)).encode() + b"\r\n\r\n" + form)
else:
    request = b"GET /health/alive HTTP/1.1\r\nHost: hydra.example\r\n\r\n"
def run(count):
    connection = socket.create_connection(("127.0.0.1", port))
    pending = b""
    for _ in range(count):
        connection.sendall(request)
        while True:
            end = pending.find(b"\r\n\r\n")
            if end >= 0:
                length = int(pending[:end].lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(pending) >= end + 4 + length:
                    if not pending.startswith(b"HTTP/1.1 200"):
                        sys.exit("not a 200: %r" % pending[:80])
                    pending = pending[end + 4 + length:]
                    break
            chunk = connection.recv(65536)
            if not chunk:
                sys.exit("connection closed")
            pending += chunk
threads = [threading.Thread(target=run, args=(total // 4,)) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
EOF

key="$work/key.jwk"
"${bins[0]}" keys generate > "$key"
hash=$(printf 'bench-secret' | "${bins[0]}" hash-secret)
common="serve:
  public: { host: 127.0.0.1, port: $public_port }
  admin: { host: 127.0.0.1, port: $admin_port }
signing:
  keys:
    - path: $key
log:
  level: info
  format: text"
cat > "$work/pass-through.yaml" <<EOF
$common
kratos:
  public_url: http://127.0.0.1:$kratos_port/
hydra:
  public_url: http://127.0.0.1:$hydra_port/
  admin_url: http://127.0.0.1:$hydra_port/
EOF
cat > "$work/exchange.yaml" <<EOF
$common
issuer: https://iris.example.com/
kratos:
  public_url: http://127.0.0.1:$kratos_port/
  cache_ttl: 5m
clients:
  - client_id: bench-service
    client_secret_hash: "$hash"
    token_endpoint_auth_method: client_secret_basic
    grant_types: [urn:ietf:params:oauth:grant-type:token-exchange]
    audience: [https://orders.example.com]
    scope: openid email
    metadata: { first_party: true }
EOF

# Instructions of one run of BIN under SCENARIO's config that answered N requests (plus the
# readiness probe's one).
instructions() {
  local bin=$1 scenario=$2 n=$3 out="$work/callgrind.out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" serve --config "$work/$scenario.yaml" \
    2>"$work/valgrind.log" >/dev/null &
  local pid=$!
  local probe=/health/alive
  [ "$scenario" = exchange ] && probe=/.well-known/jwks.json
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null "http://127.0.0.1:$public_port$probe" && break
    sleep 0.2
  done
  python3 "$work/client.py" "$public_port" "$n" "$scenario"
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
  rm -f "$out"
}

printf '| binary | scenario | instructions per request |\n|---|---|--:|\n'
for bin in "${bins[@]}"; do
  for scenario in pass-through exchange; do
    if [ "$scenario" = exchange ]; then a=$exchange_low; b=$exchange_high; else a=$low; b=$high; fi
    ir_a=$(instructions "$bin" "$scenario" "$a")
    ir_b=$(instructions "$bin" "$scenario" "$b")
    printf '| %s | %s | %d |\n' "$bin" "$scenario" $(((ir_b - ir_a) / (b - a)))
  done
done
