//! Jobs end to end with the real binaries: a target with credentials in the vault, a job
//! that images a loop device to a real SFTP server through an enrolled agent, run now,
//! live progress, reports (JSON and XML) and an incremental chain that restores.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::fleet::{agent_bin, wait_secs, Api, Fleet};
use crate::proc::curl;
use holdfast_testkit::devices::{
    checksums, edit_files, image_ok, mkfs, noise, read_files, require_devices, sh, sparse_file,
    tempdir, write_files, Loop, Mounted,
};
use holdfast_testkit::servers::{Smbd, SmtpSink, Sshd, PASSWORD, SMTP_PASSWORD, SMTP_USER, USER};

/// The image password of the test job.
const IMAGE_PASSWORD: &str = "job image password 9";

#[test]
fn job_images_a_loop_device_to_sftp_as_an_incremental_chain_that_restores() {
    if agent_bin().is_none() || !require_devices("job_chain_to_sftp") {
        return;
    }
    let Some(sshd) = Sshd::start("job_chain_to_sftp") else {
        return;
    };
    let t = tempdir();
    let work = t.path();
    let fleet = Fleet::start(work);
    let api = &fleet.api;

    // The source: an ext4 volume on a loop device, not mounted while imaging.
    let vol = work.join("vol.img");
    sparse_file(&vol, 96 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    let mut states = vec![edit_files(lo.path(), "ext4", work, |d| {
        write_files(d, 0, 30);
        std::fs::write(d.join("noise.bin"), noise(40 << 20, 3)).expect("noise");
    })];

    // The target: credentials go in once and never come back.
    let target = api.call(
        "POST",
        "/api/v1/targets",
        Some(
            &json!({
                "name": "sftp box",
                "url": format!("sftp://127.0.0.1:{}{}", sshd.port, sshd.data.display()),
                "username": USER,
                "password": PASSWORD,
            })
            .to_string(),
        ),
    );
    assert_eq!(target["credentials"]["password"], "set", "{target}");
    assert!(!target.to_string().contains(PASSWORD));
    let target_id = target["id"].as_i64().expect("target id");
    // "Test connection" from the agent; a wrong password is named as such.
    let agent_body = json!({"agent_id": fleet.agent_id}).to_string();
    let tested = api.call(
        "POST",
        &format!("/api/v1/targets/{target_id}/test"),
        Some(&agent_body),
    );
    // First the server's host key only, unconfirmed; confirmed, the test runs in full.
    assert_eq!(tested["ok"], false, "{tested}");
    let key = sshd.host_key_fingerprint();
    assert_eq!(
        tested["host_key"],
        json!({"fingerprint": key, "confirmed": false}),
        "{tested}"
    );
    let confirmed = api.call(
        "PUT",
        &format!("/api/v1/targets/{target_id}/host-key"),
        Some(&json!({ "fingerprint": key }).to_string()),
    );
    assert_eq!(confirmed["host_key"], key.as_str(), "{confirmed}");
    let tested = api.call(
        "POST",
        &format!("/api/v1/targets/{target_id}/test"),
        Some(&agent_body),
    );
    assert_eq!(tested["ok"], true, "{tested}");
    assert_eq!(tested["bytes"], 1 << 20, "{tested}");
    assert_eq!(tested["host_key"]["confirmed"], true, "{tested}");
    let bad = api.call(
        "POST",
        "/api/v1/targets",
        Some(
            &json!({
                "name": "wrong password",
                "url": format!("sftp://127.0.0.1:{}{}", sshd.port, sshd.data.display()),
                "username": USER,
                "password": "not-the-password",
                "host_key": key,
            })
            .to_string(),
        ),
    );
    let r = api.call(
        "POST",
        &format!("/api/v1/targets/{}/test", bad["id"]),
        Some(&agent_body),
    );
    assert_eq!(r["error"]["code"], "invalid", "{r}");
    let msg = r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(msg.contains("sftp://") && msg.contains("auth"), "{r}");
    assert!(!r.to_string().contains("not-the-password"));

    let job = api.call(
        "POST",
        "/api/v1/jobs",
        Some(
            &json!({
                "name": "nightly",
                "spec": {
                    "agents": [fleet.agent_id],
                    "source": lo.path(),
                    "target_id": target_id,
                    "folder": "$TEMPL:(ComputerName)",
                    "name_template": "vol-$TEMPL:(Year)$TEMPL:(Month)$TEMPL:(Day)-$TEMPL:(Hour)$TEMPL:(Minute)$TEMPL:(Second).hfi",
                    "method": "incremental_chain",
                    "encryption": "aes256",
                    "split_size": 16 << 20,
                    "verify": true,
                    "before": {"command": "echo preparing", "timeout_seconds": 30},
                    "before_snapshot": "echo holding writes",
                    "after_snapshot": "echo writes resumed",
                },
                "password": IMAGE_PASSWORD,
            })
            .to_string(),
        ),
    );
    assert_eq!(job["password"], "set", "{job}");
    assert!(!job.to_string().contains(IMAGE_PASSWORD));
    let job_id = job["id"].as_i64().expect("job id");

    // "Check job": it can run here, nothing changed.
    let c = api.call("POST", &format!("/api/v1/jobs/{job_id}/check"), None);
    let result = &c["agents"][0]["result"];
    assert_eq!(result["ok"], true, "{c}");
    let checks: Vec<&str> = result["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["check"].as_str())
        .collect();
    assert!(
        checks.contains(&"source") && checks.contains(&"target"),
        "{c}"
    );

    // First run: a full image, with progress on the way.
    let run1 = fleet.run(job_id);
    let (r1, seen) = fleet.finish(run1);
    assert_eq!(r1["status"], "successful", "{r1}");
    assert!(seen > 0.0, "no progress was seen while the job ran: {r1}");
    let img1 = &r1["images"][0];
    assert_eq!(img1["method"], "full", "{r1}");
    assert_eq!(img1["verified"], true, "{r1}");
    // The report says what was imaged, where it went and how.
    assert!(!r1["host"].as_str().unwrap_or("").is_empty(), "{r1}");
    assert_eq!(img1["source"], lo.path(), "{r1}");
    assert_eq!(img1["filesystem"], "ext4", "{r1}");
    assert_eq!(img1["coverage"], "used-sector", "{r1}");
    assert_eq!(img1["consistency"], "unmounted", "{r1}");
    assert!(
        img1["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("sftp://")),
        "{r1}"
    );
    assert!(img1["parts"].as_u64().expect("parts") > 1, "{r1}");
    let name1 = img1["name"].as_str().expect("name").to_owned();
    let steps: Vec<&str> = r1["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["title"].as_str())
        .collect();
    assert_eq!(
        steps,
        [
            "Job started",
            "Command before the job",
            "Command before the snapshot",
            "Command after the snapshot",
            "Image created",
            "Job finished"
        ],
        "{r1}"
    );
    assert!(
        r1["steps"][2]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("exit status 0") && d.contains("holding writes")),
        "{r1}"
    );
    assert!(r1["bytes_written"].as_i64().expect("bytes") > 0);
    // The image is on the SFTP server under the computer's name, complete.
    let host = fleet
        .api
        .call("GET", &format!("/api/v1/agents/{}", fleet.agent_id), None)["hostname"]
        .as_str()
        .expect("hostname")
        .to_owned();
    assert!(name1.starts_with(&format!("{host}/vol-")), "{name1}");
    assert!(sshd.data.join(&name1).exists(), "{name1} not on the server");

    // A check now also finds the base the next increment needs.
    let c = api.call("POST", &format!("/api/v1/jobs/{job_id}/check"), None);
    assert!(
        c.to_string()
            .contains(&format!("{name1} is there and complete")),
        "{c}"
    );

    // Second run, after changes, with the volume mounted read-write: the default method
    // freezes it for the imaging (the check says so first); an increment on the first image.
    let mounted = Mounted::new(lo.path(), &work.join("in-use"), "rw");
    write_files(&mounted.dir, 1, 6);
    sh(&mut Command::new("sync"));
    states.push(checksums(&mounted.dir));
    let c = api.call("POST", &format!("/api/v1/jobs/{job_id}/check"), None);
    assert!(c.to_string().contains("frozen while imaging"), "{c}");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a new name (seconds)
    let run2 = fleet.run(job_id);
    let (r2, _) = fleet.finish(run2);
    assert_eq!(r2["status"], "successful", "{r2}");
    let img2 = &r2["images"][0];
    assert_eq!(img2["method"], "incremental", "{r2}");
    assert_eq!(img2["base"], name1.as_str(), "{r2}");
    assert!(
        img2["consistency"]
            .as_str()
            .is_some_and(|c| c.starts_with("frozen: the filesystem was frozen for")),
        "{r2}"
    );
    std::fs::write(mounted.dir.join("after.txt"), "thawed").expect("thawed after the run");
    drop(mounted);
    let name2 = img2["name"].as_str().expect("name").to_owned();

    // Lists, downloads.
    let list = api.call("GET", &format!("/api/v1/reports?job_id={job_id}"), None);
    let ids: Vec<i64> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    assert_eq!(ids, [run2, run1], "{list}");
    let (xml, _) = curl(&[
        "--cacert",
        &api.ca,
        "-b",
        &api.cookies,
        &format!("{}/api/v1/reports/{run2}/download?format=xml", api.base),
    ])
    .expect("xml");
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(xml.contains("<status>successful</status>"), "{xml}");
    assert!(xml.contains(&format!("name=\"{name2}\"")), "{xml}");
    assert!(
        xml.contains("<host>")
            && xml.contains("<coverage>used-sector</coverage>")
            && xml.contains("filesystem=\"ext4\""),
        "{xml}"
    );
    let images = api.call("GET", "/api/v1/images", None);
    assert_eq!(
        images["items"].as_array().map(Vec::len),
        Some(2),
        "{images}"
    );
    assert_eq!(images["items"][0]["target_id"], target_id, "{images}");

    // The increment restores to the second state, straight from the SFTP server.
    let known = format!("known_hosts = {}\n", work.join("known_hosts").display());
    restores_to(
        &format!(
            "sftp://{USER}@127.0.0.1:{}{}/{name2}",
            sshd.port,
            sshd.data.display()
        ),
        &known,
        work,
        96 << 20,
        &states[1],
    );

    // No secret in any response, the server's log or the agent's log.
    for text in [
        std::fs::read_to_string(&fleet.log).unwrap_or_default(),
        std::fs::read_to_string(&fleet.agent_log).unwrap_or_default(),
        r1.to_string(),
        r2.to_string(),
        xml,
    ] {
        assert!(!text.contains(PASSWORD) && !text.contains(IMAGE_PASSWORD));
    }
}

/// Restore `image` (a target URL; the test user's credentials plus `more_creds` lines)
/// with the agent's command line onto a fresh loop device of `size`, and check its files
/// are `want`.
fn restores_to(
    image: &str,
    more_creds: &str,
    work: &Path,
    size: u64,
    want: &std::collections::BTreeMap<String, String>,
) {
    let creds = work.join("creds");
    std::fs::write(
        &creds,
        format!("user = {USER}\npassword = {PASSWORD}\n{more_creds}"),
    )
    .expect("creds");
    let pw = work.join("pw");
    std::fs::write(&pw, format!("{IMAGE_PASSWORD}\n")).expect("pw");
    let restored = work.join("restored.img");
    sparse_file(&restored, size);
    let rl = Loop::new(&restored);
    image_ok(&[
        "restore",
        "--image",
        image,
        "--target",
        rl.path(),
        "--password-file",
        pw.to_str().expect("path"),
        "--credentials-file",
        creds.to_str().expect("path"),
    ]);
    assert_eq!(
        &read_files(rl.path(), "ext4", work),
        want,
        "restored from {image}"
    );
}

/// Files under `dir` (relative paths), hidden temporaries included.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn jobs_survive_cancel_agent_crash_server_restart_and_failing_commands() {
    if agent_bin().is_none() || !require_devices("job_faults") {
        return;
    }
    let Some(mut sshd) = Sshd::start("job_faults") else {
        return;
    };
    let t = tempdir();
    let work = t.path();
    let mut fleet = Fleet::start(work);

    // A slow job: incompressible data at the strongest compression.
    let vol = work.join("vol.img");
    sparse_file(&vol, 256 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    edit_files(lo.path(), "ext4", work, |d| {
        std::fs::write(d.join("noise.bin"), noise(200 << 20, 5)).expect("noise");
    });
    let target = fleet.api.call(
        "POST",
        "/api/v1/targets",
        Some(
            &json!({
                "name": "sftp box",
                "url": format!("sftp://127.0.0.1:{}{}", sshd.port, sshd.data.display()),
                "username": USER,
                "password": PASSWORD,
                "host_key": sshd.host_key_fingerprint(),
            })
            .to_string(),
        ),
    );
    let target_id = target["id"].as_i64().expect("target id");
    let job = |fleet: &Fleet, name: &str, extra: Value| {
        let mut spec = json!({
            "agents": [fleet.agent_id],
            "source": lo.path(),
            "target_id": target_id,
            "name_template": format!("{name}-$TEMPL:(Hour)$TEMPL:(Minute)$TEMPL:(Second).hfi"),
            "compression_level": 19,
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let r = fleet.api.call(
            "POST",
            "/api/v1/jobs",
            Some(&json!({"name": name, "spec": spec}).to_string()),
        );
        r["id"].as_i64().unwrap_or_else(|| panic!("job: {r}"))
    };
    let slow = job(&fleet, "slow", json!({}));

    // Cancel mid-image: cancelled, and nothing is left on the server.
    let run = fleet.run(slow);
    fleet.wait_progress(run);
    let c = fleet
        .api
        .call("POST", &format!("/api/v1/jobs/{slow}/cancel"), None);
    assert_eq!(c["cancelling"], json!([run]), "{c}");
    let (r, _) = fleet.finish(run);
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(files(&sshd.data), Vec::<String>::new(), "{r}");

    // The agent crashes mid-image: once back it reports the run failed, and no image
    // (not even a partial one) is left.
    let run = fleet.run(slow);
    fleet.wait_progress(run);
    fleet.kill_agent();
    fleet.start_agent();
    let (r, _) = fleet.finish(run);
    assert_eq!(r["status"], "failed", "{r}");
    assert!(r.to_string().contains("Agent stopped"), "{r}");
    wait_secs("the partial image removed", &fleet.log, 30, || {
        files(&sshd.data).is_empty()
    });

    // The server restarts mid-image: the job goes on, its report arrives after the
    // agent reconnects, and the job does not run twice.
    let run = fleet.run(slow);
    fleet.wait_progress(run);
    fleet.restart_server();
    let (r, _) = fleet.finish(run);
    assert_eq!(r["status"], "successful", "{r}");
    let all = fleet
        .api
        .call("GET", &format!("/api/v1/reports?job_id={slow}"), None);
    assert_eq!(all["items"].as_array().map(Vec::len), Some(3), "{all}");
    let name = r["images"][0]["name"].as_str().expect("name").to_owned();
    assert_eq!(files(&sshd.data), [name], "only the finished image");

    // The target goes away mid-image (the SFTP server dies): failed, the error names the
    // target, and no image appears under the name.
    let run = fleet.run(slow);
    fleet.wait_progress(run);
    sshd.kill();
    let (r, _) = fleet.finish(run);
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r.to_string()
            .contains(&format!("sftp://{USER}@127.0.0.1:{}", sshd.port)),
        "{r}"
    );
    assert!(sshd.restart("job_faults"), "sshd restarts");
    assert_eq!(
        files(&sshd.data)
            .iter()
            .filter(|f| !f.starts_with('.'))
            .count(),
        1,
        "{:?}",
        files(&sshd.data)
    );

    // A failing command before the job: with "abort" the image is not made; without, it is
    // and the run ends with a warning.
    let abort = job(
        &fleet,
        "abort",
        json!({"before": {"command": "echo no disk space; exit 3", "abort_on_failure": true}, "compression_level": 1}),
    );
    let (r, _) = fleet.finish(fleet.run(abort));
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r.to_string().contains("no disk space") && r.to_string().contains("aborted"),
        "{r}"
    );
    assert!(r["images"].as_array().is_none_or(Vec::is_empty), "{r}");
    let warn = job(
        &fleet,
        "warn",
        json!({"before": {"command": "exit 1"}, "after": {"command": "echo done-after"}, "compression_level": 1}),
    );
    let (r, _) = fleet.finish(fleet.run(warn));
    assert_eq!(r["status"], "warning", "{r}");
    assert_eq!(r["images"].as_array().map(Vec::len), Some(1), "{r}");
    assert!(r.to_string().contains("done-after"), "{r}");
}

#[test]
fn reports_are_mailed_and_a_mail_failure_never_touches_the_job() {
    if agent_bin().is_none() || !require_devices("job_mail") {
        return;
    }
    let Some(sink) = SmtpSink::start("job_mail") else {
        return;
    };
    let t = tempdir();
    let work = t.path();
    let fleet = Fleet::start(work);
    let api = &fleet.api;
    let smtp = |password: &str| {
        api.call(
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
                    "password": password,
                })
                .to_string(),
            ),
        )
    };
    let r = smtp(SMTP_PASSWORD);
    assert_eq!(r["password"], "set", "{r}");
    assert!(!r.to_string().contains(SMTP_PASSWORD));

    // The test mail goes out over STARTTLS with a login.
    let r = api.call(
        "POST",
        "/api/v1/settings/smtp/test",
        Some(r#"{"to": "admin@example.test"}"#),
    );
    assert_eq!(r["sent"], true, "{r}");
    let mails = sink.mails();
    assert_eq!(mails.len(), 1);
    for want in [
        "X-Sink-TLS: True",
        "X-Sink-Auth: True",
        "X-Sink-To: admin@example.test",
        "Subject: [Holdfast] Test e-mail",
    ] {
        assert!(mails[0].contains(want), "{want}: {}", mails[0]);
    }

    // A job that mails its report, to a folder on the agent's machine.
    let vol = work.join("vol.img");
    sparse_file(&vol, 32 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    edit_files(lo.path(), "ext4", work, |d| write_files(d, 0, 5));
    let images = work.join("images");
    std::fs::create_dir_all(&images).expect("images");
    let target = api.call(
        "POST",
        "/api/v1/targets",
        Some(&json!({"name": "local", "url": images.display().to_string()}).to_string()),
    );
    let job = api.call(
        "POST",
        "/api/v1/jobs",
        Some(
            &json!({"name": "mailjob", "spec": {
                "agents": [fleet.agent_id],
                "source": lo.path(),
                "target_id": target["id"],
                "name_template": "m-$TEMPL:(Hour)$TEMPL:(Minute)$TEMPL:(Second).hfi",
                "notify": {"when": "always", "recipients": ["ops@example.test"], "text": "Nightly backup of the lab"},
            }})
            .to_string(),
        ),
    );
    let job_id = job["id"].as_i64().unwrap_or_else(|| panic!("{job}"));
    let (r, _) = fleet.finish(fleet.run(job_id));
    assert_eq!(r["status"], "successful", "{r}");
    wait_secs("the report mail", &fleet.log, 30, || {
        sink.mails().len() == 2
    });
    let mail = &sink.mails()[1];
    let host = api.call("GET", &format!("/api/v1/agents/{}", fleet.agent_id), None)["hostname"]
        .as_str()
        .expect("hostname")
        .to_owned();
    for want in [
        format!("Subject: [Holdfast] successful: mailjob on {host}"),
        "X-Sink-To: ops@example.test".to_owned(),
        "Nightly backup of the lab".to_owned(),
        format!("Report id: {}", r["id"]),
        "Image created".to_owned(),
    ] {
        assert!(mail.contains(&want), "{want}: {mail}");
    }

    // A wrong SMTP password: the test says so; a job still runs and succeeds, its mail is
    // recorded with the error and kept for a retry.
    smtp("not-the-password");
    let r = api.call(
        "POST",
        "/api/v1/settings/smtp/test",
        Some(r#"{"to": "admin@example.test"}"#),
    );
    assert_eq!(r["error"]["code"], "invalid", "{r}");
    assert!(r.to_string().contains("535"), "{r}");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a new image name
    let (r, _) = fleet.finish(fleet.run(job_id));
    assert_eq!(r["status"], "successful", "{r}");
    let report_mail = |outbox: &Value| {
        outbox["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|m| m["kind"] == "report" && m["state"] != "sent")
                .cloned()
        })
    };
    let mut pending = Value::Null;
    wait_secs("the failed report mail", &fleet.log, 30, || {
        let outbox = api.call("GET", "/api/v1/mail", None);
        match report_mail(&outbox) {
            Some(m) if m["attempts"].as_i64() >= Some(1) => {
                pending = m;
                true
            }
            _ => false,
        }
    });
    assert_eq!(pending["state"], "pending", "{pending}");
    assert!(
        pending["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("535")),
        "{pending}"
    );
    assert_eq!(sink.mails().len(), 2);
    let log = std::fs::read_to_string(&fleet.log).unwrap_or_default();
    assert!(!log.contains(SMTP_PASSWORD) && !log.contains("not-the-password"));
}

#[test]
fn a_scheduled_chain_job_runs_by_itself_and_retention_deletes_only_whole_chains() {
    if agent_bin().is_none() || !require_devices("job_retention") {
        return;
    }
    let t = tempdir();
    let work = t.path();
    let fleet = Fleet::start(work);
    let api = &fleet.api;
    let vol = work.join("vol.img");
    sparse_file(&vol, 32 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    edit_files(lo.path(), "ext4", work, |d| write_files(d, 0, 5));
    let images = work.join("images");
    std::fs::create_dir_all(&images).expect("images");
    let target = api.call(
        "POST",
        "/api/v1/targets",
        Some(&json!({"name": "local", "url": images.display().to_string()}).to_string()),
    );
    // Every 3 seconds; chains of two images; keep two chains.
    let job = api.call(
        "POST",
        "/api/v1/jobs",
        Some(
            &json!({"name": "every3s", "spec": {
                "agents": [fleet.agent_id],
                "source": lo.path(),
                "target_id": target["id"],
                "name_template": "r-$TEMPL:(Hour)$TEMPL:(Minute)$TEMPL:(Second).hfi",
                "method": "incremental_chain",
                "chain_length": 2,
                "retention": {"keep_last": 2},
                "schedule": {"kind": "cron", "expression": "*/3 * * * * *", "time_frame_minutes": 1},
            }})
            .to_string(),
        ),
    );
    let job_id = job["id"].as_i64().unwrap_or_else(|| panic!("{job}"));
    let done = |api: &Api| -> Vec<Value> {
        let list = api.call("GET", &format!("/api/v1/reports?job_id={job_id}"), None);
        let mut items: Vec<Value> = list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| !matches!(r["status"].as_str(), Some("running" | "queued")))
            .collect();
        items.reverse();
        items
    };
    wait_secs("five scheduled runs", &fleet.log, 90, || {
        done(api).len() >= 5
    });
    // Stop the schedule, and let a run that started meanwhile end.
    let mut off = api.call("GET", &format!("/api/v1/jobs/{job_id}"), None);
    off["enabled"] = json!(false);
    let put = json!({"name": off["name"], "enabled": false, "spec": off["spec"]});
    api.call(
        "PUT",
        &format!("/api/v1/jobs/{job_id}"),
        Some(&put.to_string()),
    );
    wait_secs("the last run to end", &fleet.log, 60, || {
        let list = api.call(
            "GET",
            &format!("/api/v1/reports?job_id={job_id}&status=running"),
            None,
        );
        list["items"].as_array().is_some_and(Vec::is_empty)
    });
    let runs = done(api);
    let mut reports = Vec::new();
    for r in &runs[..5] {
        assert_eq!(r["status"], "successful", "{r}");
        assert_eq!(r["cause"], "schedule", "{r}");
        reports.push(api.call("GET", &format!("/api/v1/reports/{}", r["id"]), None));
    }
    let names: Vec<String> = reports
        .iter()
        .map(|r| r["images"][0]["name"].as_str().expect("name").to_owned())
        .collect();
    let methods: Vec<&str> = reports
        .iter()
        .map(|r| r["images"][0]["method"].as_str().expect("method"))
        .collect();
    assert_eq!(
        methods,
        ["full", "incremental", "full", "incremental", "full"],
        "{reports:?}"
    );
    // The fifth run started a third chain: the first chain (images 1 and 2) went, whole.
    assert!(
        reports[4]
            .to_string()
            .contains(&format!("deleted {}, {}", names[0], names[1])),
        "{}",
        reports[4]
    );
    let mut left: Vec<String> = std::fs::read_dir(&images)
        .expect("images")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut kept = names[2..5].to_vec();
    // Runs after the fifth (before the schedule stopped) may have added images.
    for r in &runs[5..] {
        let rep = api.call("GET", &format!("/api/v1/reports/{}", r["id"]), None);
        if let Some(n) = rep["images"][0]["name"].as_str() {
            kept.push(n.to_owned());
        }
        for d in rep["deleted"].as_array().into_iter().flatten() {
            kept.retain(|k| Some(k.as_str()) != d.as_str());
        }
    }
    kept.sort();
    assert_eq!(left, kept);
    let listed = api.call("GET", "/api/v1/images", None);
    let deleted: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|i| !i["deleted_at"].is_null())
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert!(
        deleted.starts_with(&[names[0].as_str(), names[1].as_str()]),
        "{listed}"
    );
}

#[test]
fn after_the_job_the_machine_is_asked_to_restart() {
    if agent_bin().is_none() || !require_devices("job_after") {
        return;
    }
    let t = tempdir();
    let work = t.path();
    let mut fleet = Fleet::start(work);
    // A stand-in `shutdown` first on the agent's PATH notes how it was asked.
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let asked = work.join("shutdown-args");
    let fake = bin.join("shutdown");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" > {}\n", asked.display()),
    )
    .expect("fake shutdown");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    fleet.agent_env.push(("PATH".into(), path));
    fleet.start_agent();
    let api = &fleet.api;
    let vol = work.join("vol.img");
    sparse_file(&vol, 16 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    let images = work.join("images");
    std::fs::create_dir_all(&images).expect("images");
    let target = api.call(
        "POST",
        "/api/v1/targets",
        Some(&json!({"name": "local", "url": images.display().to_string()}).to_string()),
    );
    let job = api.call(
        "POST",
        "/api/v1/jobs",
        Some(
            &json!({"name": "then restart", "spec": {
                "agents": [fleet.agent_id],
                "source": lo.path(),
                "target_id": target["id"],
                "after_job": "restart",
            }})
            .to_string(),
        ),
    );
    let job_id = job["id"].as_i64().unwrap_or_else(|| panic!("{job}"));
    let (r, _) = fleet.finish(fleet.run(job_id));
    assert_eq!(r["status"], "successful", "{r}");
    assert!(
        r.to_string()
            .contains("the machine will restart in one minute"),
        "{r}"
    );
    let args = std::fs::read_to_string(&asked).expect("shutdown was run");
    assert!(
        args.starts_with("-r +1 Holdfast: job 'then restart' finished"),
        "{args}"
    );

    // A source with no filesystem is imaged sector by sector, and the report says so: the
    // run ends as a warning, not as successful.
    let raw = work.join("raw.img");
    sparse_file(&raw, 8 << 20);
    let lo_raw = Loop::new(&raw);
    let job = api.call(
        "POST",
        "/api/v1/jobs",
        Some(
            &json!({"name": "raw", "spec": {
                "agents": [fleet.agent_id],
                "source": lo_raw.path(),
                "target_id": target["id"],
                "name_template": "raw.hfi",
            }})
            .to_string(),
        ),
    );
    let raw_job = job["id"].as_i64().unwrap_or_else(|| panic!("{job}"));
    let (r, _) = fleet.finish(fleet.run(raw_job));
    assert_eq!(r["status"], "warning", "{r}");
    assert_eq!(r["images"][0]["coverage"], "forensic", "{r}");
    assert_eq!(r["images"][0]["name"], "raw.hfi", "{r}");
    let warned = r["steps"].as_array().is_some_and(|steps| {
        steps.iter().any(|s| {
            s["status"] == "warning" && s["detail"].as_str().is_some_and(|d| d.contains("forensic"))
        })
    });
    assert!(warned, "{r}");
    // The same file name again: the run id keeps the new image from replacing the first.
    let (again, _) = fleet.finish(fleet.run(raw_job));
    assert_eq!(again["status"], "warning", "{again}");
    assert_eq!(
        again["images"][0]["name"],
        format!("raw-r{}.hfi", again["id"]),
        "{again}"
    );
    assert!(images.join("raw.hfi").exists());
}

#[test]
fn a_chain_job_writes_to_an_smb_share_and_restores_from_it() {
    if agent_bin().is_none() || !require_devices("job_smb") {
        return;
    }
    let Some(smbd) = Smbd::start("job_smb") else {
        return;
    };
    let t = tempdir();
    let work = t.path();
    let fleet = Fleet::start(work);
    let api = &fleet.api;
    let vol = work.join("vol.img");
    sparse_file(&vol, 48 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    let mut states = vec![edit_files(lo.path(), "ext4", work, |d| {
        write_files(d, 0, 10);
        std::fs::write(d.join("noise.bin"), noise(8 << 20, 4)).expect("noise");
    })];
    let target = api.call(
        "POST",
        "/api/v1/targets",
        Some(
            &json!({
                "name": "nas share",
                "url": format!("smb://127.0.0.1:{}/backup", smbd.port),
                "username": USER,
                "password": PASSWORD,
            })
            .to_string(),
        ),
    );
    let target_id = target["id"].as_i64().unwrap_or_else(|| panic!("{target}"));
    let tested = api.call(
        "POST",
        &format!("/api/v1/targets/{target_id}/test"),
        Some(&json!({"agent_id": fleet.agent_id}).to_string()),
    );
    assert_eq!(tested["ok"], true, "{tested}");
    let job = api.call(
        "POST",
        "/api/v1/jobs",
        Some(
            &json!({"name": "to the share", "spec": {
                "agents": [fleet.agent_id],
                "source": lo.path(),
                "target_id": target_id,
                "folder": "$TEMPL:(ComputerName)",
                "name_template": "s-$TEMPL:(Hour)$TEMPL:(Minute)$TEMPL:(Second).hfi",
                "method": "incremental_chain",
                "encryption": "aes128",
                "verify": true,
            }, "password": IMAGE_PASSWORD})
            .to_string(),
        ),
    );
    let job_id = job["id"].as_i64().unwrap_or_else(|| panic!("{job}"));
    let (r1, _) = fleet.finish(fleet.run(job_id));
    assert_eq!(r1["status"], "successful", "{r1}");
    states.push(edit_files(lo.path(), "ext4", work, |d| {
        write_files(d, 1, 4)
    }));
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a new name (seconds)
    let (r2, _) = fleet.finish(fleet.run(job_id));
    assert_eq!(r2["status"], "successful", "{r2}");
    assert_eq!(r2["images"][0]["method"], "incremental", "{r2}");
    let name2 = r2["images"][0]["name"].as_str().expect("name").to_owned();
    assert!(smbd.data.join(&name2).exists(), "{name2} not on the share");

    restores_to(
        &format!("smb://{USER}@127.0.0.1:{}/backup/{name2}", smbd.port),
        "",
        work,
        48 << 20,
        &states[1],
    );
}

/// A job on an S3 bucket with Object Lock: every image is locked for the job's days, so
/// retention keeps the image it would delete (the run says so and stays successful, the image
/// stays recorded and on the bucket), neither our target nor a plain S3 delete of its
/// version removes it, and the first run after the lock ends deletes it. Only S3 targets
/// take such a job.
#[test]
fn an_immutable_job_on_s3_locks_its_images_and_retention_keeps_them() {
    use holdfast_targets::{ObjectKey, Target as _, TargetError};
    use holdfast_testkit::servers::{S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};
    if agent_bin().is_none() || !require_devices("job_s3_lock") {
        return;
    }
    let Some(s3) = S3Server::start("job_s3_lock") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let bucket = s3_bucket(&rt, &s3.endpoint, "vault", true);
    let t = tempdir();
    let work = t.path();
    let fleet = Fleet::start(work);
    let api = &fleet.api;
    let vol = work.join("vol.img");
    sparse_file(&vol, 32 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    edit_files(lo.path(), "ext4", work, |d| write_files(d, 0, 5));
    let target = api.call(
        "POST",
        "/api/v1/targets",
        Some(
            &json!({
                "name": "vault",
                "url": format!("s3://vault/pcs?endpoint={}", s3.endpoint),
                "username": S3_ACCESS_KEY,
                "password": S3_SECRET_KEY,
            })
            .to_string(),
        ),
    );
    let target_id = target["id"].as_i64().unwrap_or_else(|| panic!("{target}"));
    let tested = api.call(
        "POST",
        &format!("/api/v1/targets/{target_id}/test"),
        Some(&json!({"agent_id": fleet.agent_id}).to_string()),
    );
    assert_eq!(tested["ok"], true, "{tested}");
    let bad = api.call(
        "POST",
        "/api/v1/jobs",
        Some(
            &json!({"name": "bad", "spec": {
                "agents": [fleet.agent_id], "source": lo.path(), "target_id": target_id,
                "immutability": {"new_chain_after_days": 0},
            }})
            .to_string(),
        ),
    );
    assert!(
        bad.to_string()
            .contains("new_chain_after_days must be 1 to 365"),
        "{bad}"
    );
    let job = api.call(
        "POST",
        "/api/v1/jobs",
        Some(
            &json!({"name": "immutable", "spec": {
                "agents": [fleet.agent_id],
                "source": lo.path(),
                "target_id": target_id,
                "name_template": "i-$TEMPL:(Hour)$TEMPL:(Minute)$TEMPL:(Second).hfi",
                "method": "full",
                "retention": {"keep_last": 1},
                "immutability": {"days": 1, "mode": "governance"},
            }})
            .to_string(),
        ),
    );
    let job_id = job["id"].as_i64().unwrap_or_else(|| panic!("{job}"));

    // Only S3 targets lock images: a job that asks for it elsewhere is refused when saved,
    // and when its target stopped being S3 since, when it starts.
    let folder = work.join("folder");
    let local = api.call(
        "POST",
        "/api/v1/targets",
        Some(&json!({"name": "folder", "url": folder.display().to_string()}).to_string()),
    );
    let immutable_on = |target: &Value| {
        api.call(
            "POST",
            "/api/v1/jobs",
            Some(
                &json!({"name": format!("on {}", target["name"]), "spec": {
                    "agents": [fleet.agent_id], "source": lo.path(),
                    "target_id": target["id"], "immutability": {},
                }})
                .to_string(),
            ),
        )
    };
    let refused = immutable_on(&local);
    assert!(
        refused
            .to_string()
            .contains("immutability needs an s3:// target with Object Lock; target 'folder'"),
        "{refused}"
    );
    let moved = api.call(
        "POST",
        "/api/v1/targets",
        Some(
            &json!({"name": "moved", "url": format!("s3://vault/moved?endpoint={}", s3.endpoint),
                    "username": S3_ACCESS_KEY, "password": S3_SECRET_KEY})
            .to_string(),
        ),
    );
    let moved_job = immutable_on(&moved);
    let moved_job = moved_job["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{moved_job}"));
    api.call(
        "PUT",
        &format!("/api/v1/targets/{}", moved["id"]),
        Some(&json!({"name": "moved", "url": folder.display().to_string()}).to_string()),
    );
    let started = api.call("POST", &format!("/api/v1/jobs/{moved_job}/run"), None);
    assert!(
        started
            .to_string()
            .contains("immutability needs an s3:// target with Object Lock; target 'moved'"),
        "{started}"
    );
    assert!(!folder.exists(), "nothing may be written to the folder");

    let (r1, _) = fleet.finish(fleet.run(job_id));
    assert_eq!(r1["status"], "successful", "{r1}");
    let first = r1["images"][0]["name"].as_str().expect("name").to_owned();
    let k = ObjectKey::new(first.clone()).expect("key");
    let until = rt
        .block_on(bucket.locked_until(&k))
        .expect("retention")
        .expect("the image is locked");
    let hours = (until - chrono::Utc::now()).num_hours();
    assert!((23..=24).contains(&hours), "locked for {hours} h");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a new name (seconds)
    let (r2, _) = fleet.finish(fleet.run(job_id));
    assert_eq!(r2["status"], "successful", "{r2}");
    assert!(r2["deleted"].as_array().is_some_and(Vec::is_empty), "{r2}");
    assert!(
        r2["steps"].to_string().contains("kept while locked")
            && r2["steps"].to_string().contains(&first),
        "{r2}"
    );
    assert!(
        rt.block_on(bucket.size(&k)).is_ok(),
        "the locked image is gone"
    );
    assert_eq!(deleted_at(api, &first), Value::Null);
    let e = rt.block_on(bucket.delete(&k)).expect_err("locked");
    assert!(matches!(e, TargetError::Locked { .. }), "{e}");
    let version = rt.block_on(bucket.current_version(&k)).expect("version");
    assert!(rt
        .block_on(bucket.delete_version(&k, version.as_deref()))
        .is_err());

    // Once the lock ends, the next run's retention deletes the image. A lock of whole days
    // is shortened here as an admin with the bypass permission may shorten a governance
    // lock: to two seconds from now, through the S3 API (curl signs it).
    let until = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = format!(
        "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>GOVERNANCE</Mode><RetainUntilDate>{until}</RetainUntilDate></Retention>"
    );
    let body_file = work.join("retention.xml");
    std::fs::write(&body_file, &body).expect("body");
    let md5 = sh(Command::new("sh").arg("-c").arg(format!(
        "openssl dgst -md5 -binary '{}' | base64",
        body_file.display()
    )));
    let md5 = String::from_utf8_lossy(&md5.stdout).trim().to_owned();
    let shortened = curl(&[
        "-sS",
        "-w",
        "%{http_code}",
        "--aws-sigv4",
        "aws:amz:us-east-1:s3",
        "--user",
        &format!("{S3_ACCESS_KEY}:{S3_SECRET_KEY}"),
        "-H",
        "x-amz-bypass-governance-retention: true",
        "-H",
        &format!("content-md5: {md5}"),
        "-T",
        body_file.to_str().expect("path"),
        &format!("{}/vault/pcs/{first}?retention=", s3.endpoint),
    ])
    .expect("curl");
    assert!(shortened.0.ends_with("200"), "{shortened:?}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (r3, _) = fleet.finish(fleet.run(job_id));
    assert_eq!(r3["status"], "successful", "{r3}");
    assert_eq!(r3["deleted"], json!([first]), "{r3}");
    assert!(
        rt.block_on(bucket.size(&k)).is_err(),
        "the image whose lock ended is still there"
    );
    assert!(deleted_at(api, &first).is_i64(), "not recorded as deleted");
}

/// Bandwidth limits reach a job's transfers from every place an admin sets one: the
/// target's, the agent's on the console and the machine's own (the agent daemon's
/// environment). The lowest holds the run, and its report names all three.
#[test]
fn a_job_is_held_to_the_lowest_of_its_target_agent_and_machine_limits() {
    use holdfast_testkit::servers::{S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};
    if agent_bin().is_none() || !require_devices("job_bandwidth") {
        return;
    }
    let Some(s3) = S3Server::start("job_bandwidth") else {
        return;
    };
    let t = tempdir();
    let work = t.path();
    let mut fleet = Fleet::start(work);
    fleet
        .agent_env
        .push(("HOLDFAST_AGENT_BANDWIDTH".into(), "4M".into()));
    fleet.start_agent();
    let api = &fleet.api;
    let agent = format!("/api/v1/agents/{}", fleet.agent_id);
    let vol = work.join("vol.img");
    sparse_file(&vol, 32 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    edit_files(lo.path(), "ext4", work, |d| {
        std::fs::write(d.join("noise.bin"), noise(3 << 20, 9)).expect("noise");
    });
    let target = api.call(
        "POST",
        "/api/v1/targets",
        Some(
            &json!({
                "name": "bucket",
                "url": format!("s3://plain/pcs?endpoint={}", s3.endpoint),
                "username": S3_ACCESS_KEY,
                "password": S3_SECRET_KEY,
                "bandwidth": "8M",
            })
            .to_string(),
        ),
    );
    let target_id = target["id"].as_i64().unwrap_or_else(|| panic!("{target}"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    s3_bucket(&rt, &s3.endpoint, "plain", false);
    let tested = api.call(
        "POST",
        &format!("/api/v1/targets/{target_id}/test"),
        Some(&json!({"agent_id": fleet.agent_id}).to_string()),
    );
    assert_eq!(tested["ok"], true, "{tested}");

    let bad = api.call(
        "PUT",
        &format!("{agent}/bandwidth"),
        Some(&json!({"bandwidth": "fast"}).to_string()),
    );
    assert!(bad.to_string().contains("bandwidth:"), "{bad}");
    assert_eq!(api.call("GET", &agent, None)["bandwidth"], Value::Null);
    api.call(
        "PUT",
        &format!("{agent}/bandwidth"),
        Some(&json!({"bandwidth": " 1M "}).to_string()),
    );
    assert_eq!(api.call("GET", &agent, None)["bandwidth"], "1M");

    let job = api.call(
        "POST",
        "/api/v1/jobs",
        Some(
            &json!({"name": "held", "spec": {
                "agents": [fleet.agent_id],
                "source": lo.path(),
                "target_id": target_id,
                "method": "full",
            }})
            .to_string(),
        ),
    );
    let job_id = job["id"].as_i64().unwrap_or_else(|| panic!("{job}"));
    let (r, _) = fleet.finish(fleet.run(job_id));
    assert_eq!(r["status"], "successful", "{r}");
    let steps = r["steps"].to_string();
    for limit in [
        "the target's limit 8M",
        "this agent's limit set on the console 1M",
        "this machine's own limit 4M",
    ] {
        assert!(steps.contains(limit), "{limit} missing: {steps}");
    }
    // Over 3 MiB of data at 1 MiB/s (the lowest limit) cannot take less than 2.9 s.
    let written = r["images"][0]["bytes"].as_i64().expect("bytes");
    assert!(written > 3 << 20, "{r}");
    let (started, ended) = (r["started_at"].as_i64(), r["ended_at"].as_i64());
    let took = ended.zip(started).map(|(e, s)| e - s).expect("times");
    assert!(took >= 2, "{written} bytes in {took} s at 1 MiB/s: {r}");

    // Cleared: the report no longer names it.
    api.call(
        "PUT",
        &format!("{agent}/bandwidth"),
        Some(&json!({"bandwidth": null}).to_string()),
    );
    assert_eq!(api.call("GET", &agent, None)["bandwidth"], Value::Null);
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a new name (seconds)
    let (r, _) = fleet.finish(fleet.run(job_id));
    assert_eq!(r["status"], "successful", "{r}");
    assert!(!r["steps"].to_string().contains("console"), "{r}");
}

/// Bucket `name` (`pcs` its prefix) on the S3 server at `endpoint`, created on `rt` (with
/// Object Lock when `lock`).
fn s3_bucket(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    name: &str,
    lock: bool,
) -> holdfast_targets::s3::S3Target {
    use holdfast_targets::location::Credentials;
    use holdfast_targets::s3::{S3Config, S3Target};
    use holdfast_testkit::servers::{S3_ACCESS_KEY, S3_SECRET_KEY};
    let bucket = S3Target::new(
        &S3Config {
            endpoint: endpoint.to_owned(),
            region: "us-east-1".into(),
            bucket: name.into(),
            prefix: "pcs".into(),
            path_style: true,
        },
        Credentials {
            user: Some(S3_ACCESS_KEY.into()),
            password: Some(zeroize::Zeroizing::new(S3_SECRET_KEY.into())),
            ..Default::default()
        },
    )
    .expect("target");
    rt.block_on(bucket.create_bucket(lock)).expect("bucket");
    bucket
}

/// When the server recorded image `name` as deleted (null: it was not).
fn deleted_at(api: &Api, name: &str) -> Value {
    let listed = api.call("GET", "/api/v1/images", None);
    let items = listed["items"].as_array().expect("items");
    let image = items.iter().find(|i| i["name"] == name);
    image.unwrap_or_else(|| panic!("{name} not listed: {listed}"))["deleted_at"].clone()
}
