//! A sample of the source's files, with their checksums, taken while the source is held
//! for imaging: what a restore drill later compares the restored volume against, so a
//! drill checks the whole path from the source to the restored disk, not the image
//! against itself.
//!
//! The files are read from the held state: a snapshot mounted read-only in a private
//! folder, the mounted filesystem itself (frozen, locked or live; opened with `O_NOATIME`,
//! so reading writes nothing), or an unmounted source mounted read-only privately. At most
//! [`FILES`] regular files of at most [`FILE_MAX`] bytes and [`TOTAL_MAX`] in all, spread
//! over the whole tree in name order, are read.

use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use holdfast_proto::job::SampleFile;

/// Files in a sample at most.
pub const FILES: usize = 16;
/// Largest file sampled.
const FILE_MAX: u64 = 4 << 20;
/// Bytes read for a sample at most.
const TOTAL_MAX: u64 = 16 << 20;
/// Files looked at while walking, at most (a huge tree is sampled from its first part).
const WALK_MAX: usize = 100_000;

/// Where the held state's files are.
pub enum View<'a> {
    /// A device (snapshot or unmounted source) holding filesystem `fs_type`.
    Device(&'a Path, &'a str),
    /// A mounted filesystem.
    Mounted(&'a Path),
}

/// The read-only mount options of `fs_type` that write nothing (no journal replay).
pub fn options(fs_type: &str) -> Option<(&'static str, &'static str)> {
    Some(match fs_type {
        "ext2" | "ext3" | "ext4" => ("ext4", "ro,noload"),
        "xfs" => ("xfs", "ro,norecovery,nouuid"),
        "btrfs" => ("btrfs", "ro,rescue=nologreplay"),
        "fat12" | "fat16" | "fat32" => ("vfat", "ro"),
        _ => return None,
    })
}

/// A device mounted read-only in a private folder, unmounted on drop.
struct Private(PathBuf);

impl Drop for Private {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Take a sample of `view`.
pub fn take(view: View<'_>) -> Result<Vec<SampleFile>> {
    let (root, _private) = match view {
        View::Mounted(dir) => (dir.to_owned(), None),
        View::Device(dev, fs_type) => {
            let Some((kind, opts)) = options(fs_type) else {
                bail!("a {fs_type} filesystem is not sampled");
            };
            let dir = crate::drive::state_dir()?.join(format!("{}.sample", std::process::id()));
            let _ = std::fs::remove_dir(&dir);
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("cannot create '{}'", dir.display()))?;
            let private = Private(dir.clone());
            let out = Command::new("mount")
                .args(["-t", kind, "-o", opts])
                .arg(dev)
                .arg(&dir)
                .output()
                .context("cannot run mount")?;
            if !out.status.success() {
                bail!(
                    "cannot mount {} read-only: {}",
                    dev.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            (dir, Some(private))
        }
    };
    let mut files = Vec::new();
    walk(&root, &root, &mut files, FILE_MAX)?;
    files.sort();
    let step = (files.len() / FILES).max(1);
    let mut out = Vec::new();
    let mut total = 0;
    for (rel, len) in files.iter().step_by(step) {
        if out.len() >= FILES {
            break;
        }
        if total + len > TOTAL_MAX {
            continue;
        }
        total += len;
        let path = root.join(rel);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc_noatime())
            .open(&path)
            .with_context(|| format!("cannot read '{}'", path.display()))?;
        let mut hasher = blake3::Hasher::new();
        let size = std::io::copy(&mut f, &mut hasher)
            .with_context(|| format!("cannot read '{}'", path.display()))?;
        out.push(SampleFile {
            path: format!("/{}", rel.display()),
            size,
            blake3: hasher.finalize().to_hex().to_string(),
        });
    }
    Ok(out)
}

/// `O_NOATIME`: reading a file of a frozen filesystem must not try to write its access time.
fn libc_noatime() -> i32 {
    nix::fcntl::OFlag::O_NOATIME.bits()
}

/// Regular files under `dir` of at most `max` bytes (and their sizes), relative to `root`,
/// not following links or crossing into other filesystems.
pub fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, u64)>, max: u64) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let dev = std::fs::symlink_metadata(root)?.dev();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list '{}'", dir.display()))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if out.len() >= WALK_MAX {
            break;
        }
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        if m.dev() != dev || e.file_name() == "lost+found" {
            continue;
        }
        if m.is_dir() {
            walk(root, &e.path(), out, max)?;
        } else if m.is_file() && m.len() <= max {
            if let Ok(rel) = e.path().strip_prefix(root) {
                out.push((rel.to_owned(), m.len()));
            }
        }
    }
    Ok(())
}
