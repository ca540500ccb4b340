//! Cancelling a job: waiting jobs stop at once; a running job's handler is asked to stop.

use super::{Commit, SqlContext, Store, StoreError, count_round_trips};
use crate::{JobId, JobStatus, Kind, Namespace, QueueName};

/// The result of a cancel request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was waiting (scheduled, queued, retrying) and is now `cancelled`; it never runs
    /// again. Its kind and queue label the cancellation in the metrics.
    Cancelled { kind: Kind, queue: QueueName },
    /// It is running: the request is recorded and its worker must be told.
    Requested,
    /// It had already finished with this status; nothing changed.
    AlreadyFinal(JobStatus),
    /// No such job in this namespace.
    NotFound,
}

impl Store {
    pub async fn cancel_job(
        &self,
        namespace: &Namespace,
        id: JobId,
    ) -> Result<CancelOutcome, StoreError> {
        count_round_trips(1);
        // In SET, `status` is the row's old value: a running job keeps running until its
        // handler stops; every other cancellable job is cancelled here.
        let updated: Option<(JobStatus, Kind, QueueName)> = self
            .one(Commit::Durable, async |statements| {
                sqlx::query_as(
                    "UPDATE jobs
                     SET status = CASE WHEN status = 'running' THEN status ELSE 'cancelled' END,
                         finished_at = CASE WHEN status = 'running' THEN finished_at ELSE now() END,
                         cancel_requested_at = now()
                     WHERE id = $1 AND namespace = $2
                       AND status IN ('scheduled', 'queued', 'retrying', 'running')
                     RETURNING status, kind, queue",
                )
                .bind(id.as_uuid())
                .bind(namespace.as_str())
                .fetch_optional(statements)
                .await
            })
            .await
            .with_sql_context(|| format!("cancelling job {id}"))?;
        match updated {
            Some((JobStatus::Running, _, _)) => Ok(CancelOutcome::Requested),
            Some((_, kind, queue)) => Ok(CancelOutcome::Cancelled { kind, queue }),
            None => {
                let current = self.job_status(namespace, id).await?;
                Ok(current.map_or(CancelOutcome::NotFound, CancelOutcome::AlreadyFinal))
            }
        }
    }
}
