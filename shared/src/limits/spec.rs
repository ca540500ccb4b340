//! What a limit is: a rate (with burst), a concurrency cap, or both, optionally per key,
//! and what to do when Redis cannot be asked. Declared per kind in code (`Job::limit`) and
//! in settings (`[[limits]]`), where a namespace's rule beats a fleet-wide one, which beats
//! the code's.

use std::time::Duration;

use serde::Deserialize;

/// `count` jobs per `period`, of which up to `burst` may start back to back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

impl Rate {
    /// One job per second per `count`, with no burst beyond one.
    pub fn per_second(count: u32) -> Self {
        Self {
            count,
            period: Duration::from_secs(1),
            burst: 1,
        }
    }

    /// The spacing GCRA keeps between jobs, in microseconds (at least 1).
    pub fn interval_micros(&self) -> u64 {
        (self.period.as_micros() as u64 / u64::from(self.count.max(1))).max(1)
    }
}

/// What a limit check does when Redis does not answer.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RedisErrorPolicy {
    /// Fail open: run the job unlimited (logged once per interval, counted).
    #[default]
    Allow,
    /// Fail closed: defer the job until Redis answers again.
    Defer,
}

/// The limits of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub rate: Option<Rate>,
    /// Most jobs running at once across the whole fleet.
    pub concurrency: Option<u32>,
    /// Separate budgets per the kind's limit key (e.g. a webhook's host).
    pub per_key: bool,
    pub on_redis_error: RedisErrorPolicy,
}

/// A `[[limits]]` entry of the settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    /// The job kind limited.
    pub kind: String,
    /// Only this namespace; every namespace (each with its own budget) when absent.
    pub namespace: Option<String>,
    /// Jobs per `period_ms`.
    pub rate: Option<u32>,
    #[serde(default = "one_second_ms")]
    pub period_ms: u64,
    #[serde(default = "one")]
    pub burst: u32,
    pub concurrency: Option<u32>,
    #[serde(default)]
    pub per_key: bool,
    #[serde(default)]
    pub on_redis_error: RedisErrorPolicy,
}

fn one_second_ms() -> u64 {
    1_000
}
fn one() -> u32 {
    1
}

impl LimitRule {
    /// The limit this rule declares, or why it is not one.
    pub fn limit(&self) -> Result<Limit, String> {
        if self.rate.is_none() && self.concurrency.is_none() {
            return Err("set rate, concurrency, or both".into());
        }
        if self.rate == Some(0) || self.concurrency == Some(0) {
            return Err("rate and concurrency must be at least 1".into());
        }
        if self.period_ms == 0 || self.burst == 0 {
            return Err("period_ms and burst must be at least 1".into());
        }
        Ok(Limit {
            rate: self.rate.map(|count| Rate {
                count,
                period: Duration::from_millis(self.period_ms),
                burst: self.burst,
            }),
            concurrency: self.concurrency,
            per_key: self.per_key,
            on_redis_error: self.on_redis_error,
        })
    }
}
