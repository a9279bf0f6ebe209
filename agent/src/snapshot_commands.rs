//! Commands run around the instant an image is taken of: one just before the source is held
//! (a freeze, a read-only remount; e.g. flush a database and hold its writes), one once the
//! image no longer needs the hold (let the database go on). Each has a time limit; what it
//! printed and how it ended go into the report.

use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::outcome::CommandRun;

/// The most of a command's output kept (its end).
const KEEP: usize = 4 << 10;

/// Run `command` with `/bin/sh -c`, stopping it at `limit`.
pub fn run(stage: &str, command: &str, limit: Duration) -> CommandRun {
    let started = Instant::now();
    let ended = |exit_code: Option<i32>, output: String, note: Option<String>| CommandRun {
        stage: stage.to_owned(),
        command: command.to_owned(),
        exit_code,
        output,
        note,
        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    };
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove(crate::secret::PASSWORD_ENV)
        // Its own process group: at the time limit, what it started stops with it.
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return ended(None, String::new(), Some(format!("cannot run it: {e}"))),
    };
    // Both streams are read to their end by threads, so a chatty command never blocks.
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut s| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            out
        })
    })
    .collect();
    let mut note = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= limit => {
                let group = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                let _ = child.kill();
                let _ = child.wait();
                note = Some(format!(
                    "stopped at its time limit of {} s",
                    limit.as_secs()
                ));
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                note = Some(format!("cannot wait for it: {e}"));
                break None;
            }
        }
    };
    let mut output = Vec::new();
    for r in readers {
        output.extend(r.join().unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&output);
    let text = text.trim();
    let mut cut = text.len().saturating_sub(KEEP);
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    ended(status.and_then(|s| s.code()), text[cut..].to_owned(), note)
}

impl CommandRun {
    /// True when it ran to the end with exit status 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// How it ended, in a sentence with its output.
    pub fn summary(&self) -> String {
        let how = match (&self.note, self.exit_code) {
            (Some(n), _) => n.clone(),
            (None, Some(c)) => format!("exit status {c}"),
            (None, None) => "killed by a signal".to_owned(),
        };
        let mut s = format!("'{}': {how} after {:.1} s", self.command, self.seconds);
        if !self.output.is_empty() {
            s.push_str(&format!("; it printed: {}", self.output));
        }
        s
    }
}

/// The commands of `args` around a hold: the one before run now — when it fails, an error
/// saying that nothing was `done` ("imaged") — and the one after armed (created first, so
/// that it runs whatever happens from here). The run of the one before, when there is one.
pub fn around(
    args: &crate::cli::SnapshotCommandArgs,
    done: &str,
) -> anyhow::Result<(After, Option<CommandRun>)> {
    let limit = Duration::from_secs(u64::from(args.snapshot_command_timeout));
    let after = After::new(args.after_snapshot.as_deref(), limit);
    let Some(cmd) = &args.before_snapshot else {
        return Ok((after, None));
    };
    let before = run(BEFORE, cmd, limit);
    if !before.succeeded() {
        anyhow::bail!(
            "the command before the snapshot failed, so nothing was {done}: {}",
            before.summary()
        );
    }
    Ok((after, Some(before)))
}

/// The command after the snapshot, run exactly once: by [`After::run`], or when dropped on an
/// early return (an error), so that what the command before held is always let go.
pub struct After {
    command: Option<String>,
    limit: Duration,
}

impl After {
    pub fn new(command: Option<&str>, limit: Duration) -> Self {
        Self {
            command: command.map(str::to_owned),
            limit,
        }
    }

    /// Run it now (if there is one).
    pub fn run(mut self) -> Option<CommandRun> {
        let command = self.command.take()?;
        Some(run(AFTER, &command, self.limit))
    }
}

impl Drop for After {
    fn drop(&mut self) {
        if let Some(command) = self.command.take() {
            let r = run(AFTER, &command, self.limit);
            if !r.succeeded() {
                eprintln!(
                    "holdfast-agent: warning: the command after the snapshot failed: {}",
                    r.summary()
                );
            }
        }
    }
}

/// The stage names, as reports show them.
pub const BEFORE: &str = "before the snapshot";
pub const AFTER: &str = "after the snapshot";
