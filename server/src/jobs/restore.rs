//! Restore runs: files of an image point copied back onto a machine, or an image point
//! written over a device, on a chosen agent. A restore is a run like a job's (queued,
//! delivered, cancelled, reported), recorded with what it does instead of a job; its
//! secrets (the target's credentials, the image password of the job that wrote the image)
//! are opened from the vault only when its order is made.

use holdfast_proto::job::{AfterJob, JobOrder, RestoreFilesTask, RestoreVolumeTask, Task};
use serde::{Deserialize, Serialize};

use super::{DispatchError, Dispatcher};
use crate::store::jobs::RunRow;
use crate::store::RunState;

/// What a restore run does, as stored with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RestoreSpec {
    /// Paths of image `image_id` into the folder `to` (none: back where they were).
    Files {
        image_id: i64,
        partition: Option<u32>,
        paths: Vec<String>,
        to: Option<String>,
        overwrite: bool,
    },
    /// Image `image_id` over `device`.
    Volume { image_id: i64, device: String },
}

impl RestoreSpec {
    fn image_id(&self) -> i64 {
        match self {
            Self::Files { image_id, .. } | Self::Volume { image_id, .. } => *image_id,
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
        }
    }
}

impl Dispatcher {
    /// Start `spec` on `agent_id` now: refused when the agent is at its limit of runs; the
    /// run is recorded with its audit entry naming `by`, then sent (an offline agent's run
    /// ends at once, failed).
    pub async fn restore(
        &self,
        spec: &RestoreSpec,
        agent_id: i64,
        by: &str,
    ) -> Result<RunRow, DispatchError> {
        let image = self
            .store
            .image(spec.image_id())
            .await?
            .ok_or_else(|| DispatchError::NotFound(format!("image {}", spec.image_id())))?;
        // Fail now, before a run is recorded, when the image cannot be opened.
        self.image_ref(&image, None).await?;
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
            .create_task_run(agent_id, &spec.title(&image.name), &task)
            .await?;
        let action = match spec {
            RestoreSpec::Files { .. } => "restore_files",
            RestoreSpec::Volume { .. } => "restore_volume",
        };
        change
            .commit(
                action,
                &format!("run:{}", run.id),
                &format!("image:{} on {host}: {task}", image.id),
            )
            .await?;
        self.deliver(&run, false).await?;
        Ok(self.store.run(run.id).await?.unwrap_or(run))
    }

    /// The order of restore run `run`, whose stored task is `task`.
    pub(super) async fn restore_order(
        &self,
        run: &RunRow,
        task: &str,
    ) -> Result<JobOrder, DispatchError> {
        let spec: RestoreSpec = serde_json::from_str(task)
            .map_err(|e| DispatchError::Spec(format!("the restore cannot be read: {e}")))?;
        let image = self
            .store
            .image(spec.image_id())
            .await?
            .ok_or_else(|| DispatchError::NotFound(format!("image {}", spec.image_id())))?;
        let task = match spec {
            RestoreSpec::Files {
                partition,
                paths,
                to,
                overwrite,
                ..
            } => Task::RestoreFiles(RestoreFilesTask {
                image: self.image_ref(&image, partition).await?,
                paths,
                to,
                overwrite,
            }),
            RestoreSpec::Volume { device, .. } => Task::RestoreVolume(RestoreVolumeTask {
                image: self.image_ref(&image, None).await?,
                device,
            }),
        };
        Ok(JobOrder {
            run_id: run.id,
            job_id: None,
            name: run.name.clone(),
            task,
            before: None,
            after: None,
            abort_on_error: true,
            delete_after: Vec::new(),
            after_job: AfterJob::None,
        })
    }
}
