//! `image restore`.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use holdfast_image::restore::{restore, RestoreOptions};
use serde_json::json;

use super::{open_chain, open_target, secs};
use crate::cli::RestoreArgs;
use crate::output::{bytes, print_json, Bar};
use crate::secret::{password, PASSWORD_ENV};

/// Run.
pub fn run(a: RestoreArgs) -> Result<ExitCode> {
    let t0 = Instant::now();
    let password = password(a.password_file.as_deref(), PASSWORD_ENV)?;
    let chain = open_chain(&a.image, password.as_deref().map(|p| &p[..]))?;
    let need = chain.point().header.source_size;
    let (target, dev) = open_target(&a.target, need, &[a.image.as_path()])?;
    let opts = RestoreOptions {
        zero_unused: a.zero_unused,
        skip_precheck: a.skip_precheck,
        threads: a.common.threads,
    };
    let bar = Bar::new(a.common.json);
    let summary = restore(&chain, &target, &opts, &bar, &crate::CANCEL);
    bar.finish();
    let summary = summary?;
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
