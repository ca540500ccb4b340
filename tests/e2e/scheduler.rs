//! The scheduler releases due jobs from PostgreSQL; with several API replicas, one runs at
//! a time and no job is ever released twice.

use std::time::Duration;

use engine_tests::services::queue_depth;
use engine_tests::{FleetOptions, TestFleet, wait_until};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn two_replicas_schedulers_release_each_due_job_exactly_once() {
    let mut fleet = TestFleet::start(FleetOptions {
        worker: false,
        ..FleetOptions::default()
    })
    .await;
    fleet.start_api_replica().await;
    fleet.start_api_replica().await;
    let jobs: Vec<_> = (0..300)
        .map(|_| json!({ "kind": "noop", "delay": 1 }))
        .collect();
    let batch = fleet
        .client
        .post("/v1/jobs/batch", &json!({ "jobs": jobs }))
        .await;
    assert_eq!(batch.status, StatusCode::ACCEPTED);
    assert_eq!(batch.body["jobs"][0]["status"], "scheduled");
    let ids: Vec<String> = batch.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap().to_owned())
        .collect();

    wait_until(
        "every job to be released and published",
        Duration::from_secs(30),
        || async {
            for id in &ids {
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
