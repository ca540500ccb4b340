//! `/readyz` answered from one recent check: the check runs a PostgreSQL query, a Redis
//! PING, an S3 HeadBucket and a broker channel per vhost, each billed by a managed service,
//! and the endpoint is unauthenticated. So a result is reused for [`FRESH_FOR`], and
//! callers that arrive while a check runs wait for that one instead of starting their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_shared::health::{Readiness, check_dependencies, checked};
use tokio::sync::Mutex;

use crate::state::AppState;

/// How long a readiness result is served before the dependencies are checked again:
/// short beside a probe's period (10 s in the manifests), long beside a flood.
pub const FRESH_FOR: Duration = Duration::from_secs(2);

/// The last readiness result and when its check began. The lock is held for the whole
/// check, which is what makes concurrent callers share it.
#[derive(Default)]
pub struct ReadinessCache {
    last: Mutex<Option<(Instant, Arc<Readiness>)>>,
}

impl ReadinessCache {
    /// A result at most [`FRESH_FOR`] old, checking the dependencies if there is none.
    pub async fn current(&self, state: &AppState) -> Arc<Readiness> {
        let mut last = self.last.lock().await;
        if let Some((at, readiness)) = last.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return readiness.clone();
        }
        let began = Instant::now();
        engine_shared::metrics::metrics().readiness_checks.inc();
        let readiness = Arc::new(
            check_dependencies(
                &state.store,
                &state.limiter,
                state.objects.as_ref(),
                checked(state.relay.ping_broker()),
            )
            .await,
        );
        *last = Some((began, readiness.clone()));
        readiness
    }
}
