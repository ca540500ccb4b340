//! Retry timing: exponential backoff with jitter, rounded up to a fixed delay tier.
//!
//! Delays are never held in worker memory: a retry is a message parked in the delay-tier
//! queue whose fixed TTL is at least the computed delay (see [`crate::broker::topology`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize, Serializer};

/// The longest any retry or snooze waits (the API's cap on a job's `backoff` too).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * 86_400);

/// How long failed attempts wait before the next one, and how they are parked.
#[derive(Clone, Debug, Deserialize)]
pub struct RetryPolicy {
    /// Delay before the second attempt; doubles with every further attempt.
    #[serde(default = "default_base_ms")]
    pub base_delay_ms: u64,
    /// Upper bound of the computed delay.
    #[serde(default = "default_max_ms")]
    pub max_delay_ms: u64,
    /// The TTLs of the delay-tier queues, ascending. A delay is rounded up to one of them.
    #[serde(default = "default_tiers_ms")]
    pub tiers_ms: Vec<u64>,
    /// Quorum-queue redeliveries after which a message that keeps killing its worker is
    /// dead-lettered (`x-delivery-limit`).
    #[serde(default = "default_delivery_limit")]
    pub delivery_limit: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_delay_ms: default_base_ms(),
            max_delay_ms: default_max_ms(),
            tiers_ms: default_tiers_ms(),
            delivery_limit: default_delivery_limit(),
        }
    }
}

/// What every delay-tier queue's name starts with.
const DELAY_QUEUE_PREFIX: &str = "jobs.delay.";

/// One delay-tier queue: `jobs.delay.<label>` with `x-message-ttl = ttl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelayTier {
    pub ttl: Duration,
    /// Human-readable TTL (`1s`, `2m`, `1h`) used in queue names and routing keys.
    pub label: String,
}

impl DelayTier {
    pub(crate) fn new(ttl_ms: u64) -> Self {
        let label = if ttl_ms.is_multiple_of(3_600_000) {
            format!("{}h", ttl_ms / 3_600_000)
        } else if ttl_ms.is_multiple_of(60_000) {
            format!("{}m", ttl_ms / 60_000)
        } else if ttl_ms.is_multiple_of(1_000) {
            format!("{}s", ttl_ms / 1_000)
        } else {
            format!("{ttl_ms}ms")
        };
        Self {
            ttl: Duration::from_millis(ttl_ms),
            label,
        }
    }

    /// The tier a label names (`1s`, `2m`, `1h`, `250ms`): the inverse of the label
    /// [`DelayTier::new`] gives, so a queue name read back names the same tier.
    fn from_label(label: &str) -> Option<Self> {
        let (number, unit_ms) = [("ms", 1), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)]
            .into_iter()
            .find_map(|(unit, ms)| Some((label.strip_suffix(unit)?, ms)))?;
        let ttl_ms = number.parse::<u64>().ok()?.checked_mul(unit_ms)?;
        let tier = Self::new(ttl_ms);
        (tier.label == label).then_some(tier)
    }

    /// The AMQP queue holding messages of this tier.
    pub fn queue_name(&self) -> String {
        format!("{DELAY_QUEUE_PREFIX}{}", self.label)
    }

    /// The routing key that reaches this tier's queue on the `jobs.delay` exchange.
    pub fn routing_key(&self) -> String {
        format!("delay.{}", self.label)
    }
}

impl RetryPolicy {
    /// Checks the tiers are usable; the message is shown as the `retry` setting's defect.
    pub fn validate(&self) -> Result<(), String> {
        if self.tiers_ms.is_empty() {
            return Err("tiers_ms needs at least one tier".into());
        }
        if self.tiers_ms.windows(2).any(|w| w[0] >= w[1]) || self.tiers_ms[0] == 0 {
            return Err("tiers_ms must be positive and strictly ascending".into());
        }
        if self.base_delay_ms == 0 || self.max_delay_ms < self.base_delay_ms {
            return Err("need 0 < base_delay_ms <= max_delay_ms".into());
        }
        if self.max_delay_ms > MAX_RETRY_DELAY.as_millis() as u64 {
            return Err(format!(
                "max_delay_ms must be at most {} (7 days)",
                MAX_RETRY_DELAY.as_millis()
            ));
        }
        Ok(())
    }

    pub fn tiers(&self) -> Vec<DelayTier> {
        self.tiers_ms.iter().map(|&ms| DelayTier::new(ms)).collect()
    }

    /// The fleet-wide backoff, used where neither the job nor its kind sets one.
    pub fn default_backoff(&self) -> Backoff {
        Backoff {
            min: Duration::from_millis(self.base_delay_ms),
            max: Duration::from_millis(self.max_delay_ms),
        }
    }

    /// The smallest tier at least as long as `delay` (the largest tier if none is).
    pub fn tier_for(&self, delay: Duration) -> DelayTier {
        let wanted = delay.as_millis() as u64;
        let ms = self
            .tiers_ms
            .iter()
            .copied()
            .find(|&tier| tier >= wanted)
            .unwrap_or_else(|| *self.tiers_ms.last().expect("validated: at least one tier"));
        DelayTier::new(ms)
    }

    /// The tier a deferral of `delay` waits in: the longest tier not longer than `delay`
    /// (the message comes back early and is parked again for the rest), or the shortest
    /// tier when `delay` is shorter than all of them. So a deferral is never late by more
    /// than the shortest tier, and never waits in PostgreSQL.
    pub fn deferral_tier(&self, delay: Duration) -> DelayTier {
        let wanted = delay.as_millis() as u64;
        let ms = self
            .tiers_ms
            .iter()
            .copied()
            .rev()
            .find(|&tier| tier <= wanted)
            .unwrap_or(self.tiers_ms[0]);
        DelayTier::new(ms)
    }

    /// Where a retry after `delay` waits: the smallest delay tier that is at least as long,
    /// or PostgreSQL (released by the scheduler) when even the largest tier is shorter.
    pub fn route_for(&self, delay: Duration) -> RetryRoute {
        // A snooze or a kind's backoff could ask for anything; nothing waits longer.
        let delay = delay.min(MAX_RETRY_DELAY);
        let largest = *self.tiers_ms.last().expect("validated: at least one tier");
        if delay.as_millis() as u64 > largest {
            RetryRoute::Scheduler(delay)
        } else {
            RetryRoute::Tier(self.tier_for(delay))
        }
    }
}

/// The exponential backoff of one job: `min * 2^(attempt-1)`, at most `max`, with jitter.
/// Set per kind (`Job::backoff` in engine-jobs), per job at submit, or fleet-wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failed attempt.
    pub min: Duration,
    /// The cap, whatever the attempt.
    pub max: Duration,
}

impl Backoff {
    /// The delay after failed attempt number `attempt` (1-based), with ±25 % jitter so a
    /// burst of failures does not retry in lockstep, kept within `min..=max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let (min, max) = (self.min.as_millis() as u64, self.max.as_millis() as u64);
        let exponent = attempt.saturating_sub(1).min(32);
        let raw = min.saturating_mul(1u64 << exponent).min(max);
        let jitter = rand::rng().random_range(0.75..=1.25);
        let jittered = ((raw as f64) * jitter) as u64;
        Duration::from_millis(jittered.clamp(min, max.max(min)))
    }
}

/// Where a delayed retry waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryRoute {
    /// In a delay-tier queue; its TTL expiry is the retry.
    Tier(DelayTier),
    /// In PostgreSQL (`retrying`, unpublished, `run_at` in the future) until the scheduler
    /// releases it: for delays longer than the largest tier.
    Scheduler(Duration),
}

impl RetryRoute {
    /// How long the retry actually waits (a tier rounds the wanted delay up).
    pub fn delay(&self) -> Duration {
        match self {
            Self::Tier(tier) => tier.ttl,
            Self::Scheduler(delay) => *delay,
        }
    }

    /// Where the retry waits, as the attempt's error records it.
    pub fn via(&self) -> RetryVia {
        match self {
            Self::Tier(tier) => RetryVia::Tier(tier.clone()),
            Self::Scheduler(_) => RetryVia::Scheduler,
        }
    }
}

/// Where a retry waited, as `job_errors.retry_via` records it and `GET /v1/jobs/{id}`
/// shows it: the delay tier's queue name (`jobs.delay.5s`), or `scheduler`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryVia {
    /// A delay-tier queue.
    Tier(DelayTier),
    /// PostgreSQL, until the scheduler released it.
    Scheduler,
}

impl fmt::Display for RetryVia {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tier(tier) => f.write_str(&tier.queue_name()),
            Self::Scheduler => f.write_str("scheduler"),
        }
    }
}

/// Why a recorded `retry_via` names neither a delay tier nor the scheduler.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither a delay-tier queue (jobs.delay.<ttl>) nor \"scheduler\"")]
pub struct UnknownRetryVia(pub String);

impl FromStr for RetryVia {
    type Err = UnknownRetryVia;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "scheduler" {
            return Ok(Self::Scheduler);
        }
        text.strip_prefix(DELAY_QUEUE_PREFIX)
            .and_then(DelayTier::from_label)
            .map(Self::Tier)
            .ok_or_else(|| UnknownRetryVia(text.to_owned()))
    }
}

impl Serialize for RetryVia {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

fn default_base_ms() -> u64 {
    1_000
}
fn default_max_ms() -> u64 {
    3_600_000
}
fn default_tiers_ms() -> Vec<u64> {
    vec![1_000, 5_000, 30_000, 120_000, 600_000, 3_600_000]
}
fn default_delivery_limit() -> u32 {
    20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_a_tier() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.tier_for(Duration::from_millis(1)).label, "1s");
        assert_eq!(policy.tier_for(Duration::from_millis(1_001)).label, "5s");
        assert_eq!(policy.tier_for(Duration::from_secs(100)).label, "2m");
        assert_eq!(policy.tier_for(Duration::from_secs(86_400)).label, "1h");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let backoff = RetryPolicy::default().default_backoff();
        let first = backoff.delay(1).as_millis();
        assert!((1_000..=1_250).contains(&first), "never below min: {first}");
        let tenth = backoff.delay(10).as_millis();
        assert!((384_000..=640_000).contains(&tenth), "{tenth}");
        assert!(
            backoff.delay(40).as_millis() <= 3_600_000,
            "never above max"
        );
    }

    #[test]
    fn deferrals_take_the_longest_tier_that_is_not_too_long() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.deferral_tier(Duration::from_millis(10)).label, "1s");
        assert_eq!(
            policy.deferral_tier(Duration::from_millis(4_999)).label,
            "1s"
        );
        assert_eq!(policy.deferral_tier(Duration::from_secs(40)).label, "30s");
        assert_eq!(
            policy.deferral_tier(Duration::from_secs(86_400)).label,
            "1h"
        );
    }

    #[test]
    fn delays_beyond_the_largest_tier_go_to_the_scheduler() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.route_for(Duration::from_secs(2)),
            RetryRoute::Tier(DelayTier::new(5_000))
        );
        assert_eq!(
            policy
                .route_for(Duration::from_secs(3_600))
                .via()
                .to_string(),
            "jobs.delay.1h"
        );
        let long = Duration::from_secs(7_200);
        assert_eq!(policy.route_for(long), RetryRoute::Scheduler(long));
        assert_eq!(policy.route_for(long).via().to_string(), "scheduler");
    }

    #[test]
    fn a_recorded_via_reads_back_as_the_tier_or_the_scheduler_it_names() {
        for ms in [250, 1_000, 5_000, 90_000, 120_000, 3_600_000, 7_200_000] {
            let via = RetryRoute::Tier(DelayTier::new(ms)).via();
            assert_eq!(via.to_string().parse(), Ok(via.clone()), "{via}");
            assert_eq!(serde_json::to_value(&via).unwrap(), via.to_string());
        }
        assert_eq!("scheduler".parse(), Ok(RetryVia::Scheduler));
        for bad in [
            "jobs.delay.",
            "jobs.delay.60s",
            "jobs.delay.1d",
            "jobs.default",
            "",
        ] {
            assert!(bad.parse::<RetryVia>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tiers_must_ascend() {
        let policy = RetryPolicy {
            tiers_ms: vec![5_000, 1_000],
            ..RetryPolicy::default()
        };
        assert!(policy.validate().is_err());
    }
}
