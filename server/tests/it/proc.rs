//! Running the real server binary and talking to it with curl.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

/// Run curl (30 s limit: generous for a loaded 2-core machine running VMs beside); its
/// stdout and stderr.
pub fn curl(args: &[&str]) -> Option<(String, String)> {
    // Longer than the server's own longest wait (an agent's answer to a check, 180 s), so a
    // slow agent shows as the server's answer, not as the client giving up first (at 30 s,
    // the same as the server's wait for an agent to accept an order, a loaded VM's agent
    // made run-now look hung).
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "200"])
        .args(args)
        .output()
        .ok()?;
    Some((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Start the server; the lines it printed up to the certificate line (on a first start, up
/// to the line that names the first-start file).
pub fn start(dir: &std::path::Path, port: u16, first: bool) -> (std::process::Child, Vec<String>) {
    start_with(dir, port, first, &[])
}

/// [`start`] with more flags.
pub fn start_with(
    dir: &std::path::Path,
    port: u16,
    first: bool,
    extra: &[&str],
) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_holdfast-server"))
        .args(["--data-dir", dir.to_str().expect("path")])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env_remove("HOLDFAST_ADMIN_PASSWORD")
        .stdout(Stdio::piped())
        // The server's log, for a failing test to show.
        .stderr(
            std::fs::File::create(dir.join("server.log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .expect("spawn");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = Vec::new();
    let mut seen_certificate = false;
    for line in lines {
        let line = line.expect("line");
        seen_certificate |= line.contains("certificate:");
        let done = if first {
            line.contains("first start:")
        } else {
            seen_certificate
        };
        printed.push(line);
        if done {
            break;
        }
    }
    (child, printed)
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// The certificate fingerprint the server printed, and the first admin's password and the
/// enrolment command from the first-start file in `dir`.
pub fn first_start_secrets(dir: &std::path::Path, printed: &[String]) -> FirstStart {
    let text = printed.join("\n");
    let fingerprint = text
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .expect("fingerprint printed")
        .to_owned();
    let file = std::fs::read_to_string(dir.join("first-start.txt")).expect("first-start file");
    let password = file
        .lines()
        .find_map(|l| l.strip_prefix("password:"))
        .expect("password in the first-start file")
        .trim()
        .to_owned();
    let enrol = file
        .lines()
        .find(|l| l.starts_with("holdfast-agent enroll"))
        .expect("enrolment command in the first-start file")
        .to_owned();
    FirstStart {
        fingerprint,
        password,
        enrol,
    }
}

/// What a first start gives the admin.
pub struct FirstStart {
    pub fingerprint: String,
    pub password: String,
    pub enrol: String,
}
