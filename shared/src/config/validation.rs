//! How each section of the settings checks itself: every raw section becomes its typed
//! section (`RawDatabase → DatabaseSettings`, …), and a section read in its typed form
//! already (`[api]`, `[relay]`, …) checks its values. [`super::Settings::validate`] calls
//! them one after another and reports the first problem found.
//!
//! Every message names the setting at fault and never its value: URLs carry passwords.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::ConfigError;
use super::raw::{RawAmqp, RawDatabase, RawEgress, RawNamespace, RawRedis, RawStorage, RawWorker};
use super::sections::{
    ApiSettings, ArchiveSettings, DatabaseSettings, Pooler, RelaySettings, RescueSettings,
    WorkerSettings,
};
use crate::egress::AllowRule;
use crate::fair_share::FairShare;
use crate::kind::Kind;
use crate::limits::{LimitRule, RedisSettings};
use crate::namespace::{Namespace, NamespaceSpec};
use crate::objects::StorageSettings;
use crate::queue::WeightedQueue;
use crate::quota::{self, Quota};

/// A name no namespace may take: the folder of the fleet's own objects in storage.
const RESERVED_NAMESPACE: &str = "backups";

impl RawDatabase {
    /// `[database]`: the URL is set and a PostgreSQL one, and migrations at start are not
    /// asked of a transaction pooler.
    pub(super) fn validate(self) -> Result<DatabaseSettings, ConfigError> {
        let url = required(self.url, "DATABASE_URL (database.url)")?;
        check_url(
            &url,
            "DATABASE_URL (database.url)",
            &["postgres", "postgresql"],
        )?;
        if self.migrate_on_start && self.pooler == Pooler::Transaction {
            return Err(invalid(
                "database.migrate_on_start",
                "cannot be used with database.pooler = \"transaction\": migrations hold a \
                 session lock a transaction pooler does not keep; run `engine-api migrate` \
                 with DATABASE_URL set to the direct endpoint"
                    .into(),
            ));
        }
        Ok(DatabaseSettings {
            url,
            max_connections: self.max_connections.max(2),
            acquire_timeout: Duration::from_millis(self.acquire_timeout_ms),
            migrate_on_start: self.migrate_on_start,
            pooler: self.pooler,
        })
    }
}

/// `[amqp]` checked. Its parts land apart: the URL and the consumer timeout in
/// [`super::Settings`], the queue bound in each namespace's quota.
pub(super) struct AmqpSettings {
    pub(super) url: SecretString,
    pub(super) consumer_timeout: Duration,
    /// `amqp.max_queue_bytes`: each namespace's default bound.
    pub(super) max_queue_bytes: u64,
}

impl RawAmqp {
    /// `[amqp]`: the URL is set and an AMQP one, and the consumer timeout leaves an attempt
    /// time to run.
    pub(super) fn validate(self) -> Result<AmqpSettings, ConfigError> {
        let url = required(self.url, "AMQP_URL (amqp.url)")?;
        check_url(&url, "AMQP_URL (amqp.url)", &["amqp", "amqps"])?;
        if self.consumer_timeout_secs < 5 {
            return Err(invalid(
                "amqp.consumer_timeout_secs",
                "must be at least 5 (RabbitMQ's default is 1800)".into(),
            ));
        }
        Ok(AmqpSettings {
            url,
            consumer_timeout: Duration::from_secs(self.consumer_timeout_secs),
            max_queue_bytes: self.max_queue_bytes,
        })
    }
}

impl ApiSettings {
    /// `[api]`: the caps are at least 1, and a full batch fits the submission burst.
    pub(super) fn validate(self) -> Result<Self, ConfigError> {
        at_least_one_byte("api.max_args_bytes", self.max_args_bytes as i64)?;
        at_least_one_byte("api.page_max_bytes", self.page_max_bytes)?;
        if self.max_batch == 0 {
            return Err(invalid("api.max_batch", "must be at least 1".into()));
        }
        // A batch is charged one unit per job, all at once: a burst smaller than the largest
        // batch would refuse such batches forever.
        if self.submit_rate_per_sec > 0 && self.submit_burst < self.max_batch as u32 {
            return Err(invalid(
                "api.submit_burst",
                format!(
                    "must be at least api.max_batch ({}) when api.submit_rate_per_sec is set",
                    self.max_batch
                ),
            ));
        }
        Ok(Self {
            // An empty ENGINE__API__ADMIN_LISTEN means not set.
            admin_listen: self.admin_listen.filter(|a| !a.trim().is_empty()),
            // 0 would mean no timeout at all in PostgreSQL.
            read_timeout_ms: self.read_timeout_ms.max(1),
            ..self
        })
    }
}

impl RelaySettings {
    /// `[relay]`: a claim may hold at least one byte.
    pub(super) fn validate(self) -> Result<Self, ConfigError> {
        at_least_one_byte("relay.claim_max_bytes", self.claim_max_bytes)?;
        Ok(self)
    }
}

impl RescueSettings {
    /// `[rescue]`: a lease of at least a second, and a bound past it.
    pub(super) fn validate(self) -> Result<Self, ConfigError> {
        if self.lease_secs < 1 {
            return Err(invalid("rescue.lease_secs", "must be at least 1".into()));
        }
        if self.lease_secs >= self.after_secs {
            return Err(invalid(
                "rescue.after_secs",
                format!(
                    "must be longer than rescue.lease_secs ({}): a dead attempt is only seen \
                     once its lease has expired",
                    self.lease_secs
                ),
            ));
        }
        Ok(self)
    }
}

impl ArchiveSettings {
    /// `[archive]`: a batch may hold at least one byte.
    pub(super) fn validate(self) -> Result<Self, ConfigError> {
        at_least_one_byte("archive.batch_max_bytes", self.batch_max_bytes)?;
        Ok(self)
    }
}

/// `[[queues]]`: a `default` queue among them, and every weight at least 1.
pub(super) fn check_queues(queues: &[WeightedQueue]) -> Result<(), ConfigError> {
    if queues.is_empty() {
        return Err(invalid("queues", "at least one queue is needed".into()));
    }
    if !queues.iter().any(|q| q.name.as_str() == "default") {
        return Err(invalid(
            "queues",
            "a queue named \"default\" is required".into(),
        ));
    }
    if queues.iter().any(|q| q.weight == 0) {
        return Err(invalid("queues", "every weight must be at least 1".into()));
    }
    Ok(())
}

/// What a namespace takes from the fleet's settings where it sets nothing of its own.
pub(super) struct NamespaceDefaults<'a> {
    /// `app_prefix`, which its Redis keys start with.
    pub(super) app_prefix: &'a str,
    /// `api.max_pending`.
    pub(super) max_pending: u64,
    /// `amqp.max_queue_bytes`.
    pub(super) max_queue_bytes: u64,
}

/// `[namespaces.<ns>]`, each checked in name order.
pub(super) fn namespaces(
    raw: BTreeMap<String, RawNamespace>,
    defaults: &NamespaceDefaults,
) -> Result<Vec<NamespaceSpec>, ConfigError> {
    raw.into_iter()
        .map(|(name, namespace)| namespace.validate(&name, defaults))
        .collect()
}

impl RawNamespace {
    /// `[namespaces.<name>]`: a valid, unreserved name, a vhost and bucket the broker and
    /// storage accept, shares of at least 1, and its quotas (the fleet's where unset).
    fn validate(
        self,
        name: &str,
        defaults: &NamespaceDefaults,
    ) -> Result<NamespaceSpec, ConfigError> {
        let setting = format!("namespaces.{name}");
        let name = Namespace::parse(name).map_err(|e| invalid(&setting, e.to_string()))?;
        // Fleet objects (database backups) live under `backups/` in the fleet's bucket,
        // beside the namespaces' `<ns>/` folders.
        if name.as_str() == RESERVED_NAMESPACE {
            return Err(invalid(
                &setting,
                format!("{RESERVED_NAMESPACE:?} is reserved for database backups in storage"),
            ));
        }
        let spec = NamespaceSpec::new(name, defaults.app_prefix);
        let vhost = self.vhost.unwrap_or(spec.vhost);
        if vhost.is_empty() || vhost.len() > 200 {
            return Err(invalid(
                &format!("{setting}.vhost"),
                "1 to 200 characters".into(),
            ));
        }
        if let Some(bucket) = &self.bucket {
            check_bucket(bucket, &format!("{setting}.bucket"))?;
        }
        let share = fair_share(
            &setting,
            self.weight,
            self.max_running,
            self.fleet_max_running,
        )?;
        let quota = Quota {
            max_pending: quota::cap(self.max_pending.unwrap_or(defaults.max_pending)),
            max_queue_bytes: quota::cap(self.max_queue_bytes.unwrap_or(defaults.max_queue_bytes)),
        };
        Ok(NamespaceSpec {
            vhost,
            bucket: self.bucket,
            webhook_signing_secret: self.webhook_signing_secret,
            share,
            quota,
            ..spec
        })
    }
}

/// `namespaces.<ns>.weight`, `.max_running` and `.fleet_max_running`: at least 1 where set.
fn fair_share(
    setting: &str,
    weight: Option<u32>,
    max_running: Option<u32>,
    fleet_max_running: Option<u32>,
) -> Result<FairShare, ConfigError> {
    let at_least_one = |name: &str| ConfigError::Invalid {
        setting: format!("{setting}.{name}"),
        reason: "must be at least 1".into(),
    };
    if weight == Some(0) {
        return Err(at_least_one("weight"));
    }
    if max_running == Some(0) {
        return Err(at_least_one("max_running"));
    }
    if fleet_max_running == Some(0) {
        return Err(at_least_one("fleet_max_running"));
    }
    Ok(FairShare {
        weight: weight.unwrap_or(1),
        max_running,
        fleet_max_running,
    })
}

impl RawRedis {
    /// `[redis]`: a Redis URL, and a timeout of at least 1 ms.
    pub(super) fn validate(self) -> Result<RedisSettings, ConfigError> {
        check_url(&self.url, "REDIS_URL (redis.url)", &["redis", "rediss"])?;
        Ok(RedisSettings {
            url: self.url,
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
        })
    }
}

/// `[[limits]]`: each entry a known-looking kind, a real limit, and (if scoped) a
/// configured namespace; messages name the entry by its index.
pub(super) fn check_limits(
    rules: &[LimitRule],
    namespaces: &[NamespaceSpec],
) -> Result<(), ConfigError> {
    for (index, rule) in rules.iter().enumerate() {
        let setting = format!("limits[{index}]");
        Kind::parse(&rule.kind).map_err(|e| invalid(&format!("{setting}.kind"), e.to_string()))?;
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
    Ok(())
}

impl RawStorage {
    /// `[storage]`: with a bucket, both keys are required and the endpoint (if any) must be
    /// an http(s) URL; without one, storage is off.
    pub(super) fn validate(self) -> Result<Option<StorageSettings>, ConfigError> {
        let Some(bucket) = self.bucket.filter(|bucket| !bucket.is_empty()) else {
            return Ok(None);
        };
        check_bucket(&bucket, "AWS_S3_BUCKET_NAME (storage.bucket)")?;
        let access_key_id = required(
            self.access_key_id,
            "AWS_ACCESS_KEY_ID (storage.access_key_id)",
        )?;
        let secret_access_key = required(
            self.secret_access_key,
            "AWS_SECRET_ACCESS_KEY (storage.secret_access_key)",
        )?;
        if let Some(endpoint) = &self.endpoint_url {
            check_url(
                &SecretString::from(endpoint.clone()),
                "AWS_S3_ENDPOINT_URL (storage.endpoint_url)",
                &["http", "https"],
            )?;
        }
        Ok(Some(StorageSettings {
            endpoint: self.endpoint_url,
            region: self.region.unwrap_or_else(|| "us-east-1".to_owned()),
            access_key_id,
            secret_access_key,
            bucket,
            force_path_style: self.force_path_style,
        }))
    }
}

impl RawEgress {
    /// `egress.allow`: each rule a range, an address or a host name; blank ones (an empty
    /// `ENGINE__EGRESS__ALLOW`) are dropped.
    pub(super) fn validate(&self) -> Result<Vec<AllowRule>, ConfigError> {
        self.allow
            .iter()
            .filter(|rule| !rule.trim().is_empty())
            .map(|rule| {
                rule.parse()
                    .map_err(|reason| invalid("egress.allow", reason))
            })
            .collect()
    }
}

impl RawWorker {
    /// `[worker]`: at least one slot, a result cap of at least one byte, and only
    /// configured namespaces to serve.
    pub(super) fn validate(
        self,
        namespaces: &[NamespaceSpec],
    ) -> Result<WorkerSettings, ConfigError> {
        if self.concurrency == 0 {
            return Err(invalid("worker.concurrency", "must be at least 1".into()));
        }
        at_least_one_byte("worker.max_result_bytes", self.max_result_bytes as i64)?;
        let mut served = Vec::new();
        for name in self.namespaces.iter().filter(|n| !n.is_empty()) {
            let ns =
                Namespace::parse(name).map_err(|e| invalid("worker.namespaces", e.to_string()))?;
            if !namespaces.iter().any(|spec| spec.name == ns) {
                return Err(invalid(
                    "worker.namespaces",
                    format!("namespace {ns} is not configured under [namespaces]"),
                ));
            }
            served.push(ns);
        }
        Ok(WorkerSettings {
            concurrency: self.concurrency,
            grace_period: Duration::from_secs(self.grace_period_secs),
            namespaces: served,
            id: self.id.unwrap_or_else(default_worker_id),
            health_listen: self.health_listen.filter(|listen| !listen.is_empty()),
            liveness_grace: Duration::from_secs(self.liveness_grace_secs),
            max_result_bytes: self.max_result_bytes,
        })
    }
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// `setting` is invalid, for `reason`.
pub(super) fn invalid(setting: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.to_owned(),
        reason,
    }
}

/// A value a setting must have.
fn required<T>(value: Option<T>, setting: &'static str) -> Result<T, ConfigError> {
    value.ok_or(ConfigError::Missing { setting })
}

/// A size cap: 0 bytes would refuse everything.
fn at_least_one_byte(setting: &str, bytes: i64) -> Result<(), ConfigError> {
    if bytes < 1 {
        return Err(invalid(setting, "must be at least 1 byte".into()));
    }
    Ok(())
}

/// S3's bucket naming rules, which B2 shares: 3-63 of [a-z0-9.-], alphanumeric ends.
fn check_bucket(bucket: &str, setting: &str) -> Result<(), ConfigError> {
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(invalid(
            setting,
            "3 to 63 lowercase letters, digits, dots or dashes, starting and ending \
             with a letter or digit"
                .into(),
        ))
    }
}

fn check_url(url: &SecretString, setting: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    // The url crate's errors describe the defect, never the input, so they are safe to show.
    let parsed = url::Url::parse(url.expose_secret())
        .map_err(|e| invalid(setting, format!("not a URL ({e})")))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(invalid(
            setting,
            format!("the scheme must be one of {}", schemes.join(", ")),
        ));
    }
    Ok(())
}
