#!/usr/bin/env bash
# Console page times on a big store: AGENTS agents with inventories, REPORTS reports over
# 30 days (with images), 20 jobs, 10 sites in a SQLite store; every page rendered through the
# server's router in one process (server time only: no network, no TLS), ROUNDS times each
# (server/examples/console_bench.rs; see docs/benchmarks.md).
#
#   scripts/bench/console.sh [AGENTS] [REPORTS] [ROUNDS]     (defaults 2000 100000 20)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}
cargo build --release -p holdfast-server --example console_bench >&2
"$CARGO_TARGET_DIR/release/examples/console_bench" "${1:-2000}" "${2:-100000}" "${3:-20}"
