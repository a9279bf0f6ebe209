//! Command-line definitions. Command and flag names are an interface: scripts and other
//! components rely on them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use holdfast_proto::job::{ConsistencyMethod, DEFAULT_MAX_FREEZE_SECS, DEFAULT_SNAPSHOT_PERCENT};

use crate::image_cmd;

const EXIT_CODES: &str = "Exit codes: 0 success, 1 failure, 2 usage, 3 image damaged/truncated/part missing/chain broken, \
4 password missing or wrong, 5 refused to protect data (mounted, too small, exists, other source), 6 cancelled.
Passwords: --password-file FILE or HOLDFAST_PASSWORD (convert: --new-password-file or HOLDFAST_NEW_PASSWORD).";

/// Holdfast agent: disk images from the command line, and the daemon the server steers.
#[derive(Debug, Parser)]
#[command(name = "holdfast-agent", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Create, inspect, validate, restore, merge and convert images.
    #[command(subcommand, after_help = EXIT_CODES)]
    Image(ImageCommand),
    /// Copy a disk or volume onto another device (equal or larger) in one step, without an
    /// image: used-sector or forensic, held consistent as `image create` holds a source.
    Clone(CloneArgs),
    /// Run O&O DiskImage command files (XML): create, incremental, restore, validate,
    /// convert, mount and dismount images, clone devices.
    #[command(subcommand)]
    Script(ScriptCommand),
    /// Register this machine with a server (one-time token from the console or API).
    Enroll(EnrollArgs),
    /// Run the agent: keep the channel to the server open and do what it asks.
    Run(RunArgs),
    /// Check storage targets.
    #[command(subcommand)]
    Target(TargetCommand),
    /// Show what this machine has: disks (and what loop, LVM and LUKS devices are made of),
    /// volumes, and how each can be imaged consistently now; what the server is sent.
    Inventory(InventoryArgs),
    /// The records of block writes kept between images for change-tracked incrementals
    /// (`image create --write-log`; the daemon keeps them in its state folder).
    #[command(subcommand)]
    WriteLog(WriteLogCommand),
    /// Thaw a filesystem frozen by `image create` if that process ends without thawing it or
    /// runs past the maximum freeze time (started by it; not for people).
    #[command(hide = true)]
    ThawWatchdog(ThawWatchdogArgs),
    /// Snapshot several volumes at one instant and hold them until told (started by the
    /// daemon for a job with several sources; not for people).
    #[command(hide = true)]
    HoldTogether(HoldTogetherArgs),
}

/// The write-log subcommands.
#[derive(Debug, Subcommand)]
pub enum WriteLogCommand {
    /// Read what the kernel traced into the records now (the daemon does it every few
    /// seconds; without it, run this often enough that no trace buffer fills).
    Update(WriteLogArgs),
    /// Show each device recorded: since when and why, the cuts kept, what was written
    /// since the last cut.
    Show(WriteLogArgs),
    /// Stop recording: remove every trace and record kept in the folder.
    Stop(WriteLogArgs),
}

/// `write-log` subcommands.
#[derive(Debug, Args)]
pub struct WriteLogArgs {
    /// The folder given to `image create --write-log`.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// The target subcommands.
#[derive(Debug, Subcommand)]
pub enum TargetCommand {
    /// Write a test file to a folder, read it back, delete it, and tell the free space.
    Test(TargetTestArgs),
    /// Show the host key an SFTP server offers (from the handshake alone: nothing is sent
    /// that logs in), to compare with the server's own before trusting it.
    HostKey(TargetTestArgs),
}

/// `target test`.
#[derive(Debug, Args)]
pub struct TargetTestArgs {
    /// The folder: a path or a URL such as sftp://user@host:port/dir.
    #[arg(long)]
    pub url: String,
    #[command(flatten)]
    pub common: Common,
}

/// `inventory`.
#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// Print the inventory as JSON (as the server receives it).
    #[arg(long)]
    pub json: bool,
}

/// `enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The server, `https://host:port`.
    #[arg(long)]
    pub server: String,
    /// Another instance of the server (on the same database), tried when the one before
    /// cannot be reached; repeat for more.
    #[arg(long = "also-server", value_name = "URL")]
    pub also_servers: Vec<String>,
    /// The enrolment token.
    #[arg(long, env = "HOLDFAST_ENROLL_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The server certificate's fingerprint, `SHA256:…` (printed by the server, shown in
    /// the console with the token).
    #[arg(long)]
    pub fingerprint: String,
    /// Configuration file to write [default: /etc/holdfast/agent.json or HOLDFAST_AGENT_CONFIG].
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file written by `enroll` [default: /etc/holdfast/agent.json or HOLDFAST_AGENT_CONFIG].
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The image subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Image a device, partition or file holding one.
    Create(Box<CreateArgs>),
    /// Show what an image holds (no password needed).
    Info(InfoArgs),
    /// Check an image: structure and ciphertext without the password, every block with it.
    Validate(ValidateArgs),
    /// Restore an image (any point of a chain) to a device or file.
    Restore(RestoreArgs),
    /// Write what is intact of a damaged full image (both copies of its index lost, or cut
    /// off before its end) into a new file, and name the block ranges it could not recover.
    Salvage(SalvageArgs),
    /// Merge an incremental chain into a new full image.
    Merge(MergeArgs),
    /// Re-encode an image (compression, encryption, password, split) or write it raw.
    Convert(ConvertArgs),
    /// Delete an image: every part of it (the highest first, so an interrupted delete can be
    /// run again).
    Delete(DeleteArgs),
    /// Show an image (any point of a chain, on any target) read-only as a drive: its
    /// filesystem mounted at a folder, until Ctrl-C or `image dismount`.
    Mount(MountArgs),
    /// Release what `image mount` set up at a folder (also after its process was killed).
    Dismount(DismountArgs),
    /// List a folder (or one file) inside an image, without restoring it.
    Ls(LsArgs),
    /// Copy files or folders out of an image, keeping modes, owners, times and links.
    Extract(ExtractArgs),
    /// Write files or folders of an image as one archive (or one file) to a file or
    /// standard output.
    Export(ExportArgs),
}

/// Flags every command shares.
#[derive(Debug, Args, Clone)]
pub struct Common {
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print progress as JSON lines on stderr (`{"stage":…,"done":…,"total":…}`), for
    /// programs that run this command.
    #[arg(long)]
    pub progress_lines: bool,
    /// Worker threads (default: number of cores, plus one for imaging).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Credentials for target URLs: `key = value` lines (user, password, private_key,
    /// passphrase, known_hosts, host_key, ca_file); else HOLDFAST_TARGET_USER,
    /// HOLDFAST_TARGET_PASSWORD, HOLDFAST_TARGET_KEY, HOLDFAST_TARGET_KEY_PASSPHRASE,
    /// HOLDFAST_KNOWN_HOSTS, HOLDFAST_TARGET_HOST_KEY, HOLDFAST_TARGET_CA.
    #[arg(long)]
    pub credentials_file: Option<PathBuf>,
    /// Bandwidth limit for transfers to and from targets, with time windows (local time):
    /// e.g. `20M@mon-fri/08:00-18:00,unlimited` (bytes per second; the first matching rule
    /// applies). HOLDFAST_AGENT_BANDWIDTH adds a limit for the machine: the lower applies.
    #[arg(long, env = "HOLDFAST_TARGET_BANDWIDTH", value_parser = parse_bandwidth)]
    pub bandwidth: Option<holdfast_targets::bandwidth::Bandwidth>,
}

fn parse_bandwidth(s: &str) -> Result<holdfast_targets::bandwidth::Bandwidth, String> {
    s.parse()
}

/// The script subcommands.
#[derive(Debug, Subcommand)]
pub enum ScriptCommand {
    /// Run every command of the file in order (each as the agent command it becomes).
    Run(ScriptArgs),
    /// Read the file and show what each command would run, without running anything.
    Check(ScriptArgs),
}

/// `script run` / `script check`.
#[derive(Debug, Args)]
pub struct ScriptArgs {
    /// The command file.
    pub file: PathBuf,
}

/// `clone`.
#[derive(Debug, Args)]
pub struct CloneArgs {
    /// The disk, partition or volume to copy.
    #[arg(long)]
    pub source: PathBuf,
    /// The device to overwrite with it: a disk or partition at least as large (an existing
    /// file works too). Refused when it is mounted, in use, part of the source, or smaller.
    #[arg(long)]
    pub target: PathBuf,
    /// Copy every sector, not only those the filesystems use.
    #[arg(long)]
    pub forensic: bool,
    /// On a larger target, grow the last partition of a disk to fill it (or a volume's
    /// filesystem to fill the target), and its filesystem with it: ext2/3/4 (resize2fs), XFS
    /// (xfs_growfs) or btrfs (btrfs filesystem resize).
    #[arg(long)]
    pub grow: bool,
    /// Write zeros over everything the source does not use, so nothing of the target's old
    /// contents stays readable.
    #[arg(long)]
    pub zero_unused: bool,
    /// Go on past source sectors that cannot be read: they are written as zeros and listed,
    /// and the clone ends with a warning (else it stops at the first one).
    #[arg(long)]
    pub ignore_read_errors: bool,
    /// Do not ask before overwriting the target (else its path must be typed on a terminal).
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub hold: HoldArgs,
    #[command(flatten)]
    pub common: Common,
}

/// `image create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Device, partition or file to image.
    #[arg(long)]
    pub source: PathBuf,
    /// Image file to write: a path or a target URL such as sftp://user@host:port/dir/name.hfi
    /// (split parts get .002, .003, … appended).
    #[arg(long)]
    pub output: PathBuf,
    /// Image every sector, not only those the filesystem uses.
    #[arg(long)]
    pub forensic: bool,
    /// Keep the contents of pagefile.sys, hiberfil.sys and swapfile.sys on NTFS volumes (by
    /// default their clusters are stored as zeros: Windows makes them anew).
    #[arg(long)]
    pub keep_windows_system_files: bool,
    /// Also read a small sample of the source's files (as held) and print them with their
    /// checksums, for restore drills to compare a restored volume against.
    #[arg(long)]
    pub sample_files: bool,
    /// File whose first line is the passphrase of the LUKS volume being imaged (else
    /// HOLDFAST_LUKS_PASSPHRASE): its contents are then stored decrypted, by the used blocks
    /// of the filesystem inside, in an encrypted image.
    #[arg(long, conflicts_with = "luks_key_file")]
    pub luks_passphrase_file: Option<PathBuf>,
    /// Key file of the LUKS volume being imaged (used as it is, as cryptsetup --key-file).
    #[arg(long)]
    pub luks_key_file: Option<PathBuf>,
    /// Store only blocks changed since --base (the newest image of the chain).
    #[arg(long, requires = "base", conflicts_with = "differential")]
    pub incremental: bool,
    /// Store blocks changed since the full image of --base's chain.
    #[arg(long, requires = "base")]
    pub differential: bool,
    /// Base image for --incremental / --differential.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Hash every used block of an incremental instead of reading only what the filesystem
    /// says changed since --base (ext2/3/4 and XFS: files whose inode change time is newer;
    /// btrfs: extents newer than the base's generation).
    #[arg(long)]
    pub no_change_tracking: bool,
    /// Every Nth incremental of a chain hashes every used block, as a safeguard (0: only when
    /// the base's state cannot be trusted).
    #[arg(long, default_value_t = holdfast_image::changes::DEFAULT_FULL_HASH_EVERY)]
    pub full_hash_every: u32,
    /// Files changed up to this many seconds before the base's snapshot are read again
    /// (covers clock ticks and adjustments between the agent and the kernel).
    #[arg(long, default_value_t = holdfast_image::changes::DEFAULT_MARGIN_SECS, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub change_margin: u32,
    /// Remove the LVM thin snapshot after imaging instead of keeping it for the next
    /// incremental to compare block mappings with (it is kept only while its pool is less
    /// than 70 % full).
    #[arg(long = "no-keep-snapshot", action = clap::ArgAction::SetFalse)]
    pub keep_snapshot: bool,
    /// Keep a record of the source's block writes in this folder (the daemon gives its own):
    /// the image is cut into it, and the next incremental reads only what was written
    /// after that cut, block by block, when the record has no gap. Block devices only.
    #[arg(long, value_name = "DIR")]
    pub write_log: Option<PathBuf>,
    /// zstd level, 0 (store) to 22.
    #[arg(long, default_value_t = 3)]
    pub compression_level: i32,
    /// Encrypt with aes128, aes192 or aes256 (default for incrementals: as the base).
    #[arg(long, value_parser = parse_cipher)]
    pub encrypt: Option<holdfast_image::crypto::Cipher>,
    /// File whose first line is the password (else HOLDFAST_PASSWORD).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Split into parts of at most SIZE (bytes, or with K/M/G/T; at least 5M).
    #[arg(long, value_parser = parse_size)]
    pub split: Option<u64>,
    /// Block size, the unit of change detection (default: 32K up to 256 GiB sources).
    #[arg(long, value_parser = parse_size)]
    pub block_size: Option<u64>,
    /// Free-text comment stored in the image.
    #[arg(long)]
    pub comment: Option<String>,
    /// Validate the image after writing it.
    #[arg(long)]
    pub verify: bool,
    /// Replace an existing image of the same name.
    #[arg(long)]
    pub overwrite: bool,
    /// Create the output's folder, and any missing folder above it, on the target.
    #[arg(long)]
    pub create_folders: bool,
    /// Lock every part of the image against deletion and replacement for this long (e.g.
    /// `45days`, `36h`): S3 buckets with Object Lock only (other targets refuse). The base an
    /// incremental needs must stay as long: lock each image for the chain's retention plus the
    /// time a chain keeps growing.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub lock_for: Option<std::time::Duration>,
    /// Object Lock mode: governance (lifted only by users allowed to bypass it) or
    /// compliance (lifted by nobody until it ends).
    #[arg(long, default_value = "governance", requires = "lock_for")]
    pub lock_mode: holdfast_targets::s3config::LockMode,
    #[command(flatten)]
    pub hold: HoldArgs,
    #[command(flatten)]
    pub held: HeldArgs,
    #[command(flatten)]
    pub common: Common,
}

/// How a source in use is held while it is read (`image create`, `clone`).
#[derive(Debug, Args)]
pub struct HoldArgs {
    /// How a source mounted read-write is made consistent: auto (not mounted: as it is; an
    /// LVM volume: a snapshot; another device-mapper device: a snapshot by table swap, with
    /// copy-on-write space in HOLDFAST_SNAPSHOT_STORE; else frozen while imaging when the
    /// estimate fits --max-freeze; otherwise refused), unmounted, lvm-snapshot, dm-snapshot,
    /// freeze, lock (remount read-only while imaging) or live (copy it as it changes; not
    /// crash-consistent, recorded as such).
    #[arg(long, default_value = "auto", value_parser = parse_consistency)]
    pub consistency: ConsistencyMethod,
    /// The longest a filesystem may stay frozen, in seconds; imaging stops at that time.
    #[arg(long, default_value_t = DEFAULT_MAX_FREEZE_SECS, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub max_freeze: u32,
    #[command(flatten)]
    pub commands: SnapshotCommandArgs,
    /// A classic LVM or a device-mapper snapshot's copy-on-write space, in percent of the
    /// volume's size (refused when the volume group or the snapshot store has not that much
    /// free).
    #[arg(long, default_value_t = DEFAULT_SNAPSHOT_PERCENT, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub snapshot_size: u32,
    /// The same as --consistency lock.
    #[arg(long, conflicts_with_all = ["allow_live", "consistency"])]
    pub lock: bool,
    /// The same as --consistency live.
    #[arg(long, conflicts_with = "consistency")]
    pub allow_live: bool,
}

impl HoldArgs {
    /// The consistency method asked for, shorthands included.
    pub fn consistency_method(&self) -> ConsistencyMethod {
        if self.lock {
            ConsistencyMethod::Lock
        } else if self.allow_live {
            ConsistencyMethod::Live
        } else {
            self.consistency
        }
    }
}

/// The commands run around the instant a source is held.
#[derive(Debug, Args)]
pub struct SnapshotCommandArgs {
    /// A command (`/bin/sh -c`) run just before the source is held (frozen, locked or
    /// snapshotted), e.g. to flush a database and hold its writes; when it fails, nothing is
    /// imaged.
    #[arg(long)]
    pub before_snapshot: Option<String>,
    /// A command run once the hold is no longer needed (the image is of one instant), e.g. to
    /// let the database go on; when it fails, the image is kept with a warning.
    #[arg(long)]
    pub after_snapshot: Option<String>,
    /// The time limit of each of those commands, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub snapshot_command_timeout: u32,
}

/// A source another process holds already (`hold-together`), for `image create`: set by the
/// daemon, not for people.
#[derive(Debug, Args)]
pub struct HeldArgs {
    /// Read this snapshot of the source (one of ours) instead of holding the source.
    #[arg(long, hide = true, requires_all = ["held_at", "held_description"])]
    pub held_snapshot: Option<PathBuf>,
    /// When the snapshot was taken (seconds since the epoch).
    #[arg(long, hide = true)]
    pub held_at: Option<i64>,
    /// How it is held, for the image's metadata.
    #[arg(long, hide = true)]
    pub held_description: Option<String>,
}

/// `hold-together` (started by the daemon for a run that images several sources).
#[derive(Debug, Args)]
pub struct HoldTogetherArgs {
    /// A source of the run (in the order they are imaged).
    #[arg(long, required = true)]
    pub source: Vec<PathBuf>,
    /// Each snapshot's copy-on-write space, in percent of its volume's size.
    #[arg(long, default_value_t = DEFAULT_SNAPSHOT_PERCENT, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub snapshot_size: u32,
    #[command(flatten)]
    pub commands: SnapshotCommandArgs,
}

/// `thaw-watchdog` (started by `image create` before it freezes a filesystem).
#[derive(Debug, Args)]
pub struct ThawWatchdogArgs {
    /// The frozen filesystem's mount point.
    #[arg(long)]
    pub mountpoint: PathBuf,
    /// Thaw it after this many seconds whatever happens.
    #[arg(long)]
    pub max_secs: u64,
}

/// `image info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The image (its first part).
    #[arg(long)]
    pub image: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

/// `image delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The image (its first part).
    #[arg(long)]
    pub image: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

/// `image mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// The image: any point of a chain; its ancestors are found in the same folder.
    #[arg(long)]
    pub image: PathBuf,
    /// The folder to mount it at (it must exist).
    #[arg(long)]
    pub mountpoint: PathBuf,
    /// Password file (else HOLDFAST_PASSWORD).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// For a disk image: the partition whose filesystem to mount.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Show the image's volume (or disk and partitions) as files at the mount point instead
    /// of mounting a filesystem.
    #[arg(long, conflicts_with = "partition")]
    pub raw: bool,
    #[command(flatten)]
    pub common: Common,
}

/// An image point to read files from.
#[derive(Debug, Args)]
pub struct PointArgs {
    /// The image: any point of a chain; its ancestors are found in the same folder.
    #[arg(long)]
    pub image: PathBuf,
    /// Password file (else HOLDFAST_PASSWORD).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// For a disk image: the partition to read.
    #[arg(long)]
    pub partition: Option<u32>,
}

/// `image ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub point: PointArgs,
    /// The folder or file inside the image (default: its root).
    pub path: Option<String>,
    /// Also count the files, folders and bytes the path holds all the way down.
    #[arg(long)]
    pub total: bool,
    #[command(flatten)]
    pub common: Common,
}

/// `image extract`.
#[derive(Debug, Args)]
pub struct ExtractArgs {
    #[command(flatten)]
    pub point: PointArgs,
    /// Files or folders inside the image, each copied into --to under its own name.
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// The folder to copy them into (created if missing).
    #[arg(long)]
    pub to: PathBuf,
    /// Replace files that exist there already (otherwise they are refused).
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub common: Common,
}

/// `image export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub point: PointArgs,
    /// Files or folders inside the image, each stored under its own name.
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// `tar.gz` (keeps modes, owners, times and links), `zip`, or `file` (one regular
    /// file, as it is).
    #[arg(long, default_value = "tar.gz")]
    pub format: holdfast_proto::ExportFormat,
    /// Where to write it: a file, or `-` for standard output.
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

/// `image dismount`.
#[derive(Debug, Args)]
pub struct DismountArgs {
    /// The folder an image is mounted at.
    #[arg(long)]
    pub mountpoint: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

/// `image validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The image.
    #[arg(long)]
    pub image: PathBuf,
    /// Password file (else HOLDFAST_PASSWORD); without it an encrypted image gets a structure check.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Also validate every image the given one depends on, and the links between them.
    #[arg(long)]
    pub chain: bool,
    #[command(flatten)]
    pub common: Common,
}

/// `image restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The image: any point of a chain; its ancestors are found in the same folder.
    #[arg(long)]
    pub image: PathBuf,
    /// Device or file to write (a file is created or extended to the source size).
    #[arg(long)]
    pub target: PathBuf,
    /// Password file (else HOLDFAST_PASSWORD).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// For an image of a LUKS volume's decrypted contents: file whose first line is the
    /// volume's passphrase (else HOLDFAST_LUKS_PASSPHRASE), to open it once its header is
    /// written back.
    #[arg(long, conflicts_with = "luks_key_file")]
    pub luks_passphrase_file: Option<PathBuf>,
    /// For an image of a LUKS volume's decrypted contents: the volume's key file.
    #[arg(long)]
    pub luks_key_file: Option<PathBuf>,
    /// For an image of a LUKS volume's decrypted contents: restore only the contents (the
    /// filesystem inside), unencrypted, without the LUKS header.
    #[arg(long, conflicts_with_all = ["luks_passphrase_file", "luks_key_file"])]
    pub decrypted: bool,
    /// For a disk image: restore only this partition (numbered as Linux numbers them) onto
    /// the target, e.g. a partition of another disk.
    #[arg(long, conflicts_with_all = ["luks_passphrase_file", "luks_key_file", "decrypted"])]
    pub partition: Option<u32>,
    /// Overwrite sectors the image does not hold with zeros.
    #[arg(long)]
    pub zero_unused: bool,
    /// Do not checksum every needed frame before writing over a device or an existing file (one
    /// read less; damage then stops midway). A new file is never checked first: it is written
    /// under a temporary name and only named when complete.
    #[arg(long)]
    pub skip_precheck: bool,
    #[command(flatten)]
    pub common: Common,
}

/// `image salvage`.
#[derive(Debug, Args)]
pub struct SalvageArgs {
    /// The damaged full image (its header must be intact).
    #[arg(long)]
    pub image: PathBuf,
    /// New file to write the source's blocks to (it must not exist): what could not be
    /// recovered reads as zeros, and the output names those block ranges.
    #[arg(long)]
    pub target: PathBuf,
    /// Password file (else HOLDFAST_PASSWORD).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

/// `image merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Newest image of the chain.
    #[arg(long)]
    pub image: PathBuf,
    /// The new full image.
    #[arg(long)]
    pub output: PathBuf,
    /// Password file (else HOLDFAST_PASSWORD).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// zstd level.
    #[arg(long, default_value_t = 3)]
    pub compression_level: i32,
    /// Split size.
    #[arg(long, value_parser = parse_size)]
    pub split: Option<u64>,
    /// Replace an existing output.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub common: Common,
}

/// `image convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The image.
    #[arg(long)]
    pub image: PathBuf,
    /// Output image or raw file.
    #[arg(long)]
    pub output: PathBuf,
    /// Password file for the image (else HOLDFAST_PASSWORD).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// zstd level (default: as the image).
    #[arg(long)]
    pub compression_level: Option<i32>,
    /// Encrypt the output with aes128, aes192 or aes256.
    #[arg(long, value_parser = parse_cipher, conflicts_with = "decrypt")]
    pub encrypt: Option<holdfast_image::crypto::Cipher>,
    /// Write the output unencrypted.
    #[arg(long)]
    pub decrypt: bool,
    /// Password file for the output (else HOLDFAST_NEW_PASSWORD, else the image's password).
    #[arg(long)]
    pub new_password_file: Option<PathBuf>,
    /// Split size of the output.
    #[arg(long, value_parser = parse_size)]
    pub split: Option<u64>,
    /// `holdfast` (re-encode this image), `raw` (the restored bytes of this point of the
    /// chain), or a sparse virtual disk of them: `vhdx` (Hyper-V), `qcow2` (KVM, Proxmox)
    /// or `vhd` (dynamic VHD: older Hyper-V, VirtualBox, Azure).
    #[arg(long, default_value = "holdfast", value_parser = ["holdfast", "raw", "vhdx", "qcow2", "vhd"])]
    pub format: String,
    /// For a disk image, with a raw or virtual-disk format: only this partition (numbered
    /// as Linux numbers them), as a disk of its own.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Replace an existing output.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub common: Common,
}

impl Cli {
    /// True when the command asked for JSON output.
    pub fn json(&self) -> bool {
        match &self.command {
            Command::Inventory(a) => a.json,
            _ => self.common().is_some_and(|c| c.json),
        }
    }

    /// The flags every image and target command shares.
    fn common(&self) -> Option<&Common> {
        let c = match &self.command {
            Command::Image(c) => c,
            Command::Clone(a) => return Some(&a.common),
            Command::Target(TargetCommand::Test(a) | TargetCommand::HostKey(a)) => {
                return Some(&a.common)
            }
            _ => return None,
        };
        Some(match c {
            ImageCommand::Create(a) => &a.common,
            ImageCommand::Info(a) => &a.common,
            ImageCommand::Validate(a) => &a.common,
            ImageCommand::Restore(a) => &a.common,
            ImageCommand::Salvage(a) => &a.common,
            ImageCommand::Merge(a) => &a.common,
            ImageCommand::Convert(a) => &a.common,
            ImageCommand::Delete(a) => &a.common,
            ImageCommand::Mount(a) => &a.common,
            ImageCommand::Dismount(a) => &a.common,
            ImageCommand::Ls(a) => &a.common,
            ImageCommand::Extract(a) => &a.common,
            ImageCommand::Export(a) => &a.common,
        })
    }

    /// Run the command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        crate::storage::set_bandwidth(self.common().and_then(|c| c.bandwidth.clone()))?;
        let c = match self.command {
            Command::Image(c) => c,
            Command::Clone(a) => return crate::clone::run(a),
            Command::Script(ScriptCommand::Run(a)) => return crate::script::run(a, false),
            Command::Script(ScriptCommand::Check(a)) => return crate::script::run(a, true),
            Command::Enroll(a) => return crate::link::cli_enroll(a),
            Command::Run(a) => return crate::link::cli_run(a),
            Command::Target(TargetCommand::Test(a)) => return target_test(a),
            Command::Target(TargetCommand::HostKey(a)) => return target_host_key(a),
            Command::ThawWatchdog(a) => return crate::freeze::watchdog(a),
            Command::HoldTogether(a) => return crate::hold_together::run(a),
            Command::Inventory(a) => return crate::inventory::print(a.json),
            Command::WriteLog(c) => return crate::write_log::cli(c),
        };
        match c {
            ImageCommand::Create(a) => image_cmd::create::run(*a),
            ImageCommand::Info(a) => image_cmd::info::run(a),
            ImageCommand::Validate(a) => image_cmd::validate::run(a),
            ImageCommand::Restore(a) => image_cmd::restore::run(a),
            ImageCommand::Salvage(a) => image_cmd::salvage::run(a),
            ImageCommand::Merge(a) => image_cmd::merge::run(a),
            ImageCommand::Convert(a) => image_cmd::convert::run(a),
            ImageCommand::Delete(a) => image_cmd::delete::run(a),
            ImageCommand::Mount(a) => image_cmd::mount::run(a),
            ImageCommand::Dismount(a) => image_cmd::mount::dismount(a),
            ImageCommand::Ls(a) => image_cmd::browse::ls(a),
            ImageCommand::Extract(a) => image_cmd::browse::extract(a),
            ImageCommand::Export(a) => image_cmd::export::export(a),
        }
    }
}

/// `target test`.
fn target_test(a: TargetTestArgs) -> anyhow::Result<ExitCode> {
    let p = crate::storage::probe(&a.url, a.common.credentials_file.as_deref())?;
    if a.common.json {
        crate::outcome::print(&p);
    } else {
        println!(
            "{}: wrote, read back and deleted a {} test file (write {} ms, read {} ms); free space {}",
            p.target,
            crate::output::bytes(p.bytes),
            p.write_ms,
            p.read_ms,
            p.free_bytes
                .map_or_else(|| "unknown".to_owned(), crate::output::bytes)
        );
        match &p.object_lock {
            Some(l) if l.enabled => println!(
                "Object Lock: enabled — images can be locked (--lock-for){}",
                match (&l.default_mode, l.default_days) {
                    (Some(m), Some(d)) => format!("; the bucket locks every new object {m} for {d} days"),
                    _ => String::new(),
                }
            ),
            Some(_) => println!(
                "Object Lock: not enabled on this bucket — images on it can be deleted by anyone with its keys"
            ),
            None => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `target host-key`.
fn target_host_key(a: TargetTestArgs) -> anyhow::Result<ExitCode> {
    let p = crate::storage::host_key(&a.url)?;
    if a.common.json {
        crate::outcome::print(&p);
    } else if let Some(k) = &p.host_key {
        println!("{}: host key {}", p.target, k.fingerprint);
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("'{s}': {e} (e.g. 45days, 36h)"))?;
    if d.is_zero() {
        return Err("a lock of no time locks nothing".into());
    }
    Ok(d)
}

impl CreateArgs {
    /// The Object Lock every part gets, when asked for.
    pub fn object_lock(&self) -> Option<holdfast_targets::s3config::ObjectLock> {
        self.lock_for
            .map(|period| holdfast_targets::s3config::ObjectLock {
                mode: self.lock_mode,
                period,
            })
    }
}

fn parse_consistency(s: &str) -> Result<ConsistencyMethod, String> {
    s.parse()
}

fn parse_cipher(s: &str) -> Result<holdfast_image::crypto::Cipher, String> {
    holdfast_image::crypto::Cipher::parse(s)
        .ok_or_else(|| format!("unknown cipher '{s}': use aes128, aes192 or aes256"))
}

/// Parse `123`, `64K`, `5M`, `2G`, `1T` (binary units; `KiB`/`MB` spellings accepted).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 4096, 64K, 5M, 2G)"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("'{s}' has an unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("5M"), Ok(5 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert!(parse_size("5X").is_err());
        assert!(parse_size("").is_err());
    }
}
