//! Accepting jobs: one INSERT for a whole batch; the row is also the job's outbox entry.

use anyhow::Context;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Commit, Store, count_round_trips};
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

impl Store {
    /// Inserts `jobs` in one statement (one transaction, one WAL flush) and reports, in
    /// input order, which were created and which matched an earlier idempotency key.
    pub async fn insert_jobs(&self, jobs: &[NewJob]) -> anyhow::Result<Vec<Submitted>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let n = jobs.len();
        let mut ids = Vec::with_capacity(n);
        let mut namespaces = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut queues = Vec::with_capacity(n);
        let mut args = Vec::with_capacity(n);
        let mut priorities = Vec::with_capacity(n);
        let mut max_attempts = Vec::with_capacity(n);
        let mut timeouts = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        let mut run_ats = Vec::with_capacity(n);
        let mut backoff_min = Vec::with_capacity(n);
        let mut backoff_max = Vec::with_capacity(n);
        let mut traceparents = Vec::with_capacity(n);
        for job in jobs {
            ids.push(job.id.as_uuid());
            namespaces.push(job.namespace.as_str().to_owned());
            kinds.push(job.kind.as_str().to_owned());
            queues.push(job.queue.as_str().to_owned());
            args.push(job.args.clone());
            priorities.push(i16::from(job.priority));
            max_attempts.push(i32::try_from(job.max_attempts).unwrap_or(i32::MAX));
            timeouts.push(i32::try_from(job.timeout_ms).unwrap_or(i32::MAX));
            keys.push(job.idempotency_key.as_ref().map(|k| k.as_str().to_owned()));
            run_ats.push(job.run_at);
            let millis = |d: std::time::Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
            backoff_min.push(job.backoff.map(|b| millis(b.min)));
            backoff_max.push(job.backoff.map(|b| millis(b.max)));
            traceparents.push(job.traceparent.as_ref().map(ToString::to_string));
        }

        count_round_trips(1);
        let created: Vec<(Uuid, JobStatus)> = self
            .one(Commit::Durable, async |statements| {
                sqlx::query_as(
            "INSERT INTO jobs (id, namespace, kind, queue, args, status, priority, max_attempts,
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
             RETURNING id, status",
        )
        .bind(&ids)
        .bind(&namespaces)
        .bind(&kinds)
        .bind(&queues)
        .bind(&args)
        .bind(&priorities)
        .bind(&max_attempts)
        .bind(&timeouts)
        .bind(&keys)
        .bind(&run_ats)
        .bind(&backoff_min)
        .bind(&backoff_max)
        .bind(&traceparents)
        .fetch_all(statements).await
            })
            .await
            .context("inserting jobs")?;

        let created: std::collections::HashMap<Uuid, JobStatus> = created.into_iter().collect();
        let mut outcomes: Vec<Option<Submitted>> = jobs
            .iter()
            .map(|job| {
                created
                    .get(&job.id.as_uuid())
                    .map(|&status| Submitted::Created { id: job.id, status })
            })
            .collect();
        if outcomes.iter().all(Option::is_some) {
            return Ok(outcomes.into_iter().flatten().collect());
        }

        // Some keys were taken: look up the jobs that own them (second round trip, only
        // when a duplicate was submitted).
        let (conflict_namespaces, conflict_keys): (Vec<String>, Vec<String>) = jobs
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.is_none())
            .filter_map(|(job, _)| {
                let key = job.idempotency_key.as_ref()?;
                Some((job.namespace.as_str().to_owned(), key.as_str().to_owned()))
            })
            .unzip();
        count_round_trips(1);
        let existing: Vec<(String, String, Uuid, JobStatus)> = self
            .one(Commit::Durable, async |statements| {
                sqlx::query_as(
                    "SELECT j.namespace, j.idempotency_key, j.id, j.status
                     FROM jobs j
                     JOIN unnest($1::text[], $2::text[]) AS k(namespace, idempotency_key)
                       ON j.namespace = k.namespace AND j.idempotency_key = k.idempotency_key",
                )
                .bind(&conflict_namespaces)
                .bind(&conflict_keys)
                .fetch_all(statements)
                .await
            })
            .await
            .context("looking up jobs by idempotency key")?;

        for (job, outcome) in jobs.iter().zip(outcomes.iter_mut()) {
            if outcome.is_some() {
                continue;
            }
            let key = job.idempotency_key.as_ref().map(IdempotencyKey::as_str);
            let found = existing
                .iter()
                .find(|(ns, k, _, _)| ns == job.namespace.as_str() && Some(k.as_str()) == key)
                .with_context(|| format!("job {} was neither inserted nor found", job.id))?;
            *outcome = Some(Submitted::Existing {
                id: found.2.into(),
                status: found.3,
            });
        }
        Ok(outcomes.into_iter().flatten().collect())
    }
}
