//! Restore drills: the newest image of a job restored into a sparse scratch file, checked
//! by its filesystem's own checker, mounted read-only, its files counted and a sample of
//! them compared with the checksums taken from the source when it was imaged; the time it
//! took measured (the real recovery time), the scratch copy deleted, and a report.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use holdfast_proto::job::{DrillResult, DrillTask, JobOrder, RunReport, RunStatus, StepStatus};
use tokio::sync::Notify;

use super::jobs::{join, step, ChildFailure, Jobs};

/// Lines of the checker's output kept in the report.
const FSCK_LINES: usize = 8;

/// The checker of `fs_type` in its read-only form, on `file`.
fn checker(fs_type: &str, file: &Path) -> Option<Command> {
    let (program, args): (&str, &[&str]) = match fs_type {
        "ext2" | "ext3" | "ext4" => ("e2fsck", &["-f", "-n"]),
        "xfs" => ("xfs_repair", &["-n", "-f"]),
        "btrfs" => ("btrfs", &["check", "--readonly"]),
        "fat12" | "fat16" | "fat32" => ("fsck.vfat", &["-n"]),
        "exfat" => ("fsck.exfat", &["-n"]),
        "ntfs" => ("ntfsfix", &["-n"]),
        _ => return None,
    };
    let mut c = Command::new(program);
    c.args(args).arg(file);
    Some(c)
}

/// The scratch copy and what was set up over it, removed on drop.
struct Scratch {
    file: PathBuf,
    loop_dev: Option<String>,
    mnt: Option<PathBuf>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(m) = self.mnt.take() {
            let _ = Command::new("umount").arg(&m).output();
            let _ = std::fs::remove_dir(&m);
        }
        if let Some(d) = self.loop_dev.take() {
            let _ = Command::new("losetup").arg("-d").arg(&d).output();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Regular files under `dir` (not crossing into other filesystems).
fn count_files(dir: &Path) -> u64 {
    let mut files = Vec::new();
    let _ = crate::sample::walk(dir, dir, &mut files, u64::MAX);
    files.len() as u64
}

/// Check the restored filesystem: its checker, then mounted read-only: files counted and
/// the sample compared.
fn check(task: &DrillTask, scratch: &mut Scratch, fs_type: &str) -> Result<DrillResult> {
    let mut fsck = checker(fs_type, &scratch.file)
        .with_context(|| format!("there is no checker for a {fs_type} filesystem"))?;
    let shown = format!("{fsck:?}").replace('"', "");
    let out = fsck
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(FSCK_LINES)..].join(" | ");
    let mut result = DrillResult {
        fsck_clean: out.status.success(),
        fsck: format!("{shown}: {}; {tail}", out.status),
        files: 0,
        sampled: 0,
        matched: 0,
        restore_seconds: 0.0,
        seconds: 0.0,
    };
    let (kind, opts) = crate::sample::options(fs_type)
        .with_context(|| format!("a {fs_type} filesystem is not mounted by drills"))?;
    let dev = Command::new("losetup")
        .args(["-r", "-f", "--show"])
        .arg(&scratch.file)
        .output()
        .context("cannot run losetup")?;
    if !dev.status.success() {
        bail!(
            "cannot attach the scratch copy: {}",
            String::from_utf8_lossy(&dev.stderr).trim()
        );
    }
    let dev = String::from_utf8_lossy(&dev.stdout).trim().to_owned();
    scratch.loop_dev = Some(dev.clone());
    let mnt = scratch.file.with_extension("mnt");
    let _ = std::fs::remove_dir(&mnt);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&mnt)
        .with_context(|| format!("cannot create '{}'", mnt.display()))?;
    scratch.mnt = Some(mnt.clone());
    let m = Command::new("mount")
        .args(["-t", kind, "-o", opts, &dev])
        .arg(&mnt)
        .output()
        .context("cannot run mount")?;
    if !m.status.success() {
        bail!(
            "the restored filesystem does not mount: {}",
            String::from_utf8_lossy(&m.stderr).trim()
        );
    }
    result.files = count_files(&mnt);
    for f in &task.sample {
        result.sampled += 1;
        let path = mnt.join(f.path.trim_start_matches('/'));
        let same = std::fs::read(&path)
            .map(|b| b.len() as u64 == f.size && blake3::hash(&b).to_hex().as_str() == f.blake3)
            .unwrap_or(false);
        if same {
            result.matched += 1;
        }
    }
    Ok(result)
}

impl Jobs {
    /// Run a restore drill; true when the run must stop.
    pub(super) async fn drill(
        &self,
        order: &JobOrder,
        task: &DrillTask,
        work: &Path,
        cancel: &Notify,
        report: &mut RunReport,
    ) -> bool {
        let fail = |report: &mut RunReport, why: String| {
            report
                .steps
                .push(step(StepStatus::Error, "Drill failed", why));
            report.status = RunStatus::Failed;
            true
        };
        let url = join(&task.image.target.url, &task.image.name);
        let info: crate::outcome::Info = match self
            .child_json(
                &task.image.target,
                None,
                &["image", "info", "--image", &url],
            )
            .await
        {
            Ok(i) => i,
            Err(e) => return fail(report, format!("{e:#}")),
        };
        let Some(fs_type) = info
            .metadata
            .source
            .filesystem
            .as_ref()
            .map(|f| f.fs_type.clone())
        else {
            return fail(
                report,
                format!("'{}' holds no filesystem a drill can check (a disk image, or an unknown filesystem)", task.image.name),
            );
        };
        let dir = task
            .scratch
            .as_ref()
            .map_or_else(|| self.drill_dir(), PathBuf::from);
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
        {
            return fail(
                report,
                format!("cannot create the scratch folder '{}': {e}", dir.display()),
            );
        }
        let mut scratch = Scratch {
            file: dir.join(format!("drill-{}.img", order.run_id)),
            loop_dev: None,
            mnt: None,
        };
        let t0 = Instant::now();
        let mut cmd = match self.target_command(&task.image.target, work) {
            Ok(c) => c,
            Err(e) => return fail(report, format!("{e:#}")),
        };
        if let Some(p) = &task.image.password {
            cmd.env(crate::secret::PASSWORD_ENV, p.expose());
        }
        cmd.args(["image", "restore", "--json", "--progress-lines", "--image"])
            .arg(&url)
            .arg("--target")
            .arg(&scratch.file);
        let restored = match self.run_child(order.run_id, cmd, cancel).await {
            Ok(out) => crate::outcome::read::<crate::outcome::Restored>("image restore", &out),
            Err(ChildFailure::Cancelled) => {
                report.steps.push(step(
                    StepStatus::Error,
                    "Cancelled",
                    "cancelled by an operator; the scratch copy was deleted",
                ));
                report.status = RunStatus::Cancelled;
                return true;
            }
            Err(ChildFailure::Failed(e)) => Err(anyhow::anyhow!(e)),
        };
        let restored = match restored {
            Ok(r) => r,
            Err(e) => {
                return fail(
                    report,
                    format!("the restore into scratch space failed: {e:#}"),
                )
            }
        };
        let restore_seconds = t0.elapsed().as_secs_f64();
        report.bytes_read += restored.data_bytes;
        report.steps.push(step(
            StepStatus::Ok,
            "Restored",
            format!(
                "'{}' (chain of {}) into {} in {restore_seconds:.1} s",
                task.image.name,
                restored.chain.len(),
                scratch.file.display()
            ),
        ));
        let checked = tokio::task::spawn_blocking({
            let task = task.clone();
            let fs_type = fs_type.clone();
            move || {
                let r = check(&task, &mut scratch, &fs_type);
                drop(scratch);
                r
            }
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|r| r);
        let mut result = match checked {
            Ok(r) => r,
            Err(e) => return fail(report, format!("{e:#}")),
        };
        result.restore_seconds = restore_seconds;
        result.seconds = t0.elapsed().as_secs_f64();
        report.steps.push(step(
            if result.fsck_clean {
                StepStatus::Ok
            } else {
                StepStatus::Error
            },
            if result.fsck_clean {
                "Filesystem clean"
            } else {
                "Filesystem damaged"
            },
            result.fsck.clone(),
        ));
        report.steps.push(step(
            StepStatus::Ok,
            "Files",
            format!(
                "{} regular file(s) on the restored {fs_type} volume",
                result.files
            ),
        ));
        let sample_status = if task.sample.is_empty() {
            StepStatus::Warning
        } else if result.matched == result.sampled {
            StepStatus::Ok
        } else {
            StepStatus::Error
        };
        report.steps.push(step(
            sample_status,
            "Sample",
            if task.sample.is_empty() {
                "no sample of the source's files was taken when this image was made: files were not compared".to_owned()
            } else {
                format!(
                    "{} of {} files taken from the source when it was imaged are equal on the restored volume",
                    result.matched, result.sampled
                )
            },
        ));
        report.steps.push(step(
            StepStatus::Info,
            "Recovery time",
            format!(
                "restored in {:.1} s; drill took {:.1} s; the scratch copy was deleted",
                result.restore_seconds, result.seconds
            ),
        ));
        if !result.fsck_clean || sample_status == StepStatus::Error {
            report.status = RunStatus::Failed;
        } else if sample_status == StepStatus::Warning && report.status == RunStatus::Successful {
            report.status = RunStatus::Warning;
        }
        report.drill = Some(result);
        false
    }
}
