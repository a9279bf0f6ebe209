//! Personal API tokens: shown once, stored as a hash, revocable.

use serde::Serialize;
use sqlx::Row as _;

use sqlx::AssertSqlSafe;

use super::{now, Change, Store, StoreError};
use crate::auth::Role;
use crate::store::users::User;

/// A token as listed (never the secret or its hash).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ApiToken {
    pub id: i64,
    pub name: String,
    /// What the token may do: at most its owner's role (none: tokens made before tokens had
    /// their own role act with the owner's).
    pub role: Option<Role>,
    pub created_at: i64,
    /// When it stops working (none: tokens made before tokens expired).
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

const TOKEN_COLUMNS: &str = "id, name, role, created_at, expires_at, last_used_at, revoked_at";

fn token(row: &sqlx::any::AnyRow) -> Result<ApiToken, sqlx::Error> {
    Ok(ApiToken {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: row
            .try_get::<Option<String>, _>("role")?
            .map(|r| r.parse().map_err(|e: String| sqlx::Error::Decode(e.into())))
            .transpose()?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl Store {
    /// The tokens of `user_id`, newest first.
    pub async fn tokens(&self, user_id: i64) -> Result<Vec<ApiToken>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE user_id = $1 ORDER BY id DESC"
        )))
        .bind(user_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(token).collect::<Result<_, _>>()?)
    }

    /// The enabled user of a live, unexpired token, acting with the token's role (never
    /// more than the user's own), noting its use.
    pub async fn token_user(&self, token_hash: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(
            "SELECT id, user_id, role FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(token_hash)
        .bind(now())
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let id: i64 = row.try_get("id")?;
        let scope: Option<Role> = row
            .try_get::<Option<String>, _>("role")?
            .and_then(|r| r.parse().ok());
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await?;
        let user = self.user(row.try_get("user_id")?).await?;
        Ok(user.filter(|u| !u.disabled).map(|mut u| {
            if let Some(scope) = scope {
                u.role = u.role.min(scope);
            }
            u
        }))
    }
}

impl Change {
    /// Record a new token of `user_id` with `role`, working until `expires_at`.
    pub async fn create_token(
        &mut self,
        user_id: i64,
        (name, role): (&str, Role),
        token_hash: &str,
        expires_at: i64,
    ) -> Result<ApiToken, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO api_tokens (user_id, name, token_hash, created_at, role, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {TOKEN_COLUMNS}"
        )))
        .bind(user_id)
        .bind(name)
        .bind(token_hash)
        .bind(now())
        .bind(role.as_str())
        .bind(expires_at)
        .fetch_one(self.conn())
        .await?;
        Ok(token(&row)?)
    }

    /// Revoke token `id` of `user_id`; false when there is no such live token.
    pub async fn revoke_token(&mut self, user_id: i64, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
        )
        .bind(now())
        .bind(id)
        .bind(user_id)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
