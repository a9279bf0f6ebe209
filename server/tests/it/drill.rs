//! Restore drills, end to end with the real binaries: a job with a drill schedule images an
//! ext4 loop device (taking a sample of its files as held); the drill fires by itself,
//! restores the newest image into scratch space, checks it with `e2fsck`, mounts it, counts
//! its files, compares the sample, times it and deletes the scratch copy; the dashboard
//! shows the last drill. A filesystem damaged before imaging makes the next drill report
//! the checker's failure.

use std::process::Command;

use serde_json::{json, Value};

use crate::fleet::{agent_bin, wait_secs, Fleet};
use holdfast_testkit::devices::{
    edit_files, mkfs, require_devices, sh, sparse_file, tempdir, write_files, Loop,
};

/// The newest drill of `job` with an id above `after` once it ended: its full report.
fn drill_after(fleet: &Fleet, job: i64, after: i64) -> Value {
    let api = &fleet.api;
    let mut found = Value::Null;
    wait_secs("a restore drill to end", &fleet.log, 120, || {
        let page = api.call("GET", &format!("/api/v1/reports?job_id={job}"), None);
        found = page["items"]
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .find(|r| {
                        r["cause"] == "drill"
                            && r["id"].as_i64().unwrap_or(0) > after
                            && !matches!(r["status"].as_str(), Some("queued" | "running"))
                    })
                    .cloned()
            })
            .unwrap_or(Value::Null);
        !found.is_null()
    });
    api.call("GET", &format!("/api/v1/reports/{}", found["id"]), None)
}

#[test]
fn a_scheduled_drill_restores_checks_and_times_the_newest_image() {
    const TEST: &str = "restore_drills";
    if agent_bin().is_none() || !require_devices(TEST) {
        return;
    }
    let t = tempdir();
    let work = t.path();
    let fleet = Fleet::start(work);
    let api = &fleet.api;

    let vol = work.join("vol.img");
    sparse_file(&vol, 48 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    let files = edit_files(lo.path(), "ext4", work, |d| write_files(d, 0, 40));
    let store = work.join("store");
    let scratch = work.join("scratch");
    std::fs::create_dir_all(&store).expect("store");
    let target = api.call(
        "POST",
        "/api/v1/targets",
        Some(&json!({"name": "local", "url": store}).to_string()),
    );
    let mut spec = json!({
        "agents": [fleet.agent_id],
        "source": lo.path(),
        "target_id": target["id"],
        "name_template": "d-$TEMPL:(RunId).hfi",
        "encryption": "aes128",
        "drill": {
            "schedule": {"kind": "cron", "expression": "*/3 * * * * *"},
            "scratch_dir": scratch,
        },
    });
    let job = api.call(
        "POST",
        "/api/v1/jobs",
        Some(&json!({"name": "drilled", "spec": spec, "password": "drill pw"}).to_string()),
    );
    let job_id = job["id"].as_i64().unwrap_or_else(|| panic!("{job}"));
    let (first, _) = fleet.finish(fleet.run(job_id));
    assert_eq!(first["status"], "successful", "{first}");
    let sample = first["images"][0]["sample"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        sample.len() >= 10,
        "a sample of the source's files: {first}"
    );

    // The drill fires on its schedule and reports what it found.
    let d = drill_after(&fleet, job_id, first["id"].as_i64().unwrap_or(0));
    assert_eq!(d["status"], "successful", "{d}");
    let r = &d["drill"];
    assert_eq!(r["fsck_clean"], true, "{d}");
    assert_eq!(r["files"].as_u64(), Some(files.len() as u64), "{d}");
    assert_eq!(r["sampled"], sample.len(), "{d}");
    assert_eq!(r["matched"], r["sampled"], "{d}");
    assert!(r["restore_seconds"].as_f64().unwrap_or(0.0) > 0.0, "{d}");
    assert!(d["steps"].to_string().contains("Recovery time"), "{d}");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .expect("scratch")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "the scratch copy was left: {left:?}");

    // The dashboard shows the job's last successful drill and its recovery time.
    let (page, _) = crate::proc::curl(&[
        "--cacert",
        &api.ca,
        "-b",
        &api.cookies,
        &format!("{}/", api.base),
    ])
    .expect("dashboard");
    let section = page.split("id=\"drills\"").nth(1).unwrap_or_default();
    assert!(section.contains("drilled"), "{section}");
    assert!(
        section.contains(&format!("/reports/{}", d["id"])),
        "{section}"
    );

    // A filesystem damaged before imaging: the next drill reports the checker's failure.
    sh(Command::new("debugfs").args([
        "-w",
        "-R",
        "set_inode_field /r0/f1.bin links_count 7",
        lo.path(),
    ]));
    let (second, _) = fleet.finish(fleet.run(job_id));
    assert_eq!(second["status"], "successful", "{second}");
    let d = drill_after(&fleet, job_id, second["id"].as_i64().unwrap_or(0));
    spec.as_object_mut().expect("spec").remove("drill");
    api.call(
        "PUT",
        &format!("/api/v1/jobs/{job_id}"),
        Some(&json!({"name": "drilled", "spec": spec}).to_string()),
    );
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["drill"]["fsck_clean"], false, "{d}");
    let steps = d["steps"].to_string();
    assert!(
        steps.contains("Filesystem damaged") && steps.contains("e2fsck"),
        "{d}"
    );
}
