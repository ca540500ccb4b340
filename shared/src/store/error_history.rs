//! A job's error history (`job_errors`): why each failed attempt (or poison or crash
//! verdict) failed, and reading it back. Rows are written by the statements that record
//! the failure (`finish_jobs`, `bury`, `rescue`).

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Commit, SqlContext, Store, StoreError, count_round_trips};
use crate::JobId;
use crate::retry::RetryVia;

/// Why an attempt failed, as recorded in `job_errors.kind` (whose CHECK constraint allows
/// exactly these names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The handler returned a retryable error.
    Error,
    /// The handler returned a fatal error: no more attempts.
    Fatal,
    /// The attempt ran past its timeout.
    Timeout,
    /// The handler panicked.
    Panic,
    /// The message could not be run at all (unknown kind, args that no longer fit).
    Poison,
    /// The job was delivered `retry.delivery_limit` times without finishing: it kills or
    /// outlives the workers that take it.
    Crashed,
}

impl ErrorKind {
    const ALL: [Self; 6] = [
        Self::Error,
        Self::Fatal,
        Self::Timeout,
        Self::Panic,
        Self::Poison,
        Self::Crashed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Fatal => "fatal",
            Self::Timeout => "timeout",
            Self::Panic => "panic",
            Self::Poison => "poison",
            Self::Crashed => "crashed",
        }
    }

    /// The job gets no further attempt, whatever attempts it has left.
    pub fn is_fatal(self) -> bool {
        matches!(self, Self::Fatal | Self::Poison | Self::Crashed)
    }
}

/// Why a recorded error kind is none of [`ErrorKind`]'s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown error kind {0:?}")]
pub struct UnknownErrorKind(pub String);

impl FromStr for ErrorKind {
    type Err = UnknownErrorKind;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| UnknownErrorKind(name.to_owned()))
    }
}

/// One failed attempt (or poison/crash verdict) of a job, as `GET /v1/jobs/{id}` shows it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct AttemptError {
    pub attempt: i32,
    /// How many redrives preceded it (0 for the job's first life).
    pub redrive: i32,
    pub kind: ErrorKind,
    pub message: String,
    pub at: DateTime<Utc>,
    pub duration_ms: Option<i32>,
    pub worker_id: Option<String>,
    /// The wait before the next attempt, when one followed.
    pub retry_delay_ms: Option<i64>,
    /// The delay-tier queue that held the retry, or `scheduler`.
    pub retry_via: Option<RetryVia>,
}

impl Store {
    /// Every recorded error of job `id` (already checked to be in the caller's namespace),
    /// oldest first.
    pub async fn attempt_errors(&self, id: JobId) -> Result<Vec<AttemptError>, StoreError> {
        count_round_trips(1);
        self.one(Commit::Durable, async |statements| {
            sqlx::query_as(
                "SELECT attempt, redrive, kind, message, at, duration_ms, worker_id,
                        retry_delay_ms, retry_via
                 FROM job_errors WHERE job_id = $1 ORDER BY at, attempt",
            )
            .bind(id)
            .fetch_all(statements)
            .await
        })
        .await
        .with_sql_context(|| format!("reading the errors of job {id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_their_wire_names_and_parse_back() {
        for kind in ErrorKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
            assert_eq!(kind.as_str().parse(), Ok(kind));
        }
        assert!("oom".parse::<ErrorKind>().is_err());
    }
}
