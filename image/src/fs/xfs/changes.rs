//! Which XFS file data is unchanged since a given time (change-tracked incrementals).
//!
//! The rule is ext's (`fs/ext/changes.rs`): every change the kernel lets a program make to a
//! file's data or block map sets its inode's change time, so the *written* extents of a
//! regular file whose ctime is before the base's snapshot hold what they held then. The
//! inodes are found through each allocation group's inode B-tree (AGI → `IABT`/`IAB3`), in
//! chunks of 64 (sparse chunks' holes skipped); an inode whose CRC does not match (v5) is
//! not named, nor is anything that is not a regular file's data fork of written extents:
//! metadata, directories, the log, attribute forks, B-tree blocks, unwritten extents and
//! realtime files are read and hashed as always. Blocks shared by reflinked files are named
//! through an unchanged owner: copy-on-write moves a changed owner to new blocks, and
//! deduplication only shares blocks holding the same bytes.
//!
//! A known exception, as for ext4: `xfs_fsr` (online defragmentation) swaps a file's
//! extents; a full hash pass or a new chain after running it is the safe course.

use super::{be16, be32, be64, crc_matches, read_at, AgTree, Superblock, FS};
use crate::extents::Extents;
use crate::fs::FsError;
use crate::io::ReadAt;

const AGI_MAGIC: &[u8; 4] = b"XAGI";
const INOBT_MAGIC_V4: &[u8; 4] = b"IABT";
const INOBT_MAGIC_V5: &[u8; 4] = b"IAB3";
const BMAP_MAGIC_V4: &[u8; 4] = b"BMAP";
const BMAP_MAGIC_V5: &[u8; 4] = b"BMA3";
/// `sb_features_incompat`: sparse inode chunks (records carry a hole mask).
const INCOMPAT_SPINODES: u32 = 0x2;
/// `di_flags`: the file's data is on the realtime device.
const DIFLAG_REALTIME: u16 = 0x1;
/// `di_flags2`: timestamps are 64-bit nanosecond counters.
const DIFLAG2_BIGTIME: u64 = 1 << 3;
/// `di_flags2`: the extent count is the 64-bit field.
const DIFLAG2_NREXT64: u64 = 1 << 4;
/// Inode CRC offset (v3 inodes).
const INODE_CRC: usize = 100;
/// Where a long-form (bmap) B-tree block's CRC is (v5).
const BMAP_CRC: usize = 64;
/// Bigtime counts nanoseconds from this many seconds before the Unix epoch.
const BIGTIME_EPOCH_OFFSET: i64 = 1 << 31;
/// Extents bigger than this are damage, not data (2^21 - 1 blocks per record).
const MAX_RECORD_BLOCKS: u64 = (1 << 21) - 1;
/// The deepest block-map tree worth following.
const MAX_BMAP_LEVELS: u16 = 10;

/// How this module finds unchanged data, for reports.
pub(super) const SOURCE: &str = "inode change times";

/// Byte ranges holding only written data of regular files whose ctime is before `since`.
pub(super) fn unchanged_since(vol: &dyn ReadAt, since: i64) -> Result<Extents, FsError> {
    let sb =
        Superblock::read(vol)?.ok_or_else(|| FsError::corrupt(FS, "the superblock vanished"))?;
    sb.check_features()?;
    super::check_log_clean(vol, &sb)?;
    let mut ranges = Vec::new();
    let bs = sb.block_size as usize;
    let mut chunk = Vec::new();
    for agno in 0..sb.ag_count {
        for rec in inode_records(vol, &sb, agno)? {
            // 64 inodes from `start`, in whole blocks (a chunk is at least one block).
            let per_block = 1u32 << sb.inopb_log;
            let blocks = (64 / per_block).max(1);
            let agbno = rec.start >> sb.inopb_log;
            chunk.resize(blocks as usize * bs, 0);
            read_at(vol, FS, &mut chunk, sb.ag_byte(agno, agbno))?;
            let first = rec.start & (per_block - 1);
            for i in 0..64u32 {
                let hole = rec.holes & (1 << (i / 4)) != 0;
                let free = rec.free & (1 << i) != 0;
                let at = ((first + i) as usize) * usize::from(sb.inode_size);
                let Some(inode) = chunk.get(at..at + usize::from(sb.inode_size)) else {
                    break;
                };
                if hole || free || !unchanged_file(&sb, inode, since) {
                    continue;
                }
                data_extents(vol, &sb, inode, &mut ranges)?;
            }
        }
    }
    ranges.sort_unstable();
    let mut out = Extents::new();
    for (s, e) in ranges {
        out.add(s, e - s);
    }
    Ok(out)
}

/// One inode B-tree record: 64 inodes from AG inode `start`; bit `i` of `free` set when
/// inode `i` is free, bit `i / 4` of `holes` set when it is not allocated at all.
struct InodeRecord {
    start: u32,
    holes: u16,
    free: u64,
}

/// Every record of AG `agno`'s inode B-tree.
fn inode_records(
    vol: &dyn ReadAt,
    sb: &Superblock,
    agno: u32,
) -> Result<Vec<InodeRecord>, FsError> {
    let mut sector = vec![0u8; usize::from(sb.sector_size)];
    read_at(
        vol,
        FS,
        &mut sector,
        sb.ag_byte(agno, 0) + 2 * u64::from(sb.sector_size),
    )?;
    if &sector[0..4] != AGI_MAGIC || be32(&sector, 8) != agno {
        return Err(FsError::corrupt(
            FS,
            format!("the inode header (AGI) of allocation group {agno}"),
        ));
    }
    let v5 = sb.version == 5;
    let tree = AgTree {
        name: "inode",
        magic: if v5 { INOBT_MAGIC_V5 } else { INOBT_MAGIC_V4 },
        key_len: 4,
        rec_len: 16,
    };
    let sparse = sb.incompat & INCOMPAT_SPINODES != 0 && v5;
    let mut out = Vec::new();
    let (root, levels) = (be32(&sector, 20), be32(&sector, 24));
    tree.walk(vol, sb, agno, sb.ag_blocks, root, levels, &mut |rec| {
        out.push(InodeRecord {
            start: be32(rec, 0),
            holes: if sparse { be16(rec, 4) } else { 0 },
            free: be64(rec, 8),
        });
        Ok(())
    })?;
    Ok(out)
}

/// Whether `inode` is a sound regular file, not realtime, whose ctime is before `since`.
fn unchanged_file(sb: &Superblock, inode: &[u8], since: i64) -> bool {
    let v3 = inode.get(4) == Some(&3);
    let sound = &inode[0..2] == b"IN" && (!v3 || crc_matches(inode, INODE_CRC));
    let regular = be16(inode, 2) & 0o170000 == 0o100000;
    sound && regular && be16(inode, 90) & DIFLAG_REALTIME == 0 && change_time(sb, inode) < since
}

/// The inode's ctime in Unix seconds.
fn change_time(sb: &Superblock, inode: &[u8]) -> i64 {
    let flags2 = if inode[4] == 3 { be64(inode, 120) } else { 0 };
    if sb.version == 5 && flags2 & DIFLAG2_BIGTIME != 0 {
        (be64(inode, 48) / 1_000_000_000) as i64 - BIGTIME_EPOCH_OFFSET
    } else {
        i64::from(be32(inode, 48) as i32)
    }
}

/// Add the byte ranges of `inode`'s written data extents to `ranges`.
fn data_extents(
    vol: &dyn ReadAt,
    sb: &Superblock,
    inode: &[u8],
    ranges: &mut Vec<(u64, u64)>,
) -> Result<(), FsError> {
    let core = if inode[4] == 3 { 176 } else { 100 };
    let fork_off = usize::from(inode[82]) * 8;
    let fork_len = if fork_off == 0 {
        inode.len() - core
    } else {
        fork_off
    };
    let Some(fork) = inode.get(core..core + fork_len) else {
        return Err(FsError::corrupt(
            FS,
            "an inode's attribute fork offset is past its end",
        ));
    };
    match inode[5] {
        // Extent list in the inode.
        2 => {
            let flags2 = if inode[4] == 3 { be64(inode, 120) } else { 0 };
            let count = if flags2 & DIFLAG2_NREXT64 != 0 {
                be64(inode, 24)
            } else {
                u64::from(be32(inode, 76))
            };
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            if count.saturating_mul(16) > fork.len() {
                return Err(FsError::corrupt(
                    FS,
                    "an inode claims more extents than fit in it",
                ));
            }
            extent_records(sb, &fork[..count * 16], ranges)
        }
        // B-tree root in the inode.
        3 => {
            let (level, numrecs) = (be16(fork, 0), usize::from(be16(fork, 2)));
            let maxrecs = (fork.len() - 4) / 16;
            if level == 0 || level > MAX_BMAP_LEVELS || numrecs > maxrecs {
                return Err(FsError::corrupt(
                    FS,
                    "an inode's block-map tree root is damaged",
                ));
            }
            let ptrs = 4 + maxrecs * 8;
            for i in 0..numrecs {
                bmap_block(vol, sb, be64(fork, ptrs + i * 8), level - 1, ranges)?;
            }
            Ok(())
        }
        // Local (data inside the inode), device numbers: no data blocks.
        _ => Ok(()),
    }
}

/// Add the written extents under the block-map tree block at filesystem block `fsb`.
fn bmap_block(
    vol: &dyn ReadAt,
    sb: &Superblock,
    fsb: u64,
    level: u16,
    ranges: &mut Vec<(u64, u64)>,
) -> Result<(), FsError> {
    let at = sb.fsb_byte(fsb).ok_or_else(|| {
        FsError::corrupt(FS, "a block-map tree pointer is outside the filesystem")
    })?;
    let bs = sb.block_size as usize;
    let mut block = vec![0u8; bs];
    read_at(vol, FS, &mut block, at)?;
    let v5 = sb.version == 5;
    let (magic, header) = if v5 {
        (BMAP_MAGIC_V5, 72)
    } else {
        (BMAP_MAGIC_V4, 24)
    };
    let numrecs = usize::from(be16(&block, 6));
    if &block[0..4] != magic || be16(&block, 4) != level || (v5 && !crc_matches(&block, BMAP_CRC)) {
        return Err(FsError::corrupt(FS, "a block-map tree block is damaged"));
    }
    if level == 0 {
        let end = header + numrecs * 16;
        let records = block
            .get(header..end)
            .ok_or_else(|| FsError::corrupt(FS, "a block-map leaf is damaged"))?;
        return extent_records(sb, records, ranges);
    }
    let maxrecs = (bs - header) / 16;
    if numrecs > maxrecs {
        return Err(FsError::corrupt(FS, "a block-map node is damaged"));
    }
    let ptrs = header + maxrecs * 8;
    for i in 0..numrecs {
        bmap_block(vol, sb, be64(&block, ptrs + i * 8), level - 1, ranges)?;
    }
    Ok(())
}

/// Add the written extents among the 16-byte packed extent records `records`.
fn extent_records(
    sb: &Superblock,
    records: &[u8],
    ranges: &mut Vec<(u64, u64)>,
) -> Result<(), FsError> {
    for r in records.chunks_exact(16) {
        let (l0, l1) = (be64(r, 0), be64(r, 8));
        let unwritten = l0 >> 63 != 0;
        let start = ((l0 & 0x1ff) << 43) | (l1 >> 21);
        let count = l1 & MAX_RECORD_BLOCKS;
        if unwritten || count == 0 {
            continue;
        }
        // An extent lies inside one allocation group: both ends must map, in the same one.
        let last = start + count - 1;
        let same_ag = start >> sb.ag_blk_log == last >> sb.ag_blk_log;
        let (Some(first), Some(_), true) = (sb.fsb_byte(start), sb.fsb_byte(last), same_ag) else {
            return Err(FsError::corrupt(
                FS,
                "a file extent is outside the filesystem",
            ));
        };
        ranges.push((first, first + sb.bytes(count)));
    }
    Ok(())
}
