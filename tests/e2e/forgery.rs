//! Forged messages: whoever can write to a namespace's vhost can publish any body under a
//! real job's id, but a cancel broadcast reaches only the jobs of the namespace it was
//! published in.

use std::time::Duration;

use engine_shared::JobStatus;
use engine_tests::{FleetOptions, TestFleet, VhostClient, wait_until};
use reqwest::StatusCode;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_forged_cancel_on_another_namespaces_vhost_does_not_cancel_a_running_job() {
    // One worker serves both namespaces, so both cancel broadcasts reach the same process.
    let fleet = TestFleet::start(FleetOptions {
        namespaces: 2,
        ..FleetOptions::default()
    })
    .await;
    let (a, b) = (&fleet.tenants[0], &fleet.tenants[1]);
    let a_job = a
        .client
        .submit(&json!({ "kind": "sleep", "args": { "ms": 5000 }, "max_attempts": 1 }))
        .await
        .id();
    let b_witness = b
        .client
        .submit(&json!({ "kind": "sleep", "args": { "ms": 60000 } }))
        .await
        .id();
    for (namespace, id) in [(&a.namespace, &a_job), (&b.namespace, &b_witness)] {
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
    let requested = b.client.cancel(&b_witness).await;
    assert_eq!(requested.status, StatusCode::ACCEPTED, "{requested:?}");
    let witness = wait_until("B's job to be cancelled", DEADLINE, || async {
        let record = fleet.record_in(&b.namespace, &b_witness).await?;
        (record.status == JobStatus::Cancelled).then_some(record)
    })
    .await;

    let a_record = wait_until("A's job to finish", DEADLINE, || async {
        let record = fleet.record_in(&a.namespace, &a_job).await?;
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
