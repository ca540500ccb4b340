//! Sending jobs back to work: retry one dead or cancelled job, or redrive many dead jobs by
//! filter (with a dry run). A job sent back starts with fresh attempts and keeps its error
//! history; it is published on the fast path, or by the outbox sweeper if that fails.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use engine_shared::store::{DeadFilter, OutboxJob, RetryOutcome};
use engine_shared::{JobStatus, Kind, Namespace, QueueName};

use super::jobs::parse_id;
use crate::auth::Caller;
use crate::json_body::JsonBody;
use crate::problem::{ApiError, FieldError};
use crate::state::AppState;

/// Most jobs one redrive request sends back; a larger backlog takes several requests.
const MAX_REDRIVE: i64 = 10_000;

/// Hands the rows sent back to work to the relay's fast path.
async fn publish(state: &AppState, namespace: &Namespace, rows: &[OutboxJob]) {
    let envelopes: Vec<_> = rows
        .iter()
        .filter_map(|row| row.envelope().ok().map(|(_, envelope)| envelope))
        .collect();
    state.relay.publish_soon(namespace, envelopes).await;
}

/// `POST /v1/jobs/{id}/retry`: a `dead` or `cancelled` job runs again with fresh attempts
/// (200); 409 for a job in any other state; 404 for an unknown one.
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match state.store.retry_job(&caller.namespace, id).await? {
        RetryOutcome::Queued(row) => {
            publish(&state, &caller.namespace, std::slice::from_ref(&row)).await;
            Ok((
                StatusCode::OK,
                Json(json!({ "id": id, "status": JobStatus::Queued })),
            )
                .into_response())
        }
        RetryOutcome::NotFound => Err(ApiError::NotFound),
        RetryOutcome::NotRetryable(status) => Err(ApiError::Conflict(format!(
            "job {id} is {}; only dead or cancelled jobs can be retried",
            status.as_str()
        ))),
    }
}

/// `POST /v1/jobs/redrive` body: which dead jobs to send back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    kind: Option<String>,
    queue: Option<String>,
    /// Case-insensitive text in the job's last error.
    error: Option<String>,
    /// Count the matching jobs, change nothing.
    #[serde(default)]
    dry_run: bool,
    /// Most jobs to send back in this request (default and maximum 10,000).
    limit: Option<i64>,
}

/// `POST /v1/jobs/redrive`: `{matched}` for a dry run; else `{redriven, more}`, where `more`
/// says matching dead jobs remain (the request hit its limit). Counts, never rows: the
/// fast path gets the first `relay.claim_max_bytes` of args, the sweeper the rest.
pub async fn redrive(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<RedriveRequest>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let mut invalid = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.into(),
            message,
        })
    };
    let kind = request.kind.as_deref().and_then(|raw| {
        Kind::parse(raw)
            .map_err(|e| invalid("kind", e.to_string()))
            .ok()
    });
    let queue = request.queue.as_deref().and_then(|raw| {
        QueueName::parse(raw)
            .map_err(|e| invalid("queue", e.to_string()))
            .ok()
    });
    let error = super::error_filter::parse(request.error)
        .map_err(|message| invalid("error", message))
        .ok()
        .flatten();
    let limit = request.limit.unwrap_or(MAX_REDRIVE);
    if !(1..=MAX_REDRIVE).contains(&limit) {
        invalid("limit", format!("must be from 1 to {MAX_REDRIVE}"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let filter = DeadFilter { kind, queue, error };
    if request.dry_run {
        let matched = state.store.count_dead(&caller.namespace, &filter).await?;
        return Ok(Json(json!({ "dry_run": true, "matched": matched })).into_response());
    }
    let redriven = state
        .store
        .redrive(
            &caller.namespace,
            &filter,
            limit,
            state.settings.relay.claim_max_bytes,
        )
        .await?;
    publish(&state, &caller.namespace, &redriven.to_publish).await;
    tracing::info!(namespace = %caller.namespace, count = redriven.count, "redrove dead jobs");
    Ok(Json(json!({
        "redriven": redriven.count,
        "more": redriven.count as i64 == limit,
    }))
    .into_response())
}
