//! The trailer: the last bytes of a complete image.

use crate::le::{arr, u16_at, u32_at, u64_at};
use crate::magic::{END_MAGIC, TRAILER_MAGIC};

/// Trailer length in bytes.
pub const TRAILER_LEN: usize = 168;
const CRC_AT: usize = 152;

/// The decoded trailer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trailer {
    /// Format version that wrote the image (as in the header).
    pub version: u16,
    /// Number of parts the image was split into (1 when not split).
    pub part_count: u32,
    /// Total logical length including the trailer.
    pub logical_len: u64,
    /// Logical offset of the index record.
    pub index_offset: u64,
    /// Length of the index record (of one copy, from version 2 on).
    pub index_len: u64,
    /// BLAKE3 of header, metadata and index record.
    pub index_digest: [u8; 32],
    /// Keyed BLAKE3 of the same bytes under the MAC key (encrypted images; zeros otherwise).
    pub index_mac: [u8; 32],
    /// Content digest of the index (what children record).
    pub content_digest: [u8; 32],
    /// Plaintext bytes stored in frames.
    pub data_bytes: u64,
    /// Bytes of frame records.
    pub stored_bytes: u64,
}

impl Trailer {
    /// Copies of the index record before the trailer: two from version 2 on, so one damaged
    /// byte there no longer costs the whole image.
    pub fn index_copies(&self) -> u64 {
        if self.version >= 2 {
            2
        } else {
            1
        }
    }

    /// Encode.
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0u8; TRAILER_LEN];
        b[0..8].copy_from_slice(&TRAILER_MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.part_count.to_le_bytes());
        b[16..24].copy_from_slice(&self.logical_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.index_offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.index_len.to_le_bytes());
        b[40..72].copy_from_slice(&self.index_digest);
        b[72..104].copy_from_slice(&self.index_mac);
        b[104..136].copy_from_slice(&self.content_digest);
        b[136..144].copy_from_slice(&self.data_bytes.to_le_bytes());
        b[144..152].copy_from_slice(&self.stored_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        b[160..168].copy_from_slice(&END_MAGIC);
        b
    }

    /// Decode. [`TrailerFault::Missing`] when no trailer is there (the write did not finish,
    /// or later parts are missing); [`TrailerFault::Damaged`] when one is there but a byte
    /// of it changed.
    pub fn decode(b: &[u8]) -> Result<Self, TrailerFault> {
        if b.len() != TRAILER_LEN || b[0..8] != TRAILER_MAGIC || b[160..168] != END_MAGIC {
            return Err(TrailerFault::Missing);
        }
        if u32_at(b, CRC_AT) != crc32c::crc32c(&b[..CRC_AT]) {
            return Err(TrailerFault::Damaged("its checksum does not match"));
        }
        // Reserved: written as zeros, and covered by nothing else.
        if b[CRC_AT + 4..160] != [0; 4] || b[10..12] != [0; 2] {
            return Err(TrailerFault::Damaged("its reserved bytes are not zero"));
        }
        if u16_at(b, 8) == 0 {
            return Err(TrailerFault::Damaged("it names format version 0"));
        }
        Ok(Self {
            version: u16_at(b, 8),
            part_count: u32_at(b, 12),
            logical_len: u64_at(b, 16),
            index_offset: u64_at(b, 24),
            index_len: u64_at(b, 32),
            index_digest: arr(b, 40),
            index_mac: arr(b, 72),
            content_digest: arr(b, 104),
            data_bytes: u64_at(b, 136),
            stored_bytes: u64_at(b, 144),
        })
    }
}

/// Why the end of an image is not a trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrailerFault {
    /// No trailer there: the image is incomplete.
    Missing,
    /// A trailer with damage: what is wrong.
    Damaged(&'static str),
}
