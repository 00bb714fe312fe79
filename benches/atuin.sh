#!/usr/bin/env bash
# Runs the same workloads against Atuin's server (18.16.1, its record API) and an Echolia release binary,
# interleaved (Atuin, Echolia, per scenario and round), each run on a fresh server with a fresh database
# on a free port, and prints Echolia's figures over Atuin's:
#   benches/atuin.sh [scenario…]          (default: push-v4 single-v7 single-v4; also cold-pull-v4, open-loop, …)
# ATUIN the atuin-server binary (default /root/.cache/atuin/bin/atuin-server, from
#   `cargo install atuin-server --version 18.16.1 --locked --root /root/.cache/atuin`);
# ECHOLIA the Echolia binary (default $CARGO_TARGET_DIR/release/echolia, else target/release/echolia);
# LOAD the load generator (default: the one beside ECHOLIA); EVENTS the single-user log size (default
# 1000000); ROUNDS (default 1); reports in $OUT (default /tmp/echolia-atuin), one line per run and the
# ratios in $OUT/summary.txt. Needs curl and jq. Server and generator share this machine.
set -euo pipefail
ATUIN=${ATUIN:-/root/.cache/atuin/bin/atuin-server}
ECHOLIA=${ECHOLIA:-${CARGO_TARGET_DIR:-target}/release/echolia}
LOAD=${LOAD:-$(dirname "$ECHOLIA")/echolia-load}
OUT=${OUT:-/tmp/echolia-atuin}; ROUNDS=${ROUNDS:-1}; EVENTS=${EVENTS:-1000000}
for bin in "$ATUIN" "$ECHOLIA" "$LOAD"; do
    [ -x "$bin" ] || { echo "no executable $bin (see benches/README.md, \"Atuin\")" >&2; exit 2; }
done
mkdir -p "$OUT"

# Echolia takes --format msgpack where a scenario says so; Atuin's record API speaks JSON only.
declare -A ARGS=(
    [push-v4]="--scenario steady --no-pull --users 16 --devices 2 --batch 100 --payload 512 --duration 20 --ids v4"
    [push-v7]="--scenario steady --no-pull --users 16 --devices 2 --batch 100 --payload 512 --duration 20 --ids v7"
    [single-v7]="--scenario single-user --devices 2 --batch 1000 --payload 512 --events $EVENTS --ids v7"
    [single-v4]="--scenario single-user --devices 2 --batch 1000 --payload 512 --events $EVENTS --ids v4"
    [single-v7-msgpack]="--scenario single-user --devices 2 --batch 1000 --payload 512 --events $EVENTS --ids v7 --format msgpack"
    [cold-pull-v4]="--scenario cold-pull --entries 60000 --payload 512 --ids v4"
    [open-loop]="--scenario steady --open-loop --rate 15000 --users 16 --devices 2 --batch 100 --payload 512 --duration 20 --ids v4"
)

free_port() { # [from]
    local port
    for port in $(seq "${1:-${PORT:-28290}}" 29999); do
        (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null || { echo "$port"; return; }
    done
    echo "no free port" >&2; exit 1
}

SERVER=
trap '[ -n "$SERVER" ] && kill "$SERVER" 2> /dev/null' EXIT

start() { # target port
    rm -rf "$OUT/data"; mkdir -p "$OUT/data"
    if [ "$1" = atuin ]; then
        printf 'host = "127.0.0.1"\nport = %s\nopen_registration = true\ndb_uri = "sqlite://%s/atuin.db"\n' \
            "$2" "$OUT/data" > "$OUT/data/server.toml"
        ATUIN_CONFIG_DIR="$OUT/data" RUST_LOG=warn "$ATUIN" start > "$OUT/server.log" 2>&1 &
        SERVER=$!; HEALTH=/healthz
    else
        DATA_DIR="$OUT/data" BIND_ADDR=127.0.0.1:$2 METRICS_ADDR=127.0.0.1:$(free_port $(($2 + 1))) REGISTER_RATE_LIMIT=1000000 \
            LOG_FORMAT=json RUST_LOG=warn "$ECHOLIA" > "$OUT/server.log" 2>&1 &
        SERVER=$!; HEALTH=/health
    fi
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$2$HEALTH" > /dev/null && return; sleep 0.1; done
    echo "$1 did not start: $(cat "$OUT/server.log")" >&2; exit 1
}

# One line of figures from a report.
FIGURES='
  (.operations.push // {}) as $push
  | [ ($push | select(.items_per_sec) | "push \(.items_per_sec | floor)/s p99 \(.latency_ms.p99) ms"),
      (.operations.pull | select(.) | select($push.items_per_sec == null) | "pull \(.items) rows \(.items_per_sec | floor)/s, page p99 \(.latency_ms.p99) ms"),
      (.single_user | select(.) | "slices last/first \(.last_over_first // "-"), pull \(.pull.rows | tostring) rows \(.pull.rows_per_sec | floor)/s in \(.pull.secs * 1000 | floor) ms"),
      (.open_loop | select(.) | "offered \(.offered_events_per_sec | floor)/s (scheduled \(.scheduled_events_per_sec | floor)) achieved \(.achieved_events_per_sec | floor)/s, \(.late_starts) late"),
      (.server_cpu | select(.) | "server CPU \(.cpu_secs) s, \(.us_per_event // 0 | . * 10 | floor / 10) µs/event, generator \(.generator_us_per_event // 0 | . * 10 | floor / 10) µs/event") ]
  | join("; ")'

run() { # target scenario round
    local port; port=$(free_port)
    start "$1" "$port"
    local args=${ARGS[$2]}
    [ "$1" = atuin ] && args=${args//--format msgpack/--format json}
    # shellcheck disable=SC2086 # the arguments are words
    "$LOAD" --url "http://127.0.0.1:$port" --target "$1" $args --server-pid "$SERVER" --json > "$OUT/$2-$3-$1.json"
    local hwm; hwm=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER/status")
    kill "$SERVER"; wait "$SERVER" || true; SERVER=
    echo "$2 round $3 $1: $(jq -r "$FIGURES" "$OUT/$2-$3-$1.json"); peak RSS $((hwm / 1024)) MiB" | tee -a "$OUT/summary.txt"
    sync; sleep 3
}

ratio() { # scenario round: Echolia's figure over Atuin's (for p99 and CPU, lower is better)
    jq -rs --arg s "$1 round $2" '
        def over(f): ((.[1] | f) // 0) as $e | ((.[0] | f) // 0) as $a
            | if $a > 0 then ($e / $a * 100 | floor) / 100 else "-" end;
        "\($s) Echolia/Atuin:"
        + (if .[1].operations.push then " push \(over(.operations.push.items_per_sec))x, p99 \(over(.operations.push.latency_ms.p99))x" else "" end)
        + (if .[1].single_user then ", pull \(over(.single_user.pull.rows_per_sec))x"
           elif .[1].operations.pull then " pull \(over(.operations.pull.items_per_sec))x" else "" end)
        + (if .[1].server_cpu then ", CPU per event \(over(.server_cpu.us_per_event))x" else "" end)' \
        "$OUT/$1-$2-atuin.json" "$OUT/$1-$2-echolia.json" | tee -a "$OUT/summary.txt"
}

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(push-v4 single-v7 single-v4)
for scenario in "${scenarios[@]}"; do
    [ -n "${ARGS[$scenario]:-}" ] || { echo "unknown scenario $scenario (one of: ${!ARGS[*]})" >&2; exit 2; }
    for round in $(seq "$ROUNDS"); do
        run atuin "$scenario" "$round"
        run echolia "$scenario" "$round"
        ratio "$scenario" "$round"
    done
done
