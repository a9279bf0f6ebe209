//! Validate an image: structure always; ciphertext integrity without the password; every
//! block's hash with it (or for unencrypted images).

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::frame::FrameFault;
use crate::image::{slot_offsets, Image};
use crate::index::BlockState;
use crate::progress::{Cancel, Progress};
use crate::restore::run_parallel;

/// One damaged range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damage {
    /// First damaged block.
    pub first_block: u64,
    /// Last damaged block.
    pub last_block: u64,
    /// First source byte covered.
    pub start: u64,
    /// End (exclusive) of the source bytes covered.
    pub end: u64,
    /// Logical offset of the frame record in the image.
    pub image_offset: u64,
    /// What failed.
    pub detail: String,
}

/// How deep a validation could look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Every block's hash checked.
    Full,
    /// Encrypted and no password: checksums of the stored ciphertext only.
    Structure,
}

/// The outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValidateReport {
    /// Image name.
    pub image: String,
    /// How deep it looked.
    pub level: Level,
    /// Frames checked.
    pub frames: u64,
    /// Blocks whose hash was checked.
    pub blocks_verified: u64,
    /// Damaged ranges, ascending.
    pub damage: Vec<Damage>,
    /// Damaged records the image can do without, each named: a copy of the index whose
    /// other copy stood in. Nothing is lost yet, but the image is no longer whole.
    #[serde(default)]
    pub records: Vec<String>,
}

impl ValidateReport {
    /// True when nothing is damaged.
    pub fn is_ok(&self) -> bool {
        self.damage.is_empty() && self.records.is_empty()
    }
}

/// Validate one image (already opened, which checked header, trailer and index).
pub fn validate(
    image: &Image,
    threads: usize,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<ValidateReport> {
    let hdr = &image.header;
    let bs = u64::from(hdr.block_size);
    let full = image.is_unlocked();
    let hasher = image.keys().map(|k| k.block_hasher());
    // What each frame must hold according to the index: row -> [(slot, block)].
    let mut expect: HashMap<u32, Vec<(u16, u64)>> = HashMap::new();
    for (b, e) in image.index.entries.iter().enumerate() {
        if e.state == BlockState::Data {
            expect.entry(e.frame).or_default().push((e.slot, b as u64));
        }
    }
    let damage = Mutex::new(Vec::<Damage>::new());
    let verified = std::sync::atomic::AtomicU64::new(0);
    let frames = &image.index.frames;
    progress.stage("validating", frames.iter().map(|f| u64::from(f.len)).sum());
    let threads = if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        threads
    };
    let push = |first: u64, last: u64, off: u64, detail: String| {
        if let Ok(mut d) = damage.lock() {
            d.push(Damage {
                first_block: first,
                last_block: last,
                start: first * bs,
                end: ((last + 1) * bs).min(hdr.source_size),
                image_offset: off,
                detail,
            });
        }
    };
    run_parallel(threads, frames.len(), cancel, |row| {
        let f = frames[row];
        let row = row as u32;
        let want = expect.get(&row).cloned().unwrap_or_default();
        let first = want.iter().map(|w| w.1).min().unwrap_or(0);
        let last = want.iter().map(|w| w.1).max().unwrap_or(0);
        progress.advance(u64::from(f.len));
        let rec = match image.read_record(row) {
            Ok(r) => r,
            Err(e) => {
                push(first, last, f.offset, e.to_string());
                return Ok(());
            }
        };
        let result: std::result::Result<(), FrameFault> = (|| {
            let h = if full {
                let mut dec = zstd::bulk::Decompressor::new()
                    .map_err(|e| FrameFault::Damaged(e.to_string()))?;
                let (h, raw) = image.decode_record(row, &rec, &mut dec)?;
                let slots = slot_offsets(hdr.block_size, hdr.source_size, &h.blocks);
                if let Some(hasher) = &hasher {
                    for (slot, &n) in h.blocks.iter().enumerate() {
                        let (off, len) = slots[slot];
                        let ok = image
                            .index
                            .entries
                            .get(n as usize)
                            .is_some_and(|e| hasher.hash(n, &raw[off..off + len]) == e.hash);
                        if ok {
                            verified.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        } else {
                            push(
                                n,
                                n,
                                f.offset,
                                "block content does not match its hash".into(),
                            );
                        }
                    }
                }
                h
            } else {
                image.check_record(row, &rec)?
            };
            if h.blocks.len() != want.len()
                || want
                    .iter()
                    .any(|&(slot, n)| h.blocks.get(usize::from(slot)) != Some(&n))
            {
                return Err(FrameFault::Damaged(
                    "frame's block list does not match the index".into(),
                ));
            }
            Ok(())
        })();
        if let Err(fault) = result {
            push(first, last, f.offset, fault.to_string());
        }
        Ok(())
    })?;
    let mut damage = damage.into_inner().unwrap_or_default();
    damage.sort_by_key(|d| (d.first_block, d.last_block));
    Ok(ValidateReport {
        image: image.name().to_owned(),
        level: if full { Level::Full } else { Level::Structure },
        frames: frames.len() as u64,
        blocks_verified: verified.into_inner(),
        damage,
        records: image.index_copy_damage()?.into_iter().collect(),
    })
}
