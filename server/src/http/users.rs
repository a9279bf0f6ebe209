//! User management (admins only).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::caller::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::session::MIN_PASSWORD;
use super::{blocking, AppState, Page, PageQuery};
use crate::auth::{hash_password, Role};
use crate::store::users::User;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", get(list).post(create))
        .route("/api/v1/users/{id}", delete(remove).put(update))
}

/// List users.
#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(PageQuery), responses((status = 200, description = "a page of users", body = Page<User>), (status = 403, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let limit = q.limit()?;
    let items = state.store.users(q.after.unwrap_or(0), limit).await?;
    Ok(Json(Page::new(items, limit, |u| u.id)))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewUser {
    name: String,
    #[schema(value_type = String)]
    password: Zeroizing<String>,
    role: Role,
    /// The user must choose a new password at their first login (the admin set this one).
    #[serde(default)]
    must_change_password: bool,
}

/// A user name: 1–64 letters, digits, `.`, `_`, `-` or `@`.
pub fn valid_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::Invalid(
            "user names have 1 to 64 letters, digits, '.', '_', '-' or '@'".into(),
        ))
    }
}

/// Create a user.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser, responses((status = 201, body = User), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    valid_name(&body.name)?;
    if body.password.chars().count() < MIN_PASSWORD {
        return Err(ApiError::Invalid(format!(
            "passwords must have at least {MIN_PASSWORD} characters"
        )));
    }
    let password = body.password.clone();
    let hash = blocking(move || hash_password(&password))
        .await?
        .map_err(ApiError::Internal)?;
    let mut change = state.store.change(&caller.user.name).await?;
    let user = change
        .create_user(&body.name, &hash, body.role, body.must_change_password)
        .await?;
    change
        .commit(
            "create_user",
            &format!("user:{}", user.id),
            &format!("name={} role={}", user.name, user.role.as_str()),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UserChange {
    role: Role,
    #[serde(default)]
    disabled: bool,
}

/// Change a user's role or disable them.
#[utoipa::path(put, path = "/api/v1/users/{id}", tag = "users", params(("id" = i64, Path)), request_body = UserChange, responses((status = 200, body = User), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<UserChange>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    // Nobody locks themselves out: there may be no other admin.
    if id == caller.user.id && (body.role != Role::Admin || body.disabled) {
        return Err(ApiError::Invalid(
            "you cannot lower or disable your own account".into(),
        ));
    }
    let mut change = state.store.change(&caller.user.name).await?;
    let user = change
        .update_user(id, body.role, body.disabled)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {id}")))?;
    change
        .commit(
            "update_user",
            &format!("user:{id}"),
            &format!("role={} disabled={}", user.role.as_str(), user.disabled),
        )
        .await?;
    Ok(Json(user))
}

/// Delete a user.
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", params(("id" = i64, Path)), responses((status = 204), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    if id == caller.user.id {
        return Err(ApiError::Invalid(
            "you cannot delete your own account".into(),
        ));
    }
    let mut change = state.store.change(&caller.user.name).await?;
    if !change.delete_user(id).await? {
        return Err(ApiError::NotFound(format!("user {id}")));
    }
    change
        .commit("delete_user", &format!("user:{id}"), "")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
