//! Server tests: the store on SQLite and on a real PostgreSQL started by the fixture, and
//! the API through the router (no socket) and over real HTTPS.

mod agents;
mod api;
mod browser;
mod channel;
mod console;
mod fleet;
mod https;
mod jobs;
mod netns;
mod postgres;
mod proc;
mod scheduler;
mod store;
