//! XFS: used blocks as the complement of the free-space B-trees.
//!
//! The volume is split into allocation groups (AGs) of `sb_agblocks` blocks (the last may be
//! shorter); AG `a` starts at byte `a × agblocks × blocksize`. Each AG's header (AGF, in its
//! second sector) names the root of the by-block free-space B-tree ("bnobt"), whose leaves
//! list every free extent of the AG. Everything not listed is in use: the AG headers, the
//! free list, every B-tree, the inode chunks, directories, file data, and the internal log
//! (which lives inside an AG and is allocated there). So the used set is each AG minus its
//! free extents, and nothing else needs walking.
//!
//! | feature | handling |
//! |---|---|
//! | v4 and v5 (CRC) superblocks and B-tree blocks (`ABTB`/`AB3B`) | supported; on v5, the CRC32C of the superblock, each AGF and each free-space tree block is checked (a mismatch is damage) |
//! | `finobt`, `rmapbt`, `reflink`, `inobtcount` (read-only compatible) | supported: free space is still exactly the bnobt; a shared (reflinked) extent is allocated once |
//! | `ftype`, `spinodes`, `meta_uuid`, `bigtime`, `nrext64`, `exchange`, `parent` (incompatible) | supported: they change what is inside blocks, not the free-space trees |
//! | `needsrepair` | refused: the filesystem says it is damaged |
//! | any other incompatible or read-only compatible bit | refused |
//! | a realtime subvolume (`sb_rblocks` > 0) | refused: file data lives on another device |
//! | an external log (`sb_logstart` = 0) | refused: the log, and whether it is clean, is on another device |
//! | a log that is not clean | refused (below) |
//!
//! # The log
//!
//! A filesystem that was not cleanly unmounted (a crash, a copy of a mounted one, a snapshot)
//! has changes in its log that the B-trees on disk do not show yet: blocks it allocated may
//! still look free there, so reading the trees would lose them. The log is read just enough
//! to tell: its head is found from the cycle number stamped on every 512-byte log block, and
//! the last record before it must be an unmount record (written by a clean unmount), or
//! every record from the log's tail to its head must only rewrite the superblock (what a
//! frozen filesystem leaves: its log is "covered", everything else is on disk). Anything else
//! is refused, and the volume is imaged sector by sector with a warning; a snapshot, being
//! writable, has its log replayed by mounting it before it is read (the agent does that).

use super::{padded_text, read_at, FilesystemReader, FsError, FsInfo, History, Unchanged};
use crate::extents::Extents;
use crate::io::ReadAt;

mod changes;

const FS: &str = "xfs";
const SB_MAGIC: &[u8; 4] = b"XFSB";
const AGF_MAGIC: &[u8; 4] = b"XAGF";
const BNOBT_MAGIC_V4: &[u8; 4] = b"ABTB";
const BNOBT_MAGIC_V5: &[u8; 4] = b"AB3B";
/// The magic number at the start of every log record header.
const LOG_RECORD_MAGIC: u32 = 0xFEED_BABE;
/// A log operation that ends a mount: the log is clean.
const LOG_UNMOUNT_TRANS: u8 = 0x20;
/// Log operations that continue in, or from, another record.
const LOG_CONTINUED: u8 = 0x04 | 0x08;
/// The log item that records a changed buffer (written in the host's byte order).
const LOG_ITEM_BUF: u16 = 0x123c;
/// A transaction header region: "TRAN".
const LOG_TRANS_MAGIC: u32 = 0x5452_414e;
/// Records larger than one header's cycle data (32 KiB) are not parsed: a covered log's last
/// record is small.
const LOG_CYCLE_DATA_BLOCKS: usize = 64;
/// How far past the head log writes may still be in flight when a copy was taken (8 log
/// buffers of at most 256 KiB): no block there may carry the head's cycle.
const LOG_INFLIGHT_BLOCKS: u64 = 8 * (256 << 10) / 512;

// sb_features_incompat (v5)
const INCOMPAT_KNOWN: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x20 | 0x40 | 0x80;
const INCOMPAT_NEEDSREPAIR: u32 = 0x10;
// sb_features_ro_compat (v5)
const RO_COMPAT_KNOWN: u32 = 0x1 | 0x2 | 0x4 | 0x8;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// Whether a v5 metadata block's CRC32C, stored little-endian at `at`, matches the block
/// (computed with those four bytes as zeros).
fn crc_matches(block: &[u8], at: usize) -> bool {
    let Some(stored) = block.get(at..at + 4) else {
        return false;
    };
    let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    let crc = crc32c::crc32c(&block[..at]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &block[at + 4..]) == stored
}

/// Where the CRC is in a v5 superblock, AGF and short-form B-tree block.
const SB_CRC: usize = 224;
const AGF_CRC: usize = 216;
const BTREE_CRC: usize = 52;

/// The fields of the primary superblock this reader uses.
#[derive(Debug, Clone)]
struct Superblock {
    block_size: u32,
    dblocks: u64,
    rblocks: u64,
    uuid: [u8; 16],
    log_start: u64,
    ag_blocks: u32,
    ag_count: u32,
    log_blocks: u32,
    version: u16,
    sector_size: u16,
    label: Option<String>,
    ag_blk_log: u8,
    /// Bytes per inode (`sb_inodesize`).
    inode_size: u16,
    /// Log2 of inodes per block (`sb_inopblog`).
    inopb_log: u8,
    free_blocks: u64,
    ro_compat: u32,
    incompat: u32,
    /// v5: the log sequence number of the superblock's last write (`sb_lsn`); it only
    /// grows, across freezes and mounts alike.
    lsn: Option<u64>,
}

impl Superblock {
    fn read(vol: &dyn ReadAt) -> Result<Option<Self>, FsError> {
        if vol.size() < 512 {
            return Ok(None);
        }
        let mut b = [0u8; 512];
        read_at(vol, FS, &mut b, 0)?;
        if &b[0..4] != SB_MAGIC {
            return Ok(None);
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[32..48]);
        let sb = Self {
            block_size: be32(&b, 4),
            dblocks: be64(&b, 8),
            rblocks: be64(&b, 16),
            uuid,
            log_start: be64(&b, 48),
            ag_blocks: be32(&b, 84),
            ag_count: be32(&b, 88),
            log_blocks: be32(&b, 96),
            version: be16(&b, 100) & 0xf,
            sector_size: be16(&b, 102),
            label: padded_text(&b[108..120]),
            ag_blk_log: b[124],
            inode_size: be16(&b, 104),
            inopb_log: b[123],
            free_blocks: be64(&b, 144),
            ro_compat: be32(&b, 212),
            incompat: be32(&b, 216),
            lsn: (be16(&b, 100) & 0xf == 5).then(|| be64(&b, 240)),
        };
        let sane = sb.block_size.is_power_of_two()
            && (512..=65536).contains(&sb.block_size)
            && sb.sector_size.is_power_of_two()
            && (512..=32768).contains(&sb.sector_size)
            && u32::from(sb.sector_size) <= sb.block_size
            && sb.ag_blocks >= 16
            && sb.ag_count >= 1
            && sb.ag_blk_log < 32
            && sb.inode_size.is_power_of_two()
            && (256..=2048).contains(&sb.inode_size)
            && u32::from(sb.inode_size).checked_shl(u32::from(sb.inopb_log)) == Some(sb.block_size)
            && u64::from(sb.ag_blocks) <= 1 << sb.ag_blk_log
            && sb.dblocks <= u64::from(sb.ag_blocks) * u64::from(sb.ag_count)
            && sb.dblocks > u64::from(sb.ag_blocks) * u64::from(sb.ag_count - 1);
        if !sane {
            return Err(FsError::corrupt(
                FS,
                "the superblock's geometry is impossible",
            ));
        }
        if sb.version == 5 {
            let mut sector = vec![0u8; usize::from(sb.sector_size)];
            read_at(vol, FS, &mut sector, 0)?;
            if !crc_matches(&sector, SB_CRC) {
                return Err(FsError::corrupt(
                    FS,
                    "the superblock's checksum does not match",
                ));
            }
        }
        Ok(Some(sb))
    }

    fn check_features(&self) -> Result<(), FsError> {
        match self.version {
            4 => {}
            5 => {
                if self.incompat & INCOMPAT_NEEDSREPAIR != 0 {
                    return Err(FsError::unsupported(
                        FS,
                        "needsrepair (the filesystem must be repaired with xfs_repair first)",
                    ));
                }
                if self.incompat & !INCOMPAT_KNOWN != 0 {
                    return Err(FsError::unsupported(
                        FS,
                        format!(
                            "incompatible features {:#x}",
                            self.incompat & !INCOMPAT_KNOWN
                        ),
                    ));
                }
                if self.ro_compat & !RO_COMPAT_KNOWN != 0 {
                    return Err(FsError::unsupported(
                        FS,
                        format!(
                            "read-only compatible features {:#x}",
                            self.ro_compat & !RO_COMPAT_KNOWN
                        ),
                    ));
                }
            }
            v => return Err(FsError::unsupported(FS, format!("superblock version {v}"))),
        }
        if self.rblocks > 0 {
            return Err(FsError::unsupported(
                FS,
                "a realtime subvolume (its file data is on another device)",
            ));
        }
        if self.log_start == 0 {
            return Err(FsError::unsupported(FS, "an external log device"));
        }
        Ok(())
    }

    fn bytes(&self, blocks: u64) -> u64 {
        blocks * u64::from(self.block_size)
    }

    /// Byte offset of block `agbno` of AG `agno`.
    fn ag_byte(&self, agno: u32, agbno: u32) -> u64 {
        self.bytes(u64::from(agno) * u64::from(self.ag_blocks) + u64::from(agbno))
    }

    /// Byte offset of a filesystem block number (AG number in the high bits).
    fn fsb_byte(&self, fsb: u64) -> Option<u64> {
        let agno = u32::try_from(fsb >> self.ag_blk_log).ok()?;
        let agbno = u32::try_from(fsb & ((1u64 << self.ag_blk_log) - 1)).ok()?;
        (agno < self.ag_count && agbno < self.ag_blocks).then(|| self.ag_byte(agno, agbno))
    }

    fn uuid_text(&self) -> String {
        super::uuid_text(&self.uuid)
    }
}

/// The XFS reader.
pub struct XfsReader;

impl FilesystemReader for XfsReader {
    fn name(&self) -> &'static str {
        FS
    }

    fn probe(&self, vol: &dyn ReadAt) -> Result<Option<FsInfo>, FsError> {
        let Some(sb) = Superblock::read(vol)? else {
            return Ok(None);
        };
        Ok(Some(FsInfo {
            fs_type: "xfs".to_owned(),
            label: sb.label.clone(),
            uuid: Some(sb.uuid_text()),
            fs_size: sb.bytes(sb.dblocks),
            fs_block_size: sb.block_size,
            used_bytes: sb.bytes(sb.dblocks.saturating_sub(sb.free_blocks)),
        }))
    }

    fn used_extents(&self, vol: &dyn ReadAt, _info: &FsInfo) -> Result<Extents, FsError> {
        let sb = Superblock::read(vol)?
            .ok_or_else(|| FsError::corrupt(FS, "the superblock vanished"))?;
        sb.check_features()?;
        check_log_clean(vol, &sb)?;
        let mut used = Extents::new();
        for agno in 0..sb.ag_count {
            let agf = read_agf(vol, &sb, agno)?;
            let length = ag_length(&agf, &sb, agno)?;
            used.add(sb.ag_byte(agno, 0), sb.bytes(u64::from(length)));
            for (start, count) in free_extents(vol, &sb, &agf, agno, length)? {
                used.remove(sb.ag_byte(agno, start), sb.bytes(u64::from(count)));
            }
        }
        Ok(used)
    }

    /// XFS counts no mounts; its log sequence tells an older copy of the filesystem (a
    /// sequence behind the base's) from the one the base was taken of.
    fn history(&self, vol: &dyn ReadAt) -> Result<History, FsError> {
        Ok(History {
            mount_count: None,
            generation: Superblock::read(vol)?.and_then(|sb| sb.lsn),
        })
    }

    fn unchanged_since(
        &self,
        vol: &dyn ReadAt,
        since: i64,
        _base: &History,
    ) -> Result<Option<Unchanged>, FsError> {
        Ok(Some(Unchanged {
            ranges: changes::unchanged_since(vol, since)?,
            source: changes::SOURCE,
        }))
    }
}

/// The header (AGF) of allocation group `agno`, its magic and number checked.
fn read_agf(vol: &dyn ReadAt, sb: &Superblock, agno: u32) -> Result<[u8; 512], FsError> {
    let mut sector = vec![0u8; usize::from(sb.sector_size)];
    read_at(
        vol,
        FS,
        &mut sector,
        sb.ag_byte(agno, 0) + u64::from(sb.sector_size),
    )?;
    let mut agf = [0u8; 512];
    agf.copy_from_slice(&sector[..512]);
    if &agf[0..4] != AGF_MAGIC || be32(&agf, 8) != agno {
        return Err(FsError::corrupt(
            FS,
            format!("the header (AGF) of allocation group {agno}"),
        ));
    }
    if sb.version == 5 && !crc_matches(&sector, AGF_CRC) {
        return Err(FsError::corrupt(
            FS,
            format!("the header (AGF) of allocation group {agno}: its checksum does not match"),
        ));
    }
    Ok(agf)
}

/// The length in blocks the AGF `agf` of `agno` gives its group, checked against the
/// superblock.
fn ag_length(agf: &[u8; 512], sb: &Superblock, agno: u32) -> Result<u32, FsError> {
    let length = be32(agf, 12);
    let expected = if agno + 1 == sb.ag_count {
        sb.dblocks - u64::from(sb.ag_blocks) * u64::from(sb.ag_count - 1)
    } else {
        u64::from(sb.ag_blocks)
    };
    if u64::from(length) != expected {
        return Err(FsError::corrupt(
            FS,
            format!(
                "allocation group {agno} says it has {length} blocks, the superblock {expected}"
            ),
        ));
    }
    Ok(length)
}

/// Every free extent (AG block, count) of AG `agno`, from its by-block free-space B-tree.
fn free_extents(
    vol: &dyn ReadAt,
    sb: &Superblock,
    agf: &[u8; 512],
    agno: u32,
    length: u32,
) -> Result<Vec<(u32, u32)>, FsError> {
    let tree = AgTree {
        name: "free-space",
        magic: if sb.version == 5 {
            BNOBT_MAGIC_V5
        } else {
            BNOBT_MAGIC_V4
        },
        key_len: 8,
        rec_len: 8,
    };
    let mut free = Vec::new();
    tree.walk(
        vol,
        sb,
        agno,
        length,
        be32(agf, 16),
        be32(agf, 28),
        &mut |rec| {
            let (start, count) = (be32(rec, 0), be32(rec, 4));
            if u64::from(start) + u64::from(count) > u64::from(length) {
                return Err(FsError::corrupt(
                    FS,
                    format!("a free extent of allocation group {agno} runs past its end"),
                ));
            }
            free.push((start, count));
            Ok(())
        },
    )?;
    Ok(free)
}

/// A short-form B-tree of an allocation group (free space, inodes): its block magic and the
/// sizes of its keys and leaf records.
struct AgTree {
    name: &'static str,
    magic: &'static [u8; 4],
    key_len: usize,
    rec_len: usize,
}

impl AgTree {
    /// Call `record` for every leaf record of the tree rooted at AG block `root` with
    /// `levels` levels in AG `agno` (`length` blocks). Every block is visited once, level by
    /// level; a block that is not the tree's (magic, level, v5 CRC), a loop or a pointer
    /// outside the group is damage.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        vol: &dyn ReadAt,
        sb: &Superblock,
        agno: u32,
        length: u32,
        root: u32,
        levels: u32,
        record: &mut dyn FnMut(&[u8]) -> Result<(), FsError>,
    ) -> Result<(), FsError> {
        let name = self.name;
        if levels == 0 || levels > 10 || root == 0 || root >= length {
            return Err(FsError::corrupt(
                FS,
                format!(
                    "the {name} tree of allocation group {agno} (root {root}, {levels} levels)"
                ),
            ));
        }
        let v5 = sb.version == 5;
        let header = if v5 { 56 } else { 16 };
        let bs = sb.block_size as usize;
        let mut block = vec![0u8; bs];
        let mut level_blocks = vec![root];
        let mut visited = 0u64;
        for level in (0..levels).rev() {
            let mut next = Vec::new();
            for &agbno in &level_blocks {
                visited += 1;
                if agbno >= length || visited > u64::from(length) {
                    return Err(FsError::corrupt(
                        FS,
                        format!("the {name} tree of allocation group {agno} points outside it"),
                    ));
                }
                read_at(vol, FS, &mut block, sb.ag_byte(agno, agbno))?;
                let numrecs = usize::from(be16(&block, 6));
                if &block[0..4] != self.magic || u32::from(be16(&block, 4)) != level {
                    return Err(FsError::corrupt(FS, format!(
                        "block {agbno} of allocation group {agno} is not the {name} tree block it should be"
                    )));
                }
                if v5 && !crc_matches(&block, BTREE_CRC) {
                    return Err(FsError::corrupt(
                        FS,
                        format!(
                            "{name} tree block {agbno} of allocation group {agno}: its checksum does not match"
                        ),
                    ));
                }
                if level == 0 {
                    if header + numrecs * self.rec_len > bs {
                        return Err(FsError::corrupt(
                            FS,
                            format!("{name} leaf {agbno} of group {agno}"),
                        ));
                    }
                    for r in 0..numrecs {
                        let at = header + r * self.rec_len;
                        record(&block[at..at + self.rec_len])?;
                    }
                } else {
                    // Keys for as many as fit, then the 4-byte pointers.
                    let maxrecs = (bs - header) / (self.key_len + 4);
                    if numrecs > maxrecs {
                        return Err(FsError::corrupt(
                            FS,
                            format!("{name} node {agbno} of group {agno}"),
                        ));
                    }
                    let ptrs = header + maxrecs * self.key_len;
                    next.extend((0..numrecs).map(|i| be32(&block, ptrs + i * 4)));
                }
            }
            level_blocks = next;
        }
        Ok(())
    }
}

/// Whether `vol` is an XFS filesystem whose log holds changes not yet written in place
/// (what mounting it would replay); false for anything else.
pub fn log_needs_replay(vol: &dyn ReadAt) -> Result<bool, FsError> {
    match Superblock::read(vol)? {
        Some(sb) if sb.log_start != 0 => Ok(!log_is_clean(vol, &sb)?),
        _ => Ok(false),
    }
}

fn log_is_clean(vol: &dyn ReadAt, sb: &Superblock) -> Result<bool, FsError> {
    let start = sb
        .fsb_byte(sb.log_start)
        .ok_or_else(|| FsError::corrupt(FS, "the log's start is outside the filesystem"))?;
    let blocks = sb.bytes(u64::from(sb.log_blocks)) / 512;
    Log { vol, start, blocks }.is_clean()
}

/// Refuse a log that is not clean (see the module's documentation).
fn check_log_clean(vol: &dyn ReadAt, sb: &Superblock) -> Result<(), FsError> {
    if log_is_clean(vol, sb)? {
        Ok(())
    } else {
        Err(FsError::unsupported(
            FS,
            "a log holding changes not yet written in place (it was not cleanly unmounted, \
             or is mounted: mount and unmount it, or image it from a snapshot)",
        ))
    }
}

/// The log: `blocks` 512-byte blocks at byte `start`.
struct Log<'a> {
    vol: &'a dyn ReadAt,
    start: u64,
    blocks: u64,
}

/// A log record header, as far as this reader uses it.
struct Record {
    /// Its first block.
    block: u64,
    /// Blocks its header takes (more than one for large v2 records).
    header_blocks: u64,
    data_len: u64,
    ops: u32,
    tail_lsn: u64,
    header: [u8; 512],
}

/// The most records a covered log may hold between its tail and head.
const COVERED_RECORDS: usize = 16;

impl Log<'_> {
    fn read_block(&self, block: u64) -> Result<[u8; 512], FsError> {
        let mut b = [0u8; 512];
        read_at(self.vol, FS, &mut b, self.start + block * 512)?;
        Ok(b)
    }

    /// The cycle a log block was written in (a record header carries it after its magic).
    fn cycle(&self, block: u64) -> Result<u32, FsError> {
        let b = self.read_block(block)?;
        Ok(if be32(&b, 0) == LOG_RECORD_MAGIC {
            be32(&b, 4)
        } else {
            be32(&b, 0)
        })
    }

    /// Nothing to replay: the last record is an unmount record, or every record from the
    /// tail to the head only rewrites the superblock (a covered log).
    fn is_clean(&self) -> Result<bool, FsError> {
        let Some(head) = self.head()? else {
            return Ok(false);
        };
        let Some(last) = self.last_record(head)? else {
            return Ok(false);
        };
        if last.ops == 1 {
            let b = self.read_block(last.block + last.header_blocks)?;
            if b[9] & LOG_UNMOUNT_TRANS != 0 {
                return Ok(true);
            }
        }
        let mut block = last.tail_lsn & 0xffff_ffff;
        for _ in 0..COVERED_RECORDS {
            if block >= self.blocks {
                return Ok(false);
            }
            let Some(record) = self.record_at(block)? else {
                return Ok(false);
            };
            if !record.only_superblock(self)? {
                return Ok(false);
            }
            block = (record.end()) % self.blocks;
            if block == head % self.blocks {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The first block not written in the newest cycle; `None` when that is unclear (writes
    /// in flight, or a log that is not one cycle and the one before).
    fn head(&self) -> Result<Option<u64>, FsError> {
        if self.blocks < 8 {
            return Ok(None);
        }
        let first = self.cycle(0)?;
        let last = self.cycle(self.blocks - 1)?;
        let head = if first == last {
            // Written up to the end in this cycle: the head is where it wraps.
            self.blocks
        } else if last.wrapping_add(1) == first {
            // Blocks of cycle `first`, then of `first - 1`: find the boundary.
            let (mut lo, mut hi) = (0, self.blocks - 1);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if self.cycle(mid)? == first {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            hi
        } else {
            return Ok(None);
        };
        // Nothing of the newest cycle just past the head: a copy taken while writes were in
        // flight may have later records with holes before them.
        let newest = self.cycle(head - 1)?;
        for b in head..(head + LOG_INFLIGHT_BLOCKS).min(self.blocks) {
            if self.cycle(b)? == newest {
                return Ok(None);
            }
        }
        Ok(Some(head))
    }

    /// The record whose header is at `block`, if one is.
    fn record_at(&self, block: u64) -> Result<Option<Record>, FsError> {
        let header = self.read_block(block)?;
        if be32(&header, 0) != LOG_RECORD_MAGIC {
            return Ok(None);
        }
        let version = be32(&header, 8);
        if version != 1 && version != 2 {
            return Ok(None);
        }
        let size = u64::from(be32(&header, 320));
        let header_blocks = if version == 2 && size > 32 << 10 {
            size.div_ceil(32 << 10)
        } else {
            1
        };
        Ok(Some(Record {
            block,
            header_blocks,
            data_len: u64::from(be32(&header, 12)),
            ops: be32(&header, 40),
            tail_lsn: be64(&header, 24),
            header,
        }))
    }

    /// The record that ends exactly at `head`; `None` when there is none.
    fn last_record(&self, head: u64) -> Result<Option<Record>, FsError> {
        let lowest = head.saturating_sub(LOG_INFLIGHT_BLOCKS);
        for block in (lowest..head).rev() {
            if let Some(record) = self.record_at(block)? {
                return Ok((record.end() == head).then_some(record));
            }
        }
        Ok(None)
    }
}

impl Record {
    /// The block after it.
    fn end(&self) -> u64 {
        self.block + self.header_blocks + self.data_len.div_ceil(512)
    }

    /// Whether it holds whole transactions that rewrite only the superblock.
    fn only_superblock(&self, log: &Log<'_>) -> Result<bool, FsError> {
        let first_data = self.block + self.header_blocks;
        let blocks = usize::try_from(self.data_len.div_ceil(512)).unwrap_or(usize::MAX);
        if blocks > LOG_CYCLE_DATA_BLOCKS || self.end() > log.blocks {
            return Ok(false);
        }
        let mut data = Vec::with_capacity(blocks * 512);
        for i in 0..blocks {
            let mut b = log.read_block(first_data + i as u64)?;
            // Each block's first word was overwritten by the cycle; the header keeps it.
            b[..4].copy_from_slice(&self.header[44 + i * 4..48 + i * 4]);
            data.extend_from_slice(&b);
        }
        data.truncate(usize::try_from(self.data_len).unwrap_or(0));
        Ok(only_superblock_changes(&data, self.ops))
    }
}

/// Whether the `ops` log operations in `data` are whole transactions that log nothing but
/// the superblock's buffer (disk address 0).
fn only_superblock_changes(data: &[u8], ops: u32) -> bool {
    let mut at = 0usize;
    // Items remaining in the current transaction's current buffer item: data regions to skip.
    let mut skip_regions = 0u32;
    for _ in 0..ops {
        let Some(h) = data.get(at..at + 12) else {
            return false;
        };
        let len = be32(h, 4) as usize;
        let flags = h[9];
        at += 12;
        let Some(region) = data.get(at..at + len) else {
            return false;
        };
        at += len;
        if flags & LOG_CONTINUED != 0 {
            return false;
        }
        if len == 0 {
            // Start or commit of a transaction.
            continue;
        }
        if skip_regions > 0 {
            skip_regions -= 1;
            continue;
        }
        if region.len() >= 4
            && u32::from_ne_bytes([region[0], region[1], region[2], region[3]]) == LOG_TRANS_MAGIC
        {
            continue;
        }
        if region.len() < 16 {
            return false;
        }
        let kind = u16::from_ne_bytes([region[0], region[1]]);
        let regions = u16::from_ne_bytes([region[2], region[3]]);
        let blkno = i64::from_ne_bytes(region[8..16].try_into().unwrap_or([0xff; 8]));
        if kind != LOG_ITEM_BUF || blkno != 0 || regions == 0 {
            return false;
        }
        skip_regions = u32::from(regions) - 1;
    }
    // The record is padded to whole blocks after its last operation.
    skip_regions == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::detect;
    use crate::fs::test_support::{
        assert_covers, checked_copy, image_file, open, populate, pseudo_random, run, tool,
        written_file_extents, LoopMount, Made,
    };
    use std::path::Path;
    use std::process::Command;

    /// `mkfs.xfs` an image with `args`, then (kernel loop mount) `populate`'s tree, a
    /// reflinked copy and a large file deleted again. This kernel mounts no v4 (`crc=0`)
    /// filesystem: those stay as made (the VM test of the agent fills one).
    fn make(args: &[&str]) -> Option<Made> {
        let mkfs = tool("mkfs.xfs")?;
        tool("xfs_db")?;
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let image = image_file(dir.path(), "fs.img", 320 << 20);
        run(Command::new(mkfs).args(["-q", "-f"]).args(args).arg(&image));
        if args.contains(&"crc=0") {
            return Some(Made {
                dir,
                image,
                files: Vec::new(),
            });
        }
        let files = {
            let m = LoopMount::new(&image, &dir.path().join("mnt"), "rw");
            let mut files = populate(&m.0);
            run(Command::new("cp")
                .arg("--reflink=always")
                .arg(m.0.join("big.bin"))
                .arg(m.0.join("big-reflink.bin")));
            files.push(("big-reflink.bin".to_owned(), files[1].1.clone()));
            std::fs::write(m.0.join("gone.bin"), pseudo_random(24 << 20, 5)).expect("write");
            run(&mut Command::new("sync"));
            std::fs::remove_file(m.0.join("gone.bin")).expect("delete");
            files
        };
        Some(Made { dir, image, files })
    }

    /// Every block `xfs_db` does not list in the free-space B-trees, as byte ranges.
    fn used_said(image: &Path) -> Extents {
        let db = |cmds: &[&str]| {
            let mut cmd = Command::new(tool("xfs_db").expect("xfs_db"));
            cmd.arg("-r");
            for c in cmds {
                cmd.args(["-c", c]);
            }
            String::from_utf8_lossy(&run(cmd.arg(image)).stdout).into_owned()
        };
        let sb = db(&["sb 0", "p agblocks blocksize dblocks"]);
        let field = |name: &str| -> u64 {
            sb.lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .trim()
                        .strip_prefix('=')?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or_else(|| panic!("{name} in {sb}"))
        };
        let (agblocks, bs, dblocks) = (field("agblocks"), field("blocksize"), field("dblocks"));
        let mut used = Extents::full(dblocks * bs);
        let mut listed = 0;
        for line in db(&["freesp -d"]).lines() {
            let f: Vec<u64> = line
                .split_whitespace()
                .map_while(|w| w.parse().ok())
                .collect();
            // The per-extent lines: agno agbno len (the histogram after has five columns).
            if let [agno, agbno, len] = f[..] {
                used.remove((agno * agblocks + agbno) * bs, len * bs);
                listed += 1;
            }
        }
        assert!(listed > 0, "xfs_db listed no free extent");
        used
    }

    fn verify(made: &Made) {
        let vol = open(&made.image);
        let found = detect(&vol).expect("detect").expect("recognised");
        assert_eq!(found.info.fs_type, "xfs");
        let data: u64 = made.files.iter().map(|(_, d)| d.len() as u64).sum();
        assert!(found.used.total() >= data / 2, "{:?}", found.info);
        assert!(
            found.used.total() < found.info.fs_size / 4,
            "{:?}",
            found.info
        );
        assert_covers(&found.used, &used_said(&made.image), "xfs_db freesp");
        let copy = checked_copy(made, &found.used, &["xfs_repair", "-n"]);
        if made.files.is_empty() {
            return;
        }
        let m = LoopMount::new(&copy, &made.dir.path().join("copy-mnt"), "ro,norecovery");
        for (rel, want) in &made.files {
            let got = std::fs::read(m.0.join(rel)).unwrap_or_default();
            assert!(got == *want, "{rel} differs after the used-only copy");
        }
    }

    #[test]
    fn unchanged_file_data_is_every_written_extent_the_kernel_reports() {
        let Some(made) = make(&[]) else {
            return;
        };
        let vol = open(&made.image);
        let base = History::default();
        let named = XfsReader
            .unchanged_since(&vol, i64::MAX, &base)
            .expect("scan")
            .expect("xfs tracks changes")
            .ranges;
        let want = written_file_extents(&made.image, &made.dir.path().join("fiemap"));
        assert_eq!(named, want, "named vs the kernel's file extents");
        let older = XfsReader.unchanged_since(&vol, 0, &base).expect("scan");
        assert!(older.expect("xfs").ranges.is_empty());
    }

    #[test]
    fn xfs_v5_with_reflink_and_v4_cover_what_xfs_db_calls_used() {
        for args in [&["-m", "reflink=1"][..], &["-m", "crc=0"][..]] {
            let Some(made) = make(args) else {
                return;
            };
            verify(&made);
        }
    }

    #[test]
    fn other_content_is_not_xfs() {
        assert!(XfsReader
            .probe(&vec![0u8; 1 << 20])
            .expect("zeros")
            .is_none());
        let mut bad = vec![0u8; 1 << 20];
        bad[..4].copy_from_slice(SB_MAGIC);
        assert!(matches!(
            XfsReader.probe(&bad),
            Err(FsError::Corrupt { .. })
        ));
    }

    #[test]
    fn only_superblock_rewrites_count_as_covered() {
        let op = |flags: u8, payload: &[u8]| {
            let mut v = vec![0u8; 12];
            v[4..8].copy_from_slice(&(payload.len() as u32).to_be_bytes());
            v[9] = flags;
            v.extend_from_slice(payload);
            v
        };
        let buf_item = |blkno: i64| {
            let mut f = vec![0u8; 24];
            f[0..2].copy_from_slice(&LOG_ITEM_BUF.to_ne_bytes());
            f[2..4].copy_from_slice(&2u16.to_ne_bytes());
            f[8..16].copy_from_slice(&blkno.to_ne_bytes());
            f
        };
        let tran = LOG_TRANS_MAGIC.to_ne_bytes();
        let txn = |blkno| {
            [
                op(0x01, &[]),
                op(0, &tran),
                op(0, &buf_item(blkno)),
                op(0, &[7u8; 128]),
                op(0x02, &[]),
            ]
            .concat()
        };
        assert!(only_superblock_changes(&txn(0), 5));
        assert!(!only_superblock_changes(&txn(8), 5), "another buffer");
        let mut inode = buf_item(0);
        inode[0..2].copy_from_slice(&0x123bu16.to_ne_bytes());
        let other = [op(0, &tran), op(0, &inode)].concat();
        assert!(!only_superblock_changes(&other, 2), "an inode item");
        assert!(!only_superblock_changes(&txn(0), 6), "more ops than data");
    }
}
