//! `image restore`.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use holdfast_image::io::FileReadAt;
use holdfast_image::restore::{restore, RestoreOptions};
use holdfast_image::restore::{FileTarget, WriteAt};
use serde_json::json;

use super::{open_chain, open_target, secs};
use crate::cli::RestoreArgs;
use crate::output::{bytes, print_json, Bar};
use crate::secret::{password, PASSWORD_ENV};

/// A whole disk restored onto a larger one: move the GPT backup to the new end.
fn relocate_gpt(path: &std::path::Path, target: &FileTarget, sector_size: u32) -> Result<()> {
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

/// Run.
pub fn run(a: RestoreArgs) -> Result<ExitCode> {
    let t0 = Instant::now();
    let password = password(a.password_file.as_deref(), PASSWORD_ENV)?;
    let chain = open_chain(
        &a.image,
        a.common.credentials_file.as_deref(),
        password.as_deref().map(|p| &p[..]),
    )?;
    let need = chain.point().header.source_size;
    let (target, dev) = open_target(&a.target, need, &[a.image.as_path()])?;
    let opts = RestoreOptions {
        zero_unused: a.zero_unused,
        skip_precheck: a.skip_precheck,
        threads: a.common.threads,
    };
    let bar = Bar::new(&a.common);
    let summary = restore(&chain, &target, &opts, &bar, &crate::CANCEL);
    bar.finish();
    let summary = summary?;
    let meta = &chain.point().meta.source;
    let gpt_moved = meta
        .partition_table
        .as_ref()
        .is_some_and(|t| t.kind == "gpt")
        && target.size() > need;
    if gpt_moved {
        relocate_gpt(&a.target, &target, meta.sector_size)?;
    }
    if dev.is_block && chain.point().meta.source.partition_table.is_some() {
        // Let the kernel see the restored partition table (best effort).
        let _ = std::process::Command::new("partx")
            .arg("-u")
            .arg(&a.target)
            .output();
    }
    let elapsed = t0.elapsed();
    let chain_names: Vec<String> = chain.images.iter().map(|i| i.name().to_owned()).collect();
    if a.common.json {
        print_json(&json!({
            "ok": true,
            "image": a.image.display().to_string(),
            "target": a.target.display().to_string(),
            "chain": chain_names,
            "source_size": need,
            "data_bytes": summary.data_bytes,
            "zero_bytes": summary.zero_bytes,
            "frames": summary.frames,
            "seconds": secs(elapsed),
            "gpt_backup_moved_to_end": gpt_moved,
        }));
    } else {
        println!(
            "restored '{}' to '{}': {} of data, {} zeroed, from {} image(s) in {:.1} s",
            a.image.display(),
            a.target.display(),
            bytes(summary.data_bytes),
            bytes(summary.zero_bytes),
            chain_names.len(),
            elapsed.as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
