//! Loop devices, filesystems, mounts, file checksums, and running the agent.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// True when the environment can run device tests; otherwise skip (or panic under CI).
pub fn require_devices(test: &str) -> bool {
    let missing: Vec<&str> = [
        "losetup",
        "mkfs.ext4",
        "mkfs.vfat",
        "e2fsck",
        "fsck.vfat",
        "sfdisk",
        "mount",
    ]
    .into_iter()
    .filter(|t| {
        !Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .collect();
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if missing.is_empty() && root && Path::new("/dev/loop-control").exists() {
        return true;
    }
    let why = format!("{test}: needs root, /dev/loop-control and {missing:?}");
    if std::env::var_os("CI").is_some() {
        panic!("{why} (CI is set, so this is a failure; run scripts/test.sh to install them)");
    }
    eprintln!("skipping {why}");
    false
}

/// Run a command, panic with its output on failure.
pub fn sh(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The agent binary: `HOLDFAST_AGENT_BIN`, else `holdfast-agent` beside the running test
/// binary's folder (cargo puts test binaries in `target/PROFILE/deps/` and the workspace's
/// binaries in `target/PROFILE/`).
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HOLDFAST_AGENT_BIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.parent()
                .and_then(Path::parent)
                .map(|profile| profile.join("holdfast-agent"))
        })
        .unwrap_or_else(|| PathBuf::from("holdfast-agent"))
}

/// A command running the agent binary, without the password variables of the caller.
pub fn agent() -> Command {
    let mut c = Command::new(agent_binary());
    c.env_remove("HOLDFAST_PASSWORD")
        .env_remove("HOLDFAST_NEW_PASSWORD");
    c
}

/// Result of an agent run with `--json`.
pub struct Run {
    pub code: i32,
    pub json: serde_json::Value,
    pub stderr: String,
}

/// Run `holdfast-agent image ARGS --json`.
pub fn image(args: &[&str]) -> Run {
    agent_json(&[&["image"], args].concat())
}

/// Run `holdfast-agent ARGS --json`.
pub fn agent_json(args: &[&str]) -> Run {
    let out = agent()
        .args(args)
        .arg("--json")
        .output()
        .expect("run agent");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Run {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run and require success.
pub fn image_ok(args: &[&str]) -> serde_json::Value {
    let r = image(args);
    assert_eq!(r.code, 0, "image {args:?} failed: {}\n{}", r.stderr, r.json);
    r.json
}

/// A loop device over a file, detached on drop.
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    pub fn new(file: &Path) -> Self {
        Self::attach(Command::new("losetup").arg("-f").arg("--show").arg(file))
    }

    /// Attach with `losetup`, and drop the partitions the kernel may still list for the
    /// device from an earlier use: without partition scanning (this kernel's loop devices
    /// have none by default), partitions a tool added through BLKPG stay when the device is
    /// detached and would show on whatever file it holds next.
    fn attach(losetup: &mut Command) -> Self {
        let out = sh(losetup);
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let stale = |dev: &Path| {
            let name = dev.file_name().map(|n| n.to_string_lossy().into_owned());
            std::fs::read_dir(Path::new("/sys/block").join(name.unwrap_or_default()))
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.path().join("partition").exists())
                        .count()
                })
                .unwrap_or(0)
        };
        if stale(&dev) > 0 {
            let _ = Command::new("partx").arg("-d").arg(&dev).output();
            assert_eq!(
                stale(&dev),
                0,
                "{} still lists partitions of an earlier use",
                dev.display()
            );
        }
        Self { dev }
    }
    pub fn path(&self) -> &str {
        self.dev.to_str().expect("utf-8 path")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // Partitions a restore or clone told the kernel about would outlive the device.
        let _ = Command::new("partx").arg("-d").arg(&self.dev).output();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).output();
    }
}

/// Write a partition table with `sfdisk SCRIPT`; return its JSON dump and the byte ranges of
/// the data partitions (not extended containers).
pub fn partition_disk(disk: &Path, script: &str) -> (serde_json::Value, Vec<(u64, u64)>) {
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script");
    assert!(child.wait().expect("sfdisk").success());
    partitions_of(disk)
}

/// The partition table of `disk` (`sfdisk --json`) and the byte ranges (start, length) of
/// its data partitions (not extended containers).
pub fn partitions_of(disk: &Path) -> (serde_json::Value, Vec<(u64, u64)>) {
    let dump = sh(Command::new("sfdisk").arg("--json").arg(disk));
    let table: serde_json::Value = serde_json::from_slice(&dump.stdout).expect("sfdisk json");
    let parts = table["partitiontable"]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .filter(|p| !["5", "f", "85"].contains(&p["type"].as_str().unwrap_or("")))
        .map(|p| {
            (
                p["start"].as_u64().expect("start") * 512,
                p["size"].as_u64().expect("size") * 512,
            )
        })
        .collect();
    (table, parts)
}

impl Loop {
    /// A loop device over one partition (start, length) of a disk image.
    pub fn over(file: &Path, (start, len): (u64, u64)) -> Self {
        Self::attach(
            Command::new("losetup")
                .args([
                    "-f",
                    "--show",
                    "-o",
                    &start.to_string(),
                    "--sizelimit",
                    &len.to_string(),
                ])
                .arg(file),
        )
    }
}

/// A folder of the agent's records of block writes (`image create --write-log`); its
/// kernel traces are removed on drop (`write-log stop`).
pub struct WriteLog {
    dir: PathBuf,
}

impl WriteLog {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> &str {
        self.dir.to_str().expect("utf-8 path")
    }
}

impl Drop for WriteLog {
    fn drop(&mut self) {
        let _ = agent()
            .args(["write-log", "stop", "--dir"])
            .arg(&self.dir)
            .output();
    }
}

/// A mount, unmounted on drop.
pub struct Mounted {
    pub dir: PathBuf,
}

impl Mounted {
    pub fn new(dev: &str, dir: &Path, opts: &str) -> Self {
        Self::with_fs(dev, "", dir, opts)
    }

    /// Mount the `fs` filesystem on `dev`: exFAT and NTFS through FUSE (exfat-fuse, ntfs-3g;
    /// this kernel has no driver for either), anything else by `mount`'s own detection.
    pub fn with_fs(dev: &str, fs: &str, dir: &Path, opts: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mount dir");
        let program = match fs {
            "exfat" => "mount.exfat-fuse",
            "ntfs" => "ntfs-3g",
            _ => "mount",
        };
        sh(Command::new(program).arg("-o").arg(opts).arg(dev).arg(dir));
        Self {
            dir: dir.to_owned(),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // A just-closed file can keep the mount busy for a moment.
        for _ in 0..50 {
            match Command::new("umount").arg(&self.dir).output() {
                Ok(o) if o.status.success() => return,
                _ => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
        eprintln!("warning: could not unmount {}", self.dir.display());
    }
}

/// A sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) {
    let f = std::fs::File::create(path).expect("create file");
    f.set_len(size).expect("size file");
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Relative path → BLAKE3 of every regular file under `dir`.
pub fn checksums(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read dir")
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let ft = e.file_type().expect("file type");
            let rel = p.strip_prefix(base).expect("prefix").display().to_string();
            if rel == "lost+found" {
                continue;
            }
            if ft.is_dir() {
                walk(base, &p, out);
            } else if ft.is_file() {
                let data = std::fs::read(&p).expect("read file");
                out.insert(rel, blake3::hash(&data).to_hex().to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Write some files of mixed content (text, zeros, noise) under `dir`.
pub fn write_files(dir: &Path, round: u64, count: usize) {
    std::fs::create_dir_all(dir.join(format!("r{round}"))).expect("mkdir");
    for i in 0..count {
        let p = dir.join(format!("r{round}/f{i}.bin"));
        let mut data = noise(20_000 + i * 7_919, round * 1000 + i as u64);
        if i % 3 == 0 {
            data = format!("round {round} file {i}\n")
                .repeat(5000)
                .into_bytes();
        }
        std::fs::write(p, data).expect("write file");
    }
}

/// Check a filesystem on `dev` with its fsck, which must report it clean.
pub fn fsck_clean(dev: &str, fs: &str) {
    let out = match fs {
        "ext4" => Command::new("e2fsck").args(["-fn", dev]).output(),
        "exfat" => Command::new("fsck.exfat").args(["-n", dev]).output(),
        "ntfs" => Command::new("ntfsfix").args(["-n", dev]).output(),
        "btrfs" => Command::new("btrfs")
            .args(["check", "--readonly", dev])
            .output(),
        "xfs" => Command::new("xfs_repair").args(["-n", dev]).output(),
        _ => Command::new("fsck.vfat").args(["-n", dev]).output(),
    }
    .expect("run fsck");
    assert!(
        out.status.success(),
        "fsck of {dev} is not clean:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Replay the ext4 journal of `dev` as a mount would (`e2fsck -fy`: exit 0 or 1), then
/// check it clean.
pub fn replay_and_fsck_ext4(dev: &str) {
    let replay = Command::new("e2fsck")
        .args(["-fy", dev])
        .output()
        .expect("e2fsck");
    assert!(
        matches!(replay.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&replay.stdout)
    );
    fsck_clean(dev, "ext4");
}

/// What e2fsprogs says an ext filesystem on `dev` ignores until it writes there again, as
/// sorted `[start, end)` byte ranges: the inode-table blocks wholly past each group's unused
/// inodes (when descriptors are checksummed) and, when the journal is empty, every journal
/// block but the first. Read from `dumpe2fs` and `debugfs`, so it checks Holdfast's own
/// parsing of the same structures.
pub fn ext_ignored_ranges(dev: &str) -> Vec<(u64, u64)> {
    let dump = String::from_utf8(sh(Command::new("dumpe2fs").arg(dev)).stdout).expect("utf-8");
    let header = |key: &str| -> Option<&str> {
        dump.lines()
            .find_map(|l| l.strip_prefix(key).map(str::trim))
    };
    let number = |key: &str| -> u64 {
        header(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("dumpe2fs: no {key}"))
    };
    let (bs, isize, ipg) = (
        number("Block size:"),
        number("Inode size:"),
        number("Inodes per group:"),
    );
    let features = header("Filesystem features:").unwrap_or_default();
    let mut out = Vec::new();
    if features.split(' ').any(|f| f == "needs_recovery") {
        return out;
    }
    let honoured = features
        .split(' ')
        .any(|f| f == "uninit_bg" || f == "metadata_csum");
    let table_len = (ipg * isize).div_ceil(bs);
    let mut table = None;
    for line in dump.lines().map(str::trim) {
        if let Some(range) = line.strip_prefix("Inode table at ") {
            let first = range.split(['-', ' ']).next().expect("table start");
            table = Some(first.parse::<u64>().expect("table block"));
        } else if let (Some(start), true, Some(unused)) = (
            table,
            honoured,
            line.strip_suffix(" unused inodes")
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|n| n.parse::<u64>().ok()),
        ) {
            let front = ((ipg - unused) * isize).div_ceil(bs);
            if front < table_len {
                out.push(((start + front) * bs, (start + table_len) * bs));
            }
            table = None;
        }
    }
    if header("Journal start:") == Some("0") {
        let blocks = sh(Command::new("debugfs").args(["-R", "blocks <8>", dev])).stdout;
        let blocks: Vec<u64> = String::from_utf8_lossy(&blocks)
            .split_whitespace()
            .map(|b| b.parse().expect("journal block"))
            .collect();
        for b in blocks.into_iter().skip(1) {
            match out.last_mut() {
                Some(last) if last.1 == b * bs => last.1 += bs,
                _ => out.push((b * bs, (b + 1) * bs)),
            }
        }
    }
    out.sort_unstable();
    out
}

/// Whether files `a` and `b` hold the same bytes outside `ignored` (sorted byte ranges);
/// the first differing offset when not.
pub fn differ_outside(a: &Path, b: &Path, ignored: &[(u64, u64)]) -> Option<u64> {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).expect("open a"),
        std::fs::File::open(b).expect("open b"),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    loop {
        let n = fa.read(&mut ba).expect("read a");
        let m = {
            let mut got = 0;
            while got < n {
                let k = fb.read(&mut bb[got..n]).expect("read b");
                if k == 0 {
                    break;
                }
                got += k;
            }
            got
        };
        if n == 0 {
            return (fb.read(&mut bb[..1]).expect("read b") != 0).then_some(at);
        }
        if m < n {
            return Some(at + m as u64);
        }
        if ba[..n] == bb[..n] {
            at += n as u64;
            continue;
        }
        for i in 0..n {
            let off = at + i as u64;
            if ba[i] != bb[i] && !ignored.iter().any(|&(s, e)| s <= off && off < e) {
                return Some(off);
            }
        }
        at += n as u64;
    }
}

/// Make a filesystem.
pub fn mkfs(dev: &str, fs: &str) {
    match fs {
        "ext4" => sh(Command::new("mkfs.ext4").args(["-q", "-F", dev])),
        "exfat" => sh(Command::new("mkfs.exfat").arg(dev)),
        "ntfs" => sh(Command::new("mkntfs").args(["-q", "-F", "-f", dev])),
        // Mixed block groups: the test volumes are smaller than btrfs's usual minimum.
        "btrfs" => sh(Command::new("mkfs.btrfs").args(["-q", "-f", "--mixed", dev])),
        // v5 with reflink (mkfs.xfs's default), at least 300 MiB.
        "xfs" => sh(Command::new("mkfs.xfs").args(["-q", "-f", dev])),
        // -I: a loop device reused from a partitioned one can still show its partitions.
        _ => sh(Command::new("mkfs.vfat").args(["-I", "-F", "32", dev])),
    };
}

/// A temp dir under /var/tmp (not tmpfs: loop devices over tmpfs files are fine, but /tmp
/// may be small).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("holdfast-it-")
        .tempdir_in("/var/tmp")
        .expect("tempdir")
}

/// Change the files of the filesystem on `dev` with `edit` and return the checksums after.
///
/// ext4 is mounted; FAT is edited through mtools (this kernel may have no vfat driver): the
/// files are copied out, edited, and the differences copied back.
pub fn edit_files(
    dev: &str,
    fs: &str,
    work: &Path,
    edit: impl FnOnce(&Path),
) -> BTreeMap<String, String> {
    if fs != "vfat" {
        let m = Mounted::with_fs(dev, fs, &work.join("edit-mnt"), "rw");
        edit(&m.dir);
        return checksums(&m.dir);
    }
    let stage = extract_fat(dev, &work.join("edit-stage"));
    let before = checksums(&stage);
    edit(&stage);
    let after = checksums(&stage);
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        sh(Command::new("mdel")
            .arg("-i")
            .arg(dev)
            .arg(format!("::/{path}")));
    }
    for (path, sum) in &after {
        if before.get(path) == Some(sum) {
            continue;
        }
        let mut dir = String::new();
        for part in Path::new(path).parent().into_iter().flat_map(|p| p.iter()) {
            dir.push('/');
            dir.push_str(&part.to_string_lossy());
            // Exists already: mmd fails harmlessly.
            let _ = Command::new("mmd")
                .arg("-i")
                .arg(dev)
                .arg(format!("::{dir}"))
                .output();
        }
        sh(Command::new("mcopy")
            .arg("-o")
            .arg("-i")
            .arg(dev)
            .arg(stage.join(path))
            .arg(format!("::/{path}")));
    }
    after
}

/// Bytes in use as the filesystem on `dev` reports them (`df`), mounted read-only; none
/// for FAT (edited through mtools here).
pub fn fs_used_bytes(dev: &str, fs: &str, work: &Path) -> Option<u64> {
    (fs != "vfat").then(|| df(dev, fs, work, "used")).flatten()
}

/// The filesystem's own size as `df` reports it, mounted read-only.
pub fn fs_size_bytes(dev: &str, fs: &str, work: &Path) -> Option<u64> {
    df(dev, fs, work, "size")
}

/// One `df -B1` field of the filesystem on `dev`.
fn df(dev: &str, fs: &str, work: &Path, field: &str) -> Option<u64> {
    let m = Mounted::with_fs(dev, fs, &work.join("df-mnt"), "ro");
    let out = sh(Command::new("df")
        .args(["-B1", &format!("--output={field}")])
        .arg(&m.dir));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
}

/// Checksums of the files on `dev`.
pub fn read_files(dev: &str, fs: &str, work: &Path) -> BTreeMap<String, String> {
    if fs != "vfat" {
        let m = Mounted::with_fs(dev, fs, &work.join("read-mnt"), "ro");
        return checksums(&m.dir);
    }
    checksums(&extract_fat(dev, &work.join("read-stage")))
}

fn extract_fat(dev: &str, dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("stage dir");
    let listing = sh(Command::new("mdir").arg("-b").arg("-i").arg(dev).arg("::/"));
    if !listing.stdout.is_empty() {
        sh(Command::new("mcopy")
            .arg("-s")
            .arg("-n")
            .arg("-i")
            .arg(dev)
            .arg("::/*")
            .arg(dir));
    }
    dir.to_owned()
}

/// A blkio cgroup (v1) that throttles reads from one device, so imaging it takes a known
/// time: what tests of time limits need. Removed on drop (its processes must have ended).
pub struct ReadThrottle {
    dir: PathBuf,
}

impl ReadThrottle {
    /// Where cgroup v1's blkio controller is mounted on this kind of machine.
    const ROOT: &'static str = "/sys/fs/cgroup/blkio";

    /// Throttle reads from `dev` to `bytes_per_second` for the commands [`Self::wrap`] runs;
    /// `None` (with a message, or a panic under `CI`) when the machine cannot.
    pub fn new(dev: &str, bytes_per_second: u64) -> Option<Self> {
        let root = Path::new(Self::ROOT);
        if !root.join("blkio.throttle.read_bps_device").exists() {
            let why = format!("no blkio cgroup with read throttling at {}", Self::ROOT);
            if std::env::var_os("CI").is_some() {
                panic!("{why} (CI is set, so this is a failure)");
            }
            eprintln!("skipping: {why}");
            return None;
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = root.join(format!("holdfast-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).expect("create cgroup");
        let devno = sh(Command::new("lsblk").args(["-dno", "MAJ:MIN", dev]));
        let devno = String::from_utf8_lossy(&devno.stdout).trim().to_owned();
        std::fs::write(
            dir.join("blkio.throttle.read_bps_device"),
            format!("{devno} {bytes_per_second}"),
        )
        .expect("set read throttle");
        Some(Self { dir })
    }

    /// `cmd`, run inside the cgroup from its first instruction.
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.dir.join("cgroup.procs"))
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }
}

impl Drop for ReadThrottle {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("warning: could not remove cgroup {}", self.dir.display());
    }
}

/// Whether `tool` is installed; when it is not, say so (a skip), or panic under `CI`.
pub fn require_tool(tool: &str, test: &str) -> bool {
    let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).is_file());
    if !found {
        let why = format!("{test}: {tool} is not installed");
        assert!(
            std::env::var_os("CI").is_none(),
            "{why}; CI is set, so this is a failure"
        );
        eprintln!("skipping {why}");
    }
    found
}
