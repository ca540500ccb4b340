//! One scenario's fleet: a fresh namespace and vhost, an API key, the release `engine-api`
//! and its `engine-worker` processes — started, awaited, grown or cut by a worker (the
//! `--scale` and `--chaos` modes), its API killed and started again (`--chaos`), and stopped
//! with what they report (round trips, peak RSS, warnings).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use secrecy::ExposeSecret;
use serde_json::Value;

use engine_shared::Namespace;

use crate::environment::{Environment, random_hex};
use crate::process::{Killed, LOG_FILTER, ServerProcess, Stopped};
use crate::settings::FleetSettings;

/// How long a server may take to come up, and to exit after SIGTERM.
const START_DEADLINE: Duration = Duration::from_secs(30);
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// A running fleet serving one namespace.
pub struct Fleet {
    pub namespace: Namespace,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    pub key: String,
    /// The settings file every process of the fleet runs with, so that a worker added later
    /// runs with the same settings.
    config: PathBuf,
    api: ServerProcess,
    workers: Vec<ServerProcess>,
    /// Workers started so far, to number the next one (a killed worker keeps its number).
    started_workers: u16,
    /// API processes started so far, to give each its own log file.
    started_apis: u16,
    /// `RUST_LOG` of every worker, so that a worker added later logs the same lines.
    worker_log_filter: String,
}

/// The fleet's workers: how many it starts with, how many jobs each runs at once, and
/// what they log.
pub struct WorkerSetup {
    pub count: u16,
    /// `worker.concurrency`, also each worker's prefetch.
    pub concurrency: u16,
    /// Their `RUST_LOG`; [`LOG_FILTER`] unless the benchmark reads more of their lines.
    pub log_filter: String,
}

/// What the fleet's processes reported when stopped.
pub struct FleetReport {
    pub api: Stopped,
    pub workers: Vec<Stopped>,
}

impl FleetReport {
    /// PostgreSQL round trips of the API and every worker together.
    pub fn round_trips(&self) -> u64 {
        self.api.round_trips + self.workers.iter().map(|w| w.round_trips).sum::<u64>()
    }

    /// The largest peak RSS among the workers, in KiB.
    pub fn worker_peak_rss_kib(&self) -> u64 {
        self.workers
            .iter()
            .map(|w| w.peak_rss_kib)
            .max()
            .unwrap_or(0)
    }

    pub fn warnings(&self) -> impl Iterator<Item = (&str, &str)> {
        std::iter::once(&self.api)
            .chain(&self.workers)
            .flat_map(|s| s.warnings.iter().map(|w| (s.name.as_str(), w.as_str())))
    }
}

impl Fleet {
    /// Creates namespace `bench-<label>-<hex>` (vhost, key), starts the API and `--workers`
    /// workers and waits until the API answers `/healthz` and every worker consumes.
    pub async fn start(env: &Environment, label: &str) -> anyhow::Result<Self> {
        let workers = WorkerSetup {
            count: env.workers,
            concurrency: env.worker_concurrency,
            log_filter: LOG_FILTER.to_owned(),
        };
        Self::start_with(env, label, workers).await
    }

    /// [`Fleet::start`] with other workers than the flags say.
    pub async fn start_with(
        env: &Environment,
        label: &str,
        workers: WorkerSetup,
    ) -> anyhow::Result<Self> {
        let name = format!("bench-{label}-{}", random_hex(4));
        let namespace = Namespace::parse(&name).with_context(|| format!("namespace {name}"))?;
        env.management.create_vhost(&name).await?;
        match Self::start_in(env, namespace, workers).await {
            Ok(fleet) => Ok(fleet),
            Err(error) => {
                let _ = env.management.delete_vhost(&name).await;
                Err(error)
            }
        }
    }

    async fn start_in(
        env: &Environment,
        namespace: Namespace,
        workers: WorkerSetup,
    ) -> anyhow::Result<Self> {
        let config = env.run_dir.join(format!("{namespace}.toml"));
        let text = FleetSettings {
            database_url: &env.database_url,
            pooler: env.pooler,
            amqp_url: &env.amqp_url,
            namespace: namespace.as_str(),
            worker_concurrency: workers.concurrency,
            max_connections: env.db_max_connections,
            api_port: env.api_port,
            namespace_settings: &env.namespace_settings,
            extra: &env.extra_settings,
        }
        .toml();
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let key = env
            .store
            .create_api_key(&namespace, "bench")
            .await?
            .key
            .expose_secret()
            .to_owned();

        let (api, base_url) = start_api(env, &config, &namespace, 0).await?;
        let mut fleet = Self {
            namespace,
            base_url,
            key,
            config,
            api,
            workers: Vec::new(),
            started_workers: 0,
            started_apis: 1,
            worker_log_filter: workers.log_filter,
        };
        fleet.add_workers(env, workers.count).await?;
        Ok(fleet)
    }

    /// Starts `count` more workers with the fleet's settings (same namespace and vhost) and
    /// waits until each consumes.
    pub async fn add_workers(&mut self, env: &Environment, count: u16) -> anyhow::Result<()> {
        for _ in 0..count {
            let index = self.started_workers;
            let mut worker = ServerProcess::spawn(
                &format!("engine-worker#{index}"),
                &env.bin_dir.join("engine-worker"),
                &self.config,
                env.run_dir
                    .join(format!("{}-worker-{index}.log", self.namespace)),
                &self.worker_log_filter,
            )?;
            self.started_workers += 1;
            worker.wait_for_log("consuming", START_DEADLINE).await?;
            self.workers.push(worker);
        }
        Ok(())
    }

    /// Workers running now.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Kills the running worker at `position` (in start order) with SIGKILL, as a crash
    /// would; the fleet goes on with the others.
    pub async fn kill_worker(&mut self, position: usize) -> anyhow::Result<Killed> {
        anyhow::ensure!(
            position < self.workers.len(),
            "no worker at position {position}: {} running",
            self.workers.len()
        );
        self.workers.remove(position).kill().await
    }

    /// Kills the API with SIGKILL, as a crash would, then starts a new one with the same
    /// settings and waits until it answers `/healthz`. With a fixed `api_port` it answers
    /// at the same address; otherwise [`Fleet::base_url`] changes.
    pub async fn restart_api(&mut self, env: &Environment) -> anyhow::Result<Killed> {
        let killed = self.api.kill_in_place().await?;
        let index = self.started_apis;
        self.started_apis += 1;
        let (api, base_url) = start_api(env, &self.config, &self.namespace, index).await?;
        // The killed process's handle, already reaped, is dropped here.
        self.api = api;
        self.base_url = base_url;
        Ok(killed)
    }

    /// The name and the JSON log lines so far of each running worker.
    pub fn worker_logs(&self) -> Vec<(String, Vec<Value>)> {
        self.workers
            .iter()
            .map(|worker| (worker.name.clone(), worker.log_lines()))
            .collect()
    }

    /// Pids of the API and the workers, for CPU accounting.
    pub fn pids(&self) -> (i32, Vec<i32>) {
        (self.api.pid, self.workers.iter().map(|w| w.pid).collect())
    }

    /// Stops the workers (they drain), then the API, then deletes the vhost.
    pub async fn stop(self, env: &Environment) -> anyhow::Result<FleetReport> {
        let vhost = self.namespace.as_str().to_owned();
        let stopped = self.stop_keeping_vhost().await;
        let deleted = env.management.delete_vhost(&vhost).await;
        let report = stopped?;
        deleted?;
        Ok(report)
    }

    /// Stops the workers (they drain), then the API; the vhost and its queues stay, to be
    /// looked into (the `--chaos` mode's `--keep-logs`).
    pub async fn stop_keeping_vhost(self) -> anyhow::Result<FleetReport> {
        let mut workers = Vec::with_capacity(self.workers.len());
        let mut failure = None;
        for worker in self.workers {
            match worker.stop(STOP_DEADLINE).await {
                Ok(stopped) => workers.push(stopped),
                Err(error) => failure = failure.or(Some(error)),
            }
        }
        let api = self.api.stop(STOP_DEADLINE).await;
        if let Some(error) = failure {
            return Err(error);
        }
        Ok(FleetReport { api: api?, workers })
    }
}

/// Starts API process number `index` of the fleet (its log is `<ns>-api.log` for the
/// first, `<ns>-api-<index>.log` after) and waits until it answers `/healthz`; returns it
/// with its base URL.
async fn start_api(
    env: &Environment,
    config: &Path,
    namespace: &Namespace,
    index: u16,
) -> anyhow::Result<(ServerProcess, String)> {
    let (name, log) = match index {
        0 => ("engine-api".to_owned(), format!("{namespace}-api.log")),
        _ => (
            format!("engine-api#{index}"),
            format!("{namespace}-api-{index}.log"),
        ),
    };
    let mut api = ServerProcess::spawn(
        &name,
        &env.bin_dir.join("engine-api"),
        config,
        env.run_dir.join(log),
        LOG_FILTER,
    )?;
    let listening = api.wait_for_log("API listening", START_DEADLINE).await?;
    let address = listening["address"]
        .as_str()
        .context("the API's \"API listening\" line has no address")?;
    let base_url = format!("http://{address}");
    wait_healthy(&env.http, &base_url).await?;
    Ok((api, base_url))
}

/// Polls `GET /healthz` until it answers 200.
async fn wait_healthy(http: &reqwest::Client, base_url: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let answer = http.get(format!("{base_url}/healthz")).send().await;
        if matches!(&answer, Ok(response) if response.status().is_success()) {
            return Ok(());
        }
        if started.elapsed() > START_DEADLINE {
            return Err(match answer {
                Ok(response) => {
                    anyhow::anyhow!("GET {base_url}/healthz answered {}", response.status())
                }
                Err(error) => anyhow::Error::new(error).context(format!("GET {base_url}/healthz")),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
