//! Which instance leads the work that must happen once (scheduled starts, the mail outbox,
//! alerts): on PostgreSQL, the instance that holds an advisory lock on a connection of its
//! own *and* a current term in `server_leader`.
//!
//! The lock keeps candidates waiting while a leader lives; its session ends when the
//! process dies, and, through `idle_session_timeout`, when the process is paused longer
//! than the lease, so a frozen leader does not keep the others waiting for ever. The term
//! is what fences: each new leader starts a term with a higher epoch once the last term
//! ran out, and [`Leadership::leading`] is asked before every side effect. It is false as
//! soon as the local clock says the lease may have run out (a leader that was paused knows
//! it on waking, before any query) and whenever the database no longer has the term as
//! current.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use sqlx::Connection as _;

use crate::store::cluster::{end_term, renew_term, take_term};
use crate::store::Store;

/// The advisory lock's key ("Holdfast" in ASCII).
const LOCK_KEY: i64 = 0x486f_6c64_6661_7374;

/// A term this instance holds.
#[derive(Debug, Clone, Copy)]
struct Term {
    epoch: i64,
    /// When the last renewal that succeeded was sent (its expiry is a lease after it).
    renewed: Instant,
}

/// Who leads, as this instance knows it.
pub enum Leadership {
    /// The only instance (SQLite): it always leads.
    Sole,
    /// One of several instances on PostgreSQL.
    Elected(Arc<Campaign>),
}

/// This instance's part in the election.
pub struct Campaign {
    store: Store,
    url: String,
    instance: String,
    lease: Duration,
    term: Mutex<Option<Term>>,
}

impl Leadership {
    /// Stand for election among the instances on the PostgreSQL store at `url`, as
    /// `instance`, with terms of `lease`. The campaign runs until the task is dropped.
    pub fn elect(
        store: Store,
        url: String,
        instance: String,
        lease: Duration,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let campaign = Arc::new(Campaign {
            store,
            url,
            instance,
            lease,
            term: Mutex::default(),
        });
        let task = tokio::spawn(campaign.clone().run());
        (Self::Elected(campaign), task)
    }

    /// The epoch of this instance's term while it leads now (the database agrees), else
    /// `None`. Ask before every side effect of the work that must happen once.
    pub async fn leading(&self) -> Option<i64> {
        match self {
            Self::Sole => Some(0),
            Self::Elected(c) => {
                let term = c.current()?;
                match c.store.term_holds(&c.instance, term.epoch).await {
                    Ok(true) => Some(term.epoch),
                    Ok(false) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot check the leader's term");
                        None
                    }
                }
            }
        }
    }

    /// True while this instance believes it leads (no query: for display).
    pub fn believes_leading(&self) -> bool {
        match self {
            Self::Sole => true,
            Self::Elected(c) => c.current().is_some(),
        }
    }

    /// Hand the term over at once (a clean stop), when this instance leads.
    pub async fn step_down(&self) {
        if let Self::Elected(c) = self {
            let Some(term) = c.current() else {
                return;
            };
            *c.term() = None;
            match PgConnection::connect(&c.url).await {
                Ok(mut conn) => {
                    if let Err(e) = end_term(&mut conn, &c.instance, term.epoch).await {
                        tracing::warn!(error = %e, "cannot end the leader's term");
                    }
                    let _ = conn.close().await;
                }
                Err(e) => tracing::warn!(error = %e, "cannot end the leader's term"),
            }
        }
    }
}

impl Campaign {
    fn term(&self) -> std::sync::MutexGuard<'_, Option<Term>> {
        self.term.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The term, while the local clock allows that it still runs. The database's expiry
    /// is a lease after it received the renewal, which was after `renewed`.
    fn current(&self) -> Option<Term> {
        let term = (*self.term())?;
        (term.renewed.elapsed() < self.lease).then_some(term)
    }

    async fn run(self: Arc<Self>) {
        loop {
            if let Err(e) = self.campaign().await {
                tracing::warn!(error = %e, "leader election: database connection lost");
            }
            if self.term().take().is_some() {
                tracing::warn!("this instance no longer leads");
            }
            tokio::time::sleep(self.lease / 3).await;
        }
    }

    /// One connection's worth: wait for the lock, start a term once the last ran out,
    /// renew it until that fails. Returns when this instance no longer leads.
    async fn campaign(&self) -> Result<(), sqlx::Error> {
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        let step = self.lease / 3;
        let mut conn = PgConnection::connect(&self.url).await?;
        // A session idle for a lease is a paused or hung process: PostgreSQL ends it and
        // the lock goes with it. Every loop below speaks at least every third of a lease.
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET idle_session_timeout = {lease_ms}"
        )))
        .execute(&mut conn)
        .await
        {
            // PostgreSQL before 14: a paused leader keeps the lock until its connection
            // drops; its term still runs out, and it still cannot act after that.
            tracing::warn!(error = %e, "idle_session_timeout is not available: a paused leader keeps others waiting until its connection drops");
        }
        loop {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LOCK_KEY)
                .fetch_one(&mut conn)
                .await?;
            if locked {
                break;
            }
            tokio::time::sleep(step).await;
        }
        // The last leader's term may still run (it was killed a moment ago, or is paused
        // and its session not yet ended): it must run out before a new one begins.
        let (epoch, mut renewed) = loop {
            let asked = Instant::now();
            if let Some(epoch) = take_term(&mut conn, &self.instance, lease_ms).await? {
                break (epoch, asked);
            }
            tokio::time::sleep(step.min(Duration::from_millis(500))).await;
        };
        *self.term() = Some(Term { epoch, renewed });
        tracing::info!(term = epoch, "this instance leads");
        loop {
            tokio::time::sleep(step).await;
            let asked = Instant::now();
            if renewed.elapsed() >= self.lease
                || !renew_term(&mut conn, &self.instance, epoch, lease_ms).await?
            {
                // Paused past the lease, or superseded: another may lead now.
                let _ = conn.close().await;
                return Ok(());
            }
            renewed = asked;
            *self.term() = Some(Term { epoch, renewed });
        }
    }
}
