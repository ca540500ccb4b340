//! The registry: every kind the fleet knows, registered in one place, looked up by name
//! or by an old name (an alias).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use engine_shared::config::Settings;
use engine_shared::kind::InvalidKind;
use engine_shared::limits::Limit;
use engine_shared::retry::Backoff;
use engine_shared::{Kind, Namespace, QueueName};
use futures_util::future::BoxFuture;

use crate::context::JobContext;
use crate::deps::JobDeps;
use crate::error::JobError;
use crate::job::Job;
use crate::kinds::{
    db_backup::DbBackup, export_jobs_csv::ExportJobsCsv, noop::Noop, sleep::Sleep,
    webhook_deliver::WebhookDeliver,
};

/// Why the registry could not be built; start-up stops on it.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A kind's name or alias is already another kind's name or alias.
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

/// A [`Job`] with its args and output as JSON, so kinds of different types share one map.
trait ErasedJob: Send + Sync {
    fn defaults(&self) -> KindDefaults;
    fn limit(&self) -> Option<Limit>;
    fn limit_key(&self, args: &serde_json::Value) -> Option<String>;
    fn check_args(&self, args: &serde_json::Value) -> Result<(), ArgsError>;
    fn check_submitter(&self, namespace: &Namespace, settings: &Settings) -> Result<(), String>;
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

/// One attempt the way the worker runs it: the stored args parsed into `J::Args`, the
/// handler run, its output encoded as the JSON result stored on the job. [`crate::testing`]
/// runs kinds through this same path.
pub(crate) async fn run_from_json<J: Job>(
    job: &J,
    context: JobContext,
    args: serde_json::Value,
) -> Result<serde_json::Value, JobError> {
    let args = parse_args::<J>(args)
        .map_err(|e| JobError::fatal(format_args!("args no longer fit the kind: {e}")))?;
    let output = job.run(context, args).await?;
    // A retry would encode the same value the same way: fatal.
    serde_json::to_value(output)
        .map_err(|e| JobError::fatal(format_args!("the result is not valid JSON: {e}")))
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

    fn check_submitter(&self, namespace: &Namespace, settings: &Settings) -> Result<(), String> {
        self.0.check_submitter(namespace, settings)
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
        Box::pin(async move { run_from_json(&*job, context, args).await })
    }
}

/// Every registered kind. Built once at start-up, then shared read-only. Every lookup
/// takes a kind's name or one of its aliases.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: HashMap<Kind, Arc<dyn ErasedJob>>,
    /// Old name → current name ([`Job::ALIASES`]), for rows and messages from before a
    /// rename.
    aliases: HashMap<Kind, Kind>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.kinds.keys())
            .field("aliases", &self.aliases)
            .finish()
    }
}

impl Registry {
    /// Adds `job` under `J::KIND` and its aliases; a name another kind already holds (as
    /// its name or an alias) is an error.
    pub fn register<J: Job>(&mut self, job: J) -> Result<&mut Self, RegistryError> {
        // The kind's own name first, then its aliases: each must be new to the registry
        // and to this kind (an alias repeating the name or another alias is a typo).
        let names = std::iter::once(J::KIND)
            .chain(J::ALIASES.iter().copied())
            .map(Kind::parse)
            .collect::<Result<Vec<_>, _>>()?;
        for (index, name) in names.iter().enumerate() {
            if self.resolve(name).is_some() || names[..index].contains(name) {
                return Err(RegistryError::Duplicate(name.as_str().to_owned()));
            }
        }
        let mut names = names.into_iter();
        let kind = names.next().expect("the kind's own name comes first");
        for alias in names {
            self.aliases.insert(alias, kind.clone());
        }
        self.kinds.insert(kind, Arc::new(Erased(Arc::new(job))));
        Ok(self)
    }

    /// The current name of `kind`: itself if registered under that name, the kind it
    /// names if it is an alias, `None` if unknown. Compare kinds by what this returns.
    pub fn resolve(&self, kind: &Kind) -> Option<&Kind> {
        match self.kinds.get_key_value(kind) {
            Some((name, _)) => Some(name),
            None => self.aliases.get(kind),
        }
    }

    fn job(&self, kind: &Kind) -> Option<&Arc<dyn ErasedJob>> {
        self.kinds.get(self.resolve(kind)?)
    }

    /// Whether `kind` names a registered kind (by its name or an alias).
    pub fn contains(&self, kind: &Kind) -> bool {
        self.resolve(kind).is_some()
    }

    /// The registered kinds' current names (aliases not included).
    pub fn kinds(&self) -> impl Iterator<Item = &Kind> {
        self.kinds.keys()
    }

    pub fn defaults(&self, kind: &Kind) -> Option<KindDefaults> {
        self.job(kind).map(|job| job.defaults())
    }

    /// Checks `args` against `kind`'s `Args` type. `None` if the kind is unknown.
    pub fn check_args(
        &self,
        kind: &Kind,
        args: &serde_json::Value,
    ) -> Option<Result<(), ArgsError>> {
        self.job(kind).map(|job| job.check_args(args))
    }

    /// Whether `namespace` may submit `kind` ([`Job::check_submitter`]); `Err` says why
    /// not. An unknown kind refuses nobody here: it is refused as unknown.
    pub fn check_submitter(
        &self,
        kind: &Kind,
        namespace: &Namespace,
        settings: &Settings,
    ) -> Result<(), String> {
        self.job(kind)
            .map_or(Ok(()), |job| job.check_submitter(namespace, settings))
    }

    /// The limit `kind` declares in code, if any.
    pub fn limit(&self, kind: &Kind) -> Option<Limit> {
        self.job(kind).and_then(|job| job.limit())
    }

    /// The key `kind` keeps per-key limits by, for these args.
    pub fn limit_key(&self, kind: &Kind, args: &serde_json::Value) -> Option<String> {
        self.job(kind).and_then(|job| job.limit_key(args))
    }

    /// The handler future for one attempt. `None` if the kind is unknown.
    pub fn run(
        &self,
        kind: &Kind,
        context: JobContext,
        args: serde_json::Value,
    ) -> Option<BoxFuture<'static, Result<serde_json::Value, JobError>>> {
        self.job(kind).map(|job| job.run(context, args))
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
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::*;
    use crate::kinds::sleep::SleepArgs;
    use crate::testing::{run_once, test_namespace};

    /// A kind renamed from `old.greet` (and before that `older.greet`) to `greet`.
    struct Greet;

    #[derive(Deserialize, Serialize)]
    struct GreetArgs {
        name: String,
    }

    impl Job for Greet {
        const KIND: &'static str = "greet";
        const ALIASES: &'static [&'static str] = &["old.greet", "older.greet"];
        type Args = GreetArgs;
        type Output = String;

        async fn run(&self, _context: JobContext, args: GreetArgs) -> Result<String, JobError> {
            Ok(format!("hello {}", args.name))
        }
    }

    fn kind(name: &str) -> Kind {
        Kind::parse(name).unwrap()
    }

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
        let error = registry
            .check_args(&kind("sleep"), &json!({ "ms": "soon" }))
            .unwrap()
            .unwrap_err();
        assert_eq!(error.path, "ms");
        let error = registry
            .check_args(&kind("webhook.deliver"), &json!({ "body": {} }))
            .unwrap()
            .unwrap_err();
        assert!(error.message.contains("url"), "{error}");
    }

    #[tokio::test]
    async fn a_row_under_an_old_name_runs_the_renamed_kind() {
        // Arrange
        let mut registry = Registry::default();
        registry.register(Greet).unwrap();
        let old = kind("old.greet");

        // Act: what the worker does with a message and row still named `old.greet`.
        let known = registry.contains(&old);
        let checked = registry.check_args(&old, &json!({ "name": "ada" }));
        let result = registry
            .run(
                &old,
                JobContext::for_test(test_namespace()),
                json!({ "name": "ada" }),
            )
            .expect("the alias finds the handler")
            .await
            .unwrap();

        // Assert
        assert!(known, "an old-name message is not poison");
        assert_eq!(checked, Some(Ok(())));
        assert_eq!(result, json!("hello ada"));
        assert_eq!(registry.resolve(&old), Some(&kind("greet")));
        assert_eq!(registry.resolve(&kind("older.greet")), Some(&kind("greet")));
        assert_eq!(registry.resolve(&kind("greet")), Some(&kind("greet")));
        assert_eq!(registry.resolve(&kind("hello")), None);
        assert_eq!(
            registry.kinds().collect::<Vec<_>>(),
            [&kind("greet")],
            "aliases are not listed as kinds"
        );
    }

    #[test]
    fn an_alias_may_not_take_a_name_already_used() {
        struct Clash;
        impl Job for Clash {
            const KIND: &'static str = "clash";
            const ALIASES: &'static [&'static str] = &["noop"];
            type Args = GreetArgs;
            type Output = ();
            async fn run(&self, _context: JobContext, _args: GreetArgs) -> Result<(), JobError> {
                Ok(())
            }
        }
        let mut registry = Registry::default();
        registry.register(Noop).unwrap();
        let error = registry.register(Clash).unwrap_err();
        assert!(
            matches!(&error, RegistryError::Duplicate(name) if name == "noop"),
            "{error}"
        );
        assert!(
            !registry.contains(&kind("clash")),
            "a refused kind leaves no trace"
        );

        // And a kind whose name is an alias already taken.
        let mut registry = Registry::default();
        registry.register(Greet).unwrap();
        struct OldGreet;
        impl Job for OldGreet {
            const KIND: &'static str = "old.greet";
            type Args = GreetArgs;
            type Output = ();
            async fn run(&self, _context: JobContext, _args: GreetArgs) -> Result<(), JobError> {
                Ok(())
            }
        }
        let error = registry.register(OldGreet).unwrap_err();
        assert!(matches!(&error, RegistryError::Duplicate(name) if name == "old.greet"));
    }

    #[tokio::test]
    async fn bad_args_fail_the_attempt_fatally_naming_the_field() {
        let error = run_once(&Sleep, json!({ "ms": "soon" })).await.unwrap_err();
        match error {
            JobError::Fatal(error) => assert!(
                error
                    .to_string()
                    .starts_with("args no longer fit the kind: args.ms: invalid type"),
                "{error}"
            ),
            other => panic!("expected a fatal error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn typed_outputs_store_the_json_they_serialize_to() {
        assert_eq!(
            run_once(&Noop, json!({})).await.unwrap(),
            serde_json::Value::Null,
            "a unit output stores null, as noop always has"
        );
        assert_eq!(
            run_once(&Sleep, SleepArgs { ms: 0 }).await.unwrap(),
            json!({ "slept_ms": 0 })
        );
    }

    #[tokio::test]
    async fn an_output_that_is_not_json_fails_fatally() {
        struct BadOutput;
        impl Job for BadOutput {
            const KIND: &'static str = "bad.output";
            type Args = crate::kinds::noop::NoopArgs;
            /// JSON object keys must be strings.
            type Output = std::collections::BTreeMap<(u8, u8), u8>;
            async fn run(
                &self,
                _context: JobContext,
                _args: Self::Args,
            ) -> Result<Self::Output, JobError> {
                Ok([((1, 2), 3)].into())
            }
        }
        let error = run_once(&BadOutput, json!({})).await.unwrap_err();
        assert!(
            matches!(&error, JobError::Fatal(e) if e.to_string().starts_with("the result is not valid JSON")),
            "{error:?}"
        );
    }
}
