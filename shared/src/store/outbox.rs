//! The transactional outbox: rows not yet published, claimed with `FOR UPDATE SKIP LOCKED`
//! so any number of relay replicas can sweep at once without publishing a row twice.

use std::time::Duration;

use anyhow::Context;
use uuid::Uuid;

use super::{Commit, Store, Unit, count_round_trips};
use crate::envelope::Envelope;
use crate::trace::TraceParent;
use crate::{JobId, Kind, Namespace, QueueName};

/// An unpublished job as the relay needs it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OutboxJob {
    pub id: Uuid,
    pub namespace: String,
    pub kind: String,
    pub queue: String,
    pub args: serde_json::Value,
    pub priority: i16,
    pub traceparent: Option<String>,
}

impl OutboxJob {
    /// The message for this row. Rows were validated on insert, so parsing cannot fail
    /// unless someone edited the table by hand; such a row is reported, not published.
    pub fn envelope(&self) -> anyhow::Result<(Namespace, Envelope)> {
        let namespace = Namespace::parse(&self.namespace)?;
        let envelope = Envelope {
            id: JobId::from(self.id),
            kind: Kind::parse(&self.kind)?,
            queue: QueueName::parse(&self.queue)?,
            args: self.args.clone(),
            priority: u8::try_from(self.priority.clamp(0, 9)).unwrap_or(0),
            traceparent: self.traceparent.as_deref().and_then(TraceParent::parse),
        };
        Ok((namespace, envelope))
    }
}

/// Rows locked by one sweep; other sweepers skip them until [`OutboxClaim::complete`].
pub struct OutboxClaim {
    unit: Unit,
    pub jobs: Vec<OutboxJob>,
    /// The claim stopped at its row or byte bound: more rows may be waiting right now.
    pub more: bool,
}

/// A claimed row and how many rows the claim locked before its byte bound cut it.
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    job: OutboxJob,
    locked: i64,
}

impl OutboxClaim {
    fn of(unit: Unit, rows: Vec<ClaimedRow>, limit: i64) -> Self {
        let locked = rows.first().map_or(0, |row| row.locked);
        let jobs: Vec<OutboxJob> = rows.into_iter().map(|row| row.job).collect();
        Self {
            more: locked == limit || (jobs.len() as i64) < locked,
            unit,
            jobs,
        }
    }
}

impl OutboxClaim {
    /// Stamps the rows that were published and releases the claim on all of them.
    pub async fn complete(mut self, published: &[Uuid]) -> anyhow::Result<()> {
        if !published.is_empty() {
            count_round_trips(1);
            sqlx::query("UPDATE jobs SET published_at = now() WHERE id = ANY($1)")
                .bind(published)
                .execute(self.unit.statements())
                .await
                .context("stamping swept jobs as published")?;
        }
        self.unit.commit().await.context("committing the sweep")
    }
}

/// The advisory lock key of the scheduler ("tl_sched" in ASCII).
const SCHEDULER_LOCK: i64 = 0x746c_5f73_6368_6564;

pub(super) const OUTBOX_COLUMNS: &str =
    "jobs.id, jobs.namespace, jobs.kind, jobs.queue, jobs.args, jobs.priority, jobs.traceparent";

impl Store {
    /// The scheduler's claim: due `scheduled` jobs (moved to `queued`) and due `retrying`
    /// jobs whose delay was too long for a delay tier, locked until
    /// [`OutboxClaim::complete`] stamps the published ones. `None` when another replica's
    /// scheduler holds the scheduler lock right now: one scheduler runs at a time.
    ///
    /// The lock is transaction-scoped (`pg_try_advisory_xact_lock`), so it works through a
    /// transaction-mode connection pooler and frees itself if the replica dies. A worker
    /// that receives a job before this claim commits waits on the row lock (its start
    /// matches due `scheduled` rows for exactly this), then sees it `queued` and runs it.
    pub async fn claim_due(
        &self,
        namespaces: &[Namespace],
        limit: i64,
        max_bytes: i64,
    ) -> anyhow::Result<Option<OutboxClaim>> {
        count_round_trips(1);
        let mut unit = self
            .transaction(Commit::Durable)
            .await
            .context("starting a scheduler pass")?;
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(SCHEDULER_LOCK)
            .fetch_one(unit.statements())
            .await
            .context("taking the scheduler lock")?;
        if !leader {
            unit.rollback().await.context("ending a scheduler pass")?;
            return Ok(None);
        }
        count_round_trips(1);
        // Rows are locked up to `limit`, then taken in order while the args before them
        // add up to less than `max_bytes` (so always at least one): what one claim holds in
        // memory is bounded however large the rows are. Locked rows past the bound are let
        // go at the commit, for the next claim.
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH locked AS (
                 SELECT id, run_at, args_bytes FROM jobs
                 WHERE published_at IS NULL AND status IN ('scheduled', 'retrying')
                   AND run_at <= now() AND namespace = ANY($1)
                 ORDER BY run_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED),
             due AS (
                 SELECT id, locked FROM (
                     SELECT id, count(*) OVER () AS locked,
                            sum(args_bytes) OVER (ORDER BY run_at, id) - args_bytes AS bytes_before
                     FROM locked) sized
                 WHERE bytes_before < $3)
             UPDATE jobs
             SET status = CASE WHEN status = 'scheduled' THEN 'queued' ELSE status END
             FROM due WHERE jobs.id = due.id
             RETURNING {OUTBOX_COLUMNS}, due.locked"
        )))
        .bind(namespaces)
        .bind(limit)
        .bind(max_bytes)
        .fetch_all(unit.statements())
        .await
        .context("claiming due scheduled and retrying jobs")?;
        Ok(Some(OutboxClaim::of(unit, rows, limit)))
    }

    /// Claims queued jobs that were never published and are older than `grace` (younger
    /// ones are the fast path's to publish): up to `limit` rows, and only while their args
    /// add up to less than `max_bytes` (as [`Store::claim_due`]).
    pub async fn claim_unpublished(
        &self,
        namespaces: &[Namespace],
        grace: Duration,
        limit: i64,
        max_bytes: i64,
    ) -> anyhow::Result<OutboxClaim> {
        count_round_trips(1);
        let mut unit = self
            .transaction(Commit::Durable)
            .await
            .context("starting a sweep")?;
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH locked AS (
                 SELECT id, run_at, args_bytes FROM jobs
                 WHERE published_at IS NULL AND status = 'queued'
                   AND run_at <= now() - make_interval(secs => $2)
                   AND namespace = ANY($1)
                 ORDER BY run_at
                 LIMIT $3
                 FOR UPDATE SKIP LOCKED),
             sized AS (
                 SELECT id, run_at, count(*) OVER () AS locked,
                        sum(args_bytes) OVER (ORDER BY run_at, id) - args_bytes AS bytes_before
                 FROM locked)
             SELECT {OUTBOX_COLUMNS}, sized.locked
             FROM jobs JOIN sized ON jobs.id = sized.id
             WHERE sized.bytes_before < $4
             ORDER BY sized.run_at, sized.id"
        )))
        .bind(namespaces)
        .bind(grace.as_secs_f64())
        .bind(limit)
        .bind(max_bytes)
        .fetch_all(unit.statements())
        .await
        .context("claiming unpublished jobs")?;
        Ok(OutboxClaim::of(unit, rows, limit))
    }

    /// Stamps fast-path publications. Only rows still `queued` and unstamped: by the time
    /// the confirms arrive a worker may have run the job and put a long retry back in the
    /// outbox, or the row may be `scheduled` (its `run_at` was still ahead by PostgreSQL's
    /// clock); a stamp there would hide it from the scheduler for good. Relaxed commit: a
    /// lost stamp only means the sweeper publishes the job again and the worker skips the
    /// duplicate. Rows are locked in id order, the order every batched UPDATE here uses, so
    /// batches never deadlock.
    pub async fn mark_published(&self, ids: &[Uuid]) -> anyhow::Result<()> {
        count_round_trips(1);
        self.one(Commit::Relaxed, async |statements| {
            sqlx::query(
                "WITH target AS (
                     SELECT id FROM jobs
                     WHERE id = ANY($1) AND published_at IS NULL AND status = 'queued'
                     ORDER BY id FOR UPDATE)
                 UPDATE jobs SET published_at = now() FROM target WHERE jobs.id = target.id",
            )
            .bind(ids)
            .execute(statements)
            .await
        })
        .await
        .context("stamping published jobs")?;
        Ok(())
    }
}
