//! Targets: where images go. Credentials are shown as set / not set, never their values.

use askama::Template;
use axum::extract::{Path, State};

use super::view::{bytes, when};
use super::{render, PageError, PageResult, Session, Shell};
use crate::app::AppState;
use crate::http::ApiError;

pub struct TargetLine {
    pub id: i64,
    pub name: String,
    pub url: String,
    pub username: String,
    pub images: i64,
    pub bytes: String,
}

/// The target form's fields (`target_form.html`), shared by the list page (empty, for a new
/// target) and a target's page; credentials only as set / not set.
#[derive(Default)]
struct TargetForm {
    id: i64,
    name: String,
    url: String,
    username: String,
    ca_pem: String,
    /// The SFTP server's confirmed host key (empty: none).
    host_key: String,
    /// Bandwidth limit (empty: none).
    bandwidth: String,
    notes: String,
    password: bool,
    private_key: bool,
}

#[derive(Template)]
#[template(path = "targets.html")]
struct Targets {
    shell: Shell,
    targets: Vec<TargetLine>,
    form: TargetForm,
}

pub async fn list(State(state): State<AppState>, session: Session) -> PageResult {
    let usage = state.store.target_usage().await?;
    let targets = state
        .store
        .targets(0, i64::MAX)
        .await?
        .into_iter()
        .map(|t| {
            let u = usage.iter().find(|u| u.target_id == Some(t.id));
            TargetLine {
                id: t.id,
                name: t.name,
                url: t.url,
                username: t.username.unwrap_or_default(),
                images: u.map_or(0, |u| u.images),
                bytes: bytes(u.map_or(0, |u| u.bytes)),
            }
        })
        .collect();
    Ok(render(Targets {
        shell: session.shell("targets"),
        targets,
        form: TargetForm::default(),
    }))
}

#[derive(Template)]
#[template(path = "target.html")]
struct TargetPage {
    shell: Shell,
    form: TargetForm,
    /// An SFTP target: it has a host key to confirm.
    sftp: bool,
    updated: String,
    agents: Vec<(i64, String)>,
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<i64>,
) -> PageResult {
    let t = state
        .store
        .target(id)
        .await?
        .ok_or_else(|| PageError(ApiError::NotFound(format!("target {id}"))))?;
    // Only whether each credential is there: the page never holds a secret.
    let secret = crate::http::target_secret(&state, &t)?;
    let agents = state
        .store
        .agent_list()
        .await?
        .into_iter()
        .filter(|a| a.revoked_at.is_none() && state.gateway.is_online(a.id))
        .map(|a| (a.id, a.hostname))
        .collect();
    Ok(render(TargetPage {
        shell: session.shell("targets"),
        sftp: t.url.starts_with("sftp://"),
        form: TargetForm {
            id: t.id,
            name: t.name,
            url: t.url,
            username: t.username.unwrap_or_default(),
            ca_pem: t.ca_pem.unwrap_or_default(),
            host_key: t.host_key.unwrap_or_default(),
            bandwidth: t.bandwidth.unwrap_or_default(),
            notes: t.notes,
            password: secret.password.is_some(),
            private_key: secret.private_key.is_some(),
        },
        updated: when(Some(t.updated_at)),
        agents,
    }))
}
