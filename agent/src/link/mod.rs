//! The agent's link to the server: enrolment, and the daemon that keeps one WebSocket open
//! (over TLS pinned at enrolment), reports the inventory and answers the server's requests.

pub mod config;
pub mod drill;
pub mod enroll;
pub mod files;
pub mod jobs;
pub mod pin;
pub mod run;
pub mod tasks;
mod together;

use std::sync::Arc;

use anyhow::{anyhow, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use holdfast_proto::{AgentMsg, ServerMsg};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use pin::{client_config, Pinned};

/// A WebSocket to the server.
pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Open `path` on `server` (`https://host:port`), trusting only the pinned certificate.
pub async fn connect(
    server: &str,
    path: &str,
    fingerprint: &str,
    bearer: Option<&str>,
) -> Result<(Ws, Arc<Pinned>)> {
    let base = server.trim_end_matches('/');
    let url = match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}{path}"),
        None => anyhow::bail!("the server address must start with https:// (got '{server}')"),
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("'{server}' is not a valid server address"))?;
    if let Some(b) = bearer {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {b}")
                .parse()
                .map_err(|_| anyhow!("the agent credential is not valid header text"))?,
        );
    }
    let pinned = Arc::new(Pinned::new(fingerprint));
    let connector = Connector::Rustls(Arc::new(
        client_config(pinned.clone()).context("cannot set up TLS")?,
    ));
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
            .await
            .map_err(|e| anyhow!("cannot reach the server at {server}: {e}"))?;
    Ok((ws, pinned))
}

/// Send one message.
pub async fn send(ws: &mut Ws, msg: &AgentMsg) -> Result<()> {
    ws.send(Message::Text(msg.to_text().into()))
        .await
        .context("the connection to the server broke")
}

/// The next server message; `None` when the server closed the channel.
pub async fn recv(ws: &mut Ws) -> Result<Option<ServerMsg>> {
    loop {
        match recv_frame(ws).await? {
            Frame::Msg(m) => return Ok(Some(m)),
            Frame::Control => continue,
            Frame::Closed => return Ok(None),
        }
    }
}

/// What arrived from the server.
pub enum Frame {
    Msg(ServerMsg),
    /// A ping or another control frame: the server is alive.
    Control,
    Closed,
}

/// The next frame of any kind.
pub async fn recv_frame(ws: &mut Ws) -> Result<Frame> {
    match ws.next().await {
        None => Ok(Frame::Closed),
        Some(msg) => match msg.context("the connection to the server broke")? {
            Message::Text(t) => serde_json::from_str(t.as_str())
                .map(Frame::Msg)
                .with_context(|| {
                    format!("the server sent a message this agent does not understand: {t}")
                }),
            Message::Close(_) => Ok(Frame::Closed),
            _ => Ok(Frame::Control),
        },
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// `holdfast-agent enroll`.
pub fn cli_enroll(a: crate::cli::EnrollArgs) -> Result<std::process::ExitCode> {
    let path = config::path(a.config);
    let c = runtime()?.block_on(enroll::enroll(
        &a.server,
        &a.also_servers,
        &a.token,
        &a.fingerprint,
        &path,
    ))?;
    println!(
        "enrolled as agent {} at {}; configuration written to {}",
        c.agent_id,
        c.server,
        path.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// `holdfast-agent run`.
pub fn cli_run(a: crate::cli::RunArgs) -> Result<std::process::ExitCode> {
    let path = config::path(a.config);
    let c = config::AgentConfig::load(&path)?;
    // Snapshots a killed imaging process left behind go before anything else runs.
    crate::consistency::remove_stale_snapshots();
    runtime()?.block_on(run::run(&c, &path))?;
    Ok(std::process::ExitCode::SUCCESS)
}
