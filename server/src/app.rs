//! The application: the state every handler shares ([`AppState`]) and the one router that
//! joins the REST API and the agents' channel ([`crate::http`]) with the web console
//! ([`crate::console`]). Both sides depend on this module, not on each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use axum::Router;

use crate::auth::LoginLimiter;
use crate::cluster::Cluster;
use crate::gateway::Gateway;
use crate::http::ApiError;
use crate::jobs::Dispatcher;
use crate::store::{AgentStatus, Store};
use crate::vault::Vault;

/// Request counters for `/metrics`.
#[derive(Default, Debug)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub gateway: Arc<Gateway>,
    /// The master key that seals credentials.
    pub vault: Arc<Vault>,
    /// Runs from order to report.
    pub jobs: Arc<Dispatcher>,
    /// This server instance among the others on its store.
    pub cluster: Arc<Cluster>,
    /// Agents installed over SSH.
    pub installer: Arc<crate::install::Installer>,
    /// Sends e-mail with the stored SMTP settings.
    pub mailer: Arc<crate::mail::Mailer>,
    pub limiter: Arc<LoginLimiter>,
    /// What console pages keep between requests.
    pub console: Arc<crate::console::Cache>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// Fingerprint of the certificate agents pin.
    pub fingerprint: String,
    /// A password hash to verify against when the user is unknown (constant-time logins).
    pub dummy_hash: String,
    /// Seconds between agents' heartbeats; three missed ones close a channel.
    pub heartbeat_seconds: u64,
    /// The listener's handle, for the open-connections gauge (absent when the router is
    /// used without a listener, as in tests).
    pub listener: Option<axum_server::Handle>,
    /// The file the first start wrote the admin's password to; removed when a user who had
    /// to change their password has done so.
    pub first_start_file: Option<std::path::PathBuf>,
}

impl AppState {
    /// State over `store`, for a server whose pinned certificate has `fingerprint`.
    pub fn new(store: Store, fingerprint: String, vault: Vault) -> anyhow::Result<Self> {
        Self::in_cluster(
            store,
            fingerprint,
            vault,
            Arc::new(Cluster::sole("localhost")),
        )
    }

    /// [`AppState::new`] for server instance `cluster`.
    pub fn in_cluster(
        store: Store,
        fingerprint: String,
        vault: Vault,
        cluster: Arc<Cluster>,
    ) -> anyhow::Result<Self> {
        let dummy_hash = crate::auth::hash_password("holdfast-no-such-user")
            .map_err(|e| anyhow::anyhow!("cannot hash: {e}"))?;
        let gateway: Arc<Gateway> = Arc::default();
        let vault = Arc::new(vault);
        let jobs = Arc::new(Dispatcher::in_cluster(
            store.clone(),
            gateway.clone(),
            vault.clone(),
            cluster.clone(),
        ));
        Ok(Self {
            installer: Arc::new(crate::install::Installer::new(
                jobs.clone(),
                crate::config::AGENT_PACKAGES.into(),
                fingerprint.clone(),
            )),
            jobs,
            cluster,
            mailer: Arc::new(crate::mail::Mailer::new(store.clone(), vault.clone())),
            store,
            gateway,
            vault,
            limiter: Arc::default(),
            console: Arc::default(),
            metrics: Arc::default(),
            started: Instant::now(),
            fingerprint,
            dummy_hash,
            heartbeat_seconds: crate::http::HEARTBEAT_SECONDS,
            listener: None,
            first_start_file: None,
        })
    }

    /// An agent's state as the API and the console show it: revoked, online or offline
    /// (the console also tells busy agents apart).
    pub fn agent_status(&self, a: &crate::store::agents::Agent) -> AgentStatus {
        if a.revoked_at.is_some() {
            AgentStatus::Revoked
        } else if self.gateway.is_online(a.id) || self.cluster.elsewhere(a).is_some() {
            AgentStatus::Online
        } else {
            AgentStatus::Offline
        }
    }
}

/// The whole application: the API, the agents' channel and the console.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(crate::http::router())
        .merge(crate::console::router())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// No route: the API answers with its JSON error body, the console with its error page.
async fn not_found(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/api/") {
        ApiError::NotFound(format!("'{path}'")).into_response()
    } else {
        crate::console::PageError(ApiError::NotFound(format!("the page '{path}'"))).into_response()
    }
}

async fn count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    state.metrics.requests.fetch_add(1, Ordering::Relaxed);
    if resp.status().is_server_error() {
        state.metrics.errors.fetch_add(1, Ordering::Relaxed);
    }
    resp
}
