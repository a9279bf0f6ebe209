//! An image point shown as a read-only drive, without restoring it: what `image mount`
//! serves and what `image ls` and `image extract` read through.
//!
//! The point is served through FUSE as files in a private folder under [`STATE_DIR`]:
//! `volume.img` for a volume (for a LUKS volume imaged decrypted, its contents), or
//! `disk.img` and `partN.img` for a disk. A read-only loop device over the chosen file
//! carries its filesystem, mounted read-only at the mount point without replaying a journal
//! or log (nothing is ever written to the image). Raw, the files themselves are shown at the
//! mount point instead.
//!
//! What a drive set up is recorded in `STATE_DIR/<pid>.json` before the first mount, so
//! [`dismount`] (and the next drive) releases the mounts and the loop device even after the
//! serving process was killed.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use holdfast_image::chain::Chain;
use holdfast_image::chain_reader::ChainReader;
use holdfast_image::io::{ReadAt, SliceReadAt};
use holdfast_image::meta::{FsMeta, SourceMeta};
use serde::{Deserialize, Serialize};

use crate::exit::Refused;
use crate::image_files::ImageFiles;

/// Where drives record what they set up, and keep their FUSE folders.
pub const STATE_DIR: &str = "/run/holdfast/mounts";

/// What one drive set up: enough to release it without the process.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    pid: u32,
    image: String,
    mountpoint: PathBuf,
    /// Where the image's files are served (the mount point itself with `--raw`).
    files_dir: PathBuf,
    raw: bool,
    /// The loop device carrying the filesystem.
    loop_device: Option<String>,
}

impl Record {
    fn path(pid: u32) -> PathBuf {
        Path::new(STATE_DIR).join(format!("{pid}.json"))
    }

    fn save(&self) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).context("cannot record the mount")?;
        std::fs::write(Self::path(self.pid), text)
            .with_context(|| format!("cannot write '{}'", Self::path(self.pid).display()))
    }

    /// Every record there is (unreadable ones are skipped: they name nothing to release).
    fn all() -> Vec<Self> {
        let Ok(dir) = std::fs::read_dir(STATE_DIR) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }

    fn alive(&self) -> bool {
        !crate::lvm::made_by_a_gone_process(&self.pid.to_string())
    }

    /// Release what this record names, in reverse order of setting up.
    fn release(&self) -> Result<()> {
        if !self.raw {
            unmount(&self.mountpoint)?;
        }
        if let Some(dev) = &self.loop_device {
            detach_loop(dev, &self.files_dir);
        }
        if self.alive() {
            unmount(&self.files_dir)?;
        } else if is_mounted(&self.files_dir) {
            // Nobody serves it any more: detach it even while something still holds it.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.files_dir)
                .output();
        }
        if !self.raw {
            let _ = std::fs::remove_dir(&self.files_dir);
        }
        let _ = std::fs::remove_file(Self::path(self.pid));
        Ok(())
    }
}

/// Detach loop device `dev` if it is still over a file in `files_dir` (a busy device is
/// detached when its last user closes it). A device already detached may have been taken
/// by someone else since: it is left alone.
fn detach_loop(dev: &str, files_dir: &Path) {
    let name = dev.trim_start_matches("/dev/");
    let backing =
        std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).unwrap_or_default();
    if Path::new(backing.trim()).starts_with(files_dir) {
        let _ = Command::new("losetup").arg("-d").arg(dev).output();
    }
}

/// True when `dir` is a mount point now.
fn is_mounted(dir: &Path) -> bool {
    crate::device::read_mounts()
        .map(|m| m.iter().any(|m| m.mount_point == dir))
        .unwrap_or(false)
}

/// Unmount `dir` if it is mounted, trying for a while when it is busy.
fn unmount(dir: &Path) -> Result<()> {
    let started = Instant::now();
    let mut told = false;
    while is_mounted(dir) {
        let out = Command::new("umount")
            .arg(dir)
            .output()
            .context("cannot run umount")?;
        if out.status.success() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "cannot unmount '{}': {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if !told {
            eprintln!(
                "holdfast-agent: '{}' is busy (a program has files open there): waiting",
                dir.display()
            );
            told = true;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}

/// Release the mounts of processes that are gone (killed while serving).
fn release_stale() {
    for r in Record::all().into_iter().filter(|r| !r.alive()) {
        if let Err(e) = r.release() {
            eprintln!(
                "holdfast-agent: warning: releasing a mount left by process {}: {e:#}",
                r.pid
            );
        }
    }
}

/// The program and options that mount `fs_type` read-only without writing to it.
fn mount_command(fs_type: &str) -> Option<(&'static str, &'static [&'static str])> {
    Some(match fs_type {
        "ext2" | "ext3" | "ext4" => ("mount", &["-t", "ext4", "-o", "ro,noload"]),
        "xfs" => ("mount", &["-t", "xfs", "-o", "ro,norecovery,nouuid"]),
        "btrfs" => ("mount", &["-t", "btrfs", "-o", "ro,rescue=nologreplay"]),
        "fat12" | "fat16" | "fat32" => ("mount", &["-t", "vfat", "-o", "ro"]),
        "exfat" => ("mount.exfat-fuse", &["-o", "ro"]),
        "ntfs" => ("ntfs-3g", &["-o", "ro"]),
        _ => return None,
    })
}

/// The files the image is shown as, and which one holds the filesystem to mount (its index
/// and the filesystem), for `partition` of a disk.
type Shown = (Vec<(String, Arc<dyn ReadAt>)>, Option<(usize, FsMeta)>);

fn files_of(
    reader: Arc<ChainReader>,
    source: &SourceMeta,
    partition: Option<u32>,
) -> Result<Shown> {
    if source.partition_table.is_none() {
        if partition.is_some() {
            return Err(Refused(
                "the image holds a volume, not a disk: leave out --partition".into(),
            )
            .into());
        }
        return Ok(match &source.decrypted {
            Some(d) => {
                let inside: Arc<dyn ReadAt> =
                    Arc::new(SliceReadAt::new(reader, d.data_offset, d.data_size));
                (
                    vec![("volume.img".into(), inside)],
                    d.filesystem.clone().map(|f| (0, f)),
                )
            }
            None => (
                vec![("volume.img".into(), reader as Arc<dyn ReadAt>)],
                source.filesystem.clone().map(|f| (0, f)),
            ),
        });
    }
    let mut files: Vec<(String, Arc<dyn ReadAt>)> = vec![("disk.img".into(), reader.clone())];
    let mut chosen = None;
    for p in &source.partitions {
        let slice: Arc<dyn ReadAt> = Arc::new(SliceReadAt::new(reader.clone(), p.start, p.len));
        if partition == Some(p.number) {
            chosen = Some((files.len(), p.filesystem.clone()));
        }
        files.push((format!("part{}.img", p.number), slice));
    }
    match (partition, chosen) {
        (Some(n), None) => Err(Refused(format!("the disk image has no partition {n}")).into()),
        (_, Some((i, fs))) => Ok((files, fs.map(|f| (i, f)))),
        (None, None) => Ok((files, None)),
    }
}

/// Create [`STATE_DIR`], private: the records name devices and its folders serve images.
pub fn state_dir() -> Result<&'static Path> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(STATE_DIR)
        .with_context(|| format!("cannot create '{STATE_DIR}'"))?;
    std::fs::set_permissions(
        STATE_DIR,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .with_context(|| format!("cannot make '{STATE_DIR}' private"))?;
    Ok(Path::new(STATE_DIR))
}

/// An image point served and, unless raw, its filesystem mounted. Released by
/// [`Drive::release`], or when dropped.
pub struct Drive {
    record: Record,
    session: Option<fuser::BackgroundSession>,
    /// The files the image is served as.
    pub files: Vec<String>,
    /// The filesystem mounted (none when raw).
    pub filesystem: Option<String>,
}

impl Drive {
    /// Show `chain`'s point (named `image` in the record) at `mountpoint` (an existing,
    /// canonical folder): its filesystem, of `partition` for a disk, or its files when `raw`.
    pub fn mount(
        chain: Chain,
        image: &str,
        mountpoint: &Path,
        partition: Option<u32>,
        raw: bool,
    ) -> Result<Self> {
        state_dir()?;
        release_stale();
        if is_mounted(mountpoint) {
            return Err(Refused(format!(
                "something is mounted at '{}' already",
                mountpoint.display()
            ))
            .into());
        }
        let source = chain.point().meta.source.clone();
        let reader = Arc::new(ChainReader::new(chain)?);
        let (files, filesystem) = files_of(reader, &source, partition)?;
        // What mounts the filesystem, checked before anything is set up.
        let mount_with = if raw {
            None
        } else {
            let Some((index, fs)) = filesystem else {
                return Err(Refused(no_filesystem(&source)).into());
            };
            let Some(command) = mount_command(&fs.fs_type) else {
                return Err(Refused(format!(
                    "a {} filesystem cannot be mounted from an image: use --raw to show the volume as a file",
                    fs.fs_type
                ))
                .into());
            };
            Some((index, fs, command))
        };
        let pid = std::process::id();
        let files_dir = if raw {
            mountpoint.to_owned()
        } else {
            let dir = Path::new(STATE_DIR).join(format!("{pid}.files"));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("cannot create '{}'", dir.display()))?;
            dir
        };
        let record = Record {
            pid,
            image: image.to_owned(),
            mountpoint: mountpoint.to_owned(),
            files_dir: files_dir.clone(),
            raw,
            loop_device: None,
        };
        // Recorded before the first mount: a kill from here on leaves something to release.
        record.save()?;
        let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::RO,
            fuser::MountOption::FSName("holdfast".into()),
            fuser::MountOption::Subtype("holdfast-image".into()),
        ];
        config.n_threads = Some(2);
        let session = match fuser::spawn_mount(ImageFiles::new(files), &files_dir, &config) {
            Ok(s) => s,
            Err(e) => {
                let _ = record.release();
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot serve the image through FUSE at '{}'",
                    files_dir.display()
                )));
            }
        };
        let mut drive = Self {
            record,
            session: Some(session),
            files: names,
            filesystem: None,
        };
        if let Some((index, fs, (program, options))) = mount_with {
            let file = files_dir.join(&drive.files[index]);
            // On failure the drive is dropped, which releases what was set up.
            mount_filesystem(&mut drive.record, &file, program, options, mountpoint)?;
            drive.filesystem = Some(fs.fs_type);
        }
        Ok(drive)
    }

    /// The loop device carrying the filesystem.
    pub fn loop_device(&self) -> Option<&str> {
        self.record.loop_device.as_deref()
    }

    /// Serve until Ctrl-C or SIGTERM, or until the mount point was unmounted from outside.
    pub fn serve(&self) {
        while !crate::CANCEL.is_cancelled() && is_mounted(&self.record.mountpoint) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Release everything, in the reverse order of setting up.
    pub fn release(mut self) -> Result<()> {
        self.release_all()
    }

    fn release_all(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        if !self.record.raw {
            unmount(&self.record.mountpoint)?;
        }
        if let Some(dev) = self.record.loop_device.take() {
            detach_loop(&dev, &self.record.files_dir);
        }
        if let Err(e) = session.umount_and_join() {
            // Still in use: the serving thread goes on until the files are closed.
            eprintln!("holdfast-agent: warning: {e}; waiting for the image's files to be closed");
            unmount(&self.record.files_dir)?;
        }
        self.record.release()
    }
}

impl Drop for Drive {
    fn drop(&mut self) {
        if let Err(e) = self.release_all() {
            eprintln!("holdfast-agent: warning: releasing the image's drive: {e:#}");
        }
    }
}

/// Why a drive cannot mount a filesystem of the image described by `source`.
fn no_filesystem(source: &SourceMeta) -> String {
    if source.partition_table.is_none() {
        return "no filesystem is known in the image: use --raw to show the volume as a file"
            .into();
    }
    let parts: Vec<String> = source
        .partitions
        .iter()
        .map(|p| {
            format!(
                "{} ({})",
                p.number,
                p.filesystem
                    .as_ref()
                    .map_or("no filesystem", |f| f.fs_type.as_str())
            )
        })
        .collect();
    format!(
        "the image holds a disk: choose a partition with --partition ({}), or --raw to show its files",
        parts.join(", ")
    )
}

/// Attach `file` to a read-only loop device (recorded) and mount its filesystem at `dir`.
fn mount_filesystem(
    record: &mut Record,
    file: &Path,
    program: &str,
    options: &[&str],
    dir: &Path,
) -> Result<()> {
    let out = Command::new("losetup")
        .args(["-r", "-f", "--show"])
        .arg(file)
        .output()
        .context("cannot run losetup")?;
    if !out.status.success() {
        bail!(
            "cannot attach a loop device to the image: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    record.loop_device = Some(dev.clone());
    record.save()?;
    let out = Command::new(program)
        .args(options)
        .arg(&dev)
        .arg(dir)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "cannot mount the image's filesystem at '{}': {program}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Release what a drive set up at `mountpoint`: its process is asked to stop (and waited
/// for), or, when it is gone, what it left is released here.
pub fn dismount(mountpoint: &Path) -> Result<()> {
    let Some(record) = Record::all()
        .into_iter()
        .find(|r| r.mountpoint == mountpoint)
    else {
        return Err(Refused(format!(
            "no image is mounted at '{}' by holdfast-agent",
            mountpoint.display()
        ))
        .into());
    };
    if record.alive() {
        let pid = nix::unistd::Pid::from_raw(record.pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .with_context(|| format!("cannot signal the serving process {}", record.pid))?;
        let started = Instant::now();
        while record.alive() && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if record.alive() {
            bail!(
                "the process serving '{}' ({}) did not stop within a minute",
                mountpoint.display(),
                record.pid
            );
        }
    }
    // Gone (killed, or it could not release everything): release what it left.
    if Record::path(record.pid).exists() {
        record.release()?;
    }
    Ok(())
}
