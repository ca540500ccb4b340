//! Layered settings: built-in defaults → optional TOML file → environment variables.
//!
//! Environment: `ENGINE__SECTION__KEY` (e.g. `ENGINE__WORKER__CONCURRENCY=64`), plus the
//! seed's unprefixed names `DATABASE_URL`, `AMQP_URL` and `REDIS_URL`. URLs carry
//! passwords, so they are held as [`SecretString`] and errors name the setting, never its value.
//!
//! - [`raw`]: the shape read from file and environment, every field optional or defaulted.
//! - [`sections`]: the typed sections binaries read (API, relay, database, worker).
//! - [`validation`]: how each section checks itself on the way from the one to the other.
//! - this module: [`Settings`], loading, and the order the sections are checked in.

mod raw;
mod sections;
mod validation;

use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::egress::AllowRule;
use crate::limits::{LimitRule, RedisSettings};
use crate::namespace::{Namespace, NamespaceSpec};
use crate::objects::StorageSettings;
use crate::queue::WeightedQueue;
use crate::quota::{self, Quota};
use crate::retry::RetryPolicy;
use crate::telemetry::LogFormat;
use raw::RawSettings;
pub use sections::{
    ApiSettings, ArchiveSettings, BackupSettings, DEFAULT_READ_TIMEOUT_MS, DatabaseSettings,
    LogSettings, Pooler, RelaySettings, RescueSettings, WorkerSettings,
};
use validation::NamespaceDefaults;

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
    /// The rescuer's bound and the attempt lease.
    pub rescue: RescueSettings,
    pub retry: RetryPolicy,
    /// Where rate and concurrency limits are kept.
    pub redis: RedisSettings,
    /// `[[limits]]`: per kind, optionally per namespace; they beat what kinds declare.
    pub limits: Vec<LimitRule>,
    /// S3-compatible storage; `None` while no bucket is configured.
    pub storage: Option<StorageSettings>,
    /// Per-attempt job logs: size cap and the local spool used while storage is down.
    pub logs: LogSettings,
    /// Moving finished jobs out of PostgreSQL into storage.
    pub archive: ArchiveSettings,
    /// Database backups in storage.
    pub backup: BackupSettings,
    pub queues: Vec<WeightedQueue>,
    pub namespaces: Vec<NamespaceSpec>,
    /// `egress.allow`: private ranges and hosts jobs' outbound requests may reach.
    pub egress_allow: Vec<AllowRule>,
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
                    .with_list_parse_key("egress.allow")
                    .try_parsing(true),
            )
            .set_override_option("database.url", std::env::var("DATABASE_URL").ok())
            .and_then(|b| b.set_override_option("amqp.url", std::env::var("AMQP_URL").ok()))
            .and_then(|b| b.set_override_option("redis.url", std::env::var("REDIS_URL").ok()))
            .and_then(|b| {
                // The seed's names for S3-compatible storage (Backblaze B2 in production).
                let mut b = b;
                for (key, variable) in [
                    ("storage.endpoint_url", "AWS_S3_ENDPOINT_URL"),
                    ("storage.access_key_id", "AWS_ACCESS_KEY_ID"),
                    ("storage.secret_access_key", "AWS_SECRET_ACCESS_KEY"),
                    ("storage.bucket", "AWS_S3_BUCKET_NAME"),
                    ("storage.region", "AWS_REGION"),
                ] {
                    b = b.set_override_option(key, std::env::var(variable).ok())?;
                }
                Ok(b)
            })
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

    /// Each section checks itself (see [`validation`]), in this order; the first problem
    /// found is the error.
    fn validate(raw: RawSettings) -> Result<Self, ConfigError> {
        let database = raw.database.validate()?;
        let amqp = raw.amqp.validate()?;
        let api = raw.api.validate()?;
        let relay = raw.relay.validate()?;
        let rescue = raw.rescue.validate()?;
        let archive = raw.archive.validate()?;
        validation::check_queues(&raw.queues)?;
        raw.retry
            .validate()
            .map_err(|reason| validation::invalid("retry", reason))?;
        let namespaces = validation::namespaces(
            raw.namespaces,
            &NamespaceDefaults {
                app_prefix: &raw.app_prefix,
                max_pending: api.max_pending,
                max_queue_bytes: amqp.max_queue_bytes,
            },
        )?;
        let redis = raw.redis.validate()?;
        validation::check_limits(&raw.limits, &namespaces)?;
        let storage = raw.storage.validate()?;
        let egress_allow = raw.egress.validate()?;
        let worker = raw.worker.validate(&namespaces)?;
        Ok(Self {
            database,
            amqp_url: amqp.url,
            consumer_timeout: amqp.consumer_timeout,
            app_prefix: raw.app_prefix,
            log_format: raw.log_format,
            api,
            worker,
            relay,
            rescue,
            retry: raw.retry,
            redis,
            limits: raw.limits,
            storage,
            logs: raw.logs,
            archive,
            backup: raw.backup,
            queues: raw.queues,
            namespaces,
            egress_allow,
        })
    }

    /// The hosts of the fleet's own services (database, broker, Redis, storage), which no
    /// job's outbound request may reach. Storage counts twice: the endpoint, and the
    /// bucket's own host name that virtual-hosted requests use.
    pub fn service_hosts(&self) -> Vec<String> {
        let host = |url: &str| url::Url::parse(url).ok()?.host_str().map(str::to_owned);
        let mut hosts: Vec<String> = [
            self.database.url.expose_secret(),
            self.amqp_url.expose_secret(),
            self.redis.url.expose_secret(),
        ]
        .into_iter()
        .filter_map(host)
        .collect();
        if let Some(storage) = &self.storage {
            let endpoint = match &storage.endpoint {
                Some(endpoint) => host(endpoint),
                None => Some(format!("s3.{}.amazonaws.com", storage.region)),
            };
            if let Some(endpoint) = endpoint {
                if !storage.force_path_style && endpoint.parse::<std::net::IpAddr>().is_err() {
                    hosts.push(format!("{}.{endpoint}", storage.bucket));
                }
                hosts.push(endpoint);
            }
        }
        hosts
    }

    /// The longest an attempt may be allowed to run: the broker's consumer timeout less
    /// [`Self::attempt_margin`].
    pub fn max_attempt_timeout(&self) -> Duration {
        self.consumer_timeout.saturating_sub(self.attempt_margin())
    }

    /// What an attempt leaves of the broker's consumer timeout for recording its outcome
    /// and acking: 30 s, or a quarter of a consumer timeout shorter than 2 minutes.
    pub fn attempt_margin(&self) -> Duration {
        (self.consumer_timeout / 4).min(Duration::from_secs(30))
    }

    /// The namespace named `name`, if configured.
    pub fn namespace(&self, name: &Namespace) -> Option<&NamespaceSpec> {
        self.namespaces.iter().find(|spec| &spec.name == name)
    }

    /// The configured namespaces' names, as the store's filters by namespace take them.
    pub fn namespace_names(&self) -> Vec<Namespace> {
        self.namespaces
            .iter()
            .map(|spec| spec.name.clone())
            .collect()
    }

    /// Adds (or replaces) a namespace; tests and tools build settings in code with this.
    pub fn add_namespace(&mut self, name: Namespace, vhost: &str) {
        self.namespaces.retain(|spec| spec.name != name);
        self.namespaces.push(NamespaceSpec {
            vhost: vhost.to_owned(),
            quota: Quota {
                max_pending: quota::cap(self.api.max_pending),
                ..Quota::default()
            },
            ..NamespaceSpec::new(name, &self.app_prefix)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fair_share::FairShare;

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
    fn a_transaction_pooler_is_chosen_by_name_and_refuses_migrations_at_start() {
        let settings = |database: &str| {
            Settings::from_toml(&format!(
                "[database]\nurl = \"postgres://localhost/x\"\n{database}\n\
                 [amqp]\nurl = \"amqp://localhost\"\n"
            ))
        };
        assert_eq!(settings("").unwrap().database.pooler, Pooler::None);
        assert_eq!(
            settings("pooler = \"transaction\"")
                .unwrap()
                .database
                .pooler,
            Pooler::Transaction
        );
        let unknown = settings("pooler = \"statement\"").unwrap_err().to_string();
        assert!(unknown.contains("statement"), "{unknown}");
        assert!(
            unknown.contains("transaction"),
            "names the choices: {unknown}"
        );
        assert!(unknown.contains("database.pooler"), "{unknown}");
        let migrating = settings("pooler = \"transaction\"\nmigrate_on_start = true")
            .unwrap_err()
            .to_string();
        assert!(
            migrating.contains("database.migrate_on_start") && migrating.contains("direct"),
            "{migrating}"
        );
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
    fn storage_is_off_without_a_bucket_and_checked_with_one() {
        let settings = Settings::validate(raw("postgres://localhost/x")).unwrap();
        assert!(settings.storage.is_none());

        let mut with_bucket = raw("postgres://localhost/x");
        with_bucket.storage.bucket = Some("tl-engine".into());
        let message = Settings::validate(with_bucket).unwrap_err().to_string();
        assert!(message.contains("AWS_ACCESS_KEY_ID"), "{message}");

        let mut bad_bucket = raw("postgres://localhost/x");
        bad_bucket.storage.bucket = Some("Not_A_Bucket".into());
        let message = Settings::validate(bad_bucket).unwrap_err().to_string();
        assert!(message.contains("AWS_S3_BUCKET_NAME"), "{message}");

        let mut complete = raw("postgres://localhost/x");
        complete.storage = raw::RawStorage {
            endpoint_url: Some("https://s3.us-west-004.backblazeb2.com".into()),
            region: Some("us-west-004".into()),
            access_key_id: Some(SecretString::from("key-id")),
            secret_access_key: Some(SecretString::from("hunter2")),
            bucket: Some("tl-engine".into()),
            force_path_style: false,
        };
        let storage = Settings::validate(complete).unwrap().storage.unwrap();
        assert_eq!(storage.region, "us-west-004");
        assert!(
            !format!("{storage:?}").contains("hunter2"),
            "secrets never print"
        );
    }

    #[test]
    fn a_namespace_may_have_its_own_bucket_checked_like_the_fleets() {
        let text = |bucket: &str| {
            format!(
                "[database]\nurl = \"postgres://localhost/x\"\n[amqp]\nurl = \"amqp://localhost\"\n\
                 [namespaces.acme]\nbucket = \"{bucket}\"\n"
            )
        };
        let settings = Settings::from_toml(&text("acme-objects")).unwrap();
        let acme = Namespace::parse("acme").unwrap();
        assert_eq!(
            settings.namespace(&acme).unwrap().bucket.as_deref(),
            Some("acme-objects")
        );
        let reserved = "[database]\nurl = \"postgres://localhost/x\"\n[amqp]\nurl = \"amqp://localhost\"\n\
                        [namespaces.backups]\n";
        let message = Settings::from_toml(reserved).unwrap_err().to_string();
        assert!(message.contains("reserved"), "{message}");
        let message = Settings::from_toml(&text("Bad_Bucket"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("namespaces.acme.bucket"), "{message}");
    }

    #[test]
    fn a_namespace_has_weight_1_the_default_quotas_and_no_cap_unless_set_and_never_0() {
        let text = |extra: &str| {
            format!(
                "[database]\nurl = \"postgres://localhost/x\"\n[amqp]\nurl = \"amqp://localhost\"\n\
                 [namespaces.acme]\n{extra}\n[namespaces.demo]\n"
            )
        };
        let settings = Settings::from_toml(&text(
            "weight = 3\nmax_running = 4\nfleet_max_running = 9\nmax_pending = 0\nmax_queue_bytes = 1000",
        ))
        .unwrap();
        let spec = |name: &str| {
            settings
                .namespace(&Namespace::parse(name).unwrap())
                .unwrap()
                .clone()
        };
        assert_eq!(
            spec("acme").share,
            FairShare {
                weight: 3,
                max_running: Some(4),
                fleet_max_running: Some(9),
            }
        );
        // 0 turns a quota off.
        assert_eq!(
            spec("acme").quota,
            Quota {
                max_pending: None,
                max_queue_bytes: Some(1000)
            }
        );
        assert_eq!(spec("demo").share, FairShare::default());
        assert_eq!(spec("demo").quota, Quota::default());
        for (extra, setting) in [
            ("weight = 0", "namespaces.acme.weight"),
            ("max_running = 0", "namespaces.acme.max_running"),
            ("fleet_max_running = 0", "namespaces.acme.fleet_max_running"),
        ] {
            let message = Settings::from_toml(&text(extra)).unwrap_err().to_string();
            assert!(message.contains(setting), "{message}");
        }
    }

    #[test]
    fn defaults_are_usable() {
        let settings = Settings::validate(raw("postgres://localhost/x")).unwrap();
        assert_eq!(settings.queues.len(), 3);
        assert_eq!(settings.worker.concurrency, 32);
        // A key is rate-limited unless a deployment turns it off, and a full batch fits.
        assert_eq!(settings.api.submit_rate_per_sec, 500);
        assert!(settings.api.submit_burst as usize >= settings.api.max_batch);
    }
}
