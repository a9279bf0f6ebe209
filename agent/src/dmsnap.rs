//! `dm-snapshot`: a snapshot of a device-mapper device that is not an LVM volume — a LUKS
//! mapping on a partition, a linear or striped mapping made with `dmsetup` — taken by
//! swapping the device's table, as LVM does for a volume that gets its first snapshot.
//!
//! For a source device `D` with table `T`:
//! 1. `holdfast-snap-<pid>-real` is made with `T` (for dm-crypt, the key read from the kernel);
//! 2. the copy-on-write store is made ready: a spare block device named by
//!    `HOLDFAST_SNAPSHOT_STORE`, or (the default) a file `holdfast-snap-<pid>.cow` preallocated
//!    in that directory (`/var/lib/holdfast/snapshots`; allocated up front, so it cannot run
//!    out of room midway), attached to a loop device with direct I/O. (A linear mapping of
//!    the file's extents on the device under its filesystem would spare the loop device, but
//!    the kernel refuses it: a mounted filesystem holds its device exclusively.)
//! 3. `holdfast-snap-<pid>` is loaded as a transient `snapshot` of the real device, and `D` as a
//!    `snapshot-origin` of it; then `D` is suspended (which freezes a filesystem mounted on
//!    it), the snapshot resumed and `D` resumed with its new table. From then on every write to
//!    `D` first copies the old chunk into the store.
//!
//! Step 3 is made with ioctls from locked memory (`holdfast-dm`, `mlockall`): nothing is
//! started, read or written while `D` is suspended. Removing the snapshot swaps `T` back the
//! same way. The store must not live on `D` or anything built on it (writes to `D` would wait
//! on themselves); that and its free space are checked before anything changes. An agent
//! that starts swaps back and removes what a killed run left (see [`remove_stale`]).
//!
//! Mappings whose table cannot be made twice are refused with the reason: LVM volumes (they
//! get `lvm-snapshot`), thin, cache, RAID, multipath, snapshot targets, and LUKS2 mappings
//! whose key the kernel keeps only in its keyring.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use holdfast_dm::{Control, Target};

use crate::device::{devno, parse_devno, read_trim};
use crate::exit::Refused;
use crate::lvm::{made_by_a_gone_process, PREFIX};

/// The store used when `HOLDFAST_SNAPSHOT_STORE` is not set.
pub const DEFAULT_STORE: &str = "/var/lib/holdfast/snapshots";
/// The environment variable naming the store: a directory or a block device.
pub const STORE_VARIABLE: &str = "HOLDFAST_SNAPSHOT_STORE";
/// Targets a table may have to be made a second time over the same devices.
const DUPLICABLE: [&str; 3] = ["linear", "striped", "crypt"];
/// Copy-on-write chunk, in 512-byte sectors (4 KiB, as LVM's default).
const CHUNK_SECTORS: u64 = 8;
/// The smallest store made.
const MIN_STORE: u64 = 8 << 20;

/// A device-mapper device that can be snapshotted, with its table.
pub struct Source {
    pub name: String,
    dev: (u32, u32),
    table: Vec<Target>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("name", &self.name).finish()
    }
}

impl Source {
    /// Its size in bytes.
    fn size(&self) -> u64 {
        self.table.iter().map(|t| t.length).sum::<u64>() * 512
    }

    /// `/dev/mapper/NAME`, for messages.
    pub fn path(&self) -> String {
        format!("/dev/mapper/{}", self.name)
    }

    /// Whether this device is built on `other` (through the devices under it).
    pub fn is_on(&self, other: &Source) -> bool {
        self.dev != other.dev && depends_on(self.dev, other.dev)
    }
}

/// Where copy-on-write data goes.
#[derive(Debug, Clone)]
pub enum Store {
    /// A file preallocated in this directory.
    Directory(PathBuf),
    /// This whole block device.
    Device(PathBuf),
}

impl Store {
    /// The configured store: `HOLDFAST_SNAPSHOT_STORE`, else [`DEFAULT_STORE`].
    pub fn configured() -> Self {
        let path = std::env::var_os(STORE_VARIABLE)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_STORE), PathBuf::from);
        match std::fs::metadata(&path) {
            Ok(m) if m.file_type().is_block_device() => Self::Device(path),
            _ => Self::Directory(path),
        }
    }
}

/// A snapshot decided on: the source, the store and its size.
#[derive(Debug)]
pub struct Plan {
    pub source: Source,
    pub store: Store,
    /// Bytes of copy-on-write space.
    pub cow: u64,
}

/// The device-mapper device `source` is, when it is one that is not an LVM volume; an error
/// that says why when it is one that cannot be snapshotted.
pub fn source_of(source: &Path) -> Result<Option<Source>> {
    mapping_of(source, Volumes::Skip)
}

/// Whether [`mapping_of`] takes LVM logical volumes too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Volumes {
    /// Not a source here: one volume alone gets LVM's own snapshot.
    Skip,
    /// Taken like any linear or striped mapping: LVM snapshots one volume at a time, and
    /// volumes held together must be suspended together (`hold_together.rs`).
    Include,
}

/// The device-mapper device `source` is, LVM volumes taken or not as `volumes` says; an
/// error that says why when it is one that cannot be snapshotted.
pub fn mapping_of(source: &Path, volumes: Volumes) -> Result<Option<Source>> {
    let Ok(meta) = std::fs::metadata(source) else {
        return Ok(None);
    };
    if !meta.file_type().is_block_device() {
        return Ok(None);
    }
    let dev = devno(meta.rdev());
    let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", dev.0, dev.1));
    let Some(name) = read_trim(sys.join("dm/name")) else {
        return Ok(None);
    };
    if volumes == Volumes::Skip
        && read_trim(sys.join("dm/uuid")).is_some_and(|u| u.starts_with("LVM-"))
    {
        return Ok(None);
    }
    if name.starts_with(PREFIX) {
        bail!("{} is a snapshot Holdfast made", source.display());
    }
    // A run killed while this device was the origin of its snapshot left it so: undo that
    // first, which gives the device its own table back.
    remove_stale();
    let table = Control::open()?.table(&name)?;
    if table.is_empty() {
        bail!("the device-mapper device {name} has no table");
    }
    for t in &table {
        if !DUPLICABLE.contains(&t.kind.as_str()) {
            bail!(
                "the device-mapper device {name} is a {} mapping; device-mapper snapshots are \
                 made of linear, striped and crypt mappings",
                t.kind
            );
        }
        if t.kind == "crypt" {
            let key = t.params.split_whitespace().nth(1).unwrap_or_default();
            if let Some(described) = key.strip_prefix(':') {
                let description = described.splitn(3, ':').nth(2).unwrap_or_default();
                if !crate::crypt::keyring_has(description) {
                    bail!("{}", crate::crypt::keyring_only(&name));
                }
            }
        }
    }
    Ok(Some(Source { name, dev, table }))
}

impl Plan {
    /// Check `store` for a snapshot of `source` with `percent` % of its size as
    /// copy-on-write space: not on the source, on a filesystem whose extents can be mapped,
    /// with room.
    pub fn new(source: Source, store: Store, percent: u32) -> Result<Self> {
        let want = (source.size() / 100 * u64::from(percent))
            .next_multiple_of(1 << 20)
            .max(MIN_STORE);
        let (store_dev, cow) = match &store {
            Store::Device(path) => {
                let meta = std::fs::metadata(path)
                    .with_context(|| format!("cannot read '{}'", path.display()))?;
                // Exclusive: refused while mounted or part of another device.
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_EXCL)
                    .open(path)
                    .map_err(|e| {
                        anyhow!(
                            "the snapshot store device {} cannot be used: {e} (it must be a spare device: not mounted, not part of another)",
                            path.display()
                        )
                    })?;
                let size = crate::device::Device::inspect(path)?.size;
                (devno(meta.rdev()), size)
            }
            Store::Directory(dir) => {
                if dir == Path::new(DEFAULT_STORE) {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .with_context(|| format!("cannot create '{}'", dir.display()))?;
                }
                let meta = std::fs::metadata(dir).map_err(|e| {
                    anyhow!(
                        "the snapshot store '{}' cannot be used: {e}; create it, or set {STORE_VARIABLE} to a directory or block device for copy-on-write data",
                        dir.display()
                    )
                })?;
                let fs = nix::sys::statvfs::statvfs(dir)
                    .with_context(|| format!("cannot read '{}'", dir.display()))?;
                let free = fs.blocks_available() * fs.fragment_size();
                // Keep a little for the filesystem itself.
                if want + (want / 50) > free {
                    return Err(Refused(format!(
                        "no room for a snapshot of {} in the snapshot store '{}': it needs {} ({percent} % of the volume), and there are {} free; free space there, lower the snapshot size, or set {STORE_VARIABLE} to another store",
                        source.path(),
                        dir.display(),
                        crate::output::bytes(want),
                        crate::output::bytes(free)
                    ))
                    .into());
                }
                (devno(meta.dev()), want)
            }
        };
        if depends_on(store_dev, source.dev) {
            bail!(
                "the snapshot store {} is on {} itself; copy-on-write data must go elsewhere: set {STORE_VARIABLE} to a directory or block device that is not on it",
                store_path(&store).display(),
                source.path()
            );
        }
        Ok(Self { source, store, cow })
    }

    pub fn description(&self) -> String {
        let place = match &self.store {
            Store::Device(p) => format!("the device {}", p.display()),
            Store::Directory(p) => format!("a file in {}", p.display()),
        };
        format!(
            "dm-snapshot: read from a snapshot of the device-mapper device {} with {} of copy-on-write space in {place}",
            self.source.name,
            crate::output::bytes(self.cow)
        )
    }
}

fn store_path(store: &Store) -> &Path {
    match store {
        Store::Device(p) | Store::Directory(p) => p,
    }
}

/// Whether the block device `dev` is `on`, or is built on it (through the devices under it,
/// and a partition's disk).
fn depends_on(dev: (u32, u32), on: (u32, u32)) -> bool {
    fn walk(sys: &Path, on: (u32, u32), depth: u32) -> bool {
        if depth > 16 {
            return false;
        }
        if read_trim(sys.join("dev")).and_then(|d| parse_devno(&d)) == Some(on) {
            return true;
        }
        let mut under: Vec<PathBuf> = std::fs::read_dir(sys.join("slaves"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if sys.join("partition").exists() {
            if let Some(disk) = sys.parent() {
                under.push(disk.to_path_buf());
            }
        }
        under
            .iter()
            .any(|u| std::fs::canonicalize(u).is_ok_and(|u| walk(&u, on, depth + 1)))
    }
    std::fs::canonicalize(format!("/sys/dev/block/{}:{}", dev.0, dev.1))
        .is_ok_and(|sys| walk(&sys, on, 0))
}

/// The device-mapper uuid of our device `name`: `dmsetup info` and udev rules see whose it is.
fn owned(name: &str) -> String {
    format!("HOLDFAST-{name}")
}

/// A snapshot we made; removed (and the source's table swapped back) by
/// [`Snapshot::remove`], or when dropped.
pub struct Snapshot {
    control: Control,
    /// The source's device-mapper name, and its path for messages.
    source: String,
    shown: String,
    original: Vec<Target>,
    /// `holdfast-snap-<pid>` (with `-<n>` after it when several are held together);
    /// `-real` and `-cow` after it.
    name: String,
    /// The device node of the snapshot, made by us (no udev needed).
    node: PathBuf,
    snap_dev: (u32, u32),
    cow_file: Option<PathBuf>,
    /// The loop device the store file is attached to.
    cow_loop: Option<PathBuf>,
    /// The source's table is the snapshot origin.
    swapped: bool,
    done: bool,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Snapshot {
    /// Take it (see the module's steps); on an error, what was made is undone.
    pub fn take(plan: &Plan) -> Result<Self> {
        let mut snap = Self::prepare(plan, format!("{PREFIX}{}", std::process::id()))?;
        swap_together(std::slice::from_mut(&mut snap))?;
        Ok(snap)
    }

    /// Steps 1 and 2 and the tables of step 3, loaded but not live: the snapshot `name`
    /// (which starts with [`PREFIX`] and our process id) is taken by [`swap_together`].
    pub fn prepare(plan: &Plan, name: String) -> Result<Self> {
        let lock = crate::lvm::lock_name(&plan.source.name, &plan.source.path())?;
        remove_stale();
        let control = Control::open()?;
        let mut snap = Self {
            control,
            source: plan.source.name.clone(),
            shown: plan.source.path(),
            original: plan.source.table.clone(),
            node: Path::new("/run").join(&name),
            name,
            snap_dev: (0, 0),
            cow_file: None,
            cow_loop: None,
            swapped: false,
            done: false,
            _lock: lock,
        };
        snap.build(plan)?;
        Ok(snap)
    }

    fn build(&mut self, plan: &Plan) -> Result<()> {
        let c = &self.control;
        let size = plan.source.size() / 512;
        let real = format!("{}-real", self.name);
        let real_dev = c.create(&real, Some(&owned(&real)))?;
        c.load(&real, &self.original, false)?;
        c.resume(&real)?;
        let cow_dev = match &plan.store {
            Store::Device(path) => devno(std::fs::metadata(path)?.rdev()),
            Store::Directory(dir) => {
                let file = dir.join(format!("{}.cow", self.name));
                self.cow_file = Some(file.clone());
                preallocate(&file, plan.cow)?;
                let lo = attach(&file)?;
                self.cow_loop = Some(lo.clone());
                devno(std::fs::metadata(&lo)?.rdev())
            }
        };
        let snapshot = Target::new(
            0,
            size,
            "snapshot",
            format!(
                "{}:{} {}:{} N {CHUNK_SECTORS}",
                real_dev.0, real_dev.1, cow_dev.0, cow_dev.1
            ),
        );
        self.snap_dev = c.create(&self.name, Some(&owned(&self.name)))?;
        c.load(&self.name, &[snapshot], false)?;
        let origin = Target::new(
            0,
            size,
            "snapshot-origin",
            format!("{}:{}", real_dev.0, real_dev.1),
        );
        c.load(&self.source, &[origin], false)
            .with_context(|| format!("cannot snapshot {}", self.shown))
    }

    /// What to read.
    pub fn device(&self) -> PathBuf {
        self.node.clone()
    }

    /// An error once the snapshot is no longer a true copy (its store ran full); how full it
    /// is otherwise, in percent.
    pub fn fill(&self) -> Result<f64> {
        fill_named(&self.control, &self.name, &format!("of {}", self.shown))
    }

    /// Swap the source's table back and remove what was made.
    pub fn remove(mut self) -> Result<()> {
        self.done = true;
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut first_error = None;
        if self.swapped {
            match restore_table(&self.control, &self.source, &self.original) {
                Ok(()) => self.swapped = false,
                Err(e) => first_error = Some(e),
            }
        }
        // Not while the origin still sends copies to it.
        if !self.swapped {
            let _ = std::fs::remove_file(&self.node);
            if let Err(e) = remove_devices(&self.control, &self.name) {
                first_error.get_or_insert(e);
            }
            if let Some(lo) = self.cow_loop.take() {
                if let Err(e) = detach(&lo) {
                    first_error.get_or_insert(e);
                }
            }
            if let Some(file) = self.cow_file.take() {
                let _ = std::fs::remove_file(file);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.teardown();
        }
    }
}

/// Make prepared snapshots live at one instant: every source is suspended (device-mapper
/// freezes a filesystem mounted on it, and holds its writes) before any resumes with its
/// snapshot-origin table, so no write can reach one source after a later write reached
/// another. How long the first source was suspended (writes to it waited that long); on an
/// error, every source keeps (or gets back) its own table.
pub fn swap_together(snaps: &mut [Snapshot]) -> Result<std::time::Duration> {
    // From the first suspend until the last resume: no program, no file, no allocation that
    // could page in from a suspended filesystem.
    let locked = nix::sys::mman::mlockall(nix::sys::mman::MlockAllFlags::MCL_CURRENT);
    let started = std::time::Instant::now();
    let mut failed = None;
    let mut suspended = 0;
    for s in snaps.iter() {
        if let Err(e) = s.control.suspend(&s.source, true) {
            failed = Some((e, s.shown.clone()));
            break;
        }
        suspended += 1;
    }
    if failed.is_none() {
        for s in snaps.iter() {
            if let Err(e) = s.control.resume(&s.name) {
                failed = Some((e, s.shown.clone()));
                break;
            }
        }
    }
    if failed.is_none() {
        for s in snaps.iter_mut() {
            match s.control.resume(&s.source) {
                Ok(()) => s.swapped = true,
                Err(e) => {
                    failed = Some((e, s.shown.clone()));
                    break;
                }
            }
        }
    }
    if let Some((e, shown)) = failed {
        // The ones not swapped: back to the table they had (drop the loaded one), and
        // running again.
        for s in snaps.iter().filter(|s| !s.swapped) {
            let _ = s.control.clear(&s.source);
        }
        for s in snaps.iter().take(suspended).filter(|s| !s.swapped) {
            let _ = s.control.resume(&s.source);
        }
        if locked.is_ok() {
            let _ = nix::sys::mman::munlockall();
        }
        return Err(anyhow!(e).context(format!("cannot snapshot {shown}")));
    }
    let paused = started.elapsed();
    if locked.is_ok() {
        let _ = nix::sys::mman::munlockall();
    }
    for s in snaps.iter() {
        make_node(&s.node, s.snap_dev)?;
    }
    Ok(paused)
}

/// How full the snapshot whose device node is `node` is (a snapshot another process of
/// ours took and holds), as [`Snapshot::fill`].
pub fn fill_at(node: &Path) -> Result<f64> {
    let name = node
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.starts_with(PREFIX))
        .ok_or_else(|| anyhow!("{} is not a snapshot Holdfast made", node.display()))?;
    fill_named(&Control::open()?, name, &node.display().to_string())
}

/// The fill of our snapshot device `name`, or why it failed; `shown` names it in messages
/// ("the snapshot SHOWN overflowed: …").
fn fill_named(c: &Control, name: &str, shown: &str) -> Result<f64> {
    let status = c.status(name)?;
    let line = status
        .first()
        .map(|t| t.params.trim().to_owned())
        .unwrap_or_default();
    fill_of(&line).map_err(|why| anyhow!("the snapshot {shown} {why}"))
}

/// What a `snapshot` target's status says: percent filled, or why it is no longer valid.
fn fill_of(status: &str) -> std::result::Result<f64, &'static str> {
    match status {
        "Invalid" | "Overflow" => {
            Err("overflowed: writes to the volume filled its copy-on-write space")
        }
        "Merge failed" => Err("is invalid"),
        _ => {
            // `<allocated>/<total> <metadata>` in sectors.
            let (used, total) = status
                .split_whitespace()
                .next()
                .and_then(|f| f.split_once('/'))
                .ok_or("has an unreadable status")?;
            let used: f64 = used.parse().map_err(|_| "has an unreadable status")?;
            let total: f64 = total.parse().map_err(|_| "has an unreadable status")?;
            Ok(100.0 * used / total.max(1.0))
        }
    }
}

/// Make `file` of `bytes`, its space allocated.
fn preallocate(file: &Path, bytes: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot create the copy-on-write file '{}'", file.display()))?;
    nix::fcntl::fallocate(
        std::os::fd::AsRawFd::as_raw_fd(&f),
        nix::fcntl::FallocateFlags::empty(),
        0,
        bytes as i64,
    )
    .with_context(|| {
        format!(
            "cannot allocate {} for '{}'",
            crate::output::bytes(bytes),
            file.display()
        )
    })?;
    Ok(())
}

/// Attach `file` to a free loop device, with direct I/O (no second copy in the page cache).
fn attach(file: &Path) -> Result<PathBuf> {
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show", "--direct-io=on"])
        .arg(file)
        .output()
        .context("cannot run losetup")?;
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !dev.starts_with("/dev/loop") {
        bail!(
            "cannot attach the copy-on-write file '{}' to a loop device: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(dev))
}

/// Detach the loop device `lo`.
fn detach(lo: &Path) -> Result<()> {
    let out = std::process::Command::new("losetup")
        .arg("-d")
        .arg(lo)
        .output()
        .context("cannot run losetup")?;
    if !out.status.success() {
        bail!(
            "cannot detach {} from the copy-on-write file: {}",
            lo.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Loop devices attached to `file`.
fn loops_of(file: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            read_trim(e.path().join("loop/backing_file")).is_some_and(|b| Path::new(&b) == file)
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect()
}

/// Load `table` into `name` again and make it live (after a snapshot: no freeze needed).
fn restore_table(c: &Control, name: &str, table: &[Target]) -> Result<()> {
    c.load(name, table, false)?;
    let locked = nix::sys::mman::mlockall(nix::sys::mman::MlockAllFlags::MCL_CURRENT);
    let swapped = c.suspend(name, false).and_then(|()| c.resume(name));
    if locked.is_ok() {
        let _ = nix::sys::mman::munlockall();
    }
    if swapped.is_err() {
        let _ = c.clear(name);
        let _ = c.resume(name);
    }
    swapped.with_context(|| format!("cannot give /dev/mapper/{name} its own table back"))
}

/// Remove `name` and `name-real`, trying again for a moment while one is still
/// open (just closed).
fn remove_devices(c: &Control, name: &str) -> Result<()> {
    for dev in [name.to_owned(), format!("{name}-real")] {
        let mut tries = 0;
        loop {
            match c.info(&dev)? {
                None => break,
                Some(_) => match c.remove(&dev) {
                    Ok(()) => break,
                    Err(_) if tries < 10 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(300));
                    }
                    Err(e) => return Err(anyhow!(e).context("the snapshot could not be removed")),
                },
            }
        }
    }
    Ok(())
}

/// A block device node for `dev` at `path` (udev may not run, or not yet).
fn make_node(path: &Path, dev: (u32, u32)) -> Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let _ = std::fs::remove_file(path);
    mknod(
        path,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o600),
        makedev(u64::from(dev.0), u64::from(dev.1)),
    )
    .with_context(|| format!("cannot make the device node '{}'", path.display()))
}

/// The process id in a snapshot's id: `<pid>`, or `<pid>-<n>` for one of several held
/// together.
fn process_of(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}

/// Undo what runs of ours whose process is gone left: the source's table swapped back
/// (from the `-real` device's), then the snapshot, its devices, node and store file removed.
pub fn remove_stale() {
    let Ok(control) = Control::open() else {
        return;
    };
    let Ok(devices) = control.list() else {
        return;
    };
    for (name, dev) in &devices {
        let Some(id) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_suffix("-real"))
        else {
            continue;
        };
        if !made_by_a_gone_process(process_of(id)) {
            continue;
        }
        let snapshot = format!("{PREFIX}{id}");
        let origin_params = format!("{}:{}", dev.0, dev.1);
        let Ok(real_table) = control.table(name) else {
            continue;
        };
        let mut swapped_back = true;
        let is_origin = |t: &[Target]| matches!(t, [o] if o.kind == "snapshot-origin" && o.params.trim() == origin_params);
        for (other, _) in &devices {
            if control.table(other).is_ok_and(|t| is_origin(&t)) {
                // Swapped: give it its table back.
                if restore_table(&control, other, &real_table).is_err() {
                    swapped_back = false;
                }
            } else if control.inactive_table(other).is_ok_and(|t| is_origin(&t)) {
                // Killed midway through the swap (perhaps suspended): drop it and go on.
                let _ = control.clear(other);
                let _ = control.resume(other);
            }
        }
        if swapped_back {
            let _ = std::fs::remove_file(Path::new("/run").join(&snapshot));
            let _ = remove_devices(&control, &snapshot);
            if let Store::Directory(dir) = Store::configured() {
                let file = dir.join(format!("{snapshot}.cow"));
                for lo in loops_of(&file) {
                    let _ = detach(&lo);
                }
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshots_status_gives_its_fill_or_why_it_failed() {
        assert_eq!(fill_of("2048/8192 16"), Ok(25.0));
        assert!(fill_of("Invalid")
            .expect_err("invalid")
            .contains("overflowed"));
        assert!(fill_of("Overflow").is_err());
        assert!(fill_of("").is_err());
    }

    #[test]
    fn a_snapshot_held_with_others_belongs_to_its_process() {
        assert_eq!(process_of("1234"), "1234");
        assert_eq!(process_of("1234-0"), "1234");
        assert_eq!(process_of("1234-17"), "1234");
    }
}
