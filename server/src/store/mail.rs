//! Settings (a value per key, with an optional sealed secret) and the mail outbox.

use serde::Serialize;
use sqlx::{AssertSqlSafe, Row as _};

use sqlx::AnyConnection;

use super::{now, Change, Store, StoreError};

/// A mail as recorded.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct MailRow {
    pub id: i64,
    /// `report`, `missed`, `alert`, `digest` or `test`.
    pub kind: String,
    /// Comma-separated addresses.
    pub recipients: String,
    pub subject: String,
    #[serde(skip)]
    pub body: String,
    /// `pending`, `sent` or `failed` (gave up).
    pub state: String,
    pub attempts: i64,
    pub created_at: i64,
    pub next_attempt_at: i64,
    pub sent_at: Option<i64>,
    pub last_error: Option<String>,
}

const MAIL_COLUMNS: &str = "id, kind, recipients, subject, body, state, attempts, created_at, next_attempt_at, sent_at, last_error";

fn mail(r: &sqlx::any::AnyRow) -> Result<MailRow, sqlx::Error> {
    Ok(MailRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        recipients: r.try_get("recipients")?,
        subject: r.try_get("subject")?,
        body: r.try_get("body")?,
        state: r.try_get("state")?,
        attempts: r.try_get("attempts")?,
        created_at: r.try_get("created_at")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        sent_at: r.try_get("sent_at")?,
        last_error: r.try_get("last_error")?,
    })
}

impl Store {
    /// A setting's value and sealed secret.
    pub async fn setting(&self, key: &str) -> Result<Option<(String, Option<String>)>, StoreError> {
        let r = sqlx::query("SELECT value, secret FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(self.pool())
            .await?;
        Ok(match r {
            Some(r) => Some((r.try_get("value")?, r.try_get("secret")?)),
            None => None,
        })
    }

    /// Set a setting the server keeps for itself (when a digest or an alert last went
    /// out); `secret: None` keeps the stored secret, `Some(None)` clears it. Settings an
    /// admin changes go through [`Change::set_setting`].
    pub async fn set_setting(
        &self,
        key: &str,
        value: &str,
        secret: Option<Option<&str>>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        write_setting(&mut tx, key, value, secret).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Record a mail to send now.
    pub async fn enqueue_mail(
        &self,
        kind: &str,
        recipients: &str,
        subject: &str,
        body: &str,
    ) -> Result<i64, StoreError> {
        let t = now();
        let r = sqlx::query(
            "INSERT INTO mail_outbox (kind, recipients, subject, body, state, created_at, next_attempt_at) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $5) RETURNING id",
        )
        .bind(kind)
        .bind(recipients)
        .bind(subject)
        .bind(body)
        .bind(t)
        .fetch_one(self.pool())
        .await?;
        Ok(r.try_get("id")?)
    }

    /// Pending mails due by `at`, oldest first.
    pub async fn due_mail(&self, at: i64, limit: i64) -> Result<Vec<MailRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MAIL_COLUMNS} FROM mail_outbox WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY id LIMIT $2"
        )))
        .bind(at)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(mail).collect::<Result<_, _>>()?)
    }

    /// Take due mail `m` for sending until `until`: false when another sender took it
    /// first. Should the sender die, the mail is due again at `until`.
    pub async fn claim_mail(&self, m: &MailRow, until: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE mail_outbox SET next_attempt_at = $1 \
             WHERE id = $2 AND state = 'pending' AND next_attempt_at = $3",
        )
        .bind(until)
        .bind(m.id)
        .bind(m.next_attempt_at)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A mail went out.
    pub async fn mail_sent(&self, id: i64) -> Result<(), StoreError> {
        let t = now();
        sqlx::query(
            "UPDATE mail_outbox SET state = 'sent', sent_at = $1, attempts = attempts + 1, last_error = NULL WHERE id = $2",
        )
        .bind(t)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A try failed: retry at `retry_at`, or give up (`None`).
    pub async fn mail_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE mail_outbox SET attempts = attempts + 1, last_error = $1, \
             state = CASE WHEN $2 IS NULL THEN 'failed' ELSE 'pending' END, \
             next_attempt_at = COALESCE($2, next_attempt_at) WHERE id = $3",
        )
        .bind(error)
        .bind(retry_at)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Mails with an id below `before`, newest first.
    pub async fn mails(&self, before: i64, limit: i64) -> Result<Vec<MailRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MAIL_COLUMNS} FROM mail_outbox WHERE id < $1 ORDER BY id DESC LIMIT $2"
        )))
        .bind(before)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(mail).collect::<Result<_, _>>()?)
    }
}

impl Change {
    /// Set a setting; `secret: None` keeps the stored secret, `Some(None)` clears it.
    pub async fn set_setting(
        &mut self,
        key: &str,
        value: &str,
        secret: Option<Option<&str>>,
    ) -> Result<(), StoreError> {
        write_setting(self.conn(), key, value, secret).await
    }
}

/// Replace setting `key` (see [`Store::set_setting`] for `secret`).
async fn write_setting(
    conn: &mut AnyConnection,
    key: &str,
    value: &str,
    secret: Option<Option<&str>>,
) -> Result<(), StoreError> {
    let kept: Option<String> = match secret {
        Some(s) => s.map(str::to_owned),
        None => sqlx::query("SELECT secret FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.try_get::<Option<String>, _>("secret"))
            .transpose()?
            .flatten(),
    };
    sqlx::query("DELETE FROM settings WHERE key = $1")
        .bind(key)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO settings (key, value, secret, updated_at) VALUES ($1, $2, $3, $4)")
        .bind(key)
        .bind(value)
        .bind(kept)
        .bind(now())
        .execute(&mut *conn)
        .await?;
    Ok(())
}
