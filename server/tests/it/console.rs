//! The web console in a real browser (headless Chromium over WebDriver) against the real
//! server and agent binaries, an SFTP server and an SMTP sink: the day of an admin from
//! login to a report's XML. Every page is saved as a screenshot under
//! `$CARGO_TARGET_TMPDIR/console-screenshots/`.

use std::process::{Command, Stdio};

use serde_json::json;

use crate::browser::Browser;
use crate::fleet::{agent_bin, wait_for};
use crate::proc::{curl, first_start_secrets, free_port, start};
use holdfast_testkit::devices::{
    edit_files, mkfs, require_devices, sparse_file, tempdir, write_files, Loop,
};
use holdfast_testkit::servers::{SmtpSink, Sshd, PASSWORD, SMTP_PASSWORD, SMTP_USER, USER};

/// A process stopped on drop.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The browser's `fetch` of `path` with `method` (and the page's CSRF token unless
/// `csrf` is false): the status and the error code.
pub fn fetch(b: &Browser, method: &str, path: &str, csrf: bool) -> (i64, String) {
    let v = b.script_async(
        "const [method, path, csrf, done] = arguments;
         const headers = {'content-type': 'application/json'};
         if (csrf) headers['x-csrf-token'] = document.querySelector('meta[name=csrf]').content;
         fetch(path, {method, headers, body: method === 'GET' ? undefined : '{}'})
           .then(async r => { let code = ''; try { code = (await r.json()).error.code; } catch (_) {} done([r.status, code]); })
           .catch(e => done([0, String(e)]));",
        &[json!(method), json!(path), json!(csrf)],
    );
    (
        v[0].as_i64().unwrap_or(0),
        v[1].as_str().unwrap_or_default().to_owned(),
    )
}

pub fn log_in(b: &Browser, base: &str, name: &str, password: &str) {
    b.go(&format!("{base}/login"));
    b.fill("#login-form input[name=name]", name);
    b.fill("#login-form input[name=password]", password);
    b.click("#login-form button[type=submit]");
    b.wait("the dashboard", 15, |b| b.has("nav a.on[href='/']"));
}

/// Log in with a password someone else chose: the console asks for a new one first, and
/// no other page opens before it is changed.
pub fn log_in_first(b: &Browser, base: &str, name: &str, given: &str, chosen: &str) {
    b.go(&format!("{base}/login?next=/jobs"));
    b.fill("#login-form input[name=name]", name);
    b.fill("#login-form input[name=password]", given);
    b.click("#login-form button[type=submit]");
    b.wait("the password page", 15, |b| b.has("#password-required"));
    assert!(b.url().contains("/password?next="), "{}", b.url());
    b.go(&format!("{base}/settings"));
    b.wait("the password page again", 15, |b| {
        b.has("#password-required")
    });
    b.fill("#password-form input[name=current]", given);
    b.fill("#password-form input[name=new]", given);
    b.click("#password-form button[type=submit]");
    b.wait("the refusal of the same password", 15, |b| {
        b.text("#password-form .msg").contains("must differ")
    });
    b.fill("#password-form input[name=new]", chosen);
    b.click("#password-form button[type=submit]");
    b.wait("the page asked for", 15, |b| {
        b.has("nav a.on[href='/settings']")
    });
}

#[test]
fn an_admin_sets_up_a_nightly_job_in_the_console_and_a_viewer_changes_nothing() {
    const TEST: &str = "console";
    if agent_bin().is_none() || !require_devices(TEST) {
        return;
    }
    let Some(sshd) = Sshd::start(TEST) else {
        return;
    };
    let Some(sink) = SmtpSink::start(TEST) else {
        return;
    };
    let t = tempdir();
    let work = t.path();
    let Some(b) = Browser::start(TEST, work, 1400) else {
        return;
    };
    let port = free_port();
    let (server, printed) = start(work, port, true);
    let _server = Kill(server);
    let log = work.join("server.log");
    let first = first_start_secrets(work, &printed);
    let base = format!("https://localhost:{port}");
    let ca = work.join("tls/ca.pem").display().to_string();
    wait_for("the server", &log, || {
        curl(&["--cacert", &ca, &format!("{base}/healthz")]).is_some_and(|(o, _)| o == "ok\n")
    });

    // Not logged in: the login page, which says what is wrong with a bad password.
    b.go(&format!("{base}/jobs"));
    b.wait("the login page", 15, |b| b.url().contains("/login?next="));
    b.shot("01-login");
    b.fill("#login-form input[name=name]", "admin");
    b.fill("#login-form input[name=password]", "not the password");
    b.click("#login-form button[type=submit]");
    b.wait("the login error", 15, |b| {
        b.text("#login-form .msg")
            .contains("wrong user name or password")
    });
    log_in_first(&b, &base, "admin", &first.password, "admin-chosen-pass-1");
    b.shot("02-dashboard-empty");

    // Enrol an agent with the command the page shows.
    b.go(&format!("{base}/agents"));
    b.fill("#enrol-form input[name=name]", "lab machines");
    b.click("#enrol-form button[type=submit]");
    b.wait("the enrol command", 15, |b| {
        b.text("#enrol-command")
            .starts_with("holdfast-agent enroll")
    });
    b.shot("03-enrolment");
    let command = b.text("#enrol-command");
    let config = work.join("agent.json");
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    let out = Command::new(agent_bin().expect("agent"))
        .args(&args)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("enrol");
    assert!(out.status.success(), "{command}: {out:?}");
    let _agent = Kill(
        Command::new(agent_bin().expect("agent"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(work.join("agent.log")).expect("log"),
            ))
            .spawn()
            .expect("agent"),
    );
    b.go(&format!("{base}/agents"));
    b.wait("the agent online", 30, |b| {
        b.has("[data-agent='1'].s-online") || {
            b.go(&format!("{base}/agents"));
            false
        }
    });
    b.shot("04-agents");
    b.click("a[href='/agents/1']");
    b.wait("the agent's disks and volumes", 15, |b| {
        b.has(".disk .parts") && b.has(".disk table.volumes")
    });
    b.shot("05-agent");
    // "Refresh" asks the agent for its inventory now, and shows it.
    b.script("window.beforeRefresh = true; return null", &[]);
    b.click("#refresh-inventory");
    b.wait("the page with the new inventory", 30, |b| {
        b.script("return window.beforeRefresh === undefined", &[]) == json!(true)
            && b.has(".disk table.volumes")
    });
    // The agent's bandwidth limit: a wrong one is explained, a right one shown.
    assert_eq!(b.text("#agent-bandwidth"), "unlimited");
    b.fill("#bandwidth-form input[name=bandwidth]", "20M@someday");
    b.click("#bandwidth-form button[type=submit]");
    b.wait("the bandwidth error", 15, |b| {
        b.text("#bandwidth-form .msg").contains("bandwidth:")
    });
    b.fill(
        "#bandwidth-form input[name=bandwidth]",
        "20M@mon-fri/08:00-18:00,unlimited",
    );
    b.click("#bandwidth-form button[type=submit]");
    b.wait("the agent's limit", 15, |b| {
        b.text("#agent-bandwidth") == "20M@mon-fri/08:00-18:00,unlimited"
    });
    b.shot("05-agent-bandwidth");

    // An SFTP target, tested from the agent.
    b.go(&format!("{base}/targets"));
    b.fill("#target-form input[name=name]", "lab sftp");
    b.fill(
        "#target-form input[name=url]",
        &format!("sftp://127.0.0.1:{}{}", sshd.port, sshd.data.display()),
    );
    b.fill("#target-form input[name=username]", USER);
    b.fill("#target-form input[name=password]", PASSWORD);
    b.fill(
        "#target-form input[name=bandwidth]",
        "50M@sat-sun/00:00-24:00",
    );
    b.click("#target-form button[type=submit]");
    b.wait("the target's page", 15, |b| b.has("#test-form"));
    // The edit form holds the target as saved; the password only as "set".
    assert_eq!(b.text("h1"), "Target: lab sftp");
    assert_eq!(
        b.script(
            "return document.querySelector('#target-form input[name=url]').value",
            &[]
        ),
        json!(format!(
            "sftp://127.0.0.1:{}{}",
            sshd.port,
            sshd.data.display()
        ))
    );
    assert!(b
        .text("#target-form")
        .contains("set; leave empty to keep it"));
    assert_eq!(
        b.script(
            "return document.querySelector('#target-form input[name=bandwidth]').value",
            &[]
        ),
        json!("50M@sat-sun/00:00-24:00")
    );
    assert!(!b
        .script("return document.body.innerHTML", &[])
        .to_string()
        .contains(PASSWORD));
    // The server's host key is shown before anything logs in, and trusted by a click.
    assert!(b.text("#host-key").contains("not confirmed"));
    b.click("#test-form button[type=submit]");
    b.wait("the offered host key", 60, |b| {
        !b.text("#host-key-offer code").is_empty()
    });
    assert!(b.text("#test-result").contains("must be confirmed"));
    assert_eq!(
        b.text("#host-key-offer code"),
        sshd.host_key_fingerprint(),
        "the key shown is the one OpenSSH's ssh-keygen -lf shows"
    );
    b.shot("06-target-host-key");
    b.click("#trust-key");
    b.wait("the confirmed key", 15, |b| {
        b.text("#host-key").contains(&sshd.host_key_fingerprint())
    });
    b.click("#test-form button[type=submit]");
    b.wait("the connection test", 60, |b| {
        b.text("#test-result").starts_with("OK")
    });
    b.shot("06-target-tested");

    // A site with the agent.
    b.go(&format!("{base}/sites"));
    b.fill("#site-form input[name=name]", "Head office");
    b.choose("#site-form select[name='defaults.target_id']", "1");
    b.click("#site-form button[type=submit]");
    b.wait("the site's page", 15, |b| b.has("#move-1"));
    b.click("#move-1");
    b.wait("the agent in the site", 15, |b| !b.has("#move-1"));
    b.shot("07-site");

    // The job wizard: a nightly job for the site, with a live preview of the name and the
    // next five runs.
    let vol = work.join("vol.img");
    sparse_file(&vol, 64 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    edit_files(lo.path(), "ext4", work, |d| {
        write_files(d, 0, 8);
        std::fs::write(
            d.join("noise.bin"),
            holdfast_testkit::devices::noise(48 << 20, 3),
        )
        .expect("noise");
    });
    b.go(&format!("{base}/jobs"));
    b.click("#new-job");
    b.wait("the wizard", 15, |b| b.has("#job-form"));
    b.fill("#job-form input[name=name]", "Nightly office image");
    b.click("#job-form input[name=run_on][value=site]");
    b.fill("#job-form input[name='spec.source']", lo.path());
    b.fill("#job-form input[name='spec.name_template']", "nightly-$TEMPL:(ComputerName)-$TEMPL:(Year)$TEMPL:(Month)$TEMPL:(Day)-$TEMPL:(Hour)$TEMPL:(Minute)$TEMPL:(Second).hfi");
    b.choose("#job-form select[name='spec.schedule.kind']", "daily");
    b.set(
        "#job-form [data-sched=daily] input[name='spec.schedule.time']",
        "22:30",
    );
    b.wait("the preview", 15, |b| {
        b.text("#preview-name").contains("nightly-")
            && b.script(
                "return document.querySelectorAll('#preview-runs li').length",
                &[],
            ) == 5
    });
    let host = b.text("#preview-name");
    assert!(host.contains("/nightly-"), "{host}");
    assert!(
        b.text("#preview-runs").contains("22:30"),
        "{}",
        b.text("#preview-runs")
    );
    b.shot("08-job-wizard");
    // The strongest compression: a run long enough to watch.
    b.fill("#job-form input[name='spec.compression_level']", "19");
    b.fill(
        "#job-form input[name='spec.notify.recipients']",
        "ops@example.test",
    );
    b.choose("#job-form select[name='spec.notify.when']", "always");
    // Locking images needs an S3 bucket: the wizard says so, and saves without the lock.
    b.set(
        "#job-form select[name='spec.immutability.mode']",
        "governance",
    );
    b.set("#job-form input[name='spec.immutability.days']", "30");
    b.click("#save-job");
    b.wait("the lock refused", 15, |b| {
        b.text("#job-form")
            .contains("immutability needs an s3:// target with Object Lock")
    });
    b.set("#job-form select[name='spec.immutability.mode']", "");
    b.click("#save-job");
    b.wait("the job's page", 15, |b| b.has("#run-now"));
    b.shot("09-job");
    // Check: the agent says whether the job could run now (source, target, space, base).
    b.click("#check-job");
    b.wait("the check's answer", 60, |b| !b.text("#job-msg").is_empty());
    let checked = b.text("#job-msg");
    assert!(checked.contains("ready"), "{checked}");
    // Disable and enable again.
    b.click("#toggle-job");
    b.wait("the job disabled", 15, |b| {
        b.text("main h1").contains("(disabled)")
    });
    b.click("#toggle-job");
    b.wait("the job enabled", 15, |b| {
        !b.text("main h1").contains("(disabled)")
    });
    // Edit: the wizard comes back filled with the job as stored.
    b.click("#edit-job");
    b.wait("the filled wizard", 15, |b| {
        b.script(
            "return document.querySelector('#job-form input[name=name]').value",
            &[],
        ) == "Nightly office image"
    });
    for (field, want) in [
        ("input[name=run_on]:checked", "site"),
        (
            "[data-sched=daily] input[name='spec.schedule.time']",
            "22:30",
        ),
        ("input[name='spec.notify.recipients']", "ops@example.test"),
        ("input[name='spec.compression_level']", "19"),
        ("select[name='spec.method']", "incremental_chain"),
        ("input[name=what]:checked", "one"),
    ] {
        let got = b.script(
            "return document.querySelector('#job-form ' + arguments[0]).value",
            &[json!(field)],
        );
        assert_eq!(got, want, "{field}");
    }
    b.fill(
        "#job-form input[name='spec.comment']",
        "edited in the console",
    );
    b.click("#save-job");
    b.wait("the job's page again", 15, |b| {
        b.has("#run-now")
            && b.script("return document.querySelector('main').textContent", &[])
                .as_str()
                .is_some_and(|t| t.contains("edited in the console"))
    });

    // Run it now and watch the bar reach 100 %.
    b.click("#run-now");
    b.wait("a run on the page", 15, |b| b.has("[data-run]"));
    // The bar follows the run live (server-sent events); when the run ends the page shows
    // its result with a full bar.
    let mut widths = Vec::new();
    b.wait("the run to finish", 120, |b| {
        widths.push(
            b.script(
                "const i = document.querySelector('[data-run] .progress > i'); return i ? i.style.width : ''",
                &[],
            )
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        );
        b.has("td .badge.s-successful")
    });
    assert_eq!(
        b.script(
            "return document.querySelector('[data-run] .progress > i').style.width",
            &[]
        ),
        "100%",
        "{widths:?}"
    );
    let moving = widths
        .iter()
        .filter_map(|w| w.trim_end_matches('%').parse::<f64>().ok())
        .any(|w| w > 0.0 && w < 100.0);
    assert!(
        moving,
        "the bar never showed the run in between: {widths:?}"
    );
    b.shot("10-job-ran");
    b.click("td a[href^='/reports/']");
    b.wait("the report", 15, |b| b.has("#download-xml"));
    let report = b.text("main");
    for want in ["successful", "Image created", "Job finished"] {
        assert!(report.contains(want), "{want}: {report}");
    }
    b.shot("11-report");
    b.click("#download-xml");
    let xml = b.download("report-", ".xml");
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(xml.contains("<status>successful</status>"), "{xml}");

    // Export the job as XML and import it: the same name is refused with the reason; under
    // another name it becomes a second job.
    b.click("a[href^='/jobs/']");
    b.click("#export-xml");
    let exported = b.download("job-", ".xml");
    let file = work.join("downloads").join("job-1.xml");
    b.go(&format!("{base}/jobs"));
    b.upload("#import-form input[type=file]", &file);
    b.click("#import-form button[type=submit]");
    b.wait("the refusal", 15, |b| {
        b.text("#import-form .msg").contains("already exists")
    });
    let copy = work.join("copy.xml");
    std::fs::write(
        &copy,
        exported.replace("Nightly office image", "Nightly office image (copy)"),
    )
    .expect("copy");
    b.go(&format!("{base}/jobs"));
    b.upload("#import-form input[type=file]", &copy);
    b.click("#import-form button[type=submit]");
    b.wait("the imported job", 15, |b| {
        b.text("main h1").contains("Nightly office image (copy)")
    });

    // A whole machine from its agent's page: the wizard opens on "all disks", named.
    b.go(&format!("{base}/agents/1"));
    // Its clone form lists the machine's devices, sources and targets.
    b.wait("the clone form's devices", 15, |b| {
        b.has("#clone-form select[name=source] option")
            && b.has("#clone-form select[name=target] option")
    });
    b.click("#image-machine");
    b.wait("the whole-machine wizard", 15, |b| {
        b.script(
            "return document.querySelector('#job-form input[name=name]').value",
            &[],
        )
        .as_str()
        .is_some_and(|n| n.starts_with("Whole machine "))
    });
    assert_eq!(
        b.script(
            "return document.querySelector('#job-form input[name=what]:checked').value",
            &[]
        ),
        "machine"
    );
    b.fill(
        "#job-form input[name='spec.all_disks.exclude']",
        "sdy, /dev/sdz",
    );
    b.choose("#job-form select[name='spec.target_id']", "1");
    b.shot("11b-whole-machine-wizard");
    b.click("#save-job");
    b.wait("the whole-machine job", 15, |b| b.has("#job-sources"));
    assert_eq!(
        b.text("#job-sources"),
        "all disks of each machine, except sdy, /dev/sdz"
    );
    // Edited into two named disks: the wizard shows them together, the page lists them.
    b.click("#edit-job");
    b.wait("the filled wizard", 15, |b| b.has("#job-form"));
    b.click("#job-form input[name=what][value=several]");
    b.fill(
        "#job-form textarea[name='spec.sources']",
        "/dev/sda\n/dev/sdb",
    );
    b.click("#save-job");
    b.wait("the two-disk job", 15, |b| {
        b.has("#job-sources") && b.text("#job-sources") == "/dev/sda, /dev/sdb"
    });

    // Mail settings and a test e-mail to the sink.
    b.go(&format!("{base}/settings"));
    b.fill("#smtp-form input[name='settings.server']", "localhost");
    b.fill(
        "#smtp-form input[name='settings.port']",
        &sink.port.to_string(),
    );
    b.choose("#smtp-form select[name='settings.tls']", "starttls");
    b.fill("#smtp-form input[name='settings.username']", SMTP_USER);
    b.fill("#smtp-form input[name=password]", SMTP_PASSWORD);
    b.fill(
        "#smtp-form input[name='settings.sender']",
        "Holdfast <holdfast@example.test>",
    );
    b.fill(
        "#smtp-form textarea[name='settings.ca_pem']",
        &std::fs::read_to_string(&sink.ca).expect("ca"),
    );
    b.click("#smtp-form button[type=submit]");
    b.wait("the settings saved", 15, |b| {
        b.text("#smtp-form .msg") == "Saved."
    });
    b.fill("#test-mail-form input[name=to]", "admin@example.test");
    b.click("#test-mail-form button[type=submit]");
    b.wait("the test mail sent", 30, |b| {
        b.text("#test-mail-form .msg").starts_with("Sent")
    });
    assert!(sink
        .mails()
        .iter()
        .any(|m| m.contains("X-Sink-To: admin@example.test") && m.contains("Test e-mail")));
    assert!(!b
        .script("return document.body.innerHTML", &[])
        .to_string()
        .contains(SMTP_PASSWORD));
    b.shot("12-settings");
    // A narrow window (a small laptop, a tablet): the navigation folds above the page.
    b.size(820, 1000);
    b.go(&format!("{base}/"));
    b.wait("the dashboard", 15, |b| b.has("main h1"));
    b.shot("13-dashboard-narrow");
    b.size(1400, 1000);
    b.go(&format!("{base}/settings"));

    // A change without the CSRF token is refused, with it accepted.
    assert_eq!(
        fetch(&b, "POST", "/api/v1/jobs/1/check", false),
        (403, "csrf".into())
    );
    assert_eq!(fetch(&b, "POST", "/api/v1/jobs/1/check", true).0, 200);

    // A viewer: sees everything, has no buttons that change anything, and the server
    // refuses the changes anyway.
    b.fill("#user-form input[name=name]", "vera");
    b.fill("#user-form input[name=password]", "viewer-password-1");
    b.choose("#user-form select[name=role]", "viewer");
    b.click("#user-form button[type=submit]");
    b.wait("the new user", 15, |b| b.text("#users").contains("vera"));
    // Roles change in place: vera becomes an operator, then a viewer again.
    b.choose("#user-2 select[name=role]", "operator");
    b.click("#user-2 button[type=submit]");
    b.wait("vera an operator", 15, |b| {
        b.text("#audit").contains("role=operator disabled=false")
    });
    b.choose("#user-2 select[name=role]", "viewer");
    b.click("#user-2 button[type=submit]");
    b.wait("vera a viewer", 15, |b| {
        b.text("#audit").contains("role=viewer disabled=false")
    });
    b.click("#logout");
    b.wait("the login page", 15, |b| b.url().contains("/login"));
    log_in_first(&b, &base, "vera", "viewer-password-1", "vera-chosen-pass-1");
    for (page, absent) in [
        ("/jobs/1", "#run-now"),
        ("/jobs", "#new-job"),
        ("/agents", "#enrol-form"),
        ("/agents/1", "#bandwidth-form"),
        ("/agents/1", "#image-machine"),
        ("/agents/1", "#clone-form"),
        ("/targets/1", "#test-form"),
        ("/settings", "#smtp-form"),
    ] {
        b.go(&format!("{base}{page}"));
        b.wait(page, 15, |b| b.has("main h1"));
        assert!(!b.has(absent), "{absent} on {page} for a viewer");
    }
    b.shot("14-viewer-settings");
    for (method, path) in [
        ("POST", "/api/v1/jobs/1/run"),
        ("DELETE", "/api/v1/jobs/1"),
        ("POST", "/api/v1/jobs/1/cancel"),
        ("DELETE", "/api/v1/agents/1"),
    ] {
        assert_eq!(
            fetch(&b, method, path, true),
            (403, "forbidden".into()),
            "{method} {path}"
        );
    }
    b.go(&format!("{base}/jobs/new"));
    b.wait("a refusal", 15, |b| {
        b.text("body").contains("your role does not allow this")
    });
}
