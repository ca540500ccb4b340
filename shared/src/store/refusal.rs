//! Jobs PostgreSQL refuses for their data, and the group commit's flush that sets such a
//! job apart so it fails only itself, not the other callers' jobs sharing its INSERT.
//!
//! The API validates what the database accepts, so a refusal here means a check was
//! missed; this is the defence behind it. PostgreSQL does not say which row of a
//! multi-row INSERT it refused, so a refused batch is split in halves, each half inserted
//! on its own, and a refused half split again: one bad job among `n` costs about
//! `2 log2 n` more INSERTs, and a batch with none costs exactly what it did.

use std::ops::Range;
use std::sync::Arc;

use super::{NewJob, Store, StoreError, Submitted};

/// PostgreSQL refused a row for its data: SQLSTATE class 22 (data exception, e.g. a NUL
/// in `jsonb`) or 23 (integrity constraint violation, e.g. a CHECK), not a fault of its own.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("PostgreSQL refused the job (SQLSTATE {code}): {message}")]
pub struct Refused {
    pub code: String,
    pub message: String,
}

impl Refused {
    /// The refusal `error` is, if that is what it is.
    pub(super) fn of(error: &sqlx::Error) -> Option<Self> {
        let database = error.as_database_error()?;
        let code = database.code()?;
        (code.starts_with("22") || code.starts_with("23")).then(|| Self {
            code: code.into_owned(),
            message: database.message().to_owned(),
        })
    }
}

/// `error`, met while inserting jobs (`doing`): a refusal of a job's data, or as
/// [`StoreError::sql`] sorts it.
pub(super) fn insert_error(error: sqlx::Error, doing: &str) -> StoreError {
    match Refused::of(&error) {
        Some(refused) => StoreError::Refused(refused),
        None => StoreError::sql(error, doing.to_owned()),
    }
}

/// Why one job of a group commit was not stored.
#[derive(Clone, Debug, thiserror::Error)]
pub enum NotStored {
    /// Its own data: the submission is at fault.
    #[error(transparent)]
    Refused(Refused),
    /// The database failed while the batch was being split around a refused job.
    #[error("{message}")]
    Failed {
        message: Arc<str>,
        /// PostgreSQL could not be reached (callers answer 503).
        unavailable: bool,
    },
}

/// Each job's outcome, in input order.
pub type EachOutcome = Vec<Result<Submitted, NotStored>>;

impl Store {
    /// The group commit's flush: inserts `jobs` in one statement like
    /// [`Store::insert_jobs`], but a job refused for its data fails alone and the others
    /// are stored. `Err` only when the database failed before any job was known to be bad.
    ///
    /// Its error is an `anyhow::Error`, as the group commit takes it; the cause chain
    /// still holds the sqlx error that tells an unreachable database.
    pub async fn insert_jobs_each(&self, jobs: &[NewJob]) -> anyhow::Result<EachOutcome> {
        match self.insert_jobs(jobs).await {
            Ok(submitted) => Ok(submitted.into_iter().map(Ok).collect()),
            // Nothing of a refused statement was committed: every job can be retried.
            Err(StoreError::Refused(refused)) => Ok(self.isolate(jobs, refused).await),
            Err(error) => Err(error.into()),
        }
    }

    /// Splits `jobs`, known to hold a refused job, until each refused job stands alone.
    /// Ranges are inserted strictly left to right, so of two jobs with the same idempotency
    /// key the earlier one is created, as in a single INSERT.
    async fn isolate(&self, jobs: &[NewJob], refused: Refused) -> EachOutcome {
        if jobs.len() == 1 {
            return vec![Err(NotStored::Refused(refused))];
        }
        let mut outcomes: Vec<Option<Result<Submitted, NotStored>>> = vec![None; jobs.len()];
        // Ranges to insert, the leftmost on top.
        let mut pending: Vec<Range<usize>> = halves(0..jobs.len());
        while let Some(range) = pending.pop() {
            match self.insert_jobs(&jobs[range.clone()]).await {
                Ok(submitted) => {
                    for (slot, outcome) in outcomes[range].iter_mut().zip(submitted) {
                        *slot = Some(Ok(outcome));
                    }
                }
                Err(StoreError::Refused(refused)) if range.len() == 1 => {
                    outcomes[range.start] = Some(Err(NotStored::Refused(refused)));
                }
                Err(StoreError::Refused(_)) => pending.extend(halves(range)),
                Err(error) => {
                    let failed = NotStored::Failed {
                        message: format!("{error:#}").into(),
                        unavailable: error.is_unavailable(),
                    };
                    for slot in &mut outcomes[range] {
                        *slot = Some(Err(failed.clone()));
                    }
                }
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every range was stored, refused or failed"))
            .collect()
    }
}

/// `range` (of two or more) as its right half, then its left half, so a stack pops the left
/// first. Both are always tried: either may hold a refused job, or each may.
fn halves(range: Range<usize>) -> Vec<Range<usize>> {
    let middle = range.start + range.len() / 2;
    vec![middle..range.end, range.start..middle]
}
