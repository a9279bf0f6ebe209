//! The HTTP API: one router per resource, merged here, sharing one [`AppState`].

mod agent_channel;
mod agents;
mod caller;
mod error;
mod jobs;
mod meta;
mod openapi;
mod reports;
mod session;
mod settings;
mod sites;
mod targets;
mod tokens;
mod users;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use serde::{Deserialize, Serialize};

pub use caller::{cookie, CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE};
pub use error::ApiError;
pub use openapi::document as openapi_document;
pub(crate) use targets::secret as target_secret;

use crate::auth::LoginLimiter;
use crate::gateway::Gateway;
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
}

impl AppState {
    /// State over `store`, for a server whose pinned certificate has `fingerprint`.
    pub fn new(store: Store, fingerprint: String, vault: Vault) -> anyhow::Result<Self> {
        let dummy_hash = crate::auth::hash_password("holdfast-no-such-user")
            .map_err(|e| anyhow::anyhow!("cannot hash: {e}"))?;
        let gateway: Arc<Gateway> = Arc::default();
        let vault = Arc::new(vault);
        Ok(Self {
            jobs: Arc::new(Dispatcher::new(
                store.clone(),
                gateway.clone(),
                vault.clone(),
            )),
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
            heartbeat_seconds: agent_channel::HEARTBEAT_SECONDS,
            listener: None,
        })
    }
}

impl AppState {
    /// An agent's state as the API and the console show it: revoked, online or offline
    /// (the console also tells busy agents apart).
    pub fn agent_status(&self, a: &crate::store::agents::Agent) -> AgentStatus {
        if a.revoked_at.is_some() {
            AgentStatus::Revoked
        } else if self.gateway.is_online(a.id) {
            AgentStatus::Online
        } else {
            AgentStatus::Offline
        }
    }
}

/// The whole application.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(meta::router())
        .merge(session::router())
        .merge(users::router())
        .merge(tokens::router())
        .merge(agents::router())
        .merge(targets::router())
        .merge(jobs::router())
        .merge(reports::router())
        .merge(settings::router())
        .merge(sites::router())
        .merge(agent_channel::router())
        .merge(openapi::router())
        .merge(crate::console::router())
        .fallback(|| async { ApiError::NotFound("this path".into()) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

async fn count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    state.metrics.requests.fetch_add(1, Ordering::Relaxed);
    if resp.status().is_server_error() {
        state.metrics.errors.fetch_add(1, Ordering::Relaxed);
    }
    resp
}

/// Run CPU-heavy work (password hashing) on the blocking pool.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("worker failed: {e}")))
}

/// A file download: `body` as `mime`, saved as `filename`.
fn attachment(mime: &str, filename: &str, body: String) -> impl axum::response::IntoResponse {
    (
        [
            (axum::http::header::CONTENT_TYPE, mime.to_owned()),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
}

/// One page of a list, and where the next one starts.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` (or `before`) to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<i64>,
}

impl<T> Page<T> {
    /// A page of at most `limit` items; a full page has a next one, which starts after
    /// the last item's id (in whatever order the list runs).
    fn new(items: Vec<T>, limit: i64, id: impl Fn(&T) -> i64) -> Self {
        let next = (items.len() as i64 == limit)
            .then(|| items.last().map(&id))
            .flatten();
        Self { items, next }
    }

    /// The same page with every item shown by `view`, which may fail or wait.
    async fn try_map_async<U, F, Fut>(self, mut view: F) -> Result<Page<U>, ApiError>
    where
        F: FnMut(T) -> Fut,
        Fut: std::future::Future<Output = Result<U, ApiError>>,
    {
        let mut items = Vec::with_capacity(self.items.len());
        for item in self.items {
            items.push(view(item).await?);
        }
        Ok(Page {
            items,
            next: self.next,
        })
    }

    /// The same page with every item shown another way.
    fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next: self.next,
        }
    }
}

/// `?after=ID&limit=N`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PageQuery {
    pub after: Option<i64>,
    pub limit: Option<i64>,
}

impl PageQuery {
    fn limit(&self) -> Result<i64, ApiError> {
        page_limit(self.limit)
    }
}

/// A page size: 1 to 500, 100 when not given.
fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit.unwrap_or(100) {
        n @ 1..=500 => Ok(n),
        _ => Err(ApiError::Invalid("limit must be between 1 and 500".into())),
    }
}
