//! Failed attempts wait in a delay-tier queue, then run again; out of attempts → dead.

use std::time::Duration;

use engine_shared::{JobId, JobStatus};
use engine_tests::services::queue_depth;
use engine_tests::test_kinds::{
    AlwaysFails, FailsFatally, Flaky, FlakyArgs, NoArgs, Snoozes, SnoozesArgs,
};
use engine_tests::{JobOptions, TestFleet};
use serde_json::json;

#[tokio::test]
async fn a_failing_job_is_retried_through_delay_tiers_then_dead_lettered() {
    let fleet = TestFleet::builder().start().await;

    let id = fleet
        .client
        .submit_with::<AlwaysFails>(NoArgs {}, JobOptions::default().max_attempts(3))
        .await;

    let record = fleet.wait_for(id, JobStatus::Dead).await;
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

/// The errors recorded for job `id`, as `GET /v1/jobs/{id}` shows them.
async fn errors_of(fleet: &TestFleet, id: JobId) -> Vec<serde_json::Value> {
    let answer = fleet.client.job(id).await;
    answer.body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array in {answer:?}"))
        .clone()
}

#[tokio::test]
async fn a_job_failing_twice_then_succeeding_takes_three_attempts_through_the_tiers() {
    let fleet = TestFleet::builder().start().await;

    let id = fleet
        .client
        .submit_with::<Flaky>(
            FlakyArgs { fail_times: 2 },
            JobOptions::default().max_attempts(5),
        )
        .await;

    let record = fleet.wait_for(id, JobStatus::Succeeded).await;
    assert_eq!(record.attempts, 3, "two failures, then the success");
    assert_eq!(
        record.result,
        Some(json!({ "succeeded_on_attempt": 3 })),
        "the handler saw attempt 3"
    );
    let errors = errors_of(&fleet, id).await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    for (index, error) in errors.iter().enumerate() {
        assert_eq!(error["attempt"], json!(index + 1));
        assert_eq!(error["kind"], "error");
        assert!(error["message"].as_str().unwrap().contains("flaky failure"));
        // Settings: base 100 ms, max 500 ms, tiers 200 ms and 500 ms. A delay is rounded up
        // to a tier, and the recorded wait is that tier's TTL.
        let (via, delay) = (
            error["retry_via"].as_str().unwrap(),
            &error["retry_delay_ms"],
        );
        match via {
            "jobs.delay.200ms" => assert_eq!(delay, &json!(200)),
            "jobs.delay.500ms" => assert_eq!(delay, &json!(500)),
            other => panic!("unexpected retry route {other}"),
        }
        assert!(error["worker_id"].is_string());
        assert!(error["duration_ms"].is_number());
    }
    assert_eq!(
        errors[0]["retry_via"], "jobs.delay.200ms",
        "the first backoff (100-125 ms) rounds up to the 200 ms tier"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_fatal_error_kills_the_job_after_one_attempt() {
    let fleet = TestFleet::builder().start().await;

    let id = fleet
        .client
        .submit_with::<FailsFatally>(NoArgs {}, JobOptions::default().max_attempts(5))
        .await;

    let record = fleet.wait_for(id, JobStatus::Dead).await;
    assert_eq!(record.attempts, 1, "no retry after a fatal error");
    let errors = errors_of(&fleet, id).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["kind"], "fatal");
    assert!(errors[0]["retry_via"].is_null(), "no retry was scheduled");
    fleet.stop().await;
}

#[tokio::test]
async fn a_snooze_runs_the_job_again_later_without_counting_an_attempt() {
    let fleet = TestFleet::builder().start().await;

    let id = fleet
        .client
        .submit_with::<Snoozes>(
            SnoozesArgs { times: 2, ms: 100 },
            JobOptions::default().max_attempts(1),
        )
        .await;

    let record = fleet.wait_for(id, JobStatus::Succeeded).await;
    assert_eq!(
        record.attempts, 1,
        "snoozes are not attempts (max_attempts is 1)"
    );
    assert_eq!(record.snoozes, 2);
    assert!(
        errors_of(&fleet, id).await.is_empty(),
        "a snooze is no error"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_delay_longer_than_every_tier_waits_in_postgres_for_the_scheduler() {
    let fleet = TestFleet::builder().start().await;

    // 1.5 s is longer than the largest test tier (500 ms).
    let id = fleet
        .client
        .submit_with::<Flaky>(
            FlakyArgs { fail_times: 1 },
            JobOptions::default().backoff(Duration::from_millis(1500), Duration::from_millis(1500)),
        )
        .await;

    let waiting = fleet.wait_for(id, JobStatus::Retrying).await;
    assert!(
        waiting.published_at.is_none(),
        "back in the outbox, not in a delay tier"
    );
    assert!(waiting.run_at > chrono::Utc::now(), "due in the future");
    let errors = errors_of(&fleet, id).await;
    assert_eq!(errors[0]["retry_via"], "scheduler");
    assert_eq!(errors[0]["retry_delay_ms"], json!(1500));

    let record = fleet.wait_for(id, JobStatus::Succeeded).await;
    assert_eq!(record.attempts, 2);
    fleet.stop().await;
}

#[tokio::test]
async fn a_job_cancelled_while_it_waits_in_a_delay_tier_never_runs_again() {
    let fleet = TestFleet::builder().start().await;
    let vhost = fleet.namespace.to_string();

    let id = fleet
        .client
        .submit_with::<Flaky>(
            FlakyArgs { fail_times: 1 },
            JobOptions::default().backoff(Duration::from_millis(400), Duration::from_millis(400)),
        )
        .await;
    engine_tests::wait_until(
        "the retry to be parked in the 500 ms tier",
        Duration::from_secs(20),
        || async { (queue_depth(&vhost, "jobs.delay.500ms").await == Some(1)).then_some(()) },
    )
    .await;
    let cancelled = fleet.client.cancel(id).await;
    assert_eq!(cancelled.status, reqwest::StatusCode::OK, "{cancelled:?}");

    // The parked message comes back from the 500 ms tier and is skipped.
    engine_tests::wait_until(
        "the retry message to leave the tier and the work queue",
        Duration::from_secs(10),
        || async {
            let parked = queue_depth(&vhost, "jobs.delay.500ms").await?;
            let waiting = queue_depth(&vhost, "jobs.default").await?;
            (parked == 0 && waiting == 0).then_some(())
        },
    )
    .await;
    let record = fleet.record(id).await;
    assert_eq!(record.status, JobStatus::Cancelled);
    assert_eq!(record.attempts, 1, "the retry never ran");
    fleet.stop().await;
}
