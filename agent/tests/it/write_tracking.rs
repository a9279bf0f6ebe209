//! The agent's record of block writes (`image create --write-log`) on a partition: writes
//! are placed where they fall on it (not the disk's other partitions), a gap in the record
//! (the kernel dropped events) or a trace removed ends in the filesystem's change source
//! with the reason, and a record read often enough (`write-log update`, as the daemon does)
//! has no gap; a trace whose folder is gone is removed.

use std::path::Path;
use std::process::Command;

use holdfast_testkit::devices::*;

const PASS: &str = "block writes traced by the agent";

/// The kernel's trace instance of `log` (there is one device in it).
fn instance(log: &Path) -> std::path::PathBuf {
    let kept: Vec<_> = std::fs::read_dir(log)
        .expect("log folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(kept.len(), 1, "records in {}: {kept:?}", log.display());
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&kept[0]).expect("record")).expect("json");
    Path::new("/sys/kernel/tracing/instances").join(rec["instance"].as_str().expect("instance"))
}

/// `count` separate 4 KiB writes to a new file on `dir`, each its own request.
fn spray(dir: &Path, name: &str, count: u32) {
    sh(Command::new("dd")
        .arg("if=/dev/urandom")
        .arg(format!("of={}", dir.join(name).display()))
        .args(["bs=4k", "oflag=direct", "status=none"])
        .arg(format!("count={count}")));
}

#[test]
fn traced_writes_follow_a_partition_and_fall_back_on_a_gap() {
    if !(require_devices("traced_writes_follow_a_partition_and_fall_back_on_a_gap")
        && require_tool("partx", "traced writes on a partition"))
    {
        return;
    }
    let work = tempdir();
    let w = work.path();
    let disk = w.join("disk");
    sparse_file(&disk, 320 << 20);
    let lo = Loop::new(&disk);
    partition_disk(&lo.dev, "label: gpt\nsize=100MiB\nsize=200MiB\n");
    sh(Command::new("partx").arg("-a").arg(&lo.dev));
    let (p1, p2) = (format!("{}p1", lo.path()), format!("{}p2", lo.path()));
    mkfs(&p2, "ext4");
    let mnt = Mounted::new(&p2, &w.join("mnt"), "rw");
    write_files(&mnt.dir, 0, 20);
    let log = WriteLog::new(&w.join("writes"));
    let img = |n: &str| {
        w.join(format!("{n}.hfi"))
            .to_str()
            .expect("path")
            .to_owned()
    };
    let create = |name: &str, base: Option<&str>| {
        let out = img(name);
        let mut args = vec!["create", "--source", &p2, "--output", &out];
        args.extend(["--write-log", log.path(), "--full-hash-every", "0"]);
        if let Some(b) = base {
            args.extend(["--incremental", "--base", b]);
        }
        let j = image_ok(&args);
        // Every image restores to the mounted files, with a clean fsck.
        let to = w.join("restored");
        let _ = std::fs::remove_file(&to);
        image_ok(&[
            "restore",
            "--image",
            &out,
            "--target",
            to.to_str().expect("path"),
        ]);
        let copy = Loop::new(&to);
        fsck_clean(copy.path(), "ext4");
        let m = Mounted::new(copy.path(), &w.join("copy"), "ro");
        assert_eq!(
            checksums(&m.dir),
            checksums(&mnt.dir),
            "{name}: files differ"
        );
        drop(m);
        j
    };
    create("full", None);

    // 64 MiB written to the other partition, 1 MiB to a 16 MiB file of this one.
    sh(Command::new("dd")
        .args([
            "if=/dev/urandom",
            "bs=1M",
            "count=64",
            "oflag=direct",
            "status=none",
        ])
        .arg(format!("of={p1}")));
    std::fs::write(mnt.dir.join("big"), noise(16 << 20, 7)).expect("big");
    let i1 = create("i1", Some(&img("full")));
    assert_eq!(i1["changes"]["pass"], PASS, "{i1}");
    let big = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.dir.join("big"))
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&big, &noise(1 << 20, 8), 5 << 20).expect("write");
    drop(big);
    let i2 = create("i2", Some(&img("i1")));
    assert_eq!(i2["changes"]["pass"], PASS, "{i2}");
    let hashed = i2["changes"]["hashed_bytes"].as_u64().expect("hashed");
    assert!(
        (1 << 20..8 << 20).contains(&hashed),
        "the rewritten MiB (and metadata) should be read, not the file or the other partition: {i2}"
    );

    // A buffer of two pages per CPU, read often enough: no gap.
    let inst = instance(&w.join("writes"));
    std::fs::write(inst.join("buffer_size_kb"), "8").expect("shrink the buffer");
    for n in 0..6 {
        spray(&mnt.dir, &format!("s{n}"), 12);
        sh(agent().args(["write-log", "update", "--dir", log.path()]));
    }
    let i3 = create("i3", Some(&img("i2")));
    assert_eq!(i3["changes"]["pass"], PASS, "{i3}");

    // Not read in time: the kernel drops events, the record starts again.
    spray(&mnt.dir, "flood", 3000);
    let i4 = create("i4", Some(&img("i3")));
    let pass = i4["changes"]["pass"].as_str().expect("pass");
    assert!(
        pass.starts_with("ext4 inode change times (block writes traced by the agent not used: the record of writes started again at ")
            && pass.contains("the kernel dropped"),
        "{i4}"
    );
    // The image after it has the record again.
    let i5 = create("i5", Some(&img("i4")));
    assert_eq!(i5["changes"]["pass"], PASS, "{i5}");

    // The trace removed behind the agent's back.
    std::fs::remove_dir(instance(&w.join("writes"))).expect("remove the trace");
    let i6 = create("i6", Some(&img("i5")));
    let pass = i6["changes"]["pass"].as_str().expect("pass");
    assert!(
        pass.contains("not used: the record of writes started again at ")
            && pass.ends_with("its trace was stopped or removed)"),
        "{i6}"
    );

    // A folder removed without `write-log stop`: its trace goes when an agent next looks.
    let other = w.join("other-writes");
    let out = img("other");
    let other_log = other.to_str().expect("path");
    image_ok(&[
        "create",
        "--source",
        &p2,
        "--output",
        &out,
        "--write-log",
        other_log,
    ]);
    let orphan = instance(&other);
    std::fs::remove_dir_all(&other).expect("remove the folder");
    create("i7", Some(&img("i6")));
    assert!(!orphan.exists(), "{} outlived its folder", orphan.display());

    // `write-log stop` leaves nothing behind.
    let inst = instance(&w.join("writes"));
    sh(agent().args(["write-log", "stop", "--dir", log.path()]));
    assert!(!inst.exists(), "{} is still there", inst.display());
    drop(mnt);
    sh(Command::new("partx").arg("-d").arg(&lo.dev));
}

/// Writes the record cannot see — another loop device over the same file, as the whole-
/// machine job test edits its disks — show in the filesystem's superblock area: the
/// incremental falls back to the filesystem's change source and holds the new files.
#[test]
fn writes_through_another_device_are_caught_at_the_superblock() {
    if !(require_devices("writes_through_another_device_are_caught_at_the_superblock")
        && require_tool("mkfs.xfs", "writes through another device"))
    {
        return;
    }
    let work = tempdir();
    let w = work.path();
    let vol = w.join("vol");
    sparse_file(&vol, 320 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "xfs");
    edit_files(lo.path(), "xfs", w, |d| write_files(d, 0, 4));
    let log = WriteLog::new(&w.join("writes"));
    let img = |n: &str| {
        w.join(format!("{n}.hfi"))
            .to_str()
            .expect("path")
            .to_owned()
    };
    let create = |out: &str, base: Option<&str>| {
        let mut args = vec!["create", "--source", lo.path(), "--output", out];
        args.extend(["--write-log", log.path()]);
        if let Some(b) = base {
            args.extend(["--incremental", "--base", b]);
        }
        image_ok(&args)
    };
    create(&img("full"), None);
    let other = Loop::new(&vol);
    let want = edit_files(other.path(), "xfs", w, |d| write_files(d, 1, 4));
    drop(other);
    sh(Command::new("blockdev").args(["--flushbufs", lo.path()]));
    let inc = create(&img("inc"), Some(&img("full")));
    let pass = inc["changes"]["pass"].as_str().expect("pass");
    assert!(
        pass.starts_with("xfs inode change times (block writes traced by the agent not used: the xfs filesystem at offset 0 changed where no write was traced"),
        "{inc}"
    );
    let to = w.join("restored");
    image_ok(&[
        "restore",
        "--image",
        &img("inc"),
        "--target",
        to.to_str().expect("path"),
    ]);
    let copy = Loop::new(&to);
    assert_eq!(read_files(copy.path(), "xfs", w), want);
}
