//! The worker's outcome transition, `running → final or retrying`, a guarded UPDATE for a
//! whole batch of attempts, fenced by each attempt's start token. A failed attempt's error
//! is written to `job_errors` by the same statement that records the outcome.

use std::time::Duration;

use anyhow::Context;

use super::{Commit, ErrorKind, Store, count_round_trips};
use crate::retry::{RetryRoute, RetryVia};
use crate::{JobId, JobStatus};

/// How an attempt ended, as the worker reports it. (A handler stopped because a person
/// cancelled its job reports how it stopped, usually `Failed`; the statement sees the
/// cancel on the row and ends the job `cancelled` whatever the outcome.)
#[derive(Clone, Debug)]
pub enum AttemptOutcome {
    Succeeded(serde_json::Value),
    /// May be tried again if attempts remain, the kind is not fatal and nobody asked to
    /// cancel.
    Failed {
        kind: ErrorKind,
        message: String,
    },
    /// Run again later without counting this attempt.
    Snoozed,
}

/// Where an outcome takes its job, by whether the attempt was the job's last. The
/// statement picks one from the row (`attempts < max_attempts`), unless a cancel a person
/// asked for overrides both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NextStatus {
    attempts_left: JobStatus,
    last_attempt: JobStatus,
}

impl AttemptOutcome {
    fn next_status(&self) -> NextStatus {
        let always = |status| NextStatus {
            attempts_left: status,
            last_attempt: status,
        };
        match self {
            Self::Succeeded(_) => always(JobStatus::Succeeded),
            // A snooze gives its attempt back, so it is never the last.
            Self::Snoozed => always(JobStatus::Retrying),
            Self::Failed { kind, .. } if kind.is_fatal() => always(JobStatus::Dead),
            Self::Failed { .. } => NextStatus {
                attempts_left: JobStatus::Retrying,
                last_attempt: JobStatus::Dead,
            },
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
/// asked for wins over every outcome (the result is kept); otherwise the outcome's
/// [`NextStatus`] for its last attempt or not. A retry waits until `run_at`: for a tier
/// that is when its message comes back; for the scheduler, the row goes back to the outbox
/// (`published_at` NULL).
const FINISH: &str = "
    WITH input AS (
        SELECT * FROM unnest($1::uuid[], $2::job_status[], $3::job_status[], $4::bool[],
                             $5::jsonb[], $6::text[], $7::text[], $8::int4[], $9::int8[],
                             $10::text[], $11::bool[], $12::int4[], $13::int8[])
               AS i(id, next_with_attempts_left, next_after_last_attempt, snoozed,
                    result, error, error_kind, duration_ms,
                    retry_delay_ms, retry_via, retry_via_scheduler, attempt, token)),
    decided AS (
        SELECT i.id, i.snoozed, i.result, i.error, i.error_kind, i.duration_ms,
               i.retry_delay_ms, i.retry_via, i.retry_via_scheduler, i.attempt, i.token,
               j.redrives,
               CASE
                   WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                   WHEN i.attempt < j.max_attempts THEN i.next_with_attempts_left
                   ELSE i.next_after_last_attempt
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
        SELECT id, attempt, redrives, error_kind, error, duration_ms, $14,
               CASE WHEN next = 'retrying' THEN retry_delay_ms END,
               CASE WHEN next = 'retrying' THEN retry_via END
        FROM decided WHERE error IS NOT NULL)
    UPDATE jobs
    SET status = d.next,
        finished_at = CASE WHEN d.next = 'retrying' THEN NULL ELSE now() END,
        result = d.result,
        last_error = COALESCE(d.error, jobs.last_error),
        attempts = d.attempt - d.snoozed::int,
        starts = d.token,
        snoozes = jobs.snoozes + d.snoozed::int,
        lease_until = NULL,
        published_at = CASE WHEN d.next = 'retrying' AND d.retry_via_scheduler
                            THEN NULL ELSE COALESCE(jobs.published_at, now()) END,
        run_at = CASE WHEN d.next = 'retrying'
                      THEN now() + make_interval(secs => (d.retry_delay_ms / 1000.0)::float8)
                      ELSE jobs.run_at END
    FROM decided d WHERE jobs.id = d.id
    RETURNING jobs.id, jobs.status";

/// A batch's outcomes as [`FINISH`]'s parallel arrays, in its parameters' order.
struct Columns<'a> {
    ids: Vec<JobId>,
    next_with_attempts_left: Vec<JobStatus>,
    next_after_last_attempt: Vec<JobStatus>,
    snoozed: Vec<bool>,
    results: Vec<Option<serde_json::Value>>,
    errors: Vec<Option<&'a str>>,
    error_kinds: Vec<Option<ErrorKind>>,
    durations_ms: Vec<i32>,
    retry_delays_ms: Vec<i64>,
    retry_via: Vec<RetryVia>,
    retry_via_scheduler: Vec<bool>,
    attempts: Vec<i32>,
    tokens: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn of(requests: &'a [FinishRequest]) -> Self {
        let n = requests.len();
        let mut columns = Self {
            ids: Vec::with_capacity(n),
            next_with_attempts_left: Vec::with_capacity(n),
            next_after_last_attempt: Vec::with_capacity(n),
            snoozed: Vec::with_capacity(n),
            results: Vec::with_capacity(n),
            errors: Vec::with_capacity(n),
            error_kinds: Vec::with_capacity(n),
            durations_ms: Vec::with_capacity(n),
            retry_delays_ms: Vec::with_capacity(n),
            retry_via: Vec::with_capacity(n),
            retry_via_scheduler: Vec::with_capacity(n),
            attempts: Vec::with_capacity(n),
            tokens: Vec::with_capacity(n),
        };
        for request in requests {
            let next = request.outcome.next_status();
            let (result, error, kind) = match &request.outcome {
                AttemptOutcome::Succeeded(value) => (Some(value.clone()), None, None),
                AttemptOutcome::Failed { kind, message } => {
                    (None, Some(message.as_str()), Some(*kind))
                }
                AttemptOutcome::Snoozed => (None, None, None),
            };
            let via = request.retry.via();
            columns.ids.push(request.id);
            columns.next_with_attempts_left.push(next.attempts_left);
            columns.next_after_last_attempt.push(next.last_attempt);
            columns
                .snoozed
                .push(matches!(request.outcome, AttemptOutcome::Snoozed));
            columns.results.push(result);
            columns.errors.push(error);
            columns.error_kinds.push(kind);
            columns
                .durations_ms
                .push(i32::try_from(request.duration.as_millis()).unwrap_or(i32::MAX));
            columns
                .retry_delays_ms
                .push(i64::try_from(request.retry.delay().as_millis()).unwrap_or(i64::MAX));
            columns.retry_via_scheduler.push(via == RetryVia::Scheduler);
            columns.retry_via.push(via);
            columns
                .attempts
                .push(i32::try_from(request.attempt).unwrap_or(i32::MAX));
            columns.tokens.push(request.token);
        }
        columns
    }
}

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
        let columns = Columns::of(requests);
        count_round_trips(1);
        let rows: Vec<(JobId, JobStatus)> = self
            .one(Commit::Durable, async |statements| {
                sqlx::query_as(FINISH)
                    .bind(&columns.ids)
                    .bind(&columns.next_with_attempts_left)
                    .bind(&columns.next_after_last_attempt)
                    .bind(&columns.snoozed)
                    .bind(&columns.results)
                    .bind(&columns.errors)
                    .bind(&columns.error_kinds)
                    .bind(&columns.durations_ms)
                    .bind(&columns.retry_delays_ms)
                    .bind(&columns.retry_via)
                    .bind(&columns.retry_via_scheduler)
                    .bind(&columns.attempts)
                    .bind(&columns.tokens)
                    .bind(worker_id)
                    .fetch_all(statements)
                    .await
            })
            .await
            .context("recording attempt outcomes")?;
        Ok(columns
            .ids
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
    fn an_outcome_decides_the_next_status_by_whether_attempts_are_left() {
        let failed = |kind| AttemptOutcome::Failed {
            kind,
            message: "boom".into(),
        };
        let next = |outcome: AttemptOutcome| {
            let next = outcome.next_status();
            (next.attempts_left, next.last_attempt)
        };
        use JobStatus::{Dead, Retrying, Succeeded};
        assert_eq!(
            next(AttemptOutcome::Succeeded(serde_json::json!(1))),
            (Succeeded, Succeeded)
        );
        assert_eq!(next(AttemptOutcome::Snoozed), (Retrying, Retrying));
        for retryable in [ErrorKind::Error, ErrorKind::Timeout, ErrorKind::Panic] {
            assert_eq!(next(failed(retryable)), (Retrying, Dead), "{retryable:?}");
        }
        for fatal in [ErrorKind::Fatal, ErrorKind::Poison, ErrorKind::Crashed] {
            assert_eq!(next(failed(fatal)), (Dead, Dead), "{fatal:?}");
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
