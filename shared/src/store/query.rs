//! Reading jobs back: one job, or a filtered page of a namespace's jobs (keyset pagination).

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Commit, Store, count_round_trips, search};
use crate::{JobId, JobStatus, Kind, Namespace, QueueName};

/// A job as a person querying the API sees it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct JobRecord {
    pub id: Uuid,
    pub namespace: String,
    pub kind: String,
    pub queue: String,
    pub status: JobStatus,
    pub args: serde_json::Value,
    pub priority: i16,
    pub attempts: i32,
    pub max_attempts: i32,
    pub timeout_ms: i32,
    pub idempotency_key: Option<String>,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub result: Option<serde_json::Value>,
    pub last_error: Option<String>,
    /// Runs that asked to be retried later without counting an attempt.
    pub snoozes: i32,
    /// Times the job was sent back to work after it died or was cancelled.
    pub redrives: i32,
    /// The W3C `traceparent` of the request that submitted it.
    pub traceparent: Option<String>,
    /// Starts so far, never reset: the fencing token of the latest attempt.
    pub starts: i64,
    /// While `running`: until when the attempt's worker holds it (renewed as it runs).
    pub lease_until: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, namespace, kind, queue, status, args, priority, attempts, max_attempts, \
     timeout_ms, idempotency_key, run_at, created_at, published_at, started_at, finished_at, \
     cancel_requested_at, result, last_error, snoozes, redrives, traceparent, starts, lease_until";

/// Which jobs a listing returns. Every field narrows the result.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<Kind>,
    pub queue: Option<QueueName>,
    /// Case-insensitive substring of the last error.
    pub error: Option<String>,
    /// Only jobs older than this one (the previous page's last id).
    pub before: Option<JobId>,
    pub limit: u32,
}

impl Store {
    /// The job `id` if it belongs to `namespace`. Another namespace's job is `None`, exactly
    /// like a job that does not exist, so existence never leaks across namespaces.
    pub async fn get_job(
        &self,
        namespace: &Namespace,
        id: JobId,
    ) -> anyhow::Result<Option<JobRecord>> {
        count_round_trips(1);
        self.one(Commit::Durable, async |statements| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM jobs WHERE id = $1 AND namespace = $2"
            )))
            .bind(id.as_uuid())
            .bind(namespace.as_str())
            .fetch_optional(statements)
            .await
        })
        .await
        .with_context(|| format!("reading job {id}"))
    }

    /// Just the status of job `id` in `namespace` (`None`: no such job there). Used after a
    /// guarded UPDATE matched nothing, to tell "wrong state" from "not found".
    pub async fn job_status(
        &self,
        namespace: &Namespace,
        id: JobId,
    ) -> anyhow::Result<Option<JobStatus>> {
        count_round_trips(1);
        self.one(Commit::Durable, async |statements| {
            sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1 AND namespace = $2")
                .bind(id.as_uuid())
                .bind(namespace.as_str())
                .fetch_optional(statements)
                .await
        })
        .await
        .with_context(|| format!("reading the status of job {id}"))
    }

    /// A page of `namespace`'s jobs, newest first: a search (see [`search`]).
    pub async fn list_jobs(
        &self,
        namespace: &Namespace,
        filter: &JobFilter,
    ) -> anyhow::Result<Vec<JobRecord>> {
        let error = filter.error.as_deref();
        let error_clause = search::error_clause(error, 7);
        count_round_trips(1);
        self.search(async |statements| {
            let query = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM jobs
                 WHERE namespace = $1
                   AND ($2::job_status IS NULL OR status = $2)
                   AND ($3::text IS NULL OR kind = $3)
                   AND ($4::text IS NULL OR queue = $4)
                   AND ($5::uuid IS NULL OR id < $5)
                   {error_clause}
                 ORDER BY id DESC
                 LIMIT $6"
            )))
            .bind(namespace.as_str())
            .bind(filter.status)
            .bind(filter.kind.as_ref().map(Kind::as_str))
            .bind(filter.queue.as_ref().map(QueueName::as_str))
            .bind(filter.before.map(|id| id.as_uuid()))
            .bind(i64::from(filter.limit));
            match error {
                Some(error) => query.bind(search::error_pattern(error)),
                None => query,
            }
            .fetch_all(statements)
            .await
        })
        .await
        .context("listing jobs")
    }
}
