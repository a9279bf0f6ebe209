//! Start-up: data folder, store, the first admin, TLS identity, HTTPS, graceful shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use zeroize::Zeroizing;

use crate::app::{app, AppState};
use crate::auth::{hash_password, new_secret, Role};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::store::{Engine, Store};
use crate::tls;

/// Environment variable that sets the first admin's password (else one is generated,
/// written to [`FIRST_START_FILE`] and must be changed at the first login).
pub const ADMIN_PASSWORD_ENV: &str = "HOLDFAST_ADMIN_PASSWORD";

/// Where the first start writes the admin's password and an enrolment command.
pub const FIRST_START_FILE: &str = "first-start.txt";

/// Machines the enrolment token written at first start may enrol.
const FIRST_TOKEN_USES: i64 = 10;

/// Create the `admin` user when there is no user at all, with `given` as its password or
/// a generated one; the password, when the user is new. A generated password must be
/// changed at the first login (it has been written to a file).
pub async fn first_admin(
    store: &Store,
    given: Option<Zeroizing<String>>,
) -> Result<Option<Zeroizing<String>>> {
    if store.count_users().await? > 0 {
        return Ok(None);
    }
    let (password, generated) = match given {
        Some(p) if !p.is_empty() => (p, false),
        _ => (
            Zeroizing::new(new_secret("").map_err(|e| anyhow!(e))?[..20].to_owned()),
            true,
        ),
    };
    let p = password.clone();
    let hash = tokio::task::spawn_blocking(move || hash_password(&p))
        .await?
        .map_err(|e| anyhow!(e))?;
    let mut change = store.change("server").await?;
    let admin = match change
        .create_user("admin", &hash, Role::Admin, generated)
        .await
    {
        Ok(a) => a,
        // Another instance on the same store made it a moment ago.
        Err(crate::store::StoreError::Conflict(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    change
        .commit("create_user", &format!("user:{}", admin.id), "first start")
        .await?;
    Ok(Some(password))
}

/// Write the first start's secrets to `DATA/first-start.txt`, readable by its owner only:
/// standard output goes to the journal, where every reader of logs would see them.
fn write_first_start(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()).map(|()| f))
        .with_context(|| format!("cannot write '{}'", path.display()))?;
    file.flush()?;
    Ok(())
}

/// Run the server until SIGINT or SIGTERM. `admin_password` is used when the first start
/// creates the `admin` user.
/// The lock file that keeps a second server off a data folder with an SQLite store.
pub const LOCK_FILE: &str = "server.lock";

/// Take the data folder for this process alone. Two servers on one SQLite store would each
/// start every scheduled run, send every mail and apply retention: only PostgreSQL lets
/// instances share a store (they elect one leader for that work). The lock is the kernel's
/// (`flock`): it goes with the process, however it ends.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the lock file '{}'", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another holdfast-server is already running on the data folder '{}' (it holds '{}'): \
             with the SQLite store only one instance may run per data folder; stop the other \
             one, or use PostgreSQL (--database-url) to run several instances",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock '{}'", path.display()))
        }
    }
}

pub async fn run(config: Config, admin_password: Option<Zeroizing<String>>) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data folder '{}'", config.data_dir.display()))?;
    let url = config
        .database_url
        .clone()
        .unwrap_or_else(|| Store::sqlite_url(&config.data_dir));
    // Held until the server stops.
    let _only_instance = if url.starts_with("sqlite:") {
        Some(lock_data_dir(&config.data_dir)?)
    } else {
        None
    };
    let store = Store::open(&url)
        .await
        .context("cannot open the database")?;
    let identity = tls::identity(&config.data_dir, config.tls_paths(), &config.names)?;
    let generated = admin_password.as_ref().is_none_or(|p| p.is_empty());
    let new_admin = first_admin(&store, admin_password).await?;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let rustls_config =
        axum_server::tls_rustls::RustlsConfig::from_pem_file(&identity.cert, &identity.key)
            .await
            .context("cannot load the TLS certificate and key")?;
    let given_key = std::env::var("HOLDFAST_MASTER_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let vault = crate::vault::Vault::open(&config.data_dir, given_key.as_deref())
        .context("cannot open the credentials vault")?;
    if vault.source() == crate::vault::KeySource::Created {
        say(format_args!(
            "Master key for stored credentials created: {} (back it up with the database)",
            config.data_dir.join(crate::vault::KEY_FILE).display()
        ));
    }
    check_master_key(&store, &vault).await?;
    let name = format!("{}:{}", crate::config::host_name(), config.listen.port());
    let (cluster, campaign) = match store.engine() {
        Engine::Postgres => {
            let (c, task) = Cluster::shared(store.clone(), url.clone(), &name, config.leader_lease);
            (Arc::new(c), Some(task))
        }
        Engine::Sqlite => (Arc::new(Cluster::sole(&name)), None),
    };
    let mut state = AppState::in_cluster(
        store.clone(),
        identity.fingerprint.clone(),
        vault,
        cluster.clone(),
    )?;
    state.jobs.set_per_agent(config.agent_concurrency);
    state.installer = Arc::new(crate::install::Installer::new(
        state.jobs.clone(),
        config.agent_packages.clone(),
        identity.fingerprint.clone(),
    ));
    if store.engine() == Engine::Sqlite {
        // The only instance: whatever installation is running was this server's.
        store
            .end_abandoned_installs(&[], "the server stopped during the installation")
            .await?;
    }
    state.heartbeat_seconds = config.heartbeat_seconds;
    let handle = axum_server::Handle::new();
    state.listener = Some(handle.clone());

    let host = match config.listen.ip() {
        ip if ip.is_unspecified() => "localhost".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    say(format_args!(
        "Holdfast server {}",
        env!("CARGO_PKG_VERSION")
    ));
    say(format_args!(
        "  console:      https://{host}:{}/",
        config.listen.port()
    ));
    say(format_args!(
        "  data folder:  {}",
        config.data_dir.display()
    ));
    say(format_args!(
        "  certificate:  {} (agents pin this)",
        identity.fingerprint
    ));
    let first_start = config.data_dir.join(FIRST_START_FILE);
    if let Some(p) = new_admin {
        // A first token, so other machines can join before anyone opens the console.
        let token = Zeroizing::new(new_secret("hfe_").map_err(|e| anyhow!(e))?);
        let mut change = store.change("server").await?;
        let created = change
            .create_enrollment_token(
                "first start",
                &crate::auth::secret_hash(&token),
                FIRST_TOKEN_USES,
                crate::store::now() + 24 * 3600,
                "server",
            )
            .await?;
        change
            .commit(
                "create_enrollment_token",
                &format!("enrollment_token:{}", created.id),
                "first start",
            )
            .await?;
        let enrol_host = if config.listen.ip().is_unspecified() {
            crate::config::host_name()
        } else {
            host.clone()
        };
        let text = Zeroizing::new(format!(
            "Holdfast first start. This file is readable by its owner only; the server removes it\n\
             when the admin's generated password is changed (the console asks for that at the\n\
             first login). Delete it yourself once the machines below are enrolled.\n\n\
             console:   https://{host}:{port}/\n\
             user:      admin\n\
             password:  {password}\n\n\
             To enrol other machines (valid 24 h, {FIRST_TOKEN_USES} machines):\n\
             holdfast-agent enroll --server https://{enrol_host}:{port} --token {token} --fingerprint {fingerprint}\n",
            port = config.listen.port(),
            password = if generated {
                p.as_str()
            } else {
                "(the one given in HOLDFAST_ADMIN_PASSWORD)"
            },
            token = token.as_str(),
            fingerprint = identity.fingerprint,
        ));
        write_first_start(&first_start, &text)?;
        say(format_args!(
            "  first start:  user 'admin'; its password and a command to enrol other machines are in {} (readable by its owner only)",
            first_start.display()
        ));
    }
    state.first_start_file = Some(first_start);

    // Expired sessions are dropped now and then.
    let purge = store.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(600)).await;
            if let Err(e) = purge.purge_sessions().await {
                tracing::warn!(error = %e, "could not purge expired sessions");
            }
        }
    });

    let local_agent = if config.local_agent {
        let (store, dir, listen, fp) = (
            store.clone(),
            config.data_dir.clone(),
            config.listen,
            identity.fingerprint.clone(),
        );
        Some(tokio::spawn(async move {
            match crate::local_agent::start(&store, &dir, listen, &fp).await {
                Ok(child) => {
                    say(format_args!("  local agent:  enrolled and running"));
                    Some(child)
                }
                Err(e) => {
                    tracing::error!("local agent: {e:#}");
                    None
                }
            }
        }))
    } else {
        None
    };

    let scheduler = crate::jobs::scheduler::spawn(state.jobs.clone());
    let outbox = state.mailer.clone().spawn(cluster.clone());
    let alerts = crate::jobs::alerts::spawn(state.jobs.clone());
    // With other instances: beats, and notes to and from them.
    let mut shared_tasks: Vec<tokio::task::JoinHandle<()>> = campaign.into_iter().collect();
    shared_tasks.extend(cluster.spawn_beat());
    if store.engine() == Engine::Postgres {
        say(format_args!(
            "  instance:     {} (one of the instances on its PostgreSQL store)",
            cluster.id
        ));
        shared_tasks.push(crate::cluster::relay::spawn_listener(
            url.clone(),
            cluster.clone(),
            state.jobs.clone(),
        ));
        shared_tasks.push(crate::cluster::relay::spawn_publisher(
            cluster.clone(),
            state.jobs.clone(),
        ));
    }
    let on_signal = handle.clone();
    let gateway = state.gateway.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        // Agent channels never end by themselves: close them so the shutdown does not
        // wait out its grace period.
        gateway.close_all();
        on_signal.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let served = axum_server::bind_rustls(config.listen, rustls_config)
        .handle(handle)
        .serve(app(state).into_make_service_with_connect_info::<SocketAddr>())
        .await
        .with_context(|| format!("cannot serve on {}", config.listen));
    scheduler.abort();
    outbox.abort();
    alerts.abort();
    for task in shared_tasks {
        task.abort();
    }
    // Another instance leads from now, not a lease later.
    cluster.leadership.step_down().await;
    // The local agent stops with the server (its child is killed when dropped).
    if let Some(task) = local_agent {
        task.abort();
        if let Ok(Some(mut child)) = task.await {
            let _ = child.kill().await;
        }
    }
    served
}

/// The setting that holds a value sealed with the master key the store's secrets are
/// sealed with.
const KEY_CHECK: &str = "vault.key_check";

/// Refuse to start with a master key other than the one the store's secrets are sealed
/// with (another instance on the same PostgreSQL store started with its own key): every
/// credential would fail to open, run after run. The first start seals the check.
async fn check_master_key(store: &Store, vault: &crate::vault::Vault) -> Result<()> {
    const PLAIN: &[u8] = b"holdfast master key check";
    match store.setting(KEY_CHECK).await? {
        Some((_, Some(sealed))) => match vault.unseal(KEY_CHECK, &sealed) {
            Ok(plain) if plain.as_slice() == PLAIN => Ok(()),
            _ => anyhow::bail!(
                "this server's master key is not the one the store's credentials are sealed with: \
                 every instance on one database needs the same key (HOLDFAST_MASTER_KEY, or the \
                 first instance's '{}' copied into this data folder)",
                crate::vault::KEY_FILE
            ),
        },
        _ => {
            let sealed = vault
                .seal(KEY_CHECK, PLAIN)
                .map_err(|e| anyhow!("cannot seal the key check: {e}"))?;
            store
                .set_setting(KEY_CHECK, "", Some(Some(&sealed)))
                .await?;
            // Another instance starting at the same moment may have written its own.
            match store.setting(KEY_CHECK).await? {
                Some((_, Some(now))) if now == sealed => Ok(()),
                _ => Box::pin(check_master_key(store, vault)).await,
            }
        }
    }
}

/// Print a line on stdout; a closed stdout (a detached or piped start) is not an error.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
