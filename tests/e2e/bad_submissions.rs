//! A submission PostgreSQL would refuse (a NUL in a string, a value outside its column's
//! CHECK) is answered 422 naming where it is, stores nothing, and fails only itself: the
//! group commit it would have shared with other namespaces' jobs is not broken by it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use engine_tests::client::{Answer, ApiClient};
use engine_tests::{TestFleet, wait_until};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Bodies each refused by PostgreSQL as they stood, with the field the 422 must name.
fn poison() -> Vec<(Value, &'static str)> {
    vec![
        // Stored in whole milliseconds, 0.1 ms is 0: `CHECK (backoff_min_ms > 0)`.
        (
            json!({ "kind": "noop", "backoff": { "min": 0.0001, "max": 1 } }),
            "backoff",
        ),
        // Valid JSON; `jsonb` refuses the escape.
        (
            json!({ "kind": "noop", "args": { "note": "a\u{0}b" } }),
            "args.note",
        ),
        (
            json!({ "kind": "noop", "args": { "meta": { "a\u{0}b": 1 } } }),
            "args.meta",
        ),
        (
            json!({ "kind": "noop", "args": { "list": ["fine", { "deep": "x\u{0}" }] } }),
            "args.list[1].deep",
        ),
        (json!({ "kind": "no\u{0}op" }), "kind"),
        (json!({ "kind": "noop", "queue": "default\u{0}" }), "queue"),
        (
            json!({ "kind": "noop", "idempotency_key": "key\u{0}" }),
            "idempotency_key",
        ),
        // Outside `timestamptz` (which starts in 4713 BC).
        (
            json!({ "kind": "noop", "run_at": "-5000-01-01T00:00:00Z" }),
            "run_at",
        ),
        // Wider than the columns (`smallint`, `integer`).
        (json!({ "kind": "noop", "priority": 70_000 }), "priority"),
        (
            json!({ "kind": "noop", "max_attempts": 3_000_000_000u64 }),
            "max_attempts",
        ),
    ]
}

/// `None` if `answer` is a 422 problem naming `field`; otherwise what it was instead.
fn misnamed(answer: &Answer, field: &str, body: &Value) -> Option<String> {
    let named = answer.status == StatusCode::UNPROCESSABLE_ENTITY
        && answer.content_type == "application/problem+json"
        && answer.body["errors"][0]["field"] == field;
    (!named).then(|| format!("{body} -> {} {}", answer.status, answer.body))
}

async fn job_count(client: &ApiClient) -> usize {
    client.get("/v1/jobs").await.body["jobs"]
        .as_array()
        .unwrap()
        .len()
}

async fn fleet(namespaces: usize) -> TestFleet {
    TestFleet::builder()
        .without_worker()
        .namespaces(namespaces)
        .start()
        .await
}

#[tokio::test]
async fn each_bad_submission_is_422_naming_its_path_and_stores_nothing() {
    let fleet = fleet(1).await;

    let mut wrong = Vec::new();
    for (body, field) in poison() {
        let answer = fleet.client.submit_json(&body).await;
        wrong.extend(misnamed(&answer, field, &body));
    }

    assert!(
        wrong.is_empty(),
        "not a 422 naming the field:\n{}",
        wrong.join("\n")
    );

    assert_eq!(job_count(&fleet.client).await, 0, "nothing was stored");
    fleet.stop().await;
}

#[tokio::test]
async fn a_bad_job_in_a_batch_is_422_naming_its_index_and_stores_nothing() {
    let fleet = fleet(1).await;

    let mut wrong = Vec::new();
    for (body, field) in poison() {
        let batch = json!({ "jobs": [{ "kind": "noop" }, body] });
        let answer = fleet.client.post("/v1/jobs/batch", &batch).await;
        wrong.extend(misnamed(&answer, &format!("jobs[1].{field}"), &batch));
    }

    assert!(
        wrong.is_empty(),
        "not a 422 naming the field:\n{}",
        wrong.join("\n")
    );

    assert_eq!(job_count(&fleet.client).await, 0, "nothing was stored");
    fleet.stop().await;
}

/// Submits poison bodies in turn until `stop`; returns the answers that were not a 422
/// naming the body's field (it keeps going after one, so the pressure lasts).
async fn submit_poison_until(
    client: ApiClient,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for (body, field) in poison().iter().cycle() {
        if stop.load(Ordering::SeqCst) {
            return wrong;
        }
        let answer = client.submit_json(body).await;
        wrong.extend(misnamed(&answer, field, body));
        answered.fetch_add(1, Ordering::SeqCst);
    }
    unreachable!("cycle never ends")
}

#[tokio::test]
async fn one_namespaces_bad_submissions_fail_no_other_submission() {
    let fleet = fleet(2).await;
    // No worker: what matters is which submissions are stored.
    fleet.expect_unfinished();
    let (a, b) = (&fleet.tenants[0], &fleet.tenants[1]);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let poisoners: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(submit_poison_until(
                a.client.clone(),
                stop.clone(),
                answered.clone(),
            ))
        })
        .collect();
    // B starts only once A's poison is flowing, so the two share flushes.
    wait_until("A's first answers", Duration::from_secs(20), || async {
        (answered.load(Ordering::SeqCst) >= 4).then_some(())
    })
    .await;

    let statuses: Vec<StatusCode> = futures_util::stream::iter(0..600)
        .map(|i| {
            let client = b.client.clone();
            async move {
                client
                    .submit_json(&json!({ "kind": "noop", "args": { "i": i } }))
                    .await
                    .status
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    stop.store(true, Ordering::SeqCst);
    let mut wrong = Vec::new();
    for poisoner in poisoners {
        wrong.extend(poisoner.await.unwrap());
    }

    let refused = statuses
        .iter()
        .filter(|status| **status != StatusCode::ACCEPTED)
        .count();
    assert_eq!(refused, 0, "B's submissions not accepted: {refused} of 600");
    assert!(
        wrong.is_empty(),
        "{} of A's {} answers were not a 422 naming the field, e.g. {:?}",
        wrong.len(),
        answered.load(Ordering::SeqCst),
        wrong.first()
    );
    assert_eq!(job_count(&a.client).await, 0, "nothing of A's was stored");
    assert_eq!(
        fleet
            .count_in(&b.namespace, engine_shared::JobStatus::Queued)
            .await,
        600
    );
    fleet.stop().await;
}
