//! Change tracking from the block writes themselves: between two images, the kernel's
//! `block_bio_queue` tracepoint reports every write, discard and zeroing sent to the source
//! device, and the agent keeps their ranges. The next incremental reads only what was
//! written since the base image's cut — whatever the filesystem, and within a file, only
//! the part that was rewritten (an inode's change time says only *that* a file changed).
//!
//! No kernel module and no BPF: a tracefs instance of our own per device
//! (`/sys/kernel/tracing/instances/holdfast-…`), filtered on the device's disk, buffers the
//! events in the kernel; whoever next takes the device's lock (the daemon every few
//! seconds, or `image create`) reads them from the instance's `trace_pipe` into the record
//! kept in the write-log folder. Cuts are markers written into the same stream
//! (`trace_marker`), so an event falls before or after a cut exactly as the kernel ordered
//! them; an image's cut is made before its source is held, so every write that reaches a
//! later snapshot is after it.
//!
//! A gap starts a new recording (a new session) and the images cut in the old one fall
//! back to the filesystem's change source, with the reason: a reboot, events lost because
//! the buffer filled before it was read, the instance removed or reconfigured, the device
//! replaced (its disk sequence number changed). Writes that do not pass through this
//! machine's block layer as requests to the device (the disk written from elsewhere, a
//! loop device's file written directly, `SG_IO` or NVMe passthrough commands) cannot be
//! seen: `image create` compares each filesystem's superblock area with the base where the
//! record says nothing was written, and beyond that the full hash pass every few
//! incrementals and the filesystems' mount counts are the safeguards, as for the other
//! change sources.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use holdfast_image::changes::WriteMark;
use holdfast_image::extents::Extents;
use serde::{Deserialize, Serialize};

use crate::device::devno;

/// How the next incremental finds changes, for reports.
pub const SOURCE: &str = "block writes traced by the agent";

const TRACEFS: &str = "/sys/kernel/tracing";
/// Which folder each instance tag belongs to, for this boot (as the instances are): an
/// instance whose folder is gone is removed by the next agent that looks.
const REGISTRY: &str = "/run/holdfast/write-logs";
/// Each CPU's buffer in an instance: ~60 000 writes before the oldest are lost (a gap).
const BUFFER_KB_PER_CPU: u32 = 4096;
/// Cuts kept: the oldest two segments are merged beyond this (the cut between them is
/// forgotten; an image cut there gets the filesystem's change source next time).
const MAX_SEGMENTS: usize = 32;
/// Ranges are kept in units of at least 4 KiB, coarser on large devices so that a record
/// holds at most this many units.
const MAX_UNITS: u64 = 1 << 25;
/// How long to wait for our own marker to come out of the trace.
const MARKER_WAIT: Duration = Duration::from_secs(10);

/// Where a device's writes show in the trace: block events name the whole disk and count
/// sectors from its start, so a partition's are shifted and clipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Place {
    /// The device's own number.
    dev: (u32, u32),
    /// Its disk's (itself when it is not a partition).
    disk: (u32, u32),
    /// First sector of the device on its disk.
    start: u64,
    /// Its length in 512-byte sectors.
    sectors: u64,
    /// The disk's sequence number: a new one each time a disk appears under a number.
    diskseq: Option<u64>,
}

impl Place {
    fn of(dev: (u32, u32)) -> Result<Self> {
        let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", dev.0, dev.1));
        let sys = fs::canonicalize(&sys)
            .with_context(|| format!("device {}:{} is not in /sys", dev.0, dev.1))?;
        let number = |p: &Path| -> Result<u64> {
            let s =
                fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            s.trim()
                .parse()
                .with_context(|| format!("{} holds no number", p.display()))
        };
        let sectors = number(&sys.join("size"))?;
        let (disk_dir, start) = if sys.join("partition").exists() {
            let disk = sys
                .parent()
                .ok_or_else(|| anyhow!("partition {} has no disk", sys.display()))?;
            (disk.to_path_buf(), number(&sys.join("start"))?)
        } else {
            (sys.clone(), 0)
        };
        let disk_no = fs::read_to_string(disk_dir.join("dev"))
            .with_context(|| format!("cannot read {}/dev", disk_dir.display()))?;
        let (major, minor) = disk_no
            .trim()
            .split_once(':')
            .ok_or_else(|| anyhow!("{}/dev is not major:minor", disk_dir.display()))?;
        Ok(Self {
            dev,
            disk: (major.parse()?, minor.parse()?),
            start,
            sectors,
            diskseq: number(&disk_dir.join("diskseq")).ok(),
        })
    }

    fn kernel_dev(d: (u32, u32)) -> u64 {
        (u64::from(d.0) << 20) | u64::from(d.1)
    }

    /// The instance's event filter.
    fn filter(&self) -> String {
        let disk = format!("dev == {}", Self::kernel_dev(self.disk));
        if self.disk == self.dev {
            disk
        } else {
            // Older kernels may name the partition, counting from its start.
            format!("{disk} || dev == {}", Self::kernel_dev(self.dev))
        }
    }

    /// The device's byte range a traced request covers, if any.
    fn bytes(&self, dev: (u32, u32), sector: u64, count: u64) -> Option<(u64, u64)> {
        let from = if dev == self.disk {
            self.start
        } else if dev == self.dev {
            0
        } else {
            return None;
        };
        let start = sector.max(from);
        let end = sector.saturating_add(count).min(from + self.sectors);
        (start < end).then(|| ((start - from) * 512, (end - from) * 512))
    }
}

/// One line of a trace, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A write, discard or zeroing of `count` sectors from `sector` on device `dev`.
    Change {
        dev: (u32, u32),
        sector: u64,
        count: u64,
    },
    /// A marker we wrote.
    Marker(String),
    /// The kernel says events were lost here.
    Lost,
    /// A read, a flush, anything else.
    Other,
}

impl Line {
    fn parse(line: &str) -> Self {
        if line.contains("[LOST ") && line.contains(" EVENTS]") {
            return Self::Lost;
        }
        if let Some((_, text)) = line.split_once(": tracing_mark_write: ") {
            return Self::Marker(text.trim_end().to_owned());
        }
        let Some((_, event)) = line.split_once(": block_bio_queue: ") else {
            return Self::Other;
        };
        // "MAJOR,MINOR RWBS SECTOR + COUNT [COMM]"
        let mut f = event.split_whitespace();
        let (Some(dev), Some(rwbs), Some(sector), Some("+"), Some(count)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return Self::Other;
        };
        let parsed = (|| {
            let (major, minor) = dev.split_once(',')?;
            Some((
                (major.parse().ok()?, minor.parse().ok()?),
                sector.parse().ok()?,
                count.parse().ok()?,
            ))
        })();
        match parsed {
            // Reads are the only requests named with an R; anything else of some length
            // (write, discard, secure erase, write zeroes, an operation we do not know)
            // may change what the sectors read as.
            Some((dev, sector, count)) if !rwbs.contains('R') && count > 0 => {
                Self::Change { dev, sector, count }
            }
            Some(_) => Self::Other,
            None => Self::Lost,
        }
    }
}

/// Writes after one cut (or since the recording started) up to the next.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Segment {
    /// The cut it starts at (none: the recording's start).
    after_cut: Option<u64>,
    /// Written byte ranges of the device: sorted, disjoint, in whole units.
    ranges: Vec<(u64, u64)>,
}

/// The record kept for one device.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kept {
    session: String,
    /// Why and when (Unix seconds) this recording started.
    started: String,
    started_at: i64,
    boot_id: String,
    place: Place,
    instance: String,
    unit: u64,
    /// Events the kernel dropped from the instance so far (counted at the last read).
    lost: u64,
    next_cut: u64,
    segments: Vec<Segment>,
}

/// The record of one device's writes, locked while held.
pub struct DeviceLog {
    path: PathBuf,
    _lock: File,
    rec: Kept,
    changed: bool,
}

fn now() -> i64 {
    i64::try_from(holdfast_image::writer::now()).unwrap_or(i64::MAX)
}

fn read_line(p: impl AsRef<Path>) -> Result<String> {
    let p = p.as_ref();
    Ok(fs::read_to_string(p)
        .with_context(|| format!("cannot read {}", p.display()))?
        .trim()
        .to_owned())
}

/// A tracefs file that answers only a first read (an event's `filter`: a second read at
/// an offset returns nothing), read in one go.
fn read_once(p: &Path) -> Result<String> {
    let mut buf = vec![0u8; 1 << 16];
    let n = File::open(p)
        .and_then(|mut f| f.read(&mut buf))
        .with_context(|| format!("cannot read {}", p.display()))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn write_to(p: impl AsRef<Path>, what: &str) -> Result<()> {
    let p = p.as_ref();
    fs::write(p, what).with_context(|| format!("cannot write '{what}' to {}", p.display()))
}

/// Sort and coalesce ranges (touching ones join).
fn coalesced(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Make tracefs reachable (most systems mount it; a minimal one may not).
fn tracefs() -> Result<PathBuf> {
    let root = Path::new(TRACEFS);
    if !root.join("instances").is_dir() {
        nix::mount::mount(
            Some("nodev"),
            root,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| {
            format!("kernel tracing is not available: cannot mount tracefs on {TRACEFS}")
        })?;
    }
    if !root.join("events/block/block_bio_queue").is_dir() {
        bail!("this kernel has no block_bio_queue tracepoint");
    }
    Ok(root.to_path_buf())
}

/// A short tag of the log folder, so that two folders never read each other's instances.
fn folder_tag(dir: &Path) -> String {
    let canon = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    // FNV-1a: stable across builds, unlike the std hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in canon.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

impl DeviceLog {
    /// Open (starting when needed) the record of `device`'s writes kept in `dir`.
    pub fn open(dir: &Path, device: &Path) -> Result<Self> {
        let meta =
            fs::metadata(device).with_context(|| format!("cannot open '{}'", device.display()))?;
        if !meta.file_type().is_block_device() {
            bail!("'{}' is not a block device", device.display());
        }
        Self::open_dev(dir, devno(meta.rdev()))
    }

    fn open_dev(dir: &Path, dev: (u32, u32)) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create '{}'", dir.display()))?;
        let name = format!("{}_{}", dev.0, dev.1);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{name}.lock")))
            .with_context(|| format!("cannot open the lock of {}", dir.display()))?;
        lock.lock().context("cannot lock the write log")?;
        let path = dir.join(format!("{name}.json"));
        let tag = folder_tag(dir);
        register(dir, &tag)?;
        remove_orphans();
        let instance = format!("holdfast-{tag}-{name}");
        let kept = match fs::read(&path) {
            Ok(bytes) => Some(
                serde_json::from_slice::<Kept>(&bytes)
                    .map_err(|e| format!("its record {} is unreadable ({e})", path.display())),
            ),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => Some(Err(format!(
                "its record {} is unreadable ({e})",
                path.display()
            ))),
        };
        let place = Place::of(dev)?;
        let mut log = Self {
            path,
            _lock: lock,
            rec: Kept {
                session: String::new(),
                started: String::new(),
                started_at: 0,
                boot_id: String::new(),
                place,
                instance,
                unit: 0,
                lost: 0,
                next_cut: 1,
                segments: Vec::new(),
            },
            changed: true,
        };
        let why = match kept {
            None => Some("first image of this device with write tracking".to_owned()),
            Some(Err(why)) => Some(why),
            Some(Ok(rec)) => match log.still_recording(&rec) {
                Ok(()) => {
                    log.rec = rec;
                    log.changed = false;
                    None
                }
                Err(why) => Some(why),
            },
        };
        if let Some(why) = why {
            log.restart(&why)?;
        }
        Ok(log)
    }

    /// Whether the kept record `rec` still follows every write of the device.
    fn still_recording(&self, rec: &Kept) -> std::result::Result<(), String> {
        let boot = read_line("/proc/sys/kernel/random/boot_id").map_err(|e| format!("{e:#}"))?;
        if rec.boot_id != boot {
            return Err("the machine restarted".into());
        }
        if rec.place != self.rec.place {
            return Err("the device was replaced or resized".into());
        }
        let inst = Path::new(TRACEFS).join("instances").join(&rec.instance);
        let ev = inst.join("events/block/block_bio_queue");
        let on = |p: PathBuf| read_line(p).is_ok_and(|v| v == "1");
        if !on(inst.join("tracing_on")) || !on(ev.join("enable")) {
            return Err("its trace was stopped or removed".into());
        }
        let filter = read_once(&ev.join("filter")).unwrap_or_default();
        if filter.trim() != rec.place.filter() {
            return Err(format!(
                "its trace was reconfigured (filter '{}', not '{}')",
                filter.trim(),
                rec.place.filter()
            ));
        }
        Ok(())
    }

    /// Start a new recording, saying why.
    fn restart(&mut self, why: &str) -> Result<()> {
        let root = tracefs()?;
        let inst = root.join("instances").join(&self.rec.instance);
        if inst.exists() {
            fs::remove_dir(&inst)
                .with_context(|| format!("cannot remove the old trace {}", inst.display()))?;
        }
        fs::create_dir(&inst)
            .with_context(|| format!("cannot create the trace {}", inst.display()))?;
        // One clock for every CPU, so that the merged stream is in the order of events.
        let _ = write_to(inst.join("trace_clock"), "mono");
        write_to(inst.join("buffer_size_kb"), &BUFFER_KB_PER_CPU.to_string())?;
        let ev = inst.join("events/block/block_bio_queue");
        write_to(ev.join("filter"), &self.rec.place.filter())?;
        write_to(ev.join("enable"), "1")?;
        let size = self.rec.place.sectors * 512;
        self.rec.unit = (size / MAX_UNITS).next_power_of_two().max(4096);
        self.rec.session = read_line("/proc/sys/kernel/random/uuid")?;
        self.rec.boot_id = read_line("/proc/sys/kernel/random/boot_id")?;
        self.rec.started = why.to_owned();
        self.rec.started_at = now();
        self.rec.lost = 0;
        self.rec.next_cut = 1;
        self.rec.segments = vec![Segment::default()];
        self.changed = true;
        Ok(())
    }

    fn instance(&self) -> PathBuf {
        Path::new(TRACEFS)
            .join("instances")
            .join(&self.rec.instance)
    }

    /// Events the kernel has dropped from the instance's buffers.
    fn lost_events(&self) -> Result<u64> {
        let mut total = 0;
        let per_cpu = self.instance().join("per_cpu");
        for cpu in
            fs::read_dir(&per_cpu).with_context(|| format!("cannot list {}", per_cpu.display()))?
        {
            let path = cpu?.path().join("stats");
            let stats = fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            for line in stats.lines() {
                let Some((key, value)) = line.split_once(':') else {
                    continue;
                };
                if matches!(key.trim(), "overrun" | "commit overrun" | "dropped events") {
                    total += value
                        .trim()
                        .parse::<u64>()
                        .with_context(|| format!("{}: '{line}' is not a count", path.display()))?;
                }
            }
        }
        Ok(total)
    }

    /// Read what the kernel holds for us, up to `marker` when given (written just before).
    fn read_trace(&mut self, marker: Option<&str>) -> Result<()> {
        if let Some(m) = marker {
            write_to(self.instance().join("trace_marker"), m)?;
        }
        let pipe = self.instance().join("trace_pipe");
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&pipe)
            .with_context(|| format!("cannot open {}", pipe.display()))?;
        let started = Instant::now();
        let mut buf = vec![0u8; 1 << 16];
        let mut carry = Vec::new();
        let mut batch = Vec::new();
        let mut lost = false;
        let mut seen = marker.is_none();
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) => 0,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", pipe.display())),
            };
            if n == 0 {
                // The kernel hands out whole lines: a partial one means more is coming.
                if seen && carry.is_empty() {
                    break;
                }
                if started.elapsed() > MARKER_WAIT {
                    bail!(
                        "the trace did not show our marker within {} s",
                        MARKER_WAIT.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            carry.extend_from_slice(&buf[..n]);
            let mut at = 0;
            while let Some(len) = carry[at..].iter().position(|&b| b == b'\n') {
                let line = Line::parse(&String::from_utf8_lossy(&carry[at..at + len]));
                at += len + 1;
                match line {
                    Line::Change { dev, sector, count } => {
                        if let Some((s, e)) = self.rec.place.bytes(dev, sector, count) {
                            let u = self.rec.unit;
                            batch.push((s / u * u, e.div_ceil(u) * u));
                        }
                    }
                    Line::Marker(text) => {
                        if let Some(n) = text
                            .strip_prefix("holdfast cut ")
                            .and_then(|n| n.parse().ok())
                        {
                            self.flush(&mut batch);
                            self.rec.segments.push(Segment {
                                after_cut: Some(n),
                                ranges: Vec::new(),
                            });
                            self.changed = true;
                        }
                        if Some(text.as_str()) == marker {
                            seen = true;
                        }
                    }
                    Line::Lost => lost = true,
                    Line::Other => {}
                }
            }
            carry.drain(..at);
        }
        self.flush(&mut batch);
        // An instance with a file open cannot be removed (restarted).
        drop(f);
        let dropped = self.lost_events()?;
        if lost || dropped > self.rec.lost {
            self.restart(&format!(
                "the kernel dropped {} traced writes: its buffer filled before the agent read it",
                dropped.saturating_sub(self.rec.lost).max(1)
            ))?;
        }
        Ok(())
    }

    fn flush(&mut self, batch: &mut Vec<(u64, u64)>) {
        if batch.is_empty() {
            return;
        }
        if let Some(last) = self.rec.segments.last_mut() {
            let mut all = std::mem::take(&mut last.ranges);
            all.append(batch);
            last.ranges = coalesced(all);
            self.changed = true;
        }
    }

    /// Read what the kernel holds and save the record.
    pub fn update(mut self) -> Result<()> {
        self.read_trace(None)?;
        self.save()
    }

    /// Cut the record here: the image made next is `WriteMark`'s, and the one after it
    /// reads what is written from now on. Call before holding the source.
    pub fn cut(mut self) -> Result<WriteMark> {
        // A gap found while reading up to the cut starts a new recording: cut that one.
        for _ in 0..2 {
            let n = self.rec.next_cut;
            self.rec.next_cut += 1;
            self.read_trace(Some(&format!("holdfast cut {n}")))?;
            if !self.rec.segments.iter().any(|s| s.after_cut == Some(n)) {
                continue;
            }
            while self.rec.segments.len() > MAX_SEGMENTS {
                let second = self.rec.segments.remove(1);
                let first = &mut self.rec.segments[0];
                let mut all = std::mem::take(&mut first.ranges);
                all.extend(second.ranges);
                first.ranges = coalesced(all);
            }
            self.save()?;
            return Ok(WriteMark {
                session: self.rec.session.clone(),
                cut: n,
            });
        }
        bail!("the trace kept losing events while it was cut")
    }

    /// Byte ranges of the device written since `mark`, or why they are not known.
    pub fn written_since(
        mut self,
        mark: &WriteMark,
    ) -> Result<std::result::Result<Extents, String>> {
        let sync = format!("holdfast read {}", self.rec.session);
        self.read_trace(Some(&sync))?;
        self.save()?;
        if self.rec.session != mark.session {
            let when = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH
                    + Duration::from_secs(u64::try_from(self.rec.started_at).unwrap_or(0)),
            );
            return Ok(Err(format!(
                "the record of writes started again at {when}, after the base image's cut: {}",
                self.rec.started
            )));
        }
        let Some(at) = self
            .rec
            .segments
            .iter()
            .position(|s| s.after_cut == Some(mark.cut))
        else {
            return Ok(Err(format!(
                "the record of writes no longer reaches back to the base image's cut (the last {MAX_SEGMENTS} cuts are kept)"
            )));
        };
        let mut all = Vec::new();
        for s in &self.rec.segments[at..] {
            all.extend_from_slice(&s.ranges);
        }
        let mut written = Extents::new();
        for (s, e) in coalesced(all) {
            written.add(s, e - s);
        }
        Ok(Ok(written))
    }

    fn save(&mut self) -> Result<()> {
        if !self.changed {
            return Ok(());
        }
        let tmp = self.path.with_extension("json.part");
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec(&self.rec)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.changed = false;
        Ok(())
    }
}

/// Record that instances tagged `tag` belong to `dir`.
fn register(dir: &Path, tag: &str) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(REGISTRY)
        .with_context(|| format!("cannot create {REGISTRY}"))?;
    let canon = fs::canonicalize(dir).with_context(|| format!("cannot find {}", dir.display()))?;
    let entry = Path::new(REGISTRY).join(tag);
    if fs::read(&entry).ok().as_deref() != Some(canon.as_os_str().as_encoded_bytes()) {
        fs::write(&entry, canon.as_os_str().as_encoded_bytes())
            .with_context(|| format!("cannot write {}", entry.display()))?;
    }
    Ok(())
}

/// Remove our instances whose device or folder is gone: nobody reads them any more, and
/// each holds its buffers. Best effort: one in use by its reader stays until next time.
fn remove_orphans() {
    let Ok(entries) = fs::read_dir(Path::new(TRACEFS).join("instances")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some((tag, dev)) = name
            .to_str()
            .and_then(|n| n.strip_prefix("holdfast-"))
            .and_then(|n| n.split_once('-'))
        else {
            continue;
        };
        let device_gone = !Path::new(&format!("/sys/dev/block/{}", dev.replace('_', ":"))).exists();
        let folder_gone = fs::read(Path::new(REGISTRY).join(tag))
            .map(|f| !Path::new(std::ffi::OsStr::from_bytes(&f)).is_dir())
            .unwrap_or(true);
        if device_gone || folder_gone {
            let _ = fs::remove_dir(e.path());
        }
    }
    for e in fs::read_dir(REGISTRY).into_iter().flatten().flatten() {
        let gone = fs::read(e.path())
            .map(|f| !Path::new(std::ffi::OsStr::from_bytes(&f)).is_dir())
            .unwrap_or(true);
        if gone {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Read every device's trace kept in `dir` (the daemon, every few seconds), so that no
/// buffer fills; the record of a device that is gone is removed with its trace, and so is
/// any trace of ours whose folder is gone.
pub fn update_all(dir: &Path) -> Result<()> {
    remove_orphans();
    for dev in kept_devices(dir)? {
        if Path::new(&format!("/sys/dev/block/{}:{}", dev.0, dev.1)).exists() {
            DeviceLog::open_dev(dir, dev)?.update()?;
        } else {
            forget(dir, dev)?;
        }
    }
    Ok(())
}

/// Stop recording `dev`'s writes: remove its trace and record.
fn forget(dir: &Path, dev: (u32, u32)) -> Result<()> {
    let name = format!("{}_{}", dev.0, dev.1);
    let inst = Path::new(TRACEFS)
        .join("instances")
        .join(format!("holdfast-{}-{name}", folder_tag(dir)));
    if inst.exists() {
        fs::remove_dir(&inst).with_context(|| format!("cannot remove {}", inst.display()))?;
    }
    for ext in ["json", "lock"] {
        let _ = fs::remove_file(dir.join(format!("{name}.{ext}")));
    }
    Ok(())
}

/// Stop recording every device kept in `dir`.
pub fn forget_all(dir: &Path) -> Result<()> {
    for dev in kept_devices(dir)? {
        forget(dir, dev)?;
    }
    Ok(())
}

/// The devices whose records `dir` keeps (`MAJOR_MINOR.json`).
fn kept_devices(dir: &Path) -> Result<Vec<(u32, u32)>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut devs = Vec::new();
    for e in entries {
        let name = e?.file_name();
        if let Some(dev) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.split_once('_'))
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        {
            devs.push(dev);
        }
    }
    Ok(devs)
}

impl DeviceLog {
    /// One line for `write-log show`.
    fn describe(&self) -> String {
        let r = &self.rec;
        let since = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(r.started_at).unwrap_or(0)),
        );
        let cuts = r.segments.iter().filter(|s| s.after_cut.is_some()).count();
        let last: u64 = r
            .segments
            .last()
            .map_or(0, |s| s.ranges.iter().map(|(a, b)| b - a).sum());
        format!(
            "{}:{}  recording since {since} ({}); {cuts} cuts kept; {:.1} MiB written since the last, in units of {} KiB",
            r.place.dev.0,
            r.place.dev.1,
            r.started,
            last as f64 / f64::from(1 << 20),
            r.unit / 1024
        )
    }
}

/// `holdfast-agent write-log …`.
pub fn cli(c: crate::cli::WriteLogCommand) -> Result<std::process::ExitCode> {
    use crate::cli::WriteLogCommand;
    match c {
        WriteLogCommand::Update(a) => update_all(&a.dir)?,
        WriteLogCommand::Show(a) => {
            for dev in kept_devices(&a.dir)? {
                let mut log = DeviceLog::open_dev(&a.dir, dev)?;
                log.read_trace(None)?;
                log.save()?;
                println!("{}", log.describe());
            }
        }
        WriteLogCommand::Stop(a) => forget_all(&a.dir)?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_parse_into_records() {
        let w = "  kworker/u8:2-56  [001] ..... 44818.220826: block_bio_queue: 7,0 WS 104528 + 8 [kworker/u8:2]";
        assert_eq!(
            Line::parse(w),
            Line::Change {
                dev: (7, 0),
                sector: 104_528,
                count: 8
            }
        );
        let discard =
            "blkdiscard-21 [000] ..... 1.2: block_bio_queue: 259,1 DS 104576 + 128 [blkdiscard]";
        assert!(matches!(
            Line::parse(discard),
            Line::Change { dev: (259, 1), .. }
        ));
        // Preflush and FUA around a write are still a write.
        let fua =
            "jbd2/loop0-8-1 [000] ..... 1.2: block_bio_queue: 7,0 FWFS 4096 + 8 [jbd2/loop0-8]";
        assert!(matches!(Line::parse(fua), Line::Change { .. }));
        let read = "dd-1 [001] ..... 1.2: block_bio_queue: 7,0 RA 409472 + 8 [dd]";
        assert_eq!(Line::parse(read), Line::Other);
        let flush = "kworker-1 [001] ..... 1.2: block_bio_queue: 7,0 FWS 0 + 0 [kworker]";
        assert_eq!(Line::parse(flush), Line::Other);
        let mark = "agent-9 [000] ...1. 1.2: tracing_mark_write: holdfast cut 5\n";
        assert_eq!(Line::parse(mark), Line::Marker("holdfast cut 5".into()));
        assert_eq!(Line::parse("CPU:1 [LOST 42 EVENTS]"), Line::Lost);
        // A block event we cannot read might have been a write: a gap, not nothing.
        let garbled = "x-1 [000] ..... 1.2: block_bio_queue: 7,zero WS 8 + 8 [x]";
        assert_eq!(Line::parse(garbled), Line::Lost);
    }

    #[test]
    fn a_partition_takes_only_its_own_sectors_counted_from_its_start() {
        let part = Place {
            dev: (259, 1),
            disk: (7, 0),
            start: 2048,
            sectors: 1000,
            diskseq: None,
        };
        assert_eq!(part.bytes((7, 0), 2048, 8), Some((0, 4096)));
        // Straddling either end: clipped.
        assert_eq!(part.bytes((7, 0), 2040, 16), Some((0, 4096)));
        assert_eq!(part.bytes((7, 0), 3040, 16), Some((992 * 512, 1000 * 512)));
        // Another partition's sectors, or another disk's.
        assert_eq!(part.bytes((7, 0), 0, 2048), None);
        assert_eq!(part.bytes((7, 0), 3048, 8), None);
        assert_eq!(part.bytes((7, 1), 2048, 8), None);
        // A kernel naming the partition counts from its start.
        assert_eq!(part.bytes((259, 1), 8, 8), Some((4096, 8192)));
        assert_eq!(part.filter(), "dev == 7340032 || dev == 271581185");
        let disk = Place {
            dev: (7, 0),
            disk: (7, 0),
            start: 0,
            sectors: 1000,
            diskseq: Some(3),
        };
        assert_eq!(disk.filter(), "dev == 7340032");
    }

    #[test]
    fn ranges_coalesce_when_they_touch_or_overlap() {
        assert_eq!(
            coalesced(vec![
                (8192, 12288),
                (0, 4096),
                (4096, 8192),
                (20480, 24576),
                (22000, 23000)
            ]),
            vec![(0, 12288), (20480, 24576)]
        );
        assert!(coalesced(Vec::new()).is_empty());
    }
}
