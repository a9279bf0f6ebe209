//! Helpers for tests that run the real server and agent binaries: the API over curl, the
//! agent binary, enrolment, and waiting with the server's log on failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::proc::curl;

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
