//! Layered settings: built-in defaults → optional TOML file → environment variables.
//!
//! Environment: `ENGINE__SECTION__KEY` (e.g. `ENGINE__WORKER__CONCURRENCY=64`), plus the
//! seed's unprefixed names `DATABASE_URL`, `AMQP_URL` and `REDIS_URL`. URLs carry
//! passwords, so they are held as [`SecretString`] and errors name the setting, never its value.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::kind::Kind;
use crate::limits::{LimitRule, RedisSettings};
use crate::namespace::{Namespace, NamespaceSpec};
use crate::queue::{WeightedQueue, standard_queues};
use crate::retry::RetryPolicy;
use crate::telemetry::LogFormat;

/// A configuration problem found at start-up. Messages name the setting, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(String),
    #[error("setting {setting} is required but not set")]
    Missing { setting: &'static str },
    #[error("setting {setting} is invalid: {reason}")]
    Invalid { setting: String, reason: String },
}

#[derive(Debug, Deserialize)]
struct RawSettings {
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    amqp: RawAmqp,
    #[serde(default = "default_app_prefix")]
    app_prefix: String,
    #[serde(default)]
    log_format: LogFormat,
    #[serde(default)]
    api: ApiSettings,
    #[serde(default)]
    worker: RawWorker,
    #[serde(default)]
    relay: RelaySettings,
    #[serde(default)]
    retry: RetryPolicy,
    #[serde(default)]
    redis: RawRedis,
    #[serde(default)]
    limits: Vec<LimitRule>,
    #[serde(default = "standard_queues")]
    queues: Vec<WeightedQueue>,
    #[serde(default)]
    namespaces: BTreeMap<String, RawNamespace>,
}

#[derive(Debug, Deserialize)]
struct RawDatabase {
    url: Option<SecretString>,
    #[serde(default = "default_max_connections")]
    max_connections: u32,
    #[serde(default = "default_acquire_timeout_ms")]
    acquire_timeout_ms: u64,
    #[serde(default)]
    migrate_on_start: bool,
}

#[derive(Debug, Deserialize)]
struct RawAmqp {
    url: Option<SecretString>,
    #[serde(default = "default_consumer_timeout_secs")]
    consumer_timeout_secs: u64,
}

impl Default for RawAmqp {
    fn default() -> Self {
        Self {
            url: None,
            consumer_timeout_secs: default_consumer_timeout_secs(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawRedis {
    #[serde(default = "default_redis_url")]
    url: SecretString,
    #[serde(default = "default_redis_timeout_ms")]
    timeout_ms: u64,
}

impl Default for RawRedis {
    fn default() -> Self {
        Self {
            url: default_redis_url(),
            timeout_ms: default_redis_timeout_ms(),
        }
    }
}

fn default_redis_url() -> SecretString {
    SecretString::from("redis://127.0.0.1:6379")
}
fn default_redis_timeout_ms() -> u64 {
    500
}

#[derive(Debug, Deserialize)]
struct RawWorker {
    #[serde(default = "default_concurrency")]
    concurrency: u16,
    #[serde(default = "default_grace_secs")]
    grace_period_secs: u64,
    #[serde(default)]
    namespaces: Vec<String>,
    id: Option<String>,
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: default_max_connections(),
            acquire_timeout_ms: default_acquire_timeout_ms(),
            migrate_on_start: false,
        }
    }
}

impl Default for RawWorker {
    fn default() -> Self {
        Self {
            concurrency: default_concurrency(),
            grace_period_secs: default_grace_secs(),
            namespaces: Vec::new(),
            id: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawNamespace {
    vhost: Option<String>,
    webhook_signing_secret: Option<SecretString>,
}

/// HTTP API settings.
#[derive(Clone, Debug, Deserialize)]
pub struct ApiSettings {
    /// Address to listen on; port 0 picks a free port (tests).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest request body accepted; larger ones get 413.
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: usize,
    /// Most jobs one batch request may carry.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long a verified API key is trusted without asking PostgreSQL again.
    #[serde(default = "default_key_cache_secs")]
    pub key_cache_secs: u64,
    /// Jobs one API key may submit per second (0: unlimited); over it, 429.
    #[serde(default)]
    pub submit_rate_per_sec: u32,
    /// Jobs one API key may submit back to back before the rate applies.
    #[serde(default = "default_submit_burst")]
    pub submit_burst: u32,
}

fn default_submit_burst() -> u32 {
    1_000
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            body_limit_bytes: default_body_limit(),
            max_batch: default_max_batch(),
            key_cache_secs: default_key_cache_secs(),
            submit_rate_per_sec: 0,
            submit_burst: default_submit_burst(),
        }
    }
}

/// Outbox relay settings (the sweeper that publishes what the fast path left behind).
#[derive(Clone, Debug, Deserialize)]
pub struct RelaySettings {
    /// How often the sweeper looks for unpublished or due jobs.
    #[serde(default = "default_sweep_ms")]
    pub sweep_interval_ms: u64,
    /// A queued job younger than this belongs to the fast path; the sweeper leaves it alone.
    #[serde(default = "default_publish_grace_ms")]
    pub publish_grace_ms: u64,
    /// Most rows one claim takes; a sweep keeps claiming while claims come back full.
    #[serde(default = "default_sweep_batch")]
    pub batch_size: i64,
    /// How long a submission waits for room in the fast path before leaving its jobs to
    /// the sweeper. Back-pressure: a client submitting faster than the relay publishes is
    /// slowed down rather than having its jobs wait `publish_grace_ms` for the sweeper.
    #[serde(default = "default_fast_path_wait_ms")]
    pub fast_path_wait_ms: u64,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            sweep_interval_ms: default_sweep_ms(),
            publish_grace_ms: default_publish_grace_ms(),
            batch_size: default_sweep_batch(),
            fast_path_wait_ms: default_fast_path_wait_ms(),
        }
    }
}

impl RelaySettings {
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms)
    }
    pub fn publish_grace(&self) -> Duration {
        Duration::from_millis(self.publish_grace_ms)
    }
    pub fn fast_path_wait(&self) -> Duration {
        Duration::from_millis(self.fast_path_wait_ms)
    }
}

/// PostgreSQL settings.
#[derive(Clone, Debug)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub migrate_on_start: bool,
}

/// Worker settings.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Jobs run at once by this process; also each consumer's prefetch.
    pub concurrency: u16,
    /// After SIGTERM, how long in-flight jobs may take before they are returned to the queue.
    pub grace_period: Duration,
    /// Namespaces this worker serves; all configured ones when empty.
    pub namespaces: Vec<Namespace>,
    /// Recorded on attempts so a person can tell which pod ran what.
    pub id: String,
}

/// Every setting of the fleet, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub database: DatabaseSettings,
    /// Broker URL; its vhost part is replaced by each namespace's vhost.
    pub amqp_url: SecretString,
    /// The broker's `consumer_timeout`: RabbitMQ closes the channel of a delivery left
    /// unacked longer than this, so no attempt may be allowed to run that long.
    pub consumer_timeout: Duration,
    pub app_prefix: String,
    pub log_format: LogFormat,
    pub api: ApiSettings,
    pub worker: WorkerSettings,
    pub relay: RelaySettings,
    pub retry: RetryPolicy,
    /// Where rate and concurrency limits are kept.
    pub redis: RedisSettings,
    /// `[[limits]]`: per kind, optionally per namespace; they beat what kinds declare.
    pub limits: Vec<LimitRule>,
    pub queues: Vec<WeightedQueue>,
    pub namespaces: Vec<NamespaceSpec>,
}

impl Settings {
    /// Loads defaults, then `file` if given, then the environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(config::File::from(path));
        }
        let raw: RawSettings = builder
            .add_source(
                config::Environment::with_prefix("ENGINE")
                    .prefix_separator("__")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("worker.namespaces")
                    .try_parsing(true),
            )
            .set_override_option("database.url", std::env::var("DATABASE_URL").ok())
            .and_then(|b| b.set_override_option("amqp.url", std::env::var("AMQP_URL").ok()))
            .and_then(|b| b.set_override_option("redis.url", std::env::var("REDIS_URL").ok()))
            .map_err(|e| ConfigError::Load(e.to_string()))?
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        Self::validate(raw)
    }

    /// Settings from TOML text alone, ignoring the environment (tests and tools that must
    /// not be steered by a developer's `DATABASE_URL`).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawSettings = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        Self::validate(raw)
    }

    fn validate(raw: RawSettings) -> Result<Self, ConfigError> {
        let database_url = raw.database.url.ok_or(ConfigError::Missing {
            setting: "DATABASE_URL (database.url)",
        })?;
        check_url(
            &database_url,
            "DATABASE_URL (database.url)",
            &["postgres", "postgresql"],
        )?;
        let amqp_url = raw.amqp.url.ok_or(ConfigError::Missing {
            setting: "AMQP_URL (amqp.url)",
        })?;
        check_url(&amqp_url, "AMQP_URL (amqp.url)", &["amqp", "amqps"])?;

        let invalid = |setting: &str, reason: String| ConfigError::Invalid {
            setting: setting.to_owned(),
            reason,
        };
        if raw.worker.concurrency == 0 {
            return Err(invalid("worker.concurrency", "must be at least 1".into()));
        }
        if raw.amqp.consumer_timeout_secs < 60 {
            return Err(invalid(
                "amqp.consumer_timeout_secs",
                "must be at least 60 (RabbitMQ's default is 1800)".into(),
            ));
        }
        if raw.api.max_batch == 0 {
            return Err(invalid("api.max_batch", "must be at least 1".into()));
        }
        if raw.queues.is_empty() {
            return Err(invalid("queues", "at least one queue is needed".into()));
        }
        if !raw.queues.iter().any(|q| q.name.as_str() == "default") {
            return Err(invalid(
                "queues",
                "a queue named \"default\" is required".into(),
            ));
        }
        if raw.queues.iter().any(|q| q.weight == 0) {
            return Err(invalid("queues", "every weight must be at least 1".into()));
        }
        raw.retry
            .validate()
            .map_err(|reason| invalid("retry", reason))?;

        let mut namespaces = Vec::with_capacity(raw.namespaces.len());
        for (name, ns) in raw.namespaces {
            let setting = format!("namespaces.{name}");
            let name = Namespace::parse(&name).map_err(|e| invalid(&setting, e.to_string()))?;
            let vhost = ns.vhost.unwrap_or_else(|| name.as_str().to_owned());
            if vhost.is_empty() || vhost.len() > 200 {
                return Err(invalid(
                    &format!("{setting}.vhost"),
                    "1 to 200 characters".into(),
                ));
            }
            namespaces.push(NamespaceSpec {
                redis_prefix: format!("{}{}:", raw.app_prefix, name),
                s3_prefix: format!("{name}/"),
                name,
                vhost,
                webhook_signing_secret: ns.webhook_signing_secret,
            });
        }
        check_url(
            &raw.redis.url,
            "REDIS_URL (redis.url)",
            &["redis", "rediss"],
        )?;
        for (index, rule) in raw.limits.iter().enumerate() {
            let setting = format!("limits[{index}]");
            Kind::parse(&rule.kind)
                .map_err(|e| invalid(&format!("{setting}.kind"), e.to_string()))?;
            rule.limit().map_err(|reason| invalid(&setting, reason))?;
            if let Some(name) = &rule.namespace
                && !namespaces.iter().any(|spec| spec.name.as_str() == name)
            {
                return Err(invalid(
                    &format!("{setting}.namespace"),
                    format!("namespace {name} is not configured under [namespaces]"),
                ));
            }
        }
        // A batch is charged one unit per job, all at once: a burst smaller than the largest
        // batch would refuse such batches forever.
        if raw.api.submit_rate_per_sec > 0 && raw.api.submit_burst < raw.api.max_batch as u32 {
            return Err(invalid(
                "api.submit_burst",
                format!(
                    "must be at least api.max_batch ({}) when api.submit_rate_per_sec is set",
                    raw.api.max_batch
                ),
            ));
        }

        let mut worker_namespaces = Vec::new();
        for name in raw.worker.namespaces.iter().filter(|n| !n.is_empty()) {
            let ns =
                Namespace::parse(name).map_err(|e| invalid("worker.namespaces", e.to_string()))?;
            if !namespaces.iter().any(|spec| spec.name == ns) {
                return Err(invalid(
                    "worker.namespaces",
                    format!("namespace {ns} is not configured under [namespaces]"),
                ));
            }
            worker_namespaces.push(ns);
        }

        Ok(Self {
            database: DatabaseSettings {
                url: database_url,
                max_connections: raw.database.max_connections.max(2),
                acquire_timeout: Duration::from_millis(raw.database.acquire_timeout_ms),
                migrate_on_start: raw.database.migrate_on_start,
            },
            amqp_url,
            consumer_timeout: Duration::from_secs(raw.amqp.consumer_timeout_secs),
            app_prefix: raw.app_prefix,
            log_format: raw.log_format,
            api: raw.api,
            worker: WorkerSettings {
                concurrency: raw.worker.concurrency,
                grace_period: Duration::from_secs(raw.worker.grace_period_secs),
                namespaces: worker_namespaces,
                id: raw.worker.id.unwrap_or_else(default_worker_id),
            },
            relay: raw.relay,
            retry: raw.retry,
            redis: RedisSettings {
                url: raw.redis.url,
                timeout: Duration::from_millis(raw.redis.timeout_ms.max(1)),
            },
            limits: raw.limits,
            queues: raw.queues,
            namespaces,
        })
    }

    /// The longest an attempt may be allowed to run: the broker's consumer timeout less a
    /// margin for the final state's commit and the ack.
    pub fn max_attempt_timeout(&self) -> Duration {
        self.consumer_timeout
            .saturating_sub(Duration::from_secs(30))
    }

    /// The namespace named `name`, if configured.
    pub fn namespace(&self, name: &Namespace) -> Option<&NamespaceSpec> {
        self.namespaces.iter().find(|spec| &spec.name == name)
    }

    /// Adds (or replaces) a namespace; tests and tools build settings in code with this.
    pub fn add_namespace(&mut self, name: Namespace, vhost: &str) {
        self.namespaces.retain(|spec| spec.name != name);
        self.namespaces.push(NamespaceSpec {
            redis_prefix: format!("{}{}:", self.app_prefix, name),
            s3_prefix: format!("{name}/"),
            name,
            vhost: vhost.to_owned(),
            webhook_signing_secret: None,
        });
    }

    /// The namespaces a worker process serves.
    pub fn worker_namespaces(&self) -> Vec<NamespaceSpec> {
        self.namespaces
            .iter()
            .filter(|spec| {
                self.worker.namespaces.is_empty() || self.worker.namespaces.contains(&spec.name)
            })
            .cloned()
            .collect()
    }
}

fn check_url(url: &SecretString, setting: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    // The url crate's errors describe the defect, never the input, so they are safe to show.
    let parsed = url::Url::parse(url.expose_secret()).map_err(|e| ConfigError::Invalid {
        setting: setting.to_owned(),
        reason: format!("not a URL ({e})"),
    })?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(ConfigError::Invalid {
            setting: setting.to_owned(),
            reason: format!("the scheme must be one of {}", schemes.join(", ")),
        });
    }
    Ok(())
}

fn default_consumer_timeout_secs() -> u64 {
    // RabbitMQ's default `consumer_timeout` (30 minutes).
    1_800
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

fn default_app_prefix() -> String {
    "engine:".to_owned()
}
fn default_max_connections() -> u32 {
    10
}
fn default_acquire_timeout_ms() -> u64 {
    3_000
}
fn default_concurrency() -> u16 {
    32
}
fn default_grace_secs() -> u64 {
    30
}
fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_body_limit() -> usize {
    4 * 1024 * 1024
}
fn default_max_batch() -> usize {
    1_000
}
fn default_key_cache_secs() -> u64 {
    30
}
fn default_sweep_ms() -> u64 {
    1_000
}
fn default_publish_grace_ms() -> u64 {
    2_000
}
fn default_sweep_batch() -> i64 {
    500
}
fn default_fast_path_wait_ms() -> u64 {
    1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(database_url: &str) -> RawSettings {
        let mut raw: RawSettings = serde_json::from_str("{}").unwrap();
        raw.database.url = Some(SecretString::from(database_url.to_owned()));
        raw.amqp.url = Some(SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"));
        raw
    }

    #[test]
    fn a_bad_url_names_the_setting_and_hides_the_value() {
        let error = Settings::validate(raw("mysql://root:hunter2@db/x")).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("DATABASE_URL"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn a_missing_url_is_named() {
        let mut settings = raw("postgres://localhost/x");
        settings.amqp.url = None;
        let message = Settings::validate(settings).unwrap_err().to_string();
        assert!(message.contains("AMQP_URL"), "{message}");
    }

    #[test]
    fn limits_are_checked_and_name_their_entry() {
        let mut settings = raw("postgres://localhost/x");
        settings.limits = vec![LimitRule {
            kind: "noop".into(),
            namespace: None,
            rate: None,
            period_ms: 1_000,
            burst: 1,
            concurrency: None,
            per_key: false,
            on_redis_error: Default::default(),
        }];
        let message = Settings::validate(settings).unwrap_err().to_string();
        assert!(message.contains("limits[0]"), "{message}");
        assert!(
            message.contains("set rate, concurrency, or both"),
            "{message}"
        );
    }

    #[test]
    fn a_submission_burst_below_the_largest_batch_is_refused() {
        let mut settings = raw("postgres://localhost/x");
        settings.api.submit_rate_per_sec = 10;
        settings.api.submit_burst = 100;
        let message = Settings::validate(settings).unwrap_err().to_string();
        assert!(message.contains("api.submit_burst"), "{message}");
    }

    #[test]
    fn a_redis_url_with_a_password_is_named_not_printed() {
        let mut settings = raw("postgres://localhost/x");
        settings.redis.url = SecretString::from("http://:hunter2@cache:6379");
        let message = Settings::validate(settings).unwrap_err().to_string();
        assert!(message.contains("REDIS_URL"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn defaults_are_usable() {
        let settings = Settings::validate(raw("postgres://localhost/x")).unwrap();
        assert_eq!(settings.queues.len(), 3);
        assert_eq!(settings.worker.concurrency, 32);
    }
}
