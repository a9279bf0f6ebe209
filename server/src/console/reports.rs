//! Reports: the filterable list of runs, and one report with its summary, steps, images
//! and downloads: what was done, step by step, with the images it left.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use serde::Deserialize;

use super::view::{self, bytes, duration, when};
use super::{render, PageError, PageResult, Session, Shell};
use crate::app::AppState;
use crate::http::ApiError;
use crate::store::jobs::RunFilter;
use crate::store::RunState;

const PAGE: i64 = 50;

pub struct Line {
    pub id: i64,
    pub name: String,
    pub agent: String,
    pub agent_id: i64,
    pub state: RunState,
    pub cause: String,
    pub started: String,
    pub took: String,
    pub written: String,
}

#[derive(Template)]
#[template(path = "reports.html")]
struct Reports {
    shell: Shell,
    lines: Vec<Line>,
    /// Id, name, chosen in the filter.
    jobs: Vec<(i64, String, bool)>,
    agents: Vec<(i64, String, bool)>,
    status: String,
    /// The query for the next page, when there is one.
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct Filters {
    #[serde(default)]
    job: String,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    status: String,
    before: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(f): Query<Filters>,
) -> PageResult {
    let store = &state.store;
    let bad = |what: &str| PageError(ApiError::Invalid(format!("{what} is not a number")));
    let job = (!f.job.is_empty())
        .then(|| f.job.parse::<i64>().map_err(|_| bad("job")))
        .transpose()?;
    let agent = (!f.agent.is_empty())
        .then(|| f.agent.parse::<i64>().map_err(|_| bad("agent")))
        .transpose()?;
    let status = (!f.status.is_empty())
        .then(|| f.status.parse::<RunState>())
        .transpose()
        .map_err(|e| PageError(ApiError::Invalid(e.to_string())))?;
    let filter = RunFilter {
        job_id: job,
        agent_id: agent,
        state: status,
    };
    let runs = store
        .runs(&filter, f.before.unwrap_or(i64::MAX), PAGE)
        .await?;
    let agents: Vec<(i64, String)> = store
        .agent_list()
        .await?
        .into_iter()
        .map(|a| (a.id, a.hostname))
        .collect();
    let names: HashMap<i64, &str> = agents.iter().map(|(i, n)| (*i, n.as_str())).collect();
    let jobs: Vec<(i64, String)> = store
        .jobs(0, i64::MAX)
        .await?
        .into_iter()
        .map(|j| (j.id, j.name))
        .collect();
    let next = (runs.len() as i64 == PAGE)
        .then(|| runs.last().map(|r| r.id))
        .flatten()
        .map(|before| {
            format!(
                "job={}&agent={}&status={}&before={before}",
                f.job, f.agent, f.status
            )
        });
    let lines = runs
        .into_iter()
        .map(|r| Line {
            id: r.id,
            agent: names
                .get(&r.agent_id)
                .map_or_else(|| format!("agent {}", r.agent_id), |n| (*n).to_owned()),
            agent_id: r.agent_id,
            started: when(r.started_at.or(r.scheduled_for).or(Some(r.created_at))),
            took: match (r.started_at, r.ended_at) {
                (Some(s), Some(e)) => duration(e - s),
                _ => String::new(),
            },
            written: bytes(r.bytes_written),
            name: r.name,
            state: r.state,
            cause: r.cause,
        })
        .collect();
    Ok(render(Reports {
        shell: session.shell("reports"),
        lines,
        jobs: jobs
            .into_iter()
            .map(|(id, n)| (id, n, job == Some(id)))
            .collect(),
        agents: agents
            .iter()
            .map(|(id, n)| (*id, n.clone(), agent == Some(*id)))
            .collect(),
        status: f.status,
        next,
    }))
}

pub struct StepLine {
    pub at: String,
    pub status: String,
    pub title: String,
    pub detail: String,
}

pub struct ImageLine {
    /// Its page, while it exists.
    pub id: Option<i64>,
    pub name: String,
    pub method: String,
    pub base: String,
    pub bytes: String,
    pub parts: u64,
    pub verified: &'static str,
    /// What was imaged: `partition /dev/sdb1 (ext4)`.
    pub source: String,
    pub target: String,
    /// Used-sector or forensic, how it was made consistent, and (an incremental) how its
    /// changes were found.
    pub how: String,
}

#[derive(Template)]
#[template(path = "report.html")]
struct Report {
    shell: Shell,
    id: i64,
    name: String,
    job_id: Option<i64>,
    agent_id: i64,
    agent: String,
    state: RunState,
    cause: String,
    scheduled: String,
    started: String,
    ended: String,
    took: String,
    read: String,
    written: String,
    running: bool,
    percent: u32,
    progress: String,
    log: Vec<String>,
    steps: Vec<StepLine>,
    images: Vec<ImageLine>,
    deleted: Vec<String>,
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<i64>,
) -> PageResult {
    let store = &state.store;
    let r = store
        .run(id)
        .await?
        .ok_or_else(|| PageError(ApiError::NotFound(format!("report {id}"))))?;
    let agent = store
        .agent(r.agent_id)
        .await?
        .map_or_else(|| format!("agent {}", r.agent_id), |a| a.hostname);
    let report: Option<holdfast_proto::RunReport> = r
        .report
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok());
    let stored = store.run_images(id).await?;
    let page_of = |name: &str| {
        stored
            .iter()
            .find(|i| i.name == name && i.deleted_at.is_none())
            .map(|i| i.id)
    };
    let (steps, images, deleted) = match report {
        Some(rep) => (
            rep.steps
                .into_iter()
                .map(|s| StepLine {
                    at: when(Some(s.at)),
                    status: serde_json::to_value(s.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    title: s.title,
                    detail: s.detail,
                })
                .collect(),
            rep.images
                .into_iter()
                .map(|i| ImageLine {
                    method: i.method.as_str().to_owned(),
                    source: format!(
                        "{} {} ({})",
                        i.source_kind,
                        i.source,
                        i.filesystem
                            .as_deref()
                            .unwrap_or("no filesystem recognised")
                    )
                    .trim()
                    .to_owned(),
                    target: i.target,
                    how: [
                        i.coverage.map_or("", |c| c.as_str()),
                        &i.consistency,
                        i.changes.as_deref().unwrap_or_default(),
                    ]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
                    base: i.base.unwrap_or_default(),
                    bytes: holdfast_proto::human_bytes(i.bytes),
                    parts: i.parts,
                    verified: match i.verified {
                        Some(true) => "sound",
                        Some(false) => "damaged",
                        None => "not checked",
                    },
                    id: page_of(&i.name),
                    name: i.name,
                })
                .collect(),
            rep.deleted,
        ),
        None => Default::default(),
    };
    let running = !r.finished();
    let (percent, progress) = if running {
        view::progress(&state, id)
    } else {
        (100, String::new())
    };
    let log = state
        .jobs
        .progress(id)
        .map(|p| p.log.into_iter().collect())
        .unwrap_or_default();
    Ok(render(Report {
        shell: session.shell("reports"),
        id,
        job_id: r.job_id,
        agent_id: r.agent_id,
        agent,
        cause: r.cause.clone(),
        scheduled: when(r.scheduled_for),
        started: when(r.started_at),
        ended: when(r.ended_at),
        took: match (r.started_at, r.ended_at) {
            (Some(s), Some(e)) => duration(e - s),
            _ => String::new(),
        },
        read: bytes(r.bytes_read),
        written: bytes(r.bytes_written),
        running,
        percent,
        progress,
        log,
        steps,
        images,
        deleted,
        name: r.name,
        state: r.state,
    }))
}
