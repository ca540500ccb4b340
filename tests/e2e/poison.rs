//! Messages that can never run go to the dead queue at once, with the reason in a header;
//! they never loop back into their queue and never stop the worker.

use std::time::Duration;

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_shared::JobStatus;
use engine_tests::test_kinds::{AbortsProcess, Flaky, FlakyArgs, NoArgs};
use engine_tests::{DeadLetter, JobOptions, TestFleet, VhostClient, wait_until};
use serde_json::json;

/// Waits for the next dead letter of the fleet's vhost.
async fn next_dead_letter(broker: &VhostClient) -> DeadLetter {
    wait_until("a dead letter", Duration::from_secs(20), || async {
        broker.take_dead_letters().await.into_iter().next()
    })
    .await
}

/// The worker is still healthy: a fresh job runs to success.
async fn assert_worker_still_runs_jobs(fleet: &TestFleet) {
    let id = fleet.client.submit::<Noop>(NoopArgs {}).await;
    fleet.wait_for(id, JobStatus::Succeeded).await;
}

#[tokio::test]
async fn a_message_that_is_not_json_goes_to_the_dead_queue_with_its_reason() {
    let fleet = TestFleet::builder().start().await;
    let broker = VhostClient::connect(fleet.namespace.as_str()).await;
    assert_worker_still_runs_jobs(&fleet).await; // the topology is declared

    broker.publish_raw("default", b"{ this is not json").await;

    let letter = next_dead_letter(&broker).await;
    assert_eq!(letter.body, b"{ this is not json");
    let reason = letter.reason.expect("a reason header");
    assert!(reason.starts_with("malformed message"), "{reason}");
    assert_worker_still_runs_jobs(&fleet).await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_message_for_a_job_that_does_not_exist_goes_to_the_dead_queue() {
    let fleet = TestFleet::builder().start().await;
    let broker = VhostClient::connect(fleet.namespace.as_str()).await;
    let ghost = engine_shared::JobId::new();
    assert_worker_still_runs_jobs(&fleet).await; // the topology is declared

    let envelope = json!({ "id": ghost, "kind": "noop", "queue": "default", "args": {} });
    broker
        .publish_raw("default", envelope.to_string().as_bytes())
        .await;

    let reason = next_dead_letter(&broker).await.reason.unwrap();
    assert_eq!(
        reason,
        format!("no job {ghost} in namespace {}", fleet.namespace)
    );
    assert_worker_still_runs_jobs(&fleet).await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_job_of_a_kind_this_worker_does_not_know_is_dead_at_once() {
    // The API knows `test.abort`; the in-process worker deliberately does not.
    let fleet = TestFleet::builder().start().await;
    let broker = VhostClient::connect(fleet.namespace.as_str()).await;

    let id = fleet
        .client
        .submit_with::<AbortsProcess>(NoArgs {}, JobOptions::default().max_attempts(5))
        .await;

    let record = fleet.wait_for(id, JobStatus::Dead).await;
    assert_eq!(record.attempts, 0, "it never ran");
    let letter = next_dead_letter(&broker).await;
    assert!(
        letter
            .reason
            .unwrap()
            .starts_with("unknown kind \"test.abort\"")
    );
    let errors = fleet.client.job(id).await.body["errors"].clone();
    assert_eq!(errors[0]["kind"], "poison", "{errors}");
    assert_worker_still_runs_jobs(&fleet).await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_job_whose_args_no_longer_fit_its_kind_is_dead_at_once() {
    let fleet = TestFleet::builder().start().await;
    let broker = VhostClient::connect(fleet.namespace.as_str()).await;
    // A real job, held back by its delay so that only our forged message reaches a worker.
    let id = fleet
        .client
        .submit_with::<Flaky>(
            FlakyArgs { fail_times: 0 },
            JobOptions::default().delay(Duration::from_secs(3600)),
        )
        .await;

    assert_worker_still_runs_jobs(&fleet).await; // the topology is declared
    // As a job submitted before its kind's args changed: its row (the truth) and its
    // message hold args the new kind refuses. A message alone cannot do this: one that
    // disagrees with its row is refused as forged (see `forgery`).
    let old_args = json!({ "fail_times": "many" });
    // Due now, as such a job is when its time comes.
    sqlx::query("UPDATE jobs SET args = $2, status = 'queued', run_at = now() WHERE id = $1")
        .bind(id.as_uuid())
        .bind(&old_args)
        .execute(fleet.store.pool())
        .await
        .unwrap();
    let message = json!({ "id": id, "kind": "test.flaky", "queue": "default", "args": old_args });
    broker
        .publish_raw("default", message.to_string().as_bytes())
        .await;

    let record = fleet.wait_for(id, JobStatus::Dead).await;
    // The row's args are judged as the handler takes them: a fatal failure, at once.
    let error = record.last_error.unwrap();
    assert!(
        error.contains("args no longer fit the kind") && error.contains("args.fail_times"),
        "{error}"
    );
    assert_eq!(record.attempts, 1, "never retried");
    next_dead_letter(&broker).await;
    assert_worker_still_runs_jobs(&fleet).await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_job_that_aborts_its_worker_process_is_buried_after_the_delivery_limit() {
    let fleet = TestFleet::builder()
        .without_worker()
        .settings(|s| s.retry.delivery_limit = 2)
        .start()
        .await;
    let broker = VhostClient::connect(fleet.namespace.as_str()).await;
    let id = fleet
        .client
        .submit_with::<AbortsProcess>(NoArgs {}, JobOptions::default().max_attempts(10))
        .await;

    // Each delivery kills the process that takes it; a new worker takes the redelivery,
    // as a Kubernetes Deployment would restart a pod.
    let mut crashes = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while fleet.record(id).await.status != JobStatus::Dead {
        assert!(
            std::time::Instant::now() < deadline,
            "the job was not buried after {crashes} crashes"
        );
        let mut worker = fleet.spawn_test_worker_process(1);
        loop {
            if fleet.record(id).await.status == JobStatus::Dead {
                worker.terminate();
                worker.wait(Duration::from_secs(20)).await;
                break;
            }
            if worker.try_exit().is_some() {
                crashes += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        crashes, 2,
        "the delivery and one redelivery each killed a worker; the next delivery buried it"
    );

    let errors = fleet.client.job(id).await.body["errors"].clone();
    assert_eq!(errors[0]["kind"], "crashed", "{errors}");
    let reason = next_dead_letter(&broker).await.reason.unwrap();
    assert!(
        reason.starts_with("2 deliveries ended without an outcome"),
        "{reason}"
    );
    fleet.stop().await;
}
