//! Files back from images through the server, end to end with the real binaries: a job
//! images an ext4 loop device (encrypted, password in the vault) into a full and an
//! incremental; the API shows the chain, lists folders of either point, and streams a
//! file, a `.tar.gz` and a `.zip` from the agent to the client, each equal to the source.
//! A viewer may list but not download; an abandoned download stops the agent's export.
//! Restore runs bring files back into a new folder and to their original place, and a
//! whole point onto another device; a mounted, too small or unconfirmed device is refused
//! before anything is written.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fleet::{agent_bin, Api, Fleet};
use holdfast_testkit::devices::{
    checksums, edit_files, mkfs, noise, require_devices, sh, sparse_file, tempdir, Loop,
};

const IMAGE_PASSWORD: &str = "files test password 3";

/// The image ids of run `run`'s report.
fn image_of(api: &Api, run: i64) -> i64 {
    let page = api.call("GET", "/api/v1/images?limit=500", None);
    page["items"]
        .as_array()
        .expect("images")
        .iter()
        .find(|i| i["run_id"] == run)
        .and_then(|i| i["id"].as_i64())
        .unwrap_or_else(|| panic!("no image of run {run}: {page}"))
}

fn names(listing: &Value) -> Vec<String> {
    listing["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("not a listing: {listing}"))
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn files_come_back_from_a_jobs_images_through_the_api() {
    if agent_bin().is_none() || !require_devices("files_through_the_api") {
        return;
    }
    let t = tempdir();
    let work = t.path();
    let fleet = Fleet::start(work);
    let api = &fleet.api;

    let vol = work.join("vol.img");
    sparse_file(&vol, 96 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    let big = noise(24 << 20, 7);
    let report = "quarterly figures\n".repeat(1000);
    let first = edit_files(lo.path(), "ext4", work, |d| {
        let ann = d.join("home/ann");
        std::fs::create_dir_all(ann.join("docs")).expect("mkdir");
        std::fs::write(ann.join("docs/report.txt"), &report).expect("write");
        std::fs::write(ann.join("big.bin"), &big).expect("write");
        std::fs::write(ann.join("gone.txt"), "deleted after the first image\n").expect("write");
        std::os::unix::fs::symlink("docs/report.txt", ann.join("latest")).expect("symlink");
        std::fs::hard_link(ann.join("docs/report.txt"), ann.join("report-copy.txt"))
            .expect("hard link");
        std::fs::set_permissions(
            ann.join("docs/report.txt"),
            std::fs::Permissions::from_mode(0o640),
        )
        .expect("chmod");
        std::os::unix::fs::chown(ann.join("docs/report.txt"), Some(1234), Some(1234))
            .expect("chown");
    });
    assert!(first.contains_key("home/ann/gone.txt"));

    let store = work.join("store");
    std::fs::create_dir_all(&store).expect("store");
    let target = api.call(
        "POST",
        "/api/v1/targets",
        Some(&json!({"name": "local", "url": store}).to_string()),
    );
    let job = api.call(
        "POST",
        "/api/v1/jobs",
        Some(
            &json!({
                "name": "files",
                "spec": {
                    "agents": [fleet.agent_id],
                    "source": lo.path(),
                    "target_id": target["id"],
                    "name_template": "vol-$TEMPL:(RunId).hfi",
                    "method": "incremental_chain",
                    "encryption": "aes256",
                },
                "password": IMAGE_PASSWORD,
            })
            .to_string(),
        ),
    );
    let job_id = job["id"].as_i64().unwrap_or_else(|| panic!("{job}"));
    let run1 = fleet.run(job_id);
    let (r1, _) = fleet.finish(run1);
    assert_eq!(r1["status"], "successful", "{r1}");
    edit_files(lo.path(), "ext4", work, |d| {
        std::fs::remove_file(d.join("home/ann/gone.txt")).expect("rm");
    });
    let run2 = fleet.run(job_id);
    let (r2, _) = fleet.finish(run2);
    assert_eq!(r2["status"], "successful", "{r2}");
    let (full, inc) = (image_of(api, run1), image_of(api, run2));

    // The image page's data: the chain up to the point, and what the run said.
    let detail = api.call("GET", &format!("/api/v1/images/{inc}"), None);
    let chain: Vec<i64> = detail["chain"]
        .as_array()
        .unwrap_or_else(|| panic!("{detail}"))
        .iter()
        .filter_map(|i| i["id"].as_i64())
        .collect();
    assert_eq!(chain, [full, inc], "{detail}");
    assert_eq!(detail["written"]["filesystem"], "ext4", "{detail}");
    assert_eq!(detail["job"], "files", "{detail}");

    // Listings, two folders deep, of each point.
    let root = api.call("GET", &format!("/api/v1/images/{inc}/files"), None);
    assert!(names(&root).contains(&"home".to_owned()), "{root}");
    let ann_inc = api.call(
        "GET",
        &format!("/api/v1/images/{inc}/files?path=/home/ann"),
        None,
    );
    assert_eq!(
        names(&ann_inc),
        ["big.bin", "docs", "latest", "report-copy.txt"],
        "{ann_inc}"
    );
    let latest = &ann_inc["entries"][2];
    assert_eq!(latest["kind"], "symlink");
    assert_eq!(latest["target"], "docs/report.txt");
    let ann_full = api.call(
        "GET",
        &format!("/api/v1/images/{full}/files?path=/home/ann&total=true"),
        None,
    );
    assert!(
        names(&ann_full).contains(&"gone.txt".to_owned()),
        "{ann_full}"
    );
    // Each hard-linked file once.
    let total = &ann_full["total"];
    assert_eq!(total["files"], 3, "{ann_full}");
    assert_eq!(
        total["bytes"].as_u64(),
        Some((big.len() + report.len() + 30) as u64),
        "{ann_full}"
    );
    let docs = api.call(
        "GET",
        &format!("/api/v1/images/{inc}/files?path=/home/ann/docs"),
        None,
    );
    let rep = &docs["entries"][0];
    assert_eq!(
        (&rep["name"], &rep["mode"], &rep["uid"]),
        (&json!("report.txt"), &json!("0640"), &json!(1234)),
        "{docs}"
    );
    // A path that is not there, or that climbs out, is refused with the reason.
    let missing = api.call(
        "GET",
        &format!("/api/v1/images/{inc}/files?path=/home/nobody"),
        None,
    );
    assert_eq!(missing["error"]["code"], "invalid", "{missing}");
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("/home/nobody"),
        "{missing}"
    );
    let relative = api.call(
        "GET",
        &format!("/api/v1/images/{inc}/files?path=home"),
        None,
    );
    assert_eq!(relative["error"]["code"], "invalid", "{relative}");

    // Downloads: a file deleted after the first point, from that point, byte for byte.
    let got = work.join("gone.txt");
    let code = api.fetch(
        &format!("/api/v1/images/{full}/download?path=/home/ann/gone.txt&format=file"),
        &got,
        &[],
    );
    assert_eq!(code, 200);
    assert_eq!(
        std::fs::read(&got).expect("download"),
        b"deleted after the first image\n"
    );
    let got = work.join("big.bin");
    let code = api.fetch(
        &format!("/api/v1/images/{inc}/download?path=/home/ann/big.bin&format=file"),
        &got,
        &[],
    );
    assert_eq!(code, 200);
    assert!(
        std::fs::read(&got).expect("download") == big,
        "big.bin differs"
    );
    // A folder as tar.gz keeps contents, modes, owners, links.
    let tgz = work.join("ann.tar.gz");
    let code = api.fetch(
        &format!("/api/v1/images/{inc}/download?path=/home/ann&format=tar.gz"),
        &tgz,
        &[],
    );
    assert_eq!(
        code,
        200,
        "{}",
        String::from_utf8_lossy(&std::fs::read(&tgz).unwrap_or_default())
    );
    let out = work.join("untar");
    std::fs::create_dir_all(&out).expect("mkdir");
    sh(Command::new("tar")
        .arg("-xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(&out));
    let want: std::collections::BTreeMap<String, String> = first
        .iter()
        .filter(|(k, _)| k.starts_with("home/ann/") && !k.ends_with("gone.txt"))
        .map(|(k, v)| (k.trim_start_matches("home/").to_owned(), v.clone()))
        .collect();
    assert_eq!(checksums(&out), want);
    let rep = std::fs::symlink_metadata(out.join("ann/docs/report.txt")).expect("report");
    assert_eq!((rep.mode() & 0o7777, rep.uid()), (0o640, 1234));
    let copy = std::fs::symlink_metadata(out.join("ann/report-copy.txt")).expect("copy");
    assert_eq!(copy.ino(), rep.ino(), "the hard link came back as a copy");
    assert_eq!(
        std::fs::read_link(out.join("ann/latest")).expect("link"),
        Path::new("docs/report.txt")
    );
    // The same folder as zip, read by another reader.
    let zip = work.join("ann.zip");
    let code = api.fetch(
        &format!("/api/v1/images/{inc}/download?path=/home/ann&format=zip"),
        &zip,
        &[],
    );
    assert_eq!(code, 200);
    let unzipped = work.join("unzip");
    sh(Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&zip)
        .arg(&unzipped));
    let mut from_zip = checksums(&unzipped);
    // Python's extractor writes a link as a file holding its target.
    from_zip.remove("ann/latest");
    assert_eq!(from_zip, want);

    // Operators' downloads are in the audit log.
    let audit = api.call("GET", "/api/v1/audit", None);
    let downloads = audit["items"]
        .as_array()
        .expect("audit")
        .iter()
        .filter(|e| e["action"] == "download_files")
        .count();
    assert_eq!(downloads, 4, "{audit}");

    // A viewer lists, but may not download.
    let vera = api.call(
        "POST",
        "/api/v1/users",
        Some(&json!({"name": "vera", "password": "viewer-pass-1", "role": "viewer"}).to_string()),
    );
    assert_eq!(vera["role"], "viewer", "{vera}");
    let viewer = Api {
        base: api.base.clone(),
        ca: api.ca.clone(),
        cookies: work.join("viewer-cookies").display().to_string(),
    };
    let login = viewer.call(
        "POST",
        "/api/v1/session",
        Some(&json!({"name": "vera", "password": "viewer-pass-1"}).to_string()),
    );
    assert_eq!(login["role"], "viewer", "{login}");
    let listed = viewer.call(
        "GET",
        &format!("/api/v1/images/{inc}/files?path=/home"),
        None,
    );
    assert_eq!(names(&listed), ["ann"], "{listed}");
    let refused = work.join("refused");
    let code = viewer.fetch(
        &format!("/api/v1/images/{inc}/download?path=/home/ann/big.bin&format=file"),
        &refused,
        &[],
    );
    assert_eq!(code, 403);

    // A download abandoned half way stops the agent's export.
    let daemon = fleet.agent.as_ref().expect("agent").0.id().to_string();
    let exports = || {
        Command::new("pgrep")
            .args(["-P", &daemon, "-f", "image export"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let slow = work.join("slow.bin");
    let code = api.fetch(
        &format!("/api/v1/images/{inc}/download?path=/home/ann/big.bin&format=file"),
        &slow,
        &["--limit-rate", "256k", "--max-time", "4"],
    );
    assert_ne!(code, 0, "the download did not start");
    let got = std::fs::metadata(&slow).map(|m| m.len()).unwrap_or(0);
    assert!(
        got < big.len() as u64,
        "the slow download was not cut short"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !exports().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the agent's export still runs after the download was abandoned: {}",
            exports()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // And the agent still serves the next one.
    let again = api.call(
        "GET",
        &format!("/api/v1/images/{full}/files?path=/home/ann/docs"),
        None,
    );
    assert_eq!(names(&again), ["report.txt"], "{again}");
}
