//! The store: every SQL statement of the server lives under this module.
//!
//! One set of queries runs on SQLite (the default: a file in the data directory) and on
//! PostgreSQL (a `postgres://` URL), through sqlx's `Any` driver: parameters are `$1, $2…`
//! (both engines accept them), times are Unix seconds in integer columns, and each engine
//! has its own migration folder under `migrations/`.

pub mod agents;
pub mod audit;
pub mod change;
pub mod cluster;
pub mod installs;
pub mod jobs;
pub mod mail;
pub mod overview;
pub mod sessions;
pub mod sites;
pub mod states;
pub mod targets;
pub mod tokens;
pub mod users;

pub use change::Change;
pub use states::{AgentStatus, RunState};

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::AnyPool;

/// Migrations of each engine, embedded in the binary.
static SQLITE: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("../migrations/postgres");

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// A connection pool to the server's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    engine: Engine,
    /// See [`Store::sites_epoch`].
    sites_epoch: Arc<AtomicU64>,
}

/// Store errors: a database failure, or a rule of the data model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed or refused the statement.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Applying the migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A unique name is taken.
    #[error("{0} already exists")]
    Conflict(String),
    /// Removing it would leave something that names it dangling.
    #[error("{0}")]
    InUse(String),
    /// It names something that does not exist (a target, site or agent).
    #[error("{0}")]
    Dangling(String),
    /// The store's file could not be made.
    #[error("{0}")]
    File(String),
}

impl StoreError {
    /// True when `e` is the database refusing a foreign-key violation.
    pub(crate) fn is_foreign_key(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(d) if d.is_foreign_key_violation())
    }

    /// Map a unique-constraint violation to [`StoreError::Conflict`].
    pub(crate) fn unique(e: sqlx::Error, what: impl Into<String>) -> Self {
        match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict(what.into())
            }
            _ => StoreError::Db(e),
        }
    }
}

/// Make the SQLite file of `url` readable by its owner only (created so when it does not
/// exist yet; SQLite gives its journal files the same mode): it holds password hashes,
/// sealed secrets and the audit log.
fn create_private(url: &str) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = url
        .strip_prefix("sqlite://")
        .map(|p| p.split('?').next().unwrap_or(p))
        .filter(|p| !p.is_empty() && !p.starts_with(':'))
    else {
        return Ok(());
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Made by an earlier version, readable by all: made private too.
            for file in [
                path.to_owned(),
                format!("{path}-wal"),
                format!("{path}-shm"),
            ] {
                let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
                let _ = std::fs::set_permissions(&file, private);
            }
            Ok(())
        }
        Err(e) => Err(StoreError::File(format!(
            "cannot create the store file '{path}': {e}"
        ))),
    }
}

impl Store {
    /// Open the store at `url` (`sqlite://…` or `postgres://…`), creating a SQLite file when
    /// missing, and apply the migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let engine = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Engine::Postgres
        } else {
            Engine::Sqlite
        };
        if engine == Engine::Sqlite {
            create_private(url)?;
        }
        let url = match engine {
            // Create the file on first start; WAL lets readers run beside the writer.
            Engine::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if engine == Engine::Sqlite { 4 } else { 16 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if engine == Engine::Sqlite {
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        // With WAL, NORMAL loses no committed data on a crash of the
                        // server (only on power loss, the last commits) and spares an
                        // fsync per commit.
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        match engine {
            Engine::Sqlite => SQLITE.run(&pool).await?,
            Engine::Postgres => POSTGRES.run(&pool).await?,
        }
        Ok(Self {
            pool,
            engine,
            sites_epoch: Arc::default(),
        })
    }

    /// The SQLite store file in `data_dir`.
    pub fn sqlite_url(data_dir: &Path) -> String {
        format!("sqlite://{}", data_dir.join("holdfast.db").display())
    }

    /// The engine this store runs on.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
