//! What the chaos run prints: the header (machine, fleet, settings, load, faults), then
//! after the timeline the submission, the settle wait, the results (accepted, final by
//! status, lost, stuck, duplicates at the receiver, recovery time), the servers' warnings,
//! and the checks.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::audit::{FinalState, Lost, Settled};
use super::client::Submission;
use super::faults::{Fault, FaultLog, offset};
use super::mix::{MAX_ATTEMPTS, Mix, SLEEP_MS};
use super::receiver::Tally;
use super::settings::{
    LEASE_SECS, RESCUE_AFTER_SECS, WEBHOOK_BURST, WEBHOOK_CONCURRENCY, WEBHOOK_RATE_PER_SEC,
};
use crate::cli::Args;
use crate::environment::Environment;
use crate::machine::Machine;
use crate::report::verdict;

/// Lost jobs listed one by one, at most.
const LOST_LISTED: usize = 20;
/// Dead jobs, duplicated jobs and warning messages listed, at most.
const DEAD_LISTED: usize = 10;
const WARNINGS_LISTED: usize = 12;

/// Where the run's own servers are, for the header.
pub struct Addresses<'a> {
    pub receiver: &'a str,
    pub s3: &'a str,
}

pub fn header(machine: &Machine, args: &Args, env: &Environment, addresses: &Addresses<'_>) {
    println!(
        "engine-bench --chaos {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    crate::report::machine(machine);
    println!(
        "fleet       release engine-api x1 + engine-worker x{} (worker.concurrency {}, also the prefetch; database.max_connections {}); API on 127.0.0.1:{}, the same port after a restart",
        env.workers, env.worker_concurrency, env.db_max_connections, env.api_port
    );
    println!(
        "settings    rescue.after_secs {RESCUE_AFTER_SECS}, rescue.lease_secs {LEASE_SECS}; webhook.deliver limited per host to {WEBHOOK_RATE_PER_SEC}/s (burst {WEBHOOK_BURST}) and {WEBHOOK_CONCURRENCY} at once, on_redis_error \"defer\"; storage on the run's own s3s-fs at {}",
        addresses.s3
    );
    let (noop, sleep, webhook) = Mix::counts(args.chaos_jobs);
    println!(
        "load        {} jobs: {noop} noop, {sleep} sleep {SLEEP_MS} ms, {webhook} webhook.deliver to {} (answers 500 to {} % of deliveries); max_attempts {MAX_ATTEMPTS} each",
        args.chaos_jobs, addresses.receiver, args.chaos_failure_percent
    );
    println!(
        "client      POST /v1/jobs/batch, {} jobs per batch, an idempotency key per job, departures spread over {:.0} s; a batch not answered is resent with the same keys",
        args.chaos_batch_size,
        super::submit_spread(args).as_secs_f64()
    );
    let faults: Vec<&str> = args.chaos_faults.iter().map(|f| f.name()).collect();
    println!(
        "faults      {} over {} s (workers: one SIGKILLed every 2-5 s; the others once each, spread evenly); seed {}; settle deadline {} s",
        or_none(&faults),
        args.chaos_seconds,
        args.chaos_seed,
        args.chaos_settle_secs
    );
    if !args.extra_settings.trim().is_empty() {
        println!(
            "extra       settings appended to the fleet's TOML: {}",
            args.extra_settings.trim().replace("\\n", "; ")
        );
    }
    if args.chaos_faults.iter().any(|fault| fault.is_shared()) {
        println!(
            "WARNING     this run restarts the machine's shared servers; everything else using them sees the outages"
        );
    }
}

pub fn submission(submission: &Submission, faults: &FaultLog) {
    let unanswered = &submission.unanswered;
    println!(
        "submission  {} jobs accepted in {} batches over {:.1} s; {} batches resent after {} unanswered sends ({} connection refused or cut, {} timeouts, {} 5xx, {} 429); {} jobs found already stored on a resend, {} on a first send",
        submission.ids.len(),
        submission.batches,
        submission.took.as_secs_f64(),
        submission.resent_batches,
        unanswered.total(),
        unanswered.connection,
        unanswered.timeout,
        unanswered.server_error,
        unanswered.throttled,
        submission.found_on_resend,
        submission.found_on_first_send
    );
    let mut counts = vec![format!("{} worker kills", faults.count(Fault::Workers))];
    for fault in [
        Fault::Api,
        Fault::Rabbitmq,
        Fault::Redis,
        Fault::Postgres,
        Fault::S3,
    ] {
        if faults.count(fault) > 0 {
            counts.push(format!("{} x{}", fault.name(), faults.count(fault)));
        }
    }
    let last = faults
        .entries
        .last()
        .map_or("no fault".to_owned(), |entry| {
            format!("the last fault ended at {}", offset(entry.at + entry.took))
        });
    println!("faults      {}; {last}", counts.join(", "));
    if let Some(error) = &faults.aborted {
        println!("            the fault phase stopped early: {error:#}");
    }
}

pub fn settled(settled: &Settled, deadline: Duration) {
    if settled.all_final {
        println!(
            "settle      every accepted job final {:.1} s after the fault phase and the submission ended",
            settled.waited.as_secs_f64()
        );
    } else {
        println!(
            "settle      NOT every accepted job final after {:.0} s (deadline {} s){}",
            settled.waited.as_secs_f64(),
            deadline.as_secs(),
            settled
                .last_error
                .as_ref()
                .map_or(String::new(), |error| format!(
                    "; last poll failed: {error}"
                ))
        );
    }
}

/// What the results section reads.
pub struct Results<'a> {
    pub accepted: usize,
    pub state: &'a FinalState,
    pub receiver: &'a Tally,
    pub faults: &'a FaultLog,
}

pub fn results(results: &Results<'_>) {
    let state = results.state;
    println!();
    println!("results");
    println!("  accepted        {}", results.accepted);
    let statuses: Vec<String> = state
        .by_status
        .iter()
        .map(|(status, count)| format!("{status} {count}"))
        .collect();
    let final_count = results.accepted - state.lost.len();
    println!(
        "  final           {final_count}  (by status: {})",
        statuses.join(", ")
    );
    println!(
        "  lost            {}  (accepted, not final at the deadline)",
        state.lost.len()
    );
    let queued: Vec<String> = state
        .queued
        .iter()
        .map(|(queue, messages)| format!("{queue} {messages}"))
        .collect();
    println!(
        "  stuck           {}  (not final with an expired lease, or due with no message in the namespace's work and delay queues; messages there when the rows were read: {})",
        state.stuck,
        or_none(&queued)
    );
    println!(
        "  rows            {} not named by any answer (a job stored twice despite its key would show here)",
        state.unaccepted_rows
    );
    duplicates(results.receiver, state);
    duplicated(results.receiver);
    recovery(state, results.faults);
    by_kind(state);
    let attempts: Vec<String> = state
        .attempts
        .iter()
        .map(|(attempts, jobs)| format!("{attempts}: {jobs}"))
        .collect();
    println!("  attempts        {}", attempts.join(", "));
    let errors: Vec<String> = state
        .errors
        .iter()
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect();
    println!("  job_errors      {}", or_none(&errors));
    dead(state);
    lost(&state.lost);
}

fn duplicates(receiver: &Tally, state: &FinalState) {
    println!(
        "  duplicates      {} jobs answered 2xx more than once by the receiver, {} deliveries beyond the first",
        receiver.duplicated_jobs, receiver.extra_deliveries
    );
    let undelivered = state
        .succeeded_webhooks
        .iter()
        .filter(|id| {
            receiver
                .per_job
                .get(*id)
                .is_none_or(|job| job.delivered.is_empty())
        })
        .count();
    println!(
        "  receiver        {} webhook jobs reached it in {} requests ({} answered 500 on purpose); {} succeeded jobs it never answered 2xx; {} bad signatures, {} requests without a job id or index",
        receiver.per_job.len(),
        receiver.requests,
        receiver.failed,
        undelivered,
        receiver.bad_signatures,
        receiver.unidentified
    );
}

/// The jobs the receiver answered 2xx more than once, with the attempt of each 2xx.
fn duplicated(receiver: &Tally) {
    let mut duplicated: Vec<_> = receiver
        .per_job
        .iter()
        .filter(|(_, job)| job.delivered.len() > 1)
        .collect();
    duplicated.sort_by(|a, b| a.0.cmp(b.0));
    for (id, job) in duplicated.iter().take(DEAD_LISTED) {
        println!(
            "  duplicate       {id}: {} requests, 2xx at attempts {:?}",
            job.requests, job.delivered
        );
    }
}

fn recovery(state: &FinalState, faults: &FaultLog) {
    let line = match (
        state.lost.is_empty(),
        faults.last_fault_end,
        state.last_finished,
    ) {
        (false, _, _) => "not reached: jobs are lost".to_owned(),
        (true, None, _) => "no fault".to_owned(),
        (true, Some(_), None) => "no job finished".to_owned(),
        (true, Some(end), Some(last)) => {
            let seconds = (last - end).num_milliseconds() as f64 / 1000.0;
            format!(
                "{:.1} s  (the last fault's end {} -> the last job final {})",
                seconds.max(0.0),
                end.format("%H:%M:%S%.3f"),
                last.format("%H:%M:%S%.3f")
            )
        }
    };
    println!("  recovery        {line}");
}

fn by_kind(state: &FinalState) {
    let mut kinds: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((kind, status), count) in &state.by_kind {
        kinds
            .entry(kind)
            .or_default()
            .push(format!("{status} {count}"));
    }
    let kinds: Vec<String> = kinds
        .into_iter()
        .map(|(kind, statuses)| format!("{kind} {}", statuses.join(", ")))
        .collect();
    println!("  by kind         {}", kinds.join("; "));
}

fn dead(state: &FinalState) {
    for row in state.dead.iter().take(DEAD_LISTED) {
        println!(
            "  dead            {} {} attempts {} starts {}: {}",
            row.id,
            row.kind,
            row.attempts,
            row.starts,
            row.last_error.as_deref().unwrap_or("-")
        );
    }
}

fn lost(lost: &[Lost]) {
    for job in lost.iter().take(LOST_LISTED) {
        let Some(row) = &job.row else {
            println!("  lost            {} no row at all", job.id);
            continue;
        };
        let time = |at: Option<chrono::DateTime<chrono::Utc>>| {
            at.map_or("-".to_owned(), |at| at.format("%H:%M:%S%.3f").to_string())
        };
        println!(
            "  lost            {} {} {} attempts {} starts {} lease_until {} run_at {} published_at {}{}",
            row.id,
            row.kind,
            row.status,
            row.attempts,
            row.starts,
            time(row.lease_until),
            time(Some(row.run_at)),
            time(row.published_at),
            if job.stuck { "  STUCK" } else { "" }
        );
    }
    if lost.len() > LOST_LISTED {
        println!(
            "  lost            ... and {} more",
            lost.len() - LOST_LISTED
        );
    }
}

/// The servers' WARN and ERROR lines, killed processes' included: counts per process kind
/// and the most frequent messages. `lines` are (process name, JSON line).
pub fn warnings<'a>(lines: impl Iterator<Item = (&'a str, &'a Value)>) {
    let mut per_process: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_message: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (process, line) in lines {
        let level = line["level"].as_str().unwrap_or_default();
        if !matches!(level, "WARN" | "ERROR") {
            continue;
        }
        let kind = process.split('#').next().unwrap_or(process);
        *per_process.entry(kind).or_default() += 1;
        let message = line["message"].as_str().unwrap_or("?").to_owned();
        *per_message
            .entry((format!("{kind} {level}"), message))
            .or_default() += 1;
    }
    let counts: Vec<String> = per_process
        .iter()
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect();
    println!(
        "  warnings        {} WARN/ERROR lines ({}), the killed processes' included; most frequent:",
        per_process.values().sum::<usize>(),
        or_none(&counts)
    );
    let mut frequent: Vec<_> = per_message.into_iter().collect();
    frequent.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    for ((source, message), count) in frequent.into_iter().take(WARNINGS_LISTED) {
        println!("    {count:>6}  {source}: {message}");
    }
}

/// The rescuer's and the sweeper's work, from the API processes' lines.
pub fn api_recoveries<'a>(lines: impl Iterator<Item = &'a Value>) {
    let (mut rescued, mut rescued_dead, mut swept) = (0, 0, 0);
    for line in lines {
        match line["message"].as_str() {
            // api/src/rescuer.rs: what a pass took, and of those how many ended `dead`.
            Some("rescued jobs nobody was running; the rest go back through the outbox") => {
                rescued += line["rescued"].as_u64().unwrap_or(0);
                rescued_dead += line["dead"].as_u64().unwrap_or(0);
            }
            Some("sweeper published jobs the fast path had not") => {
                swept += line["count"].as_u64().unwrap_or(0);
            }
            _ => {}
        }
    }
    println!(
        "  api             rescuer took {rescued} jobs ({rescued_dead} of them ended dead); outbox sweeper published {swept} jobs the fast path had not"
    );
}

/// What the workers' debug lines (`worker/src/execution/`) say: deliveries the limiter
/// deferred, copies of a job skipped because it was running elsewhere or finished (a
/// rescued job's second message, a redelivery), and outcomes refused because another
/// attempt had taken the job over. Were those lines reworded, these would read 0.
pub fn worker_paths<'a>(lines: impl Iterator<Item = &'a Value>) {
    let mut deferred_jobs: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut longest_ms, mut skipped, mut refused) = (0, 0, 0);
    for line in lines {
        match line["message"].as_str() {
            Some("limited; deferred") => {
                *deferred_jobs
                    .entry(line["job"].as_str().unwrap_or_default())
                    .or_default() += 1;
                longest_ms = longest_ms.max(line["delay_ms"].as_u64().unwrap_or(0));
            }
            Some(
                "not runnable now; skipping the message"
                | "stale message of a finished job; skipping",
            ) => skipped += 1,
            Some("outcome not recorded: the job was no longer running here") => refused += 1,
            _ => {}
        }
    }
    println!(
        "  workers         the limiter deferred {} deliveries of {} jobs (at most {} times one job; the longest tier {:.0} s); {skipped} copies skipped (job running elsewhere or finished); {refused} outcomes refused (job taken over)",
        deferred_jobs.values().sum::<usize>(),
        deferred_jobs.len(),
        deferred_jobs.values().max().unwrap_or(&0),
        longest_ms as f64 / 1000.0
    );
}

/// Attempt logs: how many the run's S3 folder holds for how many starts (an attempt cut
/// short by a SIGKILL leaves none), and what the workers' lines say of those storage did
/// not take at once: unreachable (the S3 fault), or the worker's uploads backed up (its
/// error says "already under way").
pub fn attempt_logs<'a>(
    lines: impl Iterator<Item = &'a Value>,
    (stored, starts): (usize, i64),
    left_in_spool: usize,
) {
    let (mut spooled, mut backed_up, mut dropped, mut uploaded) = (0, 0, 0, 0);
    for line in lines {
        match line["message"].as_str() {
            Some("storage did not take an attempt log; spooled it for later") => {
                spooled += 1;
                let error = line["error"].as_str().unwrap_or_default();
                backed_up += usize::from(error.contains("already under way"));
            }
            Some(message) if message.starts_with("storage did not take an attempt log and") => {
                dropped += 1;
            }
            Some("spooled attempt logs uploaded") => {
                uploaded += line["uploaded"].as_u64().unwrap_or(0);
            }
            _ => {}
        }
    }
    println!(
        "  attempt logs    {stored} in storage for {starts} starts (an attempt cut short by a SIGKILL leaves none); {spooled} spooled instead of uploaded at once ({backed_up} because the worker's uploads were backed up, the others because storage failed), {uploaded} of the spooled uploaded later, {left_in_spool} left in the spool when the fleet stopped, {dropped} dropped"
    );
}

/// The checks, each with its verdict; true when all are met.
pub fn checks(state: &FinalState) -> bool {
    println!();
    println!("checks");
    let lost = state.lost.len();
    println!(
        "  {:<40} {:<10} {}",
        "no job lost",
        lost,
        verdict(lost == 0)
    );
    println!(
        "  {:<40} {:<10} {}",
        "no job stuck",
        state.stuck,
        verdict(state.stuck == 0)
    );
    lost == 0 && state.stuck == 0
}

/// `items` joined by commas, or `none`.
fn or_none<T: AsRef<str>>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}
