//! A broker outage delays jobs; it never refuses or loses them.

use std::time::Duration;

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_shared::JobStatus;
use engine_tests::{TcpProxy, TestFleet, wait_until};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn jobs_submitted_while_the_broker_is_unreachable_are_delivered_when_it_returns() {
    let broker = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let through_proxy =
        engine_tests::services::amqp_url().replace("127.0.0.1:5672", &broker.address().to_string());
    let fleet = TestFleet::builder()
        .api_settings(|s| s.amqp.url = through_proxy)
        .start()
        .await;
    let before = fleet.client.submit::<Noop>(NoopArgs {}).await;
    fleet.wait_for(before, JobStatus::Succeeded).await;

    broker.cut();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let answer = fleet.client.submit_json(&json!({ "kind": "noop" })).await;
        assert_eq!(
            answer.status,
            StatusCode::ACCEPTED,
            "accepted despite the outage: {answer:?}"
        );
        ids.push(answer.job_id());
    }
    let batch = fleet
        .client
        .post(
            "/v1/jobs/batch",
            &json!({ "jobs": [{ "kind": "noop" }, { "kind": "noop" }] }),
        )
        .await;
    assert_eq!(batch.status, StatusCode::ACCEPTED);
    ids.extend(batch.job_ids());
    for &id in &ids {
        let record = fleet.record(id).await;
        assert!(
            record.published_at.is_none(),
            "nothing can be published during the outage"
        );
    }

    broker.restore();
    wait_until(
        "every job accepted during the outage to succeed",
        Duration::from_secs(30),
        || async {
            for &id in &ids {
                if fleet.record(id).await.status != JobStatus::Succeeded {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    for &id in &ids {
        assert_eq!(fleet.record(id).await.attempts, 1, "each ran once");
    }
    fleet.stop().await;
}
