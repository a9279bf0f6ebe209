//! Write a block source as a dynamic VHD (Virtual PC / Virtual Server format, read by
//! Hyper-V, VirtualBox, Azure and QEMU).
//!
//! | bytes | what |
//! | --- | --- |
//! | 512 | a copy of the footer |
//! | 1024 | the dynamic disk header (`cxsparse`): where the block table is, 2 MiB blocks |
//! | table | one 32-bit sector offset per 2 MiB block (`0xFFFFFFFF`: not stored) |
//! | blocks | per stored block: a 512-byte sector bitmap (all set), then its 2 MiB |
//! | 512 | the footer (`conectix`): sizes, geometry, disk type 3 (dynamic), an id |
//!
//! Every field is big-endian; footer and header carry a one's-complement byte-sum checksum.
//!
//! Size: readers that follow Virtual PC (QEMU among them, for a creator it does not know)
//! take the disk's size from its cylinder/head/sector geometry, not from the size field.
//! As `qemu-img` does, the disk is rounded up to the first geometry that holds the source
//! (at most a cylinder of 16 × 255 sectors, 2 MiB, more); past the largest geometry
//! (about 127 GB) the geometry is the maximum and readers take the size field, exact to
//! the sector.

use super::{allocated_units, write_units, Output, Written};
use crate::blocks::BlockSource;
use crate::error::{ImageError, Result};
use crate::progress::{Cancel, Progress};

const BLOCK: u64 = 2 << 20;
const SECTOR: u64 = 512;
/// The bitmap before each block: one bit per sector, rounded up to a sector.
const BITMAP: u64 = (BLOCK / SECTOR / 8).div_ceil(SECTOR) * SECTOR;
/// Seconds from the Unix epoch to the VHD epoch (2000-01-01 00:00:00 UTC).
const VHD_EPOCH: u64 = 946_684_800;
/// The largest geometry: 65535 cylinders, 16 heads, 255 sectors per track.
const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;
/// Block offsets are 32-bit sector numbers: the file must stay below 2 TiB.
const MAX_DISK: u64 = 2040 << 30;
const DYNAMIC: u32 = 3;

/// Cylinders, heads and sectors per track for `sectors` (the VHD specification's
/// algorithm): the capacity may fall short of `sectors`.
fn geometry(sectors: u64) -> (u16, u8, u8) {
    let total = sectors.min(MAX_CHS_SECTORS);
    let (spt, heads, cyl_heads) = if total >= 65535 * 16 * 63 {
        (255, 16, total / 255)
    } else {
        let mut spt = 17;
        let mut cyl_heads = total / spt;
        let mut heads = cyl_heads.div_ceil(1024).max(4);
        if cyl_heads >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cyl_heads = total / spt;
        }
        if cyl_heads >= heads * 1024 {
            spt = 63;
            heads = 16;
            cyl_heads = total / spt;
        }
        (spt, heads, cyl_heads)
    };
    // Bounded by the clamp above: 65535 cylinders, 16 heads, 255 sectors at most.
    (
        u16::try_from(cyl_heads / heads).unwrap_or(u16::MAX),
        u8::try_from(heads).unwrap_or(16),
        u8::try_from(spt).unwrap_or(255),
    )
}

fn capacity((c, h, s): (u16, u8, u8)) -> u64 {
    u64::from(c) * u64::from(h) * u64::from(s)
}

/// The disk's sectors and geometry for a source of `size` bytes (see the module notes).
fn disk_geometry(size: u64) -> (u64, (u16, u8, u8)) {
    let want = size.div_ceil(SECTOR);
    if want >= MAX_CHS_SECTORS {
        return (want, geometry(MAX_CHS_SECTORS));
    }
    let mut sectors = want;
    loop {
        let g = geometry(sectors);
        if capacity(g) >= want {
            return (capacity(g), g);
        }
        sectors += 1;
    }
}

/// One's complement of the byte sum, as the footer and the dynamic header carry it.
fn checksum(bytes: &[u8]) -> u32 {
    !bytes
        .iter()
        .fold(0u32, |s, &b| s.wrapping_add(u32::from(b)))
}

fn footer(disk: u64, g: (u16, u8, u8), id: [u8; 16], created_unix: u64) -> [u8; 512] {
    let mut f = [0u8; 512];
    let mut put = |at: usize, v: &[u8]| f[at..at + v.len()].copy_from_slice(v);
    put(0, b"conectix");
    put(8, &2u32.to_be_bytes());
    put(12, &0x0001_0000u32.to_be_bytes());
    put(16, &SECTOR.to_be_bytes());
    let stamp = u32::try_from(created_unix.saturating_sub(VHD_EPOCH)).unwrap_or(u32::MAX);
    put(24, &stamp.to_be_bytes());
    put(28, b"hfst");
    put(32, &0x0001_0000u32.to_be_bytes());
    put(36, b"Wi2k");
    put(40, &disk.to_be_bytes());
    put(48, &disk.to_be_bytes());
    put(56, &g.0.to_be_bytes());
    put(58, &[g.1, g.2]);
    put(60, &DYNAMIC.to_be_bytes());
    put(68, &id);
    let sum = checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

fn dynamic_header(table_at: u64, entries: u32) -> [u8; 1024] {
    let mut h = [0u8; 1024];
    let mut put = |at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
    put(0, b"cxsparse");
    put(8, &u64::MAX.to_be_bytes());
    put(16, &table_at.to_be_bytes());
    put(24, &0x0001_0000u32.to_be_bytes());
    put(28, &entries.to_be_bytes());
    put(32, &(BLOCK as u32).to_be_bytes());
    let sum = checksum(&h);
    h[36..40].copy_from_slice(&sum.to_be_bytes());
    h
}

/// Write `src` as a dynamic VHD to `out`, front to back. `id` is the disk's unique id,
/// `created_unix` its creation time.
pub fn write_vhd(
    src: &dyn BlockSource,
    out: &mut dyn std::io::Write,
    id: [u8; 16],
    created_unix: u64,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Written> {
    if u64::from(src.block_size()) > BLOCK {
        return Err(ImageError::Invalid(format!(
            "a block size of {} bytes does not fit a VHD block",
            src.block_size()
        )));
    }
    let (sectors, g) = disk_geometry(src.size());
    let disk = sectors * SECTOR;
    if disk > MAX_DISK {
        return Err(ImageError::Invalid(format!(
            "a VHD holds at most 2040 GiB; this disk has {disk} bytes (use vhdx or qcow2)"
        )));
    }
    let blocks = disk.div_ceil(BLOCK);
    let allocated = allocated_units(src, BLOCK, blocks);
    let table_at = SECTOR + 1024;
    let table_bytes = (blocks * 4).div_ceil(SECTOR) * SECTOR;
    let data_at = table_at + table_bytes;
    let mut out = Output::new(out, "VHD");

    let foot = footer(disk, g, id, created_unix);
    out.put(&foot)?;
    // Bounded by MAX_DISK: at most 1,044,480 entries.
    out.put(&dynamic_header(table_at, blocks as u32))?;
    let mut table = Vec::with_capacity(usize::try_from(table_bytes).unwrap_or(0));
    let mut stored = 0u64;
    for &a in &allocated {
        let entry = if a {
            stored += 1;
            // Below 2 TiB (MAX_DISK), so a 32-bit sector number.
            ((data_at + (stored - 1) * (BITMAP + BLOCK)) / SECTOR) as u32
        } else {
            u32::MAX
        };
        table.extend_from_slice(&entry.to_be_bytes());
    }
    table.resize(usize::try_from(table_bytes).unwrap_or(0), 0xFF);
    out.put(&table)?;

    let bitmap = vec![0xFFu8; BITMAP as usize];
    let data_bytes = write_units(src, BLOCK, &allocated, &bitmap, &mut out, progress, cancel)?;
    out.put(&foot)?;
    out.finish(data_bytes, disk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vdisk::test_support::round_trip;

    #[test]
    fn geometry_follows_the_specification() {
        // 1 GiB: 2097152 sectors -> 63 sectors per track, 16 heads.
        assert_eq!(geometry(2_097_152), (2080, 16, 63));
        // Small: 17 sectors per track, at least 4 heads.
        assert_eq!(geometry(20_480), (301, 4, 17));
        // Beyond the largest geometry: the largest.
        assert_eq!(geometry(u64::MAX), (65535, 16, 255));
        // The disk holds the source, at most a cylinder more.
        for size in [1u64 << 20, 5 << 20, 1 << 30, (3 << 30) + 4096] {
            let (sectors, g) = disk_geometry(size);
            assert_eq!(sectors, capacity(g));
            assert!(sectors * SECTOR >= size);
            assert!(sectors * SECTOR - size < 16 * 255 * SECTOR, "{size}: {g:?}");
        }
        let big = 200u64 << 30;
        assert_eq!(disk_geometry(big), (big / SECTOR, (65535, 16, 255)));
    }

    #[test]
    fn a_sparse_disk_reads_back_from_vhd() {
        let size = (21 << 20) + 4096;
        round_trip(
            "vpc",
            size,
            32 << 10,
            &[(0, 32 << 10), (3 << 20, 5 << 20), (size - 8192, 8192)],
        );
        // Beyond the largest geometry: the size field is exact.
        if let Some(w) = round_trip("vpc", 130 << 30, 1 << 20, &[(7 << 30, 1 << 20)]) {
            assert_eq!(w.disk_bytes, 130 << 30);
        }
    }

    #[test]
    fn checksums_are_the_ones_complement_byte_sum() {
        let f = footer(1 << 30, geometry(2_097_152), [1; 16], VHD_EPOCH + 5);
        let mut zeroed = f;
        zeroed[64..68].fill(0);
        assert_eq!(
            u32::from_be_bytes([f[64], f[65], f[66], f[67]]),
            checksum(&zeroed)
        );
        assert_eq!(&f[24..28], &5u32.to_be_bytes());
    }
}
