//! `holdfast-agent clone`: disks and volumes onto equal and larger devices.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use holdfast_testkit::devices::*;

/// Run `holdfast-agent clone ARGS --json`.
fn clone(args: &[&str]) -> Run {
    agent_json(&[&["clone"], args].concat())
}

fn clone_ok(args: &[&str]) -> serde_json::Value {
    let r = clone(args);
    assert_eq!(r.code, 0, "clone {args:?} failed: {}\n{}", r.stderr, r.json);
    r.json
}

fn head(path: &Path, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut f = std::fs::File::open(path).expect("open");
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.read_exact(&mut buf).expect("read");
    buf
}

#[test]
fn a_gpt_disk_clones_onto_a_larger_disk_with_its_last_partition_grown() {
    let test = "a_gpt_disk_clones_onto_a_larger_disk_with_its_last_partition_grown";
    if !require_devices(test) {
        return;
    }
    let t = tempdir();
    let work = t.path();
    let disk = work.join("disk.img");
    sparse_file(&disk, 160 << 20);
    let (_, parts) = partition_disk(
        &disk,
        "label: gpt\nsize=48MiB, type=U, name=efi\ntype=L, name=root\n",
    );
    let (efi_files, root_files) = {
        let efi = Loop::over(&disk, parts[0]);
        mkfs(efi.path(), "vfat");
        let efi_files = edit_files(efi.path(), "vfat", work, |d| {
            std::fs::create_dir_all(d.join("EFI/BOOT")).expect("EFI dir");
            std::fs::write(d.join("EFI/BOOT/BOOTX64.EFI"), noise(300_000, 3)).expect("payload");
        });
        let root = Loop::over(&disk, parts[1]);
        mkfs(root.path(), "ext4");
        {
            let m = Mounted::new(root.path(), &work.join("mnt"), "rw");
            write_files(&m.dir, 0, 8);
        }
        (efi_files, read_files(root.path(), "ext4", work))
    };
    assert!(!efi_files.is_empty() && !root_files.is_empty());

    // The target held something else: its old table and bytes must not survive.
    let target = work.join("bigger.img");
    sparse_file(&target, 320 << 20);
    partition_disk(&target, "label: dos\ntype=83\n");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .expect("target");
        f.seek(SeekFrom::Start(1 << 20)).expect("seek");
        f.write_all(&noise(4 << 20, 9)).expect("old data");
    }
    let src = Loop::new(&disk);
    let dst = Loop::new(&target);
    let before = head(&dst.dev, 1 << 20);

    // Refusals change nothing: no --yes (and no terminal to type the name on), a smaller
    // target, a target inside the source, a mounted target.
    let r = clone(&["--source", src.path(), "--target", dst.path()]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("give --yes"), "{}", r.stderr);
    let small = work.join("small.img");
    sparse_file(&small, 150 << 20);
    let small = Loop::new(&small);
    let r = clone(&["--source", src.path(), "--target", small.path(), "--yes"]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("too small"), "{}", r.stderr);
    let inside = Loop::over(&disk, parts[1]);
    let r = clone(&["--source", src.path(), "--target", inside.path(), "--yes"]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("part of it"), "{}", r.stderr);
    drop(inside);
    let busy_file = work.join("busy.img");
    sparse_file(&busy_file, 200 << 20);
    let busy = Loop::new(&busy_file);
    mkfs(busy.path(), "ext4");
    {
        let _m = Mounted::new(busy.path(), &work.join("busy-mnt"), "rw");
        let r = clone(&["--source", src.path(), "--target", busy.path(), "--yes"]);
        assert_eq!(r.code, 5, "{}", r.stderr);
        assert!(r.stderr.contains("is mounted on"), "{}", r.stderr);
    }
    assert_eq!(
        head(&dst.dev, 1 << 20),
        before,
        "a refused clone wrote to the target"
    );

    let r = clone_ok(&[
        "--source",
        src.path(),
        "--target",
        dst.path(),
        "--grow",
        "--yes",
    ]);
    assert_eq!(r["coverage"], "used-sector", "{r}");
    assert_eq!(r["gpt_backup_moved_to_end"], true, "{r}");
    assert_eq!(r["grown"]["partition"], 2, "{r}");
    let copied = r["copied_bytes"].as_u64().expect("copied");
    assert!(
        copied < 80 << 20,
        "used-sector copied {copied} bytes of a 160 MiB disk"
    );
    drop(src);
    drop(dst);

    let verify = Command::new("sfdisk")
        .arg("--verify")
        .arg(&target)
        .output()
        .expect("sfdisk");
    let text = String::from_utf8_lossy(&verify.stdout).to_string()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !text.contains("mismatch") && !text.contains("corrupt"),
        "{text}"
    );
    let cloned = partitions_of(&target).1;
    assert_eq!(
        cloned[0], parts[0],
        "the EFI partition moved or changed size"
    );
    assert_eq!(cloned[1].0, parts[1].0, "the root partition moved");
    // Grown to the end of the usable area: the disk less the backup GPT (33 sectors).
    let end = cloned[1].0 + cloned[1].1;
    assert!(
        end > (320 << 20) - (1 << 20) && end <= (320 << 20) - 33 * 512,
        "{cloned:?}"
    );
    assert_eq!(r["grown"]["new_len"], cloned[1].1, "{r}");

    let efi = Loop::over(&target, cloned[0]);
    fsck_clean(efi.path(), "vfat");
    assert_eq!(read_files(efi.path(), "vfat", work), efi_files);
    let root = Loop::over(&target, cloned[1]);
    fsck_clean(root.path(), "ext4");
    assert_eq!(read_files(root.path(), "ext4", work), root_files);
    let size = fs_size_bytes(root.path(), "ext4", work).expect("size");
    assert!(
        size > parts[1].1 + (100 << 20),
        "the ext4 filesystem was not grown with its partition: {size} bytes"
    );
}

#[test]
fn volumes_clone_forensic_and_grow_with_their_filesystem() {
    let test = "volumes_clone_forensic_and_grow_with_their_filesystem";
    if !require_devices(test)
        || !require_tool("mkfs.xfs", test)
        || !require_tool("mkfs.btrfs", test)
    {
        return;
    }
    let t = tempdir();
    let work = t.path();
    for (fs, size) in [
        ("ext4", 64u64 << 20),
        ("xfs", 320 << 20),
        ("btrfs", 256 << 20),
    ] {
        let vol = work.join(format!("{fs}.img"));
        sparse_file(&vol, size);
        let src = Loop::new(&vol);
        mkfs(src.path(), fs);
        {
            let m = Mounted::new(src.path(), &work.join("mnt"), "rw");
            write_files(&m.dir, 0, 6);
        }
        let files = read_files(src.path(), fs, work);
        let old_size = fs_size_bytes(src.path(), fs, work).expect("size");

        // Forensic onto an equal device: every byte.
        let same = work.join(format!("{fs}-same.img"));
        std::fs::write(&same, noise(size as usize, 4)).expect("same");
        let same_lo = Loop::new(&same);
        let r = clone_ok(&[
            "--source",
            src.path(),
            "--target",
            same_lo.path(),
            "--forensic",
            "--yes",
        ]);
        assert_eq!(r["coverage"], "forensic", "{r}");
        assert_eq!(r["copied_bytes"], size, "{r}");
        drop(same_lo);
        assert!(
            std::fs::read(&vol).expect("vol") == std::fs::read(&same).expect("same"),
            "{fs}: the forensic clone differs from its source"
        );
        if fs == "ext4" {
            // Used-sector with --zero-unused over old contents: nothing of them is left, so
            // the copy of a volume made on zeros is byte for byte the source.
            std::fs::write(&same, noise(size as usize, 5)).expect("same");
            let same_lo = Loop::new(&same);
            let r = clone_ok(&[
                "--source",
                src.path(),
                "--target",
                same_lo.path(),
                "--zero-unused",
                "--yes",
            ]);
            assert!(
                r["zeroed_bytes"].as_u64().expect("zeroed") > size / 2,
                "{r}"
            );
            drop(same_lo);
            assert!(
                std::fs::read(&vol).expect("vol") == std::fs::read(&same).expect("same"),
                "the target's old contents survived --zero-unused"
            );
        }

        // Used-sector onto a larger one, the filesystem grown to fill it.
        let big = work.join(format!("{fs}-big.img"));
        sparse_file(&big, size + size / 2);
        let big_lo = Loop::new(&big);
        let r = clone_ok(&[
            "--source",
            src.path(),
            "--target",
            big_lo.path(),
            "--grow",
            "--yes",
        ]);
        assert_eq!(r["coverage"], "used-sector", "{r}");
        assert_eq!(r["grown"]["filesystem"], fs, "{r}");
        assert!(
            r["copied_bytes"].as_u64().expect("copied") < size / 2,
            "{fs}: {r}"
        );
        fsck_clean(big_lo.path(), fs);
        assert_eq!(read_files(big_lo.path(), fs, work), files, "{fs}");
        let new_size = fs_size_bytes(big_lo.path(), fs, work).expect("size");
        assert!(
            new_size > old_size + size / 4,
            "{fs}: not grown ({old_size} → {new_size} bytes)"
        );
    }
}

#[test]
fn a_mounted_volume_is_cloned_frozen() {
    if !require_devices("a_mounted_volume_is_cloned_frozen") {
        return;
    }
    let t = tempdir();
    let work = t.path();
    let vol = work.join("live.img");
    sparse_file(&vol, 64 << 20);
    let src = Loop::new(&vol);
    mkfs(src.path(), "ext4");
    let m = Mounted::new(src.path(), &work.join("live-mnt"), "rw");
    write_files(&m.dir, 0, 6);
    let files = checksums(&m.dir);
    let copy = work.join("copy.img");
    sparse_file(&copy, 64 << 20);
    let copy_lo = Loop::new(&copy);
    let r = clone_ok(&["--source", src.path(), "--target", copy_lo.path(), "--yes"]);
    assert!(
        r["consistency"]
            .as_str()
            .unwrap_or("")
            .starts_with("frozen"),
        "{r}"
    );
    drop(m);
    replay_and_fsck_ext4(copy_lo.path());
    assert_eq!(read_files(copy_lo.path(), "ext4", work), files);
}
