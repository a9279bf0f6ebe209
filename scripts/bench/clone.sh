#!/usr/bin/env bash
# Cloning a disk onto another, side by side with dd and partclone in one run (see
# docs/benchmarks.md, "Cloning"):
#
#   sudo scripts/bench/clone.sh [USED_MIB] [OUTDIR]   (defaults 1024 /var/tmp/holdfast-clbench)
#
# A GPT disk (USED_MIB * 2 + 128 MiB) with a 64 MiB FAT32 EFI partition and an ext4 root
# holding USED_MIB of files (half incompressible, half text) is copied onto an equal disk
# (both loop devices): `holdfast-agent clone` used-sector, against partclone (the table
# with sfdisk, each partition with partclone.fat32 / partclone.ext4 device to device: the
# well-known used-block copier) and against `holdfast-agent clone --forensic`, against
# `dd bs=4M iflag=direct oflag=direct` (every sector). Reported: wall time (median of BENCH_RUNS, page
# cache dropped before each run) and the bytes each reads from the source and writes to
# the target (the loop devices' own counters).
# Every copy is checked: the target's table equal to the source's, fsck clean, the same
# files (and, for the whole-disk copies, the same bytes).
#
# Environment: HOLDFAST_AGENT (default: the release build), BENCH_RUNS (default 3),
# BENCH_STRICT=1 (a failed command or check fails the script). Needs root.
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$SCRIPT_DIR/../.."
used=${1:-1024}
OUTDIR=$(mkdir -p "${2:-/var/tmp/holdfast-clbench}" && realpath "${2:-/var/tmp/holdfast-clbench}")
WORK=$OUTDIR/work
RUNS=${BENCH_RUNS:-3}
WARMUP=0
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export LC_ALL=C
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"
declare -A T

[[ $(id -u) -eq 0 ]] || die "must run as root (loop devices, mounts, drop_caches)"
[[ $used =~ ^[1-9][0-9]*$ ]] || die "USED_MIB must be a positive integer"
need=()
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v partclone.ext4 >/dev/null || need+=(partclone)
command -v sfdisk >/dev/null || need+=(fdisk)
((${#need[@]} == 0)) || apt_install "${need[@]}"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}
AGENT=${HOLDFAST_AGENT:-$CARGO_TARGET_DIR/release/holdfast-agent}
[[ -x $AGENT ]] || cargo build --release -p holdfast-agent >&2
AGENT=$(realpath "$AGENT")

SRC_IMG=$OUTDIR/source.img
DST_IMG=$OUTDIR/target.img
MNT=$OUTDIR/mnt
MNT2=$OUTDIR/mnt2
SRC=
DST=
PARTS=()
cleanup() {
    for m in "$MNT" "$MNT2"; do
        if mountpoint -q "$m" 2>/dev/null; then umount "$m" || true; fi
    done
    for d in "$SRC" "$DST" "${PARTS[@]}"; do
        # The partitions a clone told the kernel about would outlive the loop device.
        if [[ -n $d ]]; then partx -d "$d" 2>/dev/null || true; fi
        if [[ -n $d ]]; then losetup -d "$d" 2>/dev/null || true; fi
    done
    # The disks are as large as asked: only the results stay.
    rm -f "$SRC_IMG" "$DST_IMG"
}
trap cleanup EXIT
rm -rf "$WORK" "$SRC_IMG" "$DST_IMG"
mkdir -p "$WORK" "$MNT" "$MNT2"

disk_mib=$((used * 2 + 128))
truncate -s "${disk_mib}M" "$SRC_IMG" "$DST_IMG"
printf 'label: gpt\nsize=64MiB, type=U, name=efi\ntype=L, name=root\n' | sfdisk -q "$SRC_IMG"
SRC=$(losetup -f --show "$SRC_IMG")
DST=$(losetup -f --show "$DST_IMG")
# Partitions as loop devices at their offsets (this kernel may not scan loop devices for
# partitions): SP1 SP2 on the source, DP1 DP2 on the target (same table once copied).
part_loop() { # FILE N
    local start size
    read -r start size < <(sfdisk --json "$SRC_IMG" |
        python3 -c 'import json,sys; p=json.load(sys.stdin)["partitiontable"]["partitions"][int(sys.argv[1])-1]; print(p["start"]*512, p["size"]*512)' "$2")
    losetup -f --show -o "$start" --sizelimit "$size" "$1"
}
SP1=$(part_loop "$SRC_IMG" 1) && PARTS+=("$SP1")
SP2=$(part_loop "$SRC_IMG" 2) && PARTS+=("$SP2")
DP1=$(part_loop "$DST_IMG" 1) && PARTS+=("$DP1")
DP2=$(part_loop "$DST_IMG" 2) && PARTS+=("$DP2")
mkfs.vfat -I -F 32 -n EFI "$SP1" >/dev/null
mkfs.ext4 -q -F -L root "$SP2"
if command -v mcopy >/dev/null; then
    head -c 4194304 /dev/urandom >"$WORK/BOOTX64.EFI"
    mmd -i "$SP1" ::/EFI ::/EFI/BOOT 2>/dev/null
    mcopy -i "$SP1" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/ 2>/dev/null
fi
mount "$SP2" "$MNT"
fmib=$((used >= 256 ? 8 : 1))
nfiles=$((used / fmib))
log "disk: $disk_mib MiB, root with $used MiB of files ($nfiles of $fmib MiB)"
for ((i = 0; i < nfiles; i++)); do
    if ((i % 2 == 0)); then
        head -c "$((fmib << 20))" /dev/urandom >"$MNT/f$i"
    else
        { yes "holdfast clone benchmark, line of file $i" || true; } | head -c "$((fmib << 20))" >"$MNT/f$i"
    fi
done
umount "$MNT"
sfdisk --dump "$SRC_IMG" | grep -v '^device:' | sed "s#$SRC_IMG#DISK#" >"$WORK/table.want"

cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# The target as a fresh disk holding something else: old bytes at its head, no table.
fresh() {
    dd if=/dev/urandom of="$DST" bs=1M count=4 oflag=direct status=none
    cold
}
# sectors DEV FIELD: sectors DEV has read (FIELD 3) or written (7), from /sys/block.
sectors() { awk -v f="$2" '{ print $f }' "/sys/block/$(basename "$1")/stat"; }
# device_io: bytes read from the source's devices and written to the target's, so far
# (the disk and its partitions' loop devices: partclone goes through the latter). Device
# counters, not the process's: they leave out loading the programs themselves.
device_io() {
    local r=0 w=0 d
    for d in "$SRC" "$SP1" "$SP2"; do r=$((r + $(sectors "$d" 3))); done
    for d in "$DST" "$DP1" "$DP2"; do w=$((w + $(sectors "$d" 7))); done
    echo "$((r * 512)) $((w * 512))"
}
# run_counted ID CMD...: run CMD and keep the bytes it read from the source and wrote to
# the target in WORK/ID.io.
run_counted() {
    local id=$1 r0 w0 r1 w1
    shift
    read -r r0 w0 < <(device_io)
    "$@"
    sync
    read -r r1 w1 < <(device_io)
    echo "$((r1 - r0)) $((w1 - w0))" >"$WORK/$id.io"
}
ours() { run_counted ours "$AGENT" clone --source "$SRC" --target "$DST" --yes --json; }
ours_forensic() { run_counted ours_forensic "$AGENT" clone --source "$SRC" --target "$DST" --forensic --yes --json; }
dd_disk() { run_counted dd_disk dd if="$SRC" of="$DST" bs=4M iflag=direct oflag=direct status=none; }
partclone_disk() {
    run_counted partclone_disk bash -c '
        set -e
        sfdisk --dump "$1" | sfdisk -q --no-reread --no-tell-kernel "$2"
        partclone.fat32 -q -b -s "$3" -o "$5" >/dev/null 2>&1
        partclone.ext4 -q -b -s "$4" -o "$6" >/dev/null 2>&1
    ' _ "$SRC" "$DST" "$SP1" "$SP2" "$DP1" "$DP2"
}

# check ID WHOLE: the target's table, filesystems and files equal the source's (WHOLE=1:
# every byte too).
check() {
    local id=$1 whole=$2 bad=
    sync
    echo 3 >/proc/sys/vm/drop_caches
    sfdisk --dump "$DST_IMG" | grep -v '^device:' | sed "s#$DST_IMG#DISK#" >"$WORK/table.$id"
    cmp -s "$WORK/table.want" "$WORK/table.$id" || bad="table differs"
    fsck.vfat -n "$DP1" >/dev/null 2>&1 || bad="$bad; fsck.vfat"
    if command -v mcopy >/dev/null; then
        mtype -i "$DP1" ::/EFI/BOOT/BOOTX64.EFI 2>/dev/null | cmp -s - "$WORK/BOOTX64.EFI" || bad="$bad; EFI file differs"
    fi
    e2fsck -fn "$DP2" >/dev/null 2>&1 || bad="$bad; e2fsck"
    mount -o ro "$SP2" "$MNT" && mount -o ro "$DP2" "$MNT2"
    diff -r "$MNT" "$MNT2" >/dev/null || bad="$bad; files differ"
    umount "$MNT" "$MNT2"
    if [[ $whole == 1 ]]; then cmp -s "$SRC" "$DST" || bad="$bad; bytes differ"; fi
    if [[ -n $bad ]]; then
        [[ ${BENCH_STRICT:-} == 1 ]] && die "$id: ${bad#; }"
        log "$id: NOT equal: ${bad#; }"
        OK[$id]="no: ${bad#; }"
    else
        OK[$id]=yes
    fi
}
declare -A OK
for id in ours partclone_disk ours_forensic dd_disk; do
    measure "$id" fresh "$id"
    check "$id" "$([[ $id == ours_forensic || $id == dd_disk ]] && echo 1 || echo 0)"
done

io() { read -r r w <"$WORK/$1.io" && echo "$(mib "$r") / $(mib "$w")"; }
{
    echo "| copy | ours (s) | reference (s) | ours vs reference | read / written, ours (MiB) | read / written, reference (MiB) | equal |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
    echo "| used blocks: \`clone\` vs sfdisk + partclone.fat32 + partclone.ext4 | ${T[ours]} | ${T[partclone_disk]} | $(ratio "${T[ours]}" "${T[partclone_disk]}") | $(io ours) | $(io partclone_disk) | ${OK[ours]} / ${OK[partclone_disk]} |"
    echo "| every sector: \`clone --forensic\` vs \`dd bs=4M\` (direct I/O) | ${T[ours_forensic]} | ${T[dd_disk]} | $(ratio "${T[ours_forensic]}" "${T[dd_disk]}") | $(io ours_forensic) | $(io dd_disk) | ${OK[ours_forensic]} / ${OK[dd_disk]} |"
    echo
    echo "GPT disk of $disk_mib MiB (64 MiB FAT32 EFI, ext4 root with $used MiB of files) onto an equal disk, both loop devices; median of $RUNS cold runs."
} | tee "$OUTDIR/results.md"
