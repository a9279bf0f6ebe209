//! The agent gateway: which agents are connected now, and requests to them.
//!
//! Each connected agent has a bounded queue of messages to send (a slow agent makes
//! senders wait instead of growing memory) and a kick signal (revocation closes the channel
//! at once). A request gets a fresh id; the agent's response with that id completes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_proto::{Call, Reply, ServerMsg};
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

/// Connected agents and requests in flight.
#[derive(Default)]
pub struct Gateway {
    conns: Mutex<HashMap<i64, Conn>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
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

    /// Forget a connection (only if it is still the current one of the agent).
    pub fn unregister(&self, id: i64, generation: u64) {
        let mut conns = self.conns();
        if conns.get(&id).is_some_and(|c| c.generation == generation) {
            conns.remove(&id);
        }
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
        let request = call.into();
        let asked = request.kind();
        let tx = self
            .conns()
            .get(&id)
            .map(|c| c.tx.clone())
            .ok_or(GatewayError::Offline(id))?;
        let req = self.ids.fetch_add(1, Ordering::Relaxed);
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
