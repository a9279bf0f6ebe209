//! Growing what was copied onto a larger device: a disk's last partition (`sfdisk`) and the
//! filesystem in it, or a volume's filesystem, each by the filesystem's own tool — ext2/3/4
//! with `resize2fs` (after `e2fsck -f`), XFS with `xfs_growfs` and btrfs with `btrfs
//! filesystem resize`, both while mounted at a private folder. Everything is checked before
//! anything is written ([`plan`]); [`apply`] runs once the copy is complete.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use holdfast_image::disk::read_partition_table;
use holdfast_image::io::FileReadAt;
use holdfast_image::meta::SourceMeta;
use serde::Serialize;

use crate::exit::Refused;
use crate::output::bytes;

/// What is grown, and (once applied) to what size.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Growth {
    /// The partition grown, on a disk; none for a volume.
    pub partition: Option<u32>,
    /// Its filesystem.
    pub filesystem: String,
    /// Where the partition (or volume) starts on the target.
    pub start: u64,
    /// Its length before.
    pub old_len: u64,
    /// Its length after.
    pub new_len: u64,
}

impl Growth {
    /// For the output: `partition 2 (ext4): 1.0 GiB → 2.0 GiB`.
    pub fn description(&self) -> String {
        let what = match self.partition {
            Some(n) => format!("partition {n} and its {} filesystem", self.filesystem),
            None => format!("the {} filesystem", self.filesystem),
        };
        format!("{what}: {} → {}", bytes(self.old_len), bytes(self.new_len))
    }
}

/// The tools a filesystem is grown with; `None` when we cannot grow it.
fn tools(fs_type: &str) -> Option<&'static [&'static str]> {
    match fs_type {
        "ext2" | "ext3" | "ext4" => Some(&["e2fsck", "resize2fs"]),
        "xfs" => Some(&["xfs_growfs"]),
        "btrfs" => Some(&["btrfs"]),
        _ => None,
    }
}

/// Check, before anything is written, that the source's last partition (a disk) or its
/// filesystem (a volume) can be grown (the target is known to be at least as large).
pub fn plan(source: &SourceMeta) -> Result<Growth> {
    let (partition, fs, start, len, mut need) = match &source.partition_table {
        Some(table) => {
            let last = source
                .partitions
                .iter()
                .max_by_key(|p| p.start + p.len)
                .ok_or_else(|| Refused("--grow: the disk has no partition to grow".into()))?;
            if table.kind == "mbr" && last.number > 4 {
                return Err(Refused(format!(
                    "--grow: the last partition ({}) is a logical one inside an extended \
                     partition; grow both with a partition editor after the clone",
                    last.number
                ))
                .into());
            }
            (
                Some(last.number),
                last.filesystem.as_ref().map(|f| f.fs_type.clone()),
                last.start,
                last.len,
                vec!["sfdisk"],
            )
        }
        None => (
            None,
            source.filesystem.as_ref().map(|f| f.fs_type.clone()),
            0,
            source.size,
            Vec::new(),
        ),
    };
    let what = partition.map_or("the volume".to_owned(), |n| format!("partition {n}"));
    let fs = fs.ok_or_else(|| {
        Refused(format!(
            "--grow: {what} has no filesystem Holdfast knows, so it cannot be grown"
        ))
    })?;
    let Some(fs_tools) = tools(&fs) else {
        return Err(Refused(format!(
            "--grow: the {fs} filesystem of {what} cannot be grown by Holdfast (ext2/3/4, XFS \
             and btrfs can); leave out --grow"
        ))
        .into());
    };
    need.extend(fs_tools.iter().copied());
    need.push("losetup");
    if fs == "xfs" || fs == "btrfs" {
        need.extend(["mount", "umount"]);
    }
    for tool in need {
        if find_tool(tool).is_none() {
            bail!("--grow needs '{tool}', which is not installed");
        }
    }
    Ok(Growth {
        partition,
        filesystem: fs,
        start,
        old_len: len,
        new_len: len,
    })
}

/// `tool` on the usual paths.
fn find_tool(tool: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

/// Run `cmd`; its output in the error when it fails (`ok` says which exit codes succeed).
fn run(cmd: &mut Command, ok: &[i32], stdin: Option<&str>) -> Result<String> {
    let shown = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot run {shown}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("cannot write to {shown}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("cannot run {shown}"))?;
    let code = out.status.code().unwrap_or(-1);
    if !ok.contains(&code) {
        bail!(
            "{shown} failed (exit {code}): {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A loop device over a byte range of a file or device, detached when dropped.
struct Loop(PathBuf);

impl Loop {
    fn attach(target: &Path, offset: u64, len: u64) -> Result<Self> {
        let out = run(
            Command::new("losetup")
                .args(["--find", "--show", "--offset"])
                .arg(offset.to_string())
                .arg("--sizelimit")
                .arg(len.to_string())
                .arg(target),
            &[0],
            None,
        )?;
        Ok(Self(PathBuf::from(out.trim())))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).output();
    }
}

/// A filesystem mounted at a private folder, unmounted (and the folder removed) when dropped.
struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    fn at_temp(dev: &Path, fs: &str) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("holdfast-grow-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot make '{}' to mount the clone at", dir.display()))?;
        let mut cmd = Command::new("mount");
        cmd.args(["-t", fs]);
        if fs == "xfs" {
            // The source, with the same UUID, may be mounted.
            cmd.args(["-o", "nouuid"]);
        }
        if let Err(e) = run(cmd.arg(dev).arg(&dir), &[0], None) {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        Ok(Self { dir })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if Command::new("umount")
            .arg(&self.dir)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Grow what `g` names on `target`, whose contents are complete.
pub fn apply(target: &Path, mut g: Growth, sector_size: u32) -> Result<Growth> {
    let size = crate::device::Device::inspect(target)?.size;
    g.new_len = match g.partition {
        Some(n) => {
            run(
                Command::new("sfdisk")
                    .args(["--no-reread", "--no-tell-kernel", "--quiet", "-N"])
                    .arg(n.to_string())
                    .arg(target),
                &[0],
                Some(", +\n"),
            )
            .with_context(|| format!("cannot grow partition {n}"))?;
            let file = std::fs::File::open(target)
                .with_context(|| format!("cannot read back '{}'", target.display()))?;
            let table = read_partition_table(&FileReadAt::new(file, size), sector_size.max(512))
                .context("cannot read back the grown partition table")?
                .context("the grown partition table is gone")?;
            table
                .partitions
                .iter()
                .find(|p| p.number == n)
                .map(|p| p.len)
                .with_context(|| format!("partition {n} is gone from the grown table"))?
        }
        None => size,
    };
    let dev = Loop::attach(target, g.start, g.new_len)?;
    match g.filesystem.as_str() {
        "xfs" => {
            let m = Mounted::at_temp(&dev.0, "xfs")?;
            run(Command::new("xfs_growfs").arg(&m.dir), &[0], None)?;
        }
        "btrfs" => {
            let m = Mounted::at_temp(&dev.0, "btrfs")?;
            run(
                Command::new("btrfs")
                    .args(["filesystem", "resize", "max"])
                    .arg(&m.dir),
                &[0],
                None,
            )?;
        }
        _ => {
            // resize2fs insists on a checked filesystem; 1 and 2 are "errors corrected".
            run(
                Command::new("e2fsck").args(["-f", "-p"]).arg(&dev.0),
                &[0, 1, 2],
                None,
            )?;
            run(Command::new("resize2fs").arg(&dev.0), &[0], None)?;
        }
    }
    Ok(g)
}
