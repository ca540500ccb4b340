//! tl-engine's HTTP API.
//!
//! Module map:
//! - [`application`]: build the service from settings, run it until stopped.
//! - [`routes`]: the endpoints; [`submission`]: what a submitted job must look like;
//!   [`readiness`]: `/readyz` answered from one recent check;
//!   [`nul_character`]: the one character PostgreSQL cannot store.
//! - [`auth`]: bearer API key → namespace, [`known_keys`]: the live keys in memory;
//!   [`submission_limit`]: per-key 429s; [`pending_quota`]: the cap on unfinished jobs;
//!   [`problem`]: RFC 9457 errors;
//!   [`json_body`]: JSON bodies with field-level errors.
//! - [`relay`]: the outbox relay (fast path + sweeper) that publishes accepted jobs;
//!   [`scheduler`]: releases due delayed jobs (and long retries) through it at each sweep;
//!   [`blocked`]: namespaces whose vhost refuses publishes, left out for a while.
//! - [`rescuer`]: hands back to work jobs nobody runs and no message will deliver.
//! - [`archiver`]: moves old finished jobs from PostgreSQL to storage, crash-safely.
//! - [`cli`]: the `engine-api` command line (serve, migrate, keys, backup, restore);
//!   [`progress`]: its progress line for long commands.

pub mod application;
pub mod archiver;
pub mod auth;
pub mod blocked;
pub mod cli;
pub mod json_body;
pub mod known_keys;
pub mod nul_character;
pub mod pending_quota;
pub mod problem;
pub mod progress;
pub mod readiness;
pub mod relay;
pub mod rescuer;
pub mod routes;
pub mod scheduler;
pub mod state;
pub mod submission;
pub mod submission_limit;
pub mod trace_context;

pub use application::Application;
