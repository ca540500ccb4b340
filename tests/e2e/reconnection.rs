//! Reconnection without a restart: a worker whose broker or database connection is cut
//! while jobs run picks up again when the server is back, and every job completes.
//! (The API's broker outage is in `outage.rs`, Redis's in `limits.rs`.)

use std::time::Duration;

use serde_json::json;

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_shared::JobStatus;
use engine_shared::metrics::{DependencyLabels, metrics};
use engine_tests::proxy::TcpProxy;
use engine_tests::wait::wait_until;
use engine_tests::{JobOptions, TestFleet, services};

const JOBS: usize = 40;

/// Submits [`JOBS`] sleep jobs, cuts `proxy` once some have started, keeps it cut until
/// `felt` says the worker has noticed, restores it, and waits for every job to succeed.
async fn survive_a_cut<F, Fut>(fleet: &TestFleet, proxy: &TcpProxy, felt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let ids = fleet
        .client
        .submit_copies(JOBS, &json!({ "kind": "sleep", "args": { "ms": 200 } }))
        .await;
    wait_until("some jobs to start", Duration::from_secs(20), || async {
        let started = fleet.count_in_status(JobStatus::Running).await
            + fleet.count_in_status(JobStatus::Succeeded).await;
        (started > 0).then_some(())
    })
    .await;
    proxy.cut();
    wait_until("the worker to feel the cut", Duration::from_secs(30), felt).await;
    let done_during_cut = fleet.count_in_status(JobStatus::Succeeded).await;
    assert!(
        done_during_cut < JOBS as i64,
        "the cut came too late to matter"
    );
    proxy.restore();
    for &id in &ids {
        fleet
            .wait_for_within(id, JobStatus::Succeeded, Duration::from_secs(60))
            .await;
    }
}

#[tokio::test]
async fn a_worker_cut_off_from_the_broker_mid_run_completes_every_job_once_it_returns() {
    let broker = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let fleet = TestFleet::builder()
        .settings(|s| {
            s.worker.concurrency = 4;
            s.serve_worker_health();
        })
        .worker_settings(|s| {
            s.amqp.url =
                services::amqp_url().replace("127.0.0.1:5672", &broker.address().to_string())
        })
        .start()
        .await;
    let health = fleet.worker_health.unwrap();
    // Felt once the worker reports its consumers down.
    survive_a_cut(&fleet, &broker, || async move {
        let ready = reqwest::get(format!("http://{health}/readyz")).await.ok()?;
        (ready.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_worker_cut_off_from_postgres_mid_run_completes_every_job_once_it_returns() {
    let database = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let fleet = TestFleet::builder()
        .settings(|s| s.worker.concurrency = 4)
        .worker_settings(|s| {
            s.database.url =
                services::database_url().replace("127.0.0.1:5432", &database.address().to_string())
        })
        .start()
        .await;
    // Felt once the worker has failed to record a transition (it retries, holding the
    // deliveries). The worker runs in this process, so its metrics are this process's.
    let postgres = DependencyLabels {
        dependency: "postgres".into(),
    };
    let before = metrics().dependency_errors.get_or_create(&postgres).get();
    survive_a_cut(&fleet, &database, || {
        let errors = metrics().dependency_errors.get_or_create(&postgres).get();
        async move { (errors > before).then_some(()) }
    })
    .await;
    fleet.stop().await;
}

/// A start that committed while its answer was lost: the worker's retry takes the job over
/// (it reads `running`, moved there by this very delivery) instead of skipping and acking a
/// job nobody would run.
#[tokio::test]
async fn a_start_whose_answer_is_lost_is_taken_over_not_skipped() {
    let database = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    // Plain text, so the proxy can see the job's id go by.
    let url = services::database_url().replace("127.0.0.1:5432", &database.address().to_string());
    let separator = if url.contains('?') { '&' } else { '?' };
    let fleet = TestFleet::builder()
        .worker_settings(|s| s.database.url = format!("{url}{separator}sslmode=disable"))
        .settings(|s| s.worker.concurrency = 2)
        .start()
        .await;
    // Due in a second, so the trigger is armed before any worker sees the job.
    let id = fleet
        .client
        .submit_with::<Noop>(
            NoopArgs {},
            JobOptions::default().delay(Duration::from_secs(1)),
        )
        .await;
    let uuid = id.as_uuid();
    // The start statement binds the job's id (binary, 16 bytes): its answer is lost.
    database.mute_answers_after(uuid.as_bytes());
    wait_until(
        "the start to commit without its answer",
        Duration::from_secs(20),
        || async { (fleet.record(id).await.status == JobStatus::Running).then_some(()) },
    )
    .await;
    // The worker still waits for the answer; a broken connection ends the wait in an error,
    // and its retry goes through a new connection.
    database.mute_answers_after(&[0xff; 64]);
    database.cut();
    database.restore();
    let record = fleet.wait_for(id, JobStatus::Succeeded).await;
    assert_eq!(
        record.attempts, 2,
        "the lost start counts as an attempt; the retry took the job over"
    );
    fleet.stop().await;
}
