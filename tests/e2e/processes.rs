//! Real worker processes: SIGKILL mid-job loses nothing; SIGTERM drains.

use std::time::Duration;

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_jobs::kinds::sleep::{Sleep, SleepArgs};
use engine_shared::{JobId, JobStatus};
use engine_tests::{JobOptions, TestFleet, wait_until};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_worker_killed_mid_job_leaves_it_to_another_that_completes_it_once() {
    let fleet = TestFleet::builder().without_worker().start().await;
    let mut doomed = fleet.spawn_worker_process(4, 10);
    let id = fleet.client.submit::<Sleep>(SleepArgs { ms: 1500 }).await;
    fleet.wait_for(id, JobStatus::Running).await;

    doomed.kill();
    let survivor = fleet.spawn_worker_process(4, 10);

    let record = fleet.wait_for(id, JobStatus::Succeeded).await;
    assert_eq!(
        record.attempts, 2,
        "the killed attempt and the one that completed"
    );
    assert_eq!(record.result, Some(json!({ "slept_ms": 1500 })));
    // Completed once: a later redelivery (there should be none) could not run it again.
    let later = fleet.client.submit::<Noop>(NoopArgs {}).await;
    fleet.wait_for(later, JobStatus::Succeeded).await;
    let again = fleet.record(id).await;
    assert_eq!((again.attempts, again.finished_at), (2, record.finished_at));
    drop(survivor);
}

#[tokio::test]
async fn sigterm_lets_running_jobs_finish_returns_the_rest_and_exits_0() {
    let fleet = TestFleet::builder().without_worker().start().await;
    let mut worker = fleet.spawn_worker_process(2, 20);
    let running: Vec<JobId> = futures_util::future::join_all(
        (0..2).map(|_| fleet.client.submit::<Sleep>(SleepArgs { ms: 1500 })),
    )
    .await;
    for &id in &running {
        fleet.wait_for(id, JobStatus::Running).await;
    }
    let bulk = JobOptions::default().queue("bulk");
    let waiting: Vec<JobId> = futures_util::future::join_all(
        (0..3).map(|_| fleet.client.submit_with::<Noop>(NoopArgs {}, bulk.clone())),
    )
    .await;

    worker.terminate();
    let status = worker.wait(DEADLINE).await;

    assert!(
        status.success(),
        "exit 0 after a drain; log:\n{}",
        worker.log_text()
    );
    for &id in &running {
        let record = fleet.record(id).await;
        assert_eq!(
            record.status,
            JobStatus::Succeeded,
            "in-flight jobs finish during the drain"
        );
        assert_eq!(record.attempts, 1);
    }
    for &id in &waiting {
        assert_eq!(
            fleet.record(id).await.status,
            JobStatus::Queued,
            "not started by a stopping worker"
        );
    }
    let _next = fleet.spawn_worker_process(2, 20);
    wait_until(
        "the returned jobs to run on the next worker",
        DEADLINE,
        || async {
            for &id in &waiting {
                if fleet.record(id).await.status != JobStatus::Succeeded {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

#[tokio::test]
async fn jobs_still_running_when_the_grace_period_ends_go_back_to_the_queue() {
    let fleet = TestFleet::builder().without_worker().start().await;
    let mut worker = fleet.spawn_worker_process(1, 1);
    let id = fleet.client.submit::<Sleep>(SleepArgs { ms: 4000 }).await;
    fleet.wait_for(id, JobStatus::Running).await;

    worker.terminate();
    let status = worker.wait(DEADLINE).await;
    let _next = fleet.spawn_worker_process(1, 10);

    assert!(status.success(), "log:\n{}", worker.log_text());
    assert!(
        worker.log_text().contains("grace period over"),
        "log:\n{}",
        worker.log_text()
    );
    let record = fleet.wait_for(id, JobStatus::Succeeded).await;
    assert_eq!(record.attempts, 2);
}
