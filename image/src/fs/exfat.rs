//! exFAT: used clusters from the allocation bitmap.
//!
//! An exFAT volume is laid out as: the main boot region (sectors 0–11: boot sector, eight
//! extended boot sectors, OEM parameters, a reserved sector and the boot checksum), its
//! backup (sectors 12–23), the FAT region (one FAT, or two for TexFAT) and the cluster heap,
//! whose clusters are numbered from 2. Unlike FAT, a file stored contiguously has no FAT
//! chain; which clusters are in use is recorded only in the allocation bitmap, itself a
//! file named by an entry of the root directory.
//!
//! | | |
//! |---|---|
//! | used set | everything before the cluster heap (boot regions, alignment, every FAT), every cluster the allocation bitmap marks, and the clusters of the root directory and the bitmap itself |
//! | checked | the boot signature, the boot region's checksum, the geometry (sector and cluster shifts, FAT size for the cluster count, heap inside the volume), the root directory chain (no loops, in range), the bitmap's size |
//! | refused (imaged forensically, with the reason) | a volume marked dirty (not cleanly unmounted: its bitmap may miss clusters in use; `fsck.exfat` repairs it), revision other than 1.x, a boot region whose checksum does not match, a root directory with no allocation bitmap |
//! | both bitmaps | a TexFAT volume with two FATs has two bitmaps: the union of both is kept |
//!
//! The volume label comes from the root directory's label entry; the identifier is the
//! volume serial, printed as blkid does (`ABCD-1234`).

use super::{bitmap_runs, le16, le32, read_at, FilesystemReader, FsError, FsInfo};
use crate::extents::Extents;
use crate::io::ReadAt;
use crate::le::u64_at as le64;

const FS: &str = "exfat";
/// The boot sector is at most 4 KiB (sector shift 12); its fields sit in the first 512 bytes.
const BOOT_FIELDS: usize = 512;
/// Sectors in each boot region; the last one holds the checksum of the others.
const BOOT_REGION_SECTORS: u64 = 12;
/// FAT entries at and above this mark the end of a chain (or a bad cluster).
const END_OF_CHAIN: u32 = 0xFFFF_FFF7;
/// Directory entry types.
const ENTRY_END: u8 = 0x00;
const ENTRY_BITMAP: u8 = 0x81;
const ENTRY_LABEL: u8 = 0x83;
/// `VolumeFlags` bits.
const FLAG_ACTIVE_FAT: u16 = 1;
const FLAG_DIRTY: u16 = 2;

/// Reads exFAT volumes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExfatReader;

/// The boot sector's geometry, validated.
#[derive(Debug)]
struct Layout {
    sector_bytes: u64,
    cluster_bytes: u64,
    volume_sectors: u64,
    fat_offset: u64,
    fat_sectors: u64,
    fats: u64,
    heap_offset: u64,
    clusters: u64,
    root_cluster: u64,
    serial: u32,
    flags: u16,
    percent_in_use: u8,
}

/// What the root directory says: the allocation bitmaps and the label.
struct Root {
    /// Clusters of the root directory itself.
    clusters: Vec<u64>,
    /// (first cluster, bytes) of each allocation bitmap.
    bitmaps: Vec<(u64, u64)>,
    label: Option<String>,
}

impl Layout {
    fn read(vol: &dyn ReadAt) -> Result<Option<Self>, FsError> {
        if vol.size() < BOOT_FIELDS as u64 {
            return Ok(None);
        }
        let mut b = [0u8; BOOT_FIELDS];
        read_at(vol, FS, &mut b, 0)?;
        if &b[3..11] != b"EXFAT   " || b[510..512] != [0x55, 0xAA] {
            return Ok(None);
        }
        let sector_shift = u32::from(b[108]);
        let cluster_shift = u32::from(b[109]);
        if !(9..=12).contains(&sector_shift) || cluster_shift > 25 - sector_shift {
            return Err(FsError::corrupt(
                FS,
                format!("impossible sector and cluster sizes (shifts {sector_shift} and {cluster_shift})"),
            ));
        }
        if b[105] != 1 {
            return Err(FsError::unsupported(
                FS,
                format!("revision {}.{}", b[105], b[104]),
            ));
        }
        let l = Self {
            sector_bytes: 1 << sector_shift,
            cluster_bytes: 1 << (sector_shift + cluster_shift),
            volume_sectors: le64(&b, 72),
            fat_offset: u64::from(le32(&b, 80)),
            fat_sectors: u64::from(le32(&b, 84)),
            fats: u64::from(b[110]),
            heap_offset: u64::from(le32(&b, 88)),
            clusters: u64::from(le32(&b, 92)),
            root_cluster: u64::from(le32(&b, 96)),
            serial: le32(&b, 100),
            flags: le16(&b, 106),
            percent_in_use: b[112],
        };
        l.check()?;
        Ok(Some(l))
    }

    fn check(&self) -> Result<(), FsError> {
        let bad = |detail: String| Err(FsError::corrupt(FS, detail));
        if self.volume_sectors > u64::MAX / self.sector_bytes {
            return bad(format!("a volume of {} sectors", self.volume_sectors));
        }
        if !(1..=2).contains(&self.fats) {
            return bad(format!("{} FATs", self.fats));
        }
        if self.fat_offset < 2 * BOOT_REGION_SECTORS {
            return bad(format!(
                "the FAT starts at sector {}, inside the boot regions",
                self.fat_offset
            ));
        }
        if self.fat_sectors * self.sector_bytes / 4 < self.clusters + 2 {
            return bad(format!(
                "a FAT of {} sectors cannot map {} clusters",
                self.fat_sectors, self.clusters
            ));
        }
        if self.heap_offset < self.fat_offset + self.fats * self.fat_sectors {
            return bad(format!(
                "the cluster heap at sector {} overlaps the FAT",
                self.heap_offset
            ));
        }
        let heap_end = self.heap_offset + self.clusters * (self.cluster_bytes / self.sector_bytes);
        if self.clusters == 0 || heap_end > self.volume_sectors {
            return bad(format!(
                "{} clusters from sector {} do not fit in {} sectors",
                self.clusters, self.heap_offset, self.volume_sectors
            ));
        }
        if !self.is_cluster(self.root_cluster) {
            return bad(format!(
                "root directory cluster {} is out of range",
                self.root_cluster
            ));
        }
        Ok(())
    }

    fn is_cluster(&self, c: u64) -> bool {
        (2..self.clusters + 2).contains(&c)
    }

    fn cluster_offset(&self, c: u64) -> u64 {
        self.heap_offset * self.sector_bytes + (c - 2) * self.cluster_bytes
    }

    /// The boot region's checksum (sector 11) must match its first eleven sectors, leaving
    /// out the volume flags and the percentage in use, which change without it.
    fn verify_checksum(&self, vol: &dyn ReadAt) -> Result<(), FsError> {
        let sector = self.sector_bytes as usize;
        let mut region = vec![0u8; sector * BOOT_REGION_SECTORS as usize];
        read_at(vol, FS, &mut region, 0)?;
        let mut sum: u32 = 0;
        for (i, &byte) in region[..sector * 11].iter().enumerate() {
            if matches!(i, 106 | 107 | 112) {
                continue;
            }
            sum = sum.rotate_right(1).wrapping_add(u32::from(byte));
        }
        let stored = &region[sector * 11..];
        if stored.chunks_exact(4).any(|c| le32(c, 0) != sum) {
            return Err(FsError::corrupt(
                FS,
                "the boot region's checksum does not match its contents",
            ));
        }
        Ok(())
    }

    /// The FAT entry of cluster `c`, from the active FAT.
    fn fat_entry(&self, vol: &dyn ReadAt, c: u64) -> Result<u32, FsError> {
        let active = if self.fats == 2 && self.flags & FLAG_ACTIVE_FAT != 0 {
            1
        } else {
            0
        };
        let mut e = [0u8; 4];
        let at = (self.fat_offset + active * self.fat_sectors) * self.sector_bytes + c * 4;
        read_at(vol, FS, &mut e, at)?;
        Ok(le32(&e, 0))
    }

    /// Read the root directory (following its FAT chain) for its bitmaps and label.
    fn root(&self, vol: &dyn ReadAt) -> Result<Root, FsError> {
        let mut root = Root {
            clusters: Vec::new(),
            bitmaps: Vec::new(),
            label: None,
        };
        let mut buf = vec![0u8; usize::try_from(self.cluster_bytes).unwrap_or(0)];
        let mut c = self.root_cluster;
        'chain: loop {
            if root.clusters.len() as u64 >= self.clusters {
                return Err(FsError::corrupt(
                    FS,
                    "the root directory's cluster chain loops",
                ));
            }
            root.clusters.push(c);
            read_at(vol, FS, &mut buf, self.cluster_offset(c))?;
            for entry in buf.chunks_exact(32) {
                match entry[0] {
                    ENTRY_END => break 'chain,
                    ENTRY_BITMAP => {
                        root.bitmaps
                            .push((u64::from(le32(entry, 20)), le64(entry, 24)));
                    }
                    ENTRY_LABEL => {
                        let chars = usize::from(entry[1]).min(11);
                        let units: Vec<u16> = (0..chars).map(|i| le16(entry, 2 + 2 * i)).collect();
                        root.label =
                            Some(String::from_utf16_lossy(&units)).filter(|l| !l.is_empty());
                    }
                    _ => {}
                }
            }
            let next = self.fat_entry(vol, c)?;
            if next >= END_OF_CHAIN {
                break;
            }
            if !self.is_cluster(u64::from(next)) {
                return Err(FsError::corrupt(
                    FS,
                    format!("the root directory's chain leads to cluster {next}"),
                ));
            }
            c = u64::from(next);
        }
        Ok(root)
    }
}

impl FilesystemReader for ExfatReader {
    fn name(&self) -> &'static str {
        FS
    }

    fn probe(&self, vol: &dyn ReadAt) -> Result<Option<FsInfo>, FsError> {
        let Some(l) = Layout::read(vol)? else {
            return Ok(None);
        };
        let heap = l.clusters * l.cluster_bytes;
        let percent = u64::from(l.percent_in_use.min(100));
        Ok(Some(FsInfo {
            fs_type: "exfat".to_owned(),
            // The label is in the root directory: a damaged one leaves just no label here.
            label: l.root(vol).ok().and_then(|r| r.label),
            uuid: Some(format!("{:04X}-{:04X}", l.serial >> 16, l.serial & 0xFFFF)),
            fs_size: l.volume_sectors * l.sector_bytes,
            // At most 32 MiB.
            fs_block_size: u32::try_from(l.cluster_bytes).unwrap_or(u32::MAX),
            used_bytes: l.heap_offset * l.sector_bytes + heap / 100 * percent,
        }))
    }

    fn used_extents(&self, vol: &dyn ReadAt, _info: &FsInfo) -> Result<Extents, FsError> {
        let l =
            Layout::read(vol)?.ok_or_else(|| FsError::corrupt(FS, "the boot sector is gone"))?;
        let fs_size = l.volume_sectors * l.sector_bytes;
        if fs_size > vol.size() {
            return Err(FsError::corrupt(
                FS,
                format!(
                    "the filesystem spans {fs_size} bytes but its volume has only {}",
                    vol.size()
                ),
            ));
        }
        l.verify_checksum(vol)?;
        if l.flags & FLAG_DIRTY != 0 {
            return Err(FsError::unsupported(
                FS,
                "a volume marked dirty (not cleanly unmounted, so its allocation bitmap may \
                 miss clusters in use; `fsck.exfat` repairs it)",
            ));
        }
        let root = l.root(vol)?;
        if root.bitmaps.is_empty() {
            return Err(FsError::corrupt(
                FS,
                "the root directory has no allocation bitmap",
            ));
        }
        let mut used = Extents::new();
        // The boot regions, the alignment after them, every FAT.
        used.add(0, l.heap_offset * l.sector_bytes);
        for &c in &root.clusters {
            used.add(l.cluster_offset(c), l.cluster_bytes);
        }
        let need = l.clusters.div_ceil(8);
        for &(first, bytes) in &root.bitmaps {
            let spans = bytes.div_ceil(l.cluster_bytes);
            if bytes < need || !l.is_cluster(first) || !l.is_cluster(first + spans - 1) {
                return Err(FsError::corrupt(
                    FS,
                    format!(
                        "an allocation bitmap of {bytes} bytes at cluster {first} for {} clusters",
                        l.clusters
                    ),
                ));
            }
            // Contiguous, as the kernel reads it; at most 512 MiB for 2^32 clusters.
            let mut bitmap = vec![0u8; usize::try_from(need).unwrap_or(0)];
            read_at(vol, FS, &mut bitmap, l.cluster_offset(first))?;
            used.add(l.cluster_offset(first), spans * l.cluster_bytes);
            bitmap_runs(&bitmap, l.clusters, |start, end| {
                used.add(l.cluster_offset(start + 2), (end - start) * l.cluster_bytes);
            });
        }
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::detect;
    use crate::fs::test_support::{
        blkid, checked_copy, fuse_or_skip, image_file, open, populate, pseudo_random, run, tool,
        FuseMount, Made,
    };
    use std::path::Path;
    use std::process::Command;

    /// `mkfs.exfat` an image of `size` bytes with `args`, then write `populate`'s tree and a
    /// large file that is deleted again through exfat-fuse. `None` when tools or FUSE are
    /// missing.
    fn make(size: u64, args: &[&str]) -> Option<Made> {
        let mkfs = tool("mkfs.exfat")?;
        tool("fsck.exfat")?;
        if !fuse_or_skip() {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let image = image_file(dir.path(), "fs.img", size);
        run(Command::new(mkfs).args(args).arg(&image));
        let files = {
            let m = FuseMount::new("mount.exfat-fuse", &image, &dir.path().join("mnt"), "rw")?;
            let files = populate(&m.dir);
            std::fs::write(m.dir.join("gone.bin"), pseudo_random(6 << 20, 5)).expect("write");
            std::fs::remove_file(m.dir.join("gone.bin")).expect("delete");
            files
        };
        Some(Made { dir, image, files })
    }

    /// A copy holding only the used extents must pass `fsck.exfat -n` and give back every
    /// file.
    fn assert_copy_restores(made: &Made, used: &Extents) {
        let copy = checked_copy(made, used, &["fsck.exfat", "-n"]);
        let m = FuseMount::new(
            "mount.exfat-fuse",
            &copy,
            &made.dir.path().join("copy-mnt"),
            "ro",
        )
        .expect("mount");
        for (rel, want) in &made.files {
            let got = std::fs::read(m.dir.join(rel)).unwrap_or_default();
            assert!(got == *want, "{rel} differs after the used-only copy");
        }
    }

    /// Clusters `dump.exfat` counts as free, when it is installed.
    fn free_clusters_said(image: &Path) -> Option<u64> {
        let out = run(Command::new(tool("dump.exfat")?).arg(image));
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "Free Clusters").then(|| value.trim().parse().ok())?
        })
    }

    fn verify(made: &Made) -> crate::fs::Detected {
        let vol = open(&made.image);
        let found = detect(&vol).expect("detect").expect("recognised");
        let info = &found.info;
        assert_eq!(info.fs_type, "exfat");
        assert_eq!(info.label.as_deref(), Some("HOLDTEST"));
        assert_eq!(info.fs_size, vol.size());
        assert_eq!(info.used_bytes, found.used.total());
        let data: u64 = made.files.iter().map(|(_, d)| d.len() as u64).sum();
        assert!(info.used_bytes >= data, "{info:?}");
        assert!(info.used_bytes < info.fs_size / 2, "{info:?}");
        if let Some(said) = blkid(&made.image) {
            assert_eq!(
                said.get("TYPE").map(String::as_str),
                Some("exfat"),
                "{said:?}"
            );
            assert_eq!(said.get("UUID"), info.uuid.as_ref(), "blkid {said:?}");
            assert_eq!(said.get("LABEL"), info.label.as_ref(), "blkid {said:?}");
        }
        // Every cluster exFAT's own tool counts as in use is in the used set.
        let l = Layout::read(&vol).expect("read").expect("exfat");
        if let Some(free) = free_clusters_said(&made.image) {
            let mut heap = found.used.clone();
            heap.remove(0, l.heap_offset * l.sector_bytes);
            assert_eq!(
                heap.total() / l.cluster_bytes,
                l.clusters - free,
                "used clusters: ours and dump.exfat's"
            );
        }
        assert_copy_restores(made, &found.used);
        found
    }

    #[test]
    fn exfat_with_files_and_a_deleted_one() {
        let Some(made) = make(64 << 20, &["-L", "HOLDTEST"]) else {
            return;
        };
        verify(&made);
    }

    #[test]
    fn exfat_with_large_clusters_and_a_packed_bitmap() {
        let args = ["-L", "HOLDTEST", "-c", "128K", "--pack-bitmap"];
        let Some(made) = make(96 << 20, &args) else {
            return;
        };
        let found = verify(&made);
        assert_eq!(found.info.fs_block_size, 128 << 10);
    }

    #[test]
    fn dirty_damaged_and_truncated_volumes_are_clean_errors() {
        let Some(made) = make(32 << 20, &["-L", "HOLDTEST"]) else {
            return;
        };
        let pristine = std::fs::read(&made.image).expect("read");
        // Marked dirty: refused (forensic), saying why.
        let mut dirty = pristine.clone();
        dirty[106] |= FLAG_DIRTY as u8;
        match detect(&dirty) {
            Err(FsError::Unsupported { feature, .. }) => assert!(feature.contains("dirty")),
            other => panic!("expected Unsupported, got {other:?}"),
        }
        // A changed boot sector field no longer matches the checksum.
        let mut changed = pristine.clone();
        changed[100] ^= 0x5A;
        match detect(&changed) {
            Err(FsError::Corrupt { detail, .. }) => assert!(detail.contains("checksum")),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // Cut short: recognised, then refused without reading past the end.
        let short = pristine[..1 << 20].to_vec();
        assert!(ExfatReader.probe(&short).expect("probe").is_some());
        match detect(&short) {
            Err(FsError::Corrupt { detail, .. }) => assert!(detail.contains("volume has only")),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // Random damage to the boot sector and the root directory never panics.
        let l = Layout::read(&pristine).expect("read").expect("exfat");
        let root = usize::try_from(l.cluster_offset(l.root_cluster)).expect("offset");
        let noise = pseudo_random(4 * 3000, 17);
        let mut img = pristine;
        for hit in noise.chunks_exact(4) {
            // Damaged in place and put back: no copy of the volume per case.
            let (a, b) = (
                64 + usize::from(hit[0]) % 50,
                root + usize::from(hit[2]) * 2,
            );
            let (was_a, was_b) = (img[a], img[b]);
            // Half the cases leave the boot sector (and its checksum) whole, so the damaged
            // root directory and bitmap entry are read all the way.
            if hit[0] % 2 == 1 {
                img[a] = hit[1];
            }
            img[b] ^= hit[3];
            let _ = detect(&img);
            img[a] = was_a;
            img[b] = was_b;
        }
    }

    #[test]
    fn random_bytes_are_not_exfat() {
        for seed in 1..200 {
            let mut noise = pseudo_random(1 << 16, seed);
            noise[510] = 0x55;
            noise[511] = 0xAA;
            let got = ExfatReader.probe(&noise);
            assert!(matches!(got, Ok(None)), "seed {seed}: {got:?}");
        }
    }
}
