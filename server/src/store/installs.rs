//! Agents installed over SSH: one row per machine and attempt, with its steps.

use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, Row as _};

use super::{now, Change, Store, StoreError};

/// How an installation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstallState {
    Running,
    Successful,
    /// Installed and online, with something the admin should know (no systemd: not
    /// started at boot).
    Warning,
    Failed,
}

impl InstallState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Successful => "successful",
            Self::Warning => "warning",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self, sqlx::Error> {
        Ok(match s {
            "running" => Self::Running,
            "successful" => Self::Successful,
            "warning" => Self::Warning,
            "failed" => Self::Failed,
            other => {
                return Err(sqlx::Error::Decode(
                    format!("unknown install state '{other}'").into(),
                ))
            }
        })
    }
}

/// One step of an installation, as the installer took it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallStep {
    pub at: i64,
    /// `info`, `warning` or `error`.
    pub status: String,
    pub title: String,
    pub detail: String,
}

/// An installation as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstallRow {
    pub id: i64,
    pub host: String,
    pub port: i64,
    pub user_name: String,
    /// The host key the admin confirmed.
    pub fingerprint: String,
    pub state: InstallState,
    pub steps: Vec<InstallStep>,
    /// The agent it enrolled (or found enrolled).
    pub agent_id: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
    pub ended_at: Option<i64>,
}

const COLUMNS: &str =
    "id, host, port, user_name, fingerprint, state, steps, agent_id, created_by, created_at, ended_at";

fn install(r: &sqlx::any::AnyRow) -> Result<InstallRow, sqlx::Error> {
    let steps: String = r.try_get("steps")?;
    Ok(InstallRow {
        id: r.try_get("id")?,
        host: r.try_get("host")?,
        port: r.try_get("port")?,
        user_name: r.try_get("user_name")?,
        fingerprint: r.try_get("fingerprint")?,
        state: InstallState::parse(&r.try_get::<String, _>("state")?)?,
        steps: serde_json::from_str(&steps).map_err(|e| sqlx::Error::Decode(e.into()))?,
        agent_id: r.try_get("agent_id")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        ended_at: r.try_get("ended_at")?,
    })
}

impl Change {
    /// Record an installation that starts now.
    pub async fn create_install(
        &mut self,
        host: &str,
        port: u16,
        user: &str,
        fingerprint: &str,
        by: &str,
        instance: &str,
    ) -> Result<InstallRow, StoreError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO agent_installs (host, port, user_name, fingerprint, state, steps, created_by, created_at, instance) \
             VALUES ($1, $2, $3, $4, 'running', '[]', $5, $6, $7) RETURNING {COLUMNS}"
        )))
        .bind(host)
        .bind(i64::from(port))
        .bind(user)
        .bind(fingerprint)
        .bind(by)
        .bind(now())
        .bind(instance)
        .fetch_one(self.conn())
        .await?;
        Ok(install(&r)?)
    }
}

impl Store {
    pub async fn install(&self, id: i64) -> Result<Option<InstallRow>, StoreError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM agent_installs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(r.as_ref().map(install).transpose()?)
    }

    /// Installations with an id below `before`, newest first.
    pub async fn installs(&self, before: i64, limit: i64) -> Result<Vec<InstallRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM agent_installs WHERE id < $1 ORDER BY id DESC LIMIT $2"
        )))
        .bind(before)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(install).collect::<Result<_, _>>()?)
    }

    /// Write installation `id`'s steps and agent as they stand, and its end when `state`
    /// is not running.
    pub async fn update_install(
        &self,
        id: i64,
        state: InstallState,
        steps: &[InstallStep],
        agent_id: Option<i64>,
    ) -> Result<(), StoreError> {
        let steps = serde_json::to_string(steps).map_err(|e| StoreError::File(e.to_string()))?;
        let ended = (state != InstallState::Running).then(now);
        sqlx::query(
            "UPDATE agent_installs SET state = $1, steps = $2, agent_id = $3, ended_at = $4 WHERE id = $5",
        )
        .bind(state.as_str())
        .bind(steps)
        .bind(agent_id)
        .bind(ended)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Installations left running by server instances not in `live` (stopped) end
    /// failed, saying so.
    pub async fn end_abandoned_installs(
        &self,
        live: &[String],
        why: &str,
    ) -> Result<u64, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS}, instance FROM agent_installs WHERE state = 'running'"
        )))
        .fetch_all(self.pool())
        .await?;
        let mut ended = 0;
        for r in &rows {
            if live.contains(&r.try_get::<String, _>("instance")?) {
                continue;
            }
            let mut row = install(r)?;
            row.steps.push(InstallStep {
                at: now(),
                status: "error".into(),
                title: "Stopped".into(),
                detail: why.into(),
            });
            self.update_install(row.id, InstallState::Failed, &row.steps, row.agent_id)
                .await?;
            ended += 1;
        }
        Ok(ended)
    }
}
