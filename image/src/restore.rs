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
use crate::direct::{AlignedBuf, DirectFile};
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
    /// Called once every frame needed has been checked, before the first write: e.g. an
    /// encrypted volume's header is written and the volume opened here, so a damaged image
    /// changes nothing.
    fn before_first_write(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A file or block device opened for writing (direct I/O where aligned), with its size.
pub struct FileTarget {
    file: DirectFile,
    size: u64,
    /// A regular file shorter than `size`: extended only once the restore starts writing.
    grow: bool,
}

impl FileTarget {
    /// Open an existing file or device of `size` bytes.
    pub fn open(path: &std::path::Path, size: u64) -> io::Result<Self> {
        Ok(Self {
            file: DirectFile::open(path)?,
            size,
            grow: false,
        })
    }

    /// Open an existing regular file, to be `size` bytes long once written: it is extended
    /// just before the first write, so a restore refused before that leaves it as it was.
    pub fn open_growing(path: &std::path::Path, size: u64) -> io::Result<Self> {
        Ok(Self {
            grow: true,
            ..Self::open(path, size)?
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
    fn before_first_write(&self) -> io::Result<()> {
        let file = self.file.file();
        if self.grow && file.metadata()?.len() < self.size {
            file.set_len(self.size)?;
        }
        Ok(())
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
    /// Only this byte range of the source (start, length) — a partition of a disk image —
    /// written at the start of the target.
    pub range: Option<(u64, u64)>,
}

/// The part `[start, start + len)` of a restore, written at the start of `inner`: what a
/// block carries before or after the range is left out.
struct Window<'a> {
    inner: &'a dyn WriteAt,
    start: u64,
    len: u64,
}

impl Window<'_> {
    /// The piece of `[offset, offset + n)` inside the range: its offset in the target and
    /// where it starts in the buffer, and its length.
    fn clip(&self, offset: u64, n: u64) -> Option<(u64, u64, u64)> {
        let from = offset.max(self.start);
        let to = (offset + n).min(self.start + self.len);
        (from < to).then(|| (from - self.start, from - offset, to - from))
    }
}

impl WriteAt for Window<'_> {
    fn size(&self) -> u64 {
        self.len
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.clip(offset, buf.len() as u64) {
            Some((at, skip, n)) => self
                .inner
                .write_all_at(&buf[skip as usize..(skip + n) as usize], at),
            None => Ok(()),
        }
    }

    fn write_zeros(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.clip(offset, len) {
            Some((at, _, n)) => self.inner.write_zeros(at, n),
            None => Ok(()),
        }
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }

    fn before_first_write(&self) -> io::Result<()> {
        self.inner.before_first_write()
    }
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

/// Per-thread state of a decoder: reused so no frame allocates (fresh pages are costly).
struct Worker {
    dec: zstd::bulk::Decompressor<'static>,
    rec: Vec<u8>,
    scratch: Vec<u8>,
}

impl Worker {
    fn new() -> Result<Self> {
        Ok(Self {
            dec: zstd::bulk::Decompressor::new()
                .map_err(|e| ImageError::io("starting the decompressor", e))?,
            rec: Vec::new(),
            scratch: Vec::new(),
        })
    }
}

thread_local! {
    static PRECHECK_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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
    let (start, len) = opts.range.unwrap_or((0, size));
    if start.checked_add(len).is_none_or(|end| end > size) {
        return Err(ImageError::Invalid(format!(
            "the range {start}+{len} is not inside the image's {size} bytes"
        )));
    }
    if target.size() < len {
        return Err(ImageError::Invalid(format!(
            "restore target is too small: the image needs {len} bytes, the target has {}",
            target.size()
        )));
    }
    let window = Window {
        inner: target,
        start,
        len,
    };
    let target: &dyn WriteAt = match opts.range {
        Some(_) => &window,
        None => target,
    };
    // The blocks that touch the range.
    let blocks = (start / u64::from(bs))..(start + len).div_ceil(u64::from(bs));
    let located = chain.locate_all()?;
    let mut plan: Plan = BTreeMap::new();
    let mut zero_runs: Vec<(u64, u64)> = Vec::new();
    for (b, loc) in located.iter().enumerate() {
        let b = b as u64;
        if !blocks.contains(&b) {
            continue;
        }
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
            // One record buffer per thread: fresh pages per frame are costly.
            PRECHECK_BUF.with(|rec| {
                let mut rec = rec.borrow_mut();
                img.read_record_into(*f, &mut rec)?;
                let bl: Vec<u64> = blocks.iter().map(|b| b.1).collect();
                img.check_record(*f, &rec)
                    .map_err(|fault| frame_damage(img, &bl, &fault))?;
                progress.advance(rec.len() as u64);
                Ok(())
            })
        })?;
    }

    target
        .before_first_write()
        .map_err(|e| ImageError::io("preparing the restore target", e))?;
    let total: u64 = tasks
        .iter()
        .flat_map(|(_, b)| b.iter().map(|&(_, n)| block_len(bs, size, n) as u64))
        .sum();
    progress.stage(
        "restoring",
        total + zero_runs.iter().map(|r| r.1).sum::<u64>(),
    );
    let data_bytes = write_frames(
        chain,
        &tasks,
        target,
        threads,
        !opts.skip_precheck,
        progress,
        cancel,
    )?;

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
        data_bytes,
        zero_bytes,
        frames: tasks.len() as u64,
        images: chain.images.len(),
    })
}

/// A decoded frame on its way to the writer: the buffer and the runs to write from it.
struct Decoded {
    buf: AlignedBuf,
    /// (target offset, offset in `buf`, length).
    runs: Vec<(u64, usize, usize)>,
}

/// Decode and verify frames on `threads` threads; write them from this thread.
///
/// One writer, because a file system serialises allocating writes to one file anyway (ext4
/// holds the inode lock for the whole direct write); decoders never wait for the device, and
/// the device never waits for a decoder. Buffers cycle through a pool, so no frame allocates.
#[allow(clippy::too_many_arguments)]
fn write_frames(
    chain: &Chain,
    tasks: &[(FrameKey, Vec<(u16, u64)>)],
    target: &dyn WriteAt,
    threads: usize,
    prechecked: bool,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<u64> {
    let point = chain.point();
    let bs = point.header.block_size;
    let size = point.header.source_size;
    let hasher = chain.hasher()?;
    let threads = threads.max(1);
    let (pool_tx, pool_rx) = crossbeam_channel::bounded::<AlignedBuf>(threads * 2 + 2);
    for _ in 0..threads * 2 + 2 {
        let _ = pool_tx.send(AlignedBuf::new(crate::writer::FRAME_TARGET as usize));
    }
    let (out_tx, out_rx) = crossbeam_channel::bounded::<Result<Decoded>>(threads * 2);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<u64> {
        for _ in 0..threads {
            let out_tx = out_tx.clone();
            let pool_rx = pool_rx.clone();
            let (next, stop, hasher) = (&next, &stop, &hasher);
            s.spawn(move || {
                let mut w = match Worker::new() {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = out_tx.send(Err(e));
                        return;
                    }
                };
                loop {
                    let t = next.fetch_add(1, Ordering::Relaxed);
                    if t >= tasks.len() || stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(buf) = pool_rx.recv() else { return };
                    let r =
                        decode_task(chain, &tasks[t], hasher, &mut w, buf, prechecked, bs, size);
                    if out_tx.send(r).is_err() {
                        return;
                    }
                }
            });
        }
        drop(out_tx);
        let mut written = 0u64;
        let result = (|| -> Result<()> {
            for _ in 0..tasks.len() {
                if cancel.is_cancelled() {
                    return Err(ImageError::Cancelled);
                }
                let d = out_rx.recv().map_err(|_| {
                    ImageError::Invalid("internal: restore workers stopped early".into())
                })??;
                for &(at, off, len) in &d.runs {
                    target
                        .write_all_at(&d.buf.as_slice()[off..off + len], at)
                        .map_err(|e| {
                            ImageError::io(format!("writing the restore target at offset {at}"), e)
                        })?;
                    written += len as u64;
                    progress.advance(len as u64);
                }
                let _ = pool_tx.send(d.buf);
            }
            Ok(())
        })();
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
            // Unblock decoders waiting for a buffer or for room to send.
            drop(pool_tx);
            drop(out_rx);
        }
        result.map(|()| written)
    })
}

/// Decode one frame into `buf`, check every block it gives against the point's hashes, and
/// list the runs of consecutive blocks to write.
#[allow(clippy::too_many_arguments)]
fn decode_task(
    chain: &Chain,
    task: &(FrameKey, Vec<(u16, u64)>),
    hasher: &crate::crypto::BlockHasher,
    w: &mut Worker,
    mut buf: AlignedBuf,
    prechecked: bool,
    bs: u32,
    size: u64,
) -> Result<Decoded> {
    let ((i, f), blocks) = task;
    let img = &chain.images[*i];
    let point = chain.point();
    img.read_record_into(*f, &mut w.rec)?;
    let bl: Vec<u64> = blocks.iter().map(|b| b.1).collect();
    let raw_len = crate::frame::FrameHeader::decode(&w.rec)
        .map_err(|d| frame_damage(img, &bl, &FrameFault::Damaged(d)))?
        .raw_len as usize;
    if buf.as_slice().len() < raw_len {
        buf = AlignedBuf::new(raw_len);
    }
    let h = img
        .decode_record_into(
            *f,
            &w.rec,
            &mut w.dec,
            &mut w.scratch,
            buf.as_mut_slice(),
            !prechecked,
        )
        .map_err(|fault| frame_damage(img, &bl, &fault))?;
    let raw = &buf.as_slice()[..raw_len];
    let slots = slot_offsets(bs, size, &h.blocks);
    let mut runs: Vec<(u64, usize, usize)> = Vec::new();
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
        let at = n * u64::from(bs);
        match runs.last_mut() {
            Some(r) if r.0 + r.2 as u64 == at && r.1 + r.2 == off => r.2 += len,
            _ => runs.push((at, off, len)),
        }
    }
    Ok(Decoded { buf, runs })
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
