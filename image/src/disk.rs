//! Partition tables: MBR (with extended partitions) and GPT.
//!
//! [`read_partition_table`] finds where each data partition of a whole disk lies, so each
//! can be imaged by its own filesystem reader. A disk without a table (a bare filesystem,
//! or an unknown layout) is `Ok(None)`: the caller treats it as one volume.

use crate::io::ReadAt;
use crate::le::{u32_at as le32, u64_at as le64};

/// Which kind of partition table a disk carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// The DOS master boot record, possibly with logical partitions in an extended one.
    Mbr,
    /// The UEFI GUID partition table.
    Gpt,
}

/// One data partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The number Linux gives it: MBR primaries 1-4, logicals 5 on; GPT entry index + 1.
    pub number: u32,
    /// Byte offset from the start of the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// MBR: the type byte as `"0x83"`; GPT: the type GUID, lowercase.
    pub type_id: String,
    /// GPT: the unique partition GUID, lowercase.
    pub uuid: Option<String>,
    /// GPT: the partition name, when not empty.
    pub name: Option<String>,
}

/// A disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    /// MBR or GPT.
    pub kind: TableKind,
    /// MBR: the disk signature as `"0x1234abcd"`; GPT: the disk GUID, lowercase.
    pub disk_id: String,
    /// The logical sector size the table was read with.
    pub sector_size: u32,
    /// Data partitions in table order: no MBR extended container, no empty GPT entry.
    pub partitions: Vec<Partition>,
}

/// Why a partition table could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// The disk could not be read.
    #[error("reading the partition table at offset {offset}: {cause}")]
    Io {
        /// Byte offset of the failed read.
        offset: u64,
        /// The underlying error (in the message, not also a `source`).
        cause: std::io::Error,
    },
    /// A table is present but inconsistent.
    #[error("the partition table is damaged: {detail}")]
    Corrupt {
        /// What is wrong.
        detail: String,
    },
}

fn corrupt(detail: impl Into<String>) -> DiskError {
    DiskError::Corrupt {
        detail: detail.into(),
    }
}

/// MBR partition types that hold an EBR chain of logical partitions.
const EXTENDED_TYPES: [u8; 3] = [0x05, 0x0F, 0x85];
const PROTECTIVE_TYPE: u8 = 0xEE;
/// Longest EBR chain followed; real disks stay far below, a loop would not end.
const MAX_LOGICALS: usize = 256;
/// Largest GPT entry array read (the usual one is 16 KiB).
const MAX_GPT_ENTRIES_BYTES: u64 = 4 << 20;

/// Read the partition table of a whole disk.
///
/// `Ok(None)` when there is none: the sector 0 signature `0x55AA` is missing; or it is
/// present but the sector is a FAT, exFAT or NTFS boot sector (a bare filesystem, which
/// ends in the same signature); or the MBR entries are empty, overlap or lie outside the
/// disk. A protective MBR (type `0xEE`) means GPT: the primary header at LBA 1 is used when
/// its CRCs hold, otherwise the backup at the last LBA; if neither is valid the table is
/// [`DiskError::Corrupt`]. MBR logical partitions are found by following the EBR chain.
pub fn read_partition_table(
    disk: &dyn ReadAt,
    sector_size: u32,
) -> Result<Option<PartitionTable>, DiskError> {
    if !sector_size.is_power_of_two() || !(512..=4096).contains(&sector_size) {
        return Err(corrupt(format!("unsupported sector size {sector_size}")));
    }
    let ss = u64::from(sector_size);
    if disk.size() < ss {
        return Ok(None);
    }
    let mbr = read_sector(disk, 0, ss)?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok(None);
    }
    let entries = mbr_entries(&mbr);
    if entries.iter().any(|e| e.kind == PROTECTIVE_TYPE) {
        return read_gpt(disk, ss).map(Some);
    }
    if is_filesystem_boot_sector(disk, &mbr) {
        return Ok(None);
    }
    read_mbr(disk, ss, &mbr, &entries)
}

fn read_at(disk: &dyn ReadAt, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
    disk.read_exact_at(buf, offset)
        .map_err(|cause| DiskError::Io { offset, cause })
}

fn read_sector(disk: &dyn ReadAt, lba: u64, ss: u64) -> Result<Vec<u8>, DiskError> {
    let mut buf = vec![0u8; usize::try_from(ss).unwrap_or(512)];
    let offset = lba
        .checked_mul(ss)
        .ok_or_else(|| corrupt(format!("sector {lba} is out of range")))?;
    read_at(disk, &mut buf, offset)?;
    Ok(buf)
}

/// A volume boot sector rather than an MBR: FAT (as the FAT reader recognises it, even
/// when damaged), exFAT or NTFS.
fn is_filesystem_boot_sector(disk: &dyn ReadAt, sector0: &[u8]) -> bool {
    use crate::fs::FilesystemReader;
    let oem = &sector0[3..11];
    if oem == b"EXFAT   " || oem == b"NTFS    " {
        return true;
    }
    !matches!(crate::fs::fat::FatReader.probe(disk), Ok(None))
}

// ---------------------------------------------------------------------------------------
// MBR

/// One 16-byte MBR or EBR entry.
#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    status: u8,
    kind: u8,
    /// First sector, relative to what the table is relative to.
    start: u64,
    sectors: u64,
}

impl MbrEntry {
    fn is_empty(&self) -> bool {
        self.kind == 0 || self.sectors == 0
    }

    fn is_extended(&self) -> bool {
        EXTENDED_TYPES.contains(&self.kind)
    }
}

fn mbr_entries(sector: &[u8]) -> [MbrEntry; 4] {
    std::array::from_fn(|i| {
        let e = 446 + 16 * i;
        MbrEntry {
            status: sector[e],
            kind: sector[e + 4],
            start: u64::from(le32(sector, e + 8)),
            sectors: u64::from(le32(sector, e + 12)),
        }
    })
}

fn read_mbr(
    disk: &dyn ReadAt,
    ss: u64,
    mbr: &[u8],
    entries: &[MbrEntry; 4],
) -> Result<Option<PartitionTable>, DiskError> {
    let disk_sectors = disk.size() / ss;
    // Anything not shaped like a partition table means "no table": imaging the whole
    // disk is the safe answer to an unknown layout.
    let used: Vec<(usize, &MbrEntry)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.is_empty())
        .collect();
    let sane = !used.is_empty()
        && entries.iter().all(|e| e.status == 0 || e.status == 0x80)
        && used
            .iter()
            .all(|(_, e)| e.start >= 1 && e.start + e.sectors <= disk_sectors)
        && used.iter().enumerate().all(|(i, (_, a))| {
            used[i + 1..]
                .iter()
                .all(|(_, b)| a.start + a.sectors <= b.start || b.start + b.sectors <= a.start)
        });
    if !sane {
        return Ok(None);
    }

    let mut partitions = Vec::new();
    for &(slot, e) in &used {
        if e.is_extended() {
            continue;
        }
        partitions.push(mbr_partition(slot as u32 + 1, e, 0, ss));
    }
    // Linux follows the first extended partition only.
    if let Some((_, ext)) = used.iter().find(|(_, e)| e.is_extended()) {
        read_logicals(disk, ss, ext, &mut partitions)?;
    }
    Ok(Some(PartitionTable {
        kind: TableKind::Mbr,
        disk_id: format!("0x{:08x}", le32(mbr, 440)),
        sector_size: u32::try_from(ss).unwrap_or(512),
        partitions,
    }))
}

fn mbr_partition(number: u32, e: &MbrEntry, base: u64, ss: u64) -> Partition {
    Partition {
        number,
        start: (base + e.start) * ss,
        len: e.sectors * ss,
        type_id: format!("0x{:02x}", e.kind),
        uuid: None,
        name: None,
    }
}

/// Follow the EBR chain inside `ext`. Each EBR's first data entry is a logical partition
/// relative to that EBR; its first extended entry points to the next EBR, relative to the
/// start of `ext`. Numbers continue from 5 as Linux assigns them.
fn read_logicals(
    disk: &dyn ReadAt,
    ss: u64,
    ext: &MbrEntry,
    partitions: &mut Vec<Partition>,
) -> Result<(), DiskError> {
    let ext_end = ext.start + ext.sectors;
    let mut ebr = ext.start;
    let mut number = 5;
    for _ in 0..MAX_LOGICALS {
        let sector = read_sector(disk, ebr, ss)?;
        if sector[510..512] != [0x55, 0xAA] {
            return Err(corrupt(format!(
                "the extended boot record at sector {ebr} has no signature"
            )));
        }
        let entries = mbr_entries(&sector);
        for e in entries.iter().filter(|e| !e.is_empty() && !e.is_extended()) {
            if ebr + e.start + e.sectors > ext_end {
                return Err(corrupt(format!(
                    "logical partition {number} ends past its extended partition"
                )));
            }
            partitions.push(mbr_partition(number, e, ebr, ss));
            number += 1;
        }
        let Some(next) = entries.iter().find(|e| !e.is_empty() && e.is_extended()) else {
            return Ok(());
        };
        let next_ebr = ext.start + next.start;
        // Each link must move forward inside the container; this also rules out loops.
        if next_ebr <= ebr || next_ebr >= ext_end {
            return Err(corrupt(format!(
                "the extended boot record chain breaks at sector {ebr}"
            )));
        }
        ebr = next_ebr;
    }
    Err(corrupt(format!(
        "more than {MAX_LOGICALS} logical partitions"
    )))
}

// ---------------------------------------------------------------------------------------
// GPT

/// The parts of a GPT header the table needs.
struct GptHeader {
    disk_guid: [u8; 16],
    entries_lba: u64,
    entry_count: u64,
    entry_size: u64,
    entries_crc: u32,
}

/// Use the primary GPT; fall back to the backup at the last LBA when it is damaged.
fn read_gpt(disk: &dyn ReadAt, ss: u64) -> Result<PartitionTable, DiskError> {
    let disk_sectors = disk.size() / ss;
    let last_lba = disk_sectors - 1;
    let primary = read_gpt_copy(disk, ss, 1);
    let (header, entries) = match primary {
        Ok(copy) => copy,
        Err(primary_err) => read_gpt_copy(disk, ss, last_lba).map_err(|backup_err| {
            corrupt(format!(
                "protective MBR but no valid GPT: primary: {primary_err}; backup: {backup_err}"
            ))
        })?,
    };
    let mut partitions = Vec::new();
    for (index, e) in entries
        .chunks_exact(usize::try_from(header.entry_size).unwrap_or(128))
        .enumerate()
    {
        let type_guid: [u8; 16] = guid_bytes(&e[0..16]);
        if type_guid == [0; 16] {
            continue;
        }
        let first = le64(e, 32);
        let last = le64(e, 40);
        // Linux only requires entries to lie on the disk; so do we.
        if first == 0 || first > last || last >= disk_sectors {
            return Err(corrupt(format!(
                "GPT entry {} spans sectors {first}..={last}, outside the disk",
                index + 1
            )));
        }
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        let name = String::from_utf16_lossy(&name);
        partitions.push(Partition {
            number: u32::try_from(index + 1).unwrap_or(u32::MAX),
            start: first * ss,
            len: (last - first + 1) * ss,
            type_id: guid_text(&type_guid),
            uuid: Some(guid_text(&guid_bytes(&e[16..32]))),
            name: (!name.is_empty()).then_some(name),
        });
    }
    Ok(PartitionTable {
        kind: TableKind::Gpt,
        disk_id: guid_text(&header.disk_guid),
        sector_size: u32::try_from(ss).unwrap_or(512),
        partitions,
    })
}

/// Read and check one GPT copy: header at `lba`, then its entry array.
fn read_gpt_copy(disk: &dyn ReadAt, ss: u64, lba: u64) -> Result<(GptHeader, Vec<u8>), DiskError> {
    let sector = read_sector(disk, lba, ss)?;
    if &sector[0..8] != b"EFI PART" {
        return Err(corrupt(format!("no GPT header signature at sector {lba}")));
    }
    let header_size = u64::from(le32(&sector, 12));
    if header_size < 92 || header_size > ss {
        return Err(corrupt(format!("GPT header size {header_size}")));
    }
    let mut hdr = sector[..header_size as usize].to_vec();
    let stored = le32(&hdr, 16);
    hdr[16..20].fill(0);
    if crc32(&hdr) != stored {
        return Err(corrupt(format!("GPT header CRC mismatch at sector {lba}")));
    }
    if le64(&hdr, 24) != lba {
        return Err(corrupt(format!(
            "the GPT header at sector {lba} names itself {}",
            le64(&hdr, 24)
        )));
    }
    let header = GptHeader {
        disk_guid: guid_bytes(&hdr[56..72]),
        entries_lba: le64(&hdr, 72),
        entry_count: u64::from(le32(&hdr, 80)),
        entry_size: u64::from(le32(&hdr, 84)),
        entries_crc: le32(&hdr, 88),
    };
    let disk_sectors = disk.size() / ss;
    if header.entry_size < 128 || !header.entry_size.is_multiple_of(8) {
        return Err(corrupt(format!("GPT entry size {}", header.entry_size)));
    }
    let array_bytes = header.entry_count * header.entry_size;
    if array_bytes > MAX_GPT_ENTRIES_BYTES {
        return Err(corrupt(format!("GPT entry array of {array_bytes} bytes")));
    }
    let array_end = header.entries_lba.saturating_add(array_bytes.div_ceil(ss));
    if header.entries_lba < 2 || array_end > disk_sectors {
        return Err(corrupt(format!(
            "GPT entry array at sector {} lies outside the disk",
            header.entries_lba
        )));
    }
    let mut entries = vec![0u8; usize::try_from(array_bytes).unwrap_or(0)];
    read_at(disk, &mut entries, header.entries_lba * ss)?;
    if crc32(&entries) != header.entries_crc {
        return Err(corrupt(format!(
            "GPT entry array CRC mismatch (header at sector {lba})"
        )));
    }
    Ok((header, entries))
}

/// Bytes to write at a disk offset.
pub type SectorWrite = (u64, Vec<u8>);

/// After a whole-disk restore onto a larger disk, the GPT's backup copy still sits where the
/// old disk ended. This returns the sector writes (offset, bytes) that move it to the new
/// end and grow the usable area and the protective MBR, as `sgdisk -e` does; `None` when the
/// table already ends at the disk's end.
pub fn gpt_relocation(
    disk: &dyn ReadAt,
    sector_size: u32,
) -> Result<Option<Vec<SectorWrite>>, DiskError> {
    let ss = u64::from(sector_size);
    let last = (disk.size() / ss).saturating_sub(1);
    let (header, entries) = read_gpt_copy(disk, ss, 1)?;
    let mut primary = read_sector(disk, 1, ss)?;
    let old_alt = le64(&primary, 32);
    if old_alt == last {
        return Ok(None);
    }
    if old_alt > last {
        return Err(corrupt(format!(
            "the GPT ends at sector {old_alt}, past the disk's last sector {last}"
        )));
    }
    let header_size = le32(&primary, 12) as usize;
    let backup_entries = last - (header.entry_count * header.entry_size).div_ceil(ss);
    let seal = |sector: &mut Vec<u8>| {
        sector[16..20].fill(0);
        let crc = crc32(&sector[..header_size]);
        sector[16..20].copy_from_slice(&crc.to_le_bytes());
    };
    primary[32..40].copy_from_slice(&last.to_le_bytes());
    primary[48..56].copy_from_slice(&(backup_entries - 1).to_le_bytes());
    seal(&mut primary);
    let mut backup = primary.clone();
    backup[24..32].copy_from_slice(&last.to_le_bytes());
    backup[32..40].copy_from_slice(&1u64.to_le_bytes());
    backup[72..80].copy_from_slice(&backup_entries.to_le_bytes());
    seal(&mut backup);
    let mut mbr = read_sector(disk, 0, ss)?;
    for i in 0..4 {
        let e = 446 + 16 * i;
        if mbr[e + 4] == PROTECTIVE_TYPE {
            let count = u32::try_from(last).unwrap_or(u32::MAX);
            mbr[e + 12..e + 16].copy_from_slice(&count.to_le_bytes());
        }
    }
    Ok(Some(vec![
        (old_alt * ss, vec![0u8; sector_size as usize]),
        (backup_entries * ss, entries),
        (last * ss, backup),
        (ss, primary),
        (0, mbr),
    ]))
}

fn guid_bytes(b: &[u8]) -> [u8; 16] {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[..16]);
    g
}

/// The text form of a GUID stored the Microsoft way: the first three groups little-endian.
fn guid_text(g: &[u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]
    )
}

/// CRC-32 (IEEE 802.3, reflected, as GPT uses), one table lookup per byte.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data
        .iter()
        .fold(!0u32, |c, &b| TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::test_support::{open, pseudo_random, run, tool};
    use crate::io::SliceReadAt;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use tempfile::TempDir;

    const DISK_SIZE: u64 = 64 << 20;

    /// A sparse 64 MiB disk partitioned by `sfdisk` from `script`.
    fn partitioned(script: &str) -> Option<(TempDir, PathBuf)> {
        let sfdisk = tool("sfdisk")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("disk.img");
        std::fs::File::create(&disk)
            .expect("create")
            .set_len(DISK_SIZE)
            .expect("size");
        let mut child = Command::new(sfdisk)
            .arg("-q")
            .arg(&disk)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn sfdisk");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), script.as_bytes())
            .expect("script");
        assert!(
            child.wait().expect("wait").success(),
            "sfdisk failed on {script}"
        );
        Some((dir, disk))
    }

    /// One partition as compared: (number, start, length, type, uuid, name).
    type Row = (u32, u64, u64, String, Option<String>, Option<String>);

    /// What `sfdisk --json` says: the disk id and each data partition, in bytes.
    fn sfdisk_view(disk: &Path) -> (String, Vec<Row>) {
        let out = run(Command::new(tool("sfdisk").expect("sfdisk"))
            .arg("--json")
            .arg(disk));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let table = &json["partitiontable"];
        let ss = table["sectorsize"].as_u64().unwrap_or(512);
        let text = |v: &serde_json::Value| v.as_str().map(str::to_lowercase);
        let mut parts = Vec::new();
        for p in table["partitions"].as_array().expect("partitions") {
            let kind = text(&p["type"]).expect("type");
            if table["label"] == "dos" && ["5", "f", "85"].contains(&kind.as_str()) {
                continue;
            }
            let node = p["node"].as_str().expect("node");
            let digits = node.len() - node.chars().rev().take_while(char::is_ascii_digit).count();
            let number: u32 = node[digits..].parse().expect("number");
            let start = p["start"].as_u64().expect("start") * ss;
            let size = p["size"].as_u64().expect("size") * ss;
            let kind = if table["label"] == "dos" {
                format!("0x{:0>2}", kind)
            } else {
                kind
            };
            parts.push((
                number,
                start,
                size,
                kind,
                text(&p["uuid"]),
                p["name"].as_str().map(String::from),
            ));
        }
        (text(&table["id"]).expect("id"), parts)
    }

    fn our_view(table: &PartitionTable) -> (String, Vec<Row>) {
        let parts = table
            .partitions
            .iter()
            .map(|p| {
                (
                    p.number,
                    p.start,
                    p.len,
                    p.type_id.clone(),
                    p.uuid.clone(),
                    p.name.clone(),
                )
            })
            .collect();
        (table.disk_id.clone(), parts)
    }

    fn read(disk: &Path) -> Result<Option<PartitionTable>, DiskError> {
        read_partition_table(&open(disk), 512)
    }

    const GPT_SCRIPT: &str = "label: gpt\n\
        size=10MiB, name=\"alpha\"\n\
        size=20MiB, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name=\"beta swap\"\n\
        type=L\n";

    #[test]
    fn crc32_known_answer() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn gpt_matches_sfdisk() {
        let Some((_dir, disk)) = partitioned(GPT_SCRIPT) else {
            return;
        };
        let table = read(&disk).expect("read").expect("table");
        assert_eq!(table.kind, TableKind::Gpt);
        assert_eq!(table.sector_size, 512);
        assert_eq!(table.partitions.len(), 3);
        assert_eq!(table.partitions[1].name.as_deref(), Some("beta swap"));
        assert_eq!(table.partitions[2].name, None);
        assert_eq!(our_view(&table), sfdisk_view(&disk));
    }

    fn scribble(disk: &Path, offset: u64, bytes: &[u8]) {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(disk)
            .expect("open");
        file.write_all_at(bytes, offset).expect("write");
    }

    #[test]
    fn gpt_backup_replaces_a_damaged_primary() {
        let Some((_dir, disk)) = partitioned(GPT_SCRIPT) else {
            return;
        };
        let good = read(&disk).expect("read").expect("table");
        // Protective MBR, primary header and primary entry array.
        let mut head = vec![0u8; 34 * 512];
        open(&disk).read_exact_at(&mut head, 0).expect("read head");

        // Header damage (inside the disk GUID): the header CRC no longer matches. Trusting
        // it would change the disk id.
        scribble(&disk, 512 + 60, b"\xff\xff");
        assert_eq!(read(&disk).expect("read").expect("table"), good);

        // Entry array damage (partition 1's last LBA), header intact: the array CRC no
        // longer matches. Trusting it would change partition 1's length.
        scribble(&disk, 0, &head);
        scribble(&disk, 1024 + 40, b"\x12");
        assert_eq!(read(&disk).expect("read").expect("table"), good);

        // Both copies gone: a protective MBR over nothing is damage, not "no table".
        scribble(&disk, DISK_SIZE - 512, b"NOT PART");
        match read(&disk) {
            Err(DiskError::Corrupt { detail }) => {
                assert!(detail.contains("no valid GPT"), "{detail}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn mbr_with_logicals_matches_sfdisk() {
        let script = "label: dos\nlabel-id: 0x1234abcd\n\
            size=10MiB, type=83\ntype=5\nsize=10MiB, type=83\nsize=12MiB, type=c\n";
        let Some((_dir, disk)) = partitioned(script) else {
            return;
        };
        let table = read(&disk).expect("read").expect("table");
        assert_eq!(table.kind, TableKind::Mbr);
        assert_eq!(table.disk_id, "0x1234abcd");
        let numbers: Vec<u32> = table.partitions.iter().map(|p| p.number).collect();
        assert_eq!(numbers, vec![1, 5, 6]);
        assert_eq!(table.partitions[2].type_id, "0x0c");
        assert_eq!(our_view(&table), sfdisk_view(&disk));
    }

    #[test]
    fn filesystem_in_a_partition_is_detected() {
        let Some((dir, disk)) = partitioned(GPT_SCRIPT) else {
            return;
        };
        let Some(mkfs) = tool("mkfs.ext4") else {
            return;
        };
        let table = read(&disk).expect("read").expect("table");
        let p = &table.partitions[0];
        run(Command::new(mkfs)
            .args(["-q", "-F", "-L", "inpart", "-E"])
            .arg(format!("offset={}", p.start))
            .arg(&disk)
            .arg(format!("{}k", p.len / 1024)));
        let vol = SliceReadAt::new(open(&disk), p.start, p.len);
        let found = crate::fs::detect(&vol).expect("detect").expect("ext4");
        assert_eq!(found.info.label.as_deref(), Some("inpart"));
        assert_eq!(found.info.fs_size, p.len);
        // The table survives mkfs (it wrote only inside the partition).
        assert_eq!(read(&disk).expect("read").expect("table"), table);
        drop(dir);
    }

    #[test]
    fn bare_filesystems_and_noise_have_no_table() {
        let zeros = vec![0u8; 1 << 20];
        assert_eq!(read_partition_table(&zeros, 512).expect("zeros"), None);
        assert_eq!(
            read_partition_table(&vec![0u8; 100], 512).expect("tiny"),
            None
        );
        // Signed noise: entries that overlap or leave the disk are not a table.
        for seed in 1..30 {
            let mut noise = pseudo_random(1 << 20, seed);
            noise[510] = 0x55;
            noise[511] = 0xAA;
            let got = read_partition_table(&noise, 512);
            assert!(matches!(got, Ok(None)), "seed {seed}: {got:?}");
        }

        let dir = tempfile::tempdir().expect("tempdir");
        for (mkfs, args) in [
            ("mkfs.fat", &["-F", "16"][..]),
            ("mkfs.fat", &["-F", "32"]),
            ("mkfs.ext4", &["-q", "-F"]),
        ] {
            let Some(mkfs) = tool(mkfs) else { return };
            let image = dir.path().join("bare.img");
            std::fs::File::create(&image)
                .expect("create")
                .set_len(DISK_SIZE)
                .expect("size");
            run(Command::new(mkfs).args(args).arg(&image));
            assert_eq!(read(&image).expect("read"), None, "{args:?}");
        }
    }

    /// An MBR with one extended partition whose EBR is built by `ebr`.
    fn mbr_with_extended(ebr: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut disk = vec![0u8; 4 << 20];
        let entry = |d: &mut [u8], at: usize, kind: u8, start: u32, sectors: u32| {
            d[at + 4] = kind;
            d[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
            d[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
        };
        entry(&mut disk, 446, 0x83, 2048, 2048);
        entry(&mut disk, 462, 0x05, 4096, 4096);
        disk[510] = 0x55;
        disk[511] = 0xAA;
        let e = 4096 * 512;
        disk[e + 510] = 0x55;
        disk[e + 511] = 0xAA;
        entry(&mut disk, e + 446, 0x83, 1, 100);
        ebr(&mut disk[e..e + 512]);
        disk
    }

    #[test]
    fn ebr_chains_that_loop_or_stray_are_corrupt() {
        let ok = mbr_with_extended(|_| {});
        let table = read_partition_table(&ok, 512)
            .expect("read")
            .expect("table");
        assert_eq!(table.partitions.len(), 2);
        assert_eq!(table.partitions[1].start, (4096 + 1) * 512);

        // The chain points back at itself.
        let looped = mbr_with_extended(|ebr| {
            ebr[462 + 4] = 0x05;
            ebr[462 + 12..462 + 16].copy_from_slice(&100u32.to_le_bytes());
        });
        assert!(matches!(
            read_partition_table(&looped, 512),
            Err(DiskError::Corrupt { .. })
        ));

        // A logical partition leaving its container.
        let stray = mbr_with_extended(|ebr| {
            ebr[446 + 12..446 + 16].copy_from_slice(&9000u32.to_le_bytes())
        });
        assert!(matches!(
            read_partition_table(&stray, 512),
            Err(DiskError::Corrupt { .. })
        ));

        // A missing EBR signature.
        let unsigned = mbr_with_extended(|ebr| ebr[510] = 0);
        assert!(matches!(
            read_partition_table(&unsigned, 512),
            Err(DiskError::Corrupt { .. })
        ));
    }

    #[test]
    fn random_table_damage_never_panics() {
        let mbr = "label: dos\nsize=10MiB, type=83\ntype=5\nsize=10MiB\nsize=12MiB\n";
        for script in [mbr, GPT_SCRIPT] {
            let Some((_dir, disk)) = partitioned(script) else {
                return;
            };
            let mut img = std::fs::read(&disk).expect("read");
            // The EBRs of the script above sit at sectors 22528 and 43008 (or GPT entries).
            let targets = [0usize, 512, 1024, 22528 * 512, 43008 * 512];
            let noise = pseudo_random(4 * 2000, 23);
            for hit in noise.chunks_exact(4) {
                let base = targets[usize::from(hit[0]) % targets.len()];
                let (a, b) = (
                    base + 430 + usize::from(hit[1]) % 82,
                    base + usize::from(hit[3]) * 2,
                );
                let (old_a, old_b) = (img[a], img[b]);
                img[a] = hit[2];
                img[b] ^= hit[3];
                let _ = read_partition_table(&img, 512);
                // Undo (both were saved before either write, so a == b is fine).
                img[b] = old_b;
                img[a] = old_a;
            }
        }
    }
}
