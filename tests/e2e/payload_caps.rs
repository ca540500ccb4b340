//! Bounded payloads: a job's `args` and a handler's result have a size cap, and nothing the
//! API reads many rows of at once (list pages, the scheduler's claims) grows with them:
//! hundreds of MiB of args due at the same instant do not grow the API's memory.

use std::time::{Duration, Instant};

use engine_jobs::kinds::noop::{Noop, NoopArgs};
use engine_shared::{JobId, JobStatus};
use engine_tests::client::ApiClient;
use engine_tests::test_kinds::{BigResult, BigResultArgs};
use engine_tests::{ApiProcess, JobOptions, TestFleet, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// `api.max_args_bytes` and `worker.max_result_bytes` by default: 256 KiB.
const CAP: usize = 256 * 1024;

/// `{"pad":"xx…"}` of exactly `bytes` bytes of JSON.
fn args_of(bytes: usize) -> Value {
    json!({ "pad": "x".repeat(bytes - r#"{"pad":""}"#.len()) })
}

async fn stored_jobs(fleet: &TestFleet) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE namespace = $1")
        .bind(fleet.namespace.as_str())
        .fetch_one(fleet.store.pool())
        .await
        .unwrap()
}

/// A fleet whose body limit lets a few jobs at the cap through in one request.
async fn fleet(worker: bool) -> TestFleet {
    let builder = TestFleet::builder().settings(|s| s.api.body_limit_bytes = 5 * 1024 * 1024);
    if worker {
        builder.start().await
    } else {
        builder.without_worker().start().await
    }
}

#[tokio::test]
async fn args_over_the_cap_are_refused_naming_args_and_nothing_is_stored() {
    let fleet = fleet(false).await;
    // No worker: what matters is what is stored.
    fleet.expect_unfinished();

    let over = fleet
        .client
        .submit_json(&json!({ "kind": "noop", "args": args_of(CAP + 1) }))
        .await;
    let at_cap = fleet
        .client
        .submit_json(&json!({ "kind": "noop", "args": args_of(CAP) }))
        .await;

    assert_eq!(
        over.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        over.body["errors"]
    );
    assert_eq!(over.body["errors"][0]["field"], "args", "{}", over.body);
    let message = over.body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("api.max_args_bytes"), "{message}");
    assert_eq!(
        at_cap.status,
        StatusCode::ACCEPTED,
        "{:?}",
        at_cap.body["errors"]
    );
    assert_eq!(
        stored_jobs(&fleet).await,
        1,
        "only the job at the cap is stored"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_batch_with_one_job_over_the_cap_names_its_index_and_stores_none() {
    let fleet = fleet(false).await;
    let small = json!({ "kind": "noop", "args": { "n": 1 } });

    let answer = fleet
        .client
        .post(
            "/v1/jobs/batch",
            &json!({ "jobs": [small, small, { "kind": "noop", "args": args_of(CAP + 1) }, small] }),
        )
        .await;

    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        answer.body["errors"]
    );
    let fields: Vec<&str> = answer.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["jobs[2].args"], "{}", answer.body);
    assert_eq!(stored_jobs(&fleet).await, 0);
    fleet.stop().await;
}

#[tokio::test]
async fn a_result_over_the_cap_fails_the_job_fatally_and_is_not_stored() {
    let fleet = fleet(true).await;

    let over = fleet
        .client
        .submit_with::<BigResult>(
            BigResultArgs { bytes: CAP + 1 },
            JobOptions::default().max_attempts(3),
        )
        .await;
    let at_cap = fleet
        .client
        .submit::<BigResult>(BigResultArgs { bytes: CAP })
        .await;

    let dead = fleet.wait_for(over, JobStatus::Dead).await;
    assert_eq!(
        dead.attempts, 1,
        "a result that is too big is fatal: no retry"
    );
    assert_eq!(dead.result, None);
    let error = dead.last_error.unwrap_or_default();
    assert!(error.contains("worker.max_result_bytes"), "{error}");
    let job = fleet.client.job(over).await.body;
    assert_eq!(job["errors"][0]["kind"], "fatal", "{}", job["errors"]);
    let succeeded = fleet.wait_for(at_cap, JobStatus::Succeeded).await;
    let stored = serde_json::to_vec(&succeeded.result.unwrap())
        .unwrap()
        .len();
    assert_eq!(stored, CAP, "a result at the cap is stored whole");
    fleet.stop().await;
}

/// Jobs at the args cap, `per_batch` to a request, `count` in all.
async fn submit_at_cap(
    client: &ApiClient,
    count: usize,
    per_batch: usize,
    extra: Value,
) -> Vec<JobId> {
    let mut job = json!({ "kind": "noop", "args": args_of(CAP) });
    job.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let mut ids = Vec::new();
    for start in (0..count).step_by(per_batch) {
        ids.extend(
            client
                .submit_copies(per_batch.min(count - start), &job)
                .await,
        );
    }
    ids
}

#[tokio::test]
async fn a_list_page_is_bounded_in_bytes_and_the_next_pages_hold_the_rest() {
    let fleet = fleet(false).await;
    // They wait an hour: only the pages that list them matter.
    fleet.expect_unfinished();
    // 40 jobs of 256 KiB: 10 MiB of args, more than a page may carry.
    let submitted = submit_at_cap(&fleet.client, 40, 16, json!({ "delay": 3600 })).await;

    let mut seen = Vec::new();
    let mut largest_page = 0;
    let mut path = "/v1/jobs?limit=200".to_owned();
    loop {
        let page = fleet.client.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        largest_page = largest_page.max(serde_json::to_vec(&page.body).unwrap().len());
        seen.extend(page.job_ids());
        match page.body["next"].as_str() {
            Some(next) => path = format!("/v1/jobs?limit=200&before={next}"),
            None => break,
        }
    }

    assert!(
        largest_page <= 9 * 1024 * 1024,
        "a page carried {largest_page} bytes; at most about 8 MiB (api.page_max_bytes) expected"
    );
    seen.sort();
    let mut expected = submitted;
    expected.sort();
    assert_eq!(seen, expected, "the pages hold every job once");
    fleet.stop().await;
}

#[tokio::test]
async fn a_redrive_answers_with_counts_and_every_job_runs_again() {
    let fleet = fleet(true).await;
    let ids = fleet
        .client
        .submit_copies(3, &json!({ "kind": "test.fatal", "args": {} }))
        .await;
    for &id in &ids {
        fleet.wait_for(id, JobStatus::Dead).await;
    }

    let answer = fleet
        .client
        .post("/v1/jobs/redrive", &json!({ "kind": "test.fatal" }))
        .await;

    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body, json!({ "redriven": 3, "more": false }));
    wait_until(
        "the redriven jobs to die again",
        Duration::from_secs(30),
        || async {
            let mut again = 0;
            for &id in &ids {
                let record = fleet.record(id).await;
                again += usize::from(record.redrives == 1 && record.status == JobStatus::Dead);
            }
            (again == ids.len()).then_some(())
        },
    )
    .await;
    fleet.stop().await;
}

/// How much the API process's resident memory may grow from the moment 200 MiB of args
/// fall due at once to its peak while it releases them: a third of what is due. Claiming
/// 500 rows at once (125 MiB, held several times over while published) passes it many
/// times; claims bounded in bytes stay far below.
const RSS_GROWTH_BOUND: u64 = 64 * 1024 * 1024;

#[tokio::test]
async fn hundreds_of_mib_of_args_due_at_once_leave_the_api_memory_bounded() {
    // The in-process API stands down for a real `engine-api` process, whose memory the
    // test reads alone; the in-process worker runs both tenants' jobs.
    let mut fleet = TestFleet::builder()
        .namespaces(2)
        .settings(|s| s.worker.concurrency = 16)
        .start()
        .await;
    fleet.stop_api().await;
    let mut api = ApiProcess::spawn(
        &fleet.config_path,
        &[(
            "ENGINE__API__BODY_LIMIT_BYTES",
            &(8 * 1024 * 1024).to_string(),
        )],
    )
    .await;
    let heavy = ApiClient::new(api.address, Some(fleet.tenants[0].key.clone()));
    let light = ApiClient::new(api.address, Some(fleet.tenants[1].key.clone()));

    // 800 jobs of 256 KiB (200 MiB of args), scheduled an hour ahead; then the test moves
    // the clock: all of them fall due at the same instant. (Submitting 200 MiB takes longer
    // than any fixed short delay on a loaded machine, and jobs falling due while others are
    // still being submitted would never be due at once.)
    let ids = submit_at_cap(&heavy, 800, 25, json!({ "delay": 3600 })).await;
    let (before, submit_peak) = api.memory();
    let due =
        sqlx::query("UPDATE jobs SET run_at = now() WHERE namespace = $1 AND status = 'scheduled'")
            .bind(fleet.tenants[0].namespace.as_str())
            .execute(fleet.store.pool())
            .await
            .unwrap();
    assert_eq!(due.rows_affected(), 800);

    // Meanwhile the other tenant's jobs go on running, one after another, each waited for.
    let heavy_namespace = &fleet.tenants[0].namespace;
    let light_namespace = &fleet.tenants[1].namespace;
    let started = Instant::now();
    let mut light_done = 0;
    loop {
        assert!(!api.exited(), "the API process died: {}", api.log_text());
        let id = light.submit::<Noop>(NoopArgs {}).await;
        wait_until(
            "a light job to succeed",
            Duration::from_secs(30),
            || async {
                let record = fleet.record_in(light_namespace, id).await?;
                (record.status == JobStatus::Succeeded).then_some(())
            },
        )
        .await;
        light_done += 1;
        if fleet.count_in(heavy_namespace, JobStatus::Succeeded).await == 800 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "timed out waiting for the 800 heavy jobs to succeed"
        );
    }

    let (after, peak) = api.memory();
    eprintln!(
        "API RSS: {} MiB when due, {} MiB peak while submitting, {} MiB peak, {} MiB after",
        before >> 20,
        submit_peak >> 20,
        peak >> 20,
        after >> 20
    );
    assert!(!api.exited(), "the API process died: {}", api.log_text());
    assert!(light_done > 0);
    assert_eq!(ids.len(), 800);
    assert!(
        peak <= before + RSS_GROWTH_BOUND,
        "the API's peak RSS was {} MiB, {} MiB when the jobs fell due (peak while submitting \
         {} MiB, after {} MiB); at most {} MiB of growth expected with 200 MiB of args due",
        peak >> 20,
        before >> 20,
        submit_peak >> 20,
        after >> 20,
        RSS_GROWTH_BOUND >> 20
    );
    drop(api);
    fleet.stop().await;
}
