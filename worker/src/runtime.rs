//! Building a worker from settings and running it until a stop signal, then draining:
//! stop consuming, return never-started deliveries, let running jobs finish within the
//! grace period, return the rest to their queues, close the connections.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use anyhow::Context;
use engine_jobs::Registry;
use engine_shared::broker::topology::Topology;
use engine_shared::broker::{Broker, Publisher};
use engine_shared::config::Settings;
use engine_shared::limits::Limiter;
use engine_shared::namespace::NamespaceSpec;
use engine_shared::objects::ObjectStore;
use engine_shared::store::{self, Store};

use crate::consumer::NamespaceConsumer;
use crate::context::{NamespaceContext, WorkerContext};
use crate::dispatch::Dispatcher;
use crate::execution;
use crate::health::{self, Consumers, HealthState};
use crate::in_flight::InFlight;
use crate::leases;
use crate::log_shipper::LogShipper;
use crate::received::{BrokerClock, Received};
use crate::transitions::Transitions;

/// A built worker, not yet consuming.
pub struct Worker {
    settings: Settings,
    store: Store,
    worker: Arc<WorkerContext>,
    dispatcher: Dispatcher<Received>,
    consumers: Vec<NamespaceConsumer>,
    health: HealthState,
    health_listener: Option<TcpListener>,
}

impl Worker {
    pub async fn build(settings: Settings, registry: Registry) -> anyhow::Result<Self> {
        let namespaces = settings.worker_namespaces();
        if namespaces.is_empty() {
            anyhow::bail!(
                "no namespace to serve: configure [namespaces.<name>] (and worker.namespaces)"
            );
        }
        let store = Store::connect_lazy(&settings.database)?;
        if settings.database.migrate_on_start {
            store.migrate().await?;
        }
        let broker = Broker::new(
            settings.amqp_url.clone(),
            format!("tl-engine-worker {}", settings.worker.id),
        );
        let in_flight = Arc::new(InFlight::default());
        let health = Arc::new(Consumers::new(
            namespaces.iter().map(|spec| spec.name.as_str().to_owned()),
        ));
        let ServedNamespaces {
            dispatcher,
            consumers,
            contexts,
        } = ServedNamespaces::build(&settings, namespaces, &broker, &health, &in_flight)?;
        let objects = settings.storage.as_ref().map(ObjectStore::new);
        let contexts_specs = contexts.iter().map(|c| c.spec.clone()).collect();
        let worker = Arc::new(WorkerContext {
            registry: Arc::new(registry),
            transitions: Transitions::new(
                &store,
                settings.worker.id.clone(),
                settings.rescue.lease(),
            ),
            in_flight,
            retry: settings.retry.clone(),
            namespaces: contexts,
            worker_id: settings.worker.id.clone(),
            clock: BrokerClock {
                consumer_timeout: settings.consumer_timeout,
                margin: settings.attempt_margin(),
            },
            store: store.clone(),
            limiter: Arc::new(
                Limiter::new(&settings.redis, settings.limits.clone())
                    .context("building the limiter")?,
            ),
            objects: objects.clone(),
            logs: Arc::new(LogShipper::new(objects, contexts_specs, &settings.logs)),
            log_cap: settings.logs.max_kib_per_attempt * 1024,
            max_result_bytes: settings.worker.max_result_bytes,
            queues: settings.queues.iter().map(|q| q.name.clone()).collect(),
        });
        // Bound now, so a taken port fails start-up and tests can read the address.
        let health_listener = match &settings.worker.health_listen {
            Some(listen) => Some(
                TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding worker.health_listen = {listen}"))?,
            ),
            None => None,
        };
        let health = HealthState {
            consumers: health,
            store: store.clone(),
            limiter: worker.limiter.clone(),
            objects: worker.objects.clone(),
            liveness_grace: settings.worker.liveness_grace,
        };
        Ok(Self {
            settings,
            store,
            worker,
            dispatcher,
            consumers,
            health,
            health_listener,
        })
    }

    /// Where `/healthz` and `/readyz` are served, if `worker.health_listen` is set.
    pub fn health_addr(&self) -> Option<std::net::SocketAddr> {
        self.health_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// Runs jobs until `shutdown`, then drains (see the module docs) and returns.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Served until the process has drained, so probes keep answering during the drain.
        let stop_health = CancellationToken::new();
        let health_server = self.health_listener.take().map(|listener| {
            tokio::spawn(health::serve(
                listener,
                self.health.clone(),
                stop_health.clone(),
            ))
        });
        let close = CancellationToken::new();
        let mut supervisors = JoinSet::new();
        for consumer in self.consumers.drain(..) {
            supervisors.spawn(consumer.run(shutdown.clone(), close.clone()));
        }
        let stop_leases = CancellationToken::new();
        let leases = tokio::spawn(leases::renew_until_stopped(
            self.store.clone(),
            self.worker.in_flight.clone(),
            self.settings.rescue.lease(),
            self.settings.rescue.renew_every(),
            stop_leases.clone(),
        ));
        let stop_shipping = CancellationToken::new();
        let shipper = tokio::spawn(self.worker.logs.clone().run(
            Duration::from_secs(self.settings.logs.spool_retry_secs.max(1)),
            stop_shipping.clone(),
        ));
        let concurrency = usize::from(self.settings.worker.concurrency);
        let mut running = JoinSet::new();
        tracing::info!(
            worker = self.settings.worker.id,
            concurrency,
            "worker started"
        );

        loop {
            while running.try_join_next().is_some() {}
            let (namespace, received, slot) = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = self.dispatcher.next() => next,
            };
            let worker = self.worker.clone();
            running.spawn(async move {
                execution::execute(worker, namespace, received).await;
                drop(slot);
            });
        }

        let waiting = self.dispatcher.drain();
        tracing::info!(
            running = self.worker.in_flight.len(),
            returned = waiting.len(),
            grace_secs = self.settings.worker.grace_period.as_secs_f64(),
            "stopping: consumers cancelled; waiting for running jobs"
        );
        for received in &waiting {
            execution::requeue(&received.delivery).await;
        }
        let drained = tokio::time::timeout(self.settings.worker.grace_period, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = running.len(),
                "grace period over; abandoning the remaining jobs, which return to their queues"
            );
            running.abort_all();
            while running.join_next().await.is_some() {}
        }
        stop_leases.cancel();
        let _ = leases.await;
        // Closing the connections returns every unacked delivery to its queue.
        close.cancel();
        while supervisors.join_next().await.is_some() {}
        // Logs of the attempts that ran are uploaded (or spooled) before the process ends.
        stop_shipping.cancel();
        let _ = shipper.await;
        stop_health.cancel();
        if let Some(server) = health_server {
            let _ = server.await;
        }
        self.store.close().await;
        tracing::info!(
            postgres_round_trips = store::round_trips(),
            "worker stopped"
        );
        Ok(())
    }
}

/// Each served namespace's consumer, context and lanes, at the same
/// [`NamespaceIndex`](crate::context::NamespaceIndex) in all three (the dispatcher hands
/// the indexes out as the namespaces are added, in order).
struct ServedNamespaces {
    dispatcher: Dispatcher<Received>,
    consumers: Vec<NamespaceConsumer>,
    contexts: Vec<NamespaceContext>,
}

impl ServedNamespaces {
    fn build(
        settings: &Settings,
        namespaces: Vec<NamespaceSpec>,
        broker: &Broker,
        health: &Arc<Consumers>,
        in_flight: &Arc<InFlight>,
    ) -> anyhow::Result<Self> {
        let concurrency = settings.worker.concurrency;
        let mut dispatcher = Dispatcher::new(usize::from(concurrency));
        let mut consumers = Vec::new();
        let mut contexts = Vec::new();
        for spec in namespaces {
            let topology = Topology::of(settings, &spec);
            let index = dispatcher.add_namespace(&spec.name, spec.share);
            // A capped namespace holds no more deliveries than it may run: the rest stay
            // in the broker for other workers.
            let prefetch = spec.share.max_running.map_or(concurrency, |cap| {
                concurrency.min(u16::try_from(cap).unwrap_or(u16::MAX))
            });
            let lanes = settings
                .queues
                .iter()
                .map(|queue| {
                    let lane = dispatcher.add_lane(index, queue.weight, usize::from(prefetch));
                    (queue.name.clone(), lane)
                })
                .collect();
            contexts.push(NamespaceContext {
                index,
                publisher: Publisher::new(
                    spec.vhost.clone(),
                    broker.pool(&spec.vhost, 1)?,
                    topology.clone(),
                ),
                spec: spec.clone(),
            });
            consumers.push(NamespaceConsumer {
                health: health.clone(),
                index,
                spec,
                broker: broker.clone(),
                topology,
                lanes,
                prefetch,
                in_flight: in_flight.clone(),
            });
        }
        Ok(Self {
            dispatcher,
            consumers,
            contexts,
        })
    }
}
