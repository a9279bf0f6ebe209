#!/usr/bin/env bash
# What a change-tracked incremental of an LVM thin volume reads, against what changed
# (docs/benchmarks.md, "Change-tracked incrementals"): an ext4 thin volume with USED_MIB of
# files is imaged full (from a thin snapshot, kept for the next run), about 5 % of its data is
# changed through the mount, and it is imaged incremental three ways: from the kept
# snapshot's block mappings (`thin_delta`), from the filesystem's inode change times (the
# kept snapshot removed first), and hashing every block. The changed chunks are counted by
# `thin_delta` itself, on a snapshot taken by this script just before. Runs in the test VM
# (device-mapper is not in this machine's kernel): bytes are the figures, times are qemu's
# without KVM.
#
#   scripts/bench/thin.sh [USED_MIB] [OUTDIR]      (defaults 1024 /var/tmp/holdfast-thbench)
# Environment: HOLDFAST_AGENT (default: the release build), BENCH_STRICT=1 (the tracked
# incremental must restore to the volume's files, and it and the filesystem's change source
# must each read less than hashing every block).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
used=${1:-1024}
out=$(mkdir -p "${2:-/var/tmp/holdfast-thbench}" && realpath "${2:-/var/tmp/holdfast-thbench}")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}
agent=${HOLDFAST_AGENT:-$CARGO_TARGET_DIR/release/holdfast-agent}
if [ ! -x "$agent" ]; then
    cargo build --release -p holdfast-agent >&2
fi
agent=$(realpath "$agent")
scripts/vm/setup.sh >&2
rm -f "$out/results.md" "$out/figures" "$out/pv.img" "$out"/*.json
cp scripts/vm/guest-lvm.sh "$out/"
lv_mib=$((used * 2 + 128))
cat > "$out/guest.sh" <<GUEST
set -eu
AGENT='$agent' OUT='$out' USED=$used LV=$lv_mib
GUEST
cat >> "$out/guest.sh" <<'GUEST'
. "$OUT/guest-lvm.sh"
mkdir -p /tmp/m /tmp/img /tmp/c
truncate -s $((LV * 3 + 512))M "$OUT/pv.img"
PV=$(losetup -f --show "$OUT/pv.img")
pvcreate -q "$PV" >/dev/null
vgcreate -q hb "$PV" >/dev/null
lvcreate -q -y -L $((LV * 2 + 256))M -T hb/pool >/dev/null
lvcreate -q -y -V ${LV}M -T hb/pool -n data >/dev/null
mkfs.ext4 -q /dev/hb/data
mount /dev/hb/data /tmp/m
# Files of 8 MiB (1 MiB on small volumes): half random, half text.
f=$((USED >= 256 ? 8 : 1))
n=$((USED / f))
i=0
while [ "$i" -lt "$n" ]; do
    if [ $((i % 2)) -eq 0 ]; then
        head -c $((f << 20)) /dev/urandom > /tmp/m/f$i
    else
        { yes "holdfast thin benchmark line $i" || true; } | head -c $((f << 20)) > /tmp/m/f$i
    fi
    i=$((i + 1))
done
sync
"$AGENT" image create --source /dev/hb/data --output /tmp/img/full.hfi --json > "$OUT/full.json"
# About 5 %: 1 MiB rewritten in place in every 7th file, new files, every 23rd file deleted.
budget=$((USED / 20 > 1 ? USED / 20 : 1))
i=0; k=0
while [ "$i" -lt "$n" ] && [ "$k" -lt $((budget / 2 + 1)) ]; do
    head -c 1048576 /dev/urandom | dd of=/tmp/m/f$i bs=1M seek=$((f > 1 ? 1 : 0)) conv=notrunc status=none
    i=$((i + 7)); k=$((k + 1))
done
i=0
while [ "$i" -lt $((budget / 2 + 1)) ]; do head -c 1048576 /dev/urandom > /tmp/m/new$i; i=$((i + 1)); done
i=5
while [ "$i" -lt "$n" ]; do rm -f /tmp/m/f$i; i=$((i + 23)); done
sync
# thin_delta's own count, on a snapshot of this instant.
lvcreate -q -y -s -k n -n probe hb/data >/dev/null
base_id=$(lvs --noheadings -o thin_id hb/holdfast-base-data | tr -d ' ')
probe_id=$(lvs --noheadings -o thin_id hb/probe | tr -d ' ')
dmsetup message hb-pool-tpool 0 reserve_metadata_snap
thin_delta -m --snap1 "$base_id" --snap2 "$probe_id" /dev/mapper/hb-pool_tmeta > "$OUT/delta.xml"
dmsetup message hb-pool-tpool 0 release_metadata_snap
lvremove -q -f hb/probe >/dev/null
cp "$OUT/delta.xml" /tmp/delta.xml
"$AGENT" image create --source /dev/hb/data --output /tmp/img/thin.hfi --incremental --base /tmp/img/full.hfi --json > "$OUT/thin.json"
# The same change found by the filesystem: the base's kept snapshot gone, the base re-made.
lvremove -q -f hb/holdfast-base-data >/dev/null
"$AGENT" image create --source /dev/hb/data --output /tmp/img/hash.hfi --incremental --base /tmp/img/full.hfi --no-change-tracking --no-keep-snapshot --json > "$OUT/hash.json"
"$AGENT" image create --source /dev/hb/data --output /tmp/img/ctime.hfi --incremental --base /tmp/img/full.hfi --change-margin 1 --no-keep-snapshot --json > "$OUT/ctime.json"
# The thin-tracked incremental restores to the volume's files.
(cd /tmp/m && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum) > /tmp/want
# Into a thin volume of the pool: the VM's /tmp is in its memory.
lvcreate -q -y -V ${LV}M -T hb/pool -n restored >/dev/null 2>&1
"$AGENT" image restore --image /tmp/img/thin.hfi --target /dev/hb/restored > /dev/null
e2fsck -fy /dev/hb/restored > /dev/null 2>&1 || [ $? -eq 1 ]
e2fsck -fn /dev/hb/restored > /dev/null 2>&1 && echo clean > "$OUT/fsck" || echo errors > "$OUT/fsck"
mount -o ro /dev/hb/restored /tmp/c
(cd /tmp/c && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum) > /tmp/got
umount /tmp/c
cmp -s /tmp/want /tmp/got && echo equal > "$OUT/files" || echo differ > "$OUT/files"
umount /tmp/m
vgchange -q -an hb >/dev/null
losetup -d "$PV"
rm -f "$OUT/pv.img"
GUEST
status=0
scripts/vm/run.sh "$out/guest.sh" "$out" "$(dirname "$agent")" >&2 || status=$?
rm -f "$out/pv.img"
if [ "$status" -ne 0 ]; then
    cat "$out/script.log" >&2
    exit 1
fi
field() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v=v[k]
print(v)' "$out/$1" "$2"; }
# Changed chunks: thin_delta's different, left_only and right_only ranges, in bytes.
changed=$(python3 - "$out/delta.xml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
block = int(re.search(r'data_block_size="(\d+)"', text).group(1)) * 512
print(sum(int(l) * block for t, l in re.findall(r'<(different|left_only|right_only) begin="\d+" length="(\d+)"', text)))
PY
)
mib() { awk -v a="$1" 'BEGIN { printf "%.1f", a / 1048576 }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
full=$(field full.json read_bytes)
thin=$(field thin.json read_bytes)
ctime=$(field ctime.json read_bytes)
hash=$(field hash.json read_bytes)
pass=$(field thin.json changes.pass)
[ "$pass" = "LVM thin snapshot mappings" ] || { echo "thin.sh: the incremental ran as: $pass" >&2; exit 1; }
{
    echo "Change-tracked incrementals of an ext4 LVM thin volume with $used MiB of files, in the test VM"
    echo
    echo "| incremental | change source | read from the volume MiB | vs changed chunks | % of the full image's read |"
    echo "| --- | --- | ---: | ---: | ---: |"
    echo "| thin snapshot mappings (default) | \`thin_delta\` | $(mib "$thin") | $(div "$thin" "$changed") | $(awk -v a="$thin" -v b="$full" 'BEGIN { printf "%.1f", 100 * a / b }') |"
    echo "| filesystem (snapshot not kept) | ext4 inode change times | $(mib "$ctime") | $(div "$ctime" "$changed") | $(awk -v a="$ctime" -v b="$full" 'BEGIN { printf "%.1f", 100 * a / b }') |"
    echo "| every block hashed | none | $(mib "$hash") | $(div "$hash" "$changed") | $(awk -v a="$hash" -v b="$full" 'BEGIN { printf "%.1f", 100 * a / b }') |"
    echo
    echo "Changed chunks (thin_delta on a snapshot of the same instant): $(mib "$changed") MiB; the full image read $(mib "$full") MiB."
    echo "The thin-tracked incremental restores with e2fsck $(cat "$out/fsck") and files $(cat "$out/files") to the volume's."
} | tee "$out/results.md"
if [ "${BENCH_STRICT:-}" = 1 ]; then
    [ "$(cat "$out/fsck")" = clean ] && [ "$(cat "$out/files")" = equal ] || { echo "thin.sh: the restore is not the volume" >&2; exit 1; }
    # At a tiny size the snapshot's own journal commit is a large share: the goal (at most
    # 1.2 × the changed chunks) is checked on the full-size run; here, that both change
    # sources read less than hashing every block. (Not that thin reads less than ext4: ext4
    # skips its emptied journal, which thin_delta sees written, and at this size that
    # journal is most of the change.)
    awk -v a="$thin" -v b="$ctime" -v c="$hash" 'BEGIN { exit !(a < c && b < c) }' || { echo "thin.sh: read $thin, $ctime and $hash bytes" >&2; exit 1; }
fi
