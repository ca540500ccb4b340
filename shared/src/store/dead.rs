//! Dead jobs: burying a poison or crash-looping job, and sending dead jobs back to work
//! (one by id, or many by filter).

use anyhow::Context;
use uuid::Uuid;

use super::ErrorKind;
use super::outbox::{OUTBOX_COLUMNS, OutboxJob};
use super::{Commit, SqlContext, Store, StoreError, count_round_trips, search};
use crate::envelope::Envelope;
use crate::{JobId, JobStatus, Kind, Namespace, QueueName};

/// What [`Store::bury`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Burial {
    /// The job is now `dead` with the reason recorded.
    Buried,
    /// It is in this state, which this verdict does not bury (finished or cancelled; or,
    /// for `crashed`, not `running`); nothing changed.
    NotBuried(JobStatus),
    /// No such job in the namespace.
    Unknown,
    /// The job exists, but its row's kind or queue is not the message's: the
    /// message is forged (or corrupted) and says nothing about the job; nothing changed.
    Mismatched,
}

/// Which dead jobs a redrive takes. Every field narrows it.
#[derive(Clone, Debug, Default)]
pub struct DeadFilter {
    pub kind: Option<Kind>,
    pub queue: Option<QueueName>,
    /// Case-insensitive substring of the last error.
    pub error: Option<String>,
}

/// What a job gets when it is sent back to work: fresh attempts, a clean slate for this
/// life, and the outbox (published_at NULL) so the relay publishes it even if the API
/// process that redrove it dies before its fast path does.
const BACK_TO_WORK: &str = "status = 'queued', attempts = 0, redrives = redrives + 1,
     run_at = now(), published_at = NULL, started_at = NULL, finished_at = NULL,
     cancel_requested_at = NULL, result = NULL";

impl Store {
    /// Marks a job that cannot run (`Poison`: any waiting or running job) or keeps killing
    /// its workers (`Crashed`: only a job left `running`, i.e. one that started and never
    /// finished) as `dead`, recording `reason` in its error history. `message` is the
    /// verdict's evidence: a job is buried only if its row agrees with the message's kind
    /// and queue, so a message forged under another kind cannot kill a real job.
    pub async fn bury(
        &self,
        namespace: &Namespace,
        message: &Envelope,
        kind: ErrorKind,
        reason: &str,
        worker_id: &str,
    ) -> anyhow::Result<Burial> {
        let id = message.id;
        count_round_trips(1);
        let buried: Option<Uuid> = self
            .one(Commit::Durable, async |statements| {
                sqlx::query_scalar(
                    "WITH target AS (
                         SELECT id, attempts, redrives FROM jobs
                         WHERE id = $1 AND namespace = $2
                           AND kind = $6 AND queue = $7
                           AND (status = 'running'
                                OR (NOT $8 AND status IN ('scheduled', 'queued', 'retrying')))
                         FOR UPDATE),
                     recorded AS (
                         INSERT INTO job_errors (job_id, attempt, redrive, kind, message, worker_id)
                         SELECT id, attempts, redrives, $3, $4, $5 FROM target)
                     UPDATE jobs SET status = 'dead', finished_at = now(), last_error = $4
                     FROM target WHERE jobs.id = target.id
                     RETURNING jobs.id",
                )
                .bind(id.as_uuid())
                .bind(namespace.as_str())
                .bind(kind)
                .bind(reason)
                .bind(worker_id)
                .bind(message.kind.as_str())
                .bind(message.queue.as_str())
                .bind(kind == ErrorKind::Crashed)
                .fetch_optional(statements)
                .await
            })
            .await
            .with_context(|| format!("burying job {id}"))?;
        if buried.is_some() {
            return Ok(Burial::Buried);
        }
        self.why_not_buried(namespace, message).await
    }

    /// [`Burial::NotBuried`], [`Burial::Unknown`] or [`Burial::Mismatched`] for a message
    /// whose job [`Store::bury`] did not bury.
    async fn why_not_buried(
        &self,
        namespace: &Namespace,
        message: &Envelope,
    ) -> anyhow::Result<Burial> {
        count_round_trips(1);
        let row: Option<(JobStatus, bool)> = self
            .one(Commit::Durable, async |statements| {
                sqlx::query_as(
                    "SELECT status, (kind = $3 AND queue = $4) FROM jobs
                     WHERE id = $1 AND namespace = $2",
                )
                .bind(message.id.as_uuid())
                .bind(namespace.as_str())
                .bind(message.kind.as_str())
                .bind(message.queue.as_str())
                .fetch_optional(statements)
                .await
            })
            .await
            .with_context(|| format!("reading job {} after a burial", message.id))?;
        Ok(match row {
            None => Burial::Unknown,
            Some((_, false)) => Burial::Mismatched,
            Some((status, true)) => Burial::NotBuried(status),
        })
    }

    /// Sends one `dead` or `cancelled` job back to work with fresh attempts.
    pub async fn retry_job(
        &self,
        namespace: &Namespace,
        id: JobId,
    ) -> Result<RetryOutcome, StoreError> {
        count_round_trips(1);
        let row: Option<OutboxJob> = self
            .one(Commit::Durable, async |statements| {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "UPDATE jobs SET {BACK_TO_WORK}
                     WHERE id = $1 AND namespace = $2 AND status IN ('dead', 'cancelled')
                     RETURNING {OUTBOX_COLUMNS}"
                )))
                .bind(id.as_uuid())
                .bind(namespace.as_str())
                .fetch_optional(statements)
                .await
            })
            .await
            .with_sql_context(|| format!("retrying job {id}"))?;
        if let Some(row) = row {
            return Ok(RetryOutcome::Queued(row));
        }
        let current = self.job_status(namespace, id).await?;
        Ok(current.map_or(RetryOutcome::NotFound, RetryOutcome::NotRetryable))
    }

    /// How many of `namespace`'s dead jobs match `filter` (a redrive's dry run): a search.
    pub async fn count_dead(
        &self,
        namespace: &Namespace,
        filter: &DeadFilter,
    ) -> Result<i64, StoreError> {
        let error = filter.error.as_deref();
        let error_clause = search::error_clause(error, 4);
        count_round_trips(1);
        self.search("counting dead jobs", async |statements| {
            let query = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM jobs
                 WHERE namespace = $1 AND status = 'dead'
                   AND ($2::text IS NULL OR kind = $2)
                   AND ($3::text IS NULL OR queue = $3)
                   {error_clause}"
            )))
            .bind(namespace.as_str())
            .bind(filter.kind.as_ref().map(Kind::as_str))
            .bind(filter.queue.as_ref().map(QueueName::as_str));
            match error {
                Some(error) => query.bind(search::error_pattern(error)),
                None => query,
            }
            .fetch_one(statements)
            .await
        })
        .await
    }

    /// Sends up to `limit` of `namespace`'s dead jobs matching `filter` back to work, oldest
    /// first, in one statement. Every one of them is back in the outbox; only the first ones
    /// whose args add up to less than `max_bytes` are returned with their args, for the fast
    /// path, so a redrive of thousands of large jobs never holds them all in memory. The
    /// sweeper publishes the rest, a grace period later. A search: the statement (and with
    /// it the whole redrive) stops at the read timeout.
    pub async fn redrive(
        &self,
        namespace: &Namespace,
        filter: &DeadFilter,
        limit: i64,
        max_bytes: i64,
    ) -> Result<Redriven, StoreError> {
        let error = filter.error.as_deref();
        let error_clause = search::error_clause(error, 6);
        count_round_trips(1);
        // The final SELECT sees the rows as they were before the UPDATE of its own statement;
        // the columns it reads are ones the UPDATE does not change.
        let rows: Vec<RedrivenRow> = self
            .search("redriving dead jobs", async |statements| {
                let query = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "WITH target AS (
                         SELECT id FROM jobs
                         WHERE namespace = $1 AND status = 'dead'
                           AND ($2::text IS NULL OR kind = $2)
                           AND ($3::text IS NULL OR queue = $3)
                           {error_clause}
                         ORDER BY id
                         LIMIT $4
                         FOR UPDATE SKIP LOCKED),
                     moved AS (
                         UPDATE jobs SET {BACK_TO_WORK}
                         FROM target WHERE jobs.id = target.id
                         RETURNING jobs.id, jobs.args_bytes),
                     sized AS (
                         SELECT id, count(*) OVER () AS redriven,
                                sum(args_bytes) OVER (ORDER BY id) - args_bytes AS bytes_before
                         FROM moved)
                     SELECT {OUTBOX_COLUMNS}, sized.redriven
                     FROM jobs JOIN sized ON jobs.id = sized.id
                     WHERE sized.bytes_before < $5
                     ORDER BY jobs.id"
                )))
                .bind(namespace.as_str())
                .bind(filter.kind.as_ref().map(Kind::as_str))
                .bind(filter.queue.as_ref().map(QueueName::as_str))
                .bind(limit)
                .bind(max_bytes);
                match error {
                    Some(error) => query.bind(search::error_pattern(error)),
                    None => query,
                }
                .fetch_all(statements)
                .await
            })
            .await?;
        Ok(Redriven {
            count: rows
                .first()
                .map_or(0, |row| u64::try_from(row.redriven).unwrap_or(0)),
            to_publish: rows.into_iter().map(|row| row.job).collect(),
        })
    }
}

/// What [`Store::retry_job`] did.
#[derive(Debug)]
pub enum RetryOutcome {
    /// It was `dead` or `cancelled` and is back in the outbox, `queued`: this row, for the
    /// fast path.
    Queued(OutboxJob),
    /// It is in this state, which is not retried; nothing changed.
    NotRetryable(JobStatus),
    /// No such job in this namespace.
    NotFound,
}

/// What [`Store::redrive`] did.
#[derive(Debug)]
pub struct Redriven {
    /// Jobs sent back to work.
    pub count: u64,
    /// The first of them, within the byte bound, for the fast path; the sweeper publishes
    /// the others.
    pub to_publish: Vec<OutboxJob>,
}

#[derive(sqlx::FromRow)]
struct RedrivenRow {
    #[sqlx(flatten)]
    job: OutboxJob,
    redriven: i64,
}
