//! Which btrfs extents are unchanged since the base image (change-tracked incrementals).
//!
//! btrfs never writes a committed tree block or data extent in place, with two exceptions:
//! files marked NOCOW (`chattr +C`; also the v1 free-space cache) and preallocated
//! extents (written in place the first time). Every item of the extent tree carries the
//! transaction (generation) that allocated its extent. So an extent allocated at or before
//! the generation the base image recorded holds what it held then — unless a NOCOW file or
//! a preallocated range covers it, or a file extent item written since points into it (a
//! preallocated range written after the base). Those are found by walking every tree that
//! holds files (each subvolume and snapshot, the data relocation tree, and the root tree
//! for the v1 free-space cache) and are always read and hashed, as is everything the
//! extent tree does not name (superblocks, the first MiB, system chunks).

use super::{le32, le64, Super, Trees, EXTENT_ITEM, EXTENT_TREE, FS, METADATA_ITEM, ROOT_ITEM};
use crate::extents::Extents;
use crate::fs::FsError;
use crate::io::ReadAt;

/// How this module finds unchanged data, for reports.
pub(super) const SOURCE: &str = "extent generations";

const INODE_ITEM: u8 = 1;
pub(super) const EXTENT_DATA: u8 = 108;
/// `btrfs_inode_item.flags`: written in place.
const INODE_NODATACOW: u64 = 1 << 1;
/// `btrfs_file_extent_item.type`.
const FILE_EXTENT_INLINE: u8 = 0;
const FILE_EXTENT_PREALLOC: u8 = 2;
/// Subvolume and snapshot trees: the top level (5) and ids from 256 up to the reserved ids.
pub(super) const FS_TREE: u64 = 5;
const FIRST_FREE_OBJECTID: u64 = 256;
const LAST_FREE_OBJECTID: u64 = u64::MAX - 255;
/// The data relocation tree (-9).
const DATA_RELOC_TREE: u64 = u64::MAX - 8;

/// Device byte ranges of extents allocated at or before `base_generation` and not written in
/// place since.
pub(super) fn unchanged_since(vol: &dyn ReadAt, base_generation: u64) -> Result<Extents, FsError> {
    let sb = Super::read(vol)?.ok_or_else(|| FsError::corrupt(FS, "the superblock is gone"))?;
    let trees = Trees::open(vol, &sb)?;

    let mut file_trees = vec![(sb.root, sb.root_level)];
    trees.walk(sb.root, sb.root_level, &mut |id, kind, _, data| {
        let holds_files = id == FS_TREE
            || (FIRST_FREE_OBJECTID..=LAST_FREE_OBJECTID).contains(&id)
            || id == DATA_RELOC_TREE;
        // A tree being deleted (no references left) may point at blocks already reused.
        if kind == ROOT_ITEM && holds_files && data.len() >= 239 && le32(data, 216) > 0 {
            file_trees.push((le64(data, 176), data[238]));
        }
        Ok(())
    })?;

    let mut dirty = Vec::new();
    for (root, level) in file_trees {
        // Items sort by (inode, type): an inode's INODE_ITEM comes before its extents.
        let mut nocow: Option<(u64, bool)> = None;
        trees.walk(root, level, &mut |ino, kind, _, data| {
            match kind {
                INODE_ITEM if data.len() >= 72 => {
                    nocow = Some((ino, le64(data, 64) & INODE_NODATACOW != 0));
                }
                EXTENT_DATA if data.len() >= 53 && data[20] != FILE_EXTENT_INLINE => {
                    let (generation, bytenr, len) = (le64(data, 0), le64(data, 21), le64(data, 29));
                    let in_place = match nocow {
                        Some((owner, flag)) if owner == ino => flag,
                        // No inode item seen for it: assume the worst.
                        _ => true,
                    };
                    if bytenr != 0
                        && (in_place
                            || data[20] == FILE_EXTENT_PREALLOC
                            || generation > base_generation)
                    {
                        dirty.push((bytenr, len));
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
    }
    dirty.sort_unstable();
    let mut written = Extents::new();
    for (start, len) in dirty {
        written.add(start, len);
    }

    let (root, level) = trees.root_of(EXTENT_TREE)?;
    let node = u64::from(sb.node_size);
    let mut old = Vec::new();
    trees.walk(root, level, &mut |start, kind, offset, data| {
        let len = match kind {
            EXTENT_ITEM => offset,
            METADATA_ITEM => node,
            _ => return Ok(()),
        };
        // btrfs_extent_item: refs, generation, flags.
        if data.len() >= 16 && le64(data, 8) <= base_generation && len > 0 {
            old.push((start, len));
        }
        Ok(())
    })?;

    let mut out = Extents::new();
    let mut keep = |start: u64, len: u64| -> Result<(), FsError> {
        for place in trees.places_of(start, len)? {
            out.add(place, len);
        }
        Ok(())
    };
    for (start, len) in old {
        let end = start + len;
        let mut cursor = start;
        for (s, e) in written.overlapping(start, end) {
            if s > cursor {
                keep(cursor, s - cursor)?;
            }
            cursor = e;
        }
        if cursor < end {
            keep(cursor, end - cursor)?;
        }
    }
    Ok(out)
}
