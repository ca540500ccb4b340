//! `engine-bench --backup`: the memory and speed of a database backup and restore, on the
//! real release `engine-api` processes. A fresh database is filled with job rows carrying
//! 2 KiB of random hex each (gzip keeps a little over half), backed up once at a tenth of
//! the size and once at full size, and the full backup is restored into a second fresh
//! database. Each process's peak RSS (VmHWM, sampled every 10 ms while it runs) shows
//! whether memory follows the size: it must not.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use secrecy::SecretString;
use sqlx::Connection;
use tokio::process::Command;

use engine_shared::config::{DatabaseSettings, Pooler};
use engine_shared::objects::{ObjectKey, ObjectStore, StorageSettings};
use engine_shared::store::Store;

use crate::cli::Args;
use crate::environment::random_hex;
use crate::machine::Machine;

const MIB: f64 = 1024.0 * 1024.0;

/// COPY-text bytes of one filler row (its 2 KiB of hex plus the other columns), to turn
/// the requested size into a row count.
const ROW_BYTES: u64 = 2_300;

/// Rows inserted per statement while filling.
const FILL_BATCH: u64 = 4_000;

/// One measured `engine-api` run.
struct Measured {
    status: ExitStatus,
    elapsed: Duration,
    peak_rss_kib: u64,
    stdout: String,
    /// Its last stderr lines (the command's summary).
    summary: String,
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("locating engine-bench")?
            .parent()
            .context("engine-bench has no directory")?
            .to_path_buf(),
    };
    let engine_api = bin_dir.join("engine-api");
    ensure!(
        engine_api.exists(),
        "{} is missing: run `cargo build --release --bins`",
        engine_api.display()
    );
    let run_dir = std::env::temp_dir().join(format!("engine-bench-backup-{}", random_hex(4)));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let suffix = random_hex(4);
    let source =
        Scratch::create(&args.database_url, &format!("tl_engine_bench_bk_{suffix}")).await?;
    let target =
        Scratch::create(&args.database_url, &format!("tl_engine_bench_rs_{suffix}")).await?;
    let objects = ObjectStore::new(&StorageSettings {
        endpoint: Some(args.s3_endpoint.clone()),
        region: "us-east-1".into(),
        access_key_id: SecretString::from(args.s3_access_key.clone()),
        secret_access_key: SecretString::from(args.s3_secret_key.clone()),
        bucket: args.s3_bucket.clone(),
        force_path_style: true,
    });
    let prefix = format!("bench-{suffix}");
    let measured = measure(
        args,
        &engine_api,
        &run_dir,
        (&source, &target),
        &objects,
        &prefix,
    )
    .await;
    // Whatever happened: no databases or objects left behind.
    if let Some(folder) = ObjectKey::backups_folder_under(&prefix) {
        for object in objects.list(&folder).await.unwrap_or_default() {
            let _ = objects.delete(&object.key).await;
        }
    }
    source.drop().await;
    target.drop().await;
    match measured {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&run_dir);
            Ok(())
        }
        Err(error) => {
            eprintln!("settings and logs kept in {}", run_dir.display());
            Err(error)
        }
    }
}

async fn measure(
    args: &Args,
    engine_api: &Path,
    run_dir: &Path,
    (source, target): (&Scratch, &Scratch),
    objects: &ObjectStore,
    prefix: &str,
) -> anyhow::Result<()> {
    let machine = Machine::probe(source.store.pool(), "-".to_owned(), run_dir).await?;
    println!(
        "engine-bench --backup {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    println!(
        "machine     {} CPUs, {:.1} GiB RAM, Linux {}; {}; S3: {} (bucket {})",
        machine.cpus,
        machine.memory_gib,
        machine.kernel,
        machine.postgres,
        args.s3_endpoint,
        args.s3_bucket
    );
    println!(
        "method      release engine-api backup / restore as child processes; job rows of 2 KiB random hex; peak RSS = VmHWM sampled every 10 ms"
    );
    println!();
    source
        .store
        .migrate()
        .await
        .context("migrating the source database")?;
    let config = run_dir.join("backup.toml");
    std::fs::write(&config, settings(args, &source.url)).context("writing the settings")?;

    let full_rows = (args.backup_rows_mib * 1024 * 1024 / ROW_BYTES).max(10);
    let mut filled_rows = 0;
    for rows in [full_rows / 10, full_rows] {
        let filled = Instant::now();
        fill(source, rows - filled_rows).await?;
        filled_rows = rows;
        let (count, table_bytes): (i64, i64) =
            sqlx::query_as("SELECT (SELECT count(*) FROM jobs), pg_total_relation_size('jobs')")
                .fetch_one(source.store.pool())
                .await?;
        let backup = run_measured(
            engine_api,
            &config,
            &["backup", "--prefix", prefix],
            None,
            &run_dir.join(format!("backup-{rows}.log")),
        )
        .await?;
        ensure!(
            backup.status.success(),
            "engine-api backup failed ({}):\n{}",
            backup.status,
            backup.summary
        );
        let object = object_size(objects, prefix, backup.stdout.trim()).await?;
        println!(
            "[backup] {count} job rows, jobs table {:.1} MiB on disk (filled in {:.1} s)",
            table_bytes as f64 / MIB,
            filled.elapsed().as_secs_f64()
        );
        println!(
            "  object          {:.1} MiB in {:.2} s: {:.1} MiB/s stored",
            object as f64 / MIB,
            backup.elapsed.as_secs_f64(),
            object as f64 / MIB / backup.elapsed.as_secs_f64()
        );
        println!(
            "  peak RSS        {:.1} MiB (engine-api backup)",
            backup.peak_rss_kib as f64 / 1024.0
        );
        println!("  its summary     {}", backup.summary.trim());
        println!();
    }

    let restore = run_measured(
        engine_api,
        &config,
        &["restore", "--prefix", prefix, "--from", "latest"],
        Some(&target.url),
        &run_dir.join("restore.log"),
    )
    .await?;
    ensure!(
        restore.status.success(),
        "engine-api restore failed ({}):\n{}",
        restore.status,
        restore.summary
    );
    let count = |store: &Store| {
        let pool = store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs")
                .fetch_one(&pool)
                .await
        }
    };
    let (source_rows, target_rows) = (count(&source.store).await?, count(&target.store).await?);
    ensure!(
        source_rows == target_rows,
        "the restore holds {target_rows} jobs, the source {source_rows}"
    );
    println!(
        "[restore] the full backup into an empty database ({target_rows} job rows, counts equal)"
    );
    println!(
        "  duration        {:.2} s (migrations, download, gunzip, COPY, index builds, commit)",
        restore.elapsed.as_secs_f64()
    );
    println!(
        "  peak RSS        {:.1} MiB (engine-api restore)",
        restore.peak_rss_kib as f64 / 1024.0
    );
    println!("  its summary     {}", restore.summary.trim());
    Ok(())
}

/// Adds `rows` jobs whose args carry 2 KiB of random hex.
async fn fill(source: &Scratch, rows: u64) -> anyhow::Result<()> {
    let mut left = rows;
    while left > 0 {
        let batch = left.min(FILL_BATCH);
        sqlx::query(
            "INSERT INTO jobs (id, namespace, kind, queue, args, status, max_attempts,
                               timeout_ms, run_at, finished_at, result)
             SELECT gen_random_uuid(), 'bench', 'noop', 'default',
                    jsonb_build_object('blob', (SELECT string_agg(md5(random()::text || g || i), '')
                                                  FROM generate_series(1, 64) AS i)),
                    'succeeded', 1, 1000, now(), now(), '{}'::jsonb
               FROM generate_series(1, $1) AS g",
        )
        .bind(batch as i64)
        .execute(source.store.pool())
        .await
        .context("filling the source database")?;
        left -= batch;
    }
    Ok(())
}

/// The size of the object `key` names (what `engine-api backup` printed on stdout).
async fn object_size(objects: &ObjectStore, prefix: &str, key: &str) -> anyhow::Result<u64> {
    let folder = ObjectKey::backups_folder_under(prefix).context("a plain prefix")?;
    objects
        .list(&folder)
        .await?
        .into_iter()
        .find(|object| object.key.as_str() == key)
        .map(|object| object.size)
        .with_context(|| format!("engine-api backup printed {key:?}, which is not stored"))
}

/// Runs `engine-api --config <config> <command>`, sampling its peak RSS until it exits.
/// `restore_url` is passed in `RESTORE_DATABASE_URL` (so it is not on the command line).
async fn run_measured(
    engine_api: &Path,
    config: &Path,
    command: &[&str],
    restore_url: Option<&str>,
    log: &PathBuf,
) -> anyhow::Result<Measured> {
    let stderr =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut process = Command::new(engine_api);
    process
        .arg("--config")
        .arg(config)
        .args(command)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("ENGINE")
            || key.starts_with("AWS_")
            || matches!(
                key.as_str(),
                "DATABASE_URL" | "AMQP_URL" | "RESTORE_DATABASE_URL"
            )
        {
            process.env_remove(key);
        }
    }
    if let Some(url) = restore_url {
        process.env("RESTORE_DATABASE_URL", url);
    }
    let started = Instant::now();
    let mut child = process
        .spawn()
        .with_context(|| format!("starting {}", engine_api.display()))?;
    let pid = child.id().context("engine-api has no pid")?;
    let mut peak_rss_kib = 0;
    let status = loop {
        peak_rss_kib = peak_rss_kib.max(vm_hwm_kib(pid).unwrap_or(0));
        tokio::select! {
            status = child.wait() => break status.context("waiting for engine-api")?,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    };
    let elapsed = started.elapsed();
    let mut stdout = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stdout).await?;
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    Ok(Measured {
        status,
        elapsed,
        peak_rss_kib,
        stdout,
        summary: lines[lines.len().saturating_sub(3)..].join("\n                  "),
    })
}

/// The process's peak resident set size so far, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The settings file: the source database, storage, and enough backups kept for both runs.
fn settings(args: &Args, database_url: &str) -> String {
    let quoted = |value: &str| serde_json::Value::String(value.to_owned()).to_string();
    format!(
        "[database]\nurl = {}\n[amqp]\nurl = {}\n[storage]\nendpoint_url = {}\n\
         access_key_id = {}\nsecret_access_key = {}\nbucket = {}\nforce_path_style = true\n\
         [backup]\nkeep = 5\n",
        quoted(database_url),
        quoted(&args.amqp_url),
        quoted(&args.s3_endpoint),
        quoted(&args.s3_access_key),
        quoted(&args.s3_secret_key),
        quoted(&args.s3_bucket),
    )
}

/// A database created for this run and dropped at its end.
struct Scratch {
    name: String,
    url: String,
    admin_url: String,
    store: Store,
}

impl Scratch {
    async fn create(base_url: &str, name: &str) -> anyhow::Result<Self> {
        let mut url = reqwest::Url::parse(base_url).context("--database-url is not a URL")?;
        url.set_path("/postgres");
        let admin_url = url.to_string();
        url.set_path(&format!("/{name}"));
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .context("connecting to PostgreSQL's postgres database")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        let store = Store::connect_lazy(&DatabaseSettings {
            url: SecretString::from(url.to_string()),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(10),
            migrate_on_start: false,
            pooler: Pooler::None,
        })?;
        Ok(Self {
            name: name.to_owned(),
            url: url.to_string(),
            admin_url,
            store,
        })
    }

    async fn drop(&self) {
        self.store.close().await;
        let dropped = async {
            let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            )))
            .execute(&mut admin)
            .await
        }
        .await;
        if let Err(error) = dropped {
            eprintln!("could not drop database {}: {error}", self.name);
        }
    }
}
