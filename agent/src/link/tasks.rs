//! Runs that are not imaging: restores — files of an image point copied back onto this
//! machine (a child `image extract`), or an image point written over a device (a child
//! `image restore`, which refuses a mounted or too small device and checks every frame
//! before writing) — and verify runs, which validate stored images again where they are (a
//! child `image validate` each) — and clones, a device copied onto another (a child
//! `clone`, with the same refusals). Each is a run like an imaging job's, with its report.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use holdfast_proto::job::{
    CloneTask, ImageCheck, ImageHealth, JobOrder, RestoreFilesTask, RestoreVolumeTask, RunReport,
    RunStatus, StepStatus, VerifyTask,
};
use holdfast_proto::ImageRef;
use tokio::sync::Notify;

use super::jobs::{join, step, ChildFailure, Jobs};
use crate::image_cmd::browse::Extracted;

/// The `--image` (and `--partition`) arguments for `image`.
fn point(image: &ImageRef) -> Vec<String> {
    let mut args = vec!["--image".to_owned(), join(&image.target.url, &image.name)];
    if let Some(p) = image.partition {
        args.extend(["--partition".to_owned(), p.to_string()]);
    }
    args
}

/// Where the filesystem on `source` is mounted now (its shortest mount point).
fn mounted_at(source: &str) -> Result<PathBuf> {
    let meta = std::fs::metadata(source)
        .map_err(|e| anyhow!("the imaged volume {source} is not on this machine ({e}): choose a folder to restore into"))?;
    if !meta.file_type().is_block_device() {
        bail!("the imaged source {source} is a file, not a volume mounted here: choose a folder to restore into");
    }
    let rdev = meta.rdev();
    let devno = (
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    );
    crate::device::read_mounts()?
        .into_iter()
        .filter(|m| m.devno == devno)
        .map(|m| m.mount_point)
        .min_by_key(|p| p.as_os_str().len())
        .ok_or_else(|| {
            anyhow!("the imaged volume {source} is not mounted on this machine: mount it, or choose a folder to restore into")
        })
}

/// The folder each path goes into: `to`, or for the original place the path's folder under
/// `root` (where the volume is mounted); paths grouped by it.
fn destinations(
    paths: &[String],
    to: Option<&str>,
    root: Option<&Path>,
) -> Result<BTreeMap<PathBuf, Vec<String>>> {
    let mut out: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for p in paths {
        let dir = match (to, root) {
            (Some(to), _) => PathBuf::from(to),
            (None, Some(root)) => {
                let parent = Path::new(p).parent().unwrap_or(Path::new("/"));
                let mut dir = root.to_owned();
                for c in parent.components() {
                    match c {
                        std::path::Component::Normal(n) => dir.push(n),
                        std::path::Component::RootDir | std::path::Component::CurDir => {}
                        _ => bail!("'{p}' is not a plain path inside the image"),
                    }
                }
                dir
            }
            (None, None) => bail!("no folder to restore into"),
        };
        out.entry(dir).or_default().push(p.clone());
    }
    Ok(out)
}

impl Jobs {
    /// A child `holdfast-agent` for `image`, with its target's credentials and password.
    fn point_command(&self, image: &ImageRef, work: &Path) -> Result<tokio::process::Command> {
        let mut cmd = self.target_command(&image.target, work)?;
        if let Some(p) = &image.password {
            cmd.env(crate::secret::PASSWORD_ENV, p.expose());
        }
        Ok(cmd)
    }

    /// Restore files: each into the folder asked for, or back where it was; true when the
    /// run must stop.
    pub(super) async fn restore_files(
        &self,
        order: &JobOrder,
        task: &RestoreFilesTask,
        work: &Path,
        cancel: &Notify,
        report: &mut RunReport,
    ) -> bool {
        let name = &task.image.name;
        let root = match &task.to {
            Some(_) => None,
            None => match self.original_root(task).await {
                Ok(r) => Some(r),
                Err(e) => return fail(report, "Restore failed", format!("{e:#}")),
            },
        };
        let groups = match destinations(&task.paths, task.to.as_deref(), root.as_deref()) {
            Ok(g) => g,
            Err(e) => return fail(report, "Restore failed", format!("{e:#}")),
        };
        for (dir, paths) in groups {
            let mut cmd = match self.point_command(&task.image, work) {
                Ok(c) => c,
                Err(e) => return fail(report, "Restore failed", format!("{e:#}")),
            };
            cmd.args(["image", "extract", "--json"])
                .args(point(&task.image))
                .arg("--to")
                .arg(&dir);
            if task.overwrite {
                cmd.arg("--overwrite");
            }
            cmd.arg("--").args(&paths);
            let done = match self.run_child(order.run_id, cmd, cancel).await {
                Ok(out) => crate::outcome::read::<Extracted>("image extract", &out)
                    .map_err(|e| format!("{e:#}")),
                Err(ChildFailure::Cancelled) => {
                    report.steps.push(step(
                        StepStatus::Error,
                        "Cancelled",
                        "cancelled by an operator; files restored until then stay",
                    ));
                    report.status = RunStatus::Cancelled;
                    return true;
                }
                Err(ChildFailure::Failed(e)) => Err(e),
            };
            match done {
                Ok(x) => {
                    report.bytes_read += x.bytes;
                    report.bytes_written += x.bytes;
                    report.steps.push(step(
                        StepStatus::Ok,
                        "Files restored",
                        format!(
                            "{} from image '{name}' to {} on {}: {} file(s) ({} bytes), {} folder(s), {} symbolic link(s), {} hard link(s){}",
                            paths.join(", "),
                            dir.display(),
                            report.host,
                            x.files,
                            x.bytes,
                            x.folders,
                            x.symlinks,
                            x.hard_links,
                            if x.special > 0 { format!(", {} special file(s)", x.special) } else { String::new() },
                        ),
                    ));
                }
                Err(e) => {
                    return fail(
                        report,
                        "Restore failed",
                        format!("{} to {}: {e}", paths.join(", "), dir.display()),
                    )
                }
            }
        }
        false
    }

    /// Where the imaged volume is mounted now on this machine.
    async fn original_root(&self, task: &RestoreFilesTask) -> Result<PathBuf> {
        let url = join(&task.image.target.url, &task.image.name);
        let info: crate::outcome::Info = self
            .child_json(
                &task.image.target,
                None,
                &["image", "info", "--image", &url],
            )
            .await?;
        if info.metadata.source.kind == "disk" {
            bail!("the image is of a whole disk: choose a folder to restore into");
        }
        mounted_at(&info.metadata.source.path)
    }

    /// Write an image point over a device; true when the run must stop.
    pub(super) async fn restore_volume(
        &self,
        order: &JobOrder,
        task: &RestoreVolumeTask,
        work: &Path,
        cancel: &Notify,
        report: &mut RunReport,
    ) -> bool {
        let mut cmd = match self.point_command(&task.image, work) {
            Ok(c) => c,
            Err(e) => return fail(report, "Restore failed", format!("{e:#}")),
        };
        cmd.args(["image", "restore", "--json", "--progress-lines"])
            .arg("--image")
            .arg(join(&task.image.target.url, &task.image.name))
            .arg("--target")
            .arg(&task.device);
        if let Some(p) = task.partition {
            cmd.arg("--partition").arg(p.to_string());
        }
        let done = match self.run_child(order.run_id, cmd, cancel).await {
            Ok(out) => crate::outcome::read::<crate::outcome::Restored>("image restore", &out)
                .map_err(|e| format!("{e:#}")),
            Err(ChildFailure::Cancelled) => {
                report.steps.push(step(
                    StepStatus::Error,
                    "Cancelled",
                    format!(
                        "cancelled by an operator; {} holds a partial restore",
                        task.device
                    ),
                ));
                report.status = RunStatus::Cancelled;
                return true;
            }
            Err(ChildFailure::Failed(e)) => Err(e),
        };
        match done {
            Ok(r) => {
                report.bytes_read += r.data_bytes;
                report.bytes_written += r.data_bytes + r.zero_bytes;
                report.steps.push(step(
                    StepStatus::Ok,
                    "Volume restored",
                    format!(
                        "image '{}' (chain of {}) written to {} on {}: {} bytes of data in {:.1} s{}",
                        task.image.name,
                        r.chain.len(),
                        task.device,
                        report.host,
                        r.data_bytes,
                        r.seconds,
                        if r.gpt_backup_moved_to_end { "; the GPT's backup copy moved to the disk's end" } else { "" },
                    ),
                ));
                for w in r.warnings {
                    report
                        .steps
                        .push(step(StepStatus::Warning, "Image damaged", w));
                    if report.status == RunStatus::Successful {
                        report.status = RunStatus::Warning;
                    }
                }
                false
            }
            Err(e) => fail(
                report,
                "Restore failed",
                format!("{} onto {}: {e}", task.image.name, task.device),
            ),
        }
    }
}

impl Jobs {
    /// Validate each stored image again; true when the run must stop (cancelled). Damage
    /// fails the run; an image that could not be read makes it a warning.
    pub(super) async fn verify_images(
        &self,
        order: &JobOrder,
        task: &VerifyTask,
        work: &Path,
        cancel: &Notify,
        report: &mut RunReport,
    ) -> bool {
        if task.images.is_empty() {
            report.steps.push(step(
                StepStatus::Info,
                "Nothing to verify",
                "the job has no stored images on this target",
            ));
            return false;
        }
        let depth = if task.password.is_some() {
            "every block against its hash"
        } else {
            "structure and ciphertext checksums (no password)"
        };
        for name in &task.images {
            let mut cmd = match self.target_command(&task.target, work) {
                Ok(c) => c,
                Err(e) => return fail(report, "Verify failed", format!("{e:#}")),
            };
            if let Some(p) = &task.password {
                cmd.env(crate::secret::PASSWORD_ENV, p.expose());
            }
            cmd.args(["image", "validate", "--json", "--progress-lines", "--image"])
                .arg(join(&task.target.url, name));
            let out = match self.run_child(order.run_id, cmd, cancel).await {
                Ok(out) => out,
                Err(ChildFailure::Cancelled) => {
                    report.steps.push(step(
                        StepStatus::Error,
                        "Cancelled",
                        "cancelled by an operator",
                    ));
                    report.status = RunStatus::Cancelled;
                    return true;
                }
                Err(ChildFailure::Failed(e)) => {
                    report.checked.push(ImageCheck {
                        name: name.clone(),
                        health: ImageHealth::Unchecked,
                        detail: e,
                    });
                    continue;
                }
            };
            report.checked.push(check_of(name, &out));
        }
        for c in &report.checked {
            let (status, title) = match c.health {
                ImageHealth::Sound => (StepStatus::Ok, "Image sound"),
                ImageHealth::Damaged => (StepStatus::Error, "Image damaged"),
                ImageHealth::Unchecked => (StepStatus::Warning, "Image not checked"),
            };
            report
                .steps
                .push(step(status, title, format!("{}: {}", c.name, c.detail)));
        }
        let damaged = report
            .checked
            .iter()
            .any(|c| c.health == ImageHealth::Damaged);
        let unchecked = report
            .checked
            .iter()
            .any(|c| c.health == ImageHealth::Unchecked);
        report.steps.push(step(
            StepStatus::Info,
            "Verified",
            format!(
                "{} image(s) on {}: {depth}",
                report.checked.len(),
                task.target.url
            ),
        ));
        if damaged {
            report.status = RunStatus::Failed;
        } else if unchecked && report.status == RunStatus::Successful {
            report.status = RunStatus::Warning;
        }
        false
    }
}

/// What `image validate --json` said about `name`: sound, damaged (exit code 3: damage,
/// truncation or a missing part), or not checked (anything else: the target, the password).
fn check_of(name: &str, out: &std::process::Output) -> ImageCheck {
    let check = |health, detail: String| ImageCheck {
        name: name.to_owned(),
        health,
        detail,
    };
    if let Ok(v) = serde_json::from_slice::<crate::outcome::Validated>(&out.stdout) {
        let r = &v.report;
        let level = match r.level {
            holdfast_image::validate::Level::Full => "full check",
            holdfast_image::validate::Level::Structure => "structure check",
        };
        if v.ok {
            return check(
                ImageHealth::Sound,
                format!(
                    "{level} of {} frames, {} blocks verified: no damage",
                    r.frames, r.blocks_verified
                ),
            );
        }
        let found: Vec<String> = r
            .damage
            .iter()
            .take(5)
            .map(|d| format!("bytes {}..{} ({})", d.start, d.end, d.detail))
            .chain(r.records.iter().cloned())
            .collect();
        return check(
            ImageHealth::Damaged,
            format!(
                "{level}: {} damaged range(s), {} damaged record(s): {}",
                r.damage.len(),
                r.records.len(),
                found.join("; ")
            ),
        );
    }
    let why = crate::outcome::failure("image validate", out);
    if out.status.code() == Some(crate::exit::DAMAGED.into()) {
        check(ImageHealth::Damaged, why)
    } else {
        check(ImageHealth::Unchecked, why)
    }
}

impl Jobs {
    /// Copy a device onto another with a child `clone --yes` (the operator typed the
    /// target's name in the console); true when the run must stop.
    pub(super) async fn clone_device(
        &self,
        order: &JobOrder,
        task: &CloneTask,
        cancel: &Notify,
        report: &mut RunReport,
    ) -> bool {
        let mut cmd = self.own_command();
        cmd.args(["clone", "--json", "--progress-lines", "--yes", "--source"])
            .arg(&task.source)
            .arg("--target")
            .arg(&task.target);
        for (on, flag) in [
            (task.forensic, "--forensic"),
            (task.grow, "--grow"),
            (task.zero_unused, "--zero-unused"),
            (task.ignore_read_errors, "--ignore-read-errors"),
        ] {
            if on {
                cmd.arg(flag);
            }
        }
        let out = match self.run_child(order.run_id, cmd, cancel).await {
            Ok(out) => out,
            Err(ChildFailure::Cancelled) => {
                report.steps.push(step(
                    StepStatus::Error,
                    "Cancelled",
                    format!(
                        "cancelled by an operator; {} holds a partial clone, its first MiB cleared so it does not look like a disk",
                        task.target
                    ),
                ));
                report.status = RunStatus::Cancelled;
                return true;
            }
            Err(ChildFailure::Failed(e)) => return fail(report, "Clone failed", e),
        };
        let c = match crate::outcome::read::<crate::clone::Cloned>("clone", &out) {
            Ok(c) => c,
            Err(e) => {
                return fail(
                    report,
                    "Clone failed",
                    format!("{} onto {}: {e:#}", task.source, task.target),
                )
            }
        };
        report.bytes_read += c.copied_bytes;
        report.bytes_written += c.copied_bytes + c.zeroed_bytes;
        let mut done = format!(
            "{} copied onto {} on {} ({}, {}): {} bytes copied, {} zeroed, in {:.1} s",
            c.source,
            c.target,
            report.host,
            match c.coverage {
                holdfast_image::header::Coverage::UsedSector => "used-sector",
                holdfast_image::header::Coverage::Forensic => "forensic",
            },
            c.consistency,
            c.copied_bytes,
            c.zeroed_bytes,
            c.seconds
        );
        if c.gpt_backup_moved_to_end {
            done.push_str("; the GPT's backup copy moved to the disk's end");
        }
        if let Some(g) = &c.grown {
            done.push_str(&format!(
                "; {} grown from {} to {} bytes",
                g.partition
                    .map_or_else(|| "the volume".to_owned(), |p| format!("partition {p}")),
                g.old_len,
                g.new_len
            ));
        }
        report.steps.push(step(StepStatus::Ok, "Cloned", done));
        // Unreadable sectors written as zeros, or anything else the clone warned about.
        if (!c.ok || !c.warnings.is_empty()) && report.status == RunStatus::Successful {
            report.status = RunStatus::Warning;
        }
        for w in c.warnings {
            report
                .steps
                .push(step(StepStatus::Warning, "Clone warning", w));
        }
        false
    }
}

/// Record a failed step; the run stops.
fn fail(report: &mut RunReport, title: &str, detail: String) -> bool {
    report.steps.push(step(StepStatus::Error, title, detail));
    report.status = RunStatus::Failed;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_go_to_the_folder_asked_for_or_back_where_they_were() {
        let paths = vec![
            "/home/ann/a.txt".to_owned(),
            "/home/ann/docs".to_owned(),
            "/etc/hosts".to_owned(),
        ];
        let to = destinations(&paths, Some("/tmp/back"), None).expect("to");
        assert_eq!(to.len(), 1);
        assert_eq!(to[Path::new("/tmp/back")].len(), 3);
        let back = destinations(&paths, None, Some(Path::new("/srv"))).expect("back");
        assert_eq!(
            back.keys().collect::<Vec<_>>(),
            [Path::new("/srv/etc"), Path::new("/srv/home/ann")]
        );
        assert_eq!(back[Path::new("/srv/home/ann")].len(), 2);
        assert!(destinations(&["/a/../../b".to_owned()], None, Some(Path::new("/srv"))).is_err());
    }
}
