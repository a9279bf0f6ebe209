//! Health, metrics, server information and the audit log.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::caller::Caller;
use super::error::{ApiError, ApiQuery, ErrorBody};
use super::{AppState, Page};
use crate::auth::Role;
use crate::store::audit::AuditEntry;
use crate::store::Engine;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/info", get(info))
        .route("/api/v1/audit", get(audit))
}

/// 200 when the store answers, 503 otherwise (for load balancers and monitoring).
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, description = "the database answers", body = String), (status = 503, body = String)))]
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    if state.store.ping().await {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n")
    }
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "Prometheus text format", body = String)))]
async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let users = state.store.count_users().await?;
    let m = &state.metrics;
    let body = format!(
        "# HELP holdfast_http_requests_total HTTP requests served.\n\
         # TYPE holdfast_http_requests_total counter\n\
         holdfast_http_requests_total {}\n\
         # HELP holdfast_http_errors_total HTTP requests answered with a 5xx status.\n\
         # TYPE holdfast_http_errors_total counter\n\
         holdfast_http_errors_total {}\n\
         # HELP holdfast_users Console and API users.\n\
         # TYPE holdfast_users gauge\n\
         holdfast_users {users}\n\
         # HELP holdfast_leader 1 when this instance leads the work that must happen once.\n\
         # TYPE holdfast_leader gauge\n\
         holdfast_leader {}\n\
         # HELP holdfast_agents_online Agents with their channel open to this instance.\n\
         # TYPE holdfast_agents_online gauge\n\
         holdfast_agents_online {}\n\
         # HELP holdfast_connections Open HTTPS connections serving requests (agent channels: holdfast_agents_online).\n\
         # TYPE holdfast_connections gauge\n\
         holdfast_connections {}\n\
         # HELP holdfast_uptime_seconds Seconds since the server started.\n\
         # TYPE holdfast_uptime_seconds gauge\n\
         holdfast_uptime_seconds {}\n",
        m.requests.load(Ordering::Relaxed),
        m.errors.load(Ordering::Relaxed),
        u8::from(state.cluster.leadership.believes_leading()),
        state.gateway.online_count(),
        state.listener.as_ref().map_or(0, |h| h.connection_count()),
        state.started.elapsed().as_secs(),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body))
}

/// Server version, database engine, certificate fingerprint and uptime.
#[utoipa::path(get, path = "/api/v1/info", tag = "meta", responses((status = 200, description = "version, database engine, certificate fingerprint, uptime", body = Info)), security(("session" = []), ("token" = [])))]
async fn info(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(Info {
        version: env!("CARGO_PKG_VERSION"),
        database: match state.store.engine() {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        },
        certificate_fingerprint: state.fingerprint.clone(),
        uptime_seconds: state.started.elapsed().as_secs(),
        instance: state.cluster.id.clone(),
        leading: state.cluster.leadership.leading().await.is_some(),
        other_instances: state.cluster.other_names(),
    }))
}

/// What this server is.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Info {
    version: &'static str,
    /// `sqlite` or `postgres`.
    database: &'static str,
    /// What agents pin (`SHA256:…`).
    certificate_fingerprint: String,
    uptime_seconds: u64,
    /// This server instance (several may share a PostgreSQL store).
    instance: String,
    /// True when this instance leads the work that must happen once (scheduled starts,
    /// mail, alerts); always true with SQLite.
    leading: bool,
    /// The other instances on the store that are alive, by name (host:port).
    other_instances: Vec<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    before: Option<i64>,
    limit: Option<i64>,
}

/// Read the audit log, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "meta", params(AuditQuery), responses((status = 200, description = "a page of the audit log, newest first", body = Page<AuditEntry>), (status = 403, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let limit = super::page_limit(q.limit)?;
    let items = state
        .store
        .audit_log(q.before.unwrap_or(i64::MAX), limit)
        .await?;
    Ok(Json(Page::new(items, limit, |e| e.id)))
}
