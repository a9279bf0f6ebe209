//! The `image` subcommands, one module each.

pub mod browse;
pub mod convert;
pub mod create;
pub mod delete;
pub mod export;
pub mod info;
pub mod merge;
pub mod mount;
pub mod restore;
pub mod salvage;
pub mod validate;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use holdfast_image::chain::{Chain, DirLocator};
use holdfast_image::image::Image;
use holdfast_image::io::FileReadAt;
use holdfast_image::parts::{FileParts, FileSink, PartSink};
use holdfast_image::restore::{FileTarget, WriteAt};
use holdfast_image::ImageError;

use crate::device::Device;
use crate::exit::Refused;
use crate::storage::{place, place_locked, Place, TargetLocator, TargetParts, TargetSink};
use holdfast_targets::s3config::ObjectLock;

/// Open one image, a local path or a target URL (structure checked, not unlocked).
pub fn open_image(spec: &Path, creds: Option<&Path>) -> Result<Image> {
    Ok(match place(spec, creds)? {
        Place::Local(path) => Image::open(Arc::new(FileParts::new(path)))?,
        Place::Remote(r) => Image::open(Arc::new(TargetParts::new(r)))?,
    })
}

/// Open the chain ending at `spec`, unlocked with `password`; with `structure_only`, encrypted
/// images are unlocked only when a password is given.
pub fn open_chain_with(
    spec: &Path,
    creds: Option<&Path>,
    password: Option<&[u8]>,
    structure_only: bool,
) -> Result<Chain> {
    let open = if structure_only {
        Chain::open_structure
    } else {
        Chain::open
    };
    Ok(match place(spec, creds)? {
        Place::Local(path) => {
            let (locator, name) = DirLocator::for_image(&path);
            open(&locator, &name, password)?
        }
        Place::Remote(r) => {
            let name = r.name.clone();
            open(&TargetLocator(r), &name, password)?
        }
    })
}

/// Open the chain ending at `spec`, unlocked with `password`.
pub fn open_chain(spec: &Path, creds: Option<&Path>, password: Option<&[u8]>) -> Result<Chain> {
    open_chain_with(spec, creds, password, false)
}

/// Where a new image goes: local files (direct I/O, rename on commit) or a target; with
/// `lock`, every part is locked against deletion for its period (S3 Object Lock).
pub fn open_sink(
    spec: &Path,
    creds: Option<&Path>,
    overwrite: bool,
    lock: Option<ObjectLock>,
) -> Result<Box<dyn PartSink>> {
    Ok(match place_locked(spec, creds, lock)? {
        Place::Local(path) => Box::new(FileSink::create(path, overwrite).map_err(|e| match e {
            ImageError::Invalid(m) => anyhow::Error::new(Refused(m)),
            e => e.into(),
        })?),
        Place::Remote(r) => Box::new(TargetSink::create(r, overwrite)?),
    })
}

/// True when `spec` is a target URL rather than a local path.
pub fn is_remote(spec: &Path) -> bool {
    spec.to_string_lossy().contains("://") && !spec.to_string_lossy().starts_with("file://")
}

/// Open a restore target: refuse mounted devices and devices smaller than `need`; create or
/// extend regular files.
pub fn open_target(path: &Path, need: u64, sources: &[&Path]) -> Result<(FileTarget, Device)> {
    for s in sources {
        if let (Ok(a), Ok(b)) = (std::fs::canonicalize(s), std::fs::canonicalize(path)) {
            if a == b {
                return Err(Refused(format!(
                    "restore target '{}' is the image itself",
                    path.display()
                ))
                .into());
            }
        }
    }
    if !path.exists() {
        // Readable by its owner only, as the image it comes from.
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create restore target '{}'", path.display()))?;
        f.set_len(need)
            .with_context(|| format!("cannot size restore target '{}'", path.display()))?;
    }
    let dev = Device::inspect(path)?;
    let mounts = dev.mounts()?;
    if let Some(m) = mounts.first() {
        return Err(Refused(format!(
            "restore target '{}' is mounted on '{}'; unmount it first",
            path.display(),
            m.mount_point.display()
        ))
        .into());
    }
    if dev.is_block && dev.size < need {
        return Err(Refused(format!(
            "restore target '{}' is too small: the image needs {need} bytes, the device has {}",
            path.display(),
            dev.size
        ))
        .into());
    }
    // A shorter file is extended once every frame is checked, just before the first write.
    let open = if !dev.is_block && dev.size < need {
        FileTarget::open_growing
    } else {
        FileTarget::open
    };
    let target = open(path, dev.size.max(need)).with_context(|| {
        format!(
            "cannot open restore target '{}' for writing",
            path.display()
        )
    })?;
    Ok((target, dev))
}

/// The byte range (start, length) of partition `n` of the disk in the chain's image
/// `image`; refused, naming what there is, when there is no such partition.
pub fn partition_range(chain: &Chain, n: u32, image: &Path) -> Result<(u64, u64)> {
    let source = &chain.point().meta.source;
    if source.partition_table.is_none() {
        return Err(Refused(format!(
            "'{}' holds a volume, not a disk: leave out --partition",
            image.display()
        ))
        .into());
    }
    let p = source
        .partitions
        .iter()
        .find(|p| p.number == n)
        .ok_or_else(|| {
            let numbers: Vec<String> = source
                .partitions
                .iter()
                .map(|p| p.number.to_string())
                .collect();
            Refused(format!(
                "the disk in '{}' has no partition {n} (it has {})",
                image.display(),
                numbers.join(", ")
            ))
        })?;
    Ok((p.start, p.len))
}

/// A whole disk restored or cloned onto a larger one: move the GPT backup to the new end.
pub fn relocate_gpt(path: &std::path::Path, target: &FileTarget, sector_size: u32) -> Result<()> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read back '{}'", path.display()))?;
    let disk = FileReadAt::new(file, target.size());
    let sector_size = if sector_size == 0 { 512 } else { sector_size };
    let writes = holdfast_image::disk::gpt_relocation(&disk, sector_size)
        .with_context(|| format!("cannot grow the restored GPT on '{}'", path.display()))?;
    for (offset, bytes) in writes.unwrap_or_default() {
        target.write_all_at(&bytes, offset).with_context(|| {
            format!(
                "cannot write the GPT on '{}' at offset {offset}",
                path.display()
            )
        })?;
    }
    target
        .sync()
        .with_context(|| format!("cannot flush '{}'", path.display()))?;
    Ok(())
}

/// Seconds as a float with millisecond precision.
pub fn secs(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// The temporary name a file restored or salvaged to `target` is written under, beside it,
/// until it is complete (`.NAME.holdfast-partial`).
pub fn partial_name(target: &Path) -> Result<std::path::PathBuf> {
    let name = target
        .file_name()
        .with_context(|| format!("'{}' has no file name", target.display()))?;
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(".holdfast-partial");
    Ok(target.with_file_name(temp))
}
