//! Job kinds that exist only in tests: a handler that panics, one that always fails.

use engine_jobs::{Job, JobContext, JobError};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct NoArgs {}

/// Panics on every attempt: the worker must survive and count a failed attempt.
pub struct Panics;

impl Job for Panics {
    const KIND: &'static str = "test.panic";
    type Args = NoArgs;

    async fn run(
        &self,
        _context: JobContext,
        _args: NoArgs,
    ) -> Result<serde_json::Value, JobError> {
        panic!("deliberate test panic")
    }
}

/// Fails every attempt with a retryable error.
pub struct AlwaysFails;

impl Job for AlwaysFails {
    const KIND: &'static str = "test.fail";
    type Args = NoArgs;

    async fn run(&self, context: JobContext, _args: NoArgs) -> Result<serde_json::Value, JobError> {
        Err(JobError::Retryable(anyhow::anyhow!(
            "deliberate failure on attempt {}",
            context.attempt
        )))
    }
}
