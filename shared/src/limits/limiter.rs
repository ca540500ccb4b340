//! The limiter: asks Redis (one script call per check) whether a job may start now, when
//! its reserved rate slot comes, or whether a concurrency slot is free; and decides, from
//! the settings and the kind's own declaration, which limit applies to a job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use super::scripts;
use super::spec::{Limit, LimitRule, Rate};
use crate::Namespace;

/// Redis commands this process sent for limits, for tests and the benchmark.
static REDIS_CALLS: AtomicU64 = AtomicU64::new(0);

/// Redis commands this process has sent for limits so far.
pub fn redis_calls() -> u64 {
    REDIS_CALLS.load(Ordering::Relaxed)
}

/// The farthest ahead a rate reservation may lie; a backlog beyond it asks again later
/// instead of booking slots for a day.
const RESERVATION_HORIZON: Duration = Duration::from_secs(6 * 3_600);

/// How often a Redis outage is logged while it lasts.
const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Redis could not be asked (down, timed out, refused).
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct LimiterError(String);

impl From<redis::RedisError> for LimiterError {
    /// Keeps only what cannot quote the URL: see [`redacted`].
    fn from(error: redis::RedisError) -> Self {
        Self(redacted(&error))
    }
}

/// The outcome of a rate check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateOutcome {
    /// A slot is taken; start after this wait (zero: now).
    Reserved(Duration),
    /// No slot taken; ask again after this long.
    Refused(Duration),
}

/// Redis settings.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub url: SecretString,
    /// Connect and response timeout: a slow Redis must not stall job starts.
    pub timeout: Duration,
}

pub struct Limiter {
    /// Multiplexed and lazy: it connects on first use, so a process starts while Redis is
    /// down, and it reconnects by itself; callers never queue behind one another's
    /// connection attempts.
    connection: ConnectionManager,
    rules: Vec<LimitRule>,
    gcra: Script,
    acquire: Script,
    /// Checks that failed on Redis since start, and when that was last logged.
    failures: AtomicU64,
    last_logged: Mutex<Option<Instant>>,
}

impl Limiter {
    /// Builds the limiter; nothing connects yet. `url` may be `redis://` or `rediss://`.
    pub fn new(settings: &RedisSettings, rules: Vec<LimitRule>) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.url.expose_secret())
            .map_err(|e| anyhow::anyhow!("REDIS_URL (redis.url) is not usable: {:?}", e.kind()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("setting up the Redis connection: {}", redacted(&e)))?;
        Ok(Self {
            connection,
            rules,
            gcra: Script::new(scripts::GCRA),
            acquire: Script::new(scripts::ACQUIRE_SLOT),
            failures: AtomicU64::new(0),
            last_logged: Mutex::new(None),
        })
    }

    /// The limit for `kind` in `namespace`: the namespace's rule, else the fleet-wide rule,
    /// else what the kind declares in code.
    pub fn limit_for(
        &self,
        namespace: &Namespace,
        kind: &str,
        declared: Option<Limit>,
    ) -> Option<Limit> {
        let rule = |scoped: bool| {
            self.rules.iter().find(|rule| {
                rule.kind == kind
                    && match &rule.namespace {
                        Some(name) => scoped && name == namespace.as_str(),
                        None => !scoped,
                    }
            })
        };
        rule(true)
            .or_else(|| rule(false))
            .and_then(|rule| rule.limit().ok())
            .or(declared)
    }

    /// One `PING`: Redis answers (readiness).
    pub async fn ping(&self) -> anyhow::Result<()> {
        // Not counted in `redis_calls`: readiness is not a limit check.
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            // Redacted as every other Redis error: the detailed readiness report shows it.
            .map_err(|e| anyhow::anyhow!("{}", redacted(&e)))
    }

    /// A handle to the shared connection for one limit command, counted in
    /// [`redis_calls`] (cheap: the manager is a multiplexed handle).
    fn counted_connection(&self) -> ConnectionManager {
        REDIS_CALLS.fetch_add(1, Ordering::Relaxed);
        self.connection.clone()
    }

    /// Takes a rate slot for one job at `key`. With `reserve`, the next free slot is always
    /// taken (up to a horizon) and the answer is how long to wait for it — jobs queue for
    /// their turn without asking again. Without, a slot is taken only if one is free now.
    pub async fn take_rate(
        &self,
        key: &str,
        rate: &Rate,
        cost: u32,
        reserve: bool,
    ) -> Result<RateOutcome, LimiterError> {
        let mut connection = self.counted_connection();
        let (taken, wait_micros): (i64, i64) = self
            .gcra
            .key(key)
            .arg(rate.interval_micros())
            .arg(rate.burst)
            .arg(cost)
            .arg(if reserve { 1 } else { 0 })
            .arg(RESERVATION_HORIZON.as_millis() as u64)
            .invoke_async(&mut connection)
            .await
            .map_err(LimiterError::from)?;
        let wait = Duration::from_micros(u64::try_from(wait_micros).unwrap_or(0));
        Ok(if taken == 1 {
            RateOutcome::Reserved(wait)
        } else {
            RateOutcome::Refused(wait)
        })
    }

    /// Takes (or renews) one of `limit` slots at `key` for `holder` for `lease`. `None`
    /// when taken; else how long until the earliest lease expires.
    pub async fn acquire_slot(
        &self,
        key: &str,
        limit: u32,
        holder: &str,
        lease: Duration,
    ) -> Result<Option<Duration>, LimiterError> {
        let mut connection = self.counted_connection();
        let (taken, wait_ms): (i64, i64) = self
            .acquire
            .key(key)
            .arg(limit)
            .arg(holder)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut connection)
            .await
            .map_err(LimiterError::from)?;
        Ok((taken != 1).then(|| Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))))
    }

    /// Gives `holder`'s slot at `key` back.
    pub async fn release_slot(&self, key: &str, holder: &str) -> Result<(), LimiterError> {
        let mut connection = self.counted_connection();
        redis::cmd("ZREM")
            .arg(key)
            .arg(holder)
            .query_async::<i64>(&mut connection)
            .await
            .map(drop)
            .map_err(LimiterError::from)
    }

    /// Counts a failed check and logs it, once per interval while the outage lasts.
    pub async fn report_failure(&self, error: &LimiterError, policy: &str) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::metrics().dependency_error("redis");
        let mut last = self.last_logged.lock().await;
        if last.is_none_or(|at| at.elapsed() >= OUTAGE_LOG_INTERVAL) {
            *last = Some(Instant::now());
            tracing::warn!(%error, failures, policy, "limit check failed: Redis is unavailable");
        }
    }

    /// Limit checks that failed on Redis since this process started.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// A redis error without anything that could quote the URL (and its password).
fn redacted(error: &redis::RedisError) -> String {
    match error.code() {
        Some(code) => format!("{:?} ({code})", error.kind()),
        None if error.is_timeout() => "timed out".to_owned(),
        None if error.is_connection_refusal() => "connection refused".to_owned(),
        None if error.is_io_error() => "i/o error".to_owned(),
        None => format!("{:?}", error.kind()),
    }
}
