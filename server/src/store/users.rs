//! Console and API users.

use serde::Serialize;
use sqlx::{AssertSqlSafe, Row as _};

use super::{now, Change, Store, StoreError};
use crate::auth::Role;

/// A user as the API shows it (never the password hash).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    pub disabled: bool,
    /// Must choose a new password before anything else is allowed.
    pub must_change_password: bool,
}

fn user(row: &sqlx::any::AnyRow) -> Result<User, sqlx::Error> {
    let role: String = row.try_get("role")?;
    Ok(User {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: role
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
        created_at: row.try_get("created_at")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        must_change_password: row.try_get::<i64, _>("must_change_password")? != 0,
    })
}

/// The columns every user query returns (a constant, so the formatted SQL is safe).
const COLUMNS: &str = "id, name, role, created_at, disabled, must_change_password";

impl Store {
    /// The number of users.
    pub async fn count_users(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(self.pool())
            .await?
            .try_get("n")?)
    }

    /// A user by name, with the password hash.
    pub async fn user_with_hash(&self, name: &str) -> Result<Option<(User, String)>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS}, password_hash FROM users WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(r) => Ok(Some((user(&r)?, r.try_get("password_hash")?))),
            None => Ok(None),
        }
    }

    /// A user by id.
    pub async fn user(&self, id: i64) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM users WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(user).transpose()?)
    }

    /// One page of users, by id.
    pub async fn users(&self, after: i64, limit: i64) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(user).collect::<Result<_, _>>()?)
    }
}

impl Change {
    /// Add a user; `Conflict` when the name is taken. With `must_change`, the user must
    /// choose a new password before doing anything else.
    pub async fn create_user(
        &mut self,
        name: &str,
        password_hash: &str,
        role: Role,
        must_change: bool,
    ) -> Result<User, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO users (name, password_hash, role, created_at, must_change_password) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
        )))
        .bind(name)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(now())
        .bind(i64::from(must_change))
        .fetch_one(self.conn())
        .await
        .map_err(|e| StoreError::unique(e, format!("user '{name}'")))?;
        Ok(user(&row)?)
    }

    /// Change a user's password hash (the user chose it: no change is owed any more).
    pub async fn set_password(&mut self, id: i64, password_hash: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE users SET password_hash = $1, must_change_password = 0 WHERE id = $2",
        )
        .bind(password_hash)
        .bind(id)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Change a user's role and whether they are disabled (a disabled user's sessions and
    /// tokens stop working at once); the user as now stored, or none when there is none.
    pub async fn update_user(
        &mut self,
        id: i64,
        role: Role,
        disabled: bool,
    ) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE users SET role = $1, disabled = $2 WHERE id = $3 RETURNING {COLUMNS}"
        )))
        .bind(role.as_str())
        .bind(i64::from(disabled))
        .bind(id)
        .fetch_optional(self.conn())
        .await?;
        Ok(row.as_ref().map(user).transpose()?)
    }

    /// Remove a user (their sessions and tokens go with them).
    pub async fn delete_user(&mut self, id: i64) -> Result<bool, StoreError> {
        sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(id)
            .execute(self.conn())
            .await?;
        sqlx::query("DELETE FROM api_tokens WHERE user_id = $1")
            .bind(id)
            .execute(self.conn())
            .await?;
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
