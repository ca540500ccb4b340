//! Database backups against the real servers: each test gets databases of its own
//! (`tl_engine_bk_<hex>`, dropped at the end) and a backups folder of its own
//! (`<prefix>/backups/` in the shared test bucket), so they run in parallel.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use engine_jobs::JobContext;
use engine_jobs::kinds::db_backup::{DbBackup, DbBackupArgs};
use engine_jobs::testing::run_in;
use engine_shared::backup::format::{BackupWriter, Header};
use engine_shared::backup::{
    self, BackupFolder, RestoreRefused, StoredBackup, restore_backup, schema,
};
use engine_shared::config::{BackupSettings, DatabaseSettings, Pooler};
use engine_shared::objects::{ObjectKey, ObjectStore};
use engine_shared::store::Store;
use engine_shared::{JobId, Namespace};
use engine_tests::settings::BackupSection;
use engine_tests::{TestSettings, binary, services};
use secrecy::SecretString;
use serde_json::json;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

/// A database of its own for one test; dropped when this is (a failed test too).
struct ScratchDatabase {
    name: String,
    url: String,
    store: Store,
}

impl ScratchDatabase {
    async fn create() -> Self {
        engine_shared::tls::install_crypto_provider();
        let name = format!("tl_engine_bk_{}", &services::unique_namespace()[2..]);
        let mut admin = sqlx::PgConnection::connect(&admin_url())
            .await
            .expect("PostgreSQL unreachable: run infra/local/prepare.sh test");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .unwrap();
        let mut url = reqwest::Url::parse(&services::database_url()).unwrap();
        url.set_path(&format!("/{name}"));
        let url = url.to_string();
        let store = Store::connect_lazy(&DatabaseSettings {
            url: SecretString::from(url.clone()),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(10),
            migrate_on_start: false,
            pooler: Pooler::None,
        })
        .unwrap();
        Self { name, url, store }
    }

    /// A fresh database with the fleet's schema.
    async fn migrated() -> Self {
        let database = Self::create().await;
        database.store.migrate().await.unwrap();
        database
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.store.pool()
    }

    /// Every table's row count and a digest of its rows (as JSON, in a stable order).
    async fn contents(&self) -> BTreeMap<String, (i64, String)> {
        let mut conn = self.pool().acquire().await.unwrap();
        let mut contents = BTreeMap::new();
        for table in schema::tables(&mut conn).await.unwrap() {
            let sql = format!(
                "SELECT count(*), coalesce(md5(string_agg(to_jsonb(t)::text, E'\\n' \
                 ORDER BY to_jsonb(t)::text)), '') FROM public.{} t",
                schema::quote(&table.name)
            );
            let row: (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            contents.insert(table.name, row);
        }
        contents
    }

    async fn is_migrated(&self) -> bool {
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .fetch_one(self.pool())
            .await
            .unwrap()
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await: a thread with its own runtime drops the database, closing any
        // connection still open to it.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let mut admin = sqlx::PgConnection::connect(&admin_url()).await?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await
                    .map(drop)
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

fn admin_url() -> String {
    let mut url = reqwest::Url::parse(&services::database_url()).unwrap();
    url.set_path("/postgres");
    url.to_string()
}

/// A backups folder of the test's own, and the store to reach it.
struct TestFolder {
    prefix: String,
    folder: BackupFolder,
    objects: ObjectStore,
}

impl TestFolder {
    fn new() -> Self {
        let prefix = services::unique_namespace();
        Self {
            folder: BackupFolder::under(&prefix).unwrap(),
            objects: ObjectStore::new(&services::s3_settings()),
            prefix,
        }
    }

    fn key(&self, name: &str) -> ObjectKey {
        ObjectKey::backup_in(&self.raw_folder(), name).unwrap()
    }

    fn raw_folder(&self) -> ObjectKey {
        ObjectKey::backups_folder_under(&self.prefix).unwrap()
    }

    /// Every object name in the folder, backups or not.
    async fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .objects
            .list(&self.raw_folder())
            .await
            .unwrap()
            .into_iter()
            .map(|object| object.key.file_name().to_owned())
            .collect();
        names.sort();
        names
    }

    async fn clean(&self) {
        for object in self.objects.list(&self.raw_folder()).await.unwrap() {
            self.objects.delete(&object.key).await.unwrap();
        }
    }
}

/// Text that stresses COPY's escaping: tabs, newlines, backslashes, `\N` and `\.` as
/// text, quotes, non-ASCII, a control character.
const AWKWARD: &str = "tab\there\nnew line\r\nback\\slash \\N \\. \"quoted\" café 😀 \u{7f}";

/// Rows in every table of the schema, with NULLs and awkward text, and `bulk` more jobs
/// ([`add_bulk_jobs`]).
async fn seed(database: &ScratchDatabase, bulk: u32) {
    let pool = database.pool();
    let first = JobId::new_at(chrono::Utc::now());
    let second = JobId::new_at(chrono::Utc::now());
    for (id, error, key) in [(first, Some(AWKWARD), Some("idem-1")), (second, None, None)] {
        sqlx::query(
            "INSERT INTO jobs (id, namespace, kind, queue, args, status, max_attempts,
                               timeout_ms, run_at, last_error, idempotency_key, result,
                               backoff_min_ms)
             VALUES ($1, 'acme', 'noop', 'default', $2, 'dead', 3, 1000,
                     '2026-11-22 10:30:00.123456+00', $3, $4, $5, NULL)",
        )
        .bind(id.as_uuid())
        .bind(json!({ "text": AWKWARD, "nested": { "none": null, "list": [1, 2.5, "\\."] } }))
        .bind(error)
        .bind(key)
        .bind(error.map(|_| json!({ "partial": AWKWARD })))
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO job_errors (job_id, attempt, kind, message, duration_ms, worker_id,
                                 retry_delay_ms, retry_via)
         VALUES ($1, 1, 'error', $2, 12, 'w-1', 1000, 'jobs.delay.1000'),
                ($1, 2, 'fatal', '\\.', NULL, NULL, NULL, NULL)",
    )
    .bind(first.as_uuid())
    .bind(AWKWARD)
    .execute(pool)
    .await
    .unwrap();
    let hash: Vec<u8> = (0..32u8).map(|b| b.wrapping_mul(37) ^ 0x5c).collect();
    sqlx::query(
        "INSERT INTO api_keys (id, namespace, label, key_hash, revoked_at)
         VALUES (gen_random_uuid(), 'acme', $1, $2, now()),
                (gen_random_uuid(), 'ops', '', '\\x000a095cff'::bytea, NULL)",
    )
    .bind(AWKWARD)
    .bind(hash)
    .execute(pool)
    .await
    .unwrap();
    add_bulk_jobs(database, bulk).await;
}

/// `count` more jobs carrying 2 KiB of random hex each (about 2 MiB per thousand,
/// compressing to a little over half).
async fn add_bulk_jobs(database: &ScratchDatabase, count: u32) {
    if count == 0 {
        return;
    }
    sqlx::query(
        "INSERT INTO jobs (id, namespace, kind, queue, args, status, max_attempts,
                           timeout_ms, run_at)
         SELECT gen_random_uuid(), 'bulk', 'noop', 'default',
                jsonb_build_object('blob', (SELECT string_agg(md5(random()::text || g || i), '')
                                              FROM generate_series(1, 64) AS i)),
                'succeeded', 1, 1000, now()
           FROM generate_series(1, $1) AS g",
    )
    .bind(count as i32)
    .execute(database.pool())
    .await
    .unwrap();
}

/// A table beyond the fleet's, to show the backup follows the catalog: it sorts before
/// `jobs` by name yet references it, its first column can start a line with `\.`, it has
/// a sequence, a generated column, floats, an interval, an array, and a dropped column.
const NOTES_TABLE: &str = "CREATE TABLE aaa_notes (
    note text,
    id bigserial PRIMARY KEY,
    job_id uuid NOT NULL REFERENCES jobs (id),
    gone integer,
    amount double precision,
    during interval,
    tags text[],
    note_length integer GENERATED ALWAYS AS (length(note)) STORED
)";

async fn add_notes_table(database: &ScratchDatabase, with_rows: bool) {
    sqlx::raw_sql(NOTES_TABLE)
        .execute(database.pool())
        .await
        .unwrap();
    sqlx::raw_sql("ALTER TABLE aaa_notes DROP COLUMN gone")
        .execute(database.pool())
        .await
        .unwrap();
    if with_rows {
        sqlx::raw_sql(
            "INSERT INTO aaa_notes (note, job_id, amount, during, tags)
             SELECT v.note, (SELECT id FROM jobs ORDER BY id LIMIT 1), v.amount, v.during, v.tags
               FROM (VALUES
                 (E'\\\\.', 0.1::float8 + 0.2::float8, '1 day 02:03:04.5'::interval,
                  ARRAY['a,b', 'c\"d', NULL, E'e\\\\f']),
                 (NULL, 'NaN'::float8, NULL, '{}'::text[]),
                 (E'x\\ty', '-Infinity'::float8, '-3 mons'::interval, NULL),
                 ('last', 1e-300::float8, '0'::interval, ARRAY['']))
                 AS v(note, amount, during, tags)",
        )
        .execute(database.pool())
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_an_empty_database_with_every_row_equal() {
    // Arrange: awkward rows in every table, plus 12,000 bulk jobs: about 24 MiB of rows,
    // more than one 8 MiB upload part once compressed.
    let source = ScratchDatabase::migrated().await;
    seed(&source, 12_000).await;
    add_notes_table(&source, true).await;
    let target = ScratchDatabase::migrated().await;
    add_notes_table(&target, false).await;
    let storage = TestFolder::new();

    // Act
    let mut reported = Vec::new();
    let written = backup::back_up(
        source.pool(),
        &storage.objects,
        &storage.folder,
        7,
        &CancellationToken::new(),
        |bytes| reported.push(bytes),
    )
    .await
    .unwrap();
    let found = storage
        .folder
        .find(&storage.objects, &"latest".parse().unwrap())
        .await
        .unwrap();
    let mut restored_progress = Vec::new();
    let restored = restore_backup(&storage.objects, &found.key, &target.store, |bytes| {
        restored_progress.push(bytes)
    })
    .await
    .unwrap();

    // Assert
    let before = source.contents().await;
    assert_eq!(
        target.contents().await,
        before,
        "every table's rows are equal"
    );
    for seeded in ["aaa_notes", "api_keys", "job_errors", "jobs"] {
        assert!(before[seeded].0 > 0, "{seeded} has rows: {before:?}");
    }
    let counts: BTreeMap<String, u64> = before
        .iter()
        .map(|(table, (rows, _))| (table.clone(), *rows as u64))
        .collect();
    assert_eq!(written.tables, counts);
    assert_eq!(restored.tables, counts);
    assert_eq!(found.key, written.key);
    assert_eq!(found.size, written.bytes);
    assert!(
        written.bytes > 8 << 20,
        "a multipart upload: {} bytes",
        written.bytes
    );
    assert!(written.raw_bytes > written.bytes);
    assert_eq!(restored.migration, schema::latest_known_migration());
    assert_eq!(restored.taken_at, written.created_at);
    assert_eq!(restored.bytes, written.bytes, "the whole object was read");
    assert!(reported.is_sorted() && reported.last() == Some(&written.bytes));
    assert!(restored_progress.is_sorted() && restored_progress.last() == Some(&written.bytes));
    // The sequence moved past the restored ids: a new row does not collide.
    let (next, largest): (i64, i64) = sqlx::query_as(
        "WITH added AS (INSERT INTO aaa_notes (job_id) SELECT job_id FROM aaa_notes LIMIT 1
                        RETURNING id)
         SELECT (SELECT id FROM added), (SELECT max(id) FROM aaa_notes)",
    )
    .fetch_one(target.pool())
    .await
    .unwrap();
    assert!(next > largest, "next id {next} after {largest}");
    storage.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_cannot_succeed_changes_nothing() {
    // Arrange: a real backup; a target holding one row; a backup of another schema
    // version; a damaged copy of the real one.
    let source = ScratchDatabase::migrated().await;
    seed(&source, 2_000).await;
    let storage = TestFolder::new();
    let cancel = CancellationToken::new();
    let real = backup::back_up(
        source.pool(),
        &storage.objects,
        &storage.folder,
        7,
        &cancel,
        drop,
    )
    .await
    .unwrap();
    let occupied = ScratchDatabase::migrated().await;
    sqlx::query(
        "INSERT INTO api_keys (id, namespace, key_hash) VALUES (gen_random_uuid(), 'x', '\\x01')",
    )
    .execute(occupied.pool())
    .await
    .unwrap();
    let occupied_before = occupied.contents().await;
    let foreign = storage.key("20000101T000000Z.dump.gz");
    storage
        .objects
        .put(&foreign, foreign_version_backup(), "application/gzip")
        .await
        .unwrap();
    let damaged = storage.key("20000102T000000Z.dump.gz");
    let bytes = storage
        .objects
        .get(&real.key)
        .await
        .unwrap()
        .unwrap()
        .collect()
        .await
        .unwrap()
        .into_bytes();
    storage
        .objects
        .put(
            &damaged,
            bytes[..bytes.len() * 2 / 3].to_vec(),
            "application/gzip",
        )
        .await
        .unwrap();
    let fresh = ScratchDatabase::create().await;

    // Act
    let into_occupied = restore_backup(&storage.objects, &real.key, &occupied.store, drop).await;
    let of_foreign_version = restore_backup(&storage.objects, &foreign, &fresh.store, drop).await;
    let migrated_after_foreign = fresh.is_migrated().await;
    let of_damaged = restore_backup(&storage.objects, &damaged, &fresh.store, drop).await;
    let missing = restore_backup(
        &storage.objects,
        &storage.key("nothing.dump.gz"),
        &fresh.store,
        drop,
    )
    .await;

    // Assert
    let error = into_occupied.unwrap_err();
    assert!(
        matches!(error.downcast_ref(), Some(RestoreRefused::NotEmpty(tables)) if tables == &["api_keys"]),
        "{error:#}"
    );
    assert!(
        error.to_string().contains("not empty (api_keys hold rows)"),
        "{error}"
    );
    assert_eq!(
        occupied.contents().await,
        occupied_before,
        "nothing changed"
    );

    let error = of_foreign_version.unwrap_err();
    assert!(
        matches!(
            error.downcast_ref(),
            Some(RestoreRefused::SchemaVersion { backup: 1, .. })
        ),
        "{error:#}"
    );
    assert!(
        !migrated_after_foreign,
        "refused before migrating the target"
    );

    let error = of_damaged.unwrap_err();
    assert!(
        error.downcast_ref::<RestoreRefused>().is_none(),
        "{error:#}"
    );
    assert!(format!("{error:#}").contains("restoring"), "{error:#}");
    let after_damaged = fresh.contents().await;
    assert!(
        after_damaged.values().all(|(rows, _)| *rows == 0),
        "the failed restore left no rows: {after_damaged:?}"
    );
    let error = missing.unwrap_err();
    assert!(
        format!("{error:#}").contains("there is no backup"),
        "{error:#}"
    );
    storage.clean().await;
}

/// A well-formed backup of schema version 1.
/// A minimal backup whose header vouches for `name` (`<time>.dump.gz`, the older form).
fn dump_named(name: &str) -> Vec<u8> {
    let stem = name.strip_suffix(".dump.gz").unwrap();
    let taken = chrono::NaiveDateTime::parse_from_str(stem, "%Y%m%dT%H%M%SZ")
        .unwrap()
        .and_utc();
    let header = Header {
        created_at: taken,
        migration: schema::latest_known_migration(),
        tables: Vec::new(),
        name: Some(name.to_owned()),
    };
    let compressor = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    BackupWriter::start(compressor, &header)
        .unwrap()
        .finish()
        .unwrap()
        .finish()
        .unwrap()
}

fn foreign_version_backup() -> Vec<u8> {
    let header = Header {
        created_at: chrono::Utc::now(),
        migration: 1,
        tables: Vec::new(),
        name: None,
    };
    let compressor = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    BackupWriter::start(compressor, &header)
        .unwrap()
        .finish()
        .unwrap()
        .finish()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_while_another_runs_fails_clearly_and_stores_nothing() {
    let source = ScratchDatabase::migrated().await;
    seed(&source, 0).await;
    let storage = TestFolder::new();
    // Another replica's backup, as PostgreSQL sees it: its snapshot holds the lock.
    let mut other = source.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(backup::dump::BACKUP_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();

    let second = backup::back_up(
        source.pool(),
        &storage.objects,
        &storage.folder,
        7,
        &CancellationToken::new(),
        drop,
    )
    .await;

    let error = second.expect_err("a second backup at once must not run");
    assert!(
        format!("{error:#}").contains("another backup is running"),
        "{error:#}"
    );
    assert_eq!(storage.names().await, Vec::<String>::new());
    other.rollback().await.unwrap();
    let after = backup::back_up(
        source.pool(),
        &storage.objects,
        &storage.folder,
        7,
        &CancellationToken::new(),
        drop,
    )
    .await;
    assert!(after.is_ok(), "once it ended, backups run: {after:?}");
    storage.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_backup_stores_nothing() {
    let source = ScratchDatabase::migrated().await;
    seed(&source, 0).await;
    let storage = TestFolder::new();
    let cancel = CancellationToken::new();
    cancel.cancel();

    let result = backup::back_up(
        source.pool(),
        &storage.objects,
        &storage.folder,
        7,
        &cancel,
        drop,
    )
    .await;

    let error = result.unwrap_err();
    assert!(format!("{error:#}").contains("cancelled"), "{error:#}");
    assert_eq!(storage.names().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_storage_refuses_fails_with_the_storage_error() {
    // Arrange: storage that refuses every request (a wrong secret).
    let source = ScratchDatabase::migrated().await;
    seed(&source, 0).await;
    let mut settings = services::s3_settings();
    settings.secret_access_key = SecretString::from("not-the-secret".to_owned());
    let refusing = ObjectStore::new(&settings);
    let folder = BackupFolder::under("x").unwrap();
    let cancel = CancellationToken::new();
    let attempt = || backup::back_up(source.pool(), &refusing, &folder, 7, &cancel, drop);

    // Act: a backup that fits one request, then one that needs a multipart upload (whose
    // refusal stops the writer half-way).
    let small = attempt().await;
    add_bulk_jobs(&source, 16_000).await;
    let large = attempt().await;

    // Assert: the storage's error, not the writer's, and the connection is still usable.
    let small = format!("{:#}", small.unwrap_err());
    assert!(small.contains("uploading x/backups/"), "{small}");
    let large = format!("{:#}", large.unwrap_err());
    assert!(
        large.contains("starting the multipart upload of x/backups/"),
        "{large}"
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(source.pool())
        .await
        .unwrap();
    assert_eq!(jobs, 16_002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_db_backup_job_keeps_the_last_n_and_deletes_only_the_oldest() {
    // Arrange: four older backups and two objects that are not backups.
    let source = ScratchDatabase::migrated().await;
    seed(&source, 0).await;
    let storage = TestFolder::new();
    let older = [
        "20200101T000000Z.dump.gz",
        "20200102T000000Z.dump.gz",
        "20200103T000000Z.dump.gz",
        "20200104T000000Z.dump.gz",
    ];
    let strangers = ["20200101T000000Z.dump.gz.partial", "notes.txt"];
    for name in &older {
        storage
            .objects
            .put(&storage.key(name), dump_named(name), "application/gzip")
            .await
            .unwrap();
    }
    for name in &strangers {
        storage
            .objects
            .put(&storage.key(name), b"x".to_vec(), "text/plain")
            .await
            .unwrap();
    }
    let ops = Namespace::parse("ops").unwrap();
    let job = DbBackup::in_folder(
        Some(source.store.clone()),
        Some(storage.objects.clone()),
        BackupSettings {
            keep: 3,
            namespace: Some(ops.clone()),
        },
        storage.folder.clone(),
    );
    let context = JobContext::for_test(ops);

    // Act
    let result = run_in(&job, context.clone(), DbBackupArgs {})
        .await
        .unwrap();

    // Assert
    let kept: Vec<StoredBackup> = storage.folder.list(&storage.objects).await.unwrap();
    let newest = kept.last().unwrap().name.clone();
    assert_eq!(
        kept.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        [older[2], older[3], newest.as_str()]
    );
    let mut all = vec![older[2], older[3], newest.as_str()];
    all.extend(strangers);
    all.sort();
    assert_eq!(storage.names().await, all, "the strangers are untouched");
    assert_eq!(result["key"], json!(storage.key(&newest).as_str()));
    assert_eq!(result["bytes"], json!(kept.last().unwrap().size));
    for (table, rows) in [("api_keys", 2), ("job_errors", 2), ("jobs", 2)] {
        assert_eq!(result["tables"][table], json!(rows), "{result}");
    }
    assert_eq!(
        result["pruned"],
        json!([
            storage.key(older[0]).as_str(),
            storage.key(older[1]).as_str()
        ])
    );
    let log = context.log.take();
    assert!(log.contains("stored "), "{log}");
    storage.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_planted_under_backups_are_never_the_latest_nor_pruned_nor_counted() {
    // Arrange: two real backups; then, with newer names, an object that is no backup and
    // a copy of the first real one (its header says when it was really taken).
    let source = ScratchDatabase::migrated().await;
    seed(&source, 0).await;
    let storage = TestFolder::new();
    let never = CancellationToken::new();
    let back_up = |keep| {
        backup::back_up(
            source.pool(),
            &storage.objects,
            &storage.folder,
            keep,
            &never,
            |_| {},
        )
    };
    let first = back_up(10).await.unwrap();
    let second = back_up(10).await.unwrap();
    assert_ne!(first.key, second.key, "two backups never share a name");
    let mut copy = Vec::new();
    let mut body = storage.objects.get(&first.key).await.unwrap().unwrap();
    while let Some(chunk) = body.next().await {
        copy.extend_from_slice(&chunk.unwrap());
    }
    let planted = ["20300101T000000Z.dump.gz", "20300102T000000Z.dump.gz"];
    for (name, bytes) in planted.iter().zip([b"not a backup".to_vec(), copy]) {
        storage
            .objects
            .put(&storage.key(name), bytes, "application/gzip")
            .await
            .unwrap();
    }

    // Act: a third backup, keeping two.
    let third = back_up(2).await.unwrap();

    // Assert: the real ones were counted and pruned; the planted ones neither.
    assert_eq!(third.prune_error, None);
    assert_eq!(third.pruned, vec![first.key.clone()]);
    let latest = storage
        .folder
        .find(&storage.objects, &"latest".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        latest.key, third.key,
        "the latest is the newest real backup"
    );
    let mut expected = vec![
        second.key.file_name().to_owned(),
        third.key.file_name().to_owned(),
    ];
    expected.extend(planted.map(str::to_owned));
    expected.sort();
    assert_eq!(
        storage.names().await,
        expected,
        "the planted objects are untouched"
    );
    let named = storage
        .folder
        .find(&storage.objects, &planted[1].parse().unwrap())
        .await;
    assert!(
        named.is_err(),
        "a copy under another name cannot be restored by that name"
    );
    storage.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_backs_up_lists_and_restores() {
    // Arrange
    let source = ScratchDatabase::migrated().await;
    seed(&source, 500).await;
    let target = ScratchDatabase::create().await;
    let storage = TestFolder::new();
    let config = std::env::temp_dir().join(format!("{}-backup.toml", storage.prefix));
    let mut settings = TestSettings::for_namespaces(&[]);
    settings.database.url = source.url.clone();
    settings.use_test_storage();
    settings.backup = Some(BackupSection { keep: 2 });
    std::fs::write(&config, settings.to_toml()).unwrap();
    let run = |args: &[&str]| {
        let mut command = Command::new(binary("engine-api"));
        command.arg("--config").arg(&config).args(args);
        for variable in [
            "DATABASE_URL",
            "AMQP_URL",
            "ENGINE_CONFIG",
            "RESTORE_DATABASE_URL",
            "AWS_S3_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_S3_BUCKET_NAME",
            "AWS_REGION",
        ] {
            command.env_remove(variable);
        }
        let output = command.output().expect("engine-api runs");
        (
            output.status.success(),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let prefix = storage.prefix.as_str();

    // Act
    let (backed_up, key, backup_log) = run(&["backup", "--prefix", prefix]);
    let (listed, list, _) = run(&["backups", "list", "--prefix", prefix]);
    let name = key.trim().rsplit('/').next().unwrap().to_owned();
    let (restored, _, restore_log) = run(&[
        "restore",
        "--prefix",
        prefix,
        "--from",
        &name,
        "--database-url",
        &target.url,
    ]);
    let (restored_again, _, again_log) =
        run(&["restore", "--prefix", prefix, "--database-url", &target.url]);
    let (without_target, _, without_target_log) = run(&["restore", "--prefix", prefix]);

    // Assert
    assert!(backed_up, "{backup_log}");
    assert_eq!(key.trim(), storage.key(&name).as_str());
    assert!(
        backup_log
            .lines()
            .any(|line| line.starts_with("backup  ") && line.contains(" MiB/s  ")),
        "a progress line: {backup_log}"
    );
    assert!(backup_log.contains("stored "), "{backup_log}");
    assert!(listed && list.starts_with(&name), "{list}");
    assert!(restored, "{restore_log}");
    assert!(
        restore_log
            .lines()
            .any(|line| line.starts_with("restore  ") && line.contains("100%")),
        "{restore_log}"
    );
    assert_eq!(target.contents().await, source.contents().await);
    assert!(!restored_again, "a second restore is refused");
    assert!(again_log.contains("not empty"), "{again_log}");
    assert!(!without_target, "--database-url is required");
    assert!(
        without_target_log.contains("--database-url"),
        "{without_target_log}"
    );
    for log in [&backup_log, &restore_log, &again_log] {
        assert!(
            !log.contains("postgres://"),
            "no database URL printed: {log}"
        );
    }
    let _ = std::fs::remove_file(&config);
    storage.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_leaves_every_unfinished_job_runnable() {
    // Arrange: jobs the old broker held messages for — queued and published, retrying in a
    // delay tier, running under a worker — and a finished one.
    let source = ScratchDatabase::migrated().await;
    let pool = source.pool();
    let mut ids = Vec::new();
    for status in ["queued", "retrying", "running", "succeeded"] {
        let id = JobId::new_at(chrono::Utc::now());
        sqlx::query(
            "INSERT INTO jobs (id, namespace, kind, queue, args, status, max_attempts, timeout_ms,
                               run_at, published_at, attempts, starts, lease_until)
             VALUES ($1, 'acme', 'noop', 'default', '{}', $2::job_status, 3, 1000,
                     now() - interval '1 minute', now(), 1, 1, now() + interval '1 minute')",
        )
        .bind(id.as_uuid())
        .bind(status)
        .execute(pool)
        .await
        .unwrap();
        ids.push((id, status));
    }
    let target = ScratchDatabase::migrated().await;
    let storage = TestFolder::new();
    backup::back_up(
        pool,
        &storage.objects,
        &storage.folder,
        7,
        &CancellationToken::new(),
        |_| {},
    )
    .await
    .unwrap();
    let found = storage
        .folder
        .find(&storage.objects, &"latest".parse().unwrap())
        .await
        .unwrap();

    // Act
    let restored = restore_backup(&storage.objects, &found.key, &target.store, |_| {})
        .await
        .unwrap();

    // Assert: no message of the old broker exists here, so each unfinished job is back in
    // the outbox (the sweeper or the scheduler publishes it); the finished one is as it was.
    assert_eq!(restored.requeued, 3);
    for (id, before) in ids {
        let (status, published, lease): (String, bool, bool) = sqlx::query_as(
            "SELECT status::text, published_at IS NOT NULL, lease_until IS NOT NULL
             FROM jobs WHERE id = $1",
        )
        .bind(id.as_uuid())
        .fetch_one(target.pool())
        .await
        .unwrap();
        match before {
            "succeeded" => assert_eq!((status.as_str(), published), ("succeeded", true)),
            "running" => assert_eq!(
                (status.as_str(), published, lease),
                ("retrying", false, false)
            ),
            _ => assert_eq!((status.as_str(), published, lease), (before, false, false)),
        }
    }
    storage.clean().await;
}
