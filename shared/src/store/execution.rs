//! The worker's transitions: `queued|retrying → running` and `running → final or retrying`,
//! each a guarded UPDATE for a whole batch of jobs.

use anyhow::Context;
use uuid::Uuid;

use super::{Store, count_round_trips};
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
}

/// How an attempt ended, as the worker reports it.
#[derive(Clone, Debug)]
pub enum AttemptOutcome {
    Succeeded(serde_json::Value),
    /// May be tried again if attempts remain and nobody asked to cancel.
    Failed(String),
    /// Must not be tried again (fatal error, poison message).
    Fatal(String),
    /// The handler stopped because cancellation was requested.
    Cancelled,
}

impl AttemptOutcome {
    fn code(&self) -> &'static str {
        match self {
            Self::Succeeded(_) => "succeeded",
            Self::Failed(_) => "failed",
            Self::Fatal(_) => "fatal",
            Self::Cancelled => "cancelled",
        }
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
    /// Moves each job to `running` if it may run: from `queued` or `retrying`, or from
    /// `running` when the message was redelivered. Returns, in input order, `None` for a job
    /// that must be skipped (finished, cancelled, unknown, or running elsewhere).
    ///
    /// Relaxed commit: if the commit is lost in a crash, the message is redelivered and the
    /// job runs again — at-least-once either way.
    pub async fn start_jobs(
        &self,
        requests: &[StartRequest],
    ) -> anyhow::Result<Vec<Option<StartedJob>>> {
        let ids: Vec<Uuid> = requests.iter().map(|r| r.id.as_uuid()).collect();
        let namespaces: Vec<&str> = requests.iter().map(|r| r.namespace.as_str()).collect();
        let redelivered: Vec<bool> = requests.iter().map(|r| r.redelivered).collect();
        count_round_trips(1);
        let rows: Vec<(Uuid, i32, i32, i32)> = sqlx::query_as(
            "WITH input AS (
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::bool[])
                        AS i(id, namespace, redelivered)),
             target AS (
                 SELECT j.id FROM jobs j JOIN input i ON i.id = j.id AND i.namespace = j.namespace
                 WHERE j.status IN ('queued', 'retrying')
                    OR (j.status = 'running' AND i.redelivered)
                 ORDER BY j.id
                 FOR UPDATE OF j)
             UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = now()
             FROM target WHERE jobs.id = target.id
             RETURNING jobs.id, jobs.attempts, jobs.max_attempts, jobs.timeout_ms",
        )
        .bind(&ids)
        .bind(&namespaces)
        .bind(&redelivered)
        .fetch_all(&self.relaxed)
        .await
        .context("moving jobs to running")?;
        Ok(ids
            .iter()
            .map(|id| {
                rows.iter().find(|row| row.0 == *id).map(|row| StartedJob {
                    attempt: u32::try_from(row.1).unwrap_or(0),
                    max_attempts: u32::try_from(row.2).unwrap_or(1),
                    timeout_ms: u32::try_from(row.3).unwrap_or(1),
                })
            })
            .collect())
    }

    /// Records how each attempt ended and decides the job's next state in the same
    /// statement: `succeeded`; `cancelled` (asked to stop); `retrying` (failed, attempts
    /// left); else `dead`. Durable commit: the worker acks only after this returns.
    pub async fn finish_jobs(
        &self,
        outcomes: &[(JobId, AttemptOutcome)],
    ) -> anyhow::Result<Vec<FinishedJob>> {
        let ids: Vec<Uuid> = outcomes.iter().map(|(id, _)| id.as_uuid()).collect();
        let codes: Vec<&str> = outcomes.iter().map(|(_, o)| o.code()).collect();
        let results: Vec<Option<serde_json::Value>> = outcomes
            .iter()
            .map(|(_, o)| match o {
                AttemptOutcome::Succeeded(value) => Some(value.clone()),
                _ => None,
            })
            .collect();
        let errors: Vec<Option<&str>> = outcomes
            .iter()
            .map(|(_, o)| match o {
                AttemptOutcome::Failed(e) | AttemptOutcome::Fatal(e) => Some(e.as_str()),
                _ => None,
            })
            .collect();
        count_round_trips(1);
        let rows: Vec<(Uuid, JobStatus)> = sqlx::query_as(
            "WITH input AS (
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[])
                        AS i(id, outcome, result, error)),
             decided AS (
                 SELECT j.id, i.result, i.error,
                        CASE
                            WHEN i.outcome = 'succeeded' THEN 'succeeded'
                            WHEN i.outcome = 'cancelled' OR j.cancel_requested_at IS NOT NULL
                                THEN 'cancelled'
                            WHEN i.outcome = 'failed' AND j.attempts < j.max_attempts
                                THEN 'retrying'
                            ELSE 'dead'
                        END::job_status AS next
                 FROM jobs j JOIN input i ON i.id = j.id
                 WHERE j.status = 'running'
                 ORDER BY j.id
                 FOR UPDATE OF j)
             UPDATE jobs
             SET status = decided.next,
                 finished_at = CASE WHEN decided.next = 'retrying' THEN NULL ELSE now() END,
                 result = decided.result,
                 last_error = COALESCE(decided.error, jobs.last_error)
             FROM decided WHERE jobs.id = decided.id
             RETURNING jobs.id, jobs.status",
        )
        .bind(&ids)
        .bind(&codes)
        .bind(&results)
        .bind(&errors)
        .fetch_all(&self.durable)
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
