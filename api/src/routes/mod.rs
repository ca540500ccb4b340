//! The HTTP surface: routes, limits, and the fallback; and the operators' side
//! (`api.admin_listen`): metrics and readiness with its reasons.

mod dead;
mod error_filter;
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
use engine_shared::health::Readiness;
use engine_shared::metrics::{CONTENT_TYPE, NamespaceLabels};
use tower_http::trace::TraceLayer;

use crate::json_body::BodyLimit;
use crate::problem::ApiError;
use crate::state::AppState;

/// What `api.listen` serves: the job API, liveness, readiness without reasons, and
/// `/metrics` too unless `api.admin_listen` is set.
pub fn router(state: AppState) -> Router {
    let limit = state.settings.api.body_limit_bytes;
    let mut router = Router::new();
    if state.settings.api.admin_listen.is_none() {
        router = router.route("/metrics", get(metrics_text));
    }
    router
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
        .fallback(not_found)
        .layer(Extension(BodyLimit(limit)))
        .layer(DefaultBodyLimit::max(limit))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// What `api.admin_listen` serves, for operators and their scrapers only: `/metrics`, and
/// `/readyz` with each failing dependency's reason.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(detailed_readyz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Liveness: the process serves HTTP. (Dependency checks belong to `/readyz`.)
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "healthy" }))
}

/// Readiness: PostgreSQL, RabbitMQ (every served vhost), Redis and storage (when
/// configured), checked concurrently at most every 2 s; 200 only when all answer. Failing
/// dependencies say only `unavailable` here.
async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.readiness.current(&state).await;
    readiness_response(&readiness, readiness.to_public_json())
}

/// Readiness with each failing dependency's reason (the admin listener's).
async fn detailed_readyz(State(state): State<AppState>) -> Response {
    let readiness = state.readiness.current(&state).await;
    readiness_response(&readiness, readiness.to_json())
}

/// A readiness report as JSON with its status.
fn readiness_response(readiness: &Readiness, report: serde_json::Value) -> Response {
    let status =
        StatusCode::from_u16(readiness.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (status, Json(report)).into_response()
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
