//! One delivery's way: decode → move to `running` → run the handler under a timeout, a
//! cancellation token and a panic guard → record the outcome → ack, retry or dead-letter.
//! The ack is sent only after the outcome is committed.

use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};

use engine_jobs::{JobContext, JobError, Registry};
use engine_shared::broker::Publisher;
use engine_shared::envelope::Envelope;
use engine_shared::namespace::NamespaceSpec;
use engine_shared::retry::RetryPolicy;
use engine_shared::store::{AttemptOutcome, StartRequest};
use engine_shared::{JobId, JobStatus};

use crate::in_flight::InFlight;
use crate::transitions::Transitions;

/// When PostgreSQL cannot record a transition, the delivery goes back after this pause, so
/// an outage does not become a hot redelivery loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// A served namespace and the publisher its retries go through.
pub struct NamespaceContext {
    pub spec: NamespaceSpec,
    pub publisher: Publisher,
}

/// What every execution shares.
pub struct Shared {
    pub registry: Arc<Registry>,
    pub transitions: Transitions,
    pub in_flight: Arc<InFlight>,
    pub retry: RetryPolicy,
    pub namespaces: Vec<NamespaceContext>,
}

pub async fn execute(shared: Arc<Shared>, namespace: usize, delivery: Delivery) {
    let context = &shared.namespaces[namespace];
    let envelope = match Envelope::from_bytes(&delivery.data) {
        Ok(envelope) => envelope,
        Err(error) => {
            // Not ours to run: park it in the dead queue instead of redelivering it forever.
            tracing::error!(namespace = %context.spec.name, %error, "malformed message; dead-lettering it");
            reject(&delivery).await;
            return;
        }
    };
    let id = envelope.id;
    let request = StartRequest {
        namespace: context.spec.name.clone(),
        id,
        redelivered: delivery.redelivered,
    };
    let started = match shared.transitions.starts.submit(request).await {
        Ok(Some(started)) => started,
        Ok(None) => {
            tracing::debug!(job = %id, "not runnable (finished, cancelled, unknown or running elsewhere); skipping");
            ack(&delivery).await;
            return;
        }
        Err(error) => {
            tracing::warn!(job = %id, %error, "could not move the job to running; returning it");
            requeue_after_pause(&delivery).await;
            return;
        }
    };

    let outcome = run_handler(
        &shared,
        &context.spec,
        &envelope,
        started.attempt,
        started.max_attempts,
        started.timeout_ms,
    )
    .await;
    let finished = match shared.transitions.finishes.submit((id, outcome)).await {
        Ok(finished) => finished,
        Err(error) => {
            // Not recorded, so not acked: the redelivery re-runs it (at-least-once).
            tracing::error!(job = %id, %error, "could not record the outcome; returning the job");
            requeue_after_pause(&delivery).await;
            return;
        }
    };
    match finished.status {
        Some(JobStatus::Retrying) => {
            let tier = shared.retry.tier_for(shared.retry.backoff(started.attempt));
            match context.publisher.publish_retry(&envelope, &tier).await {
                Ok(()) => {
                    tracing::info!(job = %id, attempt = started.attempt, tier = tier.label, "attempt failed; retry parked in delay tier");
                    ack(&delivery).await;
                }
                Err(error) => {
                    // The row says `retrying`; requeueing retries now rather than later.
                    tracing::warn!(job = %id, error = format!("{error:#}"), "could not park the retry; requeueing it");
                    requeue_after_pause(&delivery).await;
                }
            }
        }
        Some(JobStatus::Dead) => {
            tracing::warn!(job = %id, attempt = started.attempt, "job is dead; moved to the dead queue");
            reject(&delivery).await;
        }
        Some(status) => {
            tracing::debug!(job = %id, status = status.as_str(), "job finished");
            ack(&delivery).await;
        }
        None => {
            tracing::debug!(job = %id, "outcome not recorded: the job was no longer running here");
            ack(&delivery).await;
        }
    }
}

async fn run_handler(
    shared: &Shared,
    spec: &NamespaceSpec,
    envelope: &Envelope,
    attempt: u32,
    max_attempts: u32,
    timeout_ms: u32,
) -> AttemptOutcome {
    let id: JobId = envelope.id;
    let cancellation = shared.in_flight.start(id);
    let context = JobContext {
        id,
        namespace: spec.name.clone(),
        attempt,
        max_attempts,
        cancellation: cancellation.clone(),
    };
    let Some(handler) = shared
        .registry
        .run(&envelope.kind, context, envelope.args.clone())
    else {
        shared.in_flight.finish(id);
        return AttemptOutcome::Fatal(format!(
            "no handler for kind {:?} in this worker",
            envelope.kind.as_str()
        ));
    };
    let timeout = Duration::from_millis(u64::from(timeout_ms));
    // A task of its own, so a panic is caught as a JoinError instead of killing the worker.
    let mut task = tokio::spawn(handler);
    let outcome = match tokio::time::timeout(timeout, &mut task).await {
        Ok(Ok(Ok(result))) => AttemptOutcome::Succeeded(result),
        Ok(Ok(Err(JobError::Retryable(error)))) => AttemptOutcome::Failed(format!("{error:#}")),
        Ok(Ok(Err(JobError::Fatal(error)))) => AttemptOutcome::Fatal(format!("{error:#}")),
        // Whether this becomes `cancelled` is decided in PostgreSQL, where the request is.
        Ok(Ok(Err(JobError::Cancelled))) => {
            AttemptOutcome::Failed("stopped on cancellation".into())
        }
        Ok(Err(join_error)) if join_error.is_panic() => {
            let payload = join_error.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text panic payload".into());
            tracing::error!(job = %id, message, "handler panicked");
            AttemptOutcome::Failed(format!("handler panicked: {message}"))
        }
        Ok(Err(join_error)) => AttemptOutcome::Failed(format!("handler task ended: {join_error}")),
        Err(_) => {
            cancellation.cancel();
            task.abort();
            AttemptOutcome::Failed(format!("timed out after {:.3}s", timeout.as_secs_f64()))
        }
    };
    shared.in_flight.finish(id);
    outcome
}

async fn ack(delivery: &Delivery) {
    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone; the broker redelivers, and the guarded start skips it.
        tracing::warn!(%error, "ack failed");
    }
}

/// Reject without requeue: the work queue's dead-letter exchange moves it to `jobs.dead`.
async fn reject(delivery: &Delivery) {
    if let Err(error) = delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
    {
        tracing::warn!(%error, "reject failed");
    }
}

/// Returns a delivery to its queue (used at shutdown for never-started deliveries too).
pub async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(error) = delivery.acker.nack(options).await {
        tracing::warn!(%error, "requeue failed");
    }
}

async fn requeue_after_pause(delivery: &Delivery) {
    tokio::time::sleep(REQUEUE_PAUSE).await;
    requeue(delivery).await;
}
