//! The agents' side of the server: enrolment and the long-lived channel, both WebSockets
//! opened by the agent (the server never connects to agents).

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use holdfast_proto::{
    AgentMsg, Inventory, RefusalCode, ServerMsg, CHANNEL_PATH, ENROLL_PATH, PROTOCOL_VERSION,
};

use super::caller::ClientIp;
use super::AppState;
use crate::auth::{new_secret, secret_hash};
use crate::store::StoreError;

/// Default seconds between an agent's heartbeats; three missed ones close the channel.
pub const HEARTBEAT_SECONDS: u64 = 15;
/// Largest message an agent may send (an inventory of a big server fits many times; the
/// library's default is 64 MiB).
const WS_MAX_MESSAGE: usize = 16 << 20;
/// Bytes read from the socket at a time. The library's 128 KiB default is zero-filled on
/// every read, so it stays resident for each of thousands of idle channels; a larger
/// message still grows the buffer to its size.
const WS_READ_CHUNK: usize = 8 << 10;

/// The same limits for both agent endpoints.
fn sized(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.max_message_size(WS_MAX_MESSAGE)
        .read_buffer_size(WS_READ_CHUNK)
}

/// How often a connected agent's "last seen" time is written to the store.
const RECORD_SEEN: Duration = Duration::from_secs(60);

/// Time an agent has to send its first message.
const FIRST_MESSAGE: Duration = Duration::from_secs(10);

pub fn router() -> Router<AppState> {
    Router::new()
        .route(ENROLL_PATH, get(enroll))
        .route(CHANNEL_PATH, get(channel))
}

async fn send(ws: &mut WebSocket, msg: &ServerMsg) -> bool {
    ws.send(Message::Text(msg.to_text().into())).await.is_ok()
}

async fn refuse(mut ws: WebSocket, code: RefusalCode, reason: &str) {
    let _ = send(
        &mut ws,
        &ServerMsg::Refused {
            code,
            reason: reason.to_owned(),
        },
    )
    .await;
    let _ = ws.send(Message::Close(None)).await;
}

/// What an agent sends: a message, or a data frame of a download.
enum Incoming {
    Msg(Box<AgentMsg>),
    Data(axum::body::Bytes),
}

/// The next agent message; `None` on close, timeout or garbage.
async fn next(ws: &mut WebSocket, within: Duration) -> Option<Result<Incoming, String>> {
    loop {
        let msg = tokio::time::timeout(within, ws.recv()).await.ok()??.ok()?;
        match msg {
            Message::Text(t) => {
                return Some(
                    serde_json::from_str(t.as_str())
                        .map(|m| Incoming::Msg(Box::new(m)))
                        .map_err(|e| e.to_string()),
                )
            }
            Message::Binary(b) => return Some(Ok(Incoming::Data(b))),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// A message frame where only a message may come.
fn message(m: Incoming) -> Result<AgentMsg, String> {
    match m {
        Incoming::Msg(m) => Ok(*m),
        Incoming::Data(_) => Err("a data frame where a message was expected".into()),
    }
}

fn version_refusal(protocol: u32) -> Option<String> {
    holdfast_proto::version_mismatch(protocol, PROTOCOL_VERSION, env!("CARGO_PKG_VERSION"))
}

async fn enroll(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ws: WebSocketUpgrade,
) -> Response {
    sized(ws).on_upgrade(move |mut ws| async move {
        let (token, hostname) = match next(&mut ws, FIRST_MESSAGE).await.map(|m| m.and_then(message)) {
            Some(Ok(AgentMsg::Enroll { protocol, token, hostname })) => {
                if let Some(reason) = version_refusal(protocol) {
                    return refuse(ws, RefusalCode::Version, &reason).await;
                }
                (token, hostname)
            }
            _ => return refuse(ws, RefusalCode::Protocol, "expected an enrolment request").await,
        };
        let hostname: String = hostname.chars().filter(|c| !c.is_control()).take(253).collect();
        let Ok(random) = new_secret("") else {
            return refuse(ws, RefusalCode::Protocol, "the server has no randomness").await;
        };
        // The credential names the agent, so the server finds its hash without a scan; it
        // is filled in once the id is known, so store the hash of the random part.
        let enrolled = record_enrolment(&state, token.trim(), &hostname, &random, ip).await;
        match enrolled {
            Ok(Some(id)) => {
                tracing::info!(agent = id, %hostname, %ip, "agent enrolled");
                let secret = format!("hfa_{id}.{random}");
                let _ = send(&mut ws, &ServerMsg::Enrolled { agent_id: id, secret }).await;
                let _ = ws.send(Message::Close(None)).await;
            }
            Ok(None) => {
                tracing::warn!(%ip, "enrolment with a bad token");
                refuse(
                    ws,
                    RefusalCode::BadToken,
                    "the enrolment token is unknown, used up, revoked or expired: create a new one in the console",
                )
                .await
            }
            Err(e) => {
                tracing::error!(error = %e, "enrolment failed");
                refuse(ws, RefusalCode::Protocol, "the server could not record the agent").await
            }
        }
    })
}

/// Record the agent `hostname` enrolling from `ip` with `token`, its credential's random
/// part `random`, with its audit entry; `None` when the token is not good.
async fn record_enrolment(
    state: &AppState,
    token: &str,
    hostname: &str,
    random: &str,
    ip: IpAddr,
) -> Result<Option<i64>, StoreError> {
    let mut change = state.store.change("enrolment").await?;
    let Some(id) = change
        .enroll_agent(&secret_hash(token), hostname, &secret_hash(random))
        .await?
    else {
        return Ok(None);
    };
    change
        .commit(
            "enroll_agent",
            &format!("agent:{id}"),
            &format!("host={hostname} from={ip}"),
        )
        .await?;
    Ok(Some(id))
}

/// `hfa_<id>.<random>` → (id, random).
fn parse_credential(headers: &HeaderMap) -> Option<(i64, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let rest = v.strip_prefix("Bearer hfa_")?;
    let (id, random) = rest.split_once('.')?;
    Some((id.parse().ok()?, random.to_owned()))
}

async fn channel(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let credential = parse_credential(&headers);
    sized(ws).on_upgrade(move |ws| async move {
        let Some((id, random)) = credential else {
            return refuse(
                ws,
                RefusalCode::Unknown,
                "no agent credential: enrol this agent first",
            )
            .await;
        };
        let agent = match state.store.agent(id).await {
            Ok(Some(a)) if a.secret_hash == secret_hash(&random) => a,
            Ok(_) => {
                return refuse(
                    ws,
                    RefusalCode::Unknown,
                    "unknown agent credential: enrol this agent again",
                )
                .await
            }
            Err(e) => {
                tracing::error!(error = %e, "agent lookup failed");
                return;
            }
        };
        if agent.revoked_at.is_some() {
            return refuse(
                ws,
                RefusalCode::Revoked,
                "this agent was revoked by an administrator",
            )
            .await;
        }
        serve_channel(state, id, ws).await;
    })
}

async fn serve_channel(state: AppState, id: i64, mut ws: WebSocket) {
    match next(&mut ws, FIRST_MESSAGE)
        .await
        .map(|m| m.and_then(message))
    {
        Some(Ok(AgentMsg::Hello { protocol, .. })) => {
            if let Some(reason) = version_refusal(protocol) {
                // The agent stops on this refusal: the agent's page says why.
                if let Err(e) = state.store.set_agent_refusal(id, Some(&reason)).await {
                    tracing::error!(agent = id, error = %e, "cannot record a refusal");
                }
                tracing::warn!(agent = id, protocol, "agent refused: {reason}");
                return refuse(ws, RefusalCode::Version, &reason).await;
            }
        }
        _ => return refuse(ws, RefusalCode::Protocol, "expected hello").await,
    }
    let mut reg = state.gateway.register(id);
    let welcome = ServerMsg::Welcome {
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        heartbeat_seconds: state.heartbeat_seconds,
    };
    if !send(&mut ws, &welcome).await {
        state.gateway.unregister(id, reg.generation);
        return;
    }
    let _ = state.store.agent_connected(id, &state.cluster.id).await;
    if let Err(e) = state.store.set_agent_refusal(id, None).await {
        tracing::error!(agent = id, error = %e, "cannot clear a refusal");
    }
    tracing::info!(agent = id, "agent connected");
    // Settle runs the agent should have but does not (answered through this channel).
    let jobs = state.jobs.clone();
    let asked_at = crate::store::now();
    tokio::spawn(async move { jobs.reconcile(id, asked_at).await });
    let silence = Duration::from_secs(3 * state.heartbeat_seconds);
    // Pings let the agent notice a server that went silent (it reconnects instead of
    // waiting for TCP to give up).
    let mut ping = tokio::time::interval(Duration::from_secs(state.heartbeat_seconds));
    ping.reset();
    let mut heard = std::time::Instant::now();
    let mut recorded = heard;
    loop {
        tokio::select! {
            _ = ping.tick() => {
                // The agent heartbeats; three intervals without a word and it is gone.
                if heard.elapsed() > silence || ws.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            msg = next(&mut ws, silence) => match msg {
                Some(Ok(m)) => {
                    heard = std::time::Instant::now();
                    // An online agent's "last seen" is now; the store only needs it to
                    // survive a crash, so it is written once a minute, not per heartbeat.
                    if heard.duration_since(recorded) >= RECORD_SEEN {
                        let _ = state.store.agent_seen(id).await;
                        recorded = heard;
                    }
                    let m = match m {
                        Incoming::Msg(m) => *m,
                        Incoming::Data(frame) => {
                            if !state.gateway.data(id, &frame) {
                                tracing::warn!(agent = id, "malformed or oversized data frame from agent");
                            }
                            continue;
                        }
                    };
                    if let Some(answer) = handle(&state, id, m).await {
                        if !send(&mut ws, &answer).await {
                            break;
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(agent = id, error = %e, "malformed message from agent");
                }
                None => break,
            },
            out = reg.rx.recv() => match out {
                Some(m) => {
                    if !send(&mut ws, &m).await {
                        break;
                    }
                }
                None => break,
            },
            _ = reg.kicked.changed() => {
                // Revoked, or replaced by a newer connection of the same agent.
                if state.store.agent(id).await.ok().flatten().is_some_and(|a| a.revoked_at.is_some()) {
                    refuse(ws, RefusalCode::Revoked, "this agent was revoked by an administrator").await;
                } else {
                    let _ = ws.send(Message::Close(None)).await;
                }
                if state.gateway.unregister(id, reg.generation) {
                    let _ = state.store.agent_disconnected(id, &state.cluster.id).await;
                }
                tracing::info!(agent = id, "agent channel closed by the server");
                return;
            }
        }
    }
    if state.gateway.unregister(id, reg.generation) {
        let _ = state.store.agent_disconnected(id, &state.cluster.id).await;
    }
    tracing::info!(agent = id, "agent disconnected");
}

/// Act on one message of agent `id`; what to answer, if anything.
async fn handle(state: &AppState, id: i64, msg: AgentMsg) -> Option<ServerMsg> {
    match msg {
        AgentMsg::Inventory(inv) => store_inventory(state, id, &inv).await,
        // Proof of life only: the channel loop noted the time.
        AgentMsg::Heartbeat => {}
        AgentMsg::Response { id: req, result } => state.gateway.respond(req, result),
        AgentMsg::StreamEnd { id: stream, error } => state.gateway.end_stream(id, stream, error),
        AgentMsg::Progress {
            run_id,
            stage,
            done,
            total,
        } => state.jobs.on_progress(id, run_id, stage, done, total).await,
        AgentMsg::Log {
            run_id,
            level,
            text,
        } => state.jobs.on_log(id, run_id, &level, &text).await,
        AgentMsg::Report(report) => {
            // Acknowledged once stored (or known): the agent then deletes its copy.
            if state.jobs.on_report(id, &report).await {
                return Some(ServerMsg::ReportStored {
                    run_id: report.run_id,
                });
            }
        }
        AgentMsg::Hello { .. } | AgentMsg::Enroll { .. } => {
            tracing::warn!(agent = id, "unexpected message on an open channel");
        }
    }
    None
}

/// Keep the agent's latest inventory.
pub async fn store_inventory(state: &AppState, id: i64, inv: &Inventory) {
    let json = serde_json::to_string(inv).unwrap_or_default();
    if let Err(e) = state
        .store
        .set_inventory(id, &inv.hostname, &inv.os, &inv.agent_version, &json)
        .await
    {
        tracing::error!(agent = id, error = %e, "could not store the inventory");
    }
}
