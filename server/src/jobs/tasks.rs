//! Runs that are not a job's imaging: restores (files of an image point copied back onto a
//! machine, or an image point written over a device, on a chosen agent) and verify runs (a
//! job's stored images validated again on their target). Each is a run like an imaging
//! one (queued, delivered, cancelled, reported), recorded with what it does; its secrets
//! (the target's credentials, the image password of the job that wrote the images) are
//! opened from the vault only when its order is made.

use holdfast_proto::job::{
    AfterJob, DrillTask, JobOrder, RestoreFilesTask, RestoreVolumeTask, Task, VerifyTask,
};
use serde::{Deserialize, Serialize};

use super::{job_context, DispatchError, Dispatcher};
use crate::store::jobs::RunRow;
use crate::store::RunState;

/// What a run that is not an imaging run does, as stored with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskSpec {
    /// Paths of image `image_id` into the folder `to` (none: back where they were).
    Files {
        image_id: i64,
        partition: Option<u32>,
        paths: Vec<String>,
        to: Option<String>,
        overwrite: bool,
    },
    /// Image `image_id` (or one `partition` of a disk image) over `device`.
    Volume {
        image_id: i64,
        device: String,
        #[serde(default)]
        partition: Option<u32>,
    },
    /// The run's job's images on the run's agent, validated again where they are.
    Verify,
    /// Image `image_id` restored into scratch space in `scratch` and checked.
    Drill {
        image_id: i64,
        scratch: Option<String>,
    },
    /// Device `source` of the agent copied onto its device `target`.
    Clone(holdfast_proto::job::CloneTask),
}

impl TaskSpec {
    fn image_id(&self) -> Option<i64> {
        match self {
            Self::Files { image_id, .. }
            | Self::Volume { image_id, .. }
            | Self::Drill { image_id, .. } => Some(*image_id),
            Self::Verify | Self::Clone(_) => None,
        }
    }

    /// The run's name, as reports list it.
    fn title(&self, image: &str) -> String {
        match self {
            Self::Files { paths, .. } if paths.len() == 1 => {
                format!("Restore {} from {image}", paths[0])
            }
            Self::Files { paths, .. } => format!("Restore {} paths from {image}", paths.len()),
            Self::Volume { device, .. } => format!("Restore {image} to {device}"),
            Self::Verify => format!("Verify the images of {image}"),
            Self::Drill { .. } => format!("Restore drill of {image}"),
            Self::Clone(c) => format!("Clone {} to {}", c.source, c.target),
        }
    }
}

impl Dispatcher {
    /// Start `spec` on `agent_id` now: refused when the agent is at its limit of runs; the
    /// run is recorded with its audit entry naming `by`, then sent (an offline agent's run
    /// ends at once, failed).
    pub async fn restore(
        &self,
        spec: &TaskSpec,
        agent_id: i64,
        by: &str,
    ) -> Result<RunRow, DispatchError> {
        let (subject, title) = match spec {
            TaskSpec::Clone(_) => (format!("agent:{agent_id}"), spec.title("")),
            _ => {
                let id = spec.image_id().ok_or_else(|| {
                    DispatchError::Spec("a verify run is started by its job".into())
                })?;
                let image = self
                    .store
                    .image(id)
                    .await?
                    .ok_or_else(|| DispatchError::NotFound(format!("image {id}")))?;
                // Fail now, before a run is recorded, when the image cannot be opened.
                self.image_ref(&image, None, agent_id).await?;
                (format!("image:{}", image.id), spec.title(&image.name))
            }
        };
        let host = self
            .store
            .agent(agent_id)
            .await?
            .ok_or_else(|| DispatchError::NotFound(format!("agent {agent_id}")))?
            .hostname;
        let open = self.store.open_runs(agent_id).await?;
        let limit = self.per_agent();
        if let Some(r) = open
            .iter()
            .filter(|r| r.state == RunState::Running)
            .nth(limit.saturating_sub(1))
        {
            return Err(DispatchError::Busy(
                host,
                format!(
                    "it runs {limit} job(s) at once, its limit, and has no slot free (the last to start: '{}', report {})",
                    r.name, r.id
                ),
            ));
        }
        let task = serde_json::to_string(spec).map_err(|e| DispatchError::Spec(e.to_string()))?;
        let mut change = self.store.change(by).await?;
        let run = change
            .create_task_run(
                None,
                agent_id,
                (
                    &title,
                    if matches!(spec, TaskSpec::Clone(_)) {
                        "clone"
                    } else {
                        "restore"
                    },
                ),
                &task,
                None,
            )
            .await?
            .ok_or_else(|| DispatchError::AlreadyRan(host.clone()))?;
        let action = match spec {
            TaskSpec::Files { .. } => "restore_files",
            TaskSpec::Volume { .. } => "restore_volume",
            TaskSpec::Verify => "verify_images",
            TaskSpec::Drill { .. } => "restore_drill",
            TaskSpec::Clone(_) => "clone_device",
        };
        change
            .commit(
                action,
                &format!("run:{}", run.id),
                &format!("{subject} on {host}: {task}"),
            )
            .await?;
        self.deliver(&run, false).await?;
        Ok(self.store.run(run.id).await?.unwrap_or(run))
    }

    /// Record a verify run of `job` on `agent_id` for the start `at` (once: a second
    /// record of the same start is refused by the store, and `None` is answered).
    pub async fn create_verify_run(
        &self,
        job: &crate::store::jobs::JobRow,
        agent_id: i64,
        at: i64,
    ) -> Result<Option<RunRow>, DispatchError> {
        let task = serde_json::to_string(&TaskSpec::Verify)
            .map_err(|e| DispatchError::Spec(e.to_string()))?;
        let mut change = self.store.change("scheduler").await?;
        let Some(run) = change
            .create_task_run(
                Some(job.id),
                agent_id,
                (&TaskSpec::Verify.title(&job.name), "verify"),
                &task,
                Some(at),
            )
            .await?
        else {
            return Ok(None);
        };
        change
            .commit(
                "verify_images",
                &format!("run:{}", run.id),
                &format!("job:{}", job.id),
            )
            .await?;
        Ok(Some(run))
    }

    /// Record a restore drill of `job` for the start `at`: its newest image not found
    /// damaged, on the plan's agent (default: the image's). `None` when the job has no
    /// image yet, or the start has a run already.
    pub async fn create_drill_run(
        &self,
        job: &crate::store::jobs::JobRow,
        plan: &super::spec::DrillPlan,
        at: i64,
    ) -> Result<Option<RunRow>, DispatchError> {
        let images = self.store.recent_job_images(job.id, 50).await?;
        let Some(image) = images.into_iter().find(|i| i.verified != Some(false)) else {
            return Ok(None);
        };
        let spec = TaskSpec::Drill {
            image_id: image.id,
            scratch: plan.scratch_dir.clone(),
        };
        let task = serde_json::to_string(&spec).map_err(|e| DispatchError::Spec(e.to_string()))?;
        let agent = plan.agent_id.unwrap_or(image.agent_id);
        let mut change = self.store.change("scheduler").await?;
        let Some(run) = change
            .create_task_run(
                Some(job.id),
                agent,
                (&spec.title(&image.name), "drill"),
                &task,
                Some(at),
            )
            .await?
        else {
            return Ok(None);
        };
        change
            .commit(
                "restore_drill",
                &format!("run:{}", run.id),
                &format!("job:{} image:{}", job.id, image.id),
            )
            .await?;
        Ok(Some(run))
    }

    /// The order of run `run`, whose stored task is `task`.
    pub(super) async fn task_order(
        &self,
        run: &RunRow,
        task: &str,
    ) -> Result<JobOrder, DispatchError> {
        let spec: TaskSpec = serde_json::from_str(task)
            .map_err(|e| DispatchError::Spec(format!("the run's task cannot be read: {e}")))?;
        if let TaskSpec::Clone(c) = spec {
            return Ok(task_order(run, Task::Clone(c)));
        }
        let Some(id) = spec.image_id() else {
            return self.verify_order(run).await;
        };
        let image = self
            .store
            .image(id)
            .await?
            .ok_or_else(|| DispatchError::NotFound(format!("image {id}")))?;
        let task = match spec {
            TaskSpec::Files {
                partition,
                paths,
                to,
                overwrite,
                ..
            } => Task::RestoreFiles(RestoreFilesTask {
                image: self.image_ref(&image, partition, run.agent_id).await?,
                paths,
                to,
                overwrite,
            }),
            TaskSpec::Volume {
                device, partition, ..
            } => Task::RestoreVolume(RestoreVolumeTask {
                image: self.image_ref(&image, None, run.agent_id).await?,
                device,
                partition,
            }),
            TaskSpec::Verify => return self.verify_order(run).await,
            TaskSpec::Clone(c) => Task::Clone(c),
            TaskSpec::Drill { scratch, .. } => Task::Drill(DrillTask {
                image: self.image_ref(&image, None, run.agent_id).await?,
                sample: super::image_files::written_by_run(&self.store, &image)
                    .await?
                    .map(|w| w.sample)
                    .unwrap_or_default(),
                scratch,
            }),
        };
        Ok(task_order(run, task))
    }

    /// The order of verify run `run`: its job's images on its agent that still exist, on
    /// the job's target, with the job's password.
    async fn verify_order(&self, run: &RunRow) -> Result<JobOrder, DispatchError> {
        let job_id = run
            .job_id
            .ok_or_else(|| DispatchError::NotFound("the verify run's job".into()))?;
        let job = self
            .store
            .job(job_id)
            .await?
            .ok_or_else(|| DispatchError::NotFound(format!("job {job_id}")))?;
        let spec = self.spec_of(&job).await?;
        let target = self
            .store
            .target(spec.target())
            .await?
            .ok_or_else(|| DispatchError::NotFound(format!("target {}", spec.target())))?;
        let images = self
            .store
            .job_images(job_id, run.agent_id)
            .await?
            .into_iter()
            .filter(|i| i.target_id == Some(target.id))
            .map(|i| i.name)
            .collect();
        let task = Task::Verify(VerifyTask {
            target: self.access(&target, run.agent_id).await?,
            password: self.unseal_job_secret(&job_context(job_id), job.secret.as_deref())?,
            images,
        });
        Ok(task_order(run, task))
    }
}

/// An order for `run` doing `task`, with nothing around it.
fn task_order(run: &RunRow, task: Task) -> JobOrder {
    {
        JobOrder {
            run_id: run.id,
            job_id: None,
            name: run.name.clone(),
            task,
            before: None,
            after: None,
            abort_on_error: true,
            delete_after: Vec::new(),
            after_job: AfterJob::None,
            notes: Vec::new(),
        }
    }
}
