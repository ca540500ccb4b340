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
use engine_shared::objects::ObjectStore;
use engine_shared::store::Store;

use crate::context::NamespaceIndex;

/// How often a namespace's supervisor proves it is alive, consuming or reconnecting.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// One namespace's consumers: up, or down since when and why; and the supervisor's last
/// sign of life.
#[derive(Clone, Debug)]
struct ConsumerState {
    namespace: String,
    consuming: bool,
    since: Instant,
    reason: String,
    heartbeat: Instant,
    /// The supervisor ended without being asked to (it panicked or returned).
    stopped: bool,
}

/// The consumers' states, one per served namespace, updated as they connect and drop.
#[derive(Debug)]
pub struct Consumers {
    /// By [`NamespaceIndex`].
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
                        heartbeat: now,
                        stopped: false,
                    })
                    .collect(),
            ),
        }
    }

    /// Namespace `index`'s consumers are up.
    pub fn consuming(&self, index: NamespaceIndex) {
        self.set(index, true, String::new());
    }

    /// Namespace `index`'s consumers are down, for `reason`.
    pub fn down(&self, index: NamespaceIndex, reason: impl Into<String>) {
        self.set(index, false, reason.into());
    }

    /// Namespace `index`'s supervisor is alive (consuming, or retrying a connection).
    pub fn alive(&self, index: NamespaceIndex) {
        let mut states = self.states.lock().expect("never poisoned");
        if let Some(state) = states.get_mut(usize::from(index)) {
            state.heartbeat = Instant::now();
        }
    }

    /// Namespace `index`'s supervisor ended on its own: nothing will reconnect it.
    pub fn stopped(&self, index: NamespaceIndex) {
        let mut states = self.states.lock().expect("never poisoned");
        if let Some(state) = states.get_mut(usize::from(index)) {
            state.stopped = true;
            state.consuming = false;
            state.reason = "the consumer supervisor stopped".into();
        }
    }

    fn set(&self, index: NamespaceIndex, consuming: bool, reason: String) {
        let mut states = self.states.lock().expect("never poisoned");
        if let Some(state) = states.get_mut(usize::from(index)) {
            if state.consuming != consuming {
                state.since = Instant::now();
            }
            state.consuming = consuming;
            state.reason = reason;
            state.heartbeat = Instant::now();
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

    /// Namespaces whose supervisor stopped, or gave no sign of life for `grace`
    /// (liveness). A broker that cannot be reached is not one of them: the supervisor keeps
    /// retrying, and restarting the process would not help (that is readiness's business).
    fn stuck(&self, grace: Duration) -> Vec<String> {
        let states = self.states.lock().expect("never poisoned");
        states
            .iter()
            .filter(|state| state.stopped || state.heartbeat.elapsed() > grace)
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

/// Liveness: 503 once a namespace's consumer supervisor has stopped or shown no sign of
/// life for `worker.liveness_grace_secs` (a consumer that silently stopped), 200 otherwise.
async fn healthz(State(state): State<HealthState>) -> Response {
    let stuck = state.consumers.stuck(state.liveness_grace);
    if stuck.is_empty() {
        Json(json!({ "status": "healthy" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unhealthy",
                "reason": format!(
                    "consumer supervisor stopped or silent for over {}s in {}",
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
    fn down_consumers_fail_readiness_and_a_stopped_supervisor_fails_liveness() {
        let consumers = Consumers::new(["acme".to_owned(), "beta".to_owned()]);
        let (acme, beta) = (NamespaceIndex::new(0), NamespaceIndex::new(1));
        assert!(consumers.all_consuming().is_err());
        consumers.consuming(acme);
        consumers.consuming(beta);
        assert!(consumers.all_consuming().is_ok());
        consumers.down(beta, "connection lost");
        let reason = consumers.all_consuming().unwrap_err();
        assert!(reason.contains("beta: connection lost"), "{reason}");
        // Down but retrying: alive.
        assert!(consumers.stuck(Duration::from_secs(60)).is_empty());
        consumers.stopped(acme);
        assert_eq!(consumers.stuck(Duration::from_secs(60)), ["acme"]);
        // Silent past the grace: stuck too.
        assert_eq!(consumers.stuck(Duration::ZERO).len(), 2);
    }
}
