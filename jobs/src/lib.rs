//! tl-engine's job kinds.
//!
//! - [`job`]: the [`Job`] trait every kind implements (name, aliases, typed args and
//!   output, defaults, who may submit it, the handler).
//! - [`context`]: the [`JobContext`] a handler gets for one attempt.
//! - [`error`]: [`JobError`], how a handler says an attempt failed, and [`ResultExt`]
//!   (`.retryable()?`, `.fatal()?`).
//! - [`registry`]: the one place kinds are registered; refuses duplicates and bad names,
//!   resolves aliases.
//! - [`deps`]: [`JobDeps`], the clients kinds use, built in one place from the settings.
//! - [`testing`]: [`JobContext::for_test`] and [`testing::run_once`], for a kind's unit
//!   tests without servers.
//! - [`egress`]: the one HTTP client jobs' outbound requests go through (the SSRF policy).
//! - [`log`]: an attempt's log lines, capped, shipped to storage when the attempt ends.
//! - [`artifacts`]: named outputs a handler stores for its job.
//! - [`kinds`]: one module per built-in kind (`webhook.deliver`, `noop`, `sleep`,
//!   `export.jobs_csv`, `db.backup`).
//!
//! Adding a kind: the README's "Adding a job kind", checked here as a doc test.

pub mod artifacts;
pub mod context;
pub mod deps;
pub mod egress;
pub mod error;
pub mod job;
pub mod kinds;
pub mod log;
pub mod registry;
pub mod testing;

pub use artifacts::Artifacts;
pub use context::JobContext;
pub use deps::JobDeps;
pub use egress::EgressClient;
pub use error::{JobError, ResultExt};
pub use job::Job;
pub use log::{JobLog, LogLevel};
pub use registry::{ArgsError, KindDefaults, Registry, RegistryError, register_all};

/// The README, whose "Adding a job kind" example compiles and runs as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
