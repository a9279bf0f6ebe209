//! `image salvage`: what is intact of a damaged full image, into a new file.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use holdfast_image::parts::{FileParts, PartStore};
use holdfast_image::restore::FileTarget;
use holdfast_image::salvage::{read_header, salvage, SalvageReport};

use super::{partial_name, secs};
use crate::cli::SalvageArgs;
use crate::exit::{Refused, DAMAGED};
use crate::output::{bytes, Bar};
use crate::secret::{password, PASSWORD_ENV};
use crate::storage::{place, Place, TargetParts};

/// Run.
pub fn run(a: SalvageArgs) -> Result<ExitCode> {
    let t0 = Instant::now();
    if a.target.symlink_metadata().is_ok() {
        return Err(Refused(format!(
            "'{}' exists: salvage writes a new file (what it cannot recover reads as zeros, \
             which must not land on data that is there)",
            a.target.display()
        ))
        .into());
    }
    let password = password(a.password_file.as_deref(), PASSWORD_ENV)?;
    let store: Arc<dyn PartStore> = match place(&a.image, a.common.credentials_file.as_deref())? {
        Place::Local(path) => Arc::new(FileParts::new(path)),
        Place::Remote(r) => Arc::new(TargetParts::new(r)),
    };
    let (header, _) = read_header(&*store)?;
    let temp = partial_name(&a.target)?;
    let written = (|| -> Result<SalvageReport> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .with_context(|| format!("cannot create '{}'", temp.display()))?;
        file.set_len(header.source_size)
            .with_context(|| format!("cannot size '{}'", temp.display()))?;
        drop(file);
        let out = FileTarget::open(&temp, header.source_size)
            .with_context(|| format!("cannot open '{}'", temp.display()))?;
        let bar = Bar::new(&a.common);
        let report = salvage(
            store,
            password.as_deref().map(|p| &p[..]),
            &out,
            &bar,
            &crate::CANCEL,
        );
        bar.finish();
        Ok(report?)
    })();
    let report = match written {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };
    std::fs::rename(&temp, &a.target).with_context(|| {
        format!(
            "cannot name the salvaged file '{}'; it is kept as '{}'",
            a.target.display(),
            temp.display()
        )
    })?;
    let whole = report.is_whole();
    if a.common.json {
        crate::outcome::print(&crate::outcome::Salvaged {
            ok: whole,
            target: a.target.display().to_string(),
            report: report.clone(),
            seconds: secs(t0.elapsed()),
        });
    } else {
        println!(
            "salvaged '{}' into '{}': {} frames, {} blocks, {} of data",
            report.image,
            a.target.display(),
            report.frames,
            report.blocks,
            bytes(report.data_bytes)
        );
        for s in &report.skipped {
            println!(
                "  skipped image bytes {}..{} ({}): blocks {}..={} may be lost",
                s.image_offset, s.image_end, s.detail, s.first_block, s.last_block
            );
        }
    }
    if whole {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "holdfast-agent: error: '{}' is damaged: {} stretch(es) could not be salvaged; '{}' holds the rest (what is missing reads as zeros)",
        a.image.display(),
        report.skipped.len(),
        a.target.display()
    );
    Ok(ExitCode::from(DAMAGED))
}
