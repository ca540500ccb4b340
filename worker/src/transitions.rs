//! The worker's state writes, group-committed: every execution in the process shares one
//! batcher for "move to running" and one for "record the outcome", so a hundred jobs
//! finishing together cost one statement and one WAL flush, not a hundred.

use std::time::Duration;

use engine_shared::group_commit::GroupCommit;
use engine_shared::store::{FinishRequest, FinishedJob, StartOutcome, StartRequest, Store};

/// Most rows one transition statement carries.
const BATCH: usize = 500;
/// Statements of each kind in flight at once (each holds a connection).
const IN_FLIGHT: usize = 2;

#[derive(Clone)]
pub struct Transitions {
    pub starts: GroupCommit<StartRequest, StartOutcome>,
    pub finishes: GroupCommit<FinishRequest, FinishedJob>,
}

impl Transitions {
    /// `worker_id` is recorded with every error the finishes write; each start takes a
    /// lease of `lease`.
    pub fn new(store: &Store, worker_id: String, lease: Duration) -> Self {
        let start_store = store.clone();
        let finish_store = store.clone();
        Self {
            starts: GroupCommit::spawn(
                "start jobs",
                BATCH,
                IN_FLIGHT,
                move |requests: Vec<StartRequest>| {
                    let store = start_store.clone();
                    async move { store.start_jobs(&requests, lease).await }
                },
            ),
            finishes: GroupCommit::spawn(
                "finish jobs",
                BATCH,
                IN_FLIGHT,
                move |requests: Vec<FinishRequest>| {
                    let (store, worker_id) = (finish_store.clone(), worker_id.clone());
                    async move { store.finish_jobs(&requests, &worker_id).await }
                },
            ),
        }
    }
}
