#!/usr/bin/env bash
# How long each operator command takes on `local` and on `sqld`, for one user with EVENTS events
# (default 100,000; the single-user scenario, v4 ids): a fresh release server (and for sqld a fresh
# sqld, the shared 0.24.33 build, namespaces on, JWT auth) fills the log, stops, then each command
# runs through the binary, timed with /usr/bin/time (wall seconds, peak RSS).
#   cargo build --release --workspace && benches/operators.sh   (OUT=/tmp/echolia-operators by default)
# BIN: the directory of echolia and echolia-load (default $CARGO_TARGET_DIR/release); SQLD as in replicas.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${BIN:-$TARGET/release}
SQLD=${SQLD:-$TARGET/sqld}
OUT=${OUT:-/tmp/echolia-operators}
EVENTS=${EVENTS:-100000}
PORT=${PORT:-28590}
SQLD_PORT=$((PORT + 2)) SQLD_ADMIN_PORT=$((PORT + 3))
URL=http://127.0.0.1:$PORT
mkdir -p "$OUT"
SERVER= SQLD_PID=
trap '[ -n "$SERVER" ] && kill "$SERVER" 2> /dev/null; [ -n "$SQLD_PID" ] && kill "$SQLD_PID" 2> /dev/null' EXIT
# shellcheck source=benches/sqld.sh
. benches/sqld.sh

measure() { # store, variables...
    local store=$1; shift
    rm -rf "$OUT/data-$store"
    env DATA_DIR="$OUT/data-$store" BIND_ADDR=127.0.0.1:$PORT METRICS_ADDR=127.0.0.1:$((PORT + 1)) \
        REGISTER_RATE_LIMIT=1000000 RUST_LOG=warn "$@" "$BIN/echolia" > "$OUT/server-$store.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 100); do curl -sf "$URL/health" > /dev/null && break; sleep 0.1; done
    "$BIN/echolia-load" --url "$URL" --scenario single-user --devices 2 --batch 1000 --events "$EVENTS" --ids v4 \
        --no-pull --json > "$OUT/load-$store.json"
    kill "$SERVER"; wait "$SERVER" || true; SERVER=
    local user
    user=$(env DATA_DIR="$OUT/data-$store" "$@" "$BIN/echolia" verify --all 2>&1 | grep -o 'user [0-9a-f-]\{36\}' | head -1 | cut -d' ' -f2)
    for command in "migrate" "verify --user $user" "audit --user $user --json" "export --user $user" \
        "replay --check --user $user" "replay --user $user"; do
        # shellcheck disable=SC2086 # the command's words
        /usr/bin/time -f "%e %M" -o "$OUT/time" env DATA_DIR="$OUT/data-$store" "$@" "$BIN/echolia" $command \
            > /dev/null 2> "$OUT/stderr" || { echo "$store: $command failed: $(tail -3 "$OUT/stderr")" >&2; exit 1; }
        read -r secs kib < "$OUT/time"
        local rate=-
        [ "$command" = migrate ] || rate=$(awk -v e="$EVENTS" -v s="$secs" 'BEGIN { printf "%d events/s", e / (s > 0 ? s : 0.01) }')
        printf '%s\t%s\t%s s\t%s MiB\t%s\n' "$store" "${command%% --user*}" "$secs" $((kib / 1024)) "$rate" | tee -a "$OUT/summary.tsv"
    done
}

: > "$OUT/summary.tsv"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.tsv"
measure local DATABASE_BACKEND=local
start_sqld
measure sqld DATABASE_BACKEND=sqld SQLD_URL=http://127.0.0.1:$SQLD_PORT SQLD_ADMIN_URL=http://127.0.0.1:$SQLD_ADMIN_PORT \
    SQLD_AUTH_TOKEN="$TOKEN"
stop_sqld
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.tsv"
