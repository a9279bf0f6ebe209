//! Reports (one per run of a job or manual action), with live progress while a run is
//! under way, downloads as JSON and XML, and the images runs wrote.

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use holdfast_proto::RunReport;
use serde::Deserialize;
use serde_json::{json, Value};

use super::caller::Caller;
use super::error::{ApiError, ErrorBody};
use super::{attachment, page_limit, AppState, Page, PageQuery};
use crate::auth::Role;
use crate::jobs::report_xml;
use crate::store::jobs::{RunFilter, RunRow};
use crate::store::RunState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/reports", get(list))
        .route("/api/v1/reports/{id}", get(show))
        .route("/api/v1/reports/{id}/download", get(download))
        .route("/api/v1/images", get(images))
}

/// A run in lists: state, times, bytes, and live progress while it runs.
pub fn summary(state: &AppState, r: &RunRow) -> Value {
    let mut v = json!({
        "id": r.id,
        "job_id": r.job_id,
        "agent_id": r.agent_id,
        "name": r.name,
        "cause": r.cause,
        "scheduled_for": r.scheduled_for,
        "status": r.state,
        "created_at": r.created_at,
        "started_at": r.started_at,
        "ended_at": r.ended_at,
        "bytes_read": r.bytes_read,
        "bytes_written": r.bytes_written,
    });
    if !r.finished() {
        v["progress"] = json!(state.jobs.progress(r.id));
    }
    v
}

fn parsed(r: &RunRow) -> Option<RunReport> {
    r.report
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
}

/// A run with its report's steps and images.
fn full(state: &AppState, r: &RunRow, report: Option<&RunReport>) -> Value {
    let mut v = summary(state, r);
    if let Some(rep) = report {
        v["host"] = json!(rep.host);
        v["steps"] = json!(rep.steps);
        v["images"] = json!(rep.images);
        v["deleted"] = json!(rep.deleted);
    }
    v
}

/// `?job_id=&agent_id=&status=&before=&limit=`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReportQuery {
    job_id: Option<i64>,
    agent_id: Option<i64>,
    /// queued, running, successful, warning, failed, cancelled or missed.
    status: Option<String>,
    /// Reports older than this id (the `next` of the previous page).
    before: Option<i64>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/reports", tag = "reports", params(ReportQuery), responses((status = 200, description = "a page of reports, newest first", body = Object), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ReportQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let limit = page_limit(q.limit)?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<RunState>)
        .transpose()
        .map_err(|e| ApiError::Invalid(format!("status: {e}")))?;
    let filter = RunFilter {
        job_id: q.job_id,
        agent_id: q.agent_id,
        state: status,
    };
    let runs = state
        .store
        .runs(&filter, q.before.unwrap_or(i64::MAX), limit)
        .await?;
    Ok(Json(
        Page::new(runs, limit, |r| r.id).map(|r| summary(&state, &r)),
    ))
}

async fn find(state: &AppState, id: i64) -> Result<RunRow, ApiError> {
    state
        .store
        .run(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("report {id}")))
}

#[utoipa::path(get, path = "/api/v1/reports/{id}", tag = "reports", params(("id" = i64, Path)), responses((status = 200, description = "the report with its steps and images (progress while running)", body = Object), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let r = find(&state, id).await?;
    Ok(Json(full(&state, &r, parsed(&r).as_ref())))
}

/// `?format=json|xml`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DownloadQuery {
    /// `json` (default) or `xml`.
    format: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/reports/{id}/download", tag = "reports", params(("id" = i64, Path), DownloadQuery), responses((status = 200, description = "the report as a JSON or XML file"), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<DownloadQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let r = find(&state, id).await?;
    let report = parsed(&r);
    let (mime, ext, body) = match q.format.as_deref().unwrap_or("json") {
        "xml" => (
            "application/xml",
            "xml",
            report_xml::render(&r, report.as_ref()),
        ),
        "json" => (
            "application/json",
            "json",
            serde_json::to_string_pretty(&full(&state, &r, report.as_ref()))
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        ),
        _ => return Err(ApiError::Invalid("format must be json or xml".into())),
    };
    Ok(attachment(mime, &format!("report-{id}.{ext}"), body))
}

#[utoipa::path(get, path = "/api/v1/images", tag = "reports", params(PageQuery), responses((status = 200, description = "a page of images written by runs (deleted ones marked)", body = Object)), security(("session" = []), ("token" = [])))]
async fn images(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let limit = q.limit()?;
    let rows = state.store.images(q.after.unwrap_or(0), limit).await?;
    Ok(Json(Page::new(rows, limit, |i| i.id)))
}
