//! `image merge`.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use holdfast_image::writer::WriteOptions;

use super::{open_chain, open_sink, secs};
use crate::cli::MergeArgs;
use crate::output::{bytes, Bar};
use crate::secret::{password, PASSWORD_ENV};

/// Run.
pub fn run(a: MergeArgs) -> Result<ExitCode> {
    let t0 = Instant::now();
    let password = password(a.password_file.as_deref(), PASSWORD_ENV)?;
    let creds = a.common.credentials_file.as_deref();
    let chain = open_chain(&a.image, creds, password.as_deref().map(|p| &p[..]))?;
    let cipher = chain.point().header.cipher;
    let opts = WriteOptions {
        compression_level: a.compression_level,
        split_size: a.split.unwrap_or(0),
        threads: a.common.threads,
        password: password.clone(),
        kdf: None,
    };
    let mut sink = open_sink(&a.output, creds, a.overwrite, None)?;
    let bar = Bar::new(&a.common);
    let s =
        holdfast_image::convert::merge(&chain, cipher, &opts, sink.as_mut(), &bar, &crate::CANCEL);
    bar.finish();
    let s = s?;
    if a.common.json {
        crate::outcome::print(&crate::outcome::Merged {
            ok: true,
            image: a.output.display().to_string(),
            merged: chain.images.iter().map(|i| i.name().to_owned()).collect(),
            summary: s.clone(),
            seconds: secs(t0.elapsed()),
        });
    } else {
        println!(
            "merged {} image(s) into full image '{}' ({}, {} parts)",
            chain.images.len(),
            a.output.display(),
            bytes(s.image_bytes),
            s.parts
        );
    }
    Ok(ExitCode::SUCCESS)
}
