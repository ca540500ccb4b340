//! The chaos run's jobs: by index, half `noop`, a quarter `sleep` and a quarter
//! `webhook.deliver` to the run's receiver, each with an idempotency key of the run's own
//! and enough attempts that the receiver's failures and the kills do not make it dead.

use serde_json::{Value, json};

use super::receiver::INDEX_FIELD;

/// How long each `sleep` job sleeps: long enough that a SIGKILL often cuts one short.
pub const SLEEP_MS: u64 = 300;

/// Attempts of every job. A webhook fails 15 % of deliveries, and any job may be cut short
/// by several kills (each redelivery is an attempt): the chance of 25 failed attempts in
/// a row is nil, so a `dead` job points at the engine, not at bad luck.
pub const MAX_ATTEMPTS: u32 = 25;

/// The backoff of a failed webhook, in seconds: short, so that retries finish inside the
/// run (the fleet's default doubles to an hour).
const WEBHOOK_BACKOFF_SECS: (u64, u64) = (1, 5);

/// How long the receiver may take to answer one delivery.
const WEBHOOK_TIMEOUT_MS: u64 = 5_000;

/// The kind of each job, by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Share {
    Noop,
    Sleep,
    Webhook,
}

impl Share {
    pub fn of(index: usize) -> Self {
        match index % 4 {
            0 | 1 => Self::Noop,
            2 => Self::Sleep,
            _ => Self::Webhook,
        }
    }
}

/// Builds the run's jobs.
pub struct Mix {
    /// Random per run, so keys never collide with an earlier run's rows.
    run_tag: String,
    receiver_url: String,
}

impl Mix {
    pub fn new(run_tag: &str, receiver_url: &str) -> Self {
        Self {
            run_tag: run_tag.to_owned(),
            receiver_url: receiver_url.to_owned(),
        }
    }

    /// How many of `total` jobs are noop, sleep and webhook.deliver.
    pub fn counts(total: usize) -> (usize, usize, usize) {
        (0..total).fold((0, 0, 0), |(noop, sleep, webhook), index| {
            match Share::of(index) {
                Share::Noop => (noop + 1, sleep, webhook),
                Share::Sleep => (noop, sleep + 1, webhook),
                Share::Webhook => (noop, sleep, webhook + 1),
            }
        })
    }

    /// Job `index` as `POST /v1/jobs/batch` takes it.
    pub fn job(&self, index: usize) -> Value {
        let key = format!("chaos-{}-{index}", self.run_tag);
        match Share::of(index) {
            Share::Noop => json!({
                "kind": "noop", "idempotency_key": key, "max_attempts": MAX_ATTEMPTS,
            }),
            Share::Sleep => json!({
                "kind": "sleep", "args": { "ms": SLEEP_MS },
                "idempotency_key": key, "max_attempts": MAX_ATTEMPTS,
            }),
            Share::Webhook => json!({
                "kind": "webhook.deliver",
                "args": {
                    "url": self.receiver_url,
                    "body": { INDEX_FIELD: index },
                    "timeout_ms": WEBHOOK_TIMEOUT_MS,
                },
                "idempotency_key": key,
                "max_attempts": MAX_ATTEMPTS,
                "backoff": { "min": WEBHOOK_BACKOFF_SECS.0, "max": WEBHOOK_BACKOFF_SECS.1 },
            }),
        }
    }
}
