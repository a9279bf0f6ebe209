#!/usr/bin/env bash
# Used-sector imaging of each filesystem reader (XFS, btrfs, exFAT, NTFS) against partclone, side by side in one run
# (docs/benchmarks.md, "Filesystems"):
#
#   sudo scripts/bench/filesystems.sh [USED_MIB] [OUTDIR]   (defaults 2048 /var/tmp/holdfast-fsbench)
#
# For each filesystem: a volume file of about 1.5 x USED_MIB, filled through a mount (the
# filesystem's own allocation) with USED_MIB of 8 MiB files, half incompressible
# (AES-CTR keystream, fixed keys) and half base64 text of it (compresses to about 3/4);
# then imaged by `holdfast-agent image create` and by `partclone.FS -c | zstd -3 -T2`. The
# volume is read once first, so both start with it in the page cache. Prints a markdown
# table (times, sizes, bytes read, ratios) and writes OUTDIR/results.md.
#
# Environment: HOLDFAST_AGENT (default: the release build), BENCH_RUNS (median of, default 3),
# BENCH_WARMUP (untimed runs first, default 1), BENCH_FS (default "xfs btrfs exfat ntfs"),
# BENCH_STRICT=1 (a failed command fails the script: the test command's tiny run).
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$SCRIPT_DIR/../.."
used=${1:-2048}
OUTDIR=$(mkdir -p "${2:-/var/tmp/holdfast-fsbench}" && realpath "${2:-/var/tmp/holdfast-fsbench}")
WORK=$OUTDIR
RUNS=${BENCH_RUNS:-3}
WARMUP=${BENCH_WARMUP:-1}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export LC_ALL=C
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"
declare -A T

[[ $(id -u) -eq 0 ]] || die "must run as root (loop devices and mounts)"
[[ $used =~ ^[1-9][0-9]*$ ]] || die "USED_MIB must be a positive integer"
need=()
command -v partclone.xfs >/dev/null || need+=(partclone)
command -v zstd >/dev/null || need+=(zstd)
command -v openssl >/dev/null || need+=(openssl)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
command -v mkfs.exfat >/dev/null || need+=(exfatprogs)
command -v mount.exfat-fuse >/dev/null || need+=(exfat-fuse)
command -v mkntfs >/dev/null || need+=(ntfs-3g)
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
((${#need[@]} == 0)) || apt_install "${need[@]}"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}
AGENT=${HOLDFAST_AGENT:-$CARGO_TARGET_DIR/release/holdfast-agent}
[[ -x $AGENT ]] || cargo build --release -p holdfast-agent >&2
AGENT=$(realpath "$AGENT")

MNT=$OUTDIR/mnt
LOOP=
cleanup() {
    if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" || true; fi
    if [[ -n $LOOP ]]; then losetup -d "$LOOP" 2>/dev/null || true; fi
}
trap cleanup EXIT

# keystream N: stdin encrypted with AES-CTR under a fixed key and IV N (pseudo-random).
keystream() {
    openssl enc -aes-128-ctr -nosalt -K 486f6c64666173742062656e63682121 -iv "$(printf '%032x' "$1")"
}

# fill DIR MIB: MIB of 8 MiB files (the last one smaller), alternately random and text.
fill() {
    local dir=$1 left=$2 i=0 n
    mkdir -p "$dir/random" "$dir/text"
    while ((left > 0)); do
        n=$((left < 8 ? left : 8))
        # Bounded input, so no stage of the pipe is cut off (pipefail).
        if ((i % 2 == 0)); then
            head -c $((n << 20)) /dev/zero | keystream "$i" > "$dir/random/f$i"
        else
            head -c $((n * 786432)) /dev/zero | keystream "$i" | base64 > "$dir/text/f$i"
        fi
        left=$((left - n))
        i=$((i + 1))
    done
}

# make FS VOLUME: a filesystem filled with $used MiB, unmounted again.
make_volume() {
    local fs=$1 vol=$2 size_mib=$((used * 3 / 2 + 320))
    rm -f "$vol"
    truncate -s "${size_mib}M" "$vol"
    mkdir -p "$MNT"
    case $fs in
    xfs)
        mkfs.xfs -q -f "$vol"
        mount -o loop "$vol" "$MNT"
        ;;
    exfat)
        mkfs.exfat "$vol" > /dev/null
        # exfat-fuse needs a block device (this kernel has no exfat driver).
        LOOP=$(losetup -f --show "$vol")
        mount.exfat-fuse "$LOOP" "$MNT"
        ;;
    btrfs)
        mkfs.btrfs -q -f "$vol"
        mount -o loop "$vol" "$MNT"
        ;;
    ntfs)
        mkntfs -q -F -f "$vol" 2>/dev/null
        ntfs-3g "$vol" "$MNT"
        ;;
    *) die "no volume recipe for $fs" ;;
    esac
    fill "$MNT" "$used"
    sync
    umount "$MNT"
    if [[ -n $LOOP ]]; then
        losetup -d "$LOOP"
        LOOP=
    fi
}

rm -f "$OUTDIR/results.md"
declare -A SIZE_HF SIZE_PC READ_HF
for fs in ${BENCH_FS:-xfs btrfs exfat ntfs}; do
    VOL=$OUTDIR/$fs.img
    log "$fs: making a volume with $used MiB of files"
    make_volume "$fs" "$VOL"
    cat "$VOL" > /dev/null
    HF_OUT=$OUTDIR/$fs.hfi
    PC_OUT=$OUTDIR/$fs.pc.zst
    hf_run() { rm -f "$HF_OUT"; "$AGENT" image create --source "$VOL" --output "$HF_OUT" --json > "$OUTDIR/$fs.json"; }
    pc_run() { "partclone.$fs" -c -s "$VOL" -o - -L "$OUTDIR/partclone.log" -q | zstd -3 -T2 -q -f -o "$PC_OUT"; }
    measure "hf_$fs" - hf_run
    measure "pc_$fs" - pc_run
    grep -q '"coverage": *"used-sector"' "$OUTDIR/$fs.json" || die "$fs was not imaged used-sector: $(cat "$OUTDIR/$fs.json")"
    SIZE_HF[$fs]=$(size_of "$HF_OUT")
    SIZE_PC[$fs]=$(size_of "$PC_OUT")
    READ_HF[$fs]=$(sed -n 's/.*"read_bytes": *\([0-9]*\).*/\1/p' "$OUTDIR/$fs.json")
    rm -f "$VOL" "$HF_OUT" "$PC_OUT"
done

{
    echo "Filesystems: $used MiB of files (half incompressible), median of $RUNS runs, page cache warm"
    echo
    echo "| filesystem | holdfast s | partclone \\| zstd -3 s | time ratio (partclone / holdfast) | holdfast MiB | partclone MiB | size ratio (holdfast / partclone) | holdfast bytes read |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    for fs in ${BENCH_FS:-xfs btrfs exfat ntfs}; do
        echo "| $fs | ${T[hf_$fs]} | ${T[pc_$fs]} | $(ratio "${T[pc_$fs]}" "${T[hf_$fs]}") | $(mib "${SIZE_HF[$fs]}") | $(mib "${SIZE_PC[$fs]}") | $(ratio "${SIZE_HF[$fs]}" "${SIZE_PC[$fs]}") | ${READ_HF[$fs]} |"
    done
} | tee "$OUTDIR/results.md"
