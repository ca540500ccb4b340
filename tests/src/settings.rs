//! The settings file a test fleet runs with, as a typed value: the harness fills in quick
//! test defaults, a test changes what it needs (`TestFleet::builder().settings(|s| …)`), and
//! it is written out as TOML for the in-process services and the worker and API processes.
//!
//! Why a mirror of the file and not [`engine_shared::config::Settings`] itself: `Settings`
//! is the *validated* form (durations, derived Redis and S3 prefixes, secrets that never
//! print), not the file's shape, so it cannot be written back for a child process to read.
//! [`TestSettings`] has the file's shape, key for key, for the keys tests set; the test at
//! the bottom writes each of them and reads it back through `Settings::from_toml`, so a key
//! spelt wrong here fails that test instead of being silently ignored by the loader.

use std::path::PathBuf;

use secrecy::ExposeSecret;
use serde::{Serialize, Serializer};

use engine_shared::config::Pooler;
use engine_shared::limits::RedisErrorPolicy;

use crate::services;

/// Where the tests' webhook receivers listen: loopback, but not the services' address.
pub const RECEIVER_HOST: &str = "127.0.0.2";

/// The whole settings file. `None` sections are left to the product's defaults.
#[derive(Clone, Debug, Serialize)]
pub struct TestSettings {
    pub database: DatabaseSection,
    pub amqp: AmqpSection,
    pub api: ApiSection,
    pub redis: RedisSection,
    pub worker: WorkerSection,
    pub relay: RelaySection,
    pub retry: RetrySection,
    pub egress: EgressSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rescue: Option<RescueSection>,
    /// Storage (attempt logs, artifacts, archives); off unless a test turns it on
    /// ([`TestSettings::use_test_storage`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogsSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSection>,
    /// `[[limits]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitSection>,
    /// `[namespaces.<name>]`, one per tenant of the fleet, in the order of
    /// [`crate::TestFleet::tenants`].
    #[serde(serialize_with = "tables_by_name")]
    pub namespaces: Vec<NamespaceSection>,
}

/// `[database]`.
#[derive(Clone, Debug, Serialize)]
pub struct DatabaseSection {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    #[serde(serialize_with = "pooler_name")]
    pub pooler: Pooler,
}

/// `[amqp]`.
#[derive(Clone, Debug, Serialize)]
pub struct AmqpSection {
    pub url: String,
    /// Must match the broker's `consumer_timeout`.
    pub consumer_timeout_secs: u64,
}

/// `[api]`.
#[derive(Clone, Debug, Serialize)]
pub struct ApiSection {
    pub listen: String,
    pub body_limit_bytes: usize,
    pub key_cache_secs: u64,
    pub max_batch: usize,
    /// 0: no submission rate limit (the harness's default, unlike the product's).
    pub submit_rate_per_sec: u32,
    pub submit_burst: u32,
    /// Serve `/metrics` and the detailed `/readyz` here ([`TestSettings::serve_admin`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_timeout_ms: Option<u64>,
}

/// `[redis]`.
#[derive(Clone, Debug, Serialize)]
pub struct RedisSection {
    pub url: String,
    pub timeout_ms: u64,
}

/// `[worker]`.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerSection {
    pub concurrency: u16,
    pub grace_period_secs: u64,
    /// Serve `/healthz` and `/readyz` here ([`TestSettings::serve_worker_health`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_grace_secs: Option<u64>,
}

/// `[relay]`.
#[derive(Clone, Debug, Serialize)]
pub struct RelaySection {
    pub sweep_interval_ms: u64,
    /// How long the sweeper leaves a queued job to the fast path before publishing it
    /// itself (a duplicate if the fast path's stamp was merely late).
    pub publish_grace_ms: u64,
}

/// `[retry]`.
#[derive(Clone, Debug, Serialize)]
pub struct RetrySection {
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    pub tiers_ms: Vec<u64>,
    /// Deliveries after which a crash-looping job is buried.
    pub delivery_limit: u32,
}

/// `[egress]`.
#[derive(Clone, Debug, Serialize)]
pub struct EgressSection {
    /// By default the test receivers' address, [`RECEIVER_HOST`]: they never listen on
    /// 127.0.0.1, which the services use and the policy always refuses.
    pub allow: Vec<String>,
}

/// `[rescue]`.
#[derive(Clone, Debug, Serialize)]
pub struct RescueSection {
    pub after_secs: u64,
    pub lease_secs: u64,
}

/// `[storage]`.
#[derive(Clone, Debug, Serialize)]
pub struct StorageSection {
    /// The test S3 server's, or a proxy's.
    pub endpoint_url: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub bucket: String,
    pub force_path_style: bool,
}

/// `[logs]`.
#[derive(Clone, Debug, Serialize)]
pub struct LogsSection {
    pub spool_dir: PathBuf,
    pub spool_retry_secs: u64,
}

/// `[archive]`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ArchiveSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
}

/// `[backup]`.
#[derive(Clone, Debug, Serialize)]
pub struct BackupSection {
    /// Backups kept.
    pub keep: u32,
}

/// One `[[limits]]` entry; [`LimitSection::rate`] and [`LimitSection::concurrency`] make one.
#[derive(Clone, Debug, Serialize)]
pub struct LimitSection {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "redis_error_policy_name"
    )]
    pub on_redis_error: Option<RedisErrorPolicy>,
}

/// One `[namespaces.<name>]` table. `None` fields are left to the fleet-wide defaults.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NamespaceSection {
    /// The table's name (not a key inside it).
    #[serde(skip)]
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_signing_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_max_running: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queue_bytes: Option<u64>,
}

impl TestSettings {
    /// Quick test defaults for `namespaces` against the test servers: short sweeps, retries
    /// and key cache, no submission rate limit, a small pool, an API on port 0.
    pub fn for_namespaces(namespaces: &[String]) -> Self {
        Self {
            database: DatabaseSection {
                url: services::database_url(),
                max_connections: 6,
                acquire_timeout_ms: 1_500,
                pooler: Pooler::None,
            },
            amqp: AmqpSection {
                url: services::amqp_url(),
                consumer_timeout_secs: 1_800,
            },
            api: ApiSection {
                listen: "127.0.0.1:0".into(),
                body_limit_bytes: 65_536,
                key_cache_secs: 1,
                max_batch: 1_000,
                submit_rate_per_sec: 0,
                submit_burst: 1_000,
                admin_listen: None,
                read_timeout_ms: None,
            },
            redis: RedisSection {
                url: services::redis_url(),
                timeout_ms: 300,
            },
            worker: WorkerSection {
                concurrency: 8,
                grace_period_secs: 10,
                health_listen: None,
                liveness_grace_secs: None,
            },
            relay: RelaySection {
                sweep_interval_ms: 100,
                publish_grace_ms: 300,
            },
            retry: RetrySection {
                base_delay_ms: 100,
                max_delay_ms: 500,
                tiers_ms: vec![200, 500],
                delivery_limit: 20,
            },
            egress: EgressSection {
                allow: vec![RECEIVER_HOST.to_owned()],
            },
            rescue: None,
            storage: None,
            logs: None,
            archive: None,
            backup: None,
            limits: Vec::new(),
            namespaces: namespaces
                .iter()
                .map(|name| NamespaceSection {
                    name: name.clone(),
                    ..NamespaceSection::default()
                })
                .collect(),
        }
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("test settings serialize as TOML")
    }

    /// Turns storage on against the test S3 server, with attempt logs spooled in a folder
    /// of the fleet's own and offered again every second.
    pub fn use_test_storage(&mut self) {
        let s3 = services::s3_settings();
        self.storage = Some(StorageSection {
            endpoint_url: s3.endpoint.expect("the test S3 server has an endpoint"),
            region: s3.region,
            access_key_id: s3.access_key_id.expose_secret().to_owned(),
            secret_access_key: s3.secret_access_key.expose_secret().to_owned(),
            bucket: s3.bucket,
            force_path_style: true,
        });
        let first = self.namespaces.first().map_or("fleet", |n| n.name.as_str());
        self.logs = Some(LogsSection {
            spool_dir: std::env::temp_dir().join(format!("{first}-spool")),
            spool_retry_secs: 1,
        });
    }

    /// The storage section, which [`TestSettings::use_test_storage`] must have turned on.
    pub fn storage_mut(&mut self) -> &mut StorageSection {
        self.storage
            .as_mut()
            .expect("storage is on: call use_test_storage first")
    }

    /// Every namespace signs its webhooks with `secret`.
    pub fn sign_webhooks_with(&mut self, secret: &str) {
        for namespace in &mut self.namespaces {
            namespace.webhook_signing_secret = Some(secret.to_owned());
        }
    }

    /// Serve `/metrics` and the detailed `/readyz` on a port of their own
    /// (`api.admin_listen`), reached through [`crate::TestFleet::admin`].
    pub fn serve_admin(&mut self) {
        self.api.admin_listen = Some("127.0.0.1:0".into());
    }

    /// The in-process worker serves `/healthz` and `/readyz` on a free port
    /// ([`crate::TestFleet::worker_health`]).
    pub fn serve_worker_health(&mut self) {
        self.worker.health_listen = Some("127.0.0.1:0".into());
        self.worker.liveness_grace_secs = Some(30);
    }

    /// Reach PostgreSQL through the transaction-mode pooler at `url` (a
    /// [`crate::PgBouncer`]). The test's own reads stay direct.
    pub fn use_transaction_pooler(&mut self, url: String) {
        self.database.url = url;
        self.database.pooler = Pooler::Transaction;
    }

    /// `api.submit_rate_per_sec` and `api.submit_burst` (also the largest batch, which a
    /// burst must hold).
    pub fn limit_submissions(&mut self, per_sec: u32, burst: u32) {
        self.api.submit_rate_per_sec = per_sec;
        self.api.submit_burst = burst;
        self.api.max_batch = burst as usize;
    }
}

impl LimitSection {
    /// `rate` jobs of `kind` per second, in bursts of one (settings' defaults).
    pub fn rate(kind: &str, rate: u32) -> Self {
        Self {
            kind: kind.to_owned(),
            rate: Some(rate),
            period_ms: None,
            burst: None,
            concurrency: None,
            on_redis_error: None,
        }
    }

    /// At most `concurrency` jobs of `kind` running at once, fleet-wide.
    pub fn concurrency(kind: &str, concurrency: u32) -> Self {
        Self {
            concurrency: Some(concurrency),
            rate: None,
            ..Self::rate(kind, 0)
        }
    }
}

/// `[namespaces.<name>]` tables keyed by each section's name, in order.
fn tables_by_name<S: Serializer>(
    namespaces: &[NamespaceSection],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(
        namespaces
            .iter()
            .map(|namespace| (&namespace.name, namespace)),
    )
}

/// `database.pooler` as the file spells it.
fn pooler_name<S: Serializer>(pooler: &Pooler, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(match pooler {
        Pooler::None => "none",
        Pooler::Transaction => "transaction",
    })
}

/// `on_redis_error` as the file spells it.
fn redis_error_policy_name<S: Serializer>(
    policy: &Option<RedisErrorPolicy>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match policy {
        Some(RedisErrorPolicy::Allow) => serializer.serialize_str("allow"),
        Some(RedisErrorPolicy::Defer) => serializer.serialize_str("defer"),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use engine_shared::config::Settings;

    use super::*;

    /// Every key this mirror writes reaches the validated settings: a misspelt key would be
    /// ignored by the loader and leave the product's default in place.
    #[test]
    fn every_key_written_is_read_back_by_the_loader() {
        let mut file = TestSettings::for_namespaces(&["t-first".into(), "t-second".into()]);
        file.database.url = "postgres://u@127.0.0.1:1/db".into();
        file.database.max_connections = 7;
        file.database.acquire_timeout_ms = 1_234;
        file.use_transaction_pooler("postgres://u@127.0.0.1:2/db".into());
        file.amqp.url = "amqp://u:p@127.0.0.1:3/%2f".into();
        file.amqp.consumer_timeout_secs = 77;
        file.api.listen = "127.0.0.1:4".into();
        file.api.body_limit_bytes = 5_555;
        file.api.key_cache_secs = 6;
        file.limit_submissions(7, 8);
        file.serve_admin();
        file.api.read_timeout_ms = Some(99);
        file.redis.url = "redis://127.0.0.1:5".into();
        file.redis.timeout_ms = 111;
        file.worker.concurrency = 3;
        file.worker.grace_period_secs = 4;
        file.serve_worker_health();
        file.relay.sweep_interval_ms = 222;
        file.relay.publish_grace_ms = 333;
        file.retry = RetrySection {
            base_delay_ms: 11,
            max_delay_ms: 22,
            tiers_ms: vec![33, 44],
            delivery_limit: 5,
        };
        file.egress.allow = vec!["10.1.0.0/16".into()];
        file.rescue = Some(RescueSection {
            after_secs: 9,
            lease_secs: 2,
        });
        file.use_test_storage();
        file.storage_mut().endpoint_url = "http://127.0.0.1:6".into();
        file.archive = Some(ArchiveSection {
            after_days: Some(3),
            interval_secs: Some(4),
            batch_size: Some(5),
        });
        file.backup = Some(BackupSection { keep: 6 });
        file.limits = vec![
            LimitSection {
                period_ms: Some(500),
                burst: Some(2),
                on_redis_error: Some(RedisErrorPolicy::Defer),
                ..LimitSection::rate("noop", 5)
            },
            LimitSection::concurrency("sleep", 1),
        ];
        file.sign_webhooks_with("s3cret");
        file.namespaces[1].weight = Some(3);
        file.namespaces[1].fleet_max_running = Some(4);
        file.namespaces[1].max_pending = Some(5);
        file.namespaces[1].max_queue_bytes = Some(6_000);

        let read = Settings::from_toml(&file.to_toml()).expect("the file is valid");

        let url = |secret: &secrecy::SecretString| secret.expose_secret().to_owned();
        assert_eq!(url(&read.database.url), "postgres://u@127.0.0.1:2/db");
        assert_eq!(read.database.max_connections, 7);
        assert_eq!(read.database.acquire_timeout, Duration::from_millis(1_234));
        assert_eq!(read.database.pooler, Pooler::Transaction);
        assert_eq!(url(&read.amqp_url), "amqp://u:p@127.0.0.1:3/%2f");
        assert_eq!(read.consumer_timeout, Duration::from_secs(77));
        assert_eq!(read.api.listen, "127.0.0.1:4");
        assert_eq!(read.api.body_limit_bytes, 5_555);
        assert_eq!(read.api.key_cache_secs, 6);
        assert_eq!(
            (
                read.api.submit_rate_per_sec,
                read.api.submit_burst,
                read.api.max_batch
            ),
            (7, 8, 8)
        );
        assert_eq!(read.api.admin_listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(read.api.read_timeout_ms, 99);
        assert_eq!(url(&read.redis.url), "redis://127.0.0.1:5");
        assert_eq!(read.redis.timeout, Duration::from_millis(111));
        assert_eq!(read.worker.concurrency, 3);
        assert_eq!(read.worker.grace_period, Duration::from_secs(4));
        assert_eq!(read.worker.health_listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(read.worker.liveness_grace, Duration::from_secs(30));
        assert_eq!(read.relay.sweep_interval_ms, 222);
        assert_eq!(read.relay.publish_grace_ms, 333);
        assert_eq!(
            (
                read.retry.base_delay_ms,
                read.retry.max_delay_ms,
                read.retry.tiers_ms.clone(),
                read.retry.delivery_limit
            ),
            (11, 22, vec![33, 44], 5)
        );
        assert_eq!(read.egress_allow.len(), 1);
        assert_eq!((read.rescue.after_secs, read.rescue.lease_secs), (9, 2));
        let storage = read.storage.as_ref().expect("storage is on");
        assert_eq!(storage.endpoint.as_deref(), Some("http://127.0.0.1:6"));
        assert_eq!(storage.bucket, services::s3_settings().bucket);
        assert!(storage.force_path_style);
        assert_eq!(read.logs.spool_dir, file.logs.as_ref().unwrap().spool_dir);
        assert_eq!(read.logs.spool_retry_secs, 1);
        assert_eq!(
            (
                read.archive.after_days,
                read.archive.interval_secs,
                read.archive.batch_size
            ),
            (3, 4, 5)
        );
        assert_eq!(read.backup.keep, 6);
        let noop = &read.limits[0];
        assert_eq!(
            (noop.kind.as_str(), noop.rate, noop.period_ms, noop.burst),
            ("noop", Some(5), 500, 2)
        );
        assert_eq!(noop.on_redis_error, RedisErrorPolicy::Defer);
        assert_eq!(read.limits[1].concurrency, Some(1));
        assert_eq!(read.limits[1].rate, None);
        let names: Vec<&str> = read.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["t-first", "t-second"]);
        assert!(
            read.namespaces
                .iter()
                .all(|n| n.webhook_signing_secret.is_some())
        );
        let second = &read.namespaces[1];
        assert_eq!(second.quota.max_queue_bytes, Some(6_000));
        assert_eq!(second.quota.max_pending, Some(5));
        assert_eq!(
            (second.share.weight, second.share.fleet_max_running),
            (3, Some(4))
        );
    }
}
