//! The worker's health: whether each namespace's consumers are up (kept by the consumers
//! themselves), and a small HTTP server answering `/healthz` (liveness) and `/readyz`
//! (readiness, the API's format) on `worker.health_listen`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use engine_shared::health::check_dependencies;
use engine_shared::limits::Limiter;
use engine_shared::metrics::CONTENT_TYPE;
use engine_shared::storage::ObjectStore;
use engine_shared::store::Store;

/// One namespace's consumers: up, or down since when and why.
#[derive(Clone, Debug)]
struct ConsumerState {
    namespace: String,
    consuming: bool,
    since: Instant,
    reason: String,
}

/// The consumers' states, one per served namespace, updated as they connect and drop.
#[derive(Debug)]
pub struct Consumers {
    states: Mutex<Vec<ConsumerState>>,
}

impl Consumers {
    /// Every namespace starts down ("not connected yet").
    pub fn new(namespaces: impl IntoIterator<Item = String>) -> Self {
        let now = Instant::now();
        Self {
            states: Mutex::new(
                namespaces
                    .into_iter()
                    .map(|namespace| ConsumerState {
                        namespace,
                        consuming: false,
                        since: now,
                        reason: "not connected yet".into(),
                    })
                    .collect(),
            ),
        }
    }

    /// Namespace `index`'s consumers are up.
    pub fn consuming(&self, index: usize) {
        self.set(index, true, String::new());
    }

    /// Namespace `index`'s consumers are down, for `reason`.
    pub fn down(&self, index: usize, reason: impl Into<String>) {
        self.set(index, false, reason.into());
    }

    fn set(&self, index: usize, consuming: bool, reason: String) {
        let mut states = self.states.lock().expect("never poisoned");
        if let Some(state) = states.get_mut(index) {
            if state.consuming != consuming {
                state.since = Instant::now();
            }
            state.consuming = consuming;
            state.reason = reason;
        }
    }

    /// `Err` names the namespaces whose consumers are down (readiness).
    fn all_consuming(&self) -> Result<(), String> {
        let states = self.states.lock().expect("never poisoned");
        let down: Vec<String> = states
            .iter()
            .filter(|state| !state.consuming)
            .map(|state| format!("{}: {}", state.namespace, state.reason))
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!("consumers down in {}", down.join("; ")))
        }
    }

    /// Namespaces down for longer than `grace` (liveness).
    fn down_longer_than(&self, grace: Duration) -> Vec<String> {
        let states = self.states.lock().expect("never poisoned");
        states
            .iter()
            .filter(|state| !state.consuming && state.since.elapsed() > grace)
            .map(|state| state.namespace.clone())
            .collect()
    }
}

/// What the health endpoints look at.
#[derive(Clone)]
pub struct HealthState {
    pub consumers: Arc<Consumers>,
    pub store: Store,
    pub limiter: Arc<Limiter>,
    pub objects: Option<ObjectStore>,
    pub liveness_grace: Duration,
}

/// Serves the health endpoints on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: HealthState, shutdown: CancellationToken) {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(%error, "the health server stopped");
    }
}

/// Liveness: 503 once a namespace's consumers have been down past `worker.liveness_grace_secs`
/// (a consumer that stopped and did not come back), 200 otherwise.
async fn healthz(State(state): State<HealthState>) -> Response {
    let stuck = state.consumers.down_longer_than(state.liveness_grace);
    if stuck.is_empty() {
        Json(json!({ "status": "healthy" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unhealthy",
                "reason": format!(
                    "consumers down for over {}s in {}",
                    state.liveness_grace.as_secs(),
                    stuck.join(", ")
                ),
            })),
        )
            .into_response()
    }
}

/// Prometheus metrics of this worker.
async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        engine_shared::metrics::metrics().encode(),
    )
        .into_response()
}

/// Readiness: PostgreSQL, the consumers (RabbitMQ), Redis and storage.
async fn readyz(State(state): State<HealthState>) -> Response {
    let consumers = state.consumers.clone();
    let readiness = check_dependencies(
        &state.store,
        &state.limiter,
        state.objects.as_ref(),
        async move { consumers.all_consuming() },
    )
    .await;
    let status =
        StatusCode::from_u16(readiness.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (status, Json(readiness.to_json())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_down_past_the_grace_fails_liveness() {
        let consumers = Consumers::new(["acme".to_owned(), "beta".to_owned()]);
        assert!(consumers.all_consuming().is_err());
        consumers.consuming(0);
        consumers.consuming(1);
        assert!(consumers.all_consuming().is_ok());
        consumers.down(1, "connection lost");
        let reason = consumers.all_consuming().unwrap_err();
        assert!(reason.contains("beta: connection lost"), "{reason}");
        assert!(
            consumers
                .down_longer_than(Duration::from_secs(60))
                .is_empty()
        );
        assert_eq!(consumers.down_longer_than(Duration::ZERO), ["beta"]);
    }
}
