//! The cap on a namespace's unfinished jobs (`namespaces.<ns>.max_pending`, by default
//! `api.max_pending`): a submission that would take the namespace past it is refused with
//! 429 and a `Retry-After`, and stores nothing. It keeps one tenant from filling the
//! database (and the broker behind it) for all, whatever its submission rate.
//!
//! Counting the rows on every submission would add a query to every job, so each API
//! process keeps, per namespace, the count PostgreSQL gave at most [`REFRESH`] ago plus what
//! this process accepted since; a stale count is refreshed in the background while
//! submissions go on against the old one. Only namespaces that submit are counted (an idle
//! fleet asks nothing) and a count stops at the cap. Replicas do not see each other's
//! acceptances between refreshes, so N replicas may together pass the cap by what N − 1 of
//! them accept in one interval — bounded by the per-key submission rate. A count also
//! misses what was accepted but not yet committed when it ran, until the next one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine_shared::Namespace;
use engine_shared::store::Store;

use crate::problem::ApiError;
use crate::state::AppState;

/// How old a count may be before a submission refreshes it (in the background).
pub const REFRESH: Duration = Duration::from_secs(2);
/// A count older than this is not trusted at all: the submission waits for a new one (a
/// namespace idle for a while may have drained, or other replicas may have filled it).
const FORGET: Duration = Duration::from_secs(20);

/// Takes `jobs` from `namespace`'s room under its `max_pending`, or answers 429.
pub async fn check(state: &AppState, namespace: &Namespace, jobs: usize) -> Result<(), ApiError> {
    let Some(max) = state
        .settings
        .namespace(namespace)
        .and_then(|spec| spec.quota.max_pending)
    else {
        return Ok(());
    };
    let jobs = u64::try_from(jobs).unwrap_or(u64::MAX);
    state
        .pending
        .check(&state.store, namespace, max, jobs)
        .await
}

/// One namespace's figure.
struct Figure {
    /// Unfinished jobs at the last count.
    counted: u64,
    /// Jobs this process accepted since that count began.
    accepted: u64,
    counted_at: Instant,
    refreshing: bool,
}

/// Every namespace's figure in this process.
#[derive(Default)]
pub struct PendingCounts {
    figures: Mutex<HashMap<Namespace, Figure>>,
    /// Per namespace, held while a submission counts it for want of a usable figure, so a
    /// burst of submissions after a quiet spell makes one count, not one each (on the pool
    /// every tenant's submissions use), and no count overwrites what another just recorded.
    /// One lock per namespace: a slow count never holds back another tenant's.
    counting: Mutex<HashMap<Namespace, Arc<tokio::sync::Mutex<()>>>>,
}

/// The longest a submission waits for the count it needs; past it, it is accepted without
/// the check (as when the count fails), rather than held behind a slow database.
const COUNT_PATIENCE: Duration = Duration::from_secs(2);

/// What the figure says about a submission.
enum Verdict {
    Accept,
    Refuse,
    /// No usable count: one must be read first.
    Unknown,
}

impl PendingCounts {
    /// Takes `jobs` from `namespace`'s room under `max`, or answers 429.
    pub async fn check(
        self: &Arc<Self>,
        store: &Store,
        namespace: &Namespace,
        max: u64,
        jobs: u64,
    ) -> Result<(), ApiError> {
        if jobs > max {
            return Err(ApiError::invalid(
                "jobs",
                format!("{jobs} jobs are more than this namespace's max_pending ({max})"),
            ));
        }
        let verdict = match self.judge(store, namespace, max, jobs) {
            Verdict::Unknown => self.count_and_judge(store, namespace, max, jobs).await,
            known => known,
        };
        match verdict {
            Verdict::Refuse => Err(ApiError::TooManyPending {
                max,
                retry_after_secs: REFRESH.as_secs().max(1),
            }),
            _ => Ok(()),
        }
    }

    /// Counts a namespace that has no usable figure (one count at a time), then judges.
    async fn count_and_judge(
        self: &Arc<Self>,
        store: &Store,
        namespace: &Namespace,
        max: u64,
        jobs: u64,
    ) -> Verdict {
        let lock = Arc::clone(
            self.counting
                .lock()
                .expect("the pending counts are never poisoned")
                .entry(namespace.clone())
                .or_default(),
        );
        let _counting = lock.lock().await;
        // Whoever held the lock before may have just counted this namespace.
        if let known @ (Verdict::Accept | Verdict::Refuse) = self.judge(store, namespace, max, jobs)
        {
            return known;
        }
        let count = store.count_unfinished(namespace, max.saturating_add(1));
        match tokio::time::timeout(COUNT_PATIENCE, count)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {COUNT_PATIENCE:?}")))
        {
            Ok(counted) => {
                self.record(namespace, counted, None);
                self.judge(store, namespace, max, jobs)
            }
            Err(error) => {
                // The insert that follows needs the same database; if it is down, that
                // answers. A quota is not worth refusing work over.
                tracing::warn!(error = format!("{error:#}"), %namespace, "could not count unfinished jobs; accepting without the max_pending check");
                Verdict::Accept
            }
        }
    }

    /// Judges `jobs` against the figure, counting them in when accepted, and starts a
    /// background refresh of a stale figure.
    fn judge(
        self: &Arc<Self>,
        store: &Store,
        namespace: &Namespace,
        max: u64,
        jobs: u64,
    ) -> Verdict {
        let mut figures = self
            .figures
            .lock()
            .expect("the pending counts are never poisoned");
        let Some(figure) = figures.get_mut(namespace) else {
            return Verdict::Unknown;
        };
        let age = figure.counted_at.elapsed();
        if age > FORGET && !figure.refreshing {
            return Verdict::Unknown;
        }
        if age > REFRESH && !figure.refreshing {
            figure.refreshing = true;
            self.refresh(store.clone(), namespace.clone(), max, figure.accepted);
        }
        if figure
            .counted
            .saturating_add(figure.accepted)
            .saturating_add(jobs)
            > max
        {
            return Verdict::Refuse;
        }
        figure.accepted += jobs;
        Verdict::Accept
    }

    /// Recounts in the background. `accepted_before` is what this process had accepted when
    /// the count began: those are in the new count (or failed), the rest are not yet.
    fn refresh(
        self: &Arc<Self>,
        store: Store,
        namespace: Namespace,
        max: u64,
        accepted_before: u64,
    ) {
        let counts = Arc::clone(self);
        tokio::spawn(async move {
            match store
                .count_unfinished(&namespace, max.saturating_add(1))
                .await
            {
                Ok(counted) => counts.record(&namespace, counted, Some(accepted_before)),
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), %namespace, "could not recount unfinished jobs; keeping the last count");
                    if let Some(figure) = counts
                        .figures
                        .lock()
                        .expect("the pending counts are never poisoned")
                        .get_mut(&namespace)
                    {
                        figure.refreshing = false;
                    }
                }
            }
        });
    }

    /// A new count. `accepted_before`: what this process had accepted when it began, which
    /// the count includes; `None` for a count taken without a usable figure, which
    /// includes everything accepted before it.
    fn record(&self, namespace: &Namespace, counted: u64, accepted_before: Option<u64>) {
        let mut figures = self
            .figures
            .lock()
            .expect("the pending counts are never poisoned");
        let accepted = match (figures.get(namespace), accepted_before) {
            (Some(figure), Some(before)) => figure.accepted.saturating_sub(before),
            _ => 0,
        };
        figures.insert(
            namespace.clone(),
            Figure {
                counted,
                accepted,
                counted_at: Instant::now(),
                refreshing: false,
            },
        );
    }
}
