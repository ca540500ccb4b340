//! `engine-bench`: tl-engine's end-to-end benchmark against the real servers.
//!
//! Runs the release `engine-api` and `engine-worker` binaries as child processes and
//! measures, in one run: a raw lapin loop on the same broker (the baseline), N jobs
//! submitted in batches, M jobs submitted one-by-one, and jobs paced at a fixed rate
//! (latency). Each tl-engine scenario gets a fresh fleet, namespace and vhost, so its
//! round trips and peak RSS are its own. `bin/bench` builds everything and runs this.
//!
//! Modules: [`cli`] flags; [`environment`] what scenarios share; [`machine`] the header's
//! facts; [`management`] vhosts; [`settings`] the fleet's TOML; [`process`] one server
//! process; [`fleet`] API + workers; [`submit`] HTTP load; [`outcome`] reading job rows;
//! [`cpu`] CPU accounting; [`scenario`] one scenario end to end; [`raw`] the lapin
//! baseline; [`report`] the printed figures and target verdicts; [`sys`] libc calls;
//! [`backup`] the separate `--backup` mode (backup and restore memory and speed);
//! [`scale`] the separate `--scale` mode (1, 2, 4 workers on one vhost, and a kill);
//! [`pooler`] the separate `--pooler` mode (the scenarios direct and through PgBouncer);
//! [`chaos`] the separate `--chaos` mode (jobs through killed workers and restarted servers).

mod backup;
mod chaos;
mod cli;
mod cpu;
mod environment;
mod fleet;
mod machine;
mod management;
mod outcome;
mod pooler;
mod process;
mod raw;
mod report;
mod scale;
mod scenario;
mod settings;
mod submit;
mod sys;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Args;
use crate::environment::Environment;
use crate::machine::Machine;
use crate::raw::RawParams;
use crate::scenario::Load;

#[tokio::main]
async fn main() -> ExitCode {
    engine_shared::tls::install_crypto_provider();
    let args = Args::parse();
    if args.backup {
        return match backup::run(&args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("engine-bench: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let env = match Environment::prepare(&args).await {
        Ok(env) => env,
        Err(error) => {
            eprintln!("engine-bench: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = if args.scale {
        scale::run(&args, &env).await
    } else if args.chaos {
        chaos::run(&args, &env).await
    } else if args.pooler {
        pooler::run(&args, &env).await
    } else {
        run(&args, &env).await
    };
    match outcome {
        Ok(()) => {
            if args.keep_logs {
                eprintln!("settings and logs kept in {}", env.run_dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&env.run_dir);
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("engine-bench: {error:#}");
            eprintln!("settings and logs kept in {}", env.run_dir.display());
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args, env: &Environment) -> anyhow::Result<()> {
    let machine = Machine::probe(env.pool(), env.management.version().await, &env.run_dir).await?;
    report::header(&machine, env, args);

    let raw = if args.skip_raw {
        None
    } else {
        let params = RawParams {
            messages: args.raw_messages,
            window: args.raw_window,
            prefetch: env.worker_concurrency,
        };
        let result = raw::run(env, &params).await?;
        report::raw(&result, args.raw_window, env.worker_concurrency);
        Some(result)
    };

    let mut namespaces = Vec::new();
    let outcome = async {
        let (mut batched, mut single, mut paced) = (None, None, None);
        for planned in scenario::planned(args) {
            let result = scenario::run(env, planned.label, planned.load).await?;
            namespaces.push(result.namespace.clone());
            let (slot, baseline) = match planned.load {
                Load::Batched { .. } => (&mut batched, raw.as_ref()),
                Load::Single { .. } => (&mut single, raw.as_ref()),
                // Paced jobs/s is the pace, not a rate to compare with the raw loop's.
                Load::Paced { .. } => (&mut paced, None),
            };
            report::scenario(&planned.title, &result, baseline);
            *slot = Some(result);
        }
        report::targets(&report::Results {
            raw: raw.as_ref(),
            batched: batched.as_ref(),
            single: single.as_ref(),
            paced: paced.as_ref(),
            latency_rate: args.latency_rate,
        });
        anyhow::Ok(())
    }
    .await;
    // The rows are namespaced, but the bench database need not grow run after run.
    for namespace in &namespaces {
        outcome::delete_rows(env.pool(), namespace).await?;
    }
    outcome
}
