//! `engine-bench --scale`: horizontal scale, shown. One fleet — one API, one namespace and
//! vhost, one settings file — runs the same load of I/O-bound `sleep` jobs with 1, 2 and 4
//! `engine-worker` processes, then once more with 4 while one of them is killed (SIGKILL) a
//! third of the way through. Each run is read back from PostgreSQL (jobs/s from the first
//! submission to the last `finished_at`; every job `succeeded` once with `finished_at` set;
//! attempts; `job_errors`) and from the workers' own logs (who ran what; no success
//! recorded twice). After printing the figures, the mode fails if a job is lost or ended
//! otherwise, if a job has an error or a second recorded success, or if 4 workers are less
//! than 1.5x as fast as 1.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde_json::{Value, json};

use engine_shared::Namespace;

use crate::cli::Args;
use crate::environment::Environment;
use crate::fleet::{Fleet, WorkerSetup};
use crate::machine::Machine;
use crate::outcome::{self, Audit};
use crate::process::{Killed, LOG_FILTER};
use crate::report::{self, verdict};
use crate::scenario::{self, Driven, Load};
use crate::submit::Submitter;

/// Worker processes of the measured runs, in order; the kill run has as many as the last.
const WORKER_STEPS: [u16; 3] = [1, 2, 4];

/// The speed-up the last step must reach over the first.
const MIN_SPEEDUP: f64 = 1.5;

/// The running worker the kill run kills, in start order: the longest-running one.
const KILLED_POSITION: usize = 0;

/// The log lines the tally reads. The `sleep` handler's own line, echoed at info under
/// target `job`, shows an attempt ran; the worker's debug lines (`worker/src/execution/`,
/// enabled for this mode's workers by [`worker_log_filter`]) show an outcome recorded, or
/// refused because another attempt had taken the job over. Were they reworded, no success
/// would be found in the logs and the run would fail.
const HANDLER_STARTED: &str = "sleeping ";
const OUTCOME_RECORDED: &str = "job finished";
const OUTCOME_REFUSED: &str = "outcome not recorded: the job was no longer running here";

/// The workers' `RUST_LOG`: the default, plus the worker's per-job debug lines (one more
/// line per job) that the tally reads.
fn worker_log_filter() -> String {
    format!("{LOG_FILTER},engine_worker::execution=debug")
}

pub async fn run(args: &Args, env: &Environment) -> anyhow::Result<()> {
    let machine = Machine::probe(env.pool(), env.management.version().await, &env.run_dir).await?;
    header(&machine, env, args);
    let workers = WorkerSetup {
        count: WORKER_STEPS[0],
        concurrency: args.scale_worker_concurrency.max(1),
        log_filter: worker_log_filter(),
    };
    let mut fleet = Fleet::start_with(env, "scale", workers).await?;
    let namespace = fleet.namespace.clone();
    let driven = drive(args, env, &mut fleet).await;
    // Stop the fleet (and delete its vhost) and its rows whatever happened.
    let report = fleet.stop(env).await;
    let deleted = outcome::delete_rows(env.pool(), &namespace).await;
    let Scaled {
        checks,
        killed_warnings,
    } = driven?;

    if let Ok(report) = &report {
        let warnings: Vec<(&str, &str)> = report
            .warnings()
            .chain(
                killed_warnings
                    .iter()
                    .map(|(name, line)| (name.as_str(), line.as_str())),
            )
            .collect();
        println!(
            "[fleet] the API and the surviving workers stopped cleanly (SIGTERM); {} WARN/ERROR log lines, the killed worker's included",
            warnings.len()
        );
        report::warning_lines(&warnings);
        println!();
    }
    println!("checks");
    for check in &checks {
        println!(
            "  {:<62} {:<14} {}",
            check.name,
            check.figure,
            verdict(check.met)
        );
    }
    report?;
    deleted?;
    let failed: Vec<&str> = checks
        .iter()
        .filter(|check| !check.met)
        .map(|check| check.name.as_str())
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "scale checks not met: {}",
        failed.join("; ")
    );
    Ok(())
}

/// What the runs established, for the verdict after the fleet has stopped.
struct Scaled {
    checks: Vec<Check>,
    /// The killed worker's WARN and ERROR lines (the others come with the fleet's report).
    killed_warnings: Vec<(String, String)>,
}

/// One line of the verdict.
struct Check {
    name: String,
    figure: String,
    met: bool,
}

/// The measured runs with 1, 2 and 4 workers, then the kill run; prints each.
async fn drive(args: &Args, env: &Environment, fleet: &mut Fleet) -> anyhow::Result<Scaled> {
    let load = Load::Batched {
        jobs: args.scale_jobs,
        batch_size: args.batch_size,
        concurrency: args.batch_concurrency,
    };
    let submitter = Submitter::new(env.http.clone(), &fleet.base_url, &fleet.key)
        .with_job(&json!({ "kind": "sleep", "args": { "ms": args.scale_sleep_ms } }));

    let mut runs: Vec<Run> = Vec::new();
    for workers in WORKER_STEPS {
        let more = workers.saturating_sub(u16::try_from(fleet.worker_count())?);
        fleet.add_workers(env, more).await?;
        let (run, _) = run_once(env, fleet, &submitter, load, None).await?;
        let first = runs.first().unwrap_or(&run).jobs_per_second();
        print_step(
            &run,
            workers,
            first,
            ceiling_per_worker(args),
            &fleet.namespace,
        );
        runs.push(run);
    }
    let scaled = runs.last().map(Run::jobs_per_second).unwrap_or(0.0)
        / runs
            .first()
            .map(Run::jobs_per_second)
            .unwrap_or(f64::INFINITY);

    let kill_after = (args.scale_jobs / 3).max(1);
    let (run, killed) = run_once(env, fleet, &submitter, load, Some(kill_after)).await?;
    let (succeeded_then, killed) = killed.context("the kill run killed no worker")?;
    let unkilled = runs.last().map(|run| run.driven.end_to_end);
    print_kill(&run, &killed, succeeded_then, unkilled, &fleet.namespace);
    let lost = i64::try_from(run.jobs)? - run.audit.succeeded;
    runs.push(run);

    let count = runs.len();
    let expected: i64 = runs.iter().map(|run| run.jobs as i64).sum();
    let succeeded: i64 = runs.iter().map(|run| run.audit.succeeded).sum();
    let rows: i64 = runs.iter().map(|run| run.audit.jobs).sum();
    let errors: i64 = runs.iter().map(|run| run.audit.errors).sum();
    let (measured, kill_run) = runs.split_at(runs.len() - 1);
    let measured_jobs: usize = measured.iter().map(|run| run.jobs).sum();
    let recorded_once: usize = measured.iter().map(|run| run.tally.recorded_once).sum();
    let twice_after_kill = kill_run[0].tally.recorded_twice;
    let most = WORKER_STEPS[WORKER_STEPS.len() - 1];
    let steps: Vec<String> = WORKER_STEPS.iter().map(u16::to_string).collect();
    let steps = steps.join(", ");
    let checks = vec![
        Check {
            name: format!("every job succeeded exactly once, finished_at set ({count} runs)"),
            figure: format!("{succeeded} of {expected}"),
            met: succeeded == expected && rows == expected,
        },
        Check {
            name: format!("no job_errors ({count} runs)"),
            figure: errors.to_string(),
            met: errors == 0,
        },
        Check {
            name: format!("worker logs: each success recorded once ({steps} workers)"),
            figure: format!("{recorded_once} of {measured_jobs}"),
            met: recorded_once == measured_jobs,
        },
        Check {
            name: "worker logs: no success recorded twice (kill run)".to_owned(),
            figure: twice_after_kill.to_string(),
            met: twice_after_kill == 0,
        },
        Check {
            name: format!("speed-up with {most} workers >= {MIN_SPEEDUP}x"),
            figure: format!("{scaled:.2}x"),
            met: scaled >= MIN_SPEEDUP,
        },
        Check {
            name: "kill run: no job lost".to_owned(),
            figure: format!("lost {lost}"),
            met: lost == 0,
        },
    ];
    let killed_warnings = killed
        .log_lines
        .iter()
        .filter(|line| matches!(line["level"].as_str(), Some("WARN" | "ERROR")))
        .map(|line| (killed.name.clone(), line.to_string()))
        .collect();
    Ok(Scaled {
        checks,
        killed_warnings,
    })
}

/// Prints one measured run with `workers` workers; `first` is the 1-worker run's jobs/s.
fn print_step(
    run: &Run,
    workers: u16,
    first: f64,
    ceiling_per_worker: Option<f64>,
    namespace: &Namespace,
) {
    let rate = run.jobs_per_second();
    let processes = if workers == 1 { "process" } else { "processes" };
    println!("[{workers} worker {processes}] namespace {namespace}");
    println!(
        "  throughput      {rate:.0} jobs/s  ({} jobs, first submit -> last finished_at {:.2} s; all accepted after {:.2} s)",
        run.jobs,
        run.driven.end_to_end.as_secs_f64(),
        run.driven.accepted_in.as_secs_f64()
    );
    let ceiling = ceiling_per_worker.map(|per_worker| per_worker * f64::from(workers));
    println!(
        "  speed-up        {:.2}x over 1 worker{}",
        rate / first,
        ceiling.map_or(String::new(), |ceiling| format!(
            "  (ceiling {ceiling:.0} jobs/s = workers x concurrency / sleep; {:.0}% of it reached)",
            rate / ceiling * 100.0
        ))
    );
    print_rows(&run.audit, run.jobs);
    print_logs(&run.tally);
    let outcome = &run.driven.outcome;
    println!(
        "  submit->start   p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms  (started_at - created_at)",
        outcome.start_p50_ms, outcome.start_p99_ms, outcome.start_max_ms
    );
    println!("  cpu             {}", run.driven.cpu);
    println!();
}

/// Prints the kill run; `unkilled` is how long the same workers took without a kill.
fn print_kill(
    run: &Run,
    killed: &Killed,
    succeeded_then: i64,
    unkilled: Option<Duration>,
    namespace: &Namespace,
) {
    println!(
        "[kill: {} workers, {} SIGKILLed once {succeeded_then} of {} jobs had succeeded] namespace {namespace}",
        WORKER_STEPS[WORKER_STEPS.len() - 1],
        killed.name,
        run.jobs,
    );
    println!(
        "  total           {:.2} s first submit -> last finished_at = {:.0} jobs/s{}",
        run.driven.end_to_end.as_secs_f64(),
        run.jobs_per_second(),
        unkilled.map_or(String::new(), |unkilled| format!(
            "  (the same workers without a kill: {:.2} s)",
            unkilled.as_secs_f64()
        ))
    );
    println!(
        "  lost            {}  ({} of {} jobs succeeded, finished_at set)",
        run.jobs as i64 - run.audit.succeeded,
        run.audit.succeeded,
        run.jobs
    );
    println!(
        "  re-run          {} jobs ran again after the kill (attempts > 1: the broker redelivered the killed worker's unacked deliveries)",
        run.audit.rerun()
    );
    // The killed worker's log is tallied first.
    if let Some(worker) = run.tally.per_worker.first() {
        println!(
            "  killed worker   ran {} attempts and recorded {} successes before it died: {} cut short (from its log)",
            worker.started,
            worker.recorded,
            worker.started.saturating_sub(worker.recorded)
        );
    }
    print_rows(&run.audit, run.jobs);
    print_logs(&run.tally);
    println!();
}

/// One run of the load on the fleet as it is.
struct Run {
    driven: Driven,
    audit: Audit,
    tally: LogTally,
    jobs: usize,
}

impl Run {
    fn jobs_per_second(&self) -> f64 {
        self.jobs as f64 / self.driven.end_to_end.as_secs_f64()
    }
}

/// Warms the fleet up, then submits `load` and waits until every job has succeeded. With
/// `kill_after`, kills one worker once that many jobs have succeeded, and returns how many
/// had then, and the killed worker. If the jobs do not all succeed, prints their audit
/// before returning the error.
async fn run_once(
    env: &Environment,
    fleet: &mut Fleet,
    submitter: &Submitter,
    load: Load,
    kill_after: Option<usize>,
) -> anyhow::Result<(Run, Option<(i64, Killed)>)> {
    let namespace = fleet.namespace.clone();
    scenario::warm_up(env, &namespace, submitter, load).await?;
    let (api_pid, worker_pids) = fleet.pids();
    // After the warm-up's jobs have finished; the measured jobs are created after it.
    let since = Utc::now();
    let killing = async {
        let Some(count) = kill_after else {
            return Ok(None);
        };
        let succeeded =
            outcome::wait_succeeded_at_least(env.pool(), &namespace, since, count, env.deadline)
                .await?;
        let killed = fleet.kill_worker(KILLED_POSITION).await?;
        Ok(Some((succeeded, killed)))
    };
    let measured = scenario::measure(
        env,
        &namespace,
        submitter,
        load,
        (api_pid, &worker_pids),
        killing,
    )
    .await;
    let audit = outcome::audit(env.pool(), &namespace, since).await?;
    let (driven, killed) = match measured {
        Ok(measured) => measured,
        Err(error) => {
            println!("[failed run, {} workers]", worker_pids.len());
            print_rows(&audit, load.jobs());
            return Err(error);
        }
    };
    let mut logs = fleet.worker_logs();
    if let Some((_, killed)) = &killed {
        logs.insert(
            0,
            (
                format!("{} (killed)", killed.name),
                killed.log_lines.clone(),
            ),
        );
    }
    let tally = tally(&audit.ids, &logs);
    Ok((
        Run {
            driven,
            audit,
            tally,
            jobs: load.jobs(),
        },
        killed,
    ))
}

/// What the workers' own logs say about one run's jobs.
struct LogTally {
    /// Per worker, in the order given.
    per_worker: Vec<WorkerTally>,
    /// Jobs whose success exactly one attempt recorded, more than one, and none.
    recorded_once: usize,
    recorded_twice: usize,
    recorded_never: usize,
    /// Finished attempts whose outcome was refused because another attempt had taken the
    /// job over.
    refused: usize,
}

struct WorkerTally {
    name: String,
    /// Attempts whose handler it ran.
    started: usize,
    /// Successes it recorded (the finish was committed).
    recorded: usize,
}

/// Counts, in `logs` (name, JSON lines) and for the jobs in `ids`, the attempts each worker
/// ran and the successes it recorded.
fn tally(ids: &HashSet<String>, logs: &[(String, Vec<Value>)]) -> LogTally {
    let mut recorded_by_job: HashMap<&str, usize> = HashMap::new();
    let mut refused = 0;
    let mut per_worker = Vec::new();
    for (name, lines) in logs {
        let mut worker = WorkerTally {
            name: name.clone(),
            started: 0,
            recorded: 0,
        };
        for line in lines {
            let Some(job) = line["job"].as_str().and_then(|job| ids.get(job)) else {
                continue;
            };
            let message = line["message"].as_str().unwrap_or_default();
            if line["target"] == "job" && message.starts_with(HANDLER_STARTED) {
                worker.started += 1;
            } else if message == OUTCOME_RECORDED && line["status"] == "succeeded" {
                worker.recorded += 1;
                *recorded_by_job.entry(job.as_str()).or_default() += 1;
            } else if message == OUTCOME_REFUSED {
                refused += 1;
            }
        }
        per_worker.push(worker);
    }
    let once = recorded_by_job
        .values()
        .filter(|count| **count == 1)
        .count();
    LogTally {
        per_worker,
        recorded_once: once,
        recorded_twice: recorded_by_job.len() - once,
        recorded_never: ids.len() - recorded_by_job.len(),
        refused,
    }
}

fn print_rows(audit: &Audit, submitted: usize) {
    let attempts: Vec<String> = audit
        .attempts
        .iter()
        .map(|(attempts, rows)| format!("{attempts}: {rows}"))
        .collect();
    println!(
        "  rows            {} of {submitted} submitted succeeded with finished_at set ({} rows in all); attempts {}; job_errors {}",
        audit.succeeded,
        audit.jobs,
        attempts.join(", "),
        audit.errors
    );
}

fn print_logs(tally: &LogTally) {
    let per_worker: Vec<String> = tally
        .per_worker
        .iter()
        .map(|worker| format!("{} {}", worker.name, worker.recorded))
        .collect();
    println!(
        "  worker logs     successes recorded per worker: {}; jobs recorded once {}, twice or more {}, never {}; outcomes refused (job taken over) {}",
        per_worker.join(", "),
        tally.recorded_once,
        tally.recorded_twice,
        tally.recorded_never,
        tally.refused
    );
}

/// The most jobs/s one worker can finish: `concurrency` sleeps of `ms` at a time.
fn ceiling_per_worker(args: &Args) -> Option<f64> {
    (args.scale_sleep_ms > 0).then(|| {
        f64::from(args.scale_worker_concurrency.max(1)) * 1000.0 / args.scale_sleep_ms as f64
    })
}

fn header(machine: &Machine, env: &Environment, args: &Args) {
    println!(
        "engine-bench --scale {}",
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    println!(
        "machine     {} CPUs, {:.1} GiB RAM, Linux {}; {}; {}",
        machine.cpus, machine.memory_gib, machine.kernel, machine.postgres, machine.rabbitmq
    );
    let steps: Vec<String> = WORKER_STEPS.iter().map(u16::to_string).collect();
    println!(
        "fleet       release engine-api x1 + engine-worker x{} (added one by one), then x{} with one SIGKILLed a third of the way; one namespace, vhost and settings file for all (worker.concurrency {}, also the prefetch; database.max_connections {})",
        steps.join(", then x"),
        steps[steps.len() - 1],
        args.scale_worker_concurrency.max(1),
        env.db_max_connections
    );
    println!(
        "load        {} `sleep` jobs {{\"ms\": {}}} per run through POST /v1/jobs/batch ({} per request, {} in flight), after {} warm-up jobs of the same kind each run{}",
        args.scale_jobs,
        args.scale_sleep_ms,
        args.batch_size,
        args.batch_concurrency,
        env.warmup_jobs,
        ceiling_per_worker(args).map_or(String::new(), |ceiling| format!(
            "; ceiling {ceiling:.0} jobs/s per worker"
        ))
    );
    if !env.extra_settings.trim().is_empty() {
        println!(
            "extra       settings appended to the fleet's TOML: {}",
            env.extra_settings.trim().replace('\n', "; ")
        );
    }
    println!();
}
