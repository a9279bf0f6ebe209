//! LVM and LUKS volumes, which need device-mapper: this machine's kernel has none, so these
//! checks run inside a VM with Debian's kernel (`scripts/vm/`), booted once for the group.
//! Without the VM they skip on a developer's machine and fail under `CI`.

use holdfast_testkit::devices::require_devices;
use holdfast_testkit::vm::{self, read_json};
use serde_json::Value;

/// What the VM does: LVM on a loop device with a thick volume, a thin pool and volume, and two
/// LUKS mappings on volumes (one with its key in the kernel keyring), each with ext4, and a
/// thick, a thin and a LUKS one with XFS; then the agent's inventory, an image of the
/// unmounted thick volume restored and checked, a mounted LUKS filesystem frozen, the mounted
/// volumes imaged from LVM snapshots, a snapshot too small for the writes meanwhile, and a
/// disk with unreadable sectors (device-mapper's error target) cloned.
const GUEST: &str = r#"#!/bin/sh
set -eux
. "$OUT/guest-lvm.sh"
mkdir -p /tmp/m/thick /tmp/m/thin /tmp/m/sealed /tmp/m/vault /tmp/m/xthick /tmp/m/xthin /tmp/m/xvault
truncate -s 1400M /tmp/pv.img
PV=$(losetup -f --show /tmp/pv.img)
pvcreate -q "$PV"
vgcreate -q hfvg "$PV"
lvcreate -q -y -L 64M -n thick hfvg
lvcreate -q -y -L 128M -T hfvg/pool
lvcreate -q -y -V 64M -T hfvg/pool -n thin
lvcreate -q -y -L 64M -n sealed hfvg
lvcreate -q -y -L 64M -n vault hfvg
lvcreate -q -y -L 320M -n xthick hfvg
lvcreate -q -y -V 320M -T hfvg/pool -n xthin
lvcreate -q -y -L 340M -n xvault hfvg
for lv in sealed vault xvault; do
    printf pw | cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - /dev/hfvg/$lv
done
# Opened the default way, LUKS2 keeps its key only inside the kernel; without the keyring, the
# kernel shows it to root.
printf pw | cryptsetup open --key-file - /dev/hfvg/sealed hfdata
printf pw | cryptsetup open --disable-keyring --key-file - /dev/hfvg/vault hfvault
printf pw | cryptsetup open --disable-keyring --key-file - /dev/hfvg/xvault hfxvault
for d in /dev/hfvg/thick /dev/hfvg/thin /dev/mapper/hfdata /dev/mapper/hfvault; do mkfs.ext4 -q "$d"; done
for d in /dev/hfvg/xthick /dev/hfvg/xthin /dev/mapper/hfxvault; do mkfs.xfs -q "$d"; done
mount /dev/hfvg/thick /tmp/m/thick
mount /dev/hfvg/thin /tmp/m/thin
mount /dev/mapper/hfdata /tmp/m/sealed
mount /dev/mapper/hfvault /tmp/m/vault
mount /dev/hfvg/xthick /tmp/m/xthick
mount /dev/hfvg/xthin /tmp/m/xthin
mount /dev/mapper/hfxvault /tmp/m/xvault
for m in thick thin sealed vault xthick xthin xvault; do
    head -c 3000000 /dev/urandom > /tmp/m/$m/data.bin
    sha256sum /tmp/m/$m/data.bin | cut -d' ' -f1 > "$OUT/$m.sum"
done
umount /tmp/m/thick
"$AGENT" inventory --json > "$OUT/inventory.json"
"$AGENT" image create --source /dev/hfvg/thick --output /tmp/thick.hfi --json > "$OUT/thick.json"
truncate -s 64M /tmp/restored.img
"$AGENT" image restore --image /tmp/thick.hfi --target /tmp/restored.img --json > "$OUT/restore.json"
e2fsck -fn /tmp/restored.img
mkdir -p /tmp/m/restored
mount -o ro,loop /tmp/restored.img /tmp/m/restored
sha256sum /tmp/m/restored/data.bin | cut -d' ' -f1 > "$OUT/restored.sum"
umount /tmp/m/restored
"$AGENT" image create --source /dev/mapper/hfdata --output /tmp/sealed.hfi --json > "$OUT/sealed.json"
echo "writable after" > /tmp/m/sealed/after.txt
set +e
"$AGENT" image create --source /dev/mapper/hfdata --output /tmp/sealed2.hfi --consistency lvm-snapshot > "$OUT/sealed-snap.out" 2>&1
echo $? > "$OUT/sealed-snap.status"
set -e

# Snapshots a killed imaging process left (named after a process that is gone), one with a
# LUKS mapping opened over it: the next run removes them.
lvcreate -q -y -s -n holdfast-snap-999999 -L 4M hfvg/thick
lvcreate -q -y -s -n holdfast-snap-999998 -L 4M hfvg/vault
dmsetup table --showkeys hfvault | sed "s# [0-9]*:[0-9]* 32768# $(stat -L -c %Hr:%Lr /dev/hfvg/holdfast-snap-999998) 32768#" | dmsetup create --readonly holdfast-snap-999998-open
lvs --noheadings -o lv_name hfvg > "$OUT/lvs-stale.txt"
dmsetup ls > "$OUT/dm-stale.txt"

# Mounted volumes, by default: read from an LVM snapshot, which is then removed.
mount /dev/hfvg/thick /tmp/m/thick
for m in thick thin vault xthick xthin xvault; do
    src=/dev/hfvg/$m
    # A fresh change, so the log is not yet covered (XFS covers an idle log by itself after
    # a while, which a slow VM can reach): the snapshot of the LUKS one must replay it.
    case $m in *vault) src=/dev/mapper/hf$m; date > /tmp/m/$m/fresh.txt; sync ;; esac
    "$AGENT" image create --source $src --output /tmp/$m-snap.hfi --json > "$OUT/$m-snap.json"
    truncate -s "$(blockdev --getsize64 $src)" /tmp/$m-restored.img
    "$AGENT" image restore --image /tmp/$m-snap.hfi --target /tmp/$m-restored.img --json > /dev/null
    mkdir -p /tmp/m/$m-restored
    case $m in
    x*)
        # The first mount replays what the log holds; then it must be clean.
        mount -o loop,nouuid /tmp/$m-restored.img /tmp/m/$m-restored
        sha256sum /tmp/m/$m-restored/data.bin | cut -d' ' -f1 > "$OUT/$m-snap.sum"
        umount /tmp/m/$m-restored
        xfs_repair -n /tmp/$m-restored.img
        ;;
    *)
        # What a mount would do first: replay the journal; then it must be clean.
        e2fsck -fy /tmp/$m-restored.img || [ $? -eq 1 ]
        e2fsck -fn /tmp/$m-restored.img
        mount -o ro,loop /tmp/$m-restored.img /tmp/m/$m-restored
        sha256sum /tmp/m/$m-restored/data.bin | cut -d' ' -f1 > "$OUT/$m-snap.sum"
        umount /tmp/m/$m-restored
        ;;
    esac
done
lvs --noheadings -o lv_name hfvg > "$OUT/lvs-after.txt"
dmsetup ls > "$OUT/dm-after.txt"

# Another run snapshotting the same volume (it holds the lock): refused, nothing made.
flock -o /run/lock/holdfast-hfvg-thick.lock sleep 60 &
LOCKER=$!
sleep 1
set +e
"$AGENT" image create --source /dev/hfvg/thick --output /tmp/busy.hfi > "$OUT/busy.out" 2>&1
echo $? > "$OUT/busy.status"
set -e
kill "$LOCKER"
wait "$LOCKER" || true

# A snapshot too small for the writes meanwhile: the run fails, and leaves no image.
( while [ ! -e /tmp/stop ]; do dd if=/dev/zero of=/tmp/m/thick/churn bs=1M count=24 conv=notrunc oflag=direct 2>/dev/null; done ) &
sleep 1
set +e
"$AGENT" image create --source /dev/hfvg/thick --output /tmp/small.hfi --snapshot-size 1 > "$OUT/small.out" 2>&1
echo $? > "$OUT/small.status"
set -e
touch /tmp/stop
wait
[ ! -e /tmp/small.hfi ] && echo absent > "$OUT/small.image"
lvs --noheadings -o lv_name hfvg > "$OUT/lvs-end.txt"

# A disk with unreadable sectors (device-mapper's error target over 32 KiB in the middle of
# 16 MiB), cloned: it stops at the first unreadable chunk, its target's first MiB left
# cleared; with --ignore-read-errors it writes them as zeros and lists them.
head -c 16777216 /dev/urandom > /tmp/bad.img
BADLOOP=$(losetup -f --show /tmp/bad.img)
printf '0 16384 linear %s 0\n16384 64 error\n16448 16320 linear %s 16448\n' "$BADLOOP" "$BADLOOP" | dmsetup create hfbad
head -c 16777216 /dev/urandom > /tmp/clone-target.img
CT=$(losetup -f --show /tmp/clone-target.img)
set +e
"$AGENT" clone --source /dev/mapper/hfbad --target "$CT" --forensic --yes > "$OUT/badclone-stop.out" 2>&1
echo $? > "$OUT/badclone-stop.status"
set -e
cmp -n 1048576 "$CT" /dev/zero && echo cleared > "$OUT/badclone-stop.head"
"$AGENT" clone --source /dev/mapper/hfbad --target "$CT" --forensic --ignore-read-errors --yes --json > "$OUT/badclone.json"
# The unreadable 32 KiB are zeros; everything else is the source's.
dd if="$CT" bs=512 skip=16384 count=64 status=none | cmp -s - /dev/zero -n 32768 && echo zeros > "$OUT/badclone.hole"
cmp -n 8388608 "$CT" /tmp/bad.img && cmp -i 8421376 "$CT" /tmp/bad.img && echo equal > "$OUT/badclone.rest"
"#;

#[test]
fn lvm_and_luks_volumes_are_listed_snapshotted_imaged_and_frozen_in_a_vm() {
    if !require_devices("lvm_and_luks_in_a_vm") {
        return;
    }
    let Some(t) = vm::run_agent_script("lvm_and_luks_in_a_vm", GUEST) else {
        return;
    };
    let out = t.path();

    // The inventory shows each device-mapper volume and what it is made of.
    let inv = read_json(out, "inventory.json");
    let disks = inv["disks"].as_array().expect("disks");
    let backing = |kind: &str, key: &str, value: &str| {
        disks
            .iter()
            .find(|d| d["backing"]["kind"] == kind && d["backing"][key] == value)
            .unwrap_or_else(|| panic!("no {kind} {key}={value} in {inv}"))
    };
    let thick = backing("lvm", "lv", "thick");
    assert_eq!(thick["backing"]["vg"], "hfvg", "{thick}");
    assert!(
        thick["backing"]["on"][0]
            .as_str()
            .is_some_and(|d| d.starts_with("loop")),
        "{thick}"
    );
    backing("lvm", "lv", "thin");
    let sealed = backing("crypt", "name", "hfdata");
    assert!(
        sealed["backing"]["on"][0]
            .as_str()
            .is_some_and(|d| d.starts_with("dm-")),
        "{sealed}"
    );
    let volume = |name: &Value| {
        inv["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == *name)
            .unwrap_or_else(|| panic!("no volume {name}"))
            .clone()
    };
    assert_eq!(
        volume(&thick["name"])["consistency"],
        serde_json::json!(["unmounted"])
    );
    assert_eq!(
        volume(&sealed["name"])["consistency"],
        serde_json::json!(["freeze", "lock", "live"])
    );
    let vault = backing("crypt", "name", "hfvault");
    assert_eq!(
        volume(&vault["name"])["consistency"],
        serde_json::json!(["lvm-snapshot", "freeze", "lock", "live"])
    );

    // The unmounted thick volume, used-sector, restores to the same file.
    let created = read_json(out, "thick.json");
    assert_eq!(created["coverage"], "used-sector", "{created}");
    assert_eq!(created["consistency"], "unmounted", "{created}");
    let sum = |n: &str| std::fs::read_to_string(out.join(n)).expect(n);
    assert_eq!(sum("restored.sum"), sum("thick.sum"));

    // A mounted filesystem on LUKS on LVM is frozen for its image.
    let frozen = read_json(out, "sealed.json");
    assert!(
        frozen["consistency"]
            .as_str()
            .is_some_and(|c| c.starts_with("frozen: the filesystem was frozen for")
                && c.contains("no snapshot, since the key of the LUKS mapping hfdata is kept only inside the kernel")),
        "{frozen}"
    );
    assert_eq!(frozen["coverage"], "used-sector", "{frozen}");
    // Asked for a snapshot of it: refused, with the reason and what to do.
    assert_eq!(
        sum("sealed-snap.status").trim(),
        "5",
        "{}",
        sum("sealed-snap.out")
    );
    assert!(
        sum("sealed-snap.out").contains("--disable-keyring"),
        "{}",
        sum("sealed-snap.out")
    );

    // Mounted LVM volumes are read from a snapshot (thin for the thin one), restore to a
    // clean filesystem with the same file, and the snapshots are gone afterwards.
    for (m, how) in [
        ("thick", "lvm-snapshot: read from a snapshot of hfvg/thick"),
        (
            "thin",
            "lvm-snapshot: read from a thin snapshot of hfvg/thin",
        ),
        (
            "vault",
            "lvm-snapshot: read from a snapshot of hfvg/vault, opened with the key of the LUKS mapping hfvault",
        ),
        ("xthick", "lvm-snapshot: read from a snapshot of hfvg/xthick"),
        (
            "xthin",
            "lvm-snapshot: read from a thin snapshot of hfvg/xthin",
        ),
        (
            "xvault",
            "lvm-snapshot: read from a snapshot of hfvg/xvault, opened with the key of the LUKS mapping hfxvault",
        ),
    ] {
        let made = read_json(out, &format!("{m}-snap.json"));
        assert!(
            made["consistency"]
                .as_str()
                .is_some_and(|c| c.starts_with(how)),
            "{made}"
        );
        assert_eq!(made["coverage"], "used-sector", "{made}");
        // LVM froze the filesystems on its volumes, which leaves an XFS log covered; the one
        // above a LUKS mapping was not, and its log is replayed into the snapshot.
        let replayed = made["consistency"]
            .as_str()
            .is_some_and(|c| c.contains("the XFS log was replayed into the snapshot"));
        assert_eq!(replayed, m == "xvault", "{made}");
        assert_eq!(made["warnings"], serde_json::json!([]), "{made}");
        assert_eq!(
            sum(&format!("{m}-snap.sum")),
            sum(&format!("{m}.sum")),
            "{m}"
        );
    }
    assert!(sum("lvs-stale.txt").contains("holdfast-snap-999999"));
    assert!(sum("dm-stale.txt").contains("holdfast-snap-999998-open"));
    let left = sum("lvs-after.txt") + &sum("dm-after.txt");
    assert!(
        !left.contains("holdfast-snap"),
        "stale and used snapshots are gone: {left}"
    );

    // One volume is never snapshotted by two runs at once.
    assert_eq!(sum("busy.status").trim(), "5", "{}", sum("busy.out"));
    assert!(sum("busy.out").contains("another run is imaging hfvg/thick from a snapshot"));

    // Too small for the writes meanwhile: failed with the reason, no image, no snapshot.
    let said = sum("small.out");
    assert_ne!(sum("small.status").trim(), "0", "{said}");
    assert!(
        said.contains("overflowed") || said.contains("is full"),
        "{said}"
    );
    assert_eq!(sum("small.image").trim(), "absent", "{said}");
    let left = sum("lvs-end.txt");
    assert!(!left.contains("holdfast-snap"), "{left}");

    // A clone of a failing disk stops at the unreadable sectors and leaves its target's
    // head cleared; told to go on, it writes them as zeros, lists them and warns.
    let said = sum("badclone-stop.out");
    assert_ne!(sum("badclone-stop.status").trim(), "0", "{said}");
    assert!(said.to_lowercase().contains("read"), "{said}");
    assert_eq!(sum("badclone-stop.head").trim(), "cleared", "{said}");
    let cloned = read_json(out, "badclone.json");
    assert_eq!(cloned["ok"], false, "{cloned}");
    assert_eq!(
        cloned["unreadable"],
        serde_json::json!([[16384 * 512, 16448 * 512]]),
        "{cloned}"
    );
    assert!(
        !cloned["warnings"].as_array().expect("warnings").is_empty(),
        "{cloned}"
    );
    assert_eq!(sum("badclone.hole").trim(), "zeros", "{cloned}");
    assert_eq!(sum("badclone.rest").trim(), "equal", "{cloned}");
}
