//! One admitted delivery's attempt: move its job to `running` → run the handler → record
//! the outcome → route the message (ack, park the retry, dead-letter, or give it back).

use std::time::{Duration, Instant};

use lapin::types::FieldTable;

use engine_jobs::{Artifacts, JobContext, JobLog, LogLevel};
use engine_shared::JobStatus;
use engine_shared::group_commit::GroupCommitError;
use engine_shared::metrics::{JobLabels, Metrics, metrics};
use engine_shared::objects::LogRun;
use engine_shared::retry::RetryRoute;
use engine_shared::store::{
    ErrorKind, FinishRequest, FinishedJob, StartOutcome, StartRequest, StartedJob,
};
use engine_shared::trace::TraceParent;
use tracing::Instrument;

use super::disposal::Message;
use super::outcome::HandlerOutcome;
use super::persist::{DATABASE_PATIENCE, persist};
use crate::context::WorkerContext;
use crate::in_flight::Registration;
use crate::log_shipper::AttemptLog;
use crate::received::Budget;
use crate::redelivery;

/// An admitted delivery on its way through one attempt of its job.
pub(super) struct Attempt<'a> {
    pub worker: &'a WorkerContext,
    pub message: Message<'a>,
    /// The broker's deadlines on the delivery, counted from its receipt.
    pub budget: Budget,
}

impl Attempt<'_> {
    /// Start → handler → outcome → ack, retry or dead-letter.
    pub async fn run(self) {
        let worker = self.worker;
        // Registered before the start, so a cancel broadcast sent right after the start
        // commits finds this delivery even before its handler runs.
        let registration = worker
            .in_flight
            .register(&self.message.namespace.spec.name, self.message.id());
        let Some(started) = self.start(&registration).await else {
            return;
        };
        worker.in_flight.started(&registration, started.token);
        let timeout =
            Duration::from_millis(u64::from(started.timeout_ms)).min(worker.clock.max_attempt());
        let acked_early = self.ack_if_outliving(timeout).await;

        let labels = self.message.labels();
        self.count_start(&labels, &started);
        let began = Instant::now();
        let log = self.open_log(&started);
        let outcome = self
            .run_handler(&started, &log, &registration, timeout)
            .await;
        let run = LogRun {
            redrive: started.redrives,
            attempt: started.attempt,
            snooze: matches!(outcome, HandlerOutcome::Snoozed(_)).then_some(started.snoozes + 1),
        };
        outcome.describe(&log, began.elapsed());
        Metrics::observe(&metrics().duration, &labels, began.elapsed());
        let retry = self.retry_route(&outcome, &started);
        let request = FinishRequest {
            id: self.message.id(),
            attempt: started.attempt,
            token: started.token,
            outcome: outcome.into(),
            duration: began.elapsed(),
            retry: retry.clone(),
        };
        let recorded = self.record(&request, acked_early).await;
        // Registered until now, so its lease was renewed while the outcome was being recorded
        // (PostgreSQL may take a while to answer): the rescuer must not call it dead meanwhile.
        worker.in_flight.finish(&registration);
        let Ok(finished) = recorded else {
            log.worker_line(
                LogLevel::Error,
                "the outcome could not be recorded: the job goes back to its queue",
            );
            self.ship_log(run, &log);
            // Not recorded, so not acked: the copy re-runs it (at-least-once), taking over
            // the row this attempt left `running`.
            self.message.give_back(1).await;
            return;
        };
        describe_next(&log, finished.status, &retry);
        // A snooze is not an attempt: it neither retries nor finishes the job.
        if run.snooze.is_none() {
            count_outcome(&labels, finished.status);
        }
        self.ship_log(run, &log);
        self.route(finished.status, retry, started.attempt).await;
    }

    /// Moves the job to `running` here. `None` when this message does not run it (the job
    /// is not runnable now, unknown, or the message is forged) or PostgreSQL stayed
    /// unreachable: the delivery is then settled and `registration` finished.
    async fn start(&self, registration: &Registration) -> Option<StartedJob> {
        let started = self.submit_start().await;
        if !matches!(started, Ok(StartOutcome::Started(_))) {
            self.worker.in_flight.finish(registration);
        }
        let message = &self.message;
        match started {
            Ok(StartOutcome::Started(started)) => return Some(started),
            Ok(StartOutcome::Skipped(status)) => {
                tracing::debug!(job = %message.id(), status = status.as_str(), "not runnable now; skipping the message");
                message.ack().await;
            }
            Ok(StartOutcome::Unknown) => {
                let reason = format!(
                    "no job {} in namespace {}",
                    message.id(),
                    message.namespace.spec.name
                );
                message.dead_letter(&reason).await;
            }
            Ok(StartOutcome::Mismatched) => message.refuse_forged().await,
            // PostgreSQL stayed unreachable. One of the tries may still have committed, its
            // answer lost: the copy must read as redelivered to take over a row this delivery
            // may have left `running` (at worst it counts one delivery too many).
            Err(_) => message.give_back(1).await,
        }
        None
    }

    /// Asks PostgreSQL to move the job to `running`, retrying within the delivery's
    /// patience.
    async fn submit_start(&self) -> Result<StartOutcome, GroupCommitError> {
        let (namespace, delivery, envelope) = (
            self.message.namespace,
            self.message.delivery,
            self.message.envelope,
        );
        // The start checks the message's body against the row: only an agreeing one starts.
        let request = StartRequest {
            namespace: namespace.spec.name.clone(),
            id: envelope.id,
            kind: envelope.kind.clone(),
            queue: envelope.queue.clone(),
            redelivered: redelivery::redelivered(delivery),
        };
        // A failed write may still have committed, its answer lost with the connection: the row
        // then reads `running`, moved there by this very delivery, and a plain retry would skip
        // it as someone else's and ack a job nobody runs. So a retry asks as a redelivery does,
        // taking a `running` job over (at worst the job's attempt count includes the lost one).
        let mut retrying = false;
        let patience = self.budget.patience(DATABASE_PATIENCE);
        persist(envelope.id, "move the job to running", patience, || {
            let request = StartRequest {
                redelivered: request.redelivered || retrying,
                ..request.clone()
            };
            retrying = true;
            self.worker.transitions.starts.submit(request)
        })
        .await
    }

    /// Acks the delivery now if an attempt that may take `timeout` could outlive the
    /// broker's clock on it; returns whether it did.
    async fn ack_if_outliving(&self, timeout: Duration) -> bool {
        // The broker times this delivery from its receipt. If the attempt could outlive that
        // (the delivery waited for a slot, or the start took long), the delivery is acked now:
        // the broker would otherwise close the channel and redeliver everything on it, healthy
        // running jobs included. From here the attempt's lease alone protects it (a crash is
        // found by the rescuer once the lease expires); the attempt's later acks become no-ops.
        let acked_early = !self.budget.fits(timeout);
        if acked_early {
            tracing::info!(job = %self.message.id(), "the attempt could outlive the broker's clock on its delivery; acked at start, its lease protects it");
            self.message.ack().await;
        }
        acked_early
    }

    /// Counts the start, and how long a first start waited.
    fn count_start(&self, labels: &JobLabels, started: &StartedJob) {
        let metrics = metrics();
        metrics.started.get_or_create(labels).inc();
        if started.attempt == 1 && started.snoozes == 0 && started.redrives == 0 {
            // From the id's creation time: for a delayed job this includes its delay.
            let waited = (chrono::Utc::now() - self.message.id().created_at())
                .to_std()
                .unwrap_or_default();
            Metrics::observe(&metrics.start_latency, labels, waited);
        }
    }

    /// The attempt's log, opened with the worker's line about the start.
    fn open_log(&self, started: &StartedJob) -> JobLog {
        let envelope = self.message.envelope;
        let log = JobLog::new(envelope.id, self.worker.log_cap);
        log.worker_line(
            LogLevel::Info,
            format_args!(
                "attempt {}/{} of {} started on worker {} (queue {}, trace {})",
                started.attempt,
                started.max_attempts,
                started.kind.as_str(),
                self.worker.worker_id,
                envelope.queue.as_str(),
                envelope
                    .traceparent
                    .as_ref()
                    .map_or_else(|| "none".to_owned(), TraceParent::trace_id)
            ),
        );
        log
    }

    /// Runs the row's kind and args under `timeout`, the registration's cancellation token
    /// and a panic guard.
    async fn run_handler(
        &self,
        started: &StartedJob,
        log: &JobLog,
        registration: &Registration,
        timeout: Duration,
    ) -> HandlerOutcome {
        let (worker, envelope) = (self.worker, self.message.envelope);
        let spec = &self.message.namespace.spec;
        let id = envelope.id;
        let cancellation = registration.cancellation.clone();
        let context = JobContext {
            id,
            namespace: spec.name.clone(),
            attempt: started.attempt,
            max_attempts: started.max_attempts,
            snoozes: started.snoozes,
            cancellation: cancellation.clone(),
            log: log.clone(),
            artifacts: Artifacts::new(id, spec.clone(), worker.objects.clone()),
            traceparent: envelope.traceparent.clone(),
        };
        // The row's kind and args, which the start returned: never the message's.
        let Some(handler) = worker
            .registry
            .run(&started.kind, context, started.args.clone())
        else {
            return HandlerOutcome::Failed(
                ErrorKind::Poison,
                format!(
                    "no handler for kind {:?} in this worker",
                    started.kind.as_str()
                ),
            );
        };
        // A task of its own, so a panic is caught as a JoinError instead of killing the worker.
        // In the attempt's span, so the handler's own log lines carry the job and its trace.
        let mut task = tokio::spawn(handler.in_current_span());
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(ended) => HandlerOutcome::of_task(ended, worker.max_result_bytes, id),
            Err(_) => {
                cancellation.cancel();
                task.abort();
                HandlerOutcome::timed_out(timeout)
            }
        }
    }

    /// Where a retry of this outcome would wait: a snooze for its own delay, a failure for
    /// the kind's backoff (or the default one) after this attempt.
    fn retry_route(&self, outcome: &HandlerOutcome, started: &StartedJob) -> RetryRoute {
        let retry = &self.worker.retry;
        match outcome {
            HandlerOutcome::Snoozed(delay) => retry.route_for(*delay),
            _ => {
                let backoff = started.backoff.unwrap_or_else(|| retry.default_backoff());
                retry.route_for(backoff.delay(started.attempt))
            }
        }
    }

    /// Records the outcome, retrying while PostgreSQL fails: within the broker's deadline
    /// on the delivery, or for the whole patience once the delivery was `acked_early`.
    /// `Err` when it could not be recorded.
    async fn record(&self, request: &FinishRequest, acked_early: bool) -> Result<FinishedJob, ()> {
        let mut writes = 0;
        let patience = if acked_early {
            DATABASE_PATIENCE
        } else {
            self.budget.patience(DATABASE_PATIENCE)
        };
        match persist(request.id, "record the outcome", patience, || {
            writes += 1;
            self.worker.transitions.finishes.submit(request.clone())
        })
        .await
        {
            // A failed write may still have committed, its answer lost with the connection; the
            // retry then finds the job no longer running. Read what the lost write left.
            Ok(finished) if finished.status.is_none() && writes > 1 => {
                self.recorded_before(request).await
            }
            recorded => recorded.map_err(drop),
        }
    }

    /// The outcome an earlier write of `request` recorded, when its answer was lost
    /// ([`FinishRequest::recorded_in`]); anything else reads as "no longer running here".
    /// `Err` when the row cannot be read: the caller returns the job to its queue, as for a
    /// write that failed.
    async fn recorded_before(&self, request: &FinishRequest) -> Result<FinishedJob, ()> {
        let id = request.id;
        match self
            .worker
            .store
            .get_job(&self.message.namespace.spec.name, id)
            .await
        {
            Ok(record) => {
                let status =
                    record.and_then(|r| request.recorded_in(r.status, r.attempts, r.starts));
                if let Some(status) = status {
                    tracing::info!(job = %id, status = status.as_str(), "the outcome's answer was lost; its write had committed");
                }
                Ok(FinishedJob { status })
            }
            Err(error) => {
                tracing::warn!(job = %id, error = format!("{error:#}"), "could not read what a lost outcome write recorded");
                Err(())
            }
        }
    }

    /// Hands the attempt's log to the shipper, which uploads it in the background.
    fn ship_log(&self, run: LogRun, log: &JobLog) {
        self.worker.logs.ship(AttemptLog {
            namespace: self.message.namespace.index,
            job: self.message.id(),
            run,
            text: log.take(),
        });
    }

    /// Settles the delivery by where attempt `attempt` left its job (`status`, `None` when
    /// it was no longer running here): parks a retry in its delay tier, leaves it to the
    /// scheduler, dead-letters a dead job, or acks.
    async fn route(&self, status: Option<JobStatus>, retry: RetryRoute, attempt: u32) {
        let (message, id) = (&self.message, self.message.id());
        match (status, retry) {
            (Some(JobStatus::Retrying), RetryRoute::Tier(tier)) => {
                match message
                    .namespace
                    .publisher
                    .publish_retry(message.envelope, &tier, FieldTable::default())
                    .await
                {
                    Ok(()) => {
                        tracing::info!(job = %id, attempt, tier = tier.label, "retry parked in delay tier");
                        message.ack().await;
                    }
                    Err(error) => {
                        metrics().dependency_error("rabbitmq");
                        // The row says `retrying`; the copy (marked redelivered) retries now
                        // rather than later.
                        tracing::warn!(job = %id, error = format!("{error:#}"), "could not park the retry; giving the delivery back");
                        message.give_back(1).await;
                    }
                }
            }
            (Some(JobStatus::Retrying), RetryRoute::Scheduler(delay)) => {
                tracing::info!(job = %id, attempt, delay_secs = delay.as_secs(), "retry held in PostgreSQL for the scheduler");
                message.ack().await;
            }
            (Some(JobStatus::Dead), _) => {
                let reason = format!("out of attempts after attempt {attempt}");
                message.dead_letter(&reason).await;
            }
            (Some(status), _) => {
                tracing::debug!(job = %id, status = status.as_str(), "job finished");
                message.ack().await;
            }
            (None, _) => {
                tracing::debug!(job = %id, "outcome not recorded: the job was no longer running here");
                message.ack().await;
            }
        }
    }
}

/// Counts where an attempt left its job.
fn count_outcome(labels: &JobLabels, status: Option<JobStatus>) {
    let metrics = metrics();
    let family = match status {
        Some(JobStatus::Succeeded) => &metrics.succeeded,
        Some(JobStatus::Retrying) => &metrics.retried,
        Some(JobStatus::Dead) => &metrics.dead,
        Some(JobStatus::Cancelled) => &metrics.cancelled,
        _ => return,
    };
    family.get_or_create(labels).inc();
}

/// The worker's last line in an attempt's log: what happens to the job next.
fn describe_next(log: &JobLog, status: Option<JobStatus>, retry: &RetryRoute) {
    match (status, retry) {
        (Some(JobStatus::Retrying), RetryRoute::Tier(tier)) => log.worker_line(
            LogLevel::Info,
            format_args!(
                "next attempt in {:?} (delay queue jobs.delay.{})",
                tier.ttl, tier.label
            ),
        ),
        (Some(JobStatus::Retrying), RetryRoute::Scheduler(delay)) => log.worker_line(
            LogLevel::Info,
            format_args!("next attempt in {delay:?} (held in PostgreSQL)"),
        ),
        (Some(JobStatus::Dead), _) => {
            log.worker_line(LogLevel::Error, "no attempts left: the job is dead")
        }
        (Some(status), _) => {
            log.worker_line(LogLevel::Info, format_args!("job {}", status.as_str()))
        }
        (None, _) => log.worker_line(
            LogLevel::Warn,
            "the job was no longer running here; outcome not recorded",
        ),
    }
}
