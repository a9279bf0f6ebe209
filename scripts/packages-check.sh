#!/usr/bin/env bash
# The Debian packages, checked the way an admin uses them, in a clean Debian root: lintian
# finds no error, systemd-analyze accepts the units, and in the root (a throwaway overlay
# of a debootstrap'ed bookworm, made once and kept in /var/tmp/holdfast-debroot) the
# packages install, the server starts there as its system user, an upgrade keeps the data
# and the admin's configuration, and purge removes what they made. Run as root.
#
#   scripts/packages-check.sh [WORKDIR]      PACKAGE_PROFILE=dev: package the test build
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
W=${1:-/var/tmp/holdfast-packages}
CARGO_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
fail() { echo "packages-check: $*" >&2; exit 1; }
((EUID == 0)) || fail "run as root (debootstrap, chroot, mounts)"

R=$W/root
cleanup() {
    [[ -n ${SERVER_PID:-} ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    for m in "$R/proc" "$R/dev" "$R"; do
        mountpoint -q "$m" && umount -l "$m"
    done
    rm -rf "$W"
}
trap cleanup EXIT
cleanup
mkdir -p "$W"

# 1. Two versions of the packages, and lintian.
V1=$CARGO_VERSION-1 V2=$CARGO_VERSION-2
scripts/package.sh "$W/v1" "$V1" >/dev/null
PACKAGE_NO_BUILD=1 scripts/package.sh "$W/v2" "$V2" >/dev/null
for deb in "$W"/v1/*.deb; do
    echo "lintian $(basename "$deb"):"
    lintian --fail-on error --suppress-tags no-manual-page,initial-upload-closes-no-bugs "$deb" || fail "lintian reports errors in $deb"
done

# 2. A clean Debian root (scripts/debroot.sh, made once), and an overlay of it per run so
#    that every run starts from the same clean state.
BASE=$(scripts/debroot.sh)
mkdir -p "$W/upper" "$W/work" "$R"
mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$W/upper,workdir=$W/work" "$R"
mount -t proc proc "$R/proc"
mount --bind /dev "$R/dev"
mkdir -p "$R/tmp/pkgs"
cp -r "$W/v1" "$W/v2" "$R/tmp/pkgs/"
in_root() { chroot "$R" "$@"; }
# A package's path inside the root: in_root_deb v1 server
in_root_deb() { echo "/tmp/pkgs/$1/$(basename "$W/$1/holdfast-$2_"*.deb)"; }

# 3. Install.
in_root dpkg -i "$(in_root_deb v1 server)" "$(in_root_deb v1 agent)" \
    >"$W/install.log" 2>&1 || { cat "$W/install.log"; fail "install failed"; }
in_root getent passwd holdfast >/dev/null || fail "no system user holdfast"
# Owners as the root names them (its users are not this machine's).
owner() { in_root stat -c '%U:%G %a' "$1"; }
[[ $(owner /var/lib/holdfast) == "holdfast:holdfast 750" ]] \
    || fail "/var/lib/holdfast: $(owner /var/lib/holdfast)"
[[ $(owner /etc/holdfast/server.toml) == "root:holdfast 640" ]] \
    || fail "/etc/holdfast/server.toml: $(owner /etc/holdfast/server.toml)"
[[ -L $R/etc/systemd/system/multi-user.target.wants/holdfast-server.service ]] \
    || fail "holdfast-server.service is not enabled"
[[ -L $R/etc/systemd/system/multi-user.target.wants/holdfast-agent.service ]] \
    || fail "holdfast-agent.service is not enabled"
in_root holdfast-agent --version
echo "installed: $(in_root dpkg-query -W -f '${Package} ${Version}, ' holdfast-server holdfast-agent)"

# 4. The units: systemd-analyze verify on the root (the binaries they start are there).
for unit in holdfast-server.service holdfast-agent.service; do
    systemd-analyze verify --root="$R" "$R/lib/systemd/system/$unit" \
        || fail "systemd-analyze verify rejects $unit"
done

# 5. The server starts in the root as its user, with the packaged configuration.
PORT=$((20000 + RANDOM % 20000))
start_server() {
    chroot "$R" setpriv --reuid=holdfast --regid=holdfast --init-groups \
        /usr/bin/holdfast-server --config /etc/holdfast/server.toml --listen "127.0.0.1:$PORT" \
        >"$W/server.out" 2>"$W/server.err" &
    SERVER_PID=$!
    for _ in $(seq 150); do
        curl -fsS --cacert "$R/var/lib/holdfast/tls/ca.pem" "https://localhost:$PORT/healthz" \
            >/dev/null 2>&1 && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.2
    done
    cat "$W/server.err" >&2
    fail "the installed server did not start"
}
stop_server() {
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
    SERVER_PID=
}
start_server
fingerprint=$(sed -n 's/.*certificate: *\(SHA256:[^ ]*\).*/\1/p' "$W/server.out")
[[ -n $fingerprint ]] || fail "no certificate fingerprint printed"
[[ $(owner /var/lib/holdfast/first-start.txt) == "holdfast:holdfast 600" ]] \
    || fail "first-start.txt is not the server user's alone"
password=$(sed -n 's/^password: *//p' "$R/var/lib/holdfast/first-start.txt")
stop_server
echo "started as holdfast in the root: $fingerprint"

# 6. Upgrade: the admin's edit of the configuration and the data stay.
echo "# edited by the admin" >>"$R/etc/holdfast/server.toml"
key=$(sha256sum <"$R/var/lib/holdfast/master.key")
in_root dpkg -i "$(in_root_deb v2 server)" "$(in_root_deb v2 agent)" \
    >"$W/upgrade.log" 2>&1 || { cat "$W/upgrade.log"; fail "upgrade failed"; }
[[ $(in_root dpkg-query -W -f '${Version}' holdfast-server) == "$V2" ]] || fail "not upgraded"
grep -q "edited by the admin" "$R/etc/holdfast/server.toml" || fail "the upgrade replaced the admin's configuration"
[[ $(sha256sum <"$R/var/lib/holdfast/master.key") == "$key" ]] || fail "the upgrade changed the master key"
start_server
grep -q "certificate:  $fingerprint" "$W/server.out" || fail "another certificate after the upgrade"
code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$R/var/lib/holdfast/tls/ca.pem" \
    -H 'content-type: application/json' -d "{\"name\":\"admin\",\"password\":\"$password\"}" \
    "https://localhost:$PORT/api/v1/session")
[[ $code == 200 ]] || fail "the admin of the first install cannot log in after the upgrade ($code)"
stop_server
echo "upgraded $V1 -> $V2: configuration, master key, certificate and users kept"

# 7. Remove keeps the data; purge removes it, the configuration and the user.
in_root dpkg -r holdfast-server holdfast-agent >"$W/remove.log" 2>&1 || { cat "$W/remove.log"; fail "remove failed"; }
[[ -f $R/var/lib/holdfast/master.key && -f $R/etc/holdfast/server.toml ]] || fail "remove deleted data or configuration"
[[ ! -e $R/usr/bin/holdfast-server && ! -e $R/lib/systemd/system/holdfast-server.service ]] || fail "remove left the binary or unit"
in_root dpkg -P holdfast-server holdfast-agent >"$W/purge.log" 2>&1 || { cat "$W/purge.log"; fail "purge failed"; }
for gone in /var/lib/holdfast /var/lib/holdfast-agent /etc/holdfast \
    /etc/systemd/system/multi-user.target.wants/holdfast-server.service \
    /etc/systemd/system/multi-user.target.wants/holdfast-agent.service; do
    [[ ! -e $R$gone && ! -L $R$gone ]] || fail "purge left $gone"
done
! in_root getent passwd holdfast >/dev/null || fail "purge left the user holdfast"
[[ -z $(in_root dpkg-query -W -f '${Status}' holdfast-server 2>/dev/null | grep -v not-installed) ]] \
    || fail "purge left the package known to dpkg"
echo "removed (data kept), then purged (data, configuration, user and unit links gone)"
echo "PACKAGES OK"
