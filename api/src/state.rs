//! What every request handler shares: the store, the registry, settings, and the relay.

use std::sync::Arc;

use engine_jobs::Registry;
use engine_shared::config::Settings;
use engine_shared::group_commit::GroupCommit;
use engine_shared::limits::Limiter;
use engine_shared::objects::ObjectStore;
use engine_shared::store::{NewJob, NotStored, Store, Submitted};

use crate::auth::KeyCache;
use crate::pending_quota::PendingCounts;
use crate::readiness::ReadinessCache;
use crate::relay::Relay;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Kinds and their arg types, to refuse bad submissions before they are stored.
    pub registry: Arc<Registry>,
    pub settings: Arc<Settings>,
    pub keys: Arc<KeyCache>,
    /// Publishes accepted jobs right after commit, and sweeps what it could not.
    pub relay: Arc<Relay>,
    /// Group-commits single submissions from concurrent requests into one INSERT; a job
    /// the database refuses fails alone ([`Store::insert_jobs_each`]).
    pub submissions: GroupCommit<NewJob, Result<Submitted, NotStored>>,
    /// Per-API-key submission limits (Redis), when configured.
    pub limiter: Arc<Limiter>,
    /// Object storage (logs, artifacts); `None` when no bucket is configured.
    pub objects: Option<ObjectStore>,
    /// The last readiness check, shared by every `/readyz` caller for a moment.
    pub readiness: Arc<ReadinessCache>,
    /// Each namespace's unfinished jobs, as last counted, for `max_pending`.
    pub pending: Arc<PendingCounts>,
}
