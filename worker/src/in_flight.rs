//! The deliveries this process is working on right now, each with the token that asks its
//! handler to stop and, once started, its attempt's fencing token (what its lease is
//! renewed under).
//!
//! A delivery registers before it asks PostgreSQL to start its job, so a cancel broadcast
//! that arrives between the start's commit and the handler's first poll is not missed.
//! Entries are per delivery, not per job: a duplicate delivery of a job this process runs
//! registers and leaves without touching the running one's entry. Each entry remembers the
//! namespace whose vhost its delivery came from, and a cancel broadcast stops only entries
//! of the namespace it was broadcast in: anyone who can publish to one namespace's vhost
//! can name any job id there, and must not stop another namespace's jobs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use engine_shared::store::RunningAttempt;
use engine_shared::{JobId, Namespace};
use tokio_util::sync::CancellationToken;

/// One delivery's entry.
struct Entry {
    serial: u64,
    /// Where its delivery came from: only that namespace's cancel broadcast reaches it.
    namespace: Namespace,
    /// `Some` once its job started here.
    token: Option<i64>,
    cancellation: CancellationToken,
}

/// A delivery's place in [`InFlight`]; hand it back to [`InFlight::finish`].
pub struct Registration {
    id: JobId,
    serial: u64,
    /// Cancelled when a person cancels the job, or its attempt is lost.
    pub cancellation: CancellationToken,
}

/// In-flight deliveries by job. Small (≤ concurrency entries), so one mutex is enough.
#[derive(Default)]
pub struct InFlight {
    next_serial: AtomicU64,
    jobs: Mutex<HashMap<JobId, Vec<Entry>>>,
}

impl InFlight {
    /// Registers a delivery of job `id`, received from `namespace`'s vhost, that is about
    /// to ask to start it.
    pub fn register(&self, namespace: &Namespace, id: JobId) -> Registration {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let cancellation = CancellationToken::new();
        self.lock().entry(id).or_default().push(Entry {
            serial,
            namespace: namespace.clone(),
            token: None,
            cancellation: cancellation.clone(),
        });
        Registration {
            id,
            serial,
            cancellation,
        }
    }

    /// The delivery's job started here as the attempt with fencing token `token`.
    pub fn started(&self, registration: &Registration, token: i64) {
        let mut jobs = self.lock();
        let entry = jobs
            .get_mut(&registration.id)
            .into_iter()
            .flatten()
            .find(|entry| entry.serial == registration.serial);
        if let Some(entry) = entry {
            entry.token = Some(token);
        }
    }

    /// The delivery is done with (its handler ended, or its job never started).
    pub fn finish(&self, registration: &Registration) {
        let mut jobs = self.lock();
        if let Some(entries) = jobs.get_mut(&registration.id) {
            entries.retain(|entry| entry.serial != registration.serial);
            if entries.is_empty() {
                jobs.remove(&registration.id);
            }
        }
    }

    /// Asks every delivery of job `id` from `namespace` here to stop; returns whether there
    /// was one. A delivery from another namespace is left alone, whatever its id.
    pub fn cancel(&self, namespace: &Namespace, id: JobId) -> bool {
        self.cancel_where(id, |entry| entry.namespace == *namespace)
    }

    /// Asks exactly this attempt to stop (a later attempt of the same job is left alone).
    pub fn cancel_attempt(&self, attempt: RunningAttempt) -> bool {
        self.cancel_where(attempt.id, |entry| entry.token == Some(attempt.token))
    }

    /// Asks every entry of job `id` that `matches` to stop; returns whether there was one.
    fn cancel_where(&self, id: JobId, matches: impl Fn(&Entry) -> bool) -> bool {
        let jobs = self.lock();
        let matching = jobs
            .get(&id)
            .into_iter()
            .flatten()
            .filter(|entry| matches(entry));
        let mut found = false;
        for entry in matching {
            entry.cancellation.cancel();
            found = true;
        }
        found
    }

    /// The attempts running here, for their lease renewal.
    pub fn running(&self) -> Vec<RunningAttempt> {
        self.lock()
            .iter()
            .flat_map(|(id, entries)| {
                entries
                    .iter()
                    .filter_map(|entry| entry.token.map(|token| RunningAttempt { id: *id, token }))
            })
            .collect()
    }

    /// Deliveries being worked on.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Vec<Entry>>> {
        self.jobs.lock().expect("in-flight lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(name: &str) -> Namespace {
        Namespace::parse(name).unwrap()
    }

    #[test]
    fn a_duplicate_delivery_leaves_the_running_attempt_registered() {
        let in_flight = InFlight::default();
        let id = JobId::new();
        let running = in_flight.register(&namespace("a"), id);
        in_flight.started(&running, 7);
        let duplicate = in_flight.register(&namespace("a"), id);
        in_flight.finish(&duplicate);
        assert_eq!(in_flight.running(), vec![RunningAttempt { id, token: 7 }]);
        assert!(!running.cancellation.is_cancelled());
    }

    #[test]
    fn a_cancel_reaches_a_delivery_that_has_not_started_yet() {
        let in_flight = InFlight::default();
        let id = JobId::new();
        let waiting = in_flight.register(&namespace("a"), id);
        assert!(in_flight.cancel(&namespace("a"), id));
        assert!(waiting.cancellation.is_cancelled());
    }

    #[test]
    fn a_cancel_from_another_namespace_stops_nothing_whatever_its_id() {
        let in_flight = InFlight::default();
        let id = JobId::new();
        let running = in_flight.register(&namespace("a"), id);
        in_flight.started(&running, 3);
        assert!(!in_flight.cancel(&namespace("b"), id));
        assert!(!running.cancellation.is_cancelled());
    }

    #[test]
    fn a_lost_attempt_is_stopped_by_its_token_only() {
        let in_flight = InFlight::default();
        let id = JobId::new();
        let current = in_flight.register(&namespace("a"), id);
        in_flight.started(&current, 9);
        assert!(!in_flight.cancel_attempt(RunningAttempt { id, token: 8 }));
        assert!(!current.cancellation.is_cancelled());
        assert!(in_flight.cancel_attempt(RunningAttempt { id, token: 9 }));
        assert!(current.cancellation.is_cancelled());
    }
}
