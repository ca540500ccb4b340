//! Namespaces whose vhost refuses publishes right now (permissions revoked, vhost deleted,
//! a queue gone). The relay leaves them out of its claims for a while, backing off, so one
//! bad vhost neither stops the sweeper and scheduler of every other namespace nor has its
//! rows claimed over and over; readiness and metrics name them.
//!
//! A broker that answers but leaves messages unconfirmed (a queue at its byte bound, most
//! often) is *full*, not refusing: it is tried again soon (the pause grows only to
//! [`LONGEST_FULL_PAUSE`]), since it takes publishes again as soon as workers drain it, and
//! it never makes the API unready — one tenant filling its own queues must not take the
//! API away from all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use engine_shared::Namespace;
use engine_shared::metrics::{NamespaceLabels, metrics};

const FIRST_PAUSE: Duration = Duration::from_millis(500);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);
/// A full namespace's rows are claimed again at least this often: the longest its jobs
/// wait once workers make room. Each try is a claim whose rows are all refused, and it ends
/// that sweep for the other namespaces too, so not much more often than this.
const LONGEST_FULL_PAUSE: Duration = Duration::from_secs(5);

struct Block {
    /// Not claimed for again before this.
    until: Instant,
    pause: Duration,
    /// The last refusal, for readiness (already redacted by the publisher).
    error: String,
    /// Unconfirmed messages rather than a failed publish: not a readiness failure.
    full: bool,
}

/// The blocked namespaces.
#[derive(Default)]
pub struct Blocked {
    namespaces: Mutex<HashMap<Namespace, Block>>,
}

impl Blocked {
    /// A publish to `namespace` failed: leave it out for a while, longer each time.
    pub fn refused(&self, namespace: &Namespace, error: &anyhow::Error) {
        self.block(namespace, error, false);
    }

    /// The broker left some of `namespace`'s messages unconfirmed (a full queue): leave it
    /// out briefly.
    pub fn full(&self, namespace: &Namespace, error: &anyhow::Error) {
        self.block(namespace, error, true);
    }

    fn block(&self, namespace: &Namespace, error: &anyhow::Error, full: bool) {
        let longest = if full {
            LONGEST_FULL_PAUSE
        } else {
            LONGEST_PAUSE
        };
        let mut namespaces = self.lock();
        let pause = namespaces
            .get(namespace)
            .map_or(FIRST_PAUSE, |block| (block.pause * 2).min(longest));
        if !namespaces.contains_key(namespace) {
            if full {
                tracing::warn!(%namespace, error = format!("{error:#}"), "the broker takes no more of this namespace's messages (a queue at its max_queue_bytes?); its jobs wait in PostgreSQL until its workers make room");
            } else {
                tracing::warn!(%namespace, error = format!("{error:#}"), "publishes to this namespace are refused; leaving it out of the sweeps while it lasts, the others carry on");
            }
        }
        namespaces.insert(
            namespace.clone(),
            Block {
                until: Instant::now() + pause,
                pause,
                error: format!("{error:#}"),
                full,
            },
        );
        gauge(namespace, 1);
    }

    /// A publish to `namespace` went through.
    pub fn accepted(&self, namespace: &Namespace) {
        if self.lock().remove(namespace).is_some() {
            tracing::info!(%namespace, "publishes to this namespace are accepted again");
            gauge(namespace, 0);
        }
    }

    /// Of `served`, the namespaces a sweep may claim for now.
    pub fn sweepable(&self, served: &[Namespace]) -> Vec<Namespace> {
        let namespaces = self.lock();
        let now = Instant::now();
        served
            .iter()
            .filter(|name| !left_out(&namespaces, name.as_str(), now))
            .cloned()
            .collect()
    }

    /// Is `namespace` left out of the claims right now?
    pub fn is_blocked(&self, namespace: &str) -> bool {
        left_out(&self.lock(), namespace, Instant::now())
    }

    /// Why `namespace`'s publishes are refused, if they are (a full namespace is not
    /// refused: it is waiting for its workers).
    pub fn reason(&self, namespace: &Namespace) -> Option<String> {
        self.lock()
            .get(namespace)
            .filter(|block| !block.full)
            .map(|block| block.error.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Namespace, Block>> {
        self.namespaces
            .lock()
            .expect("blocked-namespaces lock poisoned")
    }
}

fn left_out(namespaces: &HashMap<Namespace, Block>, name: &str, now: Instant) -> bool {
    namespaces
        .iter()
        .any(|(blocked, block)| blocked.as_str() == name && block.until > now)
}

fn gauge(namespace: &Namespace, value: i64) {
    metrics()
        .publish_blocked
        .get_or_create(&NamespaceLabels {
            namespace: namespace.as_str().to_owned(),
        })
        .set(value);
}
