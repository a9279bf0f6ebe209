//! Whole-machine jobs: several disks imaged in one run through an enrolled agent, one
//! report listing every image, a chain and retention per disk, and each disk restoring to
//! an equal one (table, filesystem checks, files).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::fleet::{agent_bin, Fleet};
use holdfast_testkit::devices::{
    edit_files, fsck_clean, image_ok, mkfs, noise, partition_disk, partitions_of, read_files,
    require_devices, require_tool, sh, sparse_file, tempdir, write_files, Loop,
};

/// A disk's files, by partition (in table order).
type DiskFiles = Vec<BTreeMap<String, String>>;

/// Edit the filesystems of the partitions of `disk` (named `fs`), each by `edit`; their
/// files after.
fn edit_disk(disk: &Path, fs: &[&str], work: &Path, edit: impl Fn(usize, &Path)) -> DiskFiles {
    let parts = partitions_of(disk).1;
    fs.iter()
        .zip(parts)
        .enumerate()
        .map(|(i, (fs, range))| {
            let part = Loop::over(disk, range);
            edit_files(part.path(), fs, work, |d| edit(i, d))
        })
        .collect()
}

/// The table of `disk` without the device names (`sfdisk --json`).
fn table(disk: &Path) -> Value {
    let mut t = partitions_of(disk).0;
    t["partitiontable"]["device"] = Value::Null;
    for p in t["partitiontable"]["partitions"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        p["node"] = Value::Null;
    }
    t
}

/// Restore `image` onto a fresh disk of `disk`'s size and check it equals `disk`: table,
/// filesystem checks and files.
fn restores_equal(image: &Path, disk: &Path, fs: &[&str], want: &DiskFiles, work: &Path) {
    let size = std::fs::metadata(disk).expect("disk").len();
    let copy = work.join("restored.img");
    let _ = std::fs::remove_file(&copy);
    sparse_file(&copy, size);
    {
        let lo = Loop::new(&copy);
        image_ok(&[
            "restore",
            "--image",
            image.to_str().expect("path"),
            "--target",
            lo.path(),
        ]);
    }
    assert_eq!(table(&copy), table(disk), "{} restored", image.display());
    let parts = partitions_of(&copy).1;
    for ((fs, range), files) in fs.iter().zip(parts).zip(want) {
        let part = Loop::over(&copy, range);
        fsck_clean(part.path(), fs);
        assert_eq!(
            &read_files(part.path(), fs, work),
            files,
            "{fs} of {}",
            image.display()
        );
    }
}

#[test]
fn a_whole_machine_job_images_every_disk_into_one_report_with_a_chain_each() {
    let test = "whole_machine_job";
    if agent_bin().is_none() || !require_devices(test) || !require_tool("mkfs.xfs", test) {
        return;
    }
    let t = tempdir();
    let work = t.path();
    let fleet = Fleet::start(work);
    let api = &fleet.api;

    // Disk 1: GPT with a FAT32 EFI partition and an ext4 root; disk 2: GPT with XFS.
    let disk1 = work.join("disk1.img");
    sparse_file(&disk1, 128 << 20);
    let (_, p1) = partition_disk(
        &disk1,
        "label: gpt\nsize=48MiB, type=U, name=efi\ntype=L, name=root\n",
    );
    let disk2 = work.join("disk2.img");
    sparse_file(&disk2, 340 << 20);
    let (_, p2) = partition_disk(&disk2, "label: gpt\ntype=L, name=data\n");
    let (fs1, fs2) = (["vfat", "ext4"], ["xfs"]);
    for (disk, parts, fs) in [(&disk1, &p1, &fs1[..]), (&disk2, &p2, &fs2[..])] {
        for (range, fs) in parts.iter().zip(fs) {
            mkfs(Loop::over(disk, *range).path(), fs);
        }
    }
    let fill = |round: u64| {
        move |i: usize, d: &Path| {
            if i == 0 && round == 0 {
                std::fs::create_dir_all(d.join("EFI/BOOT")).expect("EFI dir");
                std::fs::write(d.join("EFI/BOOT/BOOTX64.EFI"), noise(300_000, 3)).expect("efi");
            } else {
                write_files(d, round + i as u64, 4);
            }
        }
    };
    edit_disk(&disk1, &fs1, work, fill(0));
    edit_disk(&disk2, &fs2, work, fill(0));
    let l1 = Loop::new(&disk1);
    let l2 = Loop::new(&disk2);

    let images = work.join("images");
    std::fs::create_dir_all(&images).expect("images");
    let target = api.call(
        "POST",
        "/api/v1/targets",
        Some(&json!({"name": "local", "url": images.display().to_string()}).to_string()),
    );
    // Malformed: a source named twice, or all disks beside named ones.
    for (spec, says) in [
        (json!({"sources": [l1.path(), l1.path()]}), "named twice"),
        (
            json!({"source": l1.path(), "all_disks": {}}),
            "leave source and sources empty",
        ),
    ] {
        let mut spec = spec;
        spec["agents"] = json!([fleet.agent_id]);
        spec["target_id"] = target["id"].clone();
        let r = api.call(
            "POST",
            "/api/v1/jobs",
            Some(&json!({"name": "bad", "spec": spec}).to_string()),
        );
        assert_eq!(r["error"]["code"], "invalid", "{r}");
        assert!(r.to_string().contains(says), "{r}");
    }
    // Chains of two images per disk; keep one chain per disk.
    let job = api.call(
        "POST",
        "/api/v1/jobs",
        Some(
            &json!({"name": "machine", "spec": {
                "agents": [fleet.agent_id],
                "sources": [l1.path(), l2.path()],
                "target_id": target["id"],
                "name_template": "pc-r$TEMPL:(RunId).hfi",
                "method": "incremental_chain",
                "chain_length": 2,
                "retention": {"keep_last": 1},
                "verify": true,
            }})
            .to_string(),
        ),
    );
    let job_id = job["id"].as_i64().unwrap_or_else(|| panic!("{job}"));
    // The wizard's preview names the first source's image and counts the sources.
    let preview = api.call(
        "POST",
        "/api/v1/jobs/preview",
        Some(&json!({"spec": job["spec"]}).to_string()),
    );
    assert_eq!(preview["sources"], 2, "{preview}");
    let first = format!("-{}.hfi", l1.path().trim_start_matches("/dev/"));
    assert!(
        preview["name"]
            .as_str()
            .is_some_and(|n| n.ends_with(&first)),
        "{preview}"
    );
    let checked = api.call("POST", &format!("/api/v1/jobs/{job_id}/check"), None);
    let sources: Vec<&str> = checked["agents"][0]["result"]["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("{checked}"))
        .iter()
        .filter(|c| c["check"] == "source")
        .map(|c| c["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(sources, ["ok", "ok"], "{checked}");

    // Run 1: a full image of each disk, in one report.
    let run1 = fleet.run(job_id);
    let (r1, _) = fleet.finish(run1);
    assert_eq!(r1["status"], "successful", "{r1}");
    let imaged = |r: &Value| -> Vec<(String, String, String, Option<String>)> {
        r["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|i| {
                (
                    i["source"].as_str().expect("source").to_owned(),
                    i["name"].as_str().expect("name").to_owned(),
                    i["method"].as_str().expect("method").to_owned(),
                    i["base"].as_str().map(str::to_owned),
                )
            })
            .collect()
    };
    let dev = |l: &Loop| l.path().trim_start_matches("/dev/").to_owned();
    let full = imaged(&r1);
    assert_eq!(
        full,
        [
            (
                l1.path().to_owned(),
                format!("pc-r{run1}-{}.hfi", dev(&l1)),
                "full".to_owned(),
                None
            ),
            (
                l2.path().to_owned(),
                format!("pc-r{run1}-{}.hfi", dev(&l2)),
                "full".to_owned(),
                None
            ),
        ],
        "{r1}"
    );
    let created: Vec<&Value> = r1["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["title"] == "Image created")
        .collect();
    assert_eq!(created.len(), 2, "{r1}");
    assert!(
        r1.to_string()
            .contains("2 sources, imaged one after another"),
        "{r1}"
    );
    // Disks are not device-mapper devices: each is held on its own, and the report says so.
    let together = r1["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["title"] == "Held together"))
        .unwrap_or_else(|| panic!("no 'Held together' step: {r1}"));
    assert!(
        together["detail"].as_str().is_some_and(|d| d
            .starts_with("no two sources could be held at one instant")
            && d.contains("held on its own")),
        "{together}"
    );

    // Run 2: each disk's increment on its own full image. The disks' loop devices stay
    // attached (the job names them; a new one might get another name): what they cached
    // before the edits goes.
    let want1 = edit_disk(&disk1, &fs1, work, fill(10));
    let want2 = edit_disk(&disk2, &fs2, work, fill(10));
    for l in [&l1, &l2] {
        sh(Command::new("blockdev").args(["--flushbufs", l.path()]));
    }
    let run2 = fleet.run(job_id);
    let (r2, _) = fleet.finish(run2);
    assert_eq!(r2["status"], "successful", "{r2}");
    let incr = imaged(&r2);
    assert_eq!(incr.len(), 2, "{r2}");
    for ((src, _, method, base), (full_src, full_name, _, _)) in incr.iter().zip(&full) {
        assert_eq!(src, full_src, "{r2}");
        assert_eq!(method, "incremental", "{r2}");
        assert_eq!(base.as_ref(), Some(full_name), "{r2}");
    }
    // Both disks restore, through their chains, to equal disks.
    restores_equal(&images.join(&incr[0].1), &disk1, &fs1, &want1, work);
    restores_equal(&images.join(&incr[1].1), &disk2, &fs2, &want2, work);

    // Run 3 starts a new chain on each disk; retention then lets each disk's first go.
    let run3 = fleet.run(job_id);
    let (r3, _) = fleet.finish(run3);
    assert_eq!(r3["status"], "successful", "{r3}");
    assert!(imaged(&r3).iter().all(|i| i.2 == "full"), "{r3}");
    let mut deleted: Vec<&str> = r3["deleted"]
        .as_array()
        .expect("deleted")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    deleted.sort_unstable();
    let mut first_chains: Vec<&str> = full.iter().chain(&incr).map(|i| i.1.as_str()).collect();
    first_chains.sort_unstable();
    assert_eq!(deleted, first_chains, "{r3}");
    let mut left: Vec<String> = std::fs::read_dir(&images)
        .expect("images")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut newest: Vec<String> = imaged(&r3).into_iter().map(|i| i.1).collect();
    newest.sort();
    assert_eq!(left, newest);

    // The job's page says what it images; the agent page offers a whole-machine job.
    let page = work.join("job.html");
    assert_eq!(api.fetch(&format!("/jobs/{job_id}"), &page, &[]), 200);
    let html = std::fs::read_to_string(&page).expect("page");
    assert!(
        html.contains(&format!("{}, {}", l1.path(), l2.path())),
        "{html}"
    );
    let agent_page = work.join("agent.html");
    assert_eq!(
        api.fetch(&format!("/agents/{}", fleet.agent_id), &agent_page, &[]),
        200
    );
    let html = std::fs::read_to_string(&agent_page).expect("page");
    assert!(html.contains("whole_machine=true"), "{html}");
    let wizard = work.join("wizard.html");
    assert_eq!(
        api.fetch(
            &format!("/jobs/new?agent={}&whole_machine=true", fleet.agent_id),
            &wizard,
            &[]
        ),
        200
    );
    let html = std::fs::read_to_string(&wizard).expect("page");
    assert!(html.contains("Whole machine "), "{html}");

    // "All disks" is read from the agent's inventory when the run starts: with every disk
    // of this machine left out, "run now" is refused saying so.
    let agent = api.call("GET", &format!("/api/v1/agents/{}", fleet.agent_id), None);
    let disks: Vec<&str> = agent["inventory"]["disks"]
        .as_array()
        .unwrap_or_else(|| panic!("{agent}"))
        .iter()
        .filter(|d| d["backing"].is_null())
        .filter_map(|d| d["name"].as_str())
        .collect();
    let none = api.call(
        "POST",
        "/api/v1/jobs",
        Some(
            &json!({"name": "no disks", "spec": {
                "agents": [fleet.agent_id],
                "all_disks": {"include_removable": true, "exclude": disks},
                "target_id": target["id"],
            }})
            .to_string(),
        ),
    );
    let none_id = none["id"].as_i64().unwrap_or_else(|| panic!("{none}"));
    let r = api.call("POST", &format!("/api/v1/jobs/{none_id}/run"), None);
    assert_eq!(r["error"]["code"], "invalid", "{r}");
    assert!(r.to_string().contains("'all disks' names no disk"), "{r}");
}
