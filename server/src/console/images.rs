//! An image's page: what it is, its chain, a file browser over its point (folders listed on
//! demand by an agent that reads the image from its target), downloads, and restores of
//! files or of the whole volume, for operators.

use askama::Template;
use axum::extract::{Path, State};

use super::view::{bytes, when};
use super::{render, PageError, PageResult, Session, Shell};
use crate::app::AppState;
use crate::http::ApiError;
use crate::jobs::image_files::{chain_of, written_by_run};

/// One image of the chain.
pub struct ChainLine {
    pub id: i64,
    pub name: String,
    pub method: String,
    pub created: String,
    pub bytes: String,
    pub current: bool,
}

#[derive(Template)]
#[template(path = "image.html")]
struct ImagePage {
    shell: Shell,
    id: i64,
    name: String,
    method: String,
    created: String,
    size: String,
    verified: &'static str,
    deleted: bool,
    agent_id: i64,
    agent: String,
    job: Option<(i64, String)>,
    target: String,
    /// What was imaged, and how.
    source: String,
    how: String,
    warnings: Vec<String>,
    /// A whole-disk image: files are read from one partition at a time.
    disk: bool,
    chain: Vec<ChainLine>,
    /// Agents that can read the image or take a restore: (id, host name, online).
    agents: Vec<(i64, String, bool)>,
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<i64>,
) -> PageResult {
    let store = &state.store;
    let image = store
        .image(id)
        .await?
        .ok_or_else(|| PageError(ApiError::NotFound(format!("image {id}"))))?;
    let written = written_by_run(store, &image).await?;
    let chain = chain_of(store, &image)
        .await?
        .into_iter()
        .map(|i| ChainLine {
            current: i.id == image.id,
            id: i.id,
            name: i.name,
            method: i.method,
            created: when(Some(i.created_at)),
            bytes: bytes(i.bytes),
        })
        .collect();
    let agents: Vec<(i64, String, bool)> = store
        .agent_list()
        .await?
        .into_iter()
        .filter(|a| a.revoked_at.is_none())
        .map(|a| (a.id, a.hostname, state.gateway.is_online(a.id)))
        .collect();
    let agent = agents
        .iter()
        .find(|a| a.0 == image.agent_id)
        .map_or_else(|| format!("agent {}", image.agent_id), |a| a.1.clone());
    let job = match image.job_id {
        Some(j) => store.job(j).await?.map(|job| (j, job.name)),
        None => None,
    };
    let target = match image.target_id {
        Some(t) => store.target(t).await?.map(|t| t.name).unwrap_or_default(),
        None => String::new(),
    };
    let (source, how, warnings, disk) = match written {
        Some(w) => (
            format!(
                "{} {} ({})",
                w.source_kind,
                w.source,
                w.filesystem
                    .as_deref()
                    .unwrap_or("no filesystem recognised")
            ),
            [w.coverage.map_or("", |c| c.as_str()), &w.consistency]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
            w.warnings,
            w.source_kind == "disk",
        ),
        None => Default::default(),
    };
    Ok(render(ImagePage {
        shell: session.shell("reports"),
        id,
        name: image.name,
        method: image.method,
        created: when(Some(image.created_at)),
        size: bytes(image.bytes),
        verified: match image.verified {
            Some(true) => "sound",
            Some(false) => "damaged",
            None => "not checked",
        },
        deleted: image.deleted_at.is_some(),
        agent_id: image.agent_id,
        agent,
        job,
        target,
        source,
        how,
        warnings,
        disk,
        chain,
        agents,
    }))
}
