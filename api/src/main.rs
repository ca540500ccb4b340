//! `engine-api`: parse the command line, then run it.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    engine_shared::tls::install_crypto_provider();
    match engine_api::cli::Cli::parse().run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("engine-api: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
