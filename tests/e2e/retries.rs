//! Failed attempts wait in a delay-tier queue, then run again; out of attempts → dead.

use std::time::Duration;

use engine_shared::JobStatus;
use engine_tests::services::queue_depth;
use engine_tests::{FleetOptions, TestFleet};
use serde_json::json;

#[tokio::test]
async fn a_failing_job_is_retried_through_delay_tiers_then_dead_lettered() {
    let fleet = TestFleet::start(FleetOptions::default()).await;

    let id = fleet
        .client
        .submit(&json!({ "kind": "test.fail", "max_attempts": 3 }))
        .await
        .id();

    let record = fleet
        .wait_for_status(&id, JobStatus::Dead, Duration::from_secs(20))
        .await;
    assert_eq!(record.attempts, 3);
    assert!(
        record
            .last_error
            .unwrap()
            .contains("deliberate failure on attempt 3")
    );
    assert!(record.finished_at.is_some());
    let vhost = fleet.namespace.to_string();
    engine_tests::wait_until(
        "the dead message to reach jobs.dead",
        Duration::from_secs(10),
        || async { (queue_depth(&vhost, "jobs.dead").await == Some(1)).then_some(()) },
    )
    .await;
    fleet.stop().await;
}
