//! Sites: named groups of agents with defaults their jobs inherit.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::{AssertSqlSafe, Row as _};

use super::{now, Store, StoreError};

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
    pub async fn create_site(&self, name: &str, defaults: &str) -> Result<SiteRow, StoreError> {
        let t = now();
        let r = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO sites (name, defaults, created_at, updated_at) VALUES ($1, $2, $3, $3) RETURNING {COLUMNS}"
        )))
        .bind(name)
        .bind(defaults)
        .bind(t)
        .fetch_one(self.pool())
        .await
        .map_err(|e| StoreError::unique(e, format!("a site named '{name}'")))?;
        Ok(site(&r)?)
    }

    pub async fn update_site(
        &self,
        id: i64,
        name: &str,
        defaults: &str,
    ) -> Result<Option<SiteRow>, StoreError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "UPDATE sites SET name = $1, defaults = $2, updated_at = $3 WHERE id = $4 RETURNING {COLUMNS}"
        )))
        .bind(name)
        .bind(defaults)
        .bind(now())
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(|e| StoreError::unique(e, format!("a site named '{name}'")))?;
        Ok(r.as_ref().map(site).transpose()?)
    }

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

    /// Remove a site (its agents stay, without a site). Refused while a job names it.
    pub async fn delete_site(&self, id: i64) -> Result<bool, StoreError> {
        let used: Vec<String> = self
            .jobs(0, i64::MAX)
            .await?
            .into_iter()
            .filter(|j| {
                serde_json::from_str::<serde_json::Value>(&j.spec)
                    .ok()
                    .and_then(|v| v["site_id"].as_i64())
                    == Some(id)
            })
            .map(|j| j.name)
            .collect();
        if !used.is_empty() {
            return Err(StoreError::InUse(format!(
                "the site is used by job(s) {}",
                used.join(", ")
            )));
        }
        let done = sqlx::query("DELETE FROM sites WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Put agent `agent_id` in site `site_id` (or in none); false when there is no such agent.
    pub async fn set_agent_site(
        &self,
        agent_id: i64,
        site_id: Option<i64>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE agents SET site_id = $1 WHERE id = $2")
            .bind(site_id)
            .bind(agent_id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
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
