//! The rescuer: a job nobody runs and no message will deliver is handed back to work within
//! `rescue.after_secs` — an attempt whose worker died and whose message was lost, a queued
//! job whose message was lost — while a legitimate backlog gets no duplicates.

use std::time::Duration;

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_jobs::kinds::sleep::{Sleep, SleepArgs};
use engine_shared::JobStatus;
use engine_tests::settings::RescueSection;
use engine_tests::{JobOptions, TestFleet, TestSettings, services, wait_until};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);
/// A bound of 3 s (a pass every 0.6 s) and 1 s leases.
fn quick_rescue(settings: &mut TestSettings) {
    settings.rescue = Some(RescueSection {
        after_secs: 3,
        lease_secs: 1,
    });
}

#[tokio::test]
async fn an_attempt_whose_worker_died_and_whose_message_was_lost_is_rescued_and_completed() {
    let fleet = TestFleet::builder()
        .without_worker()
        .settings(quick_rescue)
        .start()
        .await;
    let mut doomed = fleet.spawn_worker_process(2, 10);
    let id = fleet
        .submit_until_running::<Sleep>(SleepArgs { ms: 1500 }, JobOptions::default())
        .await;
    doomed.kill();
    // The redelivery the broker would make is lost too.
    services::purge_returned(fleet.namespace.as_str(), "jobs.default").await;
    let survivor = fleet.spawn_worker_process(2, 10);

    let record = fleet.wait_for(id, JobStatus::Succeeded).await;
    assert_eq!(record.attempts, 2, "the dead attempt and the rescued one");
    let errors = fleet.client.job(id).await.body["errors"].clone();
    assert_eq!(errors[0]["kind"], "crashed", "{errors}");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("stopped renewing its lease"),
        "{errors}"
    );
    drop(survivor);
}

#[tokio::test]
async fn a_queued_job_whose_message_was_lost_is_republished_and_runs() {
    let mut fleet = TestFleet::builder()
        .without_worker()
        .settings(quick_rescue)
        .start()
        .await;
    let id = fleet.client.submit::<Noop>(NoopArgs {}).await;
    wait_until("the job to be published", DEADLINE, || async {
        fleet.record(id).await.published_at.map(|_| ())
    })
    .await;
    services::purge_queue(fleet.namespace.as_str(), "jobs.default").await;
    fleet.start_worker().await;

    let record = fleet.wait_for(id, JobStatus::Succeeded).await;
    assert_eq!(record.attempts, 1);
    fleet.stop().await;
}

#[tokio::test]
async fn a_backlog_of_50000_with_no_worker_gets_no_duplicates() {
    let fleet = TestFleet::builder()
        .without_worker()
        .settings(|s| {
            s.rescue = Some(RescueSection {
                after_secs: 2,
                lease_secs: 1,
            });
            // Only the fast path publishes: the sweeper's duplicates of late stamps are not
            // what this test counts.
            s.relay.publish_grace_ms = 30_000;
        })
        .start()
        .await;
    // The backlog stays: no worker ever runs it.
    fleet.expect_unfinished();
    const JOBS: usize = 50_000;
    let batch: Vec<_> = (0..1_000).map(|_| json!({ "kind": "noop" })).collect();
    for _ in 0..JOBS / 1_000 {
        let answer = fleet
            .client
            .post("/v1/jobs/batch", &json!({ "jobs": batch }))
            .await;
        assert!(answer.status.is_success(), "{answer:?}");
    }
    let vhost = fleet.namespace.as_str().to_owned();
    let rows = sqlx::PgPool::connect(&services::database_url())
        .await
        .unwrap();
    wait_until(
        "every job to be published",
        Duration::from_secs(120),
        || async {
            let unpublished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE namespace = $1 AND published_at IS NULL",
            )
            .bind(&vhost)
            .fetch_one(&rows)
            .await
            .unwrap();
            (unpublished == 0).then_some(())
        },
    )
    .await;
    let published = services::queue_depth(&vhost, "jobs.default").await.unwrap();
    assert!(published as usize >= JOBS, "{published}");
    // Twice the bound, every job unstarted all along.
    wait_until("twice rescue.after_secs to pass", DEADLINE, || async {
        let fresh: bool = sqlx::query_scalar(
            "SELECT max(published_at) > now() - interval '4 seconds' FROM jobs WHERE namespace = $1",
        )
        .bind(&vhost)
        .fetch_one(&rows)
        .await
        .unwrap();
        (!fresh).then_some(())
    })
    .await;

    assert_eq!(
        services::queue_depth(&vhost, "jobs.default").await,
        Some(published),
        "the rescuer republished jobs that were only waiting their turn"
    );
    fleet.stop().await;
}
