//! The worker's outcome transition, `running → final or retrying`, a guarded UPDATE for a
//! whole batch of attempts, fenced by each attempt's start token. A failed attempt's error
//! is written to `job_errors` by the same statement that records the outcome.

use std::time::Duration;

use anyhow::Context;
use uuid::Uuid;

use super::{Commit, ErrorKind, Store, count_round_trips};
use crate::retry::{RetryRoute, RetryVia};
use crate::{JobId, JobStatus};

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
    /// The attempt this outcome belongs to, as its number (what `attempts` becomes)...
    pub attempt: u32,
    /// ...and as its start token: a late outcome of an earlier attempt (its worker lost
    /// the delivery or its lease, another took over; or a retry or redrive since) must not
    /// overwrite the live one, and only the token never repeats.
    pub token: i64,
}

impl FinishRequest {
    /// The state this outcome's write left, judged from the job's row (`status`,
    /// `attempts`, `starts`) after the write's answer was lost with its connection: the row
    /// still carries this attempt's token and number (a snooze gives its attempt back) and
    /// has left `running`. `None` when the row says otherwise (still running: the write did
    /// not commit; another attempt or a redrive since): nothing of this write to act on.
    pub fn recorded_in(&self, status: JobStatus, attempts: i32, starts: i64) -> Option<JobStatus> {
        let expected = match self.outcome {
            AttemptOutcome::Snoozed => self.attempt.saturating_sub(1),
            _ => self.attempt,
        };
        (u32::try_from(attempts).ok() == Some(expected)
            && starts == self.token
            && status != JobStatus::Running)
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

/// The outcome statement. It matches an attempt's row while the row still carries the
/// attempt's token (`running`, `starts` = token) — or is exactly one start behind it and
/// runnable, which is a relaxed start PostgreSQL lost in a crash after answering it: the
/// attempt did run, so its outcome is recorded as if the start had stuck. A cancel a person
/// asked for wins over every outcome (the result is kept). A retry waits until `run_at`:
/// for a tier that is when its message comes back; for the scheduler, the row goes back to
/// the outbox (`published_at` NULL).
const FINISH: &str = "
    WITH input AS (
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[],
                             $6::int4[], $7::int8[], $8::text[], $10::int4[], $11::int8[])
               AS i(id, outcome, result, error, error_kind, duration_ms,
                    retry_delay_ms, retry_via, attempt, token)),
    decided AS (
        SELECT i.id, i.outcome, i.result, i.error, i.error_kind, i.duration_ms,
               i.retry_delay_ms, i.retry_via, i.attempt, i.token, j.redrives,
               CASE
                   WHEN i.outcome = 'cancelled' OR j.cancel_requested_at IS NOT NULL
                       THEN 'cancelled'
                   WHEN i.outcome = 'succeeded' THEN 'succeeded'
                   WHEN i.outcome = 'snoozed' THEN 'retrying'
                   WHEN i.outcome = 'failed' AND i.attempt < j.max_attempts THEN 'retrying'
                   ELSE 'dead'
               END::job_status AS next
        FROM jobs j JOIN input i ON i.id = j.id
        WHERE (j.status = 'running' AND j.starts = i.token)
           OR (j.status IN ('queued', 'retrying') AND j.starts = i.token - 1
               AND j.attempts = i.attempt - 1)
        ORDER BY j.id
        FOR UPDATE OF j),
    recorded AS (
        INSERT INTO job_errors (job_id, attempt, redrive, kind, message, duration_ms,
                                worker_id, retry_delay_ms, retry_via)
        SELECT id, attempt, redrives, error_kind, error, duration_ms, $9,
               CASE WHEN next = 'retrying' THEN retry_delay_ms END,
               CASE WHEN next = 'retrying' THEN retry_via END
        FROM decided WHERE error IS NOT NULL)
    UPDATE jobs
    SET status = d.next,
        finished_at = CASE WHEN d.next = 'retrying' THEN NULL ELSE now() END,
        result = d.result,
        last_error = COALESCE(d.error, jobs.last_error),
        attempts = d.attempt - (d.outcome = 'snoozed')::int,
        starts = d.token,
        snoozes = jobs.snoozes + (d.outcome = 'snoozed')::int,
        lease_until = NULL,
        published_at = CASE WHEN d.next = 'retrying' AND d.retry_via = 'scheduler'
                            THEN NULL ELSE COALESCE(jobs.published_at, now()) END,
        run_at = CASE WHEN d.next = 'retrying'
                      THEN now() + make_interval(secs => (d.retry_delay_ms / 1000.0)::float8)
                      ELSE jobs.run_at END
    FROM decided d WHERE jobs.id = d.id
    RETURNING jobs.id, jobs.status";

impl Store {
    /// Records how each attempt ended and decides the job's next state in the same
    /// statement ([`FINISH`]): `cancelled` (asked to stop); `succeeded`; `retrying` (failed
    /// with attempts left, or snoozed — which gives its attempt back); else `dead`. A
    /// failed attempt's error goes to `job_errors` in the same statement.
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
                    (None, Some(message.as_str()), Some(*kind))
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
        let retry_via: Vec<RetryVia> = requests.iter().map(|r| r.retry.via()).collect();
        let attempts: Vec<i32> = requests
            .iter()
            .map(|r| i32::try_from(r.attempt).unwrap_or(i32::MAX))
            .collect();
        let tokens: Vec<i64> = requests.iter().map(|r| r.token).collect();
        count_round_trips(1);
        let rows: Vec<(Uuid, JobStatus)> = self
            .one(Commit::Durable, async |statements| {
                sqlx::query_as(FINISH)
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
                    .bind(&tokens)
                    .fetch_all(statements)
                    .await
            })
            .await
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
            token: i64::from(attempt) + 10,
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
        let token = failed.token;
        assert_eq!(
            failed.recorded_in(JobStatus::Retrying, 2, token),
            Some(JobStatus::Retrying)
        );
        assert_eq!(
            failed.recorded_in(JobStatus::Dead, 2, token),
            Some(JobStatus::Dead)
        );
        assert_eq!(
            failed.recorded_in(JobStatus::Running, 2, token),
            None,
            "still running: the write did not commit"
        );
        assert_eq!(
            failed.recorded_in(JobStatus::Running, 3, token + 1),
            None,
            "another attempt runs"
        );
        assert_eq!(
            failed.recorded_in(JobStatus::Queued, 0, token),
            None,
            "redriven since"
        );
        assert_eq!(
            failed.recorded_in(JobStatus::Retrying, 2, token + 2),
            None,
            "a later life's attempt 2 (retried, then failed again) is not this one"
        );

        let done = request(AttemptOutcome::Succeeded(serde_json::json!({})), 1);
        assert_eq!(
            done.recorded_in(JobStatus::Succeeded, 1, done.token),
            Some(JobStatus::Succeeded)
        );

        let snoozed = request(AttemptOutcome::Snoozed, 3);
        assert_eq!(
            snoozed.recorded_in(JobStatus::Retrying, 2, snoozed.token),
            Some(JobStatus::Retrying),
            "a snooze gives its attempt back"
        );
        assert_eq!(
            snoozed.recorded_in(JobStatus::Retrying, 3, snoozed.token),
            None
        );
    }
}
