//! `noop`: does nothing and succeeds; measures the fleet's own overhead in benchmarks.

use serde::{Deserialize, Serialize};

use crate::{Job, JobContext, JobError};

pub struct Noop;

/// Accepts any object (or nothing) so benchmarks can vary payload sizes.
#[derive(Debug, Deserialize, Serialize)]
pub struct NoopArgs {}

impl Job for Noop {
    const KIND: &'static str = "noop";
    type Args = NoopArgs;
    /// Stores `null`.
    type Output = ();

    async fn run(&self, _context: JobContext, _args: NoopArgs) -> Result<(), JobError> {
        Ok(())
    }
}
