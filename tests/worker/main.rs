//! `engine-test-worker`: the real worker runtime with the test kinds registered, so
//! end-to-end tests can run kinds such as `test.abort` (which ends its process) in a
//! child process instead of the test binary. Not shipped: it lives in the tests crate.

use std::path::PathBuf;

use clap::Parser;

use engine_jobs::JobDeps;
use engine_shared::config::Settings;
use engine_shared::{shutdown, telemetry, tls};
use engine_tests::fleet::{AbortKind, test_registry};
use engine_worker::Worker;

#[derive(Debug, Parser)]
#[command(
    name = "engine-test-worker",
    about = "tl-engine's worker with the test job kinds"
)]
struct Cli {
    /// A TOML settings file (also ENGINE_CONFIG); environment variables override it.
    #[arg(long, env = "ENGINE_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tls::install_crypto_provider();
    let settings = Settings::load(Cli::parse().config.as_deref())?;
    telemetry::init(settings.log_format, "info,sqlx=warn,lapin=warn");
    // The kinds' clients as a production worker builds them, from the same settings.
    let registry = test_registry(JobDeps::for_fleet(&settings).await?, AbortKind::Included);
    let worker = Worker::build(settings, registry).await?;
    worker.run_until_stopped(shutdown::on_signal()).await
}
