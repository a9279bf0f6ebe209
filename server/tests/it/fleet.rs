//! Helpers for tests that run the real server and agent binaries: the API over curl, the
//! agent binary, enrolment, and waiting with the server's log on failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::proc::{curl, first_start_secrets, free_port, start, FirstStart};

/// The agent binary, built next to the server's.
pub fn agent_bin() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_BIN_EXE_holdfast-server")).with_file_name("holdfast-agent");
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing: build the whole workspace",
        p.display()
    );
    eprintln!(
        "skipping: {} is not built (cargo build -p holdfast-agent)",
        p.display()
    );
    None
}

pub struct Api {
    pub base: String,
    pub ca: String,
    pub cookies: String,
}

/// The value of cookie `name` in curl's cookie jar `jar` (tab-separated, value last).
pub fn jar_cookie(jar: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(jar).ok()?.lines().find_map(|l| {
        let f: Vec<&str> = l.split('\t').collect();
        (f.len() == 7 && f[5] == name).then(|| f[6].to_owned())
    })
}

impl Api {
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let url = format!("{}{path}", self.base);
        // A browser's script repeats the session's CSRF cookie in a header; so do we.
        let csrf = format!(
            "x-csrf-token: {}",
            jar_cookie(Path::new(&self.cookies), "holdfast_csrf").unwrap_or_default()
        );
        let mut args = vec![
            "-H",
            &csrf,
            "--cacert",
            &self.ca,
            "-b",
            &self.cookies,
            "-c",
            &self.cookies,
            "-X",
            method,
        ];
        if let Some(b) = body {
            args.extend(["-H", "content-type: application/json", "-d", b]);
        }
        args.push(&url);
        let (out, err) = curl(&args).expect("curl");
        serde_json::from_str(&out).unwrap_or_else(|_| Value::String(format!("{out}{err}")))
    }
}

impl Api {
    /// Log in as the first admin with the password the first start wrote, and change it as
    /// the server asks; the new password.
    pub fn first_login(&self, first: &FirstStart) -> String {
        let login = self.call(
            "POST",
            "/api/v1/session",
            Some(&json!({"name": "admin", "password": first.password}).to_string()),
        );
        assert_eq!(login["role"], "admin", "{login}");
        let chosen = format!("{}-chosen", first.password);
        let changed = self.call(
            "PUT",
            "/api/v1/me/password",
            Some(&json!({"current": first.password, "new": chosen}).to_string()),
        );
        assert_eq!(changed, Value::String(String::new()), "password changed");
        chosen
    }

    /// GET `path` into the file `out` with extra curl `args`; the HTTP status (0 when curl
    /// gave up).
    pub fn fetch(&self, path: &str, out: &Path, args: &[&str]) -> u16 {
        let url = format!("{}{path}", self.base);
        let out = out.display().to_string();
        let mut all = vec![
            "--cacert",
            &self.ca,
            "-b",
            &self.cookies,
            "-o",
            &out,
            "-w",
            "%{http_code}",
        ];
        all.extend_from_slice(args);
        all.push(&url);
        curl(&all)
            .and_then(|(code, _)| code.trim().parse().ok())
            .unwrap_or(0)
    }
}

pub fn agent(args: &[&str]) -> std::process::Output {
    Command::new(agent_bin().expect("agent"))
        .args(args)
        .output()
        .expect("agent runs")
}

/// `holdfast-agent enroll` with `fingerprint`, writing `config`.
pub fn enroll(server: &str, token: &str, fingerprint: &str, config: &str) -> std::process::Output {
    agent(&[
        "enroll",
        "--server",
        server,
        "--token",
        token,
        "--fingerprint",
        fingerprint,
        "--config",
        config,
    ])
}

/// Wait up to 20 s for `check`; on time-out, fail with the server's log.
pub fn wait_for(what: &str, log: &Path, check: impl FnMut() -> bool) {
    wait_secs(what, log, 20, check);
}

/// Wait up to `secs` for `check`; on time-out, fail with the server's log.
pub fn wait_secs(what: &str, log: &Path, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("timed out waiting for {what}; server log:\n{log}");
}

/// A running `holdfast-agent run`, stopped on drop.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server with one enrolled, running agent.
pub struct Fleet {
    pub server: Daemon,
    pub dir: std::path::PathBuf,
    pub port: u16,
    pub agent: Option<Daemon>,
    pub api: Api,
    pub log: std::path::PathBuf,
    pub agent_log: std::path::PathBuf,
    pub agent_id: i64,
    /// The first admin's password (changed from the one the first start gave, as the server
    /// asks).
    pub admin_password: String,
    pub config: String,
    /// More environment for the agent daemon.
    pub agent_env: Vec<(String, String)>,
}

impl Fleet {
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let (server, printed) = start(dir, port, true);
        let log = dir.join("server.log");
        let first = first_start_secrets(dir, &printed);
        let api = Api {
            base: format!("https://localhost:{port}"),
            ca: dir.join("tls/ca.pem").display().to_string(),
            cookies: dir.join("cookies").display().to_string(),
        };
        wait_for("the server", &log, || {
            curl(&["--cacert", &api.ca, &format!("{}/healthz", api.base)])
                .is_some_and(|(o, _)| o == "ok\n")
        });
        let password = api.first_login(&first);
        let fingerprint = first.fingerprint;
        let token = api.call("POST", "/api/v1/enrollment-tokens", Some("{}"));
        let config = dir.join("agent.json").display().to_string();
        let out = enroll(
            &api.base,
            token["secret"].as_str().expect("secret"),
            &fingerprint,
            &config,
        );
        assert!(out.status.success(), "{out:?}");
        let agents = api.call("GET", "/api/v1/agents", None);
        let agent_id = agents["items"][0]["id"].as_i64().expect("agent id");
        let mut f = Self {
            server: Daemon(server),
            dir: dir.to_owned(),
            port,
            agent: None,
            api,
            log,
            agent_log: dir.join("agent.log"),
            agent_id,
            admin_password: password,
            config,
            agent_env: Vec::new(),
        };
        f.start_agent();
        f
    }

    pub fn start_agent(&mut self) {
        self.agent = None;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.agent_log)
            .expect("agent log");
        let child = Command::new(agent_bin().expect("agent"))
            .args(["run", "--config", &self.config])
            .envs(self.agent_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts");
        self.agent = Some(Daemon(child));
        let path = format!("/api/v1/agents/{}", self.agent_id);
        wait_for("the agent online", &self.log, || {
            self.api.call("GET", &path, None)["status"] == "online"
        });
    }

    /// Kill the server at once and start it again on the same data.
    pub fn restart_server(&mut self) {
        let _ = self.server.0.kill();
        let _ = self.server.0.wait();
        let (server, _) = start(&self.dir, self.port, false);
        self.server = Daemon(server);
        wait_for("the server again", &self.log, || {
            curl(&[
                "--cacert",
                &self.api.ca,
                &format!("{}/healthz", self.api.base),
            ])
            .is_some_and(|(o, _)| o == "ok\n")
        });
    }

    /// Kill the agent daemon at once (as a crash would).
    pub fn kill_agent(&mut self) {
        self.agent = None;
    }

    /// Wait until run `id` shows progress (bytes done).
    pub fn wait_progress(&self, id: i64) {
        wait_secs("progress of the run", &self.log, 60, || {
            let r = self.api.call("GET", &format!("/api/v1/reports/{id}"), None);
            r["progress"]["done"].as_u64().is_some_and(|d| d > 0)
        });
    }

    /// Run job `job` now; the run's id.
    pub fn run(&self, job: i64) -> i64 {
        let r = self
            .api
            .call("POST", &format!("/api/v1/jobs/{job}/run"), None);
        assert_eq!(r["runs"][0]["status"], "running", "{r}");
        r["runs"][0]["id"].as_i64().expect("run id")
    }

    /// Wait for run `id` to end; its report and the largest progress fraction seen.
    pub fn finish(&self, id: i64) -> (Value, f64) {
        let mut seen = 0.0f64;
        let mut report = Value::Null;
        wait_secs("the run to end", &self.log, 120, || {
            report = self.api.call("GET", &format!("/api/v1/reports/{id}"), None);
            let p = &report["progress"];
            if let (Some(d), Some(t)) = (p["done"].as_f64(), p["total"].as_f64()) {
                if t > 0.0 {
                    seen = seen.max(d / t);
                }
            }
            !matches!(report["status"].as_str(), Some("running" | "queued"))
        });
        (report, seen)
    }
}
