//! `clone`: copy a disk or volume onto another device in one step, without an image —
//! used-sector (what the filesystems use, tables and gaps whole) or forensic, held consistent
//! as `image create` holds a source, onto an equal or larger target. On a larger disk the GPT
//! backup moves to the new end, and `--grow` grows the last partition and its filesystem.
//!
//! The first mebibyte of the target (partition table, boot sector, the superblocks at the
//! start of a volume) is zeroed before the copy and written last: a clone that stops midway
//! leaves a target that does not look like a copy.

use std::fs::File;
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use holdfast_image::direct::AlignedBuf;
use holdfast_image::extents::Extents;
use holdfast_image::header::Coverage;
use holdfast_image::io::{FileReadAt, ReadAt};
use holdfast_image::plan::plan_source;
use holdfast_image::progress::{Cancel, Progress};
use holdfast_image::restore::{FileTarget, WriteAt};
use serde::Serialize;

use crate::cli::CloneArgs;
use crate::consistency::{self, Estimate, Stopped};
use crate::device::{file_range, Device};
use crate::exit::Refused;
use crate::grow::{self, Growth};
use crate::image_cmd::{relocate_gpt, secs};
use crate::output::{bytes, Bar};
use crate::snapshot_commands;

/// The head of the target written last.
const HEAD: u64 = 1 << 20;
/// One read or write.
const CHUNK: usize = 4 << 20;
/// Chunks in flight between the reading and the writing thread.
const IN_FLIGHT: usize = 4;

/// `clone --json`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Cloned {
    /// False when source sectors could not be read (written as zeros).
    pub ok: bool,
    pub source: String,
    pub target: String,
    pub coverage: Coverage,
    /// How the source was held while it was read.
    pub consistency: String,
    pub source_size: u64,
    pub target_size: u64,
    /// Bytes copied from the source.
    pub copied_bytes: u64,
    /// Bytes of the target zeroed (unused areas with --zero-unused, unreadable sectors).
    pub zeroed_bytes: u64,
    /// Byte ranges `[start, end)` of the source that could not be read.
    pub unreadable: Vec<(u64, u64)>,
    pub gpt_backup_moved_to_end: bool,
    /// What --grow grew.
    pub grown: Option<Growth>,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

/// Run.
pub fn run(a: CloneArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let source = Device::inspect(&a.source)?;
    let target = Device::inspect(&a.target)?;
    refuse_unsafe(&a, &source, &target)?;

    let file =
        File::open(&a.source).with_context(|| format!("cannot open '{}'", a.source.display()))?;
    let reader = FileReadAt::new(
        file.try_clone()
            .with_context(|| format!("cannot open '{}'", a.source.display()))?,
        source.size,
    );
    let plan = plan_source(&reader, source.sector_size, a.forensic)?;
    let growth = if a.grow {
        Some(grow::plan(&plan.source)?)
    } else {
        None
    };
    confirm(&a, &target)?;

    let asked = a.hold.consistency_method();
    let max_freeze = Duration::from_secs(u64::from(a.hold.max_freeze));
    let choice = consistency::choose(
        asked,
        &a.source,
        &source.mounts()?,
        max_freeze,
        a.hold.snapshot_size,
        |used| Ok(Estimate::measure(&reader, &plan.used, used)?),
    )?;
    let (_, live) = choice.description(max_freeze);
    let writer = FileTarget::open(&a.target, target.size).with_context(|| {
        format!(
            "cannot open clone target '{}' for writing",
            a.target.display()
        )
    })?;

    let (after, _) = snapshot_commands::around(&a.hold.commands, "cloned")?;
    let held = choice.apply(asked, max_freeze, &file)?;
    let snapshot_reader = match held.device() {
        Some(snapshot) => {
            let f = File::open(&snapshot)
                .with_context(|| format!("cannot open the snapshot '{}'", snapshot.display()))?;
            Some(FileReadAt::new(f, source.size))
        }
        None => None,
    };
    let held_reader = snapshot_reader.as_ref().unwrap_or(&reader);
    let mut plan = if held.changed_anything() {
        plan_source(held_reader, source.sector_size, a.forensic)?
    } else {
        plan
    };
    if live {
        plan.warnings
            .push("cloned while mounted read-write: not crash-consistent".into());
    }
    let bar = Bar::new(&a.common);
    let stop = Cancel::new();
    let done = AtomicBool::new(false);
    let options = CopyOptions {
        zero_unused: a.zero_unused,
        ignore_read_errors: a.ignore_read_errors,
        sector: u64::from(source.sector_size.max(512)),
    };
    let (copied, stopped) = std::thread::scope(|s| {
        let watch = s.spawn(|| held.watch(&stop, &done));
        let copied = copy(held_reader, &writer, &plan.used, &options, &bar, &stop);
        done.store(true, Ordering::Relaxed);
        (copied, watch.join().unwrap_or(None))
    });
    drop(snapshot_reader);
    let released = held.release(None);
    bar.finish();
    let mut warnings = plan.warnings.clone();
    if let Some(run) = after.run() {
        if !run.succeeded() {
            warnings.push(format!(
                "the command after the snapshot failed: {}",
                run.summary()
            ));
        }
    }
    let unusable = "the target was partly overwritten and holds no usable copy";
    match stopped {
        Some(Stopped::Deadline) => bail!(
            "cloning did not finish within the maximum freeze time of {} s: the filesystem was \
             thawed and {unusable}; raise the maximum freeze time, or choose --consistency lock \
             or live",
            max_freeze.as_secs()
        ),
        Some(Stopped::Lost(why)) => bail!("{why}; cloning stopped and {unusable}"),
        None => {}
    }
    let copied = match (copied, &released) {
        (Ok(c), _) => c,
        (Err(e), Err(why)) => bail!("{why:#} (cloning stopped: {e:#}); {unusable}"),
        (Err(e), Ok(_)) => return Err(e.context(unusable)),
    };
    let consistency =
        released.with_context(|| format!("the copy is not of one instant: {unusable}"))?;

    let is_disk = plan.source.partition_table.is_some();
    let gpt_moved = plan
        .source
        .partition_table
        .as_ref()
        .is_some_and(|t| t.kind == "gpt")
        && target.size > source.size;
    if gpt_moved {
        relocate_gpt(&a.target, &writer, plan.source.sector_size)?;
    }
    writer
        .sync()
        .with_context(|| format!("cannot flush '{}'", a.target.display()))?;
    drop(writer);
    let grown = match growth {
        Some(g) => Some(grow::apply(&a.target, g, plan.source.sector_size)?),
        None => None,
    };
    if target.is_block && is_disk {
        // Let the kernel see the new partition table (best effort).
        let _ = std::process::Command::new("partx")
            .arg("-u")
            .arg(&a.target)
            .output();
    }
    if !copied.unreadable.is_empty() {
        warnings.push(format!(
            "{} of the source could not be read and was written as zeros ({} range(s))",
            bytes(copied.unreadable.iter().map(|(s, e)| e - s).sum()),
            copied.unreadable.len()
        ));
    }
    let out = Cloned {
        ok: copied.unreadable.is_empty(),
        source: a.source.display().to_string(),
        target: a.target.display().to_string(),
        coverage: plan.method,
        consistency,
        source_size: source.size,
        target_size: target.size,
        copied_bytes: copied.data_bytes,
        zeroed_bytes: copied.zero_bytes,
        unreadable: copied.unreadable,
        gpt_backup_moved_to_end: gpt_moved,
        grown,
        warnings,
        seconds: secs(started.elapsed()),
    };
    if a.common.json {
        crate::outcome::print(&out);
    } else {
        for w in &out.warnings {
            eprintln!("holdfast-agent: warning: {w}");
        }
        println!(
            "cloned '{}' to '{}' ({:?}, {}): copied {}, zeroed {} in {:.1} s",
            out.source,
            out.target,
            out.coverage,
            out.consistency,
            bytes(out.copied_bytes),
            bytes(out.zeroed_bytes),
            out.seconds
        );
        if let Some(g) = &out.grown {
            println!("grown: {}", g.description());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuse a target that is the source or part of it (or holds it), is mounted or in use,
/// or is too small.
fn refuse_unsafe(a: &CloneArgs, source: &Device, target: &Device) -> Result<()> {
    let same = match (
        std::fs::canonicalize(&a.source),
        std::fs::canonicalize(&a.target),
    ) {
        (Ok(s), Ok(t)) => s == t,
        _ => false,
    };
    // Loop devices over one file (a disk image and a partition of it) share bytes too.
    let shared_file = match (file_range(&a.source), file_range(&a.target)) {
        (Some((d1, i1, s1, e1)), Some((d2, i2, s2, e2))) => {
            (d1, i1) == (d2, i2) && s1 < e2 && s2 < e1
        }
        _ => false,
    };
    if same || shared_file || !source.devs.is_disjoint(&target.devs) {
        return Err(Refused(format!(
            "clone target '{}' is the source '{}', part of it, or holds it",
            a.target.display(),
            a.source.display()
        ))
        .into());
    }
    if let Some(m) = target.mounts()?.first() {
        return Err(Refused(format!(
            "clone target '{}' is mounted on '{}'; unmount it first",
            a.target.display(),
            m.mount_point.display()
        ))
        .into());
    }
    if target.size < source.size {
        return Err(Refused(format!(
            "clone target '{}' is too small: the source has {} bytes ({}), the target {} ({})",
            a.target.display(),
            source.size,
            bytes(source.size),
            target.size,
            bytes(target.size)
        ))
        .into());
    }
    Ok(())
}

/// Everything on the target is lost: `--yes`, or the target's path typed on a terminal.
fn confirm(a: &CloneArgs, target: &Device) -> Result<()> {
    if a.yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Refused(format!(
            "cloning overwrites everything on '{}': give --yes to go on",
            a.target.display()
        ))
        .into());
    }
    eprint!(
        "Everything on '{}' ({}{}) will be overwritten by '{}'.\nType the target's path to go on: ",
        a.target.display(),
        bytes(target.size),
        target
            .model
            .as_deref()
            .map_or(String::new(), |m| format!(", {m}")),
        a.source.display()
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .context("cannot read the confirmation")?;
    if line.trim() != a.target.to_string_lossy() {
        return Err(Refused("not confirmed: nothing was written".into()).into());
    }
    Ok(())
}

/// How to copy.
pub struct CopyOptions {
    /// Write zeros where the source holds nothing in use.
    pub zero_unused: bool,
    /// Write unreadable source sectors as zeros and go on.
    pub ignore_read_errors: bool,
    /// The unit re-read one by one around a read error.
    pub sector: u64,
}

/// What a copy did.
#[derive(Debug, Default)]
pub struct Copied {
    pub data_bytes: u64,
    pub zero_bytes: u64,
    /// `[start, end)` byte ranges that could not be read.
    pub unreadable: Vec<(u64, u64)>,
}

/// One piece of work for the writer.
enum Piece {
    Data {
        at: u64,
        buf: AlignedBuf,
        len: usize,
    },
    Zeros {
        at: u64,
        len: u64,
    },
}

/// The ranges to write, in order: everything past [`HEAD`] first, then the head; each
/// `(start, end, is_data)`.
fn order(used: &Extents, size: u64, zero_unused: bool) -> Vec<(u64, u64, bool)> {
    let mut all = Vec::new();
    let mut at = 0;
    for &(start, end) in used.ranges() {
        if zero_unused && start > at {
            all.push((at, start, false));
        }
        all.push((start, end, true));
        at = end;
    }
    if zero_unused && at < size {
        all.push((at, size, false));
    }
    let mut tail = Vec::new();
    let mut head = Vec::new();
    for (start, end, data) in all {
        if start < HEAD {
            head.push((start, end.min(HEAD), data));
        }
        if end > HEAD {
            tail.push((start.max(HEAD), end, data));
        }
    }
    tail.extend(head);
    tail
}

/// Copy `used` of `src` to the same offsets of `dst`: one thread reads, this one writes.
pub fn copy(
    src: &dyn ReadAt,
    dst: &dyn WriteAt,
    used: &Extents,
    options: &CopyOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Copied> {
    let size = src.size();
    let pieces = order(used, size, options.zero_unused);
    progress.stage(
        "clone",
        pieces.iter().filter(|p| p.2).map(|p| p.1 - p.0).sum(),
    );
    let mut out = Copied::default();
    // The old head goes first: a stopped clone must not look like one.
    let head = HEAD.min(dst.size());
    dst.write_zeros(0, head)
        .context("cannot write the target at byte 0")?;
    let (full_tx, full_rx) = sync_channel::<Result<Piece>>(IN_FLIGHT);
    let (free_tx, free_rx) = sync_channel::<AlignedBuf>(IN_FLIGHT + 1);
    for _ in 0..IN_FLIGHT + 1 {
        let _ = free_tx.send(AlignedBuf::new(CHUNK));
    }
    let unreadable = Mutex::new(Vec::new());
    // Each side owns its ends of the channels: when one stops, the other's next send or
    // receive fails and it stops too.
    std::thread::scope(|s| {
        let (pieces, unreadable) = (&pieces, &unreadable);
        s.spawn(move || read_pieces(src, pieces, options, full_tx, free_rx, unreadable, cancel));
        write_pieces(dst, full_rx, free_tx, progress, &mut out)
    })?;
    if cancel.is_cancelled() || crate::CANCEL.is_cancelled() {
        return Err(holdfast_image::ImageError::Cancelled.into());
    }
    out.unreadable = unreadable.into_inner().unwrap_or_else(|p| p.into_inner());
    let bad: u64 = out.unreadable.iter().map(|(s, e)| e - s).sum();
    out.data_bytes -= bad;
    out.zero_bytes += bad;
    Ok(out)
}

/// The writing side of [`copy`]: writes every piece the reading side sends, until it ends.
fn write_pieces(
    dst: &dyn WriteAt,
    full: Receiver<Result<Piece>>,
    free: SyncSender<AlignedBuf>,
    progress: &dyn Progress,
    out: &mut Copied,
) -> Result<()> {
    for piece in full.iter() {
        match piece? {
            Piece::Data { at, buf, len } => {
                dst.write_all_at(&buf.as_slice()[..len], at)
                    .with_context(|| format!("cannot write the target at byte {at}"))?;
                out.data_bytes += len as u64;
                progress.advance(len as u64);
                let _ = free.send(buf);
            }
            Piece::Zeros { at, len } => {
                dst.write_zeros(at, len)
                    .with_context(|| format!("cannot write the target at byte {at}"))?;
                out.zero_bytes += len;
            }
        }
    }
    Ok(())
}

/// The reading side of [`copy`]: sends every piece in order, then ends.
fn read_pieces(
    src: &dyn ReadAt,
    pieces: &[(u64, u64, bool)],
    options: &CopyOptions,
    full: SyncSender<Result<Piece>>,
    free: Receiver<AlignedBuf>,
    unreadable: &Mutex<Vec<(u64, u64)>>,
    cancel: &Cancel,
) {
    for &(start, end, data) in pieces {
        if !data {
            if full
                .send(Ok(Piece::Zeros {
                    at: start,
                    len: end - start,
                }))
                .is_err()
            {
                return;
            }
            continue;
        }
        let mut at = start;
        while at < end {
            if cancel.is_cancelled() || crate::CANCEL.is_cancelled() {
                return;
            }
            let Ok(mut buf) = free.recv() else { return };
            let len = (end - at).min(CHUNK as u64) as usize;
            let read = match src.read_exact_at(&mut buf.as_mut_slice()[..len], at) {
                Ok(()) => Ok(()),
                Err(_) if options.ignore_read_errors => {
                    let bad = read_around(src, &mut buf.as_mut_slice()[..len], at, options.sector);
                    unreadable
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(bad);
                    Ok(())
                }
                Err(e) => Err(anyhow::Error::new(e).context(format!(
                    "cannot read the source at byte {at} (--ignore-read-errors writes \
                     unreadable sectors as zeros and goes on)"
                ))),
            };
            let piece = read.map(|()| Piece::Data { at, buf, len });
            let failed = piece.is_err();
            if full.send(piece).is_err() || failed {
                return;
            }
            at += len as u64;
        }
    }
}

/// Read `buf` (at `at`) one `sector` at a time; what cannot be read is zeroed and returned
/// as merged `[start, end)` ranges.
fn read_around(src: &dyn ReadAt, buf: &mut [u8], at: u64, sector: u64) -> Vec<(u64, u64)> {
    let mut bad: Vec<(u64, u64)> = Vec::new();
    let mut off = 0usize;
    while off < buf.len() {
        let n = (buf.len() - off).min(sector as usize);
        let piece = &mut buf[off..off + n];
        if src.read_exact_at(piece, at + off as u64).is_err() {
            piece.fill(0);
            let (s, e) = (at + off as u64, at + (off + n) as u64);
            match bad.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => bad.push((s, e)),
            }
        }
        off += n;
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_image::progress::NoProgress;

    /// Bytes in memory whose reads fail over `bad`.
    struct Flaky {
        data: Vec<u8>,
        bad: (u64, u64),
    }

    impl ReadAt for Flaky {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let end = offset + buf.len() as u64;
            if offset < self.bad.1 && end > self.bad.0 {
                return Err(std::io::Error::other("medium error"));
            }
            self.data.as_slice().read_exact_at(buf, offset)
        }
    }

    struct Memory(Mutex<Vec<u8>>);

    impl WriteAt for Memory {
        fn size(&self) -> u64 {
            self.0.lock().expect("lock").len() as u64
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            let mut m = self.0.lock().expect("lock");
            let at = offset as usize;
            m[at..at + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn sync(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 + 1).collect()
    }

    fn options(zero_unused: bool, ignore: bool) -> CopyOptions {
        CopyOptions {
            zero_unused,
            ignore_read_errors: ignore,
            sector: 512,
        }
    }

    #[test]
    fn copies_used_ranges_head_last_and_leaves_the_rest() {
        let size = 12 << 20;
        let src = Flaky {
            data: pattern(size),
            bad: (0, 0),
        };
        let dst = Memory(Mutex::new(vec![0xAA; size + 4096]));
        let mut used = Extents::new();
        used.add(4096, 8192);
        used.add(5 << 20, 6 << 20);
        let c = copy(
            &src,
            &dst,
            &used,
            &options(false, false),
            &NoProgress,
            &Cancel::new(),
        )
        .expect("copy");
        assert_eq!(c.data_bytes, used.total());
        let m = dst.0.lock().expect("lock");
        assert_eq!(&m[4096..12288], &src.data[4096..12288]);
        assert_eq!(&m[5 << 20..11 << 20], &src.data[5 << 20..11 << 20]);
        // The head was zeroed; past it, what is not used keeps the target's old bytes.
        assert!(m[..4096].iter().all(|&b| b == 0));
        assert!(m[2 << 20..5 << 20].iter().all(|&b| b == 0xAA));
        assert!(m[11 << 20..].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn zero_unused_clears_the_rest_of_the_source_size() {
        let size = 3 << 20;
        let src = Flaky {
            data: pattern(size),
            bad: (0, 0),
        };
        let dst = Memory(Mutex::new(vec![0xAA; size + 4096]));
        let mut used = Extents::new();
        used.add(2 << 20, 4096);
        let c = copy(
            &src,
            &dst,
            &used,
            &options(true, false),
            &NoProgress,
            &Cancel::new(),
        )
        .expect("copy");
        assert_eq!(c.zero_bytes, size as u64 - 4096);
        let m = dst.0.lock().expect("lock");
        assert!(m[..2 << 20].iter().all(|&b| b == 0));
        assert_eq!(
            &m[2 << 20..(2 << 20) + 4096],
            &src.data[2 << 20..(2 << 20) + 4096]
        );
        assert!(m[(2 << 20) + 4096..size].iter().all(|&b| b == 0));
        // Past the source's size the target is not touched.
        assert!(m[size..].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn a_read_error_stops_the_copy_unless_told_to_go_on() {
        let size = 6 << 20;
        let bad = ((3 << 20) + 1024, (3 << 20) + 2048);
        let src = Flaky {
            data: pattern(size),
            bad,
        };
        let used = Extents::full(size as u64);
        let dst = Memory(Mutex::new(vec![0xAA; size]));
        let err = copy(
            &src,
            &dst,
            &used,
            &options(false, false),
            &NoProgress,
            &Cancel::new(),
        )
        .expect_err("an unreadable sector stops the copy");
        assert!(
            format!("{err:#}").contains("cannot read the source at byte"),
            "{err:#}"
        );

        let dst = Memory(Mutex::new(vec![0xAA; size]));
        let c = copy(
            &src,
            &dst,
            &used,
            &options(false, true),
            &NoProgress,
            &Cancel::new(),
        )
        .expect("copy");
        assert_eq!(c.unreadable, vec![bad]);
        assert_eq!(c.data_bytes, size as u64 - 1024);
        let m = dst.0.lock().expect("lock");
        assert!(m[bad.0 as usize..bad.1 as usize].iter().all(|&b| b == 0));
        assert_eq!(
            &m[..bad.0 as usize][HEAD as usize..],
            &src.data[HEAD as usize..bad.0 as usize]
        );
        assert_eq!(&m[bad.1 as usize..], &src.data[bad.1 as usize..]);
    }
}
