//! Full → incremental → incremental → differential on ext4, FAT32, exFAT, NTFS, btrfs and
//! XFS; every point restores to a fresh device with a clean fsck and exactly the files of
//! that point (and, mounted with `image mount`, shows them), and a full image is at most 2 %
//! larger than the space the filesystem says it uses.

use std::collections::BTreeMap;
use std::path::Path;

use holdfast_testkit::devices::*;

/// The test volume's size: XFS needs 300 MiB at least.
fn vol_size(fs: &str) -> u64 {
    if fs == "xfs" {
        320 << 20
    } else {
        96 << 20
    }
}

fn change(mnt: &Path, round: u64) {
    write_files(mnt, round, 6);
    // Delete one older file and rewrite part of another in place.
    let _ = std::fs::remove_file(mnt.join("r0/f1.bin"));
    let p = mnt.join("r0/f2.bin");
    if let Ok(mut data) = std::fs::read(&p) {
        let n = data.len().min(5000);
        data[..n].copy_from_slice(&noise(n, 77 + round));
        std::fs::write(&p, data).expect("rewrite");
    }
}

fn restore_and_check(
    img: &Path,
    work: &Path,
    fs: &str,
    want: &BTreeMap<String, String>,
    extra: &[&str],
) {
    let target = work.join("restore.img");
    sparse_file(&target, vol_size(fs));
    let lo = Loop::new(&target);
    let mut args = vec![
        "restore",
        "--image",
        img.to_str().expect("path"),
        "--target",
        lo.path(),
    ];
    args.extend_from_slice(extra);
    image_ok(&args);
    fsck_clean(lo.path(), fs);
    assert_eq!(
        &read_files(lo.path(), fs, work),
        want,
        "files restored from {} differ",
        img.display()
    );
    drop(lo);
    std::fs::remove_file(target).expect("remove target");
}

fn scenario(fs: &str, extra_create: &[&str], extra_restore: &[&str]) {
    let t = tempdir();
    let work = t.path();
    let vol = work.join("vol.img");
    sparse_file(&vol, vol_size(fs));
    let lo = Loop::new(&vol);
    mkfs(lo.path(), fs);
    let imgs = work.join("images");
    std::fs::create_dir_all(&imgs).expect("images dir");
    let img = |n: &str| imgs.join(n).to_str().expect("path").to_owned();
    let mut states = Vec::new();

    let create = |out: &str, base: Option<(&str, &str)>| {
        let mut args = vec!["create", "--source", lo.path(), "--output", out];
        if let Some((flag, b)) = base {
            args.extend_from_slice(&[flag, "--base", b]);
        }
        args.extend_from_slice(extra_create);
        image_ok(&args)
    };

    states.push(edit_files(lo.path(), fs, work, |d| write_files(d, 0, 40)));
    let full = create(&img("full.hfi"), None);
    assert_eq!(full["coverage"], "used-sector", "{full}");
    if let Some(used) = fs_used_bytes(lo.path(), fs, work) {
        let size = full["image_bytes"].as_u64().expect("image bytes");
        assert!(
            size <= used + used / 50,
            "the full image of {fs} has {size} bytes, the filesystem uses {used}"
        );
    }
    for round in 1..=3 {
        states.push(edit_files(lo.path(), fs, work, |d| change(d, round)));
        let (out, base) = match round {
            1 => ("inc1.hfi", ("--incremental", img("full.hfi"))),
            2 => ("inc2.hfi", ("--incremental", img("inc1.hfi"))),
            _ => ("diff3.hfi", ("--differential", img("inc2.hfi"))),
        };
        let s = create(&img(out), Some((base.0, &base.1)));
        let stored = s["blocks"]["data"].as_u64().expect("data blocks");
        let full_stored = full["blocks"]["data"].as_u64().expect("data blocks");
        // Each mount writes to a new stretch of the XFS log: on a volume this small that
        // fixed cost is a large part of an increment.
        let share = if fs == "xfs" { 2 } else { 3 };
        assert!(
            stored * share < full_stored,
            "{out} stores {stored} blocks, the full {full_stored}"
        );
        assert!(s["blocks"]["inherited"].as_u64().expect("inherited") > 0);
    }
    // The differential is based on the full image, not on inc2.
    let info = image_ok(&["info", "--image", &img("diff3.hfi")]);
    assert_eq!(info["parent_id"], full["image_id"]);

    for (i, name) in ["full.hfi", "inc1.hfi", "inc2.hfi", "diff3.hfi"]
        .iter()
        .enumerate()
    {
        let v = image_ok(&["validate", "--image", &img(name)]);
        assert_eq!(v["report"]["damage"].as_array().map(Vec::len), Some(0));
        restore_and_check(&imgs.join(name), work, fs, &states[i], extra_restore);
    }

    // The middle point mounted through its filesystem's driver: exactly that point's files
    // (FAT left out: this kernel has no vfat driver).
    if fs != "vfat" {
        let dir = work.join("point-mnt");
        std::fs::create_dir_all(&dir).expect("mount point");
        let (child, answer) = crate::mount::mount(&[
            "--image",
            &img("inc1.hfi"),
            "--mountpoint",
            dir.to_str().expect("path"),
        ]);
        assert_eq!(checksums(&dir), states[1], "{fs} mounted from inc1.hfi");
        crate::mount::dismount_released(&dir, child, &answer);
    }

    // The middle point as virtual disks: clean for qemu-img, and read back by it, that
    // point's files with a clean fsck; unused space not stored.
    if require_tool("qemu-img", "virtual disk conversion") {
        let inc1 = img("inc1.hfi");
        for (format, qemu_format) in [("qcow2", "qcow2"), ("vhd", "vpc"), ("vhdx", "vhdx")] {
            let disk = img(&format!("inc1.{format}"));
            let mut cargs = vec!["convert", "--image", &inc1, "--output", &disk];
            cargs.extend_from_slice(&["--format", format]);
            cargs.extend_from_slice(extra_restore);
            let c = image_ok(&cargs);
            assert_eq!(c["format"], format, "{c}");
            assert!(
                c["file_bytes"].as_u64() < Some(vol_size(fs) / 2),
                "the {format} file is not sparse: {c}"
            );
            // qemu-img has no check for VHD.
            if format != "vhd" {
                sh(std::process::Command::new("qemu-img").args([
                    "check",
                    "-f",
                    qemu_format,
                    &disk,
                ]));
            }
            let raw = work.join("from-virtual-disk.img");
            sh(std::process::Command::new("qemu-img")
                .args(["convert", "-f", qemu_format, "-O", "raw", &disk])
                .arg(&raw));
            // A VHD is a whole number of its cylinders: what it adds past the volume is
            // zeros, cut here (NTFS looks for its backup boot sector at the device's end).
            let bytes = std::fs::read(&raw).expect("read back");
            let vol_len = usize::try_from(vol_size(fs)).expect("size");
            assert!(bytes.len() >= vol_len, "{format}: {} bytes", bytes.len());
            assert!(
                bytes[vol_len..].iter().all(|&b| b == 0),
                "{format}: data past the volume"
            );
            drop(bytes);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&raw)
                .and_then(|f| f.set_len(vol_size(fs)))
                .expect("cut");
            let lo = Loop::new(&raw);
            fsck_clean(lo.path(), fs);
            assert_eq!(
                read_files(lo.path(), fs, work),
                states[1],
                "{fs} from {format}"
            );
            drop(lo);
            std::fs::remove_file(&raw).expect("remove");
        }
    }

    // Merge the incremental chain into a new full image: same content as inc2.
    let inc2_name = img("inc2.hfi");
    let mut margs = vec!["merge", "--image", &inc2_name];
    let out = img("merged.hfi");
    margs.extend_from_slice(&["--output", &out]);
    margs.extend_from_slice(extra_restore);
    let merged = image_ok(&margs);
    let minfo = image_ok(&["info", "--image", &out]);
    assert_eq!(minfo["kind"], "full");
    let inc2 = image_ok(&["info", "--image", &img("inc2.hfi")]);
    assert_eq!(minfo["content_digest"], inc2["content_digest"], "{merged}");
    restore_and_check(Path::new(&out), work, fs, &states[2], extra_restore);

    // The whole chain validates; damage in the full image is found from the newest image.
    let v = image_ok(&["validate", "--image", &img("inc2.hfi"), "--chain"]);
    assert_eq!(v["chain"].as_array().map(Vec::len), Some(3), "{v}");
    let full_path = imgs.join("full.hfi");
    let mut bytes = std::fs::read(&full_path).expect("full");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&full_path, bytes).expect("write");
    let r = image(&["validate", "--image", &img("inc2.hfi"), "--chain"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(
        image(&["validate", "--image", &img("inc2.hfi")]).code,
        0,
        "the newest image alone is intact"
    );
}

#[test]
fn ext4_chain_full_incremental_differential() {
    if require_devices("ext4_chain_full_incremental_differential") {
        scenario("ext4", &[], &[]);
    }
}

#[test]
fn fat32_chain_full_incremental_differential() {
    if require_devices("fat32_chain_full_incremental_differential") {
        scenario("vfat", &[], &[]);
    }
}

#[test]
fn exfat_chain_full_incremental_differential() {
    let test = "exfat_chain_full_incremental_differential";
    if require_devices(test)
        && require_tool("mkfs.exfat", test)
        && require_tool("mount.exfat-fuse", test)
    {
        scenario("exfat", &[], &[]);
    }
}

#[test]
fn ntfs_chain_full_incremental_differential() {
    let test = "ntfs_chain_full_incremental_differential";
    if require_devices(test) && require_tool("mkntfs", test) && require_tool("ntfs-3g", test) {
        scenario("ntfs", &[], &[]);
    }
}

#[test]
fn btrfs_chain_full_incremental_differential() {
    let test = "btrfs_chain_full_incremental_differential";
    if require_devices(test) && require_tool("mkfs.btrfs", test) {
        scenario("btrfs", &[], &[]);
    }
}

#[test]
fn xfs_chain_full_incremental_differential() {
    let test = "xfs_chain_full_incremental_differential";
    if require_devices(test) && require_tool("mkfs.xfs", test) {
        scenario("xfs", &[], &[]);
    }
}

#[test]
fn ext4_chain_encrypted_and_split() {
    if !require_devices("ext4_chain_encrypted_and_split") {
        return;
    }
    let t = tempdir();
    let pw = t.path().join("pw");
    std::fs::write(&pw, "correct horse battery staple\n").expect("pw");
    let pw = pw.to_str().expect("path").to_owned();
    let create: Vec<&str> = vec![
        "--encrypt",
        "aes256",
        "--password-file",
        &pw,
        "--split",
        "5M",
    ];
    let restore: Vec<&str> = vec!["--password-file", &pw];
    scenario_with_pw(&create, &restore, &pw);
}

fn scenario_with_pw(create: &[&str], restore: &[&str], pw: &str) {
    // Same as `scenario`, but validation gets the password too.
    let t = tempdir();
    let work = t.path();
    std::fs::copy(pw, work.join("pw")).expect("copy pw");
    let vol = work.join("vol.img");
    sparse_file(&vol, vol_size("ext4"));
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    let imgs = work.join("images");
    std::fs::create_dir_all(&imgs).expect("images dir");
    let img = |n: &str| imgs.join(n).to_str().expect("path").to_owned();
    let mut states = Vec::new();
    states.push(edit_files(lo.path(), "ext4", work, |d| {
        write_files(d, 0, 40);
        std::fs::write(d.join("noise.bin"), noise(12 << 20, 3)).expect("noise");
    }));
    let mut a = vec!["create", "--source", lo.path(), "--output"];
    let full = img("full.hfi");
    a.push(&full);
    a.extend_from_slice(create);
    let s = image_ok(&a);
    assert!(
        s["parts"].as_u64().expect("parts") > 1,
        "expected a split image: {s}"
    );
    assert_eq!(s["encryption"], "aes256");
    states.push(edit_files(lo.path(), "ext4", work, |d| change(d, 1)));
    let inc = img("inc1.hfi");
    let mut a = vec![
        "create",
        "--source",
        lo.path(),
        "--output",
        &inc,
        "--incremental",
        "--base",
        &full,
    ];
    a.extend_from_slice(restore);
    let s = image_ok(&a);
    assert_eq!(
        s["encryption"], "aes256",
        "incrementals inherit the base's encryption"
    );
    for (i, name) in [&full, &inc].iter().enumerate() {
        let v = image_ok(&["validate", "--image", name, "--password-file", pw]);
        assert_eq!(v["report"]["level"], "full");
        let v = image_ok(&["validate", "--image", name]);
        assert_eq!(v["report"]["level"], "structure");
        let v = image_ok(&["validate", "--image", name, "--chain"]);
        assert_eq!(v["chain"].as_array().map(Vec::len), Some(i + 1), "{v}");
        restore_and_check(Path::new(name), work, "ext4", &states[i], restore);
    }
}
