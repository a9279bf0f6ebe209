//! # holdfast-proto
//!
//! What agents and the server say to each other over the agent channel: one WebSocket per
//! agent, opened by the agent over TLS, carrying JSON text frames. Each frame is one
//! [`AgentMsg`] (agent → server) or [`ServerMsg`] (server → agent).
//!
//! A connection starts with [`AgentMsg::Hello`], which carries [`PROTOCOL_VERSION`]; the
//! server answers [`ServerMsg::Welcome`] or [`ServerMsg::Refused`] (wrong version, unknown or
//! revoked agent) and closes. Requests from the server carry an id that the agent's
//! [`AgentMsg::Response`] repeats, so several can be in flight; the agent reads the channel
//! one message at a time and answers in its own time, and both sides bound their queues (the
//! back-pressure of a slow peer reaches the sender instead of growing memory).

pub mod inventory;
pub mod job;

use serde::{Deserialize, Serialize};

pub use inventory::{Disk, Inventory, Volume};
pub use job::{JobOrder, RunReport, RunStatus};

/// Version of the messages below. A server refuses agents with another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// `SHA256:<base64>` (no padding) of a DER certificate: what the server prints and agents pin.
pub fn certificate_fingerprint(der: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(der))
    )
}

/// Bytes in binary units, for people: `512 B`, `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Path of the agent channel on the server.
pub const CHANNEL_PATH: &str = "/api/v1/agent/channel";
/// Path agents enrol at (a WebSocket as well: one exchange, then closed).
pub const ENROLL_PATH: &str = "/api/v1/agent/enroll";

/// Agent → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMsg {
    /// First message of a channel.
    Hello {
        protocol: u32,
        agent_version: String,
    },
    /// First message of an enrolment: the one-time token and who is asking.
    Enroll {
        protocol: u32,
        token: String,
        hostname: String,
    },
    /// The machine's disks and volumes, sent after `Welcome` and whenever they change.
    Inventory(Inventory),
    /// Sent every heartbeat interval; the server marks the agent offline without them.
    Heartbeat,
    /// The answer to a [`ServerMsg::Request`] with the same id.
    Response {
        id: u64,
        ok: bool,
        body: serde_json::Value,
    },
    /// Progress of a running job (sent at most every half second; may be dropped when the
    /// channel is down).
    Progress {
        run_id: i64,
        stage: String,
        done: u64,
        total: u64,
    },
    /// A log line of a running job.
    Log {
        run_id: i64,
        level: String,
        text: String,
    },
    /// A finished run. Kept on the agent's disk until [`ServerMsg::ReportStored`] says the
    /// server has it, so a report made while the server was away arrives later.
    Report(job::RunReport),
}

/// Server → agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// The channel is open.
    Welcome {
        server_version: String,
        /// Seconds between the agent's heartbeats.
        heartbeat_seconds: u64,
    },
    /// Enrolment done: the agent's identity and secret (shown once).
    Enrolled { agent_id: i64, secret: String },
    /// The server will not talk to this agent; the reason says why (and what to do).
    Refused { code: RefusalCode, reason: String },
    /// A request the agent answers with [`AgentMsg::Response`].
    Request { id: u64, body: serde_json::Value },
    /// The report of this run is stored: the agent may forget it.
    ReportStored { run_id: i64 },
}

/// Why a channel or enrolment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The agent speaks another protocol version.
    Version,
    /// The agent's credentials are unknown.
    Unknown,
    /// The agent was revoked by an admin.
    Revoked,
    /// The enrolment token is unknown, used up, revoked or expired.
    BadToken,
    /// The first message was not the expected one.
    Protocol,
}

impl AgentMsg {
    /// One text frame.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl ServerMsg {
    /// One text frame.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_are_tagged() {
        let m = AgentMsg::Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
        };
        let t = m.to_text();
        assert!(t.contains("\"type\":\"hello\""), "{t}");
        assert_eq!(serde_json::from_str::<AgentMsg>(&t).expect("parse"), m);
        let r = ServerMsg::Refused {
            code: RefusalCode::Revoked,
            reason: "revoked".into(),
        };
        assert_eq!(
            serde_json::from_str::<ServerMsg>(&r.to_text()).expect("parse"),
            r
        );
        assert!(serde_json::from_str::<AgentMsg>("{\"type\":\"nope\"}").is_err());
    }
}
