#!/usr/bin/env bash
# The HTTP contract, fuzzed: schemathesis drives every operation of
# /openapi.json on a real server (a temporary DATA_DIR, a free port, a real
# token from POST /auth/register) and fails on any answer that is a 5xx, has a
# status or content type the document does not list, or does not match the
# documented schema.
#
#   scripts/schemathesis.sh                 # builds the debug binary if needed
#   ECHOLIA_BIN=target/release/echolia scripts/schemathesis.sh
#
# Environment: SCHEMATHESIS (the executable; default: `schemathesis` on PATH,
# else $ECHOLIA_CI_VENV/bin/schemathesis), SCHEMATHESIS_EXAMPLES (cases per
# operation and phase, default 40), SCHEMATHESIS_SEED (default 1, so a run can
# be repeated), SCHEMATHESIS_WORKERS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${ECHOLIA_CI_VENV:-$HOME/.cache/echolia-sync/venv}"
ST="${SCHEMATHESIS:-$(command -v schemathesis || echo "$VENV/bin/schemathesis")}"
[ -x "$ST" ] || { echo "schemathesis not found: pip install 'schemathesis>=4,<5' 'msgpack>=1,<2' (or set SCHEMATHESIS)" >&2; exit 2; }
PY="$(dirname "$ST")/python"
[ -x "$PY" ] || PY=python3

if [ -z "${ECHOLIA_BIN:-}" ]; then
    cargo build --quiet --locked --bin echolia
    ECHOLIA_BIN="${CARGO_TARGET_DIR:-target}/debug/echolia"
fi

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"
BASE="http://127.0.0.1:$PORT"
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2> /dev/null; then
        # Bounded: a server that does not stop is killed.
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2> /dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2> /dev/null || true
        wait "$SERVER_PID" 2> /dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Development serves /openapi.json; the limits are raised so that generated
# registrations and claims are checked, not rate limited.
env -i PATH="$PATH" \
    ENVIRONMENT=development \
    DATA_DIR="$WORK/data" \
    JWT_SECRET="$("$PY" -c 'import secrets; print(secrets.token_hex(32))')" \
    BIND_ADDR="127.0.0.1:$PORT" \
    METRICS_ADDR="127.0.0.1:$(free_port)" \
    REGISTER_RATE_LIMIT=1000000 \
    PAIRING_CLAIM_RATE_LIMIT=1000000 \
    LOG_FORMAT=json RUST_LOG=warn \
    "$ECHOLIA_BIN" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!

for _ in $(seq 1 200); do
    curl -fsS "$BASE/health" > /dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2> /dev/null || { cat "$WORK/server.log" >&2; echo "the server exited" >&2; exit 1; }
    sleep 0.1
done

# A fresh user's access token.
register() {
    curl -fsS -H 'content-type: application/json' "$BASE/auth/register" \
        -d '{"device_name":"schemathesis","device_type":"cli","platform":"linux","public_key":"schemathesis-key"}' |
        "$PY" -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

export SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}"
run() {
    local token
    # Explicit: `run ... || status=1` turns set -e off inside run.
    token="$(register)" || { echo "registration failed" >&2; exit 1; }
    [ -n "$token" ] || { echo "registration returned no access token" >&2; exit 1; }
    "$ST" --config-file scripts/schemathesis.toml run "$BASE/openapi.json" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --phases examples,coverage,fuzzing \
        --max-examples "${SCHEMATHESIS_EXAMPLES:-40}" \
        --seed "${SCHEMATHESIS_SEED:-1}" \
        --workers "${SCHEMATHESIS_WORKERS:-2}" \
        --request-timeout 90 \
        --generation-database none \
        --no-color \
        -H "Authorization: Bearer $token" \
        "$@"
}

status=0
start=$(date +%s)
# Every operation but the account's deletion, with one user's token; then the
# deletion, with a user of its own (its first success signs the token out).
run --exclude-operation-id delete || status=1
run --include-operation-id delete || status=1
echo "schemathesis: $(($(date +%s) - start)) s"

# 503 not_configured (LLM proxy, stores) is logged as an error too; a 500 or a panic is a failure.
if grep -E '"status":500|panicked' "$WORK/server.log" > /dev/null; then
    echo "the server answered 500 or panicked:" >&2
    grep -E '"status":500|panicked' "$WORK/server.log" | head -20 >&2
    status=1
fi
exit $status
