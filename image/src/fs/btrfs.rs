//! btrfs (one device): used blocks from the extent tree, placed through the chunk tree.
//!
//! btrfs addresses everything by a logical address; chunks map logical ranges to places on
//! the device (the system chunks, which hold the chunk tree, are listed in the superblock
//! itself). The extent tree records every allocated extent: file data (`EXTENT_ITEM`, key
//! `(start, 168, length)`) and every tree block (`METADATA_ITEM`, key `(start, 169, level)`,
//! one node long; or an `EXTENT_ITEM` without skinny metadata). The used set is each of
//! those at its place on the device — both copies for `DUP` — plus the first MiB (the
//! superblock and what boot loaders keep there), the superblock's mirrors and the whole
//! system chunks.
//!
//! | | |
//! |---|---|
//! | supported | one device, `single` and `DUP` profiles, mixed block groups; subvolumes, snapshots, compression, reflinks, skinny metadata or not, no-holes, the free-space tree, the block-group tree, a metadata UUID |
//! | checked | the superblock's and each tree block's CRC32C (other checksum types: the block's own address and filesystem id), tree levels (no loops), every chunk and stripe inside the device |
//! | refused (imaged forensically, with the reason) | several devices, RAID and striped profiles, a tree log not yet replayed (not cleanly unmounted: mounting it once replays it), zoned devices, extent tree v2, the RAID stripe tree, unknown incompatible features |

use super::{
    le16, le32, read_at, uuid_text, FilesystemReader, FsError, FsInfo, History, Unchanged,
};
use crate::extents::Extents;
use crate::io::ReadAt;
use crate::le::u64_at as le64;

mod changes;

const FS: &str = "btrfs";
const SUPER: u64 = 0x1_0000;
const SUPER_SIZE: usize = 4096;
const MIRRORS: [u64; 2] = [0x400_0000, 0x40_0000_0000];
/// Nothing is allocated in the first MiB.
const RESERVED: u64 = 1 << 20;
const MAGIC: &[u8; 8] = b"_BHRfS_M";
/// Tree ids and item types.
const EXTENT_TREE: u64 = 2;
const ROOT_ITEM: u8 = 132;
const EXTENT_ITEM: u8 = 168;
const METADATA_ITEM: u8 = 169;
const CHUNK_ITEM: u8 = 228;
/// Incompatible features whose allocation is read right here.
const KNOWN_INCOMPAT: u64 =
    0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400 | 0x10000;
const INCOMPAT_METADATA_UUID: u64 = 0x400;
/// Block group profile bits of a chunk's type: RAID0, RAID1, DUP, RAID10, RAID5, RAID6,
/// RAID1C3, RAID1C4. Only DUP (two copies on the one device) is read here.
const PROFILE_DUP: u64 = 1 << 5;
const PROFILES: u64 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10);
const CHUNK_SYSTEM: u64 = 1 << 1;
/// Tree block header.
const HEADER: usize = 101;

/// Reads btrfs volumes of one device.
#[derive(Debug, Clone, Copy, Default)]
pub struct BtrfsReader;

/// The superblock, validated.
struct Super {
    fsid: [u8; 16],
    /// The id tree blocks carry (the metadata UUID when set).
    tree_fsid: [u8; 16],
    total_bytes: u64,
    bytes_used: u64,
    /// The last committed transaction.
    generation: u64,
    sector_size: u32,
    node_size: u32,
    root: u64,
    root_level: u8,
    chunk_root: u64,
    chunk_root_level: u8,
    devid: u64,
    crc32c: bool,
    label: Option<String>,
    /// The system chunks listed in the superblock.
    sys_chunks: Vec<Chunk>,
}

/// A chunk: `length` logical bytes from `logical`, at each of `places` on the device.
#[derive(Debug, Clone)]
struct Chunk {
    logical: u64,
    length: u64,
    kind: u64,
    places: Vec<u64>,
}

/// A parsed chunk item's record (after its 17-byte key): length, type and stripes.
fn chunk(logical: u64, item: &[u8], devid: u64, device: u64) -> Result<Chunk, FsError> {
    let length = le64(item, 0);
    let kind = le64(item, 24);
    let stripes = usize::from(le16(item, 44));
    if item.len() < 48 + 32 * stripes || stripes == 0 {
        return Err(FsError::corrupt(
            FS,
            format!("the chunk at {logical} is cut short"),
        ));
    }
    if kind & PROFILES & !PROFILE_DUP != 0 {
        return Err(FsError::unsupported(FS, "a RAID or striped profile"));
    }
    let mut places = Vec::new();
    for s in 0..stripes {
        let at = 48 + 32 * s;
        if le64(item, at) != devid {
            return Err(FsError::unsupported(FS, "several devices"));
        }
        let place = le64(item, at + 8);
        if place.checked_add(length).is_none_or(|end| end > device) {
            return Err(FsError::corrupt(
                FS,
                format!("the chunk at {logical} lies past the end of the device"),
            ));
        }
        places.push(place);
    }
    Ok(Chunk {
        logical,
        length,
        kind,
        places,
    })
}

impl Super {
    fn read(vol: &dyn ReadAt) -> Result<Option<Self>, FsError> {
        if vol.size() < SUPER + SUPER_SIZE as u64 {
            return Ok(None);
        }
        let mut b = vec![0u8; SUPER_SIZE];
        read_at(vol, FS, &mut b, SUPER)?;
        if &b[0x40..0x48] != MAGIC {
            return Ok(None);
        }
        let csum_type = le16(&b, 0xc4);
        let crc32c = csum_type == 0;
        if crc32c && le32(&b, 0) != crc32c::crc32c(&b[32..]) {
            return Err(FsError::corrupt(
                FS,
                "the superblock's checksum does not match",
            ));
        }
        if le64(&b, 0x30) != SUPER {
            return Err(FsError::corrupt(
                FS,
                "the superblock names another place as its own",
            ));
        }
        let incompat = le64(&b, 0xbc);
        if incompat & !KNOWN_INCOMPAT != 0 {
            return Err(FsError::unsupported(
                FS,
                format!("incompatible features {:#x}", incompat & !KNOWN_INCOMPAT),
            ));
        }
        if le64(&b, 0x88) != 1 {
            return Err(FsError::unsupported(
                FS,
                format!("{} devices", le64(&b, 0x88)),
            ));
        }
        if le64(&b, 0x60) != 0 {
            return Err(FsError::unsupported(
                FS,
                "a tree log not yet replayed (it was not cleanly unmounted: mounting it once replays the log)",
            ));
        }
        let sector_size = le32(&b, 0x90);
        let node_size = le32(&b, 0x94);
        if !(4096..=65536).contains(&sector_size)
            || !sector_size.is_power_of_two()
            || !(sector_size..=65536).contains(&node_size)
            || !node_size.is_power_of_two()
        {
            return Err(FsError::corrupt(
                FS,
                format!("sectors of {sector_size} and nodes of {node_size} bytes"),
            ));
        }
        let mut fsid = [0u8; 16];
        fsid.copy_from_slice(&b[0x20..0x30]);
        let mut tree_fsid = fsid;
        if incompat & INCOMPAT_METADATA_UUID != 0 {
            tree_fsid.copy_from_slice(&b[0x23b..0x24b]);
        }
        let devid = le64(&b, 0xc9);
        let total_bytes = le64(&b, 0x70);
        let label_raw = &b[0x12b..0x22b];
        let end = label_raw
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(label_raw.len());
        let label =
            Some(String::from_utf8_lossy(&label_raw[..end]).into_owned()).filter(|l| !l.is_empty());
        // The system chunk array: (key, chunk item) pairs.
        let array_len = (le32(&b, 0xa0) as usize).min(2048);
        let array = &b[0x32b..0x32b + array_len];
        let mut sys_chunks = Vec::new();
        let mut at = 0;
        while at + 17 + 48 <= array.len() {
            if array[at + 8] != CHUNK_ITEM {
                return Err(FsError::corrupt(FS, "the superblock's system chunk array"));
            }
            let logical = le64(array, at + 9);
            let item = &array[at + 17..];
            let stripes = usize::from(le16(item, 44));
            let c = chunk(logical, item, devid, total_bytes)?;
            sys_chunks.push(c);
            at += 17 + 48 + 32 * stripes;
        }
        if sys_chunks.is_empty() {
            return Err(FsError::corrupt(FS, "the superblock lists no system chunk"));
        }
        Ok(Some(Self {
            fsid,
            tree_fsid,
            total_bytes,
            bytes_used: le64(&b, 0x78),
            generation: le64(&b, 0x48),
            sector_size,
            node_size,
            root: le64(&b, 0x50),
            root_level: b[0xc6],
            chunk_root: le64(&b, 0x58),
            chunk_root_level: b[0xc7],
            devid,
            crc32c,
            label,
            sys_chunks,
        }))
    }
}

/// What a tree walk calls for each leaf item: key objectid, type and offset, and its data.
type LeafItem<'f> = dyn FnMut(u64, u8, u64, &[u8]) -> Result<(), FsError> + 'f;

/// The filesystem's chunks, and reading tree blocks through them.
struct Trees<'a> {
    vol: &'a dyn ReadAt,
    sb: &'a Super,
    chunks: Vec<Chunk>,
}

impl<'a> Trees<'a> {
    /// The volume's trees, with every chunk loaded from the chunk tree.
    fn open(vol: &'a dyn ReadAt, sb: &'a Super) -> Result<Self, FsError> {
        if sb.total_bytes > vol.size() {
            return Err(FsError::corrupt(
                FS,
                format!(
                    "the filesystem spans {} bytes but its volume has only {}",
                    sb.total_bytes,
                    vol.size()
                ),
            ));
        }
        // The system chunks first (they hold the chunk tree), then every chunk.
        let mut trees = Trees {
            vol,
            sb,
            chunks: sb.sys_chunks.clone(),
        };
        let mut chunks = Vec::new();
        trees.walk(
            sb.chunk_root,
            sb.chunk_root_level,
            &mut |_, kind, logical, data| {
                if kind == CHUNK_ITEM {
                    chunks.push(chunk(logical, data, sb.devid, sb.total_bytes)?);
                }
                Ok(())
            },
        )?;
        trees.chunks = chunks;
        Ok(trees)
    }

    /// The root (logical address, level) of tree `id`, from the root tree.
    fn root_of(&self, id: u64) -> Result<(u64, u8), FsError> {
        let mut found = None;
        self.walk(
            self.sb.root,
            self.sb.root_level,
            &mut |obj, kind, _, data| {
                if obj == id && kind == ROOT_ITEM && data.len() >= 239 {
                    found = Some((le64(data, 176), data[238]));
                }
                Ok(())
            },
        )?;
        found.ok_or_else(|| FsError::corrupt(FS, format!("the root tree has no tree {id}")))
    }

    /// The device offsets of every copy of the logical extent `[start, start + len)`.
    fn places_of(&self, start: u64, len: u64) -> Result<impl Iterator<Item = u64> + '_, FsError> {
        let c = self
            .chunks
            .iter()
            .find(|c| (c.logical..c.logical + c.length).contains(&start))
            .filter(|c| start + len <= c.logical + c.length)
            .ok_or_else(|| {
                FsError::corrupt(
                    FS,
                    format!("the extent at {start} of {len} bytes is in no chunk"),
                )
            })?;
        Ok(c.places.iter().map(move |&p| p + (start - c.logical)))
    }

    /// Where logical `at` is on the device (the first copy), and how far its chunk goes.
    fn place(&self, at: u64) -> Result<(u64, u64), FsError> {
        let c = self
            .chunks
            .iter()
            .find(|c| (c.logical..c.logical + c.length).contains(&at))
            .ok_or_else(|| FsError::corrupt(FS, format!("logical address {at} is in no chunk")))?;
        Ok((c.places[0] + (at - c.logical), c.logical + c.length - at))
    }

    /// The tree block at logical `at`, checked, expected at `level`.
    fn block(&self, at: u64, level: u8) -> Result<Vec<u8>, FsError> {
        let (place, room) = self.place(at)?;
        let size = u64::from(self.sb.node_size);
        if room < size {
            return Err(FsError::corrupt(
                FS,
                format!("the tree block at {at} crosses its chunk"),
            ));
        }
        let mut b = vec![0u8; self.sb.node_size as usize];
        read_at(self.vol, FS, &mut b, place)?;
        let bad = |why: &str| {
            Err(FsError::corrupt(
                FS,
                format!("the tree block at {at}: {why}"),
            ))
        };
        if self.sb.crc32c && le32(&b, 0) != crc32c::crc32c(&b[32..]) {
            return bad("its checksum does not match");
        }
        if le64(&b, 48) != at || b[32..48] != self.sb.tree_fsid {
            return bad("it is not the block its parent names");
        }
        if b[100] != level {
            return bad("its level is not its parent's less one");
        }
        Ok(b)
    }

    /// Call `leaf_item(key objectid, type, offset, data)` for every item of the tree whose
    /// root is at `root` at `level`.
    fn walk(&self, root: u64, level: u8, leaf_item: &mut LeafItem<'_>) -> Result<(), FsError> {
        let b = self.block(root, level)?;
        let count = le32(&b, 96) as usize;
        if level == 0 {
            for i in 0..count {
                let at = HEADER + 25 * i;
                let (off, size) = (le32(&b, at + 17) as usize, le32(&b, at + 21) as usize);
                let data = b.get(HEADER + off..HEADER + off + size).ok_or_else(|| {
                    FsError::corrupt(FS, format!("an item of the leaf at {root}"))
                })?;
                leaf_item(le64(&b, at), b[at + 8], le64(&b, at + 9), data)?;
            }
        } else {
            if HEADER + 33 * count > b.len() {
                return Err(FsError::corrupt(
                    FS,
                    format!("the node at {root} holds too many keys"),
                ));
            }
            for i in 0..count {
                self.walk(le64(&b, HEADER + 33 * i + 17), level - 1, leaf_item)?;
            }
        }
        Ok(())
    }
}

impl FilesystemReader for BtrfsReader {
    fn name(&self) -> &'static str {
        FS
    }

    fn probe(&self, vol: &dyn ReadAt) -> Result<Option<FsInfo>, FsError> {
        let Some(sb) = Super::read(vol)? else {
            return Ok(None);
        };
        Ok(Some(FsInfo {
            fs_type: "btrfs".to_owned(),
            label: sb.label.clone(),
            uuid: Some(uuid_text(&sb.fsid)),
            fs_size: sb.total_bytes,
            fs_block_size: sb.sector_size,
            used_bytes: sb.bytes_used,
        }))
    }

    fn used_extents(&self, vol: &dyn ReadAt, _info: &FsInfo) -> Result<Extents, FsError> {
        let sb = Super::read(vol)?.ok_or_else(|| FsError::corrupt(FS, "the superblock is gone"))?;
        let device = sb.total_bytes;
        let trees = Trees::open(vol, &sb)?;
        let (root, level) = trees.root_of(EXTENT_TREE)?;

        let mut used = Extents::new();
        used.add(0, RESERVED);
        for m in MIRRORS {
            if m + SUPER_SIZE as u64 <= device {
                used.add(m, SUPER_SIZE as u64);
            }
        }
        for c in trees.chunks.iter().filter(|c| c.kind & CHUNK_SYSTEM != 0) {
            for &p in &c.places {
                used.add(p, c.length);
            }
        }
        let node = u64::from(sb.node_size);
        let mut extent = |start: u64, len: u64| -> Result<(), FsError> {
            for p in trees.places_of(start, len)? {
                used.add(p, len);
            }
            Ok(())
        };
        trees.walk(root, level, &mut |start, kind, offset, _| match kind {
            EXTENT_ITEM => extent(start, offset),
            METADATA_ITEM => extent(start, node),
            _ => Ok(()),
        })?;
        Ok(used)
    }

    fn history(&self, vol: &dyn ReadAt) -> Result<History, FsError> {
        Ok(History {
            mount_count: None,
            generation: Super::read(vol)?.map(|sb| sb.generation),
        })
    }

    fn unchanged_since(
        &self,
        vol: &dyn ReadAt,
        _since: i64,
        base: &History,
    ) -> Result<Option<Unchanged>, FsError> {
        let Some(generation) = base.generation else {
            return Ok(None);
        };
        Ok(Some(Unchanged {
            ranges: changes::unchanged_since(vol, generation)?,
            source: changes::SOURCE,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::detect;
    use crate::fs::test_support::{
        assert_covers, blkid, checked_copy, image_file, open, populate, pseudo_random, run, tool,
        LoopMount, Made,
    };
    use std::path::Path;
    use std::process::Command;

    /// `mkfs.btrfs` an image of `size` bytes with `args`; mounted with zstd compression, it
    /// gets `populate`'s tree, a subvolume with files, a snapshot of it changed afterwards,
    /// a reflinked copy and a large file deleted again. `None` when tools are missing.
    fn make(size: u64, args: &[&str]) -> Option<Made> {
        let mkfs = tool("mkfs.btrfs")?;
        let btrfs = tool("btrfs")?;
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let image = image_file(dir.path(), "fs.img", size);
        run(Command::new(mkfs)
            .args(["-q", "-f", "-L", "HOLDTEST"])
            .args(args)
            .arg(&image));
        let files = {
            let m = LoopMount::new(&image, &dir.path().join("mnt"), "compress=zstd");
            let mut files = populate(&m.0);
            run(Command::new(&btrfs)
                .args(["subvolume", "create"])
                .arg(m.0.join("vol")));
            let text = "a line that compresses well\n".repeat(40_000).into_bytes();
            std::fs::write(m.0.join("vol/text.txt"), &text).expect("text");
            std::fs::write(m.0.join("vol/random.bin"), pseudo_random(2 << 20, 21)).expect("write");
            run(Command::new(&btrfs)
                .args(["subvolume", "snapshot"])
                .arg(m.0.join("vol"))
                .arg(m.0.join("snap")));
            std::fs::write(m.0.join("vol/random.bin"), pseudo_random(2 << 20, 22)).expect("write");
            run(Command::new("cp")
                .arg("--reflink=always")
                .arg(m.0.join("big.bin"))
                .arg(m.0.join("big-reflink.bin")));
            std::fs::write(m.0.join("gone.bin"), pseudo_random(8 << 20, 5)).expect("write");
            run(&mut Command::new("sync"));
            std::fs::remove_file(m.0.join("gone.bin")).expect("delete");
            let big = files[1].1.clone();
            files.extend([
                ("big-reflink.bin".to_owned(), big),
                ("vol/text.txt".to_owned(), text.clone()),
                ("vol/random.bin".to_owned(), pseudo_random(2 << 20, 22)),
                ("snap/text.txt".to_owned(), text),
                ("snap/random.bin".to_owned(), pseudo_random(2 << 20, 21)),
            ]);
            files
        };
        Some(Made { dir, image, files })
    }

    /// A copy holding only the used extents passes `btrfs check` and gives back every file.
    fn assert_copy_restores(made: &Made, used: &Extents) {
        let copy = checked_copy(made, used, &["btrfs", "check", "--readonly"]);
        let m = LoopMount::new(&copy, &made.dir.path().join("copy-mnt"), "ro");
        for (rel, want) in &made.files {
            let got = std::fs::read(m.0.join(rel)).unwrap_or_default();
            assert!(got == *want, "{rel} differs after the used-only copy");
        }
    }

    fn verify(made: &Made) -> crate::fs::Detected {
        let vol = open(&made.image);
        let found = detect(&vol).expect("detect").expect("recognised");
        let info = &found.info;
        assert_eq!(info.fs_type, "btrfs");
        assert_eq!(info.label.as_deref(), Some("HOLDTEST"));
        assert_eq!(info.used_bytes, found.used.total());
        assert!(info.used_bytes < info.fs_size / 2, "{info:?}");
        if let Some(said) = blkid(&made.image) {
            assert_eq!(
                said.get("TYPE").map(String::as_str),
                Some("btrfs"),
                "{said:?}"
            );
            assert_eq!(said.get("UUID"), info.uuid.as_ref(), "blkid {said:?}");
            assert_eq!(said.get("LABEL"), info.label.as_ref(), "blkid {said:?}");
        }
        assert_covers(
            &found.used,
            &used_said(&made.image),
            "btrfs inspect-internal",
        );
        assert_copy_restores(made, &found.used);
        found
    }

    /// What `btrfs inspect-internal dump-tree` lists as in use, placed on the device: every
    /// extent and metadata item of the extent tree through the chunk tree's stripes, and the
    /// superblock copies that fit.
    fn used_said(image: &Path) -> Extents {
        let dump = |args: &[&str]| {
            let out = run(Command::new(tool("btrfs").expect("btrfs"))
                .args(["inspect-internal"])
                .args(args)
                .arg(image));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let number = |line: &str, key: &str| -> Option<u64> {
            let mut words = line.split_whitespace();
            words.find(|w| *w == key)?;
            words.next()?.parse().ok()
        };
        let node = dump(&["dump-super"])
            .lines()
            .find_map(|l| number(l, "nodesize"))
            .expect("nodesize");
        // (logical start, length, [physical starts]) of each chunk.
        let mut chunks: Vec<(u64, u64, Vec<u64>)> = Vec::new();
        for line in dump(&["dump-tree", "-t", "chunk"]).lines() {
            let l = line.trim();
            if let Some(key) = l
                .strip_prefix("item ")
                .and_then(|r| r.split_once("CHUNK_ITEM "))
            {
                let logical = key.1.split(')').next().and_then(|n| n.parse().ok());
                chunks.push((logical.expect("chunk key"), 0, Vec::new()));
            } else if let (Some(c), Some(len)) = (chunks.last_mut(), number(l, "length")) {
                c.1 = len;
            } else if let (Some(c), true) = (chunks.last_mut(), l.starts_with("stripe ")) {
                c.2.push(number(l, "offset").expect("stripe offset"));
            }
        }
        let size = std::fs::metadata(image).expect("stat").len();
        let mut used = Extents::default();
        for copy in [64 << 10, 64 << 20, 256 << 30] {
            if copy + 4096 <= size {
                used.add(copy, 4096);
            }
        }
        for line in dump(&["dump-tree", "-t", "extent"]).lines() {
            let Some(key) = line.trim().strip_prefix("item ").and_then(|r| {
                let inner = r.split_once("key (")?.1.split_once(')')?.0;
                let f: Vec<&str> = inner.split_whitespace().collect();
                Some((
                    f[0].parse::<u64>().ok()?,
                    f[1].to_owned(),
                    f[2].parse::<u64>().ok()?,
                ))
            }) else {
                continue;
            };
            let (start, len) = match key.1.as_str() {
                "EXTENT_ITEM" => (key.0, key.2),
                "METADATA_ITEM" => (key.0, node),
                _ => continue,
            };
            let (logical, _, places) = chunks
                .iter()
                .find(|c| (c.0..c.0 + c.1).contains(&start))
                .expect("an extent in a chunk");
            for p in places {
                used.add(p + (start - logical), len);
            }
        }
        assert!(used.total() > 0);
        used
    }

    #[test]
    fn btrfs_with_subvolumes_snapshots_compression_and_a_deleted_file() {
        let Some(made) = make(256 << 20, &[]) else {
            return;
        };
        verify(&made);
    }

    #[test]
    fn extents_older_than_the_base_generation_are_unchanged_unless_written_in_place() {
        let Some(made) = make(256 << 20, &[]) else {
            return;
        };
        // A NOCOW file: written in place, never named.
        let nocow_data = pseudo_random(1 << 20, 31);
        {
            let m = LoopMount::new(&made.image, &made.dir.path().join("mnt2"), "rw");
            let f = m.0.join("nocow.bin");
            std::fs::File::create(&f).expect("create");
            run(Command::new("chattr").arg("+C").arg(&f));
            std::fs::write(&f, &nocow_data).expect("write");
        }
        let vol = open(&made.image);
        let used = detect(&vol).expect("detect").expect("btrfs").used;
        let history = BtrfsReader.history(&vol).expect("history");
        let now = history.generation.expect("btrfs has a generation");
        let named = BtrfsReader
            .unchanged_since(&vol, 0, &history)
            .expect("scan")
            .expect("btrfs tracks changes")
            .ranges;
        // Everything the extent tree names, in place, but the NOCOW file's extent; never
        // the first MiB, the superblock mirrors or system chunks' free space.
        let mut outside = named.clone();
        for &(s, e) in used.ranges() {
            outside.remove(s, e - s);
        }
        assert!(
            outside.is_empty(),
            "named unused ranges {:?}",
            outside.ranges()
        );
        assert!(named.overlapping(0, RESERVED).next().is_none());
        let sb = Super::read(&vol).expect("sb").expect("btrfs");
        let trees = Trees::open(&vol, &sb).expect("trees");
        let mut nocow_at = Vec::new();
        let (root, level) = trees.root_of(changes::FS_TREE).expect("fs tree");
        trees
            .walk(root, level, &mut |_, kind, _, data| {
                if kind == changes::EXTENT_DATA && data.len() >= 53 && le64(data, 29) == 1 << 20 {
                    nocow_at.push(le64(data, 21));
                }
                Ok(())
            })
            .expect("walk");
        assert!(
            !nocow_at.is_empty(),
            "the NOCOW file's extent is in the fs tree"
        );
        let mut nocow_places = Extents::new();
        for at in nocow_at {
            for place in trees.places_of(at, 1 << 20).expect("place") {
                nocow_places.add(place, 1 << 20);
                assert!(
                    named.overlapping(place, place + (1 << 20)).next().is_none(),
                    "a NOCOW extent at {place} was named unchanged"
                );
            }
        }
        // And everything else the extent tree names: all of the used set but the first MiB,
        // the superblock mirrors, the system chunks (imaged whole) and the NOCOW extent.
        let mut want = used.clone();
        let mut got = named.clone();
        want.remove(0, RESERVED);
        for m in MIRRORS {
            want.remove(m, SUPER_SIZE as u64);
        }
        for c in trees.chunks.iter().filter(|c| c.kind & CHUNK_SYSTEM != 0) {
            for &p in &c.places {
                want.remove(p, c.length);
                got.remove(p, c.length);
            }
        }
        for &(s, e) in nocow_places.ranges() {
            want.remove(s, e - s);
        }
        assert_eq!(got, want, "named vs what the extent tree allocated");
        // Nothing was allocated before generation 0; a base newer than the filesystem is an
        // older copy (the plan refuses it before asking).
        let older = History {
            mount_count: None,
            generation: Some(0),
        };
        let none = BtrfsReader.unchanged_since(&vol, 0, &older).expect("scan");
        assert!(none.expect("btrfs").ranges.is_empty());
        assert!(now > 0);
    }

    #[test]
    fn btrfs_with_dup_metadata_and_fat_extent_refs() {
        // Without skinny metadata, tree blocks are extent items one node long.
        let Some(made) = make(320 << 20, &["-m", "dup", "-O", "^skinny-metadata"]) else {
            return;
        };
        verify(&made);
    }

    #[test]
    fn damaged_truncated_and_multi_device_volumes_are_clean_errors() {
        let Some(made) = make(256 << 20, &[]) else {
            return;
        };
        let pristine = std::fs::read(&made.image).expect("read");
        // A changed superblock field no longer matches its checksum.
        let mut changed = pristine.clone();
        changed[SUPER as usize + 0x78] ^= 0x40;
        match detect(&changed) {
            Err(FsError::Corrupt { detail, .. }) => assert!(detail.contains("checksum")),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // A tree log, or a second device: refused, saying why.
        let resealed = |img: &mut Vec<u8>| {
            let s = SUPER as usize;
            let sum = crc32c::crc32c(&img[s + 32..s + SUPER_SIZE]);
            img[s..s + 4].copy_from_slice(&sum.to_le_bytes());
        };
        for (at, what) in [(0x60, "tree log"), (0x88, "devices")] {
            let mut img = pristine.clone();
            img[SUPER as usize + at] = 2;
            resealed(&mut img);
            match detect(&img) {
                Err(FsError::Unsupported { feature, .. }) => {
                    assert!(feature.contains(what), "{feature}")
                }
                other => panic!("expected Unsupported, got {other:?}"),
            }
        }
        // Cut short: recognised, then refused without reading past the end.
        let short = pristine[..64 << 20].to_vec();
        assert!(BtrfsReader.probe(&short).expect("probe").is_some());
        match detect(&short) {
            Err(FsError::Corrupt { detail, .. }) => {
                assert!(detail.contains("volume has only"), "{detail}")
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // Random damage in the superblock (checksum made good again) never panics.
        let noise = pseudo_random(3 * 2000, 17);
        let mut img = pristine;
        let s = SUPER as usize;
        let sb = img[s..s + SUPER_SIZE].to_vec();
        for hit in noise.chunks_exact(3) {
            let at = s + 0x30 + usize::from(u16::from_le_bytes([hit[0], hit[1]])) % 0x800;
            img[at] ^= hit[2] | 1;
            resealed(&mut img);
            let _ = detect(&img);
            img[s..s + SUPER_SIZE].copy_from_slice(&sb);
        }
    }

    #[test]
    fn random_bytes_are_not_btrfs() {
        for seed in 1..100 {
            let noise = pseudo_random(1 << 17, seed);
            let got = BtrfsReader.probe(&noise);
            assert!(matches!(got, Ok(None)), "seed {seed}: {got:?}");
        }
    }
}
