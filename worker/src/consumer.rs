//! One namespace's consuming side: a connection to its vhost, the topology, one consumer
//! per queue feeding the dispatcher's lanes, the control listener — and reconnection with
//! exponential backoff whenever the connection is lost.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;

use engine_shared::QueueName;
use engine_shared::broker::Broker;
use engine_shared::broker::topology::{Topology, work_queue};
use engine_shared::namespace::NamespaceSpec;

use crate::context::NamespaceIndex;
use crate::control;
use crate::dispatch::LaneSender;
use crate::health::{Consumers, HEARTBEAT};
use crate::in_flight::InFlight;
use crate::received::Received;

/// Everything needed to (re)establish one namespace's consumers.
pub struct NamespaceConsumer {
    pub spec: NamespaceSpec,
    pub broker: Broker,
    pub topology: Topology,
    /// Each queue and the lane its deliveries go to.
    pub lanes: Vec<(QueueName, LaneSender<Received>)>,
    /// Unacked deliveries per consumer: the worker's concurrency.
    pub prefetch: u16,
    pub in_flight: Arc<InFlight>,
    /// Where this namespace's consumer state is reported (health), and its index there.
    pub health: Arc<Consumers>,
    pub index: NamespaceIndex,
}

/// Marks the namespace's supervisor stopped if it ends without being asked to (a panic or
/// an unexpected return): liveness then fails, since nothing would reconnect it.
struct StopGuard {
    health: Arc<Consumers>,
    index: NamespaceIndex,
    armed: bool,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        if self.armed {
            self.health.stopped(self.index);
        }
    }
}

/// A live connection and its consumers.
struct Session {
    connection: Connection,
    consumers: Vec<(Channel, lapin::types::ShortString)>,
    /// Fired by any consumer whose stream ends: the connection (or a channel) is gone.
    lost: CancellationToken,
}

impl NamespaceConsumer {
    /// Consumes until `stop` fires, then cancels the consumers (no new deliveries) but
    /// keeps the connection open — in-flight jobs still need it to ack — until `close`.
    pub async fn run(self, stop: CancellationToken, close: CancellationToken) {
        let vhost = self.spec.vhost.clone();
        let mut backoff = Self::backoff();
        let mut guard = StopGuard {
            health: self.health.clone(),
            index: self.index,
            armed: true,
        };
        loop {
            self.health.alive(self.index);
            match self.connect().await {
                Ok(session) => {
                    backoff = Self::backoff();
                    tracing::info!(namespace = %self.spec.name, "consuming");
                    self.health.consuming(self.index);
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => {
                                guard.armed = false;
                                for (channel, tag) in &session.consumers {
                                    let _ = channel.basic_cancel(tag.clone(), BasicCancelOptions::default()).await;
                                }
                                close.cancelled().await;
                                let _ = session.connection.close(200, "worker stopping".into()).await;
                                return;
                            }
                            _ = session.lost.cancelled() => {
                                self.health.down(self.index, "lost the broker connection; reconnecting");
                                tracing::warn!(namespace = %self.spec.name, vhost, "lost the broker connection; reconnecting");
                                let _ = session.connection.close(200, "reconnecting".into()).await;
                                break;
                            }
                            _ = tokio::time::sleep(HEARTBEAT) => self.health.alive(self.index),
                        }
                    }
                }
                Err(error) => {
                    self.health
                        .down(self.index, format!("cannot consume: {error:#}"));
                    tracing::warn!(namespace = %self.spec.name, error = format!("{error:#}"), "cannot consume; retrying");
                }
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(10));
            tokio::select! {
                _ = stop.cancelled() => {
                    guard.armed = false;
                    return;
                }
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn backoff() -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// A connection with every consumer running, or an error and nothing left behind: a
    /// setup that fails half-way closes its connection, which stops the consumers already
    /// started (they would otherwise feed the lanes from a connection nobody watches, one
    /// more per retry).
    async fn connect(&self) -> anyhow::Result<Session> {
        let connection = self.broker.connect(&self.spec.vhost).await?;
        let lost = CancellationToken::new();
        match self.start_consumers(&connection, &lost).await {
            Ok(consumers) => Ok(Session {
                connection,
                consumers,
                lost,
            }),
            Err(error) => {
                lost.cancel();
                let _ = connection.close(200, "consumer set-up failed".into()).await;
                Err(error)
            }
        }
    }

    async fn start_consumers(
        &self,
        connection: &Connection,
        lost: &CancellationToken,
    ) -> anyhow::Result<Vec<(Channel, lapin::types::ShortString)>> {
        self.topology
            .declare(connection)
            .await
            .map_err(|e| anyhow::anyhow!("declaring the topology: {e}"))?;
        let setup = connection.create_channel().await?;
        control::listen(
            setup,
            self.spec.name.clone(),
            self.in_flight.clone(),
            lost.clone(),
        )
        .await?;

        let mut consumers = Vec::with_capacity(self.lanes.len());
        for (queue, lane) in &self.lanes {
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await?;
            let mut consumer = channel
                .basic_consume(
                    work_queue(queue.as_str()).as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            consumers.push((channel, consumer.tag()));
            let (lane, lost) = (lane.clone(), lost.clone());
            tokio::spawn(async move {
                while let Some(Ok(delivery)) = consumer.next().await {
                    // Stamped at once: the broker's consumer timeout already runs.
                    if !lane.send(Received::now(delivery)).await {
                        break;
                    }
                }
                lost.cancel();
            });
        }
        Ok(consumers)
    }
}
