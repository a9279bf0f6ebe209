#!/usr/bin/env bash
# Scale benchmark: one server (SQLite store, default settings) and N simulated agents in one
# process speaking the real protocol (server/examples/swarm.rs), then agent listings at a
# fixed rate while they stay connected. Prints connection time, server RSS and listing
# latency (see docs/benchmarks.md).
#
#   scripts/bench/swarm.sh [AGENTS] [RATE] [SECONDS]     (defaults 5000 200 30)
#   SWARM_DISPATCH=1 scripts/bench/swarm.sh 2000          a job scheduled for every agent at
#                                                         once: time until each has its order
set -euo pipefail
AGENTS=${1:-5000}
RATE=${2:-200}
SECONDS_=${3:-30}
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}
# BENCH_PROFILE=dev: the test command's (optimised) build, so its tiny run builds nothing new.
PROFILE=${BENCH_PROFILE:-release}
BIN="$CARGO_TARGET_DIR/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")"
cargo build --profile "$PROFILE" -p holdfast-server --bins --example swarm >&2
# Every agent is a socket on both sides: use the hard limit of open files.
ulimit -n "$(ulimit -Hn)"
D=$(mktemp -d /var/tmp/holdfast-swarm.XXXXXX)
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$D"' EXIT
PORT=18555
env HOLDFAST_ADMIN_PASSWORD=swarm-admin-pass RUST_LOG=warn ${SWARM_SERVER_ENV:-} \
    "$BIN/holdfast-server" --data-dir "$D" --listen "127.0.0.1:$PORT" >"$D/server.out" 2>"$D/server.err" &
PID=$!
for _ in $(seq 100); do
    [[ -f $D/tls/ca.pem ]] && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
echo "server pid $PID, idle RSS $(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' "/proc/$PID/status")"
"$BIN/examples/swarm" --server "https://localhost:$PORT" --ca "$D/tls/ca.pem" \
    --password swarm-admin-pass --agents "$AGENTS" --rate "$RATE" --seconds "$SECONDS_" --server-pid "$PID" \
    ${SWARM_DISPATCH:+--dispatch}
