//! Restore runs: files of an image point copied back onto this machine (a child `image
//! extract`), or an image point written over a device (a child `image restore`, which
//! refuses a mounted or too small device and checks every frame before writing). Each is
//! a run like an imaging job's, with its report.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use holdfast_proto::job::{
    JobOrder, RestoreFilesTask, RestoreVolumeTask, RunReport, RunStatus, StepStatus,
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
