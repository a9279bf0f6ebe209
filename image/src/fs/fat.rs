//! FAT12, FAT16 and FAT32: used clusters from the file allocation table.
//!
//! A FAT volume is laid out as: reserved sectors (boot sector, FAT32 FSInfo and backup boot
//! sector), the FAT copies, the fixed root directory (FAT12/16 only), then the data clusters
//! numbered from 2. The used set is everything before the data clusters plus every cluster
//! whose entry in the active FAT is non-zero. Bad-cluster markers count as used: copying
//! them costs little and keeps the image faithful.
//!
//! The FAT type follows the Microsoft specification (fewer than 4085 clusters: FAT12;
//! fewer than 65525: FAT16; otherwise FAT32), except that a boot sector with the FAT32
//! layout (16-bit FAT size zero) is always FAT32, as Linux and dosfstools read it:
//! `mkfs.fat -F 32` makes such volumes with fewer clusters than the specification's minimum.
//!
//! exFAT and NTFS boot sectors also end in `0x55AA` but are not FAT; they are not claimed.

use super::{le16, le32, padded_text, read_at, FilesystemReader, FsError, FsInfo};
use crate::extents::Extents;
use crate::io::ReadAt;

const FS: &str = "fat";
const BOOT_SECTOR: usize = 512;
/// The FAT is read in pieces of this size, so a large FAT32 does not need one huge buffer.
const CHUNK_BYTES: u64 = 1 << 20;
/// Cluster counts at which FAT16 and FAT32 begin (Microsoft FAT specification).
const FAT16_MIN_CLUSTERS: u64 = 4085;
const FAT32_MIN_CLUSTERS: u64 = 65525;

/// Reads FAT12, FAT16 and FAT32 volumes.
#[derive(Debug, Clone, Copy, Default)]
pub struct FatReader;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    fn name(self) -> &'static str {
        match self {
            Self::Fat12 => "fat12",
            Self::Fat16 => "fat16",
            Self::Fat32 => "fat32",
        }
    }
}

/// The BIOS parameter block, validated, with the derived layout.
#[derive(Debug)]
struct Bpb {
    fat_type: FatType,
    bytes_per_sector: u64,
    cluster_bytes: u64,
    reserved_sectors: u64,
    fat_sectors: u64,
    total_sectors: u64,
    /// First sector of cluster 2; everything before it is metadata.
    first_data_sector: u64,
    clusters: u64,
    /// FAT32 only: the first cluster of the root directory.
    root_cluster: Option<u64>,
    /// Which FAT copy is authoritative (FAT32 can disable mirroring).
    active_fat: u64,
    serial: Option<u32>,
    label: Option<String>,
}

impl Bpb {
    fn read(vol: &dyn ReadAt) -> Result<Option<Self>, FsError> {
        if vol.size() < BOOT_SECTOR as u64 {
            return Ok(None);
        }
        let mut raw = [0u8; BOOT_SECTOR];
        read_at(vol, FS, &mut raw, 0)?;
        Self::parse(&raw)
    }

    /// `Ok(None)` unless the sector carries a plausible FAT boot sector; `Corrupt` when it
    /// does but the layout it describes is impossible.
    fn parse(b: &[u8; BOOT_SECTOR]) -> Result<Option<Self>, FsError> {
        if b[510..512] != [0x55, 0xAA] || !(b[0] == 0xEB || b[0] == 0xE9) {
            return Ok(None);
        }
        if &b[3..11] == b"EXFAT   " || &b[3..11] == b"NTFS    " {
            return Ok(None);
        }
        let bytes_per_sector = u64::from(le16(b, 11));
        let sectors_per_cluster = u64::from(b[13]);
        let reserved_sectors = u64::from(le16(b, 14));
        let num_fats = u64::from(b[16]);
        let root_entries = u64::from(le16(b, 17));
        let media = b[21];
        let total_sectors = match le16(b, 19) {
            0 => u64::from(le32(b, 32)),
            n => u64::from(n),
        };
        let fat32_layout = le16(b, 22) == 0;
        let fat_sectors = if fat32_layout {
            u64::from(le32(b, 36))
        } else {
            u64::from(le16(b, 22))
        };
        let plausible = matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
            && sectors_per_cluster.is_power_of_two()
            && sectors_per_cluster <= 128
            && reserved_sectors >= 1
            && (1..=16).contains(&num_fats)
            && (media == 0xF0 || media >= 0xF8)
            && total_sectors > 0
            && fat_sectors > 0;
        if !plausible {
            return Ok(None);
        }

        let root_dir_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
        let first_data_sector = reserved_sectors + num_fats * fat_sectors + root_dir_sectors;
        if first_data_sector >= total_sectors {
            return Err(FsError::corrupt(FS, format!(
                "the data area starts at sector {first_data_sector}, past the last sector {total_sectors}"
            )));
        }
        let clusters = (total_sectors - first_data_sector) / sectors_per_cluster;
        if clusters == 0 {
            return Err(FsError::corrupt(FS, "there are no data clusters"));
        }
        let fat_type = if fat32_layout {
            if root_entries != 0 {
                return Err(FsError::corrupt(
                    FS,
                    "a FAT32 boot sector with a fixed root directory",
                ));
            }
            FatType::Fat32
        } else if clusters < FAT16_MIN_CLUSTERS {
            FatType::Fat12
        } else if clusters < FAT32_MIN_CLUSTERS {
            FatType::Fat16
        } else {
            return Err(FsError::corrupt(
                FS,
                format!(
                    "{clusters} clusters need FAT32, but the boot sector has the FAT12/16 layout"
                ),
            ));
        };
        let entry_bits = match fat_type {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        };
        if fat_sectors * bytes_per_sector * 8 / entry_bits < clusters + 2 {
            return Err(FsError::corrupt(
                FS,
                format!("a FAT of {fat_sectors} sectors cannot map {clusters} clusters"),
            ));
        }

        // Fields after the BPB differ between FAT12/16 and FAT32.
        let (ext, root_cluster, active_fat) = if fat_type == FatType::Fat32 {
            let root = u64::from(le32(b, 44));
            if root < 2 || root >= clusters + 2 {
                return Err(FsError::corrupt(
                    FS,
                    format!("root directory cluster {root} is out of range"),
                ));
            }
            let flags = le16(b, 40);
            // Bit 7: mirroring off, bits 0-3 name the one active FAT.
            let active = if flags & 0x80 != 0 {
                u64::from(flags & 0xF)
            } else {
                0
            };
            if active >= num_fats {
                return Err(FsError::corrupt(
                    FS,
                    format!("active FAT {active} of {num_fats}"),
                ));
            }
            (64, Some(root), active)
        } else {
            (36, None, 0)
        };
        // Extended boot signature: 0x29 has serial and label, 0x28 only the serial.
        let signature = b[ext + 2];
        let serial = matches!(signature, 0x28 | 0x29).then(|| le32(b, ext + 3));
        let label = if signature == 0x29 {
            padded_text(&b[ext + 7..ext + 18]).filter(|l| l != "NO NAME")
        } else {
            None
        };

        Ok(Some(Self {
            fat_type,
            bytes_per_sector,
            cluster_bytes: sectors_per_cluster * bytes_per_sector,
            reserved_sectors,
            fat_sectors,
            total_sectors,
            first_data_sector,
            clusters,
            root_cluster,
            active_fat,
            serial,
            label,
        }))
    }

    fn cluster_offset(&self, cluster: u64) -> u64 {
        self.first_data_sector * self.bytes_per_sector + (cluster - 2) * self.cluster_bytes
    }

    /// Call `emit(first, end)` for each run of clusters with a non-zero FAT entry, ascending.
    fn used_cluster_runs(
        &self,
        vol: &dyn ReadAt,
        mut emit: impl FnMut(u64, u64),
    ) -> Result<(), FsError> {
        let fat_start =
            (self.reserved_sectors + self.active_fat * self.fat_sectors) * self.bytes_per_sector;
        let end = self.clusters + 2;
        // FAT12 entries straddle bytes, so a FAT12 table (at most 6 KiB) is read in one piece.
        let per_chunk = match self.fat_type {
            FatType::Fat12 => end,
            FatType::Fat16 => CHUNK_BYTES / 2,
            FatType::Fat32 => CHUNK_BYTES / 4,
        };
        let mut open: Option<u64> = None;
        let mut buf = Vec::new();
        let mut first = 0;
        while first < end {
            let last = (first + per_chunk).min(end);
            let (offset, len) = match self.fat_type {
                FatType::Fat12 => (0, (last * 3).div_ceil(2)),
                FatType::Fat16 => (first * 2, (last - first) * 2),
                FatType::Fat32 => (first * 4, (last - first) * 4),
            };
            // Bounded by CHUNK_BYTES (or the small FAT12 table).
            buf.resize(usize::try_from(len).unwrap_or(0), 0);
            read_at(vol, FS, &mut buf, fat_start + offset)?;
            for cluster in first.max(2)..last {
                let i = usize::try_from(cluster - first).unwrap_or(usize::MAX);
                let entry = match self.fat_type {
                    FatType::Fat12 => {
                        // Two entries share three bytes: the even one takes the low 12 bits.
                        let pair = le16(&buf, i + i / 2);
                        let entry = if i % 2 == 0 { pair & 0xFFF } else { pair >> 4 };
                        u32::from(entry)
                    }
                    FatType::Fat16 => u32::from(le16(&buf, i * 2)),
                    // The top four bits of a FAT32 entry are reserved.
                    FatType::Fat32 => le32(&buf, i * 4) & 0x0FFF_FFFF,
                };
                let used = entry != 0 || Some(cluster) == self.root_cluster;
                match (used, open) {
                    (true, None) => open = Some(cluster),
                    (false, Some(start)) => {
                        emit(start, cluster);
                        open = None;
                    }
                    _ => {}
                }
            }
            first = last;
        }
        if let Some(start) = open {
            emit(start, end);
        }
        Ok(())
    }
}

impl FilesystemReader for FatReader {
    fn name(&self) -> &'static str {
        FS
    }

    /// `used_bytes` here counts only the metadata before the data clusters (a lower bound):
    /// the boot sector alone says nothing reliable about free space.
    fn probe(&self, vol: &dyn ReadAt) -> Result<Option<FsInfo>, FsError> {
        let Some(bpb) = Bpb::read(vol)? else {
            return Ok(None);
        };
        Ok(Some(FsInfo {
            fs_type: bpb.fat_type.name().to_string(),
            label: bpb.label.clone(),
            uuid: bpb
                .serial
                .map(|s| format!("{:04X}-{:04X}", s >> 16, s & 0xFFFF)),
            fs_size: bpb.total_sectors * bpb.bytes_per_sector,
            // At most 128 sectors of 4 KiB.
            fs_block_size: u32::try_from(bpb.cluster_bytes).unwrap_or(u32::MAX),
            used_bytes: bpb.first_data_sector * bpb.bytes_per_sector,
        }))
    }

    fn used_extents(&self, vol: &dyn ReadAt, _info: &FsInfo) -> Result<Extents, FsError> {
        let bpb = Bpb::read(vol)?.ok_or_else(|| FsError::corrupt(FS, "the boot sector is gone"))?;
        let fs_size = bpb.total_sectors * bpb.bytes_per_sector;
        if fs_size > vol.size() {
            return Err(FsError::corrupt(
                FS,
                format!(
                    "the filesystem spans {fs_size} bytes but its volume has only {}",
                    vol.size()
                ),
            ));
        }
        let mut used = Extents::new();
        // Reserved sectors, every FAT copy and the FAT12/16 root directory.
        used.add(0, bpb.first_data_sector * bpb.bytes_per_sector);
        bpb.used_cluster_runs(vol, |first, end| {
            used.add(bpb.cluster_offset(first), (end - first) * bpb.cluster_bytes);
        })?;
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::detect;
    use crate::fs::test_support::{
        blkid, checked_copy, copy_used, image_file, open, populate, pseudo_random, run, tool, Made,
    };
    use std::process::Command;

    fn mtools(name: &str) -> Option<Command> {
        let mut cmd = Command::new(tool(name)?);
        // Test images have no real drive geometry.
        cmd.env("MTOOLS_SKIP_CHECK", "1");
        Some(cmd)
    }

    /// `mkfs.fat` an image of `size` bytes with `args`, then copy in `populate`'s tree and a
    /// file that is deleted again (its clusters become free). `None` when tools are missing.
    fn make(size: u64, args: &[&str]) -> Option<Made> {
        let mkfs = tool("mkfs.fat")?;
        tool("fsck.fat")?;
        let mut mcopy = mtools("mcopy")?;
        let mut mdel = mtools("mdel")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        let files = populate(&tree);
        let image = image_file(dir.path(), "fs.img", size);
        run(Command::new(mkfs).args(args).arg(&image));
        let doomed = dir.path().join("gone.bin");
        std::fs::write(&doomed, pseudo_random(100_000, 5)).expect("write");
        let mut copy_in = mcopy.arg("-i").arg(&image).arg("-s");
        for entry in std::fs::read_dir(&tree).expect("tree") {
            copy_in = copy_in.arg(entry.expect("entry").path());
        }
        run(copy_in.arg(&doomed).arg("::/"));
        run(mdel.arg("-i").arg(&image).arg("::/gone.bin"));
        Some(Made { dir, image, files })
    }

    /// The strong check: a copy holding only the used extents must fsck clean and give back
    /// every file.
    fn assert_copy_restores(made: &Made, used: &Extents) {
        let copy = checked_copy(made, used, &["fsck.fat", "-n"]);
        for (i, (rel, want)) in made.files.iter().enumerate() {
            let out = made.dir.path().join(format!("out{i}"));
            let mut mcopy = mtools("mcopy").expect("mcopy");
            run(mcopy
                .arg("-i")
                .arg(&copy)
                .arg(format!("::/{rel}"))
                .arg(&out));
            let got = std::fs::read(&out).unwrap_or_default();
            assert!(got == *want, "{rel} differs after the used-only copy");
        }
    }

    fn verify(made: &Made, fs_type: &str) -> crate::fs::Detected {
        let vol = open(&made.image);
        let found = detect(&vol).expect("detect").expect("recognised");
        let info = &found.info;
        assert_eq!(info.fs_type, fs_type);
        assert_eq!(info.label.as_deref(), Some("HOLDTEST"));
        assert_eq!(info.uuid.as_deref(), Some("1234-ABCD"));
        assert_eq!(info.fs_size, vol.size());
        assert_eq!(info.used_bytes, found.used.total());
        let data: u64 = made.files.iter().map(|(_, d)| d.len() as u64).sum();
        assert!(info.used_bytes >= data, "{info:?}");
        assert!(info.used_bytes < info.fs_size / 2, "{info:?}");
        if let Some(said) = blkid(&made.image) {
            let version = said.get("VERSION").map(|v| v.to_lowercase());
            assert_eq!(version.as_ref(), Some(&info.fs_type), "blkid {said:?}");
            assert_eq!(said.get("UUID"), info.uuid.as_ref(), "blkid {said:?}");
            assert_eq!(
                said.get("LABEL_FATBOOT"),
                info.label.as_ref(),
                "blkid {said:?}"
            );
        }
        assert_copy_restores(made, &found.used);
        found
    }

    const NAMED: [&str; 4] = ["-n", "HOLDTEST", "-i", "1234abcd"];

    #[test]
    fn fat12() {
        let Some(made) = make(8 << 20, &[&["-F", "12"][..], &NAMED].concat()) else {
            return;
        };
        verify(&made, "fat12");
    }

    #[test]
    fn fat16() {
        let Some(made) = make(64 << 20, &[&["-F", "16"][..], &NAMED].concat()) else {
            return;
        };
        verify(&made, "fat16");
    }

    #[test]
    fn fat32() {
        let Some(made) = make(128 << 20, &[&["-F", "32", "-s", "1"][..], &NAMED].concat()) else {
            return;
        };
        let found = verify(&made, "fat32");
        assert_eq!(found.info.fs_block_size, 512);
        let bpb = Bpb::read(&open(&made.image)).expect("read").expect("fat");
        assert!(bpb.clusters >= FAT32_MIN_CLUSTERS);
    }

    /// A fresh filesystem: mkfs, detect, copy the used extents, fsck the copy.
    fn empty_roundtrip(size: u64, args: &[&str]) -> Option<crate::fs::Detected> {
        let mkfs = tool("mkfs.fat")?;
        let fsck = tool("fsck.fat")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let image = image_file(dir.path(), "fs.img", size);
        run(Command::new(mkfs).args(args).arg(&image));
        let found = detect(&open(&image)).expect("detect").expect("fat");
        let copy = dir.path().join("copy.img");
        copy_used(&image, &found.used, &copy);
        run(Command::new(fsck).arg("-n").arg(&copy));
        Some(found)
    }

    #[test]
    fn fat32_with_few_clusters_is_still_fat32() {
        // What `mkfs.fat -F 32` makes on a small volume: FAT32 layout, FAT16-sized count.
        // (mtools cannot write to these, so this one stays empty.)
        let Some(found) = empty_roundtrip(64 << 20, &["-F", "32", "-s", "8"]) else {
            return;
        };
        assert_eq!(found.info.fs_type, "fat32");
        assert!(found.info.fs_size / u64::from(found.info.fs_block_size) < FAT32_MIN_CLUSTERS);
        // The root directory cluster is in use.
        assert!(found.info.used_bytes > 0);
    }

    #[test]
    fn fat32_4k_sectors_and_no_label() {
        // mtools cannot write to 4 KiB-sector volumes either.
        let Some(found) = empty_roundtrip(128 << 20, &["-F", "32", "-S", "4096"]) else {
            return;
        };
        assert_eq!(found.info.fs_type, "fat32");
        assert_eq!(found.info.label, None);
        assert_eq!(found.info.fs_block_size % 4096, 0);
    }

    /// A minimal FAT16 boot sector for hand-made cases.
    fn boot_sector() -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
        b[3..11].copy_from_slice(b"MSWIN4.1");
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 4;
        b[14..16].copy_from_slice(&4u16.to_le_bytes());
        b[16] = 2;
        b[17..19].copy_from_slice(&512u16.to_le_bytes());
        b[21] = 0xF8;
        b[22..24].copy_from_slice(&160u16.to_le_bytes());
        b[32..36].copy_from_slice(&(40_000u32 * 4).to_le_bytes());
        b[38] = 0x29;
        b[39..43].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        b[43..54].copy_from_slice(b"NO NAME    ");
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    #[test]
    fn hand_made_boot_sectors() {
        let bpb = Bpb::parse(&boot_sector()).expect("parse").expect("fat");
        assert_eq!(bpb.fat_type, FatType::Fat16);
        assert_eq!(bpb.label, None, "NO NAME is no label");
        assert_eq!(bpb.serial, Some(0xDEAD_BEEF));

        let mut exfat = boot_sector();
        exfat[3..11].copy_from_slice(b"EXFAT   ");
        assert!(Bpb::parse(&exfat).expect("exfat").is_none());
        let mut ntfs = boot_sector();
        ntfs[3..11].copy_from_slice(b"NTFS    ");
        assert!(Bpb::parse(&ntfs).expect("ntfs").is_none());
        let mut unsigned = boot_sector();
        unsigned[510] = 0;
        assert!(Bpb::parse(&unsigned).expect("no signature").is_none());
        let mut odd_sector = boot_sector();
        odd_sector[11..13].copy_from_slice(&700u16.to_le_bytes());
        assert!(Bpb::parse(&odd_sector).expect("odd").is_none());

        // Recognised but impossible: the FATs overrun the volume.
        let mut small = boot_sector();
        small[32..36].copy_from_slice(&100u32.to_le_bytes());
        assert!(matches!(Bpb::parse(&small), Err(FsError::Corrupt { .. })));
        // A FAT too small for the cluster count.
        let mut thin = boot_sector();
        thin[22..24].copy_from_slice(&8u16.to_le_bytes());
        assert!(matches!(Bpb::parse(&thin), Err(FsError::Corrupt { .. })));
    }

    #[test]
    fn damaged_and_truncated_volumes_are_clean_errors() {
        let Some(made) = make(8 << 20, &[&["-F", "12"][..], &NAMED].concat()) else {
            return;
        };
        let pristine = std::fs::read(&made.image).expect("read");
        // Cut short: recognised, then refused without reading past the end.
        let short = pristine[..1 << 16].to_vec();
        assert!(FatReader.probe(&short).expect("probe").is_some());
        match detect(&short) {
            Err(FsError::Corrupt { detail, .. }) => assert!(detail.contains("volume has only")),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // Random damage to the boot sector never panics.
        let noise = pseudo_random(3 * 3000, 17);
        for hit in noise.chunks_exact(3) {
            let mut img = pristine.clone();
            img[usize::from(hit[0]) % 64] = hit[1];
            img[11 + usize::from(hit[2]) % 30] ^= hit[2];
            let _ = detect(&img);
        }
    }

    #[test]
    fn random_bytes_are_not_fat() {
        for seed in 1..200 {
            // Even with the signature and a jump instruction in place.
            let mut noise = pseudo_random(1 << 16, seed);
            noise[0] = 0xEB;
            noise[510] = 0x55;
            noise[511] = 0xAA;
            let got = FatReader.probe(&noise);
            assert!(matches!(got, Ok(None)), "seed {seed}: {got:?}");
        }
    }
}
