//! The `image` subcommands, one module each.

pub mod convert;
pub mod create;
pub mod info;
pub mod merge;
pub mod restore;
pub mod validate;

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use holdfast_image::chain::{Chain, DirLocator};
use holdfast_image::image::Image;
use holdfast_image::parts::FileParts;
use holdfast_image::restore::FileTarget;

use crate::device::Device;
use crate::exit::Refused;

/// Open one image (structure checked, not unlocked).
pub fn open_image(path: &Path) -> Result<Image> {
    Ok(Image::open(Arc::new(FileParts::new(path)))?)
}

/// Open the chain ending at `path`, unlocked with `password`.
pub fn open_chain(path: &Path, password: Option<&[u8]>) -> Result<Chain> {
    let (locator, name) = DirLocator::for_image(path);
    Ok(Chain::open(&locator, &name, password)?)
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
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
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
    if !dev.is_block && dev.size < need {
        let f = OpenOptions::new().write(true).open(path);
        f.and_then(|f| f.set_len(need))
            .with_context(|| format!("cannot extend restore target '{}'", path.display()))?;
    }
    let target = FileTarget::open(path, dev.size.max(need)).with_context(|| {
        format!(
            "cannot open restore target '{}' for writing",
            path.display()
        )
    })?;
    Ok((target, dev))
}

/// Seconds as a float with millisecond precision.
pub fn secs(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}
