//! The corruption campaign: single-byte flips over an encrypted, split full + incremental
//! chain, every class of byte taken in turn — image header, metadata, frames, index,
//! trailer, the headers of later parts, and any padding between records. Every flip must
//! be detected by opening or validating the image without its password, and named: the
//! record that is damaged, or the range of blocks. `HOLDFAST_CAMPAIGN_FLIPS` sets how many
//! (the test command runs 140; `scripts/corruption.sh` runs 1,000 or more).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use holdfast_image::blocks::DeviceBlocks;
use holdfast_image::crypto::Cipher;
use holdfast_image::extents::Extents;
use holdfast_image::header::{Coverage, Kind, HEADER_LEN};
use holdfast_image::image::Image;
use holdfast_image::parts::{part_path, FileParts, FileSink, PART_HEADER_LEN};
use holdfast_image::progress::{Cancel, NoProgress};
use holdfast_image::trailer::TRAILER_LEN;
use holdfast_image::validate::validate;
use holdfast_image::writer::{write_image, Identity, WriteOptions};

use crate::mem::{fast_kdf, meta, BS};

/// Split size: the smallest the format allows, so the chain has several parts.
const SPLIT: u64 = 5 << 20;
/// The source: 24 MiB, a quarter each text and zeros, half noise (images of three parts).
const SOURCE: usize = 24 << 20;

/// The byte classes of an image, each a list of (part, offset in part, length).
const CLASSES: [&str; 7] = [
    "header",
    "metadata",
    "frames",
    "index",
    "trailer",
    "part headers",
    "padding",
];

/// Pieces of an image by class: (part, offset in part, length).
type Classes = BTreeMap<&'static str, Vec<(u32, u64, u64)>>;

/// Words at least one of which an error must hold to name what is damaged.
const NAMES: [&str; 10] = [
    "header",
    "metadata",
    "index",
    "trailer",
    "part",
    "frame",
    "block",
    "magic",
    "truncated",
    "incomplete",
];

struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn source() -> Vec<u8> {
    let mut x = Xorshift(0x9e37_79b9_7f4a_7c15);
    let mut data = vec![0u8; SOURCE];
    for (b, chunk) in data.chunks_mut(BS as usize).enumerate() {
        match b % 4 {
            0 => chunk
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = b"campaign text "[i % 14]),
            1 => {}
            _ => chunk.iter_mut().for_each(|v| *v = (x.next() >> 32) as u8),
        }
    }
    data
}

fn options() -> WriteOptions {
    WriteOptions {
        compression_level: 3,
        split_size: SPLIT,
        threads: 2,
        password: Some(zeroize::Zeroizing::new(b"pw".to_vec())),
        kdf: Some(fast_kdf()),
    }
}

fn write(
    path: &Path,
    data: &[u8],
    ident: &Identity,
    parent: Option<&Image>,
    parent_name: Option<&str>,
) {
    let blocks = DeviceBlocks::new(data, Extents::full(data.len() as u64), BS, "source");
    let mut sink = FileSink::create(path, false).expect("sink");
    let mut m = meta();
    m.parent_name = parent_name.map(str::to_owned);
    write_image(
        &blocks,
        ident,
        &m,
        parent.map(|p| &p.index),
        &options(),
        &mut sink,
        &NoProgress,
        &Cancel::new(),
    )
    .expect("write");
}

fn open(path: &Path) -> holdfast_image::Result<Image> {
    Image::open(Arc::new(FileParts::new(path)))
}

/// Where logical offset `at` of an image split at [`SPLIT`] lies: (part, offset in it).
fn physical(at: u64) -> (u32, u64) {
    if at < SPLIT {
        return (1, at);
    }
    let room = SPLIT - PART_HEADER_LEN;
    let rest = at - SPLIT;
    (2 + (rest / room) as u32, PART_HEADER_LEN + rest % room)
}

/// The byte classes of `path`'s image, in logical ranges (part headers: physical).
fn classes(path: &Path) -> Classes {
    let img = open(path).expect("open");
    let logical = |start: u64, len: u64| -> Vec<(u32, u64, u64)> {
        // A range that crosses into the next part is cut at the part's end: flips land in
        // its first piece, which is enough to cover the class.
        let (part, off) = physical(start);
        vec![(part, off, len.min(SPLIT - off))]
    };
    let meta_start = HEADER_LEN as u64;
    let meta_end = img.header_bytes().len() as u64 + img.meta_bytes().len() as u64;
    let frames = &img.index.frames;
    let index_at = img.trailer.index_offset;
    let trailer_at = img.logical_len() - TRAILER_LEN as u64;
    let mut out: Classes = BTreeMap::new();
    out.insert("header", logical(0, HEADER_LEN as u64));
    out.insert("metadata", logical(meta_start, meta_end - meta_start));
    out.insert(
        "frames",
        frames
            .iter()
            .flat_map(|f| logical(f.offset, u64::from(f.len)))
            .collect(),
    );
    // Every copy of the index (two from format version 2 on).
    let index_end = index_at + img.trailer.index_len * img.trailer.index_copies();
    out.insert("index", logical(index_at, index_end - index_at));
    out.insert("trailer", logical(trailer_at, TRAILER_LEN as u64));
    out.insert(
        "part headers",
        (2..=img.part_count())
            .map(|p| (p, 0, PART_HEADER_LEN))
            .collect(),
    );
    // Whatever lies between records.
    let mut records: Vec<(u64, u64)> = frames
        .iter()
        .map(|f| (f.offset, f.offset + u64::from(f.len)))
        .collect();
    records.push((0, meta_end));
    records.push((index_at, index_end));
    records.push((trailer_at, img.logical_len()));
    records.sort();
    let mut padding = Vec::new();
    for w in records.windows(2) {
        if w[1].0 > w[0].1 {
            padding.extend(logical(w[0].1, w[1].0 - w[0].1));
        }
    }
    out.insert("padding", padding);
    out
}

/// Flip one byte of `path`'s part at `(part, offset)`; what opening and validating the
/// image without its password said, or `None` when nothing noticed.
fn flipped(path: &Path, part: u32, offset: u64, mask: u8) -> Option<String> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(part_path(path, part))
        .expect("part");
    let mut b = [0u8];
    file.read_exact_at(&mut b, offset).expect("read");
    file.write_all_at(&[b[0] ^ mask], offset).expect("flip");
    let said = match open(path) {
        Err(e) => Some(e.to_string()),
        Ok(img) => match validate(&img, 1, &NoProgress, &Cancel::new()) {
            Err(e) => Some(e.to_string()),
            Ok(r) if r.is_ok() => None,
            Ok(r) => Some(
                r.damage
                    .iter()
                    .map(|d| {
                        assert!(d.first_block <= d.last_block, "{d:?}");
                        format!("blocks {}..={}: {}", d.first_block, d.last_block, d.detail)
                    })
                    .chain(r.records.iter().cloned())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        },
    };
    file.write_all_at(&b, offset).expect("repair");
    said
}

#[test]
fn every_single_byte_flip_in_an_encrypted_split_chain_is_detected_and_named() {
    let flips: usize = std::env::var("HOLDFAST_CAMPAIGN_FLIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(140);
    let dir = tempfile::tempdir().expect("tempdir");
    let full = dir.path().join("full.hfi");
    let inc = dir.path().join("inc.hfi");
    let mut data = source();
    let ident = Identity::new_full(Coverage::UsedSector, Cipher::Aes256);
    write(&full, &data, &ident, None, None);
    let mut parent = open(&full).expect("open full");
    parent.unlock(Some(b"pw")).expect("unlock");
    for b in (0..SOURCE).step_by(SOURCE / 64) {
        data[b] ^= 0x5a;
    }
    let child = Identity::child_of(&parent, Kind::Incremental, Cipher::Aes256).expect("child");
    write(&inc, &data, &child, Some(&parent), Some("full.hfi"));

    let images: Vec<(PathBuf, Classes)> = [full, inc]
        .into_iter()
        .map(|p| {
            let c = classes(&p);
            (p, c)
        })
        .collect();
    assert!(
        images[0].1["part headers"].len() >= 2,
        "the full image has at least three parts"
    );
    let mut x = Xorshift(0x0123_4567_89ab_cdef);
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let mut missed = Vec::new();
    let mut unnamed = Vec::new();
    let mut done = 0;
    for n in 0.. {
        if done == flips {
            break;
        }
        let (path, classes) = &images[n % images.len()];
        let class = CLASSES[(n / images.len()) % CLASSES.len()];
        let pieces = &classes[class];
        if pieces.is_empty() {
            // No padding in this layout, no later parts in a small image.
            assert!(n < 100 * CLASSES.len() || done > 0, "no class has bytes");
            continue;
        }
        done += 1;
        let (part, start, len) = pieces[(x.next() % pieces.len() as u64) as usize];
        let offset = start + x.next() % len.max(1);
        let mask = (x.next() % 255 + 1) as u8;
        *tally.entry(class).or_default() += 1;
        let at = format!(
            "{} part {part} byte {offset} ({class}) ^ {mask:#04x}",
            path.file_name().and_then(|f| f.to_str()).unwrap_or("?")
        );
        match flipped(path, part, offset, mask) {
            None => missed.push(at),
            Some(said) => {
                let lower = said.to_lowercase();
                if !NAMES.iter().any(|w| lower.contains(w)) {
                    unnamed.push(format!("{at}: {said}"));
                }
            }
        }
    }
    eprintln!("flips per class: {tally:?}");
    assert!(
        missed.is_empty(),
        "undetected flips:\n{}",
        missed.join("\n")
    );
    assert!(
        unnamed.is_empty(),
        "detected, but not named:\n{}",
        unnamed.join("\n")
    );
    for class in [
        "header",
        "metadata",
        "frames",
        "index",
        "trailer",
        "part headers",
    ] {
        assert!(
            tally.get(class).copied().unwrap_or(0) > 0 || flips < 2 * CLASSES.len(),
            "no flip in {class}"
        );
    }
}
