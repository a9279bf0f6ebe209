//! Sites: named groups of agents with defaults their jobs inherit.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::{AssertSqlSafe, Row as _};

use super::jobs::Link;
use super::{now, Change, Store, StoreError};

/// The default target a site's defaults (the server's own JSON) name.
fn default_target(defaults: &str) -> Result<Option<i64>, StoreError> {
    #[derive(serde::Deserialize)]
    struct Links {
        #[serde(default)]
        target_id: Option<i64>,
    }
    serde_json::from_str::<Links>(defaults)
        .map(|l| l.target_id)
        .map_err(|e| StoreError::Dangling(format!("the site's defaults cannot be read: {e}")))
}

/// A write of site `name` failed: its name taken, its target gone, or the database.
fn site_error(e: sqlx::Error, name: &str, target: Option<i64>) -> StoreError {
    if StoreError::is_foreign_key(&e) {
        let target = target.map_or_else(|| "none".to_owned(), |t| t.to_string());
        return StoreError::Dangling(format!(
            "site '{name}' names target {target} as its default, which does not exist"
        ));
    }
    StoreError::unique(e, format!("a site named '{name}'"))
}

/// A site as stored; its defaults are JSON (see `crate::jobs::spec::SiteDefaults`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SiteRow {
    pub id: i64,
    pub name: String,
    pub defaults: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, name, defaults, created_at, updated_at";

fn site(r: &sqlx::any::AnyRow) -> Result<SiteRow, sqlx::Error> {
    Ok(SiteRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        defaults: r.try_get("defaults")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    pub async fn site(&self, id: i64) -> Result<Option<SiteRow>, StoreError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sites WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(r.as_ref().map(site).transpose()?)
    }

    /// Sites with an id above `after`, by id.
    pub async fn sites(&self, after: i64, limit: i64) -> Result<Vec<SiteRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sites WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(site).collect::<Result<_, _>>()?)
    }

    /// Every site with its defaults and its (not revoked) agents, in one look.
    pub async fn site_book(&self) -> Result<HashMap<i64, (SiteRow, Vec<i64>)>, StoreError> {
        let mut book: HashMap<i64, (SiteRow, Vec<i64>)> = self
            .sites(0, i64::MAX)
            .await?
            .into_iter()
            .map(|s| (s.id, (s, Vec::new())))
            .collect();
        let rows = sqlx::query(
            "SELECT id, site_id FROM agents WHERE site_id IS NOT NULL AND revoked_at IS NULL ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?;
        for r in rows {
            let (agent, site): (i64, i64) = (r.try_get("id")?, r.try_get("site_id")?);
            if let Some((_, agents)) = book.get_mut(&site) {
                agents.push(agent);
            }
        }
        Ok(book)
    }
}

impl Change {
    /// Record a site; its default target (in `defaults`) is kept in a column beside them.
    pub async fn create_site(&mut self, name: &str, defaults: &str) -> Result<SiteRow, StoreError> {
        self.touches_sites();
        let target = default_target(defaults)?;
        let t = now();
        let r = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO sites (name, defaults, target_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) RETURNING {COLUMNS}"
        )))
        .bind(name)
        .bind(defaults)
        .bind(target)
        .bind(t)
        .fetch_one(self.conn())
        .await
        .map_err(|e| site_error(e, name, target))?;
        Ok(site(&r)?)
    }

    pub async fn update_site(
        &mut self,
        id: i64,
        name: &str,
        defaults: &str,
    ) -> Result<Option<SiteRow>, StoreError> {
        self.touches_sites();
        let target = default_target(defaults)?;
        let r = sqlx::query(AssertSqlSafe(format!(
            "UPDATE sites SET name = $1, defaults = $2, target_id = $3, updated_at = $4 WHERE id = $5 RETURNING {COLUMNS}"
        )))
        .bind(name)
        .bind(defaults)
        .bind(target)
        .bind(now())
        .bind(id)
        .fetch_optional(self.conn())
        .await
        .map_err(|e| site_error(e, name, target))?;
        Ok(r.as_ref().map(site).transpose()?)
    }

    /// Remove a site (its agents stay, without a site). The database refuses while a job
    /// names it (a foreign key); the error names the jobs.
    pub async fn delete_site(&mut self, id: i64) -> Result<bool, StoreError> {
        self.touches_sites();
        let done = sqlx::query("DELETE FROM sites WHERE id = $1")
            .bind(id)
            .execute(self.conn())
            .await;
        match done {
            Ok(d) => Ok(d.rows_affected() == 1),
            Err(e) if StoreError::is_foreign_key(&e) => {
                let jobs = self.store().names_linked(Link::JobSite, id).await?;
                Err(StoreError::InUse(format!(
                    "the site is used by job(s) {}",
                    jobs.join(", ")
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Put agent `agent_id` in site `site_id` (or in none); false when there is no such agent.
    pub async fn set_agent_site(
        &mut self,
        agent_id: i64,
        site_id: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.touches_sites();
        let done = sqlx::query("UPDATE agents SET site_id = $1 WHERE id = $2")
            .bind(site_id)
            .bind(agent_id)
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
