//! Cloning from the console: one device of an agent's machine copied onto another (a
//! system moved to a new disk), as a run with a report. The target's name is typed again;
//! a target the agent's inventory shows mounted or smaller than the source is refused
//! here, and the agent checks everything again before it writes.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use holdfast_proto::job::CloneTask;
use holdfast_proto::Inventory;
use serde::Deserialize;

use super::caller::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use super::images::{confirmed, device_path, start_restore, unfit, RestoreStarted};
use super::AppState;
use crate::auth::Role;
use crate::jobs::tasks::TaskSpec;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/agents/{id}/clone", post(clone))
}

/// A device copied onto another of the same machine.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneBody {
    /// The disk, partition or volume copied, `/dev/…`.
    source: String,
    /// The device overwritten, `/dev/…`: at least as large, not mounted, not in use.
    target: String,
    /// The target's name typed again: everything on it is replaced.
    confirm: String,
    /// Every sector instead of the used ones.
    #[serde(default)]
    forensic: bool,
    /// On a larger target, grow the last partition and its filesystem.
    #[serde(default)]
    grow: bool,
    /// Zero what the source does not use.
    #[serde(default)]
    zero_unused: bool,
    /// Write unreadable source sectors as zeros and list them (the run ends as warning).
    #[serde(default)]
    ignore_read_errors: bool,
}

/// Clone a device of an agent's machine onto another of its devices: a run with a report.
#[utoipa::path(post, path = "/api/v1/agents/{id}/clone", tag = "agents", params(("id" = i64, Path)), request_body = CloneBody, responses((status = 202, description = "the clone run started; its report follows", body = RestoreStarted), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, description = "not confirmed, the same device twice, a target mounted or too small (the error says which)", body = ErrorBody)), security(("session" = []), ("token" = [])))]
pub(super) async fn clone(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<CloneBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Operator)?;
    let source = device_path("source", &body.source)?;
    let target = device_path("target", &body.target)?;
    if source == target {
        return Err(ApiError::Invalid(format!(
            "source and target are both {source}: choose another device to copy onto"
        )));
    }
    confirmed(&target, &body.confirm)?;
    let agent = match state.store.agent(id).await? {
        Some(a) if a.revoked_at.is_none() => a,
        _ => return Err(ApiError::NotFound(format!("agent {id}"))),
    };
    if let Some(inv) = agent
        .inventory
        .and_then(|t| serde_json::from_str::<Inventory>(&t).ok())
    {
        if let Some(why) = unfit(&inv, &target, size_of(&inv, &source)) {
            return Err(ApiError::Invalid(why));
        }
    }
    let spec = TaskSpec::Clone(CloneTask {
        source,
        target,
        forensic: body.forensic,
        grow: body.grow,
        zero_unused: body.zero_unused,
        ignore_read_errors: body.ignore_read_errors,
    });
    start_restore(&state, &caller, spec, id).await
}

/// The size of `device` as the inventory lists it (0 when it does not).
fn size_of(inv: &Inventory, device: &str) -> u64 {
    let name = device.trim_start_matches("/dev/");
    inv.disks
        .iter()
        .find(|d| d.name == name)
        .map(|d| d.size)
        .or_else(|| inv.volumes.iter().find(|v| v.name == name).map(|v| v.size))
        .unwrap_or(0)
}
