#!/usr/bin/env bash
# Fuzz the REST API with schemathesis: every operation of the server's OpenAPI document,
# with requests generated from it (as an admin's API token, so every route is reached);
# any 5xx answer or dropped connection fails the run (see docs/reliability.md).
#
#   sudo scripts/api-fuzz.sh [MAX_EXAMPLES]     (per operation; default 20)
#
# The server and schemathesis run in a network namespace of their own with only loopback
# up, so a generated SMTP host or target address cannot reach any other machine.
# schemathesis comes from PyPI into a venv under /var/tmp (made once).
# Environment: HOLDFAST_SERVER (default: the debug build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EXAMPLES=${1:-20}
[[ $EXAMPLES =~ ^[1-9][0-9]*$ ]] || { echo "MAX_EXAMPLES must be a positive integer" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "must run as root (a network namespace)" >&2; exit 2; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}
SERVER=${HOLDFAST_SERVER:-$CARGO_TARGET_DIR/debug/holdfast-server}
[[ -x $SERVER ]] || cargo build -p holdfast-server --bin holdfast-server >&2
VENV=/var/tmp/holdfast-venv-schemathesis
if [[ ! -x $VENV/bin/st ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'schemathesis>=4,<5'
fi

NS=hf-apifuzz-$$
D=$(mktemp -d /var/tmp/holdfast-apifuzz.XXXXXX)
PID=
cleanup() {
    if [[ -n $PID ]]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$D"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
in_ns() { ip netns exec "$NS" "$@"; }

PORT=18777
PASS=api-fuzz-admin-pass
HOLDFAST_ADMIN_PASSWORD=$PASS RUST_LOG=warn in_ns "$SERVER" --data-dir "$D" \
    --listen "127.0.0.1:$PORT" >"$D/server.out" 2>"$D/server.err" &
PID=$!
URL=https://localhost:$PORT
for _ in $(seq 150); do
    if [[ -f $D/tls/ca.pem ]] && in_ns curl -s -o /dev/null --cacert "$D/tls/ca.pem" "$URL/healthz"; then
        break
    fi
    kill -0 "$PID" 2>/dev/null || { cat "$D/server.err" >&2; exit 1; }
    sleep 0.2
done
api() { in_ns curl -sS --fail-with-body --cacert "$D/tls/ca.pem" -b "$D/jar" -c "$D/jar" \
    -H 'content-type: application/json' "$@"; }
api -d "{\"name\":\"admin\",\"password\":\"$PASS\"}" "$URL/api/v1/session" >/dev/null
CSRF=$(awk '$6 == "holdfast_csrf" { print $7 }' "$D/jar")
TOKEN=$(api -H "x-csrf-token: $CSRF" -d '{"name":"schemathesis","role":"admin"}' \
    "$URL/api/v1/tokens" | python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])')

echo "schemathesis: $EXAMPLES examples per operation against $URL (namespace $NS)"
fuzz() {
    in_ns "$VENV/bin/st" run "$URL/api/v1/openapi.json" \
        --header "Authorization: Bearer $TOKEN" \
        --checks not_a_server_error \
        --max-examples "$EXAMPLES" \
        --tls-verify "$D/tls/ca.pem" \
        --request-timeout 30 \
        --workers 2 2>&1 | tee "$D/st.out"
    return "${PIPESTATUS[0]}"
}
status=0
fuzz || status=$?
# schemathesis can fail inside its own case generation (Hypothesis "Inconsistent results",
# seen in CI with every generated case passing): that says nothing about the API, so such a
# run is repeated once with a new seed. A failed check never is.
if [ "$status" -ne 0 ] && grep -q "Runtime Error" "$D/st.out" \
    && grep -Eq '^ +([0-9]+) generated, \1 passed$' "$D/st.out"; then
    echo "schemathesis failed inside its own generator with every case passing: once more, new seed" >&2
    status=0
    fuzz || status=$?
fi
if ! kill -0 "$PID" 2>/dev/null; then
    echo "the server died during the run:" >&2
    tail -n 20 "$D/server.err" >&2
    exit 1
fi
exit "$status"
