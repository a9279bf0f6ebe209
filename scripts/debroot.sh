#!/usr/bin/env bash
# A clean Debian root for the packaging check and the agent-installation test: bookworm,
# debootstrap'ed (minbase) once from the mirror apt uses into /var/tmp/holdfast-debroot, with
# systemd (the units are verified against its targets) and openssh-server (the "machine"
# agents are installed on over SSH). Made again when its package list changes. Run as root.
#
#   scripts/debroot.sh          prints the root's path
set -euo pipefail
BASE=${HOLDFAST_DEBROOT:-/var/tmp/holdfast-debroot}
INCLUDE=fdisk,e2fsprogs,libssl3,zlib1g,init-system-helpers,systemd,openssh-server
((EUID == 0)) || { echo "debroot: run as root" >&2; exit 1; }
if [[ ! -x $BASE/usr/bin/dpkg || $(cat "$BASE/.holdfast-complete" 2>/dev/null) != "$INCLUDE" ]]; then
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    mirror=${mirror:-http://deb.debian.org/debian}
    rm -rf "$BASE"
    echo "debootstrap bookworm from $mirror into $BASE (once)" >&2
    log=$(mktemp)
    if ! debootstrap --variant=minbase --include="$INCLUDE" bookworm "$BASE" "$mirror" >"$log" 2>&1; then
        tail -20 "$log" >&2
        rm -f "$log"
        echo "debroot: debootstrap failed" >&2
        exit 1
    fi
    rm -f "$log"
    # Host keys are made per use (each overlay is another machine).
    rm -f "$BASE"/etc/ssh/ssh_host_*
    echo "$INCLUDE" >"$BASE/.holdfast-complete"
fi
echo "$BASE"
