#!/usr/bin/env bash
# The test suite, on a fresh machine: installs the real parts the tests drive (nginx for the
# gateway test, Chromium for the session-bridge browser test) when missing, then `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then missing+=(nginx-light); fi
if [ ! -x /usr/bin/chromium ]; then missing+=(chromium); fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests need: ${missing[*]} (apt-get install them, or run as root)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

cargo test "$@"
