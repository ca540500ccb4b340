//! One delivery's way: decode → screen for poison (unknown kind, too many deliveries) →
//! move to `running` (only if the message's kind and queue are its row's; the handler then
//! runs the row's args, and fails at once if they no longer fit the kind) → run the handler under a timeout, a
//! cancellation token and a panic guard → record the outcome → ack, retry (delay tier or
//! scheduler) or dead-letter. The ack is sent only after the outcome is committed; a
//! message that can never run goes to the dead queue with its reason, never back to its
//! queue.
//!
//! - [`execute`] (here): decode, then screening → admission → the attempt.
//! - [`screening`]: poison (unknown kind or queue) and crash loops (too many deliveries),
//!   buried before anything starts.
//! - [`attempt`]: an admitted delivery's [`attempt::Attempt`]: start, run the handler,
//!   record the outcome, route the message.
//! - [`outcome`]: how a handler ended ([`outcome::HandlerOutcome`]), and the result cap.
//! - [`persist`]: a state write retried while the delivery is held.
//! - [`disposal`]: what is done with a message: ack, reject, requeue, dead-letter, give
//!   back, refresh, defer.
//!
//! The module keeps its name for its log lines: their targets (`engine_worker::execution`
//! and below) are what `RUST_LOG` directives name, the benchmarks' among them.

mod attempt;
mod disposal;
mod outcome;
mod persist;
mod screening;

use std::sync::Arc;

use engine_shared::envelope::Envelope;
use engine_shared::trace::TraceParent;
use tracing::Instrument;

use crate::admission::{Admission, admit};
use crate::context::{NamespaceIndex, WorkerContext};
use crate::received::{Budget, Received};

use attempt::Attempt;
use disposal::{Message, dead_letter};
use screening::Screening;

pub use disposal::requeue;

pub async fn execute(worker: Arc<WorkerContext>, namespace: NamespaceIndex, received: Received) {
    let namespace = worker.namespace(namespace);
    let delivery = &received.delivery;
    let budget = worker.clock.budget(received.at);
    let envelope = match Envelope::from_bytes(&delivery.data) {
        Ok(envelope) => envelope,
        Err(error) => {
            let reason = format!("malformed message: not a job envelope ({error})");
            dead_letter(namespace, delivery, None, &reason).await;
            return;
        }
    };
    // Every line the worker logs about this delivery (screening, admission, the attempt)
    // carries the job and its trace.
    let span = tracing::info_span!(
        "attempt",
        job = %envelope.id,
        namespace = %namespace.spec.name,
        kind = envelope.kind.as_str(),
        trace_id = envelope.traceparent.as_ref().map(TraceParent::trace_id).unwrap_or_default(),
    );
    let message = Message {
        namespace,
        delivery,
        envelope: &envelope,
    };
    execute_decoded(&worker, message, budget)
        .instrument(span)
        .await;
}

/// Screen → admission → run, for a delivery whose envelope decoded.
async fn execute_decoded(worker: &WorkerContext, message: Message<'_>, budget: Budget) {
    if let Screening::Disposed = screening::screen(worker, &message).await {
        return;
    }
    let slots = match admit(
        worker,
        &message.namespace.spec,
        message.envelope,
        message.delivery,
    )
    .await
    {
        Admission::Run(slots) => slots,
        Admission::Defer { delay, not_before } => {
            let tier = worker.retry.deferral_tier(delay);
            message.defer(&tier, delay, not_before).await;
            return;
        }
    };
    Attempt {
        worker,
        message,
        budget,
    }
    .run()
    .await;
    for slot in slots {
        slot.release(&worker.limiter).await;
    }
}
