//! Storage targets: admins register a folder URL and its credentials once; jobs name the
//! target. Credentials are sealed by the vault and never come back: the API says only
//! whether each is set.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::caller::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::{AppState, Page, PageQuery, Stored};
use crate::auth::Role;
use crate::jobs::{target_context, TargetSecret};
use crate::store::targets::{TargetFields, TargetRow};
use crate::store::Change;
use holdfast_proto::request::TargetProbe;
use holdfast_targets::location::Location;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/targets", get(list).post(create))
        .route("/api/v1/targets/{id}", get(show).put(update).delete(remove))
        .route("/api/v1/targets/{id}/test", axum::routing::post(test))
        .route(
            "/api/v1/targets/{id}/host-key",
            axum::routing::put(confirm_host_key),
        )
}

/// Whether `key` looks like an SSH key fingerprint as OpenSSH prints it (`SHA256:` and 43
/// characters of unpadded base64).
fn check_fingerprint(key: &str) -> Result<(), ApiError> {
    let ok = key.strip_prefix("SHA256:").is_some_and(|b| {
        b.len() == 43
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::Invalid(
            "host_key: expected an SSH key fingerprint such as ssh-keygen -lf prints: SHA256: and 43 base64 characters".into(),
        ))
    }
}

/// The server `url` points at, for telling whether a changed URL still names it.
fn server_of(url: &str) -> Option<(String, u16)> {
    match Location::parse(url).ok()? {
        Location::Sftp { host, port, .. } => Some((host, port)),
        _ => None,
    }
}

/// A target as admins write it. Credentials are write-only.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetBody {
    name: String,
    /// The folder: `sftp://host[:port]/path`, `ftp://…`, `ftps://…`,
    /// `smb://[domain;]server[:port]/share/path`,
    /// `s3://bucket/prefix[?endpoint=URL&region=R&path_style=true|false]` (username: the
    /// access key id, password: the secret key), `file:///path` or an absolute path on the
    /// agents.
    url: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    password: Option<Zeroizing<String>>,
    /// Private key (SFTP), PEM text.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    private_key: Option<Zeroizing<String>>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    passphrase: Option<Zeroizing<String>>,
    /// CA certificate(s) to trust for FTPS and S3 over HTTPS, PEM text.
    #[serde(default)]
    ca_pem: Option<String>,
    /// The SFTP server's host key (`SHA256:…`, as `ssh-keygen -lf` prints it on the
    /// server), when the admin has it at hand; else test the target and confirm the key the
    /// test shows. A changed host or port forgets a key confirmed before.
    #[serde(default)]
    host_key: Option<String>,
    /// Bandwidth limit for the agents' transfers to and from this target, with time windows
    /// in the agents' local time: rules separated by commas, the first matching applies —
    /// `RATE[@DAYS/HH:MM-HH:MM]`, e.g. `20M@mon-fri/08:00-18:00,unlimited` (bytes per
    /// second, binary units). Empty or absent: no limit.
    #[serde(default)]
    bandwidth: Option<String>,
    #[serde(default)]
    notes: String,
    /// Forget the stored credentials (before any given here are set).
    #[serde(default)]
    clear_credentials: bool,
}

/// A bandwidth limit as given (of a target or an agent): checked with the agents' parser;
/// empty or absent is none.
pub(crate) fn bandwidth_limit(given: Option<&str>) -> Result<Option<&str>, ApiError> {
    let Some(b) = given.map(str::trim).filter(|b| !b.is_empty()) else {
        return Ok(None);
    };
    b.parse::<holdfast_targets::bandwidth::Bandwidth>()
        .map_err(|e| ApiError::Invalid(format!("bandwidth: {e}")))?;
    Ok(Some(b))
}

/// What a target URL must look like; the agent checks the rest when it connects.
/// A target URL as the agents will read it: parsed by the same parser (`holdfast-targets`),
/// plus what only makes sense for a folder given to many machines.
fn check_url(url: &str) -> Result<(), ApiError> {
    let bad = |why: String| Err(ApiError::Invalid(format!("url: {why}")));
    if url.chars().any(char::is_control) {
        return bad("control characters are not allowed".into());
    }
    match Location::parse(url) {
        Err(e) => bad(e.to_string()),
        Ok(Location::Local { root }) if !root.is_absolute() => {
            bad("give an absolute path or a URL such as sftp://host/path".into())
        }
        Ok(_) => Ok(()),
    }
}

impl TargetBody {
    fn check(&self) -> Result<(), ApiError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ApiError::Invalid("name must be 1 to 100 characters".into()));
        }
        check_url(self.url.trim())?;
        if let Some(pem) = &self.ca_pem {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(ApiError::Invalid(
                    "ca_pem must hold PEM certificates".into(),
                ));
            }
        }
        bandwidth_limit(self.bandwidth.as_deref())?;
        if let Some(key) = &self.host_key {
            check_fingerprint(key)?;
            if server_of(self.url.trim()).is_none() {
                return Err(ApiError::Invalid(
                    "host_key: only SFTP targets have a host key".into(),
                ));
            }
        }
        Ok(())
    }

    /// The fields to store; `kept_key` is the host key confirmed before, kept unless one is
    /// given.
    fn fields<'a>(&'a self, kept_key: Option<&'a str>) -> TargetFields<'a> {
        TargetFields {
            name: self.name.trim(),
            url: self.url.trim(),
            username: self
                .username
                .as_deref()
                .map(str::trim)
                .filter(|u| !u.is_empty()),
            ca_pem: self.ca_pem.as_deref(),
            host_key: self.host_key.as_deref().or(kept_key),
            bandwidth: bandwidth_limit(self.bandwidth.as_deref()).unwrap_or_default(),
            notes: &self.notes,
        }
    }
}

/// The stored credentials of `t`.
pub(crate) fn secret(state: &AppState, t: &TargetRow) -> Result<TargetSecret, ApiError> {
    match &t.secret {
        None => Ok(TargetSecret::default()),
        Some(sealed) => {
            let plain = state
                .vault
                .unseal(&target_context(t.id), sealed)
                .map_err(|e| ApiError::Internal(format!("target {}: {e}", t.id)))?;
            serde_json::from_slice(&plain)
                .map_err(|e| ApiError::Internal(format!("target {}: {e}", t.id)))
        }
    }
}

/// Merge the credentials of `body` into `t`'s and store them sealed.
async fn store_secret(
    state: &AppState,
    change: &mut Change,
    t: &TargetRow,
    body: TargetBody,
) -> Result<(), ApiError> {
    let given = body.password.is_some() || body.private_key.is_some() || body.passphrase.is_some();
    if !given && !body.clear_credentials {
        return Ok(());
    }
    let mut s = if body.clear_credentials {
        TargetSecret::default()
    } else {
        secret(state, t)?
    };
    if let Some(p) = body.password {
        s.password = Some(p);
    }
    if let Some(k) = body.private_key {
        s.private_key = Some(k);
    }
    if let Some(p) = body.passphrase {
        s.passphrase = Some(p);
    }
    let sealed = if s.is_empty() {
        None
    } else {
        let plain =
            Zeroizing::new(serde_json::to_vec(&s).map_err(|e| ApiError::Internal(e.to_string()))?);
        Some(
            state
                .vault
                .seal(&target_context(t.id), &plain)
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        )
    };
    change.set_target_secret(t.id, sealed.as_deref()).await?;
    Ok(())
}

fn set(v: &Option<Zeroizing<String>>) -> Stored {
    Stored::when(v.is_some())
}

/// A target as shown: credentials only as set / not set.
#[derive(Serialize, utoipa::ToSchema)]
struct TargetView {
    id: i64,
    name: String,
    url: String,
    username: Option<String>,
    /// CA certificate(s) to trust for FTPS and S3 over HTTPS, PEM text.
    ca_pem: Option<String>,
    /// The SFTP server's host key an admin confirmed; jobs do not go to an SFTP target
    /// without one.
    host_key: Option<String>,
    /// Bandwidth limit with time windows; none: unlimited.
    bandwidth: Option<String>,
    notes: String,
    credentials: Credentials,
    created_at: i64,
    updated_at: i64,
}

/// Which credentials the vault holds for a target.
#[derive(Serialize, utoipa::ToSchema)]
struct Credentials {
    password: Stored,
    private_key: Stored,
    passphrase: Stored,
}

fn view(state: &AppState, t: &TargetRow) -> Result<TargetView, ApiError> {
    let s = secret(state, t)?;
    Ok(TargetView {
        id: t.id,
        name: t.name.clone(),
        url: t.url.clone(),
        username: t.username.clone(),
        ca_pem: t.ca_pem.clone(),
        host_key: t.host_key.clone(),
        bandwidth: t.bandwidth.clone(),
        notes: t.notes.clone(),
        credentials: Credentials {
            password: set(&s.password),
            private_key: set(&s.private_key),
            passphrase: set(&s.passphrase),
        },
        created_at: t.created_at,
        updated_at: t.updated_at,
    })
}

/// List storage targets (credentials only as set or not set).
#[utoipa::path(get, path = "/api/v1/targets", tag = "targets", params(PageQuery), responses((status = 200, description = "a page of targets (credentials shown as set / not set)", body = Page<TargetView>)), security(("session" = []), ("token" = [])))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let limit = q.limit()?;
    let rows = state.store.targets(q.after.unwrap_or(0), limit).await?;
    let page = Page::new(rows, limit, |t| t.id);
    Ok(Json(
        page.try_map_async(|t| {
            let state = &state;
            async move { view(state, &t) }
        })
        .await?,
    ))
}

/// Create a storage target; its credentials go into the vault.
#[utoipa::path(post, path = "/api/v1/targets", tag = "targets", request_body = TargetBody, responses((status = 201, description = "the target", body = TargetView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<TargetBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    body.check()?;
    let mut change = state.store.change(&caller.user.name).await?;
    let t = change.create_target(&body.fields(None)).await?;
    store_secret(&state, &mut change, &t, body).await?;
    change
        .commit("create_target", &format!("target:{}", t.id), &t.url)
        .await?;
    let t = state.store.target(t.id).await?.unwrap_or(t);
    Ok((StatusCode::CREATED, Json(view(&state, &t)?)))
}

/// Show a storage target.
#[utoipa::path(get, path = "/api/v1/targets/{id}", tag = "targets", params(("id" = i64, Path)), responses((status = 200, description = "the target", body = TargetView), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let t = state
        .store
        .target(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("target {id}")))?;
    Ok(Json(view(&state, &t)?))
}

/// Change a storage target.
#[utoipa::path(put, path = "/api/v1/targets/{id}", tag = "targets", params(("id" = i64, Path)), request_body = TargetBody, responses((status = 200, description = "the target", body = TargetView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<TargetBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    body.check()?;
    let before = state
        .store
        .target(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("target {id}")))?;
    // A key confirmed for one server means nothing for another.
    let same_server =
        server_of(&before.url).is_some() && server_of(&before.url) == server_of(body.url.trim());
    let kept = before.host_key.as_deref().filter(|_| same_server);
    let mut change = state.store.change(&caller.user.name).await?;
    let t = change
        .update_target(id, &body.fields(kept))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("target {id}")))?;
    let changed_secret = body.clear_credentials
        || body.password.is_some()
        || body.private_key.is_some()
        || body.passphrase.is_some();
    store_secret(&state, &mut change, &t, body).await?;
    let detail = if changed_secret {
        "credentials changed"
    } else {
        ""
    };
    change
        .commit("update_target", &format!("target:{id}"), detail)
        .await?;
    let t = state.store.target(id).await?.unwrap_or(t);
    Ok(Json(view(&state, &t)?))
}

/// Delete a storage target no job or site uses.
#[utoipa::path(delete, path = "/api/v1/targets/{id}", tag = "targets", params(("id" = i64, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let mut change = state.store.change(&caller.user.name).await?;
    if !change.delete_target(id).await? {
        return Err(ApiError::NotFound(format!("target {id}")));
    }
    change
        .commit("delete_target", &format!("target:{id}"), "")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /targets/{id}/test`: from which agent.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    agent_id: i64,
}

/// Test a storage target from an agent: write, read back and delete a test file. For an
/// SFTP target whose host key is not confirmed, the agent only reads the key the server
/// offers (`ok` false, `host_key.confirmed` false), for an admin to compare and confirm.
#[utoipa::path(post, path = "/api/v1/targets/{id}/test", tag = "targets", params(("id" = i64, Path)), request_body = TestBody, responses((status = 200, description = "the agent wrote, read back and deleted a test file; timings and free space; or, for an SFTP server whose key is not confirmed, the key it offers", body = TargetProbe), (status = 404, body = ErrorBody), (status = 422, description = "the agent is offline, or the target failed (the error says how)", body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn test(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<TestBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Operator)?;
    let t = state
        .store
        .target(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("target {id}")))?;
    let found = state
        .jobs
        .test_target(&t, body.agent_id)
        .await
        .map_err(|e| ApiError::Invalid(format!("the test of target '{}' failed: {e}", t.name)))?;
    Ok(Json(found))
}

/// `PUT /targets/{id}/host-key`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostKeyBody {
    /// `SHA256:…`, as a test of the target showed it (or `ssh-keygen -lf` on the server).
    fingerprint: String,
}

/// Confirm the host key of an SFTP target's server: agents accept that key only, and jobs
/// go to the target from now on.
#[utoipa::path(put, path = "/api/v1/targets/{id}/host-key", tag = "targets", params(("id" = i64, Path)), request_body = HostKeyBody, responses((status = 200, description = "the target, its host key confirmed", body = TargetView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn confirm_host_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<HostKeyBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let key = body.fingerprint.trim();
    check_fingerprint(key)?;
    let t = state
        .store
        .target(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("target {id}")))?;
    if server_of(&t.url).is_none() {
        return Err(ApiError::Invalid(format!(
            "target '{}' is not an SFTP target: only those have a host key",
            t.name
        )));
    }
    let mut change = state.store.change(&caller.user.name).await?;
    change.set_target_host_key(id, key).await?;
    change
        .commit("confirm_host_key", &format!("target:{id}"), key)
        .await?;
    let t = state.store.target(id).await?.unwrap_or(t);
    Ok(Json(view(&state, &t)?))
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn urls_are_checked() {
        for ok in [
            "/srv/images",
            "sftp://backup@nas:2222/images",
            "smb://CORP;admin@nas/share/dir",
            "ftps://ftp.example/images",
            "file:///srv/images",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "images",
            "http://nas/x",
            "sftp://user:pw@nas/x",
            "sftp:///x",
            "sftp://nas/x\n",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
