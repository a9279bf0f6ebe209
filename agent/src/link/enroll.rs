//! `holdfast-agent enroll`: register with the server using a one-time token.

use std::path::Path;

use anyhow::{bail, Result};
use holdfast_proto::{AgentMsg, ServerMsg, ENROLL_PATH, PROTOCOL_VERSION};

use super::config::AgentConfig;
use super::{connect, recv, send};
use crate::device::hostname;

/// Enrol at `server` with `token`, pinning `fingerprint`; write the configuration to `path`,
/// with `more_servers` to try when `server` cannot be reached.
pub async fn enroll(
    server: &str,
    more_servers: &[String],
    token: &str,
    fingerprint: &str,
    path: &Path,
) -> Result<AgentConfig> {
    for s in more_servers {
        if !s.starts_with("https://") {
            bail!("'{s}' is not a server address: it must look like https://host:port");
        }
    }
    if !fingerprint.starts_with("SHA256:") {
        bail!("the fingerprint must look like SHA256:… (the server prints it at start)");
    }
    let (mut ws, pinned) = connect(server, ENROLL_PATH, fingerprint, None).await?;
    send(
        &mut ws,
        &AgentMsg::Enroll {
            protocol: PROTOCOL_VERSION,
            token: token.trim().to_owned(),
            hostname: hostname(),
        },
    )
    .await?;
    let (agent_id, secret) = match recv(&mut ws).await? {
        Some(ServerMsg::Enrolled { agent_id, secret }) => (agent_id, secret),
        Some(ServerMsg::Refused { reason, .. }) => {
            bail!("the server refused the enrolment: {reason}")
        }
        Some(other) => bail!("unexpected answer to the enrolment: {other:?}"),
        None => bail!("the server closed the connection without enrolling this agent"),
    };
    let _ = ws.close(None).await;
    let pinned = pinned
        .matched
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|c| super::pin::fingerprint(c))
        .unwrap_or_else(|| fingerprint.to_owned());
    let config = AgentConfig {
        server: server.trim_end_matches('/').to_owned(),
        more_servers: more_servers
            .iter()
            .map(|s| s.trim_end_matches('/').to_owned())
            .collect(),
        fingerprint: pinned,
        agent_id,
        secret,
    };
    config.save(path)?;
    Ok(config)
}
