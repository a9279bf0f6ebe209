//! # holdfast-server
//!
//! The control plane: users, tokens and (next) agents, jobs and reports, behind a REST API
//! over HTTPS, with its state in SQLite or PostgreSQL. Image data never passes through it.
//!
//! Layout: [`app`] (the shared state and the one router), [`config`] (flags, environment, TOML), [`store`] (every SQL statement),
//! [`auth`] (roles, password hashing, secrets, login rate limit), [`gateway`] (connected
//! agents and requests to them), [`tls`] (the server's own
//! CA and certificate), [`http`] (one router per resource), [`serve`] (start-up, the first
//! admin, HTTPS, shutdown).

pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod console;
pub mod gateway;
pub mod http;
pub mod install;
pub mod jobs;
pub mod local_agent;
pub mod mail;
pub mod serve;
pub mod store;
pub mod tls;
pub mod vault;
