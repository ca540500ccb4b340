//! `/v1/jobs`: submit (one or a batch), read, list, cancel — always inside the caller's
//! namespace.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use engine_shared::envelope::Envelope;
use engine_shared::metrics::{JobLabels, metrics};
use engine_shared::store::{AttemptError, CancelOutcome, JobFilter, JobRecord, NewJob, Submitted};
use engine_shared::{JobId, JobStatus, Kind, Namespace, QueueName};

use crate::auth::Caller;
use crate::json_body::JsonBody;
use crate::problem::{ApiError, FieldError};
use crate::state::AppState;
use crate::submission::{SubmitBatch, SubmitJob};
use crate::trace_context::{TRACEPARENT, Trace};
use crate::{pending_quota, submission_limit};

#[derive(Serialize)]
struct Accepted {
    id: JobId,
    status: JobStatus,
    /// False when an earlier job with the same idempotency key was returned instead.
    created: bool,
}

fn envelope_of(job: &NewJob) -> Envelope {
    Envelope {
        id: job.id,
        kind: job.kind.clone(),
        queue: job.queue.clone(),
        args: job.args.clone(),
        priority: job.priority,
        traceparent: job.traceparent.clone(),
    }
}

/// After the commit: hand newly queued jobs to the relay's fast path (which may make the
/// answer wait briefly for room: back-pressure on clients that outpace publishing).
async fn publish_created(
    state: &AppState,
    namespace: &Namespace,
    jobs: &[NewJob],
    outcomes: &[Submitted],
) {
    // Collected first: a lazy iterator held across the await would make the handler's
    // future not `Send` (its closure's lifetimes are not general enough).
    let queued: Vec<Envelope> = jobs
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| {
            matches!(
                outcome,
                Submitted::Created {
                    status: JobStatus::Queued,
                    ..
                }
            )
        })
        .map(|(job, _)| envelope_of(job))
        .collect();
    let metrics = metrics();
    for (job, _) in jobs
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| matches!(outcome, Submitted::Created { .. }))
    {
        metrics
            .submitted
            .get_or_create(&JobLabels::new(namespace, &job.kind, &job.queue))
            .inc();
    }
    state.relay.publish_soon(namespace, queued).await;
}

fn accepted(outcome: &Submitted) -> Accepted {
    match *outcome {
        Submitted::Created { id, status } => Accepted {
            id,
            status,
            created: true,
        },
        Submitted::Existing { id, status } => Accepted {
            id,
            status,
            created: false,
        },
    }
}

/// `POST /v1/jobs` → 202 once the job is durably stored; 200 with the earlier job when
/// its idempotency key was already used.
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    Trace(trace): Trace,
    JsonBody(request): JsonBody<SubmitJob>,
) -> Result<Response, ApiError> {
    let mut job = request
        .validate(&caller.namespace, &state.registry, &state.settings, "")
        .map_err(ApiError::Invalid)?;
    job.traceparent = Some(trace.clone());
    submission_limit::check(&state, &caller, 1).await?;
    pending_quota::check(&state, &caller.namespace, 1).await?;
    let outcome = state.submissions.submit(job.clone()).await??;
    publish_created(
        &state,
        &caller.namespace,
        std::slice::from_ref(&job),
        std::slice::from_ref(&outcome),
    )
    .await;
    let status = match outcome {
        Submitted::Created { .. } => StatusCode::ACCEPTED,
        Submitted::Existing { .. } => StatusCode::OK,
    };
    Ok((
        status,
        [(TRACEPARENT, trace.to_string())],
        Json(accepted(&outcome)),
    )
        .into_response())
}

/// `POST /v1/jobs/batch` → up to `api.max_batch` jobs in one transaction: all or none.
pub async fn submit_batch(
    State(state): State<AppState>,
    caller: Caller,
    Trace(trace): Trace,
    JsonBody(request): JsonBody<SubmitBatch>,
) -> Result<Response, ApiError> {
    let max = state.settings.api.max_batch;
    if request.jobs.is_empty() || request.jobs.len() > max {
        return Err(ApiError::invalid(
            "jobs",
            format!("must hold 1 to {max} jobs, not {}", request.jobs.len()),
        ));
    }
    let mut jobs = Vec::with_capacity(request.jobs.len());
    let mut errors: Vec<FieldError> = Vec::new();
    for (index, job) in request.jobs.into_iter().enumerate() {
        match job.validate(
            &caller.namespace,
            &state.registry,
            &state.settings,
            &format!("jobs[{index}]."),
        ) {
            Ok(mut job) => {
                job.traceparent = Some(trace.clone());
                jobs.push(job);
            }
            Err(mut field_errors) => errors.append(&mut field_errors),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    submission_limit::check(&state, &caller, jobs.len()).await?;
    pending_quota::check(&state, &caller.namespace, jobs.len()).await?;
    let outcomes = state.store.insert_jobs(&jobs).await?;
    publish_created(&state, &caller.namespace, &jobs, &outcomes).await;
    let any_created = outcomes
        .iter()
        .any(|o| matches!(o, Submitted::Created { .. }));
    let status = if any_created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let body: Vec<Accepted> = outcomes.iter().map(accepted).collect();
    Ok((
        status,
        [(TRACEPARENT, trace.to_string())],
        Json(json!({ "jobs": body })),
    )
        .into_response())
}

pub(super) fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    // A malformed id names no job: same answer as an unknown one.
    raw.parse().map_err(|_| ApiError::NotFound)
}

/// A job with the error of each failed attempt, oldest first.
#[derive(Serialize)]
struct JobWithErrors {
    #[serde(flatten)]
    job: JobRecord,
    errors: Vec<AttemptError>,
}

/// `GET /v1/jobs/{id}`: 404 for unknown ids and for other namespaces' jobs alike.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let job = state
        .store
        .get_job(&caller.namespace, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    // Only jobs that ever failed have errors: spare the second query for the rest.
    let errors = if job.last_error.is_some() {
        state.store.attempt_errors(id).await?
    } else {
        Vec::new()
    };
    Ok(Json(JobWithErrors { job, errors }).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    kind: Option<String>,
    queue: Option<String>,
    /// Case-insensitive text in the last error.
    error: Option<String>,
    /// The previous page's `next` value.
    before: Option<String>,
    limit: Option<String>,
}

const MAX_PAGE: u32 = 200;

/// `GET /v1/jobs?status=&kind=&queue=&error=&limit=&before=`: newest first, keyset-paginated;
/// a page holds at most `limit` jobs and `api.page_max_bytes` of their args and results.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))?;
    let mut errors = Vec::new();
    let mut invalid = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.into(),
            message,
        })
    };
    let status = params.status.as_deref().and_then(|raw| {
        raw.parse::<JobStatus>()
            .map_err(|e| invalid("status", e.to_string()))
            .ok()
    });
    let kind = params.kind.as_deref().and_then(|raw| {
        Kind::parse(raw)
            .map_err(|e| invalid("kind", e.to_string()))
            .ok()
    });
    let queue = params.queue.as_deref().and_then(|raw| {
        QueueName::parse(raw)
            .map_err(|e| invalid("queue", e.to_string()))
            .ok()
    });
    let before = params.before.as_deref().and_then(|raw| {
        raw.parse::<JobId>()
            .map_err(|_| {
                invalid(
                    "before",
                    "must be a job id from a previous page's `next`".into(),
                )
            })
            .ok()
    });
    let error = super::error_filter::parse(params.error)
        .map_err(|message| invalid("error", message))
        .ok()
        .flatten();
    let limit = match params.limit.as_deref().map(str::parse::<u32>) {
        None => 50,
        Some(Ok(limit)) if (1..=MAX_PAGE).contains(&limit) => limit,
        Some(_) => {
            invalid(
                "limit",
                format!("must be a whole number from 1 to {MAX_PAGE}"),
            );
            0
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let filter = JobFilter {
        status,
        kind,
        queue,
        error,
        before,
        limit,
        max_bytes: state.settings.api.page_max_bytes,
    };
    let page = state.store.list_jobs(&caller.namespace, &filter).await?;
    let next = page
        .more
        .then(|| page.jobs.last().map(|job| job.id))
        .flatten();
    Ok(Json(json!({ "jobs": page.jobs, "next": next })))
}

/// `POST /v1/jobs/{id}/cancel`: 200 when cancelled, 202 when its running handler was asked
/// to stop, 409 when it had already finished.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let outcome = state.store.cancel_job(&caller.namespace, id).await?;
    match outcome {
        CancelOutcome::Cancelled { kind, queue } => {
            // Cancelled while waiting, here; a running job's cancellation is counted by the
            // worker that stops it.
            metrics()
                .cancelled
                .get_or_create(&JobLabels::new(&caller.namespace, &kind, &queue))
                .inc();
            Ok((
                StatusCode::OK,
                Json(json!({ "id": id, "status": JobStatus::Cancelled })),
            )
                .into_response())
        }
        CancelOutcome::Requested => {
            // The request is durable in PostgreSQL; the broadcast only makes it prompt.
            if let Err(error) = state.relay.request_cancel(&caller.namespace, id).await {
                tracing::warn!(job = %id, error = format!("{error:#}"), "could not broadcast a cancel request");
            }
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "id": id, "status": JobStatus::Running, "cancel_requested": true })),
            )
                .into_response())
        }
        CancelOutcome::AlreadyFinal(status) => Err(ApiError::Conflict(format!(
            "job {id} already finished as {}; nothing to cancel",
            status.as_str()
        ))),
        CancelOutcome::NotFound => Err(ApiError::NotFound),
    }
}
