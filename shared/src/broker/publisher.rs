//! Confirmed publishing to one vhost: jobs, retries (to a delay tier) and cancel requests.

use std::time::Duration;

use anyhow::Context;
use deadpool_lapin::Pool;
use futures_util::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::Mutex;

use super::connection::redact;
use super::topology::{
    CONTROL_EXCHANGE, DEAD_EXCHANGE, DELAY_EXCHANGE, Topology, WORK_EXCHANGE, work_queue,
};
use crate::JobId;
use crate::envelope::Envelope;
use crate::retry::DelayTier;

/// The header that says why a message was moved to `jobs.dead`.
pub const DEAD_REASON_HEADER: &str = "x-tl-dead-reason";

/// A broker that stops answering must not hold a publisher forever.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Nor an inspection (metrics, the rescuer's backlog check) of one of its queues.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes with publisher confirms over one lazily (re)opened channel.
pub struct Publisher {
    vhost: String,
    pool: Pool,
    topology: Topology,
    /// The confirm-mode channel in use; replaced when its connection drops.
    channel: Mutex<Option<Channel>>,
}

impl Publisher {
    pub fn new(vhost: String, pool: Pool, topology: Topology) -> Self {
        Self {
            vhost,
            pool,
            topology,
            channel: Mutex::new(None),
        }
    }

    /// A live confirm-mode channel, opening one (and declaring the topology) if needed.
    async fn channel(&self) -> anyhow::Result<Channel> {
        let mut current = self.channel.lock().await;
        if let Some(channel) = current.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        *current = None;
        let connection = self.connection().await?;
        self.topology.declare(&connection).await.map_err(|e| {
            anyhow::anyhow!("declaring the topology in {:?}: {}", self.vhost, redact(&e))
        })?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| anyhow::anyhow!("opening a channel: {}", redact(&e)))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| anyhow::anyhow!("enabling publisher confirms: {}", redact(&e)))?;
        *current = Some(channel.clone());
        Ok(channel)
    }

    /// The vhost's pooled connection.
    async fn connection(&self) -> anyhow::Result<deadpool_lapin::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| anyhow::anyhow!("no connection to vhost {:?}: {e}", self.vhost))
    }

    /// A new channel on the vhost's pooled connection.
    async fn open_channel(&self) -> anyhow::Result<Channel> {
        self.connection()
            .await?
            .create_channel()
            .await
            .map_err(|e| anyhow::anyhow!("opening a channel: {}", redact(&e)))
    }

    /// A work queue's ready messages and consumers, by a passive declare (metrics).
    pub async fn queue_stats(&self, queue: &str) -> anyhow::Result<(u32, u32)> {
        self.inspect(&work_queue(queue)).await
    }

    /// Messages parked in the vhost's delay tiers (retries, and jobs deferred by a limit),
    /// whichever work queue they go back to.
    pub async fn parked(&self) -> anyhow::Result<u32> {
        let mut messages = 0u32;
        for tier in self.topology.retry.tiers() {
            let (parked, _) = self.inspect(&tier.queue_name()).await?;
            messages = messages.saturating_add(parked);
        }
        Ok(messages)
    }

    /// The AMQP queue `name`'s ready messages and consumers, by a passive declare, within
    /// [`INSPECT_TIMEOUT`].
    async fn inspect(&self, name: &str) -> anyhow::Result<(u32, u32)> {
        tokio::time::timeout(INSPECT_TIMEOUT, self.inspect_unbounded(name))
            .await
            .map_err(|_| {
                anyhow::anyhow!("inspecting queue {name}: no answer within {INSPECT_TIMEOUT:?}")
            })?
    }

    /// On a channel of its own, closed after: a failed passive declare closes its channel,
    /// which must never be the one carrying publishes and their confirms.
    async fn inspect_unbounded(&self, queue: &str) -> anyhow::Result<(u32, u32)> {
        let channel = self.open_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(declared) => {
                let _ = channel.close(200, "inspected".into()).await;
                Ok((declared.message_count(), declared.consumer_count()))
            }
            Err(error) => Err(anyhow::anyhow!(
                "inspecting queue {queue}: {}",
                redact(&error)
            )),
        }
    }

    /// A live channel to the vhost can be had (readiness): the pooled connection is up, or
    /// a new one opens.
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.channel().await.map(drop)
    }

    async fn forget_channel(&self) {
        *self.channel.lock().await = None;
    }

    /// Publishes each job to its work queue and waits for the broker's confirms. Returns,
    /// per envelope, what the broker said: confirmed (persisted in its queue), returned (no
    /// queue took it, as publishes are mandatory) or nacked (a queue at its byte bound).
    pub async fn publish_jobs(&self, envelopes: &[Envelope]) -> anyhow::Result<Vec<Confirm>> {
        let messages: Vec<_> = envelopes
            .iter()
            .map(|envelope| job_message(envelope, FieldTable::default()))
            .collect();
        self.publish_confirmed(messages).await
    }

    /// Publishes a fresh copy of a job's message to its work queue with `headers` (the
    /// worker gives a delivery back this way, so the broker's delivery count of the copy
    /// starts again; see the worker's `redelivery`).
    pub async fn republish_job(
        &self,
        envelope: &Envelope,
        headers: FieldTable,
    ) -> anyhow::Result<()> {
        match self
            .publish_confirmed(vec![job_message(envelope, headers)])
            .await?
            .as_slice()
        {
            [Confirm::Acked] => Ok(()),
            _ => anyhow::bail!("the broker did not confirm the copy of job {}", envelope.id),
        }
    }

    /// Parks `envelope` in `tier`; when the tier's TTL expires it returns to its work queue.
    /// `headers` travel with it (a deferral's reserved turn, say).
    pub async fn publish_retry(
        &self,
        envelope: &Envelope,
        tier: &DelayTier,
        mut headers: FieldTable,
    ) -> anyhow::Result<()> {
        let cc: FieldArray = vec![AMQPValue::LongString(LongString::from(
            envelope.queue.as_str(),
        ))]
        .into();
        headers.insert(ShortString::from("CC"), AMQPValue::FieldArray(cc));
        let headers = trace_headers(envelope, headers);
        let message = (
            DELAY_EXCHANGE,
            tier.routing_key(),
            properties(envelope.id)
                .with_priority(envelope.priority)
                .with_headers(headers),
            envelope.to_bytes(),
        );
        match self.publish_confirmed(vec![message]).await?.as_slice() {
            [Confirm::Acked] => Ok(()),
            _ => anyhow::bail!(
                "the broker did not confirm the retry of job {}",
                envelope.id
            ),
        }
    }

    /// Parks `envelope` in the shortest delay tier, from which the broker moves it back to
    /// its work queue: how a delivery is handed back when its work queue takes no copy (full
    /// at its byte bound). Waiting in a tier costs no delivery, where a requeue counts
    /// towards the queue's `x-delivery-limit`.
    pub async fn park_briefly(
        &self,
        envelope: &Envelope,
        headers: FieldTable,
    ) -> anyhow::Result<()> {
        let shortest = self.topology.retry.tier_for(Duration::ZERO);
        self.publish_retry(envelope, &shortest, headers).await
    }

    /// Parks a message in `jobs.dead` (confirmed), keeping its body and properties and adding
    /// the reason it can never run as the `x-tl-dead-reason` header, so a person inspecting
    /// the queue sees why without reading logs.
    pub async fn publish_dead(
        &self,
        body: &[u8],
        original: &BasicProperties,
        reason: &str,
    ) -> anyhow::Result<()> {
        let mut headers = FieldTable::default();
        if let Some(existing) = original.headers() {
            for (key, value) in existing.inner() {
                // CC/BCC were routing for the delay tiers; they mean nothing here.
                if !matches!(key.as_str(), "CC" | "BCC") {
                    headers.insert(key.clone(), value.clone());
                }
            }
        }
        headers.insert(
            ShortString::from(DEAD_REASON_HEADER),
            AMQPValue::LongString(LongString::from(reason)),
        );
        let properties = original.clone().with_delivery_mode(2).with_headers(headers);
        let message = (DEAD_EXCHANGE, String::new(), properties, body.to_vec());
        match self.publish_confirmed(vec![message]).await?.as_slice() {
            [Confirm::Acked] => Ok(()),
            _ => anyhow::bail!("the broker did not confirm the dead-lettered message"),
        }
    }

    /// Tells every worker of this vhost that `id` should stop (fanout, confirmed).
    pub async fn publish_cancel(&self, id: JobId) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&serde_json::json!({ "cancel": id }))?;
        let message = (CONTROL_EXCHANGE, String::new(), properties(id), body);
        match self.publish_confirmed(vec![message]).await?.as_slice() {
            [Confirm::Acked] => Ok(()),
            _ => anyhow::bail!("the broker did not confirm the cancel request for job {id}"),
        }
    }

    async fn publish_confirmed(
        &self,
        messages: Vec<(&'static str, String, BasicProperties, Vec<u8>)>,
    ) -> anyhow::Result<Vec<Confirm>> {
        let channel = self.channel().await?;
        let mut pending = Vec::with_capacity(messages.len());
        for (exchange, routing_key, properties, body) in &messages {
            let sent = channel
                .basic_publish(
                    ShortString::from(*exchange),
                    ShortString::from(routing_key.as_str()),
                    // Mandatory: a message no queue takes (its queue was deleted, say) comes
                    // back instead of being confirmed into nowhere, and counts as refused.
                    BasicPublishOptions {
                        mandatory: *exchange != CONTROL_EXCHANGE,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties.clone(),
                )
                .await;
            match sent {
                Ok(confirm) => pending.push(confirm),
                Err(error) => {
                    self.forget_channel().await;
                    return Err(anyhow::anyhow!("publishing: {}", redact(&error)));
                }
            }
        }
        let confirmations = tokio::time::timeout(CONFIRM_TIMEOUT, join_all(pending))
            .await
            .context("waiting for publisher confirms timed out")?;
        let mut acked = Vec::with_capacity(confirmations.len());
        for confirmation in confirmations {
            match confirmation {
                Ok(Confirmation::Ack(None)) => acked.push(Confirm::Acked),
                Ok(Confirmation::Ack(Some(returned))) => {
                    tracing::warn!(
                        exchange = returned.delivery.exchange.as_str(),
                        routing_key = returned.delivery.routing_key.as_str(),
                        reply = returned.reply_text.as_str(),
                        "the broker returned an unroutable message; it stays unpublished"
                    );
                    acked.push(Confirm::Returned);
                }
                Ok(_) => acked.push(Confirm::Nacked),
                Err(error) => {
                    self.forget_channel().await;
                    return Err(anyhow::anyhow!("awaiting a confirm: {}", redact(&error)));
                }
            }
        }
        Ok(acked)
    }
}

/// What the broker said of one published message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// Persisted in its queue.
    Acked,
    /// No queue took it (mandatory publish): a queue or binding is gone.
    Returned,
    /// A queue refused it: at its byte bound (`reject-publish`), or without a leader.
    Nacked,
}

impl Confirm {
    pub fn acked(self) -> bool {
        self == Self::Acked
    }
}

/// A job's message to its work queue.
fn job_message(
    envelope: &Envelope,
    headers: FieldTable,
) -> (&'static str, String, BasicProperties, Vec<u8>) {
    (
        WORK_EXCHANGE,
        envelope.queue.as_str().to_owned(),
        properties(envelope.id)
            .with_priority(envelope.priority)
            .with_headers(trace_headers(envelope, headers)),
        envelope.to_bytes(),
    )
}

/// Persistent JSON with the job id as message id (visible in the management UI).
/// `headers` plus the job's `traceparent` (W3C Trace Context's header name), so tools that
/// read AMQP headers see the trace without decoding the body.
fn trace_headers(envelope: &Envelope, mut headers: FieldTable) -> FieldTable {
    if let Some(trace) = &envelope.traceparent {
        headers.insert(
            ShortString::from(TRACEPARENT_HEADER),
            AMQPValue::LongString(LongString::from(trace.to_string())),
        );
    }
    headers
}

/// The AMQP header carrying a job's trace.
pub const TRACEPARENT_HEADER: &str = "traceparent";

fn properties(id: JobId) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(id.to_string()))
}
