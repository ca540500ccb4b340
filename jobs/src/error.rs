//! How a handler says an attempt failed: [`JobError`], and [`ResultExt`] to turn any
//! error into one (`.retryable()?`, `.fatal()?`).

use std::fmt::Display;
use std::time::Duration;

/// How a handler says an attempt failed. The worker alone turns this into ack, retry or
/// dead-letter.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth trying again later (network error, 5xx, timeout).
    #[error("{0:#}")]
    Retryable(anyhow::Error),
    /// Will fail the same way every time; no more attempts.
    #[error("fatal: {0:#}")]
    Fatal(anyhow::Error),
    /// Stopped because the cancellation token fired.
    #[error("cancelled")]
    Cancelled,
    /// Not now: run again after this delay without counting an attempt (a busy
    /// downstream, a resource not ready yet). The delay is rounded up to a delay tier.
    #[error("snoozed for {0:?}")]
    Snooze(Duration),
}

impl JobError {
    /// A retryable failure that is only a message: `Err(JobError::retryable(format!(…)))`.
    pub fn retryable(message: impl Display) -> Self {
        Self::Retryable(anyhow::Error::msg(message.to_string()))
    }

    /// A fatal failure that is only a message: `Err(JobError::fatal(format!(…)))`.
    pub fn fatal(message: impl Display) -> Self {
        Self::Fatal(anyhow::Error::msg(message.to_string()))
    }
}

/// An `anyhow::Error` passed up with `?` counts as retryable: when in doubt, try again.
impl From<anyhow::Error> for JobError {
    fn from(error: anyhow::Error) -> Self {
        Self::Retryable(error)
    }
}

/// Says how a failed call fails the attempt, so a handler writes
/// `send().await.retryable()?` or `parse(&text).context("reading the report").fatal()?`.
pub trait ResultExt<T> {
    /// Any error becomes [`JobError::Retryable`]: the attempt fails and another follows.
    fn retryable(self) -> Result<T, JobError>;

    /// Any error becomes [`JobError::Fatal`]: the job fails with no further attempt.
    fn fatal(self) -> Result<T, JobError>;
}

impl<T, E: Into<anyhow::Error>> ResultExt<T> for Result<T, E> {
    fn retryable(self) -> Result<T, JobError> {
        self.map_err(|error| JobError::Retryable(error.into()))
    }

    fn fatal(self) -> Result<T, JobError> {
        self.map_err(|error| JobError::Fatal(error.into()))
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    fn parse(text: &str) -> Result<u32, std::num::ParseIntError> {
        text.parse()
    }

    #[test]
    fn retryable_and_fatal_keep_the_whole_cause_chain() {
        let error = parse("x").context("reading the count").retryable();
        match error {
            Err(JobError::Retryable(error)) => assert_eq!(
                format!("{error:#}"),
                "reading the count: invalid digit found in string"
            ),
            other => panic!("expected a retryable error, got {other:?}"),
        }
        let error = parse("x").fatal().unwrap_err();
        assert!(matches!(error, JobError::Fatal(_)), "{error:?}");
        assert_eq!(error.to_string(), "fatal: invalid digit found in string");
    }

    #[test]
    fn success_passes_through() {
        assert_eq!(parse("7").retryable().unwrap(), 7);
        assert_eq!(parse("7").fatal().unwrap(), 7);
    }

    #[test]
    fn message_errors_read_as_written() {
        let status = 503;
        assert_eq!(
            JobError::retryable(format_args!("the receiver answered {status}")).to_string(),
            "the receiver answered 503"
        );
        assert_eq!(JobError::fatal("no secret").to_string(), "fatal: no secret");
        let from_anyhow: JobError = anyhow::anyhow!("lost").into();
        assert!(matches!(from_anyhow, JobError::Retryable(_)));
    }
}
