//! A test's own fleet: a fresh namespace (vhost, rows, key), the API in-process on port 0,
//! a worker in-process or as real child processes — and teardown when it drops, which fails
//! the test if it left jobs unfinished it did not say it expects.
//!
//! - [`builder`]: [`FleetBuilder`], how a test sets its fleet up (settings included).
//! - [`unfinished`]: the look at the fleet's rows when it drops.

mod builder;
mod unfinished;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use engine_api::Application;
use engine_jobs::{Job, JobDeps, Registry, register_all};
use engine_shared::config::{Pooler, Settings};
use engine_shared::store::{JobRecord, Store};
use engine_shared::{JobId, JobStatus, Namespace};
use engine_worker::Worker;

pub use builder::FleetBuilder;

use crate::client::{ApiClient, JobOptions};
use crate::services;
use crate::test_kinds::register_test_kinds;
use crate::wait::wait_until;
use crate::worker_process::WorkerProcess;

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
    /// ([`crate::TestSettings::serve_worker_health`]).
    pub worker_health: Option<std::net::SocketAddr>,
    /// A client without a key for the API's admin endpoints
    /// ([`crate::TestSettings::serve_admin`]).
    pub admin: Option<ApiClient>,
    /// The test said it leaves jobs unfinished ([`TestFleet::expect_unfinished`]).
    unfinished_expected: AtomicBool,
}

/// How long a test waits for a job's status unless it says otherwise: far above what any
/// step takes, so only a stuck job reaches it.
pub const WAIT_DEADLINE: Duration = Duration::from_secs(30);

/// What [`TestFleet::launch`] starts: the namespaces, the settings files, and whether an
/// in-process worker runs.
struct Launch {
    names: Vec<String>,
    /// The settings of the workers (in-process and processes), and the base of the test's
    /// own store.
    worker_text: String,
    api_text: String,
    worker: bool,
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

/// What the built-in kinds need, built from `settings` as a worker builds it (each
/// namespace's webhook secret included).
async fn deps_for(settings: &Settings) -> JobDeps {
    JobDeps::for_fleet(settings)
        .await
        .expect("the kinds' dependencies build")
}

static MIGRATED: OnceLock<()> = OnceLock::new();

impl TestFleet {
    /// A fleet for one test: [`FleetBuilder`]'s defaults are one namespace, an API and an
    /// in-process worker against the test servers.
    pub fn builder<'a>() -> FleetBuilder<'a> {
        FleetBuilder::default()
    }

    /// Creates the namespaces' vhosts and keys, writes the workers' settings file, and
    /// starts the API (and the worker) in-process.
    async fn launch(launch: Launch) -> Self {
        engine_shared::tls::install_crypto_provider();
        engine_shared::telemetry::init(Default::default(), "warn,engine_worker=info");
        let Launch {
            names,
            worker_text: base_text,
            api_text,
            worker,
        } = launch;
        for name in &names {
            services::create_vhost(name).await;
        }
        let name = names[0].clone();
        let namespace = Namespace::parse(&name).unwrap();
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

        let api_settings = Settings::from_toml(&api_text).expect("API settings are valid");
        let application = Application::build(
            api_settings.clone(),
            test_registry(deps_for(&api_settings).await, AbortKind::Included),
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
            unfinished_expected: AtomicBool::new(false),
        };
        if worker {
            fleet.start_worker().await;
        }
        fleet
    }

    /// Says the test means to leave jobs unfinished (scheduled far ahead, waiting for a
    /// worker it never starts, running when it ends), so dropping the fleet does not fail
    /// it for them.
    pub fn expect_unfinished(&self) {
        self.unfinished_expected.store(true, Ordering::Relaxed);
    }

    /// The fleet's settings as its workers read them.
    pub fn settings(&self) -> Settings {
        Settings::from_toml(&self.settings_text).expect("the fleet's settings are valid")
    }

    /// Starts (another) in-process worker for the fleet's namespaces.
    pub async fn start_worker(&mut self) {
        let settings = Settings::from_toml(&self.settings_text).unwrap();
        let registry = test_registry(deps_for(&settings).await, AbortKind::Excluded);
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
        // The same kinds with the same clients as the first worker: a job it takes runs as
        // there.
        let registry = test_registry(deps_for(&settings).await, AbortKind::Excluded);
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
        let registry = test_registry(deps_for(&settings).await, AbortKind::Included);
        let application = Application::build(settings, registry)
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
    pub async fn record(&self, id: JobId) -> JobRecord {
        self.record_in(&self.namespace, id)
            .await
            .expect("the job exists")
    }

    /// The job's row if it exists in `namespace`.
    pub async fn record_in(&self, namespace: &Namespace, id: JobId) -> Option<JobRecord> {
        self.store.get_job(namespace, id).await.unwrap()
    }

    /// Waits until job `id` has `status` (within [`WAIT_DEADLINE`]), and returns its row.
    pub async fn wait_for(&self, id: JobId, status: JobStatus) -> JobRecord {
        self.wait_for_within(id, status, WAIT_DEADLINE).await
    }

    /// Waits until job `id` has `status`, failing after `deadline`; returns its row.
    pub async fn wait_for_within(
        &self,
        id: JobId,
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

    /// Submits a job of kind `K` with `options` and waits until a worker runs it; returns
    /// its id.
    pub async fn submit_until_running<K: Job>(&self, args: K::Args, options: JobOptions) -> JobId
    where
        K::Args: Serialize,
    {
        let id = self.client.submit_with::<K>(args, options).await;
        self.wait_for(id, JobStatus::Running).await;
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
        // A test that already fails needs no second failure; one that said it leaves jobs
        // behind is not looked at.
        if !self.unfinished_expected.load(Ordering::Relaxed) && !std::thread::panicking() {
            let namespaces = self.tenants.iter().map(|t| t.namespace.clone()).collect();
            unfinished::fail_if_any(namespaces);
        }
    }
}
