//! Sites: named groups of agents with defaults their jobs inherit; moving agents between
//! them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::caller::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::{AppState, Page, PageQuery};
use crate::auth::Role;
use crate::jobs::spec::SiteDefaults;
use crate::store::sites::SiteRow;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/sites", get(list).post(create))
        .route("/api/v1/sites/{id}", get(show).put(update).delete(remove))
        .route("/api/v1/agents/{id}/site", put(move_agent))
}

/// A site as admins write it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteBody {
    name: String,
    #[serde(default)]
    defaults: SiteDefaults,
}

impl SiteBody {
    async fn check(&self, state: &AppState) -> Result<String, ApiError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ApiError::Invalid("name must be 1 to 100 characters".into()));
        }
        self.defaults.validate().map_err(ApiError::Invalid)?;
        if let Some(t) = self.defaults.target_id {
            if state.store.target(t).await?.is_none() {
                return Err(ApiError::Invalid(format!("there is no target {t}")));
            }
        }
        serde_json::to_string(&self.defaults).map_err(|e| ApiError::Internal(e.to_string()))
    }
}

/// A site as shown: its defaults and agents.
#[derive(Serialize, utoipa::ToSchema)]
struct SiteView {
    id: i64,
    name: String,
    defaults: SiteDefaults,
    /// The ids of its (not revoked) agents.
    agents: Vec<i64>,
    created_at: i64,
    updated_at: i64,
}

async fn view(state: &AppState, s: &SiteRow) -> Result<SiteView, ApiError> {
    let book = state.jobs.sites().await?;
    let agents = book.get(&s.id).map(|(_, a)| a.clone()).unwrap_or_default();
    // Written by this server from checked defaults: unreadable only if damaged.
    let defaults = serde_json::from_str(&s.defaults).map_err(|e| {
        ApiError::Internal(format!(
            "the stored defaults of site {} cannot be read: {e}",
            s.id
        ))
    })?;
    Ok(SiteView {
        id: s.id,
        name: s.name.clone(),
        defaults,
        agents,
        created_at: s.created_at,
        updated_at: s.updated_at,
    })
}

async fn find(state: &AppState, id: i64) -> Result<SiteRow, ApiError> {
    state
        .store
        .site(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("site {id}")))
}

/// List sites with their defaults and agents.
#[utoipa::path(get, path = "/api/v1/sites", tag = "sites", params(PageQuery), responses((status = 200, description = "a page of sites with their defaults and agents", body = Page<SiteView>)), security(("session" = []), ("token" = [])))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let limit = q.limit()?;
    let page = Page::new(
        state.store.sites(q.after.unwrap_or(0), limit).await?,
        limit,
        |s| s.id,
    );
    Ok(Json(
        page.try_map_async(|s| {
            let state = &state;
            async move { view(state, &s).await }
        })
        .await?,
    ))
}

/// Create a site.
#[utoipa::path(post, path = "/api/v1/sites", tag = "sites", request_body = SiteBody, responses((status = 201, description = "the site", body = SiteView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SiteBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let defaults = body.check(&state).await?;
    let mut change = state.store.change(&caller.user.name).await?;
    let s = change.create_site(body.name.trim(), &defaults).await?;
    change
        .commit("create_site", &format!("site:{}", s.id), &s.name)
        .await?;
    Ok((StatusCode::CREATED, Json(view(&state, &s).await?)))
}

/// Show a site.
#[utoipa::path(get, path = "/api/v1/sites/{id}", tag = "sites", params(("id" = i64, Path)), responses((status = 200, description = "the site", body = SiteView), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let s = find(&state, id).await?;
    Ok(Json(view(&state, &s).await?))
}

/// Change a site.
#[utoipa::path(put, path = "/api/v1/sites/{id}", tag = "sites", params(("id" = i64, Path)), request_body = SiteBody, responses((status = 200, description = "the site", body = SiteView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<SiteBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let defaults = body.check(&state).await?;
    let mut change = state.store.change(&caller.user.name).await?;
    let s = change
        .update_site(id, body.name.trim(), &defaults)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("site {id}")))?;
    change
        .commit("update_site", &format!("site:{id}"), &s.name)
        .await?;
    Ok(Json(view(&state, &s).await?))
}

/// Delete a site (its agents stay, without a site).
#[utoipa::path(delete, path = "/api/v1/sites/{id}", tag = "sites", params(("id" = i64, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let mut change = state.store.change(&caller.user.name).await?;
    if !change.delete_site(id).await? {
        return Err(ApiError::NotFound(format!("site {id}")));
    }
    change
        .commit("delete_site", &format!("site:{id}"), "")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /agents/{id}/site`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSite {
    /// The site, or null for none.
    site_id: Option<i64>,
}

/// Move an agent into a site (or out of any).
#[utoipa::path(put, path = "/api/v1/agents/{id}/site", tag = "sites", params(("id" = i64, Path)), request_body = AgentSite, responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn move_agent(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<AgentSite>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    if let Some(s) = body.site_id {
        find(&state, s)
            .await
            .map_err(|_| ApiError::Invalid(format!("there is no site {s}")))?;
    }
    let mut change = state.store.change(&caller.user.name).await?;
    if !change.set_agent_site(id, body.site_id).await? {
        return Err(ApiError::NotFound(format!("agent {id}")));
    }
    let to = body
        .site_id
        .map_or_else(|| "no site".to_owned(), |s| format!("site:{s}"));
    change
        .commit("move_agent", &format!("agent:{id}"), &to)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
