//! A submitted job as the API receives it, checked against the registry and settings and
//! turned into a [`NewJob`]. Every defect is reported with the field it is in.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use engine_jobs::{KindDefaults, Registry};
use engine_shared::config::Settings;
use engine_shared::retry::Backoff;
use engine_shared::store::NewJob;
use engine_shared::{IdempotencyKey, JobId, Kind, Namespace, QueueName};

use crate::problem::FieldError;

/// Why a priority other than 0 is refused. RabbitMQ 3.10's quorum queues ignore the
/// message priority, so accepting one would promise an order nothing delivers.
pub const PRIORITY_UNSUPPORTED: &str = "priorities are not supported (the broker's queues \
     ignore them): omit it or send 0, and use `queue` (e.g. \"critical\") for urgent work";

/// `POST /v1/jobs` body (and each element of a batch).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    pub kind: String,
    #[serde(default = "empty_object")]
    pub args: serde_json::Value,
    pub queue: Option<String>,
    /// Only 0 (the default) is accepted: see [`PRIORITY_UNSUPPORTED`].
    pub priority: Option<u8>,
    /// Run no earlier than this instant (RFC 3339). Excludes `delay`.
    pub run_at: Option<DateTime<Utc>>,
    /// Run no earlier than this many seconds from now. Excludes `run_at`.
    pub delay: Option<f64>,
    /// Attempts including the first, 1 to 100; the kind's default otherwise.
    pub max_attempts: Option<u32>,
    /// Seconds one attempt may take, up to a day; the kind's default otherwise.
    pub timeout: Option<f64>,
    pub idempotency_key: Option<String>,
    /// Backoff between failed attempts; the kind's (or the fleet's) otherwise.
    pub backoff: Option<BackoffRequest>,
}

/// `backoff` in a submission: seconds, `min` after the first failure, doubling up to `max`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffRequest {
    pub min: f64,
    pub max: f64,
}

/// The longest backoff a job may ask for (it is stored in milliseconds as `integer`).
const MAX_BACKOFF_SECS: f64 = 7.0 * 86_400.0;
/// The shortest: it is stored in whole milliseconds (truncated), which must be above 0
/// (`CHECK (backoff_min_ms > 0)`).
const MIN_BACKOFF_SECS: f64 = 0.001;

impl BackoffRequest {
    fn to_backoff(self) -> Result<Backoff, String> {
        let Self { min, max } = self;
        // Compared in whole milliseconds, as stored, so no rounding of the float can slip
        // a 0 ms minimum through.
        let millis = |secs: f64| (secs * 1000.0).floor();
        if millis(min) >= 1.0 && min <= max && max <= MAX_BACKOFF_SECS {
            Ok(Backoff {
                min: Duration::from_millis(millis(min) as u64),
                max: Duration::from_millis(millis(max) as u64),
            })
        } else {
            Err(format!(
                "need {MIN_BACKOFF_SECS} <= min <= max <= {MAX_BACKOFF_SECS} seconds \
                 (it is kept in whole milliseconds)"
            ))
        }
    }
}

/// The earliest `run_at` accepted: well inside `timestamptz` (which starts in 4713 BC,
/// where chrono goes further back), and no later than any real schedule's past.
const EARLIEST_RUN_AT: &str = "0001-01-01T00:00:00Z";

/// When a job may start, from `run_at` or `delay`; `Err` names the field at fault.
fn run_at_of(
    run_at: Option<DateTime<Utc>>,
    delay: Option<f64>,
) -> Result<Option<DateTime<Utc>>, (&'static str, String)> {
    let earliest: DateTime<Utc> = EARLIEST_RUN_AT.parse().expect("a valid RFC 3339 instant");
    match (run_at, delay) {
        (Some(_), Some(_)) => Err(("delay", "give either run_at or delay, not both".into())),
        (Some(at), None) if at >= earliest => Ok(Some(at)),
        (Some(_), None) => Err((
            "run_at",
            format!("must be no earlier than {EARLIEST_RUN_AT}"),
        )),
        (None, Some(delay)) if (0.0..=MAX_DELAY_SECS).contains(&delay) => Ok(Some(
            Utc::now() + chrono::Duration::milliseconds((delay * 1000.0) as i64),
        )),
        (None, Some(_)) => Err((
            "delay",
            format!("must be between 0 and {MAX_DELAY_SECS} seconds"),
        )),
        (None, None) => Ok(None),
    }
}

/// `POST /v1/jobs/batch` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch {
    pub jobs: Vec<SubmitJob>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

const MAX_DELAY_SECS: f64 = 365.0 * 86_400.0;

/// `priority`: only 0 (see [`PRIORITY_UNSUPPORTED`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Priority(u8);

impl Priority {
    /// An absent priority is 0.
    fn parse(requested: Option<u8>) -> Result<Self, String> {
        match requested.unwrap_or(0) {
            0 => Ok(Self(0)),
            _ => Err(PRIORITY_UNSUPPORTED.into()),
        }
    }
}

/// `max_attempts`: attempts including the first, 1 to 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MaxAttempts(u32);

impl MaxAttempts {
    fn parse(attempts: u32) -> Result<Self, String> {
        if (1..=100).contains(&attempts) {
            Ok(Self(attempts))
        } else {
            Err("must be between 1 and 100".into())
        }
    }
}

/// The most seconds `timeout` may ask for, whatever the broker allows.
const MAX_TIMEOUT_SECS: f64 = 86_400.0;

/// `timeout`: how long one attempt may run, in whole milliseconds (rounded up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AttemptTimeout {
    millis: u32,
}

impl AttemptTimeout {
    /// The most seconds an attempt may be given. RabbitMQ closes the channel of a delivery
    /// unacked past its consumer timeout, so an attempt may not be allowed to run that long.
    fn ceiling_secs(settings: &Settings) -> f64 {
        settings
            .max_attempt_timeout()
            .as_secs_f64()
            .min(MAX_TIMEOUT_SECS)
    }

    /// A timeout the submitter asked for: more than 0 and at most the ceiling.
    fn parse(secs: f64, settings: &Settings) -> Result<Self, String> {
        let ceiling = Self::ceiling_secs(settings);
        if secs > 0.0 && secs <= ceiling {
            Ok(Self {
                millis: (secs * 1000.0).ceil() as u32,
            })
        } else {
            Err(format!(
                "must be more than 0 and at most {ceiling} seconds (the broker's \
                 consumer timeout, amqp.consumer_timeout_secs = {}, less {} s)",
                settings.consumer_timeout.as_secs(),
                settings.attempt_margin().as_secs_f64()
            ))
        }
    }

    /// A kind's default above the ceiling is lowered to it rather than refused: the
    /// submitter did not ask for it.
    fn of_kind(default: Duration, settings: &Settings) -> Self {
        let ceiling_ms = (Self::ceiling_secs(settings) * 1000.0) as u128;
        Self {
            millis: default.as_millis().min(ceiling_ms) as u32,
        }
    }
}

impl SubmitJob {
    /// Validates every field; `prefix` is prepended to field names (`jobs[3].`). Where a
    /// field is left out, the kind's [`KindDefaults`] fill it in.
    pub fn validate(
        self,
        namespace: &Namespace,
        registry: &Registry,
        settings: &Settings,
        prefix: &str,
    ) -> Result<NewJob, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: String| {
            errors.push(FieldError {
                field: format!("{prefix}{field}"),
                message,
            })
        };

        let kind = self.checked_kind(namespace, registry, settings, &mut fail);
        self.check_args(kind.as_ref(), registry, settings, &mut fail);
        let defaults = kind.as_ref().and_then(|kind| registry.defaults(kind));
        let queue = self.checked_queue(defaults.as_ref(), settings, &mut fail);
        let priority = Priority::parse(self.priority)
            .map_err(|message| fail("priority", message))
            .ok();
        let run_at = run_at_of(self.run_at, self.delay).unwrap_or_else(|(field, message)| {
            fail(field, message);
            None
        });
        let max_attempts = self
            .max_attempts
            .or(defaults.as_ref().map(|d| d.max_attempts))
            .and_then(|attempts| {
                MaxAttempts::parse(attempts)
                    .map_err(|message| fail("max_attempts", message))
                    .ok()
            });
        let timeout = match self.timeout {
            Some(secs) => AttemptTimeout::parse(secs, settings)
                .map_err(|message| fail("timeout", message))
                .ok(),
            None => defaults
                .as_ref()
                .map(|d| AttemptTimeout::of_kind(d.timeout, settings)),
        };
        let backoff = match &self.backoff {
            None => defaults.as_ref().and_then(|d| d.backoff),
            Some(request) => request.to_backoff().map_or_else(
                |message| {
                    fail("backoff", message);
                    None
                },
                Some,
            ),
        };
        let idempotency_key = match self.idempotency_key.as_deref().map(IdempotencyKey::parse) {
            None => None,
            Some(Ok(key)) => Some(key),
            Some(Err(error)) => {
                fail("idempotency_key", error.to_string());
                None
            }
        };

        // Every field is either checked or, for a known kind, defaulted: a `None` left here
        // has its error in `errors`.
        match (kind, queue, priority, max_attempts, timeout) {
            (Some(kind), Some(queue), Some(priority), Some(max_attempts), Some(timeout))
                if errors.is_empty() =>
            {
                Ok(NewJob {
                    id: JobId::new(),
                    namespace: namespace.clone(),
                    kind,
                    queue,
                    args: self.args,
                    priority: priority.0,
                    max_attempts: max_attempts.0,
                    timeout_ms: timeout.millis,
                    idempotency_key,
                    run_at,
                    backoff,
                    // Set by the route from the request's `traceparent`.
                    traceparent: None,
                })
            }
            _ => Err(errors),
        }
    }

    /// `kind`: registered, and allowed to this namespace.
    fn checked_kind(
        &self,
        namespace: &Namespace,
        registry: &Registry,
        settings: &Settings,
        fail: &mut impl FnMut(&str, String),
    ) -> Option<Kind> {
        let kind = match Kind::parse(&self.kind) {
            // An old name (an alias) is stored as the kind's current name.
            Ok(kind) if registry.contains(&kind) => registry.resolve(&kind).cloned(),
            Ok(kind) => {
                let mut known: Vec<_> = registry.kinds().map(Kind::as_str).collect();
                known.sort_unstable();
                fail(
                    "kind",
                    format!("unknown kind \"{kind}\"; known kinds: {}", known.join(", ")),
                );
                None
            }
            Err(error) => {
                fail("kind", error.to_string());
                None
            }
        };
        // Some kinds say who may submit them (a backup: only the namespace named for it).
        if let Some(kind) = &kind
            && let Err(message) = registry.check_submitter(kind, namespace, settings)
        {
            fail("kind", message);
        }
        kind
    }

    /// `args`: within `api.max_args_bytes`, of the kind's type, and free of the NUL
    /// character.
    fn check_args(
        &self,
        kind: Option<&Kind>,
        registry: &Registry,
        settings: &Settings,
        fail: &mut impl FnMut(&str, String),
    ) {
        // Measured as the JSON text the row, the message and the worker carry. Over the
        // cap, the args are not looked into further: the job is refused either way.
        let args_bytes = engine_shared::payload::json_len(&self.args);
        if args_bytes > settings.api.max_args_bytes {
            fail(
                "args",
                format!(
                    "is {args_bytes} bytes of JSON; at most {} are accepted (api.max_args_bytes)",
                    settings.api.max_args_bytes
                ),
            );
            return;
        }
        if let Some(kind) = kind
            && let Some(Err(error)) = registry.check_args(kind, &self.args)
        {
            let field = if error.path == "." {
                "args".to_owned()
            } else {
                format!("args.{}", error.path)
            };
            fail(&field, error.message);
        }
        // Valid JSON `jsonb` refuses; checked apart from the kind's type, which may not look
        // inside every value.
        if let Some(error) = crate::nul_character::first_nul(&self.args, "args") {
            fail(&error.field, error.message);
        }
    }

    /// `queue`: one the settings configure; the kind's when left out.
    fn checked_queue(
        &self,
        defaults: Option<&KindDefaults>,
        settings: &Settings,
        fail: &mut impl FnMut(&str, String),
    ) -> Option<QueueName> {
        match self.queue.as_deref().map(QueueName::parse) {
            None => defaults.map(|d| d.queue.clone()),
            Some(Ok(queue)) if settings.queues.iter().any(|q| q.name == queue) => Some(queue),
            Some(Ok(queue)) => {
                let known: Vec<_> = settings.queues.iter().map(|q| q.name.as_str()).collect();
                fail(
                    "queue",
                    format!("unknown queue \"{queue}\"; queues: {}", known.join(", ")),
                );
                None
            }
            Some(Err(error)) => {
                fail("queue", error.to_string());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backoff_is_whole_milliseconds_and_at_least_one() {
        let backoff = |min, max| BackoffRequest { min, max }.to_backoff();
        assert!(backoff(0.0001, 1.0).is_err(), "0.1 ms would be stored as 0");
        assert!(backoff(0.0, 1.0).is_err());
        assert!(backoff(2.0, 1.0).is_err());
        assert!(backoff(1.0, MAX_BACKOFF_SECS + 1.0).is_err());
        let shortest = backoff(MIN_BACKOFF_SECS, 0.0015).unwrap();
        assert_eq!(shortest.min, Duration::from_millis(1));
        assert_eq!(shortest.max, Duration::from_millis(1));
    }

    #[test]
    fn run_at_before_year_one_is_refused_naming_run_at() {
        let ancient: DateTime<Utc> = serde_json::from_str("\"-5000-01-01T00:00:00Z\"").unwrap();
        assert_eq!(run_at_of(Some(ancient), None).unwrap_err().0, "run_at");
        let soon = Utc::now();
        assert_eq!(run_at_of(Some(soon), None).unwrap(), Some(soon));
        assert_eq!(run_at_of(Some(soon), Some(1.0)).unwrap_err().0, "delay");
    }
}
