//! Getting files back in the console, in a real browser (headless Chromium) against the
//! real server and agent: from a job's page to its newest image, two folders deep, a file
//! and a folder downloaded (equal to the source), a file restored to a new folder on the
//! agent with its report; a viewer sees the files but no download or restore, and the
//! server refuses those routes to the viewer.

use std::process::Command;

use serde_json::{json, Value};

use crate::browser::Browser;
use crate::console::{fetch, log_in};
use crate::fleet::{agent_bin, Fleet};
use holdfast_testkit::devices::{
    checksums, edit_files, mkfs, noise, require_devices, sh, sparse_file, tempdir, Loop,
};

/// The status of the browser's own request (`body` as JSON), made with the page's CSRF
/// token.
fn send(b: &Browser, method: &str, path: &str, body: &Value) -> i64 {
    b.script_async(
        "const [method, path, body, done] = arguments;
         const headers = {'content-type': 'application/json',
                          'x-csrf-token': document.querySelector('meta[name=csrf]').content};
         fetch(path, {method, headers, body: JSON.stringify(body)})
           .then(r => done(r.status)).catch(() => done(0));",
        &[json!(method), json!(path), body.clone()],
    )
    .as_i64()
    .unwrap_or(0)
}

#[test]
fn files_are_browsed_downloaded_and_restored_in_the_console() {
    const TEST: &str = "console_files";
    if agent_bin().is_none() || !require_devices(TEST) {
        return;
    }
    let t = tempdir();
    let work = t.path();
    let Some(b) = Browser::start(TEST, work, 1400) else {
        return;
    };
    let fleet = Fleet::start(work);
    let api = &fleet.api;

    let vol = work.join("vol.img");
    sparse_file(&vol, 64 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    let big = noise(3 << 20, 11);
    let source = edit_files(lo.path(), "ext4", work, |d| {
        let docs = d.join("home/ann/docs");
        std::fs::create_dir_all(&docs).expect("mkdir");
        std::fs::write(docs.join("plan.txt"), "the plan\n".repeat(500)).expect("write");
        std::fs::write(docs.join("notes.md"), "# notes\n").expect("write");
        std::fs::write(d.join("home/ann/photo.raw"), &big).expect("write");
    });
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
                "name": "desktop",
                "spec": {
                    "agents": [fleet.agent_id],
                    "source": lo.path(),
                    "target_id": target["id"],
                    "name_template": "desktop-$TEMPL:(RunId).hfi",
                    "method": "incremental_chain",
                    "encryption": "aes128",
                },
                "password": "console files password",
            })
            .to_string(),
        ),
    );
    let job_id = job["id"].as_i64().unwrap_or_else(|| panic!("{job}"));
    for _ in 0..2 {
        let (r, _) = fleet.finish(fleet.run(job_id));
        assert_eq!(r["status"], "successful", "{r}");
    }

    // From the job's page to its newest image.
    let base = &api.base;
    log_in(&b, base, "admin", &fleet.admin_password);
    b.go(&format!("{base}/jobs/{job_id}"));
    b.click("#job-images tbody tr:first-child a");
    b.wait("the image page", 15, |b| b.has("#chain"));
    let image_page = b.url();
    assert!(b.text("#chain").contains("this point"));
    assert_eq!(
        b.text("#chain").matches(".hfi").count(),
        2,
        "a chain of two"
    );
    // Two folders deep.
    b.wait("the root folder", 60, |b| {
        b.has("#files a[data-dir='/home']")
    });
    b.click("#files a[data-dir='/home']");
    b.wait("/home", 60, |b| b.has("#files a[data-dir='/home/ann']"));
    b.click("#files a[data-dir='/home/ann']");
    b.wait("/home/ann", 60, |b| {
        b.has("#files a[data-download='/home/ann/photo.raw']")
    });
    b.shot("image-files");
    assert!(b.text("#files").contains("3.0 MiB"), "{}", b.text("#files"));

    // A file, byte for byte.
    b.click("#files a[data-download='/home/ann/photo.raw']");
    let photo = b.downloaded("photo", ".raw");
    assert!(
        std::fs::read(&photo).expect("photo") == big,
        "photo.raw differs"
    );
    // A folder: its size first, then the archive.
    b.click("#files button[data-measure='/home/ann/docs']");
    b.wait("the folder's size", 60, |b| {
        b.has("#files a[data-download='/home/ann/docs'][href*='tar.gz']")
    });
    assert!(
        b.text("#files").contains("2 file(s)"),
        "{}",
        b.text("#files")
    );
    b.click("#files a[data-download='/home/ann/docs'][href*='tar.gz']");
    let tgz = b.downloaded("docs", ".tar.gz");
    let out = work.join("untar");
    std::fs::create_dir_all(&out).expect("mkdir");
    sh(Command::new("tar")
        .arg("-xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(&out));
    let want: std::collections::BTreeMap<String, String> = source
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("home/ann/")?.to_owned(), v.clone())))
        .filter(|(k, _)| k.starts_with("docs/"))
        .collect();
    assert_eq!(checksums(&out), want);

    // Restore one file into a new folder on the agent; the report says so.
    b.click("#files input[data-pick='/home/ann/photo.raw']");
    let restored = work.join("restored here");
    b.fill(
        "#restore-files input[name=to]",
        &restored.display().to_string(),
    );
    b.click("#restore-files button[type=submit]");
    b.wait("the restore's report", 30, |b| {
        b.url().contains("/reports/")
    });
    b.wait("the restore to finish", 90, |b| {
        b.text("main").contains("Files restored")
    });
    b.shot("restore-report");
    assert!(
        std::fs::read(restored.join("photo.raw")).expect("restored") == big,
        "the restored file differs"
    );

    // A viewer: files yes, downloads and restores no.
    let vera = api.call(
        "POST",
        "/api/v1/users",
        Some(&json!({"name": "vera", "password": "viewer-pass-1", "role": "viewer"}).to_string()),
    );
    assert_eq!(vera["role"], "viewer", "{vera}");
    log_in(&b, base, "vera", "viewer-pass-1");
    b.go(&image_page);
    b.wait("the listing for the viewer", 60, |b| {
        b.has("#files a[data-dir='/home']")
    });
    b.click("#files a[data-dir='/home']");
    b.wait("/home for the viewer", 60, |b| {
        b.has("#files a[data-dir='/home/ann']")
    });
    b.shot("image-viewer");
    for absent in [
        "#restore-files",
        "#restore-volume",
        "#files [data-download]",
        "#files [data-measure]",
        "#files [data-pick]",
    ] {
        assert!(!b.has(absent), "a viewer sees {absent}");
    }
    let id = image_page.rsplit('/').next().unwrap_or_default();
    let (status, code) = fetch(
        &b,
        "GET",
        &format!("/api/v1/images/{id}/download?path=/home/ann/photo.raw&format=file"),
        true,
    );
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    let body = json!({"paths": ["/home/ann/photo.raw"], "to": "/tmp/viewer"});
    assert_eq!(
        send(
            &b,
            "POST",
            &format!("/api/v1/images/{id}/restore-files"),
            &body
        ),
        403
    );
    let body = json!({"device": lo.path(), "confirm": lo.path()});
    assert_eq!(
        send(
            &b,
            "POST",
            &format!("/api/v1/images/{id}/restore-volume"),
            &body
        ),
        403
    );
}
