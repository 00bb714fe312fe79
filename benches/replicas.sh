#!/usr/bin/env bash
# Push and pull throughput and push latency on `local`, `sqld` and `sqld` with embedded replicas,
# one after the other in one run: a fresh release server (and for the sqld ones a fresh sqld, the
# shared 0.24.33 build, namespaces on, JWT auth) per store, the same load for each.
#   cargo build --release --workspace && benches/replicas.sh   (OUT=/tmp/echolia-replicas-figures by default)
# SQLD: the unpacked sqld binary (default: $CARGO_TARGET_DIR/sqld, unpacked from ../shared/sqld/sqld.xz
# if missing). LOAD_ARGS: the load (default: the steady scenario of the sqld measurement before).
# Needs openssl (the JWT key pair and token) and xz.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release
SQLD=${SQLD:-$TARGET/sqld}
OUT=${OUT:-/tmp/echolia-replicas-figures}
PORT=${PORT:-28390}
METRICS_PORT=$((PORT + 1)) SQLD_PORT=$((PORT + 2)) SQLD_ADMIN_PORT=$((PORT + 3))
URL=http://127.0.0.1:$PORT
read -r -a LOAD_ARGS <<< "${LOAD_ARGS:---scenario steady --users 4 --devices 2 --batch 100 --concurrency 8 --duration 15}"
mkdir -p "$OUT"
SERVER= SQLD_PID=
trap '[ -n "$SERVER" ] && kill "$SERVER" 2> /dev/null; [ -n "$SQLD_PID" ] && kill "$SQLD_PID" 2> /dev/null' EXIT

# shellcheck source=benches/sqld.sh
. benches/sqld.sh

run() { # name, server variables...
    local name=$1; shift
    rm -rf "$OUT/data-$name"
    env DATA_DIR="$OUT/data-$name" BIND_ADDR=127.0.0.1:$PORT METRICS_ADDR=127.0.0.1:$METRICS_PORT \
        REGISTER_RATE_LIMIT=1000000 LOG_FORMAT=json RUST_LOG=warn "$@" "$BIN/echolia" > "$OUT/server-$name.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 100); do curl -sf "$URL/health" > /dev/null && break; sleep 0.1; done
    curl -sf "$URL/health" > /dev/null || { echo "server did not start: $(cat "$OUT/server-$name.log")" >&2; exit 1; }
    echo "== $name: echolia-load ${LOAD_ARGS[*]}" | tee "$OUT/$name.txt"
    "$BIN/echolia-load" --url "$URL" "${LOAD_ARGS[@]}" 2>&1 | tee -a "$OUT/$name.txt"
    kill "$SERVER"; wait "$SERVER" || true; SERVER=
    echo
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/load-average.txt"
run local DATABASE_BACKEND=local
SQLD_VARS=(DATABASE_BACKEND=sqld SQLD_URL=http://127.0.0.1:$SQLD_PORT SQLD_ADMIN_URL=http://127.0.0.1:$SQLD_ADMIN_PORT
    SQLD_AUTH_TOKEN="$TOKEN")
start_sqld; run sqld "${SQLD_VARS[@]}"; stop_sqld
start_sqld; run sqld-replicas "${SQLD_VARS[@]}" EMBEDDED_REPLICAS=true; stop_sqld
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/load-average.txt"
