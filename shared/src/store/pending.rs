//! Counting a namespace's unfinished jobs, for the `max_pending` quota.

use anyhow::Context;

use super::{Commit, Store, count_round_trips};
use crate::Namespace;

impl Store {
    /// How many of `namespace`'s jobs are unfinished (scheduled, queued, running or
    /// retrying), counting no further than `stop_at`: the quota only needs to know whether
    /// the cap is reached, so the cost is bounded by the cap, not by the namespace's size.
    /// Read from the `(namespace, status, id)` index.
    pub async fn count_unfinished(
        &self,
        namespace: &Namespace,
        stop_at: u64,
    ) -> anyhow::Result<u64> {
        count_round_trips(1);
        let stop_at = i64::try_from(stop_at).unwrap_or(i64::MAX);
        let count: i64 = self
            .one(Commit::Durable, async |statements| {
                sqlx::query_scalar(
                    "SELECT count(*) FROM (
                         SELECT 1 FROM jobs
                         WHERE namespace = $1
                           AND status IN ('scheduled', 'queued', 'running', 'retrying')
                         LIMIT $2
                     ) AS unfinished",
                )
                .bind(namespace.as_str())
                .bind(stop_at)
                .fetch_one(statements)
                .await
            })
            .await
            .with_context(|| format!("counting the unfinished jobs of {namespace}"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}
