//! Verify runs, end to end with the real binaries: a job's chain written to a folder, one
//! byte of its full image flipped there; the job's verify schedule fires, the agent
//! validates each image again with the password from the vault, the full one is marked
//! damaged, an alert goes out by mail, and the job's next run starts a new chain with a full
//! image whose report says why.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};

use serde_json::{json, Value};

use crate::fleet::{agent_bin, wait_secs, Fleet};
use holdfast_testkit::devices::{
    edit_files, mkfs, require_devices, sparse_file, tempdir, write_files, Loop,
};
use holdfast_testkit::servers::{SmtpSink, SMTP_PASSWORD, SMTP_USER};

/// Flip one byte in the middle of `path` (inside a frame of block data).
fn flip_middle_byte(path: &std::path::Path) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("image");
    let at = f.metadata().expect("size").len() / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.read_exact(&mut b).expect("read");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&[b[0] ^ 0x40]).expect("write");
}

fn steps(report: &Value) -> String {
    report["steps"].to_string()
}

#[test]
fn a_verify_run_marks_a_damaged_image_mails_and_the_chain_starts_again() {
    const TEST: &str = "verify_runs";
    if agent_bin().is_none() || !require_devices(TEST) {
        return;
    }
    let Some(sink) = SmtpSink::start(TEST) else {
        return;
    };
    let t = tempdir();
    let work = t.path();
    let fleet = Fleet::start(work);
    let api = &fleet.api;
    let r = api.call(
        "PUT",
        "/api/v1/settings/smtp",
        Some(
            &json!({
                "settings": {
                    "server": "localhost",
                    "port": sink.port,
                    "tls": "starttls",
                    "username": SMTP_USER,
                    "sender": "Holdfast <holdfast@example.test>",
                    "ca_pem": std::fs::read_to_string(&sink.ca).expect("ca"),
                },
                "password": SMTP_PASSWORD,
            })
            .to_string(),
        ),
    );
    assert_eq!(r["password"], "set", "{r}");

    let vol = work.join("vol.img");
    sparse_file(&vol, 48 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    edit_files(lo.path(), "ext4", work, |d| write_files(d, 0, 30));
    let store = work.join("store");
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
        "name_template": "v-$TEMPL:(RunId).hfi",
        "method": "incremental_chain",
        "encryption": "aes256",
        "notify": {"when": "on_failure", "recipients": ["ops@example.test"]},
    });
    let job = api.call(
        "POST",
        "/api/v1/jobs",
        Some(&json!({"name": "verified", "spec": spec, "password": "verify pw"}).to_string()),
    );
    let job_id = job["id"].as_i64().unwrap_or_else(|| panic!("{job}"));
    let (full, _) = fleet.finish(fleet.run(job_id));
    assert_eq!(full["images"][0]["method"], "full", "{full}");
    edit_files(lo.path(), "ext4", work, |d| write_files(d, 1, 5));
    let (inc, _) = fleet.finish(fleet.run(job_id));
    assert_eq!(inc["images"][0]["method"], "incremental", "{inc}");
    let full_name = full["images"][0]["name"].as_str().expect("name").to_owned();
    let inc_name = inc["images"][0]["name"].as_str().expect("name").to_owned();
    flip_middle_byte(&store.join(&full_name));

    // The verify schedule fires by itself (every two seconds here).
    spec["verify_schedule"] = json!({"kind": "cron", "expression": "*/2 * * * * *"});
    let put = api.call(
        "PUT",
        &format!("/api/v1/jobs/{job_id}"),
        Some(&json!({"name": "verified", "spec": spec}).to_string()),
    );
    assert!(put["id"].is_number(), "{put}");
    let mut verify = Value::Null;
    wait_secs("a verify run to end", &fleet.log, 90, || {
        let page = api.call("GET", &format!("/api/v1/reports?job_id={job_id}"), None);
        let done = page["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|r| {
                    r["cause"] == "verify" && r["status"] != "queued" && r["status"] != "running"
                })
                .cloned()
        });
        match done {
            Some(r) => {
                verify = r;
                true
            }
            None => false,
        }
    });
    // No more verify runs for the rest of the test.
    spec.as_object_mut()
        .expect("spec")
        .remove("verify_schedule");
    api.call(
        "PUT",
        &format!("/api/v1/jobs/{job_id}"),
        Some(&json!({"name": "verified", "spec": spec}).to_string()),
    );
    let verify = api.call("GET", &format!("/api/v1/reports/{}", verify["id"]), None);
    assert_eq!(verify["status"], "failed", "{verify}");
    let text = steps(&verify);
    assert!(
        text.contains("Image damaged") && text.contains(&full_name),
        "{verify}"
    );
    assert!(
        text.contains("Image sound") && text.contains(&inc_name),
        "{verify}"
    );
    assert!(text.contains("every block against its hash"), "{verify}");

    // Marked in the store (and so on the image's page).
    let images = api.call("GET", "/api/v1/images?limit=500", None);
    let verified = |name: &str| {
        images["items"]
            .as_array()
            .expect("images")
            .iter()
            .find(|i| i["name"] == name)
            .map(|i| i["verified"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(verified(&full_name), json!(false), "{images}");
    assert_eq!(verified(&inc_name), json!(true), "{images}");

    // The alert mail names the image.
    wait_secs("the damage alert", &fleet.log, 30, || {
        sink.mails().iter().any(|m| m.contains("Damaged image"))
    });
    let mail = sink
        .mails()
        .into_iter()
        .find(|m| m.contains("Damaged image"))
        .expect("alert");
    assert!(mail.contains("X-Sink-To: ops@example.test"), "{mail}");
    assert!(mail.contains(&full_name), "{mail}");

    // The next run is a full image, and says why.
    let (next, _) = fleet.finish(fleet.run(job_id));
    assert_eq!(next["status"], "successful", "{next}");
    assert_eq!(next["images"][0]["method"], "full", "{next}");
    let text = steps(&next);
    assert!(
        text.contains("new chain") && text.contains(&full_name) && text.contains("damaged"),
        "{next}"
    );
}
