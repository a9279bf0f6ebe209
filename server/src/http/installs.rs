//! Agents installed over SSH: read machines' host keys for the admin to confirm, then
//! install (or upgrade) on each, and follow the steps.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::caller::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::{page_limit, AppState, Page};
use crate::auth::Role;
use crate::install::ssh::{self, Auth};
use crate::install::Order;
use crate::store::installs::InstallRow;

/// Machines per request at most.
const MAX_HOSTS: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/installs/host-keys", post(host_keys))
        .route("/api/v1/installs", get(list).post(install))
        .route("/api/v1/installs/{id}", get(show))
}

/// A machine's SSH address.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// Host name or address.
    host: String,
    /// SSH port (22 when not given).
    #[serde(default = "ssh_port")]
    port: u16,
}

fn ssh_port() -> u16 {
    22
}

/// A host name or address: letters, digits, dots, dashes, colons (IPv6), at most 253.
fn check_host(host: &str) -> Result<(), ApiError> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::Invalid(format!(
            "host: '{host}' is not a host name or address"
        )))
    }
}

/// `POST /installs/host-keys`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostKeysBody {
    machines: Vec<Machine>,
}

/// A machine's host key, or why it could not be read.
#[derive(Serialize, utoipa::ToSchema)]
struct HostKey {
    host: String,
    port: u16,
    /// `SHA256:…`, as `ssh-keygen -lf` prints it: compare it with the machine's own.
    fingerprint: Option<String>,
    error: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct HostKeys {
    keys: Vec<HostKey>,
}

/// Read each machine's SSH host key (nothing is sent but the handshake), for the admin to
/// compare and confirm before installing.
#[utoipa::path(post, path = "/api/v1/installs/host-keys", tag = "installs", request_body = HostKeysBody, responses((status = 200, description = "each machine's host key, or why it could not be read", body = HostKeys), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn host_keys(
    caller: Caller,
    ApiJson(body): ApiJson<HostKeysBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    if body.machines.is_empty() || body.machines.len() > MAX_HOSTS {
        return Err(ApiError::Invalid(format!(
            "machines: 1 to {MAX_HOSTS} machines"
        )));
    }
    for m in &body.machines {
        check_host(&m.host)?;
    }
    let mut reads = Vec::new();
    for m in body.machines {
        reads.push(tokio::task::spawn_blocking(move || {
            let r = ssh::host_key(&m.host, m.port);
            (m, r)
        }));
    }
    let mut keys = Vec::new();
    for r in reads {
        let (m, r) = r
            .await
            .map_err(|e| ApiError::Internal(format!("worker failed: {e}")))?;
        let (fingerprint, error) = match r {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e.to_string())),
        };
        keys.push(HostKey {
            host: m.host,
            port: m.port,
            fingerprint,
            error,
        });
    }
    Ok(Json(HostKeys { keys }))
}

/// A machine and the host key the admin confirmed for it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmedMachine {
    host: String,
    #[serde(default = "ssh_port")]
    port: u16,
    /// The host key as read and compared (`SHA256:…`): a machine that presents another is
    /// left alone.
    fingerprint: String,
}

/// `POST /installs`: the machines, and one login for all of them.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallBody {
    machines: Vec<ConfirmedMachine>,
    /// The SSH user: root, or one that may use sudo.
    user: String,
    /// Its password (also given to sudo), or
    #[schema(value_type = Option<String>)]
    password: Option<Zeroizing<String>>,
    /// its private key (OpenSSH PEM), with its passphrase if it has one.
    #[schema(value_type = Option<String>)]
    private_key: Option<Zeroizing<String>>,
    #[schema(value_type = Option<String>)]
    passphrase: Option<Zeroizing<String>>,
    /// The address the machines reach this server at, `https://host:port`.
    server_url: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Installs {
    installs: Vec<InstallRow>,
}

/// Install (or upgrade) the agent on each machine over SSH: in the background, one
/// installation per machine, each with its steps. The password or key is used for these
/// installations only and not stored.
#[utoipa::path(post, path = "/api/v1/installs", tag = "installs", request_body = InstallBody, responses((status = 202, description = "the installations started", body = Installs), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn install(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<InstallBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    if body.machines.is_empty() || body.machines.len() > MAX_HOSTS {
        return Err(ApiError::Invalid(format!(
            "machines: 1 to {MAX_HOSTS} machines"
        )));
    }
    let user = body.user.trim();
    if user.is_empty()
        || user.len() > 64
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(ApiError::Invalid("user: a login name".into()));
    }
    for m in &body.machines {
        check_host(&m.host)?;
        let f = m.fingerprint.trim();
        if !(f.starts_with("SHA256:")
            && f.len() == 50
            && f[7..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/')))
        {
            return Err(ApiError::Invalid(format!(
                "fingerprint of {}: the host key as read (SHA256: and 43 base64 characters)",
                m.host
            )));
        }
    }
    let url = body.server_url.trim();
    let rest = url.strip_prefix("https://").unwrap_or("");
    if rest.is_empty()
        || !rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '/'))
    {
        return Err(ApiError::Invalid(
            "server_url: the address the machines reach this server at, https://host:port".into(),
        ));
    }
    let auth = |body: &InstallBody| -> Result<Auth, ApiError> {
        match (&body.password, &body.private_key) {
            (Some(p), None) if !p.is_empty() => Ok(Auth::Password(p.clone())),
            (None, Some(k)) if !k.is_empty() => Ok(Auth::Key {
                private_key: k.clone(),
                passphrase: body.passphrase.clone(),
            }),
            _ => Err(ApiError::Invalid(
                "give the user's password or its private key (one of them)".into(),
            )),
        }
    };
    let mut installs = Vec::new();
    for m in &body.machines {
        let order = Order {
            host: m.host.clone(),
            port: m.port,
            fingerprint: m.fingerprint.trim().to_owned(),
            user: user.to_owned(),
            auth: auth(&body)?,
            server_url: url.trim_end_matches('/').to_owned(),
            by: caller.user.name.clone(),
        };
        installs.push(state.installer.start(order).await?);
    }
    Ok((StatusCode::ACCEPTED, Json(Installs { installs })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    before: Option<i64>,
    limit: Option<i64>,
}

/// Installations, newest first.
#[utoipa::path(get, path = "/api/v1/installs", tag = "installs", params(ListQuery), responses((status = 200, description = "installations with their steps, newest first", body = Page<InstallRow>), (status = 403, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let limit = page_limit(q.limit)?;
    let rows = state
        .store
        .installs(q.before.unwrap_or(i64::MAX), limit)
        .await?;
    Ok(Json(Page::new(rows, limit, |r| r.id)))
}

/// One installation with its steps.
#[utoipa::path(get, path = "/api/v1/installs/{id}", tag = "installs", params(("id" = i64, Path)), responses((status = 200, description = "the installation", body = InstallRow), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let row = state
        .store
        .install(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("installation {id}")))?;
    Ok(Json(row))
}
