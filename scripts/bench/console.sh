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
# BENCH_PROFILE=dev: the test command's (optimised) build, so its tiny run builds nothing new.
PROFILE=${BENCH_PROFILE:-release}
BIN="$CARGO_TARGET_DIR/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")"
cargo build --profile "$PROFILE" -p holdfast-server --example console_bench >&2
"$BIN/examples/console_bench" "${1:-2000}" "${2:-100000}" "${3:-20}"
