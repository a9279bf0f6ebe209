//! `image restore`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use holdfast_image::chain::ChainBlocks;
use holdfast_image::restore::WriteAt;
use holdfast_image::restore::{restore, RestoreOptions};

use super::{open_chain, open_target, partition_range, relocate_gpt, secs};
use crate::cli::RestoreArgs;
use crate::exit::Refused;
use crate::luks::{check_key, ContentsTarget, EncryptedTarget, Key};
use crate::output::{bytes, Bar};
use crate::secret::{password, PASSWORD_ENV};

/// A restore into a file that does not exist yet: written under a temporary name beside it
/// and renamed when complete, so a failed or cancelled restore leaves no file that looks
/// restored. With nothing existing to protect, the checksum pass before writing is not needed
/// (one read of the image less, which halves a restore from a network target).
struct NewFile {
    temp: PathBuf,
    done: bool,
}

impl NewFile {
    /// `Some` when `target` does not exist.
    fn for_target(target: &Path) -> Result<Option<Self>> {
        if target.symlink_metadata().is_ok() {
            return Ok(None);
        }
        let temp = super::partial_name(target)?;
        // A leftover of an earlier restore that died (power loss, kill -9) is replaced.
        let _ = std::fs::remove_file(&temp);
        Ok(Some(Self { temp, done: false }))
    }

    /// Give the restored file its name, unless one appeared meanwhile.
    fn complete(mut self, target: &Path) -> Result<()> {
        let named = match std::fs::hard_link(&self.temp, target) {
            Ok(()) => std::fs::remove_file(&self.temp),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
            // File systems without hard links (FAT, exFAT): rename.
            Err(_) if target.symlink_metadata().is_err() => std::fs::rename(&self.temp, target),
            Err(e) => Err(e),
        };
        // Done either way: on failure the restored data stays under the temporary name.
        self.done = true;
        named.with_context(|| {
            format!(
                "cannot name the restored file '{}'; the restored data is kept in '{}'",
                target.display(),
                self.temp.display()
            )
        })
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
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
    let source_size = chain.point().header.source_size;
    let decrypted = chain.point().meta.source.decrypted.clone();
    let luks_key = Key::given(
        a.luks_passphrase_file.as_deref(),
        a.luks_key_file.as_deref(),
    )?;
    let need = match &decrypted {
        None if luks_key.is_some() || a.decrypted => {
            return Err(Refused(format!(
                "'{}' does not hold the decrypted contents of a LUKS volume: restore it without \
                 a LUKS passphrase or --decrypted",
                a.image.display()
            ))
            .into())
        }
        Some(_) if luks_key.is_none() && !a.decrypted => {
            return Err(Refused(format!(
                "'{}' holds the decrypted contents of a LUKS volume: give the volume's \
                 passphrase (--luks-passphrase-file or --luks-key-file) to restore it \
                 encrypted as it was, or --decrypted to restore the filesystem inside without \
                 encryption",
                a.image.display()
            ))
            .into())
        }
        Some(d) if a.decrypted => d.data_size,
        _ => source_size,
    };
    // One partition of a disk image: its byte range.
    let range = a
        .partition
        .map(|n| partition_range(&chain, n, &a.image))
        .transpose()?;
    let need = range.map_or(need, |(_, len)| len);
    // The LUKS header, read (its frames checked) and tried with the key before anything
    // is written.
    let header = match (&decrypted, &luks_key) {
        (Some(d), Some(key)) => {
            let header = ChainBlocks::new(&chain, false)?.read_bytes(0, d.data_offset)?;
            check_key(&header, key)?;
            Some(header)
        }
        _ => None,
    };
    let new_file = NewFile::for_target(&a.target)?;
    let write_to = new_file
        .as_ref()
        .map_or(a.target.as_path(), |n| n.temp.as_path());
    let (target, dev) = open_target(write_to, need, &[a.image.as_path()])?;
    let opts = RestoreOptions {
        zero_unused: a.zero_unused,
        // Nothing is overwritten in a new file: frames are checked as they are decoded.
        skip_precheck: a.skip_precheck || new_file.is_some(),
        threads: a.common.threads,
        range,
    };
    let bar = Bar::new(&a.common);
    let summary = match (&decrypted, luks_key, header) {
        (Some(d), Some(key), Some(header)) => {
            let encrypted = EncryptedTarget::new(&target, write_to, header, d.data_size, key);
            let summary = restore(&chain, &encrypted, &opts, &bar, &crate::CANCEL);
            encrypted.finish().and(Ok(summary))?
        }
        (Some(d), None, _) => {
            let past = source_size.saturating_sub(d.data_offset + d.data_size);
            let contents = ContentsTarget::new(&target, d.data_offset, past);
            restore(&chain, &contents, &opts, &bar, &crate::CANCEL)
        }
        _ => restore(&chain, &target, &opts, &bar, &crate::CANCEL),
    };
    bar.finish();
    let summary = summary?;
    let meta = &chain.point().meta.source;
    let gpt_moved = meta
        .partition_table
        .as_ref()
        .is_some_and(|t| t.kind == "gpt")
        && range.is_none()
        && target.size() > need;
    if gpt_moved {
        relocate_gpt(write_to, &target, meta.sector_size)?;
    }
    drop(target);
    if let Some(n) = new_file {
        n.complete(&a.target)?;
    }
    if dev.is_block && range.is_none() && chain.point().meta.source.partition_table.is_some() {
        // Let the kernel see the restored partition table (best effort).
        let _ = std::process::Command::new("partx")
            .arg("-u")
            .arg(&a.target)
            .output();
    }
    let elapsed = t0.elapsed();
    let chain_names: Vec<String> = chain.images.iter().map(|i| i.name().to_owned()).collect();
    let warnings: Vec<String> = chain
        .images
        .iter()
        .filter_map(|i| {
            i.index_repaired()
                .map(|why| format!("'{}': {why}", i.name()))
        })
        .collect();
    if a.common.json {
        crate::outcome::print(&crate::outcome::Restored {
            ok: true,
            image: a.image.display().to_string(),
            target: a.target.display().to_string(),
            chain: chain_names.clone(),
            source_size: need,
            data_bytes: summary.data_bytes,
            zero_bytes: summary.zero_bytes,
            frames: summary.frames,
            seconds: secs(elapsed),
            gpt_backup_moved_to_end: gpt_moved,
            warnings,
        });
    } else {
        for w in &warnings {
            eprintln!("holdfast-agent: warning: {w}");
        }
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
