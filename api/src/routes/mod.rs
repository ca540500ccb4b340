//! The HTTP surface: routes, limits, and the fallback.

mod dead;
mod jobs;
mod objects;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use engine_shared::QueueName;
use engine_shared::health::{Readiness, check_dependencies, checked};
use engine_shared::metrics::{CONTENT_TYPE, NamespaceLabels};
use tower_http::trace::TraceLayer;

use crate::json_body::BodyLimit;
use crate::problem::ApiError;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let limit = state.settings.api.body_limit_bytes;
    Router::new()
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/batch", post(jobs::submit_batch))
        .route("/v1/jobs/redrive", post(dead::redrive))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/retry", post(dead::retry))
        .route("/v1/jobs/{id}/logs", get(objects::list_logs))
        .route("/v1/jobs/{id}/logs/{run}", get(objects::get_log))
        .route("/v1/jobs/{id}/artifacts", get(objects::list_artifacts))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(Extension(BodyLimit(limit)))
        .layer(DefaultBodyLimit::max(limit))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Liveness: the process serves HTTP. (Dependency checks belong to `/readyz`.)
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "healthy" }))
}

/// Readiness: PostgreSQL, RabbitMQ (every served vhost), Redis and storage (when
/// configured), checked concurrently; 200 only when all answer.
async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = check_dependencies(
        &state.store,
        &state.limiter,
        state.objects.as_ref(),
        checked(state.relay.ping_broker()),
    )
    .await;
    readiness_response(&readiness)
}

/// The report as JSON with its status.
pub fn readiness_response(readiness: &Readiness) -> Response {
    let status =
        StatusCode::from_u16(readiness.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (status, Json(readiness.to_json())).into_response()
}

/// The queue gauges and the outbox backlog are read at most this often, by one scrape at a
/// time: scrapes (or anyone who can reach the port) cannot turn into broker and database
/// load.
const GAUGE_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// When the gauges were last read; held while a scrape reads them.
static LAST_REFRESH: tokio::sync::Mutex<Option<std::time::Instant>> =
    tokio::sync::Mutex::const_new(None);

/// Prometheus metrics of this API process, with the queue gauges and the outbox backlog
/// read at most every [`GAUGE_REFRESH`]. Unauthenticated, like `/healthz`: expose it to the
/// scraper, not the internet.
async fn metrics_text(State(state): State<AppState>) -> Response {
    let metrics = engine_shared::metrics::metrics();
    if let Ok(mut last) = LAST_REFRESH.try_lock()
        && last.is_none_or(|at| at.elapsed() >= GAUGE_REFRESH)
    {
        *last = Some(std::time::Instant::now());
        refresh_gauges(&state).await;
    }
    (
        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
        metrics.encode(),
    )
        .into_response()
}

/// Reads queue depth, consumers and the outbox backlog into their gauges, within 2 s.
async fn refresh_gauges(state: &AppState) {
    let metrics = engine_shared::metrics::metrics();
    let queues: Vec<QueueName> = state
        .settings
        .queues
        .iter()
        .map(|q| q.name.clone())
        .collect();
    let refresh = async {
        state.relay.refresh_queue_metrics(&queues).await;
        match state.store.outbox_backlog().await {
            Ok(backlog) => {
                // Namespaces with nothing waiting read 0, not their last value.
                for spec in &state.settings.namespaces {
                    let waiting = backlog
                        .iter()
                        .find(|(namespace, _)| namespace == spec.name.as_str())
                        .map_or(0, |(_, count)| *count);
                    metrics
                        .outbox_backlog
                        .get_or_create(&NamespaceLabels {
                            namespace: spec.name.as_str().to_owned(),
                        })
                        .set(waiting);
                }
            }
            Err(_) => metrics.dependency_error("postgres"),
        }
    };
    // A scrape never hangs on a dead dependency: the gauges keep their last values, and
    // the timeout is counted.
    if tokio::time::timeout(engine_shared::health::CHECK_TIMEOUT, refresh)
        .await
        .is_err()
    {
        metrics.dependency_error("rabbitmq");
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_owned())
}
