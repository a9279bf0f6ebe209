//! Jobs, their runs (each run's report is kept with it) and the images runs wrote.

use serde::Serialize;
use sqlx::{AssertSqlSafe, Row as _};

use super::states::RunState;
use super::{now, Change, Store, StoreError};

/// Which of a job's sealed secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobSecret {
    /// The image password (`secret`).
    ImagePassword,
    /// The passphrase of the LUKS volume it images (`luks_secret`).
    LuksPassphrase,
}

/// A job as stored: its definition is JSON (see `crate::jobs::spec::JobSpec`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JobRow {
    pub id: i64,
    pub name: String,
    pub enabled: bool,
    pub spec: String,
    /// The sealed image password; never serialised.
    #[serde(skip)]
    pub secret: Option<String>,
    /// The sealed passphrase of the LUKS volume it images; never serialised.
    #[serde(skip)]
    pub luks_secret: Option<String>,
    /// The target its definition names (kept in a column beside it, with a foreign key).
    pub target_id: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A run of a job (or a manual action) on one agent.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RunRow {
    pub id: i64,
    pub job_id: Option<i64>,
    pub agent_id: i64,
    pub name: String,
    /// `manual` or `schedule`.
    pub cause: String,
    pub scheduled_for: Option<i64>,
    pub state: RunState,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub bytes_read: i64,
    pub bytes_written: i64,
    /// The agent's report (JSON of `holdfast_proto::RunReport`).
    #[serde(skip)]
    pub report: Option<String>,
    /// What a run that is not a job's does (JSON of `crate::jobs::tasks::TaskSpec`).
    #[serde(skip)]
    pub task: Option<String>,
}

impl RunRow {
    /// True once the run has ended.
    pub fn finished(&self) -> bool {
        !self.state.is_open()
    }
}

/// An image a run wrote.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ImageRow {
    pub id: i64,
    pub run_id: i64,
    pub job_id: Option<i64>,
    pub agent_id: i64,
    pub target_id: Option<i64>,
    pub name: String,
    pub method: String,
    pub base_name: Option<String>,
    pub image_id: String,
    pub bytes: i64,
    /// Validated after writing: true sound, false damaged, none not checked.
    pub verified: Option<bool>,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
    /// The source it was made of, recorded for jobs that image several (none: an image of
    /// a job with one source, or stored before jobs named several; then the job's first
    /// source's).
    pub source: Option<String>,
}

/// A finished run as the agent reported it.
pub struct Finish<'a> {
    pub run_id: i64,
    pub state: RunState,
    pub started_at: i64,
    pub ended_at: i64,
    pub bytes_read: i64,
    pub bytes_written: i64,
    pub report: &'a str,
    /// Images written: name, method, base name, image id, bytes, verified.
    pub images: Vec<NewImage<'a>>,
}

/// An image to record.
pub struct NewImage<'a> {
    pub name: &'a str,
    pub method: &'a str,
    pub base_name: Option<&'a str>,
    pub image_id: &'a str,
    pub bytes: i64,
    pub verified: Option<bool>,
    /// The source as the job named it, for a job that images several.
    pub source: Option<&'a str>,
}

const JOB_COLUMNS: &str =
    "id, name, enabled, spec, secret, luks_secret, target_id, created_at, updated_at";
const RUN_COLUMNS: &str = "id, job_id, agent_id, name, cause, scheduled_for, state, created_at, started_at, ended_at, bytes_read, bytes_written, report, task";
const IMAGE_COLUMNS: &str = "id, run_id, job_id, agent_id, target_id, name, method, base_name, image_id, bytes, verified, created_at, deleted_at, source";

fn job(r: &sqlx::any::AnyRow) -> Result<JobRow, sqlx::Error> {
    Ok(JobRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        spec: r.try_get("spec")?,
        secret: r.try_get("secret")?,
        luks_secret: r.try_get("luks_secret")?,
        target_id: r.try_get("target_id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn run(r: &sqlx::any::AnyRow) -> Result<RunRow, sqlx::Error> {
    Ok(RunRow {
        id: r.try_get("id")?,
        job_id: r.try_get("job_id")?,
        agent_id: r.try_get("agent_id")?,
        name: r.try_get("name")?,
        cause: r.try_get("cause")?,
        scheduled_for: r.try_get("scheduled_for")?,
        state: r
            .try_get::<String, _>("state")?
            .parse()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        ended_at: r.try_get("ended_at")?,
        bytes_read: r.try_get("bytes_read")?,
        bytes_written: r.try_get("bytes_written")?,
        report: r.try_get("report")?,
        task: r.try_get("task")?,
    })
}

fn image(r: &sqlx::any::AnyRow) -> Result<ImageRow, sqlx::Error> {
    Ok(ImageRow {
        id: r.try_get("id")?,
        run_id: r.try_get("run_id")?,
        job_id: r.try_get("job_id")?,
        agent_id: r.try_get("agent_id")?,
        target_id: r.try_get("target_id")?,
        name: r.try_get("name")?,
        method: r.try_get("method")?,
        base_name: r.try_get("base_name")?,
        image_id: r.try_get("image_id")?,
        bytes: r.try_get("bytes")?,
        verified: r.try_get::<Option<i64>, _>("verified")?.map(|v| v != 0),
        created_at: r.try_get("created_at")?,
        deleted_at: r.try_get("deleted_at")?,
        source: r.try_get("source")?,
    })
}

/// The links a job's spec names, kept in columns (and `job_agents`) beside the spec so that
/// foreign keys guard them.
#[derive(Debug, Default, serde::Deserialize)]
struct JobLinks {
    #[serde(default)]
    target_id: Option<i64>,
    #[serde(default)]
    site_id: Option<i64>,
    #[serde(default)]
    agents: Vec<i64>,
}

impl JobLinks {
    /// The links in `spec` (the server's own JSON of a job spec).
    fn of(spec: &str) -> Result<Self, StoreError> {
        serde_json::from_str(spec)
            .map_err(|e| StoreError::Dangling(format!("the job's definition cannot be read: {e}")))
    }

    /// A write of job `name` failed: a name taken, a link to nothing, or the database.
    fn error(&self, e: sqlx::Error, name: &str) -> StoreError {
        if StoreError::is_foreign_key(&e) {
            let id = |v: Option<i64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
            return StoreError::Dangling(format!(
                "job '{name}' names target {} or site {}, and one of them does not exist",
                id(self.target_id),
                id(self.site_id)
            ));
        }
        StoreError::unique(e, format!("a job named '{name}'"))
    }

    /// Replace the job's agent rows.
    async fn write_agents(
        &self,
        conn: &mut sqlx::AnyConnection,
        job_id: i64,
        name: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM job_agents WHERE job_id = $1")
            .bind(job_id)
            .execute(&mut *conn)
            .await?;
        let mut agents = self.agents.clone();
        agents.sort_unstable();
        agents.dedup();
        for agent in agents {
            sqlx::query("INSERT INTO job_agents (job_id, agent_id) VALUES ($1, $2)")
                .bind(job_id)
                .bind(agent)
                .execute(&mut *conn)
                .await
                .map_err(|e| {
                    if StoreError::is_foreign_key(&e) {
                        StoreError::Dangling(format!(
                            "job '{name}' names agent {agent}, which does not exist"
                        ))
                    } else {
                        StoreError::Db(e)
                    }
                })?;
        }
        Ok(())
    }
}

/// A column that links rows of one table to another: what names a target or a site.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Link {
    /// A job's target.
    JobTarget,
    /// A job's site.
    JobSite,
    /// A site's default target.
    SiteTarget,
}

impl Link {
    /// The table and its column (constants, so the formatted SQL is safe).
    fn table_and_column(self) -> (&'static str, &'static str) {
        match self {
            Self::JobTarget => ("jobs", "target_id"),
            Self::JobSite => ("jobs", "site_id"),
            Self::SiteTarget => ("sites", "target_id"),
        }
    }
}

/// A job's newest run, as job lists show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LastRun {
    /// The report id.
    pub id: i64,
    pub state: RunState,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
}

/// The columns of a job's newest run (`r`), named apart from the job's.
const LAST_RUN_COLUMNS: &str = "r.id AS last_id, r.state AS last_state, r.created_at AS last_created_at, r.started_at AS last_started_at, r.ended_at AS last_ended_at";

/// `a, b` as `p.a, p.b`.
fn prefixed(table: &str, columns: &str) -> String {
    columns
        .split(", ")
        .map(|c| format!("{table}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The newest run in a row of [`LAST_RUN_COLUMNS`]; none when the job never ran.
fn last_run(r: &sqlx::any::AnyRow) -> Result<Option<LastRun>, sqlx::Error> {
    let Some(id) = r.try_get::<Option<i64>, _>("last_id")? else {
        return Ok(None);
    };
    Ok(Some(LastRun {
        id,
        state: r
            .try_get::<String, _>("last_state")?
            .parse()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        created_at: r.try_get("last_created_at")?,
        started_at: r.try_get("last_started_at")?,
        ended_at: r.try_get("last_ended_at")?,
    }))
}

/// Which runs to list.
#[derive(Debug, Default, Clone)]
pub struct RunFilter {
    pub job_id: Option<i64>,
    pub agent_id: Option<i64>,
    pub state: Option<RunState>,
}

impl Store {
    /// Names of the rows (jobs or sites) whose `link` is `id`, sorted: what a refused
    /// delete names.
    pub(crate) async fn names_linked(
        &self,
        link: Link,
        id: i64,
    ) -> Result<Vec<String>, StoreError> {
        let (table, column) = link.table_and_column();
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT name FROM {table} WHERE {column} = $1 ORDER BY name"
        )))
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("name"))
            .collect::<Result<_, _>>()?)
    }

    pub async fn job(&self, id: i64) -> Result<Option<JobRow>, StoreError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(r.as_ref().map(job).transpose()?)
    }

    /// Jobs with an id above `after`, by id.
    pub async fn jobs(&self, after: i64, limit: i64) -> Result<Vec<JobRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(job).collect::<Result<_, _>>()?)
    }

    /// Jobs with an id above `after`, by id, each with its newest run: what the API's and the
    /// console's job lists show, in one query.
    pub async fn jobs_with_last_run(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(JobRow, Option<LastRun>)>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {}, {LAST_RUN_COLUMNS} FROM jobs j \
             LEFT JOIN runs r ON r.id = (SELECT MAX(id) FROM runs WHERE job_id = j.id) \
             WHERE j.id > $1 ORDER BY j.id LIMIT $2",
            prefixed("j", JOB_COLUMNS)
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((job(r)?, last_run(r)?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Job `id`'s newest run.
    pub async fn last_run(&self, job_id: i64) -> Result<Option<LastRun>, StoreError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "SELECT {LAST_RUN_COLUMNS} FROM runs r WHERE r.id = (SELECT MAX(id) FROM runs WHERE job_id = $1)"
        )))
        .bind(job_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(r.as_ref().map(last_run).transpose()?.flatten())
    }

    /// Record the runs of `job_id` on `agents` for the start at `scheduled_for`, in one
    /// transaction; a run that exists already (the same start seen again, after a restart)
    /// is left alone. The runs created.
    pub async fn create_scheduled_runs(
        &self,
        job_id: i64,
        agents: &[i64],
        name: &str,
        scheduled_for: i64,
    ) -> Result<Vec<RunRow>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let mut made = Vec::new();
        let t = now();
        // Many rows per statement: a fleet-wide start is a few statements, not thousands.
        for chunk in agents.chunks(500) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("($1, ${}, $2, 'schedule', $3, 'queued', $4)", i + 5))
                .collect();
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO runs (job_id, agent_id, name, cause, scheduled_for, state, created_at) \
                 VALUES {} ON CONFLICT (job_id, agent_id, scheduled_for) DO NOTHING RETURNING {RUN_COLUMNS}",
                values.join(", ")
            )))
            .bind(job_id)
            .bind(name)
            .bind(scheduled_for)
            .bind(t);
            for agent in chunk {
                q = q.bind(*agent);
            }
            for r in q.fetch_all(&mut *tx).await? {
                made.push(run(&r)?);
            }
        }
        tx.commit().await?;
        Ok(made)
    }

    /// Take queued run `id` for dispatch (queued → running); false when another caller
    /// took it first or it ended.
    pub async fn claim_run(&self, id: i64) -> Result<bool, StoreError> {
        Ok(!self.claim_runs(&[id]).await?.is_empty())
    }

    /// Take queued runs `ids` for dispatch in a few statements; the ids taken.
    pub async fn claim_runs(&self, ids: &[i64]) -> Result<Vec<i64>, StoreError> {
        let t = now();
        let mut taken = Vec::new();
        for chunk in ids.chunks(500) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "UPDATE runs SET state = 'running', started_at = $1 WHERE state = 'queued' AND id IN ({}) RETURNING id",
                list.join(", ")
            )))
            .bind(t);
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q.fetch_all(self.pool()).await? {
                taken.push(r.try_get("id")?);
            }
        }
        Ok(taken)
    }

    /// Put a claimed run back in the queue (its agent went away before accepting it).
    pub async fn requeue_run(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE runs SET state = 'queued', started_at = NULL WHERE id = $1 AND state = 'running'",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every queued run, oldest first.
    pub async fn queued_runs(&self) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE state = 'queued' ORDER BY id"
        )))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(run).collect::<Result<_, _>>()?)
    }

    /// Every running run, oldest first.
    pub async fn running_runs(&self) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE state = 'running' ORDER BY id"
        )))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(run).collect::<Result<_, _>>()?)
    }

    /// End a run that never reached an agent (offline, refused): `state` and a report.
    pub async fn run_ended_here(
        &self,
        id: i64,
        state: RunState,
        report: &str,
    ) -> Result<bool, StoreError> {
        let t = now();
        let done = sqlx::query(
            "UPDATE runs SET state = $1, started_at = COALESCE(started_at, $2), ended_at = $2, report = $3 \
             WHERE id = $4 AND state IN ('queued', 'running')",
        )
        .bind(state.as_str())
        .bind(t)
        .bind(report)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Store the agent's report of a run and the images it wrote, once: a report sent again
    /// (after a reconnect) changes nothing. False when the run is not running (ended
    /// already, or never handed to an agent).
    pub async fn finish_run(&self, f: &Finish<'_>) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE runs SET state = $1, started_at = $2, ended_at = $3, bytes_read = $4, bytes_written = $5, report = $6 \
             WHERE id = $7 AND state = 'running'",
        )
        .bind(f.state.as_str())
        .bind(f.started_at)
        .bind(f.ended_at)
        .bind(f.bytes_read)
        .bind(f.bytes_written)
        .bind(f.report)
        .bind(f.run_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        for i in &f.images {
            sqlx::query(
                "INSERT INTO images (run_id, job_id, agent_id, target_id, name, method, base_name, image_id, bytes, verified, created_at, source) \
                 SELECT r.id, r.job_id, r.agent_id, NULL, $1, $2, $3, $4, $5, $6, $7, $9 FROM runs r WHERE r.id = $8",
            )
            .bind(i.name)
            .bind(i.method)
            .bind(i.base_name)
            .bind(i.image_id)
            .bind(i.bytes)
            .bind(i.verified.map(i64::from))
            .bind(f.ended_at)
            .bind(f.run_id)
            .bind(i.source)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Mark the images `names` of `job_id` on `agent_id` deleted (retention removed them).
    pub async fn mark_images_deleted(
        &self,
        agent_id: i64,
        job_id: Option<i64>,
        names: &[String],
    ) -> Result<(), StoreError> {
        let t = now();
        for name in names {
            sqlx::query(
                "UPDATE images SET deleted_at = $1 WHERE agent_id = $2 AND job_id = $3 AND name = $4 AND deleted_at IS NULL",
            )
            .bind(t)
            .bind(agent_id)
            .bind(job_id)
            .bind(name)
            .execute(self.pool())
            .await?;
        }
        Ok(())
    }

    /// Note the target of the images a run wrote (known to the dispatcher, not the agent).
    pub async fn set_images_target(&self, run_id: i64, target_id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE images SET target_id = $1 WHERE run_id = $2")
            .bind(target_id)
            .bind(run_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn run(&self, id: i64) -> Result<Option<RunRow>, StoreError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(r.as_ref().map(run).transpose()?)
    }

    /// Runs matching `filter` with an id below `before`, newest first.
    pub async fn runs(
        &self,
        filter: &RunFilter,
        before: i64,
        limit: i64,
    ) -> Result<Vec<RunRow>, StoreError> {
        // Only the conditions given, so that the database can use the index of each (an
        // `$n IS NULL OR column = $n` condition hides them and scans every run).
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id < $1");
        let mut n = 1;
        for (column, given) in [
            ("job_id", filter.job_id.is_some()),
            ("agent_id", filter.agent_id.is_some()),
            ("state", filter.state.is_some()),
        ] {
            if given {
                n += 1;
                sql.push_str(&format!(" AND {column} = ${n}"));
            }
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", n + 1));
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(before);
        if let Some(j) = filter.job_id {
            q = q.bind(j);
        }
        if let Some(a) = filter.agent_id {
            q = q.bind(a);
        }
        if let Some(s) = filter.state {
            q = q.bind(s.as_str());
        }
        let rows = q.bind(limit).fetch_all(self.pool()).await?;
        Ok(rows.iter().map(run).collect::<Result<_, _>>()?)
    }

    /// The newest `limit` runs that ended at or after `since` in one of `states`.
    pub async fn runs_ended_in(
        &self,
        since: i64,
        states: &[RunState],
        limit: i64,
    ) -> Result<Vec<RunRow>, StoreError> {
        let marks: Vec<String> = (0..states.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE ended_at >= $1 AND state IN ({}) ORDER BY ended_at DESC LIMIT ${}",
            marks.join(", "),
            states.len() + 2
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(since);
        for s in states {
            q = q.bind(s.as_str());
        }
        let rows = q.bind(limit).fetch_all(self.pool()).await?;
        Ok(rows.iter().map(run).collect::<Result<_, _>>()?)
    }

    /// Runs that ended at or after `since`, oldest first.
    pub async fn runs_ended_since(&self, since: i64) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE ended_at >= $1 ORDER BY id"
        )))
        .bind(since)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(run).collect::<Result<_, _>>()?)
    }

    /// When each agent last had a successful run.
    pub async fn last_success(&self) -> Result<std::collections::HashMap<i64, i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT agent_id, MAX(ended_at) AS at FROM runs WHERE state = 'successful' GROUP BY agent_id",
        )
        .fetch_all(self.pool())
        .await?;
        let mut out = std::collections::HashMap::new();
        for r in rows {
            let at: Option<i64> = r.try_get("at")?;
            if let Some(at) = at {
                out.insert(r.try_get::<i64, _>("agent_id")?, at);
            }
        }
        Ok(out)
    }

    /// Runs still queued or running on `agent_id`.
    pub async fn open_runs(&self, agent_id: i64) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE agent_id = $1 AND state IN ('queued', 'running') ORDER BY id"
        )))
        .bind(agent_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(run).collect::<Result<_, _>>()?)
    }

    /// The images of `job_id` on `agent_id` that still exist, oldest first.
    pub async fn job_images(
        &self,
        job_id: i64,
        agent_id: i64,
    ) -> Result<Vec<ImageRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE job_id = $1 AND agent_id = $2 AND deleted_at IS NULL ORDER BY id"
        )))
        .bind(job_id)
        .bind(agent_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(image).collect::<Result<_, _>>()?)
    }

    /// The newest `limit` images of `agent_id` that still exist, newest first.
    pub async fn agent_images(
        &self,
        agent_id: i64,
        limit: i64,
    ) -> Result<Vec<ImageRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE agent_id = $1 AND deleted_at IS NULL ORDER BY id DESC LIMIT $2"
        )))
        .bind(agent_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(image).collect::<Result<_, _>>()?)
    }

    /// The newest `limit` images of job `job_id` (any agent) that still exist, newest first.
    pub async fn recent_job_images(
        &self,
        job_id: i64,
        limit: i64,
    ) -> Result<Vec<ImageRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE job_id = $1 AND deleted_at IS NULL ORDER BY id DESC LIMIT $2"
        )))
        .bind(job_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(image).collect::<Result<_, _>>()?)
    }

    /// Each job's newest successful restore drill.
    pub async fn last_drills(&self) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id IN \
             (SELECT MAX(id) FROM runs WHERE cause = 'drill' AND state = 'successful' GROUP BY job_id) \
             ORDER BY id DESC"
        )))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(run).collect::<Result<_, _>>()?)
    }

    /// The images run `run_id` wrote (deleted or not).
    pub async fn run_images(&self, run_id: i64) -> Result<Vec<ImageRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE run_id = $1 ORDER BY id"
        )))
        .bind(run_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(image).collect::<Result<_, _>>()?)
    }

    /// Image `id` (deleted or not).
    pub async fn image(&self, id: i64) -> Result<Option<ImageRow>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(image).transpose()?)
    }

    /// Images with an id above `after`, by id (deleted ones included, marked).
    pub async fn images(&self, after: i64, limit: i64) -> Result<Vec<ImageRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(image).collect::<Result<_, _>>()?)
    }
}

impl Change {
    /// Record a job, with the links its spec names (target, site, agents) as columns and
    /// rows beside it, in one transaction.
    pub async fn create_job(
        &mut self,
        name: &str,
        enabled: bool,
        spec: &str,
    ) -> Result<JobRow, StoreError> {
        let links = JobLinks::of(spec)?;
        let t = now();
        let r = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO jobs (name, enabled, spec, target_id, site_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING {JOB_COLUMNS}"
        )))
        .bind(name)
        .bind(i64::from(enabled))
        .bind(spec)
        .bind(links.target_id)
        .bind(links.site_id)
        .bind(t)
        .fetch_one(self.conn())
        .await
        .map_err(|e| links.error(e, name))?;
        let row = job(&r)?;
        links.write_agents(self.conn(), row.id, name).await?;
        Ok(row)
    }

    /// Change a job and its links in one transaction; `None` when there is no such job.
    pub async fn update_job(
        &mut self,
        id: i64,
        name: &str,
        enabled: bool,
        spec: &str,
    ) -> Result<Option<JobRow>, StoreError> {
        let links = JobLinks::of(spec)?;
        let r = sqlx::query(AssertSqlSafe(format!(
            "UPDATE jobs SET name = $1, enabled = $2, spec = $3, target_id = $4, site_id = $5, \
             updated_at = $6 WHERE id = $7 RETURNING {JOB_COLUMNS}"
        )))
        .bind(name)
        .bind(i64::from(enabled))
        .bind(spec)
        .bind(links.target_id)
        .bind(links.site_id)
        .bind(now())
        .bind(id)
        .fetch_optional(self.conn())
        .await
        .map_err(|e| links.error(e, name))?;
        let Some(r) = r else {
            return Ok(None);
        };
        let row = job(&r)?;
        links.write_agents(self.conn(), id, name).await?;
        Ok(Some(row))
    }

    /// Replace one of the job's sealed secrets (`None` clears it).
    pub async fn set_job_secret(
        &mut self,
        id: i64,
        which: JobSecret,
        sealed: Option<&str>,
    ) -> Result<(), StoreError> {
        let sql = match which {
            JobSecret::ImagePassword => {
                "UPDATE jobs SET secret = $1, updated_at = $2 WHERE id = $3"
            }
            JobSecret::LuksPassphrase => {
                "UPDATE jobs SET luks_secret = $1, updated_at = $2 WHERE id = $3"
            }
        };
        sqlx::query(sql)
            .bind(sealed)
            .bind(now())
            .bind(id)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Remove a job; its runs and images stay (their job id becomes empty).
    pub async fn delete_job(&mut self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(id)
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Record a run of `task` on `agent_id`, queued, with `cause`: a restore (no job), or a
    /// job's verify run or drill for the start `scheduled_for` (`None` when that start has a
    /// run already).
    pub async fn create_task_run(
        &mut self,
        job_id: Option<i64>,
        agent_id: i64,
        (name, cause): (&str, &str),
        task: &str,
        scheduled_for: Option<i64>,
    ) -> Result<Option<RunRow>, StoreError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO runs (job_id, agent_id, name, cause, scheduled_for, state, created_at, task) \
             VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7) RETURNING {RUN_COLUMNS}"
        )))
        .bind(job_id)
        .bind(agent_id)
        .bind(name)
        .bind(cause)
        .bind(scheduled_for)
        .bind(now())
        .bind(task)
        .fetch_one(self.conn())
        .await;
        match r {
            Ok(r) => Ok(Some(run(&r)?)),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Record what a verify run found: image `name` of `job_id` on `agent_id` is sound or not.
    pub async fn set_image_verified(
        &mut self,
        job_id: i64,
        agent_id: i64,
        name: &str,
        sound: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE images SET verified = $1 WHERE job_id = $2 AND agent_id = $3 AND name = $4 AND deleted_at IS NULL",
        )
        .bind(i64::from(sound))
        .bind(job_id)
        .bind(agent_id)
        .bind(name)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Record a new run; `None` when this job already has a run on this agent for this
    /// scheduled time (a schedule never fires twice, even across restarts).
    pub async fn create_run(
        &mut self,
        job_id: Option<i64>,
        agent_id: i64,
        name: &str,
        cause: &str,
        scheduled_for: Option<i64>,
    ) -> Result<Option<RunRow>, StoreError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO runs (job_id, agent_id, name, cause, scheduled_for, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'queued', $6) RETURNING {RUN_COLUMNS}"
        )))
        .bind(job_id)
        .bind(agent_id)
        .bind(name)
        .bind(cause)
        .bind(scheduled_for)
        .bind(now())
        .fetch_one(self.conn())
        .await;
        match r {
            Ok(r) => Ok(Some(run(&r)?)),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
