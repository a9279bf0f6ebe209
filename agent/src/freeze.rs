//! Freezing a mounted filesystem while it is imaged, so the image holds one instant of it,
//! and making sure it is thawed whatever happens to this process.
//!
//! The freeze and thaw are util-linux's `fsfreeze` (the `FIFREEZE`/`FITHAW` ioctls; this
//! workspace has no `unsafe`). Starting a program on a frozen filesystem is safe: reading
//! does not wait for the thaw, and the access-time update a start would write is skipped.
//!
//! A frozen filesystem stops every writer on the machine, so the thaw cannot depend on this
//! process living. Before freezing, a watchdog (this binary, `thaw-watchdog`) is started with
//! a pipe from us: it thaws when the pipe closes without the word that we thawed (we died:
//! killed, crashed, panicked), when it is itself told to stop, and when the maximum freeze
//! time runs out (we hang). The imaging stops at that deadline too: an image read partly after
//! the thaw would not be of one instant.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cli::ThawWatchdogArgs;

/// What we send the watchdog once we thawed ourselves.
const THAWED: &str = "thawed";
/// What the watchdog prints once it watches.
const READY: &str = "ready";
/// The watchdog waits this much longer than the maximum freeze time, so that the imaging
/// process, which stops at that time, thaws first when it can.
const WATCHDOG_GRACE: Duration = Duration::from_secs(5);

/// A filesystem frozen by us; thawed by [`Frozen::thaw`], or when dropped.
pub struct Frozen {
    mount_point: PathBuf,
    since: Instant,
    max: Duration,
    watchdog: Option<Child>,
    thawed: bool,
}

impl Frozen {
    /// Freeze the filesystem mounted on `mount_point` for at most `max`.
    pub fn freeze(mount_point: &Path, max: Duration) -> Result<Self> {
        let watchdog = start_watchdog(mount_point, max)?;
        let mut frozen = Self {
            mount_point: mount_point.to_owned(),
            since: Instant::now(),
            max,
            watchdog: Some(watchdog),
            thawed: true,
        };
        if let Err(e) = fsfreeze("--freeze", mount_point) {
            frozen.release_watchdog();
            bail!("cannot freeze '{}': {e:#}", mount_point.display());
        }
        frozen.since = Instant::now();
        frozen.thawed = false;
        Ok(frozen)
    }

    /// When imaging must stop: the end of the maximum freeze time.
    pub fn deadline(&self) -> Instant {
        self.since + self.max
    }

    /// Thaw it; how long it was frozen. An error when it could not be thawed because it was
    /// not frozen any more (thawed by someone else): what was read is then not of one instant.
    pub fn thaw(mut self) -> Result<Duration> {
        self.thawed = true;
        let held = self.since.elapsed();
        let done = fsfreeze("--unfreeze", &self.mount_point);
        self.release_watchdog();
        match done {
            Ok(()) => Ok(held),
            Err(e) => bail!(
                "'{}' was not frozen any more after {:.1} s ({e:#}): the image is not of one instant",
                self.mount_point.display(),
                held.as_secs_f64()
            ),
        }
    }

    /// Tell the watchdog we are done with the filesystem and wait for it to leave.
    fn release_watchdog(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            if let Some(mut pipe) = w.stdin.take() {
                let word = if self.thawed { THAWED } else { "" };
                let _ = writeln!(pipe, "{word}");
            }
            let _ = w.wait();
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.thawed {
            let _ = fsfreeze("--unfreeze", &self.mount_point);
            self.thawed = true;
        }
        self.release_watchdog();
    }
}

/// Run `fsfreeze ACTION MOUNT_POINT`; its own words when it fails.
fn fsfreeze(action: &str, mount_point: &Path) -> Result<()> {
    let out = Command::new("fsfreeze")
        .arg(action)
        .arg(mount_point)
        .stdin(Stdio::null())
        .output()
        .context("cannot run fsfreeze (util-linux)")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Start the watchdog for `mount_point` and wait until it watches.
fn start_watchdog(mount_point: &Path, max: Duration) -> Result<Child> {
    let exe = std::env::current_exe().context("cannot find this program to start its watchdog")?;
    let mut child = Command::new(exe)
        .arg("thaw-watchdog")
        .arg("--mountpoint")
        .arg(mount_point)
        .arg("--max-secs")
        .arg((max + WATCHDOG_GRACE).as_secs().to_string())
        // It must outlive us: it does not stop with the daemon that started us.
        .env_remove(crate::PARENT_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the freeze watchdog")?;
    let ready = child.stdout.take().map(first_line);
    if ready.as_deref() != Some(READY) {
        let _ = child.kill();
        let _ = child.wait();
        bail!("the freeze watchdog did not start; nothing was frozen");
    }
    Ok(child)
}

fn first_line(out: ChildStdout) -> String {
    let mut line = String::new();
    let _ = BufReader::new(out).read_line(&mut line);
    line.trim().to_owned()
}

/// `thaw-watchdog`: wait for the imaging process's word; thaw unless it says it thawed.
pub fn watchdog(a: ThawWatchdogArgs) -> Result<ExitCode> {
    let deadline = Instant::now() + Duration::from_secs(a.max_secs);
    println!("{READY}");
    std::io::stdout().flush()?;
    let (tx, words) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::stdin().read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let why = loop {
        if crate::CANCEL.is_cancelled() {
            break "the watchdog was told to stop".to_owned();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break format!("the maximum freeze time of {} s ran out", a.max_secs);
        }
        match words.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(text) if text.lines().any(|l| l.trim() == THAWED) => return Ok(ExitCode::SUCCESS),
            Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                break "the imaging process ended without thawing it".to_owned()
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    };
    // Failing here means it was not frozen (any more): nothing left to do.
    if fsfreeze("--unfreeze", &a.mountpoint).is_ok() {
        eprintln!(
            "holdfast-agent: warning: thawed '{}': {why}",
            a.mountpoint.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
