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

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

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

impl Topology {
    /// Declares everything; safe to run any number of times with the same settings.
    /// Changing a queue's arguments later (say, the delivery limit) needs the queue deleted
    /// or a policy: RabbitMQ refuses a redeclaration with different arguments.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
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

        channel
            .queue_declare(DEAD_QUEUE.into(), durable_queue(), arguments(&quorum[..1]))
            .await?;
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
            args.push(("x-dead-letter-exchange", text(DEAD_EXCHANGE)));
            args.push(("x-delivery-limit", AMQPValue::LongLongInt(delivery_limit)));
            channel
                .queue_declare(name.as_str().into(), durable_queue(), arguments(&args))
                .await?;
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
            channel
                .queue_declare(name.as_str().into(), durable_queue(), arguments(&args))
                .await?;
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
