//! The way of a job: submit → outbox → broker → worker → final state.

use std::time::Duration;

use engine_shared::JobStatus;
use engine_tests::{FleetOptions, TestFleet, wait_until};
use reqwest::StatusCode;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_submitted_job_runs_to_succeeded() {
    let fleet = TestFleet::start(FleetOptions::default()).await;

    let answer = fleet
        .client
        .submit_json(&json!({ "kind": "sleep", "args": { "ms": 10 } }))
        .await;

    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    assert_eq!(answer.body["status"], "queued");
    let id = answer.id();
    assert_eq!(
        uuid::Uuid::parse_str(&id).unwrap().get_version_num(),
        7,
        "ids are UUIDv7"
    );
    let record = fleet
        .wait_for_status(&id, JobStatus::Succeeded, DEADLINE)
        .await;
    assert_eq!(record.attempts, 1);
    assert_eq!(record.result, Some(json!({ "slept_ms": 10 })));
    assert!(
        record.published_at.is_some()
            && record.started_at.is_some()
            && record.finished_at.is_some()
    );
    let read = fleet.client.job(&id).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["status"], "succeeded");
    fleet.stop().await;
}

#[tokio::test]
async fn a_batch_is_stored_in_one_go_and_every_job_runs() {
    let fleet = TestFleet::start(FleetOptions::default()).await;
    let jobs: Vec<_> = (0..200).map(|_| json!({ "kind": "noop" })).collect();

    let answer = fleet
        .client
        .post("/v1/jobs/batch", &json!({ "jobs": jobs }))
        .await;

    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    let ids: Vec<String> = answer.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 200);
    wait_until("all 200 jobs to succeed", DEADLINE, || async {
        let page = fleet
            .client
            .get("/v1/jobs?status=succeeded&limit=200")
            .await;
        (page.body["jobs"].as_array().unwrap().len() == 200).then_some(())
    })
    .await;
    fleet.stop().await;
}

#[tokio::test]
async fn an_invalid_job_in_a_batch_stores_none_of_them() {
    let fleet = TestFleet::start(FleetOptions::default()).await;
    let jobs =
        json!({ "jobs": [{ "kind": "noop" }, { "kind": "sleep", "args": { "ms": "long" } }] });

    let answer = fleet.client.post("/v1/jobs/batch", &jobs).await;

    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{answer:?}"
    );
    assert_eq!(answer.body["errors"][0]["field"], "jobs[1].args.ms");
    let listed = fleet.client.get("/v1/jobs").await;
    assert_eq!(listed.body["jobs"].as_array().unwrap().len(), 0);
    fleet.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_job_and_never_a_second() {
    let fleet = TestFleet::start(FleetOptions::default()).await;
    let job = json!({ "kind": "noop", "idempotency_key": "order-42" });

    let first = fleet.client.submit_json(&job).await;
    let second = fleet.client.submit_json(&job).await;
    let in_batch = fleet
        .client
        .post(
            "/v1/jobs/batch",
            &json!({ "jobs": [job.clone(), { "kind": "noop", "idempotency_key": "order-43" }] }),
        )
        .await;

    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.id(), first.id());
    assert_eq!(second.body["created"], false);
    assert_eq!(in_batch.body["jobs"][0]["id"], first.body["id"]);
    assert_eq!(in_batch.body["jobs"][0]["created"], false);
    assert_eq!(in_batch.body["jobs"][1]["created"], true);
    let listed = fleet.client.get("/v1/jobs?kind=noop").await;
    assert_eq!(
        listed.body["jobs"].as_array().unwrap().len(),
        2,
        "exactly two jobs exist"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn concurrent_duplicates_of_one_key_make_one_job() {
    let fleet = TestFleet::start(FleetOptions::default()).await;
    let job = json!({ "kind": "noop", "idempotency_key": "same" });

    let answers =
        futures_util::future::join_all((0..20).map(|_| fleet.client.submit_json(&job))).await;

    let ids: std::collections::HashSet<String> = answers.iter().map(|a| a.id()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.status == StatusCode::ACCEPTED)
            .count(),
        1
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_delayed_job_waits_in_postgres_then_runs() {
    let fleet = TestFleet::start(FleetOptions::default()).await;

    let answer = fleet
        .client
        .submit_json(&json!({ "kind": "noop", "delay": 0.5 }))
        .await;

    assert_eq!(answer.body["status"], "scheduled");
    let id = answer.id();
    let record = fleet
        .wait_for_status(&id, JobStatus::Succeeded, DEADLINE)
        .await;
    assert!(
        record.started_at.unwrap() >= record.run_at,
        "it did not start before run_at"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn listing_pages_newest_first_with_filters() {
    let fleet = TestFleet::start(FleetOptions {
        worker: false,
        ..FleetOptions::default()
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            fleet
                .client
                .submit_json(&json!({ "kind": "noop", "queue": "bulk" }))
                .await
                .id(),
        );
    }
    fleet.client.submit_json(&json!({ "kind": "noop" })).await;

    let first = fleet.client.get("/v1/jobs?queue=bulk&limit=3").await;
    let next = first.body["next"].as_str().unwrap().to_owned();
    let second = fleet
        .client
        .get(&format!("/v1/jobs?queue=bulk&limit=3&before={next}"))
        .await;

    let page_ids = |page: &serde_json::Value| -> Vec<String> {
        page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect()
    };
    ids.reverse();
    assert_eq!(page_ids(&first.body), ids[..3]);
    assert_eq!(page_ids(&second.body), ids[3..]);
    assert!(second.body["next"].is_null());
    fleet.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_is_a_failed_attempt_and_the_worker_lives_on() {
    let fleet = TestFleet::start(FleetOptions::default()).await;

    let panicking = fleet
        .client
        .submit_json(&json!({ "kind": "test.panic", "max_attempts": 1 }))
        .await
        .id();
    let record = fleet
        .wait_for_status(&panicking, JobStatus::Dead, DEADLINE)
        .await;
    let after = fleet
        .client
        .submit_json(&json!({ "kind": "noop" }))
        .await
        .id();

    assert!(record.last_error.unwrap().contains("deliberate test panic"));
    fleet
        .wait_for_status(&after, JobStatus::Succeeded, DEADLINE)
        .await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_job_over_its_timeout_fails_that_attempt() {
    let fleet = TestFleet::start(FleetOptions::default()).await;

    let id = fleet
        .client
        .submit_json(
            &json!({ "kind": "sleep", "args": { "ms": 10000 }, "timeout": 0.2, "max_attempts": 1 }),
        )
        .await
        .id();

    let record = fleet.wait_for_status(&id, JobStatus::Dead, DEADLINE).await;
    assert!(
        record
            .last_error
            .unwrap()
            .contains("timed out after 0.200s")
    );
    fleet.stop().await;
}
