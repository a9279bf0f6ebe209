//! Agents installed over SSH from the console. The "machine" is a clean Debian root (an
//! overlay of scripts/debroot.sh's debootstrap) running `sshd` in its own network
//! namespace; the server runs in another, joined by a veth pair (the root namespace routes
//! the subnet nowhere; the browser reaches the server through a forwarder whose connections
//! start inside the server's namespace). Through the API, a wrong password and a changed
//! host key are refused with a clear message and install nothing; in headless Chromium the
//! admin reads the host key, confirms it and installs: the package is installed, enrolled
//! and started, the agent comes online and runs a job; a second installation through the
//! API upgrades in place and keeps the enrolment.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::browser::Browser;
use crate::console::log_in;
use crate::netns::{in_ns, sh, unavailable, wait_for, Kill, NsApi};
use holdfast_testkit::devices::{
    edit_files, mkfs, require_devices, sparse_file, tempdir, write_files, Loop,
};

const SUBNET: &str = "10.232.9.0/24";
const SERVER_IP: &str = "10.232.9.1";
const HOST_IP: &str = "10.232.9.2";
const SERVER_NS: &str = "hfinstsrv";
const HOST_NS: &str = "hfinsthost";
const ROOT_PASSWORD: &str = "machine-root-pass-7";
const PORT: u16 = 8443;

/// The machine: an overlay root with sshd in its namespace; all undone on drop.
struct Machine {
    root: PathBuf,
    sshd: Option<Kill>,
}

impl Machine {
    fn up(work: &Path) -> Option<Self> {
        let out = Command::new(repo().join("scripts/debroot.sh"))
            .output()
            .ok()?;
        if !out.status.success() {
            unavailable(&format!(
                "no clean Debian root: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return None;
        }
        let base = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let root = work.join("root");
        for d in ["upper", "work", "root"] {
            std::fs::create_dir_all(work.join(d)).ok()?;
        }
        let w = work.display().to_string();
        let r = root.display().to_string();
        let mut m = Machine { root, sshd: None };
        let _ = sh(&format!("ip route add unreachable {SUBNET}"));
        let ok = sh(&format!(
            "mount -t overlay overlay -o lowerdir={base},upperdir={w}/upper,workdir={w}/work {r}"
        )) && sh(&format!("mount -t proc proc {r}/proc"))
            && sh(&format!("mount --bind /dev {r}/dev"))
            && sh(&format!("mount --bind /sys {r}/sys"))
            && sh(&format!("ip netns add {SERVER_NS} && ip netns add {HOST_NS}"))
            && sh(&format!("ip -n {SERVER_NS} link set lo up && ip -n {HOST_NS} link set lo up"))
            && sh(&format!(
                "ip link add hfinst0 netns {SERVER_NS} type veth peer name hfinst1 netns {HOST_NS}"
            ))
            && sh(&format!(
                "ip -n {SERVER_NS} addr add {SERVER_IP}/24 dev hfinst0 && ip -n {SERVER_NS} link set hfinst0 up"
            ))
            && sh(&format!(
                "ip -n {HOST_NS} addr add {HOST_IP}/24 dev hfinst1 && ip -n {HOST_NS} link set hfinst1 up"
            ))
            // A machine of its own: host keys, a root password, password logins.
            && sh(&format!("chroot {r} ssh-keygen -A"))
            && sh(&format!("echo 'root:{ROOT_PASSWORD}' | chroot {r} chpasswd"))
            && sh(&format!("mkdir -p {r}/run/sshd {r}/srv/images"));
        if !ok {
            unavailable("cannot set up the machine (overlay, namespaces, sshd keys)");
            return None;
        }
        std::fs::write(
            m.root.join("etc/ssh/sshd_config.d/holdfast-test.conf"),
            format!(
                "ListenAddress {HOST_IP}\nPermitRootLogin yes\nPasswordAuthentication yes\nUsePAM no\n"
            ),
        )
        .ok()?;
        let sshd = in_ns(HOST_NS, Path::new("chroot"))
            .arg(&m.root)
            .args(["/usr/sbin/sshd", "-D", "-e"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(work.join("sshd.log")).ok()?,
            ))
            .spawn()
            .ok()?;
        m.sshd = Some(Kill(sshd));
        Some(m)
    }

    /// The machine's host key fingerprints, as `ssh-keygen -lf` prints them.
    fn host_keys(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("etc/ssh"))
            .expect("ssh folder")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with("_key.pub"))
            .filter_map(|p| {
                let out = Command::new("ssh-keygen")
                    .arg("-lf")
                    .arg(&p)
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .nth(1)
                    .map(str::to_owned)
            })
            .collect()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let r = self.root.display();
        // The agent the installer started in the background.
        let _ = sh(&format!(
            "[ -f {r}/run/holdfast-agent.pid ] && kill $(cat {r}/run/holdfast-agent.pid)"
        ));
        self.sshd = None;
        let _ = sh(&format!("ip netns pids {HOST_NS} | xargs -r kill"));
        std::thread::sleep(std::time::Duration::from_millis(300));
        for m in ["sys", "dev", "proc"] {
            let _ = sh(&format!("umount -l {r}/{m}"));
        }
        let _ = sh(&format!("umount -l {r}"));
        let _ = sh(&format!("ip netns del {SERVER_NS}; ip netns del {HOST_NS}"));
    }
}

/// A port on this namespace's loopback whose connections are passed to `127.0.0.1:to` in
/// network namespace `ns`: each connection's thread enters the namespace to connect
/// (`setns` changes only that thread), then copies both ways. Nothing leaves the machine.
fn forward_into(ns: &str, to: u16) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let ns_path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let ns_path = ns_path.clone();
            std::thread::spawn(move || {
                let Ok(ns_file) = std::fs::File::open(&ns_path) else {
                    return;
                };
                if nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                    return;
                }
                let Ok(upstream) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                    return;
                };
                let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else {
                    return;
                };
                let back = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
                let (mut c, mut u) = (client, upstream);
                let _ = std::io::copy(&mut c, &mut u);
                let _ = u.shutdown(std::net::Shutdown::Both);
                let _ = back.join();
            });
        }
    });
    port
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
}

/// The Debian packages of the test build, made by scripts/package.sh into `out`.
fn packages(out: &Path) -> bool {
    let server_bin = Path::new(env!("CARGO_BIN_EXE_holdfast-server"));
    let target_dir = server_bin
        .parent()
        .and_then(Path::parent)
        .expect("target folder");
    let built = Command::new(repo().join("scripts/package.sh"))
        .arg(out)
        .env("PACKAGE_PROFILE", "dev")
        .env("PACKAGE_NO_BUILD", "1")
        .env("CARGO_TARGET_DIR", target_dir)
        .stdout(Stdio::null())
        .output()
        .expect("package.sh");
    if !built.status.success() {
        unavailable(&format!(
            "cannot build the packages: {}",
            String::from_utf8_lossy(&built.stderr)
        ));
    }
    built.status.success()
}

/// Wait for installation `id` to end; its record.
fn installed(api: &NsApi, id: i64) -> Value {
    let mut last = Value::Null;
    wait_for("the installation to end", 240, || {
        last = api.call("GET", &format!("/api/v1/installs/{id}"), None);
        !matches!(last["state"].as_str(), Some("running") | None)
    });
    last
}

fn steps(install: &Value) -> String {
    install["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| format!("{}: {}", s["title"], s["detail"]))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn an_agent_is_installed_over_ssh_and_runs_a_job() {
    if !require_devices("install") {
        return;
    }
    let server_bin = Path::new(env!("CARGO_BIN_EXE_holdfast-server"));
    if !server_bin.with_file_name("holdfast-agent").exists() {
        unavailable("holdfast-agent is not built");
        return;
    }
    let t = tempdir();
    let work = t.path();
    let pkgs = work.join("packages");
    if !packages(&pkgs) {
        return;
    }
    let Some(machine) = Machine::up(&work.join("machine")) else {
        return;
    };
    let d = work.join("server");
    std::fs::create_dir_all(&d).expect("server dir");
    let _server = Kill(
        in_ns(SERVER_NS, server_bin)
            .args(["--data-dir", d.to_str().expect("path")])
            .args(["--listen", &format!("0.0.0.0:{PORT}")])
            .args(["--name", &format!("localhost,{SERVER_IP}")])
            .args(["--heartbeat-seconds", "2"])
            .arg("--agent-packages")
            .arg(&pkgs)
            .env("HOLDFAST_ADMIN_PASSWORD", "netns-admin-pass")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(d.join("server.log")).expect("log"),
            ))
            .spawn()
            .expect("server"),
    );
    let api = NsApi {
        ns: SERVER_NS.into(),
        ca: d.join("tls/ca.pem"),
        cookies: d.join("cookies"),
        port: PORT,
    };
    api.login();
    let log = || std::fs::read_to_string(d.join("server.log")).unwrap_or_default();

    // The host key as the server reads it is one of the machine's own.
    let keys = api.call(
        "POST",
        "/api/v1/installs/host-keys",
        Some(&json!({"machines": [{"host": HOST_IP}]}).to_string()),
    );
    let fingerprint = keys["keys"][0]["fingerprint"]
        .as_str()
        .unwrap_or_else(|| panic!("{keys}\n{}", log()))
        .to_owned();
    assert!(machine.host_keys().contains(&fingerprint), "{fingerprint}");
    let body = |fingerprint: &str, password: &str| {
        json!({
            "machines": [{"host": HOST_IP, "fingerprint": fingerprint}],
            "user": "root",
            "password": password,
            "server_url": format!("https://{SERVER_IP}:{PORT}"),
        })
        .to_string()
    };
    let start = |b: String| -> Value {
        let r = api.call("POST", "/api/v1/installs", Some(&b));
        let id = r["installs"][0]["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("{r}"));
        installed(&api, id)
    };
    let nothing_installed = || !machine.root.join("usr/bin/holdfast-agent").exists();

    // A wrong password: refused, nothing installed.
    let r = start(body(&fingerprint, "not-the-password"));
    assert_eq!(r["state"], "failed", "{r}");
    assert!(
        steps(&r).contains("refused the login of 'root'"),
        "{}",
        steps(&r)
    );
    assert!(nothing_installed());
    // Another host key than the one confirmed: refused before logging in.
    let other = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let r = start(body(other, ROOT_PASSWORD));
    assert_eq!(r["state"], "failed", "{r}");
    assert!(
        steps(&r).contains(&format!("is {fingerprint}, not {other} as confirmed"))
            && steps(&r).contains("nothing was sent"),
        "{}",
        steps(&r)
    );
    assert!(nothing_installed());
    let audit = api.call("GET", "/api/v1/audit", None).to_string();
    assert!(!audit.contains(ROOT_PASSWORD) && !log().contains(ROOT_PASSWORD));

    // In the console: the host key read, compared and confirmed, then installed, enrolled,
    // started (no systemd in this root: a warning that says so) and online.
    let Some(b) = Browser::start("install", work, 1400) else {
        return;
    };
    let base = format!("https://localhost:{}", forward_into(SERVER_NS, PORT));
    log_in(&b, &base, "admin", "netns-admin-pass");
    b.go(&format!("{base}/agents"));
    b.fill("#install-form textarea[name=machines]", HOST_IP);
    b.fill("#install-form input[name=password]", ROOT_PASSWORD);
    b.fill(
        "#install-form input[name=server_url]",
        &format!("https://{SERVER_IP}:{PORT}"),
    );
    b.click("#install-keys");
    b.wait("the host key", 30, |b| {
        b.text("#install-key-rows").contains(&fingerprint)
    });
    b.shot("install-1-host-key");
    b.click("#install-key-rows input[type=checkbox]");
    b.click("#install-start");
    b.wait("the installation to end", 240, |b| {
        b.has("#install-progress .badge.s-warning") || b.has("#install-progress .badge.s-failed")
    });
    b.script(
        "document.querySelector('#install-progress').scrollIntoView()",
        &[],
    );
    b.shot("install-2-done");
    let shown = b.text("#install-progress");
    let r = api.call("GET", "/api/v1/installs", None)["items"][0].clone();
    let said = steps(&r);
    assert_eq!(r["state"], "warning", "{said}\n{}", log());
    for step in [
        "Connected",
        "Checked the machine",
        "Copied the agent package",
        "Installed the agent package",
        "Enrolled",
        "Started without systemd",
        "Online",
    ] {
        assert!(
            said.contains(step) && shown.contains(step),
            "{step}: {said}\n{shown}"
        );
    }
    assert_eq!(
        b.script(
            "return document.querySelector('#install-form input[name=password]').value",
            &[]
        ),
        json!(""),
        "the password stays in the form"
    );
    let agent_id = r["agent_id"].as_i64().expect("agent id");
    let agent = api.call("GET", &format!("/api/v1/agents/{agent_id}"), None);
    assert_eq!(agent["status"], "online", "{agent}");
    assert!(!machine
        .root
        .join("tmp")
        .read_dir()
        .expect("tmp")
        .flatten()
        .any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with("holdfast-agent-")));

    // The agent runs a job: a loop device imaged to a folder of the machine.
    let vol = work.join("vol.img");
    sparse_file(&vol, 16 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    edit_files(lo.path(), "ext4", work, |dir| write_files(dir, 0, 3));
    let target = api.call(
        "POST",
        "/api/v1/targets",
        Some(&json!({"name": "machine folder", "url": "/srv/images"}).to_string()),
    );
    let job = api.call(
        "POST",
        "/api/v1/jobs",
        Some(
            &json!({"name": "installed", "spec": {
                "agents": [agent_id], "source": lo.path(), "target_id": target["id"],
                "name_template": "i$TEMPL:(RunId).hfi", "compression_level": 1,
            }})
            .to_string(),
        ),
    );
    let job_id = job["id"].as_i64().unwrap_or_else(|| panic!("{job}"));
    let run = api.call("POST", &format!("/api/v1/jobs/{job_id}/run"), None);
    let run_id = run["runs"][0]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{run}"));
    let mut report = Value::Null;
    wait_for("the job on the installed agent", 120, || {
        report = api.call("GET", &format!("/api/v1/reports/{run_id}"), None);
        !matches!(report["status"].as_str(), Some("running" | "queued") | None)
    });
    assert_eq!(report["status"], "successful", "{report}");
    let images: Vec<_> = std::fs::read_dir(machine.root.join("srv/images"))
        .expect("images")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".hfi"))
        .collect();
    assert_eq!(images.len(), 1);

    // Installing again upgrades in place: the enrolment is kept, the agent back online.
    let r = start(body(&fingerprint, ROOT_PASSWORD));
    let said = steps(&r);
    assert_eq!(r["state"], "warning", "{said}");
    assert!(said.contains("Already enrolled"), "{said}");
    assert_eq!(r["agent_id"], agent_id, "{said}");
    let agents = api.call("GET", "/api/v1/agents", None);
    assert_eq!(
        agents["items"].as_array().map(Vec::len),
        Some(1),
        "{agents}"
    );
}
