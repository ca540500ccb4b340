//! The real servers tests use, from `TEST_*` environment variables with loopback defaults,
//! and per-test vhosts created through RabbitMQ's management API.

use rand::RngCore;
use std::os::unix::process::CommandExt;

pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        "postgres://postgres@127.0.0.1:5432/tl_engine_test?sslmode=disable".to_owned()
    })
}

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A plain connection to the test Redis, for tests that inspect or seed keys.
pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis unreachable: run infra/local/prepare.sh test")
}

/// The local S3-compatible server the prepare script runs (s3s-fs), as storage settings.
pub fn s3_settings() -> engine_shared::objects::StorageSettings {
    let var =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    engine_shared::objects::StorageSettings {
        endpoint: Some(var("TEST_S3_ENDPOINT", "http://127.0.0.1:9100")),
        region: "us-east-1".into(),
        access_key_id: secrecy::SecretString::from(var("TEST_S3_ACCESS_KEY", "tl-engine-local")),
        secret_access_key: secrecy::SecretString::from(var(
            "TEST_S3_SECRET_KEY",
            "tl-engine-local-secret",
        )),
        bucket: var("TEST_S3_BUCKET", "tl-engine-test"),
        force_path_style: true,
    }
}

pub(crate) fn management_url() -> String {
    std::env::var("TEST_RABBITMQ_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:15672".to_owned())
}

/// A fresh namespace name, unique per test: `t-<10 hex>`.
pub fn unique_namespace() -> String {
    let mut bytes = [0u8; 5];
    rand::rng().fill_bytes(&mut bytes);
    format!("t-{}", hex::encode(bytes))
}

/// Creates `vhost` and gives guest full permissions on it.
pub async fn create_vhost(vhost: &str) {
    let http = reqwest::Client::new();
    let base = management_url();
    let created = http
        .put(format!("{base}/api/vhosts/{vhost}"))
        .basic_auth("guest", Some("guest"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("RabbitMQ management API unreachable: run infra/local/prepare.sh test");
    assert!(
        created.status().is_success(),
        "creating vhost {vhost}: {}",
        created.status()
    );
    let permitted = http
        .put(format!("{base}/api/permissions/{vhost}/guest"))
        .basic_auth("guest", Some("guest"))
        .json(&serde_json::json!({ "configure": ".*", "write": ".*", "read": ".*" }))
        .send()
        .await
        .expect("setting vhost permissions");
    assert!(
        permitted.status().is_success(),
        "permissions on {vhost}: {}",
        permitted.status()
    );
}

/// How long after its test a vhost is deleted; see [`delete_vhost_later`].
const VHOST_DELETION_DELAY_SECS: u32 = 5;

/// Deletes `vhost` (and every queue in it) a few seconds from now, from a detached process
/// that outlives the test. Deleting a vhost right away is not safe: RabbitMQ 3.10 starts a
/// dead-letter worker for each new quorum queue, and one whose queue is deleted before it
/// has looked the queue up crashes at every restart, which takes its supervisor
/// (rabbit_fifo_dlx_sup) down with it — from then on the broker refuses every new quorum
/// queue with INTERNAL_ERROR, failing every later test. A test may create a queue at its
/// very end (a lazy declaration, a queue it deleted and a worker redeclared), and its
/// components and worker processes stop only as the test process exits; seconds later,
/// nothing of the test is left and every worker has long looked its queue up. Not
/// deleting at all is no better: the vhosts' message stores exhaust the broker's file
/// handles after a few dozen tests. `bin/test` deletes whatever is left after the run.
pub fn delete_vhost_later(vhost: &str) {
    let url = format!("{}/api/vhosts/{vhost}", management_url());
    let script = format!(
        "sleep {VHOST_DELETION_DELAY_SECS}; curl -fsS -o /dev/null -u guest:guest -X DELETE \"$0\""
    );
    // Its own process group, stdio closed: neither the test runner's clean-up of the test's
    // processes nor its wait for the test's output touches it.
    let _ = std::process::Command::new("sh")
        .args(["-c", &script, &url])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
}

/// Drops every ready message of `queue` in `vhost`: a test's way to lose messages, as a
/// broker that dead-letters or forgets them would.
pub async fn purge_queue(vhost: &str, queue: &str) {
    let purged = reqwest::Client::new()
        .delete(format!(
            "{}/api/queues/{vhost}/{queue}/contents",
            management_url()
        ))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("RabbitMQ management API unreachable");
    assert!(
        purged.status().is_success(),
        "purging {vhost}/{queue}: {}",
        purged.status()
    );
}

/// Waits until a message a killed worker held unacked is back in `queue` (the broker
/// returns it once it sees the connection gone, a moment after the kill), then purges the
/// queue: the redelivery is lost too, for certain.
pub async fn purge_returned(vhost: &str, queue: &str) {
    crate::wait_until(
        "the killed worker's message to be returned",
        std::time::Duration::from_secs(30),
        || async { (queue_depth(vhost, queue).await? > 0).then_some(()) },
    )
    .await;
    purge_queue(vhost, queue).await;
}

/// Deletes `queue` in `vhost` (its messages with it).
pub async fn delete_queue(vhost: &str, queue: &str) {
    let deleted = reqwest::Client::new()
        .delete(format!("{}/api/queues/{vhost}/{queue}", management_url()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("RabbitMQ management API unreachable");
    assert!(
        deleted.status().is_success(),
        "deleting {vhost}/{queue}: {}",
        deleted.status()
    );
}

/// Sets guest's permissions on `vhost`: `true` gives all, `false` takes all away.
pub async fn permit_guest(vhost: &str, allowed: bool) {
    let http = reqwest::Client::new();
    let url = format!("{}/api/permissions/{vhost}/guest", management_url());
    let answer = if allowed {
        http.put(url)
            .basic_auth("guest", Some("guest"))
            .json(&serde_json::json!({ "configure": ".*", "write": ".*", "read": ".*" }))
            .send()
            .await
    } else {
        http.delete(url)
            .basic_auth("guest", Some("guest"))
            .send()
            .await
    }
    .expect("RabbitMQ management API unreachable");
    assert!(
        answer.status().is_success(),
        "permissions on {vhost}: {}",
        answer.status()
    );
}

/// Messages in `queue` of `vhost`, read live with a passive declare (the management
/// API's figures lag by seconds).
pub async fn queue_depth(vhost: &str, queue: &str) -> Option<u32> {
    let base = secrecy::SecretString::from(amqp_url());
    let url = engine_shared::broker::vhost_url(&base, vhost).ok()?;
    let connection = lapin::Connection::connect(
        secrecy::ExposeSecret::expose_secret(&url),
        lapin::ConnectionProperties::default(),
    )
    .await
    .ok()?;
    let channel = connection.create_channel().await.ok()?;
    let declared = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .ok()?;
    let _ = connection.close(200, "done".into()).await;
    Some(declared.message_count())
}
