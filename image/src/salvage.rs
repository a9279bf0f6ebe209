//! Salvage: what is intact of a full image whose index or trailer is lost.
//!
//! A restore needs the index (kept twice from format version 2 on) and the trailer. When both
//! copies of the index are damaged, or the image ends early (the write was cut off, a part was
//! truncated), the frames are still self-describing: each record carries its block list, a
//! checksum of its header and of its payload, and, encrypted, an authentication tag. Salvage
//! reads the records front to back from the end of the metadata, writes every block of every
//! intact frame where it belongs, and when a record is damaged looks for the next frame magic
//! after it. The stretches it had to skip are reported with the blocks they may have held:
//! frames are written in block order, so what lies between the last block of the intact frame
//! before a stretch and the first block of the one after it is what may be lost.
//!
//! The header must be intact (it holds the block size, the source size and the keys).
//! Only full images: an incremental's other blocks are in its parents.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::crypto::{FrameCipher, Keys};
use crate::error::{ImageError, Result};
use crate::frame::{self, FrameHeader, FRAME_FIXED_LEN, MAX_FRAME_BLOCKS, MAX_FRAME_RAW};
use crate::header::{Header, KeySection, Kind, HEADER_LEN, KEY_SECTION};
use crate::image::slot_offsets;
use crate::io::ReadAt;
use crate::magic::{FRAME_MAGIC, INDEX_MAGIC};
use crate::parts::{LogicalStream, PartStore};
use crate::progress::{Cancel, Progress};
use crate::restore::WriteAt;

/// A stretch of the image that held no intact frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Logical offset where the damage starts.
    pub image_offset: u64,
    /// Logical offset of the next intact frame (or where the frames end).
    pub image_end: u64,
    /// First block that may have been lost there.
    pub first_block: u64,
    /// Last block that may have been lost there (inclusive).
    pub last_block: u64,
    /// What was wrong at its start.
    pub detail: String,
}

/// What a salvage wrote and what it had to skip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalvageReport {
    /// Image name.
    pub image: String,
    /// Source size (the size of what was written to).
    pub source_size: u64,
    /// Intact frames written.
    pub frames: u64,
    /// Blocks written.
    pub blocks: u64,
    /// Plaintext bytes written.
    pub data_bytes: u64,
    /// Damaged stretches skipped, in image order.
    pub skipped: Vec<Skipped>,
    /// True when the frames ended at an index record (they may all be there); false when the
    /// image ended first (cut off: the blocks after the last intact frame are lost).
    pub reached_index: bool,
}

impl SalvageReport {
    /// True when every frame the image held was found intact.
    pub fn is_whole(&self) -> bool {
        self.skipped.is_empty() && self.reached_index
    }
}

/// How far apart two frame magics may be found at most while searching (bytes read per step).
const SCAN_WINDOW: usize = 1 << 20;

/// Salvage the full image in `store` into `out` (at least the source's size, reading as zeros
/// where nothing is written: a new file).
pub fn salvage(
    store: Arc<dyn PartStore>,
    password: Option<&[u8]>,
    out: &dyn WriteAt,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<SalvageReport> {
    let name = store.display_name();
    let (header, header_bytes) = read_header(&*store)?;
    if header.kind != Kind::Full {
        return Err(ImageError::Invalid(format!(
            "'{name}' is an incremental or differential image: its unchanged blocks are in its \
             parents, so salvage works on full images only (salvage the chain's full image)"
        )));
    }
    let cipher = frame_cipher(&name, &header, &header_bytes, password)?;
    if out.size() < header.source_size {
        return Err(ImageError::Invalid(format!(
            "the salvage target holds {} bytes; the source was {}",
            out.size(),
            header.source_size
        )));
    }
    let stream = LogicalStream::open(store, &header.image_id, header.split_size, &name)?;
    let end = stream.size();
    progress.stage("salvaging", end.saturating_sub(header.data_start()));
    let mut s = Salvager {
        name: &name,
        header: &header,
        stream: &stream,
        cipher: cipher.as_ref(),
        out,
        end,
        report: SalvageReport {
            image: name.clone(),
            source_size: header.source_size,
            frames: 0,
            blocks: 0,
            data_bytes: 0,
            skipped: Vec::new(),
            reached_index: false,
        },
        last_block: None,
        last_frame_id: None,
        damage: None,
        decompressor: zstd::bulk::Decompressor::new()
            .map_err(|e| ImageError::io("starting zstd", e))?,
        scratch: Vec::new(),
        plain: vec![0u8; MAX_FRAME_RAW],
    };
    let mut at = header.data_start();
    let mut reported = at;
    while at < end {
        if cancel.is_cancelled() {
            return Err(ImageError::Cancelled);
        }
        progress.advance(at - reported);
        reported = at;
        match s.frame_at(at)? {
            Step::Frame(len) => at += len,
            Step::Index => {
                s.report.reached_index = true;
                break;
            }
            Step::Damaged(why) => {
                s.damage.get_or_insert((at, why));
                at = s.next_magic(at + 1)?;
            }
        }
    }
    if !s.report.reached_index && s.damage.is_none() {
        s.damage = Some((
            end,
            "the image ends before its index: it was cut off".into(),
        ));
    }
    s.close_damage(at.min(end), None);
    out.sync()
        .map_err(|e| ImageError::io("flushing the salvage target", e))?;
    Ok(s.report)
}

/// The image's header (checked) and its bytes: what salvage starts from (the source size
/// tells how large the file it writes must be).
pub fn read_header(store: &dyn PartStore) -> Result<(Header, Vec<u8>)> {
    let name = store.display_name();
    let mut bytes = vec![0u8; HEADER_LEN];
    store
        .read_part_at(1, &mut bytes, 0)
        .map_err(|e| ImageError::io(format!("reading the header of '{name}'"), e))?;
    Ok((Header::decode(&name, &bytes)?, bytes))
}

/// The frame cipher of an encrypted image (none for an unencrypted one).
fn frame_cipher(
    name: &str,
    header: &Header,
    header_bytes: &[u8],
    password: Option<&[u8]>,
) -> Result<Option<FrameCipher>> {
    let KeySection::Wrapped { kdf, nonce, blob } = &header.keys else {
        return Ok(None);
    };
    let password = password.ok_or_else(|| ImageError::PasswordRequired {
        name: name.to_owned(),
    })?;
    let keys = Keys::unwrap(
        blob,
        nonce,
        password,
        kdf,
        &header_bytes[..KEY_SECTION],
        header.cipher,
    )
    .ok_or_else(|| ImageError::WrongPassword {
        name: name.to_owned(),
    })?;
    Ok(keys.frame_cipher())
}

/// What lies at an offset.
enum Step {
    /// An intact frame of this many bytes, written.
    Frame(u64),
    /// The index record: the frames end here.
    Index,
    /// No intact frame: why.
    Damaged(String),
}

struct Salvager<'a> {
    name: &'a str,
    header: &'a Header,
    stream: &'a LogicalStream,
    cipher: Option<&'a FrameCipher>,
    out: &'a dyn WriteAt,
    end: u64,
    report: SalvageReport,
    /// Last block of the last intact frame.
    last_block: Option<u64>,
    last_frame_id: Option<u64>,
    /// Where the stretch being skipped began, and why.
    damage: Option<(u64, String)>,
    decompressor: zstd::bulk::Decompressor<'static>,
    scratch: Vec<u8>,
    plain: Vec<u8>,
}

impl Salvager<'_> {
    fn read(&self, buf: &mut [u8], at: u64) -> Result<()> {
        self.stream
            .read_exact_at(buf, at)
            .map_err(|e| ImageError::io(format!("reading '{}' at {at}", self.name), e))
    }

    /// Decode and write the frame at `at`, if one is there intact.
    fn frame_at(&mut self, at: u64) -> Result<Step> {
        let left = self.end - at;
        if left < 8 {
            return Ok(Step::Damaged("the image ends inside a record".into()));
        }
        let mut fixed = [0u8; FRAME_FIXED_LEN];
        let n = (FRAME_FIXED_LEN as u64).min(left) as usize;
        self.read(&mut fixed[..n], at)?;
        if fixed[..8] == INDEX_MAGIC {
            return Ok(Step::Index);
        }
        if n < FRAME_FIXED_LEN || fixed[..4] != FRAME_MAGIC {
            return Ok(Step::Damaged("no frame record starts here".into()));
        }
        let count = usize::from(u16::from_le_bytes([fixed[6], fixed[7]]));
        let stored = u64::from(u32::from_le_bytes([
            fixed[16], fixed[17], fixed[18], fixed[19],
        ]));
        let header_len = FRAME_FIXED_LEN + 8 * count;
        // Bounds before allocating: what a writer can produce at most.
        let most = (header_len + MAX_FRAME_RAW + 64) as u64;
        let len = header_len as u64 + stored;
        if count == 0 || count > MAX_FRAME_BLOCKS || len > most || len > left {
            return Ok(Step::Damaged(
                "a frame record's header is damaged or the image ends inside the record".into(),
            ));
        }
        // The header's own checksum first: a chance "HFFR" in damaged bytes costs a few
        // kilobytes read, not the megabytes its length field claims.
        let mut rec = vec![0u8; header_len];
        self.read(&mut rec, at)?;
        if let Err(why) = FrameHeader::decode(&rec) {
            return Ok(Step::Damaged(why));
        }
        rec.resize(len as usize, 0);
        self.read(&mut rec[header_len..], at + header_len as u64)?;
        let decoded = frame::decode_record_into(
            &rec,
            &self.header.image_id,
            self.cipher,
            &mut self.decompressor,
            &mut self.scratch,
            &mut self.plain,
            true,
        );
        let h = match decoded {
            Ok(h) => h,
            Err(fault) => return Ok(Step::Damaged(fault.to_string())),
        };
        if let Some(why) = self.misplaced(&h) {
            return Ok(Step::Damaged(why));
        }
        self.close_damage(at, h.blocks.first().copied());
        let bs = u64::from(self.header.block_size);
        for (slot, (off, n)) in
            slot_offsets(self.header.block_size, self.header.source_size, &h.blocks)
                .into_iter()
                .enumerate()
        {
            let block = h.blocks[slot];
            self.out
                .write_all_at(&self.plain[off..off + n], block * bs)
                .map_err(|e| ImageError::io(format!("writing block {block}"), e))?;
            self.report.data_bytes += n as u64;
        }
        self.report.frames += 1;
        self.report.blocks += h.blocks.len() as u64;
        self.last_block = h.blocks.last().copied();
        self.last_frame_id = Some(h.frame_id);
        Ok(Step::Frame(len))
    }

    /// Why an intact-looking frame cannot belong here: blocks outside the source or out of
    /// order, or a frame id not after the last one (a stale copy of a record cannot pass,
    /// since the writer never repeats one).
    fn misplaced(&self, h: &FrameHeader) -> Option<String> {
        let blocks = self.header.block_count();
        if h.blocks.windows(2).any(|w| w[0] >= w[1]) || h.blocks.iter().any(|&b| b >= blocks) {
            return Some("a frame's block list is out of order or outside the source".into());
        }
        if h.encrypted != self.cipher.is_some() {
            return Some("a frame's encryption differs from the image's".into());
        }
        if self.last_frame_id.is_some_and(|id| h.frame_id <= id)
            || self
                .last_block
                .zip(h.blocks.first())
                .is_some_and(|(last, &first)| first <= last)
        {
            return Some("a frame is out of order".into());
        }
        None
    }

    /// End the stretch being skipped at `at`, before a frame whose first block is `next`
    /// (`None`: the frames ended).
    fn close_damage(&mut self, at: u64, next: Option<u64>) {
        let Some((start, detail)) = self.damage.take() else {
            return;
        };
        let first_block = self.last_block.map_or(0, |b| b + 1);
        let last_block = match next {
            Some(n) => n.saturating_sub(1),
            None => self.header.block_count().saturating_sub(1),
        };
        self.report.skipped.push(Skipped {
            image_offset: start,
            image_end: at,
            first_block,
            last_block: last_block.max(first_block),
            detail,
        });
    }

    /// The offset of the next frame or index magic at or after `from` (the end when none).
    fn next_magic(&self, from: u64) -> Result<u64> {
        let mut at = from;
        let mut buf = vec![0u8; SCAN_WINDOW];
        while at < self.end {
            let n = ((self.end - at) as usize).min(SCAN_WINDOW);
            self.read(&mut buf[..n], at)?;
            let window = &buf[..n];
            if let Some(i) = window
                .windows(4)
                .position(|w| w == FRAME_MAGIC || w == &INDEX_MAGIC[..4])
            {
                return Ok(at + i as u64);
            }
            if n < SCAN_WINDOW {
                break;
            }
            // The next window overlaps by three bytes: a magic across the border is found.
            at += (n - 3) as u64;
        }
        Ok(self.end)
    }
}
