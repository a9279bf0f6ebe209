#!/usr/bin/env bash
# What an incremental reads when it finds changes from the filesystem, side by side in one
# run (see docs/benchmarks.md, "Change-tracked incrementals"):
#
#   sudo scripts/bench/changes.sh [USED_MIB] [OUTDIR]   (defaults 2900 /var/tmp/holdfast-cbench)
#
# A mounted volume (BENCH_FS: ext4, the default, xfs or btrfs; 4 GiB for the default size)
# with USED_MIB of files — 8 MiB files,
# half incompressible and half text, and a folder of small files — is imaged full (frozen
# while imaging), then about 5 % of its data is changed (parts of files rewritten in
# place, new files, appends, deletions) and it is imaged incremental four ways, each from
# a cold page cache: with the filesystem's change source (the default), with the agent's
# record of block writes (`--write-log`, as the daemon runs it), hashing every used block
# (`--no-change-tracking`), and for scale a new full image. restic and borg back up the
# mounted files before and after the same change (their second backup is timed).
# Reported: wall time (median of BENCH_RUNS), bytes read from the volume (by the agent, and
# as the device served them with the kernel's read-ahead), and ratios; and what the trace
# of block writes costs writers (4 KiB direct writes with it and without).
# The three incrementals are restored and checked: the filesystem's checker clean (e2fsck,
# xfs_repair -n after a mount settles the frozen log, btrfs check), every file equal to the
# volume's.
#
# Environment: BENCH_FS, HOLDFAST_AGENT (default: the release build), BENCH_RUNS (default 3),
# BENCH_STRICT=1 (a failed command or check fails the script). Needs root.
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$SCRIPT_DIR/../.."
used=${1:-2900}
OUTDIR=$(mkdir -p "${2:-/var/tmp/holdfast-cbench}" && realpath "${2:-/var/tmp/holdfast-cbench}")
WORK=$OUTDIR/work
RUNS=${BENCH_RUNS:-3}
WARMUP=0
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export LC_ALL=C
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"
declare -A T

[[ $(id -u) -eq 0 ]] || die "must run as root (loop devices, mounts, fsfreeze, drop_caches)"
[[ $used =~ ^[1-9][0-9]*$ ]] || die "USED_MIB must be a positive integer"
need=()
FS=${BENCH_FS:-ext4}
case $FS in
ext4) MKFS=(mkfs.ext4 -q -F) SOURCE_NAME="ext4 inode change times" COPY_OPTS=ro,noload ;;
xfs) MKFS=(mkfs.xfs -q -f) SOURCE_NAME="xfs inode change times" COPY_OPTS=ro,nouuid ;;
btrfs) MKFS=(mkfs.btrfs -q -f) SOURCE_NAME="btrfs extent generations" COPY_OPTS=ro ;;
*) die "BENCH_FS must be ext4, xfs or btrfs" ;;
esac
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
command -v restic >/dev/null || need+=(restic)
command -v borg >/dev/null || need+=(borgbackup)
((${#need[@]} == 0)) || apt_install "${need[@]}"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}
AGENT=${HOLDFAST_AGENT:-$CARGO_TARGET_DIR/release/holdfast-agent}
[[ -x $AGENT ]] || cargo build --release -p holdfast-agent >&2
AGENT=$(realpath "$AGENT")

VOL=$OUTDIR/volume.img
MNT=$OUTDIR/mnt
IMG=$OUTDIR/images
LOOP=
cleanup() {
    if [[ -d $WORK/writes ]]; then "$AGENT" write-log stop --dir "$WORK/writes" || true; fi
    if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" || true; fi
    if [[ -n $LOOP ]]; then losetup -d "$LOOP" 2>/dev/null || true; fi
    if mountpoint -q "$WORK/check" 2>/dev/null; then umount "$WORK/check" || true; fi
}
trap cleanup EXIT
rm -rf "$WORK" "$IMG" "$VOL" "$OUTDIR/restic" "$OUTDIR/borg"
mkdir -p "$WORK" "$IMG" "$MNT" "$WORK/check"

# The volume, mounted for the whole run (a mount in between would rightly make the
# incremental hash every block: the filesystem's mount count changes).
vol_mib=$((used >= 1024 ? 4096 : used * 4 + 96))
((vol_mib * 10 >= used * 14)) || vol_mib=$((used * 14 / 10 + 64))
# XFS needs 300 MiB at least.
[[ $FS != xfs ]] || ((vol_mib >= 320)) || vol_mib=320
truncate -s "${vol_mib}M" "$VOL"
"${MKFS[@]}" "$VOL"
# Direct I/O: the loop device reads its file as a disk would, without a second page cache
# whose own read-ahead (megabytes on a virtual disk) would blur what the device was asked.
LOOP=$(losetup --direct-io=on -f --show "$VOL" 2>/dev/null || losetup -f --show "$VOL")
mount "$LOOP" "$MNT"
# A file is 8 MiB, or 1 MiB on small volumes; a tenth of the space is small files.
fmib=$((used >= 512 ? 8 : 1))
nsmall=$((used * 1024 / 10 / 32))
nbig=$(((used - used / 10) / fmib))
log "volume: $vol_mib MiB, $used MiB of files ($nbig of $fmib MiB, $nsmall of 1-63 KiB)"
mkdir -p "$MNT/big" "$MNT/small"
for ((i = 0; i < nbig; i++)); do
    if ((i % 2 == 0)); then
        head -c "$((fmib << 20))" /dev/urandom >"$MNT/big/f$i"
    else
        # yes dies of SIGPIPE when head has enough: that is expected.
        { yes "holdfast change-tracking benchmark, line of file $i" || true; } | head -c "$((fmib << 20))" >"$MNT/big/f$i"
    fi
done
python3 - "$MNT/small" "$nsmall" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
for i in range(n):
    d = os.path.join(root, f"d{i % 50}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"s{i}"), "wb") as f:
        f.write(rng.randbytes(rng.randrange(1024, 64 * 1024)))
PY
sync
used_bytes=$(df -B1 --output=used "$MNT" | tail -n1 | tr -d ' ')

export RESTIC_PASSWORD=holdfast-bench RESTIC_CACHE_DIR=$OUTDIR/restic-cache
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_BASE_DIR=$OUTDIR/borg-base
restic init -q -r "$OUTDIR/restic" >/dev/null
borg init -e none "$OUTDIR/borg"
log "restic and borg: first backups (not timed)"
restic backup -q -r "$OUTDIR/restic" "$MNT" >/dev/null
borg create --compression zstd,3 "$OUTDIR/borg::one" "$MNT"

# Files written just before the full image would be read again by the incremental
# within the default 60 s margin; the benchmark waits 2 s and says --change-margin 1.
sleep 2
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# Bytes the device served (the agent's reads plus the kernel's read-ahead), of the last run.
device_read() { awk '{ printf "%.0f\n", $3 * 512 }' "/sys/block/$(basename "$LOOP")/stat"; }
counted() {
    local id=$1 r0
    shift
    r0=$(device_read)
    "$@"
    echo $(($(device_read) - r0)) >"$WORK/$id.device"
}
full() { counted full "$AGENT" image create --source "$LOOP" --output "$IMG/full.hfi" --overwrite --consistency freeze --write-log "$WORK/writes" --json >"$WORK/full.json"; }
measure full cold full
cp "$IMG/full.hfi" "$IMG/base.hfi"
sleep 2

# About 5 % of the data changed.
budget=$((used * 5 / 100))
((budget >= 1)) || budget=1
log "changing about $budget MiB"
k=0
for ((i = 0; i < nbig && k < budget * 4 / 10; i += 7, k += 1)); do
    head -c 1048576 /dev/urandom | dd of="$MNT/big/f$i" bs=1M seek=1 conv=notrunc status=none
done
for ((i = 0; i < budget * 3 / 10 + 1; i++)); do
    head -c 1048576 /dev/urandom >"$MNT/big/new$i"
done
for ((i = 0; i < nsmall && i < budget * 16 * 2 / 10; i += 3)); do
    head -c 65536 /dev/urandom >>"$MNT/small/d$((i % 50))/s$i"
done
for ((i = 5; i < nbig; i += 23)); do rm -f "$MNT/big/f$i"; done
touch -d '2001-01-01' "$MNT/big/f1"
sync

tracked() { counted tracked "$AGENT" image create --source "$LOOP" --output "$IMG/inc-tracked.hfi" --overwrite --incremental --base "$IMG/base.hfi" --consistency freeze --change-margin 1 --json >"$WORK/tracked.json"; }
traced() { counted traced "$AGENT" image create --source "$LOOP" --output "$IMG/inc-traced.hfi" --overwrite --incremental --base "$IMG/base.hfi" --consistency freeze --write-log "$WORK/writes" --json >"$WORK/traced.json"; }
hashed() { counted hashed "$AGENT" image create --source "$LOOP" --output "$IMG/inc-hashed.hfi" --overwrite --incremental --base "$IMG/base.hfi" --consistency freeze --no-change-tracking --json >"$WORK/hashed.json"; }
measure tracked cold tracked
measure traced cold traced
measure hashed cold hashed
runs=$RUNS
RUNS=1
restic_second() { restic backup -q -r "$OUTDIR/restic" "$MNT"; }
borg_second() { borg create --compression zstd,3 "$OUTDIR/borg::two" "$MNT"; }
measure restic cold restic_second
measure borg cold borg_second
RUNS=$runs

field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); v=d
for k in sys.argv[2].split("."): v=v[k]
print(v)' "$1" "$2"; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f\n", 100 * a / b }'; }

# check_fs FILE: the filesystem's own checker, read-only. A frozen XFS has its log covered
# and its counters not summed yet: a mount settles them, as after any restore.
check_fs() {
    case $FS in
    ext4) e2fsck -fn "$1" ;;
    xfs) mount -o loop,nouuid "$1" "$WORK/check" && umount "$WORK/check" && xfs_repair -n "$1" ;;
    btrfs) btrfs check --readonly "$1" ;;
    esac
}
# Every incremental restores to the volume's files, with a clean fsck.
want=$( (cd "$MNT" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum)
for kind in tracked traced hashed; do
    rm -f "$WORK/restored"
    "$AGENT" image restore --image "$IMG/inc-$kind.hfi" --target "$WORK/restored" >/dev/null
    check_fs "$WORK/restored" >"$WORK/fsck-$kind.log" 2>&1 || die "the $kind incremental restores to a volume its checker finds errors in ($WORK/fsck-$kind.log)"
    mount -o "loop,$COPY_OPTS" "$WORK/restored" "$WORK/check"
    got=$( (cd "$WORK/check" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum) | sha256sum)
    umount "$WORK/check"
    [[ $got == "$want" ]] || die "the $kind incremental restores to other files than the volume holds"
done
rm -f "$WORK/restored"

# What the trace costs the volume's writers: the same 4 KiB direct writes over a file made
# beforehand, with the record's trace on (the full image started it), then off.
wcount=$((used >= 512 ? 16384 : 512))
small_writes() { dd if=/dev/zero of="$MNT/writes.tmp" bs=4k count="$wcount" oflag=direct conv=notrunc status=none; }
small_writes
measure writes_traced - small_writes
"$AGENT" write-log stop --dir "$WORK/writes"
measure writes_untraced - small_writes
rm -f "$MNT/writes.tmp"

read_t=$(field "$WORK/tracked.json" read_bytes)
read_h=$(field "$WORK/hashed.json" read_bytes)
read_w=$(field "$WORK/traced.json" read_bytes)
read_f=$(field "$WORK/full.json" read_bytes)
scan_t=$(field "$WORK/tracked.json" changes.scanned_bytes)
skip_t=$(field "$WORK/tracked.json" changes.skipped_bytes)
pass_t=$(field "$WORK/tracked.json" changes.pass)
[[ $pass_t == "$SOURCE_NAME" ]] || die "the tracked incremental ran as: $pass_t"
pass_w=$(field "$WORK/traced.json" changes.pass)
[[ $pass_w == "block writes traced by the agent" ]] || die "the traced incremental ran as: $pass_w"
if [[ ${BENCH_STRICT:-} == 1 ]] && ((read_t >= read_h)); then
    die "change tracking read $read_t bytes, no fewer than hashing every block ($read_h)"
fi

{
    echo "| command | wall s (median, cold cache) | read from the volume MiB | % of used blocks | device served MiB | time vs full image |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    echo "| full image (\`image create\`) | ${T[full]} | $(mib "$read_f") | $(pct "$read_f" "$read_f") | $(mib "$(cat "$WORK/full.device")") | 1.00 |"
    echo "| incremental, filesystem change source (default) | ${T[tracked]} | $(mib "$read_t") | $(pct "$read_t" "$read_f") | $(mib "$(cat "$WORK/tracked.device")") | $(ratio "${T[tracked]}" "${T[full]}") |"
    echo "| incremental, traced block writes (\`--write-log\`) | ${T[traced]} | $(mib "$read_w") | $(pct "$read_w" "$read_f") | $(mib "$(cat "$WORK/traced.device")") | $(ratio "${T[traced]}" "${T[full]}") |"
    echo "| incremental, every block hashed (\`--no-change-tracking\`) | ${T[hashed]} | $(mib "$read_h") | $(pct "$read_h" "$read_f") | $(mib "$(cat "$WORK/hashed.device")") | $(ratio "${T[hashed]}" "${T[full]}") |"
    echo "| restic backup, after the change (1 run) | ${T[restic]} | n/a | n/a | n/a | $(ratio "${T[restic]}" "${T[full]}") |"
    echo "| borg create --compression zstd,3, after the change (1 run) | ${T[borg]} | n/a | n/a | n/a | $(ratio "${T[borg]}" "${T[full]}") |"
    echo
    echo "$FS volume $vol_mib MiB: $(mib "$used_bytes") MiB used by files (df), $(mib "$read_f") MiB of used blocks" \
        "with the filesystem's metadata and journal (what a full image reads); about $budget MiB of data changed."
    echo "Change tracking read $(mib "$scan_t") MiB of metadata to find the changes and took" \
        "$(mib "$skip_t") MiB of used blocks from the base image unread; it read" \
        "$(pct "$read_t" "$read_h") % of what hashing every block read."
    echo "The traced incremental read $(pct "$read_w" "$read_h") % of what hashing every block read."
    echo "$wcount direct 4 KiB writes took ${T[writes_traced]} s with the trace on, ${T[writes_untraced]} s without" \
        "($(ratio "${T[writes_traced]}" "${T[writes_untraced]}"))."
    echo "All three incrementals restore with the $FS checker clean and every file equal to the volume's."
} | tee "$OUTDIR/results.md"
