//! A job's objects in storage: its attempt logs and its artifacts, listed with short-lived
//! presigned download URLs, and a log served as text. Every key is built from the caller's
//! namespace, so no request can reach another namespace's objects.

use std::io::Read;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use flate2::read::GzDecoder;
use serde::Serialize;
use tokio_util::io::ReaderStream;

use engine_shared::JobId;
use engine_shared::namespace::NamespaceSpec;
use engine_shared::objects::bucket::PRESIGNED_TTL;
use engine_shared::objects::{LogRun, ObjectInfo, ObjectKey, ObjectStore, is_unreachable};

use super::jobs::parse_id;
use crate::auth::Caller;
use crate::problem::ApiError;
use crate::state::AppState;

/// The most decompressed text one log answer holds in memory (logs are capped far lower
/// when written; this guards against anything else found under the key).
const MAX_TEXT: u64 = 64 * 1024 * 1024;

#[derive(Serialize)]
struct LogEntry {
    /// The run's name, as used in `/v1/jobs/{id}/logs/{run}`: `2`, `r1-2`, `3-snooze1`.
    run: String,
    attempt: u32,
    redrive: u32,
    snooze: Option<u32>,
    /// Compressed size in bytes.
    size: u64,
    uploaded_at: Option<DateTime<Utc>>,
    /// Downloads the gzipped log directly from storage, for `expires_in_secs`.
    url: String,
    expires_in_secs: u64,
}

#[derive(Serialize)]
struct ArtifactEntry {
    name: String,
    size: u64,
    last_modified: Option<DateTime<Utc>>,
    url: String,
    expires_in_secs: u64,
}

/// `GET /v1/jobs/{id}/logs`: every run's log, in run order.
pub async fn list_logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (objects, spec, id) = locate(&state, &caller, &id)?;
    let listed = listed(
        &state,
        objects,
        &caller,
        id,
        ObjectKey::logs_folder(spec, id),
    )
    .await?;
    let mut logs = Vec::with_capacity(listed.len());
    for object in listed {
        let Some(run) = run_of(&object.key) else {
            continue;
        };
        logs.push(LogEntry {
            run: run.to_string(),
            attempt: run.attempt,
            redrive: run.redrive,
            snooze: run.snooze,
            size: object.size,
            uploaded_at: object.last_modified,
            url: presign(objects, &object.key).await?,
            expires_in_secs: PRESIGNED_TTL.as_secs(),
        });
    }
    // Within an attempt, its snoozed runs came before the run that ended it.
    logs.sort_by_key(|entry| {
        (
            entry.redrive,
            entry.attempt,
            entry.snooze.unwrap_or(u32::MAX),
        )
    });
    Ok(Json(serde_json::json!({ "job": id, "logs": logs })).into_response())
}

/// `GET /v1/jobs/{id}/logs/{run}`: one run's log as `text/plain`, streamed gzipped straight
/// from storage to clients that accept gzip, decompressed here for those that do not.
pub async fn get_log(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, run)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (objects, spec, id) = locate(&state, &caller, &id)?;
    let run: LogRun = run.parse().map_err(|()| ApiError::NotFound)?;
    let key = ObjectKey::attempt_log(spec, id, &run);
    let body = objects
        .get(&key)
        .await
        .map_err(storage_error)?
        .ok_or(ApiError::NotFound)?;
    let text_plain = HeaderValue::from_static("text/plain; charset=utf-8");
    let accepts_gzip = accepts_gzip(&headers);
    if accepts_gzip {
        let stream = ReaderStream::new(body.into_async_read());
        let mut response = Body::from_stream(stream).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, text_plain);
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        return Ok(response);
    }
    let compressed = body
        .collect()
        .await
        .map_err(|error| ApiError::Storage(anyhow::Error::new(error).context("reading a log")))?
        .into_bytes();
    // Decompressing is CPU work: off the async threads.
    let text = tokio::task::spawn_blocking(move || {
        let mut text = Vec::new();
        GzDecoder::new(&compressed[..])
            .take(MAX_TEXT)
            .read_to_end(&mut text)
            .map(|_| text)
    })
    .await
    .map_err(|error| ApiError::Internal(anyhow::Error::new(error)))?
    .map_err(|error| {
        ApiError::Internal(anyhow::Error::new(error).context("decompressing a log"))
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, text_plain),
            (header::VARY, HeaderValue::from_static("accept-encoding")),
        ],
        text,
    )
        .into_response())
}

/// `GET /v1/jobs/{id}/artifacts`: the job's artifacts with presigned download URLs.
pub async fn list_artifacts(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (objects, spec, id) = locate(&state, &caller, &id)?;
    let folder = ObjectKey::artifacts_folder(spec, id);
    let mut artifacts = Vec::new();
    for object in listed(&state, objects, &caller, id, folder).await? {
        artifacts.push(ArtifactEntry {
            name: object.key.file_name().to_owned(),
            size: object.size,
            last_modified: object.last_modified,
            url: presign(objects, &object.key).await?,
            expires_in_secs: PRESIGNED_TTL.as_secs(),
        });
    }
    Ok(Json(serde_json::json!({ "job": id, "artifacts": artifacts })).into_response())
}

/// Storage, the caller's namespace and the job id, or the error that ends the request.
fn locate<'a>(
    state: &'a AppState,
    caller: &Caller,
    id: &str,
) -> Result<(&'a ObjectStore, &'a NamespaceSpec, JobId), ApiError> {
    let objects = state.objects.as_ref().ok_or(ApiError::StorageOff)?;
    let spec = state
        .settings
        .namespace(&caller.namespace)
        .ok_or(ApiError::NotFound)?;
    Ok((objects, spec, parse_id(id)?))
}

/// The objects under `folder`. An empty folder is a 404 unless the job exists (it has no
/// objects yet); a job that was archived out of PostgreSQL keeps its objects reachable.
async fn listed(
    state: &AppState,
    objects: &ObjectStore,
    caller: &Caller,
    id: JobId,
    folder: ObjectKey,
) -> Result<Vec<ObjectInfo>, ApiError> {
    let listed = objects.list(&folder).await.map_err(storage_error)?;
    if listed.is_empty() {
        state
            .store
            .job_status(&caller.namespace, id)
            .await?
            .ok_or(ApiError::NotFound)?;
    }
    Ok(listed)
}

/// Whether the client takes a gzip body: `gzip` (or `*`) in `Accept-Encoding` without
/// `q=0`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|param| {
                param
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// A storage failure as an answer: unreachable is 503 (retry), anything else (access
/// denied, a missing bucket) is a 500 an operator must fix.
fn storage_error(error: anyhow::Error) -> ApiError {
    engine_shared::metrics::metrics().dependency_error("s3");
    if is_unreachable(&error) {
        ApiError::Storage(error)
    } else {
        ApiError::Internal(error)
    }
}

fn run_of(key: &ObjectKey) -> Option<LogRun> {
    key.file_name().strip_suffix(".log.gz")?.parse().ok()
}

async fn presign(objects: &ObjectStore, key: &ObjectKey) -> Result<String, ApiError> {
    objects.presigned_get(key).await.map_err(ApiError::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_taken_unless_refused() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
            accepts_gzip(&headers)
        };
        assert!(with("gzip"));
        assert!(with("br, gzip;q=0.5"));
        assert!(with("*"));
        assert!(!with("gzip;q=0"));
        assert!(!with("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
