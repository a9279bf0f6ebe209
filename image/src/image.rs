//! Opening an image: every check a reader makes before it trusts an offset.

use std::sync::Arc;

use crate::crypto::{FrameCipher, Keys};
use crate::error::{ImageError, Result};
use crate::frame::{self, FrameFault, FrameHeader};
use crate::header::{Header, KeySection, HEADER_LEN, KEY_SECTION};
use crate::index::Index;
use crate::io::ReadAt;
use crate::meta::Metadata;
use crate::parts::{LogicalStream, PartStore};
use crate::trailer::{Trailer, TrailerFault, TRAILER_LEN};

/// An opened, structurally checked image.
pub struct Image {
    name: String,
    stream: LogicalStream,
    /// The header.
    pub header: Header,
    /// The metadata record.
    pub meta: Metadata,
    /// The block index.
    pub index: Index,
    /// The trailer.
    pub trailer: Trailer,
    header_bytes: Vec<u8>,
    meta_bytes: Vec<u8>,
    index_bytes_digest_input: Vec<u8>,
    /// What was wrong with the index's first copy when its second was used.
    index_repaired: Option<String>,
    keys: Option<Keys>,
    cipher: Option<Arc<FrameCipher>>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("name", &self.name)
            .field("id", &self.header.image_id)
            .finish_non_exhaustive()
    }
}

impl Image {
    /// Open and check: header (magic, version, checksum, fields), parts (all present, each
    /// carrying this image's part header), trailer (magic, checksum, lengths), metadata,
    /// index (digest, bounds of every frame and entry) and content digest.
    pub fn open(store: Arc<dyn PartStore>) -> Result<Self> {
        let name = store.display_name();
        let io_err = |e| ImageError::io(format!("reading '{name}'"), e);
        let size1 = store.part_size(1).map_err(io_err)?.ok_or_else(|| {
            ImageError::io(
                format!("opening '{name}'"),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })?;
        if size1 < HEADER_LEN as u64 {
            return Err(if size1 >= 8 {
                Self::short(&store, &name)?
            } else {
                ImageError::NotAnImage { name }
            });
        }
        let mut header_bytes = vec![0u8; HEADER_LEN];
        store
            .read_part_at(1, &mut header_bytes, 0)
            .map_err(io_err)?;
        let header = Header::decode(&name, &header_bytes)?;
        let stream =
            LogicalStream::open(store.clone(), &header.image_id, header.split_size, &name)?;
        let len = stream.size();
        let min_len = header.data_start() + TRAILER_LEN as u64;
        let truncated = |detail: &str| ImageError::Truncated {
            name: name.clone(),
            detail: detail.to_owned(),
        };
        if len < min_len {
            return Err(truncated("it ends before its trailer"));
        }
        let mut tb = [0u8; TRAILER_LEN];
        stream
            .read_exact_at(&mut tb, len - TRAILER_LEN as u64)
            .map_err(io_err)?;
        let trailer = Trailer::decode(&tb).map_err(|fault| match fault {
            TrailerFault::Missing => truncated(
                "no valid trailer at its end (the write did not finish, or later split parts are missing)",
            ),
            TrailerFault::Damaged(what) => {
                ImageError::corrupt(&name, format!("its trailer is damaged: {what}"))
            }
        })?;
        if trailer.part_count > stream.part_count() {
            let number = stream.part_count() + 1;
            return Err(ImageError::MissingPart {
                name: name.clone(),
                number,
                part: stream.part_name(number),
            });
        }
        if trailer.part_count != stream.part_count() || trailer.logical_len != len {
            return Err(ImageError::corrupt(
                &name,
                "trailer does not match the parts found",
            ));
        }
        if trailer.version != header.version {
            return Err(ImageError::corrupt(
                &name,
                format!(
                    "its header names format version {} and its trailer {}",
                    header.version, trailer.version
                ),
            ));
        }
        let data_end = len - TRAILER_LEN as u64;
        if trailer.index_offset < header.data_start()
            || trailer
                .index_len
                .checked_mul(trailer.index_copies())
                .and_then(|l| l.checked_add(trailer.index_offset))
                != Some(data_end)
        {
            return Err(ImageError::corrupt(
                &name,
                "index location in the trailer is out of bounds",
            ));
        }
        let mut meta_bytes = vec![0u8; header.meta_len as usize];
        stream
            .read_exact_at(&mut meta_bytes, HEADER_LEN as u64)
            .map_err(io_err)?;
        // The largest legitimate index: 24 bytes per block plus frame table, compressed.
        if trailer.index_len > 64 + header.block_count() * 64 {
            return Err(ImageError::corrupt(&name, "index length is out of range"));
        }
        let mut digest_input = header_bytes.clone();
        digest_input.extend_from_slice(&meta_bytes);
        let (index, index_rec, index_repaired) = match read_index(
            &stream,
            &name,
            &header,
            &trailer,
            &digest_input,
            0,
        ) {
            Ok((index, rec)) => (index, rec, None),
            Err(first) if trailer.index_copies() == 2 => {
                match read_index(&stream, &name, &header, &trailer, &digest_input, 1) {
                        Ok((index, rec)) => (
                            index,
                            rec,
                            Some(format!(
                                "the index's first copy (at logical offset {}) is damaged: its checksum does not match (the second copy is intact and was used)",
                                trailer.index_offset
                            )),
                        ),
                        // Both bad: header or metadata, or both copies.
                        Err(_) => return Err(first),
                    }
            }
            Err(first) => return Err(first),
        };
        let meta: Metadata = serde_json::from_slice(&meta_bytes)
            .map_err(|e| ImageError::corrupt(&name, format!("metadata is not valid: {e}")))?;
        let keys = match &header.keys {
            KeySection::Plain { chain_key } => Some(Keys::plain(*chain_key)),
            KeySection::Wrapped { .. } => None,
        };
        digest_input.extend_from_slice(&index_rec);
        Ok(Self {
            name,
            stream,
            header,
            meta,
            index,
            trailer,
            header_bytes,
            meta_bytes,
            index_bytes_digest_input: digest_input,
            index_repaired,
            keys,
            cipher: None,
        })
    }

    /// What was wrong with the index's first copy, when opening used the second.
    pub fn index_repaired(&self) -> Option<&str> {
        self.index_repaired.as_deref()
    }

    /// Damage found in a copy of the index, which the other copy stood in for: the first
    /// copy as found when opening, else the second as read now (`None`: every copy intact).
    pub fn index_copy_damage(&self) -> Result<Option<String>> {
        if let Some(why) = &self.index_repaired {
            return Ok(Some(why.clone()));
        }
        if self.trailer.index_copies() < 2 {
            return Ok(None);
        }
        let at = self.trailer.index_offset + self.trailer.index_len;
        let mut copy = vec![0u8; self.trailer.index_len as usize];
        self.stream
            .read_exact_at(&mut copy, at)
            .map_err(|e| ImageError::io(format!("reading '{}'", self.name), e))?;
        let header_and_meta =
            &self.index_bytes_digest_input[..self.header_bytes.len() + self.meta_bytes.len()];
        Ok((digest_of(header_and_meta, &copy) != self.trailer.index_digest).then(|| {
            format!(
                "the index's second copy (at logical offset {at}) is damaged: its checksum does not match (the first copy is intact)"
            )
        }))
    }

    /// A part 1 shorter than a header: either truncated or not an image at all.
    fn short(store: &Arc<dyn PartStore>, name: &str) -> Result<ImageError> {
        let mut magic = [0u8; 8];
        store
            .read_part_at(1, &mut magic, 0)
            .map_err(|e| ImageError::io(format!("reading '{name}'"), e))?;
        Ok(if magic == crate::magic::HEADER_MAGIC {
            ImageError::Truncated {
                name: name.to_owned(),
                detail: "it ends inside its header".into(),
            }
        } else {
            ImageError::NotAnImage {
                name: name.to_owned(),
            }
        })
    }

    /// Display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when the frames are encrypted.
    pub fn is_encrypted(&self) -> bool {
        matches!(self.header.keys, KeySection::Wrapped { .. })
    }

    /// True when keys are available (unencrypted, or unlocked).
    pub fn is_unlocked(&self) -> bool {
        self.keys.is_some()
    }

    /// Unlock with the password: checks it against the wrapped keys before anything is
    /// decrypted, then authenticates header, metadata and index with the MAC key.
    pub fn unlock(&mut self, password: Option<&[u8]>) -> Result<()> {
        let KeySection::Wrapped { kdf, nonce, blob } = &self.header.keys else {
            return Ok(());
        };
        if self.keys.is_some() {
            return Ok(());
        }
        let password = password.ok_or_else(|| ImageError::PasswordRequired {
            name: self.name.clone(),
        })?;
        let aad = &self.header_bytes[..KEY_SECTION];
        let keys =
            Keys::unwrap(blob, nonce, password, kdf, aad, self.header.cipher).ok_or_else(|| {
                ImageError::WrongPassword {
                    name: self.name.clone(),
                }
            })?;
        let mac_key = keys
            .mac_key()
            .ok_or_else(|| ImageError::corrupt(&self.name, "no MAC key"))?;
        let mac = blake3::keyed_hash(&mac_key, &self.index_bytes_digest_input);
        if *mac.as_bytes() != self.trailer.index_mac {
            return Err(ImageError::corrupt(
                &self.name,
                "index authentication failed (the image was altered)",
            ));
        }
        self.cipher = keys.frame_cipher().map(Arc::new);
        self.keys = Some(keys);
        Ok(())
    }

    /// Keys (after unlock).
    pub fn keys(&self) -> Option<&Keys> {
        self.keys.as_ref()
    }

    /// The frame cipher (encrypted images, after unlock).
    pub fn frame_cipher(&self) -> Option<&FrameCipher> {
        self.cipher.as_deref()
    }

    /// Header bytes as stored (for copying the key section).
    pub fn header_bytes(&self) -> &[u8] {
        &self.header_bytes
    }

    /// Metadata bytes as stored.
    pub fn meta_bytes(&self) -> &[u8] {
        &self.meta_bytes
    }

    /// Number of parts.
    pub fn part_count(&self) -> u32 {
        self.stream.part_count()
    }

    /// Total logical length (all parts, without part headers).
    pub fn logical_len(&self) -> u64 {
        self.stream.size()
    }

    /// Read the raw record of frame-table row `frame`.
    pub fn read_record(&self, frame: u32) -> Result<Vec<u8>> {
        let mut rec = Vec::new();
        self.read_record_into(frame, &mut rec)?;
        Ok(rec)
    }

    /// Read the raw record of frame-table row `frame` into `rec` (resized to fit).
    pub fn read_record_into(&self, frame: u32, rec: &mut Vec<u8>) -> Result<()> {
        let f = self.index.frames.get(frame as usize).ok_or_else(|| {
            ImageError::corrupt(&self.name, format!("frame {frame} does not exist"))
        })?;
        rec.resize(f.len as usize, 0);
        self.stream.read_exact_at(rec, f.offset).map_err(|e| {
            ImageError::io(
                format!("reading frame at offset {} of '{}'", f.offset, self.name),
                e,
            )
        })
    }

    /// Decode a record into the caller's buffers (see [`frame::decode_record_into`]).
    pub fn decode_record_into(
        &self,
        frame: u32,
        rec: &[u8],
        decompressor: &mut zstd::bulk::Decompressor<'static>,
        scratch: &mut Vec<u8>,
        out: &mut [u8],
        verify_crc: bool,
    ) -> std::result::Result<FrameHeader, FrameFault> {
        let h = frame::decode_record_into(
            rec,
            &self.header.image_id,
            self.frame_cipher(),
            decompressor,
            scratch,
            out,
            verify_crc,
        )?;
        self.check_row(frame, &h)?;
        Ok(h)
    }

    /// Check a record against its frame-table row: structure, checksum, frame id.
    pub fn check_record(
        &self,
        frame: u32,
        rec: &[u8],
    ) -> std::result::Result<FrameHeader, FrameFault> {
        let h = frame::check_record(rec)?;
        self.check_row(frame, &h)?;
        Ok(h)
    }

    fn check_row(&self, frame: u32, h: &FrameHeader) -> std::result::Result<(), FrameFault> {
        let row = self
            .index
            .frames
            .get(frame as usize)
            .ok_or(FrameFault::Damaged("no such frame".into()))?;
        if h.frame_id != row.frame_id || h.len() + h.stored_len as usize != row.len as usize {
            return Err(FrameFault::Damaged(format!(
                "frame record does not match index row {frame}"
            )));
        }
        if h.encrypted != self.is_encrypted() {
            return Err(FrameFault::Damaged(
                "frame encryption flag differs from the image's".into(),
            ));
        }
        Ok(())
    }

    /// Decode a record to plaintext (needs the keys for encrypted images).
    pub fn decode_record(
        &self,
        frame: u32,
        rec: &[u8],
        decompressor: &mut zstd::bulk::Decompressor<'static>,
    ) -> std::result::Result<(FrameHeader, Vec<u8>), FrameFault> {
        let (h, raw) = frame::decode_record(
            rec,
            &self.header.image_id,
            self.frame_cipher(),
            decompressor,
        )?;
        self.check_row(frame, &h)?;
        Ok((h, raw))
    }

    /// Byte length of block `n` (the last block may be short).
    pub fn block_len(&self, n: u64) -> usize {
        block_len(self.header.block_size, self.header.source_size, n)
    }
}

/// Byte length of block `n` of a source of `size` bytes.
pub fn block_len(block_size: u32, size: u64, n: u64) -> usize {
    let start = n * u64::from(block_size);
    (size.saturating_sub(start)).min(u64::from(block_size)) as usize
}

/// Offsets of each slot's plaintext in a frame holding `blocks`.
pub fn slot_offsets(block_size: u32, size: u64, blocks: &[u64]) -> Vec<(usize, usize)> {
    let mut at = 0;
    blocks
        .iter()
        .map(|&b| {
            let len = block_len(block_size, size, b);
            let r = (at, len);
            at += len;
            r
        })
        .collect()
}

/// Copy `copy` (0 or 1) of the index record: read, checked against the trailer's digest and
/// content digest, decoded; with its bytes.
fn read_index(
    stream: &LogicalStream,
    name: &str,
    header: &Header,
    trailer: &Trailer,
    header_and_meta: &[u8],
    copy: u64,
) -> Result<(Index, Vec<u8>)> {
    let len = usize::try_from(trailer.index_len)
        .map_err(|_| ImageError::corrupt(name, "index too large"))?;
    let at = trailer.index_offset + copy * trailer.index_len;
    let mut rec = vec![0u8; len];
    stream
        .read_exact_at(&mut rec, at)
        .map_err(|e| ImageError::io(format!("reading '{name}'"), e))?;
    if digest_of(header_and_meta, &rec) != trailer.index_digest {
        return Err(ImageError::corrupt(
            name,
            "header, metadata or index checksum mismatch",
        ));
    }
    let index = Index::decode(&rec, header, trailer.index_offset)
        .map_err(|d| ImageError::corrupt(name, d))?;
    if index.content_digest(header.block_size, header.source_size) != trailer.content_digest {
        return Err(ImageError::corrupt(name, "content digest mismatch"));
    }
    Ok((index, rec))
}

/// BLAKE3 over header+metadata bytes and the index record.
pub fn digest_of(header_and_meta: &[u8], index_rec: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(header_and_meta);
    h.update(index_rec);
    *h.finalize().as_bytes()
}
