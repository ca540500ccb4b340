//! Health in the seed documents' format: `/readyz` on the API and on a worker names each
//! dependency `healthy` or `unhealthy: reason` (200 only when all are healthy; PostgreSQL
//! down is `unhealthy`, anything else `degraded`); a worker cut off from its broker is not
//! ready but stays alive (its supervisor keeps reconnecting), and runs jobs once it is back.
//! (Liveness failing for a stopped or silent supervisor is unit-tested in the worker.)

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_tests::proxy::TcpProxy;
use engine_tests::wait::wait_until;
use engine_tests::{TestFleet, TestSettings, services};

async fn probe(address: SocketAddr, path: &str) -> (StatusCode, Value) {
    let response = reqwest::get(format!("http://{address}{path}"))
        .await
        .expect("the health server answers");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until `path` answers `status`, and returns the body.
async fn wait_for(address: SocketAddr, path: &str, status: StatusCode) -> Value {
    wait_until(
        &format!("{path} to answer {status}"),
        Duration::from_secs(20),
        || async {
            let (got, body) = probe(address, path).await;
            (got == status).then_some(body)
        },
    )
    .await
}

#[tokio::test]
async fn the_api_is_ready_with_every_dependency_and_degraded_without_redis() {
    let redis = TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let fleet = TestFleet::builder()
        .settings(|s| {
            s.use_test_storage();
            s.redis.url = format!("redis://{}", redis.address());
        })
        .start()
        .await;
    let api = fleet.client.address();

    let ready = wait_for(api, "/readyz", StatusCode::OK).await;
    assert_eq!(ready["status"], "healthy");
    for dependency in ["postgres", "rabbitmq", "redis", "s3"] {
        assert_eq!(ready["dependencies"][dependency], "healthy", "{ready}");
    }
    assert!(ready["timestamp"].is_string());

    redis.cut();
    let degraded = wait_for(api, "/readyz", StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(degraded["status"], "degraded", "{degraded}");
    assert!(
        degraded["dependencies"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("unhealthy: "),
        "{degraded}"
    );
    assert_eq!(degraded["dependencies"]["postgres"], "healthy");
    let (live, _) = probe(api, "/healthz").await;
    assert_eq!(live, StatusCode::OK, "liveness does not depend on Redis");

    redis.restore();
    wait_for(api, "/readyz", StatusCode::OK).await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_worker_cut_off_from_the_broker_is_not_ready_but_stays_alive_and_recovers() {
    let broker = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let through_proxy =
        services::amqp_url().replace("127.0.0.1:5672", &broker.address().to_string());
    let fleet = TestFleet::builder()
        .worker_settings(|s| s.amqp.url = through_proxy)
        .settings(TestSettings::serve_worker_health)
        .start()
        .await;
    let worker = fleet.worker_health.expect("the worker serves health");

    let ready = wait_for(worker, "/readyz", StatusCode::OK).await;
    assert_eq!(ready["dependencies"]["rabbitmq"], "healthy", "{ready}");
    assert_eq!(probe(worker, "/healthz").await.0, StatusCode::OK);

    broker.cut();
    let not_ready = wait_for(worker, "/readyz", StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(not_ready["status"], "degraded", "{not_ready}");
    assert!(
        not_ready["dependencies"]["rabbitmq"]
            .as_str()
            .unwrap()
            .contains(fleet.namespace.as_str()),
        "{not_ready}"
    );
    // Its supervisor keeps reconnecting, so it is alive: restarting it would not help.
    let (live, body) = probe(worker, "/healthz").await;
    assert_eq!(live, StatusCode::OK, "{body}");

    broker.restore();
    wait_for(worker, "/readyz", StatusCode::OK).await;
    let id = fleet.client.submit::<Noop>(NoopArgs {}).await;
    fleet
        .wait_for(id, engine_shared::JobStatus::Succeeded)
        .await;
    fleet.stop().await;
}

#[tokio::test]
async fn the_api_without_postgres_is_unhealthy_but_alive() {
    let (database, proxied) = TcpProxy::database().await;
    let fleet = TestFleet::builder()
        .without_worker()
        .api_settings(|s| s.database.url = proxied)
        .start()
        .await;
    let api = fleet.client.address();
    wait_for(api, "/readyz", StatusCode::OK).await;

    database.cut();
    let down = wait_for(api, "/readyz", StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(down["status"], "unhealthy", "{down}");
    assert!(
        down["dependencies"]["postgres"]
            .as_str()
            .unwrap()
            .starts_with("unhealthy: "),
        "{down}"
    );
    assert!(
        !down.to_string().contains("postgres://"),
        "no connection string in the report: {down}"
    );
    assert_eq!(probe(api, "/healthz").await.0, StatusCode::OK);

    database.restore();
    wait_for(api, "/readyz", StatusCode::OK).await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_flood_of_readiness_calls_costs_one_check_and_reasons_stay_on_the_admin_port() {
    let redis = TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let fleet = TestFleet::builder()
        .without_worker()
        .settings(|s| {
            s.use_test_storage();
            s.redis.url = format!("redis://{}", redis.address());
            s.serve_admin();
        })
        .start()
        .await;
    let api = fleet.client.address();
    let admin = fleet.admin.as_ref().expect("an admin port").address();
    let public_metrics = reqwest::get(format!("http://{api}/metrics")).await.unwrap();
    assert_eq!(
        public_metrics.status(),
        StatusCode::NOT_FOUND,
        "metrics moved to the admin port"
    );
    wait_for(api, "/readyz", StatusCode::OK).await;

    // 200 unauthenticated callers at once: every one answered, by one or two checks (two
    // if the result went stale mid-flood), not one check (four billed calls) each.
    let before = engine_tests::scrape::counter(admin, "tl_readiness_checks_total").await;
    let answers = futures_util::future::join_all((0..200).map(|_| probe(api, "/readyz"))).await;
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK));
    let checks = engine_tests::scrape::counter(admin, "tl_readiness_checks_total").await - before;
    assert!(checks <= 2, "{checks} checks for 200 calls");

    redis.cut();
    let public = wait_for(api, "/readyz", StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        public["dependencies"]["redis"], "unhealthy: unavailable",
        "{public}"
    );
    let detailed = wait_for(admin, "/readyz", StatusCode::SERVICE_UNAVAILABLE).await;
    let reason = detailed["dependencies"]["redis"].as_str().unwrap();
    assert!(
        reason.starts_with("unhealthy: ") && reason != "unhealthy: unavailable",
        "the admin port says why: {detailed}"
    );
    let text = public.to_string();
    for private in [
        fleet.namespace.as_str(),
        &services::s3_settings().bucket,
        "127.0.0.1",
    ] {
        assert!(
            !text.contains(private),
            "the public report names {private}: {text}"
        );
    }
    redis.restore();
    fleet.stop().await;
}
