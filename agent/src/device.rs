//! Devices and files on this machine: size, sysfs facts, mounts, and read-only locking.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// What we know about a source or restore target.
#[derive(Debug)]
pub struct Device {
    /// Size in bytes.
    pub size: u64,
    /// True for block devices.
    pub is_block: bool,
    /// Logical sector size.
    pub sector_size: u32,
    /// Model and serial from sysfs.
    pub model: Option<String>,
    /// Serial from sysfs.
    pub serial: Option<String>,
    /// Device numbers that, when mounted, mean this device is in use: the device, its
    /// partitions, and for a file every loop device backed by it (and their partitions).
    pub devs: HashSet<(u32, u32)>,
}

fn major(dev: u64) -> u32 {
    (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32
}
fn minor(dev: u64) -> u32 {
    ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32
}

/// A `dev_t` as (major, minor).
pub fn devno(dev: u64) -> (u32, u32) {
    (major(dev), minor(dev))
}

pub(crate) fn read_trim(p: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

pub(crate) fn parse_devno(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The device, its partitions and every device built on any of them (a device-mapper
/// mapping such as an opened LUKS container or an LVM volume, and theirs in turn), as device
/// numbers: a filesystem mounted on any of those is using this device.
fn with_those_built_on_it(devno: (u32, u32)) -> HashSet<(u32, u32)> {
    let mut out = HashSet::new();
    let mut todo = vec![devno];
    while let Some(d) = todo.pop() {
        // Bounded: a sysfs loop cannot make this run away.
        if !out.insert(d) || out.len() > 4096 {
            continue;
        }
        let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", d.0, d.1));
        let mut above: Vec<PathBuf> = fs::read_dir(sys.join("holders"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if let Ok(rd) = fs::read_dir(&sys) {
            above.extend(
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("partition").exists()),
            );
        }
        todo.extend(
            above
                .iter()
                .filter_map(|p| read_trim(p.join("dev")).and_then(|s| parse_devno(&s))),
        );
    }
    out
}

/// Loop devices whose backing file is `file`.
fn loops_backed_by(file: &Path) -> HashSet<(u32, u32)> {
    let mut out = HashSet::new();
    let Ok(canon) = fs::canonicalize(file) else {
        return out;
    };
    let Ok(rd) = fs::read_dir("/sys/block") else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Some(backing) = read_trim(p.join("loop/backing_file")) else {
            continue;
        };
        if Path::new(&backing) == canon {
            if let Some(d) = read_trim(p.join("dev")).and_then(|s| parse_devno(&s)) {
                out.extend(with_those_built_on_it(d));
            }
        }
    }
    out
}

impl Device {
    /// Inspect `path` (a block device or a regular file).
    pub fn inspect(path: &Path) -> Result<Self> {
        let meta =
            fs::metadata(path).with_context(|| format!("cannot open '{}'", path.display()))?;
        let ft = meta.file_type();
        if ft.is_block_device() {
            let mut f =
                File::open(path).with_context(|| format!("cannot open '{}'", path.display()))?;
            let size = f
                .seek(SeekFrom::End(0))
                .with_context(|| format!("cannot size '{}'", path.display()))?;
            let devno = (major(meta.rdev()), minor(meta.rdev()));
            let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", devno.0, devno.1));
            // A partition has no queue/ of its own: its disk's is one level up.
            let sector_size = read_trim(sys.join("queue/logical_block_size"))
                .or_else(|| read_trim(sys.join("../queue/logical_block_size")))
                .and_then(|s| s.parse().ok())
                .unwrap_or(512);
            let dev_dir = if sys.join("partition").exists() {
                sys.join("../device")
            } else {
                sys.join("device")
            };
            let model = read_trim(dev_dir.join("model"));
            let serial =
                read_trim(dev_dir.join("serial")).or_else(|| read_trim(sys.join("serial")));
            Ok(Self {
                size,
                is_block: true,
                sector_size,
                model,
                serial,
                devs: with_those_built_on_it(devno),
            })
        } else if ft.is_file() {
            Ok(Self {
                size: meta.len(),
                is_block: false,
                sector_size: 512,
                model: None,
                serial: None,
                devs: loops_backed_by(path),
            })
        } else {
            bail!(
                "'{}' is neither a block device nor a regular file",
                path.display()
            )
        }
    }

    /// Where this device (or a partition of it, or a loop device over it) is mounted.
    pub fn mounts(&self) -> Result<Vec<Mount>> {
        Ok(read_mounts()?
            .into_iter()
            .filter(|m| self.devs.contains(&m.devno))
            .collect())
    }
}

/// Where a device's bytes live when they are those of a file: the file (device and inode
/// numbers) and the byte range `[start, end)` of it. For a regular file, all of it; for a
/// loop device, its backing file from its offset (and size limit); for a partition of a loop
/// device, that range shifted by the partition's start. `None` for other devices.
pub fn file_range(path: &Path) -> Option<(u64, u64, u64, u64)> {
    let meta = fs::metadata(path).ok()?;
    if meta.file_type().is_file() {
        return Some((meta.dev(), meta.ino(), 0, meta.len()));
    }
    if !meta.file_type().is_block_device() {
        return None;
    }
    let sys = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        major(meta.rdev()),
        minor(meta.rdev())
    ));
    let (loop_dir, part_start, part_len) = if sys.join("partition").exists() {
        let sectors = |f: &str| read_trim(sys.join(f)).and_then(|s| s.parse::<u64>().ok());
        (
            sys.join("../loop"),
            sectors("start")? * 512,
            Some(sectors("size")? * 512),
        )
    } else {
        (sys.join("loop"), 0, None)
    };
    let backing = fs::metadata(read_trim(loop_dir.join("backing_file"))?).ok()?;
    let number = |f: &str| read_trim(loop_dir.join(f)).and_then(|s| s.parse::<u64>().ok());
    let offset = number("offset").unwrap_or(0);
    let limit = number("sizelimit").filter(|&l| l > 0);
    let loop_end = limit.map_or(backing.len(), |l| offset + l);
    let start = offset + part_start;
    let end = part_len.map_or(loop_end, |l| start + l);
    Some((backing.dev(), backing.ino(), start, end))
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct Mount {
    /// Device numbers.
    pub devno: (u32, u32),
    /// Mount point.
    pub mount_point: PathBuf,
    /// Mounted read-write.
    pub read_write: bool,
    /// Filesystem type (`ext4`, `vfat`, …).
    pub fstype: String,
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// All mounts of this mount namespace.
pub fn read_mounts() -> Result<Vec<Mount>> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 6 {
            continue;
        }
        let Some(devno) = parse_devno(f[2]) else {
            continue;
        };
        let read_write = f[5].split(',').any(|o| o == "rw");
        // Optional fields end with a lone "-"; the filesystem type follows it.
        let fstype = f
            .iter()
            .skip(6)
            .skip_while(|x| **x != "-")
            .nth(1)
            .map(|t| (*t).to_owned())
            .unwrap_or_default();
        out.push(Mount {
            devno,
            mount_point: PathBuf::from(unescape(f[4])),
            read_write,
            fstype,
        });
    }
    Ok(out)
}

/// Remounts read-only for its lifetime, then read-write again.
pub struct ReadOnlyLock {
    points: Vec<PathBuf>,
}

impl ReadOnlyLock {
    /// Remount every read-write mount of the device read-only (fails when a process holds a
    /// file open for writing).
    pub fn acquire(mounts: &[Mount]) -> Result<Self> {
        let mut lock = Self { points: Vec::new() };
        for m in mounts.iter().filter(|m| m.read_write) {
            remount(&m.mount_point, true).with_context(|| {
                format!(
                    "cannot lock '{}' (remount read-only failed; is a file open for writing?)",
                    m.mount_point.display()
                )
            })?;
            lock.points.push(m.mount_point.clone());
        }
        Ok(lock)
    }
}

impl Drop for ReadOnlyLock {
    fn drop(&mut self) {
        for p in self.points.drain(..) {
            if let Err(e) = remount(&p, false) {
                eprintln!(
                    "holdfast-agent: warning: could not remount '{}' read-write: {e}",
                    p.display()
                );
            }
        }
    }
}

fn remount(point: &Path, read_only: bool) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    let mut flags = MsFlags::MS_REMOUNT;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, point, None::<&str>, flags, None::<&str>)?;
    Ok(())
}

/// Bytes in use on the filesystem mounted on `mount_point`.
pub fn used_bytes(mount_point: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(mount_point).ok()?;
    let frag = st.fragment_size() as u64;
    Some((st.blocks() as u64).saturating_sub(st.blocks_free() as u64) * frag)
}

/// The host name, from the kernel.
pub fn hostname() -> String {
    read_trim("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into())
}
