//! The worker's start transition, `queued|retrying → running`, a guarded UPDATE for a whole
//! batch of deliveries. It hands each started attempt its fencing token (`starts`) and a
//! lease, and ends a job whose cancel was accepted instead of running it.

use std::time::Duration;

use anyhow::Context;
use uuid::Uuid;

use super::{Commit, Store, count_round_trips};
use crate::retry::Backoff;
use crate::{JobId, JobStatus, Namespace};

/// A delivery asking to run its job.
#[derive(Clone, Debug)]
pub struct StartRequest {
    pub namespace: Namespace,
    pub id: JobId,
    /// An earlier delivery of this job's message ended without an outcome (RabbitMQ's
    /// `redelivered` flag, or the count a deferral carried on): the worker that held it died
    /// or returned it, so a job left `running` by that worker may be taken over.
    pub redelivered: bool,
}

/// A job the worker may now run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartedJob {
    /// This attempt's number, 1-based.
    pub attempt: u32,
    /// This attempt's fencing token: its outcome is recorded only while the row carries it.
    pub token: i64,
    pub max_attempts: u32,
    pub timeout_ms: u32,
    /// The job's own backoff; `None` means the fleet's.
    pub backoff: Option<Backoff>,
    /// Earlier runs that snoozed (they did not count as attempts).
    pub snoozes: u32,
    /// Times a person sent the job back from `dead` (attempts restart at 1 after each).
    pub redrives: u32,
}

/// A row the start transition touched.
#[derive(sqlx::FromRow)]
struct StartedRow {
    id: Uuid,
    status: JobStatus,
    attempts: i32,
    starts: i64,
    max_attempts: i32,
    timeout_ms: i32,
    backoff_min_ms: Option<i32>,
    backoff_max_ms: Option<i32>,
    snoozes: i32,
    redrives: i32,
}

impl StartedRow {
    fn outcome(&self) -> StartOutcome {
        if self.status != JobStatus::Running {
            // A takeover found the cancel a person asked for: the job ended here.
            return StartOutcome::Skipped(self.status);
        }
        let millis = |ms: i32| Duration::from_millis(u64::try_from(ms).unwrap_or(1));
        StartOutcome::Started(StartedJob {
            attempt: u32::try_from(self.attempts).unwrap_or(0),
            token: self.starts,
            max_attempts: u32::try_from(self.max_attempts).unwrap_or(1),
            timeout_ms: u32::try_from(self.timeout_ms).unwrap_or(1),
            backoff: self
                .backoff_min_ms
                .zip(self.backoff_max_ms)
                .map(|(min, max)| Backoff {
                    min: millis(min),
                    max: millis(max),
                }),
            snoozes: u32::try_from(self.snoozes).unwrap_or(0),
            redrives: u32::try_from(self.redrives).unwrap_or(0),
        })
    }
}

/// What the start transition decided for one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOutcome {
    /// Now `running`: run it.
    Started(StartedJob),
    /// Exists but may not run now (finished, cancelled, scheduled, or running under another
    /// live delivery): ack and skip the message.
    Skipped(JobStatus),
    /// No such job in the namespace: the message is poison.
    Unknown,
}

/// The start statement. A row may start from `queued`; from `retrying` once its `run_at`
/// has passed (a stale message cannot cut a long backoff short), or at once when a tier
/// retry's own message was redelivered (its parking failed); from a due `scheduled`
/// row, only to wait on the scheduler's row lock (when its claim commits, the recheck sees
/// `queued`; a skip would lose the job); and from `running` when the message was
/// redelivered or the running attempt's lease has expired (its worker died). A row whose
/// cancel was accepted is ended `cancelled` instead of started.
const START: &str = "
    WITH input AS (
        SELECT DISTINCT ON (id) *
        FROM unnest($1::uuid[], $2::text[], $3::bool[]) AS i(id, namespace, redelivered)
        ORDER BY id, redelivered DESC),
    target AS (
        SELECT j.id, j.cancel_requested_at IS NOT NULL AS cancelled
        FROM jobs j JOIN input i ON i.id = j.id AND i.namespace = j.namespace
        WHERE j.status = 'queued'
           OR (j.status IN ('retrying', 'scheduled') AND j.run_at <= now())
           -- a retry through a delay tier whose message came back unacked: parking it
           -- failed after its outcome was recorded, so it retries now rather than never
           OR (j.status = 'retrying' AND i.redelivered AND j.published_at IS NOT NULL)
           OR (j.status = 'running' AND (i.redelivered OR j.lease_until < now()))
        ORDER BY j.id
        FOR UPDATE OF j)
    UPDATE jobs
    SET status = CASE WHEN target.cancelled THEN 'cancelled' ELSE 'running' END::job_status,
        finished_at = CASE WHEN target.cancelled THEN now() END,
        attempts = attempts + (NOT target.cancelled)::int,
        starts = starts + (NOT target.cancelled)::int,
        started_at = CASE WHEN target.cancelled THEN started_at ELSE now() END,
        lease_until = CASE WHEN target.cancelled THEN NULL
                           ELSE now() + make_interval(secs => $4) END
    FROM target WHERE jobs.id = target.id
    RETURNING jobs.id, jobs.status, jobs.attempts, jobs.starts, jobs.max_attempts,
              jobs.timeout_ms, jobs.backoff_min_ms, jobs.backoff_max_ms, jobs.snoozes,
              jobs.redrives";

impl Store {
    /// Moves each job to `running` if it may run (see [`START`]) with a lease of `lease`,
    /// and returns one [`StartOutcome`] per request, in input order. The same job twice in
    /// one batch starts once: the first request gets it, the others are skipped.
    ///
    /// Relaxed commit: if the commit is lost in a crash, the outcome write finds the row
    /// one start behind and records it all the same (see `finish_jobs`). One round trip when
    /// every job starts; a second only to tell skipped jobs from unknown ones.
    pub async fn start_jobs(
        &self,
        requests: &[StartRequest],
        lease: Duration,
    ) -> anyhow::Result<Vec<StartOutcome>> {
        let ids: Vec<Uuid> = requests.iter().map(|r| r.id.as_uuid()).collect();
        let namespaces: Vec<&str> = requests.iter().map(|r| r.namespace.as_str()).collect();
        let redelivered: Vec<bool> = requests.iter().map(|r| r.redelivered).collect();
        count_round_trips(1);
        let rows: Vec<StartedRow> = self
            .one(Commit::Relaxed, async |statements| {
                sqlx::query_as(START)
                    .bind(&ids)
                    .bind(&namespaces)
                    .bind(&redelivered)
                    .bind(lease.as_secs_f64())
                    .fetch_all(statements)
                    .await
            })
            .await
            .context("moving jobs to running")?;
        let mut outcomes = Vec::with_capacity(ids.len());
        let mut taken = std::collections::HashSet::new();
        for id in &ids {
            let first = taken.insert(*id);
            outcomes.push(match rows.iter().find(|row| row.id == *id) {
                Some(row) if first => Some(row.outcome()),
                // The same job again in this batch: the first request has it.
                Some(_) => Some(StartOutcome::Skipped(JobStatus::Running)),
                None => None,
            });
        }
        if outcomes.iter().all(Option::is_some) {
            return Ok(outcomes.into_iter().flatten().collect());
        }
        self.tell_skipped_from_unknown(&ids, &namespaces, outcomes)
            .await
    }

    /// Fills the requests that did not start: skipped (with the row's status) or unknown.
    async fn tell_skipped_from_unknown(
        &self,
        ids: &[Uuid],
        namespaces: &[&str],
        mut outcomes: Vec<Option<StartOutcome>>,
    ) -> anyhow::Result<Vec<StartOutcome>> {
        let (missing_ids, missing_namespaces): (Vec<Uuid>, Vec<&str>) = ids
            .iter()
            .zip(namespaces)
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.is_none())
            .map(|((id, namespace), _)| (*id, *namespace))
            .unzip();
        count_round_trips(1);
        let existing: Vec<(Uuid, JobStatus)> = self
            .one(Commit::Relaxed, async |statements| {
                sqlx::query_as(
                    "SELECT j.id, j.status FROM jobs j
                     JOIN unnest($1::uuid[], $2::text[]) AS i(id, namespace)
                       ON i.id = j.id AND i.namespace = j.namespace",
                )
                .bind(&missing_ids)
                .bind(&missing_namespaces)
                .fetch_all(statements)
                .await
            })
            .await
            .context("looking up jobs that did not start")?;
        for (id, outcome) in ids.iter().zip(outcomes.iter_mut()) {
            if outcome.is_none() {
                *outcome = Some(match existing.iter().find(|row| row.0 == *id) {
                    Some((_, status)) => StartOutcome::Skipped(*status),
                    None => StartOutcome::Unknown,
                });
            }
        }
        Ok(outcomes.into_iter().flatten().collect())
    }
}
