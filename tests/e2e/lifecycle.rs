//! The way of a job: submit → outbox → broker → worker → final state.

use std::time::Duration;

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_jobs::kinds::sleep::{Sleep, SleepArgs};
use engine_shared::{JobId, JobStatus};
use engine_tests::test_kinds::{NoArgs, Panics};
use engine_tests::{JobOptions, TestFleet, WAIT_DEADLINE, wait_until};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_submitted_job_runs_to_succeeded() {
    let fleet = TestFleet::builder().start().await;

    let answer = fleet
        .client
        .submit_json(&json!({ "kind": "sleep", "args": { "ms": 10 } }))
        .await;

    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    assert_eq!(answer.body["status"], "queued");
    let id = answer.job_id();
    assert_eq!(id.as_uuid().get_version_num(), 7, "ids are UUIDv7");
    let record = fleet.wait_for(id, JobStatus::Succeeded).await;
    assert_eq!(record.attempts, 1);
    assert_eq!(record.result, Some(json!({ "slept_ms": 10 })));
    assert!(
        record.published_at.is_some()
            && record.started_at.is_some()
            && record.finished_at.is_some()
    );
    let read = fleet.client.job(id).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["status"], "succeeded");
    fleet.stop().await;
}

#[tokio::test]
async fn a_batch_is_stored_in_one_go_and_every_job_runs() {
    let fleet = TestFleet::builder().start().await;
    let jobs: Vec<_> = (0..200).map(|_| json!({ "kind": "noop" })).collect();

    let answer = fleet
        .client
        .post("/v1/jobs/batch", &json!({ "jobs": jobs }))
        .await;

    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    assert_eq!(answer.job_ids().len(), 200);
    wait_until("all 200 jobs to succeed", WAIT_DEADLINE, || async {
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
    let fleet = TestFleet::builder().start().await;
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
    let fleet = TestFleet::builder().start().await;
    let job = json!({ "kind": "noop", "idempotency_key": "order-42" });
    // Only the answers and the listing matter, not whether the jobs ran yet.
    fleet.expect_unfinished();

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
    assert_eq!(second.job_id(), first.job_id());
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
    let fleet = TestFleet::builder().start().await;
    let job = json!({ "kind": "noop", "idempotency_key": "same" });
    // Only the answers matter, not whether the job ran yet.
    fleet.expect_unfinished();

    let answers =
        futures_util::future::join_all((0..20).map(|_| fleet.client.submit_json(&job))).await;

    let ids: std::collections::HashSet<JobId> = answers.iter().map(|a| a.job_id()).collect();
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
    let fleet = TestFleet::builder().start().await;

    let answer = fleet
        .client
        .submit_json(&json!({ "kind": "noop", "delay": 0.5 }))
        .await;

    assert_eq!(answer.body["status"], "scheduled");
    let id = answer.job_id();
    let record = fleet.wait_for(id, JobStatus::Succeeded).await;
    assert!(
        record.started_at.unwrap() >= record.run_at,
        "it did not start before run_at"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn listing_pages_newest_first_with_filters() {
    let fleet = TestFleet::builder().without_worker().start().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            fleet
                .client
                .submit_with::<Noop>(NoopArgs {}, JobOptions::default().queue("bulk"))
                .await,
        );
    }
    fleet.client.submit::<Noop>(NoopArgs {}).await;
    // Nothing runs them: the test reads only the listing.
    fleet.expect_unfinished();

    let first = fleet.client.get("/v1/jobs?queue=bulk&limit=3").await;
    let next = first.body["next"].as_str().unwrap().to_owned();
    let second = fleet
        .client
        .get(&format!("/v1/jobs?queue=bulk&limit=3&before={next}"))
        .await;

    ids.reverse();
    assert_eq!(first.job_ids(), ids[..3]);
    assert_eq!(second.job_ids(), ids[3..]);
    assert!(second.body["next"].is_null());
    fleet.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_is_a_failed_attempt_and_the_worker_lives_on() {
    let fleet = TestFleet::builder().start().await;

    let panicking = fleet
        .client
        .submit_with::<Panics>(NoArgs {}, JobOptions::default().max_attempts(1))
        .await;
    let record = fleet.wait_for(panicking, JobStatus::Dead).await;
    let after = fleet.client.submit::<Noop>(NoopArgs {}).await;

    assert!(record.last_error.unwrap().contains("deliberate test panic"));
    fleet.wait_for(after, JobStatus::Succeeded).await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_job_over_its_timeout_fails_that_attempt() {
    let fleet = TestFleet::builder().start().await;

    let id = fleet
        .client
        .submit_with::<Sleep>(
            SleepArgs { ms: 10000 },
            JobOptions::default()
                .timeout(Duration::from_millis(200))
                .max_attempts(1),
        )
        .await;

    let record = fleet.wait_for(id, JobStatus::Dead).await;
    assert!(
        record
            .last_error
            .unwrap()
            .contains("timed out after 0.200s")
    );
    fleet.stop().await;
}
