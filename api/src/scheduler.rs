//! The scheduler: releases delayed jobs whose time has come.
//!
//! Two kinds of job wait in PostgreSQL rather than in the broker: `scheduled` ones (a
//! submission's `run_at` or `delay`), and `retrying` ones whose backoff was longer than the
//! largest delay tier. Each sweep of the relay first asks the scheduler to release the due
//! ones: it claims them ([`Store::claim_due`]: one replica at a time, under a
//! transaction-scoped advisory lock; `scheduled` rows become `queued`) and has the relay
//! publish them, claiming again while claims come back full. Then the relay sweeps its
//! outbox.
//!
//! "Scheduler" here means exactly that: it releases jobs that already exist. It creates
//! none. Recurring (cron) schedules, which create a job at each of their times, are a
//! concept of their own and belong in a module of their own; the jobs they create would
//! come here like any other delayed job.

use engine_shared::config::RelaySettings;
use engine_shared::store::Store;

use crate::relay::Relay;

/// Releases due delayed jobs through the relay; see the module docs.
pub struct Scheduler {
    store: Store,
    /// Most rows one claim takes (`relay.batch_size`, shared with the outbox sweep).
    batch_size: i64,
    /// Most bytes of args one claim holds (`relay.claim_max_bytes`, shared likewise).
    claim_max_bytes: i64,
}

impl Scheduler {
    pub fn new(store: Store, settings: &RelaySettings) -> Self {
        Self {
            store,
            batch_size: settings.batch_size,
            claim_max_bytes: settings.claim_max_bytes,
        }
    }

    /// Claims due jobs of the namespaces `relay` may publish to now and publishes them
    /// through it, claiming again while claims come back full and settled. Does nothing
    /// while another replica's scheduler holds the lock.
    pub async fn release_due(&self, relay: &Relay) -> anyhow::Result<()> {
        while let Some(claim) = self
            .store
            .claim_due(&relay.sweepable(), self.batch_size, self.claim_max_bytes)
            .await?
        {
            if !relay
                .publish_claim(claim, "scheduler released due jobs")
                .await?
            {
                break;
            }
        }
        Ok(())
    }
}
