//! `FairShare`: how a namespace shares a worker process with the other namespaces it serves.

/// A namespace's claim on a worker's slots, from `namespaces.<ns>.weight` and
/// `namespaces.<ns>.max_running`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FairShare {
    /// Slots relative to the other namespaces while all have work waiting; at least 1.
    /// Within the namespace its queues still share by their own weights.
    pub weight: u32,
    /// Most of this namespace's jobs one worker process runs at once (and so the prefetch
    /// of its consumers); `None`: only the worker's concurrency bounds it.
    pub max_running: Option<u32>,
    /// Most of this namespace's jobs the whole fleet runs at once, counted in Redis with
    /// leased slots (as a kind's concurrency limit is); `None`: no fleet-wide cap.
    pub fleet_max_running: Option<u32>,
}

impl Default for FairShare {
    fn default() -> Self {
        Self {
            weight: 1,
            max_running: None,
            fleet_max_running: None,
        }
    }
}
