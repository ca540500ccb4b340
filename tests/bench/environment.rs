//! What every scenario shares: the servers' addresses, the store (for keys and for reading
//! job rows), the HTTP client, the management API, and where binaries and logs live.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rand::RngCore;
use secrecy::SecretString;

use engine_shared::config::{DatabaseSettings, Pooler};
use engine_shared::store::Store;

use crate::cli::Args;
use crate::management::Management;

#[derive(Clone)]
pub struct Environment {
    /// The fleets' database: the benchmark's own, or the same through a pooler.
    pub database_url: String,
    /// What `database_url` points at. The benchmark's own reads (`store`) are always direct.
    pub pooler: Pooler,
    pub amqp_url: String,
    pub store: Store,
    pub http: reqwest::Client,
    pub management: Management,
    /// Where engine-api and engine-worker are.
    pub bin_dir: PathBuf,
    /// Settings files and server logs of this run.
    pub run_dir: PathBuf,
    pub workers: u16,
    pub worker_concurrency: u16,
    pub db_max_connections: u32,
    /// Longest wait for one scenario's jobs.
    pub deadline: Duration,
    /// Jobs each fleet runs before the measured ones.
    pub warmup_jobs: usize,
    /// TOML appended to every fleet's settings.
    pub extra_settings: String,
    /// TOML keys for the fleet namespace's own `[namespaces.<ns>]` table (the `--chaos`
    /// mode's webhook signing secret); empty for the other modes.
    pub namespace_settings: String,
    /// The API's port: 0 for any free one (it logs the address it got), or a fixed one so
    /// that an API killed and started again answers at the same address (`--chaos`).
    pub api_port: u16,
}

impl Environment {
    /// Connects to PostgreSQL (applying migrations) and prepares the run directory.
    pub async fn prepare(args: &Args) -> anyhow::Result<Self> {
        let bin_dir = match &args.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()
                .context("locating engine-bench")?
                .parent()
                .context("engine-bench has no directory")?
                .to_path_buf(),
        };
        for binary in ["engine-api", "engine-worker"] {
            let path = bin_dir.join(binary);
            anyhow::ensure!(
                path.exists(),
                "{} is missing: run `cargo build --release --bins` (bin/bench does)",
                path.display()
            );
        }

        let store = Store::connect_lazy(&DatabaseSettings {
            url: SecretString::from(args.database_url.clone()),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
            migrate_on_start: false,
            pooler: Pooler::None,
        })?;
        store.migrate().await.context(
            "migrating the benchmark database (does it exist? bin/bench creates tl_engine_bench)",
        )?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .context("building the HTTP client")?;
        let management = Management::new(http.clone(), &args.management_url, &args.amqp_url)?;
        // Last, so a failed preparation leaves nothing behind.
        let run_dir = std::env::temp_dir().join(format!("engine-bench-{}", random_hex(4)));
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        Ok(Self {
            database_url: args.database_url.clone(),
            pooler: Pooler::None,
            amqp_url: args.amqp_url.clone(),
            store,
            http,
            management,
            bin_dir,
            run_dir,
            workers: args.workers.max(1),
            worker_concurrency: args.worker_concurrency.max(1),
            db_max_connections: args.db_max_connections,
            deadline: Duration::from_secs(args.deadline_secs),
            warmup_jobs: args.warmup_jobs,
            extra_settings: args.extra_settings.replace("\\n", "\n"),
            namespace_settings: String::new(),
            api_port: 0,
        })
    }

    /// The same environment with the fleets reaching PostgreSQL through the transaction-mode
    /// pooler at `url` (`database.pooler = "transaction"`); the benchmark's own reads, and
    /// the migrations, stay direct.
    pub fn through_pooler(&self, url: String) -> Self {
        Self {
            database_url: url,
            pooler: Pooler::Transaction,
            ..self.clone()
        }
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        self.store.pool()
    }
}

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}
