#!/usr/bin/env bash
# The corruption campaign at full size: FLIPS single-byte flips (default 1,000) over an
# encrypted, split full + incremental chain, every class of byte in turn (headers,
# metadata, frames, index, trailer, part headers, padding); each must be detected without
# the password and named. The test command runs the same test with 140 flips.
#
#   scripts/corruption.sh [FLIPS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}"
HOLDFAST_CAMPAIGN_FLIPS="${1:-1000}" cargo test -p holdfast-image --test it --release \
    campaign -- --nocapture
