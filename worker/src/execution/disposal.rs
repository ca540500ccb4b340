//! What is done with a job's message once the worker has decided: ack it, reject it,
//! requeue it, park it in the dead queue, give it back as a fresh copy, replace it by one,
//! or defer it in a delay tier.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};

use engine_shared::JobId;
use engine_shared::envelope::Envelope;
use engine_shared::metrics::{JobLabels, NamespaceLabels, metrics};
use engine_shared::retry::DelayTier;

use crate::admission::{DEFERRALS_HEADER, NOT_BEFORE_HEADER, deferrals};
use crate::context::NamespaceContext;
use crate::redelivery;

/// When PostgreSQL cannot record a transition, the delivery goes back after this pause, so
/// an outage does not become a hot redelivery loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// A job's message as one delivery holds it: the namespace it came from, the delivery to
/// settle, and its decoded envelope.
#[derive(Clone, Copy)]
pub(super) struct Message<'a> {
    pub namespace: &'a NamespaceContext,
    pub delivery: &'a Delivery,
    pub envelope: &'a Envelope,
}

impl Message<'_> {
    /// The job the message names.
    pub fn id(&self) -> JobId {
        self.envelope.id
    }

    /// The metric labels of the message's job.
    pub fn labels(&self) -> JobLabels {
        JobLabels::new(
            &self.namespace.spec.name,
            &self.envelope.kind,
            &self.envelope.queue,
        )
    }

    pub async fn ack(&self) {
        ack(self.delivery).await;
    }

    /// [`dead_letter`]s the message of this job.
    pub async fn dead_letter(&self, reason: &str) {
        dead_letter(self.namespace, self.delivery, Some(self.id()), reason).await;
    }

    /// Parks a job its limits hold back in a delay tier, with its reserved turn (if any)
    /// and its deferral count in headers, then acks. Nothing is written to PostgreSQL: the
    /// job stays `queued` (or `retrying`) and no attempt is used.
    pub async fn defer(&self, tier: &DelayTier, delay: Duration, not_before: Option<u64>) {
        let mut headers = FieldTable::default();
        if let Some(turn) = not_before {
            headers.insert(
                NOT_BEFORE_HEADER.into(),
                AMQPValue::LongLongInt(i64::try_from(turn).unwrap_or(i64::MAX)),
            );
        }
        headers.insert(
            DEFERRALS_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(deferrals(self.delivery)) + 1),
        );
        // The copy must still read as redelivered if this one was: a job its killed worker
        // left `running` is taken over only by a redelivery.
        redelivery::carry(self.delivery, &mut headers, 0);
        match self
            .namespace
            .publisher
            .publish_retry(self.envelope, tier, headers)
            .await
        {
            Ok(()) => {
                metrics()
                    .limit_deferrals
                    .get_or_create(&self.labels())
                    .inc();
                tracing::debug!(job = %self.id(), tier = tier.label, delay_ms = delay.as_millis() as u64, "limited; deferred");
                self.ack().await;
            }
            Err(error) => {
                metrics().dependency_error("rabbitmq");
                tracing::warn!(job = %self.id(), error = format!("{error:#}"), "could not defer a limited job; giving the delivery back");
                self.give_back(0).await;
            }
        }
    }

    /// Refuses a message whose body disagrees with its job's row: anyone who can publish to
    /// the vhost could have written it, with chosen args under a real job's id. It is not
    /// run and the row is not touched (the job's own message still runs it); it is counted,
    /// and parked in the dead queue so it cannot loop, with a reason that names no value
    /// (args may hold secrets).
    pub async fn refuse_forged(&self) {
        metrics()
            .forged_messages
            .get_or_create(&NamespaceLabels {
                namespace: self.namespace.spec.name.as_str().to_owned(),
            })
            .inc();
        let reason = format!(
            "forged message: its kind or queue disagrees with job {} in namespace {}; \
             not run, the job is untouched",
            self.id(),
            self.namespace.spec.name
        );
        self.dead_letter(&reason).await;
    }

    /// Replaces the delivery by a fresh copy of its message that carries no count, then
    /// acks it; `false` (and nothing done) if the copy cannot be published.
    pub async fn refresh(&self) -> bool {
        match self.republish_copy(FieldTable::default()).await {
            Ok(()) => {
                tracing::info!(job = %self.id(), deliveries = redelivery::broker_deliveries(self.delivery), "returned often without an attempt; replaced by a fresh copy");
                true
            }
            Err(error) => {
                tracing::warn!(job = %self.id(), error = format!("{error:#}"), "could not replace an often-returned delivery; running it");
                false
            }
        }
    }

    /// Gives a delivery back as a fresh copy of its message that carries its earlier
    /// deliveries (plus `this_one` if its job started here), then acks it. Unlike a
    /// requeue, this does not count towards the broker's `x-delivery-limit`, which would
    /// dead-letter a job that is not dead (see [`redelivery`]). A copy that cannot be
    /// published falls back to a requeue. After a pause: a dependency is failing, and an
    /// outage must not become a hot loop.
    pub async fn give_back(&self, this_one: u32) {
        tokio::time::sleep(REQUEUE_PAUSE).await;
        let mut headers = FieldTable::default();
        redelivery::carry(self.delivery, &mut headers, this_one);
        let Err(error) = self.republish_copy(headers.clone()).await else {
            return;
        };
        // The work queue took no copy (full at its byte bound, most likely): the copy waits
        // in the shortest tier instead, until the queue has room.
        keep_admission_headers(self.delivery, &mut headers);
        match self
            .namespace
            .publisher
            .park_briefly(self.envelope, headers)
            .await
        {
            Ok(()) => {
                tracing::debug!(job = %self.id(), error = format!("{error:#}"), "the work queue took no copy; parked it in the shortest tier");
                self.ack().await;
            }
            Err(park_error) => {
                metrics().dependency_error("rabbitmq");
                tracing::warn!(job = %self.id(), error = format!("{error:#}"), park_error = format!("{park_error:#}"), "could not give the delivery back as a copy; requeueing it");
                requeue(self.delivery).await;
            }
        }
    }

    /// Publishes a copy of the message's job with `headers` and the delivery's admission
    /// headers (so a copy neither loses a reserved rate turn nor restarts its deferral
    /// backoff), then acks the delivery. Nothing is acked if the publish fails.
    async fn republish_copy(&self, mut headers: FieldTable) -> anyhow::Result<()> {
        keep_admission_headers(self.delivery, &mut headers);
        self.namespace
            .publisher
            .republish_job(self.envelope, headers)
            .await?;
        self.ack().await;
        Ok(())
    }
}

/// Parks the delivery in `jobs.dead` with `reason` in its headers, then acks it. If that
/// publish fails, the delivery is rejected instead: the work queue's dead-letter exchange
/// still moves it to `jobs.dead`, without the reason header. Never requeued in a loop.
/// `id` is `None` for a message that names no job (its envelope did not decode).
pub(super) async fn dead_letter(
    namespace: &NamespaceContext,
    delivery: &Delivery,
    id: Option<JobId>,
    reason: &str,
) {
    tracing::warn!(namespace = %namespace.spec.name, job = ?id.map(|id| id.to_string()), reason, "moving the message to the dead queue");
    match namespace
        .publisher
        .publish_dead(&delivery.data, &delivery.properties, reason)
        .await
    {
        Ok(()) => ack(delivery).await,
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "could not publish to the dead queue; rejecting the message instead"
            );
            reject(delivery).await;
        }
    }
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

/// Copies a limited job's reserved turn and its deferral count onto a copy of its message.
fn keep_admission_headers(delivery: &Delivery, headers: &mut FieldTable) {
    let Some(original) = delivery.properties.headers() else {
        return;
    };
    for (key, value) in original.inner() {
        if matches!(key.as_str(), NOT_BEFORE_HEADER | DEFERRALS_HEADER) {
            headers.insert(key.clone(), value.clone());
        }
    }
}
