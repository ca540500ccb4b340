//! The command line: how many jobs each scenario submits, how the fleet is sized, where
//! the servers are, and the separate `--backup`, `--scale`, `--pooler` and `--chaos` modes.

use std::path::PathBuf;

use clap::Parser;

use crate::chaos::Fault;

#[derive(Debug, Parser)]
#[command(
    name = "engine-bench",
    // bin/bench passes the server URLs first; a flag given again later wins.
    args_override_self = true,
    about = "End-to-end throughput, latency, round trips and memory of tl-engine, next to a raw lapin loop on the same broker"
)]
pub struct Args {
    /// Jobs of the batched scenario (POST /v1/jobs/batch).
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Jobs per batch request (the API accepts up to 1000).
    #[arg(long, default_value_t = 1_000)]
    pub batch_size: usize,
    /// Batch requests in flight at once (1 measured best: more overflow the API's publish
    /// fast path sooner; see docs/BENCHMARKS.md).
    #[arg(long, default_value_t = 1)]
    pub batch_concurrency: usize,
    /// Jobs of the one-by-one scenario (POST /v1/jobs).
    #[arg(long, default_value_t = 5_000)]
    pub single_jobs: usize,
    /// Client tasks submitting one-by-one at once.
    #[arg(long, default_value_t = 64)]
    pub single_concurrency: usize,
    /// Submissions per second of the paced latency scenario.
    #[arg(long, default_value_t = 500)]
    pub latency_rate: u32,
    /// Seconds the paced latency scenario lasts.
    #[arg(long, default_value_t = 5)]
    pub latency_secs: u64,
    /// Messages of the raw lapin baseline.
    #[arg(long, default_value_t = 30_000)]
    pub raw_messages: usize,
    /// Unconfirmed publishes the raw baseline keeps in flight.
    #[arg(long, default_value_t = 1_000)]
    pub raw_window: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: u16,
    /// Jobs each worker runs at once (also its prefetch, and the raw consumer's prefetch);
    /// 256 measured best on 2 cores (bigger group commits), see docs/BENCHMARKS.md.
    #[arg(long, default_value_t = 256)]
    pub worker_concurrency: u16,
    /// database.max_connections of the API and of each worker.
    #[arg(long, default_value_t = 10)]
    pub db_max_connections: u32,
    /// TOML appended to the generated fleet settings, e.g. "[relay]\nbatch_size = 5000"
    /// (printed in the header; production defaults when absent).
    #[arg(long, default_value = "")]
    pub extra_settings: String,
    /// Jobs each fresh fleet runs, submitted like the scenario's, before the measured ones
    /// (0: measure from a cold start).
    #[arg(long, default_value_t = 200)]
    pub warmup_jobs: usize,
    #[arg(long)]
    pub skip_batched: bool,
    #[arg(long)]
    pub skip_single: bool,
    #[arg(long)]
    pub skip_latency: bool,
    #[arg(long)]
    pub skip_raw: bool,
    /// Longest wait for one scenario's jobs to finish.
    #[arg(long, default_value_t = 180)]
    pub deadline_secs: u64,
    /// PostgreSQL database the fleet and the benchmark use.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/tl_engine_bench"
    )]
    pub database_url: String,
    /// Broker URL; its vhost is replaced by each scenario's own.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// RabbitMQ management API (vhosts are created and deleted through it), with the
    /// AMQP URL's user and password.
    #[arg(long, default_value = "http://127.0.0.1:15672")]
    pub management_url: String,
    /// Where engine-api and engine-worker are; the directory of this binary by default.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Keep the generated settings and the servers' logs (always kept after a failure).
    #[arg(long)]
    pub keep_logs: bool,
    /// Instead of the job scenarios: back up a fresh database filled with job rows and
    /// restore it, with the release engine-api, reporting sizes, time and peak RSS.
    #[arg(long)]
    pub backup: bool,
    /// MiB of job rows (as COPY text) the backup benchmark fills its database with; the
    /// backup object is a little over half of it.
    #[arg(long, default_value_t = 100)]
    pub backup_rows_mib: u64,
    /// Instead of the job scenarios: horizontal scale. One fleet and vhost runs the same
    /// `sleep` jobs with 1, 2 and 4 worker processes, then with 4 while one is SIGKILLed a
    /// third of the way through; fails if a job is lost or did not succeed exactly once,
    /// or if 4 workers are less than 1.5x as fast as 1. Also uses --batch-size,
    /// --batch-concurrency, --warmup-jobs (per run), --db-max-connections, --extra-settings,
    /// --deadline-secs and --keep-logs.
    #[arg(long, conflicts_with = "backup")]
    pub scale: bool,
    /// Instead of the usual run: the batched, one-by-one and paced scenarios twice each,
    /// once with the fleet connected to PostgreSQL directly and once through a PgBouncer of
    /// the benchmark's own in transaction mode with `database.pooler = "transaction"`, then
    /// the two side by side. No raw lapin baseline (the pooler does not touch the broker).
    /// Fails if a job did not succeed exactly once. Uses the scenarios' flags, --skip-*
    /// included.
    #[arg(long, conflicts_with_all = ["backup", "scale"])]
    pub pooler: bool,
    /// PgBouncer's `default_pool_size` (server connections) in the pooler mode; by default
    /// the most the fleet's pools can open at once, so no client waits for a server
    /// connection and only the protocol's cost is measured.
    #[arg(long)]
    pub pooler_server_connections: Option<u16>,
    /// Instead of the usual run: a chaos run. One release fleet (1 API, 3 workers, its own
    /// namespace, vhost and S3 server) runs a mix of noop, sleep and webhook.deliver jobs
    /// (to a receiver in this process that fails a share of deliveries) while workers are
    /// SIGKILLed every 2-5 s and the API, RabbitMQ, Redis, PostgreSQL and the S3 server are
    /// restarted once each (--chaos-faults). The client resends unanswered batches with
    /// the same idempotency keys. Prints accepted, final by status, lost, stuck, duplicate
    /// deliveries and the recovery time; fails if a job is lost or stuck. RESTARTS THE
    /// MACHINE'S SHARED RabbitMQ, Redis AND PostgreSQL unless --chaos-faults leaves them out.
    #[arg(long, conflicts_with_all = ["backup", "scale", "pooler"])]
    pub chaos: bool,
    /// Jobs of the chaos run: half noop, a quarter sleep, a quarter webhook.deliver.
    #[arg(long, default_value_t = 20_000)]
    pub chaos_jobs: usize,
    /// The faults of the chaos run, a comma list: workers (SIGKILL one every 2-5 s and start
    /// a replacement), api (SIGKILL and restart, once), rabbitmq, redis, postgres (restart
    /// the machine's server, once each), s3 (SIGKILL and restart the run's own S3 server).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "workers,api,rabbitmq,redis,postgres,s3"
    )]
    pub chaos_faults: Vec<Fault>,
    /// Seconds the fault phase lasts; jobs are submitted over its first 90 %, and each
    /// server restart falls at its own point, spread evenly over it.
    #[arg(long, default_value_t = 60)]
    pub chaos_seconds: u64,
    /// After the last fault, the longest wait for every accepted job to be final; a job
    /// still not final then is lost. Longer than rescue.after_secs (30) plus retry backoffs.
    #[arg(long, default_value_t = 300)]
    pub chaos_settle_secs: u64,
    /// Jobs per POST /v1/jobs/batch of the chaos run.
    #[arg(long, default_value_t = 200)]
    pub chaos_batch_size: usize,
    /// worker.concurrency (also the prefetch) of each chaos worker: what a SIGKILL cuts short.
    #[arg(long, default_value_t = 32)]
    pub chaos_worker_concurrency: u16,
    /// Percent of webhook deliveries the chaos receiver answers 500.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub chaos_failure_percent: u8,
    /// Seed of the chaos run's choices (which worker dies, the pauses between kills, which
    /// deliveries fail), printed in the header; the same seed makes the same choices.
    #[arg(long, default_value_t = 11)]
    pub chaos_seed: u64,
    /// Jobs of each step of the scale mode.
    #[arg(long, default_value_t = 3_000)]
    pub scale_jobs: usize,
    /// Milliseconds each scale-mode `sleep` job sleeps: I/O-bound, like most real jobs, so
    /// that the 2 cores are not the limit (noop jobs are PostgreSQL-bound).
    #[arg(long, default_value_t = 50)]
    pub scale_sleep_ms: u64,
    /// worker.concurrency (also the prefetch) of each worker process in the scale mode.
    #[arg(long, default_value_t = 16)]
    pub scale_worker_concurrency: u16,
    /// The backup benchmark's S3-compatible server (objects go under `bench-<hex>/backups/`).
    #[arg(long, default_value = "http://127.0.0.1:9100")]
    pub s3_endpoint: String,
    #[arg(long, default_value = "tl-engine")]
    pub s3_bucket: String,
    #[arg(long, default_value = "tl-engine-local")]
    pub s3_access_key: String,
    #[arg(long, default_value = "tl-engine-local-secret")]
    pub s3_secret_key: String,
}
