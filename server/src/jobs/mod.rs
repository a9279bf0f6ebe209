//! Jobs at run time: turning a job into an order for an agent (file name from the
//! template, the base image of the chain, credentials opened from the vault), sending it
//! over the agent's channel, following its progress, and storing its report.

pub mod alerts;
pub mod image_files;
pub mod job_xml;
pub mod live;
pub mod notify;
pub mod report_xml;
pub mod retention;
pub mod schedule;
pub mod scheduler;
pub mod spec;
pub mod tasks;
pub mod template;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_proto::job::{ImageKind, ImageTask, JobOrder, RunReport, Secret, TargetAccess, Task};
use holdfast_proto::request::{
    Cancel, CheckJob, JobCheck, ListRuns, RunJob, TargetProbe, TestTarget,
};
use holdfast_proto::RunStatus;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::cluster::Cluster;
use crate::gateway::{Gateway, GatewayError};
use crate::store::jobs::{Finish, ImageRow, JobRow, NewImage, RunRow};
use crate::store::targets::TargetRow;
use crate::store::{RunState, Store, StoreError};
use crate::vault::{Vault, VaultError};
pub use live::LiveProgress;
use spec::{JobSpec, SiteBook};

/// How long an agent has to accept an order.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a check on an agent may take (a target that does not answer times out first).
const CHECK_TIMEOUT: Duration = Duration::from_secs(180);

/// Why a run could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Vault(#[from] VaultError),
    #[error("the job's definition is not valid: {0}")]
    Spec(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("this job already has a run on {0} for that time")]
    AlreadyRan(String),
    /// The agent (its host name) cannot take the run now, and why.
    #[error("{0} is busy: {1}")]
    Busy(String, String),
    #[error("{0}")]
    Gateway(#[from] GatewayError),
    /// What went wrong between the server and an agent, told about its host.
    #[error("{0}")]
    Agent(String),
}

/// Target credentials as sealed in the vault.
#[derive(Default, Serialize, Deserialize)]
pub struct TargetSecret {
    pub password: Option<Zeroizing<String>>,
    pub private_key: Option<Zeroizing<String>>,
    pub passphrase: Option<Zeroizing<String>>,
}

impl TargetSecret {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.password.is_none() && self.private_key.is_none() && self.passphrase.is_none()
    }
}

/// The vault context of a target's credentials.
pub fn target_context(id: i64) -> String {
    format!("target:{id}")
}

/// The vault context of a job's image password.
pub fn job_context(id: i64) -> String {
    format!("job:{id}")
}

/// The vault context of a job's LUKS passphrase: apart from its image password's, so that
/// one sealed value does not open as the other.
pub fn job_luks_context(id: i64) -> String {
    format!("job-luks:{id}")
}

/// Runs from order to report.
pub struct Dispatcher {
    pub store: Store,
    pub gateway: Arc<Gateway>,
    pub vault: Arc<Vault>,
    /// Runs an agent may have at once.
    per_agent: std::sync::atomic::AtomicUsize,
    live: live::Board,
    /// This server instance among the others on its store.
    pub cluster: Arc<Cluster>,
    /// Wakes the scheduler: runs were queued elsewhere (another instance) for agents that
    /// may be connected here.
    pub queue_changed: tokio::sync::Notify,
    /// Sites and their agents, read at most once a second (a fleet-wide start prepares
    /// thousands of orders at once).
    sites: tokio::sync::Mutex<Option<CachedSites>>,
}

/// Sites as read at `at`, when the store's sites epoch was `epoch`.
struct CachedSites {
    at: Instant,
    epoch: u64,
    book: Arc<SiteBook>,
}

/// How long cached sites are used when nothing on this server changed them (another
/// server instance on the same database may have).
const SITES_FRESH: Duration = Duration::from_secs(1);

/// Runs an agent has at once unless configured: imaging saturates a machine's disks.
pub const PER_AGENT: usize = 1;

impl Dispatcher {
    /// The dispatcher of the only server instance on `store`.
    pub fn new(store: Store, gateway: Arc<Gateway>, vault: Arc<Vault>) -> Self {
        Self::in_cluster(
            store,
            gateway,
            vault,
            Arc::new(Cluster::sole("this server")),
        )
    }

    /// The dispatcher of server instance `cluster`.
    pub fn in_cluster(
        store: Store,
        gateway: Arc<Gateway>,
        vault: Arc<Vault>,
        cluster: Arc<Cluster>,
    ) -> Self {
        Self {
            store,
            gateway,
            vault,
            per_agent: std::sync::atomic::AtomicUsize::new(PER_AGENT),
            live: live::Board::default(),
            cluster,
            queue_changed: tokio::sync::Notify::new(),
            sites: tokio::sync::Mutex::default(),
        }
    }

    /// Runs an agent may have at once.
    pub fn per_agent(&self) -> usize {
        self.per_agent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Set how many runs an agent may have at once (at least one).
    pub fn set_per_agent(&self, n: usize) {
        self.per_agent
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Sites with their agents (cached for a second, and until a change to them commits).
    pub async fn sites(&self) -> Result<Arc<SiteBook>, StoreError> {
        let mut cached = self.sites.lock().await;
        let epoch = self.store.sites_epoch();
        if let Some(c) = cached.as_ref() {
            if c.epoch == epoch && c.at.elapsed() < SITES_FRESH {
                return Ok(c.book.clone());
            }
        }
        let book = Arc::new(self.store.site_book().await?);
        *cached = Some(CachedSites {
            at: Instant::now(),
            epoch,
            book: book.clone(),
        });
        Ok(book)
    }

    /// The definition of `job` as it runs (site defaults and agents resolved).
    pub async fn spec_of(&self, job: &JobRow) -> Result<JobSpec, DispatchError> {
        let spec: JobSpec =
            serde_json::from_str(&job.spec).map_err(|e| DispatchError::Spec(e.to_string()))?;
        spec.resolve(&*self.sites().await?)
            .map_err(DispatchError::Spec)
    }

    /// The progress of run `id`, while it runs (here or on another instance).
    pub fn progress(&self, id: i64) -> Option<LiveProgress> {
        self.live.get(id)
    }

    /// Progress and ended runs followed here since the last call, to pass on.
    pub fn take_changes(&self) -> (Vec<crate::cluster::relay::Progress>, Vec<i64>) {
        self.live.take_changes()
    }

    /// Another instance's progress and ended runs.
    pub fn merge_remote(&self, progress: Vec<crate::cluster::relay::Progress>, ended: &[i64]) {
        self.live.merge_remote(progress, ended);
    }

    /// True when `run_id` is a running run of `agent_id` (known live, or found in the
    /// store after a server restart or a move from another instance); it is followed here
    /// from now on.
    async fn owns(&self, agent_id: i64, run_id: i64) -> bool {
        let known = match self.live.agent_of(run_id) {
            Some(a) => a == agent_id,
            None => matches!(
                self.store.run(run_id).await,
                Ok(Some(r)) if r.agent_id == agent_id && !r.finished()
            ),
        };
        if known {
            self.live.follow(run_id, agent_id);
        }
        known
    }

    /// Agent `agent_id`'s progress event for one of its runs.
    pub async fn on_progress(
        &self,
        agent_id: i64,
        run_id: i64,
        stage: String,
        done: u64,
        total: u64,
    ) {
        if self.owns(agent_id, run_id).await {
            self.live.progress(run_id, stage, done, total);
        }
    }

    /// Agent `agent_id`'s log line for one of its runs.
    pub async fn on_log(&self, agent_id: i64, run_id: i64, level: &str, text: &str) {
        if self.owns(agent_id, run_id).await {
            self.live.log(run_id, format!("{level}: {text}"));
        }
    }

    /// Start `job` on `agent_id` now, by hand: refused while the agent runs this job or
    /// is at its limit of runs; a run whose agent is offline ends at once, failed. The run is
    /// recorded with its audit entry naming `by`.
    pub async fn start(
        &self,
        job: &JobRow,
        agent_id: i64,
        by: &str,
    ) -> Result<RunRow, DispatchError> {
        let spec = self.spec_of(job).await?;
        let host = self
            .store
            .agent(agent_id)
            .await?
            .ok_or_else(|| DispatchError::NotFound(format!("agent {agent_id}")))?
            .hostname;
        let open = self.store.open_runs(agent_id).await?;
        if let Some(r) = open.iter().find(|r| r.job_id == Some(job.id)) {
            return Err(DispatchError::Busy(
                host,
                format!(
                    "job '{}' is already {} there (report {})",
                    job.name, r.state, r.id
                ),
            ));
        }
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
        self.store
            .target(spec.target())
            .await?
            .ok_or_else(|| DispatchError::NotFound(format!("target {}", spec.target())))?;
        let mut change = self.store.change(by).await?;
        let run = change
            .create_run(Some(job.id), agent_id, &job.name, "manual", None)
            .await?
            .ok_or_else(|| DispatchError::AlreadyRan(host.clone()))?;
        change
            .commit(
                "run_job",
                &format!("run:{}", run.id),
                &format!("job:{} on {host}", job.id),
            )
            .await?;
        self.deliver(&run, false).await?;
        Ok(self.store.run(run.id).await?.unwrap_or(run))
    }

    /// Send queued run `run` to its agent. When the agent is not connected the run goes
    /// back to the queue (`requeue`) or ends failed.
    pub async fn deliver(&self, run: &RunRow, requeue: bool) -> Result<(), DispatchError> {
        // An agent connected to another instance gets the run from that instance, told
        // to look at the queue now.
        if self.connected_elsewhere(run.agent_id).await.is_some() {
            self.cluster
                .tell(&crate::cluster::Note::Queued {
                    from: self.cluster.id.clone(),
                })
                .await;
            return Ok(());
        }
        if !self.store.claim_run(run.id).await? {
            return Ok(());
        }
        self.deliver_claimed(run, requeue).await
    }

    /// [`Dispatcher::deliver`] for a run already taken from the queue.
    pub async fn deliver_claimed(&self, run: &RunRow, requeue: bool) -> Result<(), DispatchError> {
        let order = match self.prepare(run).await {
            Ok(o) => o,
            Err(e) => {
                self.end_here(run, RunStatus::Failed, &e.to_string()).await;
                return Err(e);
            }
        };
        match self
            .gateway
            .request(
                run.agent_id,
                RunJob {
                    order: Box::new(order),
                },
                ACCEPT_TIMEOUT,
            )
            .await
        {
            Ok(_) => self.live.follow(run.id, run.agent_id),
            Err(GatewayError::Offline(_)) if requeue => self.store.requeue_run(run.id).await?,
            // The order may have reached the agent: its report will say, or the check of
            // its runs when it next connects ends the run.
            Err(e @ (GatewayError::Timeout(..) | GatewayError::Gone(_))) => {
                tracing::warn!(run = run.id, error = %e, "no answer to a job order; the run stays open");
            }
            Err(e) => {
                let why = format!(
                    "{}; the job did not run",
                    e.on(&self.host_name(run.agent_id).await)
                );
                self.end_here(run, RunStatus::Failed, &why).await;
            }
        }
        Ok(())
    }

    /// The order for `run`, from its job, agent and target as they are now.
    async fn prepare(&self, run: &RunRow) -> Result<JobOrder, DispatchError> {
        if let Some(task) = &run.task {
            return self.task_order(run, task).await;
        }
        let job_id = run
            .job_id
            .ok_or_else(|| DispatchError::NotFound("the run's job".into()))?;
        let job = self
            .store
            .job(job_id)
            .await?
            .ok_or_else(|| DispatchError::NotFound(format!("job {job_id}")))?;
        let spec = self.spec_of(&job).await?;
        let agent = self
            .store
            .agent(run.agent_id)
            .await?
            .ok_or_else(|| DispatchError::NotFound(format!("agent {}", run.agent_id)))?;
        let target = self
            .store
            .target(spec.target())
            .await?
            .ok_or_else(|| DispatchError::NotFound(format!("target {}", spec.target())))?;
        let at = chrono::DateTime::from_timestamp(run.scheduled_for.unwrap_or(run.created_at), 0)
            .unwrap_or_default();
        let vars = template::Vars {
            computer: &agent.hostname,
            user: "root",
            at,
            run_id: Some(run.id),
        };
        let inventory = agent
            .inventory
            .as_deref()
            .and_then(|t| serde_json::from_str::<holdfast_proto::Inventory>(t).ok());
        self.order(&job, &spec, &target, run, &vars, inventory.as_ref())
            .await
    }

    /// Everything the agent needs for this run on a machine whose inventory is `inventory`.
    async fn order(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        target: &TargetRow,
        run: &RunRow,
        vars: &template::Vars<'_, chrono::Utc>,
        inventory: Option<&holdfast_proto::Inventory>,
    ) -> Result<JobOrder, DispatchError> {
        let sources = spec.sources_on(inventory).map_err(DispatchError::Spec)?;
        let name = template::image_name(&spec.folder, &spec.name_template, vars)
            .map_err(DispatchError::Spec)?;
        let images = self.store.job_images(job.id, run.agent_id).await?;
        let object_lock = match &spec.immutability {
            Some(i) => {
                // Checked when the job is saved too; the target's URL may have changed since.
                if let Some(why) = not_lockable(target) {
                    return Err(DispatchError::Spec(why));
                }
                Some(holdfast_proto::job::ObjectLockOrder {
                    mode: i.mode,
                    seconds: u64::from(i.lock_days(spec.retention.as_ref())) * 86_400,
                })
            }
            None => None,
        };
        let access = self.access(target, run.agent_id).await?;
        let password = self.unseal_job_secret(&job_context(job.id), job.secret.as_deref())?;
        if spec.encryption.is_some() && password.is_none() {
            return Err(DispatchError::Spec(
                "the job encrypts but has no password set".into(),
            ));
        }
        let luks_passphrase =
            self.unseal_job_secret(&job_luks_context(job.id), job.luks_secret.as_deref())?;
        // The volume's contents travel decrypted: only into an encrypted image.
        if luks_passphrase.is_some() && spec.encryption.is_none() {
            return Err(DispatchError::Spec(
                "the job has a LUKS passphrase but does not encrypt its images".into(),
            ));
        }
        let shared = Shared {
            access,
            password,
            luks_passphrase,
            object_lock,
        };
        let several = sources.len() > 1;
        let mut notes = Vec::new();
        let mut planned = Vec::new();
        for source in &sources {
            let mine = images_of_source(spec, &images, source);
            let name = if several {
                template::source_name(&name, source)
            } else {
                name.clone()
            };
            let SourcePlan {
                name,
                method,
                base,
                delete_after,
                notes: why,
            } = plan_source(spec, &mine, &name, run.id);
            notes.extend(why.into_iter().map(
                |n| {
                    if several {
                        format!("{source}: {n}")
                    } else {
                        n
                    }
                },
            ));
            let task = shared.task(spec, source, name, method, base);
            planned.push(holdfast_proto::job::SourceImage {
                image: task,
                delete_after,
            });
        }
        let (task, delete_after) = match <[_; 1]>::try_from(planned) {
            Ok([one]) => (Task::Image(one.image), one.delete_after),
            Err(all) => {
                notes.push(format!(
                    "{} sources, imaged one after another into one report (its steps say how each was held): {}",
                    all.len(),
                    sources.join(", ")
                ));
                (Task::Images { sources: all }, Vec::new())
            }
        };
        Ok(JobOrder {
            run_id: run.id,
            job_id: Some(job.id),
            name: job.name.clone(),
            task,
            before: spec.before.as_ref().map(spec::Hook::order),
            after: spec.after.as_ref().map(spec::Hook::order),
            abort_on_error: spec.abort_on_error,
            delete_after,
            after_job: spec.after_job,
            notes,
        })
    }

    /// A job's secret sealed under `context`, opened for its order.
    pub(crate) fn unseal_job_secret(
        &self,
        context: &str,
        sealed: Option<&str>,
    ) -> Result<Option<Secret>, DispatchError> {
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let plain = self.vault.unseal(context, sealed)?;
        Ok(Some(Secret::new(
            String::from_utf8_lossy(&plain).into_owned(),
        )))
    }

    /// How an agent reaches `target`: its URL, its credentials opened from the vault and,
    /// for SFTP, the host key an admin confirmed (without one, nothing goes there).
    pub async fn access(
        &self,
        target: &TargetRow,
        agent_id: i64,
    ) -> Result<TargetAccess, DispatchError> {
        if target.host_key.is_none() && target.url.starts_with("sftp://") {
            return Err(DispatchError::Spec(format!(
                "the host key of SFTP target '{}' has not been confirmed: test the target on its page and confirm the key it shows",
                target.name
            )));
        }
        self.access_unpinned(target, agent_id).await
    }

    /// [`Dispatcher::access`] also for an SFTP target whose key is not confirmed yet (a
    /// connection test, which then only reads the key offered).
    async fn access_unpinned(
        &self,
        target: &TargetRow,
        agent_id: i64,
    ) -> Result<TargetAccess, DispatchError> {
        let agent_bandwidth = match self.store.agent(agent_id).await? {
            Some(a) => a.bandwidth,
            None => return Err(DispatchError::NotFound(format!("agent {agent_id}"))),
        };
        let secret: TargetSecret = match &target.secret {
            Some(sealed) => {
                let plain = self.vault.unseal(&target_context(target.id), sealed)?;
                serde_json::from_slice(&plain).map_err(|_| VaultError::Sealed)?
            }
            None => TargetSecret::default(),
        };
        let reveal = |s: &Option<Zeroizing<String>>| s.as_ref().map(|v| Secret::new(v.as_str()));
        Ok(TargetAccess {
            url: target.url.clone(),
            user: target.username.clone(),
            password: reveal(&secret.password),
            private_key: reveal(&secret.private_key),
            passphrase: reveal(&secret.passphrase),
            ca_pem: target.ca_pem.clone(),
            host_key: target.host_key.clone(),
            bandwidth: target.bandwidth.clone(),
            agent_bandwidth,
        })
    }

    /// "Test connection": agent `agent_id` writes, reads back and deletes a test file on
    /// `target`; what it found.
    pub async fn test_target(
        &self,
        target: &TargetRow,
        agent_id: i64,
    ) -> Result<TargetProbe, DispatchError> {
        let access = self.access_unpinned(target, agent_id).await?;
        match self
            .gateway
            .request(
                agent_id,
                TestTarget {
                    target: Box::new(access),
                },
                CHECK_TIMEOUT,
            )
            .await
        {
            Ok(probe) => Ok(probe),
            Err(e) => Err(self.on_host(agent_id, e).await),
        }
    }

    /// "Check job": agent `agent_id` verifies it could run `job` now (source, target,
    /// space, base image), changing nothing; its list of checks.
    pub async fn check(&self, job: &JobRow, agent_id: i64) -> Result<JobCheck, DispatchError> {
        let probe = RunRow {
            id: 0,
            job_id: Some(job.id),
            agent_id,
            name: job.name.clone(),
            cause: "check".into(),
            scheduled_for: None,
            state: RunState::Queued,
            created_at: crate::store::now(),
            started_at: None,
            ended_at: None,
            bytes_read: 0,
            bytes_written: 0,
            report: None,
            task: None,
        };
        let order = self.prepare(&probe).await?;
        let order = CheckJob {
            order: Box::new(order),
        };
        match self.gateway.request(agent_id, order, CHECK_TIMEOUT).await {
            Ok(checks) => Ok(checks),
            Err(e) => Err(self.on_host(agent_id, e).await),
        }
    }

    /// Agent `agent_id`'s host name, for messages (`agent N` when it cannot be read).
    pub async fn host_name(&self, agent_id: i64) -> String {
        match self.store.agent(agent_id).await {
            Ok(Some(a)) if !a.hostname.is_empty() => a.hostname,
            _ => format!("agent {agent_id}"),
        }
    }

    /// Gateway error `e` told about agent `agent_id`'s host.
    pub(crate) async fn on_host(&self, agent_id: i64, e: GatewayError) -> DispatchError {
        let host = self.host_name(agent_id).await;
        if matches!(e, GatewayError::Offline(_)) {
            if let Some(other) = self.connected_elsewhere(agent_id).await {
                return DispatchError::Agent(format!(
                    "{host} is connected to the server instance {other}, not to this one: ask through that instance (its console or API)"
                ));
            }
        }
        DispatchError::Agent(e.on(&host))
    }

    /// The name of the other server instance agent `agent_id` is connected to, when it is
    /// not connected here.
    pub async fn connected_elsewhere(&self, agent_id: i64) -> Option<String> {
        if self.gateway.is_online(agent_id) {
            return None;
        }
        let agent = self.store.agent(agent_id).await.ok()??;
        self.cluster.elsewhere(&agent)
    }

    /// End a run that no agent ran, with a one-step report saying why.
    pub async fn end_here(&self, run: &RunRow, status: RunStatus, why: &str) {
        let now = crate::store::now();
        let host = self.host_name(run.agent_id).await;
        let report = RunReport {
            run_id: run.id,
            job_id: run.job_id,
            name: run.name.clone(),
            host,
            status,
            started_at: now,
            ended_at: now,
            bytes_read: 0,
            bytes_written: 0,
            images: Vec::new(),
            deleted: Vec::new(),
            checked: Vec::new(),
            drill: None,
            steps: vec![holdfast_proto::job::Step {
                at: now,
                status: holdfast_proto::job::StepStatus::Error,
                title: "Not started".into(),
                detail: why.to_owned(),
            }],
        };
        let text = serde_json::to_string(&report).unwrap_or_default();
        match self
            .store
            .run_ended_here(run.id, status.into(), &text)
            .await
        {
            Ok(true) => self.ended(run.id).await,
            Ok(false) => {}
            Err(e) => tracing::error!(run = run.id, error = %e, "cannot record the end of a run"),
        }
        self.live.end(run.id);
    }

    /// Agent `agent_id` just connected: runs the store has running there that the agent
    /// does not know (it never got the order, or lost its state) end as failed. Runs handed
    /// out after `asked_at` are left alone (their order may be on its way).
    pub async fn reconcile(&self, agent_id: i64, asked_at: i64) {
        let known: std::collections::HashSet<i64> = match self
            .gateway
            .request(agent_id, ListRuns {}, ACCEPT_TIMEOUT)
            .await
        {
            Ok(list) => list.runs.into_iter().collect(),
            Err(e) => {
                tracing::debug!(agent = agent_id, error = %e, "cannot ask the agent for its runs");
                return;
            }
        };
        let open = match self.store.open_runs(agent_id).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "cannot read open runs");
                return;
            }
        };
        for run in open {
            if run.state == RunState::Running
                && run.started_at.is_some_and(|t| t < asked_at)
                && !known.contains(&run.id)
            {
                tracing::warn!(
                    run = run.id,
                    agent = agent_id,
                    "the agent does not know a running run"
                );
                self.end_here(
                    &run,
                    RunStatus::Failed,
                    &format!(
                        "{} does not know this run: it never received the order, or lost its state",
                        self.host_name(agent_id).await
                    ),
                )
                .await;
            }
        }
    }

    /// A run ended: mail its report if its job asks for that.
    async fn ended(&self, run_id: i64) {
        if let Err(e) = notify::run_ended(self, run_id).await {
            tracing::error!(run = run_id, error = %e, "cannot queue the report mail");
        }
    }

    /// Ask the agent to cancel run `run`.
    /// An agent connected to another instance is asked through that instance (a note:
    /// the run's report says whether it was cancelled).
    pub async fn cancel(&self, run: &RunRow) -> Result<(), DispatchError> {
        if self.connected_elsewhere(run.agent_id).await.is_some() {
            let note = crate::cluster::Note::Cancel {
                from: self.cluster.id.clone(),
                agent: run.agent_id,
                run: run.id,
            };
            self.cluster.tell(&note).await;
            return Ok(());
        }
        self.cancel_here(run.agent_id, run.id).await
    }

    /// Ask agent `agent_id`, connected here, to cancel run `run_id`.
    pub async fn cancel_here(&self, agent_id: i64, run_id: i64) -> Result<(), DispatchError> {
        match self
            .gateway
            .request(agent_id, Cancel { run_id }, ACCEPT_TIMEOUT)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.on_host(agent_id, e).await),
        }
    }

    /// Store a report from agent `agent_id`. True when the agent may forget it (stored now
    /// or before); a report for another agent's run is refused and logged.
    pub async fn on_report(&self, agent_id: i64, report: &RunReport) -> bool {
        let run = match self.store.run(report.run_id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::warn!(
                    agent = agent_id,
                    run = report.run_id,
                    "report for an unknown run dropped"
                );
                return true;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read a run");
                return false;
            }
        };
        if run.agent_id != agent_id {
            tracing::warn!(
                agent = agent_id,
                run = run.id,
                owner = run.agent_id,
                "an agent sent a report for another agent's run; ignored"
            );
            return true;
        }
        // Images of a job with one source are that source's (none: whatever the agent
        // called it); of a job with several, the source each was ordered for.
        let several = match run.job_id {
            Some(id) => match self.store.job(id).await {
                Ok(Some(job)) => self.spec_of(&job).await.is_ok_and(|s| s.several_sources()),
                _ => false,
            },
            None => false,
        };
        let text = serde_json::to_string(report).unwrap_or_default();
        let finish = Finish {
            run_id: run.id,
            state: report.status.into(),
            started_at: report.started_at,
            ended_at: report.ended_at,
            bytes_read: i64::try_from(report.bytes_read).unwrap_or(i64::MAX),
            bytes_written: i64::try_from(report.bytes_written).unwrap_or(i64::MAX),
            report: &text,
            images: report
                .images
                .iter()
                .map(|i| NewImage {
                    name: &i.name,
                    method: i.method.as_str(),
                    base_name: i.base.as_deref(),
                    image_id: &i.image_id,
                    bytes: i64::try_from(i.bytes).unwrap_or(i64::MAX),
                    verified: i.verified,
                    source: Some(i.source.as_str()).filter(|s| several && !s.is_empty()),
                })
                .collect(),
        };
        match self.store.finish_run(&finish).await {
            Ok(stored) => {
                if stored {
                    if let Err(e) = self
                        .store
                        .mark_images_deleted(agent_id, run.job_id, &report.deleted)
                        .await
                    {
                        tracing::error!(run = run.id, error = %e, "cannot record deleted images");
                    }
                    if let Err(e) = self.record_checks(&run, report).await {
                        tracing::error!(run = run.id, error = %e, "cannot record what a verify run found");
                    }
                    if let Some(job_id) = run.job_id {
                        // The target as the job runs: its own, or its site's.
                        if let Ok(Some(job)) = self.store.job(job_id).await {
                            if let Ok(spec) = self.spec_of(&job).await {
                                let _ = self.store.set_images_target(run.id, spec.target()).await;
                            }
                        }
                    }
                    tracing::info!(
                        run = run.id,
                        agent = agent_id,
                        status = report.status.as_str(),
                        "run finished"
                    );
                    self.ended(run.id).await;
                }
                self.live.end(run.id);
                true
            }
            Err(e) => {
                tracing::error!(run = run.id, error = %e, "cannot store a report");
                false
            }
        }
    }
}

impl Dispatcher {
    /// Mark the images a verify run checked as sound or damaged, and mail the damage.
    async fn record_checks(&self, run: &RunRow, report: &RunReport) -> Result<(), StoreError> {
        use holdfast_proto::job::ImageHealth;
        let Some(job_id) = run.job_id else {
            return Ok(());
        };
        if report.checked.is_empty() {
            return Ok(());
        }
        let mut change = self.store.change("verify").await?;
        let mut damaged = Vec::new();
        for c in &report.checked {
            let sound = match c.health {
                ImageHealth::Sound => true,
                ImageHealth::Damaged => false,
                ImageHealth::Unchecked => continue,
            };
            change
                .set_image_verified(job_id, run.agent_id, &c.name, sound)
                .await?;
            if !sound {
                damaged.push((c.name.clone(), c.detail.clone()));
            }
        }
        change
            .commit(
                "images_verified",
                &format!("run:{}", run.id),
                &format!(
                    "{} checked, {} damaged",
                    report.checked.len(),
                    damaged.len()
                ),
            )
            .await?;
        if !damaged.is_empty() {
            if let Some(job) = self.store.job(job_id).await? {
                let host = self.host_name(run.agent_id).await;
                alerts::damaged_images(self, &job, &host, run.id, &damaged).await?;
            }
        }
        Ok(())
    }
}

/// What every image of a run shares: where it goes, its secrets and its lock.
struct Shared {
    access: TargetAccess,
    password: Option<Secret>,
    luks_passphrase: Option<Secret>,
    object_lock: Option<holdfast_proto::job::ObjectLockOrder>,
}

impl Shared {
    /// The image task of `source`: image `name`, `method` on `base`, the job's options.
    fn task(
        &self,
        spec: &JobSpec,
        source: &str,
        name: String,
        method: ImageKind,
        base: Option<String>,
    ) -> ImageTask {
        let command = |c: &Option<String>| c.clone().filter(|c| !c.trim().is_empty());
        ImageTask {
            source: source.to_owned(),
            target: self.access.clone(),
            name,
            method,
            base,
            compression_level: spec.compression_level,
            encryption: spec.encryption.clone(),
            password: self.password.clone(),
            luks_passphrase: self.luks_passphrase.clone(),
            split_size: spec.split_size,
            verify: spec.verify,
            overwrite: spec.overwrite,
            keep_windows_system_files: spec.keep_windows_system_files,
            sample_files: spec.drill.is_some(),
            comment: spec.comment.clone(),
            consistency: spec.consistency,
            max_freeze_secs: spec.max_freeze_secs,
            snapshot_percent: spec.snapshot_percent,
            before_snapshot: command(&spec.before_snapshot),
            after_snapshot: command(&spec.after_snapshot),
            snapshot_command_timeout_secs: spec.snapshot_command_timeout_seconds,
            change_tracking: spec.change_tracking,
            full_hash_every: spec.full_hash_every,
            keep_thin_snapshot: spec.keep_thin_snapshot,
            object_lock: self.object_lock,
        }
    }
}

/// The images of `source` among a job's: each source has its own chains. Images recorded
/// without a source (those of a job with one source, and those stored before jobs named
/// several) belong to the job's first source.
fn images_of_source(spec: &JobSpec, images: &[ImageRow], source: &str) -> Vec<ImageRow> {
    let first = spec.first_source();
    images
        .iter()
        .filter(|i| i.source.as_deref().or(first) == Some(source))
        .cloned()
        .collect()
}

/// The next image of one source of a job, from that source's images on the agent.
struct SourcePlan {
    name: String,
    method: ImageKind,
    base: Option<String>,
    delete_after: Vec<String>,
    /// Why it starts a new chain, when it does.
    notes: Vec<String>,
}

fn plan_source(spec: &JobSpec, images: &[ImageRow], name: &str, run_id: i64) -> SourcePlan {
    let taken: Vec<&str> = images
        .iter()
        .filter(|i| i.deleted_at.is_none())
        .map(|i| i.name.as_str())
        .collect();
    let name = template::unique_name(name.to_owned(), run_id, &taken);
    let (mut head, mut full) = chain_bases(images, spec.target());
    let mut notes = Vec::new();
    // A chain that reached its length is closed: the next image starts a new one.
    if let (Some(limit), Some(h)) = (spec.chain_length, head) {
        if chain_len(images, h) >= limit as usize {
            (head, full) = (None, None);
            notes.push(format!(
                "a new chain starts with a full image: the chain reached its length of {limit} images"
            ));
        }
    }
    // On immutable storage a chain is closed by age, so whole chains can expire.
    if let (Some(i), Some(f), Some(_)) = (&spec.immutability, full, head) {
        if let Some(note) = chain_aged_out(images, f, i.new_chain_after_days, crate::store::now()) {
            (head, full) = (None, None);
            notes.push(note);
        }
    }
    let (method, base) = spec.next_method(head, full);
    if method == ImageKind::Full && spec.method != spec::ChainMode::Full {
        notes.extend(damaged_base(images, spec.target()));
    }
    let delete_after = spec
        .retention
        .as_ref()
        .map(|rule| {
            retention::expired(
                images,
                spec.target(),
                method == ImageKind::Full,
                rule,
                crate::store::now(),
            )
        })
        .unwrap_or_default();
    SourcePlan {
        name,
        method,
        base,
        delete_after,
        notes,
    }
}

/// How many images the chain ending in `head` has, back to its full image.
pub fn chain_len(images: &[ImageRow], head: &str) -> usize {
    let by_name: HashMap<&str, &ImageRow> = images.iter().map(|i| (i.name.as_str(), i)).collect();
    let mut n = 0;
    let mut cur = by_name.get(head).copied();
    while let Some(img) = cur {
        n += 1;
        if n > images.len() {
            break;
        }
        cur = img
            .base_name
            .as_deref()
            .and_then(|b| by_name.get(b).copied());
    }
    n
}

/// Why a job with immutability cannot write to `target`: only S3 targets lock images.
pub fn not_lockable(target: &TargetRow) -> Option<String> {
    use holdfast_targets::location::Location;
    (!matches!(Location::parse(&target.url), Ok(Location::S3(_)))).then(|| {
        format!(
            "immutability needs an s3:// target with Object Lock; target '{}' is not one (make other storage immutable on the server itself, see docs/jobs.md)",
            target.name
        )
    })
}

/// Why a chain on immutable storage whose full image is `full` ends at `now`: its full
/// image is `days` days old or more (so whole chains, locks and all, can expire).
pub fn chain_aged_out(images: &[ImageRow], full: &str, days: u32, now: i64) -> Option<String> {
    let made = images.iter().find(|i| i.name == full)?.created_at;
    (now - made >= i64::from(days) * 86_400).then(|| {
        format!(
            "a new chain starts with a full image: on immutable storage a chain is closed after {days} days, so that its images' locks can end together"
        )
    })
}

/// Why a chain job's next image is a full one when the newest chain on `target_id` had
/// an image found damaged (after writing, or by a verify run): the sentence its report
/// carries.
pub fn damaged_base(images: &[ImageRow], target_id: i64) -> Option<String> {
    let newest = images
        .iter()
        .rev()
        .find(|i| i.target_id == Some(target_id))?;
    let by_name: HashMap<&str, &ImageRow> = images
        .iter()
        .filter(|i| i.target_id == Some(target_id))
        .map(|i| (i.name.as_str(), i))
        .collect();
    let mut cur = Some(newest);
    for _ in 0..=images.len() {
        let img = cur?;
        if img.verified == Some(false) {
            return Some(format!(
                "a new chain starts with a full image: image '{}' of the previous chain was found damaged, and nothing is built on a damaged image",
                img.name
            ));
        }
        cur = img
            .base_name
            .as_deref()
            .and_then(|b| by_name.get(b).copied());
    }
    None
}

/// The bases a new image of a chain may use, from the job's images on one agent: the
/// newest image (for an increment) and the newest full (for a differential), on
/// `target_id`, each only when its whole chain back to the full is there and none of it
/// failed validation. Otherwise the next run starts a new chain with a full image.
pub fn chain_bases(images: &[ImageRow], target_id: i64) -> (Option<&str>, Option<&str>) {
    let on_target: Vec<&ImageRow> = images
        .iter()
        .filter(|i| i.target_id == Some(target_id))
        .collect();
    let by_name: HashMap<&str, &ImageRow> =
        on_target.iter().map(|i| (i.name.as_str(), *i)).collect();
    let sound = |img: &ImageRow| {
        let mut cur = img;
        // Each step goes to an older image: a chain is never longer than the list.
        for _ in 0..=on_target.len() {
            if cur.verified == Some(false) {
                return false;
            }
            match cur.base_name.as_deref() {
                None => return cur.method == "full",
                Some(b) => match by_name.get(b) {
                    Some(next) => cur = next,
                    None => return false,
                },
            }
        }
        false
    };
    let head = on_target
        .last()
        .filter(|i| sound(i))
        .map(|i| i.name.as_str());
    let full = on_target
        .iter()
        .rev()
        .find(|i| i.method == "full" && sound(i))
        .map(|i| i.name.as_str());
    (head, full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(
        id: i64,
        name: &str,
        method: &str,
        base: Option<&str>,
        verified: Option<bool>,
    ) -> ImageRow {
        ImageRow {
            id,
            run_id: id,
            job_id: Some(1),
            agent_id: 1,
            target_id: Some(7),
            name: name.into(),
            method: method.into(),
            base_name: base.map(str::to_owned),
            image_id: String::new(),
            bytes: 1,
            verified,
            created_at: id,
            deleted_at: None,
            source: None,
        }
    }

    #[test]
    fn each_source_has_its_own_images_and_unrecorded_ones_are_the_first_sources() {
        let spec = |v: serde_json::Value| -> JobSpec {
            let mut base = serde_json::json!({"agents": [1], "target_id": 7});
            for (k, x) in v.as_object().expect("object") {
                base[k] = x.clone();
            }
            serde_json::from_value(base).expect("spec")
        };
        let of = |source: Option<&str>, id: i64| ImageRow {
            source: source.map(str::to_owned),
            ..img(id, &format!("i{id}"), "full", None, None)
        };
        let images = [
            of(None, 1),
            of(Some("/dev/sda"), 2),
            of(Some("/dev/sdb"), 3),
        ];
        let names = |spec: &JobSpec, source: &str| -> Vec<String> {
            images_of_source(spec, &images, source)
                .into_iter()
                .map(|i| i.name)
                .collect()
        };
        // One source, named either way: its images recorded without a source are its own.
        for one in [
            serde_json::json!({"source": "/dev/sda"}),
            serde_json::json!({"sources": ["/dev/sda"]}),
        ] {
            assert_eq!(names(&spec(one), "/dev/sda"), ["i1", "i2"]);
        }
        let two = spec(serde_json::json!({"sources": ["/dev/sda", "/dev/sdb"]}));
        assert_eq!(names(&two, "/dev/sda"), ["i1", "i2"]);
        assert_eq!(names(&two, "/dev/sdb"), ["i3"]);
        // All disks: only what was recorded for each disk.
        let all = spec(serde_json::json!({"all_disks": {}}));
        assert_eq!(names(&all, "/dev/sda"), ["i2"]);
    }

    #[test]
    fn chains_grow_on_sound_images_only() {
        assert_eq!(chain_bases(&[], 7), (None, None));
        let a = img(1, "a", "full", None, Some(true));
        let b = img(2, "b", "incremental", Some("a"), None);
        assert_eq!(
            chain_bases(&[a.clone(), b.clone()], 7),
            (Some("b"), Some("a"))
        );
        // Another target: a new chain.
        assert_eq!(chain_bases(&[a.clone(), b.clone()], 8), (None, None));
        // The newest failed validation: no base.
        let c = img(3, "c", "incremental", Some("b"), Some(false));
        assert_eq!(
            chain_bases(&[a.clone(), b.clone(), c], 7),
            (None, Some("a"))
        );
        // A damaged image inside the chain spoils every image after it.
        let bad_b = img(2, "b", "incremental", Some("a"), Some(false));
        let d = img(4, "d", "incremental", Some("b"), Some(true));
        assert_eq!(chain_bases(&[a.clone(), bad_b, d], 7), (None, Some("a")));
        // A missing link (deleted image) too.
        let e = img(5, "e", "incremental", Some("gone"), None);
        assert_eq!(chain_bases(&[a, e], 7), (None, Some("a")));
    }

    #[test]
    fn chains_on_immutable_storage_close_when_their_full_image_is_old_enough() {
        const DAY: i64 = 86_400;
        let mut a = img(1, "a", "full", None, Some(true));
        a.created_at = 100 * DAY;
        let b = img(2, "b", "incremental", Some("a"), None);
        let images = [a, b];
        assert_eq!(chain_aged_out(&images, "a", 7, 107 * DAY - 1), None);
        let note = chain_aged_out(&images, "a", 7, 107 * DAY).expect("closed at 7 days");
        assert!(note.contains("closed after 7 days"), "{note}");
        assert!(chain_aged_out(&images, "a", 1, 101 * DAY).is_some());
        // A full image not among the job's images: nothing to judge by.
        assert_eq!(chain_aged_out(&images, "gone", 1, 1000 * DAY), None);
    }
}
