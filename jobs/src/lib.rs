//! tl-engine's job kinds.
//!
//! - [`egress`]: the one HTTP client jobs' outbound requests go through (the SSRF policy).
//! - [`job`]: the [`Job`] trait every kind implements, its context and typed errors.
//! - [`log`]: an attempt's log lines, capped, shipped to storage when the attempt ends.
//! - [`artifacts`]: named outputs a handler stores for its job.
//! - [`registry`]: the one place kinds are registered; refuses duplicates and bad names.
//! - [`kinds`]: one module per built-in kind (`webhook.deliver`, `noop`, `sleep`,
//!   `export.jobs_csv`, `db.backup`).
//!
//! Adding a kind: write `kinds/<name>.rs` with an `Args` struct and a `Job` impl, then add
//! one line to [`register_all`].

pub mod artifacts;
pub mod egress;
pub mod job;
pub mod kinds;
pub mod log;
pub mod registry;

pub use artifacts::Artifacts;
pub use egress::EgressClient;
pub use job::{Job, JobContext, JobError};
pub use log::{JobLog, LogLevel};
pub use registry::{ArgsError, JobDeps, KindDefaults, Registry, RegistryError, register_all};
