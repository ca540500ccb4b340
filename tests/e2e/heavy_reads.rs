//! What a tenant can make the API read: a flood of unknown keys costs a bounded number of
//! PostgreSQL lookups, and an error search over a large namespace is cut off at
//! `api.read_timeout_ms` with a clear problem, while another tenant's submissions go on.

use std::time::Duration;

use futures_util::{StreamExt, stream};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::json;

use engine_shared::Namespace;
use engine_shared::store::Store;
use engine_tests::client::Answer;
use engine_tests::{TcpProxy, TestFleet, wait_until};

/// A well-formed key that no one created.
fn random_key() -> String {
    let mut random = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut random);
    format!("tle_{}", hex::encode(random))
}

#[tokio::test]
async fn a_flood_of_unknown_keys_costs_a_bounded_number_of_lookups_and_a_new_key_works_promptly() {
    let fleet = TestFleet::builder().without_worker().start().await;
    let api = fleet.client.address();
    assert_eq!(
        fleet.client.get("/v1/jobs?limit=1").await.status,
        StatusCode::OK
    );
    let before = engine_tests::scrape::counter(api, "tl_api_key_lookups_total").await;

    let flood = stream::iter(0..2_000)
        .map(|_| {
            let client = fleet.client.with_key(Some(&random_key()));
            async move { client.get("/v1/jobs?limit=1").await.status }
        })
        .buffer_unordered(50)
        .collect::<Vec<_>>();
    let tenant = async {
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(fleet.client.get("/v1/jobs?limit=1").await.status);
        }
        statuses
    };
    let (flood, tenant) = tokio::join!(flood, tenant);

    assert!(
        flood
            .iter()
            .all(|status| *status == StatusCode::UNAUTHORIZED),
        "every unknown key is refused: {:?}",
        flood
            .iter()
            .find(|status| **status != StatusCode::UNAUTHORIZED)
    );
    assert!(
        tenant.iter().all(|status| *status == StatusCode::OK),
        "the valid tenant is answered throughout: {tenant:?}"
    );
    let lookups = engine_tests::scrape::counter(api, "tl_api_key_lookups_total").await - before;
    assert!(
        lookups <= 100,
        "2,000 unknown keys cost {lookups} PostgreSQL key lookups"
    );

    let created = fleet
        .store
        .create_api_key(&fleet.namespace, "created during a flood")
        .await
        .unwrap();
    let client = fleet.client.with_key(Some(created.key.expose_secret()));
    wait_until(
        "the new key to be accepted",
        Duration::from_secs(5),
        || async { (client.get("/v1/jobs?limit=1").await.status == StatusCode::OK).then_some(()) },
    )
    .await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_valid_key_whose_lookup_the_database_answers_slowly_is_still_accepted() {
    let (proxy, proxied) = TcpProxy::database().await;
    let fleet = TestFleet::builder()
        .without_worker()
        .api_settings(|s| s.database.url = proxied)
        .start()
        .await;
    // No request has been made, so the API holds no read of the live keys: this one's first
    // use must read them.
    let created = fleet
        .store
        .create_api_key(&fleet.namespace, "looked up slowly")
        .await
        .unwrap();
    let client = fleet.client.with_key(Some(created.key.expose_secret()));

    // The API's connections are dropped and new ones held for 1.25 s, so that read takes
    // longer than the second a read of the keys is trusted (as after a database restart),
    // and less than the test fleet's 1.5 s wait for a connection.
    proxy.cut();
    proxy.restore();
    proxy.stall();
    let resumed = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1_250)).await;
        proxy.resume();
        proxy
    });
    let answer = client.get("/v1/jobs?limit=1").await;
    let _proxy = resumed.await.unwrap();
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "a valid key was refused because its lookup was slow: {}",
        answer.body
    );
    fleet.stop().await;
}

/// Text every filler row's error holds: each trigram of [`SLOW_NEEDLE`] occurs in it, the
/// needle itself never, so neither a trigram index nor a scan can skip a row.
const SLOW_NEEDLE: &str = "abcabc";

/// `rows` dead jobs in `namespace` whose errors a search for [`SLOW_NEEDLE`] must read.
async fn fill_with_dead_jobs(store: &Store, namespace: &Namespace, rows: i64) {
    sqlx::query(
        "INSERT INTO jobs (id, namespace, kind, queue, args, status, max_attempts, timeout_ms,
                           run_at, published_at, finished_at, last_error)
         SELECT gen_random_uuid(), $1, 'noop', 'default', '{}', 'dead', 1, 1000,
                now(), now(), now(), repeat('abcab ', 300) || n
         FROM generate_series(1, $2) AS n",
    )
    .bind(namespace.as_str())
    .bind(rows)
    .execute(store.pool())
    .await
    .unwrap();
}

async fn remove_jobs(store: &Store, namespace: &Namespace) {
    sqlx::query("DELETE FROM jobs WHERE namespace = $1")
        .bind(namespace.as_str())
        .execute(store.pool())
        .await
        .unwrap();
}

/// A search either answered or was cut off with a problem saying why.
fn answered_or_cut_off(answer: &Answer) -> bool {
    answer.status == StatusCode::OK
        || (answer.status == StatusCode::SERVICE_UNAVAILABLE
            && matches!(
                answer.body["type"].as_str(),
                Some("/problems/read-timeout" | "/problems/reads-busy")
            ))
}

#[tokio::test]
async fn an_error_search_past_the_read_timeout_is_a_clear_503_and_other_tenants_submit_meanwhile() {
    let fleet = TestFleet::builder()
        .without_worker()
        .namespaces(2)
        .settings(|s| s.api.read_timeout_ms = Some(100))
        .start()
        .await;
    // No worker: the other tenant's submissions only have to be accepted.
    fleet.expect_unfinished();
    let (searcher, submitter) = (&fleet.tenants[0], &fleet.tenants[1]);
    fill_with_dead_jobs(&fleet.store, &searcher.namespace, 50_000).await;
    let search = format!("/v1/jobs?error={SLOW_NEEDLE}");

    let alone = searcher.client.get(&search).await;
    assert_eq!(alone.status, StatusCode::SERVICE_UNAVAILABLE, "{alone:?}");
    assert_eq!(alone.body["type"], "/problems/read-timeout", "{alone:?}");
    assert!(
        alone.body["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("api.read_timeout_ms")),
        "{alone:?}"
    );

    let client = searcher.client.clone();
    let searches = tokio::spawn(async move {
        stream::iter(0..12)
            .map(|i| {
                let client = client.clone();
                async move {
                    if i % 2 == 0 {
                        client.get(&format!("/v1/jobs?error={SLOW_NEEDLE}")).await
                    } else {
                        let dry_run = json!({ "error": SLOW_NEEDLE, "dry_run": true });
                        client.post("/v1/jobs/redrive", &dry_run).await
                    }
                }
            })
            .buffer_unordered(12)
            .collect::<Vec<_>>()
            .await
    });
    let mut submissions = Vec::new();
    while !searches.is_finished() || submissions.is_empty() {
        submissions.push(
            submitter
                .client
                .submit_json(&json!({ "kind": "noop" }))
                .await,
        );
    }
    let searches = searches.await.unwrap();

    for answer in &searches {
        assert!(answered_or_cut_off(answer), "{answer:?}");
    }
    for answer in &submissions {
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    }
    remove_jobs(&fleet.store, &searcher.namespace).await;
    fleet.stop().await;
}

#[tokio::test]
async fn an_error_search_shorter_than_three_characters_is_refused_naming_the_field() {
    let fleet = TestFleet::builder().without_worker().start().await;
    let listed = fleet.client.get("/v1/jobs?error=ab").await;
    assert_eq!(
        listed.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{listed:?}"
    );
    assert_eq!(listed.body["errors"][0]["field"], "error", "{listed:?}");
    let redriven = fleet
        .client
        .post(
            "/v1/jobs/redrive",
            &json!({ "error": "x", "dry_run": true }),
        )
        .await;
    assert_eq!(
        redriven.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{redriven:?}"
    );
    assert_eq!(redriven.body["errors"][0]["field"], "error", "{redriven:?}");
    fleet.stop().await;
}
