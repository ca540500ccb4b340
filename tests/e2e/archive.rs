//! The job history archive against real PostgreSQL and S3: old finished jobs move to
//! gzipped JSON lines under `<ns>/archive/jobs/` and leave PostgreSQL; a crash between the
//! upload and the delete loses and duplicates nothing; concurrent passes archive each job
//! once; the API runs it on its schedule. Each test has its own namespace (rows and prefix).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flate2::read::GzDecoder;
use serde_json::{Value, json};
use uuid::Uuid;

use engine_api::archiver::{ArchiveReport, BatchOutcome, Finish, archive_batch, archive_once};
use engine_shared::config::{ArchiveSettings, Settings};
use engine_shared::namespace::NamespaceSpec;
use engine_shared::objects::{ObjectKey, ObjectStore};
use engine_shared::store::{RetryOutcome, Store};
use engine_shared::{JobId, JobStatus};
use engine_tests::settings::ArchiveSection;
use engine_tests::{TestFleet, TestSettings, services, wait_until};

/// Jobs finished longer ago than this are archived in these tests.
const AFTER_DAYS: i64 = 30;

/// One test's namespace, its rows' database and its storage.
struct Archive {
    store: Store,
    objects: ObjectStore,
    spec: NamespaceSpec,
    settings: ArchiveSettings,
    /// The settings again, to open another store (another replica's pools).
    fleet_settings: Settings,
    now: DateTime<Utc>,
}

impl Archive {
    async fn new(batch_size: u32) -> Self {
        engine_shared::tls::install_crypto_provider();
        let name = services::unique_namespace();
        let mut file = TestSettings::for_namespaces(&[name]);
        file.archive = Some(ArchiveSection {
            after_days: Some(u32::try_from(AFTER_DAYS).unwrap()),
            batch_size: Some(batch_size),
            ..ArchiveSection::default()
        });
        let settings = Settings::from_toml(&file.to_toml()).expect("test settings are valid");
        let store = Store::connect_lazy(&settings.database).unwrap();
        store.migrate().await.expect("migrating the test database");
        Self {
            store,
            objects: ObjectStore::new(&services::s3_settings()),
            spec: settings.namespaces[0].clone(),
            settings: settings.archive.clone(),
            fleet_settings: settings,
            now: Utc::now(),
        }
    }

    fn namespace(&self) -> &str {
        self.spec.name.as_str()
    }

    /// A job of this namespace, created a day before it finished (or now, if it has not).
    async fn insert(&self, status: JobStatus, finished_days_ago: Option<i64>) -> Uuid {
        insert_job(
            &self.store,
            self.namespace(),
            status,
            finished_days_ago,
            self.now,
        )
        .await
    }

    async fn insert_old(&self, status: JobStatus, count: usize) -> Vec<Uuid> {
        let mut ids = Vec::new();
        for _ in 0..count {
            // One day (a pass archives one UTC day per batch), a second apart in insertion
            // order, so "oldest first" has one answer.
            ids.push(self.insert(status, Some(AFTER_DAYS + 10)).await);
        }
        ids
    }

    async fn archive_once(&self) -> ArchiveReport {
        self.report_of(&self.store).await
    }

    /// One pass over this namespace by the replica using `store`.
    async fn report_of(&self, store: &Store) -> ArchiveReport {
        archive_once(
            store,
            &self.objects,
            std::slice::from_ref(&self.spec),
            &self.settings,
            self.now,
        )
        .await
        .expect("the archive pass succeeds")
    }

    /// Passes by the replica using `store` until one finds the namespace free and nothing
    /// to archive; their reports added up.
    async fn until_nothing_is_left(&self, store: &Store) -> ArchiveReport {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut total = ArchiveReport::default();
        loop {
            let report = self.report_of(store).await;
            total.jobs += report.jobs;
            total.batches += report.batches;
            total.busy += report.busy;
            if report.busy == 0 && report.jobs == 0 {
                return total;
            }
            assert!(Instant::now() < deadline, "still archiving: {total:?}");
            // The other replica's turn: both run in this one task.
            tokio::task::yield_now().await;
        }
    }

    /// Every archive object of the namespace and its jobs, by id (parsed JSON lines).
    async fn archived(&self) -> BTreeMap<String, Vec<Value>> {
        read_archive(&self.objects, &self.spec).await
    }

    async fn rows(&self, ids: &[Uuid]) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }

    async fn error_rows(&self, ids: &[Uuid]) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM job_errors WHERE job_id = ANY($1)")
            .bind(ids)
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }

    async fn pending_batches(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM archive_batches WHERE namespace = $1")
            .bind(self.namespace())
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }
}

async fn insert_job(
    store: &Store,
    namespace: &str,
    status: JobStatus,
    finished_days_ago: Option<i64>,
    now: DateTime<Utc>,
) -> Uuid {
    // Noon UTC of that day plus one more second per insert: jobs of the same day keep their
    // insertion order and never straddle midnight.
    static SECONDS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let finished_at = finished_days_ago.map(|days| {
        let day = (now - chrono::Duration::days(days)).date_naive();
        day.and_hms_opt(12, 0, 0).unwrap().and_utc()
            + chrono::Duration::seconds(SECONDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    });
    let created_at = finished_at.unwrap_or(now) - chrono::Duration::days(1);
    let id = JobId::new_at(created_at).as_uuid();
    sqlx::query(
        "INSERT INTO jobs (id, namespace, kind, queue, args, status, attempts, max_attempts,
                           timeout_ms, run_at, created_at, published_at, finished_at, result,
                           last_error)
         VALUES ($1, $2, 'noop', 'default', $3, $4, 1, 3, 1000, $5, $5, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(namespace)
    .bind(json!({ "n": id.to_string() }))
    .bind(status)
    .bind(created_at)
    .bind(finished_at)
    .bind((status == JobStatus::Succeeded).then(|| json!({ "ok": true })))
    .bind((status == JobStatus::Dead).then_some("boom 2"))
    .execute(store.pool())
    .await
    .expect("inserting a job");
    id
}

/// Two failed attempts for `id`.
async fn insert_errors(store: &Store, id: Uuid) {
    for attempt in 1..=2 {
        sqlx::query(
            "INSERT INTO job_errors (job_id, attempt, kind, message, duration_ms, worker_id)
             VALUES ($1, $2, 'error', $3, 5, 'w1')",
        )
        .bind(id)
        .bind(attempt)
        .bind(format!("boom {attempt}"))
        .execute(store.pool())
        .await
        .expect("inserting a job error");
    }
}

async fn read_archive(objects: &ObjectStore, spec: &NamespaceSpec) -> BTreeMap<String, Vec<Value>> {
    let mut archived = BTreeMap::new();
    for object in objects
        .list(&ObjectKey::archive_folder(spec))
        .await
        .expect("listing the archive folder")
    {
        let body = objects
            .get(&object.key)
            .await
            .unwrap()
            .expect("a listed object exists")
            .collect()
            .await
            .unwrap()
            .into_bytes();
        let mut text = String::new();
        GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .expect("an archive object is gzip");
        let jobs = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is one JSON job"))
            .collect();
        archived.insert(object.key.as_str().to_owned(), jobs);
    }
    archived
}

/// Every archived job's id, with how many times it appears across all objects.
fn id_counts(archived: &BTreeMap<String, Vec<Value>>) -> BTreeMap<Uuid, usize> {
    let mut counts = BTreeMap::new();
    for job in archived.values().flatten() {
        let id: Uuid = job["id"].as_str().unwrap().parse().unwrap();
        *counts.entry(id).or_default() += 1;
    }
    counts
}

fn once_each(ids: &[Uuid]) -> BTreeMap<Uuid, usize> {
    ids.iter().map(|id| (*id, 1)).collect()
}

#[tokio::test]
async fn one_pass_archives_exactly_the_old_finished_jobs_of_its_namespaces() {
    // Arrange: old finished jobs (some with errors), and jobs that must stay: young,
    // unfinished, and another namespace's old ones.
    let archive = Archive::new(4).await;
    let mut old = archive.insert_old(JobStatus::Succeeded, 3).await;
    let dead = archive.insert_old(JobStatus::Dead, 2).await;
    for id in &dead {
        insert_errors(&archive.store, *id).await;
    }
    old.extend(&dead);
    old.extend(archive.insert_old(JobStatus::Cancelled, 1).await);
    let mut stay = vec![
        archive.insert(JobStatus::Succeeded, Some(1)).await,
        archive.insert(JobStatus::Dead, Some(AFTER_DAYS - 1)).await,
        archive.insert(JobStatus::Running, None).await,
        archive.insert(JobStatus::Queued, None).await,
    ];
    // An unfinished job can carry an old finished_at only by hand; it still must stay.
    stay.push(
        archive
            .insert(JobStatus::Retrying, Some(AFTER_DAYS + 5))
            .await,
    );
    let other = services::unique_namespace();
    let mut others = Vec::new();
    for _ in 0..2 {
        others.push(
            insert_job(
                &archive.store,
                &other,
                JobStatus::Succeeded,
                Some(AFTER_DAYS + 10),
                archive.now,
            )
            .await,
        );
    }

    // Act
    let report = archive.archive_once().await;

    // Assert: six jobs in two batches of at most four, each job once, with its errors.
    assert_eq!(
        (report.jobs, report.batches, report.objects_written),
        (6, 2, 2)
    );
    let archived = archive.archived().await;
    assert_eq!(archived.len(), 2, "{:?}", archived.keys());
    assert_eq!(id_counts(&archived), once_each(&old));
    let prefix = format!("{}/archive/jobs/", archive.namespace());
    for (key, jobs) in &archived {
        assert!(
            key.starts_with(&prefix) && key.ends_with(".jsonl.gz"),
            "{key}"
        );
        // The day folder is the oldest job's finishing day.
        let oldest: DateTime<Utc> = jobs[0]["finished_at"].as_str().unwrap().parse().unwrap();
        assert!(
            key.contains(&oldest.format("/%Y/%m/%d/").to_string()),
            "{key}"
        );
    }
    for job in archived.values().flatten() {
        let id: Uuid = job["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(job["namespace"], archive.namespace());
        assert_eq!(job["args"], json!({ "n": id.to_string() }));
        if dead.contains(&id) {
            assert_eq!(job["status"], "dead");
            assert_eq!(job["last_error"], "boom 2");
            let errors = job["errors"].as_array().unwrap();
            let messages: Vec<&str> = errors
                .iter()
                .map(|e| e["message"].as_str().unwrap())
                .collect();
            assert_eq!(messages, ["boom 1", "boom 2"]);
            assert_eq!(errors[0]["worker_id"], "w1");
        } else {
            assert_eq!(job["errors"], json!([]));
        }
    }
    assert_eq!(archive.rows(&old).await, 0, "archived rows are deleted");
    assert_eq!(archive.error_rows(&dead).await, 0, "with their errors");
    assert_eq!(archive.rows(&stay).await, stay.len() as i64);
    assert_eq!(
        archive.rows(&others).await,
        2,
        "another namespace is untouched"
    );
    assert_eq!(archive.pending_batches().await, 0);

    let again = archive.archive_once().await;
    assert_eq!(again.jobs, 0, "nothing is archived twice");
    assert_eq!(archive.archived().await.len(), 2);
}

#[tokio::test]
async fn a_crash_between_upload_and_delete_loses_and_duplicates_nothing() {
    // Arrange: seven old jobs, batches of five; a replica of its own that will "crash".
    let archive = Archive::new(5).await;
    let old = archive.insert_old(JobStatus::Succeeded, 7).await;
    let crashing = Store::connect_lazy(&archive.fleet_settings.database).unwrap();

    // Act 1: the first batch is uploaded, then the replica dies before deleting.
    let outcome = archive_batch(
        &crashing,
        &archive.objects,
        &archive.spec,
        &archive.settings,
        archive.now,
        Finish::StopAfterUpload,
    )
    .await
    .unwrap();
    crashing.close().await;

    // Assert 1: the object is there, and so is every row and the pending batch.
    let BatchOutcome::Archived {
        key,
        jobs: 5,
        committed: false,
        ..
    } = outcome
    else {
        panic!("expected an uploaded, uncommitted batch of 5: {outcome:?}");
    };
    let archived = archive.archived().await;
    assert_eq!(archived.keys().collect::<Vec<_>>(), [key.as_str()]);
    assert_eq!(archived[key.as_str()].len(), 5);
    assert_eq!(archive.rows(&old).await, 7);
    assert_eq!(archive.pending_batches().await, 1);

    // Act 2: the next pass.
    let report = archive.archive_once().await;

    // Assert 2: the pending batch went to the same key again, the rest to one new object;
    // every job is archived exactly once and no row remains.
    assert_eq!((report.resumed, report.jobs, report.batches), (1, 7, 2));
    let archived = archive.archived().await;
    assert_eq!(archived.len(), 2, "{:?}", archived.keys());
    assert_eq!(archived[key.as_str()].len(), 5);
    assert_eq!(id_counts(&archived), once_each(&old));
    assert_eq!(archive.rows(&old).await, 0);
    assert_eq!(archive.pending_batches().await, 0);
}

#[tokio::test]
async fn a_job_redriven_after_a_crash_stays_in_postgres_and_out_of_the_archive() {
    // Arrange: a batch of three dead jobs uploaded, then a crash; then one is retried.
    let archive = Archive::new(10).await;
    let dead = archive.insert_old(JobStatus::Dead, 3).await;
    let outcome = archive_batch(
        &archive.store,
        &archive.objects,
        &archive.spec,
        &archive.settings,
        archive.now,
        Finish::StopAfterUpload,
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, BatchOutcome::Archived { jobs: 3, .. }),
        "{outcome:?}"
    );
    let retried = archive
        .store
        .retry_job(&archive.spec.name, JobId::from(dead[0]))
        .await
        .unwrap();
    assert!(
        matches!(retried, RetryOutcome::Queued(_)),
        "the dead job is sent back to work"
    );

    // Act
    let report = archive.archive_once().await;

    // Assert: the batch's object now holds the other two only; the retried job lives on.
    assert_eq!((report.resumed, report.jobs), (1, 2));
    let archived = archive.archived().await;
    assert_eq!(archived.len(), 1);
    assert_eq!(id_counts(&archived), once_each(&dead[1..]));
    assert_eq!(archive.rows(&dead).await, 1);
    let revived = archive
        .store
        .get_job(&archive.spec.name, JobId::from(dead[0]))
        .await
        .unwrap()
        .expect("the retried job is still in PostgreSQL");
    assert_eq!(revived.status, JobStatus::Queued);
    assert_eq!(archive.pending_batches().await, 0);
}

#[tokio::test]
async fn while_one_pass_holds_a_namespace_another_replica_leaves_it_alone() {
    // Arrange: old jobs, and a pass of this replica holding the namespace.
    let archive = Archive::new(10).await;
    let old = archive.insert_old(JobStatus::Succeeded, 3).await;
    let other_replica = Store::connect_lazy(&archive.fleet_settings.database).unwrap();
    let holder = archive
        .store
        .begin_archive(&archive.spec.name)
        .await
        .unwrap()
        .expect("nobody else archives this namespace");

    // Act
    let while_held = archive.report_of(&other_replica).await;
    holder.rollback().await.unwrap();
    let once_free = archive.report_of(&other_replica).await;

    // Assert
    assert_eq!((while_held.busy, while_held.jobs), (1, 0));
    assert_eq!((once_free.busy, once_free.jobs), (0, 3));
    assert_eq!(id_counts(&archive.archived().await), once_each(&old));
}

#[tokio::test]
async fn two_replicas_archiving_at_once_archive_each_job_exactly_once() {
    // Arrange: 30 old jobs in batches of 2; two replicas with pools of their own, both
    // connected, so neither starts late.
    let archive = Archive::new(2).await;
    let old = archive.insert_old(JobStatus::Succeeded, 30).await;
    let other_replica = Store::connect_lazy(&archive.fleet_settings.database).unwrap();
    sqlx::query("SELECT 1")
        .execute(other_replica.pool())
        .await
        .unwrap();

    // Act: each replica passes again and again (taking turns at the namespace's lock)
    // until one of its passes finds the namespace free and nothing left.
    let (first, second) = tokio::join!(
        archive.until_nothing_is_left(&archive.store),
        archive.until_nothing_is_left(&other_replica),
    );

    // Assert
    assert_eq!(first.jobs + second.jobs, 30, "{first:?} {second:?}");
    let archived = archive.archived().await;
    assert_eq!(archived.len() as u64, first.batches + second.batches);
    assert_eq!(id_counts(&archived), once_each(&old));
    assert_eq!(archive.rows(&old).await, 0);
    assert_eq!(archive.pending_batches().await, 0);
}

#[tokio::test]
async fn the_api_archives_old_finished_jobs_on_its_schedule() {
    // Arrange: an API with storage and a one-second archive interval.
    let s3 = services::s3_settings();
    let fleet = TestFleet::builder()
        .without_worker()
        .settings(|s| {
            s.use_test_storage();
            s.archive = Some(ArchiveSection {
                after_days: Some(u32::try_from(AFTER_DAYS).unwrap()),
                interval_secs: Some(1),
                ..ArchiveSection::default()
            });
        })
        .start()
        .await;
    let now = Utc::now();
    let mut old = Vec::new();
    for days in [AFTER_DAYS + 1, AFTER_DAYS + 2] {
        old.push(
            insert_job(
                &fleet.store,
                fleet.namespace.as_str(),
                JobStatus::Succeeded,
                Some(days),
                now,
            )
            .await,
        );
    }
    let young = insert_job(
        &fleet.store,
        fleet.namespace.as_str(),
        JobStatus::Succeeded,
        Some(1),
        now,
    )
    .await;

    // Act: nothing but waiting for the API's archiver.
    let remaining = || async {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id = ANY($1)")
            .bind(&old)
            .fetch_one(fleet.store.pool())
            .await
            .unwrap();
        (rows == 0).then_some(())
    };
    wait_until(
        "the API to archive the old jobs",
        Duration::from_secs(20),
        remaining,
    )
    .await;

    // Assert
    let settings = fleet.settings();
    let objects = ObjectStore::new(&s3);
    let archived = read_archive(&objects, &settings.namespaces[0]).await;
    assert_eq!(id_counts(&archived), once_each(&old));
    assert!(
        fleet
            .record_in(&fleet.namespace, JobId::from(young))
            .await
            .is_some()
    );
    let ids: BTreeSet<Uuid> = id_counts(&archived).into_keys().collect();
    assert!(!ids.contains(&young));
    fleet.stop().await;
}
