//! The consistency step of a run with several sources: a child `hold-together` snapshots the
//! sources it can at one instant (see `crate::hold_together`) and holds them while the run
//! images them one after another, each read from its snapshot; it is told to release each
//! as its image is done, and the rest when the run ends.

use std::process::Stdio;
use std::time::Duration;

use holdfast_proto::job::{ConsistencyMethod, RunReport, RunStatus, SourceImage, StepStatus};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin};

use super::jobs::{command_steps, step, Jobs};
use crate::hold_together::{HeldVolume, Together};

/// How long taking the snapshots may take (the copy-on-write files are allocated first).
const TAKE_LIMIT: Duration = Duration::from_secs(300);
/// How long removing them may take once the run is done.
const RELEASE_LIMIT: Duration = Duration::from_secs(120);

/// The sources held together, and the process that holds them.
pub(super) struct HeldGroup {
    child: Child,
    stdin: Option<ChildStdin>,
    together: Together,
}

impl HeldGroup {
    /// The snapshot `source` is read from, and its number to release it by.
    pub(super) fn of(&self, source: &str) -> Option<(usize, &HeldVolume)> {
        self.together
            .held
            .iter()
            .enumerate()
            .find(|(_, h)| h.source == source)
    }

    /// When the sources were held.
    pub(super) fn held_at(&self) -> i64 {
        self.together.held_at
    }

    /// The `n`-th image is done: its snapshot can go.
    pub(super) async fn release(&mut self, n: usize) {
        if let Some(stdin) = &mut self.stdin {
            let _ = stdin.write_all(format!("release {n}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }

    /// Remove every snapshot left; a warning in `report` when that fails.
    pub(super) async fn finish(mut self, report: &mut RunReport) {
        drop(self.stdin.take());
        let ended = tokio::time::timeout(RELEASE_LIMIT, self.child.wait()).await;
        let problem = match ended {
            Ok(Ok(status)) if status.success() => None,
            Ok(Ok(status)) => {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err).await;
                }
                Some(format!(
                    "{status}: {}",
                    err.lines().last().unwrap_or("no message")
                ))
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => {
                let _ = self.child.kill().await;
                Some(format!(
                    "not done after {} s; stopped (the agent removes what is left at its next snapshot or start)",
                    RELEASE_LIMIT.as_secs()
                ))
            }
        };
        if let Some(why) = problem {
            report.steps.push(step(
                StepStatus::Warning,
                "Snapshots removed",
                format!("the snapshots held together could not all be removed: {why}"),
            ));
            if report.status == RunStatus::Successful {
                report.status = RunStatus::Warning;
            }
        }
    }
}

impl Jobs {
    /// Hold the run's sources at one instant where that can be done (two or more
    /// device-mapper devices mounted read-write, consistency `auto` or `dm-snapshot`, no LUKS
    /// key); what was held and what was not goes into `report`. None: each source is held by
    /// its own imaging run.
    pub(super) async fn hold_together(
        &self,
        sources: &[SourceImage],
        report: &mut RunReport,
    ) -> Option<HeldGroup> {
        let first = &sources.first()?.image;
        if sources.len() < 2
            || !matches!(
                first.consistency,
                ConsistencyMethod::Auto | ConsistencyMethod::DmSnapshot
            )
            || sources.iter().any(|s| s.image.luks_passphrase.is_some())
        {
            return None;
        }
        let mut cmd = self.own_command();
        cmd.arg("hold-together")
            .arg("--snapshot-size")
            .arg(first.snapshot_percent.to_string())
            .arg("--snapshot-command-timeout")
            .arg(first.snapshot_command_timeout_secs.to_string());
        for s in sources {
            cmd.arg("--source").arg(&s.image.source);
        }
        if let Some(c) = &first.before_snapshot {
            cmd.arg("--before-snapshot").arg(c);
        }
        if let Some(c) = &first.after_snapshot {
            cmd.arg("--after-snapshot").arg(c);
        }
        cmd.stdin(Stdio::piped());
        let not_held = |why: String, report: &mut RunReport| {
            report.steps.push(step(
                StepStatus::Info,
                "Held together",
                format!(
                    "the sources could not be held at one instant ({why}); each is held on its own"
                ),
            ));
        };
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                not_held(format!("cannot start the agent's own binary: {e}"), report);
                return None;
            }
        };
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take()?);
        let mut line = String::new();
        let read = tokio::time::timeout(TAKE_LIMIT, stdout.read_line(&mut line)).await;
        let together = match read {
            Ok(Ok(n)) if n > 0 => serde_json::from_str::<Together>(&line)
                .map_err(|e| format!("its answer cannot be read: {e}")),
            Ok(_) => {
                // It ended without an answer: its error.
                let _ = child.wait().await;
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err).await;
                }
                Err(err
                    .lines()
                    .last()
                    .unwrap_or("it ended without an answer")
                    .trim_start_matches("holdfast-agent: error: ")
                    .to_owned())
            }
            Err(_) => Err(format!("no answer within {} s", TAKE_LIMIT.as_secs())),
        };
        let together = match together {
            Ok(t) => t,
            Err(why) => {
                let _ = child.kill().await;
                not_held(why, report);
                return None;
            }
        };
        command_steps(&together.commands, report);
        let mut detail = if together.held.is_empty() {
            "no two sources could be held at one instant; each is held on its own".to_owned()
        } else {
            let held: Vec<&str> = together.held.iter().map(|h| h.source.as_str()).collect();
            format!(
                "{} held at one instant by device-mapper snapshots (writes to them waited {:.3} s)",
                held.join(", "),
                together.paused_seconds
            )
        };
        for n in &together.not_held {
            detail += &format!("; {} held on its own: {}", n.source, n.why);
        }
        report
            .steps
            .push(step(StepStatus::Info, "Held together", detail));
        if together.held.is_empty() {
            let _ = child.wait().await;
            return None;
        }
        Some(HeldGroup {
            child,
            stdin,
            together,
        })
    }
}
