//! The typed settings sections the binaries read: API, relay, database, worker, job logs,
//! the history archive and backups.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::namespace::Namespace;

/// HTTP API settings.
#[derive(Clone, Debug, Deserialize)]
pub struct ApiSettings {
    /// Address to listen on; port 0 picks a free port (tests).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest request body accepted; larger ones get 413.
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: usize,
    /// Most jobs one batch request may carry.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Largest `args` one job may carry, measured as its JSON text; larger ones get 422.
    /// Every job's args pass through the relay, the broker and the worker whole.
    #[serde(default = "default_max_args_bytes")]
    pub max_args_bytes: usize,
    /// Most bytes of `args` and `result` one `GET /v1/jobs` page carries; a page stops
    /// before the job that would pass it (it always holds one) and links the rest by `next`.
    #[serde(default = "default_page_max_bytes")]
    pub page_max_bytes: i64,
    /// How long a verified API key is trusted without asking PostgreSQL again.
    #[serde(default = "default_key_cache_secs")]
    pub key_cache_secs: u64,
    /// Jobs one API key may submit per second (0: unlimited); over it, 429. On by default,
    /// so one tenant's runaway client cannot fill the database and the broker for all.
    #[serde(default = "default_submit_rate_per_sec")]
    pub submit_rate_per_sec: u32,
    /// Jobs one API key may submit back to back before the rate applies.
    #[serde(default = "default_submit_burst")]
    pub submit_burst: u32,
    /// A second address for operators: `/metrics` and `/readyz` with reasons move here
    /// (off the public port). `None`: the public port serves `/metrics` too.
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// How long one of a tenant's searches (a job listing, a redrive by filter) may run in
    /// PostgreSQL before it is stopped and answered 503.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Most unfinished jobs a namespace may have (0: no cap); a submission past it gets 429.
    /// `namespaces.<ns>.max_pending` overrides it per namespace.
    #[serde(default = "default_max_pending")]
    pub max_pending: u64,
}

fn default_max_pending() -> u64 {
    crate::quota::DEFAULT_MAX_PENDING
}

/// `api.read_timeout_ms`'s default, also what a store built without API settings uses.
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 5_000;

fn default_read_timeout_ms() -> u64 {
    DEFAULT_READ_TIMEOUT_MS
}

/// Far above what a tenant's steady traffic needs, far below what fills a database in an
/// afternoon (500 a second is 1.8 million jobs an hour per key).
fn default_submit_rate_per_sec() -> u32 {
    500
}

fn default_submit_burst() -> u32 {
    1_000
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            body_limit_bytes: default_body_limit(),
            max_batch: default_max_batch(),
            max_args_bytes: default_max_args_bytes(),
            page_max_bytes: default_page_max_bytes(),
            key_cache_secs: default_key_cache_secs(),
            submit_rate_per_sec: default_submit_rate_per_sec(),
            submit_burst: default_submit_burst(),
            admin_listen: None,
            read_timeout_ms: default_read_timeout_ms(),
            max_pending: default_max_pending(),
        }
    }
}

/// Outbox relay settings (the sweeper that publishes what the fast path left behind).
#[derive(Clone, Debug, Deserialize)]
pub struct RelaySettings {
    /// How often the sweeper looks for unpublished or due jobs.
    #[serde(default = "default_sweep_ms")]
    pub sweep_interval_ms: u64,
    /// A queued job younger than this belongs to the fast path; the sweeper leaves it alone.
    #[serde(default = "default_publish_grace_ms")]
    pub publish_grace_ms: u64,
    /// Most rows one claim takes; a sweep keeps claiming while claims come back full.
    #[serde(default = "default_sweep_batch")]
    pub batch_size: i64,
    /// Most bytes of args one claim (of the sweeper, the scheduler, or a redrive's fast
    /// path) holds; a claim stops before the row that would pass it (it always takes one),
    /// so its memory is bounded however large the rows due at once are.
    #[serde(default = "default_claim_max_bytes")]
    pub claim_max_bytes: i64,
    /// How long a submission waits for room in the fast path before leaving its jobs to
    /// the sweeper. Back-pressure: a client submitting faster than the relay publishes is
    /// slowed down rather than having its jobs wait `publish_grace_ms` for the sweeper.
    #[serde(default = "default_fast_path_wait_ms")]
    pub fast_path_wait_ms: u64,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            sweep_interval_ms: default_sweep_ms(),
            publish_grace_ms: default_publish_grace_ms(),
            batch_size: default_sweep_batch(),
            claim_max_bytes: default_claim_max_bytes(),
            fast_path_wait_ms: default_fast_path_wait_ms(),
        }
    }
}

impl RelaySettings {
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms)
    }
    pub fn publish_grace(&self) -> Duration {
        Duration::from_millis(self.publish_grace_ms)
    }
    pub fn fast_path_wait(&self) -> Duration {
        Duration::from_millis(self.fast_path_wait_ms)
    }
}

/// PostgreSQL settings.
#[derive(Clone, Debug)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub migrate_on_start: bool,
    /// What sits between the fleet and PostgreSQL; decides how statements are sent.
    pub pooler: Pooler,
}

/// `database.pooler`: what `DATABASE_URL` points at, written `"none"` or `"transaction"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Pooler {
    /// PostgreSQL itself (or a session-mode pooler): statements are prepared once per
    /// connection and cached by name, and the relaxed pool sets `synchronous_commit` at
    /// connection start-up.
    #[default]
    None,
    /// A transaction-mode pooler (PgBouncer's `pool_mode = transaction`, Neon's `-pooler`
    /// endpoint), which lends a server connection for one transaction at a time: every unit
    /// of work runs in a transaction with unnamed statements, and connections send no
    /// start-up parameter a pooler may refuse. Migrations need a direct connection.
    Transaction,
}

impl TryFrom<String> for Pooler {
    type Error = String;

    /// The setting's text; the error names the choices. By hand rather than serde's
    /// `rename_all`, because the config crate's message for an unknown variant names none.
    fn try_from(setting: String) -> Result<Self, Self::Error> {
        match setting.as_str() {
            "none" => Ok(Self::None),
            "transaction" => Ok(Self::Transaction),
            other => Err(format!(
                "must be \"none\" or \"transaction\", not {other:?}"
            )),
        }
    }
}

/// Worker settings.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Jobs run at once by this process; also each consumer's prefetch.
    pub concurrency: u16,
    /// After SIGTERM, how long in-flight jobs may take before they are returned to the queue.
    pub grace_period: Duration,
    /// Namespaces this worker serves; all configured ones when empty.
    pub namespaces: Vec<Namespace>,
    /// Recorded on attempts so a person can tell which pod ran what.
    pub id: String,
    /// Largest handler result stored, as JSON text; a larger one fails the attempt
    /// fatally (the job goes `dead` with the sizes in its error), so neither the row nor a
    /// listing ever holds it.
    pub max_result_bytes: usize,
    /// Where the worker serves `/healthz`, `/readyz` (and `/metrics`); `None`: not served.
    pub health_listen: Option<String>,
    /// `/healthz` fails once a namespace's consumers have been down this long: a worker
    /// that cannot get back to its queues should be restarted.
    pub liveness_grace: Duration,
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}

fn default_body_limit() -> usize {
    4 * 1024 * 1024
}

fn default_max_batch() -> usize {
    1_000
}

/// 256 KiB: the cap on one job's args and on one result.
pub(super) fn default_payload_cap() -> usize {
    256 * 1024
}

fn default_max_args_bytes() -> usize {
    default_payload_cap()
}

fn default_page_max_bytes() -> i64 {
    8 * 1024 * 1024
}

/// 4 MiB: a claim's rows are held about four times over while published (rows, messages,
/// their encoding, the client's frames).
fn default_claim_max_bytes() -> i64 {
    4 * 1024 * 1024
}

fn default_key_cache_secs() -> u64 {
    30
}

fn default_sweep_ms() -> u64 {
    1_000
}

fn default_publish_grace_ms() -> u64 {
    2_000
}

fn default_sweep_batch() -> i64 {
    500
}

fn default_fast_path_wait_ms() -> u64 {
    1_000
}

/// `[logs]`: what is kept of each attempt's log lines, and where they wait while storage is
/// unreachable.
#[derive(Clone, Debug, Deserialize)]
pub struct LogSettings {
    /// Most bytes of log text kept per attempt; later lines are dropped and counted, so a
    /// chatty handler cannot exhaust the worker's memory.
    #[serde(default = "default_log_max_kib")]
    pub max_kib_per_attempt: usize,
    /// Logs that could not be uploaded wait here (an `emptyDir` in Kubernetes).
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
    /// The spool never grows past this; a log that would not fit is dropped with a warning.
    #[serde(default = "default_spool_max_mib")]
    pub spool_max_mib: u64,
    /// How often spooled logs are offered to storage again.
    #[serde(default = "default_spool_retry_secs")]
    pub spool_retry_secs: u64,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            max_kib_per_attempt: default_log_max_kib(),
            spool_dir: default_spool_dir(),
            spool_max_mib: default_spool_max_mib(),
            spool_retry_secs: default_spool_retry_secs(),
        }
    }
}

fn default_log_max_kib() -> usize {
    1_024
}
fn default_spool_dir() -> PathBuf {
    std::env::temp_dir().join("tl-engine-spool")
}
fn default_spool_max_mib() -> u64 {
    256
}
fn default_spool_retry_secs() -> u64 {
    10
}

/// `[archive]`: finished jobs older than `after_days` move to storage as gzipped JSON lines.
#[derive(Clone, Debug, Deserialize)]
pub struct ArchiveSettings {
    /// Age (since finishing) after which a job is archived; 0 turns archiving off.
    #[serde(default = "default_archive_after_days")]
    pub after_days: u32,
    /// How often the API replicas try to archive (one of them at a time does).
    #[serde(default = "default_archive_interval_secs")]
    pub interval_secs: u64,
    /// Jobs per archive object.
    #[serde(default = "default_archive_batch")]
    pub batch_size: u32,
    /// Most bytes of args and results per archive object (the batch is held in memory
    /// while it is gzipped and put); a batch stops before the job that would pass it.
    #[serde(default = "default_archive_batch_max_bytes")]
    pub batch_max_bytes: i64,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        Self {
            after_days: default_archive_after_days(),
            interval_secs: default_archive_interval_secs(),
            batch_size: default_archive_batch(),
            batch_max_bytes: default_archive_batch_max_bytes(),
        }
    }
}

fn default_archive_after_days() -> u32 {
    30
}
fn default_archive_interval_secs() -> u64 {
    3_600
}
fn default_archive_batch() -> u32 {
    5_000
}
fn default_archive_batch_max_bytes() -> i64 {
    64 * 1024 * 1024
}

/// `[backup]`: database backups under `backups/` in the fleet's bucket.
#[derive(Clone, Debug, Deserialize)]
pub struct BackupSettings {
    /// Backups kept; older ones are deleted after each new one is complete.
    #[serde(default = "default_backup_keep")]
    pub keep: u32,
    /// The only namespace whose API keys may submit `db.backup` (it backs up every
    /// namespace's rows); `None`: the kind is refused through the API.
    pub namespace: Option<Namespace>,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            keep: default_backup_keep(),
            namespace: None,
        }
    }
}

fn default_backup_keep() -> u32 {
    7
}

/// `[rescue]`: how long a job may sit with nobody running it and nothing to deliver it
/// before the rescuer hands it back to work, and the lease that tells a live attempt from
/// a dead one.
#[derive(Clone, Debug, Deserialize)]
pub struct RescueSettings {
    /// The bound: a job that nobody runs and no message will deliver is handed back to work
    /// within about this long (an expired lease, or a due job nobody started).
    #[serde(default = "default_rescue_after_secs")]
    pub after_secs: u64,
    /// How long a running attempt's lease lasts; its worker renews it every third of this.
    /// An attempt whose worker dies (or loses PostgreSQL) for longer is taken as dead.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

impl Default for RescueSettings {
    fn default() -> Self {
        Self {
            after_secs: default_rescue_after_secs(),
            lease_secs: default_lease_secs(),
        }
    }
}

impl RescueSettings {
    /// How often each API replica's rescuer looks: five times per bound.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.after_secs.saturating_mul(200).max(200))
    }

    /// How long a due, published job may go unstarted before it is taken as lost: the
    /// bound less one interval, so the pass that finds it still falls within the bound.
    pub fn unstarted_after(&self) -> Duration {
        Duration::from_secs(self.after_secs).saturating_sub(self.interval())
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    /// How often a worker renews the leases of its running attempts.
    pub fn renew_every(&self) -> Duration {
        self.lease() / 3
    }
}

fn default_rescue_after_secs() -> u64 {
    300
}

fn default_lease_secs() -> u64 {
    60
}
