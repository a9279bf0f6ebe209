//! Storage targets: where images go. Credentials are stored sealed by the vault; this
//! layer only keeps the sealed text.

use serde::Serialize;
use sqlx::{AssertSqlSafe, Row as _};

use super::jobs::Link;
use super::{now, Change, Store, StoreError};

/// A target as stored.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TargetRow {
    pub id: i64,
    pub name: String,
    /// The folder, as a URL or a local path on the agents.
    pub url: String,
    pub username: Option<String>,
    /// Sealed credentials (JSON of password, private key, passphrase); never serialised.
    #[serde(skip)]
    pub secret: Option<String>,
    /// CA certificate(s) for FTPS, PEM (public data).
    pub ca_pem: Option<String>,
    /// The SFTP server's host key an admin confirmed (`SHA256:…`).
    pub host_key: Option<String>,
    /// Bandwidth limit with time windows (`holdfast_targets::bandwidth` syntax).
    pub bandwidth: Option<String>,
    pub notes: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The fields an admin sets.
#[derive(Debug, Clone)]
pub struct TargetFields<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub username: Option<&'a str>,
    pub ca_pem: Option<&'a str>,
    pub host_key: Option<&'a str>,
    pub bandwidth: Option<&'a str>,
    pub notes: &'a str,
}

const COLUMNS: &str =
    "id, name, url, username, secret, ca_pem, host_key, bandwidth, notes, created_at, updated_at";

fn row(r: &sqlx::any::AnyRow) -> Result<TargetRow, sqlx::Error> {
    Ok(TargetRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        url: r.try_get("url")?,
        username: r.try_get("username")?,
        secret: r.try_get("secret")?,
        ca_pem: r.try_get("ca_pem")?,
        host_key: r.try_get("host_key")?,
        bandwidth: r.try_get("bandwidth")?,
        notes: r.try_get("notes")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    pub async fn target(&self, id: i64) -> Result<Option<TargetRow>, StoreError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM targets WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(r.as_ref().map(row).transpose()?)
    }

    /// Targets with an id above `after`, by id.
    pub async fn targets(&self, after: i64, limit: i64) -> Result<Vec<TargetRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM targets WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(row).collect::<Result<_, _>>()?)
    }
}

impl Change {
    /// Add a target (its credentials are set after, once its id is known to seal them).
    pub async fn create_target(&mut self, f: &TargetFields<'_>) -> Result<TargetRow, StoreError> {
        let t = now();
        let r = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO targets (name, url, username, ca_pem, notes, created_at, updated_at, host_key, bandwidth) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8) RETURNING {COLUMNS}"
        )))
        .bind(f.name)
        .bind(f.url)
        .bind(f.username)
        .bind(f.ca_pem)
        .bind(f.notes)
        .bind(t)
        .bind(f.host_key)
        .bind(f.bandwidth)
        .fetch_one(self.conn())
        .await
        .map_err(|e| StoreError::unique(e, format!("a target named '{}'", f.name)))?;
        Ok(row(&r)?)
    }

    /// Change a target's fields; `None` when there is no such target.
    pub async fn update_target(
        &mut self,
        id: i64,
        f: &TargetFields<'_>,
    ) -> Result<Option<TargetRow>, StoreError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "UPDATE targets SET name = $1, url = $2, username = $3, ca_pem = $4, notes = $5, updated_at = $6, \
             host_key = $8, bandwidth = $9 WHERE id = $7 RETURNING {COLUMNS}"
        )))
        .bind(f.name)
        .bind(f.url)
        .bind(f.username)
        .bind(f.ca_pem)
        .bind(f.notes)
        .bind(now())
        .bind(id)
        .bind(f.host_key)
        .bind(f.bandwidth)
        .fetch_optional(self.conn())
        .await
        .map_err(|e| StoreError::unique(e, format!("a target named '{}'", f.name)))?;
        Ok(r.as_ref().map(row).transpose()?)
    }

    /// Pin the host key of a target's SFTP server; false when there is no such target.
    pub async fn set_target_host_key(&mut self, id: i64, key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE targets SET host_key = $1, updated_at = $2 WHERE id = $3")
            .bind(key)
            .bind(now())
            .bind(id)
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replace a target's sealed credentials (`None` clears them).
    pub async fn set_target_secret(
        &mut self,
        id: i64,
        sealed: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE targets SET secret = $1, updated_at = $2 WHERE id = $3")
            .bind(sealed)
            .bind(now())
            .bind(id)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Remove a target; false when absent. The database refuses while a job or a site's
    /// defaults name it (a foreign key); the error names them.
    pub async fn delete_target(&mut self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM targets WHERE id = $1")
            .bind(id)
            .execute(self.conn())
            .await;
        match done {
            Ok(d) => Ok(d.rows_affected() == 1),
            Err(e) if StoreError::is_foreign_key(&e) => {
                let jobs = self.store().names_linked(Link::JobTarget, id).await?;
                let sites = self.store().names_linked(Link::SiteTarget, id).await?;
                let mut users = Vec::new();
                if !jobs.is_empty() {
                    users.push(format!("job(s) {}", jobs.join(", ")));
                }
                if !sites.is_empty() {
                    users.push(format!("the defaults of site(s) {}", sites.join(", ")));
                }
                Err(StoreError::InUse(format!(
                    "the target is used by {}",
                    users.join(" and ")
                )))
            }
            Err(e) => Err(e.into()),
        }
    }
}
