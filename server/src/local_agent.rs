//! `--local-agent`: enrol and run an agent on the server's own machine, so a first start
//! is a working system (the agent binary is the one next to the server's, or
//! `HOLDFAST_AGENT_BIN`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::process::{Child, Command};

use crate::auth::{new_secret, secret_hash};
use crate::store::{now, Store};

/// Where the agent binary is.
fn agent_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HOLDFAST_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("cannot find the server's own path")?;
    let p = me.with_file_name("holdfast-agent");
    if !p.exists() {
        bail!(
            "no agent binary at {} (build it: cargo build --release -p holdfast-agent, or set HOLDFAST_AGENT_BIN)",
            p.display()
        );
    }
    Ok(p)
}

/// Wait until the server accepts connections on `listen`.
async fn listening(listen: SocketAddr) -> Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the server did not start listening on {listen}")
}

/// Enrol the local agent (first time only) and start its daemon; the running child.
pub async fn start(
    store: &Store,
    data_dir: &Path,
    listen: SocketAddr,
    fingerprint: &str,
) -> Result<Child> {
    let bin = agent_binary()?;
    let config = data_dir.join("local-agent.json");
    let host = if listen.ip().is_unspecified() || listen.ip().is_loopback() {
        "localhost".to_owned()
    } else {
        listen.ip().to_string()
    };
    let server = format!("https://{host}:{}", listen.port());
    listening(listen).await?;
    if !config.exists() {
        let token = new_secret("hfe_").map_err(anyhow::Error::msg)?;
        let mut change = store.change("server").await?;
        let created = change
            .create_enrollment_token(
                "local agent",
                &secret_hash(&token),
                1,
                now() + 600,
                "server",
            )
            .await?;
        change
            .commit(
                "create_enrollment_token",
                &format!("enrollment_token:{}", created.id),
                "local agent",
            )
            .await?;
        let out = Command::new(&bin)
            .args(["enroll", "--server", &server, "--fingerprint", fingerprint])
            .arg("--config")
            .arg(&config)
            // The token goes by environment, not argv (other users can read argv).
            .env("HOLDFAST_ENROLL_TOKEN", &token)
            .output()
            .await
            .with_context(|| format!("cannot run {}", bin.display()))?;
        if !out.status.success() {
            bail!(
                "the local agent could not enrol: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Command::new(&bin)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}
