//! The live API keys of the namespaces this API serves, held in memory for [`RECHECK`]: a
//! token that is not among them is refused without asking PostgreSQL, so a flood of
//! made-up tokens costs at most one read of the keys per `RECHECK`, however many arrive
//! and however random they are. Memory holds the keys operators created, never callers'
//! tokens.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use engine_shared::Namespace;
use engine_shared::metrics::metrics;
use engine_shared::store::Store;

use crate::problem::ApiError;

/// How long a read of the keys answers for: the longest a key just created waits before
/// it works (and, after `api.key_cache_secs`, the longest a revoked one keeps working).
pub const RECHECK: Duration = Duration::from_secs(1);

/// One read of the live keys.
struct Snapshot {
    namespaces: HashMap<[u8; 32], Namespace>,
    read_at: Instant,
}

pub struct KnownKeys {
    /// Whose keys are read: the namespaces this API serves.
    served: Vec<Namespace>,
    /// The latest read; `None` before the first.
    snapshot: RwLock<Option<Snapshot>>,
    /// Held while reading, so that callers who find the snapshot stale at once share the
    /// one read the first of them makes.
    reading: tokio::sync::Mutex<()>,
}

impl KnownKeys {
    pub fn new(served: Vec<Namespace>) -> Self {
        Self {
            served,
            snapshot: RwLock::new(None),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    /// The namespace of the key hashed `hash` as PostgreSQL said less than [`RECHECK`]
    /// ago; `None` for a token that is no live key.
    pub async fn namespace_of(
        &self,
        store: &Store,
        hash: &[u8; 32],
    ) -> Result<Option<Namespace>, ApiError> {
        if let Some(answer) = self.fresh_answer(hash) {
            return Ok(answer);
        }
        let _reading = self.reading.lock().await;
        // Whoever held the lock before may have just read.
        if let Some(answer) = self.fresh_answer(hash) {
            return Ok(answer);
        }
        // Answered from the read just made, however long it took: a read slower than
        // RECHECK (a database coming back from a restart) is no reason to refuse a key.
        self.read(store, hash).await
    }

    /// The answer of a snapshot younger than [`RECHECK`], if there is one.
    fn fresh_answer(&self, hash: &[u8; 32]) -> Option<Option<Namespace>> {
        let snapshot = self.snapshot.read().expect("known keys lock poisoned");
        snapshot
            .as_ref()
            .filter(|snapshot| snapshot.read_at.elapsed() < RECHECK)
            .map(|snapshot| snapshot.namespaces.get(hash).cloned())
    }

    /// Reads the live keys, keeps them as the snapshot, and answers for `hash`.
    async fn read(&self, store: &Store, hash: &[u8; 32]) -> Result<Option<Namespace>, ApiError> {
        metrics().key_lookups.inc();
        let read_at = Instant::now();
        let keys = store.live_keys(&self.served).await?;
        let namespaces: HashMap<[u8; 32], Namespace> = keys
            .into_iter()
            .filter_map(|key| {
                let hash: [u8; 32] = key.key_hash.try_into().ok()?;
                Some((hash, Namespace::parse(&key.namespace).ok()?))
            })
            .collect();
        let answer = namespaces.get(hash).cloned();
        *self.snapshot.write().expect("known keys lock poisoned") = Some(Snapshot {
            namespaces,
            read_at,
        });
        Ok(answer)
    }
}
