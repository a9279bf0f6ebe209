//! The real binary, as the README starts it: HTTPS with its own CA, the first admin printed
//! once, and a client that trusts only that CA.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

fn curl(args: &[&str]) -> Option<(String, String)> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .ok()?;
    Some((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn server_starts_with_its_own_ca_and_first_admin() {
    if Command::new("curl").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "curl is missing (scripts/test.sh installs it)"
        );
        eprintln!("skipping: curl is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let (mut child, printed) = start(dir.path(), port, true);
    let text = printed.join("\n");
    assert!(
        text.contains(&format!("https://127.0.0.1:{port}/")),
        "{text}"
    );
    let fingerprint = text
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .expect("fingerprint printed")
        .to_owned();
    let password = text
        .split('\'')
        .nth(3)
        .expect("password printed")
        .to_owned();

    let ca = dir.path().join("tls/ca.pem");
    let base = format!("https://localhost:{port}");
    let mut health = None;
    for _ in 0..100 {
        health = curl(&[
            "--cacert",
            ca.to_str().expect("path"),
            &format!("{base}/healthz"),
        ]);
        if health.as_ref().is_some_and(|(o, _)| o == "ok\n") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(health.map(|(o, _)| o).as_deref(), Some("ok\n"));
    // A client that does not trust the server's CA is refused by TLS.
    let (out, err) = curl(&[&format!("{base}/healthz")]).expect("curl");
    assert!(out.is_empty() && err.contains("certificate"), "{err}");
    // The printed password logs in; the fingerprint is the one the API reports.
    let login = format!("{{\"name\":\"admin\",\"password\":\"{password}\"}}");
    let cookies = dir.path().join("cookies");
    let (out, _) = curl(&[
        "--cacert",
        ca.to_str().expect("path"),
        "-c",
        cookies.to_str().expect("path"),
        "-H",
        "content-type: application/json",
        "-d",
        &login,
        &format!("{base}/api/v1/session"),
    ])
    .expect("curl");
    assert!(out.contains("\"role\":\"admin\""), "{out}");
    let (out, _) = curl(&[
        "--cacert",
        ca.to_str().expect("path"),
        "-b",
        cookies.to_str().expect("path"),
        &format!("{base}/api/v1/info"),
    ])
    .expect("curl");
    assert!(out.contains(&fingerprint), "{out}");

    // SIGTERM stops it; a second start keeps the CA and creates no other admin.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().expect("wait").success(), "a clean shutdown");
    let (mut again, printed) = start(dir.path(), port, false);
    let _ = Command::new("kill")
        .args(["-TERM", &again.id().to_string()])
        .status();
    let _ = again.wait();
    let text = printed.join("\n");
    assert!(
        text.contains(&fingerprint) && !text.contains("first start"),
        "{text}"
    );
}

/// Start the server; the lines it printed up to the certificate line (and the first-start
/// line when `first` is true).
fn start(dir: &std::path::Path, port: u16, first: bool) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_holdfast-server"))
        .args(["--data-dir", dir.to_str().expect("path")])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("HOLDFAST_ADMIN_PASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = Vec::new();
    let mut seen_certificate = false;
    for line in lines {
        let line = line.expect("line");
        seen_certificate |= line.contains("certificate:");
        let done = if first {
            line.contains("first start")
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
