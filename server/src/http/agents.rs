//! Agents and enrolment tokens, as admins and operators see them.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use holdfast_proto::Inventory;
use serde::{Deserialize, Serialize};

use super::caller::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::{AppState, Items, Page, PageQuery};
use crate::auth::{new_secret, secret_hash, Role};
use crate::store::agents::{Agent, EnrollmentToken};
use crate::store::now;
use crate::store::AgentStatus;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/enrollment-tokens",
            get(list_tokens).post(create_token),
        )
        .route("/api/v1/enrollment-tokens/{id}", delete(revoke_token))
        .route("/api/v1/agents", get(list))
        .route("/api/v1/agents/{id}", get(show).delete(revoke))
        .route("/api/v1/agents/{id}/bandwidth", put(set_bandwidth))
        .route(
            "/api/v1/agents/{id}/inventory/refresh",
            post(refresh_inventory),
        )
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewToken {
    #[serde(default)]
    name: String,
    /// Enrolments it allows (1 by default).
    uses: Option<i64>,
    /// Hours it stays valid (24 by default).
    expires_in_hours: Option<i64>,
}

/// A new enrolment token with what is shown only once.
#[derive(Serialize, utoipa::ToSchema)]
struct CreatedToken {
    token: EnrollmentToken,
    /// The token itself (`hfe_…`); only its hash is kept.
    secret: String,
    /// The command that enrols a machine with it.
    command: String,
}

/// Create an enrolment token (its secret and the enrol command are shown once).
#[utoipa::path(post, path = "/api/v1/enrollment-tokens", tag = "agents", request_body = NewToken, responses((status = 201, description = "the token, its secret (shown once) and the enrol command", body = CreatedToken), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    uri: axum::http::Uri,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let uses = body.uses.unwrap_or(1);
    let hours = body.expires_in_hours.unwrap_or(24);
    if !(1..=10_000).contains(&uses) || !(1..=24 * 90).contains(&hours) {
        return Err(ApiError::Invalid(
            "uses must be 1 to 10000 and expires_in_hours 1 to 2160".into(),
        ));
    }
    let secret = new_secret("hfe_").map_err(ApiError::Internal)?;
    let mut change = state.store.change(&caller.user.name).await?;
    let token = change
        .create_enrollment_token(
            body.name.trim(),
            &secret_hash(&secret),
            uses,
            now() + hours * 3600,
            &caller.user.name,
        )
        .await?;
    change
        .commit(
            "create_enrollment_token",
            &format!("enrollment_token:{}", token.id),
            &format!("uses={uses} hours={hours}"),
        )
        .await?;
    // The address the admin reached us at is the best guess for what agents should use
    // (HTTP/2 carries it in the URI, HTTP/1.1 in the Host header).
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("SERVER:PORT");
    let command = format!(
        "holdfast-agent enroll --server https://{host} --token {secret} --fingerprint {}",
        state.fingerprint
    );
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            secret,
            command,
        }),
    ))
}

/// List enrolment tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/enrollment-tokens", tag = "agents", responses((status = 200, description = "every enrolment token, newest first", body = Items<EnrollmentToken>)), security(("session" = []), ("token" = [])))]
async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    Ok(Json(Items {
        items: state.store.enrollment_tokens().await?,
    }))
}

/// Revoke an enrolment token.
#[utoipa::path(delete, path = "/api/v1/enrollment-tokens/{id}", tag = "agents", params(("id" = i64, Path)), responses((status = 204), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let mut change = state.store.change(&caller.user.name).await?;
    if !change.revoke_enrollment_token(id).await? {
        return Err(ApiError::NotFound(format!("enrolment token {id}")));
    }
    change
        .commit(
            "revoke_enrollment_token",
            &format!("enrollment_token:{id}"),
            "",
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An agent with its live state.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AgentView {
    id: i64,
    hostname: String,
    status: AgentStatus,
    enrolled_at: i64,
    revoked_at: Option<i64>,
    last_seen_at: Option<i64>,
    os: String,
    agent_version: String,
    inventory_at: Option<i64>,
    site_id: Option<i64>,
    /// Why the server last refused its channel (another protocol version), until it
    /// connects again.
    refusal: Option<String>,
    refused_at: Option<i64>,
    /// Bandwidth limit of all its transfers to and from targets (none: unlimited).
    bandwidth: Option<String>,
    /// Its disks and volumes (one agent only; lists leave it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    inventory: Option<Inventory>,
}

fn view(state: &AppState, a: &Agent, with_inventory: bool) -> AgentView {
    let status = state.agent_status(a);
    AgentView {
        id: a.id,
        hostname: a.hostname.clone(),
        status,
        enrolled_at: a.enrolled_at,
        revoked_at: a.revoked_at,
        // The store writes it once a minute; an agent on the channel is seen now.
        last_seen_at: if status.is_connected() {
            Some(crate::store::now())
        } else {
            a.last_seen_at
        },
        os: a.os.clone(),
        agent_version: a.agent_version.clone(),
        inventory_at: a.inventory_at,
        site_id: a.site_id,
        refusal: a.refusal.clone(),
        refused_at: a.refused_at,
        bandwidth: a.bandwidth.clone(),
        // Written by the server from what the agent sent: unreadable only if damaged.
        inventory: with_inventory
            .then(|| {
                a.inventory
                    .as_deref()
                    .and_then(|t| serde_json::from_str(t).ok())
            })
            .flatten(),
    }
}

/// List agents with their status.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", params(PageQuery), responses((status = 200, description = "a page of agents with their status", body = Page<AgentView>)), security(("session" = []), ("token" = [])))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let limit = q.limit()?;
    let agents = state.store.agents(q.after.unwrap_or(0), limit).await?;
    let page = Page::new(agents, limit, |a| a.id).map(|a| view(&state, &a, false));
    Ok(Json(page))
}

/// Show an agent with its inventory.
#[utoipa::path(get, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = i64, Path)), responses((status = 200, description = "the agent with its inventory", body = AgentView), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let a = state
        .store
        .agent(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("agent {id}")))?;
    Ok(Json(view(&state, &a, true)))
}

/// Revoke an agent: its channel closes and it can no longer connect.
#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = i64, Path)), responses((status = 204), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let mut change = state.store.change(&caller.user.name).await?;
    if !change.revoke_agent(id).await? {
        return Err(ApiError::NotFound(format!("agent {id}")));
    }
    change
        .commit("revoke_agent", &format!("agent:{id}"), "")
        .await?;
    state.gateway.kick(id);
    // Its channel may be open on another instance.
    let note = crate::cluster::Note::Kick {
        from: state.cluster.id.clone(),
        agent: id,
    };
    state.cluster.tell(&note).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /agents/{id}/bandwidth`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentBandwidth {
    /// Bandwidth limit of all the agent's transfers to and from targets, with time windows
    /// in the agent's local time: rules separated by commas, the first matching applies —
    /// `RATE[@DAYS/HH:MM-HH:MM]`, e.g. `20M@mon-fri/08:00-18:00,unlimited` (bytes per
    /// second, binary units). A target's own limit applies too: the lower wins. Empty or
    /// null: no limit.
    bandwidth: Option<String>,
}

/// Set an agent's bandwidth limit (applies from its next transfer on).
#[utoipa::path(put, path = "/api/v1/agents/{id}/bandwidth", tag = "agents", params(("id" = i64, Path)), request_body = AgentBandwidth, responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn set_bandwidth(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<AgentBandwidth>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let limit = super::targets::bandwidth_limit(body.bandwidth.as_deref())?;
    let mut change = state.store.change(&caller.user.name).await?;
    if !change.set_agent_bandwidth(id, limit).await? {
        return Err(ApiError::NotFound(format!("agent {id}")));
    }
    change
        .commit(
            "set_agent_bandwidth",
            &format!("agent:{id}"),
            limit.unwrap_or("unlimited"),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ask the agent for its inventory now, over the channel (request and response).
#[utoipa::path(post, path = "/api/v1/agents/{id}/inventory/refresh", tag = "agents", params(("id" = i64, Path)), responses((status = 200, description = "the inventory the agent sent", body = Inventory), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn refresh_inventory(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Operator)?;
    let asked = state
        .gateway
        .request(
            id,
            holdfast_proto::request::GetInventory {},
            Duration::from_secs(30),
        )
        .await;
    let inv: Inventory = match asked {
        Ok(inv) => inv,
        Err(e) => return Err(ApiError::Invalid(e.on(&state.jobs.host_name(id).await))),
    };
    super::agent_channel::store_inventory(&state, id, &inv).await;
    Ok(Json(inv))
}
