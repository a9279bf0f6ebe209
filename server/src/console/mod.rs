//! The web console: server-rendered pages (askama templates under `web/templates`, checked
//! at compile time), one stylesheet and one script embedded in the binary, and server-sent
//! events for live state. Pages read through the store; every change is made by the page's
//! script through the REST API with the session's CSRF token, so the console can do nothing
//! an API client with the same role could not.

mod agents;
mod assets;
mod dashboard;
mod events;
mod images;
mod jobs;
mod reports;
mod settings;
mod sites;
mod targets;
mod view;

use askama::Template;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::app::AppState;
use crate::auth::{csrf_token, secret_hash, Role};
use crate::http::{ApiError, SESSION_COOKIE};
use crate::store::users::User;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/login", get(login))
        .route("/password", get(password))
        .route("/agents", get(agents::list))
        .route("/agents/{id}", get(agents::show))
        .route("/sites", get(sites::list))
        .route("/sites/{id}", get(sites::show))
        .route("/jobs", get(jobs::list))
        .route("/jobs/new", get(jobs::new))
        .route("/jobs/{id}", get(jobs::show))
        .route("/jobs/{id}/edit", get(jobs::edit))
        .route("/reports", get(reports::list))
        .route("/reports/{id}", get(reports::show))
        .route("/images/{id}", get(images::show))
        .route("/targets", get(targets::list))
        .route("/targets/{id}", get(targets::show))
        .route("/settings", get(settings::page))
        .route("/console/events", get(events::stream))
        .merge(assets::router())
}

/// What pages keep between requests: figures that are expensive to read and change
/// rarely.
#[derive(Default)]
pub struct Cache {
    pub(crate) closed_days: std::sync::Mutex<Option<ClosedDays>>,
}

/// The dashboard's daily totals of the days that are over, as read at one time.
#[derive(Clone)]
pub(crate) struct ClosedDays {
    /// The day they were read on (days since 1970); a new day reads them again.
    pub today: i64,
    pub read_at: std::time::Instant,
    pub totals: Vec<crate::store::overview::DayTotal>,
}

/// The logged-in user of a page; without a session, the browser goes to the login page.
pub struct Session {
    pub user: User,
    pub csrf: String,
    /// How the store knows the session (to check later that it still holds).
    pub key: String,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_login = || {
            let next = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let next = url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>();
            Redirect::to(&format!("/login?next={next}")).into_response()
        };
        let Some(secret) = crate::http::cookie(parts, SESSION_COOKIE) else {
            return Err(to_login());
        };
        let key = secret_hash(secret);
        match state.store.session_user(&key).await {
            // Nothing else until the password is changed.
            Ok(Some(user)) if user.must_change_password && parts.uri.path() != "/password" => {
                let next = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let next =
                    url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>();
                Err(Redirect::to(&format!("/password?next={next}")).into_response())
            }
            Ok(Some(user)) => Ok(Session {
                csrf: csrf_token(secret),
                user,
                key,
            }),
            Ok(None) => Err(to_login()),
            Err(e) => Err(PageError::from(ApiError::from(e)).into_response()),
        }
    }
}

/// What every page's frame shows: who is logged in, what they may do, where they are.
pub struct Shell {
    pub user: String,
    pub role: &'static str,
    pub csrf: String,
    /// The navigation entry to highlight.
    pub nav: &'static str,
    /// May run, cancel and edit jobs, sites and targets.
    pub operator: bool,
    /// May manage agents, users and settings.
    pub admin: bool,
}

impl Session {
    pub fn shell(&self, nav: &'static str) -> Shell {
        Shell {
            user: self.user.name.clone(),
            role: self.user.role.as_str(),
            csrf: self.csrf.clone(),
            nav,
            operator: self.user.role >= Role::Operator,
            admin: self.user.role >= Role::Admin,
        }
    }

    /// Refuse the page unless the user's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), PageError> {
        if self.user.role >= role {
            Ok(())
        } else {
            Err(PageError(ApiError::Forbidden))
        }
    }
}

/// A page that could not be shown: a short HTML page with the reason and status.
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        Self(ApiError::from(e))
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let message = match &self.0 {
            // Details stay in the log.
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "console page failed");
                "internal error".to_owned()
            }
            e => e.to_string(),
        };
        let status = self.0.into_response().status();
        let body = ErrorPage {
            status: status.as_u16(),
            message,
        }
        .render()
        .unwrap_or_else(|_| "error".into());
        (status, Html(body)).into_response()
    }
}

/// Every site as (id, name), collected as the caller needs (a picker's list, a lookup).
async fn site_names<C: FromIterator<(i64, String)>>(state: &AppState) -> Result<C, PageError> {
    let sites = state.store.sites(0, i64::MAX).await?;
    Ok(sites.into_iter().map(|s| (s.id, s.name)).collect())
}

/// Every storage target as (id, name), collected as the caller needs.
async fn target_names<C: FromIterator<(i64, String)>>(state: &AppState) -> Result<C, PageError> {
    let targets = state.store.targets(0, i64::MAX).await?;
    Ok(targets.into_iter().map(|t| (t.id, t.name)).collect())
}

/// Render a page (a template error is a bug: logged, shown as a 500).
pub fn render<T: Template>(page: T) -> Response {
    match page.render() {
        Ok(html) => (
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::X_FRAME_OPTIONS, "DENY"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none'",
                ),
            ],
            Html(html),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// The result of a page handler.
pub type PageResult = Result<Response, PageError>;

#[derive(Template)]
#[template(path = "login.html")]
struct Login {
    next: String,
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// Only a path on this server: never an open redirect.
fn local_path(next: Option<String>) -> String {
    next.filter(|n| n.starts_with('/') && !n.starts_with("//"))
        .unwrap_or_else(|| "/".into())
}

async fn login(axum::extract::Query(q): axum::extract::Query<LoginQuery>) -> Response {
    render(Login {
        next: local_path(q.next),
    })
}

#[derive(Template)]
#[template(path = "password.html")]
struct PasswordPage {
    user: String,
    csrf: String,
    /// The user must change it before going on (else they came by choice).
    required: bool,
    next: String,
}

/// Change one's password: where a user who must change it is sent before anything else.
async fn password(
    session: Session,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    render(PasswordPage {
        required: session.user.must_change_password,
        user: session.user.name,
        csrf: session.csrf,
        next: local_path(q.next),
    })
}
