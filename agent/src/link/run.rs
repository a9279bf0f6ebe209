//! `holdfast-agent run`: the daemon. Keeps one channel to the server open, reconnecting
//! with jittered back-off — to the next of the server's addresses when one cannot be
//! reached or its channel breaks, to the same one after the server closed a channel; sends the inventory on
//! connect and when it changes, heartbeats, and answers requests. A refusal that retrying
//! cannot fix (revoked, unknown, other protocol version) ends the daemon with its reason.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use holdfast_proto::request::{Cancelling, RunAccepted, RunList};
use holdfast_proto::{
    AgentMsg, Inventory, RefusalCode, Reply, Request, ServerMsg, CHANNEL_PATH, PROTOCOL_VERSION,
};

use super::config::AgentConfig;
use super::files::{browse, Streams};
use super::jobs::{state_dir, write_log_dir, Jobs, EVENTS};
use super::{connect, recv, recv_frame, send, Frame, Ws};
use crate::inventory::collect;

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often the inventory is re-read to see whether it changed.
const INVENTORY_CHECK: Duration = Duration::from_secs(60);

/// How a channel ended.
enum End {
    /// The server closed it, or Ctrl-C: reconnect (or stop when cancelled).
    Closed,
    /// The server refused us for good.
    Refused(RefusalCode, String),
}

/// How often the kernel's traces of block writes are read into their records: often
/// enough that a buffer (~60 000 writes per CPU) does not fill on a busy server.
const WRITE_LOG_EVERY: Duration = Duration::from_secs(5);

/// Read the traces of block writes into their records, in the background, for as long as
/// the daemon runs (a failure is told once, until one succeeds again).
fn read_write_logs(dir: std::path::PathBuf) {
    std::thread::spawn(move || {
        let mut failing = false;
        loop {
            match crate::write_log::update_all(&dir) {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    eprintln!("holdfast-agent: cannot read the traces of block writes: {e:#}");
                }
                Err(_) => {}
            }
            std::thread::sleep(WRITE_LOG_EVERY);
        }
    });
}

/// Run until cancelled or refused for good. `config_path` places the state directory.
pub async fn run(config: &AgentConfig, config_path: &Path) -> Result<()> {
    let (events_tx, mut events) = tokio::sync::mpsc::channel(EVENTS);
    let jobs = Jobs::open(state_dir(config_path), events_tx)?;
    read_write_logs(write_log_dir(&state_dir(config_path)));
    let servers = config.servers();
    let mut at = 0;
    let mut backoff = Duration::from_secs(1);
    loop {
        if crate::CANCEL.is_cancelled() {
            return Ok(());
        }
        let server = servers[at % servers.len()];
        match session(config, server, &jobs, &mut events).await {
            Ok(End::Closed) => backoff = Duration::from_secs(1),
            Ok(End::Refused(code, reason)) => match code {
                RefusalCode::Revoked | RefusalCode::Unknown | RefusalCode::Version => {
                    bail!("the server refused this agent: {reason}")
                }
                _ => eprintln!("holdfast-agent: {server} refused the channel: {reason}"),
            },
            Err(e) => {
                // The next address at once; after the last, the back-off.
                at += 1;
                if at % servers.len() != 0 {
                    eprintln!(
                        "holdfast-agent: {server}: {e:#}; trying {}",
                        servers[at % servers.len()]
                    );
                    continue;
                }
                eprintln!(
                    "holdfast-agent: {server}: {e:#}; retrying in about {} s",
                    backoff.as_secs()
                );
            }
        }
        if crate::CANCEL.is_cancelled() {
            return Ok(());
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `base` ± 50 %, so a fleet that lost the server does not reconnect in lockstep.
fn jitter(base: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = getrandom::getrandom(&mut b).map_or(0x8000, |()| u16::from_le_bytes(b));
    base.mul_f64(0.5 + f64::from(r) / f64::from(u16::MAX))
}

async fn session(
    config: &AgentConfig,
    server: &str,
    jobs: &Arc<Jobs>,
    events: &mut tokio::sync::mpsc::Receiver<AgentMsg>,
) -> Result<End> {
    let (mut ws, _) = connect(
        server,
        CHANNEL_PATH,
        &config.fingerprint,
        Some(&config.secret),
    )
    .await?;
    send(
        &mut ws,
        &AgentMsg::Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        },
    )
    .await?;
    let heartbeat = match recv(&mut ws).await? {
        Some(ServerMsg::Welcome {
            heartbeat_seconds, ..
        }) => Duration::from_secs(heartbeat_seconds.clamp(1, 3600)),
        Some(ServerMsg::Refused { code, reason }) => return Ok(End::Refused(code, reason)),
        Some(other) => bail!("unexpected first message from the server: {other:?}"),
        None => bail!("the server closed the channel at once"),
    };
    eprintln!(
        "holdfast-agent: connected to {server} as agent {}",
        config.agent_id
    );
    let mut inventory = current_inventory().await;
    send(&mut ws, &AgentMsg::Inventory(inventory.clone())).await?;
    // Progress of a channel that broke is stale; reports made meanwhile are spooled.
    while events.try_recv().is_ok() {}
    send_reports(&mut ws, jobs).await?;
    let mut beat = tokio::time::interval(heartbeat);
    beat.reset();
    let mut check = tokio::time::interval(INVENTORY_CHECK);
    check.reset();
    let mut cancel = tokio::time::interval(Duration::from_millis(250));
    let mut heard = std::time::Instant::now();
    // Downloads end with the channel that carries them.
    let (streams, mut stream_frames) = Streams::new();
    struct StopStreams(Arc<Streams>);
    impl Drop for StopStreams {
        fn drop(&mut self) {
            self.0.stop_all();
        }
    }
    let _stop_streams = StopStreams(streams.clone());
    loop {
        tokio::select! {
            _ = beat.tick() => send(&mut ws, &AgentMsg::Heartbeat).await?,
            _ = check.tick() => {
                let now = current_inventory().await;
                if now != inventory {
                    inventory = now;
                    send(&mut ws, &AgentMsg::Inventory(inventory.clone())).await?;
                }
            }
            _ = cancel.tick() => {
                if crate::CANCEL.is_cancelled() {
                    let _ = ws.close(None).await;
                    return Ok(End::Closed);
                }
                // The server pings every heartbeat: three without a word means it is gone.
                if heard.elapsed() > 3 * heartbeat {
                    bail!("the server stopped answering for {} s", heard.elapsed().as_secs());
                }
            }
            Some(event) = events.recv() => send(&mut ws, &event).await?,
            Some(frame) = stream_frames.recv() => {
                use futures_util::SinkExt as _;
                ws.send(frame).await.map_err(|e| anyhow::anyhow!("the connection to the server broke: {e}"))?;
            }
            () = jobs.reports_ready.notified() => send_reports(&mut ws, jobs).await?,
            frame = recv_frame(&mut ws) => {
                heard = std::time::Instant::now();
                match frame? {
                    Frame::Msg(ServerMsg::Request { id, request: Request::ExportFiles(r) }) => {
                        streams.export(jobs, id, r);
                    }
                    Frame::Msg(ServerMsg::Request { id, request }) => {
                        // Checks that touch targets take seconds: answered from a task, so
                        // heartbeats and other requests go on meanwhile.
                        if matches!(request, Request::TestTarget(_) | Request::CheckJob(_) | Request::BrowseImage(_)) {
                            let jobs = jobs.clone();
                            tokio::spawn(async move {
                                let result = answer(&jobs, request).await;
                                jobs.reply(AgentMsg::Response { id, result }).await;
                            });
                        } else {
                            let result = answer(jobs, request).await;
                            send(&mut ws, &AgentMsg::Response { id, result }).await?;
                        }
                    }
                    Frame::Msg(ServerMsg::ReportStored { run_id }) => jobs.stored(run_id),
                    Frame::Msg(ServerMsg::StreamAck { id, bytes }) => streams.ack(id, bytes),
                    Frame::Msg(ServerMsg::StreamStop { id }) => streams.stop(id),
                    Frame::Msg(ServerMsg::Refused { code, reason }) => return Ok(End::Refused(code, reason)),
                    Frame::Msg(_) | Frame::Control => {}
                    Frame::Closed => return Ok(End::Closed),
                }
            },
        }
    }
}

/// Reading sysfs and devices blocks: off the async threads.
async fn current_inventory() -> Inventory {
    tokio::task::spawn_blocking(collect)
        .await
        .unwrap_or_default()
}

/// Send every spooled report (the server stores each once and acknowledges it).
async fn send_reports(ws: &mut Ws, jobs: &Jobs) -> Result<()> {
    for report in jobs.spooled() {
        send(ws, &AgentMsg::Report(report)).await?;
    }
    Ok(())
}

/// Answer one request from the server: its reply, or why it cannot be done.
async fn answer(jobs: &Arc<Jobs>, request: Request) -> Result<Reply, String> {
    match request {
        Request::Inventory(_) => Ok(Reply::Inventory(current_inventory().await)),
        Request::RunJob(r) => jobs
            .accept(*r.order)
            .map(|acceptance| Reply::RunAccepted(RunAccepted { acceptance }))
            .map_err(|e| format!("{e:#}")),
        Request::ListRuns(_) => Ok(Reply::Runs(RunList { runs: jobs.known() })),
        Request::TestTarget(r) => jobs
            .test_target(&r.target)
            .await
            .map(Reply::TargetProbe)
            .map_err(|e| format!("{e:#}")),
        Request::CheckJob(r) => Ok(Reply::JobCheck(jobs.check(&r.order).await)),
        Request::BrowseImage(r) => browse(jobs, &r)
            .await
            .map(Reply::Listing)
            .map_err(|e| format!("{e:#}")),
        // Answered by its stream (see `session`).
        Request::ExportFiles(_) => Err("a download is answered by its stream".into()),
        Request::Cancel(r) => {
            if jobs.cancel(r.run_id) {
                Ok(Reply::Cancelling(Cancelling { run_id: r.run_id }))
            } else {
                Err(format!("run {} is not running on this agent", r.run_id))
            }
        }
    }
}
