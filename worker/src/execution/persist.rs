//! A state write (the start, the outcome) retried while its delivery is held: a database
//! outage then costs the delivery a wait, not a redelivery.

use std::time::{Duration, Instant};

use engine_shared::JobId;
use engine_shared::group_commit::GroupCommitError;
use engine_shared::metrics::metrics;

/// How long a delivery is held while PostgreSQL cannot record its job's transition, before
/// it is returned to its queue. Holding it (instead of requeueing at once) keeps a database
/// outage from inflating the message's delivery count towards the crash limit.
pub(super) const DATABASE_PATIENCE: Duration = Duration::from_secs(120);

/// Runs `write` until it succeeds, backing off from 250 ms to 10 s, for up to `patience`
/// (at most [`DATABASE_PATIENCE`], less when the broker's deadline for the delivery is
/// nearer); the last error otherwise.
pub(super) async fn persist<T, F, Fut>(
    id: JobId,
    what: &str,
    patience: Duration,
    mut write: F,
) -> Result<T, GroupCommitError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, GroupCommitError>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        match write().await {
            Ok(value) => return Ok(value),
            Err(error) if started.elapsed() + pause < patience => {
                metrics().dependency_error("postgres");
                tracing::warn!(job = %id, %error, retry_in_ms = pause.as_millis() as u64, "could not {what}; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            Err(error) => {
                metrics().dependency_error("postgres");
                tracing::error!(job = %id, %error, "could not {what}; returning the job to its queue");
                return Err(error);
            }
        }
    }
}
