//! Sites: named groups of agents with a default target, folder, schedule and notification
//! that their jobs inherit.

use askama::Template;
use axum::extract::{Path, State};

use super::{render, site_names, target_names, PageError, PageResult, Session, Shell};
use crate::app::AppState;
use crate::http::ApiError;

pub struct SiteLine {
    pub id: i64,
    pub name: String,
    pub agents: usize,
    pub target: String,
}

#[derive(Template)]
#[template(path = "sites.html")]
struct Sites {
    shell: Shell,
    sites: Vec<SiteLine>,
    targets: Vec<(i64, String)>,
    // The form for a new site.
    id: i64,
    current: String,
    allow_none: bool,
    none_label: &'static str,
    /// The schedule fields' name prefix.
    sched: &'static str,
}

pub async fn list(State(state): State<AppState>, session: Session) -> PageResult {
    let targets: Vec<(i64, String)> = target_names(&state).await?;
    let book = state.store.site_book().await?;
    let mut sites: Vec<SiteLine> = book
        .values()
        .map(|(row, agents)| {
            let d: crate::jobs::spec::SiteDefaults =
                serde_json::from_str(&row.defaults).unwrap_or_default();
            SiteLine {
                id: row.id,
                name: row.name.clone(),
                agents: agents.len(),
                target: d
                    .target_id
                    .and_then(|t| targets.iter().find(|(id, _)| *id == t))
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default(),
            }
        })
        .collect();
    sites.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(render(Sites {
        shell: session.shell("sites"),
        sites,
        targets,
        id: 0,
        current: serde_json::json!({"name": "", "defaults": {"folder": "$TEMPL:(ComputerName)", "schedule": {"kind": "none"}}}).to_string(),
        allow_none: true,
        sched: "defaults.schedule.",
        none_label: "no default schedule",
    }))
}

pub struct Member {
    pub id: i64,
    pub hostname: String,
    pub here: bool,
    pub elsewhere: String,
}

#[derive(Template)]
#[template(path = "site.html")]
struct SitePage {
    shell: Shell,
    id: i64,
    name: String,
    current: String,
    targets: Vec<(i64, String)>,
    members: Vec<Member>,
    allow_none: bool,
    none_label: &'static str,
    /// The schedule fields' name prefix.
    sched: &'static str,
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<i64>,
) -> PageResult {
    let site = state
        .store
        .site(id)
        .await?
        .ok_or_else(|| PageError(ApiError::NotFound(format!("site {id}"))))?;
    let names: std::collections::HashMap<i64, String> = site_names(&state).await?;
    let members = state
        .store
        .agent_list()
        .await?
        .into_iter()
        .filter(|a| a.revoked_at.is_none())
        .map(|a| Member {
            id: a.id,
            hostname: a.hostname,
            here: a.site_id == Some(id),
            elsewhere: a
                .site_id
                .filter(|s| *s != id)
                .and_then(|s| names.get(&s).cloned())
                .unwrap_or_default(),
        })
        .collect();
    let defaults: serde_json::Value = serde_json::from_str(&site.defaults).unwrap_or_default();
    Ok(render(SitePage {
        shell: session.shell("sites"),
        id,
        current: serde_json::json!({"name": site.name, "defaults": defaults}).to_string(),
        name: site.name,
        targets: target_names(&state).await?,
        members,
        allow_none: true,
        sched: "defaults.schedule.",
        none_label: "no default schedule",
    }))
}
