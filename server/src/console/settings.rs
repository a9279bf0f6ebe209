//! Settings: mail (with a test e-mail), alerts, security (certificate fingerprint, master
//! key), users and roles, the user's own password and API tokens, and the audit log.

use askama::Template;
use axum::extract::State;

use super::view::when;
use super::{render, PageResult, Session, Shell};
use crate::app::AppState;
use crate::jobs::alerts::ALERTS_KEY;
use crate::mail::SMTP_KEY;

pub struct UserLine {
    pub id: i64,
    pub name: String,
    pub role: &'static str,
    pub disabled: bool,
    pub created: String,
}

pub struct TokenLine {
    pub id: i64,
    pub name: String,
    /// What it may do (the owner's role for tokens made before tokens had their own).
    pub role: &'static str,
    /// When it stops working.
    pub expires: String,
    pub created: String,
    pub last_used: String,
    pub revoked: bool,
}

pub struct AuditLine {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "settings.html")]
struct Settings {
    shell: Shell,
    /// The stored SMTP settings as JSON, for the form.
    smtp: String,
    smtp_password: bool,
    alerts: String,
    fingerprint: String,
    key_source: String,
    key_id: String,
    users: Vec<UserLine>,
    tokens: Vec<TokenLine>,
    audit: Vec<AuditLine>,
}

pub async fn page(State(state): State<AppState>, session: Session) -> PageResult {
    let store = &state.store;
    let (smtp, smtp_password) = match store.setting(SMTP_KEY).await? {
        Some((v, secret)) => (v, secret.is_some()),
        None => ("{\"port\": 587, \"tls\": \"starttls\"}".to_owned(), false),
    };
    let alerts = store
        .setting(ALERTS_KEY)
        .await?
        .map(|(v, _)| v)
        .unwrap_or_else(|| "{}".into());
    let admin = session.shell("settings").admin;
    let users = if admin {
        store
            .users(0, i64::MAX)
            .await?
            .into_iter()
            .map(|u| UserLine {
                id: u.id,
                role: u.role.as_str(),
                disabled: u.disabled,
                created: when(Some(u.created_at)),
                name: u.name,
            })
            .collect()
    } else {
        Vec::new()
    };
    let tokens = store
        .tokens(session.user.id)
        .await?
        .into_iter()
        .map(|t| TokenLine {
            id: t.id,
            name: t.name,
            role: t.role.unwrap_or(session.user.role).as_str(),
            expires: t
                .expires_at
                .map_or_else(|| "never".to_owned(), |e| when(Some(e))),
            created: when(Some(t.created_at)),
            last_used: when(t.last_used_at),
            revoked: t.revoked_at.is_some(),
        })
        .collect();
    let audit = if admin {
        store
            .audit_log(i64::MAX, 100)
            .await?
            .into_iter()
            .map(|e| AuditLine {
                at: when(Some(e.at)),
                actor: e.actor,
                action: e.action,
                subject: e.subject,
                detail: e.detail,
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(render(Settings {
        shell: session.shell("settings"),
        smtp: serde_json::json!({"settings": serde_json::from_str::<serde_json::Value>(&smtp).unwrap_or_default()}).to_string(),
        smtp_password,
        alerts,
        fingerprint: state.fingerprint.clone(),
        key_source: match state.vault.source() {
            crate::vault::KeySource::Environment => "given in HOLDFAST_MASTER_KEY",
            _ => "key file master.key in the data directory (readable by the server only)",
        }
        .to_owned(),
        key_id: state.vault.key_id().to_owned(),
        users,
        tokens,
        audit,
    }))
}
