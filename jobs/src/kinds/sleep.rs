//! `sleep`: waits `ms` milliseconds, stopping early if cancelled; for tests and demos of
//! long-running jobs, timeouts, cancellation and graceful shutdown.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Job, JobContext, JobError};

pub struct Sleep;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SleepArgs {
    /// How long to sleep, at most 20 minutes.
    #[serde(deserialize_with = "at_most_20_minutes")]
    pub ms: u64,
}

/// Longest sleep: under RabbitMQ's default 30-minute consumer timeout with room to spare,
/// so the kind's default timeout fits every broker left at its defaults.
const MAX_SLEEP_MS: u64 = 1_200_000;

fn at_most_20_minutes<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let ms = u64::deserialize(deserializer)?;
    if ms > MAX_SLEEP_MS {
        return Err(serde::de::Error::custom(format!(
            "must be at most {MAX_SLEEP_MS} (20 minutes)"
        )));
    }
    Ok(ms)
}

/// The result: how long it slept.
#[derive(Debug, Serialize)]
pub struct SleepOutput {
    pub slept_ms: u64,
}

impl Job for Sleep {
    const KIND: &'static str = "sleep";
    type Args = SleepArgs;
    type Output = SleepOutput;

    fn timeout(&self) -> Duration {
        Duration::from_millis(MAX_SLEEP_MS) + Duration::from_secs(60)
    }

    async fn run(&self, context: JobContext, args: SleepArgs) -> Result<SleepOutput, JobError> {
        context.log.info(format_args!("sleeping {} ms", args.ms));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(args.ms)) => {
                Ok(SleepOutput { slept_ms: args.ms })
            }
            _ = context.cancellation.cancelled() => Err(JobError::Cancelled),
        }
    }
}
