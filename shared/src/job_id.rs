//! `JobId`: a UUIDv7, so ids sort by creation time and keyset pagination needs no extra column.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::{NoContext, Timestamp, Uuid};

/// The identity of one job, unique across every namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// An id as if created at `at` (tests, and tools that back-date work).
    pub fn new_at(at: DateTime<Utc>) -> Self {
        let nanos = at.timestamp_subsec_nanos();
        let seconds = u64::try_from(at.timestamp()).unwrap_or(0);
        Self(Uuid::new_v7(Timestamp::from_unix(
            NoContext, seconds, nanos,
        )))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// When the job was created, read from the id itself (millisecond precision). An id that
    /// is not a UUIDv7 (never made here) reads as the Unix epoch.
    pub fn created_at(&self) -> DateTime<Utc> {
        self.0
            .get_timestamp()
            .and_then(|ts| {
                let (seconds, nanos) = ts.to_unix();
                DateTime::from_timestamp(i64::try_from(seconds).ok()?, nanos)
            })
            .unwrap_or_default()
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for JobId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation() {
        let first = JobId::new();
        let second = JobId::new();
        assert!(first < second);
    }

    #[test]
    fn the_creation_time_is_read_back_from_the_id() {
        let at = DateTime::parse_from_rfc3339("2026-11-22T10:30:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(JobId::new_at(at).created_at(), at);
        let now = Utc::now();
        assert!((JobId::new().created_at() - now).num_seconds().abs() < 2);
    }
}
