//! Server tests: the store on SQLite and on a real PostgreSQL started by the fixture, and
//! the API through the router (no socket) and over real HTTPS.

mod agents;
mod api;
mod authz;
mod browser;
mod channel;
mod clone;
mod console;
mod console_files;
mod crash;
mod drill;
mod files;
mod fleet;
mod https;
mod install;
mod instances;
mod jobs;
mod live;
mod machine;
mod netns;
mod postgres;
mod proc;
mod scheduler;
mod store;
mod verify;

use holdfast_server::store::{Change, Store, StoreError};

/// Make one change to `store` and commit it (with a test audit entry); a change that fails is
/// rolled back.
pub async fn changed<T>(
    store: &Store,
    f: impl AsyncFnOnce(&mut Change) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut c = store.change("test").await?;
    let out = f(&mut c).await?;
    c.commit("test", "test:0", "").await?;
    Ok(out)
}
