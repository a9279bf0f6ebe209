#!/usr/bin/env bash
# Virtual disks from an image, side by side with qemu-img in one run (see
# docs/benchmarks.md, "Virtual disks"):
#
#   sudo scripts/bench/convert.sh [USED_MIB] [OUTDIR]   (defaults 2048 /var/tmp/holdfast-vbench)
#
# An ext4 volume (USED_MIB * 2 in size) with USED_MIB of files (half incompressible, half
# text) is imaged full. Then, per format (vhdx, qcow2, vhd): `image convert --format F`
# from the image, against what the same takes with qemu-img — restore the image to a raw
# file (`image convert --format raw`), then `qemu-img convert -O F` — and against
# `qemu-img convert` alone from that raw file (the raw copy already at hand). Reported:
# wall time (median of BENCH_RUNS, page cache dropped before each run), the file each
# writes and the bytes it reads. Every output is checked equal to the volume
# (`qemu-img compare`).
#
# Environment: HOLDFAST_AGENT (default: the release build), BENCH_RUNS (default 3),
# BENCH_STRICT=1 (a failed command or check fails the script). Needs root.
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$SCRIPT_DIR/../.."
used=${1:-2048}
OUTDIR=$(mkdir -p "${2:-/var/tmp/holdfast-vbench}" && realpath "${2:-/var/tmp/holdfast-vbench}")
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
command -v qemu-img >/dev/null || need+=(qemu-utils)
((${#need[@]} == 0)) || apt_install "${need[@]}"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}
AGENT=${HOLDFAST_AGENT:-$CARGO_TARGET_DIR/release/holdfast-agent}
[[ -x $AGENT ]] || cargo build --release -p holdfast-agent >&2
AGENT=$(realpath "$AGENT")

VOL=$OUTDIR/volume.img
MNT=$OUTDIR/mnt
LOOP=
cleanup() {
    if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" || true; fi
    if [[ -n $LOOP ]]; then losetup -d "$LOOP" 2>/dev/null || true; fi
}
trap cleanup EXIT
rm -rf "$WORK" "$VOL"
mkdir -p "$WORK" "$MNT"

vol_mib=$((used * 2 + 64))
truncate -s "${vol_mib}M" "$VOL"
mkfs.ext4 -q -F "$VOL"
LOOP=$(losetup -f --show "$VOL")
mount "$LOOP" "$MNT"
fmib=$((used >= 256 ? 8 : 1))
nfiles=$((used / fmib))
log "volume: $vol_mib MiB, $used MiB of files ($nfiles of $fmib MiB)"
for ((i = 0; i < nfiles; i++)); do
    if ((i % 2 == 0)); then
        head -c "$((fmib << 20))" /dev/urandom >"$MNT/f$i"
    else
        { yes "holdfast virtual disk benchmark, line of file $i" || true; } | head -c "$((fmib << 20))" >"$MNT/f$i"
    fi
done
umount "$MNT"
"$AGENT" image create --source "$LOOP" --output "$WORK/vol.hfi" --json >"$WORK/create.json"
losetup -d "$LOOP"
LOOP=

cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# run_counted ID CMD...: run CMD and keep the bytes it read from storage in WORK/ID.read
# (read_bytes of a wrapper shell's /proc/PID/io, which takes in its reaped child's).
run_counted() {
    local id=$1
    shift
    bash -c '"$@"; awk "/^read_bytes/ { print \$2 }" /proc/$$/io >"'"$WORK/$id.read"'"' _ "$@"
}
raw() { run_counted raw "$AGENT" image convert --image "$WORK/vol.hfi" --output "$WORK/vol.raw" --format raw --overwrite; }
measure raw cold raw
qemu_format() { case $1 in vhd) echo vpc ;; *) echo "$1" ;; esac; }
for f in vhdx qcow2 vhd; do
    q=$(qemu_format "$f")
    eval "ours_$f() { run_counted ours_$f \"\$AGENT\" image convert --image \"\$WORK/vol.hfi\" --output \"\$WORK/ours.$f\" --format $f --overwrite; }"
    eval "qemu_$f() { run_counted qemu_$f qemu-img convert -f raw -O $q \"\$WORK/vol.raw\" \"\$WORK/qemu.$f\"; }"
    measure "ours_$f" cold "ours_$f"
    measure "qemu_$f" cold "qemu_$f"
    for who in ours qemu; do
        if ! qemu-img compare -q -f raw -F "$q" "$VOL" "$WORK/$who.$f"; then
            [[ ${BENCH_STRICT:-} == 1 ]] && die "$who.$f is not equal to the volume"
            log "$who.$f is NOT equal to the volume"
        fi
    done
done

{
    echo "| format | \`image convert\` from the image (s) | restore raw + \`qemu-img convert\` (s) | \`qemu-img convert\` from raw alone (s) | ours vs restore + qemu-img | ours vs qemu-img alone | file: ours / qemu-img MiB | read: ours / qemu-img MiB |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for f in vhdx qcow2 vhd; do
        both=$(awk -v a="${T[raw]}" -v b="${T[qemu_$f]}" 'BEGIN { printf "%.2f\n", a + b }')
        echo "| $f | ${T[ours_$f]} | $both | ${T[qemu_$f]} | $(ratio "${T[ours_$f]}" "$both") | $(ratio "${T[ours_$f]}" "${T[qemu_$f]}") | $(mib "$(size_of "$WORK/ours.$f")") / $(mib "$(size_of "$WORK/qemu.$f")") | $(mib "$(cat "$WORK/ours_$f.read")") / $(mib "$(cat "$WORK/qemu_$f.read")") |"
    done
    echo
    echo "ext4 volume $vol_mib MiB with $used MiB of files; image $(mib "$(size_of "$WORK/vol.hfi")") MiB;" \
        "restoring it raw took ${T[raw]} s and read $(mib "$(cat "$WORK/raw.read")") MiB."
    echo "Every output equals the volume (qemu-img compare)."
} | tee "$OUTDIR/results.md"
