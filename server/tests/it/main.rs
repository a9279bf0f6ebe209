//! Server tests: the store on SQLite and on a real PostgreSQL started by the fixture, and
//! the API through the router (no socket) and over real HTTPS.

mod agents;
mod api;
mod browser;
mod channel;
mod console;
// Real servers (sshd, Samba) for storage targets, shared with the targets crate's tests.
#[allow(dead_code)]
#[path = "../../../targets/tests/it/fixtures.rs"]
mod fixtures;
mod fleet;
mod https;
mod jobs;
mod netns;
mod postgres;
mod proc;
mod scheduler;
mod store;
// Loop devices, filesystems and checksums, shared with the agent's tests.
#[allow(dead_code)]
#[path = "../../../agent/tests/it/util.rs"]
mod util;
