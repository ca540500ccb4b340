//! Namespaces: one namespace's key can neither see nor touch another's jobs.

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_shared::JobStatus;
use engine_tests::{JobOptions, TestFleet};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_key_of_one_namespace_cannot_read_cancel_or_list_another_namespaces_job() {
    let fleet = TestFleet::builder()
        .without_worker()
        .namespaces(2)
        .start()
        .await;
    let (a, b) = (&fleet.tenants[0], &fleet.tenants[1]);
    // No worker runs the jobs: only what each key may see of them matters.
    fleet.expect_unfinished();
    let b_job = b
        .client
        .submit_with::<Noop>(
            NoopArgs {},
            JobOptions::default().idempotency_key("shared-key"),
        )
        .await;

    let read = a.client.job(b_job).await;
    let cancel = a.client.cancel(b_job).await;
    let listed = a.client.get("/v1/jobs").await;
    let same_key_in_a = a
        .client
        .submit_json(&json!({ "kind": "noop", "idempotency_key": "shared-key" }))
        .await;

    assert_eq!(
        read.status,
        StatusCode::NOT_FOUND,
        "existence must not leak: {read:?}"
    );
    assert_eq!(read.body["detail"], "job not found");
    assert_eq!(cancel.status, StatusCode::NOT_FOUND);
    assert!(!listed.job_ids().contains(&b_job));
    assert_eq!(
        same_key_in_a.status,
        StatusCode::ACCEPTED,
        "idempotency keys are per namespace"
    );
    assert_ne!(same_key_in_a.job_id(), b_job);
    let b_record = fleet.record_in(&b.namespace, b_job).await.unwrap();
    assert_eq!(b_record.status, JobStatus::Queued, "B's job untouched");
    assert!(b_record.cancel_requested_at.is_none());
    assert!(fleet.record_in(&a.namespace, b_job).await.is_none());
    fleet.stop().await;
}

#[tokio::test]
async fn each_namespace_has_its_own_vhost_and_its_jobs_run_there() {
    let fleet = TestFleet::builder().namespaces(2).start().await;
    let (a, b) = (&fleet.tenants[0], &fleet.tenants[1]);

    let a_job = a.client.submit::<Noop>(NoopArgs {}).await;
    let b_job = b.client.submit::<Noop>(NoopArgs {}).await;

    engine_tests::wait_until(
        "both jobs to succeed",
        std::time::Duration::from_secs(20),
        || async {
            let a_done = fleet.record_in(&a.namespace, a_job).await?.status == JobStatus::Succeeded;
            let b_done = fleet.record_in(&b.namespace, b_job).await?.status == JobStatus::Succeeded;
            (a_done && b_done).then_some(())
        },
    )
    .await;
    fleet.stop().await;
}
