//! The broker connections docs/DEPLOY.md budgets for ("CloudAMQP", point 5): under load,
//! with retries, a worker process holds 2 AMQP connections per namespace it serves (its
//! consumers', its publisher's) and an API process at most 2 (its relay's pool), and they
//! keep their channels: after three times the jobs, the very same connections and channels
//! are open, none closed and reopened.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use engine_shared::JobStatus;
use engine_tests::fleet::Tenant;
use engine_tests::management::vhost_connections;
use engine_tests::{TestFleet, wait_until};

const DEADLINE: Duration = Duration::from_secs(120);
/// Most connections one process may hold to one vhost (docs/DEPLOY.md).
const MOST_PER_PROCESS: usize = 2;
/// The channels a worker keeps per vhost: on its consumers' connection, one for set-up and
/// the cancel listener plus one per work queue (`critical`, `default`, `bulk`); on its
/// publisher's, the one confirm-mode channel it reuses for every retry and deferral.
const WORKER_CHANNELS: usize = 1 + 3 + 1;
/// The API's one confirm-mode channel per vhost, for every publish (a `/metrics` scrape
/// would open a short-lived one per queue; nothing scrapes here).
const API_CHANNELS: usize = 1;

/// What one process holds on one vhost: its connections (by the broker's name for each)
/// and the numbers of the channels open on each.
type Holdings = BTreeMap<String, Vec<u16>>;

/// Every process's holdings on `vhost`, by the name the process gives its connections
/// (`tl-engine-api`, `tl-engine-worker <id>`).
async fn holdings(vhost: &str) -> BTreeMap<String, Holdings> {
    let mut by_process: BTreeMap<String, Holdings> = BTreeMap::new();
    for connection in vhost_connections(vhost).await {
        by_process
            .entry(connection.client_name)
            .or_default()
            .insert(connection.name, connection.channels);
    }
    by_process
}

fn channels(holdings: &Holdings) -> usize {
    holdings.values().map(Vec::len).sum()
}

fn api(all: &BTreeMap<String, Holdings>) -> Holdings {
    all.get("tl-engine-api").cloned().unwrap_or_default()
}

fn workers(all: &BTreeMap<String, Holdings>) -> Vec<&Holdings> {
    all.iter()
        .filter(|(process, _)| process.starts_with("tl-engine-worker"))
        .map(|(_, holdings)| holdings)
        .collect()
}

/// Fails if any process holds more connections to `vhost` than the docs allow, or more
/// channels than the code keeps.
fn assert_within_bounds(vhost: &str, all: &BTreeMap<String, Holdings>) {
    for (process, holdings) in all {
        assert!(
            holdings.len() <= MOST_PER_PROCESS,
            "{process} holds {} connections to {vhost}: {all:?}",
            holdings.len()
        );
    }
    assert!(channels(&api(all)) <= API_CHANNELS, "{vhost}: {all:?}");
    for worker in workers(all) {
        assert!(channels(worker) <= WORKER_CHANNELS, "{vhost}: {all:?}");
    }
}

/// Submits `plain` noops and `flaky` jobs failing twice (so the worker publishes retries)
/// to every tenant, and waits until all have succeeded, checking every vhost's
/// connections against the bounds all along.
async fn run_round(fleet: &TestFleet, plain: usize, flaky: usize) {
    let mut targets = Vec::new();
    for Tenant {
        namespace, client, ..
    } in &fleet.tenants
    {
        let before = fleet.count_in(namespace, JobStatus::Succeeded).await;
        targets.push(before + i64::try_from(plain + flaky).unwrap());
        client
            .submit_copies(plain, &json!({ "kind": "noop" }))
            .await;
        client
            .submit_copies(
                flaky,
                &json!({ "kind": "test.flaky", "args": { "fail_times": 2 } }),
            )
            .await;
    }
    wait_until("every job of the round to succeed", DEADLINE, || async {
        let mut done = true;
        for (tenant, target) in fleet.tenants.iter().zip(&targets) {
            let vhost = tenant.namespace.as_str();
            assert_within_bounds(vhost, &holdings(vhost).await);
            done &= fleet
                .count_in(&tenant.namespace, JobStatus::Succeeded)
                .await
                >= *target;
        }
        done.then_some(())
    })
    .await;
}

/// Waits until the management API lists, in every vhost, the worker's 2 connections and
/// the API's, with all their channels; returns each vhost's holdings then.
async fn settled(fleet: &TestFleet) -> Vec<BTreeMap<String, Holdings>> {
    wait_until(
        "the broker to list every connection and channel",
        Duration::from_secs(30),
        || async {
            let mut every_vhost = Vec::new();
            for tenant in &fleet.tenants {
                let all = holdings(tenant.namespace.as_str()).await;
                let worker_listed = workers(&all)
                    .iter()
                    .any(|worker| worker.len() == 2 && channels(worker) >= WORKER_CHANNELS);
                if !worker_listed || channels(&api(&all)) < API_CHANNELS {
                    return None;
                }
                every_vhost.push(all);
            }
            Some(every_vhost)
        },
    )
    .await
}

#[tokio::test]
async fn a_worker_and_an_api_hold_at_most_two_broker_connections_per_namespace_and_keep_their_channels()
 {
    // Arrange: one API and one worker process serving 2 namespaces, 8 jobs at once.
    let fleet = TestFleet::builder()
        .without_worker()
        .namespaces(2)
        .start()
        .await;
    let _worker = fleet.spawn_test_worker_process(8);

    // Act: a round of jobs, then twice as many again.
    run_round(&fleet, 100, 20).await;
    let after_first = settled(&fleet).await;
    run_round(&fleet, 200, 40).await;
    let after_second = settled(&fleet).await;

    // Assert: per vhost, one worker with exactly its 2 connections and 5 channels, and the
    // API with 1 or 2 connections and its 1 channel, nobody else...
    for (tenant, all) in fleet.tenants.iter().zip(&after_second) {
        let vhost = tenant.namespace.as_str();
        assert_within_bounds(vhost, all);
        assert_eq!(all.len(), 2, "{vhost}: one API and one worker: {all:?}");
        let worker = workers(all)[0];
        assert_eq!(
            (worker.len(), channels(worker)),
            (2, WORKER_CHANNELS),
            "{vhost}: {all:?}"
        );
        let api = api(all);
        assert!(
            (1..=MOST_PER_PROCESS).contains(&api.len()) && channels(&api) == API_CHANNELS,
            "{vhost}: {all:?}"
        );
    }
    // ...and the very connections and channels of the first round carried the second:
    // none was closed and opened again, however many jobs went through.
    assert_eq!(
        after_first, after_second,
        "connections or channels were replaced while jobs ran"
    );
    fleet.stop().await;
}
