//! Server and two agents on their own addresses, each in its own network namespace, joined
//! by a bridge in a fourth. All traffic stays inside the namespaces: the root namespace gets
//! an `unreachable` route for the test subnet and never connects to it; the test talks to the
//! server with curl run inside the server's namespace.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The test subnet (private; routed nowhere from the root namespace).
const SUBNET: &str = "10.231.7.0/24";
const SERVER_IP: &str = "10.231.7.1";

pub(crate) fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The namespaces; removed on drop.
struct Net {
    tag: String,
}

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("hf{}{name}", self.tag)
    }

    fn up(tag: &str) -> Option<Self> {
        let net = Net {
            tag: tag.to_owned(),
        };
        let (br, srv, a1, a2) = (net.ns("br"), net.ns("srv"), net.ns("a1"), net.ns("a2"));
        // Unreachable from the root namespace, whatever the host's routes say.
        let _ = sh(&format!("ip route add unreachable {SUBNET}"));
        let mut ok = sh(&format!("ip netns add {br} && ip -n {br} link add br0 type bridge && ip -n {br} link set br0 up"));
        for (i, ns) in [(1, &srv), (2, &a1), (3, &a2)] {
            ok = ok
                && sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"))
                && sh(&format!("ip link add v{tag}{i} netns {ns} type veth peer name p{i} netns {br}"))
                && sh(&format!("ip -n {br} link set p{i} master br0 && ip -n {br} link set p{i} up"))
                && sh(&format!("ip -n {ns} addr add 10.231.7.{i}/24 dev v{tag}{i} && ip -n {ns} link set v{tag}{i} up"));
        }
        ok.then_some(net)
    }

    /// Cut or restore bridge port `i`: 1 the server's, 2 agent 1's, 3 agent 2's.
    fn link(&self, i: u32, up: bool) {
        assert!(sh(&format!(
            "ip -n {} link set p{i} {}",
            self.ns("br"),
            if up { "up" } else { "down" }
        )));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in ["srv", "a1", "a2", "br"] {
            let _ = sh(&format!("ip netns del {}", self.ns(n)));
        }
    }
}

pub(crate) fn in_ns(ns: &str, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

pub(crate) fn wait_for(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

pub(crate) struct Kill(pub(crate) Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Skip with a message, or fail under CI.
pub(crate) fn unavailable(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "{why} (CI is set)");
    eprintln!("skipping: {why}");
}

/// The server and agent binaries (the agent is built next to the server).
fn binaries() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let server_bin = Path::new(env!("CARGO_BIN_EXE_holdfast-server")).to_owned();
    let agent_bin = server_bin.with_file_name("holdfast-agent");
    if !agent_bin.exists() {
        unavailable("holdfast-agent is not built");
        return None;
    }
    Some((server_bin, agent_bin))
}

/// The server in the `srv` namespace on `port`, its log in `d/server.log`.
fn start_server(net: &Net, server_bin: &Path, d: &Path, port: u16) -> Kill {
    let mut server = Command::new("ip");
    server
        .args(["netns", "exec", &net.ns("srv")])
        .arg(server_bin)
        .args(["--data-dir", d.to_str().expect("path")])
        .args([
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--name",
            &format!("localhost,{SERVER_IP}"),
        ])
        .args(["--heartbeat-seconds", "1"])
        .env("HOLDFAST_ADMIN_PASSWORD", "netns-admin-pass")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(d.join("server.log")).expect("log"),
        ));
    Kill(server.spawn().expect("server"))
}

/// The API over curl run inside the server's namespace, to its loopback.
pub(crate) struct NsApi {
    pub(crate) ns: String,
    pub(crate) ca: std::path::PathBuf,
    pub(crate) cookies: std::path::PathBuf,
    pub(crate) port: u16,
}

impl NsApi {
    fn new(net: &Net, d: &Path, port: u16) -> Self {
        Self {
            ns: net.ns("srv"),
            ca: d.join("tls/ca.pem"),
            cookies: d.join("cookies"),
            port,
        }
    }

    pub(crate) fn call(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let mut c = in_ns(&self.ns, Path::new("curl"));
        c.args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&self.ca);
        let csrf = crate::fleet::jar_cookie(&self.cookies, "holdfast_csrf").unwrap_or_default();
        c.args(["-H", &format!("x-csrf-token: {csrf}")]);
        c.arg("-b")
            .arg(&self.cookies)
            .arg("-c")
            .arg(&self.cookies)
            .args(["-X", method]);
        if let Some(b) = body {
            c.args(["-H", "content-type: application/json", "-d", b]);
        }
        c.arg(format!("https://localhost:{}{path}", self.port));
        let out = c.output().expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The certificate fingerprint agents pin, and an enrolment token for `uses` agents.
    fn enrolment(&self, uses: u32) -> (String, String) {
        let fingerprint = self.call("GET", "/api/v1/info", None)["certificate_fingerprint"]
            .as_str()
            .expect("fingerprint")
            .to_owned();
        let body = format!("{{\"uses\":{uses}}}");
        let token = self.call("POST", "/api/v1/enrollment-tokens", Some(&body))["secret"]
            .as_str()
            .expect("token")
            .to_owned();
        (fingerprint, token)
    }

    /// Wait for the server and log in as admin.
    pub(crate) fn login(&self) {
        wait_for("the server", 20, || {
            self.ca.exists()
                && self.call(
                    "POST",
                    "/api/v1/session",
                    Some("{\"name\":\"admin\",\"password\":\"netns-admin-pass\"}"),
                )["role"]
                    == "admin"
        });
    }
}

#[test]
fn two_agents_in_namespaces_go_offline_and_come_back() {
    let Some((server_bin, agent_bin)) = binaries() else {
        return;
    };
    let tag = format!("{}", std::process::id() % 10000);
    let Some(net) = Net::up(&tag) else {
        return unavailable("cannot create network namespaces (needs root and iproute2)");
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let port = 18000 + (std::process::id() % 1000) as u16;
    let _server = start_server(&net, &server_bin, d, port);
    let ns_api = NsApi::new(&net, d, port);
    let api = |method: &str, path: &str, body: Option<&str>| ns_api.call(method, path, body);
    ns_api.login();
    let (fingerprint, token) = ns_api.enrolment(2);
    let server_url = format!("https://{SERVER_IP}:{port}");

    // A wrong fingerprint is refused by the agent.
    let out = in_ns(&net.ns("a1"), &agent_bin)
        .args(["enroll", "--server", &server_url, "--token", &token])
        .args([
            "--fingerprint",
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ])
        .arg("--config")
        .arg(d.join("wrong.json"))
        .output()
        .expect("agent");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match the fingerprint"));

    let mut daemons = Vec::new();
    for a in ["a1", "a2"] {
        let cfg = d.join(format!("{a}.json"));
        let out = in_ns(&net.ns(a), &agent_bin)
            .args([
                "enroll",
                "--server",
                &server_url,
                "--token",
                &token,
                "--fingerprint",
                &fingerprint,
            ])
            .arg("--config")
            .arg(&cfg)
            .output()
            .expect("agent");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run = in_ns(&net.ns(a), &agent_bin)
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(d.join(format!("{a}.log"))).expect("log"),
            ))
            .spawn()
            .expect("run");
        daemons.push(Kill(run));
    }
    let status = |id: i64| api("GET", &format!("/api/v1/agents/{id}"), None)["status"].clone();
    wait_for("both agents online with inventories", 30, || {
        let list = api("GET", "/api/v1/agents", None);
        list["items"].as_array().is_some_and(|a| {
            a.len() == 2
                && a.iter()
                    .all(|x| x["status"] == "online" && x["inventory_at"].is_i64())
        })
    });
    // Cut agent 1's link: it goes offline, agent 2 stays online; restore it: it comes back.
    net.link(2, false);
    wait_for("agent 1 offline", 30, || status(1) == "offline");
    assert_eq!(status(2), "online");
    net.link(2, true);
    wait_for("agent 1 back online", 90, || status(1) == "online");
    // A server that goes silent (stopped, not closed): agents notice from the missing pings,
    // reconnect, and are online again once it answers.
    let pid = _server.0.id();
    let server_pid = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|c| c.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| pid.to_string());
    assert!(sh(&format!("kill -STOP {server_pid}")));
    std::thread::sleep(Duration::from_secs(5));
    assert!(sh(&format!("kill -CONT {server_pid}")));
    wait_for("agents online after the silence", 60, || {
        let log = std::fs::read_to_string(d.join("a2.log")).unwrap_or_default();
        log.contains("stopped answering") && status(1) == "online" && status(2) == "online"
    });
    // Revoked: refused from then on.
    api("DELETE", "/api/v1/agents/2", None);
    wait_for("agent 2 revoked and gone", 30, || {
        status(2) == "revoked" && daemons[1].0.try_wait().ok().flatten().is_some()
    });
    assert_eq!(status(1), "online");
}

/// A job is running when the agent's link is cut: it goes on, its report arrives once the
/// link is back, and it is not run twice.
#[test]
fn a_job_outlives_a_cut_link_and_reports_once_back() {
    let Some((server_bin, agent_bin)) = binaries() else {
        return;
    };
    if !holdfast_testkit::devices::require_devices("job_link_cut") {
        return;
    }
    let tag = format!("{}", (std::process::id() + 5000) % 10000);
    let Some(net) = Net::up(&tag) else {
        return unavailable("cannot create network namespaces (needs root and iproute2)");
    };
    let t = holdfast_testkit::devices::tempdir();
    let d = t.path();
    let port = 19000 + (std::process::id() % 1000) as u16;
    let _server = start_server(&net, &server_bin, d, port);
    let ns_api = NsApi::new(&net, d, port);
    let api = |method: &str, path: &str, body: Option<&str>| ns_api.call(method, path, body);
    ns_api.login();
    let (fingerprint, token) = ns_api.enrolment(1);
    let cfg = d.join("a1.json");
    let out = in_ns(&net.ns("a1"), &agent_bin)
        .args(["enroll", "--server", &format!("https://{SERVER_IP}:{port}")])
        .args(["--token", &token, "--fingerprint", &fingerprint])
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("agent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _agent = Kill(
        in_ns(&net.ns("a1"), &agent_bin)
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(d.join("a1.log")).expect("log"),
            ))
            .spawn()
            .expect("run"),
    );
    wait_for("the agent online", 30, || {
        api("GET", "/api/v1/agents/1", None)["status"] == "online"
    });

    // A slow job to a folder on the agent's machine (the namespaces share the files).
    let vol = d.join("vol.img");
    holdfast_testkit::devices::sparse_file(&vol, 192 << 20);
    let lo = holdfast_testkit::devices::Loop::new(&vol);
    holdfast_testkit::devices::mkfs(lo.path(), "ext4");
    holdfast_testkit::devices::edit_files(lo.path(), "ext4", d, |m| {
        std::fs::write(
            m.join("noise.bin"),
            holdfast_testkit::devices::noise(150 << 20, 9),
        )
        .expect("noise");
    });
    let images = d.join("images");
    std::fs::create_dir_all(&images).expect("images");
    let target = api(
        "POST",
        "/api/v1/targets",
        Some(
            &serde_json::json!({"name": "local", "url": images.display().to_string()}).to_string(),
        ),
    );
    let job = api(
        "POST",
        "/api/v1/jobs",
        Some(
            &serde_json::json!({"name": "through the cut", "spec": {
                "agents": [1], "source": lo.path(), "target_id": target["id"], "compression_level": 19,
            }})
            .to_string(),
        ),
    );
    let job_id = job["id"].as_i64().unwrap_or_else(|| panic!("{job}"));
    let run = api("POST", &format!("/api/v1/jobs/{job_id}/run"), None);
    let run_id = run["runs"][0]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{run}"));
    let report = |id: i64| api("GET", &format!("/api/v1/reports/{id}"), None);
    wait_for("progress", 60, || {
        report(run_id)["progress"]["done"]
            .as_u64()
            .is_some_and(|x| x > 0)
    });
    net.link(2, false);
    wait_for("the agent offline", 30, || {
        api("GET", "/api/v1/agents/1", None)["status"] == "offline"
    });
    assert_eq!(report(run_id)["status"], "running");
    // The image finishes while the server is unreachable; the report waits on the agent.
    wait_for("the image written", 120, || {
        std::fs::read_dir(&images)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".hfi"))
            })
            .unwrap_or(false)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(report(run_id)["status"], "running");
    net.link(2, true);
    wait_for("the report after the link is back", 90, || {
        report(run_id)["status"] == "successful"
    });
    let all = api("GET", &format!("/api/v1/reports?job_id={job_id}"), None);
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1), "{all}");
    let files: Vec<_> = std::fs::read_dir(&images)
        .expect("images")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
}

/// Enrol and start an agent in namespace `ns`, with its own host name (its own UTS
/// namespace), configuration `cfg` and log `log`.
fn agent_in(
    net: &Net,
    ns: &str,
    agent_bin: &Path,
    enroll: &[&str],
    cfg: &Path,
    log: &Path,
) -> Kill {
    let host = format!("agent-{ns}");
    let wrap = |args: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &net.ns(ns), "unshare", "--uts", "sh", "-c"])
            .arg(format!(
                "hostname {host} && exec {} {args}",
                agent_bin.display()
            ));
        c
    };
    let out = wrap(&format!(
        "enroll {} --config {}",
        enroll.join(" "),
        cfg.display()
    ))
    .output()
    .expect("enroll");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Kill(
        wrap(&format!("run --config {}", cfg.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log).expect("log")))
            .spawn()
            .expect("run"),
    )
}

/// Start times for a cron schedule: four starts `gap` seconds apart, all in one minute (the
/// next one when this one has too little left), as one cron expression in UTC that fires
/// only then this year.
fn four_starts(gap: u32) -> (String, Vec<chrono::DateTime<chrono::Utc>>) {
    use chrono::{Datelike as _, DurationRound as _, Timelike as _};
    let mut first = chrono::Utc::now() + chrono::Duration::seconds(12);
    if first.second() + 3 * gap > 59 {
        first = first
            .duration_trunc(chrono::Duration::minutes(1))
            .expect("minute")
            + chrono::Duration::seconds(62);
    }
    let starts: Vec<_> = (0..4)
        .map(|i| first + chrono::Duration::seconds(i64::from(i * gap)))
        .collect();
    let seconds: Vec<String> = starts.iter().map(|t| t.second().to_string()).collect();
    let expr = format!(
        "{} {} {} {} {} *",
        seconds.join(","),
        first.minute(),
        first.hour(),
        first.day(),
        first.month()
    );
    (expr, starts)
}

/// The whole product in one piece. A server, two agents each in its own network namespace
/// and host name, and an SFTP server, a Samba share and an SMTP sink reachable only inside
/// the test network. Two sites bring a target, a schedule and a mail rule each; each site's
/// incremental-chain job (chains of two, keep the newest chain) images its agent's loop
/// device at four scheduled starts. The job's before-command changes the file system each
/// time. Every change is captured, retention deletes only the old chain, each run mails its
/// report, and the last image restores to the last state.
#[test]
fn scheduled_chains_on_two_agents_go_to_sftp_and_smb_with_retention_and_mail() {
    use holdfast_testkit::devices::{
        edit_files, mkfs, noise, read_files, sparse_file, write_files, Loop,
    };
    use holdfast_testkit::servers::{
        Smbd, SmtpSink, Sshd, PASSWORD, SMTP_PASSWORD, SMTP_USER, USER,
    };
    use serde_json::json;
    const TEST: &str = "e2e_netns";
    const IMAGE_PASSWORD: &str = "office image password";
    let Some((server_bin, agent_bin)) = binaries() else {
        return;
    };
    if !holdfast_testkit::devices::require_devices(TEST) {
        return;
    }
    let tag = format!("{}", (std::process::id() + 2500) % 10000);
    let Some(net) = Net::up(&tag) else {
        return unavailable("cannot create network namespaces (needs root and iproute2)");
    };
    let srv = net.ns("srv");
    let (Some(sshd), Some(smbd), Some(sink)) = (
        Sshd::start_in_netns(TEST, &srv, SERVER_IP),
        Smbd::start_in_netns(TEST, &srv, SERVER_IP),
        SmtpSink::start_in_netns(TEST, &srv),
    ) else {
        return;
    };
    let t = holdfast_testkit::devices::tempdir();
    let d = t.path();
    let port = 17000 + (std::process::id() % 1000) as u16;
    let _server = start_server(&net, &server_bin, d, port);
    let ns_api = NsApi::new(&net, d, port);
    let api = |method: &str, path: &str, body: Value| {
        let body = (!body.is_null()).then(|| body.to_string());
        ns_api.call(method, path, body.as_deref())
    };
    ns_api.login();
    let (fingerprint, token) = ns_api.enrolment(2);
    let server_url = format!("https://{SERVER_IP}:{port}");
    let enroll = [
        "--server",
        server_url.as_str(),
        "--token",
        token.as_str(),
        "--fingerprint",
        fingerprint.as_str(),
    ];
    let _agents: Vec<Kill> = ["a1", "a2"]
        .iter()
        .map(|a| {
            agent_in(
                &net,
                a,
                &agent_bin,
                &enroll,
                &d.join(format!("{a}.json")),
                &d.join(format!("{a}.log")),
            )
        })
        .collect();
    wait_for("both agents online", 30, || {
        let list = api("GET", "/api/v1/agents", Value::Null);
        list["items"]
            .as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|x| x["status"] == "online"))
    });
    let r = api(
        "PUT",
        "/api/v1/settings/smtp",
        json!({"settings": {
            "server": "localhost", "port": sink.port, "tls": "starttls", "username": SMTP_USER,
            "sender": "Holdfast <holdfast@example.test>",
            "ca_pem": std::fs::read_to_string(&sink.ca).expect("ca"),
        }, "password": SMTP_PASSWORD}),
    );
    assert_eq!(r["password"], "set", "{r}");

    // Agent 1 ("lab") goes to SFTP, agent 2 ("office") to the share, encrypted.
    let sftp = api(
        "POST",
        "/api/v1/targets",
        json!({"name": "sftp in the lab", "username": USER, "password": PASSWORD,
            "url": format!("sftp://{SERVER_IP}:{}{}", sshd.port, sshd.data.display()),
            "host_key": sshd.host_key_fingerprint()}),
    );
    let smb = api(
        "POST",
        "/api/v1/targets",
        json!({"name": "office share", "username": USER, "password": PASSWORD,
            "url": format!("smb://{SERVER_IP}:{}/backup", smbd.port)}),
    );
    for (target, agent) in [(&sftp, 1), (&smb, 2)] {
        let tested = api(
            "POST",
            &format!("/api/v1/targets/{}/test", target["id"]),
            json!({"agent_id": agent}),
        );
        assert_eq!(tested["ok"], true, "{tested}");
    }
    let (expression, starts) = four_starts(8);
    let mut vols = Vec::new();
    let mut jobs = Vec::new();
    let mut sites = Vec::new();
    for (agent, site, target) in [(1, "lab", &sftp), (2, "office", &smb)] {
        let vol = d.join(format!("{site}.img"));
        sparse_file(&vol, 32 << 20);
        let lo = Loop::new(&vol);
        mkfs(lo.path(), "ext4");
        edit_files(lo.path(), "ext4", d, |m| {
            write_files(m, 0, 5);
            std::fs::write(m.join("noise.bin"), noise(4 << 20, agent)).expect("noise");
        });
        let site_row = api(
            "POST",
            "/api/v1/sites",
            json!({"name": site, "defaults": {
                "target_id": target["id"],
                "folder": "$TEMPL:(ComputerName)",
                "schedule": {"kind": "cron", "expression": expression, "timezone": "UTC", "time_frame_minutes": 1},
                "notify": {"when": "always", "recipients": [format!("{site}-ops@example.test")]},
            }}),
        );
        api(
            "PUT",
            &format!("/api/v1/agents/{agent}/site"),
            json!({"site_id": site_row["id"]}),
        );
        // Before each run: a new file of fresh random bytes on the volume.
        let change = format!(
            "m=$(mktemp -d) && mount {dev} $m && n=$(ls $m | grep -c '^change-'); \
             head -c 300000 /dev/urandom > $m/change-$n && umount $m && rmdir $m",
            dev = lo.path()
        );
        let mut spec = json!({
            "site_id": site_row["id"], "source": lo.path(), "method": "incremental_chain",
            "chain_length": 2, "retention": {"keep_last": 1},
            "name_template": "v-$TEMPL:(Hour)$TEMPL:(Minute)$TEMPL:(Second).hfi",
            "before": {"command": change, "abort_on_failure": true},
        });
        let mut body = json!({"name": format!("{site} nightly")});
        if site == "office" {
            spec["encryption"] = json!("aes128");
            body["password"] = json!(IMAGE_PASSWORD);
        }
        body["spec"] = spec;
        let job = api("POST", "/api/v1/jobs", body);
        jobs.push(job["id"].as_i64().unwrap_or_else(|| panic!("{job}")));
        vols.push(lo);
        sites.push(site_row["id"].clone());
    }
    assert!(
        chrono::Utc::now() < starts[0],
        "set up too slowly for the first start"
    );
    let ended = |job: i64| -> Vec<Value> {
        let list = api("GET", &format!("/api/v1/reports?job_id={job}"), Value::Null);
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
    wait_for("four scheduled runs of each job", 150, || {
        jobs.iter().all(|&j| ended(j).len() >= 4)
    });

    for (i, &job) in jobs.iter().enumerate() {
        let agent = i + 1;
        let runs = ended(job);
        assert_eq!(runs.len(), 4, "{runs:?}");
        let reports: Vec<Value> = runs
            .iter()
            .map(|r| api("GET", &format!("/api/v1/reports/{}", r["id"]), Value::Null))
            .collect();
        for r in &reports {
            assert_eq!(r["status"], "successful", "{r}");
            assert_eq!(r["cause"], "schedule", "{r}");
        }
        let names: Vec<String> = reports
            .iter()
            .map(|r| r["images"][0]["name"].as_str().expect("name").to_owned())
            .collect();
        let methods: Vec<&str> = reports
            .iter()
            .map(|r| r["images"][0]["method"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(methods, ["full", "incremental", "full", "incremental"]);
        for n in &names {
            assert!(n.starts_with(&format!("agent-a{agent}/v-")), "{n}");
        }
        // An increment holds the change, not the volume again.
        let bytes = |r: &Value| r["images"][0]["bytes"].as_u64().unwrap_or(0);
        assert!(bytes(&reports[1]) * 2 < bytes(&reports[0]), "{reports:?}");
        // The third run started the second chain: the first (two images) went, whole, and
        // only then; what is left is exactly the newest chain.
        let deleted: Vec<&Value> = reports.iter().map(|r| &r["deleted"]).collect();
        assert_eq!(
            deleted,
            [
                &json!([]),
                &json!([]),
                &json!([names[0], names[1]]),
                &json!([])
            ]
        );
        let data = if agent == 1 { &sshd.data } else { &smbd.data };
        let mut left: Vec<String> = std::fs::read_dir(data.join(format!("agent-a{agent}")))
            .expect("folder")
            .flatten()
            .map(|e| format!("agent-a{agent}/{}", e.file_name().to_string_lossy()))
            .collect();
        left.sort();
        assert_eq!(left, names[2..]);

        // Each run's report arrived by mail to the site's address.
        let site = if agent == 1 { "lab" } else { "office" };
        let mine = || -> Vec<String> {
            sink.mails()
                .into_iter()
                .filter(|m| m.contains(&format!("X-Sink-To: {site}-ops@example.test")))
                .collect()
        };
        wait_for("the report mails", 30, || mine().len() >= 4);
        let mails = mine();
        assert_eq!(mails.len(), 4);
        for (mail, r) in mails.iter().zip(&reports) {
            let want = format!("Subject: [Holdfast] successful: {site} nightly on agent-a{agent}");
            assert!(mail.contains(&want), "{want}: {mail}");
            assert!(mail.contains(&format!("Report id: {}", r["id"])), "{mail}");
            assert!(mail.contains("X-Sink-TLS: True"), "{mail}");
        }

        // The last image restores, from inside the agent's namespace, to the volume as the
        // last run left it: the initial files and four changes.
        let last_state = read_files(vols[i].path(), "ext4", d);
        let changes = last_state
            .keys()
            .filter(|k| k.starts_with("change-"))
            .count();
        assert_eq!(changes, 4, "{last_state:?}");
        let url = if agent == 1 {
            format!(
                "sftp://{USER}@{SERVER_IP}:{}{}/{}",
                sshd.port,
                sshd.data.display(),
                names[3]
            )
        } else {
            format!("smb://{USER}@{SERVER_IP}:{}/backup/{}", smbd.port, names[3])
        };
        let creds = d.join("creds");
        std::fs::write(
            &creds,
            format!(
                "user = {USER}\npassword = {PASSWORD}\nknown_hosts = {}\n",
                d.join("known_hosts").display()
            ),
        )
        .expect("creds");
        let pw = d.join("pw");
        std::fs::write(&pw, format!("{IMAGE_PASSWORD}\n")).expect("pw");
        let restored = d.join("restored.img");
        sparse_file(&restored, 32 << 20);
        let rl = Loop::new(&restored);
        let mut restore = in_ns(&net.ns(&format!("a{agent}")), &agent_bin);
        restore
            .args(["image", "restore", "--image", &url, "--target", rl.path()])
            .arg("--credentials-file")
            .arg(&creds);
        if agent == 2 {
            restore.arg("--password-file").arg(&pw);
        }
        let out = restore.output().expect("restore");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            read_files(rl.path(), "ext4", d),
            last_state,
            "restored from {url}"
        );
    }

    // Agent 2 is cut off through a whole time frame (none: it had to be there at the
    // start): the run is missed, says why, and its report mail goes out; once the agent is
    // back, the missed start is not run after all.
    net.link(3, false);
    wait_for("agent 2 offline", 30, || {
        api("GET", "/api/v1/agents/2", Value::Null)["status"] == "offline"
    });
    let at = (chrono::Utc::now() + chrono::Duration::seconds(3)).format("%Y-%m-%dT%H:%M:%S");
    let job = api(
        "POST",
        "/api/v1/jobs",
        json!({"name": "office weekly", "spec": {
            "site_id": sites[1], "source": vols[1].path(),
            "schedule": {"kind": "once", "at": at.to_string(), "timezone": "UTC", "time_frame_minutes": 0},
        }}),
    );
    let weekly = job["id"].as_i64().unwrap_or_else(|| panic!("{job}"));
    wait_for("the missed run", 30, || ended(weekly).len() == 1);
    let missed = api(
        "GET",
        &format!("/api/v1/reports/{}", ended(weekly)[0]["id"]),
        Value::Null,
    );
    assert_eq!(missed["status"], "missed", "{missed}");
    assert!(
        missed.to_string().contains("agent-a2 was not connected"),
        "{missed}"
    );
    wait_for("the missed run's mail", 30, || {
        sink.mails().iter().any(|m| {
            m.contains("Subject: [Holdfast] missed: office weekly on agent-a2")
                && m.contains(&format!("Report id: {}", missed["id"]))
        })
    });
    net.link(3, true);
    wait_for("agent 2 back", 90, || {
        api("GET", "/api/v1/agents/2", Value::Null)["status"] == "online"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ended(weekly).len(), 1);
    let all = api(
        "GET",
        &format!("/api/v1/reports?job_id={weekly}"),
        Value::Null,
    );
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1), "{all}");
}
