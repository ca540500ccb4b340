//! Attempt leases: a worker renews the lease of every attempt it runs in one statement,
//! and learns in the same answer which of them a person asked to cancel and which it no
//! longer holds.

use std::time::Duration;

use anyhow::Context;
use uuid::Uuid;

use super::{Commit, Store, count_round_trips};
use crate::JobId;

/// An attempt a worker runs: the job and the start token it was handed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RunningAttempt {
    pub id: JobId,
    pub token: i64,
}

/// What a renewal found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRenewal {
    /// Renewed, but a cancel was accepted for it: a broadcast the worker may have missed.
    pub cancel: Vec<RunningAttempt>,
    /// No longer this attempt's (finished meanwhile, or taken over after its lease
    /// expired): its outcome will not be recorded, so its handler may as well stop.
    pub lost: Vec<RunningAttempt>,
}

impl Store {
    /// Extends the lease of each attempt still `running` under its token to `lease` from
    /// now (and restores a start PostgreSQL lost, see the statement). Relaxed commit: a
    /// lost renewal only makes a lease shorter than it should be.
    pub async fn renew_leases(
        &self,
        attempts: &[RunningAttempt],
        lease: Duration,
    ) -> anyhow::Result<LeaseRenewal> {
        if attempts.is_empty() {
            return Ok(LeaseRenewal::default());
        }
        let ids: Vec<Uuid> = attempts.iter().map(|a| a.id.as_uuid()).collect();
        let tokens: Vec<i64> = attempts.iter().map(|a| a.token).collect();
        count_round_trips(1);
        // Locked in id order, as every batched UPDATE of jobs is, so batches never deadlock.
        let renewed: Vec<(Uuid, bool)> = self
            .one(Commit::Relaxed, async |statements| {
                sqlx::query_as(
                    "WITH input AS (
                         SELECT * FROM unnest($1::uuid[], $2::int8[]) AS i(id, token)),
                     target AS (
                         SELECT j.id, i.token, j.status = 'running' AS held FROM jobs j
                         JOIN input i ON i.id = j.id
                         WHERE (j.status = 'running' AND j.starts = i.token)
                            -- its relaxed start was lost in a PostgreSQL crash: restore it,
                            -- so no duplicate message can start the job beside this attempt
                            OR (j.status IN ('queued', 'retrying') AND j.starts = i.token - 1
                                AND j.cancel_requested_at IS NULL)
                         ORDER BY j.id
                         FOR UPDATE OF j)
                     UPDATE jobs
                     SET lease_until = now() + make_interval(secs => $3),
                         status = 'running',
                         attempts = jobs.attempts + (NOT target.held)::int,
                         starts = target.token
                     FROM target WHERE jobs.id = target.id
                     RETURNING jobs.id, jobs.cancel_requested_at IS NOT NULL",
                )
                .bind(&ids)
                .bind(&tokens)
                .bind(lease.as_secs_f64())
                .fetch_all(statements)
                .await
            })
            .await
            .context("renewing attempt leases")?;
        let mut renewal = LeaseRenewal::default();
        for attempt in attempts {
            match renewed.iter().find(|(id, _)| *id == attempt.id.as_uuid()) {
                Some((_, true)) => renewal.cancel.push(*attempt),
                Some((_, false)) => {}
                None => renewal.lost.push(*attempt),
            }
        }
        Ok(renewal)
    }
}
