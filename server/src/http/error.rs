//! One error type for every route: a status, a machine-readable code and a message.
//! Internal causes are logged, never sent to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No valid session or token.
    #[error("authentication required")]
    Unauthorized,
    /// Wrong user name or password.
    #[error("wrong user name or password")]
    BadLogin,
    /// Authenticated, but the role does not allow this.
    #[error("your role does not allow this")]
    Forbidden,
    /// Authenticated, but the role does not allow this part of the request (the reason).
    #[error("{0}")]
    ForbiddenBecause(String),
    /// The user must choose a new password before anything else.
    #[error("change your password first (PUT /api/v1/me/password)")]
    PasswordChange,
    /// A console session's change without its CSRF token.
    #[error("the request lacks this session's CSRF token (header x-csrf-token); reload the page")]
    Csrf,
    /// Nothing at this path or id.
    #[error("{0} not found")]
    NotFound(String),
    /// A path or query parameter cannot be read (an id that is not a number).
    #[error("{0}")]
    BadRequest(String),
    /// The request is malformed or fails validation.
    #[error("{0}")]
    Invalid(String),
    /// A unique name is taken.
    #[error("{0}")]
    Conflict(String),
    /// The request body is larger than this many bytes.
    #[error("the request body is larger than the {} KiB this server takes", .0 / 1024)]
    TooLarge(usize),
    /// Too many attempts; retry after this many seconds.
    #[error("too many failed attempts; try again in {0} s")]
    RateLimited(u64),
    /// Anything else: logged, shown as a generic message.
    #[error("internal error")]
    Internal(String),
}

/// The body of every error response.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable code and a message for people.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// `unauthorized`, `bad_login`, `forbidden`, `csrf`, `password_change_required`,
    /// `not_found`, `bad_request`,
    /// `invalid`, `conflict`, `too_large`, `rate_limited` or `internal`.
    pub code: String,
    pub message: String,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::BadLogin => (StatusCode::UNAUTHORIZED, "bad_login"),
            ApiError::Forbidden | ApiError::ForbiddenBecause(_) => {
                (StatusCode::FORBIDDEN, "forbidden")
            }
            ApiError::Csrf => (StatusCode::FORBIDDEN, "csrf"),
            ApiError::PasswordChange => (StatusCode::FORBIDDEN, "password_change_required"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            StoreError::InUse(why) => ApiError::Conflict(why),
            StoreError::Dangling(why) => ApiError::Invalid(why),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "request failed");
        }
        let (status, code) = self.status_and_code();
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if let ApiError::RateLimited(secs) = self {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// `Json<T>` whose rejections (malformed JSON, wrong fields, wrong content type) are
/// [`ApiError::Invalid`] with the same JSON error body as every other failure.
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let req = super::body::buffered(req).await?;
        <Json<T> as axum::extract::FromRequest<S>>::from_request(req, state)
            .await
            .map(|Json(v)| ApiJson(v))
            .map_err(|e| ApiError::Invalid(rejection_sentence(&e)))
    }
}

/// A JSON body's rejection as a sentence for an admin: which field, and what is wrong with
/// it, without the parser's positions and type names.
fn rejection_sentence(e: &axum::extract::rejection::JsonRejection) -> String {
    use axum::extract::rejection::JsonRejection;
    let text = e.body_text();
    let detail = text
        .split_once("target type: ")
        .map_or(text.as_str(), |(_, d)| d);
    // serde_json ends with " at line L column C": useless to a person filling a form.
    let detail = match detail.rfind(" at line ") {
        Some(i) => &detail[..i],
        None => detail,
    };
    let detail = detail
        .replace("invalid type: string \"\"", "it is empty")
        .replace("invalid type: ", "it is ")
        .replace("expected i64", "a number is expected")
        .replace("expected u64", "a whole number is expected")
        .replace("expected a string", "a text is expected")
        .replace("expected a boolean", "yes or no (true/false) is expected");
    match e {
        JsonRejection::JsonDataError(_) => match detail.split_once(": ") {
            // `spec.target_id: it is empty, a number is expected`
            Some((field, what)) if !field.contains(' ') => {
                format!("the field '{field}' is not valid: {what}")
            }
            _ => format!("the request is not valid: {detail}"),
        },
        JsonRejection::JsonSyntaxError(_) => format!("the request is not valid JSON: {detail}"),
        JsonRejection::MissingJsonContentType(_) => {
            "the request must be JSON (Content-Type: application/json)".to_owned()
        }
        _ => format!("the request cannot be read: {detail}"),
    }
}

/// `Path<T>` whose rejection (an id that is not a number, say) is [`ApiError::BadRequest`]
/// with the JSON error body, not axum's plain text.
pub struct ApiPath<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(|e| ApiError::BadRequest(format!("the path is not valid: {}", e.body_text())))
    }
}

/// `Query<T>` whose rejection (a value of the wrong type) is [`ApiError::BadRequest`] with
/// the JSON error body.
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|e| {
                let text = e.body_text();
                let detail = text
                    .split_once("query string: ")
                    .map_or(text.as_str(), |(_, d)| d);
                ApiError::BadRequest(format!("the query is not valid: {detail}"))
            })
    }
}
