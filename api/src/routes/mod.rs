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
use engine_shared::health::{Dependency, Readiness, Verdict, checked};
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
    let mut readiness = Readiness::default();
    let (postgres, rabbitmq, redis, storage) = tokio::join!(
        checked(state.store.ping()),
        checked(state.relay.ping_broker()),
        checked(state.limiter.ping()),
        async {
            match &state.objects {
                Some(objects) => Some(checked(objects.ping()).await),
                None => None,
            }
        },
    );
    readiness.record(Dependency::Postgres, postgres);
    readiness.record(Dependency::RabbitMq, rabbitmq);
    readiness.record(Dependency::Redis, redis);
    if let Some(storage) = storage {
        readiness.record(Dependency::Storage, storage);
    }
    readiness_response(&readiness)
}

/// The report as JSON, 200 when healthy and 503 otherwise (the seed documents' rule).
pub fn readiness_response(readiness: &Readiness) -> Response {
    let status = if readiness.verdict() == Verdict::Healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness.to_json())).into_response()
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_owned())
}
