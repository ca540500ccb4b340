//! Bearer API keys → the caller's namespace, with a short-lived cache so a busy client
//! costs one PostgreSQL lookup per `api.key_cache_secs`, not one per request.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use engine_shared::Namespace;
use engine_shared::store::{ApiKey, Store};

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
/// the TTL. Bounded: cleared wholesale when it grows past `MAX_ENTRIES`.
pub struct KeyCache {
    ttl: Duration,
    entries: RwLock<HashMap<[u8; 32], (Namespace, Instant)>>,
}

const MAX_ENTRIES: usize = 10_000;

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: RwLock::new(HashMap::new()),
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

    /// Resolves a presented token to its namespace, asking `store` on a cache miss.
    pub async fn resolve(&self, store: &Store, token: &str) -> Result<Option<Namespace>, ApiError> {
        let key = ApiKey::from_presented(token);
        if let Some(namespace) = self.get(&key.hash()) {
            return Ok(Some(namespace));
        }
        let Some(name) = store
            .namespace_for_key(&key)
            .await
            .map_err(ApiError::from_store)?
        else {
            return Ok(None);
        };
        let namespace = Namespace::parse(&name).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!("stored key has a bad namespace: {e}"))
        })?;
        self.put(key.hash(), namespace.clone());
        Ok(Some(namespace))
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
