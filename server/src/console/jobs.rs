//! Jobs: the list with next run and last result, one job's page with its runs and
//! actions, and the job wizard (what, where, when, options, notification) for new and
//! existing jobs.

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::extract::{Path, State};

use super::view::{self, when};
use super::{render, site_names, target_names, PageError, PageResult, Session, Shell};
use crate::app::AppState;
use crate::auth::Role;
use crate::http::ApiError;
use crate::jobs::schedule::{Repeat, Schedule};
use crate::store::jobs::{JobRow, LastRun, RunFilter};
use crate::store::RunState;

pub struct JobLine {
    pub id: i64,
    pub name: String,
    pub enabled: bool,
    pub runs_on: String,
    pub schedule: String,
    pub next: String,
    pub last_id: Option<i64>,
    pub last_state: String,
    pub last_at: String,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct Jobs {
    shell: Shell,
    jobs: Vec<JobLine>,
}

/// A schedule in a few words.
fn describe(s: &Schedule) -> String {
    let what = match &s.repeat {
        Repeat::Once { at } => format!("once at {}", at.format("%Y-%m-%d %H:%M")),
        Repeat::Daily { time, every_days } if *every_days == 1 => {
            format!("daily at {}", time.format("%H:%M"))
        }
        Repeat::Daily { time, every_days } => {
            format!("every {every_days} days at {}", time.format("%H:%M"))
        }
        Repeat::Weekly {
            time,
            weekdays,
            every_weeks,
        } => format!(
            "{}{} at {}",
            if *every_weeks > 1 {
                format!("every {every_weeks} weeks on ")
            } else {
                String::new()
            },
            weekdays.join(", "),
            time.format("%H:%M")
        ),
        Repeat::Monthly { time, day } => {
            format!("monthly on day {day} at {}", time.format("%H:%M"))
        }
        Repeat::Cron { expression } => format!("cron {expression}"),
    };
    format!("{what} ({})", s.timezone)
}

async fn line(
    state: &AppState,
    j: &JobRow,
    last: Option<LastRun>,
    sites: &HashMap<i64, String>,
) -> Result<JobLine, PageError> {
    let spec = state.jobs.spec_of(j).await.ok();
    let raw: Option<crate::jobs::spec::JobSpec> = serde_json::from_str(&j.spec).ok();
    let runs_on = match raw.as_ref().and_then(|s| s.site_id) {
        Some(site) => format!(
            "site {}",
            sites
                .get(&site)
                .cloned()
                .unwrap_or_else(|| site.to_string())
        ),
        None => {
            let n = spec.as_ref().map_or(0, |s| s.agents.len());
            format!("{n} agent{}", if n == 1 { "" } else { "s" })
        }
    };
    let schedule = spec.as_ref().and_then(|s| s.schedule.clone());
    let next = if j.enabled {
        schedule
            .as_ref()
            .and_then(|s| s.next_after(chrono::Utc::now()))
            .map(|t| when(Some(t.timestamp())))
            .unwrap_or_default()
    } else {
        "disabled".into()
    };
    Ok(JobLine {
        id: j.id,
        name: j.name.clone(),
        enabled: j.enabled,
        runs_on,
        schedule: schedule
            .as_ref()
            .map(describe)
            .unwrap_or_else(|| "manual".into()),
        next,
        last_id: last.as_ref().map(|r| r.id),
        last_state: last
            .as_ref()
            .map(|r| r.state.as_str().to_owned())
            .unwrap_or_default(),
        last_at: last
            .as_ref()
            .map(|r| view::ago(r.ended_at.or(r.started_at).or(Some(r.created_at))))
            .unwrap_or_default(),
    })
}

pub async fn list(State(state): State<AppState>, session: Session) -> PageResult {
    let sites: HashMap<i64, String> = site_names(&state).await?;
    let mut jobs = Vec::new();
    for (j, last) in state.store.jobs_with_last_run(0, i64::MAX).await? {
        jobs.push(line(&state, &j, last, &sites).await?);
    }
    Ok(render(Jobs {
        shell: session.shell("jobs"),
        jobs,
    }))
}

pub struct RunLine {
    pub id: i64,
    pub agent: String,
    pub state: RunState,
    pub at: String,
    pub percent: u32,
    pub text: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    shell: Shell,
    job: JobLine,
    spec_json: String,
    /// What it images.
    sources: String,
    password: bool,
    luks_passphrase: bool,
    agents: Vec<(i64, String)>,
    runs: Vec<RunLine>,
    images: Vec<JobImage>,
}

/// One of a job's images that still exist, newest first: its page browses and restores it.
pub struct JobImage {
    pub id: i64,
    pub name: String,
    pub method: String,
    pub agent: String,
    pub created: String,
    pub bytes: String,
}

async fn find(state: &AppState, id: i64) -> Result<JobRow, PageError> {
    state
        .store
        .job(id)
        .await?
        .ok_or_else(|| PageError(ApiError::NotFound(format!("job {id}"))))
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<i64>,
) -> PageResult {
    let j = find(&state, id).await?;
    let sites = site_names(&state).await?;
    let last = state.store.last_run(j.id).await?;
    let job = line(&state, &j, last, &sites).await?;
    let names: HashMap<i64, String> = state
        .store
        .agent_list()
        .await?
        .into_iter()
        .map(|a| (a.id, a.hostname))
        .collect();
    let name_of = |a: i64| {
        names
            .get(&a)
            .cloned()
            .unwrap_or_else(|| format!("agent {a}"))
    };
    let spec = state.jobs.spec_of(&j).await.ok();
    let sources = spec
        .as_ref()
        .map(|s| s.describe_sources())
        .unwrap_or_default();
    let agents = spec
        .map(|s| s.agents)
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a, name_of(a)))
        .collect();
    let filter = RunFilter {
        job_id: Some(id),
        ..RunFilter::default()
    };
    let runs = state
        .store
        .runs(&filter, i64::MAX, 30)
        .await?
        .into_iter()
        .map(|r| {
            let (percent, text) = if r.finished() {
                (100, String::new())
            } else {
                view::progress(&state, r.id)
            };
            RunLine {
                id: r.id,
                agent: name_of(r.agent_id),
                at: when(r.started_at.or(r.scheduled_for).or(Some(r.created_at))),
                state: r.state,
                percent,
                text,
            }
        })
        .collect();
    let images = state
        .store
        .recent_job_images(id, 20)
        .await?
        .into_iter()
        .map(|i| JobImage {
            agent: name_of(i.agent_id),
            created: when(Some(i.created_at)),
            bytes: super::view::bytes(i.bytes),
            id: i.id,
            name: i.name,
            method: i.method,
        })
        .collect();
    let spec: serde_json::Value = serde_json::from_str(&j.spec).unwrap_or_default();
    Ok(render(JobPage {
        shell: session.shell("jobs"),
        job,
        spec_json: serde_json::to_string_pretty(&spec).unwrap_or_default(),
        sources,
        password: j.secret.is_some(),
        luks_passphrase: j.luks_secret.is_some(),
        agents,
        runs,
        images,
    }))
}

/// A disk or partition an agent reported, offered as a source.
pub struct SourceOption {
    pub path: String,
    pub label: String,
}

pub struct AgentOption {
    pub id: i64,
    pub hostname: String,
    pub site: String,
}

#[derive(Template)]
#[template(path = "job_form.html")]
struct JobForm {
    shell: Shell,
    /// 0 for a new job.
    id: i64,
    /// The job as JSON (name, enabled, spec) for the page's script to fill the form.
    current: String,
    password: bool,
    luks_passphrase: bool,
    agents: Vec<AgentOption>,
    sites: Vec<(i64, String)>,
    targets: Vec<(i64, String)>,
    sources: Vec<SourceOption>,
    allow_none: bool,
    none_label: &'static str,
    /// The schedule fields' name prefix.
    sched: &'static str,
}

/// Which secrets a job has stored: the form says "set" for them.
#[derive(Default, Clone, Copy)]
struct StoredSecrets {
    password: bool,
    luks_passphrase: bool,
}

async fn form(
    state: &AppState,
    session: &Session,
    id: i64,
    current: String,
    stored: StoredSecrets,
) -> PageResult {
    session.require(Role::Operator)?;
    let sites: Vec<(i64, String)> = site_names(state).await?;
    let site_names: HashMap<i64, &str> = sites.iter().map(|(i, n)| (*i, n.as_str())).collect();
    let mut agents = Vec::new();
    // One entry per path (agents share device names; the first description wins).
    let mut sources = BTreeMap::new();
    for a in state.store.agents(0, i64::MAX).await? {
        if a.revoked_at.is_some() {
            continue;
        }
        if let Some(inv) = a
            .inventory
            .as_deref()
            .and_then(|t| serde_json::from_str::<holdfast_proto::Inventory>(t).ok())
        {
            use holdfast_proto::inventory::Backing;
            // LVM volumes and LUKS mappings by the names admins know them by.
            let mut named = HashMap::new();
            for d in &inv.disks {
                match &d.backing {
                    Some(Backing::Lvm { vg, lv, .. }) => {
                        named.insert(d.name.as_str(), format!("/dev/{vg}/{lv}"));
                    }
                    Some(Backing::Crypt { name, .. }) => {
                        named.insert(d.name.as_str(), format!("/dev/mapper/{name}"));
                    }
                    _ => {
                        sources
                            .entry(format!("/dev/{}", d.name))
                            .or_insert_with(|| {
                                format!(
                                    "whole disk, {} {}",
                                    holdfast_proto::human_bytes(d.size),
                                    d.model.as_deref().unwrap_or("")
                                )
                            });
                    }
                }
            }
            for v in &inv.volumes {
                let path = named
                    .get(v.name.as_str())
                    .cloned()
                    .unwrap_or_else(|| format!("/dev/{}", v.name));
                sources.entry(path).or_insert_with(|| {
                    let how = super::agents::consistency_summary(&v.consistency);
                    format!(
                        "{} {} {}{}",
                        v.filesystem.as_deref().unwrap_or("partition"),
                        holdfast_proto::human_bytes(v.size),
                        v.label.as_deref().unwrap_or(""),
                        if how.is_empty() {
                            String::new()
                        } else {
                            format!(" — {how}")
                        }
                    )
                });
                if let Some(uuid) = &v.uuid {
                    sources
                        .entry(format!("/dev/disk/by-uuid/{uuid}"))
                        .or_insert_with(|| format!("{} by its stable id", v.name));
                }
            }
        }
        agents.push(AgentOption {
            id: a.id,
            site: a
                .site_id
                .and_then(|s| site_names.get(&s).map(|n| (*n).to_owned()))
                .unwrap_or_default(),
            hostname: a.hostname,
        });
    }
    let targets = target_names(state).await?;
    Ok(render(JobForm {
        shell: session.shell("jobs"),
        id,
        current,
        password: stored.password,
        luks_passphrase: stored.luks_passphrase,
        agents,
        sites,
        targets,
        sources: sources
            .into_iter()
            .map(|(path, label)| SourceOption { path, label })
            .collect(),
        allow_none: true,
        sched: "spec.schedule.",
        none_label: "no schedule of its own (the site's, or run by hand)",
    }))
}

/// What the agent page's "Image this whole machine" asks the wizard for.
#[derive(Debug, serde::Deserialize)]
pub struct NewJob {
    /// The agent the job runs on.
    agent: Option<i64>,
    /// Every disk of it.
    #[serde(default)]
    whole_machine: bool,
}

pub async fn new(
    State(state): State<AppState>,
    session: Session,
    axum::extract::Query(ask): axum::extract::Query<NewJob>,
) -> PageResult {
    let mut current = serde_json::json!({
        "name": "", "enabled": true,
        "spec": {
            "name_template": "$TEMPL:(ComputerName)-$TEMPL:(Year)$TEMPL:(Month)$TEMPL:(Day)-$TEMPL:(Hour)$TEMPL:(Minute)$TEMPL:(Second)-r$TEMPL:(RunId).hfi",
            "folder": "$TEMPL:(ComputerName)",
            "method": "incremental_chain", "compression_level": 3, "chain_length": 7,
            "verify": true,
            "schedule": {"kind": "daily", "time": "22:00", "every_days": 1, "timezone": "UTC", "time_frame_minutes": 60},
            "retention": {"keep_last": 2},
        }
    });
    if let Some(id) = ask.agent {
        current["spec"]["agents"] = serde_json::json!([id]);
        if ask.whole_machine {
            let host = state.store.agent(id).await?.map(|a| a.hostname);
            current["name"] = format!("Whole machine {}", host.unwrap_or_default())
                .trim()
                .into();
            current["spec"]["all_disks"] = serde_json::json!({"include_removable": false});
        }
    }
    form(
        &state,
        &session,
        0,
        current.to_string(),
        StoredSecrets::default(),
    )
    .await
}

pub async fn edit(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<i64>,
) -> PageResult {
    let j = find(&state, id).await?;
    let spec: serde_json::Value = serde_json::from_str(&j.spec).unwrap_or_default();
    let current = serde_json::json!({"name": j.name, "enabled": j.enabled, "spec": spec});
    form(
        &state,
        &session,
        id,
        current.to_string(),
        StoredSecrets {
            password: j.secret.is_some(),
            luks_passphrase: j.luks_secret.is_some(),
        },
    )
    .await
}
