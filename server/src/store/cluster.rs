//! Statements of several server instances on one PostgreSQL store: their beats, and the
//! leader's term. PostgreSQL only: an SQLite store has one instance.
//!
//! Lease times are milliseconds on the database's clock, so instances whose clocks differ
//! still agree on when a term ends.

use sqlx::postgres::PgConnection;
use sqlx::Row as _;

use super::{Store, StoreError};

/// Now on the database's clock, in milliseconds (SQL).
const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// A server instance that beats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub name: String,
}

impl Store {
    /// Instance `id` (shown as `name`) is running.
    pub async fn instance_beat(&self, id: &str, name: &str) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO server_instances (id, name, started_at, beat_at) VALUES ($1, $2, {DB_NOW_MS}, {DB_NOW_MS}) \
             ON CONFLICT (id) DO UPDATE SET beat_at = {DB_NOW_MS}"
        )))
        .bind(id)
        .bind(name)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Instances that beat within the last `within_ms`.
    pub async fn live_instances(&self, within_ms: i64) -> Result<Vec<Instance>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, name FROM server_instances WHERE beat_at > {DB_NOW_MS} - $1 ORDER BY name"
        )))
        .bind(within_ms)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Instance {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Forget instances silent for `silent_ms`: agents they had are named on none.
    pub async fn forget_instances(&self, silent_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE agents SET instance = NULL WHERE instance IN \
             (SELECT id FROM server_instances WHERE beat_at < {DB_NOW_MS} - $1)"
        )))
        .bind(silent_ms)
        .execute(&mut *tx)
        .await?;
        let gone = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM server_instances WHERE beat_at < {DB_NOW_MS} - $1"
        )))
        .bind(silent_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }

    /// True while instance `id`'s term `epoch` is the current one and has not run out.
    pub async fn term_holds(&self, id: &str, epoch: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT 1 AS one FROM server_leader WHERE id = 1 AND instance = $1 AND epoch = $2 \
             AND expires_at > {DB_NOW_MS}"
        )))
        .bind(id)
        .bind(epoch)
        .fetch_optional(self.pool())
        .await?;
        Ok(r.is_some())
    }
}

/// Begin a new term for instance `id` when the last one has run out (or was its own):
/// its epoch, or `None` while another's term still runs.
pub async fn take_term(
    conn: &mut PgConnection,
    id: &str,
    lease_ms: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "UPDATE server_leader SET instance = $1, epoch = epoch + 1, expires_at = {DB_NOW_MS} + $2 \
         WHERE id = 1 AND (expires_at <= {DB_NOW_MS} OR instance = $1) RETURNING epoch"
    )))
    .bind(id)
    .bind(lease_ms)
    .fetch_optional(conn)
    .await
}

/// Extend term `epoch` of instance `id` by `lease_ms` from now; false when it is no longer
/// current or ran out first.
pub async fn renew_term(
    conn: &mut PgConnection,
    id: &str,
    epoch: i64,
    lease_ms: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE server_leader SET expires_at = {DB_NOW_MS} + $3 \
         WHERE id = 1 AND instance = $1 AND epoch = $2 AND expires_at > {DB_NOW_MS}"
    )))
    .bind(id)
    .bind(epoch)
    .bind(lease_ms)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// End term `epoch` of instance `id` now (a clean stop hands over at once).
pub async fn end_term(conn: &mut PgConnection, id: &str, epoch: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE server_leader SET expires_at = 0 WHERE id = 1 AND instance = $1 AND epoch = $2",
    )
    .bind(id)
    .bind(epoch)
    .execute(conn)
    .await?;
    Ok(())
}

impl Store {
    /// Send `payload` on notification channel `channel` (PostgreSQL).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        // Wrapped: pg_notify returns `void`, a type the `Any` driver cannot carry.
        sqlx::query("SELECT 1 AS sent FROM (SELECT pg_notify($1, $2)) AS n")
            .bind(channel)
            .bind(payload)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
