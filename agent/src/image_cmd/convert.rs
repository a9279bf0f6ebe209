//! `image convert`: re-encode one image, or write the restored bytes raw or as a virtual
//! disk (qcow2, VHD, VHDX).

use std::process::ExitCode;
use std::time::Instant;

use crate::outcome::{ConvertedTo, VirtualDisk};
use anyhow::{Context, Result};
use holdfast_image::blocks::BlockSource;
use holdfast_image::chain::{Chain, ChainBlocks};
use holdfast_image::restore::{restore, FileTarget, RestoreOptions};
use holdfast_image::vdisk::{qcow2::write_qcow2, vhd::write_vhd, vhdx::write_vhdx, Window};
use holdfast_image::writer::WriteOptions;

use super::{open_chain, open_image, open_sink, partition_range, secs};
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
    if a.partition.is_some() && a.format == "holdfast" {
        return Err(Refused(
            "--partition takes one partition out as a disk of its own: give --format raw, vhdx, qcow2 or vhd".into(),
        )
        .into());
    }
    let to = if a.format != "holdfast" {
        let chain = open_chain(&a.image, creds, password.as_deref().map(|p| &p[..]))?;
        let range = a
            .partition
            .map(|n| partition_range(&chain, n, &a.image))
            .transpose()?;
        if a.output.exists() && !a.overwrite {
            return Err(Refused(format!(
                "'{}' already exists (use --overwrite to replace it)",
                a.output.display()
            ))
            .into());
        }
        // Written under a temporary name and renamed when complete: a failed or cancelled
        // conversion leaves no file that looks whole.
        let mut tmp = a.output.clone().into_os_string();
        tmp.push(".partial");
        let tmp = std::path::PathBuf::from(tmp);
        let written = if a.format == "raw" {
            to_raw(&chain, range, &tmp, &a, &bar)
        } else {
            to_virtual_disk(&chain, range, &a.format, &tmp, &bar)
        };
        match written {
            Ok(to) => {
                std::fs::rename(&tmp, &a.output)
                    .with_context(|| format!("cannot rename '{}' to its name", tmp.display()))?;
                to
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
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
        let mut sink = open_sink(&a.output, creds, a.overwrite, None)?;
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

/// The restored bytes of the chain's point (or of its byte `range`), into the file `to`.
fn to_raw(
    chain: &Chain,
    range: Option<(u64, u64)>,
    to: &std::path::Path,
    a: &ConvertArgs,
    bar: &Bar,
) -> Result<ConvertedTo> {
    let size = range.map_or(chain.point().header.source_size, |(_, len)| len);
    let file = create_private(to)?;
    file.set_len(size)?;
    drop(file);
    let target =
        FileTarget::open(to, size).with_context(|| format!("cannot open '{}'", to.display()))?;
    restore(
        chain,
        &target,
        &RestoreOptions {
            threads: a.common.threads,
            range,
            ..Default::default()
        },
        bar,
        &crate::CANCEL,
    )?;
    Ok(ConvertedTo::Raw { bytes: size })
}

/// The chain's point (or its byte `range`) as a virtual disk (`qcow2`, `vhd` or `vhdx`),
/// into the file `to`.
fn to_virtual_disk(
    chain: &Chain,
    range: Option<(u64, u64)>,
    format: &str,
    to: &std::path::Path,
    bar: &Bar,
) -> Result<ConvertedTo> {
    let whole = ChainBlocks::new(chain, false)?;
    let window = range
        .map(|(start, len)| Window::new(&whole, start, len))
        .transpose()
        .context("the partition cannot be taken out block by block; convert the whole disk")?;
    let blocks: &dyn BlockSource = match &window {
        Some(w) => w,
        None => &whole,
    };
    let file = create_private(to)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let random = holdfast_image::crypto::random_array;
    let w = match format {
        "qcow2" => write_qcow2(blocks, &mut out, bar, &crate::CANCEL)?,
        "vhdx" => write_vhdx(
            blocks,
            &mut out,
            [random(), random(), random()],
            bar,
            &crate::CANCEL,
        )?,
        _ => {
            let created = holdfast_image::writer::now();
            write_vhd(blocks, &mut out, random(), created, bar, &crate::CANCEL)?
        }
    };
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write '{}'", to.display()))?;
    let disk = VirtualDisk {
        disk_bytes: w.disk_bytes,
        file_bytes: w.file_bytes,
        data_bytes: w.data_bytes,
    };
    Ok(match format {
        "qcow2" => ConvertedTo::Qcow2(disk),
        "vhdx" => ConvertedTo::Vhdx(disk),
        _ => ConvertedTo::Vhd(disk),
    })
}

/// Create `path` readable by its owner only: it holds the volume's contents, as the image.
fn create_private(path: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create '{}'", path.display()))
}

fn password_or(
    file: Option<&std::path::Path>,
    fallback: Option<zeroize::Zeroizing<Vec<u8>>>,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
    Ok(password(file, NEW_PASSWORD_ENV)?.or(fallback))
}
