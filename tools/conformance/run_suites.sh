#!/usr/bin/env bash
# Run the published Socket.IO and Engine.IO conformance suites against `python -m tests.conformance`.
# Not part of `make test` (it needs Node, npm and the network, or local checkouts); see docs/conformance.md.
#
#   tools/conformance/run_suites.sh [SOCKET_IO_PROTOCOL_CHECKOUT [ENGINE_IO_PROTOCOL_CHECKOUT]]
#
# Arguments: checkouts or bare clones; without them the two repositories are cloned from GitHub. The suites are copied to a temporary
# directory (never into this project) and their hard-coded http://localhost:3000 is replaced by SUITE_URL.
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
port="${PORT:-3917}"
work="$(mktemp -d)"
trap 'kill "${server_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

fetch_suite() {  # $1 name, $2 checkout or ""
    if [ -n "$2" ] && [ -d "$2/test-suite" ]; then cp -r "$2/test-suite" "$work/$1"
    elif [ -n "$2" ]; then  # a bare repository (no work tree)
        git -C "$2" archive HEAD test-suite | tar -x -C "$work" && mv "$work/test-suite" "$work/$1"
    else git clone --quiet --depth 1 "https://github.com/socketio/$1.git" "$work/$1-repo" && mv "$work/$1-repo/test-suite" "$work/$1"
    fi
    sed -i 's#^const URL = "http://localhost:3000";#const URL = process.env.SUITE_URL ?? "http://localhost:3000";#' "$work/$1/test-suite.js"
    (cd "$work/$1" && npm ci --no-audit --no-fund --silent)
}
fetch_suite socket.io-protocol "${1:-}"
fetch_suite engine.io-protocol "${2:-}"

(cd "$here" && exec .venv/bin/python -m tests.conformance --port "$port") &
server_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done

status=0
for suite in socket.io-protocol engine.io-protocol; do
    echo "== $suite"
    (cd "$work/$suite" && SUITE_URL="http://127.0.0.1:$port" npx mocha test-suite.js) || status=1
done
exit $status
