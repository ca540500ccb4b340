//! The rescuer: a bounded time for any stuck job. Whatever crashed, a job that nobody runs
//! and no message will deliver is handed back to work within about `rescue.after_secs`:
//!
//! - a `running` attempt whose lease expired (its worker was killed, or cut off from
//!   PostgreSQL, for longer than `rescue.lease_secs`) is recorded as `crashed` and the job
//!   republished as a retry, or buried `dead` if that was its last attempt;
//! - a published `queued` or `retrying` job that nobody started long after it was due (its
//!   message was lost: a queue deleted, a broker that dead-lettered it, a restore) is
//!   republished.
//!
//! It never floods a legitimate backlog: a queue is looked at only while the broker says
//! it has no ready message (stale rows behind ready messages are waiting their turn, not
//! lost), and one pass takes at most [`MOST_PER_PASS`] jobs of a queue. A duplicate it makes
//! anyway (the message was only slow) is skipped by the guarded start. Each API replica
//! runs a pass every fifth of the bound; the only statement of an idle pass is one count
//! (no lock), and a namespace is rescued by one replica at a time (an advisory lock).
//!
//! What it cannot see: a message that is still somewhere the check does not count (held
//! unacked by a live worker, or parked in a delay tier by a limit): such a job may be
//! republished once per bound, and the copy is skipped or deferred like any duplicate.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use engine_shared::config::RescueSettings;
use engine_shared::metrics::{RescueLabels, metrics};
use engine_shared::store::{OutboxJob, Rescued, StaleCount, Store};
use engine_shared::{JobStatus, Namespace, QueueName};

use crate::relay::Relay;

/// Most jobs of one queue a pass hands back.
pub const MOST_PER_PASS: i64 = 500;

pub struct Rescuer {
    pub store: Store,
    pub relay: Arc<Relay>,
    pub settings: RescueSettings,
    /// The namespaces this replica serves.
    pub served: Vec<String>,
}

impl Rescuer {
    /// Passes every `rescue.after_secs / 5` until `shutdown`; a failed pass is logged and
    /// the next one tries again.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.interval()) => {}
            }
            match self.pass().await {
                Ok(()) => failing = false,
                Err(error) => {
                    if !failing {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "rescue pass failed; retrying every interval"
                        );
                    }
                    failing = true;
                }
            }
        }
    }

    /// One pass over every served namespace.
    pub async fn pass(&self) -> anyhow::Result<()> {
        let stale = self
            .store
            .count_stale(&self.served, self.settings.unstarted_after())
            .await?;
        for count in stale {
            let (Ok(namespace), Ok(queue)) = (
                Namespace::parse(&count.namespace),
                QueueName::parse(&count.queue),
            ) else {
                continue;
            };
            if self.has_backlog(&namespace, &queue, &count).await {
                continue;
            }
            let rescued = self
                .store
                .rescue(
                    &namespace,
                    &queue,
                    self.settings.unstarted_after(),
                    MOST_PER_PASS,
                )
                .await?;
            self.republish(&namespace, rescued).await;
        }
        Ok(())
    }

    /// Whether `queue` has ready messages, in which case its stale rows are waiting their
    /// turn behind them. A queue that cannot be inspected counts as one with a backlog:
    /// the rescuer only acts on what it can tell.
    async fn has_backlog(
        &self,
        namespace: &Namespace,
        queue: &QueueName,
        count: &StaleCount,
    ) -> bool {
        match self.relay.queue_ready(namespace, queue).await {
            Ok(0) => false,
            Ok(ready) => {
                tracing::debug!(%namespace, %queue, ready, stale = count.unstarted + count.expired_leases, "stale jobs behind a backlog; not rescued");
                true
            }
            Err(error) => {
                tracing::debug!(%namespace, %queue, error = format!("{error:#}"), "cannot inspect the queue; not rescuing it this pass");
                true
            }
        }
    }

    /// Counts what was rescued and publishes the jobs that go back to work.
    async fn republish(&self, namespace: &Namespace, rescued: Vec<Rescued>) {
        if rescued.is_empty() {
            return;
        }
        let metrics = metrics();
        for job in &rescued {
            metrics
                .rescued
                .get_or_create(&RescueLabels {
                    namespace: namespace.as_str().to_owned(),
                    reason: job.reason.as_str().to_owned(),
                })
                .inc();
        }
        let dead = rescued
            .iter()
            .filter(|job| job.status == JobStatus::Dead)
            .count();
        let runnable: Vec<OutboxJob> = rescued
            .into_iter()
            .filter(|job| job.status != JobStatus::Dead)
            .map(|job| job.job)
            .collect();
        let published = self.relay.publish_rows(&runnable).await;
        tracing::warn!(
            %namespace,
            republished = published.len(),
            unpublished = runnable.len() - published.len(),
            dead,
            "rescued jobs nobody was running"
        );
    }
}
