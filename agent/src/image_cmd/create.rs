//! `image create`: full, incremental and differential images of a device or file.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use holdfast_image::blocks::{BlockSource, DeviceBlocks};
use holdfast_image::chain::Chain;
use holdfast_image::chain_reader::ChainReader;
use holdfast_image::changes::{self, Settings, TrackedBlocks};
use holdfast_image::crypto::Cipher;
use holdfast_image::direct::DirectReadAt;
use holdfast_image::extents::Extents;
use holdfast_image::header::{Coverage, Kind};
use holdfast_image::index::BlockState;
use holdfast_image::io::{ReadAt, SplicedReadAt};
use holdfast_image::meta::Metadata;
use holdfast_image::plan::{plan_decrypted, plan_source_with, SourcePlan};
use holdfast_image::progress::{Cancel, NoProgress};
use holdfast_image::validate::validate;
use holdfast_image::writer::{default_block_size, write_image, Identity, WriteOptions};
use holdfast_image::ImageError;

use super::{is_remote, open_chain, open_image, open_sink, secs};
use crate::cli::CreateArgs;
use crate::consistency::{self, Estimate, Stopped};
use crate::device::{devno, hostname, Device};
use crate::exit::{Refused, DAMAGED};
use crate::luks::{self, Key, Mapped};
use crate::output::{bytes, Bar};
use crate::secret::{password, PASSWORD_ENV};
use crate::snapshot_commands;
use crate::thin_changes;
use crate::write_log::{self, DeviceLog};

/// Run.
pub fn run(a: CreateArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let password = password(a.password_file.as_deref(), PASSWORD_ENV)?;
    let creds = a.common.credentials_file.as_deref();
    let dev = Device::inspect(&a.source)?;
    if std::fs::canonicalize(&a.output).ok() == std::fs::canonicalize(&a.source).ok() {
        return Err(Refused("the output is the source".into()).into());
    }

    let file =
        File::open(&a.source).with_context(|| format!("cannot open '{}'", a.source.display()))?;
    let source_file = file
        .try_clone()
        .with_context(|| format!("cannot open '{}'", a.source.display()))?;
    let reader = DirectReadAt::new(file, dev.size, &a.source);
    // Read again once the source is held: a mounted filesystem changes until then.
    let plan = read_plan(&reader, None, &dev, &a)?;

    // A LUKS volume given its key is read through its mapping: header as it is, contents
    // decrypted.
    let luks_key = Key::given(
        a.luks_passphrase_file.as_deref(),
        a.luks_key_file.as_deref(),
    )?;
    let mapped = match &luks_key {
        Some(key) => {
            let fs_type = plan.source.filesystem.as_ref().map(|f| f.fs_type.as_str());
            Some(Mapped::of(&a.source, fs_type, key)?)
        }
        None => None,
    };
    let inside = match &mapped {
        Some(m) => {
            let path = m.path();
            let file =
                File::open(&path).with_context(|| format!("cannot open '{}'", path.display()))?;
            let device = Device::inspect(&path)?;
            Some((file, device, m.data_offset, path))
        }
        None => None,
    };
    let inside_reader = match &inside {
        Some((file, device, _, path)) => Some(DirectReadAt::new(
            file.try_clone().context("cannot open the LUKS mapping")?,
            device.size,
            path,
        )),
        None => None,
    };
    let offset = mapped.as_ref().map_or(0, |m| m.data_offset);
    let plan = match &inside_reader {
        Some(r) => read_plan(&reader, Some((r, offset)), &dev, &a)?,
        None => plan,
    };
    let spliced = inside_reader
        .as_ref()
        .map(|r| SplicedReadAt::new(&reader, r, offset));
    let view: &dyn ReadAt = match &spliced {
        Some(s) => s,
        None => &reader,
    };

    // Consistency: how a source mounted read-write is held while it is read (a LUKS volume
    // read through a mapping open before: that mapping).
    let asked = a.hold.consistency_method();
    let max_freeze = Duration::from_secs(u64::from(a.hold.max_freeze));
    let (held_path, held_dev, held_file) = match (&mapped, &inside) {
        (Some(_), Some((file, device, _, path))) => (path.clone(), device, file),
        _ => (a.source.clone(), &dev, &source_file),
    };
    let choice = match (&a.held.held_snapshot, &a.held.held_description) {
        (Some(_), _) if mapped.is_some() => bail!(
            "a LUKS volume read through its mapping is held by its own run, not together with others"
        ),
        (Some(snapshot), Some(how)) => {
            consistency::held_together(snapshot, held_dev.size, how.clone())?
        }
        _ => consistency::choose(
            asked,
            &held_path,
            &held_dev.mounts()?,
            max_freeze,
            a.hold.snapshot_size,
            |used| {
                if let Some(dir) = a.output.parent().filter(|_| !is_remote(&a.output)) {
                    refuse_output_on_source(dir, &dev)?;
                }
                Ok(Estimate::measure(view, &plan.used, used)?)
            },
        )?,
    };
    let read_through = mapped.as_ref().map(|m| format!("; {}", m.description()));
    let (mut consistency, live) = choice.description(max_freeze);
    consistency += read_through.as_deref().unwrap_or_default();

    // Base image for incremental / differential.
    let kind = if a.incremental {
        Kind::Incremental
    } else if a.differential {
        Kind::Differential
    } else {
        Kind::Full
    };
    let mut base_chain: Option<Chain> = None;
    let mut parent_name = None;
    if let Some(base) = a.base.as_deref().filter(|_| kind != Kind::Full) {
        if is_remote(base) || is_remote(&a.output) {
            let folder = |p: &std::path::Path| {
                holdfast_targets::location::split_name(&p.to_string_lossy()).map(|(f, _)| f)
            };
            if folder(base) != folder(&a.output) || is_remote(base) != is_remote(&a.output) {
                bail!("an incremental or differential image must be written to the folder of its base image");
            }
            if base == a.output {
                return Err(Refused("the output would overwrite its own base image".into()).into());
            }
        } else {
            let out_dir = std::fs::canonicalize(
                a.output
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(".".as_ref()),
            )
            .context("cannot resolve the output folder")?;
            let base_dir = std::fs::canonicalize(
                base.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(".".as_ref()),
            )
            .with_context(|| format!("cannot open base image '{}'", base.display()))?;
            if out_dir != base_dir {
                bail!("an incremental or differential image must be written to the folder of its base image ('{}')", base_dir.display());
            }
            if std::fs::canonicalize(base).ok() == std::fs::canonicalize(&a.output).ok() {
                return Err(Refused("the output would overwrite its own base image".into()).into());
            }
        }
        let chain = open_chain(base, creds, password.as_deref().map(|p| &p[..]))?;
        let chain = if kind == Kind::Differential {
            // A differential is based on the chain's full image.
            let full = chain
                .images
                .last()
                .map(|i| i.name().to_owned())
                .unwrap_or_default();
            open_chain(
                std::path::Path::new(&full),
                creds,
                password.as_deref().map(|p| &p[..]),
            )?
        } else {
            chain
        };
        let b = chain.point();
        let name = b.name().to_owned();
        if b.header.source_size != dev.size {
            return Err(ImageError::SourceMismatch {
                name,
                detail: format!(
                    "it imaged {} bytes, '{}' has {}",
                    b.header.source_size,
                    a.source.display(),
                    dev.size
                ),
            }
            .into());
        }
        if b.meta.source.decrypted.is_some() != plan.source.decrypted.is_some() {
            return Err(ImageError::SourceMismatch {
                name,
                detail: if plan.source.decrypted.is_some() {
                    "it holds the LUKS volume as ciphertext, and this image would hold its \
                     contents decrypted: start a new chain with a full image"
                        .to_owned()
                } else {
                    "it holds the LUKS volume's contents decrypted: give its passphrase \
                     (--luks-passphrase-file or --luks-key-file) for this image too"
                        .to_owned()
                },
            }
            .into());
        }
        match (b.meta.source.identity(), plan.source.identity()) {
            (Some(x), Some(y)) if x != y => {
                return Err(ImageError::SourceMismatch {
                    name,
                    detail: format!("it imaged {x}, the source is {y}"),
                }
                .into())
            }
            (Some(x), None) => {
                return Err(ImageError::SourceMismatch {
                    name,
                    detail: format!("it imaged {x}, the source has no such identity"),
                }
                .into())
            }
            _ => {}
        }
        parent_name = std::path::Path::new(b.name())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        base_chain = Some(chain);
    }

    let cipher = match (&base_chain, a.encrypt) {
        (_, Some(c)) => c,
        (Some(ch), None) => ch.point().header.cipher,
        (None, None) => Cipher::None,
    };
    if mapped.is_some() && cipher == Cipher::None {
        return Err(luks::refuse_in_clear(&a.source).into());
    }

    if a.create_folders {
        crate::storage::create_folders(&a.output, creds)?;
    }
    let mut sink = open_sink(&a.output, creds, a.overwrite, a.object_lock())?;

    // Hold the source (as late as possible: a frozen filesystem stops its writers) and read
    // its allocation as it is now held.
    let (after, before) = snapshot_commands::around(&a.hold.commands, "imaged")?;
    let mut commands: Vec<_> = before.into_iter().collect();
    // The record of block writes is cut before the hold too: every write a snapshot holds
    // is before it or recorded after it. (Held together, the hold came first: no cut.)
    let write_log = a
        .write_log
        .as_deref()
        .filter(|_| !a.no_change_tracking && dev.is_block && a.held.held_snapshot.is_none());
    let write_mark = write_log.and_then(|dir| {
        // What is dirty now is written before the cut, not read again by the next image.
        for m in held_dev.mounts().unwrap_or_default() {
            if let Ok(d) = File::open(&m.mount_point) {
                let _ = nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d));
            }
        }
        DeviceLog::open(dir, &a.source)
            .and_then(DeviceLog::cut)
            .map_err(|e| {
                eprintln!(
                    "holdfast-agent: note: block writes are not recorded for the next incremental: {e:#}"
                );
            })
            .ok()
    });
    // Taken before the hold: every change after it is seen by the next incremental.
    // (Held together with other sources: when that was.)
    let held_at = a
        .held
        .held_at
        .unwrap_or_else(|| i64::try_from(holdfast_image::writer::now()).unwrap_or(i64::MAX));
    let held = choice.apply(asked, max_freeze, held_file)?;
    // A snapshot is read instead of the source (and closed before it is removed); of a LUKS
    // volume's mapping, instead of the mapping.
    let mut snapshot_reader = None;
    let held_reader = match held.device() {
        Some(snapshot) => {
            let file = File::open(&snapshot)
                .with_context(|| format!("cannot open the snapshot '{}'", snapshot.display()))?;
            &*snapshot_reader.insert(DirectReadAt::new(file, held_dev.size, &snapshot))
        }
        None => inside_reader.as_ref().unwrap_or(&reader),
    };
    let (head, inner) = match &inside_reader {
        Some(_) => (&reader, Some((held_reader, offset))),
        None => (held_reader, None),
    };
    let held_spliced = inner.map(|(r, at)| SplicedReadAt::new(head, r, at));
    let reader: &dyn ReadAt = match &held_spliced {
        Some(s) => s,
        None => head,
    };
    let mut plan = if held.changed_anything() {
        match read_plan(head, inner, &dev, &a) {
            Ok(plan) => plan,
            // A snapshot that overflowed already fails its reads: that is the reason to give.
            Err(e) => match held.check() {
                Err(why) => bail!("{why:#}; imaging stopped and no image was left ({e:#})"),
                Ok(()) => return Err(e),
            },
        }
    } else {
        plan
    };
    if live {
        plan.warnings
            .push("imaged while mounted read-write: not crash-consistent".into());
    }

    let forensic = a.forensic
        || base_chain
            .as_ref()
            .is_some_and(|c| c.point().header.method == Coverage::Forensic);
    if forensic && plan.method != Coverage::Forensic {
        plan.used = Extents::full(dev.size);
        plan.method = Coverage::Forensic;
    }
    let ident = match &base_chain {
        Some(ch) => {
            let mut id = Identity::child_of(ch.point(), kind, cipher)?;
            id.method = plan.method;
            id
        }
        None => Identity::new_full(plan.method, cipher),
    };
    let block_size = match (&base_chain, a.block_size) {
        (Some(ch), _) => ch.point().header.block_size,
        (None, Some(bs)) => u32::try_from(bs).context("block size too large")?,
        (None, None) => default_block_size(dev.size),
    };
    // How the changed blocks are found: from an LVM thin snapshot's mappings, else from
    // the filesystem where it can tell, else by hashing every used block.
    let base_state = base_chain
        .as_ref()
        .and_then(|c| c.point().meta.changes.as_ref());
    let tracking_on = !a.no_change_tracking && !live;
    let thin = held.thin_snapshot().unwrap_or_else(|e| {
        eprintln!(
            "holdfast-agent: warning: the thin snapshot's place in its pool is unknown: {e:#}"
        );
        None
    });
    let below = match (&thin, base_state.and_then(|s| s.kept_snapshot.as_ref())) {
        (Some(now), Some(kept)) if tracking_on && kind != Kind::Full => Some(
            thin_changes::unchanged(kept, now, dev.size)
                .map(|ranges| changes::Found {
                    ranges,
                    source: thin_changes::SOURCE.into(),
                })
                .map_err(|e| format!("{} not used: {e:#}", thin_changes::SOURCE)),
        ),
        _ => match (write_log, base_state.and_then(|s| s.write_mark.as_ref())) {
            (Some(dir), Some(mark)) if tracking_on && kind != Kind::Full => Some(
                unwritten_since(dir, &a.source, mark, dev.size).and_then(|found| {
                    let base = base_chain.as_ref().map(|c| c.point().name().to_owned());
                    let base = open_chain(
                        Path::new(&base.unwrap_or_default()),
                        creds,
                        password.as_deref().map(|p| &p[..]),
                    )
                    .and_then(|c| Ok(ChainReader::new(c)?))
                    .map_err(|e| format!("{} not used: {e:#}", write_log::SOURCE))?;
                    superblocks_agree(&found, reader, &base, &plan)?;
                    Ok(found)
                }),
            ),
            _ => None,
        },
    };
    let tracking = changes::plan(
        reader,
        &plan.source,
        kind,
        base_state,
        held_at,
        Settings {
            enabled: tracking_on,
            full_hash_every: a.full_hash_every,
            margin_secs: a.change_margin,
        },
        below,
    );
    let tracking_off_reason = (live && kind != Kind::Full)
        .then(|| "imaged live, without a snapshot: every block hashed".to_owned());
    let mut change_state = tracking.state.clone();
    if let Some(why) = &tracking_off_reason {
        change_state.reason = Some(why.clone());
    }
    // This run's thin snapshot is kept for the next incremental (a differential's base
    // stays the full image's).
    let (kept, keep_note) = match &thin {
        Some(t) if a.keep_snapshot && kind != Kind::Differential => thin_changes::keep_decision(t),
        _ => (None, None),
    };
    change_state.kept_snapshot = kept.clone();
    change_state.write_mark = write_mark;
    let meta = Metadata {
        host: hostname(),
        source: plan.source.clone(),
        method: plan.method,
        kind,
        image_id: String::new(),
        chain_id: String::new(),
        parent_id: None,
        parent_name,
        parent_digest: None,
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        tool: format!("holdfast-agent {}", env!("CARGO_PKG_VERSION")),
        comment: a.comment.clone(),
        live,
        consistency,
        warnings: plan.warnings.clone(),
        changes: Some(change_state.clone()),
    };
    if !a.common.json {
        for w in &plan.warnings {
            eprintln!("holdfast-agent: warning: {w}");
        }
    }
    let opts = WriteOptions {
        compression_level: a.compression_level,
        split_size: a.split.unwrap_or(0),
        threads: a.common.threads,
        password: password.clone(),
        kdf: None,
    };
    let blocks = DeviceBlocks::new(
        reader,
        plan.used.clone(),
        block_size,
        a.source.display().to_string(),
    );
    let parent_index = base_chain.as_ref().map(|c| &c.point().index);
    // Only blocks wholly in use now are taken unread: a block partly freed since must be
    // read for its free part to be zeroed (a block-level source says nothing of use).
    let unchanged = tracking.unchanged.intersect(&plan.used);
    let tracked = parent_index
        .filter(|_| !unchanged.is_empty())
        .map(|base| TrackedBlocks::new(&blocks, base, &unchanged));
    let skipped_bytes = tracked.as_ref().map_or(0, |t| t.skipped_bytes());
    if tracked.is_some() {
        // Scattered runs: a device's read-ahead (often megabytes) past the end of each run
        // would read more than the runs themselves. Best effort.
        let _ = nix::fcntl::posix_fadvise(
            held_reader.file().as_raw_fd(),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM,
        );
    }
    let source: &dyn BlockSource = match &tracked {
        Some(t) => t,
        None => &blocks,
    };
    let bar = Bar::new(&a.common);
    let t0 = Instant::now();
    let stop = Cancel::new();
    let done = AtomicBool::new(false);
    let (summary, stopped) = std::thread::scope(|s| {
        let watch = s.spawn(|| held.watch(&stop, &done));
        let summary = write_image(
            source,
            &ident,
            &meta,
            parent_index,
            &opts,
            sink.as_mut(),
            &bar,
            &stop,
        );
        done.store(true, Ordering::Relaxed);
        (summary, watch.join().unwrap_or(None))
    });
    drop(tracked);
    drop(blocks);
    // Still held: the files a restore drill will compare against, as they were imaged.
    let sample = if a.sample_files && summary.is_ok() && stopped.is_none() {
        let fs = plan.source.filesystem.as_ref().map(|f| f.fs_type.clone());
        match take_sample(&held, &held_path, held_dev, fs.as_deref()) {
            Ok(files) => files,
            Err(e) => {
                eprintln!("holdfast-agent: no sample of files was taken for restore drills: {e:#}");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    drop(snapshot_reader);
    // Kept only for an image that was written: the base's kept snapshot stays otherwise.
    let keep = kept
        .as_ref()
        .filter(|_| summary.is_ok() && stopped.is_none())
        .map(|k| k.name.as_str());
    let released = held.release(keep);
    // Our own mapping of a LUKS volume is closed once nothing reads it.
    drop(inside_reader);
    drop(inside);
    drop(mapped);
    bar.finish();
    let mut warnings = plan.warnings.clone();
    if let Some(run) = after.run() {
        if !run.succeeded() {
            let w = format!("the command after the snapshot failed: {}", run.summary());
            if !a.common.json {
                eprintln!("holdfast-agent: warning: {w}");
            }
            warnings.push(w);
        }
        commands.push(run);
    }
    match stopped {
        Some(Stopped::Deadline) => bail!(
            "imaging did not finish within the maximum freeze time of {} s: the filesystem was thawed and no image was left; \
             raise the maximum freeze time, or choose --consistency lock or live",
            max_freeze.as_secs()
        ),
        Some(Stopped::Lost(why)) => bail!("{why}; imaging stopped and no image was left"),
        None => {}
    }
    let summary = match (summary, &released) {
        (Ok(s), _) => s,
        // A snapshot that overflowed fails its reads: that is the reason to give.
        (Err(e), Err(why)) => bail!("{why:#} (imaging stopped: {e})"),
        (Err(e), Ok(_)) => return Err(e.into()),
    };
    let imaging = t0.elapsed();
    let consistency = match released {
        Ok(how) => {
            how + read_through.as_deref().unwrap_or_default()
                + &keep_note.map(|n| format!("; {n}")).unwrap_or_default()
        }
        Err(e) => {
            // What was read is not of one instant: the image must not look complete.
            let removed = crate::storage::delete_image(&a.output, creds);
            return Err(e.context(match removed {
                Ok(_) => "the image was removed".to_owned(),
                Err(d) => format!("the image could not be removed ({d:#}): delete it"),
            }));
        }
    };

    let mut verified = None;
    if a.verify {
        let mut img = open_image(&a.output, creds)?;
        img.unlock(password.as_deref().map(|p| &p[..]))?;
        let report = validate(&img, a.common.threads, &NoProgress, &crate::CANCEL)?;
        verified = Some(report);
    }
    let elapsed = started.elapsed();
    let rate = summary.read_bytes as f64 / imaging.as_secs_f64().max(1e-9);
    if a.common.json {
        crate::outcome::print(&crate::outcome::Created {
            ok: verified.as_ref().is_none_or(|r| r.is_ok()),
            image: a.output.display().to_string(),
            image_id: summary.image_id.clone(),
            kind,
            coverage: plan.method,
            encryption: cipher.name().to_owned(),
            source: a.source.display().to_string(),
            source_kind: plan.source.kind.clone(),
            filesystem: filesystems(&plan.source),
            source_size: dev.size,
            block_size,
            consistency: consistency.clone(),
            warnings: warnings.clone(),
            read_bytes: summary.read_bytes + tracking.scanned_bytes,
            changes: crate::outcome::ChangeSummary {
                pass: change_state.pass.clone(),
                reason: change_state.reason.clone(),
                hashed_bytes: summary.read_bytes,
                scanned_bytes: tracking.scanned_bytes,
                skipped_bytes,
            },
            data_bytes: summary.data_bytes,
            image_bytes: summary.image_bytes,
            parts: summary.parts,
            frames: summary.frames,
            blocks: summary.blocks,
            content_digest: summary.content_digest.clone(),
            seconds: secs(elapsed),
            imaging_seconds: secs(imaging),
            read_rate_bytes_per_second: rate.round(),
            validation: verified.clone(),
            commands,
            sample,
        });
    } else {
        println!(
            "created {} image '{}' ({:?}, {}): read {} in {:.1} s ({}/s), wrote {} in {} part(s)",
            format!("{kind:?}").to_lowercase(),
            a.output.display(),
            plan.method,
            cipher.name(),
            bytes(summary.read_bytes),
            imaging.as_secs_f64(),
            bytes(rate as u64),
            bytes(summary.image_bytes),
            summary.parts
        );
        if kind != Kind::Full {
            match &change_state.reason {
                Some(why) => println!("changes: {}: {why}", change_state.pass),
                None => println!(
                    "changes: {}: {} read to find them, {} taken from the base unread",
                    change_state.pass,
                    bytes(tracking.scanned_bytes),
                    bytes(skipped_bytes)
                ),
            }
        }
        if let Some(r) = &verified {
            println!(
                "verified: {} frames, {} blocks checked, {} damaged ranges",
                r.frames,
                r.blocks_verified,
                r.damage.len()
            );
        }
    }
    if let Some(r) = verified.filter(|r| !r.is_ok()) {
        eprintln!(
            "holdfast-agent: error: verification after writing found {} damaged ranges in '{}'{}",
            r.damage.len(),
            r.image,
            r.records
                .iter()
                .map(|d| format!("; {d}"))
                .collect::<String>()
        );
        return Ok(ExitCode::from(DAMAGED));
    }
    Ok(ExitCode::SUCCESS)
}

/// What of `source` (of `size` bytes) was not written since `mark`, from the record of its
/// block writes in `dir`; or why that is not known.
fn unwritten_since(
    dir: &Path,
    source: &Path,
    mark: &holdfast_image::changes::WriteMark,
    size: u64,
) -> std::result::Result<changes::Found, String> {
    let not_used = |why: String| format!("{} not used: {why}", write_log::SOURCE);
    let written = DeviceLog::open(dir, source)
        .and_then(|log| log.written_since(mark))
        .map_err(|e| not_used(format!("{e:#}")))?
        .map_err(not_used)?;
    let mut unchanged = Extents::full(size);
    for &(s, e) in written.ranges() {
        unchanged.remove(s, e - s);
    }
    Ok(changes::Found {
        ranges: unchanged,
        source: write_log::SOURCE.into(),
    })
}

/// How much of each filesystem's start is compared: its superblock and the headers next to
/// it (ext: group descriptors; XFS: the first allocation group's; btrfs: the superblock at
/// 64 KiB), which a filesystem changed anywhere rewrites.
const SUPERBLOCK_AREA: u64 = 128 << 10;

/// Writes the record cannot see (the disk, or a loop device's file, written some other way)
/// still show at each filesystem's start: each image block there that the record says was
/// not written, that is wholly in use and that the base holds, must read as in the base.
fn superblocks_agree(
    found: &changes::Found,
    held: &dyn ReadAt,
    base: &ChainReader,
    plan: &SourcePlan,
) -> std::result::Result<(), String> {
    let not_used = |why: String| format!("{} not used: {why}", write_log::SOURCE);
    let point = base.chain().point();
    let bs = u64::from(point.header.block_size);
    let mut now = vec![0u8; usize::try_from(bs).unwrap_or(0)];
    let mut then = now.clone();
    for (offset, len, fs_type) in changes::filesystems(&plan.source) {
        let end = offset + len.min(SUPERBLOCK_AREA);
        for block in offset / bs..end.div_ceil(bs) {
            let (s, e) = (block * bs, ((block + 1) * bs).min(held.size()));
            let whole = |x: &Extents| x.overlapping(s, e).map(|(a, b)| b - a).sum::<u64>() == e - s;
            let held_by_base = point
                .index
                .entries
                .get(usize::try_from(block).unwrap_or(usize::MAX))
                .is_some_and(|entry| entry.state != BlockState::Unallocated);
            if !(whole(&found.ranges) && whole(&plan.used) && held_by_base) {
                continue;
            }
            let n = usize::try_from(e - s).unwrap_or(0);
            held.read_exact_at(&mut now[..n], s)
                .and_then(|()| base.read_exact_at(&mut then[..n], s))
                .map_err(|e| not_used(format!("cannot compare the {fs_type} superblock: {e}")))?;
            if now[..n] != then[..n] {
                return Err(not_used(format!(
                    "the {fs_type} filesystem at offset {offset} changed where no write was traced (was the device, or its file, written some other way?)"
                )));
            }
        }
    }
    Ok(())
}

/// The filesystem of a volume, or each partition's of a disk (`gpt: ext4, fat32, none`).
fn filesystems(source: &holdfast_image::meta::SourceMeta) -> Option<String> {
    if let Some(fs) = &source.filesystem {
        return Some(fs.fs_type.clone());
    }
    let table = source.partition_table.as_ref()?;
    let each: Vec<&str> = source
        .partitions
        .iter()
        .map(|p| p.filesystem.as_ref().map_or("none", |f| f.fs_type.as_str()))
        .collect();
    Some(format!("{}: {}", table.kind, each.join(", ")))
}

/// A sample of the held source's files: from its snapshot, from where it is mounted, or
/// from the unmounted device mounted read-only for the purpose.
fn take_sample(
    held: &consistency::Held,
    source: &Path,
    dev: &Device,
    fs_type: Option<&str>,
) -> Result<Vec<holdfast_proto::job::SampleFile>> {
    let fs_type = fs_type.context("no filesystem is known in the source")?;
    if let Some(snapshot) = held.device() {
        return crate::sample::take(crate::sample::View::Device(&snapshot, fs_type));
    }
    if let Some(m) = dev.mounts()?.first() {
        return crate::sample::take(crate::sample::View::Mounted(&m.mount_point));
    }
    crate::sample::take(crate::sample::View::Device(source, fs_type))
}

/// Refuse to freeze a filesystem that holds the output folder `dir` (the image's own writes
/// would wait for the thaw).
fn refuse_output_on_source(dir: &Path, dev: &Device) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    // The folder may not exist yet: its nearest existing parent is where it will be.
    let Some(meta) = dir.ancestors().find_map(|d| std::fs::metadata(d).ok()) else {
        return Ok(());
    };
    if dev.devs.contains(&devno(meta.dev())) {
        return Err(Refused(format!(
            "the output folder '{}' is on the filesystem being imaged: freezing it would stop the image's own writes; write the image elsewhere",
            dir.display()
        ))
        .into());
    }
    Ok(())
}

/// What to read of the source, and its description for the metadata; `inside` is the
/// mapping of a LUKS volume read decrypted and where its contents start.
fn read_plan(
    reader: &DirectReadAt,
    inside: Option<(&DirectReadAt, u64)>,
    dev: &Device,
    a: &CreateArgs,
) -> Result<SourcePlan> {
    let options = holdfast_image::fs::Options {
        keep_windows_system_files: a.keep_windows_system_files,
    };
    let mut plan = match inside {
        Some((inner, at)) => {
            plan_decrypted(reader, inner, at, dev.sector_size, a.forensic, options)?
        }
        None => plan_source_with(reader, dev.sector_size, a.forensic, options)?,
    };
    plan.source.path = a.source.display().to_string();
    plan.source.model = dev.model.clone();
    plan.source.serial = dev.serial.clone();
    if !dev.is_block && plan.source.kind == "volume" {
        plan.source.kind = "file".into();
    } else if plan.source.kind == "volume" {
        plan.source.kind = "partition".into();
    }
    Ok(plan)
}
