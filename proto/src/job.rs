//! Jobs on the channel: the order the server sends (with everything the agent needs,
//! credentials included — they exist in clear only inside this TLS channel and the agent's
//! memory), the progress and log events that come back while it runs, and the report.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// A secret in a message: redacted in `Debug`, wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub Zeroizing<String>);

impl Secret {
    /// Wrap `s`.
    pub fn new(s: impl Into<String>) -> Self {
        Self(Zeroizing::new(s.into()))
    }

    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// How the agent reaches a storage target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetAccess {
    /// The target's folder as a URL (`sftp://…`, `smb://…`, `ftp://…`, `ftps://…`) or a
    /// local path.
    pub url: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// A private key (SFTP), PEM text.
    pub private_key: Option<Secret>,
    pub passphrase: Option<Secret>,
    /// CA certificate(s) to trust for FTPS, PEM text.
    pub ca_pem: Option<String>,
    /// The SFTP server's host key as an admin confirmed it (`SHA256:…`): the agent refuses
    /// any other before sending credentials. The server sends SFTP targets only with one,
    /// except to test the connection, where the agent then only reads the key offered.
    pub host_key: Option<String>,
    /// Bandwidth limit for transfers to and from the target, with time windows
    /// (`holdfast_targets::bandwidth` syntax).
    #[serde(default)]
    pub bandwidth: Option<String>,
    /// The agent's own bandwidth limit as set on the console (same syntax), for all its
    /// targets: the lower of the two applies at each moment.
    #[serde(default)]
    pub agent_bandwidth: Option<String>,
}

/// How an image relates to earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum ImageKind {
    /// A full image.
    Full,
    /// Blocks changed since the newest image of the chain.
    Incremental,
    /// Blocks changed since the chain's full image.
    Differential,
}

impl ImageKind {
    /// The name used in the API and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Incremental => "incremental",
            Self::Differential => "differential",
        }
    }
}

/// How an image of a source that may be mounted read-write is made consistent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum ConsistencyMethod {
    /// The first that applies: `unmounted` (or mounted read-only), `lvm-snapshot` for an LVM
    /// logical volume, `dm-snapshot` for another device-mapper device, else `freeze` when the
    /// estimated imaging time fits the maximum freeze time; otherwise refused, naming the
    /// choices.
    #[default]
    Auto,
    /// Only a source that is not mounted read-write.
    Unmounted,
    /// An LVM snapshot of the logical volume (thin for a thin volume, else a classic one
    /// whose copy-on-write space is a share of the volume's size), imaged and then removed.
    LvmSnapshot,
    /// A device-mapper snapshot of a device-mapper device that is not an LVM volume (e.g. a
    /// LUKS mapping on a partition): its table is swapped for a snapshot origin, with
    /// copy-on-write space in the agent's snapshot store, imaged and then swapped back.
    DmSnapshot,
    /// Freeze the mounted filesystem while imaging (always thawed, at the latest after the
    /// maximum freeze time).
    Freeze,
    /// Remount the filesystem read-only while imaging.
    Lock,
    /// Copy it as it changes: not crash-consistent, and the run ends with a warning.
    Live,
}

impl ConsistencyMethod {
    /// Every method, in the order `auto` considers the real ones.
    pub const ALL: [Self; 7] = [
        Self::Auto,
        Self::Unmounted,
        Self::LvmSnapshot,
        Self::DmSnapshot,
        Self::Freeze,
        Self::Lock,
        Self::Live,
    ];

    /// The name used on the command line, in job definitions and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Unmounted => "unmounted",
            Self::LvmSnapshot => "lvm-snapshot",
            Self::DmSnapshot => "dm-snapshot",
            Self::Freeze => "freeze",
            Self::Lock => "lock",
            Self::Live => "live",
        }
    }
}

impl std::str::FromStr for ConsistencyMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|m| m.as_str()).collect();
                format!("unknown consistency method '{s}': use {}", names.join(", "))
            })
    }
}

/// A classic LVM or device-mapper snapshot's copy-on-write space, in percent of the volume,
/// unless set.
pub const DEFAULT_SNAPSHOT_PERCENT: u32 = 20;

/// The maximum freeze time when a job does not set one.
pub const DEFAULT_MAX_FREEZE_SECS: u32 = 30;

/// Create one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageTask {
    /// Device, partition or file to image.
    pub source: String,
    pub target: TargetAccess,
    /// The image's file name, relative to the target's folder (may hold `/`).
    pub name: String,
    pub method: ImageKind,
    /// The base image (name on the same target) for incremental and differential.
    pub base: Option<String>,
    pub compression_level: i32,
    /// `aes128`, `aes192` or `aes256`; none for no encryption.
    pub encryption: Option<String>,
    /// The image password (encryption, and opening an encrypted base).
    pub password: Option<Secret>,
    /// The passphrase of the LUKS volume being imaged: its contents are then stored
    /// decrypted, by the used blocks of the filesystem inside, in the encrypted image.
    #[serde(default)]
    pub luks_passphrase: Option<Secret>,
    /// Split into parts of at most this many bytes.
    pub split_size: Option<u64>,
    /// Validate the image after writing it.
    pub verify: bool,
    /// Replace an image of the same name.
    pub overwrite: bool,
    /// Keep the contents of Windows' page, hibernation and swap files on NTFS volumes.
    #[serde(default)]
    pub keep_windows_system_files: bool,
    /// Take a sample of the source's files with checksums (for restore drills).
    #[serde(default)]
    pub sample_files: bool,
    pub comment: String,
    /// How a source mounted read-write is made consistent.
    pub consistency: ConsistencyMethod,
    /// The longest a filesystem may stay frozen, in seconds.
    pub max_freeze_secs: u32,
    /// A classic LVM snapshot's copy-on-write space, in percent of the volume's size.
    pub snapshot_percent: u32,
    /// A command run just before the source is held (e.g. flush a database).
    pub before_snapshot: Option<String>,
    /// A command run once the hold is no longer needed.
    pub after_snapshot: Option<String>,
    /// The time limit of each, in seconds.
    pub snapshot_command_timeout_secs: u32,
    /// Find an incremental's changed blocks from the filesystem (where it can tell) instead
    /// of hashing every used block.
    #[serde(default = "yes")]
    pub change_tracking: bool,
    /// Every this many incrementals hash every used block (0: only when the base's state
    /// cannot be trusted).
    #[serde(default = "default_full_hash_every")]
    pub full_hash_every: u32,
    /// Keep an LVM thin snapshot after imaging for the next incremental to compare block
    /// mappings with (only while its pool has room).
    #[serde(default = "yes")]
    pub keep_thin_snapshot: bool,
    /// Lock every part of the image against deletion and replacement (S3 Object Lock).
    #[serde(default)]
    pub object_lock: Option<ObjectLockOrder>,
}

/// How long, and how strictly, an image is locked on its S3 bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ObjectLockOrder {
    pub mode: LockMode,
    /// Seconds from the moment each part is written.
    pub seconds: u64,
}

/// An Object Lock mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum LockMode {
    /// Lifted only by users allowed to bypass governance retention.
    #[default]
    Governance,
    /// Lifted by nobody, not even the account's root user, until it ends.
    Compliance,
}

impl LockMode {
    /// As the agent's command line takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        }
    }
}

fn yes() -> bool {
    true
}

/// The full hash pass runs every 7th incremental unless the job says otherwise.
pub const DEFAULT_FULL_HASH_EVERY: u32 = 7;

fn default_full_hash_every() -> u32 {
    DEFAULT_FULL_HASH_EVERY
}

/// Files or folders of an image point copied back onto the agent's machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreFilesTask {
    pub image: crate::files::ImageRef,
    /// Paths inside the image.
    pub paths: Vec<String>,
    /// The folder to restore into; none for their original place: the same folder under
    /// where the imaged volume is mounted now on this machine.
    pub to: Option<String>,
    /// Replace files that exist there (otherwise the run fails naming them).
    pub overwrite: bool,
}

/// An image point written back over a device of the agent's machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreVolumeTask {
    pub image: crate::files::ImageRef,
    /// The device to overwrite (refused when mounted or too small).
    pub device: String,
    /// For a disk image: only this partition, written onto the device.
    #[serde(default)]
    pub partition: Option<u32>,
}

/// Stored images validated again where they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyTask {
    pub target: TargetAccess,
    /// The image password: with it every block is checked against its hash; without it,
    /// the structure and the ciphertext's checksums.
    pub password: Option<Secret>,
    /// The images (names in the target's folder), oldest first.
    pub images: Vec<String>,
}

/// A restore drill: an image point restored into scratch space and checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillTask {
    pub image: crate::files::ImageRef,
    /// What the source held when it was imaged.
    pub sample: Vec<SampleFile>,
    /// The folder for the scratch copy (default: the agent's state folder).
    pub scratch: Option<String>,
}

/// What a drill found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct DrillResult {
    /// The filesystem's checker found it clean.
    pub fsck_clean: bool,
    /// The checker's command and the end of what it said.
    pub fsck: String,
    /// Regular files on the restored volume.
    pub files: u64,
    /// Sampled files compared, and how many were equal.
    pub sampled: u64,
    pub matched: u64,
    /// Seconds to restore (the recovery time), and for the whole drill.
    pub restore_seconds: f64,
    pub seconds: f64,
}

/// One device of the agent's machine copied onto another, without an image (a system moved
/// to a new disk). The agent refuses a target that is mounted, in use, smaller than the
/// source or part of it before it writes anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneTask {
    pub source: String,
    /// Everything on it is replaced.
    pub target: String,
    /// Every sector instead of the used ones.
    pub forensic: bool,
    /// On a larger target, grow the last partition and its filesystem into the new space.
    pub grow: bool,
    /// Zero what the source does not use instead of leaving the target's old bytes there.
    pub zero_unused: bool,
    /// Write unreadable source sectors as zeros and list them (the run ends as warning)
    /// instead of stopping.
    pub ignore_read_errors: bool,
}

/// One source of a run that images several (a whole machine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceImage {
    pub image: ImageTask,
    /// Images of this source's chains (names on the same target) to delete once its new
    /// image is written and sound.
    #[serde(default)]
    pub delete_after: Vec<String>,
}

/// What a run does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Task {
    Image(ImageTask),
    /// Several sources, one after another, each into its own image and chain, in one report.
    Images {
        sources: Vec<SourceImage>,
    },
    RestoreFiles(RestoreFilesTask),
    RestoreVolume(RestoreVolumeTask),
    Verify(VerifyTask),
    Drill(DrillTask),
    Clone(CloneTask),
}

/// A command run before or after the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookCommand {
    /// Run with `/bin/sh -c`.
    pub command: String,
    /// Run as this user (default: the agent's user).
    pub user: Option<String>,
    pub timeout_seconds: u64,
    /// A failure (non-zero exit, timeout) ends the job.
    pub abort_on_failure: bool,
}

/// What the machine does once the job is over (not after a cancelled one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterJob {
    #[default]
    None,
    /// Restart a minute later (time for the report to reach the server).
    Restart,
    /// Shut down a minute later.
    Shutdown,
}

/// What the agent runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOrder {
    /// The run's id: the report carries it, and an order seen twice runs once.
    pub run_id: i64,
    pub job_id: Option<i64>,
    /// Job name, for the report.
    pub name: String,
    pub task: Task,
    pub before: Option<HookCommand>,
    pub after: Option<HookCommand>,
    /// Stop at the first failing step (otherwise later steps still run and the report says
    /// what failed).
    pub abort_on_error: bool,
    /// Images (names on the same target) to delete once the new image is written and
    /// sound: what the job's retention lets go (of a [`Task::Image`]; several sources
    /// carry their own).
    #[serde(default)]
    pub delete_after: Vec<String>,
    #[serde(default)]
    pub after_job: AfterJob,
    /// What the server decided for this run that its report should say (e.g. why it
    /// starts a new chain).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum RunStatus {
    Successful,
    Warning,
    Failed,
    Cancelled,
    Missed,
}

impl RunStatus {
    /// The name used in the API and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Successful => "successful",
            Self::Warning => "warning",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Missed => "missed",
        }
    }
}

/// The outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum StepStatus {
    Ok,
    Info,
    Warning,
    Error,
}

/// One line of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Step {
    /// Unix seconds.
    pub at: i64,
    pub status: StepStatus,
    pub title: String,
    pub detail: String,
}

/// Which sectors an image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum Coverage {
    /// Only the blocks the filesystem uses.
    UsedSector,
    /// Every sector.
    Forensic,
}

impl Coverage {
    /// The name used in the API and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UsedSector => "used-sector",
            Self::Forensic => "forensic",
        }
    }
}

/// An image a run wrote: what was imaged, where it went and how.
///
/// The fields after `verified` came with protocol 2; reports stored before have them empty
/// (hence their defaults: they are read from the server's store, not from an agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ImageWritten {
    /// File name relative to the target's folder.
    pub name: String,
    pub method: ImageKind,
    pub base: Option<String>,
    pub image_id: String,
    pub bytes: u64,
    pub parts: u64,
    /// Validated after writing: true (sound), false (damaged), none (not checked).
    pub verified: Option<bool>,
    /// The device, partition or file imaged.
    #[serde(default)]
    pub source: String,
    /// `partition`, `disk` or `file`.
    #[serde(default)]
    pub source_kind: String,
    /// Its filesystem (of each partition, for a disk); none when not recognised.
    #[serde(default)]
    pub filesystem: Option<String>,
    /// The target's folder, as a URL without credentials (or a path).
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub coverage: Option<Coverage>,
    /// How a consistent state was obtained (`unmounted`, `frozen: …`, `locked: …`, `live: …`).
    #[serde(default)]
    pub consistency: String,
    /// What the imaging warned about (a forensic fallback, a live source…).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Size of the source in bytes: what a restore needs at least (0 in reports stored
    /// before it was kept).
    #[serde(default)]
    pub source_size: u64,
    /// Files of the source with their checksums, taken while it was held (for restore
    /// drills; empty when not asked for or not possible).
    #[serde(default)]
    pub sample: Vec<SampleFile>,
    /// How an incremental or differential found its changed blocks (a change source, or
    /// a full hash pass and why); none for a full image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<String>,
}

/// How a stored image was found when validated again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum ImageHealth {
    Sound,
    /// Damaged, truncated or with a part missing: not to be built on or trusted.
    Damaged,
    /// It could not be read this time (target unreachable, password refused…): nothing is
    /// known about its state.
    Unchecked,
}

/// One image of a verify run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ImageCheck {
    pub name: String,
    pub health: ImageHealth,
    pub detail: String,
}

/// A file of the source as it was imaged, for restore drills to compare against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct SampleFile {
    /// Its path inside the volume (`/home/ann/a.txt`).
    pub path: String,
    pub size: u64,
    /// BLAKE3 of its contents, hex.
    pub blake3: String,
}

/// What a run did, from the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: i64,
    pub job_id: Option<i64>,
    pub name: String,
    /// The agent's host name (empty in reports stored before protocol 2).
    #[serde(default)]
    pub host: String,
    pub status: RunStatus,
    /// Unix seconds.
    pub started_at: i64,
    pub ended_at: i64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub images: Vec<ImageWritten>,
    /// Images the run deleted (retention).
    #[serde(default)]
    pub deleted: Vec<String>,
    /// Stored images a verify run validated again.
    #[serde(default)]
    pub checked: Vec<ImageCheck>,
    /// What a restore drill found.
    #[serde(default)]
    pub drill: Option<DrillResult>,
    pub steps: Vec<Step>,
}
