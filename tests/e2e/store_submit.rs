//! The group commit's flush against the real database, below the API's validation: a job
//! PostgreSQL refuses fails alone, and the jobs that shared its INSERT are stored, keys
//! and all.

use std::time::Duration;

use engine_shared::retry::Backoff;
use engine_shared::store::{NewJob, NotStored, Submitted};
use engine_shared::{IdempotencyKey, JobId, JobStatus, Kind, QueueName};
use engine_tests::TestFleet;
use serde_json::{Value, json};

fn new_job(fleet: &TestFleet, args: Value) -> NewJob {
    NewJob {
        id: JobId::new(),
        namespace: fleet.namespace.clone(),
        kind: Kind::parse("noop").unwrap(),
        queue: QueueName::parse("default").unwrap(),
        args,
        priority: 0,
        max_attempts: 3,
        timeout_ms: 10_000,
        idempotency_key: None,
        run_at: None,
        backoff: None,
        traceparent: None,
    }
}

fn keyed(mut job: NewJob, key: &str) -> NewJob {
    job.idempotency_key = Some(IdempotencyKey::parse(key).unwrap());
    job
}

fn refused_code(outcome: &Result<Submitted, NotStored>) -> Option<&str> {
    match outcome {
        Err(NotStored::Refused(refused)) => Some(refused.code.as_str()),
        _ => None,
    }
}

#[tokio::test]
async fn a_refused_job_fails_alone_and_the_rest_of_its_flush_is_stored() {
    let fleet = TestFleet::builder().without_worker().start().await;
    // The store alone is under test: no worker runs what it stores.
    fleet.expect_unfinished();
    let earlier = keyed(new_job(&fleet, json!({})), "earlier");
    fleet
        .store
        .insert_jobs(std::slice::from_ref(&earlier))
        .await
        .unwrap();
    // `jsonb` refuses a NUL (22P05); 0.1 ms is stored as 0 ms, against a CHECK (23514).
    let mut zero_backoff = new_job(&fleet, json!({}));
    zero_backoff.backoff = Some(Backoff {
        min: Duration::from_micros(100),
        max: Duration::from_secs(1),
    });
    let batch = vec![
        keyed(new_job(&fleet, json!({ "n": 0 })), "fresh"),
        new_job(&fleet, json!({ "n": 1 })),
        new_job(&fleet, json!({ "note": "a\u{0}b" })),
        keyed(new_job(&fleet, json!({ "n": 3 })), "earlier"),
        zero_backoff,
        new_job(&fleet, json!({ "n": 5 })),
        keyed(new_job(&fleet, json!({ "n": 6 })), "fresh"),
    ];

    let outcomes = fleet.store.insert_jobs_each(&batch).await.unwrap();

    assert_eq!(outcomes.len(), batch.len());
    assert_eq!(refused_code(&outcomes[2]), Some("22P05"), "{outcomes:?}");
    assert_eq!(refused_code(&outcomes[4]), Some("23514"), "{outcomes:?}");
    let created = |index: usize| Submitted::Created {
        id: batch[index].id,
        status: JobStatus::Queued,
    };
    assert_eq!(outcomes[0].as_ref().unwrap(), &created(0));
    assert_eq!(outcomes[1].as_ref().unwrap(), &created(1));
    assert_eq!(outcomes[5].as_ref().unwrap(), &created(5));
    assert_eq!(
        outcomes[3].as_ref().unwrap(),
        &Submitted::Existing {
            id: earlier.id,
            status: JobStatus::Queued
        },
        "a key used before names the earlier job"
    );
    assert_eq!(
        outcomes[6].as_ref().unwrap(),
        &Submitted::Existing {
            id: batch[0].id,
            status: JobStatus::Queued
        },
        "a key used twice in the flush names the first"
    );
    assert_eq!(
        fleet.count_in_status(JobStatus::Queued).await,
        4,
        "the earlier job and the three new ones, nothing else"
    );
    fleet.stop().await;
}
