#!/usr/bin/env bash
# Compares two server binaries on load.sh's scenarios, interleaved (A B A B … per scenario), each run against
# a fresh server on a fresh DATA_DIR, `sync; sleep 2` between runs, one load generator for both:
#   benches/compare.sh OLD/echolia NEW/echolia [scenario…]        (default: the push and pull scenarios)
# ROUNDS (default 2) pairs per scenario; LOAD the generator (default: the one beside NEW); reports in $OUT
# (default /tmp/echolia-compare), one line per run in $OUT/summary.txt. Needs curl and jq.
set -euo pipefail
A=$1 B=$2; shift 2
OUT=${OUT:-/tmp/echolia-compare}; ROUNDS=${ROUNDS:-2}; PORT=${PORT:-28190}
LOAD=${LOAD:-$(dirname "$B")/echolia-load}
URL=http://127.0.0.1:$PORT
mkdir -p "$OUT"

declare -A ARGS=(
    [push-msgpack]="--scenario steady --no-pull --users 16 --devices 2 --batch 100 --payload 512 --duration 20 --format msgpack"
    [push-msgpack-v4]="--scenario steady --no-pull --users 16 --devices 2 --batch 100 --payload 512 --duration 20 --format msgpack --ids v4"
    [push-json]="--scenario steady --no-pull --users 16 --devices 2 --batch 100 --payload 512 --duration 20 --format json"
    [steady-msgpack]="--scenario steady --users 16 --devices 2 --batch 100 --payload 512 --duration 20 --format msgpack"
    [cold-pull-msgpack]="--scenario cold-pull --entries 60000 --format msgpack"
    [cold-pull-json]="--scenario cold-pull --entries 60000 --format json"
    [conflicts]="--scenario conflicts --users 8 --devices 3 --batch 20 --duration 20"
    # As in atuin.sh; EVENTS (default 1000000) the size of the single user's log.
    [single-v7]="--scenario single-user --devices 2 --batch 1000 --payload 512 --events ${EVENTS:-1000000} --ids v7"
    [single-v4]="--scenario single-user --devices 2 --batch 1000 --payload 512 --events ${EVENTS:-1000000} --ids v4"
    [open-loop]="--scenario steady --open-loop --rate 15000 --users 16 --devices 2 --batch 100 --payload 512 --duration 20 --ids v4"
)

run() { # label binary scenario round
    rm -rf "$OUT/data"
    DATA_DIR="$OUT/data" BIND_ADDR=127.0.0.1:$PORT METRICS_ADDR=127.0.0.1:$((PORT + 1)) REGISTER_RATE_LIMIT=1000000 \
        LOG_FORMAT=json RUST_LOG=warn "$2" > "$OUT/server.log" 2>&1 &
    local pid=$!
    for _ in $(seq 50); do curl -sf "$URL/health" > /dev/null && break; sleep 0.1; done
    # shellcheck disable=SC2086 # the arguments are words
    "$LOAD" --url "$URL" ${ARGS[$3]} --json > "$OUT/$3-$4-$1.json"
    local cpu; cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$pid/stat")
    local hwm; hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    kill "$pid"; wait "$pid" || true
    local figures; figures=$(jq -r '.operations | to_entries[] | "\(.key) \(.value.items_per_sec | floor)/s p99 \(.value.latency_ms.p99) ms"' \
        "$OUT/$3-$4-$1.json" | paste -sd ';')
    echo "$3 round $4 $1: $figures; server CPU ${cpu} s, peak RSS $((hwm / 1024)) MiB" | tee -a "$OUT/summary.txt"
    sync; sleep 2
}

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(push-msgpack steady-msgpack cold-pull-msgpack cold-pull-json)
for scenario in "${scenarios[@]}"; do
    [ -n "${ARGS[$scenario]:-}" ] || { echo "unknown scenario $scenario" >&2; exit 2; }
    for round in $(seq "$ROUNDS"); do
        run A "$A" "$scenario" "$round"
        run B "$B" "$scenario" "$round"
    done
done
