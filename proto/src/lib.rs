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

pub mod files;
pub mod inventory;
pub mod job;
pub mod request;

use serde::{Deserialize, Serialize};

pub use files::{ExportFormat, FileEntry, FileKind, ImageRef, Listing, TreeTotal};
pub use inventory::{Disk, Inventory, Volume};
pub use job::{JobOrder, RunReport, RunStatus};
pub use request::{Call, Reply, Request};

/// Version of the messages below. A server refuses agents with another version, saying
/// which side to upgrade ([`version_mismatch`]).
///
/// 2: requests and replies are typed ([`Request`], [`Reply`]) instead of JSON objects
/// picked apart by an `op` string.
/// 3: an image task names its consistency method and maximum freeze time instead of a
/// `live` flag.
/// 4: files are browsed and streamed out of images (binary data frames, acknowledged).
/// 5: an SFTP target carries the host key an admin confirmed, which the agent must hold the
/// server to; a target test reports the key offered.
/// 6: a run may image several sources ([`job::Task::Images`]: a whole machine), or clone a
/// device onto another ([`job::Task::Clone`]).
pub const PROTOCOL_VERSION: u32 = 6;

/// Bytes of one data frame's payload at most.
pub const STREAM_CHUNK: usize = 64 << 10;
/// Bytes an agent may send on a stream beyond what the server has acknowledged: a slow
/// download holds the agent back instead of filling the server's memory.
pub const STREAM_WINDOW: u64 = 2 << 20;

/// A binary frame of stream `id`: its id (8 bytes, big-endian), then the payload.
pub fn data_frame(id: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The stream id and payload of a binary frame; `None` when it is too short to hold an id.
pub fn parse_data_frame(frame: &[u8]) -> Option<(u64, &[u8])> {
    let (id, payload) = frame.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*id), payload))
}

/// Why an agent speaking protocol `agent` cannot talk to a server speaking `server`, and
/// which side to upgrade; `None` when they match.
pub fn version_mismatch(agent: u32, server: u32, server_version: &str) -> Option<String> {
    use std::cmp::Ordering;
    match agent.cmp(&server) {
        Ordering::Equal => None,
        Ordering::Less => Some(format!(
            "this agent speaks protocol version {agent} and the server (holdfast-server \
             {server_version}) speaks {server}: upgrade the agent to holdfast-agent \
             {server_version}"
        )),
        Ordering::Greater => Some(format!(
            "this agent speaks protocol version {agent}, newer than the server's ({server}, \
             holdfast-server {server_version}): upgrade the server, or install the agent of \
             the server's version"
        )),
    }
}

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
    /// The answer to a [`ServerMsg::Request`] with the same id: the request's reply, or a
    /// sentence saying why it could not be done.
    Response {
        id: u64,
        result: Result<Reply, String>,
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
    /// Stream `id` (a request's id) is over: all its data frames were sent, or it broke
    /// off for the reason given.
    StreamEnd { id: u64, error: Option<String> },
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
    Request { id: u64, request: Request },
    /// The report of this run is stored: the agent may forget it.
    ReportStored { run_id: i64 },
    /// The server has passed on `bytes` of stream `id` in all: the agent may send up to
    /// [`STREAM_WINDOW`] beyond that.
    StreamAck { id: u64, bytes: u64 },
    /// Stop stream `id` (its download was abandoned); no [`AgentMsg::StreamEnd`] is needed.
    StreamStop { id: u64 },
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

    #[test]
    fn requests_and_replies_are_typed() {
        use request::{Call as _, Cancel, Cancelling, ListRuns, RunList};
        let m = ServerMsg::Request {
            id: 7,
            request: Cancel { run_id: 3 }.into(),
        };
        let t = m.to_text();
        assert!(t.contains("\"request\":\"cancel\""), "{t}");
        if let ServerMsg::Request { request, .. } = &m {
            assert_eq!(request.kind(), "cancel");
        }
        assert_eq!(serde_json::from_str::<ServerMsg>(&t).expect("parse"), m);
        let answer = AgentMsg::Response {
            id: 7,
            result: Ok(Reply::Cancelling(Cancelling { run_id: 3 })),
        };
        assert_eq!(
            serde_json::from_str::<AgentMsg>(&answer.to_text()).expect("parse"),
            answer
        );
        // A reply of another kind is handed back, never read as the one expected.
        let runs = Reply::Runs(RunList { runs: vec![1, 2] });
        assert_eq!(Cancel::reply(runs.clone()), Err(runs.clone()));
        assert_eq!(ListRuns::reply(runs), Ok(RunList { runs: vec![1, 2] }));
        // A missing field is an error, not a default.
        let missing = r#"{"type":"response","id":1,"result":{"Ok":{"reply":"cancelling"}}}"#;
        assert!(serde_json::from_str::<AgentMsg>(missing).is_err());
        let unknown = r#"{"type":"request","id":1,"request":{"request":"format_disk"}}"#;
        assert!(serde_json::from_str::<ServerMsg>(unknown).is_err());
    }

    #[test]
    fn data_frames_carry_their_stream_id() {
        let f = data_frame(0x0102_0304_0506_0708, b"payload");
        assert_eq!(&f[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            parse_data_frame(&f),
            Some((0x0102_0304_0506_0708, &b"payload"[..]))
        );
        assert_eq!(parse_data_frame(&data_frame(9, b"")), Some((9, &b""[..])));
        assert_eq!(parse_data_frame(&[1, 2, 3]), None);
        let end = AgentMsg::StreamEnd {
            id: 4,
            error: Some("gone".into()),
        };
        assert_eq!(
            serde_json::from_str::<AgentMsg>(&end.to_text()).expect("parse"),
            end
        );
    }

    #[test]
    fn a_version_mismatch_names_the_side_to_upgrade() {
        assert_eq!(version_mismatch(2, 2, "0.2.0"), None);
        let older = version_mismatch(1, 2, "0.2.0").expect("refused");
        assert!(
            older.contains("upgrade the agent to holdfast-agent 0.2.0"),
            "{older}"
        );
        let newer = version_mismatch(3, 2, "0.2.0").expect("refused");
        assert!(newer.contains("upgrade the server"), "{newer}");
    }
}
