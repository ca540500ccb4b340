//! Every HTTP error is problem JSON with a specific message, and changes nothing.

use engine_shared::JobId;
use engine_tests::{TcpProxy, TestFleet};
use reqwest::{Method, StatusCode};
use serde_json::json;

fn assert_problem(
    answer: &engine_tests::client::Answer,
    status: StatusCode,
    detail_contains: &str,
) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.body["status"], status.as_u16());
    assert!(answer.body["type"].as_str().is_some() && answer.body["title"].as_str().is_some());
    let detail = answer.body["detail"].as_str().unwrap();
    assert!(
        detail.contains(detail_contains),
        "detail {detail:?} lacks {detail_contains:?}"
    );
}

async fn job_count(fleet: &TestFleet) -> usize {
    fleet.client.get("/v1/jobs").await.body["jobs"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn malformed_json_is_400() {
    let fleet = TestFleet::builder().without_worker().start().await;
    let answer = fleet
        .client
        .raw(Method::POST, "/v1/jobs", Some(b"{\"kind\": ".to_vec()))
        .await;
    assert_problem(&answer, StatusCode::BAD_REQUEST, "not valid JSON");
    assert_eq!(job_count(&fleet).await, 0);
    fleet.stop().await;
}

#[tokio::test]
async fn a_missing_or_unknown_key_is_401() {
    let fleet = TestFleet::builder().without_worker().start().await;
    let job = json!({ "kind": "noop" });

    let missing = fleet.client.with_key(None).submit_json(&job).await;
    let unknown = fleet
        .client
        .with_key(Some("tle_not-a-real-key"))
        .submit_json(&job)
        .await;

    assert_problem(&missing, StatusCode::UNAUTHORIZED, "missing Authorization");
    assert_problem(
        &unknown,
        StatusCode::UNAUTHORIZED,
        "not valid or was revoked",
    );
    assert_eq!(job_count(&fleet).await, 0);
    fleet.stop().await;
}

#[tokio::test]
async fn an_unknown_job_is_404() {
    let fleet = TestFleet::builder().without_worker().start().await;
    let unknown = fleet.client.job(JobId::new()).await;
    let malformed = fleet.client.get("/v1/jobs/not-an-id").await;
    let cancel = fleet.client.cancel(JobId::new()).await;
    assert_problem(&unknown, StatusCode::NOT_FOUND, "job not found");
    assert_problem(&malformed, StatusCode::NOT_FOUND, "job not found");
    assert_problem(&cancel, StatusCode::NOT_FOUND, "job not found");
    fleet.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let fleet = TestFleet::builder().without_worker().start().await;
    let big = "x".repeat(70_000);
    let answer = fleet
        .client
        .submit_json(&json!({ "kind": "noop", "args": { "pad": big } }))
        .await;
    assert_problem(&answer, StatusCode::PAYLOAD_TOO_LARGE, "65536 bytes");
    assert_eq!(job_count(&fleet).await, 0);
    fleet.stop().await;
}

#[tokio::test]
async fn invalid_fields_are_422_naming_the_field() {
    let fleet = TestFleet::builder().without_worker().start().await;
    let cases = [
        (json!({ "kind": "no.such.kind" }), "kind", "unknown kind"),
        (
            json!({ "kind": "sleep", "args": { "ms": "soon" } }),
            "args.ms",
            "invalid type",
        ),
        (
            json!({ "kind": "webhook.deliver", "args": { "body": {} } }),
            "args",
            "missing field `url`",
        ),
        (
            json!({ "kind": "webhook.deliver", "args": { "url": "ftp://x", "body": {} } }),
            "args.url",
            "http or https",
        ),
        (
            json!({ "kind": "db.backup", "args": {} }),
            "kind",
            "may only be submitted by the namespace named in backup.namespace",
        ),
        (
            json!({ "kind": "noop", "queue": "nope" }),
            "queue",
            "unknown queue",
        ),
        // The broker's quorum queues ignore priorities: one that did nothing is refused.
        (
            json!({ "kind": "noop", "priority": 9 }),
            "priority",
            "priorities are not supported",
        ),
        (
            json!({ "kind": "noop", "priority": 12 }),
            "priority",
            "priorities are not supported",
        ),
        (
            json!({ "kind": "noop", "max_attempts": 0 }),
            "max_attempts",
            "between 1 and 100",
        ),
        (
            json!({ "kind": "noop", "delay": 5, "run_at": "2030-01-01T00:00:00Z" }),
            "delay",
            "not both",
        ),
        (
            json!({ "kind": "noop", "surprise": 1 }),
            "surprise",
            "unknown field `surprise`",
        ),
        (json!({ "kind": 7 }), "kind", "invalid type"),
        (
            // RabbitMQ's consumer timeout (1800 s by default) would kill the channel first.
            json!({ "kind": "noop", "timeout": 1800 }),
            "timeout",
            "consumer timeout, amqp.consumer_timeout_secs = 1800",
        ),
        (
            json!({ "kind": "noop", "backoff": { "min": 10, "max": 1 } }),
            "backoff",
            "need 0.001 <= min <= max",
        ),
    ];
    for (job, field, message) in cases {
        let answer = fleet.client.submit_json(&job).await;
        assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, message);
        assert_eq!(
            answer.body["errors"][0]["field"], field,
            "{job}: {answer:?}"
        );
    }
    let too_many: Vec<_> = (0..1001).map(|_| json!({ "kind": "noop" })).collect();
    let batch = fleet
        .client
        .post("/v1/jobs/batch", &json!({ "jobs": too_many }))
        .await;
    assert_problem(
        &batch,
        StatusCode::UNPROCESSABLE_ENTITY,
        "must hold 1 to 1000 jobs, not 1001",
    );
    assert_eq!(job_count(&fleet).await, 0, "nothing was stored");
    fleet.stop().await;
}

#[tokio::test]
async fn an_unreachable_database_is_503() {
    let (proxy, proxied) = TcpProxy::database().await;
    let fleet = TestFleet::builder()
        .without_worker()
        .api_settings(|s| s.database.url = proxied)
        .start()
        .await;
    // No worker: the warm-up job is only accepted.
    fleet.expect_unfinished();
    // Warm the key cache and show the path works while the database is reachable.
    assert_eq!(
        fleet
            .client
            .submit_json(&json!({ "kind": "noop" }))
            .await
            .status,
        StatusCode::ACCEPTED
    );

    proxy.cut();
    let answer = fleet.client.submit_json(&json!({ "kind": "noop" })).await;
    let read = fleet.client.get("/v1/jobs").await;

    assert_problem(&answer, StatusCode::SERVICE_UNAVAILABLE, "unreachable");
    assert_problem(&read, StatusCode::SERVICE_UNAVAILABLE, "unreachable");
    proxy.restore();
    fleet.stop().await;
}
