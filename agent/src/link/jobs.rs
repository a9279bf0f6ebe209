//! Jobs the server sends: each runs as a child `holdfast-agent image create` (the same
//! command an admin runs by hand, so a job and a manual run behave alike; a crash of one
//! image does not take the daemon down, and cancelling is a signal), with credentials in
//! its environment, never on its command line. Progress lines from the child go to the
//! server as they come; the report is written to the agent's spool first and deleted only
//! when the server says it has stored it, so reports survive a lost server and a restart.
//!
//! Spool (in the state directory): `runs/ID.json` while a run is under way (an agent that
//! finds one at start was stopped mid-run and reports it failed), `reports/ID.json` until
//! the server stores it.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use holdfast_proto::job::{
    AfterJob, Coverage, HookCommand, ImageKind, ImageTask, ImageWritten, JobOrder, RunReport,
    RunStatus, SourceImage, Step, StepStatus, Task,
};
use holdfast_proto::request::{Acceptance, Check, CheckStatus, JobCheck, TargetProbe};
use holdfast_proto::AgentMsg;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::sync::{mpsc, Notify};

use crate::hold_together::HeldVolume;

/// Events buffered for the channel; beyond that progress is dropped (the report is not).
pub const EVENTS: usize = 256;
/// How long a cancelled image gets to clean up before it is killed.
const CANCEL_GRACE: Duration = Duration::from_secs(60);

/// What is known of a run while it is under way (no secrets).
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    run_id: i64,
    job_id: Option<i64>,
    name: String,
    started_at: i64,
}

/// The agent's jobs: running ones and the report spool.
pub struct Jobs {
    dir: PathBuf,
    exe: PathBuf,
    running: Mutex<HashMap<i64, Arc<Notify>>>,
    events: mpsc::Sender<AgentMsg>,
    /// Woken when a report is spooled.
    pub reports_ready: Notify,
}

/// The state directory: `HOLDFAST_AGENT_STATE`, else `/var/lib/holdfast-agent` for the
/// default configuration, else beside the configuration file (`agent.state/`).
pub fn state_dir(config: &Path) -> PathBuf {
    if let Some(d) = std::env::var_os("HOLDFAST_AGENT_STATE") {
        return PathBuf::from(d);
    }
    if config == Path::new(super::config::DEFAULT_PATH) {
        return PathBuf::from("/var/lib/holdfast-agent");
    }
    config.with_extension("state")
}

/// Where the records of block writes are kept (see `write_log`).
pub fn write_log_dir(state: &Path) -> PathBuf {
    state.join("writes")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(super) fn step(status: StepStatus, title: &str, detail: impl Into<String>) -> Step {
    Step {
        at: now(),
        status,
        title: title.to_owned(),
        detail: detail.into(),
    }
}

/// A step for each command run around a snapshot: ok, or a warning when it failed.
pub(super) fn command_steps(commands: &[crate::outcome::CommandRun], report: &mut RunReport) {
    for c in commands {
        let status = if c.succeeded() {
            StepStatus::Ok
        } else {
            StepStatus::Warning
        };
        report
            .steps
            .push(step(status, &format!("Command {}", c.stage), c.summary()));
    }
}

/// Write `bytes` to `path` atomically, private to the agent's user.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write '{}'", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write '{}'", path.display()))
}

impl Jobs {
    /// Open the spool in `dir`; runs left under way by a stopped agent become failed reports.
    pub fn open(dir: PathBuf, events: mpsc::Sender<AgentMsg>) -> Result<Arc<Self>> {
        for sub in ["runs", "reports", "work"] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir.join(sub))
                .with_context(|| format!("cannot create '{}'", dir.join(sub).display()))?;
        }
        let exe = std::env::current_exe().context("cannot find the agent's own binary")?;
        let jobs = Arc::new(Self {
            dir,
            exe,
            running: Mutex::default(),
            events,
            reports_ready: Notify::new(),
        });
        for entry in std::fs::read_dir(jobs.dir.join("runs"))?.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let Ok(m) = serde_json::from_str::<Marker>(&text) else {
                continue;
            };
            let report = RunReport {
                run_id: m.run_id,
                job_id: m.job_id,
                name: m.name,
                host: crate::device::hostname(),
                status: RunStatus::Failed,
                started_at: m.started_at,
                ended_at: now(),
                bytes_read: 0,
                bytes_written: 0,
                images: Vec::new(),
                deleted: Vec::new(),
                checked: Vec::new(),
                drill: None,
                steps: vec![step(
                    StepStatus::Error,
                    "Agent stopped",
                    "the agent stopped while this job ran (killed, crashed or restarted); the image was not completed and no complete image was left under its name",
                )],
            };
            jobs.spool(&report)?;
        }
        Ok(jobs)
    }

    fn marker(&self, run_id: i64) -> PathBuf {
        self.dir.join("runs").join(format!("{run_id}.json"))
    }

    fn report_path(&self, run_id: i64) -> PathBuf {
        self.dir.join("reports").join(format!("{run_id}.json"))
    }

    /// Keep `report` until the server stores it; the run is no longer under way.
    fn spool(&self, report: &RunReport) -> Result<()> {
        write_private(
            &self.report_path(report.run_id),
            &serde_json::to_vec(report)?,
        )?;
        let _ = std::fs::remove_file(self.marker(report.run_id));
        self.reports_ready.notify_one();
        Ok(())
    }

    /// Reports waiting for the server, oldest run first.
    pub fn spooled(&self) -> Vec<RunReport> {
        let mut out: Vec<RunReport> = std::fs::read_dir(self.dir.join("reports"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        out.sort_by_key(|r| r.run_id);
        out
    }

    /// Every run this agent has: running, stopped mid-run, or with a report not yet stored.
    pub fn known(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        for sub in ["runs", "reports"] {
            for e in std::fs::read_dir(self.dir.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name();
                if let Some(id) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .and_then(|n| n.parse().ok())
                {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The server stored the report of `run_id`.
    pub fn stored(&self, run_id: i64) {
        let _ = std::fs::remove_file(self.report_path(run_id));
    }

    /// Start `order` unless this run is already known (an order sent twice runs once).
    pub fn accept(self: &Arc<Self>, order: JobOrder) -> Result<Acceptance> {
        let id = order.run_id;
        if self.marker(id).exists() || self.report_path(id).exists() {
            return Ok(Acceptance::AlreadyAccepted);
        }
        let cancel = Arc::new(Notify::new());
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.contains_key(&id) {
                return Ok(Acceptance::AlreadyRunning);
            }
            running.insert(id, cancel.clone());
        }
        let marker = Marker {
            run_id: id,
            job_id: order.job_id,
            name: order.name.clone(),
            started_at: now(),
        };
        if let Err(e) = write_private(&self.marker(id), &serde_json::to_vec(&marker)?) {
            self.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(e);
        }
        let jobs = self.clone();
        tokio::spawn(async move {
            let report = jobs.run(order, marker.started_at, cancel).await;
            if let Err(e) = jobs.spool(&report) {
                eprintln!("holdfast-agent: cannot keep the report of run {id}: {e:#}");
            }
            jobs.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
        Ok(Acceptance::Started)
    }

    /// Cancel run `run_id`; false when it is not running here.
    pub fn cancel(&self, run_id: i64) -> bool {
        match self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&run_id)
        {
            Some(c) => {
                c.notify_one();
                true
            }
            None => false,
        }
    }

    /// Send `msg` on the channel (waiting for room, unlike progress).
    pub async fn reply(&self, msg: AgentMsg) {
        let _ = self.events.send(msg).await;
    }

    fn log(&self, run_id: i64, level: &str, text: impl Into<String>) {
        let _ = self.events.try_send(AgentMsg::Log {
            run_id,
            level: level.to_owned(),
            text: text.into(),
        });
    }

    /// Run the steps of `order` and say how it went.
    async fn run(&self, order: JobOrder, started_at: i64, cancel: Arc<Notify>) -> RunReport {
        let mut report = RunReport {
            run_id: order.run_id,
            job_id: order.job_id,
            name: order.name.clone(),
            host: crate::device::hostname(),
            status: RunStatus::Successful,
            started_at,
            ended_at: started_at,
            bytes_read: 0,
            bytes_written: 0,
            images: Vec::new(),
            deleted: Vec::new(),
            steps: vec![step(StepStatus::Info, "Job started", &order.name)],
            checked: Vec::new(),
            drill: None,
        };
        for note in &order.notes {
            report
                .steps
                .push(step(StepStatus::Info, "Note", note.clone()));
        }
        self.log(
            order.run_id,
            "info",
            format!("job '{}' started", order.name),
        );
        let mut stop = false;
        if let Some(hook) = &order.before {
            stop = self
                .hook(&order, hook, "Command before the job", &mut report)
                .await;
        }
        if !stop {
            let work = self.dir.join("work").join(order.run_id.to_string());
            stop = match &order.task {
                Task::Image(task) => {
                    let delete = &order.delete_after;
                    self.image_step(&order, task, delete, &work, &cancel, &mut report, None)
                        .await
                }
                Task::Images { sources } => {
                    self.images_step(&order, sources, &work, &cancel, &mut report)
                        .await
                }
                Task::RestoreFiles(task) => {
                    self.restore_files(&order, task, &work, &cancel, &mut report)
                        .await
                }
                Task::RestoreVolume(task) => {
                    self.restore_volume(&order, task, &work, &cancel, &mut report)
                        .await
                }
                Task::Verify(task) => {
                    self.verify_images(&order, task, &work, &cancel, &mut report)
                        .await
                }
                Task::Drill(task) => self.drill(&order, task, &work, &cancel, &mut report).await,
                Task::Clone(task) => self.clone_device(&order, task, &cancel, &mut report).await,
            };
        }
        let _ = std::fs::remove_dir_all(self.dir.join("work").join(order.run_id.to_string()));
        if let Some(hook) = &order.after {
            if stop {
                report.steps.push(step(
                    StepStatus::Info,
                    "Command after the job",
                    "not run: the job was stopped",
                ));
            } else {
                self.hook(&order, hook, "Command after the job", &mut report)
                    .await;
            }
        }
        if order.after_job != AfterJob::None && report.status != RunStatus::Cancelled {
            report
                .steps
                .push(after_job(order.after_job, &order.name).await);
        }
        report.ended_at = now();
        report.steps.push(step(
            match report.status {
                RunStatus::Successful => StepStatus::Ok,
                RunStatus::Warning => StepStatus::Warning,
                _ => StepStatus::Error,
            },
            "Job finished",
            report.status.as_str(),
        ));
        self.log(
            order.run_id,
            "info",
            format!("job '{}' finished: {}", order.name, report.status.as_str()),
        );
        report
    }

    /// Several sources, one after another, each with its own retention; true when the job
    /// must stop. A source that fails does not keep the next from being imaged, unless the
    /// job stops at the first error.
    async fn images_step(
        &self,
        order: &JobOrder,
        sources: &[SourceImage],
        work: &Path,
        cancel: &Notify,
        report: &mut RunReport,
    ) -> bool {
        // Held together where the sources allow; each read from its snapshot then.
        let mut group = self.hold_together(sources, report).await;
        let mut stopped = false;
        for (i, s) in sources.iter().enumerate() {
            self.log(
                order.run_id,
                "info",
                format!(
                    "imaging {} ({} of {})",
                    s.image.source,
                    i + 1,
                    sources.len()
                ),
            );
            let held = group.as_ref().and_then(|g| {
                g.of(&s.image.source)
                    .map(|(n, h)| (n, h.clone(), g.held_at()))
            });
            let stop = self
                .image_step(
                    order,
                    &s.image,
                    &s.delete_after,
                    work,
                    cancel,
                    report,
                    held.as_ref().map(|(_, h, at)| (h, *at)),
                )
                .await;
            if let (Some(g), Some((n, _, _))) = (group.as_mut(), &held) {
                g.release(*n).await;
            }
            if stop {
                let left: Vec<&str> = sources[i + 1..]
                    .iter()
                    .map(|s| s.image.source.as_str())
                    .collect();
                if !left.is_empty() {
                    report.steps.push(step(
                        StepStatus::Error,
                        "Not imaged",
                        format!("the job stopped before {}", left.join(", ")),
                    ));
                }
                stopped = true;
                break;
            }
        }
        if let Some(group) = group {
            group.finish(report).await;
        }
        stopped
    }

    /// The imaging step of a run, with what follows a sound image (retention of
    /// `delete_after`); true when the job must stop.
    #[allow(clippy::too_many_arguments)]
    async fn image_step(
        &self,
        order: &JobOrder,
        task: &ImageTask,
        delete_after: &[String],
        work: &Path,
        cancel: &Notify,
        report: &mut RunReport,
        held: Option<(&HeldVolume, i64)>,
    ) -> bool {
        let outcome = self.image(order, task, work, cancel, report, held).await;
        let mut stop = false;
        match outcome {
            Ok(written) => {
                report.steps.push(step(
                    StepStatus::Ok,
                    "Image created",
                    format!(
                        "{} {} ({}) on {}: {} image '{}' in {}, {}; read {} bytes, wrote {} bytes in {} part(s){}",
                        written.source_kind,
                        written.source,
                        written.filesystem.as_deref().unwrap_or("no filesystem recognised"),
                        report.host,
                        written.method.as_str(),
                        written.name,
                        written.target,
                        written.consistency,
                        report.bytes_read,
                        written.bytes,
                        written.parts,
                        match written.verified {
                            Some(true) => ", validated",
                            Some(false) => ", VALIDATION FAILED",
                            None => "",
                        }
                    ),
                ));
                if let Some(c) = &written.changes {
                    report
                        .steps
                        .push(step(StepStatus::Info, "Changes", c.clone()));
                }
                if let Some(held) = bandwidth_note(&task.target) {
                    report.steps.push(step(StepStatus::Info, "Bandwidth", held));
                }
                // A forensic fallback or a live source is not what was asked for.
                for w in &written.warnings {
                    report
                        .steps
                        .push(step(StepStatus::Warning, "Imaging warning", w.clone()));
                }
                if !written.warnings.is_empty() && report.status == RunStatus::Successful {
                    report.status = RunStatus::Warning;
                }
                let sound = written.verified != Some(false);
                if !sound {
                    report.status = RunStatus::Failed;
                }
                report.images.push(written);
                // Older images go only once the new one is written and sound.
                if sound && !delete_after.is_empty() {
                    self.retention(delete_after, &task.target, work, report)
                        .await;
                }
            }
            Err(ChildFailure::Cancelled) => {
                report.steps.push(step(
                    StepStatus::Error,
                    "Cancelled",
                    "cancelled by an operator; the partial image was removed",
                ));
                report.status = RunStatus::Cancelled;
                stop = true;
            }
            Err(ChildFailure::Failed(e)) => {
                report.steps.push(step(
                    StepStatus::Error,
                    "Image failed",
                    format!("{}: {e}", task.source),
                ));
                report.status = RunStatus::Failed;
                stop = order.abort_on_error;
            }
        }
        stop
    }

    /// Run a before/after command; true when the job must stop.
    async fn hook(
        &self,
        order: &JobOrder,
        hook: &HookCommand,
        title: &str,
        report: &mut RunReport,
    ) -> bool {
        match run_hook(hook).await {
            Ok(output) => {
                report.steps.push(step(StepStatus::Ok, title, output));
                false
            }
            Err(e) => {
                let detail = format!("{e:#}");
                self.log(order.run_id, "error", format!("{title}: {detail}"));
                if hook.abort_on_failure {
                    report.steps.push(step(
                        StepStatus::Error,
                        title,
                        format!("{detail}; the job is aborted"),
                    ));
                    report.status = RunStatus::Failed;
                    true
                } else {
                    report.steps.push(step(StepStatus::Warning, title, detail));
                    if report.status == RunStatus::Successful {
                        report.status = RunStatus::Warning;
                    }
                    false
                }
            }
        }
    }

    /// Run the child `cmd` of run `run_id`: its progress lines become progress events and
    /// its other lines on stderr log lines; a cancel stops it with SIGTERM (it cleans up
    /// between frames), killed after a grace time. Its output: the document on stdout, and
    /// the other lines of stderr.
    pub(super) async fn run_child(
        &self,
        run_id: i64,
        mut cmd: tokio::process::Command,
        cancel: &Notify,
    ) -> Result<std::process::Output, ChildFailure> {
        let mut child = cmd.spawn().map_err(|e| {
            ChildFailure::Failed(format!("cannot start the agent's own binary: {e}"))
        })?;
        let stderr = child.stderr.take();
        let mut stdout = child.stdout.take();
        let events = self.events.clone();
        // Progress lines become events; anything else is a log line (warnings, errors).
        let lines = tokio::spawn(async move {
            let mut errors = Vec::new();
            if let Some(err) = stderr {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(p) = serde_json::from_str::<Progress>(&line) {
                        let _ = events.try_send(AgentMsg::Progress {
                            run_id,
                            stage: p.stage,
                            done: p.done,
                            total: p.total,
                        });
                    } else {
                        let _ = events.try_send(AgentMsg::Log {
                            run_id,
                            level: "info".into(),
                            text: line.clone(),
                        });
                        errors.push(line);
                    }
                }
            }
            errors
        });
        let mut stdout_bytes = Vec::new();
        let read_out = async {
            if let Some(o) = stdout.as_mut() {
                let _ = o.read_to_end(&mut stdout_bytes).await;
            }
        };
        let mut cancelled = false;
        let status = tokio::select! {
            (status, ()) = async { tokio::join!(child.wait(), read_out) } => status,
            () = cancel.notified() => {
                cancelled = true;
                // SIGTERM: the command stops between frames and removes its partial image.
                if let Some(pid) = child.id() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                match tokio::time::timeout(CANCEL_GRACE, child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = child.kill().await;
                        child.wait().await
                    }
                }
            }
        }
        .map_err(|e| ChildFailure::Failed(format!("the child process failed: {e}")))?;
        // Killed, it may have left a snapshot, or a device suspended midway through a table
        // swap: undo that now rather than at the next run.
        if std::os::unix::process::ExitStatusExt::signal(&status).is_some() {
            let _ = tokio::task::spawn_blocking(crate::consistency::remove_stale_snapshots).await;
        }
        // The outcome is the document on stdout; the other lines on stderr were forwarded as
        // log lines, and the last of them explains a child that died without a document.
        let other_lines = lines.await.unwrap_or_default();
        if cancelled || status.code() == Some(crate::exit::CANCELLED.into()) {
            return Err(ChildFailure::Cancelled);
        }
        let out = std::process::Output {
            status,
            stdout: stdout_bytes,
            stderr: other_lines.join("\n").into_bytes(),
        };
        Ok(out)
    }

    /// Write the image with a child `image create`.
    async fn image(
        &self,
        order: &JobOrder,
        task: &ImageTask,
        work: &Path,
        cancel: &Notify,
        report: &mut RunReport,
        held: Option<(&HeldVolume, i64)>,
    ) -> Result<ImageWritten, ChildFailure> {
        let cmd = self
            .image_command(task, work, held)
            .map_err(|e| ChildFailure::Failed(format!("{e:#}")))?;
        let out = self.run_child(order.run_id, cmd, cancel).await?;
        let created: crate::outcome::Created = crate::outcome::read("the imaging process", &out)
            .map_err(|e| ChildFailure::Failed(format!("{e:#}")))?;
        report.bytes_read += created.read_bytes;
        report.bytes_written += created.image_bytes;
        command_steps(&created.commands, report);
        Ok(ImageWritten {
            name: task.name.clone(),
            method: task.method,
            base: task.base.clone(),
            image_id: created.image_id,
            bytes: created.image_bytes,
            parts: u64::from(created.parts),
            verified: created.validation.as_ref().map(|v| v.is_ok()),
            source: created.source,
            source_kind: created.source_kind,
            filesystem: created.filesystem,
            target: task.target.url.clone(),
            coverage: Some(match created.coverage {
                holdfast_image::header::Coverage::UsedSector => Coverage::UsedSector,
                holdfast_image::header::Coverage::Forensic => Coverage::Forensic,
            }),
            consistency: created.consistency,
            warnings: created.warnings,
            source_size: created.source_size,
            sample: created.sample,
            changes: (created.kind != holdfast_image::header::Kind::Full)
                .then(|| created.changes.describe()),
        })
    }

    /// Run a child `holdfast-agent ARGS --json` with the target's credentials (and the
    /// image password, when given); its typed answer, or its error.
    pub(super) async fn child_json<T: serde::de::DeserializeOwned>(
        &self,
        target: &holdfast_proto::job::TargetAccess,
        password: Option<&holdfast_proto::job::Secret>,
        args: &[&str],
    ) -> Result<T> {
        let work = self.work_dir("check")?;
        let out = async {
            let mut cmd = self.target_command(target, &work)?;
            if let Some(p) = password {
                cmd.env(crate::secret::PASSWORD_ENV, p.expose());
            }
            // `--json` goes before a `--` that ends the flags.
            let (flags, rest) =
                args.split_at(args.iter().position(|a| *a == "--").unwrap_or(args.len()));
            cmd.args(flags).arg("--json").args(rest);
            let o = cmd
                .output()
                .await
                .context("cannot run the agent's own binary")?;
            crate::outcome::read(&format!("holdfast-agent {}", args.join(" ")), &o)
        }
        .await;
        let _ = std::fs::remove_dir_all(&work);
        out
    }

    /// "Test connection": write, read back and delete a test file on the target.
    pub async fn test_target(
        &self,
        target: &holdfast_proto::job::TargetAccess,
    ) -> Result<TargetProbe> {
        // An SFTP server whose key no admin confirmed gets nothing that logs in: the test
        // only reads the key it offers, for the admin to compare and confirm.
        let what = if target.host_key.is_none() && target.url.starts_with("sftp://") {
            "host-key"
        } else {
            "test"
        };
        self.child_json(target, None, &["target", what, "--url", &target.url])
            .await
    }

    /// "Check job": can `order` run here? Source, target, space, base image, users of the
    /// commands — each a line with ok / warning / error, nothing changed.
    pub async fn check(&self, order: &JobOrder) -> JobCheck {
        use CheckStatus::{Error, Ok as Fine, Warning};
        let mut checks = Vec::new();
        let mut add = |check: &str, status: CheckStatus, detail: String| {
            checks.push(Check {
                check: check.to_owned(),
                status,
                detail,
            });
        };
        let tasks: Vec<&ImageTask> = match &order.task {
            Task::Image(task) => vec![task],
            Task::Images { sources } => sources.iter().map(|s| &s.image).collect(),
            _ => {
                add(
                    "job",
                    Error,
                    "only imaging jobs are checked; a restore checks its target when it runs"
                        .into(),
                );
                return JobCheck::new(checks);
            }
        };
        let Some(first) = tasks.first() else {
            add("job", Error, "the job names no source".into());
            return JobCheck::new(checks);
        };
        // The sources' sizes together: what the target may have to hold.
        let mut size = Some(0u64);
        for task in &tasks {
            let source = PathBuf::from(&task.source);
            let (asked, max, percent) = (
                task.consistency,
                Duration::from_secs(u64::from(task.max_freeze_secs)),
                task.snapshot_percent,
            );
            let dev = tokio::task::spawn_blocking(move || {
                let d = crate::device::Device::inspect(&source)?;
                let how = crate::consistency::preview(&source, asked, max, percent);
                anyhow::Ok((d.size, how))
            })
            .await
            .map_err(|e| anyhow!("{e}"))
            .and_then(|r| r);
            match dev {
                Ok((bytes, how)) => {
                    add(
                        "source",
                        Fine,
                        format!("{} ({})", task.source, crate::output::bytes(bytes)),
                    );
                    match how {
                        Ok((how, live)) => add(
                            "consistency",
                            if live { Warning } else { Fine },
                            format!("{} ({}): {how}", task.source, asked.as_str()),
                        ),
                        Err(e) => add("consistency", Error, format!("{e:#}")),
                    }
                    size = size.map(|s| s.saturating_add(bytes));
                }
                Err(e) => {
                    add("source", Error, format!("{}: {e:#}", task.source));
                    size = None;
                }
            }
        }
        match self.test_target(&first.target).await {
            Ok(p) => {
                let free = p.free_bytes;
                add(
                    "target",
                    Fine,
                    format!(
                        "{}: writable, free space {}",
                        p.target,
                        free.map_or_else(|| "unknown".into(), crate::output::bytes)
                    ),
                );
                if let (Some(free), Some(size)) = (free, size) {
                    if free < size {
                        add(
                            "space",
                            Warning,
                            format!(
                                "{} free for {} of {}: enough only if it is mostly unused or compresses well",
                                crate::output::bytes(free),
                                if tasks.len() > 1 { "sources" } else { "a source" },
                                crate::output::bytes(size)
                            ),
                        );
                    }
                }
            }
            Err(e) => add("target", Error, format!("{e:#}")),
        }
        for task in &tasks {
            if let Some(base) = &task.base {
                let url = join(&task.target.url, base);
                match self
                    .child_json::<crate::outcome::Info>(
                        &task.target,
                        None,
                        &["image", "info", "--image", &url],
                    )
                    .await
                {
                    Ok(info) => add(
                        "base image",
                        Fine,
                        format!(
                            "{base} is there and complete (image of {}, created {})",
                            info.metadata.source.path, info.created
                        ),
                    ),
                    Err(e) => add("base image", Error, format!("{base}: {e:#}")),
                }
            }
        }
        for (what, hook) in [
            ("command before", &order.before),
            ("command after", &order.after),
        ] {
            if let Some(user) = hook
                .as_ref()
                .and_then(|h| h.user.as_deref())
                .filter(|u| !u.is_empty())
            {
                match nix::unistd::User::from_name(user) {
                    Ok(Some(_)) => add(what, Fine, format!("runs as {user}")),
                    _ => add(
                        what,
                        Error,
                        format!("there is no user '{user}' on this machine"),
                    ),
                }
            }
        }
        JobCheck::new(checks)
    }

    /// Delete the images retention lets go, each with a child `image delete`; a failure is
    /// a warning (the images stay, and the next run tries again).
    async fn retention(
        &self,
        names: &[String],
        target: &holdfast_proto::job::TargetAccess,
        work: &Path,
        report: &mut RunReport,
    ) {
        let mut failed = Vec::new();
        let mut locked = Vec::new();
        let mut deleted = Vec::new();
        for name in names {
            let outcome = match self.target_command(target, work) {
                Ok(mut cmd) => {
                    cmd.args(["image", "delete", "--json", "--image"])
                        .arg(join(&target.url, name));
                    match cmd.output().await {
                        Ok(o) if o.status.code() == Some(i32::from(crate::exit::LOCKED)) => {
                            locked.push(format!(
                                "{name} ({})",
                                crate::outcome::failure("image delete", &o)
                            ));
                            continue;
                        }
                        Ok(o) => {
                            crate::outcome::read::<crate::outcome::Deleted>("image delete", &o)
                                .map(|_| ())
                                .map_err(|e| format!("{e:#}"))
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(format!("{e:#}")),
            };
            match outcome {
                Ok(()) => deleted.push(name.clone()),
                Err(e) => failed.push(format!("{name}: {e}")),
            }
        }
        if !locked.is_empty() {
            // The lock is doing its job: the image stays recorded, and the first run after
            // its lock ends deletes it.
            report.steps.push(step(
                StepStatus::Ok,
                "Retention",
                format!(
                    "kept while locked, deleted by a run after the lock ends: {}",
                    locked.join("; ")
                ),
            ));
        }
        if !deleted.is_empty() {
            report.steps.push(step(
                StepStatus::Ok,
                "Retention",
                format!("deleted {}", deleted.join(", ")),
            ));
            report.deleted.extend(deleted);
        }
        if !failed.is_empty() {
            report.steps.push(step(
                StepStatus::Warning,
                "Retention",
                format!("could not delete {}", failed.join("; ")),
            ));
            if report.status == RunStatus::Successful {
                report.status = RunStatus::Warning;
            }
        }
    }

    /// Where restore drills put their scratch copies unless told otherwise.
    pub(super) fn drill_dir(&self) -> PathBuf {
        self.dir.join("drills")
    }

    /// A private folder under the spool for one child's key and CA files.
    pub(super) fn work_dir(&self, what: &str) -> Result<PathBuf> {
        let mut tag = [0u8; 6];
        getrandom::getrandom(&mut tag).map_err(|e| anyhow!("no randomness: {e}"))?;
        Ok(self.dir.join("work").join(format!(
            "{what}-{}",
            tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )))
    }

    /// A child `holdfast-agent` with the target's credentials in its environment (a key or
    /// CA in private files under `work`), never on its command line.
    pub(super) fn target_command(
        &self,
        t: &holdfast_proto::job::TargetAccess,
        work: &Path,
    ) -> Result<tokio::process::Command> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(work)
            .with_context(|| format!("cannot create '{}'", work.display()))?;
        let mut cmd = self.own_command();
        // The machine's own limit (HOLDFAST_AGENT_BANDWIDTH, from the daemon's environment)
        // is inherited; the target's and the one set on the console come with the order.
        // The lowest applies.
        if let Some(b) = t.bandwidth.as_deref().filter(|b| !b.trim().is_empty()) {
            cmd.env("HOLDFAST_TARGET_BANDWIDTH", b);
        }
        if let Some(b) = t
            .agent_bandwidth
            .as_deref()
            .filter(|b| !b.trim().is_empty())
        {
            cmd.env(crate::storage::CONSOLE_BANDWIDTH_ENV, b);
        }
        if let Some(u) = &t.user {
            cmd.env("HOLDFAST_TARGET_USER", u);
        }
        if let Some(p) = &t.password {
            cmd.env("HOLDFAST_TARGET_PASSWORD", p.expose());
        }
        if let Some(k) = &t.private_key {
            let path = work.join("key");
            write_private(&path, k.expose().as_bytes())?;
            cmd.env("HOLDFAST_TARGET_KEY", path);
        }
        if let Some(p) = &t.passphrase {
            cmd.env("HOLDFAST_TARGET_KEY_PASSPHRASE", p.expose());
        }
        if let Some(k) = &t.host_key {
            cmd.env("HOLDFAST_TARGET_HOST_KEY", k);
        }
        if let Some(ca) = &t.ca_pem {
            let path = work.join("ca.pem");
            write_private(&path, ca.as_bytes())?;
            cmd.env("HOLDFAST_TARGET_CA", path);
        }
        Ok(cmd)
    }

    /// A child `holdfast-agent` without any credential of the daemon's environment, its
    /// output piped back.
    pub(super) fn own_command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.env(crate::PARENT_ENV, std::process::id().to_string());
        // The server sends SFTP targets with the host key an admin confirmed; the agent's
        // own known-hosts file pins keys only for orders that come without one.
        cmd.env("HOLDFAST_KNOWN_HOSTS", self.dir.join("known_hosts"));
        for k in [
            "HOLDFAST_TARGET_USER",
            "HOLDFAST_TARGET_PASSWORD",
            "HOLDFAST_TARGET_KEY",
            "HOLDFAST_TARGET_KEY_PASSPHRASE",
            "HOLDFAST_TARGET_CA",
            "HOLDFAST_TARGET_HOST_KEY",
            "HOLDFAST_TARGET_BANDWIDTH",
            crate::storage::CONSOLE_BANDWIDTH_ENV,
            "HOLDFAST_PASSWORD",
            crate::luks::PASSPHRASE_ENV,
        ] {
            cmd.env_remove(k);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// The child command for `task`: flags for the options, secrets in the environment or
    /// in private files under `work`.
    /// `held`: the source is read from this snapshot, taken then with the run's others.
    fn image_command(
        &self,
        task: &ImageTask,
        work: &Path,
        held: Option<(&HeldVolume, i64)>,
    ) -> Result<tokio::process::Command> {
        let at = |name: &str| join(&task.target.url, name);
        let mut cmd = self.target_command(&task.target, work)?;
        cmd.args([
            "image",
            "create",
            "--json",
            "--progress-lines",
            "--create-folders",
            "--source",
        ])
        .arg(&task.source)
        .arg("--output")
        .arg(at(&task.name))
        .arg("--compression-level")
        .arg(task.compression_level.to_string())
        .arg("--write-log")
        .arg(write_log_dir(&self.dir));
        match (task.method, &task.base) {
            (ImageKind::Full, _) => {}
            (m, Some(base)) => {
                cmd.arg(if m == ImageKind::Incremental {
                    "--incremental"
                } else {
                    "--differential"
                })
                .arg("--base")
                .arg(at(base));
            }
            (m, None) => return Err(anyhow!("a {m:?} image needs a base image")),
        }
        if let Some(c) = &task.encryption {
            cmd.arg("--encrypt").arg(c);
        }
        if let Some(lock) = task.object_lock {
            cmd.arg("--lock-for")
                .arg(format!("{}s", lock.seconds))
                .arg("--lock-mode")
                .arg(lock.mode.as_str());
        }
        if let Some(s) = task.split_size {
            cmd.arg("--split").arg(s.to_string());
        }
        if task.verify {
            cmd.arg("--verify");
        }
        if task.keep_windows_system_files {
            cmd.arg("--keep-windows-system-files");
        }
        if task.sample_files {
            cmd.arg("--sample-files");
        }
        if task.overwrite {
            cmd.arg("--overwrite");
        }
        if !task.comment.is_empty() {
            cmd.arg("--comment").arg(&task.comment);
        }
        cmd.arg("--consistency")
            .arg(task.consistency.as_str())
            .arg("--max-freeze")
            .arg(task.max_freeze_secs.to_string())
            .arg("--snapshot-size")
            .arg(task.snapshot_percent.to_string())
            .arg("--snapshot-command-timeout")
            .arg(task.snapshot_command_timeout_secs.to_string())
            .arg("--full-hash-every")
            .arg(task.full_hash_every.to_string());
        if !task.change_tracking {
            cmd.arg("--no-change-tracking");
        }
        if !task.keep_thin_snapshot {
            cmd.arg("--no-keep-snapshot");
        }
        match held {
            // The commands around the snapshot ran around the group's.
            Some((h, at)) => {
                cmd.arg("--held-snapshot")
                    .arg(&h.snapshot)
                    .arg("--held-at")
                    .arg(at.to_string())
                    .arg("--held-description")
                    .arg(&h.description);
            }
            None => {
                if let Some(c) = &task.before_snapshot {
                    cmd.arg("--before-snapshot").arg(c);
                }
                if let Some(c) = &task.after_snapshot {
                    cmd.arg("--after-snapshot").arg(c);
                }
            }
        }
        if let Some(p) = &task.password {
            cmd.env("HOLDFAST_PASSWORD", p.expose());
        }
        if let Some(p) = &task.luks_passphrase {
            cmd.env(crate::luks::PASSPHRASE_ENV, p.expose());
        }
        Ok(cmd)
    }
}

/// Ask the system to restart or shut down in a minute (`shutdown -r|-h +1`), so the report
/// can still reach the server; the step says whether it was scheduled.
/// The bandwidth limits that held a run's transfers, for its report (none: unlimited).
fn bandwidth_note(target: &holdfast_proto::job::TargetAccess) -> Option<String> {
    let given = |b: Option<&str>| {
        b.map(str::trim)
            .filter(|b| !b.is_empty())
            .map(str::to_owned)
    };
    let machine = std::env::var(crate::storage::AGENT_BANDWIDTH_ENV).ok();
    let held: Vec<String> = [
        given(target.bandwidth.as_deref()).map(|b| format!("the target's limit {b}")),
        given(target.agent_bandwidth.as_deref())
            .map(|b| format!("this agent's limit set on the console {b}")),
        given(machine.as_deref()).map(|b| {
            format!(
                "this machine's own limit {b} ({})",
                crate::storage::AGENT_BANDWIDTH_ENV
            )
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!held.is_empty()).then(|| {
        format!(
            "transfers to and from the target were held to {} (the lowest applies at each moment)",
            held.join(", ")
        )
    })
}

async fn after_job(action: AfterJob, job: &str) -> Step {
    let (flag, what) = match action {
        AfterJob::Restart => ("-r", "restart"),
        AfterJob::Shutdown | AfterJob::None => ("-h", "shut down"),
    };
    let out = tokio::process::Command::new("shutdown")
        .args([flag, "+1", &format!("Holdfast: job '{job}' finished")])
        .stdin(Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => step(
            StepStatus::Ok,
            "After the job",
            format!("the machine will {what} in one minute"),
        ),
        Ok(o) => step(
            StepStatus::Error,
            "After the job",
            format!(
                "cannot {what}: shutdown failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ),
        Err(e) => step(
            StepStatus::Error,
            "After the job",
            format!("cannot {what}: cannot run shutdown: {e}"),
        ),
    }
}

/// A progress line of the child.
#[derive(Deserialize)]
struct Progress {
    stage: String,
    done: u64,
    total: u64,
}

/// How a child for a run's step did not work out.
pub(super) enum ChildFailure {
    Cancelled,
    Failed(String),
}

/// `name` inside the folder `url` (a URL or a local path).
pub(super) fn join(url: &str, name: &str) -> String {
    holdfast_targets::location::join(url, name)
}

/// Largest part of a command's output kept in the report.
const HOOK_OUTPUT: usize = 2000;

/// Run `hook` with `/bin/sh -c`, as its user, within its timeout; its output on success.
async fn run_hook(hook: &HookCommand) -> Result<String> {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&hook.command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(name) = hook.user.as_deref().filter(|u| !u.is_empty()) {
        let user = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| anyhow!("there is no user '{name}' on this machine"))?;
        cmd.uid(user.uid.as_raw())
            .gid(user.gid.as_raw())
            .env("HOME", &user.dir)
            .env("USER", name)
            .env("LOGNAME", name)
            .current_dir(&user.dir);
    }
    let timeout = Duration::from_secs(hook.timeout_seconds.max(1));
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run '{}'", hook.command))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            anyhow!(
                "'{}' did not finish within {} s and was stopped",
                hook.command,
                timeout.as_secs()
            )
        })?
        .with_context(|| format!("cannot run '{}'", hook.command))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let text = text.trim();
    let text = match text.char_indices().nth(HOOK_OUTPUT) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    };
    if out.status.success() {
        Ok(format!("'{}' succeeded. {text}", hook.command)
            .trim_end()
            .to_owned())
    } else {
        Err(anyhow!(
            "'{}' failed ({}): {text}",
            hook.command,
            out.status
        ))
    }
}
