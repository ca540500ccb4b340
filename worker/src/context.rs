//! What every execution shares: the worker's context, each served namespace's context, and
//! the index that names a served namespace in every per-namespace table of the worker.

use std::sync::Arc;

use engine_jobs::Registry;
use engine_shared::QueueName;
use engine_shared::broker::Publisher;
use engine_shared::limits::Limiter;
use engine_shared::namespace::NamespaceSpec;
use engine_shared::objects::ObjectStore;
use engine_shared::retry::RetryPolicy;
use engine_shared::store::Store;

use crate::in_flight::InFlight;
use crate::log_shipper::LogShipper;
use crate::received::BrokerClock;
use crate::transitions::Transitions;

/// A served namespace's position among the worker's namespaces, in the order it serves
/// them: the same in [`WorkerContext::namespaces`], the dispatcher's lanes, the fair-share
/// slots, the consumers' health and the log shipper. Handed out by
/// [`crate::fair_share::Slots::add`], as the worker adds its namespaces in that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NamespaceIndex(usize);

impl NamespaceIndex {
    /// The namespace at `position` in the worker's order.
    pub(crate) fn new(position: usize) -> Self {
        Self(position)
    }
}

/// The position, for indexing a per-namespace table.
impl From<NamespaceIndex> for usize {
    fn from(index: NamespaceIndex) -> Self {
        index.0
    }
}

/// A served namespace and the publisher its retries go through.
pub struct NamespaceContext {
    /// Its position in [`WorkerContext::namespaces`].
    pub index: NamespaceIndex,
    pub spec: NamespaceSpec,
    pub publisher: Publisher,
}

/// What every execution shares.
pub struct WorkerContext {
    pub registry: Arc<Registry>,
    pub transitions: Transitions,
    pub in_flight: Arc<InFlight>,
    pub retry: RetryPolicy,
    /// Every served namespace, by [`NamespaceIndex`].
    pub namespaces: Vec<NamespaceContext>,
    /// Recorded with every error and burial, so a person can tell which pod ran what.
    pub worker_id: String,
    /// The broker's consumer timeout, which bounds each delivery from its receipt.
    pub clock: BrokerClock,
    /// Needed to bury poison and crash-looping jobs outside the batched transitions.
    pub store: Store,
    /// Rate and concurrency limits, checked before a job starts.
    pub limiter: Arc<Limiter>,
    /// Object storage for artifacts; `None` when no bucket is configured.
    pub objects: Option<ObjectStore>,
    /// Uploads attempt logs (or spools them while storage is down).
    pub logs: Arc<LogShipper>,
    /// Most bytes of log text kept per attempt.
    pub log_cap: usize,
    /// Largest result stored (`worker.max_result_bytes`); a larger one fails the attempt.
    pub max_result_bytes: usize,
    /// The configured queues: a message naming another is poison. Its queue labels
    /// metrics, so an unknown name must never get as far as a label.
    pub queues: Vec<QueueName>,
}

impl WorkerContext {
    /// The context of the namespace at `index`.
    pub fn namespace(&self, index: NamespaceIndex) -> &NamespaceContext {
        &self.namespaces[usize::from(index)]
    }
}
