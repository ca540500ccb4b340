//! The `engine-api` command line: serve the API, apply migrations, manage API keys, back up
//! and restore the database.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

use engine_jobs::{JobDeps, register_all};
use engine_shared::backup::{self, BackupChoice, BackupFolder};
use engine_shared::config::{DatabaseSettings, Pooler, Settings};
use engine_shared::objects::ObjectStore;
use engine_shared::store::Store;
use engine_shared::{Namespace, shutdown, telemetry};

use crate::Application;
use crate::progress::ProgressLine;

#[derive(Debug, Parser)]
#[command(name = "engine-api", about = "tl-engine's HTTP API and admin commands")]
pub struct Cli {
    /// A TOML settings file (also ENGINE_CONFIG); environment variables override it.
    #[arg(long, env = "ENGINE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API and run the outbox relay (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Write a consistent backup of the database to storage (`backups/<time>.dump.gz`),
    /// then delete the oldest beyond `backup.keep`. Prints the object's key on stdout.
    Backup {
        /// Keep it under `<prefix>/backups/` instead of `backups/` (drills, tests).
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Restore a backup into an empty database (migrated first); refuses one that holds rows.
    Restore {
        /// `latest`, or a backup's file name (see `backups list`).
        #[arg(long, default_value = "latest")]
        from: String,
        /// The database to restore into. Required, so the configured DATABASE_URL is never
        /// written over by accident; never printed.
        #[arg(
            long,
            env = "RESTORE_DATABASE_URL",
            hide_env_values = true,
            value_parser = secret
        )]
        database_url: SecretString,
        /// Read the backups under `<prefix>/backups/` instead of `backups/`.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Stored backups.
    #[command(subcommand)]
    Backups(BackupsCommand),
}

#[derive(Debug, Subcommand)]
enum BackupsCommand {
    /// List them, oldest first: name, size, time of the snapshot.
    List {
        /// List `<prefix>/backups/` instead of `backups/`.
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key for a namespace and print it once on stdout.
    Create {
        #[arg(long)]
        namespace: String,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a key by its id.
    Revoke { id: uuid::Uuid },
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        let settings = Settings::load(self.config.as_deref())?;
        telemetry::init(
            settings.log_format,
            "info,tower_http=warn,sqlx=warn,lapin=warn",
        );
        match self.command.unwrap_or(Command::Serve) {
            Command::Serve => {
                let registry =
                    register_all(JobDeps::default()).context("building the job registry")?;
                let application = Application::build(settings, registry).await?;
                application.run_until_stopped(shutdown::on_signal()).await
            }
            Command::Migrate => {
                let store = Store::connect_lazy(&settings.database)?;
                store.migrate().await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Command::Keys(KeysCommand::Create { namespace, label }) => {
                let namespace = Namespace::parse(&namespace)?;
                if settings.namespace(&namespace).is_none() {
                    anyhow::bail!("namespace {namespace} is not configured under [namespaces]");
                }
                let store = Store::connect_lazy(&settings.database)?;
                let key = store.create_api_key(&namespace, &label).await?;
                eprintln!(
                    "API key {} for namespace {} (shown once; store it now):",
                    key.id, key.namespace
                );
                println!("{}", key.key.expose_secret());
                Ok(())
            }
            Command::Backup { prefix } => back_up(&settings, prefix.as_deref()).await,
            Command::Restore {
                from,
                database_url,
                prefix,
            } => restore(&settings, &from, database_url, prefix.as_deref()).await,
            Command::Backups(BackupsCommand::List { prefix }) => {
                list_backups(&settings, prefix.as_deref()).await
            }
            Command::Keys(KeysCommand::Revoke { id }) => {
                let store = Store::connect_lazy(&settings.database)?;
                if store.revoke_api_key(id).await? {
                    eprintln!("revoked {id}");
                    Ok(())
                } else {
                    anyhow::bail!("no active key with id {id}")
                }
            }
        }
    }
}

/// A secret command-line value (clap needs a parser to build one).
fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value.to_owned()))
}

/// The backups folder: the fleet's, or a drill's under `prefix`.
fn backup_folder(prefix: Option<&str>) -> anyhow::Result<BackupFolder> {
    prefix.map_or_else(|| Ok(BackupFolder::fleet()), BackupFolder::under)
}

fn object_store(settings: &Settings) -> anyhow::Result<ObjectStore> {
    let storage = settings.storage.as_ref().context(
        "storage is not configured: set AWS_S3_BUCKET_NAME (storage.bucket) and its keys",
    )?;
    Ok(ObjectStore::new(storage))
}

async fn back_up(settings: &Settings, prefix: Option<&str>) -> anyhow::Result<()> {
    let folder = backup_folder(prefix)?;
    let objects = object_store(settings)?;
    let store = Store::connect_lazy(&settings.database)?;
    let mut line = ProgressLine::new("backup", None);
    let summary = backup::back_up(
        store.pool(),
        &objects,
        &folder,
        settings.backup.keep,
        &shutdown::on_signal(),
        |bytes| line.update(bytes),
    )
    .await;
    let summary = finish(&mut line, summary).context("backing up the database")?;
    eprintln!(
        "stored {} ({:.1} MiB; {:.1} MiB of rows: {}) in {:.1} s",
        summary.key.as_str(),
        mebibytes(summary.bytes),
        mebibytes(summary.raw_bytes),
        table_rows(&summary.tables),
        summary.duration.as_secs_f64()
    );
    for key in &summary.pruned {
        eprintln!(
            "deleted {} (keeping the last {})",
            key.as_str(),
            settings.backup.keep
        );
    }
    if let Some(error) = &summary.prune_error {
        eprintln!("warning: older backups were not deleted: {error}");
    }
    println!("{}", summary.key.as_str());
    store.close().await;
    Ok(())
}

async fn restore(
    settings: &Settings,
    from: &str,
    database_url: SecretString,
    prefix: Option<&str>,
) -> anyhow::Result<()> {
    let choice: BackupChoice = from.parse().context("--from")?;
    let folder = backup_folder(prefix)?;
    let objects = object_store(settings)?;
    if !["postgres://", "postgresql://"]
        .iter()
        .any(|scheme| database_url.expose_secret().starts_with(scheme))
    {
        anyhow::bail!("--database-url must be a postgres:// URL");
    }
    let target = Store::connect_lazy(&DatabaseSettings {
        url: database_url,
        max_connections: 2,
        acquire_timeout: settings.database.acquire_timeout,
        migrate_on_start: false,
        // A restore migrates its target first: a direct connection, whatever the fleet uses.
        pooler: Pooler::None,
    })
    .context("--database-url")?;
    let backup = folder.find(&objects, &choice).await?;
    eprintln!(
        "restoring {} (snapshot of {}, {:.1} MiB)",
        backup.key.as_str(),
        backup.taken_at.format("%Y-%m-%d %H:%M:%S UTC"),
        mebibytes(backup.size)
    );
    let mut line = ProgressLine::new("restore", Some(backup.size));
    let summary =
        backup::restore_backup(&objects, &backup.key, &target, |bytes| line.update(bytes)).await;
    let summary = finish(&mut line, summary)?;
    eprintln!(
        "restored {} rows ({}) at schema version {} in {:.1} s; {} unfinished jobs returned \
         to the outbox, to be published again",
        summary.tables.values().sum::<u64>(),
        table_rows(&summary.tables),
        summary.migration,
        summary.duration.as_secs_f64(),
        summary.requeued
    );
    target.close().await;
    Ok(())
}

async fn list_backups(settings: &Settings, prefix: Option<&str>) -> anyhow::Result<()> {
    let folder = backup_folder(prefix)?;
    let backups = folder.list(&object_store(settings)?).await?;
    if backups.is_empty() {
        eprintln!("no backups in {folder}");
    }
    for backup in backups {
        println!(
            "{}  {:>9.1} MiB  {}",
            backup.name,
            mebibytes(backup.size),
            backup.taken_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    Ok(())
}

/// Ends `line` with the final figures if the command succeeded.
fn finish<T>(line: &mut ProgressLine, outcome: anyhow::Result<T>) -> anyhow::Result<T> {
    match &outcome {
        Ok(_) => line.finish(),
        Err(_) => line.abandon(),
    }
    outcome
}

/// `jobs 12, job_errors 3, …`: row counts per table, for the summary lines.
fn table_rows(tables: &std::collections::BTreeMap<String, u64>) -> String {
    tables
        .iter()
        .map(|(table, rows)| format!("{table} {rows}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mebibytes(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
