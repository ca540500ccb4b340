//! A test's own fleet: a fresh namespace (vhost, rows, key), the API in-process on port 0,
//! a worker in-process or as real child processes — and teardown when it drops.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use engine_api::Application;
use engine_jobs::{JobDeps, Registry, register_all};
use engine_shared::config::{Pooler, Settings};
use engine_shared::store::{JobRecord, Store};
use engine_shared::{JobId, JobStatus, Namespace};
use engine_worker::Worker;

use crate::client::ApiClient;
use crate::services;
use crate::test_kinds::register_test_kinds;
use crate::wait::wait_until;
use crate::worker_process::WorkerProcess;

/// How to set a fleet up; `Default` is an API and one in-process worker on the real servers.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Replaces the broker URL (e.g. a proxy's) for the API only.
    pub api_amqp_url: Option<String>,
    /// Replaces the database URL (e.g. a proxy's) for the API only.
    pub api_database_url: Option<String>,
    /// Start an in-process worker.
    pub worker: bool,
    pub worker_concurrency: u16,
    /// Extra TOML appended to the generated settings.
    pub extra_toml: String,
    pub webhook_secret: Option<String>,
    /// How many namespaces (tenants) the one API and worker serve.
    pub namespaces: usize,
    /// `retry.delivery_limit`: deliveries after which a crash-looping job is buried.
    pub delivery_limit: u32,
    /// Replaces the Redis URL (e.g. a proxy's) for the whole fleet.
    pub redis_url: Option<String>,
    /// Replaces the Redis URL (e.g. a TLS proxy's) for the workers only, over `redis_url`.
    pub worker_redis_url: Option<String>,
    /// `api.submit_rate_per_sec` and `api.submit_burst`.
    pub submit_rate: Option<(u32, u32)>,
    /// Replaces the broker URL (e.g. a proxy's) for the workers only.
    pub worker_amqp_url: Option<String>,
    /// Replaces the database URL (e.g. a proxy's) for the workers only (the test's own
    /// reads stay direct).
    pub worker_database_url: Option<String>,
    /// The in-process worker serves `/healthz` and `/readyz` on a free port
    /// ([`TestFleet::worker_health`]).
    pub worker_health: bool,
    /// The URL of a transaction-mode pooler (a [`crate::PgBouncer`]) through which the API
    /// and the workers reach PostgreSQL, with `database.pooler = "transaction"`. The test's
    /// own reads stay direct.
    pub transaction_pooler: Option<String>,
    /// `relay.publish_grace_ms`: how long the sweeper leaves a queued job to the fast path
    /// before publishing it itself (a duplicate if the fast path's stamp was merely late).
    pub publish_grace_ms: u64,
    /// Turns storage on with this S3 endpoint (the test server's, or a proxy's): attempt
    /// logs and artifacts. Off by default.
    pub s3_endpoint: Option<String>,
    /// The first namespace's name (and vhost) instead of a fresh one: for a vhost prepared
    /// elsewhere, e.g. on a [`crate::PrivateBroker`].
    pub namespace_name: Option<String>,
    /// `amqp.consumer_timeout_secs`: must match the broker's `consumer_timeout`.
    pub consumer_timeout_secs: u64,
    /// Serve `/metrics` and the detailed `/readyz` on a port of their own
    /// (`api.admin_listen`), reached through [`TestFleet::admin`].
    pub admin_listen: bool,
    /// `egress.allow`. By default the test receivers' address, [`RECEIVER_HOST`]: they
    /// never listen on 127.0.0.1, which the services use and the policy always refuses.
    pub egress_allow: Vec<String>,
    /// Extra TOML lines for each namespace's own `[namespaces.<name>]` table, by index
    /// (e.g. `weight = 2`); namespaces past the end get none.
    pub namespace_toml: Vec<String>,
    /// `api.read_timeout_ms`: how long a tenant's search may run.
    pub read_timeout_ms: Option<u64>,
    /// `api.body_limit_bytes`: 64 KiB unless a test needs bodies near the args cap.
    pub body_limit_bytes: usize,
}

/// Where the tests' webhook receivers listen: loopback, but not the services' address.
pub const RECEIVER_HOST: &str = "127.0.0.2";

impl FleetOptions {
    /// Storage on, against the test S3 server.
    pub fn with_storage(self) -> Self {
        Self {
            s3_endpoint: services::s3_settings().endpoint,
            ..self
        }
    }
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            api_amqp_url: None,
            api_database_url: None,
            worker: true,
            worker_concurrency: 8,
            extra_toml: String::new(),
            webhook_secret: None,
            namespaces: 1,
            delivery_limit: 20,
            redis_url: None,
            worker_redis_url: None,
            submit_rate: None,
            s3_endpoint: None,
            worker_amqp_url: None,
            worker_database_url: None,
            worker_health: false,
            transaction_pooler: None,
            publish_grace_ms: 300,
            namespace_name: None,
            consumer_timeout_secs: 1800,
            admin_listen: false,
            egress_allow: vec![RECEIVER_HOST.to_owned()],
            namespace_toml: Vec::new(),
            read_timeout_ms: None,
            body_limit_bytes: 65_536,
        }
    }
}

/// One namespace of the fleet and a client holding its key.
pub struct Tenant {
    pub namespace: Namespace,
    pub key: String,
    pub client: ApiClient,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("task panicked")
            .expect("service failed");
    }
}

pub struct TestFleet {
    /// Every namespace; the first is also `namespace`, `key` and `client`.
    pub tenants: Vec<Tenant>,
    pub namespace: Namespace,
    pub key: String,
    pub client: ApiClient,
    pub store: Store,
    /// The settings file worker processes are started with.
    pub config_path: PathBuf,
    settings_text: String,
    api: Option<Running>,
    worker: Option<Running>,
    /// More API replicas (same namespaces and database), for tests of what replicas share.
    replicas: Vec<Running>,
    /// Where the in-process worker serves its health endpoints
    /// ([`FleetOptions::worker_health`]).
    pub worker_health: Option<std::net::SocketAddr>,
    /// A client without a key for the API's admin endpoints ([`FleetOptions::admin_listen`]).
    pub admin: Option<ApiClient>,
}

/// Whether a registry may hold `test.abort`, which ends the process that runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortKind {
    /// The API (which only validates) and `engine-test-worker` processes.
    Included,
    /// An in-process worker: a `test.abort` job there would kill the test binary, so it is
    /// unknown (poison) instead.
    Excluded,
}

/// The registry tests run with: the built-in kinds plus [`crate::test_kinds`].
pub fn test_registry(deps: JobDeps, abort: AbortKind) -> Registry {
    let mut registry = register_all(deps).expect("built-in kinds register");
    register_test_kinds(&mut registry, abort == AbortKind::Included).expect("test kinds register");
    registry
}

/// What the built-in kinds need, built from `settings` as a worker builds it, with the
/// test's webhook secret for `namespace`, if any, over the settings' own.
async fn deps_for(
    settings: &Settings,
    webhook_secret: Option<&str>,
    namespace: &Namespace,
) -> JobDeps {
    let mut deps = JobDeps::for_fleet(settings).await.unwrap();
    if let Some(secret) = webhook_secret {
        deps.webhook_secrets.insert(
            namespace.clone(),
            secrecy::SecretString::from(secret.to_owned()),
        );
    }
    deps
}

fn settings_text(
    namespaces: &[String],
    database_url: &str,
    amqp_url: &str,
    redis_url: &str,
    options: &FleetOptions,
) -> String {
    let secret = options
        .webhook_secret
        .as_ref()
        .map(|s| format!("webhook_signing_secret = \"{s}\"\n"))
        .unwrap_or_default();
    let first_namespace = namespaces.first().cloned().unwrap_or_default();
    let namespaces: String = namespaces
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let own = options.namespace_toml.get(index).map_or("", String::as_str);
            format!("[namespaces.{name}]\n{secret}{own}\n")
        })
        .collect();
    let storage = options
        .s3_endpoint
        .as_ref()
        .map(|endpoint| {
            let s3 = services::s3_settings();
            format!(
                "[storage]\nendpoint_url = \"{endpoint}\"\naccess_key_id = \"{}\"\n\
                 secret_access_key = \"{}\"\nbucket = \"{}\"\nforce_path_style = true\n\
                 [logs]\nspool_dir = \"{}\"\nspool_retry_secs = 1\n",
                s3.access_key_id.expose_secret(),
                s3.secret_access_key.expose_secret(),
                s3.bucket,
                std::env::temp_dir()
                    .join(format!("{first_namespace}-spool"))
                    .display()
            )
        })
        .unwrap_or_default();
    format!(
        r#"
[database]
url = "{database_url}"
max_connections = 6
acquire_timeout_ms = 1500
{pooler}
[amqp]
url = "{amqp_url}"
consumer_timeout_secs = {consumer_timeout_secs}
[api]
listen = "127.0.0.1:0"
body_limit_bytes = {body_limit_bytes}
key_cache_secs = 1
max_batch = {max_batch}
submit_rate_per_sec = {submit_rate}
submit_burst = {submit_burst}
{admin_listen}
{read_timeout}
[redis]
url = "{redis_url}"
timeout_ms = 300
[worker]
concurrency = {concurrency}
grace_period_secs = 10
{worker_health}
[relay]
sweep_interval_ms = 100
publish_grace_ms = {publish_grace_ms}
[retry]
base_delay_ms = 100
max_delay_ms = 500
tiers_ms = [200, 500]
delivery_limit = {delivery_limit}
[egress]
allow = {egress_allow:?}
{storage}
{namespaces}
{extra}
"#,
        concurrency = options.worker_concurrency,
        publish_grace_ms = options.publish_grace_ms,
        pooler = if options.transaction_pooler.is_some() {
            "pooler = \"transaction\""
        } else {
            ""
        },
        worker_health = if options.worker_health {
            "health_listen = \"127.0.0.1:0\"\nliveness_grace_secs = 30"
        } else {
            ""
        },
        delivery_limit = options.delivery_limit,
        body_limit_bytes = options.body_limit_bytes,
        consumer_timeout_secs = options.consumer_timeout_secs,
        submit_rate = options.submit_rate.map_or(0, |rate| rate.0),
        submit_burst = options.submit_rate.map_or(1_000, |rate| rate.1),
        max_batch = options.submit_rate.map_or(1_000, |rate| rate.1),
        egress_allow = options.egress_allow,
        admin_listen = if options.admin_listen {
            "admin_listen = \"127.0.0.1:0\""
        } else {
            ""
        },
        read_timeout = options
            .read_timeout_ms
            .map(|ms| format!("read_timeout_ms = {ms}"))
            .unwrap_or_default(),
        extra = options.extra_toml,
    )
}

static MIGRATED: OnceLock<()> = OnceLock::new();

impl TestFleet {
    pub async fn start(options: FleetOptions) -> Self {
        engine_shared::tls::install_crypto_provider();
        engine_shared::telemetry::init(Default::default(), "warn,engine_worker=info");
        let names: Vec<String> = (0..options.namespaces.max(1))
            .map(|index| match (&options.namespace_name, index) {
                (Some(name), 0) => name.clone(),
                _ => services::unique_namespace(),
            })
            .collect();
        for name in &names {
            services::create_vhost(name).await;
        }
        let name = names[0].clone();
        let namespace = Namespace::parse(&name).unwrap();

        let base_text = settings_text(
            &names,
            options
                .worker_database_url
                .as_deref()
                .or(options.transaction_pooler.as_deref())
                .unwrap_or(&services::database_url()),
            options
                .worker_amqp_url
                .as_deref()
                .unwrap_or(&services::amqp_url()),
            options
                .worker_redis_url
                .as_deref()
                .or(options.redis_url.as_deref())
                .unwrap_or(&services::redis_url()),
            &options,
        );
        let mut settings = Settings::from_toml(&base_text).expect("test settings are valid");
        // The test reads rows directly, never through a worker's proxy.
        settings.database.url = secrecy::SecretString::from(services::database_url());
        settings.database.pooler = Pooler::None;
        let store = Store::connect_lazy(&settings.database).unwrap();
        if MIGRATED.get().is_none() {
            store.migrate().await.expect("migrating the test database");
            let _ = MIGRATED.set(());
        }
        let mut keys = Vec::new();
        for name in &names {
            let tenant = Namespace::parse(name).unwrap();
            keys.push(
                store
                    .create_api_key(&tenant, "test")
                    .await
                    .unwrap()
                    .key
                    .expose_secret()
                    .to_owned(),
            );
        }
        let key = keys[0].clone();

        let config_path = std::env::temp_dir().join(format!("{name}.toml"));
        std::fs::write(&config_path, &base_text).unwrap();

        let api_text = settings_text(
            &names,
            options
                .api_database_url
                .as_deref()
                .or(options.transaction_pooler.as_deref())
                .unwrap_or(&services::database_url()),
            options
                .api_amqp_url
                .as_deref()
                .unwrap_or(&services::amqp_url()),
            options
                .redis_url
                .as_deref()
                .unwrap_or(&services::redis_url()),
            &options,
        );
        let api_settings = Settings::from_toml(&api_text).unwrap();
        let application = Application::build(
            api_settings.clone(),
            test_registry(
                deps_for(&api_settings, options.webhook_secret.as_deref(), &namespace).await,
                AbortKind::Included,
            ),
        )
        .await
        .expect("the API builds");
        let address = application.local_addr();
        let admin = application
            .admin_addr()
            .map(|admin| ApiClient::new(admin, None));
        let stop = CancellationToken::new();
        let api = Running {
            task: tokio::spawn(application.run_until_stopped(stop.clone())),
            stop,
        };
        let tenants = names
            .iter()
            .zip(&keys)
            .map(|(name, key)| Tenant {
                namespace: Namespace::parse(name).unwrap(),
                key: key.clone(),
                client: ApiClient::new(address, Some(key.clone())),
            })
            .collect();
        let mut fleet = Self {
            tenants,
            client: ApiClient::new(address, Some(key.clone())),
            namespace,
            key,
            store,
            config_path,
            settings_text: base_text,
            api: Some(api),
            worker: None,
            replicas: Vec::new(),
            worker_health: None,
            admin,
        };
        if options.worker {
            fleet.start_worker(options.webhook_secret.as_deref()).await;
        }
        fleet
    }

    /// Starts (another) in-process worker for this namespace.
    pub async fn start_worker(&mut self, webhook_secret: Option<&str>) {
        let settings = Settings::from_toml(&self.settings_text).unwrap();
        let registry = test_registry(
            deps_for(&settings, webhook_secret, &self.namespace).await,
            AbortKind::Excluded,
        );
        let worker = Worker::build(settings, registry)
            .await
            .expect("the worker builds");
        self.worker_health = worker.health_addr();
        let stop = CancellationToken::new();
        self.worker = Some(Running {
            task: tokio::spawn(worker.run_until_stopped(stop.clone())),
            stop,
        });
    }

    /// Starts one more in-process worker beside the first (fleet-wide limits are shared).
    pub async fn start_extra_worker(&mut self) {
        let settings = Settings::from_toml(&self.settings_text).unwrap();
        let registry = test_registry(JobDeps::default(), AbortKind::Excluded);
        let worker = Worker::build(settings, registry)
            .await
            .expect("the extra worker builds");
        let stop = CancellationToken::new();
        self.replicas.push(Running {
            task: tokio::spawn(worker.run_until_stopped(stop.clone())),
            stop,
        });
    }

    /// Stops the in-process worker (graceful drain) and waits for it.
    pub async fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop().await;
        }
    }

    /// Starts another API replica in-process (its own relay and scheduler), unreachable
    /// over HTTP: it matters for what it does in the background.
    pub async fn start_api_replica(&mut self) {
        let settings = Settings::from_toml(&self.settings_text).unwrap();
        let application = Application::build(
            settings,
            test_registry(JobDeps::default(), AbortKind::Included),
        )
        .await
        .expect("the API replica builds");
        let stop = CancellationToken::new();
        self.replicas.push(Running {
            task: tokio::spawn(application.run_until_stopped(stop.clone())),
            stop,
        });
    }

    /// Stops the in-process API (its HTTP server, relay and scheduler) and waits for it;
    /// the worker goes on. For a test that runs the API as a process instead.
    pub async fn stop_api(&mut self) {
        if let Some(api) = self.api.take() {
            api.stop().await;
        }
    }

    /// Stops everything in-process and waits for it.
    pub async fn stop(mut self) {
        self.stop_worker().await;
        for replica in self.replicas.drain(..) {
            replica.stop().await;
        }
        if let Some(api) = self.api.take() {
            api.stop().await;
        }
    }

    /// How many of this namespace's jobs are in `status`, read directly from PostgreSQL.
    pub async fn count_in_status(&self, status: JobStatus) -> i64 {
        self.count_in(&self.namespace, status).await
    }

    /// How many of `namespace`'s jobs are in `status`, read directly from PostgreSQL.
    pub async fn count_in(&self, namespace: &Namespace, status: JobStatus) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE namespace = $1 AND status = $2")
            .bind(namespace.as_str())
            .bind(status)
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }

    /// The job's row, read directly from PostgreSQL.
    pub async fn record(&self, id: &str) -> JobRecord {
        self.record_in(&self.namespace, id)
            .await
            .expect("the job exists")
    }

    /// The job's row if it exists in `namespace`.
    pub async fn record_in(&self, namespace: &Namespace, id: &str) -> Option<JobRecord> {
        let id: JobId = id.parse().unwrap();
        self.store.get_job(namespace, id).await.unwrap()
    }

    /// Waits until job `id` has `status`, and returns its row.
    pub async fn wait_for_status(
        &self,
        id: &str,
        status: JobStatus,
        deadline: Duration,
    ) -> JobRecord {
        wait_until(
            &format!("job {id} to be {}", status.as_str()),
            deadline,
            || async {
                let record = self.record(id).await;
                (record.status == status).then_some(record)
            },
        )
        .await
    }

    /// Submits `job` and waits until a worker runs it; returns its id.
    pub async fn submit_until_running(&self, job: &serde_json::Value) -> String {
        let id = self.client.submit(job).await.id();
        self.wait_for_status(&id, JobStatus::Running, Duration::from_secs(30))
            .await;
        id
    }

    /// Starts a real `engine-worker` process for this namespace.
    pub fn spawn_worker_process(&self, concurrency: u16, grace_secs: u64) -> WorkerProcess {
        self.spawn_worker_process_with_env(concurrency, grace_secs, &[])
    }

    /// Starts a real `engine-worker` process for this namespace with extra environment
    /// variables, which win over the settings file (`SSL_CERT_FILE`, `ENGINE__…`).
    pub fn spawn_worker_process_with_env(
        &self,
        concurrency: u16,
        grace_secs: u64,
        env: &[(&str, &str)],
    ) -> WorkerProcess {
        WorkerProcess::spawn_binary(
            "engine-worker",
            &self.config_path,
            &self.namespace,
            concurrency,
            grace_secs,
            env,
        )
    }

    /// Starts a real `engine-test-worker` process (the worker runtime with the test kinds,
    /// `test.abort` included) for this namespace.
    pub fn spawn_test_worker_process(&self, concurrency: u16) -> WorkerProcess {
        WorkerProcess::spawn_binary(
            "engine-test-worker",
            &self.config_path,
            &self.namespace,
            concurrency,
            10,
            &[],
        )
    }
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_path);
        for component in self
            .api
            .iter()
            .chain(self.worker.iter())
            .chain(self.replicas.iter())
        {
            component.stop.cancel();
        }
        for tenant in &self.tenants {
            services::delete_vhost_later(tenant.namespace.as_str());
        }
    }
}
