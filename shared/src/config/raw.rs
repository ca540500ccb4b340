//! The settings as read from the file and the environment, before validation: every field
//! optional or defaulted, exactly the shape an operator writes. Each section checks itself
//! on the way to its typed form (`super::validation`).

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Deserialize;

use super::sections::{
    ApiSettings, ArchiveSettings, BackupSettings, LogSettings, Pooler, RelaySettings,
    RescueSettings,
};
use crate::limits::LimitRule;
use crate::queue::{WeightedQueue, standard_queues};
use crate::retry::RetryPolicy;
use crate::telemetry::LogFormat;

/// The whole settings document: `[database]`, `[amqp]`, `[api]`, … and `[[limits]]`.
#[derive(Debug, Deserialize)]
pub(super) struct RawSettings {
    #[serde(default)]
    pub(super) database: RawDatabase,
    #[serde(default)]
    pub(super) amqp: RawAmqp,
    #[serde(default = "default_app_prefix")]
    pub(super) app_prefix: String,
    #[serde(default)]
    pub(super) log_format: LogFormat,
    #[serde(default)]
    pub(super) api: ApiSettings,
    #[serde(default)]
    pub(super) worker: RawWorker,
    #[serde(default)]
    pub(super) relay: RelaySettings,
    #[serde(default)]
    pub(super) rescue: RescueSettings,
    #[serde(default)]
    pub(super) retry: RetryPolicy,
    #[serde(default)]
    pub(super) redis: RawRedis,
    #[serde(default)]
    pub(super) limits: Vec<LimitRule>,
    #[serde(default)]
    pub(super) storage: RawStorage,
    #[serde(default)]
    pub(super) logs: LogSettings,
    #[serde(default)]
    pub(super) archive: ArchiveSettings,
    #[serde(default)]
    pub(super) backup: BackupSettings,
    #[serde(default = "standard_queues")]
    pub(super) queues: Vec<WeightedQueue>,
    #[serde(default)]
    pub(super) namespaces: BTreeMap<String, RawNamespace>,
    #[serde(default)]
    pub(super) egress: RawEgress,
}

/// `[egress]`: what jobs' outbound requests may reach beyond the public internet.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawEgress {
    /// Ranges (`10.1.0.0/16`, `127.0.0.2`) or host names opened on purpose.
    #[serde(default)]
    pub(super) allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawDatabase {
    pub(super) url: Option<SecretString>,
    #[serde(default = "default_max_connections")]
    pub(super) max_connections: u32,
    #[serde(default = "default_acquire_timeout_ms")]
    pub(super) acquire_timeout_ms: u64,
    #[serde(default)]
    pub(super) migrate_on_start: bool,
    /// `none` (the default) or `transaction`; anything else is refused as the file is
    /// read, naming the choices.
    #[serde(default)]
    pub(super) pooler: Pooler,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawAmqp {
    pub(super) url: Option<SecretString>,
    #[serde(default = "default_consumer_timeout_secs")]
    pub(super) consumer_timeout_secs: u64,
    /// Most bytes each of a namespace's work queues holds (0: unbounded).
    #[serde(default = "default_max_queue_bytes")]
    pub(super) max_queue_bytes: u64,
}

impl Default for RawAmqp {
    fn default() -> Self {
        Self {
            url: None,
            consumer_timeout_secs: default_consumer_timeout_secs(),
            max_queue_bytes: default_max_queue_bytes(),
        }
    }
}

fn default_max_queue_bytes() -> u64 {
    crate::quota::DEFAULT_MAX_QUEUE_BYTES
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRedis {
    #[serde(default = "default_redis_url")]
    pub(super) url: SecretString,
    #[serde(default = "default_redis_timeout_ms")]
    pub(super) timeout_ms: u64,
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

/// `[storage]`, also set by the seed's `AWS_*` names. Storage is off while no bucket is set.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawStorage {
    pub(super) endpoint_url: Option<String>,
    pub(super) region: Option<String>,
    pub(super) access_key_id: Option<SecretString>,
    pub(super) secret_access_key: Option<SecretString>,
    pub(super) bucket: Option<String>,
    #[serde(default)]
    pub(super) force_path_style: bool,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawWorker {
    #[serde(default = "default_concurrency")]
    pub(super) concurrency: u16,
    #[serde(default = "default_grace_secs")]
    pub(super) grace_period_secs: u64,
    #[serde(default)]
    pub(super) namespaces: Vec<String>,
    pub(super) id: Option<String>,
    pub(super) health_listen: Option<String>,
    #[serde(default = "default_liveness_grace_secs")]
    pub(super) liveness_grace_secs: u64,
    #[serde(default = "super::sections::default_payload_cap")]
    pub(super) max_result_bytes: usize,
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: default_max_connections(),
            acquire_timeout_ms: default_acquire_timeout_ms(),
            migrate_on_start: false,
            pooler: Pooler::None,
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
            health_listen: None,
            liveness_grace_secs: default_liveness_grace_secs(),
            max_result_bytes: super::sections::default_payload_cap(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawNamespace {
    pub(super) vhost: Option<String>,
    /// This namespace's own bucket; the fleet's `storage.bucket` (under `<ns>/`) otherwise.
    pub(super) bucket: Option<String>,
    pub(super) webhook_signing_secret: Option<SecretString>,
    /// Its weight among the namespaces a worker serves (default 1).
    pub(super) weight: Option<u32>,
    /// Most of its jobs one worker process runs at once (default: no cap).
    pub(super) max_running: Option<u32>,
    /// Most of its jobs the whole fleet runs at once (default: no cap; kept in Redis).
    pub(super) fleet_max_running: Option<u32>,
    /// Most unfinished jobs it may have (default `api.max_pending`; 0: no cap).
    pub(super) max_pending: Option<u64>,
    /// Most bytes each of its work queues holds (default `amqp.max_queue_bytes`;
    /// 0: unbounded).
    pub(super) max_queue_bytes: Option<u64>,
}

fn default_consumer_timeout_secs() -> u64 {
    // RabbitMQ's default `consumer_timeout` (30 minutes).
    1_800
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

fn default_liveness_grace_secs() -> u64 {
    120
}

fn default_grace_secs() -> u64 {
    30
}
