//! Restore: write the content of a chain point to a device or file.
//!
//! Every link and index is checked when the chain is opened; then, before anything is
//! written, every frame needed is read and its checksum checked (`precheck`), so a damaged
//! image is refused instead of half-restored. Frames are then decoded on all cores, each
//! block's keyed hash checked, and written at its offset. Each block is read once, from the
//! newest image that stores it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::chain::{frame_damage, Chain, Located};
use crate::direct::DirectFile;
use crate::error::{ImageError, Result};
use crate::frame::FrameFault;
use crate::image::{block_len, slot_offsets};
use crate::progress::{Cancel, Progress};

/// Where restored bytes go.
pub trait WriteAt: Sync {
    /// Bytes available.
    fn size(&self) -> u64;
    /// Write all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make `[offset, offset + len)` read as zeros.
    fn write_zeros(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; 4 << 20];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(zeros.len() as u64) as usize;
            self.write_all_at(&zeros[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
    /// Flush to stable storage.
    fn sync(&self) -> io::Result<()>;
}

/// A file or block device opened for writing (direct I/O where aligned), with its size.
pub struct FileTarget {
    file: DirectFile,
    size: u64,
}

impl FileTarget {
    /// Open an existing file or device of `size` bytes.
    pub fn open(path: &std::path::Path, size: u64) -> io::Result<Self> {
        Ok(Self {
            file: DirectFile::open(path)?,
            size,
        })
    }

    /// The ordinary handle.
    pub fn file(&self) -> &File {
        self.file.file()
    }
}

impl WriteAt for FileTarget {
    fn size(&self) -> u64 {
        self.size
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync()
    }
}

/// Restore options.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Overwrite unallocated blocks with zeros too.
    pub zero_unused: bool,
    /// Skip the checksum pass over every needed frame before writing (saves one read of the
    /// image, e.g. from a slow network target; damage then stops the restore midway).
    pub skip_precheck: bool,
    /// Worker threads (0 = number of cores).
    pub threads: usize,
}

/// What was restored.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// Bytes of block content written.
    pub data_bytes: u64,
    /// Bytes zeroed.
    pub zero_bytes: u64,
    /// Frames decoded.
    pub frames: u64,
    /// Images of the chain read.
    pub images: usize,
}

thread_local! {
    /// One zstd context per worker thread, reused across frames.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// Frames to decode: (chain position, frame row) → (slot, block) pairs.
type Plan = BTreeMap<FrameKey, Vec<(u16, u64)>>;
/// (chain position, frame row).
type FrameKey = (usize, u32);

/// Restore the chain's newest point to `target`.
pub fn restore(
    chain: &Chain,
    target: &dyn WriteAt,
    opts: &RestoreOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<RestoreSummary> {
    let point = chain.point();
    let size = point.header.source_size;
    let bs = point.header.block_size;
    if target.size() < size {
        return Err(ImageError::Invalid(format!(
            "restore target is too small: the image needs {size} bytes, the target has {}",
            target.size()
        )));
    }
    let hasher = chain.hasher()?;
    let located = chain.locate_all()?;
    let mut plan: Plan = BTreeMap::new();
    let mut zero_runs: Vec<(u64, u64)> = Vec::new();
    for (b, loc) in located.iter().enumerate() {
        let b = b as u64;
        let zero = match loc {
            Located::Data { image, frame, slot } => {
                plan.entry((*image, *frame)).or_default().push((*slot, b));
                false
            }
            Located::Zero => true,
            Located::Unallocated => opts.zero_unused,
        };
        if zero {
            let start = b * u64::from(bs);
            let len = block_len(bs, size, b) as u64;
            match zero_runs.last_mut() {
                Some(r) if r.0 + r.1 == start => r.1 += len,
                _ => zero_runs.push((start, len)),
            }
        }
    }
    let tasks: Vec<(FrameKey, Vec<(u16, u64)>)> = plan.into_iter().collect();
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        opts.threads
    };

    if !opts.skip_precheck {
        let total: u64 = tasks
            .iter()
            .map(|((i, f), _)| u64::from(chain.images[*i].index.frames[*f as usize].len))
            .sum();
        progress.stage("checking", total);
        run_parallel(threads, tasks.len(), cancel, |t| {
            let ((i, f), blocks) = &tasks[t];
            let img = &chain.images[*i];
            let rec = img.read_record(*f)?;
            let bl: Vec<u64> = blocks.iter().map(|b| b.1).collect();
            img.check_record(*f, &rec)
                .map_err(|fault| frame_damage(img, &bl, &fault))?;
            progress.advance(rec.len() as u64);
            Ok(())
        })?;
    }

    let total: u64 = tasks
        .iter()
        .flat_map(|(_, b)| b.iter().map(|&(_, n)| block_len(bs, size, n) as u64))
        .sum();
    progress.stage(
        "restoring",
        total + zero_runs.iter().map(|r| r.1).sum::<u64>(),
    );
    let data_bytes = std::sync::atomic::AtomicU64::new(0);
    run_parallel(threads, tasks.len(), cancel, |t| {
        let ((i, f), blocks) = &tasks[t];
        let img = &chain.images[*i];
        let rec = img.read_record(*f)?;
        let bl: Vec<u64> = blocks.iter().map(|b| b.1).collect();
        let (h, raw) = DECOMPRESSOR
            .with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = Some(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| FrameFault::Damaged(e.to_string()))?,
                    );
                }
                match d.as_mut() {
                    Some(dec) => img.decode_record(*f, &rec, dec),
                    None => Err(FrameFault::Damaged("no decompressor".into())),
                }
            })
            .map_err(|fault| frame_damage(img, &bl, &fault))?;
        let slots = slot_offsets(bs, size, &h.blocks);
        // Check every block, then write runs of consecutive blocks with one call each.
        let mut run: Option<(u64, usize, usize)> = None; // (first block, raw offset, length)
        let flush = |run: (u64, usize, usize)| -> Result<()> {
            let at = run.0 * u64::from(bs);
            target
                .write_all_at(&raw[run.1..run.1 + run.2], at)
                .map_err(|e| {
                    ImageError::io(format!("writing the restore target at offset {at}"), e)
                })?;
            data_bytes.fetch_add(run.2 as u64, Ordering::Relaxed);
            progress.advance(run.2 as u64);
            Ok(())
        };
        for &(slot, n) in blocks {
            let (off, len) = *slots.get(usize::from(slot)).ok_or_else(|| {
                ImageError::corrupt(img.name(), format!("block {n}: slot {slot} out of range"))
            })?;
            if h.blocks[usize::from(slot)] != n || off + len > raw.len() {
                return Err(ImageError::corrupt(
                    img.name(),
                    format!("frame does not hold block {n} where the index says"),
                ));
            }
            if hasher.hash(n, &raw[off..off + len]) != point.index.entries[n as usize].hash {
                return Err(frame_damage(
                    img,
                    &[n],
                    &FrameFault::Damaged("block content does not match its hash".into()),
                ));
            }
            run = match run {
                Some((first, roff, rlen))
                    if roff + rlen == off
                        && first + (rlen / bs as usize) as u64 == n
                        && rlen % bs as usize == 0 =>
                {
                    Some((first, roff, rlen + len))
                }
                Some(r) => {
                    flush(r)?;
                    Some((n, off, len))
                }
                None => Some((n, off, len)),
            };
        }
        if let Some(r) = run {
            flush(r)?;
        }
        Ok(())
    })?;

    let mut zero_bytes = 0;
    for &(start, len) in &zero_runs {
        if cancel.is_cancelled() {
            return Err(ImageError::Cancelled);
        }
        target.write_zeros(start, len).map_err(|e| {
            ImageError::io(format!("zeroing the restore target at offset {start}"), e)
        })?;
        zero_bytes += len;
        progress.advance(len);
    }
    target
        .sync()
        .map_err(|e| ImageError::io("flushing the restore target", e))?;
    Ok(RestoreSummary {
        data_bytes: data_bytes.into_inner(),
        zero_bytes,
        frames: tasks.len() as u64,
        images: chain.images.len(),
    })
}

/// Run `job(0..count)` on `threads` threads; stops at the first error or on cancel.
pub fn run_parallel<F>(threads: usize, count: usize, cancel: &Cancel, job: F) -> Result<()>
where
    F: Fn(usize) -> Result<()> + Sync,
{
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let error: Mutex<Option<ImageError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                if cancel.is_cancelled() {
                    failed.store(true, Ordering::Relaxed);
                    if let Ok(mut e) = error.lock() {
                        e.get_or_insert(ImageError::Cancelled);
                    }
                    return;
                }
                let t = next.fetch_add(1, Ordering::Relaxed);
                if t >= count {
                    return;
                }
                if let Err(err) = job(t) {
                    failed.store(true, Ordering::Relaxed);
                    if let Ok(mut e) = error.lock() {
                        // Keep the error of the lowest task for a deterministic message.
                        e.get_or_insert(err);
                    }
                    return;
                }
            });
        }
    });
    match error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
