#!/usr/bin/env bash
# Runs the load scenarios of benches/README.md, each against a fresh release
# server on a temporary DATA_DIR, and writes every report to $OUT.
#   cargo build --release --workspace && benches/load.sh   (OUT=/tmp/echolia-load-figures by default)
# (--workspace: the server and the load generator, a member of its own.)
# Server and load generator share this machine, as the targets ask.
set -euo pipefail
BIN=${CARGO_TARGET_DIR:-target}/release
OUT=${OUT:-/tmp/echolia-load-figures}
PORT=${PORT:-28090}
METRICS_PORT=$((PORT + 1))
URL=http://127.0.0.1:$PORT
mkdir -p "$OUT"
SERVER=
trap '[ -n "$SERVER" ] && kill "$SERVER" 2> /dev/null' EXIT

start_server() { # name
    rm -rf "$OUT/data-$1"
    DATA_DIR="$OUT/data-$1" BIND_ADDR=127.0.0.1:$PORT METRICS_ADDR=127.0.0.1:$METRICS_PORT \
        REGISTER_RATE_LIMIT=1000000 LOG_FORMAT=json RUST_LOG=warn "$BIN/echolia" > "$OUT/server-$1.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 50); do curl -sf "$URL/health" > /dev/null && return; sleep 0.1; done
    echo "server did not start: $(cat "$OUT/server-$1.log")" >&2; exit 1
}

# Peak resident memory (VmHWM) and most open files of the server, sampled every second into $OUT/$1.samples.
sample_server() { # name
    while kill -0 "$SERVER" 2> /dev/null; do
        echo "$(grep VmHWM /proc/$SERVER/status | awk '{print $2}') $(ls /proc/$SERVER/fd | wc -l) \
$(curl -s http://127.0.0.1:$METRICS_PORT/metrics | awk '/^echolia_long_polls_waiting /{print $2}')"
        sleep 1
    done > "$OUT/$1.samples" 2> /dev/null &
}

stop_server() { # name
    curl -s http://127.0.0.1:$METRICS_PORT/metrics | grep -E '^echolia_(open_user|user_databases|sqlite|events_appended)' \
        > "$OUT/$1.metrics" || true
    grep -E 'VmHWM|VmRSS' /proc/$SERVER/status >> "$OUT/$1.metrics"
    kill "$SERVER"; wait "$SERVER" || true
}

run() { # name, load generator arguments...
    local name=$1; shift
    start_server "$name"; sample_server "$name"
    echo "== $name: echolia-load $*" | tee "$OUT/$name.txt"
    "$BIN/echolia-load" --url "$URL" "$@" 2>&1 | tee -a "$OUT/$name.txt"
    stop_server "$name"
    echo "server: $(tr '\n' ' ' < "$OUT/$name.metrics")"; echo
}

run push-msgpack --scenario steady --no-pull --users 16 --devices 2 --batch 100 --payload 512 --duration 20 --format msgpack
run push-msgpack-v4 --scenario steady --no-pull --users 16 --devices 2 --batch 100 --payload 512 --duration 20 --format msgpack --ids v4
run push-json --scenario steady --no-pull --users 16 --devices 2 --batch 100 --payload 512 --duration 20 --format json
run steady-msgpack --scenario steady --users 16 --devices 2 --batch 100 --payload 512 --duration 20 --format msgpack
run cold-pull-msgpack --scenario cold-pull --entries 60000 --format msgpack
run cold-pull-json --scenario cold-pull --entries 60000 --format json
run conflicts --scenario conflicts --users 8 --devices 3 --batch 20 --duration 20
run long-poll --scenario long-poll --users 1000 --devices 2 --batch 1 --duration 10 --settle 20 \
    --metrics-url http://127.0.0.1:$METRICS_PORT
run register --scenario register --users 2000 --concurrency 16 --duration 600

# 10,000 registered users, 1,000 of them active (2 devices each, pushing and pulling for a minute).
start_server fleet; sample_server fleet
echo "== fleet: 9,000 registrations, then 1,000 active users" | tee "$OUT/fleet.txt"
"$BIN/echolia-load" --url "$URL" --scenario register --users 9000 --concurrency 16 --duration 600 2>&1 | tee -a "$OUT/fleet.txt"
"$BIN/echolia-load" --url "$URL" --scenario steady --users 1000 --devices 2 --batch 20 --duration 60 2>&1 | tee -a "$OUT/fleet.txt"
stop_server fleet
echo "fleet server: $(tr '\n' ' ' < "$OUT/fleet.metrics"); most open files: $(sort -k2 -n "$OUT/fleet.samples" | tail -1 | cut -d' ' -f2)"
