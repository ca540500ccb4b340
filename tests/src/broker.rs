//! Talking to a test's vhost directly, as a misbehaving publisher or a person inspecting
//! the dead queue would: raw publishes and reading dead letters with their reasons.

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

use crate::services;

/// A message taken from `jobs.dead`.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    /// The `x-tl-dead-reason` header, if the worker set one.
    pub reason: Option<String>,
    pub message_id: Option<String>,
}

/// An AMQP connection to one vhost, opened again when the broker closed it: RabbitMQ 3.10
/// answers a `basic.get` on a quorum queue still being declared with a connection-level
/// INTERNAL_ERROR ("noproc"), which must not end a test that polls the queue.
pub struct VhostClient {
    url: SecretString,
    connection: tokio::sync::Mutex<Connection>,
}

impl VhostClient {
    pub async fn connect(vhost: &str) -> Self {
        let base = SecretString::from(services::amqp_url());
        let url = engine_shared::broker::vhost_url(&base, vhost).expect("a vhost URL");
        let connection = Self::open(&url).await;
        Self {
            url,
            connection: tokio::sync::Mutex::new(connection),
        }
    }

    async fn open(url: &SecretString) -> Connection {
        Connection::connect(url.expose_secret(), ConnectionProperties::default())
            .await
            .expect("connecting to the test vhost")
    }

    /// A new channel, on a new connection if the broker closed the last one.
    async fn channel(&self) -> lapin::Channel {
        let mut connection = self.connection.lock().await;
        if connection.status().connected()
            && let Ok(channel) = connection.create_channel().await
        {
            return channel;
        }
        *connection = Self::open(&self.url).await;
        connection
            .create_channel()
            .await
            .expect("opening a channel on the test vhost")
    }

    /// Publishes `body` as-is to the work exchange for `queue` (persistent, confirmed).
    pub async fn publish_raw(&self, queue: &str, body: &[u8]) {
        self.publish_to("jobs", queue, body).await;
    }

    /// Publishes `body` as-is on the vhost's cancel broadcast (`jobs.control`), as the API
    /// does for a cancel request, or as anyone who can write to the vhost could.
    pub async fn publish_control(&self, body: &[u8]) {
        self.publish_to("jobs.control", "", body).await;
    }

    /// Publishes `body` to `exchange` with `routing_key` (persistent, confirmed).
    async fn publish_to(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        let channel = self.channel().await;
        channel.confirm_select(Default::default()).await.unwrap();
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "the broker refused the raw message");
        let _ = channel.close(200, "done".into()).await;
    }

    /// Takes (and acks) one message from `queue`, if any (`None` also while the queue does
    /// not exist yet): its body and the text header `header`.
    pub async fn take_one(&self, queue: &str, header: &str) -> Option<(Vec<u8>, Option<String>)> {
        let channel = self.channel().await;
        // Not declared yet (nothing published to it so far) reads as empty.
        let message = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .ok()??;
        let delivery = message.delivery;
        let value = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|headers| header_text(headers, header));
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
        let _ = channel.close(200, "done".into()).await;
        Some((delivery.data.clone(), value))
    }

    /// Takes the first message of `queue` and returns it unacked, `times` times over, as
    /// workers killed with it prefetched would: each return counts towards the queue's
    /// `x-delivery-limit`. Panics if the queue is empty.
    pub async fn return_unacked(&self, queue: &str, times: u32) {
        let channel = self.channel().await;
        for _ in 0..times {
            let message = channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{queue} has no message to return"));
            message
                .delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
                .unwrap();
        }
        let _ = channel.close(200, "done".into()).await;
    }

    /// Takes (and acks) every message now in `jobs.dead`.
    pub async fn take_dead_letters(&self) -> Vec<DeadLetter> {
        let channel = self.channel().await;
        let mut letters = Vec::new();
        while let Some(message) = channel
            .basic_get("jobs.dead".into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            let delivery = message.delivery;
            let reason = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|headers| header_text(headers, "x-tl-dead-reason"));
            letters.push(DeadLetter {
                body: delivery.data.clone(),
                reason,
                message_id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string()),
            });
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
        }
        let _ = channel.close(200, "done".into()).await;
        letters
    }
}

fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    headers
        .inner()
        .iter()
        .find(|(key, _)| key.as_str() == name)
        .and_then(|(_, value)| match value {
            AMQPValue::LongString(text) => Some(text.to_string()),
            _ => None,
        })
}
