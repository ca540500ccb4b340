//! `engine-worker`: load settings, build the worker, run until SIGTERM, drain, exit 0.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use engine_jobs::{JobDeps, register_all};
use engine_shared::config::Settings;
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
    let deps = JobDeps::for_fleet(&settings).await?;
    let registry = register_all(deps).context("building the job registry")?;
    let worker = Worker::build(settings, registry).await?;
    worker.run_until_stopped(shutdown::on_signal()).await
}
