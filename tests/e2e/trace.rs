//! The correlation id: a request's W3C `traceparent` goes with each job it submits — into
//! the job's row, the AMQP message's `traceparent` header, every attempt's log, and on to a
//! webhook receiver as a child of the same trace. A request without one starts a new trace.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use engine_shared::trace::TraceParent;
use engine_shared::{JobId, JobStatus};
use engine_tests::broker::VhostClient;
use engine_tests::wait::wait_until;
use engine_tests::{TestFleet, TestSettings};

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Submits `job` with a `traceparent` header (or none) and returns the answer's id and
/// `traceparent`.
async fn submit(fleet: &TestFleet, job: serde_json::Value, trace: Option<&str>) -> (JobId, String) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{}/v1/jobs", fleet.client.address()))
        .bearer_auth(&fleet.key)
        .json(&job);
    if let Some(trace) = trace {
        request = request.header("traceparent", trace);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let trace = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    (body["id"].as_str().unwrap().parse().unwrap(), trace)
}

#[tokio::test]
async fn the_requests_trace_reaches_the_row_the_message_and_the_attempts_log() {
    let fleet = TestFleet::builder()
        .settings(TestSettings::use_test_storage)
        .without_worker()
        .start()
        .await;
    // No worker: the trace is followed into the row and the queued message.
    fleet.expect_unfinished();
    let (id, echoed) = submit(&fleet, json!({ "kind": "noop" }), Some(INCOMING)).await;
    assert_eq!(echoed, INCOMING);
    assert_eq!(
        fleet.record(id).await.traceparent.as_deref(),
        Some(INCOMING)
    );

    // The message in the queue carries it as a header (and in its body).
    let broker = VhostClient::connect(fleet.namespace.as_str()).await;
    let (body, header) = wait_until("the job's message", Duration::from_secs(10), || async {
        broker.take_one("jobs.default", "traceparent").await
    })
    .await;
    assert_eq!(header.as_deref(), Some(INCOMING));
    let envelope = engine_shared::envelope::Envelope::from_bytes(&body).unwrap();
    assert_eq!(
        envelope.traceparent.map(|t| t.to_string()).as_deref(),
        Some(INCOMING)
    );
    fleet.stop().await;

    // A job run by a worker shows the trace id in its log.
    let mut fleet = TestFleet::builder()
        .settings(TestSettings::use_test_storage)
        .without_worker()
        .start()
        .await;
    let (id, _) = submit(&fleet, json!({ "kind": "noop" }), Some(INCOMING)).await;
    fleet.start_worker().await;
    fleet.wait_for(id, JobStatus::Succeeded).await;
    let text = wait_until("the attempt's log", Duration::from_secs(20), || async {
        let (status, _, body) = fleet
            .client
            .get_raw(&format!("/v1/jobs/{id}/logs/1"), &[])
            .await;
        (status == StatusCode::OK).then(|| String::from_utf8(body).unwrap())
    })
    .await;
    assert!(text.contains(&format!("trace {TRACE_ID}")), "{text}");
    fleet.stop().await;
}

#[tokio::test]
async fn a_request_without_a_valid_traceparent_starts_a_new_trace() {
    let fleet = TestFleet::builder().without_worker().start().await;
    // No worker: only the rows' trace matters.
    fleet.expect_unfinished();
    for sent in [None, Some("not-a-traceparent")] {
        let (id, echoed) = submit(&fleet, json!({ "kind": "noop" }), sent).await;
        let fresh = TraceParent::parse(&echoed).expect("a valid new traceparent");
        assert_ne!(fresh.trace_id(), TRACE_ID);
        assert_eq!(
            fleet.record(id).await.traceparent.as_deref(),
            Some(echoed.as_str())
        );
    }
    fleet.stop().await;
}
