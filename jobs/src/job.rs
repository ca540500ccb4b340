//! The `Job` trait: a stable kind name, typed args, defaults, and an async handler.

use std::future::Future;
use std::time::Duration;

use engine_shared::limits::Limit;
use engine_shared::retry::Backoff;
use engine_shared::trace::TraceParent;
use engine_shared::{JobId, Namespace, QueueName};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::artifacts::Artifacts;
use crate::log::JobLog;

/// One kind of job. Implementations hold only what their handler needs (an HTTP client,
/// a secret), built once at start-up and shared by every run.
///
/// Invariant: `KIND` never changes once jobs of it exist — it is stored in rows and
/// messages. Rename the Rust type freely; keep the string.
pub trait Job: Send + Sync + 'static {
    /// The wire name, e.g. `webhook.deliver`.
    const KIND: &'static str;

    /// The arguments, checked at submit time (a mismatch is a 422 naming the field).
    type Args: DeserializeOwned + Send + 'static;

    /// Queue used when the submitter names none.
    fn queue(&self) -> QueueName {
        QueueName::default_queue()
    }

    /// Attempts (first run included) when the submitter does not say.
    fn max_attempts(&self) -> u32 {
        5
    }

    /// Per-attempt time limit when the submitter does not say.
    fn timeout(&self) -> Duration {
        Duration::from_secs(60)
    }

    /// Backoff between failed attempts when the submitter does not say; `None` uses the
    /// fleet's `retry.base_delay_ms` / `retry.max_delay_ms`.
    fn backoff(&self) -> Option<Backoff> {
        None
    }

    /// Rate and concurrency limits for this kind, fleet-wide, in every namespace (each with
    /// its own budget). `[[limits]]` in the settings override it.
    fn limit(&self) -> Option<Limit> {
        None
    }

    /// The key a `per_key` limit is kept per (e.g. a webhook's destination host); `None`
    /// shares one budget across the kind.
    fn limit_key(&self, _args: &Self::Args) -> Option<String> {
        None
    }

    /// Runs one attempt. `Ok` carries the result stored on the job.
    fn run(
        &self,
        context: JobContext,
        args: Self::Args,
    ) -> impl Future<Output = Result<serde_json::Value, JobError>> + Send;
}

/// What a handler knows about the attempt it runs.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub id: JobId,
    pub namespace: Namespace,
    /// 1-based attempt number.
    pub attempt: u32,
    pub max_attempts: u32,
    /// Earlier runs of this job that returned [`JobError::Snooze`] (not counted as attempts).
    pub snoozes: u32,
    /// Cancelled when someone cancels the job, when it times out, or when the worker's
    /// grace period ends. Long handlers should watch it and return [`JobError::Cancelled`].
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

/// How a handler says an attempt failed. The worker alone turns this into ack, retry or
/// dead-letter.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth trying again later (network error, 5xx, timeout).
    #[error("{0:#}")]
    Retryable(anyhow::Error),
    /// Will fail the same way every time; no more attempts.
    #[error("fatal: {0:#}")]
    Fatal(anyhow::Error),
    /// Stopped because the cancellation token fired.
    #[error("cancelled")]
    Cancelled,
    /// Not now: run again after this delay without counting an attempt (a busy
    /// downstream, a resource not ready yet). The delay is rounded up to a delay tier.
    #[error("snoozed for {0:?}")]
    Snooze(Duration),
}

impl From<anyhow::Error> for JobError {
    fn from(error: anyhow::Error) -> Self {
        Self::Retryable(error)
    }
}
