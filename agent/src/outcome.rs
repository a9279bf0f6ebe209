//! What the image and target commands print with `--json`: one type per document, written
//! by the command line and read back by the daemon, which runs those commands as child
//! processes for its jobs. A field missing from a document is an error when it is read,
//! never a default.
//!
//! `target test --json` prints [`holdfast_proto::request::TargetProbe`], which goes on to
//! the server unchanged.

use std::process::Output;

use anyhow::{anyhow, Result};
use holdfast_image::header::{Coverage, Kind};
use holdfast_image::meta::Metadata;
use holdfast_image::validate::ValidateReport;
use holdfast_image::writer::{BlockCounts, WriteSummary};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A command that failed (exit code other than 0), with `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Always false.
    pub ok: bool,
    /// What went wrong, for people.
    pub error: String,
    /// The process's exit code (see `crate::exit`).
    pub exit_code: u8,
}

/// `image create --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Created {
    /// False when the validation after writing found damage.
    pub ok: bool,
    pub image: String,
    pub image_id: String,
    pub kind: Kind,
    pub coverage: Coverage,
    pub encryption: String,
    pub source: String,
    /// `partition`, `disk` or `file`.
    pub source_kind: String,
    /// Its filesystem (for a disk, each partition's, in order); none when not recognised.
    pub filesystem: Option<String>,
    pub source_size: u64,
    pub block_size: u32,
    /// How a consistent state was obtained (`unmounted`, `frozen: …`, `locked: …`, `live: …`).
    pub consistency: String,
    pub warnings: Vec<String>,
    /// Bytes read from the source: the blocks hashed plus what finding changes took.
    pub read_bytes: u64,
    /// How the changed blocks were found, and what it cost.
    pub changes: ChangeSummary,
    pub data_bytes: u64,
    pub image_bytes: u64,
    pub parts: u32,
    pub frames: u64,
    pub blocks: BlockCounts,
    pub content_digest: String,
    pub seconds: f64,
    pub imaging_seconds: f64,
    pub read_rate_bytes_per_second: f64,
    /// The validation after writing, when asked for.
    pub validation: Option<ValidateReport>,
    /// The commands run before and after the source was held, in order.
    pub commands: Vec<CommandRun>,
    /// With `--sample-files`: files of the source as held, with checksums.
    pub sample: Vec<holdfast_proto::job::SampleFile>,
}

/// How an image found its changed blocks (`image create --json`, `changes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSummary {
    /// The change source used (e.g. `ext4 inode change times`) or `full hash pass`.
    pub pass: String,
    /// Why a full hash pass ran instead of a change-tracked one.
    pub reason: Option<String>,
    /// Bytes of the source read and hashed block by block.
    pub hashed_bytes: u64,
    /// Bytes read to find the changes (inode tables, extent trees).
    pub scanned_bytes: u64,
    /// Bytes of used blocks taken from the base image without reading them.
    pub skipped_bytes: u64,
}

impl ChangeSummary {
    /// One line for a report: how the changes were found, or why every block was hashed.
    pub fn describe(&self) -> String {
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        match &self.reason {
            Some(why) => format!(
                "{}: {why}; {:.1} MiB read and hashed",
                self.pass,
                mib(self.hashed_bytes)
            ),
            None => format!(
                "{}: {:.1} MiB read and hashed, {:.1} MiB read to find the changes, {:.1} MiB unchanged and not read",
                self.pass,
                mib(self.hashed_bytes),
                mib(self.scanned_bytes),
                mib(self.skipped_bytes)
            ),
        }
    }
}

/// A command run around the instant an image is taken of (see `crate::snapshot_commands`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRun {
    /// `before the snapshot` or `after the snapshot`.
    pub stage: String,
    pub command: String,
    /// Its exit status; none when it was stopped or could not run.
    pub exit_code: Option<i32>,
    /// The end of what it printed (stdout and stderr).
    pub output: String,
    /// Why it has no exit status.
    pub note: Option<String>,
    pub seconds: f64,
}

/// `image info --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub ok: bool,
    pub image: String,
    pub format_version: u16,
    pub image_id: String,
    pub chain_id: String,
    pub parent_id: Option<String>,
    pub kind: Kind,
    pub coverage: Coverage,
    pub encryption: String,
    pub compression_level: i8,
    pub block_size: u32,
    pub source_size: u64,
    pub split_size: u64,
    pub parts: u32,
    pub image_bytes: u64,
    pub data_bytes: u64,
    pub stored_bytes: u64,
    pub frames: u64,
    pub blocks: BlockCounts,
    pub content_digest: String,
    /// RFC 3339, seconds.
    pub created: String,
    pub metadata: Metadata,
}

/// `image validate --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Validated {
    /// True when nothing is damaged.
    pub ok: bool,
    /// The image named (the newest of the chain with `--chain`).
    pub report: ValidateReport,
    /// With `--chain`: every image of the chain, oldest first.
    pub chain: Option<Vec<ValidateReport>>,
}

/// `image mount --json`, once mounted.
#[derive(Debug, Serialize)]
pub struct Mounted {
    pub ok: bool,
    pub image: String,
    pub mountpoint: String,
    /// The files the image is served as (in the FUSE folder, or at the mount point with
    /// `--raw`).
    pub files: Vec<String>,
    /// The filesystem mounted, unless `--raw`.
    pub filesystem: Option<String>,
    pub loop_device: Option<String>,
    /// The serving process: it runs until dismounted.
    pub pid: u32,
}

/// `image restore --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restored {
    pub ok: bool,
    pub image: String,
    pub target: String,
    /// The images read, oldest first.
    pub chain: Vec<String>,
    pub source_size: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    pub frames: u64,
    pub seconds: f64,
    /// A GPT restored onto a larger disk has its backup copy moved to the new end.
    pub gpt_backup_moved_to_end: bool,
    /// What the restore read around: e.g. a damaged copy of an image's index whose other
    /// copy stood in. The data restored is whole, but the image needs replacing.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// `image salvage --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Salvaged {
    /// True when every frame the image held was found intact.
    pub ok: bool,
    /// The file written.
    pub target: String,
    pub report: holdfast_image::salvage::SalvageReport,
    pub seconds: f64,
}

/// `image merge --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Merged {
    pub ok: bool,
    /// The new full image.
    pub image: String,
    /// The images merged, oldest first.
    pub merged: Vec<String>,
    pub summary: WriteSummary,
    pub seconds: f64,
}

/// What `image convert` wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum ConvertedTo {
    /// A raw copy of the source: `bytes` long.
    Raw { bytes: u64 },
    /// A qcow2 virtual disk.
    Qcow2(VirtualDisk),
    /// A dynamic VHD virtual disk.
    Vhd(VirtualDisk),
    /// A dynamic VHDX virtual disk.
    Vhdx(VirtualDisk),
    /// A new Holdfast image (other compression, encryption, password or split size).
    Holdfast {
        encryption: String,
        summary: WriteSummary,
    },
}

/// A virtual disk `image convert` wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VirtualDisk {
    /// The disk's size (VHD: rounded up to its geometry).
    pub disk_bytes: u64,
    /// The file's size.
    pub file_bytes: u64,
    /// Disk bytes stored as data; the rest is unused and not stored.
    pub data_bytes: u64,
}

/// `image convert --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Converted {
    pub ok: bool,
    pub output: String,
    #[serde(flatten)]
    pub to: ConvertedTo,
    pub seconds: f64,
}

/// `image delete --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub ok: bool,
    pub image: String,
    pub parts: u32,
}

/// Print `doc` on stdout as the command's JSON answer.
pub fn print<T: Serialize>(doc: &T) {
    match serde_json::to_string_pretty(doc) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("holdfast-agent: error: cannot print the JSON answer: {e}"),
    }
}

/// Print `doc` as one line of JSON (for a parent that reads line by line).
pub fn print_line<T: Serialize>(doc: &T) {
    match serde_json::to_string(doc) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("holdfast-agent: error: cannot print the JSON answer: {e}"),
    }
}

/// The answer of a child `holdfast-agent … --json` that has ended: its document on success,
/// its error otherwise (the [`Failure`] it printed; failing that, its last line on stderr).
pub fn read<T: DeserializeOwned>(what: &str, out: &Output) -> Result<T> {
    if out.status.success() {
        return serde_json::from_slice(&out.stdout)
            .map_err(|e| anyhow!("{what} printed an answer that cannot be read: {e}"));
    }
    Err(anyhow!("{}", failure(what, out)))
}

/// Why a child `holdfast-agent … --json` failed.
pub fn failure(what: &str, out: &Output) -> String {
    if let Ok(f) = serde_json::from_slice::<Failure>(&out.stdout) {
        return f.error;
    }
    // It printed no answer (it crashed, or was killed): what it said last.
    let stderr = String::from_utf8_lossy(&out.stderr);
    match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(line) => line.trim().to_owned(),
        None => format!("{what} ended with {}", out.status),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::{ExitStatus, Output};

    use super::*;

    fn output(code: i32, stdout: &str, stderr: &str) -> Output {
        Output {
            status: ExitStatus::from_raw(code << 8),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_child_is_read_by_type_and_its_failure_explained() {
        let ok = output(0, r#"{"ok":true,"image":"a.hfi","parts":2}"#, "");
        let d: Deleted = read("image delete", &ok).expect("typed");
        assert_eq!(d.parts, 2);
        // A field missing is an error, not a default.
        let missing = output(0, r#"{"ok":true,"image":"a.hfi"}"#, "");
        let e = read::<Deleted>("image delete", &missing).expect_err("missing field");
        assert!(e.to_string().contains("parts"), "{e}");
        // A failure says what the child said: its JSON error, else its last line.
        let failed = output(
            3,
            r#"{"ok":false,"error":"the image is damaged","exit_code":3}"#,
            "",
        );
        let e = read::<Deleted>("image delete", &failed).expect_err("failed");
        assert_eq!(e.to_string(), "the image is damaged");
        let died = output(1, "", "progress\nthread panicked: out of memory\n\n");
        assert_eq!(failure("x", &died), "thread panicked: out of memory");
        assert!(failure("image create", &output(9, "", "")).starts_with("image create ended with"));
    }
}
