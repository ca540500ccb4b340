//! `JobStatus`: the states of a job, mapped to the PostgreSQL enum `job_status`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a job is in its life. Transitions are guarded UPDATEs in [`crate::store`].
///
/// ```text
/// scheduled ─▶ queued ─▶ running ─▶ succeeded
///                 ▲          │ ├──▶ retrying ─▶ (delay tier) ─▶ running …
///                 │          │ └──▶ dead
///   cancel: scheduled | queued | retrying ─▶ cancelled; running ─▶ cancelled when the handler stops
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "job_status", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting in PostgreSQL for its `run_at`.
    Scheduled,
    /// Accepted and published (or about to be) to its queue.
    Queued,
    /// A worker holds it and its handler runs.
    Running,
    /// An attempt failed; the next one waits in a delay tier.
    Retrying,
    Succeeded,
    /// Out of attempts, or failed fatally; parked in the dead queue.
    Dead,
    Cancelled,
}

impl JobStatus {
    /// Every state, in the order of a job's life (the order error messages list them in).
    pub const ALL: [Self; 7] = [
        Self::Scheduled,
        Self::Queued,
        Self::Running,
        Self::Retrying,
        Self::Succeeded,
        Self::Dead,
        Self::Cancelled,
    ];

    /// No further transition can happen from here (except an explicit redrive of `dead`).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Dead | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string names no state (a listing's `status` filter).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}; one of {list}", list = JobStatus::ALL.map(JobStatus::as_str).join(", "))]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;

    /// The state named as the API and the database spell it (`as_str`).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == name)
            .ok_or_else(|| UnknownStatus(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_wire_names_and_parse_back() {
        for status in JobStatus::ALL {
            let wire = serde_json::to_value(status).unwrap();
            assert_eq!(wire, status.as_str(), "serde and as_str agree");
            assert_eq!(status.as_str().parse(), Ok(status));
        }
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        assert_eq!(
            "done".parse::<JobStatus>().unwrap_err().to_string(),
            "unknown status \"done\"; one of scheduled, queued, running, retrying, succeeded, \
             dead, cancelled"
        );
        assert!("Queued".parse::<JobStatus>().is_err(), "names are exact");
    }
}
