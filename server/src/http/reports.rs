//! Reports (one per run of a job or manual action), with live progress while a run is
//! under way, downloads as JSON and XML, and the images runs wrote.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use holdfast_proto::job::{ImageWritten, Step};
use holdfast_proto::RunReport;
use serde::{Deserialize, Serialize};

use super::caller::Caller;
use super::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use super::{attachment, page_limit, AppState, Page, PageQuery};
use crate::auth::Role;
use crate::jobs::report_xml;
use crate::jobs::LiveProgress;
use crate::store::jobs::{ImageRow, RunFilter, RunRow};
use crate::store::RunState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/reports", get(list))
        .route("/api/v1/reports/{id}", get(show))
        .route("/api/v1/reports/{id}/download", get(download))
        .route("/api/v1/images", get(images))
}

/// A run in lists: state, times, bytes, and live progress while it runs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    /// The report id.
    id: i64,
    job_id: Option<i64>,
    agent_id: i64,
    name: String,
    /// `manual` or `schedule`.
    cause: String,
    scheduled_for: Option<i64>,
    status: RunState,
    created_at: i64,
    started_at: Option<i64>,
    ended_at: Option<i64>,
    bytes_read: i64,
    bytes_written: i64,
    /// While it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<LiveProgress>,
}

/// A run with its report: the agent's host, the steps, the images written and deleted.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    summary: RunSummary,
    /// The agent's host name (empty in reports from before protocol 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<Vec<Step>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    images: Option<Vec<ImageWritten>>,
    /// Images the run's retention deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted: Option<Vec<String>>,
    /// Stored images a verify run validated again.
    #[serde(skip_serializing_if = "Option::is_none")]
    checked: Option<Vec<holdfast_proto::job::ImageCheck>>,
    /// What a restore drill found.
    #[serde(skip_serializing_if = "Option::is_none")]
    drill: Option<holdfast_proto::job::DrillResult>,
}

pub fn summary(state: &AppState, r: &RunRow) -> RunSummary {
    RunSummary {
        id: r.id,
        job_id: r.job_id,
        agent_id: r.agent_id,
        name: r.name.clone(),
        cause: r.cause.clone(),
        scheduled_for: r.scheduled_for,
        status: r.state,
        created_at: r.created_at,
        started_at: r.started_at,
        ended_at: r.ended_at,
        bytes_read: r.bytes_read,
        bytes_written: r.bytes_written,
        progress: (!r.finished()).then(|| state.jobs.progress(r.id)).flatten(),
    }
}

fn parsed(r: &RunRow) -> Option<RunReport> {
    r.report
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
}

/// A run with its report's steps and images.
fn full(state: &AppState, r: &RunRow, report: Option<&RunReport>) -> RunDetail {
    RunDetail {
        summary: summary(state, r),
        host: report.map(|rep| rep.host.clone()),
        steps: report.map(|rep| rep.steps.clone()),
        images: report.map(|rep| rep.images.clone()),
        deleted: report.map(|rep| rep.deleted.clone()),
        checked: report.map(|rep| rep.checked.clone()),
        drill: report.and_then(|rep| rep.drill.clone()),
    }
}

/// `?job_id=&agent_id=&status=&before=&limit=`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    job_id: Option<i64>,
    agent_id: Option<i64>,
    /// queued, running, successful, warning, failed, cancelled or missed.
    status: Option<String>,
    /// Reports older than this id (the `next` of the previous page).
    before: Option<i64>,
    limit: Option<i64>,
}

/// List reports (runs), newest first.
#[utoipa::path(get, path = "/api/v1/reports", tag = "reports", params(ReportQuery), responses((status = 200, description = "a page of reports, newest first", body = Page<RunSummary>), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ReportQuery>,
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

/// Show a report with its steps and images.
#[utoipa::path(get, path = "/api/v1/reports/{id}", tag = "reports", params(("id" = i64, Path)), responses((status = 200, description = "the report with its steps and images (progress while running)", body = RunDetail), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let r = find(&state, id).await?;
    Ok(Json(full(&state, &r, parsed(&r).as_ref())))
}

/// `?format=json|xml`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// `json` (default) or `xml`.
    format: Option<String>,
}

/// Download a report as JSON or XML.
#[utoipa::path(get, path = "/api/v1/reports/{id}/download", tag = "reports", params(("id" = i64, Path), DownloadQuery), responses((status = 200, description = "the report as a JSON or XML file"), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn download(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<DownloadQuery>,
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

/// List the images runs wrote.
#[utoipa::path(get, path = "/api/v1/images", tag = "reports", params(PageQuery), responses((status = 200, description = "a page of images written by runs (deleted ones marked)", body = Page<ImageRow>)), security(("session" = []), ("token" = [])))]
async fn images(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let limit = q.limit()?;
    let rows = state.store.images(q.after.unwrap_or(0), limit).await?;
    Ok(Json(Page::new(rows, limit, |i| i.id)))
}
