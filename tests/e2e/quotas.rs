//! Quotas that keep one namespace from taking the shared database, broker and workers:
//! `max_pending` (unfinished jobs), `max_queue_bytes` (bytes in its queues) and
//! `fleet_max_running` (its running jobs across every worker).

use std::time::Duration;

use chrono::{DateTime, Utc};
use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_shared::{JobStatus, Namespace};
use engine_tests::{TestFleet, services, wait_until};
use reqwest::StatusCode;
use serde_json::json;

/// A job that stays unfinished for an hour without a worker.
fn later() -> serde_json::Value {
    json!({ "kind": "noop", "delay": 3600 })
}

async fn unfinished(fleet: &TestFleet, namespace: &Namespace) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE namespace = $1
           AND status IN ('scheduled', 'queued', 'running', 'retrying')",
    )
    .bind(namespace.as_str())
    .fetch_one(fleet.store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_namespace_at_its_max_pending_is_refused_429_until_its_jobs_finish() {
    let fleet = TestFleet::builder()
        .namespaces(2)
        .without_worker()
        .settings(|s| s.namespaces[0].max_pending = Some(5))
        .start()
        .await;
    // The jobs wait an hour: room is made by cancelling them.
    fleet.expect_unfinished();
    let (a, b) = (&fleet.tenants[0], &fleet.tenants[1]);
    let ids = a.client.submit_copies(5, &later()).await;

    let refused = a.client.submit_json(&later()).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert!(
        refused.body["type"]
            .as_str()
            .unwrap()
            .ends_with("/problems/too-many-pending"),
        "{}",
        refused.body
    );
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("max_pending"),
        "{}",
        refused.body
    );
    let retry_after: u64 = refused.retry_after.expect("a Retry-After").parse().unwrap();
    assert!((1..=10).contains(&retry_after), "Retry-After {retry_after}");
    let batch = a
        .client
        .post("/v1/jobs/batch", &json!({ "jobs": [later(), later()] }))
        .await;
    assert_eq!(
        batch.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        batch.body
    );
    // A batch that could never fit is a client error, not a reason to retry.
    let never = a
        .client
        .post("/v1/jobs/batch", &json!({ "jobs": vec![later(); 6] }))
        .await;
    assert_eq!(
        never.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        never.body
    );
    assert_eq!(never.body["errors"][0]["field"], "jobs", "{}", never.body);
    assert_eq!(
        unfinished(&fleet, &a.namespace).await,
        5,
        "nothing more stored"
    );

    // Another namespace's cap is its own.
    assert_eq!(b.client.submit_copies(8, &later()).await.len(), 8);

    // Finished jobs free their room: two cancelled, two more accepted, then refused again.
    for &id in &ids[..2] {
        assert!(a.client.cancel(id).await.status.is_success());
    }
    let accepted = wait_until(
        "the namespace to have room again",
        Duration::from_secs(20),
        || async {
            let answer = a.client.submit_json(&later()).await;
            (answer.status == StatusCode::ACCEPTED).then_some(answer)
        },
    )
    .await;
    accepted.job_id();
    assert_eq!(
        a.client.submit_json(&later()).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        a.client.submit_json(&later()).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(unfinished(&fleet, &a.namespace).await, 5);
    fleet.stop().await;
}

/// A noop job whose message is about `bytes` long.
fn padded(bytes: usize) -> serde_json::Value {
    json!({ "kind": "noop", "args": { "pad": "x".repeat(bytes) } })
}

/// `namespace`'s queued jobs: (published, unpublished for over 3 s).
async fn published(fleet: &TestFleet, namespace: &Namespace) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE published_at IS NOT NULL),
                count(*) FILTER (WHERE published_at IS NULL
                                   AND created_at < now() - interval '3 seconds')
         FROM jobs WHERE namespace = $1 AND status = 'queued'",
    )
    .bind(namespace.as_str())
    .fetch_one(fleet.store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_namespace_at_its_max_queue_bytes_waits_in_postgresql_and_others_publish_on() {
    let mut fleet = TestFleet::builder()
        .namespaces(2)
        .without_worker()
        .settings(|s| s.namespaces[0].max_queue_bytes = Some(16_384))
        .start()
        .await;
    let (a, b) = (
        fleet.tenants[0].namespace.clone(),
        fleet.tenants[1].namespace.clone(),
    );
    let depth = |namespace: Namespace| async move {
        services::queue_depth(namespace.as_str(), "jobs.default").await
    };
    // 20 messages of about 1,180 bytes take A's work queue past its 16 KiB: the broker
    // takes at least the 14 that cross it (and may take what is already on its way when
    // the queue crosses the bound).
    let mut a_ids = fleet.tenants[0]
        .client
        .submit_copies(20, &padded(1_000))
        .await;
    wait_until(
        "A's first jobs to fill its queue",
        Duration::from_secs(30),
        || async { (depth(a.clone()).await? >= 14).then_some(()) },
    )
    .await;

    // From then on the broker takes none of A's messages: they stay in the outbox, tried
    // again by the sweeper, while the relay publishes B's jobs all the same.
    a_ids.extend(
        fleet.tenants[0]
            .client
            .submit_copies(40, &padded(1_000))
            .await,
    );
    let b_ids = fleet.tenants[1]
        .client
        .submit_copies(5, &padded(1_000))
        .await;
    wait_until(
        "A's later jobs to wait unpublished past the sweeper's grace",
        Duration::from_secs(30),
        || async {
            let (_, waiting) = published(&fleet, &a).await;
            (waiting >= 40).then_some(())
        },
    )
    .await;
    wait_until(
        "B's jobs to reach B's queue",
        Duration::from_secs(30),
        || async { (depth(b.clone()).await? == 5).then_some(()) },
    )
    .await;
    let full = depth(a.clone()).await.unwrap();
    assert!(
        (14..=20).contains(&full),
        "A's queue took none of the later 40: it holds {full} messages"
    );
    let ready = fleet.client.get("/readyz").await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "a full namespace is not an unready API: {}",
        ready.body
    );

    // Nothing is lost: once a worker drains the queue, every job of both runs.
    fleet.start_worker().await;
    for &id in a_ids.iter().chain(&b_ids) {
        let namespace = if a_ids.contains(&id) { &a } else { &b };
        wait_until("every job to succeed", Duration::from_secs(60), || async {
            let record = fleet.record_in(namespace, id).await?;
            (record.status == JobStatus::Succeeded).then_some(())
        })
        .await;
    }
    fleet.stop().await;
}

/// The most jobs of `namespace` that ran at the same moment, from their rows' start and
/// finish times (each attempt of these jobs is their only one).
async fn most_at_once(fleet: &TestFleet, namespace: &Namespace) -> usize {
    let spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT started_at, finished_at FROM jobs WHERE namespace = $1 AND status = 'succeeded'",
    )
    .bind(namespace.as_str())
    .fetch_all(fleet.store.pool())
    .await
    .unwrap();
    let mut edges: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for (started, finished) in spans {
        edges.push((started, 1));
        edges.push((finished, -1));
    }
    // A finish and a start at the same instant do not overlap: finishes first.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test]
async fn a_fleet_wide_cap_bounds_a_namespaces_running_jobs_across_workers() {
    let mut fleet = TestFleet::builder()
        .settings(|s| {
            s.worker.concurrency = 4;
            s.namespaces[0].fleet_max_running = Some(2);
        })
        .start()
        .await;
    fleet.start_extra_worker().await;
    let ids = fleet
        .client
        .submit_copies(12, &json!({ "kind": "sleep", "args": { "ms": 300 } }))
        .await;
    for &id in &ids {
        fleet
            .wait_for_within(id, JobStatus::Succeeded, Duration::from_secs(60))
            .await;
    }
    let most = most_at_once(&fleet, &fleet.namespace).await;
    assert!(
        most <= 2,
        "two workers of 4 slots ran {most} of the namespace's jobs at once; its fleet_max_running is 2"
    );
    assert_eq!(most, 2, "the cap is a cap, not a queue of one");
    fleet.stop().await;
}

#[tokio::test]
async fn a_work_queue_declared_with_other_arguments_is_kept_and_its_jobs_run() {
    // jobs.default as an earlier version (or a person) declared it: no byte bound, no
    // dead-lettering. RabbitMQ refuses to redeclare it with the fleet's arguments.
    engine_shared::tls::install_crypto_provider();
    let name = services::unique_namespace();
    services::create_vhost(&name).await;
    let url = engine_shared::broker::vhost_url(&services::amqp_url().into(), &name).unwrap();
    let connection = lapin::Connection::connect(
        secrecy::ExposeSecret::expose_secret(&url),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            "jobs.default".into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    connection.close(200, "declared".into()).await.unwrap();

    // The fleet keeps that queue as it is (with a warning) and declares the rest.
    let fleet = TestFleet::builder().namespace_name(&name).start().await;
    let id = fleet.client.submit::<Noop>(NoopArgs {}).await;
    fleet.wait_for(id, JobStatus::Succeeded).await;
    fleet.stop().await;
}
