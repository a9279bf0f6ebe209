//! Figures over many rows for the console's dashboard, summed by the database.

use sqlx::Row as _;

use super::{Store, StoreError};

/// Images kept on a target (target absent: the target was removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUsage {
    pub target_id: Option<i64>,
    pub images: i64,
    pub bytes: i64,
}

/// The runs that ended on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayTotal {
    /// Days since 1970-01-01.
    pub day: i64,
    pub runs: i64,
    /// Failed or missed.
    pub failed: i64,
    pub bytes_written: i64,
    /// Summed run time.
    pub seconds: i64,
}

impl Store {
    /// Images kept (not deleted) per target.
    pub async fn target_usage(&self) -> Result<Vec<TargetUsage>, StoreError> {
        let rows = sqlx::query(
            "SELECT target_id, COUNT(*) AS n, CAST(COALESCE(SUM(bytes), 0) AS BIGINT) AS b \
             FROM images WHERE deleted_at IS NULL GROUP BY target_id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TargetUsage {
                    target_id: r.try_get("target_id")?,
                    images: r.try_get("n")?,
                    bytes: r.try_get("b")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Per UTC day, the runs that ended at or after `since`, oldest day first.
    pub async fn daily_totals(&self, since: i64) -> Result<Vec<DayTotal>, StoreError> {
        let rows = sqlx::query(
            "SELECT ended_at / 86400 AS day, COUNT(*) AS n, \
             CAST(SUM(CASE WHEN state IN ('failed', 'missed') THEN 1 ELSE 0 END) AS BIGINT) AS bad, \
             CAST(COALESCE(SUM(bytes_written), 0) AS BIGINT) AS b, \
             CAST(COALESCE(SUM(ended_at - started_at), 0) AS BIGINT) AS s \
             FROM runs WHERE ended_at >= $1 GROUP BY ended_at / 86400 ORDER BY day",
        )
        .bind(since)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DayTotal {
                    day: r.try_get("day")?,
                    runs: r.try_get("n")?,
                    failed: r.try_get("bad")?,
                    bytes_written: r.try_get("b")?,
                    seconds: r.try_get("s")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// How many runs ended in each state at or after `since`.
    pub async fn state_counts(&self, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM runs WHERE ended_at >= $1 GROUP BY state ORDER BY state",
        )
        .bind(since)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}
