//! Agents and enrolment tokens, as admins and operators see them.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use holdfast_proto::Inventory;
use serde::Deserialize;
use serde_json::{json, Value};

use super::caller::Caller;
use super::error::{ApiError, ApiJson, ErrorBody};
use super::{AppState, Page, PageQuery};
use crate::auth::{new_secret, secret_hash, Role};
use crate::gateway::GatewayError;
use crate::store::agents::Agent;
use crate::store::now;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/enrollment-tokens",
            get(list_tokens).post(create_token),
        )
        .route("/api/v1/enrollment-tokens/{id}", delete(revoke_token))
        .route("/api/v1/agents", get(list))
        .route("/api/v1/agents/{id}", get(show).delete(revoke))
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

#[utoipa::path(post, path = "/api/v1/enrollment-tokens", tag = "agents", request_body = NewToken, responses((status = 201, description = "the token, its secret (shown once) and the enrol command", body = Object), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
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
    let token = state
        .store
        .create_enrollment_token(
            body.name.trim(),
            &secret_hash(&secret),
            uses,
            now() + hours * 3600,
            &caller.user.name,
        )
        .await?;
    state
        .store
        .audit(
            &caller.user.name,
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
        Json(json!({ "token": token, "secret": secret, "command": command })),
    ))
}

#[utoipa::path(get, path = "/api/v1/enrollment-tokens", tag = "agents", responses((status = 200, body = Object)), security(("session" = []), ("token" = [])))]
async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    Ok(Json(
        json!({ "items": state.store.enrollment_tokens().await? }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/enrollment-tokens/{id}", tag = "agents", params(("id" = i64, Path)), responses((status = 204), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    if !state.store.revoke_enrollment_token(id).await? {
        return Err(ApiError::NotFound(format!("enrolment token {id}")));
    }
    state
        .store
        .audit(
            &caller.user.name,
            "revoke_enrollment_token",
            &format!("enrollment_token:{id}"),
            "",
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An agent with its live state.
fn view(state: &AppState, a: &Agent, with_inventory: bool) -> Value {
    let status = state.agent_status(a);
    let mut v = json!({
        "id": a.id,
        "hostname": a.hostname,
        "status": status,
        "enrolled_at": a.enrolled_at,
        "revoked_at": a.revoked_at,
        // The store writes it once a minute; an agent on the channel is seen now.
        "last_seen_at": if status.is_connected() { Some(crate::store::now()) } else { a.last_seen_at },
        "os": a.os,
        "agent_version": a.agent_version,
        "inventory_at": a.inventory_at,
        "site_id": a.site_id,
    });
    if with_inventory {
        v["inventory"] = a
            .inventory
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(Value::Null);
    }
    v
}

#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", params(PageQuery), responses((status = 200, description = "a page of agents with their status", body = Object)), security(("session" = []), ("token" = [])))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let limit = q.limit()?;
    let agents = state.store.agents(q.after.unwrap_or(0), limit).await?;
    let page = Page::new(agents, limit, |a| a.id).map(|a| view(&state, &a, false));
    Ok(Json(page))
}

#[utoipa::path(get, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = i64, Path)), responses((status = 200, description = "the agent with its inventory", body = Object), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let a = state
        .store
        .agent(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("agent {id}")))?;
    Ok(Json(view(&state, &a, true)))
}

#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = i64, Path)), responses((status = 204), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    if !state.store.revoke_agent(id).await? {
        return Err(ApiError::NotFound(format!("agent {id}")));
    }
    state.gateway.kick(id);
    state
        .store
        .audit(
            &caller.user.name,
            "revoke_agent",
            &format!("agent:{id}"),
            "",
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ask the agent for its inventory now, over the channel (request and response).
#[utoipa::path(post, path = "/api/v1/agents/{id}/inventory/refresh", tag = "agents", params(("id" = i64, Path)), responses((status = 200, description = "the inventory the agent sent", body = Object), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn refresh_inventory(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Operator)?;
    let inv: Inventory = state
        .gateway
        .request(
            id,
            holdfast_proto::request::GetInventory {},
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| match e {
            GatewayError::Offline(_) => ApiError::Invalid(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        })?;
    super::agent_channel::store_inventory(&state, id, &inv).await;
    Ok(Json(inv))
}
