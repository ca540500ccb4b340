//! The rescuer's statements: finding jobs that nobody runs and nothing will deliver, and
//! handing them back to work. Two kinds: a `running` attempt whose lease expired (its worker
//! died or was cut off from PostgreSQL), and a published `queued` or `retrying` job that
//! nobody started long after it was due (its message was lost).

use std::time::Duration;

use anyhow::Context;

use super::{Commit, Store, count_round_trips};
use crate::{JobStatus, Namespace, QueueName};

/// Why the rescuer took a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RescueReason {
    /// It was `running` and its attempt's lease expired.
    LeaseExpired,
    /// It was published and due, and nobody started it for `rescue.after_secs`.
    Unstarted,
}

impl RescueReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeaseExpired => "lease_expired",
            Self::Unstarted => "unstarted",
        }
    }
}

/// A queue with abandoned-looking jobs, and of which kinds.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StaleQueue {
    pub namespace: Namespace,
    pub queue: QueueName,
    pub expired_leases: bool,
    pub unstarted: bool,
}

/// A job the rescuer took, with the state it left it in.
#[derive(Clone, Debug)]
pub struct Rescued {
    pub id: uuid::Uuid,
    pub reason: RescueReason,
    /// `queued` or `retrying`: back in the outbox, for the relay to publish. `dead`: its
    /// attempts were used up by attempts that died. `cancelled`: a cancel was requested.
    pub status: JobStatus,
}

#[derive(sqlx::FromRow)]
struct RescuedRow {
    id: uuid::Uuid,
    was: JobStatus,
    status: JobStatus,
}

/// Which kinds of abandoned jobs one [`Store::rescue`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RescueScope {
    /// `running` attempts whose lease expired.
    pub expired_leases: bool,
    /// Published jobs nobody started for `unstarted_after`.
    pub unstarted: bool,
}

/// The rescuer's advisory lock class ("tl_resc" in ASCII), paired with the namespace's hash.
const RESCUER_LOCK: i32 = 0x746c_7265;

/// Which rows of `jobs j` look abandoned; `after` is the parameter holding how long an
/// unstarted job may wait (seconds), `leases` and `unstarted` the booleans choosing the kinds.
fn stale(after: &str, leases: &str, unstarted: &str) -> String {
    format!(
        "(({leases} AND j.status = 'running' AND j.lease_until < now())
          OR ({unstarted} AND j.status IN ('queued', 'retrying') AND j.published_at IS NOT NULL
              AND GREATEST(j.run_at, j.published_at) < now() - make_interval(secs => {after})))"
    )
}

impl Store {
    /// The queues of `namespaces` × `queues` that have abandoned-looking jobs, and of which
    /// kinds. Read-only, no lock: the one statement an idle fleet's rescuer makes per pass,
    /// two index probes per queue (`jobs_running`, `jobs_unstarted`) however many rows wait.
    pub async fn count_stale(
        &self,
        namespaces: &[Namespace],
        queues: &[QueueName],
        unstarted_after: Duration,
    ) -> anyhow::Result<Vec<StaleQueue>> {
        count_round_trips(1);
        self.one(Commit::Durable, async |statements| {
            sqlx::query_as(
                "SELECT * FROM (
                     SELECT n.namespace, q.queue,
                            EXISTS (SELECT 1 FROM jobs j
                                    WHERE j.namespace = n.namespace AND j.queue = q.queue
                                      AND j.status = 'running' AND j.lease_until < now())
                              AS expired_leases,
                            EXISTS (SELECT 1 FROM jobs j
                                    WHERE j.namespace = n.namespace AND j.queue = q.queue
                                      AND j.status IN ('queued', 'retrying')
                                      AND j.published_at IS NOT NULL
                                      AND GREATEST(j.run_at, j.published_at)
                                          < now() - make_interval(secs => $3))
                              AS unstarted
                     FROM unnest($1::text[]) AS n(namespace)
                     CROSS JOIN unnest($2::text[]) AS q(queue)) probes
                 WHERE expired_leases OR unstarted",
            )
            .bind(namespaces)
            .bind(queues)
            .bind(unstarted_after.as_secs_f64())
            .fetch_all(statements)
            .await
        })
        .await
        .context("probing for abandoned jobs")
    }

    /// Takes up to `limit` abandoned jobs of one queue, of the kinds `scope` names, and
    /// hands them back to work in one statement: a dead attempt is recorded as `crashed` in
    /// the job's errors and the job goes to `retrying` (due now) — or `cancelled` if a
    /// cancel was requested, `dead` if that was its last attempt; an unstarted job keeps
    /// its state. Either way the row goes back to the outbox (`published_at` cleared): the
    /// relay publishes it under its own claim and stamps it only once the broker confirms,
    /// so a rescuer that dies right after, or a vhost refusing publishes, leaves nothing
    /// hidden. Empty when another replica is rescuing this namespace right now (one rescuer
    /// per namespace at a time, by a transaction-scoped lock).
    pub async fn rescue(
        &self,
        namespace: &Namespace,
        queue: &QueueName,
        unstarted_after: Duration,
        scope: RescueScope,
        limit: i64,
    ) -> anyhow::Result<Vec<Rescued>> {
        count_round_trips(1);
        let rows: Vec<RescuedRow> = self
            .one(Commit::Durable, async |statements| {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "WITH leader AS MATERIALIZED (
                         SELECT pg_try_advisory_xact_lock($5, hashtext($1)) AS held),
                     stale AS (
                         SELECT j.id, j.status AS was, j.attempts >= j.max_attempts AS spent,
                                format('attempt %s stopped renewing its lease (its worker died \
                                        or lost PostgreSQL); rescued', j.attempts) AS reason
                         FROM jobs j, leader
                         WHERE leader.held AND j.namespace = $1 AND j.queue = $2 AND {stale}
                         ORDER BY j.id
                         LIMIT $4
                         FOR UPDATE OF j SKIP LOCKED),
                     recorded AS (
                         INSERT INTO job_errors (job_id, attempt, redrive, kind, message)
                         SELECT j.id, j.attempts, j.redrives, 'crashed', s.reason
                         FROM jobs j JOIN stale s ON s.id = j.id WHERE s.was = 'running')
                     UPDATE jobs j
                     SET status = CASE WHEN s.was <> 'running' THEN j.status
                                       WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                                       WHEN s.spent THEN 'dead' ELSE 'retrying' END::job_status,
                         finished_at = CASE WHEN s.was = 'running'
                                             AND (s.spent OR j.cancel_requested_at IS NOT NULL)
                                            THEN now() ELSE j.finished_at END,
                         last_error = CASE WHEN s.was = 'running' THEN s.reason
                                           ELSE j.last_error END,
                         run_at = CASE WHEN s.was = 'running' THEN now() ELSE j.run_at END,
                         lease_until = NULL,
                         published_at = NULL
                     FROM stale s WHERE j.id = s.id
                     RETURNING j.id, s.was, j.status",
                    stale = stale("$3", "$6", "$7")
                )))
                .bind(namespace.as_str())
                .bind(queue.as_str())
                .bind(unstarted_after.as_secs_f64())
                .bind(limit)
                .bind(RESCUER_LOCK)
                .bind(scope.expired_leases)
                .bind(scope.unstarted)
                .fetch_all(statements)
                .await
            })
            .await
            .with_context(|| format!("rescuing abandoned jobs of {namespace}/{queue}"))?;
        Ok(rows
            .into_iter()
            .map(|row| Rescued {
                reason: if row.was == JobStatus::Running {
                    RescueReason::LeaseExpired
                } else {
                    RescueReason::Unstarted
                },
                id: row.id,
                status: row.status,
            })
            .collect())
    }
}
