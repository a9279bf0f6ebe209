//! `image convert`: re-encode one image, or write the restored bytes raw.

use std::process::ExitCode;
use std::time::Instant;

use crate::outcome::ConvertedTo;
use anyhow::{Context, Result};
use holdfast_image::chain::Chain;
use holdfast_image::restore::{restore, FileTarget, RestoreOptions};
use holdfast_image::writer::WriteOptions;

use super::{open_chain, open_image, open_sink, secs};
use crate::cli::ConvertArgs;
use crate::exit::Refused;
use crate::output::Bar;
use crate::secret::{password, NEW_PASSWORD_ENV, PASSWORD_ENV};

/// Run.
pub fn run(a: ConvertArgs) -> Result<ExitCode> {
    let t0 = Instant::now();
    let password = password(a.password_file.as_deref(), PASSWORD_ENV)?;
    let creds = a.common.credentials_file.as_deref();
    let bar = Bar::new(&a.common);
    let to = if a.format == "raw" {
        let chain = open_chain(&a.image, creds, password.as_deref().map(|p| &p[..]))?;
        if a.output.exists() && !a.overwrite {
            return Err(Refused(format!(
                "'{}' already exists (use --overwrite to replace it)",
                a.output.display()
            ))
            .into());
        }
        let size = chain.point().header.source_size;
        let mut tmp = a.output.clone().into_os_string();
        tmp.push(".partial");
        let tmp = std::path::PathBuf::from(tmp);
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create '{}'", tmp.display()))?;
        file.set_len(size)?;
        drop(file);
        let target = FileTarget::open(&tmp, size)
            .with_context(|| format!("cannot open '{}'", tmp.display()))?;
        let r = restore(
            &chain,
            &target,
            &RestoreOptions {
                threads: a.common.threads,
                ..Default::default()
            },
            &bar,
            &crate::CANCEL,
        );
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        std::fs::rename(&tmp, &a.output)?;
        ConvertedTo::Raw { bytes: size }
    } else {
        let mut img = open_image(&a.image, creds)?;
        img.unlock(password.as_deref().map(|p| &p[..]))?;
        let cipher = if a.decrypt {
            holdfast_image::crypto::Cipher::None
        } else {
            a.encrypt.unwrap_or(img.header.cipher)
        };
        let new_password = password_or(a.new_password_file.as_deref(), password.clone())?;
        let opts = WriteOptions {
            compression_level: a
                .compression_level
                .unwrap_or(i32::from(img.header.compression_level)),
            split_size: a.split.unwrap_or(0),
            threads: a.common.threads,
            password: new_password,
            kdf: None,
        };
        let chain = Chain::single(img);
        let mut sink = open_sink(&a.output, creds, a.overwrite)?;
        let s = holdfast_image::convert::convert(
            &chain,
            cipher,
            &opts,
            sink.as_mut(),
            &bar,
            &crate::CANCEL,
        )?;
        ConvertedTo::Holdfast {
            encryption: cipher.name().to_owned(),
            summary: s,
        }
    };
    bar.finish();
    if a.common.json {
        crate::outcome::print(&crate::outcome::Converted {
            ok: true,
            output: a.output.display().to_string(),
            to,
            seconds: secs(t0.elapsed()),
        });
    } else {
        println!(
            "converted '{}' to '{}'",
            a.image.display(),
            a.output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn password_or(
    file: Option<&std::path::Path>,
    fallback: Option<zeroize::Zeroizing<Vec<u8>>>,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
    Ok(password(file, NEW_PASSWORD_ENV)?.or(fallback))
}
