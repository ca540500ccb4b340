//! TLS to every server a worker uses, end to end, with a real `engine-worker` process:
//! `amqps://` and `rediss://` through TLS-terminating proxies (a throwaway CA, trusted
//! through `SSL_CERT_FILE`) in front of the plain test RabbitMQ and Redis, and PostgreSQL's
//! own TLS (`sslmode=require`, which encrypts without checking the certificate, and
//! `verify-ca`, which checks it against the roots). A worker that does not trust a server's
//! certificate refuses it, runs nothing, and says why in `/readyz`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_shared::JobStatus;
use engine_tests::services::{self, queue_depth};
use engine_tests::worker_process::free_loopback_address;
use engine_tests::{LimitSection, TestCa, TestFleet, TlsProxy, WorkerProcess, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

/// The host and port of a server URL (`default_port` when it names none).
fn server_address(url: &str, default_port: u16) -> SocketAddr {
    let url = url::Url::parse(url).expect("a server URL");
    let host = url.host_str().expect("a host in the server URL");
    (host, url.port().unwrap_or(default_port))
        .to_socket_addrs()
        .expect("resolving the server's host")
        .next()
        .expect("an address for the server's host")
}

/// `url` with its scheme and address replaced: the same server, reached through `proxy`.
fn through(url: &str, scheme: &str, proxy: &TlsProxy) -> String {
    let mut url = url::Url::parse(url).expect("a server URL");
    url.set_scheme(scheme)
        .expect("a TLS scheme of the same kind");
    url.set_host(Some(&proxy.address().ip().to_string()))
        .expect("an IP host");
    url.set_port(Some(proxy.address().port()))
        .expect("a URL with a port");
    url.to_string()
}

/// The test database URL with `sslmode` and `application_name` set (replacing any given),
/// so the worker's sessions must use TLS and can be found in `pg_stat_activity`.
fn database_url(sslmode: &str, application_name: &str) -> String {
    let mut url = url::Url::parse(&services::database_url()).expect("a database URL");
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, _)| key != "sslmode" && key != "application_name")
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("sslmode", sslmode)
        .append_pair("application_name", application_name);
    url.to_string()
}

/// Environment for a worker that trusts exactly the certificates in `roots`: the file as
/// `SSL_CERT_FILE`, and `SSL_CERT_DIR` emptied, since one inherited from the test runner
/// would add a whole directory (on Debian, `/etc/ssl/certs` also holds PostgreSQL's
/// self-signed certificate).
fn trusting(roots: &Path) -> [(&'static str, &str); 2] {
    [
        ("SSL_CERT_FILE", roots.to_str().expect("a UTF-8 path")),
        ("SSL_CERT_DIR", ""),
    ]
}

/// A worker process with `env` and its `/healthz`, `/readyz` and `/metrics` on a free port,
/// which is returned with it.
fn spawn_with_health(
    fleet: &TestFleet,
    concurrency: u16,
    env: &[(&str, &str)],
) -> (WorkerProcess, SocketAddr) {
    let health = free_loopback_address();
    let listen = health.to_string();
    let env = [env, &[("ENGINE__WORKER__HEALTH_LISTEN", listen.as_str())]].concat();
    (
        fleet.spawn_worker_process_with_env(concurrency, 10, &env),
        health,
    )
}

/// A fresh application name, to find one worker's sessions in `pg_stat_activity`.
fn application_name() -> String {
    format!("tls-{}", rand::random::<u32>())
}

async fn readyz(address: SocketAddr) -> Option<(StatusCode, Value)> {
    let response = reqwest::get(format!("http://{address}/readyz"))
        .await
        .ok()?;
    let status = response.status();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

/// Waits until `/readyz` at `health` answers 503 and `dependency`'s reason mentions the
/// certificate; returns the body.
async fn refusing_a_certificate(health: SocketAddr, dependency: &str) -> Value {
    wait_until(
        &format!("/readyz to blame {dependency}'s certificate"),
        DEADLINE,
        || async {
            let (status, body) = readyz(health).await?;
            let reason = body["dependencies"][dependency].as_str()?.to_lowercase();
            (status == StatusCode::SERVICE_UNAVAILABLE && reason.contains("certificate"))
                .then_some(body)
        },
    )
    .await
}

/// `tl_limit_deferrals_total` of `kind`, from the worker's `/metrics`.
async fn limit_deferrals(health: SocketAddr, kind: &str) -> u64 {
    let text = reqwest::get(format!("http://{health}/metrics"))
        .await
        .expect("the worker serves /metrics")
        .text()
        .await
        .expect("reading /metrics");
    text.lines()
        .filter(|line| line.starts_with("tl_limit_deferrals_total{"))
        .filter(|line| line.contains(&format!("kind=\"{kind}\"")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The sessions named `application_name`: how many, and how many of them use TLS.
async fn sessions(fleet: &TestFleet, application_name: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE ssl.ssl)
         FROM pg_stat_activity activity JOIN pg_stat_ssl ssl ON ssl.pid = activity.pid
         WHERE activity.application_name = $1",
    )
    .bind(application_name)
    .fetch_one(fleet.store.pool())
    .await
    .expect("reading pg_stat_ssl")
}

#[tokio::test]
async fn a_worker_process_runs_jobs_over_tls_to_rabbitmq_redis_and_postgres() {
    // Arrange: TLS proxies in front of the plain broker and Redis; the worker (a real
    // process) gets TLS URLs for all three servers and trusts only the proxies' CA, so
    // PostgreSQL's certificate is not among its roots (`require` does not check it).
    let ca = TestCa::new();
    let broker = TlsProxy::start(&ca, server_address(&services::amqp_url(), 5672)).await;
    let redis = TlsProxy::start(&ca, server_address(&services::redis_url(), 6379)).await;
    let application_name = application_name();
    // Sleeps limited to 5 a second: the worker must ask Redis for their turns, and parks
    // those whose turn is 200 ms or more away in a delay tier (its publisher's connection).
    let fleet = TestFleet::builder()
        .without_worker()
        .settings(|s| {
            s.limits.push(LimitSection {
                period_ms: Some(1000),
                burst: Some(1),
                ..LimitSection::rate("sleep", 5)
            })
        })
        .worker_settings(|s| {
            s.amqp.url = through(&services::amqp_url(), "amqps", &broker);
            s.redis.url = through(&services::redis_url(), "rediss", &redis);
            s.database.url = database_url("require", &application_name);
        })
        .start()
        .await;
    let (worker, health) = spawn_with_health(&fleet, 8, &trusting(ca.file()));

    // Act
    let mut ids = fleet
        .client
        .submit_copies(4, &json!({ "kind": "noop" }))
        .await;
    ids.extend(
        fleet
            .client
            .submit_copies(8, &json!({ "kind": "sleep", "args": { "ms": 1 } }))
            .await,
    );
    for &id in &ids {
        let record = fleet
            .wait_for_within(id, JobStatus::Succeeded, DEADLINE)
            .await;
        assert_eq!(record.attempts, 1, "job {id}: {}", worker.log_text());
    }

    // Assert: Redis answered through its proxy, and the worker's publisher connection
    // worked: a job is counted deferred only once Redis gave it a later turn and it was
    // parked in a delay tier. (Without Redis, the limit would let every job run at once.)
    assert!(
        limit_deferrals(health, "sleep").await >= 1,
        "no sleep job was deferred by its rate limit"
    );
    let ready = wait_until("the worker to be ready", DEADLINE, || async {
        readyz(health)
            .await
            .and_then(|(status, body)| (status == StatusCode::OK).then_some(body))
    })
    .await;
    for dependency in ["postgres", "rabbitmq", "redis"] {
        assert_eq!(ready["dependencies"][dependency], "healthy", "{ready}");
    }
    // Two broker connections (consumers, and the publisher that parked deferred jobs) and
    // the limiter's Redis connection: TLS sessions the proxies completed.
    assert!(
        broker.completed_handshakes() >= 2,
        "broker handshakes: {} completed, {} failed",
        broker.completed_handshakes(),
        broker.failed_handshakes()
    );
    assert!(
        redis.completed_handshakes() >= 1,
        "Redis handshakes: {} completed, {} failed",
        redis.completed_handshakes(),
        redis.failed_handshakes()
    );
    // PostgreSQL's own TLS: the worker's sessions exist and every one is encrypted.
    let (total, encrypted) = sessions(&fleet, &application_name).await;
    assert!(total > 0, "no session named {application_name}");
    assert_eq!(
        encrypted, total,
        "sessions of {application_name} without TLS"
    );

    drop(worker);
    fleet.stop().await;
}

#[tokio::test]
async fn a_worker_that_does_not_trust_the_brokers_certificate_runs_nothing_and_says_why() {
    // Arrange: the broker only behind the TLS proxy; Redis and PostgreSQL plain, so the
    // broker is the one thing that can fail. The worker keeps the roots it inherits (the
    // system's), which do not hold the test CA.
    let ca = TestCa::new();
    let broker = TlsProxy::start(&ca, server_address(&services::amqp_url(), 5672)).await;
    let fleet = TestFleet::builder()
        .without_worker()
        .worker_settings(|s| s.amqp.url = through(&services::amqp_url(), "amqps", &broker))
        .start()
        .await;
    let (untrusting, health) = spawn_with_health(&fleet, 4, &[]);

    // Act
    let id = fleet.client.submit::<Noop>(NoopArgs {}).await;

    // Assert: not ready, because of the certificate, and saying so without the URL.
    let body = refusing_a_certificate(health, "rabbitmq").await;
    assert!(
        body["dependencies"]["rabbitmq"]
            .as_str()
            .unwrap()
            .starts_with("unhealthy: "),
        "{body}"
    );
    assert_eq!(body["dependencies"]["postgres"], "healthy", "{body}");
    assert!(
        !body.to_string().contains("amqps://"),
        "no broker URL (it holds the password) in the report: {body}"
    );
    // Published (the first publish to a new vhost declares its queues, which takes a
    // moment; under load the outbox sweeper may publish it a second time, as it may before
    // the fast path stamps the row), then refused again by a connection attempt made while
    // the job waited.
    let vhost = fleet.namespace.to_string();
    let waiting = || async { queue_depth(&vhost, "jobs.default").await.unwrap_or(0) >= 1 };
    wait_until("the job to wait in its queue", DEADLINE, || async {
        waiting().await.then_some(())
    })
    .await;
    let refused = broker.failed_handshakes();
    wait_until("another refused handshake", DEADLINE, || async {
        (broker.failed_handshakes() > refused).then_some(())
    })
    .await;
    assert_eq!(broker.completed_handshakes(), 0, "a handshake completed");
    let record = fleet.record(id).await;
    assert_eq!(
        (record.status, record.attempts),
        (JobStatus::Queued, 0),
        "the job ran without a broker connection"
    );
    assert!(waiting().await, "the job's message left its queue");

    // A worker trusting the CA takes the job: the certificate was all that was wrong.
    let trusting = fleet.spawn_worker_process_with_env(4, 10, &trusting(ca.file()));
    fleet
        .wait_for_within(id, JobStatus::Succeeded, DEADLINE)
        .await;
    assert!(broker.completed_handshakes() >= 1);
    assert_eq!(
        readyz(health).await.map(|(status, _)| status),
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "the untrusting worker is still not ready"
    );

    drop((untrusting, trusting));
    fleet.stop().await;
}

#[tokio::test]
async fn a_worker_verifying_postgres_certificate_accepts_it_only_from_its_roots() {
    // Arrange: the worker checks PostgreSQL's certificate chain (`verify-ca`; not the host
    // name, since the server's certificate names whatever host it was made on).
    let application_name = application_name();
    let fleet = TestFleet::builder()
        .without_worker()
        .worker_settings(|s| s.database.url = database_url("verify-ca", &application_name))
        .start()
        .await;
    // The server's own certificate (Debian's self-signed one here), read through SQL so
    // the test needs no access to the server's files; and an unrelated CA.
    let certificate: String =
        sqlx::query_scalar("SELECT pg_read_file(current_setting('ssl_cert_file'))")
            .fetch_one(fleet.store.pool())
            .await
            .expect("reading PostgreSQL's certificate");
    let server_roots = std::env::temp_dir().join(format!("{}-postgres.pem", fleet.namespace));
    std::fs::write(&server_roots, certificate).unwrap();
    let unrelated = TestCa::new();
    let (untrusting, health) = spawn_with_health(&fleet, 4, &trusting(unrelated.file()));

    // Act
    let id = fleet.client.submit::<Noop>(NoopArgs {}).await;

    // Assert: the certificate is refused, PostgreSQL is unreachable, and nothing runs.
    let body = refusing_a_certificate(health, "postgres").await;
    assert_eq!(body["status"], "unhealthy", "{body}");
    assert_eq!(
        sessions(&fleet, &application_name).await.0,
        0,
        "a session of the untrusting worker"
    );
    let record = fleet.record(id).await;
    assert_eq!((record.status, record.attempts), (JobStatus::Queued, 0));

    // With the server's certificate as its root, a worker runs the job over TLS. (The
    // first one holds the job's delivery while it retries PostgreSQL: stopping it returns
    // the job to the queue.)
    drop(untrusting);
    let trusting = fleet.spawn_worker_process_with_env(4, 10, &trusting(&server_roots));
    fleet
        .wait_for_within(id, JobStatus::Succeeded, DEADLINE)
        .await;
    let (total, encrypted) = sessions(&fleet, &application_name).await;
    assert!(
        total > 0 && encrypted == total,
        "{encrypted} of {total} sessions use TLS"
    );

    drop(trusting);
    let _ = std::fs::remove_file(&server_roots);
    fleet.stop().await;
}
