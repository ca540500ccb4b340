//! The job path's interleavings, driven statement by statement against the real database:
//! a late fast-path stamp, a start PostgreSQL lost, a stale attempt from an earlier life,
//! the same job twice in one start batch. Each one used to strand or corrupt a job.

use std::time::Duration;

use engine_shared::retry::RetryRoute;

use engine_shared::store::{
    AttemptOutcome, ErrorKind, FinishRequest, NewJob, RetryOutcome, StartOutcome, StartRequest,
    StartedJob, Submitted,
};
use engine_shared::{JobId, JobStatus, Kind, QueueName};
use engine_tests::{TestFleet, services};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(60);

/// A fleet with no worker: the test plays the worker's part itself, and leaves the jobs
/// wherever its race left them.
async fn fleet() -> TestFleet {
    let fleet = TestFleet::builder().without_worker().start().await;
    fleet.expect_unfinished();
    fleet
}

async fn database() -> sqlx::PgPool {
    sqlx::PgPool::connect(&services::database_url())
        .await
        .expect("the test database")
}

fn new_job(fleet: &TestFleet, run_at: Option<chrono::DateTime<chrono::Utc>>) -> NewJob {
    NewJob {
        id: JobId::new(),
        namespace: fleet.namespace.clone(),
        kind: Kind::parse("noop").unwrap(),
        queue: QueueName::parse("default").unwrap(),
        args: json!({}),
        priority: 0,
        max_attempts: 3,
        timeout_ms: 10_000,
        idempotency_key: None,
        run_at,
        backoff: None,
        traceparent: None,
    }
}

/// Writes a job straight to the table (no fast path): it waits in the outbox.
async fn insert(fleet: &TestFleet, run_at: Option<chrono::DateTime<chrono::Utc>>) -> JobId {
    let job = new_job(fleet, run_at);
    let id = job.id;
    fleet.store.insert_jobs(&[job]).await.unwrap();
    id
}

/// A start request whose message body is the one [`new_job`] would publish.
fn request(fleet: &TestFleet, id: JobId, redelivered: bool) -> StartRequest {
    StartRequest {
        namespace: fleet.namespace.clone(),
        id,
        kind: Kind::parse("noop").unwrap(),
        queue: QueueName::parse("default").unwrap(),
        redelivered,
    }
}

async fn start(fleet: &TestFleet, id: JobId, redelivered: bool) -> StartOutcome {
    let request = request(fleet, id, redelivered);
    fleet.store.start_jobs(&[request], LEASE).await.unwrap()[0].clone()
}

async fn started(fleet: &TestFleet, id: JobId) -> StartedJob {
    match start(fleet, id, false).await {
        StartOutcome::Started(started) => started,
        other => panic!("job {id} did not start: {other:?}"),
    }
}

fn finish(
    id: JobId,
    started: &StartedJob,
    outcome: AttemptOutcome,
    retry: RetryRoute,
) -> FinishRequest {
    FinishRequest {
        id,
        outcome,
        duration: Duration::from_millis(5),
        retry,
        attempt: started.attempt,
        token: started.token,
    }
}

fn failed() -> AttemptOutcome {
    AttemptOutcome::Failed {
        kind: ErrorKind::Error,
        message: "boom".into(),
    }
}

#[tokio::test]
async fn a_late_fast_path_stamp_does_not_hide_a_long_retry_from_the_scheduler() {
    let fleet = fleet().await;
    let id = insert(&fleet, None).await;
    // The fast path published it; before its stamp lands, a worker runs it and fails it
    // with a wait longer than the largest tier: the row goes back to the outbox.
    let attempt = started(&fleet, id).await;
    let long = RetryRoute::Scheduler(Duration::from_millis(300));
    let finished = fleet
        .store
        .finish_jobs(&[finish(id, &attempt, failed(), long)], "test")
        .await
        .unwrap();
    assert_eq!(finished[0].status, Some(JobStatus::Retrying));

    fleet.store.mark_published(&[id.as_uuid()]).await.unwrap();

    let record = fleet.record(id).await;
    assert_eq!(record.status, JobStatus::Retrying);
    assert!(
        record.published_at.is_none(),
        "the late stamp hid the retry from the scheduler: {record:?}"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_scheduled_job_is_never_stamped_by_the_fast_path_and_the_scheduler_releases_it() {
    let fleet = fleet().await;
    let run_at = chrono::Utc::now() + chrono::Duration::hours(1);
    let job = new_job(&fleet, Some(run_at));
    let id = job.id;
    let outcome = fleet.store.insert_jobs(&[job]).await.unwrap();
    assert_eq!(
        outcome,
        vec![Submitted::Created {
            id,
            status: JobStatus::Scheduled
        }]
    );

    // A fast path that took it for queued (an API clock ahead of PostgreSQL's) stamps it.
    fleet.store.mark_published(&[id.as_uuid()]).await.unwrap();
    assert!(fleet.record(id).await.published_at.is_none());

    sqlx::query("UPDATE jobs SET run_at = now() - interval '1 second' WHERE id = $1")
        .bind(id.as_uuid())
        .execute(&database().await)
        .await
        .unwrap();
    // Its time comes: the fleet's scheduler must still see it, and release it.
    let record = engine_tests::wait_until(
        "the scheduler to release it",
        Duration::from_secs(10),
        || async {
            let record = fleet.record(id).await;
            (record.status == JobStatus::Queued && record.published_at.is_some()).then_some(record)
        },
    )
    .await;
    assert!(record.published_at.is_some());
    fleet.stop().await;
}

#[tokio::test]
async fn a_stale_attempt_from_an_earlier_life_cannot_finish_over_the_live_one() {
    let fleet = fleet().await;
    let id = insert(&fleet, None).await;
    let first_life = started(&fleet, id).await;
    // Its worker lost the broker; the job was buried and retried by a person meanwhile
    // (simulated: the outcome of another delivery made it dead).
    sqlx::query("UPDATE jobs SET status = 'dead', finished_at = now() WHERE id = $1")
        .bind(id.as_uuid())
        .execute(&database().await)
        .await
        .unwrap();
    let retried = fleet.store.retry_job(&fleet.namespace, id).await.unwrap();
    assert!(
        matches!(retried, RetryOutcome::Queued(_)),
        "a dead job can be retried: {retried:?}"
    );
    let second_life = started(&fleet, id).await;
    assert_eq!(
        second_life.attempt, first_life.attempt,
        "attempt numbers repeat"
    );

    let stale = finish(
        id,
        &first_life,
        AttemptOutcome::Succeeded(json!({"stale": true})),
        RetryRoute::Scheduler(Duration::from_secs(1)),
    );
    let finished = fleet.store.finish_jobs(&[stale], "old").await.unwrap();

    assert_eq!(finished[0].status, None, "the stale outcome was recorded");
    let record = fleet.record(id).await;
    assert_eq!(record.status, JobStatus::Running);
    assert_eq!(record.result, None);
    fleet.stop().await;
}

#[tokio::test]
async fn an_outcome_whose_relaxed_start_postgresql_lost_is_recorded() {
    let fleet = fleet().await;
    let id = insert(&fleet, None).await;
    let attempt = started(&fleet, id).await;
    // PostgreSQL crashed and came back without the relaxed start's commit.
    sqlx::query(
        "UPDATE jobs SET status = 'queued', attempts = attempts - 1, starts = starts - 1,
                         started_at = NULL, lease_until = NULL
         WHERE id = $1",
    )
    .bind(id.as_uuid())
    .execute(&database().await)
    .await
    .unwrap();

    let finished = fleet
        .store
        .finish_jobs(
            &[finish(
                id,
                &attempt,
                AttemptOutcome::Succeeded(json!({"ran": true})),
                RetryRoute::Scheduler(Duration::from_secs(1)),
            )],
            "test",
        )
        .await
        .unwrap();

    assert_eq!(finished[0].status, Some(JobStatus::Succeeded));
    let record = fleet.record(id).await;
    assert_eq!((record.status, record.attempts), (JobStatus::Succeeded, 1));
    fleet.stop().await;
}

#[tokio::test]
async fn a_lease_renewal_restores_a_start_postgresql_lost() {
    let fleet = fleet().await;
    let id = insert(&fleet, None).await;
    let attempt = started(&fleet, id).await;
    sqlx::query(
        "UPDATE jobs SET status = 'queued', attempts = attempts - 1, starts = starts - 1
         WHERE id = $1",
    )
    .bind(id.as_uuid())
    .execute(&database().await)
    .await
    .unwrap();

    let running = engine_shared::store::RunningAttempt {
        id,
        token: attempt.token,
    };
    let renewal = fleet.store.renew_leases(&[running], LEASE).await.unwrap();

    assert!(renewal.lost.is_empty(), "{renewal:?}");
    let record = fleet.record(id).await;
    assert_eq!(record.status, JobStatus::Running);
    assert_eq!((record.attempts, record.starts), (1, attempt.token));
    assert_eq!(
        start(&fleet, id, false).await,
        StartOutcome::Skipped(JobStatus::Running),
        "a duplicate message cannot start it beside the live attempt"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn the_same_job_twice_in_one_start_batch_starts_once() {
    let fleet = fleet().await;
    let id = insert(&fleet, None).await;
    let request = request(&fleet, id, false);

    let outcomes = fleet
        .store
        .start_jobs(&[request.clone(), request], LEASE)
        .await
        .unwrap();

    let started = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, StartOutcome::Started(_)))
        .count();
    assert_eq!(started, 1, "{outcomes:?}");
    assert_eq!(fleet.record(id).await.attempts, 1);
    fleet.stop().await;
}

#[tokio::test]
async fn a_forged_request_beside_its_jobs_real_one_in_a_start_batch_never_starts_it() {
    let fleet = fleet().await;
    let id = insert(&fleet, None).await;
    let real = request(&fleet, id, false);
    // First in the batch, and marked redelivered: it would be preferred if it agreed.
    let forged = StartRequest {
        kind: Kind::parse("sleep").unwrap(),
        redelivered: true,
        ..real.clone()
    };

    let outcomes = fleet
        .store
        .start_jobs(&[forged, real], LEASE)
        .await
        .unwrap();

    assert_eq!(outcomes[0], StartOutcome::Mismatched, "{outcomes:?}");
    let StartOutcome::Started(started) = &outcomes[1] else {
        panic!("the real request did not start: {outcomes:?}");
    };
    assert_eq!((started.kind.as_str(), &started.args), ("noop", &json!({})));
    assert_eq!(fleet.record(id).await.attempts, 1);
    fleet.stop().await;
}
