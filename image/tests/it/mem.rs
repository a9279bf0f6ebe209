//! In-memory fixtures: a deterministic source, a folder of images, a restore target.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use holdfast_image::blocks::DeviceBlocks;
use holdfast_image::chain::{Chain, Locator};
use holdfast_image::crypto::{Cipher, KdfParams, Keys};
use holdfast_image::extents::Extents;
use holdfast_image::header::{Coverage, Id, Kind};
use holdfast_image::meta::{Metadata, SourceMeta};
use holdfast_image::parts::{MemParts, PartStore, StreamSink};
use holdfast_image::progress::{Cancel, NoProgress};
use holdfast_image::restore::{restore, RestoreOptions, WriteAt};
use holdfast_image::writer::{write_image, Identity, WriteOptions, WriteSummary};
use holdfast_image::{ImageError, Result};

pub const BS: u32 = 4096;

/// 40 blocks and a short tail: text, zeros, noise; blocks 10..14 unallocated.
pub fn source(seed: u64) -> (Vec<u8>, Extents) {
    let size = 40 * BS as usize + 1000;
    let mut data = vec![0u8; size];
    let mut x = seed | 1;
    for (b, chunk) in data.chunks_mut(BS as usize).enumerate() {
        match b % 4 {
            0 => chunk
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = b"holdfast block text "[i % 20]),
            1 => {}
            _ => chunk.iter_mut().for_each(|v| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *v = (x >> 32) as u8;
            }),
        }
    }
    let mut used = Extents::full(size as u64);
    used.remove(10 * u64::from(BS), 4 * u64::from(BS));
    (data, used)
}

pub fn meta() -> Metadata {
    Metadata {
        host: "test-host".into(),
        source: SourceMeta {
            path: "/dev/test".into(),
            kind: "file".into(),
            size: 0,
            sector_size: 512,
            ..Default::default()
        },
        method: Coverage::UsedSector,
        kind: Kind::Full,
        image_id: String::new(),
        chain_id: String::new(),
        parent_id: None,
        parent_name: None,
        parent_digest: None,
        created: "2026-11-21T00:00:00Z".into(),
        tool: "holdfast test".into(),
        comment: Some("golden".into()),
        live: false,
        consistency: "unmounted".into(),
        warnings: vec![],
        changes: None,
    }
}

pub fn fast_kdf() -> KdfParams {
    KdfParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
        salt: [5; 16],
    }
}

/// Write an image of `data` into memory.
pub fn write(
    data: &[u8],
    used: &Extents,
    ident: &Identity,
    parent: Option<&holdfast_image::index::Index>,
    opts: &WriteOptions,
    meta: &Metadata,
) -> Result<(Vec<u8>, WriteSummary)> {
    let blocks = DeviceBlocks::new(data, used.clone(), BS, "mem");
    let mut sink = StreamSink::new(Vec::new(), "mem");
    let s = write_image(
        &blocks,
        ident,
        meta,
        parent,
        opts,
        &mut sink,
        &NoProgress,
        &Cancel::new(),
    )?;
    Ok((sink.into_inner(), s))
}

/// A full image of `data` with the fixed identity and default options of `cipher`.
pub fn write_full(data: &[u8], used: &Extents, cipher: Cipher) -> Vec<u8> {
    write(
        data,
        used,
        &fixed_identity(cipher),
        None,
        &opts(cipher),
        &meta(),
    )
    .expect("write")
    .0
}

pub fn fixed_identity(cipher: Cipher) -> Identity {
    Identity {
        image_id: Id([1; 16]),
        chain_id: Id([2; 16]),
        parent_id: Id::default(),
        parent_digest: [0; 32],
        kind: Kind::Full,
        method: Coverage::UsedSector,
        keys: if cipher == Cipher::None {
            Keys::plain([3; 32])
        } else {
            Keys::with_chain_key([3; 32], cipher)
        },
        created: 1_763_683_200,
    }
}

pub fn opts(cipher: Cipher) -> WriteOptions {
    WriteOptions {
        compression_level: 3,
        split_size: 0,
        threads: 2,
        password: (cipher != Cipher::None).then(|| zeroize::Zeroizing::new(b"pw".to_vec())),
        kdf: Some(fast_kdf()),
    }
}

/// A folder of in-memory images.
#[derive(Default, Clone)]
pub struct MemDir(pub Arc<Mutex<HashMap<String, Vec<u8>>>>);

impl MemDir {
    pub fn put(&self, name: &str, bytes: Vec<u8>) {
        self.0.lock().expect("lock").insert(name.into(), bytes);
    }
}

impl Locator for MemDir {
    fn open(&self, name: &str) -> Result<Arc<dyn PartStore>> {
        let data = self
            .0
            .lock()
            .expect("lock")
            .get(name)
            .cloned()
            .ok_or_else(|| {
                ImageError::io(
                    format!("opening '{name}'"),
                    io::Error::from(io::ErrorKind::NotFound),
                )
            })?;
        Ok(Arc::new(MemParts {
            data,
            name: name.into(),
        }))
    }
    fn candidates(&self) -> Result<Vec<String>> {
        Ok(self.0.lock().expect("lock").keys().cloned().collect())
    }
}

/// A restore target in memory.
pub struct MemTarget(pub Mutex<Vec<u8>>);

impl WriteAt for MemTarget {
    fn size(&self) -> u64 {
        self.0.lock().expect("lock").len() as u64
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut v = self.0.lock().expect("lock");
        let o = offset as usize;
        v[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Restore `name` from `dir` into a buffer of `size` bytes pre-filled with 0xEE.
pub fn restore_mem(
    dir: &MemDir,
    name: &str,
    password: Option<&[u8]>,
    size: usize,
) -> Result<Vec<u8>> {
    let chain = Chain::open(dir, name, password)?;
    let target = MemTarget(Mutex::new(vec![0xEE; size]));
    restore(
        &chain,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
        &Cancel::new(),
    )?;
    Ok(target.0.into_inner().expect("lock"))
}

/// What a restore of `data` (with `used`) must give: used bytes as they are, unallocated
/// blocks untouched (0xEE), masked free bytes inside used blocks as zeros.
pub fn expected(data: &[u8], used: &Extents) -> Vec<u8> {
    let mut out = vec![0xEE; data.len()];
    for b in 0..data.len().div_ceil(BS as usize) {
        let s = b * BS as usize;
        let e = (s + BS as usize).min(data.len());
        if used.overlapping(s as u64, e as u64).next().is_some() {
            out[s..e].fill(0);
            for (us, ue) in used.overlapping(s as u64, e as u64) {
                out[us as usize..ue as usize].copy_from_slice(&data[us as usize..ue as usize]);
            }
        }
    }
    out
}
