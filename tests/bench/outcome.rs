//! Reading a scenario's result from its job rows: waiting until every job of the namespace
//! created since an instant has succeeded (or some of them, for the scale mode's kill),
//! then the end-to-end window and submit→start percentiles of those jobs (the warm-up's
//! jobs, created before, are left out), and an audit of their final states.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};

use engine_shared::Namespace;

/// How often the completion count is polled.
const POLL: Duration = Duration::from_millis(50);

/// The rows of one scenario, summarised.
pub struct Outcome {
    pub jobs: i64,
    /// Last `finished_at` (the final state's commit).
    pub last_finished: DateTime<Utc>,
    /// `started_at - created_at`, in milliseconds.
    pub start_p50_ms: f64,
    pub start_p99_ms: f64,
    pub start_max_ms: f64,
    /// Jobs that needed more than one attempt (redeliveries, retries).
    pub retried: i64,
}

/// Waits until `expected` jobs of `namespace` created at or after `since` (all of them when
/// `None`) have succeeded; fails at once if any ended otherwise, and after `deadline` with
/// the progress so far. Call it once every job has been accepted.
pub async fn wait_all_succeeded(
    pool: &sqlx::PgPool,
    namespace: &Namespace,
    since: Option<DateTime<Utc>>,
    expected: usize,
    deadline: Duration,
) -> anyhow::Result<()> {
    let expected = i64::try_from(expected).context("too many jobs")?;
    let started = Instant::now();
    loop {
        // Only the rows not yet succeeded are counted, through the (namespace, status) index,
        // so polling costs PostgreSQL little while it is being measured.
        let (failed, unfinished): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status IN ('dead', 'cancelled')),
                    count(*) FILTER (WHERE status NOT IN ('dead', 'cancelled'))
               FROM jobs
              WHERE namespace = $1
                AND status IN ('scheduled', 'queued', 'running', 'retrying', 'dead', 'cancelled')
                AND ($2::timestamptz IS NULL OR created_at >= $2)",
        )
        .bind(namespace.as_str())
        .bind(since)
        .fetch_one(pool)
        .await
        .context("counting unfinished jobs")?;
        anyhow::ensure!(
            failed == 0,
            "{failed} jobs of {namespace} ended dead or cancelled"
        );
        if unfinished == 0 {
            let succeeded: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs
                  WHERE namespace = $1 AND status = 'succeeded'
                    AND ($2::timestamptz IS NULL OR created_at >= $2)",
            )
            .bind(namespace.as_str())
            .bind(since)
            .fetch_one(pool)
            .await
            .context("counting succeeded jobs")?;
            anyhow::ensure!(
                succeeded == expected,
                "{namespace} has {succeeded} succeeded jobs and none pending, but {expected} were accepted"
            );
            return Ok(());
        }
        if started.elapsed() > deadline {
            anyhow::bail!(
                "after {deadline:?}, {unfinished} of {expected} jobs of {namespace} had not finished"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until at least `count` jobs of `namespace` created at or after `since` have
/// succeeded, and returns how many had; fails after `deadline` with the progress so far.
pub async fn wait_succeeded_at_least(
    pool: &sqlx::PgPool,
    namespace: &Namespace,
    since: DateTime<Utc>,
    count: usize,
    deadline: Duration,
) -> anyhow::Result<i64> {
    let count = i64::try_from(count).context("too many jobs")?;
    let started = Instant::now();
    loop {
        let succeeded: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs
              WHERE namespace = $1 AND status = 'succeeded' AND created_at >= $2",
        )
        .bind(namespace.as_str())
        .bind(since)
        .fetch_one(pool)
        .await
        .context("counting succeeded jobs")?;
        if succeeded >= count {
            return Ok(succeeded);
        }
        if started.elapsed() > deadline {
            anyhow::bail!(
                "after {deadline:?}, {succeeded} jobs of {namespace} had succeeded, not {count}"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The final state of a set of jobs, read back from PostgreSQL.
pub struct Audit {
    /// Rows created at or after the instant.
    pub jobs: i64,
    /// Rows `succeeded` with `finished_at` set.
    pub succeeded: i64,
    /// (`attempts`, rows), by attempts.
    pub attempts: Vec<(i32, i64)>,
    /// `job_errors` rows of these jobs: failed attempts and crash verdicts.
    pub errors: i64,
    /// The jobs' ids, as the workers log them.
    pub ids: HashSet<String>,
}

impl Audit {
    /// Rows with more than one attempt.
    pub fn rerun(&self) -> i64 {
        self.attempts
            .iter()
            .filter(|(attempts, _)| *attempts > 1)
            .map(|(_, rows)| rows)
            .sum()
    }
}

/// Audits the jobs of `namespace` created at or after `since`.
pub async fn audit(
    pool: &sqlx::PgPool,
    namespace: &Namespace,
    since: DateTime<Utc>,
) -> anyhow::Result<Audit> {
    let rows: Vec<(String, bool, i32)> = sqlx::query_as(
        "SELECT id::text, status = 'succeeded' AND finished_at IS NOT NULL, attempts
           FROM jobs WHERE namespace = $1 AND created_at >= $2",
    )
    .bind(namespace.as_str())
    .bind(since)
    .fetch_all(pool)
    .await
    .context("reading the jobs' final states")?;
    let errors: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_errors e JOIN jobs j ON j.id = e.job_id
          WHERE j.namespace = $1 AND j.created_at >= $2",
    )
    .bind(namespace.as_str())
    .bind(since)
    .fetch_one(pool)
    .await
    .context("counting the jobs' errors")?;
    let mut attempts = BTreeMap::<i32, i64>::new();
    for (_, _, tries) in &rows {
        *attempts.entry(*tries).or_default() += 1;
    }
    Ok(Audit {
        jobs: i64::try_from(rows.len()).context("too many jobs")?,
        succeeded: rows.iter().filter(|(_, succeeded, _)| *succeeded).count() as i64,
        attempts: attempts.into_iter().collect(),
        errors,
        ids: rows.into_iter().map(|(id, _, _)| id).collect(),
    })
}

/// The summary query's row.
#[derive(sqlx::FromRow)]
struct SummaryRow {
    jobs: i64,
    last_finished: Option<DateTime<Utc>>,
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
    retried: i64,
}

/// Summarises the rows of `namespace` created at or after `since` (call after
/// [`wait_all_succeeded`]).
pub async fn summarise(
    pool: &sqlx::PgPool,
    namespace: &Namespace,
    since: DateTime<Utc>,
) -> anyhow::Result<Outcome> {
    let row: SummaryRow = sqlx::query_as(
        "WITH measured AS (
             SELECT finished_at, attempts, extract(epoch FROM started_at - created_at)::float8 AS wait
               FROM jobs WHERE namespace = $1 AND created_at >= $2
         )
         SELECT count(*) AS jobs,
                max(finished_at) AS last_finished,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY wait) AS p50,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY wait) AS p99,
                max(wait) AS max,
                count(*) FILTER (WHERE attempts > 1) AS retried
           FROM measured",
    )
    .bind(namespace.as_str())
    .bind(since)
    .fetch_one(pool)
    .await
    .context("summarising the scenario's jobs")?;
    Ok(Outcome {
        jobs: row.jobs,
        last_finished: row
            .last_finished
            .with_context(|| format!("no job of {namespace} has finished"))?,
        start_p50_ms: row.p50.unwrap_or(f64::NAN) * 1000.0,
        start_p99_ms: row.p99.unwrap_or(f64::NAN) * 1000.0,
        start_max_ms: row.max.unwrap_or(f64::NAN) * 1000.0,
        retried: row.retried,
    })
}

/// Deletes the rows of `namespace` (the benchmark leaves nothing behind).
pub async fn delete_rows(pool: &sqlx::PgPool, namespace: &Namespace) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM jobs WHERE namespace = $1")
        .bind(namespace.as_str())
        .execute(pool)
        .await
        .context("deleting the scenario's jobs")?;
    sqlx::query("DELETE FROM api_keys WHERE namespace = $1")
        .bind(namespace.as_str())
        .execute(pool)
        .await
        .context("deleting the scenario's API key")?;
    Ok(())
}
