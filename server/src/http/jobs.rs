//! Jobs: definitions (operators write them), run now, cancel, export and import.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use holdfast_proto::request::{Check, CheckStatus, JobCheck};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::body::ApiBytes;
use super::caller::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::reports::RunSummary;
use super::{attachment, AppState, Page, PageQuery, Stored};
use crate::auth::Role;
use crate::jobs::job_xml;
use crate::jobs::spec::JobSpec;
use crate::jobs::{job_context, job_luks_context, DispatchError};
use crate::store::jobs::{JobRow, JobSecret, LastRun, RunFilter};
use crate::store::{Change, RunState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/jobs", get(list).post(create))
        .route("/api/v1/jobs/import", post(import))
        .route("/api/v1/jobs/preview", post(preview))
        .route("/api/v1/jobs/{id}", get(show).put(update).delete(remove))
        .route("/api/v1/jobs/{id}/run", post(run_now))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/jobs/{id}/check", post(check))
        .route("/api/v1/jobs/{id}/export", get(export))
}

/// A job as operators write it. The image password and the LUKS passphrase are write-only.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobBody {
    name: String,
    #[serde(default = "yes")]
    enabled: bool,
    spec: JobSpec,
    /// Password of encrypted images (kept in the vault, never shown).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    password: Option<Zeroizing<String>>,
    /// Forget the stored password.
    #[serde(default)]
    clear_password: bool,
    /// Passphrase of the LUKS volume the job images (kept in the vault, never shown): its
    /// contents are then stored decrypted, by the used blocks of the filesystem inside, in
    /// the job's encrypted image. Only for a job that encrypts.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    luks_passphrase: Option<Zeroizing<String>>,
    /// Forget the stored LUKS passphrase.
    #[serde(default)]
    clear_luks_passphrase: bool,
}

/// The longest LUKS passphrase taken, in bytes (cryptsetup's own limit is 512).
const MAX_LUKS_PASSPHRASE: usize = 512;

fn yes() -> bool {
    true
}

/// The exported form of a job: its definition, no secret.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobExport {
    name: String,
    enabled: bool,
    spec: JobSpec,
}

impl JobBody {
    /// The definition as stored, once checked; `stored_password` and `stored_luks` say which
    /// secrets the job has already.
    async fn check(
        &self,
        state: &AppState,
        stored_password: bool,
        stored_luks: bool,
    ) -> Result<String, ApiError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ApiError::Invalid("name must be 1 to 100 characters".into()));
        }
        check_spec(state, &self.spec).await?;
        let has_password = self.password.as_ref().is_some_and(|p| !p.is_empty())
            || (stored_password && !self.clear_password);
        if self.spec.encryption.is_some() && !has_password {
            return Err(ApiError::Invalid(
                "an encrypting job needs a password".into(),
            ));
        }
        let new_luks = self.luks_passphrase.as_ref().filter(|p| !p.is_empty());
        if new_luks.is_some_and(|p| p.len() > MAX_LUKS_PASSPHRASE) {
            return Err(ApiError::Invalid(format!(
                "the LUKS passphrase must be at most {MAX_LUKS_PASSPHRASE} bytes"
            )));
        }
        let has_luks = new_luks.is_some() || (stored_luks && !self.clear_luks_passphrase);
        if has_luks && self.spec.encryption.is_none() {
            return Err(ApiError::Invalid(
                "a job with a LUKS passphrase must encrypt its images: the volume's contents are stored decrypted".into(),
            ));
        }
        serde_json::to_string(&self.spec).map_err(|e| ApiError::Internal(e.to_string()))
    }
}

/// The definition's own rules, and that what it names (resolved through its site) exists.
/// The audit detail of a saved job: its name, and the commands it runs (who set what
/// runs as root stays on record).
fn commands_noted(name: &str, spec: &JobSpec) -> String {
    let commands = spec.commands();
    if commands.is_empty() {
        return name.to_owned();
    }
    let list: Vec<String> = commands
        .iter()
        .map(|(at, c)| format!("{at}: {c}"))
        .collect();
    format!("{name}; commands: {}", list.join("; "))
}

/// Commands run as root on every agent of a job: only admins add or change them. An
/// operator may save a job whose commands stay as they were (`before`: the stored spec).
fn check_commands(
    caller: &Caller,
    spec: &JobSpec,
    before: Option<&JobSpec>,
) -> Result<(), ApiError> {
    if caller.user.role >= Role::Admin {
        return Ok(());
    }
    let now = spec.commands();
    let was = before.map(JobSpec::commands).unwrap_or_default();
    if now != was {
        return Err(ApiError::ForbiddenBecause(
            "only admins may add or change a job's commands (they run as root on its agents); \
             save it without them, or ask an admin"
                .into(),
        ));
    }
    Ok(())
}

async fn check_spec(state: &AppState, spec: &JobSpec) -> Result<(), ApiError> {
    spec.validate().map_err(ApiError::Invalid)?;
    let resolved = spec
        .resolve(&*state.jobs.sites().await?)
        .map_err(ApiError::Invalid)?;
    for a in &resolved.agents {
        if state.store.agent(*a).await?.is_none() {
            return Err(ApiError::Invalid(format!("there is no agent {a}")));
        }
    }
    let Some(target) = state.store.target(resolved.target()).await? else {
        return Err(ApiError::Invalid(format!(
            "there is no target {}",
            resolved.target()
        )));
    };
    if spec.immutability.is_some() {
        if let Some(why) = crate::jobs::not_lockable(&target) {
            return Err(ApiError::Invalid(why));
        }
    }
    Ok(())
}

/// `POST /jobs/preview`: a definition to look at before saving it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewBody {
    spec: JobSpec,
}

/// Preview a job definition: the image name and the next starts, nothing stored.
#[utoipa::path(post, path = "/api/v1/jobs/preview", tag = "jobs", request_body = PreviewBody, responses((status = 200, description = "the image name the first agent would get at the next start, and the next five starts (the site's schedule when the job has none); nothing is stored", body = Preview), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn preview(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<PreviewBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    check_spec(&state, &body.spec).await?;
    let spec = body
        .spec
        .resolve(&*state.jobs.sites().await?)
        .map_err(ApiError::Invalid)?;
    let now = chrono::Utc::now();
    let mut next_runs = Vec::new();
    if let Some(schedule) = &spec.schedule {
        let mut at = now;
        while next_runs.len() < 5 {
            let Some(t) = schedule.next_after(at) else {
                break;
            };
            next_runs.push(t);
            at = t;
        }
    }
    let first = match spec.agents.first() {
        Some(a) => state.store.agent(*a).await?,
        None => None,
    };
    let inventory = first
        .as_ref()
        .and_then(|a| a.inventory.as_deref())
        .and_then(|t| serde_json::from_str::<holdfast_proto::Inventory>(t).ok());
    // What that agent would image (none known: its disks not reported yet).
    let sources = spec.sources_on(inventory.as_ref()).unwrap_or_default();
    let computer = first
        .map(|a| a.hostname)
        .unwrap_or_else(|| "COMPUTER".into());
    let vars = crate::jobs::template::Vars {
        computer: &computer,
        user: "root",
        at: next_runs.first().copied().unwrap_or(now),
        run_id: None,
    };
    let mut name = crate::jobs::template::image_name(&spec.folder, &spec.name_template, &vars)
        .map_err(ApiError::Invalid)?;
    if let (true, Some(s)) = (sources.len() > 1, sources.first()) {
        name = crate::jobs::template::source_name(&name, s);
    }
    let tz: chrono_tz::Tz = spec
        .schedule
        .as_ref()
        .and_then(|s| s.timezone.parse().ok())
        .unwrap_or(chrono_tz::UTC);
    Ok(Json(Preview {
        name,
        computer,
        agents: spec.agents.len(),
        sources: sources.len(),
        next_runs: next_runs
            .iter()
            .map(|t| {
                t.with_timezone(&tz)
                    .format("%a %Y-%m-%d %H:%M %Z")
                    .to_string()
            })
            .collect(),
    }))
}

/// What a definition would do, before it is saved.
#[derive(Serialize, utoipa::ToSchema)]
struct Preview {
    /// The first agent's image name at the next start (`{run}` stands for the run id).
    name: String,
    /// The host name it was filled with.
    computer: String,
    /// How many agents the job runs on.
    agents: usize,
    /// How many sources the first agent would image (its disks, for all disks; 0 when it
    /// has not reported them yet); with several, `name` is the first one's.
    sources: usize,
    /// The next five starts, in the schedule's time zone.
    next_runs: Vec<String>,
}

/// A job as shown: its definition (no secrets) and its last run.
#[derive(Serialize, utoipa::ToSchema)]
struct JobView {
    id: i64,
    name: String,
    enabled: bool,
    spec: JobSpec,
    /// The image password, when the job encrypts.
    password: Stored,
    /// The passphrase of the LUKS volume it images.
    luks_passphrase: Stored,
    last_run: Option<LastRun>,
    created_at: i64,
    updated_at: i64,
}

/// The runs a "run now" started.
#[derive(Serialize, utoipa::ToSchema)]
struct Started {
    runs: Vec<RunSummary>,
}

/// What a job check found on each agent.
#[derive(Serialize, utoipa::ToSchema)]
struct Checked {
    agents: Vec<AgentChecked>,
}

/// One agent's answer to a job check.
#[derive(Serialize, utoipa::ToSchema)]
struct AgentChecked {
    agent_id: i64,
    result: JobCheck,
}

/// What a cancel asked for.
#[derive(Serialize, utoipa::ToSchema)]
struct Cancelled {
    /// The runs asked to stop (their reports follow, cancelled).
    cancelling: Vec<i64>,
    /// Runs that could not be asked, and why.
    errors: Vec<String>,
}

/// Seal and store the password and LUKS passphrase of job `id` as `body` asks.
async fn store_secrets(
    state: &AppState,
    change: &mut Change,
    id: i64,
    body: &JobBody,
) -> Result<(), ApiError> {
    let seal = |context: String, p: &str| {
        state
            .vault
            .seal(&context, p.as_bytes())
            .map_err(|e| ApiError::Internal(e.to_string()))
    };
    if body.clear_password {
        change
            .set_job_secret(id, JobSecret::ImagePassword, None)
            .await?;
    }
    if let Some(p) = body.password.as_ref().filter(|p| !p.is_empty()) {
        let sealed = seal(job_context(id), p)?;
        change
            .set_job_secret(id, JobSecret::ImagePassword, Some(&sealed))
            .await?;
    }
    if body.clear_luks_passphrase {
        change
            .set_job_secret(id, JobSecret::LuksPassphrase, None)
            .await?;
    }
    if let Some(p) = body.luks_passphrase.as_ref().filter(|p| !p.is_empty()) {
        let sealed = seal(job_luks_context(id), p)?;
        change
            .set_job_secret(id, JobSecret::LuksPassphrase, Some(&sealed))
            .await?;
    }
    Ok(())
}

/// A job as shown, with its last run.
async fn view(state: &AppState, j: &JobRow) -> Result<JobView, ApiError> {
    let last = state.store.last_run(j.id).await?;
    shown(j, last)
}

fn shown(j: &JobRow, last_run: Option<LastRun>) -> Result<JobView, ApiError> {
    // Written by this server from a checked definition: unreadable only if damaged.
    let spec: JobSpec = serde_json::from_str(&j.spec).map_err(|e| {
        ApiError::Internal(format!(
            "the stored definition of job {} cannot be read: {e}",
            j.id
        ))
    })?;
    Ok(JobView {
        id: j.id,
        name: j.name.clone(),
        enabled: j.enabled,
        spec,
        password: Stored::when(j.secret.is_some()),
        luks_passphrase: Stored::when(j.luks_secret.is_some()),
        last_run,
        created_at: j.created_at,
        updated_at: j.updated_at,
    })
}

async fn find(state: &AppState, id: i64) -> Result<JobRow, ApiError> {
    state
        .store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id}")))
}

/// List jobs with their last run.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(PageQuery), responses((status = 200, description = "a page of jobs with their last run", body = Page<JobView>)), security(("session" = []), ("token" = [])))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let limit = q.limit()?;
    let page = Page::new(
        state
            .store
            .jobs_with_last_run(q.after.unwrap_or(0), limit)
            .await?,
        limit,
        |(j, _)| j.id,
    );
    let items = page
        .items
        .into_iter()
        .map(|(j, last)| shown(&j, last))
        .collect::<Result<_, _>>()?;
    Ok(Json(Page {
        items,
        next: page.next,
    }))
}

/// Create a job.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = JobBody, responses((status = 201, description = "the job", body = JobView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<JobBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Operator)?;
    check_commands(&caller, &body.spec, None)?;
    let spec = body.check(&state, false, false).await?;
    let mut change = state.store.change(&caller.user.name).await?;
    let j = change
        .create_job(body.name.trim(), body.enabled, &spec)
        .await?;
    store_secrets(&state, &mut change, j.id, &body).await?;
    change
        .commit(
            "create_job",
            &format!("job:{}", j.id),
            &commands_noted(&j.name, &body.spec),
        )
        .await?;
    let j = find(&state, j.id).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &j).await?)))
}

/// Show a job.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = i64, Path)), responses((status = 200, description = "the job", body = JobView), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let j = find(&state, id).await?;
    Ok(Json(view(&state, &j).await?))
}

/// Change a job.
#[utoipa::path(put, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = i64, Path)), request_body = JobBody, responses((status = 200, description = "the job", body = JobView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<JobBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Operator)?;
    let old = find(&state, id).await?;
    let old_spec = state.jobs.spec_of(&old).await.ok();
    check_commands(&caller, &body.spec, old_spec.as_ref())?;
    let spec = body
        .check(&state, old.secret.is_some(), old.luks_secret.is_some())
        .await?;
    let mut change = state.store.change(&caller.user.name).await?;
    change
        .update_job(id, body.name.trim(), body.enabled, &spec)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    store_secrets(&state, &mut change, id, &body).await?;
    change
        .commit(
            "update_job",
            &format!("job:{id}"),
            &commands_noted(body.name.trim(), &body.spec),
        )
        .await?;
    let j = find(&state, id).await?;
    Ok(Json(view(&state, &j).await?))
}

/// Delete a job (its reports stay).
#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = i64, Path)), responses((status = 204), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Operator)?;
    let mut change = state.store.change(&caller.user.name).await?;
    if !change.delete_job(id).await? {
        return Err(ApiError::NotFound(format!("job {id}")));
    }
    change
        .commit("delete_job", &format!("job:{id}"), "")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /jobs/{id}/run`: on one agent of the job, or all of them.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    #[serde(default)]
    agent_id: Option<i64>,
}

/// Run a job now.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/run", tag = "jobs", params(("id" = i64, Path)), request_body = RunBody, responses((status = 202, description = "the runs started (a run whose agent is offline is recorded as failed)", body = Started), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn run_now(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiBytes(body): ApiBytes,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Operator)?;
    let (job, agents) = job_and_agents(&state, id, &body).await?;
    let mut runs = Vec::new();
    for agent in agents {
        match state.jobs.start(&job, agent, &caller.user.name).await {
            Ok(run) => runs.push(super::reports::summary(&state, &run)),
            Err(e @ (DispatchError::Busy(..) | DispatchError::AlreadyRan(_))) => {
                return Err(ApiError::Conflict(e.to_string()))
            }
            Err(e @ (DispatchError::Spec(_) | DispatchError::NotFound(_))) => {
                return Err(ApiError::Invalid(e.to_string()))
            }
            Err(e) => return Err(ApiError::Internal(e.to_string())),
        }
    }
    Ok((StatusCode::ACCEPTED, Json(Started { runs })))
}

/// Check whether a job could run on its agents now, changing nothing.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/check", tag = "jobs", params(("id" = i64, Path)), request_body = RunBody, responses((status = 200, description = "per agent: can the job run there now (source, target, space, base image), nothing changed", body = Checked), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn check(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiBytes(body): ApiBytes,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Operator)?;
    let (job, agents) = job_and_agents(&state, id, &body).await?;
    let mut out = Vec::new();
    for agent in agents {
        let result = match state.jobs.check(&job, agent).await {
            Ok(v) => v,
            Err(e) => JobCheck::new(vec![Check {
                check: "agent".into(),
                status: CheckStatus::Error,
                detail: e.to_string(),
            }]),
        };
        out.push(AgentChecked {
            agent_id: agent,
            result,
        });
    }
    Ok(Json(Checked { agents: out }))
}

/// The job and the agents a run or check concerns: the body's `agent_id` (one of the
/// job's), or all of them.
async fn job_and_agents(
    state: &AppState,
    id: i64,
    body: &[u8],
) -> Result<(JobRow, Vec<i64>), ApiError> {
    // The body is optional: none means every agent of the job.
    let body: RunBody = if body.iter().all(u8::is_ascii_whitespace) {
        RunBody::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::Invalid(format!("the request body is not valid: {e}")))?
    };
    let job = find(state, id).await?;
    let spec = state
        .jobs
        .spec_of(&job)
        .await
        .map_err(|e| ApiError::Invalid(format!("job {id}: {e}")))?;
    let agents = match body.agent_id {
        Some(a) if spec.agents.contains(&a) => vec![a],
        Some(a) => {
            return Err(ApiError::Invalid(format!(
                "job {id} does not run on agent {a}"
            )))
        }
        None => spec.agents.clone(),
    };
    Ok((job, agents))
}

/// Cancel a job's running runs.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = i64, Path)), responses((status = 202, description = "the runs asked to stop", body = Cancelled), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Operator)?;
    find(&state, id).await?;
    let open = state
        .store
        .runs(
            &RunFilter {
                job_id: Some(id),
                state: Some(RunState::Running),
                ..RunFilter::default()
            },
            i64::MAX,
            500,
        )
        .await?;
    let mut asked = Vec::new();
    let mut errors = Vec::new();
    for run in open {
        match state.jobs.cancel(&run).await {
            Ok(()) => asked.push(run.id),
            Err(e) => errors.push(format!("run {}: {e}", run.id)),
        }
    }
    let asked_text = asked
        .iter()
        .map(|r| format!("run:{r}"))
        .collect::<Vec<_>>()
        .join(" ");
    state
        .store
        .record_action(
            &caller.user.name,
            "cancel_job",
            &format!("job:{id}"),
            &asked_text,
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Cancelled {
            cancelling: asked,
            errors,
        }),
    ))
}

/// `?format=json|xml`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `json` (default) or `xml`.
    format: Option<String>,
}

/// Export a job's definition as JSON or XML (no secrets).
#[utoipa::path(get, path = "/api/v1/jobs/{id}/export", tag = "jobs", params(("id" = i64, Path), ExportQuery), responses((status = 200, description = "the job's definition as a JSON or XML file (no secrets)", body = JobExport), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn export(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let j = find(&state, id).await?;
    let spec: JobSpec =
        serde_json::from_str(&j.spec).map_err(|e| ApiError::Internal(format!("job {id}: {e}")))?;
    let doc = serde_json::to_value(JobExport {
        name: j.name.clone(),
        enabled: j.enabled,
        spec,
    })
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(match q.format.as_deref().unwrap_or("json") {
        "json" => attachment(
            "application/json",
            &format!("job-{id}.json"),
            serde_json::to_string_pretty(&doc).map_err(|e| ApiError::Internal(e.to_string()))?,
        ),
        "xml" => attachment(
            "application/xml",
            &format!("job-{id}.xml"),
            job_xml::to_xml("job", &doc),
        ),
        _ => return Err(ApiError::Invalid("format must be json or xml".into())),
    })
}

/// Import a job file (JSON or XML).
#[utoipa::path(post, path = "/api/v1/jobs/import", tag = "jobs", request_body(content = JobExport, description = "a job file as exported: JSON, or XML with an XML content type"), responses((status = 201, description = "the imported job", body = JobView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn import(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    ApiBytes(file): ApiBytes,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Operator)?;
    let is_xml = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("xml"));
    // Parsing a file of up to the body limit takes CPU time: off the async threads, so
    // agents' heartbeats and other requests go on meanwhile.
    let doc: JobExport = super::blocking(move || -> Result<JobExport, ApiError> {
        let value = if is_xml {
            let text = std::str::from_utf8(&file)
                .map_err(|_| ApiError::Invalid("the job file is not UTF-8 text".into()))?;
            job_xml::from_xml("job", text)
                .map_err(|e| ApiError::Invalid(format!("the job file: {e}")))?
        } else {
            serde_json::from_slice(&file)
                .map_err(|e| ApiError::Invalid(format!("the job file is not valid JSON: {e}")))?
        };
        serde_json::from_value(value).map_err(|e| ApiError::Invalid(format!("the job file: {e}")))
    })
    .await??;
    let body = JobBody {
        name: doc.name,
        // An imported job that needs a password stays off until one is set.
        enabled: doc.enabled && doc.spec.encryption.is_none(),
        spec: doc.spec,
        password: None,
        clear_password: false,
        luks_passphrase: None,
        clear_luks_passphrase: false,
    };
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::Invalid("name must be 1 to 100 characters".into()));
    }
    check_commands(&caller, &body.spec, None)?;
    check_spec(&state, &body.spec).await?;
    let spec = serde_json::to_string(&body.spec).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut change = state.store.change(&caller.user.name).await?;
    let j = change.create_job(name, body.enabled, &spec).await?;
    change
        .commit(
            "import_job",
            &format!("job:{}", j.id),
            &commands_noted(&j.name, &body.spec),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(view(&state, &j).await?)))
}
