//! Images and the files in them: an image with its chain and what its run said about it,
//! folder listings of any image point, and downloads of a file (as it is) or a folder (as
//! `.tar.gz` or `.zip`), streamed from the agent that reads the image through the server to
//! the client without a copy on the server. Listing needs the viewer role; downloading,
//! which takes data out, the operator role, and is recorded in the audit log.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use holdfast_proto::job::ImageWritten;
use holdfast_proto::{ExportFormat, ImageRef, Inventory, Listing};
use serde::{Deserialize, Serialize};

use super::caller::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::reports::{summary, RunSummary};
use super::AppState;
use crate::auth::Role;
use crate::jobs::image_files::{chain_of, written_by_run};
use crate::jobs::tasks::TaskSpec;
use crate::jobs::DispatchError;
use crate::store::jobs::ImageRow;

/// Longest path inside an image a request may name.
const MAX_PATH: usize = 4096;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/images/{id}", get(show))
        .route("/api/v1/images/{id}/files", get(files))
        .route("/api/v1/images/{id}/download", get(download))
        .route("/api/v1/images/{id}/restore-files", post(restore_files))
        .route("/api/v1/images/{id}/restore-volume", post(restore_volume))
}

/// Paths a file restore may name at once.
const MAX_PATHS: usize = 100;

/// An image, its chain and what its run reported about it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImageDetail {
    image: ImageRow,
    /// What the run that wrote it said: source, filesystem, target, coverage, consistency,
    /// warnings (none for reports stored before these were kept).
    written: Option<ImageWritten>,
    /// The chain up to this image, oldest (the full image) first, this one last.
    chain: Vec<ImageRow>,
    /// Host name of the agent that wrote it.
    agent: String,
    job: Option<String>,
    target: Option<String>,
}

/// `?path=&agent=&partition=&total=`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilesQuery {
    /// The folder inside the image (default `/`).
    path: Option<String>,
    /// The agent that reads the image (default: the one that wrote it).
    agent: Option<i64>,
    /// For a disk image: the partition.
    partition: Option<u32>,
    /// Also count what the folder holds all the way down (a download's size).
    total: Option<bool>,
}

/// `?path=&format=&agent=&partition=`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// The file or folder inside the image.
    path: String,
    /// `file` (one regular file, as it is), `tar.gz` (the default) or `zip`.
    format: Option<String>,
    /// The agent that reads the image (default: the one that wrote it).
    agent: Option<i64>,
    /// For a disk image: the partition.
    partition: Option<u32>,
}

async fn find(state: &AppState, id: i64) -> Result<ImageRow, ApiError> {
    state
        .store
        .image(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("image {id}")))
}

/// A path inside an image, as requests may name it: absolute, of sane length, no NUL.
fn inside_path(path: &str) -> Result<String, ApiError> {
    if !path.starts_with('/') || path.len() > MAX_PATH || path.contains('\0') {
        return Err(ApiError::Invalid(format!(
            "path must be an absolute path inside the image, at most {MAX_PATH} bytes"
        )));
    }
    Ok(path.to_owned())
}

fn dispatch(e: DispatchError) -> ApiError {
    match e {
        DispatchError::NotFound(what) => ApiError::NotFound(what),
        DispatchError::Store(e) => e.into(),
        DispatchError::Vault(e) => ApiError::Internal(e.to_string()),
        other => ApiError::Invalid(other.to_string()),
    }
}

/// Image `id` as an agent opens it for a request, and that agent: the one asked for (it
/// must exist), or the one that wrote the image.
async fn open(
    state: &AppState,
    id: i64,
    asked: Option<i64>,
    partition: Option<u32>,
) -> Result<(ImageRow, i64, ImageRef), ApiError> {
    let image = find(state, id).await?;
    let agent = chosen_agent(state, &image, asked).await?;
    let source = state
        .jobs
        .image_ref(&image, partition, agent)
        .await
        .map_err(dispatch)?;
    Ok((image, agent, source))
}

/// Show an image with its chain.
#[utoipa::path(get, path = "/api/v1/images/{id}", tag = "images", params(("id" = i64, Path)), responses((status = 200, description = "the image, its chain (oldest first) and what its run reported about it", body = ImageDetail), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let image = find(&state, id).await?;
    let chain = chain_of(&state.store, &image).await?;
    let written = written_by_run(&state.store, &image).await?;
    let job = match image.job_id {
        Some(j) => state.store.job(j).await?.map(|j| j.name),
        None => None,
    };
    let target = match image.target_id {
        Some(t) => state.store.target(t).await?.map(|t| t.name),
        None => None,
    };
    Ok(Json(ImageDetail {
        agent: state.jobs.host_name(image.agent_id).await,
        image,
        written,
        chain,
        job,
        target,
    }))
}

/// List a folder inside an image point, read by an agent from the image's target.
#[utoipa::path(get, path = "/api/v1/images/{id}/files", tag = "images", params(("id" = i64, Path), FilesQuery), responses((status = 200, description = "the folder's entries (for a path that is not a folder: its one entry)", body = Listing), (status = 404, body = ErrorBody), (status = 422, description = "the agent is offline, or cannot read the image or the path (the error says why)", body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn files(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<FilesQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let path = inside_path(q.path.as_deref().unwrap_or("/"))?;
    let (_, agent, source) = open(&state, id, q.agent, q.partition).await?;
    let listing = state
        .jobs
        .browse(agent, source, path, q.total.unwrap_or(false))
        .await
        .map_err(dispatch)?;
    Ok(Json(listing))
}

/// A name for a download: the path's last part (the image's for its root), in characters
/// every browser keeps, with the format's extension.
fn download_name(image: &str, path: &str, format: ExportFormat) -> String {
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let base = if last.is_empty() {
        holdfast_targets::location::split_name(image)
            .map_or(image.to_owned(), |(_, name)| name)
            .trim_end_matches(".hfi")
            .to_owned()
    } else {
        last.to_owned()
    };
    let mut name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.trim_matches('.').is_empty() {
        name = "download".into();
    }
    match format {
        ExportFormat::File => name,
        other => format!("{name}.{}", other.as_str()),
    }
}

/// Download a file, or a folder as an archive, from an image point: streamed from the
/// agent as it reads it.
#[utoipa::path(get, path = "/api/v1/images/{id}/download", tag = "images", params(("id" = i64, Path), DownloadQuery), responses((status = 200, description = "the file, or a .tar.gz or .zip of the folder, streamed"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, description = "the agent is offline, or the path is not in the image (the error says why)", body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn download(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<DownloadQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let path = inside_path(&q.path)?;
    let format: ExportFormat = q
        .format
        .as_deref()
        .unwrap_or("tar.gz")
        .parse()
        .map_err(ApiError::Invalid)?;
    let (image, agent, source) = open(&state, id, q.agent, q.partition).await?;
    let data = state
        .jobs
        .export(agent, source, vec![path.clone()], format)
        .await
        .map_err(dispatch)?;
    state
        .store
        .record_action(
            &caller.user.name,
            "download_files",
            &format!("image:{id}"),
            &format!("{path} as {} through agent {agent}", format.as_str()),
        )
        .await?;
    let name = download_name(&image.name, &path, format);
    Ok((
        [
            (header::CONTENT_TYPE, format.mime().to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        Body::from_stream(data),
    )
        .into_response())
}

/// Files to restore from an image point.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreFilesBody {
    /// Files or folders inside the image (1 to 100).
    paths: Vec<String>,
    /// The folder on the agent to restore into (created if missing); absent: back where
    /// they were, under where the imaged volume is mounted now on the agent.
    to: Option<String>,
    /// Replace files that exist (otherwise the run fails, naming them).
    #[serde(default)]
    overwrite: bool,
    /// The agent to restore on (default: the one that wrote the image).
    agent_id: Option<i64>,
    /// For a disk image: the partition.
    partition: Option<u32>,
}

/// An image point to write over a device.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreVolumeBody {
    /// The device to overwrite, `/dev/…`.
    device: String,
    /// The device's name typed again: everything on it is replaced.
    confirm: String,
    /// The agent whose device it is (default: the one that wrote the image).
    agent_id: Option<i64>,
    /// For a disk image: only this partition, written onto the device.
    partition: Option<u32>,
}

/// A restore (or clone) run was started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RestoreStarted {
    run: RunSummary,
}

/// The agent that serves a request on `image`: the one asked for, or the one that wrote it.
async fn chosen_agent(
    state: &AppState,
    image: &ImageRow,
    asked: Option<i64>,
) -> Result<i64, ApiError> {
    let Some(a) = asked.filter(|a| *a != image.agent_id) else {
        return Ok(image.agent_id);
    };
    match state.store.agent(a).await? {
        Some(agent) if agent.revoked_at.is_none() => Ok(a),
        _ => Err(ApiError::Invalid(format!("there is no agent {a}"))),
    }
}

/// The agent a restore writes on: the image's own machine for operators; another one only
/// for admins, since agents write as root and one machine's files (keys, passwords,
/// programs) planted on another are more than running jobs.
async fn restoring_agent(
    state: &AppState,
    caller: &Caller,
    image: &ImageRow,
    asked: Option<i64>,
) -> Result<i64, ApiError> {
    let agent = chosen_agent(state, image, asked).await?;
    if agent != image.agent_id && caller.user.role < Role::Admin {
        return Err(ApiError::ForbiddenBecause(
            "restoring onto another machine than the image's own needs the admin role".into(),
        ));
    }
    Ok(agent)
}

pub(super) async fn start_restore(
    state: &AppState,
    caller: &Caller,
    spec: TaskSpec,
    agent: i64,
) -> Result<(StatusCode, Json<RestoreStarted>), ApiError> {
    let run = state
        .jobs
        .restore(&spec, agent, &caller.user.name)
        .await
        .map_err(dispatch)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RestoreStarted {
            run: summary(state, &run),
        }),
    ))
}

/// Restore files or folders of an image point on an agent: a run with a report.
#[utoipa::path(post, path = "/api/v1/images/{id}/restore-files", tag = "images", params(("id" = i64, Path)), request_body = RestoreFilesBody, responses((status = 202, description = "the restore run started; its report follows", body = RestoreStarted), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn restore_files(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<RestoreFilesBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Operator)?;
    if body.paths.is_empty() || body.paths.len() > MAX_PATHS {
        return Err(ApiError::Invalid(format!(
            "paths must name 1 to {MAX_PATHS} files or folders"
        )));
    }
    let paths = body
        .paths
        .iter()
        .map(|p| inside_path(p))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(to) = &body.to {
        if !to.starts_with('/') || to.len() > MAX_PATH || to.contains('\0') {
            return Err(ApiError::Invalid(format!(
                "to must be an absolute folder on the agent, at most {MAX_PATH} bytes"
            )));
        }
    }
    let image = find(&state, id).await?;
    let agent = restoring_agent(&state, &caller, &image, body.agent_id).await?;
    let spec = TaskSpec::Files {
        image_id: id,
        partition: body.partition,
        paths,
        to: body.to,
        overwrite: body.overwrite,
    };
    start_restore(&state, &caller, spec, agent).await
}

/// `raw` as a device path (`/dev/…`, no empty, `.` or `..` parts), or why not.
pub(super) fn device_path(field: &str, raw: &str) -> Result<String, ApiError> {
    let device = raw.trim();
    let plain = device.strip_prefix("/dev/").is_some_and(|n| {
        !n.is_empty() && !n.split('/').any(|c| c.is_empty() || c == "." || c == "..")
    });
    if !plain || device.len() > 255 {
        return Err(ApiError::Invalid(format!(
            "{field} must be a device path such as /dev/sdb1"
        )));
    }
    Ok(device.to_owned())
}

/// The operator typed the name of `device`, which is overwritten, in `confirm`.
pub(super) fn confirmed(device: &str, confirm: &str) -> Result<(), ApiError> {
    if confirm.trim() != device {
        return Err(ApiError::Invalid(format!(
            "type the device name ({device}) in confirm: everything on it is replaced"
        )));
    }
    Ok(())
}

/// Why `device` on agent `inventory` cannot take an image of `needed` bytes: mounted (it,
/// or a partition on it), or smaller; none when it can, or the inventory does not know it
/// (the agent checks again before writing anything).
pub(super) fn unfit(inventory: &Inventory, device: &str, needed: u64) -> Option<String> {
    let name = device.strip_prefix("/dev/")?;
    if let Some(v) = inventory
        .volumes
        .iter()
        .find(|v| (v.name == name || v.disk.as_deref() == Some(name)) && v.mount_point.is_some())
    {
        return Some(format!(
            "{device} is in use: /dev/{} is mounted at {}; unmount it first",
            v.name,
            v.mount_point.as_deref().unwrap_or_default()
        ));
    }
    let size = inventory
        .disks
        .iter()
        .find(|d| d.name == name)
        .map(|d| d.size)
        .or_else(|| {
            inventory
                .volumes
                .iter()
                .find(|v| v.name == name)
                .map(|v| v.size)
        })?;
    (needed > size).then(|| {
        format!(
            "{device} holds {} and the image needs {}: choose a larger device",
            holdfast_proto::human_bytes(size),
            holdfast_proto::human_bytes(needed)
        )
    })
}

/// Write an image point over a device of an agent: a run with a report. The device's name
/// must be typed again in `confirm`; a device the agent's inventory shows mounted or too
/// small is refused here, and the agent checks again before it writes.
#[utoipa::path(post, path = "/api/v1/images/{id}/restore-volume", tag = "images", params(("id" = i64, Path)), request_body = RestoreVolumeBody, responses((status = 202, description = "the restore run started; its report follows", body = RestoreStarted), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, description = "not confirmed, mounted, too small, or not a device (the error says which)", body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn restore_volume(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<RestoreVolumeBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Operator)?;
    let device = device_path("device", &body.device)?;
    confirmed(&device, &body.confirm)?;
    let image = find(&state, id).await?;
    let agent = restoring_agent(&state, &caller, &image, body.agent_id).await?;
    let inventory = state
        .store
        .agent(agent)
        .await?
        .and_then(|a| a.inventory)
        .and_then(|t| serde_json::from_str::<Inventory>(&t).ok());
    // A partition's size is checked by the agent (the report does not list partitions).
    let needed = match body.partition {
        Some(_) => 0,
        None => written_by_run(&state.store, &image)
            .await?
            .map_or(0, |w| w.source_size),
    };
    if let Some(why) = inventory.and_then(|inv| unfit(&inv, &device, needed)) {
        return Err(ApiError::Invalid(why));
    }
    let spec = TaskSpec::Volume {
        image_id: id,
        device,
        partition: body.partition,
    };
    start_restore(&state, &caller, spec, agent).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_are_safe_and_say_the_format() {
        let n = |img, path, f| download_name(img, path, f);
        assert_eq!(n("a/b.hfi", "/etc/hosts", ExportFormat::File), "hosts");
        assert_eq!(
            n("a/b.hfi", "/home/ann/", ExportFormat::TarGz),
            "ann.tar.gz"
        );
        assert_eq!(n("pc/vol-1.hfi", "/", ExportFormat::Zip), "vol-1.zip");
        assert_eq!(n("x.hfi", "/\"q\";\r\n", ExportFormat::File), "_q____");
        assert_eq!(n("x.hfi", "/..", ExportFormat::File), "download");
        assert_eq!(n("x.hfi", "/Grüße", ExportFormat::Zip), "Gr__e.zip");
    }

    #[test]
    fn a_mounted_or_small_device_is_unfit() {
        use holdfast_proto::{Disk, Volume};
        let inv = Inventory {
            disks: vec![Disk {
                name: "sdb".into(),
                size: 100 << 30,
                ..Disk::default()
            }],
            volumes: vec![
                Volume {
                    name: "sdb1".into(),
                    disk: Some("sdb".into()),
                    size: 10 << 30,
                    mount_point: Some("/srv".into()),
                    ..Volume::default()
                },
                Volume {
                    name: "sdb2".into(),
                    disk: Some("sdb".into()),
                    size: 20 << 30,
                    ..Volume::default()
                },
            ],
            ..Inventory::default()
        };
        let why = |dev, need| unfit(&inv, dev, need).unwrap_or_default();
        assert!(why("/dev/sdb1", 1).contains("mounted at /srv"));
        assert!(why("/dev/sdb", 1).contains("/dev/sdb1 is mounted"));
        assert!(why("/dev/sdb2", 30 << 30).contains("larger device"));
        assert_eq!(unfit(&inv, "/dev/sdb2", 20 << 30), None);
        assert_eq!(unfit(&inv, "/dev/sdc", 1 << 40), None);
    }

    #[test]
    fn paths_must_be_absolute_and_bounded() {
        assert!(inside_path("/").is_ok());
        assert!(inside_path("/a b/c").is_ok());
        assert!(inside_path("a").is_err());
        assert!(inside_path("/a\0b").is_err());
        assert!(inside_path(&format!("/{}", "a".repeat(MAX_PATH))).is_err());
    }
}
