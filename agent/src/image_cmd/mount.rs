//! `image mount` and `image dismount`: any point of a chain, on any target, as a read-only
//! drive (see [`crate::drive`]), served in the foreground until Ctrl-C, SIGTERM or
//! `image dismount`.

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::open_chain;
use crate::cli::{DismountArgs, MountArgs};
use crate::drive::{dismount as release_at, Drive};
use crate::exit::Refused;
use crate::secret::{password, PASSWORD_ENV};

/// Run `image mount`.
pub fn run(a: MountArgs) -> Result<ExitCode> {
    let password = password(a.password_file.as_deref(), PASSWORD_ENV)?;
    let mountpoint = std::fs::canonicalize(&a.mountpoint)
        .with_context(|| format!("cannot find the mount point '{}'", a.mountpoint.display()))?;
    if !mountpoint.is_dir() {
        return Err(Refused(format!("'{}' is not a folder", mountpoint.display())).into());
    }
    let chain = open_chain(
        &a.image,
        a.common.credentials_file.as_deref(),
        password.as_deref().map(|p| &p[..]),
    )?;
    let image = a.image.display().to_string();
    let drive = Drive::mount(chain, &image, &mountpoint, a.partition, a.raw)?;
    if a.common.json {
        crate::outcome::print(&crate::outcome::Mounted {
            ok: true,
            image,
            mountpoint: mountpoint.display().to_string(),
            files: drive.files.clone(),
            filesystem: drive.filesystem.clone(),
            loop_device: drive.loop_device().map(str::to_owned),
            pid: std::process::id(),
        });
    } else {
        let served = match &drive.filesystem {
            Some(fs) => format!("its {fs} filesystem"),
            None => format!("as {}", drive.files.join(", ")),
        };
        println!(
            "mounted '{image}' read-only at '{}', {served}; Ctrl-C or `holdfast-agent image dismount --mountpoint {}` releases it",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    drive.serve();
    drive.release()?;
    if !a.common.json {
        println!("released '{}'", mountpoint.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `image dismount`.
pub fn dismount(a: DismountArgs) -> Result<ExitCode> {
    let mountpoint = std::fs::canonicalize(&a.mountpoint)
        .with_context(|| format!("cannot find '{}'", a.mountpoint.display()))?;
    release_at(&mountpoint)?;
    if a.common.json {
        crate::outcome::print(&serde_json::json!({
            "ok": true,
            "mountpoint": mountpoint.display().to_string(),
        }));
    } else {
        println!("released '{}'", mountpoint.display());
    }
    Ok(ExitCode::SUCCESS)
}
