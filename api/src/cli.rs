//! The `engine-api` command line: serve the API, apply migrations, manage API keys.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

use engine_jobs::{JobDeps, register_all};
use engine_shared::config::Settings;
use engine_shared::store::Store;
use engine_shared::{Namespace, shutdown, telemetry};

use crate::Application;

#[derive(Debug, Parser)]
#[command(name = "engine-api", about = "tl-engine's HTTP API and admin commands")]
pub struct Cli {
    /// A TOML settings file (also ENGINE_CONFIG); environment variables override it.
    #[arg(long, env = "ENGINE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API and run the outbox relay (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key for a namespace and print it once on stdout.
    Create {
        #[arg(long)]
        namespace: String,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a key by its id.
    Revoke { id: uuid::Uuid },
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        let settings = Settings::load(self.config.as_deref())?;
        telemetry::init(
            settings.log_format,
            "info,tower_http=warn,sqlx=warn,lapin=warn",
        );
        match self.command.unwrap_or(Command::Serve) {
            Command::Serve => {
                let registry =
                    register_all(JobDeps::default()).context("building the job registry")?;
                let application = Application::build(settings, registry).await?;
                application.run_until_stopped(shutdown::on_signal()).await
            }
            Command::Migrate => {
                let store = Store::connect_lazy(&settings.database)?;
                store.migrate().await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Command::Keys(KeysCommand::Create { namespace, label }) => {
                let namespace = Namespace::parse(&namespace)?;
                if settings.namespace(&namespace).is_none() {
                    anyhow::bail!("namespace {namespace} is not configured under [namespaces]");
                }
                let store = Store::connect_lazy(&settings.database)?;
                let key = store.create_api_key(&namespace, &label).await?;
                eprintln!(
                    "API key {} for namespace {} (shown once; store it now):",
                    key.id, key.namespace
                );
                println!("{}", key.key.expose_secret());
                Ok(())
            }
            Command::Keys(KeysCommand::Revoke { id }) => {
                let store = Store::connect_lazy(&settings.database)?;
                if store.revoke_api_key(id).await? {
                    eprintln!("revoked {id}");
                    Ok(())
                } else {
                    anyhow::bail!("no active key with id {id}")
                }
            }
        }
    }
}
