//! Every exchange and queue of a namespace's vhost, declared idempotently at start-up.
//!
//! ```text
//! jobs (direct) ──<queue>──▶ jobs.<queue>   quorum; DLX → jobs.dead; x-delivery-limit
//! jobs.delay (direct) ──delay.<tier>──▶ jobs.delay.<tier>   quorum; fixed x-message-ttl;
//!                                        DLX → jobs (routed by the message's CC = <queue>)
//! jobs.dead (fanout) ──▶ jobs.dead          quorum; the parking lot
//! jobs.control (fanout) ──▶ one exclusive queue per worker (cancel requests)
//! ```
//!
//! A retry is published to `jobs.delay` with routing key `delay.<tier>` and a `CC` header
//! naming its work queue. The tier's queue holds it for its TTL, then dead-letters it to
//! `jobs` with its original routing keys — `delay.<tier>` matches nothing there, the CC key
//! `<queue>` matches the work queue. One queue per tier serves every work queue, and a
//! fixed TTL per queue means no message waits behind a longer one (per-message TTLs would).
//!
//! Every work queue holds at most the namespace's `max_queue_bytes` (`x-max-length-bytes`,
//! with `reject-publish`): one tenant's flood cannot fill the broker's memory and trip its
//! alarm, which would block publishing for every tenant. A refused publish is never a lost
//! job: the relay leaves the job in the outbox (PostgreSQL) and publishes it once the queue
//! has room. The delay tiers are not bounded: they hold only jobs that already went through
//! a work queue, and a retry or deferral must always be able to park — a delay message due
//! while its work queue is full simply stays in its tier (at-least-once dead-lettering)
//! until there is room.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::config::Settings;
use crate::namespace::NamespaceSpec;
use crate::queue::WeightedQueue;
use crate::retry::RetryPolicy;

pub const WORK_EXCHANGE: &str = "jobs";
pub const DELAY_EXCHANGE: &str = "jobs.delay";
pub const DEAD_EXCHANGE: &str = "jobs.dead";
pub const DEAD_QUEUE: &str = "jobs.dead";
pub const CONTROL_EXCHANGE: &str = "jobs.control";

/// The AMQP queue behind a named queue.
pub fn work_queue(name: &str) -> String {
    format!("jobs.{name}")
}

/// What to declare in a vhost.
#[derive(Clone, Debug)]
pub struct Topology {
    pub queues: Vec<WeightedQueue>,
    pub retry: RetryPolicy,
    /// `x-max-length-bytes` of each work queue; `None`: unbounded.
    pub max_queue_bytes: Option<u64>,
}

fn arguments(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert(ShortString::from(*key), value.clone());
    }
    table
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Is this RabbitMQ's 406 PRECONDITION_FAILED (a queue exists with other arguments)?
fn precondition_failed(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}

impl Topology {
    /// The topology of `namespace`'s vhost under `settings`.
    pub fn of(settings: &Settings, namespace: &NamespaceSpec) -> Self {
        Self {
            queues: settings.queues.clone(),
            retry: settings.retry.clone(),
            max_queue_bytes: namespace.quota.max_queue_bytes,
        }
    }

    /// Declares everything on a channel of its own, closed when done; safe to run any
    /// number of times. A queue that already exists with other arguments (declared by an
    /// earlier version, or before a setting changed) is kept as it is, with a warning:
    /// RabbitMQ cannot change a queue's arguments, and refusing to start over it would stop
    /// the namespace. docs/DEPLOY.md says how to apply new ones (a policy, or recreating
    /// the queue when it is empty).
    pub async fn declare(&self, connection: &Connection) -> lapin::Result<()> {
        let mut channel = connection.create_channel().await?;
        let declared = self.declare_on(connection, &mut channel).await;
        if channel.status().connected() {
            let _ = channel.close(200, "topology declared".into()).await;
        }
        declared
    }

    /// Declares queue `name` with `args`, or keeps the one that exists with other
    /// arguments (the refusal closes the channel, so a new one replaces it).
    async fn queue(
        connection: &Connection,
        channel: &mut Channel,
        name: &str,
        args: FieldTable,
    ) -> lapin::Result<()> {
        match channel
            .queue_declare(name.into(), durable_queue(), args)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if precondition_failed(&error) => {
                tracing::warn!(
                    queue = name,
                    "the queue exists with other arguments than these settings give it; keeping it as it is (see docs/DEPLOY.md, \"Changing a queue's arguments\")"
                );
                *channel = connection.create_channel().await?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                channel
                    .queue_declare(name.into(), passive, FieldTable::default())
                    .await
                    .map(drop)
            }
            Err(error) => Err(error),
        }
    }

    async fn declare_on(
        &self,
        connection: &Connection,
        channel: &mut Channel,
    ) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for (name, kind) in [
            (WORK_EXCHANGE, ExchangeKind::Direct),
            (DELAY_EXCHANGE, ExchangeKind::Direct),
            (DEAD_EXCHANGE, ExchangeKind::Fanout),
            (CONTROL_EXCHANGE, ExchangeKind::Fanout),
        ] {
            channel
                .exchange_declare(name.into(), kind, durable, FieldTable::default())
                .await?;
        }

        // At-least-once dead-lettering (needs reject-publish overflow) so a message moving
        // between queues is never dropped on the way.
        let quorum = [
            ("x-queue-type", text("quorum")),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
        ];

        Self::queue(connection, channel, DEAD_QUEUE, arguments(&quorum[..1])).await?;
        channel
            .queue_bind(
                DEAD_QUEUE.into(),
                DEAD_EXCHANGE.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        // Twice the worker's own limit: the worker buries a crash-looping job (and marks it
        // dead in PostgreSQL) first; the broker's limit is only the net behind it, for
        // messages no worker could even look at.
        let delivery_limit = i64::from(self.retry.delivery_limit).saturating_mul(2);
        for queue in &self.queues {
            let name = work_queue(queue.name.as_str());
            let mut args = quorum.to_vec();
            if let Some(bytes) = self.max_queue_bytes {
                let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
                args.push(("x-max-length-bytes", AMQPValue::LongLongInt(bytes)));
            }
            args.push(("x-dead-letter-exchange", text(DEAD_EXCHANGE)));
            args.push(("x-delivery-limit", AMQPValue::LongLongInt(delivery_limit)));
            Self::queue(connection, channel, &name, arguments(&args)).await?;
            channel
                .queue_bind(
                    name.as_str().into(),
                    WORK_EXCHANGE.into(),
                    queue.name.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }

        for tier in self.retry.tiers() {
            let ttl = i64::try_from(tier.ttl.as_millis()).unwrap_or(i64::MAX);
            let mut args = quorum.to_vec();
            args.push(("x-message-ttl", AMQPValue::LongLongInt(ttl)));
            args.push(("x-dead-letter-exchange", text(WORK_EXCHANGE)));
            let name = tier.queue_name();
            Self::queue(connection, channel, &name, arguments(&args)).await?;
            channel
                .queue_bind(
                    name.as_str().into(),
                    DELAY_EXCHANGE.into(),
                    tier.routing_key().as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}
