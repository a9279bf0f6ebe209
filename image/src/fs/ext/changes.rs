//! Which ext2/3/4 file data is unchanged since a given time (change-tracked incrementals).
//!
//! Every write, truncate, `fallocate`, hole punch, reflink or `mmap` store the kernel lets a
//! program make to a file sets the inode's change time (ctime), and no system call sets ctime
//! to a chosen value (`touch -d` sets mtime; ctime becomes now). So the blocks of a regular
//! file whose ctime is before the base image's snapshot hold what they held then. Only
//! *written* extents of extent-mapped regular files are named, with the allocated blocks
//! whose content the filesystem ignores (see [`ignored_blocks`]: inode-table tails never
//! handed out, an empty journal's log); everything else is read and hashed as in a full
//! pass: metadata, directories, the journal's superblock and other special inodes,
//! extent-tree blocks, extended-attribute blocks, unwritten (preallocated) extents, inline
//! data and files mapped by indirect blocks (ext2/3).
//!
//! A known exception: online defragmentation (`e4defrag`, `EXT4_IOC_MOVE_EXT`) moves a
//! file's blocks without changing its ctime (checked on Linux 6.1 with e2fsprogs 1.47). A
//! defragmented file can then be missed until the next full hash pass (`--full-hash-every`),
//! so run a full pass (or a new chain) after defragmenting; `docs/jobs.md` says so.
//! `shared_blocks` filesystems (blocks shared between files by deduplication) are refused.

use super::{
    inode_blocks, jbd2, le16, le32, read_at, walk_extents, GroupDesc, Superblock, BG_INODE_UNINIT,
    EXTENTS_FL, FS, INCOMPAT_RECOVER,
};
use crate::extents::Extents;
use crate::fs::FsError;
use crate::io::ReadAt;

/// `s_feature_ro_compat` `shared_blocks`: one block may belong to several files.
const RO_SHARED_BLOCKS: u32 = 0x4000;
/// Inode flag: the file's data lives inside the inode.
const INLINE_DATA_FL: u32 = 0x1000_0000;
/// `i_mode` type bits of a regular file.
const S_IFREG: u16 = 0x8000;

/// How this module finds unchanged data, for reports.
pub(super) const SOURCE: &str = "inode change times";

/// Byte ranges holding only written data of regular files whose ctime is before `since`.
pub(super) fn unchanged_since(vol: &dyn ReadAt, since: i64) -> Result<Extents, FsError> {
    let sb = Superblock::read(vol)?
        .ok_or_else(|| FsError::corrupt(FS, "the superblock magic is gone"))?;
    sb.check_features()?;
    if sb.ro_compat & RO_SHARED_BLOCKS != 0 {
        return Err(FsError::unsupported(FS, "shared_blocks"));
    }
    let descs = super::read_descriptors(vol, &sb)?;
    let inode_size = usize::try_from(sb.inode_size).unwrap_or(usize::MAX);
    let block_size = usize::try_from(sb.block_size).unwrap_or(usize::MAX);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut bitmap = vec![0u8; block_size];
    let mut table = Vec::new();
    for (group, d) in (0u64..).zip(&descs) {
        let in_table = inodes_handed_out(&sb, d);
        if in_table == 0 {
            continue;
        }
        read_at(vol, FS, &mut bitmap, d.inode_bitmap * sb.block_size)?;
        let len = usize::try_from(in_table * sb.inode_size).unwrap_or(usize::MAX);
        table.resize(len, 0);
        read_at(vol, FS, &mut table, d.inode_table * sb.block_size)?;
        for (i, inode) in (0u64..).zip(table.chunks_exact(inode_size)) {
            let ino = group * sb.inodes_per_group + i + 1;
            let in_use = bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0;
            if !in_use || ino < sb.first_ino || !unchanged_file(inode, since) {
                continue;
            }
            let mut bad = None;
            walk_extents(vol, &sb, &inode[0x28..0x28 + 60], 5, &mut |e| {
                if e.unwritten || e.len == 0 {
                    return;
                }
                match e.start.checked_add(e.len) {
                    Some(end) if e.start > sb.first_data_block && end <= sb.blocks_count => {
                        ranges.push((e.start * sb.block_size, end * sb.block_size));
                    }
                    _ => bad = Some(e.start),
                }
            })
            .map_err(|e| match e {
                FsError::Corrupt { detail, .. } => {
                    FsError::corrupt(FS, format!("inode {ino}: {detail}"))
                }
                other => other,
            })?;
            if let Some(start) = bad {
                return Err(FsError::corrupt(
                    FS,
                    format!("inode {ino} maps blocks outside the filesystem (from {start})"),
                ));
            }
        }
    }
    for (s, e) in ignored_blocks(vol, &sb, &descs)? {
        ranges.push((s * sb.block_size, e * sb.block_size));
    }
    ranges.sort_unstable();
    let mut out = Extents::new();
    for (s, e) in ranges {
        out.add(s, e - s);
    }
    Ok(out)
}

/// Inodes at the front of group `d`'s table that were ever handed out: past `itable_unused`
/// none was (and the table may never have been zeroed there).
fn inodes_handed_out(sb: &Superblock, d: &GroupDesc) -> u64 {
    if !sb.uninit_allowed() {
        sb.inodes_per_group
    } else if d.flags & BG_INODE_UNINIT != 0 {
        0
    } else {
        sb.inodes_per_group.saturating_sub(d.itable_unused)
    }
}

/// Allocated blocks, as `[start, end)` block ranges, whose content the filesystem ignores
/// until it writes them again, so the base image's copy restores as well as today's:
///
/// - inode-table blocks wholly past a group's `itable_unused` mark (the kernel zeroes a new
///   inode in memory before it first writes it; e2fsck skips them when descriptors are
///   checksummed, which is when the mark is honoured);
/// - when the log is empty (`s_start` 0, as a freeze leaves it), every journal block but the
///   journal superblock: mounting and e2fsck replay nothing, and the kernel's next
///   transaction starts a new sequence the stale blocks cannot continue.
///
/// None while the filesystem needs recovery: its journal may log any of them. Neither
/// holds beyond a mount count change (e2fsck can move the mark back, tune2fs can make a new
/// journal), which `changes::plan` answers with a full hash pass.
fn ignored_blocks(
    vol: &dyn ReadAt,
    sb: &Superblock,
    descs: &[GroupDesc],
) -> Result<Vec<(u64, u64)>, FsError> {
    let mut out = Vec::new();
    if sb.incompat & INCOMPAT_RECOVER != 0 {
        return Ok(out);
    }
    let table = sb.inode_table_blocks();
    for d in descs {
        let front = (inodes_handed_out(sb, d) * sb.inode_size).div_ceil(sb.block_size);
        if front < table {
            out.push((d.inode_table + front, d.inode_table + table));
        }
    }
    if sb.journal_inum != 0 {
        let log = inode_blocks(vol, sb, descs, sb.journal_inum)?;
        let Some(&first) = log.first().filter(|&&b| b != 0 && b < sb.blocks_count) else {
            return Err(FsError::corrupt(FS, "the journal superblock is not mapped"));
        };
        let mut head = vec![0u8; usize::try_from(sb.block_size).unwrap_or(usize::MAX)];
        read_at(vol, FS, &mut head, first * sb.block_size)?;
        if jbd2::is_empty(&head)? {
            for &b in log.iter().skip(1) {
                if b == 0 || b >= sb.blocks_count {
                    continue;
                }
                match out.last_mut() {
                    Some(last) if last.1 == b => last.1 = b + 1,
                    _ => out.push((b, b + 1)),
                }
            }
        }
    }
    Ok(out)
}

/// Whether `inode` is an extent-mapped regular file in use whose ctime is before `since`.
fn unchanged_file(inode: &[u8], since: i64) -> bool {
    let mode = le16(inode, 0x0);
    let flags = le32(inode, 0x20);
    mode & 0xF000 == S_IFREG
        && le16(inode, 0x1A) != 0
        && flags & EXTENTS_FL != 0
        && flags & INLINE_DATA_FL == 0
        && change_time(inode) < since
}

/// The inode's ctime in Unix seconds: the 32-bit field, widened by the epoch bits of
/// `i_ctime_extra` when the inode is large enough to hold them.
fn change_time(inode: &[u8]) -> i64 {
    let low = i64::from(le32(inode, 0x0C) as i32);
    let extra_fits = inode.len() > 0x88 && 0x80 + usize::from(le16(inode, 0x80)) >= 0x88;
    if extra_fits {
        low + (i64::from(le32(inode, 0x84) & 3) << 32)
    } else {
        low
    }
}
