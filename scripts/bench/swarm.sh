#!/usr/bin/env bash
# Scale benchmark: one server (SQLite store, default settings) and N simulated agents in one
# process speaking the real protocol (server/examples/swarm.rs), then agent listings at a
# fixed rate while they stay connected. Prints connection time, server RSS and listing
# latency (see docs/benchmarks.md).
#
#   scripts/bench/swarm.sh [AGENTS] [RATE] [SECONDS]     (defaults 5000 200 30)
#   SWARM_DISPATCH=1 scripts/bench/swarm.sh 2000          a job scheduled for every agent at
#                                                         once: time until each has its order
#   SWARM_RUNS=5000                                       with SWARM_DISPATCH: the job names
#                                                         only that many of the agents
#   SWARM_INSTANCES=2 scripts/bench/swarm.sh 20000        two server instances on one
#                                                         PostgreSQL (started here), agents
#                                                         split between them
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
# Every agent is a socket on both sides: raise the limit of open files (root may raise the
# hard limit too), then use it.
ulimit -Hn 262144 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
D=$(mktemp -d /var/tmp/holdfast-swarm.XXXXXX)
chmod 711 "$D" # the PostgreSQL server's user reaches its folder inside
INSTANCES=${SWARM_INSTANCES:-1}
PIDS=()
stop_all() {
    for f in "$D"/s*/server.err; do
        [[ -s $f ]] && { echo "== $f"; tail -5 "$f"; } >&2
    done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ -n ${PGBIN:-} ]]; then
        su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $D/pg/data -m immediate stop" >/dev/null 2>&1 || true
    fi
    rm -rf "$D"
}
trap stop_all EXIT
DB_FLAGS=()
if ((INSTANCES > 1)); then
    # Several instances share one PostgreSQL store (docs/instances.md).
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    mkdir "$D/pg" && chown postgres: "$D/pg"
    su postgres -s /bin/sh -c "$PGBIN/initdb -D $D/pg/data -U postgres --auth=trust -E UTF8 --no-sync" >/dev/null
    PGPORT=18545
    su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $D/pg/data -o '-p $PGPORT -k $D/pg -c listen_addresses=127.0.0.1 -c max_connections=200' -l $D/pg/pg.log -w start" >/dev/null
    DB_FLAGS=(--database-url "postgres://postgres@127.0.0.1:$PGPORT/postgres")
fi
SERVER_ARGS=()
for i in $(seq 0 $((INSTANCES - 1))); do
    PORT=$((18555 + i))
    S=$D/s$i
    mkdir -p "$S"
    if ((i > 0)); then
        # The same master key and certificate as the first instance.
        cp -a "$D/s0/master.key" "$D/s0/tls" "$S/"
    fi
    env HOLDFAST_ADMIN_PASSWORD=swarm-admin-pass RUST_LOG=warn ${SWARM_SERVER_ENV:-} \
        "$BIN/holdfast-server" --data-dir "$S" --listen "127.0.0.1:$PORT" "${DB_FLAGS[@]}" \
        >"$S/server.out" 2>"$S/server.err" &
    PIDS+=($!)
    for _ in $(seq 300); do
        [[ -f $S/tls/ca.pem ]] && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.1
    done
    echo "server $i pid ${PIDS[$i]}, idle RSS $(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' "/proc/${PIDS[$i]}/status")"
    SERVER_ARGS+=(--server "https://localhost:$PORT" --server-pid "${PIDS[$i]}")
done
# One process holds at most its limit of open files in sockets: a larger fleet is split,
# helpers first (they connect their agents and keep them), the measuring process last.
PER_PROCESS=$(( $(ulimit -n) * 3 / 4 ))
FIRST=0
while ((AGENTS - FIRST > PER_PROCESS)); do
    "$BIN/examples/swarm" "${SERVER_ARGS[@]}" --ca "$D/s0/tls/ca.pem" --password swarm-admin-pass \
        --agents "$PER_PROCESS" --first "$FIRST" --hold 86400 >"$D/helper-$FIRST.out" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1200); do
        grep -q '^connected:' "$D/helper-$FIRST.out" 2>/dev/null && break
        kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$D/helper-$FIRST.out" >&2; exit 1; }
        sleep 0.1
    done
    echo "helper (agents $FIRST-$((FIRST + PER_PROCESS - 1))): $(cat "$D/helper-$FIRST.out")"
    FIRST=$((FIRST + PER_PROCESS))
done
"$BIN/examples/swarm" "${SERVER_ARGS[@]}" --ca "$D/s0/tls/ca.pem" \
    --password swarm-admin-pass --agents "$((AGENTS - FIRST))" --first "$FIRST" --rate "$RATE" --seconds "$SECONDS_" \
    ${SWARM_DISPATCH:+--dispatch} ${SWARM_RUNS:+--runs "$SWARM_RUNS"}
# Agents still connected to each instance once the measuring process has gone (its own
# agents went with it): a split fleet's helpers kept theirs throughout.
online=()
for i in $(seq 0 $((INSTANCES - 1))); do
    online+=("$(curl -fsS --cacert "$D/s0/tls/ca.pem" "https://localhost:$((18555 + i))/metrics" \
        | sed -n 's/^holdfast_agents_online //p')")
done
echo "agents still online afterwards (the helpers'), per instance: ${online[*]}"
