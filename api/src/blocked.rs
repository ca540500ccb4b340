//! Namespaces whose vhost refuses publishes right now (permissions revoked, vhost deleted,
//! a queue gone). The relay leaves them out of its claims for a while, backing off, so one
//! bad vhost neither stops the sweeper and scheduler of every other namespace nor has its
//! rows claimed over and over; readiness and metrics name them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use engine_shared::Namespace;
use engine_shared::metrics::{NamespaceLabels, metrics};

const FIRST_PAUSE: Duration = Duration::from_millis(500);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

struct Block {
    /// Not claimed for again before this.
    until: Instant,
    pause: Duration,
    /// The last refusal, for readiness (already redacted by the publisher).
    error: String,
}

/// The blocked namespaces.
#[derive(Default)]
pub struct Blocked {
    namespaces: Mutex<HashMap<Namespace, Block>>,
}

impl Blocked {
    /// A publish to `namespace` failed: leave it out for a while, longer each time.
    pub fn refused(&self, namespace: &Namespace, error: &anyhow::Error) {
        let mut namespaces = self.lock();
        let pause = namespaces
            .get(namespace)
            .map_or(FIRST_PAUSE, |block| (block.pause * 2).min(LONGEST_PAUSE));
        if !namespaces.contains_key(namespace) {
            tracing::warn!(%namespace, error = format!("{error:#}"), "publishes to this namespace are refused; leaving it out of the sweeps while it lasts, the others carry on");
        }
        namespaces.insert(
            namespace.clone(),
            Block {
                until: Instant::now() + pause,
                pause,
                error: format!("{error:#}"),
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
    pub fn sweepable(&self, served: &[String]) -> Vec<String> {
        let namespaces = self.lock();
        let now = Instant::now();
        served
            .iter()
            .filter(|name| {
                !namespaces
                    .iter()
                    .any(|(blocked, block)| blocked.as_str() == name.as_str() && block.until > now)
            })
            .cloned()
            .collect()
    }

    /// Why `namespace` is blocked, if it is.
    pub fn reason(&self, namespace: &Namespace) -> Option<String> {
        self.lock().get(namespace).map(|block| block.error.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Namespace, Block>> {
        self.namespaces
            .lock()
            .expect("blocked-namespaces lock poisoned")
    }
}

fn gauge(namespace: &Namespace, value: i64) {
    metrics()
        .publish_blocked
        .get_or_create(&NamespaceLabels {
            namespace: namespace.as_str().to_owned(),
        })
        .set(value);
}
