//! Filesystem allocation readers: which bytes of a volume are in use.
//!
//! Used-sector imaging copies only the blocks a filesystem needs. Each supported filesystem
//! has one [`FilesystemReader`] that recognises the volume from its superblock or boot sector
//! ([`FilesystemReader::probe`]) and lists the byte ranges it uses
//! ([`FilesystemReader::used_extents`]). [`detect`] tries every reader in [`READERS`].
//!
//! The rule every reader follows: marking a block used when it is free only costs space;
//! marking a needed block free loses data. So a reader refuses ([`FsError::Unsupported`])
//! any feature whose effect on allocation it cannot reason about, and the caller images
//! that volume sector by sector instead.
//!
//! # Adding a filesystem
//!
//! Adding another filesystem takes one new module here that
//! implements [`FilesystemReader`] and one new line in [`READERS`]. Nothing else changes.
//! A new reader must return `Ok(None)` from `probe` for volumes that are not its own (the
//! readers are tried in order and must not claim each other's volumes).

pub mod btrfs;
#[cfg(test)]
mod damage;
pub mod exfat;
pub mod ext;
pub mod fat;
pub mod jbd2;
pub mod luks;
pub mod ntfs;
pub mod swap;
pub mod xfs;

use crate::extents::Extents;
use crate::io::ReadAt;

/// What a reader learned about a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// `"ext2"`, `"ext3"`, `"ext4"`, `"fat12"`, `"fat16"`, `"fat32"`, `"exfat"`, `"ntfs"`,
    /// `"xfs"`, `"btrfs"`, `"swap"` or `"crypto_LUKS"`, as blkid names them.
    pub fs_type: String,
    /// The volume label, if the filesystem has one.
    pub label: Option<String>,
    /// The identifier in the text form blkid prints: for ext, XFS, btrfs and swap, the UUID as
    /// `8-4-4-4-12` lowercase hex; for FAT and exFAT, the volume serial as `ABCD-1234`
    /// uppercase; for NTFS, its 64-bit serial as 16 uppercase hex digits.
    pub uuid: Option<String>,
    /// Bytes the filesystem spans from the start of the volume.
    pub fs_size: u64,
    /// The allocation unit: the ext block size or the FAT cluster size, in bytes.
    pub fs_block_size: u32,
    /// Bytes in use. After [`detect`], exactly the total of [`Detected::used`]; from
    /// [`FilesystemReader::probe`] alone, an estimate from the superblock's own counters.
    pub used_bytes: u64,
}

/// Why a filesystem's allocation could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// The volume could not be read.
    #[error("reading the {fs} filesystem at offset {offset}: {cause}")]
    Io {
        /// The reader's name.
        fs: &'static str,
        /// Byte offset in the volume of the failed read.
        offset: u64,
        /// The underlying error (in the message, not also a `source`).
        cause: std::io::Error,
    },
    /// The filesystem's metadata is inconsistent.
    #[error("the {fs} filesystem is damaged: {detail}")]
    Corrupt {
        /// The reader's name.
        fs: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The filesystem uses a feature whose allocation this reader cannot interpret safely.
    #[error("the {fs} filesystem uses {feature}, which used-sector imaging does not support")]
    Unsupported {
        /// The reader's name.
        fs: &'static str,
        /// The feature, as its own tools name it.
        feature: String,
    },
}

impl FsError {
    /// The `fs` filesystem's metadata is inconsistent: `detail` says how.
    pub(crate) fn corrupt(fs: &'static str, detail: impl Into<String>) -> Self {
        Self::Corrupt {
            fs,
            detail: detail.into(),
        }
    }

    /// The `fs` filesystem uses `feature`, which its reader cannot interpret safely.
    pub(crate) fn unsupported(fs: &'static str, feature: impl Into<String>) -> Self {
        Self::Unsupported {
            fs,
            feature: feature.into(),
        }
    }
}

/// Reads one family of filesystems.
pub trait FilesystemReader: Sync {
    /// Short name of the family, used in errors (e.g. `"ext"`, `"fat"`).
    fn name(&self) -> &'static str;

    /// Recognise the volume. `Ok(None)` when it is not this filesystem (magic mismatch).
    /// Cheap: reads only the superblock or boot sector.
    fn probe(&self, vol: &dyn ReadAt) -> Result<Option<FsInfo>, FsError>;

    /// Used byte ranges relative to the volume start, covering every block the filesystem
    /// needs (superblocks, group descriptors, bitmaps, inode tables, journal, reserved areas,
    /// FATs, root directory, allocated data). Being conservative (marking more as used) is
    /// always safe; marking a needed block unused loses data. `info` comes from `probe`.
    fn used_extents(&self, vol: &dyn ReadAt, info: &FsInfo) -> Result<Extents, FsError>;

    /// What the filesystem records about its own history (see [`History`]).
    fn history(&self, _vol: &dyn ReadAt) -> Result<History, FsError> {
        Ok(History::default())
    }

    /// Byte ranges, relative to the volume start, whose contents are as they were when the
    /// base image was taken, for change-tracked incrementals: their blocks may be taken
    /// from the base image without reading them. `since` is the base's snapshot time less a
    /// margin (Unix seconds), `base` the history it recorded. Missing a range only costs a
    /// read; naming a range that changed puts stale data in the image, so a reader names
    /// only what its filesystem's rules guarantee. `Ok(None)` when this reader cannot tell.
    fn unchanged_since(
        &self,
        _vol: &dyn ReadAt,
        _since: i64,
        _base: &History,
    ) -> Result<Option<Unchanged>, FsError> {
        Ok(None)
    }
}

/// What a filesystem records about its own history, kept with every image so that the
/// next incremental can tell whether the filesystem was touched in ways change tracking
/// cannot see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    /// Mounts by its own count (ext: `s_mnt_count`): a change means it was mounted in
    /// between, perhaps elsewhere with another clock, so change times cannot be trusted.
    pub mount_count: Option<u64>,
    /// The last committed transaction (btrfs: the superblock's generation; XFS v5: the
    /// superblock's log sequence number): it only grows.
    pub generation: Option<u64>,
}

/// What [`FilesystemReader::unchanged_since`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unchanged {
    /// The byte ranges, relative to the volume start.
    pub ranges: Extents,
    /// How they were found, for reports (e.g. `inode change times`).
    pub source: &'static str,
}

/// The reader whose filesystem `vol` holds, if any.
pub fn reader_of(vol: &dyn ReadAt) -> Result<Option<&'static dyn FilesystemReader>, FsError> {
    for &reader in READERS {
        if reader.probe(vol)?.is_some() {
            return Ok(Some(reader));
        }
    }
    Ok(None)
}

/// Every supported filesystem, tried in this order by [`detect`].
pub static READERS: &[&dyn FilesystemReader] = &[
    &ext::ExtReader,
    &fat::FatReader,
    &exfat::ExfatReader,
    &ntfs::NtfsReader::DEFAULT,
    &xfs::XfsReader,
    &btrfs::BtrfsReader,
    &luks::LuksReader,
    &swap::SwapReader,
];

/// A recognised volume and the bytes it uses.
#[derive(Debug, Clone)]
pub struct Detected {
    /// What the filesystem says about itself; `used_bytes` equals `used.total()`.
    pub info: FsInfo,
    /// Byte ranges to image, relative to the volume start, clipped to the volume.
    pub used: Extents,
}

/// What a caller may choose about what the readers leave out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Keep the contents of Windows' `pagefile.sys`, `hiberfil.sys` and `swapfile.sys`
    /// (by default their clusters are left out and come back as zeros).
    pub keep_windows_system_files: bool,
}

/// Try each reader in [`READERS`], with the default [`Options`].
pub fn detect(vol: &dyn ReadAt) -> Result<Option<Detected>, FsError> {
    detect_with(vol, Options::default())
}

/// Try each reader in [`READERS`].
///
/// `Ok(None)` means the filesystem is unknown: the caller falls back to forensic
/// (every-sector) imaging with a warning. A reader that recognises the filesystem but finds
/// it damaged or using an unsupported feature makes this an `Err`.
pub fn detect_with(vol: &dyn ReadAt, options: Options) -> Result<Option<Detected>, FsError> {
    let keeping: &dyn FilesystemReader = &ntfs::NtfsReader::KEEPING_SYSTEM_FILES;
    for &reader in READERS {
        let reader = if options.keep_windows_system_files && reader.name() == keeping.name() {
            keeping
        } else {
            reader
        };
        if let Some(mut info) = reader.probe(vol)? {
            let mut used = reader.used_extents(vol, &info)?;
            // A filesystem larger than its volume (e.g. a truncated copy) must not make us
            // read past the end.
            used.truncate(vol.size());
            info.used_bytes = used.total();
            return Ok(Some(Detected { info, used }));
        }
    }
    Ok(None)
}

/// Read exactly `buf.len()` bytes at `offset`, mapping failure to [`FsError::Io`].
fn read_at(vol: &dyn ReadAt, fs: &'static str, buf: &mut [u8], offset: u64) -> Result<(), FsError> {
    vol.read_exact_at(buf, offset)
        .map_err(|cause| FsError::Io { fs, offset, cause })
}

use crate::le::{u16_at as le16, u32_at as le32};

/// Text of a fixed-size, space- or NUL-padded on-disk label; `None` when blank.
fn padded_text(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    let text = String::from_utf8_lossy(&raw[..end]);
    let text = text.trim_end_matches(' ');
    (!text.is_empty()).then(|| text.to_string())
}

/// A 16-byte UUID in the text form blkid prints: `8-4-4-4-12` lowercase hex.
fn uuid_text(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Call `emit(start, end)` for every maximal run of set bits among the first `nbits` bits of
/// `bitmap` (bit `i` is bit `i % 8` of byte `i / 8`, the order ext, NTFS and XFS use), in
/// ascending order. Works a 64-bit word at a time and skips all-zero and all-one words
/// without looking at their bits, so a million-block bitmap scans in well under a
/// millisecond. Bits past the end of `bitmap` read as zero.
pub(crate) fn bitmap_runs(bitmap: &[u8], nbits: u64, mut emit: impl FnMut(u64, u64)) {
    let mut open: Option<u64> = None;
    let words = nbits.div_ceil(64);
    for w in 0..words {
        let base = w * 64;
        let mut bytes = [0u8; 8];
        let from = usize::try_from(base / 8).unwrap_or(usize::MAX);
        if let Some(src) = bitmap.get(from..) {
            let n = src.len().min(8);
            bytes[..n].copy_from_slice(&src[..n]);
        }
        let mut word = u64::from_le_bytes(bytes);
        let valid = nbits - base;
        if valid < 64 {
            word &= (1u64 << valid) - 1;
        }
        match word {
            0 => {
                if let Some(start) = open.take() {
                    emit(start, base);
                }
            }
            u64::MAX => {
                open.get_or_insert(base);
            }
            _ => {
                let mut pos = 0u32;
                while pos < 64 {
                    let rest = word >> pos;
                    if let Some(start) = open {
                        // The shifted-in high bits are zero, so this stops inside the word
                        // unless every remaining bit is set.
                        pos += rest.trailing_ones();
                        if pos < 64 {
                            emit(start, base + u64::from(pos));
                            open = None;
                        }
                    } else {
                        if rest == 0 {
                            break;
                        }
                        pos += rest.trailing_zeros();
                        open = Some(base + u64::from(pos));
                    }
                }
            }
        }
    }
    if let Some(start) = open {
        emit(start, nbits);
    }
}

/// Helpers shared by the tests of `fs` and `disk`: external tools, images, checks.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::extents::Extents;
    use crate::io::FileReadAt;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    /// Find an external tool; when it is missing, skip the test (or fail under CI).
    pub fn tool(name: &str) -> Option<PathBuf> {
        let path = std::env::var("PATH").unwrap_or_default();
        let found = path
            .split(':')
            .chain(["/usr/sbin", "/sbin", "/usr/bin"])
            .map(|dir| Path::new(dir).join(name))
            .find(|p| p.is_file());
        if found.is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{name} is required by this test under CI"
            );
            eprintln!("SKIPPED: {name} is not installed");
        }
        found
    }

    /// Run a command that must succeed; show its output when it does not.
    pub fn run(cmd: &mut Command) -> Output {
        let out = cmd.output().expect("spawn");
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A FUSE filesystem (`program`: `mount.exfat-fuse`, `ntfs-3g`) mounted from an image
    /// through a loop device — a `fuseblk` mount, whose unmount waits until everything is
    /// written — unmounted and detached when dropped. `None` when a tool is missing.
    pub struct FuseMount {
        pub dir: PathBuf,
        lo: String,
    }

    impl FuseMount {
        pub fn new(program: &str, image: &Path, dir: &Path, options: &str) -> Option<Self> {
            let program = tool(program)?;
            let out = run(Command::new(tool("losetup")?)
                .args(["-f", "--show"])
                .arg(image));
            let lo = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            std::fs::create_dir_all(dir).expect("mountpoint");
            let m = Self {
                dir: dir.to_path_buf(),
                lo,
            };
            run(Command::new(program)
                .arg("-o")
                .arg(options)
                .arg(&m.lo)
                .arg(dir));
            Some(m)
        }
    }

    impl Drop for FuseMount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.dir).status();
            let _ = Command::new("losetup").arg("-d").arg(&self.lo).status();
        }
    }

    /// A kernel loop mount of an image (filesystems this machine's kernel has: ext4, XFS,
    /// btrfs), unmounted when dropped.
    pub struct LoopMount(pub PathBuf);

    impl LoopMount {
        pub fn new(image: &Path, dir: &Path, options: &str) -> Self {
            std::fs::create_dir_all(dir).expect("mountpoint");
            run(Command::new("mount")
                .arg("-o")
                .arg(format!("loop,{options}"))
                .arg(image)
                .arg(dir));
            Self(dir.to_path_buf())
        }
    }

    impl Drop for LoopMount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }

    /// Every byte range a filesystem's own tool says is in use (`needed`) is in `used`.
    pub fn assert_covers(used: &Extents, needed: &Extents, tool: &str) {
        let mut missing = needed.clone();
        for &(start, end) in used.ranges() {
            missing.remove(start, end - start);
        }
        let first: Vec<_> = missing.ranges().iter().take(5).collect();
        assert_eq!(
            missing.total(),
            0,
            "{tool} says these are in use, the reader does not: {first:?}"
        );
    }

    /// The written extents of every regular file of the volume in `image`, as byte ranges,
    /// as the kernel reports them (`filefrag -v`, mounted read-only): what a change scan
    /// with every file unchanged must name, exactly.
    pub fn written_file_extents(image: &Path, mnt: &Path) -> Extents {
        let m = LoopMount::new(image, mnt, "ro");
        let mut files = Vec::new();
        let mut stack = vec![m.0.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).expect("read dir").flatten() {
                let t = e.file_type().expect("type");
                if t.is_dir() {
                    stack.push(e.path());
                } else if t.is_file() {
                    files.push(e.path());
                }
            }
        }
        let mut out = Extents::new();
        for f in files {
            let o = run(Command::new(tool("filefrag").expect("filefrag"))
                .arg("-v")
                .arg(&f));
            let text = String::from_utf8_lossy(&o.stdout);
            // "File size of F is 81920 (20 blocks of 4096 bytes)"
            let bs: u64 = text
                .rsplit('(')
                .next()
                .and_then(|r| r.split_whitespace().nth(3)?.parse().ok())
                .expect("block size in filefrag's output");
            // "  0:        0..     767:      34304..     35071:    768:             last,eof"
            for line in text
                .lines()
                .filter(|l| l.trim_start().starts_with(char::is_numeric))
            {
                let cols: Vec<&str> = line.split(':').map(str::trim).collect();
                if cols.len() < 4 || line.contains("unwritten") || line.contains("inline") {
                    continue;
                }
                let start: u64 = cols[2]
                    .split("..")
                    .next()
                    .and_then(|s| s.trim().parse().ok())
                    .expect("start");
                let len: u64 = cols[3].parse().expect("length");
                out.add(start * bs, len * bs);
            }
        }
        out
    }

    /// A test volume: its folder, the image file, and (path, content) of the files put in.
    pub struct Made {
        pub dir: tempfile::TempDir,
        pub image: PathBuf,
        pub files: Vec<(String, Vec<u8>)>,
    }

    /// A new sparse file `name` of `size` bytes in `dir`.
    pub fn image_file(dir: &Path, name: &str, size: u64) -> PathBuf {
        let image = dir.join(name);
        File::create(&image)
            .expect("create")
            .set_len(size)
            .expect("size");
        image
    }

    /// Whether FUSE can be used; a skip with a message when not (a failure under CI).
    pub fn fuse_or_skip() -> bool {
        if Path::new("/dev/fuse").exists() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "/dev/fuse is required under CI"
        );
        eprintln!("SKIPPED: no /dev/fuse");
        false
    }

    /// Open a file as a byte source.
    pub fn open(path: &Path) -> FileReadAt {
        let file = File::open(path).expect("open image");
        let len = file.metadata().expect("stat").len();
        FileReadAt::new(file, len)
    }

    /// Copy only `used` from `src` into a new zero-filled (sparse) file of the same size:
    /// what restoring a used-sector image produces.
    pub fn copy_used(src: &Path, used: &Extents, dst: &Path) {
        let from = File::open(src).expect("open source");
        let to = File::create(dst).expect("create copy");
        to.set_len(from.metadata().expect("stat").len())
            .expect("size copy");
        let mut buf = vec![0u8; 1 << 20];
        for &(start, end) in used.ranges() {
            let mut at = start;
            while at < end {
                let n = usize::try_from((end - at).min(buf.len() as u64)).expect("chunk");
                from.read_exact_at(&mut buf[..n], at).expect("read used");
                to.write_all_at(&buf[..n], at).expect("write used");
                at += n as u64;
            }
        }
    }

    /// Copy only `used` of `made`'s volume into `copy.img` beside it (what restoring a
    /// used-sector image gives), and run the filesystem's checker on the copy:
    /// `fsck` is the program and its arguments, the copy's path comes last; it must pass.
    pub fn checked_copy(made: &Made, used: &Extents, fsck: &[&str]) -> PathBuf {
        let copy = made.dir.path().join("copy.img");
        copy_used(&made.image, used, &copy);
        let (program, args) = fsck.split_first().expect("a checker");
        run(Command::new(tool(program).expect("checker"))
            .args(args)
            .arg(&copy));
        copy
    }

    /// What `blkid -p` says about a volume, as KEY=value pairs; `None` when blkid is missing.
    pub fn blkid(path: &Path) -> Option<std::collections::HashMap<String, String>> {
        let out = run(Command::new(tool("blkid")?)
            .args(["-p", "-o", "export"])
            .arg(path));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Some(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
    pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// A directory tree of files with known content, for populating test filesystems.
    /// Returns (relative path, content) of every file.
    pub fn populate(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let files = vec![
            ("hello.txt".to_string(), b"hello, holdfast\n".to_vec()),
            ("big.bin".to_string(), pseudo_random(3 << 20, 1)),
            ("sub/mid.bin".to_string(), pseudo_random(200_000, 2)),
            ("sub/deeper/odd.bin".to_string(), pseudo_random(12_345, 3)),
        ];
        for (rel, data) in &files {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, data).expect("write file");
        }
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_content_is_not_detected() {
        let zeros = vec![0u8; 4 << 20];
        assert!(detect(&zeros).expect("zeros").is_none());
        let noise = test_support::pseudo_random(4 << 20, 42);
        assert!(detect(&noise).expect("noise").is_none());
        let tiny = vec![0u8; 100];
        assert!(detect(&tiny).expect("tiny").is_none());
    }

    fn runs(bitmap: &[u8], nbits: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        bitmap_runs(bitmap, nbits, |s, e| out.push((s, e)));
        out
    }

    /// The same runs, found one bit at a time.
    fn runs_slow(bitmap: &[u8], nbits: u64) -> Vec<(u64, u64)> {
        let bit = |i: u64| {
            bitmap
                .get((i / 8) as usize)
                .is_some_and(|b| b >> (i % 8) & 1 == 1)
        };
        let mut out: Vec<(u64, u64)> = Vec::new();
        for i in 0..nbits {
            if bit(i) {
                match out.last_mut() {
                    Some(last) if last.1 == i => last.1 = i + 1,
                    _ => out.push((i, i + 1)),
                }
            }
        }
        out
    }

    #[test]
    fn bitmap_runs_edges() {
        assert_eq!(runs(&[], 0), vec![]);
        assert_eq!(runs(&[0xff; 16], 128), vec![(0, 128)]);
        assert_eq!(runs(&[0xff; 16], 100), vec![(0, 100)]);
        assert_eq!(runs(&[0x01, 0x80], 16), vec![(0, 1), (15, 16)]);
        // A run crossing word boundaries, then a run ending exactly at a boundary.
        let mut b = vec![0u8; 24];
        b[7] = 0xf0;
        b[8..16].fill(0xff);
        b[16] = 0x0f;
        assert_eq!(runs(&b, 192), vec![(60, 132)]);
        // Bits past nbits and past the slice are ignored.
        assert_eq!(runs(&[0xff], 3), vec![(0, 3)]);
        assert_eq!(runs(&[0xff], 1000), vec![(0, 8)]);
    }

    #[test]
    fn bitmap_runs_match_bit_by_bit() {
        for seed in 1..40u64 {
            let mut b = test_support::pseudo_random(300, seed);
            // Mix in long all-zero and all-one stretches.
            let at = (seed as usize * 7) % 200;
            b[at..at + 40].fill(if seed % 2 == 0 { 0 } else { 0xff });
            for nbits in [0, 1, 63, 64, 65, 1000, 2399, 2400] {
                assert_eq!(
                    runs(&b, nbits),
                    runs_slow(&b, nbits),
                    "seed {seed} nbits {nbits}"
                );
            }
        }
    }

    #[test]
    fn bitmap_runs_is_fast() {
        // 2^20 blocks: a 4 GiB filesystem of 4 KiB blocks, half used in scattered runs.
        let mut b = test_support::pseudo_random(1 << 17, 7);
        for chunk in b.chunks_mut(4096).step_by(2) {
            chunk.fill(0);
        }
        let t = std::time::Instant::now();
        let mut total = 0;
        bitmap_runs(&b, 1 << 20, |s, e| total += e - s);
        let took = t.elapsed();
        assert!(total > 0);
        assert!(took.as_millis() < 200, "scan took {took:?}");
    }

    #[test]
    fn padded_text_trims() {
        assert_eq!(padded_text(b"DATA       "), Some("DATA".to_string()));
        assert_eq!(padded_text(b"root\0\0\0\0"), Some("root".to_string()));
        assert_eq!(padded_text(b"           "), None);
        assert_eq!(padded_text(b"\0\0\0"), None);
    }
}
