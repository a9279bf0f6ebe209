//! ext2, ext3 and ext4: used blocks from the block group bitmaps.
//!
//! The superblock sits at byte 1024 (magic `0xEF53` at offset `0x38`). The volume is split
//! into block groups; each group descriptor names the group's block bitmap (one bit per
//! block, set = used), inode bitmap and inode table. The used set is:
//!
//! - the boot block, primary superblock, group descriptor table (GDT) and reserved GDT blocks;
//! - every group's superblock backup + GDT + reserved GDT copy, where one exists
//!   (`sparse_super`: groups 0, 1 and powers of 3, 5, 7; `sparse_super2`: the two groups the
//!   superblock names; neither: every group);
//! - every group's block bitmap, inode bitmap and inode table, wherever they live
//!   (`flex_bg` packs them into the first group of each flex group);
//! - the MMP block (`mmp`);
//! - for groups whose bitmap is initialised, every block whose bit is set. The journal,
//!   the resize inode and all file data are found this way.
//!
//! With `uninit_bg` (`gdt_csum`) or `metadata_csum`, a group flagged `BLOCK_UNINIT` has no
//! bitmap on disk: nothing in it is allocated beyond the metadata listed above.
//!
//! # Features
//!
//! Incompatible features (`s_feature_incompat`):
//!
//! | feature | bit | handling |
//! |---|---|---|
//! | `compression` | 0x1 | refused: the allocation rules of the e2compr patches are unknown here |
//! | `filetype`, `extent`, `ea_inode`, `dirdata`, `csum_seed`, `large_dir`, `inline_data`, `encrypt`, `casefold` | 0x2, 0x40, 0x400, 0x1000, 0x2000, 0x4000, 0x8000, 0x10000, 0x20000 | supported: they change what is inside blocks, not which blocks are allocated |
//! | `needs_recovery` | 0x4 | supported: the journal (a snapshot or copy of a mounted filesystem) may hold allocations the on-disk bitmaps lack, so every copy of a block bitmap it logs is added (`jbd2.rs`); the journal itself is imaged, and the restored filesystem replays it when mounted or checked |
//! | `journal_dev` | 0x8 | refused: an external journal device is not a filesystem |
//! | `meta_bg` | 0x10 | refused: group descriptors are scattered through the volume |
//! | `64bit` | 0x80 | supported: 64-bit block numbers and `s_desc_size` descriptors |
//! | `mmp` | 0x100 | supported: the MMP block is marked used |
//! | `flex_bg` | 0x200 | supported: metadata is located through the descriptors |
//! | any other bit | | refused |
//!
//! Read-only compatible features (`s_feature_ro_compat`), which may change how allocation
//! is recorded:
//!
//! | feature | bit | handling |
//! |---|---|---|
//! | `sparse_super`, `large_file`, `btree_dir`, `huge_file`, `gdt_csum`, `dir_nlink`, `extra_isize`, `quota`, `metadata_csum`, `readonly`, `project`, `shared_blocks`, `verity`, `orphan_present` | 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x100, 0x400, 0x1000, 0x2000, 0x4000, 0x8000, 0x10000 | supported |
//! | `snapshot` | 0x80 | refused: next3 snapshots keep blocks outside the bitmap |
//! | `bigalloc` | 0x200 | refused: bitmap bits are clusters, not blocks |
//! | `replica` | 0x800 | refused: unknown on-disk effect |
//! | any other bit | | refused |
//!
//! Compatible features (`s_feature_compat`) never change allocation by definition; only
//! `sparse_super2` (0x200) matters, for where superblock backups live.
//!
//! With `metadata_csum` the superblock checksum is verified. Group descriptor and bitmap
//! checksums are not: a damaged descriptor is caught only by range checks.

use super::{
    bitmap_runs, jbd2, le16, le32, padded_text, read_at, FilesystemReader, FsError, FsInfo,
    History, Unchanged,
};
use crate::extents::Extents;
use crate::io::ReadAt;

mod changes;

const FS: &str = "ext";
const SB_OFFSET: u64 = 1024;
const SB_SIZE: usize = 1024;
const MAGIC: u16 = 0xEF53;

// s_feature_compat
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;

// s_feature_incompat
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_MMP: u32 = 0x100;
/// Incompatible features that do not change which blocks are allocated.
const INCOMPAT_SUPPORTED: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | 0x40 // extent
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | 0x200 // flex_bg
    | 0x400 // ea_inode
    | 0x1000 // dirdata
    | 0x2000 // csum_seed
    | 0x4000 // large_dir
    | 0x8000 // inline_data
    | 0x1_0000 // encrypt
    | 0x2_0000; // casefold
/// Named refusals; any other unsupported bit is reported by number.
const INCOMPAT_REFUSED: &[(u32, &str)] = &[
    (0x1, "compression"),
    (
        INCOMPAT_JOURNAL_DEV,
        "journal_dev (an external journal device)",
    ),
    (INCOMPAT_META_BG, "meta_bg"),
];

// s_feature_ro_compat
const RO_SPARSE_SUPER: u32 = 0x1;
const RO_GDT_CSUM: u32 = 0x10;
const RO_BIGALLOC: u32 = 0x200;
const RO_METADATA_CSUM: u32 = 0x400;
const RO_SUPPORTED: u32 = RO_SPARSE_SUPER
    | 0x2 // large_file
    | 0x4 // btree_dir
    | 0x8 // huge_file
    | RO_GDT_CSUM
    | 0x20 // dir_nlink
    | 0x40 // extra_isize
    | 0x100 // quota
    | RO_METADATA_CSUM
    | 0x1000 // readonly
    | 0x2000 // project
    | 0x4000 // shared_blocks
    | 0x8000 // verity
    | 0x1_0000; // orphan_present
const RO_REFUSED: &[(u32, &str)] = &[
    (0x80, "snapshot"),
    (RO_BIGALLOC, "bigalloc"),
    (0x800, "replica"),
];

// What ext3 already had; anything beyond makes it ext4 (as blkid decides).
const EXT3_INCOMPAT: u32 = INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG;
const EXT3_RO_COMPAT: u32 = RO_SPARSE_SUPER | 0x2 | 0x4;

/// Group descriptor flag: the inode table and bitmap are not initialised (no inode in use).
const BG_INODE_UNINIT: u16 = 0x1;
/// Group descriptor flag: the block bitmap is not initialised.
const BG_BLOCK_UNINIT: u16 = 0x2;

/// Bitmap reads are batched up to this size when bitmaps are contiguous (`flex_bg`).
const BATCH_BYTES: u64 = 1 << 20;

/// Reads ext2, ext3 and ext4 volumes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtReader;

/// The superblock fields allocation depends on, validated.
#[derive(Debug)]
struct Superblock {
    block_size: u64,
    blocks_count: u64,
    free_blocks: u64,
    first_data_block: u64,
    /// The block holding the primary superblock; the GDT follows it.
    sb_block: u64,
    blocks_per_group: u64,
    inodes_per_group: u64,
    inode_size: u64,
    /// The journal's inode (0: none).
    journal_inum: u64,
    /// The first inode that can belong to a user's file (11 before revision 1).
    first_ino: u64,
    /// Mounts since the last check (`s_mnt_count`).
    mount_count: u16,
    groups: u64,
    desc_size: u64,
    gdt_blocks: u64,
    reserved_gdt_blocks: u64,
    compat: u32,
    incompat: u32,
    ro_compat: u32,
    backup_bgs: [u32; 2],
    mmp_block: u64,
    uuid: [u8; 16],
    label: Option<String>,
}

impl Superblock {
    /// Read the primary superblock; `None` when the magic is absent.
    fn read(vol: &dyn ReadAt) -> Result<Option<Self>, FsError> {
        if vol.size() < SB_OFFSET + SB_SIZE as u64 {
            return Ok(None);
        }
        let mut raw = [0u8; SB_SIZE];
        read_at(vol, FS, &mut raw, SB_OFFSET)?;
        Self::parse(&raw)
    }

    fn parse(sb: &[u8; SB_SIZE]) -> Result<Option<Self>, FsError> {
        if le16(sb, 0x38) != MAGIC {
            return Ok(None);
        }
        let compat = le32(sb, 0x5C);
        let incompat = le32(sb, 0x60);
        let ro_compat = le32(sb, 0x64);

        if ro_compat & RO_METADATA_CSUM != 0 {
            // crc32c without the final inversion, as the kernel computes it.
            let want = le32(sb, 0x3FC);
            let got = !crc32c::crc32c(&sb[..0x3FC]);
            if want != got {
                return Err(FsError::corrupt(
                    FS,
                    format!(
                        "superblock checksum mismatch (stored {want:#010x}, computed {got:#010x})"
                    ),
                ));
            }
        }

        let log_block = le32(sb, 0x18);
        if log_block > 6 {
            return Err(FsError::corrupt(
                FS,
                format!("block size 1024 << {log_block} is out of range"),
            ));
        }
        let block_size = 1024u64 << log_block;
        let is_64bit = incompat & INCOMPAT_64BIT != 0;
        let hi = |at: usize| {
            if is_64bit {
                u64::from(le32(sb, at)) << 32
            } else {
                0
            }
        };
        let blocks_count = u64::from(le32(sb, 0x4)) | hi(0x150);
        let free_blocks = u64::from(le32(sb, 0xC)) | hi(0x158);
        let first_data_block = u64::from(le32(sb, 0x14));
        let blocks_per_group = u64::from(le32(sb, 0x20));
        let inodes_per_group = u64::from(le32(sb, 0x28));

        // The superblock is at byte 1024: block 1 with 1 KiB blocks, inside block 0 otherwise.
        // Group 0 starts at or before it (bigalloc puts it at 0 even with 1 KiB blocks).
        let sb_block = SB_OFFSET / block_size;
        if first_data_block > sb_block {
            return Err(FsError::corrupt(
                FS,
                format!(
                "first data block is {first_data_block}, past the superblock in block {sb_block}"
            ),
            ));
        }
        if blocks_count <= first_data_block {
            return Err(FsError::corrupt(
                FS,
                format!("block count {blocks_count} is too small"),
            ));
        }
        // With bigalloc a bitmap bit is a cluster, so a group holds more blocks than bits.
        let cluster_ratio = if ro_compat & RO_BIGALLOC != 0 {
            1u64 << le32(sb, 0x1C).saturating_sub(log_block).min(16)
        } else {
            1
        };
        let max_per_group = 8 * block_size * cluster_ratio;
        if blocks_per_group == 0 || blocks_per_group > max_per_group || blocks_per_group % 8 != 0 {
            return Err(FsError::corrupt(
                FS,
                format!("{blocks_per_group} blocks per group"),
            ));
        }
        if inodes_per_group == 0 || inodes_per_group > 8 * block_size {
            return Err(FsError::corrupt(
                FS,
                format!("{inodes_per_group} inodes per group"),
            ));
        }
        let inode_size = if le32(sb, 0x4C) == 0 {
            128
        } else {
            u64::from(le16(sb, 0x58))
        };
        if !inode_size.is_power_of_two() || inode_size < 128 || inode_size > block_size {
            return Err(FsError::corrupt(FS, format!("inode size {inode_size}")));
        }
        let desc_size = if is_64bit {
            u64::from(le16(sb, 0xFE))
        } else {
            32
        };
        if !desc_size.is_power_of_two() || desc_size < 32 || desc_size > block_size.min(1024) {
            return Err(FsError::corrupt(
                FS,
                format!("group descriptor size {desc_size}"),
            ));
        }
        if is_64bit && desc_size < 64 {
            return Err(FsError::corrupt(
                FS,
                format!("64bit filesystem with {desc_size}-byte descriptors"),
            ));
        }
        if blocks_count.checked_mul(block_size).is_none() {
            return Err(FsError::corrupt(
                FS,
                format!("block count {blocks_count} is too large"),
            ));
        }
        let groups = (blocks_count - first_data_block).div_ceil(blocks_per_group);
        // Group numbers are 32-bit on disk.
        if groups > u64::from(u32::MAX) {
            return Err(FsError::corrupt(FS, format!("{groups} block groups")));
        }
        let gdt_blocks = (groups * desc_size).div_ceil(block_size);
        let reserved_gdt_blocks = u64::from(le16(sb, 0xCE));
        // Group 0 must hold its superblock, GDT and reserved GDT.
        if 1 + gdt_blocks + reserved_gdt_blocks > blocks_per_group {
            return Err(FsError::corrupt(FS, format!(
                "{gdt_blocks} GDT blocks and {reserved_gdt_blocks} reserved GDT blocks do not fit in a group"
            )));
        }

        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&sb[0x68..0x78]);
        Ok(Some(Self {
            block_size,
            blocks_count,
            free_blocks,
            first_data_block,
            sb_block,
            blocks_per_group,
            inodes_per_group,
            inode_size,
            first_ino: if le32(sb, 0x4C) == 0 {
                11
            } else {
                u64::from(le32(sb, 0x54))
            },
            mount_count: le16(sb, 0x34),
            journal_inum: if compat & COMPAT_HAS_JOURNAL != 0 {
                u64::from(le32(sb, 0xE0))
            } else {
                0
            },
            groups,
            desc_size,
            gdt_blocks,
            reserved_gdt_blocks,
            compat,
            incompat,
            ro_compat,
            backup_bgs: [le32(sb, 0x24C), le32(sb, 0x250)],
            mmp_block: u64::from(le32(sb, 0x168)) | u64::from(le32(sb, 0x16C)) << 32,
            uuid,
            label: padded_text(&sb[0x78..0x88]),
        }))
    }

    /// "ext2", "ext3" or "ext4", decided as blkid does.
    fn fs_type(&self) -> &'static str {
        let beyond_ext3 =
            self.incompat & !EXT3_INCOMPAT != 0 || self.ro_compat & !EXT3_RO_COMPAT != 0;
        if beyond_ext3 {
            "ext4"
        } else if self.compat & COMPAT_HAS_JOURNAL != 0 {
            "ext3"
        } else {
            "ext2"
        }
    }

    /// Refuse features whose effect on allocation is not understood here.
    fn check_features(&self) -> Result<(), FsError> {
        let named = |bits: u32, table: &[(u32, &str)], kind: &str| -> Result<(), FsError> {
            if bits == 0 {
                return Ok(());
            }
            let names: Vec<String> = table
                .iter()
                .filter(|(bit, _)| bits & bit != 0)
                .map(|(_, name)| (*name).to_string())
                .collect();
            let known = table.iter().fold(0, |acc, (bit, _)| acc | bit);
            let mut list = names;
            if bits & !known != 0 {
                list.push(format!("unknown {kind} features {:#x}", bits & !known));
            }
            Err(FsError::unsupported(FS, list.join(", ")))
        };
        named(
            self.incompat & !INCOMPAT_SUPPORTED,
            INCOMPAT_REFUSED,
            "incompatible",
        )?;
        named(
            self.ro_compat & !RO_SUPPORTED,
            RO_REFUSED,
            "read-only compatible",
        )
    }

    fn uuid_text(&self) -> Option<String> {
        (self.uuid != [0; 16]).then(|| super::uuid_text(&self.uuid))
    }

    fn group_start(&self, group: u64) -> u64 {
        self.first_data_block + group * self.blocks_per_group
    }

    /// Blocks in `group`; the last group may be partial.
    fn group_blocks(&self, group: u64) -> u64 {
        self.blocks_per_group
            .min(self.blocks_count - self.group_start(group))
    }

    /// Whether `group` holds a superblock backup and GDT copy.
    fn has_backup(&self, group: u64) -> bool {
        if group == 0 {
            return true;
        }
        if self.compat & COMPAT_SPARSE_SUPER2 != 0 {
            return self
                .backup_bgs
                .iter()
                .any(|&g| g != 0 && u64::from(g) == group);
        }
        if self.ro_compat & RO_SPARSE_SUPER == 0 {
            return true;
        }
        group == 1 || [3, 5, 7].iter().any(|&base| is_power_of(group, base))
    }

    /// Whether `BLOCK_UNINIT` is honoured (the kernel ignores it without checksums).
    fn uninit_allowed(&self) -> bool {
        self.ro_compat & (RO_GDT_CSUM | RO_METADATA_CSUM) != 0
    }

    fn inode_table_blocks(&self) -> u64 {
        (self.inodes_per_group * self.inode_size).div_ceil(self.block_size)
    }
}

fn is_power_of(mut n: u64, base: u64) -> bool {
    while n > 1 && n.is_multiple_of(base) {
        n /= base;
    }
    n == 1
}

/// The parts of a group descriptor allocation depends on.
struct GroupDesc {
    block_bitmap: u64,
    inode_bitmap: u64,
    inode_table: u64,
    flags: u16,
    /// Inodes at the end of the group's table never used (`bg_itable_unused`).
    itable_unused: u64,
}

impl GroupDesc {
    fn parse(d: &[u8], wide: bool) -> Self {
        let loc = |lo: usize, hi: usize| {
            u64::from(le32(d, lo))
                | if wide {
                    u64::from(le32(d, hi)) << 32
                } else {
                    0
                }
        };
        Self {
            block_bitmap: loc(0x0, 0x20),
            inode_bitmap: loc(0x4, 0x24),
            inode_table: loc(0x8, 0x28),
            flags: le16(d, 0x12),
            itable_unused: u64::from(le16(d, 0x1C))
                | if wide {
                    u64::from(le16(d, 0x32)) << 16
                } else {
                    0
                },
        }
    }
}

impl FilesystemReader for ExtReader {
    fn name(&self) -> &'static str {
        FS
    }

    fn probe(&self, vol: &dyn ReadAt) -> Result<Option<FsInfo>, FsError> {
        let Some(sb) = Superblock::read(vol)? else {
            return Ok(None);
        };
        Ok(Some(FsInfo {
            fs_type: sb.fs_type().to_string(),
            label: sb.label.clone(),
            uuid: sb.uuid_text(),
            fs_size: sb.blocks_count * sb.block_size,
            // Bounded by the validation of `log_block` above.
            fs_block_size: u32::try_from(sb.block_size).unwrap_or(u32::MAX),
            used_bytes: sb.blocks_count.saturating_sub(sb.free_blocks) * sb.block_size,
        }))
    }

    fn used_extents(&self, vol: &dyn ReadAt, _info: &FsInfo) -> Result<Extents, FsError> {
        let sb = Superblock::read(vol)?
            .ok_or_else(|| FsError::corrupt(FS, "the superblock magic is gone"))?;
        sb.check_features()?;
        let fs_size = sb.blocks_count * sb.block_size;
        if fs_size > vol.size() {
            return Err(FsError::corrupt(
                FS,
                format!(
                    "the filesystem spans {fs_size} bytes but its volume has only {}",
                    vol.size()
                ),
            ));
        }
        let descs = read_descriptors(vol, &sb)?;
        let runs = used_block_runs(vol, &sb, &descs)?;
        let mut used = Extents::new();
        for (start, end) in runs {
            used.add(start * sb.block_size, (end - start) * sb.block_size);
        }
        if sb.incompat & INCOMPAT_RECOVER != 0 {
            for (start, end) in journal_bitmap_runs(vol, &sb, &descs)? {
                let end = end.min(sb.blocks_count);
                if start < end {
                    used.add(start * sb.block_size, (end - start) * sb.block_size);
                }
            }
        }
        Ok(used)
    }

    fn history(&self, vol: &dyn ReadAt) -> Result<History, FsError> {
        Ok(History {
            mount_count: Superblock::read(vol)?.map(|sb| u64::from(sb.mount_count)),
            generation: None,
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

/// Read and range-check every group descriptor.
fn read_descriptors(vol: &dyn ReadAt, sb: &Superblock) -> Result<Vec<GroupDesc>, FsError> {
    // A damaged superblock can ask for a huge table: fail cleanly rather than abort.
    let too_big = || FsError::corrupt(FS, format!("{} groups do not fit in memory", sb.groups));
    let len = usize::try_from(sb.groups * sb.desc_size).map_err(|_| too_big())?;
    let mut gdt = Vec::new();
    gdt.try_reserve_exact(len).map_err(|_| too_big())?;
    gdt.resize(len, 0);
    read_at(vol, FS, &mut gdt, (sb.sb_block + 1) * sb.block_size)?;
    let wide = sb.incompat & INCOMPAT_64BIT != 0;
    let itable_len = sb.inode_table_blocks();
    let step = usize::try_from(sb.desc_size).unwrap_or(usize::MAX);
    let mut descs = Vec::new();
    descs
        .try_reserve_exact(gdt.len() / step)
        .map_err(|_| too_big())?;
    for (group, raw) in gdt.chunks_exact(step).enumerate() {
        let d = GroupDesc::parse(raw, wide);
        let inside = |block: u64, len: u64| {
            block > sb.first_data_block
                && block
                    .checked_add(len)
                    .is_some_and(|end| end <= sb.blocks_count)
        };
        if !inside(d.block_bitmap, 1)
            || !inside(d.inode_bitmap, 1)
            || !inside(d.inode_table, itable_len)
        {
            return Err(FsError::corrupt(FS, format!(
                "group {group} descriptor points outside the filesystem (block bitmap {}, inode bitmap {}, inode table {})",
                d.block_bitmap, d.inode_bitmap, d.inode_table
            )));
        }
        descs.push(d);
    }
    Ok(descs)
}

/// Used blocks as sorted, merged `[start, end)` block ranges.
fn used_block_runs(
    vol: &dyn ReadAt,
    sb: &Superblock,
    descs: &[GroupDesc],
) -> Result<Vec<(u64, u64)>, FsError> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let backup_len = 1 + sb.gdt_blocks + sb.reserved_gdt_blocks;
    // Boot block, primary superblock, GDT and reserved GDT.
    runs.push((0, sb.sb_block + backup_len));
    let itable_len = sb.inode_table_blocks();
    for (group, d) in (0u64..).zip(descs) {
        if sb.has_backup(group) {
            let start = sb.group_start(group);
            runs.push((start, start + backup_len.min(sb.group_blocks(group))));
        }
        runs.push((d.block_bitmap, d.block_bitmap + 1));
        runs.push((d.inode_bitmap, d.inode_bitmap + 1));
        runs.push((d.inode_table, d.inode_table + itable_len));
    }
    if sb.incompat & INCOMPAT_MMP != 0 && sb.mmp_block < sb.blocks_count {
        runs.push((sb.mmp_block, sb.mmp_block + 1));
    }

    // Initialised groups: OR in the on-disk bitmap. Contiguous bitmaps (flex_bg) are read
    // in batches to keep the number of reads low on remote sources.
    let initialised = |g: usize| !(sb.uninit_allowed() && descs[g].flags & BG_BLOCK_UNINIT != 0);
    let max_batch = usize::try_from((BATCH_BYTES / sb.block_size).max(1)).unwrap_or(1);
    let bs = usize::try_from(sb.block_size).unwrap_or(usize::MAX);
    let mut buf = Vec::new();
    let mut g = 0;
    while g < descs.len() {
        if !initialised(g) {
            g += 1;
            continue;
        }
        let first = descs[g].block_bitmap;
        let mut n = 1;
        while n < max_batch
            && g + n < descs.len()
            && initialised(g + n)
            && descs[g + n].block_bitmap == first + n as u64
        {
            n += 1;
        }
        buf.resize(n * bs, 0);
        read_at(vol, FS, &mut buf, first * sb.block_size)?;
        for (i, bitmap) in buf.chunks_exact(bs).enumerate() {
            let group = (g + i) as u64;
            let base = sb.group_start(group);
            bitmap_runs(bitmap, sb.group_blocks(group), |s, e| {
                runs.push((base + s, base + e))
            });
        }
        g += n;
    }

    runs.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for (s, e) in runs {
        let e = e.min(sb.blocks_count);
        if s >= e {
            continue;
        }
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    Ok(merged)
}

/// Blocks the journal's copies of block bitmaps mark used (what a replay would write), as
/// `[start, end)` block ranges.
fn journal_bitmap_runs(
    vol: &dyn ReadAt,
    sb: &Superblock,
    descs: &[GroupDesc],
) -> Result<Vec<(u64, u64)>, FsError> {
    if sb.journal_inum == 0 {
        return Err(FsError::corrupt(
            FS,
            "the journal needs recovery, but there is no journal inode",
        ));
    }
    let log = inode_blocks(vol, sb, descs, sb.journal_inum)?;
    let bs = usize::try_from(sb.block_size).unwrap_or(usize::MAX);
    let read_log = |n: u64| -> Result<Vec<u8>, FsError> {
        let block = usize::try_from(n)
            .ok()
            .and_then(|i| log.get(i))
            .copied()
            .filter(|b| *b != 0 && *b < sb.blocks_count)
            .ok_or_else(|| FsError::corrupt(FS, format!("journal block {n} is not mapped")))?;
        let mut buf = vec![0u8; bs];
        read_at(vol, FS, &mut buf, block * sb.block_size)?;
        Ok(buf)
    };
    let copies = jbd2::logged_copies(log.len() as u64, read_log)?;
    let bitmaps: std::collections::HashMap<u64, u64> = (0u64..)
        .zip(descs)
        .map(|(g, d)| (d.block_bitmap, g))
        .collect();
    let mut runs = Vec::new();
    for copy in copies {
        let Some(&group) = bitmaps.get(&copy.target) else {
            continue;
        };
        let mut bitmap = read_log(copy.at)?;
        copy.restore(&mut bitmap);
        let base = sb.group_start(group);
        bitmap_runs(&bitmap, sb.group_blocks(group), |s, e| {
            runs.push((base + s, base + e))
        });
    }
    Ok(runs)
}

/// The filesystem blocks of inode `ino`'s data, in file order (0 for a hole).
fn inode_blocks(
    vol: &dyn ReadAt,
    sb: &Superblock,
    descs: &[GroupDesc],
    ino: u64,
) -> Result<Vec<u64>, FsError> {
    let index = ino
        .checked_sub(1)
        .ok_or_else(|| FsError::corrupt(FS, "inode 0 does not exist"))?;
    let group = usize::try_from(index / sb.inodes_per_group).unwrap_or(usize::MAX);
    let d = descs
        .get(group)
        .ok_or_else(|| FsError::corrupt(FS, format!("inode {ino} is beyond the last group")))?;
    let mut inode = [0u8; 128];
    let at = d.inode_table * sb.block_size + (index % sb.inodes_per_group) * sb.inode_size;
    read_at(vol, FS, &mut inode, at)?;
    let size = u64::from(le32(&inode, 0x4)) | u64::from(le32(&inode, 0x6C)) << 32;
    let blocks = size.div_ceil(sb.block_size);
    // A journal is at most a few GiB; a damaged size must not ask for more.
    if blocks > MAX_INODE_BLOCKS {
        return Err(FsError::corrupt(
            FS,
            format!("inode {ino} claims {size} bytes"),
        ));
    }
    let mut map = vec![0u64; usize::try_from(blocks).unwrap_or(0)];
    let i_block = &inode[0x28..0x28 + 60];
    if le32(&inode, 0x20) & EXTENTS_FL != 0 {
        extent_blocks(vol, sb, i_block, EXTENT_MAX_DEPTH, &mut map)?;
    } else {
        for (i, slot) in i_block.chunks_exact(4).enumerate() {
            let block = u64::from(le32(slot, 0));
            match i {
                0..=11 => {
                    if let Some(m) = map.get_mut(i) {
                        *m = block;
                    }
                }
                _ => {
                    let level = (i - 11) as u32;
                    let per = sb.block_size / 4;
                    let first = 12 + (1..level).map(|l| per.pow(l)).sum::<u64>();
                    indirect_blocks(vol, sb, block, level, first, &mut map)?;
                }
            }
        }
    }
    Ok(map)
}

/// Inodes are read only for the journal: this bounds its size (16 GiB at 4 KiB blocks).
const MAX_INODE_BLOCKS: u64 = 1 << 22;
/// Inode flag: the data is mapped by an extent tree.
const EXTENTS_FL: u32 = 0x8_0000;
/// The deepest extent tree the kernel makes.
const EXTENT_MAX_DEPTH: u32 = 5;

/// Fill `map` from the extent tree node `node`.
fn extent_blocks(
    vol: &dyn ReadAt,
    sb: &Superblock,
    node: &[u8],
    depth_left: u32,
    map: &mut [u64],
) -> Result<(), FsError> {
    walk_extents(vol, sb, node, depth_left, &mut |e| {
        for k in 0..e.len {
            if let Some(m) = usize::try_from(e.logical + k)
                .ok()
                .and_then(|i| map.get_mut(i))
            {
                *m = e.start + k;
            }
        }
    })
}

/// One leaf extent: `len` blocks of the file from block `logical` live at block `start`.
struct LeafExtent {
    logical: u64,
    start: u64,
    len: u64,
    /// Allocated but never written (preallocated): reads as zeros whatever the disk holds.
    unwritten: bool,
}

/// Call `leaf` for every leaf extent under the extent tree node `node`, reading index nodes
/// from the volume; at most `depth_left` levels deep.
fn walk_extents(
    vol: &dyn ReadAt,
    sb: &Superblock,
    node: &[u8],
    depth_left: u32,
    leaf: &mut dyn FnMut(LeafExtent),
) -> Result<(), FsError> {
    if le16(node, 0) != 0xF30A {
        return Err(FsError::corrupt(FS, "an extent tree node has no magic"));
    }
    let entries = usize::from(le16(node, 2));
    let depth = le16(node, 6);
    if entries * 12 + 12 > node.len() || u32::from(depth) >= depth_left {
        return Err(FsError::corrupt(FS, "an extent tree node is damaged"));
    }
    for e in node[12..12 + entries * 12].chunks_exact(12) {
        if depth == 0 {
            let raw_len = u64::from(le16(e, 4));
            let unwritten = raw_len > 32768;
            leaf(LeafExtent {
                logical: u64::from(le32(e, 0)),
                start: u64::from(le16(e, 6)) << 32 | u64::from(le32(e, 8)),
                len: if unwritten { raw_len - 32768 } else { raw_len },
                unwritten,
            });
        } else {
            let child = u64::from(le32(e, 4)) | u64::from(le16(e, 8)) << 32;
            if child == 0 || child >= sb.blocks_count {
                return Err(FsError::corrupt(
                    FS,
                    "an extent index points outside the filesystem",
                ));
            }
            let mut buf = vec![0u8; usize::try_from(sb.block_size).unwrap_or(0)];
            read_at(vol, FS, &mut buf, child * sb.block_size)?;
            walk_extents(vol, sb, &buf, u32::from(depth), leaf)?;
        }
    }
    Ok(())
}

/// Fill `map` from `block`, an indirect block `level` levels above the data, whose first
/// data block is file block `first`.
fn indirect_blocks(
    vol: &dyn ReadAt,
    sb: &Superblock,
    block: u64,
    level: u32,
    first: u64,
    map: &mut [u64],
) -> Result<(), FsError> {
    if block == 0 || first >= map.len() as u64 {
        return Ok(());
    }
    if block >= sb.blocks_count {
        return Err(FsError::corrupt(
            FS,
            "an indirect block points outside the filesystem",
        ));
    }
    let mut buf = vec![0u8; usize::try_from(sb.block_size).unwrap_or(0)];
    read_at(vol, FS, &mut buf, block * sb.block_size)?;
    let per = sb.block_size / 4;
    let span = per.pow(level - 1);
    for (i, slot) in (0u64..).zip(buf.chunks_exact(4)) {
        let child = u64::from(le32(slot, 0));
        let at = first + i * span;
        if level == 1 {
            if let Some(m) = usize::try_from(at).ok().and_then(|i| map.get_mut(i)) {
                *m = child;
            }
        } else {
            indirect_blocks(vol, sb, child, level - 1, at, map)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::detect;
    use crate::fs::test_support::{
        blkid, copy_used, image_file, open, populate, pseudo_random, run, tool,
        written_file_extents, Made,
    };
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::process::Command;

    const UUID: &str = "d1b2c3a4-0102-4304-8506-0708090a0b0c";

    /// `mkfs` an image of `size` bytes with `args`, populated with `populate`'s tree.
    /// `None` (test skipped) when e2fsprogs is missing.
    fn make(mkfs: &str, size: u64, args: &[&str]) -> Option<Made> {
        let mkfs = tool(mkfs)?;
        tool("e2fsck")?;
        tool("debugfs")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        let files = populate(&tree);
        let image = image_file(dir.path(), "fs.img", size);
        run(Command::new(mkfs)
            .args(["-q", "-F", "-L", "holdtest", "-U", UUID])
            .args(args)
            .arg("-d")
            .arg(&tree)
            .arg(&image));
        Some(Made { dir, image, files })
    }

    fn data_bytes(made: &Made) -> u64 {
        made.files.iter().map(|(_, d)| d.len() as u64).sum()
    }

    /// The strong check: a copy holding only the used extents must fsck clean and give back
    /// every file.
    fn assert_copy_restores(made: &Made, used: &Extents) {
        let copy = made.dir.path().join("copy.img");
        copy_used(&made.image, used, &copy);
        let fsck = Command::new(tool("e2fsck").expect("e2fsck"))
            .arg("-fn")
            .arg(&copy)
            .output()
            .expect("run e2fsck");
        assert!(
            fsck.status.success(),
            "e2fsck on the used-only copy: {}\n{}{}",
            fsck.status,
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        for (i, (rel, want)) in made.files.iter().enumerate() {
            let out = made.dir.path().join(format!("out{i}"));
            run(Command::new(tool("debugfs").expect("debugfs"))
                .arg("-R")
                .arg(format!("dump /{rel} {}", out.display()))
                .arg(&copy));
            let got = std::fs::read(&out).unwrap_or_default();
            assert!(got == *want, "{rel} differs after the used-only copy");
        }
    }

    /// Detect, check the basics every test shares, and run the strong check.
    fn detect_and_verify(made: &Made, fs_type: &str, block_size: u32) -> crate::fs::Detected {
        let vol = open(&made.image);
        let found = detect(&vol).expect("detect").expect("recognised");
        let info = &found.info;
        assert_eq!(info.fs_type, fs_type);
        assert_eq!(info.label.as_deref(), Some("holdtest"));
        assert_eq!(info.uuid.as_deref(), Some(UUID));
        assert_eq!(info.fs_block_size, block_size);
        assert_eq!(info.fs_size, vol.size());
        assert_eq!(info.used_bytes, found.used.total());
        assert!(info.used_bytes >= data_bytes(made), "{info:?}");
        assert!(info.used_bytes < info.fs_size / 2, "{info:?}");
        if let Some(said) = blkid(&made.image) {
            assert_eq!(said.get("TYPE"), Some(&info.fs_type), "blkid {said:?}");
            assert_eq!(said.get("UUID"), info.uuid.as_ref(), "blkid {said:?}");
            assert_eq!(said.get("LABEL"), info.label.as_ref(), "blkid {said:?}");
        }
        // The probe's estimate from the free-block counter agrees with the bitmaps.
        let probed = ExtReader.probe(&vol).expect("probe").expect("some");
        assert_eq!(probed.used_bytes, info.used_bytes, "superblock vs bitmaps");
        assert_copy_restores(made, &found.used);
        found
    }

    fn superblock(path: &Path) -> Superblock {
        Superblock::read(&open(path)).expect("read").expect("ext")
    }

    fn descriptors(path: &Path) -> Vec<GroupDesc> {
        let vol = open(path);
        read_descriptors(&vol, &superblock(path)).expect("descriptors")
    }

    /// Edit the superblock in place, keeping its checksum valid.
    fn patch_sb(path: &Path, edit: impl FnOnce(&mut [u8; SB_SIZE])) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open");
        let mut sb = [0u8; SB_SIZE];
        file.read_exact_at(&mut sb, SB_OFFSET).expect("read sb");
        edit(&mut sb);
        if le32(&sb, 0x64) & RO_METADATA_CSUM != 0 {
            let sum = !crc32c::crc32c(&sb[..0x3FC]);
            sb[0x3FC..].copy_from_slice(&sum.to_le_bytes());
        }
        file.write_all_at(&sb, SB_OFFSET).expect("write sb");
    }

    fn set32(sb: &mut [u8], at: usize, v: u32) {
        sb[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn ext4_default() {
        let Some(made) = make("mkfs.ext4", 64 << 20, &["-b", "4096"]) else {
            return;
        };
        let found = detect_and_verify(&made, "ext4", 4096);
        // The journal (inode 8, 4 MiB here) is covered through the bitmap.
        assert!(found.info.used_bytes >= data_bytes(&made) + (4 << 20));
    }

    #[test]
    fn unchanged_file_data_is_named_by_change_time() {
        let Some(made) = make("mkfs.ext4", 64 << 20, &["-b", "4096"]) else {
            return;
        };
        let vol = open(&made.image);
        let found = detect(&vol).expect("detect").expect("ext4");
        let base = History::default();
        let all = ExtReader
            .unchanged_since(&vol, i64::MAX, &base)
            .expect("scan")
            .expect("ext tracks changes")
            .ranges;
        // Every file's written data, as the kernel maps it, and what e2fsprogs says the
        // filesystem ignores (inode-table tails, the empty journal's log), nothing else.
        let mut want = written_file_extents(&made.image, &made.dir.path().join("fiemap"));
        let image = made.image.to_str().expect("path");
        let ignored = holdfast_testkit::devices::ext_ignored_ranges(image);
        let journal = 4 << 20;
        let ignored_bytes: u64 = ignored.iter().map(|(s, e)| e - s).sum();
        assert!(ignored_bytes > journal, "{ignored:?}");
        for &(s, e) in &ignored {
            want.add(s, e - s);
        }
        assert_eq!(all, want, "named vs the kernel's file extents");
        let mut outside = all.clone();
        for &(s, e) in found.used.ranges() {
            outside.remove(s, e - s);
        }
        assert!(
            outside.is_empty(),
            "named unused ranges {:?}",
            outside.ranges()
        );
        // Nothing is older than the epoch: only what the filesystem ignores is left.
        let older = ExtReader.unchanged_since(&vol, 0, &base).expect("scan");
        assert_eq!(older.expect("ext").ranges.total(), ignored_bytes);
        assert!(all.total() < found.used.total());
        assert_eq!(ExtReader.history(&vol).expect("sb").mount_count, Some(0));
    }

    #[test]
    fn nothing_is_ignored_while_the_journal_needs_recovery() {
        let Some(made) = make("mkfs.ext4", 64 << 20, &["-b", "4096"]) else {
            return;
        };
        patch_sb(&made.image, |sb| {
            let incompat = le32(sb, 0x60) | INCOMPAT_RECOVER;
            set32(sb, 0x60, incompat);
        });
        let vol = open(&made.image);
        let named = ExtReader
            .unchanged_since(&vol, 0, &History::default())
            .expect("scan")
            .expect("ext");
        assert!(named.ranges.is_empty(), "{:?}", named.ranges.ranges());
    }

    #[test]
    fn ext4_many_groups_with_uninit_bitmaps() {
        let Some(made) = make("mkfs.ext4", 1 << 30, &["-b", "4096"]) else {
            return;
        };
        let descs = descriptors(&made.image);
        assert_eq!(descs.len(), 8);
        assert!(
            descs.iter().any(|d| d.flags & BG_BLOCK_UNINIT != 0),
            "the test needs BLOCK_UNINIT groups"
        );
        detect_and_verify(&made, "ext4", 4096);
    }

    #[test]
    fn ext4_1k_blocks() {
        let Some(made) = make("mkfs.ext4", 64 << 20, &["-b", "1024"]) else {
            return;
        };
        let sb = superblock(&made.image);
        assert_eq!((sb.first_data_block, sb.sb_block), (1, 1));
        detect_and_verify(&made, "ext4", 1024);
    }

    #[test]
    fn ext4_64bit_flex_bg() {
        let args = ["-b", "1024", "-O", "64bit,flex_bg", "-G", "4"];
        let Some(made) = make("mkfs.ext4", 128 << 20, &args) else {
            return;
        };
        let sb = superblock(&made.image);
        assert_eq!(sb.desc_size, 64);
        assert_eq!(sb.groups, 16);
        // flex_bg moved group 5's bitmap out of group 5.
        let descs = descriptors(&made.image);
        assert!(descs[5].block_bitmap < sb.group_start(5));
        detect_and_verify(&made, "ext4", 1024);
    }

    #[test]
    fn ext4_sparse_super2() {
        let args = ["-b", "1024", "-O", "sparse_super2", "-E", "num_backup_sb=1"];
        let Some(made) = make("mkfs.ext4", 64 << 20, &args) else {
            return;
        };
        let sb = superblock(&made.image);
        assert_ne!(sb.compat & COMPAT_SPARSE_SUPER2, 0);
        assert!(sb.has_backup(1) && !sb.has_backup(3));
        detect_and_verify(&made, "ext4", 1024);
    }

    #[test]
    fn ext3_names_and_restores() {
        let Some(made) = make("mkfs.ext3", 64 << 20, &["-b", "1024"]) else {
            return;
        };
        detect_and_verify(&made, "ext3", 1024);
    }

    #[test]
    fn ext2_without_sparse_super() {
        let args = ["-b", "1024", "-O", "^sparse_super,^resize_inode"];
        let Some(made) = make("mkfs.ext2", 64 << 20, &args) else {
            return;
        };
        let sb = superblock(&made.image);
        assert!(sb.has_backup(2) && sb.has_backup(6));
        detect_and_verify(&made, "ext2", 1024);
    }

    fn assert_unsupported(made: &Made, what: &str) {
        let vol = open(&made.image);
        match detect(&vol) {
            Err(FsError::Unsupported { feature, .. }) => {
                assert!(feature.contains(what), "{feature}");
            }
            other => panic!("expected Unsupported({what}), got {other:?}"),
        }
    }

    #[test]
    fn bigalloc_is_unsupported() {
        let args = ["-O", "bigalloc", "-C", "16384"];
        let Some(made) = make("mkfs.ext4", 64 << 20, &args) else {
            return;
        };
        assert_unsupported(&made, "bigalloc");
        // The probe still names it, for the caller's warning.
        let info = ExtReader
            .probe(&open(&made.image))
            .expect("probe")
            .expect("ext");
        assert_eq!(info.fs_type, "ext4");
    }

    #[test]
    fn meta_bg_is_unsupported() {
        let args = ["-O", "meta_bg,^resize_inode"];
        let Some(made) = make("mkfs.ext4", 64 << 20, &args) else {
            return;
        };
        assert_unsupported(&made, "meta_bg");
    }

    #[test]
    fn needs_recovery_reads_the_journal_and_unknown_features_are_unsupported() {
        let Some(made) = make("mkfs.ext4", 16 << 20, &[]) else {
            return;
        };
        let clean = detect(&open(&made.image))
            .expect("detect")
            .expect("ext")
            .used;
        // Flagged for recovery with an empty log: nothing more is used.
        patch_sb(&made.image, |sb| {
            let v = le32(sb, 0x60) | INCOMPAT_RECOVER;
            set32(sb, 0x60, v);
        });
        let flagged = detect(&open(&made.image))
            .expect("detect")
            .expect("ext")
            .used;
        assert_eq!(flagged, clean);
        // A journal inode that is not one: a clean error.
        patch_sb(&made.image, |sb| set32(sb, 0xE0, 2));
        assert_corrupt(&open(&made.image), "journal superblock");
        patch_sb(&made.image, |sb| {
            set32(sb, 0xE0, 8);
            let v = le32(sb, 0x60) & !INCOMPAT_RECOVER | 0x80_0000;
            set32(sb, 0x60, v);
        });
        assert_unsupported(&made, "unknown incompatible features 0x800000");
        patch_sb(&made.image, |sb| {
            let v = le32(sb, 0x60) & !0x80_0000;
            set32(sb, 0x60, v);
            let v = le32(sb, 0x64) | 0x100_0000;
            set32(sb, 0x64, v);
        });
        assert_unsupported(&made, "unknown read-only compatible features 0x1000000");
    }

    fn assert_corrupt(vol: &dyn ReadAt, what: &str) {
        match detect(vol) {
            Err(FsError::Corrupt { detail, .. }) => assert!(detail.contains(what), "{detail}"),
            other => panic!("expected Corrupt({what}), got {other:?}"),
        }
    }

    #[test]
    fn damaged_superblocks_are_clean_errors() {
        let Some(made) = make("mkfs.ext4", 16 << 20, &[]) else {
            return;
        };
        let pristine = std::fs::read(&made.image).expect("read image");
        let sb = superblock(&made.image);
        let gdt = usize::try_from((sb.sb_block + 1) * sb.block_size).expect("offset");

        patch_sb(&made.image, |sb| set32(sb, 0x18, 20));
        assert_corrupt(&open(&made.image), "block size");

        std::fs::write(&made.image, &pristine).expect("restore");
        patch_sb(&made.image, |sb| set32(sb, 0x20, 0));
        assert_corrupt(&open(&made.image), "blocks per group");

        // A stray write: the checksum no longer matches.
        std::fs::write(&made.image, &pristine).expect("restore");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&made.image)
            .expect("open");
        file.write_all_at(b"X", SB_OFFSET + 0x78).expect("write");
        assert_corrupt(&open(&made.image), "checksum");

        // Group 0's descriptor points past the end.
        let mut bad = pristine.clone();
        bad[gdt..gdt + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_corrupt(&bad, "outside the filesystem");

        // A truncated volume: the superblock is readable but the filesystem is cut short.
        let short = pristine[..1 << 20].to_vec();
        assert!(ExtReader.probe(&short).expect("probe").is_some());
        assert_corrupt(&short, "volume has only");

        // Too short even for the superblock: not ext at all.
        assert!(detect(&pristine[..1500].to_vec()).expect("tiny").is_none());
    }

    #[test]
    fn random_superblock_damage_never_panics() {
        let Some(made) = make("mkfs.ext4", 8 << 20, &["-b", "1024"]) else {
            return;
        };
        let pristine = std::fs::read(&made.image).expect("read image");
        let noise = pseudo_random(4 * 3000, 99);
        for round in noise.chunks_exact(4) {
            let mut img = pristine.clone();
            // Hit the superblock or the first group descriptors, with any byte value.
            let at = 1024 + usize::from(u16::from_le_bytes([round[0], round[1]])) % 1100;
            img[at] = round[2];
            img[1024 + (usize::from(round[3]) % 0x100)] ^= round[3];
            // Fix the checksum so damage reaches the parsing behind it.
            let mut sb = [0u8; SB_SIZE];
            sb.copy_from_slice(&img[1024..2048]);
            let sum = !crc32c::crc32c(&sb[..0x3FC]);
            img[1024 + 0x3FC..2048].copy_from_slice(&sum.to_le_bytes());
            let _ = detect(&img);
        }
    }

    #[test]
    fn four_gib_without_checksums_scans_every_bitmap() {
        let Some(mkfs) = tool("mkfs.ext4") else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let image = image_file(dir.path(), "big.img", 4 << 30);
        run(Command::new(mkfs)
            // Without checksums every group has an on-disk bitmap to scan.
            .args(["-q", "-F", "-b", "4096", "-O", "^metadata_csum,^uninit_bg"])
            .args(["-E", "lazy_itable_init=1,lazy_journal_init=1"])
            .arg(&image));
        let vol = open(&image);
        let info = ExtReader.probe(&vol).expect("probe").expect("ext");
        let t = std::time::Instant::now();
        let used = ExtReader.used_extents(&vol, &info).expect("used");
        let took = t.elapsed();
        eprintln!(
            "4 GiB ext4: {} used bytes in {} ranges, {took:?}",
            used.total(),
            used.ranges().len()
        );
        assert_eq!(used.total(), info.used_bytes);
    }
}
