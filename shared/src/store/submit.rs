//! Accepting jobs: one INSERT for a whole batch; the row is also the job's outbox entry.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::refusal::insert_error;
use super::{Commit, Store, StoreError, count_round_trips};
use crate::retry::Backoff;
use crate::trace::TraceParent;
use crate::{IdempotencyKey, JobId, JobStatus, Kind, Namespace, QueueName};

/// A validated job ready to be written.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub id: JobId,
    pub namespace: Namespace,
    pub kind: Kind,
    pub queue: QueueName,
    pub args: serde_json::Value,
    pub priority: u8,
    pub max_attempts: u32,
    pub timeout_ms: u32,
    pub idempotency_key: Option<IdempotencyKey>,
    /// `Some` for a job that may have to wait (`run_at` / `delay`): it starts `scheduled`
    /// if this is still ahead by PostgreSQL's clock when the row is written, which alone
    /// decides (the API's clock and a second reading of it could disagree, and a row
    /// reported `queued` is published at once).
    pub run_at: Option<DateTime<Utc>>,
    /// `None`: the fleet's retry settings apply when it fails.
    pub backoff: Option<Backoff>,
    /// The submitting request's trace.
    pub traceparent: Option<TraceParent>,
}

/// What happened to one submitted job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// A new row was committed with this status.
    Created { id: JobId, status: JobStatus },
    /// The idempotency key was already used in the namespace: this is that job.
    Existing { id: JobId, status: JobStatus },
}

impl Submitted {
    pub fn id(&self) -> JobId {
        match self {
            Self::Created { id, .. } | Self::Existing { id, .. } => *id,
        }
    }
}

/// The insert: every job of a batch in one statement, `scheduled` when its `run_at` is
/// still ahead by PostgreSQL's clock, else `queued`. A job whose idempotency key is taken
/// in its namespace is left out (`DO NOTHING`) and missing from the answer.
const INSERT: &str = "
    INSERT INTO jobs (id, namespace, kind, queue, args, status, priority, max_attempts,
                      timeout_ms, idempotency_key, run_at, backoff_min_ms, backoff_max_ms,
                      traceparent)
    SELECT u.id, u.namespace, u.kind, u.queue, u.args,
           CASE WHEN u.run_at > now() THEN 'scheduled' ELSE 'queued' END::job_status,
           u.priority,
           u.max_attempts, u.timeout_ms, u.idempotency_key, COALESCE(u.run_at, now()),
           u.backoff_min_ms, u.backoff_max_ms, u.traceparent
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                $6::int2[], $7::int4[], $8::int4[], $9::text[], $10::timestamptz[],
                $11::int4[], $12::int4[], $13::text[])
         AS u(id, namespace, kind, queue, args, priority, max_attempts,
              timeout_ms, idempotency_key, run_at, backoff_min_ms, backoff_max_ms,
              traceparent)
    ON CONFLICT (namespace, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING id, status";

/// The jobs that own some idempotency keys: `(namespace, key)` pairs.
const KEY_OWNERS: &str = "
    SELECT j.namespace, j.idempotency_key, j.id, j.status
    FROM jobs j
    JOIN unnest($1::text[], $2::text[]) AS k(namespace, idempotency_key)
      ON j.namespace = k.namespace AND j.idempotency_key = k.idempotency_key";

/// A batch's jobs as [`INSERT`]'s parallel arrays, in its parameters' order.
struct Columns<'a> {
    ids: Vec<JobId>,
    namespaces: Vec<&'a Namespace>,
    kinds: Vec<&'a Kind>,
    queues: Vec<&'a QueueName>,
    args: Vec<&'a serde_json::Value>,
    priorities: Vec<i16>,
    max_attempts: Vec<i32>,
    timeouts_ms: Vec<i32>,
    keys: Vec<Option<&'a IdempotencyKey>>,
    run_ats: Vec<Option<DateTime<Utc>>>,
    backoff_min_ms: Vec<Option<i32>>,
    backoff_max_ms: Vec<Option<i32>>,
    traceparents: Vec<Option<String>>,
}

impl<'a> Columns<'a> {
    fn of(jobs: &'a [NewJob]) -> Self {
        let n = jobs.len();
        let mut columns = Self {
            ids: Vec::with_capacity(n),
            namespaces: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            queues: Vec::with_capacity(n),
            args: Vec::with_capacity(n),
            priorities: Vec::with_capacity(n),
            max_attempts: Vec::with_capacity(n),
            timeouts_ms: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            run_ats: Vec::with_capacity(n),
            backoff_min_ms: Vec::with_capacity(n),
            backoff_max_ms: Vec::with_capacity(n),
            traceparents: Vec::with_capacity(n),
        };
        let millis = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        for job in jobs {
            columns.ids.push(job.id);
            columns.namespaces.push(&job.namespace);
            columns.kinds.push(&job.kind);
            columns.queues.push(&job.queue);
            columns.args.push(&job.args);
            columns.priorities.push(i16::from(job.priority));
            columns
                .max_attempts
                .push(i32::try_from(job.max_attempts).unwrap_or(i32::MAX));
            columns
                .timeouts_ms
                .push(i32::try_from(job.timeout_ms).unwrap_or(i32::MAX));
            columns.keys.push(job.idempotency_key.as_ref());
            columns.run_ats.push(job.run_at);
            columns
                .backoff_min_ms
                .push(job.backoff.map(|b| millis(b.min)));
            columns
                .backoff_max_ms
                .push(job.backoff.map(|b| millis(b.max)));
            columns
                .traceparents
                .push(job.traceparent.as_ref().map(ToString::to_string));
        }
        columns
    }
}

/// A job that already holds an idempotency key.
#[derive(sqlx::FromRow)]
struct KeyOwner {
    namespace: Namespace,
    idempotency_key: IdempotencyKey,
    id: JobId,
    status: JobStatus,
}

impl Store {
    /// Inserts `jobs` in one statement (one transaction, one WAL flush) and reports, in
    /// input order, which were created and which matched an earlier idempotency key.
    /// A job PostgreSQL refuses for its data fails the whole statement:
    /// [`StoreError::Refused`].
    pub async fn insert_jobs(&self, jobs: &[NewJob]) -> Result<Vec<Submitted>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let created = self.insert_new(jobs).await?;
        let mut outcomes: Vec<Option<Submitted>> = jobs
            .iter()
            .map(|job| {
                created
                    .get(&job.id)
                    .map(|&status| Submitted::Created { id: job.id, status })
            })
            .collect();
        if outcomes.iter().all(Option::is_some) {
            return Ok(outcomes.into_iter().flatten().collect());
        }

        // Some keys were taken: look up the jobs that own them (second round trip, only
        // when a duplicate was submitted).
        let not_created = jobs
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.is_none())
            .map(|(job, _)| job);
        let owners = self.key_owners(not_created).await?;
        for (job, outcome) in jobs.iter().zip(outcomes.iter_mut()) {
            if outcome.is_some() {
                continue;
            }
            let owner = owners
                .iter()
                .find(|owner| {
                    owner.namespace == job.namespace
                        && Some(&owner.idempotency_key) == job.idempotency_key.as_ref()
                })
                .ok_or_else(|| {
                    StoreError::Other(anyhow::anyhow!(
                        "job {} was neither inserted nor found",
                        job.id
                    ))
                })?;
            *outcome = Some(Submitted::Existing {
                id: owner.id,
                status: owner.status,
            });
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// Runs [`INSERT`] for `jobs`: the status of each job it created.
    async fn insert_new(&self, jobs: &[NewJob]) -> Result<HashMap<JobId, JobStatus>, StoreError> {
        let columns = Columns::of(jobs);
        count_round_trips(1);
        let created: Vec<(JobId, JobStatus)> = self
            .one(Commit::Durable, async |statements| {
                sqlx::query_as(INSERT)
                    .bind(&columns.ids)
                    .bind(&columns.namespaces)
                    .bind(&columns.kinds)
                    .bind(&columns.queues)
                    .bind(&columns.args)
                    .bind(&columns.priorities)
                    .bind(&columns.max_attempts)
                    .bind(&columns.timeouts_ms)
                    .bind(&columns.keys)
                    .bind(&columns.run_ats)
                    .bind(&columns.backoff_min_ms)
                    .bind(&columns.backoff_max_ms)
                    .bind(&columns.traceparents)
                    .fetch_all(statements)
                    .await
            })
            .await
            .map_err(|error| insert_error(error, "inserting jobs"))?;
        Ok(created.into_iter().collect())
    }

    /// The jobs that own the idempotency keys of `jobs` (those without a key own none).
    async fn key_owners(
        &self,
        jobs: impl Iterator<Item = &NewJob>,
    ) -> Result<Vec<KeyOwner>, StoreError> {
        let (namespaces, keys): (Vec<&Namespace>, Vec<&IdempotencyKey>) = jobs
            .filter_map(|job| Some((&job.namespace, job.idempotency_key.as_ref()?)))
            .unzip();
        count_round_trips(1);
        self.one(Commit::Durable, async |statements| {
            sqlx::query_as(KEY_OWNERS)
                .bind(&namespaces)
                .bind(&keys)
                .fetch_all(statements)
                .await
        })
        .await
        .map_err(|error| insert_error(error, "looking up jobs by idempotency key"))
    }
}
