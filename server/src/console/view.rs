//! How values read on a page: times, sizes, durations, states.

use chrono::{TimeZone as _, Utc};

use crate::app::AppState;
use crate::store::agents::Agent;
use crate::store::AgentStatus;

/// A time as admins read it (`2026-11-22 07:34 UTC`); empty when absent.
pub fn when(t: Option<i64>) -> String {
    t.and_then(|t| Utc.timestamp_opt(t, 0).single())
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

/// How long ago (`3 min ago`), or `never`.
pub fn ago(t: Option<i64>) -> String {
    match t {
        None => "never".into(),
        Some(t) => {
            let s = (crate::store::now() - t).max(0);
            match s {
                0..=59 => "just now".into(),
                60..=3599 => format!("{} min ago", s / 60),
                3600..=172_799 => format!("{} h ago", s / 3600),
                _ => format!("{} days ago", s / 86_400),
            }
        }
    }
}

/// `1h 02m`, `4m 10s`, `12s`.
pub fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Bytes in binary units.
pub fn bytes(n: i64) -> String {
    holdfast_proto::human_bytes(u64::try_from(n).unwrap_or(0))
}

/// An agent's state in the console: revoked, offline, online, or busy (online with a run
/// going; `busy` holds the agents that have one).
pub fn agent_state(
    state: &AppState,
    a: &Agent,
    busy: &std::collections::HashSet<i64>,
) -> AgentStatus {
    match state.agent_status(a) {
        AgentStatus::Online if busy.contains(&a.id) => AgentStatus::Busy,
        s => s,
    }
}

/// A run's progress as a percentage and a line of text (stage, bytes, rate, time left).
pub fn progress(state: &AppState, run_id: i64) -> (u32, String) {
    let Some(p) = state.jobs.progress(run_id) else {
        return (0, "waiting for the agent".into());
    };
    let percent = (p.done.min(p.total) * 100)
        .checked_div(p.total)
        .map_or(0, |x| u32::try_from(x).unwrap_or(100));
    let mut text = format!("{}: {percent} %", p.stage);
    if p.total > 0 {
        text.push_str(&format!(" of {}", holdfast_proto::human_bytes(p.total)));
    }
    if p.rate > 0.0 {
        text.push_str(&format!(
            ", {}/s",
            holdfast_proto::human_bytes(p.rate as u64)
        ));
    }
    if let Some(eta) = p.eta_seconds {
        text.push_str(&format!(", {} left", duration(eta as i64)));
    }
    (percent, text)
}
