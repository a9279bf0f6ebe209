//! Personal API tokens: the secret is shown once, at creation.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::caller::Caller;
use super::error::{ApiError, ApiJson, ErrorBody};
use super::AppState;
use crate::auth::{new_secret, secret_hash, Role};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tokens", get(list).post(create))
        .route("/api/v1/tokens/{id}", delete(revoke))
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", responses((status = 200, description = "the caller's tokens", body = Object)), security(("session" = []), ("token" = [])))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(
        json!({ "items": state.store.tokens(caller.user.id).await? }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewToken {
    name: String,
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewToken, responses((status = 201, description = "the token and its secret (shown once)", body = Object), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
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
    let secret = new_secret("hft_").map_err(ApiError::Internal)?;
    let token = state
        .store
        .create_token(caller.user.id, name, &secret_hash(&secret))
        .await?;
    state
        .store
        .audit(
            &caller.user.name,
            "create_token",
            &format!("token:{}", token.id),
            name,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token, "secret": secret })),
    ))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = i64, Path)), responses((status = 204), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    if !state.store.revoke_token(caller.user.id, id).await? {
        return Err(ApiError::NotFound(format!("token {id}")));
    }
    state
        .store
        .audit(
            &caller.user.name,
            "revoke_token",
            &format!("token:{id}"),
            "",
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
