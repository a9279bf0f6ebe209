//! Enrolment and the agent channel end to end: the real server and agent binaries over
//! HTTPS on loopback.

use crate::changed;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use holdfast_proto::{AgentMsg, RefusalCode, CHANNEL_PATH, PROTOCOL_VERSION};
use serde_json::Value;

use crate::fleet::{agent, agent_bin, enroll, wait_for, Api};
use crate::proc::{curl, first_start_secrets, free_port, start, start_with, FirstStart};

/// The server's first start in `dir` on `port` (with `extra` flags), answering: the process,
/// its log, what it printed for the first admin, and the API.
fn first_start(
    dir: &std::path::Path,
    port: u16,
    extra: &[&str],
) -> (std::process::Child, std::path::PathBuf, FirstStart, Api) {
    let (server, printed) = start_with(dir, port, true, extra);
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
    (server, log, first, api)
}

#[test]
fn enrol_connect_report_inventory_and_revoke() {
    if agent_bin().is_none() || Command::new("curl").arg("--version").output().is_err() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (mut server, log, first, api) = first_start(dir.path(), port, &[]);
    let password = api.first_login(&first);
    let fingerprint = first.fingerprint.clone();

    let created = api.call(
        "POST",
        "/api/v1/enrollment-tokens",
        Some("{\"name\":\"lab\",\"uses\":1}"),
    );
    let token = created["secret"].as_str().expect("token secret").to_owned();
    let command = created["command"].as_str().expect("command");
    assert!(
        command.contains(&token) && command.contains(&fingerprint),
        "{command}"
    );

    let config = dir.path().join("agent/agent.json");
    let cfg = config.to_str().expect("path");
    let server_url = format!("https://localhost:{port}");
    // A wrong fingerprint: refused before anything is sent, nothing written.
    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let out = enroll(&server_url, &token, wrong, cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not match the fingerprint"),
        "{err}"
    );
    assert!(!config.exists());
    // The right one enrols, and the config is private.
    let out = enroll(&server_url, &token, &fingerprint, cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&config).expect("config").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // The token was for one enrolment only.
    let out = enroll(&server_url, &token, &fingerprint, &format!("{cfg}.2"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("used up"), "{err}");

    // A run the server has as running on this agent, which the agent never got: when the
    // agent connects the server asks for its runs (a typed request over the real channel)
    // and ends that one failed, saying why.
    let agent_id = std::fs::read_to_string(&config)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|c| c["agent_id"].as_i64())
        .expect("agent id");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let orphan = runtime.block_on(async {
        let store = holdfast_server::store::Store::open(
            &holdfast_server::store::Store::sqlite_url(dir.path()),
        )
        .await
        .expect("store");
        let run = changed(&store, async |c| {
            c.create_run(None, agent_id, "orphan", "manual", None).await
        })
        .await
        .expect("run")
        .expect("created");
        assert!(store.claim_run(run.id).await.expect("claim"));
        run.id
    });
    // The server only ends runs that started before it asked (seconds).
    std::thread::sleep(Duration::from_millis(1100));

    // The daemon connects and reports its inventory.
    let mut daemon = Command::new(agent_bin().expect("agent"))
        .args(["run", "--config", cfg])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let mut id = 0;
    wait_for("the agent online with an inventory", &log, || {
        let list = api.call("GET", "/api/v1/agents", None);
        let first = &list["items"][0];
        id = first["id"].as_i64().unwrap_or(0);
        first["status"] == "online" && first["inventory_at"].is_i64()
    });
    let shown = api.call("GET", &format!("/api/v1/agents/{id}"), None);
    assert!(shown["inventory"]["disks"].is_array(), "{shown}");
    wait_for("the orphan run ended", &log, || {
        api.call("GET", &format!("/api/v1/reports/{orphan}"), None)["status"] == "failed"
    });
    let report = api.call("GET", &format!("/api/v1/reports/{orphan}"), None);
    assert!(
        report.to_string().contains("does not know this run"),
        "{report}"
    );
    assert!(!shown["inventory"]["hostname"]
        .as_str()
        .unwrap_or("")
        .is_empty());
    // A request over the channel, answered by the agent.
    let fresh = api.call(
        "POST",
        &format!("/api/v1/agents/{id}/inventory/refresh"),
        None,
    );
    assert!(fresh["volumes"].is_array(), "{fresh}");
    let (metrics, _) =
        curl(&["--cacert", &api.ca, &format!("{}/metrics", api.base)]).expect("metrics");
    assert!(metrics.contains("holdfast_agents_online 1"), "{metrics}");
    // At least this request's connection is open (upgraded agent channels leave the
    // listener's count and show in holdfast_agents_online).
    let open: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("holdfast_connections "))
        .and_then(|v| v.trim().parse().ok())
        .expect("connections gauge");
    assert!(open >= 1, "{metrics}");

    // An agent of another protocol version (here: the one before, with this agent's own
    // credential) is refused at hello, told which side to upgrade, and the agent's page in
    // the console says so; the connected daemon's channel is not disturbed.
    let credential = std::fs::read_to_string(&config)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|c| c["secret"].as_str().map(|s| format!("Bearer {s}")))
        .expect("agent credential");
    let old = AgentMsg::Hello {
        protocol: PROTOCOL_VERSION - 1,
        agent_version: "0.0.1".into(),
    };
    let answer = runtime.block_on(crate::channel::exchange(
        port,
        std::path::Path::new(&api.ca),
        CHANNEL_PATH,
        Some(&credential),
        Some(old),
    ));
    let (code, reason) = crate::channel::refusal(answer);
    assert_eq!(code, RefusalCode::Version);
    assert!(
        reason.contains(&format!("protocol version {}", PROTOCOL_VERSION - 1))
            && reason.contains("upgrade the agent"),
        "{reason}"
    );
    let page = api.call("GET", &format!("/agents/{id}"), None);
    let page = page.as_str().unwrap_or_default();
    assert!(
        page.contains("data-refusal") && page.contains("upgrade the agent"),
        "{page}"
    );
    let shown = api.call("GET", &format!("/api/v1/agents/{id}"), None);
    assert_eq!(shown["status"], "online", "{shown}");

    // Revoked: the channel closes at once and the daemon stops with the reason.
    let r = api.call("DELETE", &format!("/api/v1/agents/{id}"), None);
    assert!(r.is_string(), "{r}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = daemon.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the revoked agent kept running");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut daemon.stderr.take().expect("stderr"), &mut err)
        .expect("read");
    assert!(!status.success() && err.contains("revoked"), "{err}");
    let shown = api.call("GET", &format!("/api/v1/agents/{id}"), None);
    assert_eq!(shown["status"], "revoked");
    // And it cannot come back with its old credential.
    let out = agent(&["run", "--config", cfg]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
    let _ = server.kill();
    let _ = server.wait();

    // No secret ever reached the server's log or an agent's answer after its creation.
    let agent_secret = std::fs::read_to_string(&config)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|c| c["secret"].as_str().map(str::to_owned))
        .expect("agent secret");
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(logged.contains("agent enrolled"), "the log is the server's");
    for secret in [&first.password, &password, &token, &agent_secret] {
        assert!(
            !logged.contains(secret.as_str()),
            "a secret is in the server log"
        );
        assert!(!shown.to_string().contains(secret.as_str()));
    }
    let random = agent_secret.split('.').nth(1).expect("random part");
    assert!(!logged.contains(random) && !shown.to_string().contains(random));
}

#[test]
fn local_agent_flag_enrols_this_machine() {
    if agent_bin().is_none() || Command::new("curl").arg("--version").output().is_err() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (mut server, log, first, api) = first_start(dir.path(), port, &["--local-agent"]);
    api.first_login(&first);
    wait_for("the local agent online", &log, || {
        let list = api.call("GET", "/api/v1/agents", None);
        list["items"][0]["status"] == "online"
    });
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("local-agent.json"))
            .expect("config")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
}

#[test]
fn an_agent_fails_over_to_the_next_address_of_its_server() {
    if agent_bin().is_none() || Command::new("curl").arg("--version").output().is_err() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, dead, other) = (free_port(), free_port(), free_port());
    let (mut server, log, first, mut api) = first_start(dir.path(), port, &[]);
    api.first_login(&first);
    let created = api.call("POST", "/api/v1/enrollment-tokens", Some("{}"));
    let token = created["secret"].as_str().expect("token secret");
    let config = dir.path().join("agent.json");
    let cfg = config.to_str().expect("path");
    let at = |p: u16| format!("https://localhost:{p}");

    // Only https addresses are taken; nothing is written otherwise.
    let out = agent(&[
        "enroll",
        "--server",
        &at(port),
        "--also-server",
        "ftp://localhost:21",
        "--token",
        token,
        "--fingerprint",
        &first.fingerprint,
        "--config",
        cfg,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("https://host:port"),
        "{err}"
    );
    assert!(!config.exists());
    let out = agent(&[
        "enroll",
        "--server",
        &at(port),
        "--also-server",
        &at(dead),
        "--also-server",
        &at(other),
        "--token",
        token,
        "--fingerprint",
        &first.fingerprint,
        "--config",
        cfg,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).expect("config")).expect("json");
    assert_eq!(
        saved["more_servers"],
        serde_json::json!([at(dead), at(other)])
    );

    let agent_log = dir.path().join("agent.log");
    let mut daemon = Command::new(agent_bin().expect("agent"))
        .args(["run", "--config", cfg])
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(&agent_log)
                .map(Stdio::from)
                .expect("log"),
        )
        .spawn()
        .expect("run");
    let online =
        |api: &Api| api.call("GET", "/api/v1/agents", None)["items"][0]["status"] == "online";
    wait_for("the agent online at the first address", &log, || {
        online(&api)
    });

    // The server moves to the third address (as another instance would take over): the
    // agent skips the address nobody answers and connects there.
    let _ = server.kill();
    let _ = server.wait();
    let (mut moved, _) = start(dir.path(), other, false);
    api.base = at(other);
    let said = || std::fs::read_to_string(&agent_log).unwrap_or_default();
    wait_for("the agent at the third address", &log, || {
        said().contains(&format!("connected to {} as agent", at(other)))
    });
    wait_for("the agent online there", &log, || online(&api));
    let said = said();
    assert!(
        said.contains(&format!("{}: ", at(dead)))
            && said.contains(&format!("trying {}", at(other))),
        "{said}"
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = moved.kill();
    let _ = moved.wait();
}
