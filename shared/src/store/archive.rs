//! The job history archive's SQL: choosing a namespace's finished jobs older than a cutoff,
//! the `archive_batches` manifest that makes the move to storage crash-safe, reading the
//! jobs as JSON lines, and deleting them once their object is stored.
//!
//! A batch moves through one [`ArchivePass`], a transaction that holds the namespace's
//! archive lock and the batch's row locks from the moment the jobs are chosen until they
//! are deleted, upload included. So what is uploaded is exactly what is deleted: a redrive
//! of one of those jobs waits, then finds it gone, instead of reviving a row that is about
//! to be deleted. The manifest row is the one write that must outlive a crash of the pass,
//! so it commits on its own connection (see [`ArchivePass::record`]).

use anyhow::Context;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Commit, Store, Unit, count_round_trips};
use crate::Namespace;

/// The class half of the archive's advisory lock key ("tlar" in ASCII); the other half is a
/// hash of the namespace, so each namespace is archived by one replica at a time while
/// different namespaces go on in parallel. A hash collision only makes two namespaces take
/// turns.
const ARCHIVE_LOCK_CLASS: i32 = 0x746c_6172;

/// Rows that are finished for good (a redrive sets `finished_at` to NULL, so it also takes a
/// revived job out of this set).
const FINISHED_BEFORE_CUTOFF: &str = "namespace = $1
     AND status IN ('succeeded', 'dead', 'cancelled')
     AND finished_at < $2";

/// One batch of the manifest: where its object goes and which jobs it holds.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ArchiveBatch {
    /// UUIDv7; the object's file name.
    pub id: Uuid,
    pub object_key: String,
    /// `None`: the fleet's bucket.
    pub bucket: Option<String>,
    /// The jobs chosen for it, oldest finished first.
    pub job_ids: Vec<Uuid>,
}

/// One archived job: its row with every column and its `job_errors` as one JSON object.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ArchivedJob {
    pub id: Uuid,
    pub finished_at: DateTime<Utc>,
    /// `{…every jobs column…, "errors": [{…every job_errors column but job_id…}]}`, one line.
    pub line: String,
}

/// The jobs [`ArchivePass::choose`] locked for a new batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// Oldest finished first.
    pub ids: Vec<Uuid>,
    /// The batch stopped at its row or byte bound: more jobs may be old enough already.
    pub more: bool,
}

/// An archive pass over one namespace: an open transaction holding the namespace's archive
/// lock and, once jobs are chosen, their row locks. Ending it any way but
/// [`ArchivePass::complete`] (dropped, rolled back, its process killed) deletes nothing:
/// the jobs stay, and a recorded batch stays pending for the next pass.
pub struct ArchivePass {
    unit: Unit,
    namespace: Namespace,
    /// The store the manifest row commits through, outside the pass's transaction.
    manifest: Store,
}

impl Store {
    /// Starts an archive pass over `namespace`; `None` while another pass (another replica's,
    /// or a concurrent one here) holds the namespace's archive lock.
    ///
    /// The lock is transaction-scoped (`pg_try_advisory_xact_lock`), like the scheduler's: it
    /// cannot be left behind by an error path or a dead replica, and it works through a
    /// transaction-mode pooler.
    pub async fn begin_archive(
        &self,
        namespace: &Namespace,
    ) -> anyhow::Result<Option<ArchivePass>> {
        count_round_trips(2);
        let mut unit = self
            .transaction(Commit::Durable)
            .await
            .context("starting an archive pass")?;
        // The pass holds this transaction open across the upload: a server-side idle timeout
        // would end it mid-upload, and another replica would then resume the batch while
        // this upload is still in flight.
        sqlx::query("SET LOCAL idle_in_transaction_session_timeout = 0")
            .execute(unit.statements())
            .await
            .context("starting an archive pass")?;
        let owner: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2))")
            .bind(ARCHIVE_LOCK_CLASS)
            .bind(namespace.as_str())
            .fetch_one(unit.statements())
            .await
            .context("taking the archive lock")?;
        if !owner {
            unit.rollback().await.context("ending an archive pass")?;
            return Ok(None);
        }
        Ok(Some(ArchivePass {
            unit,
            namespace: namespace.clone(),
            manifest: self.clone(),
        }))
    }
}

impl ArchivePass {
    /// The oldest batch a stopped pass left in the manifest, if any.
    pub async fn pending(&mut self) -> anyhow::Result<Option<ArchiveBatch>> {
        count_round_trips(1);
        sqlx::query_as(
            "SELECT id, object_key, bucket, job_ids FROM archive_batches
             WHERE namespace = $1 ORDER BY created_at, id LIMIT 1",
        )
        .bind(self.namespace.as_str())
        .fetch_optional(self.unit.statements())
        .await
        .context("reading the pending archive batch")
    }

    /// Locks up to `limit` jobs finished before `cutoff` that no pending batch holds, oldest
    /// finished first, and only while their args and results add up to less than
    /// `max_bytes` (always one): the batch is held in memory while it is gzipped and put.
    /// Rows someone else has locked right now (a redrive in flight) are skipped, not waited
    /// for.
    pub async fn choose(
        &mut self,
        cutoff: DateTime<Utc>,
        limit: i64,
        max_bytes: i64,
    ) -> anyhow::Result<Chosen> {
        count_round_trips(1);
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH candidates AS (
                 SELECT id, finished_at,
                        args_bytes + coalesce(octet_length(result::text), 0) AS bytes
                 FROM jobs
                 WHERE {FINISHED_BEFORE_CUTOFF}
                   AND NOT EXISTS (SELECT 1 FROM archive_batches batch
                                   WHERE batch.namespace = $1 AND jobs.id = ANY(batch.job_ids))
                   -- one UTC day per batch, so each object sits under the day its jobs finished
                   AND finished_at < (SELECT date_trunc('day', min(finished_at) AT TIME ZONE 'UTC')
                                             AT TIME ZONE 'UTC' + interval '1 day'
                                      FROM jobs WHERE {FINISHED_BEFORE_CUTOFF})
                 ORDER BY finished_at, id
                 LIMIT $3),
             sized AS (
                 SELECT id, count(*) OVER () AS candidates,
                        sum(bytes) OVER (ORDER BY finished_at, id) - bytes AS bytes_before
                 FROM candidates)
             SELECT jobs.id, sized.candidates FROM jobs JOIN sized ON jobs.id = sized.id
             WHERE sized.bytes_before < $4 AND {FINISHED_BEFORE_CUTOFF}
             ORDER BY jobs.finished_at, jobs.id
             FOR UPDATE OF jobs SKIP LOCKED"
        )))
        .bind(self.namespace.as_str())
        .bind(cutoff)
        .bind(limit)
        .bind(max_bytes)
        .fetch_all(self.unit.statements())
        .await
        .context("choosing jobs to archive")?;
        let candidates = rows.first().map_or(0, |row| row.1);
        let ids: Vec<Uuid> = rows.into_iter().map(|row| row.0).collect();
        Ok(Chosen {
            more: candidates == limit || (ids.len() as i64) < candidates,
            ids,
        })
    }

    /// Locks those of `batch`'s jobs that are still finished before `cutoff`; returns their
    /// ids. A job revived since the batch was recorded (redriven, so no longer finished) is
    /// left out: it stays in PostgreSQL and out of the object.
    pub async fn lock_recorded(
        &mut self,
        batch: &ArchiveBatch,
        cutoff: DateTime<Utc>,
    ) -> anyhow::Result<Vec<Uuid>> {
        count_round_trips(1);
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM jobs
             WHERE {FINISHED_BEFORE_CUTOFF} AND id = ANY($3)
             ORDER BY finished_at, id
             FOR UPDATE SKIP LOCKED"
        )))
        .bind(self.namespace.as_str())
        .bind(cutoff)
        .bind(&batch.job_ids)
        .fetch_all(self.unit.statements())
        .await
        .with_context(|| format!("locking the jobs of pending archive batch {}", batch.id))
    }

    /// The locked jobs `ids` as JSON lines, oldest finished first. A statement of its own,
    /// after the locks are held, so it reads the rows exactly as they will be deleted.
    pub async fn read(&mut self, ids: &[Uuid]) -> anyhow::Result<Vec<ArchivedJob>> {
        count_round_trips(1);
        sqlx::query_as(
            "SELECT jobs.id, jobs.finished_at,
                    (to_jsonb(jobs) - 'args_bytes' || jsonb_build_object('errors', coalesce(
                        (SELECT jsonb_agg(to_jsonb(error) - 'job_id'
                                          ORDER BY error.at, error.redrive, error.attempt)
                         FROM job_errors error WHERE error.job_id = jobs.id),
                        '[]'::jsonb)))::text AS line
             FROM jobs
             WHERE namespace = $1 AND id = ANY($2)
             ORDER BY finished_at, id",
        )
        .bind(self.namespace.as_str())
        .bind(ids)
        .fetch_all(self.unit.statements())
        .await
        .context("reading jobs to archive")
    }

    /// Writes `batch` to the manifest and commits it at once, on another connection than
    /// the pass: it must survive the pass being rolled back (a crash after the upload), so
    /// the next pass finds it and reuses its key instead of writing a second object.
    pub async fn record(&self, batch: &ArchiveBatch) -> anyhow::Result<()> {
        count_round_trips(1);
        self.manifest
            .one(Commit::Durable, async |statements| {
                sqlx::query(
                    "INSERT INTO archive_batches (id, namespace, object_key, bucket, job_ids)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(batch.id)
                .bind(self.namespace.as_str())
                .bind(&batch.object_key)
                .bind(&batch.bucket)
                .bind(&batch.job_ids)
                .execute(statements)
                .await
            })
            .await
            .with_context(|| format!("recording archive batch {}", batch.id))?;
        Ok(())
    }

    /// Ends the pass without deleting anything, as a crash would, but at once (a crashed
    /// replica's locks last until PostgreSQL notices its connection is gone). A recorded
    /// batch stays pending.
    pub async fn rollback(self) -> anyhow::Result<()> {
        self.unit
            .rollback()
            .await
            .context("rolling back an archive pass")
    }

    /// After the batch's object is stored (or, with `archived` empty, removed): deletes the
    /// archived jobs (their `job_errors` cascade) and the manifest row, and commits, which
    /// also releases the archive lock. Returns how many jobs were deleted.
    pub async fn complete(mut self, batch: Uuid, archived: &[Uuid]) -> anyhow::Result<u64> {
        count_round_trips(1);
        let deleted: i64 = sqlx::query_scalar(
            "WITH archived AS (
                 DELETE FROM jobs WHERE namespace = $1 AND id = ANY($2) RETURNING 1),
             manifest AS (
                 DELETE FROM archive_batches WHERE id = $3 AND namespace = $1)
             SELECT count(*) FROM archived",
        )
        .bind(self.namespace.as_str())
        .bind(archived)
        .bind(batch)
        .fetch_one(self.unit.statements())
        .await
        .with_context(|| format!("deleting the jobs of archive batch {batch}"))?;
        self.unit
            .commit()
            .await
            .with_context(|| format!("committing archive batch {batch}"))?;
        Ok(u64::try_from(deleted).unwrap_or(0))
    }
}
