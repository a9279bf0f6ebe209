//! The scheduler: every tick it records the runs of every start that fell due (one per
//! job, agent and start time — the store refuses a second, so a restart never runs a start
//! twice), then hands queued runs to agents that are connected and free: one run per job at
//! a time, at most `per_agent` runs per agent. A run whose agent stays away past the
//! schedule's time frame ends as missed.
//!
//! Several instances on one PostgreSQL store each hand out runs to the agents connected
//! to them; recording starts and ending missed runs is the leader's (see
//! [`crate::cluster::leader`]). The leader records how far it got in the store, so the
//! next leader (or this one after a restart) goes on from there: no start lost in
//! between, and none recorded twice (the store refuses a second).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::spec::JobSpec;
use super::Dispatcher;
use crate::store::jobs::JobRow;

/// How often the scheduler looks.
pub const TICK: Duration = Duration::from_secs(1);
/// How far back a starting server looks for starts it may have slept through.
const LOOK_BACK: i64 = 24 * 3600;
/// Starts recorded per job and tick at most (a per-second cron after a long stop).
const STARTS_PER_TICK: usize = 50;
/// How long a manual run waits for its agent before it counts as missed.
const MANUAL_FRAME: i64 = 24 * 3600;
/// The setting that says through when starts are recorded (Unix seconds).
const RECORDED_THROUGH: &str = "scheduler.recorded_through";
/// How often that setting is written. A next leader looks again at up to this much that
/// was recorded already; the store refuses those starts a second time.
const RECORD_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// What a job's schedule starts.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Image,
    Verify,
    Drill,
}

/// Run the scheduler until the task is dropped.
pub fn spawn(jobs: Arc<Dispatcher>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Through when starts are recorded, while this instance leads.
        let mut since: Option<DateTime<Utc>> = None;
        let mut written: Option<std::time::Instant> = None;
        loop {
            let now = Utc::now();
            let mut wake = now + chrono::Duration::from_std(TICK).unwrap_or_default();
            let from = if jobs.cluster.leadership.leading().await.is_some() {
                match since {
                    Some(s) => Some(s),
                    None => Some(recorded_through(&jobs, now).await),
                }
            } else {
                None
            };
            match look(&jobs, from, now).await {
                Ok(next) => {
                    if from.is_some() {
                        since = Some(now);
                        if written.is_none_or(|w| w.elapsed() >= RECORD_EVERY) {
                            let through = now.timestamp().to_string();
                            match jobs
                                .store
                                .set_setting(RECORDED_THROUGH, &through, None)
                                .await
                            {
                                Ok(()) => written = Some(std::time::Instant::now()),
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot record how far the schedules were looked at")
                                }
                            }
                        }
                    } else {
                        since = None;
                        written = None;
                    }
                    // Wake at the next start itself, not up to a tick after it.
                    if let Some(n) = next.filter(|n| *n < wake) {
                        wake = n;
                    }
                }
                Err(e) => tracing::error!(error = %e, "scheduler tick failed"),
            }
            let pause = (wake - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = jobs.queue_changed.notified() => {}
            }
        }
    })
}

/// Where a leader that just took over (or started) goes on recording starts: where the
/// last leader got to, at most [`LOOK_BACK`] ago.
async fn recorded_through(jobs: &Dispatcher, now: DateTime<Utc>) -> DateTime<Utc> {
    let earliest = now - chrono::Duration::seconds(LOOK_BACK);
    let recorded = match jobs.store.setting(RECORDED_THROUGH).await {
        Ok(Some((v, _))) => v
            .parse::<i64>()
            .ok()
            .and_then(|t| DateTime::from_timestamp(t, 0)),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read how far the schedules were looked at");
            None
        }
    };
    // A time after now (a clock that went back) is not trusted either.
    recorded
        .filter(|t| *t <= now)
        .map_or(earliest, |t| t.max(earliest))
}

/// Every enabled job that has a schedule, with its definition.
async fn scheduled_jobs(
    jobs: &Dispatcher,
) -> Result<Vec<(JobRow, JobSpec)>, crate::store::StoreError> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = jobs.store.jobs(after, 500).await?;
        let Some(last) = page.last().map(|j| j.id) else {
            break;
        };
        for j in page {
            if !j.enabled {
                continue;
            }
            match jobs.spec_of(&j).await {
                Ok(spec)
                    if spec.schedule.is_some()
                        || spec.verify_schedule.is_some()
                        || spec.drill.is_some() =>
                {
                    out.push((j, spec))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(job = j.id, error = %e, "job cannot be scheduled"),
            }
        }
        after = last;
    }
    Ok(out)
}

/// One look as the leader: record due starts in `(since, now]`, end what was missed, hand
/// out the rest. The next start after `now` of any job, to wake for.
pub async fn once(
    jobs: &Arc<Dispatcher>,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, crate::store::StoreError> {
    look(jobs, Some(since), now).await
}

/// One look: as the leader (`since` given) record due starts in `(since, now]` and end
/// what was missed; then hand out queued runs to agents connected here.
async fn look(
    jobs: &Arc<Dispatcher>,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, crate::store::StoreError> {
    let scheduled = scheduled_jobs(jobs).await?;
    let mut queued = false;
    let mut frames: HashMap<i64, i64> = HashMap::new();
    let mut next: Option<DateTime<Utc>> = None;
    for (job, spec) in &scheduled {
        let drill = spec.drill.as_ref().map(|d| &d.schedule);
        for (schedule, kind) in [
            (spec.schedule.as_ref(), Kind::Image),
            (spec.verify_schedule.as_ref(), Kind::Verify),
            (drill, Kind::Drill),
        ] {
            let Some(schedule) = schedule else {
                continue;
            };
            let frame = frames.entry(job.id).or_default();
            *frame = (*frame).max(schedule.frame_seconds());
            if let Some(n) = schedule.next_after(now) {
                next = Some(next.map_or(n, |m| m.min(n)));
            }
            let Some(since) = since else {
                continue;
            };
            for start in schedule.starts_between(since, now, STARTS_PER_TICK) {
                let at = start.timestamp();
                let made = match kind {
                    Kind::Image => {
                        jobs.store
                            .create_scheduled_runs(job.id, &spec.agents, &job.name, at)
                            .await?
                    }
                    Kind::Verify => {
                        let mut made = Vec::new();
                        for &agent in &spec.agents {
                            match jobs.create_verify_run(job, agent, at).await {
                                Ok(run) => made.extend(run),
                                Err(e) => {
                                    tracing::warn!(job = job.id, error = %e, "verify run not recorded")
                                }
                            }
                        }
                        made
                    }
                    Kind::Drill => match spec.drill.as_ref() {
                        Some(plan) => match jobs.create_drill_run(job, plan, at).await {
                            Ok(run) => run.into_iter().collect(),
                            Err(e) => {
                                tracing::warn!(job = job.id, error = %e, "drill not recorded");
                                Vec::new()
                            }
                        },
                        None => Vec::new(),
                    },
                };
                if !made.is_empty() {
                    tracing::info!(job = job.id, start = %start, runs = made.len(), ?kind, "schedule fired");
                    queued = true;
                }
            }
        }
    }

    if queued {
        // The other instances hand these runs to their agents at once.
        jobs.cluster
            .tell(&crate::cluster::Note::Queued {
                from: jobs.cluster.id.clone(),
            })
            .await;
    }
    let running = jobs.store.running_runs().await?;
    let mut per_agent: HashMap<i64, usize> = HashMap::new();
    let mut busy: HashSet<(Option<i64>, i64)> = HashSet::new();
    for r in &running {
        *per_agent.entry(r.agent_id).or_default() += 1;
        busy.insert((r.job_id, r.agent_id));
    }
    let now_s = now.timestamp();
    let mut ready = Vec::new();
    for run in jobs.store.queued_runs().await? {
        let (reference, frame) = match run.scheduled_for {
            Some(t) => (
                t,
                run.job_id
                    .and_then(|j| frames.get(&j).copied())
                    .unwrap_or(0),
            ),
            None => (run.created_at, MANUAL_FRAME),
        };
        if now_s > reference + frame {
            // Ending it is the leader's.
            if since.is_none() {
                continue;
            }
            let why = format!(
                "{} was not connected from the start time {} through the time frame ({} min); the job did not run",
                jobs.host_name(run.agent_id).await,
                super::report_xml::time(reference),
                frame / 60
            );
            jobs.end_here(&run, holdfast_proto::RunStatus::Missed, &why)
                .await;
            tracing::warn!(run = run.id, agent = run.agent_id, "run missed");
            continue;
        }
        if !jobs.gateway.is_online(run.agent_id)
            || busy.contains(&(run.job_id, run.agent_id))
            || per_agent.get(&run.agent_id).copied().unwrap_or(0) >= jobs.per_agent()
        {
            continue;
        }
        *per_agent.entry(run.agent_id).or_default() += 1;
        busy.insert((run.job_id, run.agent_id));
        ready.push(run);
    }
    // Taken from the queue together (a fleet-wide start is one statement per 500 runs),
    // then sent concurrently.
    let ids: Vec<i64> = ready.iter().map(|r| r.id).collect();
    let taken: HashSet<i64> = jobs.store.claim_runs(&ids).await?.into_iter().collect();
    for run in ready.into_iter().filter(|r| taken.contains(&r.id)) {
        let d = jobs.clone();
        tokio::spawn(async move {
            if let Err(e) = d.deliver_claimed(&run, true).await {
                tracing::warn!(run = run.id, error = %e, "run not delivered");
            }
        });
    }
    Ok(next)
}
