//! The agent's configuration file: where the server is, the certificate pinned at
//! enrolment, and the agent's own credential. Written 0600 (it holds a secret).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// Default location (overridden by `--config` or `HOLDFAST_AGENT_CONFIG`).
pub const DEFAULT_PATH: &str = "/etc/holdfast/agent.json";

/// What enrolment leaves behind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentConfig {
    /// `https://host:port` of the server.
    pub server: String,
    /// More instances of the same server (`https://host:port` each, all on one database and
    /// presenting certificates from the same authority), tried in order when the one before
    /// cannot be reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_servers: Vec<String>,
    /// SHA-256 fingerprint of the certificate pinned at enrolment.
    pub fingerprint: String,
    /// The agent's id on the server.
    pub agent_id: i64,
    /// The agent's credential (`hfa_<id>.<secret>`).
    pub secret: String,
}

/// The configuration path: the flag, else the environment, else [`DEFAULT_PATH`].
pub fn path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("HOLDFAST_AGENT_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

impl AgentConfig {
    /// Every address of the server, in the order they are tried.
    pub fn servers(&self) -> Vec<&str> {
        std::iter::once(self.server.as_str())
            .chain(self.more_servers.iter().map(String::as_str))
            .collect()
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the agent configuration '{}' (enrol first: holdfast-agent enroll --server … --token … --fingerprint …)",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("the agent configuration '{}' is not valid", path.display()))
    }

    /// Write atomically with mode 0600 (folder 0700 when created).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create '{}'", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write '{}'", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write '{}'", path.display()))
    }
}
