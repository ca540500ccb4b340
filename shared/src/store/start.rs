//! The worker's start transition, `queued|retrying → running`, a guarded UPDATE for a whole
//! batch of deliveries. It hands each started attempt its fencing token (`starts`), a
//! lease and the kind and args to run (the row's, never the message's), and ends a job
//! whose cancel was accepted instead of running it. A message whose kind or queue
//! disagrees with its job's row starts nothing.

use std::time::Duration;

use anyhow::Context;
use uuid::Uuid;

use super::{Commit, Store, count_round_trips};
use crate::retry::Backoff;
use crate::{JobId, JobStatus, Kind, Namespace, QueueName};

/// A delivery asking to run its job.
#[derive(Clone, Debug)]
pub struct StartRequest {
    /// The namespace whose vhost the message came from.
    pub namespace: Namespace,
    pub id: JobId,
    /// What the message's body says the job is. Anyone who can publish to the vhost can
    /// write any body under a real job's id, so the job starts only if its row agrees.
    /// The body's args are never sent: the row's run, and comparing them would hand
    /// PostgreSQL whatever a publisher wrote (a NUL, megabytes, floats that do not
    /// survive a round trip through `f64`).
    pub kind: Kind,
    pub queue: QueueName,
    /// An earlier delivery of this job's message ended without an outcome (RabbitMQ's
    /// `redelivered` flag, or the count a deferral carried on): the worker that held it died
    /// or returned it, so a job left `running` by that worker may be taken over.
    pub redelivered: bool,
}

/// A job the worker may now run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartedJob {
    /// What to run, from the row: the source of truth, whatever the message carried.
    pub kind: Kind,
    pub args: serde_json::Value,
    /// This attempt's number, 1-based.
    pub attempt: u32,
    /// This attempt's fencing token: its outcome is recorded only while the row carries it.
    pub token: i64,
    pub max_attempts: u32,
    pub timeout_ms: u32,
    /// The job's own backoff; `None` means the fleet's.
    pub backoff: Option<Backoff>,
    /// Earlier runs that snoozed (they did not count as attempts).
    pub snoozes: u32,
    /// Times a person sent the job back from `dead` (attempts restart at 1 after each).
    pub redrives: u32,
}

/// A row the start transition touched.
#[derive(sqlx::FromRow)]
struct StartedRow {
    /// The 1-based position of the request that started it in the batch.
    position: i64,
    status: JobStatus,
    kind: String,
    args: serde_json::Value,
    attempts: i32,
    starts: i64,
    max_attempts: i32,
    timeout_ms: i32,
    backoff_min_ms: Option<i32>,
    backoff_max_ms: Option<i32>,
    snoozes: i32,
    redrives: i32,
}

impl StartedRow {
    fn outcome(&self) -> StartOutcome {
        if self.status != JobStatus::Running {
            // A takeover found the cancel a person asked for: the job ended here.
            return StartOutcome::Skipped(self.status);
        }
        // The row's kind equals the request's (the start compares them), which parsed.
        let Ok(kind) = Kind::parse(&self.kind) else {
            return StartOutcome::Mismatched;
        };
        let millis = |ms: i32| Duration::from_millis(u64::try_from(ms).unwrap_or(1));
        StartOutcome::Started(StartedJob {
            kind,
            args: self.args.clone(),
            attempt: u32::try_from(self.attempts).unwrap_or(0),
            token: self.starts,
            max_attempts: u32::try_from(self.max_attempts).unwrap_or(1),
            timeout_ms: u32::try_from(self.timeout_ms).unwrap_or(1),
            backoff: self
                .backoff_min_ms
                .zip(self.backoff_max_ms)
                .map(|(min, max)| Backoff {
                    min: millis(min),
                    max: millis(max),
                }),
            snoozes: u32::try_from(self.snoozes).unwrap_or(0),
            redrives: u32::try_from(self.redrives).unwrap_or(0),
        })
    }
}

/// What the start transition decided for one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartOutcome {
    /// Now `running`: run it.
    Started(StartedJob),
    /// Exists but may not run now (finished, cancelled, scheduled, or running under another
    /// live delivery): ack and skip the message.
    Skipped(JobStatus),
    /// No such job in the namespace: the message is poison.
    Unknown,
    /// The job exists in the namespace, but its row's kind or queue is not the message's:
    /// a forged (or corrupted) message, refused; the row is untouched.
    Mismatched,
}

/// The start statement. Only a request whose kind and queue equal its row's may start a
/// job, and of several requests for one job in a batch only one: a redelivery first, then
/// the earliest. A message with its job's kind and queue but other args is a duplicate of
/// it: whichever starts, the row's args run.
///
/// A row may start from `queued`; from `retrying` once its `run_at` has passed (a stale
/// message cannot cut a long backoff short), or at once when a tier retry's own message
/// was redelivered (its parking failed); from a due `scheduled` row, only to wait on the
/// scheduler's row lock (when its claim commits, the recheck sees `queued`; a skip would
/// lose the job); and from `running` when the message was redelivered or the running
/// attempt's lease has expired (its worker died). A row whose cancel was accepted is ended
/// `cancelled` instead of started. Kind, queue and namespace never change after submission,
/// so `claim` may compare them without the row lock.
const START: &str = "
    WITH input AS (
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::text[], $5::text[])
            WITH ORDINALITY AS i(id, namespace, redelivered, kind, queue, position)),
    claim AS (
        SELECT DISTINCT ON (i.id) i.id, i.redelivered, i.position
        FROM input i
        JOIN jobs j ON j.id = i.id AND j.namespace = i.namespace AND j.kind = i.kind
                   AND j.queue = i.queue
        ORDER BY i.id, i.redelivered DESC, i.position),
    target AS (
        SELECT j.id, c.position, j.cancel_requested_at IS NOT NULL AS cancelled
        FROM jobs j JOIN claim c ON c.id = j.id
        WHERE j.status = 'queued'
           OR (j.status IN ('retrying', 'scheduled') AND j.run_at <= now())
           -- a retry through a delay tier whose message came back unacked: parking it
           -- failed after its outcome was recorded, so it retries now rather than never
           OR (j.status = 'retrying' AND c.redelivered AND j.published_at IS NOT NULL)
           OR (j.status = 'running' AND (c.redelivered OR j.lease_until < now()))
        ORDER BY j.id
        FOR UPDATE OF j)
    UPDATE jobs
    SET status = CASE WHEN target.cancelled THEN 'cancelled' ELSE 'running' END::job_status,
        finished_at = CASE WHEN target.cancelled THEN now() END,
        attempts = attempts + (NOT target.cancelled)::int,
        starts = starts + (NOT target.cancelled)::int,
        started_at = CASE WHEN target.cancelled THEN started_at ELSE now() END,
        lease_until = CASE WHEN target.cancelled THEN NULL
                           ELSE now() + make_interval(secs => $6) END
    FROM target WHERE jobs.id = target.id
    RETURNING target.position, jobs.status, jobs.kind, jobs.args, jobs.attempts, jobs.starts,
              jobs.max_attempts, jobs.timeout_ms, jobs.backoff_min_ms, jobs.backoff_max_ms,
              jobs.snoozes, jobs.redrives";

/// Why the requests that did not start did not: each one's position, its job's status and
/// whether its message agrees with the row. Requests for no job of their namespace are
/// missing from the answer.
const NOT_STARTED: &str = "
    SELECT i.position, j.status, (j.kind = i.kind AND j.queue = i.queue) AS agrees
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])
        WITH ORDINALITY AS i(id, namespace, kind, queue, position)
    JOIN jobs j ON j.id = i.id AND j.namespace = i.namespace";

/// A batch's requests as the statements' parallel arrays.
struct Columns<'a> {
    ids: Vec<Uuid>,
    namespaces: Vec<&'a str>,
    redelivered: Vec<bool>,
    kinds: Vec<&'a str>,
    queues: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn of(requests: impl IntoIterator<Item = &'a StartRequest>) -> Self {
        let mut columns = Self {
            ids: Vec::new(),
            namespaces: Vec::new(),
            redelivered: Vec::new(),
            kinds: Vec::new(),
            queues: Vec::new(),
        };
        for request in requests {
            columns.ids.push(request.id.as_uuid());
            columns.namespaces.push(request.namespace.as_str());
            columns.redelivered.push(request.redelivered);
            columns.kinds.push(request.kind.as_str());
            columns.queues.push(request.queue.as_str());
        }
        columns
    }
}

impl Store {
    /// Moves each job to `running` if it may run (see [`START`]) with a lease of `lease`,
    /// and returns one [`StartOutcome`] per request, in input order. The same job twice in
    /// one batch starts once: one request gets it, the others are skipped.
    ///
    /// Relaxed commit: if the commit is lost in a crash, the outcome write finds the row
    /// one start behind and records it all the same (see `finish_jobs`). One round trip when
    /// every request starts; a second only to tell why the others did not.
    pub async fn start_jobs(
        &self,
        requests: &[StartRequest],
        lease: Duration,
    ) -> anyhow::Result<Vec<StartOutcome>> {
        let columns = Columns::of(requests);
        count_round_trips(1);
        let rows: Vec<StartedRow> = self
            .one(Commit::Relaxed, async |statements| {
                sqlx::query_as(START)
                    .bind(&columns.ids)
                    .bind(&columns.namespaces)
                    .bind(&columns.redelivered)
                    .bind(&columns.kinds)
                    .bind(&columns.queues)
                    .bind(lease.as_secs_f64())
                    .fetch_all(statements)
                    .await
            })
            .await
            .context("moving jobs to running")?;
        let mut outcomes: Vec<Option<StartOutcome>> = vec![None; requests.len()];
        for row in &rows {
            let slot = usize::try_from(row.position - 1)
                .ok()
                .and_then(|index| outcomes.get_mut(index))
                .context("the start answered for a request it was not given")?;
            *slot = Some(row.outcome());
        }
        if outcomes.iter().all(Option::is_some) {
            return Ok(outcomes.into_iter().flatten().collect());
        }
        self.tell_why_not_started(requests, outcomes).await
    }

    /// Fills the requests that did not start: skipped (with the row's status), unknown, or
    /// mismatched.
    async fn tell_why_not_started(
        &self,
        requests: &[StartRequest],
        mut outcomes: Vec<Option<StartOutcome>>,
    ) -> anyhow::Result<Vec<StartOutcome>> {
        let missing: Vec<usize> = (0..requests.len())
            .filter(|index| outcomes[*index].is_none())
            .collect();
        let columns = Columns::of(missing.iter().map(|index| &requests[*index]));
        count_round_trips(1);
        let existing: Vec<(i64, JobStatus, bool)> = self
            .one(Commit::Relaxed, async |statements| {
                sqlx::query_as(NOT_STARTED)
                    .bind(&columns.ids)
                    .bind(&columns.namespaces)
                    .bind(&columns.kinds)
                    .bind(&columns.queues)
                    .fetch_all(statements)
                    .await
            })
            .await
            .context("looking up jobs that did not start")?;
        for (position, index) in (1..).zip(&missing) {
            outcomes[*index] = Some(match existing.iter().find(|row| row.0 == position) {
                Some((_, status, true)) => StartOutcome::Skipped(*status),
                Some((_, _, false)) => StartOutcome::Mismatched,
                None => StartOutcome::Unknown,
            });
        }
        Ok(outcomes.into_iter().flatten().collect())
    }
}
