//! The registry: every kind the fleet knows, registered in one place, looked up by name.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use engine_shared::config::BackupSettings;
use engine_shared::kind::InvalidKind;
use engine_shared::limits::Limit;
use engine_shared::objects::ObjectStore;
use engine_shared::retry::Backoff;
use engine_shared::store::Store;
use engine_shared::{Kind, Namespace, QueueName};
use futures_util::future::BoxFuture;
use secrecy::SecretString;

use crate::egress::EgressClient;
use crate::job::{Job, JobContext, JobError};
use crate::kinds::db_backup::DbBackup;
use crate::kinds::{
    export_jobs_csv::ExportJobsCsv, noop::Noop, sleep::Sleep, webhook_deliver::WebhookDeliver,
};

/// Why the registry could not be built; start-up stops on it.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("job kind {0:?} is registered twice")]
    Duplicate(String),
    #[error(transparent)]
    Malformed(#[from] InvalidKind),
}

/// Args that do not fit a kind: where, and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("args.{path}: {message}")]
pub struct ArgsError {
    /// Dotted path to the offending field (`.` for the args object itself).
    pub path: String,
    pub message: String,
}

/// A kind's defaults, applied where a submission leaves a field out.
#[derive(Clone, Debug)]
pub struct KindDefaults {
    pub queue: QueueName,
    pub max_attempts: u32,
    pub timeout: Duration,
    /// `None`: the fleet's retry settings.
    pub backoff: Option<Backoff>,
}

/// What built-in handlers need from outside.
#[derive(Clone, Debug, Default)]
pub struct JobDeps {
    /// The egress client every outbound request of a job goes through (one pool).
    pub egress: EgressClient,
    /// Per-namespace webhook signing secrets.
    pub webhook_secrets: BTreeMap<Namespace, SecretString>,
    /// The state database, for kinds that read it (`export.jobs_csv`, `db.backup`); `None`
    /// in processes that have none (unit tests).
    pub store: Option<Store>,
    /// Object storage, for kinds that write to it beyond artifacts (`db.backup`).
    pub objects: Option<ObjectStore>,
    /// How many backups `db.backup` keeps, and which namespace may run it.
    pub backup: BackupSettings,
}

trait ErasedJob: Send + Sync {
    fn defaults(&self) -> KindDefaults;
    fn limit(&self) -> Option<Limit>;
    fn limit_key(&self, args: &serde_json::Value) -> Option<String>;
    fn check_args(&self, args: &serde_json::Value) -> Result<(), ArgsError>;
    fn run(
        &self,
        context: JobContext,
        args: serde_json::Value,
    ) -> BoxFuture<'static, Result<serde_json::Value, JobError>>;
}

struct Erased<J>(Arc<J>);

fn parse_args<J: Job>(args: serde_json::Value) -> Result<J::Args, ArgsError> {
    serde_path_to_error::deserialize(args).map_err(|error| ArgsError {
        path: error.path().to_string(),
        message: error.inner().to_string(),
    })
}

impl<J: Job> ErasedJob for Erased<J> {
    fn defaults(&self) -> KindDefaults {
        KindDefaults {
            queue: self.0.queue(),
            max_attempts: self.0.max_attempts(),
            timeout: self.0.timeout(),
            backoff: self.0.backoff(),
        }
    }

    fn check_args(&self, args: &serde_json::Value) -> Result<(), ArgsError> {
        parse_args::<J>(args.clone()).map(drop)
    }

    fn limit(&self) -> Option<Limit> {
        self.0.limit()
    }

    fn limit_key(&self, args: &serde_json::Value) -> Option<String> {
        self.0.limit_key(&parse_args::<J>(args.clone()).ok()?)
    }

    fn run(
        &self,
        context: JobContext,
        args: serde_json::Value,
    ) -> BoxFuture<'static, Result<serde_json::Value, JobError>> {
        let job = self.0.clone();
        Box::pin(async move {
            let args = parse_args::<J>(args).map_err(|e| {
                JobError::Fatal(anyhow::anyhow!("args no longer fit the kind: {e}"))
            })?;
            job.run(context, args).await
        })
    }
}

/// Every registered kind. Built once at start-up, then shared read-only.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: HashMap<Kind, Arc<dyn ErasedJob>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.kinds.keys()).finish()
    }
}

impl Registry {
    /// Adds `job` under `J::KIND`; a second kind with the same name is an error.
    pub fn register<J: Job>(&mut self, job: J) -> Result<&mut Self, RegistryError> {
        let kind = Kind::parse(J::KIND)?;
        if self.kinds.contains_key(&kind) {
            return Err(RegistryError::Duplicate(J::KIND.to_owned()));
        }
        self.kinds.insert(kind, Arc::new(Erased(Arc::new(job))));
        Ok(self)
    }

    pub fn contains(&self, kind: &Kind) -> bool {
        self.kinds.contains_key(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &Kind> {
        self.kinds.keys()
    }

    pub fn defaults(&self, kind: &Kind) -> Option<KindDefaults> {
        self.kinds.get(kind).map(|job| job.defaults())
    }

    /// Checks `args` against `kind`'s `Args` type. `None` if the kind is unknown.
    pub fn check_args(
        &self,
        kind: &Kind,
        args: &serde_json::Value,
    ) -> Option<Result<(), ArgsError>> {
        self.kinds.get(kind).map(|job| job.check_args(args))
    }

    /// The limit `kind` declares in code, if any.
    pub fn limit(&self, kind: &Kind) -> Option<Limit> {
        self.kinds.get(kind).and_then(|job| job.limit())
    }

    /// The key `kind` keeps per-key limits by, for these args.
    pub fn limit_key(&self, kind: &Kind, args: &serde_json::Value) -> Option<String> {
        self.kinds.get(kind).and_then(|job| job.limit_key(args))
    }

    /// The handler future for one attempt. `None` if the kind is unknown.
    pub fn run(
        &self,
        kind: &Kind,
        context: JobContext,
        args: serde_json::Value,
    ) -> Option<BoxFuture<'static, Result<serde_json::Value, JobError>>> {
        self.kinds.get(kind).map(|job| job.run(context, args))
    }
}

/// The one place built-in kinds are registered.
pub fn register_all(deps: JobDeps) -> Result<Registry, RegistryError> {
    let mut registry = Registry::default();
    registry
        .register(Noop)?
        .register(Sleep)?
        .register(WebhookDeliver::new(deps.egress, deps.webhook_secrets))?
        .register(ExportJobsCsv::new(deps.store.clone()))?
        .register(DbBackup::new(deps.store, deps.objects, deps.backup))?;
    Ok(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_kinds_are_refused() {
        let mut registry = Registry::default();
        registry.register(Noop).unwrap();
        let error = registry.register(Noop).unwrap_err();
        assert!(matches!(error, RegistryError::Duplicate(kind) if kind == "noop"));
    }

    #[test]
    fn args_errors_name_the_field() {
        engine_shared::tls::install_crypto_provider();
        let registry = register_all(JobDeps::default()).unwrap();
        let kind = Kind::parse("sleep").unwrap();
        let error = registry
            .check_args(&kind, &serde_json::json!({ "ms": "soon" }))
            .unwrap()
            .unwrap_err();
        assert_eq!(error.path, "ms");
        let webhook = Kind::parse("webhook.deliver").unwrap();
        let error = registry
            .check_args(&webhook, &serde_json::json!({ "body": {} }))
            .unwrap()
            .unwrap_err();
        assert!(error.message.contains("url"), "{error}");
    }
}
