//! The real binary, as the README starts it: HTTPS with its own CA, the first admin printed
//! once, and a client that trusts only that CA.

use std::process::Command;

use crate::proc::{curl, free_port, printed_secrets, start};

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
    let port = free_port();
    let (mut child, printed) = start(dir.path(), port, true);
    let text = printed.join("\n");
    assert!(
        text.contains(&format!("https://127.0.0.1:{port}/")),
        "{text}"
    );
    let (fingerprint, password) = printed_secrets(&printed);
    // The command for other machines carries a token and the same fingerprint.
    let enrol = printed
        .iter()
        .find(|l| l.contains("enrol others"))
        .expect("enrolment command printed");
    assert!(
        enrol.contains("holdfast-agent enroll --server https://127.0.0.1:")
            && enrol.contains("--token hfe_")
            && enrol.contains(&fingerprint),
        "{enrol}"
    );

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
