//! Keeps the leases of this worker's running attempts alive: one statement per interval
//! for all of them (none while nothing runs), so the rescuer can tell a live attempt from
//! one whose worker died. The same answer names attempts a person cancelled (a broadcast
//! this worker may have missed while its control consumer was reconnecting) and attempts
//! this worker no longer holds (taken over after a lapse): both are asked to stop.

use std::sync::Arc;
use std::time::Duration;

use engine_shared::metrics::metrics;
use engine_shared::store::Store;
use tokio_util::sync::CancellationToken;

use crate::in_flight::InFlight;

/// After a failed renewal, the next try comes this soon: once PostgreSQL is back, live
/// attempts must show fresh leases before the rescuer's next look, not a whole `every` later.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Renews every `every` until `stop`; each lease lasts `lease` from its renewal.
pub async fn renew_until_stopped(
    store: Store,
    in_flight: Arc<InFlight>,
    lease: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(if failing { RETRY_AFTER_FAILURE } else { every }) => {}
        }
        let running = in_flight.running();
        if running.is_empty() {
            continue;
        }
        match store.renew_leases(&running, lease).await {
            Ok(renewal) => {
                failing = false;
                for attempt in &renewal.cancel {
                    if in_flight.cancel_attempt(*attempt) {
                        tracing::info!(job = %attempt.id, "cancel found at lease renewal; handler signalled");
                    }
                }
                for attempt in &renewal.lost {
                    if in_flight.cancel_attempt(*attempt) {
                        tracing::warn!(job = %attempt.id, "this attempt no longer holds its job (its lease lapsed and it was handed on); stopping it");
                    }
                }
            }
            Err(error) => {
                metrics().dependency_error("postgres");
                // Once per outage: the leases run out on their own if this lasts.
                if !failing {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "could not renew attempt leases"
                    );
                }
                failing = true;
            }
        }
    }
}
