//! Screening a decoded delivery before anything starts: a message this worker can never run
//! (poison: an unknown kind or queue) and a job that kills or outlives the workers that
//! take it (a crash loop: too many deliveries without an outcome) are buried — marked dead
//! in PostgreSQL, their message parked in the dead queue with the reason.

use engine_shared::metrics::metrics;
use engine_shared::store::{Burial, ErrorKind};

use super::disposal::Message;
use crate::context::WorkerContext;
use crate::redelivery;

/// What screening left to do with a delivery.
pub(super) enum Screening {
    /// Settled here (buried, acked as stale, refused, replaced by a fresh copy).
    Disposed,
    /// On to admission and the attempt.
    Admissible,
}

/// Buries poison and crash loops; replaces a delivery the broker returned too often
/// without an attempt by a fresh copy.
pub(super) async fn screen(worker: &WorkerContext, message: &Message<'_>) -> Screening {
    if let Some(reason) = poison_reason(worker, message) {
        bury(worker, message, ErrorKind::Poison, &reason).await;
        return Screening::Disposed;
    }
    let deliveries = redelivery::earlier_deliveries(message.delivery);
    if deliveries >= worker.retry.delivery_limit {
        let reason = format!(
            "{deliveries} deliveries ended without an outcome: the job kills or outlives the \
             workers that take it (retry.delivery_limit = {})",
            worker.retry.delivery_limit
        );
        // Only a job that started and never finished is buried as crashed; one that never
        // got to start (its deliveries were returned for other reasons) runs normally.
        if bury(worker, message, ErrorKind::Crashed, &reason).await {
            return Screening::Disposed;
        }
        // Not buried, so its job is not running: these deliveries were returned before an
        // attempt (workers killed with it prefetched, connections lost). Before the broker's
        // own limit dead-letters a job PostgreSQL shows unfinished, a fresh copy restarts
        // the broker's count; it carries none, as no attempt of it crashed.
        if redelivery::broker_deliveries(message.delivery) >= worker.retry.delivery_limit
            && message.refresh().await
        {
            return Screening::Disposed;
        }
    }
    Screening::Admissible
}

/// Why this worker can never run the message's job, if it cannot: an unknown kind or
/// queue. Args that no longer fit the kind are judged on the row's args, once the start
/// returns them: the handler fails them at once, fatally (a body's args are anyone's who
/// can publish to the vhost, and may disagree with the row).
fn poison_reason(worker: &WorkerContext, message: &Message<'_>) -> Option<String> {
    let envelope = message.envelope;
    if !worker.registry.contains(&envelope.kind) {
        return Some(format!(
            "unknown kind {:?}: no handler registered in this worker",
            envelope.kind.as_str()
        ));
    }
    (!worker.queues.contains(&envelope.queue)).then(|| {
        format!(
            "unknown queue {:?}: not one of the fleet's queues",
            envelope.queue.as_str()
        )
    })
}

/// Marks the job dead with `reason` and parks its message in the dead queue. Returns
/// `false` when the job is in a state `kind` does not bury (a `crashed` verdict needs a
/// job left `running`): the caller carries on with the delivery. A job already finished
/// means a stale duplicate message, which is acked.
async fn bury(
    worker: &WorkerContext,
    message: &Message<'_>,
    kind: ErrorKind,
    reason: &str,
) -> bool {
    let (id, namespace) = (message.id(), &message.namespace.spec.name);
    match worker
        .store
        .bury(namespace, message.envelope, kind, reason, &worker.worker_id)
        .await
    {
        Ok(Burial::NotBuried(status)) if !status.is_final() => return false,
        Ok(Burial::NotBuried(status)) => {
            tracing::debug!(job = %id, status = status.as_str(), "stale message of a finished job; skipping");
            message.ack().await;
        }
        Ok(Burial::Buried) => {
            metrics().dead.get_or_create(&message.labels()).inc();
            message.dead_letter(reason).await;
        }
        Ok(Burial::Unknown) => {
            let reason = format!("{reason}; and no job {id} in namespace {namespace}");
            message.dead_letter(&reason).await;
        }
        Ok(Burial::Mismatched) => message.refuse_forged().await,
        Err(error) => {
            tracing::warn!(job = %id, error = format!("{error:#}"), "could not bury the job; returning it");
            message.give_back(0).await;
        }
    }
    true
}
