//! The agent gateway: which agents are connected now, and requests to them.
//!
//! Each connected agent has a bounded queue of messages to send (a slow agent makes
//! senders wait instead of growing memory) and a kick signal (revocation closes the channel
//! at once). A request gets a fresh id; the agent's response with that id completes it.
//!
//! A download is a request whose reply is followed by a stream of data frames under the
//! same id ([`Gateway::stream`]): the frames wait in the stream's queue until the HTTP body
//! takes them, and only what the body took is acknowledged to the agent, so the agent is
//! never more than [`holdfast_proto::STREAM_WINDOW`] ahead of the browser.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_proto::{Call, Reply, ServerMsg, STREAM_CHUNK, STREAM_WINDOW};
use tokio::sync::{mpsc, oneshot, watch};

/// Messages queued per agent before senders wait.
pub const QUEUE: usize = 32;

/// Why a request to an agent did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("agent {0} is not connected")]
    Offline(i64),
    #[error("agent {0} did not answer within {1} s")]
    Timeout(i64, u64),
    #[error("agent {0} disconnected before answering")]
    Gone(i64),
    #[error("agent {0} refused the request: {1}")]
    Failed(i64, String),
    #[error("agent {agent} answered a {asked} request with a {got} reply")]
    WrongReply {
        agent: i64,
        asked: &'static str,
        got: &'static str,
    },
}

impl GatewayError {
    /// The error as a sentence about the agent on `host` (its display form names the agent's
    /// id, for logs).
    pub fn on(&self, host: &str) -> String {
        match self {
            GatewayError::Offline(_) => format!(
                "{host} is not connected to the server (its agent is stopped, or cannot reach the server)"
            ),
            GatewayError::Timeout(_, s) => format!("{host} did not answer within {s} s"),
            GatewayError::Gone(_) => format!("{host} disconnected before answering"),
            GatewayError::Failed(_, why) => format!("{host}: {why}"),
            GatewayError::WrongReply { asked, got, .. } => format!(
                "{host} answered a {asked} request with a {got} reply (its agent is of another version)"
            ),
        }
    }
}

/// What the agent answered: a reply, or why it could not.
type Answer = Result<Reply, String>;

struct Conn {
    tx: mpsc::Sender<ServerMsg>,
    kick: watch::Sender<bool>,
    generation: u64,
}

/// What arrives on a stream.
enum Piece {
    Data(bytes::Bytes),
    /// The agent ended the stream: complete, or broken off for the reason given.
    End(Option<String>),
}

/// A stream's queue, as the channel handler fills it.
struct Inflow {
    agent: i64,
    tx: mpsc::UnboundedSender<Piece>,
    /// Bytes received, and acknowledged: the agent may not run further ahead than the
    /// window (a frame of slack for rounding).
    received: u64,
    acked: std::sync::Arc<AtomicU64>,
}

/// Connected agents and requests in flight.
#[derive(Default)]
pub struct Gateway {
    conns: Mutex<HashMap<i64, Conn>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    streams: Mutex<HashMap<u64, Inflow>>,
    ids: AtomicU64,
}

/// What a connection handler holds: its queue and kick signal, and its generation (a newer
/// connection of the same agent replaces it).
pub struct Registration {
    pub rx: mpsc::Receiver<ServerMsg>,
    pub kicked: watch::Receiver<bool>,
    pub generation: u64,
}

impl Gateway {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Conn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register agent `id`'s new connection, closing an older one.
    pub fn register(&self, id: i64) -> Registration {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (kick, kicked) = watch::channel(false);
        let generation = self.ids.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = self.conns().insert(
            id,
            Conn {
                tx,
                kick,
                generation,
            },
        ) {
            let _ = old.kick.send(true);
        }
        Registration {
            rx,
            kicked,
            generation,
        }
    }

    /// Forget a connection (only if it is still the current one of the agent); its
    /// streams break off. True when it was the current one.
    pub fn unregister(&self, id: i64, generation: u64) -> bool {
        let mut conns = self.conns();
        let current = conns.get(&id).is_some_and(|c| c.generation == generation);
        if current {
            conns.remove(&id);
            drop(conns);
            self.streams().retain(|_, s| {
                if s.agent == id {
                    let _ = s.tx.send(Piece::End(Some(
                        "the agent disconnected during the download".into(),
                    )));
                }
                s.agent != id
            });
        }
        current
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Inflow>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Close agent `id`'s channel now (it was revoked).
    pub fn kick(&self, id: i64) {
        if let Some(c) = self.conns().remove(&id) {
            let _ = c.kick.send(true);
        }
    }

    /// Close every channel (the server is stopping; agents reconnect when it is back).
    pub fn close_all(&self) {
        for (_, c) in self.conns().drain() {
            let _ = c.kick.send(true);
        }
    }

    /// True when agent `id` has a channel open.
    pub fn is_online(&self, id: i64) -> bool {
        self.conns().contains_key(&id)
    }

    /// Number of open channels.
    pub fn online_count(&self) -> usize {
        self.conns().len()
    }

    /// Send `call` to agent `id` and wait up to `timeout` for its reply.
    pub async fn request<C: Call>(
        &self,
        id: i64,
        call: C,
        timeout: Duration,
    ) -> Result<C::Reply, GatewayError> {
        let req = self.ids.fetch_add(1, Ordering::Relaxed);
        self.request_as(req, id, call, timeout).await
    }

    /// Send `call` to agent `id`, wait up to `timeout` for its reply, then hand over the
    /// data that follows it: a download.
    pub async fn stream<C: Call>(
        self: &std::sync::Arc<Self>,
        id: i64,
        call: C,
        timeout: Duration,
    ) -> Result<(C::Reply, DataStream), GatewayError> {
        let req = self.ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let acked = std::sync::Arc::new(AtomicU64::new(0));
        self.streams().insert(
            req,
            Inflow {
                agent: id,
                tx,
                received: 0,
                acked: acked.clone(),
            },
        );
        let mut data = DataStream {
            gateway: self.clone(),
            agent: id,
            id: req,
            rx,
            acked,
            taken: 0,
            ended: false,
        };
        match self.request_as(req, id, call, timeout).await {
            Ok(reply) => Ok((reply, data)),
            Err(e) => {
                data.ended = true;
                self.streams().remove(&req);
                Err(e)
            }
        }
    }

    /// A data frame of agent `agent`; false when it broke the protocol (no such stream of
    /// its own, or past the window): the stream is then broken off.
    pub fn data(&self, agent: i64, frame: &[u8]) -> bool {
        let Some((id, payload)) = holdfast_proto::parse_data_frame(frame) else {
            return false;
        };
        let mut streams = self.streams();
        let Some(s) = streams.get_mut(&id).filter(|s| s.agent == agent) else {
            // A stream the server stopped may still have frames on the way.
            return true;
        };
        s.received += payload.len() as u64;
        let ahead = s.received.saturating_sub(s.acked.load(Ordering::Relaxed));
        if payload.len() > STREAM_CHUNK || ahead > STREAM_WINDOW + STREAM_CHUNK as u64 {
            let _ = s.tx.send(Piece::End(Some(
                "the agent sent more than the download's window".into(),
            )));
            streams.remove(&id);
            return false;
        }
        let _ =
            s.tx.send(Piece::Data(bytes::Bytes::copy_from_slice(payload)));
        true
    }

    /// Agent `agent` ended stream `id`.
    pub fn end_stream(&self, agent: i64, id: u64, error: Option<String>) {
        let mut streams = self.streams();
        if streams.get(&id).is_some_and(|s| s.agent == agent) {
            if let Some(s) = streams.remove(&id) {
                let _ = s.tx.send(Piece::End(error));
            }
        }
    }

    /// Queue `msg` for agent `id` without waiting (from a stream's body, which cannot wait).
    fn post(&self, id: i64, msg: ServerMsg) {
        if let Some(tx) = self.conns().get(&id).map(|c| c.tx.clone()) {
            tokio::spawn(async move {
                let _ = tx.send(msg).await;
            });
        }
    }

    async fn request_as<C: Call>(
        &self,
        req: u64,
        id: i64,
        call: C,
        timeout: Duration,
    ) -> Result<C::Reply, GatewayError> {
        let request = call.into();
        let asked = request.kind();
        let tx = self
            .conns()
            .get(&id)
            .map(|c| c.tx.clone())
            .ok_or(GatewayError::Offline(id))?;
        let (done, answer) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(req, done);
        let result = tokio::time::timeout(timeout, async {
            tx.send(ServerMsg::Request { id: req, request })
                .await
                .map_err(|_| GatewayError::Gone(id))?;
            answer.await.map_err(|_| GatewayError::Gone(id))
        })
        .await;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req);
        match result {
            Err(_) => Err(GatewayError::Timeout(id, timeout.as_secs())),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Err(why))) => Err(GatewayError::Failed(id, why)),
            Ok(Ok(Ok(reply))) => C::reply(reply).map_err(|other| GatewayError::WrongReply {
                agent: id,
                asked,
                got: other.kind(),
            }),
        }
    }

    /// Deliver an agent's response to the request waiting for it.
    pub fn respond(&self, req: u64, answer: Answer) {
        if let Some(done) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req)
        {
            let _ = done.send(answer);
        }
    }
}

/// A shared gateway.
pub type SharedGateway = Arc<Gateway>;

/// The data of a download as it arrives from the agent: a stream of byte chunks for an
/// HTTP body. What the body takes is acknowledged (in steps of a quarter window); dropped
/// before the end, it stops the agent's export.
pub struct DataStream {
    gateway: Arc<Gateway>,
    agent: i64,
    id: u64,
    rx: mpsc::UnboundedReceiver<Piece>,
    acked: Arc<AtomicU64>,
    taken: u64,
    ended: bool,
}

impl futures_util::Stream for DataStream {
    type Item = Result<bytes::Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Piece::Data(b))) => {
                self.taken += b.len() as u64;
                let taken = self.taken;
                if taken - self.acked.load(Ordering::Relaxed) >= STREAM_WINDOW / 4 {
                    self.acked.store(taken, Ordering::Relaxed);
                    let (agent, id) = (self.agent, self.id);
                    self.gateway
                        .post(agent, ServerMsg::StreamAck { id, bytes: taken });
                }
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Piece::End(None))) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Piece::End(Some(why)))) => {
                self.ended = true;
                tracing::warn!(agent = self.agent, "download broken off: {why}");
                Poll::Ready(Some(Err(std::io::Error::other(why))))
            }
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(Some(Err(std::io::Error::other(
                    "the download was broken off",
                ))))
            }
        }
    }
}

impl Drop for DataStream {
    fn drop(&mut self) {
        if !self.ended && self.gateway.streams().remove(&self.id).is_some() {
            self.gateway
                .post(self.agent, ServerMsg::StreamStop { id: self.id });
        }
    }
}
