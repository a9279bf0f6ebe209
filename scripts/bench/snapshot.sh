#!/usr/bin/env bash
# What a snapshot costs (docs/benchmarks.md): imaging an ext4 thin LV with USED_MIB of files
# unmounted vs mounted (read from a thin snapshot), and how fast a writer (`dd`, direct I/O)
# writes to a volume with no snapshot, a thin snapshot and a classic one. Runs in the test VM
# (scripts/vm/; device-mapper is not in this machine's kernel), so times are qemu's without
# KVM: compare the ratios, not the figures.
#
#   scripts/bench/snapshot.sh [USED_MIB] [OUTDIR]      (defaults 2048 /var/tmp/holdfast-sbench)
# Environment: HOLDFAST_AGENT (default: the release build), BENCH_RUNS (default 3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
used=${1:-2048}
out=$(mkdir -p "${2:-/var/tmp/holdfast-sbench}" && realpath "${2:-/var/tmp/holdfast-sbench}")
runs=${BENCH_RUNS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}
agent=${HOLDFAST_AGENT:-$CARGO_TARGET_DIR/release/holdfast-agent}
if [ ! -x "$agent" ]; then
    cargo build --release -p holdfast-agent >&2
fi
agent=$(realpath "$agent")
scripts/vm/setup.sh >&2
rm -f "$out/results.md" "$out/timings" "$out/pv.img" "$out"/*.hfi
cp scripts/vm/guest-lvm.sh "$out/"
lv_mib=$((used * 2 + 256))
dd_mib=$(( used / 8 > 64 ? 64 : (used / 8 > 16 ? used / 8 : 16) ))
cat > "$out/guest.sh" <<GUEST
set -eu
AGENT='$agent' OUT='$out' USED=$used LV=$lv_mib DD=$dd_mib RUNS=$runs
GUEST
cat >> "$out/guest.sh" <<'GUEST'
. "$OUT/guest-lvm.sh"
mkdir -p /tmp/m
# The volume group and the images on the host's disk (the VM's /tmp is in its memory).
truncate -s $((LV * 3 + 1024))M "$OUT/pv.img"
PV=$(losetup -f --show "$OUT/pv.img")
pvcreate -q "$PV" >/dev/null
vgcreate -q hb "$PV" >/dev/null
lvcreate -q -y -L $((LV + 128))M -T hb/pool >/dev/null
lvcreate -q -y -V ${LV}M -T hb/pool -n data >/dev/null
lvcreate -q -y -L $((DD * 2 + 64))M -n plain hb >/dev/null
mkfs.ext4 -q /dev/hb/data
mkfs.ext4 -q /dev/hb/plain
mount /dev/hb/data /tmp/m
# Files of 8 MiB: half random (incompressible), half text-like (compressible).
i=0
while [ $((i * 8)) -lt "$USED" ]; do
    if [ $((i % 2)) -eq 0 ]; then
        head -c 8388608 /dev/urandom > /tmp/m/f$i
    else
        yes "holdfast snapshot benchmark line $i" | head -c 8388608 > /tmp/m/f$i
    fi
    i=$((i + 1))
done
sync
secs() { date +%s.%N; }
timed() { # timed LABEL COMMAND...: one line "LABEL seconds read_bytes"
    label=$1; shift
    sync; echo 3 > /proc/sys/vm/drop_caches
    t0=$(secs)
    "$@" > /tmp/out.json
    t1=$(secs)
    read_bytes=$(sed -n 's/.*"read_bytes": \([0-9]*\).*/\1/p' /tmp/out.json | head -1)
    echo "$label $(awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }') $read_bytes" >> "$OUT/timings"
}
for r in $(seq "$RUNS"); do
    umount /tmp/m
    timed unmounted "$AGENT" image create --source /dev/hb/data --output "$OUT/u.hfi" --overwrite --json
    mount /dev/hb/data /tmp/m
    timed thin-snapshot "$AGENT" image create --source /dev/hb/data --output "$OUT/s.hfi" --overwrite --json
    rm -f "$OUT/u.hfi" "$OUT/s.hfi"
done
# A writer's speed: direct writes over a file that exists (the blocks a snapshot shares).
mkdir -p /tmp/p
mount /dev/hb/plain /tmp/p
dd if=/dev/urandom of=/tmp/p/w bs=1M count="$DD" conv=fsync status=none
dd if=/dev/urandom of=/tmp/m/w bs=1M count="$DD" conv=fsync status=none
write() { # write LABEL FILE
    sync
    t0=$(secs)
    dd if=/dev/zero of="$2" bs=1M count="$DD" conv=notrunc,fsync oflag=direct status=none
    t1=$(secs)
    echo "$1 $(awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }') $((DD * 1048576))" >> "$OUT/timings"
}
for r in $(seq "$RUNS"); do
    write write-thin-none /tmp/m/w
    lvcreate -q -y -s -k n -n bsnap hb/data >/dev/null
    write write-thin-snapshot /tmp/m/w
    lvremove -q -f hb/bsnap >/dev/null
    write write-thick-none /tmp/p/w
    lvcreate -q -y -s -L $((DD + 32))M -n bsnap hb/plain >/dev/null
    write write-thick-snapshot /tmp/p/w
    lvremove -q -f hb/bsnap >/dev/null
done
umount /tmp/m /tmp/p
vgchange -q -an hb >/dev/null
losetup -d "$PV"
rm -f "$OUT/pv.img"
GUEST
status=0
scripts/vm/run.sh "$out/guest.sh" "$out" "$(dirname "$agent")" >&2 || status=$?
rm -f "$out/pv.img" "$out"/*.hfi
if [ "$status" -ne 0 ]; then
    cat "$out/script.log" >&2
    exit 1
fi
median_of() { awk -v k="$1" '$1 == k { print $2 }' "$out/timings" | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f\n", v[int((NR + 1) / 2)] }'; }
read_of() { awk -v k="$1" '$1 == k { print $3; exit }' "$out/timings"; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
mbps() { awk -v s="$1" -v b="$2" 'BEGIN { if (s > 0) printf "%.1f", b / s / 1048576; else print "n/a" }'; }
u=$(median_of unmounted)
s=$(median_of thin-snapshot)
{
    echo "Snapshot cost: ext4 thin LV with $used MiB of files, median of $runs runs, in the test VM (qemu without KVM)"
    echo
    echo "| imaging | seconds | bytes read | ratio to unmounted |"
    echo "| --- | --- | --- | --- |"
    echo "| unmounted | $u | $(read_of unmounted) | 1.00 |"
    echo "| mounted, from a thin snapshot | $s | $(read_of thin-snapshot) | $(div "$s" "$u") |"
    echo
    echo "| writer (dd, direct, $dd_mib MiB over an existing file) | MiB/s | time, relative to no snapshot |"
    echo "| --- | --- | --- |"
    for kind in thin thick; do
        n=$(median_of write-$kind-none)
        w=$(median_of write-$kind-snapshot)
        echo "| $kind volume, no snapshot | $(mbps "$n" $((dd_mib * 1048576))) | 1.00 |"
        echo "| $kind volume, while a snapshot exists | $(mbps "$w" $((dd_mib * 1048576))) | $(div "$w" "$n") |"
    done
} | tee "$out/results.md"
