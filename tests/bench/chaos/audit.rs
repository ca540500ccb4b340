//! Reading the chaos run's outcome from PostgreSQL: waiting (with a deadline, polling)
//! until every accepted job is final, then each accepted job's state — final by status,
//! lost (accepted and not final, or missing), stuck (see [`super::stuck`]), rows the
//! client was never answered for, attempts, errors and the last `finished_at`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};

use engine_shared::Namespace;
use engine_shared::broker::topology::DEAD_QUEUE;

use super::stuck;
use crate::management::Management;

/// How often the settle wait counts the unfinished jobs.
const POLL: Duration = Duration::from_millis(250);

/// How often a long settle wait says how far it is, so a slow recovery is not silent.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// The statuses a job ends in.
const FINAL: [&str; 3] = ["succeeded", "dead", "cancelled"];

/// How the wait for the jobs to be final ended.
pub struct Settled {
    /// Whether every accepted job was final before the deadline.
    pub all_final: bool,
    pub waited: Duration,
    /// The last failed poll, if polling PostgreSQL failed at the end.
    pub last_error: Option<String>,
}

/// Waits until the namespace holds at least `accepted` rows and none of them is unfinished,
/// or `deadline` passes. A failed poll (PostgreSQL restarting) is retried.
pub async fn wait_final(
    pool: &sqlx::PgPool,
    namespace: &Namespace,
    accepted: usize,
    deadline: Duration,
) -> Settled {
    let started = Instant::now();
    let mut next_progress = PROGRESS_EVERY;
    let accepted = i64::try_from(accepted).unwrap_or(i64::MAX);
    loop {
        let counts: Result<(i64, i64), sqlx::Error> = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status NOT IN ('succeeded', 'dead', 'cancelled'))
               FROM jobs WHERE namespace = $1",
        )
        .bind(namespace.as_str())
        .fetch_one(pool)
        .await;
        let last_error = match counts {
            Ok((rows, unfinished)) if rows >= accepted && unfinished == 0 => {
                return Settled {
                    all_final: true,
                    waited: started.elapsed(),
                    last_error: None,
                };
            }
            Ok((rows, unfinished)) => {
                if started.elapsed() >= next_progress {
                    println!(
                        "  settling: {unfinished} of {rows} rows not final after {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                    next_progress += PROGRESS_EVERY;
                }
                None
            }
            Err(error) => Some(format!("counting unfinished jobs: {error}")),
        };
        if started.elapsed() > deadline {
            return Settled {
                all_final: false,
                waited: started.elapsed(),
                last_error,
            };
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The rows of `namespace`, or only those of `ids`.
pub async fn read_rows(
    pool: &sqlx::PgPool,
    namespace: &Namespace,
    ids: Option<&[String]>,
) -> anyhow::Result<Vec<JobRow>> {
    sqlx::query_as(
        "SELECT id::text AS id, kind, status::text AS status, attempts, starts, lease_until,
                run_at, published_at, finished_at, last_error,
                coalesce(lease_until < now(), false) AS lease_expired, run_at <= now() AS due
           FROM jobs
          WHERE namespace = $1 AND ($2::text[] IS NULL OR id::text = ANY($2))",
    )
    .bind(namespace.as_str())
    .bind(ids)
    .fetch_all(pool)
    .await
    .context("reading the run's job rows")
}

/// One row, as the audit reads it.
#[derive(sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    pub starts: i64,
    pub lease_until: Option<DateTime<Utc>>,
    pub run_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// `lease_until < now()` and `run_at <= now()`, by PostgreSQL's clock.
    pub lease_expired: bool,
    pub due: bool,
}

/// An accepted job that is not final.
pub struct Lost {
    pub id: String,
    /// `None`: no row at all.
    pub row: Option<JobRow>,
    pub stuck: bool,
}

/// The run's jobs at the end.
pub struct FinalState {
    /// Accepted jobs by status (`missing` for an accepted id with no row).
    pub by_status: BTreeMap<String, usize>,
    pub lost: Vec<Lost>,
    pub stuck: usize,
    /// The namespace's work and delay queues (not `jobs.dead`) that held messages at the
    /// audit, with their counts.
    pub queued: Vec<(String, u64)>,
    /// Rows of the namespace no answer named: a job stored twice despite its key.
    pub unaccepted_rows: usize,
    /// Final accepted jobs by kind and status, e.g. ("webhook.deliver", "succeeded").
    pub by_kind: BTreeMap<(String, String), usize>,
    /// Accepted jobs by `attempts`.
    pub attempts: BTreeMap<i32, usize>,
    /// `job_errors` rows of the namespace by error kind (error, crashed, ...).
    pub errors: BTreeMap<String, i64>,
    /// The dead jobs (their ids and last errors are printed).
    pub dead: Vec<JobRow>,
    pub last_finished: Option<DateTime<Utc>>,
    /// Starts (attempts begun) of the accepted jobs, summed: what could have left a log.
    pub starts: i64,
    /// Ids of the webhook jobs that succeeded (checked against the receiver).
    pub succeeded_webhooks: Vec<String>,
}

/// Reads the final state of the jobs `accepted` of `namespace`.
pub async fn audit(
    pool: &sqlx::PgPool,
    management: &Management,
    namespace: &Namespace,
    accepted: &[String],
) -> anyhow::Result<FinalState> {
    let rows = read_rows(pool, namespace, None).await?;
    let errors: Vec<(String, i64)> = sqlx::query_as(
        "SELECT e.kind, count(*) FROM job_errors e JOIN jobs j ON j.id = e.job_id
          WHERE j.namespace = $1 GROUP BY e.kind",
    )
    .bind(namespace.as_str())
    .fetch_all(pool)
    .await
    .context("counting the run's job_errors")?;
    let queued = queued(management, namespace).await?;
    let mut state = tally(rows, accepted, queued);
    state.errors = errors.into_iter().collect();
    stuck::confirm(pool, management, namespace, &mut state).await?;
    Ok(state)
}

/// The namespace's work and delay queues holding messages: what may still deliver a job.
pub async fn queued(
    management: &Management,
    namespace: &Namespace,
) -> anyhow::Result<Vec<(String, u64)>> {
    let queues = management.queue_depths(namespace.as_str()).await?;
    Ok(queues
        .into_iter()
        .filter(|queue| queue.name.starts_with("jobs.") && queue.name != DEAD_QUEUE)
        .filter(|queue| queue.messages > 0)
        .map(|queue| (queue.name, queue.messages))
        .collect())
}

fn tally(rows: Vec<JobRow>, accepted: &[String], queued: Vec<(String, u64)>) -> FinalState {
    let queued_messages: u64 = queued.iter().map(|(_, messages)| messages).sum();
    let mut rows: HashMap<String, JobRow> =
        rows.into_iter().map(|row| (row.id.clone(), row)).collect();
    let mut state = FinalState {
        by_status: BTreeMap::new(),
        lost: Vec::new(),
        stuck: 0,
        queued,
        unaccepted_rows: 0,
        by_kind: BTreeMap::new(),
        attempts: BTreeMap::new(),
        errors: BTreeMap::new(),
        dead: Vec::new(),
        last_finished: None,
        starts: 0,
        succeeded_webhooks: Vec::new(),
    };
    for id in accepted {
        let Some(row) = rows.remove(id) else {
            *state.by_status.entry("missing".to_owned()).or_default() += 1;
            state.lost.push(Lost {
                id: id.clone(),
                row: None,
                stuck: false,
            });
            continue;
        };
        *state.by_status.entry(row.status.clone()).or_default() += 1;
        *state.attempts.entry(row.attempts).or_default() += 1;
        *state
            .by_kind
            .entry((row.kind.clone(), row.status.clone()))
            .or_default() += 1;
        state.last_finished = state.last_finished.max(row.finished_at);
        state.starts += row.starts;
        if !FINAL.contains(&row.status.as_str()) {
            let stuck = stuck::looks_stuck(&row, queued_messages);
            state.stuck += usize::from(stuck);
            state.lost.push(Lost {
                id: id.clone(),
                row: Some(row),
                stuck,
            });
        } else if row.status == "dead" {
            state.dead.push(row);
        } else if row.status == "succeeded" && row.kind == "webhook.deliver" {
            state.succeeded_webhooks.push(row.id);
        }
    }
    state.unaccepted_rows = rows.len();
    state
}
