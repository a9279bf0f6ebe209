//! Enrolment tokens and agents.

use serde::Serialize;
use sqlx::{AssertSqlSafe, Row as _};

use super::{now, Change, Store, StoreError};

/// An enrolment token as listed (never the secret).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EnrollmentToken {
    pub id: i64,
    pub name: String,
    pub uses_left: i64,
    pub expires_at: i64,
    pub created_by: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// An agent as stored.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Agent {
    pub id: i64,
    pub hostname: String,
    pub enrolled_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    pub os: String,
    pub agent_version: String,
    /// The last inventory (JSON of `holdfast_proto::Inventory`).
    #[serde(skip)]
    pub inventory: Option<String>,
    pub inventory_at: Option<i64>,
    /// The site it belongs to.
    pub site_id: Option<i64>,
    /// Why the server last refused its channel for good (another protocol version), until
    /// it next connects.
    pub refusal: Option<String>,
    pub refused_at: Option<i64>,
    /// Bandwidth limit of all its target transfers, set on the console
    /// (`holdfast_targets::bandwidth` syntax).
    pub bandwidth: Option<String>,
    #[serde(skip)]
    pub secret_hash: String,
    /// The server instance its channel is open on (several instances share a PostgreSQL
    /// store); cleared when the channel closes.
    #[serde(skip)]
    pub instance: Option<String>,
}

/// The columns every agent query returns (a constant, so the formatted SQL is safe).
const AGENT_COLUMNS: &str = "id, hostname, enrolled_at, revoked_at, last_seen_at, os, agent_version, inventory, inventory_at, site_id, refusal, refused_at, bandwidth, secret_hash, instance";
/// [`AGENT_COLUMNS`] without the inventory (read as none).
const AGENT_LIST_COLUMNS: &str = "id, hostname, enrolled_at, revoked_at, last_seen_at, os, agent_version, CAST(NULL AS TEXT) AS inventory, inventory_at, site_id, refusal, refused_at, bandwidth, secret_hash, instance";
const TOKEN_COLUMNS: &str = "id, name, uses_left, expires_at, created_by, created_at, revoked_at";

fn agent(r: &sqlx::any::AnyRow) -> Result<Agent, sqlx::Error> {
    Ok(Agent {
        id: r.try_get("id")?,
        hostname: r.try_get("hostname")?,
        enrolled_at: r.try_get("enrolled_at")?,
        revoked_at: r.try_get("revoked_at")?,
        last_seen_at: r.try_get("last_seen_at")?,
        os: r.try_get("os")?,
        agent_version: r.try_get("agent_version")?,
        inventory: r.try_get("inventory")?,
        inventory_at: r.try_get("inventory_at")?,
        site_id: r.try_get("site_id")?,
        refusal: r.try_get("refusal")?,
        refused_at: r.try_get("refused_at")?,
        bandwidth: r.try_get("bandwidth")?,
        secret_hash: r.try_get("secret_hash")?,
        instance: r.try_get("instance")?,
    })
}

fn token(r: &sqlx::any::AnyRow) -> Result<EnrollmentToken, sqlx::Error> {
    Ok(EnrollmentToken {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        uses_left: r.try_get("uses_left")?,
        expires_at: r.try_get("expires_at")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

impl Store {
    /// Every enrolment token, newest first.
    pub async fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY id DESC"
        )))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(token).collect::<Result<_, _>>()?)
    }

    /// An agent by id.
    pub async fn agent(&self, id: i64) -> Result<Option<Agent>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(agent).transpose()?)
    }

    /// One page of agents, by id.
    pub async fn agents(&self, after: i64, limit: i64) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(agent).collect::<Result<_, _>>()?)
    }

    /// Every agent, by id, without its inventory (what lists and live views need: a fleet's
    /// inventories are megabytes).
    pub async fn agent_list(&self) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {AGENT_LIST_COLUMNS} FROM agents ORDER BY id"
        )))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(agent).collect::<Result<_, _>>()?)
    }

    /// Record why agent `id`'s channel was refused for good (`None`: it connected, forget
    /// the last refusal).
    pub async fn set_agent_refusal(&self, id: i64, why: Option<&str>) -> Result<(), StoreError> {
        // Clearing runs on every connection: it writes only when there is a refusal to clear.
        sqlx::query(
            "UPDATE agents SET refusal = $1, refused_at = $2 \
             WHERE id = $3 AND (refusal IS NOT NULL OR $1 IS NOT NULL)",
        )
        .bind(why)
        .bind(why.map(|_| now()))
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Note that agent `id` was heard from now.
    /// Agent `id`'s channel opened on server instance `instance`.
    pub async fn agent_connected(&self, id: i64, instance: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE agents SET last_seen_at = $1, instance = $2 WHERE id = $3")
            .bind(now())
            .bind(instance)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Agent `id`'s channel on `instance` closed (a newer channel on another instance is
    /// left named).
    pub async fn agent_disconnected(&self, id: i64, instance: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE agents SET last_seen_at = $1, instance = NULL WHERE id = $2 AND instance = $3",
        )
        .bind(now())
        .bind(id)
        .bind(instance)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn agent_seen(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE agents SET last_seen_at = $1 WHERE id = $2")
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Store the agent's inventory (JSON) and what it says about the machine.
    pub async fn set_inventory(
        &self,
        id: i64,
        hostname: &str,
        os: &str,
        agent_version: &str,
        inventory_json: &str,
    ) -> Result<(), StoreError> {
        let t = now();
        sqlx::query(
            "UPDATE agents SET hostname = $1, os = $2, agent_version = $3, inventory = $4, inventory_at = $5, last_seen_at = $5 WHERE id = $6",
        )
        .bind(hostname)
        .bind(os)
        .bind(agent_version)
        .bind(inventory_json)
        .bind(t)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

impl Change {
    /// Record an enrolment token good for `uses` enrolments until `expires_at`.
    pub async fn create_enrollment_token(
        &mut self,
        name: &str,
        token_hash: &str,
        uses: i64,
        expires_at: i64,
        created_by: &str,
    ) -> Result<EnrollmentToken, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO enrollment_tokens (name, token_hash, uses_left, expires_at, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {TOKEN_COLUMNS}"
        )))
        .bind(name)
        .bind(token_hash)
        .bind(uses)
        .bind(expires_at)
        .bind(created_by)
        .bind(now())
        .fetch_one(self.conn())
        .await?;
        Ok(token(&row)?)
    }

    /// Revoke an enrolment token; false when there is no such live token.
    pub async fn revoke_enrollment_token(&mut self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE enrollment_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now())
        .bind(id)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Use one enrolment of a live token and create the agent, in one transaction; `None`
    /// when the token is unknown, used up, revoked or expired.
    pub async fn enroll_agent(
        &mut self,
        token_hash: &str,
        hostname: &str,
        secret_hash: &str,
    ) -> Result<Option<i64>, StoreError> {
        let used = sqlx::query(
            "UPDATE enrollment_tokens SET uses_left = uses_left - 1 \
             WHERE token_hash = $1 AND uses_left > 0 AND revoked_at IS NULL AND expires_at > $2 \
             RETURNING id",
        )
        .bind(token_hash)
        .bind(now())
        .fetch_optional(self.conn())
        .await?;
        let Some(used) = used else {
            return Ok(None);
        };
        let token_id: i64 = used.try_get("id")?;
        let row = sqlx::query(
            "INSERT INTO agents (hostname, secret_hash, enrolled_at, token_id) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(hostname)
        .bind(secret_hash)
        .bind(now())
        .bind(token_id)
        .fetch_one(self.conn())
        .await?;
        Ok(Some(row.try_get("id")?))
    }

    /// Set (or with `None` remove) agent `id`'s bandwidth limit; false when there is no
    /// such agent.
    pub async fn set_agent_bandwidth(
        &mut self,
        id: i64,
        bandwidth: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE agents SET bandwidth = $1 WHERE id = $2")
            .bind(bandwidth)
            .bind(id)
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Revoke an agent; false when there is no such live agent.
    pub async fn revoke_agent(&mut self, id: i64) -> Result<bool, StoreError> {
        self.touches_sites();
        let done =
            sqlx::query("UPDATE agents SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now())
                .bind(id)
                .execute(self.conn())
                .await?;
        Ok(done.rows_affected() == 1)
    }
}
