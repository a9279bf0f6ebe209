#!/usr/bin/env bash
# Getting files back from an incremental image on SFTP, side by side in one run (see
# docs/benchmarks.md, "Browse and extract"):
#
#   sudo scripts/bench/browse.sh [USED_MIB] [OUTDIR]   (defaults 1024 /var/tmp/holdfast-bbench)
#
# An ext4 volume with USED_MIB of files (one large file of min(100, USED_MIB/2) MiB, the rest
# 1 MiB files, all incompressible) is imaged full to an sshd on loopback, about 5 % of it
# changed, and imaged incremental. Then, from the incremental image on SFTP:
#   ls:       `image ls` of the root folder         vs  restore the volume, mount it, `ls`
#   extract:  `image extract` of the large file     vs  restore the volume, mount it, `cp`
# (ratios: the restore-first way's time over ours). Also the volume and image sizes and the
# bytes each way reads from the target (as the SFTP server logs them).
#
# Environment: HOLDFAST_AGENT (default: the release build), BENCH_RUNS (median of,
# default 3), BENCH_WARMUP (default 1), BENCH_STRICT=1 (a failed command fails the script).
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$SCRIPT_DIR/../.."
used=${1:-1024}
OUTDIR=$(mkdir -p "${2:-/var/tmp/holdfast-bbench}" && realpath "${2:-/var/tmp/holdfast-bbench}")
WORK=$OUTDIR/work
RUNS=${BENCH_RUNS:-3}
WARMUP=${BENCH_WARMUP:-1}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export LC_ALL=C
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"
declare -A T

[[ $(id -u) -eq 0 ]] || die "must run as root (a throwaway user, sshd, loop devices, mounts)"
[[ $used =~ ^[1-9][0-9]*$ ]] || die "USED_MIB must be a positive integer"
need=()
command -v sshd >/dev/null || need+=(openssh-server)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
((${#need[@]} == 0)) || apt_install "${need[@]}"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}
AGENT=${HOLDFAST_AGENT:-$CARGO_TARGET_DIR/release/holdfast-agent}
[[ -x $AGENT ]] || cargo build --release -p holdfast-agent >&2
AGENT=$(realpath "$AGENT")

bench_user
D=$OUTDIR/servers
DATA=$OUTDIR/data
MNT=$OUTDIR/mnt
rm -rf "$D" "$DATA" "$WORK"
mkdir -p "$D" "$DATA" "$WORK" "$MNT"
chmod 755 "$OUTDIR" "$D"
chown "$USER_NAME:" "$DATA"
PIDS=()
cleanup() {
    if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" || true; fi
    for p in "${PIDS[@]}"; do
        pkill -KILL -P "$p" 2>/dev/null || true
        kill -KILL "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
SSH_PORT=$(free_ports 1)
start_sshd "$D" "$SSH_PORT" counted
wait_port "$SSH_PORT" || die "sshd does not listen on port $SSH_PORT"
CREDS=$D/creds
printf 'user = %s\npassword = %s\nknown_hosts = %s\n' "$USER_NAME" "$PASS" "$D/known_hosts" >"$CREDS"
chmod 600 "$CREDS"
URL="sftp://$USER_NAME@127.0.0.1:$SSH_PORT$DATA"

# The volume: the files made in a folder, put in by mkfs (no mount needed), then changed
# through a mount.
big=$((used / 2 < 100 ? used / 2 : 100))
((big >= 1)) || big=1
small=$((used - big))
VOL=$OUTDIR/volume.img
TREE=$OUTDIR/tree
rm -rf "$TREE" "$VOL"
mkdir -p "$TREE/files"
head -c "$((big << 20))" /dev/urandom >"$TREE/big.bin"
for ((i = 0; i < small; i++)); do
    head -c 1048576 /dev/urandom >"$TREE/files/f$i.bin"
done
truncate -s "$(((used * 3 / 2 + 64) << 20))" "$VOL"
mkfs.ext4 -q -F -d "$TREE" "$VOL"
rm -rf "$TREE"
log "volume: $used MiB used; imaging it to SFTP (full, then incremental)"
"$AGENT" image create --source "$VOL" --output "$URL/full.hfi" --credentials-file "$CREDS" >/dev/null
mount -o loop "$VOL" "$MNT"
changed=$((used / 20 > 0 ? used / 20 : 1))
for ((i = 0; i < changed; i++)); do
    head -c 1048576 /dev/urandom >"$MNT/files/new$i.bin"
done
umount "$MNT"
"$AGENT" image create --source "$VOL" --output "$URL/inc.hfi" --incremental \
    --base "$URL/full.hfi" --credentials-file "$CREDS" >/dev/null

# Bytes the SFTP server read from its files while FN ran: what that way fetched from the
# target (sftp-server logs each file's bytes read when it is closed).
bytes_of() {
    local log=$D/log/sftp.log before
    before=$(wc -l <"$log")
    "$1" >/dev/null 2>&1
    sleep 0.2
    tail -n +"$((before + 1))" "$log" | sed -n 's/.* bytes read \([0-9]*\) written.*/\1/p' \
        | awk '{ s += $1 } END { print s + 0 }'
}

RESTORED=$WORK/restored.img
ours_ls() { "$AGENT" image ls --image "$URL/inc.hfi" / --credentials-file "$CREDS"; }
ours_extract() {
    rm -rf "$WORK/out"
    "$AGENT" image extract --image "$URL/inc.hfi" /big.bin --to "$WORK/out" --credentials-file "$CREDS"
}
restore_first() {
    rm -f "$RESTORED"
    "$AGENT" image restore --image "$URL/inc.hfi" --target "$RESTORED" --credentials-file "$CREDS" >/dev/null
    mount -o ro,loop,noload "$RESTORED" "$MNT"
}
restore_ls() {
    restore_first
    ls -l "$MNT"
    umount "$MNT"
}
restore_extract() {
    restore_first
    rm -rf "$WORK/out"
    mkdir -p "$WORK/out"
    cp -a "$MNT/big.bin" "$WORK/out/"
    umount "$MNT"
}

measure ours_ls - ours_ls
measure restore_ls - restore_ls
measure ours_extract - ours_extract
mount -o ro,loop "$VOL" "$MNT"
cmp -s "$MNT/big.bin" "$WORK/out/big.bin" || die "the extracted file differs from the volume's"
umount "$MNT"
measure restore_extract - restore_extract
rm -f "$RESTORED"

B_ls=$(bytes_of ours_ls)
B_extract=$(bytes_of ours_extract)
B_restore=$(bytes_of restore_ls)
(( B_restore > 0 )) || die "the SFTP server's log shows no bytes read: cannot count them"
IMAGES=$(($(stat -c %s "$DATA/full.hfi") + $(stat -c %s "$DATA/inc.hfi")))

{
    echo "| from the incremental image on SFTP | holdfast-agent | s | restore the volume first | s | ratio |"
    echo "| --- | --- | ---: | --- | ---: | ---: |"
    echo "| list the root folder | image ls | ${T[ours_ls]} | restore, mount, ls | ${T[restore_ls]} | $(ratio "${T[restore_ls]}" "${T[ours_ls]}")× |"
    echo "| get a $big MiB file | image extract | ${T[ours_extract]} | restore, mount, cp | ${T[restore_extract]} | $(ratio "${T[restore_extract]}" "${T[ours_extract]}")× |"
    echo
    echo "ratio = the restore-first way's time / ours (above 1: ours is faster)."
    echo "Volume $(mib "$(size_of "$VOL")") MiB, $used MiB used; images on SFTP $(mib "$IMAGES") MiB (full + incremental)."
    echo "Read from the target (the SFTP server's count): image ls $(mib "$B_ls") MiB," \
        "image extract $(mib "$B_extract") MiB, restore $(mib "$B_restore") MiB."
} | tee "$OUTDIR/results.md"
