//! Bearer API keys → the caller's namespace, with a short-lived cache so a busy client
//! costs PostgreSQL nothing for `api.key_cache_secs`, and any other token is checked
//! against the live keys read at most once a second ([`crate::known_keys`]).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use engine_shared::Namespace;
use engine_shared::store::{ApiKey, Store};

use crate::known_keys::KnownKeys;
use crate::problem::ApiError;
use crate::state::AppState;

/// The authenticated caller: everything it may touch is inside this namespace.
#[derive(Clone, Debug)]
pub struct Caller {
    pub namespace: Namespace,
    /// A short, stable, non-secret tag of the key (part of its hash): what per-key limits
    /// are kept by.
    pub key_tag: String,
}

/// Verified keys (by hash) and when each was verified. Revoking a key takes effect within
/// the TTL (plus [`crate::known_keys::RECHECK`]). Bounded: cleared wholesale when it grows
/// past `MAX_ENTRIES`; only live keys enter it.
pub struct KeyCache {
    ttl: Duration,
    entries: RwLock<HashMap<[u8; 32], (Namespace, Instant)>>,
    /// What answers a token the cache does not hold, unknown ones included.
    known: KnownKeys,
}

const MAX_ENTRIES: usize = 10_000;

impl KeyCache {
    /// A cache for the keys of the `served` namespaces.
    pub fn new(ttl: Duration, served: Vec<Namespace>) -> Self {
        Self {
            ttl,
            entries: RwLock::new(HashMap::new()),
            known: KnownKeys::new(served),
        }
    }

    fn get(&self, hash: &[u8; 32]) -> Option<Namespace> {
        let entries = self.entries.read().expect("key cache lock poisoned");
        entries
            .get(hash)
            .filter(|(_, verified)| verified.elapsed() < self.ttl)
            .map(|(namespace, _)| namespace.clone())
    }

    fn put(&self, hash: [u8; 32], namespace: Namespace) {
        let mut entries = self.entries.write().expect("key cache lock poisoned");
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(hash, (namespace, Instant::now()));
    }

    /// Resolves a presented token to its namespace, asking the live keys on a cache miss.
    pub async fn resolve(&self, store: &Store, token: &str) -> Result<Option<Namespace>, ApiError> {
        let hash = ApiKey::from_presented(token).hash();
        if let Some(namespace) = self.get(&hash) {
            return Ok(Some(namespace));
        }
        let namespace = self.known.namespace_of(store, &hash).await?;
        if let Some(namespace) = &namespace {
            self.put(hash, namespace.clone());
        }
        Ok(namespace)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthorized(
                "missing Authorization: Bearer <API key> header",
            ))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(ApiError::Unauthorized(
                "the Authorization header must be \"Bearer <API key>\"",
            ))?;
        let namespace =
            state
                .keys
                .resolve(&state.store, token)
                .await?
                .ok_or(ApiError::Unauthorized(
                    "the API key is not valid or was revoked",
                ))?;
        if state.settings.namespace(&namespace).is_none() {
            return Err(ApiError::Unauthorized(
                "the API key's namespace is not served by this API",
            ));
        }
        let key_tag = hex::encode(&ApiKey::from_presented(token).hash()[..8]);
        Ok(Self { namespace, key_tag })
    }
}
