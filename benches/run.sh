#!/usr/bin/env bash
# Iris's benchmarks in one go (README "Performance"): installs what is missing (wrk, nginx, the
# Node baseline's modules), builds the release binary, runs the load harness (benches/load.rs)
# and then the criterion micro-benchmarks (benches/micro.rs). The load report goes to stdout and
# to benches/results/latest.md; criterion keeps its own under target/criterion.
#
#   bash benches/run.sh              # everything, about 2.5 minutes after the builds
#   bash benches/run.sh load         # only the load harness
#   bash benches/run.sh micro        # only the micro-benchmarks
#
# Settings of the load harness are environment variables (BENCH_DURATION, BENCH_CONNECTIONS,
# BENCH_QUIET, BENCH_ONLY, ...: see the top of benches/load.rs). Every server and the load
# generator share this machine's cores: run it on an otherwise idle machine and compare the rows
# of one run with each other.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"

install() {
  if [ "$(id -u)" = 0 ]; then
    [ -n "${apt_updated:-}" ] || { apt-get update -qq; apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else
    echo "missing: $* (install with apt-get install $*)" >&2
    exit 1
  fi
}

if [ "$what" != micro ]; then
  command -v wrk >/dev/null || install wrk
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || install nginx-light || install nginx
  command -v node >/dev/null || install nodejs npm
  command -v npm >/dev/null || install npm
  (cd benches/baselines && npm ci --no-audit --no-fund --loglevel=error)
  # 10 000 keep-alive connections need as many descriptors in the harness and in Iris.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 12000 ]; then
    echo "warning: RLIMIT_NOFILE is $(ulimit -n); the 10 000-connection step needs about 12 000" >&2
  fi
  cargo build --release --locked
  mkdir -p benches/results
  BENCH_OUT="${BENCH_OUT:-benches/results/latest.md}" cargo bench --locked --bench load
fi

if [ "$what" != load ]; then
  cargo bench --locked --bench micro
fi
