//! How an image of a source that may be mounted read-write is made consistent: which method
//! applies ([`choose`]), and what holds it while the source is read ([`Held`]).
//!
//! | method | when | what the image is |
//! |---|---|---|
//! | `unmounted` | not mounted, or mounted read-only | the filesystem as it is |
//! | `lvm-snapshot` | an LVM logical volume, or a LUKS mapping on one whose key the kernel shows | read from a snapshot of one instant (`lvm.rs`; the LUKS one opened with the live key, `crypt.rs`), removed after; the volume stays in use |
//! | `dm-snapshot` | another device-mapper device (linear, striped, or a LUKS mapping whose key the kernel shows), with a snapshot store off it | its table swapped for a snapshot origin while imaging (`dmsnap.rs`); the volume stays in use |
//! | `freeze` | a mounted filesystem that can be frozen, imaged within the maximum freeze time | one instant (crash-consistent); writers wait meanwhile |
//! | `lock` | asked for | remounted read-only while imaging (fails while a file is open for writing) |
//! | `live` | asked for | copied as it changes: not crash-consistent, a warning |
//! | held together | a run with several sources, for those that are device-mapper devices mounted read-write | read from a snapshot another process took of all of them at one instant (`hold_together.rs`) |
//!
//! `auto` takes the first of `unmounted`, `lvm-snapshot`, `dm-snapshot` and `freeze` that
//! applies and otherwise refuses, naming the choices; when a snapshot was looked for and
//! could not be had, a freeze says why.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use holdfast_image::extents::Extents;
use holdfast_image::io::ReadAt;
use holdfast_image::progress::Cancel;
use holdfast_proto::job::ConsistencyMethod;

use crate::device::{used_bytes, Mount, ReadOnlyLock};
use crate::exit::Refused;
use crate::freeze::Frozen;
use crate::{crypt, dmsnap, lvm};

/// How much of the used space is read to measure the read rate before freezing: enough for
/// a rate (a few device requests' worth), little beside a change-tracked incremental's reads.
const SAMPLE_BYTES: u64 = 16 << 20;
/// The longest the measurement reads.
const SAMPLE_TIME: Duration = Duration::from_secs(2);

/// The method chosen for a source, not yet applied.
#[derive(Debug)]
pub enum Choice {
    /// Nothing mounted read-write: read it as it is (the description says which).
    AsIs(&'static str),
    /// A snapshot of the logical volume, with this much copy-on-write space (thick ones),
    /// opened with the key of the LUKS mapping on it when that is the source (whose mounted
    /// filesystems are synced first).
    Snapshot(lvm::Volume, u64, Option<(crypt::Mapping, Vec<Mount>)>),
    /// A device-mapper snapshot of a device that is not an LVM volume.
    DmSnapshot(dmsnap::Plan),
    /// Frozen; with why no snapshot could be had, when one was looked for.
    Freeze(Vec<Mount>, Option<String>),
    Lock(Vec<Mount>),
    Live,
    /// Held already, with the run's other sources: read this snapshot (described so).
    Together(std::path::PathBuf, String),
}

/// The choice for a source held already by `hold-together`: its snapshot `snapshot`, checked
/// to be one of ours of the source's size.
pub fn held_together(snapshot: &Path, source_size: u64, description: String) -> Result<Choice> {
    let ours = snapshot
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(lvm::PREFIX));
    let size = crate::device::Device::inspect(snapshot)?.size;
    if !ours || size != source_size {
        anyhow::bail!(
            "{} is not a snapshot of this source taken by Holdfast ({size} bytes, the source has {source_size})",
            snapshot.display()
        );
    }
    Ok(Choice::Together(snapshot.to_owned(), description))
}

/// What `auto` and `freeze` need to know before freezing: an estimate of the imaging time.
pub struct Estimate {
    pub used_bytes: u64,
    pub read_rate: f64,
}

impl Estimate {
    /// Measure how fast `sample` reads from `reader` (at most [`SAMPLE_BYTES`] or
    /// [`SAMPLE_TIME`]) and estimate the time to read `used_bytes`.
    pub fn measure(
        reader: &dyn ReadAt,
        sample: &Extents,
        used_bytes: u64,
    ) -> std::io::Result<Self> {
        let mut buf = vec![0u8; 1 << 20];
        let started = Instant::now();
        let mut read = 0u64;
        'ranges: for &(start, end) in sample.ranges() {
            let mut at = start;
            while at < end {
                let n = (end - at).min(buf.len() as u64) as usize;
                reader.read_exact_at(&mut buf[..n], at)?;
                at += n as u64;
                read += n as u64;
                if read >= SAMPLE_BYTES || started.elapsed() >= SAMPLE_TIME {
                    break 'ranges;
                }
            }
        }
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        Ok(Self {
            used_bytes,
            read_rate: read as f64 / secs,
        })
    }

    /// The estimated imaging time.
    pub fn time(&self) -> Duration {
        Duration::from_secs_f64(self.used_bytes as f64 / self.read_rate.max(1.0))
    }
}

/// Choose how to image `source` given how it is mounted. `estimate` is asked, with the bytes
/// the mounted filesystems use, only when a freeze is considered.
pub fn choose(
    asked: ConsistencyMethod,
    source: &Path,
    mounts: &[Mount],
    max_freeze: Duration,
    snapshot_percent: u32,
    estimate: impl FnOnce(u64) -> Result<Estimate>,
) -> Result<Choice> {
    let rw: Vec<Mount> = mounts.iter().filter(|m| m.read_write).cloned().collect();
    let Some(first) = rw.first() else {
        return Ok(Choice::AsIs(if mounts.is_empty() {
            "unmounted"
        } else {
            "mounted read-only"
        }));
    };
    let place = format!(
        "'{}' is mounted read-write on '{}'",
        source.display(),
        first.mount_point.display()
    );
    let choices = "choose --consistency lock (remount it read-only while imaging), \
                   live (copy it as it changes; not crash-consistent), or unmount it";
    // Asked once (it runs `lvs`): only the methods that may snapshot need it.
    let mut no_snapshot = None;
    let lv = match asked {
        ConsistencyMethod::LvmSnapshot | ConsistencyMethod::Auto => {
            match (lvm::volume_of(source)?, crypt::on_volume(source)?) {
                (Some(v), _) => Some((v, None)),
                (None, Some((name, v))) => match crypt::Mapping::read(&name) {
                    Ok(m) => Some((v, Some((m, rw.clone())))),
                    Err(e) if asked == ConsistencyMethod::Auto => {
                        no_snapshot = Some(format!("{e:#}"));
                        None
                    }
                    Err(e) => return Err(Refused(format!("{place}: {e:#}")).into()),
                },
                (None, None) => None,
            }
        }
        _ => None,
    };
    let dm = match asked {
        ConsistencyMethod::DmSnapshot | ConsistencyMethod::Auto if lv.is_none() => {
            match dmsnap::source_of(source).and_then(|d| {
                d.map(|d| dmsnap::Plan::new(d, dmsnap::Store::configured(), snapshot_percent))
                    .transpose()
            }) {
                Ok(plan) => plan,
                Err(e) if asked == ConsistencyMethod::Auto => {
                    no_snapshot.get_or_insert(format!("{e:#}"));
                    None
                }
                Err(e) => return Err(Refused(format!("{place}: {e:#}")).into()),
            }
        }
        _ => None,
    };
    match asked {
        ConsistencyMethod::Unmounted => Err(Refused(format!(
            "{place}, and the consistency method 'unmounted' images only sources that are not: {choices}"
        ))
        .into()),
        ConsistencyMethod::Lock => Ok(Choice::Lock(rw)),
        ConsistencyMethod::Live => Ok(Choice::Live),
        ConsistencyMethod::LvmSnapshot | ConsistencyMethod::Auto
            if asked == ConsistencyMethod::LvmSnapshot || lv.is_some() =>
        {
            let Some((volume, key_of)) = lv else {
                return Err(Refused(format!(
                    "{place}, and it is neither an LVM logical volume nor a LUKS mapping on one: {choices}"
                ))
                .into());
            };
            let cow = if volume.thin {
                0
            } else {
                volume.cow_size(snapshot_percent)?
            };
            Ok(Choice::Snapshot(volume, cow, key_of))
        }
        ConsistencyMethod::DmSnapshot | ConsistencyMethod::Auto
            if asked == ConsistencyMethod::DmSnapshot || dm.is_some() =>
        {
            dm.map(Choice::DmSnapshot).ok_or_else(|| {
                Refused(format!(
                    "{place}, and it is not a device-mapper device (an LVM volume gets lvm-snapshot): {choices}"
                ))
                .into()
            })
        }
        ConsistencyMethod::LvmSnapshot
        | ConsistencyMethod::DmSnapshot
        | ConsistencyMethod::Freeze
        | ConsistencyMethod::Auto => {
            let mut seen = Vec::new();
            let mut used = 0;
            for m in &rw {
                if !seen.contains(&m.devno) {
                    seen.push(m.devno);
                    used += used_bytes(&m.mount_point).unwrap_or(0);
                }
            }
            let e = estimate(used)?;
            if e.time() > max_freeze {
                let why = format!(
                    "imaging its {} used at the measured {}/s would take about {} s, longer than the maximum freeze time of {} s",
                    crate::output::bytes(e.used_bytes),
                    crate::output::bytes(e.read_rate as u64),
                    e.time().as_secs().max(1),
                    max_freeze.as_secs()
                );
                return Err(if asked == ConsistencyMethod::Auto {
                    Refused(format!("{place} and cannot be frozen: {why}; raise the maximum freeze time, or {choices}"))
                } else {
                    Refused(format!("{place}: not frozen, since {why}"))
                }
                .into());
            }
            Ok(Choice::Freeze(rw, no_snapshot))
        }
    }
}

/// A chosen method applied: what holds the source consistent until [`Held::release`].
pub struct Held {
    description: String,
    hold: Hold,
}

enum Hold {
    Nothing,
    Snapshot(lvm::Snapshot),
    DmSnapshot(dmsnap::Snapshot),
    /// A snapshot `hold-together` took and removes.
    Together(std::path::PathBuf),
    Locked(ReadOnlyLock),
    /// The frozen filesystems, and why no snapshot was taken (when one was looked for).
    Frozen(Vec<Frozen>, Option<String>),
}

impl Choice {
    /// How the source is held, for the image's metadata; true for a live copy.
    pub fn description(&self, max_freeze: Duration) -> (String, bool) {
        match self {
            Choice::AsIs(how) => ((*how).to_owned(), false),
            Choice::Snapshot(v, cow, key_of) => {
                let kind = if v.thin {
                    "a thin snapshot"
                } else {
                    "a snapshot"
                };
                let mut how = format!("lvm-snapshot: read from {kind} of {}", v.path());
                if let Some((m, _)) = key_of {
                    how += &format!(", opened with the key of the LUKS mapping {}", m.name);
                }
                if !v.thin {
                    how += &format!(
                        " with {} of copy-on-write space",
                        crate::output::bytes(*cow)
                    );
                }
                (how, false)
            }
            Choice::DmSnapshot(plan) => (plan.description(), false),
            Choice::Together(_, how) => (how.clone(), false),
            Choice::Live => (
                "live: mounted read-write while imaging, not crash-consistent".to_owned(),
                true,
            ),
            Choice::Lock(_) => (
                "locked: remounted read-only while imaging".to_owned(),
                false,
            ),
            Choice::Freeze(_, no_snapshot) => (
                format!(
                    "frozen: the filesystem was frozen while imaging (at most {} s){}",
                    max_freeze.as_secs(),
                    no_snapshot
                        .as_ref()
                        .map_or(String::new(), |why| format!("; no snapshot, since {why}"))
                ),
                false,
            ),
        }
    }

    /// Apply the method. `source_file` is the source, open: its cached pages are dropped once
    /// the filesystem is held, since a filesystem writes file data around the device's cache
    /// and a page read before may be stale.
    pub fn apply(
        self,
        asked: ConsistencyMethod,
        max_freeze: Duration,
        source_file: &std::fs::File,
    ) -> Result<Held> {
        let (mut description, _) = self.description(max_freeze);
        let hold = match self {
            Choice::AsIs(_) | Choice::Live => Hold::Nothing,
            Choice::Snapshot(v, cow, key_of) => {
                if let Some((_, mounts)) = &key_of {
                    // LVM freezes a filesystem on the volume while it takes a snapshot, which
                    // writes out what the filesystem still holds in memory; one on a mapping
                    // above the volume it does not see: write it out first.
                    sync_filesystems(mounts);
                }
                let key_of = key_of.as_ref().map(|(m, _)| m);
                let snapshot = lvm::Snapshot::take(&v, cow, key_of)?;
                if replay_xfs_log(&snapshot.device())? {
                    description += "; the XFS log was replayed into the snapshot";
                }
                Hold::Snapshot(snapshot)
            }
            Choice::DmSnapshot(plan) => {
                let snapshot = dmsnap::Snapshot::take(&plan)?;
                if replay_xfs_log(&snapshot.device())? {
                    description += "; the XFS log was replayed into the snapshot";
                }
                Hold::DmSnapshot(snapshot)
            }
            Choice::Together(snapshot, _) => {
                if replay_xfs_log(&snapshot)? {
                    description += "; the XFS log was replayed into the snapshot";
                }
                Hold::Together(snapshot)
            }
            Choice::Lock(rw) => Hold::Locked(ReadOnlyLock::acquire(&rw)?),
            Choice::Freeze(rw, no_snapshot) => {
                let mut frozen = Vec::new();
                let mut seen = Vec::new();
                for m in rw {
                    // One filesystem mounted in several places is frozen once.
                    if seen.contains(&m.devno) {
                        continue;
                    }
                    seen.push(m.devno);
                    match Frozen::freeze(&m.mount_point, max_freeze) {
                        Ok(f) => frozen.push(f),
                        Err(e) if asked == ConsistencyMethod::Auto => {
                            return Err(Refused(format!(
                                "{e:#}; choose --consistency lock (remount it read-only while imaging) \
                                 or live (copy it as it changes; not crash-consistent), or unmount it"
                            ))
                            .into())
                        }
                        Err(e) => return Err(e),
                    }
                }
                Hold::Frozen(frozen, no_snapshot)
            }
        };
        if matches!(hold, Hold::Locked(_) | Hold::Frozen(..)) {
            drop_cached_pages(source_file);
        }
        Ok(Held { description, hold })
    }
}

impl Held {
    /// True when the filesystem was frozen or remounted: what was read of it before may have
    /// changed (a freeze also writes out its journal).
    pub fn changed_anything(&self) -> bool {
        !matches!(self.hold, Hold::Nothing)
    }

    /// An error once it no longer holds the source as it was (a snapshot that overflowed).
    pub fn check(&self) -> Result<()> {
        match &self.hold {
            Hold::Snapshot(s) => s.fill().map(|_| ()),
            Hold::DmSnapshot(s) => s.fill().map(|_| ()),
            Hold::Together(s) => dmsnap::fill_at(s).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// The device to read instead of the source (a snapshot of it).
    pub fn device(&self) -> Option<std::path::PathBuf> {
        match &self.hold {
            Hold::Snapshot(s) => Some(s.device()),
            Hold::DmSnapshot(s) => Some(s.device()),
            Hold::Together(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// The LVM thin snapshot being read, when it is one.
    pub fn thin_snapshot(&self) -> Result<Option<lvm::ThinSnapshot>> {
        match &self.hold {
            Hold::Snapshot(s) => s.thin(),
            _ => Ok(None),
        }
    }

    /// When imaging must stop, if it is held by a freeze.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.hold {
            Hold::Frozen(f, _) => f.iter().map(Frozen::deadline).min(),
            _ => None,
        }
    }

    /// Let go; how it went, for the report. An error when a freeze ended before we thawed it
    /// (what was read is then not of one instant). A thin snapshot is kept under `keep`,
    /// when given, instead of being removed.
    pub fn release(self, keep: Option<&str>) -> Result<String> {
        match self.hold {
            Hold::Nothing => Ok(self.description),
            Hold::Snapshot(snapshot) => {
                let fill = snapshot.fill();
                match keep {
                    Some(name) if fill.is_ok() => {
                        let description = match snapshot.keep_as(name) {
                            Ok(()) => format!(
                                "{}; the snapshot is kept as {name} for the next incremental",
                                self.description
                            ),
                            Err(e) => format!(
                                "{}; the snapshot could not be kept for the next incremental ({e:#})",
                                self.description
                            ),
                        };
                        filled(description, fill, Ok(()))
                    }
                    _ => {
                        let removed = snapshot.remove();
                        filled(self.description, fill, removed)
                    }
                }
            }
            Hold::DmSnapshot(snapshot) => {
                let fill = snapshot.fill();
                let removed = snapshot.remove();
                filled(self.description, fill, removed)
            }
            Hold::Together(s) => filled(self.description, dmsnap::fill_at(&s), Ok(())),
            Hold::Locked(lock) => {
                drop(lock);
                Ok(self.description)
            }
            Hold::Frozen(frozen, no_snapshot) => {
                let mut longest = Duration::ZERO;
                let mut failed = None;
                for f in frozen {
                    match f.thaw() {
                        Ok(held) => longest = longest.max(held),
                        Err(e) => failed = Some(e),
                    }
                }
                if let Some(e) = failed {
                    return Err(e);
                }
                Ok(format!(
                    "frozen: the filesystem was frozen for {:.1} s while imaging{}",
                    longest.as_secs_f64(),
                    no_snapshot.map_or(String::new(), |why| format!("; no snapshot, since {why}"))
                ))
            }
        }
    }
}

/// Why imaging was stopped before its end (other than a cancel).
pub enum Stopped {
    /// The freeze's maximum time ran out.
    Deadline,
    /// What holds the source stopped holding it (a snapshot overflowed).
    Lost(String),
}

/// How often a held source is checked while imaging: a snapshot's fill takes an `lvs` run,
/// whose cost shows on a busy machine; the check at the end catches what the last one missed.
const CHECK_EVERY: Duration = Duration::from_secs(5);

impl Held {
    /// Until `done`: trip `stop` when the command is cancelled, at the freeze's deadline, or
    /// when the hold is lost; why, unless cancelled.
    pub fn watch(&self, stop: &Cancel, done: &AtomicBool) -> Option<Stopped> {
        let deadline = self.deadline();
        let mut next_check = Instant::now() + CHECK_EVERY;
        while !done.load(Ordering::Relaxed) {
            let now = Instant::now();
            let why = if crate::CANCEL.is_cancelled() {
                stop.cancel();
                return None;
            } else if deadline.is_some_and(|d| now >= d) {
                Some(Stopped::Deadline)
            } else if now >= next_check {
                next_check = now + CHECK_EVERY;
                self.check().err().map(|e| Stopped::Lost(format!("{e:#}")))
            } else {
                None
            };
            if why.is_some() {
                stop.cancel();
                return why;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Undo what imaging processes that are gone (killed) left: LVM snapshots, device-mapper
/// devices swapped for a snapshot origin (or suspended midway through the swap), and LUKS
/// volumes opened to be read decrypted.
pub fn remove_stale_snapshots() {
    lvm::remove_stale();
    dmsnap::remove_stale();
    crate::luks::remove_stale();
}

/// A snapshot's description with how full it got; an error when it overflowed or could not
/// be removed.
fn filled(description: String, fill: Result<f64>, removed: Result<()>) -> Result<String> {
    let fill = fill?;
    removed?;
    Ok(format!(
        "{description}; {fill:.0} % of it was filled by writes while imaging"
    ))
}

/// When the snapshot at `device` holds an XFS filesystem whose log has changes not yet in
/// place, mount it once, which replays them into the snapshot, so it is imaged by its used
/// blocks. (LVM freezes a filesystem on the volume itself while it takes the snapshot, which
/// leaves the log covered; one above a LUKS mapping it does not see.)
/// True when it did.
fn replay_xfs_log(device: &Path) -> Result<bool> {
    let file = std::fs::File::open(device)
        .map_err(|e| anyhow::anyhow!("cannot open the snapshot '{}': {e}", device.display()))?;
    let size = crate::device::Device::inspect(device)?.size;
    let reader = holdfast_image::io::FileReadAt::new(file, size);
    // Unreadable (e.g. a snapshot already overflowed): the reads that follow say why.
    if !holdfast_image::fs::xfs::log_needs_replay(&reader).unwrap_or(false) {
        return Ok(false);
    }
    let dir = Path::new("/run").join(format!("holdfast-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // `nouuid`: the volume it is a snapshot of is mounted with the same UUID.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "xfs", "-o", "nouuid"])
        .arg(device)
        .arg(&dir)
        .output()?;
    let result = if mounted.status.success() {
        let unmounted = std::process::Command::new("umount").arg(&dir).output()?;
        if unmounted.status.success() {
            Ok(true)
        } else {
            Err(anyhow::anyhow!(
                "cannot unmount the snapshot after replaying its XFS log: {}",
                String::from_utf8_lossy(&unmounted.stderr).trim()
            ))
        }
    } else {
        Err(anyhow::anyhow!(
            "cannot mount the snapshot to replay its XFS log: {}",
            String::from_utf8_lossy(&mounted.stderr).trim()
        ))
    };
    let _ = std::fs::remove_dir(&dir);
    result
}

/// Write out what the mounted filesystems hold in memory (`syncfs`); best effort, since the
/// snapshot that follows is crash-consistent either way.
fn sync_filesystems(mounts: &[Mount]) {
    for m in mounts {
        if let Ok(dir) = std::fs::File::open(&m.mount_point) {
            let _ = nix::unistd::syncfs(dir.as_raw_fd());
        }
    }
}

/// Drop the device's clean cached pages (`POSIX_FADV_DONTNEED`), so reads come from the disk.
fn drop_cached_pages(file: &std::fs::File) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    let _ = posix_fadvise(
        file.as_raw_fd(),
        0,
        0,
        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// What imaging `source` with `asked` would do now, changing nothing: the description, and
/// whether it is a warning (a live copy); an error says why it would be refused.
pub fn preview(
    source: &Path,
    asked: ConsistencyMethod,
    max_freeze: Duration,
    snapshot_percent: u32,
) -> Result<(String, bool)> {
    let dev = crate::device::Device::inspect(source)?;
    let file = std::fs::File::open(source)
        .map_err(|e| anyhow::anyhow!("cannot open '{}': {e}", source.display()))?;
    let reader = holdfast_image::io::FileReadAt::new(file, dev.size);
    let mut estimated = None;
    let choice = choose(
        asked,
        source,
        &dev.mounts()?,
        max_freeze,
        snapshot_percent,
        |used| {
            let plan = holdfast_image::plan::plan_source(&reader, dev.sector_size, false)?;
            let e = Estimate::measure(&reader, &plan.used, used)?;
            estimated = Some(e.time());
            Ok(e)
        },
    )?;
    let (mut how, live) = choice.description(max_freeze);
    if let Some(t) = estimated {
        how = format!(
            "{how}; the estimated imaging time is {:.0} s",
            t.as_secs_f64().ceil()
        );
    }
    Ok((how, live))
}
