//! `image ls` and `image extract`: files read straight out of any point of a chain, on any
//! target, without restoring the volume: through a drive ([`crate::drive`]) mounted in a
//! private folder for the command and released after.
//!
//! Paths are taken inside the image and never leave it: a symbolic link met on the way is not
//! followed (it could point anywhere on this machine); it is listed, or extracted as a link.
//! Extracted files keep their contents, mode, owner, group and times; symbolic links and hard
//! links stay links; device nodes and FIFOs are made again; an existing file is not replaced
//! unless asked.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use holdfast_proto::{FileEntry, FileKind, Listing, TreeTotal};
use serde::{Deserialize, Serialize};

use super::open_chain;
use crate::cli::{ExtractArgs, LsArgs, PointArgs};
use crate::drive::{state_dir, Drive};
use crate::exit::Refused;
use crate::secret::{password, PASSWORD_ENV};

/// `image ls --json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Listed {
    pub ok: bool,
    pub image: String,
    #[serde(flatten)]
    pub listing: Listing,
}

/// `image extract --json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Extracted {
    pub ok: bool,
    pub image: String,
    pub to: String,
    pub files: u64,
    pub folders: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub special: u64,
    pub bytes: u64,
}

/// A drive of `image` (of `partition` for a disk) mounted in a private folder, removed with
/// it.
pub(super) struct Private {
    drive: Option<Drive>,
    pub(super) dir: PathBuf,
}

impl Private {
    pub(super) fn open(point: &PointArgs, creds: Option<&Path>) -> Result<Self> {
        let (image, partition) = (&point.image, point.partition);
        let password = password(point.password_file.as_deref(), PASSWORD_ENV)?;
        let chain = open_chain(image, creds, password.as_deref().map(|p| &p[..]))?;
        let dir = state_dir()?.join(format!("{}.mnt", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create '{}'", dir.display()))?;
        let drive = Drive::mount(chain, &image.display().to_string(), &dir, partition, false);
        match drive {
            Ok(d) => Ok(Self {
                drive: Some(d),
                dir,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// `path` inside the image as a path here, every component checked: no `..` above the
    /// root, no symbolic link followed on the way.
    pub(super) fn resolve(&self, path: &str) -> Result<PathBuf> {
        let mut here = self.dir.clone();
        let mut inside = PathBuf::from("/");
        for c in Path::new(path).components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir => {
                    if inside.pop() {
                        here.pop();
                    }
                }
                Component::Normal(name) => {
                    let meta = std::fs::symlink_metadata(&here)
                        .with_context(|| format!("'{}' is not in the image", inside.display()))?;
                    if meta.file_type().is_symlink() {
                        let to = std::fs::read_link(&here).unwrap_or_default();
                        return Err(Refused(format!(
                            "'{}' is a symbolic link to '{}' in the image: give the path it points to",
                            inside.display(),
                            to.display()
                        ))
                        .into());
                    }
                    here.push(name);
                    inside.push(name);
                }
                Component::Prefix(_) => bail!("'{path}' is not a path inside the image"),
            }
        }
        std::fs::symlink_metadata(&here)
            .with_context(|| format!("'{}' is not in the image", inside.display()))?;
        Ok(here)
    }

    pub(super) fn close(mut self) -> Result<()> {
        let released = self.drive.take().map_or(Ok(()), Drive::release);
        let _ = std::fs::remove_dir(&self.dir);
        released
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        drop(self.drive.take());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

pub(super) fn kind_of(ft: std::fs::FileType) -> FileKind {
    if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_block_device() {
        FileKind::Block
    } else if ft.is_char_device() {
        FileKind::Char
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else if ft.is_socket() {
        FileKind::Socket
    } else {
        FileKind::File
    }
}

/// What `path` holds all the way down (each hard-linked file counted once).
fn tree_total(path: &Path) -> Result<TreeTotal> {
    fn walk(
        path: &Path,
        seen: &mut std::collections::HashSet<u64>,
        t: &mut TreeTotal,
    ) -> Result<()> {
        if crate::CANCEL.is_cancelled() {
            bail!("cancelled");
        }
        let m = std::fs::symlink_metadata(path)
            .with_context(|| format!("cannot read '{}' in the image", path.display()))?;
        if m.is_dir() {
            t.folders += 1;
            for e in std::fs::read_dir(path)
                .with_context(|| format!("cannot list '{}' in the image", path.display()))?
            {
                walk(&e?.path(), seen, t)?;
            }
        } else if m.is_file() && (m.nlink() < 2 || seen.insert(m.ino())) {
            t.files += 1;
            t.bytes += m.len();
        }
        Ok(())
    }
    let mut t = TreeTotal::default();
    walk(path, &mut std::collections::HashSet::new(), &mut t)?;
    Ok(t)
}

fn entry(name: String, path: &Path) -> Result<FileEntry> {
    let m = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot read '{}' in the image", path.display()))?;
    let modified = std::time::UNIX_EPOCH
        + std::time::Duration::new(
            m.mtime().max(0) as u64,
            m.mtime_nsec().clamp(0, 999_999_999) as u32,
        );
    Ok(FileEntry {
        name,
        kind: kind_of(m.file_type()),
        size: m.len(),
        mode: format!("{:04o}", m.mode() & 0o7777),
        uid: m.uid(),
        gid: m.gid(),
        modified: humantime::format_rfc3339_seconds(modified).to_string(),
        target: m
            .file_type()
            .is_symlink()
            .then(|| std::fs::read_link(path).ok())
            .flatten()
            .map(|t| t.display().to_string()),
        inode: m.ino(),
        links: m.nlink(),
    })
}

/// Run `image ls`.
pub fn ls(a: LsArgs) -> Result<ExitCode> {
    let private = Private::open(&a.point, a.common.credentials_file.as_deref())?;
    let path = a.path.clone().unwrap_or_else(|| "/".into());
    let here = private.resolve(&path)?;
    let mut entries = Vec::new();
    if std::fs::symlink_metadata(&here)?.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&here)
            .with_context(|| format!("cannot list '{path}' in the image"))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            entries.push(entry(n.to_string_lossy().into_owned(), &here.join(&n))?);
        }
    } else {
        entries.push(entry(path.clone(), &here)?);
    }
    let total = a.total.then(|| tree_total(&here)).transpose()?;
    private.close()?;
    if a.common.json {
        crate::outcome::print(&Listed {
            ok: true,
            image: a.point.image.display().to_string(),
            listing: Listing {
                path,
                entries,
                total,
            },
        });
    } else {
        for e in &entries {
            let target = e
                .target
                .as_ref()
                .map(|t| format!(" -> {t}"))
                .unwrap_or_default();
            let kind = serde_json::to_value(e.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            println!(
                "{kind:<7} {} {:>6} {:>6} {:>14} {} {}{target}",
                e.mode, e.uid, e.gid, e.size, e.modified, e.name
            );
        }
        if let Some(t) = total {
            println!(
                "total: {} file(s), {} folder(s), {} bytes",
                t.files, t.folders, t.bytes
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies a tree out of the image, keeping what a file is.
struct Copier {
    overwrite: bool,
    /// (inode) → where it was extracted first: its other names become hard links to it.
    seen: HashMap<u64, PathBuf>,
    done: Extracted,
}

impl Copier {
    fn copy(&mut self, from: &Path, to: &Path) -> Result<()> {
        if crate::CANCEL.is_cancelled() {
            bail!("cancelled");
        }
        let m = std::fs::symlink_metadata(from)
            .with_context(|| format!("cannot read '{}' in the image", from.display()))?;
        let ft = m.file_type();
        if ft.is_dir() {
            match std::fs::symlink_metadata(to) {
                Ok(t) if t.is_dir() => {}
                Ok(_) => {
                    return Err(
                        Refused(format!("'{}' exists and is not a folder", to.display())).into(),
                    )
                }
                Err(_) => std::fs::create_dir(to)
                    .with_context(|| format!("cannot create '{}'", to.display()))?,
            }
            let mut names: Vec<_> = std::fs::read_dir(from)
                .with_context(|| format!("cannot list '{}' in the image", from.display()))?
                .flatten()
                .map(|e| e.file_name())
                .collect();
            names.sort();
            for n in names {
                self.copy(&from.join(&n), &to.join(&n))?;
            }
            self.done.folders += 1;
            // After its contents: writing them changed the folder's times.
            return keep_attributes(to, &m);
        }
        if std::fs::symlink_metadata(to).is_ok() {
            if !self.overwrite {
                return Err(Refused(format!(
                    "'{}' exists; extract elsewhere or with --overwrite",
                    to.display()
                ))
                .into());
            }
            std::fs::remove_file(to)
                .with_context(|| format!("cannot replace '{}'", to.display()))?;
        }
        if m.nlink() > 1 && !ft.is_dir() {
            if let Some(first) = self.seen.get(&m.ino()) {
                std::fs::hard_link(first, to)
                    .with_context(|| format!("cannot link '{}'", to.display()))?;
                self.done.hard_links += 1;
                return Ok(());
            }
            self.seen.insert(m.ino(), to.to_owned());
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(from)?;
            std::os::unix::fs::symlink(&target, to)
                .with_context(|| format!("cannot create the link '{}'", to.display()))?;
            self.done.symlinks += 1;
        } else if ft.is_file() {
            let n = std::fs::copy(from, to)
                .with_context(|| format!("cannot extract '{}'", from.display()))?;
            self.done.files += 1;
            self.done.bytes += n;
        } else if ft.is_socket() {
            eprintln!(
                "holdfast-agent: warning: '{}' is a socket: not extracted (a program makes it when it runs)",
                from.display()
            );
            return Ok(());
        } else {
            let kind = if ft.is_fifo() {
                nix::sys::stat::SFlag::S_IFIFO
            } else if ft.is_block_device() {
                nix::sys::stat::SFlag::S_IFBLK
            } else {
                nix::sys::stat::SFlag::S_IFCHR
            };
            nix::sys::stat::mknod(
                to,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(m.mode() & 0o7777),
                m.rdev(),
            )
            .with_context(|| format!("cannot make '{}'", to.display()))?;
            self.done.special += 1;
        }
        keep_attributes(to, &m)
    }
}

/// Give `to` the owner, group, mode and times of `m` (a link: owner and times only).
fn keep_attributes(to: &Path, m: &std::fs::Metadata) -> Result<()> {
    std::os::unix::fs::lchown(to, Some(m.uid()), Some(m.gid()))
        .with_context(|| format!("cannot set the owner of '{}'", to.display()))?;
    if !m.file_type().is_symlink() {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(m.mode() & 0o7777))
            .with_context(|| format!("cannot set the mode of '{}'", to.display()))?;
    }
    let time = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
    nix::sys::stat::utimensat(
        None,
        to,
        &time(m.atime(), m.atime_nsec()),
        &time(m.mtime(), m.mtime_nsec()),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .with_context(|| format!("cannot set the times of '{}'", to.display()))?;
    Ok(())
}

/// Run `image extract`.
pub fn extract(a: ExtractArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&a.to)
        .with_context(|| format!("cannot create '{}'", a.to.display()))?;
    let private = Private::open(&a.point, a.common.credentials_file.as_deref())?;
    let mut copier = Copier {
        overwrite: a.overwrite,
        seen: HashMap::new(),
        done: Extracted::default(),
    };
    for path in &a.paths {
        let from = private.resolve(path)?;
        let name = from
            .strip_prefix(&private.dir)
            .ok()
            .and_then(|p| p.file_name().map(ToOwned::to_owned))
            .unwrap_or_else(|| "root".into());
        copier.copy(&from, &a.to.join(name))?;
    }
    private.close()?;
    let done = Extracted {
        ok: true,
        image: a.point.image.display().to_string(),
        to: a.to.display().to_string(),
        ..copier.done
    };
    if a.common.json {
        crate::outcome::print(&done);
    } else {
        println!(
            "extracted {} file(s) ({} bytes), {} folder(s), {} symbolic link(s), {} hard link(s) to '{}'",
            done.files,
            done.bytes,
            done.folders,
            done.symlinks,
            done.hard_links,
            a.to.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
