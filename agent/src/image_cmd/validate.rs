//! `image validate`.

use std::process::ExitCode;

use anyhow::Result;
use holdfast_image::validate::{validate, Level, ValidateReport};

use super::{open_chain_with, open_image};
use crate::cli::ValidateArgs;
use crate::exit::DAMAGED;
use crate::output::Bar;
use crate::secret::{password, PASSWORD_ENV};

/// Run.
pub fn run(a: ValidateArgs) -> Result<ExitCode> {
    let password = password(a.password_file.as_deref(), PASSWORD_ENV)?;
    let pw = password.as_deref().map(|p| &p[..]);
    let images = if a.chain {
        open_chain_with(&a.image, a.common.credentials_file.as_deref(), pw, true)?.images
    } else {
        let mut img = open_image(&a.image, a.common.credentials_file.as_deref())?;
        if img.is_encrypted() && pw.is_some() {
            img.unlock(pw)?;
        }
        vec![img]
    };
    let bar = Bar::new(&a.common);
    let mut reports = Vec::new();
    for img in &images {
        let r = validate(img, a.common.threads, &bar, &crate::CANCEL);
        if r.is_err() {
            bar.finish();
        }
        reports.push(r?);
    }
    bar.finish();
    let ok = reports.iter().all(|r| r.is_ok());
    if a.common.json {
        // The image named is the newest of a chain (opened last).
        let report = reports
            .last()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no image was validated"))?;
        crate::outcome::print(&crate::outcome::Validated {
            ok,
            report,
            chain: a.chain.then(|| reports.clone()),
        });
    } else {
        for report in &reports {
            print_report(report);
        }
    }
    if !ok {
        let damaged: usize = reports.iter().map(|r| r.damage.len()).sum();
        let records: Vec<&str> = reports
            .iter()
            .flat_map(|r| r.records.iter().map(String::as_str))
            .collect();
        eprintln!(
            "holdfast-agent: error: '{}' is damaged: {damaged} damaged ranges{}",
            a.image.display(),
            match records.is_empty() {
                true => String::new(),
                false => format!("; {}", records.join("; ")),
            }
        );
        return Ok(ExitCode::from(DAMAGED));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &ValidateReport) {
    println!(
        "{}: {} check of {} frames, {} blocks verified: {}",
        report.image,
        match report.level {
            Level::Full => "full",
            Level::Structure => "structure",
        },
        report.frames,
        report.blocks_verified,
        if report.is_ok() {
            "no damage"
        } else {
            "DAMAGED"
        }
    );
    if report.level == Level::Structure {
        println!("(encrypted image checked without the password: stored checksums only; give the password to check every block)");
    }
    for d in &report.damage {
        println!(
            "  blocks {}..={} (source bytes {}..{}), frame at image offset {}: {}",
            d.first_block, d.last_block, d.start, d.end, d.image_offset, d.detail
        );
    }
    for r in &report.records {
        println!("  {r}");
    }
}
