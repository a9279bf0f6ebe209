//! Server tests: the store on SQLite and on a real PostgreSQL started by the fixture, and
//! the API through the router (no socket) and over real HTTPS.

mod agents;
mod api;
mod channel;
mod https;
mod netns;
mod postgres;
mod proc;
mod store;
