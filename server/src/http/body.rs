//! Request bodies: one size limit, answered with the JSON error body (413) once the client
//! has finished sending, so that every client, over HTTP/1.1 or HTTP/2, reads the answer
//! instead of a reset connection.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use http_body_util::BodyExt as _;

use super::error::ApiError;

/// The largest request body taken (job files are the largest: a few KiB).
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// How much of a body over the limit is read and dropped before answering, so the client
/// gets to read the answer; beyond this the connection is simply closed.
const DRAIN: u64 = 64 * 1024 * 1024;

/// Refuse a request whose declared length is over [`MAX_BODY`] before reading it: at once
/// when the client waits for `100 Continue` (it then sends nothing), else after reading
/// and dropping what it sends.
pub async fn limit(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > MAX_BODY as u64 => {
            if !expects_continue(req.headers()) && n <= DRAIN {
                drain(req.into_body()).await;
            }
            ApiError::TooLarge(MAX_BODY).into_response()
        }
        _ => next.run(req).await,
    }
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

/// Read and drop up to [`DRAIN`] bytes of `body`.
async fn drain(mut body: Body) {
    let mut seen = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, |d| d.len() as u64);
        if seen > DRAIN {
            break;
        }
    }
}

/// The whole body, at most [`MAX_BODY`] bytes (a body sent without a length that turns out
/// larger is read to its end, up to [`DRAIN`], then refused).
pub async fn read(body: Body) -> Result<Bytes, ApiError> {
    let mut body = body;
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
        if let Some(d) = frame.data_ref() {
            if data.len() + d.len() > MAX_BODY {
                drain(body).await;
                return Err(ApiError::TooLarge(MAX_BODY));
            }
            data.extend_from_slice(d);
        }
    }
    Ok(Bytes::from(data))
}

/// The request with its body read into memory within [`MAX_BODY`], for extractors that
/// read it again.
pub async fn buffered(req: Request) -> Result<Request, ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = read(body).await?;
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// A raw body (a job file) within [`MAX_BODY`].
pub struct ApiBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        read(req.into_body()).await.map(ApiBytes)
    }
}
