//! Prometheus metrics: the API's `/metrics` counts submissions and reads queue depth,
//! consumers and the outbox backlog at scrape time; a worker's counts attempts, outcomes
//! and durations — every series labelled with its namespace, kind and queue.

use std::time::Duration;

use serde_json::json;

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_shared::JobStatus;
use engine_tests::test_kinds::{Flaky, FlakyArgs};
use engine_tests::wait::wait_until;
use engine_tests::{JobOptions, TestFleet, TestSettings};

async fn scrape(address: std::net::SocketAddr) -> String {
    let response = reqwest::get(format!("http://{address}/metrics"))
        .await
        .expect("metrics answer");
    assert!(response.status().is_success());
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// The value of the series `name{labels}` in `text`, if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn submissions_outcomes_and_queues_are_counted_per_namespace_kind_and_queue() {
    let fleet = TestFleet::builder()
        .settings(TestSettings::serve_worker_health)
        .start()
        .await;
    let ns = fleet.namespace.as_str();
    let ok = fleet.client.submit::<Noop>(NoopArgs {}).await;
    let flaky = fleet
        .client
        .submit::<Flaky>(FlakyArgs { fail_times: 1 })
        .await;
    for id in [ok, flaky] {
        fleet.wait_for(id, JobStatus::Succeeded).await;
    }
    // A waiting job cancelled by the API is counted there.
    let waiting = fleet
        .client
        .submit_with::<Noop>(
            NoopArgs {},
            JobOptions::default().delay(Duration::from_secs(3600)),
        )
        .await;
    assert_eq!(
        fleet.client.cancel(waiting).await.status,
        reqwest::StatusCode::OK
    );

    let noop = format!(r#"{{namespace="{ns}",kind="noop",queue="default"}}"#);
    let queue = format!(r#"{{namespace="{ns}",queue="default"}}"#);
    // The gauges are read at most every 5 s, so a scrape may show the previous reading.
    let api = wait_until("the queue gauges", Duration::from_secs(15), || async {
        let text = scrape(fleet.client.address()).await;
        (value(&text, &format!("tl_queue_consumers{queue}")).unwrap_or(0.0) >= 1.0).then_some(text)
    })
    .await;
    assert_eq!(
        value(&api, &format!("tl_jobs_submitted_total{noop}")),
        Some(2.0),
        "{api}"
    );
    assert_eq!(
        value(&api, &format!("tl_jobs_cancelled_total{noop}")),
        Some(1.0),
        "{api}"
    );
    assert_eq!(
        value(&api, &format!("tl_queue_messages{queue}")),
        Some(0.0),
        "{api}"
    );
    assert!(
        value(&api, &format!("tl_queue_consumers{queue}")).unwrap_or(0.0) >= 1.0,
        "{api}"
    );
    assert_eq!(
        value(&api, &format!(r#"tl_outbox_backlog{{namespace="{ns}"}}"#)),
        Some(0.0),
        "{api}"
    );

    let worker_address = fleet.worker_health.unwrap();
    let flaky_labels = format!(r#"{{namespace="{ns}",kind="test.flaky",queue="default"}}"#);
    let worker = wait_until(
        "the outcomes to be counted",
        Duration::from_secs(10),
        || async {
            let text = scrape(worker_address).await;
            (value(&text, &format!("tl_jobs_succeeded_total{flaky_labels}")) == Some(1.0))
                .then_some(text)
        },
    )
    .await;
    assert_eq!(
        value(&worker, &format!("tl_jobs_started_total{flaky_labels}")),
        Some(2.0)
    );
    assert_eq!(
        value(&worker, &format!("tl_jobs_retried_total{flaky_labels}")),
        Some(1.0)
    );
    assert_eq!(
        value(&worker, &format!("tl_jobs_succeeded_total{noop}")),
        Some(1.0)
    );
    assert_eq!(
        value(
            &worker,
            &format!("tl_job_duration_seconds_count{flaky_labels}")
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &worker,
            &format!("tl_job_start_latency_seconds_count{noop}")
        ),
        Some(1.0)
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_worker_reports_each_namespaces_running_waiting_and_job_seconds() {
    let fleet = TestFleet::builder()
        .namespaces(2)
        .settings(|s| {
            s.serve_worker_health();
            s.worker.concurrency = 4;
        })
        .start()
        .await;
    // A's backlog is left running and waiting: only the metrics are read.
    fleet.expect_unfinished();
    let worker = fleet.worker_health.unwrap();
    let (a, b) = (&fleet.tenants[0], &fleet.tenants[1]);
    let series = |name: &str, namespace: &engine_shared::Namespace| {
        format!(r#"{name}{{namespace="{namespace}"}}"#)
    };

    // A's consumer holds 4 (its prefetch), runs 3 and keeps the 4th slot for idle B.
    a.client
        .submit_copies(6, &json!({ "kind": "sleep", "args": { "ms": 3000 } }))
        .await;
    let text = wait_until(
        "A's running and waiting jobs",
        Duration::from_secs(20),
        || async {
            let text = scrape(worker).await;
            let running = value(&text, &series("tl_namespace_running", &a.namespace));
            let waiting = value(&text, &series("tl_namespace_waiting", &a.namespace));
            (running == Some(3.0) && waiting == Some(1.0)).then_some(text)
        },
    )
    .await;
    assert_eq!(
        value(&text, &series("tl_namespace_running", &b.namespace)).unwrap_or(0.0),
        0.0,
        "{text}"
    );

    // Job-seconds count each slot's time when it is given back.
    let b_job = b.client.submit::<Noop>(NoopArgs {}).await;
    wait_until("B's job to succeed", Duration::from_secs(20), || async {
        let record = fleet.record_in(&b.namespace, b_job).await?;
        (record.status == JobStatus::Succeeded).then_some(())
    })
    .await;
    wait_until(
        "A's first three jobs' seconds",
        Duration::from_secs(20),
        || async {
            let text = scrape(worker).await;
            let used = value(
                &text,
                &series("tl_namespace_job_seconds_total", &a.namespace),
            )?;
            (used >= 9.0).then_some(())
        },
    )
    .await;
    let text = scrape(worker).await;
    let b_used = value(
        &text,
        &series("tl_namespace_job_seconds_total", &b.namespace),
    );
    assert!(b_used.is_some_and(|s| s > 0.0 && s < 3.0), "{text}");
    fleet.stop().await;
}
