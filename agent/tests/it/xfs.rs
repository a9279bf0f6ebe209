//! XFS volumes, imaged by their used blocks: clean, frozen while a writer runs (its log is
//! then "covered"), and refused to sector-by-sector when its log holds changes not yet in
//! place (a crash).

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use holdfast_testkit::devices::*;

/// Restore `image` into a new file of `size` bytes and mount it (which replays what the log
/// holds, as the first mount of a restored volume does); the checksums of its files, then
/// `xfs_repair -n` must find it clean.
fn restore_and_check(
    image: &str,
    size: u64,
    work: &Path,
    name: &str,
) -> std::collections::BTreeMap<String, String> {
    let copy = work.join(format!("{name}.img"));
    sparse_file(&copy, size);
    let copy = copy.to_str().expect("path").to_owned();
    image_ok(&["restore", "--image", image, "--target", &copy]);
    let sums = {
        // The original may still be mounted: same UUID.
        let m = Mounted::new(&copy, &work.join(format!("{name}-mnt")), "loop,nouuid");
        checksums(&m.dir)
    };
    let repair = sh(Command::new("xfs_repair").args(["-n", &copy]));
    assert!(repair.status.success());
    sums
}

#[test]
fn xfs_is_imaged_by_its_used_blocks_when_clean_or_frozen_and_whole_when_its_log_is_dirty() {
    if !require_devices("xfs") || !require_tool("mkfs.xfs", "xfs") {
        return;
    }
    let t = tempdir();
    let work = t.path();
    let size = 320u64 << 20;
    let vol = work.join("vol.img");
    sparse_file(&vol, size);
    let lo = Loop::new(&vol);
    sh(Command::new("mkfs.xfs").args(["-q", "-f", "-L", "hfxfs", lo.path()]));
    let m = Mounted::new(lo.path(), &work.join("mnt"), "rw");
    write_files(&m.dir, 0, 16);
    std::fs::write(m.dir.join("noise.bin"), noise(14 << 20, 7)).expect("noise");
    sh(&mut Command::new("sync"));

    // Mounted, with a writer that fsyncs each file: frozen for the image (the default).
    let load = m.dir.join("load");
    std::fs::create_dir(&load).expect("load dir");
    let mut written = 0;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (load, stop) = (load.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut f = std::fs::File::create(load.join(format!("w{n}"))).expect("create");
                f.write_all(&noise(8 << 10, n)).expect("write");
                f.sync_all().expect("fsync");
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = checksums(&m.dir);
    let frozen = work.join("frozen.hfi");
    let frozen = frozen.to_str().expect("path");
    let s = image_ok(&["create", "--source", lo.path(), "--output", frozen]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    written += writer.join().expect("writer");
    assert!(written > 0);
    assert!(
        s["consistency"]
            .as_str()
            .is_some_and(|c| c.starts_with("frozen")),
        "{s}"
    );
    assert_eq!(s["filesystem"], "xfs", "{s}");
    assert_eq!(s["coverage"], "used-sector", "{s}");
    assert_eq!(s["warnings"], serde_json::json!([]), "{s}");
    assert!(s["read_bytes"].as_u64().expect("read") < size / 2, "{s}");
    let got = restore_and_check(frozen, size, work, "frozen");
    for (path, sum) in &before {
        // Every file complete before the image began is there, whole.
        assert_eq!(got.get(path), Some(sum), "{path}");
    }

    // Unmounted after a clean unmount.
    let want = checksums(&m.dir);
    drop(m);
    let clean = work.join("clean.hfi");
    let clean = clean.to_str().expect("path");
    let s = image_ok(&["create", "--source", lo.path(), "--output", clean]);
    assert_eq!(s["consistency"], "unmounted", "{s}");
    assert_eq!(s["coverage"], "used-sector", "{s}");
    assert_eq!(restore_and_check(clean, size, work, "clean"), want);

    // Shut down with changes in its log (as a crash leaves it): imaged whole, with a
    // warning that says why, and the restored volume replays its log.
    let m = Mounted::new(lo.path(), &work.join("mnt"), "rw");
    let mut f = std::fs::File::create(m.dir.join("last.bin")).expect("create");
    f.write_all(&noise(1 << 20, 11)).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    let want = checksums(&m.dir);
    sh(Command::new("xfs_io")
        .args(["-x", "-c", "shutdown -f"])
        .arg(&m.dir));
    drop(m);
    let dirty = work.join("dirty.hfi");
    let dirty = dirty.to_str().expect("path");
    let s = image_ok(&["create", "--source", lo.path(), "--output", dirty]);
    assert_eq!(s["coverage"], "forensic", "{s}");
    let warnings = s["warnings"].to_string();
    assert!(
        warnings.contains("a log holding changes not yet written in place"),
        "{s}"
    );
    assert_eq!(restore_and_check(dirty, size, work, "dirty"), want);
}

/// The older v4 format (16-byte tree block headers; this kernel cannot mount it, so it is
/// filled by `mkfs.xfs -p` and compared byte for byte), and the reverse-mapping and
/// reflink features (mounted, filled, and every file compared after the restore).
#[test]
fn xfs_v4_and_rmapbt_reflink_volumes_are_imaged_by_their_used_blocks() {
    if !require_devices("xfs variants") || !require_tool("mkfs.xfs", "xfs variants") {
        return;
    }
    let size = 320u64 << 20;
    for (name, options) in [
        ("v4", "crc=0,finobt=0,reflink=0,rmapbt=0"),
        ("rmap", "crc=1,rmapbt=1,reflink=1"),
    ] {
        let t = tempdir();
        let work = t.path();
        let vol = work.join("vol.img");
        sparse_file(&vol, size);
        let lo = Loop::new(&vol);
        let mut mkfs = Command::new("mkfs.xfs");
        mkfs.args(["-q", "-f", "-m", options]);
        let files = work.join("files");
        write_files(&files, 0, 40);
        if name == "v4" {
            // A prototype file: the root holds every file of `files/r0`.
            let mut proto = String::from("boot\n0 0\nd--755 0 0\n");
            for e in std::fs::read_dir(files.join("r0"))
                .expect("files")
                .flatten()
            {
                proto += &format!(
                    "{} ---644 0 0 {}\n",
                    e.file_name().to_string_lossy(),
                    e.path().display()
                );
            }
            proto += "$\n";
            let proto_file = work.join("proto");
            std::fs::write(&proto_file, proto).expect("proto");
            mkfs.arg("-p").arg(&proto_file);
        }
        sh(mkfs.arg(lo.path()));
        let want = (name != "v4").then(|| {
            let m = Mounted::new(lo.path(), &work.join("mnt"), "rw");
            write_files(&m.dir, 0, 40);
            std::fs::write(m.dir.join("noise.bin"), noise(9 << 20, 3)).expect("noise");
            // Fragment the free space: every other file removed.
            for i in (0..40).step_by(2) {
                std::fs::remove_file(m.dir.join(format!("r0/f{i}.bin"))).expect("remove");
            }
            checksums(&m.dir)
        });
        let image = work.join("x.hfi");
        let image = image.to_str().expect("path");
        let s = image_ok(&["create", "--source", lo.path(), "--output", image]);
        assert_eq!(s["coverage"], "used-sector", "{name}: {s}");
        let read = s["read_bytes"].as_u64().expect("read");
        assert!(
            read < size / 4 && read > 4 << 20,
            "{name}: the files, not the free space: {s}"
        );
        match want {
            Some(want) => assert_eq!(restore_and_check(image, size, work, name), want, "{name}"),
            None => {
                let copy = work.join("v4.img");
                sparse_file(&copy, size);
                let copy = copy.to_str().expect("path");
                image_ok(&["restore", "--image", image, "--target", copy]);
                sh(Command::new("xfs_repair").args(["-n", copy]));
                // Made on a zeroed volume, whatever was left out was zero: the restored
                // copy is the volume, byte for byte.
                sh(Command::new("cmp").arg(lo.path()).arg(copy));
            }
        }
    }
}
