//! The outbox relay: publishes committed jobs to their namespace's vhost.
//!
//! Fast path: right after a submission commits, its jobs are offered to a per-namespace
//! batcher that publishes them with confirms and stamps `published_at`. When the batcher
//! is full the submission waits for room, up to `relay.fast_path_wait_ms` (back-pressure),
//! so a fast client slows to the publish rate instead of leaving its jobs to the slower
//! sweeper. Sweeper: every `relay.sweep_interval_ms`, any replica first lets the
//! [`Scheduler`] release due delayed jobs through it, then claims (`FOR UPDATE SKIP LOCKED`)
//! queued rows the fast path did not stamp — a crash, a broker outage, a batcher still full
//! after the wait — and publishes those, claiming again while claims come back full. A
//! broker outage therefore delays jobs, never refuses or loses them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use engine_shared::broker::topology::Topology;
use engine_shared::broker::{Broker, Confirm, Publisher};
use engine_shared::config::{RelaySettings, Settings};
use engine_shared::envelope::Envelope;
use engine_shared::group_commit::GroupCommit;
use engine_shared::metrics::{QueueLabels, metrics};
use engine_shared::store::{OutboxClaim, OutboxJob, Store};
use engine_shared::{JobId, Namespace, QueueName};

use crate::blocked::Blocked;
use crate::scheduler::Scheduler;

/// Jobs one fast-path publish carries at most.
const FAST_BATCH: usize = 1_000;

pub struct Relay {
    store: Store,
    settings: RelaySettings,
    /// One confirm-mode publisher per namespace (its own vhost).
    publishers: HashMap<Namespace, Arc<Publisher>>,
    /// The fast path per namespace.
    fast: HashMap<Namespace, GroupCommit<Envelope, ()>>,
    /// Namespace names the sweeper covers (those this process serves).
    served: Vec<Namespace>,
    /// Namespaces whose vhost refuses publishes: left out of claims for a while.
    blocked: Blocked,
}

impl Relay {
    /// Refreshes the queue gauges: each served namespace's `queues`, by passive declares
    /// (metrics, at scrape time). A vhost that cannot be reached is skipped and counted.
    pub async fn refresh_queue_metrics(&self, queues: &[QueueName]) {
        let metrics = metrics();
        for (namespace, publisher) in &self.publishers {
            for queue in queues {
                match publisher.queue_stats(queue.as_str()).await {
                    Ok((messages, consumers)) => {
                        let labels = QueueLabels {
                            namespace: namespace.as_str().to_owned(),
                            queue: queue.as_str().to_owned(),
                        };
                        metrics
                            .queue_messages
                            .get_or_create(&labels)
                            .set(i64::from(messages));
                        metrics
                            .queue_consumers
                            .get_or_create(&labels)
                            .set(i64::from(consumers));
                    }
                    Err(error) => {
                        metrics.dependency_error("rabbitmq");
                        tracing::debug!(%namespace, error = format!("{error:#}"), "queue metrics unavailable");
                        break;
                    }
                }
            }
        }
    }

    /// Every served namespace's vhost gives a live channel and none refuses publishes
    /// (readiness).
    pub async fn ping_broker(&self) -> anyhow::Result<()> {
        for (namespace, publisher) in &self.publishers {
            if let Some(error) = self.blocked.reason(namespace) {
                anyhow::bail!("namespace {namespace}: publishes refused: {error}");
            }
            publisher
                .ping()
                .await
                .map_err(|e| e.context(format!("namespace {namespace}")))?;
        }
        Ok(())
    }

    pub fn new(settings: &Settings, store: Store, broker: &Broker) -> anyhow::Result<Self> {
        let mut publishers = HashMap::new();
        let mut fast = HashMap::new();
        for spec in &settings.namespaces {
            let pool = broker.pool(&spec.vhost, 2)?;
            let topology = Topology::of(settings, spec);
            let publisher = Arc::new(Publisher::new(spec.vhost.clone(), pool, topology));
            let (flush_publisher, flush_store) = (publisher.clone(), store.clone());
            let batcher = GroupCommit::spawn(
                "fast publish",
                FAST_BATCH,
                2,
                move |envelopes: Vec<Envelope>| {
                    let (publisher, store) = (flush_publisher.clone(), flush_store.clone());
                    async move {
                        let count = envelopes.len();
                        if let Err(error) = publish_and_stamp(&publisher, &store, &envelopes).await
                        {
                            tracing::warn!(
                                error = format!("{error:#}"),
                                count,
                                "fast-path publish failed; the sweeper will retry"
                            );
                        }
                        Ok(vec![(); count])
                    }
                },
            );
            publishers.insert(spec.name.clone(), publisher);
            fast.insert(spec.name.clone(), batcher);
        }
        Ok(Self {
            store,
            settings: settings.relay.clone(),
            served: settings.namespace_names(),
            publishers,
            fast,
            blocked: Blocked::default(),
        })
    }

    /// Hands committed jobs to the fast path, waiting up to `relay.fast_path_wait_ms` in
    /// all for room. Jobs that find none stay in the outbox for the sweeper.
    pub async fn publish_soon(
        &self,
        namespace: &Namespace,
        envelopes: impl IntoIterator<Item = Envelope>,
    ) {
        let Some(batcher) = self.fast.get(namespace) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + self.settings.fast_path_wait();
        let mut spilled = 0_usize;
        for envelope in envelopes {
            // Past the deadline, `offer_until` still takes whatever room there is at once.
            if !batcher.offer_until(envelope, deadline).await {
                spilled += 1;
            }
        }
        if spilled > 0 {
            tracing::debug!(%namespace, spilled, "fast path full; leaving jobs to the sweeper");
        }
    }

    /// Tells the workers of `namespace` to stop job `id` if they run it.
    pub async fn request_cancel(&self, namespace: &Namespace, id: JobId) -> anyhow::Result<()> {
        let publisher = self
            .publishers
            .get(namespace)
            .with_context(|| format!("namespace {namespace} is not served here"))?;
        publisher.publish_cancel(id).await
    }

    /// Sweeps until `shutdown`, each pass led by `scheduler`; errors are logged and the next
    /// sweep tries again.
    pub async fn run_sweeper(self: Arc<Self>, scheduler: Scheduler, shutdown: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.sweep_interval()) => {}
            }
            match self.sweep(&scheduler).await {
                Ok(()) if failing => {
                    tracing::info!("outbox sweep recovered");
                    failing = false;
                }
                Ok(()) => {}
                Err(error) => {
                    // Once per outage, not once per second.
                    if !failing {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "outbox sweep failed; retrying every interval"
                        );
                    }
                    failing = true;
                }
            }
        }
    }

    /// One pass: the scheduler (due scheduled jobs and long retries, one replica at a
    /// time), then the outbox (queued jobs the fast path missed).
    pub async fn sweep(&self, scheduler: &Scheduler) -> anyhow::Result<()> {
        scheduler.release_due(self).await?;
        self.sweep_outbox().await
    }

    /// Publishes queued jobs the fast path missed, claiming again while claims come back
    /// full and settled.
    async fn sweep_outbox(&self) -> anyhow::Result<()> {
        loop {
            let claim = self
                .store
                .claim_unpublished(
                    &self.sweepable(),
                    self.settings.publish_grace(),
                    self.settings.batch_size,
                    self.settings.claim_max_bytes,
                )
                .await?;
            if !self
                .publish_claim(claim, "sweeper published jobs the fast path had not")
                .await?
            {
                return Ok(());
            }
        }
    }

    /// Publishes a claim's rows and completes it. `true` when the claim was full (of rows
    /// or of bytes) and every row was confirmed or belongs to a namespace now blocked, i.e.
    /// there may be more to claim right away; otherwise the pass ends, so a refusing broker
    /// cannot keep the sweeper looping.
    pub(crate) async fn publish_claim(
        &self,
        claim: OutboxClaim,
        what: &'static str,
    ) -> anyhow::Result<bool> {
        let full = claim.more;
        let published = self.publish_rows(&claim.jobs).await;
        if !published.is_empty() {
            tracing::info!(count = published.len(), "{what}");
        }
        // Rows left unconfirmed end this pass, so a row that cannot be published is not
        // claimed over and over — unless its namespace is now blocked, which leaves its rows
        // out of the next claim: a full namespace must not end every sweep of the others.
        let confirmed: HashSet<Uuid> = published.iter().copied().collect();
        let settled = claim
            .jobs
            .iter()
            .all(|row| confirmed.contains(&row.id) || self.blocked.is_blocked(&row.namespace));
        claim.complete(&published).await?;
        Ok(full && settled)
    }

    /// The served namespaces whose rows a claim may take now: those not blocked.
    pub(crate) fn sweepable(&self) -> Vec<Namespace> {
        self.blocked.sweepable(&self.served)
    }

    /// Publishes rows grouped by namespace; returns the ids the broker confirmed. A
    /// namespace whose publish fails, or whose broker leaves any message unconfirmed
    /// (returned: no queue took it; nacked: a full or leaderless queue), is blocked for a
    /// while (see [`Blocked`]) — its rows are excluded from the next claims, so they cannot
    /// fill every claim and hold back the other namespaces' rows, which are published all
    /// the same.
    pub async fn publish_rows(&self, rows: &[OutboxJob]) -> Vec<Uuid> {
        let mut by_namespace: BTreeMap<Namespace, Vec<Envelope>> = BTreeMap::new();
        for row in rows {
            match row.envelope() {
                Ok((namespace, envelope)) => {
                    by_namespace.entry(namespace).or_default().push(envelope)
                }
                Err(error) => {
                    tracing::error!(job = %row.id, error = format!("{error:#}"), "outbox row cannot be published")
                }
            }
        }
        let mut confirmed = Vec::new();
        for (namespace, envelopes) in by_namespace {
            let Some(publisher) = self.publishers.get(&namespace) else {
                continue;
            };
            let acks = match publisher.publish_jobs(&envelopes).await {
                Ok(acks) if acks.iter().all(|confirm| confirm.acked()) => {
                    self.blocked.accepted(&namespace);
                    acks
                }
                Ok(acks) => {
                    let count = |what: Confirm| acks.iter().filter(|c| **c == what).count();
                    let (returned, nacked) = (count(Confirm::Returned), count(Confirm::Nacked));
                    let error = anyhow::anyhow!(
                        "the broker confirmed {} of {} messages ({returned} returned, {nacked} nacked)",
                        count(Confirm::Acked),
                        acks.len()
                    );
                    // A return means a queue or binding is gone: refused until it is back.
                    // Nacks alone mean a full queue, which drains by itself.
                    if returned > 0 {
                        self.blocked.refused(&namespace, &error);
                    } else {
                        self.blocked.full(&namespace, &error);
                    }
                    acks
                }
                Err(error) => {
                    self.blocked.refused(&namespace, &error);
                    continue;
                }
            };
            confirmed.extend(confirmed_ids(&envelopes, acks));
        }
        confirmed
    }

    /// Ready messages in `namespace`'s work queue `queue` (the rescuer's backlog check).
    pub async fn queue_ready(
        &self,
        namespace: &Namespace,
        queue: &QueueName,
    ) -> anyhow::Result<u32> {
        let (ready, _consumers) = self
            .publisher(namespace)?
            .queue_stats(queue.as_str())
            .await?;
        Ok(ready)
    }

    /// Messages parked in `namespace`'s delay tiers (the rescuer's backlog check).
    pub async fn parked(&self, namespace: &Namespace) -> anyhow::Result<u32> {
        self.publisher(namespace)?.parked().await
    }

    fn publisher(&self, namespace: &Namespace) -> anyhow::Result<&Arc<Publisher>> {
        self.publishers
            .get(namespace)
            .with_context(|| format!("namespace {namespace} is not served here"))
    }
}

async fn publish_and_stamp(
    publisher: &Publisher,
    store: &Store,
    envelopes: &[Envelope],
) -> anyhow::Result<()> {
    let acks = publisher.publish_jobs(envelopes).await?;
    let confirmed: Vec<Uuid> = confirmed_ids(envelopes, acks).collect();
    store.mark_published(&confirmed).await
}

/// The ids of the envelopes the broker acked, `acks` being their confirms in order.
fn confirmed_ids(envelopes: &[Envelope], acks: Vec<Confirm>) -> impl Iterator<Item = Uuid> + '_ {
    envelopes
        .iter()
        .zip(acks)
        .filter(|(_, confirm)| confirm.acked())
        .map(|(envelope, _)| envelope.id.as_uuid())
}
