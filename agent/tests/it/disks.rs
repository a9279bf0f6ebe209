//! Forensic images and whole disks with a partition table.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use holdfast_testkit::devices::*;

fn read_range(path: &Path, start: u64, len: u64) -> Vec<u8> {
    let mut f = File::open(path).expect("open");
    f.seek(SeekFrom::Start(start)).expect("seek");
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).expect("read");
    buf
}

#[test]
fn forensic_restore_is_byte_identical() {
    if !require_devices("forensic_restore_is_byte_identical") {
        return;
    }
    let t = tempdir();
    let vol = t.path().join("vol.img");
    sparse_file(&vol, 48 << 20);
    {
        let lo = Loop::new(&vol);
        mkfs(lo.path(), "ext4");
        let m = Mounted::new(lo.path(), &t.path().join("mnt"), "rw");
        write_files(&m.dir, 0, 10);
        for i in 0..5 {
            let _ = std::fs::remove_file(m.dir.join(format!("r0/f{i}.bin")));
        }
    }
    // Leave recognisable bytes in free space too: forensic must keep them.
    let img = t.path().join("forensic.hfi");
    let s = image_ok(&[
        "create",
        "--source",
        vol.to_str().expect("p"),
        "--output",
        img.to_str().expect("p"),
        "--forensic",
    ]);
    assert_eq!(s["coverage"], "forensic");
    let out = t.path().join("restored.img");
    image_ok(&[
        "restore",
        "--image",
        img.to_str().expect("p"),
        "--target",
        out.to_str().expect("p"),
    ]);
    assert!(
        std::fs::read(&vol).expect("vol") == std::fs::read(&out).expect("out"),
        "forensic restore differs"
    );

    // An unknown filesystem falls back to forensic with a warning.
    let raw = t.path().join("raw.img");
    std::fs::write(&raw, noise(6 << 20, 5)).expect("raw");
    let img2 = t.path().join("raw.hfi");
    let s = image_ok(&[
        "create",
        "--source",
        raw.to_str().expect("p"),
        "--output",
        img2.to_str().expect("p"),
    ]);
    assert_eq!(s["coverage"], "forensic");
    assert!(
        s["warnings"].to_string().contains("unknown filesystem"),
        "{s}"
    );
}

#[test]
fn gpt_disk_with_ext4_fat_and_unknown_partitions_round_trips() {
    if !require_devices("gpt_disk_with_ext4_fat_and_unknown_partitions_round_trips") {
        return;
    }
    let t = tempdir();
    let disk = t.path().join("disk.img");
    sparse_file(&disk, 200 << 20);
    let (table, parts) = partition_disk(
        &disk,
        "label: gpt\nsize=64MiB, type=L, name=root\nsize=48MiB, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=data\nsize=24MiB, type=L, name=blob\nsize=32MiB, type=S, name=swap\n",
    );
    assert_eq!(parts.len(), 4);
    let mut want = Vec::new();
    for (i, fs) in ["ext4", "vfat"].iter().enumerate() {
        let lo = Loop::over(&disk, parts[i]);
        mkfs(lo.path(), fs);
        want.push(edit_files(lo.path(), fs, t.path(), |d| {
            write_files(d, i as u64, 8)
        }));
    }
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .expect("disk");
        f.seek(SeekFrom::Start(parts[2].0)).expect("seek");
        f.write_all(&noise(parts[2].1 as usize, 9)).expect("blob");
    }
    // A swap area with what a running system paged out to it: only its header is kept.
    let swap_uuid = "8c3b2a1d-4e5f-4a6b-9c7d-0e1f2a3b4c5d";
    {
        let lo = Loop::over(&disk, parts[3]);
        sh(Command::new("mkswap").args(["-L", "hfswap", "-U", swap_uuid, lo.path()]));
    }
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .expect("disk");
        f.seek(SeekFrom::Start(parts[3].0 + (1 << 20)))
            .expect("seek");
        f.write_all(&noise(16 << 20, 10)).expect("paged out");
    }
    let img = t.path().join("disk.hfi");
    let s = image_ok(&[
        "create",
        "--source",
        disk.to_str().expect("p"),
        "--output",
        img.to_str().expect("p"),
    ]);
    assert_eq!(s["coverage"], "used-sector");
    let info = image_ok(&["info", "--image", img.to_str().expect("p")]);
    let meta = &info["metadata"]["source"];
    assert_eq!(meta["kind"], "disk");
    assert_eq!(meta["partition_table"]["kind"], "gpt");
    assert_eq!(meta["partitions"][0]["filesystem"]["fs_type"], "ext4");
    assert_eq!(meta["partitions"][1]["filesystem"]["fs_type"], "fat32");
    assert_eq!(meta["partitions"][2]["method"], "forensic");
    assert_eq!(meta["partitions"][3]["filesystem"]["fs_type"], "swap");
    assert_eq!(meta["partitions"][3]["filesystem"]["used_bytes"], 4096);
    // Used-sector: far less read than the disk.
    assert!(s["read_bytes"].as_u64().expect("read") < (120 << 20), "{s}");

    // Mounted: a disk needs a partition named, and shows each one raw.
    let dir = t.path().join("mnt");
    std::fs::create_dir_all(&dir).expect("mount point");
    let (image_arg, dir_arg) = (img.to_str().expect("p"), dir.to_str().expect("p"));
    let whole = image(&["mount", "--image", image_arg, "--mountpoint", dir_arg]);
    assert_eq!(whole.code, 5, "{}", whole.stderr);
    assert!(
        whole
            .stderr
            .contains("--partition (1 (ext4), 2 (fat32), 3 (no filesystem), 4 (swap))"),
        "{}",
        whole.stderr
    );
    let (child, answer) = crate::mount::mount(&[
        "--image",
        image_arg,
        "--mountpoint",
        dir_arg,
        "--partition",
        "1",
    ]);
    assert_eq!(answer["filesystem"], "ext4", "{answer}");
    assert_eq!(checksums(&dir), want[0]);
    crate::mount::dismount_released(&dir, child, &answer);
    let (child, answer) =
        crate::mount::mount(&["--image", image_arg, "--mountpoint", dir_arg, "--raw"]);
    assert_eq!(
        answer["files"],
        serde_json::json!([
            "disk.img",
            "part1.img",
            "part2.img",
            "part3.img",
            "part4.img"
        ]),
        "{answer}"
    );
    let sizes: Vec<u64> = (1..=4)
        .map(|n| {
            std::fs::metadata(dir.join(format!("part{n}.img")))
                .expect("part")
                .len()
        })
        .collect();
    assert_eq!(sizes, parts.iter().map(|p| p.1).collect::<Vec<_>>());
    assert_eq!(
        std::fs::read(dir.join("part3.img")).expect("part3"),
        noise(parts[2].1 as usize, 9),
        "the unknown partition, read through the image"
    );
    crate::mount::dismount_released(&dir, child, &answer);

    let out = t.path().join("restored.img");
    image_ok(&[
        "restore",
        "--image",
        img.to_str().expect("p"),
        "--target",
        out.to_str().expect("p"),
    ]);
    let d1 = sh(Command::new("sfdisk").arg("--dump").arg(&disk)).stdout;
    let d2 = sh(Command::new("sfdisk").arg("--dump").arg(&out)).stdout;
    assert_eq!(
        String::from_utf8_lossy(&d1).replace(disk.to_str().expect("p"), "X"),
        String::from_utf8_lossy(&d2).replace(out.to_str().expect("p"), "X")
    );
    // The backup GPT at the end of the disk comes back too.
    assert_eq!(
        read_range(&disk, (200 << 20) - 33 * 512, 33 * 512),
        read_range(&out, (200 << 20) - 33 * 512, 33 * 512)
    );
    for (i, fs) in ["ext4", "vfat"].iter().enumerate() {
        let lo = Loop::over(&out, parts[i]);
        fsck_clean(lo.path(), fs);
        assert_eq!(
            read_files(lo.path(), fs, t.path()),
            want[i],
            "partition {} differs",
            i + 1
        );
    }
    assert!(
        read_range(&disk, parts[2].0, parts[2].1) == read_range(&out, parts[2].0, parts[2].1),
        "unknown partition differs"
    );
    // The swap area comes back as the same one: what /etc/fstab names it by.
    let lo = Loop::over(&out, parts[3]);
    let said = sh(Command::new("blkid").args(["-p", "-o", "export", lo.path()]));
    let said = String::from_utf8_lossy(&said.stdout).into_owned();
    for want in ["TYPE=swap", "LABEL=hfswap", &format!("UUID={swap_uuid}")] {
        assert!(said.lines().any(|l| l == want), "{want} in {said}");
    }
    drop(lo);

    // One partition alone, onto a device of its own (a partition of another disk), and the
    // blob partition into a new file: each equal to the source's.
    let one = t.path().join("one.img");
    sparse_file(&one, parts[0].1 + (4 << 20));
    let one_lo = Loop::new(&one);
    let r = image_ok(&[
        "restore",
        "--image",
        img.to_str().expect("p"),
        "--partition",
        "1",
        "--target",
        one_lo.path(),
    ]);
    assert_eq!(r["source_size"], parts[0].1, "{r}");
    fsck_clean(one_lo.path(), "ext4");
    assert_eq!(read_files(one_lo.path(), "ext4", t.path()), want[0]);
    drop(one_lo);
    let blob = t.path().join("blob.img");
    image_ok(&[
        "restore",
        "--image",
        img.to_str().expect("p"),
        "--partition",
        "3",
        "--target",
        blob.to_str().expect("p"),
    ]);
    assert!(
        std::fs::read(&blob).expect("blob") == read_range(&disk, parts[2].0, parts[2].1),
        "partition 3 restored alone differs"
    );
    // As virtual disks, read back by qemu-img: the whole disk as VHDX (its exact size, so
    // the backup GPT stays at the end), partition 1 as qcow2 and the blob partition as VHD
    // (rounded up to its geometry with zeros).
    if require_tool("qemu-img", "virtual disks of a disk image") {
        let to_raw = |disk_file: &Path, format: &str| {
            let raw = t.path().join(format!("back-{format}.img"));
            sh(Command::new("qemu-img")
                .args(["convert", "-f", format, "-O", "raw"])
                .arg(disk_file)
                .arg(&raw));
            raw
        };
        let convert = |format: &str, partition: Option<&str>| {
            let out = t
                .path()
                .join(format!("conv-{}.{format}", partition.unwrap_or("all")));
            let mut args = vec![
                "convert",
                "--image",
                img.to_str().expect("p"),
                "--output",
                out.to_str().expect("p"),
                "--format",
                format,
            ];
            if let Some(n) = partition {
                args.extend_from_slice(&["--partition", n]);
            }
            image_ok(&args);
            out
        };
        let vhdx = convert("vhdx", None);
        let back = to_raw(&vhdx, "vhdx");
        assert_eq!(std::fs::metadata(&back).expect("back").len(), 200 << 20);
        let d3 = sh(Command::new("sfdisk").arg("--dump").arg(&back)).stdout;
        assert_eq!(
            String::from_utf8_lossy(&d1).replace(disk.to_str().expect("p"), "X"),
            String::from_utf8_lossy(&d3).replace(back.to_str().expect("p"), "X")
        );
        sh(Command::new("sfdisk").arg("--verify").arg(&back));
        let lo = Loop::over(&back, parts[1]);
        fsck_clean(lo.path(), "vfat");
        assert_eq!(read_files(lo.path(), "vfat", t.path()), want[1]);
        drop(lo);
        let qcow = convert("qcow2", Some("1"));
        let back = to_raw(&qcow, "qcow2");
        assert_eq!(std::fs::metadata(&back).expect("back").len(), parts[0].1);
        let lo = Loop::new(&back);
        fsck_clean(lo.path(), "ext4");
        assert_eq!(read_files(lo.path(), "ext4", t.path()), want[0]);
        drop(lo);
        let vhd = convert("vhd", Some("3"));
        let back = std::fs::read(to_raw(&vhd, "vpc")).expect("back");
        let len = usize::try_from(parts[2].1).expect("len");
        assert!(
            back[..len] == noise(len, 9)[..] && back[len..].iter().all(|&b| b == 0),
            "partition 3 as VHD differs"
        );
        let r = image(&[
            "convert",
            "--image",
            img.to_str().expect("p"),
            "--output",
            t.path().join("x.hfi").to_str().expect("p"),
            "--partition",
            "1",
        ]);
        assert_eq!(r.code, 5, "{}", r.stderr);
        assert!(
            r.stderr.contains("--partition takes one partition out"),
            "{}",
            r.stderr
        );
    }

    // A device smaller than the partition is refused; so is a partition the disk has not.
    let small = t.path().join("small.img");
    sparse_file(&small, parts[0].1 - (1 << 20));
    let small_lo = Loop::new(&small);
    let r = image(&[
        "restore",
        "--image",
        img.to_str().expect("p"),
        "--partition",
        "1",
        "--target",
        small_lo.path(),
    ]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    let r = image(&[
        "restore",
        "--image",
        img.to_str().expect("p"),
        "--partition",
        "9",
        "--target",
        small_lo.path(),
    ]);
    drop(small_lo);
    assert!(r.stderr.contains("no partition 9"), "{}", r.stderr);

    // Onto a larger disk: the backup GPT moves to the new end and the table verifies clean.
    let big = t.path().join("bigger.img");
    sparse_file(&big, 256 << 20);
    let r = image_ok(&[
        "restore",
        "--image",
        img.to_str().expect("p"),
        "--target",
        big.to_str().expect("p"),
    ]);
    assert_eq!(r["gpt_backup_moved_to_end"], true, "{r}");
    assert_eq!(&read_range(&big, (256 << 20) - 512, 8), b"EFI PART");
    let verify = Command::new("sfdisk")
        .arg("--verify")
        .arg(&big)
        .output()
        .expect("sfdisk");
    let text = String::from_utf8_lossy(&verify.stdout).to_string()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !text.contains("mismatch") && !text.contains("corrupt"),
        "{text}"
    );
    let d3 = String::from_utf8_lossy(&sh(Command::new("sfdisk").arg("--json").arg(&big)).stdout)
        .to_string();
    let t3: serde_json::Value = serde_json::from_str(&d3).expect("json");
    assert_eq!(
        t3["partitiontable"]["partitions"],
        table["partitiontable"]["partitions"]
            .as_array()
            .map(|v| serde_json::Value::Array(
                v.iter()
                    .map(|p| {
                        let mut p = p.clone();
                        p["node"] = serde_json::Value::String(
                            p["node"]
                                .as_str()
                                .unwrap_or("")
                                .replace(disk.to_str().expect("p"), big.to_str().expect("p")),
                        );
                        p
                    })
                    .collect()
            ))
            .unwrap_or_default()
    );
    let lo = Loop::over(&big, parts[0]);
    fsck_clean(lo.path(), "ext4");
}

#[test]
fn mbr_disk_with_logical_partitions_round_trips() {
    if !require_devices("mbr_disk_with_logical_partitions_round_trips") {
        return;
    }
    let t = tempdir();
    let disk = t.path().join("disk.img");
    sparse_file(&disk, 160 << 20);
    let (table, parts) = partition_disk(
        &disk,
        "label: dos\nsize=48MiB, type=83\ntype=5\nsize=40MiB, type=c\nsize=40MiB, type=83\n",
    );
    // Data partitions: 1 (primary), 5 and 6 (logicals); 2 is the extended container.
    assert_eq!(parts.len(), 3, "{table}");
    let fss = ["ext4", "vfat", "ext4"];
    let mut want = Vec::new();
    for (i, fs) in fss.iter().enumerate() {
        let lo = Loop::over(&disk, parts[i]);
        mkfs(lo.path(), fs);
        want.push(edit_files(lo.path(), fs, t.path(), |d| {
            write_files(d, i as u64 + 10, 6)
        }));
    }
    let img = t.path().join("mbr.hfi");
    image_ok(&[
        "create",
        "--source",
        disk.to_str().expect("p"),
        "--output",
        img.to_str().expect("p"),
    ]);
    let info = image_ok(&["info", "--image", img.to_str().expect("p")]);
    let meta = &info["metadata"]["source"];
    assert_eq!(meta["partition_table"]["kind"], "mbr");
    let numbers: Vec<u64> = meta["partitions"]
        .as_array()
        .expect("parts")
        .iter()
        .filter_map(|p| p["number"].as_u64())
        .collect();
    assert_eq!(numbers, vec![1, 5, 6]);
    let out = t.path().join("restored.img");
    image_ok(&[
        "restore",
        "--image",
        img.to_str().expect("p"),
        "--target",
        out.to_str().expect("p"),
    ]);
    assert_eq!(
        read_range(&disk, 0, 512),
        read_range(&out, 0, 512),
        "MBR differs"
    );
    for (i, fs) in fss.iter().enumerate() {
        // The EBR in front of each logical partition comes back too (it is in a gap).
        assert_eq!(
            read_range(&disk, parts[i].0 - 512, 512),
            read_range(&out, parts[i].0 - 512, 512)
        );
        let lo = Loop::over(&out, parts[i]);
        fsck_clean(lo.path(), fs);
        assert_eq!(
            read_files(lo.path(), fs, t.path()),
            want[i],
            "partition {} differs",
            i + 1
        );
    }
}
