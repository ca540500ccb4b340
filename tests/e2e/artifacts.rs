//! Artifacts: `export.jobs_csv` writes the namespace's jobs as a CSV artifact; the API lists
//! it with a presigned URL that downloads it from storage.

use reqwest::StatusCode;
use serde_json::json;

use engine_jobs::kinds::export_jobs_csv::ExportJobsCsv;
use engine_shared::{JobId, JobStatus};
use engine_tests::test_kinds::{FailsFatally, NoArgs};
use engine_tests::{TestFleet, TestSettings};

#[tokio::test]
async fn an_export_round_trips_through_a_presigned_url() {
    let fleet = TestFleet::builder()
        .settings(TestSettings::use_test_storage)
        .start()
        .await;
    let mut ids = fleet
        .client
        .submit_copies(25, &json!({ "kind": "noop" }))
        .await;
    for &id in &ids {
        fleet.wait_for(id, JobStatus::Succeeded).await;
    }
    let tricky = fleet.client.submit::<FailsFatally>(NoArgs {}).await;
    fleet.wait_for(tricky, JobStatus::Dead).await;

    let export = fleet
        .client
        .submit_args::<ExportJobsCsv>(json!({ "status": "succeeded" }))
        .await;
    let record = fleet.wait_for(export, JobStatus::Succeeded).await;
    assert_eq!(record.result.as_ref().unwrap()["rows"], 25);

    let listing = fleet
        .client
        .get(&format!("/v1/jobs/{export}/artifacts"))
        .await;
    assert_eq!(listing.status, StatusCode::OK, "{listing:?}");
    let artifacts = listing.body["artifacts"].as_array().unwrap();
    assert_eq!(artifacts.len(), 1, "{listing:?}");
    assert_eq!(artifacts[0]["name"], "jobs.csv");
    let url = artifacts[0]["url"].as_str().unwrap();
    let download = reqwest::get(url).await.unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    let csv = download.text().await.unwrap();
    assert_eq!(artifacts[0]["size"], csv.len());

    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("id,kind,queue,status"));
    let mut exported: Vec<JobId> = lines
        .map(|line| line.split(',').next().unwrap().parse().unwrap())
        .collect();
    exported.sort();
    ids.sort();
    assert_eq!(exported, ids, "only the succeeded jobs, each once");

    // Without a key, nothing is listed.
    let stranger = fleet.client.with_key(None);
    assert_eq!(
        stranger
            .get(&format!("/v1/jobs/{export}/artifacts"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    fleet.stop().await;
}

#[tokio::test]
async fn an_export_without_storage_fails_once_with_a_clear_reason() {
    let fleet = TestFleet::builder().start().await;
    let export = fleet.client.submit_args::<ExportJobsCsv>(json!({})).await;
    let record = fleet.wait_for(export, JobStatus::Dead).await;
    assert_eq!(record.attempts, 1);
    assert!(
        record
            .last_error
            .as_deref()
            .unwrap()
            .contains("storage is not configured"),
        "{record:?}"
    );
    fleet.stop().await;
}
