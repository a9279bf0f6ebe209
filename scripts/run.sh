#!/usr/bin/env bash
# Build and start Holdfast on this machine: the server with its embedded SQLite store in
# ./holdfast-data, listening on https://127.0.0.1:8443 (override with --data-dir / --listen
# or HOLDFAST_DATA_DIR / HOLDFAST_LISTEN). Any other flags go to holdfast-server, e.g.
#
#   ./scripts/run.sh --local-agent     # also enrol and run an agent on this machine
#
# It prints the console URL, the certificate fingerprint agents pin and, on first start,
# where the admin's password is (DATA/first-start.txt, readable by its owner only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null; then
    echo "run.sh: cargo is missing: install Rust (https://rustup.rs or Debian's cargo)" >&2
    exit 1
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}
cargo build --release -p holdfast-server -p holdfast-agent >&2

args=("$@")
has() {
    local a
    for a in "${args[@]}"; do [[ $a == "$1" || $a == "$1="* ]] && return 0; done
    return 1
}
has --data-dir || args+=(--data-dir "${HOLDFAST_DATA_DIR:-./holdfast-data}")
has --listen || args+=(--listen "${HOLDFAST_LISTEN:-127.0.0.1:8443}")
exec "$CARGO_TARGET_DIR/release/holdfast-server" "${args[@]}"
