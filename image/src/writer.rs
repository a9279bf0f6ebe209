//! The image writer: a pipeline that keeps the disk and every core busy.
//!
//! A planner walks the batches of consecutive blocks (one batch = one potential frame) in
//! order and decides which blocks must be read; reader threads read them; hasher threads
//! zero-check, hash, compare with the parent, compress and encrypt; the calling thread writes
//! finished frames in batch order and builds the index. A batch holds one of a fixed set of
//! read buffers until it is written, so memory stays bounded whatever the speed of the sink.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{bounded, Receiver, Sender};
use zeroize::Zeroizing;

use crate::blocks::{BlockBuf, BlockSource, Class};
use crate::crypto::{Cipher, KdfParams, Keys};
use crate::error::{ImageError, Result};
use crate::frame::{FrameEncoder, MAX_FRAME_BLOCKS};
use crate::header::{
    Coverage, Header, Id, KeySection, Kind, KEY_SECTION, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE,
};
use crate::image::{block_len, digest_of};
use crate::index::{BlockState, Entry, FrameRef, Index};
use crate::magic::FORMAT_VERSION;
use crate::meta::{Metadata, MAX_META_LEN};
use crate::parts::{PartSink, PartWriter, MIN_SPLIT_SIZE};
use crate::progress::{Cancel, Progress};
use crate::trailer::{Trailer, TRAILER_LEN};

/// Target plaintext size of a frame: large enough for zstd to find matches across files (on
/// the benchmark volume 4 MiB frames give 1 % smaller images than 1 MiB frames, and as small
/// as one zstd stream over the same data), small enough that restore has hundreds of
/// independent frames to spread over the cores.
pub const FRAME_TARGET: u32 = 4 << 20;

/// How many batches the planner may run ahead of the writer. Batches with nothing to read
/// hold only their entries (3 KiB at the default block size, 24 KiB at the smallest: 3 to
/// 24 MiB in all, beside an index of the whole volume), so this bounds memory while letting
/// the planner skip long unchanged stretches without waiting for the writer.
const LOOKAHEAD: usize = 1024;

/// Blocks per frame for a block size.
pub fn frame_blocks(block_size: u32) -> usize {
    ((FRAME_TARGET / block_size).max(1) as usize).min(MAX_FRAME_BLOCKS)
}

/// The default block size for a source of `size` bytes: 32 KiB up to 256 GiB, doubled for each
/// doubling beyond, so an index never exceeds 8 Mi entries (192 MiB).
pub fn default_block_size(size: u64) -> u32 {
    let mut bs: u64 = 32 << 10;
    while size.div_ceil(bs) > 8 << 20 && bs < u64::from(MAX_BLOCK_SIZE) {
        bs *= 2;
    }
    bs as u32
}

/// Who the new image is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The image.
    pub image_id: Id,
    /// Its chain.
    pub chain_id: Id,
    /// Parent (nil for full images).
    pub parent_id: Id,
    /// Parent's content digest.
    pub parent_digest: [u8; 32],
    /// Kind.
    pub kind: Kind,
    /// Coverage.
    pub method: Coverage,
    /// Keys (chain key shared with the chain; fresh image key).
    pub keys: Keys,
    /// Seconds since the epoch.
    pub created: u64,
}

impl Identity {
    /// A new full image starting a new chain.
    pub fn new_full(method: Coverage, cipher: Cipher) -> Self {
        Self {
            image_id: Id::random(),
            chain_id: Id::random(),
            parent_id: Id::default(),
            parent_digest: [0; 32],
            kind: Kind::Full,
            method,
            keys: Keys::new_chain(cipher),
            created: now(),
        }
    }

    /// A new incremental or differential whose parent is `parent` (already unlocked).
    pub fn child_of(parent: &crate::image::Image, kind: Kind, cipher: Cipher) -> Result<Self> {
        let keys = parent.keys().ok_or_else(|| ImageError::PasswordRequired {
            name: parent.name().to_owned(),
        })?;
        Ok(Self {
            image_id: Id::random(),
            chain_id: parent.header.chain_id,
            parent_id: parent.header.image_id,
            parent_digest: parent.trailer.content_digest,
            kind,
            method: parent.header.method,
            keys: Keys::with_chain_key(keys.chain_key(), cipher),
            created: now(),
        })
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How to write.
#[derive(Clone)]
pub struct WriteOptions {
    /// zstd level (0 = store, 1..=22).
    pub compression_level: i32,
    /// Maximum part size in bytes (0 = no split; otherwise ≥ 5 MiB).
    pub split_size: u64,
    /// Worker threads (0 = cores + 1).
    pub threads: usize,
    /// Password (encrypted images).
    pub password: Option<Zeroizing<Vec<u8>>>,
    /// KDF parameters (default: [`KdfParams::generate`]).
    pub kdf: Option<KdfParams>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            compression_level: 3,
            split_size: 0,
            threads: 0,
            password: None,
            kdf: None,
        }
    }
}

/// How many blocks of each state the image has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockCounts {
    /// Not in use.
    pub unallocated: u64,
    /// All zeros.
    pub zero: u64,
    /// Stored here.
    pub data: u64,
    /// Unchanged since the parent.
    pub inherited: u64,
}

impl BlockCounts {
    /// Count the states of an index.
    pub fn of(index: &Index) -> Self {
        let mut c = Self::default();
        for e in &index.entries {
            match e.state {
                BlockState::Unallocated => c.unallocated += 1,
                BlockState::Zero => c.zero += 1,
                BlockState::Data => c.data += 1,
                BlockState::Inherited => c.inherited += 1,
            }
        }
        c
    }
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WriteSummary {
    /// The image id.
    pub image_id: String,
    /// Block states.
    pub blocks: BlockCounts,
    /// Source bytes read.
    pub read_bytes: u64,
    /// Plaintext bytes stored in frames.
    pub data_bytes: u64,
    /// Total image bytes (all parts, without part headers).
    pub image_bytes: u64,
    /// Number of parts.
    pub parts: u32,
    /// Number of frames.
    pub frames: u64,
    /// Content digest (hex).
    pub content_digest: String,
}

struct BatchOut {
    batch: u64,
    entries: Vec<Entry>,
    record: Option<Vec<u8>>,
    read_bytes: u64,
    data_bytes: u64,
    /// The read buffer, back to the pool once the batch is written.
    buf: Option<BlockBuf>,
}

/// Write one image of `src` to `sink`. On error or cancel the sink is aborted: nothing that
/// looks like an image is left.
#[allow(clippy::too_many_arguments)]
pub fn write_image(
    src: &dyn BlockSource,
    ident: &Identity,
    meta: &Metadata,
    parent: Option<&Index>,
    opts: &WriteOptions,
    sink: &mut dyn PartSink,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<WriteSummary> {
    let result = write_inner(src, ident, meta, parent, opts, sink, progress, cancel);
    if result.is_err() {
        sink.abort();
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn write_inner(
    src: &dyn BlockSource,
    ident: &Identity,
    meta: &Metadata,
    parent: Option<&Index>,
    opts: &WriteOptions,
    sink: &mut dyn PartSink,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<WriteSummary> {
    let bs = src.block_size();
    if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
        return Err(ImageError::Invalid(format!(
            "block size {bs} must be a power of two from 4 KiB to 1 MiB"
        )));
    }
    if opts.split_size != 0 && opts.split_size < MIN_SPLIT_SIZE {
        return Err(ImageError::Invalid(format!(
            "split size must be at least 5 MiB, got {} bytes",
            opts.split_size
        )));
    }
    if !(0..=22).contains(&opts.compression_level) {
        return Err(ImageError::Invalid(format!(
            "compression level {} must be 0 to 22",
            opts.compression_level
        )));
    }
    let size = src.size();
    let n_blocks = size.div_ceil(u64::from(bs));
    if let Some(p) = parent {
        if p.entries.len() as u64 != n_blocks {
            return Err(ImageError::Invalid(
                "base image has a different block count than the source".into(),
            ));
        }
    }
    let mut meta = meta.clone();
    meta.image_id = ident.image_id.to_string();
    meta.chain_id = ident.chain_id.to_string();
    meta.kind = ident.kind;
    meta.method = ident.method;
    meta.parent_id = (!ident.parent_id.is_nil()).then(|| ident.parent_id.to_string());
    meta.parent_digest =
        (!ident.parent_id.is_nil()).then(|| crate::header::hex(&ident.parent_digest));
    let meta_bytes =
        serde_json::to_vec(&meta).map_err(|e| ImageError::Invalid(format!("metadata: {e}")))?;
    if meta_bytes.len() > MAX_META_LEN as usize {
        return Err(ImageError::Invalid("metadata is too large".into()));
    }

    let cipher = ident.keys.cipher();
    let mut header = Header {
        version: FORMAT_VERSION,
        image_id: ident.image_id,
        chain_id: ident.chain_id,
        parent_id: ident.parent_id,
        parent_digest: ident.parent_digest,
        kind: ident.kind,
        method: ident.method,
        cipher,
        compression_level: opts.compression_level as i8,
        block_size: bs,
        source_size: size,
        split_size: opts.split_size,
        created: ident.created,
        meta_len: meta_bytes.len() as u32,
        keys: KeySection::Plain {
            chain_key: ident.keys.chain_key(),
        },
    };
    // Argon2id takes a noticeable moment (64 MiB, 3 passes): run it beside the workers,
    // which only need the image key; the header is written when it is done.
    let wrap_job = if cipher != Cipher::None {
        let password = opts
            .password
            .clone()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                ImageError::Invalid(
                    "encryption needs a password (--password-file or HOLDFAST_PASSWORD)".into(),
                )
            })?;
        let kdf = opts.kdf.unwrap_or_else(KdfParams::generate);
        let pre = header.encode();
        let keys = ident.keys.clone();
        Some(std::thread::spawn(move || {
            keys.wrap(&password, &kdf, &pre[..KEY_SECTION])
                .map(|(nonce, blob)| KeySection::Wrapped { kdf, nonce, blob })
        }))
    } else {
        None
    };

    let mut total = 0u64;
    for n in 0..n_blocks {
        if src.classify(n) == Class::Read {
            total += block_len(bs, size, n) as u64;
        }
    }
    progress.stage("imaging", total);

    let name = sink.display_name();
    let werr = |e: std::io::Error| ImageError::io(format!("writing '{name}'"), e);
    let mut pw = PartWriter::new(sink, ident.image_id, opts.split_size).map_err(werr)?;

    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            + 1
    } else {
        opts.threads
    };
    let per_frame = frame_blocks(bs) as u64;
    let batches = n_blocks.div_ceil(per_frame);
    let hasher = ident.keys.block_hasher();
    let frame_cipher = ident.keys.frame_cipher();
    let stop = AtomicBool::new(false);
    let buffers = threads * 2;

    let mut index = Index {
        entries: vec![Entry::UNALLOCATED; n_blocks as usize],
        frames: Vec::new(),
    };
    let mut read_bytes = 0u64;
    let mut data_bytes = 0u64;

    let (read_tx, read_rx) = bounded::<ReadBatch>(buffers);
    let (hash_tx, hash_rx) = bounded::<Result<ReadBatch>>(buffers);
    let (res_tx, res_rx) = bounded::<Result<BatchOut>>(buffers);
    // Each batch with blocks to read holds one buffer from here until it is written, so the
    // buffers bound the memory in flight; they go round, so steady state allocates nothing.
    let (pool_tx, pool_rx) = bounded::<BlockBuf>(buffers);
    for _ in 0..buffers {
        let _ = pool_tx.send(BlockBuf::with_capacity(per_frame as usize * bs as usize));
    }
    let (credit_tx, credit_rx) = bounded::<()>(LOOKAHEAD);
    for _ in 0..LOOKAHEAD {
        let _ = credit_tx.send(());
    }

    // Four stages. The planner walks the batches in order and sends those with nothing to
    // read straight to the writer (an incremental that reads 5 % of a volume is mostly such
    // batches, and each hop between threads is a wake-up). Readers read, hashers hash: a
    // thread that did both would, with its peers, fall into step — all reading while the
    // cores idle, then all hashing while the disk idles. The planner takes buffers in batch
    // order, so the oldest batch always has one and the pipeline cannot stall on buffers.
    let outcome: Result<[u8; crate::header::HEADER_LEN]> = std::thread::scope(|s| {
        let stop = &stop;
        let planner_res_tx = res_tx.clone();
        s.spawn(move || {
            for k in 0..batches {
                if credit_rx.recv().is_err() || stop.load(Ordering::Relaxed) {
                    break;
                }
                let first = k * per_frame;
                let last = (first + per_frame).min(n_blocks);
                let (entries, to_read) = plan_batch(src, first, last);
                let sent = if to_read.is_empty() {
                    planner_res_tx
                        .send(Ok(BatchOut {
                            batch: k,
                            entries,
                            record: None,
                            read_bytes: 0,
                            data_bytes: 0,
                            buf: None,
                        }))
                        .is_ok()
                } else {
                    let Ok(buf) = pool_rx.recv() else { break };
                    read_tx
                        .send(ReadBatch {
                            batch: k,
                            first,
                            entries,
                            to_read,
                            buf,
                        })
                        .is_ok()
                };
                if !sent {
                    break;
                }
            }
        });
        for _ in 0..threads {
            let read_rx = read_rx.clone();
            let hash_tx = hash_tx.clone();
            s.spawn(move || {
                for mut batch in read_rx.iter() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let read = src
                        .read_blocks(&batch.to_read, &mut batch.buf)
                        .map(|()| batch);
                    if hash_tx.send(read).is_err() {
                        break;
                    }
                }
            });
        }
        for _ in 0..threads {
            let hash_rx = hash_rx.clone();
            let res_tx = res_tx.clone();
            let hasher = hasher.clone();
            let frame_cipher = frame_cipher.as_ref();
            let image_id = ident.image_id;
            s.spawn(move || {
                let mut enc = match FrameEncoder::new(opts.compression_level) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = res_tx.send(Err(ImageError::io("starting the compressor", e)));
                        return;
                    }
                };
                for read in hash_rx.iter() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let out = read.and_then(|read| {
                        hash_batch(
                            src,
                            read,
                            parent,
                            &hasher,
                            frame_cipher,
                            &image_id,
                            &mut enc,
                        )
                    });
                    if res_tx.send(out).is_err() {
                        break;
                    }
                }
            });
        }
        drop(read_rx);
        drop(hash_tx);
        drop(hash_rx);
        drop(res_tx);
        let r = (|| {
            if let Some(job) = wrap_job {
                header.keys = job.join().ok().flatten().ok_or_else(|| {
                    ImageError::Invalid("could not derive the key from the password".into())
                })?;
            }
            let header_bytes = header.encode();
            pw.write(&header_bytes).map_err(werr)?;
            pw.write(&meta_bytes).map_err(werr)?;
            collect(
                res_rx,
                credit_tx,
                pool_tx,
                batches,
                per_frame as usize,
                &mut pw,
                &mut index,
                &mut read_bytes,
                &mut data_bytes,
                progress,
                cancel,
                &name,
            )?;
            Ok(header_bytes)
        })();
        if r.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        r
    });
    let header_bytes = outcome?;

    let index_rec = index
        .encode()
        .map_err(|e| ImageError::io("encoding the index", e))?;
    let index_offset = pw.position();
    // Twice: a damaged byte in one copy is read around from the other.
    pw.write(&index_rec).map_err(werr)?;
    pw.write(&index_rec).map_err(werr)?;
    let mut digest_input = header_bytes.to_vec();
    digest_input.extend_from_slice(&meta_bytes);
    let index_digest = digest_of(&digest_input, &index_rec);
    let index_mac = match ident.keys.mac_key() {
        Some(k) => {
            digest_input.extend_from_slice(&index_rec);
            *blake3::keyed_hash(&k, &digest_input).as_bytes()
        }
        None => [0; 32],
    };
    let content_digest = index.content_digest(bs, size);
    let stored_bytes = index.frames.iter().map(|f| u64::from(f.len)).sum();
    // The trailer must land in one part; it is small, so this only matters for its count.
    let logical_len = index_offset + 2 * index_rec.len() as u64 + TRAILER_LEN as u64;
    let part_count = parts_for(logical_len, opts.split_size);
    let trailer = Trailer {
        version: FORMAT_VERSION,
        part_count,
        logical_len,
        index_offset,
        index_len: index_rec.len() as u64,
        index_digest,
        index_mac,
        content_digest,
        data_bytes,
        stored_bytes,
    };
    pw.write(&trailer.encode()).map_err(werr)?;
    let parts = pw.part_count();
    if parts != part_count {
        return Err(ImageError::Invalid(format!(
            "internal: wrote {parts} parts, expected {part_count}"
        )));
    }
    if cancel.is_cancelled() {
        return Err(ImageError::Cancelled);
    }
    pw.commit().map_err(werr)?;
    Ok(WriteSummary {
        image_id: ident.image_id.to_string(),
        blocks: BlockCounts::of(&index),
        read_bytes,
        data_bytes,
        image_bytes: logical_len,
        parts,
        frames: index.frames.len() as u64,
        content_digest: crate::header::hex(&content_digest),
    })
}

/// Number of parts a logical stream of `len` bytes takes.
pub fn parts_for(len: u64, split: u64) -> u32 {
    if split == 0 || len <= split {
        return 1;
    }
    let rest = len - split;
    1 + rest.div_ceil(split - crate::parts::PART_HEADER_LEN) as u32
}

/// Zeros to compare blocks against (memcmp is the fastest zero test there is).
static ZEROS: [u8; MAX_BLOCK_SIZE as usize] = [0; MAX_BLOCK_SIZE as usize];

/// A batch's blocks as read from the source, on their way to a hasher.
struct ReadBatch {
    batch: u64,
    first: u64,
    /// Blocks the source fixed without reading (unallocated, or taken from the base).
    entries: Vec<Entry>,
    /// Blocks read, in order; their bytes lie end to end in `buf`.
    to_read: Vec<u64>,
    buf: BlockBuf,
}

/// Classify blocks `first..last`: the entries of those decided without reading, and the
/// blocks to read.
fn plan_batch(src: &dyn BlockSource, first: u64, last: u64) -> (Vec<Entry>, Vec<u64>) {
    let mut entries = vec![Entry::UNALLOCATED; (last - first) as usize];
    let mut to_read = Vec::with_capacity(entries.len());
    for n in first..last {
        match src.classify(n) {
            Class::Unallocated => {}
            Class::Fixed(e) => entries[(n - first) as usize] = e,
            Class::Read => to_read.push(n),
        }
    }
    (entries, to_read)
}

/// Zero-check, hash and compare the blocks read; compress and encrypt those that changed.
fn hash_batch(
    src: &dyn BlockSource,
    read: ReadBatch,
    parent: Option<&Index>,
    hasher: &crate::crypto::BlockHasher,
    cipher: Option<&crate::crypto::FrameCipher>,
    image_id: &Id,
    enc: &mut FrameEncoder,
) -> Result<BatchOut> {
    let bs = src.block_size();
    let size = src.size();
    let ReadBatch {
        batch,
        first,
        mut entries,
        to_read,
        buf,
    } = read;
    let mut data_blocks = Vec::with_capacity(to_read.len());
    let mut ranges = Vec::with_capacity(to_read.len());
    let mut at = 0usize;
    for &n in &to_read {
        let len = block_len(bs, size, n);
        let data = &buf[at..at + len];
        let e = &mut entries[(n - first) as usize];
        if data == &ZEROS[..len] {
            *e = Entry::ZERO;
        } else {
            let hash = hasher.hash(n, data);
            let unchanged = parent.is_some_and(|p| {
                let pe = &p.entries[n as usize];
                pe.state.has_content() && pe.hash == hash
            });
            if unchanged {
                *e = Entry {
                    state: BlockState::Inherited,
                    slot: 0,
                    frame: 0,
                    hash,
                };
            } else {
                *e = Entry {
                    state: BlockState::Data,
                    slot: data_blocks.len() as u16,
                    frame: 0,
                    hash,
                };
                data_blocks.push(n);
                ranges.push((at, len));
            }
        }
        at += len;
    }
    let read_bytes = at as u64;
    if data_blocks.is_empty() {
        return Ok(BatchOut {
            batch,
            entries,
            record: None,
            read_bytes,
            data_bytes: 0,
            buf: Some(buf),
        });
    }
    // Avoid a copy when every block read is stored.
    let gathered;
    let raw: &[u8] = if data_blocks.len() == to_read.len() {
        &buf[..at]
    } else {
        let mut g = Vec::with_capacity(ranges.iter().map(|r| r.1).sum());
        for &(s, l) in &ranges {
            g.extend_from_slice(&buf[s..s + l]);
        }
        gathered = g;
        &gathered
    };
    let data_bytes = raw.len() as u64;
    let record = enc
        .encode(image_id, batch, data_blocks, raw, cipher)
        .map_err(|e| ImageError::io("compressing a frame", e))?;
    Ok(BatchOut {
        batch,
        entries,
        record: Some(record),
        read_bytes,
        data_bytes,
        buf: Some(buf),
    })
}

#[allow(clippy::too_many_arguments)]
fn collect(
    res_rx: Receiver<Result<BatchOut>>,
    credit_tx: Sender<()>,
    pool_tx: Sender<BlockBuf>,
    batches: u64,
    per_frame: usize,
    pw: &mut PartWriter<'_>,
    index: &mut Index,
    read_bytes: &mut u64,
    data_bytes: &mut u64,
    progress: &dyn Progress,
    cancel: &Cancel,
    name: &str,
) -> Result<()> {
    let mut pending: BTreeMap<u64, BatchOut> = BTreeMap::new();
    let mut next = 0u64;
    while next < batches {
        if cancel.is_cancelled() {
            return Err(ImageError::Cancelled);
        }
        let out = res_rx
            .recv()
            .map_err(|_| ImageError::Invalid("internal: image workers stopped early".into()))??;
        pending.insert(out.batch, out);
        while let Some(out) = pending.remove(&next) {
            let first = next as usize * per_frame;
            let frame_idx = index.frames.len() as u32;
            if let Some(rec) = &out.record {
                let offset = pw.position();
                pw.write(rec)
                    .map_err(|e| ImageError::io(format!("writing '{name}'"), e))?;
                index.frames.push(FrameRef {
                    offset,
                    len: rec.len() as u32,
                    frame_id: out.batch,
                });
            }
            for (i, mut e) in out.entries.into_iter().enumerate() {
                if e.state == BlockState::Data {
                    e.frame = frame_idx;
                }
                index.entries[first + i] = e;
            }
            *read_bytes += out.read_bytes;
            *data_bytes += out.data_bytes;
            progress.advance(out.read_bytes);
            next += 1;
            if let Some(buf) = out.buf {
                let _ = pool_tx.send(buf);
            }
            let _ = credit_tx.send(());
        }
    }
    Ok(())
}
