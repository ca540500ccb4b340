//! The scheduler releases due jobs from PostgreSQL; with several API replicas, one runs at
//! a time and no job is ever released twice.

use std::time::Duration;

use engine_shared::JobStatus;
use engine_tests::services::queue_depth;
use engine_tests::{TestFleet, wait_until};
use serde_json::json;

#[tokio::test]
async fn two_replicas_schedulers_release_each_due_job_exactly_once() {
    let mut fleet = TestFleet::builder().without_worker().start().await;
    // No worker consumes: the messages are counted in the queue.
    fleet.expect_unfinished();
    fleet.start_api_replica().await;
    fleet.start_api_replica().await;
    let ids = fleet
        .client
        .submit_copies(300, &json!({ "kind": "noop", "delay": 1 }))
        .await;
    assert_eq!(fleet.record(ids[0]).await.status, JobStatus::Scheduled);

    wait_until(
        "every job to be released and published",
        Duration::from_secs(30),
        || async {
            for &id in &ids {
                fleet.record(id).await.published_at?;
            }
            Some(())
        },
    )
    .await;

    // No worker consumes: every message published is still in the queue.
    let vhost = fleet.namespace.to_string();
    assert_eq!(
        queue_depth(&vhost, "jobs.default").await,
        Some(300),
        "each job was published once by three racing schedulers"
    );
    fleet.stop().await;
}
