#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for a bounded time each.
#
#   fuzz/run.sh                  # every target, FUZZ_SECONDS (default 600) each
#   FUZZ_SECONDS=60 fuzz/run.sh push_json jwt
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and libFuzzer's -Z flags:
# on a stable toolchain RUSTC_BOOTSTRAP=1 allows them. The committed seeds
# (fuzz/seeds/<target>) are read, never written; what libFuzzer finds goes to
# $FUZZ_WORK/corpus/<target> (kept between runs), crashes to
# fuzz/artifacts/<target>/ — each one becomes a regression test in the main
# suite. A summary line per target: executions, coverage, features, corpus.
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_EACH="${FUZZ_SECONDS:-600}"
WORK="${FUZZ_WORK:-$HOME/.cache/echolia-fuzz}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$WORK/target}"
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(cargo fuzz list)

# Safe Rust: no sanitizer is needed to see a panic, and none runs faster.
cargo fuzz build --release --sanitizer none

status=0
for target in "${TARGETS[@]}"; do
    mkdir -p "$WORK/corpus/$target" "$WORK/logs"
    log="$WORK/logs/$target.log"
    echo "== $target: ${SECONDS_EACH} s"
    if ! cargo fuzz run --release --sanitizer none "$target" "$WORK/corpus/$target" "seeds/$target" -- \
        -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        > "$log" 2>&1; then
        echo "!! $target failed: see $log and fuzz/artifacts/$target/"
        status=1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    echo "   executions: $execs; last status: $last"
done
exit $status
