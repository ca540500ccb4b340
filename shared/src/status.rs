//! `JobStatus`: the states of a job, mapped to the PostgreSQL enum `job_status`.

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
