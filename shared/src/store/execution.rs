//! The worker's transitions: `queued|retrying → running` and `running → final or retrying`,
//! each a guarded UPDATE for a whole batch of jobs. A failed attempt's error is written to
//! `job_errors` by the same statement that records the outcome.

use std::time::Duration;

use anyhow::Context;
use uuid::Uuid;

use super::{Commit, Store, count_round_trips};
use crate::retry::{Backoff, RetryRoute};
use crate::{JobId, JobStatus, Namespace};

/// A delivery asking to run its job.
#[derive(Clone, Debug)]
pub struct StartRequest {
    pub namespace: Namespace,
    pub id: JobId,
    /// RabbitMQ redelivered the message: the worker that held it died or returned it, so a
    /// job left `running` by that worker may be taken over.
    pub redelivered: bool,
}

/// A job the worker may now run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartedJob {
    /// This attempt's number, 1-based.
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_ms: u32,
    /// The job's own backoff; `None` means the fleet's.
    pub backoff: Option<Backoff>,
    /// Earlier runs that snoozed (they did not count as attempts).
    pub snoozes: u32,
    /// Times a person sent the job back from `dead` (attempts restart at 1 after each).
    pub redrives: u32,
}

/// A row the start transition moved to `running`.
#[derive(sqlx::FromRow)]
struct StartedRow {
    id: Uuid,
    attempts: i32,
    max_attempts: i32,
    timeout_ms: i32,
    backoff_min_ms: Option<i32>,
    backoff_max_ms: Option<i32>,
    snoozes: i32,
    redrives: i32,
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

/// Why an attempt failed, as recorded in `job_errors.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The handler returned a retryable error.
    Error,
    /// The handler returned a fatal error: no more attempts.
    Fatal,
    /// The attempt ran past its timeout.
    Timeout,
    /// The handler panicked.
    Panic,
    /// The message could not be run at all (unknown kind, args that no longer fit).
    Poison,
    /// The job was delivered `retry.delivery_limit` times without finishing: it kills or
    /// outlives the workers that take it.
    Crashed,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Fatal => "fatal",
            Self::Timeout => "timeout",
            Self::Panic => "panic",
            Self::Poison => "poison",
            Self::Crashed => "crashed",
        }
    }
}

/// How an attempt ended, as the worker reports it.
#[derive(Clone, Debug)]
pub enum AttemptOutcome {
    Succeeded(serde_json::Value),
    /// May be tried again if attempts remain and nobody asked to cancel.
    Failed {
        kind: ErrorKind,
        message: String,
    },
    /// Run again later without counting this attempt.
    Snoozed,
    /// The handler stopped because cancellation was requested.
    Cancelled,
}

impl AttemptOutcome {
    fn code(&self) -> &'static str {
        match self {
            Self::Succeeded(_) => "succeeded",
            Self::Failed {
                kind: ErrorKind::Fatal | ErrorKind::Poison | ErrorKind::Crashed,
                ..
            } => "fatal",
            Self::Failed { .. } => "failed",
            Self::Snoozed => "snoozed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One attempt's end, to be recorded.
#[derive(Clone, Debug)]
pub struct FinishRequest {
    pub id: JobId,
    pub outcome: AttemptOutcome,
    /// How long the handler ran.
    pub duration: Duration,
    /// Where the job waits if this ends in `retrying` (computed before the statement,
    /// which alone decides whether a retry happens).
    pub retry: RetryRoute,
    /// The attempt this outcome belongs to: a late outcome of an earlier attempt (its worker
    /// lost the delivery, another took over) must not overwrite the live one.
    pub attempt: u32,
}

impl FinishRequest {
    /// The state this outcome's write left, judged from the job's row (`status`,
    /// `attempts`) after the write's answer was lost with its connection: the row still
    /// carries this attempt (a snooze gives its attempt back) and has left `running`. `None`
    /// when the row says otherwise (still running: the write did not commit; another attempt
    /// or a redrive since): nothing of this write to act on.
    pub fn recorded_in(&self, status: JobStatus, attempts: i32) -> Option<JobStatus> {
        let expected = match self.outcome {
            AttemptOutcome::Snoozed => self.attempt.saturating_sub(1),
            _ => self.attempt,
        };
        (u32::try_from(attempts).ok() == Some(expected) && status != JobStatus::Running)
            .then_some(status)
    }
}

/// The state a finished attempt left its job in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinishedJob {
    /// `None` when the job was no longer `running` (finished by another worker): nothing
    /// was written.
    pub status: Option<JobStatus>,
}

impl Store {
    /// Moves each job to `running` if it may run: from `queued`, from `retrying` once its
    /// `run_at` has passed, or from `running` when the message was redelivered. A due
    /// `scheduled` row is matched too, to wait on the scheduler's row lock: when the claim
    /// commits, the recheck sees `queued`. (If the claim rolled back after publishing, the
    /// job is due and has a message, so starting it is right; the scheduler no longer
    /// sees it once it is `running`.) Returns one [`StartOutcome`] per request,
    /// in input order.
    ///
    /// Relaxed commit: if the commit is lost in a crash, the message is redelivered and the
    /// job runs again — at-least-once either way. One round trip when every job starts; a
    /// second only to tell skipped jobs from unknown ones.
    pub async fn start_jobs(&self, requests: &[StartRequest]) -> anyhow::Result<Vec<StartOutcome>> {
        let ids: Vec<Uuid> = requests.iter().map(|r| r.id.as_uuid()).collect();
        let namespaces: Vec<&str> = requests.iter().map(|r| r.namespace.as_str()).collect();
        let redelivered: Vec<bool> = requests.iter().map(|r| r.redelivered).collect();
        count_round_trips(1);
        let rows: Vec<StartedRow> = self
            .one(Commit::Relaxed, async |statements| {
                sqlx::query_as(
                    "WITH input AS (
                         SELECT * FROM unnest($1::uuid[], $2::text[], $3::bool[])
                                AS i(id, namespace, redelivered)),
                     target AS (
                         SELECT j.id FROM jobs j JOIN input i ON i.id = j.id AND i.namespace = j.namespace
                         WHERE j.status = 'queued'
                            -- a retry held for the scheduler may not start before its time, even
                            -- from a stale message
                            OR (j.status = 'retrying' AND j.run_at <= now())
                            -- the scheduler publishes before its claim commits: the row still reads
                            -- `scheduled`; this matches it so the lock wait ends in a recheck that
                            -- sees `queued`, instead of a skip that would lose the job
                            OR (j.status = 'scheduled' AND j.run_at <= now())
                            OR (j.status = 'running' AND i.redelivered)
                         ORDER BY j.id
                         FOR UPDATE OF j)
                     UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = now()
                     FROM target WHERE jobs.id = target.id
                     RETURNING jobs.id, jobs.attempts, jobs.max_attempts, jobs.timeout_ms,
                               jobs.backoff_min_ms, jobs.backoff_max_ms, jobs.snoozes, jobs.redrives",
                )
                .bind(&ids)
                .bind(&namespaces)
                .bind(&redelivered)
                .fetch_all(statements)
                .await
            })
            .await
            .context("moving jobs to running")?;
        let mut outcomes: Vec<Option<StartOutcome>> = ids
            .iter()
            .map(|id| {
                let row = rows.iter().find(|row| row.id == *id)?;
                let millis = |ms: i32| Duration::from_millis(u64::try_from(ms).unwrap_or(1));
                Some(StartOutcome::Started(StartedJob {
                    attempt: u32::try_from(row.attempts).unwrap_or(0),
                    max_attempts: u32::try_from(row.max_attempts).unwrap_or(1),
                    timeout_ms: u32::try_from(row.timeout_ms).unwrap_or(1),
                    backoff: row
                        .backoff_min_ms
                        .zip(row.backoff_max_ms)
                        .map(|(min, max)| Backoff {
                            min: millis(min),
                            max: millis(max),
                        }),
                    snoozes: u32::try_from(row.snoozes).unwrap_or(0),
                    redrives: u32::try_from(row.redrives).unwrap_or(0),
                }))
            })
            .collect();
        if outcomes.iter().all(Option::is_some) {
            return Ok(outcomes.into_iter().flatten().collect());
        }

        let (missing_ids, missing_namespaces): (Vec<Uuid>, Vec<&str>) = ids
            .iter()
            .zip(&namespaces)
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

    /// Records how each attempt ended and decides the job's next state in the same
    /// statement: `succeeded`; `cancelled` (asked to stop); `retrying` (failed with attempts
    /// left, or snoozed — which gives its attempt back); else `dead`. A failed attempt's
    /// error goes to `job_errors` in the same statement. A retry whose route is the
    /// scheduler goes back into the outbox with `run_at` in the future.
    ///
    /// Durable commit: the worker acks only after this returns.
    pub async fn finish_jobs(
        &self,
        requests: &[FinishRequest],
        worker_id: &str,
    ) -> anyhow::Result<Vec<FinishedJob>> {
        let ids: Vec<Uuid> = requests.iter().map(|r| r.id.as_uuid()).collect();
        let codes: Vec<&str> = requests.iter().map(|r| r.outcome.code()).collect();
        let mut results = Vec::with_capacity(requests.len());
        let mut errors = Vec::with_capacity(requests.len());
        let mut error_kinds = Vec::with_capacity(requests.len());
        for request in requests {
            let (result, error, kind) = match &request.outcome {
                AttemptOutcome::Succeeded(value) => (Some(value.clone()), None, None),
                AttemptOutcome::Failed { kind, message } => {
                    (None, Some(message.as_str()), Some(kind.as_str()))
                }
                AttemptOutcome::Snoozed | AttemptOutcome::Cancelled => (None, None, None),
            };
            results.push(result);
            errors.push(error);
            error_kinds.push(kind);
        }
        let durations: Vec<i32> = requests
            .iter()
            .map(|r| i32::try_from(r.duration.as_millis()).unwrap_or(i32::MAX))
            .collect();
        let retry_delays: Vec<i64> = requests
            .iter()
            .map(|r| i64::try_from(r.retry.delay().as_millis()).unwrap_or(i64::MAX))
            .collect();
        let retry_via: Vec<String> = requests.iter().map(|r| r.retry.via()).collect();
        let attempts: Vec<i32> = requests
            .iter()
            .map(|r| i32::try_from(r.attempt).unwrap_or(i32::MAX))
            .collect();
        count_round_trips(1);
        let rows: Vec<(Uuid, JobStatus)> = self.one(Commit::Durable, async |statements| { sqlx::query_as(
            "WITH input AS (
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[],
                                      $6::int4[], $7::int8[], $8::text[], $10::int4[])
                        AS i(id, outcome, result, error, error_kind, duration_ms,
                             retry_delay_ms, retry_via, attempt)),
             decided AS (
                 SELECT i.id, i.outcome, i.result, i.error, i.error_kind, i.duration_ms,
                        i.retry_delay_ms, i.retry_via, j.attempts, j.redrives,
                        CASE
                            WHEN i.outcome = 'succeeded' THEN 'succeeded'
                            WHEN i.outcome = 'cancelled' OR j.cancel_requested_at IS NOT NULL
                                THEN 'cancelled'
                            WHEN i.outcome = 'snoozed' THEN 'retrying'
                            WHEN i.outcome = 'failed' AND j.attempts < j.max_attempts
                                THEN 'retrying'
                            ELSE 'dead'
                        END::job_status AS next
                 FROM jobs j JOIN input i ON i.id = j.id
                 WHERE j.status = 'running' AND j.attempts = i.attempt
                 ORDER BY j.id
                 FOR UPDATE OF j),
             recorded AS (
                 INSERT INTO job_errors (job_id, attempt, redrive, kind, message, duration_ms,
                                         worker_id, retry_delay_ms, retry_via)
                 SELECT id, attempts, redrives, error_kind, error, duration_ms, $9,
                        CASE WHEN next = 'retrying' THEN retry_delay_ms END,
                        CASE WHEN next = 'retrying' THEN retry_via END
                 FROM decided WHERE error IS NOT NULL)
             UPDATE jobs
             SET status = d.next,
                 finished_at = CASE WHEN d.next = 'retrying' THEN NULL ELSE now() END,
                 result = d.result,
                 last_error = COALESCE(d.error, jobs.last_error),
                 attempts = jobs.attempts - (d.outcome = 'snoozed')::int,
                 snoozes = jobs.snoozes + (d.outcome = 'snoozed')::int,
                 published_at = CASE WHEN d.next = 'retrying' AND d.retry_via = 'scheduler'
                                     THEN NULL ELSE COALESCE(jobs.published_at, now()) END,
                 run_at = CASE WHEN d.next = 'retrying' AND d.retry_via = 'scheduler'
                               THEN now() + make_interval(secs => (d.retry_delay_ms / 1000.0)::float8)
                               ELSE jobs.run_at END
             FROM decided d WHERE jobs.id = d.id
             RETURNING jobs.id, jobs.status",
        )
        .bind(&ids)
        .bind(&codes)
        .bind(&results)
        .bind(&errors)
        .bind(&error_kinds)
        .bind(&durations)
        .bind(&retry_delays)
        .bind(&retry_via)
        .bind(worker_id)
        .bind(&attempts)
        .fetch_all(statements).await }).await
        .context("recording attempt outcomes")?;
        Ok(ids
            .iter()
            .map(|id| FinishedJob {
                status: rows.iter().find(|row| row.0 == *id).map(|row| row.1),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(outcome: AttemptOutcome, attempt: u32) -> FinishRequest {
        FinishRequest {
            id: JobId::new(),
            outcome,
            duration: Duration::from_millis(5),
            retry: RetryRoute::Scheduler(Duration::from_secs(1)),
            attempt,
        }
    }

    #[test]
    fn a_lost_answer_is_read_back_only_from_a_row_this_attempt_left() {
        let failed = request(
            AttemptOutcome::Failed {
                kind: ErrorKind::Error,
                message: "boom".into(),
            },
            2,
        );
        assert_eq!(
            failed.recorded_in(JobStatus::Retrying, 2),
            Some(JobStatus::Retrying)
        );
        assert_eq!(
            failed.recorded_in(JobStatus::Dead, 2),
            Some(JobStatus::Dead)
        );
        assert_eq!(
            failed.recorded_in(JobStatus::Running, 2),
            None,
            "still running: the write did not commit"
        );
        assert_eq!(
            failed.recorded_in(JobStatus::Running, 3),
            None,
            "another attempt runs"
        );
        assert_eq!(
            failed.recorded_in(JobStatus::Queued, 0),
            None,
            "redriven since"
        );

        let done = request(AttemptOutcome::Succeeded(serde_json::json!({})), 1);
        assert_eq!(
            done.recorded_in(JobStatus::Succeeded, 1),
            Some(JobStatus::Succeeded)
        );

        let snoozed = request(AttemptOutcome::Snoozed, 3);
        assert_eq!(
            snoozed.recorded_in(JobStatus::Retrying, 2),
            Some(JobStatus::Retrying),
            "a snooze gives its attempt back"
        );
        assert_eq!(snoozed.recorded_in(JobStatus::Retrying, 3), None);
    }
}
