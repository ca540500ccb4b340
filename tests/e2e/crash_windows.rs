//! Crash windows on the job path, each with the real processes and servers: a worker
//! SIGKILLed before a cancel, a worker SIGKILLed under a concurrency limit, a queue that
//! vanished under the relay, a vhost that refuses publishes. Each used to leave an accepted
//! job unfinished forever (or finished the wrong way).

use std::time::{Duration, Instant};

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_jobs::kinds::sleep::{Sleep, SleepArgs};
use engine_shared::{JobId, JobStatus};
use engine_tests::settings::RescueSection;
use engine_tests::{FleetBuilder, JobOptions, LimitSection, TestFleet, services, wait_until};
use reqwest::StatusCode;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);

/// Submits `count` `noop` jobs `delay` seconds ahead in one batch; their ids.
async fn delayed_batch(client: &engine_tests::ApiClient, count: usize, delay: f64) -> Vec<JobId> {
    client
        .submit_copies(count, &json!({ "kind": "noop", "delay": delay }))
        .await
}

/// A fleet whose workers are the test's own processes.
fn without_worker<'a>() -> FleetBuilder<'a> {
    TestFleet::builder().without_worker()
}

#[tokio::test]
async fn a_cancel_accepted_while_its_worker_is_dead_ends_the_job_cancelled_not_after_its_run() {
    let fleet = without_worker().start().await;
    let mut doomed = fleet.spawn_worker_process(2, 10);
    let id = fleet
        .submit_until_running::<Sleep>(SleepArgs { ms: 60000 }, JobOptions::default())
        .await;
    doomed.kill();

    let requested = fleet.client.cancel(id).await;
    assert_eq!(requested.status, StatusCode::ACCEPTED, "{requested:?}");
    let asked = Instant::now();
    let survivor = fleet.spawn_worker_process(2, 10);

    let record = fleet.wait_for(id, JobStatus::Cancelled).await;
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "it ran its whole sleep first"
    );
    assert_eq!(record.result, None, "the takeover never ran it: {record:?}");
    drop(survivor);
}

/// A fleet whose `sleep` kind may run one at a time, and a `sleep` job of `ms` whose
/// worker process was SIGKILLed while it ran (its slot still leased in Redis); no worker
/// is left. The job's id, and when the kill was.
async fn sleep_killed_under_a_concurrency_limit(ms: u64) -> (TestFleet, JobId, Instant) {
    let fleet = without_worker()
        .settings(|s| s.limits.push(LimitSection::concurrency("sleep", 1)))
        .start()
        .await;
    let mut doomed = fleet.spawn_worker_process(2, 10);
    let id = fleet
        .submit_until_running::<Sleep>(SleepArgs { ms }, JobOptions::default())
        .await;
    doomed.kill();
    (fleet, id, Instant::now())
}

#[tokio::test]
async fn a_job_whose_worker_died_under_a_concurrency_limit_is_taken_over_after_its_deferral() {
    // The killed worker's concurrency slot outlives it (its lease), so the redelivery is
    // deferred through a delay tier; the copy that comes back must still take the job over.
    let (fleet, id, _) = sleep_killed_under_a_concurrency_limit(2000).await;
    let survivor = fleet.spawn_worker_process(2, 10);

    let record = fleet
        .wait_for_within(id, JobStatus::Succeeded, Duration::from_secs(90))
        .await;
    assert_eq!(
        record.attempts, 2,
        "the killed attempt and the one that ran"
    );
    drop(survivor);
}

#[tokio::test]
async fn a_job_held_back_by_a_dead_workers_slot_starts_again_within_seconds() {
    // The killed attempt's slot stays leased in Redis; the redelivery waits for it. It must
    // be looked at again when that lease ends (10 s at most), not after a whole backoff
    // parked in the 30 s tier: the tail of every crash's recovery.
    let (fleet, id, killed) = sleep_killed_under_a_concurrency_limit(20_000).await;
    // It ends when the job has started again, not when its 20 s sleep is over.
    fleet.expect_unfinished();
    let survivor = fleet.spawn_worker_process(2, 10);

    wait_until(
        "the job to start again",
        Duration::from_secs(90),
        || async { (fleet.record(id).await.starts >= 2).then_some(()) },
    )
    .await;
    // A slot leased for 10 s frees itself by then; before, the 30 s lease and the 30 s
    // backoff made this 30 s or more.
    let waited = killed.elapsed();
    assert!(
        waited < Duration::from_secs(18),
        "the job started again {waited:?} after its worker was killed"
    );
    drop(survivor);
}

#[tokio::test]
async fn a_publish_no_queue_takes_stays_in_the_outbox_until_the_queue_is_back() {
    let mut fleet = without_worker().start().await;
    // The warm-up job's message goes with the deleted queue: it waits for the rescuer.
    fleet.expect_unfinished();
    let warm = fleet.client.submit::<Noop>(NoopArgs {}).await;
    wait_until("the relay to publish", DEADLINE, || async {
        fleet.record(warm).await.published_at.map(|_| ())
    })
    .await;
    // The queue vanishes under the API's open channel (a person, a policy, a broker reset).
    services::delete_queue(fleet.namespace.as_str(), "jobs.default").await;

    let lost = fleet.client.submit::<Noop>(NoopArgs {}).await;
    let later = fleet.client.submit::<Noop>(NoopArgs {}).await;
    wait_until("the sweeper to have tried", DEADLINE, || async {
        let record = fleet.record(later).await;
        (chrono::Utc::now() - record.created_at > chrono::Duration::seconds(1)).then_some(())
    })
    .await;
    assert!(
        fleet.record(lost).await.published_at.is_none(),
        "a publish that no queue took was stamped as published"
    );

    // A worker declares the queue again; the sweeper publishes what it held back.
    fleet.start_worker().await;
    fleet.wait_for(lost, JobStatus::Succeeded).await;
    fleet.wait_for(later, JobStatus::Succeeded).await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_vhost_that_refuses_publishes_does_not_stop_another_namespaces_delayed_jobs() {
    let fleet = TestFleet::builder().namespaces(2).start().await;
    // Only a few of A's 600 delayed jobs are followed to the end.
    fleet.expect_unfinished();
    // A sorts first, so a claim holding rows of both namespaces reaches A's first.
    let (a, b) = match (&fleet.tenants[0], &fleet.tenants[1]) {
        (x, y) if x.namespace.as_str() < y.namespace.as_str() => (x, y),
        (x, y) => (y, x),
    };
    services::permit_guest(a.namespace.as_str(), false).await;
    // Open channels keep their access; new ones are refused.
    engine_tests::management::close_vhost_connections(a.namespace.as_str()).await;

    // Delayed jobs are released by the scheduler, whose claims mix namespaces, oldest
    // first: more of A's than one claim holds (relay.batch_size, 500) come due first.
    let of_a: Vec<JobId> = delayed_batch(&a.client, 600, 0.3)
        .await
        .into_iter()
        .take(3)
        .collect();
    let delayed = JobOptions::default().delay(Duration::from_millis(500));
    let of_b: Vec<JobId> = futures_util::future::join_all(
        (0..3).map(|_| b.client.submit_with::<Noop>(NoopArgs {}, delayed.clone())),
    )
    .await;
    for &id in &of_b {
        wait_until("namespace B's delayed job to run", DEADLINE, || async {
            let record = fleet.record_in(&b.namespace, id).await?;
            (record.status == JobStatus::Succeeded).then_some(())
        })
        .await;
    }
    let ready = reqwest::get(format!("http://{}/readyz", fleet.client.address()))
        .await
        .unwrap();
    assert_ne!(
        ready.status(),
        StatusCode::OK,
        "a refusing vhost is not ready"
    );

    services::permit_guest(a.namespace.as_str(), true).await;
    for &id in &of_a {
        wait_until(
            "namespace A's delayed job to run once allowed",
            Duration::from_secs(60),
            || async {
                let record = fleet.record_in(&a.namespace, id).await?;
                (record.status == JobStatus::Succeeded).then_some(())
            },
        )
        .await;
    }
    fleet.stop().await;
}

#[tokio::test]
async fn a_delivery_that_waited_for_a_slot_is_not_timed_out_by_the_broker() {
    // The broker times a delivery from when it delivered it. With one slot, two jobs of
    // different queues are delivered together; the second waits a whole attempt for the
    // slot, and run then it would still be unacked when the broker's 10 s consumer timeout
    // closes its channel (redelivering whatever that channel held). Its delivery is acked
    // when its attempt starts instead; its lease protects the attempt from there.
    let namespace = services::unique_namespace();
    let broker = engine_tests::PrivateBroker::start(&namespace, Duration::from_secs(10));
    let fleet = TestFleet::builder()
        .namespace_name(&namespace)
        .settings(|s| {
            s.amqp.url = broker.amqp_url();
            s.amqp.consumer_timeout_secs = 10;
            s.worker.concurrency = 1;
        })
        .start()
        .await;
    let job = |queue: &str| json!({ "kind": "sleep", "args": { "ms": 6000 }, "queue": queue, "timeout": 7 });
    let submitted = fleet
        .client
        .post(
            "/v1/jobs/batch",
            &json!({ "jobs": [job("critical"), job("bulk")] }),
        )
        .await;
    assert_eq!(submitted.status, StatusCode::ACCEPTED, "{submitted:?}");

    for id in submitted.job_ids() {
        let record = fleet
            .wait_for_within(id, JobStatus::Succeeded, Duration::from_secs(60))
            .await;
        assert_eq!(record.attempts, 1, "one attempt each: {record:?}");
        assert_eq!(record.starts, 1, "started once each: {record:?}");
    }
    assert_eq!(
        broker.consumer_timeouts(),
        0,
        "the broker timed a delivery out: {}",
        broker.log_text()
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_message_returned_often_without_an_attempt_never_reaches_the_dead_queue_alive() {
    // The broker's net, `x-delivery-limit` (twice `retry.delivery_limit` = 10 here), counts
    // every return: workers killed with the message prefetched, lost connections. Nine
    // returns without an attempt, then an attempt whose worker is SIGKILLed: the tenth
    // return would dead-letter a job PostgreSQL shows running.
    let fleet = without_worker()
        .settings(|s| s.retry.delivery_limit = 5)
        .start()
        .await;
    let id = fleet.client.submit::<Sleep>(SleepArgs { ms: 3000 }).await;
    wait_until("the relay to publish", DEADLINE, || async {
        fleet.record(id).await.published_at.map(|_| ())
    })
    .await;
    let vhost = engine_tests::VhostClient::connect(fleet.namespace.as_str()).await;
    vhost.return_unacked("jobs.default", 9).await;

    let mut doomed = fleet.spawn_worker_process(2, 10);
    wait_until("the job to run", DEADLINE, || async {
        (fleet.record(id).await.status == JobStatus::Running).then_some(())
    })
    .await;
    doomed.kill();
    let survivor = fleet.spawn_worker_process(2, 10);

    let record = fleet.wait_for(id, JobStatus::Succeeded).await;
    assert_eq!(
        record.attempts, 2,
        "the killed attempt and the one that ran"
    );
    let dead = vhost.take_dead_letters().await;
    assert!(
        dead.is_empty(),
        "a live job's message was dead-lettered: {dead:?}"
    );
    drop(survivor);
}

#[tokio::test]
async fn a_namespace_whose_queue_vanished_does_not_hold_back_another_namespaces_outbox() {
    // Returned publishes are confirmed as "returned", not refused: the namespace must still
    // be left out of the next claims, or its oldest rows fill every claim for good.
    let fleet = without_worker().namespaces(2).start().await;
    // No worker: what matters is what gets published.
    fleet.expect_unfinished();
    let (a, b) = (&fleet.tenants[0], &fleet.tenants[1]);
    let warm = a.client.submit::<Noop>(NoopArgs {}).await;
    wait_until("A's relay channel to be open", DEADLINE, || async {
        fleet
            .record_in(&a.namespace, warm)
            .await?
            .published_at
            .map(|_| ())
    })
    .await;
    services::delete_queue(a.namespace.as_str(), "jobs.default").await;

    // More of A's than one claim holds (relay.batch_size, 500), released by the scheduler
    // and returned by the broker: they stay in the outbox, the oldest rows there.
    delayed_batch(&a.client, 600, 0.2).await;
    wait_until(
        "A's jobs to be released into the outbox",
        DEADLINE,
        || async { (fleet.count_in(&a.namespace, JobStatus::Queued).await >= 600).then_some(()) },
    )
    .await;
    // B's job misses the fast path (as when the API dies right after the commit): only
    // the sweeper can publish it.
    let id = engine_shared::JobId::new();
    let missed = engine_shared::store::NewJob {
        id,
        namespace: b.namespace.clone(),
        kind: engine_shared::Kind::parse("noop").unwrap(),
        queue: engine_shared::QueueName::parse("default").unwrap(),
        args: json!({}),
        priority: 0,
        max_attempts: 3,
        timeout_ms: 10_000,
        idempotency_key: None,
        run_at: None,
        backoff: None,
        traceparent: None,
    };
    fleet.store.insert_jobs(&[missed]).await.unwrap();
    wait_until("namespace B's job to be swept", DEADLINE, || async {
        fleet
            .record_in(&b.namespace, id)
            .await?
            .published_at
            .map(|_| ())
    })
    .await;
    fleet.stop().await;
}

/// A fleet with a quick rescuer (3 s bound, 1 s leases) and no worker, and the id of a
/// minute-long `sleep` submitted with `options` whose attempt died: its worker was
/// SIGKILLed mid-run and the redelivery the broker would make is lost too.
async fn an_attempt_that_died(options: JobOptions) -> (TestFleet, JobId) {
    let fleet = without_worker()
        .settings(|s| {
            s.rescue = Some(RescueSection {
                after_secs: 3,
                lease_secs: 1,
            })
        })
        .start()
        .await;
    let mut doomed = fleet.spawn_worker_process(2, 10);
    let id = fleet
        .submit_until_running::<Sleep>(SleepArgs { ms: 60000 }, options)
        .await;
    doomed.kill();
    services::purge_returned(fleet.namespace.as_str(), "jobs.default").await;
    (fleet, id)
}

#[tokio::test]
async fn an_attempt_whose_worker_died_is_rescued_even_behind_a_backlog() {
    let (fleet, id) = an_attempt_that_died(JobOptions::default()).await;
    // No worker: the rescue is what is watched, and the backlog stays.
    fleet.expect_unfinished();
    // Jobs nobody runs yet wait in the same queue: a backlog, not a lost message.
    fleet
        .client
        .submit_copies(100, &json!({ "kind": "noop" }))
        .await;

    wait_until("the dead attempt to be rescued", DEADLINE, || async {
        let record = fleet.record(id).await;
        (record.status == JobStatus::Retrying && record.published_at.is_some()).then_some(())
    })
    .await;
    let errors = fleet.client.job(id).await.body["errors"].clone();
    assert_eq!(errors[0]["kind"], "crashed", "{errors}");
    fleet.stop().await;
}

#[tokio::test]
async fn a_cancel_accepted_for_an_attempt_that_died_ends_cancelled_not_dead() {
    let (fleet, id) = an_attempt_that_died(JobOptions::default().max_attempts(1)).await;
    let requested = fleet.client.cancel(id).await;
    assert_eq!(requested.status, StatusCode::ACCEPTED, "{requested:?}");

    let record = fleet.wait_for(id, JobStatus::Cancelled).await;
    assert!(record.finished_at.is_some(), "{record:?}");
    fleet.stop().await;
}
