//! Two server instances on one PostgreSQL store, with two real agents split between them
//! and a schedule that starts runs every few seconds. The leader is killed (SIGKILL) in
//! the middle, then the next leader is paused (SIGSTOP) past its lease and resumed: every
//! scheduled start runs once (none lost, none doubled), every report is mailed once, every
//! instance shows every agent, and a paused leader that wakes does not act.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::fleet::{agent, agent_bin, wait_secs, Api, Daemon};
use crate::postgres::Postgres;
use crate::proc::{curl, first_start_secrets, free_port, start_with};
use holdfast_testkit::devices::{
    edit_files, mkfs, require_devices, sparse_file, tempdir, write_files, Loop,
};
use holdfast_testkit::servers::{SmtpSink, SMTP_PASSWORD, SMTP_USER};

/// A leader's term (the server's `--leader-lease-seconds`).
const LEASE: u64 = 4;
/// Seconds between starts of the schedule.
const EVERY: i64 = 4;

/// One server instance: its data folder, port, process and API.
struct Instance {
    dir: PathBuf,
    port: u16,
    process: Option<Daemon>,
    api: Api,
    log: PathBuf,
}

impl Instance {
    fn flags(url: &str) -> Vec<String> {
        [
            "--database-url",
            url,
            "--leader-lease-seconds",
            &LEASE.to_string(),
            "--heartbeat-seconds",
            "2",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Start an instance on `dir` (the first start writes the first-start file).
    fn start(dir: &Path, port: u16, url: &str, first: bool) -> (Self, Vec<String>) {
        let flags = Self::flags(url);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (child, printed) = start_with(dir, port, first, &flags);
        let log = dir.join("server.log");
        let api = Api {
            base: format!("https://localhost:{port}"),
            ca: dir.join("tls/ca.pem").display().to_string(),
            cookies: dir.join("cookies").display().to_string(),
        };
        let me = Self {
            dir: dir.to_owned(),
            port,
            process: Some(Daemon(child)),
            api,
            log,
        };
        wait_secs("the instance", &me.log, 30, || {
            curl(&["--cacert", &me.api.ca, &format!("{}/healthz", me.api.base)])
                .is_some_and(|(o, _)| o == "ok\n")
        });
        (me, printed)
    }

    fn restart(&mut self, url: &str) {
        let (again, _) = Self::start(&self.dir, self.port, url, false);
        self.process = again.process;
    }

    fn login(&self, password: &str) {
        let r = self.api.call(
            "POST",
            "/api/v1/session",
            Some(&json!({"name": "admin", "password": password}).to_string()),
        );
        assert_eq!(r["role"], "admin", "{r}");
    }

    fn pid(&self) -> i32 {
        let p = self.process.as_ref().expect("running").0.id();
        i32::try_from(p).expect("pid")
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal");
    }

    fn kill(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        if let Some(mut d) = self.process.take() {
            let _ = d.0.wait();
        }
    }

    fn info(&self) -> Value {
        self.api.call("GET", "/api/v1/info", None)
    }

    fn leads(&self) -> bool {
        self.info()["leading"] == true
    }

    /// Agents and their status, as this instance shows them.
    fn agents(&self) -> BTreeMap<i64, String> {
        let list = self.api.call("GET", "/api/v1/agents", None);
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["id"].as_i64().expect("id"),
                    a["status"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Every run of job `job`, as `api` lists them.
fn runs(api: &Api, job: i64) -> Vec<Value> {
    let list = api.call(
        "GET",
        &format!("/api/v1/reports?job_id={job}&limit=500"),
        None,
    );
    list["items"].as_array().cloned().unwrap_or_default()
}

fn ended(api: &Api, job: i64) -> usize {
    runs(api, job)
        .iter()
        .filter(|r| !matches!(r["status"].as_str(), Some("running" | "queued")))
        .count()
}

#[test]
fn two_instances_share_the_work_and_hand_leadership_over_once() {
    if agent_bin().is_none() || !require_devices("instances") {
        return;
    }
    let Some(pg) = Postgres::start("instances") else {
        return;
    };
    let Some(sink) = SmtpSink::start("instances") else {
        return;
    };
    let t = tempdir();
    let work = t.path();
    let (a_dir, b_dir) = (work.join("a"), work.join("b"));
    std::fs::create_dir_all(&a_dir).expect("a");
    std::fs::create_dir_all(&b_dir).expect("b");

    // The first instance makes the store, its master key and certificate; the second is
    // given the same key and certificate (as docs/deployment.md says) and no first start.
    let (a, printed) = Instance::start(&a_dir, free_port(), &pg.url, true);
    let first = first_start_secrets(&a_dir, &printed);
    let password = a.api.first_login(&first);
    std::fs::copy(a_dir.join("master.key"), b_dir.join("master.key")).expect("key");
    let copied = std::process::Command::new("cp")
        .args(["-a"])
        .arg(a_dir.join("tls"))
        .arg(&b_dir)
        .status()
        .expect("cp");
    assert!(copied.success());
    let (b, _) = Instance::start(&b_dir, free_port(), &pg.url, false);
    b.login(&password);
    assert_eq!(
        b.info()["certificate_fingerprint"],
        first.fingerprint.as_str()
    );
    assert!(!b_dir.join("first-start.txt").exists());
    let mut instances = [a, b];

    // One leader.
    wait_secs("one leader", &instances[0].log, 30, || {
        instances.iter().filter(|i| i.leads()).count() == 1
    });

    // Two agents, each enrolled with both addresses, one first on each instance.
    let token = instances[0]
        .api
        .call("POST", "/api/v1/enrollment-tokens", Some(r#"{"uses": 2}"#));
    let token = token["secret"].as_str().expect("token").to_owned();
    let mut agents = Vec::new();
    let mut agent_ids = Vec::new();
    for (n, (first_at, then)) in [(0usize, 1usize), (1, 0)].into_iter().enumerate() {
        let config = work.join(format!("agent{n}/agent.json"));
        std::fs::create_dir_all(config.parent().expect("dir")).expect("agent dir");
        let at = |i: usize| format!("https://localhost:{}", instances[i].port);
        let out = agent(&[
            "enroll",
            "--server",
            &at(first_at),
            "--also-server",
            &at(then),
            "--token",
            &token,
            "--fingerprint",
            &first.fingerprint,
            "--config",
            config.to_str().expect("path"),
        ]);
        assert!(out.status.success(), "{out:?}");
        let log = std::fs::File::create(work.join(format!("agent{n}.log"))).expect("log");
        let child = std::process::Command::new(agent_bin().expect("agent"))
            .args(["run", "--config", config.to_str().expect("path")])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts");
        agents.push(Daemon(child));
    }
    wait_secs(
        "both agents online on both instances",
        &instances[1].log,
        60,
        || {
            instances.iter().all(|i| {
                let seen = i.agents();
                seen.len() == 2 && seen.values().all(|s| s == "online")
            })
        },
    );
    agent_ids.extend(instances[0].agents().keys().copied());
    // Split: each instance has one agent's channel.
    for i in &instances {
        let metrics = curl(&["--cacert", &i.api.ca, &format!("{}/metrics", i.api.base)])
            .expect("metrics")
            .0;
        assert!(metrics.contains("holdfast_agents_online 1\n"), "{metrics}");
    }

    // Mail, and a job per agent every few seconds that mails every report.
    let smtp = json!({
        "settings": {
            "server": "localhost", "port": sink.port, "tls": "starttls", "username": SMTP_USER,
            "sender": "Holdfast <holdfast@example.test>",
            "ca_pem": std::fs::read_to_string(&sink.ca).expect("ca"),
        },
        "password": SMTP_PASSWORD,
    });
    let r = instances[0]
        .api
        .call("PUT", "/api/v1/settings/smtp", Some(&smtp.to_string()));
    assert_eq!(r["password"], "set", "{r}");
    let vol = work.join("vol.img");
    sparse_file(&vol, 16 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    edit_files(lo.path(), "ext4", work, |d| write_files(d, 0, 3));
    let mut jobs = Vec::new();
    for (n, agent_id) in agent_ids.iter().enumerate() {
        let images = work.join(format!("images{n}"));
        std::fs::create_dir_all(&images).expect("images");
        let target = instances[n].api.call(
            "POST",
            "/api/v1/targets",
            Some(
                &json!({"name": format!("local{n}"), "url": images.display().to_string()})
                    .to_string(),
            ),
        );
        let job = instances[n].api.call(
            "POST",
            "/api/v1/jobs",
            Some(
                &json!({"name": format!("every{EVERY}s-{n}"), "spec": {
                    "agents": [agent_id],
                    "source": lo.path(),
                    "target_id": target["id"],
                    "name_template": "r$TEMPL:(RunId).hfi",
                    "compression_level": 1,
                    "schedule": {"kind": "cron", "expression": format!("*/{EVERY} * * * * *"), "time_frame_minutes": 5},
                    "notify": {"when": "always", "recipients": ["ops@example.test"]},
                }})
                .to_string(),
            ),
        );
        jobs.push(job["id"].as_i64().unwrap_or_else(|| panic!("{job}")));
    }
    let all_ended = |api: &Api, at_least: usize| jobs.iter().all(|j| ended(api, *j) >= at_least);
    wait_secs("three runs of each job", &instances[0].log, 90, || {
        all_ended(&instances[1].api, 3)
    });

    // Kill the leader in the middle of it.
    let leader = usize::from(!instances[0].leads());
    let other = 1 - leader;
    let before = ended(&instances[other].api, jobs[0]).min(ended(&instances[other].api, jobs[1]));
    instances[leader].kill();
    // Within the lease (and a beat or two) the other leads, and shows every agent online
    // once the killed instance's agent has moved over.
    wait_secs(
        "the other instance to lead",
        &instances[other].log,
        LEASE + 10,
        || instances[other].leads(),
    );
    wait_secs(
        "every agent online on the survivor",
        &instances[other].log,
        60,
        || {
            let seen = instances[other].agents();
            seen.len() == 2 && seen.values().all(|s| s == "online")
        },
    );
    let page = work.join("agents.html");
    assert_eq!(instances[other].api.fetch("/agents", &page, &[]), 200);
    let html = std::fs::read_to_string(&page).expect("page");
    assert!(html.matches("online").count() >= 2, "{html}");
    wait_secs(
        "three more runs of each job",
        &instances[other].log,
        90,
        || all_ended(&instances[other].api, before + 3),
    );

    // The killed instance comes back (it follows); the leader is paused past its lease.
    instances[leader].restart(&pg.url);
    instances[leader].login(&password);
    let (paused, woken) = (other, leader);
    let mark = instances[paused].log_text().len();
    instances[paused].signal(nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(3 * LEASE));
    wait_secs(
        "the restarted instance to lead",
        &instances[woken].log,
        30,
        || instances[woken].leads(),
    );
    let before = ended(&instances[woken].api, jobs[0]).min(ended(&instances[woken].api, jobs[1]));
    instances[paused].signal(nix::sys::signal::Signal::SIGCONT);
    wait_secs(
        "three runs of each job after the pause",
        &instances[woken].log,
        90,
        || all_ended(&instances[woken].api, before + 3),
    );
    assert!(
        !instances[paused].leads(),
        "the woken instance believes it leads"
    );
    let after_pause = &instances[paused].log_text()[mark..];
    assert!(
        after_pause.contains("this instance no longer leads"),
        "{after_pause}"
    );
    let woke_at = after_pause
        .find("this instance no longer leads")
        .expect("stepped down");
    assert!(
        !after_pause[woke_at..].contains("schedule fired"),
        "the paused leader recorded starts after it woke:\n{after_pause}"
    );

    // Stop the schedules; let the last runs end.
    let api = &instances[woken].api;
    for job in &jobs {
        let mut spec = api.call("GET", &format!("/api/v1/jobs/{job}"), None);
        spec["enabled"] = json!(false);
        let put = json!({"name": spec["name"], "enabled": false, "spec": spec["spec"]});
        api.call(
            "PUT",
            &format!("/api/v1/jobs/{job}"),
            Some(&put.to_string()),
        );
    }
    wait_secs("the last runs to end", &instances[woken].log, 60, || {
        jobs.iter().all(|j| {
            runs(api, *j)
                .iter()
                .all(|r| !matches!(r["status"].as_str(), Some("running" | "queued")))
        })
    });

    // Every start from the first to the last ran once and succeeded.
    let mut report_ids = BTreeSet::new();
    for job in &jobs {
        let list = runs(api, *job);
        let mut starts = BTreeMap::new();
        for r in &list {
            let at = r["scheduled_for"].as_i64().unwrap_or_else(|| panic!("{r}"));
            assert!(starts.insert(at, r.clone()).is_none(), "start {at} twice");
            assert_eq!(r["status"], "successful", "{r}");
            report_ids.insert(r["id"].as_i64().expect("id"));
        }
        let (first_at, last_at) = (
            *starts.keys().next().expect("runs"),
            *starts.keys().last().expect("runs"),
        );
        let missing: Vec<i64> = (0..)
            .map(|k| first_at + k * EVERY)
            .take_while(|t| *t <= last_at)
            .filter(|t| !starts.contains_key(t))
            .collect();
        assert!(
            missing.is_empty(),
            "starts of job {job} never recorded: {missing:?}"
        );
    }

    // Every report mailed once: one mail per report, no Message-ID twice.
    wait_secs("a mail per report", &instances[woken].log, 60, || {
        sink.mails()
            .iter()
            .filter(|m| m.contains("Report id:"))
            .count()
            >= report_ids.len()
    });
    std::thread::sleep(Duration::from_secs(6)); // an outbox tick: nothing more comes
    let mails: Vec<String> = sink
        .mails()
        .into_iter()
        .filter(|m| m.contains("Report id:"))
        .collect();
    let mut ids = BTreeSet::new();
    let mut mailed = BTreeMap::<i64, usize>::new();
    for m in &mails {
        let id = m
            .lines()
            .find_map(|l| {
                l.strip_prefix("Message-ID: ")
                    .or_else(|| l.strip_prefix("Message-Id: "))
            })
            .unwrap_or_else(|| panic!("no Message-ID: {m}"));
        assert!(ids.insert(id.to_owned()), "Message-ID {id} twice");
        let report = m
            .lines()
            .find_map(|l| l.trim().strip_prefix("Report id: "))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or_else(|| panic!("no report id: {m}"));
        *mailed.entry(report).or_default() += 1;
    }
    let once: BTreeSet<i64> = mailed.keys().copied().collect();
    assert_eq!(once, report_ids);
    assert!(mailed.values().all(|n| *n == 1), "{mailed:?}");
    drop(agents);
}
