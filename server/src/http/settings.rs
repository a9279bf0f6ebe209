//! Server settings: SMTP (with a test mail), the mail outbox, and security facts.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::caller::Caller;
use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use super::{page_limit, AppState, Page, Stored};
use crate::auth::Role;
use crate::jobs::alerts::{Alerts, ALERTS_KEY};
use crate::mail::{MailError, SmtpSettings, SMTP_CONTEXT, SMTP_KEY};
use crate::store::mail::MailRow;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/settings/smtp", get(smtp).put(set_smtp))
        .route("/api/v1/settings/smtp/test", post(test_mail))
        .route("/api/v1/settings/security", get(security))
        .route("/api/v1/settings/alerts", get(alerts).put(set_alerts))
        .route("/api/v1/mail", get(outbox))
}

/// SMTP settings as admins write them; the password is write-only.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SmtpBody {
    settings: SmtpSettings,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    password: Option<Zeroizing<String>>,
    #[serde(default)]
    clear_password: bool,
}

/// Read the SMTP settings (the password only as set or not set).
#[utoipa::path(get, path = "/api/v1/settings/smtp", tag = "settings", responses((status = 200, description = "the SMTP settings (password shown as set / not set), or null", body = SmtpView)), security(("session" = []), ("token" = [])))]
async fn smtp(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let stored = state.store.setting(SMTP_KEY).await?;
    Ok(Json(match stored {
        None => SmtpView {
            settings: None,
            password: Stored::NotSet,
        },
        Some((value, secret)) => SmtpView {
            // Written by this server from checked settings: unreadable only if damaged.
            settings: Some(serde_json::from_str(&value).map_err(|e| {
                ApiError::Internal(format!("the stored SMTP settings cannot be read: {e}"))
            })?),
            password: Stored::when(secret.is_some()),
        },
    }))
}

/// The SMTP settings as shown: the password only as set or not set.
#[derive(Serialize, utoipa::ToSchema)]
struct SmtpView {
    /// None until an admin saves them.
    settings: Option<SmtpSettings>,
    password: Stored,
}

/// A test e-mail that went out.
#[derive(Serialize, utoipa::ToSchema)]
struct TestSent {
    sent: bool,
    /// Its line in the outbox.
    mail_id: i64,
}

/// The server's identity and the key that seals credentials.
#[derive(Serialize, utoipa::ToSchema)]
struct Security {
    /// What agents pin (`SHA256:…`).
    certificate_fingerprint: String,
    master_key: MasterKey,
}

/// Where the master key comes from, and its id (never the key).
#[derive(Serialize, utoipa::ToSchema)]
struct MasterKey {
    source: crate::vault::KeySource,
    id: String,
}

/// Change the SMTP settings.
#[utoipa::path(put, path = "/api/v1/settings/smtp", tag = "settings", request_body = SmtpBody, responses((status = 200, description = "the SMTP settings as saved", body = SmtpView), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn set_smtp(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SmtpBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    body.settings.validate().map_err(ApiError::Invalid)?;
    let value =
        serde_json::to_string(&body.settings).map_err(|e| ApiError::Internal(e.to_string()))?;
    let sealed = match &body.password {
        Some(p) if !p.is_empty() => Some(Some(
            state
                .vault
                .seal(SMTP_CONTEXT, p.as_bytes())
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        )),
        _ if body.clear_password => Some(None),
        _ => None,
    };
    let mut change = state.store.change(&caller.user.name).await?;
    change
        .set_setting(SMTP_KEY, &value, sealed.as_ref().map(|s| s.as_deref()))
        .await?;
    let detail = if sealed.is_some() {
        "password changed"
    } else {
        ""
    };
    change
        .commit("update_smtp", "settings:smtp", detail)
        .await?;
    smtp(State(state), caller).await
}

/// `POST /settings/smtp/test`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestMail {
    to: String,
}

/// Send a test e-mail.
#[utoipa::path(post, path = "/api/v1/settings/smtp/test", tag = "settings", request_body = TestMail, responses((status = 200, description = "sent"), (status = 422, description = "not configured, bad address, or the SMTP server refused (the error says what it said)", body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn test_mail(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<TestMail>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let subject = "[Holdfast] Test e-mail";
    let text = format!(
        "This is a test e-mail from the Holdfast server, sent by {}.\nIf you can read it, report mails will arrive.\n",
        caller.user.name
    );
    let id = state
        .store
        .enqueue_mail("test", &body.to, subject, &text)
        .await?;
    match state
        .mailer
        .send(std::slice::from_ref(&body.to), subject, &text)
        .await
    {
        Ok(()) => {
            state.store.mail_sent(id).await?;
            Ok((
                StatusCode::OK,
                Json(TestSent {
                    sent: true,
                    mail_id: id,
                }),
            ))
        }
        Err(e) => {
            // A test is not retried: its failure is the answer.
            state.store.mail_failed(id, &e.to_string(), None).await?;
            match e {
                MailError::Store(s) => Err(s.into()),
                other => Err(ApiError::Invalid(format!(
                    "the test e-mail was not sent: {other}"
                ))),
            }
        }
    }
}

/// Certificate fingerprint and master key status.
#[utoipa::path(get, path = "/api/v1/settings/security", tag = "settings", responses((status = 200, description = "certificate fingerprint and master key status", body = Security)), security(("session" = []), ("token" = [])))]
async fn security(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    Ok(Json(Security {
        certificate_fingerprint: state.fingerprint.clone(),
        master_key: MasterKey {
            source: state.vault.source(),
            id: state.vault.key_id().to_owned(),
        },
    }))
}

/// Read the alert and digest settings.
#[utoipa::path(get, path = "/api/v1/settings/alerts", tag = "settings", responses((status = 200, description = "the daily digest and the no-successful-backup alert", body = Alerts)), security(("session" = []), ("token" = [])))]
async fn alerts(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let rules: Alerts = state
        .store
        .setting(ALERTS_KEY)
        .await?
        .and_then(|(v, _)| serde_json::from_str(&v).ok())
        .unwrap_or_default();
    Ok(Json(rules))
}

/// Change the alert and digest settings.
#[utoipa::path(put, path = "/api/v1/settings/alerts", tag = "settings", request_body = Alerts, responses((status = 200, body = Alerts), (status = 422, body = ErrorBody)), security(("session" = []), ("token" = [])))]
async fn set_alerts(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(rules): ApiJson<Alerts>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    rules.validate().map_err(ApiError::Invalid)?;
    let value = serde_json::to_string(&rules).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut change = state.store.change(&caller.user.name).await?;
    change.set_setting(ALERTS_KEY, &value, Some(None)).await?;
    change
        .commit("update_alerts", "settings:alerts", "")
        .await?;
    Ok(Json(rules))
}

/// `?before=&limit=`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutboxQuery {
    before: Option<i64>,
    limit: Option<i64>,
}

/// List the mail outbox, newest first.
#[utoipa::path(get, path = "/api/v1/mail", tag = "settings", params(OutboxQuery), responses((status = 200, description = "mails sent, pending and given up, newest first, with their last error", body = Page<MailRow>)), security(("session" = []), ("token" = [])))]
async fn outbox(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<OutboxQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let limit = page_limit(q.limit)?;
    let rows = state
        .store
        .mails(q.before.unwrap_or(i64::MAX), limit)
        .await?;
    Ok(Json(Page::new(rows, limit, |m| m.id)))
}
