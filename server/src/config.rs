//! Configuration: command-line flags, then environment variables, then a TOML file, then
//! defaults (in that order of precedence).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use serde::Deserialize;

/// `holdfast-server` flags (each also from an environment variable).
#[derive(Debug, Parser)]
#[command(
    name = "holdfast-server",
    version,
    about = "Holdfast server: REST API, agent gateway and store, over HTTPS"
)]
pub struct Args {
    /// TOML configuration file (same keys as the flags, with underscores).
    #[arg(long, env = "HOLDFAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Folder for the SQLite store, the TLS identity and other state [default: ./holdfast-data].
    #[arg(long, env = "HOLDFAST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address and port to listen on [default: 127.0.0.1:8443].
    #[arg(long, env = "HOLDFAST_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Database URL: postgres://… for PostgreSQL [default: SQLite file in the data folder].
    #[arg(long, env = "HOLDFAST_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// PEM certificate (chain) to present instead of the server's own.
    #[arg(long, env = "HOLDFAST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "HOLDFAST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Host names and addresses the server's own certificate is made for (comma-separated).
    #[arg(long = "name", env = "HOLDFAST_SERVER_NAMES", value_delimiter = ',')]
    pub names: Vec<String>,
    /// Also enrol and run an agent on this machine (the holdfast-agent binary next to this
    /// one, or HOLDFAST_AGENT_BIN).
    #[arg(long, env = "HOLDFAST_LOCAL_AGENT")]
    pub local_agent: bool,
    /// Seconds between agents' heartbeats (three missed ones mark an agent offline).
    #[arg(long, env = "HOLDFAST_HEARTBEAT_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_seconds: u64,
    /// Job runs an agent may have at once [default: 1; imaging saturates a machine's disks].
    #[arg(long, env = "HOLDFAST_AGENT_CONCURRENCY", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub agent_concurrency: Option<u64>,
    /// With several instances on one PostgreSQL store: how long a leader's term lasts
    /// unless renewed (another instance takes over this long after the leader dies).
    #[arg(long, env = "HOLDFAST_LEADER_LEASE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub leader_lease_seconds: u64,
    /// The folder of agent packages (`holdfast-agent_VERSION_ARCH.deb`) installed over SSH
    /// from the console.
    #[arg(long, env = "HOLDFAST_AGENT_PACKAGES")]
    pub agent_packages: Option<PathBuf>,
}

/// The configuration file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    names: Option<Vec<String>>,
    local_agent: Option<bool>,
    agent_concurrency: Option<u64>,
    agent_packages: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub database_url: Option<String>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub names: Vec<String>,
    pub local_agent: bool,
    pub heartbeat_seconds: u64,
    /// Job runs an agent may have at once.
    pub agent_concurrency: usize,
    /// A leader's term, unless renewed (several instances on PostgreSQL).
    pub leader_lease: std::time::Duration,
    /// Agent packages installed over SSH.
    pub agent_packages: PathBuf,
}

/// Where the server package puts the agent packages of its version.
pub const AGENT_PACKAGES: &str = "/usr/share/holdfast-server/agents";

impl Config {
    /// Resolve `args` over the file they name and the defaults.
    pub fn resolve(args: Args) -> Result<Self> {
        let file = match &args.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read configuration file '{}'", p.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("configuration file '{}' is not valid", p.display()))?
            }
            None => FileConfig::default(),
        };
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!("tls_cert and tls_key go together: give both or neither"),
        };
        let mut names = if args.names.is_empty() {
            file.names.unwrap_or_default()
        } else {
            args.names
        };
        if names.is_empty() {
            names = default_names();
        }
        Ok(Self {
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("holdfast-data")),
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443))),
            database_url: args.database_url.or(file.database_url),
            tls,
            names,
            local_agent: args.local_agent || file.local_agent.unwrap_or(false),
            heartbeat_seconds: args.heartbeat_seconds,
            leader_lease: std::time::Duration::from_secs(args.leader_lease_seconds),
            agent_packages: args
                .agent_packages
                .or(file.agent_packages)
                .unwrap_or_else(|| PathBuf::from(AGENT_PACKAGES)),
            agent_concurrency: match args.agent_concurrency.or(file.agent_concurrency) {
                Some(n @ 1..=64) => n as usize,
                Some(n) => bail!("agent_concurrency must be 1 to 64 (got {n})"),
                None => crate::jobs::PER_AGENT,
            },
        })
    }

    /// The configured certificate and key, if any.
    pub fn tls_paths(&self) -> Option<(&Path, &Path)> {
        self.tls.as_ref().map(|(c, k)| (c.as_path(), k.as_path()))
    }
}

/// This machine's host name (`localhost` when unknown).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `localhost`, the loopback addresses and this machine's host name.
fn default_names() -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let h = host_name();
    if h != "localhost" {
        names.push(h);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = d.path().join("server.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:9000\"\ndata_dir = \"/srv/hf\"\n").expect("write");
        let args = Args::parse_from([
            "holdfast-server",
            "--config",
            f.to_str().expect("path"),
            "--listen",
            "127.0.0.1:9443",
        ]);
        let c = Config::resolve(args).expect("config");
        assert_eq!(c.listen.port(), 9443);
        assert_eq!(c.data_dir, PathBuf::from("/srv/hf"));
        std::fs::write(&f, "lisen = \"x\"\n").expect("write");
        let args = Args::parse_from(["holdfast-server", "--config", f.to_str().expect("path")]);
        assert!(Config::resolve(args).is_err(), "unknown keys are refused");
    }

    #[test]
    fn the_shipped_example_parses() {
        let c: FileConfig =
            toml::from_str(include_str!("../../deploy/server.toml")).expect("deploy/server.toml");
        assert_eq!(c.data_dir.as_deref(), Some(Path::new("/var/lib/holdfast")));
    }
}
