//! Personal API tokens: the secret is shown once, at creation.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::caller::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use super::{AppState, Items};
use crate::auth::{new_secret, secret_hash, Role};
use crate::store::tokens::ApiToken;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tokens", get(list).post(create))
        .route("/api/v1/tokens/{id}", delete(revoke))
}

/// List the caller's API tokens.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", responses((status = 200, description = "the caller's tokens", body = Items<ApiToken>)), security(("session" = []), ("token" = [])))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(Items {
        items: state.store.tokens(caller.user.id).await?,
    }))
}

/// Days a token works unless asked otherwise, and at most.
const DEFAULT_DAYS: u32 = 90;
const MAX_DAYS: u32 = 3650;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    /// What it may do: `viewer` (the default), `operator` or `admin`; at most the caller's
    /// own role.
    role: Option<Role>,
    /// Days until it stops working (1 to 3650; default 90).
    expires_in_days: Option<u32>,
}

/// A new API token and its secret, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
struct CreatedToken {
    token: ApiToken,
    /// The bearer secret (`hft_…`); only its hash is kept.
    secret: String,
}

/// Create an API token (its secret is shown once).
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewToken, responses((status = 201, description = "the token and its secret (shown once)", body = CreatedToken), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::Invalid(
            "a token needs a name of 1 to 100 characters".into(),
        ));
    }
    let role = body.role.unwrap_or(Role::Viewer);
    if role > caller.user.role {
        return Err(ApiError::ForbiddenBecause(format!(
            "a token may not do more than its owner: you are {}",
            caller.user.role.as_str()
        )));
    }
    let days = body.expires_in_days.unwrap_or(DEFAULT_DAYS);
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(ApiError::Invalid(format!(
            "expires_in_days must be between 1 and {MAX_DAYS}"
        )));
    }
    let expires_at = crate::store::now() + i64::from(days) * 86_400;
    let secret = new_secret("hft_").map_err(ApiError::Internal)?;
    let mut change = state.store.change(&caller.user.name).await?;
    let token = change
        .create_token(
            caller.user.id,
            (name, role),
            &secret_hash(&secret),
            expires_at,
        )
        .await?;
    change
        .commit(
            "create_token",
            &format!("token:{}", token.id),
            &format!("{name} ({}, {days} days)", role.as_str()),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

/// Revoke an API token.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = i64, Path)), responses((status = 204), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let mut change = state.store.change(&caller.user.name).await?;
    if !change.revoke_token(caller.user.id, id).await? {
        return Err(ApiError::NotFound(format!("token {id}")));
    }
    change
        .commit("revoke_token", &format!("token:{id}"), "")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
