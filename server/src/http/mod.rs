//! The HTTP API: one router per resource, merged by [`router`]; the state they share is
//! [`crate::app::AppState`].

mod agent_channel;
mod agents;
mod body;
mod caller;
mod clone;
mod error;
mod images;
mod installs;
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

use axum::Router;
use serde::{Deserialize, Serialize};

pub use caller::{cookie, CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE};
pub use error::ApiError;
pub use openapi::document as openapi_document;
pub(crate) use targets::secret as target_secret;

use crate::app::AppState;
pub(crate) use agent_channel::HEARTBEAT_SECONDS;

/// Every API route and the agents' channel.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(meta::router())
        .merge(session::router())
        .merge(users::router())
        .merge(tokens::router())
        .merge(agents::router())
        .merge(clone::router())
        .merge(installs::router())
        .merge(targets::router())
        .merge(jobs::router())
        .merge(reports::router())
        .merge(images::router())
        .merge(settings::router())
        .merge(sites::router())
        .merge(agent_channel::router())
        .merge(openapi::router())
        .layer(axum::middleware::from_fn(body::limit))
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

/// Whether a secret is stored; the secret itself never leaves the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum Stored {
    #[serde(rename = "set")]
    Set,
    #[serde(rename = "not set")]
    NotSet,
}

impl Stored {
    /// `Set` when `present`.
    pub fn when(present: bool) -> Self {
        if present {
            Self::Set
        } else {
            Self::NotSet
        }
    }
}

/// A whole list (not paged).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Items<T> {
    pub items: Vec<T>,
}

/// One page of a list, and where the next one starts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
#[into_params(parameter_in = Query)]
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
