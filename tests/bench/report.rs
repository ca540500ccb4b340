//! The printed report: the header, one block per scenario, and the targets with a verdict
//! each. Every figure printed is one this run measured; a skipped scenario says so.

use std::time::Duration;

use crate::cli::Args;
use crate::environment::Environment;
use crate::machine::Machine;
use crate::raw::RawResult;
use crate::scenario::ScenarioResult;

const MIB: f64 = 1024.0;

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The machine's and the disk's lines of a header.
pub fn machine(machine: &Machine) {
    println!(
        "machine     {} CPUs, {:.1} GiB RAM, Linux {}; {}; {}",
        machine.cpus, machine.memory_gib, machine.kernel, machine.postgres, machine.rabbitmq
    );
    println!(
        "disk        fsync probe (4 KiB write + fdatasync, 20 rounds): p50 {:.2} ms, max {:.2} ms",
        ms(machine.fsync_p50),
        ms(machine.fsync_max)
    );
}

/// The `fleet` line: what each scenario (or each of its routes, `per`) starts.
pub fn fleet(env: &Environment, per: &str) {
    println!(
        "fleet       release engine-api x1 + engine-worker x{} (worker.concurrency {}), database.max_connections {}; a fresh fleet, namespace and vhost per {per}, {} warm-up jobs each",
        env.workers, env.worker_concurrency, env.db_max_connections, env.warmup_jobs
    );
}

/// The `extra` line, when settings were appended to the fleets' TOML.
pub fn extra_settings(env: &Environment) {
    if !env.extra_settings.trim().is_empty() {
        println!(
            "extra       settings appended to every fleet's TOML: {}",
            env.extra_settings.trim().replace('\n', "; ")
        );
    }
}

/// The `parameters` line's scenarios: batched, one-by-one and paced.
pub fn scenario_parameters(args: &Args) -> String {
    format!(
        "parameters  batched {} jobs ({} per request, {} in flight); one-by-one {} jobs ({} client tasks); paced {}/s for {} s",
        args.jobs,
        args.batch_size,
        args.batch_concurrency,
        args.single_jobs,
        args.single_concurrency,
        args.latency_rate,
        args.latency_secs,
    )
}

pub fn header(machine_facts: &Machine, env: &Environment, args: &Args) {
    println!(
        "engine-bench {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    machine(machine_facts);
    fleet(env, "scenario");
    extra_settings(env);
    println!(
        "{}; raw {} messages (window {}, prefetch {})",
        scenario_parameters(args),
        args.raw_messages,
        args.raw_window,
        env.worker_concurrency
    );
    println!();
}

pub fn raw(result: &RawResult, window: usize, prefetch: u16) {
    println!(
        "[raw lapin] {} persistent 100-byte messages, one durable quorum queue",
        result.messages
    );
    println!(
        "  throughput      {:.0} msgs/s  (first publish -> last ack {:.2} s; all confirmed after {:.2} s)",
        result.rate(),
        result.elapsed.as_secs_f64(),
        result.published_in.as_secs_f64()
    );
    println!(
        "  shape           1 publisher channel, confirms, {window} unconfirmed in flight; 1 consumer channel, prefetch {prefetch}, manual ack"
    );
    println!("  cpu             {}", result.cpu);
    println!();
}

pub fn scenario(title: &str, result: &ScenarioResult, raw: Option<&RawResult>) {
    let outcome = &result.outcome;
    println!("[{title}] namespace {}", result.namespace);
    if let Some(paced) = &result.paced {
        let mut http = paced.http.clone();
        http.sort_unstable();
        println!(
            "  submitted       {} jobs at {:.1}/s achieved; HTTP 202 round trip p50 {:.1} ms, p99 {:.1} ms",
            paced.jobs,
            paced.achieved_rate,
            ms(percentile(&http, 0.5)),
            ms(percentile(&http, 0.99))
        );
    } else {
        println!(
            "  end to end      {:.0} jobs/s  ({} jobs, first submit -> last finished_at {:.2} s; all accepted after {:.2} s = {:.0} jobs/s)",
            result.jobs_per_second(),
            result.jobs,
            result.end_to_end.as_secs_f64(),
            result.accepted_in.as_secs_f64(),
            result.jobs as f64 / result.accepted_in.as_secs_f64()
        );
    }
    println!(
        "  submit->start   p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms  (started_at - created_at)",
        outcome.start_p50_ms, outcome.start_p99_ms, outcome.start_max_ms
    );
    let workers: u64 = result.fleet.workers.iter().map(|w| w.round_trips).sum();
    println!(
        "  round trips     {:.3} PostgreSQL round trips per job  (api {} + workers {} = {} / ({} + {} warm-up) jobs)",
        result.round_trips_per_job(),
        result.fleet.api.round_trips,
        workers,
        result.fleet.round_trips(),
        result.jobs,
        result.warmup_jobs
    );
    println!(
        "  peak RSS        api {:.1} MiB, worker {:.1} MiB",
        result.fleet.api.peak_rss_kib as f64 / MIB,
        result.fleet.worker_peak_rss_kib() as f64 / MIB
    );
    if let (Some(raw), None) = (raw, &result.paced) {
        println!(
            "  vs raw lapin    {:.3}  ({:.0} / {:.0})",
            result.jobs_per_second() / raw.rate(),
            result.jobs_per_second(),
            raw.rate()
        );
    }
    println!("  cpu             {}", result.cpu);
    let warnings: Vec<_> = result.fleet.warnings().collect();
    println!(
        "  health          {} of {} rows succeeded; {} needed >1 attempt; {} published by the outbox sweeper; {} WARN/ERROR log lines",
        outcome.jobs,
        result.jobs,
        outcome.retried,
        result.fleet.api.swept,
        warnings.len()
    );
    warning_lines(&warnings);
    println!();
}

/// The first five WARN/ERROR lines the servers logged, each cut to 300 characters.
pub fn warning_lines(warnings: &[(&str, &str)]) {
    for (process, line) in warnings.iter().take(5) {
        println!(
            "    {process}: {}",
            line.chars().take(300).collect::<String>()
        );
    }
}

/// The `q` quantile of sorted durations (nearest rank); zero when empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// What the targets are checked against.
pub struct Results<'a> {
    pub raw: Option<&'a RawResult>,
    pub batched: Option<&'a ScenarioResult>,
    pub single: Option<&'a ScenarioResult>,
    pub paced: Option<&'a ScenarioResult>,
    pub latency_rate: u32,
}

pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT MET" }
}

pub fn targets(results: &Results<'_>) {
    println!("targets (2-core machine that also hosts PostgreSQL and RabbitMQ)");
    let row = |target: &str, value: Option<(String, bool)>| match value {
        Some((figure, met)) => println!("  {target:<48} {figure:<22} {}", verdict(met)),
        None => println!("  {target:<48} {:<22} not measured", "-"),
    };
    for (name, result) in [("batched", results.batched), ("one-by-one", results.single)] {
        row(
            &format!("end to end >= 3000 jobs/s ({name})"),
            result.map(|r| {
                (
                    format!("{:.0} jobs/s", r.jobs_per_second()),
                    r.jobs_per_second() >= 3000.0,
                )
            }),
        );
    }
    for (name, result) in [("batched", results.batched), ("one-by-one", results.single)] {
        let ratio = result
            .zip(results.raw)
            .map(|(r, raw)| r.jobs_per_second() / raw.rate());
        row(
            &format!("ratio to raw lapin >= 0.15 ({name})"),
            ratio.map(|ratio| {
                let long_term = if ratio >= 0.5 {
                    "long-term 0.5 met"
                } else {
                    "long-term 0.5 not"
                };
                (format!("{ratio:.3} ({long_term})"), ratio >= 0.15)
            }),
        );
    }
    row(
        &format!("p99 submit->start <= 50 ms at {}/s", results.latency_rate),
        results.paced.map(|r| {
            (
                format!("{:.1} ms", r.outcome.start_p99_ms),
                r.outcome.start_p99_ms <= 50.0,
            )
        }),
    );
    let all: Vec<&ScenarioResult> = [results.batched, results.single, results.paced]
        .into_iter()
        .flatten()
        .collect();
    let api = all.iter().map(|r| r.fleet.api.peak_rss_kib).max();
    let worker = all.iter().map(|r| r.fleet.worker_peak_rss_kib()).max();
    for (name, peak) in [("API", api), ("worker", worker)] {
        row(
            &format!("{name} peak RSS <= 40 MiB (max over scenarios)"),
            peak.map(|kib| {
                (
                    format!("{:.1} MiB", kib as f64 / MIB),
                    kib as f64 <= 40.0 * MIB,
                )
            }),
        );
    }
}
