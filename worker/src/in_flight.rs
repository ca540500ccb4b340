//! The jobs this process is running right now, with the token that asks each to stop.

use std::collections::HashMap;
use std::sync::Mutex;

use engine_shared::JobId;
use tokio_util::sync::CancellationToken;

/// Running jobs by id. Small (≤ concurrency entries), so one mutex is enough.
#[derive(Default)]
pub struct InFlight {
    jobs: Mutex<HashMap<JobId, CancellationToken>>,
}

impl InFlight {
    /// Registers a running job; the returned token is handed to its handler.
    pub fn start(&self, id: JobId) -> CancellationToken {
        let token = CancellationToken::new();
        self.jobs
            .lock()
            .expect("in-flight lock poisoned")
            .insert(id, token.clone());
        token
    }

    pub fn finish(&self, id: JobId) {
        self.jobs
            .lock()
            .expect("in-flight lock poisoned")
            .remove(&id);
    }

    /// Asks job `id` to stop if it runs here; returns whether it did.
    pub fn cancel(&self, id: JobId) -> bool {
        match self.jobs.lock().expect("in-flight lock poisoned").get(&id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.jobs.lock().expect("in-flight lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
