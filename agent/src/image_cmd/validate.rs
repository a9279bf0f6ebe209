//! `image validate`.

use std::process::ExitCode;

use anyhow::Result;
use holdfast_image::validate::validate;
use serde_json::json;

use super::open_image;
use crate::cli::ValidateArgs;
use crate::exit::DAMAGED;
use crate::output::{print_json, Bar};
use crate::secret::{password, PASSWORD_ENV};

/// Run.
pub fn run(a: ValidateArgs) -> Result<ExitCode> {
    let password = password(a.password_file.as_deref(), PASSWORD_ENV)?;
    let mut img = open_image(&a.image)?;
    if img.is_encrypted() {
        if let Some(p) = &password {
            img.unlock(Some(p))?;
        }
    }
    let bar = Bar::new(a.common.json);
    let report = validate(&img, a.common.threads, &bar, &crate::CANCEL);
    bar.finish();
    let report = report?;
    if a.common.json {
        print_json(&json!({ "ok": report.is_ok(), "report": report }));
    } else {
        println!(
            "{}: {} check of {} frames, {} blocks verified: {}",
            report.image,
            report.level,
            report.frames,
            report.blocks_verified,
            if report.is_ok() {
                "no damage"
            } else {
                "DAMAGED"
            }
        );
        if report.level == "structure" {
            println!("(encrypted image checked without the password: stored checksums only; give the password to check every block)");
        }
        for d in &report.damage {
            println!(
                "  blocks {}..={} (source bytes {}..{}), frame at image offset {}: {}",
                d.first_block, d.last_block, d.start, d.end, d.image_offset, d.detail
            );
        }
    }
    if !report.is_ok() {
        eprintln!(
            "holdfast-agent: error: '{}' is damaged: {} damaged ranges",
            report.image,
            report.damage.len()
        );
        return Ok(ExitCode::from(DAMAGED));
    }
    Ok(ExitCode::SUCCESS)
}
