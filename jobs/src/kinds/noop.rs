//! `noop`: does nothing and succeeds; measures the fleet's own overhead in benchmarks.

use serde::Deserialize;

use crate::job::{Job, JobContext, JobError};

pub struct Noop;

/// Accepts any object (or nothing) so benchmarks can vary payload sizes.
#[derive(Debug, Deserialize)]
pub struct NoopArgs {}

impl Job for Noop {
    const KIND: &'static str = "noop";
    type Args = NoopArgs;

    async fn run(
        &self,
        _context: JobContext,
        _args: NoopArgs,
    ) -> Result<serde_json::Value, JobError> {
        Ok(serde_json::Value::Null)
    }
}
