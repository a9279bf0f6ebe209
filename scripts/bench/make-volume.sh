#!/usr/bin/env bash
# Build the two benchmark volumes (see docs/benchmarks.md):
#
#   sudo scripts/bench/make-volume.sh [OUTDIR]      (default /var/tmp/holdfast-bench)
#
#   OUTDIR/state1.ext4  4 GiB ext4 holding ~2.8 GiB of mixed data:
#                       /sys   ~1.4 GiB of system files (whole directories of
#                              /usr/bin, /usr/lib, /usr/share, picked by
#                              select-files.py in a fixed order)
#                       /archives ~0.5 GiB of .tar.gz / .tar.zst archives
#                       /data/random 608 MiB of pseudo-random data (AES-CTR
#                              keystream with fixed keys: incompressible)
#                       /logs   ~40 MiB of generated text logs
#   OUTDIR/state2.ext4  state1 with ~5 % (~140 MiB) changed: parts of random
#                       files rewritten in place, new files, deleted files,
#                       appended logs, one archive rewritten.
#
# Both are written through a loop mount so that the allocation is the kernel's
# own. Needs root and loop devices. Idempotent: does nothing when both volumes
# and OUTDIR/volumes.stamp exist (delete the stamp to rebuild).
set -euo pipefail

OUTDIR=${1:-/var/tmp/holdfast-bench}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STAMP_VERSION="holdfast-bench-volume v3"

# Fixed identity of the filesystem, so that two builds look alike.
FS_UUID=6f1d2c3b-0000-4000-8000-686f6c646661
FS_HASH_SEED=0b5e55ed-1234-4567-89ab-cdef01234567
FS_SIZE=4G
# Key of the pseudo-random data; each file has its own IV.
PRNG_KEY=486f6c64666173742062656e63682121
ARCHIVE_MTIME=@1700000000

SYS_BUDGET=$((1450 * 1024 * 1024))
ARCHIVE_BUDGET=$((500 * 1024 * 1024))

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export LC_ALL=C
# mke2fs takes its timestamps from here: a fixed superblock creation time.
export E2FSPROGS_FAKE_TIME=1700000000

log() { printf '[make-volume %s] %s\n' "$(date +%T)" "$*"; }
die() {
    printf 'make-volume.sh: error: %s\n' "$*" >&2
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (loop devices and mount)"

# Tools ------------------------------------------------------------------------
need_pkgs=()
command -v mkfs.ext4 >/dev/null || need_pkgs+=(e2fsprogs)
command -v losetup >/dev/null || need_pkgs+=(mount)
command -v zstd >/dev/null || need_pkgs+=(zstd)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v python3 >/dev/null || need_pkgs+=(python3)
if ((${#need_pkgs[@]} > 0)); then
    log "installing ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

mkdir -p "$OUTDIR"
STATE1=$OUTDIR/state1.ext4
STATE2=$OUTDIR/state2.ext4
STAMP=$OUTDIR/volumes.stamp

if [[ -f $STATE1 && -f $STATE2 && -f $STAMP ]] && [[ $(head -n1 "$STAMP") == "$STAMP_VERSION" ]]; then
    log "volumes already built ($STAMP):"
    cat "$STAMP"
    exit 0
fi
rm -f "$STAMP"

MNT=$OUTDIR/mnt-build
LOOP=
cleanup() {
    if mountpoint -q "$MNT" 2>/dev/null; then
        umount "$MNT" || true
    fi
    if [[ -n $LOOP ]]; then
        losetup -d "$LOOP" 2>/dev/null || true
    fi
}
trap cleanup EXIT

attach_and_mount() {
    mkdir -p "$MNT"
    LOOP=$(losetup --show -f "$1")
    mount -t ext4 "$LOOP" "$MNT"
}

unmount_and_detach() {
    sync
    umount "$MNT"
    losetup -d "$LOOP"
    LOOP=
}

# prng IV BYTES > FILE: deterministic incompressible bytes (AES-128-CTR keystream).
prng() {
    local iv
    iv=$(printf '%032x' "$1")
    # openssl dies of SIGPIPE when head has enough: that is expected.
    { openssl enc -aes-128-ctr -nosalt -K "$PRNG_KEY" -iv "$iv" </dev/zero 2>/dev/null || true; } | head -c "$2"
}

# gen_log SEED LINES: deterministic syslog-like text.
gen_log() {
    awk -v seed="$1" -v n="$2" 'BEGIN {
        srand(seed);
        split("GET POST PUT DELETE", m, " ");
        split("200 200 200 200 201 204 301 304 400 404 500", s, " ");
        t = 1700000000 + seed * 86400;
        for (i = 0; i < n; i++) {
            t += int(rand() * 3);
            printf "%s host-%02d app[%d]: %s /api/v1/items/%d status=%s bytes=%d dur_ms=%.3f req=%08x\n",
                strftime("%Y-%m-%dT%H:%M:%S", t, 1), seed % 7, 1000 + int(rand() * 50),
                m[1 + int(rand() * 4)], int(rand() * 100000), s[1 + int(rand() * 11)],
                int(rand() * 65536), rand() * 250, int(rand() * 4294967295);
        }
    }'
}

tar_det() {
    # tar_det MTIME DIR...: a deterministic tar stream of DIRs (relative to /).
    local mtime=$1
    shift
    tar --sort=name --mtime="$mtime" --owner=0 --group=0 --numeric-owner \
        --warning=no-file-changed -C / -cf - "$@"
}

used_bytes() {
    # used_bytes IMAGE: bytes in use according to the superblock.
    # (shell arithmetic: mawk's printf %d stops at 2^31)
    local count free bs
    read -r count free bs < <(dumpe2fs -h "$1" 2>/dev/null | awk -F: '
        /^Block count:/ { count = $2 + 0 }
        /^Free blocks:/ { free = $2 + 0 }
        /^Block size:/  { bs = $2 + 0 }
        END { print count, free, bs }')
    echo $(((count - free) * bs))
}

fsck_clean() {
    # fsck_clean IMAGE: e2fsck -fn, quiet unless it finds something.
    local out
    if out=$(e2fsck -fn "$1" 2>&1); then
        log "e2fsck -fn $(basename "$1"): clean"
    else
        printf '%s\n' "$out" >&2
        return 1
    fi
}

# State 1 ----------------------------------------------------------------------
PART1=$STATE1.part
rm -f "$PART1" "$STATE2.part"
log "mkfs.ext4 $FS_SIZE -> $PART1"
truncate -s "$FS_SIZE" "$PART1"
mkfs.ext4 -q -F -b 4096 -L hfbench -U "$FS_UUID" \
    -E "root_owner=0:0,hash_seed=$FS_HASH_SEED,lazy_itable_init=0,lazy_journal_init=0" \
    "$PART1"
attach_and_mount "$PART1"

log "system files (~$((SYS_BUDGET >> 20)) MiB of /usr/bin /usr/lib /usr/share)"
LIST=$OUTDIR/sys-files.list
python3 "$SCRIPT_DIR/select-files.py" "$SYS_BUDGET" /usr/bin /usr/lib /usr/share >"$LIST"
mkdir -p "$MNT/sys"
tar -C / --warning=no-file-changed --null --no-recursion -cf - -T "$LIST" \
    | tar -C "$MNT/sys" -xf -

log "compressed archives (~$((ARCHIVE_BUDGET >> 20)) MiB)"
mkdir -p "$MNT/archives"
# name, compressor, source directories: taken in order until the budget is met.
ARCHIVES=(
    "usr-share-doc.tar.gz|gzip -9 -n|usr/share/doc"
    "x86_64-linux-gnu.tar.zst|zstd -3 -T2 -q|usr/lib/x86_64-linux-gnu"
    "usr-bin.tar.zst|zstd -12 -T2 -q|usr/bin"
    "share-locale-man.tar.gz|gzip -6 -n|usr/share/locale usr/share/man"
    "llvm.tar.zst|zstd -6 -T2 -q|usr/lib/llvm-14 usr/lib/llvm-15"
    "gcc.tar.zst|zstd -9 -T2 -q|usr/lib/gcc"
    "python.tar.gz|gzip -6 -n|usr/lib/python3 usr/lib/python3.11"
    "share-rest.tar.zst|zstd -3 -T2 -q|usr/share/perl usr/share/vim usr/share/icons usr/share/i18n"
    "jvm.tar.gz|gzip -6 -n|usr/lib/jvm"
)
archive_total=0
for spec in "${ARCHIVES[@]}"; do
    ((archive_total < ARCHIVE_BUDGET)) || break
    IFS='|' read -r name compressor dirs <<<"$spec"
    present=()
    for d in $dirs; do
        [[ -d /$d ]] && present+=("$d")
    done
    ((${#present[@]} > 0)) || continue
    # shellcheck disable=SC2086 # the compressor is a command with its options
    tar_det "$ARCHIVE_MTIME" "${present[@]}" | $compressor >"$MNT/archives/$name"
    size=$(stat -c %s "$MNT/archives/$name")
    archive_total=$((archive_total + size))
    log "  $name: $((size >> 20)) MiB (total $((archive_total >> 20)) MiB)"
done

log "pseudo-random data (608 MiB)"
mkdir -p "$MNT/data/random/blobs"
prng 1 $((256 << 20)) >"$MNT/data/random/big.bin"
for k in 0 1 2 3; do
    prng $((10 + k)) $((64 << 20)) >"$MNT/data/random/vm-$k.bin"
done
for i in $(seq 0 95); do
    prng $((100 + i)) $((1 << 20)) >"$MNT/data/random/blobs/blob-$(printf '%03d' "$i").bin"
done

log "logs (~40 MiB)"
mkdir -p "$MNT/logs"
for i in $(seq 0 31); do
    gen_log "$i" 12000 >"$MNT/logs/app-$(printf '%02d' "$i").log"
done

unmount_and_detach
fsck_clean "$PART1" || die "e2fsck found errors in state 1"

# State 2: ~5 % changed ---------------------------------------------------------
# 44 MiB rewritten in place + 16 MiB new + 8 MiB appended + one archive (~60 MiB
# here) re-made; 16 MiB of blobs and every 40th system file deleted.
log "state 2: copy"
PART2=$STATE2.part
cp --sparse=always "$PART1" "$PART2"
attach_and_mount "$PART2"
R=$MNT/data/random

# patch_file FILE OFFSET_MIB LEN_MIB IV: rewrite part of a file in place.
patch_file() {
    prng "$4" $(($3 << 20)) | dd of="$1" bs=1M seek="$2" conv=notrunc status=none iflag=fullblock
}

log "state 2: rewrite parts of random files (44 MiB)"
for j in 0 1 2 3; do
    patch_file "$R/big.bin" $((16 + 64 * j)) 4 $((1000 + j))
done
for k in 0 1 2 3; do
    for off in 3 27 51; do
        patch_file "$R/vm-$k.bin" "$off" 1 $((1100 + 10 * k + off))
    done
done
for i in $(seq 0 6 95); do
    patch_file "$R/blobs/blob-$(printf '%03d' "$i").bin" 0 1 $((1200 + i))
done

log "state 2: new files (16 MiB)"
prng 1300 $((8 << 20)) >"$R/new-0.bin"
prng 1301 $((8 << 20)) >"$R/new-1.bin"

log "state 2: delete files"
for i in $(seq 3 6 95); do
    rm -f "$R/blobs/blob-$(printf '%03d' "$i").bin"
done
# every 40th system file, in sorted order
find "$MNT/sys" -type f -print0 | sort -z | sed -z -n '40~40p' | xargs -0 rm -f

log "state 2: append to logs (8 MiB)"
for i in $(seq 0 15); do
    gen_log $((100 + i)) 4800 >>"$MNT/logs/app-$(printf '%02d' "$i").log"
done

log "state 2: rewrite one archive"
# The smallest archive of at least 16 MiB, re-made as a later snapshot: a new
# compressed stream, written beside and renamed over the old one as tools do.
victim=$(find "$MNT/archives" -type f -size +16M -printf '%s %f\n' | sort -n | head -n1 | cut -d' ' -f2)
[[ -n $victim ]] || die "no archive of 16 MiB or more to rewrite"
for spec in "${ARCHIVES[@]}"; do
    IFS='|' read -r name compressor dirs <<<"$spec"
    [[ $name == "$victim" ]] || continue
    present=()
    for d in $dirs; do
        [[ -d /$d ]] && present+=("$d")
    done
    # shellcheck disable=SC2086
    tar_det @1700086400 "${present[@]}" | $compressor >"$MNT/archives/$name.new"
    mv "$MNT/archives/$name.new" "$MNT/archives/$name"
    log "  rewrote $name ($(($(stat -c %s "$MNT/archives/$name") >> 20)) MiB)"
done

unmount_and_detach
fsck_clean "$PART2" || die "e2fsck found errors in state 2"

mv "$PART1" "$STATE1"
mv "$PART2" "$STATE2"
rmdir "$MNT" 2>/dev/null || true

used1=$(used_bytes "$STATE1")
used2=$(used_bytes "$STATE2")
{
    echo "$STAMP_VERSION"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n)"
    echo "state1.ext4 used_bytes=$used1 ($((used1 >> 20)) MiB) of $FS_SIZE"
    echo "state2.ext4 used_bytes=$used2 ($((used2 >> 20)) MiB) of $FS_SIZE"
} >"$STAMP"
log "done:"
cat "$STAMP"
