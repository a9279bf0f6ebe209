//! The authenticated caller of a request: from a session cookie (console) or a bearer
//! token (API clients). Every route that is not public takes a [`Caller`] and states the
//! role it needs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::error::ApiError;
use super::AppState;
use crate::auth::{csrf_token, secret_hash, Role};
use crate::store::users::User;

/// Name of the console's session cookie.
pub const SESSION_COOKIE: &str = "holdfast_session";
/// Name of the cookie that carries the session's CSRF token for scripts (pages also embed
/// it); a change made with a session cookie must repeat it in [`CSRF_HEADER`].
pub const CSRF_COOKIE: &str = "holdfast_csrf";
/// The header a session's changes carry their CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
}

/// What a user who must change their password may still call: who they are, and the change.
const BEFORE_PASSWORD_CHANGE: [(&str, &str); 2] =
    [("GET", "/api/v1/me"), ("PUT", "/api/v1/me/password")];

impl Caller {
    /// The caller, unless they must change their password first and this is not the change.
    fn checked(user: User, parts: &Parts) -> Result<Self, ApiError> {
        let allowed = BEFORE_PASSWORD_CHANGE
            .iter()
            .any(|(m, p)| parts.method.as_str() == *m && parts.uri.path() == *p);
        if user.must_change_password && !allowed {
            return Err(ApiError::PasswordChange);
        }
        Ok(Caller { user })
    }

    /// Refuse unless the caller's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.user.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(token) = bearer {
            let user = state
                .store
                .token_user(&secret_hash(token.trim()))
                .await?
                .ok_or(ApiError::Unauthorized)?;
            return Caller::checked(user, parts);
        }
        if let Some(session) = cookie(parts, SESSION_COOKIE) {
            let user = state
                .store
                .session_user(&secret_hash(session))
                .await?
                .ok_or(ApiError::Unauthorized)?;
            // Another site can make the browser send the cookie, but cannot read the
            // token: every change must carry it.
            if !parts.method.is_safe() {
                let sent = parts
                    .headers
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !crate::auth::constant_time_eq(sent, &csrf_token(session)) {
                    return Err(ApiError::Csrf);
                }
            }
            return Caller::checked(user, parts);
        }
        Err(ApiError::Unauthorized)
    }
}

/// The client's address (unspecified when the connection info is not available, as in
/// tests that call the router directly).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ))
    }
}
