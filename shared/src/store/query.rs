//! Reading jobs back: one job, or a filtered page of a namespace's jobs (keyset pagination).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Commit, SqlContext, Store, StoreError, count_round_trips, search};
use crate::{IdempotencyKey, JobId, JobStatus, Kind, Namespace, QueueName};

/// A job as a person querying the API sees it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct JobRecord {
    pub id: JobId,
    pub namespace: Namespace,
    pub kind: Kind,
    pub queue: QueueName,
    pub status: JobStatus,
    pub args: serde_json::Value,
    pub priority: i16,
    pub attempts: i32,
    pub max_attempts: i32,
    pub timeout_ms: i32,
    pub idempotency_key: Option<IdempotencyKey>,
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
#[derive(Clone, Debug)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<Kind>,
    pub queue: Option<QueueName>,
    /// Case-insensitive substring of the last error.
    pub error: Option<String>,
    /// Only jobs older than this one (the previous page's last id).
    pub before: Option<JobId>,
    pub limit: u32,
    /// Most bytes of args and results one page carries: the page stops before the job that
    /// would pass it (it always holds one).
    pub max_bytes: i64,
}

/// One page of a listing, newest first.
#[derive(Clone, Debug)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    /// The page stopped at its row or byte bound: older jobs may match too.
    pub more: bool,
}

/// A listed row and how many rows matched before the byte bound cut the page.
#[derive(sqlx::FromRow)]
struct ListedRow {
    #[sqlx(flatten)]
    job: JobRecord,
    candidates: i64,
}

impl Store {
    /// The job `id` if it belongs to `namespace`. Another namespace's job is `None`, exactly
    /// like a job that does not exist, so existence never leaks across namespaces.
    pub async fn get_job(
        &self,
        namespace: &Namespace,
        id: JobId,
    ) -> Result<Option<JobRecord>, StoreError> {
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
        .with_sql_context(|| format!("reading job {id}"))
    }

    /// Just the status of job `id` in `namespace` (`None`: no such job there). Used after a
    /// guarded UPDATE matched nothing, to tell "wrong state" from "not found".
    pub async fn job_status(
        &self,
        namespace: &Namespace,
        id: JobId,
    ) -> Result<Option<JobStatus>, StoreError> {
        count_round_trips(1);
        self.one(Commit::Durable, async |statements| {
            sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1 AND namespace = $2")
                .bind(id.as_uuid())
                .bind(namespace.as_str())
                .fetch_optional(statements)
                .await
        })
        .await
        .with_sql_context(|| format!("reading the status of job {id}"))
    }

    /// A page of `namespace`'s jobs, newest first: up to `filter.limit` of them, and only
    /// while their args and results add up to less than `filter.max_bytes` (sized from
    /// `args_bytes` and the result's text, before any row is read whole). A search (see
    /// [`search`]).
    pub async fn list_jobs(
        &self,
        namespace: &Namespace,
        filter: &JobFilter,
    ) -> Result<JobPage, StoreError> {
        let error = filter.error.as_deref();
        let error_clause = search::error_clause(error, 8);
        count_round_trips(1);
        let rows: Vec<ListedRow> = self
            .search("listing jobs", async |statements| {
                let query = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "WITH page AS (
                         SELECT id, args_bytes + coalesce(octet_length(result::text), 0) AS bytes
                         FROM jobs
                         WHERE namespace = $1
                           AND ($2::job_status IS NULL OR status = $2)
                           AND ($3::text IS NULL OR kind = $3)
                           AND ($4::text IS NULL OR queue = $4)
                           AND ($5::uuid IS NULL OR id < $5)
                           {error_clause}
                         ORDER BY id DESC
                         LIMIT $6),
                     sized AS (
                         SELECT id, count(*) OVER () AS candidates,
                                sum(bytes) OVER (ORDER BY id DESC) - bytes AS bytes_before
                         FROM page)
                     SELECT {COLUMNS}, candidates FROM jobs JOIN sized USING (id)
                     WHERE bytes_before < $7
                     ORDER BY id DESC"
                )))
                .bind(namespace.as_str())
                .bind(filter.status)
                .bind(filter.kind.as_ref().map(Kind::as_str))
                .bind(filter.queue.as_ref().map(QueueName::as_str))
                .bind(filter.before.map(|id| id.as_uuid()))
                .bind(i64::from(filter.limit))
                .bind(filter.max_bytes);
                match error {
                    Some(error) => query.bind(search::error_pattern(error)),
                    None => query,
                }
                .fetch_all(statements)
                .await
            })
            .await?;
        let candidates = rows.first().map_or(0, |row| row.candidates);
        let jobs: Vec<JobRecord> = rows.into_iter().map(|row| row.job).collect();
        Ok(JobPage {
            more: candidates == i64::from(filter.limit) || (jobs.len() as i64) < candidates,
            jobs,
        })
    }
}
