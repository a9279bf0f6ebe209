#!/usr/bin/env bash
# Debian packages of the server and the agent, built with dpkg-deb (no debhelper): the
# binary, its systemd unit (from deploy/), configuration, maintainer scripts
# (deploy/debian/) and the documentation files Debian asks for.
#
#   scripts/package.sh OUTDIR [VERSION]     VERSION: a Debian version (default: the
#                                           workspace's version with revision -1)
#   PACKAGE_PROFILE=dev scripts/package.sh  package the test build instead of a release build
#   PACKAGE_NO_BUILD=1 …                    package what is built already
#
# Writes OUTDIR/holdfast-agent_VERSION_ARCH.deb and OUTDIR/holdfast-server_VERSION_ARCH.deb
# (which carries the agent package, for installations over SSH from the console).
# Install: apt install ./holdfast-server_….deb (see README.md).
set -euo pipefail
OUT=${1:?usage: scripts/package.sh OUTDIR [VERSION]}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SRC=$PWD
CARGO_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
VERSION=${2:-$CARGO_VERSION-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}
PROFILE=${PACKAGE_PROFILE:-release}
BIN="$CARGO_TARGET_DIR/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")"
if [[ -z ${PACKAGE_NO_BUILD:-} ]]; then
    cargo build --profile "$PROFILE" -p holdfast-server -p holdfast-agent --bins >&2
fi
ARCH=$(dpkg --print-architecture)
MAINTAINER="Holdfast developers <holdfast@example.invalid>"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /var/tmp/holdfast-package.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# What dh_installsystemd would add to the maintainer scripts for unit $2, at $1.
systemd_snippet() {
    local unit=$2
    case $1 in
    postinst) cat <<SH
if [ "\$1" = "configure" ] || [ "\$1" = "abort-upgrade" ] || [ "\$1" = "abort-deconfigure" ] || [ "\$1" = "abort-remove" ]; then
    deb-systemd-helper unmask '$unit' >/dev/null || true
    # Enabled on first installation; an admin's disable is kept on upgrades.
    if deb-systemd-helper --quiet was-enabled '$unit'; then
        deb-systemd-helper enable '$unit' >/dev/null || true
    else
        deb-systemd-helper update-state '$unit' >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -n "\$2" ]; then _action=restart; else _action=start; fi
        deb-systemd-invoke \$_action '$unit' >/dev/null || true
    fi
fi
SH
    ;;
    prerm) cat <<SH
if [ -d /run/systemd/system ] && [ "\$1" = remove ]; then
    deb-systemd-invoke stop '$unit' >/dev/null || true
fi
SH
    ;;
    postrm) cat <<SH
if [ "\$1" = "remove" ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper mask '$unit' >/dev/null || true
fi
if [ "\$1" = "purge" ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper purge '$unit' >/dev/null || true
    deb-systemd-helper unmask '$unit' >/dev/null || true
fi
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
SH
    ;;
    esac
}

# A maintainer script: deploy/debian/$KIND.$1 with the unit's snippet for #DEBHELPER#, or
# the snippet alone.
maintainer_script() {
    local kind=$1 which=$2 unit=$3 dest=$4
    local snippet
    snippet=$(systemd_snippet "$which" "$unit")
    if [[ -f $SRC/deploy/debian/$kind.$which ]]; then
        awk -v s="$snippet" '$0 == "#DEBHELPER#" { print s; next } { print }' \
            "$SRC/deploy/debian/$kind.$which" >"$dest"
    else
        printf '#!/bin/sh\nset -e\n\n%s\n' "$snippet" >"$dest"
    fi
    chmod 0755 "$dest"
}

# Libraries the binary links, as Depends (dpkg-shlibdeps wants a source tree around it).
shlib_depends() {
    local tree=$WORK/shlibs
    mkdir -p "$tree/debian"
    printf 'Source: holdfast\n\nPackage: holdfast\nArchitecture: any\n' >"$tree/debian/control"
    (cd "$tree" && dpkg-shlibdeps -O -e "$1" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
}

# build KIND DESCRIPTION LONG_DESCRIPTION EXTRA_DEPENDS RECOMMENDS
build() {
    local kind=$1 short=$2 long=$3 extra=$4 recommends=$5
    local pkg=holdfast-$kind root=$WORK/holdfast-$kind
    mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/usr/share/doc/$pkg"
    install -m 0755 "$BIN/$pkg" "$root/usr/bin/$pkg"
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/$pkg"
    # The unit as deploy/ has it, for the packaged binary and without the manual steps.
    sed -e 's#/usr/local/bin/#/usr/bin/#g' -e '/^\[Unit\]/,$!d' "$SRC/deploy/$pkg.service" \
        >"$root/lib/systemd/system/$pkg.service"
    chmod 0644 "$root/lib/systemd/system/$pkg.service"
    cat >"$root/usr/share/doc/$pkg/copyright" <<TXT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: holdfast

Files: *
Copyright: 2026 The Holdfast developers
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 can be found in
 /usr/share/common-licenses/Apache-2.0.
TXT
    printf '%s (%s) unstable; urgency=medium\n\n  * Package of holdfast %s.\n\n -- %s  %s\n' \
        "$pkg" "$VERSION" "$CARGO_VERSION" "$MAINTAINER" "$(date -R -u -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" \
        | gzip -9n >"$root/usr/share/doc/$pkg/changelog.Debian.gz"
    chmod 0644 "$root/usr/share/doc/$pkg/"*
    case $kind in
    server)
        # The agent package of the same version, for installations over SSH.
        install -d -m 0755 "$root/usr/share/holdfast-server/agents"
        install -m 0644 "$OUT/holdfast-agent_${VERSION}_${ARCH}.deb" "$root/usr/share/holdfast-server/agents/"
        install -d -m 0755 "$root/etc/holdfast"
        # 0640 root:holdfast once installed (postinst): the user does not exist before.
        install -m 0644 "$SRC/deploy/server.toml" "$root/etc/holdfast/server.toml"
        echo /etc/holdfast/server.toml >"$root/DEBIAN/conffiles"
        ;;
    agent)
        install -d -m 0755 "$root/usr/share/doc/$pkg/examples"
        install -m 0644 "$SRC/deploy/agent.json.example" "$root/usr/share/doc/$pkg/examples/agent.json"
        ;;
    esac
    for which in postinst prerm postrm; do
        maintainer_script "$kind" "$which" "$pkg.service" "$root/DEBIAN/$which"
    done
    local depends
    depends=$(shlib_depends "$root/usr/bin/$pkg")
    [[ -n $extra ]] && depends="$depends, $extra"
    {
        echo "Package: $pkg"
        echo "Version: $VERSION"
        echo "Architecture: $ARCH"
        echo "Maintainer: $MAINTAINER"
        echo "Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)"
        echo "Depends: $depends"
        [[ -n $recommends ]] && echo "Recommends: $recommends"
        echo "Section: admin"
        echo "Priority: optional"
        echo "Description: $short"
        printf '%s\n' "$long" | fold -s -w 72 | sed -e 's/ *$//' -e 's/^/ /'
    } >"$root/DEBIAN/control"
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
        | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
    chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/control"
    [[ -f $root/DEBIAN/conffiles ]] && chmod 0644 "$root/DEBIAN/conffiles"
    dpkg-deb --root-owner-group -Zxz --build "$root" "$OUT/${pkg}_${VERSION}_${ARCH}.deb" >&2
    echo "$OUT/${pkg}_${VERSION}_${ARCH}.deb"
}

build agent "Holdfast backup agent: images the machine's disks" \
    "The Holdfast agent images the disks and volumes of a running machine (snapshots through device-mapper and LVM) to SMB, FTP, SFTP, S3 or local storage and restores them, steered by a Holdfast server. Enrol it with holdfast-agent enroll; the unit starts once /etc/holdfast/agent.json exists. The image command line works on its own (holdfast-agent image --help)." \
    "fdisk, mount, e2fsprogs" "lvm2, dmsetup, cryptsetup-bin, xfsprogs, btrfs-progs, thin-provisioning-tools"
build server "Holdfast backup server: console, REST API and agent gateway" \
    "The control plane of Holdfast disk-imaging backups: the web console, the REST API, the agents' channels over TLS, schedules, reports and report mails. It keeps its store in SQLite under /var/lib/holdfast, or in PostgreSQL (several instances may share one). Configuration: /etc/holdfast/server.toml." \
    "passwd" ""
