#!/usr/bin/env bash
# Fuzzes the parsers that take outside input, one target after another, each for a bounded time:
#
#   fuzz/run.sh [SECONDS_PER_TARGET]        (default 60)
#
# Targets: location (locations and endpoint URLs), size, glob (--include/--exclude and keys),
# manifest (JSON Lines and CSV), api_body (the body of POST /api/migrations). Not part of .ci/run.
#
# Needs no nightly: RUSTC_BOOTSTRAP=1 lets the stable compiler take the -Z flags cargo fuzz
# passes (sanitizer coverage, AddressSanitizer). FUZZ_SANITIZER=none turns AddressSanitizer off.
# Builds go to $CARGO_TARGET_DIR, else fuzz/target. What each target found stays in
# fuzz/corpus/TARGET (inputs that reach new code; the next run starts from them and from
# fuzz/seeds/TARGET) and fuzz/artifacts/TARGET (crashing inputs, and TARGET.log beside it).
#
# Prints per target the executions, the seconds and the crashes; exits 1 when a target crashed.
set -uo pipefail

seconds=${1:-60}
case $seconds in
'' | *[!0-9]* | 0)
    echo "usage: fuzz/run.sh [SECONDS_PER_TARGET]   (a whole number of seconds, default 60)" >&2
    exit 2
    ;;
esac
cd "$(dirname "$0")/.." || exit 2
export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-address}
targets=(location size glob manifest api_body)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked || exit 2
fi
echo "building the fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer" || exit 2

rows=()
crashed=0
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    artifacts=fuzz/artifacts/$target
    log=fuzz/artifacts/$target.log
    mkdir -p "$corpus" "$artifacts"
    seeds=()
    if [ -d "fuzz/seeds/$target" ]; then
        seeds=("fuzz/seeds/$target")
    fi
    marker=fuzz/artifacts/.$target.start
    touch "$marker"
    echo "fuzzing $target for ${seconds}s (log: $log)"
    start=$(date +%s)
    cargo fuzz run --sanitizer "$sanitizer" "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1
    status=$?
    elapsed=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    found=$(find "$artifacts" -type f -newer "$marker" -printf '%p ')
    crashes=$(find "$artifacts" -type f -newer "$marker" | wc -l)
    note=""
    if [ "$crashes" -gt 0 ]; then
        crashed=1
        note=$found
    elif [ "$status" -ne 0 ]; then
        crashed=1
        crashes="?"
        note="exit $status without an artifact: see $log"
    fi
    rows+=("$(printf '%-10s %14s %8s %8s  %s' "$target" "${execs:-?}" "$elapsed" "$crashes" "$note")")
done

echo
printf '%-10s %14s %8s %8s  %s\n' target executions seconds crashes artifacts
printf '%s\n' "${rows[@]}"
if [ "$crashed" -ne 0 ]; then
    echo
    echo "A target crashed. Reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET ARTIFACT;"
    echo "shrink: RUSTC_BOOTSTRAP=1 cargo fuzz tmin TARGET ARTIFACT."
    exit 1
fi
