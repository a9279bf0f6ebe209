//! Agents installed and upgraded over SSH from the console. The admin first reads each
//! machine's host key ([`ssh::host_key`]) and confirms it; the installer then connects,
//! refuses a key other than the confirmed one before sending anything, logs in with the
//! password or key given (held in memory for the installation only), copies the agent
//! package of the machine's architecture, installs it with dpkg (as root, or through
//! sudo), enrols the agent with a one-time token when it is not enrolled yet, starts it,
//! and waits for it to come online. Each step is recorded with the installation, which the
//! console shows as it goes.

pub mod ssh;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use crate::jobs::Dispatcher;
use crate::store::installs::{InstallRow, InstallState, InstallStep};
use crate::store::{now, StoreError};
use ssh::{Auth, Remote};

/// How long a fresh agent has to come online.
const ONLINE_WITHIN: Duration = Duration::from_secs(90);
/// How long the one-time enrolment token lives.
const TOKEN_SECONDS: i64 = 15 * 60;
/// Where the agent's enrolment is written (the packaged unit waits for it).
const AGENT_CONFIG: &str = "/etc/holdfast/agent.json";

/// What to install where.
pub struct Order {
    pub host: String,
    pub port: u16,
    /// The host key the admin confirmed.
    pub fingerprint: String,
    pub user: String,
    pub auth: Auth,
    /// The address the machine reaches this server at (`https://host:port`).
    pub server_url: String,
    /// Who asked.
    pub by: String,
}

/// Runs installations.
pub struct Installer {
    jobs: Arc<Dispatcher>,
    /// Folder with the agent packages (`holdfast-agent_VERSION_ARCH.deb`).
    packages: PathBuf,
    /// The fingerprint of the certificate agents pin.
    server_fingerprint: String,
}

/// A package found for an architecture.
struct Package {
    path: PathBuf,
    /// The agent version inside (the Debian version without its revision).
    version: String,
}

impl Installer {
    pub fn new(jobs: Arc<Dispatcher>, packages: PathBuf, server_fingerprint: String) -> Self {
        Self {
            jobs,
            packages,
            server_fingerprint,
        }
    }

    /// The agent package for Debian architecture `arch`: of this server's version when
    /// there is one, else the newest.
    fn package_for(&self, arch: &str) -> Result<Package, String> {
        let suffix = format!("_{arch}.deb");
        let mut found: Vec<Package> = std::fs::read_dir(&self.packages)
            .map_err(|e| {
                format!(
                    "cannot read the agent packages in '{}': {e}",
                    self.packages.display()
                )
            })?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let version = name
                    .strip_prefix("holdfast-agent_")?
                    .strip_suffix(&suffix)?
                    .to_owned();
                Some(Package {
                    path: e.path(),
                    version: version
                        .rsplit_once('-')
                        .map_or(version.clone(), |(v, _)| v.to_owned()),
                })
            })
            .collect();
        found.sort_by(|a, b| a.path.cmp(&b.path));
        let own = env!("CARGO_PKG_VERSION");
        let pick = match found.iter().position(|p| p.version == own) {
            Some(i) => found.swap_remove(i),
            None => found.pop().ok_or_else(|| {
                format!(
                    "there is no agent package for {arch} in '{}' (holdfast-agent_VERSION_{arch}.deb)",
                    self.packages.display()
                )
            })?,
        };
        Ok(pick)
    }

    /// Record an installation and run it in the background; the row as it starts.
    pub async fn start(self: &Arc<Self>, order: Order) -> Result<InstallRow, StoreError> {
        let mut change = self.jobs.store.change(&order.by).await?;
        let row = change
            .create_install(
                &order.host,
                order.port,
                &order.user,
                &order.fingerprint,
                &order.by,
                &self.jobs.cluster.id,
            )
            .await?;
        change
            .commit(
                "install_agent",
                &format!("install:{}", row.id),
                &format!("{}@{}:{}", order.user, order.host, order.port),
            )
            .await?;
        let me = self.clone();
        let id = row.id;
        let handle = Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut steps = Steps {
                id,
                handle,
                jobs: me.jobs.clone(),
                steps: Vec::new(),
                agent: None,
            };
            let state = match me.install(&order, &mut steps) {
                Ok(state) => state,
                Err(why) => {
                    steps.say("error", "Failed", &why);
                    InstallState::Failed
                }
            };
            steps.finish(state);
        });
        Ok(row)
    }

    /// The whole conversation with the machine, on a blocking thread.
    fn install(&self, order: &Order, steps: &mut Steps) -> Result<InstallState, String> {
        let remote = Remote::open(
            &order.host,
            order.port,
            &order.fingerprint,
            &order.user,
            &order.auth,
        )
        .map_err(|e| e.to_string())?;
        steps.say(
            "info",
            "Connected",
            &format!(
                "{}@{}:{}, host key {} as confirmed",
                order.user, order.host, order.port, order.fingerprint
            ),
        );
        let run = |command: &str| remote.run(command, None).map_err(|e| e.to_string());
        let root = run("id -u")?.stdout.trim() == "0";
        let sudo = Sudo::new(root, &order.auth);
        let arch = run("dpkg --print-architecture")?;
        if arch.status != 0 {
            return Err(format!(
                "{} has no dpkg: the agent is packaged for Debian and Ubuntu (.deb)",
                order.host
            ));
        }
        let arch = arch.stdout.trim().to_owned();
        let package = self.package_for(&arch)?;
        let before = run("holdfast-agent --version 2>/dev/null")?;
        let before = (before.status == 0).then(|| before.stdout.trim().to_owned());
        if !root {
            let check = sudo.run(&remote, "true")?;
            if check.status != 0 {
                return Err(format!(
                    "'{}' is not root and cannot run commands as root with sudo: {}",
                    order.user,
                    last_lines(&check.stderr)
                ));
            }
        }
        steps.say(
            "info",
            "Checked the machine",
            &format!(
                "{arch}; {}; commands as root {}",
                before
                    .as_deref()
                    .map_or("no agent installed".to_owned(), |v| format!(
                        "installed: {v}"
                    )),
                if root { "directly" } else { "through sudo" }
            ),
        );

        let data = std::fs::read(&package.path)
            .map_err(|e| format!("cannot read '{}': {e}", package.path.display()))?;
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random).map_err(|e| e.to_string())?;
        let remote_path = format!(
            "/tmp/holdfast-agent-{}.deb",
            random
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        remote
            .upload(&remote_path, &data)
            .map_err(|e| e.to_string())?;
        let name = package
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        steps.say(
            "info",
            "Copied the agent package",
            &format!("{name} ({:.1} MiB)", data.len() as f64 / 1048576.0),
        );
        let installed = sudo.run(
            &remote,
            &format!("DEBIAN_FRONTEND=noninteractive dpkg -i {remote_path}"),
        );
        let _ = run(&format!("rm -f {remote_path}"));
        let installed = installed?;
        if installed.status != 0 {
            return Err(format!(
                "dpkg could not install {name}: {}",
                last_lines(&format!("{}{}", installed.stdout, installed.stderr))
            ));
        }
        steps.say(
            "info",
            "Installed the agent package",
            &format!(
                "holdfast-agent {}{}",
                package.version,
                before
                    .as_deref()
                    .map_or(String::new(), |b| format!(" (was: {b})"))
            ),
        );

        let enrolled = sudo.run(&remote, &format!("cat {AGENT_CONFIG}"))?;
        let agent_id = if enrolled.status == 0 {
            let id = serde_json::from_str::<serde_json::Value>(&enrolled.stdout)
                .ok()
                .and_then(|v| v["agent_id"].as_i64())
                .ok_or_else(|| {
                    format!(
                        "{AGENT_CONFIG} on {} is not an agent's configuration",
                        order.host
                    )
                })?;
            steps.say(
                "info",
                "Already enrolled",
                &format!("agent {id}: its enrolment is kept"),
            );
            id
        } else {
            let token = steps.enrolment_token(&order.host, &order.by)?;
            let out = sudo.run(
                &remote,
                &format!(
                    "holdfast-agent enroll --server {} --token {} --fingerprint {} --config {AGENT_CONFIG}",
                    order.server_url,
                    token.as_str(),
                    self.server_fingerprint
                ),
            )?;
            let id = (out.status == 0)
                .then(|| {
                    out.stdout
                        .split_whitespace()
                        .skip_while(|w| *w != "agent")
                        .nth(1)
                        .and_then(|n| n.parse::<i64>().ok())
                })
                .flatten()
                .ok_or_else(|| {
                    format!(
                        "the agent could not enrol at {}: {}",
                        order.server_url,
                        last_lines(&format!("{}{}", out.stdout, out.stderr))
                    )
                })?;
            steps.say("info", "Enrolled", &format!("agent {id}, one-time token"));
            id
        };
        steps.agent = Some(agent_id);

        let systemd = run("test -d /run/systemd/system")?.status == 0;
        let mut state = InstallState::Successful;
        if systemd {
            let out = sudo.run(
                &remote,
                "systemctl enable holdfast-agent.service && systemctl restart holdfast-agent.service",
            )?;
            if out.status != 0 {
                return Err(format!(
                    "systemctl could not start the agent: {}",
                    last_lines(&out.stderr)
                ));
            }
            steps.say("info", "Started", "holdfast-agent.service, enabled at boot");
        } else {
            // No service manager: started in the background; an older one stopped first.
            let out = sudo.run(
                &remote,
                &format!(
                    "if [ -f /run/holdfast-agent.pid ]; then kill \"$(cat /run/holdfast-agent.pid)\" 2>/dev/null; sleep 1; fi; \
                     setsid sh -c 'echo $$ > /run/holdfast-agent.pid; exec holdfast-agent run --config {AGENT_CONFIG}' \
                     </dev/null >>/var/log/holdfast-agent.log 2>&1 &"
                ),
            )?;
            if out.status != 0 {
                return Err(format!(
                    "the agent did not start: {}",
                    last_lines(&out.stderr)
                ));
            }
            steps.say(
                "warning",
                "Started without systemd",
                "systemd does not run on this machine: the agent was started in the background (log: /var/log/holdfast-agent.log) and will not start again at boot",
            );
            state = InstallState::Warning;
        }

        let version = steps.wait_online(agent_id, &package.version)?;
        steps.say(
            "info",
            "Online",
            &format!("agent {agent_id} connected, version {version}"),
        );
        Ok(state)
    }
}

/// Running commands as root: directly, or through sudo (fed the login password).
struct Sudo {
    prefix: &'static str,
    password: Option<Vec<u8>>,
}

impl Sudo {
    fn new(root: bool, auth: &Auth) -> Self {
        match (root, auth) {
            (true, _) => Self {
                prefix: "",
                password: None,
            },
            (false, Auth::Password(p)) => Self {
                prefix: "sudo -S -p '' ",
                password: Some(format!("{}\n", p.as_str()).into_bytes()),
            },
            (false, Auth::Key { .. }) => Self {
                prefix: "sudo -n ",
                password: None,
            },
        }
    }

    fn run(&self, remote: &Remote, command: &str) -> Result<ssh::Output, String> {
        let quoted = format!("'{}'", command.replace('\'', r"'\''"));
        remote
            .run(
                &format!("{}sh -c {quoted}", self.prefix),
                self.password.as_deref(),
            )
            .map_err(|e| e.to_string())
    }
}

impl Drop for Sudo {
    fn drop(&mut self) {
        if let Some(p) = self.password.as_mut() {
            zeroize::Zeroize::zeroize(p);
        }
    }
}

/// The last few lines of a command's output, for an error.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" / ")
}

/// The steps of one installation, written to the store as they come.
struct Steps {
    id: i64,
    handle: Handle,
    jobs: Arc<Dispatcher>,
    steps: Vec<InstallStep>,
    agent: Option<i64>,
}

impl Steps {
    fn write(&self, state: InstallState) {
        let store = &self.jobs.store;
        if let Err(e) =
            self.handle
                .block_on(store.update_install(self.id, state, &self.steps, self.agent))
        {
            tracing::error!(install = self.id, error = %e, "cannot record an installation step");
        }
    }

    fn say(&mut self, status: &str, title: &str, detail: &str) {
        tracing::info!(install = self.id, title, detail, "agent installation");
        self.steps.push(InstallStep {
            at: now(),
            status: status.into(),
            title: title.into(),
            detail: detail.into(),
        });
        self.write(InstallState::Running);
    }

    fn finish(&self, state: InstallState) {
        self.write(state);
    }

    /// A token that enrols one machine, soon expiring.
    fn enrolment_token(&self, host: &str, by: &str) -> Result<zeroize::Zeroizing<String>, String> {
        let token = zeroize::Zeroizing::new(crate::auth::new_secret("hfe_")?);
        let store = self.jobs.store.clone();
        let hash = crate::auth::secret_hash(&token);
        let name = format!("installation on {host}");
        self.handle
            .block_on(async {
                let mut change = store.change(by).await?;
                let t = change
                    .create_enrollment_token(&name, &hash, 1, now() + TOKEN_SECONDS, by)
                    .await?;
                change
                    .commit(
                        "create_enrollment_token",
                        &format!("enrollment_token:{}", t.id),
                        &name,
                    )
                    .await
            })
            .map_err(|e| format!("cannot make an enrolment token: {e}"))?;
        Ok(token)
    }

    /// Wait for agent `id` to be connected (to any instance) with `version`; the version.
    fn wait_online(&self, id: i64, version: &str) -> Result<String, String> {
        let deadline = Instant::now() + ONLINE_WITHIN;
        let mut seen = String::new();
        while Instant::now() < deadline {
            let agent = self
                .handle
                .block_on(self.jobs.store.agent(id))
                .map_err(|e| e.to_string())?;
            if let Some(a) = agent {
                let online =
                    self.jobs.gateway.is_online(id) || self.jobs.cluster.elsewhere(&a).is_some();
                seen = a.agent_version.clone();
                if online && a.agent_version == version {
                    return Ok(seen);
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(format!(
            "agent {id} did not come online with version {version} within {} s (last seen version: '{seen}'); see /var/log/holdfast-agent.log or journalctl -u holdfast-agent there",
            ONLINE_WITHIN.as_secs()
        ))
    }
}
