//! Console login and logout (a session cookie), and the caller's own account.

use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::caller::{cookie, Caller, ClientIp, CSRF_COOKIE, SESSION_COOKIE};
use super::error::{ApiError, ApiJson, ErrorBody};
use super::{blocking, AppState};
use crate::auth::{csrf_token, hash_password, new_secret, secret_hash, verify_password};
use crate::store::now;
use crate::store::users::User;

/// How long a console session lasts.
const SESSION_SECONDS: i64 = 12 * 3600;
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 10;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/session", post(login).delete(logout))
        .route("/api/v1/me", get(me))
        .route("/api/v1/me/password", put(change_password))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct Login {
    /// User name.
    name: String,
    #[schema(value_type = String)]
    password: Zeroizing<String>,
}

/// The session cookie (for the server only) and the CSRF cookie (readable by scripts).
fn session_cookies(secret: &str, max_age: i64) -> Result<HeaderMap, ApiError> {
    let csrf = if secret.is_empty() {
        String::new()
    } else {
        csrf_token(secret)
    };
    let mut headers = HeaderMap::new();
    for (cookie, more) in [
        (format!("{SESSION_COOKIE}={secret}"), "; HttpOnly"),
        (format!("{CSRF_COOKIE}={csrf}"), ""),
    ] {
        headers.append(
            SET_COOKIE,
            HeaderValue::from_str(&format!(
                "{cookie}; Path=/; Max-Age={max_age}{more}; Secure; SameSite=Strict"
            ))
            .map_err(|e| ApiError::Internal(e.to_string()))?,
        );
    }
    Ok(headers)
}

/// A new session: the user, and the token its changes must carry in `x-csrf-token`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct LoggedIn {
    #[serde(flatten)]
    user: User,
    csrf_token: String,
}

/// Log in: start a console session.
#[utoipa::path(post, path = "/api/v1/session", tag = "session", request_body = Login, responses((status = 200, description = "logged in; sets the session and CSRF cookies", body = LoggedIn), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<Login>,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(wait) = state.limiter.retry_after(ip) {
        return Err(ApiError::RateLimited(wait));
    }
    let found = state.store.user_with_hash(&body.name).await?;
    let password = body.password.clone();
    // Verify against a dummy hash when the user is unknown, so timing does not tell.
    let (user, hash) = match found {
        Some((u, h)) => (Some(u), h),
        None => (None, state.dummy_hash.clone()),
    };
    let ok = blocking(move || verify_password(&password, &hash)).await?;
    let user = match user {
        Some(u) if ok && !u.disabled => u,
        _ => {
            state.limiter.failed(ip);
            // The name as typed, control characters escaped and cut short: it cannot forge
            // a log line or an audit entry.
            let shown: String = body
                .name
                .chars()
                .take(100)
                .flat_map(char::escape_debug)
                .collect();
            tracing::warn!(user = %shown, %ip, "failed login");
            state
                .store
                .record_action(
                    &shown,
                    "login_failed",
                    &format!("user:{shown}"),
                    &ip.to_string(),
                )
                .await?;
            return Err(ApiError::BadLogin);
        }
    };
    state.limiter.succeeded(ip);
    let secret = new_secret("").map_err(ApiError::Internal)?;
    let mut change = state.store.change(&user.name).await?;
    change
        .create_session(&secret_hash(&secret), user.id, now() + SESSION_SECONDS)
        .await?;
    change
        .commit("login", &format!("user:{}", user.id), &ip.to_string())
        .await?;
    let headers = session_cookies(&secret, SESSION_SECONDS)?;
    Ok((
        headers,
        Json(LoggedIn {
            csrf_token: csrf_token(&secret),
            user,
        }),
    ))
}

/// Log out: end the session (with the session's CSRF token, like every change: another
/// site cannot log a user out).
#[utoipa::path(delete, path = "/api/v1/session", tag = "session", responses((status = 204, description = "logged out"), (status = 403, description = "the session's CSRF token is missing", body = ErrorBody)))]
async fn logout(
    State(state): State<AppState>,
    parts: axum::http::request::Parts,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(session) = cookie(&parts, SESSION_COOKIE) {
        let sent = parts
            .headers
            .get(super::caller::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !crate::auth::constant_time_eq(sent, &csrf_token(session)) {
            return Err(ApiError::Csrf);
        }
        state.store.delete_session(&secret_hash(session)).await?;
    }
    Ok((StatusCode::NO_CONTENT, session_cookies("", 0)?))
}

/// Who is calling, and with which role.
#[utoipa::path(get, path = "/api/v1/me", tag = "session", responses((status = 200, body = User), (status = 401, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn me(caller: Caller) -> impl IntoResponse {
    Json(caller.user)
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ChangePassword {
    #[schema(value_type = String)]
    current: Zeroizing<String>,
    #[schema(value_type = String)]
    new: Zeroizing<String>,
}

/// Change the caller's password (the one call, with `GET /api/v1/me`, a user who must
/// change their password may make).
#[utoipa::path(put, path = "/api/v1/me/password", tag = "session", request_body = ChangePassword, responses((status = 204), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ChangePassword>,
) -> Result<impl IntoResponse, ApiError> {
    if body.new.chars().count() < MIN_PASSWORD {
        return Err(ApiError::Invalid(format!(
            "the new password must have at least {MIN_PASSWORD} characters"
        )));
    }
    if body.new == body.current {
        return Err(ApiError::Invalid(
            "the new password must differ from the current one".into(),
        ));
    }
    let Some((_, hash)) = state.store.user_with_hash(&caller.user.name).await? else {
        return Err(ApiError::Unauthorized);
    };
    let current = body.current.clone();
    if !blocking(move || verify_password(&current, &hash)).await? {
        return Err(ApiError::Invalid("the current password is wrong".into()));
    }
    let new = body.new.clone();
    let hash = blocking(move || hash_password(&new))
        .await?
        .map_err(ApiError::Internal)?;
    let mut change = state.store.change(&caller.user.name).await?;
    change.set_password(caller.user.id, &hash).await?;
    change
        .commit("change_password", &format!("user:{}", caller.user.id), "")
        .await?;
    // The first admin's generated password, written at first start, is no longer valid.
    if caller.user.must_change_password {
        if let Some(file) = &state.first_start_file {
            match std::fs::remove_file(file) {
                Ok(()) => tracing::info!(file = %file.display(), "first-start file removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "cannot remove the first-start file")
                }
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
