//! `db.backup`: writes a consistent backup of the whole state database to
//! `backups/<timestamp>.dump.gz` and keeps the last `backup.keep` (the same code as
//! `engine-api backup`). It reads every namespace's rows, so only the namespace
//! `backup.namespace` names may submit it (the API asks [`Job::check_submitter`]), and a
//! job of any other namespace (a row written before the setting changed) fails at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use engine_shared::Namespace;
use engine_shared::backup::{self, BackupFolder};
use engine_shared::config::{BackupSettings, Settings};
use engine_shared::objects::ObjectStore;
use engine_shared::store::Store;
use serde::{Deserialize, Serialize};

use crate::{Job, JobContext, JobError};

/// How often a running backup writes a progress line to its log.
const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct DbBackup {
    /// The database backed up; `None` in processes without one (fails the job).
    store: Option<Store>,
    /// Where backups go; `None` while storage is not configured (fails the job).
    objects: Option<ObjectStore>,
    settings: BackupSettings,
    folder: BackupFolder,
}

impl DbBackup {
    /// Backs up into the fleet's `backups/`.
    pub fn new(
        store: Option<Store>,
        objects: Option<ObjectStore>,
        settings: BackupSettings,
    ) -> Self {
        Self::in_folder(store, objects, settings, BackupFolder::fleet())
    }

    /// Backs up into `folder` instead (drills and tests).
    pub fn in_folder(
        store: Option<Store>,
        objects: Option<ObjectStore>,
        settings: BackupSettings,
        folder: BackupFolder,
    ) -> Self {
        Self {
            store,
            objects,
            settings,
            folder,
        }
    }
}

/// No arguments: what is backed up and how many are kept are the fleet's settings, not the
/// submitter's choice.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DbBackupArgs {}

/// The result: where the backup went, how big it is, what it holds, what was pruned.
#[derive(Debug, Serialize)]
pub struct DbBackupOutput {
    /// The object key of the new backup.
    pub key: String,
    /// Its stored (compressed) size.
    pub bytes: u64,
    /// Rows per table.
    pub tables: BTreeMap<String, u64>,
    /// The keys of the older backups deleted to keep the last `backup.keep`.
    pub pruned: Vec<String>,
}

/// The one rule for who may back up every namespace's rows: the namespace
/// `backup.namespace` names, and no other (none while it is unset).
fn may_back_up(settings: &BackupSettings, namespace: &Namespace) -> bool {
    settings.namespace.as_ref() == Some(namespace)
}

impl Job for DbBackup {
    const KIND: &'static str = "db.backup";
    type Args = DbBackupArgs;
    type Output = DbBackupOutput;

    /// A failed upload or a dropped connection is worth another try; more rarely helps.
    fn max_attempts(&self) -> u32 {
        3
    }

    /// Generous, yet under RabbitMQ's default 30-minute consumer timeout (less the margin
    /// the worker keeps), so the default fits a broker left at its defaults.
    fn timeout(&self) -> Duration {
        Duration::from_secs(25 * 60)
    }

    fn check_submitter(&self, namespace: &Namespace, settings: &Settings) -> Result<(), String> {
        if may_back_up(&settings.backup, namespace) {
            return Ok(());
        }
        Err(format!(
            "{} may only be submitted by the namespace named in backup.namespace ({})",
            Self::KIND,
            settings
                .backup
                .namespace
                .as_ref()
                .map_or("none is set", |ns| ns.as_str())
        ))
    }

    async fn run(
        &self,
        context: JobContext,
        _args: DbBackupArgs,
    ) -> Result<DbBackupOutput, JobError> {
        if !may_back_up(&self.settings, &context.namespace) {
            let allowed = match &self.settings.namespace {
                Some(namespace) => format!("only namespace {namespace} may run it"),
                None => "no namespace may run it until backup.namespace is set".to_owned(),
            };
            return Err(JobError::fatal(format_args!(
                "db.backup copies every namespace's rows: {allowed}, not {}",
                context.namespace
            )));
        }
        let (Some(store), Some(objects)) = (&self.store, &self.objects) else {
            return Err(JobError::fatal(
                "db.backup needs the database and storage (AWS_S3_BUCKET_NAME) configured",
            ));
        };
        context.log.info(format!(
            "backing up the database to {} (keeping the last {})",
            self.folder, self.settings.keep
        ));
        let log = context.log.clone();
        let mut last_line = Instant::now();
        let progress = move |bytes: u64| {
            if last_line.elapsed() >= LOG_EVERY {
                last_line = Instant::now();
                log.info(format!("{:.1} MiB written", mebibytes(bytes)));
            }
        };
        let summary = backup::back_up(
            store.pool(),
            objects,
            &self.folder,
            self.settings.keep,
            &context.cancellation,
            progress,
        )
        .await
        .map_err(|error| {
            if context.cancellation.is_cancelled() {
                JobError::Cancelled
            } else {
                JobError::Retryable(error)
            }
        })?;
        context.log.info(format!(
            "stored {} ({:.1} MiB, {:.1} MiB of rows) in {:.1} s",
            summary.key.as_str(),
            mebibytes(summary.bytes),
            mebibytes(summary.raw_bytes),
            summary.duration.as_secs_f64()
        ));
        for key in &summary.pruned {
            context
                .log
                .info(format!("deleted the older {}", key.as_str()));
        }
        if let Some(error) = &summary.prune_error {
            context
                .log
                .warn(format!("could not delete older backups: {error}"));
        }
        Ok(DbBackupOutput {
            key: summary.key.as_str().to_owned(),
            bytes: summary.bytes,
            tables: summary.tables,
            pruned: summary
                .pruned
                .iter()
                .map(|key| key.as_str().to_owned())
                .collect(),
        })
    }
}

fn mebibytes(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use engine_shared::Kind;

    use super::*;
    use crate::testing::run_in;
    use crate::{JobDeps, register_all};

    fn settings(namespace: Option<&str>) -> BackupSettings {
        BackupSettings {
            keep: 7,
            namespace: namespace.map(|n| Namespace::parse(n).unwrap()),
        }
    }

    fn namespace(name: &str) -> Namespace {
        Namespace::parse(name).unwrap()
    }

    async fn refusal(job: DbBackup, name: &str) -> String {
        let context = JobContext::for_test(namespace(name));
        match run_in(&job, context, DbBackupArgs {}).await {
            Err(JobError::Fatal(error)) => error.to_string(),
            other => panic!("expected a fatal error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn only_the_backup_namespace_may_run_it() {
        let job = DbBackup::new(None, None, settings(Some("ops")));
        let message = refusal(job, "acme").await;
        assert!(
            message.contains("only namespace ops may run it, not acme"),
            "{message}"
        );
        let job = DbBackup::new(None, None, settings(None));
        let message = refusal(job, "ops").await;
        assert!(
            message.contains("until backup.namespace is set"),
            "{message}"
        );
    }

    #[test]
    fn only_the_backup_namespace_may_submit_it() {
        // Arrange: the API's registry, built without clients, asked with the settings.
        engine_shared::tls::install_crypto_provider();
        let registry = register_all(JobDeps::default()).unwrap();
        let kind = Kind::parse(DbBackup::KIND).unwrap();
        let fleet = |backup: Option<&str>| {
            let mut text = "[database]\nurl = \"postgres://localhost/x\"\n\
                            [amqp]\nurl = \"amqp://localhost\"\n"
                .to_owned();
            if let Some(name) = backup {
                text.push_str(&format!("[backup]\nnamespace = \"{name}\"\n"));
            }
            Settings::from_toml(&text).unwrap()
        };

        // Act
        let from_ops = registry.check_submitter(&kind, &namespace("ops"), &fleet(Some("ops")));
        let from_acme = registry.check_submitter(&kind, &namespace("acme"), &fleet(Some("ops")));
        let unset = registry.check_submitter(&kind, &namespace("ops"), &fleet(None));
        let noop = Kind::parse("noop").unwrap();
        let other_kind = registry.check_submitter(&noop, &namespace("acme"), &fleet(Some("ops")));

        // Assert
        assert_eq!(from_ops, Ok(()));
        assert_eq!(
            from_acme.unwrap_err(),
            "db.backup may only be submitted by the namespace named in backup.namespace (ops)"
        );
        assert!(unset.unwrap_err().ends_with("(none is set)"));
        assert_eq!(other_kind, Ok(()), "other kinds have no submit rule");
    }

    #[tokio::test]
    async fn it_needs_storage_and_the_database() {
        let job = DbBackup::new(None, None, settings(Some("ops")));
        let message = refusal(job, "ops").await;
        assert!(message.contains("AWS_S3_BUCKET_NAME"), "{message}");
    }

    #[test]
    fn args_are_an_empty_object() {
        assert!(serde_json::from_value::<DbBackupArgs>(serde_json::json!({})).is_ok());
        let error =
            serde_json::from_value::<DbBackupArgs>(serde_json::json!({ "keep": 1 })).unwrap_err();
        assert!(error.to_string().contains("unknown field"), "{error}");
    }

    #[test]
    fn the_output_is_the_json_the_fleet_stored_before_it_was_typed() {
        let output = DbBackupOutput {
            key: "backups/a.dump.gz".to_owned(),
            bytes: 10,
            tables: BTreeMap::from([("jobs".to_owned(), 2)]),
            pruned: vec!["backups/0.dump.gz".to_owned()],
        };
        assert_eq!(
            serde_json::to_value(output).unwrap(),
            serde_json::json!({
                "key": "backups/a.dump.gz",
                "bytes": 10,
                "tables": { "jobs": 2 },
                "pruned": ["backups/0.dump.gz"],
            })
        );
    }
}
