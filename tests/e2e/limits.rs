//! Rate and concurrency limits in Redis: they defer jobs (no attempt used, no hot loop),
//! keep to their namespace's keys, survive a Redis outage by policy, and survive a
//! `SCRIPT FLUSH`. Submissions per API key get 429.

use std::time::Duration;

use chrono::{DateTime, Utc};
use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_shared::limits::RedisErrorPolicy;
use engine_shared::{JobId, JobStatus};
use engine_tests::services::{self, queue_depth};
use engine_tests::test_kinds::most_tracked_at_once;
use engine_tests::{LimitSection, TcpProxy, TestFleet, wait_until};
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::json;

/// Waits until every job in `ids` succeeded; their rows.
async fn all_succeeded(
    fleet: &TestFleet,
    ids: &[JobId],
    deadline: Duration,
) -> Vec<engine_shared::store::JobRecord> {
    wait_until("every job to succeed", deadline, || async {
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            let record = fleet.record(*id).await;
            if record.status != JobStatus::Succeeded {
                return None;
            }
            records.push(record);
        }
        Some(records)
    })
    .await
}

#[tokio::test]
async fn a_rate_of_20_per_second_paces_200_jobs_over_10_seconds_across_3_workers() {
    let fleet = TestFleet::builder()
        .without_worker()
        .settings(|s| {
            s.limits.push(LimitSection {
                period_ms: Some(1000),
                burst: Some(1),
                ..LimitSection::rate("noop", 20)
            })
        })
        .start()
        .await;
    let _workers: Vec<_> = (0..3).map(|_| fleet.spawn_worker_process(64, 10)).collect();

    let ids = fleet
        .client
        .submit_copies(200, &json!({ "kind": "noop" }))
        .await;

    let records = all_succeeded(&fleet, &ids, Duration::from_secs(60)).await;
    assert!(
        records.iter().all(|r| r.attempts == 1),
        "a deferral is no attempt"
    );
    let starts: Vec<DateTime<Utc>> = records.iter().map(|r| r.started_at.unwrap()).collect();
    let span = *starts.iter().max().unwrap() - *starts.iter().min().unwrap();
    let seconds = span.num_milliseconds() as f64 / 1000.0;
    // 200 jobs at 20/s with no burst: 199 intervals of 50 ms = 9.95 s.
    assert!(
        (9.0..=11.0).contains(&seconds),
        "200 jobs at 20/s took {seconds:.2} s from first to last start"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_concurrency_limit_of_2_never_lets_3_run_at_once() {
    let mut fleet = TestFleet::builder()
        .settings(|s| s.limits.push(LimitSection::concurrency("test.track", 2)))
        .start()
        .await;
    fleet.start_extra_worker().await;

    let ids = fleet
        .client
        .submit_copies(10, &json!({ "kind": "test.track", "args": { "ms": 150 } }))
        .await;

    let records = all_succeeded(&fleet, &ids, Duration::from_secs(60)).await;
    assert_eq!(
        most_tracked_at_once(&fleet.namespace),
        2,
        "two workers of 8 slots each, a fleet-wide limit of 2"
    );
    assert!(records.iter().all(|r| r.attempts == 1));
    fleet.stop().await;
}

#[tokio::test]
async fn a_saturated_limit_defers_without_a_hot_loop() {
    let fleet = TestFleet::builder()
        .settings(|s| {
            s.limits.push(LimitSection {
                period_ms: Some(1000),
                ..LimitSection::rate("noop", 4)
            });
            // A duplicate message asks Redis for a turn of its own. On a loaded machine the
            // fast path's publish stamp can lag the usual 300 ms grace, and the sweeper's
            // republish (at-least-once, harmless otherwise) would then be counted here as a
            // second ask.
            s.relay.publish_grace_ms = 10_000;
        })
        .start()
        .await;
    let calls_before = engine_shared::limits::redis_calls();
    let cpu_before = cpu_time();

    let ids = fleet
        .client
        .submit_copies(12, &json!({ "kind": "noop" }))
        .await;
    let records = all_succeeded(&fleet, &ids, Duration::from_secs(30)).await;

    // Each job asks Redis once, for its turn; then it waits in delay tiers, unasked.
    let calls = engine_shared::limits::redis_calls() - calls_before;
    assert_eq!(calls, 12, "one reservation per job");
    let cpu = cpu_time() - cpu_before;
    assert!(
        cpu < Duration::from_secs(2),
        "the whole test process (API, worker, test) used {cpu:?} of CPU while 12 jobs waited ~3 s"
    );
    assert!(records.iter().all(|r| r.attempts == 1));
    fleet.stop().await;
}

/// CPU time this process has used (user + system).
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    let usage = rusage(&mut usage);
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

#[allow(unsafe_code)]
fn rusage(slot: &mut std::mem::MaybeUninit<libc::rusage>) -> libc::rusage {
    // SAFETY: getrusage fills the struct it is given; it was zeroed, so it is initialised
    // even if the call failed.
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, slot.as_mut_ptr());
        slot.assume_init()
    }
}

#[tokio::test]
async fn two_namespaces_have_their_own_budgets_and_other_keys_are_untouched() {
    let fleet = TestFleet::builder()
        .namespaces(2)
        .settings(|s| {
            // One job per minute: a shared budget would hold the second job back a minute.
            s.limits.push(LimitSection {
                period_ms: Some(60_000),
                ..LimitSection::rate("noop", 1)
            })
        })
        .start()
        .await;
    let (first, second) = (&fleet.tenants[0], &fleet.tenants[1]);
    let mut redis = services::redis().await;
    let foreign = [
        format!("other-app:{}:rl:noop", first.namespace),
        format!("engine:{}x:rl:noop", first.namespace),
        format!("{}:rl:noop", second.namespace),
    ];
    for key in &foreign {
        let _: () = redis.set(key, "not yours").await.unwrap();
    }

    let a = first.client.submit::<Noop>(NoopArgs {}).await;
    let b = second.client.submit::<Noop>(NoopArgs {}).await;
    wait_until(
        "both namespaces' jobs to run",
        Duration::from_secs(10),
        || async {
            let done = |record: Option<engine_shared::store::JobRecord>| {
                record.is_some_and(|r| r.status == JobStatus::Succeeded)
            };
            (done(fleet.record_in(&first.namespace, a).await)
                && done(fleet.record_in(&second.namespace, b).await))
            .then_some(())
        },
    )
    .await;

    for tenant in [first, second] {
        let key = format!("engine:{}:rl:noop", tenant.namespace);
        let exists: bool = redis.exists(&key).await.unwrap();
        assert!(exists, "{key} holds this namespace's budget");
    }
    for key in &foreign {
        let value: String = redis.get(key).await.unwrap();
        assert_eq!(value, "not yours", "{key} was touched");
        let ttl: i64 = redis.ttl(key).await.unwrap();
        assert_eq!(ttl, -1, "{key} got an expiry");
        let _: () = redis.del(key).await.unwrap();
    }
    fleet.stop().await;
}

#[tokio::test]
async fn the_scripts_are_loaded_again_after_a_script_flush() {
    let fleet = TestFleet::builder()
        .settings(|s| s.limits.push(LimitSection::rate("noop", 100)))
        .start()
        .await;
    let first = fleet.client.submit::<Noop>(NoopArgs {}).await;
    fleet.wait_for(first, JobStatus::Succeeded).await;

    let mut redis = services::redis().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis)
        .await
        .unwrap();

    let second = fleet.client.submit::<Noop>(NoopArgs {}).await;
    let record = fleet.wait_for(second, JobStatus::Succeeded).await;
    assert_eq!(record.attempts, 1);
    let key = format!("engine:{}:rl:noop", fleet.namespace);
    let exists: bool = redis.exists(&key).await.unwrap();
    assert!(exists, "the limit was still kept after the flush");
    fleet.stop().await;
}

#[tokio::test]
async fn with_redis_cut_an_allow_limit_runs_jobs_and_a_defer_limit_holds_them_until_it_returns() {
    let proxy = TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let through_proxy = format!("redis://{}", proxy.address());
    let fleet = TestFleet::builder()
        .settings(|s| {
            s.redis.url = through_proxy;
            s.limits = vec![
                LimitSection {
                    on_redis_error: Some(RedisErrorPolicy::Allow),
                    ..LimitSection::rate("noop", 100)
                },
                LimitSection {
                    on_redis_error: Some(RedisErrorPolicy::Defer),
                    ..LimitSection::rate("test.flaky", 100)
                },
            ];
        })
        .start()
        .await;
    let warm = fleet.client.submit::<Noop>(NoopArgs {}).await;
    fleet.wait_for(warm, JobStatus::Succeeded).await;

    proxy.cut();
    let open = fleet
        .client
        .submit_copies(3, &json!({ "kind": "noop" }))
        .await;
    let held = fleet
        .client
        .submit_copies(
            3,
            &json!({ "kind": "test.flaky", "args": { "fail_times": 0 } }),
        )
        .await;
    all_succeeded(&fleet, &open, Duration::from_secs(20)).await;
    let vhost = fleet.namespace.to_string();
    wait_until(
        "the held jobs to be parked in a delay tier",
        Duration::from_secs(20),
        || async { (queue_depth(&vhost, "jobs.delay.200ms").await? >= 1).then_some(()) },
    )
    .await;
    for &id in &held {
        assert_eq!(
            fleet.record(id).await.status,
            JobStatus::Queued,
            "held back, not failed"
        );
    }

    proxy.restore();
    let records = all_succeeded(&fleet, &held, Duration::from_secs(60)).await;
    assert!(
        records.iter().all(|r| r.attempts == 1),
        "waiting used no attempt"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn an_api_key_over_its_submission_rate_gets_429_and_nothing_is_stored() {
    let fleet = TestFleet::builder()
        .without_worker()
        .settings(|s| s.limit_submissions(1, 2))
        .start()
        .await;
    // No worker: only what is accepted and stored matters.
    fleet.expect_unfinished();
    for _ in 0..2 {
        let answer = fleet.client.submit_json(&json!({ "kind": "noop" })).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED);
    }

    let refused = fleet.client.submit_json(&json!({ "kind": "noop" })).await;

    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{refused:?}");
    assert_eq!(refused.content_type, "application/problem+json");
    let retry_after: u64 = refused.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("more than 1 jobs per second (burst 2)")
    );
    let listed = fleet.client.get("/v1/jobs").await;
    assert_eq!(
        listed.body["jobs"].as_array().unwrap().len(),
        2,
        "the refused job was not stored"
    );
    fleet.stop().await;
}
