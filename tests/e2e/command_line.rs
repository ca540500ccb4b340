//! The command line: migrations and API keys from `engine-api`; configuration errors that
//! name the setting and never print a secret.

use std::process::Command;

use engine_tests::{TestFleet, binary};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn keys_create_prints_a_working_key_once_and_revoke_disables_it() {
    let fleet = TestFleet::builder().without_worker().start().await;
    // No worker: the submissions only show which keys work.
    fleet.expect_unfinished();
    let run = |args: &[&str]| {
        Command::new(binary("engine-api"))
            .arg("--config")
            .arg(&fleet.config_path)
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .output()
            .expect("engine-api runs")
    };

    let migrated = run(&["migrate"]);
    let created = run(&[
        "keys",
        "create",
        "--namespace",
        fleet.namespace.as_str(),
        "--label",
        "ci",
    ]);

    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(
        key.starts_with("tle_") && key.len() == 68,
        "one key alone on stdout: {key:?}"
    );
    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE namespace = $1")
            .bind(fleet.namespace.as_str())
            .fetch_all(fleet.store.pool())
            .await
            .unwrap();
    assert!(
        stored
            .iter()
            .all(|hash| hash.len() == 32
                && !key.as_bytes().windows(32).any(|w| w == hash.as_slice()))
    );
    let client = fleet.client.with_key(Some(&key));
    assert_eq!(
        client.submit_json(&json!({ "kind": "noop" })).await.status,
        StatusCode::ACCEPTED
    );

    let key_id = String::from_utf8_lossy(&created.stderr)
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned();
    let revoked = run(&["keys", "revoke", &key_id]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    engine_tests::wait_until(
        "the revocation to pass the key cache",
        std::time::Duration::from_secs(5),
        || async {
            (client.submit_json(&json!({ "kind": "noop" })).await.status
                == StatusCode::UNAUTHORIZED)
                .then_some(())
        },
    )
    .await;
    fleet.stop().await;
}

#[test]
fn a_bad_setting_is_named_and_its_secret_never_printed() {
    let cases = [
        (
            "DATABASE_URL",
            "mysql://admin:hunter2@db.example/x",
            "DATABASE_URL",
        ),
        (
            "DATABASE_URL",
            "postgres://admin:hunter2@db.example:notaport/x",
            "DATABASE_URL",
        ),
        ("AMQP_URL", "http://admin:hunter2@mq.example/", "AMQP_URL"),
    ];
    for (variable, value, named) in cases {
        let output = Command::new(binary("engine-worker"))
            .env_remove("ENGINE_CONFIG")
            .env("DATABASE_URL", "postgres://u:p@127.0.0.1/x")
            .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
            .env(variable, value)
            .output()
            .expect("engine-worker runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains(named), "{variable}: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "{variable} leaked its secret: {stderr}"
        );
    }
    let missing = Command::new(binary("engine-api"))
        .env_remove("ENGINE_CONFIG")
        .env_remove("DATABASE_URL")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("DATABASE_URL (database.url) is required")
    );
}
