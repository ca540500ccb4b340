//! `sleep`: waits `ms` milliseconds, stopping early if cancelled; for tests and demos of
//! long-running jobs, timeouts, cancellation and graceful shutdown.

use std::time::Duration;

use serde::Deserialize;

use crate::job::{Job, JobContext, JobError};

pub struct Sleep;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepArgs {
    /// How long to sleep, at most one hour.
    #[serde(deserialize_with = "at_most_an_hour")]
    pub ms: u64,
}

fn at_most_an_hour<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let ms = u64::deserialize(deserializer)?;
    if ms > 3_600_000 {
        return Err(serde::de::Error::custom(
            "must be at most 3600000 (one hour)",
        ));
    }
    Ok(ms)
}

impl Job for Sleep {
    const KIND: &'static str = "sleep";
    type Args = SleepArgs;

    fn timeout(&self) -> Duration {
        Duration::from_secs(3_700)
    }

    async fn run(
        &self,
        context: JobContext,
        args: SleepArgs,
    ) -> Result<serde_json::Value, JobError> {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(args.ms)) => {
                Ok(serde_json::json!({ "slept_ms": args.ms }))
            }
            _ = context.cancellation.cancelled() => Err(JobError::Cancelled),
        }
    }
}
