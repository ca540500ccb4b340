//! Through a transaction-mode pooler (a PgBouncer of the test's own, as behind Neon's
//! `-pooler` endpoint): with `database.pooler = "transaction"` a job's paths work (submit,
//! publish, start, finish, retry, schedule, cancel, bury, redrive, retry one, list, the
//! metrics scrape; not the archive or backups), and without it the store's named statements
//! break, which is why the setting exists.

use std::time::Duration;

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_shared::config::{DatabaseSettings, Pooler};
use engine_shared::store::{JobFilter, Store};
use engine_shared::{JobId, JobStatus, Namespace};
use engine_tests::test_kinds::{AlwaysFails, Flaky, FlakyArgs, NoArgs};
use engine_tests::{JobOptions, PgBouncer, PgBouncerOptions, TestFleet, wait_until};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn submit_run_retry_schedule_cancel_and_redrive_work_through_a_transaction_pooler() {
    let bouncer = PgBouncer::start(PgBouncerOptions {
        server_connections: 2,
        ignore_startup_parameters: false,
    });
    let fleet = TestFleet::builder()
        .settings(|s| s.use_transaction_pooler(bouncer.database_url()))
        .start()
        .await;
    let transactions_before = bouncer.stat("total_xact_count");

    // Submitted, published by the fast path, started and finished.
    fleet
        .client
        .submit_copies(60, &json!({ "kind": "noop" }))
        .await;
    // A retry through a delay tier, a scheduled job the scheduler publishes, a cancellation.
    let flaky = fleet
        .client
        .submit_with::<Flaky>(
            FlakyArgs { fail_times: 1 },
            JobOptions::default().max_attempts(3),
        )
        .await;
    let scheduled = fleet
        .client
        .submit_with::<Noop>(
            NoopArgs {},
            JobOptions::default().delay(Duration::from_secs(1)),
        )
        .await;
    let later = fleet
        .client
        .submit_with::<Noop>(
            NoopArgs {},
            JobOptions::default().delay(Duration::from_secs(600)),
        )
        .await;
    let cancelled = fleet.client.cancel(later).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    // Buried after its one attempt, then redriven.
    let doomed = fleet
        .client
        .submit_with::<AlwaysFails>(NoArgs {}, JobOptions::default().max_attempts(1))
        .await;
    fleet.wait_for(doomed, JobStatus::Dead).await;
    let redriven = fleet
        .client
        .post("/v1/jobs/redrive", &json!({ "kind": "test.fail" }))
        .await;
    assert_eq!(redriven.status, StatusCode::OK, "{redriven:?}");

    wait_until(
        "the 62 jobs to succeed through the pooler",
        Duration::from_secs(60),
        || async { (fleet.count_in_status(JobStatus::Succeeded).await == 62).then_some(()) },
    )
    .await;
    assert_eq!(fleet.record(flaky).await.attempts, 2);
    assert_eq!(fleet.record(scheduled).await.status, JobStatus::Succeeded);
    assert_eq!(fleet.record(later).await.status, JobStatus::Cancelled);
    buried_after_redrives(&fleet, doomed, 1).await;
    // Retried one at a time, and buried once more.
    let retried = fleet
        .client
        .post(&format!("/v1/jobs/{doomed}/retry"), &json!({}))
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{retried:?}");
    buried_after_redrives(&fleet, doomed, 2).await;

    let listed = fleet
        .client
        .get("/v1/jobs?status=succeeded&limit=100")
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    assert_eq!(listed.body["jobs"].as_array().map(Vec::len), Some(62));
    // The scrape reads the outbox backlog from PostgreSQL.
    let metrics = fleet.client.get_raw("/metrics", &[]).await;
    assert_eq!(metrics.0, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&metrics.2).contains("tl_outbox_backlog"),
        "the outbox backlog was read"
    );

    // The fleet's statements really went through the pooler: each job's submission, start
    // and finish is at least one transaction there.
    let transactions = bouncer.stat("total_xact_count") - transactions_before;
    assert!(
        transactions >= 3 * 62,
        "only {transactions} transactions went through PgBouncer"
    );
    fleet.stop().await;
}

/// Waits until job `id` is dead again after its `redrives`-th revival.
async fn buried_after_redrives(fleet: &TestFleet, id: JobId, redrives: i32) {
    wait_until(
        &format!("job {id} to be buried after {redrives} redrives"),
        Duration::from_secs(30),
        || async {
            let record = fleet.record(id).await;
            (record.status == JobStatus::Dead && record.redrives == redrives).then_some(())
        },
    )
    .await;
}

/// Runs the same reads from several tasks at once through `pooler`; returns the errors.
async fn concurrent_reads(url: &str, pooler: Pooler) -> Vec<String> {
    let store = Store::connect_lazy(&DatabaseSettings {
        url: url.to_owned().into(),
        max_connections: 6,
        acquire_timeout: Duration::from_secs(5),
        migrate_on_start: false,
        pooler,
    })
    .unwrap();
    let namespace = Namespace::parse(&format!("pooler{}", rand::random::<u32>())).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (store, namespace) = (store.clone(), namespace.clone());
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for _ in 0..25 {
                let id = JobId::new();
                let filter = JobFilter {
                    status: Some(JobStatus::Dead),
                    kind: None,
                    queue: None,
                    error: None,
                    before: None,
                    limit: 5,
                    max_bytes: 1 << 20,
                };
                let results = [
                    store.job_status(&namespace, id).await.map(drop),
                    store.get_job(&namespace, id).await.map(drop),
                    store.list_jobs(&namespace, &filter).await.map(drop),
                ];
                errors.extend(
                    results
                        .into_iter()
                        .filter_map(Result::err)
                        .map(|e| format!("{e:#}")),
                );
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for task in tasks {
        errors.extend(task.await.unwrap());
    }
    store.close().await;
    errors
}

#[tokio::test]
async fn named_statements_break_behind_a_transaction_pooler_and_units_do_not() {
    // One server connection that every client takes turns on; the start-up parameters a
    // direct client sends are let through, so what breaks is the statements.
    let bouncer = PgBouncer::start(PgBouncerOptions {
        server_connections: 1,
        ignore_startup_parameters: true,
    });
    let url = bouncer.database_url();

    let direct_style = concurrent_reads(&url, Pooler::None).await;
    assert!(
        direct_style
            .iter()
            .any(|e| e.contains("prepared statement")),
        "named statements were expected to collide on the shared server connection; \
         errors: {direct_style:?}"
    );

    let pooled = concurrent_reads(&url, Pooler::Transaction).await;
    assert!(
        pooled.is_empty(),
        "through the pooler with database.pooler = transaction: {pooled:?}\n{}",
        bouncer.log_text()
    );
}
