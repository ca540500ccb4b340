//! One delivery's way: decode → screen for poison (unknown kind, too many deliveries) →
//! move to `running` (only if the message's kind and queue are its row's; the handler then
//! runs the row's args, and fails at once if they no longer fit the kind) → run the handler under a timeout, a
//! cancellation token and a panic guard → record the outcome → ack, retry (delay tier or
//! scheduler) or dead-letter. The ack is sent only after the outcome is committed; a
//! message that can never run goes to the dead queue with its reason, never back to its
//! queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};

use engine_jobs::{Artifacts, JobContext, JobError, JobLog, LogLevel, Registry};
use engine_shared::QueueName;
use engine_shared::broker::Publisher;
use engine_shared::envelope::Envelope;
use engine_shared::group_commit::GroupCommitError;
use engine_shared::limits::Limiter;
use engine_shared::metrics::{JobLabels, Metrics, NamespaceLabels, metrics};
use engine_shared::namespace::NamespaceSpec;
use engine_shared::objects::{LogRun, ObjectStore};
use engine_shared::retry::{RetryPolicy, RetryRoute};
use engine_shared::store::{
    AttemptOutcome, Burial, ErrorKind, FinishRequest, FinishedJob, StartOutcome, StartRequest,
    StartedJob, Store,
};
use engine_shared::trace::TraceParent;
use engine_shared::{JobId, JobStatus};
use tracing::Instrument;

use crate::admission::{Admission, DEFERRALS_HEADER, NOT_BEFORE_HEADER, admit, deferrals};
use crate::in_flight::{InFlight, Registration};
use crate::log_shipper::{AttemptLog, LogShipper};
use crate::received::{BrokerClock, Budget, Received};
use crate::redelivery;
use crate::transitions::Transitions;

/// When PostgreSQL cannot record a transition, the delivery goes back after this pause, so
/// an outage does not become a hot redelivery loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// A served namespace and the publisher its retries go through.
pub struct NamespaceContext {
    /// Its position in [`WorkerContext::namespaces`].
    pub index: usize,
    pub spec: NamespaceSpec,
    pub publisher: Publisher,
}

/// What every execution shares.
pub struct WorkerContext {
    pub registry: Arc<Registry>,
    pub transitions: Transitions,
    pub in_flight: Arc<InFlight>,
    pub retry: RetryPolicy,
    pub namespaces: Vec<NamespaceContext>,
    /// Recorded with every error and burial, so a person can tell which pod ran what.
    pub worker_id: String,
    /// The broker's consumer timeout, which bounds each delivery from its receipt.
    pub clock: BrokerClock,
    /// Needed to bury poison and crash-looping jobs outside the batched transitions.
    pub store: Store,
    /// Rate and concurrency limits, checked before a job starts.
    pub limiter: Arc<Limiter>,
    /// Object storage for artifacts; `None` when no bucket is configured.
    pub objects: Option<ObjectStore>,
    /// Uploads attempt logs (or spools them while storage is down).
    pub logs: Arc<LogShipper>,
    /// Most bytes of log text kept per attempt.
    pub log_cap: usize,
    /// Largest result stored (`worker.max_result_bytes`); a larger one fails the attempt.
    pub max_result_bytes: usize,
    /// The configured queues: a message naming another is poison. Its queue labels
    /// metrics, so an unknown name must never get as far as a label.
    pub queues: Vec<QueueName>,
}

pub async fn execute(worker: Arc<WorkerContext>, namespace: usize, received: Received) {
    let context = &worker.namespaces[namespace];
    let delivery = &received.delivery;
    let budget = worker.clock.budget(received.at);
    let envelope = match Envelope::from_bytes(&delivery.data) {
        Ok(envelope) => envelope,
        Err(error) => {
            let reason = format!("malformed message: not a job envelope ({error})");
            dead_letter(context, delivery, None, &reason).await;
            return;
        }
    };
    // Every line the worker logs about this delivery (screening, admission, the attempt)
    // carries the job and its trace.
    let span = tracing::info_span!(
        "attempt",
        job = %envelope.id,
        namespace = %context.spec.name,
        kind = envelope.kind.as_str(),
        trace_id = envelope.traceparent.as_ref().map(TraceParent::trace_id).unwrap_or_default(),
    );
    execute_decoded(&worker, context, delivery, &envelope, budget)
        .instrument(span)
        .await;
}

/// Screen → admission → run, for a delivery whose envelope decoded.
async fn execute_decoded(
    worker: &Arc<WorkerContext>,
    context: &NamespaceContext,
    delivery: &Delivery,
    envelope: &Envelope,
    budget: Budget,
) {
    if let Some(reason) = poison_reason(worker, envelope) {
        bury(
            worker,
            context,
            delivery,
            envelope,
            ErrorKind::Poison,
            &reason,
        )
        .await;
        return;
    }
    let deliveries = redelivery::earlier_deliveries(delivery);
    if deliveries >= worker.retry.delivery_limit {
        let reason = format!(
            "{deliveries} deliveries ended without an outcome: the job kills or outlives the \
             workers that take it (retry.delivery_limit = {})",
            worker.retry.delivery_limit
        );
        // Only a job that started and never finished is buried as crashed; one that never
        // got to start (its deliveries were returned for other reasons) runs normally.
        if bury(
            worker,
            context,
            delivery,
            envelope,
            ErrorKind::Crashed,
            &reason,
        )
        .await
        {
            return;
        }
        // Not buried, so its job is not running: these deliveries were returned before an
        // attempt (workers killed with it prefetched, connections lost). Before the broker's
        // own limit dead-letters a job PostgreSQL shows unfinished, a fresh copy restarts
        // the broker's count; it carries none, as no attempt of it crashed.
        if redelivery::broker_deliveries(delivery) >= worker.retry.delivery_limit
            && refresh(context, delivery, envelope).await
        {
            return;
        }
    }

    let slots = match admit(worker, &context.spec, envelope, delivery).await {
        Admission::Run(slots) => slots,
        Admission::Defer { delay, not_before } => {
            defer(worker, context, delivery, envelope, delay, not_before).await;
            return;
        }
    };
    run_admitted(worker, context, delivery, envelope, budget).await;
    for slot in slots {
        slot.release(&worker.limiter).await;
    }
}

/// Parks a job its limits hold back in a delay tier, with its reserved turn (if any) and
/// its deferral count in headers, then acks. Nothing is written to PostgreSQL: the job
/// stays `queued` (or `retrying`) and no attempt is used.
async fn defer(
    worker: &WorkerContext,
    context: &NamespaceContext,
    delivery: &Delivery,
    envelope: &Envelope,
    delay: Duration,
    not_before: Option<u64>,
) {
    let tier = worker.retry.deferral_tier(delay);
    let mut headers = FieldTable::default();
    if let Some(turn) = not_before {
        headers.insert(
            NOT_BEFORE_HEADER.into(),
            AMQPValue::LongLongInt(i64::try_from(turn).unwrap_or(i64::MAX)),
        );
    }
    headers.insert(
        DEFERRALS_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(deferrals(delivery)) + 1),
    );
    // The copy must still read as redelivered if this one was: a job its killed worker
    // left `running` is taken over only by a redelivery.
    redelivery::carry(delivery, &mut headers, 0);
    match context
        .publisher
        .publish_retry(envelope, &tier, headers)
        .await
    {
        Ok(()) => {
            metrics()
                .limit_deferrals
                .get_or_create(&job_labels(&context.spec, envelope))
                .inc();
            tracing::debug!(job = %envelope.id, tier = tier.label, delay_ms = delay.as_millis() as u64, "limited; deferred");
            ack(delivery).await;
        }
        Err(error) => {
            metrics().dependency_error("rabbitmq");
            tracing::warn!(job = %envelope.id, error = format!("{error:#}"), "could not defer a limited job; giving the delivery back");
            give_back(context, delivery, envelope, 0).await;
        }
    }
}

/// Start → handler → outcome → ack, retry or dead-letter, for an admitted delivery.
async fn run_admitted(
    worker: &Arc<WorkerContext>,
    context: &NamespaceContext,
    delivery: &Delivery,
    envelope: &Envelope,
    budget: Budget,
) {
    let id = envelope.id;
    // The start checks the message's body against the row: only an agreeing one starts.
    let request = StartRequest {
        namespace: context.spec.name.clone(),
        id,
        kind: envelope.kind.clone(),
        queue: envelope.queue.clone(),
        redelivered: redelivery::redelivered(delivery),
    };
    // Registered before the start, so a cancel broadcast sent right after the start
    // commits finds this delivery even before its handler runs.
    let registration = worker.in_flight.register(&context.spec.name, id);
    // A failed write may still have committed, its answer lost with the connection: the row
    // then reads `running`, moved there by this very delivery, and a plain retry would skip
    // it as someone else's and ack a job nobody runs. So a retry asks as a redelivery does,
    // taking a `running` job over (at worst the job's attempt count includes the lost one).
    let mut retrying = false;
    let patience = budget.patience(DATABASE_PATIENCE);
    let started = persist(id, "move the job to running", patience, || {
        let request = StartRequest {
            redelivered: request.redelivered || retrying,
            ..request.clone()
        };
        retrying = true;
        worker.transitions.starts.submit(request)
    })
    .await;
    if !matches!(started, Ok(StartOutcome::Started(_))) {
        worker.in_flight.finish(&registration);
    }
    let started = match started {
        Ok(StartOutcome::Started(started)) => started,
        Ok(StartOutcome::Skipped(status)) => {
            tracing::debug!(job = %id, status = status.as_str(), "not runnable now; skipping the message");
            ack(delivery).await;
            return;
        }
        Ok(StartOutcome::Unknown) => {
            let reason = format!("no job {id} in namespace {}", context.spec.name);
            dead_letter(context, delivery, Some(id), &reason).await;
            return;
        }
        Ok(StartOutcome::Mismatched) => {
            refuse_forged(context, delivery, id).await;
            return;
        }
        // PostgreSQL stayed unreachable. One of the tries may still have committed, its
        // answer lost: the copy must read as redelivered to take over a row this delivery
        // may have left `running` (at worst it counts one delivery too many).
        Err(_) => {
            give_back(context, delivery, envelope, 1).await;
            return;
        }
    };
    worker.in_flight.started(&registration, started.token);
    let timeout =
        Duration::from_millis(u64::from(started.timeout_ms)).min(worker.clock.max_attempt());
    // The broker times this delivery from its receipt. If the attempt could outlive that
    // (the delivery waited for a slot, or the start took long), the delivery is acked now:
    // the broker would otherwise close the channel and redeliver everything on it, healthy
    // running jobs included. From here the attempt's lease alone protects it (a crash is
    // found by the rescuer once the lease expires); the acks below become no-ops.
    let acked_early = !budget.fits(timeout);
    if acked_early {
        tracing::info!(job = %id, "the attempt could outlive the broker's clock on its delivery; acked at start, its lease protects it");
        ack(delivery).await;
    }

    let labels = job_labels(&context.spec, envelope);
    let metrics = metrics();
    metrics.started.get_or_create(&labels).inc();
    if started.attempt == 1 && started.snoozes == 0 && started.redrives == 0 {
        // From the id's creation time: for a delayed job this includes its delay.
        let waited = (chrono::Utc::now() - id.created_at())
            .to_std()
            .unwrap_or_default();
        Metrics::observe(&metrics.start_latency, &labels, waited);
    }
    let began = Instant::now();
    let log = JobLog::new(id, worker.log_cap);
    log.worker_line(
        LogLevel::Info,
        format_args!(
            "attempt {}/{} of {} started on worker {} (queue {}, trace {})",
            started.attempt,
            started.max_attempts,
            started.kind.as_str(),
            worker.worker_id,
            envelope.queue.as_str(),
            envelope
                .traceparent
                .as_ref()
                .map_or_else(|| "none".to_owned(), TraceParent::trace_id)
        ),
    );
    let outcome = run_handler(
        worker,
        &context.spec,
        envelope,
        &started,
        &log,
        &registration,
        timeout,
    )
    .await;
    let run = LogRun {
        redrive: started.redrives,
        attempt: started.attempt,
        snooze: matches!(outcome, HandlerOutcome::Snoozed(_)).then_some(started.snoozes + 1),
    };
    outcome.describe(&log, began.elapsed());
    Metrics::observe(&metrics.duration, &labels, began.elapsed());
    let retry = match &outcome {
        HandlerOutcome::Snoozed(delay) => worker.retry.route_for(*delay),
        _ => {
            let backoff = started
                .backoff
                .unwrap_or_else(|| worker.retry.default_backoff());
            worker.retry.route_for(backoff.delay(started.attempt))
        }
    };
    let request = FinishRequest {
        id,
        attempt: started.attempt,
        token: started.token,
        outcome: outcome.into(),
        duration: began.elapsed(),
        retry: retry.clone(),
    };
    let mut writes = 0;
    let patience = if acked_early {
        DATABASE_PATIENCE
    } else {
        budget.patience(DATABASE_PATIENCE)
    };
    let recorded = match persist(id, "record the outcome", patience, || {
        writes += 1;
        worker.transitions.finishes.submit(request.clone())
    })
    .await
    {
        // A failed write may still have committed, its answer lost with the connection; the
        // retry then finds the job no longer running. Read what the lost write left.
        Ok(finished) if finished.status.is_none() && writes > 1 => {
            recorded_before(worker, context, id, &request).await
        }
        recorded => recorded.map_err(drop),
    };
    // Registered until now, so its lease was renewed while the outcome was being recorded
    // (PostgreSQL may take a while to answer): the rescuer must not call it dead meanwhile.
    worker.in_flight.finish(&registration);
    let finished = match recorded {
        Ok(finished) => finished,
        Err(()) => {
            log.worker_line(
                LogLevel::Error,
                "the outcome could not be recorded: the job goes back to its queue",
            );
            ship_log(worker, context, id, run, &log);
            // Not recorded, so not acked: the copy re-runs it (at-least-once), taking over
            // the row this attempt left `running`.
            give_back(context, delivery, envelope, 1).await;
            return;
        }
    };
    describe_next(&log, finished.status, &retry);
    // A snooze is not an attempt: it neither retries nor finishes the job.
    if run.snooze.is_none() {
        count_outcome(&labels, finished.status);
    }
    ship_log(worker, context, id, run, &log);
    match (finished.status, retry) {
        (Some(JobStatus::Retrying), RetryRoute::Tier(tier)) => {
            match context
                .publisher
                .publish_retry(envelope, &tier, FieldTable::default())
                .await
            {
                Ok(()) => {
                    tracing::info!(job = %id, attempt = started.attempt, tier = tier.label, "retry parked in delay tier");
                    ack(delivery).await;
                }
                Err(error) => {
                    metrics.dependency_error("rabbitmq");
                    // The row says `retrying`; the copy (marked redelivered) retries now
                    // rather than later.
                    tracing::warn!(job = %id, error = format!("{error:#}"), "could not park the retry; giving the delivery back");
                    give_back(context, delivery, envelope, 1).await;
                }
            }
        }
        (Some(JobStatus::Retrying), RetryRoute::Scheduler(delay)) => {
            tracing::info!(job = %id, attempt = started.attempt, delay_secs = delay.as_secs(), "retry held in PostgreSQL for the scheduler");
            ack(delivery).await;
        }
        (Some(JobStatus::Dead), _) => {
            let reason = format!("out of attempts after attempt {}", started.attempt);
            dead_letter(context, delivery, Some(id), &reason).await;
        }
        (Some(status), _) => {
            tracing::debug!(job = %id, status = status.as_str(), "job finished");
            ack(delivery).await;
        }
        (None, _) => {
            tracing::debug!(job = %id, "outcome not recorded: the job was no longer running here");
            ack(delivery).await;
        }
    }
}

/// The outcome an earlier write of `request` recorded, when its answer was lost
/// ([`FinishRequest::recorded_in`]); anything else reads as "no longer running here".
/// `Err` when the row cannot be read: the caller returns the job to its queue, as for a
/// write that failed.
async fn recorded_before(
    worker: &WorkerContext,
    context: &NamespaceContext,
    id: JobId,
    request: &FinishRequest,
) -> Result<FinishedJob, ()> {
    match worker.store.get_job(&context.spec.name, id).await {
        Ok(record) => {
            let status = record.and_then(|r| request.recorded_in(r.status, r.attempts, r.starts));
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

/// The metric labels of `envelope`'s job.
fn job_labels(spec: &NamespaceSpec, envelope: &Envelope) -> JobLabels {
    JobLabels::new(&spec.name, envelope.kind.as_str(), envelope.queue.as_str())
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

/// Hands the attempt's log to the shipper, which uploads it in the background.
fn ship_log(
    worker: &WorkerContext,
    context: &NamespaceContext,
    job: JobId,
    run: LogRun,
    log: &JobLog,
) {
    worker.logs.ship(AttemptLog {
        namespace: context.index,
        job,
        run,
        text: log.take(),
    });
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

/// How long a delivery is held while PostgreSQL cannot record its job's transition, before
/// it is returned to its queue. Holding it (instead of requeueing at once) keeps a database
/// outage from inflating the message's delivery count towards the crash limit.
const DATABASE_PATIENCE: Duration = Duration::from_secs(120);

/// Runs `write` until it succeeds, backing off from 250 ms to 10 s, for up to `patience`
/// (at most [`DATABASE_PATIENCE`], less when the broker's deadline for the delivery is
/// nearer); the last error otherwise.
async fn persist<T, F, Fut>(
    id: JobId,
    what: &str,
    patience: Duration,
    mut write: F,
) -> Result<T, GroupCommitError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, GroupCommitError>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        match write().await {
            Ok(value) => return Ok(value),
            Err(error) if started.elapsed() + pause < patience => {
                metrics().dependency_error("postgres");
                tracing::warn!(job = %id, %error, retry_in_ms = pause.as_millis() as u64, "could not {what}; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            Err(error) => {
                metrics().dependency_error("postgres");
                tracing::error!(job = %id, %error, "could not {what}; returning the job to its queue");
                return Err(error);
            }
        }
    }
}

/// Why this worker can never run `envelope`, if it cannot: an unknown kind. Args that no
/// longer fit the kind are judged on the row's args, once the start returns them: the
/// handler fails them at once, fatally (a body's args are anyone's who can publish to the
/// vhost, and may disagree with the row).
fn poison_reason(worker: &WorkerContext, envelope: &Envelope) -> Option<String> {
    if !worker.registry.contains(&envelope.kind) {
        return Some(format!(
            "unknown kind {:?}: no handler registered in this worker",
            envelope.kind.as_str()
        ));
    }
    (!worker.queues.contains(&envelope.queue)).then(|| {
        format!(
            "unknown queue {:?}: not one of the fleet's queues",
            envelope.queue.as_str()
        )
    })
}

/// Marks the job dead with `reason` and parks its message in the dead queue. Returns
/// `false` when the job is in a state `kind` does not bury (a `crashed` verdict needs a
/// job left `running`): the caller carries on with the delivery. A job already finished
/// means a stale duplicate message, which is acked.
async fn bury(
    worker: &WorkerContext,
    context: &NamespaceContext,
    delivery: &Delivery,
    envelope: &Envelope,
    kind: ErrorKind,
    reason: &str,
) -> bool {
    let id = envelope.id;
    match worker
        .store
        .bury(
            &context.spec.name,
            envelope,
            kind,
            reason,
            &worker.worker_id,
        )
        .await
    {
        Ok(Burial::NotBuried(status)) if !status.is_final() => return false,
        Ok(Burial::NotBuried(status)) => {
            tracing::debug!(job = %id, status = status.as_str(), "stale message of a finished job; skipping");
            ack(delivery).await;
        }
        Ok(Burial::Buried) => {
            metrics()
                .dead
                .get_or_create(&job_labels(&context.spec, envelope))
                .inc();
            dead_letter(context, delivery, Some(id), reason).await;
        }
        Ok(Burial::Unknown) => {
            let reason = format!(
                "{reason}; and no job {id} in namespace {}",
                context.spec.name
            );
            dead_letter(context, delivery, Some(id), &reason).await;
        }
        Ok(Burial::Mismatched) => refuse_forged(context, delivery, id).await,
        Err(error) => {
            tracing::warn!(job = %id, error = format!("{error:#}"), "could not bury the job; returning it");
            give_back(context, delivery, envelope, 0).await;
        }
    }
    true
}

/// Refuses a message whose body disagrees with its job's row: anyone who can publish to
/// the vhost could have written it, with chosen args under a real job's id. It is not run
/// and the row is not touched (the job's own message still runs it); it is counted, and
/// parked in the dead queue so it cannot loop, with a reason that names no value (args may
/// hold secrets).
async fn refuse_forged(context: &NamespaceContext, delivery: &Delivery, id: JobId) {
    metrics()
        .forged_messages
        .get_or_create(&NamespaceLabels {
            namespace: context.spec.name.as_str().to_owned(),
        })
        .inc();
    let reason = format!(
        "forged message: its kind or queue disagrees with job {id} in namespace {}; \
         not run, the job is untouched",
        context.spec.name
    );
    dead_letter(context, delivery, Some(id), &reason).await;
}

/// Parks the delivery in `jobs.dead` with `reason` in its headers, then acks it. If that
/// publish fails, the delivery is rejected instead: the work queue's dead-letter exchange
/// still moves it to `jobs.dead`, without the reason header. Never requeued in a loop.
async fn dead_letter(
    context: &NamespaceContext,
    delivery: &Delivery,
    id: Option<JobId>,
    reason: &str,
) {
    tracing::warn!(namespace = %context.spec.name, job = ?id.map(|id| id.to_string()), reason, "moving the message to the dead queue");
    match context
        .publisher
        .publish_dead(&delivery.data, &delivery.properties, reason)
        .await
    {
        Ok(()) => ack(delivery).await,
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "could not publish to the dead queue; rejecting the message instead"
            );
            reject(delivery).await;
        }
    }
}

/// How the handler ended, before PostgreSQL decides what that means for the job.
enum HandlerOutcome {
    Succeeded(serde_json::Value),
    Failed(ErrorKind, String),
    Snoozed(Duration),
}

impl HandlerOutcome {
    /// The worker's line about how the handler ended.
    fn describe(&self, log: &JobLog, took: Duration) {
        let millis = took.as_millis();
        match self {
            Self::Succeeded(_) => log.worker_line(
                LogLevel::Info,
                format_args!("handler succeeded in {millis} ms"),
            ),
            Self::Failed(kind, message) => log.worker_line(
                LogLevel::Error,
                format_args!(
                    "handler failed ({}) after {millis} ms: {message}",
                    kind.as_str()
                ),
            ),
            Self::Snoozed(delay) => log.worker_line(
                LogLevel::Info,
                format_args!("handler snoozed for {delay:?} after {millis} ms (not an attempt)"),
            ),
        }
    }
}

impl From<HandlerOutcome> for AttemptOutcome {
    fn from(outcome: HandlerOutcome) -> Self {
        match outcome {
            HandlerOutcome::Succeeded(value) => Self::Succeeded(value),
            HandlerOutcome::Failed(kind, message) => Self::Failed { kind, message },
            HandlerOutcome::Snoozed(_) => Self::Snoozed,
        }
    }
}

async fn run_handler(
    worker: &WorkerContext,
    spec: &NamespaceSpec,
    envelope: &Envelope,
    started: &StartedJob,
    log: &JobLog,
    registration: &Registration,
    timeout: Duration,
) -> HandlerOutcome {
    let id: JobId = envelope.id;
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
        Ok(Ok(Ok(result))) => checked_result(result, worker.max_result_bytes),
        Ok(Ok(Err(JobError::Retryable(error)))) => {
            HandlerOutcome::Failed(ErrorKind::Error, format!("{error:#}"))
        }
        Ok(Ok(Err(JobError::Fatal(error)))) => {
            HandlerOutcome::Failed(ErrorKind::Fatal, format!("{error:#}"))
        }
        Ok(Ok(Err(JobError::Snooze(delay)))) => HandlerOutcome::Snoozed(delay),
        // Whether this becomes `cancelled` is decided in PostgreSQL, where the request is.
        Ok(Ok(Err(JobError::Cancelled))) => {
            HandlerOutcome::Failed(ErrorKind::Error, "stopped on cancellation".into())
        }
        Ok(Err(join_error)) if join_error.is_panic() => {
            let payload = join_error.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text panic payload".into());
            tracing::error!(job = %id, message, "handler panicked");
            HandlerOutcome::Failed(ErrorKind::Panic, format!("handler panicked: {message}"))
        }
        Ok(Err(join_error)) => HandlerOutcome::Failed(
            ErrorKind::Error,
            format!("handler task ended: {join_error}"),
        ),
        Err(_) => {
            cancellation.cancel();
            task.abort();
            HandlerOutcome::Failed(
                ErrorKind::Timeout,
                format!("timed out after {:.3}s", timeout.as_secs_f64()),
            )
        }
    }
}

/// A handler's result, if it fits the cap. One that does not is a fatal failure rather than
/// a truncated result: a truncated value would be stored as if it were the real one, and
/// the same handler would make the same result again on a retry. The handler's work is
/// done by then; the error says so, with both sizes, and never quotes the result.
fn checked_result(result: serde_json::Value, max_bytes: usize) -> HandlerOutcome {
    let bytes = engine_shared::payload::json_len(&result);
    if bytes <= max_bytes {
        return HandlerOutcome::Succeeded(result);
    }
    HandlerOutcome::Failed(
        ErrorKind::Fatal,
        format!(
            "the handler returned a result of {bytes} bytes of JSON, more than the {max_bytes} stored (worker.max_result_bytes); it was not stored, and the job is not retried"
        ),
    )
}

async fn ack(delivery: &Delivery) {
    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone; the broker redelivers, and the guarded start skips it.
        tracing::warn!(%error, "ack failed");
    }
}

/// Reject without requeue: the work queue's dead-letter exchange moves it to `jobs.dead`.
async fn reject(delivery: &Delivery) {
    if let Err(error) = delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
    {
        tracing::warn!(%error, "reject failed");
    }
}

/// Returns a delivery to its queue (used at shutdown for never-started deliveries too).
pub async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(error) = delivery.acker.nack(options).await {
        tracing::warn!(%error, "requeue failed");
    }
}

/// Copies a limited job's reserved turn and its deferral count onto a copy of its message.
fn keep_admission_headers(delivery: &Delivery, headers: &mut FieldTable) {
    let Some(original) = delivery.properties.headers() else {
        return;
    };
    for (key, value) in original.inner() {
        if matches!(key.as_str(), NOT_BEFORE_HEADER | DEFERRALS_HEADER) {
            headers.insert(key.clone(), value.clone());
        }
    }
}

/// Replaces the delivery by a fresh copy of its message that carries no count, then acks
/// it; `false` (and nothing done) if the copy cannot be published.
async fn refresh(context: &NamespaceContext, delivery: &Delivery, envelope: &Envelope) -> bool {
    match republish_copy(context, delivery, envelope, FieldTable::default()).await {
        Ok(()) => {
            tracing::info!(job = %envelope.id, deliveries = redelivery::broker_deliveries(delivery), "returned often without an attempt; replaced by a fresh copy");
            true
        }
        Err(error) => {
            tracing::warn!(job = %envelope.id, error = format!("{error:#}"), "could not replace an often-returned delivery; running it");
            false
        }
    }
}

/// Gives a delivery back as a fresh copy of its message that carries its earlier
/// deliveries (plus `this_one` if its job started here), then acks it. Unlike a requeue,
/// this does not count towards the broker's `x-delivery-limit`, which would dead-letter a
/// job that is not dead (see [`redelivery`]). A copy that cannot be published falls back
/// to a requeue. After a pause: a dependency is failing, and an outage must not become a
/// hot loop.
async fn give_back(
    context: &NamespaceContext,
    delivery: &Delivery,
    envelope: &Envelope,
    this_one: u32,
) {
    tokio::time::sleep(REQUEUE_PAUSE).await;
    let mut headers = FieldTable::default();
    redelivery::carry(delivery, &mut headers, this_one);
    let Err(error) = republish_copy(context, delivery, envelope, headers.clone()).await else {
        return;
    };
    // The work queue took no copy (full at its byte bound, most likely): the copy waits in
    // the shortest tier instead, until the queue has room.
    keep_admission_headers(delivery, &mut headers);
    match context.publisher.park_briefly(envelope, headers).await {
        Ok(()) => {
            tracing::debug!(job = %envelope.id, error = format!("{error:#}"), "the work queue took no copy; parked it in the shortest tier");
            ack(delivery).await;
        }
        Err(park_error) => {
            metrics().dependency_error("rabbitmq");
            tracing::warn!(job = %envelope.id, error = format!("{error:#}"), park_error = format!("{park_error:#}"), "could not give the delivery back as a copy; requeueing it");
            requeue(delivery).await;
        }
    }
}

/// Publishes a copy of `delivery`'s job with `headers` and the delivery's admission headers
/// (so a copy neither loses a reserved rate turn nor restarts its deferral backoff), then
/// acks the delivery. Nothing is acked if the publish fails.
async fn republish_copy(
    context: &NamespaceContext,
    delivery: &Delivery,
    envelope: &Envelope,
    mut headers: FieldTable,
) -> anyhow::Result<()> {
    keep_admission_headers(delivery, &mut headers);
    context.publisher.republish_job(envelope, headers).await?;
    ack(delivery).await;
    Ok(())
}
