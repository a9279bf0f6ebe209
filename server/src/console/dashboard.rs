//! The dashboard: the fleet at a glance — agents, last night, what runs now, who has no
//! recent backup, storage per target, and thirty days of image sizes and durations.

use std::collections::HashMap;

use askama::Template;
use axum::extract::State;

use super::view::{self, bytes, duration, when};
use super::{render, target_names, PageError, PageResult, Session, Shell};
use crate::app::AppState;
use crate::http::ApiError;
use crate::jobs::alerts::{Alerts, ALERTS_KEY};
use crate::store::overview::DayTotal;
use crate::store::{AgentStatus, RunState};

/// Hours without a successful backup after which an agent is listed, unless the stale
/// alert sets its own.
const STALE_HOURS: u32 = 24;

pub struct RunLine {
    pub id: i64,
    pub name: String,
    pub agent: String,
    pub state: RunState,
    pub at: String,
    pub percent: u32,
    pub text: String,
}

pub struct StaleLine {
    pub id: i64,
    pub hostname: String,
    pub last: String,
}

pub struct UsageLine {
    pub name: String,
    pub images: i64,
    pub bytes: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    shell: Shell,
    total: usize,
    online: usize,
    busy: usize,
    offline: usize,
    night: Vec<(String, i64)>,
    problems: Vec<RunLine>,
    running: Vec<RunLine>,
    stale_hours: u32,
    stale: Vec<StaleLine>,
    usage: Vec<UsageLine>,
    chart: String,
    drills: Vec<DrillLine>,
}

/// A job's last successful restore drill.
pub struct DrillLine {
    pub report: i64,
    pub job_id: Option<i64>,
    pub job: String,
    pub at: String,
    /// The recovery time: how long the restore took.
    pub restore: String,
    pub files: u64,
}

pub async fn page(State(state): State<AppState>, session: Session) -> PageResult {
    let store = &state.store;
    let now = crate::store::now();
    let agents = store.agent_list().await?;
    let names: HashMap<i64, String> = agents.iter().map(|a| (a.id, a.hostname.clone())).collect();
    let name_of = |id: i64| {
        names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("agent {id}"))
    };
    let running_runs = store.running_runs().await?;
    let busy_ids: std::collections::HashSet<i64> =
        running_runs.iter().map(|r| r.agent_id).collect();
    let (mut online, mut offline, mut busy, mut total) = (0, 0, 0, 0);
    for a in &agents {
        match view::agent_state(&state, a, &busy_ids) {
            AgentStatus::Busy => busy += 1,
            AgentStatus::Online => online += 1,
            AgentStatus::Offline => offline += 1,
            AgentStatus::Revoked => continue,
        }
        total += 1;
    }
    let running = running_runs
        .iter()
        .map(|r| {
            let (percent, text) = view::progress(&state, r.id);
            RunLine {
                id: r.id,
                name: r.name.clone(),
                agent: name_of(r.agent_id),
                state: r.state,
                at: when(r.started_at),
                percent,
                text,
            }
        })
        .collect();
    // "Last night": the last 24 hours.
    let since = now - 24 * 3600;
    let night = store.state_counts(since).await?;
    let problems = store
        .runs_ended_in(since, &RunState::TROUBLE, 20)
        .await?
        .into_iter()
        .map(|r| RunLine {
            id: r.id,
            agent: name_of(r.agent_id),
            at: when(r.ended_at),
            percent: 100,
            text: String::new(),
            name: r.name,
            state: r.state,
        })
        .collect();
    let stale_hours = store
        .setting(ALERTS_KEY)
        .await?
        .and_then(|(v, _)| serde_json::from_str::<Alerts>(&v).ok())
        .and_then(|a| a.stale.map(|s| s.hours))
        .unwrap_or(STALE_HOURS);
    let last = store.last_success().await?;
    let stale = agents
        .iter()
        .filter(|a| a.revoked_at.is_none())
        .filter(|a| {
            last.get(&a.id)
                .is_none_or(|t| *t < now - i64::from(stale_hours) * 3600)
        })
        .map(|a| StaleLine {
            id: a.id,
            hostname: a.hostname.clone(),
            last: view::ago(last.get(&a.id).copied()),
        })
        .collect();
    let targets: HashMap<i64, String> = target_names(&state).await?;
    let usage = store
        .target_usage()
        .await?
        .into_iter()
        .map(|u| UsageLine {
            name: u
                .target_id
                .and_then(|id| targets.get(&id).cloned())
                .unwrap_or_else(|| "(removed target)".into()),
            images: u.images,
            bytes: bytes(u.bytes),
        })
        .collect();
    let days = daily_totals(&state, now).await?;
    let mut drills = Vec::new();
    for r in store.last_drills().await? {
        let result = r
            .report
            .as_deref()
            .and_then(|t| serde_json::from_str::<holdfast_proto::RunReport>(t).ok())
            .and_then(|rep| rep.drill);
        let job = match r.job_id {
            Some(j) => store.job(j).await?.map(|j| j.name),
            None => None,
        };
        drills.push(DrillLine {
            report: r.id,
            job_id: r.job_id,
            job: job.unwrap_or_else(|| r.name.clone()),
            at: super::view::when(r.ended_at),
            restore: result
                .as_ref()
                .map(|d| format!("{:.1} s", d.restore_seconds))
                .unwrap_or_default(),
            files: result.map_or(0, |d| d.files),
        });
    }
    Ok(render(Dashboard {
        shell: session.shell("dashboard"),
        total,
        online,
        busy,
        offline,
        night,
        problems,
        running,
        stale_hours,
        stale,
        usage,
        chart: chart(&days, now / 86_400),
        drills,
    }))
}

/// How long the totals of past days are kept: runs that end late (a report delivered after
/// a reconnect) still show up in their day within this.
const CLOSED_DAYS_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// The last thirty days' totals: past days from the cache (summing them reads every run of
/// the month), today read afresh.
async fn daily_totals(state: &AppState, now: i64) -> Result<Vec<DayTotal>, PageError> {
    let today = now / 86_400;
    let cached = {
        let guard = state
            .console
            .closed_days
            .lock()
            .map_err(|_| PageError(ApiError::Internal("console cache poisoned".into())))?;
        guard
            .as_ref()
            .filter(|c| c.today == today && c.read_at.elapsed() < CLOSED_DAYS_FOR)
            .map(|c| c.totals.clone())
    };
    let mut days = match cached {
        Some(d) => d,
        None => {
            let closed: Vec<DayTotal> = state
                .store
                .daily_totals((today - 29) * 86_400)
                .await?
                .into_iter()
                .filter(|d| d.day < today)
                .collect();
            if let Ok(mut guard) = state.console.closed_days.lock() {
                *guard = Some(super::ClosedDays {
                    today,
                    read_at: std::time::Instant::now(),
                    totals: closed.clone(),
                });
            }
            closed
        }
    };
    days.extend(state.store.daily_totals(today * 86_400).await?);
    Ok(days)
}

/// Thirty days as an SVG: bars for bytes written, a line for the summed run time. Only
/// numbers and dates go into it.
fn chart(days: &[DayTotal], today: i64) -> String {
    if days.is_empty() {
        return String::new();
    }
    const W: i64 = 720;
    const H: i64 = 180;
    const LEFT: i64 = 8;
    let by_day: HashMap<i64, &DayTotal> = days.iter().map(|d| (d.day, d)).collect();
    let max_bytes = days
        .iter()
        .map(|d| d.bytes_written)
        .max()
        .unwrap_or(0)
        .max(1);
    let max_secs = days.iter().map(|d| d.seconds).max().unwrap_or(0).max(1);
    let step = (W - LEFT) / 30;
    let mut bars = String::new();
    let mut line = Vec::new();
    let mut labels = String::new();
    for i in 0..30 {
        let day = today - 29 + i;
        let x = LEFT + i * step;
        let d = by_day.get(&day);
        let b = d.map_or(0, |d| d.bytes_written);
        let s = d.map_or(0, |d| d.seconds);
        let h = b * (H - 30) / max_bytes;
        let fill = if d.is_some_and(|d| d.failed > 0) {
            "#d9776f"
        } else {
            "#9bbcf0"
        };
        bars.push_str(&format!(
            "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{h}\" fill=\"{fill}\"><title>{}: {} written, {} run time, {} runs</title></rect>",
            H - 20 - h,
            step - 4,
            date(day),
            bytes(b),
            duration(s),
            d.map_or(0, |d| d.runs)
        ));
        line.push(format!(
            "{},{}",
            x + (step - 4) / 2,
            H - 20 - s * (H - 30) / max_secs
        ));
        if i % 5 == 4 {
            labels.push_str(&format!(
                "<text x=\"{x}\" y=\"{}\">{}</text>",
                H - 5,
                &date(day)[5..]
            ));
        }
    }
    format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"Image sizes and run times, last 30 days\" width=\"100%\">\
         {bars}<polyline points=\"{}\" fill=\"none\" stroke=\"#1c2430\" stroke-width=\"2\"/>{labels}\
         <text x=\"{LEFT}\" y=\"10\">max {} a day · line: run time, max {}</text></svg>",
        line.join(" "),
        bytes(max_bytes),
        duration(max_secs)
    )
}

fn date(day: i64) -> String {
    view::when(Some(day * 86_400))
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_owned()
}
