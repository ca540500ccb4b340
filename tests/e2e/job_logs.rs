//! Attempt logs in storage: what a handler and the worker write per attempt, gzipped under
//! `<ns>/logs/YYYY/MM/DD/<job_id>/<run>.log.gz`, listed and served by the API; and a job
//! whose log cannot be uploaded (storage cut) still succeeds, its log arriving later.

use std::io::Read;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_jobs::kinds::sleep::{Sleep, SleepArgs};
use engine_shared::{JobId, JobStatus};
use engine_tests::proxy::TcpProxy;
use engine_tests::test_kinds::{Flaky, FlakyArgs};
use engine_tests::wait::wait_until;
use engine_tests::{JobOptions, TestFleet, TestSettings, services};

/// The job's listed logs once `count` runs have one.
async fn wait_for_logs(fleet: &TestFleet, id: JobId, count: usize) -> Vec<Value> {
    wait_until(
        &format!("{count} logs of job {id}"),
        Duration::from_secs(20),
        || async {
            let answer = fleet.client.get(&format!("/v1/jobs/{id}/logs")).await;
            let logs = answer.body["logs"].as_array()?.clone();
            (answer.status == StatusCode::OK && logs.len() == count).then_some(logs)
        },
    )
    .await
}

async fn log_text(fleet: &TestFleet, id: JobId, run: &str) -> String {
    let (status, headers, body) = fleet
        .client
        .get_raw(&format!("/v1/jobs/{id}/logs/{run}"), &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("content-encoding").is_none());
    String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn a_job_failing_then_succeeding_has_the_log_of_each_attempt() {
    let fleet = TestFleet::builder()
        .settings(TestSettings::use_test_storage)
        .start()
        .await;
    let id = fleet
        .client
        .submit::<Flaky>(FlakyArgs { fail_times: 1 })
        .await;
    fleet.wait_for(id, JobStatus::Succeeded).await;

    let logs = wait_for_logs(&fleet, id, 2).await;
    assert_eq!(logs[0]["run"], "1");
    assert_eq!(logs[1]["run"], "2");
    let first = log_text(&fleet, id, "1").await;
    assert!(first.contains("attempt 1/"), "{first}");
    assert!(
        first.contains("flaky handler on attempt 1, failing 1 times"),
        "{first}"
    );
    assert!(first.contains("handler failed (error)"), "{first}");
    assert!(first.contains("flaky failure 1 of 1"), "{first}");
    assert!(first.contains("next attempt in"), "{first}");
    let second = log_text(&fleet, id, "2").await;
    assert!(second.contains("flaky handler on attempt 2"), "{second}");
    assert!(second.contains("handler succeeded"), "{second}");
    assert!(second.contains("job succeeded"), "{second}");

    // The presigned URL downloads the gzipped log straight from storage.
    let url = logs[1]["url"].as_str().unwrap();
    let gzipped = reqwest::get(url).await.unwrap();
    assert_eq!(gzipped.status(), StatusCode::OK);
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gzipped.bytes().await.unwrap()[..])
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, second);

    // A client that accepts gzip gets the stored bytes as they are.
    let (status, headers, body) = fleet
        .client
        .get_raw(
            &format!("/v1/jobs/{id}/logs/2"),
            &[("accept-encoding", "gzip")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-encoding"], "gzip");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, second);
    fleet.stop().await;
}

#[tokio::test]
async fn an_attempt_that_times_out_keeps_its_handlers_lines_and_says_why_it_ended() {
    let fleet = TestFleet::builder()
        .settings(TestSettings::use_test_storage)
        .start()
        .await;
    let id = fleet
        .client
        .submit_with::<Sleep>(
            SleepArgs { ms: 10000 },
            JobOptions::default()
                .timeout(Duration::from_millis(200))
                .max_attempts(1),
        )
        .await;
    fleet.wait_for(id, JobStatus::Dead).await;
    wait_for_logs(&fleet, id, 1).await;
    let text = log_text(&fleet, id, "1").await;
    assert!(text.contains("sleeping 10000 ms"), "{text}");
    assert!(text.contains("handler failed (timeout)"), "{text}");
    assert!(text.contains("no attempts left: the job is dead"), "{text}");
    fleet.stop().await;
}

#[tokio::test]
async fn logs_are_found_only_in_their_own_namespace() {
    let fleet = TestFleet::builder()
        .settings(TestSettings::use_test_storage)
        .namespaces(2)
        .start()
        .await;
    let id = fleet.client.submit::<Noop>(NoopArgs {}).await;
    fleet.wait_for(id, JobStatus::Succeeded).await;
    wait_for_logs(&fleet, id, 1).await;

    let other = &fleet.tenants[1].client;
    for path in [
        format!("/v1/jobs/{id}/logs"),
        format!("/v1/jobs/{id}/logs/1"),
        format!("/v1/jobs/{id}/artifacts"),
    ] {
        let answer = other.get(&path).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}: {answer:?}");
    }
    let unknown = fleet
        .client
        .get(&format!("/v1/jobs/{}/logs", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let bad_run = fleet
        .client
        .get(&format!("/v1/jobs/{id}/logs/..%2Fx"))
        .await;
    assert_eq!(bad_run.status, StatusCode::NOT_FOUND);
    fleet.stop().await;
}

#[tokio::test]
async fn with_storage_cut_the_job_succeeds_and_its_log_arrives_when_storage_returns() {
    let target = services::s3_settings()
        .endpoint
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let s3 = TcpProxy::start(target).await;
    let fleet = TestFleet::builder()
        .settings(|s| {
            s.use_test_storage();
            s.storage_mut().endpoint_url = format!("http://{}", s3.address());
        })
        .start()
        .await;
    s3.cut();
    let id = fleet
        .client
        .submit::<Flaky>(FlakyArgs { fail_times: 0 })
        .await;
    fleet.wait_for(id, JobStatus::Succeeded).await;
    let answer = fleet.client.get(&format!("/v1/jobs/{id}/logs")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}");
    // The upload gave up and the log waits in the worker's spool.
    let spool = std::env::temp_dir().join(format!("{}-spool", fleet.namespace));
    let spooled = |spool: std::path::PathBuf| async move {
        std::fs::read_dir(spool)
            .map(|dir| dir.filter_map(Result::ok).count())
            .unwrap_or(0)
    };
    wait_until("the log to be spooled", Duration::from_secs(30), || async {
        (spooled(spool.clone()).await == 1).then_some(())
    })
    .await;

    s3.restore();
    let logs = wait_for_logs(&fleet, id, 1).await;
    assert_eq!(logs[0]["run"], "1");
    let text = log_text(&fleet, id, "1").await;
    assert!(text.contains("flaky handler on attempt 1"), "{text}");
    wait_until("the spool to empty", Duration::from_secs(10), || async {
        (spooled(spool.clone()).await == 0).then_some(())
    })
    .await;
    fleet.stop().await;
}

#[tokio::test]
async fn without_storage_the_endpoints_say_it_is_not_configured() {
    let fleet = TestFleet::builder().start().await;
    // Only the endpoint's answer matters, not whether the job ran yet.
    fleet.expect_unfinished();
    let id = fleet.client.submit::<Noop>(NoopArgs {}).await;
    let answer = fleet.client.get(&format!("/v1/jobs/{id}/logs")).await;
    assert_eq!(answer.status, StatusCode::NOT_IMPLEMENTED);
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("AWS_S3_BUCKET_NAME"),
        "{answer:?}"
    );
    fleet.stop().await;
}
