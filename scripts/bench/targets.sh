#!/usr/bin/env bash
# Storage targets, side by side: 1 GiB of random data written to and read from real
# servers on loopback, by the protocol's well-known client and by holdfast-agent, in one
# run (see docs/benchmarks.md):
#
#   sudo scripts/bench/targets.sh [OUTDIR]      (default /var/tmp/holdfast-tbench)
#
#   write: `sftp put`, `curl -T` (FTP), `smbclient put`  vs  `image create --forensic
#          --compression-level 0 --output URL` of the same file (random data: stored raw)
#   read:  `sftp get`, `curl` (FTP), `smbclient get`     vs  `image restore --image URL`
#          into a file on the same disk (every frame's checksum is still verified)
#   and the same image written to / restored from a local folder.
#
# Environment: HOLDFAST_AGENT, BENCH_RUNS (default 3), BENCH_WARMUP (default 1) as in
# run.sh; BENCH_SIZE_MIB (default 1024); BENCH_TARGETS (default "sftp ftp smb");
# BENCH_SERVE=1 starts the servers, prints their URLs and waits (for profiling by hand).
set -euo pipefail

OUTDIR=${1:-/var/tmp/holdfast-tbench}
RUNS=${BENCH_RUNS:-3}
WARMUP=${BENCH_WARMUP:-1}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
read -r -a PROTOCOLS <<<"${BENCH_TARGETS:-sftp ftp smb}"
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
AGENT=${HOLDFAST_AGENT:-${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}/release/holdfast-agent}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export LC_ALL=C

# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

[[ $(id -u) -eq 0 ]] || die "must run as root (servers, throwaway user)"
need=()
command -v sshd >/dev/null || need+=(openssh-server)
command -v sftp >/dev/null || need+=(openssh-client)
command -v vsftpd >/dev/null || need+=(vsftpd)
command -v curl >/dev/null || need+=(curl)
command -v smbd >/dev/null || need+=(samba)
command -v smbclient >/dev/null || need+=(smbclient)
if ((${#need[@]} > 0)); then
    log "installing ${need[*]}"
    apt_install "${need[@]}"
fi
if [[ ! -x $AGENT ]]; then
    log "building holdfast-agent (release)"
    (cd "$REPO_ROOT" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target} \
        cargo build --release -p holdfast-agent)
fi

bench_user

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
D=$OUTDIR/servers
WORK=$OUTDIR/work
DATA=$OUTDIR/data # served by all three servers, owned by the user
rm -rf "$D" "$DATA"
mkdir -p "$D"/{private,lock,state,cache,pid,log} "$WORK" "$DATA" "$OUTDIR/local"
chmod 755 "$OUTDIR" "$D"
chown "$USER_NAME:" "$DATA"
SRC=$OUTDIR/random.bin
if [[ $(stat -c %s "$SRC" 2>/dev/null || echo 0) -ne $((SIZE_MIB << 20)) ]]; then
    log "making $SIZE_MIB MiB of random data"
    head -c "$((SIZE_MIB << 20))" /dev/urandom >"$SRC"
fi
# Ports the kernel hands out now (another server on the machine may hold any fixed one).
SSH_PORT=$(free_port) FTP_PORT=$(free_port) SMB_PORT=$(free_port)
PASV_MIN=$(free_port)

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do
        pkill -KILL -P "$p" 2>/dev/null || true
        kill -KILL "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT

# sshd ---------------------------------------------------------------------------------
start_sshd "$D" "$SSH_PORT"

# vsftpd (plain FTP, passive) ----------------------------------------------------------
mkdir -p /var/run/vsftpd/empty
cat >"$D/vsftpd.conf" <<EOF
listen=YES
listen_address=127.0.0.1
listen_port=$FTP_PORT
background=NO
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
pasv_enable=YES
pasv_address=127.0.0.1
pasv_min_port=$PASV_MIN
pasv_max_port=$((PASV_MIN + 40))
seccomp_sandbox=NO
pam_service_name=vsftpd
xferlog_enable=NO
userlist_enable=NO
local_root=/
secure_chroot_dir=/var/run/vsftpd/empty
EOF
/usr/sbin/vsftpd "$D/vsftpd.conf" &
PIDS+=($!)

# smbd -----------------------------------------------------------------------------------
cat >"$D/smb.conf" <<EOF
[global]
server role = standalone server
workgroup = WORKGROUP
interfaces = 127.0.0.1
bind interfaces only = yes
smb ports = $SMB_PORT
disable netbios = yes
server min protocol = SMB2_10
passdb backend = tdbsam:$D/private/passdb.tdb
private dir = $D/private
lock directory = $D/lock
state directory = $D/state
cache directory = $D/cache
pid directory = $D/pid
ncalrpc dir = $D/state/ncalrpc
log file = $D/log/log.%m
map to guest = never
load printers = no
printing = bsd
printcap name = /dev/null
disable spoolss = yes
server services = -nbt
[backup]
path = $DATA
read only = no
valid users = $USER_NAME
force user = $USER_NAME
EOF
printf '%s\n%s\n' "$PASS" "$PASS" | smbpasswd -c "$D/smb.conf" -s -a "$USER_NAME" >/dev/null
/usr/sbin/smbd --foreground --no-process-group --configfile="$D/smb.conf" &
PIDS+=($!)

for port in $SSH_PORT $FTP_PORT $SMB_PORT; do
    wait_port "$port"
done

CREDS=$D/creds
printf 'user = %s\npassword = %s\nknown_hosts = %s\n' "$USER_NAME" "$PASS" "$D/known_hosts" >"$CREDS"
chmod 600 "$CREDS"
SFTP_URL="sftp://$USER_NAME@127.0.0.1:$SSH_PORT$DATA"
FTP_URL="ftp://$USER_NAME@127.0.0.1:$FTP_PORT$DATA"
SMB_URL="smb://$USER_NAME@127.0.0.1:$SMB_PORT/backup"
RESTORED=$WORK/restored.bin
SIZE=$(stat -c %s "$SRC")

if [[ -n ${BENCH_SERVE:-} ]]; then
    printf 'serving until interrupted; --credentials-file %s\n%s\n%s\n%s\n' \
        "$CREDS" "$SFTP_URL" "$FTP_URL" "$SMB_URL"
    wait
    exit 0
fi

declare -A T

# Reference clients.
sftp_put() { sftp -q -i "$D/client_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -P "$SSH_PORT" -b - "$USER_NAME@127.0.0.1" <<<"put $SRC $DATA/ref.bin"; }
sftp_get() { sftp -q -i "$D/client_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -P "$SSH_PORT" -b - "$USER_NAME@127.0.0.1" <<<"get $DATA/ref.bin $RESTORED"; }
curl_put() { curl -sS -T "$SRC" "ftp://$USER_NAME:$PASS@127.0.0.1:$FTP_PORT$DATA/ref.bin"; }
curl_get() { curl -sS -o "$RESTORED" "ftp://$USER_NAME:$PASS@127.0.0.1:$FTP_PORT$DATA/ref.bin"; }
smb_put() { smbclient -p "$SMB_PORT" //127.0.0.1/backup -U "$USER_NAME%$PASS" -c "put $SRC ref.bin" >/dev/null; }
smb_get() { smbclient -p "$SMB_PORT" //127.0.0.1/backup -U "$USER_NAME%$PASS" -c "get ref.bin $RESTORED" >/dev/null; }
no_restored() { rm -f "$RESTORED"; }

# Ours: the same file as a raw (incompressible) image, and its restore into a file.
ours_put() {
    "$AGENT" image create --source "$SRC" --output "$1/img.hfi" --forensic \
        --compression-level 0 --overwrite --credentials-file "$CREDS"
}
ours_get() {
    rm -f "$RESTORED"
    "$AGENT" image restore --image "$1/img.hfi" --target "$RESTORED" --credentials-file "$CREDS"
}
local_put() { ours_put "$OUTDIR/local"; }
local_get() { ours_get "$OUTDIR/local"; }
sftp_ours_put() { ours_put "$SFTP_URL"; }
sftp_ours_get() { ours_get "$SFTP_URL"; }
ftp_ours_put() { ours_put "$FTP_URL"; }
ftp_ours_get() { ours_get "$FTP_URL"; }
smb_ours_put() { ours_put "$SMB_URL"; }
smb_ours_get() { ours_get "$SMB_URL"; }

measure local_put - local_put
measure local_get no_restored local_get
for p in "${PROTOCOLS[@]}"; do
    case $p in
    sftp) ref_put=sftp_put ref_get=sftp_get ;;
    ftp) ref_put=curl_put ref_get=curl_get ;;
    smb) ref_put=smb_put ref_get=smb_get ;;
    esac
    measure "${p}_ref_put" - "$ref_put"
    measure "${p}_ours_put" - "${p}_ours_put"
    measure "${p}_ref_get" no_restored "$ref_get"
    measure "${p}_ours_get" no_restored "${p}_ours_get"
    cmp -s "$SRC" "$RESTORED" || die "$p: the restored file differs from the source"
done

rate() { awk -v s="$SIZE" -v t="$1" 'BEGIN { if (t > 0) printf "%.0f", s / t / 1048576; else print "n/a" }'; }
{
    echo "| target | direction | reference client | s | MiB/s | holdfast-agent | s | MiB/s | ours vs reference |"
    echo "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: |"
    for p in "${PROTOCOLS[@]}"; do
        case $p in
        sftp) rp="sftp put" rg="sftp get" ;;
        ftp) rp="curl -T" rg="curl" ;;
        smb) rp="smbclient put" rg="smbclient get" ;;
        esac
        a=${T[${p}_ref_put]} b=${T[${p}_ours_put]}
        echo "| $p | write | $rp | $a | $(rate "$a") | image create | $b | $(rate "$b") | $(ratio "$a" "$b")× |"
        a=${T[${p}_ref_get]} b=${T[${p}_ours_get]}
        echo "| $p | read | $rg | $a | $(rate "$a") | image restore | $b | $(rate "$b") | $(ratio "$a" "$b")× |"
    done
    a=${T[local_put]} b=${T[local_get]}
    echo "| local folder | write / read | — | | | image create / restore | $a / $b | $(rate "$a") / $(rate "$b") | |"
    echo
    echo "ours vs reference = reference time / our time (above 1: we are faster)."
    for p in "${PROTOCOLS[@]}"; do
        echo "- image written to $p at $(ratio "${T[local_put]}" "${T[${p}_ours_put]}")× the speed of the same image written to a local folder"
    done
} | tee "$OUTDIR/results.md"
