//! `Quota`: what one namespace may hold of the shared database and broker.

/// A namespace's caps, from `namespaces.<ns>.max_pending` / `.max_queue_bytes` or the
/// fleet's defaults (`api.max_pending`, `amqp.max_queue_bytes`). `None`: no cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Most unfinished (scheduled, queued, running, retrying) jobs; a submission past it is
    /// refused with 429 and stores nothing.
    pub max_pending: Option<u64>,
    /// Most bytes each of its work queues holds (`x-max-length-bytes`); past it the broker
    /// refuses publishes to that queue and the job waits in PostgreSQL instead.
    pub max_queue_bytes: Option<u64>,
}

/// `api.max_pending`'s default: far more than a tenant's working backlog, far less than
/// what fills a small database's disk with one tenant's rows.
pub const DEFAULT_MAX_PENDING: u64 = 100_000;

/// `amqp.max_queue_bytes`'s default: room for a deep backlog of ordinary jobs (over half a
/// million of 200 bytes), small enough that a dozen tenants' full queues stay far below a
/// small broker's memory alarm.
pub const DEFAULT_MAX_QUEUE_BYTES: u64 = 128 * 1024 * 1024;

/// A cap as the settings write it: 0 turns it off.
pub fn cap(value: u64) -> Option<u64> {
    (value > 0).then_some(value)
}

impl Default for Quota {
    /// The caps of a namespace the settings name without caps of its own.
    fn default() -> Self {
        Self {
            max_pending: Some(DEFAULT_MAX_PENDING),
            max_queue_bytes: Some(DEFAULT_MAX_QUEUE_BYTES),
        }
    }
}
