//! Dead jobs: listed by filter, retried one at a time, redriven by the hundred; the dead
//! queue holds their messages with the reason.

use std::time::Duration;

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_shared::JobStatus;
use engine_tests::test_kinds::{FailsFatally, NoArgs, heal};
use engine_tests::{TestFleet, VhostClient, wait_until};
use reqwest::StatusCode;
use serde_json::json;

/// Jobs of the fleet's namespace with `status`, counted in PostgreSQL.
async fn count(fleet: &TestFleet, status: JobStatus) -> usize {
    let page = fleet
        .client
        .get(&format!("/v1/jobs?status={}&limit=200", status.as_str()))
        .await;
    page.body["jobs"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn redriving_a_hundred_dead_jobs_runs_every_one_to_success() {
    let fleet = TestFleet::builder()
        .settings(|s| s.worker.concurrency = 32)
        .start()
        .await;
    let ids = fleet
        .client
        .submit_copies(100, &json!({ "kind": "test.switch", "max_attempts": 1 }))
        .await;
    wait_until("all 100 jobs to die", Duration::from_secs(30), || async {
        (count(&fleet, JobStatus::Dead).await == 100).then_some(())
    })
    .await;

    let dry = fleet
        .client
        .post(
            "/v1/jobs/redrive",
            &json!({ "kind": "test.switch", "dry_run": true }),
        )
        .await;
    assert_eq!(dry.body, json!({ "dry_run": true, "matched": 100 }));
    assert_eq!(
        count(&fleet, JobStatus::Dead).await,
        100,
        "a dry run changes nothing"
    );

    heal(&fleet.namespace);
    let redriven = fleet
        .client
        .post(
            "/v1/jobs/redrive",
            &json!({ "kind": "test.switch", "error": "SWITCH IS" }),
        )
        .await;
    assert_eq!(redriven.status, StatusCode::OK, "{redriven:?}");
    assert_eq!(redriven.body, json!({ "redriven": 100, "more": false }));

    wait_until("all 100 to succeed", Duration::from_secs(30), || async {
        (count(&fleet, JobStatus::Succeeded).await == 100).then_some(())
    })
    .await;
    let one = ids[0];
    let record = fleet.record(one).await;
    assert_eq!(record.attempts, 1, "fresh attempts after the redrive");
    assert_eq!(record.redrives, 1);
    let history = fleet.client.job(one).await.body["errors"].clone();
    assert_eq!(
        history.as_array().unwrap().len(),
        1,
        "the first life's error is kept: {history}"
    );
    assert_eq!(history[0]["redrive"], 0);
    fleet.stop().await;
}

#[tokio::test]
async fn a_dead_job_is_found_by_its_error_retried_alone_and_parked_with_a_reason() {
    let fleet = TestFleet::builder().start().await;
    let id = fleet.client.submit::<FailsFatally>(NoArgs {}).await;
    fleet.wait_for(id, JobStatus::Dead).await;

    let found = fleet
        .client
        .get("/v1/jobs?status=dead&error=Deliberate%20FATAL")
        .await;
    assert_eq!(found.job_ids()[0], id, "{found:?}");
    let none = fleet.client.get("/v1/jobs?status=dead&error=100%25").await;
    assert_eq!(none.body["jobs"], json!([]), "% is literal, not a wildcard");

    let broker = VhostClient::connect(fleet.namespace.as_str()).await;
    let letters = wait_until("the dead letter", Duration::from_secs(10), || async {
        let letters = broker.take_dead_letters().await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].message_id.as_deref(),
        Some(id.to_string().as_str())
    );
    assert_eq!(
        letters[0].reason.as_deref(),
        Some("out of attempts after attempt 1")
    );

    let retried = fleet
        .client
        .post(&format!("/v1/jobs/{id}/retry"), &json!({}))
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{retried:?}");
    assert_eq!(retried.body["status"], "queued");
    wait_until(
        "the retried job to die again",
        Duration::from_secs(20),
        || async {
            let record = fleet.record(id).await;
            (record.status == JobStatus::Dead && record.redrives == 1).then_some(())
        },
    )
    .await;
    let errors = fleet.client.job(id).await.body["errors"].clone();
    assert_eq!(
        errors.as_array().unwrap().len(),
        2,
        "both lives' errors: {errors}"
    );
    assert_eq!(errors[1]["redrive"], 1);

    let alive = fleet.client.submit::<Noop>(NoopArgs {}).await;
    fleet.wait_for(alive, JobStatus::Succeeded).await;
    let conflict = fleet
        .client
        .post(&format!("/v1/jobs/{alive}/retry"), &json!({}))
        .await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert!(
        conflict.body["detail"]
            .as_str()
            .unwrap()
            .contains("only dead or cancelled jobs can be retried")
    );
    fleet.stop().await;
}
