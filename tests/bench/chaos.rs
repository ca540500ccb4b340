//! `engine-bench --chaos`: does every accepted job end, whatever crashes? One release fleet
//! — one `engine-api`, three `engine-worker`s, a fresh namespace and vhost, storage on an
//! S3 server of the run's own — runs a mix of `noop`, `sleep` and `webhook.deliver` jobs
//! (to a receiver in this process that fails a share of deliveries) while workers are
//! SIGKILLed every 2-5 s and the API, RabbitMQ, Redis, PostgreSQL and the S3 server are
//! each restarted once. A careful client resends every unanswered batch with the same
//! idempotency keys. After the last fault the run waits, polling PostgreSQL, until every
//! accepted job is final, then prints accepted, final by status, lost, stuck, duplicate
//! deliveries and how long recovery took; it fails if a job is lost or stuck.
//!
//! Modules: [`faults`] which faults, when, and the injector; [`servers`] restarts of the
//! machine's shared servers; [`s3`] the run's own S3 server; [`receiver`] the webhook
//! receiver; [`mix`] the jobs; [`client`] the careful client; [`audit`] the settle wait
//! and the final state; [`stuck`] which lost jobs nothing will move; [`logs`] the servers'
//! logs; [`settings`] the fleet's extra settings; [`report`] what is printed; [`wait`],
//! [`ports`] and [`files`] waiting, loopback ports and counting files.

mod audit;
mod client;
mod faults;
mod files;
mod logs;
mod mix;
mod ports;
mod receiver;
mod report;
mod s3;
mod servers;
mod settings;
mod stuck;
mod wait;

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

pub use faults::Fault;

use crate::cli::Args;
use crate::environment::{Environment, random_hex};
use crate::fleet::{Fleet, WorkerSetup};
use crate::machine::Machine;
use crate::outcome;
use crate::process::LOG_FILTER;
use audit::{FinalState, Settled};
use client::{CarefulClient, Submission};
use faults::{FaultLog, Injector};
use mix::Mix;
use receiver::{Receiver, Tally};
use s3::S3Server;

/// Workers of the fleet; a killed one is replaced at once.
const WORKERS: u16 = 3;

/// The workers' `RUST_LOG`: the default, plus the per-job debug lines of
/// `worker/src/execution/` the report tallies (limiter deferrals, skipped copies,
/// refused outcomes): one or two lines more per job.
fn worker_log_filter() -> String {
    format!("{LOG_FILTER},engine_worker::execution=debug")
}

/// The bucket of the run's own S3 server.
const BUCKET: &str = "tl-engine-chaos";

/// How the key of an attempt's log ends (`<ns>/logs/<date>/<job>/<attempt>.log.gz`).
const ATTEMPT_LOG_SUFFIX: &str = ".log.gz";

/// The share of the fault phase the submission is spread over: the last jobs are accepted
/// while faults still happen.
const SUBMIT_SHARE: f64 = 0.9;

/// The span the client spreads its batches over.
fn submit_spread(args: &Args) -> Duration {
    Duration::from_secs(args.chaos_seconds).mul_f64(SUBMIT_SHARE)
}

pub async fn run(args: &Args, env: &Environment) -> anyhow::Result<()> {
    preflight(args, env)?;
    let machine = Machine::probe(env.pool(), env.management.version().await, &env.run_dir).await?;
    let webhook_secret = random_hex(32);
    let receiver =
        Receiver::start(args.chaos_failure_percent, args.chaos_seed, &webhook_secret).await?;
    let mut s3 = S3Server::start(
        &env.run_dir,
        BUCKET,
        (&args.s3_access_key, &args.s3_secret_key),
        env.http.clone(),
    )
    .await?;
    let outcome = async {
        let env = fleet_environment(args, env, &s3, &webhook_secret)?;
        let addresses = report::Addresses {
            receiver: &receiver.url,
            s3: &s3.endpoint(),
        };
        report::header(&machine, args, &env, &addresses);
        with_fleet(args, &env, &mut s3, &receiver).await
    }
    .await;
    let stopped = s3.stop().await;
    outcome?;
    stopped
}

/// `logs.spool_dir` of the run's workers, shared by them all, in the run directory.
fn spool_dir(env: &Environment) -> std::path::PathBuf {
    env.run_dir.join("spool")
}

/// The environment of the run's fleet: the bench's, with the chaos settings, a fixed API
/// port and the run's sizes.
fn fleet_environment(
    args: &Args,
    env: &Environment,
    s3: &S3Server,
    webhook_secret: &str,
) -> anyhow::Result<Environment> {
    let spool_dir = spool_dir(env);
    let tables = settings::tables(&settings::Storage {
        endpoint: &s3.endpoint(),
        bucket: BUCKET,
        access_key: &args.s3_access_key,
        secret_key: &args.s3_secret_key,
        spool_dir: &spool_dir.to_string_lossy(),
    });
    Ok(Environment {
        workers: WORKERS,
        worker_concurrency: args.chaos_worker_concurrency.max(1),
        extra_settings: format!("{tables}\n{}", env.extra_settings),
        namespace_settings: settings::namespace_keys(webhook_secret),
        api_port: ports::free_port()?,
        ..env.clone()
    })
}

/// Starts the fleet, runs the faults and the load on it, stops it whatever happened
/// (deleting its vhost unless `--keep-logs`), reports, and deletes its rows if the run
/// passed without `--keep-logs`.
async fn with_fleet(
    args: &Args,
    env: &Environment,
    s3: &mut S3Server,
    receiver: &Receiver,
) -> anyhow::Result<()> {
    let workers = WorkerSetup {
        count: env.workers,
        concurrency: env.worker_concurrency,
        log_filter: worker_log_filter(),
    };
    let mut fleet = Fleet::start_with(env, "chaos", workers).await?;
    let namespace = fleet.namespace.clone();
    println!(
        "namespace   {namespace} (its own vhost, Redis prefix and S3 folder); API at {}",
        fleet.base_url
    );
    println!();
    let observed = observe(args, env, &mut fleet, s3, receiver).await;
    let stopped = if args.keep_logs {
        fleet.stop_keeping_vhost().await
    } else {
        fleet.stop(env).await
    };
    let passed = match &observed {
        Ok(observed) => conclude(env, &namespace, observed),
        Err(_) => false,
    };
    if let Err(error) = &stopped {
        println!("[fleet] did not stop cleanly: {error:#}");
    }
    observed?;
    if passed && !args.keep_logs {
        outcome::delete_rows(env.pool(), &namespace).await?;
    } else {
        println!("the rows of namespace {namespace} are kept in the bench database");
    }
    if args.keep_logs {
        println!(
            "the vhost {namespace} is kept, with its queues (delete it through the management API)"
        );
    }
    stopped?;
    anyhow::ensure!(
        passed,
        "the chaos run failed: a job lost or stuck, or a fault not carried out (see above)"
    );
    Ok(())
}

/// What the run observed, for the report.
struct Observed {
    submission: Submission,
    faults: FaultLog,
    settled: Settled,
    state: FinalState,
    receiver: Tally,
    /// Attempt logs found in the run's S3 folder.
    stored_logs: usize,
}

/// The fault phase with the submission running through it, then the settle wait and the
/// audit.
async fn observe(
    args: &Args,
    env: &Environment,
    fleet: &mut Fleet,
    s3: &mut S3Server,
    receiver: &Receiver,
) -> anyhow::Result<Observed> {
    let client = CarefulClient::new(&fleet.base_url, &fleet.key)?;
    let mix = Mix::new(&random_hex(4), &receiver.url);
    let settle = Duration::from_secs(args.chaos_settle_secs);
    let plan = client::Plan {
        jobs: args.chaos_jobs,
        batch_size: args.chaos_batch_size,
        spread: submit_spread(args),
        give_up_after: settle,
    };
    let namespace = fleet.namespace.clone();
    println!("timeline (from the first submission)");
    let injector = Injector {
        env,
        fleet,
        s3,
        rng: StdRng::seed_from_u64(args.chaos_seed),
        started: Instant::now(),
        accepted: client.accepted.clone(),
        in_flight: client.in_flight.clone(),
    };
    let phase = Duration::from_secs(args.chaos_seconds);
    let (submission, faults) = tokio::join!(
        client.submit(&mix, &plan),
        injector.run(&args.chaos_faults, phase)
    );
    let submission = submission?;
    println!();
    report::submission(&submission, &faults);
    let settled = audit::wait_final(env.pool(), &namespace, submission.ids.len(), settle).await;
    report::settled(&settled, settle);
    let state = audit::audit(env.pool(), &env.management, &namespace, &submission.ids).await?;
    Ok(Observed {
        submission,
        faults,
        settled,
        state,
        receiver: receiver.tally(),
        stored_logs: s3.objects_ending_with(ATTEMPT_LOG_SUFFIX),
    })
}

/// Prints the results, the servers' warnings and the checks; true when they are met.
fn conclude(env: &Environment, namespace: &engine_shared::Namespace, observed: &Observed) -> bool {
    report::results(&report::Results {
        accepted: observed.submission.ids.len(),
        state: &observed.state,
        receiver: &observed.receiver,
        faults: &observed.faults,
    });
    let logs = logs::read(&env.run_dir, namespace);
    report::api_recoveries(
        logs.iter()
            .filter(|log| log.is_api())
            .flat_map(|log| &log.lines),
    );
    report::worker_paths(
        logs.iter()
            .filter(|log| !log.is_api())
            .flat_map(|log| &log.lines),
    );
    report::attempt_logs(
        logs.iter()
            .filter(|log| !log.is_api())
            .flat_map(|log| &log.lines),
        (observed.stored_logs, observed.state.starts),
        // After the fleet stopped: what no worker uploaded.
        files::count(&spool_dir(env), ""),
    );
    report::warnings(
        logs.iter()
            .flat_map(|log| log.lines.iter().map(|line| (log.name.as_str(), line))),
    );
    let met = report::checks(&observed.state);
    met && observed.settled.all_final && observed.faults.aborted.is_none()
}

/// Refuses a run that could not do what it is asked, before anything starts.
fn preflight(args: &Args, env: &Environment) -> anyhow::Result<()> {
    anyhow::ensure!(args.chaos_jobs > 0, "--chaos-jobs must be at least 1");
    anyhow::ensure!(
        (1..=1_000).contains(&args.chaos_batch_size),
        "--chaos-batch-size must be 1 to 1000 (api.max_batch)"
    );
    let needs: [(Fault, &[&str]); 3] = [
        (Fault::Rabbitmq, &["rabbitmqctl"]),
        (Fault::Redis, &["redis-cli", "redis-server"]),
        (Fault::Postgres, &["pg_ctlcluster"]),
    ];
    for (fault, programs) in needs {
        if !args.chaos_faults.contains(&fault) {
            continue;
        }
        for program in programs {
            anyhow::ensure!(
                servers::installed(program),
                "the {} fault needs `{program}`, which is not on the PATH",
                fault.name()
            );
        }
    }
    // The restart commands act on this machine's servers: the fleet must be using them.
    for (fault, url) in [
        (Fault::Rabbitmq, &env.amqp_url),
        (Fault::Postgres, &env.database_url),
    ] {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
            .unwrap_or_default();
        anyhow::ensure!(
            !args.chaos_faults.contains(&fault)
                || matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]"),
            "the {} fault restarts this machine's server, but the fleet uses {host}",
            fault.name()
        );
    }
    Ok(())
}
