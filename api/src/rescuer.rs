//! The rescuer: a bounded time for any stuck job. Whatever crashed, a job that nobody runs
//! and no message will deliver is handed back to work:
//!
//! - a `running` attempt whose lease expired (its worker was killed, or cut off from
//!   PostgreSQL, for longer than `rescue.lease_secs`) is recorded as `crashed` and the job
//!   goes back to the outbox as a retry due now — or ends `cancelled` if a cancel was
//!   requested, `dead` if that was its last attempt — at the first pass after the lease
//!   expired, whatever waits in its queue (a lease is renewed by a live attempt only);
//! - a published `queued` or `retrying` job that nobody started `rescue.after_secs` after
//!   it was due (its message was lost: a queue deleted, a broker that dead-lettered it, a
//!   restore) goes back to the outbox.
//!
//! The relay then publishes it, under its own claim, stamping it only once the broker
//! confirms: a rescuer that dies mid-pass or a vhost that refuses leaves nothing hidden.
//!
//! It never floods a legitimate backlog: unstarted jobs are looked at only while nothing
//! that could still deliver them waits (no ready message in the work queue, none parked in
//! a delay tier), and one pass takes at most [`MOST_PER_PASS`] jobs of a queue. A duplicate
//! it makes anyway (the message was only slow) is skipped by the guarded start. Each API
//! replica runs a pass every fifth of the bound; the only statement of an idle pass is one
//! read-only probe of two partial indexes (no lock), and a namespace is rescued by one replica at a time (an advisory lock).
//!
//! What it cannot see: an unstarted job whose message was lost in a queue that never
//! empties waits until the queue drains; a message held unacked by a live worker (a copy
//! it makes then is skipped like any duplicate).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use engine_shared::config::RescueSettings;
use engine_shared::metrics::{RescueLabels, metrics};
use engine_shared::store::{RescueScope, Rescued, Store};
use engine_shared::{JobStatus, Namespace, QueueName};

use crate::relay::Relay;

/// Most jobs of one queue a pass hands back.
pub const MOST_PER_PASS: i64 = 500;

pub struct Rescuer {
    pub store: Store,
    pub relay: Arc<Relay>,
    pub settings: RescueSettings,
    /// The namespaces this replica serves.
    pub served: Vec<Namespace>,
    /// The queues every namespace has.
    pub queues: Vec<QueueName>,
}

impl Rescuer {
    /// Passes every `rescue.after_secs / 5` until `shutdown`; a failed pass is logged and
    /// the next one tries again.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let mut reach = Reach::Normal;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.interval()) => {}
            }
            let judge_leases = reach.judges_leases(self.settings.renew_every());
            match self.pass(judge_leases).await {
                Ok(()) => reach = reach.after_success(self.settings.renew_every()),
                Err(error) => {
                    if reach != Reach::Lost {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "rescue pass failed; retrying every interval"
                        );
                    }
                    reach = Reach::Lost;
                }
            }
        }
    }

    /// One pass over every served namespace: the count, then each queue with abandoned
    /// jobs. A queue that fails is logged and skipped; the others are still rescued.
    pub async fn pass(&self, judge_leases: bool) -> anyhow::Result<()> {
        let stale = self
            .store
            .count_stale(&self.served, &self.queues, self.settings.unstarted_after())
            .await?;
        // Delay tiers are per vhost, not per queue: looked at once per namespace and pass.
        let mut parked: HashMap<Namespace, bool> = HashMap::new();
        for count in stale {
            let (namespace, queue) = (&count.namespace, &count.queue);
            let scope = RescueScope {
                // A lease is renewed by a live attempt only: an expired one is an attempt
                // that died, whatever waits in the queue.
                expired_leases: judge_leases && count.expired_leases,
                unstarted: count.unstarted
                    && !self.has_backlog(namespace, queue, &mut parked).await,
            };
            if !scope.expired_leases && !scope.unstarted {
                continue;
            }
            match self
                .store
                .rescue(
                    namespace,
                    queue,
                    self.settings.unstarted_after(),
                    scope,
                    MOST_PER_PASS,
                )
                .await
            {
                Ok(rescued) => report(namespace, &rescued),
                Err(error) => {
                    tracing::warn!(%namespace, %queue, error = format!("{error:#}"), "could not rescue this queue's jobs; the next pass tries again");
                }
            }
        }
        Ok(())
    }

    /// Whether messages that may still deliver `queue`'s jobs are waiting (ready in the
    /// work queue, or parked in one of the namespace's delay tiers, remembered in `parked`
    /// for the pass), in which case its unstarted rows are waiting their turn behind them.
    /// A queue that cannot be inspected counts as one with a backlog: the rescuer only
    /// republishes on what it can tell.
    async fn has_backlog(
        &self,
        namespace: &Namespace,
        queue: &QueueName,
        parked: &mut HashMap<Namespace, bool>,
    ) -> bool {
        let tiers = match parked.get(namespace) {
            Some(&tiers) => tiers,
            None => {
                let tiers = self.relay.parked(namespace).await.map_or(true, |n| n > 0);
                parked.insert(namespace.clone(), tiers);
                tiers
            }
        };
        if tiers {
            tracing::debug!(%namespace, %queue, "messages parked in the delay tiers (or they cannot be inspected); unstarted jobs not rescued");
            return true;
        }
        match self.relay.queue_ready(namespace, queue).await {
            Ok(0) => false,
            Ok(waiting) => {
                tracing::debug!(%namespace, %queue, waiting, "unstarted jobs behind a backlog; not rescued");
                true
            }
            Err(error) => {
                tracing::debug!(%namespace, %queue, error = format!("{error:#}"), "cannot inspect the queue; not rescuing its unstarted jobs this pass");
                true
            }
        }
    }
}

/// Whether this replica could reach PostgreSQL lately. When it could not, neither could
/// the workers renewing their leases: expired leases are not judged until the workers have
/// had time to renew again (they retry every second after a failure; a margin of a whole
/// renewal interval past the first pass that succeeds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    Normal,
    Lost,
    /// Since this instant, PostgreSQL answers again.
    Regained(Instant),
}

impl Reach {
    fn judges_leases(self, renew_every: std::time::Duration) -> bool {
        match self {
            Self::Normal => true,
            Self::Lost => false,
            Self::Regained(at) => at.elapsed() > renew_every,
        }
    }

    fn after_success(self, renew_every: std::time::Duration) -> Self {
        match self {
            Self::Lost => Self::Regained(Instant::now()),
            Self::Regained(at) if at.elapsed() > renew_every => Self::Normal,
            other => other,
        }
    }
}

/// Counts what was rescued, by reason; the relay publishes what went back to the outbox.
fn report(namespace: &Namespace, rescued: &[Rescued]) {
    if rescued.is_empty() {
        return;
    }
    let metrics = metrics();
    for job in rescued {
        metrics
            .rescued
            .get_or_create(&RescueLabels {
                namespace: namespace.as_str().to_owned(),
                reason: job.reason.as_str().to_owned(),
            })
            .inc();
    }
    let count = |status: JobStatus| rescued.iter().filter(|job| job.status == status).count();
    tracing::warn!(
        %namespace,
        rescued = rescued.len(),
        dead = count(JobStatus::Dead),
        cancelled = count(JobStatus::Cancelled),
        "rescued jobs nobody was running; the rest go back through the outbox"
    );
}
