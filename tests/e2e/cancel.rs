//! Cancelling: a waiting job never runs; a running job's handler sees its token.

use std::time::Duration;

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_jobs::kinds::sleep::{Sleep, SleepArgs};
use engine_shared::JobStatus;
use engine_tests::{JobOptions, TestFleet, WAIT_DEADLINE};
use reqwest::StatusCode;

#[tokio::test]
async fn a_queued_job_cancelled_before_any_worker_runs_never_runs() {
    let mut fleet = TestFleet::builder().without_worker().start().await;
    let id = fleet.client.submit::<Noop>(NoopArgs {}).await;
    engine_tests::wait_until("the job to be published", WAIT_DEADLINE, || async {
        fleet.record(id).await.published_at.map(|_| ())
    })
    .await;

    let cancelled = fleet.client.cancel(id).await;
    fleet.start_worker().await;
    let witness = fleet.client.submit::<Noop>(NoopArgs {}).await;
    fleet.wait_for(witness, JobStatus::Succeeded).await;

    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    assert_eq!(cancelled.body["status"], "cancelled");
    let record = fleet.record(id).await;
    assert_eq!(record.status, JobStatus::Cancelled);
    assert_eq!(record.attempts, 0, "it never ran");
    assert!(record.started_at.is_none());
    fleet.stop().await;
}

#[tokio::test]
async fn a_scheduled_job_cancelled_before_its_time_never_runs() {
    let fleet = TestFleet::builder().start().await;
    let id = fleet
        .client
        .submit_with::<Noop>(
            NoopArgs {},
            JobOptions::default().delay(Duration::from_secs(1)),
        )
        .await;

    let cancelled = fleet.client.cancel(id).await;
    let witness = fleet
        .client
        .submit_with::<Noop>(
            NoopArgs {},
            JobOptions::default().delay(Duration::from_millis(1500)),
        )
        .await;
    fleet.wait_for(witness, JobStatus::Succeeded).await;

    assert_eq!(cancelled.status, StatusCode::OK);
    let record = fleet.record(id).await;
    assert_eq!(record.status, JobStatus::Cancelled);
    assert!(
        record.published_at.is_none(),
        "a cancelled scheduled job is never released"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_running_job_sees_its_cancellation_token() {
    let fleet = TestFleet::builder().start().await;
    let id = fleet.client.submit::<Sleep>(SleepArgs { ms: 60000 }).await;
    fleet.wait_for(id, JobStatus::Running).await;

    let requested = fleet.client.cancel(id).await;

    assert_eq!(requested.status, StatusCode::ACCEPTED, "{requested:?}");
    assert_eq!(requested.body["cancel_requested"], true);
    let record = fleet
        .wait_for_within(id, JobStatus::Cancelled, Duration::from_secs(10))
        .await;
    assert_eq!(record.attempts, 1);
    fleet.stop().await;
}

#[tokio::test]
async fn cancelling_a_finished_job_is_a_conflict() {
    let fleet = TestFleet::builder().start().await;
    let id = fleet.client.submit::<Noop>(NoopArgs {}).await;
    fleet.wait_for(id, JobStatus::Succeeded).await;

    let answer = fleet.client.cancel(id).await;

    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("already finished as succeeded")
    );
    assert_eq!(
        fleet.record(id).await.status,
        JobStatus::Succeeded,
        "nothing changed"
    );
    fleet.stop().await;
}
