//! LUKS volumes imaged with their passphrase or key file: the header as it is, the contents
//! decrypted by their used blocks, restored encrypted (or decrypted, asked for), in the VM
//! (`scripts/vm/`; this machine's kernel has no dm-crypt), booted once for the group.
//! Without the VM they skip on a developer's machine and fail under `CI`.

use holdfast_testkit::devices::require_devices;
use holdfast_testkit::vm::{self, read_json};

/// What the VM does: a partitioned disk with a LUKS1 volume (ext4, a passphrase) and a
/// LUKS2 one (XFS, a key file, opened without the keyring). The first is imaged closed: a
/// full image, a change, an incremental, each point restored encrypted and checked, the
/// last also decrypted; then the refusals. The second is imaged open, mounted and written
/// to, from a snapshot of its mapping.
const GUEST: &str = r#"#!/bin/sh
set -eux
. "$OUT/guest-lvm.sh"
sums() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum && find . -type l -printf '%p -> %l\n' | sort); }
mkdir -p /tmp/m/a /tmp/m/b /tmp/m/r /tmp/storefs
printf 'imgpw\n' > /tmp/imgpw
printf 'pw\n' > /tmp/pw
printf 'wrong\n' > /tmp/wrong
head -c 4096 /dev/urandom > /tmp/keyfile
truncate -s 460M /tmp/disk.img
DISK=$(losetup -f --show -P /tmp/disk.img)
printf 'label: gpt\n,96M\n,330M\n' | sfdisk -q "$DISK"
partx -u "$DISK" || true
for p in 1 2; do [ -b "${DISK}p$p" ] || { echo "no ${DISK}p$p"; exit 1; }; done
ONE="${DISK}p1"
TWO="${DISK}p2"
printf pw | cryptsetup luksFormat -q --type luks1 --pbkdf-force-iterations 1000 --key-file - "$ONE"
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file /tmp/keyfile "$TWO"
cryptsetup luksUUID "$ONE" > "$OUT/one.uuid"
blockdev --getsize64 "$ONE" > "$OUT/one.size"

# The first volume: files, and a large file deleted (its blocks are not imaged).
printf pw | cryptsetup open --key-file - "$ONE" hfone
mkfs.ext4 -q /dev/mapper/hfone
mount /dev/mapper/hfone /tmp/m/a
head -c 30000000 /dev/urandom > /tmp/m/a/deleted.bin
sync
rm /tmp/m/a/deleted.bin
head -c 20000000 /dev/urandom > /tmp/m/a/big.bin
echo hello > /tmp/m/a/small.txt
ln -s small.txt /tmp/m/a/link
mkdir /tmp/m/a/dir
echo inside > /tmp/m/a/dir/file.txt
sums /tmp/m/a > "$OUT/one-full.sums"
umount /tmp/m/a
cryptsetup close hfone

"$AGENT" image create --source "$ONE" --output /tmp/one-full.hfi --luks-passphrase-file /tmp/pw \
    --encrypt aes256 --password-file /tmp/imgpw --json > "$OUT/one-full.json"
dmsetup ls > "$OUT/dm-after-full.txt"

# About 5 % changed.
printf pw | cryptsetup open --key-file - "$ONE" hfone
mount /dev/mapper/hfone /tmp/m/a
head -c 4000000 /dev/urandom > /tmp/m/a/new.bin
rm /tmp/m/a/small.txt
echo changed > /tmp/m/a/dir/file.txt
sums /tmp/m/a > "$OUT/one-inc.sums"
umount /tmp/m/a
cryptsetup close hfone

HOLDFAST_LUKS_PASSPHRASE=pw "$AGENT" image create --source "$ONE" --output /tmp/one-inc.hfi \
    --incremental --base /tmp/one-full.hfi --password-file /tmp/imgpw --json > "$OUT/one-inc.json"

# Each point restored encrypted to a new file: the same LUKS volume, opened with its
# passphrase, a clean filesystem with that point's files.
for point in full inc; do
    "$AGENT" image restore --image /tmp/one-$point.hfi --target /tmp/one-$point-r.img \
        --password-file /tmp/imgpw --luks-passphrase-file /tmp/pw --json > "$OUT/one-$point-restore.json"
    cryptsetup luksUUID /tmp/one-$point-r.img > "$OUT/one-$point-r.uuid"
    printf pw | cryptsetup open --key-file - /tmp/one-$point-r.img hfr
    e2fsck -fn /dev/mapper/hfr
    mount -o ro /dev/mapper/hfr /tmp/m/r
    sums /tmp/m/r > "$OUT/one-$point-r.sums"
    umount /tmp/m/r
    cryptsetup close hfr
done
dmsetup ls > "$OUT/dm-after-restore.txt"

# The last point decrypted: the filesystem alone.
"$AGENT" image restore --image /tmp/one-inc.hfi --target /tmp/one-dec.img --password-file /tmp/imgpw \
    --decrypted --json > "$OUT/one-dec.json"
e2fsck -fn /tmp/one-dec.img
mount -o ro,loop /tmp/one-dec.img /tmp/m/r
sums /tmp/m/r > "$OUT/one-dec.sums"
umount /tmp/m/r

# Refusals, each with its reason and nothing changed.
refused() { name=$1; shift; set +e; "$@" > "$OUT/$name.out" 2>&1; echo $? > "$OUT/$name.status"; set -e; }
refused restore-nokey "$AGENT" image restore --image /tmp/one-inc.hfi --target /tmp/nokey.img --password-file /tmp/imgpw
[ ! -e /tmp/nokey.img ] && echo absent > "$OUT/restore-nokey.target"
dd if=/dev/urandom of=/tmp/existing.img bs=1M count=96 status=none
sha256sum < /tmp/existing.img > /tmp/existing.before
refused restore-wrong "$AGENT" image restore --image /tmp/one-inc.hfi --target /tmp/existing.img \
    --password-file /tmp/imgpw --luks-passphrase-file /tmp/wrong
sha256sum < /tmp/existing.img | cmp - /tmp/existing.before && echo same > "$OUT/restore-wrong.target"
refused create-wrong "$AGENT" image create --source "$ONE" --output /tmp/wrong.hfi --luks-passphrase-file /tmp/wrong \
    --encrypt aes256 --password-file /tmp/imgpw
[ ! -e /tmp/wrong.hfi ] && echo absent > "$OUT/create-wrong.image"
refused create-clear "$AGENT" image create --source "$ONE" --output /tmp/clear.hfi --luks-passphrase-file /tmp/pw
[ ! -e /tmp/clear.hfi ] && echo absent > "$OUT/create-clear.image"
refused create-notluks "$AGENT" image create --source /tmp/one-dec.img --output /tmp/notluks.hfi \
    --luks-passphrase-file /tmp/pw --encrypt aes256 --password-file /tmp/imgpw
refused inc-nokey "$AGENT" image create --source "$ONE" --output /tmp/inc-nokey.hfi \
    --incremental --base /tmp/one-inc.hfi --password-file /tmp/imgpw
dmsetup ls > "$OUT/dm-after-refusals.txt"

# The second volume open, mounted and written to: read through a snapshot of its mapping.
truncate -s 200M /tmp/store.img
mkfs.ext4 -q /tmp/store.img
mount -o loop /tmp/store.img /tmp/storefs
mkdir /tmp/storefs/snaps
export HOLDFAST_SNAPSHOT_STORE=/tmp/storefs/snaps
cryptsetup open --disable-keyring --key-file /tmp/keyfile "$TWO" hftwo
mkfs.xfs -q /dev/mapper/hftwo
mount /dev/mapper/hftwo /tmp/m/b
head -c 8000000 /dev/urandom > /tmp/m/b/data.bin
sha256sum /tmp/m/b/data.bin | cut -d' ' -f1 > "$OUT/two.sum"
( while [ ! -e /tmp/stop ]; do dd if=/dev/urandom of=/tmp/m/b/churn bs=1M count=4 conv=notrunc,fsync 2>/dev/null; done ) &
WRITER=$!
sleep 1
"$AGENT" image create --source "$TWO" --output /tmp/two.hfi --luks-key-file /tmp/keyfile \
    --encrypt aes128 --password-file /tmp/imgpw --json > "$OUT/two.json"
touch /tmp/stop
wait $WRITER
"$AGENT" image restore --image /tmp/two.hfi --target /tmp/two-r.img --password-file /tmp/imgpw \
    --luks-key-file /tmp/keyfile --json > /dev/null
cryptsetup open --key-file /tmp/keyfile /tmp/two-r.img hfr
# Crash-consistent: mounting recovers what the log holds, as after a power loss.
mount -o nouuid /dev/mapper/hfr /tmp/m/r
sha256sum /tmp/m/r/data.bin | cut -d' ' -f1 > "$OUT/two-r.sum"
umount /tmp/m/r
xfs_repair -n /dev/mapper/hfr
cryptsetup close hfr
dmsetup ls > "$OUT/dm-end.txt"
"#;

#[test]
fn luks_volumes_are_imaged_decrypted_by_used_blocks_and_restored_encrypted_in_a_vm() {
    if !require_devices("luks_in_a_vm") {
        return;
    }
    let Some(t) = vm::run_agent_script("luks_in_a_vm", GUEST) else {
        return;
    };
    let out = t.path();
    let text = |n: &str| std::fs::read_to_string(out.join(n)).unwrap_or_default();
    let size: u64 = text("one.size").trim().parse().expect("size");

    // Imaged closed, with the passphrase: header whole, contents by their used blocks (the
    // deleted 30 MB are not read), in the encrypted image; its mapping closed after.
    let full = read_json(out, "one-full.json");
    assert_eq!(full["coverage"], "used-sector", "{full}");
    assert_eq!(full["filesystem"], "crypto_LUKS", "{full}");
    assert_eq!(full["warnings"], serde_json::json!([]), "{full}");
    let how = full["consistency"].as_str().unwrap_or_default();
    assert!(
        how.starts_with("unmounted; contents read decrypted through the LUKS volume opened"),
        "{full}"
    );
    let read = full["read_bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(
        (20_000_000..size / 2).contains(&read),
        "read {read} of {size}: {full}"
    );
    let inc = read_json(out, "one-inc.json");
    assert_eq!(inc["coverage"], "used-sector", "{inc}");
    let data = inc["data_bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(
        data < 12_000_000,
        "the incremental stored {data} bytes: {inc}"
    );
    for listing in [
        "dm-after-full.txt",
        "dm-after-restore.txt",
        "dm-after-refusals.txt",
    ] {
        assert!(
            !text(listing).contains("holdfast-luks"),
            "{}",
            text(listing)
        );
    }

    // Each point restored encrypted: the same LUKS volume, that point's files.
    for point in ["full", "inc"] {
        assert_eq!(
            text(&format!("one-{point}-r.uuid")),
            text("one.uuid"),
            "{point}"
        );
        let want = text(&format!("one-{point}.sums"));
        assert!(want.contains("big.bin") && want.contains("./link -> small.txt"));
        assert_eq!(text(&format!("one-{point}-r.sums")), want, "{point}");
    }
    assert_ne!(text("one-full.sums"), text("one-inc.sums"));
    // Decrypted, asked for: the filesystem alone, the same files.
    assert_eq!(text("one-dec.sums"), text("one-inc.sums"));
    let dec = read_json(out, "one-dec.json");
    assert!(dec["source_size"].as_u64() < Some(size), "{dec}");

    // Refusals: each says why, and changes nothing.
    let refused = |name: &str, says: &str| {
        let status = text(&format!("{name}.status"));
        let said = text(&format!("{name}.out"));
        assert_ne!(status.trim(), "0", "{name}: {said}");
        assert!(said.contains(says), "{name}: {said}");
    };
    refused("restore-nokey", "give the volume's passphrase");
    assert_eq!(text("restore-nokey.target").trim(), "absent");
    refused("restore-wrong", "does not open the volume this image holds");
    assert_eq!(text("restore-wrong.target").trim(), "same");
    refused("create-wrong", "does not open");
    assert_eq!(text("create-wrong.image").trim(), "absent");
    refused(
        "create-clear",
        "would be stored decrypted in an unencrypted image",
    );
    assert_eq!(text("create-clear.image").trim(), "absent");
    refused("create-notluks", "is not a LUKS volume");
    refused("inc-nokey", "give its passphrase");

    // Open, mounted and written to: from a snapshot of its mapping, with the key file.
    let two = read_json(out, "two.json");
    let how = two["consistency"].as_str().unwrap_or_default();
    assert!(
        how.starts_with("dm-snapshot: read from a snapshot of the device-mapper device hftwo")
            && how.ends_with("contents read decrypted through its open LUKS mapping hftwo"),
        "{two}"
    );
    assert_eq!(two["coverage"], "used-sector", "{two}");
    assert_eq!(two["warnings"], serde_json::json!([]), "{two}");
    assert_eq!(text("two-r.sum"), text("two.sum"));
    let left = text("dm-end.txt");
    assert!(
        !left.contains("holdfast-luks") && !left.contains("holdfast-snap"),
        "{left}"
    );
}
