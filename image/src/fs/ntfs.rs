//! NTFS: used clusters from `$Bitmap`, the volume's own record of them.
//!
//! The boot sector gives the geometry and where the master file table (MFT) starts. Its
//! first sixteen records are contiguous there; record 6 is `$Bitmap`, whose data holds one
//! bit per cluster. Every cluster it marks is kept — the MFT, its mirror, `$LogFile`, every
//! file and directory — plus the backup boot sector, which sits in the sector after the last
//! one the volume counts.
//!
//! | | |
//! |---|---|
//! | used set | every cluster `$Bitmap` marks, the boot file's first 8 KiB, the backup boot sector; minus the data of `pagefile.sys`, `hiberfil.sys` and `swapfile.sys` in the root directory (their clusters are stored as zeros: Windows makes them anew), unless they are kept ([`NtfsReader::KEEPING_SYSTEM_FILES`]) |
//! | checked | the boot sector's geometry, each MFT record's magic and update-sequence fixups (a torn record is damage), the data runs (inside the volume), the bitmap's length |
//! | refused (imaged forensically, with the reason) | a volume marked dirty, a `$LogFile` holding changes not yet written in place (a crash, or Windows' fast startup or hibernation: Windows replays it, and the bitmap may not be true until then), a `$Bitmap` spread over several MFT records (an attribute list) |
//!
//! The label is `$Volume`'s name; the identifier is the 64-bit volume serial as blkid prints
//! it (16 upper-case hex digits).

use super::{bitmap_runs, le16, le32, read_at, FilesystemReader, FsError, FsInfo};
use crate::extents::Extents;
use crate::io::ReadAt;
use crate::le::u64_at as le64;

const FS: &str = "ntfs";
/// MFT records of the system files read here.
const LOGFILE: u64 = 2;
const VOLUME: u64 = 3;
const ROOT: u64 = 5;
const BITMAP: u64 = 6;
/// Attribute types.
const ATTR_LIST: u32 = 0x20;
const ATTR_FILE_NAME: u32 = 0x30;
const ATTR_VOLUME_NAME: u32 = 0x60;
const ATTR_VOLUME_INFO: u32 = 0x70;
const ATTR_DATA: u32 = 0x80;
const ATTR_INDEX_ROOT: u32 = 0x90;
const ATTR_INDEX_ALLOCATION: u32 = 0xA0;
const ATTR_END: u32 = 0xFFFF_FFFF;
/// Update sequences protect every 512 bytes of a record, whatever the sector size.
const STRIDE: usize = 512;
/// Files Windows makes anew at start, whose contents are not kept by default.
const SYSTEM_FILES: [&str; 3] = ["pagefile.sys", "hiberfil.sys", "swapfile.sys"];
/// The boot file ($Boot) is 8 KiB at the start of the volume.
const BOOT_FILE: u64 = 8192;

/// Reads NTFS volumes; by default without the contents of the page, hibernation and swap
/// files.
#[derive(Debug, Clone, Copy, Default)]
pub struct NtfsReader {
    keep_system_files: bool,
}

impl NtfsReader {
    /// The default reader: the page, hibernation and swap files' contents left out.
    pub const DEFAULT: Self = Self {
        keep_system_files: false,
    };

    /// A reader that keeps `pagefile.sys`, `hiberfil.sys` and `swapfile.sys` too.
    pub const KEEPING_SYSTEM_FILES: Self = Self {
        keep_system_files: true,
    };
}

/// The boot sector's geometry, validated.
#[derive(Debug)]
struct Boot {
    sector_bytes: u64,
    cluster_bytes: u64,
    total_sectors: u64,
    clusters: u64,
    mft_lcn: u64,
    record_bytes: u64,
    serial: u64,
}

/// A run of clusters: `len` from `lcn`, or sparse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    lcn: Option<u64>,
    len: u64,
}

impl Boot {
    fn read(vol: &dyn ReadAt) -> Result<Option<Self>, FsError> {
        if vol.size() < 512 {
            return Ok(None);
        }
        let mut b = [0u8; 512];
        read_at(vol, FS, &mut b, 0)?;
        if &b[3..11] != b"NTFS    " || b[510..512] != [0x55, 0xAA] {
            return Ok(None);
        }
        let sector_bytes = u64::from(le16(&b, 11));
        if !matches!(sector_bytes, 512 | 1024 | 2048 | 4096) {
            return Err(FsError::corrupt(FS, format!("{sector_bytes}-byte sectors")));
        }
        // Above 0x80 the byte is a negative power of two (clusters of 64 KiB and more).
        let per_cluster = match b[13] {
            n @ 1..=0x80 => u64::from(n),
            n @ 0xF4..=0xFF => 1 << (256 - u32::from(n)),
            n => {
                return Err(FsError::corrupt(
                    FS,
                    format!("sectors per cluster byte {n:#x}"),
                ))
            }
        };
        if !per_cluster.is_power_of_two() {
            return Err(FsError::corrupt(
                FS,
                format!("{per_cluster} sectors per cluster"),
            ));
        }
        let cluster_bytes = sector_bytes * per_cluster;
        let record_bytes = match b[64] as i8 {
            n @ 1..=127 => u64::from(n as u8) * cluster_bytes,
            n @ -16..=-9 => 1 << n.unsigned_abs(),
            n => return Err(FsError::corrupt(FS, format!("MFT record size byte {n}"))),
        };
        if !(1024..=65536).contains(&record_bytes) || !record_bytes.is_power_of_two() {
            return Err(FsError::corrupt(
                FS,
                format!("MFT records of {record_bytes} bytes"),
            ));
        }
        let total_sectors = le64(&b, 40);
        let clusters = total_sectors / per_cluster;
        let mft_lcn = le64(&b, 48);
        if clusters == 0 || clusters > u64::from(u32::MAX) || mft_lcn >= clusters {
            return Err(FsError::corrupt(
                FS,
                format!("{clusters} clusters with the MFT at cluster {mft_lcn}"),
            ));
        }
        Ok(Some(Self {
            sector_bytes,
            cluster_bytes,
            total_sectors,
            clusters,
            mft_lcn,
            record_bytes,
            serial: le64(&b, 72),
        }))
    }

    /// MFT record `n` (one of the first sixteen, which are contiguous), fixed up; an error
    /// when it is not a record in use.
    fn record(&self, vol: &dyn ReadAt, n: u64) -> Result<Vec<u8>, FsError> {
        let mut rec = vec![0u8; usize::try_from(self.record_bytes).unwrap_or(0)];
        read_at(
            vol,
            FS,
            &mut rec,
            self.mft_lcn * self.cluster_bytes + n * self.record_bytes,
        )?;
        if &rec[..4] != b"FILE" {
            return Err(FsError::corrupt(
                FS,
                format!("MFT record {n} is not a file record"),
            ));
        }
        fixup(&mut rec).map_err(|why| FsError::corrupt(FS, format!("MFT record {n}: {why}")))?;
        if le16(&rec, 22) & 1 == 0 {
            return Err(FsError::corrupt(
                FS,
                format!("MFT record {n} is not in use"),
            ));
        }
        Ok(rec)
    }

    /// The unnamed `$DATA` runs of a system file's record, which must hold all of them.
    fn data_runs(&self, rec: &[u8], what: &str) -> Result<Vec<Run>, FsError> {
        let mut list = false;
        for (kind, a) in attributes(rec)? {
            list |= kind == ATTR_LIST;
            if kind == ATTR_DATA && a[9] == 0 {
                if a[8] == 0 {
                    return Err(FsError::corrupt(FS, format!("{what} has resident data")));
                }
                if le64(a, 16) != 0 {
                    break;
                }
                return self.runs(a, what);
            }
        }
        Err(if list {
            FsError::unsupported(FS, format!("a {what} described by an attribute list"))
        } else {
            FsError::corrupt(FS, format!("{what} has no data"))
        })
    }

    /// The data runs of non-resident attribute `a`, each inside the volume.
    fn runs(&self, a: &[u8], what: &str) -> Result<Vec<Run>, FsError> {
        let bad = |why: &str| FsError::corrupt(FS, format!("the data runs of {what}: {why}"));
        let mut at = usize::from(le16(a, 32));
        let mut lcn: i64 = 0;
        let mut out = Vec::new();
        while let Some(&head) = a.get(at) {
            if head == 0 {
                return Ok(out);
            }
            let (len_size, off_size) = (usize::from(head & 0xF), usize::from(head >> 4));
            if len_size == 0
                || len_size > 8
                || off_size > 8
                || at + 1 + len_size + off_size > a.len()
            {
                return Err(bad("malformed"));
            }
            let field = |from: usize, size: usize, signed: bool| {
                let mut v = [0u8; 8];
                v[..size].copy_from_slice(&a[from..from + size]);
                if signed && size > 0 && a[from + size - 1] & 0x80 != 0 {
                    v[size..].fill(0xFF);
                }
                i64::from_le_bytes(v)
            };
            let len = field(at + 1, len_size, false) as u64;
            let run = if off_size == 0 {
                Run { lcn: None, len }
            } else {
                lcn = lcn
                    .checked_add(field(at + 1 + len_size, off_size, true))
                    .ok_or_else(|| bad("out of range"))?;
                let start = u64::try_from(lcn).map_err(|_| bad("before the volume"))?;
                if start.checked_add(len).is_none_or(|end| end > self.clusters) {
                    return Err(bad("past the end of the volume"));
                }
                Run {
                    lcn: Some(start),
                    len,
                }
            };
            out.push(run);
            at += 1 + len_size + off_size;
        }
        Err(bad("not terminated"))
    }

    /// The first `bytes` of the data in `runs`.
    fn read_runs(&self, vol: &dyn ReadAt, runs: &[Run], bytes: u64) -> Result<Vec<u8>, FsError> {
        let mut out = vec![0u8; usize::try_from(bytes).unwrap_or(0)];
        let mut at = 0usize;
        for r in runs {
            if at >= out.len() {
                break;
            }
            let n = usize::try_from((r.len * self.cluster_bytes).min((out.len() - at) as u64))
                .unwrap_or(0);
            if let Some(lcn) = r.lcn {
                read_at(vol, FS, &mut out[at..at + n], lcn * self.cluster_bytes)?;
            }
            at += n;
        }
        if at < out.len() {
            return Err(FsError::corrupt(
                FS,
                "a file's runs are shorter than its data",
            ));
        }
        Ok(out)
    }

    /// `$Volume`'s name and flags.
    fn volume(&self, vol: &dyn ReadAt) -> Result<(Option<String>, u16), FsError> {
        let rec = self.record(vol, VOLUME)?;
        let (mut name, mut flags) = (None, None);
        for (kind, a) in attributes(&rec)? {
            match kind {
                ATTR_VOLUME_NAME => {
                    let v = resident(a)?;
                    let units: Vec<u16> = v.chunks_exact(2).map(|c| le16(c, 0)).collect();
                    name = Some(String::from_utf16_lossy(&units)).filter(|n| !n.is_empty());
                }
                ATTR_VOLUME_INFO => flags = Some(le16(resident(a)?, 10)),
                _ => {}
            }
        }
        let flags =
            flags.ok_or_else(|| FsError::corrupt(FS, "$Volume has no volume information"))?;
        Ok((name, flags))
    }

    /// Whether `$LogFile` is empty or says its changes are all in place.
    fn log_is_clean(&self, vol: &dyn ReadAt) -> Result<bool, FsError> {
        let runs = self.data_runs(&self.record(vol, LOGFILE)?, "$LogFile")?;
        let mut page = self.read_runs(vol, &runs, 4096)?;
        if page.iter().all(|&b| b == 0xFF) {
            // Emptied (as ntfs-3g leaves it): nothing to replay.
            return Ok(true);
        }
        if &page[..4] != b"RSTR" {
            // "CHKD" (chkdsk stopped midway) or damage.
            return Ok(false);
        }
        let size = le32(&page, 16) as usize;
        if (STRIDE..=65536).contains(&size) && size.is_power_of_two() && size > page.len() {
            page = self.read_runs(vol, &runs, size as u64)?;
        } else {
            page.truncate(size.clamp(STRIDE, page.len()));
        }
        if fixup(&mut page).is_err() {
            return Ok(false);
        }
        let area = usize::from(le16(&page, 24));
        if area + 16 > page.len() {
            return Ok(false);
        }
        // No client in use, or the restart area says the volume is clean.
        let in_use = le16(&page, area + 12);
        let flags = le16(&page, area + 14);
        Ok(in_use == 0xFFFF || flags & 0x0002 != 0)
    }

    /// The data runs of `pagefile.sys`, `hiberfil.sys` and `swapfile.sys` in the root
    /// directory (read from its index; each entry checked against the record it names).
    fn system_file_runs(&self, vol: &dyn ReadAt) -> Result<Vec<Run>, FsError> {
        let root = self.record(vol, ROOT)?;
        let mut names: Vec<(u64, String)> = Vec::new();
        // Index blocks' size, from the index root (which comes first: attributes are sorted).
        let mut block = 4096;
        for (kind, a) in attributes(&root)? {
            match kind {
                ATTR_INDEX_ROOT => {
                    let v = resident(a)?;
                    block = (le32(v, 8) as usize).clamp(STRIDE, 65536);
                    // The index header follows the 16-byte root header.
                    index_entries(v, 16, &mut names);
                }
                ATTR_INDEX_ALLOCATION if a[8] != 0 => {
                    let runs = self.runs(a, "the root directory's index")?;
                    // At most the volume's size: bounded by the runs' check.
                    let total = le64(a, 48).min(self.clusters * self.cluster_bytes);
                    let data = self.read_runs(vol, &runs, total)?;
                    for chunk in data.chunks(block) {
                        let mut b = chunk.to_vec();
                        if b.len() < 64 || &b[..4] != b"INDX" || fixup(&mut b).is_err() {
                            continue;
                        }
                        index_entries(&b, 24, &mut names);
                    }
                }
                _ => {}
            }
        }
        let mut runs = Vec::new();
        for (reference, name) in names {
            if !SYSTEM_FILES.iter().any(|s| s.eq_ignore_ascii_case(&name)) {
                continue;
            }
            // The record must still be that file (an index block may hold stale entries).
            let number = reference & 0xFFFF_FFFF_FFFF;
            let Ok(rec) = self.record_anywhere(vol, number) else {
                continue;
            };
            if le16(&rec, 16) != (reference >> 48) as u16 || !names_file(&rec, &name)? {
                continue;
            }
            if let Ok(r) = self.data_runs(&rec, &name) {
                runs.extend(r);
            }
        }
        Ok(runs)
    }

    /// MFT record `n` wherever it is, following the MFT's own runs.
    fn record_anywhere(&self, vol: &dyn ReadAt, n: u64) -> Result<Vec<u8>, FsError> {
        let mft = self.data_runs(&self.record(vol, 0)?, "$MFT")?;
        let mut skip = n * self.record_bytes;
        for r in &mft {
            let bytes = r.len * self.cluster_bytes;
            if skip < bytes {
                let lcn = r.lcn.ok_or_else(|| FsError::corrupt(FS, "a sparse MFT"))?;
                let mut rec = vec![0u8; usize::try_from(self.record_bytes).unwrap_or(0)];
                read_at(vol, FS, &mut rec, lcn * self.cluster_bytes + skip)?;
                if &rec[..4] != b"FILE" {
                    return Err(FsError::corrupt(
                        FS,
                        format!("MFT record {n} is not a file record"),
                    ));
                }
                fixup(&mut rec)
                    .map_err(|why| FsError::corrupt(FS, format!("MFT record {n}: {why}")))?;
                return Ok(rec);
            }
            skip -= bytes;
        }
        Err(FsError::corrupt(
            FS,
            format!("MFT record {n} is past the MFT"),
        ))
    }
}

/// Apply a record's update sequence: the last two bytes of each 512-byte stride must hold
/// the sequence number, and are put back from the array.
fn fixup(rec: &mut [u8]) -> Result<(), &'static str> {
    let at = usize::from(le16(rec, 4));
    let count = usize::from(le16(rec, 6));
    if count < 2 || count - 1 != rec.len() / STRIDE || at + 2 * count > rec.len() {
        return Err("its update sequence does not fit");
    }
    let usn = [rec[at], rec[at + 1]];
    for i in 1..count {
        let end = i * STRIDE;
        if rec[end - 2..end] != usn {
            return Err("torn: a part was written and another not");
        }
        rec[end - 2] = rec[at + 2 * i];
        rec[end - 1] = rec[at + 2 * i + 1];
    }
    Ok(())
}

/// The attributes of a fixed-up record: (type, bytes).
fn attributes(rec: &[u8]) -> Result<Vec<(u32, &[u8])>, FsError> {
    let mut at = usize::from(le16(rec, 20));
    let used = (le32(rec, 24) as usize).min(rec.len());
    let mut out = Vec::new();
    while at + 8 <= used {
        let kind = le32(rec, at);
        if kind == ATTR_END {
            return Ok(out);
        }
        let len = le32(rec, at + 4) as usize;
        if len < 24 || at + len > used {
            return Err(FsError::corrupt(FS, "an attribute runs past its record"));
        }
        out.push((kind, &rec[at..at + len]));
        at += len;
    }
    Err(FsError::corrupt(
        FS,
        "a record's attributes are not terminated",
    ))
}

/// A resident attribute's value.
fn resident(a: &[u8]) -> Result<&[u8], FsError> {
    let len = le32(a, 16) as usize;
    let at = usize::from(le16(a, 20));
    if a[8] != 0 || at + len > a.len() {
        return Err(FsError::corrupt(
            FS,
            "a resident attribute's value runs past it",
        ));
    }
    Ok(&a[at..at + len])
}

/// Collect (file reference, name) from the index entries after the index header at `header`
/// in `b` (an index root's value, or an `INDX` block).
fn index_entries(b: &[u8], header: usize, out: &mut Vec<(u64, String)>) {
    let mut at = header + le32(b, header) as usize;
    let end = (header + le32(b, header + 4) as usize).min(b.len());
    while at + 16 <= end {
        let len = usize::from(le16(b, at + 8));
        let flags = le16(b, at + 12);
        if flags & 2 != 0 || len < 16 || at + len > end {
            return;
        }
        let key = &b[at + 16..at + len];
        if key.len() >= 66 {
            let chars = usize::from(key[64]);
            if 66 + 2 * chars <= key.len() {
                let units: Vec<u16> = (0..chars).map(|i| le16(key, 66 + 2 * i)).collect();
                out.push((le64(b, at), String::from_utf16_lossy(&units)));
            }
        }
        at += len;
    }
}

/// Whether `rec` has a `$FILE_NAME` in the root directory equal to `name`.
fn names_file(rec: &[u8], name: &str) -> Result<bool, FsError> {
    for (kind, a) in attributes(rec)? {
        if kind != ATTR_FILE_NAME {
            continue;
        }
        let v = resident(a)?;
        if v.len() < 66 || le64(v, 0) & 0xFFFF_FFFF_FFFF != ROOT {
            continue;
        }
        let chars = usize::from(v[64]);
        if 66 + 2 * chars > v.len() {
            continue;
        }
        let units: Vec<u16> = (0..chars).map(|i| le16(v, 66 + 2 * i)).collect();
        if String::from_utf16_lossy(&units).eq_ignore_ascii_case(name) {
            return Ok(true);
        }
    }
    Ok(false)
}

impl FilesystemReader for NtfsReader {
    fn name(&self) -> &'static str {
        FS
    }

    fn probe(&self, vol: &dyn ReadAt) -> Result<Option<FsInfo>, FsError> {
        let Some(b) = Boot::read(vol)? else {
            return Ok(None);
        };
        Ok(Some(FsInfo {
            fs_type: "ntfs".to_owned(),
            // A damaged $Volume leaves just no label here; `used_extents` says what is wrong.
            label: b.volume(vol).ok().and_then(|(name, _)| name),
            uuid: Some(format!("{:016X}", b.serial)),
            // With the backup boot sector after the counted sectors.
            fs_size: (b.total_sectors + 1) * b.sector_bytes,
            fs_block_size: u32::try_from(b.cluster_bytes).unwrap_or(u32::MAX),
            used_bytes: BOOT_FILE,
        }))
    }

    fn used_extents(&self, vol: &dyn ReadAt, _info: &FsInfo) -> Result<Extents, FsError> {
        let b = Boot::read(vol)?.ok_or_else(|| FsError::corrupt(FS, "the boot sector is gone"))?;
        let counted = b.total_sectors * b.sector_bytes;
        if counted > vol.size() {
            return Err(FsError::corrupt(
                FS,
                format!(
                    "the filesystem spans {counted} bytes but its volume has only {}",
                    vol.size()
                ),
            ));
        }
        let (_, flags) = b.volume(vol)?;
        if flags & 0x0001 != 0 {
            return Err(FsError::unsupported(
                FS,
                "a volume marked dirty (not cleanly unmounted; `chkdsk` or `ntfsfix` clears it)",
            ));
        }
        if !b.log_is_clean(vol)? {
            return Err(FsError::unsupported(
                FS,
                "a $LogFile holding changes not yet written in place (a crash, or Windows' fast \
                 startup or hibernation: shut Windows down fully, or let it replay them)",
            ));
        }
        let bitmap_runs_ = b.data_runs(&b.record(vol, BITMAP)?, "$Bitmap")?;
        let bitmap = b.read_runs(vol, &bitmap_runs_, b.clusters.div_ceil(8))?;
        let mut used = Extents::new();
        used.add(0, BOOT_FILE.min(counted));
        bitmap_runs(&bitmap, b.clusters, |start, end| {
            used.add(start * b.cluster_bytes, (end - start) * b.cluster_bytes);
        });
        if !self.keep_system_files {
            for r in b.system_file_runs(vol)? {
                if let Some(lcn) = r.lcn {
                    used.remove(lcn * b.cluster_bytes, r.len * b.cluster_bytes);
                }
            }
        }
        // The backup boot sector, after the last counted sector.
        if counted + b.sector_bytes <= vol.size() {
            used.add(counted, b.sector_bytes);
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

    /// `mkntfs` an image of `size` bytes with `args`; write `populate`'s tree, a sparse file,
    /// a file with an alternate data stream, a page file and a large file deleted again,
    /// through ntfs-3g. `None` when tools or FUSE are missing.
    fn make(size: u64, args: &[&str]) -> Option<Made> {
        let mkntfs = tool("mkntfs")?;
        tool("ntfsfix")?;
        if !fuse_or_skip() {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let image = image_file(dir.path(), "fs.img", size);
        run(Command::new(mkntfs)
            .args(["-q", "-F", "-f", "-L", "HOLDTEST"])
            .args(args)
            .arg(&image));
        let mut files = {
            let m = FuseMount::new("ntfs-3g", &image, &dir.path().join("mnt"), "rw")?;
            let mut files = populate(&m.dir);
            // Sparse: 40 MiB long, 8 KiB written in the middle.
            let sparse = std::fs::File::create(m.dir.join("sparse.bin")).expect("sparse");
            sparse.set_len(40 << 20).expect("length");
            let middle = pseudo_random(8192, 11);
            std::os::unix::fs::FileExt::write_all_at(&sparse, &middle, 20 << 20).expect("write");
            drop(sparse);
            let mut want = vec![0u8; 40 << 20];
            want[20 << 20..(20 << 20) + 8192].copy_from_slice(&middle);
            files.push(("sparse.bin".to_owned(), want));
            // An alternate data stream (ntfs-3g shows named streams as user xattrs).
            std::fs::write(m.dir.join("streams.txt"), b"main stream\n").expect("write");
            run(Command::new("setfattr")
                .args(["-n", "user.extra", "-v", "0x0102030405"])
                .arg(m.dir.join("streams.txt")));
            files.push(("streams.txt".to_owned(), b"main stream\n".to_vec()));
            std::fs::write(m.dir.join("pagefile.sys"), pseudo_random(4 << 20, 12))
                .expect("pagefile");
            std::fs::write(m.dir.join("gone.bin"), pseudo_random(6 << 20, 5)).expect("write");
            std::fs::remove_file(m.dir.join("gone.bin")).expect("delete");
            files
        };
        // The page file comes back as zeros of the same length.
        files.push(("pagefile.sys".to_owned(), vec![0u8; 4 << 20]));
        Some(Made { dir, image, files })
    }

    /// A copy holding only the used extents must pass `ntfsfix -n`, and give back every file
    /// and the alternate stream.
    fn assert_copy_restores(made: &Made, used: &Extents) {
        let copy = checked_copy(made, used, &["ntfsfix", "-n"]);
        let m = FuseMount::new("ntfs-3g", &copy, &made.dir.path().join("copy-mnt"), "ro")
            .expect("mount");
        for (rel, want) in &made.files {
            let got = std::fs::read(m.dir.join(rel)).unwrap_or_default();
            assert!(got == *want, "{rel} differs after the used-only copy");
        }
        let stream = run(Command::new("getfattr")
            .args(["-n", "user.extra", "-e", "hex"])
            .arg(m.dir.join("streams.txt")));
        assert!(
            String::from_utf8_lossy(&stream.stdout).contains("user.extra=0x0102030405"),
            "the alternate stream is kept"
        );
    }

    /// Clusters `ntfscluster -i` counts as free, when it is installed.
    fn free_clusters_said(image: &Path) -> Option<u64> {
        let out = run(Command::new(tool("ntfscluster")?).arg("-i").arg(image));
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "clusters of free space").then(|| value.trim().parse().ok())?
        })
    }

    fn verify(made: &Made) -> crate::fs::Detected {
        let vol = open(&made.image);
        let found = detect(&vol).expect("detect").expect("recognised");
        let info = &found.info;
        assert_eq!(info.fs_type, "ntfs");
        assert_eq!(info.label.as_deref(), Some("HOLDTEST"));
        assert_eq!(info.used_bytes, found.used.total());
        let data: u64 = made.files.iter().map(|(_, d)| d.len() as u64).sum();
        assert!(info.used_bytes < info.fs_size / 2, "{info:?}");
        // Sparse and page file data are not stored; the rest is.
        assert!(info.used_bytes + (44 << 20) >= data, "{info:?}");
        if let Some(said) = blkid(&made.image) {
            assert_eq!(
                said.get("TYPE").map(String::as_str),
                Some("ntfs"),
                "{said:?}"
            );
            assert_eq!(said.get("UUID"), info.uuid.as_ref(), "blkid {said:?}");
            assert_eq!(said.get("LABEL"), info.label.as_ref(), "blkid {said:?}");
        }
        // Every cluster in use but the page file's is in the used set; none of the page file's.
        let b = Boot::read(&vol).expect("boot").expect("ntfs");
        let all = NtfsReader::KEEPING_SYSTEM_FILES
            .used_extents(&vol, info)
            .expect("with system files");
        // The clusters ntfscluster counts as in use are exactly those.
        if let Some(free) = free_clusters_said(&made.image) {
            let mut clusters = all.clone();
            clusters.remove(b.total_sectors * b.sector_bytes, b.sector_bytes);
            assert_eq!(clusters.total() / b.cluster_bytes, b.clusters - free);
        }
        let page_file = all.total() - found.used.total();
        assert!(
            page_file >= 4 << 20 && page_file < (4 << 20) + 2 * b.cluster_bytes,
            "{page_file}"
        );
        assert_copy_restores(made, &found.used);
        found
    }

    #[test]
    fn ntfs_with_sparse_streams_a_page_file_and_a_deleted_file() {
        let Some(made) = make(96 << 20, &[]) else {
            return;
        };
        verify(&made);
    }

    #[test]
    fn ntfs_with_large_clusters_and_sectors() {
        let Some(made) = make(128 << 20, &["-c", "65536", "-s", "4096"]) else {
            return;
        };
        let found = verify(&made);
        assert_eq!(found.info.fs_block_size, 65536);
    }

    /// Where `$Volume`'s flags are in the image.
    fn volume_flags_at(img: &[u8]) -> usize {
        let b = Boot::read(&img.to_vec()).expect("boot").expect("ntfs");
        let at =
            usize::try_from(b.mft_lcn * b.cluster_bytes + VOLUME * b.record_bytes).expect("at");
        let rec = b.record(&img.to_vec(), VOLUME).expect("record");
        let mut pos = usize::from(le16(&rec, 20));
        loop {
            let kind = le32(&rec, pos);
            assert_ne!(kind, ATTR_END, "no volume information");
            if kind == ATTR_VOLUME_INFO {
                return at + pos + usize::from(le16(&rec, pos + 20)) + 10;
            }
            pos += le32(&rec, pos + 4) as usize;
        }
    }

    /// A restart page of `$LogFile` with one client in use, clean or not.
    fn restart_page(clean: bool) -> Vec<u8> {
        let mut p = vec![0u8; 4096];
        p[..4].copy_from_slice(b"RSTR");
        p[4..6].copy_from_slice(&0x1Eu16.to_le_bytes());
        p[6..8].copy_from_slice(&9u16.to_le_bytes());
        p[16..20].copy_from_slice(&4096u32.to_le_bytes());
        p[20..24].copy_from_slice(&4096u32.to_le_bytes());
        p[24..26].copy_from_slice(&0x30u16.to_le_bytes());
        // Client list: one in use; flags: clean or not.
        p[0x30 + 12..0x30 + 14].copy_from_slice(&0u16.to_le_bytes());
        let flags: u16 = if clean { 2 } else { 0 };
        p[0x30 + 14..0x30 + 16].copy_from_slice(&flags.to_le_bytes());
        // The update sequence: number 1 at the end of every 512 bytes (the array keeps zeros).
        p[0x1E..0x20].copy_from_slice(&1u16.to_le_bytes());
        for i in 1..=8 {
            p[i * 512 - 2..i * 512].copy_from_slice(&1u16.to_le_bytes());
        }
        p
    }

    #[test]
    fn dirty_unreplayed_damaged_and_truncated_volumes_are_clean_errors() {
        let Some(made) = make(64 << 20, &[]) else {
            return;
        };
        let pristine = std::fs::read(&made.image).expect("read");
        // Marked dirty: refused (forensic), saying why.
        let mut dirty = pristine.clone();
        dirty[volume_flags_at(&pristine)] |= 1;
        match detect(&dirty) {
            Err(FsError::Unsupported { feature, .. }) => assert!(feature.contains("dirty")),
            other => panic!("expected Unsupported, got {other:?}"),
        }
        // A log with changes not yet in place: refused; a clean one is fine.
        let b = Boot::read(&pristine).expect("boot").expect("ntfs");
        let log = b
            .data_runs(&b.record(&pristine, LOGFILE).expect("log"), "log")
            .expect("runs");
        let at = usize::try_from(log[0].lcn.expect("placed") * b.cluster_bytes).expect("at");
        for (clean, ok) in [(false, false), (true, true)] {
            let mut img = pristine.clone();
            img[at..at + 4096].copy_from_slice(&restart_page(clean));
            match detect(&img) {
                Ok(Some(_)) if ok => {}
                Err(FsError::Unsupported { feature, .. }) if !ok => {
                    assert!(feature.contains("$LogFile"), "{feature}");
                }
                other => panic!("clean {clean}: {other:?}"),
            }
        }
        // Cut short: recognised, then refused without reading past the end.
        let short = pristine[..16 << 20].to_vec();
        assert!(NtfsReader::default()
            .probe(&short)
            .expect("probe")
            .is_some());
        match detect(&short) {
            Err(FsError::Corrupt { detail, .. }) => {
                assert!(detail.contains("volume has only"), "{detail}")
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // Random damage to the boot sector and the first MFT records never panics.
        let mft = usize::try_from(b.mft_lcn * b.cluster_bytes).expect("mft");
        let noise = pseudo_random(4 * 3000, 17);
        let mut img = pristine;
        for hit in noise.chunks_exact(4) {
            let a = 11 + usize::from(hit[0]) % 70;
            let c = mft + usize::from(u16::from_le_bytes([hit[2], hit[3]])) % (8 << 10);
            let (was_a, was_c) = (img[a], img[c]);
            if hit[0] % 2 == 1 {
                img[a] = hit[1];
            }
            img[c] ^= hit[3] | 1;
            let _ = detect(&img);
            img[a] = was_a;
            img[c] = was_c;
        }
    }

    #[test]
    fn random_bytes_are_not_ntfs() {
        for seed in 1..200 {
            let mut noise = pseudo_random(1 << 16, seed);
            noise[510] = 0x55;
            noise[511] = 0xAA;
            let got = NtfsReader::default().probe(&noise);
            assert!(matches!(got, Ok(None)), "seed {seed}: {got:?}");
        }
    }
}
