//! Cloning from the console's API: a GPT disk copied onto a larger one through an enrolled
//! agent, as a run with a report, the target's name typed again; refusals change nothing.

use std::process::Command;

use serde_json::{json, Value};

use crate::fleet::{agent_bin, Fleet};
use holdfast_testkit::devices::{
    edit_files, fsck_clean, mkfs, noise, partition_disk, partitions_of, read_files,
    require_devices, sparse_file, tempdir, write_files, Loop,
};

#[test]
fn a_disk_is_cloned_onto_a_larger_one_through_the_api_and_grown() {
    if agent_bin().is_none() || !require_devices("clone_from_the_api") {
        return;
    }
    let t = tempdir();
    let work = t.path();
    let fleet = Fleet::start(work);
    let api = &fleet.api;

    let disk = work.join("disk.img");
    sparse_file(&disk, 128 << 20);
    let (_, parts) = partition_disk(
        &disk,
        "label: gpt\nsize=48MiB, type=U, name=efi\ntype=L, name=root\n",
    );
    let files: Vec<_> = parts
        .iter()
        .zip(["vfat", "ext4"])
        .map(|(range, fs)| {
            let part = Loop::over(&disk, *range);
            mkfs(part.path(), fs);
            edit_files(part.path(), fs, work, |d| write_files(d, 3, 5))
        })
        .collect();
    let target = work.join("target.img");
    // It held something else: old bytes at its head.
    std::fs::write(&target, noise(2 << 20, 5)).expect("old bytes");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .and_then(|f| f.set_len(200 << 20))
        .expect("target size");
    let small = work.join("small.img");
    sparse_file(&small, 64 << 20);
    let (src, dst, tiny) = (Loop::new(&disk), Loop::new(&target), Loop::new(&small));
    // The devices as the agent sees them now.
    let inv = api.call(
        "POST",
        &format!("/api/v1/agents/{}/inventory/refresh", fleet.agent_id),
        None,
    );
    assert!(inv["disks"].is_array(), "{inv}");

    let clone = |body: Value| {
        api.call(
            "POST",
            &format!("/api/v1/agents/{}/clone", fleet.agent_id),
            Some(&body.to_string()),
        )
    };
    let old_head = std::fs::read(&target).expect("target")[..1 << 20].to_vec();
    for (body, says) in [
        (
            json!({"source": src.path(), "target": dst.path(), "confirm": "/dev/sdq"}),
            "type the device name",
        ),
        (
            json!({"source": src.path(), "target": src.path(), "confirm": src.path()}),
            "both",
        ),
        (
            json!({"source": src.path(), "target": tiny.path(), "confirm": tiny.path()}),
            "choose a larger device",
        ),
        (
            json!({"source": "sda", "target": dst.path(), "confirm": dst.path()}),
            "source must be a device path",
        ),
    ] {
        let r = clone(body);
        assert_eq!(r["error"]["code"], "invalid", "{r}");
        assert!(r.to_string().contains(says), "{says}: {r}");
    }
    assert_eq!(
        std::fs::read(&target).expect("target")[..1 << 20],
        old_head[..],
        "a refused clone wrote to the target"
    );

    let started = clone(json!({
        "source": src.path(), "target": dst.path(), "confirm": dst.path(), "grow": true,
    }));
    let run = started["run"]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{started}"));
    let (report, _) = fleet.finish(run);
    assert_eq!(report["status"], "successful", "{report}");
    let text = report.to_string();
    assert!(
        text.contains("Cloned") && text.contains("partition 2 grown"),
        "{report}"
    );
    assert!(
        report["bytes_written"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    drop((src, dst, tiny));

    let verify = Command::new("sfdisk")
        .arg("--verify")
        .arg(&target)
        .output()
        .expect("sfdisk");
    assert!(verify.status.success(), "{verify:?}");
    let cloned = partitions_of(&target).1;
    assert_eq!(cloned[0], parts[0]);
    assert!(cloned[1].1 > parts[1].1 + (60 << 20), "{cloned:?}");
    for ((range, fs), want) in cloned.iter().zip(["vfat", "ext4"]).zip(&files) {
        let part = Loop::over(&target, *range);
        fsck_clean(part.path(), fs);
        assert_eq!(&read_files(part.path(), fs, work), want, "{fs}");
    }
    // The audit log names who cloned what.
    let audit = api.call("GET", "/api/v1/audit", None);
    assert!(audit.to_string().contains("clone_device"), "{audit}");
}
