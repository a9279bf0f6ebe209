//! Write a block source as a dynamic VHDX (the Hyper-V format, MS-VHDX version 1).
//!
//! | offset | what |
//! | --- | --- |
//! | 0 | file type identifier (`vhdxfile`, the creator's name) |
//! | 64 KiB, 128 KiB | the two headers (`head`): sequence numbers, write ids, where the log is |
//! | 192 KiB, 256 KiB | the two region tables (`regi`): where the BAT and metadata are |
//! | 1 MiB | the log, 1 MiB, empty (the headers' log id is zero: nothing to replay) |
//! | 2 MiB | metadata (`metadata`): block size, disk size, disk id, sector sizes |
//! | 3 MiB | the block allocation table (BAT), whole MiBs |
//! | then | the stored 2 MiB payload blocks, in disk order |
//!
//! Headers and region tables carry CRC-32C checksums. In the BAT, each 2 MiB payload block
//! is fully present (with its file offset in MiB) or not present (reads as zeros); after
//! every 2048 payload entries (the chunk ratio for 512-byte sectors) comes a sector-bitmap
//! entry, unused without a parent disk. GUIDs are stored in their Windows byte order.

use super::{allocated_units, write_units, Output, Written};
use crate::blocks::BlockSource;
use crate::error::{ImageError, Result};
use crate::progress::{Cancel, Progress};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 2 * MIB;
const LOGICAL_SECTOR: u64 = 512;
const PHYSICAL_SECTOR: u32 = 4096;
/// Payload blocks per sector-bitmap block: 2^23 sectors of 512 bytes over 2 MiB blocks.
const CHUNK_RATIO: u64 = (1 << 23) * LOGICAL_SECTOR / BLOCK;
const LOG_AT: u64 = MIB;
const LOG_LEN: u64 = MIB;
const METADATA_AT: u64 = 2 * MIB;
const METADATA_LEN: u64 = MIB;
const BAT_AT: u64 = 3 * MIB;
/// The specification's limit: 64 TiB.
const MAX_DISK: u64 = 64 << 40;
/// BAT entry states.
const BLOCK_NOT_PRESENT: u64 = 0;
const BLOCK_FULLY_PRESENT: u64 = 6;

/// A GUID from its canonical text (`8-4-4-4-12` hex digits), in the on-disk (Windows)
/// byte order: the first three fields little-endian, the rest as written.
const fn guid(text: &str) -> [u8; 16] {
    let t = text.as_bytes();
    let mut raw = [0u8; 16];
    let (mut i, mut n) = (0, 0);
    while i < t.len() {
        if t[i] != b'-' {
            let d = match t[i] {
                b'0'..=b'9' => t[i] - b'0',
                b'a'..=b'f' => t[i] - b'a' + 10,
                _ => t[i] - b'A' + 10,
            };
            raw[n / 2] |= if n % 2 == 0 { d << 4 } else { d };
            n += 1;
        }
        i += 1;
    }
    [
        raw[3], raw[2], raw[1], raw[0], raw[5], raw[4], raw[7], raw[6], raw[8], raw[9], raw[10],
        raw[11], raw[12], raw[13], raw[14], raw[15],
    ]
}

const REGION_BAT: [u8; 16] = guid("2DC27766-F623-4200-9D64-115E9BFD4A08");
const REGION_METADATA: [u8; 16] = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E");
const FILE_PARAMETERS: [u8; 16] = guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B");
const VIRTUAL_DISK_SIZE: [u8; 16] = guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8");
const VIRTUAL_DISK_ID: [u8; 16] = guid("BECA12AB-B2E6-4523-93EF-C309E000C746");
const LOGICAL_SECTOR_SIZE: [u8; 16] = guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F");
const PHYSICAL_SECTOR_SIZE: [u8; 16] = guid("CDA348C7-445D-4471-9CC9-E9885251C556");

/// Metadata entry flags.
const IS_VIRTUAL_DISK: u32 = 0x2;
const IS_REQUIRED: u32 = 0x4;

fn put(buf: &mut [u8], at: usize, v: &[u8]) {
    buf[at..at + v.len()].copy_from_slice(v);
}

/// Store the CRC-32C of `buf` (its checksum field zero) at offset 4.
fn seal(buf: &mut [u8]) {
    buf[4..8].fill(0);
    let sum = crc32c::crc32c(buf);
    put(buf, 4, &sum.to_le_bytes());
}

fn identifier() -> Vec<u8> {
    let mut b = vec![0u8; 64 << 10];
    put(&mut b, 0, b"vhdxfile");
    let creator: Vec<u8> = "Holdfast"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    put(&mut b, 8, &creator);
    b
}

fn header(sequence: u64, file_write: [u8; 16], data_write: [u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; 4 << 10];
    put(&mut b, 0, b"head");
    put(&mut b, 8, &sequence.to_le_bytes());
    put(&mut b, 16, &file_write);
    put(&mut b, 32, &data_write);
    // Log id (48..64) zero: the log is empty.
    put(&mut b, 64, &0u16.to_le_bytes());
    put(&mut b, 66, &1u16.to_le_bytes());
    put(&mut b, 68, &(LOG_LEN as u32).to_le_bytes());
    put(&mut b, 72, &LOG_AT.to_le_bytes());
    seal(&mut b);
    // The header's checksum covers its 4 KiB; the rest of its 64 KiB is zeros.
    b.resize(64 << 10, 0);
    b
}

fn region_table(bat_len: u64) -> Vec<u8> {
    let mut b = vec![0u8; 64 << 10];
    put(&mut b, 0, b"regi");
    put(&mut b, 8, &2u32.to_le_bytes());
    for (i, (id, at, len)) in [
        (REGION_BAT, BAT_AT, bat_len),
        (REGION_METADATA, METADATA_AT, METADATA_LEN),
    ]
    .into_iter()
    .enumerate()
    {
        let e = 16 + i * 32;
        put(&mut b, e, &id);
        put(&mut b, e + 16, &at.to_le_bytes());
        // Bounded: the BAT of a 64 TiB disk is 256 MiB.
        put(&mut b, e + 24, &(len as u32).to_le_bytes());
        put(&mut b, e + 28, &1u32.to_le_bytes());
    }
    seal(&mut b);
    b
}

fn metadata(disk: u64, disk_id: [u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; METADATA_LEN as usize];
    put(&mut b, 0, b"metadata");
    let mut params = Vec::new();
    params.extend_from_slice(&(BLOCK as u32).to_le_bytes());
    params.extend_from_slice(&0u32.to_le_bytes());
    let items: [([u8; 16], Vec<u8>, u32); 5] = [
        (FILE_PARAMETERS, params, IS_REQUIRED),
        (
            VIRTUAL_DISK_SIZE,
            disk.to_le_bytes().to_vec(),
            IS_VIRTUAL_DISK | IS_REQUIRED,
        ),
        (
            VIRTUAL_DISK_ID,
            disk_id.to_vec(),
            IS_VIRTUAL_DISK | IS_REQUIRED,
        ),
        (
            LOGICAL_SECTOR_SIZE,
            (LOGICAL_SECTOR as u32).to_le_bytes().to_vec(),
            IS_VIRTUAL_DISK | IS_REQUIRED,
        ),
        (
            PHYSICAL_SECTOR_SIZE,
            PHYSICAL_SECTOR.to_le_bytes().to_vec(),
            IS_VIRTUAL_DISK | IS_REQUIRED,
        ),
    ];
    put(&mut b, 10, &(items.len() as u16).to_le_bytes());
    // Items follow the 64 KiB table.
    let mut at = 64usize << 10;
    for (i, (id, value, flags)) in items.iter().enumerate() {
        let e = 32 + i * 32;
        put(&mut b, e, id);
        put(&mut b, e + 16, &(at as u32).to_le_bytes());
        put(&mut b, e + 20, &(value.len() as u32).to_le_bytes());
        put(&mut b, e + 24, &flags.to_le_bytes());
        put(&mut b, at, value);
        at += value.len();
    }
    b
}

/// Write `src` as a dynamic VHDX to `out`, front to back. `ids` are the file write, data
/// write and virtual disk ids (random for a new disk).
pub fn write_vhdx(
    src: &dyn BlockSource,
    out: &mut dyn std::io::Write,
    ids: [[u8; 16]; 3],
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Written> {
    if u64::from(src.block_size()) > BLOCK {
        return Err(ImageError::Invalid(format!(
            "a block size of {} bytes does not fit a VHDX block",
            src.block_size()
        )));
    }
    let disk = src.size().div_ceil(LOGICAL_SECTOR) * LOGICAL_SECTOR;
    if disk > MAX_DISK {
        return Err(ImageError::Invalid(format!(
            "a VHDX holds at most 64 TiB; this disk has {disk} bytes"
        )));
    }
    let blocks = disk.div_ceil(BLOCK);
    let allocated = allocated_units(src, BLOCK, blocks);
    let entries = blocks + blocks.saturating_sub(1) / CHUNK_RATIO;
    let bat_len = (entries * 8).div_ceil(MIB).max(1) * MIB;
    let data_at = BAT_AT + bat_len;

    let mut out = Output::new(out, "VHDX");
    out.put(&identifier())?;
    let [file_write, data_write, disk_id] = ids;
    out.put(&header(1, file_write, data_write))?;
    out.put(&header(2, file_write, data_write))?;
    let regions = region_table(bat_len);
    out.put(&regions)?;
    out.put(&regions)?;
    // Up to the log, then the empty log.
    out.put(&vec![0u8; (LOG_AT - (320 << 10) + LOG_LEN) as usize])?;
    out.put(&metadata(disk, disk_id))?;

    let mut bat = Vec::with_capacity(usize::try_from(bat_len).unwrap_or(0));
    let mut stored = 0u64;
    for (b, &a) in allocated.iter().enumerate() {
        let entry = if a {
            stored += 1;
            let offset_mib = (data_at + (stored - 1) * BLOCK) / MIB;
            (offset_mib << 20) | BLOCK_FULLY_PRESENT
        } else {
            BLOCK_NOT_PRESENT
        };
        bat.extend_from_slice(&entry.to_le_bytes());
        // A sector-bitmap entry after every chunk (not present: no parent disk).
        if (b as u64 + 1).is_multiple_of(CHUNK_RATIO) && (b as u64 + 1) < blocks {
            bat.extend_from_slice(&BLOCK_NOT_PRESENT.to_le_bytes());
        }
    }
    bat.resize(usize::try_from(bat_len).unwrap_or(0), 0);
    out.put(&bat)?;

    let data_bytes = write_units(src, BLOCK, &allocated, &[], &mut out, progress, cancel)?;
    out.finish(data_bytes, disk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vdisk::test_support::round_trip;

    #[test]
    fn guids_are_in_windows_byte_order() {
        assert_eq!(
            REGION_BAT,
            [
                0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD,
                0x4A, 0x08
            ]
        );
    }

    #[test]
    fn a_sparse_disk_reads_back_from_vhdx() {
        let size = (21 << 20) + 4096;
        round_trip(
            "vhdx",
            size,
            32 << 10,
            &[(0, 32 << 10), (3 << 20, 5 << 20), (size - 8192, 8192)],
        );
    }

    #[test]
    fn large_disks_interleave_sector_bitmap_entries() {
        // 4 GiB + 6 MiB: 2051 payload blocks, so a sector-bitmap entry after the 2048th;
        // data in the first block, across the chunk's end and in the last block.
        let size = (4u64 << 30) + (6 << 20);
        if let Some(w) = round_trip(
            "vhdx",
            size,
            1 << 20,
            &[
                (0, 1 << 20),
                ((4 << 30) - (2 << 20), 6 << 20),
                (size - (1 << 20), 1 << 20),
            ],
        ) {
            assert_eq!(w.disk_bytes, size);
        }
    }
}
