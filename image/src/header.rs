//! The fixed-size image header at offset 0 of part 1.

use crate::crypto::{Cipher, KdfParams, WRAPPED_LEN};
use crate::error::{ImageError, Result};
use crate::le::{arr, u16_at, u32_at, u64_at};
use crate::magic::{FORMAT_VERSION, HEADER_MAGIC};

/// Header length in bytes.
pub const HEADER_LEN: usize = 4096;
const _: () = assert!(HEADER_LEN == 4096);
/// Bytes covered by the key-wrapping AAD: everything before the key section.
pub const KEY_SECTION: usize = 136;
/// Offset of the CRC-32C of bytes `0..CRC_AT`.
const CRC_AT: usize = HEADER_LEN - 4;
/// Smallest and largest block size.
pub const MIN_BLOCK_SIZE: u32 = 4096;
/// Largest block size.
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;

/// Full, incremental or differential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Every block is stored.
    Full,
    /// Changed blocks since the parent (the previous image of the chain).
    Incremental,
    /// Changed blocks since the chain's full image.
    Differential,
}

/// Which sectors an image holds: used-sector or forensic (not to be confused with [`Kind`]:
/// full, incremental or differential).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Coverage {
    /// Only blocks the filesystem uses.
    UsedSector,
    /// Every sector.
    Forensic,
}

/// A 16-byte random identifier, shown as a UUID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Id(pub [u8; 16]);

impl Id {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut b: [u8; 16] = crate::crypto::random_array();
        // Mark it as a version-4 UUID so tools that parse it agree.
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Self(b)
    }

    /// All zeros (no parent).
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = hex(&self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}

impl std::fmt::Debug for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The wrapped keys (encrypted images) or the clear chain key (unencrypted images).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySection {
    /// Unencrypted: the chain key in clear (it only keys change-detection hashes).
    Plain {
        /// Chain key.
        chain_key: [u8; 32],
    },
    /// Encrypted: Argon2id parameters and the AES-256-GCM-wrapped chain and image keys.
    Wrapped {
        /// KDF parameters.
        kdf: KdfParams,
        /// Wrapping nonce.
        nonce: [u8; 12],
        /// Wrapped keys and tag.
        blob: [u8; WRAPPED_LEN],
    },
}

/// The decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format version that wrote the image.
    pub version: u16,
    /// This image.
    pub image_id: Id,
    /// The chain it belongs to.
    pub chain_id: Id,
    /// The parent image (nil for a full image).
    pub parent_id: Id,
    /// Content digest of the parent's index (zeros for a full image).
    pub parent_digest: [u8; 32],
    /// Full / incremental / differential.
    pub kind: Kind,
    /// Used-sector / forensic.
    pub method: Coverage,
    /// Frame cipher.
    pub cipher: Cipher,
    /// zstd level used (informational).
    pub compression_level: i8,
    /// Block size (power of two).
    pub block_size: u32,
    /// Bytes of the imaged source.
    pub source_size: u64,
    /// Maximum part size, 0 when not split.
    pub split_size: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Length of the JSON metadata record after the header.
    pub meta_len: u32,
    /// Key material.
    pub keys: KeySection,
}

impl Header {
    /// Number of blocks of the source.
    pub fn block_count(&self) -> u64 {
        self.source_size.div_ceil(u64::from(self.block_size))
    }

    /// Where the frames begin.
    pub fn data_start(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.meta_len)
    }

    /// Encode to the fixed 4096 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&HEADER_MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        // 10..12 flags, reserved
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..32].copy_from_slice(&self.image_id.0);
        b[32..48].copy_from_slice(&self.chain_id.0);
        b[48..64].copy_from_slice(&self.parent_id.0);
        b[64..96].copy_from_slice(&self.parent_digest);
        b[96] = match self.kind {
            Kind::Full => 0,
            Kind::Incremental => 1,
            Kind::Differential => 2,
        };
        b[97] = match self.method {
            Coverage::UsedSector => 0,
            Coverage::Forensic => 1,
        };
        b[98] = self.cipher.code();
        b[99] = self.compression_level.to_le_bytes()[0];
        b[100..104].copy_from_slice(&self.block_size.to_le_bytes());
        b[104..112].copy_from_slice(&self.source_size.to_le_bytes());
        b[112..120].copy_from_slice(&self.split_size.to_le_bytes());
        b[120..128].copy_from_slice(&self.created.to_le_bytes());
        b[128..132].copy_from_slice(&self.meta_len.to_le_bytes());
        match &self.keys {
            KeySection::Plain { chain_key } => {
                b[136] = 0;
                b[180..212].copy_from_slice(chain_key);
            }
            KeySection::Wrapped { kdf, nonce, blob } => {
                b[136] = 1;
                b[140..144].copy_from_slice(&kdf.m_cost_kib.to_le_bytes());
                b[144..148].copy_from_slice(&kdf.t_cost.to_le_bytes());
                b[148..152].copy_from_slice(&kdf.p_cost.to_le_bytes());
                b[152..168].copy_from_slice(&kdf.salt);
                b[168..180].copy_from_slice(nonce);
                b[180..180 + WRAPPED_LEN].copy_from_slice(blob);
            }
        }
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and check magic, version, checksum and every field's range.
    pub fn decode(name: &str, b: &[u8]) -> Result<Self> {
        if b.len() < HEADER_LEN || b[0..8] != HEADER_MAGIC {
            return Err(ImageError::NotAnImage {
                name: name.to_owned(),
            });
        }
        let version = u16_at(b, 8);
        let crc_ok = u32_at(b, CRC_AT) == crc32c::crc32c(&b[..CRC_AT]);
        if version > FORMAT_VERSION || version == 0 {
            // Intact, it is a format this tool does not know; otherwise a damaged version
            // field (or a newer layout that puts its checksum elsewhere).
            if !crc_ok {
                return Err(ImageError::corrupt(
                    name,
                    format!(
                        "header checksum mismatch (the header names format version {version}, \
                         which this tool, of version {FORMAT_VERSION}, does not know: damaged, \
                         or written by a newer holdfast)"
                    ),
                ));
            }
            return Err(ImageError::UnsupportedVersion {
                name: name.to_owned(),
                version,
                supported: FORMAT_VERSION,
            });
        }
        if !crc_ok {
            return Err(ImageError::corrupt(name, "header checksum mismatch"));
        }
        let bad = |what: &str| ImageError::corrupt(name, format!("header field {what} is invalid"));
        if u32_at(b, 12) as usize != HEADER_LEN {
            return Err(bad("length"));
        }
        let kind = match b[96] {
            0 => Kind::Full,
            1 => Kind::Incremental,
            2 => Kind::Differential,
            _ => return Err(bad("kind")),
        };
        let method = match b[97] {
            0 => Coverage::UsedSector,
            1 => Coverage::Forensic,
            _ => return Err(bad("method")),
        };
        let cipher = Cipher::from_code(b[98]).ok_or_else(|| bad("cipher"))?;
        let block_size = u32_at(b, 100);
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(bad("block size"));
        }
        let keys = match (b[136], cipher) {
            (0, Cipher::None) => KeySection::Plain {
                chain_key: arr(b, 180),
            },
            (1, c) if c != Cipher::None => KeySection::Wrapped {
                kdf: KdfParams {
                    m_cost_kib: u32_at(b, 140),
                    t_cost: u32_at(b, 144),
                    p_cost: u32_at(b, 148),
                    salt: arr(b, 152),
                },
                nonce: arr(b, 168),
                blob: arr(b, 180),
            },
            _ => return Err(bad("key section")),
        };
        let h = Header {
            version,
            image_id: Id(arr(b, 16)),
            chain_id: Id(arr(b, 32)),
            parent_id: Id(arr(b, 48)),
            parent_digest: arr(b, 64),
            kind,
            method,
            cipher,
            compression_level: i8::from_le_bytes([b[99]]),
            block_size,
            source_size: u64_at(b, 104),
            split_size: u64_at(b, 112),
            created: u64_at(b, 120),
            meta_len: u32_at(b, 128),
            keys,
        };
        if (h.kind == Kind::Full) != h.parent_id.is_nil() {
            return Err(bad("parent"));
        }
        if h.split_size != 0 && h.split_size < crate::parts::MIN_SPLIT_SIZE {
            return Err(bad("split size"));
        }
        if h.meta_len > crate::meta::MAX_META_LEN {
            return Err(bad("metadata length"));
        }
        Ok(h)
    }
}
