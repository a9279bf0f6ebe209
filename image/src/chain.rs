//! Incremental chains: finding an image's ancestors and where each block's content lives.
//!
//! Chain rules (normative in `docs/image-format.md`, "Chains"):
//! - a child names its parent by image id and by the parent's content digest; a parent whose
//!   digest differs has changed since the child was made, and the chain is refused;
//! - every image of a chain shares the chain key (block hashes are comparable);
//! - an `inherited` entry's hash must equal the hash the ancestor holding the data records;
//! - restore reads each block once, from the newest image that stores it.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::blocks::{BlockBuf, BlockSource, Class};
use crate::crypto::BlockHasher;
use crate::error::{ImageError, Result};
use crate::frame::FrameFault;
use crate::header::{Header, HEADER_LEN};
use crate::image::{slot_offsets, Image};
use crate::index::{BlockState, Entry};
use crate::parts::{FileParts, PartStore};

/// Finds images by name in one folder (a local directory, or later a target folder).
pub trait Locator: Send + Sync {
    /// Open the parts of image `name` (a file name in the folder).
    fn open(&self, name: &str) -> Result<Arc<dyn PartStore>>;
    /// Names of files in the folder that may be images (first parts).
    fn candidates(&self) -> Result<Vec<String>>;
}

/// A local folder.
pub struct DirLocator {
    dir: PathBuf,
}

impl DirLocator {
    /// Images in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The locator for the folder of `image_path` and the image's file name.
    pub fn for_image(image_path: &Path) -> (Self, String) {
        let dir = match image_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = image_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (Self { dir }, name)
    }
}

impl Locator for DirLocator {
    fn open(&self, name: &str) -> Result<Arc<dyn PartStore>> {
        if name.contains('/') || name == ".." {
            return Err(ImageError::Invalid(format!(
                "image name '{name}' must be a plain file name"
            )));
        }
        Ok(Arc::new(FileParts::new(self.dir.join(name))))
    }
    fn candidates(&self) -> Result<Vec<String>> {
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|e| ImageError::io(format!("listing '{}'", self.dir.display()), e))?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !crate::parts::is_later_part(&name)
                && !name.ends_with(".partial")
                && entry.file_type().is_ok_and(|t| t.is_file())
            {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Read only the header of an image (cheap scan for a parent by id).
pub fn read_header(store: &dyn PartStore) -> Result<Header> {
    let name = store.display_name();
    let mut b = vec![0u8; HEADER_LEN];
    store
        .read_part_at(1, &mut b, 0)
        .map_err(|e| ImageError::io(format!("reading '{name}'"), e))?;
    Header::decode(&name, &b)
}

/// Where the content of one block of the chain's newest point lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Located {
    /// Not in use.
    Unallocated,
    /// Zeros.
    Zero,
    /// In frame-table row `frame`, slot `slot` of image `image` (0 = newest).
    Data {
        /// Chain position.
        image: usize,
        /// Frame-table row.
        frame: u32,
        /// Slot in the frame.
        slot: u16,
    },
}

/// An image and its ancestors, newest first, every link checked.
pub struct Chain {
    /// Newest (the point restored) first, the full image last.
    pub images: Vec<Image>,
}

impl Chain {
    /// Only one image (convert works on one image of a chain).
    pub fn single(image: Image) -> Self {
        Self {
            images: vec![image],
        }
    }

    /// Open `name` and every ancestor, unlocking each with `password`.
    pub fn open(locator: &dyn Locator, name: &str, password: Option<&[u8]>) -> Result<Self> {
        Self::open_inner(locator, name, password, true)
    }

    /// Open `name` and every ancestor, checking structure and links; encrypted images are
    /// unlocked only when a password is given (for validation without the password).
    pub fn open_structure(
        locator: &dyn Locator,
        name: &str,
        password: Option<&[u8]>,
    ) -> Result<Self> {
        Self::open_inner(locator, name, password, false)
    }

    fn open_inner(
        locator: &dyn Locator,
        name: &str,
        password: Option<&[u8]>,
        need_keys: bool,
    ) -> Result<Self> {
        let unlock = |img: &mut Image| -> Result<()> {
            if need_keys || password.is_some() {
                img.unlock(password)?;
            }
            Ok(())
        };
        let mut first = Image::open(locator.open(name)?)?;
        unlock(&mut first)?;
        let mut images = vec![first];
        let mut seen = HashSet::new();
        loop {
            let child = images
                .last()
                .ok_or_else(|| ImageError::Invalid("empty chain".into()))?;
            if child.header.parent_id.is_nil() {
                break;
            }
            if !seen.insert(child.header.image_id) || images.len() > 100_000 {
                return Err(ImageError::ChainBroken {
                    name: name.to_owned(),
                    detail: "the chain loops".into(),
                });
            }
            let mut parent = find_parent(locator, child)?;
            unlock(&mut parent)?;
            check_link(child, &parent)?;
            images.push(parent);
        }
        Ok(Self { images })
    }

    /// The newest image.
    pub fn point(&self) -> &Image {
        &self.images[0]
    }

    /// The block hasher of the chain.
    pub fn hasher(&self) -> Result<BlockHasher> {
        let p = self.point();
        p.keys()
            .map(|k| k.block_hasher())
            .ok_or_else(|| ImageError::PasswordRequired {
                name: p.name().to_owned(),
            })
    }

    /// Where each block of the point lives.
    pub fn locate_all(&self) -> Result<Vec<Located>> {
        let point = self.point();
        let mut out = Vec::with_capacity(point.index.entries.len());
        for (b, e) in point.index.entries.iter().enumerate() {
            out.push(self.locate(b as u64, e)?);
        }
        Ok(out)
    }

    fn locate(&self, b: u64, e: &Entry) -> Result<Located> {
        Ok(match e.state {
            BlockState::Unallocated => Located::Unallocated,
            BlockState::Zero => Located::Zero,
            BlockState::Data => Located::Data {
                image: 0,
                frame: e.frame,
                slot: e.slot,
            },
            BlockState::Inherited => {
                for (i, img) in self.images.iter().enumerate().skip(1) {
                    let a = &img.index.entries[b as usize];
                    let broken = |detail: String| ImageError::ChainBroken {
                        name: self.point().name().to_owned(),
                        detail,
                    };
                    if !a.state.has_content() || a.hash != e.hash {
                        return Err(broken(format!(
                            "block {b} is inherited but '{}' holds different content",
                            img.name()
                        )));
                    }
                    if a.state == BlockState::Data {
                        return Ok(Located::Data {
                            image: i,
                            frame: a.frame,
                            slot: a.slot,
                        });
                    }
                }
                return Err(ImageError::ChainBroken {
                    name: self.point().name().to_owned(),
                    detail: format!("block {b} is inherited but no ancestor stores it"),
                });
            }
        })
    }
}

fn find_parent(locator: &dyn Locator, child: &Image) -> Result<Image> {
    let want = child.header.parent_id;
    if let Some(pname) = &child.meta.parent_name {
        if let Ok(store) = locator.open(pname) {
            if read_header(store.as_ref()).is_ok_and(|h| h.image_id == want) {
                return Image::open(store);
            }
        }
    }
    for cand in locator.candidates()? {
        let Ok(store) = locator.open(&cand) else {
            continue;
        };
        if read_header(store.as_ref()).is_ok_and(|h| h.image_id == want) {
            return Image::open(store);
        }
    }
    Err(ImageError::ChainBroken {
        name: child.name().to_owned(),
        detail: format!(
            "its base image {want}{} was not found next to it",
            child
                .meta
                .parent_name
                .as_ref()
                .map(|n| format!(" ('{n}')"))
                .unwrap_or_default()
        ),
    })
}

fn check_link(child: &Image, parent: &Image) -> Result<()> {
    let broken = |detail: String| ImageError::ChainBroken {
        name: child.name().to_owned(),
        detail,
    };
    if parent.trailer.content_digest != child.header.parent_digest {
        return Err(broken(format!(
            "base image '{}' has changed since this image was made",
            parent.name()
        )));
    }
    if parent.header.block_size != child.header.block_size
        || parent.header.source_size != child.header.source_size
    {
        return Err(broken(format!(
            "base image '{}' has another block size or source size",
            parent.name()
        )));
    }
    if let (Some(a), Some(b)) = (parent.keys(), child.keys()) {
        if a.chain_key() != b.chain_key() {
            return Err(broken(format!(
                "base image '{}' belongs to another chain",
                parent.name()
            )));
        }
    }
    Ok(())
}

/// Turn a frame fault into a damage error naming the blocks.
pub fn frame_damage(img: &Image, blocks: &[u64], fault: &FrameFault) -> ImageError {
    let bs = u64::from(img.header.block_size);
    let first = blocks.iter().copied().min().unwrap_or(0);
    let last = blocks.iter().copied().max().unwrap_or(0);
    ImageError::DamagedBlocks {
        name: img.name().to_owned(),
        first_block: first,
        last_block: last,
        start: first * bs,
        end: ((last + 1) * bs).min(img.header.source_size),
        detail: fault.to_string(),
    }
}

/// Blocks of a chain point as a [`BlockSource`]: merge reads every block with content from
/// the chain; convert (`own_only`) reads only what the newest image stores and keeps its
/// other entries as they are.
pub struct ChainBlocks<'a> {
    chain: &'a Chain,
    located: Vec<Located>,
    own_only: bool,
    hasher: BlockHasher,
}

impl<'a> ChainBlocks<'a> {
    /// Build the block map (checks every chain link of every block).
    pub fn new(chain: &'a Chain, own_only: bool) -> Result<Self> {
        let located = if own_only {
            chain
                .point()
                .index
                .entries
                .iter()
                .map(|e| match e.state {
                    BlockState::Data => Located::Data {
                        image: 0,
                        frame: e.frame,
                        slot: e.slot,
                    },
                    BlockState::Zero => Located::Zero,
                    _ => Located::Unallocated,
                })
                .collect()
        } else {
            chain.locate_all()?
        };
        Ok(Self {
            chain,
            located,
            own_only,
            hasher: chain.hasher()?,
        })
    }
}

impl ChainBlocks<'_> {
    /// The chain point's bytes `[start, start + len)`: stored blocks read and checked, the
    /// others as zeros. E.g. the header of an encrypted volume, written before its contents.
    pub fn read_bytes(&self, start: u64, len: u64) -> Result<Vec<u8>> {
        let size = self.size();
        let end = start
            .checked_add(len)
            .filter(|&e| e <= size)
            .ok_or_else(|| {
                ImageError::Invalid(format!(
                    "bytes {start}..+{len} lie past the end of the image's source ({size} bytes)"
                ))
            })?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let bs = u64::from(self.block_size());
        let first = start / bs;
        let blocks: Vec<u64> = (first..end.div_ceil(bs)).collect();
        let mut buf = BlockBuf::default();
        // Blocks without content are left as the zeros `read_blocks` starts from.
        self.read_blocks(&blocks, &mut buf)?;
        let from = (start - first * bs) as usize;
        Ok(buf[from..from + len as usize].to_vec())
    }
}

impl BlockSource for ChainBlocks<'_> {
    fn size(&self) -> u64 {
        self.chain.point().header.source_size
    }
    fn block_size(&self) -> u32 {
        self.chain.point().header.block_size
    }
    fn classify(&self, n: u64) -> Class {
        let e = self.chain.point().index.entries[n as usize];
        if self.own_only && e.state != BlockState::Data {
            return if e.state == BlockState::Unallocated {
                Class::Unallocated
            } else {
                Class::Fixed(e)
            };
        }
        match self.located[n as usize] {
            Located::Unallocated => Class::Unallocated,
            Located::Zero => Class::Fixed(Entry::ZERO),
            Located::Data { .. } => Class::Read,
        }
    }
    fn read_blocks(&self, blocks: &[u64], buf: &mut BlockBuf) -> Result<()> {
        let point = self.chain.point();
        let bs = point.header.block_size;
        let size = point.header.source_size;
        // Group by frame so each frame is decoded once.
        let mut frames: BTreeMap<(usize, u32), Vec<(u16, usize)>> = BTreeMap::new();
        let mut out_at = Vec::with_capacity(blocks.len());
        let mut at = 0usize;
        for (i, &n) in blocks.iter().enumerate() {
            out_at.push(at);
            at += crate::image::block_len(bs, size, n);
            if let Located::Data { image, frame, slot } = self.located[n as usize] {
                frames.entry((image, frame)).or_default().push((slot, i));
            }
        }
        buf.clear();
        buf.grow(at).fill(0);
        let mut dec = zstd::bulk::Decompressor::new()
            .map_err(|e| ImageError::io("starting the decompressor", e))?;
        for ((image, frame), wanted) in frames {
            let img = &self.chain.images[image];
            let rec = img.read_record(frame)?;
            let want_blocks: Vec<u64> = wanted.iter().map(|&(_, i)| blocks[i]).collect();
            let (h, raw) = img
                .decode_record(frame, &rec, &mut dec)
                .map_err(|f| frame_damage(img, &want_blocks, &f))?;
            let slots = slot_offsets(bs, size, &h.blocks);
            for (slot, i) in wanted {
                let n = blocks[i];
                let (off, len) = *slots
                    .get(usize::from(slot))
                    .ok_or_else(|| ImageError::corrupt(img.name(), "slot out of range"))?;
                if h.blocks[usize::from(slot)] != n || off + len > raw.len() {
                    return Err(ImageError::corrupt(
                        img.name(),
                        format!("frame does not hold block {n} where the index says"),
                    ));
                }
                let data = &raw[off..off + len];
                if self.hasher.hash(n, data) != point.index.entries[n as usize].hash {
                    return Err(frame_damage(
                        img,
                        &[n],
                        &FrameFault::Damaged("block hash mismatch".into()),
                    ));
                }
                buf[out_at[i]..out_at[i] + len].copy_from_slice(data);
            }
        }
        Ok(())
    }
}
