//! `engine-worker`: load settings, build the worker, run until SIGTERM, drain, exit 0.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use engine_jobs::{EgressClient, JobDeps, register_all};
use engine_shared::config::{DatabaseSettings, Settings};
use engine_shared::objects::ObjectStore;
use engine_shared::store::Store;
use engine_shared::{shutdown, telemetry, tls};
use engine_worker::Worker;

#[derive(Debug, Parser)]
#[command(name = "engine-worker", about = "tl-engine's stateless job worker")]
struct Cli {
    /// A TOML settings file (also ENGINE_CONFIG); environment variables override it.
    #[arg(long, env = "ENGINE_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tls::install_crypto_provider();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("engine-worker: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(settings.log_format, "info,sqlx=warn,lapin=warn");
    let deps = JobDeps {
        egress: EgressClient::for_fleet(&settings).await?,
        webhook_secrets: settings
            .namespaces
            .iter()
            .filter_map(|spec| Some((spec.name.clone(), spec.webhook_signing_secret.clone()?)))
            .collect(),
        // Its own small lazy pool: it connects only when a kind that reads the database
        // runs (an export, a backup), and never competes with the state transitions' pool.
        store: Some(Store::connect_lazy(&DatabaseSettings {
            max_connections: 2,
            ..settings.database.clone()
        })?),
        objects: settings.storage.as_ref().map(ObjectStore::new),
        backup: settings.backup.clone(),
    };
    let registry = register_all(deps).context("building the job registry")?;
    let worker = Worker::build(settings, registry).await?;
    worker.run_until_stopped(shutdown::on_signal()).await
}
