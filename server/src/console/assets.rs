//! The console's stylesheet and script, embedded in the binary (no files to install, no
//! CDN). Pages link them with the server's version, so a new release is fetched afresh.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::app::AppState;

const CSS: &str = include_str!("../../../web/static/app.css");
const JS: &str = include_str!("../../../web/static/app.js");

/// Added to asset links so browsers fetch each release's assets once.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/static/app.css",
            get(|| asset("text/css; charset=utf-8", CSS)),
        )
        .route(
            "/static/app.js",
            get(|| asset("text/javascript; charset=utf-8", JS)),
        )
}

async fn asset(mime: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
}
