//! tl-engine's job kinds.
//!
//! - [`job`]: the [`Job`] trait every kind implements, its context and typed errors.
//! - [`registry`]: the one place kinds are registered; refuses duplicates and bad names.
//! - [`kinds`]: one module per built-in kind (`webhook.deliver`, `noop`, `sleep`).
//!
//! Adding a kind: write `kinds/<name>.rs` with an `Args` struct and a `Job` impl, then add
//! one line to [`register_all`].

pub mod job;
pub mod kinds;
pub mod registry;

pub use job::{Job, JobContext, JobError};
pub use registry::{ArgsError, JobDeps, KindDefaults, Registry, RegistryError, register_all};
