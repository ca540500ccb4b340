//! `engine-bench --pooler`: what reaching PostgreSQL through a transaction-mode pooler
//! costs. The batched, one-by-one and paced scenarios each run twice, back to back, on fresh
//! fleets: once with the API and the worker connected to PostgreSQL directly, once through a
//! PgBouncer of the benchmark's own in transaction mode (`tests/src/pgbouncer.rs`) with
//! `database.pooler = "transaction"`, where every unit of work is a transaction of unnamed
//! statements (`shared/src/store/unit.rs`). The two are printed side by side as ratios
//! within the one run, because this disk's fsync time swings widely between runs. The
//! benchmark's own reads and the migrations stay direct (migrations refuse the pooler).
//! After the figures, the mode fails if a job of either route did not succeed exactly once
//! (one attempt, `finished_at` set, no `job_errors`), if a server logged a WARN or ERROR
//! line, or if the pooled fleets' transactions did not go through PgBouncer.

use chrono::Utc;

use engine_shared::config::Pooler;
use engine_tests::{PgBouncer, PgBouncerOptions};

use crate::cli::Args;
use crate::environment::Environment;
use crate::machine::Machine;
use crate::outcome::{self, Audit};
use crate::report::{self, verdict};
use crate::scenario::{self, Load, Planned, ScenarioResult};

const MIB: f64 = 1024.0;

pub async fn run(args: &Args, env: &Environment) -> anyhow::Result<()> {
    let machine = Machine::probe(env.pool(), env.management.version().await, &env.run_dir).await?;
    let server_connections = match args.pooler_server_connections {
        Some(connections) => connections,
        None => u16::try_from(fleet_connections(env.db_max_connections, env.workers))?,
    };
    let bouncer = PgBouncer::start_in_front_of(
        &env.database_url,
        PgBouncerOptions {
            server_connections,
            ignore_startup_parameters: false,
        },
    )?;
    header(&machine, env, args, server_connections);
    let pooled_env = env.through_pooler(bouncer.database_url());

    let mut namespaces = Vec::new();
    let outcome = async {
        let mut pairs = Vec::new();
        for planned in scenario::planned(args) {
            let direct = measure(env, &planned, None, &mut namespaces).await?;
            let pooled = measure(&pooled_env, &planned, Some(&bouncer), &mut namespaces).await?;
            pairs.push(Pair {
                planned,
                direct,
                pooled,
            });
        }
        compare(&pairs);
        check(&pairs)
    }
    .await;
    // The rows are namespaced, but the bench database need not grow run after run.
    for namespace in &namespaces {
        outcome::delete_rows(env.pool(), namespace).await?;
    }
    if outcome.is_err() {
        eprintln!("PgBouncer's log:\n{}", bouncer.log_text());
    }
    outcome
}

/// The most PostgreSQL connections a fleet's pools can open at once (docs/DEPLOY.md,
/// "Sizing"): each process has a durable pool of `max_connections` and a relaxed one of
/// `max(max_connections / 3, 2)`, and each worker 4 more for the kinds that read the
/// database. PgBouncer gets as many server connections, so that the pooled run measures the
/// protocol's cost, not clients waiting for a server connection.
fn fleet_connections(max_connections: u32, workers: u16) -> u32 {
    let process = max_connections + (max_connections / 3).max(2);
    process + u32::from(workers) * (process + 4)
}

/// One scenario through both routes.
struct Pair {
    planned: Planned,
    direct: Measured,
    pooled: Measured,
}

/// One scenario through one route, with its jobs' final states.
struct Measured {
    result: ScenarioResult,
    audit: Audit,
    /// What PgBouncer counted for the database while the fleet ran (warm-up, start and stop
    /// included); only through PgBouncer.
    pooler: Option<PoolerCounts>,
}

/// Differences of PgBouncer's `SHOW STATS` counters over one fleet's life: a check on the
/// store's own round-trip count that does not rely on the store.
#[derive(Clone, Copy)]
struct PoolerCounts {
    /// `total_xact_count`: transactions, each on one server connection.
    transactions: i64,
    /// `total_query_count`: exchanges PgBouncer forwarded (each ends with a ReadyForQuery).
    queries: i64,
}

impl PoolerCounts {
    fn read(bouncer: &PgBouncer) -> anyhow::Result<Self> {
        Ok(Self {
            transactions: bouncer.read_stat("total_xact_count")?,
            queries: bouncer.read_stat("total_query_count")?,
        })
    }

    fn since(self, before: Self) -> Self {
        Self {
            transactions: self.transactions - before.transactions,
            queries: self.queries - before.queries,
        }
    }
}

impl Measured {
    /// Every measured job has one row, `succeeded` with `finished_at` set, after one
    /// attempt, with no `job_errors`.
    fn exactly_once(&self) -> bool {
        let jobs = self.result.jobs as i64;
        self.audit.jobs == jobs
            && self.audit.succeeded == jobs
            && self.audit.rerun() == 0
            && self.audit.errors == 0
    }

    fn jobs_with_warm_up(&self) -> f64 {
        (self.result.jobs + self.result.warmup_jobs) as f64
    }
}

/// Runs `planned` on a fresh fleet of `env` (through `bouncer` when given), prints it, and
/// audits its jobs; the namespace goes into `namespaces` for deletion.
async fn measure(
    env: &Environment,
    planned: &Planned,
    bouncer: Option<&PgBouncer>,
    namespaces: &mut Vec<engine_shared::Namespace>,
) -> anyhow::Result<Measured> {
    let route = match env.pooler {
        Pooler::None => "direct",
        Pooler::Transaction => "pooled",
    };
    let counts_before = bouncer.map(PoolerCounts::read).transpose()?;
    let result = scenario::run(env, &format!("{}-{route}", planned.label), planned.load).await?;
    namespaces.push(result.namespace.clone());
    let pooler = match (bouncer, counts_before) {
        (Some(bouncer), Some(before)) => Some(PoolerCounts::read(bouncer)?.since(before)),
        _ => None,
    };
    let audit = outcome::audit(env.pool(), &result.namespace, result.measured_since).await?;
    let title = match env.pooler {
        Pooler::None => format!("{} | direct", planned.title),
        Pooler::Transaction => format!("{} | through PgBouncer", planned.title),
    };
    report::scenario(&title, &result, None);
    let measured = Measured {
        result,
        audit,
        pooler,
    };
    println!(
        "  rows            {} of {} succeeded once with finished_at set ({} rows); {} ran more than once; job_errors {}",
        measured.audit.succeeded,
        measured.result.jobs,
        measured.audit.jobs,
        measured.audit.rerun(),
        measured.audit.errors
    );
    if let Some(counts) = measured.pooler {
        let jobs = measured.jobs_with_warm_up();
        println!(
            "  pgbouncer       {:.3} transactions and {:.3} queries per job as PgBouncer counts them ({} and {} / {jobs} jobs, warm-up included as for round trips)",
            counts.transactions as f64 / jobs,
            counts.queries as f64 / jobs,
            counts.transactions,
            counts.queries,
        );
    }
    println!();
    Ok(measured)
}

/// Prints each scenario's figures through both routes and their ratio.
fn compare(pairs: &[Pair]) {
    println!("direct vs through PgBouncer (ratio = through PgBouncer / direct, same run)");
    println!(
        "  {:<12} {:<34} {:>14} {:>14} {:>8}",
        "scenario", "figure", "direct", "PgBouncer", "ratio"
    );
    for pair in pairs {
        let name = match pair.planned.load {
            Load::Batched { .. } => "batched",
            Load::Single { .. } => "one-by-one",
            Load::Paced { .. } => "paced",
        };
        let (direct, pooled) = (&pair.direct.result, &pair.pooled.result);
        let row = |figure: &str, direct: f64, pooled: f64, unit: &str, decimals: usize| {
            println!(
                "  {name:<12} {figure:<34} {:>14} {:>14} {:>8.3}",
                format!("{direct:.decimals$}{unit}"),
                format!("{pooled:.decimals$}{unit}"),
                pooled / direct
            );
        };
        if let (Some(direct), Some(pooled)) = (&direct.paced, &pooled.paced) {
            row(
                "achieved submissions/s",
                direct.achieved_rate,
                pooled.achieved_rate,
                "",
                1,
            );
            let p99 = |paced: &crate::submit::Paced| {
                let mut http = paced.http.clone();
                http.sort_unstable();
                report::percentile(&http, 0.99).as_secs_f64() * 1000.0
            };
            row("HTTP 202 p99", p99(direct), p99(pooled), " ms", 1);
        } else {
            row(
                "jobs/s end to end",
                direct.jobs_per_second(),
                pooled.jobs_per_second(),
                "",
                0,
            );
        }
        row(
            "p99 submit->start",
            direct.outcome.start_p99_ms,
            pooled.outcome.start_p99_ms,
            " ms",
            1,
        );
        row(
            "PostgreSQL round trips per job",
            direct.round_trips_per_job(),
            pooled.round_trips_per_job(),
            "",
            3,
        );
        row(
            "peak RSS api",
            direct.fleet.api.peak_rss_kib as f64 / MIB,
            pooled.fleet.api.peak_rss_kib as f64 / MIB,
            " MiB",
            1,
        );
        row(
            "peak RSS worker (largest)",
            direct.fleet.worker_peak_rss_kib() as f64 / MIB,
            pooled.fleet.worker_peak_rss_kib() as f64 / MIB,
            " MiB",
            1,
        );
        let once =
            |measured: &Measured| format!("{}/{}", measured.audit.succeeded, measured.result.jobs);
        println!(
            "  {name:<12} {:<34} {:>14} {:>14}",
            "succeeded exactly once",
            once(&pair.direct),
            once(&pair.pooled)
        );
    }
    println!();
}

/// Prints the checks and fails if one is not met.
fn check(pairs: &[Pair]) -> anyhow::Result<()> {
    let mut checks = Vec::new();
    for pair in pairs {
        for (route, measured) in [("direct", &pair.direct), ("PgBouncer", &pair.pooled)] {
            let label = pair.planned.label;
            checks.push((
                format!("every job succeeded exactly once ({label}, {route})"),
                format!(
                    "{} of {}, {} re-run, {} errors",
                    measured.audit.succeeded,
                    measured.result.jobs,
                    measured.audit.rerun(),
                    measured.audit.errors
                ),
                measured.exactly_once(),
            ));
            let warnings = measured.result.fleet.warnings().count();
            checks.push((
                format!("no WARN/ERROR log lines ({label}, {route})"),
                warnings.to_string(),
                warnings == 0,
            ));
        }
        // Any transaction shows the pooled fleet used PgBouncer; a group commit carries
        // many jobs, so there need not be one per job.
        let transactions = pair.pooled.pooler.map_or(0, |counts| counts.transactions);
        checks.push((
            format!(
                "the pooled fleet's transactions went through PgBouncer ({})",
                pair.planned.label
            ),
            transactions.to_string(),
            transactions > 0,
        ));
    }
    println!("checks");
    for (name, figure, met) in &checks {
        println!("  {name:<62} {figure:<28} {}", verdict(*met));
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|(_, _, met)| !met)
        .map(|(name, _, _)| name.as_str())
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "pooler checks not met: {}",
        failed.join("; ")
    );
    Ok(())
}

fn header(machine: &Machine, env: &Environment, args: &Args, server_connections: u16) {
    println!(
        "engine-bench --pooler {}",
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    report::machine(machine);
    report::fleet(env, "scenario and route");
    println!(
        "pooler      {} in transaction mode on loopback in front of the same PostgreSQL, default_pool_size {} (the fleet's pools open at most {}); the pooled fleets run with database.pooler = \"transaction\"; each scenario runs direct, then through PgBouncer",
        PgBouncer::version(),
        server_connections,
        fleet_connections(env.db_max_connections, env.workers)
    );
    report::extra_settings(env);
    println!(
        "{}; no raw lapin baseline",
        report::scenario_parameters(args)
    );
    println!();
}
