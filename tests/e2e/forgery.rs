//! Forged messages: whoever can write to a namespace's vhost can publish any body under a
//! real job's id, but the worker runs what the job's row says or nothing, and a cancel
//! broadcast reaches only the jobs of the namespace it was published in.

use std::time::Duration;

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_jobs::kinds::sleep::{Sleep, SleepArgs};
use engine_shared::JobStatus;
use engine_shared::metrics::{NamespaceLabels, metrics};
use engine_tests::test_kinds::{Flaky, FlakyArgs};
use engine_tests::{DeadLetter, JobOptions, TestFleet, VhostClient, wait_until};
use reqwest::StatusCode;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(20);

/// Waits for the next dead letter of `broker`'s vhost.
async fn next_dead_letter(broker: &VhostClient) -> DeadLetter {
    wait_until("a dead letter", DEADLINE, || async {
        broker.take_dead_letters().await.into_iter().next()
    })
    .await
}

#[tokio::test]
async fn a_forged_message_runs_only_its_rows_args_and_one_of_another_kind_is_refused() {
    let mut fleet = TestFleet::builder().without_worker().start().await;
    let broker = VhostClient::connect(fleet.namespace.as_str()).await;
    let id = fleet.client.submit::<Sleep>(SleepArgs { ms: 7 }).await;
    wait_until("the job to be published", DEADLINE, || async {
        fleet.record(id).await.published_at.map(|_| ())
    })
    .await;
    // The real message, held out of the queue so that the forgeries reach the worker first.
    let (real, _) = wait_until("the job's message", DEADLINE, || async {
        broker.take_one("jobs.default", "traceparent").await
    })
    .await;
    // Another kind under the job's id is refused; the job's own kind with other args is a
    // duplicate of its message, and whichever starts the job runs the row's args.
    let other_kind = json!({ "id": id, "kind": "noop", "queue": "default", "args": {} });
    let other_args = json!({ "id": id, "kind": "sleep", "queue": "default", "args": { "ms": 1 } });

    for forged in [&other_kind, &other_args] {
        broker
            .publish_raw("default", forged.to_string().as_bytes())
            .await;
    }
    fleet.start_worker().await;
    broker.publish_raw("default", &real).await;

    let record = fleet.wait_for(id, JobStatus::Succeeded).await;
    assert_eq!(
        record.result,
        Some(json!({ "slept_ms": 7 })),
        "the job ran with its row's args, never the forged ones"
    );
    assert_eq!(record.attempts, 1, "it ran once");
    let letter = next_dead_letter(&broker).await;
    assert_eq!(letter.body, other_kind.to_string().as_bytes());
    let reason = letter.reason.expect("a reason header");
    assert!(reason.starts_with("forged message"), "{reason}");
    let labels = NamespaceLabels {
        namespace: fleet.namespace.to_string(),
    };
    assert_eq!(metrics().forged_messages.get_or_create(&labels).get(), 1);
    fleet.stop().await;
}

#[tokio::test]
async fn messages_whose_args_postgresql_cannot_hold_stop_no_other_tenants_jobs() {
    // One worker serves both namespaces and batches their starts together. A body's args
    // never reach PostgreSQL, so a NUL (which jsonb refuses) in them cannot fail a batch.
    let fleet = TestFleet::builder().namespaces(2).start().await;
    let (a, b) = (&fleet.tenants[0], &fleet.tenants[1]);
    let a_witness = a.client.submit::<Noop>(NoopArgs {}).await;
    wait_until("A's witness to succeed", DEADLINE, || async {
        (fleet.record_in(&a.namespace, a_witness).await?.status == JobStatus::Succeeded)
            .then_some(())
    })
    .await; // A's topology is declared
    let a_broker = VhostClient::connect(a.namespace.as_str()).await;
    let poisoned = |n: usize| {
        json!({ "id": uuid::Uuid::now_v7(), "kind": "noop", "queue": "default",
                "args": { "note": format!("{n}\u{0}") } })
        .to_string()
    };
    let flood = async {
        for n in 0..300 {
            a_broker
                .publish_raw("default", poisoned(n).as_bytes())
                .await;
        }
    };
    let of_b = async {
        let mut ids = Vec::new();
        for _ in 0..20 {
            ids.push(b.client.submit::<Noop>(NoopArgs {}).await);
        }
        ids
    };
    let ((), of_b) = tokio::join!(flood, of_b);
    for &id in &of_b {
        wait_until("B's job to succeed", DEADLINE, || async {
            (fleet.record_in(&b.namespace, id).await?.status == JobStatus::Succeeded).then_some(())
        })
        .await;
    }
    // And A's own jobs still run: the poisoned messages went to A's dead queue.
    let a_after = a.client.submit::<Noop>(NoopArgs {}).await;
    wait_until("A's next job to succeed", DEADLINE, || async {
        (fleet.record_in(&a.namespace, a_after).await?.status == JobStatus::Succeeded).then_some(())
    })
    .await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_message_naming_another_namespaces_job_touches_nothing() {
    let fleet = TestFleet::builder().namespaces(2).start().await;
    // B's job waits an hour: only that nothing touched it matters.
    fleet.expect_unfinished();
    let (a, b) = (&fleet.tenants[0], &fleet.tenants[1]);
    let b_job = b
        .client
        .submit_with::<Noop>(
            NoopArgs {},
            JobOptions::default().delay(Duration::from_secs(3600)),
        )
        .await;
    let a_witness = a.client.submit::<Noop>(NoopArgs {}).await;
    wait_until("A's witness to succeed", DEADLINE, || async {
        (fleet.record_in(&a.namespace, a_witness).await?.status == JobStatus::Succeeded)
            .then_some(())
    })
    .await; // A's topology is declared
    let a_broker = VhostClient::connect(a.namespace.as_str()).await;
    // B's job's exact body, published on A's vhost.
    let message = json!({ "id": b_job, "kind": "noop", "queue": "default", "args": {} });

    a_broker
        .publish_raw("default", message.to_string().as_bytes())
        .await;

    let reason = next_dead_letter(&a_broker).await.reason.unwrap();
    assert_eq!(
        reason,
        format!("no job {b_job} in namespace {}", a.namespace)
    );
    let record = fleet.record_in(&b.namespace, b_job).await.unwrap();
    assert_eq!(record.status, JobStatus::Scheduled, "B's job is untouched");
    assert_eq!(record.attempts, 0);
    fleet.stop().await;
}

#[tokio::test]
async fn a_forged_message_whose_args_do_not_fit_cannot_bury_a_real_job() {
    // One delivery at a time, so the witness after the forgery runs only once the forgery
    // has been settled.
    let fleet = TestFleet::builder()
        .settings(|s| s.worker.concurrency = 1)
        .start()
        .await;
    // The real job waits an hour: only that the forgery did not bury it matters.
    fleet.expect_unfinished();
    let broker = VhostClient::connect(fleet.namespace.as_str()).await;
    // A real job, held back by its delay so that only the forged message reaches a worker.
    let id = fleet
        .client
        .submit_with::<Flaky>(
            FlakyArgs { fail_times: 0 },
            JobOptions::default().delay(Duration::from_secs(3600)),
        )
        .await;
    let witness = fleet.client.submit::<Noop>(NoopArgs {}).await;
    fleet.wait_for(witness, JobStatus::Succeeded).await; // the topology is declared
    let forged = json!({
        "id": id, "kind": "test.flaky", "queue": "default", "args": { "fail_times": "many" }
    });

    broker
        .publish_raw("default", forged.to_string().as_bytes())
        .await;
    let after = fleet.client.submit::<Noop>(NoopArgs {}).await;
    fleet.wait_for(after, JobStatus::Succeeded).await;

    let record = fleet.record(id).await;
    assert_eq!(record.status, JobStatus::Scheduled, "the row is untouched");
    assert_eq!(record.attempts, 0);
    assert!(record.last_error.is_none(), "{:?}", record.last_error);
    fleet.stop().await;
}

#[tokio::test]
async fn a_forged_cancel_on_another_namespaces_vhost_does_not_cancel_a_running_job() {
    // One worker serves both namespaces, so both cancel broadcasts reach the same process.
    let fleet = TestFleet::builder().namespaces(2).start().await;
    let (a, b) = (&fleet.tenants[0], &fleet.tenants[1]);
    let a_job = a
        .client
        .submit_with::<Sleep>(
            SleepArgs { ms: 5000 },
            JobOptions::default().max_attempts(1),
        )
        .await;
    let b_witness = b.client.submit::<Sleep>(SleepArgs { ms: 60000 }).await;
    for (namespace, id) in [(&a.namespace, a_job), (&b.namespace, b_witness)] {
        wait_until("the job to run", DEADLINE, || async {
            (fleet.record_in(namespace, id).await?.status == JobStatus::Running).then_some(())
        })
        .await;
    }
    let b_broker = VhostClient::connect(b.namespace.as_str()).await;

    b_broker
        .publish_control(json!({ "cancel": a_job }).to_string().as_bytes())
        .await;
    // B's own cancel follows the forged one on the same broadcast, to the same listener:
    // once it has stopped B's job, the forged one has been read.
    let requested = b.client.cancel(b_witness).await;
    assert_eq!(requested.status, StatusCode::ACCEPTED, "{requested:?}");
    let witness = wait_until("B's job to be cancelled", DEADLINE, || async {
        let record = fleet.record_in(&b.namespace, b_witness).await?;
        (record.status == JobStatus::Cancelled).then_some(record)
    })
    .await;

    let a_record = wait_until("A's job to finish", DEADLINE, || async {
        let record = fleet.record_in(&a.namespace, a_job).await?;
        record.status.is_final().then_some(record)
    })
    .await;
    assert_eq!(
        a_record.status,
        JobStatus::Succeeded,
        "A's job was not cancelled: {:?}",
        a_record.last_error
    );
    assert_eq!(a_record.result, Some(json!({ "slept_ms": 5000 })));
    assert!(
        a_record.finished_at > witness.finished_at,
        "A's job was still running when the forged cancel was read"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_message_naming_a_queue_the_fleet_lacks_is_poison_and_labels_nothing() {
    // Queue names label the worker's metrics; one a publisher made up must never reach a
    // label, or forged messages could grow every shared worker's /metrics without bound.
    let fleet = TestFleet::builder().start().await;
    let broker = VhostClient::connect(fleet.namespace.as_str()).await;
    let witness = fleet.client.submit::<Noop>(NoopArgs {}).await;
    fleet.wait_for(witness, JobStatus::Succeeded).await; // the topology is declared
    let made_up = "q-made-up-by-a-publisher";
    let message =
        json!({ "id": uuid::Uuid::now_v7(), "kind": "noop", "queue": made_up, "args": {} });

    broker
        .publish_raw("default", message.to_string().as_bytes())
        .await;

    let reason = next_dead_letter(&broker).await.reason.unwrap();
    assert!(reason.starts_with("unknown queue"), "{reason}");
    let exported = metrics().encode();
    assert!(
        !exported.contains(made_up),
        "a made-up queue became a metric label"
    );
    fleet.stop().await;
}
