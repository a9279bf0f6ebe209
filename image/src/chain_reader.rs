//! A chain point read at any offset, as the volume it was imaged from: what mounting an image
//! and reading single files go through, from any target, without restoring it first.
//!
//! Each block is read from the newest image of the chain that stores it (located once, as a
//! restore does); its frame is decoded on demand and every block's keyed hash checked, so a
//! damaged image fails the read that meets the damage, naming the block, and never returns
//! wrong bytes. Blocks the image does not hold (free space) read as zeros. The last few
//! decoded frames are kept: a filesystem reads in runs, and one frame holds many blocks.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use crate::chain::{frame_damage, Chain, Located};
use crate::crypto::BlockHasher;
use crate::error::{ImageError, Result};
use crate::frame::FrameFault;
use crate::image::{block_len, slot_offsets};
use crate::io::ReadAt;

/// Decoded frames kept: at most this many (a frame is a few MiB).
const CACHED_FRAMES: usize = 16;

/// One decoded frame: the blocks it holds and their plaintext.
struct Frame {
    blocks: Vec<u64>,
    slots: Vec<(usize, usize)>,
    raw: Vec<u8>,
}

/// The frames decoded last, newest at the back, and the decompressor they share.
struct Decoder {
    frames: VecDeque<((usize, u32), Arc<Frame>)>,
    dec: zstd::bulk::Decompressor<'static>,
}

/// A chain point as a [`ReadAt`] of its source's size.
pub struct ChainReader {
    chain: Chain,
    located: Vec<Located>,
    hasher: BlockHasher,
    decoder: Mutex<Decoder>,
}

impl ChainReader {
    /// Read `chain`'s point (its images unlocked: block hashes need the keys).
    pub fn new(chain: Chain) -> Result<Self> {
        let located = chain.locate_all()?;
        let hasher = chain.hasher()?;
        let dec = zstd::bulk::Decompressor::new()
            .map_err(|e| ImageError::io("starting the decompressor", e))?;
        Ok(Self {
            chain,
            located,
            hasher,
            decoder: Mutex::new(Decoder {
                frames: VecDeque::new(),
                dec,
            }),
        })
    }

    /// The chain read.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// Frame `frame` of chain image `image`, decoded and checked (from the cache if it is
    /// there).
    fn frame(&self, image: usize, frame: u32, block: u64) -> Result<Arc<Frame>> {
        let mut decoder = self
            .decoder
            .lock()
            .map_err(|_| ImageError::Invalid("a read of the image failed midway".into()))?;
        if let Some(i) = decoder
            .frames
            .iter()
            .position(|(k, _)| *k == (image, frame))
        {
            if let Some(hit) = decoder.frames.remove(i) {
                let found = hit.1.clone();
                decoder.frames.push_back(hit);
                return Ok(found);
            }
        }
        let img = self
            .chain
            .images
            .get(image)
            .ok_or_else(|| ImageError::Invalid(format!("no image {image} in the chain")))?;
        let rec = img.read_record(frame)?;
        let (h, raw) = img
            .decode_record(frame, &rec, &mut decoder.dec)
            .map_err(|f| frame_damage(img, &[block], &f))?;
        let point = self.chain.point();
        let slots = slot_offsets(point.header.block_size, point.header.source_size, &h.blocks);
        let decoded = Arc::new(Frame {
            blocks: h.blocks,
            slots,
            raw,
        });
        if decoder.frames.len() >= CACHED_FRAMES {
            decoder.frames.pop_front();
        }
        decoder.frames.push_back(((image, frame), decoded.clone()));
        Ok(decoded)
    }

    /// Copy block `n`'s bytes from `from` (within the block) into `out`.
    fn read_block(&self, n: u64, from: usize, out: &mut [u8]) -> Result<()> {
        let Some(&located) = self.located.get(n as usize) else {
            return Err(ImageError::Invalid(format!("block {n} is past the end")));
        };
        let Located::Data { image, frame, slot } = located else {
            out.fill(0);
            return Ok(());
        };
        let decoded = self.frame(image, frame, n)?;
        let img = &self.chain.images[image];
        let (offset, len) = decoded
            .slots
            .get(usize::from(slot))
            .copied()
            .filter(|&(o, l)| o + l <= decoded.raw.len())
            .ok_or_else(|| ImageError::corrupt(img.name(), "slot out of range"))?;
        if decoded.blocks.get(usize::from(slot)) != Some(&n) {
            return Err(ImageError::corrupt(
                img.name(),
                format!("frame does not hold block {n} where the index says"),
            ));
        }
        let data = &decoded.raw[offset..offset + len];
        if self.hasher.hash(n, data) != self.chain.point().index.entries[n as usize].hash {
            return Err(frame_damage(
                img,
                &[n],
                &FrameFault::Damaged("block hash mismatch".into()),
            ));
        }
        let end = from + out.len();
        let bytes = data.get(from..end).ok_or_else(|| {
            ImageError::corrupt(img.name(), format!("block {n} is shorter than its place"))
        })?;
        out.copy_from_slice(bytes);
        Ok(())
    }
}

impl ReadAt for ChainReader {
    fn size(&self) -> u64 {
        self.chain.point().header.source_size
    }

    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        let size = self.size();
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        let bs = u64::from(self.chain.point().header.block_size);
        while offset < end {
            let n = offset / bs;
            let within = (offset - n * bs) as usize;
            let len = (block_len(bs as u32, size, n) - within).min(buf.len());
            let (now, rest) = buf.split_at_mut(len);
            self.read_block(n, within, now)
                .map_err(|e| io::Error::other(e.to_string()))?;
            buf = rest;
            offset += len as u64;
        }
        Ok(())
    }
}
