//! `dm-snapshot`: device-mapper devices that are not LVM volumes, snapshotted by swapping
//! their table, in the VM (`scripts/vm/`; this machine's kernel has no device-mapper),
//! booted once for the group. Without the VM they skip on a developer's machine and fail
//! under `CI`.

use holdfast_testkit::devices::require_devices;
use holdfast_testkit::vm::{self, read_json};

/// What the VM does: a partitioned disk with a LUKS1 mapping (ext4), a LUKS2 one opened
/// without the keyring (XFS), a plain linear mapping (ext4) and a LUKS2 one opened the
/// default way; a snapshot store directory on another disk's ext4, and a spare device as a
/// store. Each mounted mapping is imaged under writes, restored and checked; a change-tracked
/// incremental from the record of block writes follows one through its table swaps; then the
/// refusals, an overflow, and a run killed while its snapshot exists; then two mappings held
/// together (`hold-together`), released, and held again by a process that is killed.
const GUEST: &str = r#"#!/bin/sh
set -eux
. "$OUT/guest-lvm.sh"
mkdir -p /tmp/m/plain /tmp/m/luks /tmp/m/xluks /tmp/m/keyring /tmp/m/restored /tmp/storefs
truncate -s 520M /tmp/disk.img
DISK=$(losetup -f --show -P /tmp/disk.img)
printf 'label: gpt\n,64M\n,330M\n,64M\n,40M\n' | sfdisk -q "$DISK"
partx -u "$DISK" || true
for p in 1 2 3 4; do [ -b "${DISK}p$p" ] || { echo "no ${DISK}p$p"; exit 1; }; done
printf pw | cryptsetup luksFormat -q --type luks1 --pbkdf-force-iterations 1000 --key-file - "${DISK}p1"
printf pw | cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - "${DISK}p2"
printf pw | cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - "${DISK}p4"
printf pw | cryptsetup open --key-file - "${DISK}p1" hfluks
printf pw | cryptsetup open --disable-keyring --key-file - "${DISK}p2" hfxluks
printf pw | cryptsetup open --key-file - "${DISK}p4" hfkeyring
echo "0 $(blockdev --getsz "${DISK}p3") linear $(stat -L -c %Hr:%Lr "${DISK}p3") 0" | dmsetup create hfplain
for m in plain luks keyring; do mkfs.ext4 -q /dev/mapper/hf$m; done
mkfs.xfs -q /dev/mapper/hfxluks
for m in plain luks xluks keyring; do
    mount /dev/mapper/hf$m /tmp/m/$m
    head -c 3000000 /dev/urandom > /tmp/m/$m/data.bin
    sha256sum /tmp/m/$m/data.bin | cut -d' ' -f1 > "$OUT/$m.sum"
    dmsetup table --showkeys hf$m > "/tmp/$m.table"
done
# A filesystem on another disk for the store, and a spare device.
truncate -s 200M /tmp/store.img
mkfs.ext4 -q /tmp/store.img
mount -o loop /tmp/store.img /tmp/storefs
mkdir /tmp/storefs/snaps
truncate -s 64M /tmp/cow.img
COWDEV=$(losetup -f --show /tmp/cow.img)
export HOLDFAST_SNAPSHOT_STORE=/tmp/storefs/snaps

"$AGENT" inventory --json > "$OUT/inventory.json"

# Each mounted mapping, by default, under writes: from a snapshot, swapped back after.
for m in plain luks xluks; do
    ( while [ ! -e /tmp/stop-$m ]; do dd if=/dev/urandom of=/tmp/m/$m/churn bs=1M count=4 conv=notrunc,fsync 2>/dev/null; done ) &
    WRITER=$!
    sleep 1
    store=/tmp/storefs/snaps
    [ $m = xluks ] && store=$COWDEV
    HOLDFAST_SNAPSHOT_STORE=$store "$AGENT" image create --source /dev/mapper/hf$m --output /tmp/$m.hfi --json > "$OUT/$m.json"
    touch /tmp/stop-$m
    wait $WRITER
    dmsetup table --showkeys hf$m | cmp - /tmp/$m.table && echo same > "$OUT/$m.table-after"
    truncate -s "$(blockdev --getsize64 /dev/mapper/hf$m)" /tmp/$m-restored.img
    "$AGENT" image restore --image /tmp/$m.hfi --target /tmp/$m-restored.img --json > /dev/null
    case $m in
    x*)
        mount -o loop,nouuid /tmp/$m-restored.img /tmp/m/restored
        sha256sum /tmp/m/restored/data.bin | cut -d' ' -f1 > "$OUT/$m-restored.sum"
        umount /tmp/m/restored
        xfs_repair -n /tmp/$m-restored.img
        ;;
    *)
        e2fsck -fy /tmp/$m-restored.img || [ $? -eq 1 ]
        e2fsck -fn /tmp/$m-restored.img
        mount -o ro,loop /tmp/$m-restored.img /tmp/m/restored
        sha256sum /tmp/m/restored/data.bin | cut -d' ' -f1 > "$OUT/$m-restored.sum"
        umount /tmp/m/restored
        ;;
    esac
done
dmsetup ls > "$OUT/dm-after.txt"
ls -A /tmp/storefs/snaps > "$OUT/store-after.txt"

# The record of block writes on a device-mapper device whose table is swapped for each
# snapshot: the full image cuts it; the incremental reads what was written after, under
# writes, and holds the file written in between.
( while [ ! -e /tmp/stop-wl ]; do dd if=/dev/urandom of=/tmp/m/plain/churn bs=64k count=4 conv=notrunc,fsync 2>/dev/null; done ) &
WRITER=$!
"$AGENT" image create --source /dev/mapper/hfplain --output /tmp/wl-full.hfi --write-log /tmp/wl --json > "$OUT/wl-full.json"
head -c 1000000 /dev/urandom > /tmp/m/plain/after.bin
sha256sum /tmp/m/plain/after.bin | cut -d' ' -f1 > "$OUT/wl-after.sum"
"$AGENT" image create --source /dev/mapper/hfplain --output /tmp/wl-inc.hfi --incremental --base /tmp/wl-full.hfi --write-log /tmp/wl --json > "$OUT/wl-inc.json"
touch /tmp/stop-wl
wait $WRITER
truncate -s "$(blockdev --getsize64 /dev/mapper/hfplain)" /tmp/wl-restored.img
"$AGENT" image restore --image /tmp/wl-inc.hfi --target /tmp/wl-restored.img --json > /dev/null
e2fsck -fy /tmp/wl-restored.img || [ $? -eq 1 ]
e2fsck -fn /tmp/wl-restored.img
mount -o ro,loop /tmp/wl-restored.img /tmp/m/restored
sha256sum /tmp/m/restored/after.bin | cut -d' ' -f1 > "$OUT/wl-restored.sum"
umount /tmp/m/restored
"$AGENT" write-log stop --dir /tmp/wl
ls /sys/kernel/tracing/instances > "$OUT/wl-instances.txt"

# The container under a mounted mapping is in use too: its filesystem is frozen, and the
# ciphertext imaged whole, saying how to do better.
"$AGENT" image create --source "${DISK}p1" --output /tmp/container.hfi --json > "$OUT/container.json"

# A LUKS2 mapping opened the default way: its key is only in the kernel, so it is frozen;
# asked for a snapshot, refused with the reason.
"$AGENT" image create --source /dev/mapper/hfkeyring --output /tmp/keyring.hfi --json > "$OUT/keyring.json"
set +e
"$AGENT" image create --source /dev/mapper/hfkeyring --output /tmp/keyring2.hfi --consistency dm-snapshot > "$OUT/keyring-forced.out" 2>&1
echo $? > "$OUT/keyring-forced.status"
set -e
# A store on the volume itself: writes to it would wait on themselves; frozen instead.
mkdir -p /tmp/m/plain/snaps
HOLDFAST_SNAPSHOT_STORE=/tmp/m/plain/snaps "$AGENT" image create --source /dev/mapper/hfplain --output /tmp/self.hfi --json > "$OUT/self.json"
rmdir /tmp/m/plain/snaps

# A store too small for the writes meanwhile: the run fails, leaves no image, and the
# mapping gets its table back.
( while [ ! -e /tmp/stop-small ]; do dd if=/dev/zero of=/tmp/m/luks/churn bs=1M count=24 conv=notrunc oflag=direct 2>/dev/null; done ) &
WRITER=$!
sleep 1
set +e
"$AGENT" image create --source /dev/mapper/hfluks --output /tmp/small.hfi --snapshot-size 1 > "$OUT/small.out" 2>&1
echo $? > "$OUT/small.status"
set -e
touch /tmp/stop-small
wait $WRITER
[ ! -e /tmp/small.hfi ] && echo absent > "$OUT/small.image"
dmsetup table --showkeys hfluks | cmp - /tmp/luks.table && echo same > "$OUT/small.table-after"
dmsetup ls > "$OUT/dm-small.txt"

# A run killed while its snapshot exists: the mapping stays usable (it is the origin), and
# the next run swaps its table back and removes what was left before it snapshots.
head -c 40000000 /dev/urandom > /tmp/m/plain/big.bin
sync
"$AGENT" image create --source /dev/mapper/hfplain --output /tmp/killed.hfi > /dev/null 2>&1 &
VICTIM=$!
until dmsetup table hfplain | grep -q snapshot-origin; do
    kill -0 $VICTIM 2>/dev/null || { echo "imaging ended before its snapshot was seen"; exit 1; }
done
kill -STOP $VICTIM
kill -KILL $VICTIM
wait $VICTIM || true
dmsetup table hfplain > "$OUT/killed-table.txt"
dmsetup ls > "$OUT/dm-killed.txt"
dmsetup info -c --noheadings -o uuid "holdfast-snap-$VICTIM-real" > "$OUT/killed-uuid.txt"
ls -A /tmp/storefs/snaps > "$OUT/store-killed.txt"
echo "written while the origin" > /tmp/m/plain/after-kill.txt
sync
"$AGENT" image create --source /dev/mapper/hfplain --output /tmp/next.hfi --json > "$OUT/next.json"
dmsetup table --showkeys hfplain | cmp - /tmp/plain.table && echo same > "$OUT/next.table-after"
dmsetup ls > "$OUT/dm-end.txt"
ls -A /tmp/storefs/snaps > "$OUT/store-end.txt"
ls /run > "$OUT/run-end.txt"

# Two mounted mappings held together (as a job with several sources holds them): both are
# origins at once; `release 0` gives the first its table back, the end of input the second.
mkfifo /tmp/hold.in
"$AGENT" hold-together --source /dev/mapper/hfplain --source /dev/mapper/hfxluks --source "${DISK}p3" < /tmp/hold.in > "$OUT/hold.json" 2> "$OUT/hold.err" &
HOLDER=$!
exec 9> /tmp/hold.in
until [ -s "$OUT/hold.json" ]; do kill -0 $HOLDER || { cat "$OUT/hold.err"; exit 1; }; sleep 0.1; done
{ dmsetup table hfplain; dmsetup table hfxluks; } > "$OUT/held-tables.txt"
echo "release 0" >&9
until dmsetup table --showkeys hfplain | cmp -s - /tmp/plain.table; do kill -0 $HOLDER || exit 1; sleep 0.1; done
dmsetup table hfxluks > "$OUT/held-second.txt"
exec 9>&-
wait $HOLDER
dmsetup table --showkeys hfxluks | cmp - /tmp/xluks.table && echo same > "$OUT/hold.xluks-after"
dmsetup ls > "$OUT/dm-hold-end.txt"
ls -A /tmp/storefs/snaps > "$OUT/store-hold-end.txt"

# The holder killed while it holds them: the next run swaps both back and removes both.
"$AGENT" hold-together --source /dev/mapper/hfplain --source /dev/mapper/hfxluks < /tmp/hold.in > "$OUT/hold-killed.json" 2> "$OUT/hold-killed.err" &
HOLDER=$!
exec 9> /tmp/hold.in
until [ -s "$OUT/hold-killed.json" ]; do kill -0 $HOLDER || { cat "$OUT/hold-killed.err"; exit 1; }; sleep 0.1; done
kill -KILL $HOLDER
wait $HOLDER || true
exec 9>&-
dmsetup ls > "$OUT/dm-hold-killed.txt"
"$AGENT" image create --source /dev/mapper/hfplain --output /tmp/after-hold.hfi --json > "$OUT/after-hold.json"
dmsetup table --showkeys hfplain | cmp - /tmp/plain.table && echo same > "$OUT/hold-killed.plain-after"
dmsetup table --showkeys hfxluks | cmp - /tmp/xluks.table && echo same > "$OUT/hold-killed.xluks-after"
dmsetup ls > "$OUT/dm-hold-killed-end.txt"
ls -A /tmp/storefs/snaps > "$OUT/store-hold-killed-end.txt"

# A mapping on another mapping, both sources: the lower one is left out (suspended first, it
# would hold the upper one's flush for ever), the upper one held with hfplain.
truncate -s 48M /tmp/low.img
LOW=$(losetup -f --show /tmp/low.img)
echo "0 $(blockdev --getsz "$LOW") linear $(stat -L -c %Hr:%Lr "$LOW") 0" | dmsetup create hflow
echo "0 $(blockdev --getsz /dev/mapper/hflow) linear $(stat -L -c %Hr:%Lr /dev/mapper/hflow) 0" | dmsetup create hfhigh
mkfs.ext4 -q /dev/mapper/hfhigh
mkdir -p /tmp/m/high
mount /dev/mapper/hfhigh /tmp/m/high
echo data > /tmp/m/high/file
"$AGENT" hold-together --source /dev/mapper/hflow --source /dev/mapper/hfhigh --source /dev/mapper/hfplain < /dev/null > "$OUT/hold-stacked.json"
dmsetup ls > "$OUT/dm-stacked-end.txt"
"#;

#[test]
fn device_mapper_devices_are_snapshotted_by_swapping_their_table_in_a_vm() {
    if !require_devices("dm_snapshot_in_a_vm") {
        return;
    }
    let Some(t) = vm::run_agent_script("dm_snapshot_in_a_vm", GUEST) else {
        return;
    };
    let out = t.path();
    let text = |n: &str| std::fs::read_to_string(out.join(n)).unwrap_or_default();

    // The inventory offers a device-mapper snapshot where one can be had.
    let inv = read_json(out, "inventory.json");
    let methods = |mapping: &str| {
        let disk = inv["disks"]
            .as_array()
            .expect("disks")
            .iter()
            .find(|d| d["backing"]["name"] == mapping)
            .unwrap_or_else(|| panic!("no {mapping} in {inv}"));
        inv["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == disk["name"])
            .unwrap_or_else(|| panic!("no volume of {mapping}"))["consistency"]
            .clone()
    };
    let snapshot = serde_json::json!(["dm-snapshot", "freeze", "lock", "live"]);
    for m in ["hfplain", "hfluks", "hfxluks"] {
        assert_eq!(methods(m), snapshot, "{m}");
    }
    assert_eq!(
        methods("hfkeyring"),
        serde_json::json!(["freeze", "lock", "live"])
    );

    // Imaged under writes from a snapshot; each restores to a clean filesystem with the
    // file written before; the mapping has its own table back, nothing of ours is left.
    for (m, store) in [
        ("plain", "a file in /tmp/storefs/snaps"),
        ("luks", "a file in /tmp/storefs/snaps"),
        ("xluks", "the device /dev/loop"),
    ] {
        let made = read_json(out, &format!("{m}.json"));
        let how = made["consistency"].as_str().unwrap_or_default();
        assert!(
            how.starts_with(&format!(
                "dm-snapshot: read from a snapshot of the device-mapper device hf{m} with "
            )) && how.contains(store)
                && how.contains("% of it was filled by writes while imaging"),
            "{made}"
        );
        assert_eq!(made["coverage"], "used-sector", "{made}");
        assert_eq!(made["warnings"], serde_json::json!([]), "{made}");
        assert_eq!(
            text(&format!("{m}-restored.sum")),
            text(&format!("{m}.sum")),
            "{m}"
        );
        assert_eq!(text(&format!("{m}.table-after")).trim(), "same", "{m}");
    }
    // The record of block writes follows a mapping through its table swaps: only what was
    // written since the full image is read (the 1 MB file, the 256 KiB rewritten over and
    // over, the journal and metadata), not the rest, and the restore holds the file.
    let inc = read_json(out, "wl-inc.json");
    assert_eq!(
        inc["changes"]["pass"], "block writes traced by the agent",
        "{inc}"
    );
    let hashed = inc["changes"]["hashed_bytes"].as_u64().expect("hashed");
    let full = read_json(out, "wl-full.json")["read_bytes"]
        .as_u64()
        .expect("read");
    assert!(hashed * 2 < full, "read {hashed} of {full} bytes: {inc}");
    assert_eq!(text("wl-restored.sum"), text("wl-after.sum"));
    assert_eq!(
        text("wl-instances.txt").trim(),
        "",
        "write-log stop left a trace"
    );
    let left = text("dm-after.txt");
    assert!(!left.contains("holdfast-snap"), "{left}");
    assert_eq!(text("store-after.txt").trim(), "", "the store is emptied");

    // A LUKS container whose mapping is mounted: frozen (its filesystem is in use), and
    // imaged whole with the reason.
    let container = read_json(out, "container.json");
    assert!(
        container["consistency"]
            .as_str()
            .is_some_and(|c| c.starts_with("frozen:")),
        "{container}"
    );
    assert_eq!(container["coverage"], "forensic", "{container}");
    assert!(
        container["warnings"].as_array().is_some_and(|w| w
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("LUKS container")))),
        "{container}"
    );

    // No snapshot of a mapping whose key only the kernel holds: frozen, saying why; forced,
    // refused with what to do.
    let keyring = read_json(out, "keyring.json");
    assert!(
        keyring["consistency"].as_str().is_some_and(|c| c.starts_with("frozen:")
            && c.contains("no snapshot, since the key of the LUKS mapping hfkeyring is kept only inside the kernel")),
        "{keyring}"
    );
    let forced = text("keyring-forced.out");
    assert_eq!(text("keyring-forced.status").trim(), "5", "{forced}");
    assert!(forced.contains("--disable-keyring"), "{forced}");
    // Nor with the store on the volume itself.
    let own = read_json(out, "self.json");
    assert!(
        own["consistency"]
            .as_str()
            .is_some_and(|c| c.starts_with("frozen:")
                && c.contains(
                    "the snapshot store /tmp/m/plain/snaps is on /dev/mapper/hfplain itself"
                )),
        "{own}"
    );

    // Overflowed: failed with the reason, no image, the table back, nothing left.
    let said = text("small.out");
    assert_ne!(text("small.status").trim(), "0", "{said}");
    assert!(said.contains("overflowed"), "{said}");
    assert_eq!(text("small.image").trim(), "absent", "{said}");
    assert_eq!(text("small.table-after").trim(), "same", "{said}");
    assert!(
        !text("dm-small.txt").contains("holdfast-snap"),
        "{}",
        text("dm-small.txt")
    );

    // Killed: left as an origin with its snapshot and store file, and cleaned up by the
    // next run, which then images the volume from a snapshot of its own.
    let killed = text("killed-table.txt");
    assert!(killed.contains("snapshot-origin"), "{killed}");
    assert!(
        text("dm-killed.txt").contains("-real"),
        "{}",
        text("dm-killed.txt")
    );
    assert!(
        text("killed-uuid.txt").starts_with("HOLDFAST-holdfast-snap-"),
        "our devices say whose they are: {}",
        text("killed-uuid.txt")
    );
    assert!(
        text("store-killed.txt").contains(".cow"),
        "{}",
        text("store-killed.txt")
    );
    let next = read_json(out, "next.json");
    assert!(
        next["consistency"]
            .as_str()
            .is_some_and(|c| c.starts_with("dm-snapshot:")),
        "{next}"
    );
    assert_eq!(text("next.table-after").trim(), "same");
    let left = text("dm-end.txt") + &text("store-end.txt") + &text("run-end.txt");
    assert!(!left.contains("holdfast-snap"), "{left}");

    // Held together: both origins at once, each snapshot of its own, the unmounted
    // partition named with the reason; released one by one, then all gone.
    let hold = read_json(out, "hold.json");
    let held = hold["held"].as_array().expect("held");
    assert_eq!(held.len(), 2, "{hold}");
    for (h, other) in held
        .iter()
        .zip(["/dev/mapper/hfxluks", "/dev/mapper/hfplain"])
    {
        let how = h["description"].as_str().unwrap_or_default();
        assert!(
            how.starts_with("dm-snapshot:")
                && how.ends_with(&format!("taken at one instant together with {other}")),
            "{hold}"
        );
    }
    assert_ne!(held[0]["snapshot"], held[1]["snapshot"], "{hold}");
    assert_eq!(
        hold["not_held"][0]["source"]
            .as_str()
            .map(|s| s.ends_with("p3")),
        Some(true),
        "{hold}"
    );
    assert!(
        hold["not_held"][0]["why"]
            .as_str()
            .is_some_and(|w| w.contains("not a device-mapper device")),
        "{hold}"
    );
    let tables = text("held-tables.txt");
    assert_eq!(tables.matches("snapshot-origin").count(), 2, "{tables}");
    assert!(text("held-second.txt").contains("snapshot-origin"));
    assert_eq!(text("hold.xluks-after").trim(), "same");
    let left = text("dm-hold-end.txt") + &text("store-hold-end.txt");
    assert!(!left.contains("holdfast-snap"), "{left}");

    // Killed while holding: both left as origins, both given back by the next run.
    assert_eq!(
        text("dm-hold-killed.txt").matches("-real").count(),
        2,
        "{}",
        text("dm-hold-killed.txt")
    );
    assert_eq!(text("hold-killed.plain-after").trim(), "same");
    assert_eq!(text("hold-killed.xluks-after").trim(), "same");
    let left = text("dm-hold-killed-end.txt") + &text("store-hold-killed-end.txt");
    assert!(!left.contains("holdfast-snap"), "{left}");

    // Stacked: the upper mapping held with hfplain, the one under it on its own.
    let stacked = read_json(out, "hold-stacked.json");
    let held: Vec<&str> = stacked["held"]
        .as_array()
        .expect("held")
        .iter()
        .filter_map(|h| h["source"].as_str())
        .collect();
    assert_eq!(
        held,
        ["/dev/mapper/hfhigh", "/dev/mapper/hfplain"],
        "{stacked}"
    );
    assert_eq!(
        stacked["not_held"][0]["source"], "/dev/mapper/hflow",
        "{stacked}"
    );
    assert_eq!(
        stacked["not_held"][0]["why"], "another source of the run is built on it",
        "{stacked}"
    );
    assert!(!text("dm-stacked-end.txt").contains("holdfast-snap"));
}
