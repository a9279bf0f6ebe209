//! The block index: one entry per block of the source, and the frame table.
//!
//! The index is written after the last frame. Each entry says what block `n` of the source is
//! at this point of the chain and carries the keyed hash of its plaintext, so the next
//! incremental can detect changes from this image alone.

use crate::crypto::{BlockHash, HASH_LEN};
use crate::header::{Header, Kind};
use crate::le::{arr, u32_at, u64_at};
use crate::magic::INDEX_MAGIC;

/// Bytes of one entry on disk.
pub const ENTRY_LEN: usize = 24;
/// Bytes of one frame-table row on disk.
pub const FRAME_REF_LEN: usize = 20;
/// Fixed part of the index record before its body.
pub const INDEX_FIXED_LEN: usize = 32;
const FLAG_ZSTD: u32 = 1;

/// What a block is at this point of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockState {
    /// Not in use by the filesystem: not imaged; restore leaves it (or zeroes it on request).
    Unallocated,
    /// All zeros: no data stored.
    Zero,
    /// Stored in a frame of this image.
    Data,
    /// Unchanged since the parent: stored in an ancestor.
    Inherited,
}

impl BlockState {
    fn code(self) -> u8 {
        match self {
            BlockState::Unallocated => 0,
            BlockState::Zero => 1,
            BlockState::Data => 2,
            BlockState::Inherited => 3,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => BlockState::Unallocated,
            1 => BlockState::Zero,
            2 => BlockState::Data,
            3 => BlockState::Inherited,
            _ => return None,
        })
    }
    /// Holds content (stored here or in an ancestor).
    pub fn has_content(self) -> bool {
        matches!(self, BlockState::Data | BlockState::Inherited)
    }
}

/// One index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// State.
    pub state: BlockState,
    /// Slot in the frame (Data only).
    pub slot: u16,
    /// Row in the frame table (Data only).
    pub frame: u32,
    /// Keyed hash of the plaintext (Data and Inherited; zeros otherwise).
    pub hash: BlockHash,
}

impl Entry {
    /// An unallocated block.
    pub const UNALLOCATED: Entry = Entry {
        state: BlockState::Unallocated,
        slot: 0,
        frame: 0,
        hash: [0; HASH_LEN],
    };
    /// An all-zero block.
    pub const ZERO: Entry = Entry {
        state: BlockState::Zero,
        slot: 0,
        frame: 0,
        hash: [0; HASH_LEN],
    };
}

/// One frame-table row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    /// Logical offset of the record.
    pub offset: u64,
    /// Record length (header, block list, payload).
    pub len: u32,
    /// The frame id the record must carry.
    pub frame_id: u64,
}

/// The decoded index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    /// One entry per block of the source.
    pub entries: Vec<Entry>,
    /// Frames in file order.
    pub frames: Vec<FrameRef>,
}

impl Index {
    /// The layout-independent digest of what this image restores to: block size, source size,
    /// and per block its class and hash. Equal for an incremental and the full made by merging
    /// its chain; children record their parent's.
    pub fn content_digest(&self, block_size: u32, source_size: u64) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"holdfast content digest v1");
        h.update(&block_size.to_le_bytes());
        h.update(&source_size.to_le_bytes());
        for e in &self.entries {
            let class: u8 = match e.state {
                BlockState::Unallocated => 0,
                BlockState::Zero => 1,
                BlockState::Data | BlockState::Inherited => 2,
            };
            h.update(&[class]);
            h.update(&e.hash);
        }
        *h.finalize().as_bytes()
    }

    /// Encode the whole index record (fixed part and zstd-compressed body).
    pub fn encode(&self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::with_capacity(
            16 + self.frames.len() * FRAME_REF_LEN + self.entries.len() * ENTRY_LEN,
        );
        body.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        body.extend_from_slice(&(self.frames.len() as u64).to_le_bytes());
        for f in &self.frames {
            body.extend_from_slice(&f.offset.to_le_bytes());
            body.extend_from_slice(&f.len.to_le_bytes());
            body.extend_from_slice(&f.frame_id.to_le_bytes());
        }
        for e in &self.entries {
            body.push(e.state.code());
            body.push(0);
            body.extend_from_slice(&e.slot.to_le_bytes());
            body.extend_from_slice(&e.frame.to_le_bytes());
            body.extend_from_slice(&e.hash);
        }
        let packed = zstd::bulk::compress(&body, 3)?;
        let mut rec = Vec::with_capacity(INDEX_FIXED_LEN + packed.len());
        rec.extend_from_slice(&INDEX_MAGIC);
        rec.extend_from_slice(&FLAG_ZSTD.to_le_bytes());
        rec.extend_from_slice(&0u32.to_le_bytes());
        rec.extend_from_slice(&(packed.len() as u64).to_le_bytes());
        rec.extend_from_slice(&(body.len() as u64).to_le_bytes());
        rec.extend_from_slice(&packed);
        Ok(rec)
    }

    /// Decode an index record and check it against the header and the data area
    /// `[data_start, data_end)`. Errors are details for a "damaged" message.
    pub fn decode(rec: &[u8], header: &Header, data_end: u64) -> Result<Self, String> {
        if rec.len() < INDEX_FIXED_LEN || rec[..8] != INDEX_MAGIC {
            return Err("index magic missing".into());
        }
        let flags = u32_at(rec, 8);
        let stored = u64_at(rec, 16);
        let raw_len = u64_at(rec, 24);
        let blocks = header.block_count();
        if stored != (rec.len() - INDEX_FIXED_LEN) as u64 {
            return Err("index length does not match the trailer".into());
        }
        // Bound the allocation by what this header can legitimately need.
        let max_frames = blocks;
        let max_raw = 16 + max_frames * FRAME_REF_LEN as u64 + blocks * ENTRY_LEN as u64;
        if raw_len > max_raw || raw_len < 16 {
            return Err(format!("index body length {raw_len} is out of range"));
        }
        // The header decides how large the index is: a damaged or hand-made one may claim far
        // more than this machine has, which must be an error, not an aborted process.
        let mut body: Vec<u8> = Vec::new();
        body.try_reserve_exact(raw_len as usize).map_err(|_| {
            format!(
                "index needs {raw_len} bytes of memory (for a source of {} bytes), more than can be had",
                header.source_size
            )
        })?;
        if flags & FLAG_ZSTD != 0 {
            zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(&rec[INDEX_FIXED_LEN..], &mut body))
                .map_err(|e| format!("index does not decompress: {e}"))?;
        } else {
            body.extend_from_slice(&rec[INDEX_FIXED_LEN..]);
        }
        if body.len() as u64 != raw_len {
            return Err("index body length mismatch".into());
        }
        let n_entries = u64_at(&body, 0);
        let n_frames = u64_at(&body, 8);
        if n_entries != blocks {
            return Err(format!(
                "index has {n_entries} entries, the source has {blocks} blocks"
            ));
        }
        if 16 + n_frames * FRAME_REF_LEN as u64 + n_entries * ENTRY_LEN as u64 != raw_len {
            return Err("index body size does not match its counts".into());
        }
        // Every frame takes at least a byte of the data area.
        if n_frames > data_end.saturating_sub(header.data_start()) {
            return Err(format!(
                "index lists {n_frames} frames, more than the image holds"
            ));
        }
        let mut frames = Vec::with_capacity(n_frames as usize);
        let mut at = 16usize;
        let mut prev_end = header.data_start();
        let mut prev_id: Option<u64> = None;
        for i in 0..n_frames {
            let f = FrameRef {
                offset: u64_at(&body, at),
                len: u32_at(&body, at + 8),
                frame_id: u64_at(&body, at + 12),
            };
            at += FRAME_REF_LEN;
            let end = f
                .offset
                .checked_add(u64::from(f.len))
                .ok_or("frame offset overflows")?;
            if f.offset < prev_end || end > data_end {
                return Err(format!(
                    "frame {i} at offset {} lies outside the data area or overlaps",
                    f.offset
                ));
            }
            if prev_id.is_some_and(|p| f.frame_id <= p) {
                return Err(format!("frame {i} id {} is not increasing", f.frame_id));
            }
            prev_end = end;
            prev_id = Some(f.frame_id);
            frames.push(f);
        }
        let mut entries = Vec::new();
        entries.try_reserve_exact(n_entries as usize).map_err(|_| {
            format!("index lists {n_entries} blocks, more than can be held in memory")
        })?;
        for b in 0..n_entries {
            let state = BlockState::from_code(body[at])
                .ok_or_else(|| format!("block {b} has an unknown state"))?;
            let e = Entry {
                state,
                slot: u16::from_le_bytes([body[at + 2], body[at + 3]]),
                frame: u32_at(&body, at + 4),
                hash: arr(&body, at + 8),
            };
            at += ENTRY_LEN;
            if e.state == BlockState::Data
                && (e.frame as usize >= frames.len()
                    || usize::from(e.slot) >= crate::frame::MAX_FRAME_BLOCKS)
            {
                return Err(format!("block {b} points to a frame that does not exist"));
            }
            if e.state == BlockState::Inherited && header.kind == Kind::Full {
                return Err(format!("block {b} of a full image is marked inherited"));
            }
            entries.push(e);
        }
        Ok(Index { entries, frames })
    }
}
