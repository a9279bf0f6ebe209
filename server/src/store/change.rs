//! Changes made on someone's behalf: the change and its audit-log entry are one
//! transaction, so the log never claims a change that was not kept, nor misses one that was.
//!
//! Every write an admin, an operator or an enrolling agent causes goes through a [`Change`]:
//! `store.change(actor)` begins it, its methods (in the module of each table) write, and
//! [`Change::commit`] records the entry and commits. A change dropped without `commit` is
//! rolled back. Caches derived from the store (the dispatcher's sites) see a new
//! [`Store::sites_epoch`] once a change to sites or their agents is committed, so nobody resets
//! them by hand.

use std::sync::atomic::Ordering;

use sqlx::AnyConnection;
use sqlx::{Any, Transaction};

use super::{Store, StoreError};

/// A change in progress on behalf of `actor`.
pub struct Change {
    tx: Transaction<'static, Any>,
    store: Store,
    actor: String,
    sites_changed: bool,
}

impl Store {
    /// Begin a change on behalf of `actor` (a user's name, `enrolment` or `server`).
    pub async fn change(&self, actor: &str) -> Result<Change, StoreError> {
        Ok(Change {
            tx: self.pool().begin().await?,
            store: self.clone(),
            actor: actor.to_owned(),
            sites_changed: false,
        })
    }

    /// A number that grows whenever a committed change touched sites or which agents they
    /// hold: what a cache of them compares.
    pub fn sites_epoch(&self) -> u64 {
        self.sites_epoch.load(Ordering::Acquire)
    }
}

impl Change {
    /// The transaction's connection, for the statements of a change.
    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// The store, for reads outside the transaction (after a refused statement, which
    /// aborts a PostgreSQL transaction).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// This change touches sites or which agents they hold.
    pub(crate) fn touches_sites(&mut self) {
        self.sites_changed = true;
    }

    /// Record `action` on `subject` (`kind:id`) with `detail` in the audit log, and keep the
    /// change.
    pub async fn commit(
        mut self,
        action: &str,
        subject: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        super::audit::write_entry(&mut self.tx, &self.actor, action, subject, detail).await?;
        self.tx.commit().await?;
        if self.sites_changed {
            self.store.sites_epoch.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }
}
