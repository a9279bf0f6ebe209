//! Virtual disks: a chain point (any [`BlockSource`]) written as a disk file a hypervisor
//! runs, by our own writers, front to back in one pass and sparse (allocation units with no
//! data are not stored). `qemu-img` is the tests' oracle, not a dependency.
//!
//! - [`qcow2`]: QEMU's format (KVM, Proxmox).
//! - [`vhd`]: Virtual PC's dynamic VHD (older Hyper-V, VirtualBox, Azure).
//! - [`vhdx`]: Hyper-V's dynamic VHDX.

pub mod qcow2;
pub mod vhd;
pub mod vhdx;

use crate::blocks::{BlockBuf, BlockSource, Class};
use crate::error::Result;

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes of the file.
    pub file_bytes: u64,
    /// Disk bytes stored as data (whole allocation units).
    pub data_bytes: u64,
    /// The virtual disk's size.
    pub disk_bytes: u64,
}

/// A byte range of a block source (one partition of a disk image) as a source of its
/// own: its block `n` is the source's block `start / block size + n`.
pub struct Window<'a> {
    inner: &'a dyn BlockSource,
    first: u64,
    len: u64,
}

impl<'a> Window<'a> {
    /// The `len` bytes of `inner` from `start`, which must fall on a block boundary.
    pub fn new(inner: &'a dyn BlockSource, start: u64, len: u64) -> Result<Self> {
        let bs = u64::from(inner.block_size());
        if !start.is_multiple_of(bs) || start.checked_add(len).is_none_or(|end| end > inner.size())
        {
            return Err(crate::ImageError::Invalid(format!(
                "bytes {start}..{} are not a range of whole {bs}-byte blocks of the image's {} bytes",
                start.saturating_add(len),
                inner.size()
            )));
        }
        Ok(Self {
            inner,
            first: start / bs,
            len,
        })
    }
}

impl BlockSource for Window<'_> {
    fn size(&self) -> u64 {
        self.len
    }
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn classify(&self, n: u64) -> Class {
        self.inner.classify(self.first + n)
    }
    fn read_blocks(&self, blocks: &[u64], buf: &mut BlockBuf) -> Result<()> {
        let mapped: Vec<u64> = blocks.iter().map(|n| self.first + n).collect();
        self.inner.read_blocks(&mapped, buf)?;
        // The window's last block may be shorter than the source's block there.
        let bs = u64::from(self.block_size());
        if let Some(&last) = blocks.last() {
            let given = bs.min(self.inner.size() - (self.first + last) * bs);
            let wanted = bs.min(self.len - last * bs);
            let extra = usize::try_from(given - wanted).unwrap_or(0);
            buf.truncate(buf.len().saturating_sub(extra));
        }
        Ok(())
    }
}

/// The file being written: counts its bytes, names it in errors.
struct Output<'a> {
    out: &'a mut dyn std::io::Write,
    written: u64,
    what: &'static str,
}

impl<'a> Output<'a> {
    fn new(out: &'a mut dyn std::io::Write, what: &'static str) -> Self {
        Self {
            out,
            written: 0,
            what,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| crate::ImageError::io(format!("writing the {} file", self.what), e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Flush; what was written.
    fn finish(self, data_bytes: u64, disk_bytes: u64) -> Result<Written> {
        self.out
            .flush()
            .map_err(|e| crate::ImageError::io(format!("writing the {} file", self.what), e))?;
        Ok(Written {
            file_bytes: self.written,
            data_bytes,
            disk_bytes,
        })
    }
}

/// Which of the first `units` allocation units of `unit` bytes hold any data, from the
/// source's classification alone (nothing is read). `unit` is a multiple of the block size.
fn allocated_units(src: &dyn BlockSource, unit: u64, units: u64) -> Vec<bool> {
    let bs = u64::from(src.block_size());
    let per_unit = unit / bs;
    let mut allocated = vec![false; usize::try_from(units).unwrap_or(0)];
    for n in 0..src.size().div_ceil(bs) {
        if src.classify(n) == Class::Read {
            if let Some(a) = allocated.get_mut((n / per_unit) as usize) {
                *a = true;
            }
        }
    }
    allocated
}

/// Disk bytes read and decoded as one piece: several of the image's 4 MiB frames, each
/// decoded once.
const SPAN: u64 = 16 << 20;

/// Write every allocated unit of `unit` bytes in disk order, each after `prefix` (VHD's
/// sector bitmap; empty for the others); the data bytes written. Spans of the disk are
/// read and decoded on every core, and written in order.
fn write_units(
    src: &dyn BlockSource,
    unit: u64,
    allocated: &[bool],
    prefix: &[u8],
    out: &mut Output<'_>,
    progress: &dyn crate::progress::Progress,
    cancel: &crate::progress::Cancel,
) -> Result<u64> {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let stored = allocated.iter().filter(|&&a| a).count() as u64;
    progress.stage("converting", stored * unit);
    let per_span = usize::try_from((SPAN / unit).max(1)).unwrap_or(1);
    let spans: Vec<usize> = (0..allocated.len().div_ceil(per_span))
        .filter(|&k| allocated[k * per_span..].iter().take(per_span).any(|&a| a))
        .collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (next, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    // At most this many spans decoded ahead of the writer.
    let (credit_tx, credit_rx) = crossbeam_channel::bounded::<()>(threads * 2);
    for _ in 0..threads * 2 {
        let _ = credit_tx.send(());
    }
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<(usize, Result<Vec<u8>>)>();
    std::thread::scope(|s| -> Result<u64> {
        for _ in 0..threads {
            let (done_tx, credit_rx) = (done_tx.clone(), credit_rx.clone());
            let (next, stop, spans) = (&next, &stop, &spans);
            s.spawn(move || loop {
                if credit_rx.recv().is_err() || stop.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&k) = spans.get(i) else { return };
                let units = (k * per_span..allocated.len().min((k + 1) * per_span))
                    .filter(|&u| allocated[u])
                    .map(|u| u as u64);
                if done_tx.send((i, read_units(src, unit, units))).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        let mut waiting = BTreeMap::new();
        let mut written = 0;
        let result = (|| {
            while written < spans.len() {
                if cancel.is_cancelled() {
                    return Err(crate::ImageError::Cancelled);
                }
                let Ok((i, data)) = done_rx.recv() else {
                    break;
                };
                waiting.insert(i, data);
                while let Some(data) = waiting.remove(&written) {
                    for piece in data?.chunks(usize::try_from(unit).unwrap_or(usize::MAX)) {
                        out.put(prefix)?;
                        out.put(piece)?;
                        progress.advance(unit);
                    }
                    written += 1;
                    let _ = credit_tx.send(());
                }
            }
            Ok(stored * unit)
        })();
        stop.store(true, Ordering::Relaxed);
        // Wake every worker waiting for a credit, so the scope can end.
        for _ in 0..threads {
            let _ = credit_tx.send(());
        }
        result
    })
}

/// The given units of `unit` bytes of the source, back to back: their data blocks as read
/// (in one read, so each frame is decoded once), zeros elsewhere and past the source's end.
fn read_units(
    src: &dyn BlockSource,
    unit: u64,
    units: impl Iterator<Item = u64>,
) -> Result<Vec<u8>> {
    let bs = u64::from(src.block_size());
    let size = src.size();
    let per_unit = unit / bs;
    let units: Vec<u64> = units.collect();
    let wanted: Vec<u64> = units
        .iter()
        .flat_map(|&u| u * per_unit..((u + 1) * per_unit).min(size.div_ceil(bs)))
        .filter(|&n| src.classify(n) == Class::Read)
        .collect();
    let mut read = BlockBuf::default();
    src.read_blocks(&wanted, &mut read)?;
    let mut out = vec![0u8; units.len() * usize::try_from(unit).unwrap_or(0)];
    let mut at = 0usize;
    let mut slot = 0usize;
    for &n in &wanted {
        while units[slot] != n / per_unit {
            slot += 1;
        }
        let len = usize::try_from(bs.min(size - n * bs)).unwrap_or(0);
        let to = slot * usize::try_from(unit).unwrap_or(0)
            + usize::try_from((n % per_unit) * bs).unwrap_or(0);
        out[to..to + len].copy_from_slice(&read[at..at + len]);
        at += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::DeviceBlocks;
    use crate::extents::Extents;

    #[test]
    fn a_window_is_whole_blocks_of_its_source_cut_at_its_end() {
        let bytes: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let mut used = Extents::new();
        used.add(0, 40_000);
        let src = DeviceBlocks::new(bytes.clone(), used, 4096, "bytes");
        assert!(
            Window::new(&src, 100, 4096).is_err(),
            "not on a block boundary"
        );
        assert!(Window::new(&src, 8192, 40_000).is_err(), "past the end");
        // Blocks 2.. of the source, the last one cut short inside the source's block 6.
        let w = Window::new(&src, 8192, 4096 * 4 + 100).expect("window");
        assert_eq!(w.size(), 16_484);
        let mut buf = BlockBuf::default();
        w.read_blocks(&[0, 1, 2, 3, 4], &mut buf).expect("read");
        assert_eq!(&buf[..], &bytes[8192..8192 + 16_484]);
        // At the source's own short end: nothing cut twice.
        let w = Window::new(&src, 36_864, 3136).expect("tail");
        w.read_blocks(&[0], &mut buf).expect("read");
        assert_eq!(&buf[..], &bytes[36_864..]);
    }
}

#[cfg(test)]
mod test_support {
    use super::Written;
    use crate::blocks::DeviceBlocks;
    use crate::extents::Extents;
    use crate::fs::test_support::{run, tool};
    use crate::progress::{Cancel, NoProgress};
    use std::process::Command;

    /// A disk of `size` bytes (a sparse file of whole sectors) whose used extents hold a
    /// pattern (the first one zeros), written as `format` (`qcow2`, `vpc`, `vhdx`): `qemu-img check`
    /// finds it clean, and `qemu-img compare` finds it equal to the disk (any room the
    /// format adds at the end reads as zeros). `None` (skipped) without qemu-img.
    pub fn round_trip(
        format: &str,
        size: u64,
        block_size: u32,
        used: &[(u64, u64)],
    ) -> Option<Written> {
        let unit = match format {
            "qcow2" => (64u64 << 10).max(u64::from(block_size)),
            _ => 2 << 20,
        };
        let qemu_img = tool("qemu-img")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("disk.raw");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&raw)
            .expect("create");
        // As QEMU sees it: whole sectors.
        file.set_len(size.div_ceil(512) * 512).expect("size");
        let mut extents = Extents::new();
        for (k, &(start, len)) in used.iter().enumerate() {
            extents.add(start, len);
            if k > 0 {
                let bytes: Vec<u8> = (0..len)
                    .map(|i| (i * 31 + k as u64 * 7 + (i >> 12)) as u8 | 1)
                    .collect();
                std::os::unix::fs::FileExt::write_all_at(&file, &bytes, start).expect("write");
            }
        }
        // Stored: the allocation units the used extents touch.
        let touched: std::collections::BTreeSet<u64> = extents
            .ranges()
            .iter()
            .flat_map(|&(s, e)| s / unit..e.div_ceil(unit))
            .collect();
        let src = DeviceBlocks::new(
            crate::io::FileReadAt::new(file, size),
            extents,
            block_size,
            "test disk",
        );
        let disk = dir.path().join(format!("disk.{format}"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&disk).expect("create"));
        let (progress, cancel) = (NoProgress, Cancel::new());
        let w = match format {
            "qcow2" => super::qcow2::write_qcow2(&src, &mut out, &progress, &cancel),
            "vhdx" => super::vhdx::write_vhdx(
                &src,
                &mut out,
                [[1; 16], [2; 16], [3; 16]],
                &progress,
                &cancel,
            ),
            _ => super::vhd::write_vhd(&src, &mut out, [7; 16], 0, &progress, &cancel),
        }
        .expect("write");
        drop(out);
        assert_eq!(std::fs::metadata(&disk).expect("meta").len(), w.file_bytes);
        assert!(w.disk_bytes >= size.div_ceil(512) * 512, "{w:?}");
        assert_eq!(w.data_bytes, touched.len() as u64 * unit, "{w:?}");
        // qemu-img checks qcow2's and VHDX's tables; it has no check for VHD.
        if format != "vpc" {
            run(Command::new(&qemu_img)
                .args(["check", "-f", format])
                .arg(&disk));
        }
        let info = run(Command::new(&qemu_img)
            .args(["info", "--output=json", "-f", format])
            .arg(&disk));
        let info = String::from_utf8_lossy(&info.stdout).into_owned();
        assert!(
            info.contains(&format!("\"virtual-size\": {}", w.disk_bytes)),
            "{info}"
        );
        run(Command::new(&qemu_img)
            .args(["compare", "-f", "raw", "-F", format])
            .arg(&raw)
            .arg(&disk));
        Some(w)
    }
}
