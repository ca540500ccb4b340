//! `JobContext`: what a handler knows about the attempt it runs.

use engine_shared::trace::TraceParent;
use engine_shared::{JobId, Namespace};
use tokio_util::sync::CancellationToken;

use crate::artifacts::Artifacts;
use crate::log::JobLog;

/// What a handler knows about the attempt it runs. Built by the worker for each attempt;
/// in a kind's unit test, by [`JobContext::for_test`](crate::testing).
#[derive(Clone, Debug)]
pub struct JobContext {
    pub id: JobId,
    pub namespace: Namespace,
    /// 1-based attempt number.
    pub attempt: u32,
    pub max_attempts: u32,
    /// Earlier runs of this job that returned [`JobError::Snooze`](crate::JobError::Snooze)
    /// (not counted as attempts).
    pub snoozes: u32,
    /// Cancelled when someone cancels the job, when it times out, or when the worker's
    /// grace period ends. Long handlers should watch it and return
    /// [`JobError::Cancelled`](crate::JobError::Cancelled).
    pub cancellation: CancellationToken,
    /// This attempt's log: what is written here is uploaded to storage when the attempt
    /// ends and served by `GET /v1/jobs/{id}/logs`.
    pub log: JobLog,
    /// Named outputs kept in storage for this job.
    pub artifacts: Artifacts,
    /// The trace of the request that submitted the job (W3C `traceparent`); pass
    /// [`TraceParent::child`] on to calls the handler makes so they join the trace.
    pub traceparent: Option<TraceParent>,
}
