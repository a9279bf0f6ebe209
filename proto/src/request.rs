//! Requests the server sends down an agent's channel, and the typed reply to each.
//!
//! One type per request (`RunJob`, `Cancel`, …), each naming its reply type through
//! [`Call`]. On the wire a request is one [`Request`] (tagged by `request`) inside
//! [`ServerMsg::Request`](crate::ServerMsg::Request), and the answer one [`Reply`] (tagged by
//! `reply`) or an error sentence inside [`AgentMsg::Response`](crate::AgentMsg::Response).
//! The agent answers with an exhaustive `match` on [`Request`]; the server's gateway turns
//! the [`Reply`] back into the request's own reply type, and a reply of another kind is a
//! protocol error, never a default.

use serde::{Deserialize, Serialize};

use crate::files::{ExportFormat, ImageRef, Listing};
use crate::inventory::Inventory;
use crate::job::{JobOrder, TargetAccess};

/// A request to an agent, as it travels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    RunJob(RunJob),
    Cancel(Cancel),
    ListRuns(ListRuns),
    CheckJob(CheckJob),
    TestTarget(TestTarget),
    Inventory(GetInventory),
    BrowseImage(BrowseImage),
    ExportFiles(ExportFiles),
}

/// An agent's answer to a [`Request`], as it travels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    RunAccepted(RunAccepted),
    Cancelling(Cancelling),
    Runs(RunList),
    JobCheck(JobCheck),
    TargetProbe(TargetProbe),
    Inventory(Inventory),
    Listing(Listing),
    ExportStarted(ExportStarted),
}

impl Request {
    /// The request's kind, as tagged on the wire (for messages).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RunJob(_) => "run_job",
            Self::Cancel(_) => "cancel",
            Self::ListRuns(_) => "list_runs",
            Self::CheckJob(_) => "check_job",
            Self::TestTarget(_) => "test_target",
            Self::Inventory(_) => "inventory",
            Self::BrowseImage(_) => "browse_image",
            Self::ExportFiles(_) => "export_files",
        }
    }
}

impl Reply {
    /// The reply's kind, for messages about a reply of the wrong kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RunAccepted(_) => "run_accepted",
            Self::Cancelling(_) => "cancelling",
            Self::Runs(_) => "runs",
            Self::JobCheck(_) => "job_check",
            Self::TargetProbe(_) => "target_probe",
            Self::Inventory(_) => "inventory",
            Self::Listing(_) => "listing",
            Self::ExportStarted(_) => "export_started",
        }
    }
}

/// A request type and the reply it gets.
pub trait Call: Into<Request> {
    /// What the agent answers.
    type Reply;
    /// The request's reply out of `reply`; `Err` gives back a reply of another kind.
    fn reply(reply: Reply) -> Result<Self::Reply, Reply>;
}

/// `call!(Variant(RequestType) => ReplyVariant(ReplyType))`: the request's wrapping into
/// [`Request`] and its [`Call`] impl.
macro_rules! call {
    ($variant:ident($request:ty) => $reply_variant:ident($reply:ty)) => {
        impl From<$request> for Request {
            fn from(r: $request) -> Self {
                Self::$variant(r)
            }
        }
        impl Call for $request {
            type Reply = $reply;
            fn reply(reply: Reply) -> Result<$reply, Reply> {
                match reply {
                    Reply::$reply_variant(r) => Ok(r),
                    other => Err(other),
                }
            }
        }
    };
}

/// Start a run (an order seen twice runs once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunJob {
    pub order: Box<JobOrder>,
}
call!(RunJob(RunJob) => RunAccepted(RunAccepted));

/// What became of a [`RunJob`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Acceptance {
    /// The run started now.
    Started,
    /// The run is running already (the order came twice).
    AlreadyRunning,
    /// The run was started before and has ended or is ending (its report follows).
    AlreadyAccepted,
}

/// The agent took the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAccepted {
    pub acceptance: Acceptance,
}

/// Stop a run (between frames; the partial image is removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    pub run_id: i64,
}
call!(Cancel(Cancel) => Cancelling(Cancelling));

/// The run is being stopped; its report (cancelled) follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelling {
    pub run_id: i64,
}

/// Which runs does the agent know (running, or reports not yet stored)?
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRuns {}
call!(ListRuns(ListRuns) => Runs(RunList));

/// The runs an agent knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunList {
    pub runs: Vec<i64>,
}

/// Could this order run here now? Nothing is changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckJob {
    pub order: Box<JobOrder>,
}
call!(CheckJob(CheckJob) => JobCheck(JobCheck));

/// How one check of a [`CheckJob`] came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum CheckStatus {
    Ok,
    Warning,
    Error,
}

/// One line of a job check: what was checked, and what was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Check {
    /// `source`, `target`, `space`, `base image`, `command before`…
    pub check: String,
    pub status: CheckStatus,
    pub detail: String,
}

/// The answer to a [`CheckJob`]: every check, and whether none failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct JobCheck {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl JobCheck {
    /// A check result from its lines (`ok` when none is an error).
    pub fn new(checks: Vec<Check>) -> Self {
        Self {
            ok: !checks.iter().any(|c| c.status == CheckStatus::Error),
            checks,
        }
    }
}

/// Write, read back and delete a test file on a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestTarget {
    pub target: Box<TargetAccess>,
}
call!(TestTarget(TestTarget) => TargetProbe(TargetProbe));

/// What a target test found (also what `holdfast-agent target test --json` prints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct TargetProbe {
    pub ok: bool,
    /// The folder tested (no credentials).
    pub target: String,
    /// Size of the test file.
    pub bytes: u64,
    pub write_ms: u64,
    pub read_ms: u64,
    /// Free bytes, where the protocol can tell.
    pub free_bytes: Option<u64>,
    /// An SFTP server's host key.
    pub host_key: Option<HostKeyCheck>,
    /// Whether an S3 bucket enforces Object Lock (none for other targets, and from agents
    /// older than this field).
    #[serde(default)]
    pub object_lock: Option<Box<ObjectLockState>>,
}

/// What an S3 bucket says about Object Lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ObjectLockState {
    /// The bucket was created with Object Lock: images can be locked on it.
    pub enabled: bool,
    /// The retention the bucket gives every new object by itself, if any: mode
    /// (`GOVERNANCE`/`COMPLIANCE`) and days.
    pub default_mode: Option<String>,
    pub default_days: Option<u32>,
}

/// The host key an SFTP server offered to a target test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct HostKeyCheck {
    /// `SHA256:` and the base64 of the key's SHA-256, as `ssh-keygen -lf` shows it.
    pub fingerprint: String,
    /// The admin confirmed this key before (the test ran in full). When false the agent
    /// only read the key from the handshake and sent nothing that logs in (`ok` is false):
    /// compare it with the server's (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`)
    /// and confirm it before anything else.
    pub confirmed: bool,
}

/// The machine's disks and volumes, read now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetInventory {}

call!(Inventory(GetInventory) => Inventory(Inventory));

/// List a folder inside an image point (read from its target, nothing restored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrowseImage {
    pub image: Box<ImageRef>,
    /// The folder (or file) inside the image.
    pub path: String,
    /// Also count what the path holds all the way down (the size of a folder's download).
    pub total: bool,
}
call!(BrowseImage(BrowseImage) => Listing(Listing));

/// Stream files or folders out of an image point: the agent answers [`ExportStarted`] once
/// the paths are found, then sends the bytes as data frames under the request's id
/// ([`crate::data_frame`]), never more than [`crate::STREAM_WINDOW`] ahead of the server's
/// [`ServerMsg::StreamAck`](crate::ServerMsg::StreamAck), and ends with
/// [`AgentMsg::StreamEnd`](crate::AgentMsg::StreamEnd).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportFiles {
    pub image: Box<ImageRef>,
    /// Paths inside the image; with [`ExportFormat::File`], exactly one regular file.
    pub paths: Vec<String>,
    pub format: ExportFormat,
}
call!(ExportFiles(ExportFiles) => ExportStarted(ExportStarted));

/// The paths were found and their bytes follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportStarted {}
