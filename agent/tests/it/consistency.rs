//! Imaging a source mounted read-write: each consistency method, and a freeze that always
//! ends — on success, when the imaging process is killed, hangs or is cancelled, and at the
//! maximum freeze time.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use holdfast_testkit::devices::*;

/// An ext4 filesystem on a loop device, mounted read-write, with about 16 MiB of files.
struct Mounted4 {
    _t: tempfile::TempDir,
    dir: PathBuf,
    lo: Loop,
    mnt: Option<Mounted>,
}

impl Mounted4 {
    fn new() -> Self {
        let t = tempdir();
        let dir = t.path().to_owned();
        let vol = dir.join("vol.img");
        sparse_file(&vol, 64 << 20);
        let lo = Loop::new(&vol);
        mkfs(lo.path(), "ext4");
        let m = Mounted::new(lo.path(), &dir.join("mnt"), "rw");
        write_files(&m.dir, 0, 16);
        std::fs::write(m.dir.join("noise.bin"), noise(14 << 20, 7)).expect("noise");
        sh(&mut Command::new("sync"));
        Self {
            _t: t,
            dir,
            lo,
            mnt: Some(m),
        }
    }
    fn mnt(&self) -> &Path {
        &self.mnt.as_ref().expect("mounted").dir
    }
    fn p(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("path").to_owned()
    }
    /// True when a write to the filesystem completes within `within`.
    fn writable_within(&self, within: Duration) -> bool {
        let file = self.mnt().join(format!("probe-{}", rand_suffix()));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::write(&file, b"written").is_ok());
        });
        rx.recv_timeout(within).unwrap_or(false)
    }
}

impl Drop for Mounted4 {
    fn drop(&mut self) {
        // Whatever a failed test left, the filesystem must be thawed to be unmounted.
        if let Some(m) = &self.mnt {
            let _ = Command::new("fsfreeze").arg("-u").arg(&m.dir).output();
        }
        self.mnt = None;
    }
}

/// Writes numbered files (`w0`, `w1`, …), each under a temporary name, synced, then renamed:
/// a file with its final name is complete, and ends with the checksum of what comes before.
struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("load dir");
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let (dir, s, d) = (dir.to_owned(), stop.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                let mut data = noise(16 << 10, n as u64 + 99);
                let sum = blake3::hash(&data);
                data.extend_from_slice(sum.as_bytes());
                let tmp = dir.join(".writing");
                let mut f = std::fs::File::create(&tmp).expect("create");
                f.write_all(&data).expect("write");
                f.sync_all().expect("fsync");
                std::fs::rename(&tmp, dir.join(format!("w{n}"))).expect("rename");
                n += 1;
                d.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self { stop, done, thread }
    }
    fn completed(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }
    /// Stop; how many files it completed.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("writer");
        self.done.load(Ordering::Relaxed)
    }
    fn verifies(data: &[u8]) -> bool {
        data.len() > 32 && {
            let (body, sum) = data.split_at(data.len() - 32);
            blake3::hash(body).as_bytes() == sum
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The freeze watchdog started by process `pid`, once it runs.
fn watchdog_of(pid: u32, within: Duration) -> Option<u32> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(pid) && cmd.windows(13).any(|w| w == b"thaw-watchdog") {
                return Some(child);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn signal(pid: u32, sig: &str) {
    sh(Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string()));
}

/// Start `image create` of the fixture's device with `args`, reads throttled by `throttle`.
fn start_create(f: &Mounted4, throttle: &ReadThrottle, out: &str, args: &[&str]) -> Child {
    let mut c = agent();
    c.args([
        "image",
        "create",
        "--source",
        f.lo.path(),
        "--output",
        out,
        "--json",
    ])
    .args(args);
    throttle
        .wrap(&c)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent")
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_mounted_filesystem_is_frozen_locked_or_copied_live_as_asked() {
    if !require_devices("consistency methods") {
        return;
    }
    let f = Mounted4::new();
    let before = checksums(f.mnt());

    // `unmounted` refuses, naming the other methods.
    let r = image(&[
        "create",
        "--source",
        f.lo.path(),
        "--output",
        &f.p("x.hfi"),
        "--consistency",
        "unmounted",
    ]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(
        r.stderr.contains("lock") && r.stderr.contains("live"),
        "{}",
        r.stderr
    );
    // A freeze would stop the image's own writes: refused.
    let inside = f.mnt().join("x.hfi");
    let r = image(&[
        "create",
        "--source",
        f.lo.path(),
        "--output",
        inside.to_str().expect("path"),
    ]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(
        r.stderr.contains("on the filesystem being imaged"),
        "{}",
        r.stderr
    );

    // The default freezes it for the imaging only, under a steady write load; the image
    // restores to a clean copy holding every file completed before it started.
    let writer = Writer::start(&f.mnt().join("load"));
    std::thread::sleep(Duration::from_millis(300));
    let completed = writer.completed();
    let s = image_ok(&[
        "create",
        "--source",
        f.lo.path(),
        "--output",
        &f.p("frozen.hfi"),
    ]);
    let written = writer.stop();
    let how = s["consistency"].as_str().expect("consistency");
    assert!(
        how.starts_with("frozen: the filesystem was frozen for"),
        "{how}"
    );
    assert_eq!(s["coverage"], "used-sector", "{s}");
    assert_eq!(s["warnings"], serde_json::json!([]), "{s}");
    assert!(
        f.writable_within(Duration::from_secs(5)),
        "thawed after imaging"
    );
    assert!(written > completed, "the writer went on after the freeze");
    let copy = f.p("copy.img");
    sparse_file(Path::new(&copy), 64 << 20);
    image_ok(&["restore", "--image", &f.p("frozen.hfi"), "--target", &copy]);
    fsck_clean(&copy, "ext4");
    let restored = read_files(&copy, "ext4", &f.dir);
    for (name, sum) in &before {
        assert_eq!(restored.get(name), Some(sum), "{name}");
    }
    let loads = restored.keys().filter(|k| k.starts_with("load/w")).count();
    assert!(loads >= completed, "{loads} of {completed} files");
    let m = Mounted::new(&copy, &f.dir.join("copy-mnt"), "ro");
    for n in 0..loads {
        let data = std::fs::read(m.dir.join(format!("load/w{n}"))).expect("a whole sequence");
        assert!(Writer::verifies(&data), "w{n} is damaged");
    }
    drop(m);

    // `lock` remounts it read-only while imaging (read-write after); `live` copies it as it
    // is, and says so as a warning.
    for (name, how, flags) in [
        ("locked.hfi", "locked", &["--lock"][..]),
        ("live.hfi", "live", &["--consistency", "live"][..]),
    ] {
        let out = f.p(name);
        let mut args = vec!["create", "--source", f.lo.path(), "--output", &out];
        args.extend_from_slice(flags);
        let s = image_ok(&args);
        let said = s["consistency"].as_str().expect("consistency");
        assert!(said.starts_with(how), "{said}");
        let warned = s["warnings"].to_string().contains("not crash-consistent");
        assert_eq!(warned, how == "live", "{s}");
        assert!(
            f.writable_within(Duration::from_secs(5)),
            "{how}: writable after"
        );
    }
    let info = image_ok(&["info", "--image", &f.p("live.hfi")]);
    assert_eq!(info["metadata"]["live"], true);
}

#[test]
fn a_copy_of_a_mounted_ext4_is_imaged_by_its_used_blocks_and_replays_clean() {
    if !require_devices("needs_recovery copy") {
        return;
    }
    let f = Mounted4::new();
    // The last files are written with fsync, which commits them to the journal: their blocks
    // are marked used in the journal's copies of the bitmaps, while the bitmaps in place are
    // written back later (a sync would write them at once).
    let late = f.mnt().join("late");
    std::fs::create_dir(&late).expect("mkdir");
    for i in 0..12u64 {
        let mut file = std::fs::File::create(late.join(format!("f{i}"))).expect("create");
        file.write_all(&noise(200_000 + i as usize * 4096, 70 + i))
            .expect("write");
        file.sync_all().expect("fsync");
    }
    let want = checksums(f.mnt());
    // A crash-consistent copy, as a snapshot of the mounted volume would be.
    let dirty = f.p("dirty.img");
    std::fs::copy(f.dir.join("vol.img"), &dirty).expect("copy the volume");
    let header = sh(Command::new("dumpe2fs").arg("-h").arg(&dirty));
    assert!(
        String::from_utf8_lossy(&header.stdout).contains("needs_recovery"),
        "the copy must need recovery for this test to mean anything"
    );

    let s = image_ok(&["create", "--source", &dirty, "--output", &f.p("dirty.hfi")]);
    assert_eq!(s["coverage"], "used-sector", "{s}");
    assert_eq!(s["warnings"], serde_json::json!([]), "{s}");
    assert!(s["read_bytes"].as_u64().expect("read") < 48 << 20, "{s}");
    let copy = f.p("copy.img");
    sparse_file(Path::new(&copy), 64 << 20);
    image_ok(&["restore", "--image", &f.p("dirty.hfi"), "--target", &copy]);
    // The restored filesystem replays its journal, as a mount would, and is then clean.
    replay_and_fsck_ext4(&copy);
    assert_eq!(read_files(&copy, "ext4", &f.dir), want);
}

#[test]
fn commands_run_just_before_the_freeze_and_once_it_is_over() {
    if !require_devices("snapshot commands") {
        return;
    }
    let f = Mounted4::new();
    let mnt = f.mnt().display().to_string();
    // The command before writes into the filesystem before it is frozen: the image holds it;
    // the command after runs once it is thawed.
    let s = image_ok(&[
        "create",
        "--source",
        f.lo.path(),
        "--output",
        &f.p("hooked.hfi"),
        "--before-snapshot",
        &format!("echo flushing; echo flushed > '{mnt}/flushed.txt'"),
        "--after-snapshot",
        &format!("echo resumed >> '{mnt}/flushed.txt'; cat '{mnt}/flushed.txt'"),
    ]);
    let commands = s["commands"].as_array().expect("commands");
    assert_eq!(commands.len(), 2, "{s}");
    assert_eq!(commands[0]["stage"], "before the snapshot", "{s}");
    assert_eq!(commands[0]["exit_code"], 0, "{s}");
    assert_eq!(commands[0]["output"], "flushing", "{s}");
    assert_eq!(commands[1]["output"], "flushed\nresumed", "{s}");
    assert_eq!(s["warnings"], serde_json::json!([]), "{s}");
    let copy = f.p("copy.img");
    sparse_file(Path::new(&copy), 64 << 20);
    image_ok(&["restore", "--image", &f.p("hooked.hfi"), "--target", &copy]);
    let m = Mounted::new(&copy, &f.dir.join("copy-mnt"), "ro");
    assert_eq!(
        std::fs::read_to_string(m.dir.join("flushed.txt")).expect("written before the freeze"),
        "flushed\n"
    );
    drop(m);

    // A command before that fails or overruns its limit: nothing is frozen or imaged, and
    // the command after still runs.
    for (before, says) in [
        ("echo no database; exit 3", "exit status 3"),
        ("sleep 30", "stopped at its time limit of 1 s"),
    ] {
        let out = f.p("refused.hfi");
        let r = image(&[
            "create",
            "--source",
            f.lo.path(),
            "--output",
            &out,
            "--snapshot-command-timeout",
            "1",
            "--before-snapshot",
            before,
            "--after-snapshot",
            &format!("touch '{mnt}/after-ran'"),
        ]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(
            r.stderr.contains("the command before the snapshot failed"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains(says), "{}", r.stderr);
        assert!(!Path::new(&out).exists());
        assert!(
            f.mnt().join("after-ran").exists(),
            "{before}: the command after ran"
        );
        std::fs::remove_file(f.mnt().join("after-ran")).expect("remove");
        assert!(f.writable_within(Duration::from_secs(5)), "not frozen");
    }

    // A command after that fails: the image is kept, with a warning.
    let s = image_ok(&[
        "create",
        "--source",
        f.lo.path(),
        "--output",
        &f.p("warned.hfi"),
        "--after-snapshot",
        "echo cannot resume >&2; exit 2",
    ]);
    assert!(
        s["warnings"]
            .to_string()
            .contains("the command after the snapshot failed")
            && s["warnings"].to_string().contains("cannot resume"),
        "{s}"
    );
    image_ok(&["validate", "--image", &f.p("warned.hfi")]);
}

#[test]
fn a_freeze_always_ends_and_never_leaves_an_image_that_is_not_of_one_instant() {
    if !require_devices("freeze limits") {
        return;
    }
    let f = Mounted4::new();
    // About 20 MiB used, read at 4 MiB/s: imaging takes about 5 s.
    let Some(slow) = ReadThrottle::new(f.lo.path(), 4 << 20) else {
        return;
    };

    // Estimated past the maximum freeze time: refused before freezing.
    let out = f.p("too-long.hfi");
    let (code, text) = finish(start_create(&f, &slow, &out, &["--max-freeze", "2"]));
    assert_eq!(code, 5, "{text}");
    assert!(
        text.contains("longer than the maximum freeze time of 2 s"),
        "{text}"
    );
    assert!(!Path::new(&out).exists());

    // The imaging process killed while frozen: its watchdog thaws at once.
    let out = f.p("killed.hfi");
    let child = start_create(
        &f,
        &slow,
        &out,
        &["--consistency", "freeze", "--max-freeze", "300"],
    );
    let pid = child.id();
    assert!(
        watchdog_of(pid, Duration::from_secs(30)).is_some(),
        "no watchdog"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !f.writable_within(Duration::from_millis(500)),
        "frozen while imaging"
    );
    signal(pid, "KILL");
    let _ = finish(child);
    assert!(
        f.writable_within(Duration::from_secs(10)),
        "thawed after a kill"
    );
    assert!(!Path::new(&out).exists(), "no image under its name");

    // Cancelled (SIGTERM, as the daemon cancels a job): thawed, no image.
    let out = f.p("cancelled.hfi");
    let child = start_create(
        &f,
        &slow,
        &out,
        &["--consistency", "freeze", "--max-freeze", "300"],
    );
    let pid = child.id();
    assert!(
        watchdog_of(pid, Duration::from_secs(30)).is_some(),
        "no watchdog"
    );
    std::thread::sleep(Duration::from_millis(500));
    signal(pid, "TERM");
    let (code, text) = finish(child);
    assert_eq!(code, 6, "{text}");
    assert!(
        f.writable_within(Duration::from_secs(10)),
        "thawed after a cancel"
    );
    assert!(!Path::new(&out).exists(), "no image under its name");

    // The imaging process hangs: the watchdog thaws after the maximum time (plus its
    // grace); when it goes on, it stops at the deadline and leaves no image.
    let out = f.p("hung.hfi");
    let child = start_create(&f, &slow, &out, &["--max-freeze", "12"]);
    let pid = child.id();
    assert!(
        watchdog_of(pid, Duration::from_secs(30)).is_some(),
        "no watchdog"
    );
    std::thread::sleep(Duration::from_millis(300));
    signal(pid, "STOP");
    let stopped = Instant::now();
    assert!(
        !f.writable_within(Duration::from_secs(2)),
        "frozen while hung"
    );
    assert!(
        f.writable_within(Duration::from_secs(30)),
        "thawed by the watchdog"
    );
    assert!(
        stopped.elapsed() >= Duration::from_secs(8),
        "not before the maximum time"
    );
    signal(pid, "CONT");
    let (code, text) = finish(child);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("maximum freeze time of 12 s"), "{text}");
    assert!(!Path::new(&out).exists(), "no image under its name");
}
