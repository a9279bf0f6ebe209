//! Block sources: what the writer images, one block at a time.

use std::ops::{Deref, DerefMut};

use crate::direct::AlignedBuf;
use crate::error::{ImageError, Result};
use crate::extents::Extents;
use crate::index::Entry;
use crate::io::ReadAt;

/// How the writer treats one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Not in use: recorded as unallocated, not read.
    Unallocated,
    /// Read it, hash it, store it if it changed.
    Read,
    /// Already decided (convert keeps inherited and zero entries as they are).
    Fixed(Entry),
}

/// Something the image writer can read blocks from.
pub trait BlockSource: Sync {
    /// Bytes of the source.
    fn size(&self) -> u64;
    /// Block size.
    fn block_size(&self) -> u32;
    /// Classify block `n`.
    fn classify(&self, n: u64) -> Class;
    /// Read the given blocks (ascending, all classified `Read`) into `buf`, back to back;
    /// the last block of the source may be short. Bytes the filesystem does not use are zeros.
    fn read_blocks(&self, blocks: &[u64], buf: &mut BlockBuf) -> Result<()>;
}

/// Blocks read from a source, end to end, in memory aligned for direct I/O so a device reads
/// straight into it (no bounce copy). Reused from batch to batch and not cleared in between:
/// whoever grows it writes every byte it is handed.
pub struct BlockBuf {
    storage: AlignedBuf,
    len: usize,
}

impl Default for BlockBuf {
    fn default() -> Self {
        Self {
            storage: AlignedBuf::new(0),
            len: 0,
        }
    }
}

impl BlockBuf {
    /// An empty buffer with room for `capacity` bytes (untouched memory costs nothing until
    /// it is written).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            storage: AlignedBuf::new(capacity),
            len: 0,
        }
    }

    /// Forget the contents, keep the memory.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Append `n` bytes for the caller to fill; they hold whatever an earlier use left.
    pub fn grow(&mut self, n: usize) -> &mut [u8] {
        let at = self.len;
        let end = at + n;
        if end > self.storage.len() {
            let mut bigger = AlignedBuf::new(end.max(self.storage.len() * 2));
            bigger.as_mut_slice()[..at].copy_from_slice(&self.storage.as_slice()[..at]);
            self.storage = bigger;
        }
        self.len = end;
        &mut self.storage.as_mut_slice()[at..end]
    }

    /// Keep the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl Deref for BlockBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage.as_slice()[..self.len]
    }
}

impl DerefMut for BlockBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage.as_mut_slice()[..self.len]
    }
}

/// A device or file read directly, limited to its used extents.
pub struct DeviceBlocks<R> {
    dev: R,
    used: Extents,
    block_size: u32,
    allocated: Vec<bool>,
    name: String,
}

impl<R: ReadAt> DeviceBlocks<R> {
    /// `used` lists the bytes to image (the whole device for forensic images).
    pub fn new(dev: R, used: Extents, block_size: u32, name: impl Into<String>) -> Self {
        let size = dev.size();
        let bs = u64::from(block_size);
        let mut allocated = vec![false; size.div_ceil(bs) as usize];
        for &(s, e) in used.ranges() {
            let e = e.min(size);
            if s >= e {
                continue;
            }
            for slot in &mut allocated[(s / bs) as usize..e.div_ceil(bs) as usize] {
                *slot = true;
            }
        }
        Self {
            dev,
            used,
            block_size,
            allocated,
            name: name.into(),
        }
    }
}

impl<R: ReadAt> BlockSource for DeviceBlocks<R> {
    fn size(&self) -> u64 {
        self.dev.size()
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn classify(&self, n: u64) -> Class {
        if self.allocated.get(n as usize).copied().unwrap_or(false) {
            Class::Read
        } else {
            Class::Unallocated
        }
    }
    fn read_blocks(&self, blocks: &[u64], buf: &mut BlockBuf) -> Result<()> {
        let bs = u64::from(self.block_size);
        let size = self.dev.size();
        buf.clear();
        let mut i = 0;
        // One read per run of consecutive blocks.
        while i < blocks.len() {
            let mut j = i + 1;
            while j < blocks.len() && blocks[j] == blocks[j - 1] + 1 {
                j += 1;
            }
            let start = blocks[i] * bs;
            let end = ((blocks[j - 1] + 1) * bs).min(size);
            let run = buf.grow((end - start) as usize);
            self.dev.read_exact_at(run, start).map_err(|e| {
                ImageError::io(
                    format!(
                        "reading '{}' at offset {start} ({} bytes)",
                        self.name,
                        end - start
                    ),
                    e,
                )
            })?;
            // Zero what the filesystem does not use, so free space neither costs space nor
            // shows up as a change.
            let mut cursor = start;
            for (s, e) in self.used.overlapping(start, end) {
                run[(cursor - start) as usize..(s - start) as usize].fill(0);
                cursor = e;
            }
            run[(cursor - start) as usize..].fill(0);
            i = j;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direct::ALIGN;

    #[test]
    fn a_block_buffer_keeps_what_it_holds_when_it_grows_and_stays_aligned() {
        let mut buf = BlockBuf::with_capacity(8192);
        buf.grow(8192).fill(1);
        // Past its capacity: moved to bigger memory, the first run kept.
        buf.grow(3 * 8192).fill(2);
        assert_eq!(buf.len(), 4 * 8192);
        assert!(buf[..8192].iter().all(|&b| b == 1));
        assert!(buf[8192..].iter().all(|&b| b == 2));
        assert_eq!(buf.as_ptr().align_offset(ALIGN), 0);
        // Cleared and grown again within its memory: the same memory, aligned.
        let at = buf.as_ptr();
        buf.clear();
        assert!(buf.is_empty());
        buf.grow(2 * 8192).fill(3);
        assert_eq!(buf.as_ptr(), at);
        buf.truncate(100);
        assert_eq!(&buf[..], &[3u8; 100][..]);
    }

    #[test]
    fn a_device_reads_blocks_back_to_back_with_unused_bytes_zeroed() {
        let data: Vec<u8> = (0..10 * 4096u32).map(|i| (i % 251) as u8 | 1).collect();
        let mut used = Extents::new();
        used.add(0, 4096 * 3);
        // Block 5 only half used: its second half reads as zeros.
        used.add(5 * 4096, 2048);
        let src = DeviceBlocks::new(data.clone(), used, 4096, "mem");
        // A buffer reused from an earlier batch: nothing of that shows through.
        let mut buf = BlockBuf::default();
        buf.grow(3 * 4096).fill(0xAA);
        src.read_blocks(&[1, 2, 5], &mut buf).expect("read");
        assert_eq!(buf.len(), 3 * 4096);
        assert_eq!(&buf[..2 * 4096], &data[4096..3 * 4096]);
        assert_eq!(
            &buf[2 * 4096..2 * 4096 + 2048],
            &data[5 * 4096..5 * 4096 + 2048]
        );
        assert!(buf[2 * 4096 + 2048..].iter().all(|&b| b == 0));
    }
}
