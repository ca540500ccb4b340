//! How a handler ended ([`HandlerOutcome`]), read from its task, before PostgreSQL decides
//! what that means for the job; and the cap on the result it may return.

use std::time::Duration;

use tokio::task::JoinError;

use engine_jobs::{JobError, JobLog, LogLevel};
use engine_shared::JobId;
use engine_shared::store::{AttemptOutcome, ErrorKind};

/// How the handler ended, before PostgreSQL decides what that means for the job.
pub(super) enum HandlerOutcome {
    Succeeded(serde_json::Value),
    Failed(ErrorKind, String),
    Snoozed(Duration),
}

impl HandlerOutcome {
    /// How job `id`'s handler task ended, when it ended within its timeout: what it
    /// returned (a result within `max_result_bytes`, or its typed error), or how the task
    /// itself ended (a panic, caught as the task's `JoinError`).
    pub fn of_task(
        ended: Result<Result<serde_json::Value, JobError>, JoinError>,
        max_result_bytes: usize,
        id: JobId,
    ) -> Self {
        match ended {
            Ok(Ok(result)) => checked_result(result, max_result_bytes),
            Ok(Err(JobError::Retryable(error))) => {
                Self::Failed(ErrorKind::Error, format!("{error:#}"))
            }
            Ok(Err(JobError::Fatal(error))) => Self::Failed(ErrorKind::Fatal, format!("{error:#}")),
            Ok(Err(JobError::Snooze(delay))) => Self::Snoozed(delay),
            // Whether this becomes `cancelled` is decided in PostgreSQL, where the request is.
            Ok(Err(JobError::Cancelled)) => {
                Self::Failed(ErrorKind::Error, "stopped on cancellation".into())
            }
            Err(join_error) if join_error.is_panic() => {
                let payload = join_error.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-text panic payload".into());
                tracing::error!(job = %id, message, "handler panicked");
                Self::Failed(ErrorKind::Panic, format!("handler panicked: {message}"))
            }
            Err(join_error) => Self::Failed(
                ErrorKind::Error,
                format!("handler task ended: {join_error}"),
            ),
        }
    }

    /// A handler stopped at its `timeout`.
    pub fn timed_out(timeout: Duration) -> Self {
        Self::Failed(
            ErrorKind::Timeout,
            format!("timed out after {:.3}s", timeout.as_secs_f64()),
        )
    }

    /// The worker's line about how the handler ended.
    pub fn describe(&self, log: &JobLog, took: Duration) {
        let millis = took.as_millis();
        match self {
            Self::Succeeded(_) => log.worker_line(
                LogLevel::Info,
                format_args!("handler succeeded in {millis} ms"),
            ),
            Self::Failed(kind, message) => log.worker_line(
                LogLevel::Error,
                format_args!(
                    "handler failed ({}) after {millis} ms: {message}",
                    kind.as_str()
                ),
            ),
            Self::Snoozed(delay) => log.worker_line(
                LogLevel::Info,
                format_args!("handler snoozed for {delay:?} after {millis} ms (not an attempt)"),
            ),
        }
    }
}

impl From<HandlerOutcome> for AttemptOutcome {
    fn from(outcome: HandlerOutcome) -> Self {
        match outcome {
            HandlerOutcome::Succeeded(value) => Self::Succeeded(value),
            HandlerOutcome::Failed(kind, message) => Self::Failed { kind, message },
            HandlerOutcome::Snoozed(_) => Self::Snoozed,
        }
    }
}

/// A handler's result, if it fits the cap. One that does not is a fatal failure rather than
/// a truncated result: a truncated value would be stored as if it were the real one, and
/// the same handler would make the same result again on a retry. The handler's work is
/// done by then; the error says so, with both sizes, and never quotes the result.
fn checked_result(result: serde_json::Value, max_bytes: usize) -> HandlerOutcome {
    let bytes = engine_shared::payload::json_len(&result);
    if bytes <= max_bytes {
        return HandlerOutcome::Succeeded(result);
    }
    HandlerOutcome::Failed(
        ErrorKind::Fatal,
        format!(
            "the handler returned a result of {bytes} bytes of JSON, more than the {max_bytes} stored (worker.max_result_bytes); it was not stored, and the job is not retried"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_past_the_cap_fails_fatally_with_both_sizes_and_never_its_value() {
        let result = serde_json::json!({ "secret": "x".repeat(100) });
        let HandlerOutcome::Failed(ErrorKind::Fatal, message) = checked_result(result.clone(), 10)
        else {
            panic!("a result past the cap must fail the attempt fatally");
        };
        let bytes = engine_shared::payload::json_len(&result);
        assert!(message.contains(&format!("{bytes} bytes")), "{message}");
        assert!(message.contains("more than the 10 stored"), "{message}");
        assert!(!message.contains("secret"), "{message}");
        assert!(matches!(
            checked_result(result, bytes),
            HandlerOutcome::Succeeded(_)
        ));
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_failed_attempt_that_quotes_the_panic() {
        let ended = tokio::spawn(async {
            if true {
                panic!("boom");
            }
            Ok::<_, JobError>(serde_json::Value::Null)
        })
        .await;
        let HandlerOutcome::Failed(ErrorKind::Panic, message) =
            HandlerOutcome::of_task(ended, 1_000, JobId::new())
        else {
            panic!("a panic must fail the attempt as a panic");
        };
        assert_eq!(message, "handler panicked: boom");
    }

    #[test]
    fn a_snooze_is_not_a_failure_and_a_cancellation_is_left_to_postgresql() {
        let snoozed = HandlerOutcome::of_task(
            Ok(Err(JobError::Snooze(Duration::from_secs(5)))),
            1_000,
            JobId::new(),
        );
        assert!(
            matches!(snoozed, HandlerOutcome::Snoozed(delay) if delay == Duration::from_secs(5))
        );
        let cancelled = HandlerOutcome::of_task(Ok(Err(JobError::Cancelled)), 1_000, JobId::new());
        assert!(matches!(
            cancelled,
            HandlerOutcome::Failed(ErrorKind::Error, _)
        ));
    }
}
